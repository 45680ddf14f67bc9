import ArgumentParser
import AsyncHTTPClient
import FakeUpstream
import Foundation
import Logging
import NIOCore
import TrafficLog

#if canImport(Glibc)
    import Glibc
#endif

/// Soak: the real `gateway` binary as a child process under minutes of mixed stream and
/// non-stream load on loopback. Passes when no request failed, every request is in the traffic
/// log, and the gateway's resident memory and open file descriptors stay flat.
struct SoakBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soak",
        abstract: "Mixed stream/non-stream load against the gateway binary; reports errors, RSS and open fds over time.")

    @Option(help: "Seconds of load (the issue's soak is 300).")
    var seconds: Double = 300

    @Option(help: "Concurrent clients.")
    var concurrency: Int = 32

    @Option(help: "Path of the gateway executable (default: next to this one).")
    var gateway: String?

    @Option(help: "Seconds between samples of RSS and fds.")
    var sampleEvery: Double = 10

    @Option(help: "Allowed RSS growth from the first sample after warm-up to the end, in MiB.")
    var rssToleranceMib: Double = 16

    func run() async throws {
        let exe =
            gateway.map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("gateway")
        guard FileManager.default.isExecutableFile(atPath: exe.path) else {
            throw ValidationError("no gateway executable at \(exe.path); build it (swift build -c release) or pass --gateway")
        }
        // An upstream with some variety: most answers at once, some after a pause, longer streams.
        let upstream = try await FakeUpstream(
            script: { r in
                guard r.path == "/v1/chat/completions" else { return nil }
                let reply = FakeUpstream.defaultReply(r)
                return Int.random(in: 0..<10) == 0 ? .delayed(.milliseconds(Int.random(in: 5...50)), reply) : reply
            }, recordRequests: false)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-soak-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let configURL = dir.appendingPathComponent("gateway.json")
        try Data(#"{"upstream": {"base_url": "\#(upstream.baseURL)", "api_key_env": null}, "auth": {"client_keys_env": null}}"#.utf8).write(
            to: configURL)
        let dbPath = dir.appendingPathComponent("traffic.sqlite").path

        let (child, output) = try Self.startGateway(executable: exe, config: configURL, dbPath: dbPath)
        let (port, adminPort) = try await output.ports(process: child)
        let pid = child.processIdentifier
        print(
            "gateway-bench soak: \(exe.path) pid \(pid) on port \(port) (admin \(adminPort)), \(concurrency) clients, \(Int(seconds)) s, half streaming"
        )

        var clientConfig = HTTPClient.Configuration()
        clientConfig.connectionPool = .init(idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: concurrency + 8)
        clientConfig.timeout = .init(connect: .seconds(5), read: .seconds(30))
        let client = HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: clientConfig)
        let counters = SoakCounters()
        let clock = ContinuousClock()
        let start = clock.now
        let end = start + .milliseconds(Int(seconds * 1000))
        let url = "http://127.0.0.1:\(port)/v1/chat/completions"

        let sampleLog = SampleLog()
        @Sendable func sample() {
            let s = SoakSample(
                t: (clock.now - start).milliseconds / 1000, rssMiB: Self.rssMiB(pid: pid), fds: Self.openFDs(pid: pid),
                requests: counters.requests, errors: counters.errors)
            sampleLog.append(s)
            print(
                String(format: "  t=%6.1f s  rss %7.1f MiB  fds %4d  requests %8d  errors %d", s.t, s.rssMiB, s.fds, s.requests, s.errors))
        }
        sample()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for worker in 0..<concurrency {
                group.addTask {
                    var i = 0
                    while clock.now < end {
                        i += 1
                        let stream = (worker + i) % 2 == 0
                        let words = 1 + (i % 40)
                        let content = (0..<words).map { "w\($0)" }.joined(separator: " ")
                        var req = HTTPClientRequest(url: url)
                        req.method = .POST
                        req.headers.add(name: "content-type", value: "application/json")
                        req.body = .bytes(
                            ByteBuffer(
                                string:
                                    #"{"model":"gpt-4o-mini","stream":\#(stream),"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"\#(content)"}]}"#
                            ))
                        do {
                            let resp = try await client.execute(req, timeout: .seconds(30))
                            let body = String(buffer: try await resp.body.collect(upTo: 4 << 20))
                            let complete = stream ? body.hasSuffix("data: [DONE]\n\n") : body.contains(#""finish_reason":"stop""#)
                            counters.record(
                                ok: resp.status == .ok && complete, detail: complete ? "status \(resp.status.code)" : "incomplete body")
                        } catch {
                            counters.record(ok: false, detail: "\(error)")
                        }
                    }
                }
            }
            group.addTask {
                while clock.now < end {
                    try await Task.sleep(for: .milliseconds(Int(sampleEvery * 1000)))
                    if clock.now < end { sample() }
                }
            }
            try await group.waitForAll()
        }
        sample()
        try await client.shutdown()
        kill(pid, SIGTERM)
        child.waitUntilExit()
        await upstream.stop()

        let rows = Self.episodeCount(dbPath: dbPath)
        let samples = sampleLog.all
        // Memory is judged after warm-up: from the first sample at or past 20 % of the run.
        let warm = samples.first { $0.t >= seconds * 0.2 } ?? samples[0]
        let last = samples.last!
        let rssGrowth = last.rssMiB - warm.rssMiB
        let fdGrowth = last.fds - warm.fds
        let total = counters.requests
        print("")
        print(
            "requests        \(total) (\(String(format: "%.0f", Double(total) / seconds)) req/s), errors \(counters.errors)\(counters.firstError.map { " (first: \($0))" } ?? "")"
        )
        print("traffic log     \(rows.map(String.init) ?? "unreadable") episodes (requests sent: \(total))")
        print(
            String(
                format: "rss             start %.1f MiB, after warm-up (t=%.0f s) %.1f MiB, end %.1f MiB, growth %+.1f MiB",
                samples[0].rssMiB, warm.t, warm.rssMiB, last.rssMiB, rssGrowth))
        print("open fds        start \(samples[0].fds), after warm-up \(warm.fds), end \(last.fds)")
        print("gateway exit    \(child.terminationStatus) after SIGTERM")
        var failures: [String] = []
        if counters.errors > 0 { failures.append("\(counters.errors) failed requests") }
        if rows != total { failures.append("log holds \(rows ?? -1) episodes for \(total) requests") }
        if rssGrowth > rssToleranceMib { failures.append(String(format: "RSS grew %.1f MiB after warm-up", rssGrowth)) }
        if fdGrowth > 8 { failures.append("open fds grew by \(fdGrowth)") }
        if child.terminationStatus != 0 { failures.append("gateway exited with \(child.terminationStatus)") }
        try? FileManager.default.removeItem(at: dir)
        if failures.isEmpty {
            print("PASS")
        } else {
            print("FAIL: " + failures.joined(separator: "; "))
            throw ExitCode(1)
        }
    }

    /// Starts `gateway serve` with `config` on free loopback ports (notice-level log, which
    /// names the ports); its output is collected.
    static func startGateway(executable: URL, config: URL, dbPath: String) throws -> (Process, OutputBuffer) {
        let child = Process()
        child.executableURL = executable
        child.arguments = [
            "serve", "--config", config.path, "--host", "127.0.0.1", "--port", "0", "--admin-port", "0",
            "--log-db", dbPath, "--log-level", "notice",
        ]
        let pipe = Pipe()
        child.standardError = pipe
        child.standardOutput = pipe
        let output = OutputBuffer()
        pipe.fileHandleForReading.readabilityHandler = { h in output.append(h.availableData) }
        try child.run()
        return (child, output)
    }

    static func rssMiB(pid: Int32) -> Double {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
            let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") })
        else { return .nan }
        let kb = Double(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? .nan
        return kb / 1024
    }

    static func openFDs(pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
    }

    static func episodeCount(dbPath: String) -> Int? {
        try? TrafficDatabase(path: dbPath).episodeCount()
    }
}

