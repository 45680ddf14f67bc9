// `gateway-train sft`: supervised fine-tuning on the policy's own tokens.
//
// Examples come from the traffic log (the same selection and filters as `train`, optionally only
// episodes whose protocol reward is at least `minReward`: rejection-sampling fine-tuning) and/or
// from demonstration episodes written as JSONL of protocol turns. The loss is the token-mean
// cross-entropy `-(1/N) sum log p(token)` over the mask-1 tokens of the `gradAccum` examples of one
// AdamW step; the output is the same checkpoint folder + manifest.json as `train`.

import EpisodeLog
import Foundation
import PolicyEngine
import PromptR1
import TrafficLog

/// One supervised sequence: token ids and the loss mask (1 on tokens the policy writes).
public struct SFTExample: Sendable, Equatable {
    public var id: String
    public var tokens: [Int32]
    public var mask: [UInt8]

    public init(id: String, tokens: [Int32], mask: [UInt8]) {
        precondition(tokens.count == mask.count)
        self.id = id
        self.tokens = tokens
        self.mask = mask
        // The first token is never predicted.
        if !self.mask.isEmpty { self.mask[0] = 0 }
    }

    /// Positions t (>= 1) with mask 1; token t is scored by logprobs[t-1].
    public var policyPositions: [Int] { tokens.count < 2 ? [] : (1..<tokens.count).filter { mask[$0] == 1 } }
    public var policyTokenCount: Int { policyPositions.count }
}

// MARK: - Demonstrations

/// One demonstration episode, one JSON object per line:
/// `{"question": String, "turns": [String], "responses": [String]}`.
/// `turns` are the policy's turns as it would write them: the first starts with `<think>`, later
/// ones start right after the injected `<think>\n` (protocol.md section 4); every turn but the last
/// is a call, the last one ends the episode (`<answer>...</answer>`). `responses[k]` is what the
/// upstream answered to call k (so `responses.count == turns.count - 1`).
public struct Demonstration: Codable, Sendable, Equatable {
    public var question: String
    public var turns: [String]
    public var responses: [String]

    public init(question: String, turns: [String], responses: [String]) {
        self.question = question
        self.turns = turns
        self.responses = responses
    }

    public enum Invalid: Error, CustomStringConvertible, Equatable {
        case unreadable(String)
        case line(Int, String)
        public var description: String {
            switch self {
            case .unreadable(let p): return "cannot read demonstrations \(p)"
            case .line(let n, let m): return "demonstrations line \(n): \(m)"
            }
        }
    }

    /// Checks the turns against the protocol's own parser: every turn but the last must be a
    /// well-formed call, the last must not be a call.
    public func validate() throws -> String? {
        if question.isEmpty { return "empty question" }
        if turns.isEmpty { return "no turns" }
        if responses.count != turns.count - 1 {
            return "\(turns.count) turns need \(turns.count - 1) responses (one per call), got \(responses.count)"
        }
        for (k, t) in turns.enumerated() {
            let p = PromptR1Parser.parseTurn(t)
            let last = k == turns.count - 1
            switch p {
            case .call: if last { return "the last turn is a call: it must end the episode (<answer>...</answer>)" }
            case .malformedCall(let e, _): return "turn \(k + 1) holds a malformed call (\(e.rawValue))"
            case .final: if !last { return "turn \(k + 1) is not a call (only the last turn may end the episode)" }
            }
        }
        return nil
    }

    /// The token sequence exactly as the gateway builds the policy's context, piece by piece:
    /// encode(first prompt), encode(turn 1), encode(injection of response 1), encode(turn 2), ...,
    /// with `<|im_end|>` after the last turn. Mask 1 on the turn tokens (and that `<|im_end|>`).
    public func example(id: String, tokenizer: Tokenizer, maxResultChars: Int = 2048) -> SFTExample {
        var tokens = tokenizer.encode(PromptR1Prompt.firstPrompt(question: question))
        var mask = [UInt8](repeating: 0, count: tokens.count)
        let imEnd = tokenizer.encode(PromptR1Tag.imEnd)
        for (k, t) in turns.enumerated() {
            var ids = tokenizer.encode(t)
            if k == turns.count - 1 { ids += imEnd }
            tokens += ids
            mask += [UInt8](repeating: 1, count: ids.count)
            if k < responses.count {
                let inj = tokenizer.encode(
                    PromptR1Prompt.injection(upstreamAnswer: PythonString.strip(responses[k]), maxChars: maxResultChars))
                tokens += inj
                mask += [UInt8](repeating: 0, count: inj.count)
            }
        }
        return SFTExample(id: id, tokens: tokens, mask: mask)
    }

