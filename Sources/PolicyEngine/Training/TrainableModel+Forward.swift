import CBLAS
import Foundation

/// What `backward` needs from a `forward`: the input of every decoder layer (and the final hidden state)
/// for the positions of this sequence. Each layer's internals are recomputed during backward
/// (activation checkpointing), so a tape holds (layers + 1) * tokens * hidden floats.
public final class ForwardTape: @unchecked Sendable {  // immutable after forward, except logprobs
    public let tokens: [Int32]
    /// logprobs[i] = log p(tokens[i+1] | tokens[0...i]), count = tokens.count - 1.
    public var logprobs: [Float]
    /// logsumexp of each row's logits (T - 1), for the backward of the log-softmax.
    var lse: [Float] = []
    /// [(layers + 1), T, H]: hidden[l] is the input of layer l; hidden[layers] the final (pre-norm) state.
    let hidden: UnsafeMutablePointer<Float>
    let hiddenCount: Int
    /// Optional stored MLP activations (gate and up projections, [layers, 2, T, I]) for the first
    /// `mlpLayers` layers, so backward skips their recompute (see `TrainableModel.activationBudgetBytes`).
    let mlp: UnsafeMutablePointer<Float>?
    let mlpLayers: Int
    let mlpStride: Int
    /// Identifies the model that wrote the tape, and the version of its weights.
    let owner: ObjectIdentifier
    var weightsVersion: UInt64 = 0

    init(tokens: [Int32], layers: Int, hiddenSize: Int, owner: ObjectIdentifier, mlpLayers: Int = 0, intermediateSize: Int = 0) {
        self.tokens = tokens
        logprobs = []
        hiddenCount = (layers + 1) * tokens.count * hiddenSize
        hidden = .allocate(capacity: max(hiddenCount, 1))
        self.owner = owner
        self.mlpLayers = mlpLayers
        mlpStride = 2 * tokens.count * intermediateSize
        mlp = mlpLayers > 0 ? .allocate(capacity: mlpLayers * mlpStride) : nil
    }

    deinit {
        hidden.deallocate()
        mlp?.deallocate()
    }

    /// (gate, up) storage of layer `l`, when stored.
    func mlpStore(_ l: Int) -> (g: UnsafeMutablePointer<Float>, u: UnsafeMutablePointer<Float>)? {
        guard let mlp, l < mlpLayers else { return nil }
        let g = mlp + l * mlpStride
        return (g, g + mlpStride / 2)
    }

    /// Bytes held by the tape.
    public var byteCount: Int { hiddenCount * 4 + logprobs.count * 4 + lse.count * 4 + mlpLayers * mlpStride * 4 }
}

extension TrainableModel {
    // MARK: forward

    /// Full-sequence forward keeping a tape for `backward`.
    public func forward(_ tokens: [Int32]) -> ForwardTape {
        lock.lock()
        defer { lock.unlock() }
        check(tokens)
        let perLayer = 2 * tokens.count * config.intermediateSize * 4
        let mlpLayers = trainableParams.isEmpty ? 0 : min(config.numHiddenLayers, _activationBudgetBytes / max(perLayer, 1))
        let tape = ForwardTape(
            tokens: tokens, layers: config.numHiddenLayers, hiddenSize: config.hiddenSize,
            owner: ObjectIdentifier(self), mlpLayers: mlpLayers, intermediateSize: config.intermediateSize)
        tape.logprobs = run(tokens, adapters: true, tape: tape)
        tape.weightsVersion = weightsVersion
        return tape
    }

    /// Forward only (no tape kept).
    public func tokenLogprobs(_ tokens: [Int32]) -> [Float] {
        lock.lock()
        defer { lock.unlock() }
        check(tokens)
        return run(tokens, adapters: true, tape: nil)
    }

