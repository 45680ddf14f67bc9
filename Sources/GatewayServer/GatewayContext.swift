import HTTPTypes
import Hummingbird
import NIOCore
import TrafficLog

/// Per-request state: the episode id every response carries, and the arrival time from which
/// latencies are measured.
public struct GatewayContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let episodeID: String
    public let start: ContinuousClock.Instant
    /// The client key's id, set by `AuthMiddleware` (nil when no key was presented and none is
    /// required).
    public internal(set) var keyID: String?
    /// The connection, to notice a client that gave up (see `ClientGoneWatcher`).
    let channel: any Channel

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
        episodeID = UUIDv7.generate()
        start = ContinuousClock.now
    }
}
