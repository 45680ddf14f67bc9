import Foundation
import GRDB
import Logging

/// Counters of a `LogWriter` (a snapshot).
public struct LogWriterStats: Sendable, Equatable {
    /// Episodes accepted but not yet taken by the writer (includes appenders
    /// suspended by backpressure).
    public var queued: Int
    /// Episodes of the batch currently being written.
    public var inFlight: Int
    /// Episodes committed.
    public var rowsWritten: Int
    /// Turns committed (with those episodes).
    public var turnsWritten: Int
    /// Committed transactions.
    public var batches: Int
    /// Failed write attempts (every one is logged and retried).
    public var failures: Int
    /// Episodes refused permanently by the database (e.g. duplicate id); logged at error level.
    public var rejected: Int
    /// Episodes given up on because shutdown was requested while the database kept failing;
    /// logged at error level with their ids.
    public var abandoned: Int
    /// Description of the most recent write error, if any.
    public var lastError: String?

    public init(
        queued: Int = 0, inFlight: Int = 0, rowsWritten: Int = 0, turnsWritten: Int = 0,
        batches: Int = 0, failures: Int = 0, rejected: Int = 0, abandoned: Int = 0,
        lastError: String? = nil
    ) {
        self.queued = queued
        self.inFlight = inFlight
        self.rowsWritten = rowsWritten
        self.turnsWritten = turnsWritten
        self.batches = batches
        self.failures = failures
        self.rejected = rejected
        self.abandoned = abandoned
        self.lastError = lastError
    }
}

/// Batched, backpressured writer of episodes into a `LogBackend` (SQLite or PostgreSQL).
///
/// - `append` returns once the episode is queued; it suspends while `capacity`
///   episodes are already queued (backpressure: nothing is ever dropped to make
///   room). Memory is bounded by `capacity` queued + `maxBatch` in flight
///   (+ one episode per suspended appender).
/// - `run()` is the drain loop: it takes whatever is queued (up to `maxBatch`)
///   and commits it in ONE transaction, so under load many episodes share a
///   commit, and waiters of `appendAndWait` share it too (group commit).
/// - Transient write failures (busy/locked, disk full, I/O) are logged, counted
///   and retried with exponential backoff, forever while the writer is open.
///   Waiters keep waiting. Only after `shutdown()` is a failing batch given up
///   on (after `shutdownRetryLimit` more attempts): its waiters get
///   `LogWriterError.abandoned` and the ids are logged at error level.
/// - Permanent failures (constraint violations such as a duplicate id, invalid
///   fields) cannot succeed by retrying: the batch is split and written episode
///   by episode, so one bad record never blocks the others; the bad one is
///   logged, counted in `rejected` and its waiter gets `LogWriterError.rejected`.
/// - Cancellation: `append`/`appendAndWait`/`flush` are not interrupted by task
///   cancellation (an accepted episode is always written). Cancelling the task
///   running `run()` acts like `shutdown()`: it stops accepting, drains, returns.
/// - Request bodies are never logged, only episode ids, counts and error texts.
public final class LogWriter: Sendable {
    public let capacity: Int
    public let maxBatch: Int
    private let backend: any LogBackend
    private let logger: Logger
    private let retryBaseDelay: TimeInterval
    private let maxRetryDelay: TimeInterval
    private let shutdownRetryLimit: Int
    private let linger: Duration
    private let state: Locked<State>

