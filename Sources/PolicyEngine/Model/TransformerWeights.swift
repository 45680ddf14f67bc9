import Foundation

/// Weights of one decoder block. Shapes follow PyTorch's nn.Linear: weight [out, in].
struct LayerWeights: @unchecked Sendable {  // FloatTensor is immutable
    let inputNorm: FloatTensor  // [H]
    let qProj: FloatTensor  // [qDim, H]
    let kProj: FloatTensor  // [kvDim, H]
    let vProj: FloatTensor  // [kvDim, H]
    let qBias: FloatTensor?  // [qDim]
    let kBias: FloatTensor?  // [kvDim]
    let vBias: FloatTensor?  // [kvDim]
    let oProj: FloatTensor  // [H, qDim]
    let oBias: FloatTensor?  // [H]
    let qNorm: FloatTensor?  // [headDim]
    let kNorm: FloatTensor?  // [headDim]
    let postNorm: FloatTensor  // [H]
    let gateProj: FloatTensor  // [I, H]
    let upProj: FloatTensor  // [I, H]
    let downProj: FloatTensor  // [H, I]
}

/// All weights of a model, loaded from a safetensors checkpoint with every shape checked.
struct TransformerWeights: @unchecked Sendable {
    let embed: FloatTensor  // [V, H]
    let layers: [LayerWeights]
    let finalNorm: FloatTensor  // [H]
    let lmHead: FloatTensor  // [V, H] (== embed when tied)
    /// Keeps the mappings alive for tensors used in place.
    let checkpoint: SafetensorsCheckpoint

    init(config c: ModelConfig, checkpoint: SafetensorsCheckpoint) throws {
        let t = c.traits
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let V = c.vocabSize
        let D = c.headDim
        func load(_ name: String, _ shape: [Int]) throws -> FloatTensor { try checkpoint.floatTensor(name, shape: shape) }
        embed = try load("model.embed_tokens.weight", [V, H])
        var layers: [LayerWeights] = []
        for l in 0..<c.numHiddenLayers {
            let p = "model.layers.\(l)."
            layers.append(
                LayerWeights(
                    inputNorm: try load(p + "input_layernorm.weight", [H]),
                    qProj: try load(p + "self_attn.q_proj.weight", [Q, H]),
                    kProj: try load(p + "self_attn.k_proj.weight", [KV, H]),
                    vProj: try load(p + "self_attn.v_proj.weight", [KV, H]),
                    qBias: t.qkvBias ? try load(p + "self_attn.q_proj.bias", [Q]) : nil,
                    kBias: t.qkvBias ? try load(p + "self_attn.k_proj.bias", [KV]) : nil,
                    vBias: t.qkvBias ? try load(p + "self_attn.v_proj.bias", [KV]) : nil,
                    oProj: try load(p + "self_attn.o_proj.weight", [H, Q]),
                    oBias: t.outputBias ? try load(p + "self_attn.o_proj.bias", [H]) : nil,
                    qNorm: t.qkNorm ? try load(p + "self_attn.q_norm.weight", [D]) : nil,
                    kNorm: t.qkNorm ? try load(p + "self_attn.k_norm.weight", [D]) : nil,
                    postNorm: try load(p + "post_attention_layernorm.weight", [H]),
                    gateProj: try load(p + "mlp.gate_proj.weight", [I, H]),
                    upProj: try load(p + "mlp.up_proj.weight", [I, H]),
                    downProj: try load(p + "mlp.down_proj.weight", [H, I])))
        }
        self.layers = layers
        finalNorm = try load("model.norm.weight", [H])
        lmHead = c.tieWordEmbeddings ? embed : try load("lm_head.weight", [V, H])
        self.checkpoint = checkpoint
    }

    /// Fraction of weight bytes used in place from the file mapping (1.0 for an aligned F32 checkpoint).
    var mappedFraction: Double {
        var all: [FloatTensor] = [embed, finalNorm]
        if lmHead !== embed { all.append(lmHead) }
        for l in layers {
            all += [l.inputNorm, l.qProj, l.kProj, l.vProj, l.oProj, l.postNorm, l.gateProj, l.upProj, l.downProj]
            all += [l.qBias, l.kBias, l.vBias, l.oBias, l.qNorm, l.kNorm].compactMap { $0 }
        }
        let total = all.reduce(0) { $0 + $1.count }
        let mapped = all.filter(\.isMapped).reduce(0) { $0 + $1.count }
        return total == 0 ? 0 : Double(mapped) / Double(total)
    }

    var parameterCount: Int {
        var n = embed.count + finalNorm.count + (lmHead === embed ? 0 : lmHead.count)
        for l in layers {
            n += l.inputNorm.count + l.qProj.count + l.kProj.count + l.vProj.count + l.oProj.count
            n += l.postNorm.count + l.gateProj.count + l.upProj.count + l.downProj.count
            n += [l.qBias, l.kBias, l.vBias, l.oBias, l.qNorm, l.kNorm].compactMap { $0?.count }.reduce(0, +)
        }
        return n
    }
}
