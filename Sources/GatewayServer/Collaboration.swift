import EpisodeLog
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import NIOHTTP1
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog

/// The upstream as the collaboration loop sees it: one chat completion per call, with the
/// client's sampling parameters where they make sense.
struct LoopUpstream: UpstreamAnswering {
    let client: UpstreamClient
    let stop: [String]?
    /// The request's trace (the loop runs in a task of its own, which does not see it).
    var trace: RequestTrace? = RequestTrace.current

    func answer(messages: [UpstreamMessage], options: UpstreamCallOptions) async throws -> UpstreamAnswer {
        let call = { (headers: HTTPHeaders) in
            try await client.chat(model: options.model ?? "", messages: messages.map { OpenAIWire.ChatMessage(role: $0.role, content: $0.content) },
                                  temperature: options.temperature, maxTokens: options.maxTokens, stop: stop, headers: headers)
        }
        let answer: UpstreamClient.ChatAnswer
        if let trace {
            answer = try await trace.tracedUpstream(model: options.model, messages: messages, call)
        } else {
            answer = try await call(HTTPHeaders())
        }
        return UpstreamAnswer(text: answer.text,
                              usage: answer.usage.map { UpstreamUsage(promptTokens: $0.promptTokens, completionTokens: $0.completionTokens, totalTokens: $0.totalTokens) },
                              model: options.model, latency: answer.latency)
    }
}

/// Streams the body of `<answer>...</answer>` out of a turn's text deltas as soon as it is
/// generated: leading white space dropped, trailing white space and a possible partial closing
/// tag held back until they are known not to end the answer (the final answer is stripped).
struct AnswerExtractor {
    private var buffer = ""
    private var inAnswer = false
    private var done = false
    private var started = false
    private var held = ""
    private(set) var emitted = ""

    mutating func reset() {
        self = AnswerExtractor()
    }

    /// Feeds a delta; returns answer text that can go to the client now.
    mutating func feed(_ delta: String) -> String {
        guard !done else { return "" }
        buffer += delta
        if !inAnswer {
            guard let r = buffer.range(of: "<answer>") else { return "" }
            inAnswer = true
            buffer = String(buffer[r.upperBound...])
        }
        var out = ""
        if let end = buffer.range(of: "</answer>") {
            out = take(String(buffer[..<end.lowerBound]), final: true)
            done = true
            buffer = ""
        } else {
            // Keep back what could be the start of "</answer>".
            let keep = min(buffer.count, "</answer>".count - 1)
            let safe = String(buffer.dropLast(keep))
            buffer = String(buffer.suffix(keep))
            out = take(safe, final: false)
        }
        emitted += out
        return out
    }

    private mutating func take(_ s: String, final: Bool) -> String {
        var text = held + s
        held = ""
        if !started {
            text = String(text.drop(while: \.isWhitespace))
            if text.isEmpty { return "" }
            started = true
        }
        if final { return String(text.reversed().drop(while: \.isWhitespace).reversed()) }
        let trimmed = String(text.reversed().drop(while: \.isWhitespace).reversed())
        held = String(text.dropFirst(trimmed.count))
        return trimmed
    }
}

/// POST /v1/chat/completions for collaboration routes: the Prompt-R1 loop between the embedded
/// policy and the upstream, answered as a normal chat completion or stream.
struct CollaborationRoute: Sendable {
    let state: GatewayState
    let holder: PolicyHolder
    let passthrough: Passthrough
    let limiter: ConcurrencyLimiter

    init(state: GatewayState, holder: PolicyHolder, passthrough: Passthrough) {
        self.state = state
        self.holder = holder
        self.passthrough = passthrough
        limiter = ConcurrencyLimiter(limit: state.config.policy.maxConcurrentEpisodes)
    }

