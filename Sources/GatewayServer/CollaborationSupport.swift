import Foundation
import OpenAIWire
import PromptR1

/// What a collaboration route does with each member of a request (docs/openai-compatibility.md
/// is this table in prose). Every member is in exactly one class; a member the gateway does not
/// know is unsupported, so nothing a client sends is silently dropped.
enum CollaborationSupport {
    enum Handling: Equatable {
        /// Read by the loop itself (model, messages, stream, n, ...).
        case loop
        /// Sent, under its own name, with every upstream call of the episode.
        case forwarded
        /// Carried verbatim to every upstream call.
        case passAlong
        /// The loop cannot honour it: passthrough or 400, per `policy.unsupported_request`.
        case unsupported(String)
    }

    static let chat: [String: Handling] = [
        "model": .loop, "messages": .loop, "stream": .loop, "stream_options": .loop, "n": .loop,
        "temperature": .forwarded, "top_p": .forwarded, "seed": .forwarded, "presence_penalty": .forwarded,
        "frequency_penalty": .forwarded, "logit_bias": .forwarded, "stop": .forwarded, "user": .forwarded,
        "max_tokens": .forwarded, "max_completion_tokens": .forwarded,
        "store": .passAlong, "metadata": .passAlong, "service_tier": .passAlong, "reasoning_effort": .passAlong,
        "verbosity": .passAlong, "safety_identifier": .passAlong, "prompt_cache_key": .passAlong,
        "tools": .unsupported("the collaboration loop cannot call client tools"),
        "tool_choice": .unsupported("the collaboration loop cannot call client tools"),
        "functions": .unsupported("the collaboration loop cannot call client functions"),
        "function_call": .unsupported("the collaboration loop cannot call client functions"),
        "parallel_tool_calls": .unsupported("the collaboration loop cannot call client tools"),
        "response_format": .unsupported("the answer is the policy's free text; a structured format cannot be guaranteed"),
        "logprobs": .unsupported("the answer's tokens are not sampled by the upstream, so there are no log-probs to return"),
        "top_logprobs": .unsupported("the answer's tokens are not sampled by the upstream, so there are no log-probs to return"),
        "modalities": .unsupported("collaboration answers in text only"),
        "audio": .unsupported("collaboration answers in text only"),
        "prediction": .unsupported("predicted outputs do not apply to a collaboration answer"),
        "web_search_options": .unsupported("the collaboration loop cannot search the web"),
    ]

    static let responses: [String: Handling] = [
        "model": .loop, "input": .loop, "instructions": .loop, "stream": .loop,
        "temperature": .forwarded, "top_p": .forwarded, "max_output_tokens": .forwarded, "user": .forwarded,
        "store": .passAlong, "metadata": .passAlong, "service_tier": .passAlong, "safety_identifier": .passAlong,
        "prompt_cache_key": .passAlong,
        "tools": .unsupported("the collaboration loop cannot call client tools"),
        "tool_choice": .unsupported("the collaboration loop cannot call client tools"),
        "parallel_tool_calls": .unsupported("the collaboration loop cannot call client tools"),
        "text": .unsupported("the answer is the policy's free text; a structured format cannot be guaranteed"),
        "reasoning": .unsupported("reasoning options apply to one model call, not to an episode"),
        "previous_response_id": .unsupported("collaboration responses are not stored for continuation"),
        "conversation": .unsupported("collaboration responses are not stored for continuation"),
        "include": .unsupported("collaboration answers carry no extra output items"),
        "background": .unsupported("collaboration responses run in the foreground"),
        "truncation": .unsupported("the question is rendered from the whole input"),
        "prompt": .unsupported("prompt templates are not expanded by the gateway"),
        "top_logprobs": .unsupported("the answer's tokens are not sampled by the upstream, so there are no log-probs to return"),
    ]

    /// A value that asks for nothing beyond the default, so it needs no support.
    static func isDefault(_ key: String, _ value: Any) -> Bool {
        if value is NSNull { return true }
        switch key {
        case "logprobs": return (value as? Bool) == false
        case "tools", "functions": return (value as? [Any])?.isEmpty ?? false
        case "tool_choice", "function_call": return (value as? String) == "none"
        case "response_format": return ((value as? [String: Any])?["type"] as? String) == "text"
        case "text": return (((value as? [String: Any])?["format"] as? [String: Any])?["type"] as? String) == "text"
        case "include": return (value as? [Any])?.isEmpty ?? false
        case "background": return (value as? Bool) == false
        case "truncation": return (value as? String) == "disabled"
        default: return false
        }
    }

    static func table(_ endpoint: Incoming.Endpoint) -> [String: Handling]? {
        switch endpoint {
        case .chatCompletions: chat
        case .responses: responses
        case .completions, .embeddings: nil
        }
    }

