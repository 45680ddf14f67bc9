import Foundation
import XCTest

@testable import PolicyEngine

final class GenerationSessionTests: XCTestCase {
    func fixtureModel(_ name: String = "qwen3-tiny") throws -> TransformerModel {
        try TransformerModel.load(from: EngineFixtures.model(name))
    }

    let promptA: [Int32] = [1000, 12, 345, 67, 8, 910, 11]
    let promptB: [Int32] = [1001, 5, 600, 7, 88]

    func testContinuationFromCacheEqualsFullPrefill() throws {
        for name in ["qwen2-tiny", "qwen3-tiny", "llama-tiny"] {
            let model = try fixtureModel(name)
            let s = Session(model: model, initialCapacity: 2)  // forces cache growth
            try s.append(promptA)
            let gen = try s.generate(maxTokens: 6)
            XCTAssertEqual(gen.uncachedTokens, [gen.tokens.last!])
            try s.append(promptB)
            let continued = try s.nextLogits()
            let full = try model.prefill(tokens: promptA + gen.tokens + promptB, cache: model.makeCache())
            XCTAssertEqual(s.tokens, promptA + gen.tokens + promptB)
            XCTAssertEqual(s.cache.count, s.tokens.count)
            XCTAssertLessThan(EngineFixtures.maxAbsDiff(continued, full), 1e-4, name)
        }
    }

    func testChunkedPrefillEqualsOneShot() throws {
        let model = try fixtureModel("llama-tiny")
        let tokens = (0..<40).map { Int32(($0 * 37) % 1000) }
        let one = try model.prefillAllLogits(tokens: tokens, cache: model.makeCache())
        let cache = model.makeCache(initialCapacity: 3)
        var chunked: [[Float]] = []
        var i = 0
        for size in [1, 5, 13, 1, 20] {
            chunked += try model.prefillAllLogits(tokens: Array(tokens[i..<(i + size)]), cache: cache)
            i += size
        }
        XCTAssertEqual(cache.tokens, tokens)
        for p in 0..<tokens.count { XCTAssertLessThan(EngineFixtures.maxAbsDiff(one[p], chunked[p]), 1e-4, "pos \(p)") }
    }

    func testBatchedDecodeEqualsSingle() throws {
        let model = try fixtureModel("qwen2-tiny")
        let prompts: [[Int32]] = [promptA, promptB, [3], (0..<30).map { Int32($0 * 11) }]
        let batchCaches = prompts.map { _ in model.makeCache(initialCapacity: 4) }
        let soloCaches = prompts.map { _ in model.makeCache(initialCapacity: 4) }
        var nextBatch: [Int32] = []
        var nextSolo: [Int32] = []
        for (i, p) in prompts.enumerated() {
            let l1 = try model.prefill(tokens: p, cache: batchCaches[i])
            let l2 = try model.prefill(tokens: p, cache: soloCaches[i])
            nextBatch.append(Int32(Sampler.argmax(l1)))
            nextSolo.append(Int32(Sampler.argmax(l2)))
        }
        for _ in 0..<8 {
            let batched = try model.decode(zip(nextBatch, batchCaches).map { (token: $0, cache: $1) })
            for i in prompts.indices {
                let solo = try model.decode([(token: nextSolo[i], cache: soloCaches[i])])[0]
                XCTAssertLessThan(EngineFixtures.maxAbsDiff(batched[i], solo), 1e-5)
                nextBatch[i] = Int32(Sampler.argmax(batched[i]))
                nextSolo[i] = Int32(Sampler.argmax(solo))
            }
            XCTAssertEqual(nextBatch, nextSolo)
        }
    }

