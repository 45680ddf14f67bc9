import Foundation
import GatewayTrainer
import PolicyEngine
import XCTest

/// A bigram softmax policy with exact gradients: log p(t[i+1] | t[i]) = log softmax(W[t[i]])[t[i+1]].
/// Lets the PPO trainer's gradient be checked against finite differences of its own loss.
final class BigramPolicy: PolicyGradientModel {
    let v: Int
    var w: [Double]
    var g: [Double]
    let ref: [Double]
    init(vocab: Int, seed: UInt64) {
        v = vocab
        var rng = Xoshiro256(seed: seed)
        w = (0..<(vocab * vocab)).map { _ in rng.nextUnit() * 2 - 1 }
        g = [Double](repeating: 0, count: vocab * vocab)
        ref = w.map { $0 + 0.1 }
    }
    func logSoftmaxRow(_ weights: [Double], _ row: Int) -> [Double] {
        let r = Array(weights[(row * v)..<((row + 1) * v)])
        let m = r.max()!
        let lse = m + log(r.reduce(0) { $0 + exp($1 - m) })
        return r.map { $0 - lse }
    }
    func lp(_ weights: [Double], _ tokens: [Int32]) -> [Float] {
        (0..<(tokens.count - 1)).map { i in Float(logSoftmaxRow(weights, Int(tokens[i]))[Int(tokens[i + 1])]) }
    }
    func forward(_ tokens: [Int32]) -> [Int32] { tokens }
    func logprobs(_ tape: [Int32]) -> [Float] { lp(w, tape) }
    func backward(_ tape: [Int32], dLogprobs: [Float]) {
        for i in 0..<(tape.count - 1) {
            let row = Int(tape[i])
            let tgt = Int(tape[i + 1])
            let ls = logSoftmaxRow(w, row)
            let d = Double(dLogprobs[i])
            for j in 0..<v { g[row * v + j] += d * ((j == tgt ? 1 : 0) - exp(ls[j])) }
        }
    }
    func tokenLogprobs(_ tokens: [Int32]) -> [Float] { lp(w, tokens) }
    func referenceLogprobs(_ tokens: [Int32]) -> [Float] { lp(ref, tokens) }
    func zeroGradients() { g = g.map { _ in 0 } }
    func clipGradients(maxNorm: Float) -> Float {
        let n = g.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if n > Double(maxNorm) { g = g.map { $0 * Double(maxNorm) / n } }
        return Float(n)
    }
    func saveState(to file: URL) throws { try JSONEncoder().encode(w).write(to: file) }
    func loadState(from file: URL) throws { w = try JSONDecoder().decode([Double].self, from: Data(contentsOf: file)) }
}

/// Plain SGD on the bigram weights.
final class BigramSGD: PolicyOptimizer {
    let model: BigramPolicy
    var steps = 0
    init(_ m: BigramPolicy) { model = m }
    func apply(learningRate: Float) {
        steps += 1
        for i in model.w.indices { model.w[i] -= Double(learningRate) * model.g[i] }
    }
    func saveState(to file: URL) throws { try JSONEncoder().encode(steps).write(to: file) }
    func loadState(from file: URL) throws { steps = try JSONDecoder().decode(Int.self, from: Data(contentsOf: file)) }
}

final class TrainerLoopTests: XCTestCase {
    /// Episodes over a vocabulary of 6 with masks like real ones (prompt 0s, turns 1s, injection 0s).
    static func episodes(_ policy: BigramPolicy, count: Int, seed: UInt64) -> [ScoredEpisode] {
        var rng = Xoshiro256(seed: seed)
        var out: [ScoredEpisode] = []
        for k in 0..<count {
            let n = 12 + Int(rng.next() % 6)
            let tokens = (0..<n).map { _ in Int32(rng.next() % 6) }
            var mask = [UInt8](repeating: 0, count: n)
            for i in 3..<7 { mask[i] = 1 }
            for i in 9..<n { mask[i] = 1 }
            // Behaviour log-probs near the current ones, so some ratios leave the clip range.
            let cur = policy.tokenLogprobs(tokens)
            var beh = [Float](repeating: 0, count: n)
            for t in 1..<n where mask[t] == 1 { beh[t] = cur[t - 1] + Float(rng.nextUnit() * 0.6 - 0.3) }
            let rec = TrainingSequenceFixture.sequence(id: "e\(k)", tokens: tokens, mask: mask, logprobs: beh)
            out.append(
                ScoredEpisode(
                    sequence: rec, source: .score(0.5), reward: TrainingReward(format: 1, answer: 0.5, exactMatch: nil, reward: 0.5),
                    advantage: rng.nextUnit() * 2 - 1, groupKey: "q\(k)", groupSize: 1))
        }
        return out
    }

