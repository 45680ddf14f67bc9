// A policy served by an inference engine. The gateway keeps everything that makes it a training
// gateway: it renders and tokenises the first prompt and every injection with the checkpoint's
// own tokenizer (as for the embedded engine), sends token ids, reads back the generated ids and
// their log-probs, cuts each turn at the protocol's stop rules, and continues the same sequence
// after an injection (the engine's prefix cache makes the re-sent prefix cheap). An episode
// from here is logged exactly as an embedded one.

import AsyncHTTPClient
import EpisodeLog
import Foundation
import NIOCore
import NIOFoundationCompat
import NIOHTTP1
import OpenAIWire
import PolicyEngine
import PromptR1
import Synchronization

/// Why a remote policy call failed. Each case is a policy error to the collaboration loop
/// (`on_policy_error` applies).
public enum RemotePolicyError: Error, CustomStringConvertible, Sendable, Equatable {
    case unreachable(String)
    case timeout(seconds: Double)
    case status(Int, String)
    case malformed(String)
    case circuitOpen(retryAfterSeconds: Int)
    case contextFull(limit: Int)
    case checkpoint(String)
    /// The engine's weights were reloaded in place under this episode (it would mix versions).
    case reloaded(String)

    public var description: String {
        switch self {
        case .unreachable(let m): return "policy engine unreachable: \(m)"
        case .timeout(let s): return "policy engine did not answer within \(s) s"
        case .status(let code, let body): return "policy engine answered \(code): \(body)"
        case .malformed(let m): return "policy engine returned malformed output: \(m)"
        case .circuitOpen(let s): return "policy engine circuit open (retry in \(s) s)"
        case .contextFull(let limit): return "the policy's context window (\(limit) tokens) is full"
        case .checkpoint(let m): return "policy checkpoint: \(m)"
        case .reloaded(let m): return "policy engine reloaded in place: \(m)"
        }
    }

    /// Whether it counts against the engine's health (a 4xx is our request's fault).
    var isEngineFailure: Bool {
        switch self {
        case .unreachable, .timeout, .malformed: return true
        case .status(let code, _): return code >= 500
        case .circuitOpen, .contextFull, .checkpoint, .reloaded: return false
        }
    }
}

/// Counters of one remote policy, read by `/metrics` and `gateway-bench collab`.
public final class RemotePolicyStats: @unchecked Sendable {
    public struct Snapshot: Sendable, Equatable {
        public var requests = 0
        public var failures = 0
        public var generatedTokens = 0
        public var promptTokensSent = 0
        public var cachedPromptTokens = 0
        /// Wall time of the engine calls, seconds: from sending the request to having read the
        /// whole response (HTTP round trip and the engine's work).
        public var callSeconds = 0.0
        /// What the engine reports of its own time, seconds (where it reports it).
        public var engineSeconds = 0.0
        /// The gateway's own CPU time in engine calls, seconds: building the request (JSON of the
        /// token ids), parsing the response, cutting the turn, tokenising injections. `callSeconds`
        /// minus `engineSeconds` is HTTP on both sides and the engine's own request handling.
        public var gatewaySeconds = 0.0
    }
    // Guarded by `lock`.
    private let lock = NSLock()
    private var s = Snapshot()
    public var snapshot: Snapshot { lock.withLock { s } }
    func record(_ f: (inout Snapshot) -> Void) { lock.withLock { f(&s) } }
}

/// The health of a remote policy's engine, for `/ready` and the admin API.
public struct RemotePolicyHealth: Sendable, Equatable, Codable {
    public var ok: Bool
    public var kind: String
    public var baseURL: String
    public var circuit: String
    public var detail: String?

    enum CodingKeys: String, CodingKey {
        case ok, kind, circuit, detail
        case baseURL = "base_url"
    }
}

