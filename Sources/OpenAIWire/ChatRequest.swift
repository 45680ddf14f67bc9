import Foundation

/// A JSON value, for fields the gateway carries without interpreting.
public enum JSONValue: Codable, Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let d = try? c.decode(Double.self) {
            self = .number(d)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .number(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }
}

/// Message content: a string, or an array of content parts (only the text parts are read here).
public enum MessageContent: Codable, Sendable, Equatable {
    case text(String)
    case parts([ContentPart])

    public struct ContentPart: Codable, Sendable, Equatable {
        public var type: String
        public var text: String?
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            self = .text(s)
            return
        }
        if let p = try? c.decode([ContentPart].self) {
            self = .parts(p)
            return
        }
        throw DecodingError.typeMismatch(
            String.self,
            .init(
                codingPath: decoder.codingPath,
                debugDescription: "expected a string or an array of content parts"))
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .text(let s): try c.encode(s)
        case .parts(let p): try c.encode(p)
        }
    }

    /// The text of the content: the string, or the text parts joined by newlines.
    public var text: String {
        switch self {
        case .text(let s): return s
        case .parts(let p): return p.compactMap { $0.type == "text" ? $0.text : nil }.joined(separator: "\n")
        }
    }
}

public struct ChatMessage: Codable, Sendable, Equatable {
    public var role: String
    public var content: MessageContent?
    public var name: String?
    public var toolCalls: [JSONValue]?
    public var toolCallID: String?

    public init(role: String, content: String?, name: String? = nil) {
        self.role = role
        self.content = content.map(MessageContent.text)
        self.name = name
    }

    enum CodingKeys: String, CodingKey {
        case role, content, name
        case toolCalls = "tool_calls"
        case toolCallID = "tool_call_id"
    }

    public var text: String { content?.text ?? "" }
}

/// `stop`: a string or up to four strings.
public enum StopSequences: Codable, Sendable, Equatable {
    case one(String)
    case many([String])
    public init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let s = try? c.decode(String.self) {
            self = .one(s)
            return
        }
        self = .many(try c.decode([String].self))
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .one(let s): try c.encode(s)
        case .many(let a): try c.encode(a)
        }
    }
    public var values: [String] {
        switch self {
        case .one(let s): [s]
        case .many(let a): a
        }
    }
}

/// The fields of a chat completion request that the gateway reads or validates. Passthrough
/// forwards the client's original bytes, so fields not listed here are never lost.
public struct ChatCompletionRequest: Codable, Sendable, Equatable {
    public struct StreamOptions: Codable, Sendable, Equatable {
        public var includeUsage: Bool?
        enum CodingKeys: String, CodingKey { case includeUsage = "include_usage" }
        public init(includeUsage: Bool?) { self.includeUsage = includeUsage }
    }

    public var model: String
    public var messages: [ChatMessage]
    public var stream: Bool?
    public var streamOptions: StreamOptions?
    public var temperature: Double?
    public var topP: Double?
    public var maxTokens: Int?
    public var maxCompletionTokens: Int?
    public var n: Int?
    public var stop: StopSequences?
    public var seed: Int?
    public var presencePenalty: Double?
    public var frequencyPenalty: Double?
    public var user: String?
    public var logitBias: [String: Double]?

    enum CodingKeys: String, CodingKey {
        case model, messages, stream, temperature, n, stop, seed, user
        case logitBias = "logit_bias"
        case streamOptions = "stream_options"
        case topP = "top_p"
        case maxTokens = "max_tokens"
        case maxCompletionTokens = "max_completion_tokens"
        case presencePenalty = "presence_penalty"
        case frequencyPenalty = "frequency_penalty"
    }

