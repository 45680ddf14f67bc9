/// A strict, allocation-light JSON validator (RFC 8259) that also reports where the values of a
/// top-level object's members sit in the input bytes.
///
/// The passthrough path uses it to check a request body and to splice a new `"model"` value into
/// the original bytes, so that every other byte the client sent reaches the upstream unchanged
/// (unknown fields, key order, number spelling). Deep nesting and invalid UTF-8 are rejected with
/// a message instead of recursing without bound.
public struct JSONScanner {
    public struct Failure: Error, Equatable, CustomStringConvertible {
        public var offset: Int
        public var reason: String
        public var description: String { "\(reason) at byte \(offset)" }
    }

    /// A top-level member: key (decoded, simple keys only) and the byte range of its value.
    public struct Member: Equatable, Sendable {
        public var key: String
        public var valueRange: Range<Int>
        public var valueKind: Kind
    }
    public enum Kind: Equatable, Sendable { case object, array, string, number, bool, null }

    public let maxDepth: Int
    public init(maxDepth: Int = 64) { self.maxDepth = maxDepth }

    /// Validates `bytes` as one JSON document whose root is an object, returning its members.
    public func scanObject(_ bytes: UnsafeRawBufferPointer) throws(Failure) -> [Member] {
        var p = Parser(b: bytes, maxDepth: maxDepth)
        p.skipWS()
        guard p.i < p.n, p.b[p.i] == UInt8(ascii: "{") else {
            throw Failure(offset: p.i, reason: "the body must be a JSON object")
        }
        let members = try p.object(depth: 1, collect: true)
        p.skipWS()
        if p.i != p.n { throw Failure(offset: p.i, reason: "unexpected data after the JSON value") }
        return members
    }

    /// Validates `bytes` as one JSON document whose root is an object, collecting nothing.
    public func validateObject(_ bytes: UnsafeRawBufferPointer) throws(Failure) {
        var p = Parser(b: bytes, maxDepth: maxDepth)
        p.skipWS()
        guard p.i < p.n, p.b[p.i] == UInt8(ascii: "{") else {
            throw Failure(offset: p.i, reason: "the body must be a JSON object")
        }
        _ = try p.object(depth: 1, collect: false)
        p.skipWS()
        if p.i != p.n { throw Failure(offset: p.i, reason: "unexpected data after the JSON value") }
    }

    public func scanObject(_ bytes: [UInt8]) throws(Failure) -> [Member] {
        do {
            return try bytes.withUnsafeBytes { buf in try self.scanObject(buf) }
        } catch let f as Failure { throw f } catch { throw Failure(offset: 0, reason: "\(error)") }
    }

    struct Parser {
        let b: UnsafeRawBufferPointer
        let n: Int
        var i = 0
        let maxDepth: Int
        init(b: UnsafeRawBufferPointer, maxDepth: Int) {
            self.b = b
            self.n = b.count
            self.maxDepth = maxDepth
        }

        func fail(_ reason: String) -> Failure { Failure(offset: i, reason: reason) }

        mutating func skipWS() {
            while i < n {
                let c = b[i]
                if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { i += 1 } else { break }
            }
        }

        mutating func value(depth: Int) throws(Failure) -> Kind {
            skipWS()
            guard i < n else { throw fail("unexpected end of input") }
            switch b[i] {
            case UInt8(ascii: "{"):
                _ = try object(depth: depth + 1, collect: false)
                return .object
            case UInt8(ascii: "["):
                try array(depth: depth + 1)
                return .array
            case UInt8(ascii: "\""):
                _ = try string(decode: false)
                return .string
            case UInt8(ascii: "t"):
                try literal("true")
                return .bool
            case UInt8(ascii: "f"):
                try literal("false")
                return .bool
            case UInt8(ascii: "n"):
                try literal("null")
                return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
                try number()
                return .number
            default: throw fail("unexpected character '\(Character(Unicode.Scalar(b[i])))'")
            }
        }

        mutating func literal(_ s: StaticString) throws(Failure) {
            let len = s.utf8CodeUnitCount
            guard i + len <= n else { throw fail("unexpected end of input") }
            let base = s.utf8Start
            for k in 0..<len where b[i + k] != base[k] { throw fail("invalid literal") }
            i += len
        }

