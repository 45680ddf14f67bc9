import Foundation
import XCTest

@testable import PromptR1

/// A character-level fake tokenizer: one id per Unicode scalar, plus one special id for
/// `<|im_end|>` when it ends a turn. `decode(encode(x)) == x`, so tests can check that the
/// episode's token sequence spells out its text exactly.
enum FakeTokenizer {
    static let imEndID: Int32 = 151_645

    static func encode(_ s: String) -> [Int32] { s.unicodeScalars.map { Int32($0.value) } }

    static func decode(_ ids: [Int32]) -> String {
        var out = ""
        for id in ids {
            if id == imEndID { out += PromptR1Tag.imEnd } else { out.unicodeScalars.append(Unicode.Scalar(UInt32(id))!) }
        }
        return out
    }
}

/// One scripted policy turn.
struct ScriptedTurn: Sendable {
    var text: String
    var finish: PolicyFinishReason
    /// Delay before returning (honours cancellation).
    var delay: Duration?
    /// Override the logprobs (to test contract checks).
    var logprobs: [Float]?

    static func call(_ text: String) -> ScriptedTurn { ScriptedTurn(text: text, finish: .stopString) }
    static func final(_ text: String) -> ScriptedTurn { ScriptedTurn(text: text, finish: .endOfTurn) }
}

/// A policy session that plays back scripted turns and records what it was given.
/// @unchecked Sendable: all mutable state is guarded by `lock`.
final class ScriptedSession: PolicySession, @unchecked Sendable {
    private let lock = NSLock()
    private var script: [ScriptedTurn]
    private var _limits: [PolicyTurnLimits] = []
    private var _appended: [String] = []
    let prompt: String
    let promptTokenIDs: [Int32]

    init(prompt: String, script: [ScriptedTurn]) {
        self.prompt = prompt
        self.script = script
        self.promptTokenIDs = FakeTokenizer.encode(prompt)
    }

    var limitsSeen: [PolicyTurnLimits] { lock.withLock { _limits } }
    var appended: [String] { lock.withLock { _appended } }

    func generateTurn(limits: PolicyTurnLimits, onText: (@Sendable (String) -> Void)?) async throws -> PolicyTurn {
        let next: ScriptedTurn? = lock.withLock {
            _limits.append(limits)
            return script.isEmpty ? nil : script.removeFirst()
        }
        guard let turn = next else {
            throw PolicySessionContractError(description: "script exhausted")
        }
        if let d = turn.delay { try await Task.sleep(for: d) }
        // Stream the text in small pieces.
        let scalars = Array(turn.text.unicodeScalars)
        var i = 0
        while i < scalars.count {
            let j = min(scalars.count, i + 7)
            var v = String.UnicodeScalarView()
            v.append(contentsOf: scalars[i..<j])
            onText?(String(v))
            i = j
        }
        var ids = FakeTokenizer.encode(turn.text)
        if turn.finish == .endOfTurn { ids.append(FakeTokenizer.imEndID) }
        let lps = turn.logprobs ?? ids.indices.map { -Float($0 % 5) * 0.25 }
        return PolicyTurn(text: turn.text, tokenIDs: ids, logprobs: lps, finishReason: turn.finish)
    }

    func appendInjected(_ text: String) async throws -> [Int32] {
        lock.withLock { _appended.append(text) }
        return FakeTokenizer.encode(text)
    }
}

/// Creates `ScriptedSession`s and keeps the last one for inspection.
final class SessionBox: @unchecked Sendable {  // guarded by lock
    private let lock = NSLock()
    private var _session: ScriptedSession?
    let script: [ScriptedTurn]
    var failCreation = false

    init(_ script: [ScriptedTurn]) { self.script = script }

    var session: ScriptedSession? { lock.withLock { _session } }

    var factory: PolicySessionFactory {
        { prompt in
            let s = ScriptedSession(prompt: prompt, script: self.script)
            self.lock.withLock { self._session = s }
            return s
        }
    }
}

struct UpstreamFailure: Error, CustomStringConvertible {
    var description: String
}

/// An upstream that answers from a script and records every request.
/// @unchecked Sendable: all mutable state is guarded by `lock`.
final class ScriptedUpstream: UpstreamAnswering, @unchecked Sendable {
    enum Reply: Sendable {
        case text(String)
        case fail(String)
        case slow(String, Duration)
    }

    private let lock = NSLock()
    private var replies: [Reply]
    private var _requests: [[UpstreamMessage]] = []
    private var _options: [UpstreamCallOptions] = []
    /// Signalled when a request arrives (for cancellation tests).
    let requestArrived = AsyncStream<Void>.makeStream()

    init(_ replies: [Reply]) { self.replies = replies }

    var requests: [[UpstreamMessage]] { lock.withLock { _requests } }
    var optionsSeen: [UpstreamCallOptions] { lock.withLock { _options } }

    func answer(messages: [UpstreamMessage], options: UpstreamCallOptions) async throws -> UpstreamAnswer {
        let reply: Reply? = lock.withLock {
            _requests.append(messages)
            _options.append(options)
            return replies.isEmpty ? nil : replies.removeFirst()
        }
        requestArrived.continuation.yield()
        switch reply {
        case nil:
            throw UpstreamFailure(description: "no scripted reply")
        case .text(let t)?:
            return UpstreamAnswer(text: t, usage: UpstreamUsage(promptTokens: 10, completionTokens: 5), model: "scripted")
        case .fail(let msg)?:
            throw UpstreamFailure(description: msg)
        case .slow(let t, let d)?:
            try await Task.sleep(for: d)
            return UpstreamAnswer(text: t)
        }
    }
}

/// Collects events. @unchecked Sendable: guarded by `lock`.
final class EventLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _events: [CollaborationEvent] = []
    var events: [CollaborationEvent] { lock.withLock { _events } }
    var sink: @Sendable (CollaborationEvent) -> Void { { e in self.lock.withLock { self._events.append(e) } } }
}

func assertScalarsEqual(
    _ a: String?, _ b: String?, _ message: String = "", file: StaticString = #filePath,
    line: UInt = #line
) {
    let x = a.map { Array($0.unicodeScalars) }
    let y = b.map { Array($0.unicodeScalars) }
    if x != y {
        XCTFail("\(message)\n  got:      \(String(reflecting: a))\n  expected: \(String(reflecting: b))", file: file, line: line)
    }
}
