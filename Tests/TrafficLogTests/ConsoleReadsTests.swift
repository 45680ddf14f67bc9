import Foundation
import GRDB
import XCTest

@testable import TrafficLog

/// The console's read model on a real SQLite file: keyset pages, filters, FTS5 search.
final class ConsoleReadsTests: XCTestCase {
    var tmp: TempDir?

    func makeLog(_ n: Int) throws -> (TrafficDatabase, [EpisodeRecord]) {
        let tmp = try TempDir()
        self.tmp = tmp
        let db = try TrafficDatabase(path: tmp.path("log.sqlite"))
        var list: [EpisodeRecord] = []
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        for i in 0..<n {
            var e = EpisodeRecord(
                createdAt: t0.addingTimeInterval(Double(i / 3)),  // ties on created_at: the id breaks them
                route: i % 2 == 0 ? "/v1/chat/completions" : "/v1/embeddings",
                mode: i % 4 == 0 ? "collaborate" : "passthrough", keyID: "k\(i % 3)",
                policyVersion: i % 4 == 0 ? "v\(i % 8 == 0 ? 1 : 2)" : nil,
                status: i % 5 == 0 ? 502 : 200, outcome: i % 5 == 0 ? "upstream_error" : "ok", totalMs: Double(i))
            if e.mode == "collaborate" {
                e.question = i % 8 == 0 ? "Which planet is the largest \"gas\" giant \(i)?" : "Who wrote Hamlet \(i)?"
            }
            list.append(e)
        }
        try db.insert(episodes: list)
        return (db, list)
    }

    func newestFirst(_ l: [EpisodeRecord]) -> [String] {
        l.sorted { ($0.createdAt, $0.id) > ($1.createdAt, $1.id) }.map(\.id)
    }

    func allPages(_ db: TrafficDatabase, _ f: ConsoleFilter, limit: Int) throws -> [String] {
        var out: [String] = []
        var cursor: ConsoleCursor?
        repeat {
            let page = try db.consoleEpisodes(f, after: cursor, limit: limit)
            XCTAssertLessThanOrEqual(page.episodes.count, limit)
            out += page.episodes.map(\.id)
            // The cursor survives the trip through a URL.
            cursor = try page.next.map { try XCTUnwrap(ConsoleCursor(token: $0.token)) }
        } while cursor != nil
        return out
    }

    func testKeysetPagesCoverEveryEpisodeOnceNewestFirst() throws {
        let (db, list) = try makeLog(103)
        XCTAssertEqual(try allPages(db, ConsoleFilter(), limit: 10), newestFirst(list))
        XCTAssertEqual(try allPages(db, ConsoleFilter(), limit: 103), newestFirst(list))
        XCTAssertNil(try db.consoleEpisodes(ConsoleFilter(), after: nil, limit: 103).next)
    }

    func testFiltersMatchAPlainScan() throws {
        let (db, list) = try makeLog(120)
        try db.insertFeedback(FeedbackRecord(episodeID: list[4].id, kind: "score", value: "0.5"))
        try db.insertFeedback(FeedbackRecord(episodeID: list[8].id, kind: "label", value: "x"))
        let cases: [(ConsoleFilter, (EpisodeRecord) -> Bool)] = [
            (ConsoleFilter(mode: "collaborate"), { $0.mode == "collaborate" }),
            (ConsoleFilter(route: "/v1/embeddings", status: 502), { $0.route == "/v1/embeddings" && $0.status == 502 }),
            (ConsoleFilter(outcome: "ok", policyVersion: "v2"), { $0.outcome == "ok" && $0.policyVersion == "v2" }),
            (ConsoleFilter(keyID: "k1"), { $0.keyID == "k1" }),
            (
                ConsoleFilter(since: list[30].createdAt, until: list[60].createdAt),
                { $0.createdAt >= list[30].createdAt && $0.createdAt < list[60].createdAt }
            ),
            (ConsoleFilter(hasFeedback: true), { $0.id == list[4].id || $0.id == list[8].id }),
            (
                ConsoleFilter(mode: "collaborate", hasFeedback: false),
                { $0.mode == "collaborate" && $0.id != list[4].id && $0.id != list[8].id }
            ),
        ]
        for (f, keep) in cases {
            XCTAssertEqual(try allPages(db, f, limit: 7), newestFirst(list.filter(keep)), "\(f)")
        }
        let page = try db.consoleEpisodes(ConsoleFilter(hasFeedback: true), after: nil, limit: 10)
        XCTAssertEqual(page.episodes.map(\.feedbackCount), [1, 1])
    }

