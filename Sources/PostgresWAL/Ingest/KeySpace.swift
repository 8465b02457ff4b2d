import LSM

/// One fork of one relation: what PostgreSQL calls a RelTag (RelFileNode + ForkNumber).
public struct RelTag: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var spc: UInt32
    public var db: UInt32
    public var rel: UInt32
    public var fork: UInt8

    public init(spc: UInt32, db: UInt32, rel: UInt32, fork: UInt8) {
        self.spc = spc
        self.db = db
        self.rel = rel
        self.fork = fork
    }

    public init(_ node: RelFileNode, _ fork: ForkNumber) {
        self.init(spc: node.spcNode, db: node.dbNode, rel: node.relNode, fork: fork.rawValue)
    }

    public var node: RelFileNode { RelFileNode(spcNode: spc, dbNode: db, relNode: rel) }
    public var database: DatabaseTag { DatabaseTag(spc: spc, db: db) }
    public var entry: RelDirectory.Entry { RelDirectory.Entry(rel: rel, fork: fork) }

    public static func < (a: Self, b: Self) -> Bool { (a.spc, a.db, a.rel, a.fork) < (b.spc, b.db, b.rel, b.fork) }

    public var description: String { "\(spc)/\(db)/\(rel).\(fork)" }
}

/// A database in one tablespace (the unit of a RelDir and of a DbDir entry). The shared catalogs are
/// (1664, 0).
public struct DatabaseTag: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var spc: UInt32
    public var db: UInt32

    public init(spc: UInt32, db: UInt32) {
        self.spc = spc
        self.db = db
    }

    public static func < (a: Self, b: Self) -> Bool { (a.spc, a.db) < (b.spc, b.db) }
    public var description: String { "\(spc)/\(db)" }
}

/// The SLRUs the page server stores, numbered as in the key space and the page service protocol.
public enum SlruKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// pg_xact (CLOG).
    case clog = 0
    /// pg_multixact/members.
    case multixactMembers = 1
    /// pg_multixact/offsets.
    case multixactOffsets = 2

    /// The directory of the data directory that holds this SLRU's segment files.
    public var directory: String {
        switch self {
        case .clog: "pg_xact"
        case .multixactMembers: "pg_multixact/members"
        case .multixactOffsets: "pg_multixact/offsets"
        }
    }

    public var description: String { directory }
}

/// Where PostgreSQL things live in the engine's 18-byte key space (the project's convention, Neon's
/// layout). Every integer in the values this file's codecs produce is big-endian; PostgreSQL's own
/// files and pages are stored byte for byte.
///
/// | what                | f1 | f2   | f3 | f4    | f5   | f6          | value                              |
/// |---------------------|----|------|----|-------|------|-------------|------------------------------------|
/// | DbDir               | 0  | 0    | 0  | 0     | 0    | 0           | `DbDirectory`                      |
/// | RelMap file         | 0  | spc  | db | 0     | 0    | 0           | pg_filenode.map (512 bytes)        |
/// | RelDir              | 0  | spc  | db | 0     | 0    | 1           | `RelDirectory`                     |
/// | relation block      | 0  | spc  | db | rel   | fork | blkno       | page image or WAL record           |
/// | relation size       | 0  | spc  | db | rel   | fork | 0xFFFFFFFF  | nblocks u32                        |
/// | SlruDir             | 1  | kind | 0  | 0     | 0    | 0           | `IdDirectory` of segnos            |
/// | SLRU block          | 1  | kind | 1  | segno | 0    | blkno       | page image or engine record        |
/// | SLRU segment size   | 1  | kind | 1  | segno | 0    | 0xFFFFFFFF  | nblocks u32                        |
/// | TwoPhaseDir         | 2  | 0    | 0  | 0     | 0    | 0           | `IdDirectory` of xids              |
/// | TwoPhase file       | 2  | 0    | 0  | 0     | 0    | xid         | the state file's bytes (with CRC)  |
/// | control file        | 3  | 0    | 0  | 0     | 0    | 0           | pg_control (8192 bytes)            |
/// | checkpoint          | 3  | 0    | 0  | 0     | 0    | 1           | CheckPoint struct (88 bytes)       |
/// | commit-ts bucket    | 4  | 0    | 0  | b>>32 | 0    | b & 0xFFFFFFFF | `CommitTimestampIndex` entries  |
public enum KeySpace {
    /// GLOBALTABLESPACE_OID: the tablespace of the shared catalogs (global/).
    public static let globalTablespace: UInt32 = 1664
    /// DEFAULTTABLESPACE_OID: base/.
    public static let defaultTablespace: UInt32 = 1663
    /// The DbDir entry of the shared catalogs.
    public static let globalDatabase = DatabaseTag(spc: globalTablespace, db: 0)
    /// f6 of a size key.
    public static let sizeKeyBlock: UInt32 = ChunkId.sizeKeyBlock

