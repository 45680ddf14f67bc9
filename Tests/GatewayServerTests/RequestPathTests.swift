import AsyncHTTPClient
import FakeUpstream
import Foundation
import NIOCore
import TrafficLog
import XCTest

@testable import GatewayServer

/// The limiter, feedback scoping, statuses of cut streams, redaction and config reload.
final class RequestPathTests: XCTestCase {
    /// A release that lands between `acquire`'s check and its enqueueing must not leave the
    /// waiter asleep while a slot is free (it then timed out with a 429).
    func testLimiterNeverTimesOutWhileASlotIsFree() async throws {
        let limiter = ConcurrencyLimiter(limit: 1)
        let rounds = 20_000
        let failures = await withTaskGroup(of: Int.self) { group in
            for _ in 0..<2 {
                group.addTask {
                    var failed = 0
                    for _ in 0..<rounds {
                        // Each holder keeps the slot only for an instant: a waiter that misses a
                        // release sleeps through its whole timeout with no one left to wake it.
                        if await limiter.acquire(timeout: .milliseconds(200)) { limiter.release() } else { failed += 1 }
                    }
                    return failed
                }
            }
            return await group.reduce(0, +)
        }
        XCTAssertEqual(failures, 0)
        XCTAssertEqual(limiter.held, 0)
    }

