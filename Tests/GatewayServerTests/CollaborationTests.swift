import AsyncHTTPClient
import FakeUpstream
import Foundation
import GRDB
import NIOCore
import OpenAIWire
import PromptR1
import TrafficLog
import XCTest

@testable import GatewayServer

/// The real loop with the real engine: `promptr1-tiny` was fine-tuned (scripts/make_protocol_policy.py)
/// to write well-formed Prompt-R1 turns for the questions of reference/promptr1-tiny-episodes.json.
/// The fake upstream answers each expected prompt with the scripted answer.
final class CollaborationTests: XCTestCase {
    struct Case: Decodable {
        struct Turn: Decodable {
            var text: String
            var ids: [Int32]
            var logprobs: [Float]
        }
        struct Injection: Decodable {
            var text: String
            var ids: [Int32]
        }
        var question: String
        var upstream_answers: [String]
        var upstream_prompts: [String]
        var turns: [Turn]
        var injections: [Injection]
        var prompt_ids: [Int32]
        var final_answer: String
        var held_out: Bool?
    }

    static var fixtures: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("Fixtures")
    }

    static func cases() throws -> [Case] {
        struct File: Decodable { var cases: [Case] }
        let data = try Data(contentsOf: fixtures.appendingPathComponent("reference/promptr1-tiny-episodes.json"))
        return try JSONDecoder().decode(File.self, from: data).cases.filter { $0.held_out != true }
    }

    /// Answers each expected prompt with its scripted answer; anything else gets the default echo.
    static func script(_ cases: [Case]) -> FakeUpstream.Script {
        var answers: [String: String] = [:]
        for c in cases { for (p, a) in zip(c.upstream_prompts, c.upstream_answers) { answers[p] = "  " + a + "\n" } }
        return FakeUpstream.answering(answers)
    }

    /// The scripted upstream answering after `delay` (a slow phase in the middle of an episode).
    static func slowScript(_ cases: [Case], delay: Duration) -> FakeUpstream.Script {
        let inner = script(cases)
        return { r in
            guard let reply = await inner(r) else { return nil }
            return .delayed(delay, reply)
        }
    }

    /// A gateway serving `policy` (greedy) in front of `upstream` (default: the scripted answers).
    static func start(
        _ cases: [Case], policy: String = "promptr1-tiny", upstream: FakeUpstream.Script? = nil,
        configure: @escaping (inout GatewayConfig) -> Void = { _ in }
    ) async throws -> Harness {
        try await Harness.start(
            script: upstream ?? script(cases),
            configure: { c in
                c.policy.path = fixtures.appendingPathComponent("models/\(policy)").path
                c.policy.temperature = 0
                configure(&c)
            })
    }

    func testNonStreamEpisodesMatchReferenceExactly() async throws {
        let cases = try Self.cases()
        let h = try await Self.start(cases)
        var ids: [String] = []
        for c in cases {
            let body = try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
            ])
            let reply = try await h.chat(String(decoding: body, as: UTF8.self))
            XCTAssertEqual(reply.status, 200, reply.body)
            let choice = (reply.json?["choices"] as? [[String: Any]])?.first
            let message = choice?["message"] as? [String: Any]
            XCTAssertEqual(message?["content"] as? String, c.final_answer, c.question)
            XCTAssertNil(message?["reasoning_content"], "trace is on request only")
            XCTAssertEqual(reply.json?["model"] as? String, "prompt-r1/gpt-4o-mini")
            let usage = reply.json?["usage"] as? [String: Any]
            XCTAssertEqual(usage?["prompt_tokens"] as? Int, 11 * c.upstream_answers.count)
            XCTAssertNotNil(usage?["policy_tokens"])
            ids.append(try XCTUnwrap(reply.episodeID))
        }
        // What the upstream received: exactly protocol section 3, for the mapped model.
        let received = h.upstream.received.filter { $0.path == "/v1/chat/completions" }
        var expected: [[[String: String]]] = []
        for c in cases {
            var history: [[String: String]] = [["role": "system", "content": PromptR1Prompt.upstreamSystemPrompt]]
            for (p, a) in zip(c.upstream_prompts, c.upstream_answers) {
                expected.append(history + [["role": "user", "content": p]])
                history += [["role": "user", "content": p], ["role": "assistant", "content": a]]
            }
        }
        XCTAssertEqual(received.count, expected.count)
        for (r, e) in zip(received, expected) {
            XCTAssertEqual(r.json?["model"] as? String, "gpt-4o-mini")
            XCTAssertEqual(r.json?["messages"] as? [[String: String]], e)
        }
        try await h.stop()

        // The log holds everything the trainer needs, matching the reference ids and log-probs.
        let db = try TrafficDatabase(path: h.dbPath)
        for (c, id) in zip(cases, ids) {
            let e = try XCTUnwrap(try db.episode(id: id))
            XCTAssertEqual(e.mode, "collaborate")
            XCTAssertEqual(e.outcome, "answer")
            XCTAssertEqual(e.question, c.question)
            XCTAssertEqual(e.responseText, c.final_answer)
            XCTAssertEqual(e.formatScore, 1.0)
            XCTAssertNotNil(e.policyVersion)
            let policyTurns = e.turns.filter { $0.kind == "policy" }
            let upstreamTurns = e.turns.filter { $0.kind == "upstream" }
            XCTAssertEqual(policyTurns.count, c.turns.count)
            XCTAssertEqual(upstreamTurns.count, c.upstream_answers.count)
            XCTAssertEqual(policyTurns.first?.inputIDs, c.prompt_ids)
            for (k, (got, want)) in zip(policyTurns, c.turns).enumerated() {
                XCTAssertEqual(got.outputIDs, want.ids, "\(c.question) turn \(k + 1)")
                XCTAssertEqual(got.text, want.text)
                let lp = try XCTUnwrap(got.logprobs)
                XCTAssertEqual(lp.count, want.logprobs.count)
                for (a, b) in zip(lp, want.logprobs) { XCTAssertEqual(a, b, accuracy: 2e-3) }
                XCTAssertEqual(
                    got.lossMask, [UInt8](repeating: 0, count: got.inputIDs?.count ?? 0) + [UInt8](repeating: 1, count: want.ids.count))
                if k > 0 { XCTAssertEqual(got.inputIDs, c.injections[k - 1].ids, "injected ids of turn \(k + 1)") }
            }
            // Rebuild the training sequence from the log alone.
            let sequence = policyTurns.flatMap { ($0.inputIDs ?? []) + ($0.outputIDs ?? []) }
            var reference = c.prompt_ids
            for (k, t) in c.turns.enumerated() {
                reference += t.ids
                if k < c.injections.count && k < c.turns.count - 1 { reference += c.injections[k].ids }
            }
            XCTAssertEqual(sequence, reference)
        }
    }

    /// `policy.weights: q8` serves the same checkpoint with 8-bit projections: the loaded model is quantised and
    /// an episode runs the protocol against the upstream and answers. (Its tokens may differ from the float32
    /// reference, so the upstream gives the first scripted answer whatever it is asked.)
    func testEightBitPolicyServesEpisodes() async throws {
        let cases = try Self.cases()
        let h = try await Self.start(
            [], upstream: FakeUpstream.answering([:], unknown: "  " + cases[0].upstream_answers[0] + "\n"),
            configure: { c in c.policy.weights = .q8 })
        let model = try XCTUnwrap(h.gateway.policies.current?.embedded?.model)
        XCTAssertEqual(model.weightFormat, .q8)
        XCTAssertGreaterThan(model.quantizedWeightBytes, 0)
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
        ])
        let reply = try await h.chat(String(decoding: body, as: UTF8.self))
        XCTAssertEqual(reply.status, 200, reply.body)
        let content = ((reply.json?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String
        XCTAssertFalse((content ?? "").isEmpty)
        let sent = h.upstream.received.filter { $0.path == "/v1/chat/completions" }
        XCTAssertGreaterThanOrEqual(sent.count, 1)
        XCTAssertEqual((sent.first?.json?["messages"] as? [[String: String]])?.first?["content"], PromptR1Prompt.upstreamSystemPrompt)
        try await h.stop()
    }

    /// The accuracy `policy.weights: q8` is recommended on (README, docs/performance.md): every greedy episode of
    /// the trained fixture policy, served in 8 bits, sends the upstream the same prompts and answers the same as
    /// the float32 reference episodes (recorded from PyTorch).
    func testEightBitGreedyEpisodesMatchTheFloat32Reference() async throws {
        let cases = try Self.cases()
        let h = try await Self.start(cases, configure: { c in c.policy.weights = .q8 })
        XCTAssertEqual(h.gateway.policies.current?.embedded?.model.weightFormat, .q8)
        var same = 0
        for c in cases {
            let before = h.upstream.received.count
            let body = try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
            ])
            let reply = try await h.chat(String(decoding: body, as: UTF8.self))
            XCTAssertEqual(reply.status, 200, reply.body)
            let message = ((reply.json?["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any]
            let prompts = h.upstream.received.dropFirst(before).filter { $0.path == "/v1/chat/completions" }
                .compactMap { ($0.json?["messages"] as? [[String: String]])?.last?["content"] }
            XCTAssertEqual(prompts, c.upstream_prompts, c.question)
            XCTAssertEqual(message?["content"] as? String, c.final_answer, c.question)
            if prompts == c.upstream_prompts && message?["content"] as? String == c.final_answer { same += 1 }
        }
        print("8-bit greedy episodes identical to the float32 reference: \(same) of \(cases.count)")
        try await h.stop()
    }

    func testStreamShowsTraceAndAnswer() async throws {
        let cases = try Self.cases()
        let c = try XCTUnwrap(cases.first { $0.upstream_answers.count == 2 })
        let h = try await Self.start(cases)
        let body = try JSONSerialization.data(
            withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "stream": true, "stream_options": ["include_usage": true],
                "messages": [["role": "user", "content": c.question]],
            ] as [String: Any])
        let reply = try await h.chat(
            String(decoding: body, as: UTF8.self), headers: [("content-type", "application/json"), ("x-gateway-trace", "1")])
        XCTAssertEqual(reply.status, 200)
        XCTAssertEqual(reply.headers.first(name: "content-type"), "text/event-stream")
        var parser = SSEParser()
        let events = try parser.feed(Array(reply.body.utf8))
        XCTAssertEqual(events.last?.isDone, true)
        var content = ""
        var reasoning = ""
        var finish: String?
        var usage: [String: Any]?
        var roles = 0
        for e in events.dropLast() {
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(e.data)) as? [String: Any], e.dataString)
            XCTAssertEqual(obj["object"] as? String, "chat.completion.chunk")
            if let u = obj["usage"] as? [String: Any] { usage = u }
            for choice in obj["choices"] as? [[String: Any]] ?? [] {
                let d = choice["delta"] as? [String: Any] ?? [:]
                if d["role"] != nil { roles += 1 }
                content += d["content"] as? String ?? ""
                reasoning += d["reasoning_content"] as? String ?? ""
                if let f = choice["finish_reason"] as? String { finish = f }
            }
        }
        XCTAssertEqual(roles, 1)
        XCTAssertEqual(content, c.final_answer)
        XCTAssertEqual(finish, "stop")
        XCTAssertNotNil(usage?["total_tokens"])
        for t in c.turns { XCTAssertTrue(reasoning.contains(t.text), "trace misses \(t.text)") }
        for a in c.upstream_answers { XCTAssertTrue(reasoning.contains(a)) }
        // The trace went out as it was written; the answer only once it was final (it can no
        // longer turn into a call or be replaced by a fallback): after the last trace delta.
        let contentAt = events.lastIndex { $0.dataString.contains("\"content\":\"") && !$0.dataString.contains("\"content\":\"\"") }
        let traceAt = events.lastIndex { $0.dataString.contains("\"reasoning_content\":\"") }
        XCTAssertGreaterThan(events.filter { $0.dataString.contains("\"reasoning_content\":\"") }.count, 1)
        XCTAssertGreaterThan(try XCTUnwrap(contentAt), try XCTUnwrap(traceAt))
        try await h.stop()
    }

    /// A policy that cannot speak the protocol (random weights) runs out of turns: the configured
    /// fallback answers with one direct upstream call, and the log says so.
    func testNoAnswerFallsBackToDirectCall() async throws {
        let h = try await Self.start(
            [], policy: "qwen3-tiny",
            configure: { c in
                c.policy.maxTurns = 2
                c.policy.maxTokensPerTurn = 6
                c.policy.fallback = .direct
            })
        let reply = try await h.chat(#"{"model":"prompt-r1/gpt-4o-mini","messages":[{"role":"user","content":"Why is the sky blue?"}]}"#)
        XCTAssertEqual(reply.status, 200, reply.body)
        let message = ((reply.json?["choices"] as? [[String: Any]])?.first?["message"]) as? [String: Any]
        XCTAssertEqual(message?["content"] as? String, "echo: Why is the sky blue?")
        let id = try XCTUnwrap(reply.episodeID)
        try await h.stop()
        let e = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
        XCTAssertTrue(e.outcome?.hasPrefix("fallback_direct") ?? false, e.outcome ?? "nil")
        XCTAssertGreaterThan(e.turns.filter { $0.kind == "policy" }.count, 0)
    }

    func testCollaborationOverloadIs429() async throws {
        let cases = try Self.cases()
        let h = try await Self.start(
            cases,
            configure: { c in
                c.policy.maxConcurrentEpisodes = 1
                c.policy.queueTimeoutMs = 0
            })
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
        ])
        let statuses = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
            for _ in 0..<4 {
                group.addTask {
                    let r = try await h.chat(String(decoding: body, as: UTF8.self))
                    return (r.status, r.headers.first(name: "retry-after"))
                }
            }
            var out: [(Int, String?)] = []
            for try await s in group { out.append(s) }
            return out
        }
        XCTAssertTrue(statuses.contains { $0.0 == 200 })
        let rejected = statuses.filter { $0.0 == 429 }
        XCTAssertFalse(rejected.isEmpty, "\(statuses)")
        XCTAssertTrue(rejected.allSatisfy { $0.1 != nil })
        try await h.stop()
    }
}

