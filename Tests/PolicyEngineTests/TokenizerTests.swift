import Foundation
import XCTest

@testable import PolicyEngine

/// Location of Tests/Fixtures (this file is Tests/PolicyEngineTests/TokenizerTests.swift).
let tokenizerFixturesDir = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

/// GPT-2 bytes_to_unicode, written independently of the module's table.
private func byteLevelChar(_ b: UInt8) -> String {
    var direct: [UInt8] = Array(0x21...0x7E) + Array(0xA1...0xAC) + Array(0xAE...0xFF)
    if direct.contains(b) { return String(UnicodeScalar(b)) }
    direct.sort()
    var n: UInt32 = 0
    for x in 0...255 where !direct.contains(UInt8(x)) {
        if UInt8(x) == b { return String(UnicodeScalar(256 + n)!) }
        n += 1
    }
    fatalError("unreachable")
}

private func byteLevel(_ s: String) -> String { s.utf8.map(byteLevelChar).joined() }

/// A tiny byte-level BPE tokenizer.json: the 256 byte tokens (ids 0...255), then `extra` tokens
/// and the given merges (each as ["a", "b"] in plain text; converted to byte-level form).
private func tinyTokenizerJSON(
    extra: [String], merges: [(String, String)], mergesAsStrings: Bool = false,
    ignoreMerges: Bool = false, splitRegex: String? = SplitPattern.qwen2Source,
    normalizer: String = #"{"type": "NFC"}"#, addedTokens: String = "[]",
    postProcessor: String = "null"
) -> Data {
    var vocab: [(String, Int)] = (0...255).map { (byteLevelChar(UInt8($0)), $0) }
    for (i, e) in extra.enumerated() { vocab.append((byteLevel(e), 256 + i)) }
    func q(_ s: String) -> String {
        let data = try! JSONSerialization.data(withJSONObject: [s], options: [])
        let arr = String(decoding: data, as: UTF8.self)
        return String(arr.dropFirst().dropLast())
    }
    let vocabJSON = "{" + vocab.map { "\(q($0.0)): \($0.1)" }.joined(separator: ", ") + "}"
    let mergesJSON =
        "["
        + merges.map { m in
            mergesAsStrings ? q(byteLevel(m.0) + " " + byteLevel(m.1)) : "[\(q(byteLevel(m.0))), \(q(byteLevel(m.1)))]"
        }.joined(separator: ", ") + "]"
    let pre: String
    if let splitRegex {
        pre =
            #"{"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "# + q(splitRegex)
            + #"}, "behavior": "Isolated", "invert": false}, {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}"#
    } else {
        pre = #"{"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": true}"#
    }
    let json = """
        {"version": "1.0", "truncation": null, "padding": null, "added_tokens": \(addedTokens),
         "normalizer": \(normalizer), "pre_tokenizer": \(pre), "post_processor": \(postProcessor),
         "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
         "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                   "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                   "ignore_merges": \(ignoreMerges), "vocab": \(vocabJSON), "merges": \(mergesJSON)}}
        """
    return Data(json.utf8)
}

