import CBLAS
import CQ8
import Foundation

/// How the projection weights are held in memory.
public enum WeightFormat: String, Sendable, CaseIterable {
    /// The checkpoint's float32 tensors, used in place from the file mapping (bf16/f16 are widened once).
    case f32
    /// Projections and lm_head quantised at load to int8 with one float scale per block of 32 or 64 inputs
    /// of a row (symmetric, round to nearest). Norms, biases and embedding lookups stay float32, and so does a
    /// projection whose input dimension is not a multiple of 32.
    case q8
}

public enum QuantizationError: Error, CustomStringConvertible, Equatable {
    case unsupportedShape(tensor: String, shape: [Int])
    public var description: String {
        switch self {
        case .unsupportedShape(let t, let s):
            return "cannot quantise \(t) of shape \(s) to 8 bits: the input dimension must be a multiple of 32"
        }
    }
}

/// An [rows, cols] weight matrix (PyTorch nn.Linear layout: rows = outputs) in 8 bits: int8 values and one
/// Float scale per `block` consecutive inputs of a row, value = q * scale, q in [-127, 127].
final class Q8Matrix: @unchecked Sendable {  // immutable after init; owns its buffers
    let rows: Int, cols: Int, block: Int
    let values: UnsafeMutablePointer<Int8>
    let scales: UnsafeMutablePointer<Float>
    var blocksPerRow: Int { cols / block }
    var byteCount: Int { rows * cols + rows * blocksPerRow * 4 }

    static func canQuantize(cols: Int) -> Bool { cols > 0 && cols % 32 == 0 }

    /// Quantises `w` [rows, cols]; cols must be a multiple of 32 (blocks of 64 when it divides, else 32).
    init(quantizing w: UnsafePointer<Float>, rows: Int, cols: Int, name: String) throws {
        guard Self.canQuantize(cols: cols) else { throw QuantizationError.unsupportedShape(tensor: name, shape: [rows, cols]) }
        self.rows = rows
        self.cols = cols
        block = cols % 64 == 0 ? 64 : 32
        values = AlignedMemory.allocate(Int8.self, capacity: rows * cols)
        scales = .allocate(capacity: rows * (cols / block))
        let nb = cols / block, block = self.block
        let job = QuantJob(w: w, q: values, s: scales)
        ComputePool.shared.run(count: rows, maxParts: min(BLASThreads.current, rows / 64)) { _, range in
            for r in range {
                for b in 0..<nb {
                    let src = job.w + r * cols + b * block, dst = job.q + r * cols + b * block
                    var amax: Float = 0
                    for j in 0..<block { amax = max(amax, abs(src[j])) }
                    let scale = amax / 127
                    let inv: Float = scale > 0 ? 1 / scale : 0
                    for j in 0..<block { dst[j] = Int8(max(-127, min(127, (src[j] * inv).rounded()))) }
                    job.s[r * nb + b] = scale
                }
            }
        }
    }

    deinit {
        values.deallocate()
        scales.deallocate()
    }

    /// Writes rows r0..<r1 as float32 into `out` [r1 - r0, cols].
    func dequantize(rows r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let nb = blocksPerRow
        for r in r0..<r1 {
            let q = values + r * cols, o = out + (r - r0) * cols
            for b in 0..<nb {
                let s = scales[r * nb + b]
                for j in (b * block)..<((b + 1) * block) { o[j] = Float(q[j]) * s }
            }
        }
    }

    private struct QuantJob: @unchecked Sendable {  // raw pointers for the workers; init waits for them
        let w: UnsafePointer<Float>, q: UnsafeMutablePointer<Int8>, s: UnsafeMutablePointer<Float>
    }
}

/// Scratch for the 8-bit products of one forward step: the activations quantised per block (int8 values, their
/// absolute values and one scale per block), and a float32 tile for the dequantised prefill path.
final class Q8Scratch {
    private(set) var capacity = 0
    var q = UnsafeMutablePointer<Int8>.allocate(capacity: 1)
    var a = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
    var scales = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private(set) var tileCount = 0
    var tile = UnsafeMutablePointer<Float>.allocate(capacity: 1)

    func ensure(rows: Int, cols: Int) {
        guard rows * cols > capacity else { return }
        capacity = rows * cols
        q.deallocate(); a.deallocate(); scales.deallocate()
        q = AlignedMemory.allocate(Int8.self, capacity: capacity)
        a = AlignedMemory.allocate(UInt8.self, capacity: capacity)
        scales = .allocate(capacity: capacity / 32)
    }

    func ensureTile(_ n: Int) {
        guard n > tileCount else { return }
        tile.deallocate()
        tile = .allocate(capacity: n)
        tileCount = n
    }

    deinit {
        q.deallocate(); a.deallocate(); scales.deallocate(); tile.deallocate()
    }
}

/// The integer kernels' instruction set (C, chosen at run time from the CPU's features; see CQ8).
public enum Q8KernelLevel: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case portable = 0, avx2 = 1, avx512vnni = 2

    /// The best level this CPU runs.
    public static var best: Q8KernelLevel { Q8KernelLevel(rawValue: cq8_best_level()) ?? .portable }
    /// The level in use.
    public static var current: Q8KernelLevel { Q8KernelLevel(rawValue: cq8_level()) ?? .portable }
    /// Uses `level` (or the best supported level below it) from now on, process wide; returns the level in use.
    /// For tests and benchmarks that compare implementations.
    @discardableResult
    public static func use(_ level: Q8KernelLevel) -> Q8KernelLevel { Q8KernelLevel(rawValue: cq8_set_level(level.rawValue)) ?? .portable }

    public var description: String { String(cString: cq8_level_name(rawValue)) }
}

