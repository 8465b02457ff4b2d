import Foundation
import LSM
import Workdir
import PostgresWAL
import WireProtocol

/// Creating a timeline by attaching to a running primary: base backup over the replication
/// protocol, imported as it arrives, then streaming from the backup's start LSN.
///
/// Crash safety: the timeline's directory gets `timeline.json` only after the imported data is
/// flushed (checkpoint), so a crash during the import leaves a directory without metadata, which
/// start-up removes.
enum TimelineAttach {
    static func attach(repository: Repository, tenant: TenantId, timeline id: TimelineId, walSource: String) throws -> Timeline {
        try repository.reserve(tenant, id)
        defer { repository.release(tenant, id) }
        let info: ConnInfo
        do { info = try ConnInfo(parsing: walSource) } catch { throw APIError.badRequest("wal_source is not a valid connection string: \(error)") }
        let conn: PGConnection
        do { conn = try PGConnection.connect(info, replication: true, timeoutSeconds: 30) } catch {
            throw APIError.badRequest("cannot connect to the primary \(info.redacted): \(error)")
        }
        defer { conn.close() }
        let system = try conn.identifySystem()
        do {
            _ = try conn.createPhysicalReplicationSlot(name: "pageserver_\(id)", reserveWAL: true)
        } catch let e as PGError where e.isAlreadyExists {
            serverLog.info("replication slot pageserver_\(id) already exists; reusing it")
        }
        let dir = repository.timelineDirectory(tenant, id)
        try? FileManager.default.removeItem(atPath: dir)
        try DurableFile.makeDirectory(dir)
        var config = repository.config.storeConfig
        config.backgroundFlush = true
        let store = try TimelineStore.open(directory: dir, config: config, context: repository.context)
        do {
            let backup = try conn.baseBackup(label: "pageserver \(id)", fast: true)
            let start = LSN(backup.startLSN)
            let importer = BaseBackupImport(target: TimelineStoreTarget(store: store), startLSN: start)
            var parser: TarStreamParser?
            while let chunk = try backup.next() {
                switch chunk {
                case .archiveStart(let name, let tablespacePath):
                    try parser?.finish()
                    // A tablespace archive holds paths relative to the tablespace directory.
                    let prefix = tablespacePath.isEmpty ? "" : "pg_tblspc/\(name.replacingOccurrences(of: ".tar", with: ""))/"
                    parser = TarStreamParser(consumer: importer, prefix: prefix)
                case .archiveData(let bytes):
                    guard let parser else { throw APIError.internalError("base backup data arrived before an archive started") }
                    try parser.feed(bytes)
                case .manifestStart, .manifestData, .progress:
                    break
                }
            }
            try parser?.finish()
            try importer.finish()
            store.advance(to: start)
            try store.checkpoint()
            let meta = TimelineMetadata(tenantId: "\(tenant)", timelineId: "\(id)", ancestorTimelineId: nil,
                                        ancestorLsn: "\(LSN.zero)", startLsn: "\(start)", walSource: walSource,
                                        systemId: system.systemId, createdAt: rfc3339Now())
            try meta.save(directory: dir)
            serverLog.info("timeline \(id) attached: imported \(importer.filesImported) files, \(importer.blocksImported) blocks at \(start)")
            let timeline = Timeline(tenantId: tenant, timelineId: id, directory: dir, store: store, metadata: meta,
                                    state: .active, repository: repository)
            try repository.register(timeline)
            timeline.startBackgroundWork()
            if let r = timeline.receiver.withLock({ $0 }) {
                switch r.waitUntilStreaming(seconds: 30) {
                case .streaming: break
                case .stopped(let why), .retrying(let why): throw APIError.internalError("timeline \(id) was imported but streaming did not start: \(why)")
                case .connecting: throw APIError.internalError("timeline \(id) was imported but streaming did not start within 30 s")
                }
            }
            return timeline
        } catch {
            if (try? repository.timeline(tenant, id)) == nil {
                store.close()
                try? FileManager.default.removeItem(atPath: dir)
            }
            throw error
        }
    }
}
