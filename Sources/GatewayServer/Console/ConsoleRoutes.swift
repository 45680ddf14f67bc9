import EpisodeLog
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOPosix
import OpenAIWire
import TrafficLog

/// The web console at `/console` on the admin listener: log in with the admin token, then look
/// at the traffic log (overview, episodes, one episode's trace), attach feedback, swap policy
/// versions and export training data. Server-rendered HTML; every asset is in the binary.
///
/// Security: a session cookie (HttpOnly, SameSite=Strict, random 256-bit id) after the admin
/// token was presented once; every POST carries the session's CSRF token in a form field
/// (the log-in form a double-submit token), and a POST whose Origin is another site is refused.
struct ConsoleRoutes: Sendable {
    let admin: AdminRoutes
    let sessions: ConsoleSessions

    init(admin: AdminRoutes) {
        self.admin = admin
        self.sessions = admin.consoleSessions
    }

    var state: GatewayState { admin.state }
    /// The traffic log, whichever backend holds it (SQLite or PostgreSQL).
    var log: any LogBackend { admin.state.database }

    func register(on router: Router<BasicRequestContext>) {
        router.get("/console") { _, _ in Self.redirect("/console/overview") }
        router.get("/console/assets/console.css") { _, _ in Self.asset(HTML.css, "text/css; charset=utf-8") }
        router.get("/console/assets/console.js") { _, _ in Self.asset(HTML.js, "text/javascript; charset=utf-8") }
        router.get("/console/login") { req, _ in self.loginPage(req, error: nil) }
        router.post("/console/login") { req, _ in try await self.login(req) }
        router.post("/console/logout") { req, _ in
            try await self.withPost(req) { id, _, _ in
                self.sessions.remove(id)
                var r = Self.redirect("/console/login")
                r.headers[.setCookie] = ConsoleSessions.setCookie(ConsoleSessions.cookieName, "", maxAge: 0)
                return r
            }
        }
        router.get("/console/overview") { req, _ in
            try await self.withSession(req) { s in try await self.overview(req, s) }
        }
        router.get("/console/episodes") { req, _ in
            try await self.withSession(req) { s in try await self.episodes(req, s) }
        }
        router.get("/console/episodes/:id") { req, ctx in
            let id = ctx.parameters.get("id") ?? ""
            return try await self.withSession(req) { s in try await self.episode(id: id, req, s) }
        }
        router.post("/console/episodes/:id/feedback") { req, ctx in
            let id = ctx.parameters.get("id") ?? ""
            return try await self.withPost(req) { _, _, form in try await self.addFeedback(id: id, form) }
        }
        router.get("/console/versions") { req, _ in
            try await self.withSession(req) { s in try await self.versions(req, s) }
        }
        router.post("/console/versions/swap") { req, _ in
            try await self.withPost(req) { _, _, form in await self.swap(path: form["path"] ?? "") }
        }
        router.post("/console/versions/rollback") { req, _ in
            try await self.withPost(req) { _, _, _ in await self.rollback() }
        }
        router.get("/console/training") { req, _ in
            try await self.withSession(req) { s in try await self.training(req, s) }
        }
        router.post("/console/training/export") { req, _ in
            try await self.withPost(req) { _, _, form in await self.export(form) }
        }
    }

    // MARK: - Responses

