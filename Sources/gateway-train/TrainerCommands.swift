import ArgumentParser
import EpisodeLog
import Foundation
import GatewayTrainer
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog
import TrafficLogPostgres

// rollout / train / eval / export: thin wrappers over GatewayTrainer.

func stderrLine(_ s: String) { FileHandle.standardError.write(Data((s + "\n").utf8)) }

func parseDate(_ s: String, _ name: String) throws -> Date {
    if let v = Double(s) { return Date(timeIntervalSince1970: v) }
    let f = ISO8601DateFormatter()
    if let d = f.date(from: s) { return d }
    f.formatOptions = [.withFullDate]
    if let d = f.date(from: s) { return d }
    throw ValidationError("\(name): '\(s)' is neither unix seconds nor an ISO 8601 date (2026-01-31 or 2026-01-31T12:00:00Z)")
}

/// The upstream key from the named environment variable (never from the command line).
func apiKey(_ envName: String?) throws -> String? {
    guard let envName, !envName.isEmpty else { return nil }
    guard let v = ProcessInfo.processInfo.environment[envName], !v.isEmpty else {
        throw ValidationError("--api-key-env \(envName): the variable is not set (pass --api-key-env '' for an upstream without a key)")
    }
    return v
}

struct UpstreamOptions: ParsableArguments {
    @Option(name: .customLong("upstream-url"), help: "OpenAI-compatible base URL including /v1.") var upstreamURL: String
    @Option(name: .customLong("upstream-model"), help: "Upstream model name.") var upstreamModel: String = "gpt-4o-mini"
    @Option(name: .customLong("api-key-env"), help: "Environment variable holding the upstream API key ('' for none).") var apiKeyEnv:
        String = "OPENAI_API_KEY"
    @Option(name: .customLong("upstream-temperature"), help: "Upstream sampling temperature (default: the upstream's).")
    var upstreamTemperature: Double?
    @Option(name: .customLong("upstream-max-tokens"), help: "max_tokens per upstream call.") var upstreamMaxTokens: Int?
    @Option(name: .customLong("upstream-retries"), help: "Retries per upstream call (connect failure, 429, 5xx).") var retries: Int = 2

    func client() throws -> UpstreamClient {
        UpstreamClient(settings: UpstreamSettings(baseURL: upstreamURL, apiKey: try apiKey(apiKeyEnv), maxRetries: retries))
    }
}

struct EpisodeOptions: ParsableArguments {
    @Option(help: "Policy sampling temperature.") var temperature: Float = 1.0
    @Option(name: .customLong("top-p")) var topP: Float = 1.0
    @Option(name: .customLong("top-k"), help: "0: off.") var topK: Int = 0
    @Option(help: "Base seed (each episode derives its own from it, the question and its sample index).") var seed: UInt64 = 0
    @Option(name: .customLong("max-turns")) var maxTurns: Int = 5
    @Option(name: .customLong("max-tokens-per-turn")) var maxTokensPerTurn: Int = 1024
    @Option(
        name: .customLong("max-result-chars"),
        help: "Upstream answers are cut to this many characters when injected (2048 in the paper's training).") var maxResultChars: Int =
            2048
    @Option(name: .customLong("episode-deadline"), help: "Seconds per episode at most.") var deadline: Double?
    @Option(help: "Episodes running at once.") var concurrency: Int = 4

    func config(_ u: UpstreamOptions) -> RolloutConfig {
        var c = RolloutConfig()
        c.temperature = temperature
        c.topP = topP
        c.topK = topK
        c.seed = seed
        c.maxTurns = maxTurns
        c.maxTokensPerTurn = maxTokensPerTurn
        c.maxResultChars = maxResultChars
        c.episodeDeadlineSeconds = deadline
        c.concurrency = concurrency
        c.upstreamModel = u.upstreamModel
        c.upstreamTemperature = u.upstreamTemperature
        c.upstreamMaxTokens = u.upstreamMaxTokens
        return c
    }
}

struct FilterOptions: ParsableArguments {
    @Option(help: "Only episodes logged at or after (unix seconds or ISO 8601).") var since: String?
    @Option(help: "Only episodes logged before.") var until: String?
    @Option(help: "Only this route (e.g. rollout, /v1/chat/completions).") var route: String?
    @Option(name: .customLong("policy-version"), help: "Only episodes served by this policy version id.") var policyVersion: String?
    @Option(help: "At most this many episodes (oldest first).") var limit: Int?

