import AsyncHTTPClient
import FakeUpstream
import Foundation
import GRDB
import Logging
import NIOCore
import NIOHTTP1
import OpenAIWire
import TrafficLog
import XCTest

@testable import GatewayServer

/// A running gateway in front of a fake upstream, both on OS-chosen loopback ports, with the
/// traffic log in a fresh temporary SQLite file.
final class Harness: @unchecked Sendable {
    let upstream: FakeUpstream
    let gateway: Gateway
    let runTask: Task<Void, any Error>
    let port: Int
    let adminPort: Int
    var adminBase: String { "http://127.0.0.1:\(adminPort)" }
    let client: HTTPClient
    let directory: URL
    var dbPath: String { directory.appendingPathComponent("traffic.sqlite").path }
    var base: String { "http://127.0.0.1:\(port)" }

    static func start(
        script: FakeUpstream.Script? = nil, environment: [String: String] = [:], configPath: String? = nil,
        configure: (inout GatewayConfig) -> Void = { _ in }
    ) async throws -> Harness {
        let upstream = try await FakeUpstream(script: script)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var config = GatewayConfig()
        config.server.port = 0
        config.admin.port = 0
        config.upstream.baseURL = upstream.baseURL
        config.upstream.apiKeyEnv = "TEST_UPSTREAM_KEY"
        config.upstream.maxRetries = 0
        config.auth.clientKeysEnv = "TEST_CLIENT_KEYS"
        config.log.path = dir.appendingPathComponent("traffic.sqlite").path
        // Tests read the log right after a response: with the commit before the response, the
        // row is there by then. Tests of the default (async) mode set it themselves.
        config.log.durability = .commitBeforeResponse
        configure(&config)
        var logger = Logger(label: "gateway-test")
        logger.logLevel = .error
        let gateway = try Gateway(config: config, configPath: configPath, environment: environment, logger: logger)
        let task = Task { try await gateway.run(gracefulShutdownSignals: []) }
        let port = await gateway.waitForPort()
        let adminPort = await gateway.waitForAdminPort()
        return Harness(upstream: upstream, gateway: gateway, runTask: task, port: port, adminPort: adminPort, directory: dir)
    }

    private init(upstream: FakeUpstream, gateway: Gateway, runTask: Task<Void, any Error>, port: Int, adminPort: Int, directory: URL) {
        self.adminPort = adminPort
        self.upstream = upstream
        self.gateway = gateway
        self.runTask = runTask
        self.port = port
        self.directory = directory
        var config = HTTPClient.Configuration()
        config.timeout = .init(connect: .seconds(5), read: .seconds(30))
        config.connectionPool = .init(idleTimeout: .seconds(30), concurrentHTTP1ConnectionsPerHostSoftLimit: 256)
        client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: config)
    }

    private var stopped = false

    /// Graceful stop: in-flight requests finish, the log drains.
    func stop() async throws {
        stopped = true
        await gateway.shutdown()
        try await runTask.value
        try await client.shutdown()
        await upstream.stop()
    }

    /// A test that failed before `stop()` must not also crash the run (an HTTPClient that is
    /// never shut down traps in its deinit), so that its own failure is what gets reported.
    deinit {
        if !stopped {
            try? client.syncShutdown()
            runTask.cancel()
        }
    }

    struct Reply {
        var status: Int
        var headers: HTTPHeaders
        var body: String
        var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] }
        var error: [String: Any]? { json?["error"] as? [String: Any] }
        var episodeID: String? { headers.first(name: "x-gateway-episode-id") }
    }

    func request(
        _ method: HTTPMethod = .POST, _ path: String, body: String? = nil, bodyBytes: [UInt8]? = nil,
        headers: [(String, String)] = [("content-type", "application/json")]
    ) async throws -> Reply {
        var req = HTTPClientRequest(url: base + path)
        req.method = method
        for (k, v) in headers { req.headers.add(name: k, value: v) }
        if let body { req.body = .bytes(ByteBuffer(string: body)) }
        if let bodyBytes { req.body = .bytes(ByteBuffer(bytes: bodyBytes)) }
        let resp = try await client.execute(req, timeout: .seconds(30))
        let bytes = try await resp.body.collect(upTo: 64 << 20)
        return Reply(status: Int(resp.status.code), headers: resp.headers, body: String(buffer: bytes))
    }

    func admin(_ method: HTTPMethod, _ path: String, body: String? = nil, token: String? = nil) async throws -> Reply {
        var req = HTTPClientRequest(url: adminBase + path)
        req.method = method
        if let token { req.headers.add(name: "authorization", value: "Bearer \(token)") }
        if let body { req.body = .bytes(ByteBuffer(string: body)) }
        let resp = try await client.execute(req, timeout: .seconds(60))
        let bytes = try await resp.body.collect(upTo: 16 << 20)
        return Reply(status: Int(resp.status.code), headers: resp.headers, body: String(buffer: bytes))
    }

    func chat(_ body: String, headers: [(String, String)] = [("content-type", "application/json")]) async throws -> Reply {
        try await request(.POST, "/v1/chat/completions", body: body, headers: headers)
    }

    /// Reads the log with its own connection, as an operator would.
    func withDatabase<T>(_ body: (Database) throws -> T) throws -> T {
        let queue = try DatabaseQueue(path: dbPath)
        return try queue.read(body)
    }
}

/// Asserts the OpenAI error shape and returns the error object.
@discardableResult
func assertOpenAIError(_ reply: Harness.Reply, status: Int, file: StaticString = #filePath, line: UInt = #line) -> [String: Any] {
    XCTAssertEqual(reply.status, status, reply.body, file: file, line: line)
    guard let error = reply.error else {
        XCTFail("not an OpenAI error body: \(reply.body)", file: file, line: line)
        return [:]
    }
    XCTAssertEqual(Set(error.keys), ["message", "type", "param", "code"], file: file, line: line)
    XCTAssertFalse((error["message"] as? String ?? "").isEmpty, file: file, line: line)
    XCTAssertNotNil(reply.episodeID, "x-gateway-episode-id missing", file: file, line: line)
    return error
}

let simpleChat = #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}"#
