import Foundation

/// Errors raised while loading a tokenizer. Messages name the offending file / field / token.
public enum TokenizerError: Error, CustomStringConvertible, Sendable {
    case fileNotFound(path: String)
    case invalidJSON(file: String, message: String)
    case invalidField(field: String, reason: String)
    case unsupported(field: String, value: String)

    public var description: String {
        switch self {
        case .fileNotFound(let path): return "tokenizer file not found: \(path)"
        case .invalidJSON(let file, let message): return "\(file): invalid JSON: \(message)"
        case .invalidField(let field, let reason): return "tokenizer field \(field): \(reason)"
        case .unsupported(let field, let value): return "tokenizer field \(field): unsupported value \(value.debugDescription)"
        }
    }
}

/// A Hugging Face "fast" byte-level BPE tokenizer (tokenizer.json), as used by Qwen2/Qwen3 and
/// Llama 3 checkpoints. `encode` / `decode` produce the same ids / text as `tokenizers`
/// (transformers' `encode(add_special_tokens=...)` and `decode(...)`).
public final class Tokenizer: Sendable {
    private let model: BPEModel
    private let normalizer: Normalizer
    private let preTokenizer: PreTokenizer
    private let fastPattern: SplitPattern?
    /// Added tokens with normalized == false, matched on the raw text.
    private let rawMatcher: AddedTokenMatcher
    /// Added tokens with normalized == true, matched on each normalized piece.
    private let normalizedMatcher: AddedTokenMatcher
    private let addedTokens: [AddedToken]
    private let addedIndexById: [Int32: Int]
    /// Token string (as in tokenizer.json) by id; nil for unused ids.
    private let tokenStrings: [String?]
    /// UTF-8 of a token string -> id (added tokens override vocab entries).
    private let idByTokenString: [[UInt8]: Int32]
    /// Bytes each id contributes to `decode` (HF ByteLevel decoder rule), flattened.
    private let decodeBytesFlat: [UInt8]
    private let decodeOffsets: [Int32]
    private let specialFlags: [Bool]
    /// Ids added around a single sequence by the post-processor when addSpecialTokens is true.
    private let postPrefix: [Int32]
    private let postSuffix: [Int32]

    /// Number of ids (max id + 1 over the vocab and the added tokens).
    public let vocabSize: Int
    public let bosTokenId: Int32?
    public let eosTokenId: Int32?
    public let padTokenId: Int32?
    public let unkTokenId: Int32?
    public let bosToken: String?
    public let eosToken: String?
    public let padToken: String?
    /// The checkpoint's Jinja chat template (chat_template.jinja or tokenizer_config.json).
    public let chatTemplate: String?
    /// Ids of all special added tokens.
    public let specialTokenIds: Set<Int32>

    /// Loads tokenizer.json, tokenizer_config.json (optional) and chat_template.jinja (optional)
    /// from a checkpoint folder.
    public convenience init(directory: URL) throws {
        let tokURL = directory.appendingPathComponent("tokenizer.json")
        guard FileManager.default.fileExists(atPath: tokURL.path) else {
            throw TokenizerError.fileNotFound(path: tokURL.path)
        }
        let tokData = try Data(contentsOf: tokURL)
        let cfgURL = directory.appendingPathComponent("tokenizer_config.json")
        let cfgData = FileManager.default.fileExists(atPath: cfgURL.path) ? try Data(contentsOf: cfgURL) : nil
        let jinjaURL = directory.appendingPathComponent("chat_template.jinja")
        var template: String? = nil
        if FileManager.default.fileExists(atPath: jinjaURL.path) {
            template = String(decoding: try Data(contentsOf: jinjaURL), as: UTF8.self)
        }
        try self.init(tokenizerJSON: tokData, configJSON: cfgData, chatTemplateOverride: template)
    }

    public convenience init(tokenizerJSON: Data, configJSON: Data?) throws {
        try self.init(tokenizerJSON: tokenizerJSON, configJSON: configJSON, chatTemplateOverride: nil)
    }

