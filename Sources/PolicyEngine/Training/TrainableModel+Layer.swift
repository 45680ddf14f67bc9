import CBLAS
import Foundation

// One decoder layer of the training model: each forward beside its backward (llm.c style). The layer's
// internals stay in the workspace between the two (backward runs right after a recompute of the forward).
extension TrainableModel {
    // MARK: linear with optional LoRA

    /// y (+)= x W^T + b (+ scale (x A^T) B^T); the LoRA intermediate x A^T goes to `u` [T, r].
    @inline(__always)
    func linearForward(
        _ lin: TrainLinear, x: UnsafePointer<Float>, T: Int, y: UnsafeMutablePointer<Float>,
        accumulate: Bool, adapters: Bool, u: UnsafeMutablePointer<Float>
    ) {
        let n = lin.outDim
        let k = lin.inDim
        // The base product is the inference kernel (sgemv / sliced sgemm / sgemm by row count, bias included).
        Kernels.linear(
            x, rows: T, inDim: k, weight: lin.weight.value, outDim: n, bias: lin.bias?.value, into: y, accumulate: accumulate)
        if adapters, let a = lin.loraA, let bm = lin.loraB {
            let r = a.shape[0]
            TrainKernels.gemmNT(T, r, k, x, lda: k, a.value, ldb: k, u, ldc: r, beta: 0)
            TrainKernels.gemmNT(T, n, r, u, lda: r, bm.value, ldb: r, y, ldc: n, alpha: loraScale, beta: 1)
        }
    }

    /// Parameter gradients of the linear from dy, and dx (+)= dy W (+ scale dy B A) when `dx` is given.
    @inline(__always)
    func linearBackward(
        _ lin: TrainLinear, x: UnsafePointer<Float>, T: Int, dy: UnsafePointer<Float>,
        dx: UnsafeMutablePointer<Float>?, accumulate: Bool, adapters: Bool,
        u: UnsafePointer<Float>, du: UnsafeMutablePointer<Float>
    ) {
        let n = lin.outDim
        let k = lin.inDim
        if let gW = lin.weight.grad { TrainKernels.gemmTN(n, k, T, dy, lda: n, x, ldb: k, gW, ldc: k, beta: 1) }
        if let b = lin.bias, let gb = b.grad { TrainKernels.biasBackward(dy, rows: T, dim: n, db: gb) }
        if let dx { TrainKernels.gemmNN(T, k, n, dy, lda: n, lin.weight.value, ldb: k, dx, ldc: k, beta: accumulate ? 1 : 0) }
        if adapters, let a = lin.loraA, let bm = lin.loraB {
            let r = a.shape[0]
            let s = loraScale
            if let gB = bm.grad { TrainKernels.gemmTN(n, r, T, dy, lda: n, u, ldb: r, gB, ldc: r, alpha: s, beta: 1) }
            // du = s * dy B  [T, r]
            TrainKernels.gemmNN(T, r, n, dy, lda: n, bm.value, ldb: r, du, ldc: r, alpha: s, beta: 0)
            if let gA = a.grad { TrainKernels.gemmTN(r, k, T, du, lda: r, x, ldb: k, gA, ldc: k, beta: 1) }
            if let dx { TrainKernels.gemmNN(T, k, r, du, lda: r, a.value, ldb: k, dx, ldc: k, beta: 1) }
        }
    }

    // MARK: decoder layer