    /// - Parameters:
    ///   - capacity: queued episodes before `append` suspends (>= 1).
    ///   - maxBatch: most episodes per transaction (>= 1).
    ///   - retryBaseDelay / maxRetryDelay: exponential backoff between failed attempts.
    ///   - shutdownRetryLimit: attempts made on a failing batch after shutdown was requested.
    ///   - linger: after committing a batch smaller than `maxBatch`, wait this long before the
    ///     next one, so that light traffic still shares transactions (a commit costs about as
    ///     much for one episode as for ten). Only for appenders that do not wait for the commit:
    ///     an `appendAndWait` or `flush` caller cuts the wait short.
    public init(
        backend: any LogBackend, capacity: Int = 4096, maxBatch: Int = 256, logger: Logger,
        retryBaseDelay: TimeInterval = 0.02, maxRetryDelay: TimeInterval = 5,
        shutdownRetryLimit: Int = 3, linger: Duration = .zero
    ) {
        self.backend = backend
        self.capacity = max(1, capacity)
        self.maxBatch = max(1, maxBatch)
        self.logger = logger
        self.retryBaseDelay = max(0.001, retryBaseDelay)
        self.maxRetryDelay = max(self.retryBaseDelay, maxRetryDelay)
        self.shutdownRetryLimit = max(1, shutdownRetryLimit)
        self.linger = max(.zero, linger)
        self.state = Locked(State())
    }

    /// A writer into a SQLite `TrafficDatabase`.
    public convenience init(
        database: TrafficDatabase, capacity: Int = 4096, maxBatch: Int = 256, logger: Logger,
        retryBaseDelay: TimeInterval = 0.02, maxRetryDelay: TimeInterval = 5,
        shutdownRetryLimit: Int = 3, linger: Duration = .zero
    ) {
        self.init(
            backend: SQLiteLogBackend(database), capacity: capacity, maxBatch: maxBatch, logger: logger,
            retryBaseDelay: retryBaseDelay, maxRetryDelay: maxRetryDelay,
            shutdownRetryLimit: shutdownRetryLimit, linger: linger)
    }

    // MARK: State

    /// Runs a waiter's resumption where the waiter wants it (e.g. on the event loop it was
    /// suspended on, so the task continues on the thread that owns its connection).
    public typealias Resumer = @Sendable (@escaping @Sendable () -> Void) -> Void

    private struct Entry: Sendable {
        let seq: UInt64
        let episode: EpisodeRecord
        /// appendAndWait: resumed when the episode is committed (or failed).
        let commitWaiter: CheckedContinuation<Void, any Error>?
        /// How the appender's continuations are resumed (nil: right away on the writer's thread).
        let resumer: Resumer?

        func resume(_ cont: CheckedContinuation<Void, any Error>, _ error: (any Error)?) {
            let go: @Sendable () -> Void = { if let error { cont.resume(throwing: error) } else { cont.resume() } }
            if let resumer { resumer(go) } else { go() }
        }
    }

    private struct Blocked: Sendable {
        let entry: Entry
        /// append: resumed when the entry moves into the queue.
        let queuedWaiter: CheckedContinuation<Void, any Error>?
    }

    private struct FlushWaiter: Sendable {
        let target: UInt64
        var failed: Int
        var lastError: String
        let continuation: CheckedContinuation<Void, any Error>
    }

    private enum Phase { case idle, running, finished }

    private struct State {
        var queue = FIFO<Entry>()
        var blocked = FIFO<Blocked>()
        var pendingIDs: [String: Int] = [:]
        var nextSeq: UInt64 = 1
        /// Every entry with seq <= resolvedThrough is committed, rejected or abandoned.
        var resolvedThrough: UInt64 = 0
        var flushWaiters: [FlushWaiter] = []
        var closed = false
        var phase = Phase.idle
        var wakeup: CheckedContinuation<Void, Never>?
        /// The drain loop lingers between batches (see `linger`); resumed early by a waiter.
        var lingering: CheckedContinuation<Void, Never>?
        /// Queued (or blocked) entries whose appender waits for the commit.
        var commitWaitersQueued = 0

        /// Takes the lingering continuation when the drain loop should stop lingering now:
        /// someone waits for a commit, a batch is full, or the writer closes.
        mutating func takeLingerIfDue(maxBatch: Int) -> CheckedContinuation<Void, Never>? {
            guard lingering != nil else { return nil }
            guard closed || commitWaitersQueued > 0 || !flushWaiters.isEmpty || !blocked.isEmpty || queue.count >= maxBatch else {
                return nil
            }
            let c = lingering
            lingering = nil
            return c
        }