    func filter() throws -> EpisodeFilter {
        EpisodeFilter(
            since: try since.map { try parseDate($0, "--since") }, until: try until.map { try parseDate($0, "--until") },
            route: route, policyVersion: policyVersion, limit: limit)
    }
}

struct RolloutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollout",
        abstract: "Sample G collaboration episodes per dataset question and log them with their reference answers.",
        discussion: """
            Dataset: JSONL, one {"question": String, "answers": [String]} per line. Episodes run through the same \
            collaboration loop and upstream client as the gateway and go into the gateway's SQLite schema (mode \
            "collaborate", --route), with each reference answer as "reference" feedback in the same transaction. \
            Resumable: a rerun skips questions that already have their G episodes on the route.
            """)

    @Option(help: "JSONL dataset.") var dataset: String
    @Option(name: .customLong("group-size"), help: "Episodes per question (G).") var groupSize: Int = 5
    @Option(help: "Policy checkpoint folder.") var policy: String
    @Option(help: "Traffic log: a SQLite path (created if missing) or a postgres:// URL.") var db: String = "traffic.sqlite"
    @Option(help: "Route recorded for these episodes.") var route: String = "rollout"
    @OptionGroup var upstream: UpstreamOptions
    @OptionGroup var episode: EpisodeOptions

    func validate() throws {
        if groupSize < 1 { throw ValidationError("--group-size must be at least 1") }
        if episode.concurrency < 1 { throw ValidationError("--concurrency must be at least 1") }
    }

    func run() async throws {
        let items = try Dataset.load(dataset)
        let dir = URL(fileURLWithPath: policy)
        let enginePolicy = try EnginePolicy(directory: dir)
        let version = CheckpointHash.versionID(sha256: try CheckpointHash.weightsSHA256(directory: dir))
        let database = try LogBackends.openStore(db)
        let client = try upstream.client()
        var config = episode.config(upstream)
        config.groupSize = groupSize
        config.route = route
        let holder = BarHolder()
        let summary: RolloutSummary
        do {
            summary = try await Rollout.run(
                items: items, policy: enginePolicy, policyVersion: version, upstream: ClientUpstream(client: client),
                database: database, config: config
            ) { done, total, result in
                holder.update(done: done, total: total, note: result.map { "last reward \(Table.num($0.reward.reward, 2))" } ?? "")
            }
        } catch {
            try? await client.shutdown()
            enginePolicy.shutdown()
            throw error
        }
        try? await client.shutdown()
        enginePolicy.shutdown()
        print(
            Table.render(
                ["rollout", "value"],
                [
                    ["questions", "\(summary.questions)"], ["questions already done", "\(summary.questionsSkipped)"],
                    ["episodes logged", "\(summary.episodesLogged)"], ["episodes failed (not logged)", "\(summary.episodesFailed)"],
                    ["mean reward", Table.num(summary.meanReward)], ["mean format score", Table.num(summary.meanFormat)],
                    ["exact match", Table.num(summary.exactMatch)], ["upstream calls", "\(summary.upstreamCalls)"],
                    ["upstream tokens", "\(summary.upstreamTokens)"], ["policy tokens generated", "\(summary.policyTokens)"],
                    ["policy version", version], ["wall time s", Table.num(summary.seconds, 1)],
                ]), terminator: "")
        for f in summary.failures { stderrLine("failed: \(f)") }
    }
}

/// A progress bar created once the total is known.
final class BarHolder: @unchecked Sendable {
    private let lock = NSLock()
    private var bar: ProgressReporter?
    let label: String
    init(label: String = "rollout") { self.label = label }
    func update(done: Int, total: Int, note: String = "") {
        lock.lock()
        if bar == nil { bar = ProgressReporter(label: label, total: total) }
        let b = bar!
        lock.unlock()
        b.update(done, note: note)
    }
}

