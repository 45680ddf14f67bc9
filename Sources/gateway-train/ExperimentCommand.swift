import ArgumentParser
import FakeUpstream
import Foundation
import GatewayTrainer
import OpenAIWire

// `gateway-train experiment`: serves the config's scripted upstream on a loopback port, points
// the same upstream client the other commands use at it, and runs GatewayTrainer's Experiment.

struct ExperimentCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "experiment",
        abstract:
            "Run the whole loop (warm start, then rollout -> GRPO -> held-out eval, K times) with a learning and a control run; writes report.json and report.svg.",
        discussion: """
            The config (e.g. experiments/toy-ci.json; paths in it are relative to its folder) names the base policy, \
            the answer-driven world (a scripted upstream served on 127.0.0.1 that answers only prompts stating \
            "the <property> of the <subject>"), the optional sft warm start on demonstrations, and the rollout, \
            train and eval settings. The control run is the same with learning rate 0. DIR/report.json: \
            {"runs": {"learn": [...], "control": [...]}}, one object per evaluation (the first before training) \
            with heldout_em, heldout_f1, mean_reward, kl, wall_seconds and more. See docs/learning.md.
            """)

    @Option(help: "Experiment config JSON.") var config: String
    @Option(help: "Seed (rollouts, training order, evaluation samples).") var seed: UInt64 = 0
    @Option(help: "Output folder.") var out: String
    @Option(name: .customLong("learning-rate"), help: "Override train.learning_rate of the config.") var learningRate: Double?
    @Option(help: "Override the number of iterations.") var iterations: Int?

    func run() async throws {
        let url = URL(fileURLWithPath: config)
        var c = try ExperimentConfig.load(url)
        if let learningRate { c.train.learningRate = learningRate }
        if let iterations { c.iterations = iterations }
        try c.validate()
        let world = c.world
        let fake = try await FakeUpstream(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                let messages = r.json?["messages"] as? [[String: Any]] ?? []
                let prompt = messages.last { ($0["role"] as? String) == "user" }?["content"] as? String ?? ""
                let model = r.json?["model"] as? String ?? ""
                return .json(status: 200, body: FakeUpstream.completionJSON(model: model, text: world.answer(prompt: prompt)))
            }, recordRequests: false)
        let client = UpstreamClient(settings: UpstreamSettings(baseURL: fake.baseURL, maxRetries: 0))
        stderrLine("scripted upstream on \(fake.baseURL)")
        let report: ExperimentReport
        do {
            report = try await Experiment.run(
                config: c, configDirectory: url.deletingLastPathComponent(), configName: url.lastPathComponent,
                seed: seed, out: URL(fileURLWithPath: out), upstream: ClientUpstream(client: client), log: stderrLine)
        } catch {
            try? await client.shutdown()
            await fake.stop()
            throw error
        }
        try? await client.shutdown()
        await fake.stop()
        var rows: [[String]] = []
        for name in ["learn", "control"] {
            for p in report.runs[name] ?? [] {
                rows.append([
                    name, "\(p.iteration)", Table.num(p.heldout_em, 3), Table.num(p.heldout_f1, 3), Table.num(p.mean_reward, 3),
                    p.train_mean_reward.map { Table.num($0, 3) } ?? "-", Table.num(p.kl, 5), Table.num(p.wall_seconds, 1),
                ])
            }
        }
        print(
            Table.render(
                ["run", "iteration", "held-out EM", "held-out F1", "held-out reward", "rollout reward", "KL to start", "wall s"], rows),
            terminator: "")
        if let a = report.runs["learn"]?.first?.upstream_alone_em {
            print("upstream alone (bare question): held-out EM \(Table.num(a, 3))")
        }
        print("report: \(out)/report.json, \(out)/report.svg")
    }
}
