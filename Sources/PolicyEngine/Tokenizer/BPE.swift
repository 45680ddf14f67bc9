import Foundation

// Byte-level BPE model: vocabulary keyed by the raw bytes a token stands for, a merge table
// keyed by (left id, right id) -> (rank, merged id), the same priority-queue merge order as
// Hugging Face tokenizers (lowest rank first, leftmost first among equal ranks), and a word cache.

/// Open-addressing hash table from a packed id pair to a packed (rank, new id).
struct PairTable: Sendable {
    private var keys: [UInt64]
    private var values: [UInt64]
    private var mask: Int
    private(set) var count = 0
    private static let empty = UInt64.max

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        keys = [UInt64](repeating: PairTable.empty, count: size)
        values = [UInt64](repeating: 0, count: size)
        mask = size - 1
    }

    @inline(__always)
    private static func slot(_ key: UInt64, _ mask: Int) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 29) & mask
    }

    /// Inserts or overwrites (later merges with the same pair win, as in HF's HashMap collect).
    mutating func set(_ key: UInt64, _ value: UInt64) {
        var i = PairTable.slot(key, mask)
        while true {
            if keys[i] == PairTable.empty {
                keys[i] = key
                values[i] = value
                count += 1
                return
            }
            if keys[i] == key {
                values[i] = value
                return
            }
            i = (i + 1) & mask
        }
    }

    @inline(__always)
    func get(_ key: UInt64) -> UInt64? {
        var i = PairTable.slot(key, mask)
        while true {
            let k = keys[i]
            if k == key { return values[i] }
            if k == PairTable.empty { return nil }
            i = (i + 1) & mask
        }
    }
}

/// 64-bit hash of a byte string (8 bytes per step; words are short).
@inline(__always)
func hashBytes(_ p: UnsafeBufferPointer<UInt8>) -> UInt64 {
    let n = p.count
    var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(n)
    var i = 0
    if let base = p.baseAddress {
        let raw = UnsafeRawPointer(base)
        while i + 8 <= n {
            h = (h ^ raw.loadUnaligned(fromByteOffset: i, as: UInt64.self)) &* 0xBF58_476D_1CE4_E5B9
            h ^= h >> 31
            i += 8
        }
    }
    var tail: UInt64 = 0
    var shift: UInt64 = 0
    while i < n {
        tail |= UInt64(p[i]) << shift
        shift += 8
        i += 1
    }
    h = (h ^ tail) &* 0x94D0_49BB_1331_11EB
    return h ^ (h >> 29)
}

/// Thread-safe word -> ids cache. Keys and values live in flat arenas and lookups take a
/// borrowed byte slice, so a cache hit allocates nothing. Cleared when full.
final class BPECache: @unchecked Sendable {
    // @unchecked: every access to the mutable state below happens under `lock`.
    private let lock = NSLock()
    private var slots: [Int32]  // entry index or -1
    private var mask: Int
    private var hashes: [UInt64] = []
    private var keyStart: [Int32] = []
    private var keyLen: [Int32] = []
    private var valStart: [Int32] = []
    private var valLen: [Int32] = []
    private var keyArena: [UInt8] = []
    private var valArena: [Int32] = []
    private let maxEntries: Int

    init(maxEntries: Int) {
        self.maxEntries = maxEntries
        var size = 1024
        while size < maxEntries * 2 { size <<= 1 }
        slots = [Int32](repeating: -1, count: size)
        mask = size - 1
    }

    /// Appends the cached ids of `key` to `out` and returns true, or returns false.
    func lookup(_ key: UnsafeBufferPointer<UInt8>, hash: UInt64, into out: inout [Int32]) -> Bool {
        lock.lock()
        defer { lock.unlock() }
        var i = Int(truncatingIfNeeded: hash) & mask
        while true {
            let e = Int(slots[i])
            if e < 0 { return false }
            if hashes[e] == hash && Int(keyLen[e]) == key.count {
                let ks = Int(keyStart[e])
                var same = true
                keyArena.withUnsafeBufferPointer { arena in
                    same = memcmp(arena.baseAddress! + ks, key.baseAddress!, key.count) == 0
                }
                if same {
                    let vs = Int(valStart[e])
                    out.append(contentsOf: valArena[vs..<(vs + Int(valLen[e]))])
                    return true
                }
            }
            i = (i + 1) & mask
        }
    }

    func insert(_ key: UnsafeBufferPointer<UInt8>, hash: UInt64, _ value: ArraySlice<Int32>) {
        lock.lock()
        defer { lock.unlock() }
        if hashes.count >= maxEntries {
            for k in slots.indices { slots[k] = -1 }
            hashes.removeAll(keepingCapacity: true)
            keyStart.removeAll(keepingCapacity: true)
            keyLen.removeAll(keepingCapacity: true)
            valStart.removeAll(keepingCapacity: true)
            valLen.removeAll(keepingCapacity: true)
            keyArena.removeAll(keepingCapacity: true)
            valArena.removeAll(keepingCapacity: true)
        }
        var i = Int(truncatingIfNeeded: hash) & mask
        while slots[i] >= 0 { i = (i + 1) & mask }
        slots[i] = Int32(hashes.count)
        hashes.append(hash)
        keyStart.append(Int32(keyArena.count))
        keyLen.append(Int32(key.count))
        keyArena.append(contentsOf: key)
        valStart.append(Int32(valArena.count))
        valLen.append(Int32(value.count))
        valArena.append(contentsOf: value)
    }
}

