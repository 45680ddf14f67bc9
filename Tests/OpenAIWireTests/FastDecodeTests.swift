import Foundation
import XCTest

@testable import OpenAIWire

/// The byte-level fast paths must give exactly what JSONDecoder gives: the same value, or
/// (through the fallback) the same error.
final class FastDecodeTests: XCTestCase {
    static let requests: [String] = [
        #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#,
        #"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is 2+2?"}]}"#,
        #"{"model":"m","messages":[{"role":"user","content":"line\nbreak \"quoted\" \u00e9 \ud83d\ude00 tab\t slash\/"}],"temperature":0.7,"top_p":1,"max_tokens":16,"n":1,"seed":-5,"stop":["a","b"],"user":"u1","presence_penalty":-0.5,"frequency_penalty":2}"#,
        #"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"x"}}]}],"stop":"END"}"#,
        #"{"model":"m","messages":[{"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]},{"role":"tool","tool_call_id":"c1","content":"ok","name":"f"}]}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":2.5}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e300}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":"7"}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":5}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":null,"stream":null,"stop":null,"user":null}"#,
        #"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
        #"{"model":"m","messages":[{"role":"user"}]}"#,
        #"{"model":"m","messages":[{"content":"x"}]}"#,
        #"{"model":"m","messages":[]}"#,
        #"{"model":"","messages":[{"role":"user","content":"x"}]}"#,
        #"{"model":3,"messages":[{"role":"user","content":"x"}]}"#,
        #"{"messages":[{"role":"user","content":"x"}]}"#,
        #"{"model":"m"}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#,
        #"{"model":"m","messages":[{"role":"user","content":5}]}"#,
        #"{"model":"a","model":"b","messages":[{"role":"user","content":"x"}]}"#,
        #"{"model":"m","x":1,"x":[2],"messages":[{"role":"user","content":"x","y":1,"y":2}]}"#,
        #"{"model":"m","messages":[{"role":"user","content":"\ud83d"}]}"#,
        #"{"model":"m","extra":{"deep":[1,2,{"x":"}"}]},"messages":[{"role":"user","content":"x","extra":[true,false,null]}],"logprobs":true}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"stop":["1","2","3","4","5"]}"#,
        #"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":1}}"#,
        #"  { "model" : "m" , "messages" : [ { "role" : "user" , "content" : "x" } ] , "n" : 3 }  "#,
    ]

    func testRequestFastPathMatchesJSONDecoder() throws {
        for body in Self.requests {
            let bytes = Array(body.utf8)
            XCTAssertNoThrow(try JSONScanner().scanObject(bytes), body)
            let slow = Result { () throws(GatewayError) in try ChatCompletionRequest.decode(from: Data(bytes)) }
            let fast = Result { () throws(GatewayError) in try ChatCompletionRequest.decode(validated: bytes) }
            switch (slow, fast) {
            case (.success(let a), .success(let b)): XCTAssertEqual(a, b, body)
            case (.failure(let a), .failure(let b)): XCTAssertEqual(a, b, body)
            default: XCTFail("fast and slow paths disagree on \(body): \(slow) vs \(fast)")
            }
        }
    }

    static let responses: [String] = [
        #"{"id":"x","object":"chat.completion","created":1,"model":"gpt","choices":[{"index":0,"message":{"role":"assistant","content":"Paris \u00e9\n"},"finish_reason":"stop","logprobs":null}],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#,
        #"{"model":"gpt","choices":[{"message":{"role":"assistant","content":null,"tool_calls":[{"id":"t"}]},"finish_reason":"tool_calls"}]}"#,
        #"{"choices":[],"usage":null}"#,
        #"{"choices":[{"message":{"content":["not","a","string"]}}]}"#,
        #"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        #"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":1.5,"completion_tokens":2,"total_tokens":3}}"#,
        #"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"policy_tokens":{"prompt_tokens":4,"completion_tokens":5}}}"#,
        #"{"choices":[{"message":{"content":"a"}}]} trailing"#,
        #"{"choices":[{"message":{"content":"a"}}],"model":"a","model":"b"}"#,
        #"[1,2]"#,
        #"not json"#,
        #"{"error":{"message":"bad"}}"#,
    ]

