import CBLAS
import Foundation

/// Which logits a forward request wants back.
public enum LogitsSelection: Sendable {
    case none
    /// Only the last new position (prefill / decode).
    case last
    /// Every new position.
    case all
}

/// New tokens for one sequence in a forward step. `tokens` are appended after `cache.count` positions.
public struct ForwardRequest: Sendable {
    public var tokens: ArraySlice<Int32>
    public var cache: KVCache
    public var logits: LogitsSelection
    public init(tokens: ArraySlice<Int32>, cache: KVCache, logits: LogitsSelection = .last) {
        self.tokens = tokens
        self.cache = cache
        self.logits = logits
    }
    public init(tokens: [Int32], cache: KVCache, logits: LogitsSelection = .last) {
        self.init(tokens: tokens[...], cache: cache, logits: logits)
    }
}

/// A decoder-only transformer (Qwen2, Qwen3, Llama) running on the CPU in float32 with CBLAS.
///
/// All sequences of one forward step are stacked into one [rows, hidden] matrix so every weight matrix
/// is read once per step (sgemm), whatever the mix of prefill chunks and decode tokens. Attention runs
/// per sequence against its own `KVCache`.
///
/// Thread safety: weights are immutable; the scratch workspace is guarded by a lock, so concurrent
/// calls are serialised (use `BatchScheduler` to batch concurrent sequences instead).
public final class TransformerModel: @unchecked Sendable {
    public let config: ModelConfig
    public let generationDefaults: GenerationDefaults
    let weights: TransformerWeights
    let rope: RotaryEmbedding
    private let lock = NSLock()
    private let ws = Workspace()
    private let q8Scratch = Q8Scratch()
    /// Per-section timing of forward steps; enable with `profiler.enabled = true`.
    public let profiler = ForwardProfiler()

    public init(
        config: ModelConfig, checkpoint: SafetensorsCheckpoint,
        generationDefaults: GenerationDefaults = GenerationDefaults(), weightFormat: WeightFormat = .f32
    ) throws {
        try config.validate()
        BLASCore.selectOptimizedCore()
        self.config = config
        self.generationDefaults = generationDefaults
        weights = try TransformerWeights(config: config, checkpoint: checkpoint, format: weightFormat)
        rope = RotaryEmbedding(config: config)
    }

    /// Loads `config.json`, `generation_config.json` (optional) and the safetensors weights of a
    /// Hugging Face checkpoint directory.
    /// With `.q8` the projections and lm_head are quantised to 8 bits while loading (see `WeightFormat`).
    public static func load(from directory: URL, weightFormat: WeightFormat = .f32) throws -> TransformerModel {
        let config = try ModelConfig.load(from: directory.appendingPathComponent("config.json"))
        let gen = try GenerationDefaults.load(from: directory)
        let ckpt = try SafetensorsCheckpoint.open(directory: directory)
        return try TransformerModel(config: config, checkpoint: ckpt, generationDefaults: gen, weightFormat: weightFormat)
    }

    /// End-of-sequence ids from generation_config.json, falling back to config.json.
    public var eosTokenIds: [Int32] {
        let ids = generationDefaults.eosTokenIds.isEmpty ? config.eosTokenIds : generationDefaults.eosTokenIds
        return ids.map { Int32($0) }
    }

    public var parameterCount: Int { weights.parameterCount }
    public var weightFormat: WeightFormat { weights.format }
    /// Bytes of the 8-bit weight copies (values + scales); 0 for `.f32`.
    public var quantizedWeightBytes: Int { weights.quantizedByteCount }
    /// Fraction of the weights used in place from the mmap'ed files.
    public var mappedWeightFraction: Double { weights.mappedFraction }

    public func makeCache(initialCapacity: Int = 256) -> KVCache {
        KVCache(
            numLayers: config.numHiddenLayers, kvDim: config.kvDim, maxPositions: config.maxPositionEmbeddings,
            initialCapacity: initialCapacity)
    }

    // MARK: convenience API

