// `gateway-train eval`: the collaboration (policy + upstream) against the upstream alone on the
// same questions: EM, F1, mean protocol reward and upstream tokens for both.

import EpisodeLog
import Foundation
import OpenAIWire
import PolicyEngine
import PromptR1

public struct EvalConfig: Sendable {
    public var rollout = RolloutConfig()
    /// Also ask the upstream alone (one call with the bare question).
    public var baseline = true
    public init() {
        rollout.temperature = 0
        rollout.concurrency = 4
    }
}

public struct EvalSide: Codable, Sendable, Equatable {
    public var n = 0
    public var exactMatch = 0.0
    public var f1 = 0.0
    /// Protocol reward (collaboration only; the upstream alone has no format).
    public var meanReward: Double?
    public var meanFormat: Double?
    public var upstreamPromptTokens = 0
    public var upstreamCompletionTokens = 0
    public var upstreamCalls = 0
    public var failures = 0
    enum CodingKeys: String, CodingKey {
        case n, f1, failures
        case exactMatch = "exact_match"
        case meanReward = "mean_reward"
        case meanFormat = "mean_format"
        case upstreamPromptTokens = "upstream_prompt_tokens"
        case upstreamCompletionTokens = "upstream_completion_tokens"
        case upstreamCalls = "upstream_calls"
    }
}

public struct EvalItemResult: Codable, Sendable {
    public var question: String
    public var answers: [String]
    public var collaborationAnswer: String?
    public var collaborationEM: Double
    public var collaborationF1: Double
    public var reward: Double
    public var format: Double
    public var upstreamAnswer: String?
    public var upstreamEM: Double?
    public var upstreamF1: Double?
    enum CodingKeys: String, CodingKey {
        case question, answers, reward, format
        case collaborationAnswer = "collaboration_answer"
        case collaborationEM = "collaboration_em"
        case collaborationF1 = "collaboration_f1"
        case upstreamAnswer = "upstream_answer"
        case upstreamEM = "upstream_em"
        case upstreamF1 = "upstream_f1"
    }
}

public struct EvalReport: Codable, Sendable {
    public var policy: String
    public var policyVersion: String
    public var upstreamModel: String
    public var dataset: String
    public var collaboration: EvalSide
    public var upstreamAlone: EvalSide?
    public var items: [EvalItemResult]
    public var seconds: Double
    enum CodingKeys: String, CodingKey {
        case policy, dataset, collaboration, items, seconds
        case policyVersion = "policy_version"
        case upstreamModel = "upstream_model"
        case upstreamAlone = "upstream_alone"
    }

    public var table: String {
        var rows: [[String]] = [
            [
                "collaboration", "\(collaboration.n)", Table.num(collaboration.exactMatch), Table.num(collaboration.f1),
                collaboration.meanReward.map { Table.num($0) } ?? "-",
                "\(collaboration.upstreamPromptTokens + collaboration.upstreamCompletionTokens)", "\(collaboration.upstreamCalls)",
            ]
        ]
        if let u = upstreamAlone {
            rows.append([
                "upstream alone", "\(u.n)", Table.num(u.exactMatch), Table.num(u.f1), "-",
                "\(u.upstreamPromptTokens + u.upstreamCompletionTokens)", "\(u.upstreamCalls)",
            ])
        }
        return Table.render(["system", "n", "EM", "F1", "mean reward", "upstream tokens", "upstream calls"], rows)
    }
}

public enum Evaluator {
    public static func run(
        items: [DatasetItem], policy: EnginePolicy, policyPath: String, policyVersion: String,
        upstream: any UpstreamAnswering, config: EvalConfig, datasetName: String,
        progress: @escaping @Sendable (Int, Int) -> Void = { _, _ in }
    ) async throws -> EvalReport {
        let clock = ContinuousClock.now
        let total = items.count * (config.baseline ? 2 : 1)
        let counter = Counter()
        var results: [(Int, EvalItemResult, Episode?, UpstreamAnswer?, Bool)] = []
        try await runBounded(
            count: items.count, limit: config.rollout.concurrency,
            { i in
                let item = items[i]
                let e = await Rollout.runEpisode(
                    question: item.question, policy: policy, upstream: upstream, config: config.rollout, sample: 0)
                progress(counter.increment(), total)
                let rb = e.reward(references: item.answers)
                var r = EvalItemResult(
                    question: item.question, answers: item.answers, collaborationAnswer: rb.answer,
                    collaborationEM: rb.exactMatch, collaborationF1: rb.f1, reward: rb.reward, format: rb.format)
                var alone: UpstreamAnswer?
                var aloneFailed = false
                if config.baseline {
                    do {
                        let a = try await upstream.answer(
                            messages: [.user(item.question)],
                            options: UpstreamCallOptions(
                                model: config.rollout.upstreamModel,
                                temperature: config.rollout.upstreamTemperature,
                                maxTokens: config.rollout.upstreamMaxTokens))
                        let text = PythonString.strip(a.text)
                        r.upstreamAnswer = text
                        r.upstreamEM = PromptR1Reward.exactMatch(prediction: text, references: item.answers)
                        r.upstreamF1 = PromptR1Reward.f1(prediction: text, references: item.answers)
                        alone = a
                    } catch {
                        aloneFailed = true
                    }
                    progress(counter.increment(), total)
                }
                if case .error = e.outcome { return (i, r, nil, alone, aloneFailed) }
                return (i, r, e, alone, aloneFailed)
            }, onResult: { results.append($0) })
        results.sort { $0.0 < $1.0 }
        var collab = EvalSide()
        var alone = EvalSide()
        var rewardSum = 0.0
        var formatSum = 0.0
        for (_, r, e, a, aFailed) in results {
            collab.n += 1
            if let e {
                collab.exactMatch += r.collaborationEM
                collab.f1 += r.collaborationF1
                rewardSum += r.reward
                formatSum += r.format
                for t in e.turns {
                    if let up = t.upstream {
                        collab.upstreamCalls += 1
                        collab.upstreamPromptTokens += up.usage?.promptTokens ?? 0
                        collab.upstreamCompletionTokens += up.usage?.completionTokens ?? 0
                    }
                }
            } else {
                collab.failures += 1
                rewardSum += -1
            }
            if config.baseline {
                alone.n += 1
                if aFailed { alone.failures += 1 }
                alone.exactMatch += r.upstreamEM ?? 0
                alone.f1 += r.upstreamF1 ?? 0
                if let a {
                    alone.upstreamCalls += 1
                    alone.upstreamPromptTokens += a.usage?.promptTokens ?? 0
                    alone.upstreamCompletionTokens += a.usage?.completionTokens ?? 0
                }
            }
        }
        if collab.n > 0 {
            collab.exactMatch /= Double(collab.n)
            collab.f1 /= Double(collab.n)
            collab.meanReward = rewardSum / Double(collab.n)
            collab.meanFormat = formatSum / Double(collab.n)
        }
        if alone.n > 0 {
            alone.exactMatch /= Double(alone.n)
            alone.f1 /= Double(alone.n)
        }
        let d = ContinuousClock.now - clock
        return EvalReport(
            policy: policyPath, policyVersion: policyVersion, upstreamModel: config.rollout.upstreamModel,
            dataset: datasetName, collaboration: collab, upstreamAlone: config.baseline ? alone : nil,
            items: results.map(\.1), seconds: Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18)
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func increment() -> Int {
        lock.lock()
        defer { lock.unlock() }
        n += 1
        return n
    }
}
