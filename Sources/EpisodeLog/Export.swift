// `gateway-train export --format jsonl|trl-sft|verl-sft|verl-rl`: logged collaboration episodes as
// JSON lines in the shapes the loaders of TRL 1.16 and verl 0.9 read as they are (docs/export.md).
// Every row has every key of its format, null where unknown (docs/export-row.schema.json), so a
// JSON loader types the columns the same on every row. The chat template the policy actually saw
// (ExportChatTemplate) is written next to the export.

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
        parseBlocks(text).map(\.message)
    }

    /// As `parse`, with whether each block ended with `<|im_end|>`.
    static func parseBlocks(_ text: String) -> [(message: ChatMLMessage, terminated: Bool)] {
        var out: [(message: ChatMLMessage, terminated: Bool)] = []
        var rest = Substring(text)
        while let s = rest.range(of: PromptR1Tag.imStart) {
            let afterStart = rest[s.upperBound...]
            guard let nl = afterStart.firstIndex(of: "\n") else { break }
            let role = String(afterStart[..<nl])
            let body = afterStart[afterStart.index(after: nl)...]
            if let e = body.range(of: PromptR1Tag.imEnd) {
                out.append(
                    (
                        message: ChatMLMessage(role: role, content: String(body[..<e.lowerBound]), train: role == "assistant"),
                        terminated: true
                    ))
                rest = body[e.upperBound...]
            } else {
                out.append((message: ChatMLMessage(role: role, content: String(body), train: role == "assistant"), terminated: false))
                rest = body[body.endIndex...]
            }
        }
        return out
    }
}

/// The export's output shapes (`--format`).
public enum ExportFormat: String, CaseIterable, Sendable, Codable {
    /// The superset for custom loaders: chat views, exact token view, rewards, metadata.
    case jsonl
    /// TRL `SFTTrainer`, pre-tokenised: `input_ids` + `assistant_masks` (the policy's own tokens).
    case trlSFT = "trl-sft"
    /// verl `MultiTurnSFTDataset` (`data.messages_key=messages`), after a JSONL -> parquet conversion.
    case verlSFT = "verl-sft"
    /// verl `RLHFDataset` (`data.prompt_key=prompt`) and TRL `GRPOTrainer`, after the same conversion for verl.
    case verlRL = "verl-rl"
}

/// A chat message without the `train` flag (the verl formats).
public struct ChatTurn: Codable, Sendable, Equatable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// Encodes nil as JSON null (synthesised `Codable` leaves the key out, which is what made rows
/// differ in shape).
extension KeyedEncodingContainer {
    fileprivate mutating func encodeNullable<T: Encodable>(_ value: T?, forKey key: Key) throws {
        if let value { try encode(value, forKey: key) } else { try encodeNil(forKey: key) }
    }
}

public struct ExportRewardModel: Codable, Sendable, Equatable {
    public var style: String
    /// Reference answers (verl's rule-based reward reads `ground_truth`); null without any.
    public var ground_truth: [String]?

    enum CodingKeys: String, CodingKey { case style, ground_truth }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(style, forKey: .style)
        try c.encodeNullable(ground_truth, forKey: .ground_truth)
    }
}

public struct ExportExtraInfo: Codable, Sendable, Equatable {
    public var episode_id: String
    public var index: Int
    public var question: String?
    public var route: String
    public var policy_version: String?
    public var created_at: Double
    public var format_score: Double?
    public var answer_score: Double?
    /// `reference` or `score`; null without a reward source.
    public var reward_source: String?
    public var feedback_score: Double?

    enum CodingKeys: String, CodingKey {
        case episode_id, index, question, route, policy_version, created_at, format_score, answer_score, reward_source, feedback_score
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(episode_id, forKey: .episode_id)
        try c.encode(index, forKey: .index)
        try c.encodeNullable(question, forKey: .question)
        try c.encode(route, forKey: .route)
        try c.encodeNullable(policy_version, forKey: .policy_version)
        try c.encode(created_at, forKey: .created_at)
        try c.encodeNullable(format_score, forKey: .format_score)
        try c.encodeNullable(answer_score, forKey: .answer_score)
        try c.encodeNullable(reward_source, forKey: .reward_source)
        try c.encodeNullable(feedback_score, forKey: .feedback_score)
    }
}

