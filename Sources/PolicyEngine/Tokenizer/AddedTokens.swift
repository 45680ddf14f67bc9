// Added tokens (tokenizer.json "added_tokens"): extracted from the text before normalization
// (normalized == false) or from the normalized pieces (normalized == true), leftmost-longest,
// with HF's single_word / lstrip / rstrip rules (tokenizers added_vocabulary.rs find_matches).

struct AddedToken: Sendable {
    let id: Int32
    let content: String
    let bytes: [UInt8]
    let singleWord: Bool
    let lstrip: Bool
    let rstrip: Bool
    let normalized: Bool
    let special: Bool
}

/// A byte trie over a set of added tokens, for leftmost-longest matching.
struct AddedTokenMatcher: Sendable {
    private struct Node: Sendable {
        var children: [UInt8: Int32] = [:]
        var token: Int32 = -1  // index into `tokens`
    }

    private var nodes: [Node] = [Node()]
    private var firstByte = [Bool](repeating: false, count: 256)
    let tokens: [AddedToken]

    /// `patterns[i]` is the byte pattern to search for token `tokens[i]`.
    init(tokens: [AddedToken], patterns: [[UInt8]]) {
        self.tokens = tokens
        for (ti, pat) in patterns.enumerated() where !pat.isEmpty {
            var node = 0
            for b in pat {
                if let next = nodes[node].children[b] {
                    node = Int(next)
                } else {
                    nodes.append(Node())
                    nodes[node].children[b] = Int32(nodes.count - 1)
                    node = nodes.count - 1
                }
            }
            // Same pattern twice: aho-corasick reports the first pattern added.
            if nodes[node].token < 0 { nodes[node].token = Int32(ti) }
            firstByte[Int(pat[0])] = true
        }
    }

    var isEmpty: Bool { nodes.count == 1 }

    /// Longest token starting at `i`, as (token index, end).
    @inline(__always)
    private func longest(_ s: UnsafeBufferPointer<UInt8>, _ i: Int) -> (Int, Int)? {
        var node = 0
        var best: (Int, Int)? = nil
        var j = i
        while j < s.count, let next = nodes[node].children[s[j]] {
            node = Int(next)
            j += 1
            if nodes[node].token >= 0 { best = (Int(nodes[node].token), j) }
        }
        return best
    }

    /// Splits `s` into pieces: (byte range, added token id or nil for plain text).
    /// Mirrors HF `AddedVocabulary::find_matches` including the strip rules.
    func split(_ s: UnsafeBufferPointer<UInt8>) -> [(Range<Int>, Int32?)] {
        var out: [(Range<Int>, Int32?)] = []
        if s.isEmpty {
            return out
        }
        if isEmpty {
            out.append((0..<s.count, nil))
            return out
        }
        var startOffset = 0
        var i = 0
        let n = s.count
        while i < n {
            if !firstByte[Int(s[i])] {
                i += 1
                continue
            }
            guard let (ti, matchEnd) = longest(s, i) else {
                i += 1
                continue
            }
            let tok = tokens[ti]
            var start = i
            var stop = matchEnd
            // The scan resumes after the match even when the match is discarded.
            i = matchEnd
            if tok.singleWord {
                let startSpace = start == 0 || !endsWithWord(s, start)
                let stopSpace = stop == n || !startsWithWord(s, stop)
                if !startSpace || !stopSpace { continue }
            }
            if tok.lstrip {
                start = max(leftmostSpaceAtEnd(s, start), startOffset)
            }
            if tok.rstrip {
                stop = rightmostSpaceAtStart(s, stop)
                i = max(i, stop)
            }
            if startOffset < start {
                out.append((startOffset..<start, nil))
            }
            out.append((start..<stop, tok.id))
            startOffset = stop
        }
        if startOffset != n {
            out.append((startOffset..<n, nil))
        }
        return out
    }

    /// Last scalar of s[..<end] is a word character (\\w).
    private func endsWithWord(_ s: UnsafeBufferPointer<UInt8>, _ end: Int) -> Bool {
        var k = end - 1
        while k > 0 && s[k] & 0xC0 == 0x80 { k -= 1 }
        let (cp, _) = decodeScalar(s, k)
        return CharClass.of(cp) & CharClass.word != 0
    }

    /// First scalar of s[start...] is a word character (\\w).
    private func startsWithWord(_ s: UnsafeBufferPointer<UInt8>, _ start: Int) -> Bool {
        let (cp, _) = decodeScalar(s, start)
        return CharClass.of(cp) & CharClass.word != 0
    }

    /// Start of the whitespace run that ends at `end` (or `end` if none).
    private func leftmostSpaceAtEnd(_ s: UnsafeBufferPointer<UInt8>, _ end: Int) -> Int {
        var pos = end
        while pos > 0 {
            var k = pos - 1
            while k > 0 && s[k] & 0xC0 == 0x80 { k -= 1 }
            let (cp, _) = decodeScalar(s, k)
            if CharClass.of(cp) & CharClass.whitespace == 0 { break }
            pos = k
        }
        return pos
    }

    /// End of the whitespace run that starts at `start` (or `start` if none).
    private func rightmostSpaceAtStart(_ s: UnsafeBufferPointer<UInt8>, _ start: Int) -> Int {
        var pos = start
        while pos < s.count {
            let (cp, len) = decodeScalar(s, pos)
            if CharClass.of(cp) & CharClass.whitespace == 0 { break }
            pos += len
        }
        return pos
    }
}
