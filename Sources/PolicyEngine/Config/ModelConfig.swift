import Foundation

/// Errors raised while reading `config.json` / `generation_config.json`.
public enum ModelConfigError: Error, CustomStringConvertible, Equatable {
    case unreadable(file: String, reason: String)
    case missingKey(String)
    case invalidValue(key: String, reason: String)
    case unsupported(key: String, value: String)

    public var description: String {
        switch self {
        case .unreadable(let file, let reason): return "cannot read \(file): \(reason)"
        case .missingKey(let key): return "config: missing required key '\(key)'"
        case .invalidValue(let key, let reason): return "config: invalid value for '\(key)': \(reason)"
        case .unsupported(let key, let value): return "config: unsupported \(key) '\(value)'"
        }
    }
}

/// The model families the engine can run.
public enum ModelFamily: String, Codable, Sendable, CaseIterable {
    case qwen2, qwen3, llama
}

/// RoPE frequency parameters. Read either from the legacy `rope_theta` + `rope_scaling` keys or from
/// the newer `rope_parameters` object.
public struct RopeParameters: Codable, Sendable, Equatable {
    /// "default", "linear" or "llama3".
    public var ropeType: String
    public var theta: Double
    public var factor: Double?
    public var lowFreqFactor: Double?
    public var highFreqFactor: Double?
    public var originalMaxPositionEmbeddings: Int?

    public init(
        ropeType: String = "default", theta: Double, factor: Double? = nil, lowFreqFactor: Double? = nil,
        highFreqFactor: Double? = nil, originalMaxPositionEmbeddings: Int? = nil
    ) {
        self.ropeType = ropeType
        self.theta = theta
        self.factor = factor
        self.lowFreqFactor = lowFreqFactor
        self.highFreqFactor = highFreqFactor
        self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
    }

    enum CodingKeys: String, CodingKey {
        case ropeType = "rope_type"
        case theta = "rope_theta"
        case factor
        case lowFreqFactor = "low_freq_factor"
        case highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
    }
}

/// Architecture hyper-parameters from a Hugging Face `config.json` (Qwen2, Qwen3, Llama).
public struct ModelConfig: Codable, Sendable, Equatable {
    public var modelType: ModelFamily
    public var hiddenSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    public var numKeyValueHeads: Int
    public var headDim: Int
    public var intermediateSize: Int
    public var vocabSize: Int
    public var rmsNormEps: Float
    public var maxPositionEmbeddings: Int
    public var tieWordEmbeddings: Bool
    /// Bias on q/k/v projections (Qwen2 always has them; for Qwen3/Llama it also adds an o_proj bias).
    public var attentionBias: Bool
    public var rope: RopeParameters
    /// Checkpoint dtype as declared ("float32", "bfloat16", ...), informative only.
    public var dtype: String?
    public var bosTokenIds: [Int]
    public var eosTokenIds: [Int]

    public var qDim: Int { numAttentionHeads * headDim }
    public var kvDim: Int { numKeyValueHeads * headDim }

    public init(
        modelType: ModelFamily, hiddenSize: Int, numHiddenLayers: Int, numAttentionHeads: Int,
        numKeyValueHeads: Int, headDim: Int? = nil, intermediateSize: Int, vocabSize: Int,
        rmsNormEps: Float = 1e-6, maxPositionEmbeddings: Int = 4096, tieWordEmbeddings: Bool,
        attentionBias: Bool? = nil, rope: RopeParameters = RopeParameters(theta: 10000),
        dtype: String? = nil, bosTokenIds: [Int] = [], eosTokenIds: [Int] = []
    ) throws {
        self.modelType = modelType
        self.hiddenSize = hiddenSize
        self.numHiddenLayers = numHiddenLayers
        self.numAttentionHeads = numAttentionHeads
        self.numKeyValueHeads = numKeyValueHeads
        self.headDim = headDim ?? (numAttentionHeads > 0 ? hiddenSize / numAttentionHeads : 0)
        self.intermediateSize = intermediateSize
        self.vocabSize = vocabSize
        self.rmsNormEps = rmsNormEps
        self.maxPositionEmbeddings = maxPositionEmbeddings
        self.tieWordEmbeddings = tieWordEmbeddings
        self.attentionBias = attentionBias ?? (modelType == .qwen2)
        self.rope = rope
        self.dtype = dtype
        self.bosTokenIds = bosTokenIds
        self.eosTokenIds = eosTokenIds
        try validate()
    }

