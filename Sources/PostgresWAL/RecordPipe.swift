import Foundation
import LSM
#if canImport(Glibc)
import Glibc
#endif

/// A bounded queue of decoded records from one decoding thread to one ingesting thread, so that
/// decoding (reassembly, CRC-32C, taking records apart, restoring images) runs on one core while
/// ingest runs on another.
///
/// Protocol: the producer `push`es batches in WAL order and ends with `finish` (with the error that
/// stopped it, if any); the consumer `pop`s until nil, and gets that error after the last batch. A
/// consumer that gives up calls `close`, after which every `push` returns false at once, so the
/// producer stops instead of blocking.
///
/// Invariants:
/// 1. Batches come out in the order they went in, each once; nothing is pushed after `finish`.
/// 2. At most `capacity` records wait in the pipe (a batch larger than that is still accepted when
///    the pipe is empty), so a fast producer cannot run ahead of ingest without bound.
public final class RecordPipe: @unchecked Sendable {
    private let capacity: Int
    // Allocated once, so that their addresses never change.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let changed = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
    // Guarded by `mutex`.
    private var batches: [[DecodedRecord]] = []
    private var head = 0
    private var waiting = 0
    private var finished = false
    private var failure: (any Error)?
    private var closed = false
    /// Batches the consumer is done with, for the producer to reuse their storage (`recycleReturned`).
    private var returned: [[DecodedRecord]] = []
    static let maximumReturnedBatches = 64

    public init(capacity: Int = 16_384) {
        self.capacity = capacity
        mutex.initialize(to: pthread_mutex_t())
        changed.initialize(to: pthread_cond_t())
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(changed, nil)
    }

    deinit {
        pthread_cond_destroy(changed)
        pthread_mutex_destroy(mutex)
        changed.deallocate()
        mutex.deallocate()
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(mutex)
        defer { pthread_mutex_unlock(mutex) }
        return try body()
    }

    /// Producer: queues `batch`, waiting while the pipe is full. False when the consumer closed the
    /// pipe (the batch is dropped).
    @discardableResult
    public func push(_ batch: [DecodedRecord]) -> Bool {
        var batch = batch
        return push(&batch)
    }

    /// Producer: `push`, taking the batch's storage (`batch` is left empty, its capacity kept for
    /// the next one). The pipe then holds the only reference, so the consumer gets records it owns
    /// alone and `consume` can hand them on without copying.
    @discardableResult
    public func push(_ batch: inout [DecodedRecord]) -> Bool {
        guard !batch.isEmpty else { return locked { !closed } }
        let count = batch.count
        let accepted = locked { () -> Bool in
            precondition(!finished, "push after finish")
            while !closed && waiting > 0 && waiting + count > capacity {
                pthread_cond_wait(changed, mutex)
            }
            if closed { return false }
            // Moved in under the lock: the consumer cannot see it while `batch` still refers to it.
            var taken: [DecodedRecord] = []
            swap(&taken, &batch)
            batches.append(taken)
            waiting += count
            pthread_cond_broadcast(changed)
            return true
        }
        batch.removeAll()
        batch.reserveCapacity(count)
        return accepted
    }

    /// Producer: no more batches. `error`, if any, reaches the consumer after the last batch.
    public func finish(throwing error: (any Error)? = nil) {
        locked {
            finished = true
            failure = error
            pthread_cond_broadcast(changed)
        }
    }

    /// Consumer: the next batch, waiting for one; nil once the producer finished and every batch was
    /// taken. Throws the producer's error at that point instead, if it had one.
    public func pop() throws -> [DecodedRecord]? {
        try locked {
            while head == batches.count && !finished && !closed {
                pthread_cond_wait(changed, mutex)
            }
            if head < batches.count {
                let batch = batches[head]
                batches[head] = []
                head += 1
                if head == batches.count {
                    batches.removeAll(keepingCapacity: true)
                    head = 0
                }
                waiting -= batch.count
                pthread_cond_broadcast(changed)
                return batch
            }
            if let failure { throw failure }
            return nil
        }
    }

    /// Consumer: hands a batch it is done with back to the producer (`batch` is left empty), so that
    /// the records' storage is reused, and freed, on the producer's thread. Dropped here when enough
    /// wait already.
    public func giveBack(_ batch: inout [DecodedRecord]) {
        var taken: [DecodedRecord] = []
        swap(&taken, &batch)
        locked {
            guard !closed, returned.count < Self.maximumReturnedBatches else { return }
            returned.append(taken)
            taken = []
        }
    }

    /// Producer: gives every batch handed back so far to `decoder` for reuse (`WALDecoder.recycle`).
    public func recycleReturned(into decoder: inout WALDecoder) {
        var list: [[DecodedRecord]] = []
        locked { swap(&list, &returned) }
        // popLast moves each batch out, so the decoder gets storage it owns alone.
        while var batch = list.popLast() { decoder.recycle(&batch) }
    }

