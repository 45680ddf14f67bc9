import Foundation

/// Which database holds the traffic log.
public enum LogBackendKind: String, Sendable, CaseIterable, Codable {
    /// One SQLite file (GRDB): the embedded default for one machine.
    case sqlite
    /// A PostgreSQL server shared by several gateway replicas (postgres-nio).
    case postgres
}

/// Where the traffic log lives: a SQLite file path or a `postgres://` URL.
///
/// A URL carries the password: `description` never shows it (use `redacted`), so a location can
/// be logged or printed safely.
public enum LogLocation: Sendable, Equatable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(url: String)

    /// `postgres://` or `postgresql://` is PostgreSQL; anything else is a SQLite path.
    public init(_ text: String) {
        let lower = text.lowercased()
        if lower.hasPrefix("postgres://") || lower.hasPrefix("postgresql://") {
            self = .postgres(url: text)
        } else {
            self = .sqlite(path: text)
        }
    }

    public var kind: LogBackendKind {
        switch self {
        case .sqlite: return .sqlite
        case .postgres: return .postgres
        }
    }

    /// The location without its password (`postgres://user:***@host:port/db`).
    public var redacted: String {
        switch self {
        case .sqlite(let path): return path
        case .postgres(let url): return Self.redact(url)
        }
    }

    public var description: String { redacted }

    /// `url` with the password part of its userinfo replaced by `***`, and every query value
    /// named `password` too.
    public static func redact(_ url: String) -> String {
        guard let scheme = url.range(of: "://") else { return url }
        var rest = String(url[scheme.upperBound...])
        let head = String(url[..<scheme.upperBound])
        // userinfo ends at the LAST '@' before the path (a password may contain '@').
        let pathStart = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        let authority = rest[..<pathStart]
        if let at = authority.lastIndex(of: "@") {
            let userinfo = authority[..<at]
            if let colon = userinfo.firstIndex(of: ":") {
                rest = String(userinfo[..<colon]) + ":***" + String(rest[at...])
            }
        }
        if let q = rest.firstIndex(of: "?") {
            let query = rest[rest.index(after: q)...].split(separator: "&").map { part -> String in
                part.lowercased().hasPrefix("password=") ? "password=***" : String(part)
            }
            rest = String(rest[...q]) + query.joined(separator: "&")
        }
        return head + rest
    }
}

/// A row of `policy_events`: the fleet's serving policy version over time. The latest row is
/// the version every replica sharing the log serves.
public struct PolicyEventRecord: Sendable, Equatable {
    /// What put the version in place.
    public enum Action: String, Sendable, CaseIterable {
        /// The first replica to start with a policy, on a log that had none yet.
        case start
        /// `POST /admin/policy` on some replica.
        case swap
        /// `POST /admin/policy/rollback` on some replica.
        case rollback
    }

    /// Assigned by the database (increasing); nil before insert.
    public var seq: Int64?
    public var versionID: String
    /// The checkpoint folder as given to the admin API: relative to `admin.models_dir` when it
    /// is inside it, so that each replica resolves it under its own models directory.
    public var path: String
    public var action: Action
    /// Which replica recorded it (host:port of its listener, or a name).
    public var replica: String?
    public var createdAt: Date { didSet { createdAt = TrafficTime.normalized(createdAt) } }

    public init(
        seq: Int64? = nil, versionID: String, path: String, action: Action, replica: String? = nil,
        createdAt: Date = Date()
    ) {
        self.seq = seq
        self.versionID = versionID
        self.path = path
        self.action = action
        self.replica = replica
        self.createdAt = TrafficTime.normalized(createdAt)
    }
}

