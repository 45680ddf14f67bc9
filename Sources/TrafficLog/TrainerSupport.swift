import Foundation
import GRDB

// Writes and reads the trainer (gateway-train rollout) needs beyond the gateway's own: an episode
// and its reference answers committed in one transaction (so a crash never leaves a rollout
// episode without its reward source), and per-question counts for resumable rollouts.
extension TrafficDatabase {
    /// Inserts `episode` and `feedback` (rows for that episode) atomically.
    public func insert(episode: EpisodeRecord, feedback: [FeedbackRecord]) throws {
        try Self.validate([episode])
        for f in feedback {
            try Self.validate(f)
            guard f.episodeID == episode.id else {
                throw TrafficLogError.invalidField(
                    record: "feedback", field: "episode_id", value: f.episodeID,
                    reason: "must be the id of the episode inserted with it")
            }
        }
        try writer.write { db in
            try Self.insertRows([episode], db)
            for f in feedback { try Self.insertFeedbackRow(f, db) }
        }
    }

    /// Number of episodes per question on `route` that carry at least one feedback row (rollout
    /// episodes are logged together with their reference answers).
    public func episodeCountsByQuestion(route: String) throws -> [String: Int] {
        try writer.read { db in
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT question, COUNT(*) FROM episodes
                    WHERE route = ? AND question IS NOT NULL
                      AND EXISTS (SELECT 1 FROM feedback f WHERE f.episode_id = episodes.id)
                    GROUP BY question
                    """, arguments: [route])
            var out: [String: Int] = [:]
            for r in rows { out[r[0] as String] = r[1] as Int }
            return out
        }
    }
}
