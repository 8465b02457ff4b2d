import LSM

/// The main-data layouts of the records ingest interprets (PostgreSQL 15, little-endian, x86-64
/// alignment). Each parser reads exactly what PostgreSQL's redo reads and fails as `malformed` on a
/// short body.

/// Runs `body` over the record's main data; a truncated structure becomes `IngestError.malformed`.
func parseMainData<T>(_ record: DecodedRecord, _ what: String, _ body: (inout LittleEndianReader) throws -> T) throws -> T {
    do {
        return try record.withMainData { buffer in
            var r = LittleEndianReader(buffer, context: what, recordLSN: record.startLSN)
            return try body(&r)
        }
    } catch let e as WALError {
        throw IngestError(.malformed, "\(record.resourceManager) record: \(e.message)", recordLSN: record.startLSN)
    }
}

extension LittleEndianReader {
    mutating func relFileNode() throws -> RelFileNode {
        RelFileNode(spcNode: try u32(), dbNode: try u32(), relNode: try u32())
    }

    mutating func i32() throws -> Int32 { Int32(bitPattern: try u32()) }

    /// A count that must be non-negative and fit in what is left at `elementSize` bytes each.
    mutating func count(elementSize: Int, _ what: String) throws -> Int {
        let n = try i32()
        guard n >= 0, Int(n) <= remaining / elementSize else {
            throw WALError.corrupt("\(what) count \(n) does not fit in the \(remaining) bytes left", record: recordLSN)
        }
        return Int(n)
    }
}

// MARK: - Transaction (RM_XACT_ID)

/// xl_xact_commit / xl_xact_abort with their optional parts, in the order ParseCommitRecord /
/// ParseAbortRecord read them: xact_time i64; [xinfo u32 if XLOG_XACT_HAS_INFO]; [dbinfo: dbId, tsId];
/// [subxacts: n i32, xids]; [relfilenodes: n i32, n x 12 bytes]; [dropped stats: n i32, n x 12 bytes];
/// [invalidations (commit only): n i32, n x 16 bytes]; [twophase xid u32, then the GID as a
/// NUL-terminated string if HAS_GID]; [origin: lsn u64, timestamp i64, unaligned].
struct XactCompletion {
    static let hasInfo: UInt8 = 0x80
    static let opMask: UInt8 = 0x70

    static let hasDbInfo: UInt32 = 1 << 0
    static let hasSubxacts: UInt32 = 1 << 1
    static let hasRelFileNodes: UInt32 = 1 << 2
    static let hasInvalidations: UInt32 = 1 << 3
    static let hasTwoPhase: UInt32 = 1 << 4
    static let hasOrigin: UInt32 = 1 << 5
    static let hasGID: UInt32 = 1 << 7
    static let hasDroppedStats: UInt32 = 1 << 8

    /// Microseconds since 2000-01-01 00:00 UTC (TimestampTz).
    var xactTime: Int64
    var xinfo: UInt32 = 0
    var database: DatabaseTag?
    var subxacts: [UInt32] = []
    var droppedRelations: [RelFileNode] = []
    var twoPhaseXid: UInt32?
    var gid: String?

    init(_ record: DecodedRecord, isCommit: Bool) throws {
        let info = record.info
        self = try parseMainData(record, isCommit ? "xl_xact_commit" : "xl_xact_abort") { r -> XactCompletion in
            var p = XactCompletion(xactTime: Int64(bitPattern: try r.u64()))
            if info & Self.hasInfo != 0 { p.xinfo = try r.u32() }
            let x = p.xinfo
            if x & Self.hasDbInfo != 0 {
                let db = try r.u32(), ts = try r.u32()
                p.database = DatabaseTag(spc: ts, db: db)
            }
            if x & Self.hasSubxacts != 0 {
                let n = try r.count(elementSize: 4, "subtransaction")
                p.subxacts.reserveCapacity(n)
                for _ in 0..<n { p.subxacts.append(try r.u32()) }
            }
            if x & Self.hasRelFileNodes != 0 {
                let n = try r.count(elementSize: 12, "relfilenode")
                p.droppedRelations.reserveCapacity(n)
                for _ in 0..<n { p.droppedRelations.append(try r.relFileNode()) }
            }
            if x & Self.hasDroppedStats != 0 {
                let n = try r.count(elementSize: 12, "dropped stats item")
                try r.skip(n * 12)
            }
            if isCommit && x & Self.hasInvalidations != 0 {
                let n = try r.count(elementSize: 16, "invalidation message")
                try r.skip(n * 16)
            }
            if x & Self.hasTwoPhase != 0 {
                p.twoPhaseXid = try r.u32()
                if x & Self.hasGID != 0 {
                    var gid: [UInt8] = []
                    while true {
                        let c = try r.u8()
                        if c == 0 { break }
                        gid.append(c)
                    }
                    p.gid = String(decoding: gid, as: UTF8.self)
                }
            }
            if x & Self.hasOrigin != 0 { try r.skip(16) }
            return p
        }
    }

