// Between the collaboration loop's `Episode` and the traffic log's `EpisodeRecord`, both ways:
//
// - `EpisodeMapping.record(...)` writes an episode the way the gateway's collaboration route
//   does (one "policy" turn row per policy turn with its input ids, generated ids, log-probs and
//   loss mask, then one "upstream" row per upstream call), so rollouts and gateway traffic are
//   read back by the same code. It lives here because TrafficLog must not import PromptR1 and
//   GatewayTrainer must not import GatewayServer.
// - `TrainingSequence(record:)` rebuilds the exact token sequence the policy saw and wrote:
//   concat over policy turns of (input ids + output ids) == `Episode.tokenIDs` (minus an
//   injection after the very last turn, which carries no loss), with the loss mask and the
//   behaviour log-probs aligned with it.

import Foundation
import PromptR1
import TrafficLog

public enum EpisodeMapping {
    /// JSON of upstream messages as the gateway logs them.
    static func messagesJSON(_ m: [UpstreamMessage]) -> String? {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? e.encode(m)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The outcome label the gateway uses for an episode's log row.
    public static func outcomeLabel(_ e: Episode) -> String {
        switch e.outcome {
        case .answer: return "answer"
        case .noAnswer: return "no_answer"
        case .emptyAnswer: return "empty_answer"
        case .error(.cancelled): return "client_disconnected"
        case .error(.upstream): return "upstream_error"
        case .error(.deadlineExceeded): return "policy_timeout"
        case .error(.policy): return "policy_error"
        }
    }

    /// A complete log row for `e`, mode "collaborate".
    public static func record(_ e: Episode, id: String = UUIDv7.generate(), route: String, requestedModel: String?,
                              upstreamModel: String?, policyVersion: String?) -> EpisodeRecord {
        var r = EpisodeRecord(id: id, createdAt: e.startedAt, route: route, mode: "collaborate",
                              requestedModel: requestedModel, upstreamModel: upstreamModel,
                              policyVersion: policyVersion, stream: false)
        r.question = e.question
        r.outcome = outcomeLabel(e)
        if case .error(let kind) = e.outcome { r.error = "\(kind)" }
        r.responseText = e.outcome.answerText
        r.finishReason = "stop"
        r.formatScore = PromptR1Reward.formatScore(e.rewardText)
        var prompt = 0, completion = 0
        var turns: [TurnRecord] = []
        var upstreamMs = 0.0
        for t in e.turns {
            var call: String?
            switch t.parse {
            case .call(let c): call = c.prompt
            case .malformedCall(let err, _): call = err.rawValue
            case .final: call = nil
            }
            turns.append(TurnRecord(index: turns.count, kind: "policy", inputIDs: t.inputTokenIDs, outputIDs: t.generatedTokenIDs,
                                    logprobs: t.logprobs, lossMask: t.mask, text: t.generatedText, call: call))
            if let up = t.upstream {
                upstreamMs += up.latencySeconds * 1000
                if let u = up.usage { prompt += u.promptTokens; completion += u.completionTokens }
                turns.append(TurnRecord(index: turns.count, kind: "upstream", upstreamRequest: messagesJSON(up.messages),
                                        upstreamResponse: up.rawAnswer, latencyMs: up.latencySeconds * 1000,
                                        promptTokens: up.usage?.promptTokens, completionTokens: up.usage?.completionTokens,
                                        status: up.error == nil ? 200 : nil, error: up.error))
            }
        }
        r.turns = turns
        r.promptTokens = prompt
        r.completionTokens = completion
        r.totalTokens = prompt + completion
        r.policyTokens = e.tokenIDs.count
        r.status = 200
        r.totalMs = e.durationSeconds * 1000
        r.upstreamMs = upstreamMs
        r.overheadMs = max(0, r.totalMs - upstreamMs)
        return r
    }
}

/// One episode as the trainer uses it: the full token sequence with its mask and behaviour
/// log-probs, and what the reward needs.
public struct TrainingSequence: Sendable, Equatable {
    public var episodeID: String
    public var createdAt: Date
    public var question: String?
    public var tokens: [Int32]
    /// 1 where the policy generated the token.
    public var mask: [UInt8]
    /// Behaviour log-probs aligned with `tokens` (0 where mask is 0).
    public var behaviourLogprobs: [Float]
    /// Text of each policy turn (for the answer).
    public var turnTexts: [String]
    public var formatScore: Double?

    public enum Invalid: Error, CustomStringConvertible, Equatable {
        case noPolicyTurns(String)
        case missingIDs(String)
        case misaligned(String)
        public var description: String {
            switch self {
            case .noPolicyTurns(let id): return "episode \(id) has no policy turns with token ids"
            case .missingIDs(let id): return "episode \(id): a policy turn has no input/output ids"
            case .misaligned(let id): return "episode \(id): mask/log-prob lengths do not match the ids"
            }
        }
    }

    public init(record r: EpisodeRecord) throws {
        episodeID = r.id
        createdAt = r.createdAt
        question = r.question
        formatScore = r.formatScore
        tokens = []; mask = []; behaviourLogprobs = []; turnTexts = []
        for t in r.turns where t.kind == "policy" {
            guard let input = t.inputIDs, let output = t.outputIDs else { throw Invalid.missingIDs(r.id) }
            let m = t.lossMask ?? ([UInt8](repeating: 0, count: input.count) + [UInt8](repeating: 1, count: output.count))
            guard m.count == input.count + output.count else { throw Invalid.misaligned(r.id) }
            let lp = t.logprobs ?? []
            guard lp.isEmpty || lp.count == output.count else { throw Invalid.misaligned(r.id) }
            tokens += input
            tokens += output
            mask += m
            behaviourLogprobs += [Float](repeating: 0, count: input.count)
            // Missing behaviour log-probs (not tracked): filled in by the trainer from the
            // starting model (see `Trainer`), marked here as NaN.
            behaviourLogprobs += lp.isEmpty ? [Float](repeating: .nan, count: output.count) : lp
            turnTexts.append(t.text ?? "")
        }
        if turnTexts.isEmpty || tokens.count < 2 { throw Invalid.noPolicyTurns(r.id) }
        // The first token is never predicted; it cannot carry loss.
        mask[0] = 0
    }

    /// Positions t (>= 1) whose token the policy generated; token t is scored by logprobs[t-1].
    public var policyPositions: [Int] { (1..<tokens.count).filter { mask[$0] == 1 } }

    public var policyTokenCount: Int { policyPositions.count }

    /// The final answer: the first `<answer>` body of the last policy turn, stripped.
    public var answer: String? {
        guard let last = turnTexts.last else { return nil }
        guard let a = PromptR1Reward.extractAnswer(last), !a.isEmpty else { return nil }
        return a
    }
}
