import Foundation
@testable import LSM
import XCTest

/// Random puts of images and records across many chunks, flushes at random points, reads at random
/// keys and LSNs, compared with the plain in-memory model after every step.
final class ModelTests: XCTestCase {
    func runModel(io: IOEngineKind, directIO: Bool, steps: Int) throws {
        let seed = testSeed("ModelTests.\(io.rawValue)\(directIO ? ".direct" : "")")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("model")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let context = StorageContext(io: makeBlockIO(io), dataCacheBytes: 256 << 10, indexCacheBytes: 64 << 10, directIO: directIO)
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        config.dataBlockBytes = [512, 4096, 8192][Int.random(in: 0..<3, using: &rng)]
        // Batched reads with two or more lookups that need redo reconstruct them on several threads.
        config.redoThreads = 3
        config.parallelRedoMinimum = 2
        // Batches of 6 or more lookups are split into parts answered on up to 3 threads.
        config.lookupsPerReadThread = 3
        var store = try TimelineStore.open(directory: dir, config: config, context: context)
        var model = Model()
        var lsn: UInt64 = 0x100
        // Keys over several relations, forks and segments, SLRU segments and metadata keys.
        var keys: [Key] = []
        for rel in UInt32(16384)..<16390 {
            for blk in [0, 1, 2, 3, 131_071, 131_072, 131_073, 300_000] as [UInt32] { keys.append(relKey(rel: rel, block: blk, fork: UInt8(rel % 3))) }
            keys.append(relKey(rel: rel, block: ChunkId.sizeKeyBlock))
        }
        for seg in UInt32(0)..<3 { for blk in UInt32(0)..<4 { keys.append(Key(field1: 1, field2: 0, field3: 1, field4: seg, field5: 0, field6: blk)) } }
        keys.append(Key(field1: 0, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0))
        keys.append(Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 1))
        let redo = AppendRedo()
        store.advance(to: LSN(lsn))

        for step in 0..<steps {
            let op = Int.random(in: 0..<100, using: &rng)
            if op < 60 {
                // A record's worth of puts at one LSN (several keys).
                lsn += UInt64.random(in: 1...300, using: &rng)
                let n = Int.random(in: 1...4, using: &rng)
                var used = Set<Key>()
                for _ in 0..<n {
                    let key = keys.randomElement(using: &rng)!
                    if !used.insert(key).inserted { continue }
                    let r = Int.random(in: 0..<10, using: &rng)
                    let value: Value
                    if r < 2 || (model.values[key] == nil && r >= 3) {
                        value = .image(pageImage(&rng, size: Int.random(in: 1...2, using: &rng) == 1 ? 8192 : Int.random(in: 1...700, using: &rng)))
                    } else if r < 3 {
                        value = .walRecord((0..<Int.random(in: 1...50, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }, willInit: true)
                    } else {
                        let bytes = (0..<Int.random(in: 1...200, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                        value = r < 5 ? .engineRecord(bytes) : .walRecord(bytes)
                    }
                    try store.put(key, LSN(lsn), value)
                    model.put(key, LSN(lsn), value)
                }
            } else if op < 65 {
                lsn += UInt64.random(in: 1...100, using: &rng)
                store.advance(to: LSN(lsn))
            } else if op < 72 {
                try store.checkpoint()
                XCTAssertEqual(store.diskConsistentLSN, LSN(lsn), "seed \(seed) step \(step)")
            } else if op < 74 {
                // Reopen from disk: everything checkpointed must be there; the unflushed tail is lost.
                try store.checkpoint()
                store.close()
                store = try TimelineStore.open(directory: dir, config: config, context: context)
            } else {
                // Reads: several at once (one batch), at random keys and LSNs.
                var reqs: [(Key, LSN)] = []
                for _ in 0..<Int.random(in: 1...16, using: &rng) {
                    let at = Int.random(in: 0..<4, using: &rng) == 0 ? LSN(lsn) : LSN(UInt64.random(in: 0x100...lsn, using: &rng))
                    reqs.append((keys.randomElement(using: &rng)!, at))
                }
                var stats = ReadStats()
                stats.layersPerLookup = []
                let got = store.get(reqs, redo: redo, stats: &stats)
                XCTAssertEqual(stats.layersPerLookup?.count, reqs.count, "seed \(seed) step \(step): layers per lookup")
                for (i, (k, at)) in reqs.enumerated() {
                    let expected = model.get(k, at: at)
                    switch got[i] {
                    case .success(let v):
                        XCTAssertEqual(v, expected, "seed \(seed) step \(step): key \(k) at \(at)")
                        if v != expected { return }
                    case .failure(let e):
                        XCTFail("seed \(seed) step \(step): key \(k) at \(at): \(e)")
                        return
                    }
                }
            }
        }
        // Final full comparison after a checkpoint and a reopen.
        try store.checkpoint()
        store.close()
        store = try TimelineStore.open(directory: dir, config: config, context: context)
        for k in keys {
            for at in stride(from: UInt64(0x100), through: lsn, by: max(1, Int(lsn - 0x100) / 50)) {
                XCTAssertEqual(try store.get(k, at: LSN(at), redo: redo), model.get(k, at: LSN(at)), "seed \(seed) final: key \(k) at \(LSN(at))")
            }
        }
        store.close()
        XCTAssertGreaterThan(store.layers().count, 0)
    }

    func testModelIOUring() throws { try runModel(io: .ioUring, directIO: false, steps: 3000) }
    func testModelPread() throws { try runModel(io: .pread, directIO: false, steps: 3000) }
    func testModelDirectIO() throws { try runModel(io: .ioUring, directIO: true, steps: 1500) }
}
