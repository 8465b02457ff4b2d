// BASE_BACKUP on a replication connection, PostgreSQL 15 "copy stream" format (TARGET 'client').
//
//   client: BASE_BACKUP (LABEL 'l', CHECKPOINT 'fast', TARGET 'client', ...)
//   server: result set 1: one row (recptr text "X/Y", tli int8): the backup's start
//           result set 2: one row per tablespace (spcoid oid, spclocation text, size int8 in kB);
//                         the main data directory's row has NULL oid and location
//           CopyOutResponse 'H'
//           CopyData 'd' whose first byte says what follows:
//             'n' new archive:  [archive name cstring] [tablespace path cstring, "" for the main one]
//             'd' data:         bytes of the current archive (a tar stream), or of the manifest
//             'p' progress:     [bytes done i64]
//             'm' manifest:     no payload; the following 'd' messages are the backup manifest
//           CopyDone 'c'
//           result set 3: one row (recptr, tli): the backup's end
//           ReadyForQuery 'Z'
// Without TARGET, PostgreSQL 15 falls back to the pre-15 layout (one COPY per tablespace, no type
// bytes), which this reader does not accept.
//
// The archive bytes are handed out one CopyData message at a time (32 KiB on the server side), so a
// backup of any size passes through bounded memory.

/// What to ask of BASE_BACKUP.
public struct BaseBackupOptions: Sendable, Equatable {
    public var label: String
    /// CHECKPOINT 'fast': start at once instead of waiting for a spread checkpoint.
    public var fastCheckpoint: Bool
    /// WAL: include the WAL needed to make the backup consistent (as archive "pg_wal.tar").
    public var includeWAL: Bool
    /// MANIFEST 'yes': send a backup manifest after the archives.
    public var manifest: Bool
    /// PROGRESS: compute the total size first, so that tablespace sizes are reported.
    public var progress: Bool
    /// WAIT false: do not wait for the WAL to be archived at the end.
    public var waitForWALArchive: Bool
    /// MAX_RATE in kB/s (32...1048576); nil for no limit.
    public var maxRateKBPerSecond: Int?
    /// VERIFY_CHECKSUMS: let the server check data checksums while reading (the default there is on).
    public var verifyChecksums: Bool

    public init(label: String, fastCheckpoint: Bool = true, includeWAL: Bool = false, manifest: Bool = false,
                progress: Bool = false, waitForWALArchive: Bool = true, maxRateKBPerSecond: Int? = nil,
                verifyChecksums: Bool = true) {
        self.label = label
        self.fastCheckpoint = fastCheckpoint
        self.includeWAL = includeWAL
        self.manifest = manifest
        self.progress = progress
        self.waitForWALArchive = waitForWALArchive
        self.maxRateKBPerSecond = maxRateKBPerSecond
        self.verifyChecksums = verifyChecksums
    }

    /// The command text.
    var command: String {
        let quotedLabel = "'" + label.replacing("'", with: "''") + "'"
        var options = ["LABEL \(quotedLabel)", "TARGET 'client'"]
        if fastCheckpoint { options.append("CHECKPOINT 'fast'") }
        if includeWAL { options.append("WAL") }
        options.append(manifest ? "MANIFEST 'yes'" : "MANIFEST 'no'")
        if progress { options.append("PROGRESS") }
        if !waitForWALArchive { options.append("WAIT false") }
        if let rate = maxRateKBPerSecond { options.append("MAX_RATE \(rate)") }
        if !verifyChecksums { options.append("VERIFY_CHECKSUMS false") }
        return "BASE_BACKUP (" + options.joined(separator: ", ") + ")"
    }
}

/// One tablespace of a base backup, from the second result set.
public struct BackupTablespace: Sendable, Equatable {
    /// The tablespace OID; nil for the main data directory.
    public var oid: UInt32?
    /// Its directory on the server; nil for the main data directory.
    public var location: String?
    /// Its size in kB when PROGRESS was requested.
    public var sizeKB: Int64?
}

