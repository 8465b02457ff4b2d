@testable import LSM
import XCTest

/// The split of page memory between materialized pages and data blocks: ghost lists, capacities
/// changed while running, and the rule that moves the split.
final class PageMemoryBalanceTests: XCTestCase {
    private func key(_ n: Int) -> Key { Key(field1: 0, field2: 1663, field3: 5, field4: 16384, field5: 0, field6: UInt32(n)) }

    func testGhostListForgetsTheOldestBeyondItsBytes() {
        var ghost = GhostList()
        for h in 0..<10 { ghost.add(UInt64(h), charge: 100, limit: 500) }
        XCTAssertEqual(ghost.count, 5)
        XCTAssertEqual(ghost.heldBytes, 500)
        XCTAssertFalse(ghost.take(4), "aged out: only the newest 500 bytes are remembered")
        XCTAssertTrue(ghost.take(5))
        XCTAssertFalse(ghost.take(5), "a taken hash is forgotten")
        XCTAssertEqual(ghost.heldBytes, 400)
        // Re-adding a hash moves it to the front: its older copy in the order does not age it out.
        ghost.add(6, charge: 100, limit: 500)
        for h in 20..<24 { ghost.add(UInt64(h), charge: 100, limit: 500) }
        XCTAssertTrue(ghost.take(6), "the re-added hash is younger than 20...23's predecessors")
        XCTAssertFalse(ghost.take(7))
        // Many adds and takes: the order does not grow without bound, the bytes stay within the limit.
        for h in 1000..<101_000 {
            ghost.add(UInt64(h), charge: 10, limit: 1000)
            if h % 2 == 0 { _ = ghost.take(UInt64(h)) }
            XCTAssertLessThanOrEqual(ghost.heldBytes, 1000)
        }
        XCTAssertLessThanOrEqual(ghost.count, 100)
    }

    func testBlockCacheCountsMissesOnRecentlyEvictedBlocksAndShrinksOnRequest() {
        let loan = CacheLoan()
        let block = [UInt8](repeating: 7, count: 4096 - 64)  // charged 4096 bytes
        let cache = BlockCache(capacityBytes: 64 * 4096, minimumShardBytes: 1 << 30, borrowing: loan, ghostBytes: 16 * 4096)
        func k(_ n: Int) -> BlockCache.CacheKey { BlockCache.CacheKey(fileId: 1, offset: UInt64(n) * 4096) }
        for n in 0..<64 { cache.insert(k(n), block) }
        XCTAssertEqual(cache.takeGhostHits(), 0)
        for n in 64..<80 { cache.insert(k(n), block) }  // 16 evicted: 0...15, none referenced
        XCTAssertNil(cache.get(k(3)))
        XCTAssertNil(cache.get(k(1000)))
        XCTAssertEqual(cache.takeGhostHits(), 1, "a miss on an evicted block is a ghost hit; an unknown one is not")
        XCTAssertEqual(cache.takeGhostHits(), 0, "taken")
        // A lower capacity evicts at once, and the borrower's loan falls with it.
        XCTAssertEqual(loan.borrowedBytes, 64 * 4096)
        cache.setCapacity(16 * 4096)
        XCTAssertEqual(cache.capacityBytes, 16 * 4096)
        XCTAssertLessThanOrEqual(cache.usedBytes, 16 * 4096)
        XCTAssertEqual(loan.borrowedBytes, cache.usedBytes)
        for n in 100..<200 { cache.insert(k(n), block) }
        XCTAssertLessThanOrEqual(cache.usedBytes, 16 * 4096)
        cache.setCapacity(64 * 4096)
        for n in 200..<300 { cache.insert(k(n), block) }
        XCTAssertEqual(cache.usedBytes, 64 * 4096, "a higher capacity is used")
    }

