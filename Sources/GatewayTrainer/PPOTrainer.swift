// The optimisation loop: epochs over the selected episodes in a seeded order, one forward +
// backward per episode, the token-mean PPO + KL loss over the policy tokens of each optimiser
// step's episodes (gradient accumulation), gradient clipping, linear warm-up, and resumable state.
//
// Written against `PolicyGradientModel` / `PolicyOptimizer` so the whole loop is tested with a
// small exact model in the tests; `TrainableModelAdapter.swift` binds them to PolicyEngine.

import EpisodeLog
import Foundation
import PolicyEngine

/// What the loop needs from a trainable policy.
public protocol PolicyGradientModel: AnyObject {
    associatedtype Tape
    /// Forward pass keeping what backward needs; `logprobs(tape)[i] = log p(tokens[i+1] | tokens[...i])`.
    func forward(_ tokens: [Int32]) -> Tape
    func logprobs(_ tape: Tape) -> [Float]
    /// Accumulates the gradients of `sum(dLogprobs * logprobs)`.
    func backward(_ tape: Tape, dLogprobs: [Float])
    /// Log-probs under the current weights, no tape.
    func tokenLogprobs(_ tokens: [Int32]) -> [Float]
    /// Log-probs under the reference (starting/base) model.
    func referenceLogprobs(_ tokens: [Int32]) -> [Float]
    func zeroGradients()
    /// Scales the gradients down to `maxNorm` when larger; returns the norm before clipping.
    func clipGradients(maxNorm: Float) -> Float
    func saveState(to file: URL) throws
    func loadState(from file: URL) throws
}

public protocol PolicyOptimizer: AnyObject {
    func apply(learningRate: Float)
    func saveState(to file: URL) throws
    func loadState(from file: URL) throws
}

public struct TrainingHyperparameters: Sendable, Equatable, Codable {
    public var learningRate: Double = 1e-6
    public var epochs: Int = 1
    /// Episodes whose gradients are accumulated into one optimiser step.
    public var gradAccum: Int = 8
    public var warmupSteps: Int = 0
    public var gradClip: Double = 1.0
    public var seed: UInt64 = 0
    public var ppo: PPOConfig = .init()
    /// Write resumable state every this many optimiser steps (0: only at the end).
    public var saveEvery: Int = 0
    /// Use the starting weights' log-probs instead of the logged behaviour log-probs as the PPO
    /// denominator. For traffic sampled at a temperature other than 1 (or with top-k/top-p), the
    /// logged log-probs are of the tempered distribution and the ratio would be biased.
    public var recomputeBehaviour = false
    public init() {}
}

/// Progress of a run, saved with the state so a resumed run continues where it stopped.
public struct TrainingProgress: Codable, Sendable, Equatable {
    public var epoch = 0
    /// Optimiser steps already taken inside `epoch`.
    public var stepInEpoch = 0
    public var globalStep = 0
    /// Identifies the episode set; a resume with a different selection is refused.
    public var episodesDigest = ""
    public var lossSum = 0.0
    public var policyTokens = 0
    public var clippedTokens = 0
    public init() {}
}

public struct StepReport: Sendable {
    public var step: Int
    public var totalSteps: Int
    public var loss: Double
    public var kl: Double
    public var clipFraction: Double
    public var gradNorm: Float
    public var learningRate: Double
    public var tokens: Int
}

public struct TrainingResult: Sendable {
    public var steps: Int
    public var policyTokens: Int
    public var meanLoss: Double
    public var klBefore: Double
    public var klAfter: Double
    public var clipFraction: Double
}

public enum TrainerError: Error, CustomStringConvertible {
    case nothingToTrain
    case resumeMismatch(String)
    /// Every advantage is 0: training would change nothing (the reason says why).
    case noSignal(String)
    /// Sampled episodes whose logged log-probs are the model's, not the sampling distribution's.
    case modelLogprobsOfSampledEpisodes(Int)
    public var description: String {
        switch self {
        case .nothingToTrain: return "no usable episodes: nothing to train on"
        case .resumeMismatch(let m): return "cannot resume: \(m)"
        case .noSignal(let why): return "nothing to learn from: \(why) (--allow-no-signal trains anyway)"
        case .modelLogprobsOfSampledEpisodes(let n):
            return
                "\(n) selected episodes were sampled but their policy backend logged the model's log-probs, not the sampling distribution's (policy_logprobs = model): the PPO ratio against them would be wrong; train with --behaviour base (recomputes them with the starting weights)"
        }
    }
}