    /// Prompts longer than this are run in several forward steps (bounds scratch memory; sgemm is already
    /// efficient at this size).
    public static let prefillChunk = 512
    /// Chunks of at most this many tokens (a decode token, with its draft tokens under speculative decoding; a
    /// short continuation) are attended row by row as decode rows are: the nRep query heads of a KV head as one
    /// product per row, which for a few rows costs a fraction of the per-head prefill blocks.
    /// Only with OpenBLAS single-threaded (8-bit steps, whose attention the engine's own threads split): in float32
    /// steps, small products issued from several threads into OpenBLAS's threads serialise (2 rows took 35 ms
    /// row-wise against 14 ms in prefill blocks on the 0.5B shape), so chunks keep the prefill blocks there.
    static let rowWiseAttention = 8
    static var rowWiseLimit: Int { BLASThreads.blasIsSingleThreaded ? rowWiseAttention : 1 }
    /// Query rows per attention block in prefill.
    static let attentionBlock = 128

    /// Appends `tokens` to `cache` and returns the logits of the last position.
    public func prefill(tokens: [Int32], cache: KVCache, chunkSize: Int = TransformerModel.prefillChunk) throws -> [Float] {
        guard !tokens.isEmpty else { throw ModelError.emptyInput }
        var out: [Float] = []
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + max(1, chunkSize))
            try forward([ForwardRequest(tokens: tokens[start..<end], cache: cache, logits: end == tokens.count ? .last : .none)]) {
                _, _, l in out = Array(l)
            }
            start = end
        }
        return out
    }

    /// Appends `tokens` to `cache` and returns the logits of every new position.
    public func prefillAllLogits(
        tokens: [Int32], cache: KVCache,
        chunkSize: Int = TransformerModel.prefillChunk
    ) throws -> [[Float]] {
        guard !tokens.isEmpty else { throw ModelError.emptyInput }
        var out: [[Float]] = []
        out.reserveCapacity(tokens.count)
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + max(1, chunkSize))
            try forward([ForwardRequest(tokens: tokens[start..<end], cache: cache, logits: .all)]) { _, _, l in out.append(Array(l)) }
            start = end
        }
        return out
    }

    /// One decode step for several sequences at once (one token each); returns logits per sequence.
    public func decode(_ batch: [(token: Int32, cache: KVCache)]) throws -> [[Float]] {
        var out = [[Float]](repeating: [], count: batch.count)
        try forward(batch.map { ForwardRequest(tokens: [$0.token], cache: $0.cache, logits: .last) }) { i, _, l in
            out[i] = Array(l)
        }
        return out
    }

    /// Raw log_softmax log-probabilities of each `completion` token given everything before it
    /// (`prompt` must be non-empty). Uses a fresh cache unless one holding `prompt` is passed; the cache then
    /// also holds the completion.
    public func logProbabilities(of completion: [Int32], after prompt: [Int32], cache: KVCache? = nil) throws -> [Float] {
        guard !completion.isEmpty else { return [] }
        let cache = cache ?? makeCache(initialCapacity: prompt.count + completion.count)
        var feed: [Int32]
        if cache.count == 0 {
            guard !prompt.isEmpty else { throw ModelError.emptyInput }
            feed = prompt
        } else {
            guard cache.tokens == prompt else {
                throw ModelError.cacheMismatch(reason: "cache holds \(cache.count) tokens that are not the given prompt")
            }
            // Recompute the last prompt position to get its logits.
            cache.truncate(to: cache.count - 1)
            feed = [prompt[prompt.count - 1]]
        }
        let firstRow = feed.count - 1
        feed += completion.dropLast()
        var out = [Float](repeating: 0, count: completion.count)
        try forward([ForwardRequest(tokens: feed, cache: cache, logits: .all)]) { _, row, logits in
            let k = row - firstRow
            if k >= 0 { out[k] = Sampler.logSoftmax(logits, at: Int(completion[k])) }
        }
        return out
    }

    // MARK: forward

    /// Runs one forward step over all requests and hands the requested logits rows to `body`
    /// as (request index, row index within that request's selection, logits). The buffer is only valid
    /// during the call. No allocation happens here once the workspace has grown to the batch size.
    public func forward(
        _ requests: [ForwardRequest],
        body: (Int, Int, UnsafeBufferPointer<Float>) throws -> Void
    ) throws {
        lock.lock()
        defer { lock.unlock() }
        // 8-bit steps run their products on the ComputePool: keep OpenBLAS's spinning workers out of the way.
        if weights.format == .q8 { return try BLASThreads.withSingleThreadedBLAS { try forwardLocked(requests, body: body) } }
        try forwardLocked(requests, body: body)
    }

    private func forwardLocked(
        _ requests: [ForwardRequest],
        body: (Int, Int, UnsafeBufferPointer<Float>) throws -> Void
    ) throws {
        let c = config
        guard !requests.isEmpty else { throw ModelError.emptyInput }
        var seen = Set<ObjectIdentifier>()
        var rows = 0
        var logitRows = 0
        var scoreSize = 0
        let nRep = c.numAttentionHeads / c.numKeyValueHeads
        for r in requests {
            guard !r.tokens.isEmpty else { throw ModelError.emptyInput }
            guard seen.insert(ObjectIdentifier(r.cache)).inserted else { throw ModelError.duplicateCache }
            guard r.cache.numLayers == c.numHiddenLayers, r.cache.kvDim == c.kvDim else {
                throw ModelError.cacheMismatch(
                    reason: "cache has \(r.cache.numLayers) layers x kvDim \(r.cache.kvDim), "
                        + "model has \(c.numHiddenLayers) x \(c.kvDim)")
            }
            for t in r.tokens where t < 0 || Int(t) >= c.vocabSize {
                throw ModelError.tokenOutOfRange(token: t, vocabSize: c.vocabSize)
            }
            let total = r.cache.count + r.tokens.count
            guard total <= c.maxPositionEmbeddings else {
                throw ModelError.contextOverflow(needed: total, maxPositions: c.maxPositionEmbeddings)
            }
            rows += r.tokens.count
            logitRows += r.logits == .all ? r.tokens.count : (r.logits == .last ? 1 : 0)
            let m = r.tokens.count <= Self.rowWiseLimit ? nRep : r.tokens.count
            scoreSize = max(scoreSize, m * total)
        }
        for r in requests { try r.cache.reserve(r.cache.count + r.tokens.count) }
        ws.ensure(config: c, rows: rows, logitRows: logitRows, scoreSize: scoreSize)

        let H = c.hiddenSize
        let hd = c.headDim
        let half = hd / 2
        let prof = profiler
        prof.start()
        // Embedding lookup, positions and RoPE tables per row; which rows are single-token decodes (the same
        // for every layer).
        var row = 0
        var decodeRows: [(row: Int, request: Int, keys: Int)] = []
        for (k, r) in requests.enumerated() {
            let p0 = r.cache.count
            if r.tokens.count <= Self.rowWiseLimit {
                for i in 0..<r.tokens.count { decodeRows.append((row + i, k, p0 + i + 1)) }
            }
            for (i, t) in r.tokens.enumerated() {
                (ws.x + row * H).update(from: weights.embed.pointer + Int(t) * H, count: H)
                rope.fill(position: p0 + i, cos: ws.cos + row * half, sin: ws.sin + row * half)
                row += 1
            }
        }
        prof.mark(.embed)
        let decode =
            decodeRows.isEmpty
            ? nil
            : DecodeAttention(
                q: ws.q, att: ws.att, scores: ws.scores, scoreStride: ws.scoreSize, rows: decodeRows,
                caches: requests.map(\.cache), Q: c.qDim, KV: c.kvDim, hd: hd, nKV: c.numKeyValueHeads,
                nRep: c.numAttentionHeads / c.numKeyValueHeads, scale: 1 / Float(hd).squareRoot())
        for l in 0..<c.numHiddenLayers {
            layer(l, requests: requests, rows: rows, decode: decode)
        }
        // Final norm + lm_head on the selected rows only.
        if logitRows > 0 {
            var sel = 0
            row = 0
            for r in requests {
                let n = r.tokens.count
                switch r.logits {
                case .none: break
                case .last:
                    Kernels.rmsNorm(
                        ws.x + (row + n - 1) * H, weight: weights.finalNorm.pointer, rows: 1, dim: H,
                        eps: c.rmsNormEps, into: ws.hsel + sel * H)
                    sel += 1
                case .all:
                    Kernels.rmsNorm(
                        ws.x + row * H, weight: weights.finalNorm.pointer, rows: n, dim: H,
                        eps: c.rmsNormEps, into: ws.hsel + sel * H)
                    sel += n
                }
                row += n
            }
            let V = c.vocabSize
            prof.mark(.norms)
            project(ws.hsel, rows: logitRows, weights.lmHead, into: ws.logits)
            prof.mark(.lmHead)
            sel = 0
            for (i, r) in requests.enumerated() {
                let k = r.logits == .all ? r.tokens.count : (r.logits == .last ? 1 : 0)
                for j in 0..<k {
                    try body(i, j, UnsafeBufferPointer(start: ws.logits + (sel + j) * V, count: V))
                }
                sel += k
            }
            prof.mark(.sampling)
        }
        for r in requests { r.cache.commit(r.tokens) }
    }

    /// One decoder block over all rows of the step.
    private func layer(_ l: Int, requests: [ForwardRequest], rows: Int, decode: DecodeAttention?) {
        let c = config
        let w = weights.layers[l]
        let H = c.hiddenSize
        let Q = c.qDim
        let KV = c.kvDim
        let I = c.intermediateSize
        let hd = c.headDim
        let half = hd / 2
        let nH = c.numAttentionHeads
        let nKV = c.numKeyValueHeads
        let nRep = nH / nKV
        let eps = c.rmsNormEps
        let prof = profiler

        // Attention block.
        Kernels.rmsNorm(ws.x, weight: w.inputNorm.pointer, rows: rows, dim: H, eps: eps, into: ws.xn)
        prof.mark(.norms)
        project(ws.xn, rows: rows, [(w.q, ws.q), (w.k, ws.k), (w.v, ws.v)])
        prof.mark(.qkv)
        if let qn = w.qNorm, let kn = w.kNorm {
            Kernels.rmsNorm(ws.q, weight: qn.pointer, rows: rows * nH, dim: hd, eps: eps, into: ws.q)
            Kernels.rmsNorm(ws.k, weight: kn.pointer, rows: rows * nKV, dim: hd, eps: eps, into: ws.k)
        }
        for r in 0..<rows {
            Kernels.rope(ws.q + r * Q, heads: nH, headDim: hd, cos: ws.cos + r * half, sin: ws.sin + r * half)
            Kernels.rope(ws.k + r * KV, heads: nKV, headDim: hd, cos: ws.cos + r * half, sin: ws.sin + r * half)
        }
        prof.mark(.rope)
        let scale = 1 / Float(hd).squareRoot()
        // Append this step's keys and values to every cache; decode rows (one token) are attended in parallel
        // below, prefill chunks here.
        var row0 = 0
        for req in requests {
            let T = req.tokens.count
            let p0 = req.cache.count
            let K = req.cache.keys[l]
            let V = req.cache.values[l]
            (K + p0 * KV).update(from: ws.k + row0 * KV, count: T * KV)
            (V + p0 * KV).update(from: ws.v + row0 * KV, count: T * KV)
            if T > Self.rowWiseLimit {
                // Prefill chunk: per head and block of query rows, scores [rows, keys] with the causal mask
                // offset by p0. A block only looks at the keys it can see, which skips most of the masked half.
                let job = PrefillAttention(
                    q: ws.q, att: ws.att, scores: ws.scores, scoreStride: ws.scoreSize, K: K, V: V, row0: row0, T: T,
                    p0: p0, Q: Q, KV: KV, hd: hd, nRep: nRep, scale: scale)
                if BLASThreads.blasIsSingleThreaded && Kernels.computeThreads > 1 {
                    // 8-bit steps (OpenBLAS at one thread): heads split over the compute threads, each part
                    // with its own slice of the scores scratch.
                    ComputePool.shared.run(count: nH, maxParts: min(Kernels.computeThreads, ws.scoreParts)) { part, range in
                        job.run(heads: range, part: part)
                    }
                } else {
                    job.run(heads: 0..<nH, part: 0)  // OpenBLAS threads each product
                }
            }
            row0 += T
        }
        if let decode {
            // Decode: sequences and their KV heads are independent, so they are split over the compute threads, each
            // part with its own slice of the scores scratch. With OpenBLAS single-threaded (8-bit steps) a unit is
            // one KV head of one sequence, so that a single sequence is split too; with OpenBLAS's own threads
            // (float32) it is a whole sequence: concurrent small products from several threads into a threaded
            // OpenBLAS took 12x longer.
            let perHead = BLASThreads.blasIsSingleThreaded
            let units = perHead ? decode.rows.count * nKV : decode.rows.count
            ComputePool.shared.run(count: units, maxParts: min(2 * Kernels.computeThreads, ws.scoreParts)) { part, range in
                decode.run(layer: l, part: part, units: range, perHead: perHead)
            }
        }
        prof.mark(.attention)
        // x += att * Wo^T (+ bo)
        project(ws.att, rows: rows, w.o, into: ws.x, accumulate: true)
        prof.mark(.outProj)

        // MLP block.
        Kernels.rmsNorm(ws.x, weight: w.postNorm.pointer, rows: rows, dim: H, eps: eps, into: ws.xn)
        prof.mark(.norms)
        project(ws.xn, rows: rows, [(w.gate, ws.gate), (w.up, ws.up)])
        prof.mark(.gateUp)
        if rows > 16 && BLASThreads.blasIsSingleThreaded && Kernels.computeThreads > 1 {
            let job = SwigluJob(gate: ws.gate, up: ws.up)
            ComputePool.shared.run(count: rows, maxParts: Kernels.computeThreads) { _, range in
                Kernels.swiglu(job.gate + range.lowerBound * I, job.up + range.lowerBound * I, count: range.count * I)
            }
        } else {
            Kernels.swiglu(ws.gate, ws.up, count: rows * I)
        }
        prof.mark(.swiglu)
        project(ws.gate, rows: rows, w.down, into: ws.x, accumulate: true)
        prof.mark(.down)
    }
}

