import CShims
import LSM

/// One complete WAL record, checked and taken apart.
///
/// Layout of a record's bytes once reassembled (page headers removed):
///
///     [XLogRecordHeader, 24 bytes]
///     [fragment headers, each led by an id byte, in this order:
///        block reference headers (ids 0...32, ascending; see `BlockReference`),
///        252 toplevel xid (u32), 253 replication origin (u16),
///        255 short main data length (u8) or 254 long main data length (u32), always last]
///     [payloads: per block in id order its image bytes then its data bytes; then the main data]
///
/// Invariants:
/// 1. A `DecodedRecord` exists only for bytes whose CRC-32C matched (the CRC is checked before any
///    fragment is parsed, so damaged bytes fail as `checksumMismatch`, never as a layout error).
/// 2. `bytes.count == header.totalLength`, and the fragment headers account for every payload byte:
///    the payload lengths sum to exactly what follows the headers.
/// 3. Block ids are strictly ascending; every image is restored to 8192 bytes (see `BlockImage`).
/// 4. `endLSN` is PostgreSQL's EndRecPtr for the record (what redo stamps as pd_lsn) and
///    `nextRecordLSN` is where the next record starts; both follow from `startLSN`, the length and the
///    segment size alone (see `PostgresWAL.endOfRecord`).
public struct DecodedRecord: Sendable {
    /// Where the record starts (its header's first byte); pg_waldump's "lsn".
    public var startLSN: LSN
    /// PostgreSQL's EndRecPtr: the position just past the record's last byte rounded up to 8
    /// (MAXALIGN). This is the LSN redo stamps on the pages it changes, the `end_lsn` of
    /// pg_walinspect, and may be a page boundary. For XLOG_SWITCH it is the next segment boundary.
    public var endLSN: LSN
    /// Where the following record starts: `endLSN`, or past the page header when `endLSN` is a page
    /// boundary.
    public var nextRecordLSN: LSN
    public var header: XLogRecordHeader
    /// The record's block references in id order.
    public var blocks: [BlockReference]
    /// Set for records of a subtransaction written before its top-level xid was logged.
    public var toplevelXid: TransactionId?
    public var origin: ReplicationOriginId?
    /// Where the rmgr's main data lies in `bytes` (read it with `withMainData`, or copy it out
    /// with `mainData`).
    public var mainDataRange: Range<Int>
    /// The whole reassembled record, header included: what PostgreSQL's redo reads. Decode it again
    /// with `init(parsing:at:)`, or with `init(stored:)` once ingest has stored it compact.
    public var bytes: [UInt8]

    /// The rmgr's main data, copied out of `bytes`.
    public var mainData: [UInt8] { Array(bytes[mainDataRange]) }

