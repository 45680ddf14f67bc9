import Foundation
import NIOConcurrencyHelpers

/// A counting semaphore for async code: at most `limit` holders; others wait in FIFO order up
/// to a timeout. Lock-based so the uncontended path costs a lock round trip, not an actor hop.
final class ConcurrencyLimiter: @unchecked Sendable {
    // All mutable state is guarded by `lock`.
    private let lock = NSLock()
    private var limit: Int
    private var inUse = 0
    private var waiters: [(id: UInt64, cont: CheckedContinuation<Bool, Never>)] = []
    private var nextID: UInt64 = 0

    init(limit: Int) { self.limit = limit }

    var waiting: Int { lock.withLock { waiters.count } }
    var held: Int { lock.withLock { inUse } }
    var capacity: Int { lock.withLock { limit } }

    /// Changes the limit (config reload). Waiters get the slots a larger limit frees; with a
    /// smaller one, holders above it finish normally and their slots are not handed on.
    func resize(to newLimit: Int) {
        let woken: [CheckedContinuation<Bool, Never>] = lock.withLock {
            limit = newLimit
            var out: [CheckedContinuation<Bool, Never>] = []
            while inUse < limit, !waiters.isEmpty {
                inUse += 1
                out.append(waiters.removeFirst().cont)
            }
            return out
        }
        for c in woken { c.resume(returning: true) }
    }

    /// Waits for a slot; false when `timeout` passed first.
    func acquire(timeout: Duration) async -> Bool {
        let granted: Bool = lock.withLock {
            if inUse < limit {
                inUse += 1
                return true
            }
            return false
        }
        if granted { return true }
        if timeout <= .zero { return false }
        return await withCheckedContinuation { (cont: CheckedContinuation<Bool, Never>) in
            // The check and the enqueueing happen under one lock: a release between the first
            // check and this point either left a slot (taken here) or finds this waiter.
            let id: UInt64? = lock.withLock {
                if inUse < limit {
                    inUse += 1
                    return nil
                }
                nextID += 1
                waiters.append((nextID, cont))
                return nextID
            }
            guard let id else {
                cont.resume(returning: true)
                return
            }
            // Started after the waiter is registered, so an early expiry cannot be missed.
            Task {
                try? await Task.sleep(for: timeout)
                self.expire(id)
            }
        }
    }

    /// `acquire`, as a permit that gives the slot back when released or dropped.
    func permit(timeout: Duration) async -> Permit? {
        await acquire(timeout: timeout) ? Permit(self) : nil
    }

    private func expire(_ id: UInt64) {
        let cont: CheckedContinuation<Bool, Never>? = lock.withLock {
            guard let i = waiters.firstIndex(where: { $0.id == id }) else { return nil }
            return waiters.remove(at: i).cont
        }
        cont?.resume(returning: false)
    }

    func release() {
        let cont: CheckedContinuation<Bool, Never>? = lock.withLock {
            if inUse <= limit, !waiters.isEmpty { return waiters.removeFirst().cont }  // the slot passes on
            inUse -= 1
            return nil
        }
        cont?.resume(returning: true)
    }

    /// One held slot. Released exactly once: by `release()`, or when the last reference goes
    /// (a response whose body was never written, because writing its head failed, still gives
    /// its slot back).
    final class Permit: Sendable {
        private let limiter: ConcurrencyLimiter
        private let released = NIOLockedValueBox(false)
        fileprivate init(_ limiter: ConcurrencyLimiter) { self.limiter = limiter }

        func release() {
            let first = released.withLockedValue { r -> Bool in
                defer { r = true }
                return !r
            }
            if first { limiter.release() }
        }

        deinit { release() }
    }
}
