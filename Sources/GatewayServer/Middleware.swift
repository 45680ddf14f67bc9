import Foundation
import HTTPTypes
import Hummingbird
import OpenAIWire

/// The outermost layer of every request: the concurrency limit (429 with Retry-After when the
/// queue wait runs out), and errors turned into OpenAI-shaped responses. Every response leaves
/// with `x-gateway-episode-id` and `x-gateway-overhead-ms`.
struct GatewayMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let state: GatewayState

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let limits = state.config.limits
        guard let permit = await state.limiter.permit(timeout: .milliseconds(limits.queueTimeoutMs)) else {
            let e = GatewayError.overloaded(retryAfterSeconds: 1, "\(state.limiter.capacity) requests in flight")
            return finish(Replies.error(e, episodeID: context.episodeID), context)
        }
        var response: Response
        let mark = BufferedBodyMark()
        do {
            response = try await BufferedBodyMark.$current.withValue(mark) { try await next(request, context) }
        } catch {
            permit.release()
            return finish(Replies.error(Self.gatewayError(error, request), episodeID: context.episodeID), context)
        }
        if mark.isBuffered {
            // The work is done and the body is in memory: free the slot now and leave the body
            // as it is, so Hummingbird writes head, body and end in one batched write.
            permit.release()
            return finish(response, context)
        }
        // Hold the slot until the body is written (a stream can outlive the handler). Wrapping
        // the body makes it a closure body, which Hummingbird writes in three steps. Should the
        // head fail to go out, the body is never written and the permit is released when the
        // response is dropped.
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            defer { permit.release() }
            try await body.write(writer)
        }
        return finish(response, context)
    }

    func finish(_ response: Response, _ context: Context) -> Response {
        var response = response
        if response.headers[.gatewayEpisodeID] == nil { response.headers[.gatewayEpisodeID] = context.episodeID }
        if response.headers[.gatewayOverheadMs] == nil {
            response.headers[.gatewayOverheadMs] = Replies.format(ContinuousClock.now.ms(since: context.start))
        }
        return response
    }

    static func gatewayError(_ error: any Error, _ request: Request) -> GatewayError {
        switch error {
        case let e as GatewayError: return e
        case let e as HTTPError:
            switch e.status {
            case .notFound: return .notFound(method: request.method.rawValue, path: request.uri.path)
            case .methodNotAllowed: return .methodNotAllowed(method: request.method.rawValue, path: request.uri.path)
            case .contentTooLarge: return .bodyTooLarge(limit: -1)
            default:
                return GatewayError(
                    status: Int(e.status.code), message: e.body ?? e.status.reasonPhrase,
                    type: e.status.code < 500 ? "invalid_request_error" : "server_error")
            }
        case is CancellationError:
            return GatewayError(status: 499, message: "The request was cancelled.", type: "invalid_request_error", code: "cancelled")
        default:
            return .internalError(String(describing: type(of: error)))
        }
    }
}

/// Lets a handler tell `GatewayMiddleware` that the response it returns has its whole body in
/// memory (`ResponseBody(byteBuffer:)`), so the concurrency slot need not be held while it is
/// written. The middleware binds a fresh mark around each handler call; a mark set anywhere
/// else (no binding, e.g. inside a streaming body) has no effect.
final class BufferedBodyMark: @unchecked Sendable {
    // Only touched by the request's own task: set by the handler, which runs inside the
    // middleware's `next` call on that task, and read by the middleware after `next` returned.
    private(set) var isBuffered = false

    @TaskLocal static var current: BufferedBodyMark?

    /// Call right before returning a response whose body is a byte buffer.
    static func markBuffered() { current?.isBuffered = true }
}
