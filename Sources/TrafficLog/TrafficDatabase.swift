import Foundation
import GRDB
import PromptR1

#if canImport(Glibc)
    import Glibc
    private let posixClose = Glibc.close
#elseif canImport(Darwin)
    import Darwin
    private let posixClose = Darwin.close
#endif

/// The SQLite traffic log: episodes (with turns), feedback and policy versions.
///
/// Durability: the file is opened in WAL mode with `synchronous = NORMAL`.
/// Every committed transaction survives a crash or `kill -9` of the process
/// (the WAL is in the OS page cache and is replayed on the next open). A power
/// loss or kernel crash may lose the most recent transactions (never corrupts
/// the database). Set by design: fsync on every commit would cap throughput.
///
/// Files: the database, `-wal` and `-shm` files are created with mode 0600
/// (owner read/write only, whatever the umask), because they hold request text.
///
/// Concurrency: all methods are synchronous and thread-safe (GRDB
/// `DatabasePool`: one writer, concurrent readers). They block the calling
/// thread for the duration of the SQL; from async code prefer `LogWriter` for
/// writes. Foreign keys are enforced; a busy database is waited on for
/// `busyTimeout` seconds before `SQLITE_BUSY` is thrown.
public final class TrafficDatabase: Sendable {
    /// The database file path (":memory:" for `inMemory()`).
    public let path: String
    let writer: any DatabaseWriter
    let isInMemory: Bool

    /// File permission bits for the database and its WAL/SHM side files.
    public static let fileMode: mode_t = 0o600

    /// Opens (creating if needed) the database at `path` and runs pending migrations.
    /// Missing parent directories are created with mode 0700.
    public init(path: String, busyTimeout: TimeInterval = 5) throws {
        self.path = path
        self.isInMemory = false
        try Self.prepareFile(path)
        var config = Self.configuration(busyTimeout: busyTimeout)
        config.label = "TrafficLog"
        let pool = try DatabasePool(path: path, configuration: config)
        self.writer = pool
        try TrafficSchema.migrator().migrate(pool)
        // SQLite gives -wal/-shm the main file's mode, but set it explicitly so
        // the guarantee does not depend on SQLite internals or the umask.
        try Self.restrictSideFiles(path)
    }

    private init(inMemoryWriter: any DatabaseWriter) {
        self.path = ":memory:"
        self.isInMemory = true
        self.writer = inMemoryWriter
    }

    /// A private in-memory database (tests). Same schema and behaviour, no durability.
    public static func inMemory() throws -> TrafficDatabase {
        let queue = try DatabaseQueue(configuration: configuration(busyTimeout: 5))
        try TrafficSchema.migrator().migrate(queue)
        return TrafficDatabase(inMemoryWriter: queue)
    }