    func options(for incoming: Passthrough.Incoming, config: GatewayConfig.Policy) -> CollaborationOptions {
        var o = CollaborationOptions()
        o.limits = CollaborationLimits(maxTurns: config.maxTurns, maxTokensPerTurn: config.maxTokensPerTurn,
                                       maxPolicyTokensPerEpisode: config.maxPolicyTokensPerEpisode,
                                       maxUpstreamCalls: config.maxUpstreamCalls,
                                       deadline: .now + .milliseconds(Int(config.episodeDeadlineSeconds * 1000)))
        o.maxResultChars = config.maxResultChars
        // Serving: no upstream call whose answer could not be used any more.
        o.callOnFinalTurn = false
        o.upstream = UpstreamCallOptions(model: incoming.upstreamModel, temperature: incoming.request.temperature,
                                         topP: incoming.request.topP, maxTokens: incoming.request.outputTokenLimit)
        return o
    }

    func sampling(_ p: LoadedPolicy, _ config: GatewayConfig.Policy) -> SamplingParameters {
        let d = p.policy.model.generationDefaults
        let temperature = config.temperature.map(Float.init) ?? d.temperature ?? 0
        return SamplingParameters(temperature: temperature, topK: config.topK ?? d.topK ?? 0,
                                  topP: config.topP.map(Float.init) ?? d.topP ?? 1,
                                  seed: config.seed.map(UInt64.init))
    }

    func handle(_ request: Request, _ context: GatewayContext, _ incoming: Passthrough.Incoming, _ started: EpisodeRecord) async throws -> Response {
        var episode = started
        let config = state.config
        guard let loaded = holder.acquireForRequest() else {
            return await passthrough.fail(.policyUnavailable(model: incoming.request.model), episode: &episode, context: context)
        }
        // An episode needs the upstream: while its circuit is open, fail fast instead of
        // spending policy time on prompts that cannot be sent.
        if let wait = state.upstream.breaker.secondsUntilProbe {
            episode.outcome = "upstream_error"
            return await passthrough.fail(.upstreamCircuitOpen(retryAfterSeconds: wait), episode: &episode, context: context)
        }
        guard await limiter.acquire(timeout: .milliseconds(config.policy.queueTimeoutMs)) else {
            let e = GatewayError.overloaded(retryAfterSeconds: 2, "\(config.policy.maxConcurrentEpisodes) collaboration episodes running")
            return await passthrough.fail(e, episode: &episode, context: context)
        }
        episode.policyVersion = loaded.version
        let messages = incoming.request.messages.map { ClientMessage(role: $0.role, content: $0.text) }
        let rendering = QuestionRenderingPolicy(mode: config.policy.questionContext == "conversation" ? .foldContext : .lastUserMessageOnly)
        let rendered: RenderedQuestion
        do {
            rendered = try QuestionRenderer.render(messages, policy: rendering)
        } catch {
            limiter.release()
            return await passthrough.fail(.invalidField("messages", "Collaboration needs a non-empty user message: \(error)"), episode: &episode, context: context)
        }
        episode.question = rendered.question
        var opts = options(for: incoming, config: config.policy)
        if config.policy.forwardClientSystem { opts.clientSystemMessage = rendered.clientSystem }
        let loop = CollaborationLoop(options: opts, upstream: LoopUpstream(client: state.upstream, stop: incoming.request.stop?.values),
                                     makeSession: loaded.policy.factory(sampling: sampling(loaded, config.policy)))
        let trace: Bool
        switch config.policy.trace {
        case "on": trace = true
        case "off": trace = false
        default: trace = ["1", "true", "on"].contains(request.headers[HTTPField.Name("x-gateway-trace")!]?.lowercased() ?? "")
        }
        let run = EpisodeRun(route: self, context: context, incoming: incoming, loaded: loaded, loop: loop,
                             question: rendered.question, trace: trace, config: config)
        if incoming.request.isStream {
            return run.streamResponse(episode: episode)
        }
        defer { limiter.release() }
        return try await run.completeResponse(episode: episode)
    }
}

/// One collaboration request in flight.
struct EpisodeRun: Sendable {
    let route: CollaborationRoute
    let context: GatewayContext
    let incoming: Passthrough.Incoming
    let loaded: LoadedPolicy
    let loop: CollaborationLoop
    let question: String
    let trace: Bool
    let config: GatewayConfig
    /// Times of the policy turns (the log's per-turn latency, the trace's policy spans).
    let turnClock = PolicyTurnClock()