    /// Forward of layer `l` on T rows; every intermediate the backward needs stays in the workspace.
    /// With `out` nil (the recompute in backward) the down projection, whose output backward never needs, is skipped.
    /// `mlp`: where the gate/up outputs go (default: the workspace); with `mlpStored` they already hold this
    /// layer's values (kept by the tape) and the two products are skipped.
    func layerForward(
        _ l: Int, x: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>?, T: Int, adapters: Bool,
        section: String, mlp: (g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>)?,
        mlpStored: Bool
    ) {
        let prof = profiler
        let c = config
        let w = layers[l]
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let hd = c.headDim
        let nH = c.numAttentionHeads
        let nKV = c.numKeyValueHeads
        let nRep = nH / nKV
        let eps = c.rmsNormEps
        let s = ws
        Kernels.rmsNorm(x, weight: w.inputNorm.value, rows: T, dim: H, eps: eps, into: s.xn1.p, rstd: s.rstd1.p)
        linearForward(w.q, x: s.xn1.p, T: T, y: s.qRaw.p, accumulate: false, adapters: adapters, u: s.loraU(0, T))
        linearForward(w.k, x: s.xn1.p, T: T, y: s.kRaw.p, accumulate: false, adapters: adapters, u: s.loraU(1, T))
        linearForward(w.v, x: s.xn1.p, T: T, y: s.v.p, accumulate: false, adapters: adapters, u: s.loraU(2, T))
        if let qn = w.qNorm, let kn = w.kNorm {
            Kernels.rmsNorm(s.qRaw.p, weight: qn.value, rows: T * nH, dim: hd, eps: eps, into: s.q.p, rstd: s.rstdQ.p)
            Kernels.rmsNorm(s.kRaw.p, weight: kn.value, rows: T * nKV, dim: hd, eps: eps, into: s.k.p, rstd: s.rstdK.p)
        } else {
            s.q.p.update(from: s.qRaw.p, count: T * Q)
            s.k.p.update(from: s.kRaw.p, count: T * KV)
        }
        TrainKernels.ropeForward(s.q.p, rows: T, heads: nH, headDim: hd, cos: s.cos.p, sin: s.sin.p)
        TrainKernels.ropeForward(s.k.p, rows: T, heads: nKV, headDim: hd, cos: s.cos.p, sin: s.sin.p)
        prof.mark(section + "qkv")
        let scale = 1 / Float(hd).squareRoot()
        for h in 0..<nH {
            let g = h / nRep
            TrainKernels.attentionForward(
                q: s.q.p + h * hd, ldq: Q, k: s.k.p + g * hd, v: s.v.p + g * hd, ldk: KV,
                out: s.att.p + h * hd, ldo: Q, T: T, headDim: hd, scale: scale, p: s.probs.p)
        }
        prof.mark(section + "attention")
        // x2 = x + att Wo^T (+ bo)
        s.x2.p.update(from: x, count: T * H)
        linearForward(w.o, x: s.att.p, T: T, y: s.x2.p, accumulate: true, adapters: adapters, u: s.loraU(3, T))
        // MLP
        Kernels.rmsNorm(s.x2.p, weight: w.postNorm.value, rows: T, dim: H, eps: eps, into: s.xn2.p, rstd: s.rstd2.p)
        let g = mlp?.g ?? s.g.p
        let u = mlp?.u ?? s.u.p
        if mlpStored {
            // Only the LoRA intermediates x A^T are needed again.
            for (lin, slot) in [(w.gate, 4), (w.up, 5)] where adapters && lin.loraA != nil {
                let r = lin.loraA!.shape[0]
                TrainKernels.gemmNT(T, r, H, s.xn2.p, lda: H, lin.loraA!.value, ldb: H, s.loraU(slot, T), ldc: r, beta: 0)
            }
        } else {
            linearForward(w.gate, x: s.xn2.p, T: T, y: g, accumulate: false, adapters: adapters, u: s.loraU(4, T))
            linearForward(w.up, x: s.xn2.p, T: T, y: u, accumulate: false, adapters: adapters, u: s.loraU(5, T))
        }
        TrainKernels.swigluForward(g, u, out: s.a.p, count: T * I)
        if let out {
            out.update(from: s.x2.p, count: T * H)
            linearForward(w.down, x: s.a.p, T: T, y: out, accumulate: true, adapters: adapters, u: s.loraU(6, T))
        } else if adapters, let a = w.down.loraA {
            // Backward needs the LoRA intermediate a A^T of the down projection.
            let r = a.shape[0]
            TrainKernels.gemmNT(T, r, I, s.a.p, lda: I, a.value, ldb: I, s.loraU(6, T), ldc: r, beta: 0)
        }
        prof.mark(section + "o+mlp")
    }

