import XCTest
import LSM
@testable import PostgresRedo

/// B-tree redo on synthetic pages and records. The end-to-end check against a real primary is
/// scripts/redo_check.sh; these pin down the tuple-level logic and the error paths.
final class BtreeRedoTests: XCTestCase {
    // MARK: Record and tuple builders

    struct BlockRef {
        var id: UInt8
        var block: UInt32
        var data: [UInt8] = []
        var willInit = false
    }

    /// A whole WAL record (XLogRecord header, block headers, main data header, payloads).
    static func record(info: UInt8, main: [UInt8], blocks: [BlockRef]) -> [UInt8] {
        var header: [UInt8] = []
        var payload: [UInt8] = []
        for (i, b) in blocks.enumerated() {
            header.append(b.id)
            var fork: UInt8 = 0
            if !b.data.isEmpty { fork |= 0x20 }
            if b.willInit { fork |= 0x40 }
            if i > 0 { fork |= 0x80 }
            header.append(fork)
            header += le16(b.data.count)
            if i == 0 { header += le32(1663) + le32(5) + le32(16384) }
            header += le32(Int(b.block))
            payload += b.data
        }
        if !main.isEmpty {
            header.append(255)
            header.append(UInt8(main.count))
            payload += main
        }
        let total = 24 + header.count + payload.count
        var r = le32(total) + le32(0) + [UInt8](repeating: 0, count: 8) + [info, 11, 0, 0] + le32(0)
        r += header
        r += payload
        return r
    }