/// One `--format jsonl` line.
public struct ExportRecord: Codable, Sendable {
    public typealias RewardModel = ExportRewardModel
    public typealias ExtraInfo = ExportExtraInfo
    public var id: String
    public var data_source: String
    /// The policy's first prompt as chat messages (system + user): verl RL / TRL GRPO prompt.
    public var prompt: [ChatMLMessage]
    /// The whole episode as chat messages.
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

    enum CodingKeys: String, CodingKey {
        case id, data_source, prompt, messages, completion, reward, reward_model, extra_info, input_ids, loss_mask, old_logprobs
    }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(data_source, forKey: .data_source)
        try c.encode(prompt, forKey: .prompt)
        try c.encode(messages, forKey: .messages)
        try c.encode(completion, forKey: .completion)
        try c.encodeNullable(reward, forKey: .reward)
        try c.encode(reward_model, forKey: .reward_model)
        try c.encode(extra_info, forKey: .extra_info)
        try c.encode(input_ids, forKey: .input_ids)
        try c.encode(loss_mask, forKey: .loss_mask)
        try c.encode(old_logprobs, forKey: .old_logprobs)
    }
}

/// One `--format trl-sft` line: TRL sees `input_ids`, takes the row as tokenised, and builds its
/// labels from `assistant_masks`; `id` is dropped by its unused-column removal.
public struct TRLSFTRow: Codable, Sendable {
    public var id: String
    public var input_ids: [Int32]
    public var assistant_masks: [UInt8]
}

/// One `--format verl-sft` line (MultiTurnSFTDataset reads `messages`).
public struct VerlSFTRow: Codable, Sendable {
    public var id: String
    public var data_source: String
    public var messages: [ChatTurn]
    public var reward: Double?
    public var extra_info: ExportExtraInfo

    enum CodingKeys: String, CodingKey { case id, data_source, messages, reward, extra_info }
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(id, forKey: .id)
        try c.encode(data_source, forKey: .data_source)
        try c.encode(messages, forKey: .messages)
        try c.encodeNullable(reward, forKey: .reward)
        try c.encode(extra_info, forKey: .extra_info)
    }
}

/// One `--format verl-rl` line (RLHFDataset reads `prompt`, passes `data_source`, `reward_model`
/// and `extra_info` to the reward function; TRL's GRPOTrainer passes the extra columns as keyword
/// arguments).
public struct VerlRLRow: Codable, Sendable {
    public var id: String
    public var data_source: String
    public var prompt: [ChatTurn]
    public var reward_model: ExportRewardModel
    public var extra_info: ExportExtraInfo
}

