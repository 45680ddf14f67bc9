import Foundation

public enum FinishReason: String, Sendable, Codable {
    /// A stop token id was sampled or a stop string was produced.
    case stop
    /// `maxTokens` reached (or the context window is full).
    case length
    /// Cancelled by the caller.
    case cancelled
}

public enum GenerationError: Error, CustomStringConvertible, Equatable {
    case stopStringsNeedTokenBytes
    case emptyStopString
    case invalidMaxTokens(Int)

    public var description: String {
        switch self {
        case .stopStringsNeedTokenBytes: return "stop strings need a tokenBytes closure to decode tokens"
        case .emptyStopString: return "stop strings must not be empty"
        case .invalidMaxTokens(let n): return "maxTokens must be >= 0, got \(n)"
        }
    }
}

/// What ends a generation, besides `maxTokens`.
public struct StopConditions: Sendable, Equatable {
    public var tokenIds: Set<Int32>
    /// Matched on the UTF-8 bytes of the generated text, across token boundaries.
    public var strings: [String]
    public init(tokenIds: Set<Int32> = [], strings: [String] = []) {
        self.tokenIds = tokenIds
        self.strings = strings
    }
}

/// The outcome of one generation.
public struct GenerationResult: Sendable, Equatable {
    /// Every sampled token, including a stop token or the token that completed a stop string.
    public var tokens: [Int32]
    /// Log-probs under the sampling distribution actually used (see `SampledToken.logprob`).
    public var logprobs: [Float]
    /// Raw log_softmax log-probs (temperature 1, no truncation).
    public var rawLogprobs: [Float]
    public var finishReason: FinishReason
    /// The stop token that ended generation, if any.
    public var stopTokenId: Int32?
    /// The stop string that ended generation, if any.
    public var stopString: String?
    /// Generated text bytes (the stop token's bytes excluded), cut right after a matched stop string.
    /// Empty when no `tokenBytes` closure was given.
    public var bytes: [UInt8]
    /// Where the matched stop string sits in `bytes` (it always ends `bytes`).
    public var stopStringRange: Range<Int>?
    /// Tokens that are part of the sequence but not yet in its KV cache (the last sampled token, which is
    /// only fed to the model when the sequence continues).
    public var uncachedTokens: [Int32]

    public var text: String { String(decoding: bytes, as: UTF8.self) }
    /// The text without the matched stop string (OpenAI `stop` semantics).
    public var textExcludingStop: String {
        String(decoding: bytes[..<(stopStringRange?.lowerBound ?? bytes.count)], as: UTF8.self)
    }
}

/// Accumulates sampled tokens and decides when to stop. Shared by `Session` and `BatchScheduler`.
struct GenerationTracker {
    let maxTokens: Int
    let stopTokenIds: Set<Int32>
    let stopStrings: [[UInt8]]
    let stopNames: [String]
    let tokenBytes: ((Int32) -> [UInt8])?
    private let longestStop: Int
    var tokens: [Int32] = []
    var logprobs: [Float] = []
    var rawLogprobs: [Float] = []
    var bytes: [UInt8] = []
    var stopTokenId: Int32?
    var stopString: String?
    var stopRange: Range<Int>?
    /// Bytes already handed out as streaming deltas.
    private(set) var emitted = 0

    init(maxTokens: Int, stop: StopConditions, tokenBytes: ((Int32) -> [UInt8])?) throws {
        guard maxTokens >= 0 else { throw GenerationError.invalidMaxTokens(maxTokens) }
        if !stop.strings.isEmpty && tokenBytes == nil { throw GenerationError.stopStringsNeedTokenBytes }
        if stop.strings.contains(where: \.isEmpty) { throw GenerationError.emptyStopString }
        self.maxTokens = maxTokens
        stopTokenIds = stop.tokenIds
        stopNames = stop.strings
        stopStrings = stop.strings.map { Array($0.utf8) }
        longestStop = stopStrings.map(\.count).max() ?? 0
        self.tokenBytes = tokenBytes
        tokens.reserveCapacity(min(maxTokens, 4096))
    }

    /// Records a sampled token; returns the finish reason if generation must end now.
    mutating func add(_ s: SampledToken) -> FinishReason? {
        tokens.append(s.id)
        logprobs.append(s.logprob)
        rawLogprobs.append(s.rawLogprob)
        if stopTokenIds.contains(s.id) {
            stopTokenId = s.id
            return .stop
        }
        if let tokenBytes {
            let old = bytes.count
            bytes.append(contentsOf: tokenBytes(s.id))
            if longestStop > 0, let (i, r) = earliestStop(searchFrom: max(0, old - longestStop + 1)) {
                stopString = stopNames[i]
                stopRange = r
                bytes.removeSubrange(r.upperBound...)
                return .stop
            }
        }
        return tokens.count >= maxTokens ? .length : nil
    }

    /// New text that is safe to stream: never part of a stop string, never an incomplete UTF-8 sequence
    /// (unless generation is over). Concatenated deltas equal `textExcludingStop` of the final result.
    mutating func takeDelta(finished: Bool) -> [UInt8] {
        var end = bytes.count
        if let r = stopRange {
            end = r.lowerBound
        } else if !finished {
            // Hold back the longest suffix that could still grow into a stop string.
            var hold = 0
            for pat in stopStrings {
                var k = min(pat.count - 1, bytes.count)
                while k > hold {
                    if bytes[(bytes.count - k)...].elementsEqual(pat[..<k]) {
                        hold = k
                        break
                    }
                    k -= 1
                }
            }
            end -= hold
            // Hold back an incomplete trailing UTF-8 sequence.
            var i = end - 1
            var back = 0
            while i >= emitted, back < 4, bytes[i] & 0xC0 == 0x80 {
                i -= 1
                back += 1
            }
            if i >= emitted {
                let lead = bytes[i]
                let need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1
                if need > back + 1 { end = i }
            }
        }
        guard end > emitted else { return [] }
        defer { emitted = end }
        return Array(bytes[emitted..<end])
    }

