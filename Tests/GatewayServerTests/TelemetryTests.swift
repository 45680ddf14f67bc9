import Foundation
import NIOPosix
import TrafficLog
import XCTest

@testable import GatewayServer

/// OpenTelemetry traces, received by an OTLP/HTTP receiver on loopback that decodes them with
/// the `opentelemetry-proto` package (Tests/console/otlp_receiver.py).
final class TelemetryTests: XCTestCase {
    /// The receiver as a child process; spans arrive as JSON lines in `file`.
    final class Receiver: @unchecked Sendable {
        let process = Process()
        let stdin = Pipe()
        let file: URL
        var port = 0

        init() throws {
            file = FileManager.default.temporaryDirectory.appendingPathComponent("otlp-\(UUID().uuidString).jsonl")
        }

        func start(python: String) throws {
            let stdout = Pipe()
            process.executableURL = URL(fileURLWithPath: python)
            process.arguments = [OpenAISDKTests.repoRoot.appendingPathComponent("Tests/console/otlp_receiver.py").path, file.path]
            process.standardInput = stdin
            process.standardOutput = stdout
            try process.run()
            var line = Data()
            while !line.contains(0x0A) {
                let d = stdout.fileHandleForReading.availableData
                if d.isEmpty { throw XCTSkip("the OTLP receiver did not start") }
                line.append(d)
            }
            let text = String(decoding: line, as: UTF8.self)
            port = Int(text.split(separator: " ")[1].trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }

        func stop() {
            try? stdin.fileHandleForWriting.close()
            process.waitUntilExit()
        }

        var spans: [[String: Any]] {
            guard let text = try? String(contentsOf: file, encoding: .utf8) else { return [] }
            return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }

        /// Waits until spans of `traceID` satisfy `done`.
        func wait(trace traceID: String, until done: ([[String: Any]]) -> Bool) async throws -> [[String: Any]] {
            for _ in 0..<100 {
                let s = spans.filter { $0["trace_id"] as? String == traceID }
                if done(s) { return s }
                try await Task.sleep(for: .milliseconds(100))
            }
            return spans.filter { $0["trace_id"] as? String == traceID }
        }
    }

    static func receiver() async throws -> Receiver {
        let py = try XCTUnwrap(OpenAISDKTests.python())
        let (status, _, _) = try await OpenAISDKTests.run(py, ["-c", "import opentelemetry.proto"])
        if status != 0 {
            if ProcessInfo.processInfo.environment["CI"] != nil {
                XCTFail("opentelemetry-proto is not installed (scripts/test-requirements.txt, scripts/install-deps.sh --tests)")
            }
            throw XCTSkip("opentelemetry-proto not installed")
        }
        let r = try Receiver()
        try r.start(python: py)
        return r
    }

    static func randomHex(_ bytes: Int) -> String {
        (0..<bytes).map { _ in String(format: "%02x", UInt8.random(in: 0...255)) }.joined()
    }

    func attrs(_ span: [String: Any]) -> [String: Any] { span["attributes"] as? [String: Any] ?? [:] }

    func testCollaborationSpanTreeAndTraceparent() async throws {
        let receiver = try await Self.receiver()
        defer { receiver.stop() }
        let models = try AdminTests.modelsDir()
        let h = try await AdminTests.start(models: models) { c in
            c.telemetry.otlpEndpoint = "http://127.0.0.1:\(receiver.port)"
            c.telemetry.exportIntervalMs = 50
        }
        let cases = try CollaborationTests.cases()
        let c = try XCTUnwrap(cases.first { $0.upstream_prompts.count >= 1 })
        let traceID = Self.randomHex(16)
        let clientSpan = Self.randomHex(8)
        let body = String(
            decoding: try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
            ]), as: UTF8.self)
        let reply = try await h.chat(
            body, headers: [("content-type", "application/json"), ("traceparent", "00-\(traceID)-\(clientSpan)-01")])
        XCTAssertEqual(reply.status, 200, reply.body)
        let episodeID = try XCTUnwrap(reply.episodeID)
        let policyTurns = c.upstream_prompts.count + 1

