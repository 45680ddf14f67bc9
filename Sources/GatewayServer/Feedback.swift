import Foundation
import HTTPTypes
import Hummingbird
import NIOPosix
import OpenAIWire
import TrafficLog

/// POST /v1/feedback: attaches a reward signal to an episode.
/// `{"episode_id": ID, "score": 0..1}`, `{"episode_id": ID, "reference": "..."}` or
/// `{"episode_id": ID, "label": "..."}`, with an optional `"source"`.
struct FeedbackRoute: Sendable {
    let state: GatewayState

    struct Body: Decodable {
        var episodeID: String
        var score: Double?
        var reference: String?
        var label: String?
        var source: String?
        enum CodingKeys: String, CodingKey {
            case score, reference, label, source
            case episodeID = "episode_id"
        }
    }

    struct Reply: Encodable {
        var id: Int64
        var object = "feedback"
        var episodeID: String
        var kind: String
        enum CodingKeys: String, CodingKey {
            case id, object, kind
            case episodeID = "episode_id"
        }
    }

    func handle(_ request: Request, _ context: GatewayContext) async throws -> Response {
        var request = request
        let buffer = try await Replies.collectBody(&request, limit: 1 << 20)
        let bytes = Array(buffer.readableBytesView)
        do { _ = try state.scanner.scanObject(bytes) } catch { throw GatewayError.invalidJSON(error.description) }
        let body: Body
        do { body = try JSONDecoder().decode(Body.self, from: Data(bytes)) } catch let e as DecodingError {
            throw GatewayError.fromDecoding(e)
        }
        let given = [body.score != nil, body.reference != nil, body.label != nil].filter { $0 }.count
        guard given == 1 else {
            throw GatewayError.invalidField("score", "Send exactly one of 'score' (0 to 1), 'reference' (a reference answer) or 'label'.")
        }
        let kind: String
        let value: String
        if let score = body.score {
            guard score.isFinite, (0...1).contains(score) else {
                throw GatewayError.invalidField("score", "'score' must be between 0 and 1, got \(score).")
            }
            kind = "score"
            value = String(score)
        } else if let reference = body.reference {
            kind = "reference"
            value = reference
        } else {
            kind = "label"
            value = body.label ?? ""
        }
        // An episode may still sit in the writer's queue: make it durable first.
        if state.writer.isPending(episodeID: body.episodeID) { try await state.writer.flush() }
        let record = FeedbackRecord(episodeID: body.episodeID, kind: kind, value: value, source: body.source ?? "api")
        let notFound = GatewayError(
            status: 404, message: "No episode with id '\(body.episodeID.prefix(64))'.", type: "invalid_request_error",
            param: "episode_id", code: "episode_not_found")
        // With client keys configured, a key reaches only the episodes it created: another
        // key's episode answers exactly as an unknown id does.
        let scopedTo: String?? = state.auth.isEnabled ? .some(context.keyID) : .none
        let id: Int64
        do {
            let database = state.database
            if case .some(let key) = scopedTo {
                guard let owner = try await database.episode(id: record.episodeID), owner.keyID == key, key != nil else {
                    throw TrafficLogError.unknownEpisode(id: record.episodeID)
                }
            }
            id = try await database.insertFeedback(record)
        } catch TrafficLogError.unknownEpisode {
            throw notFound
        }
        return try Replies.json(Reply(id: id, episodeID: body.episodeID, kind: kind), context: context)
    }
}
