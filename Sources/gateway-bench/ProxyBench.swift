import ArgumentParser
import AsyncHTTPClient
import FakeUpstream
import Foundation
import GatewayServer
import Logging
import NIOCore
import NIOPosix
import TrafficLog
import TrafficLogPostgres

#if canImport(Glibc)
    import Glibc
#endif

/// Same load directly against a fast fake upstream and through the gateway; the difference is
/// what the gateway adds.
///
/// By default the three parties run as they are deployed, each in its own process: the load
/// generator (this process), the fake upstream (`gateway-bench fake-upstream`, a child) and the
/// real `gateway` binary (a child, default config apart from ports and paths). Then "direct" pays
/// the same kind of cross-process hop the gateway does, and each process's CPU per request is
/// read from /proc. `--layout in-process` runs all three in this process on one event loop group
/// instead, which is what a single `perf record` of the gateway's code wants.
struct ProxyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "proxy",
        abstract: "Added latency and throughput of passthrough, against the direct upstream as baseline.")

    enum Layout: String, ExpressibleByArgument, CaseIterable {
        case processes
        case inProcess = "in-process"
    }

    @Option(
        help:
            "processes: load generator, fake upstream and the gateway binary each in its own process (as deployed); in-process: all three in this process."
    )
    var layout: Layout = .processes

    @Option(help: "Path of the gateway executable for --layout processes (default: next to this one).")
    var gateway: String?

    @Option(help: "Comma-separated concurrency levels.")
    var concurrency: String = "1,16,64"

    @Option(help: "Seconds per level and target.")
    var seconds: Double = 5

    @Flag(help: "Use streaming requests.")
    var stream = false

    @Option(help: "Log durability: async or commit_before_response (default: the gateway's default).")
    var durability: GatewayConfig.Durability = GatewayConfig().log.durability

    @Option(help: "The log writer's linger in ms (log.linger_ms; default: the gateway's default).")
    var lingerMs: Int = GatewayConfig().log.lingerMs

    @Option(
        name: .customLong("log-db"),
        help: "The gateway's traffic log: a postgres:// URL (use an empty database), or a SQLite path (default: a fresh temporary file).")
    var logDB: String?

    @Option(help: "Event-loop threads of the load generator's own HTTP client (0 = share the process-wide group).")
    var clientThreads: Int = 0

    @Option(help: "Profiling mode: send this many requests at the first concurrency level to one target only (no table), then exit.")
    var profile: Int?

    enum ProfileTarget: String, ExpressibleByArgument, CaseIterable {
        case gateway
        case nullProxy = "null-proxy"
        case direct
    }

    @Option(help: "Target of --profile: gateway, null-proxy or direct.")
    var profileTarget: ProfileTarget = .gateway

    @Flag(inversion: .prefixedNo, help: "Run Swift concurrency on NIO's event loops in this process, as the gateway binary does.")
    var eventLoopExecutor = true

    func run() async throws {
        if eventLoopExecutor { GatewayRuntime.useEventLoopsAsGlobalExecutor() }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-bench-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let parties: Parties
        let log = logDB ?? dir.appendingPathComponent("traffic.sqlite").path
        switch layout {
        case .processes:
            parties = try await ChildParties.start(
                gatewayPath: gateway, durability: durability, lingerMs: lingerMs, directory: dir, logDB: log)
        case .inProcess: parties = try await InProcessParties.start(durability: durability, lingerMs: lingerMs, directory: dir, logDB: log)
        }
        do {
            try await measure(parties)
        } catch {
            await parties.stop()
            throw error
        }
        let summary = await parties.stop()
        print("")
        print(summary)
    }

    func measure(_ parties: Parties) async throws {
        let levels = concurrency.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
        var clientConfig = HTTPClient.Configuration()
        clientConfig.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: (levels.max() ?? 1) + 8)
        let clientGroup: MultiThreadedEventLoopGroup? =
            clientThreads > 0 ? MultiThreadedEventLoopGroup(numberOfThreads: clientThreads) : nil
        let client = HTTPClient(eventLoopGroup: clientGroup ?? HTTPClient.defaultEventLoopGroup, configuration: clientConfig)
        do {
            try await measure(client: client, levels: levels, parties: parties)
        } catch {
            try? await client.shutdown()
            try? await clientGroup?.shutdownGracefully()
            throw error
        }
        try await client.shutdown()
        try await clientGroup?.shutdownGracefully()
    }

    func measure(client: HTTPClient, levels: [Int], parties: Parties) async throws {
        let body =
            #"{"model":"gpt-4o-mini","stream":\#(stream),"messages":[{"role":"system","content":"You are terse."},{"role":"user","content":"What is the capital of France? Answer in one word."}]}"#
        let direct = "http://127.0.0.1:\(parties.upstreamPort)/v1/chat/completions"
        let viaGateway = "http://127.0.0.1:\(parties.gatewayPort)/v1/chat/completions"
        let viaNullProxy = parties.nullProxyPort.map { "http://127.0.0.1:\($0)/v1/chat/completions" }

        if let profile {
            let c = levels.first ?? 1
            let url: String
            switch profileTarget {
            case .gateway: url = viaGateway
            case .direct: url = direct
            case .nullProxy:
                guard let viaNullProxy else { throw ValidationError("the null proxy runs only with --layout processes") }
                url = viaNullProxy
            }
            print("profile: gateway pid \(parties.gatewayPID), fake upstream pid \(parties.upstreamPID), load generator pid \(getpid())")
            _ = try await load(client: client, url: url, body: body, concurrency: c, seconds: 0.3, parties: parties)
            let r = try await load(client: client, url: url, body: body, concurrency: c, requests: profile, parties: parties)
            print(
                "profile \(profileTarget.rawValue) c=\(c): \(r.count) requests, \(f1(r.rps)) req/s, p50 \(f3(r.p50)) ms, p99 \(f3(r.p99)) ms, "
                    + "cpu us/req \(r.cpu.description), errors \(r.errors)"
                    + (r.selfReportedOverheadP50.map { ", x-gateway-overhead-ms p50 \(f3($0))" } ?? ""))
            return
        }
        print(
            "gateway-bench proxy: \(stream ? "stream" : "non-stream") chat completions, \(seconds) s per run, log durability \(durability.rawValue), linger \(lingerMs) ms, log \(LogLocation(logDB ?? "sqlite (temporary file)").redacted)"
        )
        print(parties.description)
        print("direct = client -> fake upstream; gateway = client -> gateway -> fake upstream (traffic log on)")
        if viaNullProxy != nil {
            print(
                "null-proxy = client -> Hummingbird + AsyncHTTPClient doing nothing but forward -> fake upstream: the floor any proxy on the gateway's stack adds"
            )
        }
        print("cpu us/req = CPU time per request of each process: \(parties.cpuColumns)")
        print("")
        print(
            pad("conc", 5), pad("target", 8), pad("req/s", 9), pad("p50 ms", 9), pad("p99 ms", 9), pad("cpu us/req", 24), pad("errors", 7))
        for c in levels {
            // Warm both paths (connections, caches).
            _ = try await load(client: client, url: direct, body: body, concurrency: c, seconds: 0.5, parties: parties)
            _ = try await load(client: client, url: viaGateway, body: body, concurrency: c, seconds: 0.5, parties: parties)
            let d = try await load(client: client, url: direct, body: body, concurrency: c, seconds: seconds, parties: parties)
            var floor: Result?
            if let viaNullProxy {
                _ = try await load(client: client, url: viaNullProxy, body: body, concurrency: c, seconds: 0.5, parties: parties)
                floor = try await load(client: client, url: viaNullProxy, body: body, concurrency: c, seconds: seconds, parties: parties)
            }
            let g = try await load(client: client, url: viaGateway, body: body, concurrency: c, seconds: seconds, parties: parties)
            func row(_ label: String, _ r: Result) {
                print(
                    pad("\(c)", 5), pad(label, 8), pad(f1(r.rps), 9), pad(f3(r.p50), 9), pad(f3(r.p99), 9), pad(r.cpu.description, 24),
                    pad("\(r.errors)", 7))
            }
            /// `a` minus `b`, then a remark.
            func difference(_ label: String, _ a: Result, _ b: Result, _ remark: String) {
                print(
                    pad("\(c)", 5), pad(label, 8), pad(f1(a.rps - b.rps), 9), pad(f3(a.p50 - b.p50), 9), pad(f3(a.p99 - b.p99), 9),
                    pad((a.cpu - b.cpu).description, 24), " ", remark)
            }
            row("direct", d)
            if let n = floor { row("null", n) }
            row("gateway", g)
            difference(
                "added", g, d,
                "throughput ratio gateway/direct \(String(format: "%.2f", g.rps / max(d.rps, 1e-9)))"
                    + (g.selfReportedOverheadP50.map { "; gateway's own x-gateway-overhead-ms p50 \(f3($0))" } ?? ""))
            if let n = floor {
                difference(
                    "floor", n, d,
                    "added by the null proxy; the gateway adds \(f3(g.p50 - n.p50)) ms p50 and "
                        + "\(f1(g.cpu.proxy - n.cpu.proxy)) us CPU per request more, throughput gateway/null \(String(format: "%.2f", g.rps / max(n.rps, 1e-9)))"
                )
            }
        }
    }

    struct Result {
        var rps: Double
        var p50: Double
        var p99: Double
        var errors: Int
        var count: Int
        var cpu: CPUPerRequest
        /// Median of the gateway's own `x-gateway-overhead-ms` (nil for the direct target).
        var selfReportedOverheadP50: Double?
    }

    /// Runs for `seconds`, or (with `requests`) until that many requests were sent in total.
    func load(
        client: HTTPClient, url: String, body: String, concurrency: Int, seconds: Double = .infinity,
        requests: Int? = nil, parties: Parties
    ) async throws -> Result {
        let clock = ContinuousClock()
        let cpuStart = parties.cpuSeconds()
        let start = clock.now
        let end = seconds.isFinite ? start + .milliseconds(Int(seconds * 1000)) : start + .seconds(86_400)
        let budget = RequestBudget(requests ?? Int.max)
        let payload = ByteBuffer(string: body)
        let results = await withTaskGroup(of: ([Double], Int, [Double]).self) { group in
            for _ in 0..<concurrency {
                group.addTask {
                    var latencies: [Double] = []
                    latencies.reserveCapacity(4096)
                    var errors = 0
                    var overheads: [Double] = []
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
                            if let h = resp.headers.first(name: "x-gateway-overhead-ms"), let v = Double(h) { overheads.append(v) }
                        } catch { errors += 1 }
                        latencies.append((clock.now - t0).milliseconds)
                    }
                    return (latencies, errors, overheads)
                }
            }
            var all: [Double] = []
            var errors = 0
            var overheads: [Double] = []
            for await (l, e, o) in group {
                all += l
                errors += e
                overheads += o
            }
            return (all, errors, overheads.sorted())
        }
        let elapsed = (clock.now - start).milliseconds / 1000
        let cpu = parties.cpuSeconds() - cpuStart
        let sorted = results.0.sorted()
        func pct(_ p: Double) -> Double { sorted.isEmpty ? .nan : sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] }
        return Result(
            rps: Double(sorted.count) / elapsed, p50: pct(0.5), p99: pct(0.99), errors: results.1,
            count: sorted.count, cpu: cpu.perRequest(max(sorted.count, 1), layout: parties.cpuLayout),
            selfReportedOverheadP50: results.2.isEmpty ? nil : results.2[results.2.count / 2])
    }
}

