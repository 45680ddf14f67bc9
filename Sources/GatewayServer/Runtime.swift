import NIOCore
import NIOPosix

/// Process-wide runtime setup for the gateway binary.
public enum GatewayRuntime {
    nonisolated(unsafe) private static var installed: Bool?

    /// Runs Swift concurrency's global executor on NIO's event loops (`MultiThreadedEventLoopGroup.singleton`,
    /// which Hummingbird and the upstream client already use). Without it every request hops between the
    /// event loops and the cooperative pool at each await: server read, handler, upstream write, upstream
    /// read, handler, server write. On 2 cores that cost about 15% of the CPU per proxied request.
    ///
    /// Anything that blocks (loading a checkpoint, a synchronous SQLite write) must then run on
    /// `NIOThreadPool.singleton`, never inline in a handler; the policy model has its own threads.
    /// Call once, first thing in `main`, before other concurrency work starts. Returns whether the hook is in
    /// place (false on platforms NIO does not support it on).
    @discardableResult
    public static func useEventLoopsAsGlobalExecutor() -> Bool {
        if let installed { return installed }
        let ok = NIOSingletons.unsafeTryInstallSingletonPosixEventLoopGroupAsConcurrencyGlobalExecutor()
        installed = ok
        return ok
    }
}
