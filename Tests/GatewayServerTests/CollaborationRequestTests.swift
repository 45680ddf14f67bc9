import AsyncHTTPClient
import FakeUpstream
import Foundation
import NIOCore
import OpenAIWire
import PromptR1
import TrafficLog
import XCTest

@testable import GatewayServer

/// Every part of an OpenAI chat request on a collaboration route is honoured or refused
/// clearly (docs/openai-compatibility.md names these tests).
final class CollaborationRequestTests: XCTestCase {
    func body(_ fields: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: fields), as: UTF8.self)
    }

    func content(_ reply: Harness.Reply, choice: Int = 0) -> String? {
        (((reply.json?["choices"] as? [[String: Any]])?[choice])?["message"] as? [String: Any])?["content"] as? String
    }

    /// Sampling and accounting parameters go to every upstream call, each under its own name.
    func testSamplingParametersReachEveryUpstreamCall() async throws {
        let cases = try CollaborationTests.cases()
        let c = try XCTUnwrap(cases.first { $0.upstream_answers.count == 2 })
        let h = try await CollaborationTests.start(cases)
        let reply = try await h.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
                "temperature": 0.3, "top_p": 0.9, "seed": 42, "presence_penalty": 0.5, "frequency_penalty": -0.5,
                "logit_bias": ["50256": -100], "stop": ["\n\n\n"], "user": "user-7", "max_completion_tokens": 77,
                "store": false, "metadata": ["team": "a"],
            ]))
        XCTAssertEqual(reply.status, 200, reply.body)
        XCTAssertEqual(content(reply), c.final_answer)
        let calls = h.upstream.received.filter { $0.path == "/v1/chat/completions" }
        XCTAssertEqual(calls.count, 2)
        for call in calls {
            let j = try XCTUnwrap(call.json)
            XCTAssertEqual(j["temperature"] as? Double, 0.3)
            XCTAssertEqual(j["top_p"] as? Double, 0.9)
            XCTAssertEqual(j["seed"] as? Int, 42)
            XCTAssertEqual(j["presence_penalty"] as? Double, 0.5)
            XCTAssertEqual(j["frequency_penalty"] as? Double, -0.5)
            XCTAssertEqual(j["logit_bias"] as? [String: Double], ["50256": -100])
            XCTAssertEqual(j["stop"] as? [String], ["\n\n\n"])
            XCTAssertEqual(j["user"] as? String, "user-7")
            XCTAssertEqual(j["max_completion_tokens"] as? Int, 77)
            XCTAssertNil(j["max_tokens"], "max_completion_tokens must keep its own name")
            XCTAssertEqual(j["store"] as? Bool, false)
            XCTAssertEqual(j["metadata"] as? [String: String], ["team": "a"])
            XCTAssertEqual(j["stream"] as? Bool, false)
        }
        try await h.stop()
    }

    /// `max_tokens` stays `max_tokens`.
    func testMaxTokensKeepsItsName() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases)
        let reply = try await h.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini", "max_tokens": 50,
                "messages": [["role": "user", "content": cases[0].question]],
            ]))
        XCTAssertEqual(reply.status, 200, reply.body)
        let calls = h.upstream.received.filter { $0.path == "/v1/chat/completions" }
        XCTAssertFalse(calls.isEmpty)
        for call in calls {
            XCTAssertEqual(call.json?["max_tokens"] as? Int, 50)
            XCTAssertNil(call.json?["max_completion_tokens"])
        }
        try await h.stop()
    }

    /// What the loop cannot honour is served as passthrough by default: the client's own body
    /// reaches the upstream (model mapped), the reason is in a header and in the log.
    func testUnsupportedRequestsArePassedThrough() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases)
        let requests: [(String, [String: Any])] = [
            (
                "tools",
                [
                    "tools": [["type": "function", "function": ["name": "f", "parameters": ["type": "object"]]]],
                    "messages": [["role": "user", "content": "weather?"]],
                ]
            ),
            ("response_format", ["response_format": ["type": "json_object"], "messages": [["role": "user", "content": "json please"]]]),
            ("logprobs", ["logprobs": true, "messages": [["role": "user", "content": "probs"]]]),
            (
                "messages[0].content[1]",
                [
                    "messages": [
                        [
                            "role": "user",
                            "content": [
                                ["type": "text", "text": "what is this?"],
                                ["type": "image_url", "image_url": ["url": "https://example.com/cat.png"]],
                            ],
                        ]
                    ]
                ]
            ),
            (
                "messages[1].tool_calls",
                [
                    "messages": [
                        ["role": "user", "content": "weather?"],
                        [
                            "role": "assistant", "content": NSNull(),
                            "tool_calls": [["id": "c1", "type": "function", "function": ["name": "f", "arguments": "{}"]]],
                        ],
                        ["role": "tool", "tool_call_id": "c1", "content": "sunny"],
                    ]
                ]
            ),
            ("messages[1].role", ["messages": [["role": "user", "content": "Say hi"], ["role": "assistant", "content": "Hi"]]]),
            ("frobnicate", ["frobnicate": 3, "messages": [["role": "user", "content": "unknown parameter"]]]),
        ]
        for (param, fields) in requests {
            h.upstream.clearReceived()
            var f = fields
            f["model"] = "prompt-r1/gpt-4o-mini"
            let sent = try body(f)
            let reply = try await h.chat(sent)
            XCTAssertEqual(reply.status, 200, "\(param): \(reply.body)")
            XCTAssertTrue(
                reply.headers.first(name: "x-gateway-unsupported")?.hasPrefix(param + ":") ?? false,
                "\(param): \(reply.headers.first(name: "x-gateway-unsupported") ?? "no header")")
            let got = try XCTUnwrap(h.upstream.received.first, param)
            XCTAssertEqual(h.upstream.received.count, 1, param)
            // The client's own body, byte for byte apart from the model.
            var expected =
                try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(sent.utf8)) as? NSDictionary).mutableCopy()
                as! NSMutableDictionary
            expected["model"] = "gpt-4o-mini"
            XCTAssertEqual(try XCTUnwrap(try JSONSerialization.jsonObject(with: got.body) as? NSDictionary), expected, param)
            let id = try XCTUnwrap(reply.episodeID)
            let e = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
            XCTAssertEqual(e.mode, "passthrough")
            XCTAssertTrue(e.error?.contains(param) ?? false, e.error ?? "nil")
        }
        try await h.stop()
    }

    /// With `policy.unsupported_request: error`, the same requests get a 400 naming the field.
    func testUnsupportedRequestsAreRefusedWhenConfigured() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases, configure: { c in c.policy.unsupportedRequest = .error })
        let reply = try await h.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini", "tool_choice": "auto",
                "messages": [["role": "user", "content": "x"]],
            ]))
        XCTAssertEqual(assertOpenAIError(reply, status: 400)["param"] as? String, "tool_choice")
        let image = try await h.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini",
                "messages": [
                    [
                        "role": "user",
                        "content": [
                            ["type": "image_url", "image_url": ["url": "https://example.com/cat.png"]]
                        ],
                    ]
                ],
            ]))
        XCTAssertEqual(assertOpenAIError(image, status: 400)["param"] as? String, "messages[0].content[0]")
        XCTAssertTrue(h.upstream.received.isEmpty)
        // Defaults ask for nothing: accepted.
        let defaults = try await h.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini", "logprobs": false, "tools": NSNull(),
                "response_format": ["type": "text"], "messages": [["role": "user", "content": cases[0].question]],
            ]))
        XCTAssertEqual(defaults.status, 200, defaults.body)
        XCTAssertEqual(content(defaults), cases[0].final_answer)
        try await h.stop()
    }

    /// `n > 1` runs n episodes: n choices, n logged episodes with their own ids and turns.
    func testNRunsNEpisodes() async throws {
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases)
        let reply = try await h.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini", "n": 3,
                "messages": [["role": "user", "content": cases[0].question]],
            ]))
        XCTAssertEqual(reply.status, 200, reply.body)
        let choices = try XCTUnwrap(reply.json?["choices"] as? [[String: Any]])
        XCTAssertEqual(choices.map { $0["index"] as? Int }, [0, 1, 2])
        for i in 0..<3 { XCTAssertEqual(content(reply, choice: i), cases[0].final_answer) }
        let ids = try XCTUnwrap(reply.headers.first(name: "x-gateway-episode-ids")).split(separator: ",").map(String.init)
        XCTAssertEqual(ids.count, 3)
        XCTAssertEqual(ids.first, reply.episodeID)
        XCTAssertEqual(h.upstream.received.filter { $0.path == "/v1/chat/completions" }.count, 3 * cases[0].upstream_answers.count)
        try await h.stop()
        let db = try TrafficDatabase(path: h.dbPath)
        for id in ids {
            let e = try XCTUnwrap(try db.episode(id: id), id)
            XCTAssertEqual(e.outcome, "answer")
            XCTAssertEqual(e.question, cases[0].question)
            XCTAssertEqual(e.turns.filter { $0.kind == "policy" }.count, cases[0].turns.count)
        }
        // The stream has n choices too.
        let h2 = try await CollaborationTests.start(cases)
        let streamed = try await h2.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini", "n": 2, "stream": true,
                "messages": [["role": "user", "content": cases[0].question]],
            ]))
        let (texts, _) = try Self.streamedContent(streamed.body)
        XCTAssertEqual(texts, [0: cases[0].final_answer, 1: cases[0].final_answer])
        try await h2.stop()
    }

    /// Content per choice index, and the events' JSON objects.
    static func streamedContent(_ body: String) throws -> ([Int: String], [[String: Any]]) {
        var parser = SSEParser()
        let events = try parser.feed(Array(body.utf8))
        var texts: [Int: String] = [:]
        var objects: [[String: Any]] = []
        for e in events where !e.isDone && !e.data.isEmpty {
            let obj = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(e.data)) as? [String: Any], e.dataString)
            objects.append(obj)
            for choice in obj["choices"] as? [[String: Any]] ?? [] {
                let i = choice["index"] as? Int ?? -1
                if let c = (choice["delta"] as? [String: Any])?["content"] as? String { texts[i, default: ""] += c }
            }
        }
        return (texts, objects)
    }

    /// The streamed content always adds up to the non-stream content: an answer, and each
    /// fallback (the random-weights policy never answers).
    func testStreamNeverTakesTextBack() async throws {
        let cases = try CollaborationTests.cases()
        let question = cases[0].question
        let configs: [(String, String, (inout GatewayConfig) -> Void)] = [
            ("promptr1-tiny", "answer", { _ in }),
            // No upstream answer to fall back on: the client's request is forwarded.
            (
                "qwen3-tiny", "fallback_direct",
                { c in
                    c.policy.maxTurns = 3
                    c.policy.maxTokensPerTurn = 24
                }
            ),
            (
                "qwen3-tiny", "fallback_direct",
                { c in
                    c.policy.maxTurns = 2
                    c.policy.maxTokensPerTurn = 6
                    c.policy.fallback = .direct
                }
            ),
            ("promptr1-tiny", "answer", { c in c.policy.finalAnswer = .upstream }),
        ]
        for (policy, label, configure) in configs {
            let h = try await CollaborationTests.start(cases, policy: policy, configure: configure)
            let plain = try await h.chat(
                try body(["model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": question]]]))
            XCTAssertEqual(plain.status, 200, plain.body)
            let streamed = try await h.chat(
                try body([
                    "model": "prompt-r1/gpt-4o-mini", "stream": true,
                    "messages": [["role": "user", "content": question]],
                ]),
                headers: [("content-type", "application/json"), ("x-gateway-trace", "1")])
            XCTAssertEqual(streamed.status, 200)
            let (texts, _) = try Self.streamedContent(streamed.body)
            XCTAssertEqual(texts[0] ?? "", try XCTUnwrap(content(plain)), "\(policy) \(label)")
            try await h.stop()
            let db = try TrafficDatabase(path: h.dbPath)
            for id in [plain.episodeID, streamed.episodeID] {
                let e = try XCTUnwrap(try db.episode(id: try XCTUnwrap(id)))
                XCTAssertTrue(e.outcome?.hasPrefix(label) ?? false, "\(label): \(e.outcome ?? "nil")")
            }
        }
    }

    /// Forwarded client authorization and allow-listed headers go with every collaboration
    /// call, as with passthrough; an upstream 4xx is relayed with its status and body.
    func testUpstreamAuthHeadersAndFourXXOnCollaboration() async throws {
        let cases = try CollaborationTests.cases()
        let refusal =
            #"{"error":{"message":"Incorrect API key provided: sk-cl***","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#
        let inner = CollaborationTests.script(cases)
        let h = try await CollaborationTests.start(
            cases,
            upstream: { r in
                if r.headers["authorization"] == "Bearer sk-client-bad" { return .json(status: 401, body: refusal) }
                return await inner(r)
            }, configure: { c in c.upstream.forwardClientAuthorization = true })
        let fields: [String: Any] = ["model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]]]
        let ok = try await h.chat(
            try body(fields),
            headers: [
                ("content-type", "application/json"), ("authorization", "Bearer sk-client-good"),
                ("openai-organization", "org-9"), ("x-secret", "no"),
            ])
        XCTAssertEqual(ok.status, 200, ok.body)
        let calls = h.upstream.received.filter { $0.path == "/v1/chat/completions" }
        XCTAssertFalse(calls.isEmpty)
        for call in calls {
            XCTAssertEqual(call.headers["authorization"], "Bearer sk-client-good")
            XCTAssertEqual(call.headers["openai-organization"], "org-9")
            XCTAssertNil(call.headers["x-secret"])
        }
        let refused = try await h.chat(
            try body(fields), headers: [("content-type", "application/json"), ("authorization", "Bearer sk-client-bad")])
        XCTAssertEqual(refused.status, 401)
        XCTAssertEqual(refused.body, refusal)
        let id = try XCTUnwrap(refused.episodeID)
        try await h.stop()
        let e = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
        XCTAssertEqual(e.status, 401)
        XCTAssertEqual(e.outcome, "upstream_error")
    }

    /// `on_policy_error: passthrough` forwards the client's original body, stream or not.
    func testPolicyErrorPassesTheOriginalRequestThrough() async throws {
        let cases = try CollaborationTests.cases()
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-small-ctx-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: CollaborationTests.fixtures.appendingPathComponent("models/promptr1-tiny"), to: dir)
        let configURL = dir.appendingPathComponent("config.json")
        var config = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: configURL)) as? [String: Any])
        config["max_position_embeddings"] = cases[0].prompt_ids.count + 1  // room for the prompt only: the policy fails
        try JSONSerialization.data(withJSONObject: config).write(to: configURL)
        let h = try await Harness.start(
            script: CollaborationTests.script(cases),
            configure: { c in
                c.policy.path = dir.path
                c.policy.temperature = 0
            })
        for stream in [false, true] {
            h.upstream.clearReceived()
            let sent =
                ##"{"model":"prompt-r1/gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q: "##
                + cases[0].question + ##"","name":"ann"}],"stream":"## + (stream ? "true" : "false") + ##","seed":7,"temperature":0.25}"##
            let reply = try await h.chat(sent)
            XCTAssertEqual(reply.status, 200, reply.body)
            let forwarded = try XCTUnwrap(h.upstream.received.last)
            XCTAssertEqual(
                String(decoding: forwarded.body, as: UTF8.self), sent.replacingOccurrences(of: "prompt-r1/gpt-4o-mini", with: "gpt-4o-mini")
            )
            if stream {
                let (texts, _) = try Self.streamedContent(reply.body)
                XCTAssertEqual(texts[0], "echo: Q: " + cases[0].question)
                XCTAssertTrue(reply.body.hasSuffix("data: [DONE]\n\n"))
            } else {
                XCTAssertEqual(content(reply), "echo: Q: " + cases[0].question)
            }
            let e = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: try XCTUnwrap(reply.episodeID)))
            XCTAssertEqual(e.outcome, "fallback_passthrough(policy_error)")
            XCTAssertEqual(e.responseText, "echo: Q: " + cases[0].question)
        }
        try await h.stop()
    }

    /// Overhead is total minus upstream time, on passthrough and collaboration, stream or not;
    /// collaboration adds the policy's part. The upstream takes a known 300 ms per call.
    func testTimingExcludesUpstreamTime() async throws {
        let cases = try CollaborationTests.cases()
        let c = try XCTUnwrap(cases.first { $0.upstream_answers.count == 2 })
        let h = try await CollaborationTests.start(cases, upstream: CollaborationTests.slowScript(cases, delay: .milliseconds(300)))
        let started = ContinuousClock.now
        let reply = try await h.chat(try body(["model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]]]))
        let clientMs = (ContinuousClock.now - started).milliseconds
        XCTAssertEqual(reply.status, 200, reply.body)
        let overhead = try XCTUnwrap(Double(reply.headers.first(name: "x-gateway-overhead-ms") ?? ""))
        let upstream = try XCTUnwrap(Double(reply.headers.first(name: "x-gateway-upstream-ms") ?? ""))
        let policy = try XCTUnwrap(Double(reply.headers.first(name: "x-gateway-policy-ms") ?? ""))
        XCTAssertGreaterThanOrEqual(upstream, 600)
        XCTAssertLessThanOrEqual(overhead + upstream, clientMs + 1)
        XCTAssertLessThan(overhead, clientMs - 600)
        XCTAssertLessThanOrEqual(policy, overhead + 1)
        // The stream carries the final figures in its usage chunk (and in trailers).
        let streamed = try await h.chat(
            try body([
                "model": "prompt-r1/gpt-4o-mini", "stream": true, "stream_options": ["include_usage": true],
                "messages": [["role": "user", "content": c.question]],
            ]))
        let (_, objects) = try Self.streamedContent(streamed.body)
        let timing = try XCTUnwrap(objects.last?["x_gateway_timing"] as? [String: Double], "\(objects.last ?? [:])")
        XCTAssertGreaterThanOrEqual(timing["upstream_ms"] ?? 0, 600)
        XCTAssertEqual((timing["overhead_ms"] ?? 0) + (timing["upstream_ms"] ?? 0), timing["total_ms"] ?? -1, accuracy: 0.01)
        XCTAssertNotNil(timing["policy_ms"])
        try await h.stop()
        // Passthrough: the same rule.
        let p = try await Harness.start(script: { r in .delayed(.milliseconds(300), FakeUpstream.defaultReply(r)) })
        let t0 = ContinuousClock.now
        let plain = try await p.chat(simpleChat)
        let plainMs = (ContinuousClock.now - t0).milliseconds
        let plainOverhead = try XCTUnwrap(Double(plain.headers.first(name: "x-gateway-overhead-ms") ?? ""))
        XCTAssertLessThan(plainOverhead, plainMs - 300)
        try await p.stop()
    }

    /// Route rules apply to every model route: `upstream_model` maps embeddings, completions and
    /// responses too, and a collaboration alias on an endpoint without collaboration is served
    /// as passthrough with the mapped model (or refused with `unsupported_request: error`).
    func testRouteRulesApplyToEveryModelRoute() async throws {
        let h = try await Harness.start(configure: { c in
            c.routes = [
                .init(model: "emb-small", mode: .passthrough, upstreamModel: "text-embedding-3-small"),
                .init(model: "prompt-r1/*", mode: .collaborate), .init(model: "*", mode: .passthrough),
            ]
        })
        for path in ["/v1/embeddings", "/v1/completions", "/v1/responses"] {
            h.upstream.clearReceived()
            _ = try await h.request(.POST, path, body: #"{"model":"emb-small","input":"hi","prompt":"hi"}"#)
            XCTAssertEqual(h.upstream.received.first?.json?["model"] as? String, "text-embedding-3-small", path)
        }
        h.upstream.clearReceived()
        let r = try await h.request(.POST, "/v1/embeddings", body: #"{"model":"prompt-r1/text-embedding-3-small","input":"hi"}"#)
        XCTAssertEqual(r.status, 200, r.body)
        XCTAssertEqual(h.upstream.received.first?.json?["model"] as? String, "text-embedding-3-small")
        XCTAssertTrue(r.headers.first(name: "x-gateway-unsupported")?.hasPrefix("model:") ?? false)
        let missing = try await h.request(.POST, "/v1/embeddings", body: #"{"input":"hi"}"#)
        XCTAssertEqual(assertOpenAIError(missing, status: 400)["param"] as? String, "model")
        try await h.stop()
    }
}