    /// Consumer: stops taking batches; the producer's pushes fail from now on and what waits is dropped.
    public func close() {
        locked {
            closed = true
            batches.removeAll()
            returned.removeAll()
            head = 0
            waiting = 0
            pthread_cond_broadcast(changed)
        }
    }
}

extension RecordPipe {
    /// Decodes WAL on a thread of its own and returns the pipe its records come out of, in batches:
    /// every record that starts before `end` (the one that reaches `end` included, nothing after it).
    /// `read` runs on that thread and hands consecutive WAL bytes, from `start` on, to the closure it
    /// is given, which returns false once the decoder has what it needs.
    public static func decoding(from start: LSN, to end: LSN, segmentSize: Int = PostgresWAL.defaultSegmentSize,
                                read: @escaping @Sendable (_ feed: (UnsafeRawBufferPointer) throws -> Bool) throws -> Void) throws -> RecordPipe {
        let pipe = RecordPipe()
        let first = try WALDecoder(startLSN: start, segmentSize: segmentSize)
        let thread = Thread {
            var decoder = first
            var batch: [DecodedRecord] = []
            batch.reserveCapacity(256)
            do {
                var done = false
                try read { bytes in
                    decoder.feed(bytes)
                    while let record = try decoder.next() {
                        if record.startLSN >= end { done = true; break }
                        batch.append(record)
                        // The bytes past the end LSN may be anything: stop before decoding them.
                        if record.endLSN >= end { done = true; break }
                        if batch.count == 256 {
                            guard pipe.push(&batch) else { done = true; break }
                            pipe.recycleReturned(into: &decoder)
                        }
                    }
                    return !done
                }
                pipe.push(&batch)
                pipe.finish()
            } catch {
                pipe.push(&batch)
                pipe.finish(throwing: error)
            }
        }
        thread.stackSize = 8 << 20
        thread.start()
        return pipe
    }
}

extension RecordPipe {
    /// `decoding(from:to:segmentSize:read:)` over WAL segment files: `paths` are consecutive segments,
    /// the first one holding `start`, read `chunkBytes` at a time from `start`'s offset on.
    public static func decoding(segmentPaths paths: [String], segmentSize: Int, from start: LSN, to end: LSN,
                                chunkBytes: Int = 1 << 20) throws -> RecordPipe {
        try decoding(from: start, to: end, segmentSize: segmentSize) { feed in
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkBytes, alignment: 4096)
            defer { buffer.deallocate() }
            for (i, path) in paths.enumerated() {
                let fd = open(path, O_RDONLY)
                guard fd >= 0 else { throw WALError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
                defer { Glibc.close(fd) }
                // The decoder wants the stream to begin exactly at the start LSN.
                var position = off_t(i == 0 ? Int(start.rawValue % UInt64(segmentSize)) : 0)
                while true {
                    let n = pread(fd, buffer.baseAddress, chunkBytes, position)
                    guard n >= 0 else { throw WALError(.io, "cannot read \(path): \(String(cString: strerror(errno)))") }
                    if n == 0 { break }
                    position += off_t(n)
                    guard try feed(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) else { return }
                }
            }
        }
    }
}

extension RecordPipe {
    /// How a consumer's `consume` went.
    public struct Consumed: Sendable {
        /// Seconds spent waiting for the producer, and in the consumer's body.
        public var waitingSeconds = 0.0
        public var workingSeconds = 0.0
        /// Where the record after the last one taken starts (nil: no record came).
        public var nextRecordLSN: LSN?
    }

    /// Consumer: calls `body` for every record, in order, until the pipe ends (rethrowing the
    /// producer's error, if it had one), timing the waits and the work. `body` gets each record as
    /// the only owner of its storage (so it can change an image in place without a copy); every
    /// batch is given back afterwards (`giveBack`).
    public func consume(_ body: (inout DecodedRecord) throws -> Void) throws -> Consumed {
        func now() -> Double {
            var ts = timespec()
            clock_gettime(CLOCK_MONOTONIC, &ts)
            return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        }
        var result = Consumed()
        var mark = now()
        while var batch = try pop() {
            let t = now()
            result.waitingSeconds += t - mark
            try batch.withUnsafeMutableBufferPointer { records in
                for i in records.indices {
                    // Moved out of the batch for the call (so it is uniquely owned), then back.
                    var record = (records.baseAddress! + i).move()
                    defer { (records.baseAddress! + i).initialize(to: record) }
                    try body(&record)
                }
            }
            if let r = batch.last { result.nextRecordLSN = r.nextRecordLSN }
            giveBack(&batch)
            mark = now()
            result.workingSeconds += mark - t
        }
        result.waitingSeconds += now() - mark
        return result
    }
}
