import Foundation

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Errors from reading `.safetensors` files. Every case names the file and/or tensor at fault.
public enum SafetensorsError: Error, CustomStringConvertible, Equatable {
    case io(file: String, reason: String)
    case fileTooSmall(file: String, size: Int)
    case headerLengthOutOfBounds(file: String, headerLength: UInt64, fileSize: Int)
    case headerNotJSON(file: String, reason: String)
    case badEntry(file: String, tensor: String, reason: String)
    case unknownDtype(file: String, tensor: String, dtype: String)
    case overlap(file: String, first: String, second: String)
    case missingTensor(String)
    case shapeMismatch(tensor: String, expected: [Int], actual: [Int])
    case unsupportedDtype(tensor: String, dtype: String)
    case badIndex(file: String, reason: String)

    public var description: String {
        switch self {
        case .io(let f, let r): return "safetensors: cannot read \(f): \(r)"
        case .fileTooSmall(let f, let s): return "safetensors: \(f) is \(s) bytes, too small for a header"
        case .headerLengthOutOfBounds(let f, let n, let s):
            return "safetensors: \(f): header length \(n) does not fit in file of \(s) bytes"
        case .headerNotJSON(let f, let r): return "safetensors: \(f): header is not a JSON object: \(r)"
        case .badEntry(let f, let t, let r): return "safetensors: \(f): tensor '\(t)': \(r)"
        case .unknownDtype(let f, let t, let d): return "safetensors: \(f): tensor '\(t)' has unknown dtype '\(d)'"
        case .overlap(let f, let a, let b): return "safetensors: \(f): data of tensors '\(a)' and '\(b)' overlap"
        case .missingTensor(let t): return "safetensors: missing tensor '\(t)'"
        case .shapeMismatch(let t, let e, let a): return "safetensors: tensor '\(t)' has shape \(a), expected \(e)"
        case .unsupportedDtype(let t, let d): return "safetensors: tensor '\(t)' has dtype \(d); only F32, BF16, F16 are supported"
        case .badIndex(let f, let r): return "safetensors: index \(f): \(r)"
        }
    }
}

public enum SafetensorsDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL, F8_E4M3, F8_E5M2

    public var byteSize: Int {
        switch self {
        case .F64, .I64, .U64: return 8
        case .F32, .I32, .U32: return 4
        case .F16, .BF16, .I16, .U16: return 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2: return 1
        }
    }
}

public struct SafetensorsTensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: SafetensorsDType
    public var shape: [Int]
    /// Byte range relative to the start of the data region (after the header).
    public var dataOffsets: Range<Int>
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A read-only memory mapping of a whole file. Immutable after init; unmapped on deinit.
final class MappedFile: @unchecked Sendable {
    let base: UnsafeRawPointer?
    let size: Int
    let path: String

    init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw SafetensorsError.io(file: path, reason: String(cString: strerror(errno))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw SafetensorsError.io(file: path, reason: String(cString: strerror(errno))) }
        size = Int(st.st_size)
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else {
            throw SafetensorsError.io(file: path, reason: "mmap failed: \(String(cString: strerror(errno)))")
        }
        base = UnsafeRawPointer(p)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    }
}

/// One parsed `.safetensors` file, memory-mapped.
public final class SafetensorsFile: @unchecked Sendable {  // immutable after init
    public let url: URL
    public let tensors: [String: SafetensorsTensorInfo]
    public let metadata: [String: String]
    let mapping: MappedFile
    /// Offset of the data region inside the file.
    let dataStart: Int

    /// Header size limit (same as the reference implementation: 100 MB).
    public static let maxHeaderLength: UInt64 = 100_000_000

    public convenience init(url: URL) throws {
        try self.init(mapping: MappedFile(path: url.path), url: url)
    }

