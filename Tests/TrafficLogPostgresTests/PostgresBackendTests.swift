import Foundation
import Logging
import TrafficLog
import TrafficLogPostgres
import XCTest

/// The PostgreSQL backend against a real server, side by side with the SQLite backend: the
/// same records in, the same records out, for every call of `LogBackend`.
final class PostgresBackendTests: XCTestCase {
    func openBoth() async throws -> (pg: PostgresLogBackend, sqlite: SQLiteLogBackend, dir: URL) {
        let url = try await TestPostgres.freshDatabase()
        let pg = try await PostgresLogBackend.open(url: url, logger: TestPostgres.quietLogger)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pg-vs-sqlite-\(UUID().uuidString)")
        let sqlite = try SQLiteLogBackend(path: dir.appendingPathComponent("log.sqlite").path)
        return (pg, sqlite, dir)
    }

    func testSameRecordsInAndOutAsSQLite() async throws {
        let (pg, sqlite, dir) = try await openBoth()
        defer { try? FileManager.default.removeItem(at: dir) }
        let t0 = Date(timeIntervalSince1970: 1_800_000_000.123456)
        var episodes: [EpisodeRecord] = []
        for i in 0..<40 {
            var e = sampleEpisode(
                createdAt: t0.addingTimeInterval(Double(i) * 0.5), route: i % 3 == 0 ? "rollout" : "/v1/chat/completions",
                mode: i % 2 == 0 ? "collaborate" : "passthrough", policyVersion: i % 4 == 0 ? "v-a" : "v-b",
                turns: i % 5, question: i % 2 == 0 ? "q\(i % 6)" : nil)
            if i == 7 {
                e.turns = []
                e.requestJSON = nil
                e.responseText = nil
                e.promptTokens = nil
                e.formatScore = nil
            }
            episodes.append(e)
        }
        for backend in [pg, sqlite] as [any LogBackend] {
            try await backend.insertBatch(Array(episodes[0..<25]))
            try await backend.insertBatch(Array(episodes[25...]))
            for (i, e) in episodes.enumerated() where i % 3 == 0 {
                try await backend.insertFeedback(
                    FeedbackRecord(
                        episodeID: e.id, kind: i % 2 == 0 ? "reference" : "score",
                        value: i % 2 == 0 ? "Paris" : "0.75", source: "test", createdAt: t0))
            }
            try await backend.insertFeedback(FeedbackRecord(episodeID: episodes[1].id, kind: "label", value: "good", createdAt: t0))
        }
        // Every record reads back exactly, from both.
        for e in episodes {
            let fromPG = try await pg.episode(id: e.id)
            let fromSQLite = try await sqlite.episode(id: e.id)
            XCTAssertEqual(fromPG, e)
            XCTAssertEqual(fromSQLite, e)
        }
        let missing = try await pg.episode(id: "no-such-id")
        XCTAssertNil(missing)
        // Every filter gives the same answer.
        let queries: [EpisodeQuery] = [
            EpisodeQuery(), EpisodeQuery(includeTurns: false),
            EpisodeQuery(since: t0.addingTimeInterval(3), until: t0.addingTimeInterval(12)),
            EpisodeQuery(route: "rollout"), EpisodeQuery(mode: "collaborate", policyVersion: "v-a"),
            EpisodeQuery(hasRewardSource: true), EpisodeQuery(hasRewardSource: false),
            EpisodeQuery(limit: 7, offset: 5), EpisodeQuery(limit: 0),
        ]
        for q in queries {
            let a = try await pg.episodes(q)
            let b = try await sqlite.episodes(q)
            XCTAssertEqual(a, b, "\(q)")
            let ca = try await pg.count(q)
            let cb = try await sqlite.count(q)
            XCTAssertEqual(ca, cb, "\(q)")
        }
        let all = try await pg.episodes(EpisodeQuery())
        XCTAssertEqual(all.map(\.id), episodes.map(\.id))
        let ids = episodes.map(\.id)
        let fa = try await pg.feedback(episodeIDs: ids)
        let fb = try await sqlite.feedback(episodeIDs: ids)
        XCTAssertEqual(fa.mapValues { $0.map(\.value) }, fb.mapValues { $0.map(\.value) })
        XCTAssertEqual(fa.count, 15)
        let one = try await pg.feedback(episodeID: episodes[1].id)
        XCTAssertEqual(one.map(\.kind), ["label"])
        let qa = try await pg.episodeCountsByQuestion(route: "rollout")
        let qb = try await sqlite.episodeCountsByQuestion(route: "rollout")
        XCTAssertEqual(qa, qb)
        XCTAssertFalse(qa.isEmpty)
        let exists = try await pg.episodeExists(id: episodes[3].id)
        XCTAssertTrue(exists)

        // The console's reads: newest first, keyset pages, filters, search, the overview and
        // the training counts, the same on both.
        func allPages(_ backend: any LogBackend, _ filter: ConsoleFilter, limit: Int) async throws -> [EpisodeSummary] {
            var out: [EpisodeSummary] = []
            var after: ConsoleCursor?
            repeat {
                let page = try await backend.consoleEpisodes(filter, after: after, limit: limit)
                out += page.episodes
                after = try page.next.map { try XCTUnwrap(ConsoleCursor(token: $0.token), "the cursor survives its text form") }
            } while after != nil
            return out
        }
        let filters: [(ConsoleFilter, Int)] = [
            (ConsoleFilter(), 6), (ConsoleFilter(mode: "collaborate", hasFeedback: true), 4), (ConsoleFilter(hasFeedback: false), 7),
            (ConsoleFilter(status: 200, outcome: "ok", policyVersion: "v-b", keyID: "key-1"), 5),
            (ConsoleFilter(since: t0.addingTimeInterval(3), until: t0.addingTimeInterval(12), route: "rollout"), 2),
            (ConsoleFilter(text: "q2"), 2), (ConsoleFilter(mode: "collaborate", text: "Q"), 3), (ConsoleFilter(text: "zzz"), 3),
        ]
        for (filter, limit) in filters {
            let fromPG = try await allPages(pg, filter, limit: limit)
            let fromSQLite = try await allPages(sqlite, filter, limit: limit)
            XCTAssertEqual(fromPG, fromSQLite, "\(filter)")
            XCTAssertEqual(fromPG.map(\.createdAt), fromPG.map(\.createdAt).sorted(by: >))
            XCTAssertEqual(Set(fromPG.map(\.id)).count, fromPG.count, "no episode on two pages")
            if filter.text != "zzz" { XCTAssertFalse(fromPG.isEmpty, "\(filter)") }
        }
        let q2 = try await allPages(pg, ConsoleFilter(text: "q2"), limit: 50)
        XCTAssertEqual(Set(q2.map(\.question)), ["q2"])
        let counted = try await pg.consoleEpisodes(ConsoleFilter(), after: nil, limit: 500).episodes.first { $0.id == episodes[6].id }
        XCTAssertEqual(counted?.feedbackCount, 1)
        let overviewPG = try await pg.consoleOverview(since: t0, bucketSeconds: 5, sampleSize: 100)
        let overviewSQLite = try await sqlite.consoleOverview(since: t0, bucketSeconds: 5, sampleSize: 100)
        XCTAssertEqual(
            overviewPG.buckets.map { [$0.requests, $0.errors, $0.collaborations] },
            overviewSQLite.buckets.map { [$0.requests, $0.errors, $0.collaborations] })
        XCTAssertEqual(overviewPG.buckets.map(\.start), overviewSQLite.buckets.map(\.start))
        XCTAssertEqual(overviewPG.buckets.reduce(0) { $0 + $1.requests }, 40)
        for k in ["total", "upstream", "overhead", "policy"] {
            XCTAssertEqual(overviewPG.latency[k]?.p50, overviewSQLite.latency[k]?.p50, k)
            XCTAssertEqual(overviewPG.latency[k]?.p99, overviewSQLite.latency[k]?.p99, k)
            XCTAssertEqual(overviewPG.latency[k]?.count, overviewSQLite.latency[k]?.count, k)
        }
        XCTAssertEqual(
            overviewPG.outcomes.map { "\($0.outcome)=\($0.count)" }.sorted(),
            overviewSQLite.outcomes.map { "\($0.outcome)=\($0.count)" }.sorted())
        XCTAssertEqual(
            overviewPG.rewards.map { "\($0.policyVersion) \($0.start) \($0.meanScore) \($0.count)" },
            overviewSQLite.rewards.map { "\($0.policyVersion) \($0.start) \($0.meanScore) \($0.count)" })
        XCTAssertFalse(overviewPG.rewards.isEmpty)
        let trainingPG = try await pg.consoleTrainingCounts()
        let trainingSQLite = try await sqlite.consoleTrainingCounts()
        XCTAssertEqual(trainingPG, trainingSQLite)
        let usagePG = try await pg.consoleVersionUsage()
        let usageSQLite = try await sqlite.consoleVersionUsage()
        XCTAssertEqual(usagePG, usageSQLite.sorted { $0.policyVersion < $1.policyVersion })

        // Policy versions and events.
        let v = PolicyVersionRecord(
            id: "v-a", path: "/m/A", sha256: "aa", architecture: "qwen3", parameterCount: 123, loadedAt: t0, manifestJSON: "{}")
        for backend in [pg, sqlite] as [any LogBackend] {
            try await backend.insertPolicyVersion(v)
            try await backend.insertPolicyVersion(v)  // a reload: same digest, fine
            do {
                try await backend.insertPolicyVersion(
                    PolicyVersionRecord(id: "v-a", path: "/m/A", sha256: "bb", architecture: "qwen3", parameterCount: 1))
                XCTFail("a different digest under the same id is refused")
            } catch let e as TrafficLogError {
                XCTAssertEqual(e, .policyVersionConflict(id: "v-a", existingSHA256: "aa", newSHA256: "bb"))
            }
            let first = try await backend.recordFirstPolicyEvent(
                PolicyEventRecord(versionID: "v-a", path: "A", action: .start, replica: "r1", createdAt: t0))
            let notSecond = try await backend.recordFirstPolicyEvent(
                PolicyEventRecord(versionID: "v-z", path: "Z", action: .start, replica: "r2", createdAt: t0))
            XCTAssertEqual(notSecond, first, "only the first start is recorded")
            let swap = try await backend.recordPolicyEvent(
                PolicyEventRecord(versionID: "v-b", path: "B", action: .swap, replica: "r2", createdAt: t0))
            XCTAssertGreaterThan(swap.seq ?? 0, first.seq ?? 0)
            let latest = try await backend.latestPolicyEvent()
            XCTAssertEqual(latest, swap)
            let events = try await backend.policyEvents(limit: 10)
            XCTAssertEqual(events.map(\.versionID), ["v-b", "v-a"])
        }
        let pva = try await pg.policyVersions()
        let pvb = try await sqlite.policyVersions()
        XCTAssertEqual(pva, pvb)

        // Retention: the same rows go.
        let cutoff = t0.addingTimeInterval(10)
        let da = try await pg.deleteEpisodes(olderThan: cutoff)
        let db = try await sqlite.deleteEpisodes(olderThan: cutoff)
        XCTAssertEqual(da, 20)
        XCTAssertEqual(da, db)
        let left = try await pg.episodes(EpisodeQuery())
        let leftSQLite = try await sqlite.episodes(EpisodeQuery())
        XCTAssertEqual(left, leftSQLite)
        let feedbackLeft = try await pg.feedback(episodeIDs: ids)
        XCTAssertTrue(feedbackLeft.keys.allSatisfy { id in left.contains { $0.id == id } }, "feedback cascades")

        let migrations = try await pg.appliedMigrations()
        let sqliteMigrations = try await sqlite.appliedMigrations()
        // SQLite's v2_console (filter indexes, FTS5) has its PostgreSQL counterpart in v5_console.
        XCTAssertEqual(migrations, sqliteMigrations.filter { $0 != "v2_console" }, "the same migrations on both backends")
        try await pg.close()
        try await sqlite.close()
    }

