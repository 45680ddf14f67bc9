import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// A projection's weights for inference: the float32 matrix, or its 8-bit copy (`WeightFormat.q8`), and the
/// optional bias. A quantised projection keeps no float32 matrix: its float32 source (an owned bf16/f16
/// widening, or pages of the file mapping) is released as soon as it is quantised, so loading a bf16
/// checkpoint in 8 bits never holds the whole model in float32.
struct Projection: @unchecked Sendable {  // immutable after load
    let spec: ProjectionSpec
    let f32: FloatTensor?
    let q8: Q8Matrix?
    let bias: FloatTensor?

    var parameterCount: Int { spec.inDim * spec.outDim + (bias?.count ?? 0) }
}

/// Weights of one decoder block (see `LayerSpec`).
struct LayerWeights: @unchecked Sendable {  // FloatTensor is immutable
    let inputNorm: FloatTensor  // [H]
    let q, k, v, o: Projection
    let qNorm: FloatTensor?  // [headDim]
    let kNorm: FloatTensor?  // [headDim]
    let postNorm: FloatTensor  // [H]
    let gate, up, down: Projection

    var projections: [Projection] { [q, k, v, o, gate, up, down] }
}

/// All weights of a model for inference, loaded from a safetensors checkpoint through `ModelSpec` (every name
/// and shape checked).
struct TransformerWeights: @unchecked Sendable {
    let spec: ModelSpec
    let format: WeightFormat
    let embed: FloatTensor  // [V, H]
    let layers: [LayerWeights]
    let finalNorm: FloatTensor  // [H]
    /// lm_head; its float32 matrix is the embedding when tied.
    let lmHead: Projection
    /// Keeps the mappings alive for tensors used in place.
    let checkpoint: SafetensorsCheckpoint

    init(config c: ModelConfig, checkpoint: SafetensorsCheckpoint, format: WeightFormat = .f32) throws {
        let spec = ModelSpec(config: c)
        self.spec = spec
        self.format = format
        func load(_ t: TensorSpec) throws -> FloatTensor { try checkpoint.floatTensor(t.name, shape: t.shape) }
        func projection(_ p: ProjectionSpec) throws -> Projection {
            let bias = try p.bias.map(load)
            let w = try load(p.weight)
            guard format == .q8, Q8Matrix.canQuantize(cols: p.inDim) else { return Projection(spec: p, f32: w, q8: nil, bias: bias) }
            let q = try Q8Matrix(quantizing: w.pointer, rows: p.outDim, cols: p.inDim, name: p.weight.name)
            checkpoint.releaseSourcePages(of: p.weight.name)
            return Projection(spec: p, f32: nil, q8: q, bias: bias)  // `w` (an owned widening, or mapped pages) is dropped
        }
        embed = try load(spec.embed)
        layers = try spec.layers.map { l in
            LayerWeights(
                inputNorm: try load(l.inputNorm), q: try projection(l.q), k: try projection(l.k), v: try projection(l.v),
                o: try projection(l.o), qNorm: try l.qNorm.map(load), kNorm: try l.kNorm.map(load),
                postNorm: try load(l.postNorm), gate: try projection(l.gate), up: try projection(l.up),
                down: try projection(l.down))
        }
        finalNorm = try load(spec.finalNorm)
        let headSpec = ProjectionSpec(
            module: "lm_head", path: spec.lmHead == nil ? "model.embed_tokens" : "lm_head", inDim: c.hiddenSize,
            outDim: c.vocabSize, hasBias: false)
        if spec.lmHead != nil {
            lmHead = try projection(headSpec)  // "lm_head.weight", [V, H]
        } else if format == .q8, Q8Matrix.canQuantize(cols: c.hiddenSize) {
            // Tied: the embedding stays float32 for the lookups, the head gets an 8-bit copy of it.
            let q = try Q8Matrix(
                quantizing: embed.pointer, rows: c.vocabSize, cols: c.hiddenSize, name: "model.embed_tokens.weight (tied lm_head)")
            checkpoint.releaseSourcePages(of: spec.embed.name)  // lookups read single rows back from the file
            lmHead = Projection(spec: headSpec, f32: nil, q8: q, bias: nil)
        } else {
            lmHead = Projection(spec: headSpec, f32: embed, q8: nil, bias: nil)
        }
        self.checkpoint = checkpoint
    }

    /// Bytes of the 8-bit copies (values + scales); 0 for `.f32`.
    var quantizedByteCount: Int {
        layers.flatMap(\.projections).reduce(lmHead.q8?.byteCount ?? 0) { $0 + ($1.q8?.byteCount ?? 0) }
    }

    /// Fraction of the float32 weight floats used in place from the file mapping (1.0 for an aligned F32
    /// checkpoint; quantised projections do not count).
    var mappedFraction: Double {
        var all: [FloatTensor] = [embed, finalNorm]
        if let f = lmHead.f32, f !== embed { all.append(f) }
        for l in layers {
            all += [l.inputNorm, l.postNorm] + [l.qNorm, l.kNorm].compactMap { $0 }
            for p in l.projections { all += [p.f32, p.bias].compactMap { $0 } }
        }
        let total = all.reduce(0) { $0 + $1.count }
        let mapped = all.filter(\.isMapped).reduce(0) { $0 + $1.count }
        return total == 0 ? 0 : Double(mapped) / Double(total)
    }

    var parameterCount: Int { spec.parameterCount }
}

extension SafetensorsCheckpoint {
    /// Drops the resident pages of a tensor's bytes in its read-only file mapping (they are read back from
    /// the file if touched again): after quantising, the float32 or bf16 source is no longer needed.
    func releaseSourcePages(of name: String) {
        #if os(Linux)
            guard let info = info(name), let file = files.first(where: { $0.tensors[name] != nil }) else { return }
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let start = Int(bitPattern: file.rawPointer(info))
            let end = start + info.dataOffsets.count
            let a = (start + page - 1) / page * page
            let b = end / page * page
            if b > a { _ = madvise(UnsafeMutableRawPointer(bitPattern: a), b - a, Int32(MADV_DONTNEED)) }
        #endif
    }
}
