// llama.cpp's `llama-server`, native `POST /completion` (tools/server/README.md of llama.cpp):
// - `prompt` as an array of token ids, `cache_prompt: true` (reuse the slot's KV cache for the
//   common prefix: the next turn re-sends the whole sequence and only the new part is computed);
// - `return_tokens: true`: the generated ids, `n_probs: 1`: each token's probability, with
//   `post_sampling_probs` choosing which distribution (false: the model's softmax, logged as
//   `model`; true: after the sampler chain, logged as `sampling`);
// - `stream: true`. In non-stream mode `completion_probabilities` drops as many trailing
//   entries as the stop word has tokens (it trims the stop word's probabilities, while `tokens`
//   keeps every id), so the log-probs of a `</interaction_prompt>` turn would be short. Streamed,
//   every token arrives in its own event with its own probability.
// Every sampler the server would add on its own (its default top-k 40, min-p 0.05, repetition
// penalty...) is set to off and the chain is ordered as the embedded sampler's, so the engine
// samples from the same distribution as the embedded one.

import Foundation
import PolicyEngine
import PromptR1

public struct LlamaCppAdapter: EngineAdapter {
    public init() {}
    public var kind: RemotePolicyBackend.Kind { .llamacpp }

    public func logprobKind(for sampling: SamplingParameters) -> PolicyLogprobKind {
        sampling.isGreedy ? .model : .sampling
    }

    struct Request: Encodable {
        var prompt: [Int32]
        var n_predict: Int
        var stream = true
        var return_tokens = true
        var cache_prompt = true
        var n_probs = 1
        var post_sampling_probs: Bool
        var stop: [String]
        var temperature: Float
        var top_k: Int
        var top_p: Float
        var min_p: Float = 0
        var typical_p: Float = 1
        var repeat_penalty: Float = 1
        var repeat_last_n = 0
        var presence_penalty: Float = 0
        var frequency_penalty: Float = 0
        var dry_multiplier: Float = 0
        var xtc_probability: Float = 0
        var top_n_sigma: Float = -1
        var mirostat = 0
        /// The embedded sampler's order: temperature, then top-k, then top-p (llama.cpp's default
        /// chain applies top-k/top-p before temperature, which changes the nucleus).
        var samplers = ["temperature", "top_k", "top_p"]
        var seed: UInt32?
        var model: String?
    }

    public func generateRequest(_ r: EngineGenerateRequest) throws -> EngineHTTPRequest {
        let greedy = r.sampling.isGreedy
        let body = Request(
            prompt: r.context, n_predict: r.maxTokens, post_sampling_probs: !greedy, stop: r.stopStrings,
            temperature: greedy ? 0 : r.sampling.temperature, top_k: greedy ? 1 : r.sampling.topK,
            top_p: r.sampling.topP, seed: r.sampling.seed.map { UInt32(truncatingIfNeeded: $0) },
            model: r.model)
        return EngineHTTPRequest(path: "/completion", body: try encode(body))
    }

    struct Event: Decodable {
        struct Prob: Decodable {
            var id: Int32
            var logprob: Float?
            var prob: Float?
        }
        struct Timings: Decodable {
            var prompt_ms: Double?
            var predicted_ms: Double?
            var cache_n: Int?
        }
        struct ErrorBody: Decodable { var message: String? }
        var tokens: [Int32]?
        var stop: Bool?
        var stop_type: String?
        var completion_probabilities: [Prob]?
        var timings: Timings?
        var tokens_cached: Int?
        var error: ErrorBody?
    }

    /// The body is the server-sent event stream: `data: {...}` lines, the last with `"stop": true`.
    public func parseGenerateResponse(_ body: Data) throws -> EngineCompletion {
        var tokens: [Int32] = []
        var logprobs: [Float] = []
        var final: Event?
        for line in body.split(separator: UInt8(ascii: "\n")) {
            var l = line[...]
            if l.last == UInt8(ascii: "\r") { l = l.dropLast() }
            if l.isEmpty || l.first == UInt8(ascii: ":") { continue }
            let prefix = Array("data: ".utf8)
            if l.starts(with: Array("error: ".utf8)) {
                throw EngineResponseError("llamacpp: \(String(decoding: l, as: UTF8.self))")
            }
            guard l.starts(with: prefix) else { continue }
            let json = Data(l.dropFirst(prefix.count))
            let e = try decode(Event.self, json, what: "completion event")
            if let err = e.error { throw EngineResponseError("llamacpp: \(err.message ?? "error event")") }
            let ids = e.tokens ?? []
            let probs = e.completion_probabilities ?? []
            for (i, id) in ids.enumerated() {
                tokens.append(id)
                if i < probs.count, probs[i].id == id {
                    if let lp = probs[i].logprob {
                        logprobs.append(lp)
                    } else if let p = probs[i].prob {
                        logprobs.append(Float(Foundation.log(Double(p))))
                    } else {
                        logprobs.append(.nan)
                    }
                } else {
                    logprobs.append(.nan)
                }
            }
            if e.stop == true {
                final = e
                break
            }
        }
        guard let final else { throw EngineResponseError("llamacpp: the event stream ended without a final event") }
        let stop: EngineStop
        switch final.stop_type {
        case "eos": stop = .endOfSequence
        case "word": stop = .stopString
        case "limit": stop = .length
        default: throw EngineResponseError("llamacpp: unknown stop_type \(final.stop_type ?? "null")")
        }
        let engineSeconds = final.timings.map { (($0.prompt_ms ?? 0) + ($0.predicted_ms ?? 0)) / 1000 }
        return EngineCompletion(
            tokens: tokens, logprobs: logprobs, stop: stop, cachedPromptTokens: final.timings?.cache_n,
            engineSeconds: engineSeconds)
    }

    public var healthPath: String { "/health" }
    public var modelInfoPath: String { "/v1/models" }

    /// llama-server has no call that loads new weights into a running server: `POST /lora-adapters`
    /// only sets the scales of the adapters it was started with (`--lora`).
    public var inPlaceReload: InPlaceReload {
        .unsupported(
            "llama.cpp's llama-server cannot load new weights into a running server (its /lora-adapters endpoint only rescales the adapters loaded at start with --lora); start a second llama-server on the new weights and switch to it with \"reload\": \"blue_green\" and its \"backend\""
        )
    }

    public func parseModelID(_ body: Data) -> String? {
        (try? JSONDecoder().decode(ModelList.self, from: body))?.data.first?.id
    }
}
