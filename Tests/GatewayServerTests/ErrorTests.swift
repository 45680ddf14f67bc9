import FakeUpstream
import Foundation
import GRDB
import XCTest

@testable import GatewayServer

final class ErrorTests: XCTestCase {
    func testClientErrors() async throws {
        let h = try await Harness.start(configure: { c in c.limits.maxBodyBytes = 4096 })
        assertOpenAIError(try await h.chat("{not json"), status: 400)
        assertOpenAIError(try await h.chat(#"{"model":"m","messages":[{"role":"user","content":"x"}]} trailing"#), status: 400)
        assertOpenAIError(
            try await h.request(
                .POST, "/v1/chat/completions",
                bodyBytes: Array(#"{"model":"m","messages":[{"role":"user","content":""#.utf8) + [0xFF, 0x22, 0x7D, 0x5D, 0x7D]),
            status: 400)
        let missing = assertOpenAIError(try await h.chat(#"{"messages":[{"role":"user","content":"x"}]}"#), status: 400)
        XCTAssertEqual(missing["param"] as? String, "model")
        let role = assertOpenAIError(try await h.chat(#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#), status: 400)
        XCTAssertEqual(role["param"] as? String, "messages[0].role")
        let temp = assertOpenAIError(
            try await h.chat(#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"warm"}"#), status: 400)
        XCTAssertEqual(temp["param"] as? String, "temperature")
        let big = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"" + String(repeating: "a", count: 10_000) + "\"}]}"
        assertOpenAIError(try await h.chat(big), status: 413)
        assertOpenAIError(try await h.request(.GET, "/nope"), status: 404)
        assertOpenAIError(
            try await h.chat(simpleChat, headers: [("content-type", "application/json"), ("x-gateway-mode", "turbo")]), status: 400)
        XCTAssertTrue(h.upstream.received.isEmpty, "nothing invalid may reach the upstream")
        try await h.stop()
        // Rejected requests are logged too, with their status and error.
        try h.withDatabase { db in
            let statuses = try Int.fetchAll(db, sql: "SELECT status FROM episodes ORDER BY id")
            XCTAssertEqual(statuses, [400, 400, 400, 400, 400, 400, 413, 400])
            XCTAssertEqual(try Int.fetchOne(db, sql: "SELECT count(*) FROM episodes WHERE error IS NULL"), 0)
        }
    }

    func testUpstreamErrorsRelayedWithTheirStatus() async throws {
        let h = try await Harness.start(script: { r in
            let model = r.json?["model"] as? String
            switch model {
            case "rate":
                return .json(
                    status: 429,
                    body: #"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
                    headers: [("retry-after", "7")])
            case "boom":
                return .json(status: 500, body: #"{"error":{"message":"upstream broke","type":"server_error","param":null,"code":null}}"#)
            case "bad":
                return .json(
                    status: 400, body: #"{"error":{"message":"bad model","type":"invalid_request_error","param":"model","code":null}}"#)
            default: return nil
            }
        })
        let rate = try await h.chat(#"{"model":"rate","messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual((assertOpenAIError(rate, status: 429))["message"] as? String, "slow down")
        XCTAssertEqual(rate.headers.first(name: "retry-after"), "7")
        let boom = try await h.chat(#"{"model":"boom","messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual(assertOpenAIError(boom, status: 500)["message"] as? String, "upstream broke")
        let bad = try await h.chat(#"{"model":"bad","messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual(assertOpenAIError(bad, status: 400)["param"] as? String, "model")
        try await h.stop()
        try h.withDatabase { db in
            XCTAssertEqual(try Int.fetchAll(db, sql: "SELECT status FROM episodes ORDER BY id"), [429, 500, 400])
            XCTAssertEqual(
                try String.fetchAll(db, sql: "SELECT outcome FROM episodes"), ["upstream_error", "upstream_error", "upstream_error"])
        }
    }

    func testUpstreamUnreachableIs502() async throws {
        // A port that was just free: nothing listens there.
        let h = try await Harness.start(configure: { c in
            c.upstream.baseURL = "http://127.0.0.1:1/v1"
            c.upstream.connectTimeoutMs = 2000
        })
        let e = assertOpenAIError(try await h.chat(simpleChat), status: 502)
        XCTAssertEqual(e["code"] as? String, "upstream_unreachable")
        try await h.stop()
        try h.withDatabase { db in
            XCTAssertEqual(try Int.fetchOne(db, sql: "SELECT status FROM episodes"), 502)
        }
    }

    func testUpstreamTimeoutIs504() async throws {
        let h = try await Harness.start(script: { _ in .delayed(.seconds(5), .json(status: 200, body: "{}")) }) { c in
            c.upstream.firstByteTimeoutMs = 300
        }
        let started = Date()
        let e = assertOpenAIError(try await h.chat(simpleChat), status: 504)
        XCTAssertEqual(e["code"] as? String, "upstream_timeout")
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
        try await h.stop()
    }

    func testTruncatedUpstreamStreamEndsWithInBandError() async throws {
        let parts = Array(FakeUpstream.streamParts(model: "m", text: "a b c", includeUsage: false).prefix(2)) + ["data: {\"id\":\"cut"]
        let h = try await Harness.start(script: { _ in .stream(parts: parts) })
        let reply = try await h.chat(#"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual(reply.status, 200)
        XCTAssertTrue(reply.body.hasPrefix(parts[0] + parts[1]))
        XCTAssertTrue(reply.body.contains("\"error\""), reply.body)
        XCTAssertTrue(reply.body.hasSuffix("data: [DONE]\n\n"))
        let id = try XCTUnwrap(reply.episodeID)
        try await h.stop()
        try h.withDatabase { db in
            let row = try XCTUnwrap(
                Row.fetchOne(db, sql: "SELECT outcome, status, response_text FROM episodes WHERE id = ?", arguments: [id]))
            XCTAssertEqual(row["outcome"] as String, "upstream_truncated")
            XCTAssertEqual(row["status"] as Int, 502)
            XCTAssertEqual(row["response_text"] as String, "a ")
        }
    }
}