    init(tokenizerJSON: Data, configJSON: Data?, chatTemplateOverride: String?) throws {
        let root: JSONValue
        do {
            root = try JSONReader.parse([UInt8](tokenizerJSON))
        } catch {
            throw TokenizerError.invalidJSON(file: "tokenizer.json", message: "\(error)")
        }
        guard let modelJSON = root["model"] else {
            throw TokenizerError.invalidField(field: "model", reason: "missing")
        }
        let (bpe, vocabStrings) = try BPEModel.parse(modelJSON)
        model = bpe
        normalizer = try Normalizer.parse(root["normalizer"])
        preTokenizer = try PreTokenizer.parse(root["pre_tokenizer"])
        fastPattern = preTokenizer.fastPattern
        guard preTokenizer.hasByteLevel else {
            throw TokenizerError.unsupported(
                field: "pre_tokenizer",
                value: "no ByteLevel step (only byte-level BPE tokenizers are supported)")
        }
        try Tokenizer.checkDecoder(root["decoder"], path: "decoder")

        // Added tokens.
        var added: [AddedToken] = []
        for (i, t) in (root["added_tokens"]?.arrayValue ?? []).enumerated() {
            guard let idInt = t["id"]?.intValue, idInt >= 0, idInt <= Int(Int32.max) else {
                throw TokenizerError.invalidField(field: "added_tokens[\(i)].id", reason: "missing or not a non-negative integer")
            }
            guard let content = t["content"]?.stringValue else {
                throw TokenizerError.invalidField(field: "added_tokens[\(i)].content", reason: "missing or not a string")
            }
            let special = t["special"]?.boolValue ?? false
            added.append(
                AddedToken(
                    id: Int32(idInt), content: content, bytes: Array(content.utf8),
                    singleWord: t["single_word"]?.boolValue ?? false,
                    lstrip: t["lstrip"]?.boolValue ?? false,
                    rstrip: t["rstrip"]?.boolValue ?? false,
                    normalized: t["normalized"]?.boolValue ?? !special,
                    special: special))
        }
        addedTokens = added
        var addedIndex: [Int32: Int] = [:]
        for (i, t) in added.enumerated() { addedIndex[t.id] = i }
        addedIndexById = addedIndex
        let rawTokens = added.filter { !$0.normalized }
        rawMatcher = AddedTokenMatcher(tokens: rawTokens, patterns: rawTokens.map { $0.bytes })
        let normTokens = added.filter { $0.normalized }
        let norm = normalizer
        normalizedMatcher = AddedTokenMatcher(
            tokens: normTokens,
            patterns: normTokens.map { t in
                t.bytes.withUnsafeBufferPointer { norm.apply($0) } ?? t.bytes
            })

        // Id tables.
        var maxId: Int32 = -1
        for (_, id) in vocabStrings { maxId = max(maxId, id) }
        for t in added { maxId = max(maxId, t.id) }
        let size = Int(maxId) + 1
        vocabSize = size
        var strings = [String?](repeating: nil, count: size)
        var byString: [[UInt8]: Int32] = [:]
        byString.reserveCapacity(vocabStrings.count + added.count)
        for (s, id) in vocabStrings {
            strings[Int(id)] = s
            byString[Array(s.utf8)] = id
        }
        for t in added {
            strings[Int(t.id)] = t.content
            byString[t.bytes] = t.id
        }
        tokenStrings = strings
        idByTokenString = byString

        let specialContents = Set(added.filter { $0.special }.map { $0.bytes })
        var flags = [Bool](repeating: false, count: size)
        var flat: [UInt8] = []
        var offsets = [Int32](repeating: 0, count: size + 1)
        for id in 0..<size {
            offsets[id] = Int32(flat.count)
            guard let s = strings[id] else { continue }
            let utf8 = Array(s.utf8)
            if !specialContents.isEmpty && specialContents.contains(utf8) { flags[id] = true }
            flat.append(contentsOf: ByteLevelAlphabet.bytes(ofToken: s) ?? utf8)
        }
        offsets[size] = Int32(flat.count)
        decodeBytesFlat = flat
        decodeOffsets = offsets
        specialFlags = flags
        specialTokenIds = Set(added.filter { $0.special }.map { $0.id })

        // Post-processor.
        let (prefix, suffix) = try Tokenizer.parsePostProcessor(
            root["post_processor"], path: "post_processor",
            idOf: { byString[Array($0.utf8)] })
        postPrefix = prefix
        postSuffix = suffix

        // tokenizer_config.json
        var config: JSONValue = .object([])
        if let configJSON {
            do {
                config = try JSONReader.parse([UInt8](configJSON))
            } catch {
                throw TokenizerError.invalidJSON(file: "tokenizer_config.json", message: "\(error)")
            }
        }
        func specialToken(_ key: String) throws -> (String?, Int32?) {
            guard let v = config[key], !v.isNull else { return (nil, nil) }
            let content: String
            if let s = v.stringValue {
                content = s
            } else if let s = v["content"]?.stringValue {
                content = s
            } else {
                throw TokenizerError.invalidField(
                    field: "tokenizer_config.json \(key)",
                    reason: "expected a string or an object with \"content\", got \(v.typeName)")
            }
            guard let id = byString[Array(content.utf8)] else {
                throw TokenizerError.invalidField(
                    field: "tokenizer_config.json \(key)",
                    reason: "token \(content.debugDescription) is not in the vocabulary")
            }
            return (content, id)
        }
        (bosToken, bosTokenId) = try specialToken("bos_token")
        (eosToken, eosTokenId) = try specialToken("eos_token")
        (padToken, padTokenId) = try specialToken("pad_token")
        unkTokenId = try specialToken("unk_token").1 ?? bpe.unkId

        if let chatTemplateOverride {
            chatTemplate = chatTemplateOverride
        } else if let t = config["chat_template"] {
            if let s = t.stringValue {
                chatTemplate = s
            } else if let list = t.arrayValue {
                // [{"name": ..., "template": ...}]: use "default" or the first one.
                let named = list.first { $0["name"]?.stringValue == "default" } ?? list.first
                chatTemplate = named?["template"]?.stringValue
            } else {
                chatTemplate = nil
            }
        } else {
            chatTemplate = nil
        }
    }

