import Foundation

public struct AdamWConfig: Sendable, Codable, Equatable {
    public var lr: Float
    public var beta1: Float
    public var beta2: Float
    public var eps: Float
    public var weightDecay: Float

    public init(lr: Float = 1e-6, beta1: Float = 0.9, beta2: Float = 0.999, eps: Float = 1e-8, weightDecay: Float = 0.01) {
        self.lr = lr
        self.beta1 = beta1
        self.beta2 = beta2
        self.eps = eps
        self.weightDecay = weightDecay
    }
}

/// AdamW with PyTorch's semantics (torch.optim.AdamW, amsgrad off): decoupled weight decay
/// p *= 1 - lr * wd, then m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
/// p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps). Applies to every trainable parameter.
public final class AdamW: @unchecked Sendable {  // serialised by the model's lock
    public let model: TrainableModel
    public var config: AdamWConfig
    public private(set) var step: Int = 0
    private let params: [TrainParam]
    private let m: [UnsafeMutablePointer<Float>]
    private let v: [UnsafeMutablePointer<Float>]

    public init(model: TrainableModel, config: AdamWConfig = AdamWConfig()) {
        self.model = model
        self.config = config
        params = model.trainableParams
        m = params.map { p in
            let b = UnsafeMutablePointer<Float>.allocate(capacity: max(p.count, 1))
            b.initialize(repeating: 0, count: p.count)
            return b
        }
        v = params.map { p in
            let b = UnsafeMutablePointer<Float>.allocate(capacity: max(p.count, 1))
            b.initialize(repeating: 0, count: p.count)
            return b
        }
    }

    deinit {
        for b in m { b.deallocate() }
        for b in v { b.deallocate() }
    }

    /// One optimiser step with the gradients currently accumulated in the model (not zeroed here).
    public func update(learningRate lr: Float) {
        model.lock.lock()
        defer { model.lock.unlock() }
        step += 1
        model.weightsVersion &+= 1
        let c = config
        for (i, p) in params.enumerated() {
            guard let g = p.grad else { continue }
            Self.apply(param: p.value, grad: g, m: m[i], v: v[i], count: p.count, step: step, learningRate: lr, config: c)
        }
    }

    /// The AdamW update of one tensor at step `step` (1-based), in place.
    static func apply(
        param w: UnsafeMutablePointer<Float>, grad g: UnsafePointer<Float>, m mi: UnsafeMutablePointer<Float>,
        v vi: UnsafeMutablePointer<Float>, count: Int, step: Int, learningRate lr: Float, config c: AdamWConfig
    ) {
        let t = Double(step)
        let bc1 = Float(1 - pow(Double(c.beta1), t))
        let bc2Sqrt = Float((1 - pow(Double(c.beta2), t)).squareRoot())
        let stepSize = lr / bc1
        let decay = 1 - lr * c.weightDecay
        let b1 = c.beta1
        let b2 = c.beta2
        let eps = c.eps
        typealias V = SIMD8<Float>
        let decayV = V(repeating: decay)
        let b1V = V(repeating: b1)
        let b2V = V(repeating: b2)
        let c1V = V(repeating: 1 - b1)
        let c2V = V(repeating: 1 - b2)
        let stepV = V(repeating: stepSize)
        let bcV = V(repeating: bc2Sqrt)
        let epsV = V(repeating: eps)
        var j = 0
        while j + 8 <= count {  // the same operations as the scalar loop below, 8 lanes at a time
            let gj = VectorMath.load(g + j)
            let mj = b1V * VectorMath.load(mi + j) + c1V * gj
            let vj = b2V * VectorMath.load(vi + j) + c2V * gj * gj
            VectorMath.store(mj, mi + j)
            VectorMath.store(vj, vi + j)
            let wj = VectorMath.load(w + j) * decayV
            VectorMath.store(wj - stepV * mj / (vj.squareRoot() / bcV + epsV), w + j)
            j += 8
        }
        while j < count {
            let gj = g[j]
            w[j] *= decay
            mi[j] = b1 * mi[j] + (1 - b1) * gj
            vi[j] = b2 * vi[j] + (1 - b2) * gj * gj
            w[j] -= stepSize * mi[j] / (vi[j].squareRoot() / bc2Sqrt + eps)
            j += 1
        }
    }

    /// Same as `update(learningRate:)` (torch's name).
    public func step(learningRate: Float) { update(learningRate: learningRate) }

    /// Moments as safetensors ("<param>.exp_avg", "<param>.exp_avg_sq"), step and config in the metadata.
    public func save(to file: URL) throws {
        model.lock.lock()
        defer { model.lock.unlock() }
        // Streamed tensor by tensor: the moments of a full fine-tuning are GBs.
        var entries: [(name: String, shape: [Int])] = []
        var sources: [(UnsafeMutablePointer<Float>, Int)] = []
        for (i, p) in params.enumerated() {
            entries.append((p.name + ".exp_avg", p.shape))
            sources.append((m[i], p.count))
            entries.append((p.name + ".exp_avg_sq", p.shape))
            sources.append((v[i], p.count))
        }
        let cfg = String(decoding: try JSONEncoder().encode(config), as: UTF8.self)
        try replaceAtomically(file) { tmp in
            try SafetensorsWriter.write(
                entries: entries, metadata: ["format": "gateway-adamw", "step": String(step), "config": cfg],
                to: tmp
            ) { i, buf in buf.baseAddress!.update(from: sources[i].0, count: sources[i].1) }
        }
    }

    /// Restores moments and step written by `save` for the same set of trainable parameters. The learning
    /// rate comes from each `update` call; the saved config replaces `config`.
    public func load(from file: URL) throws {
        let f = try SafetensorsFile(url: file)
        guard f.metadata["format"] == "gateway-adamw", let s = f.metadata["step"].flatMap(Int.init) else {
            throw TrainingError.badState(file: file.lastPathComponent, reason: "not an AdamW state (metadata format/step)")
        }
        let ckpt = try SafetensorsCheckpoint(files: [f])
        model.lock.lock()
        defer { model.lock.unlock() }
        for (i, p) in params.enumerated() {
            for (suffix, buf) in [(".exp_avg", m[i]), (".exp_avg_sq", v[i])] {
                let t = try ckpt.floatTensor(p.name + suffix, shape: p.shape)
                buf.update(from: t.pointer, count: p.count)
            }
        }
        if let c = f.metadata["config"], let cfg = try? JSONDecoder().decode(AdamWConfig.self, from: Data(c.utf8)) { config = cfg }
        step = s
    }
}

/// Writes `file` through a temporary sibling renamed into place, so an interrupted save never leaves a torn file.
func replaceAtomically(_ file: URL, write: (URL) throws -> Void) throws {
    let tmp = file.deletingLastPathComponent().appendingPathComponent("." + file.lastPathComponent + ".partial")
    try? FileManager.default.removeItem(at: tmp)
    try write(tmp)
    if rename(tmp.path, file.path) != 0 {
        throw TrainingError.badState(file: file.lastPathComponent, reason: "cannot rename into place: errno \(errno)")
    }
}
