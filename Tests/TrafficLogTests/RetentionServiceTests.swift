import Foundation
import XCTest

@testable import TrafficLog

final class RetentionServiceTests: XCTestCase {
    func testSweepDeletesOnlyOldEpisodesWithTheirRows() async throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        let db = try TrafficDatabase(path: path)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        let old = makeEpisode(createdAt: now.addingTimeInterval(-8 * 86_400), turns: 2)
        let edge = makeEpisode(createdAt: now.addingTimeInterval(-7 * 86_400), turns: 2)  // exactly maxAge: kept
        let young = makeEpisode(createdAt: now.addingTimeInterval(-3_600), turns: 2)
        try db.insert(episodes: [old, edge, young])
        try db.insertFeedback(FeedbackRecord(episodeID: old.id, kind: "score", value: "1"))
        try db.insertFeedback(FeedbackRecord(episodeID: young.id, kind: "score", value: "1"))
        let service = RetentionService(database: db, maxAge: 7 * 86_400, interval: 3_600, logger: LogCapture().logger())
        let deleted = try await service.sweep(now: now)
        XCTAssertEqual(deleted, 1)
        XCTAssertNil(try db.episode(id: old.id))
        XCTAssertNotNil(try db.episode(id: edge.id))
        XCTAssertEqual(try db.feedback(episodeID: old.id), [])
        XCTAssertEqual(try rawCount(path, "SELECT COUNT(*) FROM turns"), 4)
        XCTAssertEqual(try rawCount(path, "SELECT COUNT(*) FROM feedback"), 1)
        let again = try await service.sweep(now: now)
        XCTAssertEqual(again, 0)
    }

    func testRunLoopSweepsPeriodicallyUntilCancelled() async throws {
        let db = try TrafficDatabase.inMemory()
        let service = RetentionService(database: db, maxAge: 60, interval: 0.05, logger: LogCapture().logger())
        try db.insert(episodes: [makeEpisode(createdAt: Date().addingTimeInterval(-120))])
        let task = Task { await service.run() }
        try await within(seconds: 5, "first sweep") {
            while try db.episodeCount() > 0 { try await Task.sleep(nanoseconds: 5_000_000) }
        }
        // Inserted after the first sweep: removed by a later one.
        try db.insert(episodes: [makeEpisode(createdAt: Date().addingTimeInterval(-120)), makeEpisode()])
        try await within(seconds: 5, "later sweep") {
            while try db.episodeCount() > 1 { try await Task.sleep(nanoseconds: 5_000_000) }
        }
        task.cancel()
        try await within(seconds: 5, "run() ends on cancellation") { await task.value }
        XCTAssertEqual(try db.episodeCount(), 1)
    }

    func testNonPositiveMaxAgeDisablesRetention() async throws {
        let db = try TrafficDatabase.inMemory()
        try db.insert(episodes: [makeEpisode(createdAt: Date(timeIntervalSince1970: 1_600_000_000))])
        let service = RetentionService(database: db, maxAge: 0, interval: 1, logger: LogCapture().logger())
        let swept = await service.sweepOnce()
        XCTAssertEqual(swept, 0)
        await service.run()  // returns immediately
        XCTAssertEqual(try db.episodeCount(), 1)
    }
}
