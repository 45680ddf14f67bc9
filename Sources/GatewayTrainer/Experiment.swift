// `gateway-train experiment`: the loop a user runs, end to end, from a config file:
//   base policy -> optional `sft` warm start on demonstrations -> K x (rollout G episodes per
//   training question into a SQLite log -> GRPO `train` on the new episodes -> `eval` on the
//   held-out questions), once with the configured learning rate ("learn") and once with learning
//   rate 0 ("control"), through the same Rollout / TrainJob / SFTJob / Evaluator code the CLI
//   commands run. Writes report.json and report.svg.

import EpisodeLog
import Foundation
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog

public enum ExperimentError: Error, CustomStringConvertible {
    case invalidConfig(String)
    public var description: String {
        switch self {
        case .invalidConfig(let m): return "experiment config: \(m)"
        }
    }
}

public struct ExperimentConfig: Codable, Sendable {
    public struct WarmStart: Codable, Sendable {
        public var demoStyles: [LookupWorld.DemoStyle]
        public var epochs: Int = 1
        public var learningRate: Double
        public var gradAccum: Int = 4
        public var warmup: Int = 0
        public var gradClip: Double = 1.0
        public var weightDecay: Double = 0.0
        public var full: Bool = true
        public var loraRank: Int = 8
        public var loraAlpha: Float = 16
        public var loraTargets: [String] = ["q_proj", "v_proj"]
        enum CodingKeys: String, CodingKey {
            case epochs, warmup, full
            case demoStyles = "demo_styles"
            case learningRate = "learning_rate"
            case gradAccum = "grad_accum"
            case gradClip = "grad_clip"
            case weightDecay = "weight_decay"
            case loraRank = "lora_rank"
            case loraAlpha = "lora_alpha"
            case loraTargets = "lora_targets"
        }
        public init(from d: any Decoder) throws {
            let c = try d.container(keyedBy: CodingKeys.self)
            demoStyles = try c.decode([LookupWorld.DemoStyle].self, forKey: .demoStyles)
            learningRate = try c.decode(Double.self, forKey: .learningRate)
            epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? epochs
            gradAccum = try c.decodeIfPresent(Int.self, forKey: .gradAccum) ?? gradAccum
            warmup = try c.decodeIfPresent(Int.self, forKey: .warmup) ?? warmup
            gradClip = try c.decodeIfPresent(Double.self, forKey: .gradClip) ?? gradClip
            weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? weightDecay
            full = try c.decodeIfPresent(Bool.self, forKey: .full) ?? full
            loraRank = try c.decodeIfPresent(Int.self, forKey: .loraRank) ?? loraRank
            loraAlpha = try c.decodeIfPresent(Float.self, forKey: .loraAlpha) ?? loraAlpha
            loraTargets = try c.decodeIfPresent([String].self, forKey: .loraTargets) ?? loraTargets
        }
    }

    public struct RolloutSettings: Codable, Sendable {
        public var groupSize: Int = 4
        public var temperature: Float = 1.0
        public var topP: Float = 1.0
        public var maxTurns: Int = 3
        public var maxTokensPerTurn: Int = 120
        public var concurrency: Int = 1
        enum CodingKeys: String, CodingKey {
            case temperature, concurrency
            case groupSize = "group_size"
            case topP = "top_p"
            case maxTurns = "max_turns"
            case maxTokensPerTurn = "max_tokens_per_turn"
        }
        public init() {}
        public init(from d: any Decoder) throws {
            let c = try d.container(keyedBy: CodingKeys.self)
            groupSize = try c.decodeIfPresent(Int.self, forKey: .groupSize) ?? groupSize
            temperature = try c.decodeIfPresent(Float.self, forKey: .temperature) ?? temperature
            topP = try c.decodeIfPresent(Float.self, forKey: .topP) ?? topP
            maxTurns = try c.decodeIfPresent(Int.self, forKey: .maxTurns) ?? maxTurns
            maxTokensPerTurn = try c.decodeIfPresent(Int.self, forKey: .maxTokensPerTurn) ?? maxTokensPerTurn
            concurrency = try c.decodeIfPresent(Int.self, forKey: .concurrency) ?? concurrency
        }
    }