    public static func load(_ path: String) throws -> [Demonstration] {
        guard let data = FileManager.default.contents(atPath: path) else { throw Invalid.unreadable(path) }
        var out: [Demonstration] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            let d: Demonstration
            do { d = try JSONDecoder().decode(Demonstration.self, from: Data(t.utf8)) } catch {
                throw Invalid.line(n + 1, "expected {\"question\": String, \"turns\": [String], \"responses\": [String]}: \(error)")
            }
            if let problem = try d.validate() { throw Invalid.line(n + 1, problem) }
            out.append(d)
        }
        return out
    }

    public static func write(_ demos: [Demonstration], to url: URL) throws {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var text = ""
        for d in demos { text += String(decoding: try e.encode(d), as: UTF8.self) + "\n" }
        try Data(text.utf8).write(to: url, options: .atomic)
    }
}

// MARK: - The loop

public struct SFTHyperparameters: Sendable, Equatable, Codable {
    public var learningRate: Double = 1e-5
    public var epochs: Int = 1
    /// Examples whose gradients are accumulated into one optimiser step.
    public var gradAccum: Int = 8
    public var warmupSteps: Int = 0
    public var gradClip: Double = 1.0
    public var seed: UInt64 = 0
    public init() {}
}

public struct SFTStepReport: Sendable {
    public var step: Int
    public var totalSteps: Int
    /// Token-mean cross-entropy of the step's examples (before the update).
    public var loss: Double
    public var gradNorm: Float
    public var learningRate: Double
    public var tokens: Int
}

public struct SFTResult: Sendable {
    public var steps: Int
    public var policyTokens: Int
    public var meanLoss: Double
    public var lastLoss: Double
    public var klBefore: Double
    public var klAfter: Double
}

/// Cross-entropy on the mask-1 tokens, written against the same small protocols as the PPO loop
/// so that the gradients are checked with an exact model in the tests.
public final class SFTTrainer<Model: PolicyGradientModel, Optimizer: PolicyOptimizer> {
    public let model: Model
    public let optimizer: Optimizer
    public let hyper: SFTHyperparameters
    public let examples: [SFTExample]
    public private(set) var globalStep = 0

    public init(model: Model, optimizer: Optimizer, examples: [SFTExample], hyper: SFTHyperparameters) {
        self.model = model
        self.optimizer = optimizer
        self.examples = examples
        self.hyper = hyper
    }

    public var stepsPerEpoch: Int { (examples.count + hyper.gradAccum - 1) / max(1, hyper.gradAccum) }
    public var totalSteps: Int { stepsPerEpoch * hyper.epochs }

    /// Example order of an epoch: a seeded shuffle.
    public func order(epoch: Int) -> [Int] {
        var idx = Array(examples.indices)
        var rng = Xoshiro256(seed: hyper.seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(epoch) &+ 1)
        if idx.count > 1 {
            for i in stride(from: idx.count - 1, to: 0, by: -1) {
                let j = Int(rng.next() % UInt64(i + 1))
                idx.swapAt(i, j)
            }
        }
        return idx
    }

    /// The token-mean cross-entropy of a batch under the current weights (no gradients).
    public func batchLoss(_ batch: [Int]) -> Double {
        var sum = 0.0
        var n = 0
        for i in batch {
            let lp = model.tokenLogprobs(examples[i].tokens)
            for t in examples[i].policyPositions {
                sum -= Double(lp[t - 1])
                n += 1
            }
        }
        return n == 0 ? 0 : sum / Double(n)
    }

    /// Accumulates the gradient of `batchLoss(batch)`; returns (loss, tokens).
    @discardableResult
    public func accumulateGradients(_ batch: [Int]) -> (loss: Double, tokens: Int) {
        let tokens = batch.reduce(0) { $0 + examples[$1].policyTokenCount }
        guard tokens > 0 else { return (0, 0) }
        let scale = 1 / Double(tokens)
        var loss = 0.0
        for i in batch {
            let e = examples[i]
            let tape = model.forward(e.tokens)
            let lp = model.logprobs(tape)
            var d = [Float](repeating: 0, count: lp.count)
            for t in e.policyPositions {
                loss -= Double(lp[t - 1]) * scale
                d[t - 1] = Float(-scale)
            }
            model.backward(tape, dLogprobs: d)
        }
        return (loss, tokens)
    }

