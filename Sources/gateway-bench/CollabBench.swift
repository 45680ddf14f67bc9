import ArgumentParser
import Foundation
import PolicyEngine
import PromptR1
import RemotePolicy

/// The time the gateway adds to a collaboration episode apart from upstream time: the policy's
/// prefill and decode per turn, through the real loop, engine and continuous batching. Each
/// turn generates exactly `--tokens-per-turn` tokens; the turn's text is then replaced by a
/// well-formed call (or, on the last turn, an answer), so every episode has the same shape
/// whatever the random weights say. The upstream answers instantly.
struct CollabBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "collab",
        abstract:
            "Gateway time per collaboration episode (policy prefill + decode), at 1 and 8 concurrent episodes, with and without the prefix cache."
    )

    @OptionGroup var weights: BenchModelOptions
    @Option(name: .customLong("tokens-per-turn")) var tokensPerTurn = 32
    @Option var turns = 2
    @Option(help: "Comma-separated concurrency levels.") var concurrency = "1,8"
    @Option(help: "Episodes per concurrent slot.") var rounds = 2
    @Option(help: "OpenBLAS threads.") var threads = 2
    @Option(
        name: .customLong("policy-backend"),
        help: "Base URL of an inference engine serving the same model (e.g. llama-server with its GGUF).")
    var policyBackend: String?
    @Option(name: .customLong("policy-backend-kind"), help: "vllm, sglang or llamacpp.")
    var policyBackendKind = "llamacpp"
    @Flag(name: .customLong("with-embedded-baseline"), help: "With --policy-backend, run the embedded engine's table too (same run).")
    var withEmbeddedBaseline = false
    @Flag(help: "8-bit weights (policy.weights: q8).") var q8 = false
    @Flag(
        name: .customLong("no-prefix-cache"),
        help: "Only the run without the prefix cache (by default both run, same model, and their ratio is printed).")
    var noPrefixCache = false
    @Option(
        help:
            "distinct: every episode gets its own question (only the protocol's fixed prefix is shared); same: one question for all (retries, n > 1, rollout groups)."
    )
    var questions: QuestionMode = .distinct
    @Option(name: .customLong("prefix-cache-mb")) var prefixCacheMB = 256
    @Option(help: "off or prompt_lookup (policy.speculation), with --draft-tokens.") var speculation = "off"
    @Option(name: .customLong("draft-tokens")) var draftTokens = 4

    enum QuestionMode: String, ExpressibleByArgument { case distinct, same }

    func run() async throws {
        setenv("OPENBLAS_NUM_THREADS", "\(threads)", 1)
        let dir = try weights.folder()
        if let policyBackend {
            guard let kind = RemotePolicyBackend.Kind(rawValue: policyBackendKind) else {
                throw ValidationError("--policy-backend-kind must be vllm, sglang or llamacpp")
            }
            try await runRemote(dir: dir, backend: RemotePolicyBackend(kind: kind, baseURL: policyBackend))
            if !withEmbeddedBaseline { return }
            print("")
            print("same run, embedded engine (baseline):")
        }
        let t0 = ContinuousClock.now
        let model = try TransformerModel.load(from: dir, weightFormat: q8 ? .q8 : .f32)
        let tokenizer = try Tokenizer(directory: dir)
        // Two policies on the same weights: one with a prefix cache (the protocol prefix pre-filled as at
        // policy load), one without.
        guard ["off", "prompt_lookup"].contains(speculation) else { throw ValidationError("--speculation must be off or prompt_lookup") }
        let lookup = speculation == "off" ? nil : PromptLookup(draftTokens: draftTokens)
        let plain = try EnginePolicy(directory: dir, model: model, tokenizer: tokenizer, prefixCacheBytes: 0, speculation: lookup)
        let cached = try EnginePolicy(
            directory: dir, model: model, tokenizer: tokenizer, prefixCacheBytes: prefixCacheMB << 20, speculation: lookup)
        defer {
            plain.shutdown()
            cached.shutdown()
        }
        print(
            "collab bench: model \(dir.lastPathComponent) (\(model.parameterCount / 1_000_000)M parameters, \(model.weightFormat), loaded in \(fmt((ContinuousClock.now - t0).milliseconds / 1000)) s)"
        )
        print(
            "episode shape: \(turns) turns x \(tokensPerTurn) generated tokens; upstream answers instantly; OpenBLAS threads \(threads); questions: \(questions.rawValue); speculation \(speculation)"
        )
        let question = "Which planet is the largest in the Solar System, and what is its largest moon?"
        print("first prompt: \(tokenizer.encode(PromptR1Prompt.firstPrompt(question: question)).count) tokens")
        // Warm the mapping (first touch of the weights) so the first episode is not an outlier.
        _ = try model.prefill(tokens: [1, 2, 3], cache: model.makeCache(initialCapacity: 8))
        if !noPrefixCache {
            let p0 = ContinuousClock.now
            let n = try cached.prefillProtocolPrefix()
            print(
                "prefix cache: \(prefixCacheMB) MB; protocol prefix of \(n) tokens pre-filled in \(fmt((ContinuousClock.now - p0).milliseconds)) ms"
            )
        }
        print("")
        print(
            "cache  conc  episodes  ep/s    gateway ms/episode (mean, p50, max)   1st upstream call ms (p50, p99)   later turns ms   policy tok/s   prompt tokens cached"
        )
        var episodeIndex = 0
        for c in concurrency.split(separator: ",").compactMap({ Int($0) }) {
            var rates: [Bool: Double] = [:]
            for useCache in noPrefixCache ? [false] : [false, true] {
                let policy = useCache ? cached : plain
                let before = policy.scheduler.prefillTokens
                let stats = Stats()
                let start = ContinuousClock.now
                let firstQuestion = episodeIndex
                episodeIndex += c * rounds
                await withTaskGroup(of: Void.self) { group in
                    for slot in 0..<c {
                        group.addTask {
                            for r in 0..<rounds {
                                let q = questions == .same ? question : "Case \(firstQuestion + slot * rounds + r): " + question
                                let loop = CollaborationLoop(
                                    options: .init(limits: .init(maxTurns: turns, maxTokensPerTurn: tokensPerTurn)),
                                    upstream: InstantUpstream()
                                ) { prompt in
                                    FixedShapeSession(
                                        inner: policy.session(promptText: prompt, sampling: .greedy), turns: turns,
                                        tokensPerTurn: tokensPerTurn, stats: stats)
                                }
                                let t = ContinuousClock.now
                                let e = await loop.run(question: q)
                                let upstream = e.turns.compactMap { $0.upstream?.latencySeconds }.reduce(0, +) * 1000
                                stats.episode(ms: (ContinuousClock.now - t).milliseconds - upstream, ok: e.outcome.answerText != nil)
                            }
                        }
                    }
                }
                let wall = (ContinuousClock.now - start).milliseconds / 1000
                let s = stats.snapshot()
                let eps = s.episodes.sorted()
                let first = s.firstTurnMs.sorted()
                let after = policy.scheduler.prefillTokens
                let cachedTokens = after.cached - before.cached
                let computed = after.computed - before.computed
                rates[useCache] = Double(eps.count) / wall
                print(
                    padTo(useCache ? "on" : "off", 7)
                        + "\(padTo("\(c)", 6))\(padTo("\(eps.count)", 10))\(padTo(fmt(Double(eps.count) / wall), 8))"
                        + padTo(
                            "\(fmt(eps.reduce(0, +) / Double(max(eps.count, 1)))), \(fmt(eps[eps.count / 2])), \(fmt(eps.last ?? 0))", 38)
                        + padTo("\(fmt(percentile(first, 0.5))), \(fmt(percentile(first, 0.99)))", 34)
                        + padTo(fmt(s.laterTurnMs.reduce(0, +) / Double(max(s.laterTurnMs.count, 1))), 17)
                        + padTo(fmt(Double(s.generated) / wall), 15)
                        + "\(cachedTokens) of \(cachedTokens + computed)"
                        + (s.failures > 0 ? "  (\(s.failures) episodes without answer!)" : ""))
            }
            if lookup != nil {
                let d = (plain.scheduler.draftTokens, cached.scheduler.draftTokens)
                print("       draft tokens so far: \(d.0.drafted + d.1.drafted) drafted, \(d.0.accepted + d.1.accepted) accepted")
            }
            if let on = rates[true], let off = rates[false], off > 0 {
                print("       concurrency \(c): episodes/s with the prefix cache / without, same run: \(String(format: "%.2f", on / off))x")
            }
        }
    }
}