/// One piece of a base backup stream.
public enum BaseBackupChunk: Sendable, Equatable {
    /// A new archive begins ("base.tar" for the main data directory, "<oid>.tar" for a tablespace,
    /// "pg_wal.tar" for included WAL); the `archiveData` that follow belong to it.
    case archiveStart(name: String, tablespacePath: String)
    /// The next bytes of the current archive (a tar stream; feed them to a `TarStreamReader`).
    case archiveData([UInt8])
    /// The backup manifest begins; `manifestData` follow.
    case manifestStart
    case manifestData([UInt8])
    /// The server's count of bytes sent so far.
    case progress(bytesDone: UInt64)
}

/// A base backup being read. Pull chunks with `next()` until it returns nil; the connection is idle
/// again after that. REQUIRES: used on the connection's thread, and no other call on the connection
/// until `next()` has returned nil (the connection refuses them).
public final class BaseBackupStream {
    public let connection: PGConnection
    /// Where the backup starts: replay from here (the checkpoint's redo point).
    public let startLSN: UInt64
    public let startTimeline: UInt32
    public let tablespaces: [BackupTablespace]
    /// Where WAL replay must reach for the backup to be consistent; known once `next()` returned nil.
    public private(set) var endLSN: UInt64?
    public private(set) var endTimeline: UInt32?
    /// The name of the archive that `archiveData` chunks currently belong to.
    public private(set) var currentArchive: String?

    private var inManifest = false
    private var finished = false

    init(connection: PGConnection, startLSN: UInt64, startTimeline: UInt32, tablespaces: [BackupTablespace]) {
        self.connection = connection
        self.startLSN = startLSN
        self.startTimeline = startTimeline
        self.tablespaces = tablespaces
    }

    /// The next chunk, or nil at the end of the backup (then `endLSN` is set). A server error is
    /// thrown with code `server`; the connection stays usable after it.
    public func next() throws -> BaseBackupChunk? {
        if finished { return nil }
        guard connection.state == .copyOut else {
            throw PGError(.invalidState, "the base backup stream is no longer readable (the connection is \(connection.state))")
        }
        let peer = connection.channel.peer
        while true {
            enum Step { case chunk(BaseBackupChunk), skip, copyDone, error(ServerMessage) }
            let step: Step = try connection.nextMessage(deadline: connection.ioDeadline(), during: "BASE_BACKUP") { message in
                switch message.type {
                case UInt8(ascii: "d"):
                    let kind = try message.uint8()
                    switch kind {
                    case UInt8(ascii: "n"):
                        let name = try message.cString()
                        let path = try message.cString()
                        return .chunk(.archiveStart(name: name, tablespacePath: path))
                    case UInt8(ascii: "d"):
                        let bytes = Array(message.rest())
                        return .chunk(self.inManifest ? .manifestData(bytes) : .archiveData(bytes))
                    case UInt8(ascii: "p"):
                        return .chunk(.progress(bytesDone: try message.uint64()))
                    case UInt8(ascii: "m"):
                        return .chunk(.manifestStart)
                    default:
                        throw self.connection.markBroken(PGError(.protocolViolation, "server \(peer) sent a base backup message of unknown type \(kind) (expected the PostgreSQL 15 format)"))
                    }
                case UInt8(ascii: "c"): return .copyDone
                case UInt8(ascii: "E"): return .error(try message.serverMessage())
                case UInt8(ascii: "N"):
                    self.connection.noticeHandler?(try message.serverMessage())
                    return .skip
                case UInt8(ascii: "S"):
                    try self.connection.recordParameterStatus(&message)
                    return .skip
                default: throw self.connection.unexpected(message.type, during: "BASE_BACKUP")
                }
            }
            switch step {
            case .skip:
                continue
            case .chunk(let chunk):
                switch chunk {
                case .archiveStart(let name, _):
                    currentArchive = name
                    inManifest = false
                case .manifestStart:
                    currentArchive = nil
                    inManifest = true
                default: break
                }
                return chunk
            case .error(let server):
                // The walsender reports the error and returns to idle with ReadyForQuery.
                finished = true
                connection.state = .idle
                var results: [ResultSet] = []
                var ignored: PGError?
                _ = try connection.collectResults(into: &results, error: &ignored, during: "BASE_BACKUP")
                throw PGError(.server, "BASE_BACKUP from \(peer) failed", server: server)
            case .copyDone:
                finished = true
                connection.state = .idle
                var results: [ResultSet] = []
                var error: PGError?
                let stop = try connection.collectResults(into: &results, error: &error, during: "the end of BASE_BACKUP")
                guard stop == .ready else {
                    throw connection.markBroken(PGError(.protocolViolation, "server \(peer) started another COPY after BASE_BACKUP"))
                }
                if let error { throw error }
                guard let end = results.first(where: { !$0.columns.isEmpty && !$0.rows.isEmpty }),
                      let lsnText = end.rows[0][0], let lsn = WireProtocol.parseLSN(lsnText)
                else {
                    throw connection.markBroken(PGError(.protocolViolation, "server \(peer) ended BASE_BACKUP without its end position"))
                }
                endLSN = lsn
                endTimeline = end.rows[0].count > 1 ? end.rows[0][1].flatMap { UInt32($0) } : nil
                return nil
            }
        }
    }
}

