import Foundation
import GRDB
import Logging
import XCTest

@testable import TrafficLog

final class LogWriterTests: XCTestCase {
    func testBatchesUnderLoadAndKeepsEveryEpisode() async throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("log.sqlite"))
        let writer = LogWriter(database: db, logger: LogCapture().logger())
        let runner = Task { await writer.run() }
        let episodes = (0..<5_000).map { _ in makeEpisode(turns: 2) }
        try await within(seconds: 60, "5,000 appends + flush") {
            for e in episodes { try await writer.append(e) }
            try await writer.flush()
        }
        let stats = writer.stats
        XCTAssertEqual(try db.episodeCount(), 5_000)
        XCTAssertEqual(try rawCount(tmp.path("log.sqlite"), "SELECT COUNT(*) FROM turns"), 10_000)
        XCTAssertEqual(stats.rowsWritten, 5_000)
        XCTAssertEqual(stats.turnsWritten, 10_000)
        XCTAssertLessThan(stats.batches, 5_000, "writes must be batched")
        XCTAssertGreaterThanOrEqual(stats.batches, 5_000 / 256)
        XCTAssertEqual(stats.failures, 0)
        XCTAssertEqual(stats.queued, 0)
        XCTAssertFalse(writer.isPending(episodeID: episodes[0].id))
        XCTAssertEqual(try db.episode(id: episodes[4_321].id), episodes[4_321])
        await writer.shutdown()
        await runner.value
    }

    func testAppendAndWaitIsGroupCommitted() async throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("log.sqlite"))
        let writer = LogWriter(database: db, logger: LogCapture().logger())
        let runner = Task { await writer.run() }
        let episodes = (0..<200).map { _ in makeEpisode(turns: 1) }
        try await within(seconds: 30, "200 concurrent appendAndWait") {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for e in episodes {
                    group.addTask {
                        try await writer.appendAndWait(e)
                        // Committed means visible to a reader right away.
                        XCTAssertTrue(try db.episodeExists(id: e.id))
                        XCTAssertFalse(writer.isPending(episodeID: e.id))
                    }
                }
                try await group.waitForAll()
            }
        }
        XCTAssertEqual(try db.episodeCount(), 200)
        XCTAssertLessThan(writer.stats.batches, 200, "waiters share transactions")
        await writer.shutdown()
        await runner.value
    }

    /// With a linger, light traffic shares transactions: after a small batch the writer waits
    /// before the next commit. A caller that waits for a commit (flush, appendAndWait) or a
    /// shutdown ends the wait at once.
    func testLingerGathersLightTrafficAndWaitersCutItShort() async throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("log.sqlite"))
        let writer = LogWriter(database: db, logger: LogCapture().logger(), linger: .seconds(2))
        let runner = Task { await writer.run() }
        let clock = ContinuousClock()
        // The first episode finds the writer idle and is committed alone; the writer then lingers.
        try await writer.append(makeEpisode(turns: 0))
        try await within(seconds: 5, "first commit") {
            while writer.stats.rowsWritten < 1 { try await Task.sleep(for: .milliseconds(5)) }
        }
        for _ in 0..<4 {
            try await writer.append(makeEpisode(turns: 1))
            try await Task.sleep(for: .milliseconds(10))
        }
        try await Task.sleep(for: .milliseconds(150))
        XCTAssertEqual(writer.stats.rowsWritten, 1, "the writer lingers instead of committing each episode")
        XCTAssertEqual(writer.stats.batches, 1)
        var t0 = clock.now
        try await writer.flush()
        XCTAssertLessThan(clock.now - t0, .milliseconds(1000), "flush ends the linger")
        XCTAssertEqual(writer.stats.rowsWritten, 5)
        XCTAssertEqual(writer.stats.batches, 2, "the four lingering episodes shared one transaction")
        // The writer lingers again after that batch; a commit waiter does not wait it out.
        t0 = clock.now
        let e = makeEpisode(turns: 0)
        try await writer.appendAndWait(e)
        XCTAssertLessThan(clock.now - t0, .milliseconds(1000), "appendAndWait ends the linger")
        XCTAssertTrue(try db.episodeExists(id: e.id))
        // Nor does shutdown.
        try await writer.append(makeEpisode(turns: 0))
        t0 = clock.now
        await writer.shutdown()
        await runner.value
        XCTAssertLessThan(clock.now - t0, .milliseconds(1000), "shutdown ends the linger")
        XCTAssertEqual(try db.episodeCount(), 7)
    }

    func testBackpressureSuspendsAppendsWhileDatabaseIsLockedAndLosesNothing() async throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        let db = try TrafficDatabase(path: path, busyTimeout: 5)
        let writer = LogWriter(database: db, capacity: 4, maxBatch: 2, logger: LogCapture().logger())
        let runner = Task { await writer.run() }
        let holder = WriteLockHolder(path: path, seconds: 0.3)
        try await holder.waitAcquired()

        let completed = Locked(0)
        let episodes = (0..<40).map { _ in makeEpisode(turns: 2) }
        let appender = Task {
            for e in episodes {
                try await writer.append(e)
                completed.withLock { $0 += 1 }
            }
        }
        try await Task.sleep(nanoseconds: 150_000_000)
        // Lock still held: the writer is stuck on its first batch (<= maxBatch),
        // the queue is full (capacity), and the appender is suspended.
        XCTAssertFalse(holder.released)
        let midway = completed.withLock { $0 }
        XCTAssertLessThanOrEqual(midway, 4 + 2, "appends must suspend when the queue is full")
        XCTAssertGreaterThanOrEqual(midway, 4)
        XCTAssertEqual(writer.stats.queued, 4 + 1, "full queue + the suspended appender")
        XCTAssertTrue(writer.isPending(episodeID: episodes[0].id))

        try await within(seconds: 20, "appends complete after the lock is released") {
            try await appender.value
            try await writer.flush()
        }
        try await holder.waitReleased()
        XCTAssertEqual(completed.withLock { $0 }, 40)
        XCTAssertEqual(try db.episodeCount(), 40)
        for e in episodes { XCTAssertTrue(try db.episodeExists(id: e.id)) }
        XCTAssertEqual(writer.stats.failures, 0, "busy timeout covered the 300 ms lock")
        await writer.shutdown()
        await runner.value
    }

    func testTransientFailuresAreRetriedLoggedAndNeverDropped() async throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        // Tiny busy timeout: the 400 ms lock makes several attempts fail with SQLITE_BUSY.
        let db = try TrafficDatabase(path: path, busyTimeout: 0.01)
        let capture = LogCapture()
        let writer = LogWriter(
            database: db, capacity: 8, maxBatch: 4, logger: capture.logger(),
            retryBaseDelay: 0.01, maxRetryDelay: 0.05)
        let runner = Task { await writer.run() }
        let holder = WriteLockHolder(path: path, seconds: 0.4)
        try await holder.waitAcquired()

        let secret = "SECRET-REQUEST-BODY-\(UUID().uuidString)"
        let episodes = (0..<20).map { _ in makeEpisode(turns: 2, requestJSON: #"{"prompt":"\#(secret)"}"#) }
        try await within(seconds: 20, "appendAndWait through a locked database") {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for e in episodes { group.addTask { try await writer.appendAndWait(e) } }
                try await group.waitForAll()
            }
        }
        try await holder.waitReleased()
        XCTAssertEqual(try db.episodeCount(), 20)
        let stats = writer.stats
        XCTAssertGreaterThan(stats.failures, 0)
        XCTAssertEqual(stats.rowsWritten, 20)
        XCTAssertEqual(stats.abandoned, 0)
        XCTAssertEqual(stats.rejected, 0)
        XCTAssertNotNil(stats.lastError)
        let logs = capture.all
        XCTAssertTrue(logs.contains { $0.level == .error && $0.message.contains("retrying") })
        XCTAssertFalse(
            logs.contains { $0.message.contains(secret) || $0.metadata.contains(secret) },
            "request bodies must never be logged")
        await writer.shutdown()
        await runner.value
    }

    func testShutdownDrainsEverythingQueued() async throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        let db = try TrafficDatabase(path: path)
        let writer = LogWriter(database: db, capacity: 64, maxBatch: 16, logger: LogCapture().logger())
        let runner = Task { await writer.run() }
        let n = 1_000
        let producer = Task {
            for _ in 0..<n { try await writer.append(makeEpisode(turns: 1)) }
        }
        try await producer.value
        await writer.shutdown()
        try await within(seconds: 10, "run() returns after shutdown") { await runner.value }
        XCTAssertEqual(try db.episodeCount(), n)
        XCTAssertEqual(writer.stats.queued, 0)
        do {
            try await writer.append(makeEpisode())
            XCTFail("append after shutdown must throw")
        } catch {
            XCTAssertEqual(error as? LogWriterError, .closed)
        }
        do {
            try await writer.appendAndWait(makeEpisode())
            XCTFail("appendAndWait after shutdown must throw")
        } catch {
            XCTAssertEqual(error as? LogWriterError, .closed)
        }
        try await writer.flush()  // nothing pending: returns
        await writer.shutdown()  // idempotent
    }

    func testShutdownAdmitsAppendersSuspendedByBackpressure() async throws {
        let db = try TrafficDatabase.inMemory()
        let writer = LogWriter(database: db, capacity: 2, maxBatch: 1, logger: LogCapture().logger())
        // No run() yet: the 3rd..10th appenders suspend.
        let appenders = (0..<10).map { _ in
            let e = makeEpisode(turns: 0)
            return Task { try await writer.append(e) }
        }
        while writer.stats.queued < 10 { try await Task.sleep(nanoseconds: 1_000_000) }
        // shutdown() without run(): drains inline, including the suspended appenders.
        try await within(seconds: 10, "inline drain") { await writer.shutdown() }
        for a in appenders { try await a.value }
        XCTAssertEqual(try db.episodeCount(), 10)
        XCTAssertEqual(writer.stats.batches, 10)  // maxBatch 1
        await writer.run()  // returns at once: already finished
    }

    func testCancellingRunDrainsAndCloses() async throws {
        let db = try TrafficDatabase.inMemory()
        let writer = LogWriter(database: db, logger: LogCapture().logger())
        for _ in 0..<50 { try await writer.append(makeEpisode(turns: 1)) }
        let runner = Task { await writer.run() }
        runner.cancel()
        try await within(seconds: 10, "cancelled run() returns") { await runner.value }
        XCTAssertEqual(try db.episodeCount(), 50)
        do {
            try await writer.append(makeEpisode())
            XCTFail("append after cancelled run() must throw")
        } catch {
            XCTAssertEqual(error as? LogWriterError, .closed)
        }
    }

    func testPermanentErrorRejectsOnlyTheBadEpisode() async throws {
        let db = try TrafficDatabase.inMemory()
        let capture = LogCapture()
        let writer = LogWriter(database: db, logger: capture.logger())
        let first = makeEpisode()
        var duplicate = makeEpisode()
        duplicate.id = first.id
        let others = (0..<5).map { _ in makeEpisode() }
        // Queue everything before run() so they share one batch.
        try await writer.append(first)
        try await writer.append(others[0])
        try await writer.append(others[1])
        let dupWaiter = Task { try await writer.appendAndWait(duplicate) }
        while writer.stats.queued < 4 { try await Task.sleep(nanoseconds: 1_000_000) }
        for e in others[2...] { try await writer.append(e) }
        let runner = Task { await writer.run() }

        do {
            try await dupWaiter.value
            XCTFail("duplicate id must be rejected")
        } catch {
            guard case .rejected(let id, _)? = error as? LogWriterError else { return XCTFail("unexpected \(error)") }
            XCTAssertEqual(id, first.id)
        }
        XCTAssertEqual(try db.episodeCount(), 6, "the rest of the batch is committed")
        XCTAssertEqual(try db.episode(id: first.id), first)
        let stats = writer.stats
        XCTAssertEqual(stats.rejected, 1)
        XCTAssertEqual(stats.rowsWritten, 6)
        XCTAssertTrue(capture.all.contains { $0.level == .error && $0.metadata.contains(first.id) })
        await writer.shutdown()
        await runner.value
    }

    func testFlushReportsRejectedEpisodes() async throws {
        let db = try TrafficDatabase.inMemory()
        let writer = LogWriter(database: db, logger: LogCapture().logger())
        var bad = makeEpisode(turns: 1)
        bad.turns[0].kind = "bogus"
        try await writer.append(makeEpisode())
        try await writer.append(bad)
        let flusher = Task { try await writer.flush() }
        while writer.waitingFlushes == 0 { try await Task.sleep(nanoseconds: 1_000_000) }
        let runner = Task { await writer.run() }
        do {
            try await flusher.value
            XCTFail("flush must report the rejected episode")
        } catch {
            guard case .notAllCommitted(1, _)? = error as? LogWriterError else { return XCTFail("unexpected \(error)") }
        }
        try await writer.append(makeEpisode())
        try await writer.flush()  // later flushes are clean
        XCTAssertEqual(try db.episodeCount(), 2)
        await writer.shutdown()
        await runner.value
    }

    func testShutdownWhileDatabaseKeepsFailingAbandonsWithErrors() async throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        let db = try TrafficDatabase(path: path, busyTimeout: 0.01)
        let capture = LogCapture()
        let writer = LogWriter(
            database: db, logger: capture.logger(), retryBaseDelay: 0.01,
            maxRetryDelay: 0.02, shutdownRetryLimit: 2)
        let runner = Task { await writer.run() }
        let holder = WriteLockHolder(path: path, seconds: 1.5)
        try await holder.waitAcquired()
        let e = makeEpisode()
        let waiter = Task { try await writer.appendAndWait(e) }
        while writer.stats.failures < 2 { try await Task.sleep(nanoseconds: 2_000_000) }
        XCTAssertTrue(writer.isPending(episodeID: e.id), "still retrying, not dropped")
        try await within(seconds: 10, "shutdown gives up on a database that keeps failing") {
            await writer.shutdown()
            await runner.value
        }
        XCTAssertFalse(holder.released, "gave up while the database was still locked")
        do {
            try await waiter.value
            XCTFail("waiter must get an error")
        } catch {
            guard case .abandoned(let id, _)? = error as? LogWriterError else { return XCTFail("unexpected \(error)") }
            XCTAssertEqual(id, e.id)
        }
        XCTAssertEqual(writer.stats.abandoned, 1)
        XCTAssertTrue(capture.all.contains { $0.level == .error && $0.metadata.contains(e.id) })
        try await holder.waitReleased()
    }

    func testDiskFullIsRetriedUntilSpaceIsAvailable() async throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("log.sqlite"))
        try db.insert(episodes: [makeEpisode()])
        // Simulate a full disk: cap the file at its current size (SQLITE_FULL on growth).
        let pages = try await db.writer.write { try Int.fetchOne($0, sql: "PRAGMA page_count") ?? 0 }
        try await db.writer.writeWithoutTransaction { try $0.execute(sql: "PRAGMA max_page_count = \(pages)") }

        let capture = LogCapture()
        let writer = LogWriter(database: db, logger: capture.logger(), retryBaseDelay: 0.01, maxRetryDelay: 0.02)
        let runner = Task { await writer.run() }
        let big = makeEpisode(turns: 2, requestJSON: String(repeating: "x", count: 256 * 1024))
        let waiter = Task { try await writer.appendAndWait(big) }
        try await within(seconds: 10, "first failures") {
            while writer.stats.failures < 3 { try await Task.sleep(nanoseconds: 2_000_000) }
        }
        XCTAssertTrue(writer.isPending(episodeID: big.id))
        XCTAssertFalse(try db.episodeExists(id: big.id))
        XCTAssertTrue(writer.stats.lastError?.contains("full") ?? false, writer.stats.lastError ?? "nil")

        // Space comes back: the same batch commits, the waiter returns normally.
        try await db.writer.writeWithoutTransaction { try $0.execute(sql: "PRAGMA max_page_count = 1073741823") }
        try await within(seconds: 10, "commit after space is back") { try await waiter.value }
        XCTAssertEqual(try db.episode(id: big.id), big)
        XCTAssertEqual(writer.stats.abandoned + writer.stats.rejected, 0)
        XCTAssertTrue(capture.all.contains { $0.level == .error })
        await writer.shutdown()
        await runner.value
    }
}
