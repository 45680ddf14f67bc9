// The gateway with `policy.backend` = llama.cpp: real HTTP from the client through the gateway to
// a real llama-server (built by scripts/build-llama-server.sh) and to the fake upstream. The
// episodes answer as with the embedded engine and are logged the same way; /ready follows the
// engine's health; the admin swap takes a backend (blue/green, smoke-tested) and rolls back.
// A missing llama-server binary FAILS these tests.

import AsyncHTTPClient
import FakeUpstream
import Foundation
import PromptR1
import RemotePolicy
import TrafficLog
import XCTest

@testable import GatewayServer

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

final class RemotePolicyGatewayTests: XCTestCase {
    static var root: URL { CollaborationTests.fixtures.deletingLastPathComponent().deletingLastPathComponent() }
    static var gguf: URL { CollaborationTests.fixtures.appendingPathComponent("models/promptr1-tiny.gguf") }

    func testConfigAndCommandLine() throws {
        func parse(_ s: String) throws -> GatewayConfig { try GatewayConfig.parse(Data(s.utf8)) }
        func errorPath(_ s: String) -> String? {
            do {
                _ = try parse(s)
                return nil
            } catch { return (error as? ConfigError)?.path }
        }
        let up = #""upstream":{"base_url":"http://x/v1"}"#
        XCTAssertNil(try parse("{\(up)}").policy.backend, "default: the embedded engine")
        XCTAssertNil(try parse(#"{\#(up),"policy":{"backend":{"kind":"embedded"}}}"#).policy.backend)
        let b = try XCTUnwrap(
            try parse(
                #"{\#(up),"policy":{"backend":{"kind":"vllm","base_url":"http://127.0.0.1:8000","model":"agent","api_key_env":"VLLM_KEY"}}}"#
            ).policy.backend)
        XCTAssertEqual(b, RemotePolicyBackend(kind: .vllm, baseURL: "http://127.0.0.1:8000", apiKeyEnv: "VLLM_KEY", model: "agent"))
        XCTAssertEqual(errorPath(#"{\#(up),"policy":{"backend":{"kind":"tgi","base_url":"http://h"}}}"#), "policy.backend.kind")
        XCTAssertEqual(errorPath(#"{\#(up),"policy":{"backend":{"kind":"sglang"}}}"#), "policy.backend.base_url")
        XCTAssertEqual(errorPath(#"{\#(up),"policy":{"backend":{"kind":"sglang","base_url":"file:///x"}}}"#), "policy.backend.base_url")
        XCTAssertEqual(
            errorPath(#"{\#(up),"policy":{"backend":{"kind":"vllm","base_url":"http://h","api_key_env":"sk-123"}}}"#),
            "policy.backend.api_key_env")
        XCTAssertEqual(
            errorPath(#"{\#(up),"policy":{"backend":{"kind":"vllm","base_url":"http://h","modle":"x"}}}"#), "policy.backend.modle")
        XCTAssertEqual(errorPath(#"{\#(up),"policy":{"backend":{"kind":"embedded","base_url":"http://h"}}}"#), "policy.backend.base_url")

        var c = try parse("{\(up)}")
        try c.overridePolicyBackend(url: "http://127.0.0.1:9000", kind: nil)
        XCTAssertEqual(c.policy.backend, RemotePolicyBackend(kind: .llamacpp, baseURL: "http://127.0.0.1:9000"))
        try c.overridePolicyBackend(url: nil, kind: "sglang")
        XCTAssertEqual(c.policy.backend, RemotePolicyBackend(kind: .sglang, baseURL: "http://127.0.0.1:9000"))
        try c.overridePolicyBackend(url: nil, kind: "embedded")
        XCTAssertNil(c.policy.backend)
        XCTAssertThrowsError(try c.overridePolicyBackend(url: nil, kind: "vllm")) { e in
            XCTAssertEqual((e as? ConfigError)?.path, "--policy-backend.base_url")
        }
    }

    func testEpisodesThroughLlamaServerAreServedLoggedAndSwapped() async throws {
        let cases = try CollaborationTests.cases()
        let engine = try LlamaServerProcess.start(model: Self.gguf, repositoryRoot: Self.root)
        defer { engine.stop() }
        let token = "admin-remote-policy-token"
        let models = FileManager.default.temporaryDirectory.appendingPathComponent("gw-remote-models-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: models, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: models) }
        let link = models.appendingPathComponent("promptr1-tiny")
        // A copy, not a symbolic link: the admin API loads only what resolves inside the models directory.
        try FileManager.default.copyItem(at: CollaborationTests.fixtures.appendingPathComponent("models/promptr1-tiny"), to: link)
        let h = try await Harness.start(script: CollaborationTests.script(cases), environment: ["GATEWAY_ADMIN_TOKEN": token]) { c in
            c.policy.path = link.path
            c.policy.temperature = 0
            c.admin.modelsDir = models.path
            c.policy.backend = RemotePolicyBackend(kind: .llamacpp, baseURL: engine.baseURL)
        }
        var ids: [String] = []
        for c in cases {
            let body = try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
            ])
            let reply = try await h.chat(String(decoding: body, as: UTF8.self))
            XCTAssertEqual(reply.status, 200, reply.body)
            let message = ((reply.json?["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any]
            XCTAssertEqual(message?["content"] as? String, c.final_answer, c.question)
            ids.append(try XCTUnwrap(reply.episodeID))
        }
        let ready = try await h.admin(.GET, "/ready")
        XCTAssertEqual(ready.status, 200, ready.body)
        let metrics = try await h.admin(.GET, "/metrics")
        XCTAssertTrue(metrics.body.contains(#"gateway_policy_backend_requests_total{backend="llamacpp"}"#), metrics.body)
        XCTAssertTrue(metrics.body.contains(#"gateway_policy_backend_failures_total{backend="llamacpp"} 0"#), metrics.body)

        // Blue/green: a second engine instance, health-checked and smoke-tested, then switched to.
        let green = try LlamaServerProcess.start(model: Self.gguf, repositoryRoot: Self.root)
        defer { green.stop() }
        let dead = "http://127.0.0.1:\(try LlamaServerProcess.freePort())"
        let refused = try await h.admin(
            .POST, "/admin/policy",
            body: #"{"path": "\#(link.lastPathComponent)", "backend": {"kind": "llamacpp", "base_url": "\#(dead)"}}"#, token: token)
        XCTAssertEqual(refused.status, 422, refused.body)
        XCTAssertEqual(h.gateway.policies.current?.remote?.backend.baseURL, engine.baseURL, "a failed check leaves the serving version")
        let badKey = try await h.admin(
            .POST, "/admin/policy", body: #"{"path": "x", "backend": {"kind": "llamacpp", "url": "\#(dead)"}}"#, token: token)
        XCTAssertEqual(badKey.status, 400, badKey.body)
        // llama-server cannot load new weights into a running server: in place is a clear 400.
        let inPlace = try await h.admin(
            .POST, "/admin/policy", body: #"{"path": "\#(link.lastPathComponent)", "reload": "in_place"}"#, token: token)
        XCTAssertEqual(inPlace.status, 400, inPlace.body)
        XCTAssertEqual(inPlace.error?["code"] as? String, "reload_unsupported", inPlace.body)
        XCTAssertTrue((inPlace.error?["message"] as? String ?? "").contains("/lora-adapters"), inPlace.body)
        XCTAssertEqual(h.gateway.policies.current?.remote?.backend.baseURL, engine.baseURL)
        let swapped = try await h.admin(
            .POST, "/admin/policy",
            body: #"{"path": "\#(link.lastPathComponent)", "backend": {"kind": "llamacpp", "base_url": "\#(green.baseURL)"}}"#, token: token
        )
        XCTAssertEqual(swapped.status, 200, swapped.body)
        XCTAssertEqual(h.gateway.policies.current?.remote?.backend.baseURL, green.baseURL)
        let c0 = cases[0]
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c0.question]],
        ])
        let onGreen = try await h.chat(String(decoding: body, as: UTF8.self))
        XCTAssertEqual(
            ((onGreen.json?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String, c0.final_answer)
        XCTAssertGreaterThan(h.gateway.policies.current?.remote?.stats.snapshot.requests ?? 0, 1)

        // /ready follows the engine: with green stopped it is 503; rollback returns to blue.
        green.stop()
        let notReady = try await h.admin(.GET, "/ready")
        XCTAssertEqual(notReady.status, 503, notReady.body)
        XCTAssertTrue(notReady.body.contains("policy engine"), notReady.body)
        let rolledBack = try await h.admin(.POST, "/admin/policy/rollback", token: token)
        XCTAssertEqual(rolledBack.status, 200, rolledBack.body)
        XCTAssertEqual(h.gateway.policies.current?.remote?.backend.baseURL, engine.baseURL)
        let readyAgain = try await h.admin(.GET, "/ready")
        XCTAssertEqual(readyAgain.status, 200, readyAgain.body)
        try await h.stop()

        // Logged as an embedded episode: version = the folder's weights id, ids = the reference's.
        let db = try TrafficDatabase(path: h.dbPath)
        for (c, id) in zip(cases, ids) {
            let e = try XCTUnwrap(try db.episode(id: id))
            XCTAssertEqual(e.outcome, "answer")
            XCTAssertEqual(e.policyVersion?.count, 16)
            XCTAssertEqual(e.policyLogprobs, .model, "greedy on llama.cpp: the model's log-softmax, recorded as such")
            XCTAssertEqual(e.policySampled, false)
            let policyTurns = e.turns.filter { $0.kind == "policy" }
            XCTAssertEqual(policyTurns.map(\.outputIDs), c.turns.map(\.ids), c.question)
            for (got, want) in zip(policyTurns, c.turns) {
                let lp = try XCTUnwrap(got.logprobs)
                XCTAssertEqual(lp.count, want.logprobs.count)
                for (a, b) in zip(lp, want.logprobs) { XCTAssertEqual(a, b, accuracy: 1e-4) }
            }
        }
    }
}
