import Foundation
@testable import LSM
import Synchronization
import XCTest

/// Compaction (image layers, delta merges) and GC against the plain model:
/// - a seeded model test: many versions over many flushes, then images, merges and GC with a cutoff
///   and retained LSNs; every read at or above the cutoff and at each retained LSN equals the model,
///   reads below the cutoff are refused, and the files and bytes drop; the same after a reopen and
///   after a second round of ingest and compaction;
/// - a crash at every step of the compaction pipeline, then a reopen and the full comparison;
/// - compaction in its own thread while another ingests (with background flushes) and two read.
final class CompactionTests: XCTestCase {
    /// Keys of six chunks: three relation segments (one relation spans two), an SLRU segment, and
    /// metadata.
    static let keys: [Key] = {
        var keys: [Key] = []
        for rel in UInt32(16384)..<16387 {
            for blk in UInt32(0)..<8 { keys.append(relKey(rel: rel, block: blk * 5)) }
            keys.append(relKey(rel: rel, block: ChunkId.sizeKeyBlock))
        }
        for blk in UInt32(131_072)..<131_076 { keys.append(relKey(rel: 16384, block: blk)) }
        for blk in UInt32(0)..<4 { keys.append(Key(field1: 1, field2: 0, field3: 1, field4: 0, field5: 0, field6: blk)) }
        keys.append(Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 1))
        keys.append(Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 2))
        return keys
    }()

    struct SimulatedCrash: Error, CustomStringConvertible {
        var step: CompactionStep
        var description: String { "simulated crash at \(step.rawValue)" }
    }

    private func config(dataBlockBytes: Int = 512) -> StoreConfig {
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        config.dataBlockBytes = dataBlockBytes
        return config
    }

    static func randomValue(_ rng: inout SeededRandom, first: Bool) -> Value {
        func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        let r = Int.random(in: 0..<20, using: &rng)
        if first || r < 2 { return .image(pageImage(&rng, size: Int.random(in: 16...300, using: &rng))) }
        if r < 3 { return .walRecord(bytes(Int.random(in: 1...30, using: &rng)), willInit: true) }
        if r < 8 { return .engineRecord(bytes(Int.random(in: 1...30, using: &rng))) }
        return .walRecord(bytes(Int.random(in: 1...30, using: &rng)))
    }

    /// `records` records of 1-3 keys each (keys from `keys`, with `advance` after each), then a
    /// checkpoint; returns the new disk_consistent_lsn.
    @discardableResult
    static func ingest(_ store: TimelineStore, _ model: inout Model, _ lsn: inout UInt64, _ rng: inout SeededRandom,
                       records: Int, keys: [Key] = CompactionTests.keys, checkpoint: Bool = true) throws -> LSN {
        for _ in 0..<records {
            lsn += UInt64.random(in: 1...40, using: &rng)
            var used = Set<Key>()
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let k = keys.randomElement(using: &rng)!
                guard used.insert(k).inserted else { continue }
                let v = randomValue(&rng, first: model.values[k] == nil)
                try store.put(k, LSN(lsn), v)
                model.put(k, LSN(lsn), v)
            }
            store.advance(to: LSN(lsn))
        }
        return checkpoint ? try store.checkpoint() : store.lastRecordLSN
    }

    /// Compares every key at every LSN of `lsns` with the model (in one batch): LSNs below the
    /// store's cutoff that are not retained must be refused with a message naming both LSNs; all
    /// others must equal the model. Returns the number of mismatches (the first few are reported).
    @discardableResult
    static func verify(_ store: TimelineStore, _ model: Model, lsns: [LSN], retained: Set<LSN>, _ context: String,
                       file: StaticString = #filePath, line: UInt = #line) -> Int {
        let cutoff = store.gcCutoffLSN
        var batch: [(Key, LSN)] = []
        for k in keys { for l in lsns { batch.append((k, l)) } }
        var mismatches = 0
        for (i, r) in store.get(batch, redo: AppendRedo()).enumerated() {
            let (k, l) = batch[i]
            let refused = l < cutoff && !retained.contains(l)
            var problem: String?
            switch r {
            case .success(let v):
                if refused { problem = "a read below the cutoff \(cutoff) answered \(CrashTests.show(v))" }
                else if v != model.get(k, at: l) { problem = "got \(CrashTests.show(v)), want \(CrashTests.show(model.get(k, at: l)))" }
            case .failure(let e):
                if !refused { problem = "error \(e), want \(CrashTests.show(model.get(k, at: l)))" }
                else if e.code != .invalidArgument || !e.message.contains("\(l)") || !e.message.contains("\(cutoff)") {
                    problem = "refused with an unclear error: \(e)"
                }
            }
            if let problem {
                mismatches += 1
                if mismatches <= 5 { XCTFail("\(context): key \(k) at \(l): \(problem)", file: file, line: line) }
            }
        }
        XCTAssertEqual(mismatches, 0, "\(context): lookups that differ from the model", file: file, line: line)
        return mismatches
    }

    /// The LSNs worth reading at: every checkpoint, each retained LSN, the LSNs around the cutoff, and
    /// random ones.
    static func lsnsToCheck(_ checkpoints: [LSN], _ retained: [LSN], cutoff: LSN, maxLSN: UInt64, _ rng: inout SeededRandom) -> [LSN] {
        var lsns = checkpoints + retained + [cutoff, LSN(cutoff.rawValue &- 1), cutoff.advanced(by: 1), LSN(maxLSN), .max, .zero]
        for r in retained { lsns += [LSN(r.rawValue - 1), r.advanced(by: 1)] }
        for _ in 0..<24 { lsns.append(LSN(UInt64.random(in: 0...maxLSN + 10, using: &rng))) }
        return lsns
    }

    static func directoryMatchesManifest(_ store: TimelineStore, _ context: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: store.directory))
        var expected = Set(store.layers().map(\.descriptor.fileName))
        expected.insert(Manifest.fileName)
        XCTAssertEqual(files, expected, "\(context): directory contents (leftover temporary or unnamed files?)", file: file, line: line)
    }

    static func totals(_ store: TimelineStore) -> (files: Int, bytes: UInt64) {
        let l = store.layers()
        return (l.count, l.reduce(0) { $0 + $1.fileSize })
    }

    // MARK: - Model test

    func testCompactionModel() throws {
        let seed = testSeed("CompactionTests.model")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("compact")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        // O_DIRECT in about half the runs: compaction's scans then read aligned, widened ranges.
        let context = StorageContext(io: makeBlockIO(.ioUring), dataCacheBytes: 256 << 10, indexCacheBytes: 64 << 10,
                                     directIO: Bool.random(using: &rng))
        let config = config(dataBlockBytes: [512, 4096][Int.random(in: 0..<2, using: &rng)])
        var store = try TimelineStore.open(directory: dir, config: config, context: context)
        var model = Model()
        var lsn: UInt64 = 0x100
        store.advance(to: LSN(lsn))
        var checkpoints: [LSN] = []
        for _ in 0..<14 {
            checkpoints.append(try Self.ingest(store, &model, &lsn, &rng, records: Int.random(in: 30...90, using: &rng)))
        }
        let before = Self.totals(store)
        XCTAssertGreaterThanOrEqual(store.depth().maxDeltas, 10, "seed \(seed)")
        // Two branch points below the cutoff: one at a checkpoint, one between two.
        let retained = [checkpoints[2], LSN(UInt64.random(in: checkpoints[4].rawValue + 1..<checkpoints[5].rawValue, using: &rng))]
        let middle = checkpoints[7], cutoff = checkpoints[10]

        let images1 = try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 3, at: middle)
        XCTAssertEqual(images1.layersCreated, 6, "seed \(seed): one image per chunk at \(middle)")
        XCTAssertEqual(images1.layersDeleted, 0)
        XCTAssertTrue(images1.created.allSatisfy { $0.kind == .image && $0.lsnStart == middle })
        var lsns = Self.lsnsToCheck(checkpoints, retained, cutoff: cutoff, maxLSN: lsn, &rng)
        Self.verify(store, model, lsns: lsns, retained: [], "seed \(seed): after images at \(middle)")
        // No chunk has 3 deltas above its image at `middle` and at or below `middle` any more.
        XCTAssertEqual(try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 3, at: middle).layersCreated, 0)

        // Merging: the deltas above the image at `middle` (the newest run) become one per chunk; the
        // older ones are left for GC to judge.
        let merged = try store.mergeDeltas(maxDeltasPerChunk: 2)
        XCTAssertGreaterThan(merged.layersCreated, 0, "seed \(seed)")
        XCTAssertEqual(merged.layersCreated, merged.created.count)
        XCTAssertEqual(merged.deleted.count, merged.layersDeleted)
        XCTAssertGreaterThan(merged.layersDeleted, merged.layersCreated, "seed \(seed)")
        XCTAssertTrue(merged.created.allSatisfy { $0.kind == .delta && $0.lsnStart > middle && $0.lsnEnd.rawValue - 1 == checkpoints[13].rawValue },
                      "seed \(seed): \(merged.created)")
        XCTAssertTrue(merged.deleted.allSatisfy { $0.lsnStart > middle }, "seed \(seed): \(merged.deleted)")
        XCTAssertLessThanOrEqual(store.depth().maxDeltas, 1, "seed \(seed)")
        Self.verify(store, model, lsns: lsns, retained: [], "seed \(seed): after merging deltas")
        try Self.directoryMatchesManifest(store, "seed \(seed): after merging deltas")

        // GC: the deltas below `middle` are needed only by the retained LSNs (the newest image at or
        // below the cutoff is at `middle`): those between the last branch point and `middle` go.
        let gc = try store.gc(cutoff: cutoff, retain: retained)
        XCTAssertEqual(gc.cutoff, cutoff)
        XCTAssertEqual(gc.previousCutoff, .zero)
        XCTAssertEqual(gc.retained, retained.sorted())
        XCTAssertGreaterThan(gc.layersDeleted, 0, "seed \(seed)")
        XCTAssertTrue(gc.deleted.allSatisfy { $0.kind == .delta && $0.lsnStart > retained[1] && $0.lsnEnd.rawValue - 1 <= middle.rawValue },
                      "seed \(seed): \(gc.deleted)")
        XCTAssertEqual(store.gcCutoffLSN, cutoff)
        Self.verify(store, model, lsns: lsns, retained: Set(retained), "seed \(seed): after GC")
        try Self.directoryMatchesManifest(store, "seed \(seed): after GC")
        // The deltas kept only for the branch points merge into one per chunk: two deltas per chunk.
        let merged2 = try store.mergeDeltas(maxDeltasPerChunk: 2)
        XCTAssertTrue(!merged2.deleted.isEmpty && merged2.deleted.allSatisfy { $0.lsnStart <= retained[1] },
                      "seed \(seed): \(merged2.deleted)")
        XCTAssertLessThanOrEqual(store.layers().filter { $0.descriptor.kind == .delta }.count, 12, "seed \(seed)")
        Self.verify(store, model, lsns: lsns, retained: Set(retained), "seed \(seed): after the second merge")

        let images2 = try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 1)
        XCTAssertEqual(images2.layersCreated, 6, "seed \(seed): one image per chunk at disk_consistent_lsn")
        XCTAssertEqual(store.depth().maxDeltas, 0, "seed \(seed)")
        Self.verify(store, model, lsns: lsns, retained: Set(retained), "seed \(seed): after images at disk_consistent_lsn")
        let after = Self.totals(store)
        print("CompactionTests.model: \(before.files) files, \(before.bytes) bytes before; \(after.files) files, \(after.bytes) bytes after")
        XCTAssertLessThan(after.files, before.files, "seed \(seed)")
        XCTAssertLessThan(after.bytes, before.bytes, "seed \(seed)")

        // A read just below the cutoff is refused with a sentence naming both LSNs.
        let below = LSN(cutoff.rawValue - 1)
        XCTAssertThrowsError(try store.get(Self.keys[0], at: below, redo: AppendRedo())) { e in
            XCTAssertEqual("\(e)", "invalidArgument: LSN \(below) is below the GC cutoff \(cutoff): the versions older than \(cutoff) were garbage-collected; read at \(cutoff) or later at LSN \(below)")
        }
        // The cutoff never moves back, nor above disk_consistent_lsn.
        XCTAssertEqual(try store.gc(cutoff: middle, retain: retained).cutoff, cutoff)
        XCTAssertEqual(store.gcCutoffLSN, cutoff)

        // Reopen: the cutoff is in the manifest; the retained LSNs are given again by the owner.
        store.close()
        store = try TimelineStore.open(directory: dir, config: config, context: context)
        XCTAssertEqual(store.gcCutoffLSN, cutoff)
        Self.verify(store, model, lsns: lsns, retained: [], "seed \(seed): reopened, no retained LSNs set")
        // A GC cannot make an LSN below the old cutoff readable again (its layers might be gone), but
        // it keeps the layers of every LSN it is given.
        let again = try store.gc(cutoff: cutoff, retain: retained)
        XCTAssertEqual(again.retained, [])
        XCTAssertEqual(again.layersDeleted, 0)
        Self.verify(store, model, lsns: lsns, retained: [], "seed \(seed): reopened, GC without retained LSNs set")
        store.setRetainedLSNs(retained)
        Self.verify(store, model, lsns: lsns, retained: Set(retained), "seed \(seed): reopened")

        // More history, and a second round with a later cutoff that drops one branch point.
        for _ in 0..<6 {
            checkpoints.append(try Self.ingest(store, &model, &lsn, &rng, records: Int.random(in: 30...90, using: &rng)))
        }
        XCTAssertEqual(store.depth().maxDeltas, 6, "seed \(seed)")
        XCTAssertEqual(try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 7).layersCreated, 0)
        // An image inside a delta layer's range: reads above it use only that delta's newer entries,
        // merges split around it, and GC keeps that delta.
        let inside = LSN(checkpoints[15].rawValue + (checkpoints[16].rawValue - checkpoints[15].rawValue) / 2)
        // (A chunk with few keys may have missed two of the three flushes: not every chunk gets one.)
        XCTAssertGreaterThan(try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 2, at: inside).layersCreated, 3)
        lsns = Self.lsnsToCheck(checkpoints + [inside, inside.advanced(by: 1)], retained, cutoff: cutoff, maxLSN: lsn, &rng)
        Self.verify(store, model, lsns: lsns, retained: Set(retained), "seed \(seed): image inside a delta")
        try store.mergeDeltas(maxDeltasPerChunk: 1)
        let cutoff2 = checkpoints[17]
        let retained2 = [retained[1]]
        let gc2 = try store.gc(cutoff: cutoff2, retain: retained2)
        XCTAssertGreaterThan(gc2.layersDeleted, 0, "seed \(seed)")
        XCTAssertTrue(gc2.deleted.allSatisfy { $0.lsnEnd.rawValue - 1 <= inside.rawValue }, "seed \(seed): \(gc2.deleted)")
        lsns = Self.lsnsToCheck(checkpoints + [inside, inside.advanced(by: 1)], retained, cutoff: cutoff2, maxLSN: lsn, &rng)
        Self.verify(store, model, lsns: lsns, retained: Set(retained2), "seed \(seed): second round")
        // Trimming: the merged deltas that straddle the image at `inside` (too little of them below it
        // for the default fraction) are rewritten without their entries at or below it.
        let bytesBefore = Self.totals(store).bytes
        let gc3 = try store.gc(cutoff: cutoff2, retain: retained2, trimFraction: 0)
        XCTAssertGreaterThan(gc3.layersTrimmed, 3, "seed \(seed)")
        XCTAssertEqual(gc3.created.count, gc3.layersTrimmed, "seed \(seed): every straddler had entries above the image")
        XCTAssertTrue(gc3.created.allSatisfy { $0.kind == .delta && $0.lsnStart == inside.advanced(by: 1) }, "seed \(seed): \(gc3.created)")
        XCTAssertEqual(gc3.deleted.count, gc3.layersTrimmed, "seed \(seed): \(gc3.deleted)")
        XCTAssertTrue(gc3.deleted.allSatisfy { $0.kind == .delta && $0.lsnStart <= inside && $0.lsnEnd.rawValue - 1 > inside.rawValue }, "seed \(seed)")
        XCTAssertLessThan(Self.totals(store).bytes, bytesBefore, "seed \(seed)")
        XCTAssertEqual(Int64(bytesBefore) - Int64(Self.totals(store).bytes), gc3.bytesFreed, "seed \(seed)")
        Self.verify(store, model, lsns: lsns, retained: Set(retained2), "seed \(seed): after trimming")
        try Self.directoryMatchesManifest(store, "seed \(seed): after trimming")
        store.close()
        store = try TimelineStore.open(directory: dir, config: config, context: context)
        store.setRetainedLSNs(retained2)
        Self.verify(store, model, lsns: lsns, retained: Set(retained2), "seed \(seed): second round, reopened")
        try Self.directoryMatchesManifest(store, "seed \(seed): second round, reopened")
        store.close()
    }

    /// An image layer holds only keys with a value at its LSN; a chunk with no such key gets none.
    func testImageLayerSkipsKeysWithoutValue() throws {
        let dir = makeTempDir("compact-absent")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try TimelineStore.open(directory: dir, config: config(), context: StorageContext(io: PreadEngine()))
        let a = relKey(rel: 16384, block: 1), b = relKey(rel: 16384, block: 2), c = relKey(rel: 16385, block: 0)
        try store.put(a, LSN(0x100), .image([1]))
        store.advance(to: LSN(0x100))
        try store.checkpoint()
        try store.put(b, LSN(0x200), .image([2]))
        try store.put(c, LSN(0x200), .image([3]))
        store.advance(to: LSN(0x200))
        try store.checkpoint()
        let r = try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 1, at: LSN(0x150))
        XCTAssertEqual(r.created, [.image(ChunkId(containing: a), at: LSN(0x150))])
        let image = try LayerFile(path: dir + "/" + r.created[0].fileName)
        XCTAssertEqual(image.header.entryCount, 1)
        for (k, l, want) in [(a, LSN(0x150), [UInt8]([1])), (b, LSN(0x150), nil), (b, LSN(0x200), [2]), (c, LSN(0x200), [3]), (c, LSN(0x150), nil)] {
            XCTAssertEqual(try store.get(k, at: l, redo: AppendRedo()), want, "key \(k) at \(l)")
        }
        store.close()
    }

    /// A redo that fails for one key while `failing` is set.
    final class FailingRedo: Redo {
        let key: Key
        let failing = Atomic<Bool>(true)
        init(key: Key) { self.key = key }
        func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
            if key == self.key && failing.load(ordering: .relaxed) { throw StorageError(.redo, "injected redo failure") }
            return try AppendRedo().reconstruct(key: key, lsn: lsn, base: base, records: records)
        }
    }

    /// A compaction that fails for real (here: redo refuses a key of the last chunk) leaves no file
    /// behind, changes nothing, and the next attempt succeeds.
    func testFailedImageCreationLeavesNothingBehind() throws {
        let seed = testSeed("CompactionTests.failure")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("compact-fail")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try TimelineStore.open(directory: dir, config: config(), context: StorageContext(io: PreadEngine(), materializedCacheBytes: 0))
        var model = Model()
        var lsn: UInt64 = 0x100
        var checkpoints: [LSN] = []
        for _ in 0..<4 { checkpoints.append(try Self.ingest(store, &model, &lsn, &rng, records: 40)) }
        let last = Self.keys.filter { model.values[$0] != nil }.max()!
        // Its newest value is a record, so building its image needs redo.
        lsn += 1
        try store.put(last, LSN(lsn), .walRecord([9]))
        model.put(last, LSN(lsn), .walRecord([9]))
        store.advance(to: LSN(lsn))
        checkpoints.append(try store.checkpoint())
        let redo = FailingRedo(key: last)
        let layersBefore = store.layers().map(\.descriptor)
        XCTAssertThrowsError(try store.createImageLayers(redo: redo, thresholdDeltas: 1)) { e in
            XCTAssertTrue("\(e)".contains("injected redo failure"), "\(e)")
        }
        XCTAssertEqual(store.layers().map(\.descriptor), layersBefore, "seed \(seed)")
        try Self.directoryMatchesManifest(store, "seed \(seed): after a failed image creation")
        redo.failing.store(false, ordering: .relaxed)
        XCTAssertEqual(try store.createImageLayers(redo: redo, thresholdDeltas: 1).layersCreated, 6, "seed \(seed)")
        Self.verify(store, model, lsns: checkpoints + [.max], retained: [], "seed \(seed): after the retry")
        store.close()
    }

    /// A layer file unlinked by GC stays readable through a layer map snapshot taken before: its
    /// descriptor stays open while the snapshot references it.
    func testSnapshotReadsDeletedLayers() throws {
        let dir = makeTempDir("compact-snapshot")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let context = StorageContext(io: makeBlockIO(.ioUring), directIO: true)
        let store = try TimelineStore.open(directory: dir, config: config(), context: context)
        var rng = SeededRandom(seed: 11)
        var model = Model()
        var lsn: UInt64 = 0x100
        for _ in 0..<4 { try Self.ingest(store, &model, &lsn, &rng, records: 40) }
        try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 1)
        let old = store.map.read { $0 }
        let gc = try store.gc(cutoff: store.diskConsistentLSN, retain: [])
        XCTAssertEqual(gc.layersDeleted, old.allFiles.count - 6)
        let gone = old.allFiles.filter { f in gc.deleted.contains(f.descriptor) }
        XCTAssertEqual(gone.count, gc.layersDeleted)
        for f in gone {
            XCTAssertFalse(FileManager.default.fileExists(atPath: f.path), f.path)
            var entries = LayerEntryIterator(f, fetcher: context.fetcher)
            var values = LayerValueReader(f, fetcher: context.fetcher)
            var n: UInt64 = 0
            while let e = try entries.next() {
                let v = try values.value(e)
                XCTAssertTrue(model.values[e.key]!.contains { $0.0 == e.lsn && $0.1.bytes[...] == v }, "\(f.path): \(e.key)@\(e.lsn)")
                n += 1
            }
            XCTAssertEqual(n, f.header.entryCount)
        }
        // The old snapshot's read path still answers below the new cutoff.
        var states = Self.keys.map { LookupState(key: $0, lsn: LSN(0x180)) }
        try old.plan(&states, fetcher: context.fetcher)
        XCTAssertTrue(states.allSatisfy { $0.refused == nil })
        XCTAssertGreaterThan(states.reduce(0) { $0 + $1.planned.count }, 0)
        store.close()
    }

    // MARK: - Crashes

    /// The failpoint sees the steps of the protocol in order: per new file written, synced, renamed;
    /// then the manifest; then one deletion per replaced file.
    func testFailpointStepOrder() throws {
        let dir = makeTempDir("compact-order")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        final class StepLog: Sendable { let steps = Mutex<[CompactionStep]>([]) }
        let seen = StepLog()
        var config = config()
        config.compactionFailpoint = { s in seen.steps.withLock { $0.append(s) } }
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: PreadEngine()))
        let k = relKey(rel: 16384, block: 0)
        for i in UInt64(1)...3 {
            try store.put(k, LSN(0x100 * i), i == 1 ? .image([1]) : .walRecord([UInt8(i)]))
            store.advance(to: LSN(0x100 * i))
            try store.checkpoint()
        }
        func take() -> [CompactionStep] { seen.steps.withLock { s in defer { s = [] }; return s } }
        let fileSteps: [CompactionStep] = [.layerWritten, .layerSynced, .layerRenamed]
        let manifestSteps: [CompactionStep] = [.manifestWritten, .manifestRenamed]
        try store.mergeDeltas(maxDeltasPerChunk: 1)
        XCTAssertEqual(take(), fileSteps + manifestSteps + Array(repeating: .layerDeleted, count: 3))
        try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 1, at: LSN(0x200))
        XCTAssertEqual(take(), fileSteps + manifestSteps)
        XCTAssertEqual(try store.get(k, at: .max, redo: AppendRedo()), [1, 2, 3])
        // Without trimming, nothing can go: the merged delta holds 0x300.
        try store.gc(cutoff: LSN(0x240), retain: [], trimFraction: nil)
        XCTAssertEqual(take(), manifestSteps)
        XCTAssertEqual(store.layers().count, 2)
        // With it, the merged delta (0x100..0x300) straddles the image at 0x200 and is rewritten
        // without the entries at or below 0x200: one new file, the manifest, the old file deleted.
        let r = try store.gc(cutoff: LSN(0x250), retain: [])
        XCTAssertEqual(take(), fileSteps + manifestSteps + [.layerDeleted])
        XCTAssertEqual(r.layersTrimmed, 1)
        XCTAssertEqual(r.created, [LayerDescriptor(kind: .delta, chunk: ChunkId(containing: k), lsnStart: LSN(0x201), lsnEnd: LSN(0x301))])
        XCTAssertEqual(store.layers().count, 2)
        XCTAssertEqual(try store.get(k, at: .max, redo: AppendRedo()), [1, 2, 3])
        XCTAssertEqual(try store.get(k, at: LSN(0x250), redo: AppendRedo()), [1, 2])
        store.close()
    }

    /// Throws at the `occurrence`-th call (1-based) of `step`; counts every call.
    final class Crasher: Sendable {
        let step: CompactionStep?
        let occurrence: Int
        let calls = Mutex<[CompactionStep: Int]>([:])
        init(step: CompactionStep?, occurrence: Int) {
            self.step = step
            self.occurrence = occurrence
        }
        func call(_ s: CompactionStep) throws {
            try calls.withLock { c in
                c[s, default: 0] += 1
                if s == step && c[s] == occurrence { throw SimulatedCrash(step: s) }
            }
        }
    }

    /// The same store every time for one seed: 12 checkpoints over all chunks.
    private func buildStore(_ dir: String, seed: UInt64, crasher: Crasher?) throws -> (TimelineStore, Model, [LSN], UInt64) {
        var rng = SeededRandom(seed: seed)
        var config = config()
        if let crasher { config.compactionFailpoint = { try crasher.call($0) } }
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: PreadEngine()))
        var model = Model()
        var lsn: UInt64 = 0x100
        store.advance(to: LSN(lsn))
        var checkpoints: [LSN] = []
        for _ in 0..<12 { checkpoints.append(try Self.ingest(store, &model, &lsn, &rng, records: 40)) }
        return (store, model, checkpoints, lsn)
    }

    /// Images between two middle checkpoints, merges of the newest deltas, GC (which trims the merged
    /// deltas that straddle those images), merges of the deltas kept for the branch points, images at
    /// disk_consistent_lsn: every kind of step.
    @discardableResult
    private func pipeline(_ store: TimelineStore, _ checkpoints: [LSN], retained: [LSN]) throws -> GCReport {
        let middle = LSN(checkpoints[5].rawValue + (checkpoints[6].rawValue - checkpoints[5].rawValue) / 2)
        if store.gcCutoffLSN <= middle {
            try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 2, at: middle)
        }
        try store.mergeDeltas(maxDeltasPerChunk: 2)
        let gc = try store.gc(cutoff: checkpoints[9], retain: retained, trimFraction: 0)
        try store.mergeDeltas(maxDeltasPerChunk: 2)
        try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 1)
        return gc
    }

    private func runCrashStep(_ step: CompactionStep) throws {
        let seed = testSeed("CompactionTests.crash.\(step.rawValue)")
        var rng = SeededRandom(seed: seed ^ 0x5EED)
        // A run without a crash: how often each step happens, and the layers it ends with.
        let dryDir = makeTempDir("compact-dry")
        defer { try? FileManager.default.removeItem(atPath: dryDir) }
        let counter = Crasher(step: nil, occurrence: 0)
        let (dry, _, checkpoints, _) = try buildStore(dryDir, seed: seed, crasher: counter)
        let retained = [checkpoints[1], LSN(checkpoints[3].rawValue + 7)]
        XCTAssertGreaterThan(try pipeline(dry, checkpoints, retained: retained).layersTrimmed, 0, "seed \(seed)")
        let finalLayers = dry.layers().map(\.descriptor)
        dry.close()
        let total = counter.calls.withLock { $0[step] ?? 0 }
        XCTAssertGreaterThan(total, 0, "seed \(seed): the pipeline never reaches \(step.rawValue)")
        for occurrence in Set([1, (total + 1) / 2, total]).sorted() where occurrence >= 1 {
            let context = "seed \(seed) crash at \(step.rawValue) #\(occurrence) of \(total)"
            let dir = makeTempDir("compact-crash")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let crasher = Crasher(step: step, occurrence: occurrence)
            let (store, model, _, maxLSN) = try buildStore(dir, seed: seed, crasher: crasher)
            do {
                try pipeline(store, checkpoints, retained: retained)
                XCTFail("\(context): the failpoint never fired")
            } catch is SimulatedCrash {}
            store.close()
            let reopened = try TimelineStore.open(directory: dir, config: config(), context: StorageContext(io: PreadEngine()))
            reopened.setRetainedLSNs(retained)
            XCTAssertEqual(reopened.diskConsistentLSN, checkpoints.last!, context)
            let lsns = Self.lsnsToCheck(checkpoints, retained, cutoff: checkpoints[9], maxLSN: maxLSN, &rng)
            Self.verify(reopened, model, lsns: lsns, retained: Set(retained), context + ", after recovery")
            try Self.directoryMatchesManifest(reopened, context + ", after recovery")
            // Compaction completes after the crash and ends where the run without a crash did.
            try pipeline(reopened, checkpoints, retained: retained)
            XCTAssertEqual(reopened.gcCutoffLSN, checkpoints[9], context)
            XCTAssertEqual(reopened.layers().map(\.descriptor), finalLayers, context + ", compacted again")
            Self.verify(reopened, model, lsns: lsns, retained: Set(retained), context + ", compacted again")
            try Self.directoryMatchesManifest(reopened, context + ", compacted again")
            reopened.close()
        }
    }

    func testCrashAtLayerWritten() throws { try runCrashStep(.layerWritten) }
    func testCrashAtLayerSynced() throws { try runCrashStep(.layerSynced) }
    func testCrashAtLayerRenamed() throws { try runCrashStep(.layerRenamed) }
    func testCrashAtManifestWritten() throws { try runCrashStep(.manifestWritten) }
    func testCrashAtManifestRenamed() throws { try runCrashStep(.manifestRenamed) }
    func testCrashAtLayerDeleted() throws { try runCrashStep(.layerDeleted) }

    // MARK: - Concurrency

    final class Shared: Sendable {
        struct State {
            var model = Model()
            var complete = LSN.zero
            var retained: LSN?
        }
        let state = Mutex(State())
        let stop = Atomic<Bool>(false)
        let failures = Mutex<[String]>([])
        let reads = Atomic<Int>(0)
        let cycles = Atomic<Int>(0)
        let deleted = Atomic<Int>(0)
        func fail(_ s: String) { failures.withLock { $0.append(s) } }
    }

    func testCompactionConcurrentWithIngestAndReads() throws {
        let seed = testSeed("CompactionTests.concurrent")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("compact-conc")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = StoreConfig()
        config.checkpointDistanceBytes = 24 << 10
        config.maxFrozenLayers = 2
        config.dataBlockBytes = 1024
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: makeBlockIO(.ioUring), dataCacheBytes: 1 << 20))
        let shared = Shared()
        let redo = AppendRedo()

        let compactor = Thread {
            var n = 0
            while !shared.stop.load(ordering: .acquiring) {
                do {
                    try store.createImageLayers(redo: redo, thresholdDeltas: 2)
                    let m = try store.mergeDeltas(maxDeltasPerChunk: 3)
                    let dcl = store.diskConsistentLSN
                    let retained = shared.state.withLock { $0.retained }
                    let g = try store.gc(cutoff: LSN(dcl.rawValue > 3000 ? dcl.rawValue - 3000 : 0), retain: retained.map { [$0] } ?? [])
                    shared.deleted.add(m.layersDeleted + g.layersDeleted, ordering: .relaxed)
                } catch {
                    shared.fail("compaction \(n): \(error)")
                }
                n += 1
                shared.cycles.add(1, ordering: .relaxed)
                usleep(2000)
            }
        }
        var readers: [Thread] = []
        for r in 0..<2 {
            let readerSeed = seed &+ UInt64(r + 1)
            readers.append(Thread {
                var rng = SeededRandom(seed: readerSeed)
                while !shared.stop.load(ordering: .acquiring) {
                    let (model, complete, retained) = shared.state.withLock { ($0.model, $0.complete, $0.retained) }
                    guard complete > .zero else { usleep(100); continue }
                    let cutoff = store.gcCutoffLSN
                    var reqs: [(Key, LSN)] = []
                    for _ in 0..<8 {
                        let at = if let retained, Int.random(in: 0..<5, using: &rng) == 0 { retained }
                                 else { LSN(UInt64.random(in: max(cutoff.rawValue, 0x100)...max(cutoff.rawValue, complete.rawValue), using: &rng)) }
                        reqs.append((Self.keys.randomElement(using: &rng)!, at))
                    }
                    for (i, res) in store.get(reqs, redo: redo).enumerated() {
                        let (k, at) = reqs[i]
                        switch res {
                        case .success(let v):
                            if v != model.get(k, at: at) { shared.fail("key \(k) at \(at): got \(CrashTests.show(v)), want \(CrashTests.show(model.get(k, at: at)))") }
                        case .failure(let e):
                            // The cutoff may have moved past the LSN since it was chosen.
                            if !(e.code == .invalidArgument && at < store.gcCutoffLSN && at != retained) { shared.fail("key \(k) at \(at): \(e)") }
                        }
                    }
                    shared.reads.add(reqs.count, ordering: .relaxed)
                }
            })
        }
        compactor.start()
        for t in readers { t.start() }

        var model = Model()
        var lsn: UInt64 = 0x100
        store.advance(to: LSN(lsn))
        let started = Date()
        var records = 0
        while records < 10000 && Date().timeIntervalSince(started) < 20 {
            lsn += UInt64.random(in: 1...40, using: &rng)
            var used = Set<Key>()
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let k = Self.keys.randomElement(using: &rng)!
                guard used.insert(k).inserted else { continue }
                let v = Self.randomValue(&rng, first: model.values[k] == nil)
                try store.put(k, LSN(lsn), v)
                model.put(k, LSN(lsn), v)
            }
            store.advance(to: LSN(lsn))
            records += 1
            if records % 25 == 0 {
                let (m, l) = (model, LSN(lsn))
                shared.state.withLock { s in
                    s.model = m
                    s.complete = l
                    // A branch point early in the history, kept readable by every GC.
                    if records == 1000 { s.retained = l }
                }
            }
        }
        try store.checkpoint()
        // Let the compactor catch up with the last flushes, then stop everyone.
        let deadline = Date().addingTimeInterval(10)
        let target = shared.cycles.load(ordering: .relaxed) + 3
        while shared.cycles.load(ordering: .relaxed) < target && Date() < deadline { usleep(1000) }
        shared.stop.store(true, ordering: .releasing)
        while !compactor.isFinished || readers.contains(where: { !$0.isFinished }) { usleep(1000) }
        let failures = shared.failures.withLock { $0 }
        for f in failures.prefix(5) { XCTFail("seed \(seed): \(f)") }
        XCTAssertEqual(failures.count, 0, "seed \(seed): failures in the compactor or readers")
        let cycles = shared.cycles.load(ordering: .relaxed), reads = shared.reads.load(ordering: .relaxed)
        print("CompactionTests.concurrent: \(records) records, \(cycles) compaction cycles, \(shared.deleted.load(ordering: .relaxed)) layers deleted, \(reads) reads, \(store.layers().count) layers left, depth \(store.depth().maxDeltas)")
        XCTAssertGreaterThan(cycles, 3, "seed \(seed)")
        XCTAssertGreaterThan(shared.deleted.load(ordering: .relaxed), 0, "seed \(seed)")
        XCTAssertGreaterThan(store.gcCutoffLSN, .zero, "seed \(seed)")
        // Everything at or above the cutoff and at the branch point, after the dust settles.
        let retained = shared.state.withLock { $0.retained }
        var lsns = [LSN(lsn), .max, store.gcCutoffLSN] + (retained.map { [$0] } ?? [])
        for _ in 0..<30 { lsns.append(LSN(UInt64.random(in: store.gcCutoffLSN.rawValue...lsn, using: &rng))) }
        Self.verify(store, model, lsns: lsns, retained: Set(retained.map { [$0] } ?? []), "seed \(seed): final")
        store.close()
        // The manifest lost no flush's or compaction's change: a reopened store answers the same.
        var reopenConfig = config
        reopenConfig.backgroundFlush = false
        let reopened = try TimelineStore.open(directory: dir, config: reopenConfig, context: StorageContext(io: PreadEngine()))
        reopened.setRetainedLSNs(retained.map { [$0] } ?? [])
        XCTAssertEqual(reopened.diskConsistentLSN, LSN(lsn), "seed \(seed)")
        Self.verify(reopened, model, lsns: lsns, retained: Set(retained.map { [$0] } ?? []), "seed \(seed): final, reopened")
        try Self.directoryMatchesManifest(reopened, "seed \(seed): final, reopened")
        reopened.close()
    }
}

