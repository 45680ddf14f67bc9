import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import OpenAIWire
import TrafficLog

/// A `/v1` request that carries a `model`, read, validated and routed: what every model route
/// works from, passthrough and collaboration alike.
struct Incoming: Sendable {
    /// The endpoints whose requests carry a `model` and go through the intake.
    enum Endpoint: String, Sendable, CaseIterable {
        case chatCompletions = "/v1/chat/completions"
        case completions = "/v1/completions"
        case responses = "/v1/responses"
        case embeddings = "/v1/embeddings"
    }

    var endpoint: Endpoint
    /// The body as received.
    var bytes: [UInt8]
    var members: [JSONScanner.Member]
    var model: String
    var isStream: Bool
    /// Set for `/v1/chat/completions`.
    var chat: ChatCompletionRequest?
    /// Set for `/v1/responses`.
    var responses: ResponsesRequest?
    var mode: GatewayConfig.Mode
    var upstreamModel: String
    /// Why a request for a collaboration route is served as passthrough (nil: it is not).
    var unsupported: Unsupported?
    /// The client headers of the configured allow-list (`upstream.forward_headers`), sent with
    /// every upstream request this request causes, in either mode.
    var forwardedHeaders: [(String, String)]
    /// The client's W3C trace context (`traceparent`, `tracestate`), sent on when tracing is off.
    var traceContext: [(String, String)] = []
    /// The client's content type and accept, for a passthrough forward of its body.
    var contentType: String
    var accept: String
    /// The client's own Authorization, when the config forwards it upstream.
    var forwardedAuthorization: String?
    /// The client asked for the collaboration trace (`x-gateway-trace: 1`).
    var traceRequested: Bool
    /// The log row, filled as the request goes.
    var episode: EpisodeRecord

    var keyID: String? { episode.keyID }

    /// The body with its top-level "model" value replaced by the upstream model (all other
    /// bytes untouched).
    var upstreamBody: [UInt8] {
        guard upstreamModel != model, let m = members.member(named: "model") else { return bytes }
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count + upstreamModel.utf8.count)
        out.append(contentsOf: bytes[..<m.valueRange.lowerBound])
        out.append(contentsOf: (try? JSONEncoder.wire.encode(upstreamModel)) ?? Data())
        out.append(contentsOf: bytes[m.valueRange.upperBound...])
        return out
    }

    /// Headers of a passthrough forward: content type, accept, and the allow-list.
    var upstreamHTTPHeaders: HTTPHeaders {
        var h = HTTPHeaders()
        h.add(name: "content-type", value: contentType)
        h.add(name: "accept", value: accept)
        for (k, v) in forwardedHeaders { h.add(name: k, value: v) }
        return h
    }
}

/// Something in a request that the collaboration loop cannot honour.
struct Unsupported: Sendable, Equatable {
    /// The request field, as an OpenAI error's `param` names it (`tools`, `messages[2].content[1]`).
    var param: String
    var reason: String
}

/// The single intake of every model route: body, JSON, validation, routing. What it rejects
/// after authentication is logged (authentication itself is `AuthMiddleware`).
struct Intake: Sendable {
    let state: GatewayState

    enum Result {
        case accepted(Incoming)
        /// The error response, already logged.
        case rejected(Response)
    }

