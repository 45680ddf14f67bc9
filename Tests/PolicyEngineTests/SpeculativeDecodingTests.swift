import Foundation
import XCTest

@testable import PolicyEngine

/// Prompt-lookup speculative decoding: the drafts, the acceptance rule, and the scheduler's output against
/// ordinary decoding on the fixture models.
final class SpeculativeDecodingTests: XCTestCase {
    func testDraftIsWhatFollowedTheLatestLongestMatch() {
        let lookup = PromptLookup(draftTokens: 3, maxNgram: 3, minNgram: 1)
        // Context 5 6 7 9 | 1 5 6 7 8 | 2 5 6 + last 7: the 3-gram "5 6 7" occurred twice; the latest is followed
        // by 8 2 5.
        XCTAssertEqual(lookup.draft(after: [5, 6, 7, 9, 1, 5, 6, 7, 8, 2, 5, 6], last: 7, limit: 3), [8, 2, 5])
        XCTAssertEqual(lookup.draft(after: [5, 6, 7, 9, 1, 5, 6, 7, 8, 2, 5, 6], last: 7, limit: 1), [8])
        // No 3-gram or 2-gram match, a 1-gram one: "4" was followed by 9 3 1, of which a 1-token match drafts 2.
        XCTAssertEqual(lookup.draft(after: [4, 9, 3, 1, 2], last: 4, limit: 3), [9, 3])
        // A 2-token match drafts up to 4.
        XCTAssertEqual(
            PromptLookup(draftTokens: 6).draft(after: [7, 4, 9, 3, 1, 2, 8, 6, 7], last: 4, limit: 6), [9, 3, 1, 2])
        // The follower may run into the suffix itself (a repeating pattern).
        XCTAssertEqual(lookup.draft(after: [1, 2, 1, 2], last: 1, limit: 3), [2, 1])
        XCTAssertEqual(lookup.draft(after: [1, 2, 3], last: 4, limit: 3), [])
        XCTAssertEqual(lookup.draft(after: [], last: 4, limit: 3), [])
        XCTAssertEqual(lookup.draft(after: [4, 5], last: 4, limit: 0), [])
        // min_ngram 2: a lone token match is not used.
        XCTAssertEqual(PromptLookup(draftTokens: 3, maxNgram: 3, minNgram: 2).draft(after: [4, 9, 3, 1, 2], last: 4, limit: 3), [])
    }

    /// The emitted token of a verification is distributed as the sampling distribution p, whatever the draft:
    /// the draft is accepted with probability p(draft), a rejection draws from p without it. Checked by
    /// frequency over 40,000 draws (4.5 standard deviations), with and without top-k / top-p, for a likely
    /// draft, an unlikely one and one outside the candidate set. Accepting every draft, or drawing the
    /// residual from p itself, fails the check.
    func testVerificationKeepsTheSamplingDistribution() {
        let logits: [Float] = [2.0, 1.2, 0.9, 0.1, -0.5, -1.5, -3]
        let settings = [
            SamplingParameters(temperature: 1, seed: 1), SamplingParameters(temperature: 0.7, topK: 4, seed: 2),
            SamplingParameters(temperature: 1.3, topP: 0.8, seed: 3),
        ]
        for params in settings {
            let reference = Sampler(params)
            // p: the sampler's own distribution, from its logprob of each token it can draw.
            var p = [Double](repeating: 0, count: logits.count)
            for _ in 0..<20_000 {
                let t = reference.sample(logits)
                p[Int(t.id)] = exp(Double(t.logprob))
            }
            XCTAssertEqual(p.reduce(0, +), 1, accuracy: 1e-4, "\(params)")
            for draft in [0, 3, 6] {
                let sampler = Sampler(params)
                let n = 40_000
                var counts = [Int](repeating: 0, count: logits.count)
                var accepted = 0
                logits.withUnsafeBufferPointer { l in
                    var wrongFlag = 0
                    var wrongLogprob = 0
                    for _ in 0..<n {
                        let (t, ok) = sampler.verify(l, draft: Int32(draft))
                        counts[Int(t.id)] += 1
                        if ok { accepted += 1 }
                        if ok != (Int(t.id) == draft) { wrongFlag += 1 }
                        // The log-probs are those of the sampling distribution and of the raw model.
                        if abs(Double(t.logprob) - log(p[Int(t.id)])) > 1e-4
                            || abs(t.rawLogprob - Sampler.logSoftmax(l, at: Int(t.id))) > 1e-5
                        {
                            wrongLogprob += 1
                        }
                    }
                    XCTAssertEqual(wrongFlag, 0, "accepted means the draft was emitted")
                    XCTAssertEqual(wrongLogprob, 0)
                }
                func within(_ observed: Int, _ prob: Double, _ what: String) {
                    let sd = (Double(n) * prob * (1 - prob)).squareRoot()
                    XCTAssertLessThanOrEqual(abs(Double(observed) - Double(n) * prob), 4.5 * sd + 1, "\(params) draft \(draft): \(what)")
                }
                within(accepted, p[draft], "acceptance rate")
                for (id, c) in counts.enumerated() { within(c, p[id], "frequency of token \(id)") }
            }
        }
    }

