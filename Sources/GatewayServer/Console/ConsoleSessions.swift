import Foundation
import NIOConcurrencyHelpers

/// Console log-in sessions, in memory (a restart logs everyone out). A session is a random
/// 256-bit id in an HttpOnly, SameSite=Strict cookie, with its own random CSRF token that every
/// POST form carries back.
final class ConsoleSessions: Sendable {
    struct Session: Sendable {
        var csrf: String
        var expires: Date
    }

    static let cookieName = "gw_console"
    /// A token that the log-in form carries both as a cookie and as a field (double submit),
    /// since there is no session yet to hold one.
    static let loginCookieName = "gw_console_login"
    static let lifetime: TimeInterval = 12 * 3600
    static let maxSessions = 1024

    private let sessions = NIOLockedValueBox<[String: Session]>([:])

    static func randomToken() -> String {
        var rng = SystemRandomNumberGenerator()
        return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
    }

    /// Starts a session; returns its id.
    func create(now: Date = Date()) -> (id: String, session: Session) {
        let id = Self.randomToken()
        let s = Session(csrf: Self.randomToken(), expires: now.addingTimeInterval(Self.lifetime))
        sessions.withLockedValue { all in
            all = all.filter { $0.value.expires > now }
            if all.count >= Self.maxSessions, let oldest = all.min(by: { $0.value.expires < $1.value.expires })?.key {
                all.removeValue(forKey: oldest)
            }
            all[id] = s
        }
        return (id, s)
    }

    func find(_ id: String?, now: Date = Date()) -> Session? {
        guard let id, id.count == 64 else { return nil }
        return sessions.withLockedValue { all in
            guard let s = all[id] else { return nil }
            if s.expires <= now {
                all.removeValue(forKey: id)
                return nil
            }
            return s
        }
    }

    func remove(_ id: String?) {
        guard let id else { return }
        _ = sessions.withLockedValue { $0.removeValue(forKey: id) }
    }

    /// Constant-time comparison of two tokens.
    static func same(_ a: String?, _ b: String) -> Bool {
        guard let a else { return false }
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count, !y.isEmpty else { return false }
        var diff: UInt8 = 0
        for i in 0..<x.count { diff |= x[i] ^ y[i] }
        return diff == 0
    }

    /// The value of cookie `name` in a Cookie header.
    static func cookie(_ name: String, in header: String?) -> String? {
        guard let header else { return nil }
        for part in header.split(separator: ";") {
            let kv = part.trimmingCharacters(in: .whitespaces)
            if kv.hasPrefix(name + "=") { return String(kv.dropFirst(name.count + 1)) }
        }
        return nil
    }

    static func setCookie(_ name: String, _ value: String, maxAge: Int) -> String {
        "\(name)=\(value); Path=/console; Max-Age=\(maxAge); HttpOnly; SameSite=Strict"
    }
}

/// `application/x-www-form-urlencoded` bodies and query strings.
enum FormData {
    static func parse(_ s: String) -> [String: String] {
        var out: [String: String] = [:]
        for pair in s.split(separator: "&", omittingEmptySubsequences: true) {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let k = decode(kv[0])
            let v = kv.count > 1 ? decode(kv[1]) : ""
            if out[k] == nil { out[k] = v }
        }
        return out
    }

    static func decode(_ s: Substring) -> String {
        let plus = s.replacingOccurrences(of: "+", with: " ")
        return plus.removingPercentEncoding ?? plus
    }

    static func encode(_ s: String) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        return s.addingPercentEncoding(withAllowedCharacters: allowed) ?? ""
    }

    static func query(_ items: [(String, String?)]) -> String {
        items.compactMap { k, v in v.flatMap { $0.isEmpty ? nil : "\(encode(k))=\(encode($0))" } }.joined(separator: "&")
    }
}
