import AsyncHTTPClient
import FakeUpstream
import Foundation
import GRDB
import NIOCore
import NIOHTTP1
import XCTest

/// The real `gateway` executable as a child process, as an operator runs it: killed with
/// SIGKILL under load (crash safety), and run at trace log level with known secrets (no secret
/// in any log line or database file).
final class ProcessTests: XCTestCase {
    /// The built executable sits next to the test bundle.
    static func executable() throws -> URL {
        var dir = Bundle.main.bundleURL
        for _ in 0..<3 {
            let candidate = dir.appendingPathComponent("gateway")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        for b in Bundle.allBundles {
            let candidate = b.bundleURL.deletingLastPathComponent().appendingPathComponent("gateway")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw XCTSkip("gateway is not built next to the tests (run `swift build --build-tests`)")
    }

    /// A running gateway process; its stderr (the log) is collected as it comes.
    final class Child: @unchecked Sendable {
        let process = Process()
        private let lock = NSLock()
        private var output = Data()
        let directory: URL
        var dbPath: String { directory.appendingPathComponent("traffic.sqlite").path }

        init(upstream: String, environment: [String: String], logLevel: String = "info", durability: String? = nil) throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("gw-proc-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let config = directory.appendingPathComponent("gateway.json")
            let log = durability.map { #", "log": {"durability": "\#($0)"}"# } ?? ""
            try Data(
                #"{"upstream": {"base_url": "\#(upstream)", "api_key_env": "PROC_UPSTREAM_KEY", "max_retries": 0}, "auth": {"client_keys_env": "PROC_CLIENT_KEYS"}, "admin": {"token_env": "PROC_ADMIN_TOKEN"}\#(log)}"#
                    .utf8
            ).write(to: config)
            process.executableURL = try ProcessTests.executable()
            process.arguments = [
                "serve", "--config", config.path, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
                "--log-db", dbPath, "--log-level", logLevel,
            ]
            var env = ProcessInfo.processInfo.environment
            for (k, v) in environment { env[k] = v }
            process.environment = env
            let pipe = Pipe()
            process.standardError = pipe
            process.standardOutput = pipe
            pipe.fileHandleForReading.readabilityHandler = { [weak self] h in
                let d = h.availableData
                guard let self, !d.isEmpty else { return }
                self.lock.withLock { self.output.append(d) }
            }
            try process.run()
        }

        var log: String { lock.withLock { String(decoding: output, as: UTF8.self) } }

        /// Waits for the "gateway listening" line and returns (port, admin port).
        func ports(timeout: TimeInterval = 60) async throws -> (Int, Int) {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                let text = log
                if let r = text.range(of: #"address=127\.0\.0\.1:(\d+)"#, options: .regularExpression),
                    let a = text.range(of: #"admin=127\.0\.0\.1:(\d+)"#, options: .regularExpression),
                    let port = Int(text[r].split(separator: ":").last ?? ""), let admin = Int(text[a].split(separator: ":").last ?? "")
                {
                    return (port, admin)
                }
                XCTAssertTrue(process.isRunning, "gateway exited: \(text)")
                if !process.isRunning { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            throw XCTSkip("the gateway did not report its port: \(log)")
        }

        func kill(_ signal: Int32) {
            Foundation.kill(process.processIdentifier, signal)
            process.waitUntilExit()
        }
    }

    static func httpClient() -> HTTPClient {
        var config = HTTPClient.Configuration()
        config.timeout = .init(connect: .seconds(5), read: .seconds(30))
        return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: config)
    }

    /// SIGKILL in the middle of mixed traffic. With `commit_before_response` a response's last
    /// byte (a stream's `[DONE]`) leaves only after its episode is committed, so every response
    /// the clients saw complete must be in the file, and the file must open clean.
    func testKill9UnderLoadLosesNoCompletedEpisode() async throws {
        let upstream = try await FakeUpstream(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                return .delayed(.milliseconds(Int.random(in: 1...15)), FakeUpstream.defaultReply(r))
            }, recordRequests: false)
        let child = try Child(upstream: upstream.baseURL, environment: [:], durability: "commit_before_response")
        let (port, _) = try await child.ports()
        let client = Self.httpClient()
        let completed = IDs()
        let stop = Date().addingTimeInterval(2.0)
        // Eight clients, half streaming, until the kill (which makes their requests fail).
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var i = 0
                    while true {
                        i += 1
                        let stream = (worker + i) % 2 == 0
                        var req = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/chat/completions")
                        req.method = .POST
                        req.headers.add(name: "content-type", value: "application/json")
                        req.body = .bytes(
                            ByteBuffer(
                                string:
                                    #"{"model":"gpt-4o-mini","stream":\#(stream),"messages":[{"role":"user","content":"worker \#(worker) request \#(i)"}]}"#
                            ))
                        do {
                            let resp = try await client.execute(req, timeout: .seconds(10))
                            let body = String(buffer: try await resp.body.collect(upTo: 1 << 20))
                            let done = stream ? body.hasSuffix("data: [DONE]\n\n") : body.contains("\"chat.completion\"")
                            if resp.status == .ok, done, let id = resp.headers.first(name: "x-gateway-episode-id") { completed.add(id) }
                        } catch {
                            return  // the gateway is gone
                        }
                    }
                }
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(max(0.1, stop.timeIntervalSinceNow)))
                child.kill(SIGKILL)
            }
        }
        try await client.shutdown()
        await upstream.stop()
        XCTAssertEqual(child.process.terminationReason, .uncaughtSignal)
        let ids = completed.all
        XCTAssertGreaterThan(ids.count, 20, "the load ran before the kill")

        // The file as the next start (or an operator) finds it.
        let queue = try DatabaseQueue(path: child.dbPath)
        let (integrity, logged) = try await queue.read { db in
            (try String.fetchOne(db, sql: "PRAGMA integrity_check"), Set(try String.fetchAll(db, sql: "SELECT id FROM episodes")))
        }
        XCTAssertEqual(integrity, "ok")
        let missing = ids.filter { !logged.contains($0) }
        XCTAssertTrue(missing.isEmpty, "\(missing.count) of \(ids.count) completed responses missing from the log")
        // And the gateway starts again on the same file.
        let again = try Child(upstream: "http://127.0.0.1:9/v1", environment: [:])
        _ = try await again.ports()
        again.kill(SIGTERM)
        XCTAssertEqual(again.process.terminationStatus, 0, again.log)
    }