    enum Keys: String, CodingKey {
        case modelType = "model_type"
        case hiddenSize = "hidden_size"
        case numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads"
        case numKeyValueHeads = "num_key_value_heads"
        case headDim = "head_dim"
        case intermediateSize = "intermediate_size"
        case vocabSize = "vocab_size"
        case rmsNormEps = "rms_norm_eps"
        case maxPositionEmbeddings = "max_position_embeddings"
        case tieWordEmbeddings = "tie_word_embeddings"
        case attentionBias = "attention_bias"
        case ropeTheta = "rope_theta"
        case ropeScaling = "rope_scaling"
        case ropeParameters = "rope_parameters"
        case torchDtype = "torch_dtype"
        case dtype
        case bosTokenId = "bos_token_id"
        case eosTokenId = "eos_token_id"
        case mlpBias = "mlp_bias"
        case textConfig = "text_config"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        func req<T: Decodable>(_ k: Keys, _ t: T.Type) throws -> T {
            guard c.contains(k) else { throw ModelConfigError.missingKey(k.rawValue) }
            do { return try c.decode(T.self, forKey: k) } catch {
                throw ModelConfigError.invalidValue(key: k.rawValue, reason: "expected \(T.self)")
            }
        }
        func opt<T: Decodable>(_ k: Keys, _ t: T.Type) throws -> T? {
            guard c.contains(k) else { return nil }
            if (try? c.decodeNil(forKey: k)) == true { return nil }
            do { return try c.decode(T.self, forKey: k) } catch {
                throw ModelConfigError.invalidValue(key: k.rawValue, reason: "expected \(T.self)")
            }
        }
        let typeName = try req(.modelType, String.self)
        guard let family = ModelFamily(rawValue: typeName) else {
            throw ModelConfigError.unsupported(key: "model_type", value: typeName)
        }
        if try opt(.mlpBias, Bool.self) == true { throw ModelConfigError.unsupported(key: "mlp_bias", value: "true") }
        let hidden = try req(.hiddenSize, Int.self)
        let heads = try req(.numAttentionHeads, Int.self)

        // RoPE: the newer `rope_parameters` wins over legacy `rope_theta` / `rope_scaling`.
        var rope: RopeParameters
        if let rp = try opt(.ropeParameters, RopeParametersJSON.self) {
            let theta = try rp.ropeTheta ?? opt(.ropeTheta, Double.self) ?? 10000
            rope = RopeParameters(
                ropeType: rp.ropeType ?? rp.type ?? "default", theta: theta, factor: rp.factor,
                lowFreqFactor: rp.lowFreqFactor, highFreqFactor: rp.highFreqFactor,
                originalMaxPositionEmbeddings: rp.originalMaxPositionEmbeddings)
        } else {
            let theta = try opt(.ropeTheta, Double.self) ?? 10000
            rope = RopeParameters(theta: theta)
            if let rs = try opt(.ropeScaling, RopeParametersJSON.self) {
                rope.ropeType = rs.ropeType ?? rs.type ?? "default"
                rope.factor = rs.factor
                rope.lowFreqFactor = rs.lowFreqFactor
                rope.highFreqFactor = rs.highFreqFactor
                rope.originalMaxPositionEmbeddings = rs.originalMaxPositionEmbeddings
            }
        }
        try self.init(
            modelType: family,
            hiddenSize: hidden,
            numHiddenLayers: try req(.numHiddenLayers, Int.self),
            numAttentionHeads: heads,
            numKeyValueHeads: try opt(.numKeyValueHeads, Int.self) ?? heads,
            headDim: try opt(.headDim, Int.self),
            intermediateSize: try req(.intermediateSize, Int.self),
            vocabSize: try req(.vocabSize, Int.self),
            rmsNormEps: Float(try opt(.rmsNormEps, Double.self) ?? 1e-6),
            maxPositionEmbeddings: try opt(.maxPositionEmbeddings, Int.self) ?? 4096,
            tieWordEmbeddings: try opt(.tieWordEmbeddings, Bool.self) ?? false,
            attentionBias: try opt(.attentionBias, Bool.self),
            rope: rope,
            dtype: try opt(.dtype, String.self) ?? opt(.torchDtype, String.self),
            bosTokenIds: try opt(.bosTokenId, IntOrList.self)?.values ?? [],
            eosTokenIds: try opt(.eosTokenId, IntOrList.self)?.values ?? [])
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(modelType.rawValue, forKey: .modelType)
        try c.encode(hiddenSize, forKey: .hiddenSize)
        try c.encode(numHiddenLayers, forKey: .numHiddenLayers)
        try c.encode(numAttentionHeads, forKey: .numAttentionHeads)
        try c.encode(numKeyValueHeads, forKey: .numKeyValueHeads)
        try c.encode(headDim, forKey: .headDim)
        try c.encode(intermediateSize, forKey: .intermediateSize)
        try c.encode(vocabSize, forKey: .vocabSize)
        try c.encode(Double(rmsNormEps), forKey: .rmsNormEps)
        try c.encode(maxPositionEmbeddings, forKey: .maxPositionEmbeddings)
        try c.encode(tieWordEmbeddings, forKey: .tieWordEmbeddings)
        try c.encode(attentionBias, forKey: .attentionBias)
        try c.encode(rope, forKey: .ropeParameters)
        try c.encodeIfPresent(dtype, forKey: .dtype)
        try c.encode(bosTokenIds, forKey: .bosTokenId)
        try c.encode(eosTokenIds, forKey: .eosTokenId)
    }

