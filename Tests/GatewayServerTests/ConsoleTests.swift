import AsyncHTTPClient
import EpisodeLog
import Foundation
import NIOCore
import NIOHTTP1
import PolicyEngine
import TrafficLog
import XCTest
@testable import GatewayServer

/// The web console: log-in, sessions and CSRF over plain HTTP, the export against the trainer's
/// own export function, and the pages in a real headless Chromium.
final class ConsoleTests: XCTestCase {
    static let token = "admin-SECRET-token"

    /// A browser-less client of the console that keeps its cookies.
    final class Visitor: @unchecked Sendable {
        let adminBase: String
        var cookies: [String: String] = [:]
        /// Redirects are what is under test: not followed.
        let client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: .init(redirectConfiguration: .disallow))
        init(_ h: Harness) { adminBase = h.adminBase }
        init(adminBase: String) { self.adminBase = adminBase }
        deinit { try? client.syncShutdown() }

        struct Page { var status: Int; var headers: HTTPHeaders; var body: String }

        func send(_ method: HTTPMethod, _ path: String, form: [(String, String)]? = nil, headers extra: [(String, String)] = []) async throws -> Page {
            var req = HTTPClientRequest(url: adminBase + path)
            req.method = method
            if !cookies.isEmpty { req.headers.add(name: "cookie", value: cookies.map { "\($0.key)=\($0.value)" }.joined(separator: "; ")) }
            for (k, v) in extra { req.headers.add(name: k, value: v) }
            if let form {
                req.headers.add(name: "content-type", value: "application/x-www-form-urlencoded")
                req.body = .bytes(ByteBuffer(string: FormData.query(form.map { ($0.0, Optional($0.1)) })))
            }
            let r = try await client.execute(req, timeout: .seconds(60))
            let body = String(buffer: try await r.body.collect(upTo: 64 << 20))
            for c in r.headers["set-cookie"] {
                let kv = c.split(separator: ";")[0].split(separator: "=", maxSplits: 1).map(String.init)
                if kv.count == 2 { cookies[kv[0]] = kv[1].isEmpty ? nil : kv[1] }
            }
            return Page(status: Int(r.status.code), headers: r.headers, body: body)
        }

        static func field(_ name: String, in html: String) -> String? {
            guard let r = html.range(of: "name=\"\(name)\" value=\"") else { return nil }
            let rest = html[r.upperBound...]
            return rest.firstIndex(of: "\"").map { String(rest[..<$0]) }
        }

