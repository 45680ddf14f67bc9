// `gateway-train export --format jsonl`: logged collaboration episodes as JSON lines that verl and
// TRL loaders read directly (after a pandas JSONL -> parquet conversion for verl). See README
// "Training" for the field mapping.

import Foundation
import PolicyEngine
import PromptR1
import TrafficLog

public struct ChatMLMessage: Codable, Sendable, Equatable {
    public var role: String
    public var content: String
    /// Whether a trainer should put loss on this message (the policy wrote it).
    public var train: Bool
}

public enum ChatML {
    /// Splits a ChatML text into messages: `<|im_start|>ROLE\nCONTENT<|im_end|>` blocks, the last
    /// block possibly unterminated (a turn cut by a limit). Text outside blocks (the "\n" between
    /// them) is dropped. Assistant messages are marked `train`.
    public static func parse(_ text: String) -> [ChatMLMessage] {
        var out: [ChatMLMessage] = []
        var rest = Substring(text)
        while let s = rest.range(of: PromptR1Tag.imStart) {
            let afterStart = rest[s.upperBound...]
            guard let nl = afterStart.firstIndex(of: "\n") else { break }
            let role = String(afterStart[..<nl])
            let body = afterStart[afterStart.index(after: nl)...]
            if let e = body.range(of: PromptR1Tag.imEnd) {
                out.append(ChatMLMessage(role: role, content: String(body[..<e.lowerBound]), train: role == "assistant"))
                rest = body[e.upperBound...]
            } else {
                out.append(ChatMLMessage(role: role, content: String(body), train: role == "assistant"))
                rest = body[body.endIndex...]
            }
        }
        return out
    }
}

/// One exported line.
public struct ExportRecord: Codable, Sendable {
    public struct RewardModel: Codable, Sendable {
        public var style: String
        /// Reference answers (verl's rule-based reward reads `ground_truth`).
        public var ground_truth: [String]?
    }
    public struct ExtraInfo: Codable, Sendable {
        public var episode_id: String
        public var index: Int
        public var question: String?
        public var route: String
        public var policy_version: String?
        public var created_at: Double
        public var format_score: Double?
        public var answer_score: Double?
        public var reward_source: String?
        public var feedback_score: Double?
    }
    public var id: String
    public var data_source: String
    /// The policy's first prompt as chat messages (system + user): verl RL / TRL GRPO prompt.
    public var prompt: [ChatMLMessage]
    /// The whole episode as chat messages: verl multi-turn SFT / TRL SFT (`assistant_only_loss`).
    public var messages: [ChatMLMessage]
    /// Everything after the prompt (TRL prompt-completion form).
    public var completion: [ChatMLMessage]
    /// The protocol reward in [-1, 1], null without a reward source.
    public var reward: Double?
    public var reward_model: RewardModel
    public var extra_info: ExtraInfo
    /// Exact token-level view: the ids the policy saw and wrote, 1 where it wrote them, and the
    /// behaviour log-probs (0 where the mask is 0).
    public var input_ids: [Int32]
    public var loss_mask: [UInt8]
    public var old_logprobs: [Float]
}

public struct ExportSummary: Sendable {
    public var written: Int
    public var withReward: Int
    public var skipped: Int
}

public enum Exporter {
    /// Writes one JSON line per usable collaboration episode matching `filter` (its
    /// `hasRewardSource` requirement applies only when `requireReward`).
    public static func export(database: any LogStore, filter: EpisodeFilter, requireReward: Bool,
                              tokenizer: Tokenizer, to url: URL, dataSource: String = "prompt-r1-gateway",
                              progress: (Int, Int) -> Void = { _, _ in }) throws -> ExportSummary {
        var query = filter.query
        query.hasRewardSource = requireReward ? true : nil
        let records = try database.episodes(query)
        let feedback = try database.feedback(episodeIDs: records.map(\.id))
        _ = FileManager.default.createFile(atPath: url.path, contents: nil)
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var written = 0, withReward = 0, skipped = 0
        for (n, r) in records.enumerated() {
            defer { progress(n + 1, records.count) }
            guard let seq = try? TrainingSequence(record: r) else { skipped += 1; continue }
            let fb = feedback[r.id] ?? []
            let source = EpisodeSelector.rewardSource(fb)
            let text = tokenizer.decode(seq.tokens)
            let fmt = seq.formatScore ?? PromptR1Reward.formatScore(text.hasSuffix(PromptR1Tag.imEnd) ? text : text + PromptR1Tag.imEnd)
            let reward = source.map { TrainingReward.compute(format: fmt, answer: seq.answer, source: $0) }
            let messages = ChatML.parse(text)
            let promptCount = messages.firstIndex { $0.role == "assistant" } ?? messages.count
            var refs: [String]?
            var score: Double?
            switch source {
            case .references(let x): refs = x
            case .score(let s): score = s
            case nil: break
            }
            let rec = ExportRecord(
                id: r.id, data_source: dataSource,
                prompt: Array(messages[..<promptCount]), messages: messages, completion: Array(messages[promptCount...]),
                reward: reward?.reward,
                reward_model: .init(style: "rule", ground_truth: refs),
                extra_info: .init(episode_id: r.id, index: n, question: r.question, route: r.route, policy_version: r.policyVersion,
                                  created_at: r.createdAt.timeIntervalSince1970, format_score: fmt, answer_score: reward?.answer,
                                  reward_source: source.map { if case .references = $0 { return "reference" } else { return "score" } },
                                  feedback_score: score),
                input_ids: seq.tokens, loss_mask: seq.mask, old_logprobs: seq.behaviourLogprobs.map { $0.isNaN ? 0 : $0 })
            var line = try encoder.encode(rec)
            line.append(0x0A)
            try handle.write(contentsOf: line)
            written += 1
            if reward != nil { withReward += 1 }
        }
        return ExportSummary(written: written, withReward: withReward, skipped: skipped)
    }
}
