// Parsing one policy turn (protocol.md section 2).
//
// Call detection: the first `<interaction_prompt>(.*?)</interaction_prompt>` (dot matches newline),
// i.e. the first opening tag followed by the first closing tag after it.
//
// The call body rule (documented decision; the reference has two code paths that disagree):
//   1. body = the text between the tags; s = Python `body.strip()`.
//   2. If s starts with "{", the body is a JSON tool call. It must parse like Python's
//      `json.loads` (nothing but white space after the object) or the result is
//      `Error: JSONDecodeError`. Then, in the order of the reference training path
//      (NousToolEnv.batch_step, use_batch_tool_calls: True):
//        no "name" key                      -> `Error: No tool name`
//        no "arguments" key                 -> `Error: No tool arguments`
//        name is not the string "prompt"    -> `Error: ToolNotFoundError`
//        arguments fails the tool's JSON Schema (must be an object whose "prompt" is a string;
//        other keys allowed)                -> `Error: Invalid tool arguments`
//        otherwise                          -> call with prompt = arguments["prompt"] (as is)
//   3. If s is empty -> `Error: JSONDecodeError` (json.loads("") fails and there is no text to send).
//   4. Anything else (s does not start with "{") is plain text: call with prompt = s. This is what
//      the reference inference scripts do, and it also covers JSON scalars/arrays, which the
//      reference would reject with "No tool name" or crash on.

import Foundation

/// The error strings injected back for a malformed call.
public enum ToolCallError: String, Error, Sendable, Codable, CaseIterable {
    case jsonDecodeError = "Error: JSONDecodeError"
    case noToolName = "Error: No tool name"
    /// Not listed in protocol.md, but it is what the reference training path (batch_step) injects
    /// when the JSON has a name but no "arguments"; a checkpoint trained there has seen it.
    case noToolArguments = "Error: No tool arguments"
    case toolNotFound = "Error: ToolNotFoundError"
    case invalidArguments = "Error: Invalid tool arguments"
}

/// How a call's prompt was written.
public enum CallForm: String, Sendable, Codable {
    case json
    case plainText
}

/// A well-formed call.
public struct PromptCall: Sendable, Equatable, Codable {
    /// The prompt sent upstream (JSON form: the "prompt" argument verbatim; plain form: the stripped body).
    public var prompt: String
    public var form: CallForm
    /// The raw text between the tags.
    public var body: String

    public init(prompt: String, form: CallForm, body: String) {
        self.prompt = prompt
        self.form = form
        self.body = body
    }

    public static func == (a: PromptCall, b: PromptCall) -> Bool {
        PythonString.equal(a.prompt, b.prompt) && a.form == b.form && PythonString.equal(a.body, b.body)
    }
}

/// The result of parsing one policy turn.
public enum TurnParse: Sendable, Equatable, Codable {
    /// A well-formed call: send `prompt` upstream.
    case call(PromptCall)
    /// A call whose body is malformed: inject the error string, do not call upstream.
    case malformedCall(ToolCallError, body: String)
    /// No complete call in the turn: the final turn. `answer` is the raw body of the first
    /// `<answer>(.*?)</answer>` (not stripped), nil when absent.
    case final(answer: String?)

    public var isCall: Bool {
        switch self {
        case .call, .malformedCall: return true
        case .final: return false
        }
    }

    public static func == (a: TurnParse, b: TurnParse) -> Bool {
        switch (a, b) {
        case (.call(let x), .call(let y)): return x == y
        case (.malformedCall(let e1, let b1), .malformedCall(let e2, let b2)): return e1 == e2 && PythonString.equal(b1, b2)
        case (.final(let x), .final(let y)):
            switch (x, y) {
            case (nil, nil): return true
            case (let x?, let y?): return PythonString.equal(x, y)
            default: return false
            }
        default: return false
        }
    }
}

public enum PromptR1Parser {
    /// Body of the first `OPEN(.*?)CLOSE` match (DOTALL), with the scalar offset just past CLOSE.
    static func firstTagged(_ codes: [UInt32], open: String, close: String) -> (body: ArraySlice<UInt32>, end: Int)? {
        let o = ScalarSearch.codes(open)
        let c = ScalarSearch.codes(close)
        guard let start = ScalarSearch.find(o, in: codes, from: 0) else { return nil }
        guard let stop = ScalarSearch.find(c, in: codes, from: start + o.count) else { return nil }
        return (codes[(start + o.count)..<stop], stop + c.count)
    }

    /// Body of the first `<answer>(.*?)</answer>` (raw, not stripped), nil when absent.
    public static func answerBody(_ text: String) -> String? {
        let codes = ScalarSearch.codes(text)
        guard let m = firstTagged(codes, open: PromptR1Tag.answerOpen, close: PromptR1Tag.answerClose) else { return nil }
        return ScalarSearch.string(m.body)
    }

    /// Body of the first complete `<interaction_prompt>(.*?)</interaction_prompt>`, nil when absent.
    public static func callBody(_ text: String) -> String? {
        let codes = ScalarSearch.codes(text)
        guard let m = firstTagged(codes, open: PromptR1Tag.callOpen, close: PromptR1Tag.callClose) else { return nil }
        return ScalarSearch.string(m.body)
    }

    /// Cut `text` right after the first `</interaction_prompt>`; unchanged when there is none.
    public static func truncateAtCallEnd(_ text: String) -> String {
        let codes = ScalarSearch.codes(text)
        let close = ScalarSearch.codes(PromptR1Tag.callClose)
        guard let at = ScalarSearch.find(close, in: codes, from: 0) else { return text }
        let end = at + close.count
        if end == codes.count { return text }
        return ScalarSearch.string(codes[0..<end])
    }

    /// Parse one policy turn. See the file header for the exact rule.
    public static func parseTurn(_ text: String) -> TurnParse {
        guard let body = callBody(text) else {
            return .final(answer: answerBody(text))
        }
        return parseCallBody(body)
    }

    /// Classify a call body (the text between the tags).
    public static func parseCallBody(_ body: String) -> TurnParse {
        let stripped = PythonString.strip(body)
        if stripped.isEmpty {
            return .malformedCall(.jsonDecodeError, body: body)
        }
        guard stripped.unicodeScalars.first == "{" else {
            return .call(PromptCall(prompt: stripped, form: .plainText, body: body))
        }
        let value: PyJSON
        do {
            value = try pythonJSONLoads(stripped)
        } catch {
            return .malformedCall(.jsonDecodeError, body: body)
        }
        guard value["name"] != nil else { return .malformedCall(.noToolName, body: body) }
        guard let arguments = value["arguments"] else { return .malformedCall(.noToolArguments, body: body) }
        guard case .string(let name)? = value["name"], PythonString.equal(name, PromptR1Tag.toolName) else {
            return .malformedCall(.toolNotFound, body: body)
        }
        guard case .object = arguments, case .string(let prompt)? = arguments["prompt"] else {
            return .malformedCall(.invalidArguments, body: body)
        }
        return .call(PromptCall(prompt: prompt, form: .json, body: body))
    }
}

/// Convenience free functions with the names used in the design notes.
public func parseTurn(_ text: String) -> TurnParse { PromptR1Parser.parseTurn(text) }
public func truncateAtCallEnd(_ text: String) -> String { PromptR1Parser.truncateAtCallEnd(text) }