extension TransformerModel {
    /// Several projections of the same input (q, k, v; gate, up): in 8 bits the activations are quantised
    /// once for all of them.
    @inline(__always)
    fileprivate func project(_ x: UnsafePointer<Float>, rows: Int, _ targets: [(Projection, UnsafeMutablePointer<Float>)]) {
        guard let first = targets.first?.0.q8,
            targets.allSatisfy({ $0.0.q8?.cols == first.cols && $0.0.q8?.block == first.block })
        else {
            for (p, y) in targets { project(x, rows: rows, p, into: y) }
            return
        }
        Q8Kernels.quantizeActivations(x, rows: rows, cols: first.cols, block: first.block, into: q8Scratch)
        for (p, y) in targets {
            Q8Kernels.integerProduct(rows: rows, weight: p.q8!, scratch: q8Scratch, into: y, accumulate: false)
            if let bias = p.bias?.pointer { Q8Kernels.addBias(bias, rows: rows, dim: p.spec.outDim, into: y) }
        }
    }

    /// A projection through the 8-bit copy when there is one, else the float32 weights.
    @inline(__always)
    fileprivate func project(
        _ x: UnsafePointer<Float>, rows: Int, _ p: Projection, into y: UnsafeMutablePointer<Float>, accumulate: Bool = false
    ) {
        let bias = p.bias?.pointer
        if let q8 = p.q8 {
            Q8Kernels.linear(x, rows: rows, weight: q8, bias: bias, into: y, accumulate: accumulate, scratch: q8Scratch)
        } else {
            Kernels.linear(
                x, rows: rows, inDim: p.spec.inDim, weight: p.f32!.pointer, outDim: p.spec.outDim, bias: bias, into: y,
                accumulate: accumulate)
        }
    }
}

