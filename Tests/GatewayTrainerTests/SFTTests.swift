import EpisodeLog
import FakeUpstream
import Foundation
import GatewayTrainer
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog
import XCTest

/// `gateway-train sft`: the cross-entropy gradient (exact on the bigram policy, finite differences
/// on the real engine, full and LoRA), demonstrations tokenised exactly as the gateway builds the
/// policy's context, rejection sampling by reward, and the CLI with its manifest.
final class SFTTests: XCTestCase {
    static func bigramExamples(count: Int, seed: UInt64) -> [SFTExample] {
        var rng = Xoshiro256(seed: seed)
        return (0..<count).map { k in
            let n = 10 + Int(rng.next() % 6)
            let tokens = (0..<n).map { _ in Int32(rng.next() % 6) }
            var mask = [UInt8](repeating: 0, count: n)
            for i in 3..<6 { mask[i] = 1 }
            for i in 8..<n { mask[i] = 1 }
            return SFTExample(id: "e\(k)", tokens: tokens, mask: mask)
        }
    }

    /// The loss is -(1/N) sum of the mask-1 log-probs, and its gradient matches central finite
    /// differences of that loss (float64 bigram model: exact to ~1e-8).
    func testCrossEntropyGradientMatchesFiniteDifferencesExactly() throws {
        let policy = BigramPolicy(vocab: 6, seed: 3)
        let examples = Self.bigramExamples(count: 3, seed: 9)
        let trainer = SFTTrainer(model: policy, optimizer: BigramSGD(policy), examples: examples, hyper: SFTHyperparameters())
        // The loss by hand.
        var sum = 0.0
        var n = 0
        for e in examples {
            let lp = policy.tokenLogprobs(e.tokens)
            for t in 1..<e.tokens.count where e.mask[t] == 1 {
                sum -= Double(lp[t - 1])
                n += 1
            }
        }
        XCTAssertEqual(trainer.batchLoss([0, 1, 2]), sum / Double(n), accuracy: 1e-6)
        policy.zeroGradients()
        let r = trainer.accumulateGradients([0, 1, 2])
        XCTAssertEqual(r.tokens, n)
        XCTAssertEqual(r.loss, sum / Double(n), accuracy: 1e-6)
        var worst = 0.0
        for i in stride(from: 0, to: policy.w.count, by: 1) {
            let h = 1e-5
            let saved = policy.w[i]
            policy.w[i] = saved + h
            let up = trainer.batchLoss([0, 1, 2])
            policy.w[i] = saved - h
            let down = trainer.batchLoss([0, 1, 2])
            policy.w[i] = saved
            worst = max(worst, abs((up - down) / (2 * h) - policy.g[i]))
        }
        // batchLoss goes through Float log-probs: ~1e-7 relative noise over h = 1e-5.
        XCTAssertLessThan(worst, 2e-3)
        XCTAssertGreaterThan(policy.g.map(abs).max()!, 1e-2, "the gradient is not trivially zero")
    }

    /// On the real engine (qwen3-tiny, full and LoRA): the SFT gradient of individual weights
    /// against central finite differences of the SFT loss. (The engine's backward itself is
    /// checked against float64 PyTorch autograd in TrainingGradientTests; this checks the
    /// loss's weighting and sign on top of it.)
    func testCrossEntropyGradientOnTheEngineMatchesFiniteDifferences() throws {
        for mode in [TrainingMode.full, .lora(LoRAConfig(rank: 4, alpha: 8, targetModules: ["q_proj", "v_proj"]))] {
            let model = try TrainableModel(directory: Fixtures.model("qwen3-tiny"), mode: mode, seed: 5)
            model.activationBudgetBytes = 0
            let trainable = EngineTrainable(model: model, reference: nil)
            if case .lora = mode {
                // B starts at 0; give it values so the adapters carry a gradient into A as well.
                for name in model.parameterNames() where name.contains("lora_B") {
                    let v = model.parameter(name)!
                    model.setParameter(name, v.enumerated().map { i, _ in Float(sin(Double(i) * 0.7)) * 0.05 })
                }
            }
            var rng = Xoshiro256(seed: 11)
            let tokens = (0..<24).map { _ in Int32(rng.next() % 1000) }
            var mask = [UInt8](repeating: 0, count: 24)
            for i in 6..<14 { mask[i] = 1 }
            for i in 18..<24 { mask[i] = 1 }
            let ex = [SFTExample(id: "a", tokens: tokens, mask: mask)]
            let trainer = SFTTrainer(
                model: trainable, optimizer: EngineAdamW(AdamW(model: model)), examples: ex, hyper: SFTHyperparameters())
            model.zeroGradients()
            trainer.accumulateGradients([0])
            var checked = 0
            for name in model.parameterNames() {
                guard let g = model.gradient(name), let p = model.parameter(name) else { continue }
                // The largest entry of each tensor: well above float32 finite-difference noise.
                let i = g.indices.max { abs(g[$0]) < abs(g[$1]) }!
                if abs(g[i]) < 1e-3 { continue }
                let h: Float = 1e-2
                var q = p
                q[i] = p[i] + h
                model.setParameter(name, q)
                let up = trainer.batchLoss([0])
                q[i] = p[i] - h
                model.setParameter(name, q)
                let down = trainer.batchLoss([0])
                model.setParameter(name, p)
                let fd = (up - down) / Double(2 * h)
                XCTAssertEqual(fd, Double(g[i]), accuracy: 0.03 * abs(Double(g[i])) + 2e-4, "\(mode) \(name)[\(i)]")
                checked += 1
            }
            XCTAssertGreaterThan(checked, 5, "\(mode): enough tensors checked")
        }
    }

