import CShims
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Positional reads in batches: the seam between the engine and the kernel.
///
/// A caller fills `ReadOp`s (file, offset, length, destination) and calls `read`, which returns when
/// every op has a result: bytes read (short only at end of file) or a negative errno. Two engines:
/// `IOUringEngine` submits a whole batch at once and waits once; `PreadEngine` reads one by one in
/// the caller's thread. Both give identical answers (tested).
public struct ReadOp {
    public var fd: Int32
    public var offset: UInt64
    public var length: Int
    public var buffer: UnsafeMutableRawPointer
    /// Bytes read, or -errno.
    public var result: Int32 = 0

    public init(fd: Int32, offset: UInt64, length: Int, buffer: UnsafeMutableRawPointer) {
        self.fd = fd
        self.offset = offset
        self.length = length
        self.buffer = buffer
    }
}

public enum IOEngineKind: String, Sendable, CaseIterable {
    case ioUring = "io_uring"
    case pread
}

public protocol BlockIO: AnyObject, Sendable {
    var kind: IOEngineKind { get }
    func read(_ ops: UnsafeMutableBufferPointer<ReadOp>)
    /// Sets up whatever the calling thread's reads need (io_uring: its ring), so that its first read
    /// does not pay for it. Optional: reads set it up on first use anyway.
    func prepareCurrentThread()
}

extension BlockIO {
    public func prepareCurrentThread() {}
}

/// Engine-wide log hook (the engine has no logging dependency); the daemon points it at its logger.
public enum LSMLog {
    nonisolated(unsafe) public static var warning: @Sendable (String) -> Void = { msg in
        var line = "warning: " + msg + "\n"
        line.withUTF8 { _ = write(2, $0.baseAddress, $0.count) }
    }
}

/// Makes the engine named by `kind`; io_uring falls back to pread (logged once) where the kernel
/// refuses it.
public func makeBlockIO(_ kind: IOEngineKind, queueDepth: Int = 256) -> any BlockIO {
    switch kind {
    case .pread:
        return PreadEngine()
    case .ioUring:
        do {
            return try IOUringEngine(entries: queueDepth)
        } catch {
            LSMLog.warning("io_uring is not available (\(error)); falling back to pread")
            return PreadEngine()
        }
    }
}

public final class PreadEngine: BlockIO {
    public init() {}
    public var kind: IOEngineKind { .pread }

    public func read(_ ops: UnsafeMutableBufferPointer<ReadOp>) {
        for i in ops.indices {
            var done = 0
            let op = ops[i]
            while done < op.length {
                let n = pread(op.fd, op.buffer + done, op.length - done, off_t(op.offset) + off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    done = -Int(errno)
                    break
                }
                if n == 0 { break }
                done += n
            }
            ops[i].result = Int32(done)
        }
    }
}

/// io_uring reads with one ring per reading thread.
///
/// Design: the first read of a thread creates that thread's ring (a pthread key holds it; it is
/// destroyed when the thread exits, or with the engine). A batch is prepared on the caller's own
/// ring, submitted with one io_uring_enter, and its completions are reaped by the same thread, in
/// rounds of at most `entries` ops. So no lock is held while the kernel works: a buffered read of a
/// page-cached block completes inside the submitting io_uring_enter, and a ring shared behind a lock
/// serialised every reader behind that copy (32 readers then spent most of their time spinning on the
/// submit lock). A batch is submitted and first waited for in one io_uring_enter. (Rings are plain:
/// SINGLE_ISSUER + DEFER_TASKRUN, which a one-thread ring allows, made cold batched reads slower;
/// `CS_URING_DEFER_TASKRUN=1` turns them on for measurements.)
///
/// Invariants:
/// 1. A ring is used only by the thread that created it.
/// 2. `read` returns only after every op it prepared has completed: between calls a ring has nothing
///    in flight, so a completion always belongs to the batch of the thread that reaps it.
/// 3. Every ring the engine created is destroyed exactly once: at its thread's exit, or at the
///    engine's deinit (which first deletes the key, so the thread-exit destructor no longer runs).
public final class IOUringEngine: BlockIO, @unchecked Sendable {
    public var kind: IOEngineKind { .ioUring }

    /// One thread's ring; destroyed at most once (under the registry's lock).
    final class ThreadRing: @unchecked Sendable {
        let ring: OpaquePointer
        let registry: Registry
        var destroyed = false
        init(ring: OpaquePointer, registry: Registry) {
            self.ring = ring
            self.registry = registry
        }
    }

    /// The rings of live threads, so that the engine can destroy them.
    final class Registry: Sendable {
        let rings = Mutex<[ObjectIdentifier: ThreadRing]>([:])

