import CBLAS
import Foundation
import Synchronization

// Plain, checkable loops for everything that is not a matrix product (llm.c style). Matrix products go
// through CBLAS. All buffers are row-major Float arrays owned by the caller; nothing here allocates.

/// Controls OpenBLAS's thread pool (process wide) and the engine's own compute threads (`ComputePool`).
public enum BLASThreads {
    private static let configured = Mutex<Int>(0)

    /// Sets the number of threads of every later BLAS call and of the engine's parallel kernels.
    public static func set(_ n: Int) {
        configured.withLock { $0 = max(1, n) }
        openblas_set_num_threads(Int32(max(1, n)))
    }

    /// The configured thread count (OpenBLAS's own count at first use, until `set`). It stays the same while
    /// `withSingleThreadedBLAS` runs.
    public static var current: Int {
        configured.withLock {
            if $0 == 0 { $0 = Int(openblas_get_num_threads()) }
            return $0
        }
    }

    /// Runs `body` with OpenBLAS limited to one thread; the engine's `ComputePool` keeps `current` threads.
    ///
    /// An 8-bit forward step does its large products on the `ComputePool`; its few BLAS calls (attention) would
    /// otherwise wake OpenBLAS's workers, which then spin in `sched_yield` for up to 2^28 cycles after each call
    /// (OPENBLAS_THREAD_TIMEOUT) and take a core from the int8 products running next (measured with perf: about
    /// 16% of a collaboration benchmark's samples in OpenBLAS's idle loop).
    static func withSingleThreadedBLAS<T>(_ body: () throws -> T) rethrows -> T {
        let n = current
        guard n > 1 else { return try body() }
        openblas_set_num_threads(1)
        singleThreaded.store(true, ordering: .relaxed)
        defer {
            singleThreaded.store(false, ordering: .relaxed)
            openblas_set_num_threads(Int32(n))
        }
        return try body()
    }

    private static let singleThreaded = Atomic<Bool>(false)

    /// Inside `withSingleThreadedBLAS`: kernels split their BLAS calls over the `ComputePool` themselves.
    static var blasIsSingleThreaded: Bool { singleThreaded.load(ordering: .relaxed) }
}

/// OpenBLAS kernel selection.
///
/// Debian's DYNAMIC_ARCH OpenBLAS 0.3.21 does not recognise some virtualised Xeons and falls back to the
/// "Prescott" (SSE3) kernels, which run sgemm 3-4x slower than the AVX-512 ("SkylakeX") ones on the same
/// machine. `selectOptimizedCore()` re-runs OpenBLAS's dynamic core selection with OPENBLAS_CORETYPE set
/// from the CPU flags in /proc/cpuinfo. It only acts when the library exports its dynamic-arch entry
/// points, the user did not set OPENBLAS_CORETYPE, and the detected core is a generic fallback.
public enum BLASCore {
    /// The OpenBLAS kernel family in use ("SkylakeX", "Haswell", "Prescott", ...), if the library says.
    public static var name: String? {
        guard let f = symbol("openblas_get_corename") else { return nil }
        let fn = unsafeBitCast(f, to: (@convention(c) () -> UnsafePointer<CChar>?).self)
        return fn().map { String(cString: $0) }
    }

    private static let generic: Set<String> = [
        "prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge",
        "atom", "banias", "katmai", "coppermine", "northwood", "unknown",
    ]

    nonisolated(unsafe) private static var done = false
    private static let lock = NSLock()

    /// Switches to AVX-512 or AVX2 kernels when OpenBLAS picked a generic fallback on a CPU that has them.
    /// Call once at startup, before other threads use BLAS. Returns the core name in use afterwards.
    @discardableResult
    public static func selectOptimizedCore() -> String? {
        lock.lock()
        defer { lock.unlock() }
        if done { return name }
        done = true
        #if os(Linux)
            guard ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"] == nil,
                ProcessInfo.processInfo.environment["POLICYENGINE_KEEP_BLAS_CORE"] == nil,
                let current = name, generic.contains(current.lowercased()),
                let quit = symbol("gotoblas_dynamic_quit"), let initialise = symbol("gotoblas_dynamic_init"),
                let cpuinfo = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8),
                let flagsLine = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") })
            else { return name }
            let flags = Set(flagsLine.split(separator: " ").map(String.init))
            let target: String
            if ["avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"].allSatisfy(flags.contains) {
                target = "SkylakeX"
            } else if ["avx2", "fma"].allSatisfy(flags.contains) {
                target = "Haswell"
            } else {
                return name
            }
            setenv("OPENBLAS_CORETYPE", target, 1)
            unsafeBitCast(quit, to: (@convention(c) () -> Void).self)()
            unsafeBitCast(initialise, to: (@convention(c) () -> Void).self)()
            unsetenv("OPENBLAS_CORETYPE")
        #endif
        return name
    }

    private static func symbol(_ s: String) -> UnsafeMutableRawPointer? {
        #if os(Linux)
            return dlsym(UnsafeMutableRawPointer(bitPattern: 0), s)  // RTLD_DEFAULT
        #else
            return dlsym(UnsafeMutableRawPointer(bitPattern: -2), s)  // RTLD_DEFAULT on Darwin
        #endif
    }
}

