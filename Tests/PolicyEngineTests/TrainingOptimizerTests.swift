import Foundation
import XCTest

@testable import PolicyEngine

final class TrainingOptimizerTests: XCTestCase {
    func testAdamWMatchesTorch() throws {
        let r = try GradReference.load().adamw
        let cfg = AdamWConfig(
            lr: r.config.lr, beta1: r.config.beta1, beta2: r.config.beta2, eps: r.config.eps,
            weightDecay: r.config.weight_decay)
        var p = r.`init`
        var m = [Float](repeating: 0, count: p.count)
        var v = m
        for (t, s) in r.steps.enumerated() {
            p.withUnsafeMutableBufferPointer { pp in
                m.withUnsafeMutableBufferPointer { mp in
                    v.withUnsafeMutableBufferPointer { vp in
                        s.grad.withUnsafeBufferPointer { gp in
                            AdamW.apply(
                                param: pp.baseAddress!, grad: gp.baseAddress!, m: mp.baseAddress!, v: vp.baseAddress!,
                                count: pp.count, step: t + 1, learningRate: cfg.lr, config: cfg)
                        }
                    }
                }
            }
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(p, s.param), 2e-6, "step \(t + 1)")
        }
    }

    /// First AdamW step on a model: p <- p (1 - lr wd) - lr * g / (|g| + eps') for every trainable tensor.
    func testAdamWStepsTheModel() throws {
        let model = try TrainableModel(directory: EngineFixtures.model("qwen3-tiny"), mode: .full)
        let ids: [Int32] = [10, 20, 30, 40, 50, 60]
        model.backward(model.forward(ids), dLogprobs: [0, 1, 1, 1, 1])
        let name = "model.layers.0.self_attn.q_norm.weight"
        let p0 = model.parameter(name)!
        let g = model.gradient(name)!
        let opt = AdamW(model: model, config: AdamWConfig(lr: 1e-3, weightDecay: 0.1))
        opt.update(learningRate: 1e-3)
        XCTAssertEqual(opt.step, 1)
        let p1 = model.parameter(name)!
        for i in 0..<p0.count where abs(g[i]) > 1e-4 {
            let expect = p0[i] * (1 - 1e-4) - 1e-3 * (g[i] > 0 ? 1 : -1)
            XCTAssertEqual(p1[i], expect, accuracy: 1e-5)
        }
    }

    private func ids(_ seed: Int, _ n: Int = 12) -> [Int32] { (0..<n).map { Int32((seed * 131 + $0 * 977) % 1000) } }

    /// Runs `steps` GRPO-like updates (forward, backward with fixed advantages, clip, AdamW).
    private func train(_ m: TrainableModel, _ opt: AdamW, steps: Range<Int>) {
        for s in steps {
            m.zeroGradients()
            for k in 0..<2 {
                let seq = ids(s * 2 + k)
                let w = (0..<(seq.count - 1)).map { i -> Float in i < 3 ? 0 : (k == 0 ? 0.5 : -0.3) }
                m.backward(m.forward(seq), dLogprobs: w)
            }
            m.clipGradients(maxNorm: 1)
            opt.update(learningRate: 1e-2)
        }
    }

    private func allParams(_ m: TrainableModel) -> [Float] { m.allParameterNames().flatMap { m.parameter($0)! } }

    func testDeterministicForASeed() throws {
        let dir = EngineFixtures.model("qwen2-tiny")
        let lc = LoRAConfig(rank: 4, alpha: 8, targetModules: ["q_proj", "v_proj", "down_proj"])
        let a = try TrainableModel(directory: dir, mode: .lora(lc), seed: 42)
        let b = try TrainableModel(directory: dir, mode: .lora(lc), seed: 42)
        let c = try TrainableModel(directory: dir, mode: .lora(lc), seed: 43)
        XCTAssertEqual(allParams(a), allParams(b))
        XCTAssertNotEqual(allParams(a), allParams(c))
        // Kaiming-uniform bound 1/sqrt(in) and B = 0.
        let A = a.parameter("model.layers.0.mlp.down_proj.lora_A.weight")!
        XCTAssertLessThanOrEqual(A.map(abs).max()!, 1 / Float(a.config.intermediateSize).squareRoot())
        XCTAssertEqual(a.parameter("model.layers.0.mlp.down_proj.lora_B.weight")!.map(abs).max(), 0)
        let oa = AdamW(model: a, config: AdamWConfig(lr: 1e-2))
        let ob = AdamW(model: b, config: AdamWConfig(lr: 1e-2))
        train(a, oa, steps: 0..<3)
        train(b, ob, steps: 0..<3)
        XCTAssertEqual(allParams(a), allParams(b), "same seed, same data: bit-identical parameters")
        XCTAssertNotEqual(allParams(a), allParams(try TrainableModel(directory: dir, mode: .lora(lc), seed: 42)), "training moved them")
    }

    func testResumeFromSavedState() throws {
        let dir = EngineFixtures.model("qwen3-tiny")
        let tmp = try EngineFixtures.tempDirectory(self)
        for mode in [TrainingMode.lora(LoRAConfig(rank: 2, alpha: 4)), .full] {
            let a = try TrainableModel(directory: dir, mode: mode, seed: 5)
            let oa = AdamW(model: a, config: AdamWConfig(lr: 1e-2))
            train(a, oa, steps: 0..<2)
            try a.saveTrainableState(to: tmp.appendingPathComponent("state.safetensors"))
            try oa.save(to: tmp.appendingPathComponent("adam.safetensors"))
            train(a, oa, steps: 2..<4)

            let b = try TrainableModel(directory: dir, mode: mode, seed: 99)  // different init, overwritten by load
            let ob = AdamW(model: b, config: AdamWConfig(lr: 1))
            try b.loadTrainableState(from: tmp.appendingPathComponent("state.safetensors"))
            try ob.load(from: tmp.appendingPathComponent("adam.safetensors"))
            XCTAssertEqual(ob.step, 2)
            XCTAssertEqual(ob.config, AdamWConfig(lr: 1e-2))
            train(b, ob, steps: 2..<4)
            XCTAssertEqual(allParams(a), allParams(b), "\(mode): resumed run equals the uninterrupted one")
        }
        // A LoRA state does not load into a full model.
        let lora = try TrainableModel(directory: dir, mode: .lora(LoRAConfig(rank: 2, alpha: 4)))
        try lora.saveTrainableState(to: tmp.appendingPathComponent("lora.safetensors"))
        let full = try TrainableModel(directory: dir, mode: .full)
        XCTAssertThrowsError(try full.loadTrainableState(from: tmp.appendingPathComponent("lora.safetensors")))
    }

    func testExportRoundTripThroughInferenceModel() throws {
        let tmp = try EngineFixtures.tempDirectory(self)
        let cases: [(String, TrainingMode)] = [
            ("qwen3-tiny", .lora(LoRAConfig(rank: 4, alpha: 8, targetModules: LoRAConfig.allModules))),
            ("llama-tiny", .lora(LoRAConfig(rank: 2, alpha: 2))),
            ("qwen2-tiny", .full),
        ]
        for (name, mode) in cases {
            let src = EngineFixtures.model(name)
            let m = try TrainableModel(directory: src, mode: mode, seed: 3)
            let opt = AdamW(model: m, config: AdamWConfig(lr: 1e-2))
            train(m, opt, steps: 0..<2)
            let probe: [Int32] = [7, 300, 12, 999, 45, 1, 600, 23]
            let trained = m.tokenLogprobs(probe)
            let original = try TrainableModel(directory: src, mode: .frozen).tokenLogprobs(probe)
            XCTAssertGreaterThan(EngineFixtures.maxAbsDiff(trained, original), 1e-3, "\(name): training changed the model")
            let out = tmp.appendingPathComponent(name)
            try m.exportCheckpoint(to: out, sourceDirectory: src)
            for f in ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"] {
                XCTAssertTrue(FileManager.default.fileExists(atPath: out.appendingPathComponent(f).path), "\(name): \(f)")
            }
            let inf = try TransformerModel.load(from: out)
            let lp = try inf.logProbabilities(of: Array(probe.dropFirst()), after: [probe[0]])
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(lp, trained), 2e-5, "\(name): exported checkpoint = trained model")
            // And it loads back as a trainable model with the same outputs.
            let again = try TrainableModel(directory: out, mode: .frozen)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(again.tokenLogprobs(probe), trained), 2e-5)
        }
    }
}
