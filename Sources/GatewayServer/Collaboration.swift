import EpisodeLog
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import OpenAIWire
import PolicyEngine
import PromptR1
import TrafficLog

/// Collaboration routes: the Prompt-R1 loop between the embedded policy and the upstream,
/// answered as a chat completion (or stream) or as a Responses API response (or stream).
/// `n > 1` runs n episodes at once (the engine batches their sessions); each is its own
/// logged episode, which makes a ready-made GRPO group once feedback arrives.
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

    func options(for incoming: Incoming, config: GatewayConfig.Policy) -> CollaborationOptions {
        var o = CollaborationOptions()
        o.limits = CollaborationLimits(
            maxTurns: config.maxTurns, maxTokensPerTurn: config.maxTokensPerTurn,
            maxPolicyTokensPerEpisode: config.maxPolicyTokensPerEpisode,
            maxUpstreamCalls: config.maxUpstreamCalls,
            deadline: .now + .milliseconds(Int(config.episodeDeadlineSeconds * 1000)))
        o.maxResultChars = config.maxResultChars
        // Serving: no upstream call whose answer could not be used any more.
        o.callOnFinalTurn = false
        // The client's sampling parameters travel in the adapter's `UpstreamChatParameters`.
        o.upstream = UpstreamCallOptions(model: incoming.upstreamModel)
        return o
    }

    func sampling(_ p: LoadedPolicy, _ config: GatewayConfig.Policy) -> SamplingParameters {
        let d = p.generationDefaults
        let temperature = config.temperature.map(Float.init) ?? d.temperature ?? 0
        return SamplingParameters(
            temperature: temperature, topK: config.topK ?? d.topK ?? 0,
            topP: config.topP.map(Float.init) ?? d.topP ?? 1,
            seed: config.seed.map(UInt64.init))
    }

    func respond(_ incoming: Incoming, _ context: GatewayContext) async -> Response {
        var episode = incoming.episode
        let config = state.config
        guard let loaded = await holder.acquireForRequest() else {
            return await state.fail(.policyUnavailable(model: incoming.model), episode: &episode, context: context)
        }
        // An episode needs the upstream: while its circuit is open, fail fast instead of
        // spending policy time on prompts that cannot be sent.
        if let wait = state.upstream.breaker.secondsUntilProbe {
            episode.outcome = Outcome.upstreamError.label
            return await state.fail(.upstreamCircuitOpen(retryAfterSeconds: wait), episode: &episode, context: context)
        }
        let n = incoming.chat?.n ?? 1
        guard n <= config.policy.maxConcurrentEpisodes else {
            return await state.fail(
                .invalidField(
                    "n",
                    "'n' is at most \(config.policy.maxConcurrentEpisodes) on this collaboration route (policy.max_concurrent_episodes), got \(n)."
                ),
                episode: &episode, context: context)
        }
        var permits: [ConcurrencyLimiter.Permit] = []
        for _ in 0..<n {
            guard let p = await limiter.permit(timeout: .milliseconds(config.policy.queueTimeoutMs)) else {
                let e = GatewayError.overloaded(
                    retryAfterSeconds: 2, "\(config.policy.maxConcurrentEpisodes) collaboration episodes running")
                return await state.fail(e, episode: &episode, context: context)
            }
            permits.append(p)
        }
        episode.policyVersion = loaded.version
        let rendering = QuestionRenderingPolicy(mode: config.policy.questionContext == .conversation ? .foldContext : .lastUserMessageOnly)
        let rendered: RenderedQuestion
        do {
            rendered = try QuestionRenderer.render(CollaborationSupport.conversation(incoming), policy: rendering)
        } catch {
            let param = incoming.endpoint == .responses ? "input" : "messages"
            return await state.fail(
                .invalidField(param, "Collaboration needs a non-empty user message: \(error)"), episode: &episode, context: context)
        }
        episode.question = state.loggedQuestion(rendered.question)
        var opts = options(for: incoming, config: config.policy)
        if config.policy.forwardClientSystem { opts.clientSystemMessage = rendered.clientSystem }
        let parameters = CollaborationSupport.parameters(incoming)
        let policySampling = sampling(loaded, config.policy)
        let factory = loaded.factory(sampling: policySampling)
        episode.policySampled = !policySampling.isGreedy
        var runs: [EpisodeRun] = []
        for i in 0..<n {
            let adapter = UpstreamAdapter(
                client: state.upstream, parameters: parameters, headers: incoming.forwardedHeaders,
                forwardedAuthorization: incoming.forwardedAuthorization)
            var record = episode
            if i > 0 { record.id = UUIDv7.generate() }
            runs.append(
                EpisodeRun(
                    index: i, record: record, adapter: adapter,
                    loop: CollaborationLoop(options: opts, upstream: TracedUpstream(adapter: adapter), makeSession: factory)))
        }
        let trace: Bool
        switch config.policy.trace {
        case .on: trace = true
        case .off: trace = false
        case .onRequest: trace = incoming.traceRequested
        }
        let collaboration = Collaboration(
            route: self, context: context, incoming: incoming, question: rendered.question,
            trace: trace, config: config, runs: runs, permits: permits)
        if incoming.isStream { return collaboration.streamResponse() }
        return await collaboration.completeResponse()
    }
}

