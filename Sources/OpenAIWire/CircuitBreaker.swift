import Foundation

/// A per-upstream circuit breaker. After `failureThreshold` consecutive upstream failures
/// (connect errors, timeouts, 500/502/503/504, streams cut in the middle) it opens: requests fail
/// at once with 503 `upstream_circuit_open` and a Retry-After for the rest of the cool-down,
/// instead of each one waiting out timeouts against a dead upstream. When the cool-down has
/// passed, one request at a time is let through as a probe (half-open); its success closes the
/// circuit, its failure opens it for another cool-down. 429 is not a failure: a rate-limited
/// upstream is healthy.
///
/// Thread-safe; every method takes one short lock.
public final class CircuitBreaker: @unchecked Sendable {
    public enum State: String, Sendable {
        case closed, open
        case halfOpen = "half_open"
    }

    /// Failures in a row that open the circuit; 0 disables the breaker.
    public let failureThreshold: Int
    public let cooldown: Duration

    private let lock = NSLock()
    private let now: @Sendable () -> ContinuousClock.Instant
    // Guarded by `lock`.
    private var consecutiveFailures = 0
    private var openedAt: ContinuousClock.Instant?
    private var probeInFlight = false
    private var opened = 0

    public init(
        failureThreshold: Int, cooldown: Duration,
        now: @escaping @Sendable () -> ContinuousClock.Instant = { ContinuousClock.now }
    ) {
        self.failureThreshold = failureThreshold
        self.cooldown = cooldown
        self.now = now
    }

    public var isEnabled: Bool { failureThreshold > 0 }

    public var state: State {
        lock.withLock { stateLocked(at: now()) }
    }

    /// Times the circuit went from closed (or half-open) to open.
    public var timesOpened: Int { lock.withLock { opened } }

    private func stateLocked(at t: ContinuousClock.Instant) -> State {
        guard let openedAt else { return .closed }
        return t - openedAt >= cooldown ? .halfOpen : .open
    }

    /// Whole seconds (at least 1) for a Retry-After covering `d`.
    private static func seconds(_ d: Duration) -> Int {
        max(1, Int((Double(d.nanoseconds) / 1e9).rounded(.up)))
    }

    /// While open: the seconds until a probe may go (nil when closed or half-open). Read-only,
    /// for callers that want to fail fast before doing expensive work.
    public var secondsUntilProbe: Int? {
        guard isEnabled else { return nil }
        return lock.withLock {
            let t = now()
            guard stateLocked(at: t) == .open, let openedAt else { return nil }
            return Self.seconds(cooldown - (t - openedAt))
        }
    }

    /// Permission to send one request. Returns nil when it may go, else the seconds to wait.
    /// A caller that got permission in the half-open state is the probe and must report back.
    public func acquire() -> Int? {
        guard isEnabled else { return nil }
        return lock.withLock {
            let t = now()
            switch stateLocked(at: t) {
            case .closed:
                return nil
            case .open:
                return Self.seconds(cooldown - (t - openedAt!))
            case .halfOpen:
                if probeInFlight { return Self.seconds(cooldown) }
                probeInFlight = true
                return nil
            }
        }
    }

    public func recordSuccess() {
        guard isEnabled else { return }
        lock.withLock {
            consecutiveFailures = 0
            openedAt = nil
            probeInFlight = false
        }
    }

    public func recordFailure() {
        guard isEnabled else { return }
        lock.withLock {
            let t = now()
            consecutiveFailures += 1
            let wasProbe = probeInFlight
            probeInFlight = false
            if wasProbe || (openedAt == nil && consecutiveFailures >= failureThreshold) {
                openedAt = t
                opened += 1
            }
        }
    }

    /// A request that got permission but ended without telling success from failure (for
    /// instance the client went away): frees the probe slot without changing the state.
    public func release() {
        guard isEnabled else { return }
        lock.withLock { probeInFlight = false }
    }

    /// Whether an upstream status counts as a failure of the upstream.
    public static func isFailure(status: Int) -> Bool {
        [500, 502, 503, 504].contains(status)
    }
}
