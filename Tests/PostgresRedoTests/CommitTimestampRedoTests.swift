import Foundation
import LSM
import PGTestSupport
import PostgresWAL
import XCTest
@testable import PostgresRedo

/// Redo of tag 7 engine records (commit-timestamp buckets): appends, will-init, images, errors, and
/// a real store holding a long bucket chain with an image every `recordsPerImage` records.
final class CommitTimestampRedoTests: XCTestCase {
    typealias Entry = CommitTimestampIndex.Entry

    private let redo = PostgresRedo()
    private let mib: UInt64 = 1 << 20

    private func record(_ e: Entry, willInit: Bool = false) -> RedoRecord {
        RedoRecord(lsn: e.lsn, value: .engineRecord(EngineRecord.commitTimestamp(e).encode(), willInit: willInit))
    }

    private func assertRedoError(_ code: RedoError.Code, _ body: () throws -> Void, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try body(), file: file, line: line) { error in
            XCTAssertEqual((error as? RedoError)?.code, code, "\(error)", file: file, line: line)
        }
    }

    func testAppendsWillInitAndImages() throws {
        let entries = (1...5).map { Entry(lsn: LSN(3 * mib + UInt64($0) * 40), xactTime: Int64($0) * 1000) }
        let bucket = entries[0].bucket
        let key = CommitTimestampIndex.key(bucket)
        let records = [record(entries[0], willInit: true)] + entries.dropFirst().map { record($0) }
        let all = try redo.reconstruct(key: key, lsn: entries[4].lsn, base: nil, records: records)
        XCTAssertEqual(all, CommitTimestampIndex.encode(entries))
        XCTAssertEqual(try CommitTimestampIndex.decode(all, bucket: bucket), entries)

        // From an image base (what images on ingest store): the same value.
        let image = CommitTimestampIndex.encode(Array(entries.prefix(2)))
        XCTAssertEqual(try redo.reconstruct(key: key, lsn: entries[4].lsn, base: (entries[1].lsn, image), records: Array(records.dropFirst(2))), all)
        // An image inside the chain replaces the value so far.
        let withImage = [records[0], RedoRecord(lsn: entries[1].lsn, value: .image(image))] + records.dropFirst(2)
        XCTAssertEqual(try redo.reconstruct(key: key, lsn: entries[4].lsn, base: nil, records: withImage), all)
        // A will-init record in the middle starts over.
        XCTAssertEqual(try redo.reconstruct(key: key, lsn: entries[4].lsn, base: (entries[1].lsn, image), records: [record(entries[4], willInit: true)]),
                       CommitTimestampIndex.encode([entries[4]]))
    }

    func testRejectsWhatIsNotTheBucketsNextEntry() throws {
        let e1 = Entry(lsn: LSN(3 * mib + 80), xactTime: 1), e2 = Entry(lsn: LSN(3 * mib + 160), xactTime: 2)
        let key = CommitTimestampIndex.key(e1.bucket)
        let base = (lsn: e2.lsn, bytes: CommitTimestampIndex.encode([e1, e2]))
        assertRedoError(.missingBase) { _ = try redo.reconstruct(key: key, lsn: e2.lsn, base: nil, records: [record(e2)]) }
        // Not after the last entry.
        assertRedoError(.malformedRecord) { _ = try redo.reconstruct(key: key, lsn: e2.lsn, base: base, records: [record(e1)]) }
        // Stored at an LSN other than its own.
        assertRedoError(.malformedRecord) {
            _ = try redo.reconstruct(key: key, lsn: .max, base: nil,
                                     records: [RedoRecord(lsn: LSN(3 * mib + 8), value: .engineRecord(EngineRecord.commitTimestamp(e1).encode(), willInit: true))])
        }
        // In another bucket.
        let far = Entry(lsn: LSN(5 * mib), xactTime: 3)
        assertRedoError(.malformedRecord) { _ = try redo.reconstruct(key: key, lsn: far.lsn, base: base, records: [record(far)]) }
        // Another tag, a WAL record, trailing bytes, a damaged base.
        assertRedoError(.malformedRecord) {
            _ = try redo.reconstruct(key: key, lsn: .max, base: base, records: [RedoRecord(lsn: LSN(3 * mib + 200), value: .engineRecord(EngineRecord.vmTruncate(heapBlocks: 1).encode()))])
        }
        assertRedoError(.malformedRecord) { _ = try redo.reconstruct(key: key, lsn: .max, base: base, records: [RedoRecord(lsn: LSN(3 * mib + 200), value: .walRecord([1, 2, 3]))]) }
        let e3 = Entry(lsn: LSN(3 * mib + 240), xactTime: 3)
        assertRedoError(.malformedRecord) {
            _ = try redo.reconstruct(key: key, lsn: .max, base: base, records: [RedoRecord(lsn: e3.lsn, value: .engineRecord(EngineRecord.commitTimestamp(e3).encode() + [0]))])
        }
        assertRedoError(.corruptPage) { _ = try redo.reconstruct(key: key, lsn: .max, base: (e2.lsn, [1, 2, 3]), records: [record(e3)]) }
        // A tag 7 record under a page key is refused, not applied to the page.
        let page = KeySpace.slruBlock(.clog, segment: 0, block: 0)
        assertRedoError(.malformedRecord) { _ = try redo.reconstruct(key: page, lsn: e1.lsn, base: nil, records: [record(e1, willInit: true)]) }
    }

    /// A bucket with more entries than max_chain_length, stored in a real `TimelineStore` the way
    /// the daemon's ingest does (will-init first, an image of the value every `recordsPerImage`
    /// records built by redo), flushed halfway; every LSN reads back the model's prefix.
    func testLongBucketInStoreWithImages() throws {
        let seed = testSeed("testLongBucketInStoreWithImages")
        var rng = SeededRandom(seed: seed)
        let dir = FileManager.default.temporaryDirectory.path + "/commit-ts-redo-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = StoreConfig()
        config.backgroundFlush = false
        config.maxChainLength = 2000
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: makeBlockIO(.pread)))
        defer { store.close() }
        let redo = PostgresRedo(settings: RedoSettings(maxChainLength: 2000))

        let count = 26_000 // about the most 1 MiB of WAL can hold (40-byte commit records)
        var entries: [Entry] = []
        var time = Int64(700_000_000_000_000)
        for i in 0..<count {
            time += Int64.random(in: 0...50, using: &rng)
            entries.append(Entry(lsn: LSN(7 * mib + UInt64(i) * 40 + 40), xactTime: time))
        }
        let key = CommitTimestampIndex.key(entries[0].bucket)
        var sinceImage = 0
        for (i, e) in entries.enumerated() {
            if i == 0 {
                try store.put(key, e.lsn, .engineRecord(EngineRecord.commitTimestamp(e).encode(), willInit: true))
            } else if sinceImage + 1 >= CommitTimestampIndex.recordsPerImage {
                let before = try XCTUnwrap(try store.get(key, at: LSN(e.lsn.rawValue - 1), redo: redo))
                let image = try redo.reconstruct(key: key, lsn: e.lsn, base: (LSN(e.lsn.rawValue - 1), before), records: [record(e)])
                try store.put(key, e.lsn, .image(image))
                sinceImage = 0
                continue
            } else {
                try store.put(key, e.lsn, .engineRecord(EngineRecord.commitTimestamp(e).encode()))
            }
            sinceImage += 1
            store.advance(to: e.lsn)
            if i == count / 2 { _ = try store.checkpoint() }
        }
        store.advance(to: entries.last!.lsn)
        for _ in 0..<200 {
            let n = Int.random(in: 1...count, using: &rng)
            let at = LSN(entries[n - 1].lsn.rawValue + UInt64.random(in: 0..<40, using: &rng))
            let value = try XCTUnwrap(try store.get(key, at: at, redo: redo))
            XCTAssertEqual(value.count, n * CommitTimestampIndex.entrySize, "at \(at) (seed \(seed))")
            XCTAssertEqual(value, CommitTimestampIndex.encode(Array(entries.prefix(n))), "at \(at) (seed \(seed))")
        }
        XCTAssertNil(try store.get(key, at: LSN(entries[0].lsn.rawValue - 1), redo: redo))
    }
}
