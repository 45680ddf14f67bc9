import ArgumentParser
import Foundation
import PolicyEngine
import PromptR1

/// What prompt-lookup speculative decoding saves. The acceptance depends on what the policy writes, so it
/// is measured on a trained policy's real protocol episodes (the tiny fixture policy, greedy, with the
/// fixture's scripted upstream answers): drafted and accepted tokens, and the forward steps with and
/// without drafts. What a step costs depends on the model's size, so the cost of a decode step of 1 to
/// 1 + `--draft-tokens` rows is measured on the larger model (default: the Qwen2.5-0.5B shape) at the
/// episodes' context length. The two give the decode time of the same episodes on the larger model with
/// and without drafts; the baseline is ordinary decoding (one row per step) measured in the same run.
struct SpeculationBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "speculation",
        abstract:
            "Prompt-lookup speculative decoding: acceptance on the tiny protocol policy's episodes, step cost and speed-up on the 0.5B shape."
    )

    @Option(help: "A trained protocol policy (its episodes give the acceptance).") var policy =
        "Tests/Fixtures/models/promptr1-tiny"
    @Option(help: "Its episode cases: questions and scripted upstream answers.") var episodes =
        "Tests/Fixtures/reference/promptr1-tiny-episodes.json"
    @OptionGroup var weights: BenchModelOptions
    @Option(name: .customLong("draft-tokens")) var draftTokens = 4
    @Option(name: .customLong("max-ngram")) var maxNgram = 3
    @Option(name: .customLong("min-ngram")) var minNgram = 1
    @Option(help: "Context length at which a step's cost is measured.") var context = 700
    @Option(help: "Timed steps per row count.") var repeats = 20
    @Option(help: "OpenBLAS threads.") var threads = 2
    @Flag(help: "Also the step cost with 8-bit weights.") var q8 = false
    @Flag(help: "Print each step's time by section (the engine's profiler).") var profile = false

    struct Cases: Decodable {
        struct Case: Decodable {
            var question: String
            var upstream_answers: [String]
        }
        var cases: [Case]
    }

    /// Drafted tokens per speculative step, in order.
    final class DraftLog: @unchecked Sendable {
        // Guarded by `lock`.
        private let lock = NSLock()
        private var steps: [(drafted: Int, accepted: Int)] = []
        func add(_ d: Int, _ a: Int) { lock.withLock { steps.append((d, a)) } }
        var all: [(drafted: Int, accepted: Int)] { lock.withLock { steps } }
    }

    func run() async throws {
        setenv("OPENBLAS_NUM_THREADS", "\(threads)", 1)
        // 1. Acceptance on the trained policy's protocol episodes.
        let dir = URL(fileURLWithPath: policy)
        let cases = try JSONDecoder().decode(Cases.self, from: Data(contentsOf: URL(fileURLWithPath: episodes))).cases
        let tiny = try TransformerModel.load(from: dir)
        let tokenizer = try Tokenizer(directory: dir)
        let plain = try EnginePolicy(directory: dir, model: tiny, tokenizer: tokenizer, prefixCacheBytes: 0)
        let fast = try EnginePolicy(
            directory: dir, model: tiny, tokenizer: tokenizer, prefixCacheBytes: 0,
            speculation: PromptLookup(draftTokens: draftTokens, maxNgram: maxNgram, minNgram: minNgram))
        defer {
            plain.shutdown()
            fast.shutdown()
        }
        let log = DraftLog()
        fast.scheduler.onDraft = { log.add($0, $1) }
        var generated = 0
        var turns = 0
        var contextTokens = 0
        var identical = true
        for c in cases {
            func episode(_ p: EnginePolicy) async -> Episode {
                await CollaborationLoop(
                    options: .init(limits: .init(maxTurns: 5, maxTokensPerTurn: 200)),
                    upstream: ReplayUpstream(answers: c.upstream_answers),
                    makeSession: p.factory(sampling: .greedy)
                ).run(question: c.question)
            }
            let a = await episode(plain)
            let b = await episode(fast)
            identical = identical && a.tokenIDs == b.tokenIDs
            generated += a.generatedTokenCount
            turns += a.turns.count
            contextTokens += a.tokenIDs.count
        }
        let steps = log.all
        let d = fast.scheduler.draftTokens
        // Prefill steps are the same in both runs (same prompts, one episode at a time): the difference in
        // steps is the decode steps saved. The first token of each turn comes from its prefill step.
        let decodeTokens = generated - turns
        let decodeStepsOn = decodeTokens - (plain.scheduler.steps - fast.scheduler.steps)
        print("speculation bench, \(Date()) (load average \(loadAverageText()))")
        print(
            "1. acceptance: \(dir.lastPathComponent), \(cases.count) greedy protocol episodes (\(turns) turns, \(generated) policy tokens, mean context \(contextTokens / max(1, cases.count)) tokens), draft_tokens \(draftTokens), n-grams \(maxNgram) to \(minNgram)"
        )
        print("   output token-identical to ordinary decoding: \(identical ? "yes" : "NO")")
        print(
            "   drafted \(d.drafted), accepted \(d.accepted) (\(pct(Double(d.accepted) / Double(max(1, d.drafted)))) of drafts); \(steps.count) speculative steps"
        )
        var byLength = [Int: (steps: Int, accepted: Int)]()
        for s in steps {
            byLength[s.drafted, default: (0, 0)].steps += 1
            byLength[s.drafted, default: (0, 0)].accepted += s.accepted
        }
        print(
            "   speculative steps by drafted tokens: "
                + byLength.keys.sorted().map { "\($0): \(byLength[$0]!.steps) steps, \(byLength[$0]!.accepted) accepted" }.joined(
                    separator: "; "))
        print(
            "   decode: \(decodeTokens) tokens in \(decodeTokens) steps without drafts, \(decodeStepsOn) with (\(String(format: "%.2f", Double(decodeTokens) / Double(max(1, decodeStepsOn)))) tokens per step)"
        )

        // 2. Step cost on the larger model, at the episodes' context length.
        let big = try weights.folder()
        for format in q8 ? [WeightFormat.f32, .q8] : [.f32] {
            let m = try TransformerModel.load(from: big, weightFormat: format)
            let cost = try stepCost(m)
            print("")
            print(
                "2. step cost: \(big.lastPathComponent) (\(m.parameterCount / 1_000_000)M parameters, \(format)), context \(context), median of \(repeats)"
            )
            for (r, t) in cost.enumerated() where r > 0 {
                print(
                    "   \(r) row\(r == 1 ? " " : "s"): \(String(format: "%.1f", t * 1000)) ms  (\(String(format: "%.2f", t / cost[1]))x one row)"
                )
            }
            // 3. The episodes' decode on this model: each speculative step costs its rows, the other steps one.
            let off = Double(decodeTokens) * cost[1]
            var on = Double(decodeStepsOn - steps.count) * cost[1]
            for s in steps { on += cost[min(cost.count - 1, 1 + s.drafted)] }
            print(
                "3. decode time of those episodes on this model: \(String(format: "%.2f", off)) s ordinary (baseline), \(String(format: "%.2f", on)) s with drafts: \(String(format: "%.2f", off / on))x"
            )
        }
    }

    /// Seconds of one forward step of `r` rows (index r) for one sequence at `context` cached positions.
    private func stepCost(_ m: TransformerModel) throws -> [Double] {
        let vocab = Int32(min(m.config.vocabSize, 150_000))
        let cache = m.makeCache(initialCapacity: context + draftTokens + 2)
        let prompt = (0..<context).map { Int32(($0 * 7919 + 13) % Int(vocab)) }
        _ = try m.prefill(tokens: prompt, cache: cache)
        var out = [Double](repeating: 0, count: draftTokens + 2)
        for r in 1...(draftTokens + 1) {
            let rows = (0..<r).map { Int32((r * 31 + $0 * 17) % Int(vocab)) }
            var times: [Double] = []
            for i in 0..<(repeats + 2) {
                let t0 = ContinuousClock.now
                try m.forward([ForwardRequest(tokens: rows, cache: cache, logits: r == 1 ? .last : .all)]) { _, _, _ in }
                let dt = (ContinuousClock.now - t0).milliseconds / 1000
                cache.truncate(to: context)
                if i >= 2 { times.append(dt) }
            }
            out[r] = times.sorted()[times.count / 2]
            if profile {
                m.profiler.enabled = true
                m.profiler.reset()
                for _ in 0..<repeats {
                    try m.forward([ForwardRequest(tokens: rows, cache: cache, logits: r == 1 ? .last : .all)]) { _, _, _ in }
                    cache.truncate(to: context)
                }
                m.profiler.enabled = false
                let parts = m.profiler.seconds.filter { $0.1 > 0 }.map {
                    "\($0.0.rawValue) \(String(format: "%.1f", $0.1 * 1000 / Double(repeats)))"
                }
                print("   \(r) rows, ms per step by section: \(parts.joined(separator: ", "))")
            }
        }
        return out
    }
}

/// The case's upstream answers, in order (the last one repeated).
final class ReplayUpstream: UpstreamAnswering, @unchecked Sendable {
    // One episode's loop calls it one turn at a time.
    private let answers: [String]
    private var next = 0
    init(answers: [String]) { self.answers = answers }
    func answer(messages: [UpstreamMessage], options: UpstreamCallOptions) async throws -> UpstreamAnswer {
        defer { next += 1 }
        return UpstreamAnswer(text: answers[min(next, answers.count - 1)])
    }
}

private func pct(_ x: Double) -> String { String(format: "%.1f%%", 100 * x) }

private func loadAverageText() -> String {
    ((try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8)) ?? "?").split(separator: " ").prefix(3).joined(separator: " ")
}
