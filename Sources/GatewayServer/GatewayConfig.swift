import Foundation
import OpenAIWire

/// The gateway's configuration (gateway.json). Every key is documented in README.md, section
/// "Configuration reference"; `GatewayConfig.parse` rejects unknown keys and wrong types with
/// the key path. Secrets are never in the file, only the names of environment variables.
public struct GatewayConfig: Sendable, Equatable {
    public struct Server: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 8080
        /// Close connections idle (or sending a request too slowly) for this long.
        public var idleTimeoutSeconds = 75
        public init() {}
    }

    public struct Limits: Sendable, Equatable {
        public var maxBodyBytes = 8 << 20
        public var maxHeaderBytes = 64 << 10
        /// Requests handled at once; more wait for a slot up to `queueTimeoutMs`, then get 429.
        public var maxConcurrentRequests = 1024
        public var queueTimeoutMs = 2000
        public init() {}
    }

    public struct Upstream: Sendable, Equatable {
        public var baseURL = "https://api.openai.com/v1"
        /// Name of the environment variable holding the upstream API key (null: send none).
        public var apiKeyEnv: String? = "OPENAI_API_KEY"
        public var connectTimeoutMs = 5_000
        public var firstByteTimeoutMs = 120_000
        public var idleTimeoutMs = 120_000
        public var totalTimeoutMs = 600_000
        public var maxRetries = 2
        public var retryBaseDelayMs = 200
        public var maxConnections = 256
        /// Send the client's own `Authorization` header upstream instead of the gateway's key.
        public var forwardClientAuthorization = false
        /// Client headers forwarded upstream besides content-type and accept (allow-list).
        public var forwardHeaders = ["openai-organization", "openai-project", "openai-beta"]
        public init() {}
    }

    public struct Auth: Sendable, Equatable {
        /// Environment variable with comma-separated client keys (null: none).
        public var clientKeysEnv: String? = "GATEWAY_CLIENT_KEYS"
        /// A file with one client key per line (null: none). '#' starts a comment.
        public var clientKeysFile: String?
        public init() {}
    }

    public enum Mode: String, Sendable, Equatable, CaseIterable {
        case passthrough, collaborate
    }

    /// One routing rule. `model` is an exact name or a prefix ending in `*`; for a prefix rule
    /// the upstream model is the rest of the name (prompt-r1/gpt-4o-mini -> gpt-4o-mini) unless
    /// `upstreamModel` names one.
    public struct Route: Sendable, Equatable {
        public var model: String
        public var mode: Mode
        public var upstreamModel: String?
        public init(model: String, mode: Mode, upstreamModel: String? = nil) {
            self.model = model
            self.mode = mode
            self.upstreamModel = upstreamModel
        }
    }

    public struct Log: Sendable, Equatable {
        public var path = "traffic.sqlite"
        /// Episodes older than this are deleted in the background (0 keeps everything).
        public var retentionDays = 30.0
        public var retentionIntervalSeconds = 3600
        public var queueCapacity = 4096
        public var maxBatch = 256
        /// "commit_before_response": the response's last byte leaves only after its episode is
        /// committed (survives kill -9). "async": respond first, the writer commits in the
        /// background (lower latency; a crash can lose the last few hundred milliseconds).
        public var durability = "commit_before_response"
        /// Replace message contents in the logged request with their length.
        public var redactBodies = false
        public init() {}
    }

    public var server = Server()
    public var limits = Limits()
    public var upstream = Upstream()
    public var auth = Auth()
    public var routes: [Route] = [Route(model: "prompt-r1/*", mode: .collaborate), Route(model: "*", mode: .passthrough)]
    /// Honour the `x-gateway-mode` request header.
    public var allowModeHeader = true
    public var log = Log()
    /// Checkpoint folder of the policy model (null: none loaded; collaboration answers 503).
    public var policyPath: String?

    public init() {}

    public static func load(path: String) throws -> GatewayConfig {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConfigError(path: "", problem: "cannot read config file '\(path)'")
        }
        return try parse(data)
    }

    public static func parse(_ data: Data) throws(ConfigError) -> GatewayConfig {
        var root = try ConfigObject.parse(data)
        var c = GatewayConfig()

        var s = try root.object("server")
        c.server.host = try s.string("host", default: c.server.host)
        c.server.port = try s.int("port", default: c.server.port, range: 0...65535)
        c.server.idleTimeoutSeconds = try s.int("idle_timeout_seconds", default: c.server.idleTimeoutSeconds, range: 1...86_400)
        try s.finish()

        var l = try root.object("limits")
        c.limits.maxBodyBytes = try l.int("max_body_bytes", default: c.limits.maxBodyBytes, range: 1024...(1 << 30))
        c.limits.maxHeaderBytes = try l.int("max_header_bytes", default: c.limits.maxHeaderBytes, range: 1024...(1 << 24))
        c.limits.maxConcurrentRequests = try l.int("max_concurrent_requests", default: c.limits.maxConcurrentRequests, range: 1...1_000_000)
        c.limits.queueTimeoutMs = try l.int("queue_timeout_ms", default: c.limits.queueTimeoutMs, range: 0...600_000)
        try l.finish()

        var u = try root.object("upstream")
        c.upstream.baseURL = try u.requiredString("base_url")
        guard let url = URL(string: c.upstream.baseURL), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
            throw ConfigError(path: "upstream.base_url", problem: "must be an http(s) URL such as https://api.openai.com/v1, got \"\(c.upstream.baseURL)\"")
        }
        if u.dict["api_key_env"] != nil {
            c.upstream.apiKeyEnv = try u.string("api_key_env")
        }
        if let v = c.upstream.apiKeyEnv, !Self.isEnvName(v) {
            throw ConfigError(path: "upstream.api_key_env", problem: "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key")
        }
        c.upstream.connectTimeoutMs = try u.int("connect_timeout_ms", default: c.upstream.connectTimeoutMs, range: 1...600_000)
        c.upstream.firstByteTimeoutMs = try u.int("first_byte_timeout_ms", default: c.upstream.firstByteTimeoutMs, range: 1...3_600_000)
        c.upstream.idleTimeoutMs = try u.int("idle_timeout_ms", default: c.upstream.idleTimeoutMs, range: 1...3_600_000)
        c.upstream.totalTimeoutMs = try u.int("total_timeout_ms", default: c.upstream.totalTimeoutMs, range: 1...86_400_000)
        c.upstream.maxRetries = try u.int("max_retries", default: c.upstream.maxRetries, range: 0...10)
        c.upstream.retryBaseDelayMs = try u.int("retry_base_delay_ms", default: c.upstream.retryBaseDelayMs, range: 0...60_000)
        c.upstream.maxConnections = try u.int("max_connections", default: c.upstream.maxConnections, range: 1...10_000)
        c.upstream.forwardClientAuthorization = try u.bool("forward_client_authorization", default: c.upstream.forwardClientAuthorization)
        c.upstream.forwardHeaders = try u.stringArray("forward_headers", default: c.upstream.forwardHeaders).map { $0.lowercased() }
        for (i, h) in c.upstream.forwardHeaders.enumerated() where Self.neverForwarded.contains(h) {
            throw ConfigError(path: "upstream.forward_headers[\(i)]", problem: "'\(h)' is a hop-by-hop or gateway-controlled header and is never forwarded")
        }
        try u.finish()

        var a = try root.object("auth")
        if a.dict["client_keys_env"] != nil { c.auth.clientKeysEnv = try a.string("client_keys_env") }
        if let v = c.auth.clientKeysEnv, !Self.isEnvName(v) {
            throw ConfigError(path: "auth.client_keys_env", problem: "must be the NAME of an environment variable, not a key")
        }
        c.auth.clientKeysFile = try a.string("client_keys_file")
        try a.finish()

        if let routes = try root.objectArray("routes") {
            c.routes = []
            for var r in routes {
                let model = try r.requiredString("model")
                let mode = try r.oneOf("mode", Mode.allCases.map(\.rawValue), default: "passthrough")
                let upstreamModel = try r.string("upstream_model")
                try r.finish()
                c.routes.append(Route(model: model, mode: Mode(rawValue: mode)!, upstreamModel: upstreamModel))
            }
        }
        c.allowModeHeader = try root.bool("allow_mode_header", default: c.allowModeHeader)

        var lg = try root.object("log")
        c.log.path = try lg.string("path", default: c.log.path)
        c.log.retentionDays = try lg.double("retention_days", default: c.log.retentionDays, range: 0...36_500)
        c.log.retentionIntervalSeconds = try lg.int("retention_interval_seconds", default: c.log.retentionIntervalSeconds, range: 1...604_800)
        c.log.queueCapacity = try lg.int("queue_capacity", default: c.log.queueCapacity, range: 1...1_000_000)
        c.log.maxBatch = try lg.int("max_batch", default: c.log.maxBatch, range: 1...100_000)
        c.log.durability = try lg.oneOf("durability", ["commit_before_response", "async"], default: c.log.durability)
        c.log.redactBodies = try lg.bool("redact_bodies", default: c.log.redactBodies)
        try lg.finish()

        var p = try root.object("policy")
        c.policyPath = try p.string("path")
        try p.finish()

        try root.finish()
        return c
    }

    static func isEnvName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 128 && s.unicodeScalars.allSatisfy { ($0.properties.isASCIIHexDigit || ("A"..."Z").contains($0) || ("a"..."z").contains($0) || ("0"..."9").contains($0) || $0 == "_") }
            && !s.hasPrefix("sk-")
    }

    /// Hop-by-hop headers (RFC 9110 7.6.1) and headers the gateway sets itself.
    static let neverForwarded: Set<String> = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "authorization", "accept-encoding",
    ]

    /// Finds the route for a requested model name: the first rule that matches.
    public func route(forModel model: String) -> (mode: Mode, upstreamModel: String) {
        for r in routes {
            if r.model == "*" { return (r.mode, r.upstreamModel ?? model) }
            if r.model.hasSuffix("*") {
                let prefix = r.model.dropLast()
                if model.hasPrefix(prefix), model.count > prefix.count {
                    return (r.mode, r.upstreamModel ?? String(model.dropFirst(prefix.count)))
                }
            } else if r.model == model {
                return (r.mode, r.upstreamModel ?? model)
            }
        }
        return (.passthrough, model)
    }

    /// The collaboration aliases to list in /v1/models for the given upstream model ids.
    public func collaborationAliases(upstreamModels: [String]) -> [String] {
        var out: [String] = []
        for r in routes where r.mode == .collaborate {
            if r.model.hasSuffix("*") {
                if r.upstreamModel != nil { continue }
                out += upstreamModels.map { String(r.model.dropLast()) + $0 }
            } else {
                out.append(r.model)
            }
        }
        return out
    }
}
