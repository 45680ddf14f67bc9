import Foundation
import XCTest

@testable import PolicyEngine

final class GenerationSamplingTests: XCTestCase {
    let logits: [Float] = [log(0.5), log(0.3), log(0.2)].map { Float($0) + 3 }

    func testXoshiroIsReproducible() {
        var a = Xoshiro256(seed: 123)
        var b = Xoshiro256(seed: 123)
        var c = Xoshiro256(seed: 124)
        let xa = (0..<5).map { _ in a.next() }
        let xb = (0..<5).map { _ in b.next() }
        let xc = (0..<5).map { _ in c.next() }
        XCTAssertEqual(xa, xb)
        XCTAssertNotEqual(xa, xc)
        for _ in 0..<1000 {
            let u = a.nextUnit()
            XCTAssertTrue(u >= 0 && u < 1)
        }
    }

    func testGreedy() {
        let s = Sampler(.greedy).sample([0.1, 2, -1, 1.9])
        XCTAssertEqual(s.id, 1)
        XCTAssertEqual(s.logprob, 0)
        let expected = 2 - log(exp(0.1) + exp(2) + exp(-1) + exp(1.9))
        XCTAssertEqual(s.rawLogprob, Float(expected), accuracy: 1e-6)
    }

    func testSeededSamplingIsReproducibleAndMatchesDistribution() {
        let p = SamplingParameters(temperature: 1, seed: 9)
        let a = Sampler(p)
        let b = Sampler(p)
        var counts = [0, 0, 0]
        for _ in 0..<6000 {
            let x = a.sample(logits)
            let y = b.sample(logits)
            XCTAssertEqual(x, y)
            counts[Int(x.id)] += 1
            XCTAssertEqual(x.logprob, x.rawLogprob, accuracy: 1e-5)  // temperature 1, no truncation
        }
        XCTAssertEqual(Double(counts[0]) / 6000, 0.5, accuracy: 0.03)
        XCTAssertEqual(Double(counts[1]) / 6000, 0.3, accuracy: 0.03)
        XCTAssertEqual(Double(counts[2]) / 6000, 0.2, accuracy: 0.03)
    }

    func testTemperatureTopKTopPLogprobs() {
        // temperature 0.5 squares the probabilities: 0.25, 0.09, 0.04 (sum 0.38).
        let t = Sampler(SamplingParameters(temperature: 0.5, seed: 1))
        for _ in 0..<50 {
            let s = t.sample(logits)
            let q: [Double] = [0.25, 0.09, 0.04]
            XCTAssertEqual(Double(s.logprob), log(q[Int(s.id)] / 0.38), accuracy: 1e-5)
            XCTAssertEqual(Double(s.rawLogprob), log([0.5, 0.3, 0.2][Int(s.id)]), accuracy: 1e-5)
        }
        // top-k 2: {0, 1} renormalised.
        let k = Sampler(SamplingParameters(temperature: 1, topK: 2, seed: 2))
        var seen = Set<Int32>()
        for _ in 0..<300 {
            let s = k.sample(logits)
            seen.insert(s.id)
            XCTAssertEqual(Double(s.logprob), log([0.5, 0.3][Int(s.id)] / 0.8), accuracy: 1e-5)
        }
        XCTAssertEqual(seen, [0, 1])
        // top-p 0.6 keeps {0, 1} (0.5 < 0.6, then 0.8); top-p 0.5 keeps {0} (HF semantics).
        let p6 = Sampler(SamplingParameters(temperature: 1, topP: 0.6, seed: 3))
        XCTAssertEqual(Set((0..<300).map { _ in p6.sample(logits).id }), [0, 1])
        let p5 = Sampler(SamplingParameters(temperature: 1, topP: 0.5, seed: 3))
        let only = p5.sample(logits)
        XCTAssertEqual(only.id, 0)
        XCTAssertEqual(only.logprob, 0, accuracy: 1e-6)
        XCTAssertEqual(Sampler(SamplingParameters(temperature: 1, topK: 1, seed: 5)).sample([0, 5, 1]).id, 1)
    }

    func testTopPOnLargeFlatVocabulary() {
        // 30k equal logits: every probability is below the first candidate threshold.
        let flat = [Float](repeating: 0, count: 30_000)
        let s = Sampler(SamplingParameters(temperature: 1, topP: 0.5, seed: 4))
        var ids = Set<Int32>()
        for _ in 0..<10 {
            let x = s.sample(flat)
            ids.insert(x.id)
            XCTAssertLessThan(x.id, 15_001)  // ties sorted by id: the nucleus is the first half
            XCTAssertEqual(Double(x.logprob), log(1.0 / 15_000), accuracy: 1e-3)
        }
        XCTAssertGreaterThan(ids.count, 7)
    }