    func testTextSearchUsesFTSAndSurvivesDeletes() throws {
        let (db, list) = try makeLog(64)
        let planets = list.filter { $0.question?.contains("planet") == true }
        XCTAssertFalse(planets.isEmpty)
        XCTAssertEqual(try allPages(db, ConsoleFilter(text: "planet"), limit: 5), newestFirst(planets))
        // Every word must occur; the last one may be a prefix; case does not matter.
        XCTAssertEqual(try allPages(db, ConsoleFilter(text: "LARGEST gia"), limit: 50), newestFirst(planets))
        XCTAssertEqual(try allPages(db, ConsoleFilter(text: "planet hamlet"), limit: 50), [])
        // FTS syntax typed by a person is taken as words, not as a query.
        XCTAssertEqual(try allPages(db, ConsoleFilter(text: "\"gas\" OR NEAR("), limit: 50), [])
        XCTAssertEqual(try allPages(db, ConsoleFilter(text: "\"gas\""), limit: 50), newestFirst(planets))
        XCTAssertEqual(
            try allPages(db, ConsoleFilter(mode: "collaborate", policyVersion: "v2", text: "hamlet"), limit: 50),
            newestFirst(list.filter { $0.policyVersion == "v2" && $0.question?.contains("Hamlet") == true }))
        // Retention deletes take their rows out of the index too.
        _ = try db.deleteEpisodes(olderThan: list[40].createdAt)
        let kept = planets.filter { $0.createdAt >= list[40].createdAt }
        XCTAssertEqual(try allPages(db, ConsoleFilter(text: "planet"), limit: 50), newestFirst(kept))
        XCTAssertEqual(
            try rawCount(db.path, "SELECT COUNT(*) FROM episodes_fts"),
            try rawCount(db.path, "SELECT COUNT(*) FROM episodes WHERE question IS NOT NULL"))
    }

    /// The has-feedback list and a text search read about a page, not the log: their plans walk an
    /// index newest first with no sort step (what keeps them fast on a million episodes;
    /// `gateway-bench console` times them).
    func testFeedbackFilterAndSearchWalkAnIndexWithoutSorting() throws {
        let (db, list) = try makeLog(40)
        try db.insertFeedback(FeedbackRecord(episodeID: list[4].id, kind: "score", value: "0.5"))
        try db.insertFeedback(FeedbackRecord(episodeID: list[4].id, kind: "label", value: "x"))
        XCTAssertEqual(try rawCount(db.path, "SELECT feedback_count FROM episodes WHERE id = '\(list[4].id)'"), 2)
        XCTAssertEqual(try rawCount(db.path, "SELECT SUM(feedback_count) FROM episodes"), 2)
        let queue = try DatabaseQueue(path: db.path)
        defer { try? queue.close() }
        let cursor = ConsoleCursor(createdAt: 1_900_000_000, id: "~", searchRow: 1_000)
        for (filter, index) in [
            (ConsoleFilter(hasFeedback: true), "episodes_with_feedback"), (ConsoleFilter(text: "planet"), "episodes_fts"),
        ] {
            for after in [nil, cursor] {
                let (sql, args) = TrafficDatabase.consoleListSQL(filter, after: after, limit: 50)
                let plan = try queue.read { db in
                    try Row.fetchAll(db, sql: "EXPLAIN QUERY PLAN " + sql, arguments: args).map { $0["detail"] as String }
                }.joined(separator: "\n")
                XCTAssertTrue(plan.contains(index), plan)
                XCTAssertFalse(plan.contains("TEMP B-TREE"), "the page is sorted after reading every match:\n\(plan)")
            }
        }
    }

