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
