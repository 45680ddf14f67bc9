import Foundation
import HTTPTypes
import Hummingbird
import Logging
import OpenAIWire
import ServiceLifecycle
import TrafficLog
import TrafficLogPostgres
import UnixSignals

/// The assembled gateway: routes, traffic log services and the HTTP server, run as one
/// ServiceGroup. On SIGTERM/SIGINT the server stops accepting and finishes in-flight requests,
/// then the log writer drains its queue, then the process exits.
public final class Gateway: Sendable {
    public let state: GatewayState
    /// The serving policy (nil until one is loaded).
    public let policies: PolicyHolder
    /// The fleet's policy version in the shared log.
    public let policySync: PolicySync
    private let app: Application<RouterResponder<GatewayContext>>
    private let services: [any Service]
    private let portBox: PortBox
    private let adminPortBox: PortBox
    private let groupBox = GroupBox()
    /// The file holding the generated admin token, when the environment gave none.
    public let adminTokenFile: String?

    /// Builds everything from a config. `environment` supplies the secrets named in it.
    /// `configPath` is the file `POST /admin/config/reload` and SIGHUP re-read (nil: reload is
    /// refused); settings given on the command line are kept over reloads.
    public init(
        config: GatewayConfig, configPath: String? = nil,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        logger: Logger = Logger(label: "gateway")
    ) throws {
        let adminToken: String
        if let fromEnv = environment[config.admin.tokenEnv], !fromEnv.isEmpty {
            adminToken = fromEnv
            adminTokenFile = nil
        } else {
            guard Self.isLoopback(config.admin.host) else {
                throw ConfigError(
                    path: "admin.host",
                    problem:
                        "the admin listener is on a non-loopback address (\(config.admin.host)) but no admin token is set in $\(config.admin.tokenEnv); refusing to start"
                )
            }
            // The admin API always needs a token: without one in the environment, a fresh random
            // one is written to a 0600 file for the operator (and `gateway-train --push`) to read.
            let tokenFile = config.generatedAdminTokenPath
            try WorkTreeGuard.checkSecretPath(tokenFile, key: "admin.token_file")
            adminToken = try Self.writeGeneratedToken(to: tokenFile)
            adminTokenFile = tokenFile
            logger.notice(
                "admin token generated (none in the environment)", metadata: ["file": "\(tokenFile)", "env": "\(config.admin.tokenEnv)"])
        }
        let auth = try ClientAuth(config: config.auth, environment: environment)
        // Everything that can fail comes before the upstream client, which must be shut down
        // once created.
        let database = try Self.openLog(config.log, environment: environment, logger: logger)
        var initialPolicy: LoadedPolicy?
        // A policy on an inference engine is connected (health check, smoke generation) when the
        // gateway starts running (`run()`), which can wait for the network.
        if let path = config.policy.path, config.policy.backend == nil {
            let loaded = try LoadedPolicy.load(
                path: path, weights: config.policy.weights, prefixCacheMB: config.policy.prefixCacheMB,
                speculation: config.policy.promptLookup)
            // SQLite registers it now; on PostgreSQL (maybe not reachable yet) the policy sync
            // service does, as it starts.
            if let sqlite = database as? SQLiteLogBackend { try sqlite.database.insertPolicyVersion(loaded.record) }
            initialPolicy = loaded
            logger.notice(
                "policy loaded",
                metadata: [
                    "path": "\(path)", "version": "\(loaded.version)",
                    "architecture": "\(loaded.architecture)", "parameters": "\(loaded.parameterCount)",
                ])
        }
        let apiKey = config.upstream.apiKeyEnv.flatMap { environment[$0] }
        let upstream = UpstreamClient(
            settings: UpstreamSettings(
                baseURL: config.upstream.baseURL, apiKey: apiKey,
                connectTimeout: .milliseconds(config.upstream.connectTimeoutMs),
                firstByteTimeout: .milliseconds(config.upstream.firstByteTimeoutMs),
                idleTimeout: .milliseconds(config.upstream.idleTimeoutMs),
                totalTimeout: .milliseconds(config.upstream.totalTimeoutMs),
                maxRetries: config.upstream.maxRetries,
                retryBaseDelay: .milliseconds(config.upstream.retryBaseDelayMs),
                maxConnections: config.upstream.maxConnections,
                circuitBreakerFailures: config.upstream.circuitBreakerFailures,
                circuitBreakerCooldown: .milliseconds(config.upstream.circuitBreakerCooldownMs)), logger: logger)
        // Nobody waits for an async commit, so the writer may gather a few milliseconds of light
        // traffic into one transaction; with commit_before_response every request waits for it.
        let linger: Duration = config.log.durability == .async ? .milliseconds(config.log.lingerMs) : .zero
        // During a database outage the writer retries at least once a second, so that the queue
        // (and with commit_before_response, every waiting request) moves on soon after it ends.
        let writer = LogWriter(
            backend: database, capacity: config.log.queueCapacity, maxBatch: config.log.maxBatch,
            logger: logger, maxRetryDelay: 1, linger: linger)
        let state = GatewayState(config: config, auth: auth, upstream: upstream, database: database, writer: writer, logger: logger)
        self.state = state
        if let initialPolicy { state.metrics.observeEngine(of: initialPolicy) }

        let router = Router(context: GatewayContext.self)
        router.add(middleware: GatewayMiddleware(state: state))
        let telemetry = try Telemetry.make(config.telemetry, logger: logger)
        if let (t, _) = telemetry { router.add(middleware: TracingMiddleware(telemetry: t)) }
        let passthrough = Passthrough(state: state)
        let feedback = FeedbackRoute(state: state)
        let holder = PolicyHolder(initialPolicy)
        policies = holder
        let collaboration = CollaborationRoute(state: state, holder: holder, passthrough: passthrough)
        // What the file said at start: a reload compares the keys that need a restart with it.
        let baseline = FileBaseline(configPath.flatMap { try? GatewayConfig.load(path: $0) })
        let reload: @Sendable () async throws -> Void = { [state] in
            guard let configPath else { throw ConfigError(path: "", problem: "the gateway was started without a config file") }
            let fresh = try GatewayConfig.load(path: configPath)
            let auth = try ClientAuth(config: fresh.auth, environment: environment)
            try state.reload(config: fresh, baseline: baseline.value, auth: auth)
            collaboration.limiter.resize(to: fresh.policy.maxConcurrentEpisodes)
            logger.notice("config reloaded", metadata: ["path": "\(configPath)"])
        }
        let policySync = PolicySync(
            backend: database, holder: holder, modelsDir: config.admin.modelsDir,
            policyConfig: { state.config.policy },
            pollInterval: .milliseconds(Int64(config.log.policyPollSeconds * 1000)),
            logger: logger,
            onSwitch: { loaded in
                state.metrics.observeEngine(of: loaded)
                state.metrics.swapped()
            })
        self.policySync = policySync
        let admin = AdminRoutes(
            state: state, holder: holder, tokenDigest: ClientAuth.digest(adminToken),
            modelsDir: config.admin.modelsDir, reloadConfig: reload,
            collaborationWaiting: { collaboration.limiter.waiting }, policySync: policySync)
        let v1 = router.group("/v1").add(middleware: AuthMiddleware(state: state))
        ModelRoutes(intake: Intake(state: state), passthrough: passthrough, collaboration: collaboration).register(on: v1)
        v1.get("models") { req, ctx in try await passthrough.models(req, ctx) }
        v1.post("feedback") { req, ctx in try await feedback.handle(req, ctx) }
        for method: HTTPRequest.Method in [.get, .post, .put, .patch, .delete] {
            v1.on("**", method: method) { req, ctx in try await passthrough.proxy(req, ctx) }
        }
        router.get("/health") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: #"{"status":"ok"}"#)))
        }