    var state: GatewayState { route.state }
    var completionID: String { "chatcmpl-" + context.episodeID }
    /// One timestamp for the whole response (every chunk of a stream carries the same `created`).
    let created = Int(Date().timeIntervalSince1970)

    /// What the client gets in the end, and how the log describes it.
    struct Final {
        var content: String?
        var outcome: String
        var finishReason: String
        var error: GatewayError?
        var fallbackUsage: Usage?
    }

    /// Chooses the final answer (or fallback) for a finished episode.
    func resolve(_ e: PromptR1.Episode) async -> Final {
        let policy = config.policy
        switch e.outcome {
        case .answer(let a):
            let content = policy.finalAnswer == "upstream" ? (e.lastUpstreamAnswer ?? a) : a
            return Final(content: content, outcome: "answer", finishReason: "stop")
        case .noAnswer, .emptyAnswer:
            let label = e.outcome == .noAnswer ? "no_answer" : "empty_answer"
            switch policy.fallback {
            case "last_upstream_answer" where e.lastUpstreamAnswer != nil:
                return Final(content: e.lastUpstreamAnswer, outcome: "fallback_last_upstream(\(label))", finishReason: "stop")
            case "error":
                return Final(content: nil, outcome: label, finishReason: "stop",
                             error: GatewayError(status: 502, message: "The policy model produced no answer (\(e.stopReason.rawValue)).",
                                                 type: "policy_error", code: label))
            default:
                return await direct(outcome: "fallback_direct(\(label))")
            }
        case .error(.cancelled):
            return Final(content: nil, outcome: "client_disconnected", finishReason: "stop")
        case .error(.upstream(let m)):
            return Final(content: nil, outcome: "upstream_error", finishReason: "stop",
                         error: GatewayError(status: 502, message: "The upstream LLM failed during collaboration: \(m.prefix(500))",
                                             type: "upstream_error", code: "upstream_error"))
        case .error(let kind):
            let label: String
            if case .deadlineExceeded = kind { label = "policy_timeout" } else { label = "policy_error" }
            if policy.onPolicyError == "passthrough" { return await direct(outcome: "fallback_passthrough(\(label))") }
            return Final(content: nil, outcome: label, finishReason: "stop",
                         error: GatewayError(status: 500, message: "The policy model failed: \(kind)", type: "policy_error", code: label))
        }
    }

    /// One upstream call with the client's original messages.
    func direct(outcome: String) async -> Final {
        do {
            let a = try await state.upstream.chat(model: incoming.upstreamModel, messages: incoming.request.messages,
                                                  temperature: incoming.request.temperature, maxTokens: incoming.request.outputTokenLimit,
                                                  stop: incoming.request.stop?.values)
            return Final(content: a.text, outcome: outcome, finishReason: a.finishReason ?? "stop", fallbackUsage: a.usage)
        } catch {
            let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamUnreachable("\(error)")
            return Final(content: nil, outcome: outcome + "_failed", finishReason: "stop", error: e)
        }
    }

    func usage(_ e: PromptR1.Episode, _ final: Final) -> Usage {
        var prompt = 0, completion = 0
        for t in e.turns { if let u = t.upstream?.usage { prompt += u.promptTokens; completion += u.completionTokens } }
        if let f = final.fallbackUsage { prompt += f.promptTokens; completion += f.completionTokens }
        let policyPrompt = e.promptTokenIDs.count + e.turns.reduce(0) { $0 + $1.injectedTokenIDs.count }
        return Usage(promptTokens: prompt, completionTokens: completion,
                     policyTokens: .init(promptTokens: policyPrompt, completionTokens: e.generatedTokenCount))
    }

