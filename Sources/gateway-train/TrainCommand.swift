import ArgumentParser
import Foundation
import PolicyEngine

/// `gateway-train`: the offline side of the gateway: reinforcement learning of the policy
/// (rollout, train, eval, export; see TrainerCommands.swift) and commands to inspect a
/// checkpoint with the same engine the gateway runs (tokenize, generate, score).
@main
struct TrainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway-train",
        abstract: "Offline tools for the Prompt-R1 gateway's policy model.",
        subcommands: [
            RolloutCommand.self, TrainRLCommand.self, SFTCommand.self, EvalCommand.self, ExportCommand.self, ExperimentCommand.self,
            Tokenize.self, Generate.self, Score.self,
        ]
    )
}

func printJSON(_ value: some Encodable) throws {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    print(String(decoding: try e.encode(value), as: UTF8.self))
}

func parseIDs(_ s: String, _ name: String) throws -> [Int32] {
    let parts = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    var out: [Int32] = []
    for p in parts {
        guard let v = Int32(p) else { throw ValidationError("\(name): '\(p)' is not a token id") }
        out.append(v)
    }
    return out
}

struct Tokenize: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the token ids of a text.",
        discussion: "JSON output: {\"ids\": [Int], \"tokens\": [String], \"count\": Int}.")

    @Option(help: "Checkpoint folder (tokenizer.json, tokenizer_config.json).") var model: String
    @Option(help: "Text to tokenize.") var text: String?
    @Option(help: "File whose contents to tokenize.") var file: String?
    @Flag(help: "Add the tokenizer's special tokens (e.g. BOS) as its post-processor does.") var addSpecialTokens = false
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        if (text == nil) == (file == nil) { throw ValidationError("give exactly one of --text or --file") }
    }

    func run() async throws {
        let tokenizer = try Tokenizer(directory: URL(fileURLWithPath: model))
        let input: String
        if let text {
            input = text
        } else {
            guard let data = FileManager.default.contents(atPath: file!) else { throw ValidationError("cannot read \(file!)") }
            input = String(decoding: data, as: UTF8.self)
        }
        let ids = tokenizer.encode(input, addSpecialTokens: addSpecialTokens)
        if json {
            struct Out: Encodable {
                var ids: [Int32]
                var tokens: [String]
                var count: Int
            }
            try printJSON(Out(ids: ids, tokens: ids.map { tokenizer.token(for: $0) ?? "" }, count: ids.count))
        } else {
            print(ids.map(String.init).joined(separator: ","))
        }
    }
}

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Generate from a prompt with the gateway's engine.",
        discussion: """
            JSON output: {"prompt_ids": [Int], "ids": [Int], "text": String, "logprobs": [Float] (under the \
            sampling distribution), "raw_logprobs": [Float] (log-softmax at temperature 1), \
            "finish_reason": "stop"|"length"|"cancelled", "tokens_per_second": Float}.
            """)

    @Option(help: "Checkpoint folder.") var model: String
    @Option(help: "Prompt text (tokenized without special tokens).") var prompt: String?
    @Option(name: .customLong("prompt-ids"), help: "Prompt as comma-separated token ids.") var promptIDs: String?
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate at most.") var maxTokens: Int = 64
    @Option(help: "Sampling temperature (0: greedy).") var temperature: Float = 0
    @Option(name: .customLong("top-p")) var topP: Float = 1
    @Option(name: .customLong("top-k")) var topK: Int = 0
    @Option(help: "Random seed (reproducible sampling).") var seed: UInt64?
    @Option(help: "Stop string (repeatable).") var stop: [String] = []
    @Flag(name: .customLong("ignore-eos"), help: "Do not stop at the end-of-sequence tokens.") var ignoreEOS = false
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        if (prompt == nil) == (promptIDs == nil) { throw ValidationError("give exactly one of --prompt or --prompt-ids") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
    }

    func run() async throws {
        let dir = URL(fileURLWithPath: model)
        let m = try TransformerModel.load(from: dir)
        let tokenizer = try Tokenizer(directory: dir)
        let ids = try prompt.map { tokenizer.encode($0) } ?? parseIDs(promptIDs!, "--prompt-ids")
        let session = Session(model: m, initialCapacity: ids.count + maxTokens)
        try session.append(ids)
        var stopIDs = Set<Int32>()
        if !ignoreEOS {
            for id in m.eosTokenIds { stopIDs.insert(id) }
            if let e = tokenizer.eosTokenId { stopIDs.insert(e) }
        }
        let start = ContinuousClock.now
        let r = try session.generate(
            maxTokens: maxTokens, sampling: SamplingParameters(temperature: temperature, topK: topK, topP: topP, seed: seed),
            stop: StopConditions(tokenIds: stopIDs, strings: stop), tokenBytes: { tokenizer.tokenBytes($0) })
        let elapsed = ContinuousClock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        if json {
            struct Out: Encodable {
                var prompt_ids: [Int32]
                var ids: [Int32]
                var text: String
                var logprobs: [Float]
                var raw_logprobs: [Float]
                var finish_reason: String
                var tokens_per_second: Double
            }
            try printJSON(
                Out(
                    prompt_ids: ids, ids: r.tokens, text: r.text, logprobs: r.logprobs, raw_logprobs: r.rawLogprobs,
                    finish_reason: r.finishReason.rawValue, tokens_per_second: Double(r.tokens.count) / max(seconds, 1e-9)))
        } else {
            print(r.text)
            print("ids: " + r.tokens.map(String.init).joined(separator: ","))
            print("logprobs: " + r.logprobs.map { String(format: "%.4f", $0) }.joined(separator: ","))
            print(
                "finish: \(r.finishReason.rawValue), \(r.tokens.count) tokens, \(String(format: "%.1f", Double(r.tokens.count) / max(seconds, 1e-9))) tok/s (prefill included)"
            )
        }
    }
}

struct Score: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Log-probability of each continuation token after a prompt.",
        discussion: "JSON output: {\"logprobs\": [Float], \"sum\": Float}.")

    @Option(help: "Checkpoint folder.") var model: String
    @Option(name: .customLong("prompt-ids"), help: "Comma-separated prompt token ids.") var promptIDs: String
    @Option(name: .customLong("continuation-ids"), help: "Comma-separated continuation token ids.") var continuationIDs: String
    @Flag(help: "Print JSON.") var json = false

    func run() async throws {
        let m = try TransformerModel.load(from: URL(fileURLWithPath: model))
        let prompt = try parseIDs(promptIDs, "--prompt-ids")
        let continuation = try parseIDs(continuationIDs, "--continuation-ids")
        guard !prompt.isEmpty, !continuation.isEmpty else { throw ValidationError("prompt and continuation must not be empty") }
        let lp = try m.logProbabilities(of: continuation, after: prompt)
        if json {
            struct Out: Encodable {
                var logprobs: [Float]
                var sum: Float
            }
            try printJSON(Out(logprobs: lp, sum: lp.reduce(0, +)))
        } else {
            print(lp.map { String(format: "%.6f", $0) }.joined(separator: ","))
        }
    }
}
