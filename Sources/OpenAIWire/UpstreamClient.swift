import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Where and how to reach the upstream LLM (any OpenAI-compatible server).
public struct UpstreamSettings: Sendable, Equatable {
    /// Base URL including the API prefix, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8000/v1`.
    public var baseURL: String
    /// The upstream API key (read from the environment by the caller; never logged).
    public var apiKey: String?
    public var connectTimeout: Duration
    /// Longest wait for the response head.
    public var firstByteTimeout: Duration
    /// Longest silence between two pieces of a response body (also bounds the wait for the head).
    public var idleTimeout: Duration
    /// Longest time for a whole request, body included.
    public var totalTimeout: Duration
    /// Retries (before any byte reached the client) on connect failure, 429, 502, 503, 504.
    public var maxRetries: Int
    public var retryBaseDelay: Duration
    public var maxConnections: Int
    /// Consecutive failures that open the circuit breaker (0: no breaker).
    public var circuitBreakerFailures: Int
    /// How long an open circuit fails requests fast before letting a probe through.
    public var circuitBreakerCooldown: Duration

    public init(
        baseURL: String, apiKey: String? = nil, connectTimeout: Duration = .seconds(5),
        firstByteTimeout: Duration = .seconds(120), idleTimeout: Duration = .seconds(120),
        totalTimeout: Duration = .seconds(600), maxRetries: Int = 2, retryBaseDelay: Duration = .milliseconds(200),
        maxConnections: Int = 256, circuitBreakerFailures: Int = 5, circuitBreakerCooldown: Duration = .seconds(10)
    ) {
        self.baseURL = baseURL
        self.apiKey = apiKey
        self.connectTimeout = connectTimeout
        self.firstByteTimeout = firstByteTimeout
        self.idleTimeout = idleTimeout
        self.totalTimeout = totalTimeout
        self.maxRetries = maxRetries
        self.retryBaseDelay = retryBaseDelay
        self.maxConnections = maxConnections
        self.circuitBreakerFailures = circuitBreakerFailures
        self.circuitBreakerCooldown = circuitBreakerCooldown
    }
}

/// A response whose head has arrived; the body streams.
public struct UpstreamResponse: Sendable {
    public var status: Int
    public var headers: HTTPHeaders
    public var body: HTTPClientResponse.Body
    /// Attempts made (1 = no retry).
    public var attempts: Int
    public var firstByteLatency: Duration
    /// The upstream's breaker: a body that fails after a good head counts against the upstream.
    let breaker: CircuitBreaker?

    /// Collects the whole body, bounded. A failure (cut connection, idle timeout) is reported to
    /// the circuit breaker.
    public func collect(upTo limit: Int) async throws -> ByteBuffer {
        do {
            return try await body.collect(upTo: limit)
        } catch {
            breaker?.recordFailure()
            throw error
        }
    }
}

/// The upstream HTTP client used by the gateway's passthrough and collaboration paths and by the
/// trainer's rollouts. AsyncHTTPClient connection pools (one per event loop, see
/// `EventLoopHTTPClients`), keep-alive, streaming bodies.
public final class UpstreamClient: Sendable {
    public let settings: UpstreamSettings
    private let http: EventLoopHTTPClients
    /// Shared by every request to this upstream; the stream relays report mid-stream failures to it.
    public let breaker: CircuitBreaker
    private let base: String
    private let logger: Logger
    /// Handed to AsyncHTTPClient per request. It attaches request metadata to this logger on
    /// every request, which costs a metadata re-render with stream log handlers; unless its
    /// debug/trace output could be seen, a no-op logger skips that.
    private let requestLogger: Logger

    public init(settings: UpstreamSettings, logger: Logger = Logger(label: "upstream")) {
        self.settings = settings
        var base = settings.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
        self.logger = logger
        self.breaker = CircuitBreaker(failureThreshold: settings.circuitBreakerFailures, cooldown: settings.circuitBreakerCooldown)
        self.requestLogger = logger.logLevel <= .debug ? logger : Logger(label: logger.label, factory: { _ in SwiftLogNoOpLogHandler() })
        var config = HTTPClient.Configuration()
        config.timeout = .init(
            connect: .nanoseconds(settings.connectTimeout.nanoseconds),
            read: .nanoseconds(settings.idleTimeout.nanoseconds))
        config.connectionPool = .init(idleTimeout: .seconds(60))
        config.decompression = .disabled
        config.redirectConfiguration = .disallow
        // No tracer: the gateway never bootstraps distributed tracing, and the default no-op
        // tracer still makes the client re-parse the URL and fill span attributes per request.
        config.tracing.tracer = nil
        self.http = EventLoopHTTPClients(configuration: config, maxConnections: settings.maxConnections)
    }

