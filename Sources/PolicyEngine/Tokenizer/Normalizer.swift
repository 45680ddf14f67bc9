import Foundation

// Normalizers of tokenizer.json: NFC / NFD / NFKC / NFKD / Lowercase / Sequence / null.

enum NormalizerStep: Sendable {
    case nfc, nfd, nfkc, nfkd, lowercase
}

struct Normalizer: Sendable {
    var steps: [NormalizerStep]

    var isIdentity: Bool { steps.isEmpty }

    static func parse(_ json: JSONValue?, path: String = "normalizer") throws -> Normalizer {
        guard let json, !json.isNull else { return Normalizer(steps: []) }
        guard let type = json["type"]?.stringValue else {
            throw TokenizerError.invalidField(field: "\(path).type", reason: "missing or not a string")
        }
        switch type {
        case "NFC": return Normalizer(steps: [.nfc])
        case "NFD": return Normalizer(steps: [.nfd])
        case "NFKC": return Normalizer(steps: [.nfkc])
        case "NFKD": return Normalizer(steps: [.nfkd])
        case "Lowercase": return Normalizer(steps: [.lowercase])
        case "Sequence":
            guard let items = json["normalizers"]?.arrayValue else {
                throw TokenizerError.invalidField(field: "\(path).normalizers", reason: "missing or not an array")
            }
            var steps: [NormalizerStep] = []
            for (i, item) in items.enumerated() {
                steps += try parse(item, path: "\(path).normalizers[\(i)]").steps
            }
            return Normalizer(steps: steps)
        default:
            throw TokenizerError.unsupported(field: "\(path).type", value: type)
        }
    }

    /// Normalizes UTF-8 bytes. Returns nil when the text is unchanged (common fast path).
    func apply(_ bytes: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        if steps.isEmpty { return nil }
        var current: [UInt8]? = nil
        for step in steps {
            let changed: [UInt8]? = (current ?? []).withUnsafeBufferPointer { cur in
                let input = current == nil ? bytes : cur
                return Normalizer.applyStep(step, input)
            }
            if let changed { current = changed }
        }
        return current
    }

    private static func applyStep(_ step: NormalizerStep, _ bytes: UnsafeBufferPointer<UInt8>) -> [UInt8]? {
        switch step {
        case .nfc:
            if isTriviallyNFC(bytes) { return nil }
            return nfcLikeHF(bytes)
        case .nfd, .nfkc, .nfkd, .lowercase:
            var ascii = true
            for b in bytes where b >= 0x80 {
                ascii = false
                break
            }
            if ascii && step != .lowercase { return nil }
            let s = String(decoding: bytes, as: UTF8.self)
            switch step {
            case .nfd: return Array(s.decomposedStringWithCanonicalMapping.utf8)
            case .nfkc: return Array(s.precomposedStringWithCompatibilityMapping.utf8)
            case .nfkd: return Array(s.decomposedStringWithCompatibilityMapping.utf8)
            default: return Array(s.lowercased().utf8)
            }
        }
    }

    /// NFC as computed by HF tokenizers, whose tables are Unicode 9.0: scalars assigned later
    /// are starters without decomposition there, so they split the text into runs that are
    /// normalized independently (decompositions and combining classes of older scalars are
    /// stable across Unicode versions). Runs are normalized with the standard library's NFC
    /// (Foundation's precomposedStringWithCanonicalMapping on Linux misses Hangul LV+T).
    static func nfcLikeHF(_ bytes: UnsafeBufferPointer<UInt8>) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count)
        var runStart = 0
        var i = 0
        func flushRun(_ end: Int) {
            if end > runStart {
                let run = UnsafeBufferPointer(rebasing: bytes[runStart..<end])
                if isTriviallyNFC(run) {
                    out.append(contentsOf: run)
                } else {
                    out.append(contentsOf: String(decoding: run, as: UTF8.self)._nfcCodeUnits)
                }
            }
        }
        while i < bytes.count {
            let b = bytes[i]
            if b < 0xCC {
                i += b < 0x80 ? 1 : 2
                continue
            }
            let (cp, len) = decodeScalar(bytes, i)
            if CharClass.of(cp) & CharClass.newerThanUnicode9 != 0 {
                flushRun(i)
                out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[i..<(i + len)]))
                runStart = i + len
            }
            i += len
        }
        flushRun(bytes.count)
        return out
    }

    /// True if every scalar has NFC_Quick_Check=Yes and canonical combining class 0, which
    /// implies the text is already in NFC (UAX #15 quick check). Covers scalars below U+0300
    /// and the common CJK / kana / Hangul-syllable / Cyrillic / emoji blocks.
    static func isTriviallyNFC(_ b: UnsafeBufferPointer<UInt8>) -> Bool {
        var i = 0
        let n = b.count
        while i < n {
            let c = b[i]
            if c < 0xCC {
                i += c < 0x80 ? 1 : 2
                continue
            }  // scalars below U+0300
            let (cp, len) = decodeScalar(b, i)
            switch cp {
            case 0x0388...0x03FF,  // Greek letters (the NFC_QC=No singletons are below U+0388)
                0x0400...0x0482,  // Cyrillic letters (combining marks start at U+0483)
                0x0621...0x064A,  // Arabic letters (harakat start at U+064B)
                0x1E00...0x1EFF,  // Latin Extended Additional (precomposed, NFC_QC=Yes)
                0x2010...0x2027, 0x2030...0x205E,  // general punctuation (U+2000/2001 are singletons)
                0x3040...0x3098, 0x309B...0x30FF,  // kana without the combining sound marks
                0x4E00...0x9FFF,  // CJK unified ideographs
                0xAC00...0xD7A3,  // Hangul syllables (trailing jamo are not in this set)
                0x200D, 0xFE0F,  // ZWJ, emoji presentation selector
                0x1F300...0x1FAFF:  // emoji
                i += len
            default:
                return false
            }
        }
        return true
    }
}
