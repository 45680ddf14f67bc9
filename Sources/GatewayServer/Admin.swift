import Foundation
import HTTPTypes
import Hummingbird
import NIOPosix
import OpenAIWire
import RemotePolicy
import TrafficLog

/// The admin listener (default 127.0.0.1:8081): policy versions, config reload, health,
/// readiness and metrics. `/admin/*` always needs `Authorization: Bearer <token>` (compared as
/// SHA-256 digests in constant time); `/health`, `/ready` and `/metrics` do not.
struct AdminRoutes: Sendable {
    let state: GatewayState
    let holder: PolicyHolder
    let tokenDigest: [UInt8]
    let modelsDir: String
    let reloadConfig: @Sendable () async throws -> Void
    let collaborationWaiting: @Sendable () -> Int
    /// The fleet's policy version in the shared log.
    let policySync: PolicySync
    /// Web console log-ins (see `ConsoleRoutes`).
    let consoleSessions = ConsoleSessions()

    func build() -> Router<BasicRequestContext> {
        let router = Router()
        router.add(middleware: AdminErrors())
        router.get("/health") { _, _ in Self.json(#"{"status":"ok"}"#) }
        router.get("/ready") { _, _ in await self.ready() }
        router.get("/metrics") { _, _ in
            let text =
                self.state.metrics.render(
                    writer: self.state.writer.stats, policyWaiting: self.collaborationWaiting(), breaker: self.state.upstream.breaker)
                + (self.holder.current?.remote?.metricsText ?? "")
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4"], body: .init(byteBuffer: ByteBuffer(string: text)))
        }
        router.get("/admin/policy") { req, _ in
            try self.authorize(req)
            return try self.policyStatus()
        }
        router.post("/admin/policy") { req, _ in
            try self.authorize(req)
            var req = req
            let body = try await Replies.collectBody(&req, limit: 64 << 10)
            let swap = try Self.parseSwap(Data(buffer: body), current: self.state.config.policy.backend)
            switch swap.reload {
            case .blueGreen: return try await self.swap(to: swap.path, backend: swap.backend)
            case .inPlace: return try await self.reloadInPlace(to: swap.path, enginePath: swap.enginePath)
            }
        }
        router.post("/admin/policy/rollback") { req, _ in
            try self.authorize(req)
            return try await self.rollback()
        }
        router.post("/admin/config/reload") { req, _ in
            try self.authorize(req)
            do { try await self.reloadConfig() } catch {
                throw GatewayError(
                    status: 400, message: "The new config was rejected; the old one stays: \(error)", type: "invalid_request_error",
                    code: "invalid_config")
            }
            return Self.json(#"{"status":"reloaded"}"#)
        }
        ConsoleRoutes(admin: self).register(on: router)
        return router
    }

    func rollback() async throws -> Response {
        guard let previous = holder.previous else {
            throw GatewayError(
                status: 409, message: "There is no earlier policy version to roll back to.", type: "invalid_request_error",
                code: "no_previous_version")
        }
        // A version reloaded in place goes back the same way, on the same engine.
        if let current = holder.current, current.reload == .inPlace, let remote = current.remote,
            let back = previous.backend, back.kind == remote.backend.kind, back.baseURL == remote.backend.baseURL
        {
            return try await reloadInPlace(to: previous.path, enginePath: nil, rollbackTo: previous)
        }
        return try await swap(to: previous.path, backend: previous.backend, rollbackOf: previous.id)
    }

    static func json(_ s: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: s)))
    }

