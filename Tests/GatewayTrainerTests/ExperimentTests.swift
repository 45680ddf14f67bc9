import Foundation
import GatewayTrainer
import PromptR1
import XCTest

/// The answer-driven environment and `gateway-train experiment` with the committed
/// experiments/toy-ci.json (see docs/learning.md for the design and the measured variance).
final class ExperimentTests: XCTestCase {
    static let configURL = Fixtures.root.deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("experiments/toy-ci.json")

    func testLiteralUpstreamAnswersOnlyPromptsThatStateTheNeededPhrase() throws {
        let c = try ExperimentConfig.load(Self.configURL)
        let w = c.world
        let train = w.items(heldout: false)
        let held = w.items(heldout: true)
        XCTAssertEqual(train.count + held.count, w.subjects.count * w.properties.count)
        XCTAssertTrue(Set(train.map(\.question)).isDisjoint(with: held.map(\.question)), "held-out questions are never trained on")
        // Every subject and every property is seen in training; the held-out pairs are new combinations.
        for s in w.subjects { XCTAssertTrue(train.contains { $0.question.contains(" \(s):") }, s) }
        for p in w.propertyNames { XCTAssertTrue(train.contains { $0.question.contains(" \(p) ") }, p) }
        for item in train + held {
            // The bare question (what the upstream alone gets, and what a verbatim prompt sends) is not answered.
            XCTAssertEqual(w.answer(prompt: item.question), LookupWorld.notSure, item.question)
        }
        let s = w.subjects[0]
        let p = w.propertyNames[0]
        let v = w.value(subject: s, property: p)
        XCTAssertEqual(w.answer(prompt: "What is the \(p) of the \(s)?"), "The \(p) of the \(s) is \(v).")
        XCTAssertEqual(w.answer(prompt: "tell me THE \(p.uppercased()) OF THE \(s.uppercased())"), "The \(p) of the \(s) is \(v).")
        XCTAssertEqual(w.answer(prompt: "Please answer my question about the \(s)."), LookupWorld.notSure)
        XCTAssertEqual(w.answer(prompt: "What is the \(p)s of the \(s)?"), LookupWorld.notSure)
        XCTAssertTrue(w.restates("What is the \(p) of the \(s)?", .init(subject: s, property: p)))
        XCTAssertTrue(w.names("Please answer my question about the \(s).", subject: s))
        XCTAssertFalse(w.names("Please answer my question about the \(s)x.", subject: s))
        XCTAssertEqual(w.pair(question: w.question(subject: s, property: p)), .init(subject: s, property: p))
        // The table is not constant: answers differ between pairs, so guessing one value fails.
        XCTAssertGreaterThan(Set(held.map { $0.answers[0] }).count, 3)
        // Demonstrations: only the restating style gets an answer from the upstream.
        let styles = try JSONDecoder().decode(
            [LookupWorld.DemoStyle].self,
            from: Data(
                (#"[{"prompt": "What is the {property} of the {subject}?", "count": 1}, {"prompt": "{question}", "count": 2}, "#
                    + #"{"prompt": "Please answer my question about the {subject}.", "count": 1}]"#).utf8))
        let demos = w.demonstrations(styles: styles)
        XCTAssertEqual(demos.count, train.count * 4)
        for d in demos { XCTAssertNil(try d.validate()) }
        let answered = demos.filter { $0.responses[0] != LookupWorld.notSure }.count
        XCTAssertEqual(answered, train.count, "one answered demonstration per training question")
        XCTAssertTrue(Set(demos.map(\.question)).isDisjoint(with: held.map(\.question)))
    }

    /// `gateway-train experiment` end to end through the built executable, at the smallest size
    /// (experiments/smoke.json: no warm start, one iteration). It checks the machinery, not
    /// learning: two runs from the same policy with the same evaluation seeds, the control at
    /// learning rate 0 leaving the weights (and so every number) where they were, the learning
    /// run moving away from the start, the report and the plot. Whether held-out EM rises is
    /// what experiments/toy-ci.json measures (docs/learning.md).
    func testExperimentMachineryLearnVersusControl() throws {
        let config = Self.configURL.deletingLastPathComponent().appendingPathComponent("smoke.json")
        let tmp = try TempDir()
        let out = tmp.url.appendingPathComponent("exp")
        let r = try TrainCLI.run(["experiment", "--config", config.path, "--seed", "3", "--out", out.path])
        XCTAssertEqual(r.status, 0, r.err)
        let report = try JSONDecoder().decode(ExperimentReport.self, from: Data(contentsOf: out.appendingPathComponent("report.json")))
        let learn = try XCTUnwrap(report.runs["learn"])
        let control = try XCTUnwrap(report.runs["control"])
        XCTAssertEqual(learn.count, 2)
        XCTAssertEqual(control.count, 2)
        XCTAssertEqual(learn[0].kl, 0)
        for p in learn + control {
            XCTAssertTrue((0...1).contains(p.heldout_em) && (0...1).contains(p.heldout_f1) && (-1...1).contains(p.mean_reward))
            XCTAssertTrue(p.kl.isFinite && p.kl >= 0)
        }
        XCTAssertEqual(learn[0].policy_version, control[0].policy_version)
        XCTAssertEqual(learn[0].mean_reward, control[0].mean_reward, "same policy, same evaluation seeds")
        XCTAssertEqual(learn[1].train_episodes, 16, "G = 2 episodes for each of the 8 training questions")
        XCTAssertEqual(learn[1].train_mean_reward, control[1].train_mean_reward, "the first rollout is the same in both runs")
        // What the rollout's prompts read from their questions (diagnostics of the style RL selects).
        let restating = try XCTUnwrap(learn[1].train_restating)
        let naming = try XCTUnwrap(learn[1].train_naming_subject)
        XCTAssertTrue((0...1).contains(restating) && (0...1).contains(naming) && restating <= naming)
        XCTAssertEqual(learn[1].train_restating, control[1].train_restating)
        XCTAssertNil(learn[0].train_restating)
        // Learning rate 0: the same weights (the exported file differs from the base's in its
        // header only), so KL 0 and the same evaluation; the learning run's export differs.
        XCTAssertEqual(control[1].kl, 0)
        XCTAssertEqual(control[1].mean_reward, control[0].mean_reward)
        XCTAssertEqual(control[1].heldout_em, control[0].heldout_em)
        XCTAssertNotEqual(learn[1].policy_version, control[1].policy_version)
        XCTAssertGreaterThan(learn[1].kl, 0)
        // The upstream alone, given the bare question, answers none of it.
        XCTAssertEqual(learn[0].upstream_alone_em, 0)
        let heldout = try String(contentsOf: out.appendingPathComponent("heldout.jsonl"), encoding: .utf8)
        XCTAssertEqual(heldout.split(separator: "\n").count, 4)
        let svg = try String(contentsOf: out.appendingPathComponent("report.svg"), encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("polyline") && svg.hasSuffix("</svg>\n"))
    }

    /// Issue 19, item 4: the loop learns to prompt. `gateway-train experiment` with the committed
    /// experiments/toy-ci.json (base promptr1-copy, which copies the question's words into its
    /// prompt but picks one of seven prompt styles at random, two of which the literal upstream
    /// answers), seed 1 (fixed before measuring), through the built executable in a debug build.
    /// The held-out questions are pairs never trained on, and the upstream answers only prompts
    /// that state "the <property> of the <subject>", so held-out EM can rise only if GRPO made
    /// the policy prefer the restating style on questions it never saw.
    ///
    /// Margin, from the seeds measured on 2026-12-01 (scripts/experiment-seeds.sh, table in
    /// docs/learning.md): over seeds 1-4 the learning run's rise in held-out EM after 3 iterations
    /// was +0.208, +0.229, +0.354, +0.229 (mean 0.255, sd 0.067); the control's was exactly 0 in
    /// every seed. 0.15 is below the smallest measured rise and below mean - 1.5 sd, and about two
    /// standard errors of a difference of two 48-episode EMs near 0.2 (sqrt(2 * 0.2 * 0.8 / 48) =
    /// 0.08) above 0: a rise this size is not what sampling noise alone gives.
    func testHeldOutEMRisesWithLearningAndNotWithControl() throws {
        let tmp = try TempDir()
        let out = tmp.url.appendingPathComponent("exp")
        let r = try TrainCLI.run(["experiment", "--config", Self.configURL.path, "--seed", "1", "--out", out.path])
        XCTAssertEqual(r.status, 0, r.err)
        let report = try JSONDecoder().decode(ExperimentReport.self, from: Data(contentsOf: out.appendingPathComponent("report.json")))
        let learn = try XCTUnwrap(report.runs["learn"])
        let control = try XCTUnwrap(report.runs["control"])
        let config = try ExperimentConfig.load(Self.configURL)
        XCTAssertEqual(learn.count, config.iterations + 1)
        XCTAssertEqual(control.count, config.iterations + 1)
        XCTAssertEqual(learn[0].heldout_em, control[0].heldout_em, "both runs start from the same policy")
        XCTAssertEqual(learn[0].upstream_alone_em, 0, "the upstream alone answers no held-out question")
        // At the start the policy restates only a minority of the time: RL has room.
        let restating0 = try XCTUnwrap(learn[1].train_restating)
        XCTAssertLessThan(restating0, 0.4)
        XCTAssertLessThan(learn[0].heldout_em, 0.4)
        let rise = learn.last!.heldout_em - learn[0].heldout_em
        XCTAssertGreaterThanOrEqual(rise, Self.learningMargin, "held-out EM per iteration: \(learn.map(\.heldout_em))")
        // The learning run's rollouts restate more by the end: the style the upstream answers was selected.
        XCTAssertGreaterThan(try XCTUnwrap(learn.last!.train_restating), restating0)
        // The control (learning rate 0) does not rise.
        XCTAssertLessThanOrEqual(control.last!.heldout_em - control[0].heldout_em, 0, "control: \(control.map(\.heldout_em))")
    }

    /// See testHeldOutEMRisesWithLearningAndNotWithControl.
    static let learningMargin = 0.15
}
