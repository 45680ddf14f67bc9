import EpisodeLog
import Foundation
import PolicyEngine
import PromptR1
import RemotePolicy
import TrafficLog

/// A policy checkpoint loaded and validated, with its identity.
public final class LoadedPolicy: Sendable {
    /// The embedded engine (nil when the policy runs on an inference engine).
    public let embedded: EnginePolicy?
    /// The inference engine serving the policy (`policy.backend`), if any.
    public let remote: RemotePolicy?
    /// Version id: the first 16 hex digits of the weights' SHA-256.
    public let version: String
    public let sha256: String
    public let path: String
    public let loadedAt: Date
    public let architecture: String
    public let parameterCount: Int
    /// How this version came to serve: `inPlace` on the engine of the version before it (a
    /// rollback from it reloads in place too).
    public let reload: PolicyReloadMode
    private let served = ServedCounter()
    /// Requests that started on this version.
    public var requestsServed: Int { served.value }
    func countRequest() { served.increment() }

    /// The engine's worker thread keeps the weights alive until it is stopped: stop it when the
    /// last request holding this version lets go (after a swap), which frees the weights.
    deinit { embedded?.shutdown() }

    init(policy: EnginePolicy, sha256: String, path: String) {
        self.embedded = policy
        self.remote = nil
        reload = .blueGreen
        self.sha256 = sha256
        version = CheckpointHash.versionID(sha256: sha256)
        self.path = path
        loadedAt = Date()
        architecture = policy.model.config.modelType.rawValue
        parameterCount = policy.model.parameterCount
    }

    /// A policy on an inference engine. Its version is the folder's weights' id, or the engine's
    /// model id when the folder holds only the tokenizer and config.
    init(remote: RemotePolicy, path: String, reload: PolicyReloadMode = .blueGreen) {
        self.embedded = nil
        self.remote = remote
        self.reload = reload
        sha256 = remote.weightsSHA256 ?? remote.version
        version = remote.version
        self.path = path
        loadedAt = Date()
        architecture = remote.config.modelType.rawValue
        parameterCount = 0
    }

    /// Where this version runs.
    public var backendKind: PolicyBackendKind {
        switch remote?.backend.kind {
        case nil: return .embedded
        case .vllm?: return .vllm
        case .sglang?: return .sglang
        case .llamacpp?: return .llamacpp
        }
    }

    /// The checkpoint's tokenizer (the folder's, whichever engine runs the weights).
    public var tokenizer: Tokenizer { embedded?.tokenizer ?? remote!.tokenizer }

    /// The checkpoint's sampling defaults (generation_config.json).
    public var generationDefaults: GenerationDefaults {
        if let embedded { return embedded.model.generationDefaults }
        return remote.flatMap { try? GenerationDefaults.load(from: $0.directory) } ?? GenerationDefaults()
    }

    /// Sessions for `CollaborationLoop`, on whichever engine serves this version.
    public func factory(sampling: SamplingParameters) -> PolicySessionFactory {
        if let remote { return remote.factory(sampling: sampling) }
        return embedded!.factory(sampling: sampling)
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

    /// Loads a checkpoint folder, checks it can speak the protocol, runs a smoke forward pass,
    /// pre-fills the protocol's fixed prefix into the prefix cache, and hashes its weights.
    public static func load(
        path: String, weights: WeightFormat = .f32,
        prefixCacheMB: Int = EnginePolicy.defaultPrefixCacheBytes >> 20, speculation: PromptLookup? = nil,
        prefillInBackground: Bool = false
    ) throws -> LoadedPolicy {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue else {
            throw LoadError.notADirectory(path)
        }
        let url = URL(fileURLWithPath: path)
        let policy = try EnginePolicy(
            directory: url, weightFormat: weights, prefixCacheBytes: prefixCacheMB << 20, speculation: speculation)
        let probe = policy.tokenizer.encode("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
        let logits = try policy.model.prefill(tokens: probe, cache: policy.model.makeCache(initialCapacity: probe.count))
        guard logits.allSatisfy(\.isFinite) else {
            policy.shutdown()
            throw LoadError.nonFiniteLogits(path)
        }
        if prefillInBackground {
            // Off a swap's critical path: episodes that start before it is cached compute it themselves.
            Thread { _ = try? policy.prefillProtocolPrefix() }.start()
        } else {
            try policy.prefillProtocolPrefix()
        }
        return LoadedPolicy(policy: policy, sha256: try CheckpointHash.weightsSHA256(directory: url), path: path)
    }

    var record: PolicyVersionRecord {
        PolicyVersionRecord(
            id: version, path: path, sha256: sha256, architecture: architecture,
            parameterCount: parameterCount, loadedAt: loadedAt, parentID: nil,
            manifestJSON: (try? String(contentsOfFile: (path as NSString).appendingPathComponent("manifest.json"), encoding: .utf8)))
    }
}

final class ServedCounter: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var n = 0
    func increment() { lock.withLock { n += 1 } }
    var value: Int { lock.withLock { n } }
}

/// What the admin API shows of a version (also kept for versions no longer in memory).
public struct PolicyVersionInfo: Codable, Sendable, Equatable {
    public var id: String
    public var path: String
    public var sha256: String
    public var architecture: String
    public var parameterCount: Int
    public var loadedAt: Date
    public var requestsServed: Int
    /// The inference engine it ran on (absent: the embedded engine); rollback returns to it.
    public var backend: RemotePolicyBackend?
    /// How it came to serve (see `LoadedPolicy.reload`).
    public var reload: PolicyReloadMode
    /// Where the engine read its weights (an in-place rollback reloads them from there).
    public var enginePath: String?

