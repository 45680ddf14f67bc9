/// Prompt-lookup speculative decoding: draft tokens are copied from the sequence's own context.
///
/// A Prompt-R1 policy copies a lot: the question into its prompt for the upstream, the upstream's answer
/// into `<answer>`, the protocol's tags. When the last `n` tokens of a sequence occurred earlier in it, the
/// tokens that followed that occurrence are a cheap guess of what comes next. `BatchScheduler` feeds the
/// guess together with the sequence's last token in one forward step (the step reads the weights once,
/// whatever its rows) and keeps the longest prefix the model agrees with (`Sampler.verify`), plus the
/// model's own next token. Greedy output is that of ordinary decoding; sampled output keeps its
/// distribution; the log-probs are those of the rows the model computed.
public struct PromptLookup: Sendable, Equatable {
    /// Most draft tokens per sequence and step.
    public var draftTokens: Int
    /// Longest and shortest n-gram matched (the longest that occurs wins; among its occurrences the latest).
    public var maxNgram: Int
    public var minNgram: Int
    /// A step speculates only while its decode rows, drafts included, stay within this many: verification
    /// is nearly free while a step is bound by reading the weights, not once it is bound by arithmetic.
    public var maxStepRows: Int

    public init(draftTokens: Int = 4, maxNgram: Int = 3, minNgram: Int = 1, maxStepRows: Int = 16) {
        precondition(draftTokens >= 1 && minNgram >= 1 && maxNgram >= minNgram && maxStepRows >= 2)
        self.draftTokens = draftTokens
        self.maxNgram = maxNgram
        self.minNgram = minNgram
        self.maxStepRows = maxStepRows
    }

    /// A match of n tokens drafts at most this many times n: a longer match is stronger evidence of a copy.
    /// On the tiny protocol policy's episodes, capping 1-token matches at 2 drafts took the accepted share
    /// from 21% to 29% for 6% fewer accepted tokens, which on the 0.5B shape's 8-bit step costs is 1.30x
    /// against 1.23x (docs/performance.md).
    public static let draftsPerMatchedToken = 2

    /// Up to `limit` (and at most `draftsPerMatchedToken` * n) tokens that followed the latest earlier
    /// occurrence of the context's last n tokens (n from `maxNgram` down to `minNgram`); empty when there is
    /// none. The context is `tokens` followed by `last`.
    public func draft(after tokens: [Int32], last: Int32, limit: Int) -> [Int32] {
        guard limit > 0 else { return [] }
        let count = tokens.count + 1
        return tokens.withUnsafeBufferPointer { t in
            @inline(__always) func at(_ i: Int) -> Int32 { i == count - 1 ? last : t[i] }
            var n = min(maxNgram, count - 1)
            while n >= minNgram {
                // The suffix is at count-n..<count; an occurrence at p..<p+n with p+n < count has a follower.
                var p = count - n - 1
                while p >= 0 {
                    var j = 0
                    while j < n && at(p + j) == at(count - n + j) { j += 1 }
                    if j == n {
                        let from = p + n
                        let to = min(count, from + min(limit, Self.draftsPerMatchedToken * n))
                        return (from..<to).map { at($0) }
                    }
                    p -= 1
                }
                n -= 1
            }
            return []
        }
    }
}
