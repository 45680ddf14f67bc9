import Foundation
import XCTest

@testable import PolicyEngine

/// The committed PyTorch references (scripts/make_grad_refs.py -> Tests/Fixtures/reference/grads.json).
enum GradReference {
    struct Summary: Decodable {
        var shape: [Int]
        var norm: Double
        var max_abs: Double
        var indices: [Int]
        var values: [Double]
    }
    struct ModelCase: Decodable {
        var model: String
        var ids: [Int32]
        var weights: [Double]
        var logprobs: [Double]
        var loss: Double
        var grads: [String: Summary]
    }
    struct LoRACase: Decodable {
        var model: String
        var rank: Int
        var alpha: Float
        var target_modules: [String]
        var ids: [Int32]
        var weights: [Double]
        var logprobs: [Double]
        var grads: [String: Summary]
    }
    struct AdamWCase: Decodable {
        struct Step: Decodable {
            var grad: [Float]
            var param: [Float]
        }
        struct Config: Decodable {
            var lr: Float
            var beta1: Float
            var beta2: Float
            var eps: Float
            var weight_decay: Float
        }
        var `init`: [Float]
        var config: Config
        var steps: [Step]
    }
    struct File: Decodable {
        var models: [ModelCase]
        var lora: LoRACase
        var adamw: AdamWCase
    }

    static func load() throws -> File {
        try JSONDecoder().decode(File.self, from: Data(contentsOf: EngineFixtures.root.appendingPathComponent("reference/grads.json")))
    }

    /// The closed-form adapter values of make_grad_refs.py's lora_values.
    static func loraValues(_ kind: String, moduleIndex mi: Int, count: Int) -> [Float] {
        (0..<count).map { j in
            kind == "A"
                ? Float(0.2 * sin(0.37 * Double(j) + 1.1 * Double(mi) + 0.5))
                : Float(0.2 * cos(0.53 * Double(j) + 0.7 * Double(mi) + 0.25))
        }
    }

    /// Sets every adapter of a LoRA model to the script's values (module index counts layers x modules).
    static func setLoRAValues(_ m: TrainableModel) {
        var mi = 0
        for l in 0..<m.config.numHiddenLayers {
            for module in LoRAConfig.allModules {
                let parent = ["q_proj", "k_proj", "v_proj", "o_proj"].contains(module) ? "self_attn" : "mlp"
                let prefix = "model.layers.\(l).\(parent).\(module)"
                let a = prefix + ".lora_A.weight"
                let b = prefix + ".lora_B.weight"
                if let sa = m.parameterShape(a), let sb = m.parameterShape(b) {
                    m.setParameter(a, loraValues("A", moduleIndex: mi, count: sa.reduce(1, *)))
                    m.setParameter(b, loraValues("B", moduleIndex: mi, count: sb.reduce(1, *)))
                }
                mi += 1
            }
        }
    }
}

final class TrainingGradientTests: XCTestCase {
    /// Compares sampled gradient entries and norms with the float64 PyTorch reference.
    private func compareGradients(
        _ model: TrainableModel, _ ref: [String: GradReference.Summary], label: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(Set(model.parameterNames()), Set(ref.keys), "\(label): trainable parameter names", file: file, line: line)
        var worst: (String, Double) = ("", 0)
        for (name, r) in ref {
            guard let g = model.gradient(name) else {
                XCTFail("\(label): no gradient for \(name)", file: file, line: line)
                continue
            }
            XCTAssertEqual(model.parameterShape(name), r.shape, "\(label) \(name) shape", file: file, line: line)
            let scale = max(r.max_abs, 1e-12)
            var err: Double = 0
            for (i, idx) in r.indices.enumerated() { err = max(err, abs(Double(g[idx]) - r.values[i]) / scale) }
            let norm = g.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            let normErr = abs(norm - r.norm) / max(r.norm, 1e-12)
            XCTAssertLessThan(err, 1e-4, "\(label) \(name): sampled entries (max |g| \(r.max_abs))", file: file, line: line)
            XCTAssertLessThan(normErr, 1e-4, "\(label) \(name): norm \(norm) vs \(r.norm)", file: file, line: line)
            if max(err, normErr) > worst.1 { worst = (name, max(err, normErr)) }
        }
        print("\(label): worst relative gradient error \(worst.1) at \(worst.0)")
    }

