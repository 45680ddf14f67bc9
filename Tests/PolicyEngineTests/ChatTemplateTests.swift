import Foundation
import XCTest

@testable import PolicyEngine

private let chatFixturesDir = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")

private struct ChatReference: Decodable {
    struct Message: Decodable {
        let role: String
        let content: String
    }
    struct Kwargs: Decodable {
        let enable_thinking: Bool?
    }
    struct Case: Decodable {
        let messages: [Message]
        let add_generation_prompt: Bool
        let kwargs: Kwargs?
        let rendered: String
    }
    let model: String
    let cases: [Case]
}

final class ChatTemplateReferenceTests: XCTestCase {
    private func check(_ file: String, expectKind: ChatTemplateKind, expectVariant: ChatTemplateVariant) throws {
        let data = try Data(contentsOf: chatFixturesDir.appendingPathComponent("reference/\(file)"))
        let ref = try JSONDecoder().decode(ChatReference.self, from: data)
        let tok = try Tokenizer(directory: chatFixturesDir.appendingPathComponent("models/\(ref.model)"))
        let template = try ChatTemplate(tokenizer: tok)
        XCTAssertEqual(template.kind, expectKind)
        XCTAssertEqual(template.variant, expectVariant)
        XCTAssertEqual(ChatTemplate.detect(try XCTUnwrap(tok.chatTemplate)), expectKind)
        XCTAssertFalse(ref.cases.isEmpty)
        for (i, c) in ref.cases.enumerated() {
            let rendered = try template.render(
                messages: c.messages.map { ChatMessage(role: $0.role, content: $0.content) },
                addGenerationPrompt: c.add_generation_prompt,
                enableThinking: c.kwargs?.enable_thinking)
            XCTAssertEqual(Array(rendered.unicodeScalars), Array(c.rendered.unicodeScalars), "\(file) case \(i)")
        }
    }

    func testQwen2TemplateMatchesTransformers() throws {
        try check("chat-qwen.json", expectKind: .chatML, expectVariant: .qwen2)
    }

    func testQwen3TemplateMatchesTransformers() throws {
        try check("chat-qwen3.json", expectKind: .chatML, expectVariant: .chatMLStripThinkHistory)
    }

    func testLlamaTemplateMatchesTransformers() throws {
        try check("chat-llama.json", expectKind: .llama3, expectVariant: .llama3)
    }

    func testQwen2DefaultSystemMessageComesFromTheTemplate() throws {
        let tok = try Tokenizer(directory: chatFixturesDir.appendingPathComponent("models/qwen2-tiny"))
        let template = try ChatTemplate(tokenizer: tok)
        XCTAssertEqual(template.defaultSystemMessage, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")
    }
}

final class ChatTemplateUnitTests: XCTestCase {
    func testUnknownAndMissingTemplatesAreErrors() throws {
        XCTAssertThrowsError(try ChatTemplate(template: "{% for m in messages %}{{ m.content }}{% endfor %}")) { error in
            guard case ChatTemplateError.unknownTemplate = error else { return XCTFail("\(error)") }
            XCTAssertTrue("\(error)".contains("unrecognised"))
        }
        XCTAssertNil(ChatTemplate.detect("[INST] {{ messages }} [/INST]"))
        XCTAssertEqual(ChatTemplate.detect("...<|im_start|>..."), .chatML)
        XCTAssertEqual(ChatTemplate.detect("...<|start_header_id|>..."), .llama3)
    }

    func testUnsupportedRoleAndEmptyConversation() throws {
        let qwen2 = try ChatTemplate(template: "<|im_start|> You are Qwen, created by Alibaba Cloud. Hi.'")
        XCTAssertEqual(qwen2.defaultSystemMessage, "You are Qwen, created by Alibaba Cloud. Hi.")
        XCTAssertThrowsError(try qwen2.render(messages: [ChatMessage("developer", "x")], addGenerationPrompt: true)) { error in
            XCTAssertEqual(error as? ChatTemplateError, .unsupportedRole(role: "developer", index: 0, variant: "qwen2"))
        }
        XCTAssertThrowsError(try qwen2.render(messages: [], addGenerationPrompt: true))
        // Tool results are grouped into one user turn.
        let rendered = try qwen2.render(
            messages: [
                ChatMessage("user", "q"), ChatMessage("assistant", "call"),
                ChatMessage("tool", "r1"), ChatMessage("tool", "r2"),
            ],
            addGenerationPrompt: true)
        XCTAssertEqual(
            rendered,
            "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. Hi.<|im_end|>\n"
                + "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\ncall<|im_end|>\n"
                + "<|im_start|>user\n<tool_response>\nr1\n</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n"
                + "<|im_start|>assistant\n")
    }

