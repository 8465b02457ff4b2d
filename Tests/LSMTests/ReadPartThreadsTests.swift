import Foundation
@testable import LSM
import Synchronization
import XCTest

/// `ReadPartThreads`: every iteration runs, all at once (more of them than cores), and a call
/// completes even when the pool has fewer threads than it has iterations.
final class ReadPartThreadsTests: XCTestCase {
    func testEveryIterationRunsOnce() {
        let pool = ReadPartThreads(maximumThreads: 8)
        for n in [0, 1, 2, 5, 32] {
            let counts = Mutex([Int](repeating: 0, count: n))
            pool.perform(iterations: n) { i in counts.withLock { $0[i] += 1 } }
            XCTAssertEqual(counts.withLock { $0 }, [Int](repeating: 1, count: n), "\(n) iterations")
        }
    }

    /// Eight iterations that each wait until all eight have started: only threads of their own let
    /// them meet (Dispatch's concurrentPerform runs no more at once than there are cores).
    func testIterationsRunAtTheSameTime() {
        let pool = ReadPartThreads(maximumThreads: 16)
        let started = Atomic<Int>(0)
        let met = Atomic<Int>(0)
        pool.perform(iterations: 8) { _ in
            started.add(1, ordering: .relaxed)
            let deadline = Date().addingTimeInterval(10)
            while started.load(ordering: .relaxed) < 8 && Date() < deadline { usleep(100) }
            if started.load(ordering: .relaxed) == 8 { met.add(1, ordering: .relaxed) }
        }
        XCTAssertEqual(met.load(ordering: .relaxed), 8, "every iteration saw all eight started")
    }

    /// A pool of one thread and calls from several threads at once, each with more iterations than
    /// the pool has threads: the callers run what no pool thread took.
    func testCallsCompleteWithFewerThreadsThanIterations() {
        let pool = ReadPartThreads(maximumThreads: 1)
        let total = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            for _ in 0..<50 {
                pool.perform(iterations: 6) { _ in total.add(1, ordering: .relaxed) }
            }
        }
        XCTAssertEqual(total.load(ordering: .relaxed), 4 * 50 * 6)
    }
}