    public struct TrainSettings: Codable, Sendable {
        public var learningRate: Double
        public var epochs: Int = 1
        public var gradAccum: Int = 4
        public var warmup: Int = 0
        public var gradClip: Double = 1.0
        public var klCoef: Double = 0.001
        public var clip: Double = 0.2
        public var weightDecay: Double = 0.01
        public var full: Bool = true
        public var loraRank: Int = 8
        public var loraAlpha: Float = 16
        public var loraTargets: [String] = ["q_proj", "v_proj"]
        enum CodingKeys: String, CodingKey {
            case epochs, warmup, clip, full
            case learningRate = "learning_rate"
            case gradAccum = "grad_accum"
            case gradClip = "grad_clip"
            case klCoef = "kl_coef"
            case weightDecay = "weight_decay"
            case loraRank = "lora_rank"
            case loraAlpha = "lora_alpha"
            case loraTargets = "lora_targets"
        }
        public init(from d: any Decoder) throws {
            let c = try d.container(keyedBy: CodingKeys.self)
            learningRate = try c.decode(Double.self, forKey: .learningRate)
            epochs = try c.decodeIfPresent(Int.self, forKey: .epochs) ?? epochs
            gradAccum = try c.decodeIfPresent(Int.self, forKey: .gradAccum) ?? gradAccum
            warmup = try c.decodeIfPresent(Int.self, forKey: .warmup) ?? warmup
            gradClip = try c.decodeIfPresent(Double.self, forKey: .gradClip) ?? gradClip
            klCoef = try c.decodeIfPresent(Double.self, forKey: .klCoef) ?? klCoef
            clip = try c.decodeIfPresent(Double.self, forKey: .clip) ?? clip
            weightDecay = try c.decodeIfPresent(Double.self, forKey: .weightDecay) ?? weightDecay
            full = try c.decodeIfPresent(Bool.self, forKey: .full) ?? full
            loraRank = try c.decodeIfPresent(Int.self, forKey: .loraRank) ?? loraRank
            loraAlpha = try c.decodeIfPresent(Float.self, forKey: .loraAlpha) ?? loraAlpha
            loraTargets = try c.decodeIfPresent([String].self, forKey: .loraTargets) ?? loraTargets
        }
    }

    public struct EvalSettings: Codable, Sendable {
        /// 0: greedy (one pass is then enough).
        public var temperature: Float = 1.0
        /// Sampled passes over the held-out set (each with its own seed, the same at every evaluation).
        public var samples: Int = 4
        public var maxTokensPerTurn: Int = 120
        public var maxTurns: Int = 3
        public var concurrency: Int = 1
        /// Also ask the upstream alone with the bare question (pass 0 only).
        public var baseline: Bool = true
        enum CodingKeys: String, CodingKey {
            case temperature, samples, concurrency, baseline
            case maxTokensPerTurn = "max_tokens_per_turn"
            case maxTurns = "max_turns"
        }
        public init() {}
        public init(from d: any Decoder) throws {
            let c = try d.container(keyedBy: CodingKeys.self)
            temperature = try c.decodeIfPresent(Float.self, forKey: .temperature) ?? temperature
            samples = try c.decodeIfPresent(Int.self, forKey: .samples) ?? samples
            maxTokensPerTurn = try c.decodeIfPresent(Int.self, forKey: .maxTokensPerTurn) ?? maxTokensPerTurn
            maxTurns = try c.decodeIfPresent(Int.self, forKey: .maxTurns) ?? maxTurns
            concurrency = try c.decodeIfPresent(Int.self, forKey: .concurrency) ?? concurrency
            baseline = try c.decodeIfPresent(Bool.self, forKey: .baseline) ?? baseline
        }
    }

