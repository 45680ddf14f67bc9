import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import OpenAIWire
import TrafficLog

/// Passthrough: the client's request goes to the upstream unchanged apart from the model name,
/// and the upstream's answer comes back unchanged (a stream event by event, as it arrives).
struct Passthrough: Sendable {
    let state: GatewayState

    // MARK: POST /v1/chat/completions

    /// A validated chat request, ready to route.
    struct Incoming: Sendable {
        var bytes: [UInt8]
        var members: [JSONScanner.Member]
        var request: ChatCompletionRequest
        var keyID: String?
        var mode: GatewayConfig.Mode
        var upstreamModel: String
    }

    /// Reads, validates and routes a chat request. Problems after authentication are logged.
    func readChatRequest(_ request: inout Request, _ context: GatewayContext, episode: inout EpisodeRecord) async throws -> Incoming {
        let config = state.config
        let keyID = try state.auth.authenticate(authorization: request.headers[.authorization])
        episode.keyID = keyID
        let buffer = try await Self.collectBody(&request, limit: config.limits.maxBodyBytes)
        let bytes = Array(buffer.readableBytesView)
        episode.requestJSON = state.loggedRequest(bytes)
        let members: [JSONScanner.Member]
        do {
            members = try state.scanner.scanObject(bytes)
        } catch {
            throw GatewayError.invalidJSON(error.description)
        }
        let chat = try ChatCompletionRequest.decode(validated: bytes)
        episode.requestedModel = chat.model
        episode.stream = chat.isStream
        var (mode, upstreamModel) = config.route(forModel: chat.model)
        if let header = request.headers[HTTPField.Name("x-gateway-mode")!] {
            guard config.allowModeHeader else {
                throw GatewayError.invalidField("x-gateway-mode", "The x-gateway-mode header is disabled by this gateway's configuration.")
            }
            guard let m = GatewayConfig.Mode(rawValue: header.lowercased()) else {
                throw GatewayError.invalidField("x-gateway-mode", "x-gateway-mode must be 'passthrough' or 'collaborate', got '\(header.prefix(40))'.")
            }
            if m != mode {
                // An explicit mode keeps the requested name as the upstream model unless a rule mapped it.
                mode = m
            }
        }
        episode.mode = mode.rawValue
        episode.upstreamModel = upstreamModel
        return Incoming(bytes: bytes, members: members, request: chat, keyID: keyID, mode: mode, upstreamModel: upstreamModel)
    }

    /// Headers sent upstream: content type, accept, and the configured allow-list. Hop-by-hop
    /// headers and anything else the client sent stay here.
    func upstreamHeaders(from request: Request) -> HTTPHeaders {
        var h = HTTPHeaders()
        h.add(name: "content-type", value: request.headers[.contentType] ?? "application/json")
        h.add(name: "accept", value: request.headers[.accept] ?? "*/*")
        for name in state.config.upstream.forwardHeaders {
            if let n = HTTPField.Name(name) {
                for v in request.headers[values: n] { h.add(name: name, value: v) }
            }
        }
        TraceHeaders.add(to: &h, from: request)
        return h
    }

    func forwardedAuthorization(_ request: Request) -> String? {
        guard state.config.upstream.forwardClientAuthorization, !state.auth.isEnabled else { return nil }
        return request.headers[.authorization]
    }

    /// The body with its top-level "model" value replaced (all other bytes untouched).
    static func splice(model: String, into incoming: Incoming) -> [UInt8] {
        guard model != incoming.request.model, let m = incoming.members.member(named: "model") else { return incoming.bytes }
        var out: [UInt8] = []
        out.reserveCapacity(incoming.bytes.count + model.utf8.count)
        out.append(contentsOf: incoming.bytes[..<m.valueRange.lowerBound])
        out.append(contentsOf: (try? JSONEncoder.wire.encode(model)) ?? Data())
        out.append(contentsOf: incoming.bytes[m.valueRange.upperBound...])
        return out
    }

