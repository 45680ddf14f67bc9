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
        let train = w.items(heldout: false), held = w.items(heldout: true)
        XCTAssertEqual(train.count + held.count, w.subjects.count * w.properties.count)
        XCTAssertTrue(Set(train.map(\.question)).isDisjoint(with: held.map(\.question)), "held-out questions are never trained on")
        // Every subject and every property is seen in training; the held-out pairs are new combinations.
        for s in w.subjects { XCTAssertTrue(train.contains { $0.question.contains(" \(s):") }, s) }
        for p in w.propertyNames { XCTAssertTrue(train.contains { $0.question.contains(" \(p) ") }, p) }
        for item in train + held {
            // The bare question (what the upstream alone gets, and what a verbatim prompt sends) is not answered.
            XCTAssertEqual(w.answer(prompt: item.question), LookupWorld.notSure, item.question)
        }
        let apple = w.value(subject: "apple", property: "color")
        XCTAssertEqual(w.answer(prompt: "What is the color of the apple?"), "The color of the apple is \(apple).")
        XCTAssertEqual(w.answer(prompt: "tell me THE COLOR OF THE APPLE"), "The color of the apple is \(apple).")
        XCTAssertEqual(w.answer(prompt: "Please answer my question about the apple."), LookupWorld.notSure)
        XCTAssertEqual(w.answer(prompt: "What is the colour of the apple?"), LookupWorld.notSure)
        // The table is not constant: answers differ between pairs, so guessing one value fails.
        XCTAssertGreaterThan(Set(held.map { $0.answers[0] }).count, 3)
        // Demonstrations: only the restating style gets an answer from the upstream.
        let demos = w.demonstrations(styles: c.warmStart!.demoStyles)
        XCTAssertEqual(demos.count, train.count * c.warmStart!.demoStyles.reduce(0) { $0 + $1.count })
        for d in demos { XCTAssertNil(try d.validate()) }
        let answered = demos.filter { $0.responses[0] != LookupWorld.notSure }.count
        XCTAssertEqual(answered, train.count, "one answered demonstration per training question")
        XCTAssertTrue(Set(demos.map(\.question)).isDisjoint(with: held.map(\.question)))
    }

    /// The CI-sized experiment through the built executable. It asserts that the learning run's
    /// held-out EM rises by at least `margin` over its own start and that the control run (learning
    /// rate 0) stays put. The margin comes from the spread measured over seeds (docs/learning.md).
    func testExperimentLearnsToPromptAndControlDoesNot() throws {
        let seed = ProcessInfo.processInfo.environment["EXPERIMENT_SEED"] ?? "1"
        let tmp = try TempDir()
        let out = tmp.url.appendingPathComponent("exp")
        var args = ["experiment", "--config", Self.configURL.path, "--seed", seed, "--out", out.path]
        // Lets anyone check that the test can fail: EXPERIMENT_LR=0 makes the learning run a control.
        if let lr = ProcessInfo.processInfo.environment["EXPERIMENT_LR"] { args += ["--learning-rate", lr] }
        let r = try TrainCLI.run(args)
        XCTAssertEqual(r.status, 0, r.err)
        print(r.out)
        let data = try Data(contentsOf: out.appendingPathComponent("report.json"))
        let report = try JSONDecoder().decode(ExperimentReport.self, from: data)
        let learn = try XCTUnwrap(report.runs["learn"]), control = try XCTUnwrap(report.runs["control"])
        let iterations = try ExperimentConfig.load(Self.configURL).iterations
        XCTAssertEqual(learn.count, iterations + 1)
        XCTAssertEqual(control.count, iterations + 1)
        XCTAssertEqual(learn[0].kl, 0)
        for p in learn + control {
            XCTAssertTrue((0...1).contains(p.heldout_em) && (0...1).contains(p.heldout_f1) && (-1...1).contains(p.mean_reward))
            XCTAssertTrue(p.kl.isFinite && p.kl >= 0)
        }
        // Both runs start from the same policy and evaluate with the same seeds.
        XCTAssertEqual(learn[0].heldout_em, control[0].heldout_em)
        XCTAssertEqual(learn[0].policy_version, control[0].policy_version)
        // The upstream alone, given the bare question, answers none of it.
        XCTAssertEqual(learn[0].upstream_alone_em, 0)

        let rise = learn.last!.heldout_em - learn[0].heldout_em
        let controlRise = control.last!.heldout_em - control[0].heldout_em
        print("held-out EM: learn \(learn.map(\.heldout_em)), control \(control.map(\.heldout_em)); rise \(rise), control \(controlRise)")
        XCTAssertGreaterThanOrEqual(rise, Self.margin, "held-out EM must rise clearly with learning")
        XCTAssertLessThanOrEqual(controlRise, 0.0, "the control (learning rate 0) must not rise")
        XCTAssertEqual(control.last!.kl, 0, "learning rate 0 leaves the weights where they were")
        XCTAssertGreaterThan(learn.last!.kl, 0)

        let svg = try String(contentsOf: out.appendingPathComponent("report.svg"), encoding: .utf8)
        XCTAssertTrue(svg.hasPrefix("<svg") && svg.contains("polyline") && svg.hasSuffix("</svg>\n"))
    }

    /// See docs/learning.md, "CI test": the smallest rise measured over the seeds, minus a safety
    /// allowance, well above the largest rise the control could show by chance (it shows none).
    static let margin = 0.3
}