    /// The collaboration trace in the protocol's own notation.
    static func traceText(_ e: PromptR1.Episode) -> String {
        var s = ""
        for t in e.turns {
            s += t.generatedText
            if let a = t.upstream?.answer { s += "\n<interaction_response>\n\(a)\n</interaction_response>\n" }
            else if case .malformedCall(let err, _) = t.parse { s += "\n<interaction_response>\n\(err.rawValue)\n</interaction_response>\n" }
        }
        return s
    }

    /// Writes the episode with one row per policy turn and per upstream call.
    func log(_ e: PromptR1.Episode, final: Final, usage u: Usage, episode started: EpisodeRecord, status: Int) async {
        var record = started
        record.status = status
        record.outcome = final.outcome
        record.error = final.error?.body.message
        record.responseText = state.loggedResponse(final.content)
        record.finishReason = final.finishReason
        record.promptTokens = u.promptTokens
        record.completionTokens = u.completionTokens
        record.totalTokens = u.totalTokens
        record.policyTokens = (u.policyTokens?.promptTokens ?? 0) + (u.policyTokens?.completionTokens ?? 0)
        record.formatScore = PromptR1Reward.formatScore(e.rewardText)
        let rows = EpisodeMapping.turnRows(e, redact: state.loggedResponse)
        record.turns = rows.turns
        turnClock.fill(&record.turns)
        RequestTrace.current?.notePolicyTurns(turnClock.all)
        record.upstreamMs = rows.upstreamMs
        _ = Passthrough.finishTiming(&record, context: context)
        await state.record(record)
    }

    // MARK: Non-streaming

    func completeResponse(episode started: EpisodeRecord) async throws -> Response {
        // The episode stops when the client gives up (closes its side of the connection).
        let loop = self.loop, question = self.question
        let clock = turnClock
        let episodeTask = Task { await loop.run(question: question, onEvent: { clock.observe($0) }) }
        ClientGoneWatcher.onClientGone(context.channel) { episodeTask.cancel() }
        let e = await withTaskCancellationHandler { await episodeTask.value } onCancel: { episodeTask.cancel() }
        let final = await resolve(e)
        let u = usage(e, final)
        if final.outcome == "client_disconnected" {
            // Logged with nginx's 499 (client closed request); nobody reads the response.
            await log(e, final: final, usage: u, episode: started, status: 499)
            return Passthrough.errorResponse(GatewayError(status: 499, message: "The client closed the connection.",
                                                          type: "invalid_request_error", code: "client_closed"), episodeID: context.episodeID)
        }
        if let err = final.error {
            await log(e, final: final, usage: u, episode: started, status: err.status)
            return Passthrough.errorResponse(err, episodeID: context.episodeID)
        }
        await log(e, final: final, usage: u, episode: started, status: 200)
        let message = ChatCompletion.Message(content: final.content ?? "", reasoningContent: trace ? Self.traceText(e) : nil)
        let body = ChatCompletion(id: completionID, created: created, model: incoming.request.model,
                                  choices: [.init(message: message, finishReason: final.finishReason)], usage: u)
        var response = try Passthrough.json(body, context: context)
        response.headers[.gatewayOverheadMs] = Passthrough.format(ContinuousClock.now.ms(since: context.start))
        return response
    }

    // MARK: Streaming

