// Python-compatible string helpers.
//
// The Prompt-R1 reference implementation is Python. Wherever the wire bytes depend on Python's
// behaviour (json.dumps escaping, str.strip(), "characters" = code points, json.loads acceptance)
// we reproduce it here on Unicode scalars, never on Swift `Character`s (grapheme clusters) and
// never with Swift `==` on `String` (which compares canonically-equivalent strings as equal,
// where Python compares code points).

import Foundation

public enum PythonString {
    /// The code points for which CPython's `str.isspace()` is true (used by `str.strip()` and
    /// `str.split()` with no argument): bidi class WS/B/S or category Zs.
    public static func isSpace(_ s: Unicode.Scalar) -> Bool {
        switch s.value {
        case 0x09...0x0D, 0x1C...0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A,
            0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
            return true
        default:
            return false
        }
    }

    /// Python `s.strip()` (no argument).
    public static func strip(_ s: String) -> String {
        let scalars = Array(s.unicodeScalars)
        var lo = 0
        var hi = scalars.count
        while lo < hi, isSpace(scalars[lo]) { lo += 1 }
        while hi > lo, isSpace(scalars[hi - 1]) { hi -= 1 }
        if lo == 0 && hi == scalars.count { return s }
        var view = String.UnicodeScalarView()
        view.append(contentsOf: scalars[lo..<hi])
        return String(view)
    }

    /// Python `s.split()` (no argument): runs of white space separate, empty parts dropped.
    public static func split(_ s: String) -> [String] {
        var parts: [String] = []
        var current = String.UnicodeScalarView()
        for sc in s.unicodeScalars {
            if isSpace(sc) {
                if !current.isEmpty {
                    parts.append(String(current))
                    current = String.UnicodeScalarView()
                }
            } else {
                current.append(sc)
            }
        }
        if !current.isEmpty { parts.append(String(current)) }
        return parts
    }

    /// Length in Python characters (Unicode scalars).
    public static func length(_ s: String) -> Int { s.unicodeScalars.count }

    /// Python `s[:n] + "..."` when `len(s) > n`, else `s`: the reference's result cut.
    public static func cut(_ s: String, maxChars: Int) -> String {
        let n = max(0, maxChars)
        var count = 0
        var idx = s.unicodeScalars.startIndex
        while idx != s.unicodeScalars.endIndex {
            if count == n { break }
            count += 1
            idx = s.unicodeScalars.index(after: idx)
        }
        if idx == s.unicodeScalars.endIndex { return s }
        return String(s.unicodeScalars[..<idx]) + "..."
    }

    /// Code-point equality (Python `==`), unlike Swift's canonical-equivalence `==`.
    public static func equal(_ a: String, _ b: String) -> Bool {
        a.unicodeScalars.elementsEqual(b.unicodeScalars)
    }

    /// Python `needle in haystack` on code points.
    public static func contains(_ haystack: String, _ needle: String) -> Bool {
        let h = Array(haystack.unicodeScalars.map(\.value))
        let n = Array(needle.unicodeScalars.map(\.value))
        return ScalarSearch.find(n, in: h, from: 0) != nil
    }
}

/// Substring search on code-point arrays (exact, no normalisation).
enum ScalarSearch {
    static func find(_ needle: [UInt32], in hay: [UInt32], from start: Int) -> Int? {
        if needle.isEmpty { return start <= hay.count ? start : nil }
        guard hay.count >= needle.count, start <= hay.count - needle.count else { return nil }
        let first = needle[0]
        var i = start
        let last = hay.count - needle.count
        outer: while i <= last {
            if hay[i] != first {
                i += 1
                continue
            }
            var j = 1
            while j < needle.count {
                if hay[i + j] != needle[j] {
                    i += 1
                    continue outer
                }
                j += 1
            }
            return i
        }
        return nil
    }

    static func count(_ needle: [UInt32], in hay: [UInt32]) -> Int {
        // Python str.count: non-overlapping occurrences.
        var n = 0
        var pos = 0
        while let i = find(needle, in: hay, from: pos) {
            n += 1
            pos = i + max(needle.count, 1)
        }
        return n
    }

    static func hasPrefix(_ hay: [UInt32], _ p: [UInt32], at i: Int) -> Bool {
        guard i >= 0, i + p.count <= hay.count else { return false }
        for k in 0..<p.count where hay[i + k] != p[k] { return false }
        return true
    }

