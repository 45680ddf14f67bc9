import Foundation
import XCTest

@testable import PromptR1

final class CollaborationLoopTests: XCTestCase {
    let question = "Who wrote Hamlet?"
    let sys = UpstreamMessage.system(PromptR1Prompt.upstreamSystemPrompt)

    /// A JSON call turn; turns after the first start inside the injected `<think>\n`.
    func jsonCall(_ prompt: String, think: String = "thinking", first: Bool = true) -> String {
        (first ? "<think>" : "") + "\(think)</think>\n<interaction_prompt>"
            + pythonJSONDumps(
                .object([
                    ("name", .string("prompt")), ("arguments", .object([("prompt", .string(prompt))])),
                ])) + "</interaction_prompt>"
    }

    func makeLoop(
        _ script: [ScriptedTurn], _ replies: [ScriptedUpstream.Reply],
        options: CollaborationOptions = .init()
    ) -> (CollaborationLoop, SessionBox, ScriptedUpstream) {
        let box = SessionBox(script)
        let up = ScriptedUpstream(replies)
        return (CollaborationLoop(options: options, upstream: up, makeSession: box.factory), box, up)
    }

    /// Checks the invariants every episode record must satisfy.
    func checkRecord(_ ep: Episode, file: StaticString = #filePath, line: UInt = #line) {
        let ids = ep.tokenIDs
        XCTAssertEqual(ids.count, ep.lossMask.count, file: file, line: line)
        XCTAssertEqual(ids.count, ep.logprobs.count, file: file, line: line)
        assertScalarsEqual(FakeTokenizer.decode(ids), ep.fullText, "tokens spell the full text", file: file, line: line)
        XCTAssertEqual(ep.lossMask.prefix(ep.promptTokenIDs.count).allSatisfy { $0 == 0 }, true, file: file, line: line)
        var pos = ep.promptTokenIDs.count
        for (k, t) in ep.turns.enumerated() {
            XCTAssertEqual(t.index, k + 1, file: file, line: line)
            XCTAssertEqual(
                Array(ep.lossMask[pos..<(pos + t.generatedTokenIDs.count)]),
                [UInt8](repeating: 1, count: t.generatedTokenIDs.count), file: file, line: line)
            pos += t.generatedTokenIDs.count
            XCTAssertEqual(
                Array(ep.lossMask[pos..<(pos + t.injectedTokenIDs.count)]),
                [UInt8](repeating: 0, count: t.injectedTokenIDs.count), file: file, line: line)
            pos += t.injectedTokenIDs.count
            XCTAssertEqual(t.mask.count, t.inputTokenIDs.count + t.generatedTokenIDs.count, file: file, line: line)
            if k == 0 {
                XCTAssertEqual(t.inputTokenIDs, ep.promptTokenIDs, file: file, line: line)
                assertScalarsEqual(t.inputText, ep.promptText, file: file, line: line)
            } else {
                XCTAssertEqual(t.inputTokenIDs, ep.turns[k - 1].injectedTokenIDs, file: file, line: line)
                assertScalarsEqual(t.inputText, ep.turns[k - 1].injectedText, file: file, line: line)
            }
        }
        XCTAssertEqual(pos, ids.count, file: file, line: line)
    }

