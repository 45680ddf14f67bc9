// The vLLM and SGLang adapters against request/response pairs in the shape of those engines'
// documentation (Tests/Fixtures/engines, written by scripts/make_engine_fixtures.py from the tiny
// policy's first reference episode; sources in docs/remote-policy.md). CI has no GPU for either
// engine, so this is how they are tested: the request the adapter builds must equal the recorded
// one field for field, and the recorded response must give back the reference turn's ids,
// log-probs and text after the gateway's own turn cut.

import Foundation
import PolicyEngine
import PromptR1
import XCTest

@testable import RemotePolicy

final class AdapterFixtureTests: XCTestCase {
    struct Fixture {
        var path: String
        var request: NSDictionary
        var response: Data
        var ids: [Int32]
        var logprobs: [Float]
        var text: String
    }

    static func fixture(_ name: String) throws -> Fixture {
        let url = LlamaServerTests.fixtures.appendingPathComponent("engines/\(name).json")
        let obj = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
        let exp = obj["expected"] as! [String: Any]
        return Fixture(
            path: obj["path"] as! String, request: obj["request"] as! NSDictionary,
            response: try JSONSerialization.data(withJSONObject: obj["response"]!),
            ids: (exp["ids"] as! [Int]).map(Int32.init), logprobs: (exp["logprobs"] as! [Double]).map(Float.init),
            text: exp["text"] as! String)
    }

    static let tokenizer = try! Tokenizer(directory: LlamaServerTests.policyDir)

    func check(_ adapter: any EngineAdapter, _ name: String, model: String?) throws {
        let f = try Self.fixture(name)
        let context = ((f.request["prompt"] ?? f.request["input_ids"]) as! [Int]).map(Int32.init)
        let g = EngineGenerateRequest(
            context: context, maxTokens: 200, sampling: .greedy, stopStrings: [PromptR1Tag.callClose],
            stopTokenIDs: [1000, 1002], model: model)
        let http = try adapter.generateRequest(g)
        XCTAssertEqual(http.path, f.path, name)
        let sent = try JSONSerialization.jsonObject(with: http.body) as! NSDictionary
        XCTAssertEqual(sent, f.request, "\(name): the request differs from the documented one")

        let c = try adapter.parseGenerateResponse(f.response)
        XCTAssertEqual(c.tokens, f.ids, name)
        XCTAssertEqual(c.logprobs, f.logprobs, name)
        let cut = TurnCut.cut(
            c, maxTokens: 200, endOfTurn: [1000, 1002], stopStrings: [PromptR1Tag.callClose],
            tokenBytes: { Self.tokenizer.tokenBytes($0) })
        XCTAssertEqual(cut.tokens, f.ids, name)
        XCTAssertEqual(cut.text, f.text, name)
    }

    func testVLLMCompletionsWithTokenIDs() throws {
        try check(VLLMAdapter(), "vllm-turn1", model: "agent")
        try check(VLLMAdapter(), "vllm-turn2", model: "agent")
        XCTAssertEqual(
            VLLMAdapter().logprobKind(for: SamplingParameters(temperature: 0.7)), .model,
            "vLLM returns raw_logprobs unless --logprobs-mode says otherwise")
    }

    func testSGLangGenerateWithInputIDs() throws {
        try check(SGLangAdapter(), "sglang-turn1", model: nil)
        try check(SGLangAdapter(), "sglang-turn2", model: nil)
        XCTAssertEqual(SGLangAdapter().logprobKind(for: SamplingParameters(temperature: 0.7)), .sampling)
        XCTAssertEqual(SGLangAdapter().logprobKind(for: .greedy), .model)
    }

    /// The reload calls against the engines' documented examples (Tests/Fixtures/engines/reload.json).
    func testReloadCallsMatchTheDocumentedOnes() throws {
        let url = LlamaServerTests.fixtures.appendingPathComponent("engines/reload.json")
        let doc = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: [String: [String: Any]]]
        func body(_ r: EngineHTTPRequest) throws -> NSDictionary { try JSONSerialization.jsonObject(with: r.body) as! NSDictionary }
        func data(_ v: Any) throws -> Data {
            if let s = v as? String { return Data(s.utf8) }
            return try JSONSerialization.data(withJSONObject: v)
        }

        let vllm = VLLMAdapter()
        let v = doc["vllm"]!
        XCTAssertEqual(vllm.inPlaceReload, .loraAdapter)
        let load = try vllm.loadLoRARequest(name: "sql_adapter", path: "/path/to/sql-lora-adapter")
        XCTAssertEqual(load.path, v["load"]!["path"] as? String)
        XCTAssertEqual(try body(load), v["load"]!["request"] as? NSDictionary)
        let unload = try vllm.unloadLoRARequest(name: "sql_adapter")
        XCTAssertEqual(unload.path, v["unload"]!["path"] as? String)
        XCTAssertEqual(try body(unload), v["unload"]!["request"] as? NSDictionary)
        XCTAssertEqual(
            try vllm.servedModelIDs(try data(v["models"]!["response"]!)), ["meta-llama/Llama-2-7b-hf", "sql-lora"],
            "the base model and the adapter, as /v1/models lists them")
        let failure = String(decoding: try data(v["load_failed"]!["response"]!), as: UTF8.self)
        XCTAssertEqual(
            RemotePolicy.engineMessage(failure), "Loading lora sql_adapter failed: No adapter found for /path/to/missing-adapter")
        XCTAssertEqual(RemotePolicy.adapterName(version: "0123456789abcdef", enginePath: "/x/y"), "policy-0123456789abcdef")
        XCTAssertEqual(RemotePolicy.adapterName(version: nil, enginePath: "/ckpt/step 7"), "policy-step7")

