import Foundation
import XCTest

@testable import GatewayServer

/// Runtime files go to the data directory, and a generated admin token is never written where
/// `git add` would pick it up.
final class DataDirectoryTests: XCTestCase {
    func temporaryDirectory() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("gw-data-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    func git(_ args: [String], in dir: URL) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try XCTUnwrap(WorkTreeGuard.git(), "git is needed (scripts/install-deps.sh --tests)"))
        p.arguments = ["-C", dir.path] + args
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 0, "git \(args)")
    }

    func testDefaultIsDataInTheRepositoryElseTheXDGStateDirectory() throws {
        let repo = OpenAISDKTests.repoRoot.path
        XCTAssertEqual(DataDirectory.defaultPath(currentDirectory: repo, environment: [:]), repo + "/data")
        let elsewhere = try temporaryDirectory().path
        XCTAssertEqual(
            DataDirectory.defaultPath(currentDirectory: elsewhere, environment: ["XDG_STATE_HOME": "/srv/state", "HOME": "/home/u"]),
            "/srv/state/prompt-r1-gateway")
        XCTAssertEqual(
            DataDirectory.defaultPath(currentDirectory: elsewhere, environment: ["HOME": "/home/u"]),
            "/home/u/.local/state/prompt-r1-gateway")
        // A relative XDG_STATE_HOME is invalid by the spec and ignored.
        XCTAssertEqual(
            DataDirectory.defaultPath(currentDirectory: elsewhere, environment: ["XDG_STATE_HOME": "state", "HOME": "/home/u"]),
            "/home/u/.local/state/prompt-r1-gateway")
    }

    func testRelativeRuntimePathsLiveInTheDataDirectory() throws {
        let c = GatewayConfig().placingRuntimeFiles(in: "/var/lib/gw")
        XCTAssertEqual(c.log.path, "/var/lib/gw/traffic.sqlite")
        XCTAssertEqual(c.admin.modelsDir, "/var/lib/gw/models")
        XCTAssertEqual(c.generatedAdminTokenPath, "/var/lib/gw/admin-token")
        var d = GatewayConfig()
        d.log.path = "/elsewhere/log.sqlite"
        d.admin.tokenFile = "secrets/token"
        d.admin.modelsDir = "../shared-models"
        let e = d.placingRuntimeFiles(in: "/var/lib/gw")
        XCTAssertEqual(e.log.path, "/elsewhere/log.sqlite")
        XCTAssertEqual(e.generatedAdminTokenPath, "/var/lib/gw/secrets/token")
        XCTAssertEqual(e.admin.modelsDir, "/var/lib/shared-models")
    }

    func testTokenIsRefusedInsideAWorkTreeUnlessGitIgnoresIt() throws {
        let tree = try temporaryDirectory()
        try git(["init", "-q"], in: tree)
        var config = GatewayConfig()
        config.upstream.baseURL = "http://127.0.0.1:9/v1"
        config.log.path = tree.appendingPathComponent("runtime/traffic.sqlite").path
        let token = tree.appendingPathComponent("runtime/admin-token").path
        XCTAssertThrowsError(try Gateway(config: config, environment: [:])) { error in
            let text = "\(error)"
            XCTAssertTrue(text.contains("git does not ignore it") && text.contains(token), text)
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: token), "the token was written before the check")

        try Data("runtime/\n".utf8).write(to: tree.appendingPathComponent(".gitignore"))
        XCTAssertNoThrow(try WorkTreeGuard.checkSecretPath(token, key: "admin.token_file"))
        // Outside any work tree: no objection.
        XCTAssertNoThrow(try WorkTreeGuard.checkSecretPath(try temporaryDirectory().appendingPathComponent("admin-token").path, key: "k"))
    }

    func testThisRepositoryIgnoresItsDataDirectory() throws {
        let repo = OpenAISDKTests.repoRoot
        guard WorkTreeGuard.workTree(containing: repo.appendingPathComponent("x").path) != nil else {
            throw XCTSkip("not a git checkout")
        }
        XCTAssertNoThrow(try WorkTreeGuard.checkSecretPath(repo.appendingPathComponent("data/admin-token").path, key: "k"))
        XCTAssertThrowsError(try WorkTreeGuard.checkSecretPath(repo.appendingPathComponent("docs/admin-token.txt").path, key: "k"))
    }

    /// The real binary: `--data-dir`, `--admin-host` and `$GATEWAY_POLICY` reach the effective settings.
    func testCommandLinePlacesRuntimeFiles() async throws {
        let exe = try ProcessTests.executable().path
        let data = try temporaryDirectory().appendingPathComponent("state").path
        let config = OpenAISDKTests.repoRoot.appendingPathComponent("gateway.json").path
        let (status, out, err) = try await OpenAISDKTests.run(
            exe, ["check-config", "--config", config, "--data-dir", data, "--admin-host", "0.0.0.0"],
            env: ["GATEWAY_POLICY": "/models/p", "GATEWAY_ADMIN_TOKEN": ""])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("log          \(data)/traffic.sqlite"), out)
        XCTAssertTrue(out.contains("generated into \(data)/admin-token"), out)
        XCTAssertTrue(out.contains("models dir   \(data)/models"), out)
        XCTAssertTrue(out.contains("admin        0.0.0.0:8081"), out)
        XCTAssertTrue(out.contains("policy       /models/p"), out)
        let (_, flagOut, _) = try await OpenAISDKTests.run(
            exe, ["check-config", "--config", config, "--data-dir", data, "--policy", "/other"],
            env: ["GATEWAY_POLICY": "/models/p"])
        XCTAssertTrue(flagOut.contains("policy       /other"), flagOut)
    }
}