        mutating func number() throws(Failure) {
            if b[i] == UInt8(ascii: "-") { i += 1 }
            guard i < n else { throw fail("unexpected end of input in number") }
            if b[i] == UInt8(ascii: "0") {
                i += 1
            } else if b[i] >= UInt8(ascii: "1") && b[i] <= UInt8(ascii: "9") {
                while i < n, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
            } else {
                throw fail("invalid number")
            }
            if i < n, b[i] == UInt8(ascii: ".") {
                i += 1
                let s = i
                while i < n, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
                if i == s { throw fail("invalid number: no digits after '.'") }
            }
            if i < n, b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E") {
                i += 1
                if i < n, b[i] == UInt8(ascii: "+") || b[i] == UInt8(ascii: "-") { i += 1 }
                let s = i
                while i < n, b[i] >= 0x30, b[i] <= 0x39 { i += 1 }
                if i == s { throw fail("invalid number: no digits in exponent") }
            }
        }

        /// Scans a string starting at the opening quote. Validates escapes and UTF-8.
        /// Returns the decoded value only when `decode` is set and the string has no escapes.
        mutating func string(decode: Bool) throws(Failure) -> String? {
            i += 1
            let start = i
            var sawEscape = false
            while true {
                guard i < n else { throw fail("unterminated string") }
                let c = b[i]
                if c == UInt8(ascii: "\"") { break }
                if c < 0x20 { throw fail("unescaped control character in string") }
                if c == UInt8(ascii: "\\") {
                    sawEscape = true
                    i += 1
                    guard i < n else { throw fail("unterminated escape") }
                    switch b[i] {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                        UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                        i += 1
                    case UInt8(ascii: "u"):
                        guard i + 4 < n else { throw fail("truncated \\u escape") }
                        for k in 1...4 where !isHex(b[i + k]) { throw fail("invalid \\u escape") }
                        i += 5
                    default: throw fail("invalid escape")
                    }
                    continue
                }
                if c < 0x80 {
                    i += 1
                    continue
                }
                try utf8Scalar()
            }
            let end = i
            i += 1
            if decode && !sawEscape {
                return String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<end]), as: UTF8.self)
            }
            return nil
        }

        func isHex(_ c: UInt8) -> Bool {
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
        }

        /// Validates one multi-byte UTF-8 sequence at `i` (RFC 3629: no overlongs, no surrogates).
        mutating func utf8Scalar() throws(Failure) {
            let c0 = b[i]
            var len = 0
            var lo: UInt8 = 0x80
            var hi: UInt8 = 0xBF
            switch c0 {
            case 0xC2...0xDF: len = 2
            case 0xE0:
                len = 3
                lo = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: len = 3
            case 0xED:
                len = 3
                hi = 0x9F
            case 0xF0:
                len = 4
                lo = 0x90
            case 0xF1...0xF3: len = 4
            case 0xF4:
                len = 4
                hi = 0x8F
            default: throw fail("invalid UTF-8")
            }
            guard i + len <= n else { throw fail("invalid UTF-8 (truncated sequence)") }
            let c1 = b[i + 1]
            if c1 < lo || c1 > hi { throw fail("invalid UTF-8") }
            for k in 2..<len where b[i + k] & 0xC0 != 0x80 { throw fail("invalid UTF-8") }
            i += len
        }

        mutating func array(depth: Int) throws(Failure) {
            if depth > maxDepth { throw fail("nesting deeper than \(maxDepth) levels") }
            i += 1
            skipWS()
            if i < n, b[i] == UInt8(ascii: "]") {
                i += 1
                return
            }
            while true {
                _ = try value(depth: depth)
                skipWS()
                guard i < n else { throw fail("unterminated array") }
                if b[i] == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                if b[i] == UInt8(ascii: "]") {
                    i += 1
                    return
                }
                throw fail("expected ',' or ']' in array")
            }
        }

        mutating func object(depth: Int, collect: Bool) throws(Failure) -> [Member] {
            if depth > maxDepth { throw fail("nesting deeper than \(maxDepth) levels") }
            i += 1
            var members: [Member] = []
            skipWS()
            if i < n, b[i] == UInt8(ascii: "}") {
                i += 1
                return members
            }
            while true {
                skipWS()
                guard i < n, b[i] == UInt8(ascii: "\"") else { throw fail("expected a string key in object") }
                let key = try string(decode: collect)
                skipWS()
                guard i < n, b[i] == UInt8(ascii: ":") else { throw fail("expected ':' after object key") }
                i += 1
                skipWS()
                let vstart = i
                let kind = try value(depth: depth)
                if collect, let key { members.append(Member(key: key, valueRange: vstart..<i, valueKind: kind)) }
                skipWS()
                guard i < n else { throw fail("unterminated object") }
                if b[i] == UInt8(ascii: ",") {
                    i += 1
                    continue
                }
                if b[i] == UInt8(ascii: "}") {
                    i += 1
                    return members
                }
                throw fail("expected ',' or '}' in object")
            }
        }
    }
}

