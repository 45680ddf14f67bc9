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
        let out = Pipe(), err = Pipe()
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
            let ref = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("reference/\(name).json"))) as? [String: Any])
            let c = try XCTUnwrap((ref["cases"] as? [[String: Any]])?[1])
            let input = (c["input_ids"] as? [Int] ?? []).map(String.init).joined(separator: ",")
            let greedy = c["greedy_ids"] as? [Int] ?? []
            let model = Self.fixtures.appendingPathComponent("models/\(name)").path
            let g = try run(["generate", "--model", model, "--prompt-ids", input, "--max-tokens", "\(greedy.count)",
                             "--temperature", "0", "--ignore-eos", "--json"])
            XCTAssertEqual(g["ids"] as? [Int], greedy, name)
            let raw = (g["raw_logprobs"] as? [Double]) ?? []
            for (a, b) in zip(raw, c["greedy_logprobs"] as? [Double] ?? []) { XCTAssertEqual(a, b, accuracy: 1e-4, name) }
            let s = try run(["score", "--model", model, "--prompt-ids", input,
                             "--continuation-ids", greedy.map(String.init).joined(separator: ","), "--json"])
            for (a, b) in zip(s["logprobs"] as? [Double] ?? [], c["greedy_logprobs"] as? [Double] ?? []) { XCTAssertEqual(a, b, accuracy: 1e-4, name) }
        }
    }

    func testTokenizeMatchesHF() throws {
        let ref = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: Self.fixtures.appendingPathComponent("reference/tokenizer-qwen.json"))) as? [String: Any])
        let c = try XCTUnwrap((ref["cases"] as? [[String: Any]])?.first { ($0["text"] as? String ?? "").count > 10 })
        let t = try run(["tokenize", "--model", Self.fixtures.appendingPathComponent("models/qwen3-tiny").path, "--text", c["text"] as! String, "--json"])
        XCTAssertEqual(t["ids"] as? [Int], c["ids"] as? [Int])
    }
}
