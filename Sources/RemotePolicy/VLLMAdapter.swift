// vLLM's OpenAI-compatible server, `POST /v1/completions` (docs: "OpenAI-Compatible Server",
// and vllm.entrypoints.openai completion protocol, CompletionRequest):
// - `prompt` as a list of token ids (vLLM accepts token-id prompts on the completions API);
// - `return_token_ids: true`: each choice carries `token_ids` (and `prompt_token_ids`);
// - `logprobs: 1`: `choices[0].logprobs.token_logprobs`, one per generated token;
// - `stop` + `include_stop_str_in_output` + `stop_token_ids` + `skip_special_tokens: false`, so
//   the engine stops where the protocol stops and leaves the ids alone; the gateway cuts the turn
//   itself (`TurnCut`).
// Prefix caching (`--enable-prefix-caching`, on by default in V1) makes the re-sent prefix cheap.
// Log-probs: vLLM's sampler returns `raw_logprobs` by default, the model's log-softmax before
// temperature, penalties, top-k and top-p (`--logprobs-mode`), so they are logged as `model`.
// In-place reload (docs: "LoRA Adapters", "Dynamically serving LoRA Adapters"; the server runs
// with `--enable-lora` and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True): `POST /v1/load_lora_adapter`
// with `lora_name` and `lora_path` answers 200 and a plain-text "Success: ..." body, an error
// object otherwise; the adapter is then listed by `GET /v1/models` and served to requests that
// name it as `model`. `POST /v1/unload_lora_adapter` with `lora_name` removes it.

import Foundation
import PolicyEngine
import PromptR1

public struct VLLMAdapter: EngineAdapter {
    public init() {}
    public var kind: RemotePolicyBackend.Kind { .vllm }

    public func logprobKind(for sampling: SamplingParameters) -> PolicyLogprobKind { .model }

    struct Request: Encodable {
        var model: String?
        var prompt: [Int32]
        var max_tokens: Int
        var temperature: Float
        var top_p: Float
        var top_k: Int
        var seed: UInt64?
        var logprobs = 1
        var stop: [String]
        var stop_token_ids: [Int32]
        var include_stop_str_in_output = true
        var skip_special_tokens = false
        var spaces_between_special_tokens = false
        var return_token_ids = true
        var stream = false
    }

    public func generateRequest(_ r: EngineGenerateRequest) throws -> EngineHTTPRequest {
        let greedy = r.sampling.isGreedy
        let body = Request(
            model: r.model, prompt: r.context, max_tokens: r.maxTokens,
            temperature: greedy ? 0 : r.sampling.temperature, top_p: greedy ? 1 : r.sampling.topP,
            top_k: greedy || r.sampling.topK <= 0 ? -1 : r.sampling.topK, seed: r.sampling.seed,
            stop: r.stopStrings, stop_token_ids: r.stopTokenIDs)
        return EngineHTTPRequest(path: "/v1/completions", body: try encode(body))
    }

    struct Response: Decodable {
        struct Choice: Decodable {
            struct Logprobs: Decodable { var token_logprobs: [Float?]? }
            var text: String?
            var token_ids: [Int32]?
            var logprobs: Logprobs?
            var finish_reason: String?
        }
        struct Usage: Decodable {
            struct Details: Decodable { var cached_tokens: Int? }
            var prompt_tokens_details: Details?
        }
        var choices: [Choice]
        var usage: Usage?
    }

    public func parseGenerateResponse(_ body: Data) throws -> EngineCompletion {
        let r = try decode(Response.self, body, what: "completion")
        guard let c = r.choices.first else { throw EngineResponseError("vllm: a completion without choices") }
        guard let ids = c.token_ids else {
            throw EngineResponseError("vllm: no choices[0].token_ids (a vLLM without return_token_ids support?)")
        }
        let lps = c.logprobs?.token_logprobs ?? []
        guard lps.count == ids.count else {
            throw EngineResponseError("vllm: \(lps.count) token_logprobs for \(ids.count) token_ids")
        }
        let stop: EngineStop
        switch c.finish_reason {
        case "stop": stop = .stopString  // a stop string, a stop token or eos: TurnCut tells which
        case "length": stop = .length
        default: throw EngineResponseError("vllm: unknown finish_reason \(c.finish_reason ?? "null")")
        }
        return EngineCompletion(
            tokens: ids, logprobs: lps.map { $0 ?? .nan }, stop: stop,
            cachedPromptTokens: r.usage?.prompt_tokens_details?.cached_tokens)
    }

    public var healthPath: String { "/health" }
    public var modelInfoPath: String { "/v1/models" }
    public func parseModelID(_ body: Data) -> String? {
        (try? JSONDecoder().decode(ModelList.self, from: body))?.data.first?.id
    }

    public var inPlaceReload: InPlaceReload { .loraAdapter }

    /// Every model id `GET /v1/models` lists: the base model and each loaded adapter.
    public func servedModelIDs(_ body: Data) throws -> [String] {
        try decode(ModelList.self, body, what: "model list").data.map(\.id)
    }

    struct LoRAAdapter: Encodable {
        var lora_name: String
        var lora_path: String?
    }

    /// `POST /v1/load_lora_adapter`: the weights at `path` (on the engine's side) as adapter `name`.
    public func loadLoRARequest(name: String, path: String) throws -> EngineHTTPRequest {
        EngineHTTPRequest(path: "/v1/load_lora_adapter", body: try encode(LoRAAdapter(lora_name: name, lora_path: path)))
    }

    /// `POST /v1/unload_lora_adapter`.
    public func unloadLoRARequest(name: String) throws -> EngineHTTPRequest {
        EngineHTTPRequest(path: "/v1/unload_lora_adapter", body: try encode(LoRAAdapter(lora_name: name)))
    }
}
