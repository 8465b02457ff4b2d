import LSM

/// What a tar entry is, as far as import cares.
public enum TarEntryType: Sendable, Equatable {
    case file
    case directory
    case symlink
    case other
}

/// Something that takes tar entries one at a time: `begin`, any number of `data` chunks (exactly the
/// entry's size in all), `end`.
public protocol TarEntryConsumer: AnyObject {
    func begin(name: String, size: Int64, type: TarEntryType) throws
    func data(_ chunk: UnsafeRawBufferPointer) throws
    func end() throws
}

/// Imports a PostgreSQL 15 base backup (the files of `pg_basebackup -Ft`, fed entry by entry) into the
/// key space, every value at the backup's start LSN (the REDO point of its checkpoint: the WAL from
/// there on must be ingested next).
///
/// Imported:
/// - `base/<db>/<file>`, `global/<file>`, `pg_tblspc/<spc>/PG_15_<catversion>/<db>/<file>` where the
///   file is `<relnode>[_fsm|_vm|_init][.<segno>]`: each 8 KiB block as an image, block number =
///   segno * 131072 + offset / 8192 (a trailing partial block is dropped, as mdnblocks ignores it);
///   then each fork's size (all segments), the databases' RelDirs and the DbDir (global is (1664, 0)).
///   Relation data streams: each block is put as soon as its 8 KiB have arrived.
/// - `PG_VERSION` in a database directory: the database goes into DbDir (even without relations).
/// - `pg_filenode.map` in `global/` or a database directory: the RelMap key.
/// - `pg_xact/`, `pg_multixact/offsets/`, `pg_multixact/members/` segment files (hex names): SLRU
///   blocks, segment sizes, SlruDirs.
/// - `pg_twophase/<8 hex digits>`: TwoPhase files and TwoPhaseDir.
/// - `global/pg_control`: the control file key, and its checkPointCopy (88 bytes at offset 40) as the
///   Checkpoint key.
///
/// Ignored (counted in `ignoredEntries`): temporary relations (`t<backend>_<relnode>...`),
/// `pg_internal.init` and every other non-numeric file name in database directories, directories,
/// symlinks, and everything else of a data directory: `backup_label`, `tablespace_map`, `PG_VERSION`
/// at the top, configuration files, `pg_wal/`, `pg_commit_ts/`, `pg_subtrans/`, `pg_notify/`,
/// `pg_serial/`, `pg_snapshots/`, `pg_stat*/`, `pg_replslot/`, `pg_logical/`, `pg_dynshmem/`, `log/`,
/// `current_logfiles`, `postmaster.*`, `backup_manifest`, etc.
///
/// Names may start with `./`. A tablespace's own tar (`<oid>.tar`, whose names start with
/// `PG_15_...`) is fed with the prefix `pg_tblspc/<oid>/` (see `TarStreamParser`).
/// Directory values (DbDir, RelDirs, sizes, SlruDirs, TwoPhaseDir) are put by `finish()`.
/// The target must not already hold values for this timeline.
public final class BaseBackupImport: TarEntryConsumer {
    public let target: any IngestTarget
    public let lsn: LSN

    /// Entries that were not imported, with why.
    public private(set) var ignoredEntries: [(name: String, reason: String)] = []
    public private(set) var blocksImported = 0
    public private(set) var filesImported = 0

    private var relSizes: [RelTag: UInt32] = [:]
    private var relDirs: [DatabaseTag: Set<RelDirectory.Entry>] = [:]
    private var databases = Set<DatabaseTag>()
    private var slruSegments: [SlruKind: [UInt32: UInt32]] = [:]
    private var twoPhase = Set<UInt32>()
    private var finished = false

    /// The entry being read.
    private enum Sink {
        case relation(RelTag, firstBlock: UInt32)
        case slru(SlruKind, segment: UInt32)
        /// A small file kept whole, then handled by `completeSmallFile`.
        case whole(SmallFile)
        case skip
    }

    private enum SmallFile {
        case control
        case relMap(DatabaseTag)
        case twoPhase(UInt32)
    }

    private var sink: Sink?
    private var entryName = ""
    private var entrySize: Int64 = 0
    private var received: Int64 = 0
    private var blockBuffer: [UInt8] = []
    private var blocksInEntry: UInt32 = 0
    private var wholeFile: [UInt8] = []

    public init(target: any IngestTarget, startLSN: LSN) {
        self.target = target
        self.lsn = startLSN
    }

    // MARK: - Entries

    public func begin(name: String, size: Int64, type: TarEntryType) throws {
        guard !finished else { throw IngestError(.invalidArgument, "import already finished") }
        guard sink == nil else { throw IngestError(.invalidArgument, "entry \(name) begun before \(entryName) ended") }
        guard size >= 0 else { throw IngestError(.invalidArgument, "entry \(name) has negative size") }
        entryName = name
        entrySize = size
        received = 0
        blockBuffer.removeAll(keepingCapacity: true)
        blocksInEntry = 0
        wholeFile = []
        let path = name.hasPrefix("./") ? String(name.dropFirst(2)) : name
        if type != .file {
            sink = .skip
            if type != .directory { ignoredEntries.append((name, "not a regular file")) }
            return
        }
        switch classify(path) {
        case .success(let s):
            sink = s
            if case .whole = s { wholeFile.reserveCapacity(Int(min(size, 1 << 20))) }
        case .failure(let why):
            sink = .skip
            ignoredEntries.append((name, why.reason))
        }
    }