    public static func relationBlock(_ tag: RelTag, _ block: UInt32) -> Key {
        Key(field1: 0, field2: tag.spc, field3: tag.db, field4: tag.rel, field5: tag.fork, field6: block)
    }

    public static func relationSize(_ tag: RelTag) -> Key {
        Key(field1: 0, field2: tag.spc, field3: tag.db, field4: tag.rel, field5: tag.fork, field6: sizeKeyBlock)
    }

    public static func relDir(_ db: DatabaseTag) -> Key {
        Key(field1: 0, field2: db.spc, field3: db.db, field4: 0, field5: 0, field6: 1)
    }

    public static func relMap(_ db: DatabaseTag) -> Key {
        Key(field1: 0, field2: db.spc, field3: db.db, field4: 0, field5: 0, field6: 0)
    }

    public static let dbDir = Key(field1: 0, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0)

    public static func slruBlock(_ kind: SlruKind, segment: UInt32, block: UInt32) -> Key {
        Key(field1: 1, field2: UInt32(kind.rawValue), field3: 1, field4: segment, field5: 0, field6: block)
    }

    public static func slruSegmentSize(_ kind: SlruKind, segment: UInt32) -> Key {
        Key(field1: 1, field2: UInt32(kind.rawValue), field3: 1, field4: segment, field5: 0, field6: sizeKeyBlock)
    }

    public static func slruDir(_ kind: SlruKind) -> Key {
        Key(field1: 1, field2: UInt32(kind.rawValue), field3: 0, field4: 0, field5: 0, field6: 0)
    }

    public static let twoPhaseDir = Key(field1: 2, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0)

    public static func twoPhaseFile(xid: UInt32) -> Key {
        Key(field1: 2, field2: 0, field3: 0, field4: 0, field5: 0, field6: xid)
    }

    public static let controlFile = Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0)
    public static let checkpoint = Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 1)

    /// f1 of the commit-timestamp index's bucket keys (see `CommitTimestampIndex.key`).
    public static let commitTimestampField1: UInt8 = 4
}

// MARK: - Value codecs of the metadata keys

/// A decoding failure of one of the project's own value encodings.
public struct ValueFormatError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Big-endian reads over a byte collection, for the project's own small value encodings.
struct BigEndianCursor {
    let bytes: [UInt8]
    var position = 0
    let what: String

    init(_ bytes: some Collection<UInt8>, what: String) {
        self.bytes = Array(bytes)
        self.what = what
    }

    var remaining: Int { bytes.count - position }

    mutating func u8() throws -> UInt8 {
        guard remaining >= 1 else { throw ValueFormatError("\(what) is truncated at byte \(position) of \(bytes.count)") }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u32() throws -> UInt32 {
        guard remaining >= 4 else { throw ValueFormatError("\(what) is truncated at byte \(position) of \(bytes.count)") }
        defer { position += 4 }
        return UInt32(bytes[position]) << 24 | UInt32(bytes[position + 1]) << 16
            | UInt32(bytes[position + 2]) << 8 | UInt32(bytes[position + 3])
    }

    mutating func u64() throws -> UInt64 {
        UInt64(try u32()) << 32 | UInt64(try u32())
    }

    /// A count that must be followed by at least `count * elementSize` bytes (checked before any
    /// allocation, so a damaged count cannot ask for gigabytes).
    mutating func count(elementSize: Int) throws -> Int {
        let n = Int(try u32())
        guard n <= remaining / elementSize else {
            throw ValueFormatError("\(what) announces \(n) entries of \(elementSize) bytes but has \(remaining) bytes left")
        }
        return n
    }

    func finish() throws {
        guard remaining == 0 else { throw ValueFormatError("\(what) has \(remaining) trailing bytes") }
    }
}

extension Array where Element == UInt8 {
    mutating func appendBigEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.bigEndian) { append(contentsOf: $0) }
    }
}

