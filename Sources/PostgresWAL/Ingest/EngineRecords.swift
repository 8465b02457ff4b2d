import LSM

/// The page server's own records (`Value.engineRecord`): changes PostgreSQL makes to a page during
/// redo without a block reference to it, which ingest therefore states explicitly under that page's
/// key for redo to apply.
///
/// Encoding: a tag byte, then the tag's fields, all integers big-endian. Tags are never renumbered;
/// 0 is invalid. Each record holds everything one WAL record does to one key (ingest merges).
///
/// | tag | name               | body                                                                    | key            |
/// |-----|--------------------|-------------------------------------------------------------------------|----------------|
/// | 1   | CLOG set status    | status u8 (1 committed, 2 aborted, 3 sub-committed), count u32, xid u32 x count | pg_xact page   |
/// | 2   | VM clear           | count u32, (heapBlock u32, bits u8) x count; bits 1 all-visible, 2 all-frozen | VM fork page   |
/// | 3   | multixact offsets  | count u32, (multixactId u32, offset u32) x count                        | offsets page   |
/// | 4   | multixact members  | count u32, (memberOffset u32, xid u32, status u8) x count               | members page   |
/// | 5   | VM truncate        | heapBlocks u32: clear both bits of every heap block >= heapBlocks on this page | VM fork page |
/// | 6   | FSM truncate       | heapBlocks u32: zero the leaf slots of heap blocks >= heapBlocks on this page (slot = heapBlocks % 4069), then rebuild the page's upper nodes | FSM fork page |
/// | 7   | commit timestamp   | endLSN u64, xactTime i64: append this 16-byte entry to the bucket's value | commit-timestamp bucket |
///
/// Applying (for redo): tag 1 sets each xid's 2 status bits (byte (xid % 32768) / 4, shift
/// 2 * (xid % 4)); tag 2 clears `bits` of the heap block's pair (byte (blk % 32672) / 4 after the 24-byte
/// page header, shift 2 * (blk % 4)); tag 3 stores offset (u32, native little-endian) at entry
/// multi % 2048; tag 4 stores each member's xid and status byte at the positions of multixact.c's
/// MXOffsetToMemberOffset / MXOffsetToFlagsOffset (see `PageLayout`). A record stored with
/// `willInit` applies to an all-zero page (ingest marks SLRU records so when their page did not exist
/// yet, as PostgreSQL's SLRU code reads a missing page as zeros in recovery).
///
/// Tag 7 is the one record that applies to a value that is not a page: a commit-timestamp bucket
/// (`CommitTimestampIndex`), whose value is its entries in LSN order; `willInit` starts it empty.
public enum EngineRecord: Equatable, Sendable {
    public enum Tag: UInt8, Sendable {
        case clogSetStatus = 1
        case vmClear = 2
        case multixactOffsets = 3
        case multixactMembers = 4
        case vmTruncate = 5
        case fsmTruncate = 6
        case commitTimestamp = 7
    }

    /// A transaction's status in pg_xact (TRANSACTION_STATUS_*).
    public enum ClogStatus: UInt8, Sendable {
        case committed = 1
        case aborted = 2
        case subCommitted = 3
    }

    public struct VMClear: Hashable, Sendable {
        public var heapBlock: UInt32
        /// VISIBILITYMAP_ALL_VISIBLE 1 | VISIBILITYMAP_ALL_FROZEN 2.
        public var bits: UInt8
        public init(heapBlock: UInt32, bits: UInt8) {
            self.heapBlock = heapBlock
            self.bits = bits
        }
    }

    public struct MultixactOffset: Hashable, Sendable {
        public var multixactId: UInt32
        public var offset: UInt32
        public init(multixactId: UInt32, offset: UInt32) {
            self.multixactId = multixactId
            self.offset = offset
        }
    }

    public struct MultixactMember: Hashable, Sendable {
        public var memberOffset: UInt32
        public var xid: UInt32
        /// MultiXactStatus (0 for-key-share ... 5 update).
        public var status: UInt8
        public init(memberOffset: UInt32, xid: UInt32, status: UInt8) {
            self.memberOffset = memberOffset
            self.xid = xid
            self.status = status
        }
    }