        func logIn(token: String = ConsoleTests.token) async throws -> Page {
            let form = try await send(.GET, "/console/login")
            let csrf = try XCTUnwrap(Self.field("login_csrf", in: form.body))
            return try await send(.POST, "/console/login", form: [("login_csrf", csrf), ("token", token), ("next", "")])
        }
    }

    /// The trace shows the thinking of every policy turn: the first opens with `<think>`, later
    /// ones start inside it (the gateway injected their `<think>\n`).
    func testThinkingOfEveryTurn() {
        XCTAssertEqual(ConsoleRoutes.think("<think>Two parts.</think>\n<interaction_prompt>{}</interaction_prompt>"), "Two parts.")
        XCTAssertEqual(ConsoleRoutes.think("The answer says Paris.\n</think>\n<answer>Paris</answer>"), "The answer says Paris.")
        XCTAssertNil(ConsoleRoutes.think("<answer>Paris</answer>"))
    }

    func testLogInSessionsAndCSRF() async throws {
        let models = try AdminTests.modelsDir()
        let h = try await AdminTests.start(models: models)
        let v = Visitor(h)
        // Logged out: pages redirect to the log-in form; actions are refused.
        var p = try await v.send(.GET, "/console/episodes")
        XCTAssertEqual(p.status, 303)
        XCTAssertEqual(p.headers.first(name: "location"), "/console/login?next=%2Fconsole%2Fepisodes")
        p = try await v.send(.POST, "/console/versions/rollback", form: [("csrf", "x")])
        XCTAssertEqual(p.status, 403)
        // The log-in form needs its own CSRF token (cookie + field).
        p = try await v.send(.POST, "/console/login", form: [("token", Self.token)])
        XCTAssertEqual(p.status, 403)
        XCTAssertNil(v.cookies[ConsoleSessions.cookieName])
        p = try await v.logIn(token: "wrong")
        XCTAssertEqual(p.status, 401)
        XCTAssertNil(v.cookies[ConsoleSessions.cookieName])
        p = try await v.logIn()
        XCTAssertEqual(p.status, 303)
        XCTAssertEqual(p.headers.first(name: "location"), "/console/overview")
        let setCookie = try XCTUnwrap(p.headers["set-cookie"].first { $0.hasPrefix(ConsoleSessions.cookieName + "=") })
        XCTAssertTrue(setCookie.contains("HttpOnly"), setCookie)
        XCTAssertTrue(setCookie.contains("SameSite=Strict"), setCookie)
        XCTAssertFalse(setCookie.contains(Self.token), "the token itself never goes into a cookie")

        // An episode to act on.
        let reply = try await h.chat(simpleChat)
        let id = try XCTUnwrap(reply.episodeID)
        p = try await v.send(.GET, "/console/episodes/\(id)")
        XCTAssertEqual(p.status, 200)
        XCTAssertTrue(p.body.contains("hello there"), "the passthrough request is shown")
        XCTAssertEqual(p.headers.first(name: "content-security-policy")?.contains("default-src 'self'"), true)
        let csrf = try XCTUnwrap(Visitor.field("csrf", in: p.body))
        // Without, with a wrong, and with the right CSRF token.
        p = try await v.send(.POST, "/console/episodes/\(id)/feedback", form: [("kind", "score"), ("value", "0.5")])
        XCTAssertEqual(p.status, 403)
        p = try await v.send(.POST, "/console/episodes/\(id)/feedback", form: [("kind", "score"), ("value", "0.5"), ("csrf", String(csrf.reversed()))])
        XCTAssertEqual(p.status, 403)
        p = try await v.send(.POST, "/console/episodes/\(id)/feedback", form: [("kind", "score"), ("value", "0.5"), ("csrf", csrf)],
                             headers: [("origin", "http://elsewhere.example")])
        XCTAssertEqual(p.status, 403, "another site's form is refused even with the token")
        XCTAssertEqual(try (h.gateway.state.database as! SQLiteLogBackend).database.feedback(episodeID: id).count, 0)
        p = try await v.send(.POST, "/console/episodes/\(id)/feedback", form: [("kind", "score"), ("value", "1.5"), ("csrf", csrf)])
        XCTAssertEqual(p.status, 303)
        XCTAssertEqual(try (h.gateway.state.database as! SQLiteLogBackend).database.feedback(episodeID: id).count, 0, "a score outside [0, 1] is refused")
        p = try await v.send(.POST, "/console/episodes/\(id)/feedback", form: [("kind", "reference"), ("value", "general Kenobi"), ("csrf", csrf)])
        XCTAssertEqual(p.status, 303)
        let stored = try (h.gateway.state.database as! SQLiteLogBackend).database.feedback(episodeID: id)
        XCTAssertEqual(stored.map(\.kind), ["reference"])
        XCTAssertEqual(stored.first?.value, "general Kenobi")
        XCTAssertEqual(stored.first?.source, "console")

        // Every page renders; the assets are served from the binary.
        for page in ["/console/overview", "/console/overview?range=7d", "/console/episodes?mode=passthrough&q=hello", "/console/versions", "/console/training"] {
            p = try await v.send(.GET, page)
            XCTAssertEqual(p.status, 200, page)
            XCTAssertTrue(p.body.contains("/console/assets/console.css"), page)
            XCTAssertFalse(p.body.contains("http://") && p.body.contains("<script src=\"http"), "no external assets")
        }
        p = try await v.send(.GET, "/console/assets/console.js")
        XCTAssertEqual(p.status, 200)
        XCTAssertTrue(p.body.contains("data-confirm"))

        // Log out: the session is gone for good.
        let session = try XCTUnwrap(v.cookies[ConsoleSessions.cookieName])
        p = try await v.send(.POST, "/console/logout", form: [("csrf", csrf)])
        XCTAssertEqual(p.status, 303)
        v.cookies[ConsoleSessions.cookieName] = session
        p = try await v.send(.GET, "/console/overview")
        XCTAssertEqual(p.status, 303)
        try await h.stop()
    }

    /// The console's export is `gateway-train export`'s function on the same log: byte-equal.
    func testExportIsTheTrainersExport() async throws {
        let models = try AdminTests.modelsDir()
        let h = try await AdminTests.start(models: models)
        let cases = try CollaborationTests.cases()
        var ids: [String] = []
        for c in cases.prefix(2) {
            let body = String(decoding: try JSONSerialization.data(withJSONObject: ["model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]]]), as: UTF8.self)
            let r = try await h.chat(body)
            XCTAssertEqual(r.status, 200, r.body)
            ids.append(try XCTUnwrap(r.episodeID))
        }
        try (h.gateway.state.database as! SQLiteLogBackend).database.insertFeedback(FeedbackRecord(episodeID: ids[0], kind: "reference", value: cases[0].final_answer))
        let v = Visitor(h)
        _ = try await v.logIn()
        var p = try await v.send(.GET, "/console/training")
        XCTAssertTrue(p.body.contains("<td class=\"num reward-count\">1</td>"), p.body)
        let csrf = try XCTUnwrap(Visitor.field("csrf", in: p.body))
        let version = try XCTUnwrap(h.gateway.policies.current?.version)
        p = try await v.send(.POST, "/console/training/export", form: [("csrf", csrf), ("route", "/v1/chat/completions"), ("version", version), ("require_reward", "1")])
        XCTAssertEqual(p.status, 200)
        XCTAssertEqual(p.headers.first(name: "content-type"), "application/x-ndjson")
        let lines = p.body.split(separator: "\n")
        XCTAssertEqual(lines.count, 1)
        let direct = FileManager.default.temporaryDirectory.appendingPathComponent("export-\(UUID().uuidString).jsonl")
        let tokenizer = try Tokenizer(directory: models.appendingPathComponent("A"))
        _ = try Exporter.export(database: (h.gateway.state.database as! SQLiteLogBackend).database, filter: EpisodeFilter(route: "/v1/chat/completions", policyVersion: version),
                                requireReward: true, tokenizer: tokenizer, to: direct)
        XCTAssertEqual(p.body, try String(contentsOf: direct, encoding: .utf8))
        p = try await v.send(.POST, "/console/training/export", form: [("csrf", csrf), ("route", "/v1/chat/completions"), ("version", version)])
        XCTAssertEqual(p.body.split(separator: "\n").count, 2, "without the reward requirement both episodes")
        try await h.stop()
    }

    // MARK: - In a real browser

    static func browserTools() async throws -> String {
        let py = try XCTUnwrap(OpenAISDKTests.python())
        let (status, _, _) = try await OpenAISDKTests.run(py, ["-c", "import selenium"])
        let driver = FileManager.default.isExecutableFile(atPath: "/usr/bin/chromedriver")
        if status != 0 || !driver {
            let what = "selenium and Debian's chromium + chromium-driver (scripts/test-requirements.txt, scripts/install-deps.sh --tests)"
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("not installed: \(what)") }
            throw XCTSkip("not installed: \(what)")
        }
        return py
    }

    func testConsoleInARealBrowser() async throws {
        let py = try await Self.browserTools()
        let models = try AdminTests.modelsDir()
        let h = try await AdminTests.start(models: models)
        let c = try CollaborationTests.cases()[0]
        let body = String(decoding: try JSONSerialization.data(withJSONObject: ["model": "prompt-r1/gpt-4o-mini", "messages": [["role": "user", "content": c.question]]]), as: UTF8.self)
        let collab = try await h.chat(body)
        XCTAssertEqual(collab.status, 200, collab.body)
        let episode = try XCTUnwrap(collab.episodeID)
        let plain = try await h.chat(simpleChat)
        let passthrough = try XCTUnwrap(plain.episodeID)
        let word = try XCTUnwrap(c.question.split(whereSeparator: { !$0.isLetter }).map(String.init).filter { $0.count >= 5 }.first, c.question)
        let before = try XCTUnwrap(h.gateway.policies.current?.version)
        let shots = OpenAISDKTests.repoRoot.appendingPathComponent("test-artifacts/console").path
        let script = OpenAISDKTests.repoRoot.appendingPathComponent("Tests/console/console_browser.py").path
        let (status, out, err) = try await OpenAISDKTests.run(py, [script], env: [
            "CONSOLE_URL": h.adminBase, "ADMIN_TOKEN": Self.token, "EPISODE_ID": episode, "PASSTHROUGH_ID": passthrough,
            "EXPECTED_PROMPT": c.upstream_prompts[0], "QUESTION_WORD": word, "SWAP_PATH": "B", "SCREENSHOTS": shots,
        ])
        XCTAssertEqual(status, 0, "stdout: \(out)\nstderr: \(err)")
        // What the browser did is in the log and the holder, not only on the page.
        let feedback = try (h.gateway.state.database as! SQLiteLogBackend).database.feedback(episodeID: episode)
        XCTAssertEqual(feedback.map(\.kind), ["score"])
        XCTAssertEqual(feedback.first?.value, "0.75")
        XCTAssertEqual(feedback.first?.source, "console")
        let after = try XCTUnwrap(h.gateway.policies.current?.version)
        XCTAssertNotEqual(after, before)
        XCTAssertEqual(h.gateway.policies.current?.path, models.appendingPathComponent("B").resolvingSymlinksInPath().path)
        for name in ["01-login", "02-episodes", "03-episode-trace", "04-episode-feedback", "06-overview", "08-versions", "09-versions-swapped"] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: "\(shots)/\(name).png"), name)
        }
        if status == 0 {
            let seen = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any], out)
            XCTAssertEqual(seen["csrf_refused"] as? [Int], [403, 403])
            XCTAssertEqual((seen["swap"] as? [String: String])?["after"], after)
        }
        try await h.stop()
    }
}
