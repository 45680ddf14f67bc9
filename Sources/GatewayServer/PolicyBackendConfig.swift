// `policy.backend`: where the policy runs. `{"kind": "embedded"}` (the default) is the gateway's
// own engine; `{"kind": "vllm" | "sglang" | "llamacpp", "base_url": ..., "api_key_env": ...,
// "model": ...}` an inference engine (module RemotePolicy). The checkpoint folder stays
// required either way: its tokenizer, chat template and weights' identity are the gateway's.

import Foundation
import NIOPosix
import OpenAIWire
import PolicyEngine
import RemotePolicy

extension GatewayConfig {
    /// Reads `policy.backend` (an absent object is the embedded engine). Used for the config file
    /// and for the `backend` object of `POST /admin/policy`.
    static func policyBackend(_ o: inout ConfigObject) throws(ConfigError) -> RemotePolicyBackend? {
        let kind = try o.oneOf("kind", default: PolicyBackendKind.embedded)
        let remote: RemotePolicyBackend.Kind
        switch kind {
        case .embedded:
            try o.finish()
            return nil
        case .vllm: remote = .vllm
        case .sglang: remote = .sglang
        case .llamacpp: remote = .llamacpp
        }
        let base = try o.requiredString("base_url")
        guard let url = URL(string: base), url.scheme == "http" || url.scheme == "https", url.host != nil else {
            throw ConfigError(path: o.sub("base_url"), problem: "expected an http(s) URL, got \"\(base)\"")
        }
        let keyEnv = try o.string("api_key_env")
        if let keyEnv, !Self.isEnvName(keyEnv) {
            throw ConfigError(path: o.sub("api_key_env"), problem: "must be the NAME of an environment variable, not a key")
        }
        var b = RemotePolicyBackend(kind: remote, baseURL: base, apiKeyEnv: keyEnv, model: try o.string("model"))
        b.timeoutSeconds = try o.double("timeout_seconds", default: b.timeoutSeconds, range: 0.1...3600)
        b.circuitFailureThreshold = try o.int("circuit_failure_threshold", default: b.circuitFailureThreshold, range: 0...1000)
        b.circuitCooldownSeconds = try o.double("circuit_cooldown_seconds", default: b.circuitCooldownSeconds, range: 0.1...3600)
        try o.finish()
        return b
    }

    /// `gateway serve --policy-backend URL --policy-backend-kind KIND` (kind `embedded` takes no
    /// URL; the other kinds need one).
    public mutating func overridePolicyBackend(url: String?, kind: String?) throws(ConfigError) {
        guard url != nil || kind != nil else { return }
        var dict: [String: JSONValue] = [:]
        let k = kind ?? policy.backend?.kind.rawValue ?? PolicyBackendKind.llamacpp.rawValue
        dict["kind"] = .string(k)
        if k != PolicyBackendKind.embedded.rawValue {
            if let url {
                dict["base_url"] = .string(url)
            } else if let existing = policy.backend {
                dict["base_url"] = .string(existing.baseURL)
            }
            if let existing = policy.backend {
                if let e = existing.apiKeyEnv { dict["api_key_env"] = .string(e) }
                if let m = existing.model { dict["model"] = .string(m) }
            }
        } else if let url {
            dict["base_url"] = .string(url)  // refused below: the embedded engine takes no URL
        }
        var o = try ConfigObject(.object(dict), path: "--policy-backend")
        policy.backend = try Self.policyBackend(&o)
    }
}

extension LoadedPolicy {
    /// A policy on an inference engine: the checkpoint folder's tokenizer and identity, the
    /// engine health-checked and smoke-tested (`RemotePolicy.connect`).
    public static func connect(
        path: String, backend: RemotePolicyBackend,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> LoadedPolicy {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw LoadError.notADirectory(path)
        }
        let remote = try await RemotePolicy.connect(directory: URL(fileURLWithPath: path), backend: backend, environment: environment)
        return LoadedPolicy(remote: remote, path: path)
    }

    /// Loads the configured policy: the embedded engine, or the configured backend.
    static func load(
        path: String, config: GatewayConfig.Policy, prefillInBackground: Bool = false,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) async throws -> LoadedPolicy {
        if let backend = config.backend { return try await connect(path: path, backend: backend, environment: environment) }
        let weights = config.weights
        let prefixCacheMB = config.prefixCacheMB
        let speculation = config.promptLookup
        return try await NIOThreadPool.singleton.runIfActive {
            try LoadedPolicy.load(
                path: path, weights: weights, prefixCacheMB: prefixCacheMB, speculation: speculation,
                prefillInBackground: prefillInBackground)
        }
    }
}

extension Gateway {
    /// With `policy.backend` set, connects the configured policy before serving; a start-up
    /// failure (engine down, smoke generation failed) stops the gateway with the reason.
    func connectRemotePolicy() async throws {
        let config = state.config
        guard let path = config.policy.path, let backend = config.policy.backend, policies.current == nil else { return }
        let loaded = try await LoadedPolicy.connect(path: path, backend: backend)
        try await state.database.insertPolicyVersion(loaded.record)
        policies.set(loaded)
        state.logger.notice(
            "policy connected",
            metadata: [
                "path": "\(path)", "version": "\(loaded.version)",
                "backend": "\(backend.kind.rawValue)", "base_url": "\(backend.baseURL)",
            ])
    }
}

