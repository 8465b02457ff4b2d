/// The unit of storage named by the design card: every chunk has its own set of layer files.
///
/// Kinds:
/// - relation segment: one fork of one relation, one 1 GiB segment (`blocksPerSegment` blocks). The
///   relation-size key of a fork (block number 0xFFFFFFFF) belongs to segment 0 of that fork.
/// - SLRU segment: one segment of pg_xact or pg_multixact, its blocks and its size key.
/// - metadata: everything else (database and relation directories, relmap files, twophase files,
///   control file and checkpoint), all small.
///
/// Encoded in 20 bytes: kind u8, fork u8, reserved u16 (0), a u32, b u32, c u32, segno u32, big-endian;
/// relation: a/b/c = tablespace/database/relation; SLRU: a = SLRU kind, b = c = 0; metadata: all zero.
public struct ChunkId: Hashable, Comparable, Sendable, CustomStringConvertible {
    public enum Kind: UInt8, Sendable {
        // 0 is reserved as invalid.
        case relationSegment = 1
        case slruSegment = 2
        case metadata = 3
    }

    public var kind: Kind
    public var fork: UInt8
    public var a: UInt32
    public var b: UInt32
    public var c: UInt32
    public var segno: UInt32

    public static let encodedSize = 1 + 1 + 2 + 4 * 4
    /// 1 GiB of 8 KiB blocks: PostgreSQL's RELSEG_SIZE.
    public static let blocksPerSegment: UInt32 = 131_072
    /// The block number that marks a relation's or SLRU segment's size key.
    public static let sizeKeyBlock: UInt32 = 0xFFFF_FFFF

    public static let metadata = ChunkId(kind: .metadata, fork: 0, a: 0, b: 0, c: 0, segno: 0)

    public init(kind: Kind, fork: UInt8, a: UInt32, b: UInt32, c: UInt32, segno: UInt32) {
        self.kind = kind
        self.fork = fork
        self.a = a
        self.b = b
        self.c = c
        self.segno = segno
    }

    /// The chunk that holds `key`.
    public init(containing key: Key) {
        if key.field1 == 0 && key.field4 != 0 {
            let segno = key.field6 == ChunkId.sizeKeyBlock ? 0 : key.field6 / ChunkId.blocksPerSegment
            self.init(kind: .relationSegment, fork: key.field5, a: key.field2, b: key.field3, c: key.field4, segno: segno)
        } else if key.field1 == 1 && key.field3 == 1 {
            self.init(kind: .slruSegment, fork: 0, a: key.field2, b: 0, c: 0, segno: key.field4)
        } else {
            self = .metadata
        }
    }

    public static func < (x: ChunkId, y: ChunkId) -> Bool {
        (x.kind.rawValue, x.a, x.b, x.c, x.fork, x.segno) < (y.kind.rawValue, y.a, y.b, y.c, y.fork, y.segno)
    }

    /// The chunk's name in layer file names: `rel_SPC_DB_REL_FORK_SEGNO`, `slru_KIND_SEGNO`, `meta`.
    public var description: String {
        switch kind {
        case .relationSegment: return "rel_\(a)_\(b)_\(c)_\(fork)_\(segno)"
        case .slruSegment: return "slru_\(a)_\(segno)"
        case .metadata: return "meta"
        }
    }

    /// Parses the name `description` prints.
    public init?(name: some StringProtocol) {
        let parts = name.split(separator: "_")
        switch parts.first {
        case "rel":
            guard parts.count == 6, let spc = UInt32(parts[1]), let db = UInt32(parts[2]), let rel = UInt32(parts[3]),
                  let fork = UInt8(parts[4]), let seg = UInt32(parts[5]) else { return nil }
            self.init(kind: .relationSegment, fork: fork, a: spc, b: db, c: rel, segno: seg)
        case "slru":
            guard parts.count == 3, let k = UInt32(parts[1]), let seg = UInt32(parts[2]) else { return nil }
            self.init(kind: .slruSegment, fork: 0, a: k, b: 0, c: 0, segno: seg)
        case "meta":
            guard parts.count == 1 else { return nil }
            self = .metadata
        default:
            return nil
        }
    }

    public func encode(into w: inout ByteWriter) {
        w.u8(kind.rawValue); w.u8(fork); w.u16(0); w.u32(a); w.u32(b); w.u32(c); w.u32(segno)
    }

    public init(parsing r: inout ByteReader) throws {
        let k = try r.u8()
        guard let kind = Kind(rawValue: k) else {
            throw StorageError.corruption("invalid chunk kind \(k)", file: nil, offset: nil)
        }
        let fork = try r.u8()
        guard try r.u16() == 0 else { throw StorageError.corruption("chunk id has non-zero reserved bytes", file: nil, offset: nil) }
        self.init(kind: kind, fork: fork, a: try r.u32(), b: try r.u32(), c: try r.u32(), segno: try r.u32())
    }
}
