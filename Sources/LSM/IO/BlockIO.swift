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

/// One io_uring shared by every reader in the process.
///
/// Design (leader/follower): submitters take `submitLock`, queue their SQEs and submit. Then one
/// waiting thread at a time is the *reaper*: it blocks in `io_uring_wait_cqe` itself (no hand-off to
/// a helper thread, so a lone reader pays one kernel wake-up, as with a private ring), and hands each
/// completion to its batch, waking that batch's thread. When the reaper's own batch is complete it
/// steps down and wakes one waiting batch to take over.
///
/// Invariants:
/// 1. At most `capacity` ops are in flight (`permits`); a submitter that cannot get a permit submits
///    what it has queued before it blocks, so a batch never waits on its own unsubmitted ops.
/// 2. Only the reaper touches the completion queue; only holders of `submitLock` touch the
///    submission queue.
/// 3. While any batch has ops in flight, either a reaper is active or a waiting batch has been
///    signalled to become one (the stepping-down reaper signals a registered waiter).
/// 4. An op's `result` is written by the reaper before the op's batch is marked complete and read
///    by the batch's thread only after it observes completion.
public final class IOUringEngine: BlockIO, @unchecked Sendable {
    public var kind: IOEngineKind { .ioUring }

    private let ring: OpaquePointer
    private let capacity: Int
    private let submitLock = Mutex(())
    private let permits: DispatchSemaphoreLike
    private let slots: Mutex<SlotTable>
    private let reaper = Mutex(ReaperState())

    final class Batch: @unchecked Sendable {
        let ops: UnsafeMutableBufferPointer<ReadOp>
        let remaining: Atomic<Int>
        let wake = DispatchSemaphoreLike(value: 0)
        init(ops: UnsafeMutableBufferPointer<ReadOp>) {
            self.ops = ops
            self.remaining = Atomic(ops.count)
        }
        var isComplete: Bool { remaining.load(ordering: .acquiring) == 0 }
    }

    struct SlotTable: ~Copyable {
        var batches: [Batch?]
        var opIndex: [Int]
        var free: [Int]
    }

    struct ReaperState: ~Copyable {
        var active = false
        var waiters: [ObjectIdentifier: Batch] = [:]
    }

    public init(entries: Int) throws {
        var err: Int32 = 0
        guard let r = cs_ring_create(UInt32(entries), &err) else {
            throw StorageError(.unsupported, "io_uring_queue_init failed: \(String(cString: strerror(-err))) (errno \(-err))")
        }
        ring = r
        capacity = entries
        permits = DispatchSemaphoreLike(value: entries)
        slots = Mutex(SlotTable(batches: Array(repeating: nil, count: entries), opIndex: Array(repeating: 0, count: entries),
                                free: Array((0..<entries).reversed())))
    }

    deinit {
        cs_ring_destroy(ring)
    }

    public func read(_ ops: UnsafeMutableBufferPointer<ReadOp>) {
        if ops.isEmpty { return }
        let batch = Batch(ops: ops)
        var queued = 0
        for i in ops.indices {
            if !permits.tryWait() {
                if queued > 0 { submitLock.withLock { _ in _ = cs_ring_submit(ring) }; queued = 0 }
                // Our own in-flight ops may hold the permits we wait for: make sure someone reaps.
                while !permits.wait(seconds: 0.001) { reapOnce(mine: batch, blocking: false) }
            }
            let slot = slots.withLock { t -> Int in
                let s = t.free.removeLast()
                t.batches[s] = batch
                t.opIndex[s] = i
                return s
            }
            submitLock.withLock { _ in
                var rc = cs_ring_prep_read(ring, ops[i].fd, ops[i].buffer, UInt32(ops[i].length), ops[i].offset, UInt64(slot))
                if rc == -EBUSY {
                    _ = cs_ring_submit(ring)
                    rc = cs_ring_prep_read(ring, ops[i].fd, ops[i].buffer, UInt32(ops[i].length), ops[i].offset, UInt64(slot))
                }
                precondition(rc == 0, "io_uring submission queue stays full with a permit held")
            }
            queued += 1
        }
        submitLock.withLock { _ in
            let rc = cs_ring_submit(ring)
            precondition(rc >= 0, "io_uring_submit failed: errno \(-rc)")
        }
        waitForCompletion(batch)
        // Short reads (end of file, or a partial read) are completed synchronously, and so are reads
        // the ring failed for a reason of its own rather than the file's: a request that another
        // thread's io_uring_enter submitted can be cancelled or fail with EFAULT when that thread
        // exits while the request waits in io-wq (seen once at 32 threads). Our buffers are valid
        // until we return, so pread decides: a real error comes back from it as well.
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

    private func waitForCompletion(_ batch: Batch) {
        let id = ObjectIdentifier(batch)
        while !batch.isComplete {
            let becameReaper = reaper.withLock { r -> Bool in
                if r.active {
                    r.waiters[id] = batch
                    return false
                }
                r.active = true
                r.waiters[id] = nil
                return true
            }
            if becameReaper {
                while !batch.isComplete { reapOnce(mine: batch, blocking: true) }
                let next = reaper.withLock { r -> Batch? in
                    r.active = false
                    r.waiters[id] = nil
                    return r.waiters.values.first { !$0.isComplete }
                }
                next?.wake.signal()
                return
            }
            batch.wake.wait()
        }
        reaper.withLock { r in _ = r.waiters.removeValue(forKey: id) }
    }

    /// Harvests completions (waiting for one when `blocking`) and hands them to their batches.
    /// REQUIRES: the caller is the reaper, or (non-blocking) no reaper is active and the reaper
    /// lock is taken here for the harvest.
    private func reapOnce(mine: Batch, blocking: Bool) {
        if !blocking {
            // Used only while waiting for a permit: become reaper briefly if nobody is.
            let took = reaper.withLock { r -> Bool in
                if r.active { return false }
                r.active = true
                return true
            }
            guard took else { return }
            harvest(blocking: false, mine: mine)
            let next = reaper.withLock { r -> Batch? in
                r.active = false
                return r.waiters.values.first { !$0.isComplete }
            }
            next?.wake.signal()
            return
        }
        harvest(blocking: true, mine: mine)
    }

    private func harvest(blocking: Bool, mine: Batch) {
        let maxHarvest = 64
        var tokens = (0..<maxHarvest).map { _ in UInt64(0) }
        var results = [Int32](repeating: 0, count: maxHarvest)
        let n = blocking ? cs_ring_wait(ring, &tokens, &results, UInt32(maxHarvest))
                         : cs_ring_peek(ring, &tokens, &results, UInt32(maxHarvest))
        if n < 0 {
            LSMLog.warning("io_uring_wait_cqe failed: errno \(-n)")
            return
        }
        for j in 0..<Int(n) {
            let slot = Int(tokens[j])
            let (batch, index) = slots.withLock { t -> (Batch, Int) in
                let b = t.batches[slot]!
                t.batches[slot] = nil
                t.free.append(slot)
                return (b, t.opIndex[slot])
            }
            batch.ops[index].result = results[j]
            permits.signal()
            if batch.remaining.subtract(1, ordering: .acquiringAndReleasing).newValue == 0 && batch !== mine {
                batch.wake.signal()
            }
        }
    }
}