    private static func checkDecoder(_ json: JSONValue?, path: String) throws {
        guard let json, !json.isNull else {
            throw TokenizerError.unsupported(field: path, value: "null (a ByteLevel decoder is required)")
        }
        let type = json["type"]?.stringValue ?? ""
        switch type {
        case "ByteLevel":
            return
        case "Sequence":
            let items = json["decoders"]?.arrayValue ?? []
            if items.isEmpty {
                throw TokenizerError.unsupported(field: "\(path).decoders", value: "empty")
            }
            for (i, item) in items.enumerated() { try checkDecoder(item, path: "\(path).decoders[\(i)]") }
        default:
            throw TokenizerError.unsupported(field: "\(path).type", value: type)
        }
    }

    /// Returns the ids added before and after a single sequence.
    private static func parsePostProcessor(
        _ json: JSONValue?, path: String,
        idOf: (String) -> Int32?
    ) throws -> ([Int32], [Int32]) {
        guard let json, !json.isNull else { return ([], []) }
        let type = json["type"]?.stringValue ?? ""
        func tokenId(_ s: String, _ field: String) throws -> Int32 {
            guard let id = idOf(s) else {
                throw TokenizerError.invalidField(field: field, reason: "token \(s.debugDescription) is not in the vocabulary")
            }
            return id
        }
        switch type {
        case "ByteLevel":
            return ([], [])
        case "Sequence":
            var prefix: [Int32] = []
            var suffix: [Int32] = []
            for (i, p) in (json["processors"]?.arrayValue ?? []).enumerated() {
                let (pre, suf) = try parsePostProcessor(p, path: "\(path).processors[\(i)]", idOf: idOf)
                prefix = pre + prefix
                suffix = suffix + suf
            }
            return (prefix, suffix)
        case "TemplateProcessing":
            guard let single = json["single"]?.arrayValue else {
                throw TokenizerError.invalidField(field: "\(path).single", reason: "missing or not an array")
            }
            var specials: [(String, [Int32])] = []
            if let st = json["special_tokens"]?.objectValue {
                for (name, v) in st {
                    let ids = (v["ids"]?.arrayValue ?? []).compactMap { $0.intValue }.map { Int32($0) }
                    specials.append((name, ids))
                }
            }
            var prefix: [Int32] = []
            var suffix: [Int32] = []
            var seenSequence = false
            for (i, item) in single.enumerated() {
                if item["Sequence"] != nil {
                    seenSequence = true
                } else if let sp = item["SpecialToken"], let name = sp["id"]?.stringValue {
                    let ids: [Int32]
                    if let entry = specials.first(where: { $0.0 == name }) {
                        ids = entry.1
                    } else {
                        throw TokenizerError.invalidField(
                            field: "\(path).single[\(i)]",
                            reason: "special token \(name.debugDescription) missing from special_tokens")
                    }
                    if seenSequence { suffix += ids } else { prefix += ids }
                } else {
                    throw TokenizerError.invalidField(field: "\(path).single[\(i)]", reason: "expected Sequence or SpecialToken")
                }
            }
            return (prefix, suffix)
        case "RobertaProcessing", "BertProcessing":
            guard let cls = json["cls"]?.arrayValue?.first?.stringValue,
                let sep = json["sep"]?.arrayValue?.first?.stringValue
            else {
                throw TokenizerError.invalidField(field: "\(path).cls/sep", reason: "missing")
            }
            return ([try tokenId(cls, "\(path).cls")], [try tokenId(sep, "\(path).sep")])
        default:
            throw TokenizerError.unsupported(field: "\(path).type", value: type)
        }
    }

