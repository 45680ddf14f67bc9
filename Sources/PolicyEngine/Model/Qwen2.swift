/// Qwen2 / Qwen2.5: q, k, v projections always carry a bias (HF hard-codes bias=True; `attention_bias`
/// defaults to true for this family), o_proj has none, no q/k norms. RoPE default, usually tied embeddings
/// for the small sizes.
enum Qwen2Architecture: ModelArchitecture {
    static func traits(_ config: ModelConfig) -> ArchitectureTraits {
        ArchitectureTraits(qkvBias: config.attentionBias, outputBias: false, qkNorm: false)
    }
}
