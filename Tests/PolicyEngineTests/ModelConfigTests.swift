import Foundation
import XCTest

@testable import PolicyEngine

final class ModelConfigTests: XCTestCase {
    func decode(_ json: String) throws -> ModelConfig { try ModelConfig.decode(Data(json.utf8)) }

    let base = #""hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "vocab_size": 100"#

    func testLegacyQwen2Defaults() throws {
        let c = try decode(
            #"{"model_type": "qwen2", "# + base
                + #", "rope_theta": 1000000.0, "torch_dtype": "bfloat16", "eos_token_id": 5, "tie_word_embeddings": true}"#)
        XCTAssertEqual(c.numKeyValueHeads, 4)
        XCTAssertEqual(c.headDim, 16)
        XCTAssertTrue(c.attentionBias)
        XCTAssertEqual(c.rope, RopeParameters(theta: 1_000_000))
        XCTAssertEqual(c.dtype, "bfloat16")
        XCTAssertEqual(c.eosTokenIds, [5])
        XCTAssertTrue(c.tieWordEmbeddings)
    }

    func testRopeParametersAndListEos() throws {
        let c = try decode(
            #"{"model_type": "llama", "# + base
                + #", "num_key_value_heads": 2, "dtype": "float32", "eos_token_id": [7, 9], "bos_token_id": 1, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}"#
        )
        XCTAssertEqual(c.rope.ropeType, "llama3")
        XCTAssertEqual(c.rope.theta, 500_000)
        XCTAssertEqual(c.rope.factor, 8)
        XCTAssertEqual(c.rope.originalMaxPositionEmbeddings, 8192)
        XCTAssertEqual(c.eosTokenIds, [7, 9])
        XCTAssertEqual(c.bosTokenIds, [1])
        XCTAssertEqual(c.dtype, "float32")
        XCTAssertFalse(c.attentionBias)
        // Encoding then decoding gives the same config.
        let again = try ModelConfig.decode(JSONEncoder().encode(c))
        XCTAssertEqual(again, c)
    }

    func testErrorsNameTheKey() throws {
        XCTAssertThrowsError(try decode(#"{"model_type": "qwen2", "hidden_size": 64}"#)) {
            XCTAssertEqual($0 as? ModelConfigError, .missingKey("num_attention_heads"))
        }
        XCTAssertThrowsError(try decode(#"{"model_type": "gpt2", "# + base + "}")) {
            XCTAssertEqual($0 as? ModelConfigError, .unsupported(key: "model_type", value: "gpt2"))
        }
        XCTAssertThrowsError(try decode(#"{"model_type": "qwen2", "# + base + #", "num_key_value_heads": 3}"#)) {
            XCTAssertTrue("\($0)".contains("num_key_value_heads"))
        }
        XCTAssertThrowsError(try decode(#"{"model_type": "qwen2", "# + base + #", "rms_norm_eps": "small"}"#)) {
            XCTAssertTrue("\($0)".contains("rms_norm_eps"))
        }
        XCTAssertThrowsError(try decode(#"{"model_type": "llama", "# + base + #", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}"#))
        {
            XCTAssertEqual($0 as? ModelConfigError, .unsupported(key: "rope_scaling.rope_type", value: "yarn"))
        }
        XCTAssertThrowsError(
            try decode(#"{"model_type": "llama", "# + base + #", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#)
        ) {
            XCTAssertTrue("\($0)".contains("low_freq_factor"))
        }
        XCTAssertThrowsError(try decode("[1]"))
    }

    func testGenerationDefaults() throws {
        let dir = try EngineFixtures.tempDirectory(self)
        XCTAssertEqual(try GenerationDefaults.load(from: dir), GenerationDefaults())
        try #"{"temperature": 0.7, "top_p": 0.8, "top_k": 20, "eos_token_id": [1, 2], "do_sample": true}"#
            .write(to: dir.appendingPathComponent("generation_config.json"), atomically: true, encoding: .utf8)
        let g = try GenerationDefaults.load(from: dir)
        XCTAssertEqual(g.temperature, 0.7)
        XCTAssertEqual(g.topP, 0.8)
        XCTAssertEqual(g.topK, 20)
        XCTAssertEqual(g.eosTokenIds, [1, 2])
        let p = SamplingParameters(defaults: g, seed: 3)
        XCTAssertEqual(p, SamplingParameters(temperature: 0.7, topK: 20, topP: 0.8, seed: 3))
        let ll = try TransformerModel.load(from: EngineFixtures.model("llama-tiny"))
        XCTAssertEqual(ll.eosTokenIds, [1004, 1001])
    }

    func testMissingAndMisshapedModelTensorsAreNamed() throws {
        let cfg = try ModelConfig(
            modelType: .qwen3, hiddenSize: 16, numHiddenLayers: 2, numAttentionHeads: 2,
            numKeyValueHeads: 1, headDim: 8, intermediateSize: 24, vocabSize: 11,
            tieWordEmbeddings: false)
        let dir = try EngineFixtures.tempDirectory(self)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try JSONEncoder().encode(cfg).write(to: dir.appendingPathComponent("config.json"))
        var entries = SyntheticCheckpoint.tensorShapes(for: cfg)
        entries.removeAll { $0.name == "model.layers.1.self_attn.k_norm.weight" }
        let file = dir.appendingPathComponent("model.safetensors")
        try SafetensorsWriter.write(entries: entries, to: file) { _, b in for i in 0..<b.count { b[i] = 0.01 } }
        XCTAssertThrowsError(try TransformerModel.load(from: dir)) {
            XCTAssertEqual($0 as? SafetensorsError, .missingTensor("model.layers.1.self_attn.k_norm.weight"))
        }
        entries = SyntheticCheckpoint.tensorShapes(for: cfg).map {
            $0.name == "lm_head.weight" ? ($0.name, [11, 15]) : $0
        }
        try SafetensorsWriter.write(entries: entries, to: file) { _, b in for i in 0..<b.count { b[i] = 0.01 } }
        XCTAssertThrowsError(try TransformerModel.load(from: dir)) {
            XCTAssertEqual($0 as? SafetensorsError, .shapeMismatch(tensor: "lm_head.weight", expected: [11, 16], actual: [11, 15]))
        }
    }
}
