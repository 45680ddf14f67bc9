import ArgumentParser
import AsyncHTTPClient
import Foundation
import GatewayServer
import Logging
import NIOCore
import TrafficLog

/// `gateway-bench console`: the web console on a large traffic log. Fills a log with N episodes
/// (a tenth of them collaborations with three turns and token arrays, some with feedback), runs
/// a gateway on it, logs in, and times page loads over HTTP on loopback: the newest page of the
/// episode list, a deep page (keyset cursor), filtered lists, text search, and episode detail.
/// Baseline in the same run: `GET /health` on the same admin listener (the HTTP floor).
struct ConsoleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console",
        abstract: "Times the web console's list, filtered list, text search and episode detail on a large log.")

    @Option(help: "Episodes in the log.")
    var episodes: Int = 1_000_000

    @Option(help: "The log file; reused when it already holds --episodes episodes.")
    var db: String = "bench-out/console.sqlite"

    @Option(help: "Timed requests per operation.")
    var repeats: Int = 200

    static let words = """
        planet moon orbit river mountain ocean desert forest island volcano capital country city empire king queen war treaty \
        science physics chemistry biology atom molecule cell gene protein energy force gravity light sound wave electron \
        history ancient medieval modern century revolution republic parliament election law court judge music painting \
        novel poet author language grammar number prime integer fraction equation algebra geometry triangle circle square \
        computer program algorithm network protocol database memory processor signal bridge tower castle temple museum \
        animal mammal bird fish insect plant flower tree seed root leaf weather storm rain snow wind cloud climate season \
        largest smallest fastest oldest first last highest deepest longest famous invented discovered wrote built founded
        """.split(separator: " ").map(String.init)

    func run() async throws {
        let dbURL = URL(fileURLWithPath: db)
        try FileManager.default.createDirectory(at: dbURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        let fillSeconds = try fill(path: db)
        let database = try TrafficDatabase(path: db)
        let total = try database.episodeCount()
        let sizeMB = Double((try? FileManager.default.attributesOfItem(atPath: db)[.size] as? Int) ?? 0) / 1e6
        print(
            "gateway-bench console: \(total) episodes in \(db) (\(String(format: "%.0f", sizeMB)) MB)\(fillSeconds.map { String(format: ", filled in %.1f s", $0) } ?? ", reused")"
        )

        // Sample ids and cursors from the log for the timed requests.
        var rng = SystemRandomNumberGenerator()
        let sample = try database.consoleEpisodes(
            ConsoleFilter(), after: ConsoleCursor(createdAt: Date().timeIntervalSince1970 - 86_400 * 3, id: "~"), limit: 500
        ).episodes
        let collab = try database.consoleEpisodes(ConsoleFilter(mode: "collaborate"), after: nil, limit: 500).episodes
        try database.close()
        guard !sample.isEmpty, !collab.isEmpty else { throw ValidationError("the log has too few episodes") }

        let token = "bench-admin-token-0123456789"
        var config = GatewayConfig()
        config.server.port = 0
        config.admin.port = 0
        config.log.path = db
        config.log.retentionDays = 0
        config.upstream.baseURL = "http://127.0.0.1:9/v1"
        config.upstream.apiKeyEnv = nil
        config.auth.clientKeysEnv = nil
        var logger = Logger(label: "bench")
        logger.logLevel = .warning
        let gateway = try Gateway(config: config, environment: ["GATEWAY_ADMIN_TOKEN": token], logger: logger)
        let runTask = Task { try await gateway.run(gracefulShutdownSignals: []) }
        let port = await gateway.waitForAdminPort()
        let base = "http://127.0.0.1:\(port)"
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow))

        // Log in: the form's double-submit token, then the session cookie.
        var get = HTTPClientRequest(url: base + "/console/login")
        let loginPage = try await client.execute(get, timeout: .seconds(30))
        let loginCookie = loginPage.headers["set-cookie"].first?.split(separator: ";").first.map(String.init) ?? ""
        let page = String(buffer: try await loginPage.body.collect(upTo: 1 << 20))
        guard let csrf = page.firstMatch(of: /name="login_csrf" value="([0-9a-f]+)"/)?.1 else { throw ValidationError("no login form") }
        var post = HTTPClientRequest(url: base + "/console/login")
        post.method = .POST
        post.headers.add(name: "content-type", value: "application/x-www-form-urlencoded")
        post.headers.add(name: "cookie", value: loginCookie)
        post.body = .bytes(ByteBuffer(string: "login_csrf=\(csrf)&token=\(token)&next="))
        let loggedIn = try await client.execute(post, timeout: .seconds(30))
        guard loggedIn.status == .seeOther, let session = loggedIn.headers["set-cookie"].first?.split(separator: ";").first.map(String.init)
        else {
            throw ValidationError("log-in failed: \(loggedIn.status)")
        }

        func time(_ path: @escaping () -> String) async throws -> [Double] {
            var out: [Double] = []
            for i in 0..<(repeats + 5) {
                get = HTTPClientRequest(url: base + path())
                get.headers.add(name: "cookie", value: session)
                let start = ContinuousClock.now
                let r = try await client.execute(get, timeout: .seconds(60))
                let body = try await r.body.collect(upTo: 64 << 20)
                let ms = (ContinuousClock.now - start).milliseconds
                guard r.status == .ok else { throw ValidationError("\(path()) answered \(r.status): \(String(buffer: body).prefix(300))") }
                if i >= 5 { out.append(ms) }  // the first few warm the page cache
            }
            return out.sorted()
        }
        func pct(_ s: [Double], _ q: Double) -> Double { s[min(s.count - 1, Int((q * Double(s.count)).rounded(.up)) - 1)] }
        func row(_ name: String, _ s: [Double], _ baseline: [Double]) {
            let p95 = pct(s, 0.95)
            let label = name.padding(toLength: 34, withPad: " ", startingAt: 0)
            print(
                "  " + label
                    + String(
                        format: " p50 %7.2f ms  p95 %7.2f ms  max %7.2f ms   p95 / baseline p95 %6.1fx   ",
                        pct(s, 0.5), p95, s.last ?? 0, p95 / max(pct(baseline, 0.95), 1e-6))
                    + (p95 <= 100 ? "ok (<= 100 ms)" : "OVER 100 ms"))
        }

        let health = try await time { "/health" }
        print(
            "  baseline GET /health (same listener): p50 \(String(format: "%.2f", pct(health, 0.5))) ms  p95 \(String(format: "%.2f", pct(health, 0.95))) ms"
        )
        let results: [(String, [Double])] = [
            ("list, newest page", try await time { "/console/episodes" }),
            (
                "list, deep page (keyset cursor)",
                try await time {
                    let e = sample.randomElement(using: &rng)!
                    return "/console/episodes?after=\(e.createdAt.timeIntervalSince1970)_\(e.id)"
                }
            ),
            ("filtered: mode+status", try await time { "/console/episodes?mode=collaborate&status=200" }),
            (
                "filtered: version+outcome",
                try await time { "/console/episodes?version=v\(Int.random(in: 1...3, using: &rng))&outcome=answer" }
            ),
            (
                "filtered: key id, 24h window",
                try await time {
                    let since = HTML_date(Date().addingTimeInterval(-86_400))
                    return "/console/episodes?key=key\(Int.random(in: 0..<20, using: &rng))&since=\(since)"
                }
            ),
            ("filtered: has feedback", try await time { "/console/episodes?feedback=yes" }),
            ("text search, one word", try await time { "/console/episodes?q=\(Self.words.randomElement(using: &rng)!)" }),
            (
                "text search, two words",
                try await time {
                    "/console/episodes?q=\(Self.words.randomElement(using: &rng)!)+\(Self.words.randomElement(using: &rng)!)"
                }
            ),
            ("episode detail, collaboration", try await time { "/console/episodes/\(collab.randomElement(using: &rng)!.id)" }),
            ("episode detail, any", try await time { "/console/episodes/\(sample.randomElement(using: &rng)!.id)" }),
            ("overview, last hour", try await time { "/console/overview?range=1h" }),
        ]
        for (name, s) in results { row(name, s, health) }
        print("  (\(repeats) timed requests each, one client on loopback, after 5 warm-up requests; release build recommended)")
        try await client.shutdown()
        await gateway.shutdown()
        _ = try? await runTask.value
    }

    func HTML_date(_ d: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd'T'HH:mm"
        return f.string(from: d)
    }

    /// Writes the synthetic log unless the file already holds it; returns the seconds it took.
    func fill(path: String) throws -> Double? {
        if FileManager.default.fileExists(atPath: path) {
            let existing = try TrafficDatabase(path: path)
            let n = try existing.episodeCount()
            try existing.close()
            if n == episodes { return nil }
            for suffix in ["", "-wal", "-shm"] { try? FileManager.default.removeItem(atPath: path + suffix) }
        }
        let start = ContinuousClock.now
        let database = try TrafficDatabase(path: path)
        var rng = SystemRandomNumberGenerator()
        let now = Date().timeIntervalSince1970
        let span = 7.0 * 86_400
        let outcomes = ["answer", "answer", "answer", "answer", "no_answer", "fallback", "upstream_error"]
        let batch = 5000
        var written = 0
        while written < episodes {
            var list: [EpisodeRecord] = []
            var feedback: [FeedbackRecord] = []
            for _ in 0..<min(batch, episodes - written) {
                let i = written + list.count
                // Spread over the last 7 days, oldest first, as a log fills.
                let t = now - span + span * Double(i) / Double(episodes) + Double.random(in: 0..<0.5, using: &rng)
                let collaborate = i % 10 == 0
                var e = EpisodeRecord(
                    createdAt: Date(timeIntervalSince1970: t), route: "/v1/chat/completions",
                    mode: collaborate ? "collaborate" : "passthrough", keyID: "key\(i % 20)",
                    requestedModel: collaborate ? "prompt-r1/gpt-4o-mini" : "gpt-4o-mini", upstreamModel: "gpt-4o-mini",
                    stream: i % 3 == 0, status: i % 50 == 7 ? 502 : 200, totalMs: Double.random(in: 5...900, using: &rng))
                e.upstreamMs = e.totalMs * 0.8
                e.overheadMs = e.totalMs * 0.2
                e.promptTokens = 40
                e.completionTokens = 60
                let question =
                    (0..<Int.random(in: 6...12, using: &rng)).map { _ in Self.words.randomElement(using: &rng)! }.joined(separator: " ")
                    + "?"
                e.requestJSON = #"{"model":"\#(e.requestedModel!)","messages":[{"role":"user","content":"\#(question)"}]}"#
                e.responseText = "An answer of a few words about " + question
                e.outcome = e.status == 200 ? "ok" : "upstream_error"
                if collaborate {
                    e.policyVersion = "v\(1 + (i / 10) % 3)"
                    e.question = question
                    e.outcome = outcomes[(i / 10) % outcomes.count]
                    e.formatScore = Double((i / 10) % 5) / 4
                    let ids = (0..<64).map { _ in Int32.random(in: 0..<151_000, using: &rng) }
                    let lps = (0..<48).map { _ in -Float.random(in: 0..<3, using: &rng) }
                    e.turns = [
                        TurnRecord(
                            index: 0, kind: "policy", inputIDs: ids, outputIDs: Array(ids.prefix(48)), logprobs: lps,
                            text:
                                "<think>I should ask the upstream.</think><interaction_prompt>{\"name\": \"prompt\", \"arguments\": {\"prompt\": \"\(question)\"}}</interaction_prompt>",
                            call: question, latencyMs: 120),
                        TurnRecord(
                            index: 1, kind: "upstream", upstreamRequest: #"[{"role":"user","content":"\#(question)"}]"#,
                            upstreamResponse: "The upstream's answer.", latencyMs: 300, promptTokens: 40, completionTokens: 60, status: 200),
                        TurnRecord(
                            index: 2, kind: "policy", inputIDs: Array(ids.prefix(20)), outputIDs: Array(ids.prefix(48)), logprobs: lps,
                            text: "<think>Good.</think><answer>The upstream's answer.</answer>", latencyMs: 90),
                    ]
                    if (i / 10) % 4 == 0 {
                        feedback.append(
                            FeedbackRecord(
                                episodeID: e.id, kind: "score", value: String(Double.random(in: 0...1, using: &rng)), source: "bench",
                                createdAt: Date(timeIntervalSince1970: t + 1)))
                    }
                    if (i / 10) % 8 == 1 {
                        feedback.append(
                            FeedbackRecord(
                                episodeID: e.id, kind: "reference", value: "The upstream's answer.", source: "bench",
                                createdAt: Date(timeIntervalSince1970: t + 1)))
                    }
                }
                list.append(e)
            }
            try database.insert(episodes: list)
            for f in feedback { try database.insertFeedback(f) }
            written += list.count
            if written % 100_000 == 0 { FileHandle.standardError.write(Data("  filled \(written)\n".utf8)) }
        }
        try database.checkpoint()
        try database.close()
        return (ContinuousClock.now - start).milliseconds / 1000
    }
}