    func chatCompletions(_ request: Request, _ context: GatewayContext) async throws -> Response {
        var request = request
        var episode = EpisodeRecord(id: context.episodeID, route: "/v1/chat/completions", mode: "passthrough")
        let incoming: Incoming
        do {
            incoming = try await readChatRequest(&request, context, episode: &episode)
        } catch let e as GatewayError where e.status != 401 {
            return await fail(e, episode: &episode, context: context)
        }
        if incoming.mode == .collaborate {
            guard let collaborate = state.collaboration else {
                return await fail(.policyUnavailable(model: incoming.request.model), episode: &episode, context: context)
            }
            return try await collaborate(request, context, incoming, episode)
        }
        return try await forwardChat(request, context, incoming, episode: episode)
    }

    func forwardChat(_ request: Request, _ context: GatewayContext, _ incoming: Incoming, episode: EpisodeRecord) async throws -> Response {
        var episode = episode
        let body = Self.splice(model: incoming.upstreamModel, into: incoming)
        let clock = ContinuousClock()
        let upstreamStart = clock.now
        let response: UpstreamResponse
        do {
            response = try await state.upstream.send(method: .POST, path: "/v1/chat/completions",
                                                     headers: upstreamHeaders(from: request), body: ByteBuffer(bytes: body),
                                                     forwardedAuthorization: forwardedAuthorization(request))
        } catch let e as GatewayError {
            episode.upstreamMs = clock.now.ms(since: upstreamStart)
            episode.outcome = "upstream_error"
            return await fail(e, episode: &episode, context: context)
        }
        let contentType = response.headers.first(name: "content-type") ?? "application/json"
        let isSSE = contentType.lowercased().hasPrefix("text/event-stream")
        if (200..<300).contains(response.status) && isSSE {
            return relayStream(response, episode: episode, context: context, upstreamStart: upstreamStart)
        }
        // A whole body: success JSON, or an upstream error relayed with its own status.
        let bytes: ByteBuffer
        do {
            bytes = try await response.collect(upTo: 64 << 20)
        } catch {
            episode.upstreamMs = clock.now.ms(since: upstreamStart)
            episode.outcome = "upstream_error"
            let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamBadResponse("\(error)")
            return await fail(e, episode: &episode, context: context)
        }
        episode.upstreamMs = clock.now.ms(since: upstreamStart)
        let succeeded = (200..<300).contains(response.status)
        // The summary for the log validates the JSON as it reads it; only when it fails is the
        // body checked on its own (valid JSON of an unexpected shape is still relayed).
        let summary = succeeded ? UpstreamCompletionSummary.decode(bytes) : nil
        if succeeded, summary == nil, !bytes.withUnsafeReadableBytes({ (try? state.scanner.scanObject($0)) != nil }) {
            // A success whose body is not a JSON object would only make the client's SDK fail
            // with a parse error; an OpenAI-shaped 502 says what happened.
            state.upstream.breaker.recordFailure()
            episode.outcome = "upstream_bad_response"
            return await fail(.upstreamBadResponse("the chat completion was not valid JSON"), episode: &episode, context: context)
        }
        episode.status = response.status
        if succeeded {
            episode.responseText = state.loggedResponse(summary?.text)
            episode.finishReason = summary?.finishReason
            episode.promptTokens = summary?.usage?.promptTokens
            episode.completionTokens = summary?.usage?.completionTokens
            episode.totalTokens = summary?.usage?.totalTokens
            episode.outcome = "ok"
        } else {
            episode.outcome = "upstream_error"
            episode.error = String(buffer: bytes).prefix(2000).description
        }
        let overhead = Self.finishTiming(&episode, context: context)
        await state.record(episode)
        var headers: HTTPFields = [.contentType: contentType]
        headers[.gatewayEpisodeID] = episode.id
        headers[.gatewayOverheadMs] = Self.format(overhead)
        if let ra = response.headers.first(name: "retry-after") { headers[.retryAfter] = ra }
        BufferedBodyMark.markBuffered()
        return Response(status: .init(code: response.status), headers: headers, body: .init(byteBuffer: bytes))
    }