private let helloMerges: [(String, String)] = [
    ("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (" ", "w"), ("o", "r"), (" w", "or"), ("l", "d"), (" wor", "ld"),
]
private let helloExtra = ["he", "ll", "hell", "hello", " w", "or", " wor", "ld", " world"]

final class TokenizerBPETests: XCTestCase {
    func testMergesProduceWholeWords() throws {
        let tok = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: helloExtra, merges: helloMerges), configJSON: nil)
        let hello = try XCTUnwrap(tok.id(of: "hello"))
        let world = try XCTUnwrap(tok.id(of: byteLevel(" world")))
        XCTAssertEqual(tok.encode("hello world"), [hello, world])
        // "hellx": merges stop at "hell"; "x" is the byte token 'x' (id 0x78).
        XCTAssertEqual(tok.encode("hellx"), [try XCTUnwrap(tok.id(of: "hell")), 0x78])
        XCTAssertEqual(tok.decode(tok.encode("hello world, hellx")), "hello world, hellx")
        XCTAssertEqual(tok.vocabSize, 256 + helloExtra.count)
    }

    func testStringAndArrayMergeFormsAgree() throws {
        let a = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: helloExtra, merges: helloMerges), configJSON: nil)
        let b = try Tokenizer(
            tokenizerJSON: tinyTokenizerJSON(extra: helloExtra, merges: helloMerges, mergesAsStrings: true),
            configJSON: nil)
        for text in ["hello world", "worldhello", " hello  world\n", "héllo wörld"] {
            XCTAssertEqual(a.encode(text), b.encode(text), text)
        }
        XCTAssertEqual(a.encode("hello"), [try XCTUnwrap(a.id(of: "hello"))])
    }

    func testMergeRankOrderDecides() throws {
        // "abc" with merges [a b] before [b c] -> ab + c; reversed ranks -> a + bc.
        let first = try Tokenizer(
            tokenizerJSON: tinyTokenizerJSON(extra: ["ab", "bc"], merges: [("a", "b"), ("b", "c")]),
            configJSON: nil)
        XCTAssertEqual(first.encode("abc"), [256, 0x63])
        let second = try Tokenizer(
            tokenizerJSON: tinyTokenizerJSON(extra: ["ab", "bc"], merges: [("b", "c"), ("a", "b")]),
            configJSON: nil)
        XCTAssertEqual(second.encode("abc"), [0x61, 257])
        // Equal pairs merge left to right: "aaa" -> aa + a; "aaaa" -> aa + aa.
        let aa = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: ["aa"], merges: [("a", "a")]), configJSON: nil)
        XCTAssertEqual(aa.encode("aaa"), [256, 0x61])
        XCTAssertEqual(aa.encode("aaaa"), [256, 256])
    }

    func testIgnoreMergesUsesWholeWordVocabEntry() throws {
        // "abc" is in the vocab but no merge sequence builds it.
        let merges = [("a", "b")]
        let plain = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: ["ab", "abc"], merges: merges), configJSON: nil)
        XCTAssertEqual(plain.encode("abc"), [256, 0x63])
        let ignoring = try Tokenizer(
            tokenizerJSON: tinyTokenizerJSON(extra: ["ab", "abc"], merges: merges, ignoreMerges: true),
            configJSON: nil)
        XCTAssertEqual(ignoring.encode("abc"), [257])
        XCTAssertEqual(ignoring.encode("abcd"), [256, 0x63, 0x64])
    }

    func testLongWordsMatchShortWordBehaviour() throws {
        let tok = try Tokenizer(
            tokenizerJSON: tinyTokenizerJSON(extra: ["aa", "aaaa"], merges: [("a", "a"), ("aa", "aa")]),
            configJSON: nil)
        // 4001 letters: 1000 "aaaa" then one "a".
        let ids = tok.encode(String(repeating: "a", count: 4001))
        XCTAssertEqual(ids, Array(repeating: 257, count: 1000) + [0x61])
    }

    func testAddedTokensSpecialAndFlags() throws {
        let added = """
            [{"id": 300, "content": "<|im_start|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
             {"id": 301, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
             {"id": 302, "content": "<think>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false},
             {"id": 303, "content": "<|im_start|>x", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
             {"id": 304, "content": "<mask>", "single_word": false, "lstrip": true, "rstrip": true, "normalized": false, "special": true},
             {"id": 305, "content": "cat", "single_word": true, "lstrip": false, "rstrip": false, "normalized": false, "special": false}]
            """
        let tok = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: [], merges: [], addedTokens: added), configJSON: nil)
        XCTAssertEqual(tok.encode("<|im_start|>user"), [300] + Array("user".utf8).map { Int32($0) })
        // Longest match wins.
        XCTAssertEqual(tok.encode("<|im_start|>xy"), [303, 0x79])
        XCTAssertEqual(tok.encode("a<think>b</think>"), [0x61, 302, 0x62] + Array("</think>".utf8).map { Int32($0) })
        // lstrip/rstrip swallow the surrounding whitespace.
        XCTAssertEqual(tok.encode("a  <mask>  b"), [0x61, 304, 0x62])
        // single_word: only when not inside a word.
        XCTAssertEqual(tok.encode("a cat"), [0x61, 0x20, 305])
        XCTAssertEqual(tok.encode("concat"), Array("concat".utf8).map { Int32($0) })
        XCTAssertEqual(tok.encode("cats"), Array("cats".utf8).map { Int32($0) })
        // decode keeps or skips special tokens; non-special added tokens always stay.
        let ids = tok.encode("<|im_start|>hi<think><|im_end|>")
        XCTAssertEqual(tok.decode(ids), "<|im_start|>hi<think><|im_end|>")
        XCTAssertEqual(tok.decode(ids, skipSpecialTokens: true), "hi<think>")
        XCTAssertEqual(tok.tokenBytes(302), Array("<think>".utf8))
        XCTAssertTrue(tok.isSpecial(300))
        XCTAssertFalse(tok.isSpecial(302))
        XCTAssertEqual(tok.specialTokenIds, [300, 301, 303, 304])
    }

    func testNormalizedAddedTokenMatchesAfterNFC() throws {
        // "é" written as e + U+0301 only matches the NFC token content after normalization.
        let added = """
            [{"id": 300, "content": "<é>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": true, "special": false},
             {"id": 301, "content": "<ö>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}]
            """
        let tok = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: [], merges: [], addedTokens: added), configJSON: nil)
        XCTAssertEqual(tok.encode("<e\u{301}>"), [300])
        // Non-normalized tokens match the raw text only.
        XCTAssertEqual(tok.encode("<ö>"), [301])
        XCTAssertEqual(tok.encode("<o\u{308}>").count, 4)  // '<', 'ö' (2 bytes after NFC), '>'
    }

    func testPostProcessorTemplateAddsBOS() throws {
        let added = """
            [{"id": 300, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}]
            """
        let post = """
            {"type": "Sequence", "processors": [{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
              {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
               "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [300], "tokens": ["<s>"]}}}]}
            """
        let config = Data(#"{"bos_token": "<s>", "eos_token": {"content": "<s>", "special": true}, "pad_token": null}"#.utf8)
        let tok = try Tokenizer(
            tokenizerJSON: tinyTokenizerJSON(extra: [], merges: [], addedTokens: added, postProcessor: post),
            configJSON: config)
        XCTAssertEqual(tok.encode("hi", addSpecialTokens: true), [300, 0x68, 0x69])
        XCTAssertEqual(tok.encode("hi"), [0x68, 0x69])
        XCTAssertEqual(tok.bosTokenId, 300)
        XCTAssertEqual(tok.eosTokenId, 300)
        XCTAssertNil(tok.padTokenId)
    }

    func testGPT2StyleByteLevelRegex() throws {
        // ByteLevel(use_regex: true) splits with the GPT-2 pattern (case-sensitive contractions).
        let tok = try Tokenizer(
            tokenizerJSON: tinyTokenizerJSON(extra: [], merges: [], splitRegex: nil, normalizer: "null"),
            configJSON: nil)
        XCTAssertEqual(tok.preTokenize("I'm  HERE'S 42x\n"), ["I", "'m", " ", " HERE", "'", "S", " 42", "x", "\n"])
    }

    func testLoadErrorsNameTheField() {
        let badMerge = tinyTokenizerJSON(extra: [], merges: [("q", "z")])  // "qz" missing from vocab
        XCTAssertThrowsError(try Tokenizer(tokenizerJSON: badMerge, configJSON: nil)) { error in
            XCTAssertTrue("\(error)".contains("model.merges[0]"), "\(error)")
        }
        let wordPiece = Data(#"{"model": {"type": "WordPiece", "vocab": {}}, "pre_tokenizer": null, "decoder": null}"#.utf8)
        XCTAssertThrowsError(try Tokenizer(tokenizerJSON: wordPiece, configJSON: nil)) { error in
            XCTAssertTrue("\(error)".contains("model.type"), "\(error)")
        }
        let good = tinyTokenizerJSON(extra: [], merges: [])
        XCTAssertThrowsError(try Tokenizer(tokenizerJSON: good, configJSON: Data(#"{"eos_token": "<nope>"}"#.utf8))) { error in
            XCTAssertTrue("\(error)".contains("eos_token"), "\(error)")
        }
        XCTAssertThrowsError(try Tokenizer(tokenizerJSON: Data("{".utf8), configJSON: nil))
        XCTAssertThrowsError(try Tokenizer(directory: URL(fileURLWithPath: "/nonexistent-dir"))) { error in
            XCTAssertTrue("\(error)".contains("tokenizer.json"), "\(error)")
        }
    }
}

final class TokenizerPreTokenizerTests: XCTestCase {
    private func tokenizer(_ regex: String) throws -> Tokenizer {
        try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: [], merges: [], splitRegex: regex), configJSON: nil)
    }

    /// Expected splits derived by hand from the alternatives of the Qwen2 pattern, tried in order
    /// with backtracking at each position.
    func testQwen2SplitsTrickyStrings() throws {
        let tok = try tokenizer(SplitPattern.qwen2Source)
        let cases: [(String, [String])] = [
            ("Hello world", ["Hello", " world"]),
            ("I'm here", ["I", "'m", " here"]),
            ("DON'T we'LL", ["DON", "'T", " we", "'LL"]),
            ("'sup", ["'s", "up"]),  // the contraction alternative comes first
            ("it'ſ", ["it", "'ſ"]),  // (?i) folds U+017F to s
            ("  hello", [" ", " hello"]),  // \s+(?!\S) leaves one space for the word
            ("a  \n\n b", ["a", "  \n\n", " b"]),  // \s*[\r\n]+ ends after the last newline
            ("x   ", ["x", "   "]),  // trailing whitespace: \s+(?!\S) at the end
            ("12345", ["1", "2", "3", "4", "5"]),  // \p{N} one digit at a time
            ("foo!!!\n\nbar", ["foo", "!!!\n\n", "bar"]),  // punctuation takes following newlines
            ("a !!", ["a", " !!"]),
            ("\tword", ["\tword"]),  // one non-letter prefix joins the letters
            ("x\r\ny", ["x", "\r\n", "y"]),
            ("日本語テキスト", ["日本語テキスト"]),
            ("a😀b", ["a", "😀b"]),
            ("(x) => {}", ["(x", ")", " =>", " {}"]),
            ("\u{00A0}\u{3000}z", ["\u{00A0}", "\u{3000}z"]),
            ("٣4²", ["٣", "4", "²"]),  // Arabic-Indic digit and superscript are \p{N}
            ("", []),
        ]
        for (text, want) in cases {
            XCTAssertEqual(tok.preTokenize(text), want, text.debugDescription)
        }
    }

    func testLlama3GroupsDigitsByThree() throws {
        let tok = try tokenizer(SplitPattern.llama3Source)
        XCTAssertEqual(tok.preTokenize("1234567"), ["123", "456", "7"])
        XCTAssertEqual(tok.preTokenize("x 12.5%"), ["x", " ", "12", ".", "5", "%"])
        XCTAssertEqual(tok.preTokenize("I'VE"), ["I", "'VE"])
    }

    func testUnknownRegexFallsBackToNSRegularExpression() throws {
        let tok = try tokenizer(#"[0-9]+|[a-z]+"#)
        // Isolated behaviour: matches and the gaps between them are separate words.
        XCTAssertEqual(tok.preTokenize("ab12 cd!"), ["ab", "12", " ", "cd", "!"])
        XCTAssertEqual(tok.decode(tok.encode("ab12 cd!")), "ab12 cd!")
    }
}

final class TokenizerStreamingTests: XCTestCase {
    func testMultiByteCharactersSplitAcrossTokens() throws {
        // Only byte tokens: every UTF-8 byte is its own token.
        let tok = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: [], merges: []), configJSON: nil)
        let text = "é😀中a👨‍👩‍👧"
        let ids = tok.encode(text)
        XCTAssertEqual(ids.count, text.utf8.count)
        var dec = StreamingDecoder(tokenizer: tok)
        var pieces: [String] = []
        for id in ids { pieces.append(dec.feed(id)) }
        pieces.append(dec.flush())
        XCTAssertEqual(pieces.joined(), text)
        // é is two bytes: nothing after the first, the whole character after the second.
        XCTAssertEqual(pieces[0], "")
        XCTAssertEqual(pieces[1], "é")
        // 😀 is four bytes.
        XCTAssertEqual(Array(pieces[2...5]), ["", "", "", "😀"])
        for p in pieces { XCTAssertFalse(p.unicodeScalars.contains("\u{FFFD}")) }
        XCTAssertEqual(dec.pendingByteCount, 0)
    }

    func testInvalidAndIncompleteBytesBecomeReplacementCharacters() throws {
        let tok = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: [], merges: []), configJSON: nil)
        var dec = StreamingDecoder(tokenizer: tok)
        // 0xFF can never start a character: replaced at once.
        XCTAssertEqual(dec.feed(0xFF), "\u{FFFD}")
        // E2 82 is a valid prefix (of €): held back.
        XCTAssertEqual(dec.feed(0xE2), "")
        XCTAssertEqual(dec.feed(0x82), "")
        XCTAssertEqual(dec.pendingByteCount, 2)
        // 'A' breaks the sequence: one U+FFFD for the maximal subpart, then 'A'.
        XCTAssertEqual(dec.feed(0x41), "\u{FFFD}A")
        XCTAssertEqual(dec.feed(0xF0), "")
        XCTAssertEqual(dec.flush(), "\u{FFFD}")
        // Same as whole-sequence decode.
        XCTAssertEqual(tok.decode([0xFF, 0xE2, 0x82, 0x41, 0xF0]), "\u{FFFD}\u{FFFD}A\u{FFFD}")
        // Overlong / surrogate encodings are invalid byte by byte, as in from_utf8_lossy.
        XCTAssertEqual(tok.decode([0xC0, 0x80]), "\u{FFFD}\u{FFFD}")
        XCTAssertEqual(tok.decode([0xED, 0xA0, 0x80]), "\u{FFFD}\u{FFFD}\u{FFFD}")
    }

    func testSkipSpecialTokensInStream() throws {
        let added = """
            [{"id": 300, "content": "<|im_end|>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}]
            """
        let tok = try Tokenizer(tokenizerJSON: tinyTokenizerJSON(extra: [], merges: [], addedTokens: added), configJSON: nil)
        var dec = StreamingDecoder(tokenizer: tok, skipSpecialTokens: true)
        XCTAssertEqual(dec.feed(tok.encode("ok<|im_end|>")), "ok")
        var keep = StreamingDecoder(tokenizer: tok)
        XCTAssertEqual(keep.feed(tok.encode("ok<|im_end|>")), "ok<|im_end|>")
    }
}

