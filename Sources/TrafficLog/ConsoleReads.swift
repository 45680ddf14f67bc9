import Foundation
import GRDB

// What the web console reads from the traffic log, behind one small protocol so that another log
// backend can serve the same pages. Every list is newest first with keyset pagination on
// (created_at, id): a page costs the same at the millionth row as at the first.

/// Filters of the console's episode list. All are ANDed; nil means "any".
public struct ConsoleFilter: Sendable, Equatable {
    public var since: Date?
    public var until: Date?
    public var route: String?
    public var mode: String?
    public var status: Int?
    public var outcome: String?
    public var policyVersion: String?
    public var keyID: String?
    /// true: at least one feedback row; false: none.
    public var hasFeedback: Bool?
    /// Full-text search in the question (FTS5; every word must occur, the last as a prefix).
    public var text: String?

    public init(
        since: Date? = nil, until: Date? = nil, route: String? = nil, mode: String? = nil, status: Int? = nil,
        outcome: String? = nil, policyVersion: String? = nil, keyID: String? = nil, hasFeedback: Bool? = nil,
        text: String? = nil
    ) {
        self.since = since
        self.until = until
        self.route = route
        self.mode = mode
        self.status = status
        self.outcome = outcome
        self.policyVersion = policyVersion
        self.keyID = keyID
        self.hasFeedback = hasFeedback
        self.text = text
    }
}

/// Where the next page starts: the last row of the previous one.
public struct ConsoleCursor: Sendable, Equatable {
    public var createdAt: Double
    public var id: String
    /// For a text search: the last row's position in the full-text index (results come in the
    /// order the episodes were logged, newest first, which FTS5 walks without sorting).
    public var searchRow: Int64?

    public init(createdAt: Double, id: String, searchRow: Int64? = nil) {
        self.createdAt = createdAt
        self.id = id
        self.searchRow = searchRow
    }

    /// As it travels in a URL: `<seconds>_<id>`, or `s<search row>_<seconds>_<id>`.
    public var token: String { (searchRow.map { "s\($0)_" } ?? "") + "\(createdAt)_\(id)" }

    public init?(token: String) {
        var rest = Substring(token)
        var searchRow: Int64?
        if rest.hasPrefix("s") {
            guard let sep = rest.firstIndex(of: "_"), let r = Int64(rest[rest.index(after: rest.startIndex)..<sep]) else { return nil }
            searchRow = r
            rest = rest[rest.index(after: sep)...]
        }
        guard let sep = rest.firstIndex(of: "_"), let t = Double(rest[..<sep]), t.isFinite else { return nil }
        let id = String(rest[rest.index(after: sep)...])
        guard !id.isEmpty, id.count <= 64 else { return nil }
        self.init(createdAt: t, id: id, searchRow: searchRow)
    }
}

/// One row of the episode list (no bodies, no turns).
public struct EpisodeSummary: Sendable, Equatable {
    public var id: String
    public var createdAt: Date
    public var route: String
    public var mode: String
    public var keyID: String?
    public var requestedModel: String?
    public var policyVersion: String?
    public var status: Int
    public var outcome: String?
    /// The first 160 characters of the question.
    public var question: String?
    public var totalMs: Double
    public var formatScore: Double?
    public var feedbackCount: Int

    public init(
        id: String, createdAt: Date, route: String, mode: String, keyID: String?, requestedModel: String?, policyVersion: String?,
        status: Int, outcome: String?, question: String?, totalMs: Double, formatScore: Double?, feedbackCount: Int
    ) {
        self.id = id
        self.createdAt = createdAt
        self.route = route
        self.mode = mode
        self.keyID = keyID
        self.requestedModel = requestedModel
        self.policyVersion = policyVersion
        self.status = status
        self.outcome = outcome
        self.question = question
        self.totalMs = totalMs
        self.formatScore = formatScore
        self.feedbackCount = feedbackCount
    }
}

public struct ConsolePage: Sendable, Equatable {
    public var episodes: [EpisodeSummary]
    /// nil on the last page.
    public var next: ConsoleCursor?

    public init(episodes: [EpisodeSummary], next: ConsoleCursor?) {
        self.episodes = episodes
        self.next = next
    }
}

/// The Overview page's numbers for one time window.
public struct ConsoleOverview: Sendable {
    public struct Bucket: Sendable {
        public var start: Date
        public var requests: Int
        public var errors: Int
        public var collaborations: Int

