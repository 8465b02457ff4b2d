import Foundation
import LSM
import Workdir
import PostgresWAL
import WireProtocol

/// Branches: creating one at an LSN of an ancestor, giving a timeline a (new) WAL source, deleting a
/// timeline.
///
/// Creating a branch copies nothing: the new timeline's store starts empty at the branch point P
/// and reads everything at or below P from the ancestor (TimelineStore's ancestor). Before the
/// branch is registered the ancestor is checkpointed up to at least P, so that after a crash the
/// ancestor holds everything the branch reads from it without waiting for its WAL again.
///
/// A branch becomes writable the PostgreSQL way: a vanilla PostgreSQL 15 starts on the branch's
/// fullbackup at P, and `setWalSource` points the branch at it. That server's WAL begins with the
/// backup's shutdown checkpoint record (at P rounded up, see Timeline.walStreamStart) and continues
/// with its own writes; the branch ingests it like any primary's WAL. The ancestor never sees it.
///
/// Invariants:
/// 1. A branch point lies in [ancestor's oldest readable LSN, ancestor's last_record_lsn] and is at
///    or above the ancestor's GC cutoff when the branch is created.
/// 2. A timeline with children is never deleted; a deletion renames the directory to
///    NAME.deleted (durably) before removing files, so a crash mid-way never leaves half a timeline
///    that start-up would load.
enum TimelineBranch {
    static func create(repository: Repository, tenant: TenantId, timeline id: TimelineId, ancestor ancestorId: TimelineId,
                       startLSN requested: LSN?) throws -> Timeline {
        let ancestor: Timeline
        do { ancestor = try repository.timeline(tenant, ancestorId) } catch let e as APIError where e.status == 404 {
            throw APIError.notFound("ancestor timeline \(ancestorId) not found in tenant \(tenant)")
        }
        try repository.reserve(tenant, id)
        defer { repository.release(tenant, id) }
        // No GC of the ancestor between the cutoff check and the registration (invariant 1).
        ancestor.maintenance.branchLock.lock()
        defer { ancestor.maintenance.branchLock.unlock() }
        let last = ancestor.store.lastRecordLSN
        let p = requested ?? last
        guard p <= last else {
            throw APIError.badRequest("ancestor_start_lsn \(p) is above the last_record_lsn \(last) of ancestor timeline \(ancestorId)")
        }
        let cutoff = ancestor.store.gcCutoffLSN
        guard p >= cutoff else {
            throw APIError.badRequest("ancestor_start_lsn \(p) is below the GC cutoff \(cutoff) of ancestor timeline \(ancestorId): those page versions are gone")
        }
        let oldest = ancestor.oldestReadableLSN
        guard p >= oldest else {
            throw APIError.badRequest("ancestor_start_lsn \(p) is before the oldest LSN \(oldest) ancestor timeline \(ancestorId) can serve")
        }
        if ancestor.store.diskConsistentLSN < p { try ancestor.store.checkpointAtRecordBoundary() }

        let dir = repository.timelineDirectory(tenant, id)
        try? FileManager.default.removeItem(atPath: dir)
        try DurableFile.makeDirectory(dir)
        do {
            let store = try TimelineStore.open(directory: dir, config: repository.config.storeConfig, context: repository.context,
                                               ancestor: .init(store: ancestor.store, lsn: p))
            let parent = ancestor.metadata.withLock { $0 }
            let meta = TimelineMetadata(tenantId: "\(tenant)", timelineId: "\(id)", ancestorTimelineId: "\(ancestorId)",
                                        ancestorLsn: "\(p)", startLsn: "\(p)", walSource: nil, systemId: parent.systemId,
                                        createdAt: rfc3339Now())
            do {
                try meta.save(directory: dir)
            } catch {
                store.close()
                throw error
            }
            let timeline = Timeline(tenantId: tenant, timelineId: id, directory: dir, store: store, metadata: meta,
                                    state: .active, repository: repository, ancestor: ancestor)
            try repository.register(timeline)
            timeline.startBackgroundWork()
            serverLog.info("timeline \(id) created as a branch of \(ancestorId) at \(p)")
            return timeline
        } catch {
            if (try? repository.timeline(tenant, id)) == nil { try? FileManager.default.removeItem(atPath: dir) }
            throw error
        }
    }

