import Foundation
import XCTest

@testable import PromptR1

/// Compares the Swift implementation with values computed in plain Python by
/// scripts/reward_reference.py (embedded in ReferenceCases.swift).
final class ReferenceCasesTests: XCTestCase {
    struct Cases: Decodable {
        struct FirstPrompt: Decodable {
            var question: String
            var rendered: String
        }
        struct Dumps: Decodable {
            var s: String
            var dumps: String
            var results: String
        }
        struct Injection: Decodable {
            var answer: String
            var maxChars: Int
            var mode: String
            var injection: String
        }
        struct Strip: Decodable {
            var s: String
            var strip: String
            var split: [String]
        }
        struct Normalize: Decodable {
            var s: String
            var normalized: String
        }
        struct Parse: Decodable {
            var name: String
            var text: String
            var kind: String
            var form: String?
            var prompt: String?
            var error: String?
            var answer: String?
        }
        struct Reward: Decodable {
            var name: String
            var text: String
            var references: [String]
            var format: Double
            var f1: Double
            var em: Double
            var sm: Double
            var reward: Double
            var answer: String?
        }
        var firstPrompt: [FirstPrompt]
        var toolJSON: String
        var upstreamSystemPrompt: String
        var dumps: [Dumps]
        var injection: [Injection]
        var strip: [Strip]
        var normalize: [Normalize]
        var parse: [Parse]
        var reward: [Reward]
    }

    static let cases: Cases = {
        do {
            return try JSONDecoder().decode(Cases.self, from: Data(referenceCasesJSON.utf8))
        } catch {
            fatalError("ReferenceCases.swift does not decode: \(error)")
        }
    }()

    func testCaseCounts() {
        XCTAssertGreaterThanOrEqual(Self.cases.reward.count, 40)
        XCTAssertGreaterThanOrEqual(Self.cases.parse.count, 30)
    }

    func testConstants() {
        assertScalarsEqual(PromptR1Prompt.toolJSON, Self.cases.toolJSON)
        assertScalarsEqual(pythonJSONDumps(PromptR1Prompt.toolDefinition), Self.cases.toolJSON)
        assertScalarsEqual(PromptR1Prompt.upstreamSystemPrompt, Self.cases.upstreamSystemPrompt)
        XCTAssertTrue(PromptR1Prompt.systemPreamble.hasSuffix("assistant. "))
        XCTAssertTrue(PromptR1Prompt.upstreamSystemPrompt.hasSuffix("question. "))
        XCTAssertFalse(PromptR1Prompt.instruction.hasSuffix("\n"))
        XCTAssertTrue(PromptR1Prompt.instruction.contains("refine → check). \n4."))
    }

    func testFirstPrompt() {
        for c in Self.cases.firstPrompt {
            assertScalarsEqual(PromptR1Prompt.firstPrompt(question: c.question), c.rendered, "question \(c.question.debugDescription)")
        }
    }

    func testJSONDumps() {
        for c in Self.cases.dumps {
            assertScalarsEqual(pythonJSONDumps(c.s), c.dumps, "dumps \(c.s.debugDescription)")
            assertScalarsEqual(pythonJSONDumps(.object([("results", .array([.string(c.s)]))])), c.results)
            assertScalarsEqual(PromptR1Prompt.resultJSON(upstreamAnswer: c.s, maxChars: 1_000_000), c.results)
        }
    }

    func testInjection() {
        for c in Self.cases.injection {
            let mode = ResultCutMode(rawValue: c.mode)!
            assertScalarsEqual(
                PromptR1Prompt.injection(upstreamAnswer: c.answer, maxChars: c.maxChars, cutMode: mode),
                c.injection, "answer \(c.answer.debugDescription) max \(c.maxChars) mode \(c.mode)")
        }
    }

    func testStripAndSplit() {
        for c in Self.cases.strip {
            assertScalarsEqual(PythonString.strip(c.s), c.strip, "strip \(c.s.debugDescription)")
            let split = PythonString.split(c.s)
            XCTAssertEqual(
                split.map { Array($0.unicodeScalars) }, c.split.map { Array($0.unicodeScalars) },
                "split \(c.s.debugDescription)")
        }
    }

    func testNormalize() {
        for c in Self.cases.normalize {
            assertScalarsEqual(PromptR1Reward.normalizeAnswer(c.s), c.normalized, "normalize \(c.s.debugDescription)")
        }
    }

    func testParse() {
        for c in Self.cases.parse {
            let p = PromptR1Parser.parseTurn(c.text)
            switch (c.kind, p) {
            case ("call", .call(let call)):
                assertScalarsEqual(call.prompt, c.prompt, c.name)
                XCTAssertEqual(call.form.rawValue, c.form, c.name)
            case ("error", .malformedCall(let e, _)):
                XCTAssertEqual(e.rawValue, c.error, c.name)
            case ("final", .final(let answer)):
                assertScalarsEqual(answer, c.answer, c.name)
            default:
                XCTFail("\(c.name): expected \(c.kind) \(c.error ?? c.prompt ?? c.answer ?? ""), got \(p)")
            }
        }
    }

    func testReward() {
        for c in Self.cases.reward {
            let r = PromptR1Reward.score(text: c.text, references: c.references)
            XCTAssertEqual(r.format, c.format, accuracy: 1e-9, "\(c.name) format")
            XCTAssertEqual(r.f1, c.f1, accuracy: 1e-9, "\(c.name) f1")
            XCTAssertEqual(r.exactMatch, c.em, accuracy: 1e-9, "\(c.name) em")
            XCTAssertEqual(r.substringMatch, c.sm, accuracy: 1e-9, "\(c.name) sm")
            XCTAssertEqual(r.reward, c.reward, accuracy: 1e-9, "\(c.name) reward")
            // The fmt == 1.0 test is exact: the branch taken must match too.
            XCTAssertEqual(r.format == 1.0, c.format == 1.0, "\(c.name) fmt == 1.0")
            assertScalarsEqual(r.answer, c.answer, "\(c.name) answer")
        }
    }

    /// The fixtures helper renders the first prompt with transformers' apply_chat_template from a
    /// jinja template written from the protocol; when that file exists, match it byte for byte.
    func testFirstPromptAgainstChatTemplateFixture() throws {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures/reference/promptr1-first-prompt.json")
        guard FileManager.default.fileExists(atPath: url.path) else {
            throw XCTSkip("Tests/Fixtures/reference/promptr1-first-prompt.json not generated yet")
        }
        struct File: Decodable {
            struct Case: Decodable {
                var question: String
                var rendered: String
            }
            var cases: [Case]
        }
        let file = try JSONDecoder().decode(File.self, from: Data(contentsOf: url))
        XCTAssertFalse(file.cases.isEmpty)
        for c in file.cases {
            assertScalarsEqual(
                PromptR1Prompt.firstPrompt(question: c.question), c.rendered,
                "question \(c.question.debugDescription)")
        }
    }
}
