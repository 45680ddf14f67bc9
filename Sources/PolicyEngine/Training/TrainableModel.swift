import CBLAS
import Foundation

/// One named float32 tensor of the training model, owned, with its gradient when trainable.
final class TrainParam: @unchecked Sendable {  // guarded by TrainableModel's lock
    let name: String
    let shape: [Int]
    let count: Int
    let value: UnsafeMutablePointer<Float>
    private(set) var grad: UnsafeMutablePointer<Float>?

    init(name: String, shape: [Int], from tensor: FloatTensor? = nil) {
        self.name = name
        self.shape = shape
        count = shape.reduce(1, *)
        value = .allocate(capacity: max(count, 1))
        if let tensor { value.update(from: tensor.pointer, count: count) } else { value.initialize(repeating: 0, count: count) }
    }

    var trainable: Bool { grad != nil }

    func enableGradient() {
        if grad == nil {
            let g = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
            g.initialize(repeating: 0, count: count)
            grad = g
        }
    }

    var values: [Float] { Array(UnsafeBufferPointer(start: value, count: count)) }

    deinit {
        value.deallocate()
        grad?.deallocate()
    }
}

/// A linear layer y = x W^T (+ b) (+ scale (x A^T) B^T).
struct TrainLinear {
    let weight: TrainParam  // [out, in]
    let bias: TrainParam?  // [out]
    var loraA: TrainParam?  // [r, in]
    var loraB: TrainParam?  // [out, r]
    let inDim: Int, outDim: Int
}

struct TrainLayer {
    let inputNorm: TrainParam
    var q, k, v, o: TrainLinear
    let qNorm, kNorm: TrainParam?
    let postNorm: TrainParam
    var gate, up, down: TrainLinear

    /// The seven linears in LoRAConfig.allModules order.
    var linears: [TrainLinear] { [q, k, v, o, gate, up, down] }
}

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

/// A decoder-only transformer (Qwen2, Qwen3, Llama) for training: full-sequence forward without KV cache,
/// backward through every layer with activation checkpointing, float32 with CBLAS.
///
/// Parameters and gradients are named as in the Hugging Face checkpoint; LoRA adapters as PEFT names them
/// ("model.layers.0.self_attn.q_proj.lora_A.weight", "...lora_B.weight").
///
/// Thread safety: calls are serialised by a lock (one scratch workspace). Run one model per thread for
/// parallel rollouts.
public final class TrainableModel: @unchecked Sendable {
    public let config: ModelConfig
    public let mode: TrainingMode
    /// The dtype of the source checkpoint's embedding ("F32", "BF16", "F16").
    public let sourceDType: String

    let embed: TrainParam
    var layers: [TrainLayer]
    let finalNorm: TrainParam
    let lmHead: TrainParam  // === embed when tied
    let rope: RotaryEmbedding
    let loraScale: Float
    let lock = NSLock()
    private let ws = TrainWorkspace()
    /// Per-section timing of forward/backward; enable with `profiler.enabled = true`.
    public let profiler = TrainProfiler()
    /// All parameters in checkpoint order (base weights first, then LoRA adapters), unique.
    private(set) var allParams: [TrainParam] = []
    /// Bumped by every change of the weights (optimiser step, setParameter, loadTrainableState): backward
    /// recomputes layers from the tape, so a tape is only valid for the weights it was recorded with.
    var weightsVersion: UInt64 = 0
    private var byName: [String: TrainParam] = [:]

    public convenience init(directory: URL, mode: TrainingMode, seed: UInt64 = 0) throws {
        let config = try ModelConfig.load(from: directory.appendingPathComponent("config.json"))
        let ckpt = try SafetensorsCheckpoint.open(directory: directory)
        try self.init(config: config, checkpoint: ckpt, mode: mode, seed: seed)
    }

