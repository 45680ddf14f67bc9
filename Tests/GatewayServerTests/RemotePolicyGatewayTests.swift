// The gateway with `policy.backend` = llama.cpp: real HTTP from the client through the gateway to
// a real llama-server (built by scripts/build-llama-server.sh) and to the fake upstream. The
// episodes answer as with the embedded engine and are logged the same way; /ready follows the
// engine's health; the admin swap takes a backend (blue/green, smoke-tested) and rolls back.
// A missing llama-server binary FAILS these tests.

import AsyncHTTPClient
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
        let engine = try GatewayLlamaServer.start(model: Self.gguf)
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
        let green = try GatewayLlamaServer.start(model: Self.gguf)
        defer { green.stop() }
        let dead = "http://127.0.0.1:\(try GatewayLlamaServer.freePort())"
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

/// A llama-server on a free loopback port (see Tests/RemotePolicyTests/LlamaServerTests.swift).
final class GatewayLlamaServer: @unchecked Sendable {
    let process: Process
    let baseURL: String

    struct Missing: Error, CustomStringConvertible { var description: String }

    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw Missing(description: "no free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    static func start(model: URL) throws -> GatewayLlamaServer {
        let bin =
            ProcessInfo.processInfo.environment["LLAMA_SERVER"].map { URL(fileURLWithPath: $0) }
            ?? RemotePolicyGatewayTests.root.appendingPathComponent(".build-llama/bin/llama-server")
        guard FileManager.default.isExecutableFile(atPath: bin.path) else {
            throw Missing(description: "\(bin.path) is missing: run scripts/build-llama-server.sh (scripts/test.sh does)")
        }
        let port = try freePort()
        let p = Process()
        p.executableURL = bin
        p.arguments = [
            "-m", model.path, "--host", "127.0.0.1", "--port", "\(port)", "-c", "4096", "-np", "1",
            "-t", "1", "--no-webui", "--log-disable",
            "--cache-type-k", "f32", "--cache-type-v", "f32", "--flash-attn", "off",
        ]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let s = GatewayLlamaServer(process: p, baseURL: "http://127.0.0.1:\(port)")
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if !p.isRunning { throw Missing(description: "llama-server exited with \(p.terminationStatus)") }
            if s.healthy() { return s }
            Thread.sleep(forTimeInterval: 0.1)
        }
        s.stop()
        throw Missing(description: "llama-server did not become healthy within 60 s")
    }

    init(process: Process, baseURL: String) {
        self.process = process
        self.baseURL = baseURL
    }

    func healthy() -> Bool {
        final class Box: @unchecked Sendable { var ok = false }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        var r = URLRequest(url: URL(string: baseURL + "/health")!)
        r.timeoutInterval = 1
        URLSession.shared.dataTask(with: r) { _, resp, _ in
            box.ok = (resp as? HTTPURLResponse)?.statusCode == 200
            done.signal()
        }.resume()
        done.wait()
        return box.ok
    }

    func stop() {
        guard process.isRunning else { return }
        // SIGKILL, not terminate(): Foundation's Process starts the child with the signal mask of
        // the calling thread, where Swift's runtime blocks SIGTERM and SIGINT, so llama-server
        // never sees them and waitUntilExit() would wait forever. The engine holds no state.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
