import Foundation
@testable import LSM
import XCTest

/// The in-memory layer is frozen at checkpoint_distance and flushed by the background thread while
/// new puts keep going and readers in other threads keep reading.
final class BackgroundFlushTests: XCTestCase {
    func testFreezeAndFlushInBackgroundWhileWritingAndReading() throws {
        let seed = testSeed("BackgroundFlushTests")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("bgflush")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let context = StorageContext(io: makeBlockIO(.ioUring), dataCacheBytes: 1 << 20, indexCacheBytes: 1 << 20)
        var config = StoreConfig()
        config.checkpointDistanceBytes = 64 << 10
        config.maxFrozenLayers = 2
        let store = try TimelineStore.open(directory: dir, config: config, context: context)
        let redo = AppendRedo()
        let keys = (0..<64).map { relKey(rel: 16384, block: UInt32($0)) }
        var model = Model()
        for (i, k) in keys.enumerated() {
            let v = Value.image(pageImage(&rng, size: 512))
            try store.put(k, LSN(UInt64(0x100 + i)), v)
            model.put(k, LSN(UInt64(0x100 + i)), v)
        }
        // A reader thread checks, over and over, that the base images stay readable at their LSN.
        let baseModel = model
        let stop = ManagedAtomicFlag()
        let readerFailures = ManagedCounter()
        let reader = Thread {
            var i = 0
            while !stop.isSet {
                let k = keys[i % keys.count]
                let at = LSN(UInt64(0x100 + keys.count))
                if (try? store.get(k, at: at, redo: redo)) != baseModel.get(k, at: at) { readerFailures.increment() }
                i += 1
            }
        }
        reader.start()
        var lsn: UInt64 = 0x1000
        for _ in 0..<4000 {
            lsn += UInt64.random(in: 1...50, using: &rng)
            let k = keys.randomElement(using: &rng)!
            let v = Value.walRecord((0..<Int.random(in: 20...120, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) })
            try store.put(k, LSN(lsn), v)
            model.put(k, LSN(lsn), v)
            // The record is complete: the store may freeze here (never between puts of one record).
            store.advance(to: LSN(lsn))
        }
        // No explicit checkpoint: the background thread must have flushed frozen layers by itself.
        let deadline = Date().addingTimeInterval(30)
        while store.diskConsistentLSN == .zero && Date() < deadline { usleep(10_000) }
        stop.set()
        while !reader.isFinished { usleep(1000) }
        XCTAssertGreaterThan(store.diskConsistentLSN, .zero, "seed \(seed): background flush never happened")
        XCTAssertGreaterThan(store.layers().count, 1, "seed \(seed)")
        XCTAssertEqual(readerFailures.value, 0, "seed \(seed): concurrent reads saw wrong values")
        for k in keys {
            for at in [LSN(0x200), LSN(lsn / 2), LSN(lsn)] {
                XCTAssertEqual(try store.get(k, at: at, redo: redo), model.get(k, at: at), "seed \(seed): key \(k) at \(at)")
            }
        }
        let flushed = store.diskConsistentLSN
        store.close()
        // After a reopen everything up to disk_consistent_lsn is there.
        let reopened = try TimelineStore.open(directory: dir, config: config, context: context)
        defer { reopened.close() }
        XCTAssertEqual(reopened.diskConsistentLSN, flushed)
        let expected = model.truncated(to: flushed)
        for k in keys { XCTAssertEqual(try reopened.get(k, at: flushed, redo: redo), expected.get(k, at: flushed), "seed \(seed): key \(k)") }
    }
}

final class ManagedAtomicFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var flag = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return flag }
    func set() { lock.lock(); flag = true; lock.unlock() }
}

final class ManagedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0
    var value: Int { lock.lock(); defer { lock.unlock() }; return count }
    func increment() { lock.lock(); count += 1; lock.unlock() }
}

/// Layers are frozen only at record boundaries: the puts of one record (many keys, one LSN) all land
/// in the same in-memory layer even when checkpoint_distance is crossed in the middle.
final class RecordBoundaryTests: XCTestCase {
    func testDistanceFreezeWaitsForTheRecordToComplete() throws {
        let dir = makeTempDir("boundary")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1024
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: PreadEngine()))
        defer { store.close() }
        // One "record" at LSN 0x200 touching 50 keys, well past checkpoint_distance.
        for b in 0..<50 { try store.put(relKey(rel: 16384, block: UInt32(b)), LSN(0x200), .image([UInt8](repeating: UInt8(b), count: 100))) }
        XCTAssertEqual(store.diskConsistentLSN, .zero, "nothing may be frozen before the record completes")
        store.advance(to: LSN(0x200))
        XCTAssertEqual(store.diskConsistentLSN, LSN(0x200), "the record boundary freezes and (without a background flusher) flushes")
        // A checkpoint from another thread waits for the record in progress.
        try store.put(relKey(rel: 16384, block: 0), LSN(0x300), .walRecord([1]))
        let done = ManagedAtomicFlag()
        let t = Thread {
            _ = try? store.checkpointAtRecordBoundary(timeoutSeconds: 30)
            done.set()
        }
        t.start()
        usleep(100_000)
        XCTAssertFalse(done.isSet, "checkpointAtRecordBoundary must not freeze in the middle of a record")
        try store.put(relKey(rel: 16384, block: 1), LSN(0x300), .walRecord([2]))
        store.advance(to: LSN(0x300))
        let deadline = Date().addingTimeInterval(10)
        while !done.isSet && Date() < deadline { usleep(1000) }
        XCTAssertTrue(done.isSet)
        XCTAssertEqual(store.diskConsistentLSN, LSN(0x300))
        XCTAssertEqual(try store.get(relKey(rel: 16384, block: 1), at: LSN(0x300), redo: AppendRedo()), [UInt8](repeating: 1, count: 100) + [2])
    }
}
