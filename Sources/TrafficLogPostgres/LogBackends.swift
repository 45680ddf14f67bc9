import Foundation
import Logging
import PostgresNIO
import TrafficLog

/// Opens the traffic log at a location, whichever backend it names: what the gateway, the
/// trainer and the benchmarks share, so a `postgres://` URL works wherever a SQLite path does.
public enum LogBackends {
    /// The backend for `location`: a SQLite file (created and migrated) or a PostgreSQL
    /// database (connected and migrated under an advisory lock).
    public static func open(
        _ location: LogLocation, logger: Logger,
        connectTimeout: Duration = .seconds(10)
    ) async throws -> any LogBackend {
        switch location {
        case .sqlite(let path):
            return try SQLiteLogBackend(path: path)
        case .postgres(let url):
            return try await PostgresLogBackend.open(url: url, logger: logger, connectTimeout: connectTimeout)
        }
    }

    /// A blocking store for the trainer and tools: a SQLite path opens a `TrafficDatabase`, a
    /// `postgres://` URL a `BlockingLogStore` over `PostgresLogBackend`.
    public static func openStore(_ location: String, logger: Logger = Logger(label: "traffic-log")) throws -> any LogStore {
        switch LogLocation(location) {
        case .sqlite(let path):
            return try TrafficDatabase(path: path)
        case .postgres(let url):
            return try BlockingLogStore(opening: { try await PostgresLogBackend.open(url: url, logger: logger) })
        }
    }
}

/// Database administration for tests and benchmarks: a fresh, empty database per run.
public enum PostgresAdmin {
    /// Creates database `name` (letters, digits, `_`) on the server of `adminURL` and returns
    /// the URL of the new database (same credentials).
    public static func createDatabase(named name: String, adminURL: String) async throws -> String {
        guard !name.isEmpty, name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_") }) else {
            throw PostgresLogError.invalidURL(reason: "database names here are letters, digits and '_'")
        }
        let settings = try PostgresURL(adminURL)
        let client = PostgresClient(configuration: settings.configuration)
        let run = Task { await client.run() }
        defer { run.cancel() }
        try await PostgresLogBackend.withTimeout(.seconds(30), "CREATE DATABASE") {
            _ = try await client.query(PostgresQuery(unsafeSQL: "CREATE DATABASE \(name)"))
        }
        return withDatabase(name, in: adminURL)
    }

    /// `url` with its database (the path) replaced by `name`.
    public static func withDatabase(_ name: String, in url: String) -> String {
        guard var c = URLComponents(string: url) else { return url }
        c.path = "/" + name
        return c.string ?? url
    }
}
