import Foundation
import GatewayTrainer
import PolicyEngine
import XCTest

/// Reward, advantage and PPO/KL math against hand-computed values and finite differences.
final class ObjectiveTests: XCTestCase {
    func testRewardCombination() {
        // fmt == 1: -1 + 1 + F1.
        XCTAssertEqual(TrainingReward.combine(format: 1.0, answer: 0.5), 0.5, accuracy: 1e-12)
        // fmt < 1: the answer term is ignored.
        XCTAssertEqual(TrainingReward.combine(format: 0.9, answer: 1.0), -0.1, accuracy: 1e-12)
        XCTAssertEqual(TrainingReward.combine(format: 0, answer: 1.0), -1, accuracy: 1e-12)
        // References: "the Eiffel Tower" vs "Eiffel Tower in Paris": normalised tokens
        // [eiffel, tower] vs [eiffel, tower, in, paris]: P = 1, R = 0.5, F1 = 2/3.
        let r = TrainingReward.compute(format: 1.0, answer: "the Eiffel Tower", source: .references(["Eiffel Tower in Paris", "Louvre"]))
        XCTAssertEqual(r.answer, 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(r.reward, 2.0 / 3.0, accuracy: 1e-12)
        XCTAssertEqual(r.exactMatch, 0)
        XCTAssertEqual(TrainingReward.compute(format: 1.0, answer: "Paris.", source: .references(["paris"])).exactMatch, 1)
        // No answer: the answer term is 0.
        XCTAssertEqual(TrainingReward.compute(format: 0.4, answer: nil, source: .references(["x"])).reward, -0.6, accuracy: 1e-12)
        // A feedback score stands in for F1 (clamped to [0, 1]).
        XCTAssertEqual(TrainingReward.compute(format: 1.0, answer: "whatever", source: .score(0.25)).reward, 0.25, accuracy: 1e-12)
        XCTAssertEqual(TrainingReward.compute(format: 0.5, answer: "whatever", source: .score(0.9)).reward, -0.5, accuracy: 1e-12)
        XCTAssertEqual(TrainingReward.compute(format: 1.0, answer: nil, source: .score(7)).reward, 1.0, accuracy: 1e-12)
    }

    func testGRPOAdvantages() {
        // mean 0.5; deviations 0.5,-0.5,-0.5,0.5,0; sample variance (4 * 0.25) / 4 = 0.25; std 0.5.
        let a = Advantages.grpo([1, 0, 0, 1, 0.5])
        let s = 0.5 + Advantages.epsilon
        for (x, e) in zip(a, [0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0]) { XCTAssertEqual(x, e, accuracy: 1e-12) }
        // Two values: mean 0, sample std sqrt(2) for [-1, 1].
        let b = Advantages.grpo([-1, 1])
        XCTAssertEqual(b[0], -1 / (2.0.squareRoot() + 1e-6), accuracy: 1e-12)
        XCTAssertEqual(b[1], 1 / (2.0.squareRoot() + 1e-6), accuracy: 1e-12)
        // All equal: nothing to learn.
        XCTAssertEqual(Advantages.grpo([0.3, 0.3, 0.3]), [0, 0, 0])
        XCTAssertEqual(Advantages.grpo([0.7]), [0])
    }

    func testRunningBaseline() {
        var b = RunningBaseline()
        XCTAssertEqual(b.advantage(1.0), 1.0)  // baseline 0
        XCTAssertEqual(b.advantage(0.0), -1.0)  // baseline 1
        XCTAssertEqual(b.advantage(0.5), 0.0)  // baseline (1 + 0) / 2
        XCTAssertEqual(b.advantage(-1.0), -1.5)  // baseline 0.5
        XCTAssertEqual(b.mean, 0.125, accuracy: 1e-12)
    }

    func testPPOTokenLossHandComputed() {
        let c = PPOConfig(clip: 0.2, klCoef: 0.1)
        // r = e^0.2 = 1.2214 > 1.2 with A = 2: the clipped term 1.2 * 2 is the minimum and
        // its gradient is 0; the KL (ref = logp) is 0 with gradient 0.
        var t = PPOObjective.evaluate(PolicyTokenTerms(logp: [-1.0], oldLogp: [-1.2], refLogp: [-1.0], advantage: 2), config: c)
        XCTAssertEqual(t.lossSum, -2.4, accuracy: 1e-6)
        XCTAssertEqual(t.dLogp[0], 0, accuracy: 1e-7)
        XCTAssertEqual(t.clipped, 1)
        // Same ratio with A = -2: the unclipped -2.4428 is the minimum: loss 2.4428, dL/dlogp = -rA = 2.4428.
        t = PPOObjective.evaluate(PolicyTokenTerms(logp: [-1.0], oldLogp: [-1.2], refLogp: [-1.0], advantage: -2), config: c)
        let r = exp(0.2)
        XCTAssertEqual(t.lossSum, 2 * r, accuracy: 1e-5)
        XCTAssertEqual(Double(t.dLogp[0]), 2 * r, accuracy: 1e-5)
        XCTAssertEqual(t.clipped, 0)
        // KL: ref - logp = 0.5: k3 = e^0.5 - 0.5 - 1 = 0.148721; dk/dlogp = 1 - e^0.5 = -0.648721.
        // Ratio 1 (old = logp), A = 0: only the KL term.
        t = PPOObjective.evaluate(PolicyTokenTerms(logp: [-2.0], oldLogp: [-2.0], refLogp: [-1.5], advantage: 0), config: c)
        XCTAssertEqual(t.klSum, exp(0.5) - 1.5, accuracy: 1e-6)
        XCTAssertEqual(t.lossSum, 0.1 * (exp(0.5) - 1.5), accuracy: 1e-6)
        XCTAssertEqual(Double(t.dLogp[0]), 0.1 * (1 - exp(0.5)), accuracy: 1e-6)
        XCTAssertEqual(PPOObjective.kl(logp: -1, ref: -1), 0)
    }

    func testPPOGradientMatchesFiniteDifferences() {
        var rng = Xoshiro256(seed: 7)
        func u(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * rng.nextUnit() }
        let c = PPOConfig(clip: 0.2, klCoef: 0.05)
        var checked = 0
        for _ in 0..<200 {
            let lp = u(-4, -0.1)
            let old = lp + u(-0.4, 0.4)
            let ref = lp + u(-1, 1)
            let a = u(-2, 2)
            // Stay away from the clip boundary where the loss has a kink.
            let r = exp(lp - old)
            if abs(r - 1.2) < 0.02 || abs(r - 0.8) < 0.02 { continue }
            let g = PPOObjective.evaluate(
                PolicyTokenTerms(logp: [Float(lp)], oldLogp: [Float(old)], refLogp: [Float(ref)], advantage: a), config: c
            ).dLogp[0]
            let h = 1e-5
            let fd =
                (PPOObjective.tokenLoss(logp: lp + h, old: old, ref: ref, advantage: a, config: c)
                    - PPOObjective.tokenLoss(logp: lp - h, old: old, ref: ref, advantage: a, config: c)) / (2 * h)
            XCTAssertEqual(Double(g), fd, accuracy: 1e-4 * max(1, abs(fd)))
            checked += 1
        }
        XCTAssertGreaterThan(checked, 150)
    }

    func testWarmup() {
        XCTAssertEqual(LearningRateSchedule.rate(step: 1, base: 1e-3, warmup: 4), 2.5e-4, accuracy: 1e-15)
        XCTAssertEqual(LearningRateSchedule.rate(step: 3, base: 1e-3, warmup: 4), 7.5e-4, accuracy: 1e-15)
        XCTAssertEqual(LearningRateSchedule.rate(step: 4, base: 1e-3, warmup: 4), 1e-3)
        XCTAssertEqual(LearningRateSchedule.rate(step: 1, base: 1e-3, warmup: 0), 1e-3)
    }
}
