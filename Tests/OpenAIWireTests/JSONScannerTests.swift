import XCTest

@testable import OpenAIWire

final class JSONScannerTests: XCTestCase {
    let scanner = JSONScanner()

    func testMembersAndRanges() throws {
        let body = Array(#"{"model" : "gpt-4o", "x": {"a": [1, 2.5e3, -0]}, "s": "h\u00e9\"", "n": null, "b": true}"#.utf8)
        let members = try scanner.scanObject(body)
        XCTAssertEqual(members.map(\.key), ["model", "x", "s", "n", "b"])
        let model = try XCTUnwrap(members.member(named: "model"))
        XCTAssertEqual(String(decoding: body[model.valueRange], as: UTF8.self), #""gpt-4o""#)
        XCTAssertEqual(model.valueKind, .string)
        XCTAssertEqual(members.member(named: "x")?.valueKind, .object)
        XCTAssertEqual(members.member(named: "n")?.valueKind, .null)
    }

    func testDuplicateKeyLastWins() throws {
        let members = try scanner.scanObject(Array(#"{"model":"a","model":"b"}"#.utf8))
        XCTAssertEqual(members.member(named: "model")?.valueRange, 21..<24)
    }

    func testRejectsMalformedInput() {
        let bad: [String] = [
            "", "[]", "{", "{\"a\":}", "{\"a\":1,}", "{\"a\" 1}", "{'a':1}", "{\"a\":01}", "{\"a\":1.}",
            "{\"a\":1e}", "{\"a\":tru}", "{\"a\":\"\\x\"}", "{\"a\":\"\\u12\"}", "{\"a\":1} x",
            "{\"a\":\"line\nbreak\"}", "{\"a\":[1,2}", "{\"a\":-}", "{\"a\":NaN}",
        ]
        for s in bad {
            XCTAssertThrowsError(try scanner.scanObject(Array(s.utf8)), "accepted: \(s.debugDescription)")
        }
    }

    func testRejectsInvalidUTF8() {
        let cases: [[UInt8]] = [
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC3, 0x22, 0x7D],  // truncated 2-byte
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xC0, 0xAF, 0x22, 0x7D],  // overlong
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xED, 0xA0, 0x80, 0x22, 0x7D],  // surrogate
            [0x7B, 0x22, 0x61, 0x22, 0x3A, 0x22, 0xFF, 0x22, 0x7D],
        ]
        for c in cases { XCTAssertThrowsError(try scanner.scanObject(c)) }
        XCTAssertNoThrow(try scanner.scanObject(Array("{\"a\":\"日本😀\"}".utf8)))
    }

    func testDepthLimit() {
        let deep = "{\"a\":" + String(repeating: "[", count: 100) + String(repeating: "]", count: 100) + "}"
        XCTAssertThrowsError(try scanner.scanObject(Array(deep.utf8))) { e in
            XCTAssertTrue("\(e)".contains("nesting"), "\(e)")
        }
        let ok = "{\"a\":" + String(repeating: "[", count: 30) + String(repeating: "]", count: 30) + "}"
        XCTAssertNoThrow(try scanner.scanObject(Array(ok.utf8)))
    }

    /// Cross-check against Foundation's parser on random mutations of a valid body: whenever
    /// the scanner accepts, JSONSerialization must accept too (the scanner is never looser).
    func testNeverLooserThanFoundation() {
        var rng = SystemRandomNumberGenerator()
        let seed = Array(#"{"model":"m","messages":[{"role":"user","content":"hi \u00e9"}],"t":0.5,"s":true}"#.utf8)
        let alphabet = Array("{}[],:\"\\ 0123456789.eE+-truefalsn".utf8)
        for _ in 0..<3000 {
            var b = seed
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let i = Int.random(in: 0..<b.count, using: &rng)
                switch Int.random(in: 0..<3, using: &rng) {
                case 0: b[i] = alphabet.randomElement(using: &rng)!
                case 1: b.remove(at: i)
                default: b.insert(alphabet.randomElement(using: &rng)!, at: i)
                }
                if b.isEmpty { break }
            }
            if (try? scanner.scanObject(b)) != nil {
                let foundation = try? JSONSerialization.jsonObject(with: Data(b))
                XCTAssertNotNil(foundation, "scanner accepted what Foundation rejects: \(String(decoding: b, as: UTF8.self))")
            }
        }
    }
}