extension Array where Element == JSONScanner.Member {
    /// The member named `key`; with duplicate keys the last wins, as in most JSON parsers.
    public func member(named key: String) -> JSONScanner.Member? { last { $0.key == key } }
}

/// A cursor over JSON bytes for the hot paths that read a few known fields (the chat request,
/// the upstream completion summary) without building Codable containers. It is only a fast
/// path: every method returns nil on anything it does not handle exactly like `JSONDecoder`
/// (odd types, duplicate keys, lone surrogates, non-integral integers...), and the caller then
/// decodes with `JSONDecoder`, which produces the result or the error. Input must already be
/// valid JSON (checked with `JSONScanner`).
struct JSONFastReader {
    let b: UnsafeRawBufferPointer
    var i = 0
    init(_ b: UnsafeRawBufferPointer) { self.b = b }

    mutating func skipWS() {
        while i < b.count {
            let c = b[i]
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { i += 1 } else { break }
        }
    }

    /// The next non-space byte, not consumed.
    mutating func peek() -> UInt8? {
        skipWS()
        return i < b.count ? b[i] : nil
    }

    mutating func consume(_ c: UInt8) -> Bool {
        if peek() == c {
            i += 1
            return true
        }
        return false
    }

    /// `null`, consumed.
    mutating func null() -> Bool {
        guard peek() == UInt8(ascii: "n"), i + 4 <= b.count else { return false }
        i += 4
        return true
    }

    mutating func bool() -> Bool? {
        switch peek() {
        case UInt8(ascii: "t"):
            i += 4
            return true
        case UInt8(ascii: "f"):
            i += 5
            return false
        default: return nil
        }
    }