    /// Relays an upstream SSE stream event by event, assembling the text for the log. The
    /// episode is committed before the final `[DONE]` goes out, so a client that saw the end
    /// of the stream can rely on the log holding it.
    func relayStream(_ response: UpstreamResponse, episode: EpisodeRecord, context: GatewayContext,
                     upstreamStart: ContinuousClock.Instant) -> Response {
        let state = self.state
        var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        headers[.gatewayEpisodeID] = episode.id
        headers[.gatewayOverheadMs] = Self.format(ContinuousClock.now.ms(since: context.start) - response.firstByteLatency.milliseconds)
        let body = response.body
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            var episode = episode
            var assembler = StreamAssembler()
            var parser = SSEParser()
            var logged = false
            var clientGone = false
            var lastUpstreamByte = ContinuousClock.now

            func log(outcome: String, status: Int = 200, error: String? = nil) async {
                guard !logged else { return }
                logged = true
                episode.upstreamMs = lastUpstreamByte.ms(since: upstreamStart)
                episode.status = status
                episode.outcome = outcome
                episode.error = error
                episode.responseText = state.loggedResponse(assembler.text)
                episode.finishReason = assembler.finishReason
                episode.promptTokens = assembler.usage?.promptTokens
                episode.completionTokens = assembler.usage?.completionTokens
                episode.totalTokens = assembler.usage?.totalTokens
                _ = Passthrough.finishTiming(&episode, context: context)
                await state.record(episode)
            }

            // Set when the upstream's stream goes wrong after the head: cut, silent past the idle
            // timeout, past the total timeout, or an event whose data is not JSON.
            var failure: GatewayError?
            var failureOutcome = "upstream_truncated"
            let totalTimeout = state.upstream.settings.totalTimeout
            do {
                stream: for try await chunk in body {
                    lastUpstreamByte = ContinuousClock.now
                    if lastUpstreamByte - upstreamStart > totalTimeout {
                        failure = .upstreamTimeout("total")
                        failureOutcome = "upstream_timeout"
                        break stream
                    }
                    let events = try parser.feed(chunk.readableBytesView)
                    if events.isEmpty { continue }
                    var out = ByteBuffer()
                    for event in events {
                        if event.isDone {
                            if out.readableBytes > 0 {
                                do { try await writer.write(out) } catch { clientGone = true; break stream }
                                out.clear()
                            }
                            await log(outcome: "ok")
                        } else if !assembler.add(event) {
                            failure = .upstreamBadResponse("a stream event's data was not valid JSON")
                            failureOutcome = "upstream_bad_response"
                            if out.readableBytes > 0 { try? await writer.write(out) }
                            break stream
                        }
                        out.writeBytes(event.raw)
                    }
                    do { try await writer.write(out) } catch { clientGone = true; break stream }
                }
            } catch {
                let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamBadResponse("\(error)")
                failure = e
                if e.status == 504 { failureOutcome = "upstream_timeout" }
            }

            if clientGone {
                await log(outcome: "client_disconnected")
                return
            }
            if !logged {
                // The upstream ended without [DONE]: an error, a cut connection, or a truncated event.
                let e = failure ?? .upstreamBadResponse(parser.hasPartialEvent ? "the stream ended in the middle of an event" : "the stream ended without [DONE]")
                state.upstream.breaker.recordFailure()
                await log(outcome: failureOutcome, status: e.status, error: e.body.message)
                // Tell the client in-band, as OpenAI does for errors after the stream started.
                var tail = ByteBuffer(bytes: SSE.encode(data: Array(e.encoded())))
                tail.writeBytes(SSE.done)
                try? await writer.write(tail)
            }
            try await writer.finish(nil)
        })
    }

    // MARK: Other /v1 paths: forwarded untouched.

    func proxy(_ request: Request, _ context: GatewayContext) async throws -> Response {
        var request = request
        let config = state.config
        let path = request.uri.path
        var episode = EpisodeRecord(id: context.episodeID, route: path, mode: "passthrough")
        let keyID = try state.auth.authenticate(authorization: request.headers[.authorization])
        episode.keyID = keyID
        let buffer: ByteBuffer
        do {
            buffer = try await Self.collectBody(&request, limit: config.limits.maxBodyBytes)
        } catch let e as GatewayError {
            return await fail(e, episode: &episode, context: context)
        }
        if buffer.readableBytes > 0 {
            episode.requestJSON = state.loggedRequest(Array(buffer.readableBytesView))
        }
        let target = request.uri.query.map { "\(path)?\($0)" } ?? path
        let clock = ContinuousClock()
        let upstreamStart = clock.now
        let response: UpstreamResponse
        do {
            response = try await state.upstream.send(method: HTTPMethod(rawValue: request.method.rawValue), path: target,
                                                     headers: upstreamHeaders(from: request),
                                                     body: buffer.readableBytes > 0 ? buffer : nil,
                                                     forwardedAuthorization: forwardedAuthorization(request))
        } catch let e as GatewayError {
            episode.upstreamMs = clock.now.ms(since: upstreamStart)
            episode.outcome = "upstream_error"
            return await fail(e, episode: &episode, context: context)
        }
        var headers = HTTPFields()
        headers[.contentType] = response.headers.first(name: "content-type") ?? "application/octet-stream"
        headers[.gatewayEpisodeID] = episode.id
        headers[.gatewayOverheadMs] = Self.format(ContinuousClock.now.ms(since: context.start) - response.firstByteLatency.milliseconds)
        let state = self.state
        let body = response.body
        let status = response.status
        let started = episode
        return Response(status: .init(code: status), headers: headers, body: ResponseBody { writer in
            var episode = started
            var outcome = (200..<300).contains(status) ? "ok" : "upstream_error"
            var failure: (any Error)?
            do {
                for try await chunk in body {
                    do { try await writer.write(chunk) } catch { outcome = "client_disconnected"; break }
                }
            } catch {
                outcome = "upstream_truncated"
                failure = error
            }
            episode.status = status
            episode.outcome = outcome
            episode.error = failure.map { "\($0)" }
            episode.upstreamMs = ContinuousClock.now.ms(since: upstreamStart)
            _ = Passthrough.finishTiming(&episode, context: context)
            await state.record(episode)
            try await writer.finish(nil)
        })
    }

    // MARK: GET /v1/models: the upstream's list plus the collaboration aliases.

    func models(_ request: Request, _ context: GatewayContext) async throws -> Response {
        _ = try state.auth.authenticate(authorization: request.headers[.authorization])
        let response = try await state.upstream.send(method: .GET, path: "/v1/models", headers: upstreamHeaders(from: request),
                                                     body: nil, forwardedAuthorization: forwardedAuthorization(request))
        let bytes: ByteBuffer
        do { bytes = try await response.collect(upTo: 16 << 20) } catch { throw UpstreamClient.mapError(error) }
        guard (200..<300).contains(response.status) else {
            var headers: HTTPFields = [.contentType: response.headers.first(name: "content-type") ?? "application/json"]
            headers[.gatewayEpisodeID] = context.episodeID
            return Response(status: .init(code: response.status), headers: headers, body: .init(byteBuffer: bytes))
        }
        guard var list = try? JSONDecoder().decode(ModelList.self, from: Data(bytes.readableBytesView)) else {
            throw GatewayError.upstreamBadResponse("the model list was not valid JSON")
        }
        let created = Int(Date().timeIntervalSince1970)
        let existing = Set(list.data.map(\.id))
        for alias in state.config.collaborationAliases(upstreamModels: list.data.map(\.id)) where !existing.contains(alias) {
            list.data.append(.init(id: alias, created: created, ownedBy: "prompt-r1-gateway"))
        }
        return try Self.json(list, context: context)
    }

    // MARK: Helpers

    /// Reads the whole request body, or fails with 413 past the limit.
    static func collectBody(_ request: inout Request, limit: Int) async throws -> ByteBuffer {
        do {
            return try await request.collectBody(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw GatewayError.bodyTooLarge(limit: limit)
        } catch let e as HTTPError where e.status == .contentTooLarge {
            throw GatewayError.bodyTooLarge(limit: limit)
        }
    }

    /// Logs a failed episode and builds the OpenAI-shaped error response.
    func fail(_ e: GatewayError, episode: inout EpisodeRecord, context: GatewayContext) async -> Response {
        episode.status = e.status
        episode.error = e.body.message
        if episode.outcome == nil { episode.outcome = e.status >= 500 ? "error" : "rejected" }
        let overhead = Self.finishTiming(&episode, context: context)
        await state.record(episode)
        var response = Self.errorResponse(e, episodeID: episode.id)
        response.headers[.gatewayOverheadMs] = Self.format(overhead)
        BufferedBodyMark.markBuffered()
        return response
    }

    /// Sets total and overhead times; returns the overhead.
    @discardableResult
    static func finishTiming(_ episode: inout EpisodeRecord, context: GatewayContext) -> Double {
        episode.totalMs = ContinuousClock.now.ms(since: context.start)
        let overhead = max(0, episode.totalMs - (episode.upstreamMs ?? 0))
        episode.overheadMs = overhead
        return overhead
    }

    static func errorResponse(_ e: GatewayError, episodeID: String) -> Response {
        var headers: HTTPFields = [.contentType: "application/json"]
        headers[.gatewayEpisodeID] = episodeID
        for (k, v) in e.headers { if let n = HTTPField.Name(k) { headers[n] = v } }
        return Response(status: .init(code: e.status), headers: headers, body: .init(byteBuffer: ByteBuffer(data: e.encoded())))
    }

    static func json(_ value: some Encodable, status: HTTPResponse.Status = .ok, context: GatewayContext) throws -> Response {
        let data = try JSONEncoder.wire.encode(value)
        var headers: HTTPFields = [.contentType: "application/json"]
        headers[.gatewayEpisodeID] = context.episodeID
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(data: data)))
    }

    /// Milliseconds with three decimals, as `String(format: "%.3f")` but without the
    /// Foundation formatter (a few microseconds per call on the request path).
    static func format(_ ms: Double) -> String {
        let v = max(0, ms)
        guard v < 1e12 else { return String(format: "%.3f", v) }
        let thousandths = Int((v * 1000).rounded())
        let frac = thousandths % 1000
        let pad = frac < 10 ? "00" : frac < 100 ? "0" : ""
        return "\(thousandths / 1000).\(pad)\(frac)"
    }
}

/// Collects what a chat completion stream said, for the log.
struct StreamAssembler {
    private(set) var text = ""
    private(set) var finishReason: String?
    private(set) var usage: Usage?
    private(set) var toolCallDeltas = 0

    /// Adds one event; false when its data is not JSON at all (valid JSON that is not a chunk,
    /// such as an in-band error object, is passed on untouched).
    @discardableResult
    mutating func add(_ event: SSEEvent) -> Bool {
        guard !event.data.isEmpty else { return true }
        guard let chunk = StreamChunkSummary.decode(event.data) else {
            return (try? JSONSerialization.jsonObject(with: Data(event.data), options: [.fragmentsAllowed])) != nil
        }
        for choice in chunk.choices where choice.index == 0 {
            if let c = choice.content { text += c }
            if let f = choice.finishReason { finishReason = f }
            toolCallDeltas += choice.toolCalls
        }
        if let u = chunk.usage { usage = u }
        return true
    }
}

extension HTTPField.Name {
    static let gatewayEpisodeID = HTTPField.Name("x-gateway-episode-id")!
    static let gatewayOverheadMs = HTTPField.Name("x-gateway-overhead-ms")!
}
