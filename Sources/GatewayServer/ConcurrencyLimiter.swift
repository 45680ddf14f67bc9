import Foundation

/// A counting semaphore for async code: at most `limit` holders; others wait in FIFO order up
/// to a timeout. Lock-based so the uncontended path costs a lock round trip, not an actor hop.
final class ConcurrencyLimiter: @unchecked Sendable {
    // All mutable state is guarded by `lock`.
    private let lock = NSLock()
    private var available: Int
    private var waiters: [(id: UInt64, cont: CheckedContinuation<Bool, Never>)] = []
    private var nextID: UInt64 = 0

    init(limit: Int) { available = limit }

    var waiting: Int { lock.withLock { waiters.count } }

    /// Waits for a slot; false when `timeout` passed first.
    func acquire(timeout: Duration) async -> Bool {
        let id: UInt64? = lock.withLock {
            if available > 0 { available -= 1; return nil }
            nextID += 1
            return nextID
        }
        guard let id else { return true }
        if timeout <= .zero { return false }
        return await withCheckedContinuation { (cont: CheckedContinuation<Bool, Never>) in
            lock.withLock { waiters.append((id, cont)) }
            // Started after the waiter is registered, so an early expiry cannot be missed.
            Task {
                try? await Task.sleep(for: timeout)
                self.expire(id)
            }
        }
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
            if waiters.isEmpty { available += 1; return nil }
            return waiters.removeFirst().cont
        }
        cont?.resume(returning: true)
    }
}