    /// Official Qwen3 template semantics (recognised by `last_query_index`). Expected strings
    /// were rendered with jinja2 from the published Qwen3 template during development.
    func testOfficialQwen3Semantics() throws {
        let t = try ChatTemplate(template: "<|im_start|> namespace(multi_step_tool=true, last_query_index=...) enable_thinking")
        XCTAssertEqual(t.variant, .qwen3)
        let cases: [([ChatMessage], Bool, Bool?, String)] = [
            (
                [ChatMessage("user", "Hi"), ChatMessage("assistant", "Hello")], false, nil,
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n"
            ),
            (
                [
                    ChatMessage("system", "sys"), ChatMessage("user", "Hi"),
                    ChatMessage("assistant", "<think>\nplan\n</think>\n\nHello"), ChatMessage("user", "Again"),
                ], true, nil,
                "<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
                    + "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"
            ),
            (
                [ChatMessage("user", "Hi"), ChatMessage("assistant", "<think>\nplan\n</think>\n\nHello")], false, nil,
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\nplan\n</think>\n\nHello<|im_end|>\n"
            ),
            (
                [
                    ChatMessage("user", "Q"), ChatMessage("assistant", "calling"), ChatMessage("tool", "r1"), ChatMessage("tool", "r2"),
                    ChatMessage("assistant", "<think>\nok\n</think>\n\nDone"),
                ], false, nil,
                "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\ncalling<|im_end|>\n<|im_start|>user\n<tool_response>\nr1\n"
                    + "</tool_response>\n<tool_response>\nr2\n</tool_response><|im_end|>\n<|im_start|>assistant\n<think>\nok\n"
                    + "</think>\n\nDone<|im_end|>\n"
            ),
            (
                [
                    ChatMessage("user", "Q"), ChatMessage(role: "assistant", content: "x", reasoningContent: "why"),
                    ChatMessage("user", "Q2"),
                ],
                true, false,
                "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nx<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n"
                    + "<|im_start|>assistant\n<think>\n\n</think>\n\n"
            ),
            (
                [ChatMessage("user", "Q"), ChatMessage(role: "assistant", content: "ans", reasoningContent: "  \nwhy\n")], false, nil,
                "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>\n  \nwhy\n</think>\n\nans<|im_end|>\n"
            ),
            (
                [ChatMessage("user", "Q"), ChatMessage("assistant", "a"), ChatMessage("assistant", "<think>r</think>b")], true, true,
                "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\na<|im_end|>\n<|im_start|>assistant\n<think>\nr\n</think>\n\n"
                    + "b<|im_end|>\n<|im_start|>assistant\n"
            ),
        ]
        for (i, (messages, gen, thinking, want)) in cases.enumerated() {
            XCTAssertEqual(try t.render(messages: messages, addGenerationPrompt: gen, enableThinking: thinking), want, "case \(i)")
        }
    }

    func testLlama31SystemHeader() throws {
        let t = try ChatTemplate(template: "<|start_header_id|> Cutting Knowledge Date: December 2023", bosToken: "<|begin_of_text|>")
        XCTAssertEqual(t.variant, .llama31)
        let out = try t.render(messages: [ChatMessage("system", " Be brief. "), ChatMessage("user", "Hi\n")], addGenerationPrompt: true)
        XCTAssertEqual(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n"
                + "Today Date: 26 Jul 2024\n\nBe brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                + "<|start_header_id|>assistant<|end_header_id|>\n\n")
    }

    func testPythonStringHelpers() {
        // Jinja trim is Python str.strip(): includes U+001C...U+001F and NBSP, not ZWSP.
        XCTAssertEqual(jinjaTrim("\u{1C}\u{A0} x \u{200B}\u{3000}"), "x \u{200B}")
        XCTAssertEqual(afterLast("</think>", in: "a</think>b</think>c"), "c")
        XCTAssertEqual(beforeFirst("</think>", in: "a</think>b</think>c"), "a")
        XCTAssertNil(beforeFirst("</think>", in: "abc"))
        // Code-point based: '>' followed by a combining mark still ends the tag.
        XCTAssertEqual(afterLast("</think>", in: "r</think>\u{338}x"), "\u{338}x")
    }
}