        /// After a change to the queue (or `closed`): the drain loop's continuation to resume,
        /// if it waits for work, or lingers and should not any more.
        mutating func takeWake(maxBatch: Int) -> CheckedContinuation<Void, Never>? {
            if let w = wakeup {
                wakeup = nil
                return w
            }
            return takeLingerIfDue(maxBatch: maxBatch)
        }
        var finishWaiters: [CheckedContinuation<Void, Never>] = []
        var stats = LogWriterStats()
    }

    // MARK: Public API

    /// Queues `e` and returns once it is queued. Suspends while the queue is full.
    /// Throws `LogWriterError.closed` after `shutdown()`.
    /// `resumer` runs the resumption of a suspended call (see `Resumer`).
    public func append(_ e: EpisodeRecord, resumer: Resumer? = nil) async throws {
        // Fast path: room in the queue, no suspension.
        enum Fast {
            case done(CheckedContinuation<Void, Never>?)
            case closed, full
        }
        let fast = state.withLock { s -> Fast in
            if s.closed { return .closed }
            guard s.blocked.isEmpty, s.queue.count < capacity else { return .full }
            s.queue.append(Self.admit(&s, e, waiter: nil, resumer: nil))
            return .done(s.takeWake(maxBatch: maxBatch))
        }
        switch fast {
        case .closed: throw LogWriterError.closed
        case .done(let wake):
            wake?.resume()
            return
        case .full: try await enqueueSlow(e, waitForCommit: false, resumer: resumer)
        }
    }

    /// Queues `e` and returns once it is COMMITTED (sharing the transaction with
    /// whatever else is queued). Throws `LogWriterError.closed`, `.rejected` or `.abandoned`.
    /// `resumer` runs the resumption (see `Resumer`).
    public func appendAndWait(_ e: EpisodeRecord, resumer: Resumer? = nil) async throws {
        try await enqueueSlow(e, waitForCommit: true, resumer: resumer)
    }

