import Foundation
import GRDB
import GatewayTrainer
import PolicyEngine
import PromptR1
import TrafficLog
import XCTest

/// `gateway-train export` of real gateway traffic: the gateway serving promptr1-tiny in front of
/// the scripted FakeUpstream, feedback through `/v1/feedback` on some episodes only, then every
/// export format checked against docs/export-row.schema.json (with the Python `jsonschema`
/// package, an independent validator) and against the log's ids.
///
/// With EXPORT_CHECK_DIR set, the exports stay in that folder (scripts/check-export-loaders.sh
/// feeds them to TRL and verl).
final class GatewayExportTests: XCTestCase {
    static let repo = CollaborationTests.fixtures.deletingLastPathComponent().deletingLastPathComponent()
    static let schema = repo.appendingPathComponent("docs/export-row.schema.json")
    static let validator = repo.appendingPathComponent("Tests/compat/validate_export.py")

    struct Validation: Decodable {
        var rows: Int
        var errors: [String]
    }

    /// Runs Tests/compat/validate_export.py on one export file.
    static func validate(_ format: ExportFormat, _ file: URL) throws -> (status: Int32, result: Validation?) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["python3", validator.path, schema.path, format.rawValue, file.path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, try? JSONDecoder().decode(Validation.self, from: data))
    }

    static func lines(_ url: URL) throws -> [[String: Any]] {
        try String(contentsOf: url, encoding: .utf8).split(separator: "\n").map {
            try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
    }

    func testExportsOfGatewayTrafficHaveOneShapeAndTheLoggedIDs() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases)
        var ids: [String] = []
        for c in cases {
            let body = try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
            ])
            let reply = try await h.chat(String(decoding: body, as: UTF8.self))
            XCTAssertEqual(reply.status, 200, reply.body)
            ids.append(try XCTUnwrap(reply.episodeID))
        }
        // A passthrough request is logged too, but is no collaboration episode: never exported.
        let passthrough = try await h.chat(simpleChat)
        XCTAssertEqual(passthrough.status, 200)
        // Feedback on some: two right references, one wrong, one score, the rest nothing.
        func feedback(_ id: String, _ json: String) async throws {
            let r = try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"\#(id)",\#(json)}"#)
            XCTAssertEqual(r.status, 200, r.body)
        }
        try await feedback(ids[0], #""reference":"\#(cases[0].final_answer)""#)
        try await feedback(ids[1], #""reference":"\#(cases[1].final_answer)""#)
        try await feedback(ids[2], #""reference":"not the answer""#)
        try await feedback(ids[3], #""score":0.5"#)
        try await h.stop()

        let db = try TrafficDatabase(path: h.dbPath)
        let tokenizer = try Tokenizer(directory: CollaborationTests.fixtures.appendingPathComponent("models/promptr1-tiny"))
        let keep = ProcessInfo.processInfo.environment["EXPORT_CHECK_DIR"].map { URL(fileURLWithPath: $0) }
        let dir = keep ?? FileManager.default.temporaryDirectory.appendingPathComponent("export-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { if keep == nil { try? FileManager.default.removeItem(at: dir) } }
        if let keep {
            let copy = keep.appendingPathComponent("traffic.sqlite").path
            try? FileManager.default.removeItem(atPath: copy)
            try DatabaseQueue(path: h.dbPath).inDatabase { try $0.execute(sql: "VACUUM INTO ?", arguments: [copy]) }
        }

        var summaries: [ExportFormat: ExportSummary] = [:]
        for format in ExportFormat.allCases {
            let url = dir.appendingPathComponent("\(format.rawValue).jsonl")
            summaries[format] = try Exporter.export(database: db, options: ExportOptions(format: format), tokenizer: tokenizer, to: url)
            let (status, result) = try Self.validate(format, url)
            XCTAssertEqual(status, 0, "\(format): \(result?.errors ?? ["validator gave no result"])")
            XCTAssertEqual(result?.rows, cases.count, "\(format)")
            // The template the policy saw, beside the export.
            let template = try String(contentsOf: ExportChatTemplate.url(besides: url), encoding: .utf8)
            XCTAssertEqual(template, ExportChatTemplate.jinja)
            XCTAssertTrue(template.contains("{% generation %}") && template.contains("{% endgeneration %}"))
        }
        for (format, s) in summaries {
            XCTAssertEqual(s.written, cases.count, "\(format)")
            XCTAssertEqual(s.skipped, 0, "\(format)")
            XCTAssertEqual(s.notRerenderable, 0, "\(format): every episode's text re-tokenises to its logged ids")
            XCTAssertEqual(s.withReward, 4, "\(format)")
            XCTAssertEqual(s.withoutGroundTruth, cases.count - 3, "\(format)")
        }

        // jsonl: every key on every row, nulls where nothing is known.
        let rows = try Self.lines(dir.appendingPathComponent("jsonl.jsonl"))
        let byID = Dictionary(uniqueKeysWithValues: rows.map { ($0["id"] as! String, $0) })
        XCTAssertEqual(Set(byID.keys), Set(ids))
        let keySets = Set(rows.map { Set($0.keys) })
        XCTAssertEqual(keySets.count, 1, "one shape")
        let extraKeys = Set(rows.map { Set(($0["extra_info"] as! [String: Any]).keys) })
        XCTAssertEqual(extraKeys.count, 1)
        XCTAssertEqual(extraKeys.first?.count, 10)
        let none = try XCTUnwrap(byID[ids[5]])
        XCTAssertTrue(none["reward"] is NSNull)
        XCTAssertTrue((none["reward_model"] as? [String: Any])?["ground_truth"] is NSNull)
        for k in ["answer_score", "reward_source", "feedback_score"] {
            XCTAssertTrue((none["extra_info"] as? [String: Any])?[k] is NSNull, k)
        }
        XCTAssertEqual((byID[ids[0]]?["reward"] as? Double) ?? 0, 1.0, accuracy: 1e-9)
        XCTAssertEqual((byID[ids[0]]?["reward_model"] as? [String: Any])?["ground_truth"] as? [String], [cases[0].final_answer])
        XCTAssertLessThan((byID[ids[2]]?["reward"] as? Double) ?? 1, 1.0)
        XCTAssertEqual((byID[ids[3]]?["extra_info"] as? [String: Any])?["feedback_score"] as? Double, 0.5)
        XCTAssertEqual((byID[ids[3]]?["extra_info"] as? [String: Any])?["reward_source"] as? String, "score")

        // trl-sft: the logged ids and exactly the policy's tokens, nothing else to re-render.
        let trl = try Self.lines(dir.appendingPathComponent("trl-sft.jsonl"))
        for row in trl {
            XCTAssertEqual(Set(row.keys), ["id", "input_ids", "assistant_masks"])
            let id = try XCTUnwrap(row["id"] as? String)
            let e = try XCTUnwrap(try db.episode(id: id))
            let seq = try TrainingSequence(record: e)
            XCTAssertEqual(row["input_ids"] as? [Int], seq.tokens.map(Int.init))
            XCTAssertEqual(row["assistant_masks"] as? [Int], seq.mask.map(Int.init))
            XCTAssertEqual(row["assistant_masks"] as? [Int], byID[id]?["loss_mask"] as? [Int])
            // The masked tokens are what the policy generated, turn by turn.
            let generated = e.turns.filter { $0.kind == "policy" }.flatMap { $0.outputIDs ?? [] }
            let masked = zip(seq.tokens, seq.mask).filter { $0.1 == 1 }.map(\.0)
            XCTAssertEqual(masked, generated)
        }
        XCTAssertEqual(summaries[.trlSFT]?.policyTokens, rows.reduce(0) { $0 + ($1["loss_mask"] as! [Int]).reduce(0, +) })

        // verl-sft: rendering the messages with the written template gives the logged ids.
        for row in try Self.lines(dir.appendingPathComponent("verl-sft.jsonl")) {
            let id = try XCTUnwrap(row["id"] as? String)
            let messages = try XCTUnwrap(row["messages"] as? [[String: String]]).map {
                ChatTurn(role: $0["role"]!, content: $0["content"]!)
            }
            XCTAssertEqual(
                tokenizer.encode(ExportChatTemplate.render(messages, addGenerationPrompt: false)).map(Int.init),
                byID[id]?["input_ids"] as? [Int])
            // verl renders one message at a time: the pieces concatenate to the same ids.
            let pieces = messages.flatMap { tokenizer.encode(ExportChatTemplate.render([$0], addGenerationPrompt: false)) }
            XCTAssertEqual(pieces.map(Int.init), byID[id]?["input_ids"] as? [Int])
        }
        // verl-rl: the prompt renders to the policy's first input.
        for row in try Self.lines(dir.appendingPathComponent("verl-rl.jsonl")) {
            let id = try XCTUnwrap(row["id"] as? String)
            let prompt = try XCTUnwrap(row["prompt"] as? [[String: String]]).map { ChatTurn(role: $0["role"]!, content: $0["content"]!) }
            let e = try XCTUnwrap(try db.episode(id: id))
            XCTAssertEqual(
                tokenizer.encode(ExportChatTemplate.render(prompt, addGenerationPrompt: true)),
                e.turns.first { $0.kind == "policy" }?.inputIDs)
            XCTAssertEqual(prompt.map(\.role), ["system", "user"])
        }

        // Filters as for train: --min-reward, route, time.
        let best = dir.appendingPathComponent("best.jsonl")
        let sBest = try Exporter.export(
            database: db, options: ExportOptions(format: .trlSFT, minReward: 1.0), tokenizer: tokenizer, to: best)
        XCTAssertEqual(Set(try Self.lines(best).map { $0["id"] as! String }), [ids[0], ids[1]])
        XCTAssertEqual(sBest.belowMinReward, cases.count - 2)
        let other = try Exporter.export(
            database: db, options: ExportOptions(filter: EpisodeFilter(route: "rollout")), tokenizer: tokenizer, to: best)
        XCTAssertEqual(other.written, 0)
        let later = try Exporter.export(
            database: db, options: ExportOptions(filter: EpisodeFilter(since: Date().addingTimeInterval(60))), tokenizer: tokenizer,
            to: best)
        XCTAssertEqual(later.written, 0)
        try? FileManager.default.removeItem(at: best)
        try? FileManager.default.removeItem(at: ExportChatTemplate.url(besides: best))
    }

    /// The schema check can fail: a row without its null `reward`, or with a key too many, is refused.
    func testSchemaRefusesMissingAndExtraKeys() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("export-schema-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let extra: [String: Any] = [
            "episode_id": "e", "index": 0, "question": NSNull(), "route": "r", "policy_version": NSNull(),
            "created_at": 1.0, "format_score": NSNull(), "answer_score": NSNull(), "reward_source": NSNull(),
            "feedback_score": NSNull(),
        ]
        let good: [String: Any] = [
            "id": "e", "data_source": "d", "prompt": [["role": "system", "content": "s"]],
            "reward_model": ["style": "rule", "ground_truth": NSNull()], "extra_info": extra,
        ]
        func check(_ row: [String: Any]) throws -> Int32 {
            let url = dir.appendingPathComponent("rows.jsonl")
            try (JSONSerialization.data(withJSONObject: row) + [0x0A]).write(to: url)
            return try Self.validate(.verlRL, url).status
        }
        XCTAssertEqual(try check(good), 0)
        var missing = good
        missing["reward_model"] = ["style": "rule"]
        XCTAssertNotEqual(try check(missing), 0)
        var more = good
        more["messages"] = []
        XCTAssertNotEqual(try check(more), 0)
        var wrongType = good
        wrongType["extra_info"] = extra.merging(["reward_source": "vibes"]) { $1 }
        XCTAssertNotEqual(try check(wrongType), 0)
    }
}