// MARK: - Hugging Face references (Tests/Fixtures/reference/tokenizer-*.json)

private struct TokenizerReference: Decodable {
    struct Case: Decodable {
        let text: String
        let ids: [Int32]
        let decoded: String
    }
    let cases: [Case]
}

private struct PromptR1Reference: Decodable {
    struct Case: Decodable {
        let rendered: String
        let ids: [Int32]
    }
    let cases: [Case]
}

private func loadFixtureTokenizer(_ model: String) throws -> Tokenizer {
    try Tokenizer(directory: tokenizerFixturesDir.appendingPathComponent("models/\(model)"))
}

private func scalars(_ s: String) -> [UInt32] { s.unicodeScalars.map(\.value) }

final class TokenizerReferenceTests: XCTestCase {
    private func check(model: String, reference: String, normalizesNFC: Bool) throws {
        let tok = try loadFixtureTokenizer(model)
        let data = try Data(contentsOf: tokenizerFixturesDir.appendingPathComponent("reference/\(reference)"))
        let ref = try JSONDecoder().decode(TokenizerReference.self, from: data)
        XCTAssertGreaterThanOrEqual(ref.cases.count, 30)
        for (i, c) in ref.cases.enumerated() {
            let ids = tok.encode(c.text)
            XCTAssertEqual(ids, c.ids, "\(reference) case \(i) \(c.text.debugDescription)")
            let decoded = tok.decode(c.ids)
            // Compare scalars: String == would hide NFC/NFD differences.
            XCTAssertEqual(scalars(decoded), scalars(c.decoded), "\(reference) case \(i) decode")
            // Round trip: decode(encode(x)) == x (NFC-normalised where the tokenizer normalizes).
            let expected = normalizesNFC ? String(decoding: c.text._nfcCodeUnits, as: UTF8.self) : c.text
            XCTAssertEqual(scalars(tok.decode(ids)), scalars(expected), "\(reference) case \(i) round trip")
            // Streaming one id at a time gives the same text.
            var stream = StreamingDecoder(tokenizer: tok)
            var streamed = ""
            for id in ids { streamed += stream.feed(id) }
            streamed += stream.flush()
            XCTAssertEqual(scalars(streamed), scalars(decoded), "\(reference) case \(i) streaming")
            // tokenBytes of the ids concatenate to the decoded bytes.
            XCTAssertEqual(ids.flatMap { tok.tokenBytes($0) }, Array(decoded.utf8), "\(reference) case \(i) tokenBytes")
        }
    }