    public func shutdown() async throws { try await http.shutdown() }

    /// The upstream URL for a client path under `/v1` (e.g. `/v1/chat/completions` ->
    /// `<base>/chat/completions`), keeping the query string.
    public func url(forClientPath path: String) -> String {
        var rest = Substring(path)
        if rest.hasPrefix("/v1/") { rest = rest.dropFirst(3) } else if rest == "/v1" { rest = "" }
        return base + rest
    }

    /// Sends one request and returns once the response head arrived, retrying where it is safe
    /// (nothing was sent to the client yet, and the failure is connect-level, 429 or 502/503/504).
    /// Errors are GatewayErrors with the status the client should see.
    public func send(
        method: HTTPMethod, path: String, headers: HTTPHeaders, body: ByteBuffer?,
        forwardedAuthorization: String? = nil
    ) async throws -> UpstreamResponse {
        var request = HTTPClientRequest(url: url(forClientPath: path))
        request.method = method
        request.headers = headers
        if let forwardedAuthorization {
            request.headers.replaceOrAdd(name: "authorization", value: forwardedAuthorization)
        } else if let key = settings.apiKey, !key.isEmpty {
            request.headers.replaceOrAdd(name: "authorization", value: "Bearer \(key)")
        }
        if let body { request.body = .bytes(body) }

        if let wait = breaker.acquire() {
            throw GatewayError.upstreamCircuitOpen(retryAfterSeconds: wait)
        }
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = NIODeadline.now() + .nanoseconds(settings.totalTimeout.nanoseconds)
        var attempt = 0
        while true {
            attempt += 1
            do {
                let response = try await executeWithFirstByteTimeout(request, deadline: deadline)
                let status = Int(response.status.code)
                if CircuitBreaker.isFailure(status: status) { breaker.recordFailure() } else { breaker.recordSuccess() }
                if attempt <= settings.maxRetries, Self.retryableStatuses.contains(status) {
                    let delay = retryDelay(attempt: attempt, retryAfter: response.headers.first(name: "retry-after"))
                    if clock.now + delay < start + settings.totalTimeout {
                        // Drain and drop the failed body so the connection can be reused.
                        _ = try? await response.body.collect(upTo: 1 << 20)
                        logger.debug("upstream retry", metadata: ["status": "\(status)", "attempt": "\(attempt)"])
                        try await Task.sleep(for: delay)
                        continue
                    }
                }
                return UpstreamResponse(
                    status: status, headers: response.headers, body: response.body,
                    attempts: attempt, firstByteLatency: clock.now - start, breaker: breaker)
            } catch let e as GatewayError {
                breaker.recordFailure()
                // Only a request that never reached the upstream is safe to send again: a
                // timeout may mean the upstream is already working on (and billing) it.
                if e.status == 502, e.body.code == "upstream_unreachable", attempt <= settings.maxRetries {
                    let delay = retryDelay(attempt: attempt, retryAfter: nil)
                    if clock.now + delay < start + settings.totalTimeout {
                        try await Task.sleep(for: delay)
                        continue
                    }
                }
                throw e
            } catch {
                breaker.release()
                throw error
            }
        }
    }

    /// Statuses retried before any byte reached the client: the upstream refused the work
    /// (rate limit) or a proxy in front of it failed; none of them ran the request.
    public static let retryableStatuses: Set<Int> = [429, 502, 503, 504]

    private func retryDelay(attempt: Int, retryAfter: String?) -> Duration {
        if let retryAfter, let s = Double(retryAfter.trimmingCharacters(in: .whitespaces)), s >= 0, s <= 30 {
            return .milliseconds(Int(s * 1000))
        }
        // Exponential backoff with full jitter.
        let cap = settings.retryBaseDelay * (1 << min(attempt - 1, 6))
        let ms = Double(cap.nanoseconds) / 1e6
        return .milliseconds(Int(Double.random(in: 0.5...1.0) * ms))
    }