    /// A response whose head cannot be written (the client already left) never runs its body;
    /// its slot must come back all the same.
    func testSlotComesBackWhenTheHeadCannotBeWritten() async throws {
        let h = try await Harness.start(script: { r in
            guard String(decoding: r.body, as: UTF8.self).contains(#""stream":true"#) else { return nil }
            // The head arrives after the client gave up.
            return .delayed(.milliseconds(600), .stream(parts: FakeUpstream.streamParts(model: "m", text: "a b", includeUsage: false)))
        }) { c in
            c.limits.maxConcurrentRequests = 1
            c.limits.queueTimeoutMs = 0
        }
        var req = HTTPClientRequest(url: h.base + "/v1/chat/completions")
        req.method = .POST
        req.body = .bytes(ByteBuffer(string: #"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#))
        for _ in 0..<3 {
            do {
                _ = try await h.client.execute(req, timeout: .milliseconds(200))
                XCTFail("the head should come after the client's timeout")
            } catch {}
            try await Task.sleep(for: .milliseconds(900))
            XCTAssertEqual(h.gateway.state.limiter.held, 0, "a slot leaked")
            let ok = try await h.chat(simpleChat)
            XCTAssertEqual(ok.status, 200, ok.body)
        }
        try await h.stop()
    }

    /// With client keys, a key attaches feedback only to its own episodes.
    func testFeedbackIsScopedToTheKey() async throws {
        let h = try await Harness.start(environment: ["TEST_CLIENT_KEYS": "key-a,key-b"])
        let a = try await h.chat(simpleChat, headers: [("content-type", "application/json"), ("authorization", "Bearer key-a")])
        let id = try XCTUnwrap(a.episodeID)
        let body = #"{"episode_id":"\#(id)","score":1}"#
        let other = try await h.request(.POST, "/v1/feedback", body: body, headers: [("authorization", "Bearer key-b")])
        XCTAssertEqual(assertOpenAIError(other, status: 404)["param"] as? String, "episode_id")
        let own = try await h.request(.POST, "/v1/feedback", body: body, headers: [("authorization", "Bearer key-a")])
        XCTAssertEqual(own.status, 200, own.body)
        try await h.stop()
        XCTAssertEqual(try TrafficDatabase(path: h.dbPath).feedback(episodeID: id).count, 1)
    }

    /// A stream the client cuts is logged as 499, as a non-stream request is.
    func testCutStreamIsLogged499() async throws {
        let parts = FakeUpstream.streamParts(model: "m", text: (0..<40).map { "w\($0)" }.joined(separator: " "), includeUsage: false)
        let h = try await Harness.start(script: { r in
            r.path == "/v1/chat/completions" ? .stream(parts: parts, delay: .milliseconds(50)) : nil
        })
        var req = HTTPClientRequest(url: h.base + "/v1/chat/completions")
        req.method = .POST
        req.body = .bytes(ByteBuffer(string: #"{"model":"m","stream":true,"messages":[{"role":"user","content":"x"}]}"#))
        let id: String? = try await {
            let resp = try await h.client.execute(req, timeout: .seconds(10))
            var it = resp.body.makeAsyncIterator()
            _ = try await it.next()
            return resp.headers.first(name: "x-gateway-episode-id")
        }()
        let deadline = Date().addingTimeInterval(4)
        var e: EpisodeRecord?
        while e == nil && Date() < deadline {
            try await Task.sleep(for: .milliseconds(100))
            e = try TrafficDatabase(path: h.dbPath).episode(id: try XCTUnwrap(id))
        }
        try await h.stop()
        XCTAssertEqual(e?.outcome, "client_disconnected")
        XCTAssertEqual(e?.status, 499)
    }

    /// `log.redact_bodies`: no text of the request or the response reaches any database file,
    /// not the question, the upstream prompts and answers, nor the token ids; the episode is
    /// marked not trainable.
    func testRedactionLeavesNoTextInTheDatabase() async throws {
        let cases = try CollaborationTests.cases()
        let c = try XCTUnwrap(cases.first { $0.upstream_answers.count == 2 })
        let h = try await CollaborationTests.start(cases, configure: { cfg in cfg.log.redactBodies = true })
        let body = String(
            decoding: try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
            ]), as: UTF8.self)
        let reply = try await h.chat(body)
        XCTAssertEqual(reply.status, 200, reply.body)
        let passthrough = try await h.chat(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"zebra-secret-passthrough"}]}"#)
        XCTAssertEqual(passthrough.status, 200)
        let id = try XCTUnwrap(reply.episodeID)
        // Read the files while the gateway still has them open (WAL and SHM exist then).
        let files = ["", "-wal", "-shm"].map { h.dbPath + $0 }.filter { FileManager.default.fileExists(atPath: $0) }
        XCTAssertTrue(files.contains(h.dbPath + "-wal"))
        var needles = [c.question, c.final_answer, "zebra-secret-passthrough"] + c.upstream_answers + c.upstream_prompts
        needles = needles.filter { $0.count >= 8 }
        for f in files {
            let data = try Data(contentsOf: URL(fileURLWithPath: f))
            for n in needles {
                XCTAssertNil(data.range(of: Data(n.utf8)), "\(f) holds '\(n.prefix(40))'")
            }
            // The policy's first turn as token ids (int32 little endian) must not be there either.
            let ids = c.turns[0].ids.prefix(12).flatMap { v -> [UInt8] in withUnsafeBytes(of: v.littleEndian, Array.init) }
            XCTAssertNil(data.range(of: Data(ids)), "\(f) holds the policy's token ids")
        }
        try await h.stop()
        let e = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
        XCTAssertEqual(e.trainable, false)
        XCTAssertTrue(e.turns.allSatisfy { $0.outputIDs == nil && $0.inputIDs == nil })
    }

    /// Reload applies what it accepts (limits included) and refuses keys that need a restart.
    func testReloadAppliesLimitsAndRefusesRestartKeys() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("gateway.json")
        func write(_ rest: String) throws {
            try #"{"upstream": {"base_url": "http://127.0.0.1:9/v1"}\#(rest)}"#.write(to: file, atomically: true, encoding: .utf8)
        }
        try write("")
        let h = try await Harness.start(environment: ["GATEWAY_ADMIN_TOKEN": "admin-secret"], configPath: file.path)
        try write(#", "limits": {"max_concurrent_requests": 3}, "policy": {"max_concurrent_episodes": 2}"#)
        let ok = try await h.admin(.POST, "/admin/config/reload", token: "admin-secret")
        XCTAssertEqual(ok.status, 200, ok.body)
        XCTAssertEqual(h.gateway.state.limiter.capacity, 3)
        XCTAssertEqual(h.gateway.state.config.policy.maxConcurrentEpisodes, 2)
        try write(#", "limits": {"max_concurrent_requests": 5, "max_header_bytes": 2048}"#)
        let refused = try await h.admin(.POST, "/admin/config/reload", token: "admin-secret")
        XCTAssertTrue(
            (assertOpenAIError(refused, status: 400)["message"] as? String ?? "").contains("limits.max_header_bytes"), refused.body)
        XCTAssertEqual(h.gateway.state.limiter.capacity, 3, "a refused reload applies nothing")
        try await h.stop()
    }
}