        func destroy(_ r: ThreadRing) {
            rings.withLock { all in
                guard !r.destroyed else { return }
                r.destroyed = true
                cs_ring_destroy(r.ring)
                all[ObjectIdentifier(r)] = nil
            }
        }
    }

    private let entries: Int
    private var key = pthread_key_t()
    private let registry = Registry()

    public init(entries: Int) throws {
        self.entries = max(1, entries)
        // Fails here, not at a thread's first read, when the kernel refuses io_uring.
        var err: Int32 = 0
        guard let probe = cs_ring_create(UInt32(self.entries), &err) else {
            throw StorageError(.unsupported, "io_uring_queue_init failed: \(String(cString: strerror(-err))) (errno \(-err))")
        }
        cs_ring_destroy(probe)
        let rc = pthread_key_create(&key) { value in
            guard let value else { return }
            let r = Unmanaged<ThreadRing>.fromOpaque(value).takeRetainedValue()
            r.registry.destroy(r)
        }
        guard rc == 0 else { throw StorageError(.io, "pthread_key_create failed: errno \(rc)") }
    }

    deinit {
        pthread_key_delete(key)
        for r in registry.rings.withLock({ Array($0.values) }) { registry.destroy(r) }
    }

    /// The calling thread's ring, created on first use (nil when the kernel refuses a new ring).
    private func threadRing() -> OpaquePointer? {
        if let value = pthread_getspecific(key) {
            return Unmanaged<ThreadRing>.fromOpaque(value).takeUnretainedValue().ring
        }
        var err: Int32 = 0
        guard let ring = cs_ring_create(UInt32(entries), &err) else {
            LSMLog.warning("io_uring_queue_init failed for a new thread: errno \(-err); this thread reads with pread")
            return nil
        }
        let r = ThreadRing(ring: ring, registry: registry)
        registry.rings.withLock { $0[ObjectIdentifier(r)] = r }
        pthread_setspecific(key, Unmanaged.passRetained(r).toOpaque())
        return ring
    }

    public func prepareCurrentThread() { _ = threadRing() }

    public func read(_ ops: UnsafeMutableBufferPointer<ReadOp>) {
        if ops.isEmpty { return }
        guard let ring = threadRing() else {
            PreadEngine().read(ops)
            return
        }
        var tokens = [UInt64](repeating: 0, count: min(entries, ops.count))
        var results = [Int32](repeating: 0, count: tokens.count)
        var next = 0
        while next < ops.count {
            let round = next..<min(ops.count, next + entries)
            var prepared = 0
            for i in round {
                let rc = cs_ring_prep_read(ring, ops[i].fd, ops[i].buffer, UInt32(ops[i].length), ops[i].offset, UInt64(i))
                guard rc == 0 else {
                    // Cannot happen with an empty ring of `entries` slots; pread decides below.
                    ops[i].result = -EAGAIN
                    continue
                }
                prepared += 1
            }
            // The submission and the first wait are one system call.
            var reaped = 0
            while reaped < prepared {
                let n = reaped == 0 ? cs_ring_submit_and_wait(ring, &tokens, &results, UInt32(tokens.count))
                    : cs_ring_wait(ring, &tokens, &results, UInt32(tokens.count))
                precondition(n >= 0, "io_uring_enter failed: errno \(-n)")
                for j in 0..<Int(n) { ops[Int(tokens[j])].result = results[j] }
                reaped += Int(n)
            }
            next = round.upperBound
        }
        // Short reads (end of file, or a partial read) are completed synchronously, and so are reads
        // the ring failed for a reason of its own rather than the file's (EAGAIN, EINTR, ...): our
        // buffers are valid until we return, so pread decides, and a real error comes back from it.
        for i in ops.indices where (ops[i].result >= 0 && Int(ops[i].result) < ops[i].length) || Self.retryable(ops[i].result) {
            if ops[i].result < 0 {
                retriedReads.add(1, ordering: .relaxed)
                ops[i].result = 0
            }
            var done = Int(ops[i].result)
            while done < ops[i].length {
                let n = pread(ops[i].fd, ops[i].buffer + done, ops[i].length - done, off_t(ops[i].offset) + off_t(done))
                if n < 0 { if errno == EINTR { continue }; done = -Int(errno); break }
                if n == 0 { break }
                done += n
            }
            ops[i].result = Int32(done)
        }
    }

    /// Reads io_uring failed for a reason of the ring's, redone with pread (for tests and logs).
    public let retriedReads = Atomic<Int>(0)

    static func retryable(_ result: Int32) -> Bool {
        result == -EFAULT || result == -ECANCELED || result == -EINTR || result == -EAGAIN
    }
}
