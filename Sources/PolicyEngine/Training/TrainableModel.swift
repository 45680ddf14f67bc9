import CBLAS
import Foundation

// The training model: its parameters and LoRA adapters (this file), the sequence forward
// (TrainableModel+Forward.swift), each decoder layer's forward and backward side by side
// (TrainableModel+Layer.swift), the sequence backward (TrainableModel+Backward.swift), and the kernels
// (TrainingKernels.swift, forward and backward of each operation side by side; the forward ones are the
// inference kernels of Kernels.swift).

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
    let spec: ProjectionSpec
    let weight: TrainParam  // [out, in]
    let bias: TrainParam?  // [out]
    var loraA: TrainParam?  // [r, in]
    var loraB: TrainParam?  // [out, r]
    var inDim: Int { spec.inDim }
    var outDim: Int { spec.outDim }
}

struct TrainLayer {
    let inputNorm: TrainParam
    var q, k, v, o: TrainLinear
    let qNorm, kNorm: TrainParam?
    let postNorm: TrainParam
    var gate, up, down: TrainLinear

    /// The seven linears in LoRAConfig.allModules order.
    var linears: [TrainLinear] { [q, k, v, o, gate, up, down] }

    mutating func setLinear(_ i: Int, _ lin: TrainLinear) {
        switch i {
        case 0: q = lin
        case 1: k = lin
        case 2: v = lin
        case 3: o = lin
        case 4: gate = lin
        case 5: up = lin
        default: down = lin
        }
    }
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
    let ws = TrainWorkspace()
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
        let spec = ModelSpec(config: c)
        sourceDType = checkpoint.info(spec.embed.name)?.dtype.rawValue ?? "F32"
        // Every tensor of the checkpoint, named and shaped by the same table the inference weights load from.
        var params: [TrainParam] = []
        func load(_ t: TensorSpec) throws -> TrainParam {
            let p = TrainParam(name: t.name, shape: t.shape, from: try checkpoint.floatTensor(t.name, shape: t.shape))
            params.append(p)
            return p
        }
        func linear(_ p: ProjectionSpec) throws -> TrainLinear {
            let w = try load(p.weight)
            let b = try p.bias.map(load)
            return TrainLinear(spec: p, weight: w, bias: b, loraA: nil, loraB: nil)
        }
        embed = try load(spec.embed)
        var layers: [TrainLayer] = []
        for l in spec.layers {
            // Checkpoint order (LayerSpec.tensors): norm, q, k, v, o (weight, bias), q/k norms, norm, gate, up, down.
            let inputNorm = try load(l.inputNorm)
            let q = try linear(l.q)
            let k = try linear(l.k)
            let v = try linear(l.v)
            let o = try linear(l.o)
            let qn = try l.qNorm.map(load)
            let kn = try l.kNorm.map(load)
            let post = try load(l.postNorm)
            let gate = try linear(l.gate)
            let up = try linear(l.up)
            let down = try linear(l.down)
            layers.append(
                TrainLayer(
                    inputNorm: inputNorm, q: q, k: k, v: v, o: o, qNorm: qn, kNorm: kn, postNorm: post,
                    gate: gate, up: up, down: down))
        }
        finalNorm = try load(spec.finalNorm)
        lmHead = try spec.lmHead.map(load) ?? embed
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
            params += Self.attachAdapters(lc, to: &layers, seed: seed)
        }
        self.layers = layers
        allParams = params
        for p in params { byName[p.name] = p }
    }

    /// LoRA adapters on the targeted projections, named as PEFT names them. PEFT's initialisation:
    /// A ~ kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)), B = 0, so training starts at the base
    /// model. Layers in order, modules in `LoRAConfig.allModules` order, one generator seeded with `seed`.
    private static func attachAdapters(_ lc: LoRAConfig, to layers: inout [TrainLayer], seed: UInt64) -> [TrainParam] {
        var rng = Xoshiro256(seed: seed)
        var added: [TrainParam] = []
        for l in 0..<layers.count {
            for (mi, base) in layers[l].linears.enumerated() where lc.targetModules.contains(base.spec.module) {
                let a = TrainParam(name: base.spec.path + ".lora_A.weight", shape: [lc.rank, base.inDim])
                let b = TrainParam(name: base.spec.path + ".lora_B.weight", shape: [base.outDim, lc.rank])
                let bound = 1 / Float(base.inDim).squareRoot()
                for i in 0..<a.count { a.value[i] = Float(rng.nextUnit() * 2 - 1) * bound }
                a.enableGradient()
                b.enableGradient()
                added += [a, b]
                var lin = base
                lin.loraA = a
                lin.loraB = b
                layers[l].setLinear(mi, lin)
            }
        }
        return added
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
    var _activationBudgetBytes = 0

    var loraRank: Int {
        if case .lora(let lc) = mode { return lc.rank }
        return 0
    }

}
