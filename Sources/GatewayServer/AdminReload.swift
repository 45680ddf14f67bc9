// `POST /admin/policy` with `"reload": "in_place"`, and the rollback of a version reloaded that
// way: the serving engine loads the checkpoint with its own documented call (RemotePolicy's
// `reloadInPlace`: vLLM LoRA adapters, SGLang `/update_weights_from_disk`), is checked like a
// blue/green switch (its state, one smoke generation), the version is recorded in the shared
// log, and the gateway switches to it. Any failure leaves the previous version serving.

import Foundation
import Hummingbird
import OpenAIWire
import RemotePolicy

extension AdminRoutes {
    /// Reloads the serving engine with the checkpoint folder `raw` (`enginePath`: where the
    /// engine reads it; nil: the gateway's own path), or, for a rollback, with the weights of
    /// `rollbackTo`.
    func reloadInPlace(to raw: String, enginePath: String?, rollbackTo previous: PolicyVersionInfo? = nil) async throws -> Response {
        let path = try Self.confine(raw, modelsDir: modelsDir)
        guard let current = holder.current, let remote = current.remote else {
            throw GatewayError(
                status: 400,
                message:
                    "\"reload\": \"in_place\" reloads the weights of the inference engine serving the policy, but the policy runs in the gateway's own engine: load the checkpoint with \"reload\": \"blue_green\" (the default).",
                type: "invalid_request_error", param: "reload", code: "reload_unsupported")
        }
        if case .unsupported(let why) = remote.adapter.inPlaceReload {
            throw GatewayError(status: 400, message: why, type: "invalid_request_error", param: "reload", code: "reload_unsupported")
        }
        guard holder.beginLoad() else {
            throw GatewayError(
                status: 409, message: "Another policy load is in progress.", type: "invalid_request_error", code: "load_in_progress")
        }
        defer { holder.endLoad() }
        let start = ContinuousClock.now
        let target: ReloadTarget =
            previous.map { .earlier(enginePath: $0.enginePath, servedModel: $0.backend?.model) }
            ?? .checkpoint(enginePath: enginePath ?? path)
        // SGLang replaces the weights under every episode: the serving version's episodes finish
        // first, and new ones wait (at most the episode deadline) for the new weights.
        let drains = remote.adapter.inPlaceReload == .weightsFromDisk
        if drains { holder.holdNewEpisodes() }
        defer { if drains { holder.releaseEpisodes() } }
        if drains {
            let limit = state.config.policy.episodeDeadlineSeconds + 5
            guard await remote.drain(timeout: .milliseconds(Int64(limit * 1000))) else {
                throw GatewayError(
                    status: 503,
                    message:
                        "\(remote.activeSessions) episodes still run on version \(current.version) after \(Int(limit)) s; the engine was not reloaded and that version still serves.",
                    type: "server_error", code: "drain_timeout")
            }
        }
        let fresh: RemotePolicy
        do throws(InPlaceReloadError) {
            fresh = try await remote.reloadInPlace(directory: URL(fileURLWithPath: path), target: target)
        } catch {
            state.logger.error(
                "in-place policy reload failed",
                metadata: [
                    "path": "\(path)", "backend": "\(remote.backend.kind.rawValue)", "serving": "\(current.version)", "error": "\(error)",
                ])
            throw Self.reloadError(error, serving: current.version)
        }
        let loaded = LoadedPolicy(remote: fresh, path: path, reload: .inPlace)
        do {
            try await policySync.record(loaded, action: previous == nil ? .swap : .rollback)
        } catch {
            let restored = await remote.restoreEngine()
            throw GatewayError(
                status: 503,
                message:
                    "The traffic log could not record the new version; "
                    + (restored
                        ? "the engine serves the previous weights again and version \(current.version) still serves"
                        : "the engine could NOT be given the previous weights back") + ": \(error)",
                type: "server_error", code: "log_unavailable")
        }
        let old = holder.set(loaded)
        if let previous { holder.removeFromHistory(id: previous.id) }
        state.metrics.swapped()
        state.logger.notice(
            "policy reloaded in place",
            metadata: [
                "version": "\(loaded.version)", "path": "\(path)", "previous": "\(old?.version ?? "none")",
                "backend": "\(fresh.backend.kind.rawValue)", "engine_path": "\(fresh.enginePath ?? "")",
                "model": "\(fresh.backend.model ?? "")", "rollback": "\(previous != nil)",
            ])
        return try Self.encode(
            SwapReply(
                current: PolicyVersionInfo(loaded), previous: old.map(PolicyVersionInfo.init),
                loadSeconds: (ContinuousClock.now - start).milliseconds / 1000))
    }

    /// The OpenAI-shaped error of a failed in-place reload; the serving version is unchanged.
    static func reloadError(_ error: InPlaceReloadError, serving: String) -> GatewayError {
        let unchanged = "version \(serving) still serves"
        switch error {
        case .unsupported(let m):
            return GatewayError(status: 400, message: m, type: "invalid_request_error", param: "reload", code: "reload_unsupported")
        case .checkpoint:
            return GatewayError(
                status: 422, message: "The checkpoint could not be loaded; \(unchanged): \(error)", type: "invalid_request_error",
                param: "path", code: "invalid_checkpoint")
        case .refused:
            return GatewayError(
                status: 422, message: "The policy engine refused the reload; \(unchanged): \(error)", type: "invalid_request_error",
                param: "path", code: "reload_refused")
        case .engineFailed:
            return GatewayError(
                status: 502, message: "The policy engine could not reload; \(unchanged): \(error)", type: "server_error",
                code: "engine_reload_failed")
        case .smokeFailed(_, let restored):
            return GatewayError(
                status: 502,
                message:
                    "The policy engine reloaded but failed its check; \(restored ? unchanged : "the engine's state is unknown"): \(error)",
                type: "server_error", code: "reload_check_failed")
        }
    }
}
