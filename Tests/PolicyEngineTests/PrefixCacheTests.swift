import Foundation
import XCTest

@testable import PolicyEngine

final class PrefixCacheTests: XCTestCase {
    /// A shared start (a "system prompt") and three different endings.
    let shared: [Int32] = (0..<40).map { Int32(($0 * 37 + 11) % 900 + 3) }
    let endings: [[Int32]] = [[501, 17, 88, 4, 900], [502, 6, 6, 6, 31, 77, 12, 5], [503]]

    /// Logits of the last prompt position, computed in full and from a restored prefix, agree within 1e-4 on
    /// every fixture family, and the restored keys and values are the computed ones bit for bit.
    func testRestoredPrefixGivesTheLogitsOfAFullPrefill() throws {
        for name in ["qwen2-tiny", "qwen3-tiny", "llama-tiny", "promptr1-tiny"] {
            let model = try TransformerModel.load(from: EngineFixtures.model(name))
            let prefix = PrefixCache(model: model, capacityBytes: 64 << 20)
            try prefix.prefill(shared)
            XCTAssertEqual(prefix.matchLength(shared), shared.count)
            for end in endings {
                let prompt = shared + end
                let full = try model.prefillAllLogits(tokens: prompt, cache: model.makeCache())
                let cache = model.makeCache()
                let reused = try prefix.restore(prompt, into: cache, limit: prompt.count - 1)
                XCTAssertEqual(reused, shared.count, name)
                XCTAssertEqual(cache.tokens, shared)
                let rest = try model.prefillAllLogits(tokens: Array(prompt[reused...]), cache: cache)
                for (k, l) in rest.enumerated() {
                    XCTAssertLessThan(EngineFixtures.maxAbsDiff(l, full[reused + k]), 1e-4, "\(name) position \(reused + k)")
                }
                // The prefix positions are copies of a full computation.
                let reference = model.makeCache()
                _ = try model.prefill(tokens: shared, cache: reference)
                for l in 0..<model.config.numHiddenLayers {
                    let n = shared.count * model.config.kvDim
                    XCTAssertTrue(
                        Array(UnsafeBufferPointer(start: cache.keys[l], count: n))
                            == Array(UnsafeBufferPointer(start: reference.keys[l], count: n)), "\(name) layer \(l) keys")
                }
            }
        }
    }

    private func run(
        _ sched: BatchScheduler, _ prompts: [[Int32]], maxTokens: Int = 12,
        sampling: SamplingParameters = .greedy
    ) async throws -> [GenerationResult] {
        let handles = prompts.map { sched.submit(GenerationRequest(prompt: $0, maxTokens: maxTokens, sampling: sampling)) }
        var out: [GenerationResult] = []
        for h in handles { out.append(try await h.result()) }
        return out
    }

    /// Greedy generations through the scheduler are token-identical with and without the prefix cache, and
    /// their log-probs agree within 1e-4; the cache reuses what it should: the pinned prefix for new prompts,
    /// the whole prompt (but its last token) for a retry.
    func testSchedulerWithCacheIsTokenIdenticalToWithout() async throws {
        for name in ["qwen2-tiny", "qwen3-tiny", "promptr1-tiny"] {
            let model = try TransformerModel.load(from: EngineFixtures.model(name))
            let plain = BatchScheduler(model: model)
            let cache = PrefixCache(model: model, capacityBytes: 64 << 20)
            let cached = BatchScheduler(model: model, prefixCache: cache)
            defer {
                plain.shutdown()
                cached.shutdown()
            }
            try cache.prefill(shared)
            let prompts = endings.map { shared + $0 }
            let sampled = SamplingParameters(temperature: 0.9, topK: 20, seed: 3)
            for p in [SamplingParameters.greedy, sampled] {
                let a = try await run(plain, prompts, sampling: p)
                let b = try await run(cached, prompts, sampling: p)
                for (x, y) in zip(a, b) {
                    XCTAssertEqual(x.tokens, y.tokens, name)
                    XCTAssertLessThan(EngineFixtures.maxAbsDiff(x.rawLogprobs, y.rawLogprobs), 1e-4, name)
                }
            }
            XCTAssertEqual(plain.prefillTokens.cached, 0)
            // First round: each prompt reuses the shared part; second round: each is a retry of a cached prompt.
            let first = endings.count * shared.count
            let second = prompts.reduce(0) { $0 + $1.count - 1 }
            XCTAssertEqual(cached.prefillTokens.cached, first + second, name)
            XCTAssertEqual(
                cached.prefillTokens.cached + cached.prefillTokens.computed,
                plain.prefillTokens.computed, "every prompt token is counted once, cached or not")
        }
    }

