import Foundation
import GatewayTrainer
import TrafficLog

enum TrainingSequenceFixture {
    /// A sequence made of policy turns: each maximal run of mask 0s followed by 1s becomes one turn.
    static func record(
        id: String, tokens: [Int32], mask: [UInt8], logprobs: [Float], question: String? = nil,
        createdAt: Date = Date(), route: String = "rollout", policyVersion: String? = "v0",
        formatScore: Double? = 1.0, lastText: String = "<think>x</think><answer>a</answer>"
    ) -> EpisodeRecord {
        var turns: [TurnRecord] = []
        var i = 0
        while i < tokens.count {
            var j = i
            while j < tokens.count && mask[j] == 0 { j += 1 }
            var k = j
            while k < tokens.count && mask[k] == 1 { k += 1 }
            turns.append(
                TurnRecord(
                    index: turns.count, kind: "policy", inputIDs: Array(tokens[i..<j]), outputIDs: Array(tokens[j..<k]),
                    logprobs: Array(logprobs[j..<k]), lossMask: Array(mask[i..<k]), text: "turn"))
            i = k
        }
        turns[turns.count - 1].text = lastText
        return EpisodeRecord(
            id: id, createdAt: createdAt, route: route, mode: "collaborate", policyVersion: policyVersion,
            question: question, formatScore: formatScore, turns: turns)
    }

    static func sequence(id: String, tokens: [Int32], mask: [UInt8], logprobs: [Float]) -> TrainingSequence {
        try! TrainingSequence(record: record(id: id, tokens: tokens, mask: mask, logprobs: logprobs))
    }
}

/// A fresh temporary directory, removed on deinit.
final class TempDir {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("trainer-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    deinit { try? FileManager.default.removeItem(at: url) }
}

enum Fixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().resolvingSymlinksInPath()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func model(_ name: String) -> URL { root.appendingPathComponent("models/\(name)") }
}