    func testFullGradientsMatchPyTorch() throws {
        let ref = try GradReference.load()
        XCTAssertEqual(ref.models.map(\.model), ["qwen2-tiny", "qwen3-tiny", "llama-tiny"])
        // The default head slice (4096) covers these vocabularies at once; 100 exercises several slices with a
        // ragged last one.
        for (c, slice) in ref.models.flatMap({ c in [(c, 4096), (c, 100)] }) {
            let model = try TrainableModel(directory: EngineFixtures.model(c.model), mode: .full)
            model.vocabSlice = slice
            let tape = model.forward(c.ids)
            XCTAssertEqual(tape.logprobs.count, c.ids.count - 1)
            let lpErr = zip(tape.logprobs, c.logprobs).map { abs(Double($0) - $1) }.max()!
            XCTAssertLessThan(lpErr, 1e-4, "\(c.model) logprobs")
            XCTAssertEqual(model.tokenLogprobs(c.ids), tape.logprobs, "\(c.model): tape and tape-less forward agree")
            model.zeroGradients()
            model.backward(tape, dLogprobs: c.weights.map { Float($0) })
            compareGradients(model, c.grads, label: "\(c.model) slice \(slice)")
        }
    }

    func testLoRAGradientsMatchPyTorch() throws {
        let c = try GradReference.load().lora
        let lc = LoRAConfig(rank: c.rank, alpha: c.alpha, targetModules: c.target_modules)
        let model = try TrainableModel(directory: EngineFixtures.model(c.model), mode: .lora(lc), seed: 1)
        XCTAssertEqual(model.parameterNames().count, 2 * 7 * model.config.numHiddenLayers)
        // Adapters start as B = 0: the model is the base model.
        let base = try TrainableModel(directory: EngineFixtures.model(c.model), mode: .frozen)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(model.tokenLogprobs(c.ids), base.tokenLogprobs(c.ids)), 1e-6)
        GradReference.setLoRAValues(model)
        let tape = model.forward(c.ids)
        let lpErr = zip(tape.logprobs, c.logprobs).map { abs(Double($0) - $1) }.max()!
        XCTAssertLessThan(lpErr, 1e-4, "LoRA logprobs")
        // Adapters off = the frozen base model (the KL reference).
        let baseLp = base.tokenLogprobs(c.ids)
        XCTAssertEqual(model.baseLogprobs(c.ids), baseLp)
        XCTAssertGreaterThan(EngineFixtures.maxAbsDiff(tape.logprobs, baseLp), 1e-3, "adapters change the output")
        model.backward(tape, dLogprobs: c.weights.map { Float($0) })
        compareGradients(model, c.grads, label: "lora \(c.model)")
        XCTAssertEqual(model.gradient("model.embed_tokens.weight"), nil, "base weights are frozen")
        // A frozen model has nothing to train.
        XCTAssertEqual(base.trainableParameterCount, 0)
    }

    // MARK: finite differences

    private func loss(_ m: TrainableModel, _ ids: [Int32], _ w: [Float]) -> Double {
        zip(m.tokenLogprobs(ids), w).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
    }

    /// Central differences on the entry of largest |gradient| of each listed parameter (plus one other
    /// entry), against the analytic gradient.
    private func checkFiniteDifferences(_ m: TrainableModel, names: [String], ids: [Int32], weights w: [Float], label: String) {
        m.zeroGradients()
        m.backward(m.forward(ids), dLogprobs: w)
        for name in names {
            guard let g = m.gradient(name), var p = m.parameter(name) else {
                XCTFail("\(label): no parameter \(name)")
                continue
            }
            let imax = g.indices.max(by: { abs(g[$0]) < abs(g[$1]) })!
            for idx in Set([imax, (imax * 7 + 3) % g.count]) {
                let orig = p[idx]
                let h: Float = 1e-2 * max(1, abs(orig))
                p[idx] = orig + h
                m.setParameter(name, p)
                let up = loss(m, ids, w)
                p[idx] = orig - h
                m.setParameter(name, p)
                let down = loss(m, ids, w)
                p[idx] = orig
                m.setParameter(name, p)
                let fd = (up - down) / Double(2 * h)
                let tol = 2e-2 * max(abs(Double(g[imax])), 1e-2)
                XCTAssertLessThan(abs(fd - Double(g[idx])), tol, "\(label) \(name)[\(idx)]: fd \(fd) vs analytic \(g[idx])")
            }
        }
    }

    private func sampleNames(_ m: TrainableModel) -> [String] {
        let kinds = [
            "embed_tokens", "input_layernorm", "q_proj.weight", "q_proj.bias", "k_proj.weight", "k_proj.bias",
            "v_proj.weight", "v_proj.bias", "o_proj", "q_norm", "k_norm", "post_attention_layernorm",
            "gate_proj", "up_proj", "down_proj", "model.norm", "lm_head", "lora_A", "lora_B",
        ]
        let names = m.parameterNames()
        // One of each kind, alternating layers.
        return kinds.enumerated().compactMap { i, k in
            let hits = names.filter { $0.contains(k) }
            return hits.isEmpty ? nil : hits[i % hits.count]
        }
    }

    func testFiniteDifferencesFull() throws {
        let ids: [Int32] = [5, 900, 17, 254, 3, 77, 601, 42, 999, 12, 480]
        // Zeros first (prompt) and last (skipped positions must not change the gradient).
        let w: [Float] = [0, 0, 0.7, -1.2, 0.5, 1.0, -0.4, 0.9, 0, 0]
        for name in ["qwen2-tiny", "qwen3-tiny", "llama-tiny"] {
            let m = try TrainableModel(directory: EngineFixtures.model(name), mode: .full)
            let names = sampleNames(m)
            XCTAssertEqual(names.count, ["qwen2-tiny": 14, "qwen3-tiny": 13, "llama-tiny": 12][name], "one parameter of every kind")
            checkFiniteDifferences(m, names: names, ids: ids, weights: w, label: name)
        }
    }

    func testFiniteDifferencesLoRA() throws {
        let ids: [Int32] = [5, 900, 17, 254, 3, 77, 601, 42, 999, 12, 480]
        let w: [Float] = [0, 0.3, 0.7, -1.2, 0.5, 1.0, -0.4, 0.9, 0.2, 0]
        for name in ["qwen3-tiny", "llama-tiny"] {
            let m = try TrainableModel(
                directory: EngineFixtures.model(name),
                mode: .lora(LoRAConfig(rank: 4, alpha: 8, targetModules: LoRAConfig.allModules)))
            GradReference.setLoRAValues(m)  // B != 0 so A has a gradient
            let names = m.parameterNames().filter { $0.contains("layers.1") || $0.contains("q_proj") }
            checkFiniteDifferences(m, names: names, ids: ids, weights: w, label: "lora \(name)")
        }
    }

    // MARK: gradient buffer operations

    func testAccumulateScaleClip() throws {
        let m = try TrainableModel(directory: EngineFixtures.model("qwen2-tiny"), mode: .full)
        let ids: [Int32] = [1, 2, 3, 4, 5, 6, 7]
        let w: [Float] = [1, -1, 0.5, 0.25, 2, -0.5]
        let tape = m.forward(ids)
        m.zeroGradients()
        m.backward(tape, dLogprobs: w)
        let n1 = m.gradientNorm()
        let g1 = m.gradient("model.layers.1.mlp.down_proj.weight")!
        XCTAssertGreaterThan(n1, 0)
        m.backward(tape, dLogprobs: w)
        XCTAssertEqual(m.gradientNorm(), 2 * n1, accuracy: 1e-4 * n1, "backward accumulates")
        m.scaleGradients(by: 0.5)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(m.gradient("model.layers.1.mlp.down_proj.weight")!, g1), 1e-6)
        let before = m.clipGradients(maxNorm: n1 / 4)
        XCTAssertEqual(before, n1, accuracy: 1e-4 * n1)
        XCTAssertEqual(m.gradientNorm(), n1 / 4, accuracy: 1e-3 * n1)
        XCTAssertEqual(m.clipGradients(maxNorm: n1), n1 / 4, accuracy: 1e-3 * n1, "no clipping below the limit")
        XCTAssertEqual(m.gradientNorm(), n1 / 4, accuracy: 1e-3 * n1)
        m.zeroGradients()
        XCTAssertEqual(m.gradientNorm(), 0)
        // All-zero weights: nothing to do.
        m.backward(tape, dLogprobs: [Float](repeating: 0, count: 6))
        XCTAssertEqual(m.gradientNorm(), 0)
    }

    /// The training forward equals the inference engine on every fixture (F32, BF16 upcast, sharded), and a
    /// tape holds only the layer inputs.
    func testForwardMatchesInferenceEngine() throws {
        let ids: [Int32] = [3, 14, 159, 265, 358, 979, 323, 846, 264, 338, 327, 950, 288, 419, 716, 939, 937, 510]
        for name in ["qwen2-tiny", "qwen2-tiny-sharded", "qwen3-tiny", "qwen3-tiny-bf16", "llama-tiny", "promptr1-tiny"] {
            let dir = EngineFixtures.model(name)
            let tm = try TrainableModel(directory: dir, mode: .frozen)
            let inf = try TransformerModel.load(from: dir)
            let want = try inf.logProbabilities(of: Array(ids.dropFirst()), after: [ids[0]])
            let tape = tm.forward(ids)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(tape.logprobs, want), 2e-5, name)
            let c = tm.config
            XCTAssertEqual(tape.byteCount, ((c.numHiddenLayers + 1) * ids.count * c.hiddenSize + 2 * (ids.count - 1)) * 4, name)
        }
        XCTAssertEqual(try TrainableModel(directory: EngineFixtures.model("qwen3-tiny-bf16"), mode: .frozen).sourceDType, "BF16")
    }

    /// Causality: with weights only on the first positions of a 300-token sequence, gradients equal those of
    /// the truncated sequence (backward skips the rest), and the long forward agrees with the engine.
    func testLongSequenceAndTrailingPositions() throws {
        let dir = EngineFixtures.model("qwen3-tiny")
        let long = (0..<300).map { Int32(($0 * 7919 + 13) % 1000) }
        let short = Array(long.prefix(20))
        var w = [Float](repeating: 0, count: 299)
        for i in 3..<19 { w[i] = Float(i % 5) - 2 }
        let a = try TrainableModel(directory: dir, mode: .full)
        let b = try TrainableModel(directory: dir, mode: .full)
        let tape = a.forward(long)
        let inf = try TransformerModel.load(from: dir)
        XCTAssertLessThan(
            EngineFixtures.maxAbsDiff(tape.logprobs, try inf.logProbabilities(of: Array(long.dropFirst()), after: [long[0]])), 5e-5)
        a.backward(tape, dLogprobs: w)
        b.backward(b.forward(short), dLogprobs: Array(w.prefix(19)))
        for name in a.parameterNames() {
            let ga = a.gradient(name)!
            let gb = b.gradient(name)!
            let scale = max(gb.map(abs).max()!, 1e-6)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(ga, gb) / scale, 1e-4, name)
        }
    }

    /// Keeping MLP activations in the tape (all layers, or only the first) gives the same gradients as
    /// pure checkpointing, for full fine-tuning and for LoRA on gate/up/down.
    func testActivationBudgetGivesSameGradients() throws {
        let dir = EngineFixtures.model("qwen3-tiny")
        let ids: [Int32] = [5, 900, 17, 254, 3, 77, 601, 42, 999, 12, 480, 7, 8]
        let w: [Float] = [0, 0, 0.7, -1.2, 0.5, 1.0, -0.4, 0.9, 0.3, 0.2, 0, 0]
        let lora = TrainingMode.lora(LoRAConfig(rank: 4, alpha: 8, targetModules: LoRAConfig.allModules))
        for mode in [TrainingMode.full, lora] {
            let ref = try TrainableModel(directory: dir, mode: mode, seed: 1)
            if mode != .full { GradReference.setLoRAValues(ref) }
            let refTape = ref.forward(ids)
            ref.backward(refTape, dLogprobs: w)
            let perLayer = 2 * ids.count * ref.config.intermediateSize * 4
            for budget in [perLayer, 100 * perLayer] {
                let m = try TrainableModel(directory: dir, mode: mode, seed: 1)
                if mode != .full { GradReference.setLoRAValues(m) }
                m.activationBudgetBytes = budget
                let tape = m.forward(ids)
                XCTAssertEqual(tape.byteCount - refTape.byteCount, min(budget, m.config.numHiddenLayers * perLayer))
                XCTAssertEqual(tape.logprobs, refTape.logprobs)
                m.backward(tape, dLogprobs: w)
                for name in m.parameterNames() {
                    let a = m.gradient(name)!
                    let b = ref.gradient(name)!
                    XCTAssertLessThanOrEqual(
                        EngineFixtures.maxAbsDiff(a, b), 1e-6 * max(1, b.map(abs).max()!), "\(mode) budget \(budget): \(name)")
                }
            }
        }
    }

    func testParameterCounts() throws {
        let full = try TrainableModel(directory: EngineFixtures.model("qwen2-tiny"), mode: .full)
        let inference = try TransformerModel.load(from: EngineFixtures.model("qwen2-tiny"))
        XCTAssertEqual(full.trainableParameterCount, inference.parameterCount, "tied head counted once")
        let lora = try TrainableModel(directory: EngineFixtures.model("qwen2-tiny"), mode: .lora(LoRAConfig(rank: 8)))
        let c = lora.config
        XCTAssertEqual(
            lora.trainableParameterCount,
            c.numHiddenLayers * 8 * ((c.hiddenSize + c.qDim) + 2 * (c.hiddenSize + c.kvDim) + (c.qDim + c.hiddenSize)))
        XCTAssertThrowsError(
            try TrainableModel(
                directory: EngineFixtures.model("qwen2-tiny"),
                mode: .lora(LoRAConfig(rank: 4, targetModules: ["qproj"]))))
    }
}