/// Scratch buffers for one forward step; grown (never shrunk) when a step needs more rows.
final class Workspace {
    private(set) var rows = 0, logitRows = 0, scoreSize = 0
    /// Decode attention runs in this many parts at most, each with `scoreSize` floats of `scores`.
    let scoreParts = 2 * (ComputePool.shared.workerCount + 1)
    var x = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var xn = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var q = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var k = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var v = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var att = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var gate = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var up = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var cos = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var sin = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var scores = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var hsel = UnsafeMutablePointer<Float>.allocate(capacity: 1)
    var logits = UnsafeMutablePointer<Float>.allocate(capacity: 1)

    /// Buffers start on a cache line: the sgemm kernels load rows of x with 64-byte vector loads, and a row
    /// that straddles two lines costs two loads each time.
    private static func regrow(_ p: inout UnsafeMutablePointer<Float>, _ n: Int) {
        p.deallocate()
        p = AlignedMemory.allocate(Float.self, capacity: n)
    }

    func ensure(config c: ModelConfig, rows n: Int, logitRows lr: Int, scoreSize s: Int) {
        if n > rows {
            let cap = max(n, rows * 2)
            Self.regrow(&x, cap * c.hiddenSize)
            Self.regrow(&xn, cap * c.hiddenSize)
            Self.regrow(&q, cap * c.qDim)
            Self.regrow(&k, cap * c.kvDim)
            Self.regrow(&v, cap * c.kvDim)
            Self.regrow(&att, cap * c.qDim)
            Self.regrow(&gate, cap * c.intermediateSize)
            Self.regrow(&up, cap * c.intermediateSize)
            Self.regrow(&cos, cap * c.headDim / 2)
            Self.regrow(&sin, cap * c.headDim / 2)
            rows = cap
        }
        if lr > logitRows {
            let cap = max(lr, logitRows * 2)
            Self.regrow(&hsel, cap * c.hiddenSize)
            Self.regrow(&logits, cap * c.vocabSize)
            logitRows = cap
        }
        if s > scoreSize {
            let cap = max(s, scoreSize * 2)
            Self.regrow(&scores, cap * scoreParts)
            scoreSize = cap
        }
    }