        let portBox = PortBox()
        self.portBox = portBox
        app = Application(
            router: router,
            server: .http1(
                configuration: .init(
                    additionalChannelHandlers: [ClientGoneWatcher()],
                    idleTimeout: .seconds(Int64(config.server.idleTimeoutSeconds)),
                    httpDecoderConfiguration: .init(
                        maxHeaderFieldSize: config.limits.maxHeaderBytes,
                        maxHeaderListSize: config.limits.maxHeaderBytes))),
            configuration: .init(address: .hostname(config.server.host, port: config.server.port), serverName: nil),
            onServerRunning: { channel in portBox.set(channel.localAddress?.port ?? 0) },
            logger: logger
        )
        let adminPortBox = PortBox()
        self.adminPortBox = adminPortBox
        let adminApp = Application(
            router: admin.build(),
            configuration: .init(address: .hostname(config.admin.host, port: config.admin.port), serverName: nil),
            onServerRunning: { channel in adminPortBox.set(channel.localAddress?.port ?? 0) },
            logger: logger
        )
        var services: [any Service] = [LogWriterService(writer: writer, backend: database)]
        services.append(PolicySyncService(sync: policySync))
        // Stops after the server (services stop in reverse order), so the last spans are exported.
        if let (_, exporter) = telemetry { services.append(exporter) }
        if config.log.retentionDays > 0 {
            services.append(
                RetentionLoop(
                    service: RetentionService(
                        backend: database, maxAge: config.log.retentionDays * 86_400,
                        interval: TimeInterval(config.log.retentionIntervalSeconds), logger: logger)))
        }
        services.append(adminApp)
        if configPath != nil { services.append(ReloadOnHangup(reload: reload, logger: logger)) }
        self.services = services
    }

    /// The traffic log the config names: the SQLite file `log.path`, or with `log.backend:
    /// postgres` the database whose URL is in `$log.postgres_url_env` (or given as `--log-db`).
    /// A PostgreSQL server that is down does not stop the start: the backend connects on first
    /// use, `/ready` reports it, and the log writer's queue holds episodes meanwhile.
    static func openLog(_ log: GatewayConfig.Log, environment: [String: String], logger: Logger) throws -> any LogBackend {
        switch log.backend {
        case .sqlite:
            return try SQLiteLogBackend(path: log.path)
        case .postgres:
            guard let url = log.postgresURL ?? environment[log.postgresURLEnv], !url.isEmpty else {
                throw ConfigError(
                    path: "log.postgres_url_env",
                    problem: "log.backend is postgres but $\(log.postgresURLEnv) is not set (a postgres:// URL)")
            }
            guard case .postgres = LogLocation(url) else {
                throw ConfigError(path: "log.postgres_url_env", problem: "$\(log.postgresURLEnv) must hold a postgres:// URL")
            }
            do {
                return try PostgresLogBackend(url: url, logger: logger)
            } catch {
                throw ConfigError(path: "log.postgres_url_env", problem: "\(error)")
            }
        }
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "localhost" || host == "::1" || host.hasPrefix("127.")
    }

    /// The admin listener's port, once it runs.
    public func waitForAdminPort() async -> Int { await adminPortBox.wait() }

    /// The port the server listens on, once it runs (useful with port 0).
    public func waitForPort() async -> Int { await portBox.wait() }

    /// Runs until SIGTERM/SIGINT (or cancellation), then shuts down gracefully.
    public func run(gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]) async throws {
        try await connectRemotePolicy()
        // Services shut down in reverse order. The public server is last in the list, so it stops
        // first (no new requests; in-flight ones get the shutdown deadline), then SIGHUP
        // handling, the admin listener and retention, and the log writer drains last.
        let group = ServiceGroup(
            configuration: .init(
                services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }
                    + [
                        .init(
                            service: ShutdownDeadline(
                                inner: app, deadline: .seconds(state.config.server.shutdownTimeoutSeconds), logger: state.logger))
                    ],
                gracefulShutdownSignals: gracefulShutdownSignals,
                logger: state.logger))
        groupBox.set(group)
        try await group.run()
        policies.current?.embedded?.shutdown()
        try? await state.upstream.shutdown()
    }

    /// Starts a graceful shutdown, as SIGTERM does; `run()` returns when it is complete.
    public func shutdown() async {
        await groupBox.get()?.triggerGracefulShutdown()
    }
}