    /// Waits for the response head at most `firstByteTimeout` (and never past `deadline`).
    /// AsyncHTTPClient's deadline covers exactly that wait (it is cancelled once the head
    /// arrives), so the earlier of the two is handed to it: no extra task or timer per request.
    private func executeWithFirstByteTimeout(_ request: HTTPClientRequest, deadline: NIODeadline) async throws -> HTTPClientResponse {
        let firstByteDeadline = NIODeadline.now() + .nanoseconds(settings.firstByteTimeout.nanoseconds)
        let firstByteFirst = firstByteDeadline < deadline
        do {
            return try await http.current.execute(request, deadline: firstByteFirst ? firstByteDeadline : deadline, logger: requestLogger)
        } catch let e as HTTPClientError where firstByteFirst && e == .deadlineExceeded {
            throw GatewayError.upstreamTimeout("first byte")
        } catch let e as GatewayError {
            throw e
        } catch {
            throw Self.mapError(error)
        }
    }

    /// Maps transport errors to the status the client sees: unreachable 502, timeouts 504.
    public static func mapError(_ error: any Error) -> any Error {
        if error is CancellationError { return error }
        if let e = error as? GatewayError { return e }
        if error is HTTPParserError {
            // The connection closed (or sent garbage) in the middle of a response: the upstream
            // got the request, so this is a bad response, not an unreachable upstream.
            return GatewayError.upstreamBadResponse("the connection was closed in the middle of the response (\(error))")
        }
        if let e = error as? HTTPClientError {
            switch e {
            case .deadlineExceeded: return GatewayError.upstreamTimeout("total")
            case .readTimeout: return GatewayError.upstreamTimeout("idle")
            case .connectTimeout, .getConnectionFromPoolTimeout: return GatewayError.upstreamTimeout("connect")
            case .cancelled: return CancellationError()
            case .remoteConnectionClosed: return GatewayError.upstreamBadResponse("the connection was closed early")
            default: return GatewayError.upstreamUnreachable("\(e)")
            }
        }
        return GatewayError.upstreamUnreachable("\(error)")
    }

    // MARK: Chat completions for the collaboration loop and rollouts.

    public struct ChatAnswer: Sendable {
        public var text: String
        public var usage: Usage?
        public var finishReason: String?
        public var latency: Duration
        public var status: Int
        public var requestJSON: String
        public var responseJSON: String
    }

    /// One non-streaming chat completion. Non-2xx answers throw an `UpstreamStatusError` with
    /// the upstream's status and body. `headers` are extra request headers (the client's
    /// forwarded allow-list); `forwardedAuthorization` replaces the gateway's own key.
    public func chat(
        model: String, messages: [ChatMessage], parameters: UpstreamChatParameters,
        headers extra: [(String, String)] = [], forwardedAuthorization: String? = nil
    ) async throws -> ChatAnswer {
        let json = try parameters.body(model: model, messages: messages)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        for (k, v) in extra { headers.add(name: k, value: v) }
        let clock = ContinuousClock()
        let start = clock.now
        let response = try await send(
            method: .POST, path: "/v1/chat/completions", headers: headers,
            body: ByteBuffer(bytes: json), forwardedAuthorization: forwardedAuthorization)
        let bytes: ByteBuffer
        do { bytes = try await response.collect(upTo: 32 << 20) } catch { throw Self.mapError(error) }
        guard (200..<300).contains(response.status) else {
            throw UpstreamStatusError(
                status: response.status, contentType: response.headers.first(name: "content-type") ?? "application/json",
                body: Array(bytes.readableBytesView))
        }
        guard let summary = UpstreamCompletionSummary.decode(bytes) else {
            breaker.recordFailure()
            throw GatewayError.upstreamBadResponse("the chat completion was not valid JSON")
        }
        return ChatAnswer(
            text: summary.text ?? "", usage: summary.usage, finishReason: summary.finishReason,
            latency: clock.now - start, status: response.status,
            requestJSON: String(decoding: json, as: UTF8.self), responseJSON: String(buffer: bytes))
    }

    /// `chat` with the three parameters the trainer's tools set.
    public func chat(
        model: String, messages: [ChatMessage], temperature: Double? = nil,
        maxTokens: Int? = nil, stop: [String]? = nil
    ) async throws -> ChatAnswer {
        try await chat(
            model: model, messages: messages,
            parameters: UpstreamChatParameters(temperature: temperature, stop: (stop?.isEmpty ?? true) ? nil : stop, maxTokens: maxTokens))
    }
}

extension Duration {
    public var nanoseconds: Int64 {
        let (s, a) = components
        return s * 1_000_000_000 + a / 1_000_000_000
    }
    public var milliseconds: Double { Double(nanoseconds) / 1e6 }
}
