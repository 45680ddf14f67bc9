import EpisodeLog
import FakeUpstream
import Foundation
import GatewayTrainer
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog
import XCTest

/// The whole online loop learns: from the tiny Prompt-R1 policy, GRPO iterations (sampled
/// rollouts at temperature 1 through the real collaboration loop against a FakeUpstream, logged
/// to a real SQLite file with feedback, selected and scored by the trainer, PPO + KL on the real
/// TrainableModel with AdamW, exported and reloaded into the engine) must lift the reward on
/// HELD-OUT questions.
///
/// The toy task has a verifiable reward that the policy can learn in a CI-sized budget: the
/// questions are order-status look-ups ("Look up the status of order 4821."), the upstream does
/// not know ("I am not sure, sorry."), and every episode gets a feedback score of 1 (the user
/// accepts any answer), which stands in for the F1 term of protocol.md section 5. So the reward
/// is 1 exactly when the episode is perfectly formatted (think + call turns, then think + a
/// non-empty answer) and -1 + format otherwise. On these unseen questions the policy (fine-tuned
/// on six other questions) breaks the protocol most of the time: success about 0.1 at the start.
/// Held-out questions are other order numbers, never trained on.
///
/// It can fail: with `LEARN_LR=0` (no learning) the held-out numbers stay where they started and
/// both assertions fail. Deterministic: every episode, in the rollouts and in the evaluation, runs
/// alone. The engine batches the decode steps of concurrent episodes, and a batch of several rows
/// takes other BLAS kernels than one row (sgemm slices instead of sgemv), so with concurrent
/// episodes which ones happened to share a step (timing of the upstream calls) changed the
/// logits in their last bits, now and then a sampled token, and from there the whole run; the
/// test failed about one run in several on a loaded machine. Run alone, the same seeds give the
/// same tokens, the same log order and the same weights every time. An answer-dependent variant (paraphrases of
/// "12 times 11", upstream answering only a "12 * 11" prompt) learned on its training questions
/// but needed far more iterations to carry over to held-out paraphrases than CI allows.
final class LearningTests: XCTestCase {
    static let train = [4821, 1377, 9053, 2648, 7710, 3195, 5562, 8834].map { "Look up the status of order \($0)." }
    static let heldOut = [6127, 2290, 7475, 1843, 9301, 5068].map { "Look up the status of order \($0)." }

    /// The training reward of an episode with a feedback score of 1.
    static func reward(_ e: Episode) -> Double {
        TrainingReward.compute(format: PromptR1Reward.formatScore(e.rewardText), answer: e.outcome.answerText, source: .score(1)).reward
    }

    struct Eval {
        var success: Double
        var meanReward: Double
    }

    /// Sampled episodes (temperature 1, fixed seeds) on the held-out questions, one after another;
    /// success = reward 1.
    static func evaluate(_ policy: EnginePolicy, upstream: any UpstreamAnswering, samples: Int, seed: UInt64) async -> Eval {
        var config = RolloutConfig()
        config.temperature = 1
        config.maxTokensPerTurn = 200
        config.seed = seed
        let cfg = config
        var rewards: [Double] = []
        for q in heldOut {
            for s in 0..<samples {
                rewards.append(reward(await Rollout.runEpisode(question: q, policy: policy, upstream: upstream, config: cfg, sample: s)))
            }
        }
        let n = Double(rewards.count)
        return Eval(success: Double(rewards.filter { $0 == 1.0 }.count) / n, meanReward: rewards.reduce(0, +) / n)
    }

    func testGRPOLiftsHeldOutRewardOnAToyTask() async throws {
        let started = ContinuousClock.now
        // Recipe values except the learning rate (the paper's 1e-6 is for a 4B model and
        // thousands of steps) and one optimiser step per episode.
        let lr = ProcessInfo.processInfo.environment["LEARN_LR"].flatMap(Double.init) ?? 5e-5
        let iterations = 6
        let fake = try await FakeUpstream(
            script: { r in
                let model = r.json?["model"] as? String ?? ""
                return .json(status: 200, body: FakeUpstream.completionJSON(model: model, text: "I am not sure, sorry."))
            }, recordRequests: false)
        let client = UpstreamClient(settings: UpstreamSettings(baseURL: fake.baseURL, maxRetries: 0))
        let upstream = ClientUpstream(client: client)
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("traffic.sqlite"))
        let base = Fixtures.model("promptr1-tiny")

        let model = try TrainableModel(directory: base, mode: .full, seed: 1)
        let reference = try TrainableModel(directory: base, mode: .frozen, seed: 1)
        let adam = EngineAdamW(AdamW(model: model, config: AdamWConfig(lr: Float(lr), weightDecay: 0.01)))
        let trainable = EngineTrainable(model: model, reference: reference)

        var policy = try EnginePolicy(directory: base)
        let before = await Self.evaluate(policy, upstream: upstream, samples: 8, seed: 1000)
        print("held-out before: success \(before.success), mean reward \(before.meanReward)")