        let sglang = SGLangAdapter()
        let g = doc["sglang"]!
        XCTAssertEqual(sglang.inPlaceReload, .weightsFromDisk)
        let update = try sglang.updateWeightsRequest(modelPath: "qwen/qwen2.5-0.5b-instruct", weightVersion: nil)
        XCTAssertEqual(update.path, g["update"]!["path"] as? String)
        XCTAssertEqual(try body(update), g["update"]!["request"] as? NSDictionary)
        XCTAssertEqual(
            try body(try sglang.updateWeightsRequest(modelPath: "/m", weightVersion: "0123456789abcdef")),
            NSDictionary(dictionary: ["model_path": "/m", "weight_version": "0123456789abcdef"]), "the documented weight_version label")
        XCTAssertNoThrow(try sglang.parseUpdateWeightsResponse(try data(g["update"]!["response"]!)))
        XCTAssertThrowsError(try sglang.parseUpdateWeightsResponse(try data(g["update_failed"]!["response"]!))) { e in
            XCTAssertTrue("\(e)".contains("Failed to get weights iterator"), "\(e)")
        }
        let info = try sglang.parseModelInfo(try data(g["model_info"]!["response"]!))
        XCTAssertEqual(info, SGLangAdapter.ModelInfo(model_path: "qwen/qwen2.5-0.5b-instruct", weight_version: "default"))
        XCTAssertEqual(
            RemotePolicy.engineMessage(String(decoding: try data(g["update_failed"]!["response"]!), as: UTF8.self)),
            "Failed to get weights iterator: qwen/qwen2.5-0.5b-instruct-wrong (repository not found).")

        guard case .unsupported(let why) = LlamaCppAdapter().inPlaceReload else { return XCTFail("llama.cpp has no in-place reload") }
        XCTAssertTrue(why.contains("/lora-adapters"), why)
    }

    func testMalformedResponsesAreErrors() throws {
        XCTAssertThrowsError(try VLLMAdapter().parseGenerateResponse(Data(#"{"choices": [{"text": "x", "finish_reason": "stop"}]}"#.utf8)))
        XCTAssertThrowsError(
            try VLLMAdapter().parseGenerateResponse(
                Data(#"{"choices": [{"token_ids": [1, 2], "logprobs": {"token_logprobs": [-0.1]}, "finish_reason": "stop"}]}"#.utf8)))
        XCTAssertThrowsError(try SGLangAdapter().parseGenerateResponse(Data(#"{"text": "x", "meta_info": {}}"#.utf8)))
        XCTAssertThrowsError(try SGLangAdapter().parseGenerateResponse(Data("<html>".utf8)))
        XCTAssertThrowsError(
            try LlamaCppAdapter().parseGenerateResponse(Data("data: {\"tokens\": [1], \"stop\": false}\n\n".utf8)),
            "a stream cut before its final event")
        XCTAssertThrowsError(try LlamaCppAdapter().parseGenerateResponse(Data("error: {\"code\": 500}\n\n".utf8)))
    }

    /// The stop rules as the embedded engine applies them: a stop string completed in the middle
    /// of a token cuts the text right after it and keeps the token; an end-of-turn id is kept
    /// without its text; whatever the engine generated after either is dropped.
    func testTurnCutMatchesTheEmbeddedStopRules() {
        let bytes: [Int32: [UInt8]] = [1: Array("ab</x".utf8), 2: Array(">tail".utf8), 3: Array("z".utf8), 9: Array("<eot>".utf8)]
        let tb: (Int32) -> [UInt8] = { bytes[$0] ?? [] }
        let c = EngineCompletion(tokens: [1, 2, 3], logprobs: [-1, -2, -3], stop: .stopString)
        let cut = TurnCut.cut(c, maxTokens: 10, endOfTurn: [9], stopStrings: ["</x>"], tokenBytes: tb)
        XCTAssertEqual(cut.tokens, [1, 2])
        XCTAssertEqual(cut.logprobs, [-1, -2])
        XCTAssertEqual(cut.text, "ab</x>")
        XCTAssertEqual(cut.stopString, "</x>")
        let eot = TurnCut.cut(
            EngineCompletion(tokens: [3, 9, 3], logprobs: [-1, -2], stop: .endOfSequence), maxTokens: 10,
            endOfTurn: [9], stopStrings: ["</x>"], tokenBytes: tb)
        XCTAssertEqual(eot.tokens, [3, 9])
        XCTAssertEqual(eot.text, "z")
        XCTAssertEqual(eot.stopTokenID, 9)
        let short = TurnCut.cut(
            EngineCompletion(tokens: [3, 3, 3], logprobs: [-1, -1, -1], stop: .length), maxTokens: 2,
            endOfTurn: [9], stopStrings: [], tokenBytes: tb)
        XCTAssertEqual(short.tokens, [3, 3])
    }
}
