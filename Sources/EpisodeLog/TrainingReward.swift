// The training reward of one episode (protocol.md section 5, a feedback score standing in for the
// answer F1 when there is no reference answer). In EpisodeLog because the trainer and the
// gateway's console export (which must not import the trainer) both compute it.

import Foundation
import PromptR1
import TrafficLog

/// Where an episode's answer term comes from.
public enum RewardSource: Sendable, Equatable {
    /// Reference answers (rollouts, `{"reference": ...}` feedback): the answer term is the best F1.
    case references([String])
    /// A feedback score in [0, 1] standing in for the F1 term.
    case score(Double)
}

public struct TrainingReward: Sendable, Equatable, Codable {
    public var format: Double
    /// The answer term: F1 against the references, or the feedback score.
    public var answer: Double
    public var exactMatch: Double?
    /// The protocol's reward in [-1, 1].
    public var reward: Double

    public init(format: Double, answer: Double, exactMatch: Double?, reward: Double) {
        self.format = format
        self.answer = answer
        self.exactMatch = exactMatch
        self.reward = reward
    }

    /// Protocol section 5: `R = -1 + fmt + answer` when `fmt == 1.0`, else `R = -1 + fmt`.
    public static func combine(format: Double, answer: Double) -> Double {
        format == 1.0 ? -1.0 + format + answer : -1.0 + format
    }

    /// The reward of one episode from its format score and its final answer (nil: none).
    public static func compute(format: Double, answer: String?, source: RewardSource) -> TrainingReward {
        switch source {
        case .references(let refs):
            let f1 = answer.map { PromptR1Reward.f1(prediction: $0, references: refs) } ?? 0
            let em = answer.map { PromptR1Reward.exactMatch(prediction: $0, references: refs) } ?? 0
            return TrainingReward(format: format, answer: f1, exactMatch: em, reward: combine(format: format, answer: f1))
        case .score(let s):
            let a = min(max(s, 0), 1)
            return TrainingReward(format: format, answer: a, exactMatch: nil, reward: combine(format: format, answer: a))
        }
    }
}

/// The reward source of an episode from its feedback rows: all "reference" values (answer F1
/// against the best of them), else the most recent "score".
public func rewardSource(of feedback: [FeedbackRecord]) -> RewardSource? {
    let refs = feedback.filter { $0.kind == "reference" }.map(\.value)
    if !refs.isEmpty { return .references(refs) }
    let scores = feedback.filter { $0.kind == "score" }.sorted { ($0.createdAt, $0.id ?? 0) < ($1.createdAt, $1.id ?? 0) }
    if let last = scores.last, let v = Double(last.value), v.isFinite { return .score(v) }
    return nil
}