    enum CodingKeys: String, CodingKey {
        case id, path, sha256, architecture, backend, reload
        case enginePath = "engine_path"
        case parameterCount = "parameter_count"
        case loadedAt = "loaded_at"
        case requestsServed = "requests_served"
    }

    init(_ p: LoadedPolicy) {
        id = p.version
        path = p.path
        sha256 = p.sha256
        architecture = p.architecture
        parameterCount = p.parameterCount
        loadedAt = p.loadedAt
        requestsServed = p.requestsServed
        backend = p.remote?.backend
        reload = p.reload
        enginePath = p.remote?.enginePath
    }
}

/// The serving policy. A request takes the current one once and keeps it to the end, so a
/// swap never changes the weights under a running episode; the old version's weights are freed
/// when its last request ends. Earlier versions are remembered (not kept in memory) for
/// `GET /admin/policy` and rollback.
public final class PolicyHolder: @unchecked Sendable {
    // Guarded by `lock`.
    private let lock = NSLock()
    private var _current: LoadedPolicy?
    private var _history: [PolicyVersionInfo] = []
    private var _loading = false
    /// Non-nil while new episodes wait (an in-place reload drains the serving version's).
    private var _waiting: [CheckedContinuation<Void, Never>]?

    public init(_ initial: LoadedPolicy? = nil) { _current = initial }

    public var current: LoadedPolicy? { lock.withLock { _current } }

    /// Takes the current version for one request (and counts it); waits while new episodes are
    /// held back.
    func acquireForRequest() async -> LoadedPolicy? {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let wait = lock.withLock { () -> Bool in
                guard _waiting != nil else { return false }
                _waiting!.append(c)
                return true
            }
            if !wait { c.resume() }
        }
        let p = lock.withLock { _current }
        p?.countRequest()
        return p
    }

    /// Holds new episodes back (they wait in `acquireForRequest`) until `releaseEpisodes()`.
    func holdNewEpisodes() { lock.withLock { if _waiting == nil { _waiting = [] } } }

    /// Lets the held episodes go, onto the version serving now.
    func releaseEpisodes() {
        let waiting = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            defer { _waiting = nil }
            return _waiting ?? []
        }
        for c in waiting { c.resume() }
    }

    /// Earlier versions, most recent first.
    public var history: [PolicyVersionInfo] { lock.withLock { _history } }

    /// Switches atomically; returns the version replaced.
    @discardableResult
    public func set(_ p: LoadedPolicy?) -> LoadedPolicy? {
        lock.withLock {
            let old = _current
            if let old { _history.insert(PolicyVersionInfo(old), at: 0) }
            _current = p
            return old
        }
    }

    /// The most recent earlier version.
    var previous: PolicyVersionInfo? { lock.withLock { _history.first } }

    /// One load at a time.
    func beginLoad() -> Bool {
        lock.withLock {
            if _loading { return false }
            _loading = true
            return true
        }
    }
    func endLoad() { lock.withLock { _loading = false } }

    /// After a rollback the version rolled back from goes to the history like any other, and the
    /// one rolled back to is removed from it.
    func removeFromHistory(id: String) {
        lock.withLock {
            if let i = _history.firstIndex(where: { $0.id == id }) { _history.remove(at: i) }
        }
    }
}
