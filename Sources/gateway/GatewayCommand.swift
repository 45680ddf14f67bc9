import ArgumentParser
import Foundation
import GatewayServer
import Logging
import TrafficLog

/// `gateway`: the Prompt-R1 gateway server. Thin: parses flags, loads the config, runs.
@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "An OpenAI-compatible gateway whose embedded policy model prompts the upstream LLM (Prompt-R1).",
        version: GatewayVersion.string,
        subcommands: [Serve.self, CheckConfig.self],
        defaultSubcommand: Serve.self
    )

    static func main() async {
        GatewayRuntime.useEventLoopsAsGlobalExecutor()
        await main(nil)
    }
}

struct ConfigOptions: ParsableArguments {
    @Option(name: .long, help: "Path of the JSON config file.")
    var config: String = "gateway.json"

    @Option(name: .long, help: "Listen address (overrides server.host).")
    var host: String?

    @Option(name: .long, help: "Listen port (overrides server.port; 0 picks a free port).")
    var port: Int?

    @Option(name: .customLong("upstream-url"), help: "Upstream base URL, e.g. https://api.openai.com/v1 (overrides upstream.base_url).")
    var upstreamURL: String?

    @Option(
        name: .customLong("log-db"),
        help:
            "Traffic log: a SQLite path (overrides log.path) or a postgres:// URL (sets log.backend to postgres; prefer $GATEWAY_LOG_POSTGRES_URL outside tests: a command line is visible to other users)."
    )
    var logDB: String?

    @Option(name: .long, help: "Policy checkpoint folder (overrides policy.path).")
    var policy: String?

    @Option(
        name: .customLong("admin-host"),
        help: "Admin listen address (overrides admin.host; a non-loopback one needs the token in the environment).")
    var adminHost: String?

    @Option(name: .customLong("admin-port"), help: "Admin listener port (overrides admin.port; 0 picks a free port).")
    var adminPort: Int?

    @Option(
        name: .customLong("policy-backend"), help: "Base URL of an inference engine serving the policy (overrides policy.backend.base_url)."
    )
    var policyBackend: String?

    @Option(
        name: .customLong("policy-backend-kind"),
        help: "embedded, vllm, sglang or llamacpp (overrides policy.backend.kind; default with --policy-backend: llamacpp).")
    var policyBackendKind: String?

    @Option(
        name: .customLong("data-dir"),
        help: ArgumentHelp(
            "Folder of the runtime files: traffic log, generated admin token, models (default: $GATEWAY_DATA_DIR, else ./data in the repository, else $XDG_STATE_HOME/prompt-r1-gateway).",
            valueName: "dir"))
    var dataDir: String?

    /// The data directory in effect: the flag, `$GATEWAY_DATA_DIR`, or the default.
    var dataDirectory: String {
        let env = ProcessInfo.processInfo.environment
        let chosen = dataDir ?? env["GATEWAY_DATA_DIR"].flatMap { $0.isEmpty ? nil : $0 } ?? DataDirectory.defaultPath()
        return URL(fileURLWithPath: chosen).standardized.path
    }

    func load() throws -> GatewayConfig {
        // Relative paths of the file live in the data directory; paths given as flags are used as given.
        var c = try GatewayConfig.load(path: config).placingRuntimeFiles(in: dataDirectory)
        if let host { c.server.host = host }
        if let port {
            guard (0...65535).contains(port) else { throw ValidationError("--port must be between 0 and 65535") }
            c.server.port = port
        }
        if let upstreamURL {
            guard let u = URL(string: upstreamURL), ["http", "https"].contains(u.scheme ?? ""), u.host != nil else {
                throw ValidationError("--upstream-url must be an http(s) URL")
            }
            c.upstream.baseURL = upstreamURL
        }
        if let logDB {
            switch LogLocation(logDB) {
            case .sqlite(let path):
                c.log.backend = .sqlite
                c.log.path = path
            case .postgres(let url):
                c.log.backend = .postgres
                c.log.postgresURL = url
            }
        }
        if let policy = policy ?? ProcessInfo.processInfo.environment["GATEWAY_POLICY"].flatMap({ $0.isEmpty ? nil : $0 }) {
            c.policyPath = policy
        }
        if let adminHost { c.admin.host = adminHost }
        if let adminPort {
            guard (0...65535).contains(adminPort) else { throw ValidationError("--admin-port must be between 0 and 65535") }
            c.admin.port = adminPort
        }
        try c.overridePolicyBackend(url: policyBackend, kind: policyBackendKind)
        return c
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the gateway until SIGTERM or SIGINT.")

    @OptionGroup var options: ConfigOptions

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "info"

    func run() async throws {
        let config: GatewayConfig
        do { config = try options.load() } catch let e as ConfigError {
            throw ValidationError("invalid config \(options.config): \(e)")
        }
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = Logger.Level(rawValue: logLevel) ?? .info
            return h
        }
        let logger = Logger(label: "gateway")
        let gateway = try Gateway(config: config, configPath: options.config, logger: logger)
        Task {
            let port = await gateway.waitForPort()
            let adminPort = await gateway.waitForAdminPort()
            logger.notice(
                "gateway listening",
                metadata: [
                    "address": "\(config.server.host):\(port)", "admin": "\(config.admin.host):\(adminPort)",
                    "upstream": "\(config.upstream.baseURL)",
                    "log": "\(gateway.state.database.location)", "data_dir": "\(options.dataDirectory)",
                    "version": "\(GatewayVersion.string)",
                ])
        }
        try await gateway.run()
        logger.notice("gateway stopped; traffic log drained")
    }
}

struct CheckConfig: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate the config (and the overrides) and print the effective settings.")

    @OptionGroup var options: ConfigOptions

    func run() async throws {
        do {
            let c = try options.load()
            print("config OK: \(options.config)")
            print("  listen       \(c.server.host):\(c.server.port)")
            print(
                "  upstream     \(c.upstream.baseURL) (key from env \(c.upstream.apiKeyEnv ?? "none"): \(c.upstream.apiKeyEnv.flatMap { ProcessInfo.processInfo.environment[$0] } == nil ? "not set" : "set"))"
            )
            print(
                "  routes       "
                    + c.routes.map { "\($0.model) -> \($0.mode.rawValue)\($0.upstreamModel.map { " (\($0))" } ?? "")" }.joined(
                        separator: ", "))
            print(
                "  log          \(c.log.backend == .sqlite ? c.log.path : "postgres, URL from " + (c.log.postgresURL.map { LogLocation.redact($0) } ?? "$" + c.log.postgresURLEnv)) (durability \(c.log.durability.rawValue), retention \(c.log.retentionDays) days)"
            )
            print("  policy       \(c.policyPath ?? "none")")
            print("  data dir     \(options.dataDirectory)")
            print(
                "  admin        \(c.admin.host):\(c.admin.port) (token from env \(c.admin.tokenEnv): \((ProcessInfo.processInfo.environment[c.admin.tokenEnv] ?? "").isEmpty ? "not set, generated into \(c.generatedAdminTokenPath)" : "set"))"
            )
            print("  models dir   \(c.admin.modelsDir)")
        } catch let e as ConfigError {
            throw ValidationError("invalid config \(options.config): \(e)")
        }
    }
}