public final class RemotePolicy: Sendable {
    public let directory: URL
    public let backend: RemotePolicyBackend
    public let tokenizer: Tokenizer
    public let config: ModelConfig
    /// Tokens that end a policy turn: `<|im_end|>` plus the checkpoint's eos ids (as `EnginePolicy`).
    public let endOfTurnIDs: Set<Int32>
    public let adapter: any EngineAdapter
    public let breaker: CircuitBreaker
    public let stats = RemotePolicyStats()
    /// SHA-256 of the checkpoint folder's weights; nil when the folder holds only the tokenizer
    /// and config (the engine has the weights).
    public let weightsSHA256: String?
    /// The model id the engine reports (`GET /v1/models`, SGLang `/get_model_info`).
    public let engineModelID: String?
    /// Where the engine reads these weights (SGLang `model_path`, vLLM `lora_path`), for an
    /// in-place rollback to them; nil for weights the engine was started with and cannot name.
    public let enginePath: String?
    let apiKey: String?
    let client: HTTPClient

    struct Live {
        /// Episodes (sessions) running on this policy.
        var sessions = 0
        /// Set while the engine's weights are no longer this policy's (an in-place reload).
        var retired: String?
    }
    let live = Mutex(Live())

    /// Episodes running on this policy now.
    public var activeSessions: Int { live.withLock { $0.sessions } }

    /// The policy version an episode records: the weights' id, or the engine's model id.
    public var version: String {
        if let weightsSHA256 { return CheckpointHash.versionID(sha256: weightsSHA256) }
        return "engine:" + (engineModelID ?? backend.model ?? backend.kind.rawValue)
    }

    init(
        directory: URL, backend: RemotePolicyBackend, tokenizer: Tokenizer, config: ModelConfig,
        endOfTurnIDs: Set<Int32>, weightsSHA256: String?, engineModelID: String?, enginePath: String? = nil,
        apiKey: String?, client: HTTPClient
    ) {
        self.directory = directory
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.endOfTurnIDs = endOfTurnIDs
        self.adapter = backend.adapter
        self.breaker = CircuitBreaker(
            failureThreshold: backend.circuitFailureThreshold,
            cooldown: .milliseconds(Int64(backend.circuitCooldownSeconds * 1000)))
        self.weightsSHA256 = weightsSHA256
        self.engineModelID = engineModelID
        self.enginePath = enginePath
        self.apiKey = apiKey
        self.client = client
    }

    /// What the gateway reads from a checkpoint folder whichever engine holds the weights.
    struct CheckpointFiles {
        var tokenizer: Tokenizer
        var config: ModelConfig
        var endOfTurnIDs: Set<Int32>
        var weightsSHA256: String?
        /// The version id of the folder's weights (nil: the folder holds none).
        var versionID: String? { weightsSHA256.map { CheckpointHash.versionID(sha256: $0) } }
    }

