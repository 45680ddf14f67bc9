import Foundation
import XCTest

@testable import GatewayServer

#if canImport(Glibc)
    import Glibc
#endif

/// Slow or stalled clients (slowloris): they are cut off after the server's idle timeout and,
/// while they hang around, normal requests are served.
final class SlowClientTests: XCTestCase {
    /// A blocking loopback TCP socket; enough for sending partial requests by hand.
    final class RawConnection {
        let fd: Int32
        init(port: Int) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw POSIXError(.EMFILE) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard rc == 0 else {
                close(fd)
                throw POSIXError(.ECONNREFUSED)
            }
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        func send(_ s: String) -> Bool {
            let bytes = Array(s.utf8)
            return bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
        }
        /// Blocks until the server closes the connection (read returns 0 or an error) or the
        /// 10 s receive timeout passes; returns the bytes read and whether it was closed.
        func readUntilClosed() -> (String, closed: Bool) {
            var out = [UInt8]()
            var buf = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                if n == 0 { return (String(decoding: out, as: UTF8.self), true) }
                if n < 0 { return (String(decoding: out, as: UTF8.self), errno != EAGAIN && errno != EWOULDBLOCK) }
                out += buf[0..<n]
            }
        }
        deinit { close(fd) }
    }

    func testStalledClientsAreCutOffAndDoNotBlockOthers() async throws {
        // Default concurrency limit (1024): a request stalled inside its body holds a slot until
        // the idle timeout cuts it, so 40 of them leave plenty for others.
        let h = try await Harness.start(configure: { c in c.server.idleTimeoutSeconds = 1 })
        // 40 connections: half stop inside the headers, half inside a declared body.
        var stalled: [RawConnection] = []
        for i in 0..<40 {
            let c = try RawConnection(port: h.port)
            if i % 2 == 0 {
                XCTAssertTrue(c.send("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: app"))
            } else {
                XCTAssertTrue(
                    c.send(
                        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"model\":"
                    ))
            }
            stalled.append(c)
        }
        // Meanwhile a normal client is served at once.
        let started = Date()
        // `connection: close`: the harness client must not reuse a keep-alive connection that the
        // 1 s idle timeout is about to close (a client-side race, not what this test is about).
        let fresh = [("content-type", "application/json"), ("connection", "close")]
        let ok = try await h.chat(simpleChat, headers: fresh)
        XCTAssertEqual(ok.status, 200, ok.body)
        XCTAssertLessThan(Date().timeIntervalSince(started), 0.9, "served before any idle timeout fired")
        // Every stalled connection is closed by the server after about a second.
        let cutStart = Date()
        for c in stalled {
            let (_, closed) = c.readUntilClosed()
            XCTAssertTrue(closed, "a stalled connection stayed open")
        }
        XCTAssertLessThan(Date().timeIntervalSince(cutStart), 8)
        // The server is still healthy afterwards.
        let after = try await h.chat(simpleChat, headers: fresh)
        XCTAssertEqual(after.status, 200)
        try await h.stop()
    }

    func testOversizedHeadersAreRefused() async throws {
        let h = try await Harness.start(configure: { c in c.limits.maxHeaderBytes = 2048 })
        let c = try RawConnection(port: h.port)
        XCTAssertTrue(c.send("GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "a", count: 8192))\r\n\r\n"))
        let (reply, closed) = c.readUntilClosed()
        XCTAssertTrue(closed)
        XCTAssertFalse(reply.hasPrefix("HTTP/1.1 200"), reply)
        let ok = try await h.request(.GET, "/v1/models")
        XCTAssertEqual(ok.status, 200)
        try await h.stop()
    }
}