public final class PPOTrainer<Model: PolicyGradientModel, Optimizer: PolicyOptimizer> {
    public let model: Model
    public let optimizer: Optimizer
    public let hyper: TrainingHyperparameters
    public let episodes: [ScoredEpisode]
    /// Reference log-probs per episode (computed once: the reference model is frozen).
    private var refLogp: [[Float]] = []
    /// Behaviour log-probs with untracked entries filled from the reference model.
    private var oldLogp: [[Float]] = []
    public private(set) var progress = TrainingProgress()

    public init(model: Model, optimizer: Optimizer, episodes: [ScoredEpisode], hyper: TrainingHyperparameters) {
        self.model = model
        self.optimizer = optimizer
        self.hyper = hyper
        self.episodes = episodes
        progress.episodesDigest = Self.digest(episodes)
    }

    static func digest(_ e: [ScoredEpisode]) -> String {
        // FNV-1a over the ids and advantages: cheap, stable, enough to detect a different set.
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for x in e {
            for b in x.sequence.episodeID.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
            h = (h ^ x.advantage.bitPattern) &* 0x100_0000_01b3
        }
        return String(h, radix: 16)
    }

    public var stepsPerEpoch: Int { (episodes.count + hyper.gradAccum - 1) / max(1, hyper.gradAccum) }
    public var totalSteps: Int { stepsPerEpoch * hyper.epochs }

    /// Episode order of an epoch: a seeded shuffle (the same for a given seed and epoch).
    public func order(epoch: Int) -> [Int] {
        var idx = Array(episodes.indices)
        var rng = Xoshiro256(seed: hyper.seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(epoch) &+ 1)
        if idx.count > 1 {
            for i in stride(from: idx.count - 1, to: 0, by: -1) {
                let j = Int(rng.next() % UInt64(i + 1))
                idx.swapAt(i, j)
            }
        }
        return idx
    }

    /// Policy-token terms of episode `i` from the given current log-probs.
    func terms(_ i: Int, logp: [Float]) -> PolicyTokenTerms {
        let pos = episodes[i].sequence.policyPositions
        return PolicyTokenTerms(
            logp: pos.map { logp[$0 - 1] }, oldLogp: pos.map { oldLogp[i][$0 - 1] },
            refLogp: pos.map { refLogp[i][$0 - 1] }, advantage: episodes[i].advantage)
    }

    /// Computes the reference log-probs (and fills in missing behaviour log-probs). Returns the
    /// token-mean KL of the current model to the reference over all policy tokens (0 without
    /// `measureKL`, which saves a forward pass per episode when the model is known to equal the
    /// reference, i.e. at the start of a run).
    public func prepare(measureKL: Bool = true) -> Double {
        refLogp = []
        oldLogp = []
        for e in episodes {
            let s = e.sequence
            let ref = model.referenceLogprobs(s.tokens)
            refLogp.append(ref)
            if hyper.recomputeBehaviour {
                oldLogp.append(model.tokenLogprobs(s.tokens))
                continue
            }
            // Behaviour log-probs shifted to the model's alignment: old[t-1] scores token t.
            var old = [Float](repeating: 0, count: s.tokens.count - 1)
            for t in 1..<s.tokens.count {
                let b = s.behaviourLogprobs[t]
                old[t - 1] = b.isNaN ? ref[t - 1] : b
            }
            oldLogp.append(old)
        }
        guard measureKL else { return 0 }
        // Recomputed behaviour log-probs are the current model's: no second forward pass.
        return meanKL(current: hyper.recomputeBehaviour ? oldLogp : nil)
    }

    /// Token-mean KL to the reference under the current weights (`current`: their log-probs per
    /// episode when already computed).
    public func meanKL(current: [[Float]]? = nil) -> Double {
        var klSum = 0.0
        var n = 0
        for (i, e) in episodes.enumerated() {
            let cur = current?[i] ?? model.tokenLogprobs(e.sequence.tokens)
            for t in e.sequence.policyPositions {
                klSum += PPOObjective.kl(logp: Double(cur[t - 1]), ref: Double(refLogp[i][t - 1]))
                n += 1
            }
        }
        return n == 0 ? 0 : klSum / Double(n)
    }

    /// The token-mean loss of a batch under the current weights (no gradients): what one step
    /// minimises. For tests (finite differences) and reports.
    public func batchLoss(_ batch: [Int]) -> Double {
        var sum = 0.0
        var n = 0
        for i in batch {
            let lt = PPOObjective.evaluate(terms(i, logp: model.tokenLogprobs(episodes[i].sequence.tokens)), config: hyper.ppo)
            sum += lt.lossSum
            n += lt.tokens
        }
        return n == 0 ? 0 : sum / Double(n)
    }

