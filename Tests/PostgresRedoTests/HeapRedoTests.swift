import XCTest
import LSM
@testable import PostgresRedo

/// Heap and heap2 redo on synthetic records.
final class HeapRedoTests: XCTestCase {
    // MARK: Record building

    struct BlockRef {
        var id: UInt8
        var block: UInt32
        var fork: UInt8 = 0
        var willInit = false
        var data: [UInt8] = []
    }

    /// An XLogRecord in the layout `RecordView.parse` reads (no images).
    static func record(rmid: UInt8, info: UInt8, xid: UInt32 = 1000, blocks: [BlockRef], main: [UInt8]) -> [UInt8] {
        var headers: [UInt8] = []
        var payload: [UInt8] = []
        for (i, b) in blocks.enumerated() {
            headers.append(b.id)
            var forkFlags = b.fork
            if !b.data.isEmpty { forkFlags |= 0x20 }
            if b.willInit { forkFlags |= 0x40 }
            if i > 0 { forkFlags |= 0x80 }
            headers.append(forkFlags)
            headers += le16(UInt16(b.data.count))
            if i == 0 { headers += le32(1663) + le32(5) + le32(16384) }
            headers += le32(b.block)
            payload += b.data
        }
        if !main.isEmpty {
            headers += [255, UInt8(main.count)]
            payload += main
        }
        let total = 24 + headers.count + payload.count
        var r = le32(UInt32(total)) + le32(xid) + [UInt8](repeating: 0, count: 8) + [info, rmid, 0, 0] + le32(0)
        r += headers
        r += payload
        return r
    }