    func testSummaryFastPathMatchesJSONDecoder() {
        for body in Self.responses {
            let slow = try? JSONDecoder().decode(UpstreamCompletionSummary.self, from: Data(body.utf8))
            let fast = Array(body.utf8).withUnsafeBytes { UpstreamCompletionSummary.decode($0) }
            XCTAssertEqual(slow == nil, fast == nil, body)
            XCTAssertEqual(slow?.model, fast?.model, body)
            XCTAssertEqual(slow?.text, fast?.text, body)
            XCTAssertEqual(slow?.finishReason, fast?.finishReason, body)
            XCTAssertEqual(slow?.choices?.count, fast?.choices?.count, body)
            XCTAssertEqual(slow?.usage, fast?.usage, body)
        }
    }

    /// Stream chunks as upstreams send them (OpenAI, vLLM, Ollama, llama.cpp shapes) and odd
    /// ones. The first `common` of them must take the fast path.
    static let chunks: [String] = [
        #"{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
        #"{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt","system_fingerprint":"fp","choices":[{"index":0,"delta":{"content":"Par\u00e9 \"x\"\n"},"logprobs":null,"finish_reason":null}]}"#,
        #"{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
        #"{"id":"c","object":"chat.completion.chunk","created":1,"model":"gpt","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":2,"total_tokens":12}}"#,
        #"{"id":"c","choices":[{"index":1,"delta":{"content":"b"}},{"index":0,"delta":{"content":"a","reasoning_content":"r"}}],"usage":null}"#,
        #"{"choices":[{"index":0,"delta":{"content":"x","tool_calls":[]}}]}"#,
        #"{}"#,
        // Left to JSONDecoder from here on.
        #"{"id":"c","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"t","function":{"name":"f","arguments":""}}]}}]}"#,
        #"{"choices":[{"index":0,"delta":{"tool_calls":[{"n":1e400}]}}]}"#,
        #"{"choices":[{"delta":{"content":"x"}}]}"#,
        #"{"choices":[{"index":0}]}"#,
        #"{"choices":[{"index":0,"delta":null}]}"#,
        #"{"choices":[{"index":"0","delta":{}}]}"#,
        #"{"choices":[{"index":0.0,"delta":{}}]}"#,
        #"{"choices":[{"index":0,"delta":{"content":5}}]}"#,
        #"{"choices":[{"index":0,"delta":{"content":"\ud83d"}}]}"#,
        #"{"id":5,"choices":[]}"#,
        #"{"created":"now","choices":[]}"#,
        #"{"created":1.5,"choices":[]}"#,
        #"{"choices":{}}"#,
        #"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
        #"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3,"policy_tokens":{"prompt_tokens":4,"completion_tokens":5}}}"#,
        #"{"choices":[{"index":0,"delta":{"content":"a"}}],"model":"a","model":"b"}"#,
        #"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
        #"{"error":{"message":"rate limited","type":"server_error"}}"#,
        #"{"choices":[]} trailing"#,
        #"[1,2]"#,
        #""done""#,
        #"not json"#,
    ]
    static let commonChunks = 7

    func testStreamChunkFastPathMatchesJSONDecoder() {
        for (i, body) in Self.chunks.enumerated() {
            let bytes = Array(body.utf8)
            let slow = bytes.withUnsafeBytes { StreamChunkSummary.decodeWithJSONDecoder($0) }
            XCTAssertEqual(StreamChunkSummary.decode(bytes), slow, body)
            let fast = bytes.withUnsafeBytes { StreamChunkSummary.fastPath($0) }
            if i < Self.commonChunks {
                XCTAssertNotNil(fast, "a common chunk must not need JSONDecoder: \(body)")
            }
            if let fast { XCTAssertEqual(fast, slow, body) }
        }
        // The summary holds what the relay logs.
        let s = StreamChunkSummary.decode(Array(Self.chunks[4].utf8))
        XCTAssertEqual(s?.choices.map(\.index), [1, 0])
        XCTAssertEqual(s?.choices.last?.content, "a")
        XCTAssertEqual(StreamChunkSummary.decode(Array(Self.chunks[3].utf8))?.usage?.totalTokens, 12)
    }
}