/// A measurement, not a check: run with COMPACTION_BENCH=1. One relation segment of 8 KiB pages,
/// then 20 flushes of small records; times merging, image creation and GC, and counts the layers a
/// read visits before and after.
final class CompactionBench: XCTestCase {
    func testCompactionThroughput() throws {
        guard ProcessInfo.processInfo.environment["COMPACTION_BENCH"] == "1" else { throw XCTSkip("set COMPACTION_BENCH=1") }
        let pages = Int(ProcessInfo.processInfo.environment["COMPACTION_BENCH_PAGES"] ?? "") ?? 4096
        var rng = SeededRandom(seed: 7)
        let dir = makeTempDir("compact-bench")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        let store = try TimelineStore.open(directory: dir, config: config,
                                           context: StorageContext(io: makeBlockIO(.ioUring), materializedCacheBytes: 0))
        var lsn: UInt64 = 0x100
        for b in 0..<pages {
            lsn += 8
            try store.put(relKey(rel: 16384, block: UInt32(b)), LSN(lsn), .image(pageImage(&rng)))
        }
        store.advance(to: LSN(lsn))
        try store.checkpoint()
        for _ in 0..<20 {
            for _ in 0..<pages / 2 {
                lsn += 8
                let bytes = (0..<64).map { _ in UInt8.random(in: 0...255, using: &rng) }
                try store.put(relKey(rel: 16384, block: UInt32.random(in: 0..<UInt32(pages), using: &rng)), LSN(lsn), .walRecord(bytes))
            }
            store.advance(to: LSN(lsn))
            try store.checkpoint()
        }
        func readCost() -> String {
            var stats = ReadStats()
            let reqs = (0..<256).map { _ in (relKey(rel: 16384, block: UInt32.random(in: 0..<UInt32(pages), using: &rng)), LSN.max) }
            _ = store.get(reqs, redo: AppendRedo(), stats: &stats)
            return String(format: "%.1f layers, %.1f records", Double(stats.layersVisited) / Double(reqs.count), Double(stats.recordsApplied) / Double(reqs.count))
        }
        func seconds(_ body: () throws -> Void) rethrows -> Double {
            let t = Date()
            try body()
            return Date().timeIntervalSince(t)
        }
        let before = CompactionTests.totals(store)
        let costBefore = readCost()
        var images = CompactionReport(), merged = CompactionReport(), gc = GCReport()
        let tMerge = try seconds { merged = try store.mergeDeltas(maxDeltasPerChunk: 1) }
        let costMerged = readCost()
        let tImages = try seconds { images = try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 1) }
        let tGC = try seconds { gc = try store.gc(cutoff: store.diskConsistentLSN, retain: []) }
        let after = CompactionTests.totals(store)
        let mb = { (b: UInt64) in Double(b) / 1e6 }
        print(String(format: "CompactionBench: %d pages, %d layers / %.1f MB before, %d / %.1f MB after", pages, before.files, mb(before.bytes), after.files, mb(after.bytes)))
        print(String(format: "CompactionBench: images %.1f MB in %.2f s (%.1f MB/s); merge %.1f MB in %.2f s (%.1f MB/s); GC %d layers, %.1f MB in %.3f s",
                     mb(images.bytesWritten), tImages, mb(images.bytesWritten) / tImages, mb(merged.bytesWritten), tMerge, mb(merged.bytesWritten) / tMerge,
                     gc.layersDeleted, mb(gc.bytesDeleted), tGC))
        print("CompactionBench: per read \(costBefore) before, \(costMerged) after the merge, \(readCost()) after the images")
    }
}

