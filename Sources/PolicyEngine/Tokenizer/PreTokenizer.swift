import Foundation

// Pre-tokenization: splitting normalized text into words before BPE.
//
// Hugging Face tokenizers runs the Split regex with Oniguruma (backtracking, leftmost-first
// alternation). A generic regex engine differs in small ways (Unicode classes, lookahead), so
// the patterns used by Qwen2/Qwen3 (`\p{N}`), Llama 3 / cl100k (`\p{N}{1,3}`) and GPT-2
// (ByteLevel use_regex) are recognised by their exact source text and run by hand-written
// matchers over Unicode scalars that reproduce the backtracking semantics alternative by
// alternative. Unknown patterns fall back to NSRegularExpression.

/// A regex (or literal) used by a Split pre-tokenizer.
enum SplitPattern: @unchecked Sendable {
    // @unchecked: NSRegularExpression is immutable after creation and documented thread-safe.
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,maxDigits}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case qwenLike(maxDigits: Int)
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    case literal([UInt8])
    case regex(NSRegularExpression, source: String)

    static let qwen2Source =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let llama3Source =
        #"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"#
    static let gpt2Source = #"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"#

    /// Recognises the known patterns by their source text; otherwise compiles a regex.
    static func fromRegexSource(_ source: String) throws -> SplitPattern {
        let bytes = Array(source.utf8)
        if bytes == Array(qwen2Source.utf8) { return .qwenLike(maxDigits: 1) }
        if bytes == Array(llama3Source.utf8) { return .qwenLike(maxDigits: 3) }
        if bytes == Array(gpt2Source.utf8) { return .gpt2 }
        do {
            return .regex(try NSRegularExpression(pattern: source, options: []), source: source)
        } catch {
            throw TokenizerError.invalidField(
                field: "pre_tokenizer.pattern.Regex",
                reason: "cannot compile regex \(source.debugDescription): \(error)")
        }
    }
}

enum SplitBehavior: String, Sendable {
    case removed = "Removed"
    case isolated = "Isolated"
    case mergedWithPrevious = "MergedWithPrevious"
    case mergedWithNext = "MergedWithNext"
    case contiguous = "Contiguous"
}

/// Reusable per-call scratch space for scanning (decoded scalars, classes and byte offsets).
struct ScanScratch {
    var cps: [UInt32] = []
    var cls: [UInt8] = []
    var offs: [Int] = []
    var matches: [(Range<Int>, Bool)] = []
}

extension SplitPattern {
    /// Finds pattern matches in `buf[range]`, appending a cover of the range as
    /// (byte range, isMatch) pieces in order (HF `Pattern::find_matches`).
    func findMatches(_ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ scratch: inout ScanScratch) {
        scratch.matches.removeAll(keepingCapacity: true)
        if range.isEmpty {
            scratch.matches.append((range, false))
            return
        }
        switch self {
        case .literal(let lit):
            findLiteral(buf, range, lit, &scratch.matches)
        case .regex(let re, _):
            findRegex(buf, range, re, &scratch.matches)
        case .qwenLike, .gpt2:
            // Decode scalars once; the matchers work on scalar indices.
            scratch.cps.removeAll(keepingCapacity: true)
            scratch.cls.removeAll(keepingCapacity: true)
            scratch.offs.removeAll(keepingCapacity: true)
            var i = range.lowerBound
            while i < range.upperBound {
                let (cp, len) = decodeScalar(buf, i)
                scratch.cps.append(cp)
                scratch.cls.append(CharClass.of(cp))
                scratch.offs.append(i)
                i += len
            }
            scratch.offs.append(range.upperBound)
            let n = scratch.cps.count
            var gapStart = -1
            var pos = 0
            scratch.cps.withUnsafeBufferPointer { cps in
                scratch.cls.withUnsafeBufferPointer { cls in
                    while pos < n {
                        let end: Int
                        switch self {
                        case .qwenLike(let maxDigits): end = matchQwenLike(cps, cls, pos, maxDigits)
                        default: end = matchGPT2(cps, cls, pos)
                        }
                        if end > pos {
                            if gapStart >= 0 {
                                scratch.matches.append((scratch.offs[gapStart]..<scratch.offs[pos], false))
                                gapStart = -1
                            }
                            scratch.matches.append((scratch.offs[pos]..<scratch.offs[end], true))
                            pos = end
                        } else {
                            if gapStart < 0 { gapStart = pos }
                            pos += 1
                        }
                    }
                }
            }
            if gapStart >= 0 {
                scratch.matches.append((scratch.offs[gapStart]..<scratch.offs[n], false))
            }
        }
    }

