import Foundation
import NIOCore

public struct Usage: Codable, Sendable, Equatable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int
    /// Gateway extension: tokens the embedded policy model read and wrote for this request.
    public var policyTokens: PolicyTokens?

    public struct PolicyTokens: Codable, Sendable, Equatable {
        public var promptTokens: Int
        public var completionTokens: Int
        enum CodingKeys: String, CodingKey {
            case promptTokens = "prompt_tokens"
            case completionTokens = "completion_tokens"
        }
        public init(promptTokens: Int, completionTokens: Int) {
            self.promptTokens = promptTokens
            self.completionTokens = completionTokens
        }
    }

    enum CodingKeys: String, CodingKey {
        case promptTokens = "prompt_tokens"
        case completionTokens = "completion_tokens"
        case totalTokens = "total_tokens"
        case policyTokens = "policy_tokens"
    }

    public init(promptTokens: Int, completionTokens: Int, totalTokens: Int? = nil, policyTokens: PolicyTokens? = nil) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = totalTokens ?? promptTokens + completionTokens
        self.policyTokens = policyTokens
    }

    public static func + (a: Usage, b: Usage) -> Usage {
        Usage(
            promptTokens: a.promptTokens + b.promptTokens, completionTokens: a.completionTokens + b.completionTokens,
            totalTokens: a.totalTokens + b.totalTokens)
    }
}

/// A `chat.completion` object as the gateway returns it for collaboration routes.
public struct ChatCompletion: Codable, Sendable, Equatable {
    public struct Message: Codable, Sendable, Equatable {
        public var role: String
        public var content: String?
        public var refusal: String?
        /// The collaboration trace, in the field DeepSeek and vLLM use for reasoning text.
        public var reasoningContent: String?
        enum CodingKeys: String, CodingKey {
            case role, content, refusal
            case reasoningContent = "reasoning_content"
        }
        public init(role: String = "assistant", content: String?, reasoningContent: String? = nil) {
            self.role = role
            self.content = content
            self.reasoningContent = reasoningContent
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(role, forKey: .role)
            try c.encode(content, forKey: .content)
            try c.encode(refusal, forKey: .refusal)
            try c.encodeIfPresent(reasoningContent, forKey: .reasoningContent)
        }
    }
    public struct Choice: Codable, Sendable, Equatable {
        public var index: Int
        public var message: Message
        public var finishReason: String?
        public var logprobs: JSONValue?
        enum CodingKeys: String, CodingKey {
            case index, message, logprobs
            case finishReason = "finish_reason"
        }
        public init(index: Int = 0, message: Message, finishReason: String?) {
            self.index = index
            self.message = message
            self.finishReason = finishReason
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(index, forKey: .index)
            try c.encode(message, forKey: .message)
            try c.encode(finishReason, forKey: .finishReason)
            try c.encode(logprobs, forKey: .logprobs)
        }
    }

    public var id: String
    public var object: String = "chat.completion"
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage?
    public var systemFingerprint: String?

    enum CodingKeys: String, CodingKey {
        case id, object, created, model, choices, usage
        case systemFingerprint = "system_fingerprint"
    }

    public init(id: String, created: Int, model: String, choices: [Choice], usage: Usage?) {
        self.id = id
        self.created = created
        self.model = model
        self.choices = choices
        self.usage = usage
    }
}

/// Where a request's time went, in milliseconds: `overhead_ms` is total minus upstream time
/// (policy time included); `policy_ms` is the policy model's part of it.
public struct GatewayTiming: Codable, Sendable, Equatable {
    public var totalMs: Double
    public var upstreamMs: Double
    public var overheadMs: Double
    public var policyMs: Double?
    enum CodingKeys: String, CodingKey {
        case totalMs = "total_ms"
        case upstreamMs = "upstream_ms"
        case overheadMs = "overhead_ms"
        case policyMs = "policy_ms"
    }
    public init(totalMs: Double, upstreamMs: Double, overheadMs: Double, policyMs: Double?) {
        self.totalMs = totalMs
        self.upstreamMs = upstreamMs
        self.overheadMs = overheadMs
        self.policyMs = policyMs
    }
}