    /// Calls `body` with the main data, without copying it.
    public func withMainData<T>(_ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
        try bytes.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[mainDataRange])) }
    }

    /// The rmgr's per-block data of `block` (one of `blocks`), a slice of `bytes`.
    public func data(of block: BlockReference) -> ArraySlice<UInt8> { bytes[block.dataRange] }

    public var xid: TransactionId { header.xid }
    public var prev: LSN { header.prev }
    public var info: UInt8 { header.info }
    public var resourceManager: ResourceManagerId { header.resourceManager }
    public var totalLength: Int { Int(header.totalLength) }
    public var isSwitch: Bool { header.isSwitch }

    /// Bytes of the record taken by stored page images: pg_waldump's "tot" minus "rec".
    public var imageBytes: Int { blocks.reduce(0) { $0 + ($1.image?.storedLength ?? 0) } }

    // Fragment ids that are not block references.
    static let idTopLevelXid: UInt8 = 252
    static let idOrigin: UInt8 = 253
    static let idMainDataLong: UInt8 = 254
    static let idMainDataShort: UInt8 = 255

    /// The CRC PostgreSQL stores in xl_crc: CRC-32C over the bytes after the header, continued over the
    /// header up to xl_crc.
    public static func checksum(of record: UnsafeRawBufferPointer) -> UInt32 {
        precondition(record.count >= XLogRecordHeader.size)
        let body = cs_crc32c(0, record.baseAddress! + XLogRecordHeader.size, record.count - XLogRecordHeader.size)
        return cs_crc32c(body, record.baseAddress!, XLogRecordHeader.crcOffset)
    }

    /// Checks and decodes one reassembled record that starts at `startLSN`.
    public init(parsing bytes: [UInt8], at startLSN: LSN,
                segmentSize: Int = PostgresWAL.defaultSegmentSize) throws {
        var noSpares: [[UInt8]] = []
        try self.init(parsing: bytes, at: startLSN, segmentSize: segmentSize, spareImagePages: &noSpares)
    }

    /// Decodes a record the page server stored (format-spec 10.6): its CRC was checked when it was
    /// ingested, and a compact record's xl_prev and xl_crc are zero, so the CRC is not checked again.
    /// The layout checks are the same as for a record from the WAL.
    public init(stored bytes: [UInt8]) throws {
        var noSpares: [[UInt8]] = []
        try self.init(parsing: bytes, at: LSN(0), segmentSize: PostgresWAL.defaultSegmentSize, spareImagePages: &noSpares,
                      checkingCRC: false)
    }

    /// The same, restoring images into arrays taken from `spareImagePages` while it has any.
    init(parsing bytes: [UInt8], at startLSN: LSN, segmentSize: Int, spareImagePages: inout [[UInt8]],
         checkingCRC: Bool = true) throws {
        let header = try XLogRecordHeader(parsing: bytes)
        guard Int(header.totalLength) == bytes.count else {
            throw WALError.corrupt("record length \(header.totalLength) does not match the \(bytes.count) bytes given", record: startLSN)
        }
        let computed = checkingCRC ? bytes.withUnsafeBytes { Self.checksum(of: $0) } : header.crc
        guard computed == header.crc else {
            throw WALError(.checksumMismatch, "record has CRC-32C 0x\(String(header.crc, radix: 16)) but its bytes give 0x\(String(computed, radix: 16))", recordLSN: startLSN)
        }
        self.startLSN = startLSN
        self.header = header
        self.bytes = bytes
        endLSN = PostgresWAL.endOfRecord(startingAt: startLSN, totalLength: header.totalLength,
                                         isSwitch: header.isSwitch, segmentSize: segmentSize)
        nextRecordLSN = PostgresWAL.recordStart(after: endLSN, segmentSize: segmentSize)
        blocks = []
        toplevelXid = nil
        origin = nil
        mainDataRange = 0..<0
        try bytes.withUnsafeBytes { try decodeFragments($0, spareImagePages: &spareImagePages) }
    }

    private mutating func decodeFragments(_ record: UnsafeRawBufferPointer, spareImagePages: inout [[UInt8]]) throws {
        // The block headers go to the stack (at most maximumId + 1 of them): a record is decoded
        // with one allocation, its `blocks` array.
        try withUnsafeTemporaryAllocation(of: BlockReference.Header.self, capacity: Int(BlockReference.maximumId) + 1) { headers in
            try decodeFragments(record, headers: headers, spareImagePages: &spareImagePages)
        }
    }

    private mutating func decodeFragments(_ record: UnsafeRawBufferPointer,
                                          headers: UnsafeMutableBufferPointer<BlockReference.Header>,
                                          spareImagePages: inout [[UInt8]]) throws {
        let lsn = startLSN
        var r = LittleEndianReader(UnsafeRawBufferPointer(rebasing: record[XLogRecordHeader.size...]),
                                   context: "record", recordLSN: lsn)
        var count = 0
        defer { headers.baseAddress!.deinitialize(count: count) }
        var payloadBytes = 0
        var mainDataLength = 0
        var previousRelation: RelFileNode?
        // Fragment headers, until the bytes left are exactly the payloads they announce.
        while r.remaining > payloadBytes {
            let id = try r.u8()
            switch id {
            case Self.idMainDataShort:
                mainDataLength = Int(try r.u8())
            case Self.idMainDataLong:
                mainDataLength = Int(try r.u32())
            case Self.idOrigin:
                origin = ReplicationOriginId(try r.u16())
            case Self.idTopLevelXid:
                toplevelXid = TransactionId(try r.u32())
            case 0...BlockReference.maximumId:
                if count > 0, id <= headers[count - 1].id {
                    throw WALError.corrupt("block reference #\(id) follows #\(headers[count - 1].id): ids must ascend", record: lsn)
                }
                let h = try BlockReference.readHeader(id: id, &r, previousRelation: previousRelation, record: lsn)
                previousRelation = h.relation
                payloadBytes += h.dataLength + (h.image?.storedLength ?? 0)
                // Ids ascend from at least 0 and end at maximumId, so `count` stays within capacity.
                (headers.baseAddress! + count).initialize(to: h)
                count += 1
            default:
                throw WALError.corrupt("invalid fragment id \(id)", record: lsn)
            }
            if id == Self.idMainDataShort || id == Self.idMainDataLong {
                // By convention the main data header is the last one.
                payloadBytes += mainDataLength
                break
            }
        }
        guard r.remaining == payloadBytes else {
            throw WALError.corrupt("record's fragment headers announce \(payloadBytes) payload bytes but \(r.remaining) follow", record: lsn)
        }
        blocks.reserveCapacity(count)
        for h in headers[0..<count] {
            var image: BlockImage?
            if let ih = h.image {
                image = try BlockImage.restore(ih, stored: try r.bytes(ih.storedLength), blockId: h.id, record: lsn,
                                               into: spareImagePages.popLast())
            }
            let dataStart = record.count - r.remaining
            _ = try r.bytes(h.dataLength)
            blocks.append(BlockReference(id: h.id, flags: h.flags, relation: h.relation, fork: h.fork,
                                         block: h.block, image: image, dataRange: dataStart..<dataStart + h.dataLength))
        }
        let mainStart = record.count - r.remaining
        _ = try r.bytes(mainDataLength)
        mainDataRange = mainStart..<mainStart + mainDataLength
        precondition(r.remaining == 0, "payload lengths were checked against the bytes left")
    }
}
