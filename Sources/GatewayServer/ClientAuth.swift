import Crypto
import Foundation
import OpenAIWire

/// Client API keys. Keys come from an environment variable (comma-separated) and/or a key file;
/// only their SHA-256 digests are kept in memory. A presented key is hashed and compared with
/// every known digest in constant time (no early exit, no length leak). The log stores the key
/// id: the first 16 hex digits of the digest, never the key.
public struct ClientAuth: Sendable {
    private let digests: [[UInt8]]

    public var isEnabled: Bool { !digests.isEmpty }

    public init(keys: [String]) {
        digests = keys.map { Self.digest($0) }
    }

    /// Loads keys as configured. Missing env var or file contents are configuration errors only
    /// when named explicitly and unreadable.
    public init(config: GatewayConfig.Auth, environment: [String: String]) throws {
        var keys: [String] = []
        if let env = config.clientKeysEnv, let v = environment[env] {
            keys += v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        if let file = config.clientKeysFile {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw ConfigError(path: "auth.client_keys_file", problem: "cannot read '\(file)'")
            }
            for line in String(decoding: data, as: UTF8.self).split(whereSeparator: \.isNewline) {
                let t = line.trimmingCharacters(in: .whitespaces)
                if !t.isEmpty && !t.hasPrefix("#") { keys.append(t) }
            }
        }
        self.init(keys: keys)
    }

    static func digest(_ key: String) -> [UInt8] { Array(SHA256.hash(data: Data(key.utf8))) }

    /// Whether two 32-byte digests are equal, in time that does not depend on where they differ.
    static func sameDigest(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        var diff: UInt8 = 0
        for i in 0..<32 { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    /// The id logged for a key.
    public static func keyID(_ key: String) -> String {
        digest(key).prefix(8).map { String(format: "%02x", $0) }.joined()
    }

    /// Extracts the bearer token of an Authorization header value.
    public static func bearer(_ header: String?) -> String? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        let token = parts[1].trimmingCharacters(in: .whitespaces)
        return token.isEmpty ? nil : token
    }

    /// Checks a presented key. Returns its key id when accepted.
    public func authenticate(authorization: String?) throws(GatewayError) -> String? {
        guard isEnabled else { return Self.bearer(authorization).map(Self.keyID) }
        guard let key = Self.bearer(authorization) else {
            throw .unauthorized("You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        }
        let d = Self.digest(key)
        var match: UInt8 = 1
        for known in digests {
            // match becomes 0 once any digest matched; every digest is always compared.
            match &= Self.sameDigest(known, d) ? 0 : 1
        }
        guard match == 0 else { throw .unauthorized() }
        return Self.keyID(key)
    }
}
