// The upstream as the collaboration loop sees it, for the gateway's collaboration route and the
// trainer's rollouts alike: one non-streaming chat completion per call, through
// `UpstreamClient.chat`, with the same parameters. There is no second copy of this mapping, so a
// parameter cannot be forwarded in one place and dropped in the other.

import Foundation
import OpenAIWire
import PromptR1

public struct UpstreamAdapter: UpstreamAnswering {
    public let client: UpstreamClient
    /// What every call sends besides model and messages. The loop's per-call options
    /// (`UpstreamCallOptions`: temperature, top_p, max tokens) fill what is not set here.
    public var parameters: UpstreamChatParameters
    /// Extra request headers (the client's forwarded allow-list).
    public var headers: [(String, String)]
    /// The client's own Authorization, when the gateway forwards it instead of its key.
    public var forwardedAuthorization: String?
    /// Remembers the first failure of an episode's calls, so the caller can relay an upstream
    /// 4xx with its status and body (the loop itself keeps only its description).
    public let failures: FailureRecorder

    public init(
        client: UpstreamClient, parameters: UpstreamChatParameters = .init(), headers: [(String, String)] = [],
        forwardedAuthorization: String? = nil
    ) {
        self.client = client
        self.parameters = parameters
        self.headers = headers
        self.forwardedAuthorization = forwardedAuthorization
        self.failures = FailureRecorder()
    }

    public func answer(messages: [UpstreamMessage], options: UpstreamCallOptions) async throws -> UpstreamAnswer {
        let a = try await chat(messages: messages, options: options)
        return UpstreamAnswer(
            text: a.text,
            usage: a.usage.map {
                UpstreamUsage(promptTokens: $0.promptTokens, completionTokens: $0.completionTokens, totalTokens: $0.totalTokens)
            },
            model: options.model, latency: a.latency)
    }

    /// The call behind `answer`, with the wire answer and optional extra headers (a trace's
    /// `traceparent`), for callers that wrap it.
    public func chat(
        messages: [UpstreamMessage], options: UpstreamCallOptions,
        extraHeaders: [(String, String)] = []
    ) async throws -> UpstreamClient.ChatAnswer {
        var p = parameters
        if p.temperature == nil { p.temperature = options.temperature }
        if p.topP == nil { p.topP = options.topP }
        if p.maxTokens == nil && p.maxCompletionTokens == nil { p.maxTokens = options.maxTokens }
        do {
            return try await client.chat(
                model: options.model ?? "", messages: messages.map { ChatMessage(role: $0.role, content: $0.content) },
                parameters: p, headers: headers + extraHeaders, forwardedAuthorization: forwardedAuthorization)
        } catch {
            failures.record(error)
            throw error
        }
    }

    public final class FailureRecorder: @unchecked Sendable {
        // `error` is guarded by `lock`.
        private let lock = NSLock()
        private var error: (any Error)?
        public init() {}
        func record(_ e: any Error) { lock.withLock { if error == nil { error = e } } }
        /// The first error a call threw, if any.
        public var first: (any Error)? { lock.withLock { error } }
    }
}
