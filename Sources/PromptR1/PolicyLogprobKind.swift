// Which log-prob a policy session logs. Embedded and remote sessions differ here (an inference
// engine returns what it documents), so every episode says which one it holds, and the trainer
// can tell a PPO ratio it may compute from one it must recompute (`--behaviour base`).

import Foundation

/// Which distribution a logged policy log-prob was taken from. The trainer's PPO ratio needs the
/// sampling distribution's; where the engine logs the model's own (temperature 1, no top-k/top-p)
/// and the episode was sampled, train with `--behaviour base`.
public enum PolicyLogprobKind: String, Sendable, Codable, CaseIterable {
    /// Under the distribution the token was drawn from (after temperature, top-k, top-p).
    case sampling
    /// The model's plain log-softmax. Greedy episodes always log this (the sampling distribution
    /// of greedy decoding is degenerate), as the embedded engine does.
    case model
}

extension PolicySession {
    /// Sessions that do not say log the sampling distribution's log-probs (the contract of
    /// `PolicyTurn.logprobs`).
    public var logprobKind: PolicyLogprobKind { .sampling }
}

extension EnginePolicySession {
    /// The embedded engine logs the model's log-softmax for greedy decoding (see `generateTurn`).
    public var logprobKind: PolicyLogprobKind { sampling.isGreedy ? .model : .sampling }
}
