import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import PromptR1
import Synchronization
import TrafficLog

/// Errors of the PostgreSQL backend besides `TrafficLogError`. Their descriptions never hold
/// the password, statement arguments or row values.
public enum PostgresLogError: Error, CustomStringConvertible, Equatable {
    /// The URL could not be used (the reason never quotes the password).
    case invalidURL(reason: String)
    /// The server did not answer within the time given.
    case timeout(operation: String, seconds: Double)
    /// The backend was closed.
    case closed
    /// An error the server reported: its SQLSTATE, the constraint (if any) and its message.
    case server(sqlState: String, constraint: String?, message: String)
    /// Any other database or connection error.
    case database(String)

    public var description: String {
        switch self {
        case .invalidURL(let r): return "invalid PostgreSQL URL: \(r)"
        case .timeout(let op, let s): return "PostgreSQL did not answer \(op) within \(s) s"
        case .closed: return "the PostgreSQL traffic log is closed"
        case .server(let state, _, let message): return "PostgreSQL error SQLSTATE \(state): \(message)"
        case .database(let s): return s
        }
    }

    /// A short, secret-free description of any error the client throws.
    static func describe(_ error: any Error) -> String {
        if let e = error as? PSQLError {
            var parts = ["PostgreSQL error \(e.code)"]
            if let state = e.serverInfo?[.sqlState] { parts.append("SQLSTATE \(state)") }
            if let msg = e.serverInfo?[.message] { parts.append(String(msg.prefix(200))) }
            if let u = e.underlying { parts.append("(\(String(describing: u).prefix(200)))") }
            return parts.joined(separator: ": ")
        }
        if let e = error as? PostgresTransactionError {
            let inner = e.closureError ?? e.beginError ?? e.commitError ?? e.rollbackError
            return inner.map(describe) ?? "PostgreSQL transaction failed"
        }
        return String(describing: error)
    }
}

/// Connection settings read from a `postgres://user:password@host:port/database?sslmode=...`
/// URL. `host` may be a unix-socket directory given as `?host=/path` (libpq's convention).
struct PostgresURL {
    var configuration: PostgresClient.Configuration

    init(_ text: String) throws {
        guard let c = URLComponents(string: text), let scheme = c.scheme?.lowercased(), ["postgres", "postgresql"].contains(scheme) else {
            throw PostgresLogError.invalidURL(reason: "expected postgres://user:password@host:port/database (\(LogLocation.redact(text)))")
        }
        let items = Dictionary((c.queryItems ?? []).map { ($0.name.lowercased(), $0.value ?? "") }, uniquingKeysWith: { $1 })
        let user = c.user.flatMap { $0.removingPercentEncoding } ?? items["user"] ?? "postgres"
        let password = c.password.flatMap { $0.removingPercentEncoding } ?? items["password"]
        var database = c.path.hasPrefix("/") ? String(c.path.dropFirst()) : c.path
        database = database.removingPercentEncoding ?? database
        if let d = items["dbname"], database.isEmpty { database = d }
        let port = c.port ?? Int(items["port"] ?? "") ?? 5432
        let socketDir =
            items["host"].flatMap { $0.hasPrefix("/") ? $0 : nil }
            ?? c.host.flatMap { h -> String? in
                let decoded = h.removingPercentEncoding ?? h
                return decoded.hasPrefix("/") ? decoded : nil
            }
        if let dir = socketDir {
            configuration = .init(
                unixSocketPath: dir + "/.s.PGSQL.\(port)", username: user, password: password,
                database: database.isEmpty ? nil : database)
        } else {
            let host = (c.host?.isEmpty == false ? c.host : items["host"]) ?? "localhost"
            let tls: PostgresClient.Configuration.TLS
            switch (items["sslmode"] ?? "prefer").lowercased() {
            case "disable": tls = .disable
            case "allow", "prefer": tls = .prefer(.makeClientConfiguration())
            case "require":
                var t = TLSConfiguration.makeClientConfiguration()
                t.certificateVerification = .none
                tls = .require(t)
            case "verify-ca", "verify-full": tls = .require(.makeClientConfiguration())
            case let other: throw PostgresLogError.invalidURL(reason: "unknown sslmode '\(other)'")
            }
            configuration = .init(
                host: host, port: port, username: user, password: password,
                database: database.isEmpty ? nil : database, tls: tls)
        }
        configuration.options.connectTimeout = .seconds(5)
    }
}

/// The traffic log in a PostgreSQL database, shared by every gateway replica and the trainer.
///
/// - Opening applies the migrations (PostgresSchema) under an advisory lock.
/// - `insertBatch` writes a batch as one multi-row INSERT per table, in one transaction.
/// - Connections come from postgres-nio's pool. A lost server makes calls throw (the log
///   writer retries with backoff, its queue applies backpressure); the pool reconnects once
///   the server is back.
/// - The password is never logged: `location` is the URL without it.
public final class PostgresLogBackend: LogBackend {
    public var kind: LogBackendKind { .postgres }
    public let location: String
    let client: PostgresClient
    private let runTask: Task<Void, Never>
    private let logger: Logger
    private let closed = Mutex(false)
    private let migrated = Mutex(false)

