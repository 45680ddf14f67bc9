import ArgumentParser
import AsyncHTTPClient
import Foundation
import GatewayServer
import Hummingbird
import Logging
import NIOCore
import OpenAIWire

/// `gateway-bench null-proxy`: the least an HTTP proxy built on the gateway's stack can do.
/// Hummingbird receives the request, AsyncHTTPClient (configured as the gateway configures it)
/// sends the same bytes upstream, and the collected answer goes back. No parsing, no routing,
/// no log. `proxy` measures it beside the gateway: what it adds over direct is the cost of one
/// more server hop and one more client hop on this machine, which no gateway on this stack can
/// go below; what the gateway adds over it is the gateway's own work.
struct NullProxyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "null-proxy",
        abstract: "Serve a do-nothing Hummingbird + AsyncHTTPClient proxy to an upstream until stdin closes.")

    @Option(help: "The upstream's port on 127.0.0.1.")
    var upstreamPort: Int

    func run() async throws {
        GatewayRuntime.useEventLoopsAsGlobalExecutor()
        var config = HTTPClient.Configuration()
        config.connectionPool = .init(idleTimeout: .seconds(60))
        config.decompression = .disabled
        config.redirectConfiguration = .disallow
        config.tracing.tracer = nil
        // As the gateway does: a request's upstream exchange stays on its event loop.
        let clients = EventLoopHTTPClients(configuration: config, maxConnections: 1024)
        let quiet = Logger(label: "null-proxy", factory: { _ in SwiftLogNoOpLogHandler() })
        let target = "http://127.0.0.1:\(upstreamPort)"
        let router = Router()
        router.post("/v1/chat/completions") { request, context -> Response in
            var request = request
            let body = try await request.collectBody(upTo: 8 << 20)
            var upstream = HTTPClientRequest(url: target + "/v1/chat/completions")
            upstream.method = .POST
            upstream.headers.add(name: "content-type", value: "application/json")
            upstream.body = .bytes(body)
            let response = try await clients.current.execute(upstream, deadline: .now() + .seconds(30), logger: quiet)
            let bytes = try await response.body.collect(upTo: 64 << 20)
            return Response(
                status: .init(code: Int(response.status.code)), headers: [.contentType: "application/json"],
                body: .init(byteBuffer: bytes))
        }
        let (portStream, portCont) = AsyncStream<Int>.makeStream()
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: nil),
            onServerRunning: { channel in
                portCont.yield(channel.localAddress?.port ?? 0)
                portCont.finish()
            }, logger: quiet)
        let server = Task { try await app.run() }
        for await port in portStream {
            FileHandle.standardOutput.write(Data("null-proxy listening on port \(port)\n".utf8))
        }
        await waitForStandardInputToClose()
        server.cancel()
        _ = try? await server.value
        try await clients.shutdown()
    }
}

/// Returns once this process's stdin reaches end of file (the parent closed it or exited).
func waitForStandardInputToClose() async {
    await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
        Thread.detachNewThread {
            _ = FileHandle.standardInput.readDataToEndOfFile()
            cont.resume()
        }
    }
}