enum Q8Kernels {
    /// Rows of x at most this many use the int8 kernel (decode, single or batched); more rows (prefill) dequantise
    /// tiles of W to float32 and use sgemm. With SIMD integer dot products the int8 kernel reads each weight row
    /// once for all rows of x and stays ahead of a dequantise-plus-sgemm up to a batch of 16 decode rows; the
    /// portable C kernel only for one or two.
    static var maxIntegerRows: Int { Q8KernelLevel.current == .portable ? 2 : 16 }
    /// Weight rows per dequantised tile in the prefill path.
    static let tileRows = 128

    /// y[rows, W.rows] = x[rows, W.cols] * W^T (+ bias) (+ y when `accumulate`), like `Kernels.linear`.
    static func linear(_ x: UnsafePointer<Float>, rows: Int, weight w: Q8Matrix, bias: UnsafePointer<Float>?,
                       into y: UnsafeMutablePointer<Float>, accumulate: Bool, scratch: Q8Scratch) {
        if rows <= maxIntegerRows {
            quantizeActivations(x, rows: rows, cols: w.cols, block: w.block, into: scratch)
            integerProduct(rows: rows, weight: w, scratch: scratch, into: y, accumulate: accumulate)
        } else {
            let tile = min(tileRows, w.rows)
            scratch.ensureTile(tile * w.cols)
            var r0 = 0
            while r0 < w.rows {
                let n = min(tile, w.rows - r0)
                dequantizeParallel(w, rows: r0, r0 + n, into: scratch.tile)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(n), Int32(w.cols), 1,
                            x, Int32(w.cols), scratch.tile, Int32(w.cols), accumulate ? 1 : 0, y + r0, Int32(w.rows))
                r0 += n
            }
        }
        if let bias {
            for r in 0..<rows {
                let yr = y + r * w.rows
                for j in 0..<w.rows { yr[j] += bias[j] }
            }
        }
    }

    /// Per row and block: scale = max|x| / 127, q = round(x / scale), and |q| for the unsigned operand.
    static func quantizeActivations(_ x: UnsafePointer<Float>, rows: Int, cols: Int, block: Int, into s: Q8Scratch) {
        s.ensure(rows: rows, cols: cols)
        cq8_quantize_rows(x, Int32(rows), Int32(cols), Int32(block), s.q, s.a, s.scales)
    }

    private struct Job: @unchecked Sendable {  // raw pointers for the workers; the caller waits for them
        let w: Q8Matrix, s: Q8Scratch, y: UnsafeMutablePointer<Float>, rows: Int, accumulate: Bool
    }

    /// The int8 x int8 products, output rows split into parts of at least 32 rows that the compute threads claim
    /// as they go (a thread that starts late takes fewer parts).
    static func integerProduct(rows: Int, weight w: Q8Matrix, scratch s: Q8Scratch, into y: UnsafeMutablePointer<Float>,
                               accumulate: Bool) {
        let job = Job(w: w, s: s, y: y, rows: rows, accumulate: accumulate)
        let threads = Kernels.computeThreads
        // Small matrices (k/v projections of one row) cost less than waking a second thread.
        guard threads > 1, w.rows * w.cols * rows >= 1 << 17 else {
            integerRows(job, 0, w.rows)
            return
        }
        ComputePool.shared.run(count: w.rows, maxParts: min(threads * 8, max(1, w.rows / 32)), granularity: 8) { _, range in
            integerRows(job, range.lowerBound, range.upperBound)
        }
    }

    private static func integerRows(_ job: Job, _ r0: Int, _ r1: Int) {
        guard r0 < r1 else { return }
        let w = job.w
        cq8_gemv_rows(w.values, w.scales, Int32(w.cols), Int32(w.block), Int32(r0), Int32(r1),
                      job.s.q, job.s.a, job.s.scales, Int32(job.rows), job.y, Int32(w.rows), job.accumulate ? 1 : 0)
    }

    private struct DequantJob: @unchecked Sendable {  // raw pointers for the workers; the caller waits for them
        let w: Q8Matrix, out: UnsafeMutablePointer<Float>, r0: Int, r1: Int
    }

    /// Dequantises a tile on two threads through libdispatch, not ComputePool: OpenBLAS's own threads run the
    /// sgemm that follows, and a pool worker polling for the next call would take a core from them (measured:
    /// 128-token 8-bit prefill at 90 tok/s with the pool, 145 on one thread, 185 with libdispatch, which parks
    /// its worker at once).
    private static func dequantizeParallel(_ w: Q8Matrix, rows r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        let job = DequantJob(w: w, out: out, r0: r0, r1: r1)
        let workers = max(1, min(BLASThreads.current, (r1 - r0) / 16))
        DispatchQueue.concurrentPerform(iterations: workers) { part in
            let per = (job.r1 - job.r0 + workers - 1) / workers
            let a = job.r0 + part * per, b = min(job.r1, a + per)
            if a < b { job.w.dequantize(rows: a, b, into: job.out + (a - job.r0) * job.w.cols) }
        }
    }
}
