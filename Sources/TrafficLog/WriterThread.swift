import Foundation

/// A task executor with one dedicated thread: the traffic log's drain loop runs on it, so the
/// SQLite commits (synchronous, tens of microseconds each) never occupy a thread that serves
/// requests. In the gateway the global executor is the server's event loops; a commit there
/// would delay every request on that loop, and with `durability: async` the commit would still
/// sit in the request's path whenever the loop had the response left to write.
final class WriterThread: TaskExecutor, @unchecked Sendable {
    // `jobs` and `stopping` are guarded by `condition`.
    private let condition = NSCondition()
    private var jobs = FIFO<UnownedJob>()
    private var stopping = false

    init(name: String) {
        // The thread holds `self` until it exits (after `stop()`).
        let thread = Thread { self.loop() }
        thread.name = name
        thread.start()
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        condition.lock()
        jobs.append(job)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread exit once it has run every job enqueued so far (jobs enqueued after
    /// that still run: the thread only exits on an empty queue).
    func stop() {
        condition.lock()
        stopping = true
        condition.signal()
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopping { condition.wait() }
            if jobs.isEmpty {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job.runSynchronously(on: asUnownedTaskExecutor())
        }
    }
}
