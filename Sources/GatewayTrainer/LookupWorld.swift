// An answer-driven environment for experiments: a small world of subjects with properties, a
// scripted "literal" upstream that answers only prompts that state the needed pieces explicitly,
// question sets (training and held-out, disjoint), and demonstration episodes for a warm start.
//
// Why a policy cannot score without learning to prompt:
// - The answer to "The apple: what color is it?" is a value from a table (a hash of subject and
//   property) that the policy never sees except in the upstream's reply. Held-out questions are
//   (subject, property) pairs never asked in training, so no memorised answer helps.
// - The upstream sees only the policy's prompt (protocol.md section 3), never the question, and
//   answers only when that prompt contains the phrase "the <property> of the <subject>". The
//   question itself never contains it: forwarding the question verbatim (what the upstream alone
//   gets) is answered "I am not sure what you are asking about.", and so is a vague prompt.
// - Every style of episode is equally well formatted, so the format term is the same for all of
//   them; the reward differs only through the answer's F1.

import Foundation
import PromptR1

public struct LookupWorld: Codable, Sendable, Equatable {
    public var subjects: [String]
    /// Property name -> its possible values. Keys are used in sorted order.
    public var properties: [String: [String]]
    /// The question's wording; `{subject}` and `{property}` are replaced. Must not contain
    /// "the {property} of the {subject}" (checked), or the upstream alone would answer it.
    public var questionTemplate: String = "The {subject}: what {property} is it?"
    /// A pair (subject i, property j, j in sorted order) is held out when (i + j) % heldoutModulus == 0.
    public var heldoutModulus: Int = 3

    enum CodingKeys: String, CodingKey {
        case subjects, properties
        case questionTemplate = "question_template"
        case heldoutModulus = "heldout_modulus"
    }

    public init(subjects: [String], properties: [String: [String]]) {
        self.subjects = subjects
        self.properties = properties
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        subjects = try c.decode([String].self, forKey: .subjects)
        properties = try c.decode([String: [String]].self, forKey: .properties)
        questionTemplate = try c.decodeIfPresent(String.self, forKey: .questionTemplate) ?? questionTemplate
        heldoutModulus = try c.decodeIfPresent(Int.self, forKey: .heldoutModulus) ?? heldoutModulus
    }

    public static let notSure = "I am not sure what you are asking about."

    public var propertyNames: [String] { properties.keys.sorted() }

    public func validate() throws {
        func fail(_ m: String) -> ExperimentError { .invalidConfig("world: " + m) }
        if subjects.isEmpty || properties.isEmpty { throw fail("needs subjects and properties") }
        if properties.values.contains(where: \.isEmpty) { throw fail("every property needs at least one value") }
        if heldoutModulus < 2 { throw fail("heldout_modulus must be at least 2") }
        if Set(subjects).count != subjects.count { throw fail("subjects must be distinct") }
        for s in subjects {
            for p in propertyNames where question(subject: s, property: p).lowercased().contains(key(subject: s, property: p)) {
                throw fail("question_template states the needed phrase itself; the upstream alone would answer it")
            }
        }
        if !questionTemplate.contains("{subject}") || !questionTemplate.contains("{property}") {
            throw fail("question_template needs {subject} and {property}")
        }
    }

