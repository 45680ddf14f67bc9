import Foundation
import PromptR1

// Plain value types stored by `TrafficDatabase`. No GRDB types leak into this
// public surface, so callers (server, trainer) only need `import TrafficLog`.
//
// Dates: the database stores instants as REAL seconds since 1970-01-01 UTC.
// `Date` keeps seconds since 2001 internally, and converting between the two
// epochs is not exact in binary floating point for about half of all `Date()`
// values. To make `record == fetchedRecord` hold exactly, every date stored in
// these records is normalised on assignment (see `TrafficTime.normalized`),
// which moves it by less than 0.25 µs.

/// One request handled by the gateway, with every upstream / policy turn.
public struct EpisodeRecord: Sendable, Equatable {
    /// UUIDv7 string (lowercase, hyphenated). See `UUIDv7.generate()`.
    public var id: String
    public var createdAt: Date { didSet { createdAt = TrafficTime.normalized(createdAt) } }
    /// e.g. "/v1/chat/completions"
    public var route: String
    /// "passthrough" | "collaborate"
    public var mode: String
    /// Hashed client key id, never the key itself.
    public var keyID: String?
    public var requestedModel: String?
    public var upstreamModel: String?
    /// Policy version id; nil in passthrough.
    public var policyVersion: String?
    public var stream: Bool
    /// The request body as received (possibly redacted by the server).
    public var requestJSON: String?
    /// The assembled assistant text sent to the client.
    public var responseText: String?
    public var finishReason: String?
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var totalTokens: Int?
    public var policyTokens: Int?
    /// HTTP status sent to the client.
    public var status: Int
    /// "ok", "client_disconnected", "upstream_error", "answer", "no_answer", "fallback", "error", ...
    public var outcome: String?
    public var error: String?
    /// Collaboration: the question (training grouping key).
    public var question: String?
    public var formatScore: Double?
    public var totalMs: Double
    public var upstreamMs: Double?
    public var overheadMs: Double?
    /// Turns in `index` order (the database returns them sorted by index).
    public var turns: [TurnRecord]
    /// False when the texts and token ids were redacted: nothing to train on.
    public var trainable = true
    /// Which distribution the policy turns' `logprobs` come from (`sampling` or `model`); nil:
    /// no policy session (passthrough), or logged before migration v4_policy_logprobs.
    public var policyLogprobs: PolicyLogprobKind?
    /// Whether the policy sampled (temperature > 0) rather than decoded greedily; nil: unknown.
    /// `model` log-probs of a sampled episode are not the behaviour policy's (`--behaviour base`).
    public var policySampled: Bool?

    public init(
        id: String = UUIDv7.generate(),
        createdAt: Date = Date(),
        route: String,
        mode: String = "passthrough",
        keyID: String? = nil,
        requestedModel: String? = nil,
        upstreamModel: String? = nil,
        policyVersion: String? = nil,
        stream: Bool = false,
        requestJSON: String? = nil,
        responseText: String? = nil,
        finishReason: String? = nil,
        promptTokens: Int? = nil,
        completionTokens: Int? = nil,
        totalTokens: Int? = nil,
        policyTokens: Int? = nil,
        status: Int = 200,
        outcome: String? = nil,
        error: String? = nil,
        question: String? = nil,
        formatScore: Double? = nil,
        totalMs: Double = 0,
        upstreamMs: Double? = nil,
        overheadMs: Double? = nil,
        turns: [TurnRecord] = []
    ) {
        self.id = id
        self.createdAt = TrafficTime.normalized(createdAt)
        self.route = route
        self.mode = mode
        self.keyID = keyID
        self.requestedModel = requestedModel
        self.upstreamModel = upstreamModel
        self.policyVersion = policyVersion
        self.stream = stream
        self.requestJSON = requestJSON
        self.responseText = responseText
        self.finishReason = finishReason
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = totalTokens
        self.policyTokens = policyTokens
        self.status = status
        self.outcome = outcome
        self.error = error
        self.question = question
        self.formatScore = formatScore
        self.totalMs = totalMs
        self.upstreamMs = upstreamMs
        self.overheadMs = overheadMs
        self.turns = turns
    }
}

/// One model call inside an episode: an upstream LLM call or a policy generation.
public struct TurnRecord: Sendable, Equatable {
    /// Position in the episode; unique per episode.
    public var index: Int
    /// "upstream" | "policy" (see `TurnRecord.validKinds`).
    public var kind: String
    /// Token ids fed to the model (BLOB, little-endian int32).
    public var inputIDs: [Int32]?
    /// Token ids produced by the model (BLOB, little-endian int32).
    public var outputIDs: [Int32]?
    /// Per output token log-probabilities (BLOB, little-endian float32).
    public var logprobs: [Float]?
    /// Per token loss mask (BLOB, one byte per token).
    public var lossMask: [UInt8]?
    public var text: String?
    /// The parsed call prompt, or a protocol error string.
    public var call: String?
    /// JSON sent upstream.
    public var upstreamRequest: String?
    public var upstreamResponse: String?
    public var latencyMs: Double?
    public var promptTokens: Int?
    public var completionTokens: Int?
    public var status: Int?
    public var error: String?

