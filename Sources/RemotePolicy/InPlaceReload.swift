// In-place reloads: new weights on the engine that serves the policy now, through the engine's
// own documented call (`InPlaceReload`), checked as a blue/green switch is (the engine's state
// afterwards, one smoke generation) before the gateway serves them. The previous weights keep
// serving when any step fails.
//
// - vLLM: the weights become a LoRA adapter of their own, `policy-<version>`
//   (`POST /v1/load_lora_adapter`); the new policy's requests name it as `model`. The previous
//   adapter (or the base model) stays loaded, so episodes in flight finish on it, and a rollback
//   names it again without loading anything.
// - SGLang: `POST /update_weights_from_disk` replaces the weights the engine serves. Turns in
//   flight finish first (the engine's model-update lock), but an episode's NEXT turn would run on
//   the new weights; the gateway therefore drains the episodes of the old version before the
//   call (`activeSessions`, new episodes wait: `PolicyHolder`) and retires the old policy, so
//   that no episode mixes versions.
// - llama.cpp: none (`InPlaceReload.unsupported`).

import EpisodeLog
import Foundation

/// Which weights an in-place reload brings to the engine.
public enum ReloadTarget: Sendable, Equatable {
    /// A new checkpoint, at `enginePath` on the engine's side.
    case checkpoint(enginePath: String)
    /// Weights this engine served before (a rollback): vLLM's adapter or base model
    /// `servedModel` (loaded again from `enginePath` if the engine no longer lists it), SGLang's
    /// `enginePath`.
    case earlier(enginePath: String?, servedModel: String?)
}

/// Why an in-place reload did not happen. In every case the previous weights still serve,
/// except `smokeFailed(_, restored: false)`.
public enum InPlaceReloadError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The engine has no in-place reload (llama.cpp).
    case unsupported(String)
    /// The checkpoint folder cannot be read (tokenizer, config, weights' digest).
    case checkpoint(String)
    /// The engine refused the reload (a 4xx, `success: false`); it serves what it served.
    case refused(String)
    /// The engine could not be asked, or failed (unreachable, timeout, 5xx, malformed answer).
    case engineFailed(String)
    /// The engine reloaded, but its state or the smoke generation was wrong; `restored` says
    /// whether it serves the previous weights again.
    case smokeFailed(String, restored: Bool)

    public var description: String {
        switch self {
        case .unsupported(let m): return m
        case .checkpoint(let m): return "the checkpoint folder could not be read: \(m)"
        case .refused(let m): return "the engine refused the reload: \(m)"
        case .engineFailed(let m): return "the engine's reload call failed: \(m)"
        case .smokeFailed(let m, let restored):
            return "the engine reloaded but did not pass the check (\(m)); "
                + (restored ? "the previous weights were reloaded and serve again" : "the previous weights could NOT be reloaded")
        }
    }
}

extension RemotePolicy {
    /// The LoRA adapter name of a checkpoint on vLLM: `policy-<version id>`, or, for a folder
    /// without weights, `policy-<last component of the engine's path>`.
    public static func adapterName(version: String?, enginePath: String?) -> String {
        if let version { return "policy-" + version }
        let last = (enginePath.map { ($0 as NSString).lastPathComponent } ?? "").filter {
            $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" || $0 == "."
        }
        return "policy-" + (last.isEmpty ? "weights" : last)
    }

    /// Waits until no episode runs on this policy, at most `timeout`; true when none does.
    public func drain(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while activeSessions > 0 {
            if ContinuousClock.now >= deadline { return false }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return true
    }

    func retire(_ why: String?) { live.withLock { $0.retired = why } }

    /// Loads `target` into this policy's engine with the engine's documented call and returns
    /// the policy that serves it (the checkpoint folder `directory` gives its tokenizer and
    /// version). Callers drain this policy's episodes first on SGLang.
    public func reloadInPlace(directory: URL, target: ReloadTarget) async throws(InPlaceReloadError) -> RemotePolicy {
        let files: CheckpointFiles
        do { files = try Self.readCheckpoint(directory) } catch { throw .checkpoint("\(error)") }
        switch adapter.inPlaceReload {
        case .unsupported(let why): throw .unsupported(why)
        case .loraAdapter: return try await reloadAdapter(directory, files, target)
        case .weightsFromDisk: return try await reloadFromDisk(directory, files, target)
        }
    }

    /// After an in-place reload the gateway could not keep (its traffic log refused the new
    /// version): the engine serves this policy's weights again. True when it does.
    public func restoreEngine() async -> Bool {
        switch adapter.inPlaceReload {
        case .loraAdapter, .unsupported: return true  // this policy's adapter never left
        case .weightsFromDisk:
            guard let enginePath else { return false }
            do {
                let r = try SGLangAdapter().updateWeightsRequest(modelPath: enginePath, weightVersion: versionLabel)
                try SGLangAdapter().parseUpdateWeightsResponse(try await post(r))
            } catch { return false }
            retire(nil)
            return true
        }
    }

    /// The label of these weights on the engine (SGLang `weight_version`): the version id of the
    /// folder's weights.
    var versionLabel: String? { weightsSHA256.map { CheckpointHash.versionID(sha256: $0) } }

    private func successor(
        _ directory: URL, _ files: CheckpointFiles, backend: RemotePolicyBackend, engineModelID: String?, enginePath: String?
    ) -> RemotePolicy {
        RemotePolicy(
            directory: directory, backend: backend, tokenizer: files.tokenizer, config: files.config,
            endOfTurnIDs: files.endOfTurnIDs, weightsSHA256: files.weightsSHA256, engineModelID: engineModelID,
            enginePath: enginePath, apiKey: apiKey, client: client)
    }

    /// One control call; the engine's 4xx is a refusal, anything else a failure.
    private func call<T>(_ what: String, _ body: () async throws -> T) async throws(InPlaceReloadError) -> T {
        do { return try await body() } catch let e as RemotePolicyError {
            if case .status(let code, let text) = e, code < 500 {
                throw .refused("\(what) answered \(code): \(Self.engineMessage(text))")
            }
            throw .engineFailed("\(what): \(e)")
        } catch {
            throw .engineFailed("\(what): \(error)")
        }
    }

    /// The message of an engine's error body (`{"message"}`, `{"error": {"message"}}`), or the body.
    static func engineMessage(_ body: String) -> String {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] else { return body }
        if let m = o["message"] as? String { return m }
        if let e = o["error"] as? [String: Any], let m = e["message"] as? String { return m }
        if let m = o["detail"] as? String { return m }
        return body
    }