    func testMixedPrefillAndDecodeStep() throws {
        let model = try fixtureModel("qwen3-tiny")
        let c1 = model.makeCache()
        let c2 = model.makeCache()
        let ref1 = model.makeCache()
        let ref2 = model.makeCache()
        _ = try model.prefill(tokens: promptA, cache: c1)
        _ = try model.prefill(tokens: promptA, cache: ref1)
        var got: [Int: [[Float]]] = [:]
        try model.forward([ForwardRequest(tokens: [42], cache: c1), ForwardRequest(tokens: promptB, cache: c2, logits: .all)]) {
            got[$0, default: []].append(Array($2))
        }
        let r1 = try model.prefill(tokens: [42], cache: ref1)
        let r2 = try model.prefillAllLogits(tokens: promptB, cache: ref2)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(got[0]![0], r1), 1e-5)
        XCTAssertEqual(got[1]!.count, promptB.count)
        for i in promptB.indices { XCTAssertLessThan(EngineFixtures.maxAbsDiff(got[1]![i], r2[i]), 1e-5) }
    }

    func testTruncateAndRegenerateIsDeterministic() throws {
        let model = try fixtureModel()
        let s = Session(model: model)
        try s.append(promptA)
        let first = try s.generate(maxTokens: 8)
        s.truncate(to: promptA.count)
        XCTAssertEqual(s.cache.count, promptA.count)
        let second = try s.generate(maxTokens: 8)
        XCTAssertEqual(first.tokens, second.tokens)
        // The first token's logits are recomputed through the single-row path: equal up to rounding.
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(first.rawLogprobs, second.rawLogprobs), 1e-5)
        // Seeded sampling is reproducible too.
        s.truncate(to: promptA.count)
        let p = SamplingParameters(temperature: 0.9, topK: 50, topP: 0.95, seed: 77)
        let a = try s.generate(maxTokens: 8, sampling: p)
        s.truncate(to: promptA.count)
        let b = try s.generate(maxTokens: 8, sampling: p)
        XCTAssertEqual(a, b)
    }

    func testStopTokenCancellationAndErrors() throws {
        let model = try fixtureModel()
        let s = Session(model: model)
        try s.append(promptA)
        let free = try s.generate(maxTokens: 5)
        s.truncate(to: promptA.count)
        let stopped = try s.generate(maxTokens: 5, stop: StopConditions(tokenIds: [free.tokens[2]]))
        XCTAssertEqual(stopped.finishReason, .stop)
        XCTAssertEqual(stopped.tokens, Array(free.tokens.prefix(through: free.tokens.firstIndex(of: free.tokens[2])!)))
        s.truncate(to: promptA.count)
        let flag = CancellationFlag()
        var n = 0
        let cancelled = try s.generate(maxTokens: 50, cancellation: flag) { _, _ in
            n += 1
            if n == 3 { flag.cancel() }
        }
        XCTAssertEqual(cancelled.finishReason, .cancelled)
        XCTAssertEqual(cancelled.tokens.count, 3)
        XCTAssertThrowsError(try s.append([5000])) { XCTAssertEqual($0 as? ModelError, .tokenOutOfRange(token: 5000, vocabSize: 1024)) }
        XCTAssertThrowsError(try model.decode([(token: 1, cache: KVCache(numLayers: 3, kvDim: 64, maxPositions: 10))]))
        let c = model.makeCache()
        XCTAssertThrowsError(try model.decode([(token: 1, cache: c), (token: 2, cache: c)])) {
            XCTAssertEqual($0 as? ModelError, .duplicateCache)
        }
    }

    func testCacheCopyForksASequence() throws {
        let model = try fixtureModel()
        let c = model.makeCache()
        _ = try model.prefill(tokens: promptA, cache: c)
        let fork = c.copy()
        let a = try model.prefill(tokens: promptB, cache: c)
        let b = try model.prefill(tokens: promptB, cache: fork)
        XCTAssertEqual(a, b)
        XCTAssertEqual(fork.commonPrefixLength(with: promptA + [1]), promptA.count)
    }

    func testLogProbabilitiesMatchGeneration() throws {
        let model = try fixtureModel("qwen2-tiny")
        let s = Session(model: model)
        try s.append(promptA)
        let r = try s.generate(maxTokens: 10, sampling: SamplingParameters(temperature: 1.2, seed: 11))
        let scored = try model.logProbabilities(of: r.tokens, after: promptA)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(scored, r.rawLogprobs), 1e-4)
        let c = model.makeCache()
        _ = try model.prefill(tokens: promptA, cache: c)
        let again = try model.logProbabilities(of: r.tokens, after: promptA, cache: c)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(again, scored), 1e-4)
        XCTAssertEqual(c.tokens, promptA + r.tokens.dropLast())
        XCTAssertThrowsError(try model.logProbabilities(of: [1], after: [2, 3], cache: c))
    }

    func testLongPromptIsPrefilledInChunks() throws {
        let model = try fixtureModel("qwen2-tiny")
        let tokens = (0..<45).map { Int32(($0 * 7919) % 1000) }
        let chunked = try model.prefill(tokens: tokens, cache: model.makeCache(), chunkSize: 16)
        let all = try model.prefillAllLogits(tokens: tokens, cache: model.makeCache(), chunkSize: 7)
        XCTAssertEqual(all.count, 45)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(all[44], chunked), 1e-4)
        var oneShot: [Float] = []
        try model.forward([ForwardRequest(tokens: tokens, cache: model.makeCache())]) { _, _, l in oneShot = Array(l) }
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(chunked, oneShot), 1e-4)
    }

    /// A prompt longer than one attention block, run in one step, matches token-by-token decoding.
    func testBlockedPrefillAttentionMatchesIncrementalDecode() throws {
        let model = try fixtureModel("qwen3-tiny")
        let tokens = (0..<300).map { Int32(($0 * 389) % 1000) }
        let all = try model.prefillAllLogits(tokens: tokens, cache: model.makeCache())
        let cache = model.makeCache(initialCapacity: 1)
        for (i, t) in tokens.enumerated() {
            let l = try model.decode([(token: t, cache: cache)])[0]
            if i % 37 == 0 || i == 299 { XCTAssertLessThan(EngineFixtures.maxAbsDiff(l, all[i]), 1e-4, "pos \(i)") }
        }
    }
}
