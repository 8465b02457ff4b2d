@testable import LSM
import XCTest

/// The materialized page cache on its own: which entry a lookup finds, and the cost-weighted CLOCK.
final class MaterializedPageCacheTests: XCTestCase {
    private func key(_ n: Int) -> Key { Key(field1: 0, field2: 1663, field3: 5, field4: 16384, field5: 0, field6: UInt32(n)) }

    func testLookupFindsTheNewestEntryAtOrBelowTheLSN() {
        let cache = MaterializedPageCache(capacity: 1024)
        cache.insert(1, key(1), at: LSN(0x200), [1])
        XCTAssertNil(cache.lookup(1, key(1), at: LSN(0x1FF)), "an entry above the read LSN is not a base for it")
        XCTAssertEqual(cache.lookup(1, key(1), at: LSN(0x200))?.bytes, [1])
        cache.insert(1, key(1), at: LSN(0x300), [2])
        XCTAssertEqual(cache.lookup(1, key(1), at: LSN(0x400))?.lsn, LSN(0x300))
        cache.insert(1, key(1), at: LSN(0x250), [3])
        XCTAssertEqual(cache.lookup(1, key(1), at: LSN(0x400))?.bytes, [2], "an entry is replaced only by a newer one")
        XCTAssertNil(cache.lookup(2, key(1), at: LSN(0x400)), "entries belong to one store")
    }

    func testCostLevels() {
        XCTAssertEqual(MaterializedPageCache.level(records: 0), 1)
        XCTAssertEqual(MaterializedPageCache.level(records: 1), 1)
        XCTAssertEqual(MaterializedPageCache.level(records: 3), 2)
        XCTAssertEqual(MaterializedPageCache.level(records: 10_000), 14)
        XCTAssertEqual(MaterializedPageCache.level(records: 1 << 40), 15)
    }

    /// A page rebuilt from 10,000 records outlives pages rebuilt from one record that came after it;
    /// one rebuilt from one record that came before them is gone.
    func testExpensiveEntriesOutliveCheapOnes() {
        let capacity = 256  // 16 shards of 16 entries
        let cache = MaterializedPageCache(capacity: capacity)
        cache.insert(1, key(0), at: LSN(0x100), [0], records: 10_000)
        cache.insert(1, key(1), at: LSN(0x100), [1], records: 1)
        // Three times the capacity of cheap entries: about 48 evictions a shard, while the expensive
        // entry survives 14 passes of its shard's hand (about 14 x 16 evictions).
        for n in 2..<(2 + 3 * capacity) { cache.insert(1, key(n), at: LSN(0x100), [UInt8(truncatingIfNeeded: n)], records: 1) }
        XCTAssertEqual(cache.lookup(1, key(0), at: LSN(0x100))?.bytes, [0], "the expensive entry survived")
        XCTAssertNil(cache.lookup(1, key(1), at: LSN(0x100)), "the cheap entry of the same age was evicted")
        // Bounded: at most `capacity` entries are held.
        let held = (0..<(2 + 3 * capacity)).filter { cache.lookup(1, key($0), at: LSN(0x100)) != nil }.count
        XCTAssertLessThanOrEqual(held, capacity)
    }
}
