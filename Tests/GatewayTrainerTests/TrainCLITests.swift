import EpisodeLog
import FakeUpstream
import Foundation
import GatewayTrainer
import PolicyEngine
import PromptR1
import TrafficLog
import XCTest

/// `gateway-train rollout / train / export / eval` as a user runs them: the built executable, a
/// FakeUpstream on a loopback port, a real SQLite file, the tiny Prompt-R1 policy.
final class TrainCLITests: XCTestCase {
    struct Run {
        var status: Int32
        var out: String
        var err: String
    }

    func run(_ args: [String]) throws -> Run { try Self.runTrainer(args) }

    /// The built `gateway-train` with `args` (also used by TrainFromPostgresTests).
    static func runTrainer(_ args: [String]) throws -> Run {
        let p = Process()
        p.executableURL = try CLITests.executable()
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["TEST_UPSTREAM_KEY"] = "sk-test-secret-123"
        p.environment = env
        // stderr goes to a file so a full pipe can never block the child.
        let errURL = FileManager.default.temporaryDirectory.appendingPathComponent("gateway-train-err-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: errURL.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errURL) }
        let out = Pipe()
        let errHandle = try FileHandle(forWritingTo: errURL)
        p.standardOutput = out
        p.standardError = errHandle
        try p.run()
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        try errHandle.close()
        let errData = try Data(contentsOf: errURL)
        return Run(
            status: p.terminationStatus, out: String(decoding: outData, as: UTF8.self), err: String(decoding: errData, as: UTF8.self))
    }

    func testRolloutTrainExportEvalEndToEnd() async throws {
        _ = try CLITests.executable()
        let cases = try RolloutExportTests.cases()
        let fake = try await FakeUpstream(script: RolloutExportTests.script(cases))
        let tmp = try TempDir()
        let dataset = tmp.url.appendingPathComponent("data.jsonl")
        let lines = try cases.prefix(2).map { c in
            String(decoding: try JSONEncoder().encode(DatasetItem(question: c.question, answers: [c.final_answer ?? ""])), as: UTF8.self)
        }
        try (lines.joined(separator: "\n") + "\n").write(to: dataset, atomically: true, encoding: .utf8)
        let policy = Fixtures.model("promptr1-tiny").path
        let db = tmp.path("traffic.sqlite")
        let upstream = ["--upstream-url", fake.baseURL, "--api-key-env", "TEST_UPSTREAM_KEY", "--upstream-model", "gpt-4o-mini"]

        for sub in ["rollout", "train", "eval", "export"] {
            let h = try run([sub, "--help"])
            XCTAssertEqual(h.status, 0, sub)
            XCTAssertTrue(h.out.contains("USAGE"), sub)
        }

        let r = try run(
            [
                "rollout", "--dataset", dataset.path, "--group-size", "2", "--policy", policy, "--db", db,
                "--max-tokens-per-turn", "200", "--concurrency", "2", "--seed", "3",
            ] + upstream)
        XCTAssertEqual(r.status, 0, r.err)
        XCTAssertTrue(r.out.contains("episodes logged"), r.out)
        XCTAssertTrue(r.err.contains("rollout: 4/4"), r.err)
        XCTAssertEqual(try TrafficDatabase(path: db).episodeCount(), 4)
        // The key went upstream and nowhere else.
        XCTAssertEqual(fake.received.first?.headers["authorization"], "Bearer sk-test-secret-123")
        XCTAssertFalse(r.out.contains("sk-test") || r.err.contains("sk-test"))
        let rawDB = try Data(contentsOf: URL(fileURLWithPath: db))
        XCTAssertNil(rawDB.range(of: Data("sk-test-secret".utf8)), "the key is not stored")
        let again = try run(["rollout", "--dataset", dataset.path, "--group-size", "2", "--policy", policy, "--db", db] + upstream)
        XCTAssertEqual(again.status, 0, again.err)
        XCTAssertEqual(try TrafficDatabase(path: db).episodeCount(), 4, "resumed: nothing new")

        let out = tmp.path("ckpt")
        let trainArgs = [
            "train", "--db", db, "--base", policy, "--out", out, "--lora-rank", "4", "--lora-alpha", "8",
            "--lora-targets", "q_proj,v_proj", "--lr", "1e-3", "--grad-accum", "2", "--epochs", "2", "--seed", "5",
            "--route", "rollout",
        ]
        let t = try run(trainArgs)
        XCTAssertEqual(t.status, 0, t.err)
        XCTAssertTrue(t.out.contains("KL after"), t.out)
        let manifest = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: out + "/manifest.json"))) as? [String: Any])
        let baseSHA = try CheckpointHash.weightsSHA256(directory: Fixtures.model("promptr1-tiny"))
        XCTAssertEqual(manifest["parent_sha256"] as? String, baseSHA)
        XCTAssertEqual(manifest["parent_version"] as? String, String(baseSHA.prefix(16)))
        XCTAssertEqual(manifest["episode_count"] as? Int, 4)
        XCTAssertEqual((manifest["episode_ids"] as? [String])?.count, 4)
        XCTAssertEqual(manifest["steps"] as? Int, 4)
        XCTAssertEqual(manifest["kl_before"] as? Double, 0)
        XCTAssertNotNil(manifest["kl_after"] as? Double)
        XCTAssertEqual((manifest["hyperparameters"] as? [String: Any])?["lora_rank"] as? Int, 4)
        let newSHA = try CheckpointHash.weightsSHA256(directory: URL(fileURLWithPath: out))
        XCTAssertEqual(manifest["sha256"] as? String, newSHA)
        XCTAssertNotEqual(newSHA, baseSHA, "training changed the weights")
        // The output is a checkpoint the engine (and so the gateway) loads.
        let loaded = try EnginePolicy(directory: URL(fileURLWithPath: out))
        loaded.shutdown()

        // A second run into the same folder needs --resume; resuming a finished run changes nothing.
        let refused = try run(trainArgs)
        XCTAssertNotEqual(refused.status, 0)
        XCTAssertTrue(refused.err.contains("--resume"), refused.err)
        let resumed = try run(trainArgs + ["--resume"])
        XCTAssertEqual(resumed.status, 0, resumed.err)
        XCTAssertEqual(try CheckpointHash.weightsSHA256(directory: URL(fileURLWithPath: out)), newSHA)

        let exported = tmp.path("episodes.jsonl")
        let x = try run(["export", "--db", db, "--format", "jsonl", "--out", exported, "--tokenizer", policy])
        XCTAssertEqual(x.status, 0, x.err)
        XCTAssertEqual(try String(contentsOfFile: exported, encoding: .utf8).split(separator: "\n").count, 4)

        let report = tmp.path("eval.json")
        let e = try run(
            ["eval", "--dataset", dataset.path, "--policy", policy, "--report", report, "--max-tokens-per-turn", "200"] + upstream)
        XCTAssertEqual(e.status, 0, e.err)
        XCTAssertTrue(e.out.contains("upstream alone") && e.out.contains("collaboration"), e.out)
        let rep = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: report))) as? [String: Any])
        let collab = try XCTUnwrap(rep["collaboration"] as? [String: Any])
        XCTAssertEqual(collab["n"] as? Int, 2)
        // Greedy decoding reproduces the trained episodes: both answers exact.
        XCTAssertEqual(collab["exact_match"] as? Double, 1.0)
        XCTAssertEqual(collab["mean_reward"] as? Double, 1.0)
        let alone = try XCTUnwrap(rep["upstream_alone"] as? [String: Any])
        XCTAssertEqual(alone["n"] as? Int, 2)
        XCTAssertEqual(alone["upstream_calls"] as? Int, 2)
        XCTAssertEqual((rep["items"] as? [Any])?.count, 2)
        await fake.stop()
    }

    /// Greedy rollouts give every episode of a group the same reward: `train` says so and
    /// exits non-zero instead of silently changing nothing, unless --allow-no-signal.
    func testTrainRefusesEpisodesWithoutSignal() async throws {
        _ = try CLITests.executable()
        let cases = try RolloutExportTests.cases()
        let fake = try await FakeUpstream(script: RolloutExportTests.script(cases))
        let tmp = try TempDir()
        let dataset = tmp.url.appendingPathComponent("data.jsonl")
        let lines = try cases.prefix(2).map { c in
            String(decoding: try JSONEncoder().encode(DatasetItem(question: c.question, answers: [c.final_answer ?? ""])), as: UTF8.self)
        }
        try (lines.joined(separator: "\n") + "\n").write(to: dataset, atomically: true, encoding: .utf8)
        let policy = Fixtures.model("promptr1-tiny").path
        let db = tmp.path("traffic.sqlite")
        let r = try run([
            "rollout", "--dataset", dataset.path, "--group-size", "2", "--policy", policy, "--db", db, "--temperature", "0",
            "--max-tokens-per-turn", "200", "--upstream-url", fake.baseURL, "--api-key-env", "TEST_UPSTREAM_KEY",
            "--upstream-model", "gpt-4o-mini",
        ])
        XCTAssertEqual(r.status, 0, r.err)
        await fake.stop()

        let out = tmp.path("ckpt")
        let args = ["train", "--db", db, "--base", policy, "--out", out, "--lora-rank", "4", "--grad-accum", "2"]
        let refused = try run(args)
        XCTAssertEqual(refused.status, 1, refused.err)
        XCTAssertTrue(refused.err.contains("nothing to learn from: all 2 groups have identical rewards"), refused.err)
        XCTAssertTrue(refused.err.contains("sample with temperature > 0") && refused.err.contains("--allow-no-signal"), refused.err)
        XCTAssertTrue(refused.err.contains("advantage 0 in 2 of 2 groups and 0 of 0 lone episodes"), refused.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: out), "nothing was written")

        let allowed = try run(args + ["--allow-no-signal"])
        XCTAssertEqual(allowed.status, 0, allowed.err)
        XCTAssertTrue(allowed.err.contains("training anyway"), allowed.err)
        XCTAssertTrue(allowed.out.contains("advantage 0") && allowed.out.contains("2 of 2 groups"), allowed.out)
    }

    /// Sampled episodes whose backend logged the model's log-probs (`policy_logprobs = model`,
    /// e.g. vLLM's default) are refused by `train` unless `--behaviour base` recomputes them.
    func testTrainRefusesModelLogprobsOfSampledEpisodesWithoutBehaviourBase() async throws {
        _ = try CLITests.executable()
        let cases = try RolloutExportTests.cases()
        let fake = try await FakeUpstream(script: RolloutExportTests.script(cases))
        let tmp = try TempDir()
        let dataset = tmp.url.appendingPathComponent("data.jsonl")
        let lines = try cases.prefix(2).map { c in
            String(decoding: try JSONEncoder().encode(DatasetItem(question: c.question, answers: [c.final_answer ?? ""])), as: UTF8.self)
        }
        try (lines.joined(separator: "\n") + "\n").write(to: dataset, atomically: true, encoding: .utf8)
        let policy = Fixtures.model("promptr1-tiny").path
        let sampledDB = tmp.path("traffic.sqlite")
        let r = try run([
            "rollout", "--dataset", dataset.path, "--group-size", "2", "--policy", policy, "--db", sampledDB, "--temperature", "1",
            "--seed", "3", "--max-tokens-per-turn", "40", "--upstream-url", fake.baseURL, "--api-key-env", "TEST_UPSTREAM_KEY",
            "--upstream-model", "gpt-4o-mini",
        ])
        XCTAssertEqual(r.status, 0, r.err)
        await fake.stop()
        // The embedded engine logged the sampling distribution's log-probs of sampled episodes.
        let log = try TrafficDatabase(path: sampledDB)
        let episodes = try log.episodes(EpisodeQuery())
        XCTAssertEqual(episodes.count, 4)
        XCTAssertTrue(
            episodes.allSatisfy { $0.policyLogprobs == .sampling && $0.policySampled == true },
            "\(episodes.map { ($0.policyLogprobs, $0.policySampled) })")
        // The same episodes as an engine that returns raw log-probs would have logged them.
        let feedback = try log.feedback(episodeIDs: episodes.map(\.id))
        try log.close()
        let db = tmp.path("as-vllm.sqlite")
        let asEngine = try TrafficDatabase(path: db)
        try asEngine.insert(
            episodes: episodes.map {
                var e = $0
                e.policyLogprobs = .model
                return e
            })
        for f in feedback.values.flatMap({ $0 }) { _ = try asEngine.insertFeedback(f) }
        try asEngine.close()

        let args = [
            "train", "--db", db, "--base", policy, "--out", tmp.path("ckpt"), "--lora-rank", "4", "--grad-accum", "2",
            "--allow-no-signal",
        ]
        let refused = try run(args)
        XCTAssertEqual(refused.status, 1, refused.err)
        XCTAssertTrue(
            refused.err.contains("4 selected episodes were sampled but their policy backend logged the model's log-probs"), refused.err)
        XCTAssertTrue(refused.err.contains("--behaviour base"), refused.err)
        XCTAssertFalse(FileManager.default.fileExists(atPath: tmp.path("ckpt")), "nothing was written")
        let based = try run(args + ["--behaviour", "base"])
        XCTAssertEqual(based.status, 0, based.err)
    }

    func testPushPostsThePathWithTheAdminToken() async throws {
        let fake = try await FakeUpstream(script: { r in
            if r.path == "/v1/admin/policy" {
                if r.headers["authorization"] != "Bearer admin-tok" { return .json(status: 401, body: #"{"error":{"message":"no"}}"#) }
                return .json(status: 200, body: #"{"id":"abcd","status":"serving"}"#)
            }
            return nil
        })
        let reply = try await TrainJob.push(adminURL: fake.baseURL, path: "ckpt-1", token: "admin-tok")
        XCTAssertTrue(reply.contains("serving"))
        let req = try XCTUnwrap(fake.received.last)
        XCTAssertEqual(req.method, "POST")
        XCTAssertEqual(req.json?["path"] as? String, "ckpt-1")
        do {
            _ = try await TrainJob.push(adminURL: fake.baseURL, path: "ckpt-1", token: "wrong")
            XCTFail("a refused swap must throw")
        } catch let e as TrainJob.PushError {
            XCTAssertEqual(e.status, 401)
        }
        await fake.stop()
    }
}
