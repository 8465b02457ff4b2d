#if canImport(Glibc)
import Glibc
#endif
import LSM
import PostgresWAL

/// A PostgreSQL 15 data directory as it was at an LSN, written as a ustar stream: what the page
/// server's `fullbackup` (kind `.full`) and `basebackup` (kind `.base`) send.
///
/// Every value is read at `lsn`. The directory holds, in this order: PG_VERSION and the configuration
/// files; the empty directories PostgreSQL needs; global/pg_control and the pg_wal segment with the
/// shutdown checkpoint (`ShutdownCheckpoint`); the SLRU segments; the two-phase state files; then,
/// database by database (DbDir order), its directory, PG_VERSION (not in global/), pg_filenode.map and
/// every relation fork in RelDir order. format-spec.md ("Backups") lists every byte.
///
/// Invariants:
/// - Nothing is held whole in memory but small files and one batch of blocks (`blocksPerRead`);
///   everything else streams to the sink as it is read.
/// - Every file's size is known before its header is written (from size keys), and exactly that
///   many bytes follow: a block without a value inside a relation or SLRU segment is written as
///   zeros (PostgreSQL extends with zero pages), a block of the wrong length or a read error fails
///   the backup.
/// - An unlogged relation (one with an init fork) whose main fork is missing or empty gets its main
///   fork as a copy of the init fork, as PostgreSQL's reset after a crash would make it.
public struct DataDirectoryBackup {
    let source: any BackupSource
    let lsn: LSN
    let kind: BackupKind

    /// Blocks asked for in one `source.get`.
    static let blocksPerRead = 128
    static let pageSize = 8192
    static let blocksPerRelationSegment = 131072

    public init(source: any BackupSource, lsn: LSN, kind: BackupKind) {
        self.source = source
        self.lsn = lsn
        self.kind = kind
    }

    /// Streams the tar to `sink` in chunks (never the whole tar in memory). Throws a clear error
    /// (BackupError with description) when something needed is missing, e.g. no pg_control at that LSN.
    public func write(to sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try withoutActuallyEscaping(sink) { sink in
            let now = Int64(time(nil))
            var tar = TarWriter(modificationTime: now, sink: sink)
            try writeAll(&tar, now: now)
            try tar.finish()
        }
    }

    // MARK: - The parts

    private func writeAll(_ tar: inout TarWriter, now: Int64) throws {
        let slruKinds: [SlruKind] = [.clog, .multixactOffsets, .multixactMembers]
        let top = try read([KeySpace.controlFile, KeySpace.checkpoint, KeySpace.dbDir, KeySpace.twoPhaseDir]
            + slruKinds.map { KeySpace.slruDir($0) }, "the control file, checkpoint and directories")
        guard let storedControl = top[0] else { throw BackupError("no pg_control at \(lsn): the timeline has no data there (before its base backup?)") }
        guard let storedCheckpoint = top[1] else { throw BackupError("no checkpoint value at \(lsn)") }
        guard let dbDirValue = top[2] else { throw BackupError("no database directory (DbDir) at \(lsn)") }
        let checkpoint = try ShutdownCheckpoint(storedControl: storedControl, storedCheckpoint: storedCheckpoint, lsn: lsn, now: now)
        let databases = try decode("DbDir") { try DbDirectory(decoding: dbDirValue).entries.sorted() }
        let twoPhase = try top[3].map { v in try decode("TwoPhaseDir") { try IdDirectory(decoding: v).ids.sorted() } } ?? []

        try tar.file("PG_VERSION", Self.versionFile)
        // The primary's max_prepared_transactions (pg_control keeps it), and at least room for the
        // prepared transactions of the backup.
        let maxPrepared = max(Int(Int32(bitPattern: CheckPointLayout.u32(storedControl, ShutdownCheckpoint.Control.maxPreparedXacts))), twoPhase.count)
        for (name, text) in DefaultConfiguration.files(maxPreparedTransactions: maxPrepared) { try tar.file(name, Array(text.utf8)) }
        for d in Self.emptyDirectories { try tar.directory(d) }

        try tar.file("global/pg_control", checkpoint.controlFile)
        try tar.beginFile("pg_wal/" + checkpoint.segmentFileName, size: Int64(checkpoint.segmentSize))
        try checkpoint.writeSegment { try tar.write($0) }
        try tar.endFile()

        for (i, kind) in slruKinds.enumerated() {
            let segments = try top[4 + i].map { v in try decode("SlruDir of \(kind)") { try IdDirectory(decoding: v).ids.sorted() } } ?? []
            try writeSlru(&tar, kind, segments)
        }

        let files = try read(twoPhase.map { KeySpace.twoPhaseFile(xid: $0) }, "two-phase state files")
        for (xid, file) in zip(twoPhase, files) {
            guard let file else { throw BackupError("two-phase state file of xid \(xid) is listed but has no value at \(lsn)") }
            try tar.file("pg_twophase/" + ShutdownCheckpoint.hex8(UInt64(xid)), file)
        }

        var tablespaces = Set<UInt32>()
        for db in databases {
            if db.spc != KeySpace.globalTablespace && db.spc != KeySpace.defaultTablespace && tablespaces.insert(db.spc).inserted {
                try tar.directory("pg_tblspc/\(db.spc)")
                try tar.directory("pg_tblspc/\(db.spc)/PG_15_\(checkpoint.catalogVersion)")
            }
            try writeDatabase(&tar, db, catalogVersion: checkpoint.catalogVersion)
        }
    }