    /// With `durability: async` no commit sits in a request's path. The binary
    /// runs Swift concurrency on its event loops, so a commit made on one of them would stall
    /// every request of that loop. Another connection holds SQLite's write lock for 1.5 s (the
    /// log writer waits in SQLite's busy handler meanwhile); requests keep completing quickly,
    /// and once the lock is gone every one of them is committed.
    func testAsyncLogWritesNeverHoldUpResponses() async throws {
        let upstream = try await FakeUpstream(recordRequests: false)
        let child = try Child(upstream: upstream.baseURL, environment: [:], durability: "async")
        let (port, _) = try await child.ports()
        let client = Self.httpClient()
        func chat() async throws -> (Int, String?) {
            var req = HTTPClientRequest(url: "http://127.0.0.1:\(port)/v1/chat/completions")
            req.method = .POST
            req.headers.add(name: "content-type", value: "application/json")
            req.body = .bytes(ByteBuffer(string: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#))
            let resp = try await client.execute(req, timeout: .seconds(10))
            _ = try await resp.body.collect(upTo: 1 << 20)
            return (Int(resp.status.code), resp.headers.first(name: "x-gateway-episode-id"))
        }
        _ = try await chat()  // the schema exists, connections are warm
        let blocker = try DatabaseQueue(path: child.dbPath)
        let locked = AsyncStream<Void>.makeStream()
        let holder = Thread {
            try? blocker.inDatabase { db in
                try db.execute(sql: "BEGIN IMMEDIATE")
                locked.continuation.yield()
                Thread.sleep(forTimeInterval: 1.5)
                try db.execute(sql: "COMMIT")
            }
        }
        holder.start()
        for await _ in locked.stream { break }
        let clock = ContinuousClock()
        let start = clock.now
        var ids: [String] = []
        var slowest = Duration.zero
        // Rounds of concurrent requests, so that both event loops serve some while the lock is held.
        for _ in 0..<4 {
            let t0 = clock.now
            let replies = try await withThrowingTaskGroup(of: (Int, String?).self) { group in
                for _ in 0..<4 { group.addTask { try await chat() } }
                var out: [(Int, String?)] = []
                for try await r in group { out.append(r) }
                return out
            }
            slowest = max(slowest, clock.now - t0)
            for (status, id) in replies {
                XCTAssertEqual(status, 200)
                if let id { ids.append(id) }
            }
        }
        XCTAssertLessThan(clock.now - start, .milliseconds(1400), "the 16 requests finished while the write lock was still held")
        XCTAssertLessThan(slowest, .milliseconds(700), "no request waited for the blocked commit")
        XCTAssertEqual(ids.count, 16)
        try await client.shutdown()
        child.kill(SIGTERM)
        await upstream.stop()
        XCTAssertEqual(child.process.terminationStatus, 0, child.log)
        let logged = try await DatabaseQueue(path: child.dbPath).read { db in Set(try String.fetchAll(db, sql: "SELECT id FROM episodes")) }
        XCTAssertTrue(Set(ids).isSubset(of: logged), "every response is logged once the lock is released")
    }

    /// Known secret values go through every path (client key, upstream key, admin token, a
    /// wrong key, a key-shaped string in a header the gateway drops); afterwards no log line at
    /// trace level and no byte of the database files contains any of them.
    func testNoSecretInLogLinesOrDatabase() async throws {
        let upstream = try await FakeUpstream()
        let secrets = [
            "clientkey-SECRET-aaaa1111", "clientkey-SECRET-bbbb2222", "sk-upstream-SECRET-cccc3333",
            "admintoken-SECRET-dddd4444", "wrongkey-SECRET-eeee5555",
        ]
        let child = try Child(
            upstream: upstream.baseURL,
            environment: [
                "PROC_CLIENT_KEYS": "\(secrets[0]),\(secrets[1])",
                "PROC_UPSTREAM_KEY": secrets[2],
                "PROC_ADMIN_TOKEN": secrets[3],
            ], logLevel: "trace")
        let (port, adminPort) = try await child.ports()
        let client = Self.httpClient()
        func call(_ url: String, method: HTTPMethod = .POST, body: String?, auth: String?) async throws -> Int {
            var req = HTTPClientRequest(url: url)
            req.method = method
            req.headers.add(name: "content-type", value: "application/json")
            if let auth { req.headers.add(name: "authorization", value: "Bearer \(auth)") }
            req.headers.add(name: "x-api-key", value: secrets[4])
            if let body { req.body = .bytes(ByteBuffer(string: body)) }
            let resp = try await client.execute(req, timeout: .seconds(10))
            _ = try await resp.body.collect(upTo: 1 << 20)
            return Int(resp.status.code)
        }
        let chat = "http://127.0.0.1:\(port)/v1/chat/completions"
        let status1 = try await call(chat, body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#, auth: secrets[0])
        XCTAssertEqual(status1, 200)
        let status2 = try await call(
            chat, body: #"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"hi"}]}"#, auth: secrets[1])
        XCTAssertEqual(status2, 200)
        let status3 = try await call(chat, body: #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#, auth: secrets[4])
        XCTAssertEqual(status3, 401)
        let status4 = try await call(chat, body: "{broken", auth: secrets[0])
        XCTAssertEqual(status4, 400)
        let status5 = try await call("http://127.0.0.1:\(port)/v1/models", method: .GET, body: nil, auth: secrets[0])
        XCTAssertEqual(status5, 200)
        let status6 = try await call("http://127.0.0.1:\(adminPort)/admin/policy", method: .GET, body: nil, auth: secrets[3])
        XCTAssertEqual(status6, 200)
        let status7 = try await call("http://127.0.0.1:\(adminPort)/admin/policy", method: .GET, body: nil, auth: secrets[4])
        XCTAssertEqual(status7, 401)
        XCTAssertEqual(upstream.received.first?.headers["authorization"], "Bearer \(secrets[2])", "the upstream key was used")
        try await client.shutdown()
        child.kill(SIGTERM)
        await upstream.stop()
        let log = child.log
        XCTAssertTrue(log.contains("gateway stopped"), log)
        XCTAssertGreaterThan(log.split(separator: "\n").count, 5, "trace logging produced lines to search")
        var files: [URL] = []
        for name in try FileManager.default.contentsOfDirectory(atPath: child.directory.path) where name.hasPrefix("traffic.sqlite") {
            files.append(child.directory.appendingPathComponent(name))
        }
        XCTAssertFalse(files.isEmpty)
        let queue = try DatabaseQueue(path: child.dbPath)
        let count = try await queue.read { try Int.fetchOne($0, sql: "SELECT count(*) FROM episodes") }
        XCTAssertEqual(count, 3, "two chats and the malformed one; unauthenticated requests are not logged")
        for secret in secrets {
            XCTAssertFalse(log.contains(secret), "\(secret) appears in the log output")
            for f in files {
                let bytes = try Data(contentsOf: f)
                XCTAssertNil(bytes.range(of: Data(secret.utf8)), "\(secret) appears in \(f.lastPathComponent)")
            }
        }
    }
}

final class IDs: @unchecked Sendable {
    private let lock = NSLock()
    private var ids: [String] = []
    func add(_ id: String) { lock.withLock { ids.append(id) } }
    var all: [String] { lock.withLock { ids } }
}
