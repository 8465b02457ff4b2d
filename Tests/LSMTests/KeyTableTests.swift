import XCTest
import PGTestSupport
@testable import LSM

/// `KeyTable` against a Dictionary over random keys, through several growths.
final class KeyTableTests: XCTestCase {
    func testMatchesDictionaryThroughGrowth() {
        let seed = testSeed("KeyTableTests")
        var rng = SeededRandom(seed: seed)
        var table = KeyTable(minimumCapacity: 16)
        var reference: [Key: Int32] = [:]
        for i in 0..<50_000 {
            // Clustered keys (a few relations, nearby blocks), as ingest produces them, plus some
            // keys of other kinds.
            let key = rng.next() % 10 == 0
                ? Key(field1: UInt8(rng.next() % 3), field2: UInt32(truncatingIfNeeded: rng.next()), field3: 1, field4: 0, field5: 0, field6: UInt32(rng.next() % 100))
                : Key.relationBlock(spc: 1663, db: 5, rel: 16384 + UInt32(rng.next() % 4), fork: UInt8(rng.next() % 3), block: UInt32(rng.next() % 20_000))
            let slot = table.slotForInsertion(key)
            XCTAssertEqual(table.value(at: slot), reference[key] ?? -1, "seed \(seed), put \(i)")
            table.set(key, at: slot, to: Int32(i))
            reference[key] = Int32(i)
            XCTAssertLessThanOrEqual(table.count * 2, table.capacity)
        }
        XCTAssertEqual(table.count, reference.count)
        for (key, value) in reference { XCTAssertEqual(table.value(for: key), value, "seed \(seed)") }
        XCTAssertNil(table.value(for: Key.relationBlock(spc: 9, db: 9, rel: 9, fork: 9, block: 9)))
        var seen = 0
        table.forEach { key, value in
            seen += 1
            XCTAssertEqual(reference[key], value, "seed \(seed)")
        }
        XCTAssertEqual(seen, reference.count)
    }
}
