import Foundation

// Chat templates without a Jinja engine: the checkpoint's template text is recognised by its
// markers and the known template families are rendered by hand, producing exactly what
// transformers' `apply_chat_template(..., tokenize=False)` renders for them.

/// One chat message.
public struct ChatMessage: Sendable, Equatable, Hashable, Codable {
    public var role: String
    public var content: String
    /// Qwen3's `reasoning_content` (thinking kept apart from `content`); nil when absent.
    public var reasoningContent: String?

    public init(role: String, content: String, reasoningContent: String? = nil) {
        self.role = role
        self.content = content
        self.reasoningContent = reasoningContent
    }

    public init(_ role: String, _ content: String) {
        self.init(role: role, content: content)
    }
}

/// Template family, detected from markers in the template text.
public enum ChatTemplateKind: String, Sendable {
    /// `<|im_start|>role\n...<|im_end|>\n` (Qwen2, Qwen2.5, Qwen3).
    case chatML
    /// `<|start_header_id|>role<|end_header_id|>\n\n...<|eot_id|>` (Llama 3.x).
    case llama3
}

/// The exact behaviour within a family.
public enum ChatTemplateVariant: String, Sendable {
    /// Qwen2 / Qwen2.5: a default system message when the conversation has none.
    case qwen2
    /// Official Qwen3 template: no default system; assistant turns after the last user query
    /// get a `<think>` block, earlier ones lose theirs; `enable_thinking=false` adds an empty one.
    case qwen3
    /// ChatML without a default system message; assistant turns before the last user turn lose
    /// their `<think>...</think>` part; `enable_thinking=false` adds an empty think block.
    case chatMLStripThinkHistory
    /// Llama 3 (3.0): `bos_token` then every message with trimmed content.
    case llama3
    /// Llama 3.1 / 3.2 / 3.3: system header with "Cutting Knowledge Date" and "Today Date".
    case llama31
}

public enum ChatTemplateError: Error, CustomStringConvertible, Sendable, Equatable {
    case missingTemplate
    case unknownTemplate(String)
    case unsupportedRole(role: String, index: Int, variant: String)
    case emptyConversation(variant: String)

    public var description: String {
        switch self {
        case .missingTemplate:
            return "chat template: the checkpoint has no chat_template (tokenizer_config.json / chat_template.jinja)"
        case .unknownTemplate(let why):
            return "chat template: unrecognised template (\(why)); supported: ChatML (Qwen2/2.5/3) and Llama 3/3.1"
        case .unsupportedRole(let role, let index, let variant):
            return "chat template \(variant): message \(index) has role \(role.debugDescription), which this template does not render"
        case .emptyConversation(let variant):
            return "chat template \(variant): the conversation has no messages"
        }
    }
}

/// Renders conversations with a checkpoint's chat template.
public struct ChatTemplate: Sendable {
    public let kind: ChatTemplateKind
    public let variant: ChatTemplateVariant
    /// Default system message (Qwen2 family) rendered when the conversation has none.
    public let defaultSystemMessage: String?
    /// `bos_token` as the template sees it (Llama 3).
    public let bosToken: String
    /// "Today Date" for Llama 3.1 style templates.
    public let dateString: String

    static let qwenDefaultSystemMarker = "You are Qwen, created by Alibaba Cloud"

    /// Recognises a template text. `dateString` overrides the Llama 3.1 "Today Date" (otherwise
    /// the template's fixed default "26 Jul 2024", or today's date for templates that call
    /// `strftime_now`, as transformers does).
    public init(template: String, bosToken: String? = nil, dateString: String? = nil) throws {
        self.bosToken = bosToken ?? ""
        if template.contains("<|start_header_id|>") {
            kind = .llama3
            defaultSystemMessage = nil
            if template.contains("Cutting Knowledge Date") {
                variant = .llama31
            } else {
                variant = .llama3
            }
            if let dateString {
                self.dateString = dateString
            } else if template.contains("strftime_now") {
                let f = DateFormatter()
                f.locale = Locale(identifier: "en_US_POSIX")
                f.dateFormat = "dd MMM yyyy"
                self.dateString = f.string(from: Date())
            } else {
                self.dateString = "26 Jul 2024"
            }
            return
        }
        guard template.contains("<|im_start|>") else {
            throw ChatTemplateError.unknownTemplate("no <|im_start|> or <|start_header_id|> marker")
        }
        kind = .chatML
        self.dateString = dateString ?? ""
        if template.contains("last_query_index") {
            variant = .qwen3
            defaultSystemMessage = nil
        } else if let r = template.range(of: ChatTemplate.qwenDefaultSystemMarker) {
            variant = .qwen2
            // The default system text runs until the end of the Jinja string literal or <|im_end|>.
            let tail = template[r.upperBound...]
            var end = tail.endIndex
            for stop in ["<|im_end|>", "'", "\""] {
                if let s = tail.range(of: stop), s.lowerBound < end { end = s.lowerBound }
            }
            defaultSystemMessage = String(template[r.lowerBound..<end])
        } else {
            variant = .chatMLStripThinkHistory
            defaultSystemMessage = nil
        }
    }

