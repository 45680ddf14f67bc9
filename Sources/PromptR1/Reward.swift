// The Prompt-R1 training reward (protocol.md section 5), computed exactly like the reference
// (qa_em_and_format.compute_score_format_answer), on Unicode scalars with Python semantics.
//
// Input: the episode's whole text as the reference reward manager sees it: prompt + every
// generated turn + every injection, decoded with special tokens kept, with `<|im_end|>` appended
// when it does not already end with it (see `Episode.rewardText`).
//
// Assistant blocks: `re.findall(r'<\|im_start\|>assistant\n(.*?)<\|im_end\|>', text, re.DOTALL)`:
// each block starts right after an `<|im_start|>assistant\n` and runs to the first `<|im_end|>`
// after it; the scan resumes after that `<|im_end|>`. With the protocol's framing block 1 is the
// first turn's text, block k > 1 is `<think>\n` + turn k's text (the injected `<think>\n`), and
// after a call on the last allowed turn the final block is just `<think>\n`.
//
// Format score, in the reference's order of additions (the `fmt == 1.0` test is exact):
//   for each block but the last: if it holds exactly one each of <think>, </think>,
//     <interaction_prompt>, </interaction_prompt> and matches
//     ^<think>(.*?)</think>(\s*)<interaction_prompt>(.*?)</interaction_prompt>$   -> += 0.4
//   last block: if the first <answer>(.*?)</answer> body is non-empty after strip: += 0.25,
//     += 0.25 (the reference's two halves of protocol.md's +0.5), and then, only inside that
//     branch, if it matches ^<think>(.*?)</think>(.*?)<answer>(.*?)</answer>$       -> += 0.1
//   fmt = min(fmt, 1.0)
// Python's `$` without MULTILINE matches at the end or before one final "\n"; `\s` is Python's
// Unicode white space. Reward: R = -1 + fmt + F1 if fmt == 1.0 else -1 + fmt.

import Foundation

/// All the numbers the reference computes for one episode.
public struct RewardBreakdown: Sendable, Codable, Equatable {
    /// Format score in [0, 1].
    public var format: Double
    /// Best token F1 of the answer against the references (0 when the last block has no
    /// non-empty answer).
    public var f1: Double
    /// Exact match after SQuAD normalisation (0 or 1).
    public var exactMatch: Double
    /// Some normalised reference is a substring of the normalised answer (0 or 1).
    public var substringMatch: Double
    /// The training reward in [-1, 1].
    public var reward: Double
    /// The stripped answer of the last block, nil when it has none.
    public var answer: String?
}

public enum PromptR1Reward {
    static let blockOpen = ScalarSearch.codes(PromptR1Tag.imStart + "assistant\n")
    static let blockClose = ScalarSearch.codes(PromptR1Tag.imEnd)
    static let thinkOpen = ScalarSearch.codes(PromptR1Tag.thinkOpen)
    static let thinkClose = ScalarSearch.codes(PromptR1Tag.thinkClose)
    static let callOpen = ScalarSearch.codes(PromptR1Tag.callOpen)
    static let callClose = ScalarSearch.codes(PromptR1Tag.callClose)
    static let answerOpen = ScalarSearch.codes(PromptR1Tag.answerOpen)
    static let answerClose = ScalarSearch.codes(PromptR1Tag.answerClose)

    /// The assistant blocks of an episode text (see the file header).
    public static func assistantBlocks(_ text: String) -> [String] {
        assistantBlockCodes(ScalarSearch.codes(text)).map { ScalarSearch.string($0[...]) }
    }

    static func assistantBlockCodes(_ codes: [UInt32]) -> [[UInt32]] {
        var blocks: [[UInt32]] = []
        var pos = 0
        while let s = ScalarSearch.find(blockOpen, in: codes, from: pos) {
            let bodyStart = s + blockOpen.count
            guard let e = ScalarSearch.find(blockClose, in: codes, from: bodyStart) else { break }
            blocks.append(Array(codes[bodyStart..<e]))
            pos = e + blockClose.count
        }
        return blocks
    }

    /// Python `$` (no MULTILINE): the positions where the pattern may end.
    static func endPositions(_ b: [UInt32]) -> [Int] {
        var ends = [b.count]
        if let last = b.last, last == 0x0A { ends.append(b.count - 1) }
        return ends
    }