    public init(model: String, messages: [ChatMessage], stream: Bool? = nil) {
        self.model = model
        self.messages = messages
        self.stream = stream
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        model = try c.decode(String.self, forKey: .model)
        messages = try c.decode([ChatMessage].self, forKey: .messages)
        stream = try c.decodeIfPresent(Bool.self, forKey: .stream)
        streamOptions = try c.decodeIfPresent(StreamOptions.self, forKey: .streamOptions)
        temperature = try c.decodeIfPresent(Double.self, forKey: .temperature)
        topP = try c.decodeIfPresent(Double.self, forKey: .topP)
        maxTokens = try Self.integer(c, .maxTokens)
        maxCompletionTokens = try Self.integer(c, .maxCompletionTokens)
        n = try Self.integer(c, .n)
        stop = try c.decodeIfPresent(StopSequences.self, forKey: .stop)
        seed = try Self.integer(c, .seed)
        presencePenalty = try c.decodeIfPresent(Double.self, forKey: .presencePenalty)
        frequencyPenalty = try c.decodeIfPresent(Double.self, forKey: .frequencyPenalty)
        user = try c.decodeIfPresent(String.self, forKey: .user)
        logitBias = try c.decodeIfPresent([String: Double].self, forKey: .logitBias)
    }

    /// Integers are read as numbers first so that 1e300 or 2.5 give a clear error naming the
    /// field instead of a generic parse failure.
    static func integer(_ c: KeyedDecodingContainer<CodingKeys>, _ key: CodingKeys) throws -> Int? {
        guard let d = try c.decodeIfPresent(Double.self, forKey: key) else { return nil }
        guard d.rounded() == d, abs(d) <= 9_007_199_254_740_992 else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "expected an integer, got \(d)")
        }
        return Int(d)
    }

    public var isStream: Bool { stream ?? false }
    public var wantsUsageInStream: Bool { streamOptions?.includeUsage ?? false }
    /// The output token cap the client asked for, in either spelling.
    public var outputTokenLimit: Int? { maxCompletionTokens ?? maxTokens }

    static let roles: Set<String> = ["system", "developer", "user", "assistant", "tool", "function"]

    /// Decodes and validates a request body, turning every problem into an OpenAI-shaped 400
    /// that names the offending parameter.
    public static func decode(from body: Data) throws(GatewayError) -> ChatCompletionRequest {
        let req: ChatCompletionRequest
        do {
            req = try JSONDecoder().decode(ChatCompletionRequest.self, from: body)
        } catch let e as DecodingError {
            throw GatewayError.fromDecoding(e)
        } catch {
            throw GatewayError.invalidJSON("\(error)")
        }
        try req.validate()
        return req
    }

    /// Like `decode(from:)` for a body that `JSONScanner` already accepted, minus the Codable
    /// machinery in the common case: the known fields are read straight from the bytes, and
    /// anything unusual (odd types, duplicate keys, tool calls, non-integral integers, ...) is
    /// decoded by `decode(from:)` instead, which gives the same value or the same error.
    public static func decode(validated bytes: [UInt8]) throws(GatewayError) -> ChatCompletionRequest {
        let fast = bytes.withUnsafeBytes { buf -> ChatCompletionRequest? in
            var r = JSONFastReader(buf)
            return fastDecode(&r)
        }
        guard let req = fast else { return try decode(from: Data(bytes)) }
        try req.validate()
        return req
    }

    private static let fastKeys = JSONFastReader.keys(
        "model", "messages", "stream", "stream_options", "temperature", "top_p", "max_tokens",
        "max_completion_tokens", "n", "stop", "seed", "presence_penalty", "frequency_penalty", "user", "logit_bias")
    private static let messageKeys = JSONFastReader.keys("role", "content", "name", "tool_calls", "tool_call_id")
    private static let partKeys = JSONFastReader.keys("type", "text")
    private static let streamOptionKeys = JSONFastReader.keys("include_usage")

    private static func fastDecode(_ r: inout JSONFastReader) -> ChatCompletionRequest? {
        var model: String?
        var messages: [ChatMessage]?
        var req = ChatCompletionRequest(model: "", messages: [])
        func optionalDouble(_ r: inout JSONFastReader, _ into: inout Double?) -> Bool {
            if r.null() { return true }
            guard let d = r.double() else { return false }
            into = d
            return true
        }
        /// Integers are decoded as Double then checked, as in `integer(_:_:)`; a failing check
        /// goes to the slow path for its error.
        func optionalInteger(_ r: inout JSONFastReader, _ into: inout Int?) -> Bool {
            if r.null() { return true }
            guard let d = r.double(), d.rounded() == d, abs(d) <= 9_007_199_254_740_992 else { return false }
            into = Int(d)
            return true
        }
        func optionalString(_ r: inout JSONFastReader, _ into: inout String?) -> Bool {
            if r.null() { return true }
            guard let v = r.string() else { return false }
            into = v
            return true
        }
        let ok = r.object(keys: fastKeys) { r, key in
            switch key {
            case 0:  // model
                model = r.string()
                return model != nil
            case 1:  // messages
                var list: [ChatMessage] = []
                let ok = r.array { r in
                    guard let m = fastMessage(&r) else { return false }
                    list.append(m)
                    return true
                }
                messages = list
                return ok
            case 2:  // stream
                if r.null() { return true }
                guard let v = r.bool() else { return false }
                req.stream = v
                return true
            case 3:  // stream_options
                if r.null() { return true }
                var include: Bool?
                let ok = r.object(keys: streamOptionKeys) { r, _ in
                    if r.null() { return true }
                    include = r.bool()
                    return include != nil
                }
                req.streamOptions = StreamOptions(includeUsage: include)
                return ok
            case 4: return optionalDouble(&r, &req.temperature)
            case 5: return optionalDouble(&r, &req.topP)
            case 11: return optionalDouble(&r, &req.presencePenalty)
            case 12: return optionalDouble(&r, &req.frequencyPenalty)
            case 6: return optionalInteger(&r, &req.maxTokens)
            case 7: return optionalInteger(&r, &req.maxCompletionTokens)
            case 8: return optionalInteger(&r, &req.n)
            case 10: return optionalInteger(&r, &req.seed)
            case 13: return optionalString(&r, &req.user)
            case 14: return r.null()  // logit_bias: an object, left to JSONDecoder
            case 9:  // stop
                if r.null() { return true }
                if let one = r.string() {
                    req.stop = .one(one)
                    return true
                }
                var many: [String] = []
                let ok = r.array { r in
                    guard let v = r.string() else { return false }
                    many.append(v)
                    return true
                }
                req.stop = .many(many)
                return ok
            default: return false
            }
        }
        guard ok, r.peek() == nil, let model, let messages else { return nil }
        req.model = model
        req.messages = messages
        return req
    }

    private static func fastMessage(_ r: inout JSONFastReader) -> ChatMessage? {
        var role: String?
        var message = ChatMessage(role: "", content: nil)
        let ok = r.object(keys: messageKeys) { r, key in
            switch key {
            case 0:  // role
                role = r.string()
                return role != nil
            case 1:  // content
                if r.null() { return true }
                if let s = r.string() {
                    message.content = .text(s)
                    return true
                }
                var parts: [MessageContent.ContentPart] = []
                let ok = r.array { r in
                    var type: String?
                    var text: String?
                    let ok = r.object(keys: partKeys) { r, key in
                        if key == 0 {
                            type = r.string()
                            return type != nil
                        }
                        if r.null() { return true }
                        text = r.string()
                        return text != nil
                    }
                    guard ok, let type else { return false }
                    parts.append(.init(type: type, text: text))
                    return true
                }
                message.content = .parts(parts)
                return ok
            case 2:  // name
                if r.null() { return true }
                message.name = r.string()
                return message.name != nil
            case 4:  // tool_call_id
                if r.null() { return true }
                message.toolCallID = r.string()
                return message.toolCallID != nil
            default:
                // tool_calls: carried as JSONValue, left to JSONDecoder unless null.
                return r.null()
            }
        }
        guard ok, let role else { return nil }
        message.role = role
        return message
    }

    public func validate() throws(GatewayError) {
        if model.isEmpty { throw .invalidField("model", "'model' must be a non-empty string.") }
        if messages.isEmpty { throw .invalidField("messages", "'messages' must contain at least one message.") }
        for (i, m) in messages.enumerated() {
            if !Self.roles.contains(m.role) {
                throw .invalidField(
                    "messages[\(i)].role",
                    "Invalid value: '\(m.role.prefix(64))'. Supported values are: 'system', 'developer', 'user', 'assistant', 'tool' and 'function'."
                )
            }
            if m.content == nil && m.role != "assistant" {
                throw .missingField("messages[\(i)].content")
            }
        }
        if let t = temperature, !(0...2).contains(t) {
            throw .invalidField("temperature", "'temperature' must be between 0 and 2, got \(t).")
        }
        if let p = topP, !(0...1).contains(p) {
            throw .invalidField("top_p", "'top_p' must be between 0 and 1, got \(p).")
        }
        if let m = maxTokens, m < 1 { throw .invalidField("max_tokens", "'max_tokens' must be at least 1, got \(m).") }
        if let m = maxCompletionTokens, m < 1 {
            throw .invalidField("max_completion_tokens", "'max_completion_tokens' must be at least 1, got \(m).")
        }
        if let bias = logitBias {
            for (token, v) in bias where !(-100...100).contains(v) {
                throw .invalidField(
                    "logit_bias", "'logit_bias' values must be between -100 and 100, got \(v) for token \(token.prefix(20)).")
            }
        }
        if let n, !(1...128).contains(n) { throw .invalidField("n", "'n' must be between 1 and 128, got \(n).") }
        if let s = stop, s.values.count > 4 {
            throw .invalidField("stop", "'stop' takes at most 4 sequences, got \(s.values.count).")
        }
        for (name, v) in [("presence_penalty", presencePenalty), ("frequency_penalty", frequencyPenalty)] {
            if let v, !(-2...2).contains(v) { throw .invalidField(name, "'\(name)' must be between -2 and 2, got \(v).") }
        }
    }
}

