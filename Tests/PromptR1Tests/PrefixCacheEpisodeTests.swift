import Foundation
import PolicyEngine
import XCTest

@testable import PromptR1

/// The trained fixture policy's greedy protocol episodes, with the prefix cache (protocol prefix pre-filled
/// as at policy load) and without: every token and log-prob the same, and the cache really used.
final class PrefixCacheEpisodeTests: XCTestCase {
    func testGreedyEpisodesAreTokenIdenticalWithTheCache() async throws {
        let dir = TinyPolicyFixture.directory
        let cases = try TinyPolicyFixture.cases()
        let model = try TransformerModel.load(from: dir)
        let tokenizer = try Tokenizer(directory: dir)
        let plain = try EnginePolicy(directory: dir, model: model, tokenizer: tokenizer, prefixCacheBytes: 0)
        let cached = try EnginePolicy(directory: dir, model: model, tokenizer: tokenizer, prefixCacheBytes: 32 << 20)
        defer {
            plain.shutdown()
            cached.shutdown()
        }
        XCTAssertEqual(try plain.prefillProtocolPrefix(), 0)
        let pinned = try cached.prefillProtocolPrefix()
        let fixed = tokenizer.encode(EnginePolicy.protocolFixedPrefix)
        XCTAssertGreaterThan(pinned, fixed.count - 2, "the fixed prefix but at most its last token")
        XCTAssertTrue(tokenizer.encode(PromptR1Prompt.firstPrompt(question: cases[0].question)).starts(with: fixed[..<pinned]))

        func episode(_ policy: EnginePolicy, _ c: TinyPolicyFixture.Case) async -> Episode {
            await TinyPolicyFixture.episode(policy, c, sampling: .greedy)
        }
        var firstPromptTokens = 0
        // Each question twice: the second time is a retry that copies the whole first prompt.
        for c in cases + cases {
            let a = await episode(plain, c)
            let b = await episode(cached, c)
            XCTAssertEqual(a.tokenIDs, b.tokenIDs, c.question)
            XCTAssertEqual(a.outcome.answerText, b.outcome.answerText, c.question)
            XCTAssertLessThan(zip(a.logprobs, b.logprobs).map { abs($0 - $1) }.max() ?? 0, 1e-4, c.question)
            XCTAssertGreaterThan(a.turns.count, 1)
            firstPromptTokens += a.promptTokenIDs.count
        }
        let p = plain.scheduler.prefillTokens
        let q = cached.scheduler.prefillTokens
        XCTAssertEqual(p.cached, 0)
        XCTAssertEqual(p.computed, q.cached + q.computed, "every prompt token is counted once")
        // The pinned prefix of every first prompt, then the whole first prompt (but its last token) of each retry.
        XCTAssertGreaterThanOrEqual(q.cached, cases.count * (pinned - 1) + firstPromptTokens / 2)
    }
}