    init(mapping: MappedFile, url: URL) throws {
        self.url = url
        self.mapping = mapping
        let file = url.lastPathComponent
        let size = mapping.size
        guard size >= 8, let base = mapping.base else { throw SafetensorsError.fileTooSmall(file: file, size: size) }
        var n: UInt64 = 0
        for i in 0..<8 { n |= UInt64(base.load(fromByteOffset: i, as: UInt8.self)) << (8 * UInt64(i)) }
        guard n >= 2, n <= UInt64(size - 8), n <= Self.maxHeaderLength else {
            throw SafetensorsError.headerLengthOutOfBounds(file: file, headerLength: n, fileSize: size)
        }
        let headerLength = Int(n)
        dataStart = 8 + headerLength
        let dataSize = size - dataStart
        let headerData = Data(bytes: base + 8, count: headerLength)
        let object: Any
        do { object = try JSONSerialization.jsonObject(with: headerData, options: []) } catch {
            throw SafetensorsError.headerNotJSON(file: file, reason: "\(error.localizedDescription)")
        }
        guard let dict = object as? [String: Any] else {
            throw SafetensorsError.headerNotJSON(file: file, reason: "top level is not an object")
        }
        var tensors: [String: SafetensorsTensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in dict {
            if name == "__metadata__" {
                if let m = value as? [String: Any] {
                    for (k, v) in m { if let s = v as? String { metadata[k] = s } }
                }
                continue
            }
            guard let entry = value as? [String: Any] else {
                throw SafetensorsError.badEntry(file: file, tensor: name, reason: "entry is not an object")
            }
            guard let dtypeName = entry["dtype"] as? String else {
                throw SafetensorsError.badEntry(file: file, tensor: name, reason: "missing or non-string 'dtype'")
            }
            guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
                throw SafetensorsError.unknownDtype(file: file, tensor: name, dtype: dtypeName)
            }
            guard let shapeAny = entry["shape"] as? [Any] else {
                throw SafetensorsError.badEntry(file: file, tensor: name, reason: "missing or non-array 'shape'")
            }
            var shape: [Int] = []
            var count = 1
            for d in shapeAny {
                guard let v = Self.exactInt(d), v >= 0 else {
                    throw SafetensorsError.badEntry(file: file, tensor: name, reason: "shape entry \(d) is not a non-negative integer")
                }
                shape.append(v)
                let (m, o) = count.multipliedReportingOverflow(by: v)
                guard !o else { throw SafetensorsError.badEntry(file: file, tensor: name, reason: "shape \(shape) overflows") }
                count = m
            }
            guard let offs = entry["data_offsets"] as? [Any], offs.count == 2,
                let begin = Self.exactInt(offs[0]), let end = Self.exactInt(offs[1])
            else {
                throw SafetensorsError.badEntry(file: file, tensor: name, reason: "'data_offsets' must be two integers")
            }
            guard begin >= 0, begin <= end, end <= dataSize else {
                throw SafetensorsError.badEntry(
                    file: file, tensor: name,
                    reason: "data_offsets [\(begin), \(end)] outside the data region of \(dataSize) bytes")
            }
            let (bytes, o) = count.multipliedReportingOverflow(by: dtype.byteSize)
            guard !o, bytes == end - begin else {
                throw SafetensorsError.badEntry(
                    file: file, tensor: name,
                    reason: "byte length \(end - begin) != \(count) elements x \(dtype.byteSize) bytes for shape \(shape)")
            }
            tensors[name] = SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
        }
        let sorted = tensors.values.filter { !$0.dataOffsets.isEmpty }
            .sorted { ($0.dataOffsets.lowerBound, $0.name) < ($1.dataOffsets.lowerBound, $1.name) }
        if sorted.count > 1 {
            for i in 1..<sorted.count where sorted[i].dataOffsets.lowerBound < sorted[i - 1].dataOffsets.upperBound {
                throw SafetensorsError.overlap(file: file, first: sorted[i - 1].name, second: sorted[i].name)
            }
        }
        self.tensors = tensors
        self.metadata = metadata
    }