/// One episode of a request (a request with `n > 1` has n).
struct EpisodeRun: Sendable {
    var index: Int
    /// The log row as far as the intake and the route filled it.
    var record: EpisodeRecord
    var adapter: UpstreamAdapter
    var loop: CollaborationLoop
    /// Times of the policy turns (the log's per-turn latency, the trace's policy spans).
    let turnClock = PolicyTurnClock()
}

/// A collaboration request in flight.
struct Collaboration: Sendable {
    let route: CollaborationRoute
    let context: GatewayContext
    let incoming: Incoming
    let question: String
    let trace: Bool
    let config: GatewayConfig
    let runs: [EpisodeRun]
    let permits: [ConcurrencyLimiter.Permit]

    var state: GatewayState { route.state }
    var isResponses: Bool { incoming.endpoint == .responses }
    var completionID: String { (isResponses ? "resp_" : "chatcmpl-") + context.episodeID }
    /// One timestamp for the whole response (every chunk of a stream carries the same `created`).
    let created = Int(Date().timeIntervalSince1970)

    init(
        route: CollaborationRoute, context: GatewayContext, incoming: Incoming, question: String, trace: Bool,
        config: GatewayConfig, runs: [EpisodeRun], permits: [ConcurrencyLimiter.Permit]
    ) {
        self.route = route
        self.context = context
        self.incoming = incoming
        self.question = question
        self.trace = trace
        self.config = config
        self.runs = runs
        self.permits = permits
    }

    /// What a finished episode gives the client.
    enum Resolution: Sendable {
        /// Text for the client: the answer, or a fallback that produced text.
        case content(String, outcome: Outcome, finishReason: String, extraUsage: Usage?, extraUpstreamMs: Double)
        /// The client's original request goes upstream as passthrough would send it.
        case forward(Outcome)
        /// An upstream 4xx, relayed with its status and body.
        case relay(UpstreamStatusError)
        case failure(GatewayError, Outcome)
        case cancelled
    }

    /// Chooses the final answer (or fallback) for a finished episode.
    func resolve(_ run: EpisodeRun, _ e: PromptR1.Episode) async -> Resolution {
        let policy = config.policy
        switch e.outcome {
        case .answer(let a):
            let content = policy.finalAnswer == .upstream ? (e.lastUpstreamAnswer ?? a) : a
            return .content(content, outcome: .answer, finishReason: "stop", extraUsage: nil, extraUpstreamMs: 0)
        case .noAnswer, .emptyAnswer:
            let reason: Outcome.Reason = e.outcome == .noAnswer ? .noAnswer : .emptyAnswer
            switch policy.fallback {
            case .lastUpstreamAnswer where e.lastUpstreamAnswer != nil:
                return .content(
                    e.lastUpstreamAnswer ?? "", outcome: .fallbackLastUpstream(reason: reason), finishReason: "stop",
                    extraUsage: nil, extraUpstreamMs: 0)
            case .error:
                return .failure(
                    GatewayError(
                        status: 502, message: "The policy model produced no answer (\(e.stopReason.rawValue)).",
                        type: "policy_error", code: reason.rawValue),
                    reason == .noAnswer ? .noAnswer : .emptyAnswer)
            case .direct, .lastUpstreamAnswer:
                return await forwardOrDirect(run, .fallbackDirect(reason: reason), failed: .fallbackDirect(reason: reason, failed: true))
            }
        case .error(.cancelled):
            return .cancelled
        case .error(.upstream(let m)):
            switch run.adapter.failures.first {
            case let s as UpstreamStatusError where (400..<500).contains(s.status):
                return .relay(s)
            case let g as GatewayError where g.status != 502:
                return .failure(g, .upstreamError)
            default:
                return .failure(
                    GatewayError(
                        status: 502, message: "The upstream LLM failed during collaboration: \(m.prefix(500))",
                        type: "upstream_error", code: "upstream_error"), .upstreamError)
            }
        case .error(let kind):
            let reason: Outcome.Reason
            if case .deadlineExceeded = kind { reason = .policyTimeout } else { reason = .policyError }
            if policy.onPolicyError == .passthrough {
                return await forwardOrDirect(
                    run, .fallbackPassthrough(reason: reason), failed: .fallbackPassthrough(reason: reason, failed: true))
            }
            return .failure(
                GatewayError(status: 500, message: "The policy model failed: \(kind)", type: "policy_error", code: reason.rawValue),
                reason == .policyTimeout ? .policyTimeout : .policyError)
        }
    }