/// A `chat.completion.chunk` object. Decoding is lenient (unknown fields ignored) because the
/// gateway reads upstream chunks to assemble the logged text.
public struct ChatCompletionChunk: Codable, Sendable, Equatable {
    public struct Delta: Codable, Sendable, Equatable {
        public var role: String?
        public var content: String?
        public var reasoningContent: String?
        public var toolCalls: [JSONValue]?
        enum CodingKeys: String, CodingKey {
            case role, content
            case reasoningContent = "reasoning_content"
            case toolCalls = "tool_calls"
        }
        public init(role: String? = nil, content: String? = nil, reasoningContent: String? = nil) {
            self.role = role
            self.content = content
            self.reasoningContent = reasoningContent
        }
    }
    public struct Choice: Codable, Sendable, Equatable {
        public var index: Int
        public var delta: Delta
        public var finishReason: String?
        enum CodingKeys: String, CodingKey {
            case index, delta
            case finishReason = "finish_reason"
        }
        public init(index: Int = 0, delta: Delta, finishReason: String? = nil) {
            self.index = index
            self.delta = delta
            self.finishReason = finishReason
        }
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(index, forKey: .index)
            try c.encode(delta, forKey: .delta)
            try c.encode(finishReason, forKey: .finishReason)
        }
    }

    public var id: String
    public var object: String = "chat.completion.chunk"
    public var created: Int
    public var model: String
    public var choices: [Choice]
    public var usage: Usage?
    /// Gateway extension on a stream's last (usage) chunk: the timing that the response head
    /// could not carry, because it left before the time was known.
    public var gatewayTiming: GatewayTiming?

    enum CodingKeys: String, CodingKey {
        case id, object, created, model, choices, usage
        case gatewayTiming = "x_gateway_timing"
    }

    public init(id: String, created: Int, model: String, choices: [Choice], usage: Usage? = nil) {
        self.id = id
        self.created = created
        self.model = model
        self.choices = choices
        self.usage = usage
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        id = try c.decodeIfPresent(String.self, forKey: .id) ?? ""
        object = try c.decodeIfPresent(String.self, forKey: .object) ?? "chat.completion.chunk"
        created = try c.decodeIfPresent(Int.self, forKey: .created) ?? 0
        model = try c.decodeIfPresent(String.self, forKey: .model) ?? ""
        choices = try c.decodeIfPresent([Choice].self, forKey: .choices) ?? []
        usage = try c.decodeIfPresent(Usage.self, forKey: .usage)
    }
}

/// The parts of one streamed `chat.completion.chunk` a relay reads for its log: per choice the
/// index, the content delta, the finish reason and the number of tool-call deltas; the usage.
public struct StreamChunkSummary: Sendable, Equatable {
    public struct Choice: Sendable, Equatable {
        public var index: Int
        public var content: String?
        public var finishReason: String?
        public var toolCalls: Int
    }
    public var choices: [Choice]
    public var usage: Usage?

    init(_ chunk: ChatCompletionChunk) {
        choices = chunk.choices.map {
            Choice(index: $0.index, content: $0.delta.content, finishReason: $0.finishReason, toolCalls: $0.delta.toolCalls?.count ?? 0)
        }
        usage = chunk.usage
    }

    private init(choices: [Choice], usage: Usage?) {
        self.choices = choices
        self.usage = usage
    }

    /// The summary of an event's data, or nil when it is not a chunk (exactly when
    /// `try? JSONDecoder().decode(ChatCompletionChunk.self, ...)` gives nil). Common chunks are
    /// read directly from the bytes; anything unusual goes through JSONDecoder.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> StreamChunkSummary? {
        fastPath(bytes) ?? decodeWithJSONDecoder(bytes)
    }

    /// The byte-level reading alone: nil for anything it leaves to JSONDecoder.
    static func fastPath(_ bytes: UnsafeRawBufferPointer) -> StreamChunkSummary? {
        guard (try? JSONScanner(maxDepth: 64).validateObject(bytes)) != nil else { return nil }
        var r = JSONFastReader(bytes)
        return fastDecode(&r)
    }

    public static func decode(_ bytes: [UInt8]) -> StreamChunkSummary? {
        bytes.withUnsafeBytes { decode($0) }
    }

    static func decodeWithJSONDecoder(_ bytes: UnsafeRawBufferPointer) -> StreamChunkSummary? {
        (try? JSONDecoder().decode(ChatCompletionChunk.self, from: Data(bytes))).map(StreamChunkSummary.init)
    }

    private static let chunkKeys = JSONFastReader.keys("id", "object", "created", "model", "choices", "usage")
    private static let choiceKeys = JSONFastReader.keys("index", "delta", "finish_reason")
    private static let deltaKeys = JSONFastReader.keys("role", "content", "reasoning_content", "tool_calls")

    private static func fastDecode(_ r: inout JSONFastReader) -> StreamChunkSummary? {
        var s = StreamChunkSummary(choices: [], usage: nil)
        let ok = r.object(keys: chunkKeys) { r, key in
            if r.null() { return true }
            switch key {
            case 0, 1, 3:  // id, object, model: strings
                return r.string() != nil
            case 2:  // created
                return r.integer() != nil
            case 4:  // choices
                return r.array { r in
                    var index: Int?
                    var sawDelta = false
                    var choice = Choice(index: 0, content: nil, finishReason: nil, toolCalls: 0)
                    let ok = r.object(keys: choiceKeys) { r, key in
                        switch key {
                        case 0:
                            index = r.integer()
                            return index != nil
                        case 2:
                            if r.null() { return true }
                            choice.finishReason = r.string()
                            return choice.finishReason != nil
                        default:
                            sawDelta = true
                            return r.object(keys: deltaKeys) { r, key in
                                if r.null() { return true }
                                switch key {
                                case 1:
                                    choice.content = r.string()
                                    return choice.content != nil
                                case 3:
                                    // Tool-call deltas decode as [JSONValue]: exotic numbers and
                                    // keys decide that, so only an empty list is read here.
                                    return r.array { _ in false }
                                default:
                                    return r.string() != nil
                                }
                            }
                        }
                    }
                    guard ok, let index, sawDelta else { return false }
                    choice.index = index
                    s.choices.append(choice)
                    return true
                }
            default:  // usage
                s.usage = Usage.fastRead(&r)
                return s.usage != nil
            }
        }
        guard ok, r.peek() == nil else { return nil }
        return s
    }
}

