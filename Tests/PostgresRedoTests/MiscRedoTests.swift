import Foundation
import LSM
import PGTestSupport
import PostgresWAL
import XCTest
@testable import PostgresRedo

/// Checksums against a real cluster, engine records, generic deltas, sequences, XLOG leftovers and
/// record type names.
final class MiscRedoTests: XCTestCase {
    private func withPage<T>(_ bytes: inout [UInt8], _ body: (Page) throws -> T) rethrows -> T {
        try bytes.withUnsafeMutableBytes { try body(Page($0.baseAddress!)) }
    }

    private func zeroPage() -> [UInt8] { [UInt8](repeating: 0, count: Page.size) }

    private func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }
    private func le16(_ v: Int) -> [UInt8] { [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF)] }
    private func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8((v >> (8 * UInt32($0))) & 0xFF) } }

    private func applyEngine(_ record: [UInt8], to page: inout [UInt8], key: Key) throws {
        try record.withUnsafeBytes { raw in
            try withPage(&page) { try EngineRecordRedo.apply(raw, to: $0, key: key) }
        }
    }

    private func assertMalformed(_ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertEqual((error as? RedoError)?.code, .malformedRecord, "\(error)", file: file, line: line)
        }
    }

    // MARK: Checksums

    /// Every page of a fresh `initdb -k` cluster's template1 (and of its shared catalogs) carries the
    /// checksum we compute.
    func testChecksumsMatchInitdbCluster() throws {
        try XCTSkipUnless(TestPrimary.isAvailable, "PostgreSQL 15 and root are needed")
        let dir = FileManager.default.temporaryDirectory.path + "/checksums-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try TestPrimary.shell("chown postgres: \(dir) && chmod 700 \(dir)")
        try TestPrimary.shell("cd \(dir) && runuser -u postgres -- \(TestPrimary.binDirectory)/initdb -k --no-sync -A trust -U postgres -D \(dir)/data")

        var checked = 0, files = 0, forks = Set<String>()
        for sub in ["base/1", "global"] {
            let path = "\(dir)/data/\(sub)"
            for name in try FileManager.default.contentsOfDirectory(atPath: path).sorted() {
                // relfilenode[_fork][.segment]
                let parts = name.split(separator: ".")
                guard let first = parts.first, first.first?.isNumber == true else { continue }
                let segment = parts.count > 1 ? UInt32(parts[1]) ?? 0 : 0
                if first.contains("_") { forks.insert(String(first.split(separator: "_")[1])) }
                let data = try [UInt8](Data(contentsOf: URL(fileURLWithPath: "\(path)/\(name)")))
                guard data.count % Page.size == 0 else { continue }
                files += 1
                try data.withUnsafeBytes { raw in
                    for i in 0..<(data.count / Page.size) {
                        let page = Page(UnsafeMutableRawPointer(mutating: raw.baseAddress! + i * Page.size))
                        if page.isNew { continue }
                        let block = UInt32(i) + segment * PageLayout.blocksPerRelationSegment
                        let ours = PageChecksum.compute(page, blockNumber: block)
                        XCTAssertEqual(ours, page.checksum, "\(sub)/\(name) block \(block)")
                        if ours != page.checksum { throw RedoError(.corruptPage, "stop at first mismatch") }
                        checked += 1
                    }
                }
            }
        }
        XCTAssertGreaterThan(files, 50)
        XCTAssertGreaterThan(checked, 300)
        XCTAssertTrue(forks.contains("fsm"), "FSM pages checked too")
    }

    func testChecksumIgnoresStoredChecksumAndMixesBlockNumber() {
        var bytes = zeroPage()
        withPage(&bytes) { page in
            page.initialize(specialSize: 0)
            page.lsn = 0x1_2345_6789
            let a = PageChecksum.compute(page, blockNumber: 7)
            page.checksum = 0xBEEF
            XCTAssertEqual(PageChecksum.compute(page, blockNumber: 7), a)
            XCTAssertNotEqual(PageChecksum.compute(page, blockNumber: 8), a)
            XCTAssertNotEqual(a, 0)
        }
    }

    // MARK: Engine records

    func testClogSetStatus() throws {
        let key = KeySpace.slruBlock(.clog, segment: 0, block: 1)
        var page = zeroPage()
        // xids 32773 and 32774: page 1, byte 1, shifts 2 and 4.
        try applyEngine([1, 1] + be32(2) + be32(32_773) + be32(32_774), to: &page, key: key)
        XCTAssertEqual(page[1], 0x14)
        // A sub-commit over a commit changes nothing; an abort over a sub-commit is applied.
        try applyEngine([1, 3] + be32(1) + be32(32_773), to: &page, key: key)
        XCTAssertEqual(page[1], 0x14)
        try applyEngine([1, 3] + be32(1) + be32(32_775), to: &page, key: key)
        XCTAssertEqual(page[1], 0xD4)
        try applyEngine([1, 2] + be32(1) + be32(32_775), to: &page, key: key)
        XCTAssertEqual(page[1], 0x94)
        XCTAssertEqual(page.reduce(0) { $0 + Int($1) }, 0x94)
        // Wrong page, bad status, truncated body, trailing bytes.
        assertMalformed { try applyEngine([1, 1] + be32(1) + be32(5), to: &page, key: key) }
        assertMalformed { try applyEngine([1, 4] + be32(1) + be32(32_773), to: &page, key: key) }
        assertMalformed { try applyEngine([1, 1] + be32(2) + be32(32_773), to: &page, key: key) }
        assertMalformed { try applyEngine([1, 1] + be32(1) + be32(32_773) + [0], to: &page, key: key) }
        assertMalformed { try applyEngine([1, 1] + be32(1) + be32(32_773), to: &page, key: KeySpace.slruBlock(.multixactOffsets, segment: 0, block: 1)) }
        assertMalformed { try applyEngine([9], to: &page, key: key) }
        assertMalformed { try applyEngine([], to: &page, key: key) }
    }

    func testVisibilityMapClearAndTruncate() throws {
        let key = Key(field1: 0, field2: 1663, field3: 5, field4: 16_384, field5: 2, field6: 1)
        var page = zeroPage()
        withPage(&page) { p in
            p.initialize(specialSize: 0)
            p.lsn = 0xABCD
            p.zero(24, 0)
        }
        for i in 24..<Page.size { page[i] = 0xFF }
        // Heap block 32672 + 5: byte 24 + 1, shift 2.
        try applyEngine([2] + be32(2) + be32(32_677) + [1] + be32(32_672 + 8) + [3], to: &page, key: key)
        XCTAssertEqual(page[25], 0xFB)
        XCTAssertEqual(page[26], 0xFC)
        XCTAssertEqual(page[24], 0xFF)
        withPage(&page) { XCTAssertEqual($0.lsn, 0xABCD) }
        assertMalformed { try applyEngine([2] + be32(1) + be32(5) + [1], to: &page, key: key) }
        assertMalformed { try applyEngine([2] + be32(1) + be32(32_677) + [4], to: &page, key: key) }
        // Truncate the heap to 32672 + 10 blocks: byte 2 keeps its low 4 bits, bytes 3... are zeroed.
        try applyEngine([5] + be32(32_682), to: &page, key: key)
        XCTAssertEqual(page[24], 0xFF)
        XCTAssertEqual(page[25], 0xFB)
        XCTAssertEqual(page[26], 0x0C)
        XCTAssertTrue(page[27...].allSatisfy { $0 == 0 })
        withPage(&page) { XCTAssertEqual($0.lsn, 0xABCD) }
        assertMalformed { try applyEngine([5] + be32(10), to: &page, key: key) }
        // A new page is initialised first.
        var fresh = zeroPage()
        try applyEngine([2] + be32(1) + be32(32_672) + [3], to: &fresh, key: key)
        withPage(&fresh) { p in
            XCTAssertEqual(p.lower, 24)
            XCTAssertEqual(p.upper, 8192)
            XCTAssertEqual(p.special, 8192)
            XCTAssertEqual(p.pageSizeVersion, 8196)
        }
        // Not a VM key.
        assertMalformed { try applyEngine([5] + be32(10), to: &page, key: Key(field1: 0, field2: 1663, field3: 5, field4: 16_384, field5: 0, field6: 0)) }
    }

    func testFreeSpaceMapTruncate() throws {
        // Heap block 4069 + 3 is slot 3 of logical leaf page 1, physical block 3.
        let key = Key(field1: 0, field2: 1663, field3: 5, field4: 16_384, field5: 1, field6: 3)
        XCTAssertEqual(PageLayout.fsmLeafPhysicalBlock(logicalPage: 1), 3)
        var page = zeroPage()
        withPage(&page) { $0.initialize(specialSize: 0) }
        let nodes = 28, leaves = nodes + 4095
        for i in 0..<4069 { page[leaves + i] = 0x10 }
        page[leaves + 1] = 0x20
        page[leaves + 5] = 0x30
        withPage(&page) { EngineRecordRedo.rebuildFSMPage($0) }
        XCTAssertEqual(page[nodes], 0x30)
        try applyEngine([6] + be32(4069 + 3), to: &page, key: key)
        XCTAssertEqual(page[nodes], 0x20)
        XCTAssertEqual(Array(page[leaves..<leaves + 4]), [0x10, 0x20, 0x10, 0])
        XCTAssertTrue(page[(leaves + 3)...].allSatisfy { $0 == 0 })
        // Inner node for leaves 0 and 1 (leaf 0 is node 4095, whose parent is 2047).
        XCTAssertEqual(page[nodes + 2047], 0x20)
        assertMalformed { try applyEngine([6] + be32(3), to: &page, key: key) }
    }

    func testMultixactOffsetsAndMembers() throws {
        var offsets = zeroPage()
        try applyEngine([3] + be32(2) + be32(2049) + be32(77) + be32(2050) + be32(80),
                        to: &offsets, key: KeySpace.slruBlock(.multixactOffsets, segment: 0, block: 1))
        XCTAssertEqual(Array(offsets[4..<12]), le32(77) + le32(80))
        assertMalformed {
            try applyEngine([3] + be32(1) + be32(5) + be32(77), to: &offsets, key: KeySpace.slruBlock(.multixactOffsets, segment: 0, block: 1))
        }
        var members = zeroPage()
        // Offsets 1637 and 1638 are members 1 and 2 of group 0 of members page 1.
        try applyEngine([4] + be32(2) + be32(1637) + be32(1000) + [2] + be32(1638) + be32(1001) + [5],
                        to: &members, key: KeySpace.slruBlock(.multixactMembers, segment: 0, block: 1))
        XCTAssertEqual(Array(members[0..<4]), [0, 2, 5, 0])
        XCTAssertEqual(Array(members[8..<16]), le32(1000) + le32(1001))
        assertMalformed {
            try applyEngine([4] + be32(1) + be32(1637) + be32(1000) + [6], to: &members, key: KeySpace.slruBlock(.multixactMembers, segment: 0, block: 1))
        }
        assertMalformed {
            try applyEngine([4] + be32(1) + be32(1) + be32(1000) + [1], to: &members, key: KeySpace.slruBlock(.multixactMembers, segment: 0, block: 1))
        }
        // Segment 1, block 0 is page 32.
        var far = zeroPage()
        try applyEngine([3] + be32(1) + be32(32 * 2048 + 3) + be32(9), to: &far, key: KeySpace.slruBlock(.multixactOffsets, segment: 1, block: 0))
        XCTAssertEqual(Array(far[12..<16]), le32(9))
    }

    // MARK: WAL records

    /// A WAL record with one block reference (no image) and optional main data.
    private func walRecord(rmid: UInt8, info: UInt8, forkFlags: UInt8 = 0, block: UInt32 = 0,
                           blockData: [UInt8] = [], mainData: [UInt8] = []) -> [UInt8] {
        var headers: [UInt8] = [0, forkFlags | (blockData.isEmpty ? 0 : 0x20)] + le16(blockData.count)
        headers += le32(1663) + le32(5) + le32(16_384) + le32(block)
        if !mainData.isEmpty {
            headers += mainData.count < 256 ? [255, UInt8(mainData.count)] : [254] + le32(UInt32(mainData.count))
        }
        let total = 24 + headers.count + blockData.count + mainData.count
        var out = le32(UInt32(total)) + le32(0) + [UInt8](repeating: 0, count: 8) + [info, rmid, 0, 0] + le32(0)
        out += headers + blockData + mainData
        return out
    }

    private let relKey = Key(field1: 0, field2: 1663, field3: 5, field4: 16_384, field5: 0, field6: 0)

    func testSequenceLogRebuildsPage() throws {
        let tuple = (0..<41).map { UInt8($0 + 1) }
        let record = walRecord(rmid: 15, info: 0x00, forkFlags: 0x40, mainData: le32(1663) + le32(5) + le32(16_384) + tuple)
        var old = zeroPage()
        for i in 0..<Page.size { old[i] = 0xEE }
        var out = try PostgresRedo().reconstruct(key: relKey, lsn: LSN(0x2000), base: (LSN(0x1000), old),
                                                 records: [RedoRecord(lsn: LSN(0x2000), value: .walRecord(record, willInit: true))])
        withPage(&out) { p in
            XCTAssertEqual(p.lsn, 0x2000)
            XCTAssertEqual(p.lower, 28)
            XCTAssertEqual(p.special, 8184)
            XCTAssertEqual(p.upper, 8184 - 48)
            XCTAssertEqual(p.u32(8184), 0x1717)
            XCTAssertEqual(p.itemId(1), ItemId.normal(offset: 8184 - 48, length: 41))
        }
        XCTAssertEqual(Array(out[(8184 - 48)..<(8184 - 7)]), tuple)
        XCTAssertTrue(out[28..<(8184 - 48)].allSatisfy { $0 == 0 })
        XCTAssertTrue(out[(8184 - 7)..<8184].allSatisfy { $0 == 0 })
        // Masking leaves header fields and tuple, and hides the LSN.
        withPage(&out) { XCTAssertTrue(PageMasking.mask($0, resourceManager: .sequence, blockNumber: 0)); XCTAssertEqual($0.lsn, 0) }
    }

    func testGenericDeltaApply() throws {
        var base = zeroPage()
        withPage(&base) { $0.initialize(specialSize: 8) }
        for i in 24..<8184 { base[i] = 0x55 }
        // Fragments: pd_lower := 32, pd_upper := 8000; 4 bytes at 8000; 2 bytes at the special space.
        let delta = le16(12) + le16(4) + le16(32) + le16(8000)
            + le16(8000) + le16(4) + [1, 2, 3, 4]
            + le16(8190) + le16(2) + [9, 9]
        let record = walRecord(rmid: 20, info: 0x00, blockData: delta)
        var out = try PostgresRedo().reconstruct(key: relKey, lsn: LSN(0x3000), base: (LSN(0x1000), base),
                                                 records: [RedoRecord(lsn: LSN(0x3000), value: .walRecord(record))])
        withPage(&out) { p in
            XCTAssertEqual(p.lsn, 0x3000)
            XCTAssertEqual(p.lower, 32)
            XCTAssertEqual(p.upper, 8000)
        }
        XCTAssertTrue(out[24..<32].allSatisfy { $0 == 0x55 })
        XCTAssertTrue(out[32..<8000].allSatisfy { $0 == 0 })
        XCTAssertEqual(Array(out[8000..<8006]), [1, 2, 3, 4, 0x55, 0x55])
        XCTAssertEqual(Array(out[8188..<8192]), [0, 0, 9, 9])

        // Fragments past the data or the page are malformed.
        for bad in [le16(8190) + le16(4) + [1, 2, 3, 4], le16(100) + le16(5) + [1, 2], [1, 2, 3]] {
            var page = base
            try withPage(&page) { p in
                try bad.withUnsafeBytes { raw in
                    XCTAssertThrowsError(try GenericRedo.applyDelta(raw, to: p)) { XCTAssertEqual(($0 as? RedoError)?.code, .malformedRecord) }
                }
            }
        }
    }

    func testXLogRecords() throws {
        // FPI_FOR_HINT without an image: PostgreSQL leaves the page as it is.
        var base = zeroPage()
        withPage(&base) { $0.initialize(specialSize: 0); $0.lsn = 0x100 }
        let hint = walRecord(rmid: 0, info: 0xA0)
        let out = try PostgresRedo().reconstruct(key: relKey, lsn: LSN(0x4000), base: (LSN(0x100), base),
                                                 records: [RedoRecord(lsn: LSN(0x4000), value: .walRecord(hint))])
        XCTAssertEqual(out, base)
        // Any other XLOG record with a block reference and no image is refused, by name.
        for (info, name) in [(UInt8(0x20), "NOOP"), (0xB0, "FPI")] {
            XCTAssertThrowsError(try PostgresRedo().reconstruct(key: relKey, lsn: LSN(0x4000), base: (LSN(0x100), base),
                                                                records: [RedoRecord(lsn: LSN(0x4000), value: .walRecord(walRecord(rmid: 0, info: info)))])) {
                XCTAssertTrue("\($0)".contains(name), "\($0)")
            }
        }
    }

    // MARK: Names

    func testRecordTypeNames() {
        XCTAssertEqual(RecordTypeNames.name(.heap, info: 0x00), "INSERT")
        XCTAssertEqual(RecordTypeNames.name(.heap, info: 0x80), "INSERT+INIT")
        XCTAssertEqual(RecordTypeNames.name(.heap, info: 0xC0), "HOT_UPDATE+INIT")
        XCTAssertEqual(RecordTypeNames.name(.heap, info: 0x90), "UNKNOWN (0x90)")
        XCTAssertEqual(RecordTypeNames.name(.heap2, info: 0xD0), "MULTI_INSERT+INIT")
        XCTAssertEqual(RecordTypeNames.name(.hash, info: 0x20), "INSERT")
        XCTAssertEqual(RecordTypeNames.name(.btree, info: 0x02), "INSERT_LEAF")
        XCTAssertEqual(RecordTypeNames.name(.transaction, info: 0x80), "COMMIT")
        XCTAssertEqual(RecordTypeNames.name(.transaction, info: 0xE0), "INVALIDATION")
        XCTAssertEqual(RecordTypeNames.name(.xlog, info: 0xB0), "FPI")
        XCTAssertEqual(RecordTypeNames.name(.xlog, info: 0xC0), "UNKNOWN (0xc0)")
        XCTAssertEqual(RecordTypeNames.name(.generic, info: 0x00), "Generic")
        XCTAssertEqual(RecordTypeNames.name(.brin, info: 0x90), "INSERT+INIT")
        XCTAssertEqual(RecordTypeNames.name(.gin, info: 0x90), "VACUUM_DATA_LEAF_PAGE")
        XCTAssertEqual(RecordTypeNames.name(.commitTs, info: 0x10), "TRUNCATE")
        XCTAssertEqual(RecordTypeNames.name(.sequence, info: 0x00), "LOG")
        XCTAssertEqual(RecordTypeNames.name(.logicalMessage, info: 0x00), "MESSAGE")
        XCTAssertEqual(RecordTypeNames.name(ResourceManagerId(130), info: 0x10), "UNKNOWN (0x10)")
    }
}