    /// A demonstration made of what the tiny policy wrote in a real episode (against a scripted
    /// upstream) tokenises to exactly the ids and loss mask the collaboration loop logged.
    func testDemonstrationTokensEqualWhatTheLoopFeedsThePolicy() async throws {
        let fake = try await FakeUpstream(
            script: FakeUpstream.answering([:], unknown: "The capital of France is Paris."), recordRequests: false)
        let client = UpstreamClient(settings: UpstreamSettings(baseURL: fake.baseURL, maxRetries: 0))
        let base = Fixtures.model("promptr1-tiny")
        let policy = try EnginePolicy(directory: base)
        var config = RolloutConfig()
        config.temperature = 0
        config.maxTokensPerTurn = 200
        let e = await Rollout.runEpisode(
            question: "What is the capital of France?", policy: policy, upstream: ClientUpstream(client: client),
            config: config, sample: 0)
        policy.shutdown()
        try await client.shutdown()
        await fake.stop()
        XCTAssertEqual(e.turns.count, 2)
        let demo = Demonstration(
            question: e.question, turns: e.turns.map(\.generatedText),
            responses: e.turns.compactMap { $0.upstream?.answer })
        XCTAssertNil(try demo.validate())
        let ex = demo.example(id: "d", tokenizer: try Tokenizer(directory: base), maxResultChars: config.maxResultChars)
        XCTAssertEqual(ex.tokens, e.tokenIDs)
        var mask = e.lossMask
        mask[0] = 0
        XCTAssertEqual(ex.mask, mask)
        // And it is what the trainer rebuilds from the log.
        let seq = try TrainingSequence(
            record: EpisodeMapping.record(e, route: "t", requestedModel: nil, upstreamModel: nil, policyVersion: nil))
        XCTAssertEqual(seq.tokens, ex.tokens)
        XCTAssertEqual(seq.mask, ex.mask)
    }

