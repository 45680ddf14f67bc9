import Hummingbird
import OpenAIWire

/// Client authentication for everything under `/v1`: checks the bearer key against the
/// configured client keys and puts its id in the request context, where handlers, the log and
/// feedback scoping read it. A refused key never reaches a handler (401, not logged: nothing
/// was accepted).
struct AuthMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let state: GatewayState

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        context.keyID = try state.auth.authenticate(authorization: request.headers[.authorization])
        return try await next(request, context)
    }
}