extension AdminRoutes {
    /// What `POST /admin/policy` asks for.
    struct SwapRequest: Equatable {
        var path: String
        /// The engine of the new version (blue/green); nil: the embedded engine.
        var backend: RemotePolicyBackend?
        var reload: PolicyReloadMode
        /// In place: the checkpoint's path as the engine sees it (nil: the gateway's own path).
        var enginePath: String?
    }

    /// `POST /admin/policy` body: `{"path": ..., "backend": {...}, "reload": "blue_green" |
    /// "in_place", "engine_path": ...}`. Blue/green (the default): without `backend` the configured
    /// `policy.backend` is used; `{"kind": "embedded"}` loads into the gateway's own engine. In
    /// place: the serving engine reloads, so `backend` is refused, and `engine_path` (only there)
    /// names the checkpoint on the engine's side. Unknown keys and bad values are 400s naming the key.
    static func parseSwap(_ body: Data, current: RemotePolicyBackend?) throws -> SwapRequest {
        let usage =
            "Send {\"path\": \"<checkpoint folder inside the models directory>\", \"backend\": {\"kind\": ..., \"base_url\": ...}} (blue/green) or {\"path\": ..., \"reload\": \"in_place\", \"engine_path\": ...}."
        guard let v = try? JSONDecoder().decode(JSONValue.self, from: body), case .object(let d) = v else {
            throw GatewayError.invalidField("path", usage)
        }
        do {
            var o = try ConfigObject(.object(d), path: "")
            guard let path = try o.string("path") else { throw GatewayError.invalidField("path", usage) }
            let reload = try o.oneOf("reload", default: PolicyReloadMode.blueGreen)
            var backend = current
            if o.dict["backend"] != nil {
                guard reload == .blueGreen else {
                    throw GatewayError.invalidField(
                        "backend",
                        "\"reload\": \"in_place\" reloads the weights of the engine serving now; 'backend' names another engine instance, which is a blue/green switch (\"reload\": \"blue_green\")."
                    )
                }
                var b = try o.object("backend")
                backend = try GatewayConfig.policyBackend(&b)
            }
            let enginePath = try o.string("engine_path")
            if let enginePath {
                guard reload == .inPlace else {
                    throw GatewayError.invalidField(
                        "engine_path",
                        "'engine_path' names the checkpoint for an engine reloading in place; it needs \"reload\": \"in_place\".")
                }
                guard !enginePath.isEmpty, !enginePath.contains("\0") else {
                    throw GatewayError.invalidField("engine_path", "'engine_path' is empty.")
                }
            }
            try o.finish()
            return SwapRequest(path: path, backend: backend, reload: reload, enginePath: enginePath)
        } catch let e as ConfigError {
            throw GatewayError.invalidField(e.path, e.description)
        }
    }
}

extension RemotePolicy {
    /// Prometheus text for the policy engine (appended to `/metrics`): calls, failures, time, tokens,
    /// prefix-cache hits and the circuit breaker of the serving version's engine.
    var metricsText: String {
        let s = stats.snapshot
        let l = "{backend=\"\(backend.kind.rawValue)\"}"
        let state: Int
        switch breaker.state {
        case .closed: state = 0
        case .open: state = 1
        case .halfOpen: state = 2
        }
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: String) {
            out += "# HELP gateway_policy_backend_\(name) \(help)\n# TYPE gateway_policy_backend_\(name) \(type)\n"
            out += "gateway_policy_backend_\(name)\(l) \(value)\n"
        }
        metric("requests_total", "counter", "Generation requests sent to the policy engine", "\(s.requests)")
        metric(
            "failures_total", "counter",
            "Policy engine requests that failed (unreachable, timeout, 5xx, malformed); turns refused by the open circuit are not sent",
            "\(s.failures)")
        metric("call_seconds_total", "counter", "Wall time of policy engine calls", "\(s.callSeconds)")
        metric("engine_seconds_total", "counter", "Time the policy engine reports for its own work", "\(s.engineSeconds)")
        metric(
            "gateway_seconds_total", "counter",
            "The gateway's own time in policy engine turns (request JSON, response parsing, turn cut, injections)", "\(s.gatewaySeconds)")
        metric("generated_tokens_total", "counter", "Policy tokens generated by the engine", "\(s.generatedTokens)")
        metric("prompt_tokens_total", "counter", "Context tokens sent to the engine", "\(s.promptTokensSent)")
        metric("cached_prompt_tokens_total", "counter", "Context tokens the engine took from its prefix cache", "\(s.cachedPromptTokens)")
        metric("circuit_state", "gauge", "Policy engine circuit breaker: 0 closed, 1 open, 2 half-open", "\(state)")
        return out
    }
}
