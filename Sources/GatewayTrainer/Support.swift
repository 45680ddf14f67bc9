// Small shared pieces: the upstream adapter for the collaboration loop, the dataset reader, the
// checkpoint weights hash (the gateway's policy version id), progress output and tables.

import EpisodeLog
import Foundation
import OpenAIWire
import PromptR1

/// The upstream as the collaboration loop sees it: the adapter the gateway's collaboration
/// route uses too (EpisodeLog), so rollouts send exactly what serving sends.
public typealias ClientUpstream = UpstreamAdapter

/// One line of a dataset file: `{"question": ..., "answers": [...]}` (`"answer": "..."` also read).
public struct DatasetItem: Codable, Sendable, Equatable {
    public var question: String
    public var answers: [String]

    public init(question: String, answers: [String]) {
        self.question = question
        self.answers = answers
    }

    enum CodingKeys: String, CodingKey { case question, answers, answer }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        question = try c.decode(String.self, forKey: .question)
        if let a = try c.decodeIfPresent([String].self, forKey: .answers) {
            answers = a
        } else if let a = try c.decodeIfPresent(String.self, forKey: .answer) {
            answers = [a]
        } else {
            answers = []
        }
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(question, forKey: .question)
        try c.encode(answers, forKey: .answers)
    }
}

public enum DatasetError: Error, CustomStringConvertible {
    case unreadable(String)
    case badLine(Int, String)
    public var description: String {
        switch self {
        case .unreadable(let p): return "cannot read dataset \(p)"
        case .badLine(let n, let m): return "dataset line \(n): \(m)"
        }
    }
}

public enum Dataset {
    public static func load(_ path: String) throws -> [DatasetItem] {
        guard let data = FileManager.default.contents(atPath: path) else { throw DatasetError.unreadable(path) }
        var out: [DatasetItem] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t.isEmpty { continue }
            do {
                let item = try JSONDecoder().decode(DatasetItem.self, from: Data(t.utf8))
                if item.question.isEmpty { throw DatasetError.badLine(n + 1, "empty question") }
                out.append(item)
            } catch let e as DatasetError { throw e } catch {
                throw DatasetError.badLine(n + 1, "expected {\"question\": String, \"answers\": [String]}: \(error)")
            }
        }
        return out
    }
}

/// Progress on stderr: a redrawn bar with ETA on a terminal, plain lines otherwise (about every
/// 5 % and at the end).
public final class ProgressReporter: @unchecked Sendable {
    let label: String
    let total: Int
    let isTTY: Bool
    let start = ContinuousClock.now
    let lock = NSLock()
    var lastPlainPercent = -1
    var done = 0
    public var enabled = true

    public init(label: String, total: Int, forceTTY: Bool? = nil) {
        self.label = label
        self.total = max(total, 0)
        isTTY = forceTTY ?? (isatty(STDERR_FILENO) == 1)
    }

    static func fmt(_ s: Double) -> String {
        guard s.isFinite, s >= 0 else { return "--:--" }
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%d:%02d:%02d", t / 3600, (t / 60) % 60, t % 60) : String(format: "%02d:%02d", t / 60, t % 60)
    }

    /// Reports `n` items done (absolute) with an optional note.
    public func update(_ n: Int, note: String = "") {
        lock.lock()
        defer { lock.unlock() }
        guard enabled else { return }
        done = n
        let elapsed = (ContinuousClock.now - start)
        let secs = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
        let frac = total == 0 ? 1 : Double(n) / Double(total)
        let eta = n == 0 ? Double.nan : secs / Double(n) * Double(total - n)
        if isTTY {
            let width = 28
            let filled = Int(frac * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            let line = "\r\(label) [\(bar)] \(n)/\(total) \(Int(frac * 100))% elapsed \(Self.fmt(secs)) ETA \(Self.fmt(eta)) \(note)"
            FileHandle.standardError.write(Data((line + "\u{1B}[K").utf8))
            if n >= total { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            let pct = Int(frac * 100)
            if n >= total || pct / 5 > lastPlainPercent / 5 || lastPlainPercent < 0 {
                lastPlainPercent = pct
                FileHandle.standardError.write(
                    Data("\(label): \(n)/\(total) (\(pct)%) elapsed \(Self.fmt(secs)) eta \(Self.fmt(eta)) \(note)\n".utf8))
            }
        }
    }
}

/// A plain text table.
public enum Table {
    public static func render(_ header: [String], _ rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, c in c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }.joined(separator: "  ")
        }
        var out = line(header) + "\n" + widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n"
        for r in rows { out += line(r) + "\n" }
        return out
    }

    public static func num(_ x: Double, _ digits: Int = 4) -> String { String(format: "%.\(digits)f", x) }
}

/// Runs `work(0..<count)` with at most `limit` running at a time, and hands each result to
/// `onResult` as it finishes (completion order, on the caller's task). Rollout and eval both
/// share one policy engine and one upstream this way.
func runBounded<T: Sendable>(
    count: Int, limit: Int, _ work: @escaping @Sendable (Int) async -> T,
    onResult: (T) async throws -> Void
) async throws {
    try await withThrowingTaskGroup(of: T.self) { group in
        var next = 0
        func launch() {
            guard next < count else { return }
            let i = next
            next += 1
            group.addTask { await work(i) }
        }
        for _ in 0..<max(1, limit) { launch() }
        while let result = try await group.next() {
            launch()
            try await onResult(result)
        }
    }
}
