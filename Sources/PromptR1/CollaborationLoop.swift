// The Prompt-R1 turn loop: policy turn -> parse -> upstream call -> injection -> next turn.
// Written against two small protocols so it runs with the real engine (an adapter file binds
// `PolicySession` to PolicyEngine), with the OpenAI upstream client, or with test doubles.

import Foundation

// MARK: - Policy side

/// Limits for one policy turn.
public struct PolicyTurnLimits: Sendable, Equatable {
    /// Maximum number of tokens to generate in this turn.
    public var maxNewTokens: Int
    /// Stop as soon as the decoded text contains one of these (the protocol's `</interaction_prompt>`).
    public var stopStrings: [String]

    public init(maxNewTokens: Int, stopStrings: [String] = [PromptR1Tag.callClose]) {
        self.maxNewTokens = maxNewTokens
        self.stopStrings = stopStrings
    }
}

/// What the policy produced in one turn.
public struct PolicyTurn: Sendable, Equatable {
    /// Decoded text of the generated tokens, without the text of a final end-of-turn token.
    public var text: String
    /// Generated token ids (including a final end-of-turn token when `finishReason == .endOfTurn`).
    public var tokenIDs: [Int32]
    /// Log-probability of each generated token under the sampling distribution; either empty
    /// (not tracked) or one per token.
    public var logprobs: [Float]
    public var finishReason: PolicyFinishReason

    public init(text: String, tokenIDs: [Int32], logprobs: [Float], finishReason: PolicyFinishReason) {
        self.text = text
        self.tokenIDs = tokenIDs
        self.logprobs = logprobs
        self.finishReason = finishReason
    }
}

/// One running policy context (a KV cache in the real engine). Created by a `PolicySessionFactory`
/// from the first prompt text; the loop then alternates `generateTurn` and `appendInjected`.
/// Implementations should check `Task.isCancelled` while generating so deadlines and
/// cancellation take effect promptly.
public protocol PolicySession: AnyObject, Sendable {
    /// Token ids of the first prompt, as the session tokenised it.
    var promptTokenIDs: [Int32] { get }
    /// Generate one turn. `onText` receives decoded text increments as they are produced (for
    /// live streaming); their concatenation should equal the returned `text`.
    func generateTurn(limits: PolicyTurnLimits, onText: (@Sendable (String) -> Void)?) async throws -> PolicyTurn
    /// Append text the policy did not write (an injection) to the context; returns its token ids.
    func appendInjected(_ text: String) async throws -> [Int32]
    /// Which log-prob `PolicyTurn.logprobs` holds (default: the sampling distribution's).
    var logprobKind: PolicyLogprobKind { get }
}

/// Creates a policy session whose context is the given first-prompt text.
public typealias PolicySessionFactory = @Sendable (_ promptText: String) async throws -> any PolicySession

// MARK: - Upstream side

/// Per-call options forwarded to the upstream client.
public struct UpstreamCallOptions: Sendable, Equatable {
    public var model: String?
    public var temperature: Double?
    public var topP: Double?
    public var maxTokens: Int?
    /// The episode deadline, if any (the loop also enforces it).
    public var deadline: ContinuousClock.Instant?

    public init(
        model: String? = nil, temperature: Double? = nil, topP: Double? = nil, maxTokens: Int? = nil,
        deadline: ContinuousClock.Instant? = nil
    ) {
        self.model = model
        self.temperature = temperature
        self.topP = topP
        self.maxTokens = maxTokens
        self.deadline = deadline
    }
}

/// The upstream's reply to one call.
public struct UpstreamAnswer: Sendable, Equatable {
    /// The assistant message content, unstripped (the loop strips it).
    public var text: String
    public var usage: UpstreamUsage?
    public var model: String?
    /// Latency as measured by the client, if it measures it (the loop measures its own too).
    public var latency: Duration?

    public init(text: String, usage: UpstreamUsage? = nil, model: String? = nil, latency: Duration? = nil) {
        self.text = text
        self.usage = usage
        self.model = model
        self.latency = latency
    }
}

