import Foundation
import OpenAIWire
import XCTest

@testable import GatewayServer

/// What the gateway itself writes to clients (collaboration completions and stream chunks,
/// errors, the model list) validated against OpenAI's own OpenAPI document
/// (../shared/openai/openapi.json) with the `jsonschema` library.
final class OpenAPISchemaTests: XCTestCase {
    func testGatewayOutputMatchesOpenAISchemas() async throws {
        // shared/ sits beside the checkout (as in CI); OPENAI_OPENAPI_SPEC can point elsewhere.
        var candidates = [OpenAISDKTests.repoRoot.deletingLastPathComponent().appendingPathComponent("shared/openai/openapi.json")]
        if let p = ProcessInfo.processInfo.environment["OPENAI_OPENAPI_SPEC"] { candidates.insert(URL(fileURLWithPath: p), at: 0) }
        guard let spec = candidates.first(where: { FileManager.default.fileExists(atPath: $0.path) }) else {
            throw XCTSkip("OpenAI's openapi.json not found at \(candidates.map(\.path)); set OPENAI_OPENAPI_SPEC")
        }
        let py = try await OpenAISDKTests.requireSDK()
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases, configure: { c in c.limits.maxBodyBytes = 4096 })
        var docs: [(String, String)] = []
        let question = String(
            decoding: try JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": cases[0].question]],
            ]), as: UTF8.self)
        docs.append(
            (
                "CreateChatCompletionResponse",
                try await h.chat(question, headers: [("content-type", "application/json"), ("x-gateway-trace", "1")]).body
            ))
        let streamBody = String(
            decoding: try JSONSerialization.data(
                withJSONObject: [
                    "model": "prompt-r1/gpt-4o-mini", "stream": true, "stream_options": ["include_usage": true],
                    "messages": [["role": "user", "content": cases[0].question]],
                ] as [String: Any]), as: UTF8.self)
        let stream = try await h.chat(streamBody, headers: [("content-type", "application/json"), ("x-gateway-trace", "1")])
        var parser = SSEParser()
        for e in try parser.feed(Array(stream.body.utf8)) where !e.isDone && !e.data.isEmpty {
            docs.append(("CreateChatCompletionStreamResponse", e.dataString))
        }
        docs.append(("ListModelsResponse", try await h.request(.GET, "/v1/models").body))
        for body in [
            "{bad", #"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#,
            "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"" + String(repeating: "a", count: 5000) + "\"}]}",
        ] {
            docs.append(("ErrorResponse", try await h.chat(body).body))
        }
        docs.append(("ErrorResponse", try await h.request(.GET, "/nope").body))
        try await h.stop()
        XCTAssertGreaterThan(docs.count, 10)

        var input = ""
        for (schema, json) in docs {
            let instance = try JSONSerialization.jsonObject(with: Data(json.utf8))
            let line = try JSONSerialization.data(withJSONObject: ["schema": schema, "instance": instance])
            input += String(decoding: line, as: UTF8.self) + "\n"
        }
        let script = OpenAISDKTests.repoRoot.appendingPathComponent("Tests/compat/validate_openapi.py").path
        let (status, out, err) = try await OpenAISDKTests.run(py, [script, spec.path], stdin: input)
        if err.contains("No module named 'jsonschema'") {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("jsonschema missing; the test command installs it") }
            throw XCTSkip("jsonschema not installed")
        }
        XCTAssertEqual(status, 0, "schema violations: \(out)\n\(err)")
        XCTAssertTrue(out.contains("\"checked\": \(docs.count)"), out)
    }
}