    static func configuration(busyTimeout: TimeInterval) -> Configuration {
        var config = Configuration()
        config.foreignKeysEnabled = true
        config.busyMode = .timeout(busyTimeout)
        // Never put statement arguments (request text) into error messages.
        config.publicStatementArguments = false
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = NORMAL")
        }
        return config
    }

    private static func prepareFile(_ path: String) throws {
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty, !FileManager.default.fileExists(atPath: dir) {
            do {
                try FileManager.default.createDirectory(
                    atPath: dir, withIntermediateDirectories: true,
                    attributes: [.posixPermissions: 0o700])
            } catch {
                throw TrafficLogError.fileSetup(path: path, reason: "cannot create directory '\(dir)': \(error)")
            }
        }
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, fileMode)
        guard fd >= 0 else {
            throw TrafficLogError.fileSetup(path: path, reason: "open: \(String(cString: strerror(errno)))")
        }
        defer { _ = posixClose(fd) }
        // Tighten an existing file too (umask-independent).
        guard fchmod(fd, fileMode) == 0 else {
            throw TrafficLogError.fileSetup(path: path, reason: "fchmod 0600: \(String(cString: strerror(errno)))")
        }
    }

    private static func restrictSideFiles(_ path: String) throws {
        for suffix in ["-wal", "-shm", "-journal"] {
            let side = path + suffix
            if chmod(side, fileMode) != 0, errno != ENOENT {
                throw TrafficLogError.fileSetup(path: side, reason: "chmod 0600: \(String(cString: strerror(errno)))")
            }
        }
    }

    /// Names of the migrations applied to this database, in order.
    public func appliedMigrations() throws -> [String] {
        try writer.read { db in try TrafficSchema.migrator().appliedMigrations(db) }
    }

    /// Closes the database connections. Further calls throw.
    public func close() throws {
        if let pool = writer as? DatabasePool { try pool.close() }
        if let queue = writer as? DatabaseQueue { try queue.close() }
    }

    // MARK: - Episodes

    /// Inserts `episodes` and their turns in ONE transaction (all or nothing).
    /// Throws `TrafficLogError.duplicateEpisode`, `.duplicateTurnIndex`, `.invalidField`,
    /// or a database error (e.g. busy, disk full) in which case nothing was written.
    public func insert(episodes: [EpisodeRecord]) throws {
        guard !episodes.isEmpty else { return }
        try Self.validate(episodes)
        try writer.write { db in try Self.insertRows(episodes, db) }
    }

    public static func validate(_ episodes: [EpisodeRecord]) throws {
        for e in episodes {
            if e.id.isEmpty {
                throw TrafficLogError.invalidField(record: "episode", field: "id", value: "", reason: "must not be empty")
            }
            if e.route.isEmpty {
                throw TrafficLogError.invalidField(record: "episode \(e.id)", field: "route", value: "", reason: "must not be empty")
            }
            if e.mode.isEmpty {
                throw TrafficLogError.invalidField(record: "episode \(e.id)", field: "mode", value: "", reason: "must not be empty")
            }
            if !e.totalMs.isFinite {
                throw TrafficLogError.invalidField(
                    record: "episode \(e.id)", field: "totalMs", value: "\(e.totalMs)", reason: "must be finite")
            }
            var seen = Set<Int>()
            for t in e.turns {
                if !seen.insert(t.index).inserted {
                    throw TrafficLogError.duplicateTurnIndex(episodeID: e.id, index: t.index)
                }
                if !TurnRecord.validKinds.contains(t.kind) {
                    throw TrafficLogError.invalidField(
                        record: "episode \(e.id) turn \(t.index)", field: "kind", value: t.kind,
                        reason: "expected one of \(TurnRecord.validKinds.sorted())")
                }
            }
        }
    }

    static let insertEpisodeSQL = """
        INSERT INTO episodes (id, created_at, route, mode, key_id, requested_model, upstream_model,
            policy_version, stream, request_json, response_text, finish_reason, prompt_tokens,
            completion_tokens, total_tokens, policy_tokens, status, outcome, error, question,
            format_score, total_ms, upstream_ms, overhead_ms, trainable, policy_logprobs, policy_sampled)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """

    static let insertTurnSQL = """
        INSERT INTO turns (episode_id, idx, kind, input_ids, output_ids, logprobs, loss_mask, text,
            call, upstream_request, upstream_response, latency_ms, prompt_tokens, completion_tokens,
            status, error)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        """

    static func insertRows(_ episodes: [EpisodeRecord], _ db: Database) throws {
        let episodeStatement = try db.cachedStatement(sql: insertEpisodeSQL)
        let turnStatement = try db.cachedStatement(sql: insertTurnSQL)
        for e in episodes {
            let args: [(any DatabaseValueConvertible)?] = [
                e.id, TrafficTime.databaseValue(e.createdAt), e.route, e.mode, e.keyID,
                e.requestedModel, e.upstreamModel, e.policyVersion, e.stream, e.requestJSON,
                e.responseText, e.finishReason, e.promptTokens, e.completionTokens, e.totalTokens,
                e.policyTokens, e.status, e.outcome, e.error, e.question, e.formatScore, e.totalMs,
                e.upstreamMs, e.overheadMs, e.trainable, e.policyLogprobs?.rawValue, e.policySampled,
            ]
            do {
                try episodeStatement.execute(arguments: StatementArguments(args))
            } catch let error as DatabaseError
                where error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY
                || error.extendedResultCode == .SQLITE_CONSTRAINT_UNIQUE
            {
                throw TrafficLogError.duplicateEpisode(id: e.id)
            }
            for t in e.turns {
                let targs: [(any DatabaseValueConvertible)?] = [
                    e.id, t.index, t.kind,
                    t.inputIDs.map { BlobCoding.encode($0) },
                    t.outputIDs.map { BlobCoding.encode($0) },
                    t.logprobs.map { BlobCoding.encode($0) },
                    t.lossMask.map { BlobCoding.encode($0) },
                    t.text, t.call, t.upstreamRequest, t.upstreamResponse, t.latencyMs,
                    t.promptTokens, t.completionTokens, t.status, t.error,
                ]
                do {
                    try turnStatement.execute(arguments: StatementArguments(targs))
                } catch let error as DatabaseError
                    where error.extendedResultCode == .SQLITE_CONSTRAINT_PRIMARYKEY
                {
                    throw TrafficLogError.duplicateTurnIndex(episodeID: e.id, index: t.index)
                }
            }
        }
    }

    static let episodeColumns = """
        e.id, e.created_at, e.route, e.mode, e.key_id, e.requested_model, e.upstream_model,
        e.policy_version, e.stream, e.request_json, e.response_text, e.finish_reason,
        e.prompt_tokens, e.completion_tokens, e.total_tokens, e.policy_tokens, e.status, e.outcome,
        e.error, e.question, e.format_score, e.total_ms, e.upstream_ms, e.overhead_ms, e.trainable,
        e.policy_logprobs, e.policy_sampled
        """

    static let turnColumns = """
        episode_id, idx, kind, input_ids, output_ids, logprobs, loss_mask, text, call,
        upstream_request, upstream_response, latency_ms, prompt_tokens, completion_tokens, status, error
        """

    static func decodeEpisode(_ row: Row) -> EpisodeRecord {
        var e = EpisodeRecord(
            id: row[0], createdAt: TrafficTime.date(row[1]), route: row[2], mode: row[3],
            keyID: row[4], requestedModel: row[5], upstreamModel: row[6], policyVersion: row[7],
            stream: row[8], requestJSON: row[9], responseText: row[10], finishReason: row[11],
            promptTokens: row[12], completionTokens: row[13], totalTokens: row[14],
            policyTokens: row[15], status: row[16], outcome: row[17], error: row[18],
            question: row[19], formatScore: row[20], totalMs: row[21], upstreamMs: row[22],
            overheadMs: row[23], turns: [])
        e.trainable = row[24]
        e.policyLogprobs = (row[25] as String?).flatMap(PolicyLogprobKind.init(rawValue:))
        e.policySampled = row[26]
        return e
    }

    /// Returns (episode id, turn).
    static func decodeTurn(_ row: Row) throws -> (String, TurnRecord) {
        let episodeID: String = row[0]
        let index: Int = row[1]
        func blob<T>(_ column: Int, _ name: String, _ size: Int, _ decode: (Data) -> [T]?) throws -> [T]? {
            guard let data: Data = row[column] else { return nil }
            guard let values = decode(data) else {
                throw TrafficLogError.corruptBlob(
                    episodeID: episodeID, turnIndex: index, column: name,
                    byteCount: data.count, elementSize: size)
            }
            return values
        }
        let turn = TurnRecord(
            index: index, kind: row[2],
            inputIDs: try blob(3, "input_ids", 4, BlobCoding.decodeInt32),
            outputIDs: try blob(4, "output_ids", 4, BlobCoding.decodeInt32),
            logprobs: try blob(5, "logprobs", 4, BlobCoding.decodeFloat),
            lossMask: try blob(6, "loss_mask", 1) { BlobCoding.decodeBytes($0) },
            text: row[7], call: row[8], upstreamRequest: row[9], upstreamResponse: row[10],
            latencyMs: row[11], promptTokens: row[12], completionTokens: row[13], status: row[14],
            error: row[15])
        return (episodeID, turn)
    }

    /// Loads turns for `episodes` (ordered by index) in place.
    static func attachTurns(_ episodes: inout [EpisodeRecord], _ db: Database) throws {
        guard !episodes.isEmpty else { return }
        var position: [String: Int] = [:]
        for (i, e) in episodes.enumerated() { position[e.id] = i }
        let chunkSize = 500
        var start = 0
        while start < episodes.count {
            let ids = episodes[start..<min(start + chunkSize, episodes.count)].map(\.id)
            let placeholders = Array(repeating: "?", count: ids.count).joined(separator: ",")
            let rows = try Row.fetchCursor(
                db, sql: "SELECT \(turnColumns) FROM turns WHERE episode_id IN (\(placeholders)) ORDER BY episode_id, idx",
                arguments: StatementArguments(ids))
            while let row = try rows.next() {
                let (episodeID, turn) = try decodeTurn(row)
                if let i = position[episodeID] { episodes[i].turns.append(turn) }
            }
            start += chunkSize
        }
    }

    /// The episode with `id`, with its turns ordered by index; nil if absent.
    public func episode(id: String) throws -> EpisodeRecord? {
        try writer.read { db in
            guard
                let row = try Row.fetchOne(
                    db, sql: "SELECT \(Self.episodeColumns) FROM episodes e WHERE e.id = ?",
                    arguments: [id])
            else { return nil }
            var list = [Self.decodeEpisode(row)]
            try Self.attachTurns(&list, db)
            return list[0]
        }
    }

    /// WHERE clause (possibly empty) and arguments for the filters of `query`
    /// (not limit/offset).
    static func whereClause(_ query: EpisodeQuery) -> (String, [(any DatabaseValueConvertible)?]) {
        var w = SQLConditions()
        w.add("e.created_at >= ?", query.since.map(TrafficTime.databaseValue))
        w.add("e.created_at < ?", query.until.map(TrafficTime.databaseValue))
        w.add("e.route = ?", query.route)
        w.add("e.mode = ?", query.mode)
        w.add("e.policy_version = ?", query.policyVersion)
        if let reward = query.hasRewardSource {
            let exists = "EXISTS (SELECT 1 FROM feedback f WHERE f.episode_id = e.id AND f.kind IN ('score', 'reference'))"
            w.clauses.append(reward ? exists : "NOT \(exists)")
        }
        return (w.clauses.isEmpty ? "" : " WHERE " + w.clauses.joined(separator: " AND "), w.args)
    }

    /// Episodes matching `query`, ordered by (createdAt, id), read from one snapshot.
    public func episodes(_ query: EpisodeQuery) throws -> [EpisodeRecord] {
        if let limit = query.limit, limit < 0 {
            throw TrafficLogError.invalidField(record: "EpisodeQuery", field: "limit", value: "\(limit)", reason: "must be >= 0")
        }
        if query.offset < 0 {
            throw TrafficLogError.invalidField(record: "EpisodeQuery", field: "offset", value: "\(query.offset)", reason: "must be >= 0")
        }
        var (whereSQL, args) = Self.whereClause(query)
        let sql = "SELECT \(Self.episodeColumns) FROM episodes e\(whereSQL) ORDER BY e.created_at, e.id LIMIT ? OFFSET ?"
        args.append(query.limit ?? -1)
        args.append(query.offset)
        let finalArgs = StatementArguments(args)
        return try writer.read { db in
            var list = try Row.fetchAll(db, sql: sql, arguments: finalArgs).map(Self.decodeEpisode)
            if query.includeTurns { try Self.attachTurns(&list, db) }
            return list
        }
    }

    /// Number of episodes matching the filters of `query` (limit and offset are ignored).
    public func count(_ query: EpisodeQuery) throws -> Int {
        let (whereSQL, args) = Self.whereClause(query)
        let finalArgs = StatementArguments(args)
        return try writer.read { db in
            try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM episodes e\(whereSQL)", arguments: finalArgs) ?? 0
        }
    }

    public func episodeCount() throws -> Int {
        try writer.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM episodes") ?? 0 }
    }

    public func episodeExists(id: String) throws -> Bool {
        try writer.read { db in
            try Bool.fetchOne(db, sql: "SELECT EXISTS (SELECT 1 FROM episodes WHERE id = ?)", arguments: [id]) ?? false
        }
    }

    /// Deletes episodes with createdAt < `olderThan` (their turns and feedback
    /// cascade). Works in chunks of 1,000 episodes, one transaction each, so a
    /// large sweep never blocks concurrent log writes for long. Returns the
    /// number of episodes deleted.
    public func deleteEpisodes(olderThan cutoff: Date) throws -> Int {
        let chunk = 1000
        let cutoffValue = TrafficTime.databaseValue(cutoff)
        var total = 0
        while true {
            let n = try writer.write { db -> Int in
                try db.execute(
                    sql: """
                        DELETE FROM episodes WHERE id IN
                          (SELECT id FROM episodes WHERE created_at < ? ORDER BY created_at LIMIT ?)
                        """,
                    arguments: [cutoffValue, chunk])
                return db.changesCount
            }
            total += n
            if n < chunk { return total }
        }
    }

    // MARK: - Feedback

    /// Stores feedback for an existing episode and returns its row id.
    /// `kind` must be "score" | "reference" | "label"; a "score" value must be a finite number.
    /// Throws `TrafficLogError.unknownEpisode` if the episode does not exist.
    @discardableResult
    public func insertFeedback(_ f: FeedbackRecord) throws -> Int64 {
        try Self.validate(f)
        return try writer.write { db in
            do {
                try Self.insertFeedbackRow(f, db)
            } catch let error as DatabaseError where error.extendedResultCode == .SQLITE_CONSTRAINT_FOREIGNKEY {
                throw TrafficLogError.unknownEpisode(id: f.episodeID)
            }
            return db.lastInsertedRowID
        }
    }

    /// The checks every feedback row passes before it is written.
    public static func validate(_ f: FeedbackRecord) throws {
        guard FeedbackRecord.validKinds.contains(f.kind) else {
            throw TrafficLogError.invalidField(
                record: "feedback", field: "kind", value: f.kind,
                reason: "expected one of \(FeedbackRecord.validKinds.sorted())")
        }
        if f.kind == "score" {
            guard let v = Double(f.value.trimmingCharacters(in: .whitespaces)), v.isFinite else {
                throw TrafficLogError.invalidField(
                    record: "feedback", field: "value", value: String(f.value.prefix(64)),
                    reason: "a score must be a finite number")
            }
        }
    }

    static func insertFeedbackRow(_ f: FeedbackRecord, _ db: Database) throws {
        try db.execute(
            sql: "INSERT INTO feedback (episode_id, kind, value, source, created_at) VALUES (?, ?, ?, ?, ?)",
            arguments: [f.episodeID, f.kind, f.value, f.source, TrafficTime.databaseValue(f.createdAt)])
    }

    /// Feedback rows of one episode, in insertion order.
    public func feedback(episodeID: String) throws -> [FeedbackRecord] {
        try writer.read { db in
            try Row.fetchAll(
                db, sql: "SELECT id, episode_id, kind, value, source, created_at FROM feedback WHERE episode_id = ? ORDER BY id",
                arguments: [episodeID]
            ).map { row in
                FeedbackRecord(
                    id: row[0], episodeID: row[1], kind: row[2], value: row[3], source: row[4],
                    createdAt: TrafficTime.date(row[5]))
            }
        }
    }

    /// Feedback of many episodes at once (e.g. a training batch), keyed by episode id,
    /// each list in insertion order. Episodes without feedback are absent from the result.
    public func feedback(episodeIDs: [String]) throws -> [String: [FeedbackRecord]] {
        guard !episodeIDs.isEmpty else { return [:] }
        let ids = Array(Set(episodeIDs))
        return try writer.read { db in
            var out: [String: [FeedbackRecord]] = [:]
            var start = 0
            while start < ids.count {
                let chunk = Array(ids[start..<min(start + 500, ids.count)])
                let placeholders = Array(repeating: "?", count: chunk.count).joined(separator: ",")
                let rows = try Row.fetchCursor(
                    db,
                    sql: """
                        SELECT id, episode_id, kind, value, source, created_at FROM feedback
                        WHERE episode_id IN (\(placeholders)) ORDER BY id
                        """,
                    arguments: StatementArguments(chunk))
                while let row = try rows.next() {
                    let f = FeedbackRecord(
                        id: row[0], episodeID: row[1], kind: row[2], value: row[3],
                        source: row[4], createdAt: TrafficTime.date(row[5]))
                    out[f.episodeID, default: []].append(f)
                }
                start += 500
            }
            return out
        }
    }

    // MARK: - Policy versions

    /// Registers a loaded policy checkpoint. Registering the same id again with the
    /// same sha256 updates path, loadedAt, parentID and manifest (a reload); with a
    /// different sha256 it throws `TrafficLogError.policyVersionConflict`.
    public func insertPolicyVersion(_ v: PolicyVersionRecord) throws {
        try writer.write { db in
            if let existing = try String.fetchOne(db, sql: "SELECT sha256 FROM policy_versions WHERE id = ?", arguments: [v.id]) {
                guard existing == v.sha256 else {
                    throw TrafficLogError.policyVersionConflict(id: v.id, existingSHA256: existing, newSHA256: v.sha256)
                }
                try db.execute(
                    sql: """
                        UPDATE policy_versions SET path = ?, architecture = ?, parameter_count = ?, loaded_at = ?,
                          parent_id = ?, manifest_json = ? WHERE id = ?
                        """,
                    arguments: [
                        v.path, v.architecture, v.parameterCount, TrafficTime.databaseValue(v.loadedAt),
                        v.parentID, v.manifestJSON, v.id,
                    ])
            } else {
                try db.execute(
                    sql: """
                        INSERT INTO policy_versions (id, path, sha256, architecture, parameter_count, loaded_at,
                          parent_id, manifest_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                        """,
                    arguments: [
                        v.id, v.path, v.sha256, v.architecture, v.parameterCount,
                        TrafficTime.databaseValue(v.loadedAt), v.parentID, v.manifestJSON,
                    ])
            }
        }
    }

    /// All registered policy versions, ordered by (loadedAt, id).
    public func policyVersions() throws -> [PolicyVersionRecord] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT id, path, sha256, architecture, parameter_count, loaded_at, parent_id, manifest_json
                    FROM policy_versions ORDER BY loaded_at, id
                    """
            ).map { row in
                PolicyVersionRecord(
                    id: row[0], path: row[1], sha256: row[2], architecture: row[3],
                    parameterCount: row[4], loadedAt: TrafficTime.date(row[5]),
                    parentID: row[6], manifestJSON: row[7])
            }
        }
    }

    // MARK: - Maintenance

    /// Copies the WAL into the main file and truncates the WAL (TRUNCATE checkpoint).
    /// No-op for in-memory databases.
    public func checkpoint() throws {
        guard !isInMemory else { return }
        try writer.writeWithoutTransaction { db in
            _ = try db.checkpoint(.truncate)
        }
    }
}

/// The AND-ed conditions of a WHERE clause and their arguments: a condition joins only when its value is given.
struct SQLConditions {
    var clauses: [String] = []
    var args: [(any DatabaseValueConvertible)?] = []

    mutating func add(_ clause: String, _ value: (any DatabaseValueConvertible)?) {
        guard let value else { return }
        clauses.append(clause)
        args.append(value)
    }
}
