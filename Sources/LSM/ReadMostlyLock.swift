import CShims
import Glibc

/// A value behind a reader-writer lock, for state that many threads read on every request and that
/// changes rarely (the layer map: read by every GetPage, replaced when a layer is frozen, flushed,
/// compacted or collected).
///
/// Why not `Mutex`: with more reader threads than cores, a reader preempted inside its critical
/// section made every other reader spin in the mutex's slow path (18% of a 32-thread GetPage run).
/// Readers of this lock never wait for each other.
///
/// Invariants:
/// 1. `read` sees the value of the last completed `write`; `write` is exclusive.
/// 2. Writers are preferred: once a writer waits, new readers wait behind it, so a steady stream
///    of reads cannot starve a flush. Neither side may take the lock again while holding it.
final class ReadMostlyLock<Value>: @unchecked Sendable {
    // @unchecked: `value` is only touched with `lock` held (shared for reads, exclusive for writes).
    private let lock: UnsafeMutablePointer<pthread_rwlock_t>
    private var value: Value

    init(_ value: Value) {
        self.value = value
        lock = .allocate(capacity: 1)
        let rc = cs_rwlock_init_prefer_writer(lock)
        precondition(rc == 0, "pthread_rwlock_init failed: \(rc)")
    }

    deinit {
        pthread_rwlock_destroy(lock)
        lock.deallocate()
    }

    func read<R>(_ body: (Value) throws -> R) rethrows -> R {
        pthread_rwlock_rdlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body(value)
    }

    func write<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        pthread_rwlock_wrlock(lock)
        defer { pthread_rwlock_unlock(lock) }
        return try body(&value)
    }
}