/// The large upstream LLM: one chat completion per call.
public protocol UpstreamAnswering: Sendable {
    func answer(messages: [UpstreamMessage], options: UpstreamCallOptions) async throws -> UpstreamAnswer
}

// MARK: - Options

/// Where a client's system message goes in upstream requests.
public enum ClientSystemPlacement: Sendable, Equatable {
    /// Two system messages: the client's, then the protocol's upstream system prompt.
    case separateMessage
    /// One system message: client text + separator + upstream system prompt.
    case prepended(separator: String)
}

/// What to do when an upstream call throws (other than cancellation / deadline).
public enum UpstreamFailurePolicy: Sendable, Equatable {
    /// End the episode with `.error(.upstream(message))`.
    case failEpisode
    /// Do as the reference tool does: inject the error's description (raw, not JSON) as the
    /// result and let the policy continue. The call is not added to the upstream history.
    case injectError
}

public struct CollaborationLimits: Sendable, Equatable {
    /// Maximum policy turns (protocol default 5).
    public var maxTurns: Int
    /// Maximum generated tokens per turn (1024 in training).
    public var maxTokensPerTurn: Int
    /// Maximum generated tokens over the whole episode (nil: no limit).
    public var maxPolicyTokensPerEpisode: Int?
    /// Maximum upstream calls per episode (nil: no limit other than the turn limit).
    public var maxUpstreamCalls: Int?
    /// The episode must finish by then (nil: no deadline).
    public var deadline: ContinuousClock.Instant?

    public init(
        maxTurns: Int = 5, maxTokensPerTurn: Int = 1024, maxPolicyTokensPerEpisode: Int? = nil,
        maxUpstreamCalls: Int? = nil, deadline: ContinuousClock.Instant? = nil
    ) {
        self.maxTurns = maxTurns
        self.maxTokensPerTurn = maxTokensPerTurn
        self.maxPolicyTokensPerEpisode = maxPolicyTokensPerEpisode
        self.maxUpstreamCalls = maxUpstreamCalls
        self.deadline = deadline
    }
}

public struct CollaborationOptions: Sendable, Equatable {
    public var limits: CollaborationLimits
    /// N of protocol section 4: 2048 in training, 8192 in the reference inference scripts.
    public var maxResultChars: Int
    public var resultCutMode: ResultCutMode
    /// A client system message for the upstream, placed in front of the protocol's system prompt.
    public var clientSystemMessage: String?
    public var clientSystemPlacement: ClientSystemPlacement
    /// When the last allowed turn is a call, still call upstream and inject the result, as the
    /// reference rollout does (the episode then ends with `.noAnswer`, but the record matches a
    /// reference training sequence and `Episode.lastUpstreamAnswer` is available as a fallback).
    /// Set false to save that upstream call when serving.
    public var callOnFinalTurn: Bool
    public var upstreamFailure: UpstreamFailurePolicy
    /// Static options for every upstream call (the loop fills in `deadline`).
    public var upstream: UpstreamCallOptions

    public init(
        limits: CollaborationLimits = .init(), maxResultChars: Int = 8192, resultCutMode: ResultCutMode = .answer,
        clientSystemMessage: String? = nil, clientSystemPlacement: ClientSystemPlacement = .separateMessage,
        callOnFinalTurn: Bool = true, upstreamFailure: UpstreamFailurePolicy = .failEpisode,
        upstream: UpstreamCallOptions = .init()
    ) {
        self.limits = limits
        self.maxResultChars = maxResultChars
        self.resultCutMode = resultCutMode
        self.clientSystemMessage = clientSystemMessage
        self.clientSystemPlacement = clientSystemPlacement
        self.callOnFinalTurn = callOnFinalTurn
        self.upstreamFailure = upstreamFailure
        self.upstream = upstream
    }
}

// MARK: - Events

