import EpisodeLog
import FakeUpstream
import Foundation
import GatewayTrainer
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog
import XCTest

/// Rollouts with the real engine (promptr1-tiny) against a scripted FakeUpstream on a loopback
/// port, into a real SQLite file; then the export of those episodes.
final class RolloutExportTests: XCTestCase {
    struct Case: Decodable {
        var question: String
        var upstream_answers: [String]
        var upstream_prompts: [String]
        var final_answer: String?
        var held_out: Bool?
    }

    static func cases() throws -> [Case] {
        struct File: Decodable { var cases: [Case] }
        let data = try Data(contentsOf: Fixtures.root.appendingPathComponent("reference/promptr1-tiny-episodes.json"))
        return try JSONDecoder().decode(File.self, from: data).cases.filter { $0.held_out != true }
    }

    static func script(_ cases: [Case]) -> FakeUpstream.Script {
        var answers: [String: String] = [:]
        for c in cases { for (p, a) in zip(c.upstream_prompts, c.upstream_answers) { answers[p] = a } }
        return FakeUpstream.answering(answers, unknown: "I do not know.")
    }

    func testRolloutLogsGroupsWithReferencesAndResumes() async throws {
        let cases = try Self.cases()
        let fake = try await FakeUpstream(script: Self.script(cases))
        let client = UpstreamClient(settings: UpstreamSettings(baseURL: fake.baseURL, maxRetries: 0))
        let policy = try EnginePolicy(directory: Fixtures.model("promptr1-tiny"))
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("traffic.sqlite"))
        var config = RolloutConfig()
        config.groupSize = 3
        config.concurrency = 3
        config.maxTokensPerTurn = 200
        config.temperature = 1.0
        config.seed = 1
        let items = cases.prefix(2).map { DatasetItem(question: $0.question, answers: [$0.final_answer ?? ""]) }
        let version = CheckpointHash.versionID(sha256: try CheckpointHash.weightsSHA256(directory: Fixtures.model("promptr1-tiny")))
        let first = try await Rollout.run(
            items: Array(items), policy: policy, policyVersion: version, upstream: ClientUpstream(client: client),
            database: db, config: config)
        XCTAssertEqual(first.episodesLogged + first.episodesFailed, 6)
        XCTAssertEqual(first.episodesFailed, 0, "\(first.failures)")
        XCTAssertEqual(try db.episodeCountsByQuestion(route: "rollout"), [items[0].question: 3, items[1].question: 3])
        let logged = try db.episodes(EpisodeQuery(route: "rollout"))
        XCTAssertEqual(logged.count, 6)
        for e in logged {
            XCTAssertEqual(e.mode, "collaborate")
            XCTAssertEqual(e.policyVersion, version)
            XCTAssertEqual(e.upstreamModel, "gpt-4o-mini")
            XCTAssertNotNil(e.formatScore)
            let fb = try db.feedback(episodeID: e.id)
            XCTAssertEqual(fb.map(\.kind), ["reference"])
            let seq = try TrainingSequence(record: e)
            XCTAssertGreaterThan(seq.policyTokenCount, 0)
            XCTAssertFalse(seq.behaviourLogprobs.contains { $0.isNaN })
        }
        // Sampled: the three episodes of a question are not all the same sequence.
        let q0 = try logged.filter { $0.question == items[0].question }.map { try TrainingSequence(record: $0).tokens }
        XCTAssertGreaterThan(Set(q0).count, 1, "temperature 1 with distinct seeds gives distinct samples")

        // Rerun: nothing to do. Then one more question: only its group runs.
        let calls = fake.received.count
        let again = try await Rollout.run(
            items: Array(items), policy: policy, policyVersion: version, upstream: ClientUpstream(client: client),
            database: db, config: config)
        XCTAssertEqual(again.episodesLogged, 0)
        XCTAssertEqual(again.questionsSkipped, 2)
        XCTAssertEqual(fake.received.count, calls, "a resumed rollout sends nothing for finished questions")
        let more = items + [DatasetItem(question: cases[3].question, answers: [cases[3].final_answer ?? ""])]
        let third = try await Rollout.run(
            items: more, policy: policy, policyVersion: version, upstream: ClientUpstream(client: client),
            database: db, config: config)
        XCTAssertEqual(third.episodesLogged, 3)
        XCTAssertEqual(third.questionsSkipped, 2)
        XCTAssertEqual(try db.episodeCount(), 9)