    private func reloadAdapter(
        _ directory: URL, _ files: CheckpointFiles, _ target: ReloadTarget
    ) async throws(InPlaceReloadError) -> RemotePolicy {
        let vllm = VLLMAdapter()
        let name: String?
        let path: String?
        switch target {
        case .checkpoint(let p):
            name = Self.adapterName(version: files.versionID, enginePath: p)
            path = p
        case .earlier(let p, let m):
            name = m
            path = p
        }
        var loadedNow = false
        if let name {
            let listed = try await call("GET /v1/models") { try vllm.servedModelIDs(try await get("/v1/models")) }
            if !listed.contains(name) {
                guard let path else { throw .refused("the engine no longer serves '\(name)' and no path to load it from is known") }
                let r: EngineHTTPRequest
                do { r = try vllm.loadLoRARequest(name: name, path: path) } catch { throw .engineFailed("\(error)") }
                _ = try await call(
                    "POST /v1/load_lora_adapter (it needs vLLM started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True)"
                ) {
                    try await post(r)
                }
                loadedNow = true
            }
        }
        var served = backend
        served.model = name
        let fresh = successor(directory, files, backend: served, engineModelID: name ?? engineModelID, enginePath: path)
        do { try await fresh.smokeGeneration() } catch {
            // The previous adapter never left; the new one goes again.
            if loadedNow, let name, let r = try? vllm.unloadLoRARequest(name: name) { _ = try? await post(r) }
            throw .smokeFailed("\(error)", restored: true)
        }
        return fresh
    }

    private func reloadFromDisk(
        _ directory: URL, _ files: CheckpointFiles, _ target: ReloadTarget
    ) async throws(InPlaceReloadError) -> RemotePolicy {
        let sglang = SGLangAdapter()
        let path: String
        switch target {
        case .checkpoint(let p): path = p
        case .earlier(let p, _):
            guard let p else { throw .refused("the engine path of the earlier version is not known") }
            path = p
        }
        let label = files.versionID
        let r: EngineHTTPRequest
        do { r = try sglang.updateWeightsRequest(modelPath: path, weightVersion: label) } catch { throw .engineFailed("\(error)") }
        // From here until the gateway switches, an episode of this policy would mix weights.
        retire("the engine now serves \(path)")
        do throws(InPlaceReloadError) {
            let body = try await call("POST /update_weights_from_disk") { try await post(r) }
            do { try sglang.parseUpdateWeightsResponse(body) } catch { throw InPlaceReloadError.refused("\(error)") }
        } catch {
            // SGLang keeps (or reloads) its previous weights when an update fails.
            retire(nil)
            throw error
        }
        var problem: String?
        var modelID: String? = path
        do {
            let info = try sglang.parseModelInfo(try await get(sglang.modelInfoPath))
            modelID = info.model_path
            if info.model_path != path {
                problem = "GET /get_model_info reports model_path \(info.model_path), not \(path)"
            } else if let label, let reported = info.weight_version, reported != label {
                problem = "GET /get_model_info reports weight_version \(reported), not \(label)"
            }
        } catch {
            problem = "GET /get_model_info: \(error)"
        }
        let fresh = successor(directory, files, backend: backend, engineModelID: modelID, enginePath: path)
        if problem == nil {
            do { try await fresh.smokeGeneration() } catch { problem = "smoke generation: \(error)" }
        }
        if let problem {
            let restored = await restoreEngine()
            throw .smokeFailed(problem, restored: restored)
        }
        return fresh
    }
}