    public init(config c: ModelConfig, checkpoint: SafetensorsCheckpoint, mode: TrainingMode, seed: UInt64 = 0) throws {
        try c.validate()
        BLASCore.selectOptimizedCore()
        config = c
        self.mode = mode
        sourceDType = checkpoint.info("model.embed_tokens.weight")?.dtype.rawValue ?? "F32"
        let t = c.traits
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let V = c.vocabSize
        let D = c.headDim
        var params: [TrainParam] = []
        func load(_ name: String, _ shape: [Int]) throws -> TrainParam {
            let p = TrainParam(name: name, shape: shape, from: try checkpoint.floatTensor(name, shape: shape))
            params.append(p)
            return p
        }
        func linear(_ name: String, out: Int, inDim: Int, bias: Bool) throws -> TrainLinear {
            let w = try load(name + ".weight", [out, inDim])
            let b = bias ? try load(name + ".bias", [out]) : nil
            return TrainLinear(weight: w, bias: b, loraA: nil, loraB: nil, inDim: inDim, outDim: out)
        }
        embed = try load("model.embed_tokens.weight", [V, H])
        var layers: [TrainLayer] = []
        for l in 0..<c.numHiddenLayers {
            let p = "model.layers.\(l)."
            let inputNorm = try load(p + "input_layernorm.weight", [H])
            let q = try linear(p + "self_attn.q_proj", out: Q, inDim: H, bias: t.qkvBias)
            let k = try linear(p + "self_attn.k_proj", out: KV, inDim: H, bias: t.qkvBias)
            let v = try linear(p + "self_attn.v_proj", out: KV, inDim: H, bias: t.qkvBias)
            let o = try linear(p + "self_attn.o_proj", out: H, inDim: Q, bias: t.outputBias)
            let qn = t.qkNorm ? try load(p + "self_attn.q_norm.weight", [D]) : nil
            let kn = t.qkNorm ? try load(p + "self_attn.k_norm.weight", [D]) : nil
            let post = try load(p + "post_attention_layernorm.weight", [H])
            let gate = try linear(p + "mlp.gate_proj", out: I, inDim: H, bias: false)
            let up = try linear(p + "mlp.up_proj", out: I, inDim: H, bias: false)
            let down = try linear(p + "mlp.down_proj", out: H, inDim: I, bias: false)
            layers.append(
                TrainLayer(
                    inputNorm: inputNorm, q: q, k: k, v: v, o: o, qNorm: qn, kNorm: kn, postNorm: post,
                    gate: gate, up: up, down: down))
        }
        finalNorm = try load("model.norm.weight", [H])
        lmHead = c.tieWordEmbeddings ? embed : try load("lm_head.weight", [V, H])
        rope = RotaryEmbedding(config: c)

        switch mode {
        case .frozen:
            loraScale = 0
        case .full:
            loraScale = 0
            for p in params { p.enableGradient() }
        case .lora(let lc):
            try lc.validate()
            loraScale = lc.scale
            // PEFT: A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0. Layers in order,
            // modules in LoRAConfig.allModules order, one generator seeded with `seed`.
            var rng = Xoshiro256(seed: seed)
            let names = [
                "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
            ]
            for l in 0..<layers.count {
                for (mi, module) in LoRAConfig.allModules.enumerated() where lc.targetModules.contains(module) {
                    let base = layers[l].linears[mi]
                    let prefix = "model.layers.\(l).\(names[mi])"
                    let a = TrainParam(name: prefix + ".lora_A.weight", shape: [lc.rank, base.inDim])
                    let b = TrainParam(name: prefix + ".lora_B.weight", shape: [base.outDim, lc.rank])
                    let bound = 1 / Float(base.inDim).squareRoot()
                    for i in 0..<a.count { a.value[i] = Float(rng.nextUnit() * 2 - 1) * bound }
                    a.enableGradient()
                    b.enableGradient()
                    params += [a, b]
                    var lin = base
                    lin.loraA = a
                    lin.loraB = b
                    switch mi {
                    case 0: layers[l].q = lin
                    case 1: layers[l].k = lin
                    case 2: layers[l].v = lin
                    case 3: layers[l].o = lin
                    case 4: layers[l].gate = lin
                    case 5: layers[l].up = lin
                    default: layers[l].down = lin
                    }
                }
            }
        }
        self.layers = layers
        allParams = params
        for p in params { byName[p.name] = p }
    }

    // MARK: parameters

    var trainableParams: [TrainParam] { allParams.filter(\.trainable) }

    public var trainableParameterCount: Int { trainableParams.reduce(0) { $0 + $1.count } }

