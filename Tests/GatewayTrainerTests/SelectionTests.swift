import Foundation
import GatewayTrainer
import TrafficLog
import XCTest

/// Episode selection, rewards and advantages on a real SQLite file.
final class SelectionTests: XCTestCase {
    func testFiltersRewardsAndAdvantages() throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("traffic.sqlite"))
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        let toks: [Int32] = [5, 6, 7, 8, 9, 10]
        let mask: [UInt8] = [0, 0, 1, 1, 0, 1]
        let lp: [Float] = [0, 0, -0.5, -0.7, 0, -0.2]
        func add(
            _ id: String, _ minutes: Double, question: String?, route: String = "rollout", version: String = "v0",
            fmt: Double? = 1.0, answer: String = "Paris", mode: String = "collaborate", feedback: [(String, String)]
        ) throws {
            var r = TrainingSequenceFixture.record(
                id: id, tokens: toks, mask: mask, logprobs: lp, question: question,
                createdAt: t0.addingTimeInterval(minutes * 60), route: route, policyVersion: version,
                formatScore: fmt, lastText: "<think>ok</think>\n<answer>\(answer)</answer>")
            r.mode = mode
            try db.insert(episodes: [r])
            for (k, v) in feedback { _ = try db.insertFeedback(FeedbackRecord(episodeID: id, kind: k, value: v, createdAt: r.createdAt)) }
        }
        try add("e1", 1, question: "Q1", feedback: [("reference", "Paris")])
        try add("e2", 2, question: "Q1", answer: "Lyon", feedback: [("reference", "Paris")])
        try add("e3", 3, question: "Q1", fmt: 0.5, feedback: [("reference", "Paris")])
        try add("e4", 4, question: "Q2", route: "/v1/chat/completions", answer: "x", feedback: [("score", "0.8")])
        try add("e5", 5, question: "Q5", route: "/v1/chat/completions", feedback: [])
        try add("e6", 6, question: "Q6", route: "/v1/chat/completions", mode: "passthrough", feedback: [("score", "1")])
        try add("e7", 7, question: "Q7", version: "v1", answer: "Rome", feedback: [("reference", "Paris"), ("reference", "Rome")])
        try add("e8", -600, question: "Q8", feedback: [("reference", "Paris")])
        try add("e9", 9, question: nil, route: "/v1/chat/completions", feedback: [("score", "0.2"), ("label", "meh"), ("score", "0.6")])
        try add("e10", 10, question: "Q10", route: "/v1/chat/completions", feedback: [("label", "good")])

        let all = try EpisodeSelector.select(database: db, filter: EpisodeFilter())
        XCTAssertEqual(Set(all.episodes.map(\.sequence.episodeID)), ["e1", "e2", "e3", "e4", "e7", "e8", "e9"])
        func ep(_ s: Selection, _ id: String) -> ScoredEpisode { s.episodes.first { $0.sequence.episodeID == id }! }
        XCTAssertEqual(ep(all, "e1").reward.reward, 1, accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e2").reward.reward, 0, accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e3").reward.reward, -0.5, accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e4").reward.reward, 0.8, accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e7").reward.reward, 1, accuracy: 1e-12, "best F1 over the references")
        XCTAssertEqual(ep(all, "e9").reward.reward, 0.6, accuracy: 1e-12, "the latest score counts")
        XCTAssertEqual(all.groups, 1)
        XCTAssertEqual(all.loneEpisodes, 4)
        // GRPO within Q1: rewards [1, 0, -0.5].
        let g = Advantages.grpo([1, 0, -0.5])
        XCTAssertEqual(ep(all, "e1").advantage, g[0], accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e2").advantage, g[1], accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e3").advantage, g[2], accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e1").groupSize, 3)
        // Lone episodes in log order e8 (1.0), e4 (0.8), e7 (1.0), e9 (0.6): baselines 0, 1, 0.9, 0.9333.
        XCTAssertEqual(ep(all, "e8").advantage, 1.0, accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e4").advantage, -0.2, accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e7").advantage, 0.1, accuracy: 1e-12)
        XCTAssertEqual(ep(all, "e9").advantage, 0.6 - 2.8 / 3, accuracy: 1e-12)
        // The sequence and its behaviour log-probs come back aligned.
        XCTAssertEqual(ep(all, "e1").sequence.tokens, toks)
        XCTAssertEqual(ep(all, "e1").sequence.mask, mask)
        XCTAssertEqual(ep(all, "e1").sequence.behaviourLogprobs, lp)
        XCTAssertEqual(ep(all, "e1").sequence.policyPositions, [2, 3, 5])

        let rollout = try EpisodeSelector.select(database: db, filter: EpisodeFilter(route: "rollout"))
        XCTAssertEqual(Set(rollout.episodes.map(\.sequence.episodeID)), ["e1", "e2", "e3", "e7", "e8"])
        let v1 = try EpisodeSelector.select(database: db, filter: EpisodeFilter(policyVersion: "v1"))
        XCTAssertEqual(v1.episodes.map(\.sequence.episodeID), ["e7"])
        let window = try EpisodeSelector.select(database: db, filter: EpisodeFilter(since: t0, until: t0.addingTimeInterval(4 * 60)))
        XCTAssertEqual(window.episodes.map(\.sequence.episodeID), ["e1", "e2", "e3"])
        let recent = try EpisodeSelector.select(database: db, filter: EpisodeFilter(since: t0.addingTimeInterval(3.5 * 60)))
        XCTAssertEqual(Set(recent.episodes.map(\.sequence.episodeID)), ["e4", "e7", "e9"])
        // A label-only episode matches no reward filter and is not selected; e10 is not skipped
        // either (the query already leaves it out).
        XCTAssertFalse(all.skipped.contains { $0.id == "e10" })
    }

    /// Groups with identical rewards and lone episodes at their baseline are counted, and when
    /// nothing carries signal the selection says why.
    func testZeroAdvantageIsCountedAndExplained() throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("traffic.sqlite"))
        let t0 = Date(timeIntervalSince1970: 1_800_000_000)
        var minute = 0.0
        func add(_ id: String, question: String, route: String, answer: String = "Paris") throws {
            minute += 1
            let r = TrainingSequenceFixture.record(
                id: id, tokens: [5, 6, 7], mask: [0, 1, 1], logprobs: [0, -0.5, -0.7], question: question,
                createdAt: t0.addingTimeInterval(minute * 60), route: route, policyVersion: "v0",
                formatScore: 1.0, lastText: "<think>ok</think>\n<answer>\(answer)</answer>")
            try db.insert(episodes: [r])
            _ = try db.insertFeedback(FeedbackRecord(episodeID: id, kind: "reference", value: "Paris", createdAt: r.createdAt))
        }
        // Three groups of two, every episode right: all rewards 1.
        for q in ["Q1", "Q2", "Q3"] {
            try add("\(q)a", question: q, route: "same")
            try add("\(q)b", question: q, route: "same")
        }
        let same = try EpisodeSelector.select(database: db, filter: EpisodeFilter(route: "same"))
        XCTAssertEqual(same.groups, 3)
        XCTAssertEqual(same.zeroAdvantageGroups, 3)
        XCTAssertEqual(
            same.noSignalReason,
            "all 3 groups have identical rewards (every episode's reward is 1.0000): sample with temperature > 0 (rollout --temperature 1), or give feedback that differs"
        )

        // One group that differs: signal, and only the identical groups count as zero.
        try add("Q4a", question: "Q4", route: "mixed")
        try add("Q4b", question: "Q4", route: "mixed", answer: "Lyon")
        try add("Q5a", question: "Q5", route: "mixed")
        try add("Q5b", question: "Q5", route: "mixed")
        let mixed = try EpisodeSelector.select(database: db, filter: EpisodeFilter(route: "mixed"))
        XCTAssertEqual(mixed.groups, 2)
        XCTAssertEqual(mixed.zeroAdvantageGroups, 1)
        XCTAssertNil(mixed.noSignalReason)

        // Lone episodes: the first has advantage R - 0 = 1; the second, with the same reward, 0.
        try add("L1", question: "L1", route: "lone")
        try add("L2", question: "L2", route: "lone")
        let lone = try EpisodeSelector.select(database: db, filter: EpisodeFilter(route: "lone"))
        XCTAssertEqual(lone.loneEpisodes, 2)
        XCTAssertEqual(lone.zeroAdvantageLone, 1)
        XCTAssertNil(lone.noSignalReason)
    }

    func testMissingFormatScoreUsesFallbackOrIsSkipped() throws {
        let tmp = try TempDir()
        let db = try TrafficDatabase(path: tmp.path("t.sqlite"))
        let r = TrainingSequenceFixture.record(
            id: "a", tokens: [1, 2, 3], mask: [0, 1, 1], logprobs: [0, -1, -1], question: "q", formatScore: nil,
            lastText: "<think>t</think><answer>Paris</answer>")
        try db.insert(episodes: [r])
        _ = try db.insertFeedback(FeedbackRecord(episodeID: "a", kind: "reference", value: "Paris"))
        let none = try EpisodeSelector.select(database: db, filter: EpisodeFilter())
        XCTAssertTrue(none.episodes.isEmpty)
        XCTAssertEqual(none.skipped.map(\.id), ["a"])
        let with = try EpisodeSelector.select(database: db, filter: EpisodeFilter(), formatFallback: { _ in 1.0 })
        XCTAssertEqual(with.episodes.first?.reward.reward ?? -9, 1.0, accuracy: 1e-12)
    }
}