    deinit {
        for p in [x, xn, q, k, v, att, gate, up, cos, sin, scores, hsel, logits] { p.deallocate() }
    }
}

private struct SwigluJob: @unchecked Sendable {  // raw pointers for the compute threads; the caller waits
    let gate: UnsafeMutablePointer<Float>, up: UnsafeMutablePointer<Float>
}

/// Prefill attention of one request's chunk, for a range of query heads (raw pointers for the compute threads;
/// the caller waits for them). Part `p` uses scores[p * scoreStride ..< (p + 1) * scoreStride].
private struct PrefillAttention: @unchecked Sendable {
    let q: UnsafeMutablePointer<Float>, att: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>
    let scoreStride: Int
    let K: UnsafeMutablePointer<Float>, V: UnsafeMutablePointer<Float>
    let row0: Int, T: Int, p0: Int, Q: Int, KV: Int, hd: Int, nRep: Int
    let scale: Float

    func run(heads: Range<Int>, part: Int) {
        let sc = scores + part * scoreStride
        for h in heads {
            let g = h / nRep
            var t0 = 0
            while t0 < T {
                let bt = min(TransformerModel.attentionBlock, T - t0)
                let keys = p0 + t0 + bt
                let qRow = row0 + t0
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(bt), Int32(keys), Int32(hd), scale,
                    q + qRow * Q + h * hd, Int32(Q), K + g * hd, Int32(KV), 0, sc, Int32(keys))
                for t in 0..<bt { Kernels.maskedSoftmax(sc + t * keys, valid: p0 + t0 + t + 1, width: keys) }
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(bt), Int32(hd), Int32(keys), 1,
                    sc, Int32(keys), V + g * hd, Int32(KV), 0, att + qRow * Q + h * hd, Int32(Q))
                t0 += bt
            }
        }
    }
}