    /// Checks that the numbers describe a model the forward pass can run.
    public func validate() throws {
        func positive(_ v: Int, _ key: String) throws {
            if v <= 0 { throw ModelConfigError.invalidValue(key: key, reason: "must be > 0, got \(v)") }
        }
        try positive(hiddenSize, "hidden_size")
        try positive(numHiddenLayers, "num_hidden_layers")
        try positive(numAttentionHeads, "num_attention_heads")
        try positive(numKeyValueHeads, "num_key_value_heads")
        try positive(headDim, "head_dim")
        try positive(intermediateSize, "intermediate_size")
        try positive(vocabSize, "vocab_size")
        try positive(maxPositionEmbeddings, "max_position_embeddings")
        if headDim % 2 != 0 { throw ModelConfigError.invalidValue(key: "head_dim", reason: "must be even for RoPE, got \(headDim)") }
        if numAttentionHeads % numKeyValueHeads != 0 {
            throw ModelConfigError.invalidValue(
                key: "num_key_value_heads",
                reason: "\(numKeyValueHeads) does not divide num_attention_heads \(numAttentionHeads)")
        }
        if !(rmsNormEps > 0) { throw ModelConfigError.invalidValue(key: "rms_norm_eps", reason: "must be > 0") }
        if !(rope.theta > 0) { throw ModelConfigError.invalidValue(key: "rope_theta", reason: "must be > 0") }
        switch rope.ropeType {
        case "default":
            break
        case "linear":
            guard let f = rope.factor, f > 0 else {
                throw ModelConfigError.invalidValue(key: "rope_scaling.factor", reason: "linear scaling needs factor > 0")
            }
        case "llama3":
            guard let f = rope.factor, f > 0 else {
                throw ModelConfigError.invalidValue(key: "rope_scaling.factor", reason: "llama3 scaling needs factor > 0")
            }
            guard let lo = rope.lowFreqFactor, let hi = rope.highFreqFactor, hi != lo else {
                throw ModelConfigError.invalidValue(
                    key: "rope_scaling.low_freq_factor",
                    reason: "llama3 scaling needs low_freq_factor and high_freq_factor (different)")
            }
            guard let o = rope.originalMaxPositionEmbeddings, o > 0 else {
                throw ModelConfigError.invalidValue(
                    key: "rope_scaling.original_max_position_embeddings",
                    reason: "llama3 scaling needs original_max_position_embeddings > 0")
            }
        default:
            throw ModelConfigError.unsupported(key: "rope_scaling.rope_type", value: rope.ropeType)
        }
    }

    /// Reads `config.json` from a checkpoint directory (or the file itself).
    public static func load(from url: URL) throws -> ModelConfig {
        let file = url.hasDirectoryPath || engineIsDirectory(url) ? url.appendingPathComponent("config.json") : url
        let data: Data
        do { data = try Data(contentsOf: file) } catch {
            throw ModelConfigError.unreadable(file: file.path, reason: "\(error.localizedDescription)")
        }
        return try decode(data)
    }

