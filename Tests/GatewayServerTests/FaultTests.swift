import AsyncHTTPClient
import FakeUpstream
import Foundation
import GRDB
import NIOCore
import OpenAIWire
import TrafficLog
import XCTest

@testable import GatewayServer

/// One test per upstream fault, each run for a non-streaming and a streaming request. For each:
/// what the client gets (status, OpenAI error code, in-band error for streams that already
/// started), whether the gateway retried, and what the traffic log holds.
final class FaultTests: XCTestCase {
    static func chatBody(_ model: String = "gpt-4o-mini", stream: Bool) -> String {
        #"{"model":"\#(model)","stream":\#(stream),"messages":[{"role":"user","content":"fault test"}]}"#
    }

    static let serverError503 = #"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#

    /// What a streaming client saw: the data lines, and the error object if one came in-band.
    struct StreamOutcome {
        var status: Int
        var events: [String]
        var inBandError: [String: Any]? {
            for e in events {
                if let o = (try? JSONSerialization.jsonObject(with: Data(e.utf8))) as? [String: Any], let err = o["error"] as? [String: Any]
                {
                    return err
                }
            }
            return nil
        }
        var endsWithDone: Bool { events.last == "[DONE]" }
    }

    static func dataLines(_ body: String) -> [String] {
        body.components(separatedBy: "\n").filter { $0.hasPrefix("data: ") }.map { String($0.dropFirst(6)) }
    }

    /// Reads the latest episode (the log is drained by `stop()` first).
    static func episodes(_ h: Harness) throws -> [Row] {
        try h.withDatabase { db in try Row.fetchAll(db, sql: "SELECT status, outcome, error, stream FROM episodes ORDER BY id") }
    }

    /// The pair every mid-body fault is checked with: a non-stream request must get `status` with
    /// the OpenAI error `code`; a stream request must start (200), carry the error in-band (code
    /// `streamCode`, after `streamEvents - 2` relayed events when given) and end with [DONE]; then,
    /// after the log drained, the two rows must have these statuses and outcomes.
    @discardableResult
    func checkPlainAndStream(
        _ h: Harness, status: Int, code: String, streamCode: String?, streamEvents: Int?,
        logged: [Int]?, outcomes: [String], file: StaticString = #filePath, line: UInt = #line
    ) async throws -> StreamOutcome {
        let plain = try await h.chat(Self.chatBody(stream: false))
        XCTAssertEqual(assertOpenAIError(plain, status: status, file: file, line: line)["code"] as? String, code, file: file, line: line)
        let reply = try await h.chat(Self.chatBody(stream: true))
        XCTAssertEqual(reply.status, 200, "the stream had started: the error comes in-band", file: file, line: line)
        let s = StreamOutcome(status: reply.status, events: Self.dataLines(reply.body))
        if let streamEvents { XCTAssertEqual(s.events.count, streamEvents, "\(s.events)", file: file, line: line) }
        if let streamCode { XCTAssertEqual(s.inBandError?["code"] as? String, streamCode, file: file, line: line) }
        XCTAssertNotNil(s.inBandError, file: file, line: line)
        XCTAssertTrue(s.endsWithDone, file: file, line: line)
        try await h.stop()
        let rows = try Self.episodes(h)
        if let logged { XCTAssertEqual(rows.map { $0["status"] as Int }, logged, file: file, line: line) }
        XCTAssertEqual(rows.map { $0["outcome"] as String }, outcomes, file: file, line: line)
        return s
    }

    // MARK: Connection refused

