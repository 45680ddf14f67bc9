import Foundation
import XCTest

@testable import PolicyEngine

/// Locates committed fixtures: Tests/PolicyEngineTests/X.swift -> Tests/Fixtures.
enum EngineFixtures {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static func model(_ name: String) -> URL { root.appendingPathComponent("models/\(name)") }
    static func reference(_ name: String) -> URL { root.appendingPathComponent("reference/\(name).json") }

    struct Reference: Decodable {
        struct Case: Decodable {
            var name: String
            var input_ids: [Int32]
            var positions: [Int]
            var logits: [[Float]]
            var greedy_ids: [Int32]
            var greedy_logprobs: [Float]
        }
        var model: String
        var vocab_size: Int
        var cases: [Case]
    }

    static func loadReference(_ name: String) throws -> Reference {
        try JSONDecoder().decode(Reference.self, from: Data(contentsOf: reference(name)))
    }

    /// A temporary directory removed at the end of the test.
    static func tempDirectory(_ test: XCTestCase) throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        test.addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        return dir
    }

    static func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
        var m: Float = 0
        for i in 0..<a.count { m = max(m, abs(a[i] - b[i])) }
        return m
    }

    /// A tiny random model of the given family written to a temp directory.
    static func syntheticModel(
        _ test: XCTestCase, family: ModelFamily = .qwen2, vocab: Int = 97,
        tied: Bool = true, seed: UInt64 = 7
    ) throws -> TransformerModel {
        let cfg = try ModelConfig(
            modelType: family, hiddenSize: 32, numHiddenLayers: 2, numAttentionHeads: 4,
            numKeyValueHeads: 2, headDim: family == .qwen3 ? 16 : nil, intermediateSize: 48,
            vocabSize: vocab, maxPositionEmbeddings: 512, tieWordEmbeddings: tied,
            rope: RopeParameters(theta: 10000))
        let dir = try tempDirectory(test)
        try SyntheticCheckpoint.write(config: cfg, to: dir, seed: seed)
        return try TransformerModel.load(from: dir)
    }
}