/// Image creation by bytes of deltas (image_creation_bytes).
final class ImageBudgetTests: XCTestCase {
    /// The byte budget: deltas above the budget get an image although the count threshold is far
    /// away; at the budget they do not.
    func testImageCreationByteBudget() throws {
        let dir = makeTempDir("budget")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = StoreConfig()
        config.backgroundFlush = false
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: makeBlockIO(.pread)))
        defer { store.close() }
        try store.put(relKey(rel: 7, block: 0), LSN(0x100), .image([UInt8](repeating: 1, count: 8192)))
        store.advance(to: LSN(0x100))
        try store.checkpoint()
        for i in 1...50 {
            try store.put(relKey(rel: 7, block: 0), LSN(0x100 + UInt64(i)), .walRecord([UInt8](repeating: UInt8(i), count: 100)))
            store.advance(to: LSN(0x100 + UInt64(i)))
        }
        try store.checkpoint()
        // Both flushes made delta layers (an image value is stored in a delta layer too).
        let size = store.layers().filter { $0.descriptor.kind == .delta }.reduce(UInt64(0)) { $0 + $1.fileSize }
        XCTAssertGreaterThan(size, 0)
        XCTAssertEqual(try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 99, thresholdBytes: size).layersCreated, 0)
        XCTAssertEqual(try store.createImageLayers(redo: AppendRedo(), thresholdDeltas: 99, thresholdBytes: size - 1).layersCreated, 1)
        XCTAssertEqual(store.depth().maxDeltas, 0)
        XCTAssertEqual(try store.get(relKey(rel: 7, block: 0), at: LSN(0x132), redo: AppendRedo())?.count, 8192 + 50 * 100)
    }
}