struct SoakSample: Sendable {
    var t: Double
    var rssMiB: Double
    var fds: Int
    var requests: Int
    var errors: Int
}

final class SampleLog: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var samples: [SoakSample] = []
    func append(_ s: SoakSample) { lock.withLock { samples.append(s) } }
    var all: [SoakSample] { lock.withLock { samples } }
}

final class SoakCounters: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var ok = 0
    private var failed = 0
    private var first: String?
    func record(ok success: Bool, detail: String) {
        lock.withLock {
            if success {
                ok += 1
            } else {
                failed += 1
                if first == nil { first = detail }
            }
        }
    }
    var requests: Int { lock.withLock { ok + failed } }
    var errors: Int { lock.withLock { failed } }
    var firstError: String? { lock.withLock { first } }
}

/// The child's combined output, searched for the "gateway listening" line.
final class OutputBuffer: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var data = Data()
    func append(_ d: Data) { lock.withLock { data.append(d) } }
    var text: String { lock.withLock { String(decoding: data, as: UTF8.self) } }

    func ports(process: Process, timeout: TimeInterval = 60) async throws -> (Int, Int) {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline, process.isRunning {
            let t = text
            if let r = t.range(of: #"address=127\.0\.0\.1:(\d+)"#, options: .regularExpression),
                let a = t.range(of: #"admin=127\.0\.0\.1:(\d+)"#, options: .regularExpression),
                let port = Int(t[r].split(separator: ":").last ?? ""), let admin = Int(t[a].split(separator: ":").last ?? "")
            {
                return (port, admin)
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ValidationError("the gateway did not start: \(text)")
    }
}