    /// The template of a loaded tokenizer (uses its bos_token).
    public init(tokenizer: Tokenizer, dateString: String? = nil) throws {
        guard let t = tokenizer.chatTemplate else { throw ChatTemplateError.missingTemplate }
        try self.init(template: t, bosToken: tokenizer.bosToken, dateString: dateString)
    }

    /// The family of a template text, or nil if unrecognised.
    public static func detect(_ template: String) -> ChatTemplateKind? {
        (try? ChatTemplate(template: template))?.kind
    }

    /// Renders like `apply_chat_template(messages, tokenize=False, add_generation_prompt:,
    /// enable_thinking:)`. `enableThinking` nil means the kwarg is not passed.
    public func render(messages: [ChatMessage], addGenerationPrompt: Bool, enableThinking: Bool? = nil) throws -> String {
        switch variant {
        case .qwen2: return try renderQwen2(messages, addGenerationPrompt)
        case .qwen3: return try renderQwen3(messages, addGenerationPrompt, enableThinking)
        case .chatMLStripThinkHistory: return try renderChatMLStrip(messages, addGenerationPrompt, enableThinking)
        case .llama3: return renderLlama3(messages, addGenerationPrompt)
        case .llama31: return try renderLlama31(messages, addGenerationPrompt)
        }
    }

    // MARK: ChatML family

