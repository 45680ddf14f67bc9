// The record of one collaboration episode: enough to log it, show it, score it and train on it
// without re-rendering or re-tokenising anything.

import Foundation

/// One message of an upstream chat completion request.
public struct UpstreamMessage: Sendable, Equatable, Codable, Hashable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }

    public static func system(_ c: String) -> UpstreamMessage { .init(role: "system", content: c) }
    public static func user(_ c: String) -> UpstreamMessage { .init(role: "user", content: c) }
    public static func assistant(_ c: String) -> UpstreamMessage { .init(role: "assistant", content: c) }

    public static func == (a: UpstreamMessage, b: UpstreamMessage) -> Bool {
        a.role == b.role && PythonString.equal(a.content, b.content)
    }

    public func hash(into h: inout Hasher) {
        h.combine(role)
        for s in content.unicodeScalars { h.combine(s.value) }
    }
}

/// Token usage reported by the upstream.
public struct UpstreamUsage: Sendable, Equatable, Codable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int

    public init(promptTokens: Int, completionTokens: Int, totalTokens: Int? = nil) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = totalTokens ?? (promptTokens + completionTokens)
    }
}

/// Why the policy stopped generating a turn.
public enum PolicyFinishReason: String, Sendable, Codable {
    /// The policy produced its end-of-turn token (`<|im_end|>`) or end of sequence. The token is
    /// in `tokenIDs`; its text is not in `text`.
    case endOfTurn
    /// Generation stopped because the text now contains a stop string (`</interaction_prompt>`).
    case stopString
    /// The per-turn token limit was reached.
    case length
}

/// The upstream side of one well-formed call.
public struct UpstreamCallRecord: Sendable, Codable, Equatable {
    /// The exact messages sent.
    public var messages: [UpstreamMessage]
    /// The upstream's raw answer text (nil when the call failed).
    public var rawAnswer: String?
    /// The answer after Python `strip()` (what goes into RESULT_JSON and the history).
    public var answer: String?
    /// Wall-clock latency measured by the loop, seconds.
    public var latencySeconds: Double
    public var usage: UpstreamUsage?
    public var model: String?
    /// The error description when the upstream call failed.
    public var error: String?
}

/// One policy turn.
public struct EpisodeTurn: Sendable, Codable, Equatable {
    /// 1-based turn number.
    public var index: Int
    /// What the policy was given just before this turn: turn 1 the first prompt, turn k > 1 the
    /// injection that followed turn k-1.
    public var inputText: String
    public var inputTokenIDs: [Int32]
    /// The decoded generated text (without a final end-of-turn token's text).
    public var generatedText: String
    public var generatedTokenIDs: [Int32]
    /// Log-probabilities of the generated tokens under the sampling policy.
    public var logprobs: [Float]
    public var finishReason: PolicyFinishReason
    /// Parse of `generatedText`.
    public var parse: TurnParse
    /// Set for a well-formed call that was sent upstream.
    public var upstream: UpstreamCallRecord?
    /// The text injected after this turn (nil for the final turn), and its token ids.
    public var injectedText: String?
    public var injectedTokenIDs: [Int32]

    /// Loss mask over `inputTokenIDs + generatedTokenIDs`: 0 for given tokens, 1 for generated ones.
    public var mask: [UInt8] {
        [UInt8](repeating: 0, count: inputTokenIDs.count) + [UInt8](repeating: 1, count: generatedTokenIDs.count)
    }
}

/// Why an episode ended in error.
public enum EpisodeErrorKind: Sendable, Codable, Equatable {
    case deadlineExceeded
    case cancelled
    /// Creating the policy session, generating or appending failed.
    case policy(String)
    /// The upstream call failed (with `UpstreamFailurePolicy.failEpisode`).
    case upstream(String)
}

/// How an episode ended, from the caller's point of view.
public enum EpisodeOutcome: Sendable, Codable, Equatable {
    /// A final turn with a non-empty answer (stripped).
    case answer(String)
    /// No answer: the final turn had no `<answer>` or a limit (turns, policy tokens, upstream
    /// calls) ended the episode first. See `Episode.stopReason`.
    case noAnswer
    /// A final turn whose `<answer>` body is empty after stripping.
    case emptyAnswer
    case error(EpisodeErrorKind)

