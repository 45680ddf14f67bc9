import Foundation

/// Opt-in wall-clock accounting of the forward pass by section (for benchmarks; off by default, and then
/// costs one branch per section).
public final class ForwardProfiler: @unchecked Sendable {  // only touched under the model's forward lock
    public enum Section: String, CaseIterable, Sendable {
        case embed, norms, qkv, rope, attention, outProj, gateUp, swiglu, down, lmHead, sampling
    }
    public var enabled = false
    private var totals = [Double](repeating: 0, count: Section.allCases.count)
    private var last: UInt64 = 0

    public init() {}

    /// Starts timing (call before the first section).
    @inline(__always) func start() { if enabled { last = DispatchTime.now().uptimeNanoseconds } }

    /// Charges the time since the previous mark to `section`.
    @inline(__always) func mark(_ section: Section) {
        guard enabled else { return }
        let now = DispatchTime.now().uptimeNanoseconds
        totals[Section.allCases.firstIndex(of: section)!] += Double(now - last) / 1e9
        last = now
    }

    public func reset() { totals = totals.map { _ in 0 } }

    /// Seconds per section since the last reset.
    public var seconds: [(Section, Double)] { Array(zip(Section.allCases, totals)) }

    public var report: String {
        let total = totals.reduce(0, +)
        return seconds.filter { $0.1 > 0 }.map { String(format: "%@ %.3fs (%.0f%%)", $0.0.rawValue, $0.1, 100 * $0.1 / max(total, 1e-12)) }
            .joined(separator: ", ")
    }
}