    static func codes(_ s: String) -> [UInt32] { s.unicodeScalars.map(\.value) }

    static func string(_ codes: ArraySlice<UInt32>) -> String {
        var view = String.UnicodeScalarView()
        for c in codes { view.append(Unicode.Scalar(c) ?? "\u{FFFD}") }
        return String(view)
    }
}

// MARK: - JSON value with Python semantics

/// A JSON value as Python's `json` module sees it. Objects keep insertion order (Python dicts do),
/// which `json.dumps` relies on for byte-exact output.
public indirect enum PyJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int)
    case double(Double)
    case string(String)
    case array([PyJSON])
    case object([(String, PyJSON)])

    public static func == (lhs: PyJSON, rhs: PyJSON) -> Bool {
        switch (lhs, rhs) {
        case (.null, .null): return true
        case (.bool(let a), .bool(let b)): return a == b
        case (.int(let a), .int(let b)): return a == b
        case (.double(let a), .double(let b)): return a == b || (a.isNaN && b.isNaN)
        case (.string(let a), .string(let b)): return PythonString.equal(a, b)
        case (.array(let a), .array(let b)): return a == b
        case (.object(let a), .object(let b)):
            guard a.count == b.count else { return false }
            for (x, y) in zip(a, b) where !(PythonString.equal(x.0, y.0) && x.1 == y.1) { return false }
            return true
        default: return false
        }
    }

    /// Python `key in d` / `d[key]` (last duplicate wins, as in json.loads).
    public subscript(key: String) -> PyJSON? {
        guard case .object(let pairs) = self else { return nil }
        for (k, v) in pairs.reversed() where PythonString.equal(k, key) { return v }
        return nil
    }
}

/// `json.dumps(value)` with the defaults: `ensure_ascii=True`, separators `", "` and `": "`,
/// keys in insertion order.
public func pythonJSONDumps(_ value: PyJSON) -> String {
    var out = ""
    writePythonJSON(value, into: &out)
    return out
}

/// `json.dumps(s)` for a string.
public func pythonJSONDumps(_ s: String) -> String {
    var out = ""
    writePythonJSONString(s, into: &out)
    return out
}

private func writePythonJSON(_ value: PyJSON, into out: inout String) {
    switch value {
    case .null: out += "null"
    case .bool(let b): out += b ? "true" : "false"
    case .int(let i): out += String(i)
    case .double(let d):
        if d.isNaN {
            out += "NaN"
        } else if d == .infinity {
            out += "Infinity"
        } else if d == -.infinity {
            out += "-Infinity"
        } else {
            out += "\(d)"
        }
    case .string(let s): writePythonJSONString(s, into: &out)
    case .array(let items):
        out += "["
        for (i, item) in items.enumerated() {
            if i > 0 { out += ", " }
            writePythonJSON(item, into: &out)
        }
        out += "]"
    case .object(let pairs):
        out += "{"
        for (i, (k, v)) in pairs.enumerated() {
            if i > 0 { out += ", " }
            writePythonJSONString(k, into: &out)
            out += ": "
            writePythonJSON(v, into: &out)
        }
        out += "}"
    }
}

private let hexDigits: [Character] = Array("0123456789abcdef")

private func appendU4(_ v: UInt32, into out: inout String) {
    out += "\\u"
    out.append(hexDigits[Int((v >> 12) & 0xF)])
    out.append(hexDigits[Int((v >> 8) & 0xF)])
    out.append(hexDigits[Int((v >> 4) & 0xF)])
    out.append(hexDigits[Int(v & 0xF)])
}

private func writePythonJSONString(_ s: String, into out: inout String) {
    out += "\""
    for sc in s.unicodeScalars {
        let v = sc.value
        switch v {
        case 0x22: out += "\\\""
        case 0x5C: out += "\\\\"
        case 0x0A: out += "\\n"
        case 0x0D: out += "\\r"
        case 0x09: out += "\\t"
        case 0x08: out += "\\b"
        case 0x0C: out += "\\f"
        case 0x20...0x7E: out.unicodeScalars.append(sc)
        case 0x10000...:
            let u = v - 0x10000
            appendU4(0xD800 | (u >> 10), into: &out)
            appendU4(0xDC00 | (u & 0x3FF), into: &out)
        default:  // other control characters, DEL and the rest of the BMP
            appendU4(v, into: &out)
        }
    }
    out += "\""
}