    static func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    static func le32(_ v: Int) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * $0)) & 0xFF) } }

    static func tid(_ block: Int, _ offset: Int) -> [UInt8] { le16(block >> 16) + le16(block & 0xFFFF) + le16(offset) }

    /// A plain leaf tuple: TID, then an 8-byte key (tuple size 16).
    static func leafTuple(key: UInt64, block: Int, offset: Int) -> [UInt8] {
        tid(block, offset) + le16(16) + (0..<8).map { UInt8((key >> (8 * UInt64($0))) & 0xFF) }
    }

    /// A posting list tuple for `key` with the given TIDs (key part 16 bytes, then the TIDs).
    static func postingTuple(key: UInt64, tids: [(Int, Int)]) -> [UInt8] {
        let size = Page.maxAlign(16 + 6 * tids.count)
        var t = tid(16, tids.count | 0x2000) + le16(size | 0x2000)
        t += (0..<8).map { UInt8((key >> (8 * UInt64($0))) & 0xFF) }
        for (b, o) in tids { t += tid(b, o) }
        t += [UInt8](repeating: 0, count: size - t.count)
        return t
    }

    func withPage(_ body: (Page) throws -> Void) rethrows {
        var bytes = [UInt8](repeating: 0, count: Page.size)
        try bytes.withUnsafeMutableBytes { try body(Page($0.baseAddress!)) }
    }

    /// Applies `record` to `page` as block reference `blockId`.
    func apply(_ record: [UInt8], blockId: UInt8, to page: Page, lsn: UInt64 = 0x1000) throws {
        var view = RecordView()
        try record.withUnsafeBytes { raw in
            try view.parse(raw, endLSN: LSN(lsn))
            let index = try XCTUnwrap(view.blockIndex(id: blockId))
            if view.blocks[index].willInit { page.zero(0, Page.size) }
            try BtreeRedo.redo(RedoStep(page: page, record: view, blockIndex: index, settings: RedoSettings()))
        }
    }

    func bytes(_ page: Page, _ offnum: Int) -> [UInt8] {
        let id = page.itemId(offnum)
        return [UInt8](UnsafeRawBufferPointer(start: page.base + id.offset, count: id.length))
    }

    /// A leaf page (rightmost unless `next` is set) holding `tuples` in order after an optional high key.
    func makeLeaf(_ page: Page, tuples: [[UInt8]], highKey: [UInt8]? = nil, next: UInt32 = 0) throws {
        page.initBtreePage()
        let opaque = BtreeOpaque(fresh: page)
        opaque.flags = BtreeOpaque.leaf
        opaque.next = next
        if let highKey { try highKey.withUnsafeBytes { _ = try page.addItem($0, at: 1) } }
        for t in tuples { try t.withUnsafeBytes { _ = try page.addItem($0, at: page.maxOffset + 1) } }
    }

    // MARK: Tests

    func testInsertLeafAndMetaCleanup() throws {
        try withPage { page in
            try makeLeaf(page, tuples: [Self.leafTuple(key: 1, block: 0, offset: 1), Self.leafTuple(key: 3, block: 0, offset: 3)])
            let item = Self.leafTuple(key: 2, block: 0, offset: 2)
            let r = Self.record(info: BtreeRedo.insertLeaf, main: Self.le16(2), blocks: [BlockRef(id: 0, block: 1, data: item)])
            try apply(r, blockId: 0, to: page, lsn: 0x2000)
            XCTAssertEqual(page.maxOffset, 3)
            XCTAssertEqual(bytes(page, 2), item)
            XCTAssertEqual(page.lsn, 0x2000)
        }
        try withPage { page in
            let meta = Self.le32(4) + Self.le32(3) + Self.le32(1) + Self.le32(3) + Self.le32(1) + Self.le32(7) + [1, 0, 0, 0]
            let r = Self.record(info: BtreeRedo.metaCleanup, main: [], blocks: [BlockRef(id: 0, block: 0, data: meta, willInit: true)])
            try apply(r, blockId: 0, to: page)
            XCTAssertEqual(page.u32(24), 0x053162)
            XCTAssertEqual(page.u32(32), 3)
            XCTAssertEqual(page.u32(48), 7)
            XCTAssertEqual(page.base.load(fromByteOffset: 56, as: Double.self), -1.0)
            XCTAssertEqual(page.u8(64), 1)
            XCTAssertEqual(page.lower, 72)
            XCTAssertEqual(BtreeOpaque(fresh: page).flags, BtreeOpaque.meta)
        }
    }

    func testInsertPostingSplit() throws {
        try withPage { page in
            let posting = Self.postingTuple(key: 5, tids: [(1, 1), (1, 3), (1, 5)])
            try makeLeaf(page, tuples: [posting])
            // The new item's TID (1,4) falls inside the posting list at position 2.
            let orig = Self.leafTuple(key: 5, block: 1, offset: 4)
            let r = Self.record(info: BtreeRedo.insertPost, main: Self.le16(2),
                                blocks: [BlockRef(id: 0, block: 1, data: Self.le16(2) + orig)])
            try apply(r, blockId: 0, to: page)
            XCTAssertEqual(bytes(page, 1), Self.postingTuple(key: 5, tids: [(1, 1), (1, 3), (1, 4)]))
            XCTAssertEqual(bytes(page, 2), Self.leafTuple(key: 5, block: 1, offset: 5))
        }
    }

    func testSplitRebuildsBothHalves() throws {
        let tuples = (1...6).map { Self.leafTuple(key: UInt64($0 * 10), block: 0, offset: $0) }
        let newItem = Self.leafTuple(key: 25, block: 0, offset: 9)
        let highKey = Self.leafTuple(key: 30, block: 0, offset: 0)
        // Original page: items 1..6 (rightmost, no high key); the new item goes at offset 3 on the left,
        // items 4.. move right.
        let rightData = Array(tuples[3...5].reversed().joined())
        let main = Self.le32(0) + Self.le16(4) + Self.le16(3) + Self.le16(0)
        let r = Self.record(info: BtreeRedo.splitL, main: main, blocks: [
            BlockRef(id: 0, block: 1, data: newItem + highKey),
            BlockRef(id: 1, block: 2, data: rightData, willInit: true),
        ])
        try withPage { page in
            try makeLeaf(page, tuples: tuples)
            try apply(r, blockId: 0, to: page)
            XCTAssertEqual(page.maxOffset, 5)
            XCTAssertEqual(bytes(page, 1), highKey)
            XCTAssertEqual(bytes(page, 2), tuples[0])
            XCTAssertEqual(bytes(page, 3), tuples[1])
            XCTAssertEqual(bytes(page, 4), newItem)
            XCTAssertEqual(bytes(page, 5), tuples[2])
            // Placed in item order from the top of the page.
            XCTAssertEqual(page.itemId(1).offset, 8176 - 16)
            XCTAssertEqual(page.itemId(5).offset, 8176 - 80)
            let opaque = BtreeOpaque(fresh: page)
            XCTAssertEqual(opaque.next, 2)
            XCTAssertEqual(opaque.flags, BtreeOpaque.leaf | BtreeOpaque.incompleteSplit)
        }
        try withPage { page in
            try apply(r, blockId: 1, to: page)
            XCTAssertEqual(page.maxOffset, 3)
            XCTAssertEqual(bytes(page, 1), tuples[3])
            XCTAssertEqual(bytes(page, 3), tuples[5])
            let opaque = BtreeOpaque(fresh: page)
            XCTAssertEqual(opaque.prev, 1)
            XCTAssertEqual(opaque.next, 0)
            XCTAssertEqual(opaque.flags, BtreeOpaque.leaf)
        }
    }

    func testDedupFormsThePostingLists() throws {
        try withPage { page in
            let tuples = [Self.leafTuple(key: 1, block: 0, offset: 1),
                          Self.leafTuple(key: 7, block: 0, offset: 2),
                          Self.leafTuple(key: 7, block: 0, offset: 3),
                          Self.leafTuple(key: 7, block: 0, offset: 4),
                          Self.leafTuple(key: 9, block: 0, offset: 5)]
            try makeLeaf(page, tuples: tuples)
            BtreeOpaque(fresh: page).flags |= BtreeOpaque.hasGarbage
            let r = Self.record(info: BtreeRedo.dedup, main: Self.le16(1),
                                blocks: [BlockRef(id: 0, block: 1, data: Self.le16(2) + Self.le16(3))])
            try apply(r, blockId: 0, to: page)
            XCTAssertEqual(page.maxOffset, 3)
            XCTAssertEqual(bytes(page, 1), tuples[0])
            XCTAssertEqual(bytes(page, 2), Self.postingTuple(key: 7, tids: [(0, 2), (0, 3), (0, 4)]))
            XCTAssertEqual(bytes(page, 3), tuples[4])
            XCTAssertEqual(BtreeOpaque(fresh: page).flags, BtreeOpaque.leaf)
        }
        // Intervals that do not match what the page allows are refused.
        try withPage { page in
            try makeLeaf(page, tuples: [Self.leafTuple(key: 1, block: 0, offset: 1)])
            let r = Self.record(info: BtreeRedo.dedup, main: Self.le16(1),
                                blocks: [BlockRef(id: 0, block: 1, data: Self.le16(1) + Self.le16(2))])
            XCTAssertThrowsError(try apply(r, blockId: 0, to: page))
        }
    }

    func testVacuumUpdatesAndDeletes() throws {
        try withPage { page in
            let posting = Self.postingTuple(key: 7, tids: [(0, 2), (0, 3), (0, 4)])
            let tuples = [Self.leafTuple(key: 1, block: 0, offset: 1), posting, Self.leafTuple(key: 9, block: 0, offset: 5),
                          Self.leafTuple(key: 10, block: 0, offset: 6), Self.postingTuple(key: 11, tids: [(0, 7), (0, 8)])]
            try makeLeaf(page, tuples: tuples)
            // Delete offsets 1, 3 and 4; drop TID #1 of the posting list at 2 and TID #0 of the one at 5.
            let data = Self.le16(1) + Self.le16(3) + Self.le16(4) + Self.le16(2) + Self.le16(5)
                + Self.le16(1) + Self.le16(1) + Self.le16(1) + Self.le16(0)
            let r = Self.record(info: BtreeRedo.vacuum, main: Self.le16(3) + Self.le16(2),
                                blocks: [BlockRef(id: 0, block: 1, data: data)])
            try apply(r, blockId: 0, to: page)
            XCTAssertEqual(page.maxOffset, 2)
            XCTAssertEqual(bytes(page, 1), Self.postingTuple(key: 7, tids: [(0, 2), (0, 4)]))
            // A posting list left with one TID becomes a plain tuple.
            XCTAssertEqual(bytes(page, 2), Self.tid(0, 8) + Self.le16(16) + Self.leafTuple(key: 11, block: 0, offset: 0)[8...])
        }
    }

    func testHalfDeadUnlinkAndNewRoot() throws {
        let main = Self.le16(0) + Self.le16(0) + Self.le32(9) + Self.le32(8) + Self.le32(10) + Self.le32(4)
        let r = Self.record(info: BtreeRedo.markPageHalfDead, main: main,
                            blocks: [BlockRef(id: 0, block: 9, willInit: true)])
        try withPage { page in
            try apply(r, blockId: 0, to: page)
            XCTAssertEqual(bytes(page, 1), Self.tid(4, 0) + Self.le16(8 | 0x2000))
            let opaque = BtreeOpaque(fresh: page)
            XCTAssertEqual(opaque.flags, BtreeOpaque.halfDead | BtreeOpaque.leaf)
            XCTAssertEqual(opaque.prev, 8)
            XCTAssertEqual(opaque.next, 10)
        }
        let unlink = Self.le32(8) + Self.le32(10) + Self.le32(0) + Self.le32(0) + Self.le32(1234) + Self.le32(0)
            + Self.le32(0) + Self.le32(0) + Self.le32(0)
        let u = Self.record(info: BtreeRedo.unlinkPage, main: unlink, blocks: [BlockRef(id: 0, block: 9, willInit: true)])
        try withPage { page in
            try apply(u, blockId: 0, to: page)
            XCTAssertEqual(page.lower, 32)
            XCTAssertEqual(page.upper, 8176)
            XCTAssertEqual(page.u32(24), 1234)
            XCTAssertEqual(BtreeOpaque(fresh: page).flags, BtreeOpaque.deleted | BtreeOpaque.hasFullXid | BtreeOpaque.leaf)
        }
        let children = Self.leafTuple(key: 50, block: 3, offset: 0) + Self.tid(2, 0) + Self.le16(8 | 0x2000)
        let n = Self.record(info: BtreeRedo.newRoot, main: Self.le32(5) + Self.le32(1),
                            blocks: [BlockRef(id: 0, block: 5, data: children, willInit: true)])
        try withPage { page in
            try apply(n, blockId: 0, to: page)
            XCTAssertEqual(page.maxOffset, 2)
            XCTAssertEqual(bytes(page, 1), Self.tid(2, 0) + Self.le16(8 | 0x2000))
            XCTAssertEqual(BtreeOpaque(fresh: page).flags, BtreeOpaque.root)
            XCTAssertEqual(BtreeOpaque(fresh: page).level, 1)
        }
    }

    func testMalformedRecordsThrow() throws {
        try withPage { page in
            try makeLeaf(page, tuples: [Self.leafTuple(key: 1, block: 0, offset: 1)])
            // Truncated main data.
            let r1 = Self.record(info: BtreeRedo.vacuum, main: [1], blocks: [BlockRef(id: 0, block: 1, data: Self.le16(1))])
            XCTAssertThrowsError(try apply(r1, blockId: 0, to: page))
            // Deleting an offset beyond the page.
            let r2 = Self.record(info: BtreeRedo.delete, main: Self.le32(0) + Self.le16(1) + Self.le16(0),
                                 blocks: [BlockRef(id: 0, block: 1, data: Self.le16(7))])
            XCTAssertThrowsError(try apply(r2, blockId: 0, to: page))
            // A posting split against a plain tuple.
            let r3 = Self.record(info: BtreeRedo.insertPost, main: Self.le16(2),
                                 blocks: [BlockRef(id: 0, block: 1, data: Self.le16(1) + Self.leafTuple(key: 1, block: 0, offset: 2))])
            XCTAssertThrowsError(try apply(r3, blockId: 0, to: page))
        }
        // A sibling update on a page that is not a B-tree page.
        try withPage { page in
            let main = Self.le32(0) + Self.le16(2) + Self.le16(2) + Self.le16(0)
            let r = Self.record(info: BtreeRedo.splitR, main: main, blocks: [
                BlockRef(id: 0, block: 1, data: Self.leafTuple(key: 1, block: 0, offset: 0)),
                BlockRef(id: 1, block: 2, willInit: true), BlockRef(id: 2, block: 3)])
            XCTAssertThrowsError(try apply(r, blockId: 2, to: page))
        }
    }

    func testMask() throws {
        try withPage { page in
            try makeLeaf(page, tuples: [Self.leafTuple(key: 1, block: 0, offset: 1)])
            let opaque = BtreeOpaque(fresh: page)
            opaque.flags |= BtreeOpaque.hasGarbage | BtreeOpaque.splitEnd
            opaque.cycleId = 77
            page.setItemId(1, ItemId(offset: page.itemId(1).offset, flags: Page.lpDead, length: 16))
            page.lsn = 99
            BtreeRedo.mask(page, blockNumber: 1)
            XCTAssertEqual(opaque.flags, BtreeOpaque.leaf)
            XCTAssertEqual(opaque.cycleId, 0)
            XCTAssertEqual(page.itemId(1).flags, Page.lpUnused)
            XCTAssertEqual(page.lsn, 0)
        }
    }
}
