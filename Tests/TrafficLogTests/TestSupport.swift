import Foundation
import GRDB
import Logging
import XCTest

@testable import TrafficLog

/// A fresh temporary directory per test, removed afterwards.
final class TempDir {
    let url: URL
    init() throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("trafficlog-tests-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    func path(_ name: String) -> String { url.appendingPathComponent(name).path }
    deinit { try? FileManager.default.removeItem(at: url) }
}

/// Captures log records so tests can assert what was (and was not) logged.
final class LogCapture: @unchecked Sendable {  // @unchecked: `records` guarded by `lock`
    struct Record {
        let level: Logger.Level
        let message: String
        let metadata: String
    }
    private let lock = NSLock()
    private var records: [Record] = []

    func append(_ r: Record) {
        lock.lock()
        records.append(r)
        lock.unlock()
    }
    var all: [Record] {
        lock.lock()
        defer { lock.unlock() }
        return records
    }

    func logger() -> Logger {
        Logger(label: "trafficlog-test") { _ in CaptureHandler(capture: self) }
    }

    struct CaptureHandler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let merged = self.metadata.merging(event.metadata ?? [:]) { $1 }
            let text = merged.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: " ")
            capture.append(Record(level: event.level, message: "\(event.message)", metadata: text))
        }
    }
}

/// Holds a write transaction (BEGIN IMMEDIATE) on `path` from a separate
/// connection on its own thread, for `seconds`.
final class WriteLockHolder: @unchecked Sendable {  // @unchecked: flags guarded by `lock`
    private let lock = NSLock()
    private var _acquired = false
    private var _released = false
    private var _error: String?

    var acquired: Bool {
        lock.lock()
        defer { lock.unlock() }
        return _acquired
    }
    var released: Bool {
        lock.lock()
        defer { lock.unlock() }
        return _released
    }
    var error: String? {
        lock.lock()
        defer { lock.unlock() }
        return _error
    }

    init(path: String, seconds: Double) {
        let thread = Thread { [self] in
            do {
                let queue = try DatabaseQueue(path: path)
                try queue.writeWithoutTransaction { db in
                    try db.execute(sql: "BEGIN IMMEDIATE")
                    self.lock.lock()
                    self._acquired = true
                    self.lock.unlock()
                    Thread.sleep(forTimeInterval: seconds)
                    try db.execute(sql: "COMMIT")
                }
                try queue.close()
            } catch {
                self.lock.lock()
                self._error = "\(error)"
                self._acquired = true
                self.lock.unlock()
            }
            self.lock.lock()
            self._released = true
            self.lock.unlock()
        }
        thread.start()
    }

    func waitAcquired() async throws {
        while !acquired { try await Task.sleep(nanoseconds: 2_000_000) }
        if let error { throw TimeoutError(what: "could not take the write lock: \(error)", seconds: 0) }
    }

    func waitReleased() async throws {
        while !released { try await Task.sleep(nanoseconds: 5_000_000) }
    }
}

func makeEpisode(
    id: String = UUIDv7.generate(), createdAt: Date = Date(), route: String = "/v1/chat/completions",
    mode: String = "passthrough", policyVersion: String? = nil, turns: Int = 2,
    requestJSON: String? = #"{"model":"m","messages":[]}"#
) -> EpisodeRecord {
    EpisodeRecord(
        id: id, createdAt: createdAt, route: route, mode: mode, keyID: "key-1", requestedModel: "gpt-x",
        upstreamModel: "gpt-x-upstream", policyVersion: policyVersion, stream: false, requestJSON: requestJSON,
        responseText: "hello", finishReason: "stop", promptTokens: 10, completionTokens: 5, totalTokens: 15,
        status: 200, outcome: "ok", totalMs: 12.5, upstreamMs: 10, overheadMs: 2.5,
        turns: (0..<turns).map { i in
            TurnRecord(
                index: i, kind: i % 2 == 0 ? "upstream" : "policy",
                inputIDs: [1, 2, 3, Int32(i)], outputIDs: [4, 5], logprobs: [-0.5, -1.25],
                lossMask: [0, 1], text: "turn \(i)", latencyMs: 3)
        })
}

/// Counts rows of `table` through a separate raw connection.
func rawCount(_ path: String, _ sql: String) throws -> Int {
    let queue = try DatabaseQueue(path: path)
    defer { try? queue.close() }
    return try queue.read { db in try Int.fetchOne(db, sql: sql) ?? -1 }
}

struct TimeoutError: Error, CustomStringConvertible {
    let what: String
    let seconds: Double
    var description: String { "timed out after \(seconds)s: \(what)" }
}

/// Runs `body` in its own task and throws `TimeoutError` if it has not finished
/// within `seconds` (so a deadlock fails the test instead of hanging it).
func within<T: Sendable>(
    seconds: Double, _ what: String,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let once = OnceBox()
    return try await withCheckedThrowingContinuation { (cont: CheckedContinuation<T, any Error>) in
        Task {
            do {
                let v = try await body()
                if once.claim() { cont.resume(returning: v) }
            } catch {
                if once.claim() { cont.resume(throwing: error) }
            }
        }
        Task {
            try? await Task.sleep(nanoseconds: UInt64(seconds * 1e9))
            if once.claim() { cont.resume(throwing: TimeoutError(what: what, seconds: seconds)) }
        }
    }
}

final class OnceBox: @unchecked Sendable {  // @unchecked: `done` guarded by `lock`
    private let lock = NSLock()
    private var done = false
    func claim() -> Bool {
        lock.lock()
        defer { lock.unlock() }
        if done { return false }
        done = true
        return true
    }
}
