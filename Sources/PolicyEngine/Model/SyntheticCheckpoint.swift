import Foundation

/// Writes a checkpoint directory (config.json + model.safetensors) with random weights for a given
/// architecture: used by tests and benchmarks that need a realistic shape but no trained model.
public enum SyntheticCheckpoint {
    /// The tensor names and shapes a config expects, in file order (`ModelSpec`'s table).
    public static func tensorShapes(for c: ModelConfig) -> [(name: String, shape: [Int])] {
        let spec = ModelSpec(config: c)
        var all = [spec.embed] + spec.layers.flatMap(\.tensors) + [spec.finalNorm]
        if let head = spec.lmHead { all.append(head) }
        return all.map { ($0.name, $0.shape) }
    }

    /// Writes `config.json` and `model.safetensors` into `directory` (created if needed). Norm weights are
    /// 1 + 0.1 * noise, everything else uniform noise scaled by 1/sqrt(fan-in). `dtype: .BF16` halves the file
    /// (large shapes, e.g. Qwen3-4B's 8 GB instead of 16 GB).
    public static func write(config: ModelConfig, to directory: URL, seed: UInt64 = 1, dtype: SafetensorsDType = .F32) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(config).write(to: directory.appendingPathComponent("config.json"))
        let entries = tensorShapes(for: config)
        var rng = Xoshiro256(seed: seed)
        try SafetensorsWriter.write(entries: entries, dtype: dtype, to: directory.appendingPathComponent("model.safetensors")) { i, buf in
            let (name, shape) = entries[i]
            let isNorm = name.hasSuffix("norm.weight") || name.hasSuffix("layernorm.weight")
            let scale: Float = isNorm ? 0.1 : (name.hasSuffix(".bias") ? 0.1 : 1 / Float(shape.last!).squareRoot())
            for j in 0..<buf.count {
                let u = Float(rng.nextUnit() * 2 - 1) * 1.7320508 * scale  // unit variance * scale
                buf[j] = isNorm ? 1 + u : u
            }
        }
    }
}
