import Foundation
import LSM
import XCTest
@testable import PostgresWAL

/// Images on ingest (IngestImages.swift), as one component: a real `TimelineStore` with a fake redo
/// that appends each record's bytes to the page. The same random puts go to a store without images
/// and to one with them; every read at every LSN must agree, the images must sit where the rule puts
/// them, and no chain may reach the threshold.
final class IngestImagesTests: XCTestCase {
    /// Appends: an image is the starting bytes, a record adds its bytes, will_init starts over. With
    /// `refuses`, throws for keys of relation 99, to check that a record redo cannot build is stored
    /// as it is (the reads use one that does not refuse).
    struct AppendRedo: Redo {
        var refuses = false
        func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
            if refuses && key.field4 == 99 { throw StorageError(.unsupported, "no redo for relation 99") }
            var out = base?.bytes ?? []
            for r in records {
                if r.value.willInit { out = [] }
                out += r.value.bytes
            }
            return out
        }
    }

    private func openStore(_ dir: String) throws -> TimelineStore {
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        return try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: makeBlockIO(.pread)))
    }

    func testImagesBoundChainsAndChangeNoRead() throws {
        let seed = testSeed("IngestImagesTests.chains")
        var rng = SeededRandom(seed: seed)
        let base = FileManager.default.temporaryDirectory.path + "/ingest-images-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: base) }
        let plain = try openStore(base + "/plain"), imaged = try openStore(base + "/imaged")
        defer { plain.close(); imaged.close() }
        let threshold = 16
        let redo = AppendRedo()
        let images = IngestImages(store: imaged, redo: AppendRedo(refuses: true), threshold: threshold)
        let plainTarget = TimelineStoreTarget(store: plain), imagedTarget = TimelineStoreTarget(store: imaged, images: images)

        let hot = KeySpace.relationBlock(RelTag(spc: 1663, db: 5, rel: 16384, fork: 0), 0)
        let cold = KeySpace.relationBlock(RelTag(spc: 1663, db: 5, rel: 16384, fork: 0), 1)
        let refused = KeySpace.relationBlock(RelTag(spc: 1663, db: 5, rel: 99, fork: 0), 0)
        let bucket = CommitTimestampIndex.key(.init(rawValue: 7))
        let keys = [hot, cold, refused, bucket]
        var lsn: UInt64 = 0x100_0000
        var written: [(Key, LSN)] = []
        // Where the rule puts an image on `imaged`: the record that makes the key's count reach its
        // threshold (a will_init record or an image resets the count).
        var count: [Key: Int] = [:]
        var expectedImages: Set<String> = []
        for key in keys {
            lsn += 8
            for t in [plainTarget, imagedTarget] { try t.put(key, LSN(lsn), .image([UInt8](repeating: 0xAB, count: 8))) }
            written.append((key, LSN(lsn)))
        }
        for i in 0..<3000 {
            lsn += UInt64.random(in: 8...64, using: &rng)
            // The hot key most of the time, so that it passes the threshold again and again.
            let key = i % 5 == 4 ? keys.randomElement(using: &rng)! : hot
            let bytes = (0..<Int.random(in: 1...4, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let r = Int.random(in: 0..<100, using: &rng)
            let value: Value = r < 2 ? .walRecord(bytes, willInit: true) : r < 3 ? .image(bytes) : key == bucket ? .engineRecord(bytes) : .walRecord(bytes)
            if value.kind == .image || value.willInit {
                count[key] = 0
            } else {
                let limit = key == bucket ? CommitTimestampIndex.recordsPerImage : threshold
                let n = (count[key] ?? 0) + 1
                if n >= limit && key != refused {
                    expectedImages.insert("\(key)@\(lsn)")
                    count[key] = 0
                } else {
                    count[key] = n
                }
            }
            for t in [plainTarget, imagedTarget] { try t.put(key, LSN(lsn), value) }
            written.append((key, LSN(lsn)))
            if i == 1500 {
                _ = try plain.checkpoint()
                _ = try imaged.checkpoint()
            }
        }
        XCTAssertGreaterThan(expectedImages.count, 100, "seed \(seed): the hot key should pass the threshold many times")
        XCTAssertEqual(images.imagesMaterialized, expectedImages.count, "seed \(seed)")

        // Every read at every written LSN (and just below it) agrees; the images sit where the rule
        // says; no chain of `imaged` reaches the threshold, except the refused key's.
        var mismatches = 0
        for (key, at) in written {
            for l in [LSN(at.rawValue - 1), at] {
                let a = try plain.get(key, at: l, redo: redo), b = try imaged.get(key, at: l, redo: redo)
                if a != b {
                    mismatches += 1
                    if mismatches <= 5 { XCTFail("seed \(seed): \(key) at \(l): \(a?.count ?? -1) bytes without images, \(b?.count ?? -1) with") }
                }
            }
        }
        XCTAssertEqual(mismatches, 0, "seed \(seed)")
        for key in [hot, cold] {
            var stats = ReadStats()
            let result = imaged.get([(key, LSN(lsn))], redo: redo, stats: &stats)
            XCTAssertNoThrow(try result[0].get())
            // At most threshold - 1 records above the base, plus the base itself when it is a
            // will_init record (redo applies that one too).
            XCTAssertLessThanOrEqual(stats.recordsApplied, threshold, "seed \(seed): \(key)'s chain at the end")
        }
        // The refused key kept its records: its chain is as long as without images.
        var plainStats = ReadStats(), imagedStats = ReadStats()
        _ = try plain.get([(refused, LSN(lsn))], redo: redo, stats: &plainStats)[0].get()
        _ = try imaged.get([(refused, LSN(lsn))], redo: redo, stats: &imagedStats)[0].get()
        XCTAssertEqual(plainStats.recordsApplied, imagedStats.recordsApplied, "seed \(seed): the refused key's chain")
    }

    func testThresholdZeroStillImagesCommitTimestampBuckets() throws {
        let dir = FileManager.default.temporaryDirectory.path + "/ingest-images-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try openStore(dir)
        defer { store.close() }
        let images = IngestImages(store: store, redo: AppendRedo(), threshold: 0)
        let target = TimelineStoreTarget(store: store, images: images)
        let page = KeySpace.relationBlock(RelTag(spc: 1663, db: 5, rel: 16384, fork: 0), 0)
        let bucket = CommitTimestampIndex.key(.init(rawValue: 1))
        var lsn: UInt64 = 0x100_0000
        try target.put(page, LSN(lsn), .image([1]))
        lsn += 8
        try target.put(bucket, LSN(lsn), .engineRecord([1], willInit: true))
        for _ in 0..<(CommitTimestampIndex.recordsPerImage + 10) {
            lsn += 8
            try target.put(page, LSN(lsn), .walRecord([2]))
            try target.put(bucket, LSN(lsn), .engineRecord([3]))
        }
        XCTAssertEqual(images.imagesMaterialized, 1, "only the bucket, once, at its threshold")
        XCTAssertEqual(try store.get(bucket, at: LSN(lsn), redo: AppendRedo())?.count, CommitTimestampIndex.recordsPerImage + 11)
    }
}
