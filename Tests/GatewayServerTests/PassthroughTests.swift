import AsyncHTTPClient
import FakeUpstream
import Foundation
import GRDB
import NIOCore
import OpenAIWire
import XCTest

@testable import GatewayServer

final class PassthroughTests: XCTestCase {
    func testNonStreamBodyRelayedExactlyAndLogged() async throws {
        let h = try await Harness.start(environment: ["TEST_UPSTREAM_KEY": "sk-upstream-secret-123"])
        // Unknown fields, odd spacing and number spellings must reach the upstream byte for byte.
        let body =
            #"{"model":"gpt-4o-mini", "messages":[{"role":"user","content":"hello there"}],"temperature":0.70,"x_custom":{"keep":[1,2e3]}}"#
        let reply = try await h.chat(body)
        XCTAssertEqual(reply.status, 200)
        XCTAssertEqual(reply.body, FakeUpstream.completionJSON(model: "gpt-4o-mini", text: "echo: hello there"))
        XCTAssertEqual(reply.headers.first(name: "content-type"), "application/json")
        let episodeID = try XCTUnwrap(reply.episodeID)
        XCTAssertNotNil(Double(reply.headers.first(name: "x-gateway-overhead-ms") ?? ""))

        let sent = try XCTUnwrap(h.upstream.received.last)
        XCTAssertEqual(String(decoding: sent.body, as: UTF8.self), body)
        XCTAssertEqual(sent.headers["authorization"], "Bearer sk-upstream-secret-123")

        try await h.stop()
        try h.withDatabase { db in
            let row = try XCTUnwrap(Row.fetchOne(db, sql: "SELECT * FROM episodes WHERE id = ?", arguments: [episodeID]))
            XCTAssertEqual(row["mode"] as String, "passthrough")
            XCTAssertEqual(row["route"] as String, "/v1/chat/completions")
            XCTAssertEqual(row["status"] as Int, 200)
            XCTAssertEqual(row["response_text"] as String, "echo: hello there")
            XCTAssertEqual(row["finish_reason"] as String, "stop")
            XCTAssertEqual(row["prompt_tokens"] as Int, 11)
            XCTAssertEqual(row["completion_tokens"] as Int, 3)
            XCTAssertEqual(row["request_json"] as String, body)
            XCTAssertEqual(row["upstream_model"] as String, "gpt-4o-mini")
            XCTAssertNil(row["policy_version"] as String?)
            let total = row["total_ms"] as Double
            let upstream = row["upstream_ms"] as Double
            let overhead = row["overhead_ms"] as Double
            XCTAssertGreaterThan(total, 0)
            XCTAssertEqual(total, upstream + overhead, accuracy: 0.01)
        }
        // The upstream key never reaches the database file.
        let raw = try Data(contentsOf: URL(fileURLWithPath: h.dbPath))
        XCTAssertNil(raw.range(of: Data("sk-upstream-secret-123".utf8)))
    }