    func testMaterializedCacheCountsGhostHitsAndShrinksOnRequest() {
        let loan = CacheLoan()
        let perEntry = 1 + MaterializedPageCache.entryOverhead
        let cache = MaterializedPageCache(capacityBytes: 256 * perEntry, borrowing: loan, ghostBytes: 64 * perEntry)
        for n in 0..<256 { cache.insert(1, key(n), at: LSN(0x100), [1]) }
        for n in 256..<288 { cache.insert(1, key(n), at: LSN(0x100), [2]) }
        let evicted = (0..<256).filter { cache.lookup(1, key($0), at: LSN(0x100)) == nil }
        XCTAssertEqual(evicted.count, 32)
        XCTAssertEqual(cache.takeGhostHits(), 32, "each evicted key, looked up again, is a ghost hit")
        XCTAssertNil(cache.lookup(1, key(evicted[0]), at: LSN(0x100)))
        XCTAssertEqual(cache.takeGhostHits(), 0, "a ghost hit forgets the key")
        cache.setCapacity(128 * perEntry)
        XCTAssertEqual(cache.capacityBytes, 128 * perEntry)
        XCTAssertLessThanOrEqual(cache.usedBytes, 128 * perEntry)
        XCTAssertEqual(loan.borrowedBytes, cache.usedBytes)
        cache.setCapacity(1 << 40)
        XCTAssertEqual(cache.capacityBytes, 256 * perEntry, "never above the capacity it was made with")
    }

    /// An evicted image's ghost hit is told apart from a rebuilt page's (they save different costs).
    func testGhostHitsOfImagesAndRebuiltPagesCountApart() {
        let perEntry = 1 + MaterializedPageCache.entryOverhead
        let cache = MaterializedPageCache(capacityBytes: 64 * perEntry, ghostBytes: 256 * perEntry)
        XCTAssertTrue(cache.hasRoom(1, key(0)), "empty: room to spare")
        for n in 0..<64 { cache.insert(1, key(n), at: LSN(0x100), [1], records: n % 2 == 0 ? 0 : 3) }
        for n in 64..<192 { cache.insert(1, key(n), at: LSN(0x100), [1], records: 1) }
        XCTAssertFalse(cache.hasRoom(1, key(0)), "full")
        let evicted = (0..<64).filter { cache.lookup(1, key($0), at: LSN(0x100)) == nil }
        XCTAssertEqual(evicted.count, 64, "three times the capacity of newer entries went in")
        let ghosts = cache.takeGhostHitsByKind()
        XCTAssertEqual(ghosts.images, 32)
        XCTAssertEqual(ghosts.rebuilt, 32)
    }

