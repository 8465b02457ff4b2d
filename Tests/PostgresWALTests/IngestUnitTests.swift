import Foundation
import LSM
import XCTest
@testable import PostgresWAL

/// Ingest and import on hand-built records and archives: exact values for each record kind.
final class IngestUnitTests: XCTestCase {
    let node = RelFileNode(spcNode: 1663, dbNode: 5, relNode: 16384)
    var db: DatabaseTag { DatabaseTag(spc: 1663, db: 5) }

    // MARK: Encodings

    func testEngineRecordsRoundTrip() throws {
        let records: [EngineRecord] = [
            .clogSetStatus(.committed, xids: [3, 4, 70000]),
            .clogSetStatus(.aborted, xids: []),
            .clogSetStatus(.subCommitted, xids: [UInt32.max]),
            .vmClear([.init(heapBlock: 7, bits: 3), .init(heapBlock: 32672, bits: 2)]),
            .multixactOffsets([.init(multixactId: 1, offset: 1), .init(multixactId: 2, offset: 5)]),
            .multixactMembers([.init(memberOffset: 1, xid: 700, status: 5), .init(memberOffset: 2, xid: 701, status: 0)]),
            .vmTruncate(heapBlocks: 12),
            .fsmTruncate(heapBlocks: 4070),
        ]
        for r in records {
            let bytes = r.encode()
            XCTAssertEqual(bytes[0], r.tag.rawValue)
            XCTAssertEqual(try EngineRecord(decoding: bytes), r)
            XCTAssertThrowsError(try EngineRecord(decoding: bytes.dropLast()), "truncated \(r)")
            XCTAssertThrowsError(try EngineRecord(decoding: bytes + [0]), "trailing byte \(r)")
        }
        // Exact layout of tag 1: tag, status, count, xids, big-endian.
        XCTAssertEqual(EngineRecord.clogSetStatus(.aborted, xids: [0x01020304]).encode(), [1, 2, 0, 0, 0, 1, 1, 2, 3, 4])
        XCTAssertEqual(EngineRecord.vmClear([.init(heapBlock: 9, bits: 1)]).encode(), [2, 0, 0, 0, 1, 0, 0, 0, 9, 1])
        XCTAssertEqual(EngineRecord.multixactMembers([.init(memberOffset: 1, xid: 2, status: 3)]).encode(),
                       [4, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 3])
        XCTAssertThrowsError(try EngineRecord(decoding: [0]))
        XCTAssertThrowsError(try EngineRecord(decoding: [1, 9, 0, 0, 0, 0]), "invalid status")
        XCTAssertThrowsError(try EngineRecord(decoding: [2, 0xFF, 0xFF, 0xFF, 0xFF]), "huge count")
    }

    func testDirectoryEncodings() throws {
        let dir = RelDirectory([.init(rel: 20, fork: 0), .init(rel: 3, fork: 2), .init(rel: 3, fork: 0)])
        XCTAssertEqual(dir.encode(), [0, 0, 0, 3, 0, 0, 0, 3, 0, 0, 0, 0, 3, 2, 0, 0, 0, 20, 0])
        XCTAssertEqual(try RelDirectory(decoding: dir.encode()), dir)
        XCTAssertThrowsError(try RelDirectory(decoding: [0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 3, 0]), "duplicate")
        let dbs = DbDirectory([DatabaseTag(spc: 1664, db: 0), DatabaseTag(spc: 1663, db: 5)])
        XCTAssertEqual(dbs.encode(), [0, 0, 0, 2, 0, 0, 6, 0x7F, 0, 0, 0, 5, 0, 0, 6, 0x80, 0, 0, 0, 0])
        XCTAssertEqual(try DbDirectory(decoding: dbs.encode()), dbs)
        let ids = IdDirectory([9, 1, 0xABCD])
        XCTAssertEqual(ids.encode(), [0, 0, 0, 3, 0, 0, 0, 1, 0, 0, 0, 9, 0, 0, 0xAB, 0xCD])
        XCTAssertEqual(try IdDirectory(decoding: ids.encode()), ids)
        XCTAssertThrowsError(try IdDirectory(decoding: [0, 0, 0, 1]))
        XCTAssertEqual(SizeValue.encode(0x0102), [0, 0, 1, 2])
        XCTAssertEqual(try SizeValue.decode([0, 0, 1, 2]), 0x0102)
    }