/// Attention of a step's decode rows and of the rows of short chunks (see `rowWiseAttention`), one layer at a
/// time (raw pointers for the compute threads; the caller waits for them). Part `p` uses
/// scores[p * scoreStride ..< (p + 1) * scoreStride]. For each row, the nRep query heads sharing a KV head form
/// one [nRep, hd] matrix.
private struct DecodeAttention: @unchecked Sendable {
    let q: UnsafeMutablePointer<Float>, att: UnsafeMutablePointer<Float>, scores: UnsafeMutablePointer<Float>
    let scoreStride: Int
    /// Each row's position in its sequence + 1: the keys it attends to.
    let rows: [(row: Int, request: Int, keys: Int)]
    let caches: [KVCache]
    let Q: Int, KV: Int, hd: Int, nKV: Int, nRep: Int
    let scale: Float

    /// With `perHead`, unit u is KV head u % nKV of decode row u / nKV; otherwise every KV head of row u.
    func run(layer: Int, part: Int, units range: Range<Int>, perHead: Bool) {
        let sc = scores + part * scoreStride
        for u in range {
            let (row, request, S) = rows[perHead ? u / nKV : u]
            let cache = caches[request]
            let K = cache.keys[layer]
            let V = cache.values[layer]
            for g in perHead ? (u % nKV)..<(u % nKV + 1) : 0..<nKV {
                let qg = q + row * Q + g * nRep * hd
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(nRep), Int32(S), Int32(hd), scale,
                    qg, Int32(hd), K + g * hd, Int32(KV), 0, sc, Int32(S))
                for r in 0..<nRep { Kernels.maskedSoftmax(sc + r * S, valid: S, width: S) }
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(nRep), Int32(hd), Int32(S), 1,
                    sc, Int32(S), V + g * hd, Int32(KV), 0, att + row * Q + g * nRep * hd, Int32(hd))
            }
        }
    }
}
