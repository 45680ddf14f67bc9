import Foundation
import XCTest

@testable import GatewayServer

final class ConfigTests: XCTestCase {
    func parse(_ s: String) throws -> GatewayConfig { try GatewayConfig.parse(Data(s.utf8)) }

    func assertConfigError(_ s: String, path: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try parse(s), file: file, line: line) { e in
            XCTAssertEqual((e as? ConfigError)?.path, path, "\(e)", file: file, line: line)
        }
    }

    func testShippedConfigParses() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().resolvingSymlinksInPath().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("gateway.json")
        let c = try GatewayConfig.load(path: url.path)
        XCTAssertEqual(c.route(forModel: "prompt-r1/gpt-4o-mini").mode, .collaborate)
        XCTAssertEqual(c.route(forModel: "prompt-r1/gpt-4o-mini").upstreamModel, "gpt-4o-mini")
        XCTAssertEqual(c.route(forModel: "gpt-4o").mode, .passthrough)
    }

    func testErrorsNameTheKeyPath() {
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1","base_ur":"y"}}"#, path: "upstream.base_ur")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1","connect_timeout_ms":"5"}}"#, path: "upstream.connect_timeout_ms")
        assertConfigError(#"{"upstream":{}}"#, path: "upstream.base_url")
        assertConfigError(#"{}"#, path: "upstream.base_url")
        assertConfigError(#"{"upstream":{"base_url":"ftp://x"}}"#, path: "upstream.base_url")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1","api_key_env":"sk-live-123"}}"#, path: "upstream.api_key_env")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1"},"server":{"port":70000}}"#, path: "server.port")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1"},"routes":[{"model":"a","mode":"fast"}]}"#, path: "routes[0].mode")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1"},"routes":[{"mode":"passthrough"}]}"#, path: "routes[0].model")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1"},"log":{"durability":"maybe"}}"#, path: "log.durability")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1"},"log":{"redact_bodies":1}}"#, path: "log.redact_bodies")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1","forward_headers":["connection"]}}"#, path: "upstream.forward_headers[0]")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1"},"extra":1}"#, path: "extra")
        assertConfigError(#"{"upstream":{"base_url":"http://x/v1"},"policy":{"weights":"int4"}}"#, path: "policy.weights")
        XCTAssertEqual(try parse(#"{"upstream":{"base_url":"http://x/v1"},"policy":{"weights":"q8"}}"#).policy.weights, .q8)
        XCTAssertEqual(try parse(#"{"upstream":{"base_url":"http://x/v1"}}"#).policy.weights, .f32)
    }

    func testRouting() throws {
        let c = try parse(
            #"{"upstream":{"base_url":"http://x/v1"},"routes":[{"model":"smart","mode":"collaborate","upstream_model":"gpt-4o"},{"model":"prompt-r1/*","mode":"collaborate"},{"model":"*","mode":"passthrough"}]}"#
        )
        XCTAssertEqual(c.route(forModel: "smart").mode, .collaborate)
        XCTAssertEqual(c.route(forModel: "smart").upstreamModel, "gpt-4o")
        XCTAssertEqual(c.route(forModel: "prompt-r1/x").upstreamModel, "x")
        XCTAssertEqual(c.route(forModel: "prompt-r1/").mode, .passthrough)
        XCTAssertEqual(c.collaborationAliases(upstreamModels: ["a", "b"]), ["smart", "prompt-r1/a", "prompt-r1/b"])
    }
}
