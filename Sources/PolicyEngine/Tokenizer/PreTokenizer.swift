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

/// Reusable per-call scratch space for scanning.
struct ScanScratch {
    var matches: [(Range<Int>, Bool)] = []
}

/// Reads scalars and their classes from valid UTF-8.
struct ScalarReader {
    let p: UnsafeBufferPointer<UInt8>
    let table: UnsafeBufferPointer<UInt8>

    @inline(__always)
    func at(_ i: Int) -> (cp: UInt32, len: Int, cls: UInt8) {
        let (cp, len) = decodeScalar(p, i)
        return (cp, len, cp < 0x20000 ? table[Int(cp)] : CharClass.of(cp))
    }
}

extension SplitPattern {
    /// True for the patterns run by the hand-written scanners.
    var isScanned: Bool {
        switch self {
        case .qwenLike, .gpt2: return true
        default: return false
        }
    }

    /// Calls `body` with each piece of `buf[range]` in order: pattern matches (true) and the
    /// gaps between them (false). Only for `isScanned` patterns.
    @inline(__always)
    func scan(_ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ body: (Range<Int>, Bool) -> Void) {
        CharClass.table.withUnsafeBufferPointer { table in
            let r = ScalarReader(p: buf, table: table)
            let end = range.upperBound
            var pos = range.lowerBound
            var gapStart = -1
            while pos < end {
                let m: Int
                switch self {
                case .qwenLike(let maxDigits): m = matchQwenLike(r, pos, end, maxDigits)
                default: m = matchGPT2(r, pos, end)
                }
                if m > pos {
                    if gapStart >= 0 {
                        body(gapStart..<pos, false)
                        gapStart = -1
                    }
                    body(pos..<m, true)
                    pos = m
                } else {
                    if gapStart < 0 { gapStart = pos }
                    pos += utf8SequenceLength(buf[pos])
                }
            }
            if gapStart >= 0 { body(gapStart..<end, false) }
        }
    }

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
            var out = scratch.matches
            scratch.matches = []
            scan(buf, range) { r, isMatch in out.append((r, isMatch)) }
            scratch.matches = out
        }
    }

    private func findLiteral(
        _ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ lit: [UInt8],
        _ out: inout [(Range<Int>, Bool)]
    ) {
        if lit.isEmpty {
            out.append((range, false))
            return
        }
        var prev = range.lowerBound
        var i = range.lowerBound
        let m = lit.count
        while i + m <= range.upperBound {
            var ok = true
            for k in 0..<m where buf[i + k] != lit[k] {
                ok = false
                break
            }
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

    private func findRegex(
        _ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ re: NSRegularExpression,
        _ out: inout [(Range<Int>, Bool)]
    ) {
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

/// Matcher for the Qwen2 (`maxDigits` 1) and Llama 3 / cl100k (`maxDigits` 3) patterns at byte
/// offset `i`. Returns the end offset of the match, or `i` if nothing matches at `i`.
@inline(__always)
private func matchQwenLike(_ r: ScalarReader, _ i: Int, _ end: Int, _ maxDigits: Int) -> Int {
    let (c, l, k) = r.at(i)
    // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)
    if c == 0x27, i + 1 < end {
        let (c1, l1, _) = r.at(i + 1)
        let f1 = foldLower(c1)
        if f1 == 0x73 || f1 == 0x74 || f1 == 0x6D || f1 == 0x64 { return i + 1 + l1 }  // s t m d
        if i + 1 + l1 < end {
            let (c2, l2, _) = r.at(i + 1 + l1)
            let f2 = foldLower(c2)
            if (f1 == 0x72 && f2 == 0x65) || (f1 == 0x76 && f2 == 0x65) || (f1 == 0x6C && f2 == 0x6C) {
                return i + 1 + l1 + l2  // re ve ll
            }
        }
    }
    // 2. [^\r\n\p{L}\p{N}]?\p{L}+
    var letterStart = -1
    if k & cLetter != 0 {
        letterStart = i
    } else if k & cNumber == 0 && !isCRLF(c) && i + l < end && r.at(i + l).cls & cLetter != 0 {
        letterStart = i + l
    }
    if letterStart >= 0 {
        var j = letterStart
        while j < end {
            let (_, lj, kj) = r.at(j)
            if kj & cLetter == 0 { break }
            j += lj
        }
        return j
    }
    // 3. \p{N}{1,maxDigits}
    if k & cNumber != 0 {
        var j = i + l
        var count = 1
        while j < end && count < maxDigits {
            let (_, lj, kj) = r.at(j)
            if kj & cNumber == 0 { break }
            j += lj
            count += 1
        }
        return j
    }
    // 4. ` ?[^\s\p{L}\p{N}]+[\r\n]*`
    let s = c == 0x20 ? i + 1 : i
    if s < end && r.at(s).cls & (cLetter | cNumber | cSpace) == 0 {
        var j = s
        while j < end {
            let (_, lj, kj) = r.at(j)
            if kj & (cLetter | cNumber | cSpace) != 0 { break }
            j += lj
        }
        while j < end && (r.p[j] == 0x0A || r.p[j] == 0x0D) { j += 1 }
        return j
    }
    if k & cSpace != 0 {
        var j = i + l
        var lastNLEnd = isCRLF(c) ? i + l : -1
        var lastStart = i
        while j < end {
            let (cj, lj, kj) = r.at(j)
            if kj & cSpace == 0 { break }
            if isCRLF(cj) { lastNLEnd = j + lj }
            lastStart = j
            j += lj
        }
        // 5. \s*[\r\n]+ : backtracks to just after the last newline of the whitespace run.
        if lastNLEnd >= 0 { return lastNLEnd }
        // 6. \s+(?!\S) : the whole run at the end of input, else all but its last scalar.
        if j == end { return j }
        if lastStart > i { return lastStart }
        // 7. \s+
        return j
    }
    return i
}

/// Matcher for the GPT-2 pattern used by ByteLevel(use_regex: true).
@inline(__always)
private func matchGPT2(_ r: ScalarReader, _ i: Int, _ end: Int) -> Int {
    let (c, l, k) = r.at(i)
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
    if c == 0x27, i + 1 < end {
        let (c1, l1, _) = r.at(i + 1)
        if c1 == 0x73 || c1 == 0x74 || c1 == 0x6D || c1 == 0x64 { return i + 1 + l1 }
        if i + 1 + l1 < end {
            let (c2, l2, _) = r.at(i + 1 + l1)
            if (c1 == 0x72 && c2 == 0x65) || (c1 == 0x76 && c2 == 0x65) || (c1 == 0x6C && c2 == 0x6C) {
                return i + 1 + l1 + l2
            }
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
    let s = c == 0x20 ? i + 1 : i
    if s < end {
        let ks = r.at(s).cls
        var stopMask: UInt8 = 0  // classes that end the run
        var wantMask: UInt8 = 0  // classes that continue it
        if ks & cLetter != 0 {
            wantMask = cLetter
        } else if ks & cNumber != 0 {
            wantMask = cNumber
        } else if ks & cSpace == 0 {
            stopMask = cLetter | cNumber | cSpace
        }
        if wantMask != 0 || stopMask != 0 {
            var j = s
            while j < end {
                let (_, lj, kj) = r.at(j)
                if wantMask != 0 ? (kj & wantMask == 0) : (kj & stopMask != 0) { break }
                j += lj
            }
            return j
        }
    }
    if k & cSpace != 0 {
        var j = i + l
        var lastStart = i
        while j < end {
            let (_, lj, kj) = r.at(j)
            if kj & cSpace == 0 { break }
            lastStart = j
            j += lj
        }
        if j == end { return j }  // \s+(?!\S) at end of input
        if lastStart > i { return lastStart }
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
    /// When the pipeline is a single isolated split by a scanned pattern (ByteLevel steps that
    /// neither add a prefix space nor split), words can be produced straight from the scanner.
    var fastPattern: SplitPattern? {
        var pattern: SplitPattern? = nil
        for step in steps {
            switch step {
            case .split(let p, .isolated, invert: false) where p.isScanned && pattern == nil:
                pattern = p
            case .byteLevel(addPrefixSpace: false, useRegex: false):
                continue
            case .byteLevel(addPrefixSpace: false, useRegex: true) where pattern == nil:
                pattern = .gpt2
            default:
                return nil
            }
        }
        return pattern
    }

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
            return PreTokenizer(steps: [
                .byteLevel(
                    addPrefixSpace: json["add_prefix_space"]?.boolValue ?? true,
                    useRegex: json["use_regex"]?.boolValue ?? true)
            ])
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
                } behavior: {
                    (behavior, invert)
                }
            case .digits(let individual):
                ranges = applySplit(buffer, ranges, scratch: &scratch) { buf, r, scratch in
                    findDigits(buf, r, individual: individual, &scratch.matches)
                } behavior: {
                    (.isolated, false)
                }
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
                    } behavior: {
                        (.isolated, false)
                    }
                }
            }
        }
    }

    private func applySplit(
        _ buffer: [UInt8], _ ranges: [Range<Int>], scratch: inout ScanScratch,
        find: (UnsafeBufferPointer<UInt8>, Range<Int>, inout ScanScratch) -> Void,
        behavior: () -> (SplitBehavior, Bool)
    ) -> [Range<Int>] {
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
    private func findDigits(
        _ buf: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, individual: Bool,
        _ out: inout [(Range<Int>, Bool)]
    ) {
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
