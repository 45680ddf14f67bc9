import Foundation

/// The body of every error response, in OpenAI's shape:
/// `{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}`.
public struct OpenAIErrorBody: Codable, Sendable, Equatable {
    public struct Detail: Codable, Sendable, Equatable {
        public var message: String
        public var type: String
        public var param: String?
        public var code: String?

        public init(message: String, type: String, param: String? = nil, code: String? = nil) {
            self.message = message
            self.type = type
            self.param = param
            self.code = code
        }

        // OpenAI always sends the four keys, with explicit nulls.
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(message, forKey: .message)
            try c.encode(type, forKey: .type)
            try c.encode(param, forKey: .param)
            try c.encode(code, forKey: .code)
        }
    }
    public var error: Detail
    public init(error: Detail) { self.error = error }
}

/// An error the gateway answers with: an HTTP status plus the OpenAI error body.
public struct GatewayError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: Int
    public var body: OpenAIErrorBody.Detail
    /// Extra response headers (e.g. Retry-After).
    public var headers: [(String, String)]

    public init(
        status: Int, message: String, type: String, param: String? = nil, code: String? = nil,
        headers: [(String, String)] = []
    ) {
        self.status = status
        self.body = .init(message: message, type: type, param: param, code: code)
        self.headers = headers
    }

    public var description: String { "\(status) \(body.type): \(body.message)" }

    public static func == (a: GatewayError, b: GatewayError) -> Bool {
        a.status == b.status && a.body == b.body && a.headers.map { "\($0.0)=\($0.1)" } == b.headers.map { "\($0.0)=\($0.1)" }
    }

    /// JSON bytes of the error body.
    public func encoded() -> Data {
        // Encoding a struct of strings cannot fail.
        (try? JSONEncoder.wire.encode(OpenAIErrorBody(error: body))) ?? Data()
    }

    // MARK: The catalogue of errors the gateway produces.

    public static func invalidJSON(_ detail: String) -> GatewayError {
        .init(
            status: 400, message: "We could not parse the JSON body of your request. (\(detail))",
            type: "invalid_request_error", code: "invalid_json")
    }
    public static func invalidField(_ param: String, _ message: String) -> GatewayError {
        .init(status: 400, message: message, type: "invalid_request_error", param: param, code: "invalid_value")
    }
    public static func missingField(_ param: String) -> GatewayError {
        .init(
            status: 400, message: "Missing required parameter: '\(param)'.", type: "invalid_request_error",
            param: param, code: "missing_required_parameter")
    }
    public static func notFound(method: String, path: String) -> GatewayError {
        .init(status: 404, message: "Invalid URL (\(method) \(path))", type: "invalid_request_error", code: "unknown_url")
    }
    public static func methodNotAllowed(method: String, path: String) -> GatewayError {
        .init(
            status: 405, message: "Method \(method) is not allowed on \(path).", type: "invalid_request_error",
            code: "method_not_allowed")
    }
    public static func bodyTooLarge(limit: Int) -> GatewayError {
        .init(
            status: 413, message: "Request body is larger than the gateway's limit of \(limit) bytes.",
            type: "invalid_request_error", code: "request_too_large")
    }
    public static func unauthorized(_ message: String = "Incorrect API key provided. Send a valid key as 'Authorization: Bearer <key>'.")
        -> GatewayError
    {
        .init(status: 401, message: message, type: "invalid_request_error", code: "invalid_api_key")
    }
    public static func upstreamUnreachable(_ detail: String) -> GatewayError {
        .init(
            status: 502, message: "The upstream LLM could not be reached: \(detail)", type: "upstream_error",
            code: "upstream_unreachable")
    }
    public static func upstreamBadResponse(_ detail: String) -> GatewayError {
        .init(
            status: 502, message: "The upstream LLM sent an invalid response: \(detail)", type: "upstream_error",
            code: "upstream_bad_response")
    }
    public static func upstreamTimeout(_ which: String) -> GatewayError {
        .init(
            status: 504, message: "The upstream LLM did not answer in time (\(which) timeout).", type: "upstream_error",
            code: "upstream_timeout")
    }
    public static func upstreamCircuitOpen(retryAfterSeconds: Int) -> GatewayError {
        .init(
            status: 503,
            message:
                "The upstream LLM is failing; the gateway stopped sending it requests for a while (circuit breaker open). Retry after \(retryAfterSeconds) s.",
            type: "upstream_error", code: "upstream_circuit_open", headers: [("Retry-After", String(retryAfterSeconds))])
    }
    public static func overloaded(retryAfterSeconds: Int, _ what: String) -> GatewayError {
        .init(
            status: 429, message: "The gateway is at capacity (\(what)). Retry after \(retryAfterSeconds) s.",
            type: "rate_limit_error", code: "gateway_overloaded", headers: [("Retry-After", String(retryAfterSeconds))])
    }
    public static func policyUnavailable(model: String) -> GatewayError {
        .init(
            status: 503,
            message: "The model '\(model)' is routed to Prompt-R1 collaboration, but no policy model is loaded. "
                + "Start the gateway with `gateway serve --policy DIR` (or set policy.path in gateway.json), "
                + "or load one at run time with POST /admin/policy {\"path\": ...}.",
            type: "service_unavailable", code: "policy_not_loaded")
    }
    public static func internalError(_ detail: String) -> GatewayError {
        .init(status: 500, message: "Internal gateway error: \(detail)", type: "server_error", code: "internal_error")
    }
}

extension JSONEncoder {
    /// The encoder for everything the gateway writes on the wire: compact, stable key order as
    /// declared, no escaped slashes.
    public static var wire: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.withoutEscapingSlashes]
        return e
    }
}
