import Foundation

/// A request for the continuous-batching scheduler.
public struct GenerationRequest: Sendable {
    /// Tokens appended to the sequence before generating (after whatever the cache already holds).
    public var prompt: [Int32]
    public var maxTokens: Int
    public var sampling: SamplingParameters
    public var stop: StopConditions

    public init(prompt: [Int32], maxTokens: Int, sampling: SamplingParameters = .greedy,
                stop: StopConditions = StopConditions()) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stop = stop
    }
}

/// Streamed per sequence: one `.token` per sampled token, then exactly one `.finished` or `.failed`.
public enum GenerationEvent: Sendable {
    /// A sampled token and the text bytes that became safe to show with it: bytes that cannot be part of a
    /// stop string and do not end in an incomplete UTF-8 sequence. All deltas together equal the final
    /// result's text without the stop string. Empty when the scheduler has no `tokenBytes`.
    case token(SampledToken, text: [UInt8])
    case finished(GenerationResult)
    case failed(String)
}

/// A submitted sequence: its event stream, its KV cache (prompt + generated tokens once finished, minus
/// `GenerationResult.uncachedTokens`) and a cancel switch.
public struct ScheduledSequence: Sendable {
    public let id: Int
    public let events: AsyncStream<GenerationEvent>
    public let cache: KVCache
    private let scheduler: BatchScheduler
    init(id: Int, events: AsyncStream<GenerationEvent>, cache: KVCache, scheduler: BatchScheduler) {
        self.id = id
        self.events = events
        self.cache = cache
        self.scheduler = scheduler
    }
    public func cancel() { scheduler.cancel(id) }

    /// Drains the stream and returns the final result (throws on `.failed`).
    public func result() async throws -> GenerationResult {
        for await e in events {
            switch e {
            case .token: continue
            case .finished(let r): return r
            case .failed(let m): throw SchedulerError.failed(m)
            }
        }
        throw SchedulerError.failed("stream ended without a result")
    }
}

public enum SchedulerError: Error, CustomStringConvertible, Equatable {
    case failed(String)
    case shutDown
    public var description: String {
        switch self {
        case .failed(let m): return "generation failed: \(m)"
        case .shutDown: return "the scheduler has been shut down"
        }
    }
}

/// Continuous batching: one worker thread runs forward steps over every active sequence together
/// (decode tokens plus chunks of newly submitted prompts), so the weights are read once per step for the
/// whole batch. New sequences join at the next step without waiting for running ones; finished or
/// cancelled ones leave immediately. Results stream per sequence through `AsyncStream`.
public final class BatchScheduler: @unchecked Sendable {  // mutable state guarded by `cond`; `active` is worker-only
    public let model: TransformerModel
    private let tokenBytes: (@Sendable (Int32) -> [UInt8])?
    /// Upper bound of prompt tokens processed per step (decode tokens are always included).
    public let maxStepTokens: Int

    private let cond = NSCondition()
    private var incoming: [Sequence] = []
    private var cancelled: Set<Int> = []
    private var isShutdown = false
    private var nextId = 0
    private var activeCount = 0
    private var thread: Thread?

    /// Worker-thread state.
    private var active: [Sequence] = []
    private var stepCount = 0

    private final class Sequence {
        let id: Int
        let cache: KVCache
        let sampler: Sampler
        var tracker: GenerationTracker
        let continuation: AsyncStream<GenerationEvent>.Continuation
        /// Tokens still to feed to the model; after the prompt, the last sampled token.
        var pending: [Int32]
        var fed = 0
        var generated = 0
        init(id: Int, cache: KVCache, sampler: Sampler, tracker: GenerationTracker, pending: [Int32],
             continuation: AsyncStream<GenerationEvent>.Continuation) {
            self.id = id
            self.cache = cache
            self.sampler = sampler
            self.tracker = tracker
            self.pending = pending
            self.continuation = continuation
        }
    }

    public init(model: TransformerModel, tokenBytes: (@Sendable (Int32) -> [UInt8])? = nil, maxStepTokens: Int = 256) {
        self.model = model
        self.tokenBytes = tokenBytes
        self.maxStepTokens = max(1, maxStepTokens)
        // The worker holds the scheduler until `shutdown()`; a scheduler lives as long as its model is served.
        let t = Thread { self.workerLoop() }
        t.name = "PolicyEngine.BatchScheduler"
        thread = t
        t.start()
    }

    /// Number of sequences submitted and not yet finished.
    public var runningCount: Int { cond.lock(); defer { cond.unlock() }; return activeCount }
    /// Forward steps run so far.
    public var steps: Int { cond.lock(); defer { cond.unlock() }; return stepCount }

