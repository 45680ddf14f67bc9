import Foundation

/// Writes a checkpoint directory (config.json + model.safetensors) with random weights for a given
/// architecture: used by tests and benchmarks that need a realistic shape but no trained model.
public enum SyntheticCheckpoint {
    /// The tensor names and shapes a config expects, in file order.
    public static func tensorShapes(for c: ModelConfig) -> [(name: String, shape: [Int])] {
        let t = c.traits
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let V = c.vocabSize
        let D = c.headDim
        var e: [(name: String, shape: [Int])] = [("model.embed_tokens.weight", [V, H])]
        for l in 0..<c.numHiddenLayers {
            let p = "model.layers.\(l)."
            e.append((p + "input_layernorm.weight", [H]))
            e.append((p + "self_attn.q_proj.weight", [Q, H]))
            e.append((p + "self_attn.k_proj.weight", [KV, H]))
            e.append((p + "self_attn.v_proj.weight", [KV, H]))
            if t.qkvBias {
                e.append((p + "self_attn.q_proj.bias", [Q]))
                e.append((p + "self_attn.k_proj.bias", [KV]))
                e.append((p + "self_attn.v_proj.bias", [KV]))
            }
            e.append((p + "self_attn.o_proj.weight", [H, Q]))
            if t.outputBias { e.append((p + "self_attn.o_proj.bias", [H])) }
            if t.qkNorm {
                e.append((p + "self_attn.q_norm.weight", [D]))
                e.append((p + "self_attn.k_norm.weight", [D]))
            }
            e.append((p + "post_attention_layernorm.weight", [H]))
            e.append((p + "mlp.gate_proj.weight", [I, H]))
            e.append((p + "mlp.up_proj.weight", [I, H]))
            e.append((p + "mlp.down_proj.weight", [H, I]))
        }
        e.append(("model.norm.weight", [H]))
        if !c.tieWordEmbeddings { e.append(("lm_head.weight", [V, H])) }
        return e
    }

    /// Writes `config.json` and `model.safetensors` into `directory` (created if needed). Norm weights are
    /// 1 + 0.1 * noise, everything else uniform noise scaled by 1/sqrt(fan-in).
    public static func write(config: ModelConfig, to directory: URL, seed: UInt64 = 1) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(config).write(to: directory.appendingPathComponent("config.json"))
        let entries = tensorShapes(for: config)
        var rng = Xoshiro256(seed: seed)
        try SafetensorsWriter.write(entries: entries, to: directory.appendingPathComponent("model.safetensors")) { i, buf in
            let (name, shape) = entries[i]
            let isNorm = name.hasSuffix("norm.weight") || name.hasSuffix("layernorm.weight")
            let scale: Float = isNorm ? 0.1 : (name.hasSuffix(".bias") ? 0.1 : 1 / Float(shape.last!).squareRoot())
            for j in 0..<buf.count {
                let u = Float(rng.nextUnit() * 2 - 1) * 1.7320508 * scale  // unit variance * scale
                buf[j] = isNorm ? 1 + u : u
            }
        }
    }
}