/// The q-th quantile of sorted values (nearest rank).
func percentile(_ sorted: [Double], _ q: Double) -> Double {
    guard !sorted.isEmpty else { return 0 }
    let rank = Int((q * Double(sorted.count)).rounded(.up)) - 1
    return sorted[max(0, min(sorted.count - 1, rank))]
}

struct InstantUpstream: UpstreamAnswering {
    func answer(messages: [UpstreamMessage], options: UpstreamCallOptions) async throws -> UpstreamAnswer {
        UpstreamAnswer(text: "Jupiter is the largest planet; its largest moon is Ganymede.")
    }
}

final class Stats: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    struct Snapshot {
        var episodes: [Double] = []
        var firstTurnMs: [Double] = []
        var laterTurnMs: [Double] = []
        var generated = 0
        var failures = 0
    }
    private var s = Snapshot()
    func episode(ms: Double, ok: Bool) {
        lock.withLock {
            s.episodes.append(ms)
            if !ok { s.failures += 1 }
        }
    }
    func turn(first: Bool, ms: Double, tokens: Int) {
        lock.withLock {
            if first { s.firstTurnMs.append(ms) } else { s.laterTurnMs.append(ms) }
            s.generated += tokens
        }
    }
    func snapshot() -> Snapshot { lock.withLock { s } }
}

