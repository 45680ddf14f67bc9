// SGLang's native `POST /generate` (docs: "SGLang Native APIs" and "Sampling Parameters",
// io_struct.py GenerateReqInput):
// - `input_ids`: the token ids, never text;
// - `return_logprob: true` (`logprob_start_len: -1`: output tokens only):
//   `meta_info.output_token_logprobs` is `[[logprob, token_id, text-or-null], ...]`, one per
//   generated token, which gives the ids and log-probs together;
// - `sampling_params` with `stop`, `stop_token_ids`, `no_stop_trim: true` and
//   `skip_special_tokens: false`; the gateway cuts the turn itself (`TurnCut`).
// RadixAttention caches the shared prefix across turns and episodes.
// Log-probs: SGLang's sampler returns the log-probs of the distribution it sampled from (after
// temperature) unless the server runs with SGLANG_RETURN_ORIGINAL_LOGPROB=1; greedy requests
// return the plain log-softmax. Logged as `sampling` when sampled, `model` when greedy.
// In-place reload (docs: "SGLang for RL Systems", "Update Weights from Disk"; "SGLang Native
// APIs"): `POST /update_weights_from_disk` with `model_path` (and the optional `weight_version`
// label) answers `{"success": true, "message": "Succeeded to update model weights.", ...}`, or
// `success: false` with the reason (HTTP 400). The server takes its model-update lock as a
// writer: the requests running finish first, new ones wait until the new weights serve.
// Afterwards `GET /get_model_info` reports the new `model_path` and `weight_version`.

import Foundation
import PolicyEngine
import PromptR1

public struct SGLangAdapter: EngineAdapter {
    public init() {}
    public var kind: RemotePolicyBackend.Kind { .sglang }

    public func logprobKind(for sampling: SamplingParameters) -> PolicyLogprobKind {
        sampling.isGreedy ? .model : .sampling
    }

    struct Request: Encodable {
        struct Sampling: Encodable {
            var max_new_tokens: Int
            var temperature: Float
            var top_p: Float
            var top_k: Int
            var stop: [String]
            var stop_token_ids: [Int32]
            var no_stop_trim = true
            var skip_special_tokens = false
            var sampling_seed: UInt64?
        }
        var input_ids: [Int32]
        var sampling_params: Sampling
        var return_logprob = true
        var logprob_start_len = -1
        var top_logprobs_num = 0
        var stream = false
    }

    public func generateRequest(_ r: EngineGenerateRequest) throws -> EngineHTTPRequest {
        let greedy = r.sampling.isGreedy
        let s = Request.Sampling(
            max_new_tokens: r.maxTokens, temperature: greedy ? 0 : r.sampling.temperature,
            top_p: greedy ? 1 : r.sampling.topP,
            top_k: greedy || r.sampling.topK <= 0 ? -1 : r.sampling.topK,
            stop: r.stopStrings, stop_token_ids: r.stopTokenIDs, sampling_seed: r.sampling.seed)
        return EngineHTTPRequest(path: "/generate", body: try encode(Request(input_ids: r.context, sampling_params: s)))
    }

    /// One `[logprob, token_id, text]` triple.
    struct TokenLogprob: Decodable {
        var logprob: Float?
        var id: Int32
        init(from decoder: Decoder) throws {
            var c = try decoder.unkeyedContainer()
            logprob = try c.decodeIfPresent(Float.self)
            id = try c.decode(Int32.self)
        }
    }

    struct Response: Decodable {
        struct Finish: Decodable { var type: String }
        struct Meta: Decodable {
            var finish_reason: Finish?
            var output_token_logprobs: [TokenLogprob]?
            var cached_tokens: Int?
            var e2e_latency: Double?
        }
        var output_ids: [Int32]?
        var meta_info: Meta
    }

    public func parseGenerateResponse(_ body: Data) throws -> EngineCompletion {
        let r = try decode(Response.self, body, what: "generate response")
        guard let lps = r.meta_info.output_token_logprobs else {
            throw EngineResponseError("sglang: no meta_info.output_token_logprobs")
        }
        let ids = lps.map(\.id)
        if let out = r.output_ids, out != ids {
            throw EngineResponseError("sglang: output_ids \(out) differ from the ids of output_token_logprobs \(ids)")
        }
        let stop: EngineStop
        switch r.meta_info.finish_reason?.type {
        case "stop": stop = .stopString
        case "length": stop = .length
        default: throw EngineResponseError("sglang: unknown finish_reason \(r.meta_info.finish_reason?.type ?? "null")")
        }
        return EngineCompletion(
            tokens: ids, logprobs: lps.map { $0.logprob ?? .nan }, stop: stop,
            cachedPromptTokens: r.meta_info.cached_tokens, engineSeconds: r.meta_info.e2e_latency)
    }

    public var healthPath: String { "/health" }
    public var modelInfoPath: String { "/get_model_info" }
    public struct ModelInfo: Decodable, Sendable, Equatable {
        public var model_path: String
        public var weight_version: String?
    }
    public func parseModelID(_ body: Data) -> String? {
        (try? JSONDecoder().decode(ModelInfo.self, from: body))?.model_path
    }
    public func parseModelInfo(_ body: Data) throws -> ModelInfo {
        try decode(ModelInfo.self, body, what: "model info")
    }

    public var inPlaceReload: InPlaceReload { .weightsFromDisk }

    struct UpdateWeights: Encodable {
        var model_path: String
        var weight_version: String?
    }

    /// `POST /update_weights_from_disk`: the checkpoint at `modelPath` (on the engine's side),
    /// labelled `weightVersion` (the gateway's version id) when there is one.
    public func updateWeightsRequest(modelPath: String, weightVersion: String?) throws -> EngineHTTPRequest {
        EngineHTTPRequest(
            path: "/update_weights_from_disk", body: try encode(UpdateWeights(model_path: modelPath, weight_version: weightVersion)))
    }

    struct UpdateWeightsResponse: Decodable {
        var success: Bool
        var message: String?
    }

    /// Throws unless the engine says the update succeeded.
    public func parseUpdateWeightsResponse(_ body: Data) throws {
        let r = try decode(UpdateWeightsResponse.self, body, what: "update_weights_from_disk response")
        guard r.success else { throw EngineResponseError("sglang: \(r.message ?? "update_weights_from_disk failed")") }
    }
}
