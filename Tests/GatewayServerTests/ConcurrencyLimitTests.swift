import FakeUpstream
import Foundation
import XCTest

@testable import GatewayServer

/// The concurrency limit holds a slot while a stream is being relayed (429 for others once the
/// queue wait runs out), and frees it as soon as a buffered response is returned.
final class ConcurrencyLimitTests: XCTestCase {
    func testStreamHoldsTheSlotBufferedResponsesFreeIt() async throws {
        let h = try await Harness.start(script: { r in
            guard String(decoding: r.body, as: UTF8.self).contains(#""stream":true"#) else { return nil }
            return .stream(parts: FakeUpstream.streamParts(model: "m", text: "a b c d", includeUsage: false), delay: .milliseconds(150))
        }) { c in
            c.limits.maxConcurrentRequests = 1
            c.limits.queueTimeoutMs = 100
        }
        let streamBody = #"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hello there"}]}"#
        let stream = Task { try await h.chat(streamBody) }
        try await Task.sleep(for: .milliseconds(300))
        let rejected = try await h.chat(simpleChat)
        XCTAssertEqual(rejected.status, 429, rejected.body)
        let streamed = try await stream.value
        XCTAssertEqual(streamed.status, 200)
        XCTAssertTrue(streamed.body.hasSuffix("data: [DONE]\n\n"))
        // One slot: each buffered response must give it back before the next request.
        for _ in 0..<3 {
            let ok = try await h.chat(simpleChat)
            XCTAssertEqual(ok.status, 200, ok.body)
        }
        // Buffered error responses too.
        for _ in 0..<2 {
            let bad = try await h.chat(#"{"model":"gpt-4o-mini","messages":[]}"#)
            XCTAssertEqual(bad.status, 400, bad.body)
        }
        let last = try await h.chat(simpleChat)
        XCTAssertEqual(last.status, 200, last.body)
        // Still exactly one slot (nothing was released twice): a stream blocks again.
        let again = Task { try await h.chat(streamBody) }
        try await Task.sleep(for: .milliseconds(300))
        let rejectedAgain = try await h.chat(simpleChat)
        XCTAssertEqual(rejectedAgain.status, 429, rejectedAgain.body)
        let streamedAgain = try await again.value
        XCTAssertEqual(streamedAgain.status, 200)
        try await h.stop()
    }
}
