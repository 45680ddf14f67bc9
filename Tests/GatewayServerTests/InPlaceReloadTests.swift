// In-place reloads through the admin API (`"reload": "in_place"`) on vLLM and SGLang, which need
// a GPU CI lacks: the engine here is a fake on loopback that answers with the request/response
// pairs recorded from those engines' documentation (Tests/Fixtures/engines: the policy turns of
// the tiny policy's first reference episode, and reload.json for the reload calls), and keeps the
// state a real engine would (loaded adapters, the served model path). Real HTTP end to end: the
// client, the gateway, the fake engine, the fake upstream; the versions read back from the log.

import EpisodeLog
import FakeUpstream
import Foundation
import RemotePolicy
import TrafficLog
import XCTest

@testable import GatewayServer

/// A vLLM or SGLang server on loopback, replying from the recorded pairs.
final class FakeEngine: @unchecked Sendable {
    enum Kind { case vllm, sglang }

    final class State: @unchecked Sendable {
        // Guarded by `lock`.
        let lock = NSLock()
        var adapters: [String: String] = [:]
        var modelPath = "/engine/models/base"
        var weightVersion = "default"
        var generateDelay: Duration = .zero
        /// What happened, in order: "generate model=<name>" (vLLM), "generate weights=<path>"
        /// (SGLang), "smoke ...", "load <name> <path>", "unload <name>", "update <path>".
        var events: [String] = []
        func note(_ e: String) { lock.withLock { events.append(e) } }
    }

    /// The recorded pairs (read-only once made).
    final class Recorded: @unchecked Sendable {
        let turns: [[Int]: Any]
        let reload: [String: [String: Any]]
        init(turns: [[Int]: Any], reload: [String: [String: Any]]) {
            self.turns = turns
            self.reload = reload
        }
    }

    let kind: Kind
    let state: State
    let server: FakeUpstream
    var baseURL: String { "http://127.0.0.1:\(server.port)" }
    var events: [String] { state.lock.withLock { state.events } }
    func setDelay(_ d: Duration) { state.lock.withLock { state.generateDelay = d } }

