import Foundation

/// The client's sampling and accounting parameters, as every upstream chat call of a
/// collaboration episode (and every rollout call of the trainer) sends them. Each goes under
/// its own OpenAI name: `max_completion_tokens` stays `max_completion_tokens` (o-series models
/// refuse `max_tokens`).
public struct UpstreamChatParameters: Sendable, Equatable {
    public var temperature: Double?
    public var topP: Double?
    public var seed: Int?
    public var presencePenalty: Double?
    public var frequencyPenalty: Double?
    public var logitBias: [String: Double]?
    public var stop: [String]?
    public var user: String?
    public var maxTokens: Int?
    public var maxCompletionTokens: Int?
    /// Other request members carried to the upstream verbatim (e.g. `store`, `metadata`,
    /// `service_tier`, `reasoning_effort`).
    public var passAlong: [String: JSONValue]

    public init(
        temperature: Double? = nil, topP: Double? = nil, seed: Int? = nil, presencePenalty: Double? = nil,
        frequencyPenalty: Double? = nil, logitBias: [String: Double]? = nil, stop: [String]? = nil,
        user: String? = nil, maxTokens: Int? = nil, maxCompletionTokens: Int? = nil,
        passAlong: [String: JSONValue] = [:]
    ) {
        self.temperature = temperature
        self.topP = topP
        self.seed = seed
        self.presencePenalty = presencePenalty
        self.frequencyPenalty = frequencyPenalty
        self.logitBias = logitBias
        self.stop = stop
        self.user = user
        self.maxTokens = maxTokens
        self.maxCompletionTokens = maxCompletionTokens
        self.passAlong = passAlong
    }

    /// The parameters of a client's chat request that go to each upstream call.
    public init(forwarding r: ChatCompletionRequest, passAlong: [String: JSONValue] = [:]) {
        self.init(
            temperature: r.temperature, topP: r.topP, seed: r.seed, presencePenalty: r.presencePenalty,
            frequencyPenalty: r.frequencyPenalty, logitBias: r.logitBias,
            stop: (r.stop?.values.isEmpty ?? true) ? nil : r.stop?.values, user: r.user,
            maxTokens: r.maxTokens, maxCompletionTokens: r.maxCompletionTokens, passAlong: passAlong)
    }

    /// The JSON body of one non-streaming chat completion with these parameters.
    public func body(model: String, messages: [ChatMessage]) throws -> Data {
        try JSONEncoder.wire.encode(Body(model: model, messages: messages, p: self))
    }

    struct Key: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    struct Body: Encodable {
        var model: String
        var messages: [ChatMessage]
        var p: UpstreamChatParameters

        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: Key.self)
            try c.encode(model, forKey: Key("model"))
            try c.encode(messages, forKey: Key("messages"))
            try c.encodeIfPresent(p.temperature, forKey: Key("temperature"))
            try c.encodeIfPresent(p.topP, forKey: Key("top_p"))
            try c.encodeIfPresent(p.seed, forKey: Key("seed"))
            try c.encodeIfPresent(p.presencePenalty, forKey: Key("presence_penalty"))
            try c.encodeIfPresent(p.frequencyPenalty, forKey: Key("frequency_penalty"))
            try c.encodeIfPresent(p.logitBias, forKey: Key("logit_bias"))
            try c.encodeIfPresent(p.stop, forKey: Key("stop"))
            try c.encodeIfPresent(p.user, forKey: Key("user"))
            try c.encodeIfPresent(p.maxTokens, forKey: Key("max_tokens"))
            try c.encodeIfPresent(p.maxCompletionTokens, forKey: Key("max_completion_tokens"))
            for (k, v) in p.passAlong.sorted(by: { $0.key < $1.key }) { try c.encode(v, forKey: Key(k)) }
            try c.encode(false, forKey: Key("stream"))
        }
    }
}

/// The upstream answered a chat call with an error status. Carries its body verbatim, so a
/// collaboration route can relay a 4xx exactly as passthrough would.
public struct UpstreamStatusError: Error, Sendable, CustomStringConvertible {
    public var status: Int
    public var contentType: String
    public var body: [UInt8]
    /// The upstream's `error.message`, or the body as text.
    public var message: String {
        let text = String(decoding: body, as: UTF8.self)
        return (try? JSONDecoder().decode(OpenAIErrorBody.self, from: Data(body)))?.error.message ?? text
    }
    public var description: String { "Upstream error \(status): \(message.prefix(500))" }

    public init(status: Int, contentType: String, body: [UInt8]) {
        self.status = status
        self.contentType = contentType
        self.body = body
    }
}
