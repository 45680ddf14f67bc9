import Foundation

/// The fields of a `POST /v1/responses` request that the gateway reads. Passthrough forwards
/// the client's bytes, so nothing here limits what reaches the upstream; a collaboration route
/// reads `input` and `instructions` as its conversation.
public struct ResponsesRequest: Decodable, Sendable, Equatable {
    /// One input item; only messages (`{"role", "content"}`, optionally `"type": "message"`)
    /// are read. `content` is a string or a list of parts.
    public struct Item: Decodable, Sendable, Equatable {
        public var type: String?
        public var role: String?
        public var content: Content?
    }

    public enum Content: Decodable, Sendable, Equatable {
        case text(String)
        case parts([Part])
        public init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) {
                self = .text(s)
                return
            }
            self = .parts(try c.decode([Part].self))
        }
    }

    public struct Part: Decodable, Sendable, Equatable {
        public var type: String
        public var text: String?
    }

    public enum Input: Decodable, Sendable, Equatable {
        case text(String)
        case items([Item])
        public init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if let s = try? c.decode(String.self) {
                self = .text(s)
                return
            }
            self = .items(try c.decode([Item].self))
        }
    }

    public var model: String
    public var input: Input?
    public var instructions: String?
    public var stream: Bool?
    public var temperature: Double?
    public var topP: Double?
    public var maxOutputTokens: Int?
    public var user: String?

    enum CodingKeys: String, CodingKey {
        case model, input, instructions, stream, temperature, user
        case topP = "top_p"
        case maxOutputTokens = "max_output_tokens"
    }

    public var isStream: Bool { stream ?? false }

    public static func decode(_ bytes: [UInt8]) throws(GatewayError) -> ResponsesRequest {
        let r: ResponsesRequest
        do {
            r = try JSONDecoder().decode(ResponsesRequest.self, from: Data(bytes))
        } catch let e as DecodingError {
            throw GatewayError.fromDecoding(e)
        } catch {
            throw GatewayError.invalidJSON("\(error)")
        }
        if r.model.isEmpty { throw .invalidField("model", "'model' must be a non-empty string.") }
        if let t = r.temperature, !(0...2).contains(t) {
            throw .invalidField("temperature", "'temperature' must be between 0 and 2, got \(t).")
        }
        if let p = r.topP, !(0...1).contains(p) { throw .invalidField("top_p", "'top_p' must be between 0 and 1, got \(p).") }
        if let m = r.maxOutputTokens, m < 16 {
            throw .invalidField("max_output_tokens", "'max_output_tokens' must be at least 16, got \(m).")
        }
        return r
    }
}
