import EpisodeLog
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOPosix
import OpenAIWire
import PromptR1
import TrafficLog

/// What every handler shares: configuration, the upstream client, auth, the traffic log.
/// Swappable pieces (config on reload) sit behind a lock.
public final class GatewayState: @unchecked Sendable {
    // `_config` and `_auth` are guarded by `lock`; everything else is immutable.
    private let lock = NSLock()
    private var _config: GatewayConfig
    private var _auth: ClientAuth
    public let upstream: UpstreamClient
    /// The traffic log (SQLite or PostgreSQL), for everything but the writer's batches.
    public let database: any LogBackend
    public let writer: LogWriter
    public let logger: Logger
    public let metrics = GatewayMetrics()
    let limiter: ConcurrencyLimiter
    let scanner = JSONScanner(maxDepth: 64)

    public init(
        config: GatewayConfig, auth: ClientAuth, upstream: UpstreamClient, database: any LogBackend,
        writer: LogWriter, logger: Logger
    ) {
        _config = config
        _auth = auth
        self.upstream = upstream
        self.database = database
        self.writer = writer
        self.logger = logger
        limiter = ConcurrencyLimiter(limit: config.limits.maxConcurrentRequests)
    }

    public var config: GatewayConfig { lock.withLock { _config } }
    /// Read on every request: without copying the whole configuration.
    var durability: GatewayConfig.Durability { lock.withLock { _config.log.durability } }
    public var auth: ClientAuth { lock.withLock { _auth } }

    /// Applies a reloaded config file: routes, keys, limits and the other reloadable settings.
    /// `baseline` is what the file said before; when a key that needs a restart changed in the
    /// file, nothing is applied and the error names the keys. Those keys keep their running
    /// values (which may come from the command line).
    public func reload(config new: GatewayConfig, baseline: GatewayConfig?, auth: ClientAuth) throws {
        if let baseline {
            let changed = new.restartOnlyChanges(from: baseline)
            if !changed.isEmpty {
                throw ConfigError(
                    path: changed[0],
                    problem: "changed in the file, but \(changed.joined(separator: ", ")) take effect only on restart; nothing was reloaded"
                )
            }
        }
        lock.withLock {
            var c = new
            c.server = _config.server
            c.upstream = _config.upstream
            c.admin = _config.admin
            c.limits.maxHeaderBytes = _config.limits.maxHeaderBytes
            let durability = c.log.durability
            let redact = c.log.redactBodies
            c.log = _config.log
            c.log.durability = durability
            c.log.redactBodies = redact
            c.policy.path = _config.policy.path
            c.policy.weights = _config.policy.weights
            _config = c
            _auth = auth
        }
        limiter.resize(to: new.limits.maxConcurrentRequests)
    }

    /// Writes an episode to the traffic log with the configured durability: with
    /// `commit_before_response` the call returns once the row is committed.
    func record(_ episode: EpisodeRecord) async {
        metrics.observe(episode)
        RequestTrace.current?.noteEpisode(episode)
        // The log writer has its own thread. A request that waits for it (commit before
        // response, or a full queue) continues on the event loop it came from, which owns its
        // connection: one wake-up of that loop instead of a wake-up elsewhere and a hop back.
        var resumer: LogWriter.Resumer?
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop {
            resumer = { job in loop.execute(job) }
        }
        do {
            if durability == .async {
                try await writer.append(episode, resumer: resumer)
            } else {
                try await writer.appendAndWait(episode, resumer: resumer)
            }
        } catch {
            // Only possible after shutdown began; the request itself already completed.
            logger.error("traffic log rejected an episode", metadata: ["episode": "\(episode.id)", "error": "\(error)"])
        }
    }

    /// The request JSON as logged: verbatim, or with message contents replaced by their length.
    func loggedRequest(_ bytes: [UInt8]) -> String {
        guard config.log.redactBodies else { return String(decoding: bytes, as: UTF8.self) }
        guard var obj = (try? JSONSerialization.jsonObject(with: Data(bytes))) as? [String: Any] else {
            return "[redacted \(bytes.count) bytes]"
        }
        if let messages = obj["messages"] as? [[String: Any]] {
            obj["messages"] = messages.map { m -> [String: Any] in
                var m = m
                if let c = m["content"] as? String {
                    m["content"] = "[redacted \(c.utf8.count) bytes]"
                } else if m["content"] != nil {
                    m["content"] = "[redacted]"
                }
                return m
            }
        }
        if obj["input"] != nil { obj["input"] = "[redacted]" }
        if obj["instructions"] != nil { obj["instructions"] = "[redacted]" }
        if obj["prompt"] != nil { obj["prompt"] = "[redacted]" }
        let data = (try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// Response text as logged.
    func loggedResponse(_ text: String?) -> String? {
        guard let text else { return nil }
        return config.log.redactBodies ? "[redacted \(text.utf8.count) bytes]" : text
    }

    /// The collaboration question as logged.
    func loggedQuestion(_ text: String) -> String {
        config.log.redactBodies ? "[redacted \(text.utf8.count) bytes]" : text
    }

    /// An episode's turn rows as logged. Redaction replaces every text and drops the token ids
    /// (they decode back to the text); such an episode cannot be trained on.
    func turnRows(_ e: PromptR1.Episode) -> EpisodeMapping.TurnRows {
        let redact = config.log.redactBodies
        var rows = EpisodeMapping.turnRows(e, redact: { t in t.map { redact ? "[redacted \($0.utf8.count) bytes]" : $0 } })
        if redact {
            for i in rows.turns.indices {
                rows.turns[i].inputIDs = nil
                rows.turns[i].outputIDs = nil
                rows.turns[i].logprobs = nil
                rows.turns[i].lossMask = nil
            }
        }
        return rows
    }
}

extension ContinuousClock.Instant {
    func ms(since start: ContinuousClock.Instant) -> Double { (self - start).milliseconds }
}
