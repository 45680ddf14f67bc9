import Foundation

/// Where the gateway keeps its runtime files (the traffic log, the generated admin token, the
/// policy checkpoints the admin API may load), so that none of them lands in a work tree by
/// accident. docs/configuration.md, "The data directory".
public enum DataDirectory {
    /// The folder name under `$XDG_STATE_HOME`.
    public static let appName = "prompt-r1-gateway"

    /// `./data` when `currentDirectory` is this repository's root (git-ignored there), else
    /// `$XDG_STATE_HOME/prompt-r1-gateway` (`~/.local/state/prompt-r1-gateway` without it).
    public static func defaultPath(
        currentDirectory: String = FileManager.default.currentDirectoryPath,
        environment: [String: String] = ProcessInfo.processInfo.environment
    ) -> String {
        let cwd = URL(fileURLWithPath: currentDirectory)
        if let manifest = FileManager.default.contents(atPath: cwd.appendingPathComponent("Package.swift").path),
            String(decoding: manifest, as: UTF8.self).contains("name: \"PromptR1Gateway\"")
        {
            return cwd.appendingPathComponent("data").path
        }
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") {
            return URL(fileURLWithPath: state).appendingPathComponent(appName).path
        }
        let home = environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()
        return URL(fileURLWithPath: home).appendingPathComponent(".local/state").appendingPathComponent(appName).path
    }

    /// `path` inside `directory` when relative, unchanged when absolute.
    static func resolve(_ path: String, in directory: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: directory).appendingPathComponent(path).standardized.path
    }
}

extension GatewayConfig {
    /// The config with its runtime paths (`log.path`, `admin.token_file`, `admin.models_dir`)
    /// taken inside `dataDirectory` when they are relative.
    public func placingRuntimeFiles(in dataDirectory: String) -> GatewayConfig {
        var c = self
        c.log.path = DataDirectory.resolve(c.log.path, in: dataDirectory)
        c.admin.tokenFile = c.admin.tokenFile.map { DataDirectory.resolve($0, in: dataDirectory) }
        c.admin.modelsDir = DataDirectory.resolve(c.admin.modelsDir, in: dataDirectory)
        return c
    }

    /// Where a generated admin token goes: `admin.token_file`, else `admin-token` beside the log.
    public var generatedAdminTokenPath: String {
        admin.tokenFile ?? URL(fileURLWithPath: log.path).deletingLastPathComponent().appendingPathComponent("admin-token").path
    }
}

/// Refuses to put a secret into a git work tree where `git add .` would pick it up.
enum WorkTreeGuard {
    /// The root of the git work tree that contains `path` (its nearest ancestor with `.git`).
    static func workTree(containing path: String) -> String? {
        var dir = URL(fileURLWithPath: path).standardized.deletingLastPathComponent()
        let fm = FileManager.default
        while true {
            if fm.fileExists(atPath: dir.appendingPathComponent(".git").path) { return dir.path }
            let parent = dir.deletingLastPathComponent()
            if parent.path == dir.path { return nil }
            dir = parent
        }
    }

    /// Throws unless `path` is outside every git work tree or git ignores it there.
    static func checkSecretPath(_ path: String, key: String) throws(ConfigError) {
        guard let root = workTree(containing: path) else { return }
        let advice = "set admin.token_file outside the work tree, ignore the file in .gitignore, or give the token in the environment"
        let git = Self.git()
        guard let git else {
            throw ConfigError(
                path: key,
                problem: "\(path) is inside the git work tree \(root), and git is not installed to check that it is ignored; \(advice)")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: git)
        p.arguments = ["-C", root, "check-ignore", "-q", "--", URL(fileURLWithPath: path).standardized.path]
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        do {
            try p.run()
            p.waitUntilExit()
        } catch {
            throw ConfigError(
                path: key, problem: "\(path) is inside the git work tree \(root) and `git check-ignore` could not run (\(error)); \(advice)"
            )
        }
        switch p.terminationStatus {
        case 0: return
        case 1:
            throw ConfigError(
                path: key,
                problem:
                    "refusing to write the admin token to \(path): it is inside the git work tree \(root) and git does not ignore it; \(advice)"
            )
        default:
            throw ConfigError(
                path: key,
                problem:
                    "\(path) is inside the git work tree \(root) and `git check-ignore` failed (exit \(p.terminationStatus)); \(advice)")
        }
    }

    static func git() -> String? {
        let fm = FileManager.default
        for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
            let candidate = "\(dir)/git"
            if fm.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }
}