    static func le16(_ v: UInt16) -> [UInt8] { [UInt8(v & 0xFF), UInt8(v >> 8)] }
    static func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }

    static let heap: UInt8 = 10
    static let heap2: UInt8 = 9

    /// Applies `record` to `page` as block reference `blockId`, the way the dispatcher would.
    func apply(_ record: [UInt8], to page: Page, blockId: UInt8 = 0, lsn: UInt64, settings: RedoSettings = RedoSettings()) throws {
        var view = RecordView()
        try record.withUnsafeBytes { raw in
            try view.parse(raw, endLSN: LSN(lsn))
            guard let index = view.blockIndex(id: blockId) else { return XCTFail("no block \(blockId)") }
            if view.blocks[index].willInit { page.zero(0, Page.size) }
            let step = RedoStep(page: page, record: view, blockIndex: index, settings: settings)
            if view.rmid == Self.heap { try HeapRedo.redoHeap(step) } else { try HeapRedo.redoHeap2(step) }
        }
    }

    private func withPage(_ body: (Page) throws -> Void) rethrows {
        var bytes = [UInt8](repeating: 0, count: Page.size)
        try bytes.withUnsafeMutableBytes { try body(Page($0.baseAddress!)) }
    }

    /// xl_heap_header + tuple body: `natts` attributes, no nulls, t_hoff 24, `body` bytes of data.
    static func tupleData(_ body: [UInt8], infomask: UInt16 = 0x0802) -> [UInt8] {
        le16(3) + le16(infomask) + [24] + [0] + body
    }

    static func insertRecord(offnum: UInt16, body: [UInt8], initPage: Bool, xid: UInt32 = 1000, block: UInt32 = 7) -> [UInt8] {
        record(rmid: heap, info: initPage ? 0x80 : 0x00, xid: xid,
               blocks: [BlockRef(id: 0, block: block, willInit: initPage, data: tupleData(body))],
               main: le16(offnum) + [0])
    }

    // MARK: Tests

    func testInsertWithInitPage() throws {
        try withPage { page in
            try apply(Self.insertRecord(offnum: 1, body: [1, 2, 3, 4, 5], initPage: true), to: page, lsn: 0x100)
            XCTAssertEqual(page.lsn, 0x100)
            XCTAssertEqual(page.maxOffset, 1)
            let id = page.itemId(1)
            XCTAssertEqual(id.length, 24 + 5)
            XCTAssertEqual(id.offset, 8192 - 32)
            let t = HeapTuple(page.item(1))
            XCTAssertEqual(t.xmin, 1000)
            XCTAssertEqual(t.xmax, 0)
            XCTAssertEqual(t.field3, 0)
            XCTAssertEqual(t.infomask, 0x0802)
            XCTAssertEqual(t.infomask2, 3)
            XCTAssertEqual(t.hoff, 24)
            XCTAssertEqual(t.ctidOffsetNumber, 1)
            XCTAssertEqual(page.u16(page.itemId(1).offset + 14), 7, "ctid block")
            XCTAssertEqual(page.u8(id.offset + 24), 1)
            XCTAssertEqual(page.u8(id.offset + 28), 5)

            try apply(Self.insertRecord(offnum: 2, body: [9, 9], initPage: false, xid: 1001), to: page, lsn: 0x200)
            XCTAssertEqual(page.maxOffset, 2)
            XCTAssertEqual(page.itemId(2).offset, 8192 - 32 - 32)
            XCTAssertEqual(HeapTuple(page.item(2)).xmin, 1001)
        }
    }

    func testInsertBeyondEndThrows() throws {
        try withPage { page in
            page.initialize(specialSize: 0)
            XCTAssertThrowsError(try apply(Self.insertRecord(offnum: 3, body: [1], initPage: false), to: page, lsn: 0x100))
        }
    }

    func testDeleteAndLock() throws {
        try withPage { page in
            try apply(Self.insertRecord(offnum: 1, body: [1, 2, 3], initPage: true), to: page, lsn: 0x100)
            page.setAllVisible()
            // Delete by xid 1005, infobits KEYS_UPDATED, flags ALL_VISIBLE_CLEARED.
            let del = Self.record(rmid: Self.heap, info: 0x10, xid: 1005, blocks: [BlockRef(id: 0, block: 7)],
                                  main: Self.le32(1005) + Self.le16(1) + [0x10, 0x01])
            try apply(del, to: page, lsn: 0x200)
            let t = HeapTuple(page.item(1))
            XCTAssertEqual(t.xmax, 1005)
            XCTAssertEqual(t.infomask2 & HeapTuple.keysUpdated, HeapTuple.keysUpdated)
            XCTAssertEqual(t.infomask & HeapTuple.xmaxInvalid, 0)
            XCTAssertFalse(page.isAllVisible)
            XCTAssertEqual(page.pruneXid, 1005)
            XCTAssertEqual(page.lsn, 0x200)

            // Lock: LOCK_ONLY | EXCL_LOCK.
            let lock = Self.record(rmid: Self.heap, info: 0x60, xid: 1006, blocks: [BlockRef(id: 0, block: 7)],
                                   main: Self.le32(1006) + Self.le16(1) + [0x02 | 0x04, 0])
            try apply(lock, to: page, lsn: 0x300)
            XCTAssertEqual(t.xmax, 1006)
            XCTAssertEqual(t.infomask & (HeapTuple.xmaxLockOnly | HeapTuple.xmaxExclusiveLock), HeapTuple.xmaxLockOnly | HeapTuple.xmaxExclusiveLock)
            XCTAssertEqual(t.infomask2 & HeapTuple.keysUpdated, 0)
        }
    }

    func testDeleteOfMissingItemThrows() throws {
        try withPage { page in
            try apply(Self.insertRecord(offnum: 1, body: [1], initPage: true), to: page, lsn: 0x100)
            let del = Self.record(rmid: Self.heap, info: 0x10, blocks: [BlockRef(id: 0, block: 7)],
                                  main: Self.le32(1005) + Self.le16(2) + [0, 0])
            XCTAssertThrowsError(try apply(del, to: page, lsn: 0x200))
            let short = Self.record(rmid: Self.heap, info: 0x10, blocks: [BlockRef(id: 0, block: 7)], main: [1, 2, 3])
            XCTAssertThrowsError(try apply(short, to: page, lsn: 0x200))
        }
    }

    func testHotUpdateWithPrefixAndSuffix() throws {
        try withPage { page in
            let old: [UInt8] = Array(0..<40)
            try apply(Self.insertRecord(offnum: 1, body: old, initPage: true), to: page, lsn: 0x100)
            // New tuple: old[0..<10] + [0xAA, 0xBB] + old[30..<40].
            var data = Self.le16(10) + Self.le16(10)
            data += Self.le16(0x8003) + Self.le16(0x2802) + [24]
            data += [0] // bitmap/padding up to t_hoff 24
            data += [0xAA, 0xBB]
            let main = Self.le32(1010) + Self.le16(1) + [0, 0x20 | 0x40] + Self.le32(0) + Self.le16(2)
            let upd = Self.record(rmid: Self.heap, info: 0x40, xid: 1010, blocks: [BlockRef(id: 0, block: 7, data: data)], main: main)
            try apply(upd, to: page, lsn: 0x200)
            XCTAssertEqual(page.maxOffset, 2)
            let o = HeapTuple(page.item(1))
            XCTAssertEqual(o.xmax, 1010)
            XCTAssertEqual(o.infomask2 & HeapTuple.hotUpdated, HeapTuple.hotUpdated)
            XCTAssertEqual(o.ctidOffsetNumber, 2)
            let id = page.itemId(2)
            XCTAssertEqual(id.length, 24 + 22)
            let n = HeapTuple(page.item(2))
            XCTAssertEqual(n.xmin, 1010)
            XCTAssertEqual(n.infomask2, 0x8003)
            let body = (0..<22).map { page.u8(id.offset + 24 + $0) }
            XCTAssertEqual(body, Array(0..<10) + [0xAA, 0xBB] + Array(30..<40))
        }
    }

    func testUpdateAcrossPages() throws {
        try withPage { oldPage in
            try withPage { newPage in
                try apply(Self.insertRecord(offnum: 1, body: [1, 2, 3], initPage: true, block: 3), to: oldPage, lsn: 0x100)
                let data = Self.le16(3) + Self.le16(0x0802) + [24] + [0] + [4, 5, 6]
                let main = Self.le32(1020) + Self.le16(1) + [0x10, 0] + Self.le32(0) + Self.le16(1)
                let upd = Self.record(rmid: Self.heap, info: 0x20 | 0x80, xid: 1020,
                                      blocks: [BlockRef(id: 0, block: 9, willInit: true, data: data), BlockRef(id: 1, block: 3)],
                                      main: main)
                try apply(upd, to: oldPage, blockId: 1, lsn: 0x200)
                try apply(upd, to: newPage, blockId: 0, lsn: 0x200)
                let o = HeapTuple(oldPage.item(1))
                XCTAssertEqual(o.xmax, 1020)
                XCTAssertEqual(o.infomask2 & HeapTuple.keysUpdated, HeapTuple.keysUpdated)
                XCTAssertEqual(oldPage.u16(oldPage.itemId(1).offset + 14), 9, "ctid points at the new page")
                XCTAssertEqual(oldPage.maxOffset, 1)
                XCTAssertEqual(newPage.maxOffset, 1)
                XCTAssertEqual(newPage.u8(newPage.itemId(1).offset + 24), 4)
                XCTAssertEqual(newPage.lsn, 0x200)
            }
        }
    }

    func testPruneAndVacuum() throws {
        try withPage { page in
            try apply(Self.insertRecord(offnum: 1, body: [1], initPage: true), to: page, lsn: 0x100)
            for i in 2...4 {
                try apply(Self.insertRecord(offnum: UInt16(i), body: [UInt8(i)], initPage: false), to: page, lsn: 0x100 + UInt64(i))
            }
            // Redirect 1 -> 3, 2 dead, 4 unused.
            let prune = Self.record(rmid: Self.heap2, info: 0x10, blocks: [BlockRef(id: 0, block: 7, data: Self.le16(1) + Self.le16(3) + Self.le16(2) + Self.le16(4))],
                                    main: Self.le32(0) + Self.le16(1) + Self.le16(1))
            try apply(prune, to: page, lsn: 0x200)
            XCTAssertEqual(page.maxOffset, 3)
            XCTAssertTrue(page.itemId(1).isRedirect)
            XCTAssertEqual(page.itemId(1).redirectTarget, 3)
            XCTAssertTrue(page.itemId(2).isDead)
            XCTAssertEqual(page.itemId(3).offset, 8192 - 32)
            XCTAssertEqual(page.upper, 8192 - 32)

            let vac = Self.record(rmid: Self.heap2, info: 0x20, blocks: [BlockRef(id: 0, block: 7, data: Self.le16(2))], main: Self.le16(1))
            try apply(vac, to: page, lsn: 0x300)
            XCTAssertFalse(page.itemId(2).isUsed)
            XCTAssertTrue(page.hasFreeLinePointers)
            XCTAssertEqual(page.lsn, 0x300)
        }
    }

    func testFreezePage() throws {
        try withPage { page in
            try apply(Self.insertRecord(offnum: 1, body: [1], initPage: true), to: page, lsn: 0x100)
            let plan = Self.le32(0) + Self.le16(1) + Self.le16(3) + Self.le16(0x0B02) + [0, 0]
            let frz = Self.record(rmid: Self.heap2, info: 0x30, blocks: [BlockRef(id: 0, block: 7, data: plan)], main: Self.le32(999) + Self.le16(1))
            try apply(frz, to: page, lsn: 0x200)
            let t = HeapTuple(page.item(1))
            XCTAssertEqual(t.infomask, 0x0B02)
            XCTAssertTrue(t.isXminFrozen)
        }
    }

    func testVisibleSetsMapBitsAndFlag() throws {
        try withPage { vm in
            try withPage { heapPage in
                heapPage.initialize(specialSize: 0)
                heapPage.lsn = 0x50
                // Heap block 32673 is block 1 of the map, byte 0, bits 2-3.
                let rec = Self.record(rmid: Self.heap2, info: 0x40,
                                      blocks: [BlockRef(id: 0, block: 1, fork: 2), BlockRef(id: 1, block: 32673)],
                                      main: Self.le32(900) + [0x03])
                try apply(rec, to: vm, blockId: 0, lsn: 0x200)
                XCTAssertEqual(vm.u8(24), 0x0C)
                XCTAssertEqual(vm.lsn, 0x200)
                XCTAssertEqual(vm.upper, 8192)
                try apply(rec, to: heapPage, blockId: 1, lsn: 0x200)
                XCTAssertTrue(heapPage.isAllVisible)
                XCTAssertEqual(heapPage.lsn, 0x50, "no LSN without wal_log_hints")
                try apply(rec, to: heapPage, blockId: 1, lsn: 0x200, settings: RedoSettings(walLogHints: true))
                XCTAssertEqual(heapPage.lsn, 0x200)

                // Bits already set: the map page keeps its LSN.
                try apply(rec, to: vm, blockId: 0, lsn: 0x300)
                XCTAssertEqual(vm.lsn, 0x200)
            }
        }
    }

    func testMultiInsertWithInitPage() throws {
        try withPage { page in
            var data: [UInt8] = []
            for body: [UInt8] in [[1, 2, 3], [4, 5], [6]] {
                if data.count % 2 == 1 { data.append(0) }
                data += Self.le16(UInt16(1 + body.count)) + Self.le16(3) + Self.le16(0x0802) + [24] + [0] + body
            }
            let rec = Self.record(rmid: Self.heap2, info: 0x50 | 0x80, xid: 1100,
                                  blocks: [BlockRef(id: 0, block: 4, willInit: true, data: data)],
                                  main: [0x20, 0] + Self.le16(3))
            try apply(rec, to: page, lsn: 0x100)
            XCTAssertEqual(page.maxOffset, 3)
            XCTAssertEqual(page.itemId(2).length, 24 + 2)
            XCTAssertEqual(page.u8(page.itemId(3).offset + 24), 6)
            XCTAssertEqual(HeapTuple(page.item(3)).ctidOffsetNumber, 3)
            XCTAssertTrue(page.isAllVisible)
        }
    }

    func testMaskHidesHintsCommandIdsTokensAndPadding() throws {
        try withPage { a in
            try withPage { b in
                try apply(Self.insertRecord(offnum: 1, body: [1, 2, 3], initPage: true), to: a, lsn: 0x100)
                b.copy(from: a)
                let ta = HeapTuple(a.item(1)), tb = HeapTuple(b.item(1))
                tb.infomask |= HeapTuple.xminCommitted
                tb.field3 = 77
                b.setU8(b.itemId(1).offset + 27, 0xEE) // padding after the 27-byte tuple
                b.pruneXid = 5
                b.lsn = 0x999
                tb.setCtid(block: 12345, offset: HeapTuple.specTokenOffset)
                ta.setCtid(block: 1, offset: HeapTuple.specTokenOffset)
                HeapRedo.mask(a, blockNumber: 7)
                HeapRedo.mask(b, blockNumber: 7)
                a.withUnsafeBytesForTest { x in b.withUnsafeBytesForTest { y in XCTAssertNil(PageMasking.firstDifference(x, y)) } }
                XCTAssertEqual(ta.ctidOffsetNumber, 1)
            }
        }
    }
}

extension Page {
    func withUnsafeBytesForTest<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: base, count: Page.size))
    }
}