/// The parts of an upstream `chat.completion` the gateway reads (text, finish reason, usage).
public struct UpstreamCompletionSummary: Decodable, Sendable {
    public struct Choice: Decodable, Sendable {
        public struct Message: Decodable, Sendable { public var content: String? }
        public var message: Message?
        public var finishReason: String?
        enum CodingKeys: String, CodingKey {
            case message
            case finishReason = "finish_reason"
        }
        init(message: Message?, finishReason: String?) {
            self.message = message
            self.finishReason = finishReason
        }
    }
    public var model: String?
    public var choices: [Choice]?
    public var usage: Usage?

    public var text: String? { choices?.first?.message?.content }
    public var finishReason: String? { choices?.first?.finishReason }

    init(model: String?, choices: [Choice]?, usage: Usage?) {
        self.model = model
        self.choices = choices
        self.usage = usage
    }

    /// The summary of a response body, or nil when it is not a chat completion JSON (what
    /// `try? JSONDecoder().decode(...)` gives). Common bodies are read directly from the bytes;
    /// anything unusual goes through JSONDecoder, with the same result.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> UpstreamCompletionSummary? {
        if (try? JSONScanner(maxDepth: 64).validateObject(bytes)) != nil {
            var r = JSONFastReader(bytes)
            if let s = fastDecode(&r) { return s }
        }
        return try? JSONDecoder().decode(UpstreamCompletionSummary.self, from: Data(bytes))
    }

    public static func decode(_ buffer: ByteBuffer) -> UpstreamCompletionSummary? {
        buffer.withUnsafeReadableBytes { decode($0) }
    }

    private static let summaryKeys = JSONFastReader.keys("model", "choices", "usage")
    private static let choiceKeys = JSONFastReader.keys("message", "finish_reason")
    private static let messageKeys = JSONFastReader.keys("content")

    private static func fastDecode(_ r: inout JSONFastReader) -> UpstreamCompletionSummary? {
        var s = UpstreamCompletionSummary(model: nil, choices: nil, usage: nil)
        let ok = r.object(keys: summaryKeys) { r, key in
            if r.null() { return true }
            switch key {
            case 0:  // model
                s.model = r.string()
                return s.model != nil
            case 1:  // choices
                var choices: [Choice] = []
                let ok = r.array { r in
                    var choice = Choice(message: nil, finishReason: nil)
                    let ok = r.object(keys: choiceKeys) { r, key in
                        if r.null() { return true }
                        if key == 1 {  // finish_reason
                            choice.finishReason = r.string()
                            return choice.finishReason != nil
                        }
                        var content: String?
                        let ok = r.object(keys: messageKeys) { r, _ in
                            if r.null() { return true }
                            content = r.string()
                            return content != nil
                        }
                        choice.message = Choice.Message(content: content)
                        return ok
                    }
                    choices.append(choice)
                    return ok
                }
                s.choices = choices
                return ok
            default:
                s.usage = Usage.fastRead(&r)
                return s.usage != nil
            }
        }
        guard ok, r.peek() == nil else { return nil }
        return s
    }
}

public struct ModelList: Codable, Sendable, Equatable {
    public struct Model: Codable, Sendable, Equatable {
        public var id: String
        public var object: String = "model"
        public var created: Int
        public var ownedBy: String
        enum CodingKeys: String, CodingKey {
            case id, object, created
            case ownedBy = "owned_by"
        }
        public init(id: String, created: Int, ownedBy: String) {
            self.id = id
            self.created = created
            self.ownedBy = ownedBy
        }
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            id = try c.decode(String.self, forKey: .id)
            object = try c.decodeIfPresent(String.self, forKey: .object) ?? "model"
            created = try c.decodeIfPresent(Int.self, forKey: .created) ?? 0
            ownedBy = try c.decodeIfPresent(String.self, forKey: .ownedBy) ?? "unknown"
        }
    }
    public var object: String = "list"
    public var data: [Model]
    public init(data: [Model]) { self.data = data }
}

extension Usage {
    private static let fastKeys = JSONFastReader.keys("prompt_tokens", "completion_tokens", "total_tokens", "policy_tokens")

    /// A usage object read straight from the bytes, or nil when it is left to JSONDecoder.
    static func fastRead(_ r: inout JSONFastReader) -> Usage? {
        var p: Int?
        var c: Int?
        var t: Int?
        let ok = r.object(keys: fastKeys) { r, key in
            switch key {
            case 0:
                p = r.integer()
                return p != nil
            case 1:
                c = r.integer()
                return c != nil
            case 2:
                t = r.integer()
                return t != nil
            default: return r.null()  // policy_tokens: left to JSONDecoder unless null
            }
        }
        guard ok, let p, let c, let t else { return nil }
        return Usage(promptTokens: p, completionTokens: c, totalTokens: t)
    }
}
