import Foundation

/// Errors thrown by `TrafficDatabase`. Each names the offending record / field.
public enum TrafficLogError: Error, Equatable, CustomStringConvertible {
    /// A feedback row referenced an episode id that is not in the database.
    case unknownEpisode(id: String)
    /// An episode with this id is already stored.
    case duplicateEpisode(id: String)
    /// Two turns of one episode share an index.
    case duplicateTurnIndex(episodeID: String, index: Int)
    /// A field has a value outside its allowed set / range.
    case invalidField(record: String, field: String, value: String, reason: String)
    /// A policy version id is already registered with a different checkpoint hash.
    case policyVersionConflict(id: String, existingSHA256: String, newSHA256: String)
    /// The database file could not be created or its permissions set.
    case fileSetup(path: String, reason: String)
    /// A stored BLOB has a length that is not a multiple of the element size.
    case corruptBlob(episodeID: String, turnIndex: Int, column: String, byteCount: Int, elementSize: Int)

    public var description: String {
        switch self {
        case .unknownEpisode(let id):
            return "unknown episode id '\(id)' (feedback must reference an existing episode)"
        case .duplicateEpisode(let id):
            return "episode id '\(id)' is already stored"
        case .duplicateTurnIndex(let episodeID, let index):
            return "episode '\(episodeID)' has more than one turn with index \(index)"
        case .invalidField(let record, let field, let value, let reason):
            return "invalid \(record).\(field) = '\(value)': \(reason)"
        case .policyVersionConflict(let id, let existing, let new):
            return "policy version '\(id)' is already registered with sha256 \(existing), not \(new)"
        case .fileSetup(let path, let reason):
            return "cannot set up traffic database file '\(path)': \(reason)"
        case .corruptBlob(let episodeID, let turnIndex, let column, let byteCount, let elementSize):
            return "turns.\(column) of episode '\(episodeID)' turn \(turnIndex) has \(byteCount) bytes, not a multiple of \(elementSize)"
        }
    }
}

/// Errors thrown by `LogWriter`.
public enum LogWriterError: Error, Equatable, CustomStringConvertible {
    /// `append` / `appendAndWait` was called after `shutdown()` (or after `run()` was cancelled).
    case closed
    /// The database refused this episode permanently (e.g. duplicate id, invalid field);
    /// other episodes of the same batch were still committed.
    case rejected(episodeID: String, reason: String)
    /// The writer shut down while the database kept failing; this episode was NOT stored.
    case abandoned(episodeID: String, lastError: String)
    /// `flush()` covered episodes that were rejected or abandoned (count of them).
    case notAllCommitted(failed: Int, lastError: String)

    public var description: String {
        switch self {
        case .closed:
            return "traffic log writer is closed (shutdown was requested)"
        case .rejected(let id, let reason):
            return "traffic log rejected episode '\(id)': \(reason)"
        case .abandoned(let id, let lastError):
            return "traffic log shut down before episode '\(id)' could be committed; last error: \(lastError)"
        case .notAllCommitted(let failed, let lastError):
            return "\(failed) episode(s) covered by flush() were not committed; last error: \(lastError)"
        }
    }
}