    private func writeSlru(_ tar: inout TarWriter, _ kind: SlruKind, _ segments: [UInt32]) throws {
        let sizes = try read(segments.map { KeySpace.slruSegmentSize(kind, segment: $0) }, "\(kind) segment sizes")
        for (segment, size) in zip(segments, sizes) {
            let blocks = try size.map { v in try decode("size of \(kind) segment \(segment)") { try SizeValue.decode(v) } } ?? 0
            var name = String(segment, radix: 16, uppercase: true)
            if name.count < 4 { name = String(repeating: "0", count: 4 - name.count) + name }
            try tar.beginFile(kind.directory + "/" + name, size: Int64(blocks) * Int64(Self.pageSize))
            try writeBlocks(&tar, 0..<blocks, what: "\(kind) segment \(name)") { KeySpace.slruBlock(kind, segment: segment, block: $0) }
            try tar.endFile()
        }
    }

    private func writeDatabase(_ tar: inout TarWriter, _ db: DatabaseTag, catalogVersion: UInt32) throws {
        let path: String
        switch db.spc {
        case KeySpace.globalTablespace: path = "global"
        case KeySpace.defaultTablespace: path = "base/\(db.db)"
        default: path = "pg_tblspc/\(db.spc)/PG_15_\(catalogVersion)/\(db.db)"
        }
        let values = try read([KeySpace.relDir(db), KeySpace.relMap(db)], "RelDir and relmap of database \(db)")
        if db != KeySpace.globalDatabase {
            try tar.directory(path)
            try tar.file(path + "/PG_VERSION", Self.versionFile)
        }
        if let map = values[1] { try tar.file(path + "/pg_filenode.map", map) }
        let entries = try values[0].map { v in try decode("RelDir of \(db)") { try RelDirectory(decoding: v).entries.sorted() } } ?? []
        let tags = entries.map { RelTag(spc: db.spc, db: db.db, rel: $0.rel, fork: $0.fork) }
        let sizeValues = try read(tags.map { KeySpace.relationSize($0) }, "relation sizes of database \(db)")
        var sizes: [RelTag: UInt32] = [:]
        for (tag, v) in zip(tags, sizeValues) {
            sizes[tag] = try v.map { v in try decode("size of \(tag)") { try SizeValue.decode(v) } } ?? 0
        }
        let initForkRels = Set(tags.filter { $0.fork == ForkNumber.initialization.rawValue }.map(\.rel))
        for tag in tags {
            let blocks = sizes[tag]!
            let isInit = tag.fork == ForkNumber.initialization.rawValue
            let mainFromInit = tag.fork == ForkNumber.main.rawValue && initForkRels.contains(tag.rel) && blocks == 0
            if mainFromInit { continue }  // written with the init fork
            if kind == .full || isInit {
                try writeFork(&tar, path, tag, blocks: blocks, fileFork: tag.fork)
            }
            if isInit {
                var main = tag
                main.fork = ForkNumber.main.rawValue
                if (sizes[main] ?? 0) == 0 {
                    try writeFork(&tar, path, tag, blocks: blocks, fileFork: ForkNumber.main.rawValue)
                }
            }
        }
    }

