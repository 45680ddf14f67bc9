import Foundation

/// Mutable state guarded by a lock.
/// `@unchecked Sendable`: every access to `state` goes through `withLock`, which
/// holds `lock` for the duration of the closure (the closure never suspends).
final class Locked<State>: @unchecked Sendable {
    private let lock = NSLock()
    private var state: State

    init(_ state: State) { self.state = state }

    func withLock<R>(_ body: (inout State) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&state)
    }
}
