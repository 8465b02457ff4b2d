import Foundation
@testable import LSM
import XCTest

/// `StorageContext.coldPrefetchWindowBytes`: while page memory has never been full, a data-block
/// miss in a file whose index was preloaded reads every whole block of the aligned window around it
/// in the same read, and keeps the window in the compressed tier. Later misses in that window are
/// decoded from it without a read. Every block is verified when decoded, so a damaged neighbour is
/// an error when it is used, never a wrong answer; once memory is short, reads are exact again.
final class ColdPrefetchTests: XCTestCase {
    private static let relations = 3
    private static let blocksPerRelation = 400

    private func config() -> StoreConfig { smallBlockConfig() }

    /// A store of 3 relations x 400 values of 1 KiB (half random), one layer file per relation of
    /// about 200 data blocks.
    private func makeStore(_ rng: inout SeededRandom) throws -> (dir: String, lsn: LSN, model: Model) {
        try writeRelations("cold-prefetch", relations: ColdPrefetchTests.relations, blocks: ColdPrefetchTests.blocksPerRelation, &rng) { _, block, rng in
            var page = [UInt8](repeating: UInt8(block & 0xFF), count: 1024)
            for i in 512..<1024 { page[i] = UInt8.random(in: 0...255, using: &rng) }
            return page
        }
    }

    private func allKeys() -> [Key] {
        (0..<ColdPrefetchTests.relations).flatMap { rel in
            (0..<ColdPrefetchTests.blocksPerRelation).map { relKey(rel: 16384 + UInt32(rel), block: UInt32($0)) }
        }
    }