    func read(_ request: Request, _ context: GatewayContext, _ endpoint: Incoming.Endpoint) async -> Result {
        let config = state.config
        var episode = EpisodeRecord(id: context.episodeID, route: endpoint.rawValue, mode: GatewayConfig.Mode.passthrough.rawValue)
        episode.keyID = context.keyID
        do {
            var request = request
            let buffer = try await Replies.collectBody(&request, limit: config.limits.maxBodyBytes)
            let bytes = Array(buffer.readableBytesView)
            episode.requestJSON = state.loggedRequest(bytes)
            let members: [JSONScanner.Member]
            do { members = try state.scanner.scanObject(bytes) } catch { throw GatewayError.invalidJSON(error.description) }
            var chat: ChatCompletionRequest?
            var responses: ResponsesRequest?
            let model: String
            let isStream: Bool
            switch endpoint {
            case .chatCompletions:
                let c = try ChatCompletionRequest.decode(validated: bytes)
                model = c.model
                isStream = c.isStream
                chat = c
            case .responses:
                let r = try ResponsesRequest.decode(bytes)
                model = r.model
                isStream = r.isStream
                responses = r
            case .completions, .embeddings:
                (model, isStream) = try Self.modelAndStream(bytes, members)
            }
            episode.requestedModel = model
            episode.stream = isStream
            var (mode, upstreamModel) = config.route(forModel: model)
            if let header = request.headers[.gatewayMode] {
                guard config.allowModeHeader else {
                    throw GatewayError.invalidField(
                        "x-gateway-mode", "The x-gateway-mode header is disabled by this gateway's configuration.")
                }
                guard let m = GatewayConfig.Mode(rawValue: header.lowercased()) else {
                    throw GatewayError.invalidField(
                        "x-gateway-mode", "x-gateway-mode must be 'passthrough' or 'collaborate', got '\(header.prefix(40))'.")
                }
                mode = m
            }
            var incoming = Incoming(
                endpoint: endpoint, bytes: bytes, members: members, model: model, isStream: isStream,
                chat: chat, responses: responses, mode: mode, upstreamModel: upstreamModel, unsupported: nil,
                forwardedHeaders: Self.forwardedHeaders(request, config),
                contentType: request.headers[.contentType] ?? "application/json", accept: request.headers[.accept] ?? "*/*",
                forwardedAuthorization: forwardedAuthorization(request, config),
                traceRequested: ["1", "true", "on"].contains(request.headers[.gatewayTrace]?.lowercased() ?? ""),
                episode: episode)
            incoming.traceContext = TraceHeaders.client(request)
            if mode == .collaborate, let problem = CollaborationSupport.unsupported(incoming) {
                switch config.policy.unsupportedRequest {
                case .error:
                    throw GatewayError(
                        status: 400,
                        message:
                            "This collaboration route (\(model.prefix(100))) cannot honour '\(problem.param)': \(problem.reason). Use the upstream model directly, or the x-gateway-mode: passthrough header.",
                        type: "invalid_request_error", param: problem.param, code: "unsupported_on_collaboration_route")
                case .passthrough:
                    incoming.mode = .passthrough
                    incoming.unsupported = problem
                }
            }
            incoming.episode.mode = incoming.mode.rawValue
            incoming.episode.upstreamModel = upstreamModel
            if let u = incoming.unsupported { incoming.episode.error = "served as passthrough: \(u.param): \(u.reason)" }
            return .accepted(incoming)
        } catch {
            let e = (error as? GatewayError) ?? GatewayMiddleware.gatewayError(error, request)
            return .rejected(await state.fail(e, episode: &episode, context: context))
        }
    }

    /// `model` (required, a non-empty string) and `stream` of a body the scanner accepted.
    static func modelAndStream(_ bytes: [UInt8], _ members: [JSONScanner.Member]) throws(GatewayError) -> (String, Bool) {
        guard let m = members.member(named: "model") else { throw .missingField("model") }
        guard m.valueKind == .string,
            let model = (try? JSONSerialization.jsonObject(with: Data(bytes[m.valueRange]), options: [.fragmentsAllowed])) as? String,
            !model.isEmpty
        else {
            throw .invalidField("model", "'model' must be a non-empty string.")
        }
        var stream = false
        if let s = members.member(named: "stream"), s.valueKind != .null {
            guard s.valueKind == .bool else { throw .invalidField("stream", "Invalid type for 'stream': expected a boolean.") }
            stream = bytes[s.valueRange.lowerBound] == UInt8(ascii: "t")
        }
        return (model, stream)
    }

    /// The configured allow-list. Hop-by-hop headers and anything else the client sent stay here.
    static func forwardedHeaders(_ request: Request, _ config: GatewayConfig) -> [(String, String)] {
        var h: [(String, String)] = []
        for name in config.upstream.forwardHeaders {
            if let n = HTTPField.Name(name) {
                for v in request.headers[values: n] { h.append((name, v)) }
            }
        }
        return h
    }

    func forwardedAuthorization(_ request: Request, _ config: GatewayConfig) -> String? {
        guard config.upstream.forwardClientAuthorization, !state.auth.isEnabled else { return nil }
        return request.headers[.authorization]
    }
}