    private func findLiteral(_ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ lit: [UInt8],
                             _ out: inout [(Range<Int>, Bool)]) {
        if lit.isEmpty {
            out.append((range, false))
            return
        }
        var prev = range.lowerBound
        var i = range.lowerBound
        let m = lit.count
        while i + m <= range.upperBound {
            var ok = true
            for k in 0..<m where buf[i + k] != lit[k] { ok = false; break }
            if ok {
                if prev != i { out.append((prev..<i, false)) }
                out.append((i..<(i + m), true))
                i += m
                prev = i
            } else {
                i += 1
            }
        }
        if prev != range.upperBound { out.append((prev..<range.upperBound, false)) }
    }

    private func findRegex(_ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ re: NSRegularExpression,
                           _ out: inout [(Range<Int>, Bool)]) {
        let text = String(decoding: UnsafeBufferPointer(rebasing: buf[range]), as: UTF8.self)
        let ns = text as NSString
        // Map UTF-16 offsets to UTF-8 offsets.
        var utf16ToUTF8: [Int] = []
        utf16ToUTF8.reserveCapacity(ns.length + 1)
        var u8 = 0
        for s in text.unicodeScalars {
            let n16 = s.value >= 0x10000 ? 2 : 1
            for _ in 0..<n16 { utf16ToUTF8.append(u8) }
            u8 += s.utf8.count
        }
        utf16ToUTF8.append(u8)
        var prev = 0
        for m in re.matches(in: text, options: [], range: NSRange(location: 0, length: ns.length)) {
            let s = utf16ToUTF8[m.range.location]
            let e = utf16ToUTF8[m.range.location + m.range.length]
            if e == s { continue }
            if prev != s { out.append(((range.lowerBound + prev)..<(range.lowerBound + s), false)) }
            out.append(((range.lowerBound + s)..<(range.lowerBound + e), true))
            prev = e
        }
        if prev != u8 { out.append(((range.lowerBound + prev)..<(range.lowerBound + u8), false)) }
    }
}

private let cLetter = CharClass.letter
private let cNumber = CharClass.number
private let cSpace = CharClass.whitespace

/// Case-insensitive comparison used by `(?i:...)`: ASCII letters plus the Unicode simple case
/// foldings onto the letters of the contractions (U+017F LATIN SMALL LETTER LONG S folds to s).
@inline(__always)
private func foldLower(_ c: UInt32) -> UInt32 {
    if c >= 0x41 && c <= 0x5A { return c + 0x20 }
    if c == 0x17F { return 0x73 }
    return c
}

@inline(__always)
private func isCRLF(_ c: UInt32) -> Bool { c == 0x0A || c == 0x0D }

