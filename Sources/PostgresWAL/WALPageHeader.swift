import LSM

/// The header at the start of every 8 KiB WAL page (XLogPageHeaderData / XLogLongPageHeaderData).
///
///     xlp_magic:       u16  // 0xD110 for PostgreSQL 15
///     xlp_info:        u16  // flags, see `Flags`
///     xlp_tli:         u32  // timeline of the page's first record
///     xlp_pageaddr:    u64  // LSN of this page's first byte
///     xlp_rem_len:     u32  // bytes of a record continued from the previous page (0 if none)
///     padding:         4 bytes  // to MAXALIGN: the short header is 24 bytes
///   long header only (a segment's first page, flag LONG_HEADER):
///     xlp_sysid:       u64  // the cluster's system identifier (at offset 24)
///     xlp_seg_size:    u32  // WAL segment size in bytes
///     xlp_xlog_blcksz: u32  // WAL page size in bytes (8192)
///                           // 40 bytes in all
/// All integers little-endian. Page headers are not covered by any record's CRC; the checks here and
/// in `WALDecoder` (magic, known flags, page address, long header exactly at segment starts) are what
/// protects them.
public struct WALPageHeader: Equatable, Sendable {
    public static let shortSize = 24
    public static let longSize = shortSize + 8 + 4 + 4

    public struct Flags: OptionSet, Sendable, Hashable {
        public var rawValue: UInt16
        public init(rawValue: UInt16) { self.rawValue = rawValue }
        /// XLP_FIRST_IS_CONTRECORD: the page starts with the rest of a record from the previous page.
        public static let firstIsContinuation = Flags(rawValue: 0x0001)
        /// XLP_LONG_HEADER: this is a long header (a segment's first page).
        public static let longHeader = Flags(rawValue: 0x0002)
        /// XLP_BKP_REMOVABLE: full-page images on this page may be dropped by archivers.
        public static let backupRemovable = Flags(rawValue: 0x0004)
        /// XLP_FIRST_IS_OVERWRITE_CONTRECORD: a record that a crash left incomplete at the end of the
        /// previous page was abandoned; this page starts a new record instead of its continuation.
        public static let firstIsOverwriteContinuation = Flags(rawValue: 0x0008)
        /// Every flag PostgreSQL 15 defines (XLP_ALL_FLAGS).
        public static let all: Flags = [.firstIsContinuation, .longHeader, .backupRemovable, .firstIsOverwriteContinuation]
    }

    public var magic: UInt16
    public var flags: Flags
    public var timeline: PostgresTimeline
    /// The LSN of this page's first byte (xlp_pageaddr).
    public var pageAddress: LSN
    /// xlp_rem_len: how many bytes of a record begun on an earlier page are still to come, counted
    /// from this page on (they may continue past this page).
    public var remainingLength: UInt32
    /// Long header only.
    public var systemIdentifier: UInt64?
    /// Long header only.
    public var segmentSize: UInt32?
    /// Long header only.
    public var walPageSize: UInt32?

    public init(flags: Flags, timeline: PostgresTimeline, pageAddress: LSN, remainingLength: UInt32,
                systemIdentifier: UInt64? = nil, segmentSize: UInt32? = nil, walPageSize: UInt32? = nil) {
        self.magic = PostgresWAL.pageMagic
        self.flags = flags
        self.timeline = timeline
        self.pageAddress = pageAddress
        self.remainingLength = remainingLength
        self.systemIdentifier = systemIdentifier
        self.segmentSize = segmentSize
        self.walPageSize = walPageSize
    }

    /// 40 for a long header, 24 for a short one.
    public var size: Int { flags.contains(.longHeader) ? Self.longSize : Self.shortSize }

    /// Parses a header from the first 24 (or, with LONG_HEADER, 40) bytes of `bytes`, checking what the
    /// header alone can tell: the magic, that no unknown flag is set, an 8 KiB-aligned page address.
    public init(parsing bytes: UnsafeRawBufferPointer) throws {
        try self.init(parsing: bytes, expectingLongHeader: nil)
    }

    /// As `init(parsing:)`; with `expectingLongHeader` set (the reader knows whether the page starts a
    /// segment) a header whose long-header flag disagrees is rejected before its long fields are read.
    init(parsing bytes: UnsafeRawBufferPointer, expectingLongHeader: Bool?) throws {
        var r = LittleEndianReader(bytes, context: "WAL page header")
        magic = try r.u16()
        flags = Flags(rawValue: try r.u16())
        timeline = PostgresTimeline(try r.u32())
        pageAddress = LSN(try r.u64())
        remainingLength = try r.u32()
        try r.skip(4)
        guard magic == PostgresWAL.pageMagic else {
            throw WALError.corrupt("WAL page header has magic 0x\(String(magic, radix: 16)), expected 0x\(String(PostgresWAL.pageMagic, radix: 16)) (PostgreSQL 15)")
        }
        guard flags.isSubset(of: .all) else {
            throw WALError.corrupt("WAL page header has unknown flag bits 0x\(String(flags.rawValue, radix: 16))")
        }
        guard pageAddress.rawValue % UInt64(PostgresWAL.pageSize) == 0 else {
            throw WALError.corrupt("WAL page header's page address \(pageAddress) is not a page boundary")
        }
        if let expectingLongHeader, expectingLongHeader != flags.contains(.longHeader) {
            throw WALError.corrupt(expectingLongHeader ? "the first page of a WAL segment lacks the long header"
                                                       : "a WAL page that does not start a segment has a long header")
        }
        if flags.contains(.longHeader) {
            systemIdentifier = try r.u64()
            segmentSize = try r.u32()
            walPageSize = try r.u32()
        }
    }

    public init(parsing bytes: [UInt8]) throws {
        self = try bytes.withUnsafeBytes { try WALPageHeader(parsing: $0) }
    }

    /// Appends the header's 24 or 40 bytes (the long fields are written when `longHeader` is set;
    /// missing ones as 0).
    public func encode(into out: inout [UInt8]) {
        out.appendLittleEndian(magic)
        out.appendLittleEndian(flags.rawValue)
        out.appendLittleEndian(timeline.rawValue)
        out.appendLittleEndian(pageAddress.rawValue)
        out.appendLittleEndian(remainingLength)
        out.appendLittleEndian(UInt32(0))
        if flags.contains(.longHeader) {
            out.appendLittleEndian(systemIdentifier ?? 0)
            out.appendLittleEndian(segmentSize ?? 0)
            out.appendLittleEndian(walPageSize ?? 0)
        }
    }
}