    func testValidationDuplicatesAndNulAreHandledLikeSQLite() async throws {
        let (pg, sqlite, dir) = try await openBoth()
        defer { try? FileManager.default.removeItem(at: dir) }
        let e = sampleEpisode()
        try await pg.insertBatch([e])
        // A retry of a batch that did commit (its answer lost) is not a duplicate.
        try await pg.insertBatch([e])
        var other = sampleEpisode(id: e.id)
        other.route = "/v1/other"
        do {
            try await pg.insertBatch([other])
            XCTFail("a different episode under a stored id is refused")
        } catch {
            XCTAssertEqual(error as? TrafficLogError, .duplicateEpisode(id: e.id))
            XCTAssertTrue(pg.isPermanent(error))
        }
        var badTurns = sampleEpisode(turns: 2)
        badTurns.turns[1].index = 0
        for backend in [pg, sqlite] as [any LogBackend] {
            do {
                try await backend.insertBatch([badTurns])
                XCTFail("duplicate turn index")
            } catch {
                XCTAssertEqual(error as? TrafficLogError, .duplicateTurnIndex(episodeID: badTurns.id, index: 0))
            }
            do {
                try await backend.insertFeedback(FeedbackRecord(episodeID: "nope", kind: "score", value: "1"))
                XCTFail("feedback for an unknown episode")
            } catch {
                XCTAssertEqual(error as? TrafficLogError, .unknownEpisode(id: "nope"))
            }
        }
        // A NUL character (PostgreSQL text cannot hold one) does not cost the episode.
        var nul = sampleEpisode()
        nul.responseText = "a\u{0}b"
        try await pg.insertBatch([nul])
        let stored = try await pg.episode(id: nul.id)
        XCTAssertEqual(stored?.responseText, "a\u{FFFD}b")
        // An episode and its reward source, atomically (trainer rollouts).
        let r = sampleEpisode(route: "rollout", question: "q")
        try await pg.insert(episode: r, feedback: [FeedbackRecord(episodeID: r.id, kind: "reference", value: "x")])
        let fb = try await pg.feedback(episodeID: r.id)
        XCTAssertEqual(fb.map(\.value), ["x"])
        try await pg.close()
        do {
            _ = try await pg.episodeCount()
            XCTFail("closed")
        } catch {
            XCTAssertEqual(error as? PostgresLogError, .closed)
        }
    }