    public var description: String?
    /// Starting checkpoint folder, relative to the config file's folder.
    public var base: String
    public var world: LookupWorld
    public var warmStart: WarmStart?
    public var iterations: Int
    public var rollout = RolloutSettings()
    public var train: TrainSettings
    public var eval = EvalSettings()
    public var upstreamModel: String = "literal-upstream"

    enum CodingKeys: String, CodingKey {
        case description, base, world, iterations, rollout, train, eval
        case warmStart = "warm_start"
        case upstreamModel = "upstream_model"
    }

    public init(from d: any Decoder) throws {
        let c = try d.container(keyedBy: CodingKeys.self)
        description = try c.decodeIfPresent(String.self, forKey: .description)
        base = try c.decode(String.self, forKey: .base)
        world = try c.decode(LookupWorld.self, forKey: .world)
        warmStart = try c.decodeIfPresent(WarmStart.self, forKey: .warmStart)
        iterations = try c.decode(Int.self, forKey: .iterations)
        rollout = try c.decodeIfPresent(RolloutSettings.self, forKey: .rollout) ?? rollout
        train = try c.decode(TrainSettings.self, forKey: .train)
        eval = try c.decodeIfPresent(EvalSettings.self, forKey: .eval) ?? eval
        upstreamModel = try c.decodeIfPresent(String.self, forKey: .upstreamModel) ?? upstreamModel
    }

    public static func load(_ url: URL) throws -> ExperimentConfig {
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw ExperimentError.invalidConfig("cannot read \(url.path)")
        }
        let c: ExperimentConfig
        do { c = try JSONDecoder().decode(ExperimentConfig.self, from: data) } catch {
            throw ExperimentError.invalidConfig("\(url.path): \(error)")
        }
        try c.validate()
        return c
    }

    public func validate() throws {
        try world.validate()
        if iterations < 1 { throw ExperimentError.invalidConfig("iterations must be at least 1") }
        if rollout.groupSize < 2 { throw ExperimentError.invalidConfig("rollout.group_size must be at least 2 (GRPO groups)") }
        if eval.samples < 1 { throw ExperimentError.invalidConfig("eval.samples must be at least 1") }
        if train.learningRate < 0 { throw ExperimentError.invalidConfig("train.learning_rate must not be negative") }
    }
}

/// One evaluation of one run. The first of each run is before any GRPO step.
public struct ExperimentPoint: Codable, Sendable {
    public var iteration: Int
    public var heldout_em: Double
    public var heldout_f1: Double
    /// Protocol reward on the held-out episodes.
    public var mean_reward: Double
    public var heldout_format: Double
    /// Token-mean k3 estimate of KL(policy || start) over the policy tokens of the episodes the
    /// last GRPO step trained on (0 before training).
    public var kl: Double
    /// Seconds since the run started (cumulative; the warm start is not included).
    public var wall_seconds: Double
    /// The rollout that produced the training episodes of this iteration (nil at iteration 0).
    public var train_episodes: Int?
    public var train_mean_reward: Double?
    public var train_em: Double?
    public var train_steps: Int?
    /// Of that rollout's episodes, the fraction whose first prompt states the question's needed
    /// phrase ("the <property> of the <subject>", the style the upstream answers), and the
    /// fraction whose first prompt names the question's subject at all: what the policy reads
    /// from its question, and which style RL selects.
    public var train_restating: Double?
    public var train_naming_subject: Double?
    public var upstream_alone_em: Double?
    public var policy_version: String
}

public struct ExperimentReport: Codable, Sendable {
    public var config: String
    public var seed: UInt64
    public var learning_rate: Double
    public var warm_start: TrainManifest?
    public var heldout_questions: Int
    public var train_questions: Int
    public var runs: [String: [ExperimentPoint]]
    public var wall_seconds: Double
}

