import CBLAS
import Foundation

extension TrainableModel {
    // MARK: backward

    /// Adds d(sum_i dLogprobs[i] * logprobs[i]) / d(params) into the gradient buffers. Positions after the
    /// last non-zero weight do not influence the loss (causal attention) and are skipped, as are lm_head
    /// rows with zero weight.
    public func backward(_ tape: ForwardTape, dLogprobs: [Float]) {
        lock.lock()
        defer { lock.unlock() }
        precondition(tape.owner == ObjectIdentifier(self), "backward: the tape comes from another model")
        precondition(
            tape.weightsVersion == weightsVersion,
            "backward: the weights changed since this tape's forward (optimiser step?); run forward again")
        precondition(
            dLogprobs.count == tape.tokens.count - 1,
            "backward: \(dLogprobs.count) weights for \(tape.tokens.count - 1) logprobs")
        if case .frozen = mode { return }
        guard let last = dLogprobs.lastIndex(where: { $0 != 0 }) else { return }
        let c = config
        let H = c.hiddenSize
        let L = c.numHiddenLayers
        let V = c.vocabSize
        let Tfull = tape.tokens.count
        let T = last + 1  // rows that influence the loss
        ws.ensure(config: c, rows: Tfull, rank: loraRank, vocabSlice: vocabSlice)
        fillRope(T)
        let tokens = tape.tokens
        let xL = tape.hidden + L * Tfull * H
        // dX: gradient w.r.t. the current layer's output, [T, H]
        var dX = ws.dh0.p
        var dNext = ws.dh1.p
        dX.update(repeating: 0, count: T * H)

        profiler.start()
        // Head, on the rows with non-zero weight only, one vocabulary slice at a time (each lm_head row is read,
        // and its gradient updated, once): dlogits = w * (onehot(target) - exp(logits - lse)),
        // dhn += dlogits W_slice, dW_slice += dlogits^T hn.
        let rows = (0..<T).filter { dLogprobs[$0] != 0 }
        let n = rows.count
        for (j, r) in rows.enumerated() { (ws.hx.p + j * H).update(from: xL + r * H, count: H) }
        Kernels.rmsNorm(
            ws.hx.p, weight: finalNorm.value, rows: n, dim: H, eps: c.rmsNormEps,
            into: ws.hn.p, rstd: ws.rstdF.p)
        ws.dhn.p.update(repeating: 0, count: n * H)
        var v0 = 0
        while v0 < V {
            let vc = min(vocabSlice, V - v0)
            let W = lmHead.value + v0 * H
            TrainKernels.gemmNT(n, vc, H, ws.hn.p, lda: H, W, ldb: H, ws.logits.p, ldc: vc, beta: 0)
            for (j, r) in rows.enumerated() {
                TrainKernels.logprobBackward(
                    ws.logits.p + j * vc, count: vc, lse: tape.lse[r], weight: dLogprobs[r],
                    target: Int(tokens[r + 1]) - v0)
            }
            TrainKernels.gemmNN(n, H, vc, ws.logits.p, lda: vc, W, ldb: H, ws.dhn.p, ldc: H, beta: 1)
            if let gW = lmHead.grad {
                TrainKernels.gemmTN(vc, H, n, ws.logits.p, lda: vc, ws.hn.p, ldb: H, gW + v0 * H, ldc: H, beta: 1)
            }
            v0 += vc
        }
        ws.dhx.p.update(repeating: 0, count: n * H)
        TrainKernels.rmsNormBackward(
            ws.dhn.p, x: ws.hx.p, weight: finalNorm.value, rstd: ws.rstdF.p, rows: n, dim: H,
            dx: ws.dhx.p, dw: finalNorm.grad)
        for (j, r) in rows.enumerated() { Kernels.add(dX + r * H, ws.dhx.p + j * H, count: H) }
        profiler.mark("bwd.head")
        // Layers, last to first: recompute the layer from its stored input, then backpropagate.
        let needEmbedGrad = embed.grad != nil
        for l in stride(from: L - 1, through: 0, by: -1) {
            let x = tape.hidden + l * Tfull * H
            // Stored gate/up rows have stride T (the tape's length): the first T rows are this backward's rows.
            let gu = tape.mlpStore(l)
            layerForward(l, x: x, out: nil, T: T, adapters: true, section: "bwd.recompute.", mlp: gu, mlpStored: gu != nil)
            layerBackward(
                l, x: x, dOut: dX, dIn: dNext, T: T, needInputGradient: l > 0 || needEmbedGrad || layers[l].inputNorm.grad != nil,
                mlp: gu)
            swap(&dX, &dNext)
        }
        if let gE = embed.grad {
            for t in 0..<T { Kernels.add(gE + Int(tokens[t]) * H, dX + t * H, count: H) }
        }
        profiler.mark("bwd.embed")
    }
}
