import Foundation
import Logging

/// Deletes episodes (with their turns and feedback) older than `maxAge`,
/// every `interval` seconds. `maxAge <= 0` disables retention (nothing is deleted).
public final class RetentionService: Sendable {
    public let backend: any LogBackend
    public let maxAge: TimeInterval
    public let interval: TimeInterval
    private let logger: Logger

    public convenience init(database: TrafficDatabase, maxAge: TimeInterval, interval: TimeInterval, logger: Logger) {
        self.init(backend: SQLiteLogBackend(database), maxAge: maxAge, interval: interval, logger: logger)
    }

    public init(backend: any LogBackend, maxAge: TimeInterval, interval: TimeInterval, logger: Logger) {
        self.backend = backend
        self.maxAge = maxAge
        // Guard against a busy loop from a zero / negative interval.
        self.interval = max(0.01, interval)
        self.logger = logger
    }

    public var isEnabled: Bool { maxAge > 0 }

    /// Sweeps now and then every `interval` until the calling task is cancelled.
    public func run() async {
        guard isEnabled else {
            logger.info("traffic log retention disabled (maxAge <= 0)")
            return
        }
        while !Task.isCancelled {
            // The backend keeps the caller's executor (in the gateway, an event loop) free.
            await sweepOnce()
            do {
                try await Task.sleep(nanoseconds: UInt64(interval * 1e9))
            } catch {
                return  // cancelled
            }
        }
    }

    /// One sweep; returns the number of episodes deleted. Errors are logged
    /// (and 0 returned); use `sweep(now:)` to get them thrown instead.
    @discardableResult
    public func sweepOnce() async -> Int {
        do {
            return try await sweep(now: Date())
        } catch {
            logger.error("traffic log retention sweep failed", metadata: ["error": "\(error)"])
            return 0
        }
    }

    /// Deletes episodes created before `now - maxAge`; returns how many.
    @discardableResult
    public func sweep(now: Date) async throws -> Int {
        guard isEnabled else { return 0 }
        let cutoff = now.addingTimeInterval(-maxAge)
        let deleted = try await backend.deleteEpisodes(olderThan: cutoff)
        if deleted > 0 {
            logger.info(
                "traffic log retention deleted episodes",
                metadata: ["deleted": "\(deleted)", "cutoff": "\(cutoff.timeIntervalSince1970)"])
        }
        return deleted
    }
}