/// The traffic log as the gateway uses it, whatever database holds it: the log writer's
/// batched inserts, feedback, policy versions and the fleet's policy events, retention, the
/// read API of the web console, and a reachability check for `/ready`.
///
/// Every method is safe to call from an event loop: none blocks its caller's thread for I/O,
/// except `insertBatch` on SQLite, which the log writer calls on its own thread on purpose.
/// Both implementations (`SQLiteLogBackend`, and `PostgresLogBackend` in TrafficLogPostgres)
/// have the same schema, the same validation and the same errors (`TrafficLogError`).
public protocol LogBackend: AnyObject, Sendable {
    var kind: LogBackendKind { get }
    /// Where it is, without secrets (safe to log).
    var location: String { get }

    /// Inserts `episodes` and their turns in ONE transaction (all or nothing).
    func insertBatch(_ episodes: [EpisodeRecord]) async throws
    /// True when retrying `error` (thrown by `insertBatch`) cannot succeed for this record.
    func isPermanent(_ error: any Error) -> Bool

    /// Inserts one episode and its feedback rows atomically (trainer rollouts).
    func insert(episode: EpisodeRecord, feedback: [FeedbackRecord]) async throws
    func episode(id: String) async throws -> EpisodeRecord?
    func episodes(_ query: EpisodeQuery) async throws -> [EpisodeRecord]
    func count(_ query: EpisodeQuery) async throws -> Int
    func episodeExists(id: String) async throws -> Bool
    func episodeCountsByQuestion(route: String) async throws -> [String: Int]
    /// The web console's listing: filters, newest first, keyset pagination.
    /// The web console's episode list: newest first, keyset pages (types in ConsoleReads.swift).
    func consoleEpisodes(_ filter: ConsoleFilter, after: ConsoleCursor?, limit: Int) async throws -> ConsolePage
    /// The console's overview: requests, errors, latency percentiles, outcomes and rewards since `since`.
    func consoleOverview(since: Date, bucketSeconds: Int, sampleSize: Int) async throws -> ConsoleOverview
    /// Episodes, first and last use per policy version.
    func consoleVersionUsage() async throws -> [VersionUsage]
    /// Collaboration episodes with a reward source, per route and policy version.
    func consoleTrainingCounts() async throws -> [TrainingDataCount]
    /// Retention: deletes episodes created before `cutoff` (turns and feedback cascade).
    func deleteEpisodes(olderThan cutoff: Date) async throws -> Int

    @discardableResult
    func insertFeedback(_ f: FeedbackRecord) async throws -> Int64
    func feedback(episodeID: String) async throws -> [FeedbackRecord]
    func feedback(episodeIDs: [String]) async throws -> [String: [FeedbackRecord]]

    func insertPolicyVersion(_ v: PolicyVersionRecord) async throws
    func policyVersions() async throws -> [PolicyVersionRecord]

    /// Appends a policy event (and, on PostgreSQL, notifies the other replicas); returns it
    /// with its `seq`.
    func recordPolicyEvent(_ event: PolicyEventRecord) async throws -> PolicyEventRecord
    /// Appends `event` only if the log has no policy event yet; returns the latest event
    /// either way (the one inserted, or the one that was already there).
    func recordFirstPolicyEvent(_ event: PolicyEventRecord) async throws -> PolicyEventRecord
    /// The fleet's current version: the latest policy event.
    func latestPolicyEvent() async throws -> PolicyEventRecord?
    /// Most recent first.
    func policyEvents(limit: Int) async throws -> [PolicyEventRecord]
    /// Sequence numbers of policy events recorded by any replica, as they are notified
    /// (PostgreSQL LISTEN/NOTIFY); nil when the backend has no notifications (poll instead).
    /// The stream ends when the connection is lost: call again to listen again.
    func policyEventNotifications() async throws -> AsyncThrowingStream<Int64, any Error>?

    /// Throws unless the database answers a trivial query within `timeout`.
    func ping(timeout: Duration) async throws
    /// Names of the applied migrations, in order.
    func appliedMigrations() async throws -> [String]
    /// After a graceful shutdown: flushes what the database buffers (SQLite: WAL checkpoint).
    func checkpoint() async throws
    /// Closes the connections; further calls throw.
    func close() async throws
}

