// `gateway-train train`: selection -> PPOTrainer over PolicyEngine's TrainableModel + AdamW ->
// a complete Hugging Face checkpoint folder with manifest.json, optionally pushed to a running
// gateway's admin endpoint.

import AsyncHTTPClient
import EpisodeLog
import Foundation
import NIOCore
import PolicyEngine
import PromptR1
import TrafficLog

/// Binds the loop to the engine's trainable model. For full fine-tuning the KL reference is a
/// separate frozen copy of the starting weights; with LoRA it is the same model, adapters off.
public final class EngineTrainable: PolicyGradientModel {
    public let model: TrainableModel
    let reference: TrainableModel?

    public init(model: TrainableModel, reference: TrainableModel?) {
        self.model = model
        self.reference = reference
    }

    public func forward(_ tokens: [Int32]) -> ForwardTape { model.forward(tokens) }
    public func logprobs(_ tape: ForwardTape) -> [Float] { tape.logprobs }
    public func backward(_ tape: ForwardTape, dLogprobs: [Float]) { model.backward(tape, dLogprobs: dLogprobs) }
    public func tokenLogprobs(_ tokens: [Int32]) -> [Float] { model.tokenLogprobs(tokens) }
    public func referenceLogprobs(_ tokens: [Int32]) -> [Float] {
        reference?.tokenLogprobs(tokens) ?? model.baseLogprobs(tokens)
    }
    public func zeroGradients() { model.zeroGradients() }
    public func clipGradients(maxNorm: Float) -> Float { model.clipGradients(maxNorm: maxNorm) }
    public func saveState(to file: URL) throws { try model.saveTrainableState(to: file) }
    public func loadState(from file: URL) throws { try model.loadTrainableState(from: file) }
}

public final class EngineAdamW: PolicyOptimizer {
    public let adam: AdamW
    public init(_ adam: AdamW) { self.adam = adam }
    public func apply(learningRate: Float) { adam.update(learningRate: learningRate) }
    public func saveState(to file: URL) throws { try adam.save(to: file) }
    public func loadState(from file: URL) throws { try adam.load(from: file) }
}

public struct TrainJobConfig: Sendable {
    public var base: URL
    public var out: URL
    public var lora: LoRAConfig?  // nil: full fine-tuning
    public var hyper = TrainingHyperparameters()
    public var weightDecay: Double = 0.01
    /// Bytes of MLP activations the tape may keep so backward skips recomputing them
    /// (`TrainableModel.activationBudgetBytes`); 0: pure activation checkpointing.
    public var activationBudgetBytes = 1 << 30
    public var filter = EpisodeFilter()
    public var resume = false
    /// Train even when every advantage is 0 (otherwise `TrainerError.noSignal`).
    public var allowNoSignal = false
    /// Where resumable state lives (default `<out>.state`).
    public var stateDirectory: URL?
    public init(base: URL, out: URL) {
        self.base = base
        self.out = out
    }
    public var resolvedStateDirectory: URL {
        stateDirectory ?? out.deletingLastPathComponent().appendingPathComponent(out.lastPathComponent + ".train-state")
    }
}

