import EpisodeLog
import FakeUpstream
import Foundation
import GRDB
import GatewayTrainer
import PolicyEngine
import TrafficLog
import XCTest

@testable import GatewayServer

final class AdminTests: XCTestCase {
    /// A models directory with real checkpoints copied in: A speaks the protocol, B does not.
    static func modelsDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-models-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let fm = FileManager.default
        try fm.copyItem(at: CollaborationTests.fixtures.appendingPathComponent("models/promptr1-tiny"), to: dir.appendingPathComponent("A"))
        try fm.copyItem(at: CollaborationTests.fixtures.appendingPathComponent("models/qwen3-tiny"), to: dir.appendingPathComponent("B"))
        return dir
    }

    static func start(
        models: URL, token: String? = "admin-SECRET-token", configPath: String? = nil,
        configure: @escaping (inout GatewayConfig) -> Void = { _ in }
    ) async throws -> Harness {
        let cases = try CollaborationTests.cases()
        return try await Harness.start(
            script: CollaborationTests.script(cases), environment: token.map { ["GATEWAY_ADMIN_TOKEN": $0] } ?? [:],
            configPath: configPath,
            configure: { c in
                c.admin.modelsDir = models.path
                c.policy.path = models.appendingPathComponent("A").path
                c.policy.temperature = 0
                c.policy.maxTurns = 3
                c.policy.maxTokensPerTurn = 100
                c.policy.fallback = .direct
                // Capacity is not under test here: no request may be turned away.
                c.policy.maxConcurrentEpisodes = 64
                c.policy.queueTimeoutMs = 120_000
                configure(&c)
            })
    }

    /// The trainer's way out, end to end: a LoRA step on the serving checkpoint, exported as a
    /// checkpoint folder by the trainer, pushed with `gateway-train`'s push call to the running
    /// gateway, which loads it, reports its weights digest as the version and serves with it.
    func testTrainerExportPushedIntoRunningGateway() async throws {
        let models = try Self.modelsDir()
        let h = try await Self.start(models: models)
        let token = "admin-SECRET-token"
        let base = models.appendingPathComponent("A")
        let model = try TrainableModel(
            directory: base, mode: .lora(LoRAConfig(rank: 4, alpha: 8, targetModules: ["q_proj", "v_proj"])), seed: 1)
        let optimizer = AdamW(model: model, config: AdamWConfig(lr: 1e-2, weightDecay: 0))
        for _ in 0..<2 {
            let tokens: [Int32] = (0..<24).map { Int32(($0 * 37) % 200) }
            let tape = model.forward(tokens)
            model.backward(tape, dLogprobs: [Float](repeating: -1, count: tokens.count - 1))
            optimizer.update(learningRate: 1e-2)
            model.zeroGradients()
        }
        let out = models.appendingPathComponent("A-trained")
        try model.exportCheckpoint(to: out, sourceDirectory: base)
        let sha = try CheckpointHash.weightsSHA256(directory: out)
        XCTAssertNotEqual(sha, try CheckpointHash.weightsSHA256(directory: base), "the LoRA step changed the merged weights")

        do {
            _ = try await TrainJob.push(adminURL: h.adminBase, path: "A-trained", token: "wrong")
            XCTFail("a wrong token must be refused")
        } catch let e as TrainJob.PushError {
            XCTAssertEqual(e.status, 401)
        }
        let reply = try await TrainJob.push(adminURL: h.adminBase, path: "A-trained", token: token)
        XCTAssertTrue(reply.contains(CheckpointHash.versionID(sha256: sha)), reply)
        let status = try await h.admin(.GET, "/admin/policy", token: token)
        XCTAssertEqual((status.json?["current"] as? [String: Any])?["id"] as? String, CheckpointHash.versionID(sha256: sha))
        let question = try CollaborationTests.cases()[0]
        let body = String(
            decoding: try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": question.question]],
            ]), as: UTF8.self)
        let served = try await h.chat(body)
        XCTAssertEqual(served.status, 200, served.body)
        let id = try XCTUnwrap(served.episodeID)
        try await h.stop()
        let rec = try XCTUnwrap(try TrafficDatabase(path: h.dbPath).episode(id: id))
        XCTAssertEqual(rec.policyVersion, CheckpointHash.versionID(sha256: sha))
    }

    func testSwapUnderLoadLosesNothingAndRecordsTheServingVersion() async throws {
        let models = try Self.modelsDir()
        let h = try await Self.start(models: models)
        let token = "admin-SECRET-token"
        let status = try await h.admin(.GET, "/admin/policy", token: token)
        XCTAssertEqual(status.status, 200, status.body)
        let versionA = try XCTUnwrap((status.json?["current"] as? [String: Any])?["id"] as? String)
        let question = try CollaborationTests.cases()[0]
        let body = String(
            decoding: try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": question.question]],
            ]), as: UTF8.self)

        let load = Task {
            try await withThrowingTaskGroup(of: (Int, String?, String).self) { group in
                for i in 0..<32 {
                    group.addTask {
                        try await Task.sleep(for: .milliseconds(i * 20))
                        let r = try await h.chat(body)
                        let content = ((r.json?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String
                        return (r.status, r.episodeID, content ?? r.body)
                    }
                }
                var out: [(Int, String?, String)] = []
                for try await x in group { out.append(x) }
                return out
            }
        }
        var versionB: String?
        for target in ["B", "A", "B", "A"] {
            let r = try await h.admin(.POST, "/admin/policy", body: #"{"path": "\#(target)"}"#, token: token)
            XCTAssertEqual(r.status, 200, r.body)
            let id = (r.json?["current"] as? [String: Any])?["id"] as? String
            if target == "B" { versionB = id } else { XCTAssertEqual(id, versionA) }
            try await Task.sleep(for: .milliseconds(120))
        }
        let results = try await load.value
        XCTAssertEqual(results.filter { $0.0 != 200 }.count, 0, "failed requests: \(results.filter { $0.0 != 200 })")
        let b = try XCTUnwrap(versionB)
        XCTAssertNotEqual(b, versionA)
        try await h.stop()

        // Every episode names the version whose weights produced its tokens: A answers, B cannot.
        let db = try TrafficDatabase(path: h.dbPath)
        var seen: Set<String> = []
        for (_, id, content) in results {
            let e = try XCTUnwrap(try db.episode(id: try XCTUnwrap(id)))
            let v = try XCTUnwrap(e.policyVersion)
            seen.insert(v)
            if v == versionA {
                XCTAssertEqual(e.outcome, "answer")
                XCTAssertEqual(content, question.final_answer)
                XCTAssertEqual(e.turns.first { $0.kind == "policy" }?.outputIDs, question.turns[0].ids)
            } else {
                XCTAssertEqual(v, b)
                XCTAssertTrue(e.outcome?.hasPrefix("fallback") ?? false, e.outcome ?? "")
                XCTAssertEqual(content, "echo: " + question.question)
            }
        }
        XCTAssertEqual(seen, [versionA, b], "the load should have run on both versions")
        let versions = try db.policyVersions().map(\.id)
        XCTAssertEqual(Set(versions), [versionA, b])
    }

    func testRollbackAndBadLoadsLeaveServiceIntact() async throws {
        let models = try Self.modelsDir()
        let fm = FileManager.default
        // A corrupt copy (truncated weights) and one whose final norm is NaN.
        try fm.copyItem(at: models.appendingPathComponent("A"), to: models.appendingPathComponent("corrupt"))
        let corrupt = models.appendingPathComponent("corrupt/model.safetensors")
        let data = try Data(contentsOf: corrupt)
        try data.prefix(data.count / 2).write(to: corrupt)
        try fm.copyItem(at: models.appendingPathComponent("A"), to: models.appendingPathComponent("nan"))
        try Self.poison(models.appendingPathComponent("nan/model.safetensors"), tensor: "model.norm.weight")
        // A symlink that points outside the models directory.
        try fm.createSymbolicLink(
            at: models.appendingPathComponent("escape"),
            withDestinationURL: CollaborationTests.fixtures.appendingPathComponent("models/qwen3-tiny"))

        let h = try await Self.start(models: models)
        let token = "admin-SECRET-token"
        let before = try await h.admin(.GET, "/admin/policy", token: token)
        let versionA = (before.json?["current"] as? [String: Any])?["id"] as? String

        assertOpenAIError(try await h.admin(.POST, "/admin/policy", body: #"{"path": "B"}"#), status: 401)
        assertOpenAIError(try await h.admin(.POST, "/admin/policy", body: #"{"path": "B"}"#, token: "wrong"), status: 401)
        for (path, status) in [("../A", 400), ("/etc", 400), ("escape", 400), ("missing", 404), ("corrupt", 422), ("nan", 422)] {
            let r = try await h.admin(.POST, "/admin/policy", body: #"{"path": "\#(path)"}"#, token: token)
            assertOpenAIError(r, status: status)
        }
        assertOpenAIError(try await h.admin(.POST, "/admin/policy/rollback", token: token), status: 409)
        // Still serving A, and answering.
        let still = try await h.admin(.GET, "/admin/policy", token: token)
        XCTAssertEqual((still.json?["current"] as? [String: Any])?["id"] as? String, versionA)
        let cases = try CollaborationTests.cases()
        let body = String(
            decoding: try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
            ]), as: UTF8.self)
        do {
            let reply = try await h.chat(body)
            XCTAssertEqual(reply.status, 200, reply.body)
        }

        let toB = try await h.admin(.POST, "/admin/policy", body: #"{"path": "B"}"#, token: token)
        XCTAssertEqual(toB.status, 200, toB.body)
        let back = try await h.admin(.POST, "/admin/policy/rollback", token: token)
        XCTAssertEqual(back.status, 200, back.body)
        XCTAssertEqual((back.json?["current"] as? [String: Any])?["id"] as? String, versionA)
        let after = try await h.admin(.GET, "/admin/policy", token: token)
        XCTAssertEqual(
            (after.json?["history"] as? [[String: Any]])?.first?["path"] as? String,
            models.appendingPathComponent("B").resolvingSymlinksInPath().path)
        try await h.stop()
    }

    /// Overwrites one tensor's bytes with NaN.
    static func poison(_ file: URL, tensor: String) throws {
        var data = try Data(contentsOf: file)
        let n = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        let header = try XCTUnwrap(try JSONSerialization.jsonObject(with: data.subdata(in: 8..<(8 + Int(n)))) as? [String: Any])
        let offsets = try XCTUnwrap((header[tensor] as? [String: Any])?["data_offsets"] as? [Int])
        let start = 8 + Int(n) + offsets[0]
        let end = 8 + Int(n) + offsets[1]
        data.replaceSubrange(start..<end, with: [UInt8](repeating: 0xFF, count: end - start))
        try data.write(to: file)
    }

    func testHealthReadyMetricsAndPrometheusFormat() async throws {
        // No policy while collaboration routes exist: alive but not ready.
        let bare = try await Harness.start()
        do {
            let reply = try await bare.admin(.GET, "/health")
            XCTAssertEqual(reply.status, 200, reply.body)
        }
        do {
            let reply = try await bare.admin(.GET, "/ready")
            XCTAssertEqual(reply.status, 503, reply.body)
        }
        try await bare.stop()

        let models = try Self.modelsDir()
        let h = try await Self.start(models: models)
        do {
            let reply = try await h.admin(.GET, "/ready")
            XCTAssertEqual(reply.status, 200, reply.body)
        }
        let cases = try CollaborationTests.cases()
        let body = String(
            decoding: try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
            ]), as: UTF8.self)
        _ = try await h.chat(body)
        _ = try await h.chat(simpleChat)
        _ = try await h.chat("{bad")
        _ = try await h.admin(.POST, "/admin/policy", body: #"{"path": "B"}"#, token: "admin-SECRET-token")
        let metrics = try await h.admin(.GET, "/metrics")
        XCTAssertEqual(metrics.status, 200)
        XCTAssertTrue(metrics.headers.first(name: "content-type")?.hasPrefix("text/plain") ?? false)
        try await h.stop()

        // Parsed by the reference Prometheus parser (prometheus_client), not by us.
        let py = try await OpenAISDKTests.requireSDK()
        let parser = """
            import sys, json
            from prometheus_client.parser import text_string_to_metric_families
            out = {}
            for fam in text_string_to_metric_families(sys.stdin.read()):
                for s in fam.samples:
                    out.setdefault(s.name, []).append([s.labels, s.value])
            print(json.dumps(out))
            """
        let (status, out, err) = try await OpenAISDKTests.run(py, ["-c", parser], stdin: metrics.body)
        if err.contains("No module named 'prometheus_client'") {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("prometheus_client missing; the test command installs it") }
            throw XCTSkip("prometheus_client not installed")
        }
        XCTAssertEqual(status, 0, err)
        let samples = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: [[Any]]])
        func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
            samples[name]?.first { ($0[0] as? [String: String]).map { l in labels.allSatisfy { l[$0.key] == $0.value } } ?? false }?[1]
                as? Double
        }
        XCTAssertEqual(value("gateway_requests_total", ["route": "/v1/chat/completions", "mode": "collaborate", "status": "200"]), 1)
        XCTAssertEqual(value("gateway_requests_total", ["route": "/v1/chat/completions", "mode": "passthrough", "status": "200"]), 1)
        // The collaboration episode copied the protocol prefix pre-filled at load and computed the rest.
        XCTAssertGreaterThan(value("gateway_policy_prefill_tokens_total", ["cached": "true"]) ?? 0, 100)
        XCTAssertGreaterThan(value("gateway_policy_prefill_tokens_total", ["cached": "false"]) ?? 0, 0)
        // Prompt lookup (on by default) drafted tokens in the episode's decode steps and the policy took some.
        XCTAssertGreaterThan(value("gateway_policy_draft_tokens_total", ["accepted": "true"]) ?? 0, 0)
        XCTAssertGreaterThan(value("gateway_policy_draft_tokens_total", ["accepted": "false"]) ?? 0, 0)
        XCTAssertEqual(value("gateway_requests_total", ["status": "400"]), 1)
        XCTAssertEqual(value("gateway_turns_per_episode_count"), 1)
        XCTAssertEqual(value("gateway_policy_swaps_total"), 1)
        XCTAssertEqual(value("gateway_request_duration_seconds_count"), 3)
        XCTAssertNotNil(value("gateway_log_queue_depth"))
        XCTAssertNotNil(value("gateway_policy_tokens_per_second"))
        XCTAssertEqual(value("gateway_errors_total", ["kind": "bad_request"]), 1)
    }

    func testConfigReloadGoodAndBad() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-cfg-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let file = dir.appendingPathComponent("gateway.json")
        func write(_ routes: String) throws {
            try #"{"upstream": {"base_url": "http://127.0.0.1:9/v1"}, "routes": \#(routes)}"#.write(
                to: file, atomically: true, encoding: .utf8)
        }
        try write(#"[{"model": "*", "mode": "passthrough"}]"#)
        let h = try await Harness.start(configPath: file.path)
        _ = try await h.chat(#"{"model":"house","messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual(h.upstream.received.last?.json?["model"] as? String, "house")

        try write(#"[{"model": "house", "mode": "passthrough", "upstream_model": "gpt-4o"}, {"model": "*", "mode": "passthrough"}]"#)
        // No token in the environment: the gateway generated one into a private file.
        let tokenFile = try XCTUnwrap(h.gateway.adminTokenFile)
        let token = try String(contentsOfFile: tokenFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertEqual(token.count, 64)
        let mode = try FileManager.default.attributesOfItem(atPath: tokenFile)[.posixPermissions] as? Int
        XCTAssertEqual(mode, 0o600)
        assertOpenAIError(try await h.admin(.POST, "/admin/config/reload"), status: 401)
        do {
            let reply = try await h.admin(.POST, "/admin/config/reload", token: token)
            XCTAssertEqual(reply.status, 200, reply.body)
        }
        _ = try await h.chat(#"{"model":"house","messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual(h.upstream.received.last?.json?["model"] as? String, "gpt-4o")

        try write(#"[{"model": "house", "mode": "sideways"}]"#)
        let bad = try await h.admin(.POST, "/admin/config/reload", token: token)
        XCTAssertTrue((assertOpenAIError(bad, status: 400)["message"] as? String ?? "").contains("routes[0].mode"))
        _ = try await h.chat(#"{"model":"house","messages":[{"role":"user","content":"x"}]}"#)
        XCTAssertEqual(h.upstream.received.last?.json?["model"] as? String, "gpt-4o", "the old config must stay")

        // SIGHUP does the same.
        try write(#"[{"model": "*", "mode": "passthrough"}]"#)
        kill(getpid(), SIGHUP)
        var mapped = "gpt-4o"
        for _ in 0..<50 where mapped != "house" {
            try await Task.sleep(for: .milliseconds(50))
            _ = try await h.chat(#"{"model":"house","messages":[{"role":"user","content":"x"}]}"#)
            mapped = h.upstream.received.last?.json?["model"] as? String ?? ""
        }
        XCTAssertEqual(mapped, "house")
        try await h.stop()
    }

    func testRefusesPublicAdminWithoutToken() async throws {
        var c = GatewayConfig()
        c.upstream.baseURL = "http://127.0.0.1:9/v1"
        c.admin.host = "0.0.0.0"
        c.log.path = FileManager.default.temporaryDirectory.appendingPathComponent("gw-\(UUID().uuidString).sqlite").path
        XCTAssertThrowsError(try Gateway(config: c, environment: [:])) { e in
            XCTAssertEqual((e as? ConfigError)?.path, "admin.host")
        }
        let g = try Gateway(config: c, environment: ["GATEWAY_ADMIN_TOKEN": "t"])
        try await g.state.upstream.shutdown()
    }
}