    private init(xactTime: Int64) { self.xactTime = xactTime }
}

/// xl_xact_prepare's first fields (the record's main data is the whole two-phase state file except
/// its trailing CRC): magic u32, total_len u32, xid u32.
struct XactPrepareHeader {
    var xid: UInt32

    init(_ record: DecodedRecord) throws {
        xid = try parseMainData(record, "xl_xact_prepare") { r in
            try r.skip(8)
            return try r.u32()
        }
    }
}

// MARK: - Storage (RM_SMGR_ID)

/// xl_smgr_create: rnode (12 bytes), forkNum i32.
struct SmgrCreate {
    var tag: RelTag

    init(_ record: DecodedRecord) throws {
        tag = try parseMainData(record, "xl_smgr_create") { r in
            let node = try r.relFileNode()
            let fork = try r.i32()
            guard let f = ForkNumber(rawValue: UInt8(truncatingIfNeeded: fork)), fork >= 0, fork <= 3 else {
                throw WALError.corrupt("invalid fork number \(fork)", record: record.startLSN)
            }
            return RelTag(node, f)
        }
    }
}

/// xl_smgr_truncate: blkno u32, rnode (12 bytes), flags i32 (SMGR_TRUNCATE_HEAP 1, VM 2, FSM 4).
struct SmgrTruncate {
    static let heap: UInt32 = 1
    static let vm: UInt32 = 2
    static let fsm: UInt32 = 4

    var blocks: UInt32
    var node: RelFileNode
    var flags: UInt32

    init(_ record: DecodedRecord) throws {
        (blocks, node, flags) = try parseMainData(record, "xl_smgr_truncate") { r in
            (try r.u32(), try r.relFileNode(), try r.u32())
        }
    }
}

// MARK: - CLOG (RM_CLOG_ID) and MultiXact (RM_MULTIXACT_ID)

/// The page number (int32) of CLOG_ZEROPAGE, XLOG_MULTIXACT_ZERO_OFF_PAGE and ZERO_MEM_PAGE; also the
/// first field of xl_clog_truncate (pageno i32, oldestXact u32, oldestXactDb u32).
func pageNumberBody(_ record: DecodedRecord) throws -> UInt32 {
    try parseMainData(record, "SLRU page number") { r in try r.u32() }
}

/// xl_multixact_create: mid u32, moff u32, nmembers i32, members (xid u32, status i32) x nmembers.
struct MultiXactCreate {
    var multi: UInt32
    var offset: UInt32
    var members: [(xid: UInt32, status: UInt8)]

    init(_ record: DecodedRecord) throws {
        (multi, offset, members) = try parseMainData(record, "xl_multixact_create") { r in
            let mid = try r.u32(), moff = try r.u32()
            let n = try r.count(elementSize: 8, "multixact member")
            var members: [(xid: UInt32, status: UInt8)] = []
            members.reserveCapacity(n)
            for _ in 0..<n {
                let xid = try r.u32()
                let status = try r.i32()
                guard (0...5).contains(status) else {
                    throw WALError.corrupt("invalid multixact member status \(status)", record: record.startLSN)
                }
                members.append((xid, UInt8(status)))
            }
            return (mid, moff, members)
        }
    }
}

/// xl_multixact_truncate: oldestMultiDB, startTruncOff, endTruncOff, startTruncMemb, endTruncMemb
/// (u32 each).
struct MultiXactTruncate {
    var startOffsets: UInt32
    var endOffsets: UInt32
    var startMembers: UInt32
    var endMembers: UInt32

    init(_ record: DecodedRecord) throws {
        (startOffsets, endOffsets, startMembers, endMembers) = try parseMainData(record, "xl_multixact_truncate") { r in
            try r.skip(4)
            return (try r.u32(), try r.u32(), try r.u32(), try r.u32())
        }
    }
}

// MARK: - Database (RM_DBASE_ID) and RelMap (RM_RELMAP_ID)

/// xl_dbase_create_file_copy_rec: db_id, tablespace_id, src_db_id, src_tablespace_id.
struct DbaseCreateFileCopy {
    var database: DatabaseTag
    var source: DatabaseTag

    init(_ record: DecodedRecord) throws {
        (database, source) = try parseMainData(record, "xl_dbase_create_file_copy_rec") { r in
            let db = try r.u32(), spc = try r.u32(), srcDb = try r.u32(), srcSpc = try r.u32()
            return (DatabaseTag(spc: spc, db: db), DatabaseTag(spc: srcSpc, db: srcDb))
        }
    }
}

/// xl_dbase_create_wal_log_rec: db_id, tablespace_id.
struct DbaseCreateWalLog {
    var database: DatabaseTag