    /// Returns when every episode accepted before this call is committed. Throws
    /// `LogWriterError.notAllCommitted` if some of them were rejected or abandoned.
    /// Needs `run()` (or `shutdown()`) to make progress.
    public func flush() async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            let (ready, linger) = state.withLock { s -> (Bool, CheckedContinuation<Void, Never>?) in
                let target = s.nextSeq - 1
                if s.resolvedThrough >= target { return (true, nil) }
                s.flushWaiters.append(FlushWaiter(target: target, failed: 0, lastError: "", continuation: cont))
                return (false, s.takeLingerIfDue(maxBatch: maxBatch))
            }
            linger?.resume()
            if ready { cont.resume() }
        }
    }

    /// Number of `flush()` calls currently waiting (tests).
    var waitingFlushes: Int { state.withLock { $0.flushWaiters.count } }

    /// True while an episode with this id is queued or being written (not yet committed).
    public func isPending(episodeID: String) -> Bool {
        state.withLock { $0.pendingIDs[episodeID] != nil }
    }

    public var stats: LogWriterStats {
        state.withLock { s in
            var st = s.stats
            st.queued = s.queue.count + s.blocked.count
            return st
        }
    }

    /// The drain loop. Returns after `shutdown()` (or cancellation of the calling
    /// task) once everything accepted has been written. Call once; a second call
    /// just waits for the loop to finish.
    public func run() async {
        let start = state.withLock { s -> Bool in
            guard s.phase == .idle else { return false }
            s.phase = .running
            return true
        }
        guard start else {
            logger.warning("LogWriter.run() called while already running or finished; waiting for it to finish")
            await waitFinished()
            return
        }
        // The loop runs in its own task so that cancellation of the caller does
        // not cut retry sleeps short or abort a commit; cancellation only closes.
        // It runs on its own thread: commits are synchronous SQLite calls.
        let thread = WriterThread(name: "traffic-log")
        let loop = Task(executorPreference: thread) { await self.drainLoop() }
        await withTaskCancellationHandler {
            await loop.value
        } onCancel: {
            self.close()
        }
        thread.stop()
    }

    /// Stops accepting appends, drains everything already accepted (including
    /// appenders suspended by backpressure), then returns; `run()` returns too.
    /// If `run()` was never started, the drain happens inside this call.
    public func shutdown() async {
        enum Action {
            case done, inline
            case wait(CheckedContinuation<Void, Never>?)
        }
        let action = state.withLock { s -> Action in
            s.closed = true
            let wake = s.takeWake(maxBatch: maxBatch)
            switch s.phase {
            case .finished: return .done
            case .idle:
                s.phase = .running
                return .inline
            case .running: return .wait(wake)
            }
        }
        switch action {
        case .done: return
        case .inline: await drainLoop()
        case .wait(let wake):
            wake?.resume()
            await waitFinished()
        }
    }

    // MARK: Internals

    private func close() {
        let wake = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.closed = true
            return s.takeWake(maxBatch: maxBatch)
        }
        wake?.resume()
    }

    private func waitFinished() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let done = state.withLock { s -> Bool in
                if s.phase == .finished { return true }
                s.finishWaiters.append(cont)
                return false
            }
            if done { cont.resume() }
        }
    }

    private static func admit(
        _ s: inout State, _ e: EpisodeRecord,
        waiter: CheckedContinuation<Void, any Error>?, resumer: Resumer?
    ) -> Entry {
        let seq = s.nextSeq
        s.nextSeq += 1
        s.pendingIDs[e.id, default: 0] += 1
        if waiter != nil { s.commitWaitersQueued += 1 }
        return Entry(seq: seq, episode: e, commitWaiter: waiter, resumer: resumer)
    }

    private func enqueueSlow(_ e: EpisodeRecord, waitForCommit: Bool, resumer: Resumer?) async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            enum Action {
                case closed
                case queued(wake: CheckedContinuation<Void, Never>?, resumeNow: Bool)
                case suspended(CheckedContinuation<Void, Never>?)
            }
            let action = state.withLock { s -> Action in
                if s.closed { return .closed }
                if s.blocked.isEmpty, s.queue.count < capacity {
                    s.queue.append(Self.admit(&s, e, waiter: waitForCommit ? cont : nil, resumer: resumer))
                    return .queued(wake: s.takeWake(maxBatch: maxBatch), resumeNow: !waitForCommit)
                }
                let entry = Self.admit(&s, e, waiter: waitForCommit ? cont : nil, resumer: resumer)
                s.blocked.append(Blocked(entry: entry, queuedWaiter: waitForCommit ? nil : cont))
                return .suspended(s.takeLingerIfDue(maxBatch: maxBatch))
            }
            switch action {
            case .closed: cont.resume(throwing: LogWriterError.closed)
            case .queued(let wake, let resumeNow):
                wake?.resume()
                if resumeNow { cont.resume() }
            case .suspended(let linger): linger?.resume()
            }
        }
    }

    private func drainLoop() async {
        while let batch = await nextBatch() {
            let results = await commitWithRetry(batch.map(\.episode))
            resolve(batch, results)
            if linger > .zero, batch.count < maxBatch { await lingerBeforeNextBatch() }
        }
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.phase = .finished
            let w = s.finishWaiters
            s.finishWaiters = []
            return w
        }
        for w in waiters { w.resume() }
    }

    /// Waits up to `linger` for more episodes to share the next transaction. Returns at once
    /// when closed or when someone waits for a commit (`appendAndWait`, `flush`, or a full
    /// queue), and early when such a waiter arrives.
    private func lingerBeforeNextBatch() async {
        let linger = self.linger
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                s.lingering = cont
                return s.takeLingerIfDue(maxBatch: maxBatch) != nil
            }
            if now {
                cont.resume()
                return
            }
            // A timer from a linger that a waiter cut short may end a later linger early;
            // that only commits sooner.
            Task {
                try? await Task.sleep(for: linger)
                self.endLinger()
            }
        }
    }

    /// Ends the drain loop's linger, if it is lingering.
    private func endLinger() {
        let cont = state.withLock { s -> CheckedContinuation<Void, Never>? in
            let c = s.lingering
            s.lingering = nil
            return c
        }
        cont?.resume()
    }

    /// The next batch, or nil once closed and empty.
    private func nextBatch() async -> [Entry]? {
        enum Take {
            case batch([Entry], [(Entry, CheckedContinuation<Void, any Error>)])
            case done, wait
        }
        while true {
            let take = state.withLock { s -> Take in
                if s.queue.isEmpty {
                    return s.closed ? .done : .wait
                }
                let n = min(maxBatch, s.queue.count)
                var batch: [Entry] = []
                batch.reserveCapacity(n)
                for _ in 0..<n {
                    let entry = s.queue.removeFirst()
                    if entry.commitWaiter != nil { s.commitWaitersQueued -= 1 }
                    batch.append(entry)
                }
                // Room was made: admit suspended appenders in FIFO order.
                var resumes: [(Entry, CheckedContinuation<Void, any Error>)] = []
                while s.queue.count < capacity, !s.blocked.isEmpty {
                    let b = s.blocked.removeFirst()
                    s.queue.append(b.entry)
                    if let q = b.queuedWaiter { resumes.append((b.entry, q)) }
                }
                s.stats.inFlight = n
                return .batch(batch, resumes)
            }
            switch take {
            case .batch(let batch, let resumes):
                for (entry, r) in resumes { entry.resume(r, nil) }
                return batch
            case .done:
                return nil
            case .wait:
                await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
                    let ready = state.withLock { s -> Bool in
                        if !s.queue.isEmpty || s.closed { return true }
                        s.wakeup = cont
                        return false
                    }
                    if ready { cont.resume() }
                }
            }
        }
    }

    /// Commits `episodes` in one transaction, retrying transient failures. On a
    /// permanent failure the episodes are retried one per transaction. Returns, per
    /// episode, nil (committed) or the error given to its waiter.
    private func commitWithRetry(_ episodes: [EpisodeRecord]) async -> [LogWriterError?] {
        var attempt = 0
        var attemptsWhileClosed = 0
        while true {
            do {
                // SQLite: synchronous on purpose: GRDB runs it on this thread (its writer queue
                // is idle: this loop is the only writer), which saves two thread hops per commit
                // (to the writer queue and back). Those hops were most of the wait of
                // `appendAndWait` at low concurrency. WAL with synchronous=NORMAL does not
                // fsync on commit, so the thread is held for the SQL only.
                // PostgreSQL: one multi-row INSERT per table in one transaction; this thread
                // waits for the server's answer without blocking.
                try await backend.insertBatch(episodes)
                let turns = episodes.reduce(0) { $0 + $1.turns.count }
                state.withLock { s in
                    s.stats.batches += 1
                    s.stats.rowsWritten += episodes.count
                    s.stats.turnsWritten += turns
                }
                if attempt > 0 {
                    logger.notice(
                        "traffic log write succeeded after retries",
                        metadata: ["attempts": "\(attempt + 1)", "episodes": "\(episodes.count)"])
                }
                return Array(repeating: nil, count: episodes.count)
            } catch {
                attempt += 1
                let message = String(describing: error)
                let closed = state.withLock { s -> Bool in
                    s.stats.failures += 1
                    s.stats.lastError = message
                    return s.closed
                }
                if backend.isPermanent(error) {
                    if episodes.count == 1 {
                        let id = episodes[0].id
                        logger.error(
                            "traffic log rejected episode",
                            metadata: ["episode_id": "\(id)", "error": "\(message)"])
                        state.withLock { $0.stats.rejected += 1 }
                        return [.rejected(episodeID: id, reason: message)]
                    }
                    logger.warning(
                        "traffic log batch refused; writing its episodes one by one",
                        metadata: ["episodes": "\(episodes.count)", "error": "\(message)"])
                    var results: [LogWriterError?] = []
                    results.reserveCapacity(episodes.count)
                    for e in episodes { results += await commitWithRetry([e]) }
                    return results
                }
                if closed {
                    attemptsWhileClosed += 1
                    if attemptsWhileClosed >= shutdownRetryLimit {
                        let ids = episodes.map(\.id)
                        logger.error(
                            "traffic log shutting down with uncommitted episodes; they are NOT stored",
                            metadata: [
                                "episodes": "\(ids.count)", "episode_ids": "\(ids.joined(separator: ","))",
                                "error": "\(message)",
                            ])
                        state.withLock { $0.stats.abandoned += ids.count }
                        return ids.map { .abandoned(episodeID: $0, lastError: message) }
                    }
                }
                var delay = min(maxRetryDelay, retryBaseDelay * pow(2, Double(min(attempt - 1, 30))))
                if closed { delay = min(delay, 1) }
                logger.error(
                    "traffic log write failed; retrying",
                    metadata: [
                        "attempt": "\(attempt)", "episodes": "\(episodes.count)",
                        "retry_in_ms": "\(Int(delay * 1000))", "error": "\(message)",
                    ])
                try? await Task.sleep(nanoseconds: UInt64(delay * 1e9))
            }
        }
    }

    private func resolve(_ batch: [Entry], _ results: [LogWriterError?]) {
        var resumes: [(CheckedContinuation<Void, any Error>, (any Error)?)] = []
        var commitResumes: [(Entry, CheckedContinuation<Void, any Error>, (any Error)?)] = []
        state.withLock { s in
            for (entry, result) in zip(batch, results) {
                if let n = s.pendingIDs[entry.episode.id] {
                    s.pendingIDs[entry.episode.id] = n > 1 ? n - 1 : nil
                }
                if let w = entry.commitWaiter { commitResumes.append((entry, w, result)) }
                if let result {
                    for i in s.flushWaiters.indices where entry.seq <= s.flushWaiters[i].target {
                        s.flushWaiters[i].failed += 1
                        s.flushWaiters[i].lastError = result.description
                    }
                }
            }
            if let last = batch.last { s.resolvedThrough = max(s.resolvedThrough, last.seq) }
            s.stats.inFlight = 0
            var remaining: [FlushWaiter] = []
            for f in s.flushWaiters {
                if f.target <= s.resolvedThrough {
                    let err: (any Error)? =
                        f.failed > 0
                        ? LogWriterError.notAllCommitted(failed: f.failed, lastError: f.lastError) : nil
                    resumes.append((f.continuation, err))
                } else {
                    remaining.append(f)
                }
            }
            s.flushWaiters = remaining
        }
        for (entry, cont, err) in commitResumes { entry.resume(cont, err) }
        for (cont, err) in resumes {
            if let err { cont.resume(throwing: err) } else { cont.resume() }
        }
    }
}

/// A FIFO queue with amortised O(1) push and pop.
struct FIFO<Element> {
    private var items: [Element] = []
    private var head = 0

    var count: Int { items.count - head }
    var isEmpty: Bool { head == items.count }

    mutating func append(_ e: Element) { items.append(e) }

    /// Precondition: not empty.
    mutating func removeFirst() -> Element {
        let e = items[head]
        head += 1
        if head >= 1024 && head * 2 >= items.count {
            items.removeFirst(head)
            head = 0
        } else if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        }
        return e
    }
}