// MARK: - json.loads

/// Why `json.loads` would raise `JSONDecodeError`; `offset` is in Unicode scalars.
public struct PythonJSONDecodeError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public var offset: Int
    public var description: String { "JSONDecodeError: \(message) at char \(offset)" }
}

/// A JSON reader that accepts exactly what CPython's `json.loads` (C scanner, strict=True)
/// accepts: whitespace `[ \t\n\r]` only, NaN/Infinity/-Infinity literals, no control characters
/// inside strings, ASCII digits only, duplicate keys allowed (last wins), nothing after the value.
/// Lone surrogates from `\u` escapes cannot live in a Swift String: they become U+FFFD.
public func pythonJSONLoads(_ text: String) throws(PythonJSONDecodeError) -> PyJSON {
    var reader = PyJSONReader(Array(text.unicodeScalars.map(\.value)))
    return try reader.parseDocument()
}

private struct PyJSONReader {
    let s: [UInt32]
    var i = 0
    var depth = 0
    static let maxDepth = 900

    init(_ s: [UInt32]) { self.s = s }

    func fail(_ message: String, _ at: Int? = nil) -> PythonJSONDecodeError {
        PythonJSONDecodeError(message: message, offset: at ?? i)
    }

    mutating func skipWS() {
        while i < s.count, s[i] == 0x20 || s[i] == 0x09 || s[i] == 0x0A || s[i] == 0x0D { i += 1 }
    }

    mutating func parseDocument() throws(PythonJSONDecodeError) -> PyJSON {
        skipWS()
        let v = try parseValue()
        skipWS()
        if i != s.count { throw fail("Extra data") }
        return v
    }

    func matches(_ lit: String, at pos: Int) -> Bool {
        let codes = lit.unicodeScalars.map(\.value)
        return ScalarSearch.hasPrefix(s, codes, at: pos)
    }

    mutating func parseValue() throws(PythonJSONDecodeError) -> PyJSON {
        guard i < s.count else { throw fail("Expecting value") }
        let c = s[i]
        switch c {
        case 0x22:  // "
            return .string(try parseString())
        case 0x7B:  // {
            return try parseObject()
        case 0x5B:  // [
            return try parseArray()
        case 0x6E where matches("null", at: i):
            i += 4
            return .null
        case 0x74 where matches("true", at: i):
            i += 4
            return .bool(true)
        case 0x66 where matches("false", at: i):
            i += 5
            return .bool(false)
        case 0x4E where matches("NaN", at: i):
            i += 3
            return .double(.nan)
        case 0x49 where matches("Infinity", at: i):
            i += 8
            return .double(.infinity)
        case 0x2D where matches("-Infinity", at: i):
            i += 9
            return .double(-.infinity)
        case 0x2D, 0x30...0x39:
            return try parseNumber()
        default:
            throw fail("Expecting value")
        }
    }

    mutating func parseNumber() throws(PythonJSONDecodeError) -> PyJSON {
        let start = i
        if s[i] == 0x2D { i += 1 }
        guard i < s.count, (0x30...0x39).contains(s[i]) else {
            i = start
            throw fail("Expecting value")
        }
        if s[i] == 0x30 { i += 1 } else { while i < s.count, (0x30...0x39).contains(s[i]) { i += 1 } }
        var isInt = true
        if i + 1 < s.count, s[i] == 0x2E, (0x30...0x39).contains(s[i + 1]) {
            isInt = false
            i += 1
            while i < s.count, (0x30...0x39).contains(s[i]) { i += 1 }
        }
        if i < s.count, s[i] == 0x65 || s[i] == 0x45 {
            var j = i + 1
            if j < s.count, s[j] == 0x2B || s[j] == 0x2D { j += 1 }
            if j < s.count, (0x30...0x39).contains(s[j]) {
                isInt = false
                i = j
                while i < s.count, (0x30...0x39).contains(s[i]) { i += 1 }
            }
        }
        let text = ScalarSearch.string(s[start..<i])
        if isInt, let v = Int(text) { return .int(v) }
        return .double(Double(text) ?? .nan)
    }

