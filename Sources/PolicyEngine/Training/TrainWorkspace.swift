import Foundation

/// Wall-clock seconds per section of forward/backward, when enabled (benchmarks).
public final class TrainProfiler: @unchecked Sendable {  // used under the model's lock
    public var enabled = false
    public private(set) var seconds: [String: Double] = [:]
    private var last: UInt64 = 0
    func start() { if enabled { last = DispatchTime.now().uptimeNanoseconds } }
    func mark(_ section: String) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        seconds[section, default: 0] += Double(now - last) / 1e9
        last = now
    }
    public func reset() { seconds = [:] }
}

/// A growable scratch buffer.
final class TrainBuffer {
    private(set) var p = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    private(set) var capacity = 1
    func ensure(_ n: Int) {
        if n > capacity {
            p.deallocate()
            p = .allocate(capacity: n)
            capacity = n
        }
    }
    deinit { p.deallocate() }
}

/// Scratch for one decoder layer's forward + backward over T rows, and the lm_head chunk.
final class TrainWorkspace {
    private(set) var rows = 0
    var ropeRows = 0
    let xn1 = TrainBuffer(), rstd1 = TrainBuffer(), qRaw = TrainBuffer(), kRaw = TrainBuffer()
    let rstdQ = TrainBuffer(), rstdK = TrainBuffer(), q = TrainBuffer(), k = TrainBuffer(), v = TrainBuffer()
    let att = TrainBuffer(), x2 = TrainBuffer(), xn2 = TrainBuffer(), rstd2 = TrainBuffer()
    let g = TrainBuffer(), u = TrainBuffer(), a = TrainBuffer()
    let probs = TrainBuffer(), dprobs = TrainBuffer()
    let cos = TrainBuffer(), sin = TrainBuffer()
    let h0 = TrainBuffer(), h1 = TrainBuffer()
    let dh0 = TrainBuffer(), dh1 = TrainBuffer(), dxn = TrainBuffer(), datt = TrainBuffer()
    let dq = TrainBuffer(), dk = TrainBuffer(), dv = TrainBuffer(), dqRaw = TrainBuffer(), dkRaw = TrainBuffer()
    let da = TrainBuffer(), dg = TrainBuffer(), du = TrainBuffer()
    let lora = TrainBuffer(), loraDU = TrainBuffer()
    let hn = TrainBuffer(), hx = TrainBuffer(), dhn = TrainBuffer(), dhx = TrainBuffer(), rstdF = TrainBuffer()
    let logits = TrainBuffer()
    private var rank = 0

    func loraU(_ i: Int, _ T: Int) -> UnsafeMutablePointer<Float> { lora.p + i * rows * max(rank, 1) }

    func ensure(config c: ModelConfig, rows n: Int, rank r: Int, vocabSlice: Int) {
        logits.ensure(max(n, rows) * min(c.vocabSize, vocabSlice))
        if n <= rows && r == rank { return }
        let T = max(n, rows)
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let nH = c.numAttentionHeads
        let nKV = c.numKeyValueHeads
        let half = c.headDim / 2
        for b in [xn1, x2, xn2, h0, h1, dh0, dh1, dxn] { b.ensure(T * H) }
        for b in [rstd1, rstd2] { b.ensure(T) }
        rstdQ.ensure(T * nH)
        rstdK.ensure(T * nKV)
        for b in [qRaw, q, att, datt, dq, dqRaw] { b.ensure(T * Q) }
        for b in [kRaw, k, v, dk, dv, dkRaw] { b.ensure(T * KV) }
        for b in [g, u, a, da, dg, du] { b.ensure(T * I) }
        probs.ensure(T * T)
        dprobs.ensure(T * T)
        cos.ensure(T * half)
        sin.ensure(T * half)
        lora.ensure(7 * T * max(r, 1))
        loraDU.ensure(T * max(r, 1))
        for b in [hn, hx, dhn, dhx] { b.ensure(T * H) }
        rstdF.ensure(T)
        rows = T
        rank = r
        ropeRows = 0
    }
}
