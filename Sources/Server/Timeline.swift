import Foundation
import LSM
import Workdir
import PostgresBackup
import PostgresRedo
import PostgresWAL
import Synchronization

/// One timeline as the daemon runs it: its store, its durable metadata, its WAL receiver.
///
/// A branch has an `ancestor` timeline and a branch point P (`ancestor_lsn`): its store holds only
/// what was written to it after P and reads the rest from the ancestor (TimelineStore's ancestor).
/// Ancestors are opened before their children and are never deleted while children exist.
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
    /// The parent timeline of a branch.
    let ancestor: Timeline?
    /// Compaction and GC (background thread, and the passes of PUT compact / do_gc).
    let maintenance: TimelineMaintenance

    init(tenantId: TenantId, timelineId: TimelineId, directory: String, store: TimelineStore, metadata: TimelineMetadata,
         state: State, repository: Repository, ancestor: Timeline? = nil) {
        self.ancestor = ancestor
        self.tenantId = tenantId
        self.timelineId = timelineId
        self.directory = directory
        self.store = store
        self.metadata = Mutex(metadata)
        self.state = Mutex(state)
        self.repository = repository
        maintenance = TimelineMaintenance(tenantId: tenantId, timelineId: timelineId, config: repository.config, metrics: repository.metrics)
        defer { maintenance.timeline = self }
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
                explain: { key, lsn in store.explain(key, at: lsn) },
                checked: { rmgr, n in metrics.redoVerifyChecked(t, tl, rmgr: rmgr).increment(by: Int64(n)) },
                mismatch: { mismatches.increment() })
        } else {
            verification = nil
        }
    }

    /// Opens an existing timeline directory.
    /// Opens an existing timeline directory; a branch's `ancestor` must be open already.
    static func open(tenantId: TenantId, timelineId: TimelineId, directory: String, metadata meta: TimelineMetadata,
                     ancestor: Timeline?, repository: Repository) throws -> Timeline {
        var storeAncestor: TimelineStore.Ancestor?
        if let ancestor {
            guard let p = LSN(parsing: meta.ancestorLsn) else {
                throw StorageError(.corruption, "ancestor_lsn '\(meta.ancestorLsn)' is not an LSN", file: directory + "/" + TimelineMetadata.fileName)
            }
            storeAncestor = .init(store: ancestor.store, lsn: p)
        }
        let store = try TimelineStore.open(directory: directory, config: repository.config.storeConfig, context: repository.context,
                                           ancestor: storeAncestor)
        return Timeline(tenantId: tenantId, timelineId: timelineId, directory: directory, store: store, metadata: meta,
                        state: .active, repository: repository, ancestor: ancestor)
    }

    var walSource: String? { metadata.withLock { $0.walSource } }

    /// The first LSN this timeline's own data starts at (an attached timeline's base backup start
    /// LSN; a branch's branch point).
    var startLSN: LSN { metadata.withLock { LSN(parsing: $0.startLsn) } ?? .zero }

    /// The branch point in the ancestor (0/0 without one).
    var ancestorLSN: LSN { metadata.withLock { LSN(parsing: $0.ancestorLsn) } ?? .zero }

    /// The oldest LSN a read of this timeline can be answered at: its GC cutoff, and its start, or
    /// for a branch what its ancestor can answer (reads below the branch point go there).
    var oldestReadableLSN: LSN {
        let own = store.gcCutoffLSN
        guard let ancestor else { return max(startLSN, own) }
        return max(ancestor.oldestReadableLSN, own)
    }

    /// Where WAL streaming (re)starts: last_record_lsn; for a branch that has not ingested a record
    /// of its own yet, the shutdown checkpoint record that a PostgreSQL started on the branch's
    /// fullbackup begins its WAL with (the branch's WAL continues after the branch point).
    func walStreamStart() -> LSN {
        let last = store.lastRecordLSN
        guard ancestor != nil, last == ancestorLSN else { return last }
        let control = (try? store.get(KeySpace.controlFile, at: last, redo: ImageOnlyRedo())) ?? nil
        return DataDirectoryBackup.walStart(forBackupAt: last, pgControl: control)
    }

    /// Checks that a read at `lsn` can be answered; the error names both LSNs.
    func checkReadable(_ lsn: LSN) throws {
        let cutoff = store.gcCutoffLSN
        if lsn < cutoff {
            throw APIError.badRequest("LSN \(lsn) is below the GC cutoff \(cutoff) of timeline \(timelineId): those page versions are gone")
        }
        if let ancestor {
            // At the branch point itself the ancestor keeps what a read needs (a retained LSN).
            if lsn < ancestorLSN { try ancestor.checkReadable(lsn) }
        } else if lsn < startLSN {
            throw APIError.badRequest("LSN \(lsn) is before the start \(startLSN) of timeline \(timelineId)")
        }
    }

    /// The ingest target WAL goes through (keeps the size cache and the LSN waiters up to date).
    func makeIngestTarget() -> TimelineIngestTarget {
        TimelineIngestTarget(store: store, relSizes: relSizes, lsnWaiter: lsnWaiter, redo: redo,
                             imageThreshold: repository.config.ingestImageThreshold)
    }

    /// Starts the WAL receiver when the timeline has a WAL source.
    func startBackgroundWork() {
        verification?.start()
        maintenance.start()
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
        maintenance.stop()
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