    /// Accumulates the gradient of `batchLoss(batch)`; returns (loss, kl mean, clipped, tokens).
    @discardableResult
    public func accumulateGradients(_ batch: [Int]) -> (loss: Double, kl: Double, clipped: Int, tokens: Int) {
        let tokens = batch.reduce(0) { $0 + episodes[$1].sequence.policyTokenCount }
        guard tokens > 0 else { return (0, 0, 0, 0) }
        let scale = 1 / Double(tokens)
        var loss = 0.0
        var kl = 0.0
        var clipped = 0
        for i in batch {
            let s = episodes[i].sequence
            let tape = model.forward(s.tokens)
            let lp = model.logprobs(tape)
            let lt = PPOObjective.evaluate(terms(i, logp: lp), config: hyper.ppo)
            loss += lt.lossSum * scale
            kl += lt.klSum * scale
            clipped += lt.clipped
            var d = [Float](repeating: 0, count: lp.count)
            for (k, t) in s.policyPositions.enumerated() { d[t - 1] = Float(Double(lt.dLogp[k]) * scale) }
            model.backward(tape, dLogprobs: d)
        }
        return (loss, kl, clipped, tokens)
    }

    // MARK: State

    static func progressURL(_ dir: URL) -> URL { dir.appendingPathComponent("progress.json") }

    public func saveState(to dir: URL) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try model.saveState(to: dir.appendingPathComponent("model.state"))
        try optimizer.saveState(to: dir.appendingPathComponent("optimizer.state"))
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted]
        // Written last (atomically): a state dir is complete only when progress.json names it.
        try e.encode(progress).write(to: Self.progressURL(dir), options: .atomic)
    }

    /// Loads a saved state when `dir` holds one; returns whether it did.
    public func loadStateIfPresent(from dir: URL) throws -> Bool {
        let url = Self.progressURL(dir)
        guard FileManager.default.fileExists(atPath: url.path) else { return false }
        let saved = try JSONDecoder().decode(TrainingProgress.self, from: Data(contentsOf: url))
        guard saved.episodesDigest == progress.episodesDigest else {
            throw TrainerError.resumeMismatch("the saved state was trained on a different episode selection (filters or log changed)")
        }
        try model.loadState(from: dir.appendingPathComponent("model.state"))
        try optimizer.loadState(from: dir.appendingPathComponent("optimizer.state"))
        progress = saved
        return true
    }

    // MARK: Run

    /// Runs the remaining steps. `stateDirectory`: where resumable state goes (`saveEvery` and at
    /// the end). `onStep` reports each optimiser step.
    public func run(
        stateDirectory: URL?, klBefore: Double, measureKLAfter: Bool = true,
        onStep: (StepReport) -> Void = { _ in }
    ) throws -> TrainingResult {
        guard !episodes.isEmpty else { throw TrainerError.nothingToTrain }
        let perEpoch = stepsPerEpoch
        while progress.epoch < hyper.epochs {
            let order = self.order(epoch: progress.epoch)
            while progress.stepInEpoch < perEpoch {
                let start = progress.stepInEpoch * hyper.gradAccum
                let batch = Array(order[start..<min(start + hyper.gradAccum, order.count)])
                model.zeroGradients()
                let r = accumulateGradients(batch)
                let norm = model.clipGradients(maxNorm: Float(hyper.gradClip))
                let step = progress.globalStep + 1
                let lr = LearningRateSchedule.rate(step: step, base: hyper.learningRate, warmup: hyper.warmupSteps)
                optimizer.apply(learningRate: Float(lr))
                progress.globalStep = step
                progress.stepInEpoch += 1
                progress.lossSum += r.loss
                progress.policyTokens += r.tokens
                progress.clippedTokens += r.clipped
                onStep(
                    StepReport(
                        step: step, totalSteps: totalSteps, loss: r.loss, kl: r.kl,
                        clipFraction: r.tokens == 0 ? 0 : Double(r.clipped) / Double(r.tokens),
                        gradNorm: norm, learningRate: lr, tokens: r.tokens))
                if let dir = stateDirectory, hyper.saveEvery > 0, step % hyper.saveEvery == 0 { try saveState(to: dir) }
            }
            progress.epoch += 1
            progress.stepInEpoch = 0
        }
        if let dir = stateDirectory { try saveState(to: dir) }
        let klAfter = measureKLAfter ? meanKL() : .nan
        return TrainingResult(
            steps: progress.globalStep, policyTokens: progress.policyTokens,
            meanLoss: progress.globalStep == 0 ? 0 : progress.lossSum / Double(progress.globalStep),
            klBefore: klBefore, klAfter: klAfter,
            clipFraction: progress.policyTokens == 0 ? 0 : Double(progress.clippedTokens) / Double(progress.policyTokens))
    }
}
