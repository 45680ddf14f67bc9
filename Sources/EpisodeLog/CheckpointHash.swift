import Crypto
import Foundation

/// The identity of a checkpoint's weights, as the gateway reports a loaded policy's version and
/// the trainer records a parent in manifest.json.
public enum CheckpointHash {
    /// SHA-256 over the checkpoint's `*.safetensors` files in name order.
    public static func weightsSHA256(directory: URL) throws -> String {
        let files = try FileManager.default.contentsOfDirectory(atPath: directory.path)
            .filter { $0.hasSuffix(".safetensors") }.sorted()
        var hasher = SHA256()
        for name in files {
            let handle = try FileHandle(forReadingFrom: directory.appendingPathComponent(name))
            defer { try? handle.close() }
            while let chunk = try handle.read(upToCount: 4 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// The short version id: the first 16 hex digits of the digest.
    public static func versionID(sha256: String) -> String { String(sha256.prefix(16)) }
}