    func testStreamRelayedEventByEventAndAssembled() async throws {
        // A realistic stream with a tool-call delta (with `index`), finish chunk, usage chunk.
        let parts = FakeUpstream.streamParts(model: "gpt-4o-mini", text: "one two three", includeUsage: true)
        var withTool = parts
        withTool.insert(
            #"data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]},"finish_reason":null}]}"#
                + "\n\n", at: 2)
        let script = withTool
        let h = try await Harness.start(script: { r in
            r.path == "/v1/chat/completions" ? .stream(parts: script, delay: .milliseconds(5)) : nil
        })
        let reply = try await h.chat(
            #"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual(reply.status, 200)
        XCTAssertEqual(reply.headers.first(name: "content-type"), "text/event-stream")
        XCTAssertEqual(reply.body, withTool.joined())
        let id = try XCTUnwrap(reply.episodeID)
        try await h.stop()
        try h.withDatabase { db in
            let row = try XCTUnwrap(Row.fetchOne(db, sql: "SELECT * FROM episodes WHERE id = ?", arguments: [id]))
            XCTAssertEqual(row["response_text"] as String, "one two three")
            XCTAssertEqual(row["stream"] as Int, 1)
            XCTAssertEqual(row["outcome"] as String, "ok")
            XCTAssertEqual(row["finish_reason"] as String, "stop")
            XCTAssertEqual(row["completion_tokens"] as Int, 3)
        }
    }

    /// The relay must not buffer: the client sees the first event while the upstream is still
    /// holding back the rest.
    func testStreamIsNotBuffered() async throws {
        let parts = FakeUpstream.streamParts(model: "m", text: "a b", includeUsage: false)
        let h = try await Harness.start(script: { r in
            r.path == "/v1/chat/completions" ? .stream(parts: parts, delay: .zero, hangAfter: 1) : nil
        })
        var req = HTTPClientRequest(url: h.base + "/v1/chat/completions")
        req.method = .POST
        req.body = .bytes(ByteBuffer(string: #"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#))
        let resp = try await h.client.execute(req, timeout: .seconds(10))
        var it = resp.body.makeAsyncIterator()
        let first = try await it.next()
        XCTAssertEqual(first.map { String(buffer: $0) }, parts[0])
        try await h.client.shutdown()
        await h.gateway.shutdown()
        await h.upstream.stop()
    }

    func testClientDisconnectCancelsUpstreamAndIsLogged() async throws {
        let parts = FakeUpstream.streamParts(model: "m", text: String(repeating: "word ", count: 200), includeUsage: false)
        let h = try await Harness.start(script: { r in
            r.path == "/v1/chat/completions" ? .stream(parts: parts, delay: .milliseconds(20)) : nil
        })
        var req = HTTPClientRequest(url: h.base + "/v1/chat/completions")
        req.method = .POST
        req.body = .bytes(ByteBuffer(string: #"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#))
        let task = Task {
            let resp = try await h.client.execute(req, timeout: .seconds(10))
            var it = resp.body.makeAsyncIterator()
            _ = try await it.next()
            _ = try await it.next()
            return resp.headers.first(name: "x-gateway-episode-id")
        }
        let id = try await task.value  // returning drops the body: the client side closes
        // The upstream stream must end early (cancelled), long before its 4 s natural length.
        let deadline = Date().addingTimeInterval(3)
        while h.upstream.abortedStreams == 0 && Date() < deadline { try await Task.sleep(for: .milliseconds(50)) }
        XCTAssertEqual(h.upstream.abortedStreams, 1, "the upstream stream was not cancelled")
        try await h.stop()
        try h.withDatabase { db in
            let row = try XCTUnwrap(Row.fetchOne(db, sql: "SELECT outcome FROM episodes WHERE id = ?", arguments: [id]))
            XCTAssertEqual(row["outcome"] as String, "client_disconnected")
        }
    }

    func testModelMappingChangesOnlyTheModelValue() async throws {
        let h = try await Harness.start(configure: { c in
            c.routes = [.init(model: "house-model", mode: .passthrough, upstreamModel: "gpt-4o"), .init(model: "*", mode: .passthrough)]
        })
        let body = #"{"messages":[{"role":"user","content":"hi"}], "model" : "house-model","z":null}"#
        let reply = try await h.chat(body)
        XCTAssertEqual(reply.status, 200)
        let sent = String(decoding: try XCTUnwrap(h.upstream.received.last).body, as: UTF8.self)
        XCTAssertEqual(sent, #"{"messages":[{"role":"user","content":"hi"}], "model" : "gpt-4o","z":null}"#)
        try await h.stop()
    }

    func testModelsListsUpstreamAndAliases() async throws {
        let h = try await Harness.start()
        let reply = try await h.request(.GET, "/v1/models")
        XCTAssertEqual(reply.status, 200)
        let ids = (reply.json?["data"] as? [[String: Any]])?.compactMap { $0["id"] as? String }
        XCTAssertEqual(ids, ["gpt-4o-mini", "gpt-4o", "prompt-r1/gpt-4o-mini", "prompt-r1/gpt-4o"])
        XCTAssertEqual(reply.json?["object"] as? String, "list")
        try await h.stop()
    }

    func testOtherV1PathsPassThroughUntouched() async throws {
        let h = try await Harness.start()
        let body = #"{"model":"emb","input":"hello"}"#
        let reply = try await h.request(.POST, "/v1/embeddings?x=1", body: body)
        XCTAssertEqual(reply.status, 200)
        XCTAssertTrue(reply.body.contains("\"embedding\":[0.25,-0.5]"))
        let sent = try XCTUnwrap(h.upstream.received.last)
        XCTAssertEqual(sent.path, "/v1/embeddings")
        XCTAssertEqual(String(decoding: sent.body, as: UTF8.self), body)
        let id = try XCTUnwrap(reply.episodeID)
        try await h.stop()
        try h.withDatabase { db in
            XCTAssertEqual(try String.fetchOne(db, sql: "SELECT route FROM episodes WHERE id = ?", arguments: [id]), "/v1/embeddings")
        }
    }

    func testHopByHopAndUnknownHeadersAreNotForwarded() async throws {
        let h = try await Harness.start()
        _ = try await h.chat(
            simpleChat,
            headers: [
                ("content-type", "application/json"), ("x-secret-internal", "1"),
                ("openai-organization", "org-1"), ("te", "trailers"), ("cookie", "a=b"),
            ])
        let sent = try XCTUnwrap(h.upstream.received.last)
        XCTAssertEqual(sent.headers["openai-organization"], "org-1")
        XCTAssertNil(sent.headers["x-secret-internal"])
        XCTAssertNil(sent.headers["cookie"])
        XCTAssertNil(sent.headers["te"])
        try await h.stop()
    }

    func testCollaborationWithoutPolicyIs503WithHowTo() async throws {
        let h = try await Harness.start()
        let reply = try await h.chat(#"{"model":"prompt-r1/gpt-4o-mini","messages":[{"role":"user","content":"q"}]}"#)
        let e = assertOpenAIError(reply, status: 503)
        XCTAssertEqual(e["code"] as? String, "policy_not_loaded")
        XCTAssertTrue((e["message"] as? String ?? "").contains("--policy"))
        // The header can force passthrough for the same name.
        let forced = try await h.chat(
            #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"q"}]}"#,
            headers: [("content-type", "application/json"), ("x-gateway-mode", "collaborate")])
        assertOpenAIError(forced, status: 503)
        XCTAssertTrue(h.upstream.received.isEmpty)
        try await h.stop()
    }
}
