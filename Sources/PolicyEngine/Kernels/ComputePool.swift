import CQ8
import Foundation
import Synchronization

/// A persistent pool that splits one kernel call over the CPU's cores: `run(parts:)` hands parts to
/// already-running workers and does part of the work on the calling thread.
///
/// Decode makes about 170 parallel products per token, most of them 20-150 µs long. Waking a parked
/// thread for each (what `DispatchQueue.concurrentPerform` does) costs tens of microseconds, so the
/// calling thread ended up doing most parts alone and 8-bit decode read its weights at half the machine's
/// bandwidth. Workers here spin for a short while after each call, so the next call of the same step
/// finds them awake, and then park on a condition variable so an idle gateway uses no CPU.
///
/// One call runs at a time. A call made while another is running (another model's step, or a nested
/// call from inside a part) runs all of its parts on its own thread instead of waiting.
final class ComputePool: @unchecked Sendable {  // shared state is atomics and the condition's lock
    /// The process-wide pool: one worker per CPU beyond the calling thread's.
    static let shared = ComputePool(workers: max(0, ProcessInfo.processInfo.activeProcessorCount - 1))

    /// How long an idle worker keeps polling for the next call before it parks.
    static let spinNanoseconds: UInt64 = 200_000

    let workerCount: Int
    /// The call's generation (high 32 bits) and the next unclaimed part (low 32 bits), in one word so that
    /// a late worker can never claim a part of a call other than the one whose job it reads.
    private let state = Atomic<UInt64>(0)
    private let finished = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private let busy = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let wake = NSCondition()
    // Written by the caller before it publishes a new generation (release); read by a worker only between
    // an acquiring load of that generation and its successful claim of one of the call's parts.
    private var job: ((Int) -> Void)?
    private var partCount = 0

    init(workers: Int) {
        workerCount = workers
        for i in 0..<workers {
            let t = Thread { self.workerLoop() }  // workers keep the pool alive until `stop()`
            t.name = "policy-compute-\(i + 1)"
            t.stackSize = 1 << 20
            t.start()
        }
    }

    /// Ends the worker threads once they finish what they run; later calls run on the calling thread. The
    /// shared pool lives as long as the process; pools made for tests are stopped.
    func stop() {
        stopping.store(true, ordering: .sequentiallyConsistent)
        while !busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged { cq8_cpu_relax() }
        job = nil
        partCount = 0  // a new generation with no parts wakes everyone
        state.store(((state.load(ordering: .relaxed) >> 32) &+ 1) << 32, ordering: .sequentiallyConsistent)
        wake.lock()
        wake.broadcast()
        wake.unlock()
    }

    /// Runs `body(part)` for every part in 0..<parts, spread over the workers and the calling thread, and
    /// returns when all parts are done.
    func run(parts: Int, _ body: @escaping (Int) -> Void) {
        // `body` is escaping (one small allocation per call) because a worker may still hold its reference for
        // a moment after its last part has been counted as finished.
        guard parts > 1, workerCount > 0,
            busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else {
            for p in 0..<parts { body(p) }
            return
        }
        job = body
        partCount = parts
        finished.store(0, ordering: .relaxed)
        let generation = (state.load(ordering: .relaxed) >> 32) &+ 1
        state.store(generation << 32, ordering: .sequentiallyConsistent)  // ordered before the sleepers check
        if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
            wake.lock()
            wake.broadcast()
            wake.unlock()
        }
        while claim(generation) {}
        while finished.load(ordering: .acquiring) < parts { cq8_cpu_relax() }
        job = nil
        busy.store(false, ordering: .releasing)
    }

    /// Splits 0..<count into at most `maxParts` contiguous ranges of equal size (a multiple of
    /// `granularity`; the last range may be shorter) and runs `body(part, range)` for each, as `run(parts:)`.
    /// Not inlined: inlined into `Kernels.slicedGemm`, Swift 6.3's -O pipeline crashes (an ownership
    /// verifier failure in CopyPropagation); one call per kernel costs nothing measurable.
    @inline(never)
    func run(count: Int, maxParts: Int, granularity: Int = 1, _ body: @escaping (_ part: Int, _ range: Range<Int>) -> Void) {
        guard count > 0 else { return }
        let parts = max(1, min(count, maxParts))
        let per = ((count + parts - 1) / parts + granularity - 1) / granularity * granularity
        run(parts: (count + per - 1) / per) { part in body(part, (part * per)..<min(count, (part + 1) * per)) }
    }

    /// Claims and runs one part of call `generation`; false when it has no unclaimed part left (or a newer
    /// call replaced it).
    private func claim(_ generation: UInt64) -> Bool {
        var s = state.load(ordering: .acquiring)
        while true {
            guard s >> 32 == generation & 0xFFFF_FFFF else { return false }
            let part = Int(s & 0xFFFF_FFFF)
            guard part < partCount else { return false }
            let (exchanged, current) = state.compareExchange(expected: s, desired: s + 1, ordering: .acquiringAndReleasing)
            if exchanged {
                // The call cannot finish before this part does, so its job is still the one published.
                job!(part)
                finished.add(1, ordering: .releasing)
                return true
            }
            s = current
        }
    }

    private func workerLoop() {
        var seen = state.load(ordering: .acquiring) >> 32
        while true {
            // Poll for the next call for a while, then park.
            let deadline = DispatchTime.now().uptimeNanoseconds + Self.spinNanoseconds
            var spins = 0
            while state.load(ordering: .acquiring) >> 32 == seen {
                cq8_cpu_relax()
                spins += 1
                if spins & 255 == 0, DispatchTime.now().uptimeNanoseconds > deadline {
                    wake.lock()
                    sleepers.add(1, ordering: .sequentiallyConsistent)
                    while state.load(ordering: .sequentiallyConsistent) >> 32 == seen { wake.wait() }
                    sleepers.subtract(1, ordering: .relaxed)
                    wake.unlock()
                }
            }
            if stopping.load(ordering: .sequentiallyConsistent) { return }
            seen = state.load(ordering: .acquiring) >> 32
            while claim(seen) {}
        }
    }
}
