// The numbers of one training step, as pure functions (no model, no I/O) so each is unit tested
// against hand-computed values and finite differences:
//
// - the training reward of an episode (protocol.md section 5, a feedback score standing in for
//   the answer F1 when there is no reference answer),
// - GRPO advantages (group-normalised) and the running baseline for lone episodes,
// - the PPO clipped surrogate plus the low-variance KL penalty per policy token, and its
//   gradient with respect to the policy's log-probs.

import EpisodeLog
import Foundation
import PromptR1

// MARK: - Advantages

public enum Advantages {
    /// Added to the standard deviation (verl's GRPO uses 1e-6).
    public static let epsilon = 1e-6

    /// GRPO: `(R - mean) / (std + eps)` within one group (the sampled episodes of one question).
    /// `std` is the sample standard deviation (n - 1 denominator), as verl computes it with
    /// `torch.std`. A group whose rewards are all equal gets advantage 0 everywhere (nothing to
    /// learn from it). Groups of one are not handled here (see `RunningBaseline`).
    public static func grpo(_ rewards: [Double]) -> [Double] {
        let n = Double(rewards.count)
        guard rewards.count >= 2 else { return rewards.map { _ in 0 } }
        let mean = rewards.reduce(0, +) / n
        let variance = rewards.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / (n - 1)
        let std = variance.squareRoot()
        if std < 1e-12 { return rewards.map { _ in 0 } }
        return rewards.map { ($0 - mean) / (std + epsilon) }
    }
}

/// Baseline for episodes that have no group (one episode per question, e.g. gateway traffic with
/// feedback): advantage = R - (mean of the lone rewards seen before it, in log order), 0 before
/// any. Deterministic given the order.
public struct RunningBaseline: Sendable, Equatable {
    public private(set) var count = 0
    public private(set) var mean = 0.0

    public init() {}

    /// The advantage of `reward`, then folds it into the baseline.
    public mutating func advantage(_ reward: Double) -> Double {
        let a = reward - mean
        count += 1
        mean += (reward - mean) / Double(count)
        return a
    }
}

// MARK: - PPO + KL objective

public struct PPOConfig: Sendable, Equatable, Codable {
    /// Ratio clip epsilon (0.2).
    public var clip: Double
    /// Coefficient of the low-variance KL penalty to the reference (base) model (0.001).
    public var klCoef: Double

    public init(clip: Double = 0.2, klCoef: Double = 0.001) {
        self.clip = clip
        self.klCoef = klCoef
    }
}

/// One sequence's inputs to the loss, restricted to its policy tokens (mask == 1): for each such
/// token, the current, behaviour (logged) and reference log-probabilities.
public struct PolicyTokenTerms: Sendable {
    public var logp: [Float]
    public var oldLogp: [Float]
    public var refLogp: [Float]
    public var advantage: Double

    public init(logp: [Float], oldLogp: [Float], refLogp: [Float], advantage: Double) {
        precondition(logp.count == oldLogp.count && logp.count == refLogp.count)
        self.logp = logp
        self.oldLogp = oldLogp
        self.refLogp = refLogp
        self.advantage = advantage
    }
}

public struct LossTerms: Sendable, Equatable {
    /// Sum over tokens of the per-token loss (divide by the token count for the token mean).
    public var lossSum: Double
    public var pgSum: Double
    /// Sum of the per-token KL estimates `exp(ref - logp) - (ref - logp) - 1`.
    public var klSum: Double
    /// Tokens whose ratio was clipped (the gradient through them is 0).
    public var clipped: Int
    public var tokens: Int
    /// d(lossSum)/d(logp) per token (divide by the token count along with the loss).
    public var dLogp: [Float]
}

public enum PPOObjective {
    /// Low-variance KL estimator (k3): `exp(ref - logp) - (ref - logp) - 1`, >= 0.
    @inlinable public static func kl(logp: Double, ref: Double) -> Double {
        let d = ref - logp
        return exp(d) - d - 1
    }

    /// Per-token loss `-min(r A, clip(r, 1-e, 1+e) A) + beta * kl`, with `r = exp(logp - old)`.
    public static func tokenLoss(logp: Double, old: Double, ref: Double, advantage a: Double, config: PPOConfig) -> Double {
        let r = exp(logp - old)
        let clippedR = min(max(r, 1 - config.clip), 1 + config.clip)
        return -min(r * a, clippedR * a) + config.klCoef * kl(logp: logp, ref: ref)
    }

    /// The summed loss over one sequence's policy tokens and its gradient.
    public static func evaluate(_ t: PolicyTokenTerms, config: PPOConfig) -> LossTerms {
        var out = LossTerms(
            lossSum: 0, pgSum: 0, klSum: 0, clipped: 0, tokens: t.logp.count,
            dLogp: [Float](repeating: 0, count: t.logp.count))
        let a = t.advantage
        for i in 0..<t.logp.count {
            let lp = Double(t.logp[i])
            let old = Double(t.oldLogp[i])
            let ref = Double(t.refLogp[i])
            let r = exp(lp - old)
            let unclipped = r * a
            let clippedR = min(max(r, 1 - config.clip), 1 + config.clip)
            let clippedTerm = clippedR * a
            var dpg = 0.0
            let pg: Double
            if unclipped <= clippedTerm {
                // The unclipped branch is the minimum: d(-r A)/dlogp = -r A.
                pg = -unclipped
                dpg = -unclipped
            } else {
                // The clipped branch is the minimum and it is constant in logp (r is outside the
                // clip range on the side that would increase the objective).
                pg = -clippedTerm
                out.clipped += 1
            }
            let d = ref - lp
            let ed = exp(d)
            let k = ed - d - 1
            // dk/dlogp = -e^d + 1.
            let dk = 1 - ed
            out.pgSum += pg
            out.klSum += k
            out.lossSum += pg + config.klCoef * k
            out.dLogp[i] = Float(dpg + config.klCoef * dk)
        }
        return out
    }
}

// MARK: - Learning-rate schedule

public enum LearningRateSchedule {
    /// Linear warm-up from lr/warmup to lr over `warmup` optimiser steps, then constant.
    /// `step` counts from 1.
    public static func rate(step: Int, base: Double, warmup: Int) -> Double {
        guard warmup > 0, step < warmup else { return base }
        return base * Double(max(step, 1)) / Double(warmup)
    }
}
