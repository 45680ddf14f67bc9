import Foundation
import GRDB
import PromptR1
import XCTest

@testable import TrafficLog

final class TrafficDatabaseTests: XCTestCase {
    func testEpisodeRoundTripWithBlobsOnFile() throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("log.sqlite"))
        var e = makeEpisode(createdAt: Date(), mode: "collaborate", policyVersion: "pv-1", turns: 0)
        e.stream = true
        e.policyTokens = 77
        e.question = "what is 2+2?"
        e.formatScore = 0.75
        e.error = nil
        e.turns = [
            TurnRecord(
                index: 1, kind: "policy",
                inputIDs: [Int32.min, -1, 0, 1, Int32.max], outputIDs: [151_643, 7],
                logprobs: [-Float.infinity, -0.0, Float.leastNonzeroMagnitude, -12.5, Float.greatestFiniteMagnitude],
                lossMask: [0, 1, 255], text: "<call>ask</call>", call: "ask", latencyMs: 1.5,
                promptTokens: 5, completionTokens: 2, status: nil, error: nil),
            TurnRecord(
                index: 0, kind: "upstream", inputIDs: [], outputIDs: nil, logprobs: [], lossMask: [],
                upstreamRequest: #"{"a":1}"#, upstreamResponse: #"{"b":2}"#, latencyMs: 9,
                status: 200, error: "none"),
        ]
        try db.insert(episodes: [e])
        let back = try XCTUnwrap(try db.episode(id: e.id))
        var expected = e
        expected.turns.sort { $0.index < $1.index }
        XCTAssertEqual(back, expected)
        // Empty arrays stay empty (not nil), nil stays nil.
        XCTAssertEqual(back.turns[0].inputIDs, [])
        XCTAssertNil(back.turns[0].outputIDs)

        // On disk: little-endian int32 / float32 blobs.
        let raw = try DatabaseQueue(path: tmp.path("log.sqlite"))
        let (ids, probs, created) = try raw.read { dbc -> (Data, Data, Double) in
            let row = try XCTUnwrap(
                try Row.fetchOne(
                    dbc,
                    sql: """
                        SELECT t.input_ids, t.logprobs, e.created_at FROM turns t JOIN episodes e ON e.id = t.episode_id
                        WHERE t.episode_id = ? AND t.idx = 1
                        """, arguments: [e.id]))
            return (row[0], row[1], row[2])
        }
        XCTAssertEqual([UInt8](ids.prefix(8)), [0x00, 0x00, 0x00, 0x80, 0xff, 0xff, 0xff, 0xff])
        XCTAssertEqual([UInt8](probs.prefix(4)), [0x00, 0x00, 0x80, 0xff])  // -inf
        XCTAssertEqual(created, e.createdAt.timeIntervalSince1970)
        XCTAssertEqual(created, Date().timeIntervalSince1970, accuracy: 60)
        try raw.close()
    }

    func testNaNLogprobBitPatternSurvives() throws {
        let db = try TrafficDatabase.inMemory()
        let nan = Float(bitPattern: 0x7fc0_1234)
        let e = EpisodeRecord(route: "/r", turns: [TurnRecord(index: 0, kind: "policy", logprobs: [nan, 1])])
        try db.insert(episodes: [e])
        let back = try XCTUnwrap(try db.episode(id: e.id)?.turns.first?.logprobs)
        XCTAssertEqual(back.map(\.bitPattern), [0x7fc0_1234, Float(1).bitPattern])
    }

    func testDatesRoundTripExactly() throws {
        let db = try TrafficDatabase.inMemory()
        // Date() values that do not survive Date -> unix seconds -> Date unnormalised.
        var episodes: [EpisodeRecord] = []
        for i in 0..<200 {
            let d = Date(timeIntervalSinceReferenceDate: 817_326_819.347_634_4 + Double(i) * 0.000_000_119)
            episodes.append(EpisodeRecord(createdAt: d, route: "/r"))
        }
        try db.insert(episodes: episodes)
        for e in episodes {
            XCTAssertEqual(try db.episode(id: e.id)?.createdAt, e.createdAt)
        }
        // Assignment through the property normalises too.
        var e = EpisodeRecord(route: "/r")
        let raw = Date(timeIntervalSinceReferenceDate: 817_326_819.347_634_4)
        e.createdAt = raw
        XCTAssertEqual(e.createdAt, TrafficTime.normalized(raw))
        XCTAssertEqual(e.createdAt.timeIntervalSince1970, raw.timeIntervalSince1970)
        XCTAssertEqual(abs(e.createdAt.timeIntervalSince(raw)), 0, accuracy: 1e-6)
    }

    func testQueriesFilterAndOrder() throws {
        let db = try TrafficDatabase.inMemory()
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        var all: [EpisodeRecord] = []
        for i in 0..<10 {
            all.append(
                makeEpisode(
                    createdAt: t0.addingTimeInterval(Double(i)),
                    route: i % 2 == 0 ? "/v1/chat/completions" : "/v1/completions",
                    mode: i < 5 ? "passthrough" : "collaborate",
                    policyVersion: i < 5 ? nil : (i < 8 ? "pv-a" : "pv-b"), turns: 1))
        }
        // Two episodes share a timestamp: order falls back to id.
        let tieA = makeEpisode(id: "zzz-tie", createdAt: t0.addingTimeInterval(3), turns: 0)
        let tieB = makeEpisode(id: "aaa-tie", createdAt: t0.addingTimeInterval(3), turns: 0)
        try db.insert(episodes: all.reversed() + [tieA, tieB])
        XCTAssertEqual(try db.episodeCount(), 12)

        let ordered = try db.episodes(EpisodeQuery())
        let ts = ordered.map(\.createdAt.timeIntervalSince1970)
        XCTAssertEqual(ts, ts.sorted())
        let at3 = ordered.filter { $0.createdAt == t0.addingTimeInterval(3) }.map(\.id)
        XCTAssertEqual(at3, at3.sorted())
        XCTAssertEqual(at3.count, 3)

        let window = try db.episodes(EpisodeQuery(since: t0.addingTimeInterval(2), until: t0.addingTimeInterval(5)))
        XCTAssertEqual(window.count, 5)  // 2, 3, 3, 3, 4 (until is exclusive)
        XCTAssertEqual(try db.episodes(EpisodeQuery(route: "/v1/completions")).count, 5)
        XCTAssertEqual(
            try db.episodes(EpisodeQuery(mode: "collaborate")).map(\.createdAt),
            all[5...].map(\.createdAt))
        XCTAssertEqual(try db.episodes(EpisodeQuery(policyVersion: "pv-a")).map(\.id), all[5..<8].map(\.id))

        try db.insertFeedback(FeedbackRecord(episodeID: all[1].id, kind: "score", value: "0.5"))
        try db.insertFeedback(FeedbackRecord(episodeID: all[2].id, kind: "reference", value: "4"))
        try db.insertFeedback(FeedbackRecord(episodeID: all[3].id, kind: "label", value: "good"))
        XCTAssertEqual(try db.episodes(EpisodeQuery(hasRewardSource: true)).map(\.id), [all[1].id, all[2].id])
        XCTAssertEqual(try db.episodes(EpisodeQuery(hasRewardSource: false)).count, 10)
        XCTAssertEqual(try db.count(EpisodeQuery(hasRewardSource: true)), 2)
        XCTAssertEqual(try db.count(EpisodeQuery(route: "/v1/completions", limit: 1, offset: 3)), 5)
        XCTAssertEqual(try db.count(EpisodeQuery()), 12)
        let byEpisode = try db.feedback(episodeIDs: [all[1].id, all[3].id, all[4].id, all[1].id])
        XCTAssertEqual(Set(byEpisode.keys), [all[1].id, all[3].id])
        XCTAssertEqual(byEpisode[all[3].id]?.map(\.value), ["good"])
        XCTAssertEqual(byEpisode[all[1].id], try db.feedback(episodeID: all[1].id))
        XCTAssertEqual(try db.feedback(episodeIDs: []), [:])

        let page = try db.episodes(EpisodeQuery(limit: 3, offset: 2))
        XCTAssertEqual(page.map(\.id), ordered[2..<5].map(\.id))
        XCTAssertEqual(try db.episodes(EpisodeQuery(offset: 11)).map(\.id), [ordered[11].id])
        XCTAssertEqual(try db.episodes(EpisodeQuery(limit: 0)).count, 0)

        let withTurns = try db.episodes(EpisodeQuery(route: "/v1/chat/completions"))
        XCTAssertTrue(withTurns.allSatisfy { $0.id.hasSuffix("tie") || $0.turns.count == 1 })
        let lean = try db.episodes(EpisodeQuery(route: "/v1/chat/completions", includeTurns: false))
        XCTAssertTrue(lean.allSatisfy { $0.turns.isEmpty })
        XCTAssertEqual(lean.map(\.id), withTurns.map(\.id))

        XCTAssertThrowsError(try db.episodes(EpisodeQuery(limit: -1)))
        XCTAssertThrowsError(try db.episodes(EpisodeQuery(offset: -1)))
    }

    func testManyEpisodesTurnsAttachAcrossChunks() throws {
        let db = try TrafficDatabase.inMemory()
        let episodes = (0..<1_200).map { _ in makeEpisode(turns: 3) }
        try db.insert(episodes: episodes)
        let back = try db.episodes(EpisodeQuery())
        XCTAssertEqual(back, episodes)
    }

    func testFeedbackForeignKeyAndValidation() throws {
        let db = try TrafficDatabase.inMemory()
        let e = makeEpisode()
        try db.insert(episodes: [e])
        XCTAssertThrowsError(try db.insertFeedback(FeedbackRecord(episodeID: "no-such-episode", kind: "score", value: "1"))) {
            XCTAssertEqual($0 as? TrafficLogError, .unknownEpisode(id: "no-such-episode"))
        }
        XCTAssertThrowsError(try db.insertFeedback(FeedbackRecord(episodeID: e.id, kind: "thumbs", value: "up"))) {
            guard case .invalidField(_, "kind", "thumbs", _)? = $0 as? TrafficLogError else {
                return XCTFail("unexpected \($0)")
            }
        }
        XCTAssertThrowsError(try db.insertFeedback(FeedbackRecord(episodeID: e.id, kind: "score", value: "high"))) {
            guard case .invalidField(_, "value", _, _)? = $0 as? TrafficLogError else { return XCTFail("unexpected \($0)") }
        }
        let f1 = FeedbackRecord(episodeID: e.id, kind: "score", value: "0.9", source: "admin")
        let f2 = FeedbackRecord(episodeID: e.id, kind: "reference", value: "Paris")
        let id1 = try db.insertFeedback(f1)
        let id2 = try db.insertFeedback(f2)
        XCTAssertLessThan(id1, id2)
        var e1 = f1
        e1.id = id1
        var e2 = f2
        e2.id = id2
        XCTAssertEqual(try db.feedback(episodeID: e.id), [e1, e2])
        XCTAssertEqual(try db.feedback(episodeID: "other"), [])
    }

    func testInsertValidationAndDuplicates() throws {
        let db = try TrafficDatabase.inMemory()
        let e = makeEpisode()
        try db.insert(episodes: [e])
        XCTAssertTrue(try db.episodeExists(id: e.id))
        XCTAssertFalse(try db.episodeExists(id: "missing"))
        XCTAssertNil(try db.episode(id: "missing"))

        let other = makeEpisode()
        XCTAssertThrowsError(try db.insert(episodes: [other, e])) {
            XCTAssertEqual($0 as? TrafficLogError, .duplicateEpisode(id: e.id))
        }
        XCTAssertFalse(try db.episodeExists(id: other.id), "batch is all-or-nothing")

        var dupTurns = makeEpisode(turns: 2)
        dupTurns.turns[1].index = 0
        XCTAssertThrowsError(try db.insert(episodes: [dupTurns])) {
            XCTAssertEqual($0 as? TrafficLogError, .duplicateTurnIndex(episodeID: dupTurns.id, index: 0))
        }
        var badKind = makeEpisode(turns: 1)
        badKind.turns[0].kind = "tool"
        XCTAssertThrowsError(try db.insert(episodes: [badKind])) {
            guard case .invalidField(_, "kind", "tool", _)? = $0 as? TrafficLogError else { return XCTFail("unexpected \($0)") }
        }
        XCTAssertThrowsError(try db.insert(episodes: [EpisodeRecord(id: "", route: "/r")]))
        XCTAssertEqual(try db.episodeCount(), 1)
    }

    func testCorruptBlobIsReportedWithItsLocation() throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        let db = try TrafficDatabase(path: path)
        let e = makeEpisode(turns: 1)
        try db.insert(episodes: [e])
        let raw = try DatabaseQueue(path: path)
        try raw.write { try $0.execute(sql: "UPDATE turns SET logprobs = x'0102030405' WHERE episode_id = ?", arguments: [e.id]) }
        try raw.close()
        XCTAssertThrowsError(try db.episode(id: e.id)) {
            XCTAssertEqual(
                $0 as? TrafficLogError,
                .corruptBlob(episodeID: e.id, turnIndex: 0, column: "logprobs", byteCount: 5, elementSize: 4))
        }
    }

    func testPolicyVersions() throws {
        let db = try TrafficDatabase.inMemory()
        let t = Date(timeIntervalSince1970: 1_800_000_000)
        let a = PolicyVersionRecord(
            id: "pv-a", path: "/m/a", sha256: "aa", architecture: "qwen2",
            parameterCount: 494_032_768, loadedAt: t)
        let b = PolicyVersionRecord(
            id: "pv-b", path: "/m/b", sha256: "bb", architecture: "qwen2",
            parameterCount: 494_032_768, loadedAt: t.addingTimeInterval(10),
            parentID: "pv-a", manifestJSON: #"{"step":100}"#)
        try db.insertPolicyVersion(b)
        try db.insertPolicyVersion(a)
        XCTAssertEqual(try db.policyVersions(), [a, b])
        var reload = a
        reload.loadedAt = t.addingTimeInterval(20)
        reload.path = "/m/a2"
        try db.insertPolicyVersion(reload)
        XCTAssertEqual(try db.policyVersions(), [b, reload])
        var conflict = a
        conflict.sha256 = "cc"
        XCTAssertThrowsError(try db.insertPolicyVersion(conflict)) {
            XCTAssertEqual($0 as? TrafficLogError, .policyVersionConflict(id: "pv-a", existingSHA256: "aa", newSHA256: "cc"))
        }
    }

    func testFileModeIs0600EvenWithPermissiveUmask() throws {
        let tmp = try TempDir()
        let path = tmp.path("sub/dir/log.sqlite")
        let old = umask(0)
        defer { umask(old) }
        let db = try TrafficDatabase(path: path)
        try db.insert(episodes: [makeEpisode()])
        for file in [path, path + "-wal", path + "-shm"] {
            var st = stat()
            XCTAssertEqual(stat(file, &st), 0, "\(file) exists")
            XCTAssertEqual(st.st_mode & 0o777, 0o600, "\(file) mode \(String(st.st_mode & 0o777, radix: 8))")
        }
        var dirStat = stat()
        XCTAssertEqual(stat(tmp.path("sub/dir"), &dirStat), 0)
        XCTAssertEqual(dirStat.st_mode & 0o777, 0o700)

        // An existing world-readable file is tightened on open.
        let loose = tmp.path("loose.sqlite")
        XCTAssertTrue(FileManager.default.createFile(atPath: loose, contents: nil, attributes: [.posixPermissions: 0o644]))
        _ = try TrafficDatabase(path: loose)
        var st = stat()
        XCTAssertEqual(stat(loose, &st), 0)
        XCTAssertEqual(st.st_mode & 0o777, 0o600)
    }

    func testPragmas() throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("log.sqlite"))
        let (journal, sync, fk) = try db.writer.read { dbc in
            (
                try String.fetchOne(dbc, sql: "PRAGMA journal_mode"),
                try Int.fetchOne(dbc, sql: "PRAGMA synchronous"),
                try Int.fetchOne(dbc, sql: "PRAGMA foreign_keys")
            )
        }
        XCTAssertEqual(journal, "wal")
        XCTAssertEqual(sync, 1)  // NORMAL
        XCTAssertEqual(fk, 1)
        let writerSync = try db.writer.write { try Int.fetchOne($0, sql: "PRAGMA synchronous") }
        XCTAssertEqual(writerSync, 1)
    }

    /// Migration v4_policy_logprobs: the log-prob kind and whether the policy sampled round-trip,
    /// the column refuses anything but the enum's values, and a log written before v4 opens with
    /// its rows' kind unknown (NULL).
    func testPolicyLogprobKindIsStoredAsAnEnumColumn() throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        // A log as it was before v4: every migration up to v3_trainable, one row.
        do {
            let queue = try DatabaseQueue(path: path)
            try TrafficSchema.migrator().migrate(queue, upTo: "v3_trainable")
            try queue.write { db in
                try db.execute(
                    sql:
                        "INSERT INTO episodes (id, created_at, route, mode, stream, status, total_ms) VALUES ('old', 1, '/v1/chat/completions', 'collaborate', 0, 200, 1)"
                )
            }
            try queue.close()
        }
        let db = try TrafficDatabase(path: path)
        XCTAssertEqual(try db.appliedMigrations(), TrafficSchema.migrationNames)
        let old = try XCTUnwrap(try db.episode(id: "old"))
        XCTAssertNil(old.policyLogprobs)
        XCTAssertNil(old.policySampled)
        var rows: [EpisodeRecord] = []
        for (kind, sampled) in [(PolicyLogprobKind.model, true), (.sampling, true), (.model, false)] as [(PolicyLogprobKind, Bool)] {
            var e = makeEpisode(mode: "collaborate", policyVersion: "pv")
            e.policyLogprobs = kind
            e.policySampled = sampled
            rows.append(e)
        }
        try db.insert(episodes: rows)
        for e in rows { XCTAssertEqual(try db.episode(id: e.id), e) }
        try db.close()
        let raw = try DatabaseQueue(path: path)
        defer { try? raw.close() }
        let stored = try raw.read {
            try Row.fetchAll($0, sql: "SELECT policy_logprobs, policy_sampled FROM episodes WHERE id != 'old' ORDER BY rowid")
        }
        XCTAssertEqual(stored.map { $0[0] as String? }, ["model", "sampling", "model"])
        XCTAssertEqual(stored.map { $0[1] as Int? }, [1, 1, 0])
        XCTAssertThrowsError(
            try raw.write { try $0.execute(sql: "UPDATE episodes SET policy_logprobs = 'raw' WHERE id = 'old'") },
            "only the enum's values")
    }

    func testReopenKeepsDataAndMigrationsAreIdempotent() throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        let e = makeEpisode()
        do {
            let db = try TrafficDatabase(path: path)
            try db.insert(episodes: [e])
            try db.insertFeedback(FeedbackRecord(episodeID: e.id, kind: "label", value: "x"))
            XCTAssertEqual(try db.appliedMigrations(), TrafficSchema.migrationNames)
            try db.checkpoint()
            try db.close()
        }
        for _ in 0..<2 {
            let db = try TrafficDatabase(path: path)
            XCTAssertEqual(try db.appliedMigrations(), TrafficSchema.migrationNames)
            XCTAssertEqual(try db.episode(id: e.id), e)
            XCTAssertEqual(try db.feedback(episodeID: e.id).count, 1)
            try db.close()
        }
        XCTAssertEqual(try rawCount(path, "SELECT COUNT(*) FROM grdb_migrations"), TrafficSchema.migrationNames.count)
    }

    func testDeleteCascadesToTurnsAndFeedbackInChunks() throws {
        let tmp = try TempDir()
        let path = tmp.path("log.sqlite")
        let db = try TrafficDatabase(path: path)
        let old = Date(timeIntervalSince1970: 1_700_000_000)
        let oldEpisodes = (0..<2_500).map { i in makeEpisode(createdAt: old.addingTimeInterval(Double(i)), turns: i < 10 ? 2 : 0) }
        let fresh = (0..<5).map { _ in makeEpisode(createdAt: Date(), turns: 2) }
        try db.insert(episodes: oldEpisodes + fresh)
        for e in oldEpisodes.prefix(10) + fresh {
            try db.insertFeedback(FeedbackRecord(episodeID: e.id, kind: "score", value: "1"))
        }
        XCTAssertEqual(try rawCount(path, "SELECT COUNT(*) FROM turns"), 30)
        let deleted = try db.deleteEpisodes(olderThan: Date(timeIntervalSince1970: 1_750_000_000))
        XCTAssertEqual(deleted, 2_500)
        XCTAssertEqual(try db.episodeCount(), 5)
        XCTAssertEqual(try rawCount(path, "SELECT COUNT(*) FROM turns"), 10)
        XCTAssertEqual(try rawCount(path, "SELECT COUNT(*) FROM feedback"), 5)
        XCTAssertEqual(try rawCount(path, "SELECT COUNT(*) FROM turns WHERE episode_id NOT IN (SELECT id FROM episodes)"), 0)
        XCTAssertEqual(try db.deleteEpisodes(olderThan: Date(timeIntervalSince1970: 1_750_000_000)), 0)
    }
}
