import Foundation
import GRDB

// The SQLite side of `LogBackend`: the web console's listing and the fleet's policy events as
// synchronous `TrafficDatabase` methods, and `SQLiteLogBackend`, which calls them off the
// caller's thread.
extension TrafficDatabase {
    static func decodePolicyEvent(_ r: Row) -> PolicyEventRecord {
        PolicyEventRecord(
            seq: r[0], versionID: r[1], path: r[2],
            action: PolicyEventRecord.Action(rawValue: r[3]) ?? .swap, replica: r[4],
            createdAt: TrafficTime.date(r[5]))
    }

    static let policyEventColumns = "seq, version_id, path, action, replica, created_at"

    /// Appends a policy event; returns it with its `seq`.
    public func recordPolicyEvent(_ e: PolicyEventRecord) throws -> PolicyEventRecord {
        try writer.write { db in
            try db.execute(
                sql: "INSERT INTO policy_events (version_id, path, action, replica, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [e.versionID, e.path, e.action.rawValue, e.replica, TrafficTime.databaseValue(e.createdAt)])
            var out = e
            out.seq = db.lastInsertedRowID
            return out
        }
    }

    /// Appends `e` only when there is no policy event yet; returns the latest event.
    public func recordFirstPolicyEvent(_ e: PolicyEventRecord) throws -> PolicyEventRecord {
        try writer.write { db in
            if let r = try Row.fetchOne(db, sql: "SELECT \(Self.policyEventColumns) FROM policy_events ORDER BY seq DESC LIMIT 1") {
                return Self.decodePolicyEvent(r)
            }
            try db.execute(
                sql: "INSERT INTO policy_events (version_id, path, action, replica, created_at) VALUES (?, ?, ?, ?, ?)",
                arguments: [e.versionID, e.path, e.action.rawValue, e.replica, TrafficTime.databaseValue(e.createdAt)])
            var out = e
            out.seq = db.lastInsertedRowID
            return out
        }
    }

    /// Most recent first.
    public func policyEvents(limit: Int) throws -> [PolicyEventRecord] {
        try writer.read { db in
            try Row.fetchAll(
                db, sql: "SELECT \(Self.policyEventColumns) FROM policy_events ORDER BY seq DESC LIMIT ?",
                arguments: [max(0, limit)]
            ).map(Self.decodePolicyEvent)
        }
    }

    public func latestPolicyEvent() throws -> PolicyEventRecord? { try policyEvents(limit: 1).first }

    /// A trivial query (the file is still there and readable).
    public func ping() throws {
        _ = try writer.read { db in try Int.fetchOne(db, sql: "SELECT 1") }
    }
}

/// `LogBackend` over a SQLite `TrafficDatabase`. `insertBatch` runs on the caller's thread (the
/// log writer's own thread: a commit is tens of microseconds, and two thread hops per commit
/// would cost more than the commit); every other call runs on a utility queue so an event loop
/// never waits for SQLite.
public final class SQLiteLogBackend: LogBackend {
    public let database: TrafficDatabase
    public var kind: LogBackendKind { .sqlite }
    public var location: String { database.path }
    private static let queue = DispatchQueue(label: "traffic-log.sqlite", qos: .userInitiated, attributes: .concurrent)

    public init(_ database: TrafficDatabase) { self.database = database }

    /// Opens (creating and migrating) the file at `path`.
    public convenience init(path: String) throws { self.init(try TrafficDatabase(path: path)) }