extension PGConnection {
    /// How long BASE_BACKUP without a fast checkpoint may wait for its start checkpoint.
    public static let spreadCheckpointWaitSeconds: Double = 3600

    /// Starts BASE_BACKUP and returns the stream once the server has sent the start position and the
    /// tablespace list. Read it to the end with `next()` before using the connection again.
    public func baseBackup(_ options: BaseBackupOptions) throws -> BaseBackupStream {
        guard isReplication else {
            throw PGError(.invalidState, "BASE_BACKUP needs a replication connection (connect with replication: true)")
        }
        let command = options.command
        try requireIdle(for: "BASE_BACKUP")
        try sendQuery(command)
        var results: [ResultSet] = []
        var error: PGError?
        // The header comes after the backup's start checkpoint. A spread checkpoint may take up to
        // checkpoint_timeout * checkpoint_completion_target (4.5 minutes by default), so wait longer.
        let headerWaitSeconds = options.fastCheckpoint ? ioTimeoutSeconds : max(ioTimeoutSeconds, Self.spreadCheckpointWaitSeconds)
        let stop = try collectResults(into: &results, error: &error, during: "BASE_BACKUP", waitSeconds: headerWaitSeconds)
        switch stop {
        case .copyOut: break
        case .ready: throw error ?? markBroken(PGError(.protocolViolation, "server \(channel.peer) answered BASE_BACKUP without data"))
        case .copyIn, .copyBoth: throw markBroken(PGError(.protocolViolation, "server \(channel.peer) answered BASE_BACKUP with an unexpected COPY"))
        }
        let described = results.filter { !$0.columns.isEmpty }
        guard described.count >= 2, let start = described[0].rows.first, start.count >= 2,
              let lsnText = start[0], let startLSN = WireProtocol.parseLSN(lsnText),
              let tliText = start[1], let timeline = UInt32(tliText)
        else {
            throw markBroken(PGError(.protocolViolation, "server \(channel.peer) sent a malformed BASE_BACKUP header (start position and tablespaces)"))
        }
        let tablespaces = described[1].rows.map { row in
            BackupTablespace(oid: row.first.flatMap { $0.flatMap { UInt32($0) } },
                             location: row.count > 1 ? row[1] : nil,
                             sizeKB: row.count > 2 ? row[2].flatMap { Int64($0) } : nil)
        }
        state = .copyOut
        return BaseBackupStream(connection: self, startLSN: startLSN, startTimeline: timeline, tablespaces: tablespaces)
    }

    /// BASE_BACKUP with the common options.
    public func baseBackup(label: String, fast: Bool = true, includeWAL: Bool = false, manifest: Bool = false) throws -> BaseBackupStream {
        try baseBackup(BaseBackupOptions(label: label, fastCheckpoint: fast, includeWAL: includeWAL, manifest: manifest))
    }
}