    func testConnectionRefused() async throws {
        let h = try await Harness.start(configure: { c in
            c.upstream.baseURL = "http://127.0.0.1:1/v1"
            c.upstream.connectTimeoutMs = 300
            c.upstream.maxRetries = 2
            c.upstream.retryBaseDelayMs = 10
            c.upstream.circuitBreakerFailures = 0
        })
        for stream in [false, true] {
            let started = Date()
            let e = assertOpenAIError(try await h.chat(Self.chatBody(stream: stream)), status: 502)
            XCTAssertEqual(e["code"] as? String, "upstream_unreachable")
            // AsyncHTTPClient retries a refused connect inside the connect timeout; the gateway's
            // own retries come on top: 3 x 300 ms plus backoff, far from the 120 s first-byte wait.
            XCTAssertLessThan(Date().timeIntervalSince(started), 5)
        }
        try await h.stop()
        let rows = try Self.episodes(h)
        XCTAssertEqual(rows.map { $0["status"] as Int }, [502, 502])
        XCTAssertEqual(rows.map { $0["outcome"] as String }, ["upstream_error", "upstream_error"])
        XCTAssertEqual(rows.map { $0["stream"] as Int }, [0, 1])
        XCTAssertTrue(rows.allSatisfy { ($0["error"] as String?)?.contains("could not be reached") == true })
    }

    /// Connect failures are retried (nothing reached the upstream), with exponential backoff:
    /// the time taken shows the waits happened.
    func testConnectFailureIsRetriedWithBackoff() async throws {
        let h = try await Harness.start(configure: { c in
            c.upstream.baseURL = "http://127.0.0.1:1/v1"
            c.upstream.connectTimeoutMs = 200
            c.upstream.maxRetries = 3
            c.upstream.retryBaseDelayMs = 100
            c.upstream.circuitBreakerFailures = 0
        })
        let started = Date()
        assertOpenAIError(try await h.chat(Self.chatBody(stream: false)), status: 502)
        // Four connect attempts of 200 ms each and three backoff waits (50-100 % of 100, 200 and
        // 400 ms, so at least 350 ms): at least 1.15 s. Without retries it would be 0.2 s.
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertGreaterThanOrEqual(elapsed, 1.1)
        XCTAssertLessThan(elapsed, 10)
        try await h.stop()
    }

    // MARK: Slow first byte

    func testSlowFirstByteIs504AndNotRetried() async throws {
        let h = try await Harness.start(
            script: { r in
                r.path == "/v1/chat/completions" ? .delayed(.seconds(3), FakeUpstream.defaultReply(r)) : nil
            },
            configure: { c in
                c.upstream.firstByteTimeoutMs = 300
                c.upstream.maxRetries = 2
            })
        for stream in [false, true] {
            let e = assertOpenAIError(try await h.chat(Self.chatBody(stream: stream)), status: 504)
            XCTAssertEqual(e["code"] as? String, "upstream_timeout")
            XCTAssertTrue((e["message"] as? String ?? "").contains("first byte"))
        }
        // A timed-out request may already be running upstream: sending it again is not safe.
        XCTAssertEqual(h.upstream.received.count, 2)
        try await h.stop()
        XCTAssertEqual(try Self.episodes(h).map { $0["status"] as Int }, [504, 504])
    }

    // MARK: Hang in the middle of a body

