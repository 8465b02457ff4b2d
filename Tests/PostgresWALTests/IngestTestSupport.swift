import Foundation
import LSM
import XCTest
@testable import PostgresWAL

/// An `IngestTarget` that keeps every put in memory and checks the contract (LSNs non-decreasing,
/// one value per key and LSN).
final class MemoryIngestTarget: IngestTarget {
    private(set) var values: [Key: [(lsn: LSN, value: Value)]] = [:]
    private(set) var putCount = 0
    private(set) var lastLSN = LSN.zero
    private(set) var advancedTo = LSN.zero

    func put(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        guard lsn >= lastLSN else { throw TestFailure("put at \(lsn) after \(lastLSN)") }
        if let last = values[key]?.last, last.lsn >= lsn { throw TestFailure("second value for \(key) at \(lsn)") }
        lastLSN = lsn
        values[key, default: []].append((lsn, value))
        putCount += 1
    }

    func latestImage(_ key: Key) throws -> [UInt8]? {
        guard let v = values[key]?.last?.value else { return nil }
        guard v.kind == .image else { throw TestFailure("latest value of \(key) is not an image") }
        return v.bytes
    }

    func advance(to lsn: LSN) { advancedTo = max(advancedTo, lsn) }

    func latest(_ key: Key) -> Value? { values[key]?.last?.value }
    func history(_ key: Key) -> [(lsn: LSN, value: Value)] { values[key] ?? [] }

    func size(_ tag: RelTag) throws -> UInt32? { try latestImage(KeySpace.relationSize(tag)).map { try SizeValue.decode($0) } }
    func relDir(_ db: DatabaseTag) throws -> Set<RelDirectory.Entry>? {
        try latestImage(KeySpace.relDir(db)).map { try RelDirectory(decoding: $0).entries }
    }
    func dbDir() throws -> Set<DatabaseTag>? { try latestImage(KeySpace.dbDir).map { try DbDirectory(decoding: $0).entries } }
    func ids(_ key: Key) throws -> Set<UInt32>? { try latestImage(key).map { try IdDirectory(decoding: $0).ids } }
}

/// Builds WAL records the way XLogRecordAssemble lays them out, for tests that need exact records.
struct RecordBuilder {
    struct Block {
        var id: UInt8
        var node: RelFileNode
        var fork: ForkNumber = .main
        var block: UInt32
        var willInit = false
        /// A full page stored without hole or compression.
        var image: [UInt8]?
        var apply = true
        var data: [UInt8] = []
    }

    var rmgr: ResourceManagerId
    var info: UInt8
    var xid: UInt32 = 0
    var blocks: [Block] = []
    var mainData: [UInt8] = []

    func build(at start: LSN, prev: LSN = .zero) throws -> DecodedRecord {
        var headers: [UInt8] = []
        var payload: [UInt8] = []
        var previous: RelFileNode?
        for b in blocks {
            var flags = b.fork.rawValue
            if b.image != nil { flags |= 0x10 }
            if !b.data.isEmpty { flags |= 0x20 }
            if b.willInit { flags |= 0x40 }
            let same = previous == b.node
            if same { flags |= 0x80 }
            headers.append(b.id)
            headers.append(flags)
            headers.appendLittleEndian(UInt16(b.data.count))
            if let image = b.image {
                precondition(image.count == 8192)
                headers.appendLittleEndian(UInt16(8192))
                headers.appendLittleEndian(UInt16(0))
                headers.append(b.apply ? 0x02 : 0x00)
                payload += image
            }
            if !same {
                headers.appendLittleEndian(b.node.spcNode)
                headers.appendLittleEndian(b.node.dbNode)
                headers.appendLittleEndian(b.node.relNode)
            }
            headers.appendLittleEndian(b.block)
            payload += b.data
            previous = b.node
        }
        if !mainData.isEmpty {
            if mainData.count < 256 {
                headers.append(255)
                headers.append(UInt8(mainData.count))
            } else {
                headers.append(254)
                headers.appendLittleEndian(UInt32(mainData.count))
            }
            payload += mainData
        }
        let total = UInt32(XLogRecordHeader.size + headers.count + payload.count)
        var bytes: [UInt8] = []
        XLogRecordHeader(totalLength: total, xid: TransactionId(xid), prev: prev, info: info, resourceManager: rmgr, crc: 0).encode(into: &bytes)
        bytes += headers
        bytes += payload
        let crc = bytes.withUnsafeBytes { DecodedRecord.checksum(of: $0) }
        for i in 0..<4 { bytes[XLogRecordHeader.crcOffset + i] = UInt8(truncatingIfNeeded: crc >> (8 * UInt32(i))) }
        return try DecodedRecord(parsing: bytes, at: start)
    }
}