extension LogBackend {
    public func episodeCount() async throws -> Int { try await count(EpisodeQuery()) }
}

/// The synchronous part of the log the trainer and the command-line tools use. They run on
/// their own threads (never an event loop), so blocking calls keep their code plain.
/// `TrafficDatabase` is one; `BlockingLogStore` makes one of any `LogBackend`.
public protocol LogStore: Sendable {
    func insert(episode: EpisodeRecord, feedback: [FeedbackRecord]) throws
    func episode(id: String) throws -> EpisodeRecord?
    func episodes(_ query: EpisodeQuery) throws -> [EpisodeRecord]
    func count(_ query: EpisodeQuery) throws -> Int
    func feedback(episodeIDs: [String]) throws -> [String: [FeedbackRecord]]
    func episodeCountsByQuestion(route: String) throws -> [String: Int]
    @discardableResult
    func insertFeedback(_ f: FeedbackRecord) throws -> Int64
    func policyVersions() throws -> [PolicyVersionRecord]
}

extension TrafficDatabase: LogStore {}

/// A `LogStore` over any `LogBackend`: each call runs the backend's async method on a thread
/// of its own and blocks the caller until it is done. For the trainer and tools, which run on
/// plain threads; never call it from an event loop.
public final class BlockingLogStore: LogStore {
    public let backend: any LogBackend
    private let thread: WriterThread

    public init(_ backend: any LogBackend) {
        self.backend = backend
        thread = WriterThread(name: "log-store")
    }

    /// Opens a backend with `open` (run on the store's own thread) and wraps it.
    public init(opening open: @escaping @Sendable () async throws -> any LogBackend) throws {
        let thread = WriterThread(name: "log-store")
        do {
            backend = try Self.run(on: thread, open)
        } catch {
            thread.stop()
            throw error
        }
        self.thread = thread
    }

    deinit { thread.stop() }

    /// Runs `body` to completion on the store's thread and returns its result.
    public func run<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) throws -> T {
        try Self.run(on: thread, body)
    }

    private static func run<T: Sendable>(on thread: WriterThread, _ body: @escaping @Sendable () async throws -> T) throws -> T {
        let box = Locked<Result<T, any Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task(executorPreference: thread) {
            let r: Result<T, any Error>
            do { r = .success(try await body()) } catch { r = .failure(error) }
            box.withLock { $0 = r }
            done.signal()
        }
        done.wait()
        return try box.withLock { $0! }.get()
    }

    public func insert(episode: EpisodeRecord, feedback: [FeedbackRecord]) throws {
        let b = backend
        try run { try await b.insert(episode: episode, feedback: feedback) }
    }
    public func episode(id: String) throws -> EpisodeRecord? {
        let b = backend
        return try run { try await b.episode(id: id) }
    }
    public func episodes(_ query: EpisodeQuery) throws -> [EpisodeRecord] {
        let b = backend
        return try run { try await b.episodes(query) }
    }
    public func count(_ query: EpisodeQuery) throws -> Int {
        let b = backend
        return try run { try await b.count(query) }
    }
    public func feedback(episodeIDs: [String]) throws -> [String: [FeedbackRecord]] {
        let b = backend
        return try run { try await b.feedback(episodeIDs: episodeIDs) }
    }
    public func episodeCountsByQuestion(route: String) throws -> [String: Int] {
        let b = backend
        return try run { try await b.episodeCountsByQuestion(route: route) }
    }
    @discardableResult
    public func insertFeedback(_ f: FeedbackRecord) throws -> Int64 {
        let b = backend
        return try run { try await b.insertFeedback(f) }
    }
    public func policyVersions() throws -> [PolicyVersionRecord] {
        let b = backend
        return try run { try await b.policyVersions() }
    }
    /// Closes the backend.
    public func close() throws {
        let b = backend
        try run { try await b.close() }
    }
}