    static var engines: URL { CollaborationTests.fixtures.appendingPathComponent("engines") }
    static func json(_ name: String) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: engines.appendingPathComponent(name))) as! [String: Any]
    }
    static func text(_ v: Any) -> String {
        String(decoding: try! JSONSerialization.data(withJSONObject: v, options: [.sortedKeys]), as: UTF8.self)
    }

    init(_ kind: Kind) async throws {
        self.kind = kind
        let prefix = kind == .vllm ? "vllm" : "sglang"
        var turns: [[Int]: Any] = [:]
        for n in ["turn1", "turn2"] {
            let f = try Self.json("\(prefix)-\(n).json")
            let req = f["request"] as! [String: Any]
            turns[(req["prompt"] ?? req["input_ids"]) as! [Int]] = f["response"]!
        }
        let recorded = Recorded(turns: turns, reload: (try Self.json("reload.json")[prefix]) as! [String: [String: Any]])
        let state = State()
        self.state = state
        let script: FakeUpstream.Script = { r in
            if kind == .vllm { return Self.vllm(r, state, recorded.turns, recorded.reload) }
            return await Self.sglang(r, state, recorded.turns, recorded.reload)
        }
        server = try await FakeUpstream(script: script, routes: ["/**"])
    }

    func stop() async { await server.stop() }

    static func error(_ status: Int, _ message: String) -> FakeUpstream.Reply {
        let e: [String: Any] = ["message": message, "type": "BadRequestError", "param": NSNull(), "code": status]
        return .json(status: status, body: text(["error": e]))
    }

    static func vllm(
        _ r: FakeUpstream.Received, _ s: State, _ turns: [[Int]: Any], _ reload: [String: [String: Any]]
    ) -> FakeUpstream.Reply {
        let body = r.json ?? [:]
        switch (r.method, r.path) {
        case ("GET", "/health"): return .json(status: 200, body: "")
        case ("GET", "/v1/models"):
            // The documented listing: the base model, then each adapter with its root and parent.
            var list = reload["models"]!["response"] as! [String: Any]
            let doc = list["data"] as! [[String: Any]]
            var base = doc[0]
            base["id"] = "agent"
            var data = [base]
            for (name, path) in s.lock.withLock({ s.adapters }).sorted(by: { $0.key < $1.key }) {
                var a = doc[1]
                a["id"] = name
                a["root"] = path
                a["parent"] = "agent"
                data.append(a)
            }
            list["data"] = data
            return .json(status: 200, body: text(list))
        case ("POST", "/v1/load_lora_adapter"):
            let name = body["lora_name"] as? String ?? ""
            let path = body["lora_path"] as? String ?? ""
            if path.contains("missing") {
                let f = reload["load_failed"]!
                var e = (f["response"] as! [String: Any])["error"] as! [String: Any]
                e["message"] = "Loading lora \(name) failed: No adapter found for \(path)"
                return .json(status: f["status"] as! Int, body: text(["error": e]))
            }
            if s.lock.withLock({ s.adapters[name] != nil }) { return error(400, "The lora adapter '\(name)' has already been loaded.") }
            s.lock.withLock { s.adapters[name] = path }
            s.note("load \(name) \(path)")
            let f = reload["load"]!
            let reply = (f["response"] as! String).replacingOccurrences(of: "sql_adapter", with: name)
            return .json(status: 200, body: reply, headers: [("content-type", f["content_type"] as! String)])
        case ("POST", "/v1/unload_lora_adapter"):
            let name = body["lora_name"] as? String ?? ""
            s.lock.withLock { _ = s.adapters.removeValue(forKey: name) }
            s.note("unload \(name)")
            return .json(
                status: 200, body: (reload["unload"]!["response"] as! String).replacingOccurrences(of: "sql_adapter", with: name),
                headers: [("content-type", "text/plain")])
        case ("POST", "/v1/completions"):
            let model = body["model"] as? String ?? ""
            guard model == "agent" || s.lock.withLock({ s.adapters[model] != nil }) else {
                return error(404, "The model `\(model)` does not exist.")
            }
            let prompt = body["prompt"] as? [Int] ?? []
            if body["max_tokens"] as? Int == 1 {
                s.note("smoke model=\(model)")
                let logprobs: [String: Any] = [
                    "token_logprobs": [-0.25], "tokens": ["<"], "text_offset": [0], "top_logprobs": [["<": -0.25]],
                ]
                let choice: [String: Any] = [
                    "index": 0, "text": "<", "finish_reason": "length", "token_ids": [60], "logprobs": logprobs,
                ]
                let reply: [String: Any] = ["id": "cmpl-smoke", "object": "text_completion", "model": model, "choices": [choice]]
                return .json(status: 200, body: text(reply))
            }
            guard let reply = turns[prompt] else { return error(400, "no recorded turn for this prompt") }
            s.note("generate model=\(model)")
            return .json(status: 200, body: text(reply))
        default:
            return error(404, "\(r.method) \(r.path) is not a vLLM route here")
        }
    }

    static func sglang(
        _ r: FakeUpstream.Received, _ s: State, _ turns: [[Int]: Any], _ reload: [String: [String: Any]]
    ) async -> FakeUpstream.Reply {
        let body = r.json ?? [:]
        switch (r.method, r.path) {
        case ("GET", "/health"): return .json(status: 200, body: "")
        case ("GET", "/get_model_info"):
            var info = reload["model_info"]!["response"] as! [String: Any]
            s.lock.withLock {
                info["model_path"] = s.modelPath
                info["tokenizer_path"] = "/engine/models/base"
                info["weight_version"] = s.weightVersion
            }
            return .json(status: 200, body: text(info))
        case ("POST", "/update_weights_from_disk"):
            let path = body["model_path"] as? String ?? ""
            if path.contains("missing") {
                let f = reload["update_failed"]!
                var reply = f["response"] as! [String: Any]
                reply["message"] = "Failed to get weights iterator: \(path) (repository not found)."
                return .json(status: f["status"] as! Int, body: text(reply))
            }
            s.lock.withLock {
                s.modelPath = path
                if let v = body["weight_version"] as? String { s.weightVersion = v }
            }
            s.note("update \(path)")
            return .json(status: 200, body: text(reload["update"]!["response"]!))
        case ("POST", "/generate"):
            let (delay, weights) = s.lock.withLock { (s.generateDelay, s.modelPath) }
            let sampling = body["sampling_params"] as? [String: Any] ?? [:]
            if sampling["max_new_tokens"] as? Int == 1 {
                s.note("smoke weights=\(weights)")
                let finish: [String: Any] = ["type": "length", "length": 1]
                let meta: [String: Any] = ["finish_reason": finish, "output_token_logprobs": [[-0.25, 60, NSNull()] as [Any]]]
                let reply: [String: Any] = ["text": "<", "output_ids": [60], "meta_info": meta]
                return .json(status: 200, body: text(reply))
            }
            guard let reply = turns[body["input_ids"] as? [Int] ?? []] else { return error(400, "no recorded turn for these input_ids") }
            if delay > .zero { try? await Task.sleep(for: delay) }
            s.note("generate weights=\(weights)")
            return .json(status: 200, body: text(reply))
        default:
            return error(404, "\(r.method) \(r.path) is not an SGLang route here")
        }
    }
}

