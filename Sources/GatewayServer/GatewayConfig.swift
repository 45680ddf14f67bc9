import Foundation
import OpenAIWire
import PolicyEngine
import RemotePolicy
import TrafficLog

/// The gateway's configuration (gateway.json). Every key is documented in docs/configuration.md
/// (`ConfigReferenceTests` checks it); `GatewayConfig.parse` rejects unknown keys and wrong types with
/// the key path. Secrets are never in the file, only the names of environment variables.
public struct GatewayConfig: Sendable, Equatable {
    public struct Server: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 8080
        /// Close connections idle (or sending a request too slowly) for this long.
        public var idleTimeoutSeconds = 75
        /// On SIGTERM/SIGINT, in-flight requests get this long to finish; then they are
        /// cancelled (and logged as such) and the traffic log drains.
        public var shutdownTimeoutSeconds = 30
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
        /// Consecutive upstream failures that open the circuit breaker (0 disables it).
        public var circuitBreakerFailures = 5
        /// How long an open circuit answers 503 at once before a probe request is let through.
        public var circuitBreakerCooldownMs = 10_000
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
        /// Which database holds the log: a SQLite file (`path`) or a PostgreSQL server shared
        /// by several replicas (URL in the environment variable `postgresURLEnv`).
        public var backend = LogBackendKind.sqlite
        /// Environment variable holding the `postgres://` URL (it carries the password, so it
        /// is never in the file).
        public var postgresURLEnv = "GATEWAY_LOG_POSTGRES_URL"
        /// A URL given on the command line (`--log-db postgres://...`); never read from the file.
        public var postgresURL: String?
        /// How often each replica checks the shared log for a policy version recorded by
        /// another (PostgreSQL also notifies at once; this is the fallback).
        public var policyPollSeconds = 5.0
        public var path = "traffic.sqlite"
        /// Episodes older than this are deleted in the background (0 keeps everything).
        public var retentionDays = 30.0
        public var retentionIntervalSeconds = 3600
        public var queueCapacity = 4096
        public var maxBatch = 256
        /// With `durability: async`: after a small batch, the writer waits this long before
        /// the next commit, so light traffic still shares transactions (0: commit at once).
        public var lingerMs = 5
        public var durability = Durability.commitBeforeResponse
        /// Replace message contents in the logged request with their length.
        public var redactBodies = false
        public init() {}
    }

    /// When a request's episode is committed to the traffic log.
    public enum Durability: String, Sendable, CaseIterable {
        /// Respond first; the writer thread commits in the background, in batches (graceful
        /// shutdown drains everything; a crash or kill -9 can lose the episodes of the last
        /// milliseconds).
        case async
        /// The default. The response's last byte leaves only after its episode is committed,
        /// so every completed response (whose client holds its episode id) survives kill -9.
        /// Group commit: requests waiting at the same time share one transaction, so the cost
        /// is a commit and a thread hand-off in each request's latency, not a commit each.
        case commitBeforeResponse = "commit_before_response"
    }

    public var server = Server()
    public var limits = Limits()
    public var upstream = Upstream()
    public var auth = Auth()
    public var routes: [Route] = [Route(model: "prompt-r1/*", mode: .collaborate), Route(model: "*", mode: .passthrough)]
    /// Honour the `x-gateway-mode` request header.
    public var allowModeHeader = true
    public var log = Log()
    public var policy = Policy()
    public var admin = Admin()
    public var telemetry = Telemetry()

    /// OpenTelemetry traces (see docs/console.md).
    public struct Telemetry: Sendable, Equatable {
        /// OTLP/HTTP (protobuf) collector, e.g. http://127.0.0.1:4318 (null: no tracing).
        public var otlpEndpoint: String?
        /// Put message contents (requests, prompts, answers) into span attributes.
        public var includeContent = false
        public var serviceName = "prompt-r1-gateway"
        /// How often the batch span processor exports.
        public var exportIntervalMs = 1000
        public init() {}
    }

    /// The admin listener: policy versions, config reload, health, readiness, metrics.
    public struct Admin: Sendable, Equatable {
        public var host = "127.0.0.1"
        public var port = 8081
        /// Environment variable holding the admin bearer token.
        public var tokenEnv = "GATEWAY_ADMIN_TOKEN"
        /// Where a generated token is written (0600) when the variable is not set; null: next to
        /// the traffic log, as `admin-token`.
        public var tokenFile: String?
        /// Policy checkpoints may only be loaded from inside this folder.
        public var modelsDir = "models"
        public init() {}
    }
    /// Checkpoint folder of the policy model (null: none loaded; collaboration answers 503).
    public var policyPath: String? {
        get { policy.path }
        set { policy.path = newValue }
    }

    /// The embedded policy model and the collaboration loop (Prompt-R1).
    public struct Policy: Sendable, Equatable {
        public var path: String?
        /// `policy.backend`: nil is the embedded engine; otherwise the inference engine serving it.
        public var backend: RemotePolicyBackend?
        /// Sampling of the policy; null takes the checkpoint's generation_config.json (greedy if absent).
        public var temperature: Double?
        public var topP: Double?
        public var topK: Int?
        public var seed: Int?
        public var maxTurns = 5
        public var maxTokensPerTurn = 1024
        public var maxPolicyTokensPerEpisode = 4096
        public var maxUpstreamCalls = 5
        public var episodeDeadlineSeconds = 300.0
        public var maxConcurrentEpisodes = 16
        public var queueTimeoutMs = 10_000
        /// N of protocol section 4 (upstream answers are cut to N characters when injected).
        public var maxResultChars = 8192
        public var finalAnswer = FinalAnswer.policy
        public var fallback = Fallback.lastUpstreamAnswer
        public var onPolicyError = OnPolicyError.passthrough
        public var questionContext = QuestionContext.conversation
        /// A collaboration request the loop cannot honour (tools, response_format, images, ...).
        public var unsupportedRequest = UnsupportedRequest.passthrough
        /// Put the client's system message in front of the upstream's system prompt.
        public var forwardClientSystem = true
        public var trace = Trace.onRequest
        /// SSE comment sent while nothing else is sent for this long (keeps proxies from cutting).
        public var keepaliveSeconds = 10.0
        /// "f32": the checkpoint's weights as float32, mapped from the file; "q8": projections and lm_head
        /// quantised to 8 bits at load (about 2.8x faster single-sequence decode, a quarter of the memory,
        /// slightly different numbers).
        public var weights: WeightFormat = .f32
        /// Bound of the policy's prefix cache (keys and values of shared prompt starts), in MB; 0: off.
        public var prefixCacheMB = 256
        /// Speculative decoding of the embedded policy.
        public var speculation = Speculation.promptLookup
        /// Most draft tokens per sequence and decode step (`speculation: prompt_lookup`).
        public var draftTokens = 4
        public init() {}

        /// The engine's setting (nil: off).
        public var promptLookup: PromptLookup? {
            switch speculation {
            case .off: return nil
            case .promptLookup: return PromptLookup(draftTokens: draftTokens)
            }
        }
    }

    /// How the embedded policy decodes more than one token per forward step.
    public enum Speculation: String, Sendable, CaseIterable {
        /// One token per sequence and step.
        case off
        /// Drafts copied from the sequence's own context (the question, the upstream's answer), checked by
        /// the model in one step: greedy output unchanged, sampled output from the same distribution.
        case promptLookup = "prompt_lookup"
    }

    /// Which text the client gets when the policy answers.
    public enum FinalAnswer: String, Sendable, CaseIterable {
        /// The `<answer>` body, as in the paper.
        case policy
        /// The last upstream answer verbatim.
        case upstream
    }

    /// Out of turns, or an empty answer.
    public enum Fallback: String, Sendable, CaseIterable {
        case lastUpstreamAnswer = "last_upstream_answer"
        /// The client's original request, forwarded as passthrough would.
        case direct
        case error
    }

    /// The policy failed or missed its deadline.
    public enum OnPolicyError: String, Sendable, CaseIterable {
        /// The client's original request, forwarded untouched (stream or not).
        case passthrough
        case error
    }

    public enum QuestionContext: String, Sendable, CaseIterable {
        /// Earlier messages are folded into the question as context.
        case conversation
        /// Only the last user message is the question.
        case lastUserMessage = "last_user_message"
    }

    /// Return the collaboration trace as `reasoning_content`.
    public enum Trace: String, Sendable, CaseIterable {
        case off, on
        /// Only with the request header `x-gateway-trace: 1`.
        case onRequest = "on_request"
    }

    /// A collaboration request with something the loop cannot honour.
    public enum UnsupportedRequest: String, Sendable, CaseIterable {
        /// Serve it as passthrough; the reason is logged and sent in `x-gateway-unsupported`.
        case passthrough
        /// A 400 whose `param` names the field.
        case error
    }

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
        c.server.shutdownTimeoutSeconds = try s.int("shutdown_timeout_seconds", default: c.server.shutdownTimeoutSeconds, range: 1...86_400)
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
            throw ConfigError(
                path: "upstream.base_url",
                problem: "must be an http(s) URL such as https://api.openai.com/v1, got \"\(c.upstream.baseURL)\"")
        }
        if u.dict["api_key_env"] != nil {
            c.upstream.apiKeyEnv = try u.string("api_key_env")
        }
        if let v = c.upstream.apiKeyEnv, !Self.isEnvName(v) {
            throw ConfigError(
                path: "upstream.api_key_env", problem: "must be the NAME of an environment variable (e.g. OPENAI_API_KEY), not a key")
        }
        c.upstream.connectTimeoutMs = try u.int("connect_timeout_ms", default: c.upstream.connectTimeoutMs, range: 1...600_000)
        c.upstream.firstByteTimeoutMs = try u.int("first_byte_timeout_ms", default: c.upstream.firstByteTimeoutMs, range: 1...3_600_000)
        c.upstream.idleTimeoutMs = try u.int("idle_timeout_ms", default: c.upstream.idleTimeoutMs, range: 1...3_600_000)
        c.upstream.totalTimeoutMs = try u.int("total_timeout_ms", default: c.upstream.totalTimeoutMs, range: 1...86_400_000)
        c.upstream.maxRetries = try u.int("max_retries", default: c.upstream.maxRetries, range: 0...10)
        c.upstream.retryBaseDelayMs = try u.int("retry_base_delay_ms", default: c.upstream.retryBaseDelayMs, range: 0...60_000)
        c.upstream.maxConnections = try u.int("max_connections", default: c.upstream.maxConnections, range: 1...10_000)
        c.upstream.circuitBreakerFailures = try u.int(
            "circuit_breaker_failures", default: c.upstream.circuitBreakerFailures, range: 0...10_000)
        c.upstream.circuitBreakerCooldownMs = try u.int(
            "circuit_breaker_cooldown_ms", default: c.upstream.circuitBreakerCooldownMs, range: 1...3_600_000)
        c.upstream.forwardClientAuthorization = try u.bool("forward_client_authorization", default: c.upstream.forwardClientAuthorization)
        c.upstream.forwardHeaders = try u.stringArray("forward_headers", default: c.upstream.forwardHeaders).map { $0.lowercased() }
        for (i, h) in c.upstream.forwardHeaders.enumerated() where Self.neverForwarded.contains(h) {
            throw ConfigError(
                path: "upstream.forward_headers[\(i)]",
                problem: "'\(h)' is a hop-by-hop or gateway-controlled header and is never forwarded")
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
        c.log.backend = try lg.oneOf("backend", default: c.log.backend)
        c.log.postgresURLEnv = try lg.string("postgres_url_env", default: c.log.postgresURLEnv)
        if !Self.isEnvName(c.log.postgresURLEnv) {
            throw ConfigError(path: "log.postgres_url_env", problem: "must be the NAME of an environment variable, not a URL")
        }
        c.log.policyPollSeconds = try lg.double("policy_poll_seconds", default: c.log.policyPollSeconds, range: 0.1...3600)
        c.log.path = try lg.string("path", default: c.log.path)
        c.log.retentionDays = try lg.double("retention_days", default: c.log.retentionDays, range: 0...36_500)
        c.log.retentionIntervalSeconds = try lg.int(
            "retention_interval_seconds", default: c.log.retentionIntervalSeconds, range: 1...604_800)
        c.log.queueCapacity = try lg.int("queue_capacity", default: c.log.queueCapacity, range: 1...1_000_000)
        c.log.maxBatch = try lg.int("max_batch", default: c.log.maxBatch, range: 1...100_000)
        c.log.lingerMs = try lg.int("linger_ms", default: c.log.lingerMs, range: 0...1000)
        c.log.durability = try lg.oneOf("durability", default: c.log.durability)
        c.log.redactBodies = try lg.bool("redact_bodies", default: c.log.redactBodies)
        try lg.finish()

        var ad = try root.object("admin")
        c.admin.host = try ad.string("host", default: c.admin.host)
        c.admin.port = try ad.int("port", default: c.admin.port, range: 0...65535)
        c.admin.tokenEnv = try ad.string("token_env", default: c.admin.tokenEnv)
        c.admin.tokenFile = try ad.string("token_file")
        if !Self.isEnvName(c.admin.tokenEnv) {
            throw ConfigError(path: "admin.token_env", problem: "must be the NAME of an environment variable, not a token")
        }
        c.admin.modelsDir = try ad.string("models_dir", default: c.admin.modelsDir)
        try ad.finish()

        var p = try root.object("policy")
        c.policy.path = try p.string("path")
        c.policy.temperature = try p.optionalDouble("temperature", range: 0...2)
        c.policy.topP = try p.optionalDouble("top_p", range: 0...1)
        c.policy.topK = try p.optionalInt("top_k", range: 0...1_000_000)
        c.policy.seed = try p.optionalInt("seed", range: 0...Int(Int32.max))
        c.policy.maxTurns = try p.int("max_turns", default: c.policy.maxTurns, range: 1...50)
        c.policy.maxTokensPerTurn = try p.int("max_tokens_per_turn", default: c.policy.maxTokensPerTurn, range: 1...32_768)
        c.policy.maxPolicyTokensPerEpisode = try p.int(
            "max_policy_tokens_per_episode", default: c.policy.maxPolicyTokensPerEpisode, range: 1...1_000_000)
        c.policy.maxUpstreamCalls = try p.int("max_upstream_calls", default: c.policy.maxUpstreamCalls, range: 0...50)
        c.policy.episodeDeadlineSeconds = try p.double(
            "episode_deadline_seconds", default: c.policy.episodeDeadlineSeconds, range: 0.1...86_400)
        c.policy.maxConcurrentEpisodes = try p.int("max_concurrent_episodes", default: c.policy.maxConcurrentEpisodes, range: 1...10_000)
        c.policy.queueTimeoutMs = try p.int("queue_timeout_ms", default: c.policy.queueTimeoutMs, range: 0...600_000)
        c.policy.maxResultChars = try p.int("max_result_chars", default: c.policy.maxResultChars, range: 16...1_000_000)
        c.policy.finalAnswer = try p.oneOf("final_answer", default: c.policy.finalAnswer)
        c.policy.fallback = try p.oneOf("fallback", default: c.policy.fallback)
        c.policy.onPolicyError = try p.oneOf("on_policy_error", default: c.policy.onPolicyError)
        c.policy.questionContext = try p.oneOf("question_context", default: c.policy.questionContext)
        c.policy.unsupportedRequest = try p.oneOf("unsupported_request", default: c.policy.unsupportedRequest)
        c.policy.forwardClientSystem = try p.bool("forward_client_system", default: c.policy.forwardClientSystem)
        c.policy.trace = try p.oneOf("trace", default: c.policy.trace)
        c.policy.keepaliveSeconds = try p.double("keepalive_seconds", default: c.policy.keepaliveSeconds, range: 0.1...3600)
        c.policy.weights = try p.oneOf("weights", default: c.policy.weights)
        c.policy.prefixCacheMB = try p.int("prefix_cache_mb", default: c.policy.prefixCacheMB, range: 0...1_048_576)
        c.policy.speculation = try p.oneOf("speculation", default: c.policy.speculation)
        c.policy.draftTokens = try p.int("draft_tokens", default: c.policy.draftTokens, range: 1...16)
        var backend = try p.object("backend")
        c.policy.backend = try Self.policyBackend(&backend)
        try p.finish()

        var t = try root.object("telemetry")
        c.telemetry.otlpEndpoint = try t.string("otlp_endpoint")
        if let e = c.telemetry.otlpEndpoint {
            guard let url = URL(string: e), let scheme = url.scheme, ["http", "https"].contains(scheme), url.host != nil else {
                throw ConfigError(
                    path: "telemetry.otlp_endpoint",
                    problem: "must be an http(s) URL of an OTLP/HTTP collector such as http://127.0.0.1:4318, got \"\(e)\"")
            }
        }
        c.telemetry.includeContent = try t.bool("include_content", default: c.telemetry.includeContent)
        c.telemetry.serviceName = try t.string("service_name", default: c.telemetry.serviceName)
        c.telemetry.exportIntervalMs = try t.int("export_interval_ms", default: c.telemetry.exportIntervalMs, range: 10...600_000)
        try t.finish()

        try root.finish()
        return c
    }

    static func isEnvName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 128
            && s.unicodeScalars.allSatisfy {
                ($0.properties.isASCIIHexDigit || ("A"..."Z").contains($0) || ("a"..."z").contains($0) || ("0"..."9").contains($0)
                    || $0 == "_")
            }
            && !s.hasPrefix("sk-")
    }

    /// Hop-by-hop headers (RFC 9110 7.6.1) and headers the gateway sets itself.
    static let neverForwarded: Set<String> = [
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
        "transfer-encoding", "upgrade", "host", "content-length", "authorization", "accept-encoding",
    ]

    /// The keys, among those that take effect only at start-up, whose values differ from `old`.
    /// Everything else is applied by a reload (`POST /admin/config/reload`, SIGHUP).
    public func restartOnlyChanges(from old: GatewayConfig) -> [String] {
        var out: [String] = []
        if server != old.server { out.append("server") }
        if upstream != old.upstream { out.append("upstream") }
        if admin != old.admin { out.append("admin") }
        if limits.maxHeaderBytes != old.limits.maxHeaderBytes { out.append("limits.max_header_bytes") }
        if log.path != old.log.path { out.append("log.path") }
        if log.queueCapacity != old.log.queueCapacity { out.append("log.queue_capacity") }
        if log.maxBatch != old.log.maxBatch { out.append("log.max_batch") }
        if log.lingerMs != old.log.lingerMs { out.append("log.linger_ms") }
        if log.retentionDays != old.log.retentionDays { out.append("log.retention_days") }
        if log.retentionIntervalSeconds != old.log.retentionIntervalSeconds { out.append("log.retention_interval_seconds") }
        if policy.path != old.policy.path { out.append("policy.path") }
        if policy.weights != old.policy.weights { out.append("policy.weights") }
        return out
    }

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
