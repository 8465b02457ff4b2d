import LSM

/// PostgreSQL 15 WAL: the stream's layout constants and the arithmetic on positions that follows from
/// them.
///
/// The WAL is one byte stream addressed by LSN. It is cut into 8 KiB pages and 16 MiB segments (the
/// segment size is fixed at initdb; every segment's first page header repeats it). Each page starts
/// with a header: the long one (40 bytes) on a segment's first page, the short one (24 bytes) on every
/// other page. Records sit between the headers, 8-byte aligned, and may span any number of pages.
/// All integers in the stream are little-endian.
public enum PostgresWAL {
    /// XLOG_BLCKSZ: the size of a WAL page. Also BLCKSZ, the size of a relation page.
    public static let pageSize = 8192
    /// BLCKSZ: the size of a relation page (and so of every restored full-page image).
    public static let relationPageSize = 8192
    /// The default (and the page server's only tested) WAL segment size.
    public static let defaultSegmentSize = 16 * 1024 * 1024
    /// XLOG_PAGE_MAGIC of PostgreSQL 15.
    public static let pageMagic: UInt16 = 0xD110
    /// MAXALIGN on the 64-bit platforms PostgreSQL writes WAL on.
    public static let maximumAlignment = 8

    /// Rounds `value` up to the next multiple of 8 (PostgreSQL's MAXALIGN).
    @inline(__always)
    static func maxAlign(_ value: UInt64) -> UInt64 { (value &+ 7) & ~7 }

    /// The size of the page header at `pageStart`, which must be a page boundary: long on a segment's
    /// first page, short elsewhere.
    static func pageHeaderSize(at pageStart: UInt64, segmentSize: Int) -> Int {
        pageStart % UInt64(segmentSize) == 0 ? WALPageHeader.longSize : WALPageHeader.shortSize
    }

    /// Where a record of `totalLength` bytes that starts at `start` ends: PostgreSQL's EndRecPtr.
    ///
    /// Walks the pages the record covers, stepping over each page header it crosses, then rounds the
    /// position just past the last byte up to MAXALIGN. The result can be a page boundary (a record
    /// that fills its page exactly); the next record then starts after that page's header, see
    /// `recordStart(after:segmentSize:)`. An XLOG_SWITCH record is different: PostgreSQL counts the rest
    /// of its segment as part of it, so its end is the next segment boundary.
    public static func endOfRecord(startingAt start: LSN, totalLength: UInt32, isSwitch: Bool = false,
                                   segmentSize: Int = defaultSegmentSize) -> LSN {
        let page = UInt64(pageSize)
        var position = start.rawValue
        var remaining = UInt64(totalLength)
        while true {
            let pageEnd = (position / page + 1) * page
            let room = pageEnd - position
            if remaining <= room {
                position += remaining
                break
            }
            remaining -= room
            position = pageEnd + UInt64(pageHeaderSize(at: pageEnd, segmentSize: segmentSize))
        }
        position = maxAlign(position)
        if isSwitch {
            let segment = UInt64(segmentSize)
            position = (position + segment - 1) / segment * segment
        }
        return LSN(position)
    }

    /// Where the record after one that ends at `end` (an EndRecPtr) starts: `end` itself, unless it is
    /// a page boundary, where the page header comes first.
    public static func recordStart(after end: LSN, segmentSize: Int = defaultSegmentSize) -> LSN {
        guard end.rawValue % UInt64(pageSize) == 0 else { return end }
        return end.advanced(by: UInt64(pageHeaderSize(at: end.rawValue, segmentSize: segmentSize)))
    }
}
