import Foundation
import LSM
import PostgresRedo
import PostgresWAL
import Synchronization

/// The `verify_redo` checker of one timeline: every record ingested with consistency images
/// (`wal_consistency_checking` on the primary) is queued here, and a background thread rebuilds each
/// imaged page at the record's end with our redo and compares it under PostgreSQL's masking (see
/// `RedoVerifier`).
///
/// Off the ingest hot path: ingest only appends to a bounded queue; when the checker falls more than
/// `queueLimit` records behind, further records are skipped (counted) rather than slowing ingest.
/// Mismatches are logged with tenant, timeline, key, LSN, resource manager and first differing offset,
/// counted in a metric, and the latest `reportLimit` are kept for the HTTP API.
final class RedoVerification: Sendable {
    static let queueLimit = 50_000
    static let reportLimit = 50

    private struct State {
        var queue: [DecodedRecord] = []
        var head = 0
        var skipped = 0
        var stopping = false
        var busy = false
        var recent: [RedoVerifier.Mismatch] = []
        var counts: [String: RedoVerifier.Counts] = [:]
        var pendingVMClears = 0
    }

    private let state = Mutex(State())
    private let wake = NSCondition()
    private let exited = DispatchSemaphore(value: 0)
    let tenantId: TenantId
    let timelineId: TimelineId
    private let checkedCounter: @Sendable (String, Int) -> Void
    private let mismatchCounter: @Sendable () -> Void
    private let page: @Sendable (Key, LSN) throws -> [UInt8]?
    /// How the store answered a read (logged with each mismatch).
    private let explain: @Sendable (Key, LSN) -> String

    init(tenantId: TenantId, timelineId: TimelineId, page: @escaping @Sendable (Key, LSN) throws -> [UInt8]?,
         explain: @escaping @Sendable (Key, LSN) -> String,
         checked: @escaping @Sendable (String, Int) -> Void, mismatch: @escaping @Sendable () -> Void) {
        self.tenantId = tenantId
        self.timelineId = timelineId
        self.page = page
        self.explain = explain
        self.checkedCounter = checked
        self.mismatchCounter = mismatch
    }

    func start() {
        Thread.detachNewThread { [self] in
            run()
            exited.signal()
        }
    }

    func stop() {
        state.withLock { $0.stopping = true }
        wake.lock(); wake.broadcast(); wake.unlock()
        exited.wait()
    }

    /// Queues `record` when it carries consistency images. Called by ingest after the record is in.
    func submit(_ record: DecodedRecord) {
        guard RedoVerifier.hasCheckImages(record) else { return }
        let queued = state.withLock { s -> Bool in
            if s.queue.count - s.head >= Self.queueLimit {
                s.skipped += 1
                return false
            }
            s.queue.append(record)
            return true
        }
        if queued { wake.lock(); wake.signal(); wake.unlock() }
    }

    /// Blocks until every record queued so far is checked (tests and the HTTP API's `wait`).
    func drain(timeoutSeconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if state.withLock({ $0.queue.count == $0.head && !$0.busy }) { return true }
            usleep(10_000)
        }
        return false
    }

    private func run() {
        let verifier = RedoVerifier(page: page)
        verifier.explain = explain
        verifier.keepMismatches = 0
        verifier.onMismatch = { [self] m in
            serverLog.error("verify_redo mismatch: tenant \(tenantId) timeline \(timelineId) key \(m.key) LSN \(m.recordEnd) rmgr \(m.resourceManager) record \(m.recordType) block ref #\(m.blockId): \(m.offset.map { "first differing offset \($0)" } ?? "page not built"): \(m.detail)")
            mismatchCounter()
            state.withLock { s in
                s.recent.append(m)
                if s.recent.count > Self.reportLimit { s.recent.removeFirst(s.recent.count - Self.reportLimit) }
            }
        }
        while true {
            let next = state.withLock { s -> DecodedRecord?? in
                if s.stopping { return .some(nil) }
                guard s.head < s.queue.count else { return nil }
                let r = s.queue[s.head]
                s.head += 1
                if s.head >= 4096 && s.head * 2 >= s.queue.count {
                    s.queue.removeFirst(s.head)
                    s.head = 0
                }
                s.busy = true
                return .some(r)
            }
            switch next {
            case .some(nil):
                return
            case .some(.some(let record)):
                let before = verifier.counts
                verifier.check(record)
                for (name, c) in verifier.counts {
                    let delta = c.checked - (before[name]?.checked ?? 0)
                    if delta > 0 { checkedCounter(name.split(separator: "/").first.map(String.init) ?? name, delta) }
                }
                let counts = verifier.counts
                let pending = verifier.pendingClearCount
                state.withLock { $0.counts = counts; $0.pendingVMClears = pending; $0.busy = false }
            case .none:
                wake.lock()
                if state.withLock({ $0.head >= $0.queue.count && !$0.stopping }) { _ = wake.wait(until: Date().addingTimeInterval(0.5)) }
                wake.unlock()
            }
        }
    }

    /// The report served by the HTTP API.
    func json() -> [String: Any] {
        state.withLock { s in
            let totals = s.counts.values.reduce(into: RedoVerifier.Counts()) {
                $0.matched += $1.matched; $0.mismatched += $1.mismatched; $0.failed += $1.failed
                $0.unverifiable += $1.unverifiable; $0.unsupported += $1.unsupported
                $0.chainTooLong += $1.chainTooLong; $0.vmClearsAhead += $1.vmClearsAhead
            }
            var byType: [String: Any] = [:]
            for (name, c) in s.counts {
                byType[name] = ["checked": c.checked, "matched": c.matched, "mismatched": c.mismatched, "failed": c.failed,
                                "unverifiable": c.unverifiable, "unsupported": c.unsupported]
            }
            return [
                "enabled": true,
                "checked": totals.checked, "matched": totals.matched, "mismatched": totals.mismatched,
                "failed": totals.failed, "unverifiable": totals.unverifiable, "unsupported": totals.unsupported,
                "chain_too_long": totals.chainTooLong,
                "vm_clears_ahead": totals.vmClearsAhead, "pending_vm_clears": s.pendingVMClears,
                "skipped": s.skipped, "queued": s.queue.count - s.head,
                "by_record_type": byType,
                "mismatches": s.recent.map { m -> [String: Any] in
                    ["key": "\(m.key)", "lsn": "\(m.recordEnd)", "record_start_lsn": "\(m.recordStart)",
                     "rmgr": m.resourceManager, "record_type": m.recordType, "block_id": Int(m.blockId),
                     "offset": m.offset as Any? ?? NSNull(), "detail": m.detail]
                },
            ]
        }
    }
}