/// The value of a relation or SLRU segment size key: nblocks u32.
public enum SizeValue {
    public static func encode(_ blocks: UInt32) -> [UInt8] {
        var out: [UInt8] = []
        out.appendBigEndian(blocks)
        return out
    }

    public static func decode(_ bytes: some Collection<UInt8>) throws -> UInt32 {
        var c = BigEndianCursor(bytes, what: "size value")
        let n = try c.u32()
        try c.finish()
        return n
    }
}

/// The value of a RelDir key: the relation forks of one database.
/// Encoding: count u32, then count x (relnode u32, fork u8), ascending, no duplicates.
public struct RelDirectory: Equatable, Sendable {
    public struct Entry: Hashable, Comparable, Sendable {
        public var rel: UInt32
        public var fork: UInt8
        public init(rel: UInt32, fork: UInt8) {
            self.rel = rel
            self.fork = fork
        }
        public static func < (a: Self, b: Self) -> Bool { (a.rel, a.fork) < (b.rel, b.fork) }
    }

    public var entries: Set<Entry>

    public init(_ entries: Set<Entry> = []) { self.entries = entries }

    public func encode() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + entries.count * 5)
        out.appendBigEndian(UInt32(entries.count))
        for e in entries.sorted() {
            out.appendBigEndian(e.rel)
            out.append(e.fork)
        }
        return out
    }

    public init(decoding bytes: some Collection<UInt8>) throws {
        var c = BigEndianCursor(bytes, what: "RelDir value")
        let n = try c.count(elementSize: 5)
        var entries = Set<Entry>(minimumCapacity: n)
        var previous: Entry?
        for _ in 0..<n {
            let e = Entry(rel: try c.u32(), fork: try c.u8())
            if let previous, !(previous < e) { throw ValueFormatError("RelDir entries are not strictly ascending") }
            previous = e
            entries.insert(e)
        }
        try c.finish()
        self.entries = entries
    }
}

/// The value of the DbDir key: every (tablespace, database) with a directory.
/// Encoding: count u32, then count x (spc u32, db u32), ascending, no duplicates.
public struct DbDirectory: Equatable, Sendable {
    public var entries: Set<DatabaseTag>

    public init(_ entries: Set<DatabaseTag> = []) { self.entries = entries }

    public func encode() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + entries.count * 8)
        out.appendBigEndian(UInt32(entries.count))
        for e in entries.sorted() {
            out.appendBigEndian(e.spc)
            out.appendBigEndian(e.db)
        }
        return out
    }

    public init(decoding bytes: some Collection<UInt8>) throws {
        var c = BigEndianCursor(bytes, what: "DbDir value")
        let n = try c.count(elementSize: 8)
        var entries = Set<DatabaseTag>(minimumCapacity: n)
        var previous: DatabaseTag?
        for _ in 0..<n {
            let e = DatabaseTag(spc: try c.u32(), db: try c.u32())
            if let previous, !(previous < e) { throw ValueFormatError("DbDir entries are not strictly ascending") }
            previous = e
            entries.insert(e)
        }
        try c.finish()
        self.entries = entries
    }
}

/// The value of a SlruDir key (segment numbers) or of the TwoPhaseDir key (xids).
/// Encoding: count u32, then count x u32, ascending, no duplicates.
public struct IdDirectory: Equatable, Sendable {
    public var ids: Set<UInt32>

    public init(_ ids: Set<UInt32> = []) { self.ids = ids }

    public func encode() -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(4 + ids.count * 4)
        out.appendBigEndian(UInt32(ids.count))
        for id in ids.sorted() { out.appendBigEndian(id) }
        return out
    }

    public init(decoding bytes: some Collection<UInt8>) throws {
        var c = BigEndianCursor(bytes, what: "directory value")
        let n = try c.count(elementSize: 4)
        var ids = Set<UInt32>(minimumCapacity: n)
        var previous: UInt32?
        for _ in 0..<n {
            let id = try c.u32()
            if let previous, previous >= id { throw ValueFormatError("directory ids are not strictly ascending") }
            previous = id
            ids.insert(id)
        }
        try c.finish()
        self.ids = ids
    }
}