    init(_ record: DecodedRecord) throws {
        database = try parseMainData(record, "xl_dbase_create_wal_log_rec") { r in
            let db = try r.u32(), spc = try r.u32()
            return DatabaseTag(spc: spc, db: db)
        }
    }
}

/// xl_dbase_drop_rec: db_id, ntablespaces i32, tablespace_ids[].
struct DbaseDrop {
    var databases: [DatabaseTag]

    init(_ record: DecodedRecord) throws {
        databases = try parseMainData(record, "xl_dbase_drop_rec") { r in
            let db = try r.u32()
            let n = try r.count(elementSize: 4, "tablespace")
            var out: [DatabaseTag] = []
            for _ in 0..<n { out.append(DatabaseTag(spc: try r.u32(), db: db)) }
            return out
        }
    }
}

/// xl_relmap_update: dbid, tsid, nbytes i32, then the map file's bytes.
struct RelmapUpdate {
    var database: DatabaseTag
    var contents: [UInt8]

    init(_ record: DecodedRecord) throws {
        (database, contents) = try parseMainData(record, "xl_relmap_update") { r in
            let db = try r.u32(), spc = try r.u32()
            let n = try r.count(elementSize: 1, "relmap byte")
            return (DatabaseTag(spc: spc, db: db), [UInt8](try r.bytes(n)))
        }
    }
}

// MARK: - XLOG (RM_XLOG_ID)

/// The CheckPoint struct (pg_control.h), 88 bytes on x86-64: redo u64 @0, ThisTimeLineID @8,
/// PrevTimeLineID @12, fullPageWrites bool @16, nextXid u64 @24, nextOid @32, nextMulti @36,
/// nextMultiOffset @40, oldestXid @44, oldestXidDB @48, oldestMulti @52, oldestMultiDB @56,
/// time i64 @64, oldestCommitTsXid @72, newestCommitTsXid @76, oldestActiveXid @80.
public enum CheckPointLayout {
    public static let size = 88
    public static let redoOffset = 0
    public static let nextXidOffset = 24
    public static let nextOidOffset = 32
    public static let nextMultiOffset = 36
    public static let nextMultiOffsetOffset = 40
    public static let oldestXidOffset = 44
    public static let timeOffset = 64
    /// Where ControlFileData keeps checkPointCopy: after system_identifier u64, pg_control_version
    /// u32, catalog_version_no u32, state u32 (+4 padding), time i64 and checkPoint u64.
    public static let controlFileCheckPointCopyOffset = 40
    /// pg_control's size on disk (PG_CONTROL_FILE_SIZE).
    public static let controlFileSize = 8192

    public static func u32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    public static func u64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        UInt64(u32(bytes, at)) | UInt64(u32(bytes, at + 4)) << 32
    }

    public static func setU32(_ bytes: inout [UInt8], _ at: Int, _ v: UInt32) {
        for i in 0..<4 { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt32(i))) }
    }

    public static func setU64(_ bytes: inout [UInt8], _ at: Int, _ v: UInt64) {
        for i in 0..<8 { bytes[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
    }
}

// MARK: - Heap (RM_HEAP_ID, RM_HEAP2_ID)

/// The flag bits of heap records that say a visibility-map bit was cleared (heapam_xlog.h), and where
/// each record keeps its flags byte in its main data.
enum HeapFlags {
    static let opMask: UInt8 = 0x70
    // RM_HEAP_ID opcodes
    static let insert: UInt8 = 0x00
    static let delete: UInt8 = 0x10
    static let update: UInt8 = 0x20
    static let hotUpdate: UInt8 = 0x40
    static let lock: UInt8 = 0x60
    // RM_HEAP2_ID opcodes
    static let multiInsert: UInt8 = 0x50
    static let lockUpdated: UInt8 = 0x60

    /// XLH_INSERT_ALL_VISIBLE_CLEARED, XLH_DELETE_ALL_VISIBLE_CLEARED, XLH_UPDATE_OLD_ALL_VISIBLE_CLEARED,
    /// XLH_LOCK_ALL_FROZEN_CLEARED: all bit 0.
    static let firstCleared: UInt8 = 0x01
    /// XLH_UPDATE_NEW_ALL_VISIBLE_CLEARED.
    static let updateNewCleared: UInt8 = 0x02

    /// xl_heap_insert: offnum u16, flags u8 -> 2. xl_heap_multi_insert: flags u8 -> 0.
    /// xl_heap_delete / xl_heap_update / xl_heap_lock / xl_heap_lock_updated: xid u32, offnum u16,
    /// infobits u8, flags u8 -> 7.
    static func flags(_ record: DecodedRecord, at offset: Int) throws -> UInt8 {
        guard record.mainDataRange.count > offset else {
            throw IngestError(.malformed, "\(record.resourceManager) record's main data (\(record.mainDataRange.count) bytes) lacks its flags byte at \(offset)", recordLSN: record.startLSN)
        }
        return record.bytes[record.mainDataRange.lowerBound + offset]
    }
}
