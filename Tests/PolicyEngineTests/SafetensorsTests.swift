import Foundation
import XCTest

@testable import PolicyEngine

final class SafetensorsTests: XCTestCase {
    /// Builds a raw file: 8-byte LE length, header bytes (padded with spaces to `pad`), data.
    func rawFile(header: String, data: [UInt8], declaredLength: UInt64? = nil, pad: Int = 8) -> Data {
        var h = Array(header.utf8)
        while (8 + h.count) % pad != 0 { h.append(0x20) }
        var out = Data()
        var n = (declaredLength ?? UInt64(h.count)).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(contentsOf: h)
        out.append(contentsOf: data)
        return out
    }

    func write(_ data: Data, name: String = "model.safetensors") throws -> URL {
        let url = try EngineFixtures.tempDirectory(self).appendingPathComponent(name)
        try data.write(to: url)
        return url
    }

    func floats(_ v: [Float]) -> [UInt8] { v.withUnsafeBytes { Array($0) } }

    func expectError(
        _ data: Data, file: StaticString = #filePath, line: UInt = #line,
        _ check: (SafetensorsError) -> Bool
    ) throws {
        let url = try write(data)
        do {
            _ = try SafetensorsFile(url: url)
            XCTFail("expected an error", file: file, line: line)
        } catch let e as SafetensorsError {
            XCTAssertTrue(check(e), "unexpected error \(e)", file: file, line: line)
        }
    }

    func testRoundTripAndMetadataIgnored() throws {
        let data = try SafetensorsWriter.encode(
            [
                .init(name: "a", shape: [2, 3], values: [1, 2, 3, 4, 5, 6]),
                .init(name: "b", shape: [1], values: [-7.5]),
                .init(name: "empty", shape: [0, 4], values: []),
            ], metadata: ["format": "pt"])
        let url = try write(data)
        let f = try SafetensorsFile(url: url)
        XCTAssertEqual(Set(f.tensors.keys), ["a", "b", "empty"])
        XCTAssertEqual(f.metadata["format"], "pt")
        let ck = try SafetensorsCheckpoint(files: [f])
        let a = try ck.floatTensor("a", shape: [2, 3])
        XCTAssertEqual(a.array, [1, 2, 3, 4, 5, 6])
        XCTAssertTrue(a.isMapped)
        XCTAssertEqual(try ck.floatTensor("b", shape: [1]).array, [-7.5])
        XCTAssertEqual(try ck.floatTensor("empty", shape: [0, 4]).count, 0)
    }

    func testMissingTensorAndWrongShapeNameTheTensor() throws {
        let url = try write(SafetensorsWriter.encode([.init(name: "w", shape: [2, 2], values: [1, 2, 3, 4])]))
        let ck = try SafetensorsCheckpoint(files: [SafetensorsFile(url: url)])
        XCTAssertThrowsError(try ck.floatTensor("nope", shape: [1])) {
            XCTAssertEqual($0 as? SafetensorsError, .missingTensor("nope"))
            XCTAssertTrue("\($0)".contains("nope"))
        }
        XCTAssertThrowsError(try ck.floatTensor("w", shape: [4])) {
            XCTAssertEqual($0 as? SafetensorsError, .shapeMismatch(tensor: "w", expected: [4], actual: [2, 2]))
        }
    }

    func testTooSmallAndBadHeaderLengths() throws {
        try expectError(Data([1, 2, 3])) {
            if case .fileTooSmall = $0 { return true }
            return false
        }
        try expectError(Data()) {
            if case .fileTooSmall = $0 { return true }
            return false
        }
        // Declared header longer than the file.
        try expectError(rawFile(header: "{}", data: [], declaredLength: 1000)) {
            if case .headerLengthOutOfBounds = $0 { return true }
            return false
        }
        // Huge declared length (would overflow naive arithmetic).
        try expectError(rawFile(header: "{}", data: [], declaredLength: UInt64.max)) {
            if case .headerLengthOutOfBounds = $0 { return true }
            return false
        }
        try expectError(rawFile(header: "{}", data: [], declaredLength: UInt64(Int.max))) {
            if case .headerLengthOutOfBounds = $0 { return true }
            return false
        }
    }

