import Foundation
import Logging
import NIOPosix
import PolicyEngine
import RemotePolicy
import Synchronization
import TrafficLog

/// One serving policy version across every replica that shares a traffic log.
///
/// The log's `policy_events` table says which version the fleet serves: its latest row. A swap
/// or rollback through any replica's admin API appends a row (`record`) before that replica
/// switches. Every replica watches the table: PostgreSQL notifies at once (LISTEN/NOTIFY), and
/// every `pollInterval` each replica looks anyway (the fallback, and the only way on SQLite).
/// A replica whose version differs loads the recorded checkpoint from the path resolved under
/// its own `admin.models_dir`, checks its weights digest is the recorded version, and
/// switches. With `policy.backend` set it loads no weights: it connects its engine to the
/// recorded folder (tokenizer, version; on vLLM the folder's LoRA adapter if the engine lists it). When that fails it keeps serving the old version, says so in `/ready` and
/// `GET /admin/policy`, and tries again at the next check.
public final class PolicySync: Sendable {
    /// What `GET /admin/policy` shows under `fleet`.
    public struct Status: Sendable, Equatable, Encodable {
        /// The version the shared log says to serve (nil: none recorded yet).
        public var version: String?
        public var path: String?
        public var seq: Int64?
        /// This replica serves `version`.
        public var inSync: Bool
        /// Why this replica does not serve `version` (a failed load or an unreachable log).
        public var error: String?
        public var checkedAt: Date?

        enum CodingKeys: String, CodingKey {
            case version, path, seq, error
            case inSync = "in_sync"
            case checkedAt = "checked_at"
        }
    }

    let backend: any LogBackend
    let holder: PolicyHolder
    let modelsDir: String
    /// The configured `policy` section (read at each switch: a config reload may change its backend).
    let policyConfig: @Sendable () -> GatewayConfig.Policy
    let replica: String
    let pollInterval: Duration
    let logger: Logger
    /// Called with the policy about to be switched to (metrics hooks, counters).
    let onSwitch: @Sendable (LoadedPolicy) -> Void
    private let state = Mutex(Status(inSync: true))

    init(
        backend: any LogBackend, holder: PolicyHolder, modelsDir: String,
        policyConfig: @escaping @Sendable () -> GatewayConfig.Policy,
        pollInterval: Duration, logger: Logger, onSwitch: @escaping @Sendable (LoadedPolicy) -> Void = { _ in }
    ) {
        self.backend = backend
        self.holder = holder
        self.modelsDir = modelsDir
        self.policyConfig = policyConfig
        self.pollInterval = pollInterval
        self.logger = logger
        self.onSwitch = onSwitch
        replica = "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)"
    }

    public var status: Status { state.withLock { $0 } }

    /// `path` as recorded: relative to the models directory when it is inside it, so that
    /// each replica resolves it under its own.
    func recordedPath(_ path: String) -> String {
        let base = URL(fileURLWithPath: modelsDir).standardizedFileURL.resolvingSymlinksInPath().path
        let real = URL(fileURLWithPath: path).standardizedFileURL.resolvingSymlinksInPath().path
        return real.hasPrefix(base + "/") ? String(real.dropFirst(base.count + 1)) : real
    }

    /// Records a version this replica is about to serve (admin swap or rollback). Throws when
    /// the shared log cannot record it; the caller then keeps its old version.
    func record(_ loaded: LoadedPolicy, action: PolicyEventRecord.Action) async throws {
        try await backend.insertPolicyVersion(loaded.record)
        let event = try await backend.recordPolicyEvent(
            PolicyEventRecord(
                versionID: loaded.version, path: recordedPath(loaded.path), action: action, replica: replica))
        state.withLock { s in
            s = Status(version: event.versionID, path: event.path, seq: event.seq, inSync: true, error: nil, checkedAt: Date())
        }
    }

