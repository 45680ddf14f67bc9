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
///
/// Stored in CQ8's packed layout (see `cq8_packed_groups` in cq8.h): groups of 8 rows with 4 inputs of each
/// row side by side, so the int8 GEMM reads 8 output rows x 4 inputs with one load; per group and block the 8
/// scales and the 8 block sums (times 128, the VNNI kernel's correction for its unsigned operand).
final class Q8Matrix: @unchecked Sendable {  // immutable after init; owns its buffers
    let rows: Int, cols: Int, block: Int
    /// Row groups of 8 (an even number; rows past `rows` are zero).
    let groups: Int
    let values: UnsafeMutablePointer<Int8>
    let scales: UnsafeMutablePointer<Float>
    let blockSums: UnsafeMutablePointer<Int32>
    var blocksPerRow: Int { cols / block }
    var byteCount: Int { groups * 8 * (cols + blocksPerRow * 8) }

    static func canQuantize(cols: Int) -> Bool { cols > 0 && cols % 32 == 0 }

    /// Quantises `w` [rows, cols]; cols must be a multiple of 32 (blocks of 64 when it divides, else 32).
    init(quantizing w: UnsafePointer<Float>, rows: Int, cols: Int, name: String) throws {
        guard Self.canQuantize(cols: cols) else { throw QuantizationError.unsupportedShape(tensor: name, shape: [rows, cols]) }
        self.rows = rows
        self.cols = cols
        block = cols % 64 == 0 ? 64 : 32
        groups = Int(cq8_packed_groups(Int32(rows)))
        let nb = cols / block
        let block = self.block
        values = AlignedMemory.allocate(Int8.self, capacity: groups * 8 * cols)
        values.initialize(repeating: 0, count: groups * 8 * cols)
        scales = AlignedMemory.allocate(Float.self, capacity: groups * nb * 8)
        scales.initialize(repeating: 0, count: groups * nb * 8)
        blockSums = AlignedMemory.allocate(Int32.self, capacity: groups * nb * 8)
        blockSums.initialize(repeating: 0, count: groups * nb * 8)
        let job = QuantJob(w: w, q: values, s: scales, sums: blockSums)
        ComputePool.shared.run(count: rows, maxParts: min(BLASThreads.current, rows / 64)) { _, range in
            for r in range {
                let g = r / 8
                let lane = r % 8
                let dst = job.q + g * 8 * cols + lane * 4
                for b in 0..<nb {
                    let src = job.w + r * cols + b * block
                    var amax: Float = 0
                    for j in 0..<block { amax = max(amax, abs(src[j])) }
                    let scale = amax / 127
                    let inv: Float = scale > 0 ? 1 / scale : 0
                    var sum: Int32 = 0
                    for j in 0..<block {
                        let k = b * block + j
                        // Round half away from zero inline (`.rounded()` is a libm call: 5% of an 8-bit load).
                        let x = max(-127, min(127, src[j] * inv))
                        let v = Int8(x + (x >= 0 ? 0.5 : -0.5))
                        dst[(k / 4) * 32 + k % 4] = v
                        sum += Int32(v)
                    }
                    job.s[(g * nb + b) * 8 + lane] = scale
                    job.sums[(g * nb + b) * 8 + lane] = 128 * sum
                }
            }
        }
    }

    deinit {
        values.deallocate()
        scales.deallocate()
        blockSums.deallocate()
    }

    /// The int8 value of row r, input k.
    @inline(__always) func value(_ r: Int, _ k: Int) -> Int8 { values[(r / 8) * 8 * cols + (k / 4) * 32 + (r % 8) * 4 + k % 4] }
    /// The scale of row r, block b.
    @inline(__always) func scale(_ r: Int, block b: Int) -> Float { scales[((r / 8) * blocksPerRow + b) * 8 + r % 8] }

    /// Writes rows r0..<r1 as float32 into `out` [r1 - r0, cols].
    func dequantize(rows r0: Int, _ r1: Int, into out: UnsafeMutablePointer<Float>) {
        for r in r0..<r1 {
            let o = out + (r - r0) * cols
            for k in 0..<cols { o[k] = Float(value(r, k)) * scale(r, block: k / block) }
        }
    }

    private struct QuantJob: @unchecked Sendable {  // raw pointers for the workers; init waits for them
        let w: UnsafePointer<Float>, q: UnsafeMutablePointer<Int8>, s: UnsafeMutablePointer<Float>
        let sums: UnsafeMutablePointer<Int32>
    }
}