    /// Pages read as images are remembered, and a remembered page is a correct base for later reads: at the same LSN, above it once new records came (they are applied on top), and
    /// below it (the entry is ignored there).
    func testPagesReadFromAnImageLayerAreRememberedAndStayExact() throws {
        let dir = makeTempDir("balance-images")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = StoreConfig()
        config.backgroundFlush = false
        let context = StorageContext(io: PreadEngine(), dataCacheBytes: 16 << 20)
        let store = try TimelineStore.open(directory: dir, config: config, context: context)
        var rng = SeededRandom(seed: 11)
        var pages: [[UInt8]] = []
        for b in 0..<32 {
            var page = [UInt8](repeating: 0, count: 8192)
            for i in stride(from: 0, to: 8192, by: 64) { page[i] = UInt8(truncatingIfNeeded: rng.next()) }
            pages.append(page)
            try store.put(relKey(rel: 16384, block: UInt32(b)), LSN(0x100), .image(page))
        }
        store.advance(to: LSN(0x100))
        try store.checkpoint()
        for b in 0..<32 { try store.put(relKey(rel: 16384, block: UInt32(b)), LSN(0x200), .walRecord([0xAA])) }
        store.advance(to: LSN(0x200))
        try store.checkpoint()
        XCTAssertGreaterThan(try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 1, at: LSN(0x180)).layersCreated, 0)
        let hitsBefore = context.materialized.hits
        for _ in 0..<2 {
            for b in 0..<32 { XCTAssertEqual(try store.get(relKey(rel: 16384, block: UInt32(b)), at: LSN(0x180), redo: AppendRedo()), pages[b]) }
        }
        XCTAssertGreaterThan(context.materialized.inserts, 0)
        XCTAssertGreaterThanOrEqual(context.materialized.hits - hitsBefore, 32, "the pages were remembered and found again")
        // Above the entries: the record at 0x200 is applied to them.
        for b in 0..<32 {
            let want = try AppendRedo().reconstruct(key: relKey(rel: 16384, block: UInt32(b)), lsn: LSN(0x200), base: (LSN(0x100), pages[b]),
                                                    records: [RedoRecord(lsn: LSN(0x200), value: .walRecord([0xAA]))])
            XCTAssertEqual(try store.get(relKey(rel: 16384, block: UInt32(b)), at: LSN(0x200), redo: AppendRedo()), want)
            XCTAssertEqual(try store.get(relKey(rel: 16384, block: UInt32(b)), at: LSN(0x100), redo: AppendRedo()), pages[b])
        }
        store.close()
    }

    /// Driven by hand: the costs are set, then ghost hits are made on one side at a time. The
    /// blocks' ghost hits, worth more, take room from the pages down to the floor; the pages' ghost
    /// hits, worth more, take it back. The compressed tier leaves room for what the pages hold.
    func testTheSplitFollowsWhatMoreRoomWouldHaveSaved() {
        let budget = 64 << 20
        let context = StorageContext(io: PreadEngine(), dataCacheBytes: budget, compressedCacheFraction: 0.5)
        let balance = context.balance
        let materialized = context.materialized
        let decoded = context.dataCache
        XCTAssertEqual(materialized.capacityBytes, budget - budget / 8, "starts at the most it may take")
        XCTAssertEqual(context.compressedDataCache.capacityBytes, budget / 2)

        // A hit costs 5 us, a rebuild 50 us, a block miss 500 us.
        balance.noteLookups(hits: 1, rebuilds: 0, plain: 0, nanos: 5_000)
        balance.noteLookups(hits: 0, rebuilds: 1, plain: 0, nanos: 50_000)
        balance.noteBlockMisses(1, nanos: 500_000)
        var round: UInt64 = 0
        for _ in 0..<40 {
            round += 1
            let hits = makeBlockGhostHits(decoded, file: round)
            XCTAssertGreaterThanOrEqual(hits, PageMemoryBalance.minimumGhostHits)
            balance.rebalance()
        }
        XCTAssertEqual(materialized.capacityBytes, budget / 16, "moved to the floor and no further")
        XCTAssertLessThanOrEqual(context.compressedDataCache.capacityBytes, budget / 2)

        // Now a block miss costs next to nothing: the pages' ghost hits win.
        balance.noteBlockMisses(1, nanos: 1)
        for _ in 0..<10 { balance.noteBlockMisses(1, nanos: 1) }
        var next = 0
        for _ in 0..<4 {
            _ = decoded.takeGhostHits()
            let hits = makeMaterializedGhostHits(materialized, next: &next)
            XCTAssertGreaterThanOrEqual(hits, PageMemoryBalance.minimumGhostHits)
            balance.rebalance()
        }
        XCTAssertEqual(materialized.capacityBytes, budget / 16 + 4 * (budget / 32))
        XCTAssertLessThanOrEqual(materialized.usedBytes, materialized.capacityBytes)
        XCTAssertEqual(context.compressedDataCache.capacityBytes,
                       min(budget / 2, budget - budget / 8 - min(materialized.capacityBytes, materialized.usedBytes)))
        XCTAssertEqual(balance.moveCount, 26 + 4)
    }

    /// Fills the decoded tier past its budget with 8 KiB blocks of file `file`, then reads them all
    /// again: the recently evicted ones are ghost hits (left counted for the rebalance; returned).
    private func makeBlockGhostHits(_ decoded: BlockCache, file: UInt64) -> Int {
        let block = [UInt8](repeating: 1, count: 8192)
        let count = decoded.capacityBytes / 8192 * 5 / 4
        for m in 0..<count { decoded.insert(BlockCache.CacheKey(fileId: file, offset: UInt64(m) << 13), block) }
        for m in 0..<count { _ = decoded.get(BlockCache.CacheKey(fileId: file, offset: UInt64(m) << 13)) }
        return decoded.pendingGhostHits
    }

    /// Inserts incompressible pages past the materialized capacity, then looks them all up again:
    /// the recently evicted ones are ghost hits (left counted for the rebalance; returned).
    private func makeMaterializedGhostHits(_ cache: MaterializedPageCache, next: inout Int) -> Int {
        let start = next
        let count = cache.capacityBytes / (8192 + MaterializedPageCache.entryOverhead) * 2
        var rng = SeededRandom(seed: UInt64(start) + 1)
        for _ in 0..<count {
            var words = [UInt64](repeating: 0, count: 1024)
            for i in words.indices { words[i] = rng.next() }
            cache.insert(1, key(next), at: LSN(0x100), words.withUnsafeBytes { Array($0) })
            next += 1
        }
        for n in start..<next { _ = cache.lookup(1, key(n), at: LSN(0x100)) }
        return cache.pendingGhostHits
    }
}
