import Foundation

/// Low-rank adapters (LoRA) on a subset of the linear layers: y = x W^T + (alpha / rank) * (x A^T) B^T,
/// A [rank, in] random (Kaiming-uniform as PEFT), B [out, rank] zero, so training starts at the base model.
public struct LoRAConfig: Sendable, Codable, Equatable {
    public var rank: Int
    /// scale = alpha / rank
    public var alpha: Float
    /// Subset of `LoRAConfig.allModules`.
    public var targetModules: [String]

    public static let allModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    public init(rank: Int = 8, alpha: Float = 16, targetModules: [String] = ["q_proj", "k_proj", "v_proj", "o_proj"]) {
        self.rank = rank
        self.alpha = alpha
        self.targetModules = targetModules
    }

    public var scale: Float { alpha / Float(rank) }

    public func validate() throws {
        guard rank > 0 else { throw TrainingError.invalidLoRA("rank must be > 0, got \(rank)") }
        guard alpha.isFinite else { throw TrainingError.invalidLoRA("alpha must be finite") }
        guard !targetModules.isEmpty else { throw TrainingError.invalidLoRA("targetModules is empty") }
        for m in targetModules where !Self.allModules.contains(m) {
            throw TrainingError.invalidLoRA("unknown target module '\(m)' (allowed: \(Self.allModules.joined(separator: ", ")))")
        }
    }
}

/// What a `TrainableModel` trains.
public enum TrainingMode: Sendable, Equatable {
    /// Every weight (embedding, norms, projections, biases, q/k norms, lm_head).
    case full
    /// Only LoRA adapters; the base weights are frozen.
    case lora(LoRAConfig)
    /// Nothing (a reference model: forward only).
    case frozen
}

public enum TrainingError: Error, CustomStringConvertible, Equatable {
    case invalidLoRA(String)
    case emptyInput
    case tokenOutOfRange(token: Int32, vocabSize: Int)
    case contextOverflow(needed: Int, maxPositions: Int)
    case badState(file: String, reason: String)

    public var description: String {
        switch self {
        case .invalidLoRA(let r): return "LoRA config: \(r)"
        case .emptyInput: return "training: empty token sequence"
        case .tokenOutOfRange(let t, let v): return "training: token \(t) outside the vocabulary of \(v)"
        case .contextOverflow(let n, let m): return "training: \(n) tokens exceed max_position_embeddings \(m)"
        case .badState(let f, let r): return "training state \(f): \(r)"
        }
    }
}
