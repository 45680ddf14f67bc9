// Turning a client's chat conversation into the protocol's single QUESTION string.
//
// The policy was trained on `Question: {QUESTION}` with one self-contained question. A client
// conversation is rendered as follows (mode `.foldContext`, the default):
//
//   QUESTION = strip(last user message)                               when there is no context
//   QUESTION = strip(last user message) + "\n\n" + contextHeader + "\n"
//              + one line per earlier message: "<Label>: <strip(content)>", joined by "\n"
//
// - "Earlier messages" are the messages before the last user message, in order, except system
//   messages (those are returned in `clientSystem`, joined by "\n\n", for the upstream; set
//   `includeSystemInContext` to fold them in too) and messages whose stripped content is empty.
// - Labels come from `roleLabels` ("User", "Assistant", "System", "Tool"); other roles are
//   capitalised.
// - Messages after the last user message are ignored.
// - `maxContextChars` bounds the folded lines (Python characters, joined with "\n"): the oldest
//   messages are dropped first; if the most recent one alone is too long, its head is replaced by
//   "..." so that its tail fits; a limit of 3 or less folds in nothing.
// Mode `.lastUserMessageOnly` uses the stripped last user message alone.

import Foundation

public struct ClientMessage: Sendable, Equatable, Codable {
    public var role: String
    public var content: String

    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

public struct QuestionRenderingPolicy: Sendable, Equatable {
    public enum Mode: String, Sendable, Equatable, Codable {
        case lastUserMessageOnly
        case foldContext
    }

    public var mode: Mode
    public var maxContextChars: Int?
    public var includeSystemInContext: Bool
    public var contextHeader: String
    public var roleLabels: [String: String]

    public init(
        mode: Mode = .foldContext, maxContextChars: Int? = 6000, includeSystemInContext: Bool = false,
        contextHeader: String = "Conversation so far:",
        roleLabels: [String: String] = [
            "user": "User", "assistant": "Assistant", "system": "System",
            "tool": "Tool", "developer": "System",
        ]
    ) {
        self.mode = mode
        self.maxContextChars = maxContextChars
        self.includeSystemInContext = includeSystemInContext
        self.contextHeader = contextHeader
        self.roleLabels = roleLabels
    }
}

public struct RenderedQuestion: Sendable, Equatable {
    /// The QUESTION to put in the first prompt.
    public var question: String
    /// The client's system/developer messages joined by "\n\n" (nil when none): pass it as
    /// `CollaborationOptions.clientSystemMessage` if the upstream should see it.
    public var clientSystem: String?
    /// Earlier messages folded into the question.
    public var contextMessagesUsed: Int
    /// Earlier messages dropped (oldest first) to fit `maxContextChars`.
    public var contextMessagesDropped: Int
    /// The one kept context message was shortened to its tail (prefixed with "...").
    public var contextTruncated: Bool
}

public enum QuestionRenderingError: Error, Equatable, CustomStringConvertible {
    case noUserMessage
    case emptyQuestion(messageIndex: Int)

    public var description: String {
        switch self {
        case .noUserMessage: return "messages: no message with role \"user\""
        case .emptyQuestion(let i): return "messages[\(i)].content: the last user message is empty"
        }
    }
}

public enum QuestionRenderer {
    static func isSystemRole(_ r: String) -> Bool { r == "system" || r == "developer" }

    public static func render(_ messages: [ClientMessage], policy: QuestionRenderingPolicy = .init()) throws(QuestionRenderingError)
        -> RenderedQuestion
    {
        guard let lastUser = messages.lastIndex(where: { $0.role == "user" }) else { throw .noUserMessage }
        let question = PythonString.strip(messages[lastUser].content)
        if question.isEmpty { throw .emptyQuestion(messageIndex: lastUser) }

        let systems = messages.filter { isSystemRole($0.role) }.map { PythonString.strip($0.content) }.filter { !$0.isEmpty }
        let clientSystem = systems.isEmpty ? nil : systems.joined(separator: "\n\n")

        if policy.mode == .lastUserMessageOnly {
            return RenderedQuestion(
                question: question, clientSystem: clientSystem, contextMessagesUsed: 0,
                contextMessagesDropped: 0, contextTruncated: false)
        }

        var lines: [String] = []
        for m in messages[..<lastUser] {
            if isSystemRole(m.role) && !policy.includeSystemInContext { continue }
            let content = PythonString.strip(m.content)
            if content.isEmpty { continue }
            lines.append(label(m.role, policy) + ": " + content)
        }
        var dropped = 0
        var truncated = false
        if let maxChars = policy.maxContextChars {
            if maxChars <= 3 {
                dropped = lines.count
                lines = []
            } else {
                func length(_ ls: ArraySlice<String>) -> Int {
                    ls.reduce(0) { $0 + PythonString.length($1) } + max(0, ls.count - 1)
                }
                var kept = lines[...]
                while kept.count > 1 && length(kept) > maxChars {
                    kept = kept.dropFirst()
                    dropped += 1
                }
                lines = Array(kept)
                if lines.count == 1, PythonString.length(lines[0]) > maxChars {
                    let scalars = Array(lines[0].unicodeScalars)
                    var view = String.UnicodeScalarView()
                    view.append(contentsOf: scalars[(scalars.count - (maxChars - 3))...])
                    lines[0] = "..." + String(view)
                    truncated = true
                }
            }
        }
        if lines.isEmpty {
            return RenderedQuestion(
                question: question, clientSystem: clientSystem, contextMessagesUsed: 0,
                contextMessagesDropped: dropped, contextTruncated: false)
        }
        let folded = question + "\n\n" + policy.contextHeader + "\n" + lines.joined(separator: "\n")
        return RenderedQuestion(
            question: folded, clientSystem: clientSystem, contextMessagesUsed: lines.count,
            contextMessagesDropped: dropped, contextTruncated: truncated)
    }

    static func label(_ role: String, _ policy: QuestionRenderingPolicy) -> String {
        if let l = policy.roleLabels[role] { return l }
        guard let f = role.first else { return "Unknown" }
        return f.uppercased() + role.dropFirst()
    }
}