    /// FNV-1a: the table is a fixed function of the names, so anyone can recompute it.
    static func hash(_ s: String) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return h
    }

    public func value(subject: String, property: String) -> String {
        let values = properties[property]!
        return values[Int(Self.hash(subject + "/" + property) % UInt64(values.count))]
    }

    public func question(subject: String, property: String) -> String {
        questionTemplate.replacingOccurrences(of: "{subject}", with: subject).replacingOccurrences(of: "{property}", with: property)
    }

    /// The phrase the upstream needs, lower-cased.
    func key(subject: String, property: String) -> String { "the \(property) of the \(subject)".lowercased() }

    public struct Pair: Sendable, Equatable {
        public var subject: String
        public var property: String
        public init(subject: String, property: String) {
            self.subject = subject
            self.property = property
        }
    }

    public func pairs(heldout: Bool) -> [Pair] {
        var out: [Pair] = []
        for (i, s) in subjects.enumerated() {
            for (j, p) in propertyNames.enumerated() where ((i + j) % heldoutModulus == 0) == heldout {
                out.append(Pair(subject: s, property: p))
            }
        }
        return out
    }

    /// The pair a question of this world asks about.
    public func pair(question q: String) -> Pair? {
        for s in subjects {
            for p in propertyNames where question(subject: s, property: p) == q { return Pair(subject: s, property: p) }
        }
        return nil
    }

    /// Whether `prompt` states the phrase this upstream needs for `pair` (so it answers it).
    public func restates(_ prompt: String, _ pair: Pair) -> Bool {
        prompt.lowercased().contains(key(subject: pair.subject, property: pair.property))
    }

    /// Whether `prompt` names `subject` as a whole word.
    public func names(_ prompt: String, subject: String) -> Bool {
        prompt.lowercased().split { !$0.isLetter && !$0.isNumber }.contains { $0 == subject.lowercased()[...] }
    }

    public func items(heldout: Bool) -> [DatasetItem] {
        pairs(heldout: heldout).map {
            DatasetItem(
                question: question(subject: $0.subject, property: $0.property),
                answers: [value(subject: $0.subject, property: $0.property)])
        }
    }

    /// The scripted upstream: reads only the prompt (the last user message) and answers when it
    /// contains "the <property> of the <subject>" for a known pair (the first such pair in the
    /// text); otherwise it says it is not sure.
    public func answer(prompt: String) -> String {
        let text = prompt.lowercased()
        var best: (offset: Int, pair: Pair)?
        for s in subjects {
            for p in propertyNames {
                if let r = text.range(of: key(subject: s, property: p)) {
                    let o = text.distance(from: text.startIndex, to: r.lowerBound)
                    if best == nil || o < best!.offset { best = (o, Pair(subject: s, property: p)) }
                }
            }
        }
        guard let b = best else { return Self.notSure }
        return "The \(b.pair.property) of the \(b.pair.subject) is \(value(subject: b.pair.subject, property: b.pair.property))."
    }

    // MARK: Demonstrations

    /// One prompting style of the demonstrations: `{subject}`, `{property}` and `{question}` are
    /// replaced; `count` demonstrations of this style per training question.
    public struct DemoStyle: Codable, Sendable, Equatable {
        public var prompt: String
        public var count: Int
    }

    /// Demonstration episodes on the TRAINING questions: per style, a first turn with a fixed
    /// thought and the styled prompt, the upstream's real answer to it, and a final turn whose
    /// answer is the value the upstream gave (or "unknown" when it gave none). They show the
    /// protocol and a repertoire of prompts, not which prompt works: with the default styles only
    /// one in four demonstrations states the needed phrase.
    public func demonstrations(styles: [DemoStyle]) -> [Demonstration] {
        var out: [Demonstration] = []
        for pair in pairs(heldout: false) {
            let q = question(subject: pair.subject, property: pair.property)
            for style in styles {
                let prompt = style.prompt.replacingOccurrences(of: "{question}", with: q)
                    .replacingOccurrences(of: "{subject}", with: pair.subject).replacingOccurrences(of: "{property}", with: pair.property)
                let response = answer(prompt: prompt)
                let final = response == Self.notSure ? "unknown" : value(subject: pair.subject, property: pair.property)
                let call =
                    PromptR1Tag.callOpen + "{\"name\": \"prompt\", \"arguments\": {\"prompt\": " + pythonJSONDumps(prompt) + "}}"
                    + PromptR1Tag.callClose
                let turns = [
                    "<think>I will ask the large language model.</think>\n" + call,
                    "I have its response.</think>\n<answer>\(final)</answer>",
                ]
                for _ in 0..<max(0, style.count) { out.append(Demonstration(question: q, turns: turns, responses: [response])) }
            }
        }
        return out
    }
}