    /// With one episode, the client's own request is forwarded as passthrough would (its body
    /// untouched apart from the model). With several, one direct upstream call per episode with
    /// the client's messages and parameters answers that episode's choice.
    func forwardOrDirect(_ run: EpisodeRun, _ outcome: Outcome, failed: Outcome) async -> Resolution {
        guard runs.count > 1, let chat = incoming.chat else { return .forward(outcome) }
        let start = ContinuousClock.now
        do {
            var parameters = run.adapter.parameters
            parameters.passAlong = CollaborationSupport.passAlong(incoming)
            let a = try await state.upstream.chat(
                model: incoming.upstreamModel, messages: chat.messages, parameters: parameters,
                headers: incoming.forwardedHeaders, forwardedAuthorization: incoming.forwardedAuthorization)
            return .content(
                a.text, outcome: outcome, finishReason: a.finishReason ?? "stop", extraUsage: a.usage,
                extraUpstreamMs: ContinuousClock.now.ms(since: start))
        } catch let s as UpstreamStatusError where (400..<500).contains(s.status) {
            return .relay(s)
        } catch {
            let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamUnreachable("\(error)")
            return .failure(e, failed)
        }
    }

    func usage(_ e: PromptR1.Episode, extra: Usage?) -> Usage {
        var prompt = 0
        var completion = 0
        for t in e.turns {
            if let u = t.upstream?.usage {
                prompt += u.promptTokens
                completion += u.completionTokens
            }
        }
        if let f = extra {
            prompt += f.promptTokens
            completion += f.completionTokens
        }
        let policyPrompt = e.promptTokenIDs.count + e.turns.reduce(0) { $0 + $1.injectedTokenIDs.count }
        return Usage(
            promptTokens: prompt, completionTokens: completion,
            policyTokens: .init(promptTokens: policyPrompt, completionTokens: e.generatedTokenCount))
    }

    /// The collaboration trace in the protocol's own notation.
    static func traceText(_ e: PromptR1.Episode) -> String {
        var s = ""
        for t in e.turns {
            s += t.generatedText
            if let a = t.upstream?.answer {
                s += "\n<interaction_response>\n\(a)\n</interaction_response>\n"
            } else if case .malformedCall(let err, _) = t.parse {
                s += "\n<interaction_response>\n\(err.rawValue)\n</interaction_response>\n"
            }
        }
        return s
    }

    /// The log row of a finished episode, with one row per policy turn and per upstream call.
    /// Its times are final except when the request is then forwarded (the forward adds its own).
    func record(
        _ run: EpisodeRun, _ e: PromptR1.Episode, outcome: Outcome, status: Int, content: String?,
        finishReason: String?, error: String?, usage u: Usage, extraUpstreamMs: Double = 0
    ) -> EpisodeRecord {
        var record = run.record
        record.status = status
        record.outcome = outcome.label
        record.error = error
        record.responseText = state.loggedResponse(content)
        record.finishReason = finishReason
        record.promptTokens = u.promptTokens
        record.completionTokens = u.completionTokens
        record.totalTokens = u.totalTokens
        record.policyTokens = (u.policyTokens?.promptTokens ?? 0) + (u.policyTokens?.completionTokens ?? 0)
        record.formatScore = PromptR1Reward.formatScore(e.rewardText)
        let rows = state.turnRows(e)
        record.turns = rows.turns
        run.turnClock.fill(&record.turns)
        if run.index == 0 { RequestTrace.current?.notePolicyTurns(run.turnClock.all) }
        record.trainable = !state.config.log.redactBodies
        record.policyLogprobs = e.policyLogprobs
        record.upstreamMs = rows.upstreamMs + extraUpstreamMs
        Replies.finishTiming(&record, context: context)
        return record
    }

