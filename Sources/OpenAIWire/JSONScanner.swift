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
        init(b: UnsafeRawBufferPointer, maxDepth: Int) { self.b = b; self.n = b.count; self.maxDepth = maxDepth }

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
            case UInt8(ascii: "{"): _ = try object(depth: depth + 1, collect: false); return .object
            case UInt8(ascii: "["): try array(depth: depth + 1); return .array
            case UInt8(ascii: "\""): _ = try string(decode: false); return .string
            case UInt8(ascii: "t"): try literal("true"); return .bool
            case UInt8(ascii: "f"): try literal("false"); return .bool
            case UInt8(ascii: "n"): try literal("null"); return .null
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): try number(); return .number
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
            } else { throw fail("invalid number") }
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
                if c < 0x80 { i += 1; continue }
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
            var lo: UInt8 = 0x80, hi: UInt8 = 0xBF
            switch c0 {
            case 0xC2...0xDF: len = 2
            case 0xE0: len = 3; lo = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: len = 3
            case 0xED: len = 3; hi = 0x9F
            case 0xF0: len = 4; lo = 0x90
            case 0xF1...0xF3: len = 4
            case 0xF4: len = 4; hi = 0x8F
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
            if i < n, b[i] == UInt8(ascii: "]") { i += 1; return }
            while true {
                _ = try value(depth: depth)
                skipWS()
                guard i < n else { throw fail("unterminated array") }
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "]") { i += 1; return }
                throw fail("expected ',' or ']' in array")
            }
        }

        mutating func object(depth: Int, collect: Bool) throws(Failure) -> [Member] {
            if depth > maxDepth { throw fail("nesting deeper than \(maxDepth) levels") }
            i += 1
            var members: [Member] = []
            skipWS()
            if i < n, b[i] == UInt8(ascii: "}") { i += 1; return members }
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
                if b[i] == UInt8(ascii: ",") { i += 1; continue }
                if b[i] == UInt8(ascii: "}") { i += 1; return members }
                throw fail("expected ',' or '}' in object")
            }
        }
    }
}

extension Array where Element == JSONScanner.Member {
    /// The member named `key`; with duplicate keys the last wins, as in most JSON parsers.
    public func member(named key: String) -> JSONScanner.Member? { last { $0.key == key } }
}
