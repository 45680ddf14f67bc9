import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Tells long-running handlers when their client went away. The server accepts half-closed
/// connections, so a client that gives up shows first as "input closed" (its FIN), not as a
/// closed channel: this handler, added to every HTTP/1 connection, records that moment per
/// channel so a collaboration episode nobody will read can be cancelled.
final class ClientGoneWatcher: ChannelInboundHandler, RemovableChannelHandler, Sendable {
    typealias InboundIn = NIOAny

    /// Channels whose client has closed its side, with callbacks waiting for that.
    static let registry = NIOLockedValueBox<[ObjectIdentifier: Entry]>([:])

    struct Entry {
        var gone = false
        var callbacks: [@Sendable () -> Void] = []
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let id = ObjectIdentifier(context.channel)
        Self.registry.withLockedValue { $0[id] = Entry() }
        context.channel.closeFuture.whenComplete { _ in
            let callbacks = Self.registry.withLockedValue { $0.removeValue(forKey: id)?.callbacks ?? [] }
            for c in callbacks { c() }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let e = event as? ChannelEvent, e == .inputClosed {
            let id = ObjectIdentifier(context.channel)
            let callbacks: [@Sendable () -> Void] = Self.registry.withLockedValue {
                guard var entry = $0[id] else { return [] }
                entry.gone = true
                let c = entry.callbacks
                entry.callbacks = []
                $0[id] = entry
                return c
            }
            for c in callbacks { c() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Calls `action` once the client of `channel` has gone (immediately if it already has).
    static func onClientGone(_ channel: any Channel, _ action: @escaping @Sendable () -> Void) {
        let id = ObjectIdentifier(channel)
        let now: Bool = registry.withLockedValue {
            guard var entry = $0[id] else { return true }
            if entry.gone { return true }
            entry.callbacks.append(action)
            $0[id] = entry
            return false
        }
        if now { action() }
    }
}