    /// The policy's part of an episode: its duration minus the upstream calls inside it.
    static func policyMs(_ e: PromptR1.Episode) -> Double {
        let upstream = e.turns.reduce(0.0) { $0 + ($1.upstream?.latencySeconds ?? 0) } * 1000
        return max(0, e.durationSeconds * 1000 - upstream)
    }

    func timing(_ record: EpisodeRecord, _ e: PromptR1.Episode) -> GatewayTiming {
        GatewayTiming(
            totalMs: record.totalMs, upstreamMs: record.upstreamMs ?? 0, overheadMs: record.overheadMs ?? 0,
            policyMs: Self.policyMs(e))
    }

    func timingHeaders(_ t: GatewayTiming, into headers: inout HTTPFields) {
        headers[.gatewayOverheadMs] = Replies.format(t.overheadMs)
        headers[.gatewayUpstreamMs] = Replies.format(t.upstreamMs)
        if let p = t.policyMs { headers[.gatewayPolicyMs] = Replies.format(p) }
    }

    var episodeIDs: String { runs.map(\.record.id).joined(separator: ",") }

    /// Runs every episode; `onEvent` gets each one's events with its index. The episodes run in
    /// detached tasks: a plain Task would inherit the connection's event-loop executor
    /// preference, and the loop's timer races then ran ~30x slower there (measured: 3 s instead
    /// of 0.1 s for a two-turn episode).
    func runAll(onEvent: (@Sendable (Int, CollaborationEvent) -> Void)?) -> Task<[PromptR1.Episode], Never> {
        let runs = self.runs
        let question = self.question
        return Task.detached {
            await withTaskGroup(of: (Int, PromptR1.Episode).self) { group in
                for run in runs {
                    group.addTask {
                        let i = run.index
                        let clock = run.turnClock
                        let e = await run.loop.run(
                            question: question,
                            onEvent: { @Sendable event in
                                clock.observe(event)
                                onEvent?(i, event)
                            })
                        return (i, e)
                    }
                }
                var out: [PromptR1.Episode?] = Array(repeating: nil, count: runs.count)
                for await (i, e) in group { out[i] = e }
                return out.map { $0! }
            }
        }
    }

    // MARK: Non-streaming