    func testQwenTokenizerMatchesHuggingFace() throws {
        try check(model: "qwen2-tiny", reference: "tokenizer-qwen.json", normalizesNFC: true)
    }

    func testLlamaTokenizerMatchesHuggingFace() throws {
        try check(model: "llama-tiny", reference: "tokenizer-llama.json", normalizesNFC: false)
    }

    func testPromptR1FirstPromptIds() throws {
        let tok = try loadFixtureTokenizer("qwen3-tiny")
        let data = try Data(contentsOf: tokenizerFixturesDir.appendingPathComponent("reference/promptr1-first-prompt.json"))
        let ref = try JSONDecoder().decode(PromptR1Reference.self, from: data)
        XCTAssertFalse(ref.cases.isEmpty)
        for (i, c) in ref.cases.enumerated() {
            XCTAssertEqual(tok.encode(c.rendered), c.ids, "promptr1 case \(i)")
        }
    }

    func testConcurrentEncodingSharesTheWordCacheSafely() throws {
        final class Mismatches: @unchecked Sendable {  // @unchecked: guarded by `lock`
            let lock = NSLock()
            var count = 0
            func add() {
                lock.lock()
                count += 1
                lock.unlock()
            }
        }
        let tok = try loadFixtureTokenizer("qwen2-tiny")
        let data = try Data(contentsOf: tokenizerFixturesDir.appendingPathComponent("reference/tokenizer-qwen.json"))
        let cases = try JSONDecoder().decode(TokenizerReference.self, from: data).cases
        let mismatches = Mismatches()
        // 8 threads encode the reference texts in different orders against one shared cache.
        DispatchQueue.concurrentPerform(iterations: 8) { worker in
            for round in 0..<4 {
                for c in (round + worker) % 2 == 0 ? cases : cases.reversed() where tok.encode(c.text) != c.ids {
                    mismatches.add()
                }
            }
        }
        XCTAssertEqual(mismatches.count, 0)
    }