    /// Sequences submitted together with the same prompt (the n episodes of one request, a rollout group):
    /// one computes it, the others wait and copy it.
    func testConcurrentIdenticalPromptsComputeTheirPromptOnce() async throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen3-tiny"))
        let sched = BatchScheduler(model: model, maxStepTokens: 16, prefixCache: PrefixCache(model: model, capacityBytes: 64 << 20))
        defer { sched.shutdown() }
        let prompt = shared + endings[1]
        let results = try await run(sched, Array(repeating: prompt, count: 4), maxTokens: 10)
        let solo = Session(model: model)
        try solo.append(prompt)
        let expected = try solo.generate(maxTokens: 10)
        for r in results {
            XCTAssertEqual(r.tokens, expected.tokens)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(r.rawLogprobs, expected.rawLogprobs), 1e-4)
        }
        XCTAssertEqual(sched.prefillTokens.computed, prompt.count + 3)
        XCTAssertEqual(sched.prefillTokens.cached, 3 * (prompt.count - 1))
    }

    /// The cache holds at most its byte bound, evicting the least recently used entry; pinned entries stay; an
    /// entry that a longer prompt extends is replaced by it.
    func testLeastRecentlyUsedEvictionByBytes() throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen2-tiny"))
        let perPosition = 2 * model.config.numHiddenLayers * model.config.kvDim * 4
        let pinned: [Int32] = [1, 2, 3, 4, 5, 6, 7, 8]
        let a: [Int32] = Array(100..<120)
        let b: [Int32] = Array(200..<220)
        let c: [Int32] = Array(300..<320)
        let cache = PrefixCache(model: model, capacityBytes: perPosition * (pinned.count + 2 * a.count + 4))
        XCTAssertEqual(cache.bytesPerPosition, perPosition)
        try cache.prefill(pinned)
        try cache.prefill(a, pinned: false)
        try cache.prefill(b, pinned: false)
        XCTAssertEqual(cache.statistics.entries, 3)
        // Using a makes b the least recently used.
        XCTAssertEqual(try cache.restore(a + [9], into: model.makeCache(), limit: 100), a.count)
        try cache.prefill(c, pinned: false)
        XCTAssertEqual(cache.statistics.evictions, 1)
        XCTAssertEqual(cache.matchLength(b), 0)
        XCTAssertEqual(cache.matchLength(a), a.count)
        XCTAssertEqual(cache.matchLength(c), c.count)
        XCTAssertEqual(cache.matchLength(pinned), pinned.count)
        XCTAssertLessThanOrEqual(cache.statistics.bytes, cache.capacityBytes)
        // A longer prompt replaces the entry it extends.
        try cache.prefill(a + [7, 7, 7, 7], pinned: false)
        XCTAssertEqual(cache.matchLength(a + [7, 7, 7, 7]), a.count + 4)
        XCTAssertEqual(cache.statistics.entries, 3)
        // Nothing is kept when the cache is off, or for an entry larger than the bound.
        let off = PrefixCache(model: model, capacityBytes: 0)
        try off.prefill(a)
        XCTAssertEqual(off.statistics.entries, 0)
        try cache.prefill(Array(repeating: 5, count: 200), pinned: false)
        XCTAssertEqual(cache.matchLength(Array(repeating: 5, count: 200)), 0)
    }

    /// The 8-bit model restores and extends a prefix to the logits of its own full prefill, too.
    func testRestoredPrefixMatchesFullPrefillWithEightBitWeights() throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("promptr1-tiny"), weightFormat: .q8)
        let prefix = PrefixCache(model: model, capacityBytes: 64 << 20)
        try prefix.prefill(shared)
        for end in endings {
            let prompt = shared + end
            let full = try model.prefill(tokens: prompt, cache: model.makeCache())
            let cache = model.makeCache()
            let reused = try prefix.restore(prompt, into: cache, limit: prompt.count - 1)
            let l = try model.prefill(tokens: Array(prompt[reused...]), cache: cache)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(l, full), 1e-4, "ending \(end)")
        }
    }
}
