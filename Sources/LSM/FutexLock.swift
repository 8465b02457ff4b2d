import CShims

/// A mutex for short critical sections that many more threads than cores enter: the cache shards.
///
/// Design: the lock word lives in a cache line of its own; acquire is one compare-and-swap when the
/// lock is free, and otherwise spins a little (`cs_lock_set_spins`) and then sleeps on a plain
/// futex (`cs_lock_acquire`). Release wakes one sleeper without handing the lock over, so whichever
/// thread runs first takes it.
///
/// Why not the standard library's `Mutex`: on Linux it is a priority-inheritance futex, whose
/// release passes ownership to a sleeping waiter. With 32 readers on 2 cores that waiter must first
/// be scheduled, every other thread that wants the lock meanwhile spins and then sleeps too, and
/// the lock moves at the pace of context switches (a convoy). Warm reads with 32 threads read 1.17x
/// the pages/s with this lock (BENCHMARKS.md, issue 8).
///
/// Invariants: `state` is read or written only inside `withLock`; the lock is not reentrant (a
/// nested `withLock` on one lock never returns).
public final class FutexLock<State: ~Copyable>: @unchecked Sendable {
    private let word: UnsafeMutablePointer<UInt32>
    private let state: UnsafeMutablePointer<State>

    public init(_ initial: consuming State) {
        let raw = UnsafeMutableRawPointer.allocate(byteCount: 64, alignment: 64)
        word = raw.initializeMemory(as: UInt32.self, repeating: 0, count: 1)
        state = UnsafeMutablePointer<State>.allocate(capacity: 1)
        state.initialize(to: initial)
    }

    deinit {
        state.deinitialize(count: 1)
        state.deallocate()
        UnsafeMutableRawPointer(word).deallocate()
    }

    @inline(__always)
    public func withLock<R, E: Error>(_ body: (inout State) throws(E) -> R) throws(E) -> R {
        cs_lock_acquire(word)
        defer { cs_lock_release(word) }
        return try body(&state.pointee)
    }
}