    public func data(_ chunk: UnsafeRawBufferPointer) throws {
        guard let sink else { throw IngestError(.invalidArgument, "data outside an entry") }
        received += Int64(chunk.count)
        guard received <= entrySize else {
            throw IngestError(.invalidArgument, "entry \(entryName) got more than its \(entrySize) bytes")
        }
        switch sink {
        case .skip:
            return
        case .whole:
            wholeFile.append(contentsOf: chunk)
        case .relation, .slru:
            var rest = chunk
            while !rest.isEmpty {
                if blockBuffer.isEmpty && rest.count >= PageLayout.pageSize {
                    try putBlock(Array(rest[0..<PageLayout.pageSize]))
                    rest = UnsafeRawBufferPointer(rebasing: rest[PageLayout.pageSize...])
                    continue
                }
                let n = min(PageLayout.pageSize - blockBuffer.count, rest.count)
                blockBuffer.append(contentsOf: rest[0..<n])
                rest = UnsafeRawBufferPointer(rebasing: rest[n...])
                if blockBuffer.count == PageLayout.pageSize {
                    try putBlock(blockBuffer)
                    blockBuffer.removeAll(keepingCapacity: true)
                }
            }
        }
    }

    public func data(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try data($0) }
    }

    public func end() throws {
        guard let sink else { throw IngestError(.invalidArgument, "end outside an entry") }
        defer {
            self.sink = nil
            wholeFile = []
        }
        guard received == entrySize else {
            throw IngestError(.invalidArgument, "entry \(entryName) ended after \(received) of its \(entrySize) bytes")
        }
        switch sink {
        case .skip:
            return
        case .relation(let tag, let first):
            // A trailing partial block (a file caught mid-extension) does not count, as in mdnblocks.
            relSizes[tag] = max(relSizes[tag] ?? 0, first + blocksInEntry)
            relDirs[tag.database, default: []].insert(tag.entry)
            databases.insert(tag.database)
        case .slru(let kind, let segment):
            slruSegments[kind, default: [:]][segment] = blocksInEntry
            try target.put(KeySpace.slruSegmentSize(kind, segment: segment), lsn, .image(SizeValue.encode(blocksInEntry)))
        case .whole(let file):
            try completeSmallFile(file)
        }
        filesImported += 1
    }

    /// A whole file at once.
    public func importFile(name: String, contents: [UInt8]) throws {
        try begin(name: name, size: Int64(contents.count), type: .file)
        try data(contents)
        try end()
    }

    /// Puts the directories and sizes. Call once, after the last entry.
    public func finish() throws {
        guard !finished else { return }
        guard sink == nil else { throw IngestError(.invalidArgument, "finish inside entry \(entryName)") }
        finished = true
        for (tag, n) in relSizes.sorted(by: { $0.key < $1.key }) {
            try target.put(KeySpace.relationSize(tag), lsn, .image(SizeValue.encode(n)))
        }
        for db in databases.sorted() {
            try target.put(KeySpace.relDir(db), lsn, .image(RelDirectory(relDirs[db] ?? []).encode()))
        }
        try target.put(KeySpace.dbDir, lsn, .image(DbDirectory(databases).encode()))
        for kind in SlruKind.allCases {
            try target.put(KeySpace.slruDir(kind), lsn, .image(IdDirectory(Set((slruSegments[kind] ?? [:]).keys)).encode()))
        }
        try target.put(KeySpace.twoPhaseDir, lsn, .image(IdDirectory(twoPhase).encode()))
        target.advance(to: lsn)
    }

    // MARK: - Internals

    private func putBlock(_ page: [UInt8]) throws {
        switch sink {
        case .relation(let tag, let first):
            try target.put(KeySpace.relationBlock(tag, first + blocksInEntry), lsn, .image(page))
        case .slru(let kind, let segment):
            try target.put(KeySpace.slruBlock(kind, segment: segment, block: blocksInEntry), lsn, .image(page))
        default:
            preconditionFailure("blocks only for relation and SLRU files")
        }
        blocksInEntry += 1
        blocksImported += 1
    }

    private func completeSmallFile(_ file: SmallFile) throws {
        switch file {
        case .control:
            guard wholeFile.count >= CheckPointLayout.controlFileCheckPointCopyOffset + CheckPointLayout.size else {
                throw IngestError(.malformed, "global/pg_control is \(wholeFile.count) bytes, too short for a ControlFileData")
            }
            try target.put(KeySpace.controlFile, lsn, .image(wholeFile))
            let at = CheckPointLayout.controlFileCheckPointCopyOffset
            try target.put(KeySpace.checkpoint, lsn, .image(Array(wholeFile[at..<at + CheckPointLayout.size])))
            databases.insert(KeySpace.globalDatabase)
        case .relMap(let db):
            try target.put(KeySpace.relMap(db), lsn, .image(wholeFile))
            databases.insert(db)
        case .twoPhase(let xid):
            try target.put(KeySpace.twoPhaseFile(xid: xid), lsn, .image(wholeFile))
            twoPhase.insert(xid)
        }
    }

    private struct Ignored: Error {
        var reason: String
    }

    /// Decides what a backup path is.
    private func classify(_ path: String) -> Result<Sink, Ignored> {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true).map(String.init)
        guard let first = parts.first else { return .failure(Ignored(reason: "empty name")) }
        switch first {
        case "global":
            guard parts.count == 2 else { return .failure(Ignored(reason: "not a file of global/")) }
            switch parts[1] {
            case "pg_control": return .success(.whole(.control))
            case "pg_filenode.map": return .success(.whole(.relMap(KeySpace.globalDatabase)))
            default:
                databases.insert(KeySpace.globalDatabase)
                return relationFile(parts[1], in: KeySpace.globalDatabase)
            }
        case "base":
            guard parts.count == 3, let db = UInt32(parts[1]) else { return .failure(Ignored(reason: "not a database file")) }
            return databaseFile(parts[2], in: DatabaseTag(spc: KeySpace.defaultTablespace, db: db))
        case "pg_tblspc":
            guard parts.count == 5, let spc = UInt32(parts[1]), parts[2].hasPrefix("PG_15_"), let db = UInt32(parts[3]) else {
                return .failure(Ignored(reason: "not a tablespace database file"))
            }
            return databaseFile(parts[4], in: DatabaseTag(spc: spc, db: db))
        case "pg_xact":
            return slruFile(parts, .clog, depth: 2)
        case "pg_multixact":
            guard parts.count == 3 else { return .failure(Ignored(reason: "not a multixact segment")) }
            switch parts[1] {
            case "offsets": return slruFile(parts, .multixactOffsets, depth: 3)
            case "members": return slruFile(parts, .multixactMembers, depth: 3)
            default: return .failure(Ignored(reason: "not a multixact segment"))
            }
        case "pg_twophase":
            guard parts.count == 2, parts[1].count == 8, let xid = UInt32(parts[1], radix: 16) else {
                return .failure(Ignored(reason: "not a two-phase state file"))
            }
            return .success(.whole(.twoPhase(xid)))
        default:
            return .failure(Ignored(reason: "not part of the page server's key space"))
        }
    }

    private func databaseFile(_ name: String, in db: DatabaseTag) -> Result<Sink, Ignored> {
        switch name {
        case "PG_VERSION":
            databases.insert(db)
            return .success(.skip)
        case "pg_filenode.map":
            return .success(.whole(.relMap(db)))
        default:
            return relationFile(name, in: db)
        }
    }

    private func relationFile(_ name: String, in db: DatabaseTag) -> Result<Sink, Ignored> {
        guard let f = RelationFileName(name) else {
            return .failure(Ignored(reason: name.first == "t" ? "temporary relation" : "not a relation file"))
        }
        databases.insert(db)
        let tag = RelTag(spc: db.spc, db: db.db, rel: f.relNode, fork: f.fork.rawValue)
        return .success(.relation(tag, firstBlock: f.segment * PageLayout.blocksPerRelationSegment))
    }

    private func slruFile(_ parts: [String], _ kind: SlruKind, depth: Int) -> Result<Sink, Ignored> {
        guard parts.count == depth, let name = parts.last, (4...6).contains(name.count),
              name.allSatisfy(\.isHexDigit), let segment = UInt32(name, radix: 16) else {
            return .failure(Ignored(reason: "not an SLRU segment"))
        }
        return .success(.slru(kind, segment: segment))
    }
}