final class CollaborationEdgeTests: XCTestCase {
    func testOfficialSDKAgainstCollaborationRoute() async throws {
        let py = try await OpenAISDKTests.requireSDK()
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases)
        let script = OpenAISDKTests.repoRoot.appendingPathComponent("Tests/compat/openai_sdk_collab.py").path
        let (status, out, err) = try await OpenAISDKTests.run(py, [script, cases[0].question], env: ["GATEWAY_BASE_URL": "\(h.base)/v1"])
        try await h.stop()
        XCTAssertEqual(status, 0, "stdout: \(out)\nstderr: \(err)")
        let seen = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], out)
        XCTAssertEqual(seen["content"] as? String, cases[0].final_answer)
        XCTAssertEqual(seen["stream_content"] as? String, cases[0].final_answer)
        XCTAssertEqual(seen["finish_reason"] as? String, "stop")
        XCTAssertEqual(seen["has_reasoning"] as? Bool, false)
        XCTAssertGreaterThan(seen["stream_reasoning_len"] as? Int ?? 0, 100)
    }

    /// The upstream fails in the middle of an episode: a clear 502, and the log keeps the
    /// policy turn that was generated before the failure.
    func testUpstreamErrorMidEpisode() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(
            cases,
            upstream: { r in
                r.path == "/v1/chat/completions"
                    ? .json(status: 503, body: #"{"error":{"message":"overloaded","type":"server_error","param":null,"code":null}}"#) : nil
            })
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
        ])
        let reply = try await h.chat(String(decoding: body, as: UTF8.self))
        let e = assertOpenAIError(reply, status: 502)
        XCTAssertTrue((e["message"] as? String ?? "").contains("overloaded"))
        let id = try XCTUnwrap(reply.episodeID)
        try await h.stop()
        let rec = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
        XCTAssertEqual(rec.outcome, "upstream_error")
        XCTAssertEqual(rec.status, 502)
        XCTAssertEqual(rec.turns.first?.kind, "policy")
        XCTAssertEqual(rec.turns.first?.outputIDs, cases[0].turns[0].ids)
    }

    /// Collaboration shares the upstream's circuit breaker: once it is open, an episode fails at
    /// once with 503 and Retry-After, before the policy spends any time.
    func testOpenCircuitFailsCollaborationFast() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(
            cases,
            upstream: { r in
                r.path == "/v1/chat/completions"
                    ? .json(status: 500, body: #"{"error":{"message":"down","type":"server_error","param":null,"code":null}}"#) : nil
            },
            configure: { c in
                c.upstream.circuitBreakerFailures = 1
                c.upstream.circuitBreakerCooldownMs = 60_000
            })
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
        ])
        let first = try await h.chat(String(decoding: body, as: UTF8.self))
        assertOpenAIError(first, status: 502)
        let second = try await h.chat(String(decoding: body, as: UTF8.self))
        XCTAssertEqual(assertOpenAIError(second, status: 503)["code"] as? String, "upstream_circuit_open")
        XCTAssertNotNil(second.headers.first(name: "retry-after"))
        XCTAssertEqual(h.upstream.received.count, 1)
        let ids = [try XCTUnwrap(first.episodeID), try XCTUnwrap(second.episodeID)]
        try await h.stop()
        let db = try TrafficDatabase(path: h.dbPath)
        let firstRec = try XCTUnwrap(try db.episode(id: ids[0]))
        let secondRec = try XCTUnwrap(try db.episode(id: ids[1]))
        XCTAssertFalse(firstRec.turns.isEmpty, "the first episode ran the policy")
        XCTAssertEqual(secondRec.status, 503)
        XCTAssertTrue(secondRec.turns.isEmpty, "the second never reached the policy")
    }

    /// The episode deadline passes while the upstream is slow: by default the gateway answers
    /// as a plain proxy would (one direct call), and logs why.
    func testDeadlineFallsBackToPassthrough() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(
            cases,
            upstream: { r in
                let messages = r.json?["messages"] as? [[String: Any]] ?? []
                // Slow for the policy's call (which has the protocol's system prompt), fast for the direct one.
                if (messages.first?["content"] as? String) == PromptR1Prompt.upstreamSystemPrompt {
                    return .delayed(.seconds(3), .json(status: 200, body: FakeUpstream.completionJSON(model: "m", text: "late")))
                }
                return nil
            }, configure: { c in c.policy.episodeDeadlineSeconds = 0.5 })
        let started = Date()
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
        ])
        let reply = try await h.chat(String(decoding: body, as: UTF8.self))
        XCTAssertLessThan(Date().timeIntervalSince(started), 2.5)
        XCTAssertEqual(reply.status, 200, reply.body)
        let message = ((reply.json?["choices"] as? [[String: Any]])?.first?["message"]) as? [String: Any]
        XCTAssertEqual(message?["content"] as? String, "echo: " + cases[0].question)
        let id = try XCTUnwrap(reply.episodeID)
        try await h.stop()
        let rec = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
        XCTAssertEqual(rec.outcome, "fallback_passthrough(policy_timeout)")
    }

    /// A long silent phase (slow upstream) gets SSE keep-alive comments.
    func testKeepAliveDuringSilence() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(
            cases, upstream: CollaborationTests.slowScript(cases, delay: .milliseconds(700)),
            configure: { c in c.policy.keepaliveSeconds = 0.2 })
        let body = try JSONSerialization.data(
            withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "stream": true,
                "messages": [["role": "user", "content": cases[0].question]],
            ] as [String: Any])
        let reply = try await h.chat(String(decoding: body, as: UTF8.self))
        XCTAssertEqual(reply.status, 200)
        XCTAssertTrue(reply.body.contains(": keep-alive\n\n"), reply.body)
        XCTAssertTrue(reply.body.hasSuffix("data: [DONE]\n\n"))
        try await h.stop()
    }

    /// A streaming client that goes away mid-episode: generation stops (no upstream call is made
    /// after the disconnect) and the episode is logged as client_disconnected.
    func testStreamClientDisconnectStopsTheEpisode() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(
            cases, upstream: CollaborationTests.slowScript(cases, delay: .milliseconds(800)),
            configure: { c in c.policy.trace = .on })
        let c = try XCTUnwrap(cases.first { $0.upstream_answers.count == 2 })
        var req = HTTPClientRequest(url: h.base + "/v1/chat/completions")
        req.method = .POST
        req.body = .bytes(
            ByteBuffer(
                data: try JSONSerialization.data(
                    withJSONObject: [
                        "model": "prompt-r1/gpt-4o-mini", "stream": true, "messages": [["role": "user", "content": c.question]],
                    ] as [String: Any])))
        let id: String? = try await {
            let resp = try await h.client.execute(req, timeout: .seconds(10))
            var it = resp.body.makeAsyncIterator()
            _ = try await it.next()  // the first trace delta: the episode is running
            return resp.headers.first(name: "x-gateway-episode-id")
        }()
        // The response body is dropped here: the connection closes while the first upstream
        // call is still pending.
        try await Task.sleep(for: .milliseconds(2500))
        // Two calls would be made by a full episode; at most the one in flight may have started.
        XCTAssertLessThanOrEqual(
            h.upstream.received.filter { $0.path == "/v1/chat/completions" }.count, 1,
            "the episode went on calling the upstream after the client left")
        try await h.stop()
        let e = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: try XCTUnwrap(id)))
        XCTAssertEqual(e.outcome, "client_disconnected")
        XCTAssertEqual(e.status, 499, "a cut stream is logged as a cut non-stream request is")
    }

    /// The same for a non-streaming client: giving up cancels the episode.
    func testNonStreamClientDisconnectStopsTheEpisode() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases, upstream: CollaborationTests.slowScript(cases, delay: .milliseconds(800)))
        let c = try XCTUnwrap(cases.first { $0.upstream_answers.count == 2 })
        var req = HTTPClientRequest(url: h.base + "/v1/chat/completions")
        req.method = .POST
        req.body = .bytes(
            ByteBuffer(
                data: try JSONSerialization.data(
                    withJSONObject: [
                        "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
                    ] as [String: Any])))
        // The client gives up after 400 ms, while the first upstream call (800 ms) is pending.
        do {
            _ = try await h.client.execute(req, timeout: .milliseconds(400))
            XCTFail("the episode should take longer than the client waits")
        } catch {}
        try await Task.sleep(for: .milliseconds(2500))
        XCTAssertLessThanOrEqual(
            h.upstream.received.filter { $0.path == "/v1/chat/completions" }.count, 1,
            "the episode went on calling the upstream after the client left")
        try await h.stop()
        let episodes = try TrafficDatabase(path: h.dbPath).episodes(EpisodeQuery())
        XCTAssertEqual(episodes.map(\.outcome), ["client_disconnected"])
        XCTAssertEqual(episodes.map(\.status), [499])
    }

    /// A policy whose context window cannot hold the episode: the policy fails cleanly and the
    /// request is answered as a plain proxy would (on_policy_error = passthrough).
    func testContextWindowFullFallsBackToPassthrough() async throws {
        let cases = try CollaborationTests.cases()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-small-ctx-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: CollaborationTests.fixtures.appendingPathComponent("models/promptr1-tiny"), to: dir)
        let configURL = dir.appendingPathComponent("config.json")
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any])
        config["max_position_embeddings"] = cases[0].prompt_ids.count + 1  // room for the prompt only
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        let h = try await Harness.start(
            script: CollaborationTests.script(cases),
            configure: { c in
                c.policy.path = dir.path
                c.policy.temperature = 0
            })
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
        ])
        let reply = try await h.chat(String(decoding: body, as: UTF8.self))
        XCTAssertEqual(reply.status, 200, reply.body)
        let message = ((reply.json?["choices"] as? [[String: Any]])?.first?["message"]) as? [String: Any]
        XCTAssertEqual(message?["content"] as? String, "echo: " + cases[0].question)
        let id = try XCTUnwrap(reply.episodeID)
        try await h.stop()
        let e = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
        XCTAssertEqual(e.outcome, "fallback_passthrough(policy_error)")
    }
}