    case clogSetStatus(ClogStatus, xids: [UInt32])
    case vmClear([VMClear])
    case multixactOffsets([MultixactOffset])
    case multixactMembers([MultixactMember])
    case vmTruncate(heapBlocks: UInt32)
    case fsmTruncate(heapBlocks: UInt32)
    case commitTimestamp(CommitTimestampIndex.Entry)

    public var tag: Tag {
        switch self {
        case .clogSetStatus: .clogSetStatus
        case .vmClear: .vmClear
        case .multixactOffsets: .multixactOffsets
        case .multixactMembers: .multixactMembers
        case .vmTruncate: .vmTruncate
        case .fsmTruncate: .fsmTruncate
        case .commitTimestamp: .commitTimestamp
        }
    }

    public func encode() -> [UInt8] {
        var out: [UInt8] = [tag.rawValue]
        switch self {
        case .clogSetStatus(let status, let xids):
            out.reserveCapacity(6 + 4 * xids.count)
            out.append(status.rawValue)
            out.appendBigEndian(UInt32(xids.count))
            for x in xids { out.appendBigEndian(x) }
        case .vmClear(let entries):
            out.appendBigEndian(UInt32(entries.count))
            for e in entries {
                out.appendBigEndian(e.heapBlock)
                out.append(e.bits)
            }
        case .multixactOffsets(let entries):
            out.appendBigEndian(UInt32(entries.count))
            for e in entries {
                out.appendBigEndian(e.multixactId)
                out.appendBigEndian(e.offset)
            }
        case .multixactMembers(let entries):
            out.appendBigEndian(UInt32(entries.count))
            for e in entries {
                out.appendBigEndian(e.memberOffset)
                out.appendBigEndian(e.xid)
                out.append(e.status)
            }
        case .vmTruncate(let n), .fsmTruncate(let n):
            out.appendBigEndian(n)
        case .commitTimestamp(let e):
            e.encode(into: &out)
        }
        return out
    }

    public init(decoding bytes: some Collection<UInt8>) throws {
        var c = BigEndianCursor(bytes, what: "engine record")
        let t = try c.u8()
        guard let tag = Tag(rawValue: t) else { throw ValueFormatError("unknown engine record tag \(t)") }
        switch tag {
        case .clogSetStatus:
            let s = try c.u8()
            guard let status = ClogStatus(rawValue: s) else { throw ValueFormatError("invalid CLOG status \(s)") }
            let n = try c.count(elementSize: 4)
            var xids: [UInt32] = []
            xids.reserveCapacity(n)
            for _ in 0..<n { xids.append(try c.u32()) }
            self = .clogSetStatus(status, xids: xids)
        case .vmClear:
            let n = try c.count(elementSize: 5)
            var entries: [VMClear] = []
            entries.reserveCapacity(n)
            for _ in 0..<n { entries.append(VMClear(heapBlock: try c.u32(), bits: try c.u8())) }
            self = .vmClear(entries)
        case .multixactOffsets:
            let n = try c.count(elementSize: 8)
            var entries: [MultixactOffset] = []
            entries.reserveCapacity(n)
            for _ in 0..<n { entries.append(MultixactOffset(multixactId: try c.u32(), offset: try c.u32())) }
            self = .multixactOffsets(entries)
        case .multixactMembers:
            let n = try c.count(elementSize: 9)
            var entries: [MultixactMember] = []
            entries.reserveCapacity(n)
            for _ in 0..<n {
                entries.append(MultixactMember(memberOffset: try c.u32(), xid: try c.u32(), status: try c.u8()))
            }
            self = .multixactMembers(entries)
        case .vmTruncate:
            self = .vmTruncate(heapBlocks: try c.u32())
        case .fsmTruncate:
            self = .fsmTruncate(heapBlocks: try c.u32())
        case .commitTimestamp:
            self = .commitTimestamp(CommitTimestampIndex.Entry(lsn: LSN(try c.u64()), xactTime: Int64(bitPattern: try c.u64())))
        }
        try c.finish()
    }
}