    static func html(_ s: String, status: HTTPResponse.Status = .ok, headers extra: HTTPFields = [:]) -> Response {
        var h: HTTPFields = [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"]
        h[HTTPField.Name("Content-Security-Policy")!] =
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'"
        h[HTTPField.Name("X-Frame-Options")!] = "DENY"
        h[HTTPField.Name("Referrer-Policy")!] = "same-origin"
        h.append(contentsOf: extra)
        return Response(status: status, headers: h, body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    static func redirect(_ location: String) -> Response {
        Response(status: .seeOther, headers: [.location: location, .cacheControl: "no-store"], body: .init())
    }

    static func asset(_ s: String, _ type: String) -> Response {
        Response(status: .ok, headers: [.contentType: type, .cacheControl: "max-age=3600"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    static func refused(_ why: String) -> Response {
        html(
            HTML.page(
                title: "Refused", active: "", csrf: nil,
                body: "<p class=\"error\" id=\"refused\">\(HTML.esc(why))</p><p><a href=\"/console/login\">Log in</a></p>"),
            status: .forbidden)
    }

    static func query(_ req: Request) -> [String: String] { FormData.parse(req.uri.query ?? "") }

    // MARK: - Sessions and CSRF

    func session(_ req: Request) -> (id: String, session: ConsoleSessions.Session)? {
        let id = ConsoleSessions.cookie(ConsoleSessions.cookieName, in: req.headers[.cookie])
        guard let id, let s = sessions.find(id) else { return nil }
        return (id, s)
    }

    /// Pages: a visitor without a session is sent to the log-in form.
    func withSession(_ req: Request, _ body: (ConsoleSessions.Session) async throws -> Response) async throws -> Response {
        guard let found = session(req) else {
            return Self.redirect("/console/login?next=" + FormData.encode(req.uri.path))
        }
        return try await body(found.session)
    }

    /// A POST from the same site whose Origin (when the browser sends one) is this host.
    static func sameOrigin(_ req: Request) -> Bool {
        guard let origin = req.headers[HTTPField.Name("Origin")!] else { return true }
        guard let host = req.head.authority ?? req.headers[HTTPField.Name("Host")!] else { return false }
        return origin == "http://\(host)" || origin == "https://\(host)"
    }

    static func readForm(_ req: Request) async throws -> [String: String] {
        var req = req
        let body = try await Replies.collectBody(&req, limit: 1 << 20)
        return FormData.parse(String(buffer: body))
    }

    /// Actions: a session and its CSRF token, or 403.
    func withPost(_ req: Request, _ body: (String, ConsoleSessions.Session, [String: String]) async throws -> Response) async throws
        -> Response
    {
        guard Self.sameOrigin(req) else { return Self.refused("Cross-site request refused.") }
        guard let found = session(req) else { return Self.refused("Not logged in.") }
        let form = try await Self.readForm(req)
        guard ConsoleSessions.same(form["csrf"], found.session.csrf) else {
            return Self.refused("Missing or wrong CSRF token: reload the page and try again.")
        }
        return try await body(found.id, found.session, form)
    }

    func loginPage(_ req: Request, error: String?, next: String? = nil) -> Response {
        let token = ConsoleSessions.randomToken()
        let next = next ?? Self.query(req)["next"] ?? ""
        let body = """
            <form method="post" action="/console/login" class="login" id="login-form">
            <p>Log in with the gateway's admin token (the value of <code>admin.token_env</code>, or the generated
            <code>admin-token</code> file next to the traffic log).</p>
            \(error.map { "<p class=\"error\" id=\"login-error\">\(HTML.esc($0))</p>" } ?? "")
            \(HTML.hidden("login_csrf", token))\(HTML.hidden("next", next))
            <label>Admin token<input type="password" name="token" id="token" autocomplete="current-password" autofocus></label>
            <button type="submit" id="login">Log in</button></form>
            """
        var h = HTTPFields()
        h[.setCookie] = ConsoleSessions.setCookie(ConsoleSessions.loginCookieName, token, maxAge: 3600)
        return Self.html(
            HTML.page(title: "Console log-in", active: "", csrf: nil, body: body),
            status: error == nil ? .ok : .unauthorized, headers: h)
    }

    func login(_ req: Request) async throws -> Response {
        guard Self.sameOrigin(req) else { return Self.refused("Cross-site request refused.") }
        let form = try await Self.readForm(req)
        let cookieToken = ConsoleSessions.cookie(ConsoleSessions.loginCookieName, in: req.headers[.cookie])
        guard let cookieToken, ConsoleSessions.same(form["login_csrf"], cookieToken) else {
            return Self.refused("Missing or wrong CSRF token on the log-in form: reload it and try again.")
        }
        guard let token = form["token"], !token.isEmpty,
            ClientAuth.sameDigest(ClientAuth.digest(token), admin.tokenDigest)
        else {
            state.logger.notice("console log-in refused")
            return loginPage(req, error: "Wrong admin token.", next: form["next"])
        }
        let (id, _) = sessions.create()
        var next = form["next"] ?? ""
        if !next.hasPrefix("/console/") || next.hasPrefix("//") || next.contains("\\") { next = "/console/overview" }
        var r = Self.redirect(next)
        r.headers[.setCookie] = ConsoleSessions.setCookie(ConsoleSessions.cookieName, id, maxAge: Int(ConsoleSessions.lifetime))
        return r
    }

    /// Runs blocking SQL off the event loop.
    func read<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(body)
    }
}