    func testTwoCallsThenAnswer() async throws {
        let answer1 = "  Hamlet was written by William Shakespeare around 1600.\n"
        let answer2 = "Yes — confirmed: Shakespeare. \u{1F600}"
        let script: [ScriptedTurn] = [
            .call(jsonCall("Who wrote the play Hamlet? It is a tragedy.")),
            .call("The LLM says Shakespeare.</think>\n<interaction_prompt>Please confirm: Shakespeare wrote Hamlet?</interaction_prompt>"),
            .final("Confirmed.</think>\n<answer>William Shakespeare</answer>"),
        ]
        let (loop, box, up) = makeLoop(script, [.text(answer1), .text(answer2)])
        let log = EventLog()
        let ep = await loop.run(question: question, onEvent: log.sink)

        XCTAssertEqual(ep.outcome, .answer("William Shakespeare"))
        XCTAssertEqual(ep.stopReason, .finalAnswer)
        XCTAssertEqual(ep.turns.count, 3)
        XCTAssertEqual(ep.upstreamCallCount, 2)

        // Exact upstream messages (section 3).
        let a1 = "Hamlet was written by William Shakespeare around 1600."
        XCTAssertEqual(up.requests.count, 2)
        XCTAssertEqual(up.requests[0], [sys, .user("Who wrote the play Hamlet? It is a tragedy.")])
        XCTAssertEqual(
            up.requests[1],
            [
                sys, .user("Who wrote the play Hamlet? It is a tragedy."), .assistant(a1),
                .user("Please confirm: Shakespeare wrote Hamlet?"),
            ])

        // Exact injected text (section 4): stripped answer, json.dumps with \u escapes.
        let session = try XCTUnwrap(box.session)
        XCTAssertEqual(session.appended.count, 2)
        assertScalarsEqual(
            session.appended[0],
            "<|im_end|>\n<|im_start|>user\n<interaction_response>\n{\"results\": [\"Hamlet was written by William Shakespeare around 1600.\"]}\n</interaction_response><|im_end|>\n<|im_start|>assistant\n<think>\n"
        )
        assertScalarsEqual(
            session.appended[1],
            "<|im_end|>\n<|im_start|>user\n<interaction_response>\n{\"results\": [\"Yes \\u2014 confirmed: Shakespeare. \\ud83d\\ude00\"]}\n</interaction_response><|im_end|>\n<|im_start|>assistant\n<think>\n"
        )
        assertScalarsEqual(session.prompt, PromptR1Prompt.firstPrompt(question: question))

        // Record.
        checkRecord(ep)
        XCTAssertEqual(ep.turns[0].upstream?.answer, a1)
        XCTAssertEqual(ep.turns[0].upstream?.rawAnswer, answer1)
        XCTAssertEqual(ep.turns[0].upstream?.usage, UpstreamUsage(promptTokens: 10, completionTokens: 5))
        XCTAssertNil(ep.turns[2].injectedText)
        XCTAssertEqual(ep.turns[2].generatedTokenIDs.last, FakeTokenizer.imEndID)
        XCTAssertTrue(ep.fullText.hasSuffix("<answer>William Shakespeare</answer><|im_end|>"))
        XCTAssertEqual(ep.lastGeneratedTokenIndex, ep.tokenIDs.count - 1)
        XCTAssertEqual(session.limitsSeen, Array(repeating: PolicyTurnLimits(maxNewTokens: 1024), count: 3))

        // A well-formed episode scores the maximum.
        let r = ep.reward(references: ["Shakespeare", "William Shakespeare"])
        XCTAssertEqual(r.format, 1.0)
        XCTAssertEqual(r.reward, 1.0)

        // Events: deltas reassemble each turn; trace order.
        let events = log.events
        for turn in 1...3 {
            let deltas = events.compactMap { e -> String? in
                if case .policyTextDelta(turn, let t) = e { return t } else { return nil }
            }.joined()
            assertScalarsEqual(deltas, ep.turns[turn - 1].generatedText)
        }
        let kinds = events.compactMap { e -> String? in
            switch e {
            case .turnStarted: return "start"
            case .policyTextDelta: return nil
            case .policyTurnFinished: return "turn"
            case .upstreamRequest: return "request"
            case .upstreamAnswer: return "answer"
            case .upstreamFailed: return "failed"
            case .callRejected: return "rejected"
            case .injected: return "injected"
            case .finished: return "finished"
            }
        }
        XCTAssertEqual(
            kinds,
            [
                "start", "turn", "request", "answer", "injected",
                "start", "turn", "request", "answer", "injected",
                "start", "turn", "finished",
            ])
        XCTAssertEqual(events.last, .finished(outcome: .answer("William Shakespeare"), stopReason: .finalAnswer))
    }

    func testPlainTextCall() async throws {
        let script: [ScriptedTurn] = [
            .call("<think>t</think>\n<interaction_prompt>\n  What is the capital of France?\n</interaction_prompt>"),
            .final("ok</think><answer>Paris</answer>"),
        ]
        let (loop, _, up) = makeLoop(script, [.text("Paris.")])
        let ep = await loop.run(question: "Capital of France?")
        XCTAssertEqual(up.requests, [[sys, .user("What is the capital of France?")]])
        XCTAssertEqual(ep.outcome, .answer("Paris"))
        if case .call(let c) = ep.turns[0].parse { XCTAssertEqual(c.form, .plainText) } else { XCTFail("not a call") }
        checkRecord(ep)
    }