public enum Experiment {
    static func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18 }

    /// Runs the experiment; `upstream` answers as `config.world.answer(prompt:)` does (the CLI
    /// serves it over loopback HTTP).
    public static func run(
        config: ExperimentConfig, configDirectory: URL, configName: String, seed: UInt64, out: URL,
        upstream: any UpstreamAnswering, log: @escaping @Sendable (String) -> Void = { _ in }
    ) async throws -> ExperimentReport {
        let t0 = ContinuousClock.now
        let fm = FileManager.default
        try fm.createDirectory(at: out, withIntermediateDirectories: true)
        let baseURL = URL(fileURLWithPath: config.base, relativeTo: configDirectory).standardizedFileURL
        let train = config.world.items(heldout: false)
        let heldout = config.world.items(heldout: true)
        precondition(Set(train.map(\.question)).isDisjoint(with: heldout.map(\.question)))
        func writeDataset(_ items: [DatasetItem], _ name: String) throws {
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let text = try items.map { String(decoding: try e.encode($0), as: UTF8.self) }.joined(separator: "\n") + "\n"
            try Data(text.utf8).write(to: out.appendingPathComponent(name), options: .atomic)
        }
        try writeDataset(train, "train.jsonl")
        try writeDataset(heldout, "heldout.jsonl")
        log("\(train.count) training questions, \(heldout.count) held-out questions (disjoint)")

        var start = baseURL
        var warmManifest: TrainManifest?
        if let w = config.warmStart {
            let demos = config.world.demonstrations(styles: w.demoStyles)
            let demoURL = out.appendingPathComponent("demonstrations.jsonl")
            try Demonstration.write(demos, to: demoURL)
            var c = SFTJobConfig(base: baseURL, out: out.appendingPathComponent("warm-start"))
            c.filter = nil
            c.demonstrations = [demoURL]
            c.hyper.learningRate = w.learningRate
            c.hyper.epochs = w.epochs
            c.hyper.gradAccum = w.gradAccum
            c.hyper.warmupSteps = w.warmup
            c.hyper.gradClip = w.gradClip
            c.hyper.seed = seed
            c.weightDecay = w.weightDecay
            if !w.full { c.lora = LoRAConfig(rank: w.loraRank, alpha: w.loraAlpha, targetModules: w.loraTargets) }
            log("warm start: sft on \(demos.count) demonstrations")
            let r = try SFTJob.run(
                c, database: nil,
                onStep: { s in
                    if s.step == s.totalSteps || s.step % 10 == 0 { log("  sft step \(s.step)/\(s.totalSteps) loss \(Table.num(s.loss))") }
                })
            warmManifest = r.manifest
            start = c.out
        }

        var runs: [String: [ExperimentPoint]] = [:]
        for (name, lr) in [("learn", config.train.learningRate), ("control", 0.0)] {
            runs[name] = try await runOne(
                name: name, learningRate: lr, config: config, start: start, train: train, heldout: heldout,
                seed: seed, out: out.appendingPathComponent(name), upstream: upstream, log: log)
        }
        let report = ExperimentReport(
            config: configName, seed: seed, learning_rate: config.train.learningRate, warm_start: warmManifest,
            heldout_questions: heldout.count, train_questions: train.count, runs: runs,
            wall_seconds: seconds(ContinuousClock.now - t0))
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        try e.encode(report).write(to: out.appendingPathComponent("report.json"), options: .atomic)
        try Data(ExperimentPlot.svg(report).utf8).write(to: out.appendingPathComponent("report.svg"), options: .atomic)
        return report
    }

    static func runOne(
        name: String, learningRate: Double, config: ExperimentConfig, start: URL, train: [DatasetItem], heldout: [DatasetItem],
        seed: UInt64, out: URL, upstream: any UpstreamAnswering, log: @escaping @Sendable (String) -> Void
    ) async throws -> [ExperimentPoint] {
        let t0 = ContinuousClock.now
        let fm = FileManager.default
        if fm.fileExists(atPath: out.path) { try fm.removeItem(at: out) }
        try fm.createDirectory(at: out, withIntermediateDirectories: true)
        let database = try TrafficDatabase(path: out.appendingPathComponent("traffic.sqlite").path)
        let startModel = try TrainableModel(directory: start, mode: .frozen)
        var current = start
        var points: [ExperimentPoint] = []
        points.append(
            try await evaluate(
                policy: current, iteration: 0, config: config, heldout: heldout, seed: seed, upstream: upstream,
                kl: 0, since: t0, extra: nil))
        log("\(name) iteration 0: held-out EM \(Table.num(points[0].heldout_em, 3)) reward \(Table.num(points[0].mean_reward, 3))")
        for k in 0..<config.iterations {
            let route = "iter\(k)"
            var rc = RolloutConfig()
            rc.groupSize = config.rollout.groupSize
            rc.concurrency = config.rollout.concurrency
            rc.route = route
            rc.upstreamModel = config.upstreamModel
            rc.temperature = config.rollout.temperature
            rc.topP = config.rollout.topP
            rc.maxTurns = config.rollout.maxTurns
            rc.maxTokensPerTurn = config.rollout.maxTokensPerTurn
            rc.seed = seed &* 1_000_003 &+ UInt64(k)
            let policy = try EnginePolicy(directory: current)
            let version = CheckpointVersion.id(current)
            let summary: RolloutSummary
            let styles = PromptStyleTally(world: config.world)
            do {
                summary = try await Rollout.run(
                    items: train, policy: policy, policyVersion: version, upstream: upstream, database: database, config: rc,
                    progress: { _, _, r in if let r { styles.add(r.episode) } })
            } catch {
                policy.shutdown()
                throw error
            }
            policy.shutdown()

            let next = out.appendingPathComponent("iter\(k + 1)")
            var tc = TrainJobConfig(base: current, out: next)
            if !config.train.full {
                tc.lora = LoRAConfig(rank: config.train.loraRank, alpha: config.train.loraAlpha, targetModules: config.train.loraTargets)
            }
            tc.hyper.learningRate = learningRate
            tc.hyper.epochs = config.train.epochs
            tc.hyper.gradAccum = config.train.gradAccum
            tc.hyper.warmupSteps = config.train.warmup
            tc.hyper.gradClip = config.train.gradClip
            tc.hyper.ppo = PPOConfig(clip: config.train.clip, klCoef: config.train.klCoef)
            tc.hyper.seed = seed &+ UInt64(k)
            tc.weightDecay = config.train.weightDecay
            tc.filter = EpisodeFilter(route: route)
            // An iteration whose groups all tied trains nothing but must not stop the experiment.
            tc.allowNoSignal = true
            tc.stateDirectory = out.appendingPathComponent("iter\(k + 1).train-state")
            let job = try TrainJob.run(tc, database: database, tokenizer: try Tokenizer(directory: current))
            current = next

            // KL of the new weights to the start, over the policy tokens just trained on.
            let now = try TrainableModel(directory: current, mode: .frozen)
            var klSum = 0.0
            var n = 0
            for e in job.selection.episodes {
                let s = e.sequence
                let a = now.tokenLogprobs(s.tokens)
                let b = startModel.tokenLogprobs(s.tokens)
                for t in s.policyPositions {
                    klSum += PPOObjective.kl(logp: Double(a[t - 1]), ref: Double(b[t - 1]))
                    n += 1
                }
            }
            let extra = (episodes: summary.episodesLogged, reward: summary.meanReward, em: summary.exactMatch, steps: job.manifest.steps)
            var p = try await evaluate(
                policy: current, iteration: k + 1, config: config, heldout: heldout, seed: seed, upstream: upstream,
                kl: n == 0 ? 0 : klSum / Double(n), since: t0, extra: extra)
            (p.train_restating, p.train_naming_subject) = styles.fractions
            points.append(p)
            log(
                "\(name) iteration \(k + 1): rollout reward \(Table.num(summary.meanReward, 3)) EM \(Table.num(summary.exactMatch, 3)) restating \(Table.num(p.train_restating ?? 0, 3)) naming the subject \(Table.num(p.train_naming_subject ?? 0, 3)); held-out EM \(Table.num(p.heldout_em, 3)) reward \(Table.num(p.mean_reward, 3)) kl \(Table.num(p.kl, 5)) (\(Table.num(p.wall_seconds, 1)) s)"
            )
        }
        return points
    }

    static func evaluate(
        policy dir: URL, iteration: Int, config: ExperimentConfig, heldout: [DatasetItem], seed: UInt64,
        upstream: any UpstreamAnswering, kl: Double, since t0: ContinuousClock.Instant,
        extra: (episodes: Int, reward: Double, em: Double, steps: Int)?
    ) async throws -> ExperimentPoint {
        let policy = try EnginePolicy(directory: dir)
        defer { policy.shutdown() }
        let version = CheckpointVersion.id(dir)
        let passes = config.eval.temperature == 0 ? 1 : config.eval.samples
        var em = 0.0
        var f1 = 0.0
        var reward = 0.0
        var format = 0.0
        var alone: Double?
        for s in 0..<passes {
            var ec = EvalConfig()
            ec.baseline = config.eval.baseline && s == 0
            ec.rollout.temperature = config.eval.temperature
            // The same seeds at every evaluation and in both runs: differences come from the weights.
            ec.rollout.seed = (seed &* 7_919) &+ UInt64(s) &+ 0xE7A1
            ec.rollout.maxTurns = config.eval.maxTurns
            ec.rollout.maxTokensPerTurn = config.eval.maxTokensPerTurn
            ec.rollout.concurrency = config.eval.concurrency
            ec.rollout.upstreamModel = config.upstreamModel
            let r = try await Evaluator.run(
                items: heldout, policy: policy, policyPath: dir.path, policyVersion: version,
                upstream: upstream, config: ec, datasetName: "heldout")
            em += r.collaboration.exactMatch
            f1 += r.collaboration.f1
            reward += r.collaboration.meanReward ?? 0
            format += r.collaboration.meanFormat ?? 0
            if let u = r.upstreamAlone { alone = u.exactMatch }
        }
        let n = Double(passes)
        return ExperimentPoint(
            iteration: iteration, heldout_em: em / n, heldout_f1: f1 / n, mean_reward: reward / n, heldout_format: format / n,
            kl: kl, wall_seconds: seconds(ContinuousClock.now - t0), train_episodes: extra?.episodes,
            train_mean_reward: extra?.reward, train_em: extra?.em, train_steps: extra?.steps,
            upstream_alone_em: alone, policy_version: version)
    }
}

