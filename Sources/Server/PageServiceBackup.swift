// `basebackup <tenant> <timeline> [lsn|latest]` and `fullbackup <tenant> <timeline> [lsn [prev_lsn]]` on
// the libpq port: a COPY OUT tar stream built by PostgresBackup.DataDirectoryBackup as the timeline was
// at the LSN (default: last_record_lsn).
//
// The LSN is checked before COPY OUT starts (an error is a plain ErrorResponse): it must lie between the
// timeline's start and GC cutoff and last_record_lsn; an LSN a little ahead is waited for (as GetPage
// does, up to wait_lsn_timeout). The tar is streamed in 256 KiB CopyData messages from a thread of its
// own, which blocks while the client's socket is full, so a backup of any size passes through bounded
// memory. A failure after the stream began ends it with an ErrorResponse (the client has a partial
// tar and an error); a client that goes away stops the backup.

import Foundation
import LSM
import PostgresBackup
import WireProtocol

/// The timeline's values for a backup, read with native redo.
struct TimelineBackupSource: BackupSource {
    let timeline: Timeline

    func get(_ keys: [Key], at lsn: LSN) throws -> [[UInt8]?] {
        try timeline.store.get(keys.map { ($0, lsn) }, redo: timeline.redo).map { try $0.get() }
    }
}

extension PageServiceSession {
    func startBackup(_ command: String, _ args: [String], _ connection: PGServerConnection) {
        let usage = "usage: basebackup <tenant_id> <timeline_id> [lsn|latest]; fullbackup <tenant_id> <timeline_id> [lsn [prev_lsn]]"
        guard args.count >= 2 && args.count <= 4 else { return fail(connection, usage, code: "42601") }
        if args.contains("--gzip") { return fail(connection, "\(command) --gzip is not supported; compress on the client", code: "0A000") }
        let timeline: Timeline
        do { timeline = try findTimeline(args[0], args[1]) } catch { return fail(connection, "\(error)", code: "58P01") }
        var requested: LSN?
        if args.count >= 3 && args[2].lowercased() != "latest" {
            guard let l = LSN(parsing: args[2]) else { return fail(connection, "invalid LSN \"\(args[2])\": expected X/Y in hex", code: "22023") }
            requested = l
        }
        let kind: BackupKind = command == "fullbackup" ? .full : .base
        let requestedLSN = requested
        let waitSeconds = settings.waitLSNTimeoutSeconds
        Thread.detachNewThread {
            let store = timeline.store
            let lsn: LSN
            if let requested = requestedLSN {
                do { try timeline.checkReadable(requested) } catch {
                    return self.failFromThread(connection, "\(error)")
                }
                if store.lastRecordLSN < requested {
                    let ok = timeline.lsnWaiter.wait(until: { store.lastRecordLSN >= requested }, deadline: Date().addingTimeInterval(waitSeconds))
                    if !ok {
                        return self.failFromThread(connection, "timed out after \(waitSeconds) s waiting for WAL up to \(requested); timeline \(timeline.timelineId) has ingested up to \(store.lastRecordLSN)")
                    }
                }
                lsn = requested
            } else {
                lsn = store.lastRecordLSN
            }
            connection.eventLoop.execute { connection.startCopyOut() }
            let chunkBytes = 256 << 10
            var buffer: [UInt8] = []
            buffer.reserveCapacity(chunkBytes)
            do {
                try DataDirectoryBackup(source: TimelineBackupSource(timeline: timeline), lsn: lsn, kind: kind).write { chunk in
                    buffer.append(contentsOf: chunk)
                    if buffer.count >= chunkBytes {
                        try buffer.withUnsafeBytes { try connection.sendCopyDataBlocking($0) }
                        buffer.removeAll(keepingCapacity: true)
                    }
                }
                if !buffer.isEmpty { try buffer.withUnsafeBytes { try connection.sendCopyDataBlocking($0) } }
                connection.finishCopyOut(tag: "COPY 0")
                serverLog.info("\(command) of timeline \(timeline.timelineId) at \(lsn) sent to \(connection.peer)")
            } catch {
                serverLog.warning("\(command) of timeline \(timeline.timelineId) at \(lsn) for \(connection.peer) failed: \(error)")
                connection.failCopyOut("\(command) of timeline \(timeline.timelineId) at \(lsn) failed: \(error)")
            }
        }
    }

    private func failFromThread(_ connection: PGServerConnection, _ message: String) {
        connection.sendError(message, code: "22023")
        connection.sendReadyForQuery()
    }
}