    /// A log from before v5_console gets its counts from the feedback already there.
    func testFeedbackCountsAreBackfilledOnUpgrade() throws {
        let tmp = try TempDir()
        let path = tmp.path("old.sqlite")
        let queue = try DatabaseQueue(path: path)
        try TrafficSchema.migrator().migrate(queue, upTo: "v4_policy_logprobs")
        try queue.write { db in
            for id in ["a", "b"] {
                try db.execute(
                    sql:
                        "INSERT INTO episodes (id, created_at, route, mode, stream, status, total_ms) VALUES (?, 1, '/v1/chat/completions', 'collaborate', 0, 200, 1)",
                    arguments: [id])
            }
            for kind in ["score", "label", "reference"] {
                try db.execute(sql: "INSERT INTO feedback (episode_id, kind, value, created_at) VALUES ('a', ?, '1', 1)", arguments: [kind])
            }
        }
        try queue.close()
        let db = try TrafficDatabase(path: path)
        XCTAssertEqual(try db.consoleEpisodes(ConsoleFilter(hasFeedback: true), after: nil, limit: 10).episodes.map(\.feedbackCount), [3])
        XCTAssertEqual(try db.consoleEpisodes(ConsoleFilter(hasFeedback: false), after: nil, limit: 10).episodes.map(\.id), ["b"])
    }

    func testTrainingCountsAndVersionUsage() throws {
        let (db, list) = try makeLog(40)
        let collab = list.filter { $0.mode == "collaborate" }
        try db.insertFeedback(FeedbackRecord(episodeID: collab[0].id, kind: "reference", value: "a"))
        try db.insertFeedback(FeedbackRecord(episodeID: collab[0].id, kind: "score", value: "1"))
        try db.insertFeedback(FeedbackRecord(episodeID: collab[1].id, kind: "score", value: "0.2"))
        try db.insertFeedback(FeedbackRecord(episodeID: collab[2].id, kind: "label", value: "meh"))
        let counts = try db.consoleTrainingCounts()
        let total = counts.reduce(0) { $0 + $1.episodes }
        XCTAssertEqual(total, collab.count)
        XCTAssertEqual(counts.reduce(0) { $0 + $1.withRewardSource }, 2)
        XCTAssertEqual(counts.reduce(0) { $0 + $1.withReference }, 1)
        XCTAssertEqual(counts.reduce(0) { $0 + $1.withScore }, 2)
        let usage = try db.consoleVersionUsage()
        XCTAssertEqual(
            Dictionary(uniqueKeysWithValues: usage.map { ($0.policyVersion, $0.episodes) }),
            Dictionary(grouping: collab, by: { $0.policyVersion! }).mapValues(\.count))
    }

    func testOverviewBucketsAndPercentiles() throws {
        let (db, list) = try makeLog(50)
        let o = try db.consoleOverview(since: list[0].createdAt, bucketSeconds: 5, sampleSize: 1000)
        XCTAssertEqual(o.buckets.reduce(0) { $0 + $1.requests }, 50)
        XCTAssertEqual(o.buckets.reduce(0) { $0 + $1.errors }, list.filter { $0.status >= 400 }.count)
        XCTAssertEqual(o.buckets.first?.requests, 15)  // 3 episodes a second, 5 s buckets
        // Nearest rank over total_ms = 0...49.
        XCTAssertEqual(o.latency["total"]?.p50, 24)
        XCTAssertEqual(o.latency["total"]?.p99, 49)
        XCTAssertEqual(o.outcomes.reduce(0) { $0 + $1.count }, list.filter { $0.mode == "collaborate" }.count)
    }
}
