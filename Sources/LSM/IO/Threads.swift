#if canImport(Glibc)
import Glibc
#endif

/// A counting semaphore over pthread primitives (Dispatch is avoided on hot paths; this is the
/// smallest thing that blocks a thread until another signals it).
final class DispatchSemaphoreLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()
    private var cond = pthread_cond_t()
    private var value: Int

    init(value: Int) {
        self.value = value
        pthread_mutex_init(&mutex, nil)
        pthread_cond_init(&cond, nil)
    }

    deinit {
        pthread_cond_destroy(&cond)
        pthread_mutex_destroy(&mutex)
    }

    func wait() {
        pthread_mutex_lock(&mutex)
        while value == 0 { pthread_cond_wait(&cond, &mutex) }
        value -= 1
        pthread_mutex_unlock(&mutex)
    }

    /// Waits at most `seconds`; true when it got the semaphore.
    func wait(seconds: Double) -> Bool {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let ns = Int(seconds * 1e9) + ts.tv_nsec
        ts.tv_sec += ns / 1_000_000_000
        ts.tv_nsec = ns % 1_000_000_000
        pthread_mutex_lock(&mutex)
        while value == 0 {
            if pthread_cond_timedwait(&cond, &mutex, &ts) == ETIMEDOUT { break }
        }
        let got = value > 0
        if got { value -= 1 }
        pthread_mutex_unlock(&mutex)
        return got
    }

    func tryWait() -> Bool {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        if value == 0 { return false }
        value -= 1
        return true
    }

    func signal() {
        pthread_mutex_lock(&mutex)
        value += 1
        pthread_cond_signal(&cond)
        pthread_mutex_unlock(&mutex)
    }
}

/// A detached OS thread running a closure (for long-lived service loops).
final class PThread: @unchecked Sendable {
    private let body: () -> Void

    init(_ body: @escaping () -> Void) { self.body = body }

    func start() {
        let box = Unmanaged.passRetained(self)
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { arg in
            let t = Unmanaged<PThread>.fromOpaque(arg!).takeRetainedValue()
            t.body()
            return nil
        }, box.toOpaque())
        precondition(rc == 0, "pthread_create failed: \(rc)")
        pthread_detach(tid)
    }
}
