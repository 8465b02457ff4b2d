import Foundation
@testable import LSM
import XCTest

/// A read of the open in-memory layer that races with its freeze must still see every value put
/// before the read began (the freeze moves the values from the live index to the frozen contents).
final class InMemoryLayerRaceTests: XCTestCase {
    func testCollectThatRacesAFreezeStillSeesTheValues() throws {
        let key = relKey(rel: 16384, block: 7)
        let layer = InMemoryLayer(startLSN: LSN(1))
        try layer.put(key, LSN(8), .image([UInt8](repeating: 1, count: 64)))
        try layer.put(key, LSN(16), .walRecord([2, 3]))
        // The freeze lands exactly between collect's check for frozen contents and its read.
        InMemoryLayer.betweenFrozenCheckAndLiveRead = { $0.freeze(endLSN: LSN(17)) }
        defer { InMemoryLayer.betweenFrozenCheckAndLiveRead = nil }
        var out: [RedoRecord] = []
        XCTAssertTrue(layer.collect(key, floor: nil, ceiling: .max, into: &out), "the image starts the chain")
        XCTAssertEqual(out.map(\.lsn), [LSN(16), LSN(8)])
        XCTAssertEqual(layer.endLSN, LSN(17))
    }
}

/// The arena page supply hands out empty, pre-faulted 1 MiB arrays, and the layer reads back what
/// it wrote into them.
final class ArenaPageSupplyTests: XCTestCase {
    func testSuppliedPagesAreEmptyAndHoldValues() throws {
        _ = ArenaPageSupply.shared.take()  // starts the supply thread
        var page: [UInt8]?
        for _ in 0..<500 where page == nil {
            page = ArenaPageSupply.shared.take()
            if page == nil { usleep(10_000) }
        }
        let supplied = try XCTUnwrap(page, "the supply thread made no page within 5 s")
        XCTAssertEqual(supplied.count, 0)
        XCTAssertGreaterThanOrEqual(supplied.capacity, InMemoryLayer.pageBytes)

        let layer = InMemoryLayer(startLSN: LSN(1))
        var lsn: UInt64 = 8
        var expected: [Key: [UInt8]] = [:]
        for block in 0..<300 {  // 2.4 MiB: three arena pages
            let key = relKey(rel: 16384, block: UInt32(block))
            let bytes = (0..<8192).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ block) }
            try layer.put(key, LSN(lsn), .image(bytes))
            expected[key] = bytes
            lsn += 8
        }
        for (key, bytes) in expected {
            var out: [RedoRecord] = []
            XCTAssertTrue(layer.collect(key, floor: nil, ceiling: .max, into: &out))
            XCTAssertEqual(out.first?.value.bytes, bytes, "key \(key)")
        }
    }
}