    func completeResponse() async -> Response {
        defer { for p in permits { p.release() } }
        // The episodes stop when the client gives up (closes its side of the connection).
        let task = runAll(onEvent: nil)
        ClientGoneWatcher.onClientGone(context.channel) { task.cancel() }
        let episodes = await withTaskCancellationHandler {
            await task.value
        } onCancel: {
            task.cancel()
        }
        var resolutions: [Resolution] = []
        for (run, e) in zip(runs, episodes) { resolutions.append(await resolve(run, e)) }

        if resolutions.contains(where: {
            if case .cancelled = $0 { return true }
            return false
        }) {
            // Logged with nginx's 499 (client closed request); nobody reads the response.
            for (run, e) in zip(runs, episodes) {
                await state.record(
                    record(
                        run, e, outcome: .clientDisconnected, status: 499, content: nil, finishReason: nil,
                        error: "The client closed the connection.", usage: usage(e, extra: nil)))
            }
            return Replies.error(
                GatewayError(
                    status: 499, message: "The client closed the connection.",
                    type: "invalid_request_error", code: "client_closed"), episodeID: context.episodeID)
        }
        if runs.count == 1, case .forward(let outcome) = resolutions[0] {
            let r = record(
                runs[0], episodes[0], outcome: outcome, status: 200, content: nil, finishReason: nil, error: nil,
                usage: usage(episodes[0], extra: nil))
            return await route.passthrough.forward(incoming, context, episode: r)
        }
        // The first failing episode decides the response; every episode is logged.
        var failure: Response?
        var choices: [(content: String, finish: String)] = []
        var total = Usage(promptTokens: 0, completionTokens: 0, policyTokens: .init(promptTokens: 0, completionTokens: 0))
        var records: [EpisodeRecord] = []
        for (i, (run, e)) in zip(runs, episodes).enumerated() {
            switch resolutions[i] {
            case .content(let text, let outcome, let finish, let extra, let extraMs):
                let u = usage(e, extra: extra)
                total = Self.add(total, u)
                choices.append((text, finish))
                records.append(
                    record(
                        run, e, outcome: outcome, status: 200, content: text, finishReason: finish, error: nil,
                        usage: u, extraUpstreamMs: extraMs))
            case .relay(let s):
                records.append(
                    record(
                        run, e, outcome: .upstreamError, status: s.status, content: nil, finishReason: nil,
                        error: s.description, usage: usage(e, extra: nil)))
                if failure == nil {
                    var headers: HTTPFields = [.contentType: s.contentType]
                    headers[.gatewayEpisodeID] = context.episodeID
                    failure = Response(status: .init(code: s.status), headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: s.body)))
                }
            case .failure(let err, let outcome):
                records.append(
                    record(
                        run, e, outcome: outcome, status: err.status, content: nil, finishReason: nil,
                        error: err.body.message, usage: usage(e, extra: nil)))
                if failure == nil { failure = Replies.error(err, episodeID: context.episodeID) }
            case .forward, .cancelled:
                break  // handled above
            }
        }
        if let failure {
            // Every episode shares the response's status.
            for var r in records {
                r.status = Int(failure.status.code)
                await state.record(r)
            }
            var response = failure
            if let first = records.first { timingHeaders(timing(first, episodes[0]), into: &response.headers) }
            response.headers[.gatewayEpisodeIDs] = episodeIDs
            BufferedBodyMark.markBuffered()
            return response
        }
        for r in records { await state.record(r) }
        let t = timing(records[0], episodes[0])
        let reasoning = trace ? episodes.map(Self.traceText) : []
        var response: Response
        do {
            if isResponses {
                let body = ResponsesShape.response(
                    id: completionID, created: created, model: incoming.model, text: choices[0].content,
                    usage: total, status: "completed", timing: nil)
                response = try ResponsesShape.jsonResponse(body, context: context)
            } else {
                let body = ChatCompletion(
                    id: completionID, created: created, model: incoming.model,
                    choices: choices.enumerated().map { i, c in
                        ChatCompletion.Choice(
                            index: i, message: ChatCompletion.Message(content: c.content, reasoningContent: trace ? reasoning[i] : nil),
                            finishReason: c.finish)
                    }, usage: total)
                response = try Replies.json(body, context: context)
            }
        } catch {
            return Replies.error(.internalError("encoding the response failed"), episodeID: context.episodeID)
        }
        timingHeaders(t, into: &response.headers)
        response.headers[.gatewayEpisodeIDs] = episodeIDs
        BufferedBodyMark.markBuffered()
        return response
    }

    static func add(_ a: Usage, _ b: Usage) -> Usage {
        Usage(
            promptTokens: a.promptTokens + b.promptTokens, completionTokens: a.completionTokens + b.completionTokens,
            policyTokens: .init(
                promptTokens: (a.policyTokens?.promptTokens ?? 0) + (b.policyTokens?.promptTokens ?? 0),
                completionTokens: (a.policyTokens?.completionTokens ?? 0) + (b.policyTokens?.completionTokens ?? 0)))
    }

    // MARK: Streaming

    enum StreamItem: Sendable {
        case event(Int, CollaborationEvent)
        case keepalive
        case done([PromptR1.Episode])
    }

    /// The stream: the head at once, the trace (when asked for) live, and each choice's content
    /// once its episode has ended and the content is final. Content is never sent while it could
    /// still be withdrawn (an `<answer>` may turn out to be followed by a call, or be cut by the
    /// token limit, or a fallback may replace it), so the content deltas always add up to what
    /// the same request gets without streaming.
    func streamResponse() -> Response {
        var headers: HTTPFields = [.contentType: "text/event-stream", .cacheControl: "no-cache"]
        headers[.gatewayEpisodeID] = context.episodeID
        headers[.gatewayEpisodeIDs] = episodeIDs
        // Only the time before the head: the rest is in the trailers and the last chunk.
        headers[.gatewayOverheadMs] = Replies.format(ContinuousClock.now.ms(since: context.start))
        let run = self
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                defer { for p in run.permits { p.release() } }
                var out = StreamOut(shape: run.isResponses ? .responses : .chat, run: run)
                let (events, continuation) = AsyncStream<StreamItem>.makeStream()
                let episodes = run.runAll { i, event in continuation.yield(.event(i, event)) }
                let finisher = Task {
                    let e = await episodes.value
                    continuation.yield(.done(e))
                    continuation.finish()
                }
                _ = finisher
                let keepalive = Task {
                    let interval = Duration.milliseconds(Int(run.config.policy.keepaliveSeconds * 1000))
                    while !Task.isCancelled {
                        try await Task.sleep(for: interval)
                        continuation.yield(.keepalive)
                    }
                }
                defer { keepalive.cancel() }
                var lastWrite = ContinuousClock.now
                var clientGone = false
                func write(_ bytes: [UInt8]) async {
                    guard !clientGone, !bytes.isEmpty else { return }
                    do {
                        try await writer.write(ByteBuffer(bytes: bytes))
                        lastWrite = .now
                    } catch {
                        clientGone = true
                        episodes.cancel()
                    }
                }
                await write(out.start())
                var finished: [PromptR1.Episode]?
                for await item in events {
                    switch item {
                    case .keepalive:
                        if ContinuousClock.now - lastWrite >= .milliseconds(Int(run.config.policy.keepaliveSeconds * 900)) {
                            await write(SSE.keepAlive)
                        }
                    case .event(let i, let event):
                        guard run.trace else { continue }
                        switch event {
                        case .policyTextDelta(_, let text):
                            await write(out.trace(i, text))
                        case .upstreamAnswer(_, let a, _):
                            await write(out.trace(i, "\n<interaction_response>\n\(a)\n</interaction_response>\n"))
                        case .callRejected(_, let err):
                            await write(out.trace(i, "\n<interaction_response>\n\(err.rawValue)\n</interaction_response>\n"))
                        default:
                            break
                        }
                    case .done(let e):
                        finished = e
                    }
                }
                keepalive.cancel()
                guard let episodes = finished else {
                    try await writer.finish(nil)
                    return
                }
                if clientGone {
                    // Logged with nginx's 499 (client closed request), as a non-stream request is.
                    for (r, e) in zip(run.runs, episodes) {
                        await run.state.record(
                            run.record(
                                r, e, outcome: .clientDisconnected, status: 499, content: nil, finishReason: nil,
                                error: "The client closed the connection.", usage: run.usage(e, extra: nil)))
                    }
                    return
                }
                var resolutions: [Resolution] = []
                for (r, e) in zip(run.runs, episodes) { resolutions.append(await run.resolve(r, e)) }
                if run.runs.count == 1, case .forward(let outcome) = resolutions[0] {
                    // The client's own request, streamed by the upstream, relayed into this stream.
                    let r = run.record(
                        run.runs[0], episodes[0], outcome: outcome, status: 200, content: nil, finishReason: nil, error: nil,
                        usage: run.usage(episodes[0], extra: nil))
                    if let final = await run.forwardIntoStream(r, writer: &writer) {
                        try await writer.finish(Passthrough.timingTrailers(final))
                    }
                    return
                }
                var records: [EpisodeRecord] = []
                var failure: GatewayError?
                var total = Usage(promptTokens: 0, completionTokens: 0, policyTokens: .init(promptTokens: 0, completionTokens: 0))
                for (i, (r, e)) in zip(run.runs, episodes).enumerated() {
                    switch resolutions[i] {
                    case .content(let text, let outcome, let finish, let extra, let extraMs):
                        let u = run.usage(e, extra: extra)
                        total = Self.add(total, u)
                        await write(out.content(i, text, finish: finish))
                        records.append(
                            run.record(
                                r, e, outcome: outcome, status: 200, content: text, finishReason: finish, error: nil,
                                usage: u, extraUpstreamMs: extraMs))
                    case .relay(let s):
                        let err = GatewayError(
                            status: s.status, message: s.message, type: "invalid_request_error", code: "upstream_status_\(s.status)")
                        if failure == nil { failure = err }
                        records.append(
                            run.record(
                                r, e, outcome: .upstreamError, status: s.status, content: nil, finishReason: nil,
                                error: s.description, usage: run.usage(e, extra: nil)))
                    case .failure(let err, let outcome):
                        if failure == nil { failure = err }
                        records.append(
                            run.record(
                                r, e, outcome: outcome, status: err.status, content: nil, finishReason: nil,
                                error: err.body.message, usage: run.usage(e, extra: nil)))
                    case .forward, .cancelled:
                        break
                    }
                }
                let t = run.timing(records[0], episodes[0])
                if let failure {
                    for var rec in records {
                        rec.status = failure.status
                        await run.state.record(rec)
                    }
                    await write(out.failure(failure))
                } else {
                    await write(out.end(usage: total, timing: t))
                    // Committed before [DONE]: a client that saw the end can rely on the log.
                    for rec in records { await run.state.record(rec) }
                    await write(out.done())
                }
                var trailers = HTTPFields()
                run.timingHeaders(t, into: &trailers)
                try await writer.finish(trailers)
            })
    }

    /// Sends the client's original request upstream and relays the stream it answers with.
    /// Returns the final log row (nil when the client went away).
    func forwardIntoStream(_ started: EpisodeRecord, writer: inout any ResponseBodyWriter) async -> EpisodeRecord? {
        var record = started
        let upstreamBefore = record.upstreamMs ?? 0
        let upstreamStart = ContinuousClock.now
        do {
            let response = try await state.upstream.send(
                method: .POST, path: incoming.endpoint.rawValue,
                headers: incoming.upstreamHTTPHeaders, body: ByteBuffer(bytes: incoming.upstreamBody),
                forwardedAuthorization: incoming.forwardedAuthorization)
            let contentType = response.headers.first(name: "content-type") ?? ""
            if (200..<300).contains(response.status), contentType.lowercased().hasPrefix("text/event-stream") {
                let result = await Passthrough.relay(
                    response, into: &writer, state: state, episode: record, context: context,
                    upstreamStart: upstreamStart, upstreamBefore: upstreamBefore,
                    endsWithDone: incoming.endpoint != .responses)
                return result.clientGone ? nil : result.episode
            }
            let bytes = try await response.collect(upTo: 16 << 20)
            let status = (200..<300).contains(response.status) ? 502 : response.status
            let message =
                (200..<300).contains(response.status)
                ? "The upstream answered the stream request without a stream."
                : UpstreamStatusError(status: response.status, contentType: contentType, body: Array(bytes.readableBytesView)).message
            throw GatewayError(status: status, message: message, type: "upstream_error", code: "upstream_status_\(response.status)")
        } catch {
            let e = (UpstreamClient.mapError(error) as? GatewayError) ?? .upstreamUnreachable("\(error)")
            record.upstreamMs = upstreamBefore + ContinuousClock.now.ms(since: upstreamStart)
            record.status = e.status
            record.error = e.body.message
            Replies.finishTiming(&record, context: context)
            await state.record(record)
            var tail = ByteBuffer(bytes: SSE.encode(data: Array(e.encoded())))
            tail.writeBytes(SSE.done)
            try? await writer.write(tail)
            return record
        }
    }
}