/// Live trace of an episode, in order, for streaming responses and logs.
public enum CollaborationEvent: Sendable, Equatable {
    case turnStarted(turn: Int)
    /// A piece of the policy's text as it is generated (thinking, call, answer).
    case policyTextDelta(turn: Int, text: String)
    case policyTurnFinished(turn: Int, text: String, parse: TurnParse)
    /// A well-formed call is about to be sent.
    case upstreamRequest(turn: Int, prompt: String, messages: [UpstreamMessage])
    case upstreamAnswer(turn: Int, answer: String, latencySeconds: Double)
    case upstreamFailed(turn: Int, error: String)
    /// A malformed call: the error string is injected instead of calling upstream.
    case callRejected(turn: Int, error: ToolCallError)
    case injected(turn: Int, text: String)
    case finished(outcome: EpisodeOutcome, stopReason: EpisodeStopReason)
}

// MARK: - Upstream request building

public enum PromptR1Upstream {
    /// Protocol section 3: system prompt, then each earlier successful call as user/assistant,
    /// then this call's prompt; an optional client system message in front.
    public static func messages(
        history: [(prompt: String, answer: String)], prompt: String,
        clientSystem: String? = nil,
        placement: ClientSystemPlacement = .separateMessage
    ) -> [UpstreamMessage] {
        var m: [UpstreamMessage] = []
        switch (clientSystem, placement) {
        case (nil, _):
            m.append(.system(PromptR1Prompt.upstreamSystemPrompt))
        case (let client?, .separateMessage):
            m.append(.system(client))
            m.append(.system(PromptR1Prompt.upstreamSystemPrompt))
        case (let client?, .prepended(let separator)):
            m.append(.system(client + separator + PromptR1Prompt.upstreamSystemPrompt))
        }
        for h in history {
            m.append(.user(h.prompt))
            m.append(.assistant(h.answer))
        }
        m.append(.user(prompt))
        return m
    }
}

// MARK: - The loop

struct DeadlineExceededError: Error {}

enum StepFailure: Error {
    case deadline
    case cancelled
    case failed(String)
}

/// Run `op`, racing it against `deadline`; map failures.
func runStep<T: Sendable>(
    deadline: ContinuousClock.Instant?,
    _ op: @escaping @Sendable () async throws -> T
) async -> Result<T, StepFailure> {
    if Task.isCancelled { return .failure(.cancelled) }
    if let deadline, ContinuousClock.now >= deadline { return .failure(.deadline) }
    do {
        let value: T
        if let deadline {
            value = try await withThrowingTaskGroup(of: T.self) { group in
                group.addTask { try await op() }
                group.addTask {
                    try await Task.sleep(until: deadline, clock: .continuous)
                    throw DeadlineExceededError()
                }
                defer { group.cancelAll() }
                guard let first = try await group.next() else { throw CancellationError() }
                return first
            }
        } else {
            value = try await op()
        }
        return .success(value)
    } catch is DeadlineExceededError {
        return .failure(.deadline)
    } catch {
        if Task.isCancelled || error is CancellationError { return .failure(.cancelled) }
        if let deadline, ContinuousClock.now >= deadline { return .failure(.deadline) }
        return .failure(.failed(String(describing: error)))
    }
}

/// Errors for session output that breaks the contract.
public struct PolicySessionContractError: Error, CustomStringConvertible, Sendable {
    public var description: String
}

public struct CollaborationLoop: Sendable {
    public var options: CollaborationOptions
    public let makeSession: PolicySessionFactory
    public let upstream: any UpstreamAnswering

    public init(
        options: CollaborationOptions = .init(), upstream: any UpstreamAnswering,
        makeSession: @escaping PolicySessionFactory
    ) {
        self.options = options
        self.upstream = upstream
        self.makeSession = makeSession
    }

    /// Render a client conversation into the question (see `QuestionRenderer`) and run an
    /// episode. With `forwardClientSystem`, the client's system messages go to the upstream as
    /// `clientSystemMessage` (unless the options already set one).
    public func run(
        conversation: [ClientMessage], rendering: QuestionRenderingPolicy = .init(),
        forwardClientSystem: Bool = true,
        onEvent: (@Sendable (CollaborationEvent) -> Void)? = nil
    ) async throws(QuestionRenderingError) -> Episode {
        let rendered = try QuestionRenderer.render(conversation, policy: rendering)
        var loop = self
        if forwardClientSystem, loop.options.clientSystemMessage == nil {
            loop.options.clientSystemMessage = rendered.clientSystem
        }
        return await loop.run(question: rendered.question, onEvent: onEvent)
    }