    func bytesOf(_ table: [Int32: String]) -> (Int32) -> [UInt8] { { Array((table[$0] ?? "").utf8) } }

    func testStopStringSpanningTokensIsCutExactly() throws {
        let table: [Int32: String] = [
            1: "<think>a</think><inter", 2: "action_pro", 3: "mpt>{\"x\"}</interaction_", 4: "prompt>\nMORE", 5: "zz",
        ]
        var t = try GenerationTracker(
            maxTokens: 10, stop: StopConditions(strings: ["</interaction_prompt>"]),
            tokenBytes: bytesOf(table))
        for id: Int32 in [1, 2, 3] { XCTAssertNil(t.add(SampledToken(id: id, logprob: -1, rawLogprob: -2))) }
        XCTAssertEqual(t.add(SampledToken(id: 4, logprob: -1, rawLogprob: -2)), .stop)
        let r = t.result(.stop, uncached: [4])
        XCTAssertEqual(r.text, "<think>a</think><interaction_prompt>{\"x\"}</interaction_prompt>")
        XCTAssertEqual(r.stopString, "</interaction_prompt>")
        XCTAssertEqual(r.textExcludingStop, "<think>a</think><interaction_prompt>{\"x\"}")
        XCTAssertEqual(r.tokens, [1, 2, 3, 4])
        XCTAssertEqual(r.stopStringRange?.upperBound, r.bytes.count)
        XCTAssertNil(r.stopTokenId)
    }

    func testEarliestStopWinsAndStopTokenExcluded() throws {
        let table: [Int32: String] = [1: "ab", 2: "cXYd", 9: "<eos>"]
        var t = try GenerationTracker(
            maxTokens: 10, stop: StopConditions(tokenIds: [9], strings: ["d", "XY", "bcX"]),
            tokenBytes: bytesOf(table))
        XCTAssertNil(t.add(SampledToken(id: 1, logprob: 0, rawLogprob: 0)))
        XCTAssertEqual(t.add(SampledToken(id: 2, logprob: 0, rawLogprob: 0)), .stop)
        XCTAssertEqual(t.stopString, "bcX")
        XCTAssertEqual(String(decoding: t.bytes, as: UTF8.self), "abcX")

        var u = try GenerationTracker(maxTokens: 10, stop: StopConditions(tokenIds: [9], strings: ["zzz"]), tokenBytes: bytesOf(table))
        XCTAssertNil(u.add(SampledToken(id: 1, logprob: 0, rawLogprob: 0)))
        XCTAssertEqual(u.add(SampledToken(id: 9, logprob: 0, rawLogprob: 0)), .stop)
        let r = u.result(.stop, uncached: [])
        XCTAssertEqual(r.stopTokenId, 9)
        XCTAssertEqual(r.text, "ab")

        var v = try GenerationTracker(maxTokens: 2, stop: StopConditions(), tokenBytes: nil)
        XCTAssertNil(v.add(SampledToken(id: 1, logprob: 0, rawLogprob: 0)))
        XCTAssertEqual(v.add(SampledToken(id: 1, logprob: 0, rawLogprob: 0)), .length)
        XCTAssertThrowsError(try GenerationTracker(maxTokens: 2, stop: StopConditions(strings: ["x"]), tokenBytes: nil))
        XCTAssertThrowsError(try GenerationTracker(maxTokens: 2, stop: StopConditions(strings: [""]), tokenBytes: bytesOf(table)))
    }

    func testStreamingDeltasHoldBackStopPrefixesAndPartialUTF8() throws {
        // "é" is C3 A9; token 2 ends in the middle of it. Stop string "</a>" arrives split over 3 tokens.
        let raw: [Int32: [UInt8]] = [1: Array("hi <".utf8), 2: [0x2F, 0xC3], 3: [0xA9, 0x3C], 4: Array("/a>tail".utf8)]
        let stop = StopConditions(strings: ["</a>"])
        var t = try GenerationTracker(maxTokens: 10, stop: stop, tokenBytes: { raw[$0] ?? [] })
        var deltas: [[UInt8]] = []
        for id: Int32 in [1, 2, 3, 4] {
            let r = t.add(SampledToken(id: id, logprob: 0, rawLogprob: 0))
            deltas.append(t.takeDelta(finished: r != nil))
        }
        XCTAssertEqual(deltas[0], Array("hi ".utf8))  // "<" may start "</a>"
        XCTAssertEqual(deltas[1], Array("</".utf8))  // "</" + C3 cannot be "</a>"; half an é is held
        XCTAssertEqual(deltas[2], Array("é".utf8))  // trailing "<" held back again
        XCTAssertEqual(deltas[3], [])  // the stop string itself is never streamed
        XCTAssertEqual(deltas.flatMap { $0 }, Array(t.result(.stop, uncached: []).textExcludingStop.utf8))
        XCTAssertEqual(t.stopString, "</a>")
    }
}