/// The bytes of a collaboration stream, in either API's shape.
struct StreamOut {
    enum Shape { case chat, responses }
    let shape: Shape
    let run: Collaboration
    private var sentRole: Set<Int> = []
    private var sequence = 0
    private var text = ""
    var itemID: String { "msg_" + run.context.episodeID }

    init(shape: Shape, run: Collaboration) {
        self.shape = shape
        self.run = run
    }

    private mutating func chunk(_ i: Int, _ delta: ChatCompletionChunk.Delta, finish: String? = nil) -> [UInt8] {
        var d = delta
        if !sentRole.contains(i) {
            d.role = "assistant"
            sentRole.insert(i)
        }
        let c = ChatCompletionChunk(
            id: run.completionID, created: run.created, model: run.incoming.model,
            choices: [.init(index: i, delta: d, finishReason: finish)])
        return (try? JSONEncoder.wire.encode(c)).map { SSE.encode(data: $0) } ?? []
    }

    private mutating func event(_ type: String, _ fields: [String: Any]) -> [UInt8] {
        var obj = fields
        obj["type"] = type
        obj["sequence_number"] = sequence
        sequence += 1
        guard let data = try? JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes]) else {
            return []
        }
        return Array("event: \(type)\n".utf8) + SSE.encode(data: data)
    }

    mutating func start() -> [UInt8] {
        guard shape == .responses else { return [] }
        let r = ResponsesShape.response(
            id: run.completionID, created: run.created, model: run.incoming.model, text: nil,
            usage: nil, status: "in_progress", timing: nil)
        var out = event("response.created", ["response": r])
        out += event("response.in_progress", ["response": r])
        out += event(
            "response.output_item.added", ["output_index": 0, "item": ResponsesShape.message(id: itemID, text: nil, status: "in_progress")])
        out += event(
            "response.content_part.added",
            [
                "item_id": itemID, "output_index": 0, "content_index": 0,
                "part": ResponsesShape.textPart(""),
            ])
        return out
    }

    mutating func trace(_ i: Int, _ text: String) -> [UInt8] {
        switch shape {
        case .chat: chunk(i, .init(reasoningContent: text))
        case .responses: []  // the Responses shape has no free-text trace channel; see docs/collaboration.md
        }
    }

    mutating func content(_ i: Int, _ text: String, finish: String) -> [UInt8] {
        switch shape {
        case .chat:
            return chunk(i, .init(content: text)) + chunk(i, .init(), finish: finish)
        case .responses:
            self.text = text
            var out = event(
                "response.output_text.delta",
                [
                    "item_id": itemID, "output_index": 0, "content_index": 0,
                    "delta": text, "logprobs": [Any](),
                ])
            out += event(
                "response.output_text.done",
                [
                    "item_id": itemID, "output_index": 0, "content_index": 0,
                    "text": text, "logprobs": [Any](),
                ])
            out += event(
                "response.content_part.done",
                [
                    "item_id": itemID, "output_index": 0, "content_index": 0,
                    "part": ResponsesShape.textPart(text),
                ])
            out += event(
                "response.output_item.done",
                ["output_index": 0, "item": ResponsesShape.message(id: itemID, text: text, status: "completed")])
            return out
        }
    }

    mutating func end(usage: Usage, timing: GatewayTiming) -> [UInt8] {
        switch shape {
        case .chat:
            guard run.incoming.chat?.wantsUsageInStream == true else { return [] }
            var c = ChatCompletionChunk(id: run.completionID, created: run.created, model: run.incoming.model, choices: [], usage: usage)
            c.gatewayTiming = timing
            return (try? JSONEncoder.wire.encode(c)).map { SSE.encode(data: $0) } ?? []
        case .responses:
            let r = ResponsesShape.response(
                id: run.completionID, created: run.created, model: run.incoming.model, text: text,
                usage: usage, status: "completed", timing: timing)
            return event("response.completed", ["response": r])
        }
    }

    mutating func failure(_ e: GatewayError) -> [UInt8] {
        switch shape {
        case .chat:
            return SSE.encode(data: Array(e.encoded())) + SSE.done
        case .responses:
            let code: Any = e.body.code ?? NSNull()
            let param: Any = e.body.param ?? NSNull()
            return event("error", ["code": code, "message": e.body.message, "param": param])
        }
    }

    func done() -> [UInt8] { shape == .chat ? SSE.done : [] }
}

