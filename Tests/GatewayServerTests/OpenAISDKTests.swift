import Foundation
import XCTest

@testable import GatewayServer

/// The official `openai` Python SDK against a live gateway: the strongest check that
/// unmodified clients work. The test command installs the SDK; without it the test is skipped
/// locally and fails in CI.
final class OpenAISDKTests: XCTestCase {
    static var repoRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().resolvingSymlinksInPath()
            .deletingLastPathComponent().deletingLastPathComponent()
    }

    /// The tests' Python: `$GATEWAY_TEST_PYTHON` (the test command sets it to the virtual
    /// environment scripts/setup-venv.sh makes), else that environment itself (`.venv/`), else
    /// the first python3 on PATH.
    static func python() -> String? {
        let env = ProcessInfo.processInfo.environment
        if let p = env["GATEWAY_TEST_PYTHON"], !p.isEmpty { return p }
        let venv = repoRoot.appendingPathComponent(".venv/bin/python3").path
        if FileManager.default.isExecutableFile(atPath: venv) { return venv }
        for dir in (env["PATH"] ?? "").split(separator: ":") {
            let p = "\(dir)/python3"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return FileManager.default.isExecutableFile(atPath: "/usr/bin/python3") ? "/usr/bin/python3" : nil
    }

    /// Runs a process to completion off the cooperative pool, optionally feeding it stdin.
    static func run(_ exe: String, _ args: [String], env: [String: String] = [:], stdin: String? = nil) async throws -> (
        Int32, String, String
    ) {
        try await withCheckedThrowingContinuation { cont in
            DispatchQueue.global().async {
                let p = Process()
                p.executableURL = URL(fileURLWithPath: exe)
                p.arguments = args
                p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
                let inp = Pipe()
                let out = Pipe()
                let err = Pipe()
                p.standardInput = inp
                p.standardOutput = out
                p.standardError = err
                do { try p.run() } catch {
                    cont.resume(throwing: error)
                    return
                }
                if let stdin { inp.fileHandleForWriting.write(Data(stdin.utf8)) }
                try? inp.fileHandleForWriting.close()
                let o = out.fileHandleForReading.readDataToEndOfFile()
                let e = err.fileHandleForReading.readDataToEndOfFile()
                p.waitUntilExit()
                cont.resume(returning: (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self)))
            }
        }
    }

    static func requireSDK() async throws -> String {
        guard let py = Self.python() else { throw XCTSkip("python3 not found") }
        let (status, _, _) = try await Self.run(py, ["-c", "import openai"], env: [:])
        if status != 0 {
            if ProcessInfo.processInfo.environment["CI"] != nil {
                XCTFail("the openai SDK is not installed in \(py); scripts/test.sh installs it (scripts/test-requirements.txt)")
            }
            throw XCTSkip("openai SDK not installed in \(py) (run scripts/setup-venv.sh)")
        }
        return py
    }

    func testOfficialSDKPassthrough() async throws {
        let py = try await Self.requireSDK()
        let h = try await Harness.start(environment: ["TEST_CLIENT_KEYS": "test-key"])
        let script = Self.repoRoot.appendingPathComponent("Tests/compat/openai_sdk_check.py").path
        let (status, out, err) = try await Self.run(py, [script], env: ["GATEWAY_BASE_URL": "\(h.base)/v1", "GATEWAY_KEY": "test-key"])
        try await h.stop()
        XCTAssertEqual(status, 0, "stdout: \(out)\nstderr: \(err)")
        let seen = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], out)
        XCTAssertEqual(seen["non_stream"] as? String, "echo: hello sdk")
        XCTAssertEqual(seen["stream"] as? String, "echo: stream please")
        XCTAssertEqual(seen["stream_usage"] as? Int, 14)
        XCTAssertEqual(seen["bad_request"] as? [AnyHashable], [400, "messages[0].role"])
        XCTAssertEqual(seen["auth"] as? Int, 401)
        XCTAssertEqual(seen["models"] as? [String], ["gpt-4o-mini", "gpt-4o", "prompt-r1/gpt-4o-mini", "prompt-r1/gpt-4o"])
    }
}