    /// The stop string occurrence that starts first at or after `start` (ties: the first listed).
    private func earliestStop(searchFrom start: Int) -> (Int, Range<Int>)? {
        var best: (Int, Range<Int>)?
        for (si, pat) in stopStrings.enumerated() where pat.count <= bytes.count {
            var p = start
            while p + pat.count <= bytes.count {
                if let b = best, p >= b.1.lowerBound { break }
                var ok = true
                for j in 0..<pat.count where bytes[p + j] != pat[j] {
                    ok = false
                    break
                }
                if ok {
                    best = (si, p..<(p + pat.count))
                    break
                }
                p += 1
            }
        }
        return best
    }

    func result(_ reason: FinishReason, uncached: [Int32]) -> GenerationResult {
        GenerationResult(
            tokens: tokens, logprobs: logprobs, rawLogprobs: rawLogprobs, finishReason: reason,
            stopTokenId: stopTokenId, stopString: stopString, bytes: bytes, stopStringRange: stopRange,
            uncachedTokens: uncached)
    }
}

/// A cooperative cancellation flag that can be shared across threads.
public final class CancellationFlag: @unchecked Sendable {  // guarded by `lock`
    private let lock = NSLock()
    private var value = false
    public init() {}
    public func cancel() {
        lock.lock()
        value = true
        lock.unlock()
    }
    public var isCancelled: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }
}

/// One sequence owned by the caller: append token ids (prefilled incrementally into its KV cache) and
/// generate. Continuing after generation re-uses the cache, so the prefix is never recomputed.
/// Not thread-safe (one owner); the model itself may be shared.
public final class Session {
    public let model: TransformerModel
    public let cache: KVCache
    /// The whole sequence: cached tokens plus, after a generation, the last sampled token.
    public private(set) var tokens: [Int32] = []
    private var lastLogits: [Float]?

    public init(model: TransformerModel, initialCapacity: Int = 256) {
        self.model = model
        cache = model.makeCache(initialCapacity: initialCapacity)
    }

    /// Adopts an existing cache (e.g. a `ScheduledSequence.cache` once its generation has finished) plus the
    /// tokens that belong to the sequence but are not cached yet (`GenerationResult.uncachedTokens`).
    public init(model: TransformerModel, cache: KVCache, uncachedTokens: [Int32] = []) {
        self.model = model
        self.cache = cache
        tokens = cache.tokens + uncachedTokens
    }

    /// Appends tokens to the sequence and runs them through the model (together with a pending sampled
    /// token, if any).
    public func append(_ newTokens: [Int32]) throws {
        guard !newTokens.isEmpty else { return }
        let feed = Array(tokens[cache.count...]) + newTokens
        lastLogits = try model.prefill(tokens: feed, cache: cache)
        tokens += newTokens
    }

    /// Drops everything after the first `n` tokens.
    public func truncate(to n: Int) {
        guard n < tokens.count else { return }
        tokens.removeLast(tokens.count - n)
        if cache.count > n { cache.truncate(to: n) }
        lastLogits = nil
    }

    /// Logits for the next token after `tokens`, running pending tokens if needed.
    public func nextLogits() throws -> [Float] {
        if cache.count < tokens.count {
            lastLogits = try model.prefill(tokens: Array(tokens[cache.count...]), cache: cache)
        } else if lastLogits == nil {
            guard let last = tokens.last else { throw ModelError.emptyInput }
            cache.truncate(to: tokens.count - 1)
            lastLogits = try model.prefill(tokens: [last], cache: cache)
        }
        return lastLogits!
    }

    /// Generates up to `maxTokens` tokens. The last sampled token is left out of the cache (see
    /// `GenerationResult.uncachedTokens`) and is fed automatically by the next `append`/`generate`.
    /// `onToken` receives each sampled token and the text bytes that became safe to stream with it (see
    /// `GenerationEvent.token`).
    public func generate(
        maxTokens: Int, sampling: SamplingParameters = .greedy, stop: StopConditions = StopConditions(),
        tokenBytes: ((Int32) -> [UInt8])? = nil, cancellation: CancellationFlag? = nil,
        onToken: ((SampledToken, [UInt8]) -> Void)? = nil
    ) throws -> GenerationResult {
        var tracker = try GenerationTracker(maxTokens: maxTokens, stop: stop, tokenBytes: tokenBytes)
        let sampler = Sampler(sampling)
        func uncached() -> [Int32] { Array(tokens[cache.count...]) }
        if maxTokens == 0 { return tracker.result(.length, uncached: uncached()) }
        var logits = try nextLogits()
        while true {
            if Task.isCancelled || cancellation?.isCancelled == true {
                return tracker.result(.cancelled, uncached: uncached())
            }
            let s = sampler.sample(logits)
            tokens.append(s.id)
            lastLogits = nil
            var reason = tracker.add(s)
            if reason == nil && tokens.count >= cache.maxPositions { reason = .length }
            if let onToken { onToken(s, tracker.takeDelta(finished: reason != nil)) }
            if let reason { return tracker.result(reason, uncached: uncached()) }
            logits = try model.prefill(tokens: [s.id], cache: cache)
            lastLogits = logits
        }
    }
}