    private static func exactInt(_ v: Any) -> Int? {
        if type(of: v) == Bool.self { return nil }
        if let i = v as? Int { return i }
        if let n = v as? NSNumber {
            let d = n.doubleValue
            if d.rounded() == d, abs(d) < 9.0e15 { return Int(d) }
        }
        return nil
    }

    /// Raw pointer to the bytes of a tensor (inside the mapping; valid while this file is alive).
    func rawPointer(_ info: SafetensorsTensorInfo) -> UnsafeRawPointer {
        mapping.base! + dataStart + info.dataOffsets.lowerBound
    }
}

/// A dense float32 tensor, either borrowed from a memory mapping (no copy) or owned.
public final class FloatTensor: @unchecked Sendable {  // contents are never mutated after load
    public let shape: [Int]
    public let pointer: UnsafePointer<Float>
    public let count: Int
    /// True when the data lives inside the file mapping (zero-copy).
    public let isMapped: Bool
    private let owner: AnyObject?
    private let owned: UnsafeMutablePointer<Float>?

    init(mapped pointer: UnsafePointer<Float>, shape: [Int], owner: AnyObject) {
        self.shape = shape
        self.pointer = pointer
        self.count = shape.reduce(1, *)
        self.isMapped = true
        self.owner = owner
        self.owned = nil
    }

    /// Takes ownership of `buffer` (allocated with `UnsafeMutablePointer<Float>.allocate`).
    init(owning buffer: UnsafeMutablePointer<Float>, shape: [Int]) {
        self.shape = shape
        self.pointer = UnsafePointer(buffer)
        self.count = shape.reduce(1, *)
        self.isMapped = false
        self.owner = nil
        self.owned = buffer
    }

    public convenience init(_ values: [Float], shape: [Int]) {
        precondition(values.count == shape.reduce(1, *), "FloatTensor: \(values.count) values for shape \(shape)")
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(values.count, 1))
        values.withUnsafeBufferPointer { if let b = $0.baseAddress { p.update(from: b, count: values.count) } }
        self.init(owning: p, shape: shape)
    }

    deinit { owned?.deallocate() }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}

/// All tensors of a checkpoint: one `model.safetensors` or shards listed in `model.safetensors.index.json`.
public final class SafetensorsCheckpoint: @unchecked Sendable {  // immutable after init
    public let files: [SafetensorsFile]
    private let location: [String: Int]

    public init(files: [SafetensorsFile], weightMap: [String: Int]? = nil) throws {
        self.files = files
        var loc: [String: Int] = [:]
        if let weightMap {
            for (name, i) in weightMap {
                guard files[i].tensors[name] != nil else {
                    throw SafetensorsError.badIndex(
                        file: files[i].url.lastPathComponent,
                        reason: "tensor '\(name)' is listed for this shard but not present in it")
                }
                loc[name] = i
            }
        } else {
            for (i, f) in files.enumerated() {
                for name in f.tensors.keys {
                    if loc[name] != nil {
                        throw SafetensorsError.badIndex(file: f.url.lastPathComponent, reason: "tensor '\(name)' appears in two files")
                    }
                    loc[name] = i
                }
            }
        }
        location = loc
    }

    /// Opens `model.safetensors.index.json` (sharded) or `model.safetensors` in `directory`.
    public static func open(directory: URL) throws -> SafetensorsCheckpoint {
        let fm = FileManager.default
        let index = directory.appendingPathComponent("model.safetensors.index.json")
        if fm.fileExists(atPath: index.path) {
            let data: Data
            do { data = try Data(contentsOf: index) } catch {
                throw SafetensorsError.io(file: index.lastPathComponent, reason: error.localizedDescription)
            }
            guard let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
                let map = obj["weight_map"] as? [String: Any]
            else {
                throw SafetensorsError.badIndex(file: index.lastPathComponent, reason: "no 'weight_map' object")
            }
            var shardIndex: [String: Int] = [:]
            var files: [SafetensorsFile] = []
            var weightMap: [String: Int] = [:]
            for (name, v) in map.sorted(by: { $0.key < $1.key }) {
                guard let shard = v as? String, !shard.isEmpty, !shard.contains("/"), shard != "..", shard != "." else {
                    throw SafetensorsError.badIndex(file: index.lastPathComponent, reason: "bad shard file name for '\(name)'")
                }
                if shardIndex[shard] == nil {
                    shardIndex[shard] = files.count
                    files.append(try SafetensorsFile(url: directory.appendingPathComponent(shard)))
                }
                weightMap[name] = shardIndex[shard]!
            }
            return try SafetensorsCheckpoint(files: files, weightMap: weightMap)
        }
        let single = directory.appendingPathComponent("model.safetensors")
        guard fm.fileExists(atPath: single.path) else {
            throw SafetensorsError.io(file: directory.path, reason: "no model.safetensors or model.safetensors.index.json")
        }
        return try SafetensorsCheckpoint(files: [SafetensorsFile(url: single)])
    }

