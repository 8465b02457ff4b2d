import LSM
import PostgresWAL

/// A WAL record's bytes taken apart in place for redo: offsets into the record, no copies.
///
/// The bytes are a whole record as ingest stored it (`DecodedRecord.bytes`: the 24-byte header, the
/// fragment headers, then the payloads; see `DecodedRecord` for the layout), with xl_prev and xl_crc
/// zeroed since value encoding 3 (format-spec 10.6). The CRC was checked when the record was
/// received, and the layer files checksum every block since, so this parser checks only what it
/// needs to stay in bounds, and `prevLSN` is 0 for a compact record.
///
/// Invariant: after a successful `parse`, every range in `blocks` and `mainData` lies inside the
/// record. The view is reusable: `parse` keeps the block array's capacity, so parsing the records of
/// a chain allocates nothing after the first. It does not own the bytes: use it only while the
/// buffer passed to `parse` is alive.
public struct RecordView {
    /// One block reference: where its parts are in the record.
    public struct Block {
        public var id: UInt8
        public var forkFlags: UInt8
        public var spc: UInt32
        public var db: UInt32
        public var rel: UInt32
        public var block: UInt32
        /// Offset and length of the stored image bytes (length 0 without an image).
        public var imageOffset: Int
        public var imageStoredLength: Int
        public var imageHoleOffset: Int
        public var imageHoleLength: Int
        /// bimg_info: HAS_HOLE 0x01, APPLY 0x02, PGLZ 0x04, LZ4 0x08, ZSTD 0x10.
        public var imageInfo: UInt8
        public var dataOffset: Int
        public var dataLength: Int

        public var fork: UInt8 { forkFlags & 0x0F }
        public var hasImage: Bool { forkFlags & 0x10 != 0 }
        public var hasData: Bool { forkFlags & 0x20 != 0 }
        public var willInit: Bool { forkFlags & 0x40 != 0 }
        /// An image redo restores instead of replaying (BKPIMAGE_APPLY).
        public var imageApplies: Bool { hasImage && imageInfo & 0x02 != 0 }
    }

    public private(set) var bytes = UnsafeRawBufferPointer(start: nil, count: 0)
    public private(set) var xid: UInt32 = 0
    public private(set) var info: UInt8 = 0
    public private(set) var rmid: UInt8 = 0
    public private(set) var blocks: [Block] = []
    public private(set) var mainDataOffset = 0
    public private(set) var mainDataLength = 0
    /// xl_prev: the start of the record before this one.
    public private(set) var prevLSN: LSN = .zero
    /// The record's end (PostgreSQL's EndRecPtr): what redo stamps as pd_lsn, and the LSN ingest
    /// stored the record at.
    public private(set) var endLSN: LSN = .zero

    public init() { blocks.reserveCapacity(4) }

    public var resourceManager: ResourceManagerId { ResourceManagerId(rmid) }
    /// The rmgr's bits of xl_info.
    public var opcode: UInt8 { info & 0xF0 }

    public var mainData: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: bytes[mainDataOffset..<mainDataOffset + mainDataLength])
    }

    /// The block reference with id `id`, if the record has one.
    public func blockIndex(id: UInt8) -> Int? {
        for i in blocks.indices where blocks[i].id == id { return i }
        return nil
    }

    public func block(id: UInt8) -> Block? { blockIndex(id: id).map { blocks[$0] } }

    /// The per-block data of block reference `id` (empty when it has none or does not exist).
    public func blockData(id: UInt8) -> UnsafeRawBufferPointer {
        guard let b = block(id: id), b.dataLength > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(rebasing: bytes[b.dataOffset..<b.dataOffset + b.dataLength])
    }

    /// Parses `record`, whose end LSN (PostgreSQL's EndRecPtr) is `endLSN`.
    public mutating func parse(_ record: UnsafeRawBufferPointer, endLSN: LSN) throws {
        bytes = record
        self.endLSN = endLSN
        blocks.removeAll(keepingCapacity: true)
        mainDataOffset = 0
        mainDataLength = 0
        let n = record.count
        guard n >= 24 else { throw RedoError.malformedRecord("record of \(n) bytes is shorter than its header", at: endLSN) }
        let total = Int(record.u32le(0))
        guard total == n else { throw RedoError.malformedRecord("record says \(total) bytes, \(n) stored", at: endLSN) }
        xid = record.u32le(4)
        prevLSN = LSN(record.u64le(8))
        info = record[16]
        rmid = record[17]
        var pos = 24
        var payload = 0
        var lastSpc: UInt32 = 0, lastDb: UInt32 = 0, lastRel: UInt32 = 0
        func need(_ k: Int) throws {
            if pos + k > n { throw RedoError.malformedRecord("record header runs past its \(n) bytes", at: endLSN) }
        }
        while n - pos > payload {
            try need(1)
            let id = record[pos]; pos += 1
            switch id {
            case 255:
                try need(1)
                mainDataLength = Int(record[pos]); pos += 1
            case 254:
                try need(4)
                mainDataLength = Int(record.u32le(pos)); pos += 4
            case 253:
                try need(2); pos += 2
            case 252:
                try need(4); pos += 4
            case 0...32:
                try need(3)
                var b = Block(id: id, forkFlags: record[pos], spc: 0, db: 0, rel: 0, block: 0, imageOffset: 0,
                              imageStoredLength: 0, imageHoleOffset: 0, imageHoleLength: 0, imageInfo: 0,
                              dataOffset: 0, dataLength: Int(record.u16le(pos + 1)))
                pos += 3
                if b.hasImage {
                    try need(5)
                    b.imageStoredLength = Int(record.u16le(pos))
                    b.imageHoleOffset = Int(record.u16le(pos + 2))
                    b.imageInfo = record[pos + 4]
                    pos += 5
                    let compressed = b.imageInfo & 0x1C != 0
                    if b.imageInfo & 0x01 != 0 {
                        if compressed {
                            try need(2)
                            b.imageHoleLength = Int(record.u16le(pos)); pos += 2
                        } else {
                            b.imageHoleLength = Page.size - b.imageStoredLength
                        }
                    }
                }
                if b.forkFlags & 0x80 == 0 {
                    try need(12)
                    lastSpc = record.u32le(pos); lastDb = record.u32le(pos + 4); lastRel = record.u32le(pos + 8)
                    pos += 12
                }
                b.spc = lastSpc; b.db = lastDb; b.rel = lastRel
                try need(4)
                b.block = record.u32le(pos); pos += 4
                payload += b.imageStoredLength + b.dataLength
                blocks.append(b)
            default:
                throw RedoError.malformedRecord("invalid fragment id \(id)", at: endLSN)
            }
            if id >= 254 {
                payload += mainDataLength
                break
            }
        }
        guard n - pos == payload else {
            throw RedoError.malformedRecord("fragment headers announce \(payload) payload bytes but \(n - pos) follow", at: endLSN)
        }
        for i in blocks.indices {
            blocks[i].imageOffset = pos
            pos += blocks[i].imageStoredLength
            blocks[i].dataOffset = pos
            pos += blocks[i].dataLength
        }
        mainDataOffset = pos
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always) func u16le(_ o: Int) -> UInt16 { UInt16(littleEndian: loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    @inline(__always) func u32le(_ o: Int) -> UInt32 { UInt32(littleEndian: loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    @inline(__always) func u64le(_ o: Int) -> UInt64 { UInt64(littleEndian: loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
    @inline(__always) func i16le(_ o: Int) -> Int16 { Int16(bitPattern: u16le(o)) }
}