    private func renderQwen2(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> String {
        guard let first = messages.first else { throw ChatTemplateError.emptyConversation(variant: variant.rawValue) }
        var out = ""
        if first.role == "system" {
            out += "<|im_start|>system\n" + first.content + "<|im_end|>\n"
        } else {
            out += "<|im_start|>system\n" + (defaultSystemMessage ?? "") + "<|im_end|>\n"
        }
        for (i, m) in messages.enumerated() {
            switch m.role {
            case "user", "assistant":
                out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n"
            case "system":
                if i != 0 { out += "<|im_start|>system\n" + m.content + "<|im_end|>\n" }
            case "tool":
                out += toolResponse(messages, i)
            default:
                throw ChatTemplateError.unsupportedRole(role: m.role, index: i, variant: variant.rawValue)
            }
        }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }

    /// Consecutive tool messages share one `<|im_start|>user` turn.
    private func toolResponse(_ messages: [ChatMessage], _ i: Int) -> String {
        var out = ""
        if i == 0 || messages[i - 1].role != "tool" { out += "<|im_start|>user" }
        out += "\n<tool_response>\n" + messages[i].content + "\n</tool_response>"
        if i == messages.count - 1 || messages[i + 1].role != "tool" { out += "<|im_end|>\n" }
        return out
    }

    private func renderQwen3(_ messages: [ChatMessage], _ addGenerationPrompt: Bool, _ enableThinking: Bool?) throws -> String {
        var out = ""
        if let first = messages.first, first.role == "system" {
            out += "<|im_start|>system\n" + first.content + "<|im_end|>\n"
        }
        // Index of the last user message that is not a wrapped tool response.
        var lastQuery = messages.count - 1
        for i in stride(from: messages.count - 1, through: 0, by: -1) {
            let m = messages[i]
            if m.role == "user" && !(utf8HasPrefix(m.content, "<tool_response>") && utf8HasSuffix(m.content, "</tool_response>")) {
                lastQuery = i
                break
            }
        }
        for (i, m) in messages.enumerated() {
            switch m.role {
            case "user":
                out += "<|im_start|>user\n" + m.content + "<|im_end|>\n"
            case "system":
                if i != 0 { out += "<|im_start|>system\n" + m.content + "<|im_end|>\n" }
            case "assistant":
                var content = m.content
                var reasoning = ""
                if let r = m.reasoningContent {
                    reasoning = r
                } else if let before = beforeFirst("</think>", in: content) {
                    reasoning = stripScalars(
                        String(afterLast("<think>", in: stripScalars(before, leading: false, trailing: true, { $0 == "\n" }))),
                        leading: true, trailing: false, { $0 == "\n" })
                    content = stripScalars(afterLast("</think>", in: content), leading: true, trailing: false, { $0 == "\n" })
                }
                let isLast = i == messages.count - 1
                if i > lastQuery && (isLast || !reasoning.isEmpty) {
                    out +=
                        "<|im_start|>assistant\n<think>\n" + stripScalars(reasoning, leading: true, trailing: true, { $0 == "\n" })
                        + "\n</think>\n\n" + stripScalars(content, leading: true, trailing: false, { $0 == "\n" })
                } else {
                    out += "<|im_start|>assistant\n" + content
                }
                out += "<|im_end|>\n"
            case "tool":
                out += toolResponse(messages, i)
            default:
                throw ChatTemplateError.unsupportedRole(role: m.role, index: i, variant: variant.rawValue)
            }
        }
        if addGenerationPrompt {
            out += "<|im_start|>assistant\n"
            if enableThinking == false { out += "<think>\n\n</think>\n\n" }
        }
        return out
    }

    private func renderChatMLStrip(_ messages: [ChatMessage], _ addGenerationPrompt: Bool, _ enableThinking: Bool?) throws -> String {
        var lastUser = -1
        for (i, m) in messages.enumerated() where m.role == "user" { lastUser = i }
        var out = ""
        for (i, m) in messages.enumerated() {
            switch m.role {
            case "system", "user":
                out += "<|im_start|>" + m.role + "\n" + m.content + "<|im_end|>\n"
            case "assistant":
                var content = m.content
                if i < lastUser && beforeFirst("</think>", in: content) != nil {
                    content = stripScalars(afterLast("</think>", in: content), leading: true, trailing: false, { $0 == "\n" })
                }
                out += "<|im_start|>assistant\n" + content + "<|im_end|>\n"
            default:
                throw ChatTemplateError.unsupportedRole(role: m.role, index: i, variant: variant.rawValue)
            }
        }
        if addGenerationPrompt {
            out += "<|im_start|>assistant\n"
            if enableThinking == false { out += "<think>\n\n</think>\n\n" }
        }
        return out
    }

    // MARK: Llama 3 family

    private func renderLlama3(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) -> String {
        var out = ""
        for (i, m) in messages.enumerated() {
            if i == 0 { out += bosToken }
            out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + jinjaTrim(m.content) + "<|eot_id|>"
        }
        if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
        return out
    }

    private func renderLlama31(_ messages: [ChatMessage], _ addGenerationPrompt: Bool) throws -> String {
        guard let first = messages.first else { throw ChatTemplateError.emptyConversation(variant: variant.rawValue) }
        var rest = messages[...]
        var system = ""
        if first.role == "system" {
            system = jinjaTrim(first.content)
            rest = messages.dropFirst()
        }
        var out = bosToken
        out += "<|start_header_id|>system<|end_header_id|>\n\n"
        out += "Cutting Knowledge Date: December 2023\nToday Date: " + dateString + "\n\n"
        out += system + "<|eot_id|>"
        for m in rest {
            if m.role == "tool" || m.role == "ipython" {
                out += "<|start_header_id|>ipython<|end_header_id|>\n\n" + m.content + "<|eot_id|>"
            } else {
                out += "<|start_header_id|>" + m.role + "<|end_header_id|>\n\n" + jinjaTrim(m.content) + "<|eot_id|>"
            }
        }
        if addGenerationPrompt { out += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
        return out
    }
}

// MARK: - Python string semantics used by the templates (scalar-based, not grapheme-based)

/// Python `str.isspace()` for one scalar (Jinja's `trim` is Python's `str.strip()`).
func pythonIsSpace(_ s: Unicode.Scalar) -> Bool {
    switch s.value {
    case 0x09...0x0D, 0x1C...0x1F, 0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000:
        return true
    default:
        return false
    }
}

/// Jinja `trim` filter.
func jinjaTrim(_ s: String) -> String {
    stripScalars(s, leading: true, trailing: true, pythonIsSpace)
}

/// Python `strip` / `lstrip` / `rstrip` with a scalar predicate.
func stripScalars(_ s: String, leading: Bool, trailing: Bool, _ pred: (Unicode.Scalar) -> Bool) -> String {
    let scalars = s.unicodeScalars
    var start = scalars.startIndex
    var end = scalars.endIndex
    if leading {
        while start < end && pred(scalars[start]) { start = scalars.index(after: start) }
    }
    if trailing {
        while end > start {
            let prev = scalars.index(before: end)
            if pred(scalars[prev]) { end = prev } else { break }
        }
    }
    return String(scalars[start..<end])
}

/// Python `s.split(sep)[0]` when `sep in s`, else nil (code-point based, like Python).
func beforeFirst(_ sep: String, in s: String) -> String? {
    let hay = Array(s.utf8)
    let needle = Array(sep.utf8)
    guard !needle.isEmpty, hay.count >= needle.count else { return nil }
    for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && hay[i..<(i + needle.count)].elementsEqual(needle) {
        return String(decoding: hay[..<i], as: UTF8.self)
    }
    return nil
}

func utf8HasPrefix(_ s: String, _ prefix: String) -> Bool {
    s.utf8.starts(with: prefix.utf8)
}

func utf8HasSuffix(_ s: String, _ suffix: String) -> Bool {
    s.utf8.reversed().starts(with: suffix.utf8.reversed())
}

/// Python `s.split(sep)[-1]`: the text after the last occurrence of `sep` (or all of `s`).
func afterLast(_ sep: String, in s: String) -> String {
    let hay = Array(s.utf8)
    let needle = Array(sep.utf8)
    guard !needle.isEmpty, hay.count >= needle.count else { return s }
    var i = hay.count - needle.count
    while i >= 0 {
        if hay[i] == needle[0] && hay[i..<(i + needle.count)].elementsEqual(needle) {
            return String(decoding: hay[(i + needle.count)...], as: UTF8.self)
        }
        i -= 1
    }
    return s
}