extension Gateway {
    /// 32 random bytes as hex, written to `path` with mode 0600 (replacing an older file).
    static func writeGeneratedToken(to path: String) throws -> String {
        var rng = SystemRandomNumberGenerator()
        let token = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
        let fm = FileManager.default
        try? fm.createDirectory(
            atPath: URL(fileURLWithPath: path).deletingLastPathComponent().path,
            withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        try? fm.removeItem(atPath: path)
        guard fm.createFile(atPath: path, contents: Data((token + "\n").utf8), attributes: [.posixPermissions: 0o600]) else {
            throw ConfigError(path: "admin.token_file", problem: "cannot write the generated admin token to \(path)")
        }
        return token
    }
}

/// Gives a service's graceful shutdown a deadline: past it, the service's task is cancelled
/// (for the HTTP server: in-flight requests are cancelled and log themselves as such). Only this
/// service is cut short; the services after it in shutdown order (the log writer) still drain.
struct ShutdownDeadline<Inner: Service>: Service {
    let inner: Inner
    let deadline: Duration
    let logger: Logger

    func run() async throws {
        try await withThrowingTaskGroup(of: Bool.self) { group in
            group.addTask {
                try await inner.run()
                return true
            }
            group.addTask {
                // Returns (or throws) only once a graceful shutdown began, then waits out the deadline.
                try await gracefulShutdown()
                try await Task.sleep(for: deadline)
                return false
            }
            var cutShort = false
            while true {
                do {
                    guard let finished = try await group.next(), !finished else { break }
                    logger.warning("shutdown deadline passed; cancelling in-flight requests", metadata: ["deadline": "\(deadline)"])
                    cutShort = true
                    group.cancelAll()
                } catch  where cutShort {
                    break  // the server ending by cancellation is what the deadline asked for
                }
            }
            group.cancelAll()
        }
    }
}

/// Runs the log writer's drain loop as a service; on graceful shutdown it drains everything,
/// then closes a PostgreSQL backend's connections.
struct LogWriterService: Service {
    let writer: LogWriter
    let backend: any LogBackend
    func run() async throws {
        let writer = self.writer
        await withGracefulShutdownHandler {
            await writer.run()
        } onGracefulShutdown: {
            Task { await writer.shutdown() }
        }
        if backend.kind == .postgres { try? await backend.close() }
    }
}

/// Keeps this replica on the policy version recorded in the shared log (see `PolicySync`).
struct PolicySyncService: Service {
    let sync: PolicySync
    func run() async throws {
        await cancelWhenGracefulShutdown { await sync.run() }
    }
}

/// SIGHUP re-reads the config file; an invalid one is logged and the old one stays.
struct ReloadOnHangup: Service {
    let reload: @Sendable () async throws -> Void
    let logger: Logger
    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            for await _ in signals {
                do { try await reload() } catch {
                    logger.error("config reload rejected; keeping the old config", metadata: ["error": "\(error)"])
                }
            }
        }
    }
}

struct RetentionLoop: Service {
    let service: RetentionService
    func run() async throws {
        await cancelWhenGracefulShutdown { await service.run() }
    }
}

final class PortBox: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var port: Int?
    private var waiters: [CheckedContinuation<Int, Never>] = []
    func set(_ p: Int) {
        let w: [CheckedContinuation<Int, Never>] = lock.withLock {
            port = p
            defer { waiters = [] }
            return waiters
        }
        for c in w { c.resume(returning: p) }
    }
    func wait() async -> Int {
        await withCheckedContinuation { c in
            let p: Int? = lock.withLock {
                if port == nil { waiters.append(c) }
                return port
            }
            if let p { c.resume(returning: p) }
        }
    }
}

/// The config file as read at start-up.
struct FileBaseline: Sendable {
    let value: GatewayConfig?
    init(_ value: GatewayConfig?) { self.value = value }
}

final class GroupBox: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var group: ServiceGroup?
    func set(_ g: ServiceGroup) { lock.withLock { group = g } }
    func get() -> ServiceGroup? { lock.withLock { group } }
}
