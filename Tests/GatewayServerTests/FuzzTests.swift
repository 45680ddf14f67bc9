import Foundation
import OpenAIWire
import PolicyEngine
import PromptR1
import XCTest

@testable import GatewayServer

/// Property-based fuzzing of every parser that reads untrusted bytes: the safetensors header,
/// tokenizer.json, config.json (model and gateway), the SSE parser and the Prompt-R1 turn
/// parser. Each target starts from real seeds (the fixtures) and mutates them (bit flips, byte
/// insertions and deletions, truncation, splices, duplicated blocks, JSON-aware swaps of values
/// for wrong types, huge numbers and deep nesting). A parser may accept or throw; it must never
/// crash, hang or break its own invariants.
///
/// CI runs a short pass (`FUZZ_ITERATIONS`, default 200 per target). A long run:
/// `scripts/fuzz.sh` (see README, Reliability), which also keeps the input being parsed in
/// `FUZZ_SAVE_DIR` so a crash leaves its reproducer behind.
final class FuzzTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().resolvingSymlinksInPath()
        .deletingLastPathComponent().appendingPathComponent("Fixtures")
    static let repoRoot = fixtures.deletingLastPathComponent().deletingLastPathComponent()

    static var iterations: Int { Int(ProcessInfo.processInfo.environment["FUZZ_ITERATIONS"] ?? "") ?? 200 }
    static var baseSeed: UInt64 { UInt64(ProcessInfo.processInfo.environment["FUZZ_SEED"] ?? "") ?? 0x5EED_F022 }
    static let saveDir: URL? = ProcessInfo.processInfo.environment["FUZZ_SAVE_DIR"].map { URL(fileURLWithPath: $0) }

    /// Runs `body` on `iterations` mutants of the seeds; the input is saved first when asked.
    func fuzz(_ target: String, seeds: [[UInt8]], jsonAware: Bool = false, _ body: ([UInt8]) throws -> Void) rethrows {
        // String.hashValue differs between runs; seed from the name's bytes (FNV-1a) instead.
        let rng = SplitMix64(
            seed: Self.baseSeed ^ target.utf8.reduce(UInt64(1_469_598_103_934_665_603)) { ($0 ^ UInt64($1)) &* 1_099_511_628_211 })
        var mutator = Mutator(rng: rng, seeds: seeds, jsonAware: jsonAware)
        for s in seeds { try body(s) }  // the seeds themselves must pass
        for _ in 0..<Self.iterations {
            let input = mutator.next()
            if let dir = Self.saveDir {
                try? Data(input).write(to: dir.appendingPathComponent("\(target).current"))
            }
            try body(input)
        }
    }

    // MARK: Targets

    func testSafetensorsHeader() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fuzz-st-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        // Small real files: a header plus data, as the writer lays them out.
        var seeds: [[UInt8]] = []
        for (i, dtype) in ["F32", "BF16", "F16"].enumerated() {
            let header =
                #"{"__metadata__":{"format":"pt"},"a.weight":{"dtype":"\#(dtype)","shape":[2,3],"data_offsets":[0,\#(dtype == "F32" ? 24 : 12)]},"b":{"dtype":"\#(dtype)","shape":[2],"data_offsets":[\#(dtype == "F32" ? 24 : 12),\#(dtype == "F32" ? 32 : 16)]}}"#
            var bytes = withUnsafeBytes(of: UInt64(header.utf8.count).littleEndian) { Array($0) }
            bytes += Array(header.utf8)
            bytes += (0..<(dtype == "F32" ? 32 : 16)).map { UInt8(($0 * 37 + i) & 0xFF) }
            seeds.append(bytes)
        }
        let file = dir.appendingPathComponent("model.safetensors")
        var accepted = 0
        fuzz("safetensors", seeds: seeds) { input in
            try? Data(input).write(to: file)
            guard let f = try? SafetensorsFile(url: file) else { return }
            accepted += 1
            let ckpt = try? SafetensorsCheckpoint(files: [f])
            for (name, info) in f.tensors {
                // Every tensor the header accepted lies inside the file.
                XCTAssertLessThanOrEqual(info.dataOffsets.upperBound, input.count)
                if let t = try? ckpt?.floatTensor(name, shape: info.shape) {
                    XCTAssertEqual(t.count, info.elementCount)
                }
            }
        }
        XCTAssertGreaterThan(accepted, Self.iterations / 50, "the mutations should keep some inputs valid")
    }

    func testTokenizerJSON() throws {
        let seed = try Array(Data(contentsOf: Self.fixtures.appendingPathComponent("models/qwen2-tiny/tokenizer.json")))
        let config = try Data(contentsOf: Self.fixtures.appendingPathComponent("models/qwen2-tiny/tokenizer_config.json"))
        let reference = try Tokenizer(tokenizerJSON: Data(seed), configJSON: config)
        let probe = "Hello, world! 12 + 30 = 42 <think>ok</think> ünïcödé 日本語 \u{1F600}"
        XCTAssertEqual(reference.decode(reference.encode(probe)), probe)
        fuzz("tokenizer", seeds: [seed], jsonAware: true) { input in
            guard let t = try? Tokenizer(tokenizerJSON: Data(input), configJSON: config) else { return }
            let ids = t.encode(probe)
            _ = t.decode(ids)
        }
    }

    func testModelConfigJSON() throws {
        var seeds: [[UInt8]] = []
        for m in ["qwen2-tiny", "qwen3-tiny", "llama-tiny"] {
            seeds.append(try Array(Data(contentsOf: Self.fixtures.appendingPathComponent("models/\(m)/config.json"))))
        }
        fuzz("model-config", seeds: seeds, jsonAware: true) { input in
            guard let c = try? ModelConfig.decode(Data(input)) else { return }
            // What decodes and validates is usable: positive sizes, heads divide evenly.
            if (try? c.validate()) != nil {
                XCTAssertGreaterThan(c.hiddenSize, 0)
                XCTAssertGreaterThan(c.numHiddenLayers, 0)
                XCTAssertEqual(c.qDim % c.headDim, 0)
            }
        }
    }

    func testGatewayConfigJSON() throws {
        let seed = try Array(Data(contentsOf: Self.repoRoot.appendingPathComponent("gateway.json")))
        XCTAssertNoThrow(try GatewayConfig.parse(Data(seed)))
        fuzz("gateway-config", seeds: [seed], jsonAware: true) { input in
            _ = try? GatewayConfig.parse(Data(input))
        }
    }

    func testSSEParser() throws {
        let good = FakeStreamSeeds.parts.joined()
        let seeds = [Array(good.utf8), Array(good.replacingOccurrences(of: "\n", with: "\r\n").utf8)]
        var rng = SplitMix64(seed: Self.baseSeed)
        fuzz("sse", seeds: seeds) { input in
            // Property: the events do not depend on how the bytes were split into chunks.
            var whole = SSEParser(maxEventBytes: 1 << 16)
            let all = try? whole.feed(input)
            var pieces = SSEParser(maxEventBytes: 1 << 16)
            var split: [SSEEvent]? = []
            var i = 0
            while i < input.count {
                let n = Int(rng.next() % 17) + 1
                guard let events = try? pieces.feed(input[i..<min(input.count, i + n)]) else {
                    split = nil
                    break
                }
                split! += events
                i += n
            }
            if let all, let split { XCTAssertEqual(all, split) }
            XCTAssertEqual(all == nil, split == nil, "too-large must not depend on chunking")
        }
    }

    func testTurnParser() throws {
        var seeds: [[UInt8]] = [
            "<think>plan</think>\n<interaction_prompt>What is the capital of France?</interaction_prompt>",
            "<think>done</think> <answer>Paris</answer>",
            #"<think>x</think><interaction_prompt>{"name": "call_llm", "arguments": {"prompt": "hi"}}</interaction_prompt>"#,
            "<answer></answer>",
        ].map { Array($0.utf8) }
        seeds.append(Array("<think><interaction_prompt></think></interaction_prompt><answer>".utf8))
        fuzz("turn-parser", seeds: seeds) { input in
            let text = String(decoding: input, as: UTF8.self)
            let parse = PromptR1Parser.parseTurn(text)
            _ = PromptR1Parser.truncateAtCallEnd(text)
            let f = PromptR1Reward.formatScore("<|im_start|>assistant\n" + text + "<|im_end|>")
            XCTAssertTrue((0...1).contains(f), "format score \(f) out of range")
            if case .call(let call) = parse {
                XCTAssertTrue(text.contains(call.prompt) || call.form == .json, "a plain-text call's prompt comes from the text")
            }
        }
    }

    func testChatRequestBodies() throws {
        let seeds = [
            #"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"hi"}]}],"temperature":0.5,"max_tokens":10,"stream":true,"stop":["x"],"tools":[{"type":"function","function":{"name":"f","parameters":{}}}]}"#,
            #"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"1","content":"r"}]}"#,
        ].map { Array($0.utf8) }
        let scanner = JSONScanner()
        fuzz("chat-request", seeds: seeds, jsonAware: true) { input in
            // As the server does: the scanner first (invalid JSON is a 400 there), then the decoder.
            guard (try? scanner.scanObject(input)) != nil else { return }
            do {
                _ = try ChatCompletionRequest.decode(validated: input)
            } catch let e as GatewayError {
                XCTAssertEqual(e.status, 400, "bad input is a 400: \(e)")
                XCTAssertFalse(e.body.message.isEmpty)
            } catch {
                XCTFail("not a GatewayError: \(error)")
            }
        }
    }
}