    func testAccumulatedGradientMatchesFiniteDifferenceOfTheLoss() {
        let policy = BigramPolicy(vocab: 6, seed: 3)
        let eps = Self.episodes(policy, count: 5, seed: 11)
        var hyper = TrainingHyperparameters()
        hyper.ppo = PPOConfig(clip: 0.2, klCoef: 0.1)
        let trainer = PPOTrainer(model: policy, optimizer: BigramSGD(policy), episodes: eps, hyper: hyper)
        _ = trainer.prepare()
        let batch = [0, 2, 3, 4]
        policy.zeroGradients()
        trainer.accumulateGradients(batch)
        let grad = policy.g
        var maxErr = 0.0
        var maxG = 0.0
        let h = 1e-3
        for i in grad.indices {
            let w0 = policy.w[i]
            policy.w[i] = w0 + h
            let up = trainer.batchLoss(batch)
            policy.w[i] = w0 - h
            let down = trainer.batchLoss(batch)
            policy.w[i] = w0
            let fd = (up - down) / (2 * h)
            maxErr = max(maxErr, abs(fd - grad[i]))
            maxG = max(maxG, abs(grad[i]))
        }
        XCTAssertGreaterThan(maxG, 1e-3, "the gradient is not trivially zero")
        XCTAssertLessThan(maxErr, 2e-3 * max(1, maxG), "max |fd - grad| = \(maxErr), max |grad| = \(maxG)")
    }

    func testDeterministicAndResumable() throws {
        func train(epochs: Int, state: URL?, resume: Bool) throws -> [Double] {
            let policy = BigramPolicy(vocab: 6, seed: 3)
            let eps = Self.episodes(BigramPolicy(vocab: 6, seed: 3), count: 7, seed: 5)
            var hyper = TrainingHyperparameters()
            hyper.epochs = epochs
            hyper.gradAccum = 2
            hyper.learningRate = 0.5
            hyper.warmupSteps = 2
            hyper.seed = 42
            let trainer = PPOTrainer(model: policy, optimizer: BigramSGD(policy), episodes: eps, hyper: hyper)
            if resume, let state { XCTAssertTrue(try trainer.loadStateIfPresent(from: state)) }
            let kl = trainer.prepare()
            _ = try trainer.run(stateDirectory: state, klBefore: kl)
            return policy.w
        }
        let a = try train(epochs: 3, state: nil, resume: false)
        let b = try train(epochs: 3, state: nil, resume: false)
        XCTAssertEqual(a, b, "same seed, same result")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("trainer-state-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        // Two epochs, then resume to three: identical to three in one go.
        _ = try train(epochs: 2, state: dir, resume: false)
        let resumed = try train(epochs: 3, state: dir, resume: true)
        for (x, y) in zip(a, resumed) { XCTAssertEqual(x, y, accuracy: 1e-12) }
        XCTAssertNotEqual(a, BigramPolicy(vocab: 6, seed: 3).w, "training changed the weights")
    }

    func testEpochOrderIsASeededPermutation() {
        let policy = BigramPolicy(vocab: 6, seed: 3)
        let eps = Self.episodes(policy, count: 9, seed: 1)
        var hyper = TrainingHyperparameters()
        hyper.seed = 9
        let t = PPOTrainer(model: policy, optimizer: BigramSGD(policy), episodes: eps, hyper: hyper)
        XCTAssertEqual(t.order(epoch: 0).sorted(), Array(0..<9))
        XCTAssertEqual(t.order(epoch: 0), t.order(epoch: 0))
        XCTAssertNotEqual(t.order(epoch: 0), t.order(epoch: 1))
    }

    func testRecomputedBehaviourStartsAtRatioOne() {
        let policy = BigramPolicy(vocab: 6, seed: 3)
        let eps = Self.episodes(policy, count: 3, seed: 2)
        var hyper = TrainingHyperparameters()
        hyper.ppo = PPOConfig(clip: 0.2, klCoef: 0)
        hyper.recomputeBehaviour = true
        let t = PPOTrainer(model: policy, optimizer: BigramSGD(policy), episodes: eps, hyper: hyper)
        _ = t.prepare()
        // Ratio 1 everywhere: the loss is minus the token-weighted mean advantage.
        let tokens = eps.map { Double($0.sequence.policyTokenCount) }
        let expected = -zip(eps, tokens).reduce(0) { $0 + $1.0.advantage * $1.1 } / tokens.reduce(0, +)
        XCTAssertEqual(t.batchLoss([0, 1, 2]), expected, accuracy: 1e-6)
        // With the logged (perturbed) behaviour log-probs it differs.
        hyper.recomputeBehaviour = false
        let logged = PPOTrainer(model: policy, optimizer: BigramSGD(policy), episodes: eps, hyper: hyper)
        _ = logged.prepare()
        XCTAssertNotEqual(logged.batchLoss([0, 1, 2]), expected, accuracy: 1e-4)
    }
}
