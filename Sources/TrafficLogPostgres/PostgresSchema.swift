/// The traffic log schema on PostgreSQL: the same tables, columns, indexes and migration
/// names as the SQLite schema (TrafficLog/Schema.swift), in PostgreSQL types:
/// - instants are DOUBLE PRECISION seconds since 1970 (as SQLite's REAL: the same `Date`
///   round trip, bit for bit), ids are the same UUIDv7 text;
/// - token ids / logprobs / loss masks are BYTEA, little-endian as in SQLite;
/// - integers are BIGINT, booleans BOOLEAN.
///
/// Migrations are applied at start, in one transaction under a transaction-level advisory
/// lock, so that replicas starting together apply each migration once (the others wait, then
/// find it applied). Append-only, like SQLite's: never edit a shipped migration.
enum PostgresSchema {
    /// Key of the advisory lock held while migrating (any constant unlikely to clash).
    static let migrationLockKey: Int64 = 0x7072_6f6d_7074_7231  // "promptr1"

    /// Channel on which policy events are notified (payload: the event's seq).
    static let policyChannel = "gateway_policy_events"

    static let migrations: [(name: String, statements: [String])] = [
        (
            "v1",
            [
                """
                CREATE TABLE episodes (
                    id                TEXT PRIMARY KEY NOT NULL,
                    created_at        DOUBLE PRECISION NOT NULL,
                    route             TEXT NOT NULL,
                    mode              TEXT NOT NULL,
                    key_id            TEXT,
                    requested_model   TEXT,
                    upstream_model    TEXT,
                    policy_version    TEXT,
                    stream            BOOLEAN NOT NULL,
                    request_json      TEXT,
                    response_text     TEXT,
                    finish_reason     TEXT,
                    prompt_tokens     BIGINT,
                    completion_tokens BIGINT,
                    total_tokens      BIGINT,
                    policy_tokens     BIGINT,
                    status            BIGINT NOT NULL,
                    outcome           TEXT,
                    error             TEXT,
                    question          TEXT,
                    format_score      DOUBLE PRECISION,
                    total_ms          DOUBLE PRECISION NOT NULL,
                    upstream_ms       DOUBLE PRECISION,
                    overhead_ms       DOUBLE PRECISION
                )
                """,
                "CREATE INDEX episodes_created_at ON episodes(created_at, id)",
                "CREATE INDEX episodes_route ON episodes(route, created_at)",
                "CREATE INDEX episodes_policy_version ON episodes(policy_version, created_at)",
                """
                CREATE TABLE turns (
                    episode_id        TEXT NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
                    idx               BIGINT NOT NULL,
                    kind              TEXT NOT NULL,
                    input_ids         BYTEA,
                    output_ids        BYTEA,
                    logprobs          BYTEA,
                    loss_mask         BYTEA,
                    text              TEXT,
                    call              TEXT,
                    upstream_request  TEXT,
                    upstream_response TEXT,
                    latency_ms        DOUBLE PRECISION,
                    prompt_tokens     BIGINT,
                    completion_tokens BIGINT,
                    status            BIGINT,
                    error             TEXT,
                    PRIMARY KEY (episode_id, idx)
                )
                """,
                """
                CREATE TABLE feedback (
                    id          BIGSERIAL PRIMARY KEY,
                    episode_id  TEXT NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
                    kind        TEXT NOT NULL CHECK (kind IN ('score', 'reference', 'label')),
                    value       TEXT NOT NULL,
                    source      TEXT,
                    created_at  DOUBLE PRECISION NOT NULL
                )
                """,
                "CREATE INDEX feedback_episode ON feedback(episode_id, kind)",
                """
                CREATE TABLE policy_versions (
                    id              TEXT PRIMARY KEY NOT NULL,
                    path            TEXT NOT NULL,
                    sha256          TEXT NOT NULL,
                    architecture    TEXT NOT NULL,
                    parameter_count BIGINT NOT NULL,
                    loaded_at       DOUBLE PRECISION NOT NULL,
                    parent_id       TEXT,
                    manifest_json   TEXT
                )
                """,
                "CREATE INDEX policy_versions_loaded_at ON policy_versions(loaded_at)",
            ]
        ),
        (
            "v2-policy-events",
            [
                """
                CREATE TABLE policy_events (
                    seq         BIGSERIAL PRIMARY KEY,
                    version_id  TEXT NOT NULL,
                    path        TEXT NOT NULL,
                    action      TEXT NOT NULL CHECK (action IN ('start', 'swap', 'rollback')),
                    replica     TEXT,
                    created_at  DOUBLE PRECISION NOT NULL
                )
                """
            ]
        ),
        // Episodes whose bodies were redacted (`log.redact_bodies`) are not trainable.
        (
            "v3_trainable",
            [
                "ALTER TABLE episodes ADD COLUMN trainable BOOLEAN NOT NULL DEFAULT TRUE"
            ]
        ),
        // Which log-prob the policy turns hold, and whether the policy sampled (as SQLite's v4).
        (
            "v4_policy_logprobs",
            [
                "ALTER TABLE episodes ADD COLUMN policy_logprobs TEXT CHECK (policy_logprobs IN ('sampling', 'model'))",
                "ALTER TABLE episodes ADD COLUMN policy_sampled BOOLEAN",
            ]
        ),
        // The web console (PostgresConsole.swift), as SQLite's v2_console and v5_console:
        // one index per filter ending in (created_at, id) for newest-first keyset pages, a
        // per-episode feedback count kept by a trigger with a partial index of the episodes
        // that have any, and a GIN full-text index of the question (`simple` configuration:
        // lower-cased words, no stemming, as SQLite's unicode61).
        (
            "v5_console",
            [
                "CREATE INDEX episodes_mode_time ON episodes(mode, created_at, id)",
                "CREATE INDEX episodes_status_time ON episodes(status, created_at, id)",
                "CREATE INDEX episodes_outcome_time ON episodes(outcome, created_at, id)",
                "CREATE INDEX episodes_key_time ON episodes(key_id, created_at, id)",
                "CREATE INDEX feedback_kind_episode ON feedback(kind, episode_id)",
                "ALTER TABLE episodes ADD COLUMN feedback_count BIGINT NOT NULL DEFAULT 0",
                """
                UPDATE episodes e SET feedback_count = c.n
                FROM (SELECT episode_id, COUNT(*) AS n FROM feedback GROUP BY episode_id) c WHERE c.episode_id = e.id
                """,
                "CREATE INDEX episodes_with_feedback ON episodes(created_at, id) WHERE feedback_count > 0",
                """
                CREATE FUNCTION feedback_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF TG_OP = 'INSERT' THEN
                        UPDATE episodes SET feedback_count = feedback_count + 1 WHERE id = NEW.episode_id;
                    ELSE
                        UPDATE episodes SET feedback_count = feedback_count - 1 WHERE id = OLD.episode_id;
                    END IF;
                    RETURN NULL;
                END $$
                """,
                "CREATE TRIGGER feedback_count AFTER INSERT OR DELETE ON feedback FOR EACH ROW EXECUTE FUNCTION feedback_count_change()",
                "CREATE INDEX episodes_question_search ON episodes USING GIN (to_tsvector('simple', COALESCE(question, '')))",
            ]
        ),
    ]

    static var migrationNames: [String] { migrations.map(\.name) }
}