    public static let validKinds: Set<String> = ["upstream", "policy"]

    public init(
        index: Int,
        kind: String,
        inputIDs: [Int32]? = nil,
        outputIDs: [Int32]? = nil,
        logprobs: [Float]? = nil,
        lossMask: [UInt8]? = nil,
        text: String? = nil,
        call: String? = nil,
        upstreamRequest: String? = nil,
        upstreamResponse: String? = nil,
        latencyMs: Double? = nil,
        promptTokens: Int? = nil,
        completionTokens: Int? = nil,
        status: Int? = nil,
        error: String? = nil
    ) {
        self.index = index
        self.kind = kind
        self.inputIDs = inputIDs
        self.outputIDs = outputIDs
        self.logprobs = logprobs
        self.lossMask = lossMask
        self.text = text
        self.call = call
        self.upstreamRequest = upstreamRequest
        self.upstreamResponse = upstreamResponse
        self.latencyMs = latencyMs
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.status = status
        self.error = error
    }
}

/// Feedback attached to an episode after the fact (reward sources for training).
public struct FeedbackRecord: Sendable, Equatable {
    /// Assigned by the database on insert (nil before).
    public var id: Int64?
    public var episodeID: String
    /// "score" | "reference" | "label" (see `FeedbackRecord.validKinds`).
    public var kind: String
    public var value: String
    public var source: String?
    public var createdAt: Date { didSet { createdAt = TrafficTime.normalized(createdAt) } }

    public static let validKinds: Set<String> = ["score", "reference", "label"]
    /// Kinds that count as a reward source for `EpisodeQuery.hasRewardSource`.
    public static let rewardKinds: Set<String> = ["score", "reference"]

    public init(
        id: Int64? = nil, episodeID: String, kind: String, value: String,
        source: String? = nil, createdAt: Date = Date()
    ) {
        self.id = id
        self.episodeID = episodeID
        self.kind = kind
        self.value = value
        self.source = source
        self.createdAt = TrafficTime.normalized(createdAt)
    }
}

/// A policy checkpoint the gateway has loaded.
public struct PolicyVersionRecord: Sendable, Equatable {
    public var id: String
    public var path: String
    public var sha256: String
    public var architecture: String
    public var parameterCount: Int
    public var loadedAt: Date { didSet { loadedAt = TrafficTime.normalized(loadedAt) } }
    public var parentID: String?
    public var manifestJSON: String?

    public init(
        id: String, path: String, sha256: String, architecture: String,
        parameterCount: Int, loadedAt: Date = Date(), parentID: String? = nil,
        manifestJSON: String? = nil
    ) {
        self.id = id
        self.path = path
        self.sha256 = sha256
        self.architecture = architecture
        self.parameterCount = parameterCount
        self.loadedAt = TrafficTime.normalized(loadedAt)
        self.parentID = parentID
        self.manifestJSON = manifestJSON
    }
}

/// Filters for `TrafficDatabase.episodes(_:)`. All filters are ANDed; nil means "any".
/// Results are ordered by (createdAt, id) ascending.
public struct EpisodeQuery: Sendable, Equatable {
    /// Inclusive lower bound on createdAt.
    public var since: Date?
    /// Exclusive upper bound on createdAt.
    public var until: Date?
    public var route: String?
    public var mode: String?
    public var policyVersion: String?
    /// true: only episodes with at least one "reference" or "score" feedback;
    /// false: only episodes with none; nil: no filter.
    public var hasRewardSource: Bool?
    /// Maximum number of episodes returned (nil = no limit).
    public var limit: Int?
    public var offset: Int
    /// When false, `turns` is left empty (cheaper listings).
    public var includeTurns: Bool

    public init(
        since: Date? = nil, until: Date? = nil, route: String? = nil, mode: String? = nil,
        policyVersion: String? = nil, hasRewardSource: Bool? = nil, limit: Int? = nil,
        offset: Int = 0, includeTurns: Bool = true
    ) {
        self.since = since
        self.until = until
        self.route = route
        self.mode = mode
        self.policyVersion = policyVersion
        self.hasRewardSource = hasRewardSource
        self.limit = limit
        self.offset = offset
        self.includeTurns = includeTurns
    }
}

/// Conversions between `Date` and the database's REAL "seconds since 1970" column values.
public enum TrafficTime {
    /// The value stored in the database for `date`.
    @inlinable public static func databaseValue(_ date: Date) -> Double { date.timeIntervalSince1970 }

    /// The date for a stored value.
    @inlinable public static func date(_ value: Double) -> Date { Date(timeIntervalSince1970: value) }

    /// `date` moved (by < 0.25 µs) to the nearest instant that survives the
    /// Date -> unix seconds -> Date round trip bit-exactly. Idempotent for dates
    /// between 1985 and 2031 (outside that range the round trip may still be off
    /// by one ulp; equality of such far dates is not guaranteed).
    @inlinable public static func normalized(_ date: Date) -> Date {
        Date(timeIntervalSince1970: date.timeIntervalSince1970)
    }
}
