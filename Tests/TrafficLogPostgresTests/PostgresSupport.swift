import Foundation
import Logging
import PromptR1
import TrafficLog
import TrafficLogPostgres
import XCTest

#if canImport(Glibc)
    import Glibc
#endif

/// The PostgreSQL server scripts/with-postgres.sh runs for the test command. Without it these
/// tests FAIL (they never skip): CI's test command always provides one.
enum TestPostgres {
    static func adminURL(file: StaticString = #filePath, line: UInt = #line) throws -> String {
        guard let url = ProcessInfo.processInfo.environment["GATEWAY_TEST_POSTGRES_URL"], !url.isEmpty else {
            XCTFail(
                "GATEWAY_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh (or scripts/with-postgres.sh swift test)",
                file: file, line: line)
            throw PostgresLogError.invalidURL(reason: "no test server")
        }
        return url
    }

    /// A new empty database on the test server; returns its URL.
    static func freshDatabase(_ prefix: String = "t") async throws -> String {
        let name = "\(prefix)_\(UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(20))"
        return try await PostgresAdmin.createDatabase(named: name, adminURL: try adminURL())
    }

    /// Stops or starts the test server (`stop` is a fast shutdown: clients are disconnected).
    static func ctl(_ action: String) throws {
        guard let ctl = ProcessInfo.processInfo.environment["GATEWAY_TEST_POSTGRES_CTL"] else {
            XCTFail("GATEWAY_TEST_POSTGRES_CTL is not set: run the tests through scripts/test.sh")
            return
        }
        XCTAssertEqual(spawnAndWait(ctl, action), 0, "\(ctl) \(action)")
    }

    static var quietLogger: Logger {
        var l = Logger(label: "pg-test")
        l.logLevel = .critical
        return l
    }
}

func sampleEpisode(
    id: String = UUIDv7.generate(), createdAt: Date = Date(), route: String = "/v1/chat/completions",
    mode: String = "passthrough", policyVersion: String? = nil, turns: Int = 2, question: String? = nil
) -> EpisodeRecord {
    var e = EpisodeRecord(
        id: id, createdAt: createdAt, route: route, mode: mode, keyID: "key-1", requestedModel: "gpt-x",
        upstreamModel: "gpt-x-upstream", policyVersion: policyVersion, stream: turns % 2 == 1,
        requestJSON: #"{"model":"m","messages":[{"role":"user","content":"héllo \u0000 'quoted'"}]}"#,
        responseText: "hello ✓", finishReason: "stop", promptTokens: 10, completionTokens: 5, totalTokens: 15,
        policyTokens: turns > 0 ? 7 : nil, status: 200, outcome: "ok", error: nil, question: question,
        formatScore: 0.5, totalMs: 12.5, upstreamMs: 10, overheadMs: 2.5,
        turns: (0..<turns).map { i in
            TurnRecord(
                index: i, kind: i % 2 == 0 ? "upstream" : "policy",
                inputIDs: [1, 2, 3, Int32(i), Int32.max, Int32.min], outputIDs: [4, 5],
                logprobs: [-0.5, -1.25, .leastNonzeroMagnitude, -.infinity], lossMask: [0, 1, 255],
                text: "turn \(i)", call: i % 2 == 1 ? "ask" : nil, upstreamRequest: "{}",
                upstreamResponse: "{\"x\":1}", latencyMs: 3, promptTokens: 1, completionTokens: 2,
                status: 200, error: nil)
        })
    // Every value of the v4 columns, NULL included, across the sample shapes.
    e.policyLogprobs = turns == 0 ? nil : turns % 2 == 0 ? .model : .sampling
    e.policySampled = turns == 0 ? nil : turns % 3 != 0
    return e
}

/// Fails instead of hanging when `body` takes longer than `seconds`.
func within<T: Sendable>(_ seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw PostgresLogError.timeout(operation: what, seconds: seconds)
        }
        return value
    }
}

/// Runs `path arg` and waits for it with waitpid (Foundation's Process does not notice the exit
/// of a child started from a test's task on Linux).
func spawnAndWait(_ path: String, _ arg: String) -> Int32 {
    var pid: pid_t = 0
    var cargs: [UnsafeMutablePointer<CChar>?] = [strdup(path), strdup(arg), nil]
    defer { for p in cargs { free(p) } }
    guard posix_spawn(&pid, path, nil, nil, &cargs, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}
