import Foundation
import OpenAIWire

/// A problem in gateway.json, named by its key path (e.g. `upstream.connect_timeout_ms`).
public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public var path: String
    public var problem: String
    public var description: String { path.isEmpty ? problem : "\(path): \(problem)" }
}

/// Reads one JSON object of the config strictly: every key must be read by the schema, every
/// value must have the expected type, and the first problem is reported with its key path.
struct ConfigObject {
    let dict: [String: JSONValue]
    let path: String
    private(set) var seen: Set<String> = []

    init(_ value: JSONValue?, path: String) throws(ConfigError) {
        guard case .object(let d)? = value else {
            throw ConfigError(path: path, problem: "expected an object, got \(ConfigObject.kind(of: value))")
        }
        self.dict = d
        self.path = path
    }

    /// Parses a whole config document.
    static func parse(_ data: Data) throws(ConfigError) -> ConfigObject {
        let v: JSONValue
        do { v = try JSONDecoder().decode(JSONValue.self, from: data) } catch {
            throw ConfigError(path: "", problem: "the config is not valid JSON (\(error))")
        }
        return try ConfigObject(v, path: "")
    }

    func sub(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    /// Notes that the schema reads `key` (for `finish()` and for a `ConfigKeyRecorder`).
    private mutating func mark(_ key: String) {
        seen.insert(key)
        ConfigKeyRecorder.current?.add(sub(key))
    }

    static func kind(of v: JSONValue?) -> String {
        switch v {
        case nil: return "nothing"
        case .null?: return "null"
        case .bool?: return "a boolean"
        case .number?: return "a number"
        case .string?: return "a string"
        case .array?: return "an array"
        case .object?: return "an object"
        }
    }

    /// The raw value, nil when absent or null.
    mutating func raw(_ key: String) -> JSONValue? {
        mark(key)
        guard let v = dict[key], v != .null else { return nil }
        return v
    }

    mutating func string(_ key: String) throws(ConfigError) -> String? {
        guard let v = raw(key) else { return nil }
        guard case .string(let s) = v else { throw ConfigError(path: sub(key), problem: "expected a string, got \(Self.kind(of: v))") }
        return s
    }

    mutating func string(_ key: String, default d: String) throws(ConfigError) -> String { try string(key) ?? d }

    mutating func requiredString(_ key: String) throws(ConfigError) -> String {
        guard let s = try string(key), !s.isEmpty else {
            throw ConfigError(path: sub(key), problem: "missing value (a non-empty string is required)")
        }
        return s
    }

    mutating func int(_ key: String, default d: Int, range: ClosedRange<Int>? = nil) throws(ConfigError) -> Int {
        guard let v = raw(key) else { return d }
        guard case .number(let x) = v, x.rounded() == x, abs(x) < 9e15 else {
            throw ConfigError(path: sub(key), problem: "expected an integer, got \(Self.kind(of: v))")
        }
        let i = Int(x)
        if let range, !range.contains(i) {
            throw ConfigError(path: sub(key), problem: "must be between \(range.lowerBound) and \(range.upperBound), got \(i)")
        }
        return i
    }

    mutating func double(_ key: String, default d: Double, range: ClosedRange<Double>? = nil) throws(ConfigError) -> Double {
        guard let v = raw(key) else { return d }
        guard case .number(let x) = v else {
            throw ConfigError(path: sub(key), problem: "expected a number, got \(Self.kind(of: v))")
        }
        if let range, !range.contains(x) {
            throw ConfigError(path: sub(key), problem: "must be between \(range.lowerBound) and \(range.upperBound), got \(x)")
        }
        return x
    }

    /// An optional number: nil when absent or null.
    mutating func optionalDouble(_ key: String, range: ClosedRange<Double>) throws(ConfigError) -> Double? {
        guard dict[key] != nil, dict[key] != .null else {
            mark(key)
            return nil
        }
        return try double(key, default: 0, range: range)
    }

    mutating func optionalInt(_ key: String, range: ClosedRange<Int>) throws(ConfigError) -> Int? {
        guard dict[key] != nil, dict[key] != .null else {
            mark(key)
            return nil
        }
        return try int(key, default: 0, range: range)
    }

    mutating func bool(_ key: String, default d: Bool) throws(ConfigError) -> Bool {
        guard let v = raw(key) else { return d }
        guard case .bool(let b) = v else {
            throw ConfigError(path: sub(key), problem: "expected a boolean, got \(Self.kind(of: v))")
        }
        return b
    }

    mutating func oneOf(_ key: String, _ allowed: [String], default d: String) throws(ConfigError) -> String {
        let s = try string(key, default: d)
        guard allowed.contains(s) else {
            throw ConfigError(
                path: sub(key), problem: "must be one of \(allowed.map { "\"\($0)\"" }.joined(separator: ", ")), got \"\(s)\"")
        }
        return s
    }

    /// A string naming one case of `E` (its raw value).
    mutating func oneOf<E: RawRepresentable & CaseIterable>(_ key: String, default d: E) throws(ConfigError) -> E
    where E.RawValue == String {
        let s = try oneOf(key, E.allCases.map(\.rawValue), default: d.rawValue)
        return E(rawValue: s)!  // `s` is one of the raw values
    }

    mutating func stringArray(_ key: String, default d: [String]) throws(ConfigError) -> [String] {
        guard let v = raw(key) else { return d }
        guard case .array(let a) = v else {
            throw ConfigError(path: sub(key), problem: "expected an array of strings, got \(Self.kind(of: v))")
        }
        var out: [String] = []
        for (i, e) in a.enumerated() {
            guard case .string(let s) = e else {
                throw ConfigError(path: "\(sub(key))[\(i)]", problem: "expected a string, got \(Self.kind(of: e))")
            }
            out.append(s)
        }
        return out
    }

    mutating func object(_ key: String) throws(ConfigError) -> ConfigObject {
        return try ConfigObject(raw(key) ?? .object([:]), path: sub(key))
    }

    mutating func objectArray(_ key: String) throws(ConfigError) -> [ConfigObject]? {
        guard let v = raw(key) else { return nil }
        guard case .array(let a) = v else { throw ConfigError(path: sub(key), problem: "expected an array, got \(Self.kind(of: v))") }
        var out: [ConfigObject] = []
        for (i, e) in a.enumerated() { out.append(try ConfigObject(e, path: "\(sub(key))[\(i)]")) }
        return out
    }

    /// Fails on the first key the schema did not read (a typo must not be silently ignored).
    func finish() throws(ConfigError) {
        let unknown = dict.keys.filter { !seen.contains($0) }.sorted()
        if let k = unknown.first {
            throw ConfigError(path: sub(k), problem: "unknown key (known keys here: \(seen.sorted().joined(separator: ", ")))")
        }
    }
}

/// Collects every key path the reader reads while parsing (array items as `routes[].model`), so
/// that a test can check the configuration reference (docs/configuration.md) against the reader.
final class ConfigKeyRecorder: @unchecked Sendable {
    @TaskLocal static var current: ConfigKeyRecorder?
    private let lock = NSLock()
    private var paths: Set<String> = []

    func add(_ path: String) {
        let normalised = path.replacingOccurrences(of: #"\[[0-9]+\]"#, with: "[]", options: .regularExpression)
        lock.withLock { _ = paths.insert(normalised) }
    }

    var keyPaths: Set<String> { lock.withLock { paths } }

    /// The key paths `GatewayConfig.parse` reads when it parses `data`.
    static func keyPaths(readParsing data: Data) throws -> Set<String> {
        let recorder = ConfigKeyRecorder()
        _ = try ConfigKeyRecorder.$current.withValue(recorder) { try GatewayConfig.parse(data) }
        return recorder.keyPaths
    }
}
