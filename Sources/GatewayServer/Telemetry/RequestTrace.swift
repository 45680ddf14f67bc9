import EpisodeLog
import Foundation
import HTTPTypes
import Hummingbird
import NIOConcurrencyHelpers
import NIOHTTP1
import OpenAIWire
import PromptR1
import Tracing
import TrafficLog

/// The spans of one request. The server span starts when the request arrives (its parent is the
/// client's `traceparent`, if any) and ends when the response's last byte was written. Upstream
/// call spans start live, so that their id travels upstream in `traceparent`; policy-turn spans
/// are written when the episode is logged, from the times `PolicyTurnClock` measured.
final class RequestTrace: Sendable {
    @TaskLocal static var current: RequestTrace?

    let telemetry: Telemetry
    let root: any Span
    private struct Open: Sendable {
        var episode: EpisodeRecord?
        /// The passthrough upstream span, ended when the episode (with its upstream time) is logged.
        var upstream: (span: any Span, start: EpochInstant)?
        var policyTurns: [PolicyTurnClock.Turn] = []
        var ended = false
    }
    private let open = NIOLockedValueBox(Open())

    init(telemetry: Telemetry, request: Request, episodeID: String) {
        self.telemetry = telemetry
        var parent = ServiceContext.topLevel
        telemetry.tracer.extract(request.headers, into: &parent, using: HTTPFieldsExtractor())
        root = telemetry.tracer.startSpan(
            "\(request.method.rawValue) \(request.uri.path)", context: parent, ofKind: .server,
            at: DefaultTracerClock.now, function: #function, file: #fileID, line: #line)
        root.attributes["http.request.method"] = request.method.rawValue
        root.attributes["url.path"] = request.uri.path
        root.attributes["gateway.episode_id"] = episodeID
    }

    // MARK: Upstream calls

    /// A client span for one upstream call, and the headers that carry it upstream.
    func startUpstreamSpan(model: String?) -> (any Span, HTTPHeaders) {
        let span = telemetry.tracer.startSpan(
            "chat \(model ?? "")", context: root.context, ofKind: .client,
            at: DefaultTracerClock.now, function: #function, file: #fileID, line: #line)
        span.attributes["gen_ai.operation.name"] = "chat"
        span.attributes["gen_ai.provider.name"] = "openai"
        if let model { span.attributes["gen_ai.request.model"] = model }
        var headers = HTTPHeaders()
        telemetry.tracer.inject(span.context, into: &headers, using: HTTPHeadersInjector())
        return (span, headers)
    }

    /// Passthrough: the upstream span starts as the request is sent and ends with the upstream
    /// time the episode records.
    func beginPassthroughUpstream(model: String?, into headers: inout HTTPHeaders) {
        let (span, h) = startUpstreamSpan(model: model)
        for (k, v) in h { headers.replaceOrAdd(name: k, value: v) }
        open.withLockedValue { $0.upstream = (span, .now) }
    }

    /// One collaboration upstream call, traced around `call`.
    func tracedUpstream(model: String?, messages: [UpstreamMessage], _ call: (HTTPHeaders) async throws -> UpstreamClient.ChatAnswer)
        async throws -> UpstreamClient.ChatAnswer
    {
        let (span, headers) = startUpstreamSpan(model: model)
        if telemetry.includeContent {
            span.attributes["gen_ai.input.messages"] = Self.json(messages.map { ["role": $0.role, "content": $0.content] })
        }
        do {
            let answer = try await call(headers)
            span.attributes["http.response.status_code"] = answer.status
            if let u = answer.usage {
                span.attributes["gen_ai.usage.input_tokens"] = u.promptTokens
                span.attributes["gen_ai.usage.output_tokens"] = u.completionTokens
            }
            if let f = answer.finishReason { span.attributes["gen_ai.response.finish_reasons"] = [f] }
            if telemetry.includeContent {
                span.attributes["gen_ai.output.messages"] = Self.json([["role": "assistant", "content": answer.text]])
            }
            span.end()
            return answer
        } catch {
            span.recordError(error)
            span.setStatus(SpanStatus(code: .error, message: "\(error)"))
            span.end()
            throw error
        }
    }

    // MARK: The episode

    /// The collaboration route's turn times, just before it logs the episode.
    func notePolicyTurns(_ turns: [PolicyTurnClock.Turn]) {
        open.withLockedValue { $0.policyTurns = turns }
    }

    /// Called as the episode is logged: its outcome, usage and model go on the spans.
    func noteEpisode(_ e: EpisodeRecord) {
        let (upstream, policyTurns) = open.withLockedValue { o -> ((span: any Span, start: EpochInstant)?, [PolicyTurnClock.Turn]) in
            o.episode = e
            defer {
                o.upstream = nil
                o.policyTurns = []
            }
            return (o.upstream, o.policyTurns)
        }
        if let upstream {
            let span = upstream.span
            let start = upstream.start
            if let m = e.upstreamModel { span.attributes["gen_ai.request.model"] = m }
            span.attributes["http.response.status_code"] = e.status
            if let p = e.promptTokens { span.attributes["gen_ai.usage.input_tokens"] = p }
            if let c = e.completionTokens { span.attributes["gen_ai.usage.output_tokens"] = c }
            if e.status >= 400 { span.setStatus(SpanStatus(code: .error, message: e.outcome)) }
            span.end(at: start.adding(ms: e.upstreamMs ?? 0))
        }
        let policyRows = e.turns.filter { $0.kind == "policy" }
        for (i, t) in policyTurns.enumerated() {
            let span = telemetry.tracer.startSpan(
                "policy turn \(t.turn)", context: root.context, ofKind: .internal,
                at: t.start, function: #function, file: #fileID, line: #line)
            span.attributes["gen_ai.operation.name"] = "text_completion"
            span.attributes["gen_ai.provider.name"] = "prompt-r1-gateway"
            if let v = e.policyVersion { span.attributes["gen_ai.request.model"] = v }
            span.attributes["gateway.policy.turn"] = t.turn
            if i < policyRows.count {
                let row = policyRows[i]
                span.attributes["gateway.policy.prefill_tokens"] = row.inputIDs?.count ?? 0
                span.attributes["gateway.policy.decode_tokens"] = row.outputIDs?.count ?? 0
                span.attributes["gen_ai.usage.input_tokens"] = row.inputIDs?.count ?? 0
                span.attributes["gen_ai.usage.output_tokens"] = row.outputIDs?.count ?? 0
                if telemetry.includeContent {
                    if let text = row.text {
                        span.attributes["gen_ai.output.messages"] = Self.json([["role": "assistant", "content": text]])
                    }
                    if let call = row.call { span.attributes["gateway.policy.prompt"] = call }
                }
            }
            span.end(at: t.end ?? .now)
        }
    }

    /// Ends the server span (once).
    func finish(status: Int, error: (any Error)? = nil) {
        let episode: EpisodeRecord? = open.withLockedValue { o in
            if o.ended { return nil }
            o.ended = true
            return o.episode ?? EpisodeRecord(id: "", route: "")
        }
        guard let episode else { return }
        root.attributes["http.response.status_code"] = status
        if !episode.id.isEmpty {
            root.attributes["gateway.mode"] = episode.mode
            if let m = episode.requestedModel {
                root.attributes["gen_ai.request.model"] = m
                root.attributes["gen_ai.operation.name"] = "chat"
                root.operationName = "chat \(m)"
            }
            if let m = episode.upstreamModel { root.attributes["gen_ai.response.model"] = m }
            if let v = episode.policyVersion { root.attributes["gateway.policy_version"] = v }
            if let o = episode.outcome { root.attributes["gateway.outcome"] = o }
            if let p = episode.promptTokens { root.attributes["gen_ai.usage.input_tokens"] = p }
            if let c = episode.completionTokens { root.attributes["gen_ai.usage.output_tokens"] = c }
            if let p = episode.policyTokens { root.attributes["gateway.policy_tokens"] = p }
            if let f = episode.finishReason { root.attributes["gen_ai.response.finish_reasons"] = [f] }
            if telemetry.includeContent {
                if let r = episode.requestJSON { root.attributes["gen_ai.input.messages"] = Self.messagesJSON(r) ?? r }
                if let t = episode.responseText {
                    root.attributes["gen_ai.output.messages"] = Self.json([["role": "assistant", "content": t]])
                }
            }
        }
        if let error {
            root.recordError(error)
            root.setStatus(SpanStatus(code: .error, message: "\(type(of: error))"))
        } else if status >= 500 {
            root.setStatus(SpanStatus(code: .error, message: "HTTP \(status)"))
        }
        root.end()
    }

    static func json(_ v: Any) -> String {
        (try? JSONSerialization.data(withJSONObject: v, options: [.sortedKeys, .withoutEscapingSlashes])).map {
            String(decoding: $0, as: UTF8.self)
        } ?? ""
    }

    /// The `messages` array of a logged request, as JSON.
    static func messagesJSON(_ request: String) -> String? {
        guard let obj = try? JSONSerialization.jsonObject(with: Data(request.utf8)) as? [String: Any], let m = obj["messages"] else {
            return nil
        }
        return json(m)
    }
}

/// When each policy turn of an episode started and finished (from the collaboration loop's
/// events), for the log's per-turn latency and the trace's policy spans.
final class PolicyTurnClock: Sendable {
    struct Turn: Sendable {
        var turn: Int
        var start: EpochInstant
        var end: EpochInstant?
        var ms: Double? {
            end.map { Double($0.nanosecondsSinceEpoch &- start.nanosecondsSinceEpoch) / 1e6 }
        }
    }
    private let turns = NIOLockedValueBox<[Turn]>([])

    func observe(_ event: CollaborationEvent) {
        switch event {
        case .turnStarted(let n):
            turns.withLockedValue { $0.append(Turn(turn: n, start: .now)) }
        case .policyTurnFinished(let n, _, _):
            turns.withLockedValue { t in
                if let i = t.lastIndex(where: { $0.turn == n && $0.end == nil }) { t[i].end = .now }
            }
        default:
            break
        }
    }

    var all: [Turn] { turns.withLockedValue { $0 } }

    /// Sets each policy row's latency (the k-th policy row is the k-th turn).
    func fill(_ rows: inout [TurnRecord]) {
        let t = all
        var k = 0
        for i in rows.indices where rows[i].kind == "policy" {
            if k < t.count, rows[i].latencyMs == nil { rows[i].latencyMs = t[k].ms }
            k += 1
        }
    }
}

/// Opens the request's trace around everything the router does for it, and closes it once the
/// response body has been written (a stream's last event included).
struct TracingMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let telemetry: Telemetry

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let trace = RequestTrace(telemetry: telemetry, request: request, episodeID: context.episodeID)
        var response: Response
        do {
            response = try await RequestTrace.$current.withValue(trace) { try await next(request, context) }
        } catch {
            trace.finish(status: (error as? GatewayError)?.status ?? 500, error: error)
            throw error
        }
        let status = Int(response.status.code)
        if BufferedBodyMark.current?.isBuffered == true {
            trace.finish(status: status)
            return response
        }
        let body = response.body
        response.body = ResponseBody(contentLength: body.contentLength) { writer in
            do {
                try await RequestTrace.$current.withValue(trace) { try await body.write(writer) }
                trace.finish(status: status)
            } catch {
                trace.finish(status: status, error: error)
                throw error
            }
        }
        return response
    }
}

/// W3C trace context on an upstream request: with tracing on, a new client span's
/// `traceparent` (same trace as the client's); with it off, the client's own headers, unchanged.
enum TraceHeaders {
    static let names = ["traceparent", "tracestate"]