    /// Token-mean k3 KL estimate `exp(ref - logp) - (ref - logp) - 1` of the current weights to
    /// the reference over the examples' mask-1 tokens.
    public func meanKL() -> Double {
        var sum = 0.0
        var n = 0
        for e in examples {
            let cur = model.tokenLogprobs(e.tokens)
            let ref = model.referenceLogprobs(e.tokens)
            for t in e.policyPositions {
                sum += PPOObjective.kl(logp: Double(cur[t - 1]), ref: Double(ref[t - 1]))
                n += 1
            }
        }
        return n == 0 ? 0 : sum / Double(n)
    }

    public func run(measureKLAfter: Bool = true, onStep: (SFTStepReport) -> Void = { _ in }) throws -> SFTResult {
        guard !examples.isEmpty else { throw TrainerError.nothingToTrain }
        var lossSum = 0.0
        var last = 0.0
        var tokens = 0
        for epoch in 0..<hyper.epochs {
            let order = self.order(epoch: epoch)
            for s in 0..<stepsPerEpoch {
                let batch = Array(order[(s * hyper.gradAccum)..<min((s + 1) * hyper.gradAccum, order.count)])
                model.zeroGradients()
                let r = accumulateGradients(batch)
                let norm = model.clipGradients(maxNorm: Float(hyper.gradClip))
                globalStep += 1
                let lr = LearningRateSchedule.rate(step: globalStep, base: hyper.learningRate, warmup: hyper.warmupSteps)
                optimizer.apply(learningRate: Float(lr))
                lossSum += r.loss
                last = r.loss
                tokens += r.tokens
                onStep(
                    SFTStepReport(
                        step: globalStep, totalSteps: totalSteps, loss: r.loss, gradNorm: norm, learningRate: lr, tokens: r.tokens))
            }
        }
        return SFTResult(
            steps: globalStep, policyTokens: tokens, meanLoss: globalStep == 0 ? 0 : lossSum / Double(globalStep),
            lastLoss: last, klBefore: 0, klAfter: measureKLAfter ? meanKL() : .nan)
    }
}

// MARK: - The job (what the CLI runs)

public struct SFTJobConfig: Sendable {
    public var base: URL
    public var out: URL
    public var lora: LoRAConfig?
    public var hyper = SFTHyperparameters()
    public var weightDecay: Double = 0.0
    public var activationBudgetBytes = 1 << 30
    /// Logged episodes (nil: none from the log).
    public var filter: EpisodeFilter? = EpisodeFilter()
    /// Rejection sampling: only logged episodes whose protocol reward is >= this.
    public var minReward: Double?
    /// Demonstration files (JSONL of protocol turns).
    public var demonstrations: [URL] = []
    public var maxResultChars = 2048
    public init(base: URL, out: URL) {
        self.base = base
        self.out = out
    }
}

public struct SFTJobResult: Sendable {
    public var manifest: TrainManifest
    public var loggedExamples: Int
    public var demonstrationExamples: Int
    public var rejected: Int
    public var skipped: Int
    public var lastLoss: Double
}

public enum SFTJob {
    /// Logged episodes chosen as `train` chooses them, minus those below `minReward`.
    public static func loggedExamples(
        database: TrafficDatabase, filter: EpisodeFilter, minReward: Double?,
        tokenizer: Tokenizer?
    ) throws -> (selection: Selection, kept: [ScoredEpisode], rejected: Int) {
        let selection = try EpisodeSelector.select(
            database: database, filter: filter,
            formatFallback: tokenizer.map { tok in
                { seq in
                    let text = tok.decode(seq.tokens)
                    return PromptR1Reward.formatScore(text.hasSuffix(PromptR1Tag.imEnd) ? text : text + PromptR1Tag.imEnd)
                }
            })
        let kept = selection.episodes.filter { e in minReward.map { e.reward.reward >= $0 - 1e-12 } ?? true }
        return (selection, kept, selection.episodes.count - kept.count)
    }