    /// `^<think>(.*?)</think>(\s*)<interaction_prompt>(.*?)</interaction_prompt>$` with DOTALL.
    static func matchesCallBlock(_ b: [UInt32]) -> Bool {
        guard ScalarSearch.hasPrefix(b, thinkOpen, at: 0) else { return false }
        var p = thinkOpen.count
        // Any </think> may close the think group (backtracking); try each.
        while let t = ScalarSearch.find(thinkClose, in: b, from: p) {
            var k = t + thinkClose.count
            while k < b.count, let sc = Unicode.Scalar(b[k]), PythonString.isSpace(sc) { k += 1 }
            // \s* is greedy but can only give back white space, which cannot start the tag.
            if ScalarSearch.hasPrefix(b, callOpen, at: k) {
                let bodyStart = k + callOpen.count
                for end in endPositions(b) {
                    let closeAt = end - callClose.count
                    if closeAt >= bodyStart, ScalarSearch.hasPrefix(b, callClose, at: closeAt) { return true }
                }
            }
            p = t + 1
        }
        return false
    }

    /// `^<think>(.*?)</think>(.*?)<answer>(.*?)</answer>$` with DOTALL.
    static func matchesAnswerBlock(_ b: [UInt32]) -> Bool {
        guard ScalarSearch.hasPrefix(b, thinkOpen, at: 0),
            let t = ScalarSearch.find(thinkClose, in: b, from: thinkOpen.count)
        else { return false }
        let afterThink = t + thinkClose.count
        for end in endPositions(b) {
            let closeAt = end - answerClose.count
            guard closeAt >= 0, ScalarSearch.hasPrefix(b, answerClose, at: closeAt) else { continue }
            // Need some <answer> starting at q with afterThink <= q and q + 8 <= closeAt.
            var q = afterThink
            while let a = ScalarSearch.find(answerOpen, in: b, from: q) {
                if a + answerOpen.count <= closeAt { return true }
                if a > closeAt { break }
                q = a + 1
            }
        }
        return false
    }

    /// Stripped body of the first `<answer>(.*?)</answer>`, nil when absent (`extract_solution`).
    public static func extractAnswer(_ block: String) -> String? {
        PromptR1Parser.answerBody(block).map(PythonString.strip)
    }

    /// Format score of an episode text.
    public static func formatScore(_ text: String) -> Double {
        let blocks = assistantBlockCodes(ScalarSearch.codes(text))
        guard let last = blocks.last else { return 0.0 }
        var fmt = 0.0
        for block in blocks.dropLast() {
            if ScalarSearch.count(thinkOpen, in: block) == 1, ScalarSearch.count(thinkClose, in: block) == 1,
                ScalarSearch.count(callOpen, in: block) == 1, ScalarSearch.count(callClose, in: block) == 1,
                matchesCallBlock(block)
            {
                fmt += 0.4
            }
        }
        if let answer = PromptR1Parser.answerBody(ScalarSearch.string(last[...])).map(PythonString.strip),
            !answer.isEmpty
        {
            fmt += 0.25
            fmt += 0.25
            if matchesAnswerBlock(last) { fmt += 0.1 }
        }
        return min(fmt, 1.0)
    }

    // MARK: SQuAD normalisation and metrics

    private static let punctuation: Set<UInt32> = Set("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~".unicodeScalars.map(\.value))