    /// Makes `timeline` stream its WAL from `conninfo` from now on: checks the server is the same
    /// database system, creates the replication slot there, stores the source durably, (re)starts
    /// the receiver and answers once streaming has started.
    static func setWalSource(repository: Repository, timeline: Timeline, conninfo: String) throws -> Timeline {
        if case .broken(let why) = timeline.state.withLock({ $0 }) {
            throw APIError.conflict("timeline \(timeline.timelineId) is broken (\(why)); its WAL source cannot be changed")
        }
        let info: ConnInfo
        do { info = try ConnInfo(parsing: conninfo) } catch { throw APIError.badRequest("wal_source is not a valid connection string: \(error)") }
        let conn: PGConnection
        do { conn = try PGConnection.connect(info, replication: true, timeoutSeconds: 30) } catch {
            throw APIError.badRequest("cannot connect to the WAL source \(info.redacted): \(error)")
        }
        defer { conn.close() }
        let system = try conn.identifySystem()
        if let expected = timeline.metadata.withLock({ $0.systemId }), expected != system.systemId {
            throw APIError.badRequest("the WAL source \(info.redacted) is database system \(system.systemId), but timeline \(timeline.timelineId) holds system \(expected)")
        }
        let start = timeline.walStreamStart()
        guard system.xlogPos >= start.rawValue else {
            throw APIError.badRequest("the WAL source \(info.redacted) has written WAL only up to \(LSN(system.xlogPos)), but timeline \(timeline.timelineId) continues at \(start)")
        }
        do {
            try conn.createPhysicalReplicationSlot(name: "pageserver_\(timeline.timelineId)", reserveWAL: true)
        } catch let e as PGError where e.isAlreadyExists {
            serverLog.info("replication slot pageserver_\(timeline.timelineId) already exists on \(info.redacted); reusing it")
        }
        timeline.receiver.withLock { $0 }?.stop()
        var meta = timeline.metadata.withLock { $0 }
        meta.walSource = conninfo
        if meta.systemId == nil { meta.systemId = system.systemId }
        try meta.save(directory: timeline.directory)
        timeline.metadata.withLock { $0 = meta }
        let r = WalReceiver(timeline: timeline)
        timeline.receiver.withLock { $0 = r }
        r.start()
        switch r.waitUntilStreaming(seconds: 30) {
        case .streaming: break
        case .stopped(let why), .retrying(let why): throw APIError.internalError("streaming from \(info.redacted) did not start: \(why)")
        case .connecting: throw APIError.internalError("streaming from \(info.redacted) did not start within 30 s")
        }
        serverLog.info("timeline \(timeline.timelineId) streams WAL from \(info.redacted) at \(start)")
        return timeline
    }

    /// Deletes a timeline without children: it leaves the registry, its receiver stops, its
    /// replication slot on the WAL source is dropped (best effort), and its files are removed.
    /// Returns what happened to the slot: nil (no WAL source), "dropped" or why it was not.
    static func delete(repository: Repository, timeline: Timeline) throws -> String? {
        try repository.unregister(timeline)
        timeline.state.withLock { $0 = .stopping }
        timeline.receiver.withLock { $0 }?.stop()
        timeline.verification?.stop()
        timeline.maintenance.stop()
        timeline.store.close()
        var slot: String?
        if let source = timeline.walSource, let info = try? ConnInfo(parsing: source) {
            do {
                let conn = try PGConnection.connect(info, replication: true, timeoutSeconds: 5)
                defer { conn.close() }
                try conn.dropReplicationSlot(name: "pageserver_\(timeline.timelineId)")
                slot = "dropped"
            } catch {
                serverLog.warning("timeline \(timeline.timelineId) deleted, but its slot on \(info.redacted) was not dropped: \(error)")
                slot = "not dropped: \(error)"
            }
        }
        let graveyard = timeline.directory + Repository.deletedSuffix
        guard rename(timeline.directory, graveyard) == 0 else {
            throw APIError.internalError("cannot rename \(timeline.directory) for deletion: \(String(cString: strerror(errno)))")
        }
        let parent = (timeline.directory as NSString).deletingLastPathComponent
        let dfd = open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 { fsync(dfd); close(dfd) }
        try? FileManager.default.removeItem(atPath: graveyard)
        serverLog.info("timeline \(timeline.timelineId) of tenant \(timeline.tenantId) deleted")
        return slot
    }
}
