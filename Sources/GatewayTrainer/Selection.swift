// Which logged episodes the trainer uses and what each is worth: collaboration episodes with a
// reward source (reference answers or a feedback score) inside the filters, their protocol reward,
// and their advantage (GRPO within the episodes of one question, a running baseline for lone ones).

import EpisodeLog
import Foundation
import PromptR1
import TrafficLog

public struct ScoredEpisode: Sendable {
    public var sequence: TrainingSequence
    public var source: RewardSource
    public var reward: TrainingReward
    public var advantage: Double
    /// Episodes with the same key form a GRPO group.
    public var groupKey: String
    public var groupSize: Int

    public init(
        sequence: TrainingSequence, source: RewardSource, reward: TrainingReward, advantage: Double,
        groupKey: String, groupSize: Int
    ) {
        self.sequence = sequence
        self.source = source
        self.reward = reward
        self.advantage = advantage
        self.groupKey = groupKey
        self.groupSize = groupSize
    }
}

public struct Selection: Sendable {
    public var episodes: [ScoredEpisode]
    /// Episodes matching the filters that could not be used, with the reason.
    public var skipped: [(id: String, reason: String)]
    public var groups: Int
    public var loneEpisodes: Int
    /// Episodes skipped because the gateway redacted them (`log.redact_bodies`): not trainable.
    public var redacted: Int { skipped.filter { $0.reason == EpisodeSelector.redactedReason }.count }
    /// Selected episodes that were sampled but logged the model's log-softmax
    /// (`policy_logprobs = model`, e.g. vLLM's default): their logged log-probs are not the
    /// behaviour policy's, so the PPO ratio needs `--behaviour base`.
    public var modelLogprobsOfSampled = 0
    /// GRPO groups whose rewards are all equal, so every advantage in them is 0.
    public var zeroAdvantageGroups = 0
    /// Lone episodes whose reward equals their running baseline (advantage 0).
    public var zeroAdvantageLone = 0

    /// Why no selected episode carries a learning signal (every advantage is 0, so the policy
    /// gradient is 0 and only the KL term could move the weights), or nil when some do.
    public var noSignalReason: String? {
        guard !episodes.isEmpty, episodes.allSatisfy({ $0.advantage == 0 }) else { return nil }
        var why: [String] = []
        if groups > 0 {
            why.append(groups == 1 ? "the 1 group has identical rewards" : "all \(groups) groups have identical rewards")
        }
        if loneEpisodes > 0 {
            why.append(
                loneEpisodes == 1
                    ? "the lone episode has advantage 0" : "all \(loneEpisodes) lone episodes have the reward of the episodes before them")
        }
        let rewards = Set(episodes.map(\.reward.reward))
        let same = rewards.count == 1 ? " (every episode's reward is \(Table.num(rewards.first!)))" : ""
        return why.joined(separator: " and ") + same
            + ": sample with temperature > 0 (rollout --temperature 1), or give feedback that differs"
    }

    public var meanReward: Double {
        episodes.isEmpty ? 0 : episodes.reduce(0) { $0 + $1.reward.reward } / Double(episodes.count)
    }
}

public enum EpisodeSelector {
    public static let redactedReason = "redacted (not trainable)"

    /// The reward source of an episode from its feedback rows: all "reference" values (answer F1
    /// against the best of them), else the most recent "score".
    public static func rewardSource(_ feedback: [FeedbackRecord]) -> RewardSource? {
        EpisodeLog.rewardSource(of: feedback)
    }

    /// Loads, scores and groups. `formatFallback` computes the format score from a sequence whose
    /// log row has none (e.g. by decoding its ids); without it such episodes are skipped.
    public static func select(
        database: any LogStore, filter: EpisodeFilter,
        formatFallback: ((TrainingSequence) -> Double)? = nil
    ) throws -> Selection {
        let records = try database.episodes(filter.query)
        let feedback = try database.feedback(episodeIDs: records.map(\.id))
        var scored: [ScoredEpisode] = []
        var skipped: [(String, String)] = []
        for r in records {
            guard r.trainable else {
                skipped.append((r.id, redactedReason))
                continue
            }
            guard let source = rewardSource(feedback[r.id] ?? []) else {
                skipped.append((r.id, "no usable reward source"))
                continue
            }
            let seq: TrainingSequence
            do { seq = try TrainingSequence(record: r) } catch {
                skipped.append((r.id, "\(error)"))
                continue
            }
            if seq.policyTokenCount == 0 {
                skipped.append((r.id, "no policy tokens"))
                continue
            }
            guard let fmt = seq.formatScore ?? formatFallback?(seq) else {
                skipped.append((r.id, "no format score and no tokenizer to compute it"))
                continue
            }
            let reward = TrainingReward.compute(format: fmt, answer: seq.answer, source: source)
            scored.append(
                ScoredEpisode(
                    sequence: seq, source: source, reward: reward, advantage: 0,
                    groupKey: r.question ?? "episode:" + r.id, groupSize: 1))
        }
        let (withAdvantages, groups, lone) = assignAdvantages(scored)
        var selection = Selection(episodes: withAdvantages, skipped: skipped, groups: groups, loneEpisodes: lone)
        let selectedIDs = Set(withAdvantages.map(\.sequence.episodeID))
        selection.modelLogprobsOfSampled =
            records.filter {
                selectedIDs.contains($0.id) && $0.policyLogprobs == .model && $0.policySampled == true
            }.count
        let byKey = Dictionary(grouping: withAdvantages, by: \.groupKey)
        selection.zeroAdvantageGroups = byKey.values.filter { $0.count > 1 && $0.allSatisfy { $0.advantage == 0 } }.count
        selection.zeroAdvantageLone = byKey.values.filter { $0.count == 1 && $0[0].advantage == 0 }.count
        return selection
    }

    /// GRPO advantages within groups of >= 2 episodes sharing a key; lone episodes get
    /// `R - running mean` in log order. Returns the episodes in their input order.
    public static func assignAdvantages(_ input: [ScoredEpisode]) -> ([ScoredEpisode], groups: Int, lone: Int) {
        var out = input
        var byKey: [String: [Int]] = [:]
        var keyOrder: [String] = []
        for (i, e) in input.enumerated() {
            if byKey[e.groupKey] == nil { keyOrder.append(e.groupKey) }
            byKey[e.groupKey, default: []].append(i)
        }
        var groups = 0
        var loneIndices: [Int] = []
        for key in keyOrder {
            let idx = byKey[key]!
            if idx.count == 1 {
                loneIndices.append(idx[0])
                continue
            }
            groups += 1
            let adv = Advantages.grpo(idx.map { input[$0].reward.reward })
            for (i, a) in zip(idx, adv) {
                out[i].advantage = a
                out[i].groupSize = idx.count
            }
        }
        var baseline = RunningBaseline()
        for i in loneIndices.sorted(by: {
            (input[$0].sequence.createdAt, input[$0].sequence.episodeID) < (input[$1].sequence.createdAt, input[$1].sequence.episodeID)
        }) {
            out[i].advantage = baseline.advantage(input[i].reward.reward)
        }
        return (out, groups, loneIndices.count)
    }
}
