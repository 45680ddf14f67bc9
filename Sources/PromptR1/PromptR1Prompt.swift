// Protocol constants of Prompt-R1 (docs: /work/shared/protocol.md, sections 1, 3 and 4).
// Every string here is a wire constant: do not reformat.

import Foundation

/// The tags and chat-format markers of the protocol.
public enum PromptR1Tag {
    public static let imStart = "<|im_start|>"
    public static let imEnd = "<|im_end|>"
    public static let thinkOpen = "<think>"
    public static let thinkClose = "</think>"
    public static let callOpen = "<interaction_prompt>"
    public static let callClose = "</interaction_prompt>"
    public static let responseOpen = "<interaction_response>"
    public static let responseClose = "</interaction_response>"
    public static let answerOpen = "<answer>"
    public static let answerClose = "</answer>"
    /// The only tool name the protocol knows.
    public static let toolName = "prompt"
}

public enum PromptR1Prompt {
    /// Section 1: the default system text of the Prompt-R1 chat template (trailing space included).
    public static let systemPreamble = "You are Qwen, created by Alibaba Cloud. You are a great assistant. "

    /// The one tool, as an ordered JSON value (key order is part of the wire format).
    public static let toolDefinition: PyJSON = .object([
        ("type", .string("function")),
        (
            "function",
            .object([
                ("name", .string("prompt")),
                ("description", .string("Give an explanation of the question in detail.")),
                (
                    "parameters",
                    .object([
                        ("type", .string("object")),
                        (
                            "properties",
                            .object([
                                (
                                    "prompt",
                                    .object([
                                        ("type", .string("string")),
                                        ("description", .string("Give question and its explanation")),
                                    ])
                                )
                            ])
                        ),
                        ("required", .array([.string("prompt")])),
                    ])
                ),
            ])
        ),
    ])

    /// `TOOL_JSON`: the tool serialised like Python's `json.dumps` with default separators.
    public static let toolJSON =
        #"{"type": "function", "function": {"name": "prompt", "description": "Give an explanation of the question in detail.", "parameters": {"type": "object", "properties": {"prompt": {"type": "string", "description": "Give question and its explanation"}}, "required": ["prompt"]}}}"#

    /// The complete system message content of the first prompt (preamble + tools section).
    public static let systemContent: String =
        systemPreamble
        + "\n\n# Tools\n\nYou can call one or more powerful Large Language Models to answer the user's questions. But you MUST provide the tool with an explanation and analysis of the problem, as well as your thought process.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>"
        + "\n" + toolJSON
        + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <interaction_prompt></interaction_prompt> XML tags:\n<interaction_prompt>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</interaction_prompt>"

    /// `INSTRUCTION`: the five rules (rule 3 ends with a space; no trailing newline).
    public static let instruction: String =
        "First, provide a simple explanation of the question and give it to the large language model for a more accurate answer. Focus on explaining the question without deep reasoning in the first step. After receiving the response, think about the large language model's response, and by interacting with the large language model again and again, arrive at the final answer. Proceed step by step with the following rules:\n"
        + "1. Only in the first step, provide a brief explanation of the question and give it to the large language model:\n"
        + "   <think>(Brief thinking must not be over 80 words)</think>\n"
        + "   <interaction_prompt>(give the question and its explanation to the large language model)</interaction_prompt>\n"
        + "2. After the first step, in each interaction with the large language model, write:\n"
        + "   <think>(your reasoning for the receiving response and question)</think>\n"
        + "   <interaction_prompt>(new request to refine or validate the answer)</interaction_prompt>\n"
        + "3. Each <interaction_prompt> must build on what came before. Do not just repeat the same content. Let the content of the <interaction_prompt>...</interaction_prompt> evolve naturally (for example: outline → add details → refine → check). \n"
        + "4. Continue producing think within <think></think> and call tool within <interaction_prompt></interaction_prompt> until the answer is ready.\n"
        + "5. Once the answer is complete, write:\n"
        + "   <think>(final reasoning with the <interaction_response> and question)</think>\n"
        + "   <answer>(final answer for the question)</answer>"

    /// Section 3: the upstream system prompt (trailing space included).
    public static let upstreamSystemPrompt =
        "You are a helpful assistant. Please read the provided content (including previous conversations and the current task) and help the user complete the task or answer the question. "

    /// The user message content of the first prompt: `Question: {QUESTION}\n{INSTRUCTION}`.
    public static func userContent(question: String) -> String {
        "Question: " + question + "\n" + instruction
    }

    /// Section 1: the full ChatML text the policy sees first, ending with `<|im_start|>assistant\n`.
    public static func firstPrompt(question: String) -> String {
        PromptR1Tag.imStart + "system\n" + systemContent + PromptR1Tag.imEnd + "\n"
            + PromptR1Tag.imStart + "user\n" + userContent(question: question) + PromptR1Tag.imEnd + "\n"
            + PromptR1Tag.imStart + "assistant\n"
    }

    /// Section 4, head of the injection: closes the policy's turn and opens the user turn.
    public static let injectionPrefix = "<|im_end|>\n<|im_start|>user\n<interaction_response>\n"
    /// Section 4, tail of the injection: closes the user turn and re-opens the assistant's thinking.
    public static let injectionSuffix = "\n</interaction_response><|im_end|>\n<|im_start|>assistant\n<think>\n"

    /// The injection around an already formatted result (`RESULT_JSON`, or an error string, which
    /// the reference injects raw).
    public static func injection(result: String) -> String {
        injectionPrefix + result + injectionSuffix
    }

    /// `RESULT_JSON` for an upstream answer (already stripped), cut to `maxChars` Python
    /// characters with `...` appended when cut. See `ResultCutMode` for where the cut applies.
    public static func resultJSON(upstreamAnswer: String, maxChars: Int, cutMode: ResultCutMode = .answer) -> String {
        switch cutMode {
        case .answer:
            let cutAnswer = PythonString.cut(upstreamAnswer, maxChars: maxChars)
            return "{\"results\": [" + pythonJSONDumps(cutAnswer) + "]}"
        case .serializedResult:
            let full = "{\"results\": [" + pythonJSONDumps(upstreamAnswer) + "]}"
            return PythonString.cut(full, maxChars: maxChars)
        }
    }

    /// The exact text injected after a successful call.
    public static func injection(upstreamAnswer: String, maxChars: Int, cutMode: ResultCutMode = .answer) -> String {
        injection(result: resultJSON(upstreamAnswer: upstreamAnswer, maxChars: maxChars, cutMode: cutMode))
    }

    /// The exact text injected after a malformed call: the error string in place of RESULT_JSON
    /// (cut like any tool response in the reference, which never matters for these short strings).
    public static func injection(callError: ToolCallError, maxChars: Int) -> String {
        injection(result: PythonString.cut(callError.rawValue, maxChars: maxChars))
    }
}

/// Where the `maxChars` cut applies.
public enum ResultCutMode: String, Sendable, Codable, CaseIterable {
    /// protocol.md section 4: cut the ANSWER, then serialise `{"results": [ANSWER...]}`
    /// (the result stays valid JSON).
    case answer
    /// What the reference code (NousToolEnv.format_tool_response) actually does: serialise
    /// `{"results": [ANSWER]}` first, then cut that string and append `...` (invalid JSON when cut).
    /// Use this to reproduce a reference training run byte for byte.
    case serializedResult
}