    // MARK: - Encoding

    /// Encodes text to ids (HF `encode(text, add_special_tokens:)`).
    public func encode(_ text: String, addSpecialTokens: Bool = false) -> [Int32] {
        var out: [Int32] = []
        if addSpecialTokens { out.append(contentsOf: postPrefix) }
        var text = text
        text.withUTF8 { buf in
            out.reserveCapacity(buf.count / 3)
            var state = EncodeState()
            for (r, id) in rawMatcher.split(buf) {
                if let id {
                    out.append(id)
                } else {
                    encodeSegment(UnsafeBufferPointer(rebasing: buf[r]), &out, &state)
                }
            }
        }
        if addSpecialTokens { out.append(contentsOf: postSuffix) }
        return out
    }

    private struct EncodeState {
        var scan = ScanScratch()
        var bpe = BPEScratch()
    }

    /// Normalizes a segment without raw added tokens, extracts normalized added tokens, then
    /// pre-tokenizes and runs BPE on the remaining pieces.
    private func encodeSegment(_ seg: UnsafeBufferPointer<UInt8>, _ out: inout [Int32], _ state: inout EncodeState) {
        if let normalized = normalizer.apply(seg) {
            normalized.withUnsafeBufferPointer { encodeNormalized($0, &out, &state) }
        } else {
            encodeNormalized(seg, &out, &state)
        }
    }

    private func encodeNormalized(_ seg: UnsafeBufferPointer<UInt8>, _ out: inout [Int32], _ state: inout EncodeState) {
        for (r, id) in normalizedMatcher.split(seg) {
            if let id {
                out.append(id)
                continue
            }
            if let fastPattern {
                fastPattern.scan(seg, r) { w, _ in
                    model.tokenize(UnsafeBufferPointer(rebasing: seg[w]), into: &out, scratch: &state.bpe)
                }
                continue
            }
            var buffer = Array(UnsafeBufferPointer(rebasing: seg[r]))
            var ranges = [0..<buffer.count]
            preTokenizer.run(buffer: &buffer, ranges: &ranges, scratch: &state.scan)
            buffer.withUnsafeBufferPointer { buf in
                for w in ranges {
                    model.tokenize(UnsafeBufferPointer(rebasing: buf[w]), into: &out, scratch: &state.bpe)
                }
            }
        }
    }

    /// The pre-tokenized words of `text` (after added-token extraction and normalization) as
    /// strings; added tokens appear as their content. Exposed for tests and debugging.
    public func preTokenize(_ text: String) -> [String] {
        var words: [String] = []
        var text = text
        text.withUTF8 { buf in
            var scratch = ScanScratch()
            for (r, id) in rawMatcher.split(buf) {
                if let id {
                    words.append(tokenStrings[Int(id)] ?? "")
                    continue
                }
                let seg = UnsafeBufferPointer(rebasing: buf[r])
                let normalized = normalizer.apply(seg) ?? Array(seg)
                normalized.withUnsafeBufferPointer { nbuf in
                    for (r2, id2) in normalizedMatcher.split(nbuf) {
                        if let id2 {
                            words.append(tokenStrings[Int(id2)] ?? "")
                            continue
                        }
                        var buffer = Array(UnsafeBufferPointer(rebasing: nbuf[r2]))
                        var ranges = [0..<buffer.count]
                        preTokenizer.run(buffer: &buffer, ranges: &ranges, scratch: &scratch)
                        for w in ranges { words.append(String(decoding: buffer[w], as: UTF8.self)) }
                    }
                }
            }
        }
        return words
    }

