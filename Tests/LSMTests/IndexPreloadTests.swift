import Foundation
@testable import LSM
import XCTest

/// `StoreConfig.preloadIndexBlocks`: opening a store puts its layer files' index blocks into the index
/// cache, within 3/4 of the cache, so that a lookup that misses every cache reads only its data
/// block; with the setting off, open reads nothing ahead. Reads answer the same either way.
final class IndexPreloadTests: XCTestCase {
    private func config() -> StoreConfig { smallBlockConfig() }

    /// A store of 4 relations x 300 blocks (one layer file per relation, many index blocks each).
    private func makeStore(_ rng: inout SeededRandom) throws -> (dir: String, lsn: LSN, model: Model) {
        try writeRelations("preload", relations: 4, blocks: 300, &rng) { _, _, rng in pageImage(&rng, size: 256) }
    }

    func testOpenPreloadsIndexBlocksAndReadsAnswerTheSame() throws {
        let seed = testSeed("IndexPreloadTests")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for preload in [true, false] {
            var c = config()
            c.preloadIndexBlocks = preload
            let context = StorageContext(io: PreadEngine())
            let store = try TimelineStore.open(directory: dir, config: c, context: context)
            defer { store.close() }
            if preload {
                XCTAssertGreaterThan(context.indexCache.usedBytes, 0, "seed \(seed): open read the index blocks ahead")
            } else {
                XCTAssertEqual(context.indexCache.usedBytes, 0, "seed \(seed): nothing read ahead")
            }
            let missesBefore = context.indexCache.missCount
            for _ in 0..<200 {
                let key = relKey(rel: 16384 + UInt32.random(in: 0..<4, using: &rng), block: UInt32.random(in: 0..<300, using: &rng))
                XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key), preload \(preload)")
            }
            if preload {
                XCTAssertEqual(context.indexCache.missCount, missesBefore, "seed \(seed): every index block came from the cache")
            } else {
                XCTAssertGreaterThan(context.indexCache.missCount, missesBefore, "seed \(seed): index blocks were read on demand")
            }
        }
    }

    func testPreloadStaysWithinThreeQuartersOfTheIndexCache() throws {
        let seed = testSeed("IndexPreloadTests.budget")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Everything preloaded into a large cache: how much the index takes.
        let large = StorageContext(io: PreadEngine())
        let all = try TimelineStore.open(directory: dir, config: config(), context: large)
        let total = large.indexCache.usedBytes
        all.close()
        // A cache whose 3/4 holds about half of it.
        let capacity = total * 2 / 3
        let small = StorageContext(io: PreadEngine(), indexCacheBytes: capacity)
        let store = try TimelineStore.open(directory: dir, config: config(), context: small)
        defer { store.close() }
        XCTAssertGreaterThan(small.indexCache.usedBytes, 0, "seed \(seed)")
        XCTAssertLessThanOrEqual(small.indexCache.usedBytes, capacity / 4 * 3 + 8192, "seed \(seed): preload kept within 3/4 of the cache (one block over at most)")
        for block in stride(from: 0, to: 300, by: 7) {
            let key = relKey(rel: 16387, block: UInt32(block))
            XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key)")
        }
    }
}
