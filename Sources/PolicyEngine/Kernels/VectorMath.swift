/// Vectorised float math for the non-BLAS loops (softmax, SiLU). Written with Swift SIMD types so the
/// compiler emits vector instructions regardless of the target's libm.
enum VectorMath {
    typealias V = SIMD8<Float>

    /// exp(x) for 8 lanes: Cephes-style range reduction x = n ln2 + r, |r| <= ln2/2, degree-5 polynomial;
    /// max relative error about 2e-7 over the clamped range [-87.3, 88.3] (below that it returns ~1e-38,
    /// above it ~2e38, never inf/NaN for finite input).
    @inline(__always)
    static func exp(_ v: V) -> V {
        let x = pointwiseMax(pointwiseMin(v, V(repeating: 88.3)), V(repeating: -87.3))
        // Round x / ln2 to the nearest integer n with the 1.5 * 2^23 trick: t's low mantissa bits hold n.
        let magic = V(repeating: 12_582_912)
        let t = x * 1.442_695_040_888_963_4 + magic
        let n = t - magic
        // r = x - n * ln2, with ln2 split in two for precision.
        var r = x - n * 0.693_359_375
        r = r + n * 2.121_944_4e-4
        var p = V(repeating: 1.987_569_150_0e-4)
        p = p * r + 1.398_199_950_7e-3
        p = p * r + 8.333_451_907_3e-3
        p = p * r + 4.166_579_589_4e-2
        p = p * r + 1.666_666_545_9e-1
        p = p * r + 5.000_000_120_1e-1
        let y = p * (r * r) + r + 1
        let ni = unsafeBitCast(t, to: SIMD8<Int32>.self) &- unsafeBitCast(magic, to: SIMD8<Int32>.self)
        return y * unsafeBitCast((ni &+ 127) &<< 23, to: V.self)
    }

    /// Scalar version through the same polynomial (used for loop tails so results match lane for lane).
    @inline(__always)
    static func exp(_ x: Float) -> Float { exp(V(repeating: x))[0] }

    @inline(__always)
    static func load(_ p: UnsafePointer<Float>) -> V { UnsafeRawPointer(p).loadUnaligned(as: V.self) }

    @inline(__always)
    static func store(_ v: V, _ p: UnsafeMutablePointer<Float>) { UnsafeMutableRawPointer(p).storeBytes(of: v, as: V.self) }

    /// Sum of squares with 8 independent accumulators.
    @inline(__always)
    static func sumOfSquares(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = V()
        var i = 0
        while i + 8 <= n {
            let a = load(x + i)
            acc += a * a  // not addingProduct: without FMA in the target that becomes a libm call
            i += 8
        }
        var s = acc.sum()
        while i < n {
            s += x[i] * x[i]
            i += 1
        }
        return s
    }

    /// max(x[0..<n]) (-inf for n == 0).
    static func max(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = V(repeating: -.infinity)
        var i = 0
        while i + 8 <= n {
            acc = pointwiseMax(acc, load(x + i))
            i += 8
        }
        var m = acc.max()
        while i < n {
            m = Swift.max(m, x[i])
            i += 1
        }
        return m
    }

    /// sum(exp((x[i] - shift) * scale)); when `out` is given the terms are also stored there.
    /// Accumulates 8 float lanes per block of 1024 elements, blocks in double.
    static func sumExp(
        _ x: UnsafePointer<Float>, _ n: Int, shift: Float, scale: Float = 1,
        out: UnsafeMutablePointer<Float>? = nil
    ) -> Double {
        var total: Double = 0
        let sv = V(repeating: shift)
        let kv = V(repeating: scale)
        var i = 0
        while i < n {
            let end = Swift.min(n, i + 1024)
            var acc = V()
            while i + 8 <= end {
                let e = exp((load(x + i) - sv) * kv)
                if let out { store(e, out + i) }
                acc += e
                i += 8
            }
            var s = acc.sum()
            while i < end {
                let e = exp((x[i] - shift) * scale)
                out?[i] = e
                s += e
                i += 1
            }
            total += Double(s)
        }
        return total
    }
}
