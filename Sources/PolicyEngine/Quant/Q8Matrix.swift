import CBLAS
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
        values = .allocate(capacity: rows * cols)
        scales = .allocate(capacity: rows * (cols / block))
        let nb = cols / block, block = self.block
        let job = QuantJob(w: w, q: values, s: scales)
        let workers = max(1, min(BLASThreads.current, rows / 64))
        DispatchQueue.concurrentPerform(iterations: workers) { part in
            let per = (rows + workers - 1) / workers
            for r in (part * per)..<min(rows, (part + 1) * per) {
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

/// Scratch for the 8-bit products of one forward step: the activations quantised per block, the int16 lanes
/// pre-split to match how the kernel unpacks the weight bytes, and a float32 tile for prefill.
final class Q8Scratch {
    typealias Lanes = SIMD16<Int16>
    private(set) var capacityRows = 0, capacityCols = 0
    var even = UnsafeMutablePointer<Lanes>.allocate(capacity: 1)
    var odd = UnsafeMutablePointer<Lanes>.allocate(capacity: 1)
    var scales = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private(set) var tileCount = 0
    var tile = UnsafeMutablePointer<Float>.allocate(capacity: 1)

    func ensure(rows: Int, cols: Int) {
        guard rows > capacityRows || cols > capacityCols else { return }
        capacityRows = max(rows, capacityRows)
        capacityCols = max(cols, capacityCols)
        even.deallocate(); odd.deallocate(); scales.deallocate()
        even = .allocate(capacity: capacityRows * capacityCols / 32)
        odd = .allocate(capacity: capacityRows * capacityCols / 32)
        scales = .allocate(capacity: capacityRows * capacityCols / 32)
    }

    func ensureTile(_ n: Int) {
        guard n > tileCount else { return }
        tile.deallocate()
        tile = .allocate(capacity: n)
        tileCount = n
    }

    deinit {
        even.deallocate(); odd.deallocate(); scales.deallocate(); tile.deallocate()
    }
}

enum Q8Kernels {
    /// Rows of x at most this many use the int8 kernel (single-sequence decode). More rows (batched decode,
    /// prefill) dequantise tiles of W to float32 and use sgemm: the int8 kernel, compiled for baseline x86-64
    /// (SSE2), costs about as much per row as a whole dequantised tile product.
    static let maxIntegerRows = 2
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

    /// Per row and block: scale = max|x| / 127, q = round(x / scale). Lane k of group g of `even` holds
    /// q[32g + 2k] and of `odd` q[32g + 2k + 1], matching the little-endian int16 view of the weight bytes.
    static func quantizeActivations(_ x: UnsafePointer<Float>, rows: Int, cols: Int, block: Int, into s: Q8Scratch) {
        s.ensure(rows: rows, cols: cols)
        let groups = cols / 32, nb = cols / block, gpb = block / 32
        for i in 0..<rows {
            let xr = x + i * cols
            for b in 0..<nb {
                var amax: Float = 0
                for j in (b * block)..<((b + 1) * block) { amax = max(amax, abs(xr[j])) }
                let scale = amax / 127
                let inv: Float = scale > 0 ? 1 / scale : 0
                s.scales[i * nb + b] = scale
                for g in (b * gpb)..<((b + 1) * gpb) {
                    var e = Q8Scratch.Lanes(), o = Q8Scratch.Lanes()
                    for k in 0..<16 {
                        e[k] = Int16((xr[32 * g + 2 * k] * inv).rounded())
                        o[k] = Int16((xr[32 * g + 2 * k + 1] * inv).rounded())
                    }
                    s.even[i * groups + g] = e
                    s.odd[i * groups + g] = o
                }
            }
        }
    }

    private struct Job: @unchecked Sendable {  // raw pointers for the workers; the caller waits for them
        let w: Q8Matrix, s: Q8Scratch, y: UnsafeMutablePointer<Float>, rows: Int, accumulate: Bool
    }

    /// The int8 x int8 products, output rows split over the BLAS thread count.
    static func integerProduct(rows: Int, weight w: Q8Matrix, scratch s: Q8Scratch, into y: UnsafeMutablePointer<Float>,
                               accumulate: Bool) {
        let job = Job(w: w, s: s, y: y, rows: rows, accumulate: accumulate)
        let workers = max(1, min(BLASThreads.current, w.rows / 32))
        if workers == 1 {
            integerRows(job, 0, w.rows)
        } else {
            DispatchQueue.concurrentPerform(iterations: workers) { part in
                let per = ((job.w.rows + workers - 1) / workers + 7) / 8 * 8
                let r0 = min(job.w.rows, part * per)
                integerRows(job, r0, min(job.w.rows, r0 + per))
            }
        }
    }

    private static func integerRows(_ job: Job, _ r0: Int, _ r1: Int) {
        typealias I16 = Q8Scratch.Lanes
        typealias I32 = SIMD8<Int32>
        let w = job.w, s = job.s
        let cols = w.cols, nb = w.blocksPerRow, gpb = w.block / 32, groups = cols / 32
        for r in r0..<r1 {
            let wRow = UnsafeRawPointer(w.values + r * cols)
            let wScales = w.scales + r * nb
            for i in 0..<job.rows {
                let xe = s.even + i * groups, xo = s.odd + i * groups, xs = s.scales + i * nb
                var total: Float = 0
                for b in 0..<nb {
                    var acc0 = I32(), acc1 = I32()
                    for g in (b * gpb)..<((b + 1) * gpb) {
                        // 32 weight bytes as 16 int16 lanes: the low byte of each lane is element 2k, the high 2k+1.
                        let v = wRow.loadUnaligned(fromByteOffset: g * 32, as: I16.self)
                        let lo = (v &<< 8) &>> 8, hi = v &>> 8
                        // |q| <= 127 on both sides, so a lane's two products add up to at most 32258: fits int16.
                        let p = lo &* xe[g] &+ hi &* xo[g]
                        let p32 = unsafeBitCast(p, to: I32.self)
                        acc0 &+= (p32 &<< 16) &>> 16
                        acc1 &+= p32 &>> 16
                    }
                    total += Float((acc0 &+ acc1).wrappedSum()) * (wScales[b] * xs[b])
                }
                let out = job.y + i * w.rows + r
                out.pointee = job.accumulate ? out.pointee + total : total
            }
        }
    }

    private struct DequantJob: @unchecked Sendable {  // raw pointers for the workers; the caller waits for them
        let w: Q8Matrix, out: UnsafeMutablePointer<Float>, r0: Int, r1: Int
    }

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