    /// Python `re` word character for str patterns: `ch.isalnum() or ch == '_'`.
    static func isWordChar(_ s: Unicode.Scalar) -> Bool {
        if s == "_" { return true }
        let p = s.properties
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            return true
        default:
            return p.numericType != nil
        }
    }

    /// Python `str.lower()`: full lowercase mapping plus the Final_Sigma rule for U+03A3.
    static func pythonLower(_ scalars: [Unicode.Scalar]) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(scalars.count)
        for (i, s) in scalars.enumerated() {
            if s.value == 0x3A3 {
                var j = i - 1
                while j >= 0, scalars[j].properties.isCaseIgnorable { j -= 1 }
                var final = j >= 0 && scalars[j].properties.isCased
                if final && i + 1 < scalars.count {
                    var k = i + 1
                    while k < scalars.count, scalars[k].properties.isCaseIgnorable { k += 1 }
                    final = k == scalars.count || !scalars[k].properties.isCased
                }
                out.append(Unicode.Scalar(final ? 0x3C2 : 0x3C3)!)
            } else {
                out.append(contentsOf: s.properties.lowercaseMapping.unicodeScalars)
            }
        }
        return out
    }

    /// SQuAD `normalize_answer`: lower, remove ASCII punctuation (`string.punctuation`), replace
    /// the whole words a/an/the (`\b(a|an|the)\b`) by a space, collapse white space.
    public static func normalizeAnswer(_ s: String) -> String {
        let lowered = pythonLower(Array(s.unicodeScalars))
        let noPunct = lowered.filter { !punctuation.contains($0.value) }
        // A regex match of \b(a|an|the)\b is exactly a maximal run of word characters equal to
        // one of the three words.
        var out = String.UnicodeScalarView()
        var i = 0
        while i < noPunct.count {
            if isWordChar(noPunct[i]) {
                var j = i
                while j < noPunct.count, isWordChar(noPunct[j]) { j += 1 }
                let word = noPunct[i..<j].map(\.value)
                if word == [0x61] || word == [0x61, 0x6E] || word == [0x74, 0x68, 0x65] {
                    out.append(" ")
                } else {
                    out.append(contentsOf: noPunct[i..<j])
                }
                i = j
            } else {
                out.append(noPunct[i])
                i += 1
            }
        }
        return PythonString.split(String(out)).joined(separator: " ")
    }

    static func tokens(_ s: String) -> [[UInt32]] {
        PythonString.split(normalizeAnswer(s)).map { ScalarSearch.codes($0) }
    }

    /// Token F1 against one reference (SQuAD v1.1 / reference `cal_f1_score`; 0 when nothing is
    /// shared, including when both sides are empty).
    public static func f1(prediction: String, reference: String) -> Double {
        f1(predTokens: tokens(prediction), goldTokens: tokens(reference))
    }

    static func f1(predTokens: [[UInt32]], goldTokens: [[UInt32]]) -> Double {
        var predCounts: [[UInt32]: Int] = [:]
        for t in predTokens { predCounts[t, default: 0] += 1 }
        var goldCounts: [[UInt32]: Int] = [:]
        for t in goldTokens { goldCounts[t, default: 0] += 1 }
        var numSame = 0
        for (t, c) in predCounts { if let g = goldCounts[t] { numSame += min(c, g) } }
        if numSame == 0 { return 0.0 }
        let precision = Double(numSame) / Double(predTokens.count)
        let recall = Double(numSame) / Double(goldTokens.count)
        return 2 * precision * recall / (precision + recall)
    }

    /// Best F1 over the references (0 for no references).
    public static func f1(prediction: String, references: [String]) -> Double {
        let pred = tokens(prediction)
        var best = 0.0
        for r in references { best = max(best, f1(predTokens: pred, goldTokens: tokens(r))) }
        return best
    }

    /// 1 when the normalised prediction equals some normalised reference (code-point equality).
    public static func exactMatch(prediction: String, references: [String]) -> Double {
        let p = normalizeAnswer(prediction)
        return references.contains { PythonString.equal(normalizeAnswer($0), p) } ? 1.0 : 0.0
    }

    /// 1 when some normalised reference is a substring of the normalised prediction.
    public static func substringMatch(prediction: String, references: [String]) -> Double {
        let p = normalizeAnswer(prediction)
        return references.contains { PythonString.contains(p, normalizeAnswer($0)) } ? 1.0 : 0.0
    }

    /// The full reference computation for one episode text.
    public static func score(text: String, references: [String]) -> RewardBreakdown {
        let fmt = formatScore(text)
        let blocks = assistantBlockCodes(ScalarSearch.codes(text))
        let answer = blocks.last.flatMap { extractAnswer(ScalarSearch.string($0[...])) }
        var f1 = 0.0
        var em = 0.0
        var sm = 0.0
        if let answer {
            // Answer reward needs a non-empty answer; F1 of an empty answer is 0 anyway, so the
            // reference's answer reward and its F1 metric coincide.
            f1 = Self.f1(prediction: answer, references: references)
            em = exactMatch(prediction: answer, references: references)
            sm = substringMatch(prediction: answer, references: references)
        }
        let reward = fmt == 1.0 ? -1.0 + fmt + f1 : -1.0 + fmt
        return RewardBreakdown(format: fmt, f1: f1, exactMatch: em, substringMatch: sm, reward: reward, answer: answer)
    }
}