struct TrainRLCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "GRPO/PPO on logged episodes that carry a reward source; writes a Hugging Face checkpoint + manifest.json.",
        discussion: """
            Episodes: collaboration episodes in --db with reference answers or a feedback score (filters below). \
            Reward: protocol.md section 5 (format + answer F1; a feedback score stands in for F1). Advantage: GRPO \
            within the episodes of one question, (R - mean) / (std + 1e-6); lone episodes use a running mean baseline. \
            Loss: PPO clipped ratio against the logged behaviour log-probs plus kl-coef * (exp(ref - logp) - (ref - logp) - 1), \
            token mean over the policy's own tokens. Resumable state goes to <out>.train-state (--resume continues it).
            """)

    @Option(help: "Traffic log: a SQLite path or a postgres:// URL.") var db: String = "traffic.sqlite"
    @Option(help: "Starting checkpoint folder (also the KL reference).") var base: String
    @Option(help: "Output checkpoint folder.") var out: String
    @OptionGroup var adapter: AdapterOptions
    @Option(help: "Peak learning rate.") var lr: Double = 1e-6
    @Option(name: .customLong("weight-decay")) var weightDecay: Double = 0.01
    @Option var epochs: Int = 1
    @Option(name: .customLong("kl-coef")) var klCoef: Double = 0.001
    @Option(help: "PPO ratio clip.") var clip: Double = 0.2
    @Option(name: .customLong("grad-clip")) var gradClip: Double = 1.0
    @Option(name: .customLong("grad-accum"), help: "Episodes per optimiser step.") var gradAccum: Int = 8
    @Option(help: "Linear warm-up steps.") var warmup: Int = 0
    @Option var seed: UInt64 = 0
    @Option(name: .customLong("save-every"), help: "Save resumable state every N steps (0: at the end only).") var saveEvery: Int = 0
    @Option(name: .customLong("state-dir"), help: "Resumable state folder (default <out>.train-state).") var stateDir: String?
    @Flag(help: "Continue from the saved state.") var resume = false
    @Flag(
        name: .customLong("allow-no-signal"),
        help:
            "Train even when every episode's advantage is 0 (identical rewards in every group); without it that is an error, since training would change nothing."
    ) var allowNoSignal = false
    @Option(
        name: .customLong("activation-budget-mb"),
        help: "MB of MLP activations kept per sequence so backward does not recompute them (faster; 0: recompute everything, least memory)."
    ) var activationBudgetMB: Int = 1024
    @Option(
        help:
            "PPO denominator: 'logged' (the behaviour log-probs in the log) or 'base' (recomputed with the weights the run starts from: --base, or the resumed state; use it for traffic sampled at a temperature other than 1 or with top-k/top-p)."
    ) var behaviour: String = "logged"
    @OptionGroup var filters: FilterOptions
    @OptionGroup var push: PushOptions

    func validate() throws {
        if gradAccum < 1 || epochs < 1 { throw ValidationError("--grad-accum and --epochs must be at least 1") }
        if !(clip > 0) { throw ValidationError("--clip must be positive") }
        if !["logged", "base"].contains(behaviour) { throw ValidationError("--behaviour: 'logged' or 'base'") }
    }

    func run() async throws {
        let baseURL = URL(fileURLWithPath: base)
        var c = TrainJobConfig(base: baseURL, out: URL(fileURLWithPath: out))
        c.lora = try adapter.lora()
        c.hyper.learningRate = lr
        c.hyper.epochs = epochs
        c.hyper.gradAccum = gradAccum
        c.hyper.warmupSteps = warmup
        c.hyper.gradClip = gradClip
        c.hyper.seed = seed
        c.hyper.ppo = PPOConfig(clip: clip, klCoef: klCoef)
        c.hyper.saveEvery = saveEvery
        c.hyper.recomputeBehaviour = behaviour == "base"
        c.weightDecay = weightDecay
        c.activationBudgetBytes = max(0, activationBudgetMB) << 20
        c.filter = try filters.filter()
        c.resume = resume
        c.allowNoSignal = allowNoSignal
        c.stateDirectory = stateDir.map { URL(fileURLWithPath: $0) }
        let database = try LogBackends.openStore(db)
        let tokenizer = try Tokenizer(directory: baseURL)
        var bar: ProgressReporter?
        var last: StepReport?
        let result = try TrainJob.run(
            c, database: database, tokenizer: tokenizer,
            onStep: { r in
                if bar == nil { bar = ProgressReporter(label: "train", total: r.totalSteps) }
                last = r
                bar?.update(
                    r.step,
                    note:
                        "loss \(Table.num(r.loss)) kl \(Table.num(r.kl, 5)) clip \(Table.num(r.clipFraction, 3)) |g| \(Table.num(Double(r.gradNorm), 3))"
                )
            }, log: stderrLine)
        let m = result.manifest
        print(
            Table.render(
                ["train", "value"],
                [
                    [
                        "episodes",
                        "\(m.episode_count) (\(m.groups) groups, \(m.lone_episodes) lone, \(result.selection.skipped.count) skipped)",
                    ],
                    [
                        "advantage 0",
                        "\(result.selection.zeroAdvantageGroups) of \(m.groups) groups, \(result.selection.zeroAdvantageLone) of \(m.lone_episodes) lone episodes",
                    ],
                    ["policy tokens", "\(m.policy_tokens)"], ["mean reward", Table.num(m.mean_reward)],
                    ["mean format", Table.num(m.mean_format)],
                    [
                        "mode",
                        m.hyperparameters.mode
                            + (c.lora.map { " r=\($0.rank) alpha=\($0.alpha) \($0.targetModules.joined(separator: ","))" } ?? ""),
                    ],
                    ["trainable parameters", "\(m.trainable_parameters)"], ["steps", "\(m.steps)\(m.resumed ? " (resumed)" : "")"],
                    ["mean loss", Table.num(m.mean_loss)], ["last loss", last.map { Table.num($0.loss) } ?? "-"],
                    ["KL before", Table.num(m.kl_before, 6)], ["KL after", Table.num(m.kl_after, 6)],
                    ["clip fraction", Table.num(m.clip_fraction, 4)],
                    ["parent version", m.parent_version], ["new version", m.version], ["output", out],
                    ["wall time s", Table.num(m.wall_seconds, 1)],
                ]), terminator: "")
        try await push.run(checkpoint: out)
    }
}

