import Foundation
import XCTest

@testable import TrafficLog

final class UUIDv7Tests: XCTestCase {
    func testFormatVersionVariantAndTimestamp() throws {
        let before = Date()
        let id = UUIDv7.generate()
        let after = Date()
        XCTAssertEqual(id.count, 36)
        XCTAssertTrue(UUIDv7.isValid(id), id)
        XCTAssertEqual(id, id.lowercased())
        let parts = id.split(separator: "-").map(\.count)
        XCTAssertEqual(parts, [8, 4, 4, 4, 12])
        XCTAssertEqual(Array(id)[14], "7")  // version
        XCTAssertTrue("89ab".contains(Array(id)[19]), id)  // variant 0b10
        XCTAssertNotNil(UUID(uuidString: id), "parses as a UUID")
        let ts = try XCTUnwrap(UUIDv7.timestamp(of: id))
        XCTAssertGreaterThanOrEqual(ts.timeIntervalSince1970, (before.timeIntervalSince1970 * 1000).rounded(.down) / 1000)
        XCTAssertLessThanOrEqual(ts.timeIntervalSince1970, after.timeIntervalSince1970 + 0.001)
    }

    func testRejectsNonV7() {
        XCTAssertFalse(UUIDv7.isValid(UUID().uuidString.lowercased()))  // v4
        XCTAssertFalse(UUIDv7.isValid("0193f8a4-5b2e-7c3d-9e4f-0123456789AB"))  // uppercase
        XCTAssertFalse(UUIDv7.isValid("0193f8a4-5b2e-7c3d-ce4f-0123456789ab"))  // variant 0b110
        XCTAssertFalse(UUIDv7.isValid("0193f8a45b2e7c3d9e4f0123456789ab"))
        XCTAssertTrue(UUIDv7.isValid("0193f8a4-5b2e-7c3d-9e4f-0123456789ab"))
    }

    func testStrictlyIncreasingUnderBurst() {
        var previous = UUIDv7.generate()
        var seen = Set<String>()
        for _ in 0..<20_000 {
            let next = UUIDv7.generate()
            XCTAssertLessThan(previous, next)
            XCTAssertTrue(seen.insert(next).inserted)
            previous = next
        }
    }

    func testMonotonicWithinOneMillisecondAndWhenClockGoesBack() throws {
        let generator = UUIDv7.Generator()  // own state: does not disturb UUIDv7.generate()
        let ms: UInt64 = 1_900_000_000_000
        var ids = (0..<5_000).map { _ in generator.generate(nowMs: ms) }
        ids += (0..<100).map { _ in generator.generate(nowMs: ms - 5_000) }  // clock moved back 5 s
        ids.append(generator.generate(nowMs: ms + 10))
        for (a, b) in zip(ids, ids.dropFirst()) { XCTAssertLessThan(a, b) }
        for id in ids { XCTAssertTrue(UUIDv7.isValid(id), id) }
        // All ids carry the millisecond (or a later, borrowed one), never the earlier clock value.
        let first = try XCTUnwrap(UUIDv7.timestamp(of: ids[0]))
        XCTAssertEqual(first.timeIntervalSince1970, Double(ms) / 1000, accuracy: 0.0005)
        let backwards = try XCTUnwrap(UUIDv7.timestamp(of: ids[5_050]))
        XCTAssertGreaterThanOrEqual(backwards.timeIntervalSince1970, Double(ms) / 1000)
        let last = try XCTUnwrap(UUIDv7.timestamp(of: ids.last!))
        XCTAssertEqual(last.timeIntervalSince1970, Double(ms + 10) / 1000, accuracy: 0.0005)
    }

    func testConcurrentGenerationIsUnique() async {
        let all = await withTaskGroup(of: [String].self) { group in
            for _ in 0..<4 { group.addTask { (0..<2_000).map { _ in UUIDv7.generate() } } }
            var out: [String] = []
            for await part in group { out += part }
            return out
        }
        XCTAssertEqual(Set(all).count, 8_000)
    }
}