final class InPlaceReloadTests: XCTestCase {
    static let token = "admin-in-place-token"

    /// A models directory: `base` (the tiny policy), and checkpoints with the same tokenizer and
    /// config but their own weights file (`weightsFile`: "adapter_model.safetensors" for a vLLM LoRA
    /// adapter, "model.safetensors" for SGLang), so each has its own version id.
    static func models(_ names: [String], weightsFile: String) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-inplace-\(UUID().uuidString)")
        let tiny = CollaborationTests.fixtures.appendingPathComponent("models/promptr1-tiny")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: tiny, to: dir.appendingPathComponent("base"))
        for name in names {
            let d = dir.appendingPathComponent(name)
            try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
            for f in try FileManager.default.contentsOfDirectory(atPath: tiny.path) where !f.hasSuffix(".safetensors") {
                try FileManager.default.copyItem(at: tiny.appendingPathComponent(f), to: d.appendingPathComponent(f))
            }
            try Data("weights of \(name)".utf8).write(to: d.appendingPathComponent(weightsFile))
        }
        return dir
    }

    static func version(_ dir: URL) throws -> String {
        CheckpointHash.versionID(sha256: try CheckpointHash.weightsSHA256(directory: dir))
    }

    static func start(
        _ engine: FakeEngine, kind: RemotePolicyBackend.Kind, models: URL, log: String? = nil
    ) async throws -> Harness {
        let cases = try CollaborationTests.cases()
        return try await Harness.start(script: CollaborationTests.script(cases), environment: ["GATEWAY_ADMIN_TOKEN": token]) { c in
            c.policy.path = models.appendingPathComponent("base").path
            c.policy.temperature = 0
            c.admin.modelsDir = models.path
            c.policy.backend = RemotePolicyBackend(kind: kind, baseURL: engine.baseURL, model: kind == .vllm ? "agent" : nil)
            if let log { c.log.path = log }
        }
    }

    /// Runs the first reference episode; returns its id after checking the answer.
    static func episode(_ h: Harness, file: StaticString = #filePath, line: UInt = #line) async throws -> String {
        let c = try CollaborationTests.cases()[0]
        let body = try JSONSerialization.data(withJSONObject: [
            "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]],
        ])
        let reply = try await h.chat(String(decoding: body, as: UTF8.self))
        XCTAssertEqual(reply.status, 200, reply.body, file: file, line: line)
        let message = ((reply.json?["choices"] as? [[String: Any]])?.first)?["message"] as? [String: Any]
        XCTAssertEqual(message?["content"] as? String, c.final_answer, file: file, line: line)
        return try XCTUnwrap(reply.episodeID, file: file, line: line)
    }

    static func versions(_ h: Harness, _ ids: [String]) throws -> [String?] {
        let db = try TrafficDatabase(path: h.dbPath)
        return try ids.map { try db.episode(id: $0)?.policyVersion }
    }

    static func received(_ engine: FakeEngine, since n: Int) -> [FakeUpstream.Received] { Array(engine.server.received.dropFirst(n)) }

    func testVLLMLoadsEachVersionAsALoRAAdapterAndRollsBackByName() async throws {
        let engine = try await FakeEngine(.vllm)
        let models = try Self.models(["step1", "step2-missing"], weightsFile: "adapter_model.safetensors")
        defer { try? FileManager.default.removeItem(at: models) }
        let h = try await Self.start(engine, kind: .vllm, models: models)
        let vBase = try Self.version(models.appendingPathComponent("base"))
        let vStep1 = try Self.version(models.appendingPathComponent("step1"))
        var ids = [try await Self.episode(h)]

        // The body is checked before anything is loaded.
        for (body, param) in [
            (#"{"path": "step1", "reload": "sideways"}"#, "reload"),
            (#"{"path": "step1", "reload": "in_place", "backend": {"kind": "vllm", "base_url": "http://127.0.0.1:1"}}"#, "backend"),
            (#"{"path": "step1", "engine_path": "/elsewhere/step1"}"#, "engine_path"),
        ] {
            let refused = try await h.admin(.POST, "/admin/policy", body: body, token: Self.token)
            XCTAssertEqual(refused.status, 400, refused.body)
            XCTAssertEqual(refused.error?["param"] as? String, param, refused.body)
        }

        // In place: the documented load call, then the model list and a smoke generation naming it.
        var seen = engine.server.received.count
        let reloaded = try await h.admin(.POST, "/admin/policy", body: #"{"path": "step1", "reload": "in_place"}"#, token: Self.token)
        XCTAssertEqual(reloaded.status, 200, reloaded.body)
        let adapter = "policy-" + vStep1
        let calls = Self.received(engine, since: seen)
        XCTAssertEqual(calls.map { "\($0.method) \($0.path)" }, ["GET /v1/models", "POST /v1/load_lora_adapter", "POST /v1/completions"])
        XCTAssertEqual(
            NSDictionary(dictionary: calls[1].json ?? [:]),
            NSDictionary(dictionary: [
                "lora_name": adapter, "lora_path": models.appendingPathComponent("step1").resolvingSymlinksInPath().path,
            ]))
        XCTAssertEqual(calls[2].json?["model"] as? String, adapter, "the smoke generation names the new adapter")
        XCTAssertEqual(calls[2].json?["max_tokens"] as? Int, 1)
        let current = reloaded.json?["current"] as? [String: Any]
        XCTAssertEqual(current?["id"] as? String, vStep1)
        XCTAssertEqual(current?["reload"] as? String, "in_place")
        XCTAssertEqual((current?["backend"] as? [String: Any])?["model"] as? String, adapter)
        XCTAssertEqual((reloaded.json?["previous"] as? [String: Any])?["id"] as? String, vBase)
        ids.append(try await Self.episode(h))

        // The engine refuses the next one (no adapter at that path): 422, step1 still serves.
        seen = engine.server.received.count
        let refused = try await h.admin(
            .POST, "/admin/policy", body: #"{"path": "step2-missing", "reload": "in_place"}"#, token: Self.token)
        assertOpenAIError(refused, status: 422)
        XCTAssertEqual(refused.error?["code"] as? String, "reload_refused")
        XCTAssertTrue((refused.error?["message"] as? String ?? "").contains("No adapter found"), refused.body)
        XCTAssertEqual(Self.received(engine, since: seen).map(\.path), ["/v1/models", "/v1/load_lora_adapter"])
        XCTAssertEqual(h.gateway.policies.current?.version, vStep1)
        ids.append(try await Self.episode(h))

        // Rollback: the base model is still listed, so nothing is loaded; requests name it again.
        seen = engine.server.received.count
        let back = try await h.admin(.POST, "/admin/policy/rollback", token: Self.token)
        XCTAssertEqual(back.status, 200, back.body)
        let rollbackCalls = Self.received(engine, since: seen)
        XCTAssertEqual(rollbackCalls.map(\.path), ["/v1/models", "/v1/completions"])
        XCTAssertEqual(rollbackCalls.last?.json?["model"] as? String, "agent")
        XCTAssertEqual(h.gateway.policies.current?.version, vBase)
        ids.append(try await Self.episode(h))

        // In place again onto step1: its adapter is still loaded, so it is named, not loaded twice.
        seen = engine.server.received.count
        let again = try await h.admin(.POST, "/admin/policy", body: #"{"path": "step1", "reload": "in_place"}"#, token: Self.token)
        XCTAssertEqual(again.status, 200, again.body)
        XCTAssertEqual(Self.received(engine, since: seen).map(\.path), ["/v1/models", "/v1/completions"])
        ids.append(try await Self.episode(h))
        try await h.stop()
        await engine.stop()

        XCTAssertEqual(try Self.versions(h, ids), [vBase, vStep1, vStep1, vBase, vStep1])
        XCTAssertEqual(
            engine.events.filter { $0.hasPrefix("generate") || $0.hasPrefix("load") },
            [
                "generate model=agent", "generate model=agent",
                "load \(adapter) \(models.appendingPathComponent("step1").resolvingSymlinksInPath().path)",
                "generate model=\(adapter)", "generate model=\(adapter)", "generate model=\(adapter)", "generate model=\(adapter)",
                "generate model=agent", "generate model=agent", "generate model=\(adapter)", "generate model=\(adapter)",
            ])
    }

    func testSGLangUpdatesWeightsFromDiskAfterTheEpisodesInFlightAndRollsBack() async throws {
        let engine = try await FakeEngine(.sglang)
        let models = try Self.models(["step1", "step2-missing"], weightsFile: "model.safetensors")
        defer { try? FileManager.default.removeItem(at: models) }
        let h = try await Self.start(engine, kind: .sglang, models: models)
        let vBase = try Self.version(models.appendingPathComponent("base"))
        let vStep1 = try Self.version(models.appendingPathComponent("step1"))
        var ids = [try await Self.episode(h)]

        // An episode in flight (slow turns) when the reload is posted, and one that starts during it.
        engine.setDelay(.milliseconds(800))
        async let inFlight = Self.episode(h)
        while !engine.events.contains(where: { $0 == "generate weights=/engine/models/base" }) || engine.events.count < 4 {
            try await Task.sleep(for: .milliseconds(20))
        }
        let seen = engine.server.received.count
        async let reloaded = h.admin(
            .POST, "/admin/policy", body: #"{"path": "step1", "reload": "in_place", "engine_path": "/engine/models/step1"}"#,
            token: Self.token)
        try await Task.sleep(for: .milliseconds(300))
        async let heldBack = Self.episode(h)
        let reply = try await reloaded
        XCTAssertEqual(reply.status, 200, reply.body)
        ids.append(try await inFlight)
        ids.append(try await heldBack)
        engine.setDelay(.zero)
        let update = try XCTUnwrap(Self.received(engine, since: seen).first { $0.path == "/update_weights_from_disk" })
        XCTAssertEqual(
            NSDictionary(dictionary: update.json ?? [:]),
            NSDictionary(dictionary: ["model_path": "/engine/models/step1", "weight_version": vStep1]))
        // The engine was reloaded only after the episode in flight had finished, and the held-back
        // one ran wholly on the new weights.
        let events = engine.events.filter { !$0.hasPrefix("smoke") }
        XCTAssertEqual(
            events,
            [
                "generate weights=/engine/models/base", "generate weights=/engine/models/base",
                "generate weights=/engine/models/base", "generate weights=/engine/models/base",
                "update /engine/models/step1",
                "generate weights=/engine/models/step1", "generate weights=/engine/models/step1",
            ])
        XCTAssertEqual(
            engine.events.filter { $0.hasPrefix("smoke") }, ["smoke weights=/engine/models/base", "smoke weights=/engine/models/step1"])
        let current = reply.json?["current"] as? [String: Any]
        XCTAssertEqual(current?["id"] as? String, vStep1)
        XCTAssertEqual(current?["engine_path"] as? String, "/engine/models/step1")

        // Refused by the engine (documented failure body, HTTP 400): 422, step1 still serves.
        let refused = try await h.admin(
            .POST, "/admin/policy",
            body: #"{"path": "step2-missing", "reload": "in_place", "engine_path": "/engine/models/step2-missing"}"#,
            token: Self.token)
        assertOpenAIError(refused, status: 422)
        XCTAssertEqual(refused.error?["code"] as? String, "reload_refused")
        XCTAssertTrue((refused.error?["message"] as? String ?? "").contains("Failed to get weights iterator"), refused.body)
        XCTAssertEqual(h.gateway.policies.current?.version, vStep1)
        ids.append(try await Self.episode(h))

        // Rollback reloads the weights the engine was started with (its reported model_path).
        let n = engine.server.received.count
        let back = try await h.admin(.POST, "/admin/policy/rollback", token: Self.token)
        XCTAssertEqual(back.status, 200, back.body)
        let rollback = try XCTUnwrap(Self.received(engine, since: n).first { $0.path == "/update_weights_from_disk" })
        XCTAssertEqual(
            NSDictionary(dictionary: rollback.json ?? [:]),
            NSDictionary(dictionary: ["model_path": "/engine/models/base", "weight_version": vBase]))
        XCTAssertEqual(h.gateway.policies.current?.version, vBase)
        ids.append(try await Self.episode(h))
        try await h.stop()
        await engine.stop()

        XCTAssertEqual(try Self.versions(h, ids), [vBase, vBase, vStep1, vStep1, vBase])
        XCTAssertEqual(engine.events.filter { $0.hasPrefix("update") }, ["update /engine/models/step1", "update /engine/models/base"])
    }

    /// The embedded engine has no in-place reload (its blue/green load is the way); llama.cpp's
    /// refusal is shown against the real llama-server in RemotePolicyGatewayTests.
    func testInPlaceIsRefusedForTheEmbeddedEngine() async throws {
        let fixtures = CollaborationTests.fixtures.appendingPathComponent("models")
        let h = try await Harness.start(environment: ["GATEWAY_ADMIN_TOKEN": Self.token]) { c in
            c.policy.path = fixtures.appendingPathComponent("promptr1-tiny").path
            c.admin.modelsDir = fixtures.path
        }
        let before = h.gateway.policies.current?.version
        let r = try await h.admin(.POST, "/admin/policy", body: #"{"path": "promptr1-tiny", "reload": "in_place"}"#, token: Self.token)
        let e = assertOpenAIError(r, status: 400)
        XCTAssertEqual(e["code"] as? String, "reload_unsupported")
        XCTAssertEqual(e["param"] as? String, "reload")
        XCTAssertTrue((e["message"] as? String ?? "").contains("blue_green"), r.body)
        XCTAssertEqual(h.gateway.policies.current?.version, before)
        XCTAssertEqual(h.gateway.policies.history.count, 0, "nothing was loaded")
        try await h.stop()
    }

    /// A replica on the same log and the same engine follows an in-place reload without loading
    /// any weights into its own memory: it connects the engine to the recorded folder and names
    /// the adapter the engine lists for it.
    func testReplicaWithARemoteBackendFollowsWithoutLoadingWeights() async throws {
        let engine = try await FakeEngine(.vllm)
        let models = try Self.models(["step1"], weightsFile: "adapter_model.safetensors")
        defer { try? FileManager.default.removeItem(at: models) }
        let logDir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-inplace-log-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: logDir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: logDir) }
        let log = logDir.appendingPathComponent("shared.sqlite").path
        let a = try await Self.start(engine, kind: .vllm, models: models, log: log)
        let b = try await Self.start(engine, kind: .vllm, models: models, log: log)
        let vStep1 = try Self.version(models.appendingPathComponent("step1"))
        let reloaded = try await a.admin(.POST, "/admin/policy", body: #"{"path": "step1", "reload": "in_place"}"#, token: Self.token)
        XCTAssertEqual(reloaded.status, 200, reloaded.body)
        // B follows at its next check (the poll, or this one).
        let deadline = Date().addingTimeInterval(20)
        while b.gateway.policies.current?.version != vStep1 && Date() < deadline {
            await b.gateway.policySync.check()
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertNil(b.gateway.policySync.status.error)
        let followed = try XCTUnwrap(b.gateway.policies.current)
        XCTAssertEqual(followed.version, vStep1)
        XCTAssertNil(followed.embedded, "no weights in the replica's memory")
        XCTAssertEqual(followed.remote?.backend.model, "policy-" + vStep1)
        let id = try await Self.episode(b)
        XCTAssertEqual(engine.events.filter { $0.hasPrefix("load") }.count, 1, "the replica loads nothing on the engine either")
        XCTAssertEqual(Array(engine.events.suffix(2)), ["generate model=policy-\(vStep1)", "generate model=policy-\(vStep1)"])
        try await a.stop()
        try await b.stop()
        await engine.stop()
        XCTAssertEqual(try TrafficDatabase(path: log).episode(id: id)?.policyVersion, vStep1)
    }
}