/// Counts, over a rollout's episodes, the first prompts that restate the question's needed phrase
/// and those that name its subject.
final class PromptStyleTally: @unchecked Sendable {  // mutable state guarded by `lock`
    let world: LookupWorld
    private let lock = NSLock()
    private var episodes = 0
    private var restating = 0
    private var naming = 0
    init(world: LookupWorld) { self.world = world }

    func add(_ e: Episode) {
        let prompt = e.turns.lazy.compactMap { $0.upstream?.messages.last?.content }.first ?? ""
        let pair = world.pair(question: e.question)
        lock.lock()
        defer { lock.unlock() }
        episodes += 1
        if let pair, world.restates(prompt, pair) { restating += 1 }
        if let pair, world.names(prompt, subject: pair.subject) { naming += 1 }
    }

    var fractions: (Double?, Double?) {
        lock.lock()
        defer { lock.unlock() }
        guard episodes > 0 else { return (nil, nil) }
        return (Double(restating) / Double(episodes), Double(naming) / Double(episodes))
    }
}

enum CheckpointVersion {
    static func id(_ dir: URL) -> String {
        (try? CheckpointHash.weightsSHA256(directory: dir)).map { CheckpointHash.versionID(sha256: $0) } ?? dir.lastPathComponent
    }
}