    /// A string value, escapes decoded. Nil for non-strings and lone surrogates.
    mutating func string() -> String? {
        guard peek() == UInt8(ascii: "\"") else { return nil }
        i += 1
        let start = i
        while i < b.count, b[i] != UInt8(ascii: "\""), b[i] != UInt8(ascii: "\\") { i += 1 }
        guard i < b.count else { return nil }
        if b[i] == UInt8(ascii: "\"") {
            defer { i += 1 }
            return String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<i]), as: UTF8.self)
        }
        var out: [UInt8] = []
        out.reserveCapacity(i - start + 16)
        out.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[start..<i]))
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\"") {
                i += 1
                return String(decoding: out, as: UTF8.self)
            }
            if c != UInt8(ascii: "\\") {
                out.append(c)
                i += 1
                continue
            }
            guard i + 1 < b.count else { return nil }
            let e = b[i + 1]
            i += 2
            switch e {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "u"):
                guard var scalar = hex4() else { return nil }
                if (0xD800..<0xDC00).contains(scalar) {
                    guard i + 1 < b.count, b[i] == UInt8(ascii: "\\"), b[i + 1] == UInt8(ascii: "u") else { return nil }
                    i += 2
                    guard let low = hex4(), (0xDC00..<0xE000).contains(low) else { return nil }
                    scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                } else if (0xDC00..<0xE000).contains(scalar) {
                    return nil
                }
                guard let u = Unicode.Scalar(scalar) else { return nil }
                out.append(contentsOf: UTF8.encode(u)!)
            default: return nil
            }
        }
        return nil
    }

    private mutating func hex4() -> UInt32? {
        guard i + 4 <= b.count else { return nil }
        var v: UInt32 = 0
        for k in 0..<4 {
            let c = b[i + k]
            let d: UInt8
            switch c {
            case 0x30...0x39: d = c - 0x30
            case 0x41...0x46: d = c - 0x41 + 10
            case 0x61...0x66: d = c - 0x61 + 10
            default: return nil
            }
            v = v << 4 | UInt32(d)
        }
        i += 4
        return v
    }

    /// The bytes of a number value.
    private mutating func numberText() -> UnsafeRawBufferPointer? {
        guard let c = peek(), c == UInt8(ascii: "-") || (c >= 0x30 && c <= 0x39) else { return nil }
        let start = i
        while i < b.count {
            let c = b[i]
            if (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") || c == UInt8(ascii: ".")
                || c == UInt8(ascii: "e") || c == UInt8(ascii: "E")
            {
                i += 1
            } else {
                break
            }
        }
        return UnsafeRawBufferPointer(rebasing: b[start..<i])
    }

    /// A number as Double (correctly rounded, like JSONDecoder). Nil for non-numbers and
    /// values out of Double's range.
    mutating func double() -> Double? {
        guard let t = numberText() else { return nil }
        guard let d = Double(String(decoding: t, as: UTF8.self)), d.isFinite else { return nil }
        return d
    }

    /// A number written as a plain integer (digits, optional minus) that fits in Int. Others
    /// (fractions, exponents) are left to JSONDecoder.
    mutating func integer() -> Int? {
        let save = i
        guard let t = numberText() else { return nil }
        var k = 0
        var negative = false
        if t[0] == UInt8(ascii: "-") {
            negative = true
            k = 1
        }
        guard k < t.count, t.count - k <= 18 else {
            i = save
            return nil
        }
        var v = 0
        while k < t.count {
            let c = t[k]
            guard c >= 0x30, c <= 0x39 else {
                i = save
                return nil
            }
            v = v * 10 + Int(c - 0x30)
            k += 1
        }
        return negative ? -v : v
    }

    /// Skips one (valid) value.
    mutating func skipValue() -> Bool {
        guard let c = peek() else { return false }
        switch c {
        case UInt8(ascii: "\""):
            i += 1
            while i < b.count {
                if b[i] == UInt8(ascii: "\\") {
                    i += 2
                    continue
                }
                if b[i] == UInt8(ascii: "\"") {
                    i += 1
                    return true
                }
                i += 1
            }
            return false
        case UInt8(ascii: "{"), UInt8(ascii: "["):
            var depth = 0
            while i < b.count {
                let c = b[i]
                if c == UInt8(ascii: "\"") {
                    guard skipValue() else { return false }
                    continue
                }
                if c == UInt8(ascii: "{") || c == UInt8(ascii: "[") { depth += 1 }
                if c == UInt8(ascii: "}") || c == UInt8(ascii: "]") {
                    depth -= 1
                    if depth == 0 {
                        i += 1
                        return true
                    }
                }
                i += 1
            }
            return false
        case UInt8(ascii: "t"):
            i += 4
            return true
        case UInt8(ascii: "f"):
            i += 5
            return true
        case UInt8(ascii: "n"):
            i += 4
            return true
        default: return numberText() != nil
        }
    }

    /// Iterates the members of an object; `body` gets the index of the key in `keys` and
    /// reads the value (returns false to give up). Other members are skipped. Gives up on a
    /// key with escapes and on a repeated tracked key (JSONDecoder's pick is not replicated).
    mutating func object(keys: [[UInt8]], _ body: (inout JSONFastReader, Int) -> Bool) -> Bool {
        guard consume(UInt8(ascii: "{")) else { return false }
        if consume(UInt8(ascii: "}")) { return true }
        var seen: UInt64 = 0
        while true {
            guard peek() == UInt8(ascii: "\""), let key = rawKey(), consume(UInt8(ascii: ":")) else { return false }
            if let k = keys.firstIndex(where: { $0.elementsEqual(key) }) {
                if seen & (1 << k) != 0 { return false }
                seen |= 1 << k
                guard body(&self, k) else { return false }
            } else {
                guard skipValue() else { return false }
            }
            if consume(UInt8(ascii: ",")) { continue }
            return consume(UInt8(ascii: "}"))
        }
    }

    /// The bytes of a key without escapes (nil if it has any), quotes consumed.
    private mutating func rawKey() -> UnsafeRawBufferPointer? {
        i += 1
        let start = i
        while i < b.count {
            let c = b[i]
            if c == UInt8(ascii: "\\") { return nil }
            if c == UInt8(ascii: "\"") {
                i += 1
                return UnsafeRawBufferPointer(rebasing: b[start..<(i - 1)])
            }
            i += 1
        }
        return nil
    }

    static func keys(_ names: String...) -> [[UInt8]] { names.map { Array($0.utf8) } }

    /// Iterates the elements of an array.
    mutating func array(_ body: (inout JSONFastReader) -> Bool) -> Bool {
        guard consume(UInt8(ascii: "[")) else { return false }
        if consume(UInt8(ascii: "]")) { return true }
        while true {
            guard body(&self) else { return false }
            if consume(UInt8(ascii: ",")) { continue }
            return consume(UInt8(ascii: "]"))
        }
    }
}
