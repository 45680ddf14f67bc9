import Foundation
import Synchronization
import XCTest

@testable import PolicyEngine

/// The persistent compute pool: every part runs exactly once per call, calls that overlap (another thread's,
/// or one made from inside a part) run inline instead of deadlocking, and parked workers wake for new calls.
final class ComputePoolTests: XCTestCase {
    func testEveryPartRunsExactlyOnce() {
        let pool = ComputePool(workers: 3)
        defer { pool.stop() }
        for parts in [0, 1, 2, 3, 7, 64, 1000] {
            let counts = Mutex([Int](repeating: 0, count: parts))
            pool.run(parts: parts) { part in counts.withLock { $0[part] += 1 } }
            XCTAssertEqual(counts.withLock { $0 }, [Int](repeating: 1, count: parts), "parts \(parts)")
        }
    }

    func testCountSplitsIntoContiguousRangesOnce() {
        let pool = ComputePool(workers: 2)
        defer { pool.stop() }
        for (count, maxParts, granularity) in [(0, 4, 1), (1, 4, 1), (10, 3, 1), (100, 16, 8), (13, 64, 1), (130, 2, 1), (7, 0, 1)] {
            let seen = Mutex([Int](repeating: 0, count: count))
            let ranges = Mutex([Int: Range<Int>]())
            pool.run(count: count, maxParts: maxParts, granularity: granularity) { part, range in
                ranges.withLock { $0[part] = range }
                seen.withLock { for i in range { $0[i] += 1 } }
            }
            let label = "count \(count), max parts \(maxParts), granularity \(granularity)"
            XCTAssertEqual(seen.withLock { $0 }, [Int](repeating: 1, count: count), label)
            let r = ranges.withLock { $0 }
            XCTAssertLessThanOrEqual(r.count, max(1, maxParts), label)
            for (part, range) in r where part < r.count - 1 { XCTAssertEqual(range.count % granularity, 0, label) }
            XCTAssertEqual(r.keys.sorted(), Array(0..<r.count), label)
        }
    }

    func testManySmallCallsInARowGiveExactSums() {
        let pool = ComputePool(workers: 2)
        defer { pool.stop() }
        let total = Atomic<Int>(0)
        for call in 0..<20_000 {
            pool.run(parts: 4) { total.add(call * 4 + $0, ordering: .relaxed) }
        }
        // sum over calls c and parts p of (4c + p) = sum_{k < 80000} k
        XCTAssertEqual(total.load(ordering: .relaxed), 79_999 * 80_000 / 2)
    }

    func testNestedAndConcurrentCallsRunInline() {
        let pool = ComputePool(workers: 1)
        defer { pool.stop() }
        let inner = Atomic<Int>(0)
        pool.run(parts: 3) { _ in
            pool.run(parts: 5) { _ in inner.add(1, ordering: .relaxed) }  // busy: runs on this thread
        }
        XCTAssertEqual(inner.load(ordering: .relaxed), 15)

        let concurrent = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<200 { pool.run(parts: 6) { _ in concurrent.add(1, ordering: .relaxed) } }
        }
        XCTAssertEqual(concurrent.load(ordering: .relaxed), 8 * 200 * 6)
    }

    func testParkedWorkersTakePartsAgain() throws {
        let pool = ComputePool(workers: 1)
        defer { pool.stop() }
        pool.run(parts: 2) { _ in }
        // Let the worker finish polling and park, then check a new call reaches it: with one part blocking
        // the calling thread until another thread has run the other part.
        Thread.sleep(forTimeInterval: Double(ComputePool.spinNanoseconds) / 1e9 * 5 + 0.02)
        let other = Atomic<Bool>(false)
        let caller = Thread.current
        let start = Date()
        pool.run(parts: 2) { _ in
            if Thread.current == caller {
                while !other.load(ordering: .acquiring), Date().timeIntervalSince(start) < 10 { usleep(100) }
            } else {
                other.store(true, ordering: .releasing)
            }
        }
        XCTAssertTrue(other.load(ordering: .acquiring), "the parked worker never ran a part")
    }
}
