import Foundation
import GRDB
import XCTest
@testable import GatewayServer

final class DurabilityTests: XCTestCase {
    /// A tiny log queue under concurrent load: requests wait for room (backpressure) and every
    /// accepted request ends up in the log once the gateway has shut down.
    func testBackpressureAndShutdownDrainLoseNothing() async throws {
        let h = try await Harness.start(configure: { c in
            c.log.queueCapacity = 2
            c.log.maxBatch = 2
            c.log.durability = "async"
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