    /// Replicas starting together: each migration is applied once, none fails.
    func testMigrationsRaceUnderTheAdvisoryLock() async throws {
        let url = try await TestPostgres.freshDatabase()
        let backends = try await withThrowingTaskGroup(of: PostgresLogBackend.self) { group in
            for _ in 0..<6 { group.addTask { try await PostgresLogBackend.open(url: url, logger: TestPostgres.quietLogger) } }
            var out: [PostgresLogBackend] = []
            for try await b in group { out.append(b) }
            return out
        }
        for b in backends {
            let names = try await b.appliedMigrations()
            XCTAssertEqual(names, ["v1", "v2-policy-events", "v3_trainable", "v4_policy_logprobs", "v5_console"])
        }
        let e = sampleEpisode()
        try await backends[0].insertBatch([e])
        let seen = try await backends[5].episode(id: e.id)
        XCTAssertEqual(seen, e)
        for b in backends { try await b.close() }
    }

    func testNotificationsReachOtherConnections() async throws {
        let url = try await TestPostgres.freshDatabase()
        let a = try await PostgresLogBackend.open(url: url, logger: TestPostgres.quietLogger)
        let b = try await PostgresLogBackend.open(url: url, logger: TestPostgres.quietLogger)
        let maybeStream = try await b.policyEventNotifications()
        let stream = try XCTUnwrap(maybeStream)
        let received = Task { () -> [Int64] in
            var out: [Int64] = []
            for try await seq in stream {
                if seq == 0 { continue }  // "listening"
                out.append(seq)
                if out.count == 2 { break }
            }
            return out
        }
        try await Task.sleep(for: .milliseconds(300))
        let e1 = try await a.recordPolicyEvent(PolicyEventRecord(versionID: "x", path: "X", action: .swap))
        let e2 = try await a.recordPolicyEvent(PolicyEventRecord(versionID: "y", path: "Y", action: .rollback))
        let seqs = try await within(10, "two notifications") { try await received.value }
        XCTAssertEqual(seqs, [e1.seq, e2.seq].compactMap { $0 })
        try await a.close()
        try await b.close()
    }

