import Foundation

/// Writes float32 `.safetensors` files (used for checkpoints, tests and synthetic benchmark models).
public enum SafetensorsWriter {
    public struct Tensor: Sendable {
        public var name: String
        public var shape: [Int]
        public var values: [Float]
        public init(name: String, shape: [Int], values: [Float]) {
            self.name = name
            self.shape = shape
            self.values = values
        }
    }

    /// Serialises tensors (F32, in the given order) with an 8-byte aligned header.
    public static func encode(_ tensors: [Tensor], metadata: [String: String] = [:]) throws -> Data {
        var out = try header(tensors.map { ($0.name, $0.shape) }, metadata: metadata)
        for t in tensors {
            guard t.values.count == t.shape.reduce(1, *) else {
                throw SafetensorsError.badEntry(
                    file: "<write>", tensor: t.name,
                    reason: "\(t.values.count) values for shape \(t.shape)")
            }
            t.values.withUnsafeBytes { out.append(contentsOf: $0) }
        }
        return out
    }

    /// The 8-byte length prefix plus JSON header for F32 tensors stored back to back in this order.
    public static func header(_ entries: [(name: String, shape: [Int])], metadata: [String: String] = [:]) throws -> Data {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for (name, shape) in entries {
            guard name != "__metadata__", header[name] == nil else {
                throw SafetensorsError.badEntry(file: "<write>", tensor: name, reason: "duplicate or reserved name")
            }
            let bytes = shape.reduce(1, *) * 4
            header[name] = ["dtype": "F32", "shape": shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(0x20) }
        var out = Data(capacity: 8 + json.count)
        var n = UInt64(json.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(json)
        return out
    }

    public static func write(_ tensors: [Tensor], metadata: [String: String] = [:], to url: URL) throws {
        try encode(tensors, metadata: metadata).write(to: url)
    }

    /// Streams a large file: `fill(index, buffer)` writes tensor `index`'s values into `buffer`.
    public static func write(
        entries: [(name: String, shape: [Int])], metadata: [String: String] = [:], to url: URL,
        fill: (Int, UnsafeMutableBufferPointer<Float>) -> Void
    ) throws {
        let head = try header(entries, metadata: metadata)
        guard FileManager.default.createFile(atPath: url.path, contents: head) else {
            throw SafetensorsError.io(file: url.path, reason: "cannot create file")
        }
        let fh = try FileHandle(forWritingTo: url)
        defer { try? fh.close() }
        try fh.seekToEnd()
        for (i, e) in entries.enumerated() {
            var buf = [Float](repeating: 0, count: e.shape.reduce(1, *))
            buf.withUnsafeMutableBufferPointer { fill(i, $0) }
            try buf.withUnsafeBytes { try fh.write(contentsOf: Data($0)) }
        }
    }
}
