import ArgumentParser
import Foundation
import GatewayTrainer
import PolicyEngine
import TrafficLog

// `gateway-train sft`: a thin wrapper over GatewayTrainer's SFTJob.

struct SFTCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sft",
        abstract:
            "Supervised fine-tuning on the policy's own tokens of logged episodes and/or demonstrations; writes a checkpoint + manifest.json.",
        discussion: """
            Loss: token-mean cross-entropy over the tokens the policy wrote (loss mask 1), over the --grad-accum \
            examples of one AdamW step. Logged episodes are chosen by the same filters as train (collaboration \
            episodes with a reward source); --min-reward R keeps only those whose protocol reward is at least R \
            (rejection-sampling fine-tuning, e.g. --min-reward 1 for the perfect ones). --demonstrations FILE adds \
            episodes written as JSONL, one {"question": String, "turns": [String], "responses": [String]} per line: \
            the policy's turns (every one but the last a call) and the upstream's answer to each call; they are \
            tokenised piece by piece exactly as the gateway builds the policy's context. --no-log trains on \
            demonstrations only.
            """)

    @Option(help: "SQLite traffic log.") var db: String = "traffic.sqlite"
    @Flag(name: .customLong("no-log"), help: "Do not read the traffic log (demonstrations only).") var noLog = false
    @Option(name: .customLong("min-reward"), help: "Only logged episodes whose protocol reward is at least this (rejection sampling).")
    var minReward: Double?
    @Option(help: "Demonstrations JSONL file (repeatable).") var demonstrations: [String] = []
    @Option(help: "Starting checkpoint folder.") var base: String
    @Option(help: "Output checkpoint folder.") var out: String
    @OptionGroup var adapter: AdapterOptions
    @Option(help: "Peak learning rate.") var lr: Double = 1e-5
    @Option(name: .customLong("weight-decay")) var weightDecay: Double = 0.0
    @Option var epochs: Int = 1
    @Option(name: .customLong("grad-clip")) var gradClip: Double = 1.0
    @Option(name: .customLong("grad-accum"), help: "Examples per optimiser step.") var gradAccum: Int = 8
    @Option(help: "Linear warm-up steps.") var warmup: Int = 0
    @Option var seed: UInt64 = 0
    @Option(name: .customLong("max-result-chars"), help: "Demonstration responses are cut to this many characters when injected.")
    var maxResultChars: Int = 2048
    @Option(name: .customLong("activation-budget-mb"), help: "MB of MLP activations kept per sequence (0: recompute everything).")
    var activationBudgetMB: Int = 1024
    @OptionGroup var filters: FilterOptions
    @OptionGroup var push: PushOptions

    func validate() throws {
        if gradAccum < 1 || epochs < 1 { throw ValidationError("--grad-accum and --epochs must be at least 1") }
        if noLog && demonstrations.isEmpty { throw ValidationError("--no-log needs at least one --demonstrations file") }
        if noLog && minReward != nil { throw ValidationError("--min-reward filters logged episodes: it cannot go with --no-log") }
        if let m = minReward, !m.isFinite { throw ValidationError("--min-reward must be a number") }
    }

    func run() async throws {
        var c = SFTJobConfig(base: URL(fileURLWithPath: base), out: URL(fileURLWithPath: out))
        c.lora = try adapter.lora()
        c.hyper.learningRate = lr
        c.hyper.epochs = epochs
        c.hyper.gradAccum = gradAccum
        c.hyper.warmupSteps = warmup
        c.hyper.gradClip = gradClip
        c.hyper.seed = seed
        c.weightDecay = weightDecay
        c.activationBudgetBytes = max(0, activationBudgetMB) << 20
        c.filter = noLog ? nil : try filters.filter()
        c.minReward = minReward
        c.demonstrations = demonstrations.map { URL(fileURLWithPath: $0) }
        c.maxResultChars = maxResultChars
        let database = noLog ? nil : try TrafficDatabase(path: db)
        var bar: ProgressReporter?
        let r = try SFTJob.run(
            c, database: database,
            onStep: { s in
                if bar == nil { bar = ProgressReporter(label: "sft", total: s.totalSteps) }
                bar?.update(s.step, note: "loss \(Table.num(s.loss)) |g| \(Table.num(Double(s.gradNorm), 3))")
            }, log: stderrLine)
        let m = r.manifest
        print(
            Table.render(
                ["sft", "value"],
                [
                    ["examples", "\(m.episode_count) (\(r.loggedExamples) logged, \(r.demonstrationExamples) demonstrations)"],
                    ["logged episodes below --min-reward", "\(r.rejected)"], ["logged episodes skipped", "\(r.skipped)"],
                    ["policy tokens", "\(m.policy_tokens)"],
                    [
                        "mode",
                        m.hyperparameters.mode
                            + (c.lora.map { " r=\($0.rank) alpha=\($0.alpha) \($0.targetModules.joined(separator: ","))" } ?? ""),
                    ],
                    ["trainable parameters", "\(m.trainable_parameters)"], ["steps", "\(m.steps)"],
                    ["mean loss", Table.num(m.mean_loss)], ["last loss", Table.num(r.lastLoss)], ["KL after", Table.num(m.kl_after, 6)],
                    ["parent version", m.parent_version], ["new version", m.version], ["output", out],
                    ["wall time s", Table.num(m.wall_seconds, 1)],
                ]), terminator: "")
        try await push.run(checkpoint: out)
    }
}