    /// Checks until cancelled: at start, on every notification, and every `pollInterval`.
    func run() async {
        let (triggers, trigger) = AsyncStream<Void>.makeStream(bufferingPolicy: .bufferingNewest(1))
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [pollInterval] in
                while !Task.isCancelled {
                    trigger.yield()
                    try? await Task.sleep(for: pollInterval)
                }
            }
            group.addTask { [self] in await listen(trigger) }
            group.addTask { [self] in
                for await _ in triggers {
                    if Task.isCancelled { break }
                    await check()
                }
            }
            // Runs until the caller's task is cancelled (graceful shutdown).
            await withTaskCancellationHandler {
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            } onCancel: {
                trigger.finish()
            }
            group.cancelAll()
        }
    }

    /// Turns the backend's notifications into checks; listens again after a lost connection.
    private func listen(_ trigger: AsyncStream<Void>.Continuation) async {
        while !Task.isCancelled {
            do {
                guard let events = try await backend.policyEventNotifications() else { return }  // SQLite: poll only
                for try await _ in events { trigger.yield() }
            } catch {
                logger.debug("policy event notifications interrupted; listening again", metadata: ["error": "\(error)"])
            }
            try? await Task.sleep(for: .seconds(1))
        }
    }

    /// Brings this replica to the fleet's version, or records why it could not.
    func check() async {
        let latest: PolicyEventRecord?
        do {
            if let recorded = try await backend.latestPolicyEvent() {
                latest = recorded
            } else {
                latest = try await firstEvent()
            }
        } catch {
            fail("the shared traffic log could not be read: \(error)")
            return
        }
        guard let latest else {
            state.withLock { $0 = Status(inSync: true, checkedAt: Date()) }
            return
        }
        if holder.current?.version == latest.versionID {
            state.withLock { $0 = Status(version: latest.versionID, path: latest.path, seq: latest.seq, inSync: true, checkedAt: Date()) }
            return
        }
        state.withLock { s in
            s.version = latest.versionID
            s.path = latest.path
            s.seq = latest.seq
            s.inSync = false
            s.checkedAt = Date()
        }
        guard holder.beginLoad() else { return }  // an admin load is under way; check again later
        defer { holder.endLoad() }
        let loaded: LoadedPolicy
        do {
            let path = try AdminRoutes.confine(latest.path, modelsDir: modelsDir)
            loaded = try await LoadedPolicy.load(path: path, config: policyConfig())
        } catch {
            fail(
                "policy version \(latest.versionID) (recorded by \(latest.replica ?? "another replica") at '\(latest.path)') could not be loaded; still serving \(holder.current?.version ?? "none"): \(error)"
            )
            return
        }
        guard loaded.version == latest.versionID else {
            fail(
                "the checkpoint at '\(latest.path)' has version \(loaded.version), not the recorded \(latest.versionID); still serving \(holder.current?.version ?? "none")"
            )
            return
        }
        // A newer event may have arrived while loading: switch only if this is still the one.
        if let now = try? await backend.latestPolicyEvent(), now.seq != latest.seq {
            return
        }
        try? await backend.insertPolicyVersion(loaded.record)
        onSwitch(loaded)
        let old = holder.set(loaded)
        if latest.action == .rollback { holder.removeFromHistory(id: loaded.version) }
        state.withLock { $0 = Status(version: latest.versionID, path: latest.path, seq: latest.seq, inSync: true, checkedAt: Date()) }
        logger.notice(
            "policy switched to the version recorded in the shared log",
            metadata: [
                "version": "\(loaded.version)", "previous": "\(old?.version ?? "none")",
                "recorded_by": "\(latest.replica ?? "")", "seq": "\(latest.seq ?? 0)",
            ])
    }

    /// On a log without policy events, the serving version (if any) becomes the first.
    private func firstEvent() async throws -> PolicyEventRecord? {
        guard let current = holder.current else { return nil }
        try await backend.insertPolicyVersion(current.record)
        return try await backend.recordFirstPolicyEvent(
            PolicyEventRecord(
                versionID: current.version, path: recordedPath(current.path), action: .start, replica: replica))
    }

    private func fail(_ message: String) {
        let changed = state.withLock { s -> Bool in
            let changed = s.error != message
            s.error = message
            s.inSync = false
            s.checkedAt = Date()
            return changed
        }
        if changed { logger.error("policy version sync failed; will retry", metadata: ["error": "\(message)"]) }
    }
}
