import EpisodeLog
import FakeUpstream
import Foundation
import GatewayTrainer
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog
import XCTest

/// `gateway-train export --format ...` as a user runs it, on sampled rollouts (temperature 1, so
/// the policy's token splits are its own) of the real engine against the scripted FakeUpstream:
/// every format validated against docs/export-row.schema.json with the Python `jsonschema`
/// package, and the token views checked against the log.
final class ExportFormatTests: XCTestCase {
    static let repo = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()

    struct Run {
        var status: Int32
        var out: String
    }

    func run(_ executable: URL, _ args: [String]) throws -> Run {
        let p = Process()
        p.executableURL = executable
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, out: String(decoding: data, as: UTF8.self))
    }

    func validate(_ format: String, _ file: String) throws -> Run {
        try run(
            URL(fileURLWithPath: "/usr/bin/env"),
            [
                "python3", Self.repo.appendingPathComponent("Tests/compat/validate_export.py").path,
                Self.repo.appendingPathComponent("docs/export-row.schema.json").path, format, file,
            ])
    }

    func testEveryFormatFromTheCLIMatchesTheSchemaAndTheLog() async throws {
        let exe = try CLITests.executable()
        let cases = try RolloutExportTests.cases()
        let fake = try await FakeUpstream(script: RolloutExportTests.script(cases))
        let client = UpstreamClient(settings: UpstreamSettings(baseURL: fake.baseURL, maxRetries: 0))
        let policyURL = Fixtures.model("promptr1-tiny")
        let policy = try EnginePolicy(directory: policyURL)
        let tmp = try TempDir()
        let dbPath = tmp.path("traffic.sqlite")
        let db = try TrafficDatabase(path: dbPath)
        var config = RolloutConfig()
        config.groupSize = 2
        config.concurrency = 2
        config.maxTokensPerTurn = 200
        config.temperature = 1.0
        config.seed = 7
        let items = cases.prefix(3).map { DatasetItem(question: $0.question, answers: [$0.final_answer ?? ""]) }
        let version = CheckpointHash.versionID(sha256: try CheckpointHash.weightsSHA256(directory: policyURL))
        let r = try await Rollout.run(
            items: items, policy: policy, policyVersion: version, upstream: ClientUpstream(client: client),
            database: db, config: config)
        try await client.shutdown()
        await fake.stop()
        policy.shutdown()
        XCTAssertEqual(r.episodesLogged, 6)

        for format in ExportFormat.allCases.map(\.rawValue) {
            let out = tmp.path("\(format).jsonl")
            let x = try run(exe, ["export", "--db", dbPath, "--format", format, "--out", out, "--tokenizer", policyURL.path])
            XCTAssertEqual(x.status, 0, x.out)
            XCTAssertTrue(x.out.contains("episodes written"), x.out)
            let v = try validate(format, out)
            XCTAssertEqual(v.status, 0, "\(format): \(v.out)")
            XCTAssertTrue(FileManager.default.fileExists(atPath: tmp.path("\(format).chat_template.jinja")))
        }
        let bad = try run(
            exe, ["export", "--db", dbPath, "--format", "parquet", "--out", tmp.path("x.jsonl"), "--tokenizer", policyURL.path])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.out.contains("trl-sft") && bad.out.contains("verl-rl"), bad.out)

        // The token views against the log; the verl rows are exactly those whose text re-tokenises.
        let tokenizer = try Tokenizer(directory: policyURL)
        func rows(_ f: String) throws -> [[String: Any]] {
            try String(contentsOfFile: tmp.path("\(f).jsonl"), encoding: .utf8).split(separator: "\n").map {
                try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
            }
        }
        let full = try rows("jsonl")
        XCTAssertEqual(full.count, 6)
        let trl = try rows("trl-sft")
        XCTAssertEqual(trl.map { $0["id"] as! String }, full.map { $0["id"] as! String })
        for (t, j) in zip(trl, full) {
            XCTAssertEqual(t["input_ids"] as? [Int], j["input_ids"] as? [Int])
            XCTAssertEqual(t["assistant_masks"] as? [Int], j["loss_mask"] as? [Int])
        }
        var rerenders: Set<String> = []
        for j in full {
            let messages = (j["messages"] as! [[String: Any]]).map {
                ChatTurn(role: $0["role"] as! String, content: $0["content"] as! String)
            }
            let ids = tokenizer.encode(ExportChatTemplate.render(messages, addGenerationPrompt: false)).map(Int.init)
            if ids == j["input_ids"] as? [Int] { rerenders.insert(j["id"] as! String) }
        }
        XCTAssertEqual(Set(try rows("verl-sft").map { $0["id"] as! String }), rerenders)
        XCTAssertEqual(try rows("verl-rl").count, 6, "the first prompt is the gateway's own rendering: it always re-tokenises")

        // --min-reward keeps the episodes at or above it.
        let best = tmp.path("best.jsonl")
        let m = try run(
            exe, ["export", "--db", dbPath, "--format", "trl-sft", "--out", best, "--tokenizer", policyURL.path, "--min-reward", "0.5"])
        XCTAssertEqual(m.status, 0, m.out)
        let kept = Set(
            try String(contentsOfFile: best, encoding: .utf8).split(separator: "\n").map {
                (try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any])["id"] as! String
            })
        XCTAssertEqual(kept, Set(full.filter { ($0["reward"] as? Double ?? -2) >= 0.5 }.map { $0["id"] as! String }))
        XCTAssertTrue(m.out.contains("below --min-reward"), m.out)
    }
}
