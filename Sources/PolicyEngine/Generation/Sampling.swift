import Foundation

/// xoshiro256** seeded through SplitMix64: small, fast and reproducible across platforms.
public struct Xoshiro256: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var sm = seed
        func splitmix() -> UInt64 {
            sm &+= 0x9E37_79B9_7F4A_7C15
            var z = sm
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    @inline(__always)
    private static func rotl(_ x: UInt64, _ k: UInt64) -> UInt64 { (x << k) | (x >> (64 - k)) }

    public mutating func next() -> UInt64 {
        let result = Self.rotl(s.1 &* 5, 7) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = Self.rotl(s.3, 45)
        return result
    }

    /// Uniform double in [0, 1) with 53 random bits.
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// How to pick the next token. Applied in Hugging Face's order: temperature, then top-k, then top-p.
public struct SamplingParameters: Sendable, Equatable {
    /// 0 means greedy (argmax).
    public var temperature: Float
    /// 0 (or >= vocab) disables top-k.
    public var topK: Int
    /// 1 disables top-p (nucleus).
    public var topP: Float
    /// Seed of the per-sequence RNG; nil draws one from the system RNG.
    public var seed: UInt64?

    public init(temperature: Float = 1, topK: Int = 0, topP: Float = 1, seed: UInt64? = nil) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.seed = seed
    }

    public static let greedy = SamplingParameters(temperature: 0)

    /// Parameters from generation_config.json (`do_sample: false` means greedy).
    public init(defaults d: GenerationDefaults, seed: UInt64? = nil) {
        if d.doSample == false {
            self.init(temperature: 0, seed: seed)
        } else {
            self.init(temperature: d.temperature ?? 1, topK: d.topK ?? 0, topP: d.topP ?? 1, seed: seed)
        }
    }

    public var isGreedy: Bool { temperature <= 0 }
}

/// A sampled token and its log-probabilities.
public struct SampledToken: Sendable, Equatable {
    public var id: Int32
    /// Log-probability of `id` under the distribution actually sampled from: softmax(logits / temperature)
    /// restricted to the top-k / top-p candidate set and renormalised. 0 for greedy decoding (a point
    /// mass on the argmax).
    public var logprob: Float
    /// log_softmax(logits)[id] of the raw model logits (temperature 1, no truncation): the policy
    /// log-probability an RL trainer needs.
    public var rawLogprob: Float
}

