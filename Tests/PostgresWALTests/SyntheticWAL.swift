import CShims
import LSM
@testable import PostgresWAL

/// A record to write, and what decoding it must give back.
struct SyntheticRecord {
    struct Block {
        var id: UInt8
        var relation: RelFileNode
        var fork: ForkNumber
        var block: UInt32
        var willInit = false
        var data: [UInt8] = []
        /// The page (with zeros in its hole), its hole, how to store it, and BKPIMAGE_APPLY.
        var image: (page: [UInt8], holeOffset: Int, holeLength: Int, compression: BlockImage.Compression, apply: Bool)?
    }

    var rmid: ResourceManagerId = .heap
    var info: UInt8 = 0
    var xid: UInt32 = 0
    var blocks: [Block] = []
    var mainData: [UInt8] = []
    var toplevelXid: UInt32?
    var origin: UInt16?

    static func switchRecord() -> SyntheticRecord { SyntheticRecord(rmid: .xlog, info: XLogRecordHeader.xlogSwitchInfo) }

    /// The record's bytes as PostgreSQL's XLogRecordAssemble lays them out, with its CRC.
    func encode(prev: LSN) -> [UInt8] {
        var headers: [UInt8] = []
        var payloads: [UInt8] = []
        var previousRelation: RelFileNode?
        for b in blocks {
            var flags = BlockReference.Flags()
            if !b.data.isEmpty { flags.insert(.hasData) }
            if b.willInit { flags.insert(.willInit) }
            if b.image != nil { flags.insert(.hasImage) }
            if b.relation == previousRelation { flags.insert(.sameRelation) }
            headers.append(b.id)
            headers.append(b.fork.rawValue | flags.rawValue)
            headers.appendLittleEndian(UInt16(b.data.count))
            if let image = b.image {
                let stored = Self.storedImage(image)
                var info: BlockImage.Info = image.apply ? [.apply] : []
                if image.holeLength > 0 { info.insert(.hasHole) }
                switch image.compression {
                case .none: break
                case .pglz: info.insert(.compressedPGLZ)
                case .lz4: info.insert(.compressedLZ4)
                case .zstd: info.insert(.compressedZstd)
                }
                headers.appendLittleEndian(UInt16(stored.count))
                headers.appendLittleEndian(UInt16(image.holeOffset))
                headers.append(info.rawValue)
                if image.compression != .none && image.holeLength > 0 { headers.appendLittleEndian(UInt16(image.holeLength)) }
                payloads += stored
            }
            if !flags.contains(.sameRelation) {
                headers.appendLittleEndian(b.relation.spcNode)
                headers.appendLittleEndian(b.relation.dbNode)
                headers.appendLittleEndian(b.relation.relNode)
            }
            headers.appendLittleEndian(b.block)
            payloads += b.data
            previousRelation = b.relation
        }
        if let origin { headers.append(DecodedRecord.idOrigin); headers.appendLittleEndian(origin) }
        if let toplevelXid { headers.append(DecodedRecord.idTopLevelXid); headers.appendLittleEndian(toplevelXid) }
        if mainData.count > 255 {
            headers.append(DecodedRecord.idMainDataLong)
            headers.appendLittleEndian(UInt32(mainData.count))
        } else if !mainData.isEmpty {
            headers.append(DecodedRecord.idMainDataShort)
            headers.append(UInt8(mainData.count))
        }
        payloads += mainData
        let total = XLogRecordHeader.size + headers.count + payloads.count
        var out: [UInt8] = []
        XLogRecordHeader(totalLength: UInt32(total), xid: TransactionId(xid), prev: prev, info: info,
                         resourceManager: rmid, crc: 0).encode(into: &out)
        out += headers
        out += payloads
        let crc = out.withUnsafeBytes { DecodedRecord.checksum(of: $0) }
        out.withUnsafeMutableBytes { $0.storeBytes(of: crc.littleEndian, toByteOffset: XLogRecordHeader.crcOffset, as: UInt32.self) }
        return out
    }

    /// The image as stored: without its hole, compressed as asked.
    static func storedImage(_ image: (page: [UInt8], holeOffset: Int, holeLength: Int, compression: BlockImage.Compression, apply: Bool)) -> [UInt8] {
        let raw = Array(image.page[0..<image.holeOffset] + image.page[(image.holeOffset + image.holeLength)...])
        switch image.compression {
        case .none:
            return raw
        case .pglz:
            return TestPGLZ.compress(raw)
        case .lz4:
            var out = [UInt8](repeating: 0, count: Int(LZ4_compressBound(Int32(raw.count))))
            let n = raw.withUnsafeBytes { src in
                out.withUnsafeMutableBytes { dst in
                    LZ4_compress_default(src.baseAddress!.assumingMemoryBound(to: CChar.self), dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                                         Int32(raw.count), Int32(dst.count))
                }
            }
            return Array(out[0..<Int(n)])
        case .zstd:
            var out = [UInt8](repeating: 0, count: ZSTD_compressBound(raw.count))
            let n = raw.withUnsafeBytes { src in
                out.withUnsafeMutableBytes { dst in ZSTD_compress(dst.baseAddress, dst.count, src.baseAddress, src.count, 3) }
            }
            return Array(out[0..<n])
        }
    }
}

