import Foundation

/// A request for the continuous-batching scheduler.
public struct GenerationRequest: Sendable {
    /// Tokens appended to the sequence before generating (after whatever the cache already holds).
    public var prompt: [Int32]
    public var maxTokens: Int
    public var sampling: SamplingParameters
    public var stop: StopConditions

    public init(
        prompt: [Int32], maxTokens: Int, sampling: SamplingParameters = .greedy,
        stop: StopConditions = StopConditions()
    ) {
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
        /// The whole prompt of a sequence that started with an empty cache (it may reuse a cached prefix and
        /// its prompt is kept in the prefix cache once computed); nil when continuing a cache.
        let freshPrompt: [Int32]?
        /// The prefix cache has been consulted (always true without one or for a continued cache).
        var resolved: Bool
        init(
            id: Int, cache: KVCache, sampler: Sampler, tracker: GenerationTracker, pending: [Int32],
            continuation: AsyncStream<GenerationEvent>.Continuation, freshPrompt: [Int32]?
        ) {
            self.id = id
            self.cache = cache
            self.sampler = sampler
            self.tracker = tracker
            self.pending = pending
            self.continuation = continuation
            self.freshPrompt = freshPrompt
            resolved = freshPrompt == nil
        }
        /// Still computing a fresh prompt (a later sequence with the same start waits for it).
        var prefillingFreshPrompt: Bool { freshPrompt != nil && resolved && generated == 0 && fed < pending.count }
    }

    /// Keys and values of shared prompt prefixes (nil: every prompt is computed in full).
    public let prefixCache: PrefixCache?
    /// Called on the worker thread once per sequence whose prompt has been scheduled: prompt tokens copied
    /// from the prefix cache and prompt tokens computed (e.g. for a metric).
    public var onPrefill: (@Sendable (_ cached: Int, _ computed: Int) -> Void)? {
        get {
            cond.lock()
            defer { cond.unlock() }
            return prefillObserver
        }
        set {
            cond.lock()
            prefillObserver = newValue
            cond.unlock()
        }
    }
    private var prefillObserver: (@Sendable (Int, Int) -> Void)?
    private var prefillCounts = (cached: 0, computed: 0)
    /// Prompt tokens so far: copied from the prefix cache, and computed by the model.
    public var prefillTokens: (cached: Int, computed: Int) {
        cond.lock()
        defer { cond.unlock() }
        return prefillCounts
    }

    /// A sequence whose prompt shares at least this many more tokens with a prompt still being computed than
    /// with any cached prefix waits for that prompt to be cached instead of computing the same positions
    /// (the n episodes of one request, a rollout group).
    public static let waitForSharedPrefix = 32

    /// Prompt-lookup speculative decoding of decode steps (nil: one token per sequence and step).
    public let speculation: PromptLookup?
    /// Called on the worker thread after each speculative step of a sequence: draft tokens proposed, and
    /// how many of them the model accepted (e.g. for a metric).
    public var onDraft: (@Sendable (_ drafted: Int, _ accepted: Int) -> Void)? {
        get { cond.withLock { draftObserver } }
        set { cond.withLock { draftObserver = newValue } }
    }
    private var draftObserver: (@Sendable (Int, Int) -> Void)?
    private var draftCounts = (drafted: 0, accepted: 0)
    /// Draft tokens so far: proposed by prompt lookup, and accepted by the model.
    public var draftTokens: (drafted: Int, accepted: Int) { cond.withLock { draftCounts } }

    public init(
        model: TransformerModel, tokenBytes: (@Sendable (Int32) -> [UInt8])? = nil, maxStepTokens: Int = 256,
        prefixCache: PrefixCache? = nil, speculation: PromptLookup? = nil
    ) {
        precondition(prefixCache.map { $0.model === model } ?? true, "a prefix cache belongs to one model")
        self.model = model
        self.tokenBytes = tokenBytes
        self.maxStepTokens = max(1, maxStepTokens)
        self.prefixCache = prefixCache
        self.speculation = speculation
        // The worker holds the scheduler until `shutdown()`; a scheduler lives as long as its model is served.
        let t = Thread { self.workerLoop() }
        t.name = "PolicyEngine.BatchScheduler"
        thread = t
        t.start()
    }

    /// Number of sequences submitted and not yet finished.
    public var runningCount: Int {
        cond.lock()
        defer { cond.unlock() }
        return activeCount
    }
    /// Forward steps run so far.
    public var steps: Int {
        cond.lock()
        defer { cond.unlock() }
        return stepCount
    }

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
        let fresh = cache.count == 0 && prefixCache != nil && prefixCache!.capacityBytes > 0
        if pending.isEmpty, let last = cache.tokens.last {
            // Nothing new: recompute the logits of the last cached position.
            cache.truncate(to: cache.count - 1)
            pending = [last]
        }
        let seq = Sequence(
            id: id, cache: cache, sampler: Sampler(request.sampling), tracker: tracker,
            pending: pending, continuation: continuation, freshPrompt: fresh ? pending : nil)
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

    /// Consults the prefix cache for a fresh sequence: copies the longest cached prefix of its prompt into its
    /// cache (keeping at least one prompt token to compute, for the logits), or returns false to wait one step
    /// because a running sequence is computing a longer shared prefix.
    private func resolvePrefix(_ s: Sequence) -> Bool {
        guard let prefixCache, let prompt = s.freshPrompt else { return true }
        let cached = prefixCache.matchLength(prompt)
        for other in active where other !== s && other.prefillingFreshPrompt {
            let shared = zip(other.freshPrompt!, prompt).prefix { $0 == $1 }.count
            if shared >= cached + Self.waitForSharedPrefix { return false }
        }
        let reused = (try? prefixCache.restore(prompt, into: s.cache, limit: prompt.count - 1)) ?? 0
        if reused > 0 { s.pending = Array(prompt[reused...]) }
        s.resolved = true
        countPrefill(cached: reused, computed: prompt.count - reused)
        return true
    }

