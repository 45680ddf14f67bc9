import Foundation
import GRDB
import XCTest

@testable import GatewayServer

final class AuthTests: XCTestCase {
    func testClientKeys() async throws {
        let keys = "gw-key-alpha-SECRET, gw-key-beta-SECRET"
        let h = try await Harness.start(environment: ["TEST_CLIENT_KEYS": keys, "TEST_UPSTREAM_KEY": "sk-up-SECRET"])
        assertOpenAIError(try await h.chat(simpleChat), status: 401)
        assertOpenAIError(try await h.chat(simpleChat, headers: [("authorization", "Bearer wrong")]), status: 401)
        assertOpenAIError(try await h.chat(simpleChat, headers: [("authorization", "Basic Zm9vOmJhcg==")]), status: 401)
        assertOpenAIError(try await h.request(.GET, "/v1/models", headers: []), status: 401)
        let ok = try await h.chat(
            simpleChat, headers: [("authorization", "Bearer gw-key-beta-SECRET"), ("content-type", "application/json")])
        XCTAssertEqual(ok.status, 200)
        // The upstream gets the gateway's own key, never the client's.
        XCTAssertEqual(h.upstream.received.last?.headers["authorization"], "Bearer sk-up-SECRET")
        try await h.stop()
        try h.withDatabase { db in
            // Unauthenticated requests are not logged; the accepted one carries the key id only.
            XCTAssertEqual(try String.fetchAll(db, sql: "SELECT key_id FROM episodes"), [ClientAuth.keyID("gw-key-beta-SECRET")])
        }
        let raw = try Data(contentsOf: URL(fileURLWithPath: h.dbPath))
        for secret in ["gw-key-alpha-SECRET", "gw-key-beta-SECRET", "sk-up-SECRET"] {
            XCTAssertNil(raw.range(of: Data(secret.utf8)), "\(secret) leaked into the database")
        }
    }

    func testForwardClientAuthorization() async throws {
        let h = try await Harness.start(environment: ["TEST_UPSTREAM_KEY": "sk-gateway"]) { c in
            c.upstream.forwardClientAuthorization = true
        }
        _ = try await h.chat(simpleChat, headers: [("authorization", "Bearer sk-users-own"), ("content-type", "application/json")])
        XCTAssertEqual(h.upstream.received.last?.headers["authorization"], "Bearer sk-users-own")
        _ = try await h.chat(simpleChat)
        XCTAssertEqual(h.upstream.received.last?.headers["authorization"], "Bearer sk-gateway")
        try await h.stop()
    }

    func testConstantTimeCompareAcceptsOnlyExactKeys() throws {
        let auth = ClientAuth(keys: ["abc", "xyz"])
        XCTAssertEqual(try auth.authenticate(authorization: "Bearer abc"), ClientAuth.keyID("abc"))
        XCTAssertEqual(try auth.authenticate(authorization: "bearer   xyz"), ClientAuth.keyID("xyz"))
        for bad in ["Bearer ab", "Bearer abcd", "Bearer ABC", "abc", "", "Bearer "] {
            XCTAssertThrowsError(try auth.authenticate(authorization: bad), bad)
        }
        XCTAssertEqual(ClientAuth.keyID("abc").count, 16)
    }
}

final class FeedbackTests: XCTestCase {
    func testFeedbackAttachesToEpisodes() async throws {
        let h = try await Harness.start()
        let chat = try await h.chat(simpleChat)
        let id = try XCTUnwrap(chat.episodeID)
        let score = try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"\#(id)","score":0.75}"#)
        XCTAssertEqual(score.status, 200, score.body)
        XCTAssertEqual(score.json?["kind"] as? String, "score")
        let reference = try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"\#(id)","reference":"Paris","source":"qa-team"}"#)
        XCTAssertEqual(reference.status, 200)
        assertOpenAIError(try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"0190-none","score":1}"#), status: 404)
        assertOpenAIError(try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"\#(id)","score":1.5}"#), status: 400)
        assertOpenAIError(try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"\#(id)"}"#), status: 400)
        assertOpenAIError(try await h.request(.POST, "/v1/feedback", body: #"{"score":1}"#), status: 400)
        assertOpenAIError(
            try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"\#(id)","score":1,"reference":"x"}"#), status: 400)
        try await h.stop()
        try h.withDatabase { db in
            let rows = try Row.fetchAll(
                db, sql: "SELECT kind, value, source FROM feedback WHERE episode_id = ? ORDER BY id", arguments: [id])
            XCTAssertEqual(rows.map { $0["kind"] as String }, ["score", "reference"])
            XCTAssertEqual(rows.map { $0["value"] as String }, ["0.75", "Paris"])
            XCTAssertEqual(rows.map { $0["source"] as String }, ["api", "qa-team"])
        }
    }

    /// Feedback right after an async-durability request: the episode may still be queued.
    func testFeedbackForQueuedEpisode() async throws {
        let h = try await Harness.start(configure: { c in c.log.durability = .async })
        for _ in 0..<20 {
            let reply = try await h.chat(simpleChat)
            let id = try XCTUnwrap(reply.episodeID)
            let fb = try await h.request(.POST, "/v1/feedback", body: #"{"episode_id":"\#(id)","label":"good"}"#)
            XCTAssertEqual(fb.status, 200, fb.body)
        }
        try await h.stop()
    }
}