extension GatewayError {
    /// Maps a DecodingError to a 400 that names the parameter path, e.g. `messages[0].role`.
    public static func fromDecoding(_ e: DecodingError) -> GatewayError {
        func path(_ p: [any CodingKey]) -> String {
            var s = ""
            for k in p {
                if let i = k.intValue { s += "[\(i)]" } else { s += s.isEmpty ? k.stringValue : "." + k.stringValue }
            }
            return s
        }
        switch e {
        case .keyNotFound(let key, let ctx):
            return .missingField(path(ctx.codingPath + [key]))
        case .typeMismatch(let type, let ctx):
            let p = path(ctx.codingPath)
            return .invalidField(p, "Invalid type for '\(p)': expected \(typeName(type)).")
        case .valueNotFound(let type, let ctx):
            let p = path(ctx.codingPath)
            return .invalidField(p, "Invalid type for '\(p)': expected \(typeName(type)), got null.")
        case .dataCorrupted(let ctx):
            if ctx.codingPath.isEmpty { return .invalidJSON(ctx.debugDescription) }
            let p = path(ctx.codingPath)
            return .invalidField(p, "Invalid value for '\(p)': \(ctx.debugDescription)")
        @unknown default:
            return .invalidJSON("\(e)")
        }
    }

    static func typeName(_ t: Any.Type) -> String {
        switch t {
        case is String.Type: return "a string"
        case is Bool.Type: return "a boolean"
        case is Int.Type: return "an integer"
        case is Double.Type: return "a number"
        default:
            let s = "\(t)"
            if s.hasPrefix("Array") { return "an array" }
            if s.hasPrefix("Dictionary") || s.hasSuffix("Options") { return "an object" }
            return s
        }
    }
}
