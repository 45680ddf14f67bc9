import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// The 8-bit copies of one decoder block's projections (nil: the input dimension is not a multiple of 32,
/// so that projection stays float32).
struct Q8Layer: Sendable {
    let q, k, v, o, gate, up, down: Q8Matrix?
}

/// 8-bit copies of every projection and of lm_head, made at load (`WeightFormat.q8`). The float32 tensors
/// stay mapped (norms, biases and embedding rows are read from them), but their pages are released once
/// quantised so the resident set holds the int8 copy instead of the float32 one.
struct QuantizedWeights: Sendable {
    let layers: [Q8Layer]
    let lmHead: Q8Matrix?

    init(config c: ModelConfig, weights w: TransformerWeights) throws {
        func q(_ t: FloatTensor, _ name: String) throws -> Q8Matrix? {
            guard Q8Matrix.canQuantize(cols: t.shape[1]) else { return nil }
            let m = try Q8Matrix(quantizing: t.pointer, rows: t.shape[0], cols: t.shape[1], name: name)
            Self.releasePages(of: t)
            return m
        }
        var layers: [Q8Layer] = []
        for (l, lw) in w.layers.enumerated() {
            let p = "model.layers.\(l)."
            layers.append(
                Q8Layer(
                    q: try q(lw.qProj, p + "self_attn.q_proj.weight"), k: try q(lw.kProj, p + "self_attn.k_proj.weight"),
                    v: try q(lw.vProj, p + "self_attn.v_proj.weight"), o: try q(lw.oProj, p + "self_attn.o_proj.weight"),
                    gate: try q(lw.gateProj, p + "mlp.gate_proj.weight"), up: try q(lw.upProj, p + "mlp.up_proj.weight"),
                    down: try q(lw.downProj, p + "mlp.down_proj.weight")))
        }
        self.layers = layers
        lmHead = try q(w.lmHead, c.tieWordEmbeddings ? "model.embed_tokens.weight (tied lm_head)" : "lm_head.weight")
    }

    var byteCount: Int {
        layers.reduce(lmHead?.byteCount ?? 0) {
            $0 + [$1.q, $1.k, $1.v, $1.o, $1.gate, $1.up, $1.down].reduce(0) { $0 + ($1?.byteCount ?? 0) }
        }
    }

    /// Drops the resident pages of a tensor used in place from a read-only file mapping (they are read back
    /// from the file if touched again). Copied tensors are left alone.
    private static func releasePages(of t: FloatTensor) {
        #if os(Linux)
            guard t.isMapped else { return }
            let page = Int(sysconf(Int32(_SC_PAGESIZE)))
            let start = Int(bitPattern: t.pointer)
            let end = start + t.count * MemoryLayout<Float>.size
            let a = (start + page - 1) / page * page
            let b = end / page * page
            if b > a { _ = madvise(UnsafeMutableRawPointer(bitPattern: a), b - a, Int32(MADV_DONTNEED)) }
        #endif
    }
}
