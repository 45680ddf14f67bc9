import XCTest

@testable import OpenAIWire

final class SSEParserTests: XCTestCase {
    func testSplitsAnywhereAndKeepsRawBytes() throws {
        let stream = "data: {\"a\":1}\n\n: comment\n\ndata: line1\r\ndata: line2\r\n\r\nevent: x\ndata:nospace\r\rdata: [DONE]\n\n"
        let bytes = Array(stream.utf8)
        // Feed in every possible two-way split and byte by byte: same events every time.
        var reference: [SSEEvent]?
        for split in 0...bytes.count {
            var p = SSEParser()
            var events = try p.feed(bytes[..<split])
            events += try p.feed(bytes[split...])
            if let reference { XCTAssertEqual(events, reference, "split at \(split)") } else { reference = events }
        }
        var p = SSEParser()
        var oneByOne: [SSEEvent] = []
        for b in bytes { oneByOne += try p.feed([b]) }
        XCTAssertEqual(oneByOne, reference)

        let events = try XCTUnwrap(reference)
        XCTAssertEqual(events.map(\.dataString), ["{\"a\":1}", "", "line1\nline2", "nospace", "[DONE]"])
        XCTAssertEqual(events[3].event, "x")
        XCTAssertTrue(events[4].isDone)
        // Raw bytes concatenate back to the exact stream.
        XCTAssertEqual(events.flatMap(\.raw), bytes)
    }

    func testPartialEventDetected() throws {
        var p = SSEParser()
        let events = try p.feed(Array("data: {\"a\":1}\n\ndata: {\"trunc".utf8))
        XCTAssertEqual(events.count, 1)
        XCTAssertTrue(p.hasPartialEvent)
    }

    func testOversizedEventRejected() {
        var p = SSEParser(maxEventBytes: 64)
        XCTAssertThrowsError(try p.feed(Array(("data: " + String(repeating: "x", count: 100)).utf8)))
    }

    func testEncode() {
        XCTAssertEqual(String(decoding: SSE.encode(data: Array("{}".utf8)), as: UTF8.self), "data: {}\n\n")
    }
}
