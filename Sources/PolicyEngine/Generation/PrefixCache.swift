import Foundation

/// Keys and values of token prefixes that many sequences start with, computed once and copied into each
/// new sequence's cache, so a later sequence never recomputes them.
///
/// Causal attention makes the keys and values of positions 0..<k depend on tokens 0..<k only, so an entry
/// serves every sequence whose first k tokens equal its first k tokens (the longest common prefix counts,
/// not only whole entries). Entries are held in their own caches (copies, never shared with a running
/// sequence) and evicted least recently used first once their bytes pass `capacityBytes`; pinned entries
/// (the protocol's fixed prefix, filled at load) are never evicted.
///
/// A cache belongs to one model (its weights): a new model, e.g. after a swap, gets a new `PrefixCache`, so
/// keys and values of old weights are never used. Thread-safe.
public final class PrefixCache: @unchecked Sendable {  // mutable state guarded by `lock`
    public let model: TransformerModel
    /// Upper bound of the bytes of keys and values held (0 disables the cache).
    public let capacityBytes: Int
    /// Shorter common prefixes are not worth a lookup hit (copying is cheap, but the entry's LRU slot is not).
    public static let minimumReuse = 4

    private let lock = NSLock()
    private var entries: [Entry] = []
    private var clock: UInt64 = 0
    private var stats = Statistics()

    private final class Entry {
        let tokens: [Int32]
        let cache: KVCache
        let pinned: Bool
        var lastUse: UInt64
        var bytes: Int { cache.allocatedBytes }
        init(tokens: [Int32], cache: KVCache, pinned: Bool, lastUse: UInt64) {
            self.tokens = tokens
            self.cache = cache
            self.pinned = pinned
            self.lastUse = lastUse
        }
    }

    /// Counters since creation.
    public struct Statistics: Sendable, Equatable {
        /// Prompt positions copied from an entry instead of computed.
        public var reusedTokens = 0
        /// Lookups that reused at least `minimumReuse` positions / that found nothing.
        public var hits = 0, misses = 0
        public var insertions = 0, evictions = 0
        public var entries = 0, bytes = 0
    }

    public init(model: TransformerModel, capacityBytes: Int) {
        self.model = model
        self.capacityBytes = max(0, capacityBytes)
    }

    public var statistics: Statistics {
        lock.withLock {
            var s = stats
            s.entries = entries.count
            s.bytes = entries.reduce(0) { $0 + $1.bytes }
            return s
        }
    }

    /// Bytes of keys and values one position takes in this model.
    public var bytesPerPosition: Int { 2 * model.config.numHiddenLayers * model.config.kvDim * MemoryLayout<Float>.size }

    /// The number of leading positions of `tokens` an entry holds (without using it).
    public func matchLength(_ tokens: [Int32]) -> Int {
        lock.withLock { best(for: tokens).length }
    }

    /// Fills the empty `cache` with the longest cached prefix of `tokens`, at most `limit` positions; returns
    /// how many positions it holds now (0: nothing reusable, the cache is left empty).
    public func restore(_ tokens: [Int32], into cache: KVCache, limit: Int) throws -> Int {
        precondition(cache.count == 0, "PrefixCache.restore needs an empty cache")
        lock.lock()
        defer { lock.unlock() }
        let (entry, length) = best(for: tokens)
        let n = min(length, limit)
        guard let entry, n >= Self.minimumReuse else {
            stats.misses += 1
            return 0
        }
        clock += 1
        entry.lastUse = clock
        try cache.load(prefix: n, of: entry.cache)
        stats.hits += 1
        stats.reusedTokens += n
        return n
    }

    /// Keeps a copy of the first `tokens.count` positions of `source` (which must hold exactly those tokens
    /// first). Skipped when an entry already covers them or they do not fit; an unpinned entry that is a
    /// prefix of `tokens` is replaced (the new one serves everything it served).
    public func insert(_ tokens: [Int32], from source: KVCache, pinned: Bool = false) throws {
        guard capacityBytes > 0, tokens.count >= Self.minimumReuse, tokens.count <= source.count,
            source.tokens.starts(with: tokens)
        else { return }
        let bytes = tokens.count * bytesPerPosition
        guard bytes <= capacityBytes else { return }
        lock.lock()
        defer { lock.unlock() }
        if best(for: tokens).length == tokens.count { return }
        let copy = KVCache(
            numLayers: source.numLayers, kvDim: source.kvDim, maxPositions: source.maxPositions,
            initialCapacity: tokens.count)
        try copy.load(prefix: tokens.count, of: source)
        entries.removeAll { !$0.pinned && $0.tokens.count < tokens.count && tokens.starts(with: $0.tokens) }
        clock += 1
        entries.append(Entry(tokens: tokens, cache: copy, pinned: pinned, lastUse: clock))
        stats.insertions += 1
        evict()
    }

    /// Computes `tokens` through the model and keeps them (pinned unless told otherwise): the fixed prefix
    /// every sequence of a protocol starts with.
    public func prefill(_ tokens: [Int32], pinned: Bool = true) throws {
        guard capacityBytes > 0, !tokens.isEmpty else { return }
        let cache = model.makeCache(initialCapacity: tokens.count)
        let reused = try restore(tokens, into: cache, limit: tokens.count)
        if reused < tokens.count {
            _ = try model.prefill(tokens: Array(tokens[reused...]), cache: cache)
        }
        try insert(tokens, from: cache, pinned: pinned)
    }

    /// Drops every entry.
    public func removeAll() { lock.withLock { entries.removeAll() } }

    // MARK: private (lock held)

    private func best(for tokens: [Int32]) -> (entry: Entry?, length: Int) {
        var bestEntry: Entry?
        var bestLength = 0
        for e in entries {
            let limit = min(e.tokens.count, tokens.count)
            guard limit > bestLength else { continue }
            var i = 0
            e.tokens.withUnsafeBufferPointer { a in
                tokens.withUnsafeBufferPointer { b in
                    while i < limit, a[i] == b[i] { i += 1 }
                }
            }
            if i > bestLength {
                bestLength = i
                bestEntry = e
            }
        }
        return (bestEntry, bestLength)
    }

    private func evict() {
        var total = entries.reduce(0) { $0 + $1.bytes }
        while total > capacityBytes {
            guard let i = entries.indices.filter({ !entries[$0].pinned }).min(by: { entries[$0].lastUse < entries[$1].lastUse })
            else { return }
            total -= entries[i].bytes
            entries.remove(at: i)
            stats.evictions += 1
        }
    }
}