    func streamResponse(episode started: EpisodeRecord) -> Response {
        var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        headers[.gatewayEpisodeID] = context.episodeID
        headers[.gatewayOverheadMs] = Passthrough.format(ContinuousClock.now.ms(since: context.start))
        let run = self
        return Response(status: .ok, headers: headers, body: ResponseBody { writer in
            defer { run.route.limiter.release() }
            let (events, continuation) = AsyncStream<StreamItem>.makeStream()
            // The episode runs in its own task; its events and a keep-alive ticker feed one
            // stream that this task writes out in order. Detached: a plain Task would inherit the
            // connection's event-loop executor preference, and the loop's timer races then ran
            // ~30x slower there (measured: 3 s instead of 0.1 s for a two-turn episode).
            let episodeTask = Task.detached {
                let e = await run.loop.run(question: run.question) { event in run.turnClock.observe(event); continuation.yield(.event(event)) }
                continuation.yield(.done(e))
                continuation.finish()
            }
            let keepalive = Task {
                let interval = Duration.milliseconds(Int(run.config.policy.keepaliveSeconds * 1000))
                while !Task.isCancelled {
                    try await Task.sleep(for: interval)
                    continuation.yield(.keepalive)
                }
            }
            defer { keepalive.cancel() }
            var answer = AnswerExtractor()
            var sentRole = false
            var clientGone = false
            var lastWrite = ContinuousClock.now

            func send(_ delta: ChatCompletionChunk.Delta, finish: String? = nil, usage: Usage? = nil, choices: Bool = true) async {
                guard !clientGone else { return }
                var d = delta
                if !sentRole { d.role = "assistant"; sentRole = true }
                let chunk = ChatCompletionChunk(id: run.completionID, created: run.created, model: run.incoming.request.model,
                                                choices: choices ? [.init(delta: d, finishReason: finish)] : [], usage: usage)
                guard let data = try? JSONEncoder.wire.encode(chunk) else { return }
                do {
                    try await writer.write(ByteBuffer(bytes: SSE.encode(data: data)))
                    lastWrite = .now
                } catch {
                    clientGone = true
                    episodeTask.cancel()
                }
            }

            var finished: PromptR1.Episode?
            for await item in events {
                switch item {
                case .keepalive:
                    if ContinuousClock.now - lastWrite >= .milliseconds(Int(run.config.policy.keepaliveSeconds * 900)) {
                        do { try await writer.write(ByteBuffer(bytes: SSE.keepAlive)); lastWrite = .now } catch {
                            clientGone = true
                            episodeTask.cancel()
                        }
                    }
                case .event(let event):
                    switch event {
                    case .turnStarted:
                        answer.reset()
                    case .policyTextDelta(_, let text):
                        if run.trace { await send(.init(reasoningContent: text)) }
                        if run.config.policy.finalAnswer == "policy" {
                            let a = answer.feed(text)
                            if !a.isEmpty { await send(.init(content: a)) }
                        }
                    case .upstreamAnswer(_, let a, _):
                        if run.trace { await send(.init(reasoningContent: "\n<interaction_response>\n\(a)\n</interaction_response>\n")) }
                    case .callRejected(_, let err):
                        if run.trace { await send(.init(reasoningContent: "\n<interaction_response>\n\(err.rawValue)\n</interaction_response>\n")) }
                    default:
                        break
                    }
                case .done(let e):
                    finished = e
                }
            }
            guard let e = finished else { try await writer.finish(nil); return }
            let final = await run.resolve(e)
            let u = run.usage(e, final)
            if clientGone {
                var f = final
                f.outcome = "client_disconnected"
                await run.log(e, final: f, usage: u, episode: started, status: 200)
                return
            }
            if let err = final.error {
                await run.log(e, final: final, usage: u, episode: started, status: err.status)
                var tail = ByteBuffer(bytes: SSE.encode(data: Array(err.encoded())))
                tail.writeBytes(SSE.done)
                try? await writer.write(tail)
                try await writer.finish(nil)
                return
            }
            // Whatever of the final content has not been streamed yet (all of it for a fallback or
            // final_answer=upstream; a remainder if the streamed answer was cut differently).
            let content = final.content ?? ""
            if content.hasPrefix(answer.emitted) {
                let rest = String(content.dropFirst(answer.emitted.count))
                if !rest.isEmpty || !sentRole { await send(.init(content: rest)) }
            } else {
                await send(.init(content: content))
            }
            await send(.init(), finish: final.finishReason)
            if run.incoming.request.wantsUsageInStream { await send(.init(), usage: u, choices: false) }
            // Committed before [DONE]: a client that saw the end can rely on the log.
            await run.log(e, final: final, usage: u, episode: started, status: 200)
            try? await writer.write(ByteBuffer(bytes: SSE.done))
            try await writer.finish(nil)
        })
    }

    enum StreamItem: Sendable {
        case event(CollaborationEvent)
        case keepalive
        case done(PromptR1.Episode)
    }
}