// MARK: The parties under test

/// The fake upstream and the gateway, wherever they run.
protocol Parties: Sendable {
    var upstreamPort: Int { get }
    var gatewayPort: Int { get }
    /// The do-nothing proxy on the same stack (processes layout only).
    var nullProxyPort: Int? { get }
    var gatewayPID: Int32 { get }
    var upstreamPID: Int32 { get }
    var description: String { get }
    var cpuColumns: String { get }
    var cpuLayout: CPUPerRequest.Layout { get }
    /// CPU seconds used so far (per process where they are separate).
    func cpuSeconds() -> CPUSeconds
    /// Stops both; returns a line about the traffic log.
    @discardableResult func stop() async -> String
}

struct CPUSeconds {
    var client: Double
    var upstream: Double
    /// The proxy under test: the gateway, or the null proxy (the other one idles).
    var proxy: Double
    static func - (a: CPUSeconds, b: CPUSeconds) -> CPUSeconds {
        CPUSeconds(client: a.client - b.client, upstream: a.upstream - b.upstream, proxy: a.proxy - b.proxy)
    }
    func perRequest(_ n: Int, layout: CPUPerRequest.Layout) -> CPUPerRequest {
        CPUPerRequest(
            client: client * 1e6 / Double(n), upstream: upstream * 1e6 / Double(n), proxy: proxy * 1e6 / Double(n), layout: layout)
    }
}