    func testKeys() {
        let tag = RelTag(node, .fsm)
        XCTAssertEqual(KeySpace.relationBlock(tag, 7), Key(field1: 0, field2: 1663, field3: 5, field4: 16384, field5: 1, field6: 7))
        XCTAssertEqual(KeySpace.relationSize(tag).field6, 0xFFFF_FFFF)
        XCTAssertEqual(KeySpace.relDir(db), Key(field1: 0, field2: 1663, field3: 5, field4: 0, field5: 0, field6: 1))
        XCTAssertEqual(KeySpace.relMap(db), Key(field1: 0, field2: 1663, field3: 5, field4: 0, field5: 0, field6: 0))
        XCTAssertEqual(KeySpace.slruBlock(.multixactOffsets, segment: 3, block: 31), Key(field1: 1, field2: 2, field3: 1, field4: 3, field5: 0, field6: 31))
        XCTAssertEqual(KeySpace.slruDir(.multixactMembers), Key(field1: 1, field2: 1, field3: 0, field4: 0, field5: 0, field6: 0))
        XCTAssertEqual(KeySpace.twoPhaseFile(xid: 740), Key(field1: 2, field2: 0, field3: 0, field4: 0, field5: 0, field6: 740))
        XCTAssertEqual(KeySpace.checkpoint, Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 1))
        // Relation keys and SLRU keys land in their own chunks.
        XCTAssertEqual(ChunkId(containing: KeySpace.relationBlock(tag, 131_072)).kind, .relationSegment)
        XCTAssertEqual(ChunkId(containing: KeySpace.slruBlock(.clog, segment: 1, block: 0)).kind, .slruSegment)
        XCTAssertEqual(ChunkId(containing: KeySpace.relDir(db)), .metadata)
    }

    func testRelationFileNames() {
        XCTAssertEqual(RelationFileName("16384"), RelationFileName(relNode: 16384, fork: .main, segment: 0))
        XCTAssertEqual(RelationFileName("16384_vm"), RelationFileName(relNode: 16384, fork: .visibilityMap, segment: 0))
        XCTAssertEqual(RelationFileName("16384_fsm.2"), RelationFileName(relNode: 16384, fork: .fsm, segment: 2))
        XCTAssertEqual(RelationFileName("1259_init"), RelationFileName(relNode: 1259, fork: .initialization, segment: 0))
        XCTAssertEqual(RelationFileName("16384.1"), RelationFileName(relNode: 16384, fork: .main, segment: 1))
        for bad in ["t3_16384", "pg_internal.init", "PG_VERSION", "16384_xx", "16384.", "16384.a", "", "_vm", "0", "pg_filenode.map", "16384.1.2"] {
            XCTAssertNil(RelationFileName(bad), bad)
        }
    }

    func testPageLayoutArithmetic() {
        XCTAssertEqual(PageLayout.fsmLeafPhysicalBlock(logicalPage: 0), 2)
        XCTAssertEqual(PageLayout.fsmLeafPhysicalBlock(logicalPage: 1), 3)
        XCTAssertEqual(PageLayout.fsmLeafPhysicalBlock(logicalPage: 4068), 4070)
        XCTAssertEqual(PageLayout.fsmLeafPhysicalBlock(logicalPage: 4069), 4072)
        // FSM: 10 heap blocks, FSM of 3 pages; cut to 5 keeps 3 pages and zeroes slots >= 5 of page 2.
        XCTAssertTrue(PageLayout.fsmTruncation(heapBlocks: 5, fsmBlocks: 3) == (nil, 2))
        XCTAssertTrue(PageLayout.fsmTruncation(heapBlocks: 0, fsmBlocks: 3) == (2, nil))
        XCTAssertTrue(PageLayout.fsmTruncation(heapBlocks: 4069, fsmBlocks: 4073) == (3, nil), "heap block 4069 is slot 0 of leaf 1, block 3")
        XCTAssertTrue(PageLayout.fsmTruncation(heapBlocks: 4070, fsmBlocks: 4073) == (4, 3))
        XCTAssertTrue(PageLayout.fsmTruncation(heapBlocks: 4070, fsmBlocks: 3) == (nil, nil))
        // VM.
        XCTAssertTrue(PageLayout.vmTruncation(heapBlocks: 0, vmBlocks: 2) == (0, nil))
        XCTAssertTrue(PageLayout.vmTruncation(heapBlocks: 5, vmBlocks: 2) == (1, 0))
        XCTAssertTrue(PageLayout.vmTruncation(heapBlocks: 5, vmBlocks: 1) == (nil, 0))
        XCTAssertTrue(PageLayout.vmTruncation(heapBlocks: 32672, vmBlocks: 2) == (1, nil))
        XCTAssertTrue(PageLayout.vmTruncation(heapBlocks: 32672 * 3 + 1, vmBlocks: 2) == (nil, nil))
        // SLRU.
        XCTAssertEqual(PageLayout.clogPage(of: 32767), 0)
        XCTAssertEqual(PageLayout.clogPage(of: 32768), 1)
        XCTAssertTrue(PageLayout.clogPagePrecedes(0, 32))
        XCTAssertFalse(PageLayout.clogPagePrecedes(32, 32))
        XCTAssertTrue(PageLayout.slruMayDeleteSegment(0, cutoffPage: 32, precedes: PageLayout.clogPagePrecedes))
        XCTAssertFalse(PageLayout.slruMayDeleteSegment(1, cutoffPage: 32, precedes: PageLayout.clogPagePrecedes))
        XCTAssertFalse(PageLayout.slruMayDeleteSegment(0, cutoffPage: 31, precedes: PageLayout.clogPagePrecedes))
        XCTAssertEqual(PageLayout.multixactMemberOffset(of: 0), 4)
        XCTAssertEqual(PageLayout.multixactMemberOffset(of: 5), 20 + 4 + 4)
        XCTAssertEqual(PageLayout.multixactFlagsOffset(of: 1635), 408 * 20)
        XCTAssertEqual(PageLayout.multixactMemberPage(of: 1636), 1)
        XCTAssertEqual(PageLayout.lastMultixactMemberSegment, 0x14078)
    }

    // MARK: Blocks

    func testVerbatimEncodingStoresTheRecordAsItIs() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        ingest.recordEncoding = .verbatim
        var feeder = RecordFeeder(start: LSN(0x100_0028))
        let insert = try feeder.feed(ingest, RecordBuilder(rmgr: .heap, info: 0x80, xid: 700, blocks: [
            .init(id: 0, node: node, block: 0, willInit: true, data: [1, 2, 3]),
        ], mainData: [1, 0, 0]))
        XCTAssertEqual(target.latest(KeySpace.relationBlock(RelTag(node, .main), 0)), .walRecord(insert.bytes, willInit: true))
    }

    func testBlockReferencesExtendAndCreate() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        var feeder = RecordFeeder(start: LSN(0x100_0028))
        var image = [UInt8](repeating: 7, count: 8192)
        image[12] = 0x18; image[13] = 0; image[14] = 0x00; image[15] = 0x20 // pd_lower 24, pd_upper 8192
        // An FPI of block 3 of a fork nobody knew: zero pages fill blocks 0...2.
        let fpi = try feeder.feed(ingest, RecordBuilder(rmgr: .xlog, info: 0xB0, blocks: [.init(id: 0, node: node, block: 3, image: image)]))
        let main = RelTag(node, .main)
        XCTAssertEqual(try target.size(main), 4)
        XCTAssertEqual(try target.relDir(db), [main.entry])
        XCTAssertEqual(try target.dbDir(), [db])
        for b in 0..<3 { XCTAssertEqual(target.latest(KeySpace.relationBlock(main, UInt32(b))), .image(PageLayout.zeroPage)) }
        var stamped = image
        let end = fpi.endLSN.rawValue
        for i in 0..<4 { stamped[i] = UInt8(truncatingIfNeeded: (end >> 32) >> (8 * UInt64(i))); stamped[4 + i] = UInt8(truncatingIfNeeded: end >> (8 * UInt64(i))) }
        XCTAssertEqual(target.latest(KeySpace.relationBlock(main, 3)), .image(stamped), "image with pd_lsn = the record's end")
        XCTAssertEqual(target.history(KeySpace.relationBlock(main, 3)).first?.lsn, fpi.endLSN)

        // A heap insert on block 4 with INIT_PAGE, and an image without APPLY on the FSM fork.
        let insert = try feeder.feed(ingest, RecordBuilder(rmgr: .heap, info: 0x80, xid: 700, blocks: [
            .init(id: 0, node: node, block: 4, willInit: true, data: [1, 2, 3]),
            .init(id: 1, node: node, fork: .fsm, block: 0, image: image, apply: false),
        ], mainData: [1, 0, 0]))
        // Stored compact (format-spec 10.6): the record's bytes with xl_prev and xl_crc zeroed.
        var compact = insert.bytes
        for i in Array(8..<16) + Array(20..<24) { compact[i] = 0 }
        XCTAssertNotEqual(compact, insert.bytes, "the fed record has a non-zero xl_prev or xl_crc")
        XCTAssertEqual(target.latest(KeySpace.relationBlock(main, 4)), .walRecord(compact, willInit: true))
        XCTAssertEqual(target.latest(KeySpace.relationBlock(RelTag(node, .fsm), 0)), .walRecord(compact, willInit: false))
        // It still decodes to the same record (layout checks only; its CRC was checked at ingest).
        let stored = try DecodedRecord(stored: compact)
        XCTAssertEqual(stored.blocks.map(\.block), insert.blocks.map(\.block))
        XCTAssertEqual(stored.mainData, insert.mainData)
        XCTAssertEqual(try target.size(main), 5)
        XCTAssertEqual(try target.size(RelTag(node, .fsm)), 1)
        XCTAssertEqual(try target.relDir(db), [main.entry, RelTag(node, .fsm).entry])
        // One RelDir value per record, even though both records added forks.
        XCTAssertEqual(target.history(KeySpace.relDir(db)).map(\.lsn), [fpi.endLSN, insert.endLSN])
        XCTAssertEqual(target.advancedTo, insert.endLSN)
        XCTAssertEqual(ingest.stats[.heap].records, 1)
        XCTAssertEqual(ingest.stats[.heap].blockValues, 2)
        XCTAssertEqual(ingest.stats[.xlog].uninterpreted, 0)

        // Records out of order are refused (without harm: the next record in order is taken).
        XCTAssertThrowsError(try ingest.ingest(fpi)) { e in XCTAssertEqual((e as? IngestError)?.code, .invalidArgument) }
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .standby, info: 0x10, mainData: [0]))
    }

    func testUninterpretedRecordsAreCounted() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        var feeder = RecordFeeder(start: LSN(0x100_0028))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .standby, info: 0x10, mainData: [1, 2, 3, 4]))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .btree, info: 0x00, blocks: [.init(id: 0, node: node, block: 0, willInit: true, data: [1])], mainData: [2, 0]))
        XCTAssertEqual(ingest.stats[.standby].uninterpretedWithoutBlocks, 1)
        XCTAssertEqual(ingest.stats[.btree].uninterpreted, 1)
        XCTAssertEqual(ingest.stats[.btree].uninterpretedWithoutBlocks, 0)
        XCTAssertEqual(ingest.stats.records, 2)
        XCTAssertNotNil(target.latest(KeySpace.relationBlock(RelTag(node, .main), 0)))
    }

    // MARK: Transactions

    func testCommitAndAbortSetClogAndDropRelations() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        ingest.collectsCommitTimestamps = true
        var feeder = RecordFeeder(start: LSN(0x200_0028))
        // The relation to be dropped, with its FSM fork.
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .storage, info: 0x10, mainData: { var m = LE(); m.node(node); m.i32(0); return m.bytes }()))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .storage, info: 0x10, mainData: { var m = LE(); m.node(node); m.i32(1); return m.bytes }()))
        XCTAssertEqual(try target.size(RelTag(node, .main)), 0)
        XCTAssertEqual(try target.relDir(db)?.count, 2)

        // COMMIT with xinfo: dbinfo, 2 subxacts (one on the next CLOG page), 1 relfilenode, 1 dropped
        // stats item, 2 invalidations, origin.
        var m = LE()
        m.u64(UInt64(bitPattern: 770_000_000_000_000))
        m.u32(1 << 0 | 1 << 1 | 1 << 2 | 1 << 3 | 1 << 5 | 1 << 8)
        m.u32(5); m.u32(1663)
        m.i32(2); m.u32(32768); m.u32(32769)
        m.i32(1); m.node(node)
        m.i32(1); m.i32(1); m.u32(5); m.u32(16384)
        m.i32(2); m.bytes += [UInt8](repeating: 0xEE, count: 32)
        m.u64(0x1234); m.u64(99)
        let commit = try feeder.feed(ingest, RecordBuilder(rmgr: .transaction, info: 0x80, xid: 32767, mainData: m.bytes))
        let page0 = KeySpace.slruBlock(.clog, segment: 0, block: 0), page1 = KeySpace.slruBlock(.clog, segment: 0, block: 1)
        XCTAssertEqual(target.latest(page0), .engineRecord(EngineRecord.clogSetStatus(.committed, xids: [32767]).encode(), willInit: true))
        XCTAssertEqual(target.latest(page1), .engineRecord(EngineRecord.clogSetStatus(.committed, xids: [32768, 32769]).encode(), willInit: true))
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.clog)), [0])
        XCTAssertEqual(try target.latestImage(KeySpace.slruSegmentSize(.clog, segment: 0)).map { try SizeValue.decode($0) }, 2)
        XCTAssertEqual(try target.relDir(db), [])
        XCTAssertEqual(try target.size(RelTag(node, .fsm)), 0)
        XCTAssertEqual(ingest.commitTimestamps, [CommitTimestamp(lsn: commit.endLSN, xid: 32767, timestamp: 770_000_000_000_000)])

        // CLOG ZEROPAGE for page 2 (the image), then an ABORT without xinfo on it.
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .clog, info: 0x00, mainData: { var m = LE(); m.i32(2); return m.bytes }()))
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.clog, segment: 0, block: 2)), .image(PageLayout.zeroPage))
        var a = LE()
        a.u64(5)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .transaction, info: 0x20, xid: 65536 + 10, mainData: a.bytes))
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.clog, segment: 0, block: 2)),
                       .engineRecord(EngineRecord.clogSetStatus(.aborted, xids: [65546]).encode(), willInit: false))
        XCTAssertEqual(ingest.drainCommitTimestamps().count, 1)
        XCTAssertEqual(ingest.commitTimestamps.count, 0)

        // CLOG TRUNCATE at page 64 drops segment 0 and 1 but not 2.
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .clog, info: 0x00, mainData: { var m = LE(); m.i32(33); return m.bytes }()))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .clog, info: 0x00, mainData: { var m = LE(); m.i32(64); return m.bytes }()))
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.clog)), [0, 1, 2])
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .clog, info: 0x10, mainData: { var m = LE(); m.i32(64); m.u32(64 * 32768); m.u32(1); return m.bytes }()))
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.clog)), [2])
    }

    func testPreparedTransactions() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        ingest.collectsCommitTimestamps = true
        var feeder = RecordFeeder(start: LSN(0x300_0028))
        // xl_xact_prepare header (magic, total_len, xid, ...) and some payload: the state file.
        var m = LE()
        m.u32(0x57F94534); m.u32(100); m.u32(900); m.u32(5)
        m.bytes += [UInt8](repeating: 0xAB, count: 60)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .transaction, info: 0x10, xid: 900, mainData: m.bytes))
        let file = try XCTUnwrap(target.latestImage(KeySpace.twoPhaseFile(xid: 900)))
        XCTAssertEqual(Array(file.prefix(m.bytes.count)), m.bytes)
        XCTAssertEqual(file.count, m.bytes.count + 4, "the state file ends with its CRC-32C")
        XCTAssertEqual(try target.ids(KeySpace.twoPhaseDir), [900])

        // COMMIT_PREPARED: xinfo TWOPHASE + GID; the xid comes from the record body.
        var c = LE()
        c.u64(42)
        c.u32(1 << 4 | 1 << 7)
        c.u32(900)
        c.bytes += Array("gid1".utf8) + [0]
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .transaction, info: 0x30 | 0x80, xid: 0, mainData: c.bytes))
        XCTAssertEqual(try target.ids(KeySpace.twoPhaseDir), [])
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.clog, segment: 0, block: 0)),
                       .engineRecord(EngineRecord.clogSetStatus(.committed, xids: [900]).encode(), willInit: true))
        XCTAssertEqual(ingest.commitTimestamps.map(\.xid), [900])
    }

    // MARK: Storage, heap, multixact, database, relmap, checkpoint

    func testTruncateAndVisibilityMapClears() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        var feeder = RecordFeeder(start: LSN(0x400_0028))
        // Main fork of 10 blocks, FSM of 3, VM of 1 (a VISIBLE record references VM block 0 and heap block 9).
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .heap, info: 0x80, blocks: [.init(id: 0, node: node, block: 9, willInit: true, data: [0])], mainData: [1, 0, 0]))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .xlog, info: 0xA0, blocks: [.init(id: 0, node: node, fork: .fsm, block: 2, image: PageLayout.zeroPage)]))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .heap2, info: 0x40, blocks: [
            .init(id: 0, node: node, fork: .visibilityMap, block: 0, data: []),
            .init(id: 1, node: node, block: 9),
        ], mainData: [0, 0, 0, 0, 3]))
        let main = RelTag(node, .main), fsm = RelTag(node, .fsm), vm = RelTag(node, .visibilityMap)
        XCTAssertEqual(try target.size(main), 10)
        XCTAssertEqual(try target.size(fsm), 3)
        XCTAssertEqual(try target.size(vm), 1)

        // DELETE on heap block 9 with ALL_VISIBLE_CLEARED: a VM clear of both bits on VM page 0.
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .heap, info: 0x10, blocks: [.init(id: 0, node: node, block: 9)], mainData: [1, 0, 0, 0, 1, 0, 0, 0x01]))
        XCTAssertEqual(target.latest(KeySpace.relationBlock(vm, 0)), .engineRecord(EngineRecord.vmClear([.init(heapBlock: 9, bits: 3)]).encode()))
        // UPDATE from heap block 2 (block ref 1) to 9 (block ref 0), both cleared: one merged record.
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .heap, info: 0x20, blocks: [
            .init(id: 0, node: node, block: 9), .init(id: 1, node: node, block: 2),
        ], mainData: [0, 0, 0, 0, 1, 0, 0, 0x03, 0, 0, 0, 0, 2, 0]))
        XCTAssertEqual(target.latest(KeySpace.relationBlock(vm, 0)),
                       .engineRecord(EngineRecord.vmClear([.init(heapBlock: 2, bits: 3), .init(heapBlock: 9, bits: 3)]).encode()))
        // LOCK with ALL_FROZEN_CLEARED: only the frozen bit.
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .heap, info: 0x60, blocks: [.init(id: 0, node: node, block: 5)], mainData: [0, 0, 0, 0, 1, 0, 0, 0x01]))
        XCTAssertEqual(target.latest(KeySpace.relationBlock(vm, 0)), .engineRecord(EngineRecord.vmClear([.init(heapBlock: 5, bits: 2)]).encode()))
        // A heap block whose VM page does not exist: nothing.
        let other = RelFileNode(spcNode: 1663, dbNode: 5, relNode: 16390)
        let before = target.putCount
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .heap2, info: 0x50, blocks: [.init(id: 0, node: other, block: 0, willInit: true, data: [0])], mainData: [0x01, 0, 0]))
        XCTAssertEqual(target.putCount - before, 3, "the block, its size and the RelDir")

        // TRUNCATE to 5 blocks: main 5; FSM keeps 3 pages with page 2's tail cleared; VM keeps 1 page with its tail cleared.
        var t = LE()
        t.u32(5); t.node(node); t.i32(7)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .storage, info: 0x20, mainData: t.bytes))
        XCTAssertEqual(try target.size(main), 5)
        XCTAssertEqual(try target.size(fsm), 3)
        XCTAssertEqual(try target.size(vm), 1)
        XCTAssertEqual(target.latest(KeySpace.relationBlock(fsm, 2)), .engineRecord(EngineRecord.fsmTruncate(heapBlocks: 5).encode()))
        XCTAssertEqual(target.latest(KeySpace.relationBlock(vm, 0)), .engineRecord(EngineRecord.vmTruncate(heapBlocks: 5).encode()))
        XCTAssertEqual(ingest.stats.engineRecords(.vmClear), 3)
        XCTAssertEqual(ingest.stats.engineRecords(.vmTruncate), 1)
        XCTAssertEqual(ingest.stats.engineRecords(.fsmTruncate), 1)
        // TRUNCATE to 0: FSM goes to 2 pages... no: slot 0 of logical page 0 is physical block 2, so 2 pages remain.
        var t0 = LE()
        t0.u32(0); t0.node(node); t0.i32(7)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .storage, info: 0x20, mainData: t0.bytes))
        XCTAssertEqual(try target.size(main), 0)
        XCTAssertEqual(try target.size(fsm), 2)
        XCTAssertEqual(try target.size(vm), 0)
    }

    func testMultiXactCreateAcrossMemberPages() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        var feeder = RecordFeeder(start: LSN(0x500_0028))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x00, mainData: { var m = LE(); m.i32(0); return m.bytes }()))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x10, mainData: { var m = LE(); m.i32(0); return m.bytes }()))
        var m = LE()
        m.u32(7); m.u32(1635); m.i32(2)
        m.u32(800); m.i32(1)
        m.u32(801); m.i32(5)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x20, xid: 801, mainData: m.bytes))
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.multixactOffsets, segment: 0, block: 0)),
                       .engineRecord(EngineRecord.multixactOffsets([.init(multixactId: 7, offset: 1635), .init(multixactId: 8, offset: 1637)]).encode()))
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.multixactMembers, segment: 0, block: 0)),
                       .engineRecord(EngineRecord.multixactMembers([.init(memberOffset: 1635, xid: 800, status: 1)]).encode()))
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.multixactMembers, segment: 0, block: 1)),
                       .engineRecord(EngineRecord.multixactMembers([.init(memberOffset: 1636, xid: 801, status: 5)]).encode(), willInit: true))
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.multixactMembers)), [0])
        XCTAssertEqual(try target.latestImage(KeySpace.slruSegmentSize(.multixactMembers, segment: 0)).map { try SizeValue.decode($0) }, 2)

        // The last multixact of an offsets page: the next one's offset goes on the next page.
        var e = LE()
        e.u32(2047); e.u32(1637); e.i32(1); e.u32(802); e.i32(0)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x20, xid: 802, mainData: e.bytes))
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.multixactOffsets, segment: 0, block: 0)),
                       .engineRecord(EngineRecord.multixactOffsets([.init(multixactId: 2047, offset: 1637)]).encode()))
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.multixactOffsets, segment: 0, block: 1)),
                       .engineRecord(EngineRecord.multixactOffsets([.init(multixactId: 2048, offset: 1638)]).encode(), willInit: true))

        // TRUNCATE_ID: members [0, 1636*32*2) drops segments 0 and 1.
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x10, mainData: { var m = LE(); m.i32(32); return m.bytes }()))
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x10, mainData: { var m = LE(); m.i32(64); return m.bytes }()))
        var t = LE()
        t.u32(1); t.u32(1); t.u32(8); t.u32(0); t.u32(1636 * 64)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x30, mainData: t.bytes))
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.multixactMembers)), [2])
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.multixactOffsets)), [0])
    }

    func testDatabaseRecords() throws {
        let target = MemoryIngestTarget()
        let source = DatabaseTag(spc: 1663, db: 1)
        let srcNode = RelFileNode(spcNode: 1663, dbNode: 1, relNode: 1259)
        // The source database as an import would leave it: two blocks and a relmap.
        let importer = BaseBackupImport(target: target, startLSN: LSN(0x600_0000))
        try importer.importFile(name: "base/1/PG_VERSION", contents: Array("15\n".utf8))
        try importer.importFile(name: "base/1/1259", contents: [UInt8](repeating: 1, count: 8192) + [UInt8](repeating: 2, count: 8192))
        try importer.importFile(name: "base/1/pg_filenode.map", contents: [UInt8](repeating: 9, count: 512))
        try importer.finish()

        struct Source: PageSource {
            let target: MemoryIngestTarget
            func page(_ key: Key, at lsn: LSN) throws -> [UInt8]? {
                target.history(key).last(where: { $0.lsn <= lsn })?.value.bytes
            }
        }
        let ingest = WalIngest(target: target, pageSource: Source(target: target))
        var feeder = RecordFeeder(start: LSN(0x600_0028))
        var m = LE()
        m.u32(20000); m.u32(1663); m.u32(1); m.u32(1663)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .database, info: 0x00, mainData: m.bytes))
        let copy = DatabaseTag(spc: 1663, db: 20000)
        let copied = RelTag(spc: 1663, db: 20000, rel: 1259, fork: 0)
        XCTAssertEqual(try target.dbDir(), [source, copy])
        XCTAssertEqual(try target.relDir(copy), [copied.entry])
        XCTAssertEqual(try target.size(copied), 2)
        XCTAssertEqual(target.latest(KeySpace.relationBlock(copied, 1)), .image([UInt8](repeating: 2, count: 8192)))
        XCTAssertEqual(try target.latestImage(KeySpace.relMap(copy)), [UInt8](repeating: 9, count: 512))
        XCTAssertEqual(ingest.stats.blocksCopied, 2)

        // WAL_LOG strategy: an empty database, then its relmap.
        var w = LE()
        w.u32(20001); w.u32(1663)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .database, info: 0x10, mainData: w.bytes))
        let walLog = DatabaseTag(spc: 1663, db: 20001)
        XCTAssertEqual(try target.relDir(walLog), [])
        var r = LE()
        r.u32(20001); r.u32(1663); r.i32(512)
        r.bytes += [UInt8](repeating: 4, count: 512)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .relMap, info: 0x00, mainData: r.bytes))
        XCTAssertEqual(try target.latestImage(KeySpace.relMap(walLog)), [UInt8](repeating: 4, count: 512))

        // DROP of the copy.
        var d = LE()
        d.u32(20000); d.i32(1); d.u32(1663)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .database, info: 0x20, mainData: d.bytes))
        XCTAssertEqual(try target.dbDir(), [source, walLog])
        XCTAssertEqual(try target.relDir(copy), [])
        XCTAssertEqual(try target.size(copied), 0)
        _ = srcNode

        // FILE_COPY without a page source is refused.
        let bare = WalIngest(target: MemoryIngestTarget())
        XCTAssertThrowsError(try bare.ingest(try RecordBuilder(rmgr: .database, info: 0x00, mainData: m.bytes).build(at: LSN(0x700_0028)))) { e in
            XCTAssertEqual((e as? IngestError)?.code, .unsupported)
        }
    }

    func testCheckpointAndNextOid() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        var feeder = RecordFeeder(start: LSN(0x800_0028))
        var cp = [UInt8](repeating: 0, count: 88)
        cp[32] = 0x10; cp[33] = 0x27 // nextOid 10000
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .xlog, info: 0x10, mainData: cp))
        XCTAssertEqual(try target.latestImage(KeySpace.checkpoint), cp)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .xlog, info: 0x30, mainData: [0x20, 0x4E, 0, 0]))
        var expected = cp
        expected[32] = 0x20; expected[33] = 0x4E
        XCTAssertEqual(try target.latestImage(KeySpace.checkpoint), expected)
        XCTAssertThrowsError(try ingest.ingest(try RecordBuilder(rmgr: .xlog, info: 0x00, mainData: [1, 2, 3]).build(at: feeder.lsn))) { e in
            XCTAssertEqual((e as? IngestError)?.code, .malformed)
        }
        // After an error the ingest is poisoned.
        XCTAssertThrowsError(try ingest.ingest(try RecordBuilder(rmgr: .standby, info: 0x10, mainData: [0]).build(at: LSN(0x900_0028)))) { e in
            XCTAssertEqual((e as? IngestError)?.code, .poisoned)
        }
    }

    /// nextXid moves to the next multiple of 1024 past a used xid (epoch-aware), never back; an online
    /// checkpoint with older counters does not move them back either.
    func testCheckpointCountersStayAheadOfUsedXids() throws {
        XCTAssertNil(CheckpointCounters.nextXid(1000, after: 999), "already past")
        XCTAssertEqual(CheckpointCounters.nextXid(1000, after: 1000), 1024)
        XCTAssertEqual(CheckpointCounters.nextXid(1000, after: 1023), 1024)
        XCTAssertEqual(CheckpointCounters.nextXid(1000, after: 1024), 2048)
        XCTAssertNil(CheckpointCounters.nextXid(1000, after: 2), "not a normal xid")
        let epoch1: UInt64 = 1 << 32
        XCTAssertEqual(CheckpointCounters.nextXid(epoch1 + 5, after: 4000), epoch1 + 4096, "same epoch")
        XCTAssertNil(CheckpointCounters.nextXid(epoch1 + 5, after: 0xFFFF_FF00), "an xid of the previous epoch")
        XCTAssertEqual(CheckpointCounters.nextXid(0xFFFF_FE00, after: 0xFFFF_FF00), epoch1 + 3, "wraps into the next epoch, past the special xids")
        XCTAssertEqual(CheckpointCounters.nextXid(0xFFFF_FE00, after: 10), epoch1 + 1024, "an xid after the wrap")

        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        var feeder = RecordFeeder(start: LSN(0x800_0028))
        var cp = [UInt8](repeating: 0, count: 88)
        CheckPointLayout.setU64(&cp, CheckPointLayout.nextXidOffset, 1000)
        CheckPointLayout.setU32(&cp, CheckPointLayout.nextMultiOffset, 1)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .xlog, info: 0x10, mainData: cp))
        func stored(_ at: Int) throws -> UInt64 { CheckPointLayout.u64(try XCTUnwrap(target.latestImage(KeySpace.checkpoint)), at) }
        var r = RecordBuilder(rmgr: .standby, info: 0x10, mainData: [0])
        r.xid = 1500
        let advancing = try feeder.feed(ingest, r)
        XCTAssertEqual(try stored(CheckPointLayout.nextXidOffset), 2048)
        r.xid = 1700
        _ = try feeder.feed(ingest, r)
        XCTAssertEqual(target.history(KeySpace.checkpoint).last?.lsn, advancing.endLSN, "no new value within the same 1024")
        // An online checkpoint whose nextXid (1600) is behind: the stored 2048 stays.
        CheckPointLayout.setU64(&cp, CheckPointLayout.nextXidOffset, 1600)
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .xlog, info: 0x10, mainData: cp))
        XCTAssertEqual(try stored(CheckPointLayout.nextXidOffset), 2048)
        // MultiXact CREATE_ID: multi 7, offset 20, 3 members -> nextMulti 8, nextMultiOffset 23.
        var create: [UInt8] = []
        create.appendLittleEndian(UInt32(7)); create.appendLittleEndian(UInt32(20)); create.appendLittleEndian(UInt32(3))
        for x in [UInt32(1500), 1501, 1502] { create.appendLittleEndian(x); create.appendLittleEndian(Int32(1)) }
        _ = try feeder.feed(ingest, RecordBuilder(rmgr: .multiXact, info: 0x20, mainData: create))
        let value = try XCTUnwrap(target.latestImage(KeySpace.checkpoint))
        XCTAssertEqual(CheckPointLayout.u32(value, CheckPointLayout.nextMultiOffset), 8)
        XCTAssertEqual(CheckPointLayout.u32(value, CheckPointLayout.nextMultiOffsetOffset), 23)
    }

    // MARK: Base backup import

    func testImportFromTarInChunks() throws {
        var tar = TarBuilder()
        tar.add("base/", [], type: UInt8(ascii: "5"))
        tar.add("base/5/PG_VERSION", Array("15\n".utf8))
        var rel = [UInt8]()
        for b in 0..<3 { rel += [UInt8](repeating: UInt8(b + 1), count: 8192) }
        tar.add("base/5/16384", rel)
        tar.add("base/5/16384.1", [UInt8](repeating: 0xAA, count: 8192) + [1, 2, 3])
        tar.add("base/5/16384_fsm", [UInt8](repeating: 0xF, count: 8192))
        tar.add("base/5/t3_16390", [UInt8](repeating: 0, count: 8192))
        tar.add("base/5/pg_internal.init", [1, 2, 3])
        tar.add("base/5/pg_filenode.map", [UInt8](repeating: 5, count: 512))
        tar.add("base/7/PG_VERSION", Array("15\n".utf8))
        tar.add("global/1262", [UInt8](repeating: 0x62, count: 8192))
        tar.add("global/pg_filenode.map", [UInt8](repeating: 6, count: 512))
        var control = [UInt8](repeating: 0, count: 8192)
        for i in 40..<128 { control[i] = UInt8(i) }
        tar.add("global/pg_control", control)
        tar.add("pg_xact/0000", [UInt8](repeating: 0x55, count: 16384))
        tar.add("pg_multixact/offsets/0000", [UInt8](repeating: 0, count: 8192))
        tar.add("pg_twophase/000002E4", [9, 9, 9])
        tar.add("pg_wal/000000010000000000000002", [UInt8](repeating: 0, count: 100))
        tar.add("backup_label", Array("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".utf8))
        tar.add("pg_tblspc/16500", [], type: UInt8(ascii: "2"))
        tar.add("base/5/" + String(repeating: "9", count: 8) + "_vm", [UInt8](repeating: 0x3, count: 8192))
        tar.add("./some/very/long/" + String(repeating: "x", count: 120), [1])
        let archive = tar.finish()

        let target = MemoryIngestTarget()
        let start = LSN(0x200_0028)
        let importer = BaseBackupImport(target: target, startLSN: start)
        let parser = TarStreamParser(consumer: importer)
        var rng = SeededRandom(seed: testSeed("testImportFromTarInChunks"))
        var offset = 0
        while offset < archive.count {
            let n = min(archive.count - offset, Int.random(in: 1...20000, using: &rng))
            try parser.feed(Array(archive[offset..<offset + n]))
            offset += n
        }
        try parser.finish()
        XCTAssertTrue(parser.isComplete)
        try importer.finish()

        let main = RelTag(spc: 1663, db: 5, rel: 16384, fork: 0)
        XCTAssertEqual(try target.size(main), 131_073, "segment 1 holds block 131072; its partial tail is dropped")
        XCTAssertEqual(target.latest(KeySpace.relationBlock(main, 2)), .image([UInt8](repeating: 3, count: 8192)))
        XCTAssertEqual(target.latest(KeySpace.relationBlock(main, 131_072)), .image([UInt8](repeating: 0xAA, count: 8192)))
        XCTAssertEqual(try target.size(RelTag(spc: 1663, db: 5, rel: 16384, fork: 1)), 1)
        XCTAssertEqual(try target.relDir(DatabaseTag(spc: 1663, db: 5)),
                       [.init(rel: 16384, fork: 0), .init(rel: 16384, fork: 1), .init(rel: 99_999_999, fork: 2)])
        XCTAssertEqual(try target.relDir(DatabaseTag(spc: 1663, db: 7)), [])
        XCTAssertEqual(try target.relDir(KeySpace.globalDatabase), [.init(rel: 1262, fork: 0)])
        XCTAssertEqual(try target.dbDir(), [DatabaseTag(spc: 1663, db: 5), DatabaseTag(spc: 1663, db: 7), KeySpace.globalDatabase])
        XCTAssertEqual(try target.latestImage(KeySpace.relMap(DatabaseTag(spc: 1663, db: 5))), [UInt8](repeating: 5, count: 512))
        XCTAssertEqual(try target.latestImage(KeySpace.relMap(KeySpace.globalDatabase)), [UInt8](repeating: 6, count: 512))
        XCTAssertEqual(try target.latestImage(KeySpace.controlFile), control)
        XCTAssertEqual(try target.latestImage(KeySpace.checkpoint), Array(control[40..<128]))
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.clog)), [0])
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.multixactOffsets)), [0])
        XCTAssertEqual(try target.ids(KeySpace.slruDir(.multixactMembers)), [])
        XCTAssertEqual(try target.latestImage(KeySpace.slruSegmentSize(.clog, segment: 0)).map { try SizeValue.decode($0) }, 2)
        XCTAssertEqual(target.latest(KeySpace.slruBlock(.clog, segment: 0, block: 1)), .image([UInt8](repeating: 0x55, count: 8192)))
        XCTAssertEqual(try target.ids(KeySpace.twoPhaseDir), [0x2E4])
        XCTAssertEqual(try target.latestImage(KeySpace.twoPhaseFile(xid: 0x2E4)), [9, 9, 9])
        XCTAssertEqual(target.lastLSN, start)
        let ignored = Set(importer.ignoredEntries.map(\.name))
        for name in ["base/5/t3_16390", "base/5/pg_internal.init", "backup_label", "pg_wal/000000010000000000000002", "pg_tblspc/16500"] {
            XCTAssertTrue(ignored.contains(name), "\(name) should be ignored: \(ignored)")
        }
        XCTAssertTrue(ignored.contains { $0.hasSuffix(String(repeating: "x", count: 120)) }, "long names are read whole")
        XCTAssertEqual(importer.blocksImported, 3 + 1 + 1 + 1 + 2 + 1 + 1)
    }

    /// A new `WalIngest` per record (as after restarts: caches reloaded from the target) must store
    /// exactly what one long-lived ingest stores.
    func testRestartedIngestStoresTheSame() throws {
        let main = RelTag(node, .main)
        var builders: [RecordBuilder] = []
        func le(_ f: (inout LE) -> Void) -> [UInt8] { var m = LE(); f(&m); return m.bytes }
        builders.append(RecordBuilder(rmgr: .database, info: 0x10, mainData: le { $0.u32(5); $0.u32(1663) }))
        builders.append(RecordBuilder(rmgr: .storage, info: 0x10, mainData: le { $0.node(node); $0.i32(0) }))
        builders.append(RecordBuilder(rmgr: .heap, info: 0x80, xid: 10, blocks: [.init(id: 0, node: node, block: 2, willInit: true, data: [1])], mainData: [1, 0, 0]))
        builders.append(RecordBuilder(rmgr: .heap2, info: 0x40, blocks: [.init(id: 0, node: node, fork: .visibilityMap, block: 0), .init(id: 1, node: node, block: 2)], mainData: [0, 0, 0, 0, 1]))
        builders.append(RecordBuilder(rmgr: .clog, info: 0x00, mainData: le { $0.i32(0) }))
        builders.append(RecordBuilder(rmgr: .transaction, info: 0x00, xid: 10, mainData: le { $0.u64(1) }))
        builders.append(RecordBuilder(rmgr: .heap, info: 0x10, xid: 11, blocks: [.init(id: 0, node: node, block: 1)], mainData: [11, 0, 0, 0, 1, 0, 0, 1]))
        builders.append(RecordBuilder(rmgr: .multiXact, info: 0x00, mainData: le { $0.i32(0) }))
        builders.append(RecordBuilder(rmgr: .multiXact, info: 0x10, mainData: le { $0.i32(0) }))
        builders.append(RecordBuilder(rmgr: .multiXact, info: 0x20, xid: 11, mainData: le { $0.u32(1); $0.u32(1); $0.i32(2); $0.u32(10); $0.i32(1); $0.u32(11); $0.i32(4) }))
        builders.append(RecordBuilder(rmgr: .transaction, info: 0x10, xid: 12, mainData: le { $0.u32(0x57F94534); $0.u32(40); $0.u32(12); $0.u32(5); $0.u64(0) }))
        builders.append(RecordBuilder(rmgr: .xlog, info: 0x10, mainData: [UInt8](repeating: 3, count: 88)))
        builders.append(RecordBuilder(rmgr: .xlog, info: 0x30, mainData: le { $0.u32(777) }))
        builders.append(RecordBuilder(rmgr: .transaction, info: 0xB0, mainData: le { $0.u64(2); $0.u32(1 << 4); $0.u32(12) }))
        builders.append(RecordBuilder(rmgr: .storage, info: 0x20, mainData: le { $0.u32(1); $0.node(node); $0.i32(7) }))
        builders.append(RecordBuilder(rmgr: .relMap, info: 0x00, mainData: le { $0.u32(5); $0.u32(1663); $0.i32(4); $0.u32(0xDEADBEEF) }))
        builders.append(RecordBuilder(rmgr: .transaction, info: 0x80, xid: 13, mainData: le { $0.u64(3); $0.u32(1 << 2); $0.i32(1); $0.node(node) }))
        builders.append(RecordBuilder(rmgr: .database, info: 0x20, mainData: le { $0.u32(5); $0.i32(1); $0.u32(1663) }))
        var records: [DecodedRecord] = []
        var lsn = LSN(0xA00_0028), prev = LSN.zero
        for b in builders {
            let r = try b.build(at: lsn, prev: prev)
            records.append(r)
            prev = r.startLSN
            lsn = r.nextRecordLSN
        }
        let continuous = MemoryIngestTarget(), restarted = MemoryIngestTarget()
        let ingest = WalIngest(target: continuous)
        for r in records {
            try ingest.ingest(r)
            try WalIngest(target: restarted).ingest(r)
        }
        func flat(_ t: MemoryIngestTarget) -> [String] {
            t.values.keys.sorted().flatMap { k in t.history(k).map { "\(k)@\($0.lsn): \($0.value.kind) \($0.value.willInit) \($0.value.bytes)" } }
        }
        XCTAssertEqual(flat(continuous), flat(restarted))
        XCTAssertEqual(ingest.stats.records, records.count)
        XCTAssertEqual(ingest.stats.uninterpreted, 1, "Heap2 VISIBLE: its blocks only")
        XCTAssertEqual(ingest.stats[.heap2].uninterpreted, 1)
        // Spot checks of the end state.
        XCTAssertEqual(try continuous.dbDir(), [])
        XCTAssertEqual(try continuous.relDir(db), [])
        XCTAssertEqual(try continuous.size(main), 0)
        XCTAssertEqual(try continuous.ids(KeySpace.twoPhaseDir), [])
        XCTAssertEqual(try continuous.latestImage(KeySpace.checkpoint).map { Array($0[32..<36]) }, [0x09, 0x03, 0, 0])
    }

    func testTarParserRejectsDamage() throws {
        var tar = TarBuilder()
        tar.add("base/5/PG_VERSION", Array("15\n".utf8))
        var archive = tar.finish()
        archive[5] ^= 0xFF
        let parser = TarStreamParser(consumer: BaseBackupImport(target: MemoryIngestTarget(), startLSN: LSN(1)))
        XCTAssertThrowsError(try parser.feed(archive))
        var short = TarBuilder()
        short.add("base/5/16384", [UInt8](repeating: 1, count: 8192))
        let cut = Array(short.finish().prefix(4000))
        let parser2 = TarStreamParser(consumer: BaseBackupImport(target: MemoryIngestTarget(), startLSN: LSN(1)))
        try parser2.feed(cut)
        XCTAssertThrowsError(try parser2.finish())
    }
}
