import Foundation
@testable import LSM
import Synchronization
import XCTest

/// `StoreConfig.cachedBatchesOnCaller`: a batch big enough to be split over read-part threads is
/// first tried on the caller's thread from the caches alone. A batch whose blocks are all cached is
/// answered there, with no read and no other thread; one that needs a read is split as before (and
/// the next batch is split without a try: the backoff). Both give the answers the model gives.
final class CachedBatchTests: XCTestCase {
    /// AppendRedo that notes the threads it ran on.
    private final class ThreadNotingRedo: Redo, @unchecked Sendable {
        let threads = Mutex<Set<UInt>>([])
        func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
            let me = UInt(pthread_self())
            threads.withLock { _ = $0.insert(me) }
            return try AppendRedo().reconstruct(key: key, lsn: lsn, base: base, records: records)
        }
    }

    /// 2 relations x 200 pages, each an image and then 3 records, all in layer files.
    private func makeStore(_ rng: inout SeededRandom) throws -> (dir: String, lsn: LSN, model: Model, keys: [Key]) {
        let dir = makeTempDir("cached-batch")
        let store = try TimelineStore.open(directory: dir, config: smallBlockConfig(), context: StorageContext(io: PreadEngine()))
        var model = Model()
        var keys: [Key] = []
        var lsn: UInt64 = 0x1000
        for rel in 0..<2 {
            for block in 0..<200 { keys.append(relKey(rel: 16384 + UInt32(rel), block: UInt32(block))) }
        }
        for round in 0..<4 {
            for key in keys {
                lsn += 8
                let v = round == 0 ? Value.image(pageImage(&rng, size: 512))
                    : Value.walRecord((0..<24).map { _ in UInt8.random(in: 0...255, using: &rng) })
                try store.put(key, LSN(lsn), v)
                model.put(key, LSN(lsn), v)
            }
        }
        store.advance(to: LSN(lsn))
        _ = try store.checkpoint()
        store.close()
        return (dir, LSN(lsn), model, keys)
    }

    func testWarmBatchIsAnsweredOnTheCallersThreadAndAColdOneIsSplit() throws {
        let seed = testSeed("CachedBatchTests")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model, keys) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        for cachedOnCaller in [true, false] {
            var config = smallBlockConfig()
            config.redoThreads = 4
            config.lookupsPerReadThread = 4
            config.cachedBatchesOnCaller = cachedOnCaller
            let io = CountingIO()
            // No materialized pages: every read of a page runs its redo.
            let context = StorageContext(io: io, dataCacheBytes: 64 << 20, materializedCacheBytes: 0, coldPrefetchWindowBytes: 0)
            let store = try TimelineStore.open(directory: dir, config: config, context: context)
            defer { store.close() }
            let batch = Array(keys.shuffled(using: &rng).prefix(32))
            let requests = batch.map { ($0, lsn) }
            let redo = ThreadNotingRedo()
            func check(_ what: String) {
                for (key, answer) in zip(batch, store.get(requests, redo: redo)) {
                    XCTAssertEqual(try answer.get(), model.get(key, at: lsn), "seed \(seed), \(what): \(key)")
                }
            }
            check("cold, cached on caller \(cachedOnCaller)")
            let coldReads = io.reads.load(ordering: .relaxed)
            XCTAssertGreaterThan(coldReads, 0, "seed \(seed): the cold batch read its blocks")
            // The cold batch's try missed, so the next batch is split without one (the backoff);
            // the one after it tries again.
            check("warm, cached on caller \(cachedOnCaller)")
            redo.threads.withLock { $0 = [] }
            check("warm again, cached on caller \(cachedOnCaller)")
            XCTAssertEqual(io.reads.load(ordering: .relaxed), coldReads, "seed \(seed): the warm batch read nothing")
            if cachedOnCaller {
                XCTAssertEqual(redo.threads.withLock { $0 }, [UInt(pthread_self())], "seed \(seed): the warm batch ran on the caller's thread only")
            }
            // Half cached, half not: the try gives up and the split batch reads the rest.
            let others = keys.filter { !batch.contains($0) }.shuffled(using: &rng)
            let mixed = Array(batch.prefix(16)) + Array(others.prefix(16))
            for (key, answer) in zip(mixed, store.get(mixed.map { ($0, lsn) }, redo: redo)) {
                XCTAssertEqual(try answer.get(), model.get(key, at: lsn), "seed \(seed), mixed, cached on caller \(cachedOnCaller): \(key)")
            }
            XCTAssertGreaterThan(io.reads.load(ordering: .relaxed), coldReads, "seed \(seed): the mixed batch read its uncached blocks")
        }
    }
}
