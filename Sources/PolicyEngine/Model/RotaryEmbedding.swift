import Foundation

/// RoPE inverse frequencies, computed in float32 the way Hugging Face does (default, linear, llama3).
struct RotaryEmbedding: Sendable {
    let headDim: Int
    let invFreq: [Float]

    init(config: ModelConfig) {
        let dim = config.headDim
        let base = Float(config.rope.theta)
        var inv = (0..<(dim / 2)).map { i -> Float in 1 / powf(base, Float(2 * i) / Float(dim)) }
        let r = config.rope
        switch r.ropeType {
        case "linear":
            let f = Float(r.factor ?? 1)
            inv = inv.map { $0 / f }
        case "llama3":
            let factor = Float(r.factor ?? 1)
            let lo = Float(r.lowFreqFactor ?? 1)
            let hi = Float(r.highFreqFactor ?? 4)
            let old = Float(r.originalMaxPositionEmbeddings ?? 8192)
            let lowWavelen = old / lo
            let highWavelen = old / hi
            inv = inv.map { f in
                let wavelen = 2 * Float.pi / f
                let scaled = wavelen > lowWavelen ? f / factor : f
                let isMedium = !(wavelen < highWavelen) && !(wavelen > lowWavelen)
                guard isMedium else { return scaled }
                let smooth = (old / wavelen - lo) / (hi - lo)
                return (1 - smooth) * scaled / factor + smooth * scaled
            }
        default:
            break
        }
        headDim = dim
        invFreq = inv
    }

    /// Writes cos/sin (headDim/2 each) for `position`.
    func fill(position: Int, cos c: UnsafeMutablePointer<Float>, sin s: UnsafeMutablePointer<Float>) {
        let p = Float(position)
        for i in 0..<invFreq.count {
            let a = p * invFreq[i]
            c[i] = cosf(a)
            s[i] = sinf(a)
        }
    }
}