    public static func run(
        _ c: SFTJobConfig, database: TrafficDatabase?, onStep: (SFTStepReport) -> Void = { _ in },
        log: (String) -> Void = { _ in }
    ) throws -> SFTJobResult {
        let t0 = ContinuousClock.now
        let parentSHA = try CheckpointHash.weightsSHA256(directory: c.base)
        let tokenizer = try Tokenizer(directory: c.base)
        var examples: [SFTExample] = []
        var episodeIDs: [String] = []
        var selection: Selection?
        var kept: [ScoredEpisode] = []
        var rejected = 0
        if let filter = c.filter, let database {
            let l = try loggedExamples(database: database, filter: filter, minReward: c.minReward, tokenizer: tokenizer)
            selection = l.selection
            kept = l.kept
            rejected = l.rejected
            for e in kept {
                examples.append(SFTExample(id: e.sequence.episodeID, tokens: e.sequence.tokens, mask: e.sequence.mask))
                episodeIDs.append(e.sequence.episodeID)
            }
            log(
                "logged episodes: \(l.selection.episodes.count) selected, \(kept.count) kept, \(rejected) below --min-reward, \(l.selection.skipped.count) skipped"
            )
        }
        var demoCount = 0
        for url in c.demonstrations {
            let demos = try Demonstration.load(url.path)
            for (i, d) in demos.enumerated() {
                examples.append(
                    d.example(id: "demo:\(url.lastPathComponent):\(i + 1)", tokenizer: tokenizer, maxResultChars: c.maxResultChars))
            }
            demoCount += demos.count
            log("demonstrations: \(demos.count) from \(url.path)")
        }
        guard !examples.isEmpty else { throw TrainerError.nothingToTrain }
        let mode: TrainingMode = c.lora.map { .lora($0) } ?? .full
        let model = try TrainableModel(directory: c.base, mode: mode, seed: c.hyper.seed)
        model.activationBudgetBytes = c.activationBudgetBytes
        let reference: TrainableModel? = c.lora == nil ? try TrainableModel(directory: c.base, mode: .frozen, seed: c.hyper.seed) : nil
        let adam = AdamW(model: model, config: AdamWConfig(lr: Float(c.hyper.learningRate), weightDecay: Float(c.weightDecay)))
        let trainer = SFTTrainer(
            model: EngineTrainable(model: model, reference: reference), optimizer: EngineAdamW(adam),
            examples: examples, hyper: c.hyper)
        let result = try trainer.run(onStep: onStep)
        try model.exportCheckpoint(to: c.out, sourceDirectory: c.base)
        let sha = try CheckpointHash.weightsSHA256(directory: c.out)
        let d = ContinuousClock.now - t0
        let hyper = TrainManifest.Hyper(
            mode: c.lora == nil ? "full" : "lora", lora_rank: c.lora?.rank, lora_alpha: c.lora?.alpha,
            lora_targets: c.lora?.targetModules, learning_rate: c.hyper.learningRate,
            weight_decay: c.weightDecay, epochs: c.hyper.epochs, grad_accum: c.hyper.gradAccum,
            warmup_steps: c.hyper.warmupSteps, grad_clip: c.hyper.gradClip,
            ppo_clip: 0, kl_coef: 0, seed: c.hyper.seed, behaviour: "none")
        let meanReward = kept.isEmpty ? 0 : kept.reduce(0) { $0 + $1.reward.reward } / Double(kept.count)
        let meanFormat = kept.isEmpty ? 0 : kept.reduce(0) { $0 + $1.reward.format } / Double(kept.count)
        var manifest = TrainManifest(
            parent_version: CheckpointHash.versionID(sha256: parentSHA), parent_sha256: parentSHA, parent_path: c.base.path,
            version: CheckpointHash.versionID(sha256: sha), sha256: sha, created_at: ISO8601DateFormatter().string(from: Date()),
            hyperparameters: hyper, filters: c.filter ?? EpisodeFilter(), episode_count: examples.count, episode_ids: episodeIDs,
            groups: selection?.groups ?? 0, lone_episodes: selection?.loneEpisodes ?? 0,
            policy_tokens: examples.reduce(0) { $0 + $1.policyTokenCount },
            mean_reward: meanReward, mean_format: meanFormat,
            kl_before: result.klBefore, kl_after: result.klAfter, mean_loss: result.meanLoss, clip_fraction: 0,
            steps: result.steps, resumed: false,
            wall_seconds: Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18,
            trainable_parameters: model.trainableParameterCount)
        manifest.objective = "sft"
        manifest.sft = TrainManifest.SFTInfo(
            min_reward: c.minReward, logged_episodes: kept.count, rejected_episodes: rejected,
            demonstrations: demoCount, demonstration_files: c.demonstrations.map(\.path),
            last_loss: result.lastLoss)
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try e.encode(manifest).write(to: c.out.appendingPathComponent("manifest.json"), options: .atomic)
        return SFTJobResult(
            manifest: manifest, loggedExamples: kept.count, demonstrationExamples: demoCount, rejected: rejected,
            skipped: selection?.skipped.count ?? 0, lastLoss: result.lastLoss)
    }
}
