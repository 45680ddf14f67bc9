import Foundation
import XCTest

@testable import GatewayServer

/// docs/configuration.md must document every key of gateway.json and every key the config reader
/// reads, and nothing else: the reference cannot fall behind the code, nor name keys that do not
/// exist. The failure messages say exactly which line to add or remove.
final class ConfigReferenceTests: XCTestCase {
    static let reference = OpenAISDKTests.repoRoot.appendingPathComponent("docs/configuration.md")
    static let gatewayJSON = OpenAISDKTests.repoRoot.appendingPathComponent("gateway.json")

    /// The key column of the reference's table rows: key path -> line number.
    static func documentedKeys(_ text: String) -> [(key: String, line: Int)] {
        var out: [(String, Int)] = []
        for (i, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            guard line.hasPrefix("| `") else { continue }
            let cell = line.dropFirst(3)
            guard let end = cell.firstIndex(of: "`") else { continue }
            out.append((String(cell[..<end]), i + 1))
        }
        return out
    }

    /// Every key path of a JSON document with the value found there: objects are walked, arrays
    /// of objects give `key[].sub` paths, anything else is a leaf.
    static func keyPaths(of value: Any, prefix: String = "", into out: inout [String: Any]) {
        if let object = value as? [String: Any] {
            for (k, v) in object {
                let path = prefix.isEmpty ? k : "\(prefix).\(k)"
                if let array = v as? [Any], !array.isEmpty, array.allSatisfy({ $0 is [String: Any] }) {
                    out[path] = v
                    for element in array { keyPaths(of: element, prefix: path + "[]", into: &out) }
                } else if v is [String: Any] {
                    keyPaths(of: v, prefix: path, into: &out)
                } else {
                    out[path] = v
                }
            }
        }
    }

    /// A path that only holds other keys (an object section such as `server`, or `routes`).
    static func isSection(_ path: String, among all: Set<String>) -> Bool {
        all.contains { $0.hasPrefix(path + ".") || $0.hasPrefix(path + "[].") }
    }

    static func jsonText(_ v: Any?) -> String {
        guard let v, !(v is NSNull) else { return "null" }
        if let s = v as? String { return s }
        if let d = try? JSONSerialization.data(withJSONObject: v, options: [.fragmentsAllowed, .withoutEscapingSlashes]) {
            return String(decoding: d, as: UTF8.self)
        }
        return "\(v)"
    }

    func testReferenceDocumentsExactlyTheKeysTheReaderKnows() throws {
        let text = try String(contentsOf: Self.reference, encoding: .utf8)
        let documented = Self.documentedKeys(text)
        XCTAssertGreaterThan(documented.count, 50, "the key table of docs/configuration.md was not found")
        let documentedSet = Set(documented.map(\.key))

        let fileData = try Data(contentsOf: Self.gatewayJSON)
        var inFile: [String: Any] = [:]
        Self.keyPaths(of: try JSONSerialization.jsonObject(with: fileData), into: &inFile)

        // What the reader reads: parsing the shipped file and a minimal one (keys read only when
        // present show up in the first, keys read unconditionally in both).
        let read = try ConfigKeyRecorder.keyPaths(readParsing: fileData)
            .union(ConfigKeyRecorder.keyPaths(readParsing: Data(#"{"upstream": {"base_url": "http://127.0.0.1:9/v1"}}"#.utf8)))
            // policy.backend's engine keys are read only for an engine kind (the file has the embedded one).
            .union(
                ConfigKeyRecorder.keyPaths(
                    readParsing: Data(
                        #"{"upstream": {"base_url": "http://127.0.0.1:9/v1"}, "policy": {"backend": {"kind": "vllm", "base_url": "http://127.0.0.1:8000"}}}"#
                            .utf8)))
        XCTAssertTrue(
            read.contains("upstream.base_url") && read.contains("routes[].mode"), "the key recorder saw nothing: \(read.sorted())")

        let mustDocument = read.union(inFile.keys).filter { !Self.isSection($0, among: read.union(inFile.keys)) }
        for key in mustDocument.sorted() where !documentedSet.contains(key) {
            XCTFail(
                """
                docs/configuration.md has no row for the config key `\(key)`. Add this line to the table under "## Keys" \
                (in the place of its section), with what the key does:
                | `\(key)` | `\(Self.jsonText(inFile[key]))` | <what it does> |
                """)
        }
        for (key, line) in documented where !read.contains(key) {
            XCTFail(
                """
                docs/configuration.md line \(line) documents `\(key)`, but GatewayConfig.parse does not read such a key. \
                Fix the key's name or remove the row; if the reader reads it only when it is present, add it to gateway.json \
                with its default.
                """)
        }
        for key in inFile.keys.sorted() where !read.contains(key) {
            XCTFail("gateway.json sets `\(key)`, which GatewayConfig.parse does not read (the gateway would refuse to start)")
        }
        var seen: Set<String> = []
        for (key, line) in documented where !seen.insert(key).inserted {
            XCTFail("docs/configuration.md line \(line) documents `\(key)` a second time: keep one row per key, in one table")
        }
    }

    /// The check above works on real failures: a key the reader does not know is reported.
    func testRecorderSeesOnlyKeysTheReaderReads() throws {
        let read = try ConfigKeyRecorder.keyPaths(
            readParsing: Data(#"{"upstream": {"base_url": "http://127.0.0.1:9/v1"}, "routes": [{"model": "*"}]}"#.utf8))
        XCTAssertTrue(read.contains("server.port"))
        XCTAssertTrue(read.contains("routes[].upstream_model"))
        XCTAssertFalse(read.contains("server.no_such_key"))
        XCTAssertFalse(Self.documentedKeys("| `a.b` | `1` | x |\n| key | default |\n").map(\.key).contains("key"))
        XCTAssertEqual(Self.documentedKeys("| `a.b` | `1` | x |").map(\.key), ["a.b"])
    }
}