    /// The client's own trace-context headers.
    static func client(_ request: Request) -> [(String, String)] {
        names.compactMap { name in HTTPField.Name(name).flatMap { request.headers[$0] }.map { (name, $0) } }
    }

    static func add(to headers: inout HTTPHeaders, from request: Request) {
        add(to: &headers, clientContext: client(request))
    }

    static func add(to headers: inout HTTPHeaders, clientContext: [(String, String)]) {
        if let trace = RequestTrace.current {
            trace.beginPassthroughUpstream(model: nil, into: &headers)
            return
        }
        for (k, v) in clientContext { headers.replaceOrAdd(name: k, value: v) }
    }
}

/// The collaboration loop's upstream with a client span around every call (the loop runs in a
/// task of its own, which does not see the request's task-local trace, so it is captured here).
struct TracedUpstream: UpstreamAnswering {
    let adapter: UpstreamAdapter
    var trace: RequestTrace? = RequestTrace.current

    func answer(messages: [UpstreamMessage], options: UpstreamCallOptions) async throws -> UpstreamAnswer {
        guard let trace else { return try await adapter.answer(messages: messages, options: options) }
        let a = try await trace.tracedUpstream(model: options.model, messages: messages) { headers in
            try await adapter.chat(messages: messages, options: options, extraHeaders: headers.map { ($0.name, $0.value) })
        }
        return UpstreamAnswer(
            text: a.text,
            usage: a.usage.map {
                UpstreamUsage(promptTokens: $0.promptTokens, completionTokens: $0.completionTokens, totalTokens: $0.totalTokens)
            },
            model: options.model, latency: a.latency)
    }
}
