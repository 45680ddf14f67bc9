/// What differs between the supported model families, beyond the shared Llama-style block
/// (RMSNorm -> attention with RoPE -> residual -> RMSNorm -> SwiGLU MLP -> residual).
public struct ArchitectureTraits: Sendable, Equatable {
    /// q_proj / k_proj / v_proj have biases.
    public var qkvBias: Bool
    /// o_proj has a bias.
    public var outputBias: Bool
    /// Per-head RMSNorm on queries and keys before RoPE (q_norm / k_norm, weight of size head_dim).
    public var qkNorm: Bool
}

/// One file per model family, each describing its traits (see Qwen2.swift, Qwen3.swift, Llama.swift).
protocol ModelArchitecture {
    static func traits(_ config: ModelConfig) -> ArchitectureTraits
}

extension ModelConfig {
    public var traits: ArchitectureTraits {
        switch modelType {
        case .qwen2: return Qwen2Architecture.traits(self)
        case .qwen3: return Qwen3Architecture.traits(self)
        case .llama: return LlamaArchitecture.traits(self)
        }
    }
}
