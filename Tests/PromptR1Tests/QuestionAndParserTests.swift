import Foundation
import XCTest

@testable import PromptR1

final class QuestionRendererTests: XCTestCase {
    func testSingleUserMessage() throws {
        let r = try QuestionRenderer.render([.init(role: "user", content: "  Who wrote Hamlet?\n")])
        XCTAssertEqual(r.question, "Who wrote Hamlet?")
        XCTAssertNil(r.clientSystem)
        XCTAssertEqual(r.contextMessagesUsed, 0)
    }

    func testFoldsEarlierMessagesAfterTheQuestion() throws {
        let msgs: [ClientMessage] = [
            .init(role: "system", content: "Be brief."),
            .init(role: "user", content: "Who wrote Hamlet?"),
            .init(role: "assistant", content: "Shakespeare."),
            .init(role: "user", content: "When was he born?"),
        ]
        let r = try QuestionRenderer.render(msgs)
        XCTAssertEqual(r.question, "When was he born?\n\nConversation so far:\nUser: Who wrote Hamlet?\nAssistant: Shakespeare.")
        XCTAssertEqual(r.clientSystem, "Be brief.")
        XCTAssertEqual(r.contextMessagesUsed, 2)
        let only = try QuestionRenderer.render(msgs, policy: .init(mode: .lastUserMessageOnly))
        XCTAssertEqual(only.question, "When was he born?")
        var withSystem = QuestionRenderingPolicy()
        withSystem.includeSystemInContext = true
        XCTAssertEqual(
            try QuestionRenderer.render(msgs, policy: withSystem).question,
            "When was he born?\n\nConversation so far:\nSystem: Be brief.\nUser: Who wrote Hamlet?\nAssistant: Shakespeare.")
    }

    func testContextBudgetDropsOldestThenTruncates() throws {
        let msgs: [ClientMessage] = [
            .init(role: "user", content: "aaaaaaaaaa"),  // "User: aaaaaaaaaa" = 16
            .init(role: "assistant", content: "bbbbbbbbbb"),  // "Assistant: bbbbbbbbbb" = 21
            .init(role: "user", content: "Q?"),
        ]
        var p = QuestionRenderingPolicy()
        p.maxContextChars = 21
        var r = try QuestionRenderer.render(msgs, policy: p)
        XCTAssertEqual(r.question, "Q?\n\nConversation so far:\nAssistant: bbbbbbbbbb")
        XCTAssertEqual(r.contextMessagesDropped, 1)
        XCTAssertFalse(r.contextTruncated)
        p.maxContextChars = 38
        r = try QuestionRenderer.render(msgs, policy: p)
        XCTAssertEqual(r.contextMessagesUsed, 2)
        p.maxContextChars = 8
        r = try QuestionRenderer.render(msgs, policy: p)
        XCTAssertEqual(r.question, "Q?\n\nConversation so far:\n...bbbbb")
        XCTAssertTrue(r.contextTruncated)
        p.maxContextChars = 0
        r = try QuestionRenderer.render(msgs, policy: p)
        XCTAssertEqual(r.question, "Q?")
        XCTAssertEqual(r.contextMessagesDropped, 2)
    }

    func testErrors() {
        XCTAssertThrowsError(try QuestionRenderer.render([.init(role: "system", content: "x")])) { e in
            XCTAssertEqual(e as? QuestionRenderingError, .noUserMessage)
        }
        XCTAssertThrowsError(try QuestionRenderer.render([.init(role: "user", content: " \n ")])) { e in
            XCTAssertEqual(e as? QuestionRenderingError, .emptyQuestion(messageIndex: 0))
        }
    }
}

final class ParserAndJSONTests: XCTestCase {
    func testTruncateAtCallEnd() {
        XCTAssertEqual(
            truncateAtCallEnd("<think>a</think><interaction_prompt>x</interaction_prompt>\n<interaction_response>fake"),
            "<think>a</think><interaction_prompt>x</interaction_prompt>")
        XCTAssertEqual(truncateAtCallEnd("no call"), "no call")
        XCTAssertEqual(truncateAtCallEnd("a</interaction_prompt>"), "a</interaction_prompt>")
    }

    func testParseUsesTheFirstCallOnly() {
        XCTAssertEqual(
            parseTurn("<interaction_prompt>one</interaction_prompt><interaction_prompt>two</interaction_prompt>"),
            .call(PromptCall(prompt: "one", form: .plainText, body: "one")))
        XCTAssertEqual(parseTurn("<answer>a</answer>"), .final(answer: "a"))
        XCTAssertEqual(parseTurn("<answer>a"), .final(answer: nil))
        XCTAssertTrue(parseTurn("<interaction_prompt>x</interaction_prompt>").isCall)
    }

    func testJSONLoadsAcceptance() throws {
        XCTAssertEqual(
            try pythonJSONLoads(" {\"a\": [1, -2.5e3, true, false, null]} "),
            .object([("a", .array([.int(1), .double(-2500), .bool(true), .bool(false), .null]))]))
        XCTAssertEqual(try pythonJSONLoads("\"\\ud83d\\ude00\""), .string("\u{1F600}"))
        XCTAssertEqual(try pythonJSONLoads("\"\\ud83d x\""), .string("\u{FFFD} x"))
        XCTAssertEqual(try pythonJSONLoads("-Infinity"), .double(-.infinity))
        for bad in [
            "", " ", "{", "[1,]", "{\"a\" 1}", "01", "1.", "\"\\x\"", "\"a\nb\"", "tru", "{} {}", "\u{00A0}1",
            String(repeating: "[", count: 2000),
        ] {
            XCTAssertThrowsError(try pythonJSONLoads(bad), bad.debugDescription)
        }
    }

    func testDumpsEscapes() {
        XCTAssertEqual(
            pythonJSONDumps("a\"\\\n\r\t\u{08}\u{0C}\u{01}\u{7F}é\u{1F600}"),
            "\"a\\\"\\\\\\n\\r\\t\\b\\f\\u0001\\u007f\\u00e9\\ud83d\\ude00\"")
    }

    func testCutCountsPythonCharacters() {
        // "e" + combining acute is one Swift Character but two Python characters.
        XCTAssertEqual(PythonString.cut("e\u{301}e\u{301}", maxChars: 3), "e\u{301}e...")
        XCTAssertEqual(PythonString.cut("abc", maxChars: 3), "abc")
        XCTAssertEqual(PythonString.cut("\u{1F600}\u{1F600}", maxChars: 1), "\u{1F600}...")
    }

    func testRewardBlocksAndEdgeCases() {
        let text = "<|im_start|>assistant\nA<|im_end|>x<|im_start|>assistant\nB<|im_end|><|im_start|>assistant\nC"
        XCTAssertEqual(PromptR1Reward.assistantBlocks(text), ["A", "B"])
        XCTAssertEqual(
            PromptR1Reward.formatScore("<|im_start|>assistant\n<think>x</think><answer>y</answer><|im_end|>"), 0.6,
            accuracy: 1e-12)
        XCTAssertEqual(PromptR1Reward.f1(prediction: "", reference: ""), 0.0)
        XCTAssertEqual(PromptR1Reward.exactMatch(prediction: "The", references: [""]), 1.0)
    }
}
