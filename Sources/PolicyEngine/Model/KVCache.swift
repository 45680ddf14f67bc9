import Foundation

public enum ModelError: Error, CustomStringConvertible, Equatable {
    case tokenOutOfRange(token: Int32, vocabSize: Int)
    case contextOverflow(needed: Int, maxPositions: Int)
    case cacheMismatch(reason: String)
    case emptyInput
    case duplicateCache

    public var description: String {
        switch self {
        case .tokenOutOfRange(let t, let v): return "token id \(t) is outside the vocabulary [0, \(v))"
        case .contextOverflow(let n, let m): return "sequence of \(n) tokens exceeds max_position_embeddings \(m)"
        case .cacheMismatch(let r): return "KV cache does not fit this model: \(r)"
        case .emptyInput: return "no tokens to process"
        case .duplicateCache: return "the same KV cache appears twice in one batch"
        }
    }
}

/// Keys and values of one sequence for every layer, laid out [position][kvHead][headDim] per layer.
/// Storage grows geometrically (never per token). Not thread-safe: a cache belongs to one sequence and is
/// used by one caller at a time (the model's forward lock serialises the writes).
public final class KVCache: @unchecked Sendable {
    public let numLayers: Int
    public let kvDim: Int
    public let maxPositions: Int
    /// Number of positions whose keys/values are stored.
    public private(set) var count: Int = 0
    /// The token ids at positions 0..<count.
    public private(set) var tokens: [Int32] = []
    public private(set) var capacity: Int
    private(set) var keys: [UnsafeMutablePointer<Float>]
    private(set) var values: [UnsafeMutablePointer<Float>]

    public init(numLayers: Int, kvDim: Int, maxPositions: Int, initialCapacity: Int = 256) {
        self.numLayers = numLayers
        self.kvDim = kvDim
        self.maxPositions = maxPositions
        let cap = max(1, min(initialCapacity, maxPositions))
        capacity = cap
        keys = (0..<numLayers).map { _ in AlignedMemory.allocate(Float.self, capacity: cap * kvDim) }
        values = (0..<numLayers).map { _ in AlignedMemory.allocate(Float.self, capacity: cap * kvDim) }
    }

    deinit {
        keys.forEach { $0.deallocate() }
        values.forEach { $0.deallocate() }
    }

    /// Makes room for `total` positions (amortised doubling).
    func reserve(_ total: Int) throws {
        guard total <= maxPositions else { throw ModelError.contextOverflow(needed: total, maxPositions: maxPositions) }
        guard total > capacity else { return }
        let newCap = min(maxPositions, max(total, capacity * 2))
        for l in 0..<numLayers {
            let k = AlignedMemory.allocate(Float.self, capacity: newCap * kvDim)
            k.update(from: keys[l], count: count * kvDim)
            keys[l].deallocate()
            keys[l] = k
            let v = AlignedMemory.allocate(Float.self, capacity: newCap * kvDim)
            v.update(from: values[l], count: count * kvDim)
            values[l].deallocate()
            values[l] = v
        }
        capacity = newCap
    }

    /// Records that `newTokens` were written at positions count..<count+newTokens.count.
    func commit(_ newTokens: ArraySlice<Int32>) {
        tokens.append(contentsOf: newTokens)
        count += newTokens.count
    }

    /// Forgets every position >= n (e.g. to drop a rejected continuation or re-use a shared prefix).
    public func truncate(to n: Int) {
        precondition(n >= 0, "KVCache.truncate: negative length \(n)")
        guard n < count else { return }
        count = n
        tokens.removeLast(tokens.count - n)
    }

    public func reset() { truncate(to: 0) }

    /// An independent copy (e.g. to sample several continuations of one prompt).
    public func copy() -> KVCache {
        let c = KVCache(numLayers: numLayers, kvDim: kvDim, maxPositions: maxPositions, initialCapacity: max(count, 1))
        for l in 0..<numLayers {
            c.keys[l].update(from: keys[l], count: count * kvDim)
            c.values[l].update(from: values[l], count: count * kvDim)
        }
        c.count = count
        c.tokens = tokens
        return c
    }

    /// Replaces the contents with the first `n` positions of `source` (keys, values and token ids copied,
    /// so the two caches stay independent).
    func load(prefix n: Int, of source: KVCache) throws {
        precondition(
            n <= source.count && source.numLayers == numLayers && source.kvDim == kvDim,
            "KVCache.load: \(n) positions of a \(source.numLayers)x\(source.kvDim) cache holding \(source.count)")
        count = 0
        tokens.removeAll(keepingCapacity: true)
        try reserve(n)
        for l in 0..<numLayers {
            keys[l].update(from: source.keys[l], count: n * kvDim)
            values[l].update(from: source.values[l], count: n * kvDim)
        }
        count = n
        tokens.append(contentsOf: source.tokens[..<n])
    }

    /// Length of the common prefix of `tokens` and the cached tokens.
    public func commonPrefixLength(with other: [Int32]) -> Int {
        var i = 0
        while i < count, i < other.count, tokens[i] == other[i] { i += 1 }
        return i
    }

    /// Bytes of key/value storage currently allocated.
    public var allocatedBytes: Int { 2 * numLayers * capacity * kvDim * MemoryLayout<Float>.size }
}
