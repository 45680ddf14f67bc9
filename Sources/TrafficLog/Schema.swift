import GRDB

/// The traffic log schema, as GRDB `DatabaseMigrator` migrations.
///
/// Conventions:
/// - Instants (`created_at`, `loaded_at`) are REAL seconds since 1970-01-01 UTC
///   (`datetime(created_at, 'unixepoch')` in the sqlite3 shell).
/// - Token ids / logprobs / loss masks are BLOBs: little-endian int32 / float32 / uint8.
/// - Booleans are INTEGER 0/1.
/// - Migrations are append-only: never edit a shipped migration, add "v2", "v3", ...
enum TrafficSchema {
    static let migrationNames = ["v1", "v2_console", "v2-policy-events", "v3_trainable", "v4_policy_logprobs", "v5_console"]

    static func migrator() -> DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(sql: v1)
        }
        migrator.registerMigration("v2_console") { db in
            try db.execute(sql: ConsoleSchema.v2)
        }
        migrator.registerMigration("v2-policy-events") { db in
            try db.execute(sql: v2PolicyEvents)
        }
        migrator.registerMigration("v3_trainable") { db in
            try db.execute(sql: v3Trainable)
        }
        migrator.registerMigration("v4_policy_logprobs") { db in
            try db.execute(sql: v4PolicyLogprobs)
        }
        migrator.registerMigration("v5_console") { db in
            try db.execute(sql: ConsoleSchema.v5Console)
        }
        return migrator
    }

    /// The fleet's serving policy over time (one row per swap or rollback through any replica
    /// sharing the log; the latest row is the version to serve). The PostgreSQL backend has
    /// the same table (TrafficLogPostgres/PostgresSchema.swift).
    static let v2PolicyEvents = """
        CREATE TABLE policy_events (
            seq         INTEGER PRIMARY KEY AUTOINCREMENT,
            version_id  TEXT NOT NULL,
            path        TEXT NOT NULL,
            action      TEXT NOT NULL CHECK (action IN ('start', 'swap', 'rollback')),
            replica     TEXT,
            created_at  REAL NOT NULL
        );
        """

    /// v3: episodes whose texts and token ids were redacted (`log.redact_bodies`) are marked
    /// not trainable; the trainer skips them and counts them.
    static let v3Trainable = """
        ALTER TABLE episodes ADD COLUMN trainable INTEGER NOT NULL DEFAULT 1;
        """

    /// v4: which log-prob the policy turns hold (`PolicyLogprobKind`: an inference engine may log
    /// the model's log-softmax where the embedded engine logs the sampling distribution's), and
    /// whether the policy sampled. NULL: no policy session, or logged before v4. The PostgreSQL
    /// backend has the same columns.
    static let v4PolicyLogprobs = """
        ALTER TABLE episodes ADD COLUMN policy_logprobs TEXT CHECK (policy_logprobs IN ('sampling', 'model'));
        ALTER TABLE episodes ADD COLUMN policy_sampled INTEGER CHECK (policy_sampled IN (0, 1));
        """

    static let v1 = """
        CREATE TABLE episodes (
            id                TEXT PRIMARY KEY NOT NULL,
            created_at        REAL NOT NULL,
            route             TEXT NOT NULL,
            mode              TEXT NOT NULL,
            key_id            TEXT,
            requested_model   TEXT,
            upstream_model    TEXT,
            policy_version    TEXT,
            stream            INTEGER NOT NULL CHECK (stream IN (0, 1)),
            request_json      TEXT,
            response_text     TEXT,
            finish_reason     TEXT,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            total_tokens      INTEGER,
            policy_tokens     INTEGER,
            status            INTEGER NOT NULL,
            outcome           TEXT,
            error             TEXT,
            question          TEXT,
            format_score      REAL,
            total_ms          REAL NOT NULL,
            upstream_ms       REAL,
            overhead_ms       REAL
        );
        CREATE INDEX episodes_created_at ON episodes(created_at, id);
        CREATE INDEX episodes_route ON episodes(route, created_at);
        CREATE INDEX episodes_policy_version ON episodes(policy_version, created_at);

        CREATE TABLE turns (
            episode_id        TEXT NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
            idx               INTEGER NOT NULL,
            kind              TEXT NOT NULL,
            input_ids         BLOB,
            output_ids        BLOB,
            logprobs          BLOB,
            loss_mask         BLOB,
            text              TEXT,
            call              TEXT,
            upstream_request  TEXT,
            upstream_response TEXT,
            latency_ms        REAL,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            status            INTEGER,
            error             TEXT,
            PRIMARY KEY (episode_id, idx)
        );

        CREATE TABLE feedback (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            episode_id  TEXT NOT NULL REFERENCES episodes(id) ON DELETE CASCADE,
            kind        TEXT NOT NULL CHECK (kind IN ('score', 'reference', 'label')),
            value       TEXT NOT NULL,
            source      TEXT,
            created_at  REAL NOT NULL
        );
        CREATE INDEX feedback_episode ON feedback(episode_id, kind);

        CREATE TABLE policy_versions (
            id              TEXT PRIMARY KEY NOT NULL,
            path            TEXT NOT NULL,
            sha256          TEXT NOT NULL,
            architecture    TEXT NOT NULL,
            parameter_count INTEGER NOT NULL,
            loaded_at       REAL NOT NULL,
            parent_id       TEXT,
            manifest_json   TEXT
        );
        CREATE INDEX policy_versions_loaded_at ON policy_versions(loaded_at);
        """
}