    func testDemonstrationsAreValidatedWithTheProtocolParser() throws {
        let call = #"<think>t</think><interaction_prompt>{"name": "prompt", "arguments": {"prompt": "q"}}</interaction_prompt>"#
        XCTAssertNil(try Demonstration(question: "q", turns: [call, "x</think><answer>a</answer>"], responses: ["r"]).validate())
        XCTAssertNotNil(try Demonstration(question: "q", turns: [call, "x</think><answer>a</answer>"], responses: []).validate())
        XCTAssertNotNil(try Demonstration(question: "q", turns: [call], responses: []).validate())
        XCTAssertNotNil(try Demonstration(question: "q", turns: ["<answer>a</answer>", "<answer>b</answer>"], responses: ["r"]).validate())
        XCTAssertNotNil(
            try Demonstration(
                question: "q", turns: [#"<interaction_prompt>{"name": "x"}</interaction_prompt>"#, "<answer>a</answer>"], responses: ["r"]
            ).validate())
        let tmp = try TempDir()
        let bad = tmp.url.appendingPathComponent("bad.jsonl")
        try Data("{\"question\": \"q\", \"turns\": [\"<answer>a</answer>\"], \"responses\": []}\n{\"question\": \"q\"}\n".utf8).write(
            to: bad)
        XCTAssertThrowsError(try Demonstration.load(bad.path)) { e in
            XCTAssertTrue("\(e)".contains("line 2"), "\(e)")
        }
    }

    /// `gateway-train sft` as a user runs it: rollouts logged with references, then rejection
    /// sampling (--min-reward 1) plus demonstrations, LoRA; the manifest says what it trained on,
    /// and training raises the likelihood of what it trained on.
    func testSFTCommandRejectionSamplingAndDemonstrations() async throws {
        _ = try CLITests.executable()
        let cases = try RolloutExportTests.cases()
        let fake = try await FakeUpstream(script: RolloutExportTests.script(cases))
        let tmp = try TempDir()
        let dataset = tmp.url.appendingPathComponent("data.jsonl")
        // Two questions with their right answers, one with a wrong reference (reward < 1).
        var items = cases.prefix(2).map { DatasetItem(question: $0.question, answers: [$0.final_answer ?? ""]) }
        items.append(DatasetItem(question: cases[2].question, answers: ["certainly not this"]))
        try (items.map { String(decoding: try! JSONEncoder().encode($0), as: UTF8.self) }.joined(separator: "\n") + "\n")
            .write(to: dataset, atomically: true, encoding: .utf8)
        let policy = Fixtures.model("promptr1-tiny").path
        let db = tmp.path("traffic.sqlite")
        let r = try TrainCLI.run([
            "rollout", "--dataset", dataset.path, "--group-size", "2", "--policy", policy, "--db", db, "--temperature", "0",
            "--max-tokens-per-turn", "200", "--upstream-url", fake.baseURL, "--api-key-env", "",
        ])
        XCTAssertEqual(r.status, 0, r.err)
        await fake.stop()

        let demos = tmp.url.appendingPathComponent("demos.jsonl")
        let call =
            #"<think>I will ask.</think>\n<interaction_prompt>{\"name\": \"prompt\", \"arguments\": {\"prompt\": \"What is the color of the sky?\"}}</interaction_prompt>"#
        try Data(
            "{\"question\": \"What color is the sky?\", \"turns\": [\"\(call)\", \"It is blue.</think>\\n<answer>blue</answer>\"], \"responses\": [\"The sky is blue.\"]}\n"
                .utf8
        ).write(to: demos)

        let h = try TrainCLI.run(["sft", "--help"])
        XCTAssertEqual(h.status, 0)
        XCTAssertTrue(h.out.contains("--min-reward"))
        let out = tmp.path("sft-out")
        let s = try TrainCLI.run([
            "sft", "--db", db, "--base", policy, "--out", out, "--min-reward", "1", "--demonstrations", demos.path,
            "--lr", "1e-3", "--epochs", "2", "--grad-accum", "2", "--lora-rank", "4", "--seed", "1",
        ])
        XCTAssertEqual(s.status, 0, s.err)
        let m = try JSONDecoder().decode(
            TrainManifest.self, from: Data(contentsOf: URL(fileURLWithPath: out).appendingPathComponent("manifest.json")))
        XCTAssertEqual(m.objective, "sft")
        XCTAssertEqual(m.sft?.rejected_episodes, 2, "the two episodes with the wrong reference are below reward 1")
        XCTAssertEqual(m.sft?.logged_episodes, 4)
        XCTAssertEqual(m.sft?.demonstrations, 1)
        XCTAssertEqual(m.episode_count, 5)
        XCTAssertEqual(m.episode_ids.count, 4)
        XCTAssertEqual(m.hyperparameters.mode, "lora")
        XCTAssertEqual(m.steps, 6)
        XCTAssertNotEqual(m.version, m.parent_version)
        XCTAssertGreaterThan(m.kl_after, 0)
        // The kept episodes are exactly those with reward 1.
        let sel = try EpisodeSelector.select(database: try TrafficDatabase(path: db), filter: EpisodeFilter())
        XCTAssertEqual(Set(m.episode_ids), Set(sel.episodes.filter { $0.reward.reward == 1 }.map(\.sequence.episodeID)))
        // The demonstration became more likely.
        let tok = try Tokenizer(directory: URL(fileURLWithPath: policy))
        let ex = try Demonstration.load(demos.path)[0].example(id: "d", tokenizer: tok)
        func nll(_ dir: String) throws -> Double {
            let lp = try TrainableModel(directory: URL(fileURLWithPath: dir), mode: .frozen).tokenLogprobs(ex.tokens)
            return ex.policyPositions.reduce(0.0) { $0 - Double(lp[$1 - 1]) } / Double(ex.policyTokenCount)
        }
        let before = try nll(policy)
        let after = try nll(out)
        XCTAssertLessThan(after, before - 0.1, "demonstration NLL \(before) -> \(after)")

        // Demonstrations only, and the refusals.
        let d = try TrainCLI.run([
            "sft", "--no-log", "--demonstrations", demos.path, "--base", policy, "--out", tmp.path("d-out"), "--full", "--lr", "1e-4",
        ])
        XCTAssertEqual(d.status, 0, d.err)
        let bad = try TrainCLI.run(["sft", "--no-log", "--base", policy, "--out", tmp.path("x")])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.err.contains("--demonstrations"), bad.err)
    }
}
