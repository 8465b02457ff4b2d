@testable import LSM
import XCTest

/// The materialized page cache on its own: which entry a lookup finds, the cost-weighted CLOCK, the
/// compressed entries and the bytes charged to the data cache's budget.
final class MaterializedPageCacheTests: XCTestCase {
    private func key(_ n: Int) -> Key { Key(field1: 0, field2: 1663, field3: 5, field4: 16384, field5: 0, field6: UInt32(n)) }

    func testLookupFindsTheNewestEntryAtOrBelowTheLSN() {
        let cache = MaterializedPageCache(capacityBytes: 1024 * 8192)
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
        // One shard of 256 one-byte entries (each charged 1 + entryOverhead bytes).
        let perEntry = 1 + MaterializedPageCache.entryOverhead
        let capacity = 256
        let cache = MaterializedPageCache(capacityBytes: capacity * perEntry)
        cache.insert(1, key(0), at: LSN(0x100), [0], records: 10_000)
        cache.insert(1, key(1), at: LSN(0x100), [1], records: 1)
        // Three times the capacity of cheap entries: about three passes of the hand, while the
        // expensive entry survives 14.
        for n in 2..<(2 + 3 * capacity) { cache.insert(1, key(n), at: LSN(0x100), [UInt8(truncatingIfNeeded: n)], records: 1) }
        XCTAssertEqual(cache.lookup(1, key(0), at: LSN(0x100))?.bytes, [0], "the expensive entry survived")
        XCTAssertNil(cache.lookup(1, key(1), at: LSN(0x100)), "the cheap entry of the same age was evicted")
        // Bounded: at most `capacity` entries are held.
        let held = (0..<(2 + 3 * capacity)).filter { cache.lookup(1, key($0), at: LSN(0x100)) != nil }.count
        XCTAssertLessThanOrEqual(held, capacity)
        XCTAssertLessThanOrEqual(cache.usedBytes, capacity * perEntry)
    }

    /// Pages are held as they are while the cache has room; when it must make room, the sweep
    /// compresses the pages that compress (several in one page's bytes) before it evicts any, and
    /// every page still comes back byte for byte. Seeded random pages: print the seed.
    func testPagesAreCompressedBeforeAnyIsEvictedAndComeBackExactly() {
        let seed = testSeed("MaterializedPageCacheTests.exact")
        var rng = SeededRandom(seed: seed)
        // One shard (under 2 x 32 pages of capacity), room for 60 pages as they are: 24 are held as
        // they are (under half of it).
        let pageCharge = 8192 + MaterializedPageCache.entryOverhead
        let cache = MaterializedPageCache(capacityBytes: 60 * pageCharge)
        var pages: [[UInt8]] = []
        for n in 0..<24 {
            var page = [UInt8](repeating: 0x20, count: 8192)  // a heap page of short rows: mostly blanks
            if n % 2 == 0 {
                for i in stride(from: 0, to: 8192, by: 121) { for j in 0..<12 where i + j < 8192 { page[i + j] = UInt8(truncatingIfNeeded: rng.next()) } }
            } else {
                for i in page.indices { page[i] = UInt8(truncatingIfNeeded: rng.next()) }  // does not compress
            }
            pages.append(page)
            cache.insert(1, key(n), at: LSN(0x100), page, records: 2)
        }
        XCTAssertEqual(cache.usedBytes, 24 * pageCharge, "held as they are while there is room")
        for (n, page) in pages.enumerated() {
            XCTAssertEqual(cache.lookup(1, key(n), at: LSN(0x100))?.bytes, page, "page \(n), seed \(seed)")
        }
        // Room for the 12 random pages as they are and the 12 others in a quarter of their size.
        let tight = 12 * pageCharge + 12 * (2048 + MaterializedPageCache.entryOverhead)
        cache.setCapacity(tight)
        XCTAssertLessThanOrEqual(cache.usedBytes, tight, "seed \(seed)")
        for (n, page) in pages.enumerated() {
            XCTAssertEqual(cache.lookup(1, key(n), at: LSN(0x100))?.bytes, page, "page \(n) after compression, seed \(seed)")
        }
        // A full shard compresses what comes in, and each page inserted into it comes back.
        var more: [[UInt8]] = []
        for n in 24..<34 {
            var page = [UInt8](repeating: 0x20, count: 8192)
            for i in stride(from: 0, to: 8192, by: 121) { page[i] = UInt8(truncatingIfNeeded: rng.next()) }
            more.append(page)
            cache.insert(1, key(n), at: LSN(0x100), page, records: 2)
        }
        for (i, page) in more.enumerated() {
            XCTAssertEqual(cache.lookup(1, key(24 + i), at: LSN(0x100))?.bytes, page, "page \(24 + i), seed \(seed)")
        }
    }

    /// The cache's bytes are charged to the data cache's loan as they come and go, and the decoded
    /// data blocks then have that much less room.
    func testBytesAreChargedToTheLoan() {
        let loan = CacheLoan()
        let pageBytes = 8192 + MaterializedPageCache.entryOverhead
        let cache = MaterializedPageCache(capacityBytes: 16 * 64 * pageBytes, borrowing: loan)
        var rng = SeededRandom(seed: 7)
        func randomPage() -> [UInt8] {
            var words = [UInt64](repeating: 0, count: 1024)
            for i in words.indices { words[i] = rng.next() }
            return words.withUnsafeBytes { Array($0) }
        }
        for n in 0..<100 { cache.insert(1, key(n), at: LSN(0x100), randomPage()) }
        XCTAssertEqual(loan.borrowedBytes, cache.usedBytes)
        XCTAssertEqual(cache.usedBytes, 100 * pageBytes)
        // A newer version replaces the old one: no double charge.
        cache.insert(1, key(0), at: LSN(0x200), randomPage())
        XCTAssertEqual(loan.borrowedBytes, 100 * pageBytes)
        // Evictions give bytes back: far more inserts than fit, and the loan stays within capacity.
        for n in 100..<1500 { cache.insert(1, key(n), at: LSN(0x100), randomPage()) }
        XCTAssertEqual(loan.borrowedBytes, cache.usedBytes)
        XCTAssertLessThanOrEqual(cache.usedBytes, 16 * 64 * pageBytes)

        // The decoded tier lends what the cache holds: with the loan taken, it keeps less.
        let decoded = BlockCache(capacityBytes: 32 * 64 * pageBytes, minimumShardBytes: 1 << 20, lending: loan)
        for n in 0..<2500 { decoded.insert(BlockCache.CacheKey(fileId: 1, offset: UInt64(n) * 8192), randomPage()) }
        XCTAssertLessThanOrEqual(decoded.usedBytes + loan.borrowedBytes, 32 * 64 * pageBytes + 8 * pageBytes)
    }
}
