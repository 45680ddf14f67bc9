import Foundation
import PostgresNIO
import TrafficLog

// The web console's reads on PostgreSQL: the same pages, filters and keyset cursors as the
// SQLite backend (TrafficLog/ConsoleReads.swift), on the indexes of migration v5_console.
// A text search matches every word (the last also as a prefix) with `to_tsquery('simple')`
// on the GIN index of the question.
extension PostgresLogBackend {
    /// `word & word & last:*` from the searched words; they are runs of letters and digits, so
    /// nothing a person types reaches tsquery's own syntax.
    static func tsQuery(_ filter: ConsoleFilter) -> String? {
        let words = filter.searchWords.map { $0.lowercased() }
        guard !words.isEmpty else { return nil }
        return words.dropLast().joined(separator: " & ") + (words.count > 1 ? " & " : "") + words[words.count - 1] + ":*"
    }

    public func consoleEpisodes(_ filter: ConsoleFilter, after: ConsoleCursor?, limit: Int) async throws -> ConsolePage {
        let limit = max(1, min(limit, 500))
        var clauses: [String] = []
        var b = PostgresBindings()
        func param<V: PostgresEncodable & PostgresNonThrowingEncodable>(_ v: V) -> String {
            b.append(v)
            return "$\(b.count)"
        }
        if let v = filter.since { clauses.append("e.created_at >= \(param(TrafficTime.databaseValue(v)))") }
        if let v = filter.until { clauses.append("e.created_at < \(param(TrafficTime.databaseValue(v)))") }
        if let v = filter.route { clauses.append("e.route = \(param(v))") }
        if let v = filter.mode { clauses.append("e.mode = \(param(v))") }
        if let v = filter.status { clauses.append("e.status = \(param(v))") }
        if let v = filter.outcome { clauses.append("e.outcome = \(param(v))") }
        if let v = filter.policyVersion { clauses.append("e.policy_version = \(param(v))") }
        if let v = filter.keyID { clauses.append("e.key_id = \(param(v))") }
        if let v = filter.hasFeedback { clauses.append(v ? "e.feedback_count > 0" : "e.feedback_count = 0") }
        if filter.text != nil {
            // Words that are all punctuation search for nothing, as in SQLite.
            guard let q = Self.tsQuery(filter) else { return ConsolePage(episodes: [], next: nil) }
            clauses.append("to_tsvector('simple', COALESCE(e.question, '')) @@ to_tsquery('simple', \(param(q)))")
        }
        if let after {
            clauses.append("(e.created_at, e.id) < (\(param(after.createdAt)), \(param(after.id)))")
        }
        let whereSQL = clauses.isEmpty ? "" : " WHERE " + clauses.joined(separator: " AND ")
        let rows = try await query(
            """
            SELECT e.id, e.created_at, e.route, e.mode, e.key_id, e.requested_model, e.policy_version, e.status,
                   e.outcome, substr(e.question, 1, 160), e.total_ms, e.format_score, e.feedback_count
            FROM episodes e\(whereSQL) ORDER BY e.created_at DESC, e.id DESC LIMIT \(param(limit + 1))
            """, b)
        var items: [(Double, EpisodeSummary)] = []
        for row in rows.prefix(limit) {
            let r = row.makeRandomAccess()
            let t = try r[1].decode(Double.self)
            items.append(
                (
                    t,
                    EpisodeSummary(
                        id: try r[0].decode(String.self), createdAt: TrafficTime.date(t), route: try r[2].decode(String.self),
                        mode: try r[3].decode(String.self), keyID: try r[4].decode(String?.self),
                        requestedModel: try r[5].decode(String?.self), policyVersion: try r[6].decode(String?.self),
                        status: try r[7].decode(Int.self), outcome: try r[8].decode(String?.self), question: try r[9].decode(String?.self),
                        totalMs: try r[10].decode(Double.self), formatScore: try r[11].decode(Double?.self),
                        feedbackCount: try r[12].decode(Int.self))
                ))
        }
        let next = rows.count > limit ? items.last.map { ConsoleCursor(createdAt: $0.0, id: $0.1.id) } : nil
        return ConsolePage(episodes: items.map(\.1), next: next)
    }