/// Scratch for the 8-bit products of one forward step: the activations quantised per block (int8 values, their
/// absolute values, the values plus 128, one scale per block), rows padded to CQ8's register tile.
final class Q8Scratch {
    private(set) var capacity = 0
    var q = UnsafeMutablePointer<Int8>.allocate(capacity: 1)
    var a = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
    var u = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
    var scales = UnsafeMutablePointer<Float>.allocate(capacity: 1)

    func ensure(rows: Int, cols: Int) {
        let n = Int(cq8_padded_rows(Int32(rows))) * cols
        guard n > capacity else { return }
        capacity = n
        q.deallocate()
        a.deallocate()
        u.deallocate()
        scales.deallocate()
        q = AlignedMemory.allocate(Int8.self, capacity: n)
        a = AlignedMemory.allocate(UInt8.self, capacity: n)
        u = AlignedMemory.allocate(UInt8.self, capacity: n)
        scales = .allocate(capacity: n / 32)
    }

    deinit {
        q.deallocate()
        a.deallocate()
        u.deallocate()
        scales.deallocate()
    }
}

/// The integer kernels' instruction set (C, chosen at run time from the CPU's features; see CQ8).
public enum Q8KernelLevel: Int32, Sendable, CaseIterable, CustomStringConvertible {
    case portable = 0
    case avx2 = 1
    case avx512vnni = 2

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
    /// y[rows, W.rows] = x[rows, W.cols] * W^T (+ bias) (+ y when `accumulate`), like `Kernels.linear`.
    ///
    /// Every row count, decode or prefill, goes through the int8 GEMM on activations quantised per row and
    /// block: one numeric path, so a row's result does not depend on the rows computed with it (a prompt
    /// continued from the prefix cache gets the logits of a full prefill).
    static func linear(
        _ x: UnsafePointer<Float>, rows: Int, weight w: Q8Matrix, bias: UnsafePointer<Float>?,
        into y: UnsafeMutablePointer<Float>, accumulate: Bool, scratch: Q8Scratch
    ) {
        quantizeActivations(x, rows: rows, cols: w.cols, block: w.block, into: scratch)
        integerProduct(rows: rows, weight: w, scratch: scratch, into: y, accumulate: accumulate)
        if let bias { addBias(bias, rows: rows, dim: w.rows, into: y) }
    }

    @inline(__always)
    static func addBias(_ bias: UnsafePointer<Float>, rows: Int, dim: Int, into y: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let yr = y + r * dim
            for j in 0..<dim { yr[j] += bias[j] }
        }
    }

    /// Per row and block: scale = max|x| / 127, q = round(x / scale), |q| and q + 128 for the unsigned operands.
    static func quantizeActivations(_ x: UnsafePointer<Float>, rows: Int, cols: Int, block: Int, into s: Q8Scratch) {
        s.ensure(rows: rows, cols: cols)
        cq8_quantize_rows(x, Int32(rows), Int32(cols), Int32(block), s.q, s.a, s.u, s.scales)
    }

    private struct Job: @unchecked Sendable {  // raw pointers for the workers; the caller waits for them
        let w: Q8Matrix, s: Q8Scratch, y: UnsafeMutablePointer<Float>, rows: Int, accumulate: Bool
    }

    /// The int8 x int8 products, output rows split into parts (whole pairs of 8-row groups) that the compute
    /// threads claim as they go (a thread that starts late takes fewer parts).
    static func integerProduct(
        rows: Int, weight w: Q8Matrix, scratch s: Q8Scratch, into y: UnsafeMutablePointer<Float>,
        accumulate: Bool
    ) {
        let job = Job(w: w, s: s, y: y, rows: rows, accumulate: accumulate)
        let threads = Kernels.computeThreads
        let pairs = w.groups / 2
        // Small matrices (k/v projections of one row) cost less than waking a second thread.
        guard threads > 1, pairs > 1, w.rows * w.cols * rows >= 1 << 17 else {
            integerGroups(job, 0, pairs)
            return
        }
        // Many rows (prefill): few large parts, each reading its weight panel once for all rows; few rows
        // (decode): more parts, so a thread that starts late takes fewer.
        let maxParts = rows > 16 ? threads * 2 : min(threads * 8, max(1, pairs / 2))
        ComputePool.shared.run(count: pairs, maxParts: maxParts) { _, range in
            integerGroups(job, range.lowerBound, range.upperBound)
        }
    }

    private static func integerGroups(_ job: Job, _ p0: Int, _ p1: Int) {
        guard p0 < p1 else { return }
        let w = job.w
        let s = job.s
        cq8_gemm(
            w.values, w.scales, w.blockSums, Int32(w.cols), Int32(w.block), Int32(w.rows), Int32(2 * p0), Int32(2 * p1),
            s.q, s.a, s.u, s.scales, Int32(job.rows), job.y, Int32(w.rows), job.accumulate ? 1 : 0)
    }
}
