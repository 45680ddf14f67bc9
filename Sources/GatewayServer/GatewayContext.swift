import HTTPTypes
import Hummingbird
import TrafficLog

/// Per-request state: the episode id every response carries, and the arrival time from which
/// latencies are measured.
public struct GatewayContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let episodeID: String
    public let start: ContinuousClock.Instant

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        episodeID = UUIDv7.generate()
        start = ContinuousClock.now
    }
}