    /// Every parameter the model holds (base weights, tied head once, adapters).
    public var parameterCount: Int { allParams.reduce(0) { $0 + $1.count } }

    /// Names of the trainable parameters (checkpoint order, then adapters by layer).
    public func parameterNames() -> [String] { trainableParams.map(\.name) }

    /// Names of every tensor the model holds (base weights and adapters), trainable or not.
    public func allParameterNames() -> [String] { allParams.map(\.name) }

    /// Values of any parameter (trainable or frozen) by name.
    public func parameter(_ name: String) -> [Float]? {
        lock.lock()
        defer { lock.unlock() }
        return byName[name]?.values
    }

    public func parameterShape(_ name: String) -> [Int]? { byName[name]?.shape }

    /// Gradient of a trainable parameter (nil for unknown or frozen ones).
    public func gradient(_ name: String) -> [Float]? {
        lock.lock()
        defer { lock.unlock() }
        guard let p = byName[name], let g = p.grad else { return nil }
        return Array(UnsafeBufferPointer(start: g, count: p.count))
    }

    /// Overwrites a parameter's values (trainable or frozen); the count must match.
    public func setParameter(_ name: String, _ values: [Float]) {
        lock.lock()
        defer { lock.unlock() }
        guard let p = byName[name] else { preconditionFailure("TrainableModel.setParameter: unknown parameter '\(name)'") }
        precondition(values.count == p.count, "setParameter(\(name)): \(values.count) values, expected \(p.count)")
        values.withUnsafeBufferPointer { p.value.update(from: $0.baseAddress!, count: p.count) }
        weightsVersion &+= 1
    }

    public func zeroGradients() {
        lock.lock()
        defer { lock.unlock() }
        for p in allParams { p.grad?.update(repeating: 0, count: p.count) }
    }

    public func scaleGradients(by s: Float) {
        lock.lock()
        defer { lock.unlock() }
        for p in allParams { if let g = p.grad { cblas_sscal(Int32(p.count), s, g, 1) } }
    }

    /// Global L2 norm of all gradients (accumulated in double).
    public func gradientNorm() -> Float {
        lock.lock()
        defer { lock.unlock() }
        return unlockedGradientNorm()
    }

    private func unlockedGradientNorm() -> Float {
        var total: Double = 0
        for p in allParams {
            guard let g = p.grad else { continue }
            var s: Double = 0
            for i in 0..<p.count {
                let v = Double(g[i])
                s += v * v
            }
            total += s
        }
        return Float(total.squareRoot())
    }

    /// Scales the gradients so their global norm is at most `maxNorm` (as torch.nn.utils.clip_grad_norm_,
    /// factor maxNorm / (norm + 1e-6), only when below 1). Returns the norm before clipping.
    @discardableResult
    public func clipGradients(maxNorm: Float) -> Float {
        lock.lock()
        defer { lock.unlock() }
        let norm = unlockedGradientNorm()
        let coef = maxNorm / (norm + 1e-6)
        if coef < 1 {
            for p in allParams { if let g = p.grad { cblas_sscal(Int32(p.count), coef, g, 1) } }
        }
        return norm
    }

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

    private func check(_ tokens: [Int32]) {
        precondition(!tokens.isEmpty, "\(TrainingError.emptyInput)")
        precondition(
            tokens.count <= config.maxPositionEmbeddings,
            "\(TrainingError.contextOverflow(needed: tokens.count, maxPositions: config.maxPositionEmbeddings))")
        for t in tokens {
            precondition(t >= 0 && Int(t) < config.vocabSize, "\(TrainingError.tokenOutOfRange(token: t, vocabSize: config.vocabSize))")
        }
    }

    /// lm_head rows (vocabulary entries) per slice of the head: bounds the [tokens, slice] logits buffer.
    var vocabSlice = 4096

    /// Extra bytes a tape may use to keep MLP activations (gate and up projection outputs, 2 x tokens x
    /// intermediate_size floats per layer). 0 (default): pure checkpointing, a tape holds the layer inputs only.
    /// Layers whose activations fit skip the two largest products of their backward recompute
    /// (about a third of a forward's FLOPs when all fit). Qwen2.5-0.5B: 10 MB per layer per 256 tokens.
    public var activationBudgetBytes: Int {
        get {
            lock.lock()
            defer { lock.unlock() }
            return _activationBudgetBytes
        }
        set {
            lock.lock()
            _activationBudgetBytes = max(0, newValue)
            lock.unlock()
        }
    }
    private var _activationBudgetBytes = 0