    func hexValue(_ c: UInt32) -> UInt32? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }

    mutating func readU4(at pos: Int) -> UInt32? {
        guard pos + 4 <= s.count else { return nil }
        var v: UInt32 = 0
        for k in 0..<4 {
            guard let h = hexValue(s[pos + k]) else { return nil }
            v = v << 4 | h
        }
        return v
    }

    mutating func parseString() throws(PythonJSONDecodeError) -> String {
        let begin = i
        i += 1  // opening quote
        var view = String.UnicodeScalarView()
        while true {
            guard i < s.count else { throw fail("Unterminated string starting at", begin) }
            let c = s[i]
            if c == 0x22 {
                i += 1
                return String(view)
            }
            if c < 0x20 { throw fail("Invalid control character at") }
            if c != 0x5C {
                view.append(Unicode.Scalar(c) ?? "\u{FFFD}")
                i += 1
                continue
            }
            // backslash escape
            guard i + 1 < s.count else { throw fail("Unterminated string starting at", begin) }
            let e = s[i + 1]
            switch e {
            case 0x22:
                view.append("\"")
                i += 2
            case 0x5C:
                view.append("\\")
                i += 2
            case 0x2F:
                view.append("/")
                i += 2
            case 0x62:
                view.append("\u{08}")
                i += 2
            case 0x66:
                view.append("\u{0C}")
                i += 2
            case 0x6E:
                view.append("\n")
                i += 2
            case 0x72:
                view.append("\r")
                i += 2
            case 0x74:
                view.append("\t")
                i += 2
            case 0x75:
                guard let u = readU4(at: i + 2) else { throw fail("Invalid \\uXXXX escape", i + 1) }
                i += 6
                if (0xD800...0xDBFF).contains(u), i + 1 < s.count, s[i] == 0x5C, s[i + 1] == 0x75,
                    let lo = readU4(at: i + 2), (0xDC00...0xDFFF).contains(lo)
                {
                    i += 6
                    let cp = 0x10000 + ((u - 0xD800) << 10) + (lo - 0xDC00)
                    view.append(Unicode.Scalar(cp) ?? "\u{FFFD}")
                } else {
                    view.append(Unicode.Scalar(u) ?? "\u{FFFD}")  // lone surrogate -> U+FFFD
                }
            default:
                throw fail("Invalid \\escape", i)
            }
        }
    }

    mutating func parseObject() throws(PythonJSONDecodeError) -> PyJSON {
        depth += 1
        defer { depth -= 1 }
        if depth > Self.maxDepth { throw fail("Maximum nesting depth exceeded") }
        i += 1
        var pairs: [(String, PyJSON)] = []
        skipWS()
        if i < s.count, s[i] == 0x7D {
            i += 1
            return .object(pairs)
        }
        while true {
            guard i < s.count, s[i] == 0x22 else {
                throw fail("Expecting property name enclosed in double quotes")
            }
            let key = try parseString()
            skipWS()
            guard i < s.count, s[i] == 0x3A else { throw fail("Expecting ':' delimiter") }
            i += 1
            skipWS()
            let value = try parseValue()
            // Python dict semantics: a duplicate key keeps its first position, takes the last value.
            if let at = pairs.firstIndex(where: { PythonString.equal($0.0, key) }) {
                pairs[at].1 = value
            } else {
                pairs.append((key, value))
            }
            skipWS()
            guard i < s.count else { throw fail("Expecting ',' delimiter") }
            if s[i] == 0x7D {
                i += 1
                return .object(pairs)
            }
            guard s[i] == 0x2C else { throw fail("Expecting ',' delimiter") }
            i += 1
            skipWS()
        }
    }

    mutating func parseArray() throws(PythonJSONDecodeError) -> PyJSON {
        depth += 1
        defer { depth -= 1 }
        if depth > Self.maxDepth { throw fail("Maximum nesting depth exceeded") }
        i += 1
        var items: [PyJSON] = []
        skipWS()
        if i < s.count, s[i] == 0x5D {
            i += 1
            return .array(items)
        }
        while true {
            skipWS()
            items.append(try parseValue())
            skipWS()
            guard i < s.count else { throw fail("Expecting ',' delimiter") }
            if s[i] == 0x5D {
                i += 1
                return .array(items)
            }
            guard s[i] == 0x2C else { throw fail("Expecting ',' delimiter") }
            i += 1
        }
    }
}