enum Kernels {
    /// y[rows, outDim] = x[rows, inDim] * W[outDim, inDim]^T (+ bias) (+ y when `accumulate`).
    ///
    /// One row: sgemv (OpenBLAS threads it and reads the weights at full bandwidth). A few rows (batched
    /// decode): sgemm on slices of W small enough for OpenBLAS's "small matrix" kernel, which multiplies
    /// straight from the inputs, the slices split over the BLAS thread count. One large sgemm instead packs
    /// the whole weight matrix first and, at 16 rows, runs at about half the speed. Many rows (prefill): one sgemm.
    @inline(__always)
    static func linear(
        _ x: UnsafePointer<Float>, rows: Int, inDim: Int, weight: UnsafePointer<Float>, outDim: Int,
        bias: UnsafePointer<Float>?, into y: UnsafeMutablePointer<Float>, accumulate: Bool = false
    ) {
        let beta: Float = accumulate ? 1 : 0
        if rows == 1 {
            cblas_sgemv(
                CblasRowMajor, CblasNoTrans, Int32(outDim), Int32(inDim), 1, weight, Int32(inDim),
                x, 1, beta, y, 1)
        } else if rows <= slicedMaxRows && outDim >= 2 * maxSliceRows {
            slicedGemm(x, rows: rows, inDim: inDim, weight: weight, outDim: outDim, beta: beta, into: y)
        } else {
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outDim), Int32(inDim), 1,
                x, Int32(inDim), weight, Int32(inDim), beta, y, Int32(outDim))
        }
        if let bias {
            for r in 0..<rows {
                let yr = y + r * outDim
                for j in 0..<outDim { yr[j] += bias[j] }
            }
        }
    }

    static let slicedMaxRows = 16
    static let maxSliceRows = 64

    /// Threads the engine's own parallel kernels use (calling thread plus `ComputePool` workers): the BLAS
    /// thread count the user set, capped by the pool's size.
    static var computeThreads: Int { min(BLASThreads.current, ComputePool.shared.workerCount + 1) }

    /// Output rows per sgemm slice for `rows` x `inDim` inputs. OpenBLAS 0.3's SkylakeX build takes its
    /// unpacked small-matrix kernel only while rows * slice * inDim <= 1e6 (and falls back to packing both
    /// operands above that), so the slice shrinks as the input dimension grows: 64 output rows for 16 x 896,
    /// 12 for 16 x 4864 (the down projection). Measured on 16-row decode steps of a Qwen2.5-0.5B shape, the
    /// K-dependent slice runs the step about 10% faster than a fixed 64 and about 1.7x faster than one sgemm.
    static func sliceRows(rows: Int, inDim: Int) -> Int {
        max(8, min(maxSliceRows, 1_000_000 / max(1, rows * inDim)))
    }

    private struct GemmArgs: @unchecked Sendable {  // raw pointers for the workers; the caller waits for them
        let x: UnsafePointer<Float>, w: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>
        let rows: Int, inDim: Int, outDim: Int, beta: Float
    }

    private static func slicedGemm(
        _ x: UnsafePointer<Float>, rows: Int, inDim: Int, weight: UnsafePointer<Float>,
        outDim: Int, beta: Float, into y: UnsafeMutablePointer<Float>
    ) {
        let a = GemmArgs(x: x, w: weight, y: y, rows: rows, inDim: inDim, outDim: outDim, beta: beta)
        let slice = sliceRows(rows: rows, inDim: inDim)
        // Parts of a few slices each, claimed dynamically: a thread that starts late (a parked worker waking up)
        // takes fewer parts instead of leaving the other one waiting at the end.
        let slices = (outDim + slice - 1) / slice
        let threads = Kernels.computeThreads
        ComputePool.shared.run(count: slices, maxParts: threads <= 1 ? 1 : threads * 8) { _, range in
            var n0 = range.lowerBound * slice
            let end = min(a.outDim, range.upperBound * slice)
            while n0 < end {
                let n = min(slice, end - n0)
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(a.rows), Int32(n), Int32(a.inDim), 1,
                    a.x, Int32(a.inDim), a.w + n0 * a.inDim, Int32(a.inDim), a.beta, a.y + n0, Int32(a.outDim))
                n0 += n
            }
        }
    }

    /// RMSNorm over `rows` vectors of length `dim`: out = x / sqrt(mean(x^2) + eps) * weight.
    /// `out` may alias `x`. `rstd` (training) receives each row's 1 / sqrt(mean(x^2) + eps) for the backward.
    @inline(__always)
    static func rmsNorm(
        _ x: UnsafePointer<Float>, weight: UnsafePointer<Float>, rows: Int, dim: Int, eps: Float,
        into out: UnsafeMutablePointer<Float>, rstd: UnsafeMutablePointer<Float>? = nil
    ) {
        for r in 0..<rows {
            let xr = x + r * dim
            let o = out + r * dim
            let ss = VectorMath.sumOfSquares(xr, dim)
            let inv = 1 / (ss / Float(dim) + eps).squareRoot()
            rstd?[r] = inv
            for i in 0..<dim { o[i] = weight[i] * (xr[i] * inv) }
        }
    }

    /// HF rotate_half RoPE on `heads` vectors of length `headDim` starting at `x` with stride `headDim`:
    /// x1 = x[:d/2], x2 = x[d/2:]; out = [x1*cos - x2*sin, x2*cos + x1*sin].
    @inline(__always)
    static func rope(
        _ x: UnsafeMutablePointer<Float>, heads: Int, headDim: Int,
        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>
    ) {
        let half = headDim / 2
        for h in 0..<heads {
            let v = x + h * headDim
            for i in 0..<half {
                let a = v[i]
                let b = v[i + half]
                v[i] = a * cos[i] - b * sin[i]
                v[i + half] = b * cos[i] + a * sin[i]
            }
        }
    }

    /// gate[i] = silu(gate[i]) * up[i]
    @inline(__always)
    static func swiglu(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        swiglu(gate, up, out: gate, count: count)
    }

    /// out[i] = silu(gate[i]) * up[i]  (`out` may be `gate`: each element is read before it is written)
    @inline(__always)
    static func swiglu(_ gate: UnsafePointer<Float>, _ up: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i + 8 <= count {
            let g = VectorMath.load(gate + i)
            VectorMath.store(g / (1 + VectorMath.exp(-g)) * VectorMath.load(up + i), out + i)
            i += 8
        }
        while i < count {
            let g = gate[i]
            out[i] = g / (1 + VectorMath.exp(-g)) * up[i]
            i += 1
        }
    }

    /// In-place softmax of row[0..<valid]; row[valid..<width] is set to zero.
    @inline(__always)
    static func maskedSoftmax(_ row: UnsafeMutablePointer<Float>, valid: Int, width: Int) {
        var m = -Float.infinity
        for j in 0..<valid where row[j] > m { m = row[j] }
        var acc = VectorMath.V()
        let mv = VectorMath.V(repeating: m)
        var j = 0
        while j + 8 <= valid {
            let e = VectorMath.exp(VectorMath.load(row + j) - mv)
            VectorMath.store(e, row + j)
            acc += e
            j += 8
        }
        var sum = acc.sum()
        while j < valid {
            let e = VectorMath.exp(row[j] - m)
            row[j] = e
            sum += e
            j += 1
        }
        let inv = 1 / sum
        for j in 0..<valid { row[j] *= inv }
        if valid < width { for j in valid..<width { row[j] = 0 } }
    }

    /// out[i] += a[i]
    @inline(__always)
    static func add(_ out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { out[i] += a[i] }
    }
}

/// Small wall-clock timing helper for ad-hoc measurements and benchmarks.
public struct Stopwatch: Sendable {
    private var start: UInt64
    public init() { start = DispatchTime.now().uptimeNanoseconds }
    public var seconds: Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
    public mutating func reset() { start = DispatchTime.now().uptimeNanoseconds }
    /// Runs `body` and returns its result and the elapsed seconds.
    public static func measure<T>(_ body: () throws -> T) rethrows -> (T, Double) {
        let s = Stopwatch()
        let r = try body()
        return (r, s.seconds)
    }
}

/// Cache-line aligned buffers for the kernels. A row that starts mid-line costs a second load on every
/// 64-byte vector load of it; with x rows from the default 16-byte aligned allocator the 16-row decode
/// products ran about 15% slower. Freed with the pointer's `deallocate()`.
enum AlignedMemory {
    static let alignment = 64

    static func allocate<T>(_ type: T.Type, capacity: Int) -> UnsafeMutablePointer<T> {
        let n = max(capacity, 1)
        return UnsafeMutableRawPointer.allocate(byteCount: n * MemoryLayout<T>.stride, alignment: alignment)
            .bindMemory(to: T.self, capacity: n)
    }
}