/// Lays records out in a WAL stream the way PostgreSQL does: page headers every 8 KiB (long at segment
/// starts), records 8-byte aligned and split across pages with continuation headers, the rest of the
/// segment after an XLOG_SWITCH given up.
struct SyntheticWALWriter {
    static let systemIdentifier: UInt64 = 7_301_234_567_890_123_456
    let segmentSize: Int
    let base: LSN
    private(set) var bytes: [UInt8] = []
    private(set) var lastRecord: LSN = .zero
    /// The next page header gets FIRST_IS_OVERWRITE_CONTRECORD.
    private var overwriteNext = false

    /// Starts at a segment boundary.
    init(base: LSN, segmentSize: Int) {
        precondition(base.rawValue % UInt64(segmentSize) == 0)
        self.base = base
        self.segmentSize = segmentSize
    }

    var position: LSN { base.advanced(by: UInt64(bytes.count)) }

    private mutating func pageHeader(remaining: Int) {
        let here = position
        let long = here.rawValue % UInt64(segmentSize) == 0
        var flags: WALPageHeader.Flags = long ? [.longHeader] : []
        if remaining > 0 { flags.insert(.firstIsContinuation) }
        if overwriteNext { flags.insert(.firstIsOverwriteContinuation); overwriteNext = false }
        WALPageHeader(flags: flags, timeline: PostgresTimeline(1), pageAddress: here, remainingLength: UInt32(remaining),
                      systemIdentifier: long ? Self.systemIdentifier : nil, segmentSize: long ? UInt32(segmentSize) : nil,
                      walPageSize: long ? UInt32(PostgresWAL.pageSize) : nil).encode(into: &bytes)
    }

    /// Writes `record` bytes from the current (aligned) position; `upTo` bytes only when given.
    private mutating func place(_ record: [UInt8], upTo limit: Int? = nil) {
        let page = UInt64(PostgresWAL.pageSize)
        var written = 0
        let count = limit ?? record.count
        while written < count {
            if position.rawValue % page == 0 { pageHeader(remaining: written > 0 ? record.count - written : 0) }
            let room = Int(page - position.rawValue % page)
            let n = min(room, count - written)
            bytes += record[written..<written + n]
            written += n
        }
    }

    private mutating func zeroFill(to target: UInt64) {
        let page = UInt64(PostgresWAL.pageSize)
        while position.rawValue < target {
            if position.rawValue % page == 0 { pageHeader(remaining: 0); continue }
            let n = Int(min(target, (position.rawValue / page + 1) * page) - position.rawValue)
            bytes += repeatElement(0, count: n)
        }
    }

    /// Appends one record; returns its start LSN.
    @discardableResult
    mutating func append(_ record: SyntheticRecord) -> LSN {
        appendRaw(record.encode(prev: lastRecord), isSwitch: record.rmid == .xlog && record.info == XLogRecordHeader.xlogSwitchInfo)
    }

    @discardableResult
    mutating func appendRaw(_ encoded: [UInt8], isSwitch: Bool = false) -> LSN {
        if position.rawValue % UInt64(PostgresWAL.pageSize) == 0 { pageHeader(remaining: 0) }
        let start = position
        place(encoded)
        lastRecord = start
        zeroFill(to: PostgresWAL.maxAlign(position.rawValue))
        if isSwitch {
            let segment = UInt64(segmentSize)
            zeroFill(to: (position.rawValue + segment - 1) / segment * segment)
        }
        return start
    }

    /// Writes the start of `record` to the end of the current page and abandons it, as a crash would;
    /// the next page is marked FIRST_IS_OVERWRITE_CONTRECORD. Returns the abandoned record's start.
    @discardableResult
    mutating func appendAbandoned(_ record: SyntheticRecord) -> LSN {
        if position.rawValue % UInt64(PostgresWAL.pageSize) == 0 { pageHeader(remaining: 0) }
        let start = position
        let encoded = record.encode(prev: lastRecord)
        let room = PostgresWAL.pageSize - Int(position.rawValue % UInt64(PostgresWAL.pageSize))
        precondition(encoded.count > room, "the abandoned record must continue on the next page")
        place(encoded, upTo: room)
        overwriteNext = true
        return start
    }

    /// Appends a filler record sized so that the next record starts `room` bytes before a page end
    /// (for example to force a record header across a page boundary; 0: the filler fills its page).
    mutating func pad(toBytesBeforePageEnd room: Int) {
        precondition(room % 8 == 0 && room >= 0 && room < PostgresWAL.pageSize - WALPageHeader.longSize)
        let page = UInt64(PostgresWAL.pageSize)
        let start = PostgresWAL.recordStart(after: position, segmentSize: segmentSize)
        var target = (start.rawValue / page + 1) * page - UInt64(room)
        var mainDataLength = 0
        while true {
            let total = XLogRecordHeader.size + (mainDataLength == 0 ? 0 : mainDataLength <= 255 ? 2 : 5) + mainDataLength
            let end = PostgresWAL.endOfRecord(startingAt: start, totalLength: UInt32(total), segmentSize: segmentSize).rawValue
            if end == target { break }
            if end > target { target += page }
            mainDataLength += 1
        }
        append(SyntheticRecord(rmid: .standby, mainData: [UInt8](repeating: 0x42, count: mainDataLength)))
    }
}