struct BPEModel: Sendable {
    /// raw token bytes -> id, for tokens made of byte-level alphabet scalars.
    let vocab: [[UInt8]: Int32]
    /// id of the single-byte token for each byte (-1 if missing).
    let byteIds: [Int32]
    let merges: PairTable
    let ignoreMerges: Bool
    let unkId: Int32?
    let cache: BPECache

    /// Parses `model` of tokenizer.json. `tokenBytes[id]` is filled for every vocab entry.
    static func parse(_ model: JSONValue) throws -> (BPEModel, vocabStrings: [(String, Int32)]) {
        let type = model["type"]?.stringValue ?? "BPE"
        guard type == "BPE" else { throw TokenizerError.unsupported(field: "model.type", value: type) }
        if let p = model["continuing_subword_prefix"], !p.isNull, p.stringValue != "" {
            throw TokenizerError.unsupported(field: "model.continuing_subword_prefix", value: p.stringValue ?? "?")
        }
        if let s = model["end_of_word_suffix"], !s.isNull, s.stringValue != "" {
            throw TokenizerError.unsupported(field: "model.end_of_word_suffix", value: s.stringValue ?? "?")
        }
        guard let vocabJSON = model["vocab"]?.objectValue else {
            throw TokenizerError.invalidField(field: "model.vocab", reason: "missing or not an object")
        }
        var vocab: [[UInt8]: Int32] = [:]
        vocab.reserveCapacity(vocabJSON.count)
        // Exact token string (UTF-8) -> id, used to resolve merges.
        var byString: [[UInt8]: Int32] = [:]
        byString.reserveCapacity(vocabJSON.count)
        var strings: [(String, Int32)] = []
        strings.reserveCapacity(vocabJSON.count)
        for (tok, v) in vocabJSON {
            guard let idInt = v.intValue, idInt >= 0, idInt <= Int(Int32.max) else {
                throw TokenizerError.invalidField(field: "model.vocab[\(tok.debugDescription)]", reason: "id is not a non-negative integer")
            }
            let id = Int32(idInt)
            byString[Array(tok.utf8)] = id
            strings.append((tok, id))
            if let bytes = ByteLevelAlphabet.bytes(ofToken: tok), !bytes.isEmpty {
                vocab[bytes] = id
            }
        }
        var byteIds = [Int32](repeating: -1, count: 256)
        for b in 0..<256 {
            if let id = vocab[[UInt8(b)]] { byteIds[b] = id }
        }
        var unkId: Int32? = nil
        if let unk = model["unk_token"]?.stringValue {
            guard let id = byString[Array(unk.utf8)] else {
                throw TokenizerError.invalidField(field: "model.unk_token", reason: "token \(unk.debugDescription) is not in the vocab")
            }
            unkId = id
        }

        let mergesJSON = model["merges"]?.arrayValue ?? []
        var table = PairTable(capacity: mergesJSON.count)
        for (rank, m) in mergesJSON.enumerated() {
            let a: String
            let b: String
            if let s = m.stringValue {
                // "a b" form: exactly one separating space (HF splits on ' ' and requires 2 parts).
                let parts = s.split(separator: " ", omittingEmptySubsequences: false)
                guard parts.count == 2 else {
                    throw TokenizerError.invalidField(field: "model.merges[\(rank)]", reason: "expected \"a b\", got \(s.debugDescription)")
                }
                a = String(parts[0])
                b = String(parts[1])
            } else if let arr = m.arrayValue, arr.count == 2, let x = arr[0].stringValue, let y = arr[1].stringValue {
                a = x
                b = y
            } else {
                throw TokenizerError.invalidField(
                    field: "model.merges[\(rank)]", reason: "expected a string \"a b\" or a pair [\"a\", \"b\"]")
            }
            let ab = Array(a.utf8)
            let bb = Array(b.utf8)
            guard let ia = byString[ab] else {
                throw TokenizerError.invalidField(field: "model.merges[\(rank)]", reason: "token \(a.debugDescription) is not in the vocab")
            }
            guard let ib = byString[bb] else {
                throw TokenizerError.invalidField(field: "model.merges[\(rank)]", reason: "token \(b.debugDescription) is not in the vocab")
            }
            guard let inew = byString[ab + bb] else {
                throw TokenizerError.invalidField(
                    field: "model.merges[\(rank)]", reason: "merged token \((a + b).debugDescription) is not in the vocab")
            }
            table.set(pairKey(ia, ib), UInt64(rank) << 32 | UInt64(UInt32(bitPattern: inew)))
        }
        let ignoreMerges = model["ignore_merges"]?.boolValue ?? false
        let bpe = BPEModel(
            vocab: vocab, byteIds: byteIds, merges: table, ignoreMerges: ignoreMerges,
            unkId: unkId, cache: BPECache(maxEntries: 1 << 17))
        return (bpe, strings)
    }

