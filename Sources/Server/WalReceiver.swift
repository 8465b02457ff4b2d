import Foundation
import Prometheus
import LSM
import PostgresWAL
import Synchronization
import WireProtocol

/// Streams a timeline's WAL from its primary and ingests every record: the receiving thread reads
/// and decodes (reassembly, CRC, images), an ingest thread per stream ingests, with a bounded
/// `RecordPipe` of decoded records between them, so the two run on two cores.
///
/// Loop: connect (replication=true), IDENTIFY_SYSTEM (the system id must be the timeline's),
/// START_REPLICATION SLOT pageserver_<timeline> PHYSICAL at last_record_lsn (a fresh writable branch:
/// at the shutdown checkpoint its new primary's WAL starts with, Timeline.walStreamStart), then
/// decode and ingest record by record (a stream's end waits until the ingest thread has taken every
/// decoded record); every second (and whenever the primary asks) send a standby status with
/// flush = disk_consistent_lsn, so the slot keeps every byte not yet in layer files. A lost
/// connection is retried with exponential backoff; invalid WAL (a CRC mismatch, a malformed record)
/// or a failed ingest stops the timeline's ingest for good (state Broken, with the reason).
///
/// Invariants:
/// 1. A record is ingested only if its end LSN is above last_record_lsn, so a reconnect or a restart
///    never applies a record twice; streaming restarts at last_record_lsn, so none is skipped.
/// 2. `WalIngest` lives as long as the receiver: its caches match what the store holds.
final class WalReceiver: @unchecked Sendable {
    enum Status: Sendable, Equatable {
        case connecting
        case streaming
        case retrying(String)
        case stopped(String)
    }

    unowned let timeline: Timeline
    let status = Mutex<Status>(.connecting)
    private let stopping = Atomic<Bool>(false)
    private let exited = DispatchSemaphore(value: 0)
    private var ingest: WalIngest?
    private var rmgrCounters: [UInt8: (ingested: Prometheus.Counter, uninterpreted: Prometheus.Counter)] = [:]
    private let walBytes: Prometheus.Counter

    init(timeline: Timeline) {
        self.timeline = timeline
        self.walBytes = timeline.repository.metrics.walBytesReceived("\(timeline.tenantId)", "\(timeline.timelineId)")
    }

    func start() {
        Thread.detachNewThread { [self] in
            run()
            exited.signal()
        }
    }

    func stop() {
        guard !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        exited.wait()
    }

    private var slotName: String { "pageserver_\(timeline.timelineId)" }

    private func run() {
        let store = timeline.store
        let target = timeline.makeIngestTarget()
        let ingest = WalIngest(target: target, pageSource: TimelineStorePageSource(store: store, redo: timeline.redo))
        self.ingest = ingest
        var backoff = 0.1
        let maxBackoff = timeline.repository.config.walReceiverBackoffMaxSeconds
        while !stopping.load(ordering: .acquiring) {
            do {
                try streamOnce(ingest)
                backoff = 0.1
            } catch let e as WALError {
                fail("invalid WAL, ingest stopped: \(e)")
                return
            } catch let e as IngestStopped {
                fail(e.message)
                return
            } catch {
                if stopping.load(ordering: .acquiring) { break }
                let message = "\(error)"
                status.withLock { $0 = .retrying(message) }
                serverLog.warning("WAL receiver of timeline \(timeline.timelineId): \(message); retrying in \(String(format: "%.1f", backoff)) s")
                let until = Date().addingTimeInterval(backoff)
                while Date() < until && !stopping.load(ordering: .acquiring) { usleep(20_000) }
                backoff = min(backoff * 2, maxBackoff)
            }
        }
        status.withLock { $0 = .stopped("stopped") }
    }

    private func fail(_ message: String) {
        serverLog.error("timeline \(timeline.timelineId): \(message)")
        status.withLock { $0 = .stopped(message) }
        timeline.markBroken(message)
    }

    struct IngestStopped: Error { var message: String }

