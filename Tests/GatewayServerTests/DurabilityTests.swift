import AsyncHTTPClient
import FakeUpstream
import Foundation
import GRDB
import NIOCore
import XCTest

@testable import GatewayServer

final class DurabilityTests: XCTestCase {
    /// A tiny log queue under concurrent load: requests wait for room (backpressure) and every
    /// accepted request ends up in the log once the gateway has shut down.
    func testBackpressureAndShutdownDrainLoseNothing() async throws {
        let h = try await Harness.start(configure: { c in
            c.log.queueCapacity = 2
            c.log.maxBatch = 2
            c.log.durability = .async
        })
        let n = 200
        let ids = try await withThrowingTaskGroup(of: String?.self) { group in
            for i in 0..<n {
                group.addTask {
                    let stream = i % 3 == 0
                    let body = #"{"model":"gpt-4o-mini","stream":\#(stream),"messages":[{"role":"user","content":"n\#(i)"}]}"#
                    let r = try await h.chat(body)
                    XCTAssertEqual(r.status, 200)
                    return r.episodeID
                }
            }
            var out: [String] = []
            for try await id in group { if let id { out.append(id) } }
            return out
        }
        XCTAssertEqual(ids.count, n)
        try await h.stop()
        try h.withDatabase { db in
            let logged = Set(try String.fetchAll(db, sql: "SELECT id FROM episodes"))
            XCTAssertEqual(logged, Set(ids))
        }
    }

    /// SIGTERM with a stream that never ends: in-flight work gets `shutdown_timeout_seconds`,
    /// then it is cancelled, logged, and the log drains; short requests in flight still finish.
    func testShutdownDeadlineCutsHungStreamsAndKeepsTheirRows() async throws {
        let h = try await Harness.start(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                if r.json?["stream"] as? Bool == true {
                    return .stream(parts: FakeUpstream.streamParts(model: "m", text: "never ending", includeUsage: false), hangAfter: 1)
                }
                return .delayed(.milliseconds(300), FakeUpstream.defaultReply(r))
            }, configure: { c in c.server.shutdownTimeoutSeconds = 1 })
        var req = HTTPClientRequest(url: h.base + "/v1/chat/completions")
        req.method = .POST
        req.body = .bytes(ByteBuffer(string: #"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#))
        let resp = try await h.client.execute(req, timeout: .seconds(30))
        let hungID = try XCTUnwrap(resp.headers.first(name: "x-gateway-episode-id"))
        var it = resp.body.makeAsyncIterator()
        _ = try await it.next()  // the stream is under way, and then hangs
        let slow = Task { try await h.chat(simpleChat) }
        try await Task.sleep(for: .milliseconds(50))
        let started = Date()
        try await h.stop()
        let took = Date().timeIntervalSince(started)
        XCTAssertGreaterThanOrEqual(took, 0.9, "the hung stream had its full second")
        XCTAssertLessThan(took, 10, "and no more than that (plus the drain)")
        let slowReply = try await slow.value
        XCTAssertEqual(slowReply.status, 200, "a request in flight at SIGTERM finishes")
        try h.withDatabase { db in
            let rows = try Row.fetchAll(db, sql: "SELECT id, outcome FROM episodes")
            XCTAssertEqual(rows.count, 2)
            let hung = rows.first { ($0["id"] as String) == hungID }
            XCTAssertNotNil(hung, "the cut stream is logged")
            XCTAssertNotEqual(hung?["outcome"] as String?, "ok")
        }
    }

    /// With commit_before_response, a completed response means its row is already committed:
    /// another connection sees it immediately, before any shutdown.
    func testCommitBeforeResponse() async throws {
        let h = try await Harness.start()
        for stream in [false, true] {
            let r = try await h.chat(#"{"model":"m","stream":\#(stream),"messages":[{"role":"user","content":"x"}]}"#)
            let id = try XCTUnwrap(r.episodeID)
            try h.withDatabase { db in
                XCTAssertEqual(try Int.fetchOne(db, sql: "SELECT count(*) FROM episodes WHERE id = ?", arguments: [id]), 1)
            }
        }
        try await h.stop()
    }

    func testDatabaseFileIsPrivate() async throws {
        let h = try await Harness.start()
        _ = try await h.chat(simpleChat)
        let attrs = try FileManager.default.attributesOfItem(atPath: h.dbPath)
        XCTAssertEqual((attrs[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        try await h.stop()
    }
}
