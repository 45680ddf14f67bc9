import Foundation
import Logging
import TrafficLog
import TrafficLogPostgres
import XCTest

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.withLock { n += 1 } }
    var value: Int { lock.withLock { n } }
}

/// The database server goes away under load, for longer than the writer's queue can hold.
final class OutageTests: XCTestCase {
    /// What happens: commits fail and are retried with backoff; the queue fills; then every
    /// further `append` waits (backpressure: in the gateway, the request waits, and new requests
    /// queue behind the concurrency limit and finally get 429). Nothing is dropped. When the
    /// server is back, the pool reconnects and every accepted episode is committed.
    func testOutageLongerThanTheQueueAppliesBackpressureAndLosesNothing() async throws {
        let url = try await TestPostgres.freshDatabase()
        let backend = try await PostgresLogBackend.open(url: url, logger: TestPostgres.quietLogger)
        let capacity = 8
        let maxBatch = 4
        let writer = LogWriter(
            backend: backend, capacity: capacity, maxBatch: maxBatch, logger: TestPostgres.quietLogger,
            retryBaseDelay: 0.01, maxRetryDelay: 0.25)
        let run = Task { await writer.run() }
        var before: [String] = []
        for _ in 0..<40 {
            let e = sampleEpisode(turns: 1)
            try await writer.appendAndWait(e)
            before.append(e.id)
        }
        try TestPostgres.ctl("stop")
        var serverUp = false
        defer { if !serverUp { try? TestPostgres.ctl("start") } }

        let accepted = Counter()
        let during = (0..<200).map { _ in sampleEpisode(turns: 2) }
        let appenders = Task {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for e in during {
                    group.addTask {
                        try await writer.append(e)
                        accepted.add()
                    }
                }
                try await group.waitForAll()
            }
        }
        try await Task.sleep(for: .seconds(2))
        // Backpressure: only what the queue holds (and one batch in flight) was accepted.
        XCTAssertLessThanOrEqual(accepted.value, capacity + maxBatch, "appends must wait while the database is down")
        // The batch in flight waits for a connection (the pool keeps trying) or fails and is
        // retried; either way the queue is full and holds on to everything.
        XCTAssertGreaterThanOrEqual(writer.stats.queued, capacity, "the queue is full, the rest wait")
        do {
            try await backend.ping(timeout: .seconds(2))
            XCTFail("the server is down: ping must fail (/ready reports it)")
        } catch {}

        try TestPostgres.ctl("start")
        serverUp = true
        try await within(60, "the appenders get through after the outage") { try await appenders.value }
        try await within(60, "the queue drains") { try await writer.flush() }
        XCTAssertEqual(accepted.value, during.count)
        let stats = writer.stats
        XCTAssertEqual(stats.abandoned, 0)
        XCTAssertEqual(stats.rejected, 0)
        await writer.shutdown()
        await run.value
        let stored = Set(try await backend.episodes(EpisodeQuery(includeTurns: false)).map(\.id))
        XCTAssertEqual(stored, Set(before + during.map(\.id)), "every accepted episode is in the log")
        let turns = try await backend.episodes(EpisodeQuery()).reduce(0) { $0 + $1.turns.count }
        XCTAssertEqual(turns, 40 + 200 * 2)
        try await backend.close()
    }

    /// A gateway may start while the database is down: the backend connects (and migrates) on
    /// first use, once the server is there.
    func testBackendCreatedWhileServerIsDownWorksOnceItIsUp() async throws {
        let url = try await TestPostgres.freshDatabase()
        try TestPostgres.ctl("stop")
        var serverUp = false
        defer { if !serverUp { try? TestPostgres.ctl("start") } }
        let backend = try PostgresLogBackend(url: url, logger: TestPostgres.quietLogger)
        do {
            try await backend.ping(timeout: .seconds(2))
            XCTFail("down")
        } catch {}
        try TestPostgres.ctl("start")
        serverUp = true
        try await within(30, "ping after the restart") {
            while true {
                do {
                    try await backend.ping(timeout: .seconds(2))
                    return
                } catch { try await Task.sleep(for: .milliseconds(200)) }
            }
        }
        let names = try await backend.appliedMigrations()
        XCTAssertEqual(names, ["v1", "v2-policy-events", "v3_trainable", "v4_policy_logprobs", "v5_console"])
        try await backend.close()
    }
}
