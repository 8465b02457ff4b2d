import Foundation
@testable import LSM
import CShims
import Synchronization
import XCTest

/// `FutexLock`: mutual exclusion with many more threads than cores, through the spinning path,
/// the sleeping path (no spins at all) and ~Copyable state.
final class FutexLockTests: XCTestCase {
    private struct Pair: ~Copyable {
        var a = 0
        var b = 0
    }

    /// 32 threads each update two fields 20,000 times: inside the lock they must always be equal,
    /// and no update is lost. Run with the default spins and with none (every contended acquire
    /// sleeps on the futex).
    func testThirtyTwoThreadsNeverOverlap() {
        defer { cs_lock_set_spins(64) }
        for spins in [64, 0] {
            cs_lock_set_spins(Int32(spins))
            let lock = FutexLock(Pair())
            let torn = Atomic<Int>(0)
            DispatchQueue.concurrentPerform(iterations: 32) { _ in
                for _ in 0..<20_000 {
                    lock.withLock { p in
                        if p.a != p.b { torn.add(1, ordering: .relaxed) }
                        p.a += 1
                        p.b += 1
                    }
                }
            }
            let (a, b) = lock.withLock { ($0.a, $0.b) }
            XCTAssertEqual(torn.load(ordering: .relaxed), 0, "spins \(spins): a thread saw another's half-done update")
            XCTAssertEqual(a, 32 * 20_000, "spins \(spins)")
            XCTAssertEqual(b, 32 * 20_000, "spins \(spins)")
        }
    }

    /// A holder that sleeps inside the lock makes the others sleep on the futex; its release must
    /// wake them (a lost wake-up would hang this test).
    func testASleepingHolderWakesItsWaiters() {
        let lock = FutexLock(0)
        let group = DispatchGroup()
        for _ in 0..<8 {
            group.enter()
            Thread.detachNewThread {
                for _ in 0..<20 { lock.withLock { v in usleep(200); v += 1 } }
                group.leave()
            }
        }
        XCTAssertEqual(group.wait(timeout: .now() + 60), .success, "every waiter was woken")
        XCTAssertEqual(lock.withLock { $0 }, 8 * 20)
    }

    /// A body that throws releases the lock.
    func testAThrowingBodyReleasesTheLock() {
        struct Boom: Error {}
        let lock = FutexLock(1)
        XCTAssertThrowsError(try lock.withLock { (_: inout Int) throws(Boom) -> Void in throw Boom() })
        XCTAssertEqual(lock.withLock { $0 }, 1)
    }
}
