// Where the policy model runs: in the gateway's own engine, or on an inference engine the team
// already serves models with (vLLM, SGLang, llama.cpp's llama-server). Shared by the gateway's
// config, `gateway serve --policy-backend`, the admin swap body and `gateway-bench collab`.

import Foundation
import PromptR1

/// The kinds of policy backend (`policy.backend.kind`).
public enum PolicyBackendKind: String, Sendable, CaseIterable, Codable {
    case embedded
    case vllm
    case sglang
    case llamacpp
}

/// An inference engine serving the policy, as configured under `policy.backend`.
public struct RemotePolicyBackend: Sendable, Equatable, Codable {
    public enum Kind: String, Sendable, Codable, CaseIterable {
        case vllm, sglang, llamacpp
    }

    public var kind: Kind
    /// The engine's root URL, without `/v1` (e.g. `http://127.0.0.1:8000`).
    public var baseURL: String
    /// Name of the environment variable holding the engine's API key (sent as a bearer token).
    public var apiKeyEnv: String?
    /// The served model name (vLLM `--served-model-name`); nil: the engine's only model.
    public var model: String?
    /// Longest wait for one policy turn from the engine.
    public var timeoutSeconds: Double
    /// Consecutive engine failures that open the policy backend's circuit breaker (0: off).
    public var circuitFailureThreshold: Int
    public var circuitCooldownSeconds: Double

    public init(
        kind: Kind, baseURL: String, apiKeyEnv: String? = nil, model: String? = nil,
        timeoutSeconds: Double = 120, circuitFailureThreshold: Int = 5, circuitCooldownSeconds: Double = 10
    ) {
        self.kind = kind
        self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
        self.apiKeyEnv = apiKeyEnv
        self.model = model
        self.timeoutSeconds = timeoutSeconds
        self.circuitFailureThreshold = circuitFailureThreshold
        self.circuitCooldownSeconds = circuitCooldownSeconds
    }

    enum CodingKeys: String, CodingKey {
        case kind, model
        case baseURL = "base_url"
        case apiKeyEnv = "api_key_env"
        case timeoutSeconds = "timeout_seconds"
        case circuitFailureThreshold = "circuit_failure_threshold"
        case circuitCooldownSeconds = "circuit_cooldown_seconds"
    }

    /// The adapter that speaks this engine's documented token-id interface.
    var adapter: any EngineAdapter {
        switch kind {
        case .vllm: return VLLMAdapter()
        case .sglang: return SGLangAdapter()
        case .llamacpp: return LlamaCppAdapter()
        }
    }
}

/// How `POST /admin/policy` brings a checkpoint to serve (`"reload"`).
public enum PolicyReloadMode: String, Sendable, CaseIterable, Codable {
    /// Load it into a new engine (the embedded one, or the engine instance `backend` names, already
    /// serving it), check it, switch atomically; episodes in flight finish on the old one.
    case blueGreen = "blue_green"
    /// Load it into the inference engine that serves now, with the engine's own documented call
    /// (vLLM: a LoRA adapter; SGLang: `/update_weights_from_disk`), check it, switch.
    case inPlace = "in_place"
}
