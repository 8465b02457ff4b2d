import XCTest
@testable import PostgresRedo

/// Unit tests of the bufpage.c operations on synthetic pages.
final class PageOperationsTests: XCTestCase {
    private func withPage(_ body: (Page) throws -> Void) rethrows {
        var bytes = [UInt8](repeating: 0, count: Page.size)
        try bytes.withUnsafeMutableBytes { try body(Page($0.baseAddress!)) }
    }

    func testAddDeleteAndCompact() throws {
        try withPage { page in
            page.initialize(specialSize: 16)
            XCTAssertEqual(page.lower, 24)
            XCTAssertEqual(page.upper, 8176)
            for i in 1...5 {
                let item = [UInt8](repeating: UInt8(i), count: 10 + i)
                try item.withUnsafeBytes { _ = try page.addItem($0, at: 0) }
            }
            XCTAssertEqual(page.maxOffset, 5)
            XCTAssertEqual(page.itemId(1).offset, 8176 - 16)
            XCTAssertEqual(page.itemId(1).length, 11)
            try page.indexTupleDelete(2)
            XCTAssertEqual(page.maxOffset, 4)
            // Items keep their bytes after the shift.
            XCTAssertEqual(page.item(2).load(as: UInt8.self), 3)
            XCTAssertEqual(page.itemId(2).length, 13)
            let offsets: [UInt16] = [1, 3, 4]
            try offsets.withUnsafeBufferPointer { try page.indexMultiDelete($0) }
            XCTAssertEqual(page.maxOffset, 1)
            XCTAssertEqual(page.item(1).load(as: UInt8.self), 3)
            XCTAssertEqual(page.itemId(1).offset, 8176 - 16)
            XCTAssertEqual(page.upper, 8176 - 16)
        }
    }

    func testRepairFragmentationKeepsLinePointerOrder() throws {
        try withPage { page in
            page.initialize(specialSize: 0)
            for i in 1...4 {
                let item = [UInt8](repeating: UInt8(i), count: 24)
                try item.withUnsafeBytes { _ = try page.addItem($0, at: 0, isHeap: true) }
            }
            page.setItemId(2, .dead)
            page.setItemId(4, .unused)
            try page.repairFragmentation()
            XCTAssertEqual(page.maxOffset, 3, "trailing unused pointer dropped")
            XCTAssertEqual(page.itemId(1).offset, 8192 - 24)
            XCTAssertEqual(page.itemId(3).offset, 8192 - 48)
            XCTAssertEqual(page.item(3).load(as: UInt8.self), 3)
            XCTAssertFalse(page.hasFreeLinePointers)
        }
    }
}
