import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import OpenAIWire
import TrafficLog

/// Building responses and finishing episodes: shared by every route, owned by none.
enum Replies {
    /// The OpenAI-shaped error response.
    static func error(_ e: GatewayError, episodeID: String) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        headers[.gatewayEpisodeID] = episodeID
        for (k, v) in e.headers { if let n = HTTPField.Name(k) { headers[n] = v } }
        return Response(status: .init(code: e.status), headers: headers, body: .init(byteBuffer: ByteBuffer(data: e.encoded())))
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok, context: GatewayContext) throws -> Response {
        let data = try JSONEncoder.wire.encode(value)
        var headers: HTTPFields = [.contentType: "application/json"]
        headers[.gatewayEpisodeID] = context.episodeID
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(data: data)))
    }

    /// Milliseconds with three decimals, as `String(format: "%.3f")` but without the
    /// Foundation formatter (a few microseconds per call on the request path).
    static func format(_ ms: Double) -> String {
        let v = max(0, ms)
        guard v < 1e12 else { return String(format: "%.3f", v) }
        let thousandths = Int((v * 1000).rounded())
        let frac = thousandths % 1000
        let pad = frac < 10 ? "00" : frac < 100 ? "0" : ""
        return "\(thousandths / 1000).\(pad)\(frac)"
    }

    /// Sets total and overhead times (overhead: total minus upstream time); returns the overhead.
    @discardableResult
    static func finishTiming(_ episode: inout EpisodeRecord, context: GatewayContext) -> Double {
        episode.totalMs = ContinuousClock.now.ms(since: context.start)
        let overhead = max(0, episode.totalMs - (episode.upstreamMs ?? 0))
        episode.overheadMs = overhead
        return overhead
    }

    /// Reads the whole request body, or fails with 413 past the limit.
    static func collectBody(_ request: inout Request, limit: Int) async throws -> ByteBuffer {
        do {
            return try await request.collectBody(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw GatewayError.bodyTooLarge(limit: limit)
        } catch let e as HTTPError where e.status == .contentTooLarge {
            throw GatewayError.bodyTooLarge(limit: limit)
        }
    }
}

extension GatewayState {
    /// Logs a failed episode and builds the OpenAI-shaped error response.
    func fail(_ e: GatewayError, episode: inout EpisodeRecord, context: GatewayContext) async -> Response {
        episode.status = e.status
        episode.error = e.body.message
        if episode.outcome == nil { episode.outcome = e.status >= 500 ? Outcome.error.label : Outcome.rejected.label }
        let overhead = Replies.finishTiming(&episode, context: context)
        await record(episode)
        var response = Replies.error(e, episodeID: episode.id)
        response.headers[.gatewayOverheadMs] = Replies.format(overhead)
        BufferedBodyMark.markBuffered()
        return response
    }
}

extension HTTPField.Name {
    static let gatewayEpisodeID = HTTPField.Name("x-gateway-episode-id")!
    static let gatewayEpisodeIDs = HTTPField.Name("x-gateway-episode-ids")!
    static let gatewayOverheadMs = HTTPField.Name("x-gateway-overhead-ms")!
    static let gatewayPolicyMs = HTTPField.Name("x-gateway-policy-ms")!
    static let gatewayUpstreamMs = HTTPField.Name("x-gateway-upstream-ms")!
    static let gatewayUnsupported = HTTPField.Name("x-gateway-unsupported")!
    static let gatewayMode = HTTPField.Name("x-gateway-mode")!
    static let gatewayTrace = HTTPField.Name("x-gateway-trace")!
}

/// The outcome of an episode, as the log's `outcome` column spells it.
enum Outcome: Sendable, Equatable {
    /// Passthrough: the upstream answered (any status it chose is relayed).
    case ok
    case rejected
    case error
    case upstreamError
    case upstreamTimeout
    case upstreamTruncated
    case upstreamBadResponse
    case clientDisconnected
    /// Collaboration: the policy answered.
    case answer
    case noAnswer
    case emptyAnswer
    case policyError
    case policyTimeout
    /// Collaboration fell back; `reason` is the outcome that caused it.
    case fallbackLastUpstream(reason: Reason)
    case fallbackDirect(reason: Reason, failed: Bool = false)
    case fallbackPassthrough(reason: Reason, failed: Bool = false)

    enum Reason: String, Sendable {
        case noAnswer = "no_answer"
        case emptyAnswer = "empty_answer"
        case policyError = "policy_error"
        case policyTimeout = "policy_timeout"
    }

    var label: String {
        switch self {
        case .ok: "ok"
        case .rejected: "rejected"
        case .error: "error"
        case .upstreamError: "upstream_error"
        case .upstreamTimeout: "upstream_timeout"
        case .upstreamTruncated: "upstream_truncated"
        case .upstreamBadResponse: "upstream_bad_response"
        case .clientDisconnected: "client_disconnected"
        case .answer: "answer"
        case .noAnswer: "no_answer"
        case .emptyAnswer: "empty_answer"
        case .policyError: "policy_error"
        case .policyTimeout: "policy_timeout"
        case .fallbackLastUpstream(let r): "fallback_last_upstream(\(r.rawValue))"
        case .fallbackDirect(let r, let failed): "fallback_direct(\(r.rawValue))" + (failed ? "_failed" : "")
        case .fallbackPassthrough(let r, let failed): "fallback_passthrough(\(r.rawValue))" + (failed ? "_failed" : "")
        }
    }
}