    private func off<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<T, any Error>) in
            Self.queue.async {
                do { c.resume(returning: try body()) } catch { c.resume(throwing: error) }
            }
        }
    }

    public func insertBatch(_ episodes: [EpisodeRecord]) async throws { try database.insert(episodes: episodes) }

    public func isPermanent(_ error: any Error) -> Bool {
        if error is TrafficLogError { return true }
        if let db = error as? DatabaseError {
            switch db.resultCode {
            case .SQLITE_CONSTRAINT, .SQLITE_TOOBIG, .SQLITE_MISMATCH, .SQLITE_RANGE: return true
            default: return false
            }
        }
        return false
    }

    public func insert(episode: EpisodeRecord, feedback: [FeedbackRecord]) async throws {
        let db = database
        try await off { try db.insert(episode: episode, feedback: feedback) }
    }
    public func episode(id: String) async throws -> EpisodeRecord? {
        let db = database
        return try await off { try db.episode(id: id) }
    }
    public func episodes(_ query: EpisodeQuery) async throws -> [EpisodeRecord] {
        let db = database
        return try await off { try db.episodes(query) }
    }
    public func count(_ query: EpisodeQuery) async throws -> Int {
        let db = database
        return try await off { try db.count(query) }
    }
    public func episodeExists(id: String) async throws -> Bool {
        let db = database
        return try await off { try db.episodeExists(id: id) }
    }
    public func episodeCountsByQuestion(route: String) async throws -> [String: Int] {
        let db = database
        return try await off { try db.episodeCountsByQuestion(route: route) }
    }
    public func consoleEpisodes(_ filter: ConsoleFilter, after: ConsoleCursor?, limit: Int) async throws -> ConsolePage {
        let db = database
        return try await off { try db.consoleEpisodes(filter, after: after, limit: limit) }
    }
    public func consoleOverview(since: Date, bucketSeconds: Int, sampleSize: Int) async throws -> ConsoleOverview {
        let db = database
        return try await off { try db.consoleOverview(since: since, bucketSeconds: bucketSeconds, sampleSize: sampleSize) }
    }
    public func consoleVersionUsage() async throws -> [VersionUsage] {
        let db = database
        return try await off { try db.consoleVersionUsage() }
    }
    public func consoleTrainingCounts() async throws -> [TrainingDataCount] {
        let db = database
        return try await off { try db.consoleTrainingCounts() }
    }
    public func deleteEpisodes(olderThan cutoff: Date) async throws -> Int {
        let db = database
        return try await off { try db.deleteEpisodes(olderThan: cutoff) }
    }
    @discardableResult
    public func insertFeedback(_ f: FeedbackRecord) async throws -> Int64 {
        let db = database
        return try await off { try db.insertFeedback(f) }
    }
    public func feedback(episodeID: String) async throws -> [FeedbackRecord] {
        let db = database
        return try await off { try db.feedback(episodeID: episodeID) }
    }
    public func feedback(episodeIDs: [String]) async throws -> [String: [FeedbackRecord]] {
        let db = database
        return try await off { try db.feedback(episodeIDs: episodeIDs) }
    }
    public func insertPolicyVersion(_ v: PolicyVersionRecord) async throws {
        let db = database
        try await off { try db.insertPolicyVersion(v) }
    }
    public func policyVersions() async throws -> [PolicyVersionRecord] {
        let db = database
        return try await off { try db.policyVersions() }
    }
    public func recordPolicyEvent(_ event: PolicyEventRecord) async throws -> PolicyEventRecord {
        let db = database
        return try await off { try db.recordPolicyEvent(event) }
    }
    public func recordFirstPolicyEvent(_ event: PolicyEventRecord) async throws -> PolicyEventRecord {
        let db = database
        return try await off { try db.recordFirstPolicyEvent(event) }
    }
    public func latestPolicyEvent() async throws -> PolicyEventRecord? {
        let db = database
        return try await off { try db.latestPolicyEvent() }
    }
    public func policyEvents(limit: Int) async throws -> [PolicyEventRecord] {
        let db = database
        return try await off { try db.policyEvents(limit: limit) }
    }
    /// SQLite has no notifications: replicas on one file poll.
    public func policyEventNotifications() async throws -> AsyncThrowingStream<Int64, any Error>? { nil }
    public func ping(timeout: Duration) async throws {
        let db = database
        try await off { try db.ping() }
    }
    public func appliedMigrations() async throws -> [String] {
        let db = database
        return try await off { try db.appliedMigrations() }
    }
    public func checkpoint() async throws {
        let db = database
        try await off { try db.checkpoint() }
    }
    public func close() async throws {
        let db = database
        try await off { try db.close() }
    }
}