    /// The first thing in the request a collaboration route cannot honour, if any.
    static func unsupported(_ incoming: Incoming) -> Unsupported? {
        guard let table = table(incoming.endpoint) else {
            return Unsupported(
                param: "model", reason: "collaboration serves /v1/chat/completions and /v1/responses, not \(incoming.endpoint.rawValue)")
        }
        let hasTools = incoming.members.contains { $0.key == "tools" && $0.valueKind == .array }
        for m in incoming.members {
            let handling =
                table[m.key] ?? .unsupported("'\(m.key.prefix(64))' is not a parameter this gateway knows how to honour in an episode")
            guard case .unsupported(let reason) = handling else { continue }
            if m.valueKind == .null { continue }
            if m.key == "parallel_tool_calls" && !hasTools { continue }  // no effect without tools
            let value =
                (try? JSONSerialization.jsonObject(with: Data(incoming.bytes[m.valueRange]), options: [.fragmentsAllowed])) ?? NSNull()
            if isDefault(m.key, value) { continue }
            return Unsupported(param: m.key, reason: reason)
        }
        if let chat = incoming.chat { return unsupported(messages: chat.messages) }
        if let r = incoming.responses { return unsupported(input: r.input) }
        return nil
    }

    static func unsupported(messages: [ChatMessage]) -> Unsupported? {
        for (i, m) in messages.enumerated() {
            if m.role == "tool" || m.role == "function" {
                return Unsupported(param: "messages[\(i)]", reason: "tool results cannot be given to the policy")
            }
            if let calls = m.toolCalls, !calls.isEmpty {
                return Unsupported(param: "messages[\(i)].tool_calls", reason: "tool calls cannot be given to the policy")
            }
            if case .parts(let parts)? = m.content {
                for (j, p) in parts.enumerated() where p.type != "text" {
                    return Unsupported(
                        param: "messages[\(i)].content[\(j)]", reason: "the policy reads text only, not '\(p.type.prefix(32))' content")
                }
            }
        }
        if let last = messages.last, last.role != "user" {
            return Unsupported(
                param: "messages[\(messages.count - 1)].role",
                reason: "the conversation must end with a user message (the question), not '\(last.role.prefix(32))'")
        }
        return nil
    }

    static func unsupported(input: ResponsesRequest.Input?) -> Unsupported? {
        guard case .items(let items)? = input else { return nil }
        for (i, item) in items.enumerated() {
            if let t = item.type, t != "message" {
                return Unsupported(param: "input[\(i)]", reason: "only message items can be given to the policy, not '\(t.prefix(32))'")
            }
            guard item.role != nil, item.content != nil else {
                return Unsupported(param: "input[\(i)]", reason: "an input item needs a role and content")
            }
            if case .parts(let parts)? = item.content {
                for (j, p) in parts.enumerated() where !["input_text", "output_text", "text"].contains(p.type) {
                    return Unsupported(
                        param: "input[\(i)].content[\(j)]", reason: "the policy reads text only, not '\(p.type.prefix(32))' content")
                }
            }
        }
        if let last = items.last, last.role != "user" {
            return Unsupported(
                param: "input[\(items.count - 1)].role",
                reason: "the input must end with a user message (the question), not '\((last.role ?? "").prefix(32))'")
        }
        return nil
    }

    /// The members carried verbatim to every upstream call.
    static func passAlong(_ incoming: Incoming) -> [String: JSONValue] {
        guard let table = table(incoming.endpoint) else { return [:] }
        var out: [String: JSONValue] = [:]
        for m in incoming.members where table[m.key] == .passAlong && m.valueKind != .null {
            if let v = try? JSONDecoder().decode(JSONValue.self, from: Data(incoming.bytes[m.valueRange])) { out[m.key] = v }
        }
        return out
    }

    /// The client's conversation as the question renderer reads it.
    static func conversation(_ incoming: Incoming) -> [ClientMessage] {
        if let chat = incoming.chat { return chat.messages.map { ClientMessage(role: $0.role, content: $0.text) } }
        guard let r = incoming.responses else { return [] }
        var out: [ClientMessage] = []
        if let i = r.instructions { out.append(ClientMessage(role: "system", content: i)) }
        switch r.input {
        case .text(let s)?: out.append(ClientMessage(role: "user", content: s))
        case .items(let items)?:
            for item in items {
                let text: String
                switch item.content {
                case .text(let s)?: text = s
                case .parts(let p)?: text = p.compactMap(\.text).joined(separator: "\n")
                case nil: text = ""
                }
                out.append(ClientMessage(role: item.role ?? "user", content: text))
            }
        case nil: break
        }
        return out
    }

    /// The upstream parameters of every call of the episode.
    static func parameters(_ incoming: Incoming) -> UpstreamChatParameters {
        let pass = passAlong(incoming)
        if let chat = incoming.chat { return UpstreamChatParameters(forwarding: chat, passAlong: pass) }
        if let r = incoming.responses {
            return UpstreamChatParameters(
                temperature: r.temperature, topP: r.topP, user: r.user,
                maxCompletionTokens: r.maxOutputTokens, passAlong: pass)
        }
        return UpstreamChatParameters(passAlong: pass)
    }
}
