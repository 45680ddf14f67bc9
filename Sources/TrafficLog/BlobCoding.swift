import Foundation

/// Little-endian packing of numeric arrays into BLOB columns.
/// int32 and float32 use 4 bytes per element; UInt8 is stored as is.
public enum BlobCoding {
    public static func encode(_ values: [Int32]) -> Data {
        var data = Data(count: values.count * 4)
        data.withUnsafeMutableBytes { raw in
            for (i, v) in values.enumerated() {
                raw.storeBytes(of: v.littleEndian, toByteOffset: i * 4, as: Int32.self)
            }
        }
        return data
    }

    public static func encode(_ values: [Float]) -> Data {
        var data = Data(count: values.count * 4)
        data.withUnsafeMutableBytes { raw in
            for (i, v) in values.enumerated() {
                raw.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        }
        return data
    }

    public static func encode(_ values: [UInt8]) -> Data { Data(values) }

    /// nil when `data.count` is not a multiple of 4.
    public static func decodeInt32(_ data: Data) -> [Int32]? {
        guard data.count % 4 == 0 else { return nil }
        let n = data.count / 4
        return data.withUnsafeBytes { raw in
            (0..<n).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        }
    }

    /// nil when `data.count` is not a multiple of 4.
    public static func decodeFloat(_ data: Data) -> [Float]? {
        guard data.count % 4 == 0 else { return nil }
        let n = data.count / 4
        return data.withUnsafeBytes { raw in
            (0..<n).map {
                Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self)))
            }
        }
    }

    public static func decodeBytes(_ data: Data) -> [UInt8] { [UInt8](data) }
}