    func testURLParsingAndRedaction() throws {
        XCTAssertEqual(LogLocation("postgres://u:pa%40ss@h:5/db").kind, .postgres)
        XCTAssertEqual(LogLocation("postgresql://h/db").kind, .postgres)
        XCTAssertEqual(LogLocation("/var/log/traffic.sqlite").kind, .sqlite)
        XCTAssertEqual(
            LogLocation.redact("postgres://gw:s3cr@t@db.internal:5432/log?sslmode=require"),
            "postgres://gw:***@db.internal:5432/log?sslmode=require")
        XCTAssertEqual(LogLocation.redact("postgres://db/log?user=gw&password=hunter2"), "postgres://db/log?user=gw&password=***")
        XCTAssertEqual(LogLocation.redact("postgres://gw@db/log"), "postgres://gw@db/log")
        XCTAssertEqual("\(LogLocation("postgres://a:SECRET@h/d"))", "postgres://a:***@h/d")
        XCTAssertThrowsError(try PostgresLogBackend(url: "postgres://a:SECRET@h/d?sslmode=bogus", logger: TestPostgres.quietLogger)) { e in
            XCTAssertFalse("\(e)".contains("SECRET"), "\(e)")
        }
    }

    /// A wrong password fails with a message that does not contain it, and `/ready`'s ping
    /// reports the failure within its timeout.
    func testUnreachableAndWrongPasswordFailClearly() async throws {
        let admin = try TestPostgres.adminURL()
        var c = try XCTUnwrap(URLComponents(string: admin))
        c.password = "WRONG-pass-123"
        let backend = try PostgresLogBackend(url: c.string!, logger: TestPostgres.quietLogger)
        do {
            try await backend.ping(timeout: .seconds(10))
            XCTFail("a wrong password connects")
        } catch {
            XCTAssertFalse("\(error)".contains("WRONG-pass"), "\(error)")
        }
        try await backend.close()
        // Nothing listens on port 9 of loopback.
        let down = try PostgresLogBackend(url: "postgres://u:p@127.0.0.1:9/x?sslmode=disable", logger: TestPostgres.quietLogger)
        let start = ContinuousClock.now
        do {
            try await down.ping(timeout: .seconds(2))
            XCTFail("nothing listens there")
        } catch {}
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(8))
        try await down.close()
    }
}
