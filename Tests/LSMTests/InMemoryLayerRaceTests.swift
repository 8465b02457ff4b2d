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
        var out: [(LSN, Value)] = []
        XCTAssertTrue(layer.collect(key, floor: nil, ceiling: .max, into: &out), "the image starts the chain")
        XCTAssertEqual(out.map(\.0), [LSN(16), LSN(8)])
        XCTAssertEqual(layer.endLSN, LSN(17))
    }
}
