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

    // MARK: Model routes (chat completions, completions, responses, embeddings)

    /// Forwards the client's body (model mapped) and relays the answer: a whole body with the
    /// upstream's status, or a stream event by event. `episode` is the log row to complete (a
    /// collaboration falling back passes its own, with the policy turns in it).
    func forward(_ incoming: Incoming, _ context: GatewayContext, episode: EpisodeRecord? = nil) async -> Response {
        var episode = episode ?? incoming.episode
        let upstreamBefore = episode.upstreamMs ?? 0
        let clock = ContinuousClock()
        let upstreamStart = clock.now
        let response: UpstreamResponse
        do {
            var headers = incoming.upstreamHTTPHeaders
            TraceHeaders.add(to: &headers, clientContext: incoming.traceContext)
            response = try await state.upstream.send(
                method: .POST, path: incoming.endpoint.rawValue,
                headers: headers, body: ByteBuffer(bytes: incoming.upstreamBody),
                forwardedAuthorization: incoming.forwardedAuthorization)
        } catch {
            episode.upstreamMs = upstreamBefore + clock.now.ms(since: upstreamStart)
            if episode.outcome == nil { episode.outcome = Outcome.upstreamError.label }
            let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamUnreachable("\(error)")
            return await state.fail(e, episode: &episode, context: context)
        }
        let contentType = response.headers.first(name: "content-type") ?? "application/json"
        let isSSE = contentType.lowercased().hasPrefix("text/event-stream")
        if (200..<300).contains(response.status) && isSSE {
            var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
            headers[.gatewayEpisodeID] = episode.id
            headers[.gatewayOverheadMs] = Replies.format(
                ContinuousClock.now.ms(since: context.start) - upstreamBefore - response.firstByteLatency.milliseconds)
            if let u = incoming.unsupported { headers[.gatewayUnsupported] = "\(u.param): \(u.reason)" }
            let started = episode
            let state = self.state
            return Response(
                status: .ok, headers: headers,
                body: ResponseBody { writer in
                    let result = await Self.relay(
                        response, into: &writer, state: state, episode: started, context: context,
                        upstreamStart: upstreamStart, upstreamBefore: upstreamBefore,
                        endsWithDone: incoming.endpoint != .responses)
                    if result.clientGone { return }
                    try await writer.finish(Self.timingTrailers(result.episode))
                })
        }
        // A whole body: success JSON, or an upstream error relayed with its own status.
        let bytes: ByteBuffer
        do {
            bytes = try await response.collect(upTo: 64 << 20)
        } catch {
            episode.upstreamMs = upstreamBefore + clock.now.ms(since: upstreamStart)
            episode.outcome = Outcome.upstreamError.label
            let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamBadResponse("\(error)")
            return await state.fail(e, episode: &episode, context: context)
        }
        episode.upstreamMs = upstreamBefore + clock.now.ms(since: upstreamStart)
        let succeeded = (200..<300).contains(response.status)
        // The summary for the log validates the JSON as it reads it; only when it fails is the
        // body checked on its own (valid JSON of an unexpected shape is still relayed).
        let summary = succeeded ? UpstreamCompletionSummary.decode(bytes) : nil
        if succeeded, summary == nil, !bytes.withUnsafeReadableBytes({ (try? state.scanner.scanObject($0)) != nil }) {
            // A success whose body is not a JSON object would only make the client's SDK fail
            // with a parse error; an OpenAI-shaped 502 says what happened.
            state.upstream.breaker.recordFailure()
            episode.outcome = Outcome.upstreamBadResponse.label
            return await state.fail(.upstreamBadResponse("the chat completion was not valid JSON"), episode: &episode, context: context)
        }
        episode.status = response.status
        if succeeded {
            episode.responseText = state.loggedResponse(summary?.text)
            episode.finishReason = summary?.finishReason
            episode.promptTokens = summary?.usage?.promptTokens
            episode.completionTokens = summary?.usage?.completionTokens
            episode.totalTokens = summary?.usage?.totalTokens
            if episode.outcome == nil { episode.outcome = Outcome.ok.label }
        } else {
            episode.outcome = Outcome.upstreamError.label
            episode.error = String(buffer: bytes).prefix(2000).description
        }
        let overhead = Replies.finishTiming(&episode, context: context)
        await state.record(episode)
        var headers: HTTPFields = [.contentType: contentType]
        headers[.gatewayEpisodeID] = episode.id
        headers[.gatewayOverheadMs] = Replies.format(overhead)
        if let u = incoming.unsupported { headers[.gatewayUnsupported] = "\(u.param): \(u.reason)" }
        if let ra = response.headers.first(name: "retry-after") { headers[.retryAfter] = ra }
        BufferedBodyMark.markBuffered()
        return Response(status: .init(code: response.status), headers: headers, body: .init(byteBuffer: bytes))
    }

    /// The timing a stream's head could not carry, as HTTP trailers.
    static func timingTrailers(_ episode: EpisodeRecord) -> HTTPFields {
        var t = HTTPFields()
        t[.gatewayOverheadMs] = Replies.format(episode.overheadMs ?? 0)
        t[.gatewayUpstreamMs] = Replies.format(episode.upstreamMs ?? 0)
        return t
    }

    /// Relays an upstream SSE stream event by event into `writer`, assembling the text for the
    /// log. The episode is committed before the final `[DONE]` goes out, so a client that saw
    /// the end of the stream can rely on the log holding it. Does not finish the writer.
    static func relay(
        _ response: UpstreamResponse, into writer: inout some ResponseBodyWriter, state: GatewayState,
        episode started: EpisodeRecord, context: GatewayContext,
        upstreamStart: ContinuousClock.Instant, upstreamBefore: Double,
        endsWithDone: Bool = true
    ) async -> (episode: EpisodeRecord, clientGone: Bool) {
        let body = response.body
        var episode = started
        var assembler = StreamAssembler()
        var parser = SSEParser()
        var logged = false
        var clientGone = false
        var lastUpstreamByte = ContinuousClock.now

        func log(outcome: Outcome, status: Int = 200, error: String? = nil) async {
            guard !logged else { return }
            logged = true
            episode.upstreamMs = upstreamBefore + lastUpstreamByte.ms(since: upstreamStart)
            episode.status = status
            if episode.outcome == nil || outcome == .clientDisconnected || status != 200 { episode.outcome = outcome.label }
            episode.error = error ?? episode.error
            episode.responseText = state.loggedResponse(assembler.text)
            episode.finishReason = assembler.finishReason
            episode.promptTokens = assembler.usage?.promptTokens
            episode.completionTokens = assembler.usage?.completionTokens
            episode.totalTokens = assembler.usage?.totalTokens
            Replies.finishTiming(&episode, context: context)
            await state.record(episode)
        }

        // Set when the upstream's stream goes wrong after the head: cut, silent past the idle
        // timeout, past the total timeout, or an event whose data is not JSON.
        var failure: GatewayError?
        var failureOutcome = Outcome.upstreamTruncated
        let totalTimeout = state.upstream.settings.totalTimeout
        do {
            stream: for try await chunk in body {
                lastUpstreamByte = ContinuousClock.now
                if lastUpstreamByte - upstreamStart > totalTimeout {
                    failure = .upstreamTimeout("total")
                    failureOutcome = .upstreamTimeout
                    break stream
                }
                let events = try parser.feed(chunk.readableBytesView)
                if events.isEmpty { continue }
                var out = ByteBuffer()
                for event in events {
                    if event.isDone {
                        if out.readableBytes > 0 {
                            do { try await writer.write(out) } catch {
                                clientGone = true
                                break stream
                            }
                            out.clear()
                        }
                        await log(outcome: .ok)
                    } else if !assembler.add(event) {
                        failure = .upstreamBadResponse("a stream event's data was not valid JSON")
                        failureOutcome = .upstreamBadResponse
                        if out.readableBytes > 0 { try? await writer.write(out) }
                        break stream
                    }
                    out.writeBytes(event.raw)
                }
                do { try await writer.write(out) } catch {
                    clientGone = true
                    break stream
                }
            }
        } catch {
            let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamBadResponse("\(error)")
            failure = e
            if e.status == 504 { failureOutcome = .upstreamTimeout }
        }

        if clientGone {
            // Logged with nginx's 499 (client closed request), as a non-stream request is.
            if !logged { await log(outcome: .clientDisconnected, status: 499) }
            return (episode, true)
        }
        if !logged, !endsWithDone, failure == nil, !parser.hasPartialEvent {
            // A Responses API stream ends with its last event, not with [DONE].
            await log(outcome: .ok)
        }
        if !logged {
            // The upstream ended without [DONE]: an error, a cut connection, or a truncated event.
            let e =
                failure
                ?? .upstreamBadResponse(
                    parser.hasPartialEvent ? "the stream ended in the middle of an event" : "the stream ended without [DONE]")
            state.upstream.breaker.recordFailure()
            await log(outcome: failureOutcome, status: e.status, error: e.body.message)
            // Tell the client in-band, as OpenAI does for errors after the stream started.
            var tail = ByteBuffer(bytes: SSE.encode(data: Array(e.encoded())))
            tail.writeBytes(SSE.done)
            try? await writer.write(tail)
        }
        return (episode, false)
    }

    // MARK: Other /v1 paths: forwarded untouched.

    func proxy(_ request: Request, _ context: GatewayContext) async throws -> Response {
        var request = request
        let config = state.config
        let path = request.uri.path
        var episode = EpisodeRecord(id: context.episodeID, route: path, mode: GatewayConfig.Mode.passthrough.rawValue)
        episode.keyID = context.keyID
        let buffer: ByteBuffer
        do {
            buffer = try await Replies.collectBody(&request, limit: config.limits.maxBodyBytes)
        } catch let e as GatewayError {
            return await state.fail(e, episode: &episode, context: context)
        }
        if buffer.readableBytes > 0 {
            episode.requestJSON = state.loggedRequest(Array(buffer.readableBytesView))
        }
        let target = request.uri.query.map { "\(path)?\($0)" } ?? path
        let clock = ContinuousClock()
        let upstreamStart = clock.now
        let response: UpstreamResponse
        do {
            response = try await state.upstream.send(
                method: HTTPMethod(rawValue: request.method.rawValue), path: target,
                headers: upstreamHeaders(request, config),
                body: buffer.readableBytes > 0 ? buffer : nil,
                forwardedAuthorization: forwardedAuthorization(request, config))
        } catch let e as GatewayError {
            episode.upstreamMs = clock.now.ms(since: upstreamStart)
            episode.outcome = Outcome.upstreamError.label
            return await state.fail(e, episode: &episode, context: context)
        }
        var headers = HTTPFields()
        headers[.contentType] = response.headers.first(name: "content-type") ?? "application/octet-stream"
        headers[.gatewayEpisodeID] = episode.id
        headers[.gatewayOverheadMs] = Replies.format(ContinuousClock.now.ms(since: context.start) - response.firstByteLatency.milliseconds)
        let state = self.state
        let body = response.body
        let status = response.status
        let started = episode
        return Response(
            status: .init(code: status), headers: headers,
            body: ResponseBody { writer in
                var episode = started
                var outcome: Outcome = (200..<300).contains(status) ? .ok : .upstreamError
                var failure: (any Error)?
                do {
                    for try await chunk in body {
                        do { try await writer.write(chunk) } catch {
                            outcome = .clientDisconnected
                            break
                        }
                    }
                } catch {
                    outcome = .upstreamTruncated
                    failure = error
                }
                episode.status = outcome == .clientDisconnected ? 499 : status
                episode.outcome = outcome.label
                episode.error = failure.map { "\($0)" }
                episode.upstreamMs = ContinuousClock.now.ms(since: upstreamStart)
                Replies.finishTiming(&episode, context: context)
                await state.record(episode)
                if outcome == .clientDisconnected { return }
                try await writer.finish(Passthrough.timingTrailers(episode))
            })
    }

    // MARK: GET /v1/models: the upstream's list plus the collaboration aliases.

    func models(_ request: Request, _ context: GatewayContext) async throws -> Response {
        let config = state.config
        let response = try await state.upstream.send(
            method: .GET, path: "/v1/models", headers: upstreamHeaders(request, config),
            body: nil, forwardedAuthorization: forwardedAuthorization(request, config))
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
        return try Replies.json(list, context: context)
    }

    /// Headers of a forwarded request without a model (content type, accept, allow-list).
    func upstreamHeaders(_ request: Request, _ config: GatewayConfig) -> HTTPHeaders {
        var h = HTTPHeaders()
        h.add(name: "content-type", value: request.headers[.contentType] ?? "application/json")
        h.add(name: "accept", value: request.headers[.accept] ?? "*/*")
        for (k, v) in Intake.forwardedHeaders(request, config) { h.add(name: k, value: v) }
        TraceHeaders.add(to: &h, from: request)
        return h
    }

    func forwardedAuthorization(_ request: Request, _ config: GatewayConfig) -> String? {
        guard config.upstream.forwardClientAuthorization, !state.auth.isEnabled else { return nil }
        return request.headers[.authorization]
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