    static func readCheckpoint(_ directory: URL) throws -> CheckpointFiles {
        let tokenizer: Tokenizer
        let config: ModelConfig
        do {
            tokenizer = try Tokenizer(directory: directory)
            config = try ModelConfig.load(from: directory)
        } catch {
            throw RemotePolicyError.checkpoint("\(directory.path): \(error)")
        }
        guard let imEnd = tokenizer.id(of: "<|im_end|>"), tokenizer.id(of: "<|im_start|>") != nil else {
            throw RemotePolicyError.checkpoint("the tokenizer has no <|im_start|>/<|im_end|> tokens (the protocol uses Qwen's ChatML)")
        }
        var stops: Set<Int32> = [imEnd]
        let defaults = (try? GenerationDefaults.load(from: directory)) ?? GenerationDefaults()
        for id in defaults.eosTokenIds.isEmpty ? config.eosTokenIds : defaults.eosTokenIds { stops.insert(Int32(id)) }
        if let eos = tokenizer.eosTokenId { stops.insert(eos) }
        let hasWeights = ((try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? [])
            .contains { $0.hasSuffix(".safetensors") }
        let sha = hasWeights ? try CheckpointHash.weightsSHA256(directory: directory) : nil
        return CheckpointFiles(tokenizer: tokenizer, config: config, endOfTurnIDs: stops, weightsSHA256: sha)
    }

    /// Loads the checkpoint folder's tokenizer and config, checks the engine is healthy, reads
    /// its model id, and runs one smoke generation (one token from a short chat prompt). Throws
    /// if any of it fails, so a swap never switches to an engine that cannot serve. On vLLM, when
    /// the engine lists the folder's LoRA adapter (`policy-<version>`, loaded by an in-place
    /// reload, perhaps through another replica), requests name that adapter.
    public static func connect(
        directory: URL, backend: RemotePolicyBackend,
        environment: [String: String] = ProcessInfo.processInfo.environment,
        client: HTTPClient = RemotePolicy.engineClient
    ) async throws -> RemotePolicy {
        let files = try readCheckpoint(directory)
        var apiKey: String?
        if let name = backend.apiKeyEnv {
            guard let v = environment[name], !v.isEmpty else {
                throw RemotePolicyError.checkpoint("policy.backend.api_key_env: environment variable \(name) is not set")
            }
            apiKey = v
        }
        let probe = RemotePolicy(
            directory: directory, backend: backend, tokenizer: files.tokenizer, config: files.config,
            endOfTurnIDs: files.endOfTurnIDs, weightsSHA256: files.weightsSHA256, engineModelID: nil, apiKey: apiKey,
            client: client)
        let health = await probe.health()
        guard health.ok else { throw RemotePolicyError.unreachable(health.detail ?? "health check failed") }
        let info: Data? = try? await probe.get(backend.adapter.modelInfoPath)
        var modelID = info.flatMap { backend.adapter.parseModelID($0) }
        var served = backend
        if backend.kind == .vllm, let info, let version = files.versionID,
            let ids = try? VLLMAdapter().servedModelIDs(info), ids.contains(adapterName(version: version, enginePath: nil))
        {
            served.model = adapterName(version: version, enginePath: nil)
            modelID = served.model
        }
        let policy = RemotePolicy(
            directory: directory, backend: served, tokenizer: files.tokenizer, config: files.config,
            endOfTurnIDs: files.endOfTurnIDs, weightsSHA256: files.weightsSHA256, engineModelID: modelID,
            enginePath: backend.kind == .sglang ? modelID : nil, apiKey: apiKey, client: client)
        try await policy.smokeGeneration()
        return policy
    }

    /// One token from a short chat prompt; throws unless the engine answers with one.
    public func smokeGeneration() async throws {
        let probe = tokenizer.encode("<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n")
        let c = try await generate(
            EngineGenerateRequest(
                context: probe, maxTokens: 1, sampling: .greedy, stopStrings: [],
                stopTokenIDs: endOfTurnIDs.sorted(), model: backend.model))
        guard c.tokens.count == 1 else {
            throw RemotePolicyError.malformed("smoke generation returned \(c.tokens.count) tokens, expected 1")
        }
    }

    /// `GET` the engine's health path (no circuit breaker: this is how a swap or `/ready` looks).
    public func health() async -> RemotePolicyHealth {
        var h = RemotePolicyHealth(
            ok: false, kind: backend.kind.rawValue, baseURL: backend.baseURL,
            circuit: breaker.state.rawValue, detail: nil)
        do {
            _ = try await get(adapter.healthPath)
            h.ok = breaker.state != .open
            if !h.ok { h.detail = "circuit open after engine failures" }
        } catch {
            h.detail = "\(error)"
        }
        return h
    }

    /// A factory for `CollaborationLoop`.
    public func factory(sampling: SamplingParameters) -> PolicySessionFactory {
        { [self] prompt in RemotePolicySession(policy: self, promptIDs: self.tokenizer.encode(prompt), sampling: sampling) }
    }

    /// Log-probs the engine returns for episodes sampled this way.
    public func logprobKind(for sampling: SamplingParameters) -> PolicyLogprobKind { adapter.logprobKind(for: sampling) }

    // MARK: HTTP

    private func request(_ path: String, method: HTTPMethod, body: Data?) -> HTTPClientRequest {
        var r = HTTPClientRequest(url: backend.baseURL + path)
        r.method = method
        if let apiKey { r.headers.add(name: "Authorization", value: "Bearer \(apiKey)") }
        if let body {
            r.headers.add(name: "Content-Type", value: "application/json")
            r.body = .bytes(ByteBuffer(data: body))
        }
        return r
    }

    private func send(_ r: HTTPClientRequest, timeout: Double) async throws -> Data {
        let response: HTTPClientResponse
        do {
            do {
                response = try await client.execute(r, timeout: .milliseconds(Int64(timeout * 1000)))
            } catch  where Self.isStaleConnection(error) && !Task.isCancelled {
                // A pooled keep-alive connection the engine had closed (llama-server closes idle
                // ones): the request never reached it. One retry on a fresh connection; a
                // generation has no side effects, so even a repeat would be harmless.
                response = try await client.execute(r, timeout: .milliseconds(Int64(timeout * 1000)))
            }
        } catch let e as HTTPClientError where e == .deadlineExceeded || e == .readTimeout || e == .connectTimeout {
            throw RemotePolicyError.timeout(seconds: timeout)
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            if Task.isCancelled { throw CancellationError() }
            throw RemotePolicyError.unreachable("\(error)")
        }
        let body: ByteBuffer
        do { body = try await response.body.collect(upTo: 256 << 20) } catch {
            if Task.isCancelled { throw CancellationError() }
            throw RemotePolicyError.unreachable("response body: \(error)")
        }
        let data = Data(buffer: body)
        guard (200..<300).contains(Int(response.status.code)) else {
            throw RemotePolicyError.status(Int(response.status.code), String(decoding: data.prefix(500), as: UTF8.self))
        }
        return data
    }

    /// The error of a request sent on a connection that was already closed.
    static func isStaleConnection(_ error: any Error) -> Bool {
        if let e = error as? HTTPClientError, e == .remoteConnectionClosed { return true }
        if let e = error as? ChannelError, e == .ioOnClosedChannel || e == .alreadyClosed { return true }
        return false
    }

    func get(_ path: String) async throws -> Data {
        try await send(request(path, method: .GET, body: nil), timeout: min(backend.timeoutSeconds, 10))
    }

    /// A control call (an in-place reload): no circuit breaker, a deadline long enough to read
    /// a checkpoint (10 minutes, or `timeout_seconds` if longer).
    func post(_ r: EngineHTTPRequest) async throws -> Data {
        try await send(request(r.path, method: .POST, body: r.body), timeout: max(backend.timeoutSeconds, 600))
    }

    /// One generation through the circuit breaker, counted in `stats`.
    public func generate(_ g: EngineGenerateRequest) async throws -> EngineCompletion {
        if let why = live.withLock({ $0.retired }) { throw RemotePolicyError.reloaded(why) }
        if let wait = breaker.acquire() { throw RemotePolicyError.circuitOpen(retryAfterSeconds: wait) }
        let t0 = ContinuousClock.now
        do {
            let http = try adapter.generateRequest(g)
            let t1 = ContinuousClock.now
            let body = try await send(request(http.path, method: .POST, body: http.body), timeout: backend.timeoutSeconds)
            let t2 = ContinuousClock.now
            let c: EngineCompletion
            do { c = try adapter.parseGenerateResponse(body) } catch {
                throw RemotePolicyError.malformed("\(error)")
            }
            breaker.recordSuccess()
            let now = ContinuousClock.now
            let wall = (t2 - t1).seconds
            let own = (t1 - t0).seconds + (now - t2).seconds
            stats.record {
                $0.requests += 1
                $0.generatedTokens += c.tokens.count
                $0.promptTokensSent += g.context.count
                $0.cachedPromptTokens += c.cachedPromptTokens ?? 0
                $0.callSeconds += wall
                $0.engineSeconds += c.engineSeconds ?? 0
                $0.gatewaySeconds += own
            }
            return c
        } catch let e as RemotePolicyError {
            if e.isEngineFailure { breaker.recordFailure() } else { breaker.release() }
            stats.record {
                $0.requests += 1
                $0.failures += 1
            }
            throw e
        } catch {
            breaker.release()
            throw error
        }
    }
}

/// One episode's sequence on the engine. The whole sequence is re-sent each turn; the engine's
/// prefix cache finds the part it has already computed.
public final class RemotePolicySession: PolicySession, @unchecked Sendable {
    // Mutable state is touched only by the loop, which calls one method at a time.
    let policy: RemotePolicy
    let sampling: SamplingParameters
    public let promptTokenIDs: [Int32]
    private(set) var context: [Int32]