/// A relation file name: `<relnode>[_fsm|_vm|_init][.<segno>]`, all digits. Temporary relations
/// (`t<backend>_<relnode>...`) and anything else do not parse.
public struct RelationFileName: Equatable, Sendable {
    public var relNode: UInt32
    public var fork: ForkNumber
    public var segment: UInt32

    public init(relNode: UInt32, fork: ForkNumber, segment: UInt32) {
        self.relNode = relNode
        self.fork = fork
        self.segment = segment
    }

    public init?(_ name: String) {
        var base = Substring(name)
        var segment: UInt32 = 0
        if let dot = base.firstIndex(of: ".") {
            let s = base[base.index(after: dot)...]
            guard !s.isEmpty, s.allSatisfy(\.isASCII), s.allSatisfy(\.isNumber), let n = UInt32(s) else { return nil }
            segment = n
            base = base[..<dot]
        }
        var fork = ForkNumber.main
        if let us = base.firstIndex(of: "_") {
            switch base[base.index(after: us)...] {
            case "fsm": fork = .fsm
            case "vm": fork = .visibilityMap
            case "init": fork = .initialization
            default: return nil
            }
            base = base[..<us]
        }
        guard !base.isEmpty, base.allSatisfy({ $0.isASCII && $0.isNumber }), let rel = UInt32(base), rel != 0 else { return nil }
        self.relNode = rel
        self.fork = fork
        self.segment = segment
    }
}