public struct TrainManifest: Codable, Sendable {
    public struct Hyper: Codable, Sendable {
        public var mode: String
        public var lora_rank: Int?
        public var lora_alpha: Float?
        public var lora_targets: [String]?
        public var learning_rate: Double
        public var weight_decay: Double
        public var epochs: Int
        public var grad_accum: Int
        public var warmup_steps: Int
        public var grad_clip: Double
        public var ppo_clip: Double
        public var kl_coef: Double
        public var seed: UInt64
        /// PPO denominator: "logged" behaviour log-probs or "base" (recomputed at the start).
        public var behaviour: String
    }
    public var format = "prompt-r1-gateway-train/1"
    public var parent_version: String
    public var parent_sha256: String
    public var parent_path: String
    public var version: String
    public var sha256: String
    public var created_at: String
    public var hyperparameters: Hyper
    public var filters: EpisodeFilter
    public var episode_count: Int
    public var episode_ids: [String]
    public var groups: Int
    public var lone_episodes: Int
    public var policy_tokens: Int
    public var mean_reward: Double
    public var mean_format: Double
    public var kl_before: Double
    public var kl_after: Double
    public var mean_loss: Double
    public var clip_fraction: Double
    public var steps: Int
    public var resumed: Bool
    public var wall_seconds: Double
    public var trainable_parameters: Int
    /// `sft` for `gateway-train sft`; absent for `train` (GRPO/PPO).
    public var objective: String?
    /// What `sft` trained on (absent for `train`).
    public var sft: SFTInfo?
    public struct SFTInfo: Codable, Sendable {
        public var min_reward: Double?
        public var logged_episodes: Int
        public var rejected_episodes: Int
        public var demonstrations: Int
        public var demonstration_files: [String]
        public var last_loss: Double
    }
}

public struct TrainJobResult: Sendable {
    public var manifest: TrainManifest
    public var selection: Selection
}

public enum TrainJob {
    public static func run(
        _ c: TrainJobConfig, database: any LogStore, tokenizer: Tokenizer? = nil,
        onStep: (StepReport) -> Void = { _ in }, log: (String) -> Void = { _ in }
    ) throws -> TrainJobResult {
        let t0 = ContinuousClock.now
        let parentSHA = try CheckpointHash.weightsSHA256(directory: c.base)
        let selection = try EpisodeSelector.select(
            database: database, filter: c.filter,
            formatFallback: tokenizer.map { tok in
                { seq in
                    let text = tok.decode(seq.tokens)
                    return PromptR1Reward.formatScore(text.hasSuffix(PromptR1Tag.imEnd) ? text : text + PromptR1Tag.imEnd)
                }
            })
        guard !selection.episodes.isEmpty else { throw TrainerError.nothingToTrain }
        if selection.modelLogprobsOfSampled > 0 && !c.hyper.recomputeBehaviour {
            throw TrainerError.modelLogprobsOfSampledEpisodes(selection.modelLogprobsOfSampled)
        }
        log(
            "selected \(selection.episodes.count) episodes (\(selection.groups) groups, \(selection.loneEpisodes) lone, \(selection.skipped.count) skipped, \(selection.redacted) of them redacted), mean reward \(Table.num(selection.meanReward)); advantage 0 in \(selection.zeroAdvantageGroups) of \(selection.groups) groups and \(selection.zeroAdvantageLone) of \(selection.loneEpisodes) lone episodes"
        )
        if let why = selection.noSignalReason {
            guard c.allowNoSignal else { throw TrainerError.noSignal(why) }
            log("warning: nothing to learn from: \(why); training anyway (--allow-no-signal): only the KL term can move the weights")
        }
        let mode: TrainingMode = c.lora.map { .lora($0) } ?? .full
        let model = try TrainableModel(directory: c.base, mode: mode, seed: c.hyper.seed)
        model.activationBudgetBytes = c.activationBudgetBytes
        let reference: TrainableModel? = c.lora == nil ? try TrainableModel(directory: c.base, mode: .frozen, seed: c.hyper.seed) : nil
        let adam = AdamW(model: model, config: AdamWConfig(lr: Float(c.hyper.learningRate), weightDecay: Float(c.weightDecay)))
        let trainer = PPOTrainer(
            model: EngineTrainable(model: model, reference: reference), optimizer: EngineAdamW(adam),
            episodes: selection.episodes, hyper: c.hyper)
        let stateDir = c.resolvedStateDirectory
        var resumed = false
        if c.resume {
            resumed = try trainer.loadStateIfPresent(from: stateDir)
            if resumed { log("resumed from \(stateDir.path) at step \(trainer.progress.globalStep)") }
        } else if FileManager.default.fileExists(atPath: stateDir.appendingPathComponent("progress.json").path) {
            throw TrainerError.resumeMismatch(
                "\(stateDir.path) holds the state of an earlier run: pass --resume to continue it or delete it")
        }
        // KL "before" is measured against the starting model, i.e. before any update (a resumed
        // run reports the KL at the point it resumed).
        // A fresh run starts from the reference itself (full: the same weights; LoRA: B = 0), so
        // its KL is 0 without measuring.
        let klBefore = trainer.prepare(measureKL: resumed)
        let result = try trainer.run(stateDirectory: stateDir, klBefore: klBefore, onStep: onStep)
        try model.exportCheckpoint(to: c.out, sourceDirectory: c.base)
        let sha = try CheckpointHash.weightsSHA256(directory: c.out)
        let d = ContinuousClock.now - t0
        let iso = ISO8601DateFormatter()
        let hyper = TrainManifest.Hyper(
            mode: c.lora == nil ? "full" : "lora", lora_rank: c.lora?.rank, lora_alpha: c.lora?.alpha,
            lora_targets: c.lora?.targetModules, learning_rate: c.hyper.learningRate,
            weight_decay: c.weightDecay, epochs: c.hyper.epochs, grad_accum: c.hyper.gradAccum,
            warmup_steps: c.hyper.warmupSteps, grad_clip: c.hyper.gradClip,
            ppo_clip: c.hyper.ppo.clip, kl_coef: c.hyper.ppo.klCoef, seed: c.hyper.seed,
            behaviour: c.hyper.recomputeBehaviour ? "base" : "logged")
        let eps = selection.episodes
        let manifest = TrainManifest(
            parent_version: CheckpointHash.versionID(sha256: parentSHA), parent_sha256: parentSHA, parent_path: c.base.path,
            version: CheckpointHash.versionID(sha256: sha), sha256: sha, created_at: iso.string(from: Date()),
            hyperparameters: hyper, filters: c.filter, episode_count: eps.count, episode_ids: eps.map(\.sequence.episodeID),
            groups: selection.groups, lone_episodes: selection.loneEpisodes,
            policy_tokens: eps.reduce(0) { $0 + $1.sequence.policyTokenCount },
            mean_reward: selection.meanReward, mean_format: eps.reduce(0) { $0 + $1.reward.format } / Double(eps.count),
            kl_before: result.klBefore, kl_after: result.klAfter, mean_loss: result.meanLoss, clip_fraction: result.clipFraction,
            steps: result.steps, resumed: resumed,
            wall_seconds: Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18,
            trainable_parameters: model.trainableParameterCount)
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        try e.encode(manifest).write(to: c.out.appendingPathComponent("manifest.json"), options: .atomic)
        return TrainJobResult(manifest: manifest, selection: selection)
    }

