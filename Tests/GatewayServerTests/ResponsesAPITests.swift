import FakeUpstream
import Foundation
import PromptR1
import TrafficLog
import XCTest

@testable import GatewayServer

/// `POST /v1/responses`: passthrough with model mapping, and collaboration answering in the
/// Responses shape, driven by the official SDK's `client.responses.create`.
final class ResponsesAPITests: XCTestCase {
    func testOfficialSDKResponsesOnBothModes() async throws {
        let py = try await OpenAISDKTests.requireSDK()
        let cases = try CollaborationTests.cases()
        let h = try await CollaborationTests.start(cases)
        let script = OpenAISDKTests.repoRoot.appendingPathComponent("Tests/compat/openai_sdk_responses.py").path
        let (status, out, err) = try await OpenAISDKTests.run(py, [script, cases[0].question], env: ["GATEWAY_BASE_URL": "\(h.base)/v1"])
        let received = h.upstream.received
        try await h.stop()
        XCTAssertEqual(status, 0, "stdout: \(out)\nstderr: \(err)")
        let seen = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], out)
        XCTAssertEqual(seen["passthrough"] as? String, "echo: hello responses")
        XCTAssertEqual(seen["passthrough_stream"] as? String, "echo: stream responses")
        XCTAssertEqual(seen["passthrough_stream_last"] as? String, "response.completed")
        XCTAssertEqual(seen["collab"] as? String, cases[0].final_answer)
        XCTAssertEqual(seen["collab_status"] as? String, "completed")
        XCTAssertGreaterThan(seen["collab_usage_total"] as? Int ?? 0, 0)
        XCTAssertEqual(seen["collab_list"] as? String, cases[0].final_answer)
        XCTAssertEqual(seen["collab_stream"] as? String, cases[0].final_answer)
        XCTAssertEqual(seen["collab_stream_final"] as? String, cases[0].final_answer)
        XCTAssertEqual(
            seen["collab_stream_types"] as? [String],
            [
                "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
                "response.output_text.delta", "response.output_text.done", "response.content_part.done",
                "response.output_item.done", "response.completed",
            ])
        // Passthrough requests went to /v1/responses; collaboration episodes called chat completions.
        XCTAssertEqual(received.filter { $0.path == "/v1/responses" }.count, 2)
        XCTAssertTrue(
            received.filter { $0.path == "/v1/chat/completions" }.allSatisfy {
                ($0.json?["messages"] as? [[String: Any]])?.contains { ($0["content"] as? String) == PromptR1Prompt.upstreamSystemPrompt }
                    ?? false
            })
        let db = try TrafficDatabase(path: h.dbPath)
        let episodes = try db.episodes(EpisodeQuery())
        XCTAssertEqual(episodes.filter { $0.route == "/v1/responses" && $0.mode == "collaborate" }.count, 3)
        XCTAssertEqual(episodes.filter { $0.route == "/v1/responses" && $0.mode == "passthrough" }.map(\.outcome), ["ok", "ok"])
    }
}