    /// Connects to `url`, applies pending migrations and returns the backend. Throws (after
    /// `connectTimeout`) when the server cannot be reached.
    public static func open(url: String, logger: Logger, connectTimeout: Duration = .seconds(10)) async throws -> PostgresLogBackend {
        let backend = try PostgresLogBackend(url: url, logger: logger)
        do {
            try await Self.withTimeout(connectTimeout, "the migrations") { try await backend.ensureMigrated() }
        } catch {
            try? await backend.close()
            throw error
        }
        return backend
    }

    /// A backend that connects on first use: the gateway starts while the database is down
    /// (`/ready` says so, the log writer's queue holds the episodes and retries). Every call
    /// first applies the pending migrations, once, under the advisory lock. Throws only for a
    /// URL it cannot use.
    public init(url: String, logger: Logger) throws {
        let settings = try PostgresURL(url)
        location = LogLocation.redact(url)
        self.logger = logger
        // The client's own background logging stays quiet: it may describe connection
        // parameters. Failures reach our log through the errors they throw.
        client = PostgresClient(configuration: settings.configuration)
        let client = self.client
        runTask = Task { await client.run() }
    }

    // MARK: - Plumbing

    private func checkOpen() throws {
        if closed.withLock({ $0 }) { throw PostgresLogError.closed }
    }

    /// Applies pending migrations unless that already succeeded. Concurrent first calls each
    /// run them; the advisory lock makes all but the first find nothing to do.
    func ensureMigrated() async throws {
        if migrated.withLock({ $0 }) { return }
        try await migrate()
        migrated.withLock { $0 = true }
    }

