import Foundation
import XCTest

@testable import PolicyEngine

/// `ModelSpec` is the one table of tensor names and shapes that inference, training and the synthetic
/// checkpoints use. These tests hold it against checkpoints written by `transformers` (the fixtures) and
/// against the two models built from it.
final class ModelSpecTests: XCTestCase {
    /// Every tensor of each family's fixture (saved by transformers) is in the spec with its shape, and every
    /// tensor of the spec is in the file: nothing a checkpoint holds is ignored, nothing is invented.
    func testSpecMatchesCheckpointsWrittenByTransformers() throws {
        for name in ["qwen2-tiny", "qwen3-tiny", "llama-tiny", "promptr1-tiny"] {
            let dir = EngineFixtures.model(name)
            let config = try ModelConfig.load(from: dir.appendingPathComponent("config.json"))
            let ckpt = try SafetensorsCheckpoint.open(directory: dir)
            var inFile: [String: [Int]] = [:]
            for f in ckpt.files { for (n, t) in f.tensors { inFile[n] = t.shape } }
            let spec = ModelSpec(config: config)
            var inSpec: [String: [Int]] = [:]
            for t in [spec.embed, spec.finalNorm] + spec.layers.flatMap(\.tensors) + [spec.lmHead].compactMap({ $0 }) {
                XCTAssertNil(inSpec[t.name], "\(name): \(t.name) twice in the spec")
                inSpec[t.name] = t.shape
            }
            XCTAssertEqual(inSpec, inFile, name)
            XCTAssertEqual(spec.parameterCount, inFile.values.reduce(0) { $0 + $1.reduce(1, *) }, name)
        }
    }

    /// The inference weights and the training model hold the same tensors, in the spec's order, with the same
    /// values, and the training model's LoRA adapters are named after the spec's module paths.
    func testInferenceAndTrainingLoadTheSameTensors() throws {
        for name in ["qwen2-tiny", "qwen3-tiny", "llama-tiny"] {
            let dir = EngineFixtures.model(name)
            let inference = try TransformerModel.load(from: dir)
            let lora = LoRAConfig(rank: 2, alpha: 4, targetModules: LoRAConfig.allModules)
            let training = try TrainableModel(directory: dir, mode: .lora(lora))
            let spec = inference.weights.spec
            let base = [spec.embed] + spec.layers.flatMap(\.tensors) + [spec.finalNorm] + [spec.lmHead].compactMap { $0 }
            let adapters = spec.layers.flatMap { l in l.projections.flatMap { [$0.path + ".lora_A.weight", $0.path + ".lora_B.weight"] } }
            XCTAssertEqual(training.allParameterNames(), base.map(\.name) + adapters, name)
            let w = inference.weights
            XCTAssertEqual(training.parameter(spec.embed.name), w.embed.array, name)
            XCTAssertEqual(training.parameter(spec.layers[0].q.weight.name), w.layers[0].q.f32?.array, name)
            XCTAssertEqual(training.parameter(spec.layers.last!.down.weight.name), w.layers.last!.down.f32?.array, name)
            XCTAssertEqual(
                inference.parameterCount, training.parameterCount - adapters.reduce(0) { $0 + training.parameterShape($1)!.reduce(1, *) })
        }
    }

    /// A synthetic checkpoint written from the spec in bf16 loads back (8-bit and float32) with the spec's shapes;
    /// bf16 rounding keeps every value within 2^-8 relative of the float32 one.
    func testSyntheticBF16CheckpointRoundTrips() throws {
        let cfg = try ModelConfig(
            modelType: .qwen3, hiddenSize: 64, numHiddenLayers: 2, numAttentionHeads: 4, numKeyValueHeads: 2, headDim: 16,
            intermediateSize: 96, vocabSize: 101, maxPositionEmbeddings: 64, tieWordEmbeddings: false)
        let f32Dir = try EngineFixtures.tempDirectory(self).appendingPathComponent("f32")
        let bf16Dir = try EngineFixtures.tempDirectory(self).appendingPathComponent("bf16")
        try SyntheticCheckpoint.write(config: cfg, to: f32Dir, seed: 5)
        try SyntheticCheckpoint.write(config: cfg, to: bf16Dir, seed: 5, dtype: .BF16)
        let a = try SafetensorsCheckpoint.open(directory: f32Dir)
        let b = try SafetensorsCheckpoint.open(directory: bf16Dir)
        for (name, shape) in SyntheticCheckpoint.tensorShapes(for: cfg) {
            XCTAssertEqual(b.info(name)?.dtype, .BF16, name)
            let x = try a.floatTensor(name, shape: shape).array
            let y = try b.floatTensor(name, shape: shape).array
            for (u, v) in zip(x, y) { XCTAssertLessThanOrEqual(abs(u - v), abs(u) / 256 + 1e-30, name) }
        }
        let q8 = try TransformerModel.load(from: bf16Dir, weightFormat: .q8)
        XCTAssertTrue(q8.weights.layers.allSatisfy { l in l.projections.allSatisfy { $0.q8 != nil && $0.f32 == nil } })
        XCTAssertNotNil(q8.weights.lmHead.q8)
        let f32 = try TransformerModel.load(from: bf16Dir)
        let lq = try q8.prefill(tokens: [3, 1, 4, 1, 5], cache: q8.makeCache())
        let lf = try f32.prefill(tokens: [3, 1, 4, 1, 5], cache: f32.makeCache())
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(lq, lf), 0.05 * (lf.max()! - lf.min()!))
    }
}