    // MARK: - Decoding

    /// Decodes ids to text (HF `decode(ids, skip_special_tokens:)`): token bytes are
    /// concatenated and invalid UTF-8 is replaced by U+FFFD. Unknown ids are skipped.
    public func decode(_ ids: [Int32], skipSpecialTokens: Bool = false) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(ids.count * 4)
        for id in ids { appendDecodeBytes(id, skipSpecialTokens: skipSpecialTokens, to: &bytes) }
        return LossyUTF8.decode(bytes)
    }

    @inline(__always)
    func appendDecodeBytes(_ id: Int32, skipSpecialTokens: Bool, to bytes: inout [UInt8]) {
        guard id >= 0, Int(id) < vocabSize else { return }
        let i = Int(id)
        if skipSpecialTokens && specialFlags[i] { return }
        let s = Int(decodeOffsets[i])
        let e = Int(decodeOffsets[i + 1])
        if e > s { bytes.append(contentsOf: decodeBytesFlat[s..<e]) }
    }

    /// Raw bytes a token stands for: vocab tokens give their byte-level bytes, added tokens the
    /// UTF-8 of their content. Empty for unknown ids.
    public func tokenBytes(_ id: Int32) -> [UInt8] {
        guard id >= 0, Int(id) < vocabSize else { return [] }
        if let ai = addedIndexById[id] { return addedTokens[ai].bytes }
        let s = Int(decodeOffsets[Int(id)])
        let e = Int(decodeOffsets[Int(id) + 1])
        return Array(decodeBytesFlat[s..<e])
    }

    /// The token string as written in tokenizer.json (byte-level form for vocab tokens).
    public func token(for id: Int32) -> String? {
        guard id >= 0, Int(id) < vocabSize else { return nil }
        return tokenStrings[Int(id)]
    }

    /// Id of a token string as written in tokenizer.json (e.g. "Ġhello", "<|im_end|>").
    public func id(of token: String) -> Int32? {
        idByTokenString[Array(token.utf8)]
    }

    /// True if `id` is a special added token (skipped by `decode(skipSpecialTokens: true)`).
    public func isSpecial(_ id: Int32) -> Bool {
        guard id >= 0, Int(id) < vocabSize else { return false }
        return specialFlags[Int(id)]
    }
}

/// Incremental detokenizer: feed ids one at a time and get back only complete UTF-8 text.
/// Bytes of an incomplete character are held until completed; `flush()` emits what is left
/// with U+FFFD replacements. The concatenation of all outputs equals
/// `tokenizer.decode(ids, skipSpecialTokens:)`.
public struct StreamingDecoder: Sendable {
    public let tokenizer: Tokenizer
    public let skipSpecialTokens: Bool
    private var pending: [UInt8] = []

    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Number of bytes held back because they do not yet form a complete character.
    public var pendingByteCount: Int { pending.count }

    public mutating func feed(_ id: Int32) -> String {
        tokenizer.appendDecodeBytes(id, skipSpecialTokens: skipSpecialTokens, to: &pending)
        return drain()
    }

    public mutating func feed(_ ids: [Int32]) -> String {
        for id in ids { tokenizer.appendDecodeBytes(id, skipSpecialTokens: skipSpecialTokens, to: &pending) }
        return drain()
    }

    /// Emits the held bytes (invalid / incomplete sequences become U+FFFD) and resets.
    public mutating func flush() -> String {
        let text = LossyUTF8.decode(pending)
        pending.removeAll(keepingCapacity: true)
        return text
    }

    private mutating func drain() -> String {
        if pending.isEmpty { return "" }
        let (text, held) = pending.withUnsafeBufferPointer { LossyUTF8.decode($0, holdIncompleteTail: true) }
        if held == 0 {
            pending.removeAll(keepingCapacity: true)
        } else {
            pending.removeFirst(pending.count - held)
        }
        return text
    }
}