/// Microseconds of CPU per request: per process, or (in-process) one total.
struct CPUPerRequest: CustomStringConvertible {
    enum Layout { case perProcess, total }
    var client: Double
    var upstream: Double
    var proxy: Double
    var layout: Layout
    var description: String {
        switch layout {
        case .perProcess: return "\(f1(client)) / \(f1(upstream)) / \(f1(proxy))"
        case .total: return f1(client + upstream + proxy)
        }
    }
    static func - (a: CPUPerRequest, b: CPUPerRequest) -> CPUPerRequest {
        CPUPerRequest(client: a.client - b.client, upstream: a.upstream - b.upstream, proxy: a.proxy - b.proxy, layout: a.layout)
    }
}

/// The real binaries as child processes: `gateway-bench fake-upstream` and `gateway serve`.
final class ChildParties: Parties, @unchecked Sendable {
    let upstream: Process
    let gateway: Process
    let nullProxy: Process
    /// Closing these stops the fake upstream and the null proxy.
    let childStdins: [Pipe]
    let upstreamPort: Int
    let gatewayPort: Int
    let nullProxyPort: Int?
    let dbPath: String
    var gatewayPID: Int32 { gateway.processIdentifier }
    var upstreamPID: Int32 { upstream.processIdentifier }
    var cpuColumns: String { "load generator / fake upstream / proxy (null proxy or gateway)" }
    var cpuLayout: CPUPerRequest.Layout { .perProcess }
    var description: String {
        "layout: processes (gateway pid \(gatewayPID) with the default config apart from ports and paths; fake upstream pid \(upstreamPID); null proxy pid \(nullProxy.processIdentifier); load generator pid \(getpid()))"
    }