    func testGreedyVerificationAcceptsExactlyTheArgmax() {
        let logits: [Float] = [0.1, 3, 2.9, -1]
        let s = Sampler(.greedy)
        logits.withUnsafeBufferPointer { l in
            XCTAssertEqual(s.verify(l, draft: 1).accepted, true)
            let (t, ok) = s.verify(l, draft: 2)
            XCTAssertFalse(ok)
            XCTAssertEqual(t.id, 1)
            XCTAssertEqual(t.rawLogprob, Sampler.logSoftmax(l, at: 1), accuracy: 1e-6)
        }
    }

    /// Chunks of up to `rowWiseAttention` tokens (a decode token with its drafts) in 8-bit steps are attended row
    /// by row like decode rows, split by KV head over the compute threads; in float32 steps they keep the prefill
    /// blocks. Either way every position's logits equal those of one blocked prefill within 1e-4.
    func testShortChunksAttendedRowByRowMatchABlockedPrefill() throws {
        let tokens = (0..<60).map { Int32(($0 * 7919 + 5) % 1000) }
        for (name, format) in [
            ("qwen2-tiny", WeightFormat.f32), ("qwen3-tiny", .f32), ("llama-tiny", .f32), ("qwen3-tiny", .q8),
        ] {
            let model = try TransformerModel.load(from: EngineFixtures.model(name), weightFormat: format)
            let blocked = try model.prefillAllLogits(tokens: tokens, cache: model.makeCache())
            for chunk in [2, 5, TransformerModel.rowWiseAttention] {
                let rowWise = try model.prefillAllLogits(tokens: tokens, cache: model.makeCache(), chunkSize: chunk)
                for i in tokens.indices {
                    XCTAssertLessThan(EngineFixtures.maxAbsDiff(rowWise[i], blocked[i]), 1e-4, "\(name) \(format) chunk \(chunk) row \(i)")
                }
            }
        }
    }

    /// Prompts with repeated spans, so that prompt lookup has something to draft from.
    private let prompts: [[Int32]] = {
        let a: [Int32] = (0..<24).map { Int32(($0 * 37 + 11) % 900 + 3) }
        let b: [Int32] = [501, 17, 88, 4, 900, 31, 77]
        return [a + b + a + b + Array(a[..<6]), b + b + b, a + [12, 5] + a]
    }()

    /// All prompts together, or (`oneAtATime`) each alone, so that the steps saved are the sequences' own.
    private func run(
        _ sched: BatchScheduler, sampling: SamplingParameters, maxTokens: Int = 40, oneAtATime: Bool = false
    ) async throws -> [GenerationResult] {
        var out: [GenerationResult] = []
        if oneAtATime {
            for p in prompts {
                out.append(try await sched.submit(GenerationRequest(prompt: p, maxTokens: maxTokens, sampling: sampling)).result())
            }
            return out
        }
        let handles = prompts.map { sched.submit(GenerationRequest(prompt: $0, maxTokens: maxTokens, sampling: sampling)) }
        for h in handles { out.append(try await h.result()) }
        return out
    }

