import AsyncHTTPClient
import FakeUpstream
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import TrafficLog
import TrafficLogPostgres
import XCTest

@testable import GatewayServer

#if canImport(Glibc)
    import Glibc
#endif

/// Several `gateway` processes on one shared PostgreSQL traffic log (the server of
/// scripts/with-postgres.sh; without it these tests fail, they never skip).
final class ReplicaTests: XCTestCase {
    static let adminToken = "replica-ADMIN-token"

    static func testServerURL() throws -> String {
        guard let url = ProcessInfo.processInfo.environment["GATEWAY_TEST_POSTGRES_URL"], !url.isEmpty else {
            XCTFail("GATEWAY_TEST_POSTGRES_URL is not set: run the tests through scripts/test.sh (it starts PostgreSQL)")
            throw PostgresLogError.invalidURL(reason: "no test server")
        }
        return url
    }

    static func freshDatabase() async throws -> String {
        let name = "r_" + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(20)
        return try await PostgresAdmin.createDatabase(named: String(name), adminURL: try testServerURL())
    }

    static func pgctl(_ action: String) throws {
        guard let ctl = ProcessInfo.processInfo.environment["GATEWAY_TEST_POSTGRES_CTL"] else {
            XCTFail("GATEWAY_TEST_POSTGRES_CTL is not set: run the tests through scripts/test.sh")
            return
        }
        XCTAssertEqual(spawnAndWait(ctl, action), 0, "\(ctl) \(action)")
    }