    public static func decode(_ data: Data) throws -> ModelConfig {
        do { return try JSONDecoder().decode(ModelConfig.self, from: data) } catch let e as ModelConfigError { throw e } catch {
            throw ModelConfigError.unreadable(file: "config.json", reason: "not a JSON object: \(error)")
        }
    }
}

/// Sampling defaults from `generation_config.json`.
public struct GenerationDefaults: Codable, Sendable, Equatable {
    public var temperature: Float?
    public var topP: Float?
    public var topK: Int?
    public var doSample: Bool?
    public var eosTokenIds: [Int]
    public var bosTokenIds: [Int]

    public init(
        temperature: Float? = nil, topP: Float? = nil, topK: Int? = nil, doSample: Bool? = nil,
        eosTokenIds: [Int] = [], bosTokenIds: [Int] = []
    ) {
        self.temperature = temperature
        self.topP = topP
        self.topK = topK
        self.doSample = doSample
        self.eosTokenIds = eosTokenIds
        self.bosTokenIds = bosTokenIds
    }

    enum Keys: String, CodingKey {
        case temperature
        case topP = "top_p"
        case topK = "top_k"
        case doSample = "do_sample"
        case eosTokenId = "eos_token_id"
        case bosTokenId = "bos_token_id"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: Keys.self)
        func opt<T: Decodable>(_ k: Keys, _ t: T.Type) throws -> T? {
            guard c.contains(k), (try? c.decodeNil(forKey: k)) != true else { return nil }
            do { return try c.decode(T.self, forKey: k) } catch {
                throw ModelConfigError.invalidValue(key: "generation_config.\(k.rawValue)", reason: "expected \(T.self)")
            }
        }
        temperature = try opt(.temperature, Double.self).map(Float.init)
        topP = try opt(.topP, Double.self).map(Float.init)
        topK = try opt(.topK, Int.self)
        doSample = try opt(.doSample, Bool.self)
        eosTokenIds = try opt(.eosTokenId, IntOrList.self)?.values ?? []
        bosTokenIds = try opt(.bosTokenId, IntOrList.self)?.values ?? []
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        try c.encodeIfPresent(temperature, forKey: .temperature)
        try c.encodeIfPresent(topP, forKey: .topP)
        try c.encodeIfPresent(topK, forKey: .topK)
        try c.encodeIfPresent(doSample, forKey: .doSample)
        try c.encode(eosTokenIds, forKey: .eosTokenId)
        try c.encode(bosTokenIds, forKey: .bosTokenId)
    }

    /// Reads `generation_config.json` from a checkpoint directory; returns empty defaults if absent.
    public static func load(from directory: URL) throws -> GenerationDefaults {
        let file = directory.appendingPathComponent("generation_config.json")
        guard FileManager.default.fileExists(atPath: file.path) else { return GenerationDefaults() }
        let data = try Data(contentsOf: file)
        do { return try JSONDecoder().decode(GenerationDefaults.self, from: data) } catch let e as ModelConfigError { throw e } catch {
            throw ModelConfigError.unreadable(file: file.path, reason: "not a JSON object: \(error)")
        }
    }
}

/// `rope_scaling` / `rope_parameters` object as it appears in JSON.
struct RopeParametersJSON: Decodable {
    var ropeType: String?
    var type: String?
    var ropeTheta: Double?
    var factor: Double?
    var lowFreqFactor: Double?
    var highFreqFactor: Double?
    var originalMaxPositionEmbeddings: Int?
    enum CodingKeys: String, CodingKey {
        case ropeType = "rope_type"
        case type
        case ropeTheta = "rope_theta"
        case factor
        case lowFreqFactor = "low_freq_factor"
        case highFreqFactor = "high_freq_factor"
        case originalMaxPositionEmbeddings = "original_max_position_embeddings"
    }
}

/// A JSON value that is either one integer or a list of integers (`eos_token_id`).
struct IntOrList: Decodable {
    var values: [Int]
    init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if let v = try? c.decode(Int.self) { values = [v] } else { values = try c.decode([Int].self) }
    }
}
