/// Migration "v2_console": what the web console needs to stay fast on a large log.
///
/// - One index per console filter, each ending in (created_at, id), so a filtered, newest-first
///   page is an index range walked backwards (keyset pagination, no OFFSET).
/// - `episodes_fts`: an FTS5 index of the collaboration question (SQLite's built-in full-text
///   search, unicode61 tokenizer). It keeps its own copy of the text (not an external-content
///   table) and the episode id, so a search never depends on `episodes`' implicit rowids; its
///   rowid is the episode row's rowid only to make the delete trigger a point delete.
///   Triggers keep it in step with inserts and deletes (retention); rows present before the
///   migration are indexed by it.
enum ConsoleSchema {
    static let v2 = """
        CREATE INDEX episodes_mode_time ON episodes(mode, created_at, id);
        CREATE INDEX episodes_status_time ON episodes(status, created_at, id);
        CREATE INDEX episodes_outcome_time ON episodes(outcome, created_at, id);
        CREATE INDEX episodes_key_time ON episodes(key_id, created_at, id);
        CREATE VIRTUAL TABLE episodes_fts USING fts5(question, episode_id UNINDEXED, tokenize = 'unicode61');
        CREATE TRIGGER episodes_fts_insert AFTER INSERT ON episodes WHEN new.question IS NOT NULL BEGIN
            INSERT INTO episodes_fts(rowid, question, episode_id) VALUES (new.rowid, new.question, new.id);
        END;
        CREATE TRIGGER episodes_fts_delete AFTER DELETE ON episodes WHEN old.question IS NOT NULL BEGIN
            DELETE FROM episodes_fts WHERE rowid = old.rowid;
        END;
        CREATE TRIGGER episodes_fts_update AFTER UPDATE OF question ON episodes BEGIN
            DELETE FROM episodes_fts WHERE rowid = old.rowid;
            INSERT INTO episodes_fts(rowid, question, episode_id) SELECT new.rowid, new.question, new.id WHERE new.question IS NOT NULL;
        END;
        INSERT INTO episodes_fts(rowid, question, episode_id) SELECT rowid, question, id FROM episodes WHERE question IS NOT NULL;
        CREATE INDEX feedback_kind_episode ON feedback(kind, episode_id);
        """

    /// Migration "v5_console": each episode's number of feedback rows, kept by triggers on
    /// `feedback`, with a partial index of the episodes that have any. The console's
    /// "has feedback" filter is then a newest-first walk of that index (a page reads about a
    /// page of rows), where `id IN (SELECT episode_id FROM feedback)` read and sorted every
    /// feedback row's episode first (2.3 s at p95 on a million episodes).
    static let v5Console = """
        ALTER TABLE episodes ADD COLUMN feedback_count INTEGER NOT NULL DEFAULT 0;
        UPDATE episodes SET feedback_count = (SELECT COUNT(*) FROM feedback f WHERE f.episode_id = episodes.id)
            WHERE id IN (SELECT episode_id FROM feedback);
        CREATE INDEX episodes_with_feedback ON episodes(created_at, id) WHERE feedback_count > 0;
        CREATE TRIGGER feedback_count_insert AFTER INSERT ON feedback BEGIN
            UPDATE episodes SET feedback_count = feedback_count + 1 WHERE id = new.episode_id;
        END;
        CREATE TRIGGER feedback_count_delete AFTER DELETE ON feedback BEGIN
            UPDATE episodes SET feedback_count = feedback_count - 1 WHERE id = old.episode_id;
        END;
        """
}