    private init(
        upstream: Process, nullProxy: Process, childStdins: [Pipe], upstreamPort: Int, nullProxyPort: Int,
        gateway: Process, gatewayPort: Int, dbPath: String
    ) {
        self.upstream = upstream
        self.nullProxy = nullProxy
        self.childStdins = childStdins
        self.upstreamPort = upstreamPort
        self.nullProxyPort = nullProxyPort
        self.gateway = gateway
        self.gatewayPort = gatewayPort
        self.dbPath = dbPath
    }

    static func start(gatewayPath: String?, durability: GatewayConfig.Durability, lingerMs: Int, directory: URL, logDB: String) async throws
        -> ChildParties
    {
        let selfExe = URL(
            fileURLWithPath: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        let exe = gatewayPath.map { URL(fileURLWithPath: $0) } ?? selfExe.deletingLastPathComponent().appendingPathComponent("gateway")
        guard FileManager.default.isExecutableFile(atPath: exe.path) else {
            throw ValidationError("no gateway executable at \(exe.path); build it (swift build -c release) or pass --gateway")
        }
        // The fake upstream and the null proxy: this binary's own commands. They exit when their
        // stdin closes, so they never outlive this process.
        var childStdins: [Pipe] = []
        func spawn(_ arguments: [String], reporting pattern: String) async throws -> (Process, Int) {
            let p = Process()
            p.executableURL = selfExe
            p.arguments = arguments
            let stdin = Pipe()
            childStdins.append(stdin)
            p.standardInput = stdin
            let out = Pipe()
            p.standardOutput = out
            let text = OutputBuffer()
            out.fileHandleForReading.readabilityHandler = { h in text.append(h.availableData) }
            try p.run()
            return (p, try await text.value(of: pattern, process: p))
        }
        let (upstream, upstreamPort) = try await spawn(["fake-upstream"], reporting: #"fake-upstream listening on port (\d+)"#)
        let (nullProxy, nullProxyPort) = try await spawn(
            ["null-proxy", "--upstream-port", "\(upstreamPort)"], reporting: #"null-proxy listening on port (\d+)"#)

        let configURL = directory.appendingPathComponent("gateway.json")
        let dbPath = logDB
        try Data(
            #"""
            {"upstream": {"base_url": "http://127.0.0.1:\#(upstreamPort)/v1", "api_key_env": null, "max_connections": 512},
             "auth": {"client_keys_env": null}, "limits": {"max_concurrent_requests": 4096},
             "log": {"durability": "\#(durability.rawValue)", "linger_ms": \#(lingerMs)}}
            """#.utf8
        ).write(to: configURL)
        func closeChildren() { for p in childStdins { try? p.fileHandleForWriting.close() } }
        let gateway: Process
        let output: OutputBuffer
        do {
            (gateway, output) = try SoakBench.startGateway(executable: exe, config: configURL, dbPath: dbPath)
        } catch {
            closeChildren()
            throw error
        }
        do {
            let (port, _) = try await output.ports(process: gateway)
            return ChildParties(
                upstream: upstream, nullProxy: nullProxy, childStdins: childStdins, upstreamPort: upstreamPort,
                nullProxyPort: nullProxyPort, gateway: gateway, gatewayPort: port, dbPath: dbPath)
        } catch {
            if gateway.isRunning { kill(gateway.processIdentifier, SIGKILL) }
            closeChildren()
            throw error
        }
    }

    func cpuSeconds() -> CPUSeconds {
        CPUSeconds(
            client: selfCPUSeconds(), upstream: processCPUSeconds(pid: upstreamPID),
            proxy: processCPUSeconds(pid: gatewayPID) + processCPUSeconds(pid: nullProxy.processIdentifier))
    }

    func stop() async -> String {
        if gateway.isRunning {
            kill(gatewayPID, SIGTERM)
            gateway.waitUntilExit()
        }
        for p in childStdins { try? p.fileHandleForWriting.close() }
        upstream.waitUntilExit()
        nullProxy.waitUntilExit()
        let rows = await ProxyBench.episodeCount(dbPath)
        return
            "traffic log: \(rows.map(String.init) ?? "unreadable") episodes after SIGTERM (gateway exit status \(gateway.terminationStatus))"
    }
}

/// Everything in this process, on the process-wide event loop group.
final class InProcessParties: Parties, @unchecked Sendable {
    let upstream: FakeUpstream
    let gateway: Gateway
    let runTask: Task<Void, any Error>
    let upstreamPort: Int
    let gatewayPort: Int
    var nullProxyPort: Int? { nil }
    var gatewayPID: Int32 { getpid() }
    var upstreamPID: Int32 { getpid() }
    var cpuColumns: String { "the whole process (load generator, fake upstream and gateway)" }
    var cpuLayout: CPUPerRequest.Layout { .total }
    var description: String { "layout: in-process (load generator, fake upstream and gateway share this process and its event loops)" }

    private init(upstream: FakeUpstream, gateway: Gateway, runTask: Task<Void, any Error>, gatewayPort: Int) {
        self.upstream = upstream
        self.gateway = gateway
        self.runTask = runTask
        self.upstreamPort = upstream.port
        self.gatewayPort = gatewayPort
    }

    static func start(durability: GatewayConfig.Durability, lingerMs: Int, directory: URL, logDB: String) async throws -> InProcessParties {
        let upstream = try await FakeUpstream(recordRequests: false)
        var config = GatewayConfig()
        config.server.port = 0
        config.upstream.baseURL = upstream.baseURL
        config.upstream.apiKeyEnv = nil
        config.upstream.maxConnections = 512
        config.limits.maxConcurrentRequests = 4096
        switch LogLocation(logDB) {
        case .sqlite(let path): config.log.path = path
        case .postgres(let url):
            config.log.backend = .postgres
            config.log.postgresURL = url
        }
        config.log.durability = durability
        config.log.lingerMs = lingerMs
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let gateway = try Gateway(config: config, environment: [:], logger: logger)
        let runTask = Task { try await gateway.run(gracefulShutdownSignals: []) }
        let port = await gateway.waitForPort()
        return InProcessParties(upstream: upstream, gateway: gateway, runTask: runTask, gatewayPort: port)
    }

    func cpuSeconds() -> CPUSeconds { CPUSeconds(client: selfCPUSeconds(), upstream: 0, proxy: 0) }

    func stop() async -> String {
        let stats = gateway.state.writer.stats
        await gateway.shutdown()
        _ = try? await runTask.value
        await upstream.stop()
        // A PostgreSQL backend closes after the drain: count what the writer committed.
        let rows =
            gateway.state.database.kind == .sqlite
            ? ((try? await gateway.state.database.episodeCount()) ?? -1) : gateway.state.writer.stats.rowsWritten
        return
            "traffic log: \(rows) episodes written in \(stats.batches) batches (\(String(format: "%.1f", Double(stats.rowsWritten) / Double(max(stats.batches, 1)))) per transaction)"
    }
}

/// `gateway-bench fake-upstream`: the fast fake upstream on a loopback port, for `proxy` (and for
/// measuring other proxies against the same upstream). Prints its port; exits when stdin closes.
struct FakeUpstreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fake-upstream",
        abstract: "Serve the fast fake OpenAI upstream on a loopback port until stdin closes.")

    func run() async throws {
        GatewayRuntime.useEventLoopsAsGlobalExecutor()
        let upstream = try await FakeUpstream(recordRequests: false)
        FileHandle.standardOutput.write(Data("fake-upstream listening on port \(upstream.port)\n".utf8))
        await waitForStandardInputToClose()
        await upstream.stop()
    }
}

extension OutputBuffer {
    /// Waits for `pattern` (one integer capture group) in the output and returns the integer.
    func value(of pattern: String, process: Process, timeout: TimeInterval = 30) async throws -> Int {
        let regex = try NSRegularExpression(pattern: pattern)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline, process.isRunning {
            let t = text
            if let m = regex.firstMatch(in: t, range: NSRange(t.startIndex..., in: t)), let r = Range(m.range(at: 1), in: t),
                let v = Int(t[r])
            {
                return v
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        throw ValidationError("\(process.executableURL?.lastPathComponent ?? "child") did not print /\(pattern)/: \(text)")
    }
}

/// A shared countdown of requests still to send (profiling mode).
final class RequestBudget: @unchecked Sendable {
    // `remaining` is guarded by `lock`.
    private let lock = NSLock()
    private var remaining: Int
    init(_ n: Int) { remaining = n }
    func take() -> Bool {
        lock.withLock {
            if remaining > 0 {
                remaining -= 1
                return true
            }
            return false
        }
    }
}

/// User + system CPU time of this process.
private func selfCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func s(_ t: timeval) -> Double { Double(t.tv_sec) + Double(t.tv_usec) / 1e6 }
    return s(usage.ru_utime) + s(usage.ru_stime)
}

/// User + system CPU time of another process, from /proc/PID/stat (clock-tick resolution).
private func processCPUSeconds(pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let close = stat.lastIndex(of: ")")
    else { return .nan }
    // Fields after "(comm)": state is field 3, utime 14, stime 15.
    let fields = stat[stat.index(after: close)...].split(separator: " ")
    guard fields.count > 12, let utime = Double(fields[11]), let stime = Double(fields[12]) else { return .nan }
    return (utime + stime) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

private func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
private func f1(_ x: Double) -> String { String(format: "%.1f", x) }
private func f3(_ x: Double) -> String { String(format: "%.3f", x) }

extension GatewayConfig.Durability: ExpressibleByArgument {}

extension ProxyBench {
    /// Episodes in the log at `location` (SQLite path or postgres:// URL), nil when unreadable.
    static func episodeCount(_ location: String) async -> Int? {
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        guard let backend = try? await LogBackends.open(LogLocation(location), logger: logger) else { return nil }
        let n = try? await backend.episodeCount()
        try? await backend.close()
        return n
    }
}
