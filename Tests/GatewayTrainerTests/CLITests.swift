import Foundation
import XCTest

/// `gateway-train tokenize/generate/score` against the fixture checkpoints and the transformers
/// reference numbers, run as a user would run them (a child process, JSON output).
final class CLITests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().resolvingSymlinksInPath()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")

    /// The built executable sits next to the test bundle.
    static func executable() throws -> URL {
        var dir = Bundle.main.bundleURL
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("gateway-train")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        for b in Bundle.allBundles {
            let candidate = b.bundleURL.deletingLastPathComponent().appendingPathComponent("gateway-train")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw XCTSkip("gateway-train is not built next to the tests (run `swift build --build-tests`)")
    }

    func run(_ args: [String]) throws -> [String: Any] {
        let p = Process()
        p.executableURL = try Self.executable()
        p.arguments = args
        let out = Pipe()
        let err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, errText)
        return try XCTUnwrap(try JSONSerialization.jsonObject(with: data) as? [String: Any], String(decoding: data, as: UTF8.self))
    }

    func testGenerateAndScoreMatchTransformers() throws {
        for name in ["qwen2-tiny", "qwen3-tiny", "llama-tiny"] {
            let ref = try XCTUnwrap(
                try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("reference/\(name).json")))
                    as? [String: Any])
            let c = try XCTUnwrap((ref["cases"] as? [[String: Any]])?[1])
            let input = (c["input_ids"] as? [Int] ?? []).map(String.init).joined(separator: ",")
            let greedy = c["greedy_ids"] as? [Int] ?? []
            let model = Self.fixtures.appendingPathComponent("models/\(name)").path
            let g = try run([
                "generate", "--model", model, "--prompt-ids", input, "--max-tokens", "\(greedy.count)",
                "--temperature", "0", "--ignore-eos", "--json",
            ])
            XCTAssertEqual(g["ids"] as? [Int], greedy, name)
            let raw = (g["raw_logprobs"] as? [Double]) ?? []
            for (a, b) in zip(raw, c["greedy_logprobs"] as? [Double] ?? []) { XCTAssertEqual(a, b, accuracy: 1e-4, name) }
            let s = try run([
                "score", "--model", model, "--prompt-ids", input,
                "--continuation-ids", greedy.map(String.init).joined(separator: ","), "--json",
            ])
            for (a, b) in zip(s["logprobs"] as? [Double] ?? [], c["greedy_logprobs"] as? [Double] ?? []) {
                XCTAssertEqual(a, b, accuracy: 1e-4, name)
            }
        }
    }

    func testTokenizeMatchesHF() throws {
        let ref = try XCTUnwrap(
            try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("reference/tokenizer-qwen.json")))
                as? [String: Any])
        let c = try XCTUnwrap((ref["cases"] as? [[String: Any]])?.first { ($0["text"] as? String ?? "").count > 10 })
        let t = try run([
            "tokenize", "--model", Self.fixtures.appendingPathComponent("models/qwen3-tiny").path, "--text", c["text"] as! String, "--json",
        ])
        XCTAssertEqual(t["ids"] as? [Int], c["ids"] as? [Int])
    }

    /// The plain (non-JSON) output, run as a user would: what docs/training.md says each command
    /// prints, with the same numbers as the JSON output (checked against transformers above).
    func plain(_ args: [String]) throws -> String {
        let p = Process()
        p.executableURL = try Self.executable()
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "\(args)")
        return String(decoding: data, as: UTF8.self)
    }

    func testPlainOutputIsWhatTheDocsDescribe() throws {
        let model = Self.fixtures.appendingPathComponent("models/qwen3-tiny").path
        let ids = { (s: Substring) in s.split(separator: ",").map { Int($0)! } }

        // tokenize: one line, the ids comma-separated.
        let text = "Hello world, hello tokenizer."
        let tok = try run(["tokenize", "--model", model, "--text", text, "--json"])
        let tokLines = try plain(["tokenize", "--model", model, "--text", text]).split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(tokLines.count, 2, "one line and its newline")
        XCTAssertEqual(ids(tokLines[0]), tok["ids"] as? [Int])
        XCTAssertEqual(tok["count"] as? Int, (tok["ids"] as? [Int])?.count)

        // generate: the text, then "ids: ...", "logprobs: ..." (4 decimals), "finish: REASON, N tokens, X tok/s (prefill included)".
        let prompt = "1,2,3,4,5"
        let g = try run(["generate", "--model", model, "--prompt-ids", prompt, "--max-tokens", "6", "--ignore-eos", "--json"])
        let out = try plain(["generate", "--model", model, "--prompt-ids", prompt, "--max-tokens", "6", "--ignore-eos"])
        let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(lines.last, "", "ends with a newline")
        let tail = Array(lines.dropLast().suffix(3))
        XCTAssertEqual(tail.count, 3, out)
        XCTAssertEqual(out, (g["text"] as? String ?? "") + "\n" + tail.joined(separator: "\n") + "\n", "the text comes first, alone")
        XCTAssertTrue(tail[0].hasPrefix("ids: "), out)
        XCTAssertEqual(ids(tail[0].dropFirst(5)), g["ids"] as? [Int])
        XCTAssertTrue(tail[1].hasPrefix("logprobs: "), out)
        let lps = tail[1].dropFirst(10).split(separator: ",").map { String($0) }
        let jsonLps = g["logprobs"] as? [Double] ?? []
        XCTAssertEqual(lps.count, 6)
        for (a, b) in zip(lps, jsonLps) {
            XCTAssertEqual(a.split(separator: ".").last?.count, 4, "4 decimals: \(a)")
            XCTAssertEqual(Double(a)!, b, accuracy: 5e-5)
        }
        let finish = try XCTUnwrap(
            tail[2].wholeMatch(of: /finish: (stop|length|cancelled), ([0-9]+) tokens, [0-9]+\.[0-9] tok\/s \(prefill included\)/),
            String(tail[2]))
        XCTAssertEqual(String(finish.1), g["finish_reason"] as? String)
        XCTAssertEqual(String(finish.1), "length")
        XCTAssertEqual(Int(finish.2), 6)

        // score: one line, one log-prob per continuation token, 6 decimals.
        let cont = (g["ids"] as? [Int] ?? []).map(String.init).joined(separator: ",")
        let sc = try run(["score", "--model", model, "--prompt-ids", prompt, "--continuation-ids", cont, "--json"])
        let scLines = try plain(["score", "--model", model, "--prompt-ids", prompt, "--continuation-ids", cont])
            .split(separator: "\n", omittingEmptySubsequences: false)
        XCTAssertEqual(scLines.count, 2)
        let values = scLines[0].split(separator: ",").map { String($0) }
        let jsonValues = sc["logprobs"] as? [Double] ?? []
        XCTAssertEqual(values.count, 6)
        for (a, b) in zip(values, jsonValues) {
            XCTAssertEqual(a.split(separator: ".").last?.count, 6, "6 decimals: \(a)")
            XCTAssertEqual(Double(a)!, b, accuracy: 5e-7)
        }
        XCTAssertEqual(sc["sum"] as? Double ?? 0, jsonValues.reduce(0, +), accuracy: 1e-4)
        // Greedy generation's raw log-probs are what score computes for the same tokens.
        for (a, b) in zip(g["raw_logprobs"] as? [Double] ?? [], jsonValues) { XCTAssertEqual(a, b, accuracy: 1e-4) }
    }
}