struct EvalCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Collaboration vs the upstream alone on a dataset: EM, F1, mean reward, upstream tokens.",
        discussion: "Dataset as for rollout. The policy decodes greedily unless --temperature is given. --report writes the JSON report.")

    @Option(help: "JSONL dataset.") var dataset: String
    @Option(help: "Policy checkpoint folder.") var policy: String
    @Option(help: "JSON report path.") var report: String?
    @Flag(name: .customLong("no-baseline"), help: "Skip the upstream-alone run.") var noBaseline = false
    @OptionGroup var upstream: UpstreamOptions
    @Option(help: "Policy sampling temperature (0: greedy).") var temperature: Float = 0
    @Option(help: "Seed for sampled decoding.") var seed: UInt64 = 0
    @Option(name: .customLong("max-turns")) var maxTurns: Int = 5
    @Option(name: .customLong("max-tokens-per-turn")) var maxTokensPerTurn: Int = 1024
    @Option(name: .customLong("max-result-chars")) var maxResultChars: Int = 8192
    @Option(help: "Questions running at once.") var concurrency: Int = 4

    func run() async throws {
        let items = try Dataset.load(dataset)
        let dir = URL(fileURLWithPath: policy)
        let enginePolicy = try EnginePolicy(directory: dir)
        let version = CheckpointHash.versionID(sha256: try CheckpointHash.weightsSHA256(directory: dir))
        let client = try upstream.client()
        var config = EvalConfig()
        config.baseline = !noBaseline
        config.rollout.temperature = temperature
        config.rollout.seed = seed
        config.rollout.maxTurns = maxTurns
        config.rollout.maxTokensPerTurn = maxTokensPerTurn
        config.rollout.maxResultChars = maxResultChars
        config.rollout.concurrency = max(1, concurrency)
        config.rollout.upstreamModel = upstream.upstreamModel
        config.rollout.upstreamTemperature = upstream.upstreamTemperature
        config.rollout.upstreamMaxTokens = upstream.upstreamMaxTokens
        let holder = BarHolder(label: "eval")
        let r: EvalReport
        do {
            r = try await Evaluator.run(
                items: items, policy: enginePolicy, policyPath: policy, policyVersion: version,
                upstream: ClientUpstream(client: client), config: config, datasetName: dataset
            ) { done, total in
                holder.update(done: done, total: total)
            }
        } catch {
            try? await client.shutdown()
            enginePolicy.shutdown()
            throw error
        }
        try? await client.shutdown()
        enginePolicy.shutdown()
        print(r.table, terminator: "")
        if let report {
            let e = JSONEncoder()
            e.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
            try e.encode(r).write(to: URL(fileURLWithPath: report), options: .atomic)
            print("report: \(report)")
        }
    }
}

extension ExportFormat: ExpressibleByArgument {}