/// Responses API objects, as a collaboration route answers them.
enum ResponsesShape {
    static func textPart(_ text: String) -> [String: Any] {
        ["type": "output_text", "text": text, "annotations": [Any]()]
    }

    static func message(id: String, text: String?, status: String) -> [String: Any] {
        let content: [Any] = text.map { [textPart($0)] } ?? []
        return ["type": "message", "id": id, "status": status, "role": "assistant", "content": content]
    }

    static func response(
        id: String, created: Int, model: String, text: String?, usage: Usage?, status: String,
        timing: GatewayTiming?
    ) -> [String: Any] {
        let output: [Any] = text.map { [message(id: "msg_" + String(id.dropFirst(5)), text: $0, status: "completed")] } ?? []
        var r: [String: Any] = [
            "id": id, "object": "response", "created_at": created, "status": status, "model": model,
            "output": output,
            "error": NSNull(), "incomplete_details": NSNull(), "instructions": NSNull(), "metadata": [String: Any](),
            "parallel_tool_calls": false, "tool_choice": "none", "tools": [Any](), "temperature": NSNull(), "top_p": NSNull(),
            "max_output_tokens": NSNull(), "previous_response_id": NSNull(), "text": ["format": ["type": "text"]],
            "truncation": "disabled", "reasoning": ["effort": NSNull(), "summary": NSNull()], "store": false,
        ]
        if let u = usage {
            r["usage"] = [
                "input_tokens": u.promptTokens, "output_tokens": u.completionTokens, "total_tokens": u.totalTokens,
                "input_tokens_details": ["cached_tokens": 0], "output_tokens_details": ["reasoning_tokens": 0],
                "policy_tokens": [
                    "prompt_tokens": u.policyTokens?.promptTokens ?? 0,
                    "completion_tokens": u.policyTokens?.completionTokens ?? 0,
                ],
            ]
        } else {
            r["usage"] = NSNull()
        }
        if let t = timing {
            var x: [String: Any] = ["total_ms": t.totalMs, "upstream_ms": t.upstreamMs, "overhead_ms": t.overheadMs]
            if let p = t.policyMs { x["policy_ms"] = p }
            r["x_gateway_timing"] = x
        }
        return r
    }

    static func jsonResponse(_ object: [String: Any], context: GatewayContext) throws -> Response {
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        var headers: HTTPFields = [.contentType: "application/json"]
        headers[.gatewayEpisodeID] = context.episodeID
        return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(data: data)))
    }
}