/// Turns logits into tokens. Owns its RNG and scratch buffers, so one sampler per sequence; no
/// allocation per token after the first call.
public final class Sampler {
    public let parameters: SamplingParameters
    private var rng: Xoshiro256
    private var probs: [Float] = []
    private var candidates: [Int32] = []

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        rng = Xoshiro256(seed: parameters.seed ?? UInt64.random(in: .min ... .max))
    }

    /// Raw log_softmax(logits)[id].
    public static func logSoftmax(_ logits: UnsafeBufferPointer<Float>, at id: Int) -> Float {
        guard let base = logits.baseAddress else { return -.infinity }
        let m = VectorMath.max(base, logits.count)
        let sum = VectorMath.sumExp(base, logits.count, shift: m)
        return Float(Double(logits[id] - m) - Foundation.log(sum))
    }

    public static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int {
        var best = 0
        var bv = -Float.infinity
        for i in 0..<logits.count where logits[i] > bv {
            bv = logits[i]
            best = i
        }
        return best
    }

    public static func argmax(_ logits: [Float]) -> Int { logits.withUnsafeBufferPointer { argmax($0) } }

    public func sample(_ logits: [Float]) -> SampledToken {
        logits.withUnsafeBufferPointer { sample($0) }
    }

    public func sample(_ logits: UnsafeBufferPointer<Float>) -> SampledToken {
        precondition(!logits.isEmpty, "Sampler: empty logits")
        if parameters.isGreedy {
            let id = Self.argmax(logits)
            return SampledToken(id: Int32(id), logprob: 0, rawLogprob: Self.logSoftmax(logits, at: id))
        }
        let d = distribution(logits)
        let id = draw(d, excluding: nil, mass: d.total)
        return token(id, d, logits)
    }

    /// Speculative decoding's check of one draft token against the logits the model gives at its position
    /// (prompt-lookup drafts are a point mass, so this is speculative sampling with a deterministic draft):
    /// - greedy: the draft is accepted when it is the argmax; otherwise the argmax is emitted;
    /// - sampled: the draft `d` is accepted with probability p(d), p the distribution `sample` draws from
    ///   (temperature, top-k, top-p); otherwise a token is drawn from p without `d`, renormalised.
    /// Either way the emitted token is distributed as p, and its log-probs are the model's (as `sample`).
    public func verify(_ logits: UnsafeBufferPointer<Float>, draft: Int32) -> (token: SampledToken, accepted: Bool) {
        precondition(!logits.isEmpty, "Sampler: empty logits")
        if parameters.isGreedy {
            let t = sample(logits)
            return (t, t.id == draft)
        }
        let d = distribution(logits)
        let p = probability(Int(draft), d)
        if rng.nextUnit() < p { return (token(Int(draft), d, logits), true) }
        let rest = d.total * (1 - p)  // what is left of the candidates' (unnormalised) mass without the draft
        // Rounding can leave no mass outside a draft of probability ~1: then the draft is the only choice.
        guard rest > 0 else { return (token(Int(draft), d, logits), true) }
        return (token(draw(d, excluding: Int(draft), mass: rest), d, logits), false)
    }

    /// The sampling distribution of one logits row: softmax(logits / temperature) in `probs`, over the whole
    /// vocabulary or over `candidates[..<keep]` (top-k / top-p), whose mass is `total`.
    private struct Distribution {
        var keep: Int?
        var total: Double
        var maxLogit: Float
        var logSumRaw: Double
    }

    private func distribution(_ logits: UnsafeBufferPointer<Float>) -> Distribution {
        let p = parameters
        let n = logits.count
        if probs.count != n { probs = [Float](repeating: 0, count: n) }
        // Softmax of logits / temperature (into `probs`), plus the raw log-sum-exp.
        let base = logits.baseAddress!
        let m = VectorMath.max(base, n)
        let invT = 1 / p.temperature
        let sumRaw = VectorMath.sumExp(base, n, shift: m)
        probs.withUnsafeMutableBufferPointer { pr in
            let sumT = VectorMath.sumExp(base, n, shift: m, scale: invT, out: pr.baseAddress!)
            let inv = Float(1 / sumT)
            for i in 0..<n { pr[i] *= inv }
        }
        let logSumRaw = Foundation.log(sumRaw)
        let useTopK = p.topK > 0 && p.topK < n
        let useTopP = p.topP < 1
        if !useTopK && !useTopP { return Distribution(keep: nil, total: 1, maxLogit: m, logSumRaw: logSumRaw) }
        // Candidate set: the smallest set of top tokens that can contain the top-k / nucleus. Start with a
        // probability threshold and lower it until enough mass (or count) is covered, then sort only those.
        var threshold: Float = 1e-4
        while true {
            candidates.removeAll(keepingCapacity: true)
            var mass: Float = 0
            for i in 0..<n where probs[i] >= threshold {
                candidates.append(Int32(i))
                mass += probs[i]
            }
            let enoughK = !useTopK || candidates.count >= p.topK
            let enoughP = !useTopP || mass >= p.topP
            if (enoughK && enoughP) || threshold == 0 { break }
            threshold = threshold < 1e-30 ? 0 : threshold * 1e-3
        }
        candidates.sort { probs[Int($0)] > probs[Int($1)] || (probs[Int($0)] == probs[Int($1)] && $0 < $1) }
        var keep = candidates.count
        if useTopK { keep = min(keep, p.topK) }
        if useTopP {
            var cum: Float = 0
            var k = 0
            while k < keep {
                cum += probs[Int(candidates[k])]
                k += 1
                if cum >= p.topP { break }
            }
            keep = max(k, 1)
        }
        var total: Double = 0
        for j in 0..<keep { total += Double(probs[Int(candidates[j])]) }
        return Distribution(keep: keep, total: total, maxLogit: m, logSumRaw: logSumRaw)
    }

    /// Probability of `id` under `d` (0 outside its candidate set).
    private func probability(_ id: Int, _ d: Distribution) -> Double {
        guard let keep = d.keep else { return Double(probs[id]) }
        for j in 0..<keep where Int(candidates[j]) == id { return Double(probs[id]) / d.total }
        return 0
    }

    /// A draw from `d` without `excluded`, whose removal leaves `mass` (of `d.total`).
    private func draw(_ d: Distribution, excluding excluded: Int?, mass: Double) -> Int {
        guard let keep = d.keep else { return drawFromAll(probs.count, excluding: excluded, mass: mass) }
        let u = rng.nextUnit() * mass
        var acc: Double = 0
        var chosen = -1
        for j in 0..<keep where Int(candidates[j]) != excluded {
            let c = Int(candidates[j])
            acc += Double(probs[c])
            chosen = c
            if u < acc { break }
        }
        return chosen
    }

    private func token(_ id: Int, _ d: Distribution, _ logits: UnsafeBufferPointer<Float>) -> SampledToken {
        let lp: Float =
            d.keep == nil
            ? Foundation.log(max(probs[id], .leastNonzeroMagnitude))
            : Float(Foundation.log(Double(probs[id])) - Foundation.log(d.total))
        return SampledToken(
            id: Int32(id), logprob: lp, rawLogprob: Float(Double(logits[id] - d.maxLogit) - d.logSumRaw))
    }

    private func drawFromAll(_ n: Int, excluding excluded: Int?, mass: Double) -> Int {
        let u = rng.nextUnit() * mass
        var acc: Double = 0
        var last = 0
        for i in 0..<n where probs[i] > 0 && i != excluded {
            acc += Double(probs[i])
            last = i
            if u < acc { return i }
        }
        return last
    }
}