    /// Starts a sequence. With `cache`, the prompt continues that sequence (e.g. pass the previous result's
    /// `uncachedTokens` followed by new tokens); otherwise a new cache is made.
    public func submit(_ request: GenerationRequest, cache: KVCache? = nil) -> ScheduledSequence {
        let (stream, continuation) = AsyncStream<GenerationEvent>.makeStream(bufferingPolicy: .unbounded)
        let cache = cache ?? model.makeCache(initialCapacity: max(64, request.prompt.count + min(request.maxTokens, 1024)))
        cond.lock()
        let id = nextId
        nextId += 1
        cond.unlock()
        let handle = ScheduledSequence(id: id, events: stream, cache: cache, scheduler: self)
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { self?.cancel(id) }
        }
        let tracker: GenerationTracker
        do {
            tracker = try GenerationTracker(maxTokens: request.maxTokens, stop: request.stop, tokenBytes: tokenBytes)
            for t in request.prompt where t < 0 || Int(t) >= model.config.vocabSize {
                throw ModelError.tokenOutOfRange(token: t, vocabSize: model.config.vocabSize)
            }
            if request.prompt.isEmpty && cache.count == 0 { throw ModelError.emptyInput }
        } catch {
            continuation.yield(.failed("\(error)"))
            continuation.finish()
            return handle
        }
        var pending = request.prompt
        if pending.isEmpty, let last = cache.tokens.last {
            // Nothing new: recompute the logits of the last cached position.
            cache.truncate(to: cache.count - 1)
            pending = [last]
        }
        let seq = Sequence(id: id, cache: cache, sampler: Sampler(request.sampling), tracker: tracker,
                           pending: pending, continuation: continuation)
        cond.lock()
        if isShutdown {
            cond.unlock()
            continuation.yield(.failed("\(SchedulerError.shutDown)"))
            continuation.finish()
            return handle
        }
        incoming.append(seq)
        activeCount += 1
        cond.signal()
        cond.unlock()
        return handle
    }

    /// Cancels a running sequence; it finishes with `.cancelled` at the next step boundary.
    public func cancel(_ id: Int) {
        cond.lock()
        cancelled.insert(id)
        cond.signal()
        cond.unlock()
    }

    /// Stops the worker; running sequences finish with `.cancelled`. Blocks until the worker exits.
    public func shutdown() {
        cond.lock()
        let t = thread
        isShutdown = true
        thread = nil
        cond.signal()
        cond.unlock()
        guard t != nil, Thread.current != t else { return }
        cond.lock()
        while activeCount > 0 || workerRunning { cond.wait() }
        cond.unlock()
    }

    private var workerRunning = true

    private func workerLoop() {
        while true {
            cond.lock()
            while incoming.isEmpty && active.isEmpty && !isShutdown { cond.wait() }
            active += incoming
            incoming.removeAll()
            let cancelNow = cancelled
            cancelled.removeAll()
            let stop = isShutdown
            cond.unlock()

            if stop {
                for s in active { finish(s, .cancelled) }
                active.removeAll()
                cond.lock()
                workerRunning = false
                cond.broadcast()
                cond.unlock()
                return
            }
            if !cancelNow.isEmpty {
                for s in active where cancelNow.contains(s.id) { finish(s, .cancelled) }
                active.removeAll { cancelNow.contains($0.id) }
            }
            if active.isEmpty { continue }
            step()
        }
    }

    /// One forward step over all active sequences.
    private func step() {
        var requests: [ForwardRequest] = []
        var members: [Sequence] = []
        var budget = maxStepTokens
        let maxPos = model.config.maxPositionEmbeddings
        var overflow: [Sequence] = []
        for s in active {
            let remaining = s.pending.count - s.fed
            if s.cache.count + remaining > maxPos {
                overflow.append(s)
                continue
            }
            // Decode tokens always run; prompt chunks share the step budget (at least one token each).
            let n = remaining == 1 ? 1 : max(1, min(remaining, budget))
            if remaining > 1 { budget = max(0, budget - n) }
            let done = s.fed + n == s.pending.count
            requests.append(ForwardRequest(tokens: s.pending[s.fed..<(s.fed + n)], cache: s.cache,
                                           logits: done ? .last : .none))
            members.append(s)
        }
        var finished = Set<Int>()
        for s in overflow {
            if s.generated > 0 {
                finish(s, .length)
            } else {
                s.continuation.yield(.failed("\(ModelError.contextOverflow(needed: s.cache.count + s.pending.count, maxPositions: maxPos))"))
                s.continuation.finish()
                markDone()
            }
            finished.insert(s.id)
        }
        if !requests.isEmpty {
            var sampled: [Int: SampledToken] = [:]
            do {
                try model.forward(requests) { i, _, logits in
                    sampled[i] = members[i].sampler.sample(logits)
                }
            } catch {
                for s in members {
                    s.continuation.yield(.failed("\(error)"))
                    s.continuation.finish()
                    markDone()
                    finished.insert(s.id)
                }
                active.removeAll { finished.contains($0.id) }
                return
            }
            for (i, s) in members.enumerated() {
                s.fed += requests[i].tokens.count
                guard let tok = sampled[i] else { continue }
                if s.tracker.maxTokens == 0 {
                    s.pending = []
                    s.fed = 0
                    finish(s, .length)
                    finished.insert(s.id)
                    continue
                }
                s.generated += 1
                s.pending = [tok.id]
                s.fed = 0
                var reason = s.tracker.add(tok)
                if reason == nil && s.cache.count + 1 > maxPos { reason = .length }
                s.continuation.yield(.token(tok, text: s.tracker.takeDelta(finished: reason != nil)))
                if let reason {
                    finish(s, reason)
                    finished.insert(s.id)
                }
            }
        }
        cond.lock()
        stepCount += 1
        cond.unlock()
        if !finished.isEmpty { active.removeAll { finished.contains($0.id) } }
    }

    private func finish(_ s: Sequence, _ reason: FinishReason) {
        let uncached = Array(s.pending[s.fed...])
        s.continuation.yield(.finished(s.tracker.result(reason, uncached: uncached)))
        s.continuation.finish()
        markDone()
    }

    private func markDone() {
        cond.lock()
        activeCount -= 1
        cond.broadcast()
        cond.unlock()
    }
}
