import Foundation

/// Writes `.safetensors` files (used for checkpoints, tests and synthetic benchmark models): float32, or bf16
/// for the streamed writer (large synthetic models).
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

    /// The 8-byte length prefix plus JSON header for tensors of one dtype (F32 or BF16) stored back to back in
    /// this order.
    public static func header(
        _ entries: [(name: String, shape: [Int])], metadata: [String: String] = [:], dtype: SafetensorsDType = .F32
    ) throws -> Data {
        precondition(dtype == .F32 || dtype == .BF16, "SafetensorsWriter writes F32 or BF16")
        let width = dtype == .F32 ? 4 : 2
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for (name, shape) in entries {
            guard name != "__metadata__", header[name] == nil else {
                throw SafetensorsError.badEntry(file: "<write>", tensor: name, reason: "duplicate or reserved name")
            }
            let bytes = shape.reduce(1, *) * width
            header[name] = ["dtype": dtype.rawValue, "shape": shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
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

    /// Streams a large file: `fill(index, buffer)` writes tensor `index`'s values into `buffer`. With
    /// `dtype: .BF16` each value is rounded to bfloat16 (to nearest even) as it is written.
    public static func write(
        entries: [(name: String, shape: [Int])], metadata: [String: String] = [:], dtype: SafetensorsDType = .F32,
        to url: URL, fill: (Int, UnsafeMutableBufferPointer<Float>) -> Void
    ) throws {
        let head = try header(entries, metadata: metadata, dtype: dtype)
        guard FileManager.default.createFile(atPath: url.path, contents: head) else {
            throw SafetensorsError.io(file: url.path, reason: "cannot create file")
        }
        let fh = try FileHandle(forWritingTo: url)
        defer { try? fh.close() }
        try fh.seekToEnd()
        for (i, e) in entries.enumerated() {
            var buf = [Float](repeating: 0, count: e.shape.reduce(1, *))
            buf.withUnsafeMutableBufferPointer { fill(i, $0) }
            if dtype == .BF16 {
                let half = buf.map(bfloat16)
                try half.withUnsafeBytes { try fh.write(contentsOf: Data($0)) }
            } else {
                try buf.withUnsafeBytes { try fh.write(contentsOf: Data($0)) }
            }
        }
    }
}

/// float32 -> bfloat16 bits, rounded to nearest even (NaN stays NaN).
@inline(__always)
func bfloat16(_ f: Float) -> UInt16 {
    let b = f.bitPattern
    if f.isNaN { return UInt16(b >> 16) | 0x40 }
    return UInt16((b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16)
}
