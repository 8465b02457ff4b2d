import Foundation
@testable import LSM
import Synchronization
import XCTest

/// The data cache's two tiers: decoded blocks, and blocks as on disk (`compressedDataCache`) for
/// those that compress at least 2:1, both within one budget (`CacheLoan`).
final class CompressedCacheTests: XCTestCase {
    func testLoanShrinksTheLenderAndIsReturnedOnClear() {
        let loan = CacheLoan()
        let lender = BlockCache(capacityBytes: 64 << 10, minimumShardBytes: 64 << 10, lending: loan)
        let borrower = BlockCache(capacityBytes: 32 << 10, minimumShardBytes: 32 << 10, borrowing: loan)
        for i in 0..<16 {
            lender.insert(.init(fileId: 1, offset: UInt64(i) * 4096), [UInt8](repeating: 1, count: 4000))
        }
        XCTAssertLessThanOrEqual(lender.usedBytes, 64 << 10)
        XCTAssertGreaterThan(lender.usedBytes, 48 << 10, "the lender filled its whole budget while nothing was lent")
        for i in 0..<6 {
            borrower.insert(.init(fileId: 2, offset: UInt64(i) * 4096), [UInt8](repeating: 2, count: 4000))
        }
        XCTAssertEqual(loan.borrowedBytes, borrower.usedBytes, "the loan is what the borrower holds")
        XCTAssertGreaterThan(loan.borrowedBytes, 20 << 10)
        // The lender's next insert brings it under its capacity minus the loan.
        lender.insert(.init(fileId: 1, offset: 1 << 30), [UInt8](repeating: 3, count: 4000))
        XCTAssertLessThanOrEqual(lender.usedBytes + loan.borrowedBytes, 64 << 10, "both tiers together stay within one budget")
        XCTAssertNotNil(lender.get(.init(fileId: 1, offset: 1 << 30)), "the new block is in")
        // The borrower never exceeds its own cap, whatever the lender has.
        for i in 0..<40 {
            borrower.insert(.init(fileId: 3, offset: UInt64(i) * 4096), [UInt8](repeating: 4, count: 4000))
        }
        XCTAssertLessThanOrEqual(borrower.usedBytes, 32 << 10)
        XCTAssertEqual(loan.borrowedBytes, borrower.usedBytes)
        borrower.clear()
        XCTAssertEqual(loan.borrowedBytes, 0, "clearing the borrower returns the loan")
    }

    /// A store in `dir` of `pages` page images that compress well (mostly zeros), one data block
    /// each, all in layer files; returns the LSN of the last and the model of what was written.
    private func writePages(_ pages: Int, in dir: String, _ rng: inout SeededRandom) throws -> (lsn: LSN, model: Model) {
        var config = StoreConfig()
        config.backgroundFlush = false
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: PreadEngine()))
        defer { store.close() }
        var model = Model()
        var lsn: UInt64 = 0x1000
        for block in 0..<pages {
            lsn += 8
            var page = [UInt8](repeating: 0, count: 8192)
            for i in 0..<64 { page[100 + i] = UInt8.random(in: 0...255, using: &rng) }
            let key = relKey(rel: 16384, block: UInt32(block))
            try store.put(key, LSN(lsn), .image(page))
            model.put(key, LSN(lsn), .image(page))
        }
        store.advance(to: LSN(lsn))
        _ = try store.checkpoint()
        return (LSN(lsn), model)
    }

    /// (Without cold prefetch, whose windows the compressed tier holds: ColdPrefetchTests.)
    func testAStoreThatFitsTheDecodedTierLeavesTheCompressedTierEmpty() throws {
        let seed = testSeed("CompressedCacheTests.fits")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("compressed-cache-fits")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (lsn, model) = try writePages(100, in: dir, &rng)
        var config = StoreConfig()
        config.backgroundFlush = false
        let store = try TimelineStore.open(directory: dir, config: config,
                                           context: StorageContext(io: PreadEngine(), dataCacheBytes: 8 << 20, materializedCacheBytes: 0,
                                                                   coldPrefetchWindowBytes: 0))
        defer { store.close() }
        for _ in 0..<2 {
            for block in 0..<100 {
                let key = relKey(rel: 16384, block: UInt32(block))
                XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key)")
            }
        }
        XCTAssertFalse(store.context.dataCache.hasEvicted, "seed \(seed)")
        XCTAssertEqual(store.context.compressedDataCache.usedBytes, 0, "seed \(seed): nothing lent while the decoded tier has room")
    }

    func testReadsThatMissTheDecodedTierAreServedFromTheCompressedTier() throws {
        let seed = testSeed("CompressedCacheTests")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("compressed-cache")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (lsn, model) = try writePages(400, in: dir, &rng)
        var config = StoreConfig()
        config.backgroundFlush = false
        // A decoded tier far smaller than the 3.2 MB of pages; compressed, they all fit. No cold
        // windows: this is about blocks read one by one (with windows, the whole store comes in
        // through them and its blocks stay out of the decoded tier until their second use).
        let io = CountingIO()
        let context = StorageContext(io: io, dataCacheBytes: 1 << 20, materializedCacheBytes: 0, compressedCacheFraction: 0.5,
                                     coldPrefetchWindowBytes: 0)
        let store = try TimelineStore.open(directory: dir, config: config, context: context)
        defer { store.close() }
        let keys = (0..<400).map { relKey(rel: 16384, block: UInt32($0)) }
        for key in keys {
            XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key), first pass")
        }
        XCTAssertTrue(context.dataCache.hasEvicted, "seed \(seed): the decoded tier filled up")
        XCTAssertGreaterThan(context.compressedDataCache.usedBytes, 0, "seed \(seed): blocks read from disk after that went into the compressed tier")
        XCTAssertLessThanOrEqual(context.dataCache.usedBytes + context.compressedDataCache.usedBytes, 1 << 20, "seed \(seed): one budget")
        // The blocks read before the decoded tier was full come from disk once more, and go into
        // the compressed tier then. While the decoded tier thrashes, blocks read from disk skip it
        // (`decodedTierBypassMissPermille`), and it gives its bytes back to the compressed tier's
        // loan by evicting: a block it held then comes from disk once more, in a later pass. Each
        // pass reads fewer blocks from the files, and within a few passes none.
        var readsPerPass: [Int] = []
        var compressedHitsInLastPass = 0
        for pass in 2...8 {
            let reads = io.reads.load(ordering: .relaxed), compressedHits = context.compressedDataCache.hitCount
            for key in keys.shuffled(using: &rng) {
                XCTAssertEqual(try store.get(key, at: lsn, redo: AppendRedo()), model.get(key, at: lsn), "seed \(seed): \(key), pass \(pass)")
            }
            XCTAssertLessThanOrEqual(context.dataCache.usedBytes + context.compressedDataCache.usedBytes, 1 << 20, "seed \(seed): one budget, pass \(pass)")
            readsPerPass.append(io.reads.load(ordering: .relaxed) - reads)
            compressedHitsInLastPass = context.compressedDataCache.hitCount - compressedHits
            if readsPerPass.last == 0 { break }
        }
        XCTAssertEqual(readsPerPass.last, 0, "seed \(seed): a pass read nothing from the files (reads per pass from the second: \(readsPerPass))")
        XCTAssertLessThan(readsPerPass.count, 6, "seed \(seed): within a few passes (\(readsPerPass))")
        XCTAssertGreaterThan(compressedHitsInLastPass, 200, "seed \(seed): most of that pass came from the compressed tier")
    }
}
