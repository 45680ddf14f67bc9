import ArgumentParser
import AsyncHTTPClient
import FakeUpstream
import Foundation
import GatewayServer
import Logging
import NIOCore
import NIOPosix
#if canImport(Glibc)
import Glibc
#endif

/// Same load directly against a fast fake upstream and through the gateway; the difference is
/// what the gateway adds.
struct ProxyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Added latency and throughput of passthrough, against the direct upstream as baseline.")

    @Option(help: "Comma-separated concurrency levels.")
    var concurrency: String = "1,16,64"

    @Option(help: "Seconds per level and target.")
    var seconds: Double = 5

    @Flag(help: "Use streaming requests.")
    var stream = false

    @Option(help: "Log durability: commit_before_response or async.")
    var durability: String = "commit_before_response"

    @Option(help: "Event-loop threads of the load generator's own HTTP client (0 = share the process-wide group with the servers).")
    var clientThreads: Int = 0

    @Option(help: "Profiling mode: send this many requests at the first concurrency level to one target only (no table), then exit.")
    var profile: Int?

    @Option(help: "Target of --profile: gateway or direct.")
    var profileTarget: String = "gateway"

    @Flag(inversion: .prefixedNo, help: "Run Swift concurrency on NIO's event loops, as the gateway binary does (the load generator shares them).")
    var eventLoopExecutor = true

    func run() async throws {
        if eventLoopExecutor { GatewayRuntime.useEventLoopsAsGlobalExecutor() }
        let upstream = try await FakeUpstream(recordRequests: false)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var config = GatewayConfig()
        config.server.port = 0
        config.upstream.baseURL = upstream.baseURL
        config.upstream.apiKeyEnv = nil
        config.upstream.maxConnections = 512
        config.limits.maxConcurrentRequests = 4096
        config.log.path = dir.appendingPathComponent("traffic.sqlite").path
        config.log.durability = durability
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let gateway = try Gateway(config: config, environment: [:], logger: logger)
        let runTask = Task { try await gateway.run(gracefulShutdownSignals: []) }
        let port = await gateway.waitForPort()

        let levels = concurrency.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        var clientConfig = HTTPClient.Configuration()
        clientConfig.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: (levels.max() ?? 1) + 8)
        let clientGroup: MultiThreadedEventLoopGroup? = clientThreads > 0 ? MultiThreadedEventLoopGroup(numberOfThreads: clientThreads) : nil
        let client = HTTPClient(eventLoopGroup: clientGroup ?? HTTPClient.defaultEventLoopGroup, configuration: clientConfig)
        let body = #"{"model":"gpt-4o-mini","stream":\#(stream),"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is the capital of France? Answer in one word."}]}"#

        if let profile {
            let c = levels.first ?? 1
            let target = profileTarget == "direct" ? upstream.port : port
            let url = "http://127.0.0.1:\(target)/v1/chat/completions"
            _ = try await load(client: client, url: url, body: body, concurrency: c, seconds: 0.3)
            let r = try await load(client: client, url: url, body: body, concurrency: c, requests: profile)
            print("profile \(profileTarget) c=\(c): \(r.count) requests, \(f1(r.rps)) req/s, p50 \(f3(r.p50)) ms, p99 \(f3(r.p99)) ms, cpu \(f1(r.cpuMicros)) us/req, errors \(r.errors)")
        } else {
        print("gateway-bench proxy: \(stream ? "stream" : "non-stream") chat completions, \(seconds) s per run, log durability \(durability)")
        print("direct = client -> fake upstream; gateway = client -> gateway -> fake upstream (logging on)")
        print("")
        print("swift concurrency on NIO event loops: \(eventLoopExecutor)")
        print("load generator: \(clientThreads > 0 ? "own event loop group, \(clientThreads) thread(s)" : "shared event loop group"); cpu = process CPU time per request (client + servers)")
        print("")
        print(pad("conc", 5), pad("target", 8), pad("req/s", 9), pad("p50 ms", 9), pad("p99 ms", 9), pad("cpu us", 8), pad("errors", 7))
        for c in levels {
            // Warm both paths (connections, caches).
            _ = try await load(client: client, url: "http://127.0.0.1:\(upstream.port)/v1/chat/completions", body: body, concurrency: c, seconds: 0.5)
            _ = try await load(client: client, url: "http://127.0.0.1:\(port)/v1/chat/completions", body: body, concurrency: c, seconds: 0.5)
            let direct = try await load(client: client, url: "http://127.0.0.1:\(upstream.port)/v1/chat/completions", body: body, concurrency: c, seconds: seconds)
            let viaGateway = try await load(client: client, url: "http://127.0.0.1:\(port)/v1/chat/completions", body: body, concurrency: c, seconds: seconds)
            print(pad("\(c)", 5), pad("direct", 8), pad(f1(direct.rps), 9), pad(f3(direct.p50), 9), pad(f3(direct.p99), 9), pad(f1(direct.cpuMicros), 8), pad("\(direct.errors)", 7))
            print(pad("\(c)", 5), pad("gateway", 8), pad(f1(viaGateway.rps), 9), pad(f3(viaGateway.p50), 9), pad(f3(viaGateway.p99), 9), pad(f1(viaGateway.cpuMicros), 8), pad("\(viaGateway.errors)", 7))
            print(pad("\(c)", 5), pad("added", 8), pad(f1(viaGateway.rps - direct.rps), 9), pad(f3(viaGateway.p50 - direct.p50), 9),
                  pad(f3(viaGateway.p99 - direct.p99), 9), pad(f1(viaGateway.cpuMicros - direct.cpuMicros), 8),
                  "  throughput ratio gateway/direct \(String(format: "%.2f", viaGateway.rps / max(direct.rps, 1e-9)))")
        }
        }
        try await client.shutdown()
        try await clientGroup?.shutdownGracefully()
        let stats = gateway.state.writer.stats
        await gateway.shutdown()
        try await runTask.value
        await upstream.stop()
        let rows = try gateway.state.database.episodeCount()
        print("")
        print("traffic log: \(rows) episodes written in \(stats.batches) batches (\(String(format: "%.1f", Double(stats.rowsWritten) / Double(max(stats.batches, 1)))) per transaction)")
        try? FileManager.default.removeItem(at: dir)
    }

    struct Result { var rps: Double; var p50: Double; var p99: Double; var errors: Int; var count: Int; var cpuMicros: Double }

    /// Runs for `seconds`, or (with `requests`) until that many requests were sent in total.
    func load(client: HTTPClient, url: String, body: String, concurrency: Int, seconds: Double = .infinity,
              requests: Int? = nil) async throws -> Result {
        let clock = ContinuousClock()
        let cpuStart = processCPUSeconds()
        let start = clock.now
        let end = seconds.isFinite ? start + .milliseconds(Int(seconds * 1000)) : start + .seconds(86_400)
        let budget = RequestBudget(requests ?? Int.max)
        let payload = ByteBuffer(string: body)
        let results = await withTaskGroup(of: ([Double], Int).self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    var latencies: [Double] = []
                    latencies.reserveCapacity(4096)
                    var errors = 0
                    while clock.now < end, budget.take() {
                        var req = HTTPClientRequest(url: url)
                        req.method = .POST
                        req.headers.add(name: "content-type", value: "application/json")
                        req.body = .bytes(payload)
                        let t0 = clock.now
                        do {
                            let resp = try await client.execute(req, timeout: .seconds(30))
                            _ = try await resp.body.collect(upTo: 1 << 20)
                            if resp.status.code != 200 { errors += 1 }
                        } catch { errors += 1 }
                        latencies.append((clock.now - t0).milliseconds)
                    }
                    return (latencies, errors)
                }
            }
            var all: [Double] = []
            var errors = 0
            for await (l, e) in group { all += l; errors += e }
            return (all, errors)
        }
        let elapsed = (clock.now - start).milliseconds / 1000
        let cpu = processCPUSeconds() - cpuStart
        let sorted = results.0.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        return Result(rps: Double(sorted.count) / elapsed, p50: pct(0.5), p99: pct(0.99), errors: results.1,
                      count: sorted.count, cpuMicros: cpu * 1e6 / Double(max(sorted.count, 1)))
    }
}

/// A shared countdown of requests still to send (profiling mode).
final class RequestBudget: @unchecked Sendable {
    // `remaining` is guarded by `lock`.
    private let lock = NSLock()
    private var remaining: Int
    init(_ n: Int) { remaining = n }
    func take() -> Bool { lock.withLock { if remaining > 0 { remaining -= 1; return true }; return false } }
}

/// User + system CPU time of the whole process (load generator, fake upstream and gateway).
private func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return s(usage.ru_utime) + s(usage.ru_stime)
}

private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
private func f1(_ x: Double) -> String { String(format: "%.1f", x) }
private func f3(_ x: Double) -> String { String(format: "%.3f", x) }