        public init(start: Date, requests: Int, errors: Int, collaborations: Int) {
            self.start = start
            self.requests = requests
            self.errors = errors
            self.collaborations = collaborations
        }
    }
    public struct Percentiles: Sendable {
        public var p50: Double?
        public var p99: Double?
        public var count: Int

        public init(p50: Double?, p99: Double?, count: Int) {
            self.p50 = p50
            self.p99 = p99
            self.count = count
        }
    }
    public struct RewardPoint: Sendable {
        public var policyVersion: String
        public var start: Date
        public var meanScore: Double
        public var count: Int

        public init(policyVersion: String, start: Date, meanScore: Double, count: Int) {
            self.policyVersion = policyVersion
            self.start = start
            self.meanScore = meanScore
            self.count = count
        }
    }
    public var windowStart: Date
    public var bucketSeconds: Int
    public var buckets: [Bucket]
    /// "total", "upstream", "overhead", "policy" over the most recent episodes of the window.
    public var latency: [String: Percentiles]
    /// Collaboration outcomes in the window, most frequent first.
    public var outcomes: [(outcome: String, count: Int)]
    /// Mean feedback score per policy version and bucket, by episode time.
    public var rewards: [RewardPoint]

    public init(
        windowStart: Date, bucketSeconds: Int, buckets: [Bucket], latency: [String: Percentiles],
        outcomes: [(outcome: String, count: Int)], rewards: [RewardPoint]
    ) {
        self.windowStart = windowStart
        self.bucketSeconds = bucketSeconds
        self.buckets = buckets
        self.latency = latency
        self.outcomes = outcomes
        self.rewards = rewards
    }
}

/// How many episodes of one route and policy version a trainer could use.
public struct TrainingDataCount: Sendable, Equatable {
    public var route: String
    public var policyVersion: String?
    public var episodes: Int
    public var withReference: Int
    public var withScore: Int
    /// With a reference or a score: what `gateway-train` selects.
    public var withRewardSource: Int

    public init(route: String, policyVersion: String?, episodes: Int, withReference: Int, withScore: Int, withRewardSource: Int) {
        self.route = route
        self.policyVersion = policyVersion
        self.episodes = episodes
        self.withReference = withReference
        self.withScore = withScore
        self.withRewardSource = withRewardSource
    }
}

public struct VersionUsage: Sendable, Equatable {
    public var policyVersion: String
    public var episodes: Int
    public var first: Date
    public var last: Date

    public init(policyVersion: String, episodes: Int, first: Date, last: Date) {
        self.policyVersion = policyVersion
        self.episodes = episodes
        self.first = first
        self.last = last
    }
}

extension ConsoleOverview {
    /// Nearest-rank percentile of sorted values.
    public static func percentile(_ sorted: [Double], _ q: Double) -> Double? {
        guard !sorted.isEmpty else { return nil }
        let rank = Int((q * Double(sorted.count)).rounded(.up))
        return sorted[min(sorted.count - 1, max(0, rank - 1))]
    }
}

extension ConsoleFilter {
    /// The words of a text search as the full-text tokenizers see them: runs of letters and
    /// digits (unicode61 in SQLite, the `simple` configuration in PostgreSQL), at most 16.
    public var searchWords: [String] {
        guard let text else { return [] }
        return text.split(whereSeparator: { !($0.isLetter || $0.isNumber) }).prefix(16).map { String($0) }
    }
}