    func testHangMidStreamHitsIdleTimeout() async throws {
        let h = try await Harness.start(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                let model = r.json?["model"] as? String ?? "m"
                if r.json?["stream"] as? Bool == true {
                    return .stream(
                        parts: FakeUpstream.streamParts(model: model, text: "one two three four", includeUsage: false), hangAfter: 2)
                }
                let whole = FakeUpstream.completionJSON(model: model, text: "one two three")
                let cut = whole.index(whole.startIndex, offsetBy: 20)
                return .stream(parts: [String(whole[..<cut]), String(whole[cut...])], hangAfter: 1, contentType: "application/json")
            }, configure: { c in c.upstream.idleTimeoutMs = 400 })
        // Two relayed events, the error, [DONE].
        try await checkPlainAndStream(
            h, status: 504, code: "upstream_timeout", streamCode: "upstream_timeout", streamEvents: 4,
            logged: [504, 504], outcomes: ["upstream_error", "upstream_timeout"])
    }

    func testStreamPastTotalTimeoutIsCut() async throws {
        let h = try await Harness.start(
            script: { r in
                r.path == "/v1/chat/completions"
                    ? .stream(
                        parts: FakeUpstream.streamParts(model: "m", text: String(repeating: "w ", count: 40), includeUsage: false),
                        delay: .milliseconds(50))
                    : nil
            }, configure: { c in c.upstream.totalTimeoutMs = 500 })
        let reply = try await h.chat(Self.chatBody(stream: true))
        let s = StreamOutcome(status: reply.status, events: Self.dataLines(reply.body))
        XCTAssertEqual(s.inBandError?["code"] as? String, "upstream_timeout")
        XCTAssertTrue((s.inBandError?["message"] as? String ?? "").contains("total"))
        XCTAssertLessThan(s.events.count, 30)
        XCTAssertTrue(s.endsWithDone)
        try await h.stop()
        XCTAssertEqual(try Self.episodes(h).map { $0["outcome"] as String }, ["upstream_timeout"])
    }

    // MARK: 500 / 502 / 503

    func testServerErrorsRetriedOnlyWhenSafe() async throws {
        let counter = Counter()
        // "flaky-503" and "flaky-502": fail twice, then answer. "broken-500": always 500.
        let h = try await Harness.start(
            script: { r in
                guard r.path == "/v1/chat/completions", let model = r.json?["model"] as? String else { return nil }
                switch model {
                case "broken-500":
                    return .json(status: 500, body: #"{"error":{"message":"it broke","type":"server_error","param":null,"code":null}}"#)
                case "flaky-503", "flaky-502":
                    let n = counter.next(model)
                    return n <= 2
                        ? .json(status: model == "flaky-503" ? 503 : 502, body: FaultTests.serverError503) : FakeUpstream.defaultReply(r)
                case "down-503":
                    return .json(status: 503, body: FaultTests.serverError503, headers: [("retry-after", "0")])
                default: return nil
                }
            },
            configure: { c in
                c.upstream.maxRetries = 2
                c.upstream.retryBaseDelayMs = 10
                c.upstream.circuitBreakerFailures = 0
            })
        for stream in [false, true] {
            counter.reset()
            h.upstream.clearReceived()
            let broken = try await h.chat(Self.chatBody("broken-500", stream: stream))
            XCTAssertEqual(assertOpenAIError(broken, status: 500)["message"] as? String, "it broke")
            XCTAssertEqual(h.upstream.received.count, 1, "500 may have run the request: no retry")

            for model in ["flaky-503", "flaky-502"] {
                h.upstream.clearReceived()
                let ok = try await h.chat(Self.chatBody(model, stream: stream))
                XCTAssertEqual(ok.status, 200, ok.body)
                XCTAssertTrue(ok.body.contains("fault"), ok.body)
                XCTAssertEqual(h.upstream.received.count, 3, "\(model): two failures, then the answer")
            }

            h.upstream.clearReceived()
            let down = try await h.chat(Self.chatBody("down-503", stream: stream))
            assertOpenAIError(down, status: 503)
            XCTAssertEqual(down.headers.first(name: "retry-after"), "0")
            XCTAssertEqual(h.upstream.received.count, 3, "1 + max_retries attempts, then the upstream's own answer")
        }
        try await h.stop()
        XCTAssertEqual(try Self.episodes(h).map { $0["status"] as Int }, [500, 200, 200, 503, 500, 200, 200, 503])
    }

    // MARK: 429 with Retry-After

    func testRateLimitHonoursRetryAfter() async throws {
        let counter = Counter()
        let h = try await Harness.start(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                if counter.next("all") == 1 {
                    return .json(
                        status: 429,
                        body: #"{"error":{"message":"slow down","type":"rate_limit_error","param":null,"code":"rate_limit_exceeded"}}"#,
                        headers: [("retry-after", "0.4")])
                }
                return FakeUpstream.defaultReply(r)
            },
            configure: { c in
                c.upstream.maxRetries = 1
                c.upstream.retryBaseDelayMs = 1
            })
        for stream in [false, true] {
            counter.reset()
            let started = Date()
            let reply = try await h.chat(Self.chatBody(stream: stream))
            XCTAssertEqual(reply.status, 200, reply.body)
            XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.4, "waited as the upstream asked")
        }
        XCTAssertEqual(h.upstream.received.count, 4)
        try await h.stop()
    }

    // MARK: Malformed JSON

    func testMalformedJSON() async throws {
        let h = try await Harness.start(script: { r in
            guard r.path == "/v1/chat/completions" else { return nil }
            if r.json?["stream"] as? Bool == true {
                let good = FakeUpstream.streamParts(model: "m", text: "a b", includeUsage: false)
                return .stream(parts: [
                    good[0], "data: {\"id\":\"chatcmpl-x\",\"choices\":[{\"delta\":{\"content\":\"oops}\n\n", good[1], "data: [DONE]\n\n",
                ])
            }
            return .json(status: 200, body: #"{"id":"chatcmpl-x","choices":[{"message":{"content":"oops}"#)
        })
        // The good event, the error, [DONE]; nothing after the bad one.
        try await checkPlainAndStream(
            h, status: 502, code: "upstream_bad_response", streamCode: "upstream_bad_response", streamEvents: 3,
            logged: [502, 502], outcomes: ["upstream_bad_response", "upstream_bad_response"])
    }

    // MARK: Truncated bodies

    func testTruncatedBodies() async throws {
        let h = try await Harness.start(script: { r in
            guard r.path == "/v1/chat/completions" else { return nil }
            if r.json?["stream"] as? Bool == true {
                var parts = FakeUpstream.streamParts(model: "m", text: "one two three", includeUsage: false)
                parts.removeLast()  // no [DONE]
                let last = parts.removeLast()
                parts.append(String(last.prefix(last.count / 2)))  // half an event
                return .stream(parts: parts)
            }
            let whole = FakeUpstream.completionJSON(model: "m", text: "one two three")
            return .stream(parts: [String(whole.prefix(whole.count / 2))], contentType: "application/json")
        })
        let s = try await checkPlainAndStream(
            h, status: 502, code: "upstream_bad_response", streamCode: "upstream_bad_response",
            streamEvents: nil, logged: nil, outcomes: ["upstream_bad_response", "upstream_truncated"])
        XCTAssertTrue((s.inBandError?["message"] as? String ?? "").contains("middle of an event"))
    }

    // MARK: Connection reset

    func testConnectionReset() async throws {
        let h = try await Harness.start(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                if r.json?["stream"] as? Bool == true {
                    return .stream(
                        parts: FakeUpstream.streamParts(model: "m", text: "one two three four", includeUsage: false), resetAfter: 2)
                }
                return .dropConnection
            },
            configure: { c in
                c.upstream.maxRetries = 2
                c.upstream.retryBaseDelayMs = 10
            })
        try await checkPlainAndStream(
            h, status: 502, code: "upstream_bad_response", streamCode: nil, streamEvents: 4,
            logged: [502, 502], outcomes: ["upstream_error", "upstream_truncated"])
        XCTAssertEqual(h.upstream.received.count, 2, "each request reached the upstream once: no retry after a reset")
    }

    // MARK: Circuit breaker

    func testCircuitBreakerOpensFailsFastAndRecovers() async throws {
        let healthy = Flag()
        let h = try await Harness.start(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                return healthy.value
                    ? FakeUpstream.defaultReply(r)
                    : .json(status: 500, body: #"{"error":{"message":"down","type":"server_error","param":null,"code":null}}"#)
            },
            configure: { c in
                c.upstream.maxRetries = 0
                c.upstream.circuitBreakerFailures = 3
                c.upstream.circuitBreakerCooldownMs = 700
            })
        for _ in 0..<3 { assertOpenAIError(try await h.chat(Self.chatBody(stream: false)), status: 500) }
        XCTAssertEqual(h.upstream.received.count, 3)
        for stream in [false, true] {
            let open = try await h.chat(Self.chatBody(stream: stream))
            XCTAssertEqual(assertOpenAIError(open, status: 503)["code"] as? String, "upstream_circuit_open")
            XCTAssertEqual(open.headers.first(name: "retry-after"), "1")
        }
        XCTAssertEqual(h.upstream.received.count, 3, "an open circuit sends nothing upstream")
        let metrics = try await h.admin(.GET, "/metrics")
        XCTAssertTrue(metrics.body.contains("gateway_upstream_circuit_state 1"), metrics.body)
        try await Task.sleep(for: .milliseconds(800))
        // Half-open: the probe fails, the circuit opens again at once.
        assertOpenAIError(try await h.chat(Self.chatBody(stream: false)), status: 500)
        assertOpenAIError(try await h.chat(Self.chatBody(stream: false)), status: 503)
        XCTAssertEqual(h.upstream.received.count, 4)
        healthy.value = true
        try await Task.sleep(for: .milliseconds(800))
        let probe = try await h.chat(Self.chatBody(stream: false))
        XCTAssertEqual(probe.status, 200, probe.body)
        let after = try await h.chat(Self.chatBody(stream: true))
        XCTAssertEqual(after.status, 200, after.body)
        XCTAssertEqual(h.gateway.state.upstream.breaker.state, .closed)
        XCTAssertEqual(h.gateway.state.upstream.breaker.timesOpened, 2)
        let closed = try await h.admin(.GET, "/metrics")
        XCTAssertTrue(closed.body.contains("gateway_upstream_circuit_state 0"), closed.body)
        XCTAssertTrue(closed.body.contains("gateway_upstream_circuit_opened_total 2"), closed.body)
        try await h.stop()
        let rows = try Self.episodes(h)
        XCTAssertEqual(rows.map { $0["status"] as Int }, [500, 500, 500, 503, 503, 500, 503, 200, 200])
    }

    func testCircuitBreakerUnit() {
        final class Clock: @unchecked Sendable { var t = ContinuousClock.now }
        let clock = Clock()
        let b = CircuitBreaker(failureThreshold: 2, cooldown: .seconds(10), now: { clock.t })
        XCTAssertNil(b.acquire())
        b.recordFailure()
        b.recordSuccess()  // a success in between resets the count
        b.recordFailure()
        XCTAssertEqual(b.state, .closed)
        b.recordFailure()
        XCTAssertEqual(b.state, .open)
        XCTAssertEqual(b.acquire(), 10)
        clock.t = clock.t + .seconds(4)
        XCTAssertEqual(b.acquire(), 6)
        clock.t = clock.t + .seconds(6)
        XCTAssertEqual(b.state, .halfOpen)
        XCTAssertNil(b.acquire(), "one probe goes through")
        XCTAssertNotNil(b.acquire(), "a second one waits for the probe")
        b.release()
        XCTAssertNil(b.acquire(), "a probe that ended without a verdict frees the slot")
        b.recordSuccess()
        XCTAssertEqual(b.state, .closed)
        let off = CircuitBreaker(failureThreshold: 0, cooldown: .seconds(1))
        for _ in 0..<100 { off.recordFailure() }
        XCTAssertNil(off.acquire())
    }
}

/// Counts requests per key (the fake upstream's script runs on many threads).
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var counts: [String: Int] = [:]
    func next(_ key: String) -> Int {
        lock.withLock {
            counts[key, default: 0] += 1
            return counts[key]!
        }
    }
    func reset() { lock.withLock { counts.removeAll() } }
}

final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var v = false
    var value: Bool {
        get { lock.withLock { v } }
        set { lock.withLock { v = newValue } }
    }
}
