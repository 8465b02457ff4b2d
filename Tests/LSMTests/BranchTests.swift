import Foundation
@testable import LSM
import XCTest

/// Stores with ancestors (branches) against the model: a tree of stores, each branched from a random
/// store at a random LSN, written to independently, read at random keys and LSNs (below, at and
/// above branch points), flushed and reopened in ancestor-first order.
final class BranchTests: XCTestCase {
    struct Node {
        var store: TimelineStore
        var model: Model
        var lsn: UInt64
        var parent: Int?
        var branchPoint: LSN
        var dir: String
    }

    func testBranchTreeMatchesModel() throws {
        let seed = testSeed("BranchTests.tree")
        var rng = SeededRandom(seed: seed)
        let root = makeTempDir("branch")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let context = StorageContext(io: makeBlockIO(.ioUring), dataCacheBytes: 256 << 10, indexCacheBytes: 64 << 10)
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        // Batched reads of 4 or more lookups are split over 2 threads (each part asks the ancestors
        // for its own lookups).
        config.redoThreads = 2
        config.lookupsPerReadThread = 2
        var keys: [Key] = []
        for rel in UInt32(16384)..<16388 { for blk in [0, 1, 2, 131_072] as [UInt32] { keys.append(relKey(rel: rel, block: blk)) } }
        keys.append(Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 1))
        let redo = AppendRedo()
        var nodes = [Node(store: try TimelineStore.open(directory: root + "/0", config: config, context: context), model: Model(),
                          lsn: 0x100, parent: nil, branchPoint: .zero, dir: root + "/0")]
        nodes[0].store.advance(to: LSN(0x100))

        func check(_ n: Int, _ reqs: [(Key, LSN)], _ step: String) {
            let got = nodes[n].store.get(reqs, redo: redo)
            for (i, (k, at)) in reqs.enumerated() {
                switch got[i] {
                case .success(let v): XCTAssertEqual(v, nodes[n].model.get(k, at: at), "seed \(seed) \(step): store \(n) key \(k) at \(at)")
                case .failure(let e): XCTFail("seed \(seed) \(step): store \(n) key \(k) at \(at): \(e)")
                }
            }
        }

        for step in 0..<2500 {
            let n = Int.random(in: 0..<nodes.count, using: &rng)
            let op = Int.random(in: 0..<100, using: &rng)
            if op < 55 {
                nodes[n].lsn += UInt64.random(in: 1...300, using: &rng)
                let at = LSN(nodes[n].lsn)
                for key in Set((0..<Int.random(in: 1...3, using: &rng)).map { _ in keys.randomElement(using: &rng)! }) {
                    let r = Int.random(in: 0..<10, using: &rng)
                    let bytes = (0..<Int.random(in: 1...100, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    // Records without a base are fine: the model and the store both treat them as
                    // appending to nothing only when no ancestor has a value; avoid them on keys
                    // no store on the path has written, so every read is answerable.
                    let known = nodes[n].model.get(key, at: at) != nil
                    let value: Value = r < 2 || !known ? .image(bytes) : r < 3 ? .walRecord(bytes, willInit: true) : .walRecord(bytes)
                    try nodes[n].store.put(key, at, value)
                    nodes[n].model.put(key, at, value)
                }
                nodes[n].store.advance(to: at)
            } else if op < 62 {
                try nodes[n].store.checkpoint()
            } else if op < 66 && nodes.count < 8 {
                // Branch from store n at a random LSN it holds (at most its last record).
                let low = max(nodes[n].branchPoint.rawValue, 0x100)
                let p = LSN(UInt64.random(in: low...nodes[n].lsn, using: &rng))
                let dir = root + "/\(nodes.count)"
                let store = try TimelineStore.open(directory: dir, config: config, context: context,
                                                   ancestor: .init(store: nodes[n].store, lsn: p))
                XCTAssertEqual(store.lastRecordLSN, p)
                XCTAssertEqual(store.diskConsistentLSN, p)
                nodes.append(Node(store: store, model: nodes[n].model.truncated(to: p), lsn: p.rawValue, parent: n, branchPoint: p, dir: dir))
            } else {
                let reqs = (0..<Int.random(in: 1...12, using: &rng)).map { _ in
                    (keys.randomElement(using: &rng)!, LSN(UInt64.random(in: 0x100...nodes[n].lsn, using: &rng)))
                }
                check(n, reqs, "step \(step)")
            }
        }
        XCTAssertGreaterThan(nodes.count, 2, "seed \(seed): the test made no branches")
        // Checkpoint, close and reopen every store, ancestors first, then compare everything.
        for n in nodes.indices { try nodes[n].store.checkpoint(); nodes[n].store.close() }
        for n in nodes.indices {
            let ancestor = nodes[n].parent.map { TimelineStore.Ancestor(store: nodes[$0].store, lsn: nodes[n].branchPoint) }
            nodes[n].store = try TimelineStore.open(directory: nodes[n].dir, config: config, context: context, ancestor: ancestor)
        }
        for n in nodes.indices {
            let lsns = stride(from: UInt64(0x100), through: nodes[n].lsn, by: max(1, Int(nodes[n].lsn - 0x100) / 30)).map { LSN($0) }
            check(n, keys.flatMap { k in lsns.map { (k, $0) } }, "after reopen")
            nodes[n].store.close()
        }
    }

    func testBranchStoreRefusesAManifestBelowItsBranchPoint() throws {
        let dir = makeTempDir("branch-low")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let context = StorageContext(io: makeBlockIO(.pread))
        var config = StoreConfig()
        config.backgroundFlush = false
        let parent = try TimelineStore.open(directory: dir + "/p", config: config, context: context)
        try parent.put(relKey(rel: 1, block: 0), LSN(0x200), .image([1]))
        parent.advance(to: LSN(0x200))
        let child = try TimelineStore.open(directory: dir + "/c", config: config, context: context, ancestor: .init(store: parent, lsn: LSN(0x200)))
        XCTAssertEqual(try child.get(relKey(rel: 1, block: 0), at: LSN(0x300), redo: AppendRedo()), [1])
        child.close()
        XCTAssertThrowsError(try TimelineStore.open(directory: dir + "/c", config: config, context: context,
                                                    ancestor: .init(store: parent, lsn: LSN(0x300))))
    }
}
