import Foundation
import XCTest

@testable import PolicyEngine

/// Compares the forward pass with Hugging Face transformers outputs committed under Tests/Fixtures.
final class ModelReferenceTests: XCTestCase {
    func checkLogits(
        model modelName: String, reference refName: String? = nil, file: StaticString = #filePath,
        line: UInt = #line
    ) throws {
        let model = try TransformerModel.load(from: EngineFixtures.model(modelName))
        let ref = try EngineFixtures.loadReference(refName ?? modelName)
        XCTAssertEqual(ref.vocab_size, model.config.vocabSize, file: file, line: line)
        for c in ref.cases {
            let cache = model.makeCache(initialCapacity: 8)
            let all = try model.prefillAllLogits(tokens: c.input_ids, cache: cache)
            XCTAssertEqual(all.count, c.input_ids.count)
            for (k, p) in c.positions.enumerated() {
                let d = EngineFixtures.maxAbsDiff(all[p], c.logits[k])
                XCTAssertLessThan(d, 1e-4, "\(modelName) \(c.name) position \(p): max |diff| \(d)", file: file, line: line)
            }
        }
    }

    func checkGreedy(
        model modelName: String, reference refName: String? = nil, file: StaticString = #filePath,
        line: UInt = #line
    ) throws {
        let model = try TransformerModel.load(from: EngineFixtures.model(modelName))
        let ref = try EngineFixtures.loadReference(refName ?? modelName)
        for c in ref.cases {
            let s = Session(model: model, initialCapacity: 4)
            try s.append(c.input_ids)
            let r = try s.generate(maxTokens: c.greedy_ids.count, sampling: .greedy)
            XCTAssertEqual(r.tokens, c.greedy_ids, "\(modelName) \(c.name) greedy ids", file: file, line: line)
            XCTAssertEqual(r.finishReason, .length)
            XCTAssertEqual(r.rawLogprobs.count, c.greedy_logprobs.count)
            let d = EngineFixtures.maxAbsDiff(r.rawLogprobs, c.greedy_logprobs)
            XCTAssertLessThan(d, 1e-4, "\(modelName) \(c.name) greedy log-probs max |diff| \(d)", file: file, line: line)
        }
    }

    func testQwen2Logits() throws { try checkLogits(model: "qwen2-tiny") }
    func testQwen3Logits() throws { try checkLogits(model: "qwen3-tiny") }
    func testLlamaLogits() throws { try checkLogits(model: "llama-tiny") }
    func testQwen3BF16Logits() throws { try checkLogits(model: "qwen3-tiny-bf16") }
    func testShardedLogits() throws { try checkLogits(model: "qwen2-tiny-sharded", reference: "qwen2-tiny") }

    func testQwen2Greedy() throws { try checkGreedy(model: "qwen2-tiny") }
    func testQwen3Greedy() throws { try checkGreedy(model: "qwen3-tiny") }
    func testLlamaGreedy() throws { try checkGreedy(model: "llama-tiny") }
    func testQwen3BF16Greedy() throws { try checkGreedy(model: "qwen3-tiny-bf16") }
    func testShardedGreedy() throws { try checkGreedy(model: "qwen2-tiny-sharded", reference: "qwen2-tiny") }

    func testFixtureConfigsParse() throws {
        let q3 = try ModelConfig.load(from: EngineFixtures.model("qwen3-tiny"))
        XCTAssertEqual(q3.modelType, .qwen3)
        XCTAssertEqual(q3.headDim, 32)
        XCTAssertTrue(q3.tieWordEmbeddings)
        XCTAssertEqual(q3.traits, ArchitectureTraits(qkvBias: false, outputBias: false, qkNorm: true))
        let ll = try ModelConfig.load(from: EngineFixtures.model("llama-tiny"))
        XCTAssertEqual(ll.rope.ropeType, "llama3")
        XCTAssertFalse(ll.tieWordEmbeddings)
        let q2 = try ModelConfig.load(from: EngineFixtures.model("qwen2-tiny"))
        XCTAssertTrue(q2.traits.qkvBias)
        XCTAssertFalse(q2.traits.outputBias)
    }

    func testF32WeightsAreMappedInPlace() throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen2-tiny"))
        XCTAssertEqual(model.mappedWeightFraction, 1.0, accuracy: 1e-9)
        let bf16 = try TransformerModel.load(from: EngineFixtures.model("qwen3-tiny-bf16"))
        XCTAssertEqual(bf16.mappedWeightFraction, 0.0, accuracy: 1e-9)
    }

    /// Synthetic checkpoints (used by benchmarks) load for every family, and batched decode matches single.
    func testSyntheticCheckpointsForEveryFamily() throws {
        for family in ModelFamily.allCases {
            let model = try EngineFixtures.syntheticModel(self, family: family, tied: family != .llama)
            XCTAssertEqual(model.config.modelType, family)
            let caches = (0..<3).map { _ in model.makeCache() }
            let solo = (0..<3).map { _ in model.makeCache() }
            for i in 0..<3 {
                _ = try model.prefill(tokens: [Int32(i + 1), 5, 9], cache: caches[i])
                _ = try model.prefill(tokens: [Int32(i + 1), 5, 9], cache: solo[i])
            }
            let batched = try model.decode((0..<3).map { (token: Int32(10 + $0), cache: caches[$0]) })
            for i in 0..<3 {
                let one = try model.decode([(token: Int32(10 + i), cache: solo[i])])[0]
                XCTAssertLessThan(EngineFixtures.maxAbsDiff(batched[i], one), 1e-5, "\(family)")
                XCTAssertTrue(one.allSatisfy(\.isFinite))
            }
        }
    }
}
