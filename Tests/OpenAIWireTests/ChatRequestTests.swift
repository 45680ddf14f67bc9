import XCTest

@testable import OpenAIWire

final class ChatRequestTests: XCTestCase {
    func decode(_ s: String) throws(GatewayError) -> ChatCompletionRequest {
        try ChatCompletionRequest.decode(from: Data(s.utf8))
    }

    func testValidRequest() throws {
        let r = try decode(
            #"{"model":"m","messages":[{"role":"system","content":"s"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}],"stream":true,"stream_options":{"include_usage":true},"stop":"x","unknown_field":{"deep":[1]}}"#
        )
        XCTAssertTrue(r.isStream)
        XCTAssertTrue(r.wantsUsageInStream)
        XCTAssertEqual(r.messages[1].text, "a\nb")
        XCTAssertEqual(r.stop?.values, ["x"])
    }

    func testErrorsNameTheParameter() {
        let cases: [(String, String?, Int)] = [
            (#"{"messages":[{"role":"user","content":"x"}]}"#, "model", 400),
            (#"{"model":"m"}"#, "messages", 400),
            (#"{"model":5,"messages":[]}"#, "model", 400),
            (#"{"model":"m","messages":[]}"#, "messages", 400),
            (#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#, "messages[0].role", 400),
            (#"{"model":"m","messages":[{"content":"x"}]}"#, "messages[0].role", 400),
            (#"{"model":"m","messages":[{"role":"user"}]}"#, "messages[0].content", 400),
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":3}"#, "temperature", 400),
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#, "temperature", 400),
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":0}"#, "max_tokens", 400),
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}"#, "stream", 400),
            (#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1e300}"#, "max_tokens", 400),
        ]
        for (body, param, status) in cases {
            do {
                _ = try decode(body)
                XCTFail("accepted \(body)")
            } catch {
                XCTAssertEqual(error.status, status, body)
                XCTAssertEqual(error.body.param, param, "\(body): \(error.body.message)")
                XCTAssertEqual(error.body.type, "invalid_request_error")
                XCTAssertFalse(error.body.message.isEmpty)
            }
        }
    }

    func testErrorBodyShape() throws {
        let e = GatewayError.missingField("model")
        let obj = try JSONSerialization.jsonObject(with: e.encoded()) as? [String: Any]
        let err = try XCTUnwrap(obj?["error"] as? [String: Any])
        XCTAssertEqual(Set(err.keys), ["message", "type", "param", "code"])
    }
}
