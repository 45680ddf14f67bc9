import Foundation
import PolicyEngine

@testable import PromptR1

/// The trained fixture policy `promptr1-tiny` and its reference cases: questions with the scripted upstream
/// answers (Tests/Fixtures/reference/promptr1-tiny-episodes.json).
enum TinyPolicyFixture {
    struct Case: Decodable {
        var question: String
        var upstream_answers: [String]
    }
    private struct Cases: Decodable { var cases: [Case] }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let directory = fixtures.appendingPathComponent("models/promptr1-tiny")

    static func cases() throws -> [Case] {
        try JSONDecoder().decode(
            Cases.self, from: Data(contentsOf: fixtures.appendingPathComponent("reference/promptr1-tiny-episodes.json"))
        ).cases
    }

    /// One protocol episode of `policy` on `c`, with the reference's limits (5 turns of 200 tokens).
    static func episode(_ policy: EnginePolicy, _ c: Case, sampling: SamplingParameters) async -> Episode {
        let loop = CollaborationLoop(
            options: .init(limits: .init(maxTurns: 5, maxTokensPerTurn: 200)),
            upstream: ScriptedUpstream(c.upstream_answers.map { .text($0) }),
            makeSession: policy.factory(sampling: sampling))
        return await loop.run(question: c.question)
    }
}