    /// Run one episode for `question` (already rendered, see `QuestionRenderer`). Never throws:
    /// failures are in `Episode.outcome`, with everything recorded up to that point.
    public func run(question: String, onEvent: (@Sendable (CollaborationEvent) -> Void)? = nil) async -> Episode {
        let startedAt = Date()
        let clockStart = ContinuousClock.now
        let limits = options.limits
        let deadline = limits.deadline
        let emit: @Sendable (CollaborationEvent) -> Void = { e in onEvent?(e) }
        let promptText = PromptR1Prompt.firstPrompt(question: question)

        var turns: [EpisodeTurn] = []
        var promptIDs: [Int32] = []
        var logprobKind: PolicyLogprobKind?

        func finish(_ outcome: EpisodeOutcome, _ reason: EpisodeStopReason) -> Episode {
            emit(.finished(outcome: outcome, stopReason: reason))
            return Episode(
                question: question, promptText: promptText, promptTokenIDs: promptIDs, turns: turns,
                outcome: outcome, stopReason: reason, startedAt: startedAt,
                durationSeconds: (ContinuousClock.now - clockStart).promptR1Seconds,
                policyLogprobs: logprobKind)
        }
        func finish(_ failure: StepFailure, policy: Bool) -> Episode {
            switch failure {
            case .deadline: return finish(.error(.deadlineExceeded), .deadline)
            case .cancelled: return finish(.error(.cancelled), .cancelled)
            case .failed(let msg):
                return policy ? finish(.error(.policy(msg)), .policyError) : finish(.error(.upstream(msg)), .upstreamError)
            }
        }

        let factory = makeSession
        let session: any PolicySession
        switch await runStep(deadline: deadline, { try await factory(promptText) }) {
        case .success(let s): session = s
        case .failure(let f): return finish(f, policy: true)
        }
        promptIDs = session.promptTokenIDs
        logprobKind = session.logprobKind

        var history: [(prompt: String, answer: String)] = []
        var nextInputText = promptText
        var nextInputIDs = promptIDs
        var generated = 0
        var upstreamCalls = 0

        let maxTurns = max(1, limits.maxTurns)
        for turnIndex in 1...maxTurns {
            var budget = limits.maxTokensPerTurn
            if let episodeMax = limits.maxPolicyTokensPerEpisode {
                budget = min(budget, episodeMax - generated)
            }
            if budget <= 0 { return finish(.noAnswer, .policyTokenLimit) }

            emit(.turnStarted(turn: turnIndex))
            let turnLimits = PolicyTurnLimits(maxNewTokens: budget)
            let onText: @Sendable (String) -> Void = { delta in emit(.policyTextDelta(turn: turnIndex, text: delta)) }
            let gen = await runStep(deadline: deadline) { () async throws -> PolicyTurn in
                let t = try await session.generateTurn(limits: turnLimits, onText: onText)
                if !t.logprobs.isEmpty && t.logprobs.count != t.tokenIDs.count {
                    throw PolicySessionContractError(
                        description:
                            "policy turn \(turnIndex): logprobs count \(t.logprobs.count) != tokenIDs count \(t.tokenIDs.count)")
                }
                if t.tokenIDs.count > turnLimits.maxNewTokens {
                    throw PolicySessionContractError(
                        description:
                            "policy turn \(turnIndex): generated \(t.tokenIDs.count) tokens, limit was \(turnLimits.maxNewTokens)")
                }
                return t
            }
            let pt: PolicyTurn
            switch gen {
            case .success(let t): pt = t
            case .failure(let f): return finish(f, policy: true)
            }
            generated += pt.tokenIDs.count

            let parse = PromptR1Parser.parseTurn(pt.text)
            emit(.policyTurnFinished(turn: turnIndex, text: pt.text, parse: parse))
            var record = EpisodeTurn(
                index: turnIndex, inputText: nextInputText, inputTokenIDs: nextInputIDs,
                generatedText: pt.text, generatedTokenIDs: pt.tokenIDs, logprobs: pt.logprobs,
                finishReason: pt.finishReason, parse: parse, upstream: nil,
                injectedText: nil, injectedTokenIDs: [])

            let result: String
            switch parse {
            case .final(let answerBody):
                turns.append(record)
                guard let answerBody else { return finish(.noAnswer, .finalWithoutAnswer) }
                let answer = PythonString.strip(answerBody)
                if answer.isEmpty { return finish(.emptyAnswer, .finalEmptyAnswer) }
                return finish(.answer(answer), .finalAnswer)

            case .malformedCall(let error, _):
                if turnIndex == maxTurns && !options.callOnFinalTurn {
                    turns.append(record)
                    return finish(.noAnswer, .turnLimit)
                }
                emit(.callRejected(turn: turnIndex, error: error))
                result = PythonString.cut(error.rawValue, maxChars: options.maxResultChars)

            case .call(let call):
                if turnIndex == maxTurns && !options.callOnFinalTurn {
                    turns.append(record)
                    return finish(.noAnswer, .turnLimit)
                }
                if let maxCalls = limits.maxUpstreamCalls, upstreamCalls >= maxCalls {
                    turns.append(record)
                    return finish(.noAnswer, .upstreamCallLimit)
                }
                let messages = PromptR1Upstream.messages(
                    history: history, prompt: call.prompt,
                    clientSystem: options.clientSystemMessage,
                    placement: options.clientSystemPlacement)
                emit(.upstreamRequest(turn: turnIndex, prompt: call.prompt, messages: messages))
                var optionsForCall = options.upstream
                optionsForCall.deadline = deadline
                let callOptions = optionsForCall
                let client = upstream
                let t0 = ContinuousClock.now
                let reply = await runStep(deadline: deadline) {
                    try await client.answer(messages: messages, options: callOptions)
                }
                let latency = (ContinuousClock.now - t0).promptR1Seconds
                upstreamCalls += 1
                switch reply {
                case .success(let a):
                    let answer = PythonString.strip(a.text)
                    record.upstream = UpstreamCallRecord(
                        messages: messages, rawAnswer: a.text, answer: answer,
                        latencySeconds: latency, usage: a.usage, model: a.model,
                        error: nil)
                    emit(.upstreamAnswer(turn: turnIndex, answer: answer, latencySeconds: latency))
                    history.append((call.prompt, answer))
                    result = PromptR1Prompt.resultJSON(
                        upstreamAnswer: answer, maxChars: options.maxResultChars,
                        cutMode: options.resultCutMode)
                case .failure(let f):
                    if case .failed(let msg) = f {
                        record.upstream = UpstreamCallRecord(
                            messages: messages, rawAnswer: nil, answer: nil,
                            latencySeconds: latency, usage: nil, model: nil, error: msg)
                        emit(.upstreamFailed(turn: turnIndex, error: msg))
                        if options.upstreamFailure == .injectError {
                            result = PythonString.cut(msg, maxChars: options.maxResultChars)
                            break
                        }
                    }
                    turns.append(record)
                    return finish(f, policy: false)
                }
            }

            let injection = PromptR1Prompt.injection(result: result)
            switch await runStep(deadline: deadline, { try await session.appendInjected(injection) }) {
            case .success(let ids):
                record.injectedText = injection
                record.injectedTokenIDs = ids
                turns.append(record)
                emit(.injected(turn: turnIndex, text: injection))
                nextInputText = injection
                nextInputIDs = ids
            case .failure(let f):
                turns.append(record)
                return finish(f, policy: true)
            }
        }
        return finish(.noAnswer, .turnLimit)
    }
}

extension Duration {
    var promptR1Seconds: Double {
        let c = components
        return Double(c.seconds) + Double(c.attoseconds) * 1e-18
    }
}
