import AsyncHTTPClient
import NIOCore
import NIOPosix

/// AsyncHTTPClient clients that keep a request's connection on the caller's event loop: one
/// client per event loop of the process-wide group, plus a shared one for callers on no event
/// loop (the trainer, tests). A server request runs on the loop of its client connection;
/// sending upstream through that loop's client keeps the whole exchange on one thread. With one
/// shared pool a request could lease an idle connection on another loop: the answer then woke
/// that loop, which handed the request back, two extra thread wake-ups per request.
public final class EventLoopHTTPClients: Sendable {
    private let shared: HTTPClient
    private let perLoop: [ObjectIdentifier: HTTPClient]

    /// `maxConnections` is split evenly between the loops' pools.
    public init(configuration: HTTPClient.Configuration, maxConnections: Int) {
        let group = HTTPClient.defaultEventLoopGroup
        var shared = configuration
        shared.connectionPool = .init(
            idleTimeout: configuration.connectionPool.idleTimeout,
            concurrentHTTP1ConnectionsPerHostSoftLimit: maxConnections)
        self.shared = HTTPClient(eventLoopGroup: group, configuration: shared)
        let loops = Array(group.makeIterator())
        var each = configuration
        each.connectionPool = .init(
            idleTimeout: configuration.connectionPool.idleTimeout,
            concurrentHTTP1ConnectionsPerHostSoftLimit: max(1, maxConnections / max(1, loops.count)))
        var perLoop: [ObjectIdentifier: HTTPClient] = [:]
        for loop in loops {
            perLoop[ObjectIdentifier(loop)] = HTTPClient(eventLoopGroup: loop, configuration: each)
        }
        self.perLoop = perLoop
    }

    /// The client whose connections live on the calling thread's event loop, if it is one.
    public var current: HTTPClient {
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop, let client = perLoop[ObjectIdentifier(loop)] {
            return client
        }
        return shared
    }

    public func shutdown() async throws {
        try await shared.shutdown()
        for client in perLoop.values { try await client.shutdown() }
    }
}