    /// `body` within `timeout`, or `PostgresLogError.timeout`. Returns at the deadline even
    /// if `body` does not react to cancellation (a connection attempt in progress): it is
    /// cancelled and left to finish on its own.
    static func withTimeout<T: Sendable>(
        _ timeout: Duration, _ operation: String,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let once = ResumeOnce<T>()
        let c = timeout.components
        let seconds = Double(c.seconds) + Double(c.attoseconds) / 1e18
        return try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
            once.set(cont)
            let work = Task {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                once.take()?.resume(with: result)
            }
            Task {
                try? await Task.sleep(for: timeout)
                if let c = once.take() {
                    work.cancel()
                    c.resume(throwing: PostgresLogError.timeout(operation: operation, seconds: seconds))
                }
            }
        }
    }

    @discardableResult
    func query(_ sql: String, _ binds: PostgresBindings = PostgresBindings()) async throws -> [PostgresRow] {
        try checkOpen()
        try await ensureMigrated()
        do {
            let rows = try await client.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
            var out: [PostgresRow] = []
            for try await r in rows { out.append(r) }
            return out
        } catch {
            throw Self.mapped(error)
        }
    }

    private func transaction<T: Sendable>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        try checkOpen()
        try await ensureMigrated()
        do {
            return try await client.withTransaction(logger: logger) { conn in try await body(conn) }
        } catch {
            throw Self.mapped(error)
        }
    }

    /// Our errors pass through; a database error becomes `PostgresLogError.database`, keeping
    /// the SQLSTATE (constraint violations are mapped where they are caught).
    static func mapped(_ error: any Error) -> any Error {
        if let e = error as? PostgresTransactionError, let inner = e.closureError, inner is TrafficLogError { return inner }
        if error is TrafficLogError || error is PostgresLogError { return error }
        if let state = sqlState(error) {
            var message = "database error"
            if let e = error as? PSQLError, let m = e.serverInfo?[.message] { message = String(m.prefix(200)) }
            if let e = error as? PostgresTransactionError, let inner = (e.closureError ?? e.commitError) as? PSQLError,
                let m = inner.serverInfo?[.message]
            {
                message = String(m.prefix(200))
            }
            return PostgresLogError.server(sqlState: state, constraint: constraint(error), message: message)
        }
        return PostgresLogError.database(PostgresLogError.describe(error))
    }

    static func sqlState(_ error: any Error) -> String? {
        if case .server(let state, _, _) = error as? PostgresLogError { return state }
        if let e = error as? PSQLError { return e.serverInfo?[.sqlState] }
        if let e = error as? PostgresTransactionError, let inner = e.closureError ?? e.commitError { return sqlState(inner) }
        return nil
    }

    static func constraint(_ error: any Error) -> String? {
        if case .server(_, let c, _) = error as? PostgresLogError { return c }
        if let e = error as? PSQLError { return e.serverInfo?[.constraintName] }
        if let e = error as? PostgresTransactionError, let inner = e.closureError ?? e.commitError { return constraint(inner) }
        return nil
    }

    private static func run(
        _ conn: PostgresConnection, _ sql: String, _ binds: PostgresBindings = PostgresBindings(),
        logger: Logger
    ) async throws -> [PostgresRow] {
        let rows = try await conn.query(PostgresQuery(unsafeSQL: sql, binds: binds), logger: logger)
        var out: [PostgresRow] = []
        for try await r in rows { out.append(r) }
        return out
    }

    // MARK: - Migrations

    private func migrate() async throws {
        let logger = self.logger
        try checkOpen()
        do {
            try await client.withTransaction(logger: logger) { conn in
                // Held until this transaction ends: replicas starting together take turns.
                var lock = PostgresBindings()
                lock.append(PostgresSchema.migrationLockKey)
                _ = try await Self.run(conn, "SELECT pg_advisory_xact_lock($1)", lock, logger: logger)
                _ = try await Self.run(
                    conn,
                    """
                    CREATE TABLE IF NOT EXISTS schema_migrations (
                        name TEXT PRIMARY KEY NOT NULL, applied_at DOUBLE PRECISION NOT NULL)
                    """, logger: logger)
                var applied = Set<String>()
                for r in try await Self.run(conn, "SELECT name FROM schema_migrations", logger: logger) {
                    applied.insert(try r.makeRandomAccess()[0].decode(String.self))
                }
                for m in PostgresSchema.migrations where !applied.contains(m.name) {
                    for statement in m.statements { _ = try await Self.run(conn, statement, logger: logger) }
                    var b = PostgresBindings()
                    b.append(m.name)
                    b.append(Date().timeIntervalSince1970)
                    _ = try await Self.run(conn, "INSERT INTO schema_migrations (name, applied_at) VALUES ($1, $2)", b, logger: logger)
                    logger.notice("traffic log migration applied", metadata: ["migration": "\(m.name)", "backend": "postgres"])
                }
            }
        } catch {
            throw Self.mapped(error)
        }
    }

    public func appliedMigrations() async throws -> [String] {
        let rows = try await query("SELECT name FROM schema_migrations")
        let names = Set(try rows.map { try $0.makeRandomAccess()[0].decode(String.self) })
        // In the order they were registered.
        return PostgresSchema.migrationNames.filter(names.contains) + names.subtracting(PostgresSchema.migrationNames).sorted()
    }

    // MARK: - Episodes

    static let episodeColumnList = """
        id, created_at, route, mode, key_id, requested_model, upstream_model, policy_version, stream,
        request_json, response_text, finish_reason, prompt_tokens, completion_tokens, total_tokens,
        policy_tokens, status, outcome, error, question, format_score, total_ms, upstream_ms, overhead_ms,
        trainable, policy_logprobs, policy_sampled
        """
    static let episodeColumnCount = 27
    static let turnColumnList = """
        episode_id, idx, kind, input_ids, output_ids, logprobs, loss_mask, text, call, upstream_request,
        upstream_response, latency_ms, prompt_tokens, completion_tokens, status, error
        """
    static let turnColumnCount = 16
    /// PostgreSQL takes at most 65,535 parameters per statement.
    static let maxParameters = 65_535

    /// PostgreSQL's TEXT cannot hold U+0000 (SQLite's can). A NUL a client sent would make the
    /// whole episode fail to store, so it is stored as U+FFFD instead (the only change made to
    /// any stored text).
    @inline(__always)
    static func text(_ s: String?) -> String? {
        guard let s, s.utf8.contains(0) else { return s }
        return s.replacingOccurrences(of: "\u{0}", with: "\u{FFFD}")
    }

    static func bind(_ e: EpisodeRecord, into b: inout PostgresBindings) {
        b.append(e.id)
        b.append(TrafficTime.databaseValue(e.createdAt))
        b.append(text(e.route))
        b.append(text(e.mode))
        b.append(text(e.keyID))
        b.append(text(e.requestedModel))
        b.append(text(e.upstreamModel))
        b.append(text(e.policyVersion))
        b.append(e.stream)
        b.append(text(e.requestJSON))
        b.append(text(e.responseText))
        b.append(text(e.finishReason))
        b.append(e.promptTokens)
        b.append(e.completionTokens)
        b.append(e.totalTokens)
        b.append(e.policyTokens)
        b.append(e.status)
        b.append(text(e.outcome))
        b.append(text(e.error))
        b.append(text(e.question))
        b.append(e.formatScore)
        b.append(e.totalMs)
        b.append(e.upstreamMs)
        b.append(e.overheadMs)
        b.append(e.trainable)
        b.append(e.policyLogprobs?.rawValue)
        b.append(e.policySampled)
    }

    static func bind(_ t: TurnRecord, episodeID: String, into b: inout PostgresBindings) throws {
        b.append(episodeID)
        b.append(t.index)
        b.append(t.kind)
        try b.append(t.inputIDs.map { BlobCoding.encode($0) })
        try b.append(t.outputIDs.map { BlobCoding.encode($0) })
        try b.append(t.logprobs.map { BlobCoding.encode($0) })
        try b.append(t.lossMask.map { BlobCoding.encode($0) })
        b.append(text(t.text))
        b.append(text(t.call))
        b.append(text(t.upstreamRequest))
        b.append(text(t.upstreamResponse))
        b.append(t.latencyMs)
        b.append(t.promptTokens)
        b.append(t.completionTokens)
        b.append(t.status)
        b.append(text(t.error))
    }

    /// `VALUES ($1, ..., $n), (...)` for `rows` rows of `columns` parameters.
    static func valuesClause(rows: Int, columns: Int) -> String {
        var s = "VALUES "
        s.reserveCapacity(rows * columns * 5)
        var p = 1
        for r in 0..<rows {
            if r > 0 { s += ", " }
            s += "("
            for c in 0..<columns {
                if c > 0 { s += ", " }
                s += "$\(p)"
                p += 1
            }
            s += ")"
        }
        return s
    }

    /// Inserts the rows of `episodes` on `conn` (inside the caller's transaction).
    private static func insertRows(_ episodes: [EpisodeRecord], _ conn: PostgresConnection, logger: Logger) async throws {
        let perEpisodeStatement = maxParameters / episodeColumnCount
        var start = 0
        while start < episodes.count {
            let chunk = episodes[start..<min(start + perEpisodeStatement, episodes.count)]
            var b = PostgresBindings(capacity: chunk.count * episodeColumnCount)
            for e in chunk { bind(e, into: &b) }
            _ = try await run(
                conn, "INSERT INTO episodes (\(episodeColumnList)) \(valuesClause(rows: chunk.count, columns: episodeColumnCount))", b,
                logger: logger)
            start += chunk.count
        }
        let turns = episodes.flatMap { e in e.turns.map { (e.id, $0) } }
        let perTurnStatement = maxParameters / turnColumnCount
        start = 0
        while start < turns.count {
            let chunk = turns[start..<min(start + perTurnStatement, turns.count)]
            var b = PostgresBindings(capacity: chunk.count * turnColumnCount)
            for (id, t) in chunk { try bind(t, episodeID: id, into: &b) }
            _ = try await run(
                conn, "INSERT INTO turns (\(turnColumnList)) \(valuesClause(rows: chunk.count, columns: turnColumnCount))", b,
                logger: logger)
            start += chunk.count
        }
    }

    /// Deadline of one batch-insert attempt (the log writer retries after it).
    static let writeAttemptTimeout: Duration = .seconds(15)

    public func insertBatch(_ episodes: [EpisodeRecord]) async throws {
        guard !episodes.isEmpty else { return }
        try TrafficDatabase.validate(episodes)
        let logger = self.logger
        do {
            // One attempt has a deadline: a connection lost while the server stopped could leave
            // the lease or the query waiting forever, and the writer's queue behind it (seen once
            // in ReplicaTests' outage test). A timed-out attempt that still commits later is
            // found by the retry as stored rows (below).
            try await Self.withTimeout(Self.writeAttemptTimeout, "the batch insert") { [self] in
                try await transaction { conn in try await Self.insertRows(episodes, conn, logger: logger) }
            }
        } catch {
            guard Self.sqlState(error) == "23505" else { throw Self.mapped(error) }
            // A unique violation. Either an id really is taken, or an earlier attempt of this very
            // batch committed and only its answer was lost (the connection dropped at COMMIT):
            // episodes already stored exactly as given count as written.
            var remaining: [EpisodeRecord] = []
            for e in episodes {
                if let stored = try await episode(id: e.id) {
                    guard stored == e else { throw TrafficLogError.duplicateEpisode(id: e.id) }
                } else {
                    remaining.append(e)
                }
            }
            if remaining.count == episodes.count, episodes.count == 1, let e = episodes.first {
                // Not the episode id: two turns share an index (validate catches that first) or
                // another constraint.
                throw TrafficLogError.invalidField(
                    record: "episode \(e.id)", field: Self.constraint(error) ?? "unique",
                    value: "", reason: "violates a unique constraint")
            }
            guard !remaining.isEmpty else { return }
            try await transaction { conn in try await Self.insertRows(remaining, conn, logger: logger) }
        }
    }

    public func isPermanent(_ error: any Error) -> Bool {
        if error is TrafficLogError { return true }
        // SQLSTATE class 22 (data exception) and 23 (integrity constraint violation) cannot
        // succeed by retrying; connection loss, shutdown and timeouts can.
        if let state = Self.sqlState(error) { return state.hasPrefix("22") || state.hasPrefix("23") }
        return false
    }

    public func insert(episode: EpisodeRecord, feedback: [FeedbackRecord]) async throws {
        try TrafficDatabase.validate([episode])
        for f in feedback {
            try TrafficDatabase.validate(f)
            guard f.episodeID == episode.id else {
                throw TrafficLogError.invalidField(
                    record: "feedback", field: "episode_id", value: f.episodeID,
                    reason: "must be the id of the episode inserted with it")
            }
        }
        let logger = self.logger
        do {
            try await transaction { conn in
                try await Self.insertRows([episode], conn, logger: logger)
                for f in feedback { _ = try await Self.insertFeedbackRow(f, conn, logger: logger) }
            }
        } catch  where Self.sqlState(error) == "23505" {
            throw TrafficLogError.duplicateEpisode(id: episode.id)
        }
    }

    static let selectEpisode = "SELECT \(episodeColumnList) FROM episodes"

    static func decodeEpisode(_ row: PostgresRow) throws -> EpisodeRecord {
        let r = row.makeRandomAccess()
        var episode = EpisodeRecord(
            id: try r[0].decode(String.self), createdAt: TrafficTime.date(try r[1].decode(Double.self)),
            route: try r[2].decode(String.self), mode: try r[3].decode(String.self),
            keyID: try r[4].decode(String?.self), requestedModel: try r[5].decode(String?.self),
            upstreamModel: try r[6].decode(String?.self), policyVersion: try r[7].decode(String?.self),
            stream: try r[8].decode(Bool.self), requestJSON: try r[9].decode(String?.self),
            responseText: try r[10].decode(String?.self), finishReason: try r[11].decode(String?.self),
            promptTokens: try r[12].decode(Int?.self), completionTokens: try r[13].decode(Int?.self),
            totalTokens: try r[14].decode(Int?.self), policyTokens: try r[15].decode(Int?.self),
            status: try r[16].decode(Int.self), outcome: try r[17].decode(String?.self),
            error: try r[18].decode(String?.self), question: try r[19].decode(String?.self),
            formatScore: try r[20].decode(Double?.self), totalMs: try r[21].decode(Double.self),
            upstreamMs: try r[22].decode(Double?.self), overheadMs: try r[23].decode(Double?.self), turns: [])
        episode.trainable = try r[24].decode(Bool.self)
        episode.policyLogprobs = try r[25].decode(String?.self).flatMap(PolicyLogprobKind.init(rawValue:))
        episode.policySampled = try r[26].decode(Bool?.self)
        return episode
    }

    static func decodeTurn(_ row: PostgresRow) throws -> (String, TurnRecord) {
        let r = row.makeRandomAccess()
        let episodeID = try r[0].decode(String.self)
        let index = try r[1].decode(Int.self)
        func blob<T>(_ column: Int, _ name: String, _ size: Int, _ decode: (Data) -> [T]?) throws -> [T]? {
            guard let data = try r[column].decode(Data?.self) else { return nil }
            guard let values = decode(data) else {
                throw TrafficLogError.corruptBlob(
                    episodeID: episodeID, turnIndex: index, column: name,
                    byteCount: data.count, elementSize: size)
            }
            return values
        }
        let turn = TurnRecord(
            index: index, kind: try r[2].decode(String.self),
            inputIDs: try blob(3, "input_ids", 4, BlobCoding.decodeInt32),
            outputIDs: try blob(4, "output_ids", 4, BlobCoding.decodeInt32),
            logprobs: try blob(5, "logprobs", 4, BlobCoding.decodeFloat),
            lossMask: try blob(6, "loss_mask", 1) { BlobCoding.decodeBytes($0) },
            text: try r[7].decode(String?.self), call: try r[8].decode(String?.self),
            upstreamRequest: try r[9].decode(String?.self), upstreamResponse: try r[10].decode(String?.self),
            latencyMs: try r[11].decode(Double?.self), promptTokens: try r[12].decode(Int?.self),
            completionTokens: try r[13].decode(Int?.self), status: try r[14].decode(Int?.self),
            error: try r[15].decode(String?.self))
        return (episodeID, turn)
    }

    private func attachTurns(_ episodes: inout [EpisodeRecord]) async throws {
        guard !episodes.isEmpty else { return }
        var position: [String: Int] = [:]
        for (i, e) in episodes.enumerated() { position[e.id] = i }
        var start = 0
        while start < episodes.count {
            let ids = episodes[start..<min(start + 5000, episodes.count)].map(\.id)
            var b = PostgresBindings()
            b.append(ids)
            for row in try await query("SELECT \(Self.turnColumnList) FROM turns WHERE episode_id = ANY($1) ORDER BY episode_id, idx", b) {
                let (id, turn) = try Self.decodeTurn(row)
                if let i = position[id] { episodes[i].turns.append(turn) }
            }
            start += ids.count
        }
    }

    public func episode(id: String) async throws -> EpisodeRecord? {
        var b = PostgresBindings()
        b.append(id)
        guard let row = try await query("\(Self.selectEpisode) WHERE id = $1", b).first else { return nil }
        var list = [try Self.decodeEpisode(row)]
        try await attachTurns(&list)
        return list[0]
    }

    /// WHERE clause and bindings for the filters of `query` (columns qualified with `e.`).
    static func whereClause(_ q: EpisodeQuery) -> (String, PostgresBindings) {
        var clauses: [String] = []
        var b = PostgresBindings()
        func param<V: PostgresEncodable & PostgresNonThrowingEncodable>(_ v: V) -> String {
            b.append(v)
            return "$\(b.count)"
        }
        if let v = q.since { clauses.append("e.created_at >= \(param(TrafficTime.databaseValue(v)))") }
        if let v = q.until { clauses.append("e.created_at < \(param(TrafficTime.databaseValue(v)))") }
        if let v = q.route { clauses.append("e.route = \(param(v))") }
        if let v = q.mode { clauses.append("e.mode = \(param(v))") }
        if let v = q.policyVersion { clauses.append("e.policy_version = \(param(v))") }
        if let reward = q.hasRewardSource {
            let exists = "EXISTS (SELECT 1 FROM feedback f WHERE f.episode_id = e.id AND f.kind IN ('score', 'reference'))"
            clauses.append(reward ? exists : "NOT \(exists)")
        }
        return (clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND "), b)
    }

    public func episodes(_ q: EpisodeQuery) async throws -> [EpisodeRecord] {
        if let limit = q.limit, limit < 0 {
            throw TrafficLogError.invalidField(record: "EpisodeQuery", field: "limit", value: "\(limit)", reason: "must be >= 0")
        }
        if q.offset < 0 {
            throw TrafficLogError.invalidField(record: "EpisodeQuery", field: "offset", value: "\(q.offset)", reason: "must be >= 0")
        }
        var (whereSQL, b) = Self.whereClause(q)
        var sql =
            "SELECT \(Self.episodeColumnList.split(separator: ",").map { "e." + $0.trimmingCharacters(in: .whitespacesAndNewlines) }.joined(separator: ", ")) FROM episodes e\(whereSQL) ORDER BY e.created_at, e.id"
        if let limit = q.limit {
            b.append(limit)
            sql += " LIMIT $\(b.count)"
        }
        b.append(q.offset)
        sql += " OFFSET $\(b.count)"
        // One snapshot for the episodes and their turns.
        let logger = self.logger
        let includeTurns = q.includeTurns
        let final = b
        return try await transaction { conn in
            _ = try await Self.run(conn, "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY", logger: logger)
            var list = try await Self.run(conn, sql, final, logger: logger).map(Self.decodeEpisode)
            if includeTurns, !list.isEmpty {
                var position: [String: Int] = [:]
                for (i, e) in list.enumerated() { position[e.id] = i }
                var start = 0
                while start < list.count {
                    let ids = list[start..<min(start + 5000, list.count)].map(\.id)
                    var tb = PostgresBindings()
                    tb.append(ids)
                    for row in try await Self.run(
                        conn, "SELECT \(Self.turnColumnList) FROM turns WHERE episode_id = ANY($1) ORDER BY episode_id, idx", tb,
                        logger: logger)
                    {
                        let (id, turn) = try Self.decodeTurn(row)
                        if let i = position[id] { list[i].turns.append(turn) }
                    }
                    start += ids.count
                }
            }
            return list
        }
    }

    public func count(_ q: EpisodeQuery) async throws -> Int {
        let (whereSQL, b) = Self.whereClause(q)
        let rows = try await query("SELECT COUNT(*) FROM episodes e\(whereSQL)", b)
        return try rows.first?.makeRandomAccess()[0].decode(Int.self) ?? 0
    }

    public func episodeExists(id: String) async throws -> Bool {
        var b = PostgresBindings()
        b.append(id)
        return try await !query("SELECT 1 FROM episodes WHERE id = $1", b).isEmpty
    }

    public func episodeCountsByQuestion(route: String) async throws -> [String: Int] {
        var b = PostgresBindings()
        b.append(route)
        let rows = try await query(
            """
            SELECT question, COUNT(*) FROM episodes
            WHERE route = $1 AND question IS NOT NULL
              AND EXISTS (SELECT 1 FROM feedback f WHERE f.episode_id = episodes.id)
            GROUP BY question
            """, b)
        var out: [String: Int] = [:]
        for row in rows {
            let r = row.makeRandomAccess()
            out[try r[0].decode(String.self)] = try r[1].decode(Int.self)
        }
        return out
    }

    public func deleteEpisodes(olderThan cutoff: Date) async throws -> Int {
        let chunk = 1000
        var total = 0
        while true {
            var b = PostgresBindings()
            b.append(TrafficTime.databaseValue(cutoff))
            b.append(chunk)
            let rows = try await query(
                """
                DELETE FROM episodes WHERE id IN
                  (SELECT id FROM episodes WHERE created_at < $1 ORDER BY created_at LIMIT $2)
                RETURNING 1
                """, b)
            total += rows.count
            if rows.count < chunk { return total }
        }
    }

    // MARK: - Feedback

    private static func insertFeedbackRow(_ f: FeedbackRecord, _ conn: PostgresConnection, logger: Logger) async throws -> Int64 {
        var b = PostgresBindings()
        b.append(f.episodeID)
        b.append(f.kind)
        b.append(text(f.value))
        b.append(text(f.source))
        b.append(TrafficTime.databaseValue(f.createdAt))
        let rows = try await run(
            conn, "INSERT INTO feedback (episode_id, kind, value, source, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id", b,
            logger: logger)
        return try rows.first?.makeRandomAccess()[0].decode(Int64.self) ?? 0
    }

    @discardableResult
    public func insertFeedback(_ f: FeedbackRecord) async throws -> Int64 {
        try TrafficDatabase.validate(f)
        try checkOpen()
        let logger = self.logger
        try await ensureMigrated()
        do {
            return try await client.withConnection { conn in try await Self.insertFeedbackRow(f, conn, logger: logger) }
        } catch  where Self.sqlState(error) == "23503" {
            throw TrafficLogError.unknownEpisode(id: f.episodeID)
        } catch {
            throw Self.mapped(error)
        }
    }

    static func decodeFeedback(_ row: PostgresRow) throws -> FeedbackRecord {
        let r = row.makeRandomAccess()
        return FeedbackRecord(
            id: try r[0].decode(Int64.self), episodeID: try r[1].decode(String.self),
            kind: try r[2].decode(String.self), value: try r[3].decode(String.self),
            source: try r[4].decode(String?.self), createdAt: TrafficTime.date(try r[5].decode(Double.self)))
    }

    public func feedback(episodeID: String) async throws -> [FeedbackRecord] {
        var b = PostgresBindings()
        b.append(episodeID)
        return try await query("SELECT id, episode_id, kind, value, source, created_at FROM feedback WHERE episode_id = $1 ORDER BY id", b)
            .map(Self.decodeFeedback)
    }

    public func feedback(episodeIDs: [String]) async throws -> [String: [FeedbackRecord]] {
        guard !episodeIDs.isEmpty else { return [:] }
        let ids = Array(Set(episodeIDs))
        var out: [String: [FeedbackRecord]] = [:]
        var start = 0
        while start < ids.count {
            var b = PostgresBindings()
            b.append(Array(ids[start..<min(start + 5000, ids.count)]))
            for row in try await query(
                "SELECT id, episode_id, kind, value, source, created_at FROM feedback WHERE episode_id = ANY($1) ORDER BY id", b)
            {
                let f = try Self.decodeFeedback(row)
                out[f.episodeID, default: []].append(f)
            }
            start += 5000
        }
        return out
    }

    // MARK: - Policy versions and events

    public func insertPolicyVersion(_ v: PolicyVersionRecord) async throws {
        let logger = self.logger
        try await transaction { conn in
            var key = PostgresBindings()
            key.append(v.id)
            let existing = try await Self.run(conn, "SELECT sha256 FROM policy_versions WHERE id = $1 FOR UPDATE", key, logger: logger)
            var b = PostgresBindings()
            b.append(v.id)
            b.append(v.path)
            b.append(v.sha256)
            b.append(v.architecture)
            b.append(v.parameterCount)
            b.append(TrafficTime.databaseValue(v.loadedAt))
            b.append(v.parentID)
            b.append(v.manifestJSON)
            if let row = existing.first {
                let sha = try row.makeRandomAccess()[0].decode(String.self)
                guard sha == v.sha256 else {
                    throw TrafficLogError.policyVersionConflict(id: v.id, existingSHA256: sha, newSHA256: v.sha256)
                }
                _ = try await Self.run(
                    conn,
                    """
                    UPDATE policy_versions SET path = $2, architecture = $4, parameter_count = $5, loaded_at = $6,
                      parent_id = $7, manifest_json = $8 WHERE id = $1 AND sha256 = $3
                    """, b, logger: logger)
            } else {
                _ = try await Self.run(
                    conn,
                    """
                    INSERT INTO policy_versions (id, path, sha256, architecture, parameter_count, loaded_at, parent_id, manifest_json)
                    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                    ON CONFLICT (id) DO UPDATE SET path = EXCLUDED.path, loaded_at = EXCLUDED.loaded_at
                    WHERE policy_versions.sha256 = EXCLUDED.sha256
                    """, b, logger: logger)
            }
        }
    }

    public func policyVersions() async throws -> [PolicyVersionRecord] {
        try await query(
            """
            SELECT id, path, sha256, architecture, parameter_count, loaded_at, parent_id, manifest_json
            FROM policy_versions ORDER BY loaded_at, id
            """
        ).map { row in
            let r = row.makeRandomAccess()
            return PolicyVersionRecord(
                id: try r[0].decode(String.self), path: try r[1].decode(String.self),
                sha256: try r[2].decode(String.self), architecture: try r[3].decode(String.self),
                parameterCount: try r[4].decode(Int.self), loadedAt: TrafficTime.date(try r[5].decode(Double.self)),
                parentID: try r[6].decode(String?.self), manifestJSON: try r[7].decode(String?.self))
        }
    }

    static let policyEventColumns = "seq, version_id, path, action, replica, created_at"

    static func decodePolicyEvent(_ row: PostgresRow) throws -> PolicyEventRecord {
        let r = row.makeRandomAccess()
        return PolicyEventRecord(
            seq: try r[0].decode(Int64.self), versionID: try r[1].decode(String.self),
            path: try r[2].decode(String.self),
            action: PolicyEventRecord.Action(rawValue: try r[3].decode(String.self)) ?? .swap,
            replica: try r[4].decode(String?.self), createdAt: TrafficTime.date(try r[5].decode(Double.self)))
    }

    private static func insertEvent(_ e: PolicyEventRecord, _ conn: PostgresConnection, logger: Logger) async throws -> PolicyEventRecord {
        var b = PostgresBindings()
        b.append(e.versionID)
        b.append(e.path)
        b.append(e.action.rawValue)
        b.append(e.replica)
        b.append(TrafficTime.databaseValue(e.createdAt))
        let rows = try await run(
            conn, "INSERT INTO policy_events (version_id, path, action, replica, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING seq", b,
            logger: logger)
        var out = e
        out.seq = try rows.first?.makeRandomAccess()[0].decode(Int64.self)
        // Delivered to every listening replica when the transaction commits.
        var n = PostgresBindings()
        n.append(PostgresSchema.policyChannel)
        n.append(String(out.seq ?? 0))
        _ = try await run(conn, "SELECT pg_notify($1, $2)", n, logger: logger)
        return out
    }

    public func recordPolicyEvent(_ event: PolicyEventRecord) async throws -> PolicyEventRecord {
        let logger = self.logger
        return try await transaction { conn in try await Self.insertEvent(event, conn, logger: logger) }
    }

    public func recordFirstPolicyEvent(_ event: PolicyEventRecord) async throws -> PolicyEventRecord {
        let logger = self.logger
        return try await transaction { conn in
            // Serialise replicas that start together on an empty table.
            var lock = PostgresBindings()
            lock.append(PostgresSchema.migrationLockKey + 1)
            _ = try await Self.run(conn, "SELECT pg_advisory_xact_lock($1)", lock, logger: logger)
            if let row = try await Self.run(
                conn, "SELECT \(Self.policyEventColumns) FROM policy_events ORDER BY seq DESC LIMIT 1", logger: logger
            ).first {
                return try Self.decodePolicyEvent(row)
            }
            return try await Self.insertEvent(event, conn, logger: logger)
        }
    }

    public func latestPolicyEvent() async throws -> PolicyEventRecord? {
        try await policyEvents(limit: 1).first
    }

    public func policyEvents(limit: Int) async throws -> [PolicyEventRecord] {
        var b = PostgresBindings()
        b.append(max(0, limit))
        return try await query("SELECT \(Self.policyEventColumns) FROM policy_events ORDER BY seq DESC LIMIT $1", b)
            .map(Self.decodePolicyEvent)
    }

    public func policyEventNotifications() async throws -> AsyncThrowingStream<Int64, any Error>? {
        try checkOpen()
        try await ensureMigrated()
        let client = self.client
        let (stream, continuation) = AsyncThrowingStream<Int64, any Error>.makeStream()
        // One pooled connection LISTENs for as long as the stream is consumed.
        let task = Task {
            do {
                try await client.withConnection { conn in
                    let notifications = try await conn.listen(PostgresSchema.policyChannel)
                    continuation.yield(0)  // listening: a 0 tells the consumer to poll once now
                    for try await n in notifications {
                        if let seq = Int64(n.payload) { continuation.yield(seq) }
                    }
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: PostgresLogError.database(PostgresLogError.describe(error)))
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return stream
    }

    // MARK: - Health and lifecycle

    public func ping(timeout: Duration) async throws {
        try await Self.withTimeout(timeout, "SELECT 1") { [self] in
            _ = try await query("SELECT 1")
        }
    }

    /// PostgreSQL makes every commit durable itself.
    public func checkpoint() async throws {}

    public func close() async throws {
        let already = closed.withLock { c -> Bool in
            defer { c = true }
            return c
        }
        guard !already else { return }
        runTask.cancel()
        await runTask.value
    }

    /// Deletes every row of every table (tests and benchmarks that reuse one database).
    public func truncateAll() async throws {
        try await query("TRUNCATE episodes, turns, feedback, policy_versions, policy_events RESTART IDENTITY")
    }
}

/// A continuation resumed by whichever of two tasks comes first.
final class ResumeOnce<T: Sendable>: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T, any Error>?
    func set(_ c: CheckedContinuation<T, any Error>) { lock.withLock { continuation = c } }
    func take() -> CheckedContinuation<T, any Error>? {
        lock.withLock {
            defer { continuation = nil }
            return continuation
        }
    }
}