struct ExportCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Logged collaboration episodes as JSON lines for TRL / verl, and the chat template the policy saw.",
        discussion: """
            --format jsonl: the superset (chat views, exact ids + loss_mask + behaviour log-probs, rewards). trl-sft: \
            input_ids + assistant_masks for TRL's SFTTrainer (pre-tokenised, the policy's own tokens). verl-sft: messages \
            for verl's MultiTurnSFTDataset. verl-rl: prompt, reward_model, extra_info for verl's RLHFDataset and TRL's \
            GRPOTrainer. Every row has every key of its format (null where unknown): docs/export-row.schema.json. \
            The chat template goes beside the output (<out minus extension>.chat_template.jinja). See docs/export.md.
            """)

    @Option(help: "Traffic log: a SQLite path or a postgres:// URL.") var db: String = "traffic.sqlite"
    @Option(help: "Output format.") var format: ExportFormat = .jsonl
    @Option(help: "Output file.") var out: String
    @Option(help: "Checkpoint folder whose tokenizer decodes the logged ids (the policy that produced them).") var tokenizer: String
    @Flag(name: .customLong("require-reward"), help: "Only episodes with a reward source.") var requireReward = false
    @Option(
        name: .customLong("min-reward"),
        help: "Only episodes whose protocol reward is at least this (leaves out episodes without a reward).") var minReward: Double?
    @Option(name: .customLong("data-source"), help: "Value of the data_source field.") var dataSource: String = "prompt-r1-gateway"
    @OptionGroup var filters: FilterOptions

    func validate() throws {
        if let minReward, !minReward.isFinite { throw ValidationError("--min-reward must be a finite number") }
    }

    func run() async throws {
        let database = try LogBackends.openStore(db)
        let tok = try Tokenizer(directory: URL(fileURLWithPath: tokenizer))
        let holder = BarHolder(label: "export")
        let options = ExportOptions(
            format: format, filter: try filters.filter(), requireReward: requireReward,
            minReward: minReward, dataSource: dataSource)
        let s = try Exporter.export(database: database, options: options, tokenizer: tok, to: URL(fileURLWithPath: out)) { done, total in
            holder.update(done: done, total: total)
        }
        var rows = [
            ["format", format.rawValue], ["episodes written", "\(s.written)"], ["with a reward", "\(s.withReward)"],
            ["without ground truth", "\(s.withoutGroundTruth)"], ["policy tokens (sum of loss_mask)", "\(s.policyTokens)"],
            ["skipped (no token ids)", "\(s.skipped)"],
        ]
        if minReward != nil { rows.append(["skipped (below --min-reward)", "\(s.belowMinReward)"]) }
        if options.format == .verlSFT || options.format == .verlRL {
            rows.append(["skipped (text does not re-tokenise to the logged ids)", "\(s.notRerenderable)"])
        }
        rows += [["output", out], ["chat template", s.chatTemplate.path]]
        print(Table.render(["export", "value"], rows), terminator: "")
    }
}

/// `--push`: the hot-swap into a running gateway that `train` and `sft` share.
struct PushOptions: ParsableArguments {
    @Option(help: "After training, hot-swap the checkpoint into a running gateway: its admin base URL (e.g. http://127.0.0.1:8081).")
    var push: String?
    @Option(
        name: .customLong("push-path"),
        help: "Path to send in the swap request (relative to the gateway's admin.models_dir; default: --out as given).") var pushPath:
        String?
    @Option(name: .customLong("token-env"), help: "Environment variable holding the gateway's admin token.") var tokenEnv: String =
        "GATEWAY_ADMIN_TOKEN"

    /// Swaps `checkpoint` in when `--push` was given.
    func run(checkpoint out: String) async throws {
        guard let push else { return }
        let token = ProcessInfo.processInfo.environment[tokenEnv].flatMap { $0.isEmpty ? nil : $0 }
        let reply = try await TrainJob.push(adminURL: push, path: pushPath ?? out, token: token)
        print("pushed to \(push): \(reply)")
    }
}

/// `--full` or a LoRA adapter: the flags `train` and `sft` share.
struct AdapterOptions: ParsableArguments {
    @Flag(help: "Full fine-tuning instead of LoRA.") var full = false
    @Option(name: .customLong("lora-rank")) var loraRank: Int = 8
    @Option(name: .customLong("lora-alpha")) var loraAlpha: Float = 16
    @Option(name: .customLong("lora-targets"), help: "Comma-separated modules (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj).")
    var loraTargets: String = "q_proj,v_proj"

    /// The validated LoRA configuration; nil with `--full`.
    func lora() throws -> LoRAConfig? {
        if full { return nil }
        let lc = LoRAConfig(
            rank: loraRank, alpha: loraAlpha,
            targetModules: loraTargets.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
        try lc.validate()
        return lc
    }
}
