// From the traffic log back to training data (the way in is EpisodeLog's `EpisodeMapping`):
// `TrainingSequence(record:)` rebuilds the exact token sequence the policy saw and wrote:
//   concat over policy turns of (input ids + output ids) == `Episode.tokenIDs` (minus an
//   injection after the very last turn, which carries no loss), with the loss mask and the
//   behaviour log-probs aligned with it.

import Foundation
import PromptR1
import TrafficLog

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
        tokens = []
        mask = []
        behaviourLogprobs = []
        turnTexts = []
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