/// The chat template the policy actually saw, with `{% generation %}` around exactly the tokens it
/// wrote. Rendering an exported conversation with it gives the logged ids byte for byte: unlike
/// Qwen3's own template it keeps earlier turns' reasoning as it was, and it puts the "\n" between
/// blocks before each block (so rendering one message at a time, as verl's MultiTurnSFTDataset
/// does, concatenates to the same ids). `render` is the same template in Swift.
public enum ExportChatTemplate {
    public static let jinja = #"""
        {#- Prompt-R1 gateway export template: renders exported episodes to the exact ids the policy saw.
            Blocks: <|im_start|>ROLE\nCONTENT<|im_end|>, joined by \n (written before each block but a first
            system block). From the second assistant block on, the <think>\n the protocol injected is not the
            policy's; neither is the <|im_end|> after a call (a turn ending with </interaction_prompt>). -#}
        {%- set ns = namespace(assistants=0) -%}
        {%- for message in messages -%}
            {%- if not loop.first or message.role != 'system' -%}{{- '\n' -}}{%- endif -%}
            {%- if message.role == 'assistant' -%}
                {%- set content = message.content -%}
                {{- '<|im_start|>assistant\n' -}}
                {%- if ns.assistants > 0 and content.startswith('<think>\n') -%}
                    {{- '<think>\n' -}}
                    {%- set content = content[8:] -%}
                {%- endif -%}
                {%- set ns.assistants = ns.assistants + 1 -%}
                {%- if message.content.endswith('</interaction_prompt>') -%}
                    {% generation %}{{- content -}}{% endgeneration %}{{- '<|im_end|>' -}}
                {%- else -%}
                    {% generation %}{{- content + '<|im_end|>' -}}{% endgeneration %}
                {%- endif -%}
            {%- else -%}
                {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' -}}
            {%- endif -%}
        {%- endfor -%}
        {%- if add_generation_prompt -%}
            {{- '\n<|im_start|>assistant\n' -}}
        {%- endif -%}
        """#

    /// The text the template renders for `messages`.
    public static func render(_ messages: [ChatTurn], addGenerationPrompt: Bool) -> String {
        var out = ""
        for (i, m) in messages.enumerated() {
            if i > 0 || m.role != "system" { out += "\n" }
            out += PromptR1Tag.imStart + m.role + "\n" + m.content + PromptR1Tag.imEnd
        }
        if addGenerationPrompt { out += "\n" + PromptR1Tag.imStart + "assistant\n" }
        return out
    }

    /// Where the template goes for an export at `url`: `episodes.jsonl` -> `episodes.chat_template.jinja`.
    public static func url(besides url: URL) -> URL {
        url.deletingPathExtension().appendingPathExtension("chat_template.jinja")
    }
}

public struct ExportOptions: Sendable {
    public var format: ExportFormat
    public var filter: EpisodeFilter
    /// Only episodes with a reward source.
    public var requireReward: Bool
    /// Only episodes whose protocol reward is at least this (episodes without a reward are left out).
    public var minReward: Double?
    public var dataSource: String

    public init(
        format: ExportFormat = .jsonl, filter: EpisodeFilter = EpisodeFilter(), requireReward: Bool = false,
        minReward: Double? = nil, dataSource: String = "prompt-r1-gateway"
    ) {
        self.format = format
        self.filter = filter
        self.requireReward = requireReward
        self.minReward = minReward
        self.dataSource = dataSource
    }
}

public struct ExportSummary: Sendable {
    public var written: Int
    public var withReward: Int
    /// Episodes without usable token ids.
    public var skipped: Int
    /// Episodes below `--min-reward` (or without a reward when it is given).
    public var belowMinReward: Int
    /// verl formats: episodes whose text does not re-tokenise to the logged ids (so a loader that
    /// renders the messages would train on other tokens than the policy's), or whose last turn was
    /// cut before `<|im_end|>`.
    public var notRerenderable: Int
    /// Rows written without reference answers (`reward_model.ground_truth` null).
    public var withoutGroundTruth: Int
    /// Sum of the written rows' loss masks (trl-sft / jsonl: the tokens a trainer puts loss on).
    public var policyTokens: Int
    public var chatTemplate: URL
}

public enum Exporter {
    /// One episode turned into every view the formats draw from.
    struct Episode {
        var record: ExportRecord
        var terminated: Bool
    }

    /// Writes one JSON line per usable collaboration episode matching the options, and the chat
    /// template beside it.
    public static func export(
        database: any LogStore, options: ExportOptions, tokenizer: Tokenizer, to url: URL,
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> ExportSummary {
        var query = options.filter.query
        query.hasRewardSource = options.requireReward ? true : nil
        let records = try database.episodes(query)
        let feedback = try database.feedback(episodeIDs: records.map(\.id))
        _ = FileManager.default.createFile(atPath: url.path, contents: nil)
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var s = ExportSummary(
            written: 0, withReward: 0, skipped: 0, belowMinReward: 0, notRerenderable: 0, withoutGroundTruth: 0,
            policyTokens: 0, chatTemplate: ExportChatTemplate.url(besides: url))
        for (n, r) in records.enumerated() {
            defer { progress(n + 1, records.count) }
            guard let e = try? episode(r, index: n, feedback: feedback[r.id] ?? [], tokenizer: tokenizer, dataSource: options.dataSource)
            else {
                s.skipped += 1
                continue
            }
            let rec = e.record
            if let minReward = options.minReward {
                guard let reward = rec.reward, reward >= minReward else {
                    s.belowMinReward += 1
                    continue
                }
            }
            let line: Data
            switch options.format {
            case .jsonl:
                line = try encoder.encode(rec)
            case .trlSFT:
                line = try encoder.encode(TRLSFTRow(id: rec.id, input_ids: rec.input_ids, assistant_masks: rec.loss_mask))
            case .verlSFT:
                let messages = rec.messages.map { ChatTurn(role: $0.role, content: $0.content) }
                guard e.terminated, tokenizer.encode(ExportChatTemplate.render(messages, addGenerationPrompt: false)) == rec.input_ids
                else {
                    s.notRerenderable += 1
                    continue
                }
                line = try encoder.encode(
                    VerlSFTRow(
                        id: rec.id, data_source: rec.data_source, messages: messages, reward: rec.reward,
                        extra_info: rec.extra_info))
            case .verlRL:
                let prompt = rec.prompt.map { ChatTurn(role: $0.role, content: $0.content) }
                let promptIDs = r.turns.first { $0.kind == "policy" }?.inputIDs ?? []
                guard tokenizer.encode(ExportChatTemplate.render(prompt, addGenerationPrompt: true)) == promptIDs else {
                    s.notRerenderable += 1
                    continue
                }
                line = try encoder.encode(
                    VerlRLRow(
                        id: rec.id, data_source: rec.data_source, prompt: prompt,
                        reward_model: rec.reward_model, extra_info: rec.extra_info))
            }
            try handle.write(contentsOf: line + [0x0A])
            s.written += 1
            if rec.reward != nil { s.withReward += 1 }
            if rec.reward_model.ground_truth == nil { s.withoutGroundTruth += 1 }
            s.policyTokens += rec.loss_mask.reduce(0) { $0 + Int($1) }
        }
        try Data(ExportChatTemplate.jinja.utf8).write(to: s.chatTemplate, options: .atomic)
        return s
    }

    /// The superset row of one logged episode (throws when it has no usable token ids).
    static func episode(
        _ r: EpisodeRecord, index n: Int, feedback fb: [FeedbackRecord], tokenizer: Tokenizer,
        dataSource: String
    ) throws -> Episode {
        let seq = try TrainingSequence(record: r)
        let source = rewardSource(of: fb)
        let text = tokenizer.decode(seq.tokens)
        let fmt = seq.formatScore ?? PromptR1Reward.formatScore(text.hasSuffix(PromptR1Tag.imEnd) ? text : text + PromptR1Tag.imEnd)
        let reward = source.map { TrainingReward.compute(format: fmt, answer: seq.answer, source: $0) }
        let blocks = ChatML.parseBlocks(text)
        let messages = blocks.map(\.message)
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
            extra_info: .init(
                episode_id: r.id, index: n, question: r.question, route: r.route, policy_version: r.policyVersion,
                created_at: r.createdAt.timeIntervalSince1970, format_score: fmt, answer_score: reward?.answer,
                reward_source: source.map { if case .references = $0 { return "reference" } else { return "score" } },
                feedback_score: score),
            input_ids: seq.tokens, loss_mask: seq.mask, old_logprobs: seq.behaviourLogprobs.map { $0.isNaN ? 0 : $0 })
        return Episode(record: rec, terminated: blocks.last?.terminated ?? false)
    }

    /// The former entry point (jsonl only).
    public static func export(
        database: any LogStore, filter: EpisodeFilter, requireReward: Bool,
        tokenizer: Tokenizer, to url: URL, dataSource: String = "prompt-r1-gateway",
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> ExportSummary {
        try export(
            database: database,
            options: ExportOptions(format: .jsonl, filter: filter, requireReward: requireReward, dataSource: dataSource),
            tokenizer: tokenizer, to: url, progress: progress)
    }
}
