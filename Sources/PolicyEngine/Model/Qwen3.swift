/// Qwen3: explicit head_dim (may differ from hidden/heads), per-head RMSNorm on q and k (q_norm, k_norm)
/// applied before RoPE, `attention_bias` (default false) applies to q, k, v and o.
enum Qwen3Architecture: ModelArchitecture {
    static func traits(_ config: ModelConfig) -> ArchitectureTraits {
        ArchitectureTraits(qkvBias: config.attentionBias, outputBias: config.attentionBias, qkNorm: true)
    }
}