/// A plain SVG: held-out EM (left) and held-out mean reward (right) over the iterations, the
/// learning run solid, the control dashed.
public enum ExperimentPlot {
    public static func svg(_ r: ExperimentReport) -> String {
        let w = 760.0
        let h = 320.0
        let pw = 300.0
        let ph = 200.0
        let top = 60.0
        let lefts = [60.0, 430.0]
        let learn = r.runs["learn"] ?? []
        let control = r.runs["control"] ?? []
        let maxIter = Double(max(1, (learn + control).map(\.iteration).max() ?? 1))
        var s = """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(w))" height="\(Int(h))" viewBox="0 0 \(Int(w)) \(Int(h))" font-family="sans-serif" font-size="12">
            <rect width="100%" height="100%" fill="white"/>
            <text x="\(w / 2)" y="22" text-anchor="middle" font-size="15">\(escape(r.config)), seed \(r.seed): held-out questions (\(r.heldout_questions)), learn (lr \(r.learning_rate)) vs control (lr 0)</text>

            """
        let panels: [(String, (ExperimentPoint) -> Double, Double, Double)] = [
            ("held-out exact match", { $0.heldout_em }, 0, 1),
            ("held-out mean reward", { $0.mean_reward }, -1, 1),
        ]
        for (i, panel) in panels.enumerated() {
            let (title, f, lo, hi) = panel
            let x0 = lefts[i]
            func px(_ it: Int) -> Double { x0 + Double(it) / maxIter * pw }
            func py(_ v: Double) -> Double { top + ph - (min(max(v, lo), hi) - lo) / (hi - lo) * ph }
            s += "<text x=\"\(x0 + pw / 2)\" y=\"\(top - 12)\" text-anchor=\"middle\">\(title)</text>\n"
            s += "<rect x=\"\(x0)\" y=\"\(top)\" width=\"\(pw)\" height=\"\(ph)\" fill=\"none\" stroke=\"#888\"/>\n"
            for k in 0...4 {
                let v = lo + (hi - lo) * Double(k) / 4
                s += "<line x1=\"\(x0)\" y1=\"\(py(v))\" x2=\"\(x0 + pw)\" y2=\"\(py(v))\" stroke=\"#eee\"/>\n"
                s += "<text x=\"\(x0 - 6)\" y=\"\(py(v) + 4)\" text-anchor=\"end\">\(String(format: "%.2f", v))</text>\n"
            }
            for it in 0...Int(maxIter) {
                s += "<text x=\"\(px(it))\" y=\"\(top + ph + 16)\" text-anchor=\"middle\">\(it)</text>\n"
            }
            s += "<text x=\"\(x0 + pw / 2)\" y=\"\(top + ph + 34)\" text-anchor=\"middle\">GRPO iteration</text>\n"
            for (pts, color, dash) in [(control, "#999999", "6,4"), (learn, "#1f77b4", "")] where !pts.isEmpty {
                let path = pts.map { "\(px($0.iteration)),\(py(f($0)))" }.joined(separator: " ")
                s +=
                    "<polyline points=\"\(path)\" fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\"\(dash.isEmpty ? "" : " stroke-dasharray=\"\(dash)\"")/>\n"
                for p in pts { s += "<circle cx=\"\(px(p.iteration))\" cy=\"\(py(f(p)))\" r=\"3\" fill=\"\(color)\"/>\n" }
            }
        }
        let ly = h - 22
        s +=
            "<line x1=\"60\" y1=\"\(ly)\" x2=\"90\" y2=\"\(ly)\" stroke=\"#1f77b4\" stroke-width=\"2\"/><text x=\"96\" y=\"\(ly + 4)\">learn</text>\n"
        s +=
            "<line x1=\"160\" y1=\"\(ly)\" x2=\"190\" y2=\"\(ly)\" stroke=\"#999999\" stroke-width=\"2\" stroke-dasharray=\"6,4\"/><text x=\"196\" y=\"\(ly + 4)\">control (learning rate 0)</text>\n"
        if let a = learn.first?.upstream_alone_em {
            s += "<text x=\"430\" y=\"\(ly + 4)\">upstream alone, bare question: EM \(String(format: "%.2f", a))</text>\n"
        }
        s += "</svg>\n"
        return s
    }

    static func escape(_ t: String) -> String {
        t.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(
            of: ">", with: "&gt;")
    }
}
