/// The tensors of a decoder-only checkpoint, named and shaped once. The inference weights
/// (`TransformerWeights`) and the training model (`TrainableModel`) both load from this table, so a family's
/// traits (biases, q/k norms, tied head) and the Hugging Face names live in one place.
///
/// Shapes follow PyTorch's nn.Linear: weight [out, in].
struct TensorSpec: Sendable, Equatable {
    let name: String
    let shape: [Int]
    var count: Int { shape.reduce(1, *) }
}

/// One of the seven projections of a decoder block: its module path ("model.layers.3.self_attn.q_proj"),
/// weight and optional bias.
struct ProjectionSpec: Sendable, Equatable {
    /// The module's short name as LoRA / PEFT target it ("q_proj", ...; see `LoRAConfig.allModules`).
    let module: String
    /// "model.layers.<l>.self_attn.q_proj": weight is path + ".weight", LoRA adapters path + ".lora_A.weight".
    let path: String
    let inDim: Int
    let outDim: Int
    let hasBias: Bool

    var weight: TensorSpec { TensorSpec(name: path + ".weight", shape: [outDim, inDim]) }
    var bias: TensorSpec? { hasBias ? TensorSpec(name: path + ".bias", shape: [outDim]) : nil }
}

/// One decoder block: RMSNorm -> attention (q, k, v, optional q/k norms, RoPE, o) -> residual -> RMSNorm ->
/// SwiGLU MLP (gate, up, down) -> residual.
struct LayerSpec: Sendable, Equatable {
    let index: Int
    let inputNorm: TensorSpec
    let q, k, v, o: ProjectionSpec
    let qNorm, kNorm: TensorSpec?
    let postNorm: TensorSpec
    let gate, up, down: ProjectionSpec

    /// The seven projections in `LoRAConfig.allModules` order.
    var projections: [ProjectionSpec] { [q, k, v, o, gate, up, down] }

    init(config c: ModelConfig, layer l: Int) {
        let t = c.traits
        let p = "model.layers.\(l)."
        let H = c.hiddenSize
        func proj(_ group: String, _ module: String, in i: Int, out o: Int, bias: Bool) -> ProjectionSpec {
            ProjectionSpec(module: module, path: p + group + "." + module, inDim: i, outDim: o, hasBias: bias)
        }
        index = l
        inputNorm = TensorSpec(name: p + "input_layernorm.weight", shape: [H])
        q = proj("self_attn", "q_proj", in: H, out: c.qDim, bias: t.qkvBias)
        k = proj("self_attn", "k_proj", in: H, out: c.kvDim, bias: t.qkvBias)
        v = proj("self_attn", "v_proj", in: H, out: c.kvDim, bias: t.qkvBias)
        o = proj("self_attn", "o_proj", in: c.qDim, out: H, bias: t.outputBias)
        qNorm = t.qkNorm ? TensorSpec(name: p + "self_attn.q_norm.weight", shape: [c.headDim]) : nil
        kNorm = t.qkNorm ? TensorSpec(name: p + "self_attn.k_norm.weight", shape: [c.headDim]) : nil
        postNorm = TensorSpec(name: p + "post_attention_layernorm.weight", shape: [H])
        gate = proj("mlp", "gate_proj", in: H, out: c.intermediateSize, bias: false)
        up = proj("mlp", "up_proj", in: H, out: c.intermediateSize, bias: false)
        down = proj("mlp", "down_proj", in: c.intermediateSize, out: H, bias: false)
    }

    /// Every tensor of the block, in checkpoint order (the order the training model keeps its parameters in).
    var tensors: [TensorSpec] {
        var all = [inputNorm]
        for pr in [q, k, v, o] {
            all.append(pr.weight)
            if let b = pr.bias { all.append(b) }
        }
        all += [qNorm, kNorm].compactMap { $0 }
        all.append(postNorm)
        for pr in [gate, up, down] { all.append(pr.weight) }
        return all
    }
}

/// The whole checkpoint: embedding, blocks, final norm, and lm_head (absent when tied to the embedding).
struct ModelSpec: Sendable, Equatable {
    let embed: TensorSpec
    let layers: [LayerSpec]
    let finalNorm: TensorSpec
    /// nil when `tie_word_embeddings`: the head reads the embedding matrix.
    let lmHead: TensorSpec?

    init(config c: ModelConfig) {
        embed = TensorSpec(name: "model.embed_tokens.weight", shape: [c.vocabSize, c.hiddenSize])
        layers = (0..<c.numHiddenLayers).map { LayerSpec(config: c, layer: $0) }
        finalNorm = TensorSpec(name: "model.norm.weight", shape: [c.hiddenSize])
        lmHead = c.tieWordEmbeddings ? nil : TensorSpec(name: "lm_head.weight", shape: [c.vocabSize, c.hiddenSize])
    }

    /// Parameters of the checkpoint (the tied head counted once).
    var parameterCount: Int {
        layers.reduce(embed.count + finalNorm.count + (lmHead?.count ?? 0)) { n, l in
            n + l.tensors.reduce(0) { $0 + $1.count }
        }
    }
}
