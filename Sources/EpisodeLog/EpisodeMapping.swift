// From the collaboration loop's `Episode` to the traffic log's rows. The gateway's collaboration
// route and the trainer's rollouts both write episodes through here, so the trainer reads gateway
// traffic and its own rollouts with the same code. (TrafficLog must not import PromptR1, and the
// trainer must not import the server: this small module sits between them.)

import Foundation
import PromptR1
import TrafficLog

public enum EpisodeMapping {
    /// The turn rows of an episode (one "policy" row per policy turn with its input ids,
    /// generated ids, log-probs and loss mask, then one "upstream" row per upstream call) and
    /// the upstream totals. `redact` is applied to every stored text.
    public struct TurnRows: Sendable {
        public var turns: [TurnRecord] = []
        public var upstreamMs = 0.0
        public var upstreamPromptTokens = 0
        public var upstreamCompletionTokens = 0
    }

    public static func turnRows(_ e: Episode, redact: (String?) -> String? = { $0 }) -> TurnRows {
        var rows = TurnRows()
        for t in e.turns {
            var call: String?
            switch t.parse {
            case .call(let c): call = c.prompt
            case .malformedCall(let err, _): call = err.rawValue
            case .final: call = nil
            }
            rows.turns.append(
                TurnRecord(
                    index: rows.turns.count, kind: "policy", inputIDs: t.inputTokenIDs, outputIDs: t.generatedTokenIDs,
                    logprobs: t.logprobs, lossMask: t.mask, text: redact(t.generatedText), call: redact(call)))
            if let up = t.upstream {
                rows.upstreamMs += up.latencySeconds * 1000
                if let u = up.usage {
                    rows.upstreamPromptTokens += u.promptTokens
                    rows.upstreamCompletionTokens += u.completionTokens
                }
                rows.turns.append(
                    TurnRecord(
                        index: rows.turns.count, kind: "upstream", upstreamRequest: redact(messagesJSON(up.messages)),
                        upstreamResponse: redact(up.rawAnswer), latencyMs: up.latencySeconds * 1000,
                        promptTokens: up.usage?.promptTokens, completionTokens: up.usage?.completionTokens,
                        status: up.error == nil ? 200 : nil, error: up.error))
            }
        }
        return rows
    }

    /// JSON of upstream messages as the log stores them.
    static func messagesJSON(_ m: [UpstreamMessage]) -> String? {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? e.encode(m)).map { String(decoding: $0, as: UTF8.self) }
    }

    /// The outcome label of an episode's log row (the gateway may replace it with a fallback's).
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

    /// A complete log row for `e` as a rollout writes it, mode "collaborate".
    public static func record(
        _ e: Episode, id: String = UUIDv7.generate(), route: String, requestedModel: String?,
        upstreamModel: String?, policyVersion: String?
    ) -> EpisodeRecord {
        var r = EpisodeRecord(
            id: id, createdAt: e.startedAt, route: route, mode: "collaborate",
            requestedModel: requestedModel, upstreamModel: upstreamModel,
            policyVersion: policyVersion, stream: false)
        r.question = e.question
        r.outcome = outcomeLabel(e)
        if case .error(let kind) = e.outcome { r.error = "\(kind)" }
        r.responseText = e.outcome.answerText
        r.finishReason = "stop"
        r.formatScore = PromptR1Reward.formatScore(e.rewardText)
        let rows = turnRows(e)
        r.turns = rows.turns
        r.promptTokens = rows.upstreamPromptTokens
        r.completionTokens = rows.upstreamCompletionTokens
        r.totalTokens = rows.upstreamPromptTokens + rows.upstreamCompletionTokens
        r.policyTokens = e.tokenIDs.count
        r.status = 200
        r.totalMs = e.durationSeconds * 1000
        r.upstreamMs = rows.upstreamMs
        r.overheadMs = max(0, r.totalMs - rows.upstreamMs)
        r.policyLogprobs = e.policyLogprobs
        return r
    }
}