    func testSpecialTokenIdsFromConfig() throws {
        let qwen = try loadFixtureTokenizer("qwen3-tiny")
        XCTAssertEqual(qwen.eosToken, "<|im_end|>")
        XCTAssertEqual(qwen.eosTokenId, qwen.id(of: "<|im_end|>"))
        XCTAssertEqual(qwen.padTokenId, qwen.id(of: "<|endoftext|>"))
        XCTAssertNil(qwen.bosTokenId)
        XCTAssertNotNil(qwen.chatTemplate)
        XCTAssertEqual(qwen.encode("<|im_start|>user\n<think>x</think>").first, qwen.id(of: "<|im_start|>"))
        XCTAssertTrue(qwen.isSpecial(try XCTUnwrap(qwen.id(of: "<|im_end|>"))))
        XCTAssertFalse(qwen.isSpecial(try XCTUnwrap(qwen.id(of: "<think>"))))
        XCTAssertEqual(qwen.encode("hi", addSpecialTokens: true), qwen.encode("hi"))

        let llama = try loadFixtureTokenizer("llama-tiny")
        let bos = try XCTUnwrap(llama.id(of: "<|begin_of_text|>"))
        XCTAssertEqual(llama.bosTokenId, bos)
        XCTAssertEqual(llama.eosTokenId, llama.id(of: "<|eot_id|>"))
        XCTAssertEqual(llama.encode("hi there", addSpecialTokens: true), [bos] + llama.encode("hi there"))
        XCTAssertEqual(llama.decode([bos] + llama.encode("hi"), skipSpecialTokens: true), "hi")
        XCTAssertGreaterThan(llama.vocabSize, Int(bos))
    }
}
