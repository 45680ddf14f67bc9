// The one file of this module that knows the engine: it binds `PolicySession` to PolicyEngine's
// continuous-batching scheduler, so every collaboration episode of the gateway (and every
// rollout of the trainer) decodes in the same batch as the others.

import Foundation
import PolicyEngine

/// A loaded policy checkpoint: weights, tokenizer and the scheduler that runs its sequences.
public final class EnginePolicy: Sendable {
    public let directory: URL
    public let model: TransformerModel
    public let tokenizer: Tokenizer
    public let scheduler: BatchScheduler
    /// Tokens that end a policy turn: `<|im_end|>` plus the checkpoint's eos ids.
    public let endOfTurnIDs: Set<Int32>

    public enum LoadError: Error, CustomStringConvertible {
        case notChatML(String)
        public var description: String {
            switch self {
            case .notChatML(let m): return "the checkpoint cannot speak the Prompt-R1 protocol: \(m)"
            }
        }
    }

    /// Default bound of the prefix cache (`policy.prefix_cache_mb`): 256 MB holds the fixed prefix and
    /// about fifteen whole first prompts of a 0.5B policy (24.6 kB per position), one of a 4B policy.
    public static let defaultPrefixCacheBytes = 256 << 20

    /// - Parameters:
    ///   - prefixCacheBytes: bound of the keys and values of shared prompt prefixes kept (0: none).
    ///   - speculation: prompt-lookup speculative decoding (nil: off).
    public init(
        directory: URL, model: TransformerModel, tokenizer: Tokenizer,
        prefixCacheBytes: Int = EnginePolicy.defaultPrefixCacheBytes, speculation: PromptLookup? = nil
    ) throws {
        self.directory = directory
        self.model = model
        self.tokenizer = tokenizer
        guard let imEnd = tokenizer.id(of: "<|im_end|>"), tokenizer.id(of: "<|im_start|>") != nil else {
            throw LoadError.notChatML("the tokenizer has no <|im_start|>/<|im_end|> tokens (the protocol uses Qwen's ChatML)")
        }
        var stops: Set<Int32> = [imEnd]
        for id in model.eosTokenIds { stops.insert(id) }
        if let eos = tokenizer.eosTokenId { stops.insert(eos) }
        endOfTurnIDs = stops
        scheduler = BatchScheduler(
            model: model, tokenBytes: { [tokenizer] in tokenizer.tokenBytes($0) },
            prefixCache: prefixCacheBytes > 0 ? PrefixCache(model: model, capacityBytes: prefixCacheBytes) : nil,
            speculation: speculation)
    }

    /// Loads a Hugging Face checkpoint folder (`.q8`: projections quantised to 8 bits at load).
    public convenience init(
        directory: URL, weightFormat: WeightFormat = .f32,
        prefixCacheBytes: Int = EnginePolicy.defaultPrefixCacheBytes, speculation: PromptLookup? = nil
    ) throws {
        let model = try TransformerModel.load(from: directory, weightFormat: weightFormat)
        let tokenizer = try Tokenizer(directory: directory)
        try self.init(
            directory: directory, model: model, tokenizer: tokenizer, prefixCacheBytes: prefixCacheBytes,
            speculation: speculation)
    }

    /// The text every first prompt starts with, whatever the question: the system message with the tool,
    /// then `<|im_start|>user\nQuestion: ` (protocol section 1).
    public static var protocolFixedPrefix: String {
        let probe = PromptR1Prompt.firstPrompt(question: "\u{0}")
        return String(probe[..<probe.range(of: "\u{0}")!.lowerBound])
    }

    /// Computes the keys and values of the protocol's fixed prefix once and pins them in the prefix cache,
    /// so no episode computes them again. Returns the number of tokens kept (0 without a prefix cache).
    @discardableResult
    public func prefillProtocolPrefix() throws -> Int {
        guard let cache = scheduler.prefixCache, cache.capacityBytes > 0 else { return 0 }
        // The last token of the prefix alone ("Question: " ends in a space that the question's first word
        // takes) differs from the one in a real prompt; the common part is what is kept.
        let tokens = tokenizer.encode(Self.protocolFixedPrefix)
        let real = tokenizer.encode(PromptR1Prompt.firstPrompt(question: "What is it?"))
        let shared = Array(tokens[..<zip(tokens, real).prefix { $0 == $1 }.count])
        try cache.prefill(shared)
        return cache.matchLength(shared)
    }