    func testTruncatedFileAndNonJSONHeader() throws {
        let good = try SafetensorsWriter.encode([.init(name: "a", shape: [4], values: [1, 2, 3, 4])])
        // Cut inside the header: declared length now exceeds the file.
        try expectError(good.prefix(20)) {
            if case .headerLengthOutOfBounds = $0 { return true }
            return false
        }
        // Cut inside the data: offsets run past the data region.
        try expectError(good.prefix(good.count - 3)) {
            if case .badEntry(_, "a", let r) = $0 { return r.contains("outside") }
            return false
        }
        try expectError(rawFile(header: "{\"a\": ", data: [])) {
            if case .headerNotJSON = $0 { return true }
            return false
        }
        try expectError(rawFile(header: "[1, 2]", data: [])) {
            if case .headerNotJSON = $0 { return true }
            return false
        }
        try expectError(rawFile(header: "\u{00}\u{01}garbage", data: [])) {
            if case .headerNotJSON = $0 { return true }
            return false
        }
    }

    func testBadEntries() throws {
        let d = floats([1, 2, 3, 4])
        func bad(_ header: String, _ tensor: String, _ fragment: String, line: UInt = #line) throws {
            try expectError(rawFile(header: header, data: d), line: line) {
                if case .badEntry(_, let t, let r) = $0 { return t == tensor && r.contains(fragment) }
                return false
            }
        }
        try bad(#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0,32]}}"#, "x", "outside")
        try bad(#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[8,4]}}"#, "x", "outside")
        try bad(#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[-4,16]}}"#, "x", "outside")
        try bad(#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#, "x", "byte length")
        try bad(#"{"x":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}}"#, "x", "shape")
        try bad(#"{"x":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}}"#, "x", "shape")
        try bad(#"{"x":{"dtype":"F32","shape":"4","data_offsets":[0,16]}}"#, "x", "shape")
        try bad(#"{"x":{"dtype":"F32","shape":[4]}}"#, "x", "data_offsets")
        try bad(#"{"x":{"dtype":"F32","shape":[4],"data_offsets":[0]}}"#, "x", "data_offsets")
        try bad(#"{"x":{"shape":[4],"data_offsets":[0,16]}}"#, "x", "dtype")
        try bad(#"{"x":[1,2]}"#, "x", "not an object")
        try bad(#"{"x":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#, "x", "overflow")
        try expectError(rawFile(header: #"{"x":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}"#, data: d)) {
            $0 == .unknownDtype(file: "model.safetensors", tensor: "x", dtype: "Q4")
        }
        try expectError(
            rawFile(
                header: #"{"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"y":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                data: d)
        ) {
            $0 == .overlap(file: "model.safetensors", first: "x", second: "y")
        }
    }

    func testUnsupportedDtypeOnLoad() throws {
        let url = try write(rawFile(header: #"{"ids":{"dtype":"I64","shape":[2],"data_offsets":[0,16]}}"#, data: floats([1, 2, 3, 4])))
        let ck = try SafetensorsCheckpoint(files: [SafetensorsFile(url: url)])
        XCTAssertThrowsError(try ck.floatTensor("ids", shape: [2])) {
            XCTAssertEqual($0 as? SafetensorsError, .unsupportedDtype(tensor: "ids", dtype: "I64"))
        }
    }

    func testBF16AndF16Conversion() throws {
        // bf16: 1.0 = 0x3F80, -2.5 = 0xC020; f16: 1.0 = 0x3C00, -2.5 = 0xC100, 65504 = 0x7BFF, 2^-24 = 0x0001,
        // +inf = 0x7C00, -0 = 0x8000.
        let bf: [UInt16] = [0x3F80, 0xC020]
        let hf: [UInt16] = [0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00, 0x8000]
        let bytes = (bf + hf).flatMap { [UInt8($0 & 0xFF), UInt8($0 >> 8)] }
        let header = #"{"b":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"h":{"dtype":"F16","shape":[2,3],"data_offsets":[4,16]}}"#
        let url = try write(rawFile(header: header, data: bytes))
        let ck = try SafetensorsCheckpoint(files: [SafetensorsFile(url: url)])
        let b = try ck.floatTensor("b", shape: [2])
        XCTAssertEqual(b.array, [1, -2.5])
        XCTAssertFalse(b.isMapped)
        let h = try ck.floatTensor("h", shape: [2, 3]).array
        XCTAssertEqual(Array(h[0..<3]), [1, -2.5, 65504])
        XCTAssertEqual(h[3], Float(1) / Float(1 << 24))
        XCTAssertEqual(h[4], .infinity)
        XCTAssertEqual(h[5], 0)
        XCTAssertEqual(h[5].sign, .minus)
    }

    func testMisalignedF32IsCopied() throws {
        // Header padded so that the data region starts at an odd offset.
        var hdr = Array(#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#.utf8)
        while (8 + hdr.count) % 4 != 1 { hdr.append(0x20) }
        var data = Data()
        var n = UInt64(hdr.count).littleEndian
        withUnsafeBytes(of: &n) { data.append(contentsOf: $0) }
        data.append(contentsOf: hdr)
        data.append(contentsOf: floats([1.5, -2, 3.25]))
        let ck = try SafetensorsCheckpoint(files: [SafetensorsFile(url: write(data))])
        let t = try ck.floatTensor("a", shape: [3])
        XCTAssertFalse(t.isMapped)
        XCTAssertEqual(t.array, [1.5, -2, 3.25])
    }

    func testShardIndexValidation() throws {
        let dir = try EngineFixtures.tempDirectory(self)
        try SafetensorsWriter.write([.init(name: "a", shape: [1], values: [1])], to: dir.appendingPathComponent("s1.safetensors"))
        try SafetensorsWriter.write([.init(name: "b", shape: [1], values: [2])], to: dir.appendingPathComponent("s2.safetensors"))
        let index = dir.appendingPathComponent("model.safetensors.index.json")
        try #"{"metadata":{},"weight_map":{"a":"s1.safetensors","b":"s2.safetensors"}}"#.write(to: index, atomically: true, encoding: .utf8)
        let ck = try SafetensorsCheckpoint.open(directory: dir)
        XCTAssertEqual(try ck.floatTensor("b", shape: [1]).array, [2])
        XCTAssertEqual(ck.tensorNames, ["a", "b"])
        try #"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}"#.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint.open(directory: dir)) { XCTAssertTrue("\($0)".contains("'b'")) }
        try #"{"weight_map":{"a":"../s1.safetensors"}}"#.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint.open(directory: dir)) { XCTAssertTrue("\($0)".contains("'a'")) }
        try #"{"weight_map":{"a":"missing.safetensors"}}"#.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint.open(directory: dir))
        try #"{"nothing":1}"#.write(to: index, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try SafetensorsCheckpoint.open(directory: dir)) { XCTAssertTrue("\($0)".contains("weight_map")) }
    }

    /// Random corruption of a valid file must produce either a valid parse or a typed error, never a crash
    /// or an out-of-bounds read (every parsed tensor's bytes are then read in full).
    func testRandomCorruptionNeverCrashes() throws {
        let good = try SafetensorsWriter.encode([
            .init(name: "x", shape: [3, 2], values: [1, 2, 3, 4, 5, 6]),
            .init(name: "y", shape: [2], values: [7, 8]),
        ])
        var rng = Xoshiro256(seed: 42)
        let dir = try EngineFixtures.tempDirectory(self)
        var parsed = 0
        var rejected = 0
        for i in 0..<150 {
            var d = good
            let flips = 1 + Int(rng.next() % 4)
            for _ in 0..<flips {
                let pos = Int(rng.next() % UInt64(min(d.count, 8 + 120)))
                d[pos] = UInt8(truncatingIfNeeded: rng.next())
            }
            if i % 7 == 0 { d = d.prefix(Int(rng.next() % UInt64(d.count))) }
            let url = dir.appendingPathComponent("f\(i).safetensors")
            try d.write(to: url)
            do {
                let f = try SafetensorsFile(url: url)
                let ck = try SafetensorsCheckpoint(files: [f])
                for (name, info) in f.tensors {
                    if let t = try? ck.floatTensor(name, shape: info.shape) { _ = t.array.reduce(0, +) }
                }
                parsed += 1
            } catch is SafetensorsError {
                rejected += 1
            }
        }
        XCTAssertEqual(parsed + rejected, 150)
        XCTAssertGreaterThan(rejected, 0)
    }
}