/// A stream as OpenAI sends it, for SSE seeds.
enum FakeStreamSeeds {
    static let parts = [
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        ": keep-alive\n\n",
        "event: message\nid: 7\ndata: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\\nb\"}}]}\n\n",
        "data: line one\ndata: line two\n\n",
        "retry: 100\n\n",
        "data: [DONE]\n\n",
    ]
}

/// Deterministic PRNG (SplitMix64), so a failing iteration is reproducible from FUZZ_SEED.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Byte-level and JSON-aware mutations of seed inputs.
struct Mutator {
    var rng: SplitMix64
    let seeds: [[UInt8]]
    let jsonAware: Bool

    static let interesting: [String] = [
        "null", "true", "-1", "0", "1e400", "-9223372036854775809", "18446744073709551616", "3.5", "\"\"",
        "\"\\ud800\"", "[]", "{}",
        "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        "\"" + String(repeating: "A", count: 5000) + "\"", "NaN", "\"\u{0}\"",
    ]

    mutating func int(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }

    mutating func next() -> [UInt8] {
        var b = seeds[int(seeds.count)]
        let rounds = 1 + int(4)
        for _ in 0..<rounds { mutate(&b) }
        return b
    }

    mutating func mutate(_ b: inout [UInt8]) {
        let choice = int(jsonAware ? 10 : 7)
        switch choice {
        case 0 where !b.isEmpty:  // flip a bit
            let i = int(b.count)
            b[i] ^= UInt8(1 << int(8))
        case 1 where !b.isEmpty:  // random byte
            b[int(b.count)] = UInt8(truncatingIfNeeded: rng.next())
        case 2:  // insert random bytes (invalid UTF-8 included)
            let i = int(b.count + 1)
            b.insert(contentsOf: (0..<(1 + int(8))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }, at: i)
        case 3 where !b.isEmpty:  // delete a range
            let i = int(b.count)
            let n = min(b.count - i, 1 + int(64))
            b.removeSubrange(i..<(i + n))
        case 4:  // truncate
            b = Array(b.prefix(int(b.count + 1)))
        case 5 where b.count > 2:  // duplicate a block
            let i = int(b.count)
            let n = min(b.count - i, 1 + int(256))
            b.insert(contentsOf: b[i..<(i + n)], at: int(b.count))
        case 6 where !seeds.isEmpty:  // splice with another seed
            let o = seeds[int(seeds.count)]
            let cut = int(b.count + 1)
            let from = int(o.count + 1)
            b = Array(b.prefix(cut)) + Array(o.suffix(from: from))
        case 7, 8:  // JSON-aware: replace one scalar value with an interesting one
            replaceValue(&b)
        case 9:  // JSON-aware: change a number's magnitude
            if let i = b.firstIndex(where: { $0 >= 0x30 && $0 <= 0x39 }).map({ _ in int(b.count) }), i < b.count {
                let digits = b[i...].prefix { $0 >= 0x30 && $0 <= 0x39 }
                if !digits.isEmpty { b.replaceSubrange(i..<(i + digits.count), with: Array("99999999999999999999".utf8)) }
            }
        default:
            break
        }
    }

    /// Finds a `: <value>` position and swaps the value for an interesting token.
    mutating func replaceValue(_ b: inout [UInt8]) {
        let colons = b.indices.filter { b[$0] == 0x3A }
        guard !colons.isEmpty else { return }
        var i = colons[int(colons.count)] + 1
        while i < b.count, b[i] == 0x20 { i += 1 }
        var j = i
        if j < b.count, b[j] == 0x22 {  // a string value
            j += 1
            while j < b.count, b[j] != 0x22 {
                if b[j] == 0x5C { j += 1 }
                j += 1
            }
            j = min(b.count, j + 1)
        } else {
            while j < b.count, ![0x2C, 0x7D, 0x5D].contains(b[j]) { j += 1 }
        }
        guard i < j else { return }
        let replacement = Self.interesting[int(Self.interesting.count)]
        b.replaceSubrange(i..<j, with: Array(replacement.utf8))
    }
}
