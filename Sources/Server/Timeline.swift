import Foundation
import LSM
import PostgresRedo
import PostgresWAL
import Synchronization

/// One timeline as the daemon runs it: its store, its durable metadata, its WAL receiver.
///
/// States: `attaching` (base backup being imported), `active`, `broken` (ingest stopped with an
/// error; reads of what was stored still work), `stopping`.
final class Timeline: Sendable {
    enum State: Sendable, Equatable {
        case attaching, active, broken(String), stopping

        var name: String {
            switch self {
            case .attaching: return "Attaching"
            case .active: return "Active"
            case .broken: return "Broken"
            case .stopping: return "Stopping"
            }
        }
    }

    let tenantId: TenantId
    let timelineId: TimelineId
    let directory: String
    let store: TimelineStore
    let metadata: Mutex<TimelineMetadata>
    let state: Mutex<State>
    let receiver = Mutex<WalReceiver?>(nil)
    /// Native redo, with the settings (data checksums, wal_log_hints) of the cluster's pg_control.
    let redo: PostgresRedo
    /// The verify_redo checker, when the setting is on.
    let verification: RedoVerification?
    /// Readers waiting for an LSN to be ingested (the page service).
    let lsnWaiter = LSNWaiter()
    /// Relation sizes and existence, kept off the layer files (see TimelineReadSupport.swift).
    let relSizes = RelSizeCache()
    unowned let repository: Repository

    init(tenantId: TenantId, timelineId: TimelineId, directory: String, store: TimelineStore, metadata: TimelineMetadata,
         state: State, repository: Repository) {
        self.tenantId = tenantId
        self.timelineId = timelineId
        self.directory = directory
        self.store = store
        self.metadata = Mutex(metadata)
        self.state = Mutex(state)
        self.repository = repository
        let control = try? store.get(KeySpace.controlFile, at: .max, redo: ImageOnlyRedo())
        var settings = (control.flatMap { $0 }).flatMap { try? RedoSettings(pgControl: $0) } ?? RedoSettings()
        settings.maxChainLength = repository.config.maxChainLength
        self.redo = PostgresRedo(settings: settings)
        if repository.config.verifyRedo {
            let store = store, redo = self.redo, metrics = repository.metrics
            let t = "\(tenantId)", tl = "\(timelineId)"
            let mismatches = metrics.redoVerifyMismatches(t, tl)
            verification = RedoVerification(
                tenantId: tenantId, timelineId: timelineId,
                page: { key, lsn in try store.get(key, at: lsn, redo: redo) },
                checked: { rmgr, n in metrics.redoVerifyChecked(t, tl, rmgr: rmgr).increment(by: Int64(n)) },
                mismatch: { mismatches.increment() })
        } else {
            verification = nil
        }
    }

    /// Opens an existing timeline directory.
    static func open(tenantId: TenantId, timelineId: TimelineId, directory: String, repository: Repository) throws -> Timeline {
        let meta = try TimelineMetadata.load(directory: directory)
        let store = try TimelineStore.open(directory: directory, config: repository.config.storeConfig, context: repository.context)
        return Timeline(tenantId: tenantId, timelineId: timelineId, directory: directory, store: store, metadata: meta,
                        state: .active, repository: repository)
    }

    var walSource: String? { metadata.withLock { $0.walSource } }

    /// The first LSN this timeline holds (its base backup's start LSN).
    var startLSN: LSN { metadata.withLock { LSN(parsing: $0.startLsn) } ?? .zero }

    /// The ingest target WAL goes through (keeps the size cache and the LSN waiters up to date).
    func makeIngestTarget() -> TimelineIngestTarget {
        TimelineIngestTarget(store: store, relSizes: relSizes, lsnWaiter: lsnWaiter, redo: redo,
                             imageThreshold: repository.config.ingestImageThreshold)
    }

    /// Starts the WAL receiver when the timeline has a WAL source.
    func startBackgroundWork() {
        verification?.start()
        guard walSource != nil else { return }
        let r = WalReceiver(timeline: self)
        receiver.withLock { $0 = r }
        r.start()
    }

    func markBroken(_ message: String) {
        state.withLock { $0 = .broken(message) }
    }

    /// Stops the receiver and flushes the in-memory layer.
    /// A broken timeline is not flushed: its in-memory layer may hold part of the record that failed,
    /// and the primary's slot still keeps the WAL from disk_consistent_lsn on.
    func shutdown() {
        let broken = state.withLock { s -> Bool in
            if case .broken = s { return true }
            s = .stopping
            return false
        }
        receiver.withLock { $0 }?.stop()
        verification?.stop()
        if !broken {
            // The receiver has stopped between records, so everything put is complete.
            do { try store.checkpoint() } catch { serverLog.error("final flush of timeline \(timelineId) failed: \(error)") }
        }
        store.close()
    }

    /// The timeline object of the HTTP API.
    func json() -> [String: Any] {
        let m = metadata.withLock { $0 }
        var o: [String: Any] = [
            "tenant_id": "\(tenantId)",
            "timeline_id": "\(timelineId)",
            "ancestor_timeline_id": m.ancestorTimelineId as Any? ?? NSNull(),
            "ancestor_lsn": m.ancestorLsn,
            "start_lsn": m.startLsn,
            "last_record_lsn": "\(store.lastRecordLSN)",
            "disk_consistent_lsn": "\(store.diskConsistentLSN)",
            "latest_gc_cutoff_lsn": "\(store.gcCutoffLSN)",
            "state": state.withLock { $0.name },
            "wal_source": m.walSource.map { redactConnInfo($0) } as Any? ?? NSNull(),
            "created_at": m.createdAt,
        ]
        if case .broken(let why) = state.withLock({ $0 }) { o["broken_reason"] = why }
        if let sys = m.systemId { o["system_id"] = sys }
        o["in_memory_bytes"] = store.inMemoryBytes
        return o
    }
}
