import Foundation
import XCTest

/// The README stays a screen-sized entry point and every link in it and in docs/ leads to a file
/// that a clone of the repository has.
final class DocsTests: XCTestCase {
    static let root = OpenAISDKTests.repoRoot

    static func markdownFiles() throws -> [URL] {
        let docs = root.appendingPathComponent("docs")
        let names = try FileManager.default.contentsOfDirectory(atPath: docs.path).filter { $0.hasSuffix(".md") }.sorted()
        return [root.appendingPathComponent("README.md")] + names.map { docs.appendingPathComponent($0) }
    }

    func testReadmeFitsOnAScreen() throws {
        let size = try Data(contentsOf: Self.root.appendingPathComponent("README.md")).count
        XCTAssertLessThanOrEqual(size, 12 * 1024, "README.md is \(size) bytes: move reference material into docs/ and link it")
    }

    func testRelativeLinksStayInsideTheRepositoryAndResolve() throws {
        let files = try Self.markdownFiles()
        XCTAssertGreaterThan(files.count, 5)
        let rootPath = Self.root.standardized.path
        for file in files {
            let text = try String(contentsOf: file, encoding: .utf8)
            for match in text.matches(of: /\]\(([^)\s]+)\)/) {
                var target = String(match.1)
                if target.hasPrefix("http://") || target.hasPrefix("https://") || target.hasPrefix("mailto:") || target.hasPrefix("#") {
                    continue
                }
                if let hash = target.firstIndex(of: "#") { target = String(target[..<hash]) }
                let resolved = file.deletingLastPathComponent().appendingPathComponent(target).standardized.path
                XCTAssertTrue(
                    resolved.hasPrefix(rootPath + "/"),
                    "\(file.lastPathComponent) links \(target), outside the repository (a clone does not have it)")
                XCTAssertTrue(
                    FileManager.default.fileExists(atPath: resolved), "\(file.lastPathComponent) links \(target), which does not exist")
            }
        }
    }
}