    /// A models directory of its own (each replica resolves recorded paths under its own).
    static func models(_ names: [String: String]) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-replica-models-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        for (name, fixture) in names {
            try FileManager.default.copyItem(
                at: CollaborationTests.fixtures.appendingPathComponent("models/\(fixture)"),
                to: dir.appendingPathComponent(name))
        }
        return dir
    }

    /// One replica: the real executable, with the URL in the environment as an operator runs it.
    final class Replica: @unchecked Sendable {
        let process = Process()
        private let lock = NSLock()
        private var output = Data()
        let directory: URL
        var port = 0
        var adminPort = 0

        init(
            upstream: String, logURL: String, models: URL, policy: String? = "A", durability: String = "commit_before_response",
            pollSeconds: Double = 5, extraLog: String = ""
        ) throws {
            directory = FileManager.default.temporaryDirectory.appendingPathComponent("gw-replica-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            let config = directory.appendingPathComponent("gateway.json")
            let policyLine = policy.map { #""path": "\#(models.appendingPathComponent($0).path)", "# } ?? ""
            try Data(
                #"""
                {"upstream": {"base_url": "\#(upstream)", "api_key_env": "REPLICA_UPSTREAM_KEY", "max_retries": 0},
                 "admin": {"token_env": "REPLICA_ADMIN_TOKEN", "models_dir": "\#(models.path)"},
                 "policy": {\#(policyLine)"temperature": 0, "max_turns": 3, "max_tokens_per_turn": 100, "fallback": "direct",
                            "max_concurrent_episodes": 64, "queue_timeout_ms": 120000},
                 "log": {"backend": "postgres", "postgres_url_env": "REPLICA_LOG_URL", "durability": "\#(durability)",
                         "policy_poll_seconds": \#(pollSeconds)\#(extraLog)}}
                """#.utf8
            ).write(to: config)
            process.executableURL = try ProcessTests.executable()
            process.arguments = ["serve", "--config", config.path, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0"]
            var env = ProcessInfo.processInfo.environment
            env["REPLICA_LOG_URL"] = logURL
            env["REPLICA_ADMIN_TOKEN"] = ReplicaTests.adminToken
            env["GATEWAY_TEST_POSTGRES_URL"] = nil
            process.environment = env
            process.currentDirectoryURL = directory
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

        func start() async throws {
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline {
                let text = log
                if let r = text.range(of: #"address=127\.0\.0\.1:(\d+)"#, options: .regularExpression),
                    let a = text.range(of: #"admin=127\.0\.0\.1:(\d+)"#, options: .regularExpression),
                    let p = Int(text[r].split(separator: ":").last ?? ""), let ap = Int(text[a].split(separator: ":").last ?? "")
                {
                    port = p
                    adminPort = ap
                    return
                }
                guard process.isRunning else { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            XCTFail("the replica did not start: \(log)")
            throw PostgresLogError.timeout(operation: "replica start", seconds: 60)
        }

        var base: String { "http://127.0.0.1:\(port)" }
        var adminBase: String { "http://127.0.0.1:\(adminPort)" }

        func kill(_ signal: Int32) {
            Foundation.kill(process.processIdentifier, signal)
            process.waitUntilExit()
        }
    }

    struct Reply: Sendable {
        var status: Int
        var body: String
        var episodeID: String?
        var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] }
    }

    static func call(
        _ client: HTTPClient, _ url: String, method: HTTPMethod = .POST, body: String? = nil,
        token: String? = nil, timeout: TimeAmount = .seconds(60)
    ) async throws -> Reply {
        var req = HTTPClientRequest(url: url)
        req.method = method
        req.headers.add(name: "content-type", value: "application/json")
        if let token { req.headers.add(name: "authorization", value: "Bearer \(token)") }
        if let body { req.body = .bytes(ByteBuffer(string: body)) }
        let resp = try await client.execute(req, timeout: timeout)
        let bytes = try await resp.body.collect(upTo: 16 << 20)
        return Reply(
            status: Int(resp.status.code), body: String(buffer: bytes), episodeID: resp.headers.first(name: "x-gateway-episode-id"))
    }

    static func currentVersion(_ client: HTTPClient, _ r: Replica) async throws -> (String?, [String: Any]?) {
        let s = try await call(client, r.adminBase + "/admin/policy", method: .GET, token: adminToken)
        return ((s.json?["current"] as? [String: Any])?["id"] as? String, s.json?["fleet"] as? [String: Any])
    }

    /// Waits until `condition` holds; returns the seconds it took.
    static func waitFor(_ what: String, timeout: Double, _ condition: () async throws -> Bool) async throws -> Double {
        let start = Date()
        while Date().timeIntervalSince(start) < timeout {
            if try await condition() { return Date().timeIntervalSince(start) }
            try await Task.sleep(for: .milliseconds(100))
        }
        XCTFail("timed out after \(timeout) s: \(what)")
        return timeout
    }

    static func collabBody(_ question: String, stream: Bool) -> String {
        String(
            decoding: try! JSONSerialization.data(withJSONObject: [
                "model": "prompt-r1/gpt-4o-mini", "stream": stream, "messages": [["role": "user", "content": question]],
            ]), as: UTF8.self)
    }

    static func content(_ r: Reply) -> String? {
        if let c = ((r.json?["choices"] as? [[String: Any]])?.first?["message"] as? [String: Any])?["content"] as? String { return c }
        // A stream: the concatenated content deltas.
        var text = ""
        for line in r.body.split(separator: "\n") where line.hasPrefix("data: {") {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any],
                let delta = (obj["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any],
                let c = delta["content"] as? String
            else { continue }
            text += c
        }
        return text
    }

    struct Sent: Sendable {
        var replica: Int
        var collab: Bool
        var reply: Reply
    }

    /// Six workers over the replicas at `bases`, collaboration and passthrough, streamed and
    /// not, until `stop` is raised (each sends at least two).
    static func mixedLoad(bases: [String], question: String, stop: Tally) async throws -> [Sent] {
        let client = HTTPClient.shared
        return try await withThrowingTaskGroup(of: [Sent].self) { group in
            for worker in 0..<6 {
                group.addTask {
                    var out: [Sent] = []
                    var i = 0
                    while stop.value == 0 || i < 2 {
                        i += 1
                        let replica = (worker + i) % bases.count
                        let collab = worker % 3 != 2
                        let stream = (worker + i) % 3 == 0
                        let body =
                            collab
                            ? Self.collabBody(question, stream: stream)
                            : #"{"model":"gpt-4o-mini","stream":\#(stream),"messages":[{"role":"user","content":"w\#(worker) r\#(i)"}]}"#
                        let r = try await Self.call(client, bases[replica] + "/v1/chat/completions", body: body)
                        out.append(Sent(replica: replica, collab: collab, reply: r))
                    }
                    return out
                }
            }
            var all: [Sent] = []
            for try await part in group { all += part }
            return all
        }
    }

    /// Eight workers on `base` until `stopAt`; answered ids into `results`, anything else counted.
    static func steadyLoad(base: String, until stopAt: Date, results: IDs, failures: Tally) async {
        let client = HTTPClient.shared
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var i = 0
                    while Date() < stopAt {
                        i += 1
                        do {
                            let reply = try await Self.call(
                                client, base + "/v1/chat/completions",
                                body: #"{"model":"m","stream":\#(i % 2 == 0),"messages":[{"role":"user","content":"w\#(worker) \#(i)"}]}"#,
                                timeout: .seconds(30))
                            if reply.status == 200, let id = reply.episodeID { results.add(id) } else { failures.add() }
                        } catch {
                            failures.add()
                        }
                    }
                }
            }
        }
    }

    /// Two replicas, mixed load (collaboration and passthrough, streamed and not, on both), a
    /// swap through one: both serve the new version within 10 s, no row is lost, every episode
    /// names the version whose weights served it, and feedback crosses replicas.
    func testTwoReplicasShareOneLogAndOnePolicyVersion() async throws {
        let cases = try CollaborationTests.cases()
        let question = cases[0]
        let upstream = try await FakeUpstream(script: CollaborationTests.script(cases), recordRequests: false)
        let url = try await Self.freshDatabase()
        // Each replica has its own models directory holding the same checkpoints: A speaks the
        // protocol, B (the untrained qwen3-tiny) does not.
        let r1 = try Replica(upstream: upstream.baseURL, logURL: url, models: try Self.models(["A": "promptr1-tiny", "B": "qwen3-tiny"]))
        let r2 = try Replica(upstream: upstream.baseURL, logURL: url, models: try Self.models(["A": "promptr1-tiny", "B": "qwen3-tiny"]))
        defer {
            r1.kill(SIGKILL)
            r2.kill(SIGKILL)
        }
        try await r1.start()
        try await r2.start()
        let client = HTTPClient.shared
        let replicas = [r1, r2]
        for r in replicas {
            _ = try await Self.waitFor("replica ready and in sync with the fleet", timeout: 30) {
                guard (try? await Self.call(client, r.adminBase + "/ready", method: .GET).status) == 200 else { return false }
                return try await Self.currentVersion(client, r).1?["version"] is String
            }
        }
        let (a1, _) = try await Self.currentVersion(client, r1)
        let (a2, fleet) = try await Self.currentVersion(client, r2)
        let versionA = try XCTUnwrap(a1)
        XCTAssertEqual(a2, versionA)
        XCTAssertEqual(fleet?["version"] as? String, versionA, "the first replica's version is the fleet's")
        XCTAssertEqual(fleet?["in_sync"] as? Bool, true)

        // Mixed load on both replicas until told to stop.
        let stop = Tally()
        let bases = replicas.map(\.base)
        async let load = Self.mixedLoad(bases: bases, question: question.question, stop: stop)
        try await Task.sleep(for: .seconds(1))
        let swap = try await Self.call(client, r1.adminBase + "/admin/policy", body: #"{"path": "B"}"#, token: Self.adminToken)
        XCTAssertEqual(swap.status, 200, swap.body)
        let versionB = try XCTUnwrap((swap.json?["current"] as? [String: Any])?["id"] as? String)
        XCTAssertNotEqual(versionB, versionA)
        let took = try await Self.waitFor("replica 2 serves the new version", timeout: 10) {
            try await Self.currentVersion(client, r2).0 == versionB
        }
        XCTAssertLessThan(took, 10)
        try await Task.sleep(for: .seconds(1))
        stop.add()
        let sent = try await load
        XCTAssertTrue(
            sent.allSatisfy { $0.reply.status == 200 },
            "failed: \(sent.filter { $0.reply.status != 200 }.map { "\($0.reply.status) \($0.reply.body.prefix(200))" })")
        // After the switch, both replicas serve B, and the replica that followed the shared log counts the
        // new engine's prompt tokens in its metrics.
        func computedPrefill(_ r: Replica) async throws -> Double {
            let text = try await Self.call(client, r.adminBase + "/metrics", method: .GET).body
            let line = text.split(separator: "\n").first { $0.hasPrefix(#"gateway_policy_prefill_tokens_total{cached="false"}"#) }
            return line.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
        }
        let followerBefore = try await computedPrefill(r2)
        var after: [Sent] = []
        for (i, r) in replicas.enumerated() {
            let reply = try await Self.call(
                client, r.base + "/v1/chat/completions", body: Self.collabBody(question.question, stream: false))
            after.append(Sent(replica: i, collab: true, reply: reply))
        }
        let followerAfter = try await computedPrefill(r2)
        XCTAssertGreaterThan(followerAfter, followerBefore, "the switched-to engine's prefill reaches /metrics")

        // Feedback through the other replica.
        let fromR1 = try XCTUnwrap(sent.first { $0.replica == 0 }?.reply.episodeID)
        let fromR2 = try XCTUnwrap(sent.first { $0.replica == 1 }?.reply.episodeID)
        let f1 = try await Self.call(client, r2.base + "/v1/feedback", body: #"{"episode_id": "\#(fromR1)", "score": 0.9}"#)
        XCTAssertEqual(f1.status, 200, f1.body)
        let f2 = try await Self.call(client, r1.base + "/v1/feedback", body: #"{"episode_id": "\#(fromR2)", "reference": "Paris"}"#)
        XCTAssertEqual(f2.status, 200, f2.body)
        let f3 = try await Self.call(client, r1.base + "/v1/feedback", body: #"{"episode_id": "no-such-episode", "score": 1}"#)
        XCTAssertEqual(f3.status, 404, f3.body)

        // The console of one replica reads the shared log: it lists and shows the episode the
        // other replica served, with the feedback given through the first one.
        let visitor = ConsoleTests.Visitor(adminBase: r1.adminBase)
        let login = try await visitor.logIn(token: Self.adminToken)
        XCTAssertEqual(login.status, 303, login.body)
        let list = try await visitor.send(.GET, "/console/episodes?feedback=yes")
        XCTAssertEqual(list.status, 200)
        XCTAssertTrue(
            list.body.contains(fromR2) && list.body.contains(fromR1), "the has-feedback list on replica 1 lacks the fleet's episodes")
        let detail = try await visitor.send(.GET, "/console/episodes/\(fromR2)")
        XCTAssertEqual(detail.status, 200)
        XCTAssertTrue(detail.body.contains("Paris"), "replica 1's console does not show the reference given for replica 2's episode")

        for r in replicas {
            r.kill(SIGTERM)
            XCTAssertEqual(r.process.terminationStatus, 0, r.log)
            XCTAssertFalse(r.log.contains(URLComponents(string: url)?.password ?? "\u{0}"), "the database password reached a log line")
        }
        await upstream.stop()

        let log = try await PostgresLogBackend.open(url: url, logger: Logger(label: "check"))
        let stored = try await log.episodes(EpisodeQuery())
        let byID = Dictionary(uniqueKeysWithValues: stored.map { ($0.id, $0) })
        let all = sent + after
        let ids = all.compactMap(\.reply.episodeID)
        XCTAssertEqual(ids.count, all.count)
        XCTAssertEqual(Set(ids), Set(byID.keys), "every request is one row, none lost, none extra")
        var versionsSeen: [Int: Set<String>] = [0: [], 1: []]
        for s in all where s.collab {
            let e = try XCTUnwrap(byID[s.reply.episodeID ?? ""])
            let v = try XCTUnwrap(e.policyVersion)
            versionsSeen[s.replica]?.insert(v)
            let content = Self.content(s.reply)
            if v == versionA {
                XCTAssertEqual(e.outcome, "answer")
                XCTAssertEqual(content, question.final_answer)
                XCTAssertEqual(e.turns.first { $0.kind == "policy" }?.outputIDs, question.turns[0].ids, "A's weights wrote A's tokens")
            } else {
                XCTAssertEqual(v, versionB)
                XCTAssertTrue(e.outcome?.hasPrefix("fallback") ?? false, e.outcome ?? "nil")
                XCTAssertEqual(content, "echo: " + question.question)
            }
        }
        for s in after {
            XCTAssertEqual(byID[s.reply.episodeID ?? ""]?.policyVersion, versionB, "replica \(s.replica + 1) serves B after the swap")
        }
        XCTAssertEqual(versionsSeen[0], [versionA, versionB])
        XCTAssertEqual(versionsSeen[1], [versionA, versionB])
        let fb = try await log.feedback(episodeIDs: [fromR1, fromR2])
        XCTAssertEqual(fb[fromR1]?.map(\.kind), ["score"])
        XCTAssertEqual(fb[fromR2]?.map(\.value), ["Paris"])
        let events = try await log.policyEvents(limit: 10)
        XCTAssertEqual(events.map(\.versionID), [versionB, versionA])
        XCTAssertEqual(events.map(\.action), [.swap, .start])
        XCTAssertEqual(events.first?.path, "B", "recorded relative to the models directory")
        let versions = try await log.policyVersions().map(\.id)
        XCTAssertEqual(Set(versions), [versionA, versionB])
        try await log.close()
    }

    /// A replica that cannot load the recorded version keeps serving its own, says so in
    /// `/ready` and `GET /admin/policy`, retries, and switches once it can.
    func testReplicaThatCannotLoadTheVersionKeepsServingAndRetries() async throws {
        let upstream = try await FakeUpstream(script: CollaborationTests.script(try CollaborationTests.cases()), recordRequests: false)
        let url = try await Self.freshDatabase()
        let models2 = try Self.models(["A": "promptr1-tiny"])  // no B here (yet)
        let r1 = try Replica(upstream: upstream.baseURL, logURL: url, models: try Self.models(["A": "promptr1-tiny", "B": "qwen3-tiny"]))
        let r2 = try Replica(upstream: upstream.baseURL, logURL: url, models: models2, pollSeconds: 0.5)
        defer {
            r1.kill(SIGKILL)
            r2.kill(SIGKILL)
        }
        try await r1.start()
        try await r2.start()
        let client = HTTPClient.shared
        for r in [r1, r2] {
            _ = try await Self.waitFor("replica ready and in sync with the fleet", timeout: 30) {
                guard (try? await Self.call(client, r.adminBase + "/ready", method: .GET).status) == 200 else { return false }
                return try await Self.currentVersion(client, r).1?["version"] is String
            }
        }
        let startVersion = try await Self.currentVersion(client, r2).0
        let versionA = try XCTUnwrap(startVersion)
        let swap = try await Self.call(client, r1.adminBase + "/admin/policy", body: #"{"path": "B"}"#, token: Self.adminToken)
        XCTAssertEqual(swap.status, 200, swap.body)
        let versionB = try XCTUnwrap((swap.json?["current"] as? [String: Any])?["id"] as? String)
        _ = try await Self.waitFor("replica 2 reports the failed load", timeout: 10) {
            try await Self.currentVersion(client, r2).1?["error"] is String
        }
        let (current, fleet) = try await Self.currentVersion(client, r2)
        XCTAssertEqual(current, versionA, "still serving the old version")
        XCTAssertEqual(fleet?["version"] as? String, versionB)
        XCTAssertEqual(fleet?["in_sync"] as? Bool, false)
        let ready = try await Self.call(client, r2.adminBase + "/ready", method: .GET)
        XCTAssertEqual(ready.status, 503)
        XCTAssertTrue(ready.body.contains(versionB), ready.body)
        let served = try await Self.call(client, r2.base + "/v1/chat/completions", body: Self.collabBody("hi", stream: false))
        XCTAssertEqual(served.status, 200, "the old version keeps serving")

        // The checkpoint arrives: the next check loads it.
        try FileManager.default.copyItem(
            at: CollaborationTests.fixtures.appendingPathComponent("models/qwen3-tiny"),
            to: models2.appendingPathComponent("B"))
        _ = try await Self.waitFor("replica 2 switches after the retry", timeout: 10) {
            try await Self.currentVersion(client, r2).0 == versionB
        }
        let readyAgain = try await Self.call(client, r2.adminBase + "/ready", method: .GET)
        XCTAssertEqual(readyAgain.status, 200, readyAgain.body)
        for r in [r1, r2] { r.kill(SIGTERM) }
        await upstream.stop()
    }

    /// kill -9 of one replica under load, with commit_before_response (the default): every
    /// response a client saw complete is in the shared log.
    func testKill9OfOneReplicaLosesNoCompletedEpisode() async throws {
        let upstream = try await FakeUpstream(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                return .delayed(.milliseconds(Int.random(in: 1...10)), FakeUpstream.defaultReply(r))
            }, recordRequests: false)
        let url = try await Self.freshDatabase()
        let models = try Self.models([:])
        let victim = try Replica(upstream: upstream.baseURL, logURL: url, models: models, policy: nil)
        let survivor = try Replica(upstream: upstream.baseURL, logURL: url, models: models, policy: nil)
        defer {
            victim.kill(SIGKILL)
            survivor.kill(SIGKILL)
        }
        try await victim.start()
        try await survivor.start()
        let client = HTTPClient.shared
        let completed = IDs()
        let killAt = Date().addingTimeInterval(2)
        await withTaskGroup(of: Void.self) { group in
            for worker in 0..<8 {
                group.addTask {
                    var i = 0
                    while true {
                        i += 1
                        let stream = (worker + i) % 2 == 0
                        let target = worker % 4 == 0 ? survivor : victim
                        do {
                            let r = try await Self.call(
                                client, target.base + "/v1/chat/completions",
                                body:
                                    #"{"model":"gpt-4o-mini","stream":\#(stream),"messages":[{"role":"user","content":"w\#(worker) \#(i)"}]}"#,
                                timeout: .seconds(10))
                            let done = stream ? r.body.hasSuffix("data: [DONE]\n\n") : r.body.contains("\"chat.completion\"")
                            if r.status == 200, done, let id = r.episodeID { completed.add(id) }
                        } catch {
                            if target === victim { return }
                        }
                        if target === survivor && Date() > killAt.addingTimeInterval(0.5) { return }
                    }
                }
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(max(0.1, killAt.timeIntervalSinceNow)))
                victim.kill(SIGKILL)
            }
        }
        XCTAssertEqual(victim.process.terminationReason, .uncaughtSignal)
        survivor.kill(SIGTERM)
        await upstream.stop()
        let ids = completed.all
        XCTAssertGreaterThan(ids.count, 20, "the load ran before the kill")
        let log = try await PostgresLogBackend.open(url: url, logger: Logger(label: "check"))
        let stored = Set(try await log.episodes(EpisodeQuery(includeTurns: false)).map(\.id))
        let missing = ids.filter { !stored.contains($0) }
        XCTAssertTrue(missing.isEmpty, "\(missing.count) of \(ids.count) completed responses missing from the shared log")
        try await log.close()
    }

    /// The database server stops in the middle of the load and starts again 3 s later. Requests
    /// wait meanwhile (the replica's `/ready` fails), none fails, and every one is in the log.
    func testDatabaseStoppedMidLoadAndRestartedLosesNoRow() async throws {
        let upstream = try await FakeUpstream(recordRequests: false)
        let url = try await Self.freshDatabase()
        let r = try Replica(
            upstream: upstream.baseURL, logURL: url, models: try Self.models([:]), policy: nil,
            extraLog: #", "queue_capacity": 16, "max_batch": 8"#)
        defer { r.kill(SIGKILL) }
        try await r.start()
        let client = HTTPClient.shared
        let results = IDs()
        let failures = Tally()
        var serverUp = true
        defer { if !serverUp { try? Self.pgctl("start") } }
        let stopAt = Date().addingTimeInterval(6)
        let base = r.base
        async let load: Void = Self.steadyLoad(base: base, until: stopAt, results: results, failures: failures)
        try await Task.sleep(for: .seconds(1))
        let beforeOutage = results.all.count
        try Self.pgctl("stop")
        serverUp = false
        try await Task.sleep(for: .seconds(1))
        let ready = try await Self.call(client, r.adminBase + "/ready", method: .GET, timeout: .seconds(10))
        XCTAssertEqual(ready.status, 503, "a replica without its database is not ready")
        XCTAssertTrue(ready.body.contains("unreachable"), ready.body)
        let duringOutage = results.all.count
        try await Task.sleep(for: .seconds(2))
        XCTAssertLessThanOrEqual(results.all.count - duringOutage, 0, "with commit_before_response nothing completes while the log is down")
        try Self.pgctl("start")
        serverUp = true
        await load
        XCTAssertGreaterThan(beforeOutage, 5)
        XCTAssertEqual(failures.value, 0, "requests wait through the outage; none fails")
        r.kill(SIGTERM)
        XCTAssertEqual(r.process.terminationStatus, 0, r.log)
        await upstream.stop()
        let log = try await PostgresLogBackend.open(url: url, logger: Logger(label: "check"))
        let stored = Set(try await log.episodes(EpisodeQuery(includeTurns: false)).map(\.id))
        let ids = results.all
        XCTAssertGreaterThan(ids.count, beforeOutage, "the load went on after the restart")
        XCTAssertEqual(stored, Set(ids), "every answered request is one row")
        try await log.close()
    }
}

/// The log keys, without a server.
final class LogBackendConfigTests: XCTestCase {
    func testBackendKeysParseAndFailClearly() throws {
        let c = try GatewayConfig.parse(
            Data(#"{"upstream":{"base_url":"http://x/v1"},"log":{"backend":"postgres","postgres_url_env":"MY_PG"}}"#.utf8))
        XCTAssertEqual(c.log.backend, .postgres)
        XCTAssertEqual(c.log.postgresURLEnv, "MY_PG")
        XCTAssertEqual(GatewayConfig().log.backend, .sqlite)
        XCTAssertEqual(GatewayConfig().log.postgresURLEnv, "GATEWAY_LOG_POSTGRES_URL")
        XCTAssertEqual(GatewayConfig().log.durability, .commitBeforeResponse, "durable by default")
        for (json, path) in [
            (#"{"upstream":{"base_url":"http://x/v1"},"log":{"backend":"mysql"}}"#, "log.backend"),
            (#"{"upstream":{"base_url":"http://x/v1"},"log":{"postgres_url_env":"postgres://u:p@h/d"}}"#, "log.postgres_url_env"),
        ] {
            XCTAssertThrowsError(try GatewayConfig.parse(Data(json.utf8))) { e in
                XCTAssertEqual((e as? ConfigError)?.path, path, "\(e)")
                XCTAssertFalse("\(e)".contains("u:p@"), "the URL is not echoed")
            }
        }
        // postgres without a URL in the environment: a clear start-up error naming the key.
        var config = c
        config.upstream.apiKeyEnv = nil
        XCTAssertThrowsError(try Gateway(config: config, environment: ["GATEWAY_ADMIN_TOKEN": "t"])) { e in
            XCTAssertEqual((e as? ConfigError)?.path, "log.postgres_url_env", "\(e)")
        }
    }
}

final class Tally: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add() { lock.withLock { n += 1 } }
    var value: Int { lock.withLock { n } }
}

/// Runs `path arg` and waits for it with waitpid (Foundation's Process does not notice the exit
/// of a child started from a test's task on Linux).
func spawnAndWait(_ path: String, _ arg: String) -> Int32 {
    var pid: pid_t = 0
    var cargs: [UnsafeMutablePointer<CChar>?] = [strdup(path), strdup(arg), nil]
    defer { for p in cargs { free(p) } }
    guard posix_spawn(&pid, path, nil, nil, &cargs, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return status
}