        var rollout = RolloutConfig()
        rollout.groupSize = 5
        rollout.concurrency = 1  // one episode at a time: see the type's comment
        rollout.maxTokensPerTurn = 200
        rollout.temperature = 1
        let items = Self.train.map { DatasetItem(question: $0, answers: []) }
        for k in 0..<iterations {
            rollout.seed = UInt64(k + 1)
            rollout.route = "iter\(k)"
            let r = try await Rollout.run(
                items: items, policy: policy, policyVersion: "iter\(k)", upstream: upstream, database: db, config: rollout)
            XCTAssertEqual(r.episodesFailed, 0)
            // Feedback as the gateway's /v1/feedback stores it.
            for e in try db.episodes(EpisodeQuery(route: "iter\(k)", includeTurns: false)) {
                _ = try db.insertFeedback(FeedbackRecord(episodeID: e.id, kind: "score", value: "1.0", source: "test"))
            }
            let sel = try EpisodeSelector.select(database: db, filter: EpisodeFilter(route: "iter\(k)"))
            XCTAssertEqual(sel.episodes.count, 40)
            XCTAssertEqual(sel.groups, 8)
            var hyper = TrainingHyperparameters()
            hyper.learningRate = lr
            hyper.gradAccum = 1
            hyper.seed = UInt64(k)
            hyper.ppo = PPOConfig(clip: 0.2, klCoef: 0.001)
            let trainer = PPOTrainer(model: trainable, optimizer: adam, episodes: sel.episodes, hyper: hyper)
            _ = trainer.prepare(measureKL: false)
            let result = try trainer.run(stateDirectory: nil, klBefore: 0, measureKLAfter: false)
            let dir = tmp.url.appendingPathComponent("iter\(k + 1)")
            try model.exportCheckpoint(to: dir, sourceDirectory: base)
            policy.shutdown()
            policy = try EnginePolicy(directory: dir)
            print(
                "iteration \(k): rollout mean reward \(sel.meanReward), \(result.steps) steps, mean loss \(result.meanLoss), clip fraction \(result.clipFraction)"
            )
        }
        let after = await Self.evaluate(policy, upstream: upstream, samples: 8, seed: 1000)
        print("held-out after: success \(after.success), mean reward \(after.meanReward); \(ContinuousClock.now - started)")
        policy.shutdown()
        try await client.shutdown()
        await fake.stop()

        XCTAssertLessThan(before.success, 0.2, "the toy task must start hard")
        XCTAssertGreaterThan(after.success, 0.6, "held-out success rate after GRPO")
        XCTAssertGreaterThan(after.meanReward - before.meanReward, 0.5, "held-out mean reward (range [-1, 1]) rises clearly")
    }
}

/// The logged behaviour log-probs of a real rollout are what the trainable model computes for the
/// same tokens (the PPO ratio starts at 1), and one PPO step on a positive-advantage episode
/// raises that episode's log-likelihood (the sign of the whole chain: loss, backward, AdamW).
final class EngineAlignmentTests: XCTestCase {
    func testLoggedLogprobsMatchTrainableModelAndAStepRaisesLikelihood() async throws {
        let fake = try await FakeUpstream(
            script: { r in
                .json(status: 200, body: FakeUpstream.completionJSON(model: "m", text: "12 times 11 is 132."))
            }, recordRequests: false)
        let client = UpstreamClient(settings: UpstreamSettings(baseURL: fake.baseURL, maxRetries: 0))
        let base = Fixtures.model("promptr1-tiny")
        let policy = try EnginePolicy(directory: base)
        var config = RolloutConfig()
        config.temperature = 1
        config.maxTokensPerTurn = 100
        config.seed = 4
        var episodes: [Episode] = []
        for s in 0..<3 {
            episodes.append(
                await Rollout.runEpisode(
                    question: "Which animal barks?", policy: policy, upstream: ClientUpstream(client: client), config: config, sample: s))
        }
        policy.shutdown()
        try await client.shutdown()
        await fake.stop()

        let model = try TrainableModel(directory: base, mode: .full, seed: 1)
        var maxDiff: Float = 0
        var seqs: [TrainingSequence] = []
        for e in episodes {
            let rec = EpisodeMapping.record(e, route: "t", requestedModel: nil, upstreamModel: nil, policyVersion: nil)
            let seq = try TrainingSequence(record: rec)
            XCTAssertEqual(seq.tokens, e.tokenIDs.prefix(seq.tokens.count).map { $0 })
            let lp = model.tokenLogprobs(seq.tokens)
            for t in seq.policyPositions { maxDiff = max(maxDiff, abs(lp[t - 1] - seq.behaviourLogprobs[t])) }
            seqs.append(seq)
        }
        XCTAssertLessThan(maxDiff, 2e-3, "behaviour log-probs vs trainable model")

        let seq = seqs[0]
        let before = seq.policyPositions.reduce(0.0) { $0 + Double(model.tokenLogprobs(seq.tokens)[$1 - 1]) }
        let scored = ScoredEpisode(
            sequence: seq, source: .score(1), reward: TrainingReward(format: 1, answer: 1, exactMatch: nil, reward: 1),
            advantage: 1, groupKey: "q", groupSize: 1)
        var hyper = TrainingHyperparameters()
        hyper.learningRate = 1e-4
        hyper.gradAccum = 1
        let adam = EngineAdamW(AdamW(model: model, config: AdamWConfig(lr: 1e-4, weightDecay: 0)))
        let reference = try TrainableModel(directory: base, mode: .frozen)
        let trainer = PPOTrainer(
            model: EngineTrainable(model: model, reference: reference), optimizer: adam, episodes: [scored], hyper: hyper)
        _ = trainer.prepare(measureKL: false)
        _ = try trainer.run(stateDirectory: nil, klBefore: 0, measureKLAfter: false)
        let after = seq.policyPositions.reduce(0.0) { $0 + Double(model.tokenLogprobs(seq.tokens)[$1 - 1]) }
        XCTAssertGreaterThan(after, before, "a positive advantage makes the episode more likely")
        print("alignment: max |behaviour - trainable| = \(maxDiff); log-likelihood \(before) -> \(after)")
    }
}
