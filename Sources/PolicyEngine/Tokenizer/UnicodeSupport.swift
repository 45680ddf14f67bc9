// Unicode helpers for the tokenizer: character-class table for the pre-tokenizer scanner,
// scalar decoding of (valid) UTF-8 buffers, and a lossy UTF-8 decoder with the same
// replacement behaviour as Rust's String::from_utf8_lossy (one U+FFFD per maximal invalid
// subpart), which is what Hugging Face tokenizers' ByteLevel decoder uses.

/// Character-class bits used by the pre-tokenizer scanners.
enum CharClass {
    /// General category L* (onig / Rust regex `\p{L}`).
    static let letter: UInt8 = 1
    /// General category Nd, Nl, No (`\p{N}`, Rust `char::is_numeric`).
    static let number: UInt8 = 2
    /// White_Space property (onig `\s` in Unicode mode, Rust `char::is_whitespace`).
    static let whitespace: UInt8 = 4
    /// Rust regex `\w` (Alphabetic, marks, Nd, Pc, Join_Control), used for added-token
    /// `single_word` (HF checks `^\w` / `\w$` around the match).
    static let word: UInt8 = 8
    /// Assigned after Unicode 9.0 (or unassigned). HF's NFC (unicode-normalization-alignments)
    /// uses Unicode 9.0 data, so such scalars act as plain starters there.
    static let newerThanUnicode9: UInt8 = 16

    /// Table for planes 0 and 1 (covers Latin, CJK, emoji); other planes are computed on demand.
    static let table: [UInt8] = {
        var t = [UInt8](repeating: 0, count: 0x20000)
        for cp in 0..<0x20000 {
            guard let s = Unicode.Scalar(UInt32(cp)) else { continue }  // surrogates
            t[cp] = compute(s)
        }
        return t
    }()

    static func compute(_ s: Unicode.Scalar) -> UInt8 {
        let v = s.value
        if v < 0x80 {
            // ASCII fast path (no property lookups).
            switch v {
            case 0x41...0x5A, 0x61...0x7A: return letter | word
            case 0x30...0x39: return number | word
            case 0x09...0x0D, 0x20: return whitespace
            case 0x5F: return word
            default: return 0
            }
        }
        let p = s.properties
        // Oniguruma in tokenizers has Unicode 16.0 tables: later scalars are unassigned there.
        guard let age = p.age, age.major < 17 else { return newerThanUnicode9 }
        var c: UInt8 = age.major > 9 ? newerThanUnicode9 : 0
        // White_Space (stable list; none of these is a letter or number).
        switch v {
        case 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return c | whitespace
        case 0x200C, 0x200D:  // Join_Control
            return c | word
        default:
            break
        }
        switch p.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            c |= letter | word
        case .decimalNumber:
            c |= number | word
        case .letterNumber:
            c |= number | word  // Nl is Alphabetic
        case .otherNumber:
            c |= number
            if p.isAlphabetic { c |= word }
        case .nonspacingMark, .spacingMark, .enclosingMark, .connectorPunctuation:
            c |= word
        case .unassigned, .surrogate, .privateUse:
            break
        default:
            if p.isAlphabetic { c |= word }  // e.g. circled letters (So, Other_Alphabetic)
        }
        return c
    }

    @inline(__always)
    static func of(_ cp: UInt32) -> UInt8 {
        if cp < 0x20000 { return table[Int(cp)] }
        guard let s = Unicode.Scalar(cp) else { return 0 }
        return compute(s)
    }
}

/// Decodes the scalar starting at `i` in valid UTF-8, returning (scalar, length in bytes).
@inline(__always)
func decodeScalar(_ p: UnsafeBufferPointer<UInt8>, _ i: Int) -> (UInt32, Int) {
    let b0 = UInt32(p[i])
    if b0 < 0x80 { return (b0, 1) }
    if b0 < 0xE0 {
        return (((b0 & 0x1F) << 6) | (UInt32(p[i + 1]) & 0x3F), 2)
    }
    if b0 < 0xF0 {
        return (((b0 & 0x0F) << 12) | ((UInt32(p[i + 1]) & 0x3F) << 6) | (UInt32(p[i + 2]) & 0x3F), 3)
    }
    return (
        ((b0 & 0x07) << 18) | ((UInt32(p[i + 1]) & 0x3F) << 12) | ((UInt32(p[i + 2]) & 0x3F) << 6)
            | (UInt32(p[i + 3]) & 0x3F), 4
    )
}

