import Foundation
import LSM
import XCTest
@testable import PostgresRedo
@testable import PostgresWAL

/// The verifier's handling of PostgreSQL's clear-before-log ordering on visibility-map pages.
final class RedoVerifierVMTests: XCTestCase {
    let node = RelFileNode(spcNode: 1663, dbNode: 5, relNode: 16384)

    /// An empty page (pd_lower 24, pd_upper 8192) whose first map byte is `bits`.
    func page(bits: UInt8) -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 8192)
        p[12] = 24; p[13] = 0
        p[14] = 0x00; p[15] = 0x20
        p[16] = 0x00; p[17] = 0x20; p[18] = 4
        p[24] = bits
        return p
    }

    func visible(primaryBits: UInt8, at lsn: UInt64) throws -> DecodedRecord {
        try RecordBuilder(rmgr: .heap2, info: 0x40, blocks: [
            .init(id: 0, node: node, fork: .visibilityMap, block: 0, image: page(bits: primaryBits), apply: false),
        ]).build(at: LSN(lsn))
    }

    func heapRecord(block: UInt32, at lsn: UInt64) throws -> DecodedRecord {
        try RecordBuilder(rmgr: .heap, info: 0x20, blocks: [
            .init(id: 0, node: node, block: block, image: page(bits: 0), apply: false),
        ]).build(at: LSN(lsn))
    }

    func verifier(oursBits: UInt8) -> RedoVerifier {
        RedoVerifier { [self] key, _ in key.field5 == ForkNumber.visibilityMap.rawValue ? page(bits: oursBits) : page(bits: 0) }
    }

    func testClearLoggedLaterIsConfirmedByTheHeapRecord() throws {
        // Heap blocks 0 and 1 all-visible in our replay (0x05); the image already lacks block 1 (0x01).
        let v = verifier(oursBits: 0x05)
        v.check(try visible(primaryBits: 0x01, at: 0x1000))
        XCTAssertEqual(v.pendingClearCount, 1)
        XCTAssertEqual(v.totals.mismatched, 0)
        v.check(try heapRecord(block: 7, at: 0x2000))
        XCTAssertEqual(v.pendingClearCount, 1, "a record on another heap block confirms nothing")
        v.check(try heapRecord(block: 1, at: 0x3000))
        XCTAssertEqual(v.pendingClearCount, 0)
        XCTAssertEqual(v.totals.vmClearsAhead, 1)
        XCTAssertEqual(v.totals.mismatched, 0)
    }

    func testUnconfirmedClearBecomesAMismatch() throws {
        let v = verifier(oursBits: 0x05)
        v.pendingClearRecords = 2
        v.check(try visible(primaryBits: 0x01, at: 0x1000))
        v.check(try heapRecord(block: 7, at: 0x2000))
        v.check(try heapRecord(block: 8, at: 0x3000))
        XCTAssertEqual(v.pendingClearCount, 0)
        XCTAssertEqual(v.totals.mismatched, 1)
        XCTAssertTrue(v.mismatches.first?.detail.contains("heap blocks [1]") ?? false, "\(v.mismatches)")
    }

    func testBitsOnlyThePrimaryHasAreAMismatchAtOnce() throws {
        let v = verifier(oursBits: 0x01)
        v.check(try visible(primaryBits: 0x05, at: 0x1000))
        XCTAssertEqual(v.pendingClearCount, 0)
        XCTAssertEqual(v.totals.mismatched, 1)
    }
}
