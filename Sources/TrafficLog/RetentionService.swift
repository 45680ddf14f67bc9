import Foundation
import Logging

/// Deletes episodes (with their turns and feedback) older than `maxAge`,
/// every `interval` seconds. `maxAge <= 0` disables retention (nothing is deleted).
public final class RetentionService: Sendable {
    public let database: TrafficDatabase
    public let maxAge: TimeInterval
    public let interval: TimeInterval
    private let logger: Logger

    public init(database: TrafficDatabase, maxAge: TimeInterval, interval: TimeInterval, logger: Logger) {
        self.database = database
        self.maxAge = maxAge
        // Guard against a busy loop from a zero / negative interval.
        self.interval = max(0.01, interval)
        self.logger = logger
    }

    public var isEnabled: Bool { maxAge > 0 }

    private static let sweeps = DispatchQueue(label: "traffic-log.retention", qos: .utility)

    /// Sweeps now and then every `interval` until the calling task is cancelled.
    public func run() async {
        guard isEnabled else {
            logger.info("traffic log retention disabled (maxAge <= 0)")
            return
        }
        while !Task.isCancelled {
            // A sweep is blocking SQLite work; it runs on its own queue so the caller's executor (in the
            // gateway, an event loop) stays free.
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                Self.sweeps.async {
                    self.sweepOnce()
                    done.resume()
                }
            }
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
    public func sweepOnce() -> Int {
        do {
            return try sweep(now: Date())
        } catch {
            logger.error("traffic log retention sweep failed", metadata: ["error": "\(error)"])
            return 0
        }
    }

    /// Deletes episodes created before `now - maxAge`; returns how many.
    @discardableResult
    public func sweep(now: Date) throws -> Int {
        guard isEnabled else { return 0 }
        let cutoff = now.addingTimeInterval(-maxAge)
        let deleted = try database.deleteEpisodes(olderThan: cutoff)
        if deleted > 0 {
            logger.info("traffic log retention deleted episodes",
                        metadata: ["deleted": "\(deleted)", "cutoff": "\(cutoff.timeIntervalSince1970)"])
        }
        return deleted
    }
}