    private func countPrefill(cached: Int, computed: Int) {
        cond.lock()
        prefillCounts.cached += cached
        prefillCounts.computed += computed
        let observer = prefillObserver
        cond.unlock()
        observer?(cached, computed)
    }

    /// One forward step over all active sequences.
    private func step() {
        var requests: [ForwardRequest] = []
        var members: [Sequence] = []
        var drafts: [[Int32]] = []
        var budget = maxStepTokens
        let maxPos = model.config.maxPositionEmbeddings
        var overflow: [Sequence] = []
        // Drafts per decoding sequence, so that the step's decode rows stay within `maxStepRows`.
        var draftLimit = 0
        if let lookup = speculation {
            let decoding = active.reduce(0) { $0 + ($1.generated > 0 && $1.pending.count - $1.fed == 1 ? 1 : 0) }
            if decoding > 0 { draftLimit = min(lookup.draftTokens, lookup.maxStepRows / decoding - 1) }
        }
        for s in active {
            if !s.resolved {
                guard resolvePrefix(s) else { continue }
            } else if s.generated == 0 && s.fed == 0 && s.freshPrompt == nil {
                countPrefill(cached: 0, computed: s.pending.count)
            }
            let remaining = s.pending.count - s.fed
            if s.cache.count + remaining > maxPos {
                overflow.append(s)
                continue
            }
            var draft: [Int32] = []
            if let lookup = speculation, draftLimit > 0, remaining == 1, s.generated > 0 {
                // The last token plus drafts must fit the context, and the step emits at most drafts + 1.
                let room = min(draftLimit, s.tracker.maxTokens - s.generated - 1, maxPos - s.cache.count - 1)
                draft = lookup.draft(after: s.cache.tokens, last: s.pending[s.fed], limit: room)
            }
            if !draft.isEmpty {
                s.pending = [s.pending[s.fed]] + draft
                s.fed = 0
                requests.append(ForwardRequest(tokens: s.pending[...], cache: s.cache, logits: .all))
                members.append(s)
                drafts.append(draft)
                continue
            }
            // Decode tokens always run; prompt chunks share the step budget (at least one token each).
            let n = remaining == 1 ? 1 : max(1, min(remaining, budget))
            if remaining > 1 { budget = max(0, budget - n) }
            let done = s.fed + n == s.pending.count
            requests.append(
                ForwardRequest(
                    tokens: s.pending[s.fed..<(s.fed + n)], cache: s.cache,
                    logits: done ? .last : .none))
            members.append(s)
            drafts.append([])
        }
        var finished = Set<Int>()
        for s in overflow {
            if s.generated > 0 {
                finish(s, .length)
            } else {
                s.continuation.yield(
                    .failed("\(ModelError.contextOverflow(needed: s.cache.count + s.pending.count, maxPositions: maxPos))"))
                s.continuation.finish()
                markDone()
            }
            finished.insert(s.id)
        }
        if !requests.isEmpty {
            // Per member: the tokens this step emits (accepted drafts, then the model's own token) and how
            // many of them are accepted drafts. A member's rows arrive in order; the first rejected draft (or a
            // stop token) ends its step.
            var emitted = [[SampledToken]](repeating: [], count: members.count)
            var accepted = [Int](repeating: 0, count: members.count)
            var closed = [Bool](repeating: false, count: members.count)
            do {
                try model.forward(requests) { i, j, logits in
                    guard !closed[i] else { return }
                    let s = members[i]
                    if j < drafts[i].count {
                        let (t, ok) = s.sampler.verify(logits, draft: drafts[i][j])
                        emitted[i].append(t)
                        if ok { accepted[i] += 1 }
                        closed[i] = !ok || s.tracker.stopTokenIds.contains(t.id)
                    } else {
                        emitted[i].append(s.sampler.sample(logits))
                        closed[i] = true
                    }
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
                guard !emitted[i].isEmpty else { continue }
                if s.generated == 0, let prompt = s.freshPrompt, let prefixCache {
                    // The whole prompt is in the cache now: keep it for the sequences that start the same way.
                    try? prefixCache.insert(prompt, from: s.cache)
                }
                if s.tracker.maxTokens == 0 {
                    s.pending = []
                    s.fed = 0
                    finish(s, .length)
                    finished.insert(s.id)
                    continue
                }
                // The cache keeps the rows of the emitted tokens but the last (which becomes the next input).
                let rejectedRows = drafts[i].count
                var used = 0
                var reason: FinishReason?
                for tok in emitted[i] {
                    used += 1
                    s.generated += 1
                    reason = s.tracker.add(tok)
                    let cached = s.cache.count - rejectedRows + used - 1
                    if reason == nil && cached + 1 > maxPos { reason = .length }
                    s.continuation.yield(.token(tok, text: s.tracker.takeDelta(finished: reason != nil)))
                    if reason != nil { break }
                }
                if rejectedRows > 0 {
                    s.cache.truncate(to: s.cache.count - rejectedRows + used - 1)
                    countDrafts(drafted: drafts[i].count, accepted: min(accepted[i], used))
                }
                s.pending = [emitted[i][used - 1].id]
                s.fed = 0
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

    private func countDrafts(drafted: Int, accepted: Int) {
        let observer = cond.withLock {
            draftCounts.drafted += drafted
            draftCounts.accepted += accepted
            return draftObserver
        }
        observer?(drafted, accepted)
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