    public func consoleOverview(since: Date, bucketSeconds: Int, sampleSize: Int) async throws -> ConsoleOverview {
        let start = TrafficTime.databaseValue(since)
        let width = Double(max(1, bucketSeconds))
        func binds(_ values: Double...) -> PostgresBindings {
            var b = PostgresBindings()
            for v in values { b.append(v) }
            return b
        }
        var buckets: [ConsoleOverview.Bucket] = []
        for row in try await query(
            """
            SELECT FLOOR((created_at - $1) / $2)::BIGINT AS b, COUNT(*), COUNT(*) FILTER (WHERE status >= 400),
                   COUNT(*) FILTER (WHERE mode = 'collaborate')
            FROM episodes WHERE created_at >= $1 GROUP BY b ORDER BY b
            """, binds(start, width))
        {
            let r = row.makeRandomAccess()
            let b = try r[0].decode(Int.self)
            buckets.append(
                .init(
                    start: TrafficTime.date(start + Double(b) * width), requests: try r[1].decode(Int.self),
                    errors: try r[2].decode(Int.self), collaborations: try r[3].decode(Int.self)))
        }
        var series: [String: [Double]] = ["total": [], "upstream": [], "overhead": [], "policy": []]
        var b = binds(start)
        b.append(sampleSize)
        for row in try await query(
            """
            SELECT total_ms, upstream_ms, overhead_ms FROM episodes WHERE created_at >= $1
            ORDER BY created_at DESC LIMIT $2
            """, b)
        {
            let r = row.makeRandomAccess()
            if let v = try r[0].decode(Double?.self) { series["total"]!.append(v) }
            if let v = try r[1].decode(Double?.self) { series["upstream"]!.append(v) }
            if let v = try r[2].decode(Double?.self) { series["overhead"]!.append(v) }
        }
        var bp = binds(start)
        bp.append(max(1, sampleSize / 4))
        for row in try await query(
            """
            SELECT SUM(t.latency_ms) FROM turns t WHERE t.kind = 'policy' AND t.episode_id IN
              (SELECT id FROM episodes WHERE mode = 'collaborate' AND created_at >= $1 ORDER BY created_at DESC LIMIT $2)
            GROUP BY t.episode_id HAVING COUNT(t.latency_ms) > 0
            """, bp)
        {
            if let v = try row.makeRandomAccess()[0].decode(Double?.self) { series["policy"]!.append(v) }
        }
        var latency: [String: ConsoleOverview.Percentiles] = [:]
        for (k, v) in series {
            let s = v.sorted()
            latency[k] = .init(p50: ConsoleOverview.percentile(s, 0.50), p99: ConsoleOverview.percentile(s, 0.99), count: s.count)
        }
        let outcomes = try await query(
            """
            SELECT COALESCE(outcome, 'none'), COUNT(*) FROM episodes WHERE mode = 'collaborate' AND created_at >= $1
            GROUP BY 1 ORDER BY 2 DESC, 1
            """, binds(start)
        ).map { row -> (outcome: String, count: Int) in
            let r = row.makeRandomAccess()
            return (outcome: try r[0].decode(String.self), count: try r[1].decode(Int.self))
        }
        // Scores are stored as text; one that is not a number counts as no score.
        let rewards = try await query(
            """
            SELECT e.policy_version, FLOOR((e.created_at - $1) / $2)::BIGINT AS b, AVG(f.value::DOUBLE PRECISION), COUNT(*)
            FROM feedback f JOIN episodes e ON e.id = f.episode_id
            WHERE f.kind = 'score' AND e.created_at >= $1 AND e.policy_version IS NOT NULL
              AND f.value ~ '^\\s*[-+]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][-+]?[0-9]+)?\\s*$'
            GROUP BY 1, 2 ORDER BY 1, 2
            """, binds(start, width)
        ).map { row -> ConsoleOverview.RewardPoint in
            let r = row.makeRandomAccess()
            let bucket = try r[1].decode(Int.self)
            return .init(
                policyVersion: try r[0].decode(String.self), start: TrafficTime.date(start + Double(bucket) * width),
                meanScore: try r[2].decode(Double.self), count: try r[3].decode(Int.self))
        }
        return ConsoleOverview(
            windowStart: since, bucketSeconds: Int(width), buckets: buckets, latency: latency,
            outcomes: outcomes, rewards: rewards)
    }

    public func consoleVersionUsage() async throws -> [VersionUsage] {
        try await query(
            """
            SELECT policy_version, COUNT(*), MIN(created_at), MAX(created_at) FROM episodes
            WHERE policy_version IS NOT NULL GROUP BY policy_version ORDER BY policy_version
            """
        ).map { row in
            let r = row.makeRandomAccess()
            return VersionUsage(
                policyVersion: try r[0].decode(String.self), episodes: try r[1].decode(Int.self),
                first: TrafficTime.date(try r[2].decode(Double.self)), last: TrafficTime.date(try r[3].decode(Double.self)))
        }
    }

    public func consoleTrainingCounts() async throws -> [TrainingDataCount] {
        var counts = try await query(
            """
            SELECT route, policy_version, COUNT(*) FROM episodes WHERE mode = 'collaborate'
            GROUP BY route, policy_version ORDER BY route, policy_version NULLS FIRST
            """
        ).map { row -> TrainingDataCount in
            let r = row.makeRandomAccess()
            return TrainingDataCount(
                route: try r[0].decode(String.self), policyVersion: try r[1].decode(String?.self),
                episodes: try r[2].decode(Int.self), withReference: 0, withScore: 0, withRewardSource: 0)
        }
        for row in try await query(
            """
            SELECT e.route, e.policy_version,
                   COUNT(DISTINCT CASE WHEN f.kind = 'reference' THEN e.id END),
                   COUNT(DISTINCT CASE WHEN f.kind = 'score' THEN e.id END),
                   COUNT(DISTINCT e.id)
            FROM feedback f JOIN episodes e ON e.id = f.episode_id
            WHERE e.mode = 'collaborate' AND f.kind IN ('reference', 'score')
            GROUP BY e.route, e.policy_version
            """)
        {
            let r = row.makeRandomAccess()
            let route = try r[0].decode(String.self)
            let version = try r[1].decode(String?.self)
            guard let i = counts.firstIndex(where: { $0.route == route && $0.policyVersion == version }) else { continue }
            counts[i].withReference = try r[2].decode(Int.self)
            counts[i].withScore = try r[3].decode(Int.self)
            counts[i].withRewardSource = try r[4].decode(Int.self)
        }
        return counts
    }
}