/// Little-endian main data, built field by field.
struct LE {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { bytes.appendLittleEndian(v) }
    mutating func u32(_ v: UInt32) { bytes.appendLittleEndian(v) }
    mutating func i32(_ v: Int32) { bytes.appendLittleEndian(v) }
    mutating func u64(_ v: UInt64) { bytes.appendLittleEndian(v) }
    mutating func node(_ n: RelFileNode) { u32(n.spcNode); u32(n.dbNode); u32(n.relNode) }
}

/// Feeds records one after another at increasing LSNs.
struct RecordFeeder {
    var lsn: LSN
    var prev = LSN.zero

    init(start: LSN) { lsn = start }

    mutating func feed(_ ingest: WalIngest, _ builder: RecordBuilder) throws -> DecodedRecord {
        let r = try builder.build(at: lsn, prev: prev)
        try ingest.ingest(r)
        prev = r.startLSN
        lsn = r.nextRecordLSN
        return r
    }
}

/// Builds a tar archive (ustar, as pg_basebackup writes) in memory.
struct TarBuilder {
    var bytes: [UInt8] = []

    mutating func add(_ name: String, _ contents: [UInt8], type: UInt8 = UInt8(ascii: "0")) {
        var nameBytes = Array(name.utf8)
        if nameBytes.count > 99 {
            // A GNU long-name entry first.
            var longName = nameBytes
            longName.append(0)
            header("././@LongLink", size: longName.count, type: UInt8(ascii: "L"))
            data(longName)
            nameBytes = Array(nameBytes.prefix(99))
        }
        header(String(decoding: nameBytes, as: UTF8.self), size: contents.count, type: type)
        data(contents)
    }

    private mutating func header(_ name: String, size: Int, type: UInt8) {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, at: Int) { for (i, b) in s.utf8.enumerated() { h[at + i] = b } }
        put(name, at: 0)
        put("0000600", at: 100)
        put("0000000", at: 108)
        put("0000000", at: 116)
        put(String(format: "%011o", size), at: 124)
        put("00000000000", at: 136)
        h[156] = type
        put("ustar", at: 257)
        put("00", at: 263)
        for i in 148..<156 { h[i] = 32 }
        let sum = h.reduce(0) { $0 + Int($1) }
        put(String(format: "%06o", sum), at: 148)
        h[154] = 0
        bytes += h
    }

    private mutating func data(_ d: [UInt8]) {
        bytes += d
        let pad = (512 - d.count % 512) % 512
        bytes += [UInt8](repeating: 0, count: pad)
    }

    mutating func finish() -> [UInt8] {
        bytes += [UInt8](repeating: 0, count: 1024)
        return bytes
    }
}

/// Applies the CLOG and multixact engine records to SLRU pages, the way redo will (test-only).
enum TestSlruRedo {
    static func apply(_ record: EngineRecord, to page: inout [UInt8]) {
        switch record {
        case .clogSetStatus(let status, let xids):
            for x in xids {
                let index = Int(x % PageLayout.clogXactsPerPage)
                let shift = UInt8((index % 4) * 2)
                page[index / 4] = page[index / 4] & ~(0x03 << shift) | (status.rawValue << shift)
            }
        case .multixactOffsets(let entries):
            for e in entries {
                let at = Int(e.multixactId % PageLayout.multixactOffsetsPerPage) * 4
                for i in 0..<4 { page[at + i] = UInt8(truncatingIfNeeded: e.offset >> (8 * UInt32(i))) }
            }
        case .multixactMembers(let entries):
            for e in entries {
                let at = PageLayout.multixactMemberOffset(of: e.memberOffset)
                for i in 0..<4 { page[at + i] = UInt8(truncatingIfNeeded: e.xid >> (8 * UInt32(i))) }
                page[PageLayout.multixactFlagsOffset(of: e.memberOffset) + Int(e.memberOffset % 4)] = e.status
            }
        default:
            XCTFail("not an SLRU engine record: \(record)")
        }
    }
}

/// A redo for tests: images as they are, SLRU engine records applied with `TestSlruRedo`, anything
/// else refused.
struct TestSlruRedoAdapter: Redo {
    func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
        var page = base?.bytes ?? PageLayout.zeroPage
        for r in records {
            guard r.value.kind == .engineRecord else {
                throw StorageError(.unsupported, "test redo cannot apply a WAL record to \(key)", lsn: lsn)
            }
            if r.value.willInit { page = PageLayout.zeroPage }
            TestSlruRedo.apply(try EngineRecord(decoding: r.value.bytes), to: &page)
        }
        return page
    }
}
