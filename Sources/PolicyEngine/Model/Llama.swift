/// Llama 2/3: no biases unless `attention_bias` (then q, k, v and o), RoPE optionally with llama3
/// frequency scaling (see RotaryEmbedding), usually untied lm_head.
enum LlamaArchitecture: ModelArchitecture {
    static func traits(_ config: ModelConfig) -> ArchitectureTraits {
        ArchitectureTraits(qkvBias: config.attentionBias, outputBias: config.attentionBias, qkNorm: false)
    }
}
