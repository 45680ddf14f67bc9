import Foundation
import PolicyEngine
import XCTest

@testable import PromptR1

/// Prompt-lookup speculative decoding on the trained fixture policy's protocol episodes: greedy episodes are
/// token-identical to ordinary decoding (float32 and 8-bit), sampled episodes log the model's own
/// log-probs, and the acceptance rate is measured (docs/performance.md quotes it).
final class SpeculativeEpisodeTests: XCTestCase {
    private func episode(_ policy: EnginePolicy, _ c: TinyPolicyFixture.Case, sampling: SamplingParameters) async -> Episode {
        await TinyPolicyFixture.episode(policy, c, sampling: sampling)
    }

    func testGreedyEpisodesAreTokenIdenticalAndDraftsAreAccepted() async throws {
        let dir = TinyPolicyFixture.directory
        let tokenizer = try Tokenizer(directory: dir)
        for format in [WeightFormat.f32, .q8] {
            let model = try TransformerModel.load(from: dir, weightFormat: format)
            let plain = try EnginePolicy(directory: dir, model: model, tokenizer: tokenizer)
            let fast = try EnginePolicy(directory: dir, model: model, tokenizer: tokenizer, speculation: PromptLookup())
            defer {
                plain.shutdown()
                fast.shutdown()
            }
            var generated = 0
            for c in try TinyPolicyFixture.cases() {
                let a = await episode(plain, c, sampling: .greedy)
                let b = await episode(fast, c, sampling: .greedy)
                XCTAssertEqual(a.tokenIDs, b.tokenIDs, "\(format) \(c.question)")
                XCTAssertEqual(a.outcome.answerText, b.outcome.answerText)
                XCTAssertNotNil(b.outcome.answerText, c.question)
                XCTAssertLessThan(zip(a.logprobs, b.logprobs).map { abs($0 - $1) }.max() ?? 0, 1e-4, c.question)
                generated += b.generatedTokenCount
            }
            let d = fast.scheduler.draftTokens
            let rate = Double(d.accepted) / Double(max(1, d.drafted))
            let saved = plain.scheduler.steps - fast.scheduler.steps
            print(
                "prompt lookup, promptr1-tiny \(format), greedy protocol episodes: \(generated) policy tokens, "
                    + "\(d.drafted) drafted, \(d.accepted) accepted (\(String(format: "%.1f", 100 * rate))%), "
                    + "\(plain.scheduler.steps) -> \(fast.scheduler.steps) forward steps")
            // The policy copies its question into its prompt and the upstream's answer into <answer>: most of
            // its tokens should come from accepted drafts. (Measured: see docs/performance.md.)
            XCTAssertGreaterThan(d.accepted, generated / 4, "\(format)")
            XCTAssertGreaterThan(saved, generated / 4, "\(format)")
        }
    }

    /// Sampled at temperature 1 (the sampling distribution is the model's), every logged policy log-prob is
    /// the one a plain forward pass over the whole episode gives.
    func testSampledEpisodesLogTheModelsLogprobs() async throws {
        let dir = TinyPolicyFixture.directory
        let model = try TransformerModel.load(from: dir)
        let policy = try EnginePolicy(
            directory: dir, model: model, tokenizer: try Tokenizer(directory: dir), speculation: PromptLookup())
        defer { policy.shutdown() }
        for (k, c) in try TinyPolicyFixture.cases().enumerated() {
            let e = await episode(policy, c, sampling: SamplingParameters(temperature: 1, seed: UInt64(k + 1)))
            let ids = e.tokenIDs
            let mask = e.lossMask
            let recomputed = try model.logProbabilities(of: Array(ids[1...]), after: [ids[0]])
            var worst: Float = 0
            for (i, lp) in e.logprobs.enumerated() where i > 0 && mask[i] == 1 {
                worst = max(worst, abs(lp - recomputed[i - 1]))
            }
            XCTAssertLessThan(worst, 1e-4, c.question)
        }
        XCTAssertGreaterThan(policy.scheduler.draftTokens.accepted, 0)
    }
}
