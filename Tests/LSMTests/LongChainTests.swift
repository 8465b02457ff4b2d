import Foundation
@testable import LSM
import XCTest

/// A page updated thousands of times since its last image (a visibility-map page, a hot heap page)
/// has a chain whose index entries span dozens of index blocks and whose values share a few hundred
/// data blocks. The read path fetches the earlier index blocks of such a chain several at a time
/// (1, 2, 4, ... up to `LayerMap.chainIndexBlocksPerFetch`) and each data block once, and must
/// still answer exactly, wherever the chain ends (an image in the middle of a fetched group, the
/// start of a layer, a materialized page).
final class LongChainTests: XCTestCase {
    private static let hot = relKey(rel: 16384, block: 7)
    private static let imaged = relKey(rel: 16384, block: 8)

    /// Small blocks, and no index preload.
    private func config() -> StoreConfig {
        var config = smallBlockConfig()
        config.preloadIndexBlocks = false
        return config
    }

    /// Neighbours on both sides of the hot keys, two hot keys with 3000 records each (the second with
    /// an image every 700), written in two layer files; the index is not preloaded, so that every
    /// index block of a cold read comes from the file.
    private func makeStore(_ rng: inout SeededRandom) throws -> (dir: String, lsn: LSN, model: Model) {
        let dir = makeTempDir("long-chain")
        let store = try TimelineStore.open(directory: dir, config: config(), context: StorageContext(io: PreadEngine()))
        var model = Model()
        var lsn: UInt64 = 0x1000
        func put(_ key: Key, _ value: Value) throws {
            lsn += 8
            try store.put(key, LSN(lsn), value)
            model.put(key, LSN(lsn), value)
        }
        for block in [6, 7, 8, 9] as [UInt32] {
            try put(relKey(rel: 16384, block: block), .image([UInt8](repeating: UInt8(block), count: 64)))
        }
        for i in 0..<6000 {
            if i == 3000 {
                store.advance(to: LSN(lsn))
                _ = try store.checkpoint()
            }
            let key = i % 2 == 0 ? LongChainTests.hot : LongChainTests.imaged
            let n = i / 2
            if key == LongChainTests.imaged && n % 700 == 699 {
                try put(key, .image([UInt8](repeating: UInt8(n & 0xFF), count: 32)))
            } else {
                try put(key, .walRecord((0..<Int.random(in: 1...6, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }))
            }
            if i % 500 == 0 {
                // A neighbour changes now and then, so the hot keys' index blocks hold other keys too.
                try put(relKey(rel: 16384, block: i % 1000 == 0 ? 6 : 9), .walRecord([UInt8(i & 0xFF)]))
            }
        }
        store.advance(to: LSN(lsn))
        _ = try store.checkpoint()
        store.close()
        return (dir, LSN(lsn), model)
    }

    func testLongChainsReadColdAtAnyLSNAreExact() throws {
        let seed = testSeed("LongChainTests")
        var rng = SeededRandom(seed: seed)
        let (dir, last, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let keys = [6, 7, 8, 9].map { relKey(rel: 16384, block: UInt32($0)) }
        var lsns = [last, LSN(0x1000 + 8 * 5), LSN(last.rawValue - 8)]
        for _ in 0..<12 { lsns.append(LSN(UInt64.random(in: 0x1000...last.rawValue, using: &rng))) }
        for lsn in lsns {
            // A new store each time: the index and data blocks of the chain are read cold.
            let context = StorageContext(io: PreadEngine(), materializedCacheBytes: 0)
            let store = try TimelineStore.open(directory: dir, config: config(), context: context)
            defer { store.close() }
            for key in keys {
                XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key) at \(lsn)")
            }
            // The same keys in one batch, as a pipelining client asks.
            let batch = store.get(keys.map { ($0, lsn) }, redo: AppendRedo())
            for (key, answer) in zip(keys, batch) {
                XCTAssertEqual(try answer.get(), model.get(key, at: lsn), "seed \(seed): \(key) at \(lsn), batched")
            }
        }
        // With materialized pages as the floor: a read above a remembered page applies only the rest.
        let store = try TimelineStore.open(directory: dir, config: config(), context: StorageContext(io: PreadEngine()))
        defer { store.close() }
        for lsn in lsns.sorted() {
            XCTAssertEqual(try store.get(LongChainTests.hot, at: lsn, redo: AppendRedo()), model.get(LongChainTests.hot, at: lsn), "seed \(seed): at \(lsn), materialized below")
        }
    }

    func testALongChainCostsAFewReadsNotOnePerIndexBlock() throws {
        let seed = testSeed("LongChainTests")
        var rng = SeededRandom(seed: seed)
        let (dir, last, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let io = CountingIO()
        let store = try TimelineStore.open(directory: dir, config: config(), context: StorageContext(io: io, materializedCacheBytes: 0))
        defer { store.close() }
        let before = io.reads.load(ordering: .relaxed)
        XCTAssertEqual(try store.get(LongChainTests.hot, at: last, redo: AppendRedo()), model.get(LongChainTests.hot, at: last), "seed \(seed)")
        let reads = io.reads.load(ordering: .relaxed) - before
        // 3000 entries of the hot key (half in each file) fill about 2 x 18 index blocks of 84
        // entries; one block at a time that was 36 index reads, plus the data.
        XCTAssertLessThanOrEqual(reads, 18, "seed \(seed): \(reads) reads for a chain of 3000 values")
    }
}