    /// The files of one fork, read from `tag`, named as fork `fileFork`: 1 GiB segments, segment 0
    /// always (empty for an empty fork).
    private func writeFork(_ tar: inout TarWriter, _ path: String, _ tag: RelTag, blocks: UInt32, fileFork: UInt8) throws {
        let perSegment = UInt32(Self.blocksPerRelationSegment)
        let suffix = ["", "_fsm", "_vm", "_init"][Int(fileFork)]
        var segment: UInt32 = 0
        repeat {
            let first = segment * perSegment
            let last = min(blocks, first + perSegment)
            let name = "\(path)/\(tag.rel)\(suffix)" + (segment == 0 ? "" : ".\(segment)")
            try tar.beginFile(name, size: Int64(last - first) * Int64(Self.pageSize))
            try writeBlocks(&tar, first..<last, what: "\(tag)") { KeySpace.relationBlock(tag, $0) }
            try tar.endFile()
            segment += 1
        } while segment * perSegment < blocks
    }

    /// Blocks `range` of the keys `key(block)`, read `blocksPerRead` at a time.
    private func writeBlocks(_ tar: inout TarWriter, _ range: Range<UInt32>, what: String, key: (UInt32) -> Key) throws {
        var start = range.lowerBound
        while start < range.upperBound {
            let end = min(range.upperBound, start + UInt32(Self.blocksPerRead))
            let pages = try read((start..<end).map(key), "blocks \(start)..<\(end) of \(what)")
            for (i, page) in pages.enumerated() {
                guard let page else {
                    try tar.writeZeros(Self.pageSize)
                    continue
                }
                guard page.count == Self.pageSize else {
                    throw BackupError("block \(start + UInt32(i)) of \(what) at \(lsn) is \(page.count) bytes, not \(Self.pageSize)")
                }
                try tar.write(page)
            }
            start = end
        }
    }

    // MARK: - Helpers

    private func read(_ keys: [Key], _ what: String) throws -> [[UInt8]?] {
        guard !keys.isEmpty else { return [] }
        let values: [[UInt8]?]
        do {
            values = try source.get(keys, at: lsn)
        } catch {
            throw BackupError("cannot read \(what) at \(lsn): \(error)")
        }
        guard values.count == keys.count else {
            throw BackupError("the source returned \(values.count) values for \(keys.count) keys (\(what))")
        }
        return values
    }

    private func decode<T>(_ what: String, _ body: () throws -> T) throws -> T {
        do { return try body() } catch { throw BackupError("the \(what) value at \(lsn) does not decode: \(error)") }
    }

    static let versionFile = Array("15\n".utf8)

    /// The directories of a data directory (as initdb makes them), created empty or filled later.
    static let emptyDirectories = [
        "global", "base", "pg_wal", "pg_wal/archive_status", "pg_xact", "pg_multixact", "pg_multixact/offsets",
        "pg_multixact/members", "pg_commit_ts", "pg_dynshmem", "pg_logical", "pg_logical/snapshots",
        "pg_logical/mappings", "pg_notify", "pg_replslot", "pg_serial", "pg_snapshots", "pg_stat", "pg_stat_tmp",
        "pg_subtrans", "pg_tblspc", "pg_twophase",
    ]
}