    static func encode(_ v: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        return Response(
            status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: try e.encode(v))))
    }

    func authorize(_ req: Request) throws {
        guard let presented = ClientAuth.bearer(req.headers[.authorization]) else {
            throw GatewayError.unauthorized("The admin API needs 'Authorization: Bearer <admin token>'.")
        }
        guard ClientAuth.sameDigest(ClientAuth.digest(presented), tokenDigest) else {
            throw GatewayError.unauthorized("Invalid admin token.")
        }
    }

    func ready() async -> Response {
        var problems: [String] = []
        let config = state.config
        if config.routes.contains(where: { $0.mode == .collaborate }) && holder.current == nil {
            problems.append("collaboration routes are configured but no policy is loaded")
        }
        if let remote = holder.current?.remote {
            let h = await remote.health()
            if !h.ok { problems.append("the policy engine (\(h.kind) at \(h.baseURL)) is not healthy: \(h.detail ?? "")") }
        }
        do {
            try await state.database.ping(timeout: .seconds(2))
        } catch {
            problems.append("the traffic log database (\(state.database.location)) is unreachable: \(error)")
        }
        if let error = policySync.status.error {
            problems.append(error)
        }
        let stats = state.writer.stats
        if stats.lastError != nil && stats.queued >= config.log.queueCapacity {
            problems.append("the traffic log is not writable: \(stats.lastError ?? "")")
        }
        if problems.isEmpty { return Self.json(#"{"status":"ready"}"#) }
        let body = (try? JSONEncoder.wire.encode(["status": "not_ready", "problems": problems.joined(separator: "; ")])) ?? Data()
        return Response(
            status: .serviceUnavailable, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(data: body)))
    }

    struct PolicyStatus: Encodable {
        var current: PolicyVersionInfo?
        var history: [PolicyVersionInfo]
        /// The version the shared traffic log says every replica serves, and whether this one does.
        var fleet: PolicySync.Status
    }

    func policyStatus() throws -> Response {
        try Self.encode(
            PolicyStatus(
                current: holder.current.map(PolicyVersionInfo.init), history: holder.history,
                fleet: policySync.status))
    }

    /// Resolves a requested checkpoint path inside the models directory: relative paths are
    /// taken from it, `..` is refused, and the real path (symlinks resolved) must stay inside.
    static func confine(_ raw: String, modelsDir: String) throws -> String {
        guard !raw.isEmpty, !raw.contains("\0") else { throw GatewayError.invalidField("path", "The path is empty.") }
        if raw.split(separator: "/").contains("..") {
            throw GatewayError.invalidField("path", "The path must not contain '..'.")
        }
        let base = URL(fileURLWithPath: modelsDir).standardizedFileURL.resolvingSymlinksInPath().path
        let candidate = raw.hasPrefix("/") ? raw : base + "/" + raw
        let real = URL(fileURLWithPath: candidate).standardizedFileURL.resolvingSymlinksInPath().path
        guard real.hasPrefix(base + "/") else {
            throw GatewayError.invalidField("path", "Checkpoints can only be loaded from inside the models directory (\(modelsDir)).")
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: real, isDirectory: &isDir), isDir.boolValue else {
            throw GatewayError(
                status: 404, message: "No checkpoint folder at '\(raw)' in the models directory.", type: "invalid_request_error",
                param: "path", code: "not_found")
        }
        return real
    }

    struct SwapReply: Encodable {
        var current: PolicyVersionInfo
        var previous: PolicyVersionInfo?
        var loadSeconds: Double
        enum CodingKeys: String, CodingKey {
            case current, previous
            case loadSeconds = "load_seconds"
        }
    }

    /// Loads in the background while the current version keeps serving, validates, switches.
    func swap(to raw: String, backend: RemotePolicyBackend?, rollbackOf: String? = nil) async throws -> Response {
        let path = try Self.confine(raw, modelsDir: modelsDir)
        guard holder.beginLoad() else {
            throw GatewayError(
                status: 409, message: "Another policy load is in progress.", type: "invalid_request_error", code: "load_in_progress")
        }
        defer { holder.endLoad() }
        let start = ContinuousClock.now
        let loaded: LoadedPolicy
        do {
            // Seconds of file reading and hashing: on the blocking-I/O pool, never on an event loop.
            // A remote backend is health-checked and smoke-tested before the switch (blue/green).
            var policyConfig = state.config.policy
            policyConfig.backend = backend
            loaded = try await LoadedPolicy.load(path: path, config: policyConfig, prefillInBackground: true)
        } catch {
            throw GatewayError(
                status: 422, message: "The checkpoint could not be loaded; the serving version is unchanged: \(error)",
                type: "invalid_request_error", param: "path", code: "invalid_checkpoint")
        }
        // Recorded in the shared log first (the other replicas follow it); a log that cannot
        // record it leaves every replica on the old version.
        do {
            try await policySync.record(loaded, action: rollbackOf == nil ? .swap : .rollback)
        } catch {
            throw GatewayError(
                status: 503, message: "The traffic log could not record the new version; the serving version is unchanged: \(error)",
                type: "server_error", code: "log_unavailable")
        }
        state.metrics.observeEngine(of: loaded)
        let old = holder.set(loaded)
        if let rollbackOf { holder.removeFromHistory(id: rollbackOf) }
        state.metrics.swapped()
        state.logger.notice(
            "policy switched", metadata: ["version": "\(loaded.version)", "path": "\(path)", "previous": "\(old?.version ?? "none")"])
        return try Self.encode(
            SwapReply(
                current: PolicyVersionInfo(loaded), previous: old.map(PolicyVersionInfo.init),
                loadSeconds: (ContinuousClock.now - start).milliseconds / 1000))
    }
}

/// Admin errors in the same OpenAI shape as the public API.
struct AdminErrors: RouterMiddleware {
    typealias Context = BasicRequestContext
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch {
            return Replies.error(GatewayMiddleware.gatewayError(error, request), episodeID: "admin")
        }
    }
}
