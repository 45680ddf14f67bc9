// `gateway-train rollout`: the paper's online data collection. For each dataset question, G
// sampled collaboration episodes through the same loop and upstream client the gateway uses,
// logged (with the question's reference answers as "reference" feedback, in the same
// transaction) into the gateway's SQLite schema. Resumable: questions that already have their G
// episodes on the route are skipped, partly done ones get only the missing episodes.

import EpisodeLog
import Foundation
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog

public struct RolloutConfig: Sendable {
    public var groupSize = 5
    public var concurrency = 4
    public var route = "rollout"
    public var upstreamModel = "gpt-4o-mini"
    public var temperature: Float = 1.0
    public var topP: Float = 1.0
    public var topK = 0
    public var seed: UInt64 = 0
    public var maxTurns = 5
    public var maxTokensPerTurn = 1024
    public var maxPolicyTokensPerEpisode: Int? = nil
    /// protocol section 4's N: 2048 in the paper's training.
    public var maxResultChars = 2048
    public var upstreamTemperature: Double? = nil
    public var upstreamMaxTokens: Int? = nil
    public var episodeDeadlineSeconds: Double? = nil
    public init() {}
}

public struct RolloutSummary: Sendable {
    public var questions = 0
    public var questionsSkipped = 0
    public var episodesLogged = 0
    public var episodesFailed = 0
    public var meanReward = 0.0
    public var meanFormat = 0.0
    public var exactMatch = 0.0
    public var upstreamCalls = 0
    public var upstreamTokens = 0
    public var policyTokens = 0
    public var seconds = 0.0
    public var failures: [String] = []
}

public struct RolloutEpisodeResult: Sendable {
    public var episode: Episode
    public var reward: RewardBreakdown
    public var recordID: String
}

public enum Rollout {
    /// The work list: (item index, sample index) for every episode still missing.
    public static func pending(items: [DatasetItem], groupSize: Int, done: [String: Int]) -> [(item: Int, sample: Int)] {
        var out: [(Int, Int)] = []
        var seen: [String: Int] = [:]
        for (i, item) in items.enumerated() {
            // A question listed twice gets its group twice.
            let already = done[item.question, default: 0] - seen[item.question, default: 0] * groupSize
            seen[item.question, default: 0] += 1
            for k in min(max(0, already), groupSize)..<groupSize { out.append((i, k)) }
        }
        return out
    }

    /// Deterministic per-episode sampling seed.
    public static func seed(base: UInt64, question: String, sample: Int) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325 ^ base
        for b in question.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        h = (h ^ UInt64(sample)) &* 0x100_0000_01b3
        return h
    }

    public static func options(_ c: RolloutConfig) -> CollaborationOptions {
        var o = CollaborationOptions()
        o.limits = CollaborationLimits(
            maxTurns: c.maxTurns, maxTokensPerTurn: c.maxTokensPerTurn,
            maxPolicyTokensPerEpisode: c.maxPolicyTokensPerEpisode, maxUpstreamCalls: nil,
            deadline: c.episodeDeadlineSeconds.map { .now + .milliseconds(Int($0 * 1000)) })
        o.maxResultChars = c.maxResultChars
        // As the reference rollout: a call on the last allowed turn is still answered.
        o.callOnFinalTurn = true
        o.upstream = UpstreamCallOptions(model: c.upstreamModel, temperature: c.upstreamTemperature, maxTokens: c.upstreamMaxTokens)
        return o
    }

    /// Runs one sampled episode.
    public static func runEpisode(
        question: String, policy: EnginePolicy, upstream: any UpstreamAnswering,
        config: RolloutConfig, sample: Int
    ) async -> Episode {
        let sampling = SamplingParameters(
            temperature: config.temperature, topK: config.topK, topP: config.topP,
            seed: seed(base: config.seed, question: question, sample: sample))
        var opts = options(config)
        if let d = config.episodeDeadlineSeconds { opts.limits.deadline = .now + .milliseconds(Int(d * 1000)) }
        let loop = CollaborationLoop(options: opts, upstream: upstream, makeSession: policy.factory(sampling: sampling))
        return await loop.run(question: question)
    }

    /// Runs the missing episodes of `items`, logging each as it finishes.
    public static func run(
        items: [DatasetItem], policy: EnginePolicy, policyVersion: String, upstream: any UpstreamAnswering,
        database: any LogStore, config: RolloutConfig,
        progress: @escaping @Sendable (Int, Int, RolloutEpisodeResult?) -> Void = { _, _, _ in }
    ) async throws -> RolloutSummary {
        let clock = ContinuousClock.now
        let done = try database.episodeCountsByQuestion(route: config.route)
        let work = pending(items: items, groupSize: config.groupSize, done: done)
        var summary = RolloutSummary()
        summary.questions = items.count
        let touched = Set(work.map(\.item))
        summary.questionsSkipped = items.indices.filter { !touched.contains($0) }.count
        var rewards: [Double] = []
        var formats: [Double] = []
        var ems: [Double] = []
        var finished = 0
        progress(0, work.count, nil)
        try await runBounded(
            count: work.count, limit: config.concurrency,
            { n in
                let w = work[n]
                return (
                    w.item,
                    await runEpisode(question: items[w.item].question, policy: policy, upstream: upstream, config: config, sample: w.sample)
                )
            },
            onResult: { (itemIndex: Int, e: Episode) in
                finished += 1
                let item = items[itemIndex]
                if case .error(let kind) = e.outcome {
                    // Not logged: a failed episode (network, deadline) says nothing about the
                    // policy; a rerun tries again.
                    summary.episodesFailed += 1
                    if summary.failures.count < 10 { summary.failures.append("\(item.question.prefix(60)): \(kind)") }
                    progress(finished, work.count, nil)
                    return
                }
                let reward = e.reward(references: item.answers)
                var record = EpisodeMapping.record(
                    e, route: config.route, requestedModel: "prompt-r1/" + config.upstreamModel,
                    upstreamModel: config.upstreamModel, policyVersion: policyVersion)
                record.requestJSON = nil
                record.policySampled = config.temperature > 0
                let feedback = item.answers.map { FeedbackRecord(episodeID: record.id, kind: "reference", value: $0, source: "rollout") }
                // An item without answers still needs a marker to count as done; it has no reward.
                let rows =
                    feedback.isEmpty
                    ? [FeedbackRecord(episodeID: record.id, kind: "label", value: "no_reference", source: "rollout")] : feedback
                try database.insert(episode: record, feedback: rows)
                summary.episodesLogged += 1
                rewards.append(reward.reward)
                formats.append(reward.format)
                ems.append(reward.exactMatch)
                summary.upstreamCalls += e.upstreamCallCount
                summary.upstreamTokens += record.totalTokens ?? 0
                summary.policyTokens += e.generatedTokenCount
                progress(finished, work.count, RolloutEpisodeResult(episode: e, reward: reward, recordID: record.id))
            })
        func mean(_ x: [Double]) -> Double { x.isEmpty ? 0 : x.reduce(0, +) / Double(x.count) }
        summary.meanReward = mean(rewards)
        summary.meanFormat = mean(formats)
        summary.exactMatch = mean(ems)
        let d = ContinuousClock.now - clock
        summary.seconds = Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
        return summary
    }
}
