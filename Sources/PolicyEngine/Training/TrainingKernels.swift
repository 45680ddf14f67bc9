import CBLAS
import Foundation

// Forward and backward of every layer kind of the training model, side by side (llm.c style).
// Row-major float32 buffers owned by the caller; matrix products through CBLAS; nothing allocates.
// Backward functions ADD into their gradient outputs (parameter gradients and input gradients alike),
// unless the comment says otherwise.

enum TrainKernels {
    // MARK: matrix products

    /// C[m, n] (+)= alpha * A[m, k] * B[n, k]^T   (nn.Linear forward: y = x W^T)
    @inline(__always)
    static func gemmNT(
        _ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
        _ c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float = 1, beta: Float
    ) {
        cblas_sgemm(
            CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), alpha,
            a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// C[m, n] (+)= alpha * A[m, k] * B[k, n]   (input gradient: dx = dy W)
    @inline(__always)
    static func gemmNN(
        _ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
        _ c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float = 1, beta: Float
    ) {
        cblas_sgemm(
            CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
            a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// C[m, n] (+)= alpha * A[k, m]^T * B[k, n]   (weight gradient: dW = dy^T x)
    @inline(__always)
    static func gemmTN(
        _ m: Int, _ n: Int, _ k: Int, _ a: UnsafePointer<Float>, lda: Int, _ b: UnsafePointer<Float>, ldb: Int,
        _ c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float = 1, beta: Float
    ) {
        cblas_sgemm(
            CblasRowMajor, CblasTrans, CblasNoTrans, Int32(m), Int32(n), Int32(k), alpha,
            a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// db[j] += sum_r dy[r, j]
    @inline(__always)
    static func biasBackward(_ dy: UnsafePointer<Float>, rows: Int, dim: Int, db: UnsafeMutablePointer<Float>) {
        for r in 0..<rows {
            let d = dy + r * dim
            for j in 0..<dim { db[j] += d[j] }
        }
    }

    // MARK: RMSNorm  y = w * x * rstd,  rstd = 1 / sqrt(mean(x^2) + eps)

    // Forward: Kernels.rmsNorm(x, weight:, rows:, dim:, eps:, into:, rstd:), which also stores rstd per row.

    /// dx += rstd * (w*dy) - rstd^3 / dim * x * sum(w*dy*x);  dw += sum_rows dy * x * rstd.
    /// `dx` may not alias `dy`.
    @inline(__always)
    static func rmsNormBackward(
        _ dy: UnsafePointer<Float>, x: UnsafePointer<Float>, weight w: UnsafePointer<Float>,
        rstd: UnsafePointer<Float>, rows: Int, dim: Int,
        dx: UnsafeMutablePointer<Float>, dw: UnsafeMutablePointer<Float>?
    ) {
        for r in 0..<rows {
            let d = dy + r * dim
            let xr = x + r * dim
            let o = dx + r * dim
            let inv = rstd[r]
            var dot: Float = 0
            for i in 0..<dim { dot += w[i] * d[i] * xr[i] }
            let c = inv * inv * inv * dot / Float(dim)
            for i in 0..<dim { o[i] += inv * w[i] * d[i] - c * xr[i] }
            if let dw { for i in 0..<dim { dw[i] += d[i] * xr[i] * inv } }
        }
    }

    // MARK: RoPE (rotate_half): [a, b] -> [a cos - b sin, b cos + a sin]; backward rotates by -angle.

    @inline(__always)
    static func ropeForward(
        _ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>
    ) {
        let half = headDim / 2
        for r in 0..<rows {
            Kernels.rope(x + r * heads * headDim, heads: heads, headDim: headDim, cos: cos + r * half, sin: sin + r * half)
        }
    }

    /// In place: the transpose of the rotation (rotation by -angle) applied to the gradient.
    @inline(__always)
    static func ropeBackward(
        _ dx: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim: Int,
        cos: UnsafePointer<Float>, sin: UnsafePointer<Float>
    ) {
        let half = headDim / 2
        for r in 0..<rows {
            let c = cos + r * half
            let s = sin + r * half
            for h in 0..<heads {
                let v = dx + (r * heads + h) * headDim
                for i in 0..<half {
                    let a = v[i]
                    let b = v[i + half]
                    v[i] = a * c[i] + b * s[i]
                    v[i + half] = b * c[i] - a * s[i]
                }
            }
        }
    }

    // MARK: SwiGLU  a = silu(g) * u

    @inline(__always)
    static func swigluForward(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, out a: UnsafeMutablePointer<Float>, count: Int) {
        Kernels.swiglu(g, u, out: a, count: count)
    }

    /// dg = da * u * silu'(g), du = da * silu(g)   (written, not added)
    @inline(__always)
    static func swigluBackward(
        _ da: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>,
        dg: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>, count: Int
    ) {
        var i = 0
        while i + 8 <= count {
            let x = VectorMath.load(g + i)
            let d = VectorMath.load(da + i)
            let s = 1 / (1 + VectorMath.exp(-x))
            VectorMath.store(d * x * s, du + i)
            VectorMath.store(d * VectorMath.load(u + i) * s * (1 + x * (1 - s)), dg + i)
            i += 8
        }
        while i < count {
            let x = g[i]
            let s = 1 / (1 + VectorMath.exp(-x))
            du[i] = da[i] * x * s
            dg[i] = da[i] * u[i] * s * (1 + x * (1 - s))
            i += 1
        }
    }

    // MARK: causal self-attention of one query head against its KV head (GQA)

    /// out_h[T, hd] = softmax(scale * q_h k_g^T + causal mask) v_g. q/k/v/out rows have strides ldq/ldk/ldo.
    /// `p` ([T, T] scratch) receives the probabilities (upper triangle zero).
    static func attentionForward(
        q: UnsafePointer<Float>, ldq: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldk: Int,
        out: UnsafeMutablePointer<Float>, ldo: Int, T: Int, headDim hd: Int, scale: Float,
        p: UnsafeMutablePointer<Float>
    ) {
        gemmNT(T, T, hd, q, lda: ldq, k, ldb: ldk, p, ldc: T, alpha: scale, beta: 0)
        for t in 0..<T { Kernels.maskedSoftmax(p + t * T, valid: t + 1, width: T) }
        gemmNN(T, hd, T, p, lda: T, v, ldb: ldk, out, ldc: ldo, beta: 0)
    }

    /// Given P (from the forward) and dOut: dq_h += scale dS k_g, dk_g += scale dS^T q_h, dv_g += P^T dOut,
    /// with dP = dOut v^T and dS = P * (dP - rowsum(dP * P)). `dp` is [T, T] scratch.
    static func attentionBackward(
        dOut: UnsafePointer<Float>, ldo: Int, q: UnsafePointer<Float>, ldq: Int,
        k: UnsafePointer<Float>, v: UnsafePointer<Float>, ldk: Int,
        dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>, dv: UnsafeMutablePointer<Float>,
        T: Int, headDim hd: Int, scale: Float,
        p: UnsafePointer<Float>, dp: UnsafeMutablePointer<Float>
    ) {
        gemmTN(T, hd, T, p, lda: T, dOut, ldb: ldo, dv, ldc: ldk, beta: 1)
        gemmNT(T, T, hd, dOut, lda: ldo, v, ldb: ldk, dp, ldc: T, beta: 0)
        for t in 0..<T {
            let pr = p + t * T
            let dr = dp + t * T
            var dot: Float = 0
            for j in 0...t { dot += pr[j] * dr[j] }
            for j in 0...t { dr[j] = pr[j] * (dr[j] - dot) }
            if t + 1 < T { for j in (t + 1)..<T { dr[j] = 0 } }
        }
        gemmNN(T, hd, T, dp, lda: T, k, ldb: ldk, dq, ldc: ldq, alpha: scale, beta: 1)
        gemmTN(T, hd, T, dp, lda: T, q, ldb: ldq, dk, ldc: ldk, alpha: scale, beta: 1)
    }

    // MARK: log-probability head

    /// For each row: logsumexp of the logits (float64 accumulation of the exponentials).
    @inline(__always)
    static func logSumExp(_ row: UnsafePointer<Float>, count: Int) -> Float {
        let m = VectorMath.max(row, count)
        return m + Float(Foundation.log(VectorMath.sumExp(row, count, shift: m)))
    }

    /// In place, on a slice of one logits row: logits -> d(w * (logits[target] - lse)) / d logits
    /// = w * (onehot(target) - exp(logits - lse)). `target` is relative to the slice (may fall outside it).
    @inline(__always)
    static func logprobBackward(_ row: UnsafeMutablePointer<Float>, count: Int, lse: Float, weight w: Float, target: Int) {
        let lv = VectorMath.V(repeating: lse)
        let wv = VectorMath.V(repeating: -w)
        var j = 0
        while j + 8 <= count {
            VectorMath.store(wv * VectorMath.exp(VectorMath.load(row + j) - lv), row + j)
            j += 8
        }
        while j < count {
            row[j] = -w * VectorMath.exp(row[j] - lse)
            j += 1
        }
        if target >= 0 && target < count { row[target] += w }
    }
}