    /// The base model's log-probabilities: with LoRA, adapters off (the KL reference); otherwise the same as
    /// `tokenLogprobs` (the current weights; keep a `.frozen` copy for a full fine-tuning reference).
    public func baseLogprobs(_ tokens: [Int32]) -> [Float] {
        lock.lock()
        defer { lock.unlock() }
        check(tokens)
        return run(tokens, adapters: false, tape: nil)
    }

    func check(_ tokens: [Int32]) {
        precondition(!tokens.isEmpty, "\(TrainingError.emptyInput)")
        precondition(
            tokens.count <= config.maxPositionEmbeddings,
            "\(TrainingError.contextOverflow(needed: tokens.count, maxPositions: config.maxPositionEmbeddings))")
        for t in tokens {
            precondition(t >= 0 && Int(t) < config.vocabSize, "\(TrainingError.tokenOutOfRange(token: t, vocabSize: config.vocabSize))")
        }
    }

    func run(_ tokens: [Int32], adapters: Bool, tape: ForwardTape?) -> [Float] {
        let c = config
        let T = tokens.count
        let H = c.hiddenSize
        let L = c.numHiddenLayers
        ws.ensure(config: c, rows: T, rank: loraRank, vocabSlice: vocabSlice)
        fillRope(T)
        // Hidden states: the tape's storage, or two ping-pong buffers.
        func hidden(_ l: Int) -> UnsafeMutablePointer<Float> {
            if let tape { return tape.hidden + l * T * H }
            return l % 2 == 0 ? ws.h0.p : ws.h1.p
        }
        let x0 = hidden(0)
        profiler.start()
        for (t, tok) in tokens.enumerated() { (x0 + t * H).update(from: embed.value + Int(tok) * H, count: H) }
        for l in 0..<L {
            layerForward(
                l, x: hidden(l), out: hidden(l + 1), T: T, adapters: adapters, section: "fwd.",
                mlp: tape?.mlpStore(l), mlpStored: false)
        }
        // Head: log p(next token) per row. The vocabulary is processed in slices of lm_head rows so each weight is
        // read once: logits [rows, slice], with an online logsumexp (running max, double sum) per row.
        let xf = hidden(L)
        let V = c.vocabSize
        let n = T - 1
        var out = [Float](repeating: 0, count: n)
        if n > 0 {
            Kernels.rmsNorm(
                xf, weight: finalNorm.value, rows: n, dim: H, eps: c.rmsNormEps,
                into: ws.hn.p, rstd: ws.rstdF.p)
            var runMax = [Float](repeating: -.infinity, count: n)
            var runSum = [Double](repeating: 0, count: n)
            var v0 = 0
            while v0 < V {
                let vc = min(vocabSlice, V - v0)
                Kernels.linear(ws.hn.p, rows: n, inDim: H, weight: lmHead.value + v0 * H, outDim: vc, bias: nil, into: ws.logits.p)
                for i in 0..<n {
                    let row = ws.logits.p + i * vc
                    let cm = VectorMath.max(row, vc)
                    if cm > runMax[i] {
                        if runSum[i] > 0 { runSum[i] *= Foundation.exp(Double(runMax[i] - cm)) }
                        runMax[i] = cm
                    }
                    runSum[i] += VectorMath.sumExp(row, vc, shift: runMax[i])
                    let target = Int(tokens[i + 1])
                    if target >= v0 && target < v0 + vc { out[i] = row[target - v0] }
                }
                v0 += vc
            }
            var lse = [Float](repeating: 0, count: n)
            for i in 0..<n {
                lse[i] = runMax[i] + Float(Foundation.log(runSum[i]))
                out[i] -= lse[i]
            }
            tape?.lse = lse
        }
        profiler.mark("fwd.head")
        return out
    }

    func fillRope(_ T: Int) {
        let half = config.headDim / 2
        if ws.ropeRows >= T { return }
        for t in 0..<T { rope.fill(position: t, cos: ws.cos.p + t * half, sin: ws.sin.p + t * half) }
        ws.ropeRows = T
    }

}
