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
}