    @inline(__always)
    static func pairKey(_ a: Int32, _ b: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))
    }

    /// Tokenizes one pre-tokenized word (raw bytes), appending ids to `out`.
    func tokenize(_ word: UnsafeBufferPointer<UInt8>, into out: inout [Int32], scratch: inout BPEScratch) {
        if word.count == 1 {
            let id = byteIds[Int(word[0])]
            if id >= 0 { out.append(id) } else if let unkId { out.append(unkId) }
            return
        }
        let hash = hashBytes(word)
        if cache.lookup(word, hash: hash, into: &out) { return }
        let start = out.count
        if ignoreMerges, let id = vocab[Array(word)] {
            out.append(id)
        } else {
            merge(word, &out, &scratch)
        }
        cache.insert(word, hash: hash, out[start...])
    }

    /// HF `Word::merge_all` with a binary heap of (rank, position).
    private func merge(_ word: UnsafeBufferPointer<UInt8>, _ out: inout [Int32], _ s: inout BPEScratch) {
        s.ids.removeAll(keepingCapacity: true)
        for b in word {
            let id = byteIds[Int(b)]
            if id >= 0 { s.ids.append(id) } else if let unkId { s.ids.append(unkId) }
        }
        let n = s.ids.count
        if n <= 1 {
            out.append(contentsOf: s.ids)
            return
        }
        s.prev.removeAll(keepingCapacity: true)
        s.next.removeAll(keepingCapacity: true)
        s.alive.removeAll(keepingCapacity: true)
        for i in 0..<n {
            s.prev.append(Int32(i - 1))
            s.next.append(i + 1 < n ? Int32(i + 1) : -1)
            s.alive.append(true)
        }
        var heap = MinHeap(storage: s.heap)
        heap.removeAll()
        for i in 0..<(n - 1) {
            if let m = merges.get(BPEModel.pairKey(s.ids[i], s.ids[i + 1])) {
                heap.push((m >> 32) << 32 | UInt64(i))
            }
        }
        while let top = heap.pop() {
            let rank = top >> 32
            let pos = Int(top & 0xFFFF_FFFF)
            guard s.alive[pos] else { continue }
            let nextPos = Int(s.next[pos])
            guard nextPos >= 0 else { continue }
            // Skip stale entries: the pair at `pos` must still merge with this rank.
            guard let m = merges.get(BPEModel.pairKey(s.ids[pos], s.ids[nextPos])), m >> 32 == rank else { continue }
            let newId = Int32(bitPattern: UInt32(truncatingIfNeeded: m))
            s.ids[pos] = newId
            s.alive[nextPos] = false
            let after = s.next[nextPos]
            s.next[pos] = after
            if after >= 0 { s.prev[Int(after)] = Int32(pos) }
            let before = s.prev[pos]
            if before >= 0, let pm = merges.get(BPEModel.pairKey(s.ids[Int(before)], newId)) {
                heap.push((pm >> 32) << 32 | UInt64(before))
            }
            if after >= 0, let nm = merges.get(BPEModel.pairKey(newId, s.ids[Int(after)])) {
                heap.push((nm >> 32) << 32 | UInt64(pos))
            }
        }
        s.heap = heap.storage
        for i in 0..<n where s.alive[i] { out.append(s.ids[i]) }
    }
}

/// Scratch buffers reused across words within one encode call.
struct BPEScratch {
    var ids: [Int32] = []
    var prev: [Int32] = []
    var next: [Int32] = []
    var alive: [Bool] = []
    var heap: [UInt64] = []
}

/// Binary min-heap of packed (rank << 32 | position) keys.
struct MinHeap {
    var storage: [UInt64]

    mutating func removeAll() { storage.removeAll(keepingCapacity: true) }

    mutating func push(_ v: UInt64) {
        storage.append(v)
        var i = storage.count - 1
        while i > 0 {
            let p = (i - 1) >> 1
            if storage[p] <= storage[i] { break }
            storage.swapAt(p, i)
            i = p
        }
    }

    mutating func pop() -> UInt64? {
        guard let first = storage.first else { return nil }
        let last = storage.removeLast()
        if !storage.isEmpty {
            storage[0] = last
            var i = 0
            let n = storage.count
            while true {
                let l = 2 * i + 1
                if l >= n { break }
                var c = l
                if l + 1 < n && storage[l + 1] < storage[l] { c = l + 1 }
                if storage[i] <= storage[c] { break }
                storage.swapAt(i, c)
                i = c
            }
        }
        return first
    }
}