        let spans = try await receiver.wait(trace: traceID) { s in
            s.contains { $0["parent_span_id"] as? String == clientSpan } && s.count >= 1 + policyTurns + c.upstream_prompts.count
        }
        let root = try XCTUnwrap(spans.first { $0["parent_span_id"] as? String == clientSpan }, "\(spans)")
        XCTAssertEqual(root["kind"] as? Int, 2, "SPAN_KIND_SERVER")
        XCTAssertEqual(root["name"] as? String, "chat prompt-r1/gpt-4o-mini")
        XCTAssertEqual(root["service"] as? String, "prompt-r1-gateway")
        XCTAssertEqual(root["content_type"] as? String, "application/x-protobuf")
        let ra = attrs(root)
        XCTAssertEqual(ra["gateway.episode_id"] as? String, episodeID)
        XCTAssertEqual(ra["gen_ai.operation.name"] as? String, "chat")
        XCTAssertEqual(ra["gen_ai.request.model"] as? String, "prompt-r1/gpt-4o-mini")
        XCTAssertEqual(ra["http.response.status_code"] as? Int, 200)
        XCTAssertEqual(ra["gateway.mode"] as? String, "collaborate")
        XCTAssertEqual(ra["gateway.policy_version"] as? String, h.gateway.policies.current?.version)
        XCTAssertNil(ra["gen_ai.input.messages"], "no message contents unless telemetry.include_content")
        let rootID = try XCTUnwrap(root["span_id"] as? String)
        let children = spans.filter { $0["parent_span_id"] as? String == rootID }
        let policy = children.filter { ($0["name"] as? String)?.hasPrefix("policy turn") == true }
            .sorted { ($0["start"] as? Int ?? 0) < ($1["start"] as? Int ?? 0) }
        let upstream = children.filter { $0["kind"] as? Int == 3 }  // SPAN_KIND_CLIENT
        XCTAssertEqual(policy.count, policyTurns, "\(children.map { $0["name"] ?? "" })")
        XCTAssertEqual(upstream.count, c.upstream_prompts.count)
        // Turn spans: in order, inside the request, with their token counts from the log.
        let episode = try XCTUnwrap(try (h.gateway.state.database as! SQLiteLogBackend).database.episode(id: episodeID))
        let rows = episode.turns.filter { $0.kind == "policy" }
        for (i, s) in policy.enumerated() {
            let a = attrs(s)
            XCTAssertEqual(a["gateway.policy.turn"] as? Int, i + 1)
            XCTAssertEqual(a["gateway.policy.prefill_tokens"] as? Int, rows[i].inputIDs?.count)
            XCTAssertEqual(a["gateway.policy.decode_tokens"] as? Int, rows[i].outputIDs?.count)
            XCTAssertGreaterThanOrEqual(s["start"] as? Int ?? 0, root["start"] as? Int ?? .max)
            XCTAssertLessThanOrEqual(s["end"] as? Int ?? .max, root["end"] as? Int ?? 0)
            XCTAssertGreaterThan(s["end"] as? Int ?? 0, s["start"] as? Int ?? .max)
            // The log's per-turn latency is the span's duration.
            let ms = Double((s["end"] as? Int ?? 0) - (s["start"] as? Int ?? 0)) / 1e6
            XCTAssertEqual(rows[i].latencyMs ?? -1, ms, accuracy: 0.01)
        }
        // Upstream spans: GenAI attributes, and their ids are what the upstream got in traceparent.
        let received = h.upstream.received.filter { $0.path == "/v1/chat/completions" }
        XCTAssertEqual(received.count, upstream.count)
        let sent = received.compactMap { $0.headers["traceparent"] }
        XCTAssertEqual(sent.count, upstream.count, "every upstream call carries traceparent")
        for tp in sent {
            let parts = tp.split(separator: "-").map(String.init)
            XCTAssertEqual(parts.count, 4)
            XCTAssertEqual(parts[1], traceID, "the client's trace continues upstream")
            XCTAssertTrue(upstream.contains { $0["span_id"] as? String == parts[2] }, "traceparent \(tp) names an upstream span")
        }
        for s in upstream {
            let a = attrs(s)
            XCTAssertEqual(a["gen_ai.operation.name"] as? String, "chat")
            XCTAssertEqual(a["gen_ai.request.model"] as? String, "gpt-4o-mini")
            XCTAssertEqual(a["gen_ai.usage.input_tokens"] as? Int, 11)
            XCTAssertNil(a["gen_ai.input.messages"])
        }
        try await h.stop()
    }

    func testPassthroughContentOnlyWhenAskedAndNewTraceWithoutClientContext() async throws {
        let receiver = try await Self.receiver()
        defer { receiver.stop() }
        let h = try await Harness.start(configure: { c in
            c.telemetry.otlpEndpoint = "http://127.0.0.1:\(receiver.port)/v1/traces"
            c.telemetry.exportIntervalMs = 50
            c.telemetry.includeContent = true
        })
        let reply = try await h.chat(simpleChat)
        XCTAssertEqual(reply.status, 200)
        let id = try XCTUnwrap(reply.episodeID)
        let tp = try XCTUnwrap(h.upstream.received.last?.headers["traceparent"])
        let traceID = String(tp.split(separator: "-")[1])
        let spans = try await receiver.wait(trace: traceID) { $0.count >= 2 }
        let root = try XCTUnwrap(spans.first { ($0["parent_span_id"] as? String ?? "").isEmpty }, "\(spans)")
        XCTAssertEqual(attrs(root)["gateway.episode_id"] as? String, id)
        XCTAssertTrue((attrs(root)["gen_ai.input.messages"] as? String ?? "").contains("hello there"))
        XCTAssertEqual(attrs(root)["gen_ai.output.messages"] as? String, #"[{"content":"echo: hello there","role":"assistant"}]"#)
        let up = try XCTUnwrap(spans.first { $0["kind"] as? Int == 3 })
        XCTAssertEqual(up["parent_span_id"] as? String, root["span_id"] as? String)
        XCTAssertEqual(up["span_id"] as? String, String(tp.split(separator: "-")[2]))
        XCTAssertEqual(attrs(up)["gen_ai.request.model"] as? String, "gpt-4o-mini")
        try await h.stop()
    }

    /// A collector that is down costs spans, never requests.
    func testExportFailureNeverFailsOrBlocksRequests() async throws {
        // A port that nothing listens on.
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0).get()
        let deadPort = channel.localAddress?.port ?? 9
        try await channel.close()
        let h = try await Harness.start(configure: { c in
            c.telemetry.otlpEndpoint = "http://127.0.0.1:\(deadPort)"
            c.telemetry.exportIntervalMs = 10
        })
        let start = ContinuousClock.now
        for _ in 0..<30 {
            let r = try await h.chat(simpleChat)
            XCTAssertEqual(r.status, 200)
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(10))
        try await h.stop()
    }

    func testWithoutTelemetryTheClientsTraceparentIsForwarded() async throws {
        let h = try await Harness.start()
        let tp = "00-\(Self.randomHex(16))-\(Self.randomHex(8))-01"
        let r = try await h.chat(
            simpleChat, headers: [("content-type", "application/json"), ("traceparent", tp), ("tracestate", "vendor=1")])
        XCTAssertEqual(r.status, 200)
        XCTAssertEqual(h.upstream.received.last?.headers["traceparent"], tp)
        XCTAssertEqual(h.upstream.received.last?.headers["tracestate"], "vendor=1")
        try await h.stop()
    }
}
