import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import OpenAIWire

/// A scriptable OpenAI-compatible server on a loopback port the OS picks. Tests and the
/// benchmark point the gateway at it. By default it answers deterministically from the request
/// ("echo: <last user message>"), streams the same text word by word, lists two models, and
/// answers /v1/embeddings; a custom `Script` replaces any reply, including faults.
public final class FakeUpstream: Sendable {
    public struct Received: Sendable {
        public var method: String
        public var path: String
        public var headers: [String: String]
        public var body: Data
        public var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] }
    }

    public enum Reply: Sendable {
        /// A complete body with a status.
        case json(status: Int, body: String, headers: [(String, String)] = [])
        /// SSE: each string is sent as its own write, after `delay`; `hangAfter` stops sending
        /// (without closing) after that many parts; `resetAfter` drops the connection after them.
        /// `contentType` lets a plain JSON body arrive in pieces too (to cut or stall it midway).
        case stream(
            parts: [String], delay: Duration = .zero, hangAfter: Int? = nil, resetAfter: Int? = nil,
            contentType: String = "text/event-stream")
        /// Wait, then reply.
        indirect case delayed(Duration, Reply)
        /// Close the connection without any response.
        case dropConnection
    }

    public typealias Script = @Sendable (Received) async -> Reply?

    private let state = FakeState()
    private let script: Script?
    private let app: Task<Void, any Error>
    public let port: Int
    public var baseURL: String { "http://127.0.0.1:\(port)/v1" }

    /// Starts the server and returns once it listens. `routes`: the paths it answers (GET and
    /// POST); a fake inference engine answers `/**` (SGLang's `/generate`, `/health`, ...).
    public init(script: Script? = nil, recordRequests: Bool = true, routes: [String] = ["/v1/**"]) async throws {
        self.script = script
        let state = self.state
        let router = Router()
        let (portStream, portCont) = AsyncStream<Int>.makeStream()
        for route in routes {
            router.on(RouterPath(route), method: .post) { req, ctx in
                try await FakeUpstream.handle(req, ctx, state: state, script: script, record: recordRequests)
            }
            router.on(RouterPath(route), method: .get) { req, ctx in
                try await FakeUpstream.handle(req, ctx, state: state, script: script, record: recordRequests)
            }
        }
        var logger = Logger(label: "fake-upstream")
        logger.logLevel = .critical
        let application = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: nil),
            onServerRunning: { channel in
                portCont.yield(channel.localAddress?.port ?? 0)
                portCont.finish()
            },
            logger: logger
        )
        app = Task { try await application.run() }
        var it = portStream.makeAsyncIterator()
        guard let p = await it.next(), p > 0 else { throw CancellationError() }
        port = p
    }

    public func stop() async {
        app.cancel()
        _ = try? await app.value
    }

    public var received: [Received] { state.all() }
    /// Streams whose client (the gateway) disconnected before the end.
    public var abortedStreams: Int { state.aborted() }
    public func clearReceived() { state.clear() }

    static func handle(
        _ req: Request, _ ctx: BasicRequestContext, state: FakeState, script: Script?,
        record: Bool
    ) async throws -> Response {
        var req = req
        let body = try await req.collectBody(upTo: 64 << 20)
        var headers: [String: String] = [:]
        for f in req.headers { headers[f.name.canonicalName] = f.value }
        let received = Received(
            method: req.method.rawValue, path: req.uri.path, headers: headers,
            body: Data(buffer: body))
        if record { state.append(received) }
        let reply = await script?(received) ?? defaultReply(received)
        return try await respond(reply, state: state)
    }

    static func respond(_ reply: Reply, state: FakeState) async throws -> Response {
        switch reply {
        case .json(let status, let body, let extra):
            var h: HTTPFields = [.contentType: "application/json"]
            for (k, v) in extra { if let n = HTTPField.Name(k) { h[n] = v } }
            return Response(status: .init(code: status), headers: h, body: .init(byteBuffer: ByteBuffer(string: body)))
        case .delayed(let d, let inner):
            try await Task.sleep(for: d)
            return try await respond(inner, state: state)
        case .dropConnection:
            // Throwing from the handler would make the server answer 500; failing the body
            // writer closes the connection instead, before any byte of the body.
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init { _ in throw FakeDrop() })
        case .stream(let parts, let delay, let hangAfter, let resetAfter, let contentType):
            return Response(
                status: .ok, headers: [.contentType: contentType, .cacheControl: "no-cache"],
                body: .init { writer in
                    do {
                        for (i, p) in parts.enumerated() {
                            if let hangAfter, i >= hangAfter {
                                try await Task.sleep(for: .seconds(3600))
                            }
                            if let resetAfter, i >= resetAfter {
                                // "After them": give the parts already written time to reach the reader
                                // before the connection goes, or a close racing the last write can drop it.
                                try await Task.sleep(for: .milliseconds(50))
                                throw FakeDrop()
                            }
                            if delay > .zero { try await Task.sleep(for: delay) }
                            try await writer.write(ByteBuffer(string: p))
                        }
                        try await writer.finish(nil)
                    } catch is FakeDrop {
                        throw FakeDrop()
                    } catch {
                        // The reader went away before the end.
                        state.streamAborted()
                        throw error
                    }
                })
        }
    }

    struct FakeDrop: Error {}

    /// A script answering chat completions by their last message: `table[lastMessage]`, else
    /// `unknown` (nil: the default echo reply). Other paths get the default replies.
    public static func answering(_ table: [String: String], unknown: String? = nil) -> Script {
        return { r in
            guard r.path == "/v1/chat/completions" else { return nil }
            let messages = r.json?["messages"] as? [[String: Any]] ?? []
            let last = messages.last?["content"] as? String ?? ""
            let model = r.json?["model"] as? String ?? ""
            guard let text = table[last] ?? unknown else { return nil }
            return .json(status: 200, body: completionJSON(model: model, text: text))
        }
    }

    // MARK: Default, deterministic behaviour.

    public static func echoText(for received: Received) -> String {
        let messages = received.json?["messages"] as? [[String: Any]] ?? []
        let last = messages.last { ($0["role"] as? String) == "user" }?["content"] as? String ?? ""
        return "echo: " + last
    }

    public static func defaultReply(_ r: Received) -> Reply {
        switch r.path {
        case "/v1/models":
            return .json(
                status: 200,
                body:
                    #"{"object":"list","data":[{"id":"gpt-4o-mini","object":"model","created":1700000000,"owned_by":"fake"},{"id":"gpt-4o","object":"model","created":1700000001,"owned_by":"fake"}]}"#
            )
        case "/v1/chat/completions":
            let json = r.json ?? [:]
            let model = json["model"] as? String ?? "unknown"
            let text = echoText(for: r)
            if json["stream"] as? Bool == true {
                let includeUsage = (json["stream_options"] as? [String: Any])?["include_usage"] as? Bool ?? false
                return .stream(parts: streamParts(model: model, text: text, includeUsage: includeUsage))
            }
            return .json(status: 200, body: completionJSON(model: model, text: text))
        case "/v1/responses":
            let json = r.json ?? [:]
            let model = json["model"] as? String ?? "unknown"
            var input = json["input"] as? String ?? ""
            if let items = json["input"] as? [[String: Any]], let last = items.last(where: { ($0["role"] as? String) == "user" }) {
                input =
                    last["content"] as? String
                    ?? ((last["content"] as? [[String: Any]])?.compactMap { $0["text"] as? String }.joined(separator: "\n") ?? "")
            }
            let text = "echo: " + input
            if json["stream"] as? Bool == true { return .stream(parts: responsesStreamParts(model: model, text: text)) }
            return .json(status: 200, body: responsesJSON(model: model, text: text, status: "completed"))
        case "/v1/embeddings":
            return .json(
                status: 200,
                body:
                    #"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.25,-0.5]}],"model":"emb","usage":{"prompt_tokens":2,"total_tokens":2}}"#
            )
        default:
            return .json(
                status: 404, body: #"{"error":{"message":"no such path","type":"invalid_request_error","param":null,"code":null}}"#)
        }
    }

    /// A Responses API `response` object whose one output message says `text`.
    public static func responsesJSON(model: String, text: String?, status: String) -> String {
        let output =
            text.map {
                #"[{"type":"message","id":"msg_fake","status":"completed","role":"assistant","content":[{"type":"output_text","text":\#(quote($0)),"annotations":[]}]}]"#
            } ?? "[]"
        let usage =
            text == nil
            ? "null"
            : #"{"input_tokens":11,"output_tokens":\#(text!.split(separator: " ").count),"total_tokens":\#(11 + text!.split(separator: " ").count),"input_tokens_details":{"cached_tokens":0},"output_tokens_details":{"reasoning_tokens":0}}"#
        return
            #"{"id":"resp_fake","object":"response","created_at":1700000000,"status":\#(quote(status)),"model":\#(quote(model)),"output":\#(output),"parallel_tool_calls":true,"tool_choice":"auto","tools":[],"error":null,"incomplete_details":null,"instructions":null,"metadata":{},"temperature":1.0,"top_p":1.0,"text":{"format":{"type":"text"}},"truncation":"disabled","usage":\#(usage)}"#
    }

    /// The Responses API event sequence for one text answer, one word per delta.
    public static func responsesStreamParts(model: String, text: String) -> [String] {
        var n = 0
        func ev(_ type: String, _ rest: String) -> String {
            defer { n += 1 }
            return "event: \(type)\ndata: {\"type\":\"\(type)\",\"sequence_number\":\(n),\(rest)}\n\n"
        }
        let inProgress = responsesJSON(model: model, text: nil, status: "in_progress")
        var parts = [
            ev("response.created", #""response":\#(inProgress)"#), ev("response.in_progress", #""response":\#(inProgress)"#),
            ev(
                "response.output_item.added",
                #""output_index":0,"item":{"type":"message","id":"msg_fake","status":"in_progress","role":"assistant","content":[]}"#),
            ev(
                "response.content_part.added",
                #""item_id":"msg_fake","output_index":0,"content_index":0,"part":{"type":"output_text","text":"","annotations":[]}"#),
        ]
        var current = ""
        var pieces: [String] = []
        for ch in text {
            current.append(ch)
            if ch == " " {
                pieces.append(current)
                current = ""
            }
        }
        if !current.isEmpty { pieces.append(current) }
        for p in pieces {
            parts.append(
                ev(
                    "response.output_text.delta",
                    #""item_id":"msg_fake","output_index":0,"content_index":0,"delta":\#(quote(p)),"logprobs":[]"#))
        }
        parts.append(
            ev(
                "response.output_text.done",
                #""item_id":"msg_fake","output_index":0,"content_index":0,"text":\#(quote(text)),"logprobs":[]"#))
        parts.append(
            ev(
                "response.content_part.done",
                #""item_id":"msg_fake","output_index":0,"content_index":0,"part":{"type":"output_text","text":\#(quote(text)),"annotations":[]}"#
            ))
        parts.append(
            ev(
                "response.output_item.done",
                #""output_index":0,"item":{"type":"message","id":"msg_fake","status":"completed","role":"assistant","content":[{"type":"output_text","text":\#(quote(text)),"annotations":[]}]}"#
            ))
        parts.append(ev("response.completed", #""response":\#(responsesJSON(model: model, text: text, status: "completed"))"#))
        return parts
    }

    public static func usageJSON(promptTokens: Int, completionTokens: Int) -> String {
        #"{"prompt_tokens":\#(promptTokens),"completion_tokens":\#(completionTokens),"total_tokens":\#(promptTokens + completionTokens)}"#
    }

    static func quote(_ s: String) -> String {
        String(decoding: try! JSONEncoder.wire.encode(s), as: UTF8.self)
    }

    public static func completionJSON(model: String, text: String, promptTokens: Int = 11, completionTokens: Int? = nil) -> String {
        let ct = completionTokens ?? text.split(separator: " ").count
        return
            #"{"id":"chatcmpl-fake","object":"chat.completion","created":1700000000,"model":\#(quote(model)),"choices":[{"index":0,"message":{"role":"assistant","content":\#(quote(text)),"refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":\#(usageJSON(promptTokens: promptTokens, completionTokens: ct)),"system_fingerprint":"fp_fake"}"#
    }

    /// The stream OpenAI sends: role-only first delta, content pieces, the finish chunk, the
    /// usage chunk (with include_usage), `[DONE]`.
    public static func streamParts(model: String, text: String, includeUsage: Bool) -> [String] {
        let head =
            #"{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":1700000000,"model":\#(quote(model)),"system_fingerprint":"fp_fake","choices":"#
        let usageNull = includeUsage ? #","usage":null"# : ""
        var parts = [
            "data: " + head
                + #"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}]"#
                + usageNull + "}\n\n"
        ]
        var pieces: [String] = []
        var current = ""
        for ch in text {
            current.append(ch)
            if ch == " " {
                pieces.append(current)
                current = ""
            }
        }
        if !current.isEmpty { pieces.append(current) }
        for p in pieces {
            parts.append(
                "data: " + head + #"[{"index":0,"delta":{"content":\#(quote(p))},"logprobs":null,"finish_reason":null}]"# + usageNull
                    + "}\n\n")
        }
        parts.append("data: " + head + #"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]"# + usageNull + "}\n\n")
        if includeUsage {
            parts.append("data: " + head + #"[],"usage":\#(usageJSON(promptTokens: 11, completionTokens: pieces.count))}"# + "\n\n")
        }
        parts.append("data: [DONE]\n\n")
        return parts
    }
}

final class FakeState: @unchecked Sendable {
    // Guarded by `lock`; the server's handlers run on many threads.
    private let lock = NSLock()
    private var requests: [FakeUpstream.Received] = []
    private var abortedCount = 0
    func streamAborted() { lock.withLock { abortedCount += 1 } }
    func aborted() -> Int { lock.withLock { abortedCount } }
    func append(_ r: FakeUpstream.Received) { lock.withLock { requests.append(r) } }
    func all() -> [FakeUpstream.Received] { lock.withLock { requests } }
    func clear() { lock.withLock { requests.removeAll() } }
}