/// Matcher for the Qwen2 (`maxDigits` 1) and Llama 3 / cl100k (`maxDigits` 3) patterns.
/// Returns the end scalar index of the match at `i`, or `i` if nothing matches at `i`.
@inline(__always)
private func matchQwenLike(_ cps: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>,
                           _ i: Int, _ maxDigits: Int) -> Int {
    let n = cps.count
    let c = cps[i]
    let k = cls[i]
    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c == 0x27, i + 1 < n {
        let c1 = foldLower(cps[i + 1])
        if c1 == 0x73 || c1 == 0x74 || c1 == 0x6D || c1 == 0x64 { return i + 2 }  // s t m d
        if i + 2 < n {
            let c2 = foldLower(cps[i + 2])
            if (c1 == 0x72 && c2 == 0x65) || (c1 == 0x76 && c2 == 0x65) || (c1 == 0x6C && c2 == 0x6C) {
                return i + 3  // re ve ll
            }
        }
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    if k & cLetter != 0 {
        var j = i + 1
        while j < n && cls[j] & cLetter != 0 { j += 1 }
        return j
    }
    if k & cNumber == 0 && !isCRLF(c) && i + 1 < n && cls[i + 1] & cLetter != 0 {
        var j = i + 2
        while j < n && cls[j] & cLetter != 0 { j += 1 }
        return j
    }
    // 3. \p{N}{1,maxDigits}
    if k & cNumber != 0 {
        var j = i + 1
        while j < n && j - i < maxDigits && cls[j] & cNumber != 0 { j += 1 }
        return j
    }
    // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let s = c == 0x20 ? i + 1 : i
    if s < n && cls[s] & (cLetter | cNumber | cSpace) == 0 {
        var j = s + 1
        while j < n && cls[j] & (cLetter | cNumber | cSpace) == 0 { j += 1 }
        while j < n && isCRLF(cps[j]) { j += 1 }
        return j
    }
    if k & cSpace != 0 {
        var j = i + 1
        var lastNL = isCRLF(c) ? i : -1
        while j < n && cls[j] & cSpace != 0 {
            if isCRLF(cps[j]) { lastNL = j }
            j += 1
        }
        // 5. \s*[\r\n]+ : backtracks to just after the last newline of the whitespace run.
        if lastNL >= 0 { return lastNL + 1 }
        // 6. \s+(?!\S)
        if j == n { return j }
        if j - i >= 2 { return j - 1 }
        // 7. \s+
        return j
    }
    return i
}

/// Matcher for the GPT-2 pattern used by ByteLevel(use_regex: true).
@inline(__always)
private func matchGPT2(_ cps: UnsafeBufferPointer<UInt32>, _ cls: UnsafeBufferPointer<UInt8>, _ i: Int) -> Int {
    let n = cps.count
    let c = cps[i]
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
    if c == 0x27, i + 1 < n {
        let c1 = cps[i + 1]
        if c1 == 0x73 || c1 == 0x74 || c1 == 0x6D || c1 == 0x64 { return i + 2 }
        if i + 2 < n {
            let c2 = cps[i + 2]
            if (c1 == 0x72 && c2 == 0x65) || (c1 == 0x76 && c2 == 0x65) || (c1 == 0x6C && c2 == 0x6C) {
                return i + 3
            }
        }
    }
    let s = c == 0x20 ? i + 1 : i
    if s < n {
        let ks = cls[s]
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let want: UInt8
        if ks & cLetter != 0 { want = cLetter }
        else if ks & cNumber != 0 { want = cNumber }
        else if ks & cSpace == 0 { want = 0 }
        else { want = 255 }
        if want == cLetter || want == cNumber {
            var j = s + 1
            while j < n && cls[j] & want != 0 { j += 1 }
            return j
        }
        if want == 0 {
            var j = s + 1
            while j < n && cls[j] & (cLetter | cNumber | cSpace) == 0 { j += 1 }
            return j
        }
    }
    if cls[i] & cSpace != 0 {
        var j = i + 1
        while j < n && cls[j] & cSpace != 0 { j += 1 }
        if j == n { return j }  // \s+(?!\S) at end of input
        if j - i >= 2 { return j - 1 }
        return j
    }
    return i
}

/// One step of the pre-tokenizer pipeline.
enum PreTokenizerStep: Sendable {
    case split(SplitPattern, SplitBehavior, invert: Bool)
    case byteLevel(addPrefixSpace: Bool, useRegex: Bool)
    case digits(individual: Bool)
}

/// The pre-tokenizer pipeline: a flat list of steps applied in order, each to every piece.
struct PreTokenizer: Sendable {
    var steps: [PreTokenizerStep]
    /// True when the pipeline contains a ByteLevel step (byte-level BPE).
    var hasByteLevel: Bool {
        steps.contains { if case .byteLevel = $0 { return true } else { return false } }
    }

    static func parse(_ json: JSONValue?, path: String = "pre_tokenizer") throws -> PreTokenizer {
        guard let json, !json.isNull else { return PreTokenizer(steps: []) }
        guard let type = json["type"]?.stringValue else {
            throw TokenizerError.invalidField(field: "\(path).type", reason: "missing or not a string")
        }
        switch type {
        case "Sequence":
            guard let items = json["pretokenizers"]?.arrayValue else {
                throw TokenizerError.invalidField(field: "\(path).pretokenizers", reason: "missing or not an array")
            }
            var steps: [PreTokenizerStep] = []
            for (i, item) in items.enumerated() {
                steps += try parse(item, path: "\(path).pretokenizers[\(i)]").steps
            }
            return PreTokenizer(steps: steps)
        case "Split":
            guard let pat = json["pattern"] else {
                throw TokenizerError.invalidField(field: "\(path).pattern", reason: "missing")
            }
            let pattern: SplitPattern
            if let re = pat["Regex"]?.stringValue {
                pattern = try SplitPattern.fromRegexSource(re)
            } else if let s = pat["String"]?.stringValue {
                pattern = .literal(Array(s.utf8))
            } else {
                throw TokenizerError.invalidField(field: "\(path).pattern", reason: "expected {\"Regex\": ...} or {\"String\": ...}")
            }
            let behaviorName = json["behavior"]?.stringValue ?? "Isolated"
            guard let behavior = SplitBehavior(rawValue: behaviorName) else {
                throw TokenizerError.invalidField(field: "\(path).behavior", reason: "unknown split behavior \(behaviorName)")
            }
            return PreTokenizer(steps: [.split(pattern, behavior, invert: json["invert"]?.boolValue ?? false)])
        case "ByteLevel":
            return PreTokenizer(steps: [.byteLevel(addPrefixSpace: json["add_prefix_space"]?.boolValue ?? true,
                                                   useRegex: json["use_regex"]?.boolValue ?? true)])
        case "Digits":
            return PreTokenizer(steps: [.digits(individual: json["individual_digits"]?.boolValue ?? false)])
        default:
            throw TokenizerError.unsupported(field: "\(path).type", value: type)
        }
    }

    /// Splits `buffer` into word ranges. The buffer may be replaced (ByteLevel add_prefix_space).
    func run(buffer: inout [UInt8], ranges: inout [Range<Int>], scratch: inout ScanScratch) {
        for step in steps {
            switch step {
            case .split(let pattern, let behavior, let invert):
                ranges = applySplit(buffer, ranges, scratch: &scratch) { buf, r, scratch in
                    pattern.findMatches(buf, r, &scratch)
                } behavior: { (behavior, invert) }
            case .digits(let individual):
                ranges = applySplit(buffer, ranges, scratch: &scratch) { buf, r, scratch in
                    findDigits(buf, r, individual: individual, &scratch.matches)
                } behavior: { (.isolated, false) }
            case .byteLevel(let addPrefixSpace, let useRegex):
                if addPrefixSpace {
                    var nb: [UInt8] = []
                    nb.reserveCapacity(buffer.count + ranges.count)
                    var nr: [Range<Int>] = []
                    nr.reserveCapacity(ranges.count)
                    for r in ranges {
                        let start = nb.count
                        if buffer[r.lowerBound] != 0x20 { nb.append(0x20) }
                        nb.append(contentsOf: buffer[r])
                        nr.append(start..<nb.count)
                    }
                    buffer = nb
                    ranges = nr
                }
                if useRegex {
                    ranges = applySplit(buffer, ranges, scratch: &scratch) { buf, r, scratch in
                        SplitPattern.gpt2.findMatches(buf, r, &scratch)
                    } behavior: { (.isolated, false) }
                }
            }
        }
    }

    private func applySplit(_ buffer: [UInt8], _ ranges: [Range<Int>], scratch: inout ScanScratch,
                            find: (UnsafeBufferPointer<UInt8>, Range<Int>, inout ScanScratch) -> Void,
                            behavior: () -> (SplitBehavior, Bool)) -> [Range<Int>] {
        let (behavior, invert) = behavior()
        var out: [Range<Int>] = []
        out.reserveCapacity(ranges.count * 4)
        buffer.withUnsafeBufferPointer { buf in
            for r in ranges {
                find(buf, r, &scratch)
                if invert {
                    for k in scratch.matches.indices { scratch.matches[k].1.toggle() }
                }
                appendSplits(scratch.matches, behavior, &out)
            }
        }
        return out
    }

    /// HF `NormalizedString::split` with a delimiter behaviour; empty pieces are dropped.
    private func appendSplits(_ matches: [(Range<Int>, Bool)], _ behavior: SplitBehavior, _ out: inout [Range<Int>]) {
        switch behavior {
        case .isolated:
            for (r, _) in matches where !r.isEmpty { out.append(r) }
        case .removed:
            for (r, m) in matches where !m && !r.isEmpty { out.append(r) }
        case .contiguous, .mergedWithPrevious:
            var acc: [Range<Int>] = []
            var previousMatch = false
            for (r, isMatch) in matches {
                let merge = behavior == .contiguous ? (isMatch == previousMatch) : (isMatch && !previousMatch)
                if merge, let last = acc.last {
                    acc[acc.count - 1] = last.lowerBound..<r.upperBound
                } else {
                    acc.append(r)
                }
                previousMatch = isMatch
            }
            for r in acc where !r.isEmpty { out.append(r) }
        case .mergedWithNext:
            var acc: [Range<Int>] = []
            var previousMatch = false
            for (r, isMatch) in matches.reversed() {
                if isMatch && !previousMatch, let last = acc.last {
                    acc[acc.count - 1] = r.lowerBound..<last.upperBound
                } else {
                    acc.append(r)
                }
                previousMatch = isMatch
            }
            for r in acc.reversed() where !r.isEmpty { out.append(r) }
        }
    }

    /// HF Digits pre-tokenizer: `\p{N}` runs (or single digits) isolated.
    private func findDigits(_ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, individual: Bool,
                            _ out: inout [(Range<Int>, Bool)]) {
        out.removeAll(keepingCapacity: true)
        var i = range.lowerBound
        var runStart = i
        var runIsDigit = false
        while i < range.upperBound {
            let (cp, len) = decodeScalar(buf, i)
            // HF uses char::is_numeric (Nd, Nl, No).
            let isDigit = CharClass.of(cp) & CharClass.number != 0
            if i > runStart && (isDigit != runIsDigit || (isDigit && individual)) {
                out.append((runStart..<i, runIsDigit))
                runStart = i
            }
            runIsDigit = isDigit
            i += len
        }
        if range.upperBound > runStart { out.append((runStart..<range.upperBound, runIsDigit)) }
    }
}