/// Real generation of a fixed number of tokens per turn; the text is replaced by a well-formed
/// call, or an answer on the last turn.
final class FixedShapeSession: PolicySession, @unchecked Sendable {
    // Used by one loop, one call at a time.
    let inner: any PolicySession
    let turns: Int
    let tokensPerTurn: Int
    let stats: Stats
    var turn = 0
    var promptTokenIDs: [Int32] { inner.promptTokenIDs }

    init(inner: any PolicySession, turns: Int, tokensPerTurn: Int, stats: Stats) {
        self.inner = inner
        self.turns = turns
        self.tokensPerTurn = tokensPerTurn
        self.stats = stats
    }

    func generateTurn(limits: PolicyTurnLimits, onText: (@Sendable (String) -> Void)?) async throws -> PolicyTurn {
        turn += 1
        let clock = ContinuousClock()
        let start = clock.now
        let real = try await inner.generateTurn(
            limits: PolicyTurnLimits(maxNewTokens: tokensPerTurn, stopStrings: ["\u{0}never\u{0}"]),
            onText: nil)
        stats.turn(first: turn == 1, ms: (clock.now - start).milliseconds, tokens: real.tokenIDs.count)
        let text =
            turn < turns
            ? #"<think>step</think>\#n<interaction_prompt>{"name": "prompt", "arguments": {"prompt": "Which planet is the largest?"}}</interaction_prompt>"#
            : "done</think>\n<answer>Jupiter; Ganymede</answer>"
        return PolicyTurn(text: text, tokenIDs: real.tokenIDs, logprobs: real.logprobs, finishReason: turn < turns ? .stopString : .length)
    }

    func appendInjected(_ text: String) async throws -> [Int32] { try await inner.appendInjected(text) }
}