    /// Stops the scheduler's worker (running sequences finish as cancelled).
    public func shutdown() { scheduler.shutdown() }

    /// A session whose context starts with `promptText` (the first prompt of the protocol).
    public func session(promptText: String, sampling: SamplingParameters) -> EnginePolicySession {
        EnginePolicySession(policy: self, promptIDs: tokenizer.encode(promptText), sampling: sampling)
    }

    /// A factory for `CollaborationLoop`.
    public func factory(sampling: SamplingParameters) -> PolicySessionFactory {
        { [self] prompt in self.session(promptText: prompt, sampling: sampling) }
    }
}

/// One episode's context in the engine: a KV cache that grows turn by turn. The injected text is
/// tokenised on its own and appended, so the prefix is never recomputed.
public final class EnginePolicySession: PolicySession, @unchecked Sendable {
    // Mutable state is touched only by the loop, which calls one method at a time.
    let policy: EnginePolicy
    let sampling: SamplingParameters
    public let promptTokenIDs: [Int32]
    private var cache: KVCache?
    /// Tokens to feed before the next turn: the prompt at first, then the last sampled token of
    /// the previous turn (not yet in the cache) and the injected tokens.
    private var pending: [Int32]
    /// Policy tokens generated so far (prefill is not counted).
    public private(set) var generatedTokens = 0
    public private(set) var contextTokens = 0

    init(policy: EnginePolicy, promptIDs: [Int32], sampling: SamplingParameters) {
        self.policy = policy
        self.sampling = sampling
        promptTokenIDs = promptIDs
        pending = promptIDs
        contextTokens = promptIDs.count
    }

    public func generateTurn(limits: PolicyTurnLimits, onText: (@Sendable (String) -> Void)?) async throws -> PolicyTurn {
        let maxContext = policy.model.config.maxPositionEmbeddings
        let room = maxContext - contextTokens
        guard room > 1 else { throw PolicySessionError.contextFull(limit: maxContext) }
        let request = GenerationRequest(
            prompt: pending, maxTokens: min(limits.maxNewTokens, room - 1), sampling: sampling,
            stop: StopConditions(tokenIds: policy.endOfTurnIDs, strings: limits.stopStrings))
        let sequence = policy.scheduler.submit(request, cache: cache)
        cache = sequence.cache
        let result: GenerationResult = try await withTaskCancellationHandler {
            // The scheduler hands out text that is safe to show (complete UTF-8, never part of a
            // stop string); the stop string itself arrives with the final bytes.
            var streamed = 0
            for await event in sequence.events {
                switch event {
                case .token(_, let text):
                    guard let onText, !text.isEmpty else { continue }
                    streamed += text.count
                    onText(String(decoding: text, as: UTF8.self))
                case .finished(let r):
                    if let onText, streamed < r.bytes.count {
                        onText(String(decoding: r.bytes[streamed...], as: UTF8.self))
                    }
                    return r
                case .failed(let message):
                    throw PolicySessionError.engine(message)
                }
            }
            throw PolicySessionError.engine("the generation stream ended without a result")
        } onCancel: {
            sequence.cancel()
        }
        if result.finishReason == .cancelled { throw CancellationError() }
        pending = result.uncachedTokens
        generatedTokens += result.tokens.count
        contextTokens += result.tokens.count
        let reason: PolicyFinishReason
        if result.stopTokenId != nil {
            reason = .endOfTurn
        } else if result.stopString != nil {
            reason = .stopString
        } else {
            reason = .length
        }
        // The log-prob under the sampling distribution; greedy decoding has a degenerate one
        // (every chosen token would be 0), so the model's own log-softmax is recorded instead,
        // which is what a trainer needs as the behaviour log-prob.
        let logprobs = sampling.isGreedy ? result.rawLogprobs : result.logprobs
        return PolicyTurn(text: result.text, tokenIDs: result.tokens, logprobs: logprobs, finishReason: reason)
    }

    public func appendInjected(_ text: String) async throws -> [Int32] {
        let ids = policy.tokenizer.encode(text)
        pending += ids
        contextTokens += ids.count
        return ids
    }
}

public enum PolicySessionError: Error, CustomStringConvertible {
    case contextFull(limit: Int)
    case engine(String)
    public var description: String {
        switch self {
        case .contextFull(let limit): return "the policy's context window (\(limit) tokens) is full"
        case .engine(let m): return "policy engine error: \(m)"
        }
    }
}