    init(policy: RemotePolicy, promptIDs: [Int32], sampling: SamplingParameters) {
        self.policy = policy
        self.sampling = sampling
        promptTokenIDs = promptIDs
        context = promptIDs
        policy.live.withLock { $0.sessions += 1 }
    }

    deinit { policy.live.withLock { $0.sessions -= 1 } }

    public var logprobKind: PolicyLogprobKind { policy.logprobKind(for: sampling) }

    public func generateTurn(limits: PolicyTurnLimits, onText: (@Sendable (String) -> Void)?) async throws -> PolicyTurn {
        let maxContext = policy.config.maxPositionEmbeddings
        let room = maxContext - context.count
        guard room > 1 else { throw RemotePolicyError.contextFull(limit: maxContext) }
        let maxTokens = min(limits.maxNewTokens, room - 1)
        let c = try await policy.generate(
            EngineGenerateRequest(
                context: context, maxTokens: maxTokens, sampling: sampling, stopStrings: limits.stopStrings,
                stopTokenIDs: policy.endOfTurnIDs.sorted(), model: policy.backend.model))
        let cutStart = ContinuousClock.now
        let cut = TurnCut.cut(
            c, maxTokens: maxTokens, endOfTurn: policy.endOfTurnIDs, stopStrings: limits.stopStrings,
            tokenBytes: { [tokenizer = policy.tokenizer] in tokenizer.tokenBytes($0) })
        let cutSeconds = (ContinuousClock.now - cutStart).seconds
        policy.stats.record { $0.gatewaySeconds += cutSeconds }
        guard !cut.tokens.isEmpty else { throw RemotePolicyError.malformed("the engine generated no token") }
        context += cut.tokens
        let reason: PolicyFinishReason =
            cut.stopTokenID != nil
            ? .endOfTurn
            : cut.stopString != nil
                ? .stopString
                : cut.tokens.count >= maxTokens || c.stop == .length ? .length : .endOfTurn
        let text = cut.text
        if let onText, !text.isEmpty { onText(text) }
        return PolicyTurn(text: text, tokenIDs: cut.tokens, logprobs: cut.logprobs, finishReason: reason)
    }

    public func appendInjected(_ text: String) async throws -> [Int32] {
        let start = ContinuousClock.now
        let ids = policy.tokenizer.encode(text)
        let seconds = (ContinuousClock.now - start).seconds
        policy.stats.record { $0.gatewaySeconds += seconds }
        context += ids
        return ids
    }
}

extension RemotePolicy {
    /// The HTTP client of every engine call. An engine that refuses the connection fails the turn
    /// at once (AsyncHTTPClient's pool otherwise retries connecting until the request's
    /// deadline, `timeout_seconds`), so `on_policy_error` and the circuit breaker act right away;
    /// an engine that does not answer the connection at all fails after 5 s.
    public static let engineClient: HTTPClient = {
        var c = HTTPClient.Configuration()
        c.connectionPool.retryConnectionEstablishment = false
        c.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = 64
        c.timeout.connect = .seconds(5)
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: c)
    }()
}

extension Duration {
    var seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}
