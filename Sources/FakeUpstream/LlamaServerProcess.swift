import Foundation

#if canImport(FoundationNetworking)
    import FoundationNetworking
#endif

/// A real llama.cpp `llama-server` on a free loopback port, for the tests and benchmarks that drive the
/// policy on an inference engine; `stop()` ends it. The binary is `$LLAMA_SERVER`, else
/// `<repository>/.build-llama/bin/llama-server` (built by scripts/build-llama-server.sh, which
/// scripts/test.sh runs first). A missing binary or model is an error, never a skip.
public final class LlamaServerProcess: @unchecked Sendable {  // immutable after start
    public let process: Process
    public let baseURL: String

    public struct Missing: Error, CustomStringConvertible {
        public var description: String
    }

    public static func binary(repositoryRoot: URL) -> URL {
        if let p = ProcessInfo.processInfo.environment["LLAMA_SERVER"] { return URL(fileURLWithPath: p) }
        return repositoryRoot.appendingPathComponent(".build-llama/bin/llama-server")
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { p in bind(fd, p, len) == 0 && getsockname(fd, p, &len) == 0 }
        }
        guard ok else { throw Missing(description: "no free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    /// Starts `llama-server -m model` with one slot, one thread, an f32 KV cache and no flash attention (so its
    /// log-probs are float32 ones), and waits at most 60 s for `/health` to answer 200.
    public static func start(model: URL, repositoryRoot: URL) throws -> LlamaServerProcess {
        let bin = binary(repositoryRoot: repositoryRoot)
        guard FileManager.default.isExecutableFile(atPath: bin.path) else {
            throw Missing(description: "\(bin.path) is missing: run scripts/build-llama-server.sh (scripts/test.sh does)")
        }
        guard FileManager.default.fileExists(atPath: model.path) else {
            throw Missing(description: "\(model.path) is missing: run scripts/convert-policy-gguf.sh")
        }
        let port = try freePort()
        let p = Process()
        p.executableURL = bin
        p.arguments = [
            "-m", model.path, "--host", "127.0.0.1", "--port", "\(port)", "-c", "4096", "-np", "1",
            "-t", "1", "--no-webui", "--log-disable",
            "--cache-type-k", "f32", "--cache-type-v", "f32", "--flash-attn", "off",
        ]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        let server = LlamaServerProcess(process: p, baseURL: "http://127.0.0.1:\(port)")
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if !p.isRunning { throw Missing(description: "llama-server exited with \(p.terminationStatus)") }
            if server.healthy() { return server }
            Thread.sleep(forTimeInterval: 0.1)
        }
        server.stop()
        throw Missing(description: "llama-server did not become healthy within 60 s")
    }

    init(process: Process, baseURL: String) {
        self.process = process
        self.baseURL = baseURL
    }

    /// `GET /health` answered 200 within a second.
    public func healthy() -> Bool {
        final class Box: @unchecked Sendable { var ok = false }
        let box = Box()
        let done = DispatchSemaphore(value: 0)
        var r = URLRequest(url: URL(string: baseURL + "/health")!)
        r.timeoutInterval = 1
        URLSession.shared.dataTask(with: r) { _, resp, _ in
            box.ok = (resp as? HTTPURLResponse)?.statusCode == 200
            done.signal()
        }.resume()
        done.wait()
        return box.ok
    }

    public func stop() {
        guard process.isRunning else { return }
        // SIGKILL, not terminate(): Foundation's Process starts the child with the signal mask of the calling
        // thread, where Swift's runtime blocks SIGTERM and SIGINT, so llama-server never sees them and
        // waitUntilExit() would wait forever. The engine holds no state.
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}