extension TrafficDatabase {
    /// The FTS5 query for what a person typed: each word a quoted phrase (so no FTS syntax
    /// leaks through), all required, the last one also as a prefix. nil when nothing is left.
    static func ftsQuery(_ text: String) -> String? {
        let words = text.split(whereSeparator: { $0.isWhitespace }).map { String($0) }.filter { !$0.isEmpty }.prefix(16)
        guard !words.isEmpty else { return nil }
        var parts = words.map { "\"" + $0.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
        parts[parts.count - 1] += "*"
        return parts.joined(separator: " ")
    }

    static func consoleWhere(_ f: ConsoleFilter) -> ([String], [(any DatabaseValueConvertible)?]) {
        var w = SQLConditions()
        w.add("e.created_at >= ?", f.since.map(TrafficTime.databaseValue))
        w.add("e.created_at < ?", f.until.map(TrafficTime.databaseValue))
        w.add("e.route = ?", f.route)
        w.add("e.mode = ?", f.mode)
        w.add("e.status = ?", f.status)
        w.add("e.outcome = ?", f.outcome)
        w.add("e.policy_version = ?", f.policyVersion)
        w.add("e.key_id = ?", f.keyID)
        // `feedback_count > 0` is the condition of the partial index episodes_with_feedback.
        if let v = f.hasFeedback { w.clauses.append(v ? "e.feedback_count > 0" : "e.feedback_count = 0") }
        return (w.clauses, w.args)
    }

    /// The episode-list query: one page (plus one row, to know whether another follows).
    static func consoleListSQL(_ filter: ConsoleFilter, after: ConsoleCursor?, limit: Int) -> (String, StatementArguments) {
        var (clauses, args) = Self.consoleWhere(filter)
        // A text search walks the FTS matches newest-logged first (FTS5 returns rowids in
        // descending order without sorting; CROSS JOIN keeps that loop outermost), so a page
        // reads about a page of matches however common the word. Other lists walk an index on
        // (created_at, id) backwards.
        var from = "episodes e"
        var order = "e.created_at DESC, e.id DESC"
        var searching = false
        if let t = filter.text, let q = Self.ftsQuery(t) {
            searching = true
            from = "episodes_fts CROSS JOIN episodes e ON e.id = episodes_fts.episode_id"
            order = "episodes_fts.rowid DESC"
            clauses.insert("episodes_fts MATCH ?", at: 0)
            args.insert(q, at: 0)
            if let row = after?.searchRow {
                clauses.append("episodes_fts.rowid < ?")
                args.append(row)
            }
        }
        if let after, !searching {
            clauses.append("(e.created_at, e.id) < (?, ?)")
            args.append(after.createdAt)
            args.append(after.id)
        }
        let whereSQL = clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND ")
        let sql = """
            SELECT e.id, e.created_at, e.route, e.mode, e.key_id, e.requested_model, e.policy_version, e.status,
                   e.outcome, substr(e.question, 1, 160), e.total_ms, e.format_score, e.feedback_count,
                   \(searching ? "episodes_fts.rowid" : "NULL")
            FROM \(from)\(whereSQL) ORDER BY \(order) LIMIT ?
            """
        args.append(limit + 1)
        return (sql, StatementArguments(args))
    }

    public func consoleEpisodes(_ filter: ConsoleFilter, after: ConsoleCursor?, limit: Int) throws -> ConsolePage {
        let limit = max(1, min(limit, 500))
        let (sql, finalArgs) = Self.consoleListSQL(filter, after: after, limit: limit)
        return try writer.read { db in
            var rows: [(Double, Int64?, EpisodeSummary)] = []
            let cursor = try Row.fetchCursor(db, sql: sql, arguments: finalArgs)
            while let row = try cursor.next() {
                let t: Double = row[1]
                rows.append(
                    (
                        t, row[13],
                        EpisodeSummary(
                            id: row[0], createdAt: TrafficTime.date(t), route: row[2], mode: row[3], keyID: row[4],
                            requestedModel: row[5], policyVersion: row[6], status: row[7], outcome: row[8], question: row[9],
                            totalMs: row[10], formatScore: row[11], feedbackCount: row[12])
                    ))
            }
            var next: ConsoleCursor?
            if rows.count > limit {
                rows.removeLast()
                if let last = rows.last { next = ConsoleCursor(createdAt: last.0, id: last.2.id, searchRow: last.1) }
            }
            return ConsolePage(episodes: rows.map { $0.2 }, next: next)
        }
    }

    public func consoleOverview(since: Date, bucketSeconds: Int, sampleSize: Int = 20_000) throws -> ConsoleOverview {
        let start = TrafficTime.databaseValue(since)
        let width = Double(max(1, bucketSeconds))
        return try writer.read { db in
            var buckets: [ConsoleOverview.Bucket] = []
            let rows = try Row.fetchCursor(
                db,
                sql: """
                    SELECT CAST((created_at - ?) / ? AS INTEGER) AS b, COUNT(*), SUM(status >= 400), SUM(mode = 'collaborate')
                    FROM episodes WHERE created_at >= ? GROUP BY b ORDER BY b
                    """, arguments: [start, width, start])
            while let r = try rows.next() {
                let b: Int = r[0]
                buckets.append(
                    .init(start: TrafficTime.date(start + Double(b) * width), requests: r[1], errors: r[2], collaborations: r[3]))
            }
            var series: [String: [Double]] = ["total": [], "upstream": [], "overhead": []]
            let lat = try Row.fetchCursor(
                db,
                sql: """
                    SELECT total_ms, upstream_ms, overhead_ms FROM episodes WHERE created_at >= ?
                    ORDER BY created_at DESC LIMIT ?
                    """, arguments: [start, sampleSize])
            while let r = try lat.next() {
                if let v: Double = r[0] { series["total"]!.append(v) }
                if let v: Double = r[1] { series["upstream"]!.append(v) }
                if let v: Double = r[2] { series["overhead"]!.append(v) }
            }
            series["policy"] = try Double.fetchAll(
                db,
                sql: """
                    SELECT SUM(t.latency_ms) FROM turns t WHERE t.kind = 'policy' AND t.episode_id IN
                      (SELECT id FROM episodes WHERE mode = 'collaborate' AND created_at >= ? ORDER BY created_at DESC LIMIT ?)
                    GROUP BY t.episode_id HAVING COUNT(t.latency_ms) > 0
                    """, arguments: [start, max(1, sampleSize / 4)])
            var latency: [String: ConsoleOverview.Percentiles] = [:]
            for (k, v) in series {
                let s = v.sorted()
                latency[k] = .init(p50: ConsoleOverview.percentile(s, 0.50), p99: ConsoleOverview.percentile(s, 0.99), count: s.count)
            }
            let outcomes = try Row.fetchAll(
                db,
                sql: """
                    SELECT COALESCE(outcome, 'none'), COUNT(*) FROM episodes WHERE mode = 'collaborate' AND created_at >= ?
                    GROUP BY 1 ORDER BY 2 DESC
                    """, arguments: [start]
            ).map { (outcome: $0[0] as String, count: $0[1] as Int) }
            let rewards = try Row.fetchAll(
                db,
                sql: """
                    SELECT e.policy_version, CAST((e.created_at - ?) / ? AS INTEGER) AS b, AVG(CAST(f.value AS REAL)), COUNT(*)
                    FROM feedback f JOIN episodes e ON e.id = f.episode_id
                    WHERE f.kind = 'score' AND e.created_at >= ? AND e.policy_version IS NOT NULL
                    GROUP BY 1, 2 ORDER BY 1, 2
                    """, arguments: [start, width, start]
            ).map { r -> ConsoleOverview.RewardPoint in
                let b: Int = r[1]
                return .init(policyVersion: r[0], start: TrafficTime.date(start + Double(b) * width), meanScore: r[2], count: r[3])
            }
            return ConsoleOverview(
                windowStart: since, bucketSeconds: Int(width), buckets: buckets, latency: latency,
                outcomes: outcomes, rewards: rewards)
        }
    }

    public func consoleVersionUsage() throws -> [VersionUsage] {
        try writer.read { db in
            try Row.fetchAll(
                db,
                sql: """
                    SELECT policy_version, COUNT(*), MIN(created_at), MAX(created_at) FROM episodes
                    WHERE policy_version IS NOT NULL GROUP BY policy_version
                    """
            ).map { VersionUsage(policyVersion: $0[0], episodes: $0[1], first: TrafficTime.date($0[2]), last: TrafficTime.date($0[3])) }
        }
    }

    public func consoleTrainingCounts() throws -> [TrainingDataCount] {
        try writer.read { db in
            struct Key: Hashable {
                var route: String
                var version: String?
            }
            var out: [Key: TrainingDataCount] = [:]
            var order: [Key] = []
            for r in try Row.fetchAll(
                db,
                sql: """
                    SELECT route, policy_version, COUNT(*) FROM episodes WHERE mode = 'collaborate'
                    GROUP BY route, policy_version ORDER BY route, policy_version
                    """)
            {
                let k = Key(route: r[0], version: r[1])
                order.append(k)
                out[k] = TrainingDataCount(
                    route: k.route, policyVersion: k.version, episodes: r[2], withReference: 0, withScore: 0, withRewardSource: 0)
            }
            for r in try Row.fetchAll(
                db,
                sql: """
                    SELECT e.route, e.policy_version,
                           COUNT(DISTINCT CASE WHEN f.kind = 'reference' THEN e.id END),
                           COUNT(DISTINCT CASE WHEN f.kind = 'score' THEN e.id END),
                           COUNT(DISTINCT e.id)
                    FROM feedback f JOIN episodes e ON e.id = f.episode_id
                    WHERE e.mode = 'collaborate' AND f.kind IN ('reference', 'score')
                    GROUP BY e.route, e.policy_version
                    """)
            {
                let k = Key(route: r[0], version: r[1])
                out[k]?.withReference = r[2]
                out[k]?.withScore = r[3]
                out[k]?.withRewardSource = r[4]
            }
            return order.compactMap { out[$0] }
        }
    }
}