extension CollabBench {
    /// The same table for a policy on an inference engine, with the turn time split into the
    /// engine's own time (what it reports: prompt + generation) and the rest: the gateway's
    /// share (rendering, tokenising, the turn cut, the loop) plus HTTP and JSON on both sides.
    func runRemote(dir: URL, backend: RemotePolicyBackend) async throws {
        let t0 = ContinuousClock.now
        let policy = try await RemotePolicy.connect(directory: dir, backend: backend)
        let question = "Which planet is the largest in the Solar System, and what is its largest moon?"
        print(
            "collab bench: model \(dir.lastPathComponent) on \(backend.kind.rawValue) at \(backend.baseURL) (engine model \(policy.engineModelID ?? "?"), connected in \(fmt((ContinuousClock.now - t0).milliseconds / 1000)) s)"
        )
        print(
            "episode shape: \(turns) turns x \(tokensPerTurn) generated tokens; upstream answers instantly; questions: \(questions.rawValue)"
        )
        print("first prompt: \(policy.tokenizer.encode(PromptR1Prompt.firstPrompt(question: question)).count) tokens")
        // Warm the engine (first touch of its weights) so the first episode is not an outlier.
        try await policy.smokeGeneration()
        print("")
        print(
            "cache   conc  episodes  ep/s    gateway ms/episode (mean, p50, max)   1st upstream call ms (p50, p99)   later turns ms   policy tok/s   prompt tokens cached"
        )
        var episodeIndex = 0
        var splits: [String] = []
        for c in concurrency.split(separator: ",").compactMap({ Int($0) }) {
            let stats = Stats()
            let before = policy.stats.snapshot
            let start = ContinuousClock.now
            let firstQuestion = episodeIndex
            episodeIndex += c * rounds
            let factory = policy.factory(sampling: .greedy)
            await withTaskGroup(of: Void.self) { group in
                for slot in 0..<c {
                    group.addTask {
                        for r in 0..<rounds {
                            let q = questions == .same ? question : "Case \(firstQuestion + slot * rounds + r): " + question
                            let loop = CollaborationLoop(
                                options: .init(limits: .init(maxTurns: turns, maxTokensPerTurn: tokensPerTurn)),
                                upstream: InstantUpstream()
                            ) { prompt in
                                FixedShapeSession(
                                    inner: try await factory(prompt), turns: turns, tokensPerTurn: tokensPerTurn, stats: stats)
                            }
                            let t = ContinuousClock.now
                            let e = await loop.run(question: q)
                            let upstream = e.turns.compactMap { $0.upstream?.latencySeconds }.reduce(0, +) * 1000
                            stats.episode(ms: (ContinuousClock.now - t).milliseconds - upstream, ok: e.outcome.answerText != nil)
                        }
                    }
                }
            }
            let wall = (ContinuousClock.now - start).milliseconds / 1000
            let s = stats.snapshot()
            let after = policy.stats.snapshot
            let eps = s.episodes.sorted()
            let first = s.firstTurnMs.sorted()
            let calls = Double(max(after.requests - before.requests, 1))
            let sent = after.promptTokensSent - before.promptTokensSent
            let cached = after.cachedPromptTokens - before.cachedPromptTokens
            print(
                padTo("engine", 8) + "\(padTo("\(c)", 6))\(padTo("\(eps.count)", 10))\(padTo(fmt(Double(eps.count) / wall), 8))"
                    + padTo("\(fmt(eps.reduce(0, +) / Double(max(eps.count, 1)))), \(fmt(eps[eps.count / 2])), \(fmt(eps.last ?? 0))", 38)
                    + padTo("\(fmt(percentile(first, 0.5))), \(fmt(percentile(first, 0.99)))", 34)
                    + padTo(fmt(s.laterTurnMs.reduce(0, +) / Double(max(s.laterTurnMs.count, 1))), 17)
                    + padTo(fmt(Double(s.generated) / wall), 15)
                    + "\(cached) of \(sent)"
                    + (s.failures > 0 ? "  (\(s.failures) episodes without answer!)" : ""))
            // Per policy turn (one engine call each): the engine's own time (llama.cpp `timings`:
            // prompt + generation), the gateway's own (request JSON, response parsing, turn cut,
            // tokenising injections) and the rest (HTTP on both sides, the engine's request
            // handling and queueing).
            let callMs = (after.callSeconds - before.callSeconds) * 1000 / calls
            let engineMs = (after.engineSeconds - before.engineSeconds) * 1000 / calls
            let ownMs = (after.gatewaySeconds - before.gatewaySeconds) * 1000 / calls
            let turnMs = callMs + ownMs
            splits.append(
                "conc \(c): \(fmt(turnMs)) ms = engine \(fmt(engineMs)) (\(pct(engineMs, turnMs))) + gateway \(String(format: "%.2f", ownMs)) (\(pct(ownMs, turnMs))) + HTTP, engine request handling and queueing \(fmt(max(0, callMs - engineMs))) (\(pct(max(0, callMs - engineMs), turnMs)))"
            )
        }
        print("")
        print("per policy turn:")
        for line in splits { print("  " + line) }
    }
}

func pct(_ part: Double, _ whole: Double) -> String { String(format: "%.1f%%", 100 * part / max(whole, 1e-9)) }

func fmt(_ x: Double) -> String { String(format: "%.1f", x) }

func padTo(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
