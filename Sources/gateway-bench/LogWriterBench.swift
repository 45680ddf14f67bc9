import ArgumentParser
import Foundation
import Logging
import TrafficLog
import TrafficLogPostgres

/// `gateway-bench log-writer`: the traffic log writer's rows per second into SQLite (a fresh
/// temporary file, the baseline) and into PostgreSQL (`--log-db postgres://...`), in the same
/// run, with the gateway's writer settings and `concurrency` appenders.
struct LogWriterBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "log-writer",
        abstract: "Episodes per second through the traffic log writer: SQLite (baseline) and PostgreSQL, same run.")

    @Option(
        name: .customLong("log-db"),
        help: "A postgres:// URL to measure beside SQLite (its tables get the benchmark's rows; use an empty database).")
    var logDB: String?

    @Option(help: "Episodes per measurement.")
    var episodes: Int = 20_000

    @Option(help: "Comma-separated numbers of concurrent appenders.")
    var concurrency: String = "1,64"

    @Option(help: "Turns per episode (0: passthrough-like rows; 4: a collaboration episode with token ids and log-probs).")
    var turns: Int = 0

    func run() async throws {
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let levels = concurrency.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        print("gateway-bench log-writer: \(episodes) episodes per run, \(turns) turns each, queue 4096, batch 256 (the gateway's defaults)")
        print("appendAndWait = commit_before_response (each appender waits for its commit); append = async")
        print("")
        print("backend     appenders  mode            episodes/s   commits   per commit")
        var results: [String: Double] = [:]
        for level in levels {
            for mode in ["appendAndWait", "append"] {
                let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-logbench-\(UUID().uuidString)")
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                defer { try? FileManager.default.removeItem(at: dir) }
                var backends: [(String, any LogBackend)] = [
                    ("sqlite", try SQLiteLogBackend(path: dir.appendingPathComponent("log.sqlite").path))
                ]
                if let logDB {
                    guard case .postgres = LogLocation(logDB) else { throw ValidationError("--log-db must be a postgres:// URL") }
                    backends.append(("postgres", try await LogBackends.open(LogLocation(logDB), logger: logger)))
                }
                for (name, backend) in backends {
                    let (rate, stats) = try await measure(backend, appenders: level, wait: mode == "appendAndWait", logger: logger)
                    results["\(name) \(level) \(mode)"] = rate
                    print(
                        "\(name.padding(toLength: 10, withPad: " ", startingAt: 0))  \(String(level).padding(toLength: 9, withPad: " ", startingAt: 0))  \(mode.padding(toLength: 14, withPad: " ", startingAt: 0))  \(String(format: "%10.0f", rate))  \(String(format: "%8d", stats.batches))  \(String(format: "%10.1f", Double(stats.rowsWritten) / Double(max(1, stats.batches))))"
                    )
                    if let pg = backend as? PostgresLogBackend { try await pg.truncateAll() }
                    try await backend.close()
                }
            }
        }
        if logDB != nil {
            print("")
            for level in levels {
                for mode in ["appendAndWait", "append"] {
                    if let s = results["sqlite \(level) \(mode)"], let p = results["postgres \(level) \(mode)"] {
                        print("postgres / sqlite at \(level) appenders, \(mode): \(String(format: "%.2f", p / s))")
                    }
                }
            }
        }
    }

    func measure(_ backend: any LogBackend, appenders: Int, wait: Bool, logger: Logger) async throws -> (Double, LogWriterStats) {
        let writer = LogWriter(backend: backend, capacity: 4096, maxBatch: 256, logger: logger)
        let runTask = Task { await writer.run() }
        let template = EpisodeRecord(
            route: "/v1/chat/completions", mode: turns > 0 ? "collaborate" : "passthrough", keyID: "k1",
            requestedModel: "gpt-4o-mini", upstreamModel: "gpt-4o-mini", policyVersion: turns > 0 ? "0123456789abcdef" : nil,
            requestJSON:
                #"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is the capital of France? Answer in one word."}]}"#,
            responseText: "Paris.", finishReason: "stop", promptTokens: 24, completionTokens: 2, totalTokens: 26,
            status: 200, outcome: "ok", totalMs: 1.2, upstreamMs: 1.0, overheadMs: 0.2,
            turns: (0..<turns).map { i in
                TurnRecord(
                    index: i, kind: i % 2 == 0 ? "policy" : "upstream",
                    inputIDs: i % 2 == 0 ? (0..<300).map { Int32($0) } : nil, outputIDs: i % 2 == 0 ? (0..<80).map { Int32($0) } : nil,
                    logprobs: i % 2 == 0 ? [Float](repeating: -0.5, count: 80) : nil,
                    lossMask: i % 2 == 0 ? [UInt8](repeating: 1, count: 80) : nil,
                    text: "a policy turn of about this length", latencyMs: 3)
            })
        let perAppender = max(1, episodes / appenders)
        let start = ContinuousClock.now
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<appenders {
                group.addTask {
                    for _ in 0..<perAppender {
                        var e = template
                        e.id = UUIDv7.generate()
                        e.createdAt = Date()
                        if wait { try await writer.appendAndWait(e) } else { try await writer.append(e) }
                    }
                }
            }
            try await group.waitForAll()
        }
        try await writer.flush()
        let elapsed = ContinuousClock.now - start
        let stats = writer.stats
        await writer.shutdown()
        await runTask.value
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return (Double(perAppender * appenders) / seconds, stats)
    }
}
