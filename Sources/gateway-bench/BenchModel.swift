import ArgumentParser
import Foundation
import PolicyEngine

/// The benchmark model: random weights with the exact shape of Qwen2.5-0.5B (896 hidden, 24 layers,
/// 14 heads, 2 KV heads, 4864 FFN, 151,936 vocab, tied embeddings), F32, created on first use.
enum BenchModel {
    static func qwen05Config() throws -> ModelConfig {
        try ModelConfig(
            modelType: .qwen2, hiddenSize: 896, numHiddenLayers: 24, numAttentionHeads: 14, numKeyValueHeads: 2,
            intermediateSize: 4864, vocabSize: 151_936, rmsNormEps: 1e-6, maxPositionEmbeddings: 32_768,
            tieWordEmbeddings: true, rope: RopeParameters(theta: 1_000_000), dtype: "float32",
            eosTokenIds: [1002])
    }

    /// Returns a checkpoint folder: `given` if set, else the Qwen2.5-0.5B-shaped model in `cache`
    /// (written once, ~2 GB), with the fixture's byte-level BPE tokenizer so text can be encoded.
    static func folder(given: String?, cache: String, tokenizerFrom: String) throws -> URL {
        if let given { return URL(fileURLWithPath: given) }
        let dir = URL(fileURLWithPath: cache)
        let config = dir.appendingPathComponent("config.json")
        if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("model.safetensors").path)
            || !FileManager.default.fileExists(atPath: config.path)
        {
            FileHandle.standardError.write("writing a Qwen2.5-0.5B-shaped random checkpoint to \(dir.path) (once)...\n".data(using: .utf8)!)
            try SyntheticCheckpoint.write(config: qwen05Config(), to: dir, seed: 7)
        }
        for f in ["tokenizer.json", "tokenizer_config.json"] {
            let target = dir.appendingPathComponent(f)
            if !FileManager.default.fileExists(atPath: target.path) {
                try FileManager.default.copyItem(at: URL(fileURLWithPath: tokenizerFrom).appendingPathComponent(f), to: target)
            }
        }
        return dir
    }
}

/// `--model`, `--model-cache`, `--tokenizer-from`: the checkpoint a benchmark runs on.
struct BenchModelOptions: ParsableArguments {
    @Option(help: "Checkpoint folder (default: a Qwen2.5-0.5B-shaped random F32 model, created once).") var model: String?
    @Option(name: .customLong("model-cache"), help: "Where the default model is written.") var modelCache =
        "/tmp/prompt-r1-bench/qwen2.5-0.5b-shape"
    @Option(name: .customLong("tokenizer-from"), help: "Tokenizer files copied next to the default model.") var tokenizerFrom =
        "Tests/Fixtures/models/qwen3-tiny"

    /// `--model`, or the default model (written on first use).
    func folder() throws -> URL { try BenchModel.folder(given: model, cache: modelCache, tokenizerFrom: tokenizerFrom) }
}
