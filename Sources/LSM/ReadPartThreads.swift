import Glibc

/// Threads that run the parts of one batched read at the same time (`TimelineStore.get` with
/// `redoThreads` > 1), each part on a thread of its own.
///
/// Why not `DispatchQueue.concurrentPerform`: it runs at most as many iterations at once as there are
/// cores. A part spends much of its time waiting for its reads (io_uring), so on 2 cores two waiting
/// parts left both cores idle while the other parts queued behind them; with a thread per part, a
/// part that waits leaves its core to one that computes.
///
/// Invariants:
/// 1. `perform` returns only after every iteration it was given has returned; iteration 0 runs on
///    the calling thread, and the caller runs any of its own iterations that no thread has taken yet,
///    so a call completes even when every pool thread is busy with other calls.
/// 2. Threads are started on demand, up to `maximumThreads`, and never stop (they wait on `work`).
/// 3. `queue`, `idle`, `threads` and every `Job.remaining` are read and written with `lock` held.
final class ReadPartThreads: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `lock` (invariant 3).
    private final class Job {
        let body: @Sendable (Int) -> Void
        var remaining: Int
        init(body: @escaping @Sendable (Int) -> Void, remaining: Int) {
            self.body = body
            self.remaining = remaining
        }
    }

    private let lock = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    /// Signalled when iterations are queued.
    private let work = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    /// Broadcast when an iteration finishes.
    private let finished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    private var queue: [(job: Job, index: Int)] = []
    private var threads = 0
    private var idle = 0
    let maximumThreads: Int

    /// The process's pool: its threads never stop, so every store and context shares one.
    static let shared = ReadPartThreads(maximumThreads: 64)

    init(maximumThreads: Int) {
        self.maximumThreads = max(0, maximumThreads)
        pthread_mutex_init(lock, nil)
        pthread_cond_init(work, nil)
        pthread_cond_init(finished, nil)
    }

    /// Runs `body(0)` ... `body(iterations - 1)` at the same time and returns when all have returned.
    func perform(iterations: Int, _ body: @escaping @Sendable (Int) -> Void) {
        guard iterations > 1 else {
            if iterations == 1 { body(0) }
            return
        }
        let job = Job(body: body, remaining: iterations)
        pthread_mutex_lock(lock)
        for i in 1..<iterations { queue.append((job, i)) }
        let startNow = min(maximumThreads - threads, max(0, queue.count - idle))
        threads += startNow
        pthread_cond_broadcast(work)
        pthread_mutex_unlock(lock)
        for _ in 0..<startNow { startThread() }

        body(0)
        pthread_mutex_lock(lock)
        job.remaining -= 1
        // Iterations of this call that no thread has taken yet run here (invariant 1).
        while let k = queue.firstIndex(where: { $0.job === job }) {
            let index = queue.remove(at: k).index
            pthread_mutex_unlock(lock)
            body(index)
            pthread_mutex_lock(lock)
            job.remaining -= 1
        }
        while job.remaining > 0 { pthread_cond_wait(finished, lock) }
        pthread_mutex_unlock(lock)
    }

    private func startThread() {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        let context = Unmanaged.passRetained(self).toOpaque()
        var thread = pthread_t()
        let rc = pthread_create(&thread, &attributes, { context in
            let pool = Unmanaged<ReadPartThreads>.fromOpaque(context!).takeRetainedValue()
            pool.serve()
            return nil
        }, context)
        if rc != 0 {
            // No thread: the callers run their own iterations (invariant 1).
            Unmanaged<ReadPartThreads>.fromOpaque(context).release()
            pthread_mutex_lock(lock)
            threads -= 1
            pthread_mutex_unlock(lock)
        }
    }

    private func serve() -> Never {
        pthread_mutex_lock(lock)
        while true {
            while queue.isEmpty {
                idle += 1
                pthread_cond_wait(work, lock)
                idle -= 1
            }
            let (job, index) = queue.removeFirst()
            pthread_mutex_unlock(lock)
            job.body(index)
            pthread_mutex_lock(lock)
            job.remaining -= 1
            if job.remaining == 0 { pthread_cond_broadcast(finished) }
        }
    }
}