    public struct PushError: Error, CustomStringConvertible {
        public var status: Int
        public var body: String
        public var description: String { "the gateway answered \(status): \(body.prefix(500))" }
    }

    /// POST `{"path": path}` to `<adminURL>/admin/policy` with the admin token; returns the reply.
    public static func push(adminURL: String, path: String, token: String?) async throws -> String {
        var base = adminURL
        while base.hasSuffix("/") { base.removeLast() }
        if !base.hasSuffix("/admin/policy") { base += "/admin/policy" }
        var req = HTTPClientRequest(url: base)
        req.method = .POST
        req.headers.add(name: "content-type", value: "application/json")
        if let token { req.headers.add(name: "authorization", value: "Bearer " + token) }
        let body = try JSONSerialization.data(withJSONObject: ["path": path])
        req.body = .bytes(ByteBuffer(bytes: body))
        let client = HTTPClient(eventLoopGroupProvider: .singleton)
        do {
            let resp = try await client.execute(req, timeout: .seconds(600))
            let bytes = try await resp.body.collect(upTo: 1 << 20)
            try await client.shutdown()
            let text = String(buffer: bytes)
            guard (200..<300).contains(Int(resp.status.code)) else { throw PushError(status: Int(resp.status.code), body: text) }
            return text
        } catch {
            try? await client.shutdown()
            throw error
        }
    }
}