        // Training selection sees three groups of three.
        let sel = try EpisodeSelector.select(database: db, filter: EpisodeFilter(route: "rollout"))
        XCTAssertEqual(sel.episodes.count, 9)
        XCTAssertEqual(sel.groups, 3)
        XCTAssertEqual(sel.loneEpisodes, 0)

        // Export: one line per episode, chat messages with train flags, exact token view.
        let out = tmp.url.appendingPathComponent("episodes.jsonl")
        let tokenizer = try Tokenizer(directory: Fixtures.model("promptr1-tiny"))
        let summary = try Exporter.export(
            database: db, filter: EpisodeFilter(route: "rollout"), requireReward: false, tokenizer: tokenizer, to: out)
        XCTAssertEqual(summary.written, 9)
        XCTAssertEqual(summary.withReward, 9)
        let lines = try String(contentsOf: out, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 9)
        for line in lines {
            let j = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            let id = try XCTUnwrap(j["id"] as? String)
            let rec = try XCTUnwrap(try db.episode(id: id))
            let seq = try TrainingSequence(record: rec)
            let messages = try XCTUnwrap(j["messages"] as? [[String: Any]])
            XCTAssertEqual(messages.first?["role"] as? String, "system")
            XCTAssertEqual(messages[1]["role"] as? String, "user")
            XCTAssertEqual(messages[1]["content"] as? String, PromptR1Prompt.userContent(question: rec.question!))
            XCTAssertEqual(messages[2]["role"] as? String, "assistant")
            for m in messages { XCTAssertEqual(m["train"] as? Bool, (m["role"] as? String) == "assistant") }
            // Assistant and user messages alternate after the prompt; the first assistant message
            // is the policy's first turn verbatim.
            XCTAssertEqual(messages[2]["content"] as? String, rec.turns.first { $0.kind == "policy" }?.text)
            let prompt = try XCTUnwrap(j["prompt"] as? [[String: Any]])
            XCTAssertEqual(prompt.count, 2)
            XCTAssertEqual((j["completion"] as? [[String: Any]])?.count, messages.count - 2)
            XCTAssertEqual(j["input_ids"] as? [Int], seq.tokens.map(Int.init))
            XCTAssertEqual(j["loss_mask"] as? [Int], seq.mask.map(Int.init))
            XCTAssertEqual((j["old_logprobs"] as? [Double])?.count, seq.tokens.count)
            let reward = try XCTUnwrap(j["reward"] as? Double)
            XCTAssertEqual(reward, sel.episodes.first { $0.sequence.episodeID == id }!.reward.reward, accuracy: 1e-9)
            let rm = try XCTUnwrap(j["reward_model"] as? [String: Any])
            XCTAssertEqual(rm["style"] as? String, "rule")
            XCTAssertEqual((rm["ground_truth"] as? [String])?.count, 1)
            let extra = try XCTUnwrap(j["extra_info"] as? [String: Any])
            XCTAssertEqual(extra["episode_id"] as? String, id)
            XCTAssertEqual(extra["reward_source"] as? String, "reference")
            XCTAssertEqual(j["data_source"] as? String, "prompt-r1-gateway")
        }
        try await client.shutdown()
        await fake.stop()
        policy.shutdown()
    }

    func testChatMLParse() {
        let t =
            "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nR<|im_end|>\n<|im_start|>assistant\n<think>\nA2"
        let m = ChatML.parse(t)
        XCTAssertEqual(m.map(\.role), ["system", "user", "assistant", "user", "assistant"])
        XCTAssertEqual(m.map(\.content), ["S", "U", "A1", "R", "<think>\nA2"])
        XCTAssertEqual(m.map(\.train), [false, false, true, false, true])
    }

    func testPendingWork() {
        let items = [
            DatasetItem(question: "a", answers: []), DatasetItem(question: "b", answers: []), DatasetItem(question: "a", answers: []),
        ]
        let p = Rollout.pending(items: items, groupSize: 3, done: ["a": 4, "b": 1])
        // "a" listed twice: its first group is done, its second has 1 of 3; "b" has 1 of 3.
        XCTAssertEqual(p.map(\.item), [1, 1, 2, 2])
        XCTAssertEqual(p.map(\.sample), [1, 2, 1, 2])
        XCTAssertNotEqual(Rollout.seed(base: 0, question: "a", sample: 0), Rollout.seed(base: 0, question: "a", sample: 1))
    }
}