    func testMalformedCallsInjectErrorsAndSkipUpstream() async throws {
        let bodies: [(String, ToolCallError)] = [
            (#"{"name": "prompt", "arguments": {"prompt": "x"}"#, .jsonDecodeError),
            (#"{"arguments": {"prompt": "x"}}"#, .noToolName),
            (#"{"name": "prompt"}"#, .noToolArguments),
            (#"{"name": "search", "arguments": {"prompt": "x"}}"#, .toolNotFound),
            (#"{"name": "prompt", "arguments": {"query": "x"}}"#, .invalidArguments),
        ]
        for (body, error) in bodies {
            let script: [ScriptedTurn] = [
                .call("<think>t</think><interaction_prompt>\(body)</interaction_prompt>"),
                .call(jsonCall("A good prompt")),
                .final("done</think><answer>42</answer>"),
            ]
            let (loop, box, up) = makeLoop(script, [.text("forty-two")])
            let log = EventLog()
            let ep = await loop.run(question: "Q?", onEvent: log.sink)
            XCTAssertEqual(ep.outcome, .answer("42"), body)
            // The malformed call is never sent, and not in the later history.
            XCTAssertEqual(up.requests, [[sys, .user("A good prompt")]], body)
            let session = try XCTUnwrap(box.session)
            assertScalarsEqual(
                session.appended.first,
                "<|im_end|>\n<|im_start|>user\n<interaction_response>\n\(error.rawValue)\n</interaction_response><|im_end|>\n<|im_start|>assistant\n<think>\n",
                body)
            XCTAssertEqual(ep.turns[0].parse, .malformedCall(error, body: body))
            XCTAssertNil(ep.turns[0].upstream)
            XCTAssertTrue(log.events.contains(.callRejected(turn: 1, error: error)), body)
            checkRecord(ep)
        }
    }

    func testTurnLimitWithoutAnswer() async throws {
        let script = (1...5).map { ScriptedTurn.call(jsonCall("prompt \($0)", first: $0 == 1)) }
        let (loop, box, up) = makeLoop(script, (1...5).map { .text("answer \($0)") })
        let ep = await loop.run(question: "Q?")
        XCTAssertEqual(ep.outcome, .noAnswer)
        XCTAssertEqual(ep.stopReason, .turnLimit)
        XCTAssertEqual(ep.turns.count, 5)
        // Like the reference rollout, the last call is still answered and injected.
        XCTAssertEqual(up.requests.count, 5)
        XCTAssertEqual(up.requests[4].count, 1 + 2 * 4 + 1)
        XCTAssertEqual(box.session?.appended.count, 5)
        XCTAssertEqual(ep.lastUpstreamAnswer, "answer 5")
        checkRecord(ep)
        XCTAssertTrue(ep.rewardText.hasSuffix("<|im_start|>assistant\n<think>\n<|im_end|>"))
        // Reference quirk kept: five good call blocks and no answer give fmt 1.0, F1 0, R 0.
        let r = ep.reward(references: ["x"])
        XCTAssertEqual(r.format, 1.0)
        XCTAssertEqual(r.reward, 0.0)
        XCTAssertNil(r.answer)
    }

    func testTurnLimitWithoutFinalCall() async throws {
        let script = (1...3).map { ScriptedTurn.call(jsonCall("prompt \($0)")) }
        var options = CollaborationOptions()
        options.limits.maxTurns = 3
        options.callOnFinalTurn = false
        let (loop, box, up) = makeLoop(script, (1...3).map { .text("answer \($0)") }, options: options)
        let ep = await loop.run(question: "Q?")
        XCTAssertEqual(ep.outcome, .noAnswer)
        XCTAssertEqual(ep.stopReason, .turnLimit)
        XCTAssertEqual(up.requests.count, 2)
        XCTAssertEqual(box.session?.appended.count, 2)
        XCTAssertNil(ep.turns[2].injectedText)
        checkRecord(ep)
    }

    func testEmptyAnswerAndMissingAnswer() async throws {
        do {
            let (loop, _, _) = makeLoop([.final("<think>t</think><answer> \n </answer>")], [])
            let ep = await loop.run(question: "Q?")
            XCTAssertEqual(ep.outcome, .emptyAnswer)
            XCTAssertEqual(ep.stopReason, .finalEmptyAnswer)
            checkRecord(ep)
        }
        do {
            let (loop, _, _) = makeLoop([ScriptedTurn(text: "<think>I ran out of tok", finish: .length)], [])
            let ep = await loop.run(question: "Q?")
            XCTAssertEqual(ep.outcome, .noAnswer)
            XCTAssertEqual(ep.stopReason, .finalWithoutAnswer)
            XCTAssertFalse(ep.fullText.hasSuffix("<|im_end|>"))
            XCTAssertTrue(ep.rewardText.hasSuffix("<|im_end|>"))
            checkRecord(ep)
        }
    }

    func testAnswerIsStripped() async {
        let (loop, _, _) = makeLoop([.final("<think>t</think><answer>\n\u{00A0} Paris \t</answer>")], [])
        let ep = await loop.run(question: "Q?")
        XCTAssertEqual(ep.outcome, .answer("Paris"))
    }

    func testResultCutModes() async throws {
        let long = "abcdefghijklmnopqrstuvwxyz"
        for mode in ResultCutMode.allCases {
            var options = CollaborationOptions()
            options.maxResultChars = 10
            options.resultCutMode = mode
            let (loop, box, _) = makeLoop(
                [.call(jsonCall("p")), .final("x</think><answer>a</answer>")],
                [.text(long)], options: options)
            _ = await loop.run(question: "Q?")
            let expected = mode == .answer ? #"{"results": ["abcdefghij..."]}"# : #"{"results"..."#
            assertScalarsEqual(box.session?.appended.first, PromptR1Prompt.injection(result: expected), mode.rawValue)
        }
    }

    func testClientSystemMessagePlacement() async throws {
        for placement in [ClientSystemPlacement.separateMessage, .prepended(separator: "\n\n")] {
            var options = CollaborationOptions()
            options.clientSystemMessage = "Answer in French."
            options.clientSystemPlacement = placement
            let (loop, _, up) = makeLoop(
                [.call(jsonCall("p")), .final("x</think><answer>a</answer>")],
                [.text("r")], options: options)
            _ = await loop.run(question: "Q?")
            switch placement {
            case .separateMessage:
                XCTAssertEqual(up.requests[0], [.system("Answer in French."), sys, .user("p")])
            case .prepended:
                XCTAssertEqual(up.requests[0], [.system("Answer in French.\n\n" + PromptR1Prompt.upstreamSystemPrompt), .user("p")])
            }
        }
    }

    func testUpstreamFailurePolicies() async throws {
        do {
            let (loop, box, _) = makeLoop(
                [.call(jsonCall("p")), .final("x</think><answer>a</answer>")],
                [.fail("HTTP 503 from upstream")])
            let ep = await loop.run(question: "Q?")
            XCTAssertEqual(ep.outcome, .error(.upstream("HTTP 503 from upstream")))
            XCTAssertEqual(ep.stopReason, .upstreamError)
            XCTAssertEqual(ep.turns.count, 1)
            XCTAssertEqual(ep.turns[0].upstream?.error, "HTTP 503 from upstream")
            XCTAssertEqual(box.session?.appended, [])
            checkRecord(ep)
        }
        do {
            var options = CollaborationOptions()
            options.upstreamFailure = .injectError
            let (loop, box, up) = makeLoop(
                [.call(jsonCall("p1")), .call(jsonCall("p2")), .final("x</think><answer>a</answer>")],
                [.fail("HTTP 503 from upstream"), .text("fine")], options: options)
            let ep = await loop.run(question: "Q?")
            XCTAssertEqual(ep.outcome, .answer("a"))
            assertScalarsEqual(box.session?.appended.first, PromptR1Prompt.injection(result: "HTTP 503 from upstream"))
            // The failed call is not part of the history.
            XCTAssertEqual(up.requests[1], [sys, .user("p2")])
            checkRecord(ep)
        }
    }

    func testPolicyTokenBudget() async throws {
        var options = CollaborationOptions()
        options.limits.maxTokensPerTurn = 200
        let first = jsonCall("p")
        let firstCount = first.unicodeScalars.count
        options.limits.maxPolicyTokensPerEpisode = firstCount + 30
        let (loop, box, _) = makeLoop(
            [.call(first), .call(String(repeating: "z", count: 30))], [.text("r")],
            options: options)
        let ep = await loop.run(question: "Q?")
        XCTAssertEqual(box.session?.limitsSeen.map(\.maxNewTokens), [firstCount + 30, 30])
        XCTAssertEqual(ep.outcome, .noAnswer)
        XCTAssertEqual(ep.stopReason, .finalWithoutAnswer)
        // A third turn would have no budget left.
        let (loop2, _, _) = makeLoop(
            [.call(first), .call(jsonCall("q")), .final("x")], [.text("r"), .text("s")],
            options: {
                var o = options
                o.limits.maxPolicyTokensPerEpisode = firstCount
                return o
            }())
        let ep2 = await loop2.run(question: "Q?")
        XCTAssertEqual(ep2.outcome, .noAnswer)
        XCTAssertEqual(ep2.stopReason, .policyTokenLimit)
        XCTAssertEqual(ep2.turns.count, 1)
        checkRecord(ep2)
    }

    func testUpstreamCallLimit() async throws {
        var options = CollaborationOptions()
        options.limits.maxUpstreamCalls = 1
        let (loop, _, up) = makeLoop(
            [.call(jsonCall("p1")), .call(jsonCall("p2")), .final("x")], [.text("r"), .text("s")],
            options: options)
        let ep = await loop.run(question: "Q?")
        XCTAssertEqual(up.requests.count, 1)
        XCTAssertEqual(ep.outcome, .noAnswer)
        XCTAssertEqual(ep.stopReason, .upstreamCallLimit)
        XCTAssertEqual(ep.turns.count, 2)
        checkRecord(ep)
    }

    func testDeadlineDuringGeneration() async throws {
        var options = CollaborationOptions()
        options.limits.deadline = ContinuousClock.now + .milliseconds(150)
        var slow = ScriptedTurn.final("x</think><answer>a</answer>")
        slow.delay = .seconds(5)
        let (loop, _, up) = makeLoop([.call(jsonCall("p")), slow], [.text("r")], options: options)
        let t0 = ContinuousClock.now
        let ep = await loop.run(question: "Q?")
        XCTAssertLessThan(ContinuousClock.now - t0, .seconds(2))
        XCTAssertEqual(ep.outcome, .error(.deadlineExceeded))
        XCTAssertEqual(ep.stopReason, .deadline)
        XCTAssertEqual(ep.turns.count, 1)
        XCTAssertEqual(up.optionsSeen.first?.deadline, options.limits.deadline)
        checkRecord(ep)
    }

    func testDeadlineDuringUpstreamCall() async throws {
        var options = CollaborationOptions()
        options.limits.deadline = ContinuousClock.now + .milliseconds(150)
        let (loop, _, _) = makeLoop([.call(jsonCall("p")), .final("x")], [.slow("r", .seconds(5))], options: options)
        let t0 = ContinuousClock.now
        let ep = await loop.run(question: "Q?")
        XCTAssertLessThan(ContinuousClock.now - t0, .seconds(2))
        XCTAssertEqual(ep.outcome, .error(.deadlineExceeded))
        XCTAssertEqual(ep.turns.count, 1)
    }

    func testCancellation() async throws {
        let (loop, _, up) = makeLoop([.call(jsonCall("p")), .final("x")], [.slow("r", .seconds(5))])
        let task = Task { await loop.run(question: "Q?") }
        var arrivals = up.requestArrived.stream.makeAsyncIterator()
        _ = await arrivals.next()
        let t0 = ContinuousClock.now
        task.cancel()
        let ep = await task.value
        XCTAssertLessThan(ContinuousClock.now - t0, .seconds(2))
        XCTAssertEqual(ep.outcome, .error(.cancelled))
        XCTAssertEqual(ep.stopReason, .cancelled)
    }

    func testCancelledBeforeStart() async throws {
        let (loop, box, _) = makeLoop([.final("x")], [])
        let task = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return await loop.run(question: "Q?")
        }
        let ep = await task.value
        XCTAssertEqual(ep.outcome, .error(.cancelled))
        XCTAssertNil(box.session)
        XCTAssertEqual(ep.turns.count, 0)
    }

    func testPolicyFailures() async throws {
        do {
            let up = ScriptedUpstream([])
            let loop = CollaborationLoop(upstream: up) { _ in throw UpstreamFailure(description: "model not loaded") }
            let ep = await loop.run(question: "Q?")
            XCTAssertEqual(ep.outcome, .error(.policy("model not loaded")))
            XCTAssertEqual(ep.stopReason, .policyError)
        }
        do {
            var bad = ScriptedTurn.final("x</think><answer>a</answer>")
            bad.logprobs = [0.1]
            let (loop, _, _) = makeLoop([bad], [])
            let ep = await loop.run(question: "Q?")
            guard case .error(.policy(let msg)) = ep.outcome else { return XCTFail("\(ep.outcome)") }
            XCTAssertTrue(msg.contains("logprobs count 1"), msg)
        }
    }

    func testEpisodeIsCodable() async throws {
        let (loop, _, _) = makeLoop([.call(jsonCall("p")), .final("x</think><answer>a</answer>")], [.text("r")])
        let ep = await loop.run(question: "Q?")
        let data = try JSONEncoder().encode(ep)
        let back = try JSONDecoder().decode(Episode.self, from: data)
        XCTAssertEqual(back, ep)
    }

    func testUpstreamMessagesBuilder() {
        let m = PromptR1Upstream.messages(history: [("p1", "a1"), ("p2", "a2")], prompt: "p3")
        XCTAssertEqual(m, [sys, .user("p1"), .assistant("a1"), .user("p2"), .assistant("a2"), .user("p3")])
    }
}

final class CollaborationLoopConversationTests: XCTestCase {
    func testRunFromConversationForwardsClientSystem() async throws {
        let box = SessionBox([
            .call("<think>t</think><interaction_prompt>Tell me about the second one.</interaction_prompt>"),
            .final("ok</think><answer>Osaka</answer>"),
        ])
        let up = ScriptedUpstream([.text("Osaka is the second largest.")])
        let loop = CollaborationLoop(upstream: up, makeSession: box.factory)
        let ep = try await loop.run(conversation: [
            .init(role: "system", content: "Answer briefly."),
            .init(role: "user", content: "Name two cities in Japan."),
            .init(role: "assistant", content: "Tokyo and Osaka."),
            .init(role: "user", content: "Which is smaller?"),
        ])
        XCTAssertEqual(
            ep.question, "Which is smaller?\n\nConversation so far:\nUser: Name two cities in Japan.\nAssistant: Tokyo and Osaka.")
        assertScalarsEqual(box.session?.prompt, PromptR1Prompt.firstPrompt(question: ep.question))
        XCTAssertEqual(
            up.requests.first,
            [
                .system("Answer briefly."), .system(PromptR1Prompt.upstreamSystemPrompt),
                .user("Tell me about the second one."),
            ])
        XCTAssertEqual(ep.outcome, .answer("Osaka"))
    }

    func testCallTurnEndingWithEndOfTurnKeepsTextAndTokensAligned() async throws {
        // A session without stop-string support: the call turn ends with <|im_end|>.
        let box = SessionBox([
            ScriptedTurn(text: "<think>t</think><interaction_prompt>q</interaction_prompt>", finish: .endOfTurn),
            .final("ok</think><answer>a</answer>"),
        ])
        let loop = CollaborationLoop(upstream: ScriptedUpstream([.text("r")]), makeSession: box.factory)
        let ep = await loop.run(question: "Q?")
        XCTAssertEqual(ep.outcome, .answer("a"))
        assertScalarsEqual(FakeTokenizer.decode(ep.tokenIDs), ep.fullText)
    }
}