    func testAMissReadsItsWindowAndItsNeighboursNeedNoRead() throws {
        let seed = testSeed("ColdPrefetchTests")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var readsByWindow: [Int: Int] = [:]
        for window in [0, 32 << 10] {
            let io = CountingIO()
            let context = StorageContext(io: io, dataCacheBytes: 64 << 20, materializedCacheBytes: 0, coldPrefetchWindowBytes: window)
            let store = try TimelineStore.open(directory: dir, config: config(), context: context)
            defer { store.close() }
            let first = relKey(rel: 16385, block: 200)
            XCTAssertEqual(try store.get(first, at: lsn, redo: AppendRedo()), model.get(first, at: lsn), "seed \(seed), window \(window)")
            XCTAssertEqual(io.reads.load(ordering: .relaxed), 1, "seed \(seed), window \(window): one read (the index was preloaded)")
            if window > 0 {
                XCTAssertTrue(context.compressedDataCache.hasWindows, "seed \(seed): the window was kept")
                XCTAssertGreaterThan(context.compressedDataCache.heldBytes, 16 << 10, "seed \(seed): most of a 32 KiB window is held")
                // The value's neighbours lie in the same window: no read for them.
                for block in [199, 201, 202] {
                    let key = relKey(rel: 16385, block: UInt32(block))
                    XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key)")
                }
                XCTAssertEqual(io.reads.load(ordering: .relaxed), 1, "seed \(seed): the neighbours came from the window")
            } else {
                XCTAssertFalse(context.compressedDataCache.hasWindows, "seed \(seed): no window with the setting off")
            }
            for key in allKeys().shuffled(using: &rng) {
                XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed), window \(window): \(key)")
            }
            readsByWindow[window] = io.reads.load(ordering: .relaxed)
        }
        // About 200 blocks per file: one read each without the window, one per 32 KiB with it.
        let exact = readsByWindow[0]!, windowed = readsByWindow[32 << 10]!
        XCTAssertGreaterThan(exact, 300, "seed \(seed): every block read on its own")
        XCTAssertLessThan(windowed * 4, exact, "seed \(seed): reads by window \(windowed), block by block \(exact)")
    }

    /// A block decoded out of a kept window goes into the decoded tier on its second use, not its
    /// first (`SeenOnceFilter`): until then it is decoded from the window again, with no read.
    func testAWindowsBlocksEnterTheDecodedTierOnTheirSecondUse() throws {
        let seed = testSeed("ColdPrefetchTests")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let io = CountingIO()
        let context = StorageContext(io: io, dataCacheBytes: 64 << 20, materializedCacheBytes: 0, coldPrefetchWindowBytes: 32 << 10)
        let store = try TimelineStore.open(directory: dir, config: config(), context: context)
        defer { store.close() }
        let keys = [200, 201, 202].map { relKey(rel: 16385, block: UInt32($0)) }
        for key in keys {
            XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key)")
        }
        XCTAssertEqual(io.reads.load(ordering: .relaxed), 1, "seed \(seed): one read, for the window")
        XCTAssertTrue(context.compressedDataCache.hasWindows, "seed \(seed): the window was kept")
        XCTAssertEqual(context.dataCache.usedBytes, 0, "seed \(seed): first uses decode from the window and keep nothing decoded")
        for key in keys {
            XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key), again")
        }
        XCTAssertEqual(io.reads.load(ordering: .relaxed), 1, "seed \(seed): still one read")
        XCTAssertGreaterThan(context.dataCache.usedBytes, 0, "seed \(seed): second uses went into the decoded tier")
        let held = context.dataCache.usedBytes
        for key in keys {
            XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key), third time")
        }
        XCTAssertEqual(context.dataCache.usedBytes, held, "seed \(seed): third uses hit the decoded tier")
        XCTAssertEqual(io.reads.load(ordering: .relaxed), 1, "seed \(seed)")
    }

    /// `dropPageMemory` empties the data tiers and the materialized pages, and the next reads come
    /// from the files again, with windows as in a new process; the index blocks stay.
    func testDroppingPageMemoryMakesTheNextReadsCold() throws {
        let seed = testSeed("ColdPrefetchTests")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let io = CountingIO()
        let context = StorageContext(io: io, dataCacheBytes: 64 << 20, coldPrefetchWindowBytes: 32 << 10)
        let store = try TimelineStore.open(directory: dir, config: config(), context: context)
        defer { store.close() }
        let keys = allKeys()
        for _ in 0..<2 {
            for key in keys { XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key)") }
        }
        let index = context.indexCache.usedBytes
        XCTAssertGreaterThan(context.dataCache.usedBytes + context.materialized.usedBytes, 0, "seed \(seed)")
        context.dropPageMemory()
        XCTAssertEqual(context.dataCache.usedBytes, 0, "seed \(seed)")
        XCTAssertEqual(context.compressedDataCache.usedBytes, 0, "seed \(seed)")
        XCTAssertEqual(context.materialized.usedBytes, 0, "seed \(seed)")
        XCTAssertEqual(context.indexCache.usedBytes, index, "seed \(seed): index blocks stay")
        XCTAssertFalse(context.dataCache.hasEvicted, "seed \(seed)")
        let before = io.reads.load(ordering: .relaxed)
        let key = relKey(rel: 16385, block: 200)
        XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed)")
        XCTAssertEqual(io.reads.load(ordering: .relaxed), before + 1, "seed \(seed): the block is read from its file again")
        for block in [199, 201] {
            let k = relKey(rel: 16385, block: UInt32(block))
            XCTAssertEqual(try store.get(k, at: lsn, redo: AppendRedo()), model.get(k, at: lsn), "seed \(seed)")
        }
        XCTAssertEqual(io.reads.load(ordering: .relaxed), before + 1, "seed \(seed): its neighbours came with its window")
    }

    func testSeenOnceFilterMarksAndResets() {
        let filter = SeenOnceFilter(bits: 1 << 12)  // resets after 512 new marks
        let keys = (0..<300).map { BlockCache.CacheKey(fileId: UInt64($0 % 7), offset: UInt64($0) * 8192) }
        let firstAnswers = keys.map { filter.markSeen($0) }
        XCTAssertLessThan(firstAnswers.filter { $0 }.count, 60, "few false positives while an eighth full at most")
        XCTAssertTrue(keys.allSatisfy { filter.markSeen($0) }, "every marked key is seen (no false negatives)")
        // 512 new marks in all clear the filter: a key marked before counts as unseen again.
        var fresh = 1_000_000
        var newMarks = firstAnswers.filter { !$0 }.count
        while newMarks < 512 {
            if !filter.markSeen(BlockCache.CacheKey(fileId: 99, offset: UInt64(fresh))) { newMarks += 1 }
            fresh += 1
        }
        XCTAssertLessThan(keys.filter { filter.markSeen($0) }.count, 60, "after the reset most keys are unseen again")
    }

    func testADamagedNeighbourInAWindowIsAnErrorWhenUsed() throws {
        let seed = testSeed("ColdPrefetchTests.damaged")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // Find the data block of one value, then damage a byte of it in the file.
        let victim = relKey(rel: 16384, block: 101)
        let neighbour = relKey(rel: 16384, block: 110)
        var handle: BlockHandle?
        var victimPath = ""
        do {
            let store = try TimelineStore.open(directory: dir, config: config(), context: StorageContext(io: PreadEngine()))
            defer { store.close() }
            let name = store.layers().map(\.descriptor.fileName).first { $0.contains("_16384_") }!
            victimPath = dir + "/" + name
            let file = try LayerFile(path: victimPath)
            var entries = LayerEntryIterator(file, fetcher: .uncached(io: PreadEngine(), buffers: AlignedBufferPool()))
            while handle == nil, let entry = try entries.next() {
                if entry.key == victim { handle = entry.block }
            }
        }
        let h = try XCTUnwrap(handle, "seed \(seed)")
        let fd = open(victimPath, O_WRONLY)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var byte: UInt8 = 0x5A
        XCTAssertEqual(pwrite(fd, &byte, 1, off_t(h.offset + 3)), 1)
        close(fd)

        let context = StorageContext(io: PreadEngine(), dataCacheBytes: 64 << 20, materializedCacheBytes: 0, coldPrefetchWindowBytes: 128 << 10)
        let store = try TimelineStore.open(directory: dir, config: config(), context: context)
        defer { store.close() }
        // The neighbour's read brings the damaged block in with its window; the neighbour is right.
        XCTAssertEqual(try store.get(neighbour, at: lsn, redo: AppendRedo()), model.get(neighbour, at: lsn), "seed \(seed)")
        XCTAssertTrue(context.compressedDataCache.hasWindows, "seed \(seed)")
        XCTAssertThrowsError(try store.get(victim, at: lsn, redo: AppendRedo()), "seed \(seed): the damaged block is refused") { error in
            guard let e = error as? StorageError else { return XCTFail("seed \(seed): \(error)") }
            XCTAssertEqual(e.code, .corruption, "seed \(seed): \(e)")
            XCTAssertEqual(e.file, victimPath, "seed \(seed): the error names the file")
            XCTAssertEqual(e.offset, h.offset, "seed \(seed): and the block's offset")
        }
    }

    func testNoWindowIsReadWhenMemoryIsShortOrTheStoreLarge() throws {
        let seed = testSeed("ColdPrefetchTests.short")
        var rng = SeededRandom(seed: seed)
        let (dir, lsn, model) = try makeStore(&rng)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let storeBytes = try FileManager.default.contentsOfDirectory(atPath: dir).reduce(0) { total, name in
            total + ((try FileManager.default.attributesOfItem(atPath: dir + "/" + name)[.size] as? Int) ?? 0)
        }
        // 256 KiB: the compressed share (half) cannot hold a window within 3/4 of it. Twice the
        // store's bytes: a window fits, but the store's files take more than half the compressed
        // share (its whole budget's half, the default). Four times: they take half, windows are read.
        for (budget, expectWindows) in [(256 << 10, false), (storeBytes * 2, false), (storeBytes * 4 + (64 << 10), true)] {
            let context = StorageContext(io: PreadEngine(), dataCacheBytes: budget, materializedCacheBytes: 0, coldPrefetchWindowBytes: 128 << 10)
            let store = try TimelineStore.open(directory: dir, config: config(), context: context)
            defer { store.close() }
            for key in allKeys().shuffled(using: &rng).prefix(200) {
                XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed), budget \(budget): \(key)")
            }
            XCTAssertEqual(context.compressedDataCache.hasWindows, expectWindows,
                           "seed \(seed): budget \(budget), store \(storeBytes) bytes")
        }
    }
}
