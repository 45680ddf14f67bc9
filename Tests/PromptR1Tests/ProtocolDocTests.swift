import Foundation
import XCTest

@testable import PromptR1

/// docs/protocol.md quotes the protocol's wire constants; this checks every quoted block against
/// the strings the gateway actually sends, so the page cannot drift from the code.
final class ProtocolDocTests: XCTestCase {
    static let page = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/protocol.md")

    /// The fenced block after each `<!-- KIND: NAME -->` marker: (kind, name) -> (fence info, body).
    static func blocks(_ text: String) -> [String: (info: String, body: String)] {
        let lines = text.components(separatedBy: "\n")
        var out: [String: (String, String)] = [:]
        var i = 0
        while i < lines.count {
            let l = lines[i]
            if l.hasPrefix("<!-- "), l.hasSuffix(" -->"), i + 1 < lines.count, lines[i + 1].hasPrefix("```") {
                let name = l.dropFirst(5).dropLast(4).replacingOccurrences(of: " ", with: "")
                let info = String(lines[i + 1].dropFirst(3))
                var body: [String] = []
                var j = i + 2
                while j < lines.count, lines[j] != "```" {
                    body.append(lines[j])
                    j += 1
                }
                out[name] = (info, body.joined(separator: "\n"))
                i = j
            }
            i += 1
        }
        return out
    }

    func constant(_ blocks: [String: (info: String, body: String)], _ name: String) throws -> Any {
        let b = try XCTUnwrap(blocks["constant:\(name)"], "docs/protocol.md has no block marked <!-- constant: \(name) -->")
        if b.info == "json" {
            return try JSONSerialization.jsonObject(with: Data(b.body.utf8), options: .fragmentsAllowed)
        }
        return b.body
    }

    func testQuotedConstantsAreTheOnesTheGatewaySends() throws {
        let blocks = Self.blocks(try String(contentsOf: Self.page, encoding: .utf8))
        let strings: [String: String] = [
            "systemPreamble": PromptR1Prompt.systemPreamble,
            "toolJSON": PromptR1Prompt.toolJSON,
            "instruction": PromptR1Prompt.instruction,
            "upstreamSystemPrompt": PromptR1Prompt.upstreamSystemPrompt,
            "injectionPrefix": PromptR1Prompt.injectionPrefix,
            "injectionSuffix": PromptR1Prompt.injectionSuffix,
        ]
        for (name, value) in strings.sorted(by: { $0.key < $1.key }) {
            assertScalarsEqual(try constant(blocks, name) as? String, value, "docs/protocol.md, constant \(name)")
        }
        XCTAssertEqual(try constant(blocks, "toolCallErrors") as? [String], ToolCallError.allCases.map(\.rawValue))
        // The system message is assembled from the quoted parts exactly as the page says.
        let header = try XCTUnwrap(try constant(blocks, "toolsHeader") as? String)
        let footer = try XCTUnwrap(try constant(blocks, "toolsFooter") as? String)
        let system = PromptR1Prompt.systemPreamble + header + "\n" + PromptR1Prompt.toolJSON + footer
        assertScalarsEqual(system, PromptR1Prompt.systemContent, "SYSTEM = preamble + header + \\n + TOOL_JSON + footer")
        // And the first prompt follows the page's template.
        let template = try XCTUnwrap(blocks["template:firstPrompt"]?.body, "no <!-- template: firstPrompt --> block")
        let question = "Who wrote Hamlet?"
        let rendered = template.replacingOccurrences(of: "\\n", with: "\n")
            .replacingOccurrences(of: "{SYSTEM}", with: system)
            .replacingOccurrences(of: "{INSTRUCTION}", with: PromptR1Prompt.instruction)
            .replacingOccurrences(of: "{QUESTION}", with: question)
        assertScalarsEqual(rendered, PromptR1Prompt.firstPrompt(question: question), "docs/protocol.md first-prompt template")
        XCTAssertEqual(blocks.count, 10, "blocks found: \(blocks.keys.sorted())")
    }
}