    /// Backward of layer `l` after `layerForward` recomputed its internals for the same input `x`:
    /// d(in) = dOut + contributions; written into `dIn` (may not alias dOut).
    func layerBackward(
        _ l: Int, x: UnsafePointer<Float>, dOut: UnsafePointer<Float>, dIn: UnsafeMutablePointer<Float>,
        T: Int, needInputGradient: Bool,
        mlp: (g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>)?
    ) {
        let c = config
        let w = layers[l]
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let hd = c.headDim
        let nH = c.numAttentionHeads
        let nKV = c.numKeyValueHeads
        let nRep = nH / nKV
        let s = ws
        let prof = profiler
        let du = s.loraDU.p
        // Residual: dx2 = dOut (+ MLP branch below). dIn doubles as dx2.
        let dx2 = dIn
        dx2.update(from: dOut, count: T * H)
        // down: da = dOut Wd
        linearBackward(w.down, x: s.a.p, T: T, dy: dOut, dx: s.da.p, accumulate: false, adapters: true, u: s.loraU(6, T), du: du)
        TrainKernels.swigluBackward(s.da.p, mlp?.g ?? s.g.p, mlp?.u ?? s.u.p, dg: s.dg.p, du: s.du.p, count: T * I)
        linearBackward(w.gate, x: s.xn2.p, T: T, dy: s.dg.p, dx: s.dxn.p, accumulate: false, adapters: true, u: s.loraU(4, T), du: du)
        linearBackward(w.up, x: s.xn2.p, T: T, dy: s.du.p, dx: s.dxn.p, accumulate: true, adapters: true, u: s.loraU(5, T), du: du)
        TrainKernels.rmsNormBackward(
            s.dxn.p, x: s.x2.p, weight: w.postNorm.value, rstd: s.rstd2.p, rows: T, dim: H,
            dx: dx2, dw: w.postNorm.grad)
        prof.mark("bwd.mlp")
        // o_proj: datt = dx2 Wo
        linearBackward(w.o, x: s.att.p, T: T, dy: dx2, dx: s.datt.p, accumulate: false, adapters: true, u: s.loraU(3, T), du: du)
        // attention, per query head
        s.dq.p.update(repeating: 0, count: T * Q)
        s.dk.p.update(repeating: 0, count: T * KV)
        s.dv.p.update(repeating: 0, count: T * KV)
        let scale = 1 / Float(hd).squareRoot()
        for h in 0..<nH {
            let g = h / nRep
            // Recompute this head's probabilities (the forward kept only its output).
            TrainKernels.gemmNT(T, T, hd, s.q.p + h * hd, lda: Q, s.k.p + g * hd, ldb: KV, s.probs.p, ldc: T, alpha: scale, beta: 0)
            for t in 0..<T { Kernels.maskedSoftmax(s.probs.p + t * T, valid: t + 1, width: T) }
            TrainKernels.attentionBackward(
                dOut: s.datt.p + h * hd, ldo: Q, q: s.q.p + h * hd, ldq: Q,
                k: s.k.p + g * hd, v: s.v.p + g * hd, ldk: KV,
                dq: s.dq.p + h * hd, dk: s.dk.p + g * hd, dv: s.dv.p + g * hd,
                T: T, headDim: hd, scale: scale, p: s.probs.p, dp: s.dprobs.p)
        }
        prof.mark("bwd.o+attention")
        TrainKernels.ropeBackward(s.dq.p, rows: T, heads: nH, headDim: hd, cos: s.cos.p, sin: s.sin.p)
        TrainKernels.ropeBackward(s.dk.p, rows: T, heads: nKV, headDim: hd, cos: s.cos.p, sin: s.sin.p)
        var dqRaw = s.dq.p
        var dkRaw = s.dk.p
        if let qn = w.qNorm, let kn = w.kNorm {
            s.dqRaw.p.update(repeating: 0, count: T * Q)
            s.dkRaw.p.update(repeating: 0, count: T * KV)
            TrainKernels.rmsNormBackward(
                s.dq.p, x: s.qRaw.p, weight: qn.value, rstd: s.rstdQ.p, rows: T * nH, dim: hd,
                dx: s.dqRaw.p, dw: qn.grad)
            TrainKernels.rmsNormBackward(
                s.dk.p, x: s.kRaw.p, weight: kn.value, rstd: s.rstdK.p, rows: T * nKV, dim: hd,
                dx: s.dkRaw.p, dw: kn.grad)
            dqRaw = s.dqRaw.p
            dkRaw = s.dkRaw.p
        }
        linearBackward(
            w.q, x: s.xn1.p, T: T, dy: dqRaw, dx: needInputGradient ? s.dxn.p : nil, accumulate: false,
            adapters: true, u: s.loraU(0, T), du: du)
        linearBackward(
            w.k, x: s.xn1.p, T: T, dy: dkRaw, dx: needInputGradient ? s.dxn.p : nil, accumulate: true,
            adapters: true, u: s.loraU(1, T), du: du)
        linearBackward(
            w.v, x: s.xn1.p, T: T, dy: s.dv.p, dx: needInputGradient ? s.dxn.p : nil, accumulate: true,
            adapters: true, u: s.loraU(2, T), du: du)
        if needInputGradient {
            TrainKernels.rmsNormBackward(
                s.dxn.p, x: x, weight: w.inputNorm.value, rstd: s.rstd1.p, rows: T, dim: H,
                dx: dx2, dw: w.inputNorm.grad)
        }
        prof.mark("bwd.qkv")
    }

}
