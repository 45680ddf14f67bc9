// What every engine adapter does: turn one policy turn (a token-id context, a token budget, the
// sampling parameters, the protocol's stop conditions) into the engine's documented request, and
// its response back into token ids with one log-prob each. The adapters hold no state; the HTTP
// call, the circuit breaker and the statistics live in `RemotePolicy`.

import Foundation
import PolicyEngine
import PromptR1

/// One policy turn as an engine request: token ids in, never text.
public struct EngineGenerateRequest: Sendable, Equatable {
    /// The whole sequence so far (first prompt, earlier turns, injections). Engines with a prefix
    /// cache (all three) reuse the keys and values of the part they have seen.
    public var context: [Int32]
    public var maxTokens: Int
    public var sampling: SamplingParameters
    /// `</interaction_prompt>`: the engine stops after the token that completes it.
    public var stopStrings: [String]
    /// End-of-turn ids (`<|im_end|>`, the checkpoint's eos ids), sorted.
    public var stopTokenIDs: [Int32]
    /// The served model name, if the engine needs one.
    public var model: String?

    public init(
        context: [Int32], maxTokens: Int, sampling: SamplingParameters, stopStrings: [String],
        stopTokenIDs: [Int32], model: String? = nil
    ) {
        self.context = context
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopStrings = stopStrings
        self.stopTokenIDs = stopTokenIDs
        self.model = model
    }
}

/// Why the engine says it stopped.
public enum EngineStop: String, Sendable, Equatable {
    case endOfSequence = "eos"
    case stopString = "stop_string"
    case length
}

/// What an engine generated for one request.
public struct EngineCompletion: Sendable, Equatable {
    /// Every generated token id, including a final stop token or the tokens of a stop string.
    public var tokens: [Int32]
    /// One per token: the log-prob of the token the engine picked (NaN where it gave none).
    public var logprobs: [Float]
    public var stop: EngineStop
    /// Prompt tokens the engine reports it took from its prefix cache, if it reports it.
    public var cachedPromptTokens: Int?
    /// The engine's own time for this request, seconds, if it reports it.
    public var engineSeconds: Double?

    public init(
        tokens: [Int32], logprobs: [Float], stop: EngineStop, cachedPromptTokens: Int? = nil,
        engineSeconds: Double? = nil
    ) {
        self.tokens = tokens
        self.logprobs = logprobs
        self.stop = stop
        self.cachedPromptTokens = cachedPromptTokens
        self.engineSeconds = engineSeconds
    }
}

/// An engine answered, but not with what its documentation says.
public struct EngineResponseError: Error, CustomStringConvertible, Sendable, Equatable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// The request an adapter wants sent.
public struct EngineHTTPRequest: Sendable, Equatable {
    public var path: String
    public var body: Data
}

/// One engine's documented token-id interface.
public protocol EngineAdapter: Sendable {
    var kind: RemotePolicyBackend.Kind { get }
    /// Which log-prob the engine returns for a request with these sampling parameters.
    func logprobKind(for sampling: SamplingParameters) -> PolicyLogprobKind
    func generateRequest(_ r: EngineGenerateRequest) throws -> EngineHTTPRequest
    /// Parses the whole response body of `generateRequest`.
    func parseGenerateResponse(_ body: Data) throws -> EngineCompletion
    /// A GET that answers 200 when the engine can serve.
    var healthPath: String { get }
    /// A GET that names the served model.
    var modelInfoPath: String { get }
    func parseModelID(_ body: Data) -> String?
    /// What the engine offers to bring new weights into a running server.
    var inPlaceReload: InPlaceReload { get }
}

/// How an engine reloads weights in place (`"reload": "in_place"` of `POST /admin/policy`).
public enum InPlaceReload: Sendable, Equatable {
    /// vLLM: `POST /v1/load_lora_adapter` registers the new weights as a LoRA adapter under its
    /// own name; requests then name the adapter as `model`. The old adapter stays loaded.
    case loraAdapter
    /// SGLang: `POST /update_weights_from_disk` replaces the served weights.
    case weightsFromDisk
    /// None: the reason, for the 400 an in-place reload gets.
    case unsupported(String)
}

/// The client side of the protocol's stop rules, applied to what the engine returned, so a turn
/// ends exactly where the embedded engine ends it: after an end-of-turn token (kept in the ids,
/// its text dropped), or after the token whose bytes complete a stop string (the text cut right
/// after it), or at the token budget. Engines stop on the same conditions; this makes the result
/// independent of how each one trims its output.
public struct TurnCut: Sendable, Equatable {
    public var tokens: [Int32]
    public var logprobs: [Float]
    public var bytes: [UInt8]
    public var stopTokenID: Int32?
    public var stopString: String?

    public var text: String { String(decoding: bytes, as: UTF8.self) }

    public static func cut(
        _ c: EngineCompletion, maxTokens: Int, endOfTurn: Set<Int32>, stopStrings: [String],
        tokenBytes: (Int32) -> [UInt8]
    ) -> TurnCut {
        let patterns = stopStrings.map { Array($0.utf8) }
        let longest = patterns.map(\.count).max() ?? 0
        var out = TurnCut(tokens: [], logprobs: [], bytes: [], stopTokenID: nil, stopString: nil)
        for (i, id) in c.tokens.enumerated() where out.tokens.count < maxTokens {
            out.tokens.append(id)
            out.logprobs.append(i < c.logprobs.count ? c.logprobs[i] : .nan)
            if endOfTurn.contains(id) {
                out.stopTokenID = id
                return out
            }
            let old = out.bytes.count
            out.bytes.append(contentsOf: tokenBytes(id))
            guard longest > 0 else { continue }
            let from = max(0, old - longest + 1)
            var best: (Int, Range<Int>)?
            for (k, p) in patterns.enumerated() where out.bytes.count >= p.count {
                var s = from
                while s + p.count <= out.bytes.count {
                    if out.bytes[s..<(s + p.count)].elementsEqual(p) {
                        if best == nil || s < best!.1.lowerBound { best = (k, s..<(s + p.count)) }
                        break
                    }
                    s += 1
                }
            }
            if let (k, r) = best {
                out.bytes.removeSubrange(r.upperBound...)
                out.stopString = stopStrings[k]
                return out
            }
        }
        return out
    }
}

// MARK: - Small JSON helpers shared by the adapters

extension EngineAdapter {
    func encode<T: Encodable>(_ value: T) throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return try e.encode(value)
    }

    func decode<T: Decodable>(_ type: T.Type, _ body: Data, what: String) throws -> T {
        do { return try JSONDecoder().decode(type, from: body) } catch {
            let head = String(decoding: body.prefix(300), as: UTF8.self)
            throw EngineResponseError("\(kind.rawValue): malformed \(what): \(error) in \(head)")
        }
    }
}

/// The OpenAI-style `{"data": [{"id": ...}]}` of `GET /v1/models` (vLLM, llama.cpp).
struct ModelList: Decodable {
    struct Model: Decodable { var id: String }
    var data: [Model]
}
