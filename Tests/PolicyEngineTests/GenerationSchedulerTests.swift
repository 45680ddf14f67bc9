import Foundation
import XCTest

@testable import PolicyEngine

final class GenerationSchedulerTests: XCTestCase {
    let prompts: [[Int32]] = [
        [1000, 12, 345, 67, 8, 910, 11],
        [1001, 5, 600, 7, 88, 3, 3, 3, 900, 14, 15, 16, 17, 18, 19, 20, 21],
        [42],
    ]

    func solo(_ model: TransformerModel, _ prompt: [Int32], _ n: Int, _ p: SamplingParameters = .greedy) throws -> GenerationResult {
        let s = Session(model: model)
        try s.append(prompt)
        return try s.generate(maxTokens: n, sampling: p)
    }

    func testSequencesJoiningLaterMatchSoloRuns() async throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen2-tiny"))
        let sched = BatchScheduler(model: model, maxStepTokens: 8)  // long prompts take several steps
        defer { sched.shutdown() }
        let n = 24
        let a = sched.submit(GenerationRequest(prompt: prompts[0], maxTokens: n))
        // Let A run a few steps before B and C join.
        var aTokens: [Int32] = []
        var iterator = a.events.makeAsyncIterator()
        while aTokens.count < 5, let e = await iterator.next() {
            if case .token(let t, _) = e { aTokens.append(t.id) }
        }
        let sampled = SamplingParameters(temperature: 0.8, topK: 40, topP: 0.9, seed: 5)
        let b = sched.submit(GenerationRequest(prompt: prompts[1], maxTokens: n))
        let c = sched.submit(GenerationRequest(prompt: prompts[2], maxTokens: n, sampling: sampled))
        var aResult: GenerationResult?
        while let e = await iterator.next() {
            if case .finished(let r) = e { aResult = r }
        }
        let bResult = try await b.result()
        let cResult = try await c.result()
        XCTAssertEqual(aResult?.tokens, try solo(model, prompts[0], n).tokens)
        XCTAssertEqual(bResult.tokens, try solo(model, prompts[1], n).tokens)
        XCTAssertEqual(cResult.tokens, try solo(model, prompts[2], n, sampled).tokens)
        XCTAssertEqual(aResult?.finishReason, .length)
        XCTAssertEqual(bResult.tokens.count, n)
        let soloB = try solo(model, prompts[1], n)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(bResult.rawLogprobs, soloB.rawLogprobs), 1e-4)
        // The caches hold prompt + generated tokens except the last sampled one.
        XCTAssertEqual(b.cache.tokens, prompts[1] + bResult.tokens.dropLast())
        XCTAssertEqual(bResult.uncachedTokens, [bResult.tokens.last!])
        XCTAssertEqual(sched.runningCount, 0)
        // Fewer steps than running everything one after another.
        XCTAssertLessThan(sched.steps, 3 * n)
    }

    func testContinueASequenceThroughTheScheduler() async throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen3-tiny"))
        let sched = BatchScheduler(model: model)
        defer { sched.shutdown() }
        let first = sched.submit(GenerationRequest(prompt: prompts[0], maxTokens: 4))
        let r1 = try await first.result()
        let more: [Int32] = [1002, 1001, 77]
        let second = sched.submit(GenerationRequest(prompt: r1.uncachedTokens + more, maxTokens: 6), cache: first.cache)
        let r2 = try await second.result()
        let s = Session(model: model)
        try s.append(prompts[0] + r1.tokens + more)
        XCTAssertEqual(r2.tokens, try s.generate(maxTokens: 6).tokens)
        // A finished sequence's cache can be adopted by a Session.
        let adopted = Session(model: model, cache: second.cache, uncachedTokens: r2.uncachedTokens)
        XCTAssertEqual(adopted.tokens, prompts[0] + r1.tokens + more + r2.tokens)
        let fresh = Session(model: model)
        try fresh.append(adopted.tokens)
        XCTAssertLessThan(EngineFixtures.maxAbsDiff(try adopted.nextLogits(), try fresh.nextLogits()), 1e-4)
    }

    func testStopStringsCancellationAndFailures() async throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("qwen2-tiny"))
        // Token bytes: every token spells its id followed by a comma, so stop strings span tokens.
        let sched = BatchScheduler(model: model, tokenBytes: { Array("\($0),".utf8) })
        defer { sched.shutdown() }
        let reference = try solo(model, prompts[0], 10)
        let stop = "\(reference.tokens[3]),\(reference.tokens[4])"
        let r = try await sched.submit(
            GenerationRequest(
                prompt: prompts[0], maxTokens: 10,
                stop: StopConditions(strings: [stop]))
        ).result()
        XCTAssertEqual(r.finishReason, .stop)
        XCTAssertEqual(r.stopString, stop)
        XCTAssertEqual(r.tokens, Array(reference.tokens.prefix(5)))
        XCTAssertEqual(r.text, reference.tokens.prefix(5).map { "\($0)," }.joined().dropLast().description)

        // Streaming deltas add up to the text without the stop string.
        let streamed = sched.submit(GenerationRequest(prompt: prompts[0], maxTokens: 10, stop: StopConditions(strings: [stop])))
        var text: [UInt8] = []
        var final: GenerationResult?
        for await e in streamed.events {
            switch e {
            case .token(_, let delta): text += delta
            case .finished(let res): final = res
            case .failed(let m): XCTFail(m)
            }
        }
        XCTAssertEqual(String(decoding: text, as: UTF8.self), final?.textExcludingStop)
        XCTAssertTrue(final?.text.hasSuffix(stop) ?? false)

        // Cancel after the second token. The sequence runs alone, so it gains at most one token
        // per scheduler step; cancel() takes effect at the next step boundary, so at most the
        // step under way when it returns adds a token. Counting steps instead of time keeps the
        // bound exact however slowly this task reads the stream (a wall-clock or "fewer than N
        // tokens" bound failed on a loaded machine, where the worker ran far ahead of the reader).
        let stepsBefore = sched.steps
        let long = sched.submit(GenerationRequest(prompt: prompts[1], maxTokens: 10_000))
        var got = 0
        var stepsAtCancel = 0
        var cancelledResult: GenerationResult?
        for await e in long.events {
            switch e {
            case .token:
                got += 1
                if got == 2 {
                    long.cancel()
                    stepsAtCancel = sched.steps
                }
            case .finished(let res): cancelledResult = res
            case .failed(let m): XCTFail(m)
            }
        }
        XCTAssertEqual(cancelledResult?.finishReason, .cancelled)
        XCTAssertEqual(cancelledResult?.tokens.count, got)
        XCTAssertLessThanOrEqual(got, stepsAtCancel - stepsBefore + 1, "tokens generated after cancel() returned")

        // Invalid input fails only that sequence.
        do {
            _ = try await sched.submit(GenerationRequest(prompt: [99_999], maxTokens: 3)).result()
            XCTFail("expected failure")
        } catch let e as SchedulerError {
            XCTAssertTrue("\(e)".contains("99999"))
        }
        let zero = try await sched.submit(GenerationRequest(prompt: prompts[2], maxTokens: 0)).result()
        XCTAssertEqual(zero.finishReason, .length)
        XCTAssertEqual(zero.tokens, [])
    }

    func testDroppingTheStreamCancels() async throws {
        let model = try TransformerModel.load(from: EngineFixtures.model("llama-tiny"))
        let sched = BatchScheduler(model: model)
        defer { sched.shutdown() }
        do {
            let h = sched.submit(GenerationRequest(prompt: prompts[0], maxTokens: 100_000))
            let task = Task {
                for await e in h.events { if case .token = e { break } }
            }
            await task.value
        }
        let deadline = Date().addingTimeInterval(10)
        while sched.runningCount > 0 && Date() < deadline { try await Task.sleep(nanoseconds: 10_000_000) }
        XCTAssertEqual(sched.runningCount, 0)
    }
}