    /// Greedy decoding with drafts gives the tokens of ordinary decoding on every fixture family (float32 and
    /// 8-bit), with log-probs within 1e-4, and drafts were really proposed and accepted.
    func testGreedySpeculativeDecodingIsTokenIdentical() async throws {
        for (name, format) in [
            ("qwen2-tiny", WeightFormat.f32), ("qwen3-tiny", .f32), ("llama-tiny", .f32), ("promptr1-tiny", .f32),
            ("qwen3-tiny", .q8),
        ] {
            let model = try TransformerModel.load(from: EngineFixtures.model(name), weightFormat: format)
            let plain = BatchScheduler(model: model)
            let fast = BatchScheduler(model: model, speculation: PromptLookup(draftTokens: 5))
            defer {
                plain.shutdown()
                fast.shutdown()
            }
            for together in [true, false] {
                let (plainSteps, fastSteps) = (plain.steps, fast.steps)
                let a = try await run(plain, sampling: .greedy, oneAtATime: !together)
                let b = try await run(fast, sampling: .greedy, oneAtATime: !together)
                for (x, y) in zip(a, b) {
                    XCTAssertEqual(x.tokens, y.tokens, "\(name) \(format)")
                    XCTAssertEqual(x.finishReason, y.finishReason)
                    XCTAssertLessThan(EngineFixtures.maxAbsDiff(x.rawLogprobs, y.rawLogprobs), 1e-4, "\(name) \(format)")
                }
                if !together {
                    XCTAssertLessThan(fast.steps - fastSteps, plain.steps - plainSteps, "\(name): accepted drafts save steps")
                }
            }
            let d = fast.draftTokens
            XCTAssertGreaterThan(d.drafted, 0, name)
            XCTAssertGreaterThan(d.accepted, 0, name)
            XCTAssertEqual(plain.draftTokens.drafted, 0)
        }
    }

    /// Sampled decoding with drafts: the logged log-probs are the model's own (recomputed by a plain forward
    /// pass over the generated tokens), the sequence's cache holds exactly its tokens, and a continued
    /// sequence still matches.
    func testSampledSpeculativeLogprobsAreTheModelsOwn() async throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen3-tiny"))
        let sched = BatchScheduler(model: model, speculation: PromptLookup(draftTokens: 4))
        defer { sched.shutdown() }
        let params = SamplingParameters(temperature: 0.6, topK: 8, seed: 11)
        var handles: [ScheduledSequence] = []
        for p in prompts { handles.append(sched.submit(GenerationRequest(prompt: p, maxTokens: 40, sampling: params))) }
        for (p, h) in zip(prompts, handles) {
            let r = try await h.result()
            XCTAssertEqual(r.tokens.count, 40)
            let recomputed = try model.logProbabilities(of: r.tokens, after: p)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(recomputed, r.rawLogprobs), 1e-4)
            // The cache holds the prompt and every generated token but the last.
            XCTAssertEqual(h.cache.tokens, p + r.tokens.dropLast())
            XCTAssertEqual(r.uncachedTokens, [r.tokens.last!])
        }
        XCTAssertGreaterThan(sched.draftTokens.accepted, 0)
    }

    /// Stops and limits cut a step's accepted drafts: `maxTokens` is never exceeded, and a stop token or stop
    /// string inside a run of accepted drafts ends the sequence there, as in ordinary decoding.
    func testStopsInsideAcceptedDraftsEndTheSequenceThere() async throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen2-tiny"))
        let bytes: @Sendable (Int32) -> [UInt8] = { Array("<\($0)>".utf8) }
        let plain = BatchScheduler(model: model, tokenBytes: bytes)
        let fast = BatchScheduler(model: model, tokenBytes: bytes, speculation: PromptLookup(draftTokens: 5))
        defer {
            plain.shutdown()
            fast.shutdown()
        }
        let reference = try await run(plain, sampling: .greedy)
        for (prompt, full) in zip(prompts, reference) {
            for cut in [1, 7, 13] {
                let stopID = full.tokens[cut]
                let first = full.tokens.firstIndex(of: stopID)!
                for (stop, limit) in [
                    (StopConditions(tokenIds: [stopID]), 40), (StopConditions(strings: ["<\(stopID)>"]), 40),
                    (StopConditions(), cut),
                ] {
                    let want = try await plain.submit(GenerationRequest(prompt: prompt, maxTokens: limit, stop: stop)).result()
                    let got = try await fast.submit(GenerationRequest(prompt: prompt, maxTokens: limit, stop: stop)).result()
                    XCTAssertEqual(got.tokens, want.tokens)
                    XCTAssertEqual(got.finishReason, want.finishReason)
                    XCTAssertEqual(got.bytes, want.bytes)
                    XCTAssertEqual(got.tokens.count, limit == cut ? cut : first + 1)
                }
            }
        }
    }
}