    private func streamOnce(_ ingest: WalIngest) throws {
        guard let source = timeline.walSource else { throw IngestStopped(message: "timeline has no WAL source") }
        let info = try ConnInfo(parsing: source)
        status.withLock { $0 = .connecting }
        let conn = try PGConnection.connect(info, replication: true, timeoutSeconds: 10)
        defer { conn.close() }
        let system = try conn.identifySystem()
        if let expected = timeline.metadata.withLock({ $0.systemId }), expected != system.systemId {
            throw IngestStopped(message: "the WAL source \(info.redacted) is database system \(system.systemId), but this timeline holds system \(expected)")
        }
        let store = timeline.store
        let start = timeline.walStreamStart()
        var decoder = try WALDecoder(startLSN: start)
        try conn.startReplication(slot: slotName, startLSN: start.rawValue, timeline: system.timeline)
        status.withLock { $0 = .streaming }
        serverLog.info("timeline \(timeline.timelineId): streaming WAL from \(info.redacted) at \(start)")
        // Decoding stays on this thread; ingest runs on a thread of its own, fed through `pipe`.
        // Whatever way this function ends, the ingest thread first takes every record already
        // decoded, so the next stream (or the caller's failure handling) starts from a store that
        // holds exactly the records before the decoder's position or before the failed record.
        let pipe = RecordPipe(capacity: 8192)
        let ingester = IngestThread(receiver: self, ingest: ingest, pipe: pipe)
        ingester.start()
        defer {
            pipe.finish()
            ingester.join()
        }
        var batch: [DecodedRecord] = []
        var lastStatusTime = Date.distantPast
        var lastReplyRequest = Date.distantPast
        while !stopping.load(ordering: .acquiring) {
            if let failure = ingester.failure { throw IngestStopped(message: failure) }
            let message = try conn.receive(timeoutSeconds: 0.5)
            switch message {
            case .xlogData(let data)?:
                walBytes.increment(by: Int64(data.bytes.count))
                let position = decoder.position.rawValue
                if data.end <= position { break }
                guard data.start <= position else {
                    throw IngestStopped(message: "the primary sent WAL from \(LSN(data.start)) but \(LSN(position)) was expected")
                }
                decoder.feed(data.bytes[Int(position - data.start)...])
                do {
                    while let record = try decoder.next() {
                        batch.append(record)
                        if batch.count == 256 {
                            guard pipe.push(&batch) else { throw IngestStopped(message: ingester.failure ?? "ingest stopped") }
                        }
                    }
                } catch let e as WALError {
                    // Invalid WAL: every record before the bad one is still ingested (the deferred
                    // join waits for it), nothing after it.
                    pipe.push(&batch)
                    throw e
                }
                guard pipe.push(&batch) else { throw IngestStopped(message: ingester.failure ?? "ingest stopped") }
                pipe.recycleReturned(into: &decoder)
            case .keepalive(let walEnd, _, let replyRequested)?:
                if replyRequested {
                    lastStatusTime = .distantPast
                    // A primary that asks again and again while we have all its WAL is waiting for us
                    // to confirm everything (a shutting-down walsender does, and blocks the shutdown
                    // until then): flush, so that flush = disk_consistent_lsn can say so.
                    let now = Date()
                    if decoder.position.rawValue >= walEnd && now.timeIntervalSince(lastReplyRequest) < 2
                        && store.diskConsistentLSN < store.lastRecordLSN {
                        try store.checkpoint()
                    }
                    lastReplyRequest = now
                }
            case .endOfStream?:
                return
            case nil:
                break
            }
            if Date().timeIntervalSince(lastStatusTime) >= 1 {
                // Backpressure: wait while compaction is behind (TimelineMaintenance.throttle).
                timeline.maintenance.refreshDepth()
                timeline.maintenance.throttle { stopping.load(ordering: .acquiring) }
                try conn.sendStandbyStatus(write: decoder.position.rawValue, flush: store.diskConsistentLSN.rawValue,
                                           apply: store.lastRecordLSN.rawValue)
                lastStatusTime = Date()
            }
        }
    }

    /// Ingests one decoded record (the ingest thread).
    fileprivate func ingestOne(_ record: inout DecodedRecord, _ ingest: WalIngest) throws {
        let store = timeline.store
        if record.endLSN <= store.lastRecordLSN { return }
        let uninterpretedBefore = ingest.uninterpretedRecords(of: record.resourceManager)
        do {
            try ingest.ingest(&record)
        } catch {
            throw IngestStopped(message: "ingest of the record at \(record.startLSN) (\(record.resourceManager)) failed: \(error)")
        }
        timeline.verification?.submit(record)
        count(record, uninterpreted: ingest.uninterpretedRecords(of: record.resourceManager) > uninterpretedBefore)
    }

    private func count(_ record: DecodedRecord, uninterpreted: Bool) {
        let id = record.resourceManager.rawValue
        if rmgrCounters[id] == nil {
            let name = "\(record.resourceManager)"
            let m = timeline.repository.metrics
            rmgrCounters[id] = (m.recordsIngested("\(timeline.tenantId)", "\(timeline.timelineId)", rmgr: name),
                                m.recordsUninterpreted("\(timeline.tenantId)", "\(timeline.timelineId)", rmgr: name))
        }
        rmgrCounters[id]!.ingested.increment()
        if uninterpreted { rmgrCounters[id]!.uninterpreted.increment() }
    }

    /// Waits until streaming has started or failed, at most `seconds`.
    func waitUntilStreaming(seconds: Double) -> Status {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let s = status.withLock { $0 }
            switch s {
            case .streaming, .stopped: return s
            default: usleep(10_000)
            }
        }
        return status.withLock { $0 }
    }
}

func redactConnInfo(_ s: String) -> String {
    (try? ConnInfo(parsing: s).redacted) ?? "(unparsable connection string)"
}

/// The thread that ingests what a `WalReceiver` decodes: pops batches from the pipe and ingests
/// them in order until the pipe ends. The first failure closes the pipe (so the receiver's next push
/// fails) and is kept in `failure` for the receiver to report.
private final class IngestThread: @unchecked Sendable {
    private let receiver: WalReceiver
    private let ingest: WalIngest
    private let pipe: RecordPipe
    private let exited = DispatchSemaphore(value: 0)
    private let failureMessage = Mutex<String?>(nil)

    init(receiver: WalReceiver, ingest: WalIngest, pipe: RecordPipe) {
        self.receiver = receiver
        self.ingest = ingest
        self.pipe = pipe
    }

    var failure: String? { failureMessage.withLock { $0 } }

    func start() {
        let thread = Thread { [self] in
            defer { exited.signal() }
            do {
                _ = try pipe.consume { try receiver.ingestOne(&$0, ingest) }
            } catch let e as WalReceiver.IngestStopped {
                failureMessage.withLock { $0 = e.message }
                pipe.close()
            } catch {
                failureMessage.withLock { $0 = "\(error)" }
                pipe.close()
            }
        }
        thread.stackSize = 8 << 20
        thread.start()
    }

    /// Waits until the thread has ingested everything pushed before `pipe.finish()` (or failed).
    func join() { exited.wait() }
}