/// Length of the UTF-8 sequence introduced by lead byte `b` (valid UTF-8 assumed).
@inline(__always)
func utf8SequenceLength(_ b: UInt8) -> Int {
    if b < 0x80 { return 1 }
    if b < 0xE0 { return 2 }
    if b < 0xF0 { return 3 }
    return 4
}

enum LossyUTF8 {
    /// Result of examining the sequence at a position.
    enum Step {
        /// A valid scalar of `length` bytes.
        case valid(length: Int)
        /// An invalid maximal subpart of `length` bytes (replaced by one U+FFFD).
        case invalid(length: Int)
        /// The bytes up to the end are a proper prefix of a valid sequence (`length` bytes).
        case incomplete(length: Int)
    }

    /// Classifies the bytes at `i` following Unicode's well-formed UTF-8 table (Table 3-7).
    static func step(_ b: UnsafeBufferPointer<UInt8>, _ i: Int) -> Step {
        let n = b.count
        let b0 = b[i]
        if b0 < 0x80 { return .valid(length: 1) }
        var need: Int
        var lo: UInt8 = 0x80
        var hi: UInt8 = 0xBF
        switch b0 {
        case 0xC2...0xDF: need = 1
        case 0xE0:
            need = 2
            lo = 0xA0
        case 0xE1...0xEC, 0xEE...0xEF: need = 2
        case 0xED:
            need = 2
            hi = 0x9F
        case 0xF0:
            need = 3
            lo = 0x90
        case 0xF1...0xF3: need = 3
        case 0xF4:
            need = 3
            hi = 0x8F
        default: return .invalid(length: 1)
        }
        var j = i + 1
        while need > 0 {
            if j >= n { return .incomplete(length: j - i) }
            let c = b[j]
            if c < lo || c > hi { return .invalid(length: j - i) }
            lo = 0x80
            hi = 0xBF
            j += 1
            need -= 1
        }
        return .valid(length: j - i)
    }

    /// Decodes bytes with U+FFFD for each maximal invalid subpart (Rust from_utf8_lossy).
    static func decode(_ bytes: [UInt8]) -> String {
        bytes.withUnsafeBufferPointer { decode($0).text }
    }

    /// Decodes `bytes`. If `holdIncompleteTail` is true, a trailing incomplete sequence is not
    /// decoded and its length is returned in `pending`; otherwise it becomes one U+FFFD.
    static func decode(_ b: UnsafeBufferPointer<UInt8>, holdIncompleteTail: Bool = false)
        -> (text: String, pending: Int)
    {
        var out: [UInt8] = []
        out.reserveCapacity(b.count)
        var i = 0
        var validStart = 0
        while i < b.count {
            switch step(b, i) {
            case .valid(let len):
                i += len
            case .invalid(let len):
                out.append(contentsOf: UnsafeBufferPointer(rebasing: b[validStart..<i]))
                out.append(contentsOf: [0xEF, 0xBF, 0xBD])
                i += len
                validStart = i
            case .incomplete(let len):
                out.append(contentsOf: UnsafeBufferPointer(rebasing: b[validStart..<i]))
                if holdIncompleteTail {
                    return (String(decoding: out, as: UTF8.self), len)
                }
                out.append(contentsOf: [0xEF, 0xBF, 0xBD])
                i += len
                validStart = i
            }
        }
        out.append(contentsOf: UnsafeBufferPointer(rebasing: b[validStart..<i]))
        // `out` is valid UTF-8 by construction, so this decoding is exact.
        return (String(decoding: out, as: UTF8.self), 0)
    }
}
