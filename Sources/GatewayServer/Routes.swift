import Hummingbird

/// The `/v1` model routes: intake, then a plain branch on the mode.
struct ModelRoutes: Sendable {
    let intake: Intake
    let passthrough: Passthrough
    let collaboration: CollaborationRoute

    func handle(_ request: Request, _ context: GatewayContext, _ endpoint: Incoming.Endpoint) async throws -> Response {
        let incoming: Incoming
        switch await intake.read(request, context, endpoint) {
        case .rejected(let response): return response
        case .accepted(let i): incoming = i
        }
        switch incoming.mode {
        case .passthrough: return await passthrough.forward(incoming, context)
        case .collaborate: return await collaboration.respond(incoming, context)
        }
    }

    /// Registers the endpoints on the `/v1` group (paths relative to it).
    func register(on v1: some RouterMethods<GatewayContext>) {
        for endpoint in Incoming.Endpoint.allCases {
            v1.post(RouterPath(String(endpoint.rawValue.dropFirst("/v1/".count)))) { req, ctx in try await handle(req, ctx, endpoint) }
        }
    }
}