    public var answerText: String? {
        if case .answer(let a) = self { return a }
        return nil
    }
}

/// The precise reason the loop stopped.
public enum EpisodeStopReason: String, Sendable, Codable {
    case finalAnswer  // final turn with a non-empty answer
    case finalEmptyAnswer  // final turn with an empty answer
    case finalWithoutAnswer  // final turn with no <answer> (e.g. cut by the per-turn limit)
    case turnLimit
    case policyTokenLimit
    case upstreamCallLimit
    case deadline
    case cancelled
    case policyError
    case upstreamError
}

/// The full record of one episode.
public struct Episode: Sendable, Codable, Equatable {
    public var question: String
    /// The first prompt text (protocol section 1).
    public var promptText: String
    public var promptTokenIDs: [Int32]
    public var turns: [EpisodeTurn]
    public var outcome: EpisodeOutcome
    public var stopReason: EpisodeStopReason
    public var startedAt: Date
    public var durationSeconds: Double
    /// Which log-prob the turns' `logprobs` hold (nil: no policy session was created).
    public var policyLogprobs: PolicyLogprobKind? = nil

    /// Everything the policy saw and wrote, as text: the prompt, then per turn the generated text
    /// (plus `<|im_end|>` when the turn ended with the end-of-turn token, whose id is in
    /// `generatedTokenIDs` but whose text is not in `generatedText`) and the injection. With a
    /// session that honours the contract, `tokenizer.decode(tokenIDs) == fullText`.
    public var fullText: String {
        var s = promptText
        for t in turns {
            s += t.generatedText
            if t.finishReason == .endOfTurn { s += PromptR1Tag.imEnd }
            if let inj = t.injectedText { s += inj }
        }
        return s
    }

    /// The string the reference reward manager scores: `fullText` with `<|im_end|>` appended when
    /// it does not already end with it.
    public var rewardText: String {
        let s = fullText
        return s.unicodeScalars.reversed().starts(with: PromptR1Tag.imEnd.unicodeScalars.reversed())
            ? s : s + PromptR1Tag.imEnd
    }

    /// The whole token sequence: prompt, then per turn generated ids and injected ids.
    public var tokenIDs: [Int32] {
        var ids = promptTokenIDs
        for t in turns {
            ids += t.generatedTokenIDs
            ids += t.injectedTokenIDs
        }
        return ids
    }

    /// Loss mask aligned with `tokenIDs`: 1 for generated tokens, 0 for prompt and injected ones.
    public var lossMask: [UInt8] {
        var m = [UInt8](repeating: 0, count: promptTokenIDs.count)
        for t in turns {
            m += [UInt8](repeating: 1, count: t.generatedTokenIDs.count)
            m += [UInt8](repeating: 0, count: t.injectedTokenIDs.count)
        }
        return m
    }

    /// Sampling log-probabilities aligned with `tokenIDs` (0 where the mask is 0).
    public var logprobs: [Float] {
        var l = [Float](repeating: 0, count: promptTokenIDs.count)
        for t in turns {
            l += t.logprobs.prefix(t.generatedTokenIDs.count)
            if t.logprobs.count < t.generatedTokenIDs.count {
                l += [Float](repeating: 0, count: t.generatedTokenIDs.count - t.logprobs.count)
            }
            l += [Float](repeating: 0, count: t.injectedTokenIDs.count)
        }
        return l
    }

    /// Number of policy-generated tokens.
    public var generatedTokenCount: Int { turns.reduce(0) { $0 + $1.generatedTokenIDs.count } }

    /// Upstream calls made (including failed ones).
    public var upstreamCallCount: Int { turns.reduce(0) { $0 + ($1.upstream == nil ? 0 : 1) } }

    /// The last successful upstream answer (stripped): a fallback when there is no final answer.
    public var lastUpstreamAnswer: String? {
        turns.reversed().lazy.compactMap { $0.upstream?.answer }.first
    }

    /// Index in `tokenIDs` of the last policy-generated token (where the outcome reward goes).
    public var lastGeneratedTokenIndex: Int? {
        lossMask.lastIndex(of: 1)
    }

    /// The reference reward for this episode.
    public func reward(references: [String]) -> RewardBreakdown {
        PromptR1Reward.score(text: rewardText, references: references)
    }
}