    public var tensorNames: [String] { location.keys.sorted() }

    public func info(_ name: String) -> SafetensorsTensorInfo? {
        location[name].flatMap { files[$0].tensors[name] }
    }

    public func contains(_ name: String) -> Bool { location[name] != nil }

    /// Loads a tensor as float32, checking its shape. F32 data that is 4-byte aligned in the mapping is
    /// used in place; BF16/F16 (and misaligned F32) are converted into an owned buffer.
    public func floatTensor(_ name: String, shape expected: [Int]) throws -> FloatTensor {
        guard let fi = location[name], let info = files[fi].tensors[name] else { throw SafetensorsError.missingTensor(name) }
        guard info.shape == expected else {
            throw SafetensorsError.shapeMismatch(tensor: name, expected: expected, actual: info.shape)
        }
        let file = files[fi]
        let raw = file.rawPointer(info)
        let n = info.elementCount
        switch info.dtype {
        case .F32:
            if Int(bitPattern: raw) % MemoryLayout<Float>.alignment == 0 {
                return FloatTensor(mapped: raw.assumingMemoryBound(to: Float.self), shape: expected, owner: file)
            }
            let out = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            UnsafeMutableRawPointer(out).copyMemory(from: raw, byteCount: n * 4)
            return FloatTensor(owning: out, shape: expected)
        case .BF16:
            let out = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            for i in 0..<n {
                let b =
                    UInt16(raw.load(fromByteOffset: 2 * i, as: UInt8.self))
                    | UInt16(raw.load(fromByteOffset: 2 * i + 1, as: UInt8.self)) << 8
                out[i] = Float(bitPattern: UInt32(b) << 16)
            }
            return FloatTensor(owning: out, shape: expected)
        case .F16:
            let out = UnsafeMutablePointer<Float>.allocate(capacity: max(n, 1))
            for i in 0..<n {
                let h =
                    UInt16(raw.load(fromByteOffset: 2 * i, as: UInt8.self))
                    | UInt16(raw.load(fromByteOffset: 2 * i + 1, as: UInt8.self)) << 8
                out[i] = halfToFloat(h)
            }
            return FloatTensor(owning: out, shape: expected)
        default:
            throw SafetensorsError.unsupportedDtype(tensor: name, dtype: info.dtype.rawValue)
        }
    }
}

/// IEEE 754 binary16 -> binary32 (exact; handles subnormals, inf, NaN).
@inline(__always)
func halfToFloat(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exp = Int((h >> 10) & 0x1F)
    let mant = UInt32(h & 0x3FF)
    if exp == 0 {
        if mant == 0 { return Float(bitPattern: sign) }
        // Subnormal: value = mant * 2^-24
        let v = Float(mant) * Float(bitPattern: 0x3380_0000)  // 2^-24
        return sign != 0 ? -v : v
    }
    if exp == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
    return Float(bitPattern: sign | UInt32(exp - 15 + 127) << 23 | (mant << 13))
}

func engineIsDirectory(_ url: URL) -> Bool {
    var isDir: ObjCBool = false
    return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDir) && isDir.boolValue
}