    private func run(_ tokens: [Int32], adapters: Bool, tape: ForwardTape?) -> [Float] {
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
            TrainKernels.rmsNormForward(
                xf, weight: finalNorm.value, rows: n, dim: H, eps: c.rmsNormEps,
                out: ws.hn.p, rstd: ws.rstdF.p)
            var runMax = [Float](repeating: -.infinity, count: n)
            var runSum = [Double](repeating: 0, count: n)
            var v0 = 0
            while v0 < V {
                let vc = min(vocabSlice, V - v0)
                TrainKernels.gemmNT(n, vc, H, ws.hn.p, lda: H, lmHead.value + v0 * H, ldb: H, ws.logits.p, ldc: vc, beta: 0)
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

    private var loraRank: Int {
        if case .lora(let lc) = mode { return lc.rank }
        return 0
    }

    private func fillRope(_ T: Int) {
        let half = config.headDim / 2
        if ws.ropeRows >= T { return }
        for t in 0..<T { rope.fill(position: t, cos: ws.cos.p + t * half, sin: ws.sin.p + t * half) }
        ws.ropeRows = T
    }

    // MARK: linear with optional LoRA

    /// y (+)= x W^T + b (+ scale (x A^T) B^T); the LoRA intermediate x A^T goes to `u` [T, r].
    @inline(__always)
    private func linearForward(
        _ lin: TrainLinear, x: UnsafePointer<Float>, T: Int, y: UnsafeMutablePointer<Float>,
        accumulate: Bool, adapters: Bool, u: UnsafeMutablePointer<Float>
    ) {
        let n = lin.outDim
        let k = lin.inDim
        TrainKernels.gemmNT(T, n, k, x, lda: k, lin.weight.value, ldb: k, y, ldc: n, beta: accumulate ? 1 : 0)
        if let b = lin.bias {
            for r in 0..<T {
                let yr = y + r * n
                for j in 0..<n { yr[j] += b.value[j] }
            }
        }
        if adapters, let a = lin.loraA, let bm = lin.loraB {
            let r = a.shape[0]
            TrainKernels.gemmNT(T, r, k, x, lda: k, a.value, ldb: k, u, ldc: r, beta: 0)
            TrainKernels.gemmNT(T, n, r, u, lda: r, bm.value, ldb: r, y, ldc: n, alpha: loraScale, beta: 1)
        }
    }

    /// Parameter gradients of the linear from dy, and dx (+)= dy W (+ scale dy B A) when `dx` is given.
    @inline(__always)
    private func linearBackward(
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
    private func layerForward(
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
        TrainKernels.rmsNormForward(x, weight: w.inputNorm.value, rows: T, dim: H, eps: eps, out: s.xn1.p, rstd: s.rstd1.p)
        linearForward(w.q, x: s.xn1.p, T: T, y: s.qRaw.p, accumulate: false, adapters: adapters, u: s.loraU(0, T))
        linearForward(w.k, x: s.xn1.p, T: T, y: s.kRaw.p, accumulate: false, adapters: adapters, u: s.loraU(1, T))
        linearForward(w.v, x: s.xn1.p, T: T, y: s.v.p, accumulate: false, adapters: adapters, u: s.loraU(2, T))
        if let qn = w.qNorm, let kn = w.kNorm {
            TrainKernels.rmsNormForward(s.qRaw.p, weight: qn.value, rows: T * nH, dim: hd, eps: eps, out: s.q.p, rstd: s.rstdQ.p)
            TrainKernels.rmsNormForward(s.kRaw.p, weight: kn.value, rows: T * nKV, dim: hd, eps: eps, out: s.k.p, rstd: s.rstdK.p)
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
        TrainKernels.rmsNormForward(s.x2.p, weight: w.postNorm.value, rows: T, dim: H, eps: eps, out: s.xn2.p, rstd: s.rstd2.p)
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
    private func layerBackward(
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
        TrainKernels.rmsNormForward(
            ws.hx.p, weight: finalNorm.value, rows: n, dim: H, eps: c.rmsNormEps,
            out: ws.hn.p, rstd: ws.rstdF.p)
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

/// Wall-clock seconds per section of forward/backward, when enabled (benchmarks).
public final class TrainProfiler: @unchecked Sendable {  // used under the model's lock
    public var enabled = false
    public private(set) var seconds: [String: Double] = [:]
    private var last: UInt64 = 0
    func start() { if enabled { last = DispatchTime.now().uptimeNanoseconds } }
    func mark(_ section: String) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        seconds[section, default: 0] += Double(now - last) / 1e9
        last = now
    }
    public func reset() { seconds = [:] }
}

/// A growable scratch buffer.
final class TrainBuffer {
    private(set) var p = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private(set) var capacity = 1
    func ensure(_ n: Int) {
        if n > capacity {
            p.deallocate()
            p = .allocate(capacity: n)
            capacity = n
        }
    }
    deinit { p.deallocate() }
}

/// Scratch for one decoder layer's forward + backward over T rows, and the lm_head chunk.
final class TrainWorkspace {
    private(set) var rows = 0
    var ropeRows = 0
    let xn1 = TrainBuffer(), rstd1 = TrainBuffer(), qRaw = TrainBuffer(), kRaw = TrainBuffer()
    let rstdQ = TrainBuffer(), rstdK = TrainBuffer(), q = TrainBuffer(), k = TrainBuffer(), v = TrainBuffer()
    let att = TrainBuffer(), x2 = TrainBuffer(), xn2 = TrainBuffer(), rstd2 = TrainBuffer()
    let g = TrainBuffer(), u = TrainBuffer(), a = TrainBuffer()
    let probs = TrainBuffer(), dprobs = TrainBuffer()
    let cos = TrainBuffer(), sin = TrainBuffer()
    let h0 = TrainBuffer(), h1 = TrainBuffer()
    let dh0 = TrainBuffer(), dh1 = TrainBuffer(), dxn = TrainBuffer(), datt = TrainBuffer()
    let dq = TrainBuffer(), dk = TrainBuffer(), dv = TrainBuffer(), dqRaw = TrainBuffer(), dkRaw = TrainBuffer()
    let da = TrainBuffer(), dg = TrainBuffer(), du = TrainBuffer()
    let lora = TrainBuffer(), loraDU = TrainBuffer()
    let hn = TrainBuffer(), hx = TrainBuffer(), dhn = TrainBuffer(), dhx = TrainBuffer(), rstdF = TrainBuffer()
    let logits = TrainBuffer()
    private var rank = 0

    func loraU(_ i: Int, _ T: Int) -> UnsafeMutablePointer<Float> { lora.p + i * rows * max(rank, 1) }

    func ensure(config c: ModelConfig, rows n: Int, rank r: Int, vocabSlice: Int) {
        logits.ensure(max(n, rows) * min(c.vocabSize, vocabSlice))
        if n <= rows && r == rank { return }
        let T = max(n, rows)
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let nH = c.numAttentionHeads
        let nKV = c.numKeyValueHeads
        let half = c.headDim / 2
        for b in [xn1, x2, xn2, h0, h1, dh0, dh1, dxn] { b.ensure(T * H) }
        for b in [rstd1, rstd2] { b.ensure(T) }
        rstdQ.ensure(T * nH)
        rstdK.ensure(T * nKV)
        for b in [qRaw, q, att, datt, dq, dqRaw] { b.ensure(T * Q) }
        for b in [kRaw, k, v, dk, dv, dkRaw] { b.ensure(T * KV) }
        for b in [g, u, a, da, dg, du] { b.ensure(T * I) }
        probs.ensure(T * T)
        dprobs.ensure(T * T)
        cos.ensure(T * half)
        sin.ensure(T * half)
        lora.ensure(7 * T * max(r, 1))
        loraDU.ensure(T * max(r, 1))
        for b in [hn, hx, dhn, dhx] { b.ensure(T * H) }
        rstdF.ensure(T)
        rows = T
        rank = r
        ropeRows = 0
    }
}
