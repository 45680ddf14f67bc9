import Crypto
import Foundation
import PolicyEngine
import PromptR1
import TrafficLog

/// A policy checkpoint loaded and validated, with its identity.
public final class LoadedPolicy: Sendable {
    public let policy: EnginePolicy
    /// Version id: the first 16 hex digits of the weights' SHA-256.
    public let version: String
    public let sha256: String
    public let path: String
    public let loadedAt: Date
    public let architecture: String
    public let parameterCount: Int

    init(policy: EnginePolicy, sha256: String, path: String) {
        self.policy = policy
        self.sha256 = sha256
        version = String(sha256.prefix(16))
        self.path = path
        loadedAt = Date()
        architecture = policy.model.config.modelType.rawValue
        parameterCount = policy.model.parameterCount
    }

    public enum LoadError: Error, CustomStringConvertible {
        case notADirectory(String)
        case nonFiniteLogits(String)
        public var description: String {
            switch self {
            case .notADirectory(let p): return "'\(p)' is not a checkpoint folder"
            case .nonFiniteLogits(let p): return "a smoke forward pass of '\(p)' gave NaN or infinite logits"
            }
        }
    }

    /// Loads a checkpoint folder, checks it can speak the protocol, runs a smoke forward pass, and
    /// hashes its weights.
    public static func load(path: String) throws -> LoadedPolicy {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw LoadError.notADirectory(path)
        }
        let url = URL(fileURLWithPath: path)
        let policy = try EnginePolicy(directory: url)
        let probe = policy.tokenizer.encode("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
        let logits = try policy.model.prefill(tokens: probe, cache: policy.model.makeCache(initialCapacity: probe.count))
        guard logits.allSatisfy(\.isFinite) else {
            policy.shutdown()
            throw LoadError.nonFiniteLogits(path)
        }
        return LoadedPolicy(policy: policy, sha256: try weightsSHA256(directory: url), path: path)
    }

    /// SHA-256 over the checkpoint's safetensors files in name order.
    static func weightsSHA256(directory: URL) throws -> String {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".safetensors") }.sorted()
        var hasher = SHA256()
        for name in files {
            let handle = try FileHandle(forReadingFrom: directory.appendingPathComponent(name))
            defer { try? handle.close() }
            while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    var record: PolicyVersionRecord {
        PolicyVersionRecord(id: version, path: path, sha256: sha256, architecture: architecture,
                            parameterCount: parameterCount, loadedAt: loadedAt, parentID: nil,
                            manifestJSON: (try? String(contentsOfFile: (path as NSString).appendingPathComponent("manifest.json"), encoding: .utf8)))
    }
}

/// The serving policy. A request takes the current one once and keeps it to the end, so a
/// later swap never changes the weights under a running episode.
public final class PolicyHolder: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var _current: LoadedPolicy?

    public init(_ initial: LoadedPolicy? = nil) { _current = initial }

    public var current: LoadedPolicy? { lock.withLock { _current } }

    public func set(_ p: LoadedPolicy?) { lock.withLock { _current = p } }
}
