import Foundation
@testable import LSM
import Synchronization
import XCTest

/// A crash at every step of a flush, for layers of several chunks, recovers to the last completed
/// checkpoint.
///
/// Each case: rounds of random puts (touching all five chunks) and a checkpoint, with the failpoint
/// throwing at one step of one flush, for one chunk's layer (first, middle or last of the five) for
/// the layer steps. The store is then dropped and the directory reopened without a failpoint:
/// - up to and including `manifestWritten` the new manifest never replaced the old one, so the
///   state is the previous checkpoint's (or empty, with the store's initial empty manifest, if the crash hit
///   the first flush);
/// - at `manifestRenamed` the new manifest is in place (only the directory fsync is missing), so the
///   flush counts as done: the state is the crashing checkpoint's.
/// The reopened store must equal the model truncated to that LSN at every key and many LSNs, report
/// it as disk_consistent_lsn, name exactly the layers of the completed flushes, and leave no
/// temporary or unnamed layer file behind. Then it must keep working: more rounds, a checkpoint, a
/// reopen, and the same comparison.
final class CrashTests: XCTestCase {
    struct SimulatedCrash: Error, CustomStringConvertible {
        var step: FlushStep
        var description: String { "simulated crash at \(step.rawValue)" }
    }

    /// Throws at the `occurrence`-th call (1-based) of `step` within flush number `flush` (0-based).
    /// Flushes are counted by their `manifestRenamed` calls.
    final class Crasher: Sendable {
        struct State {
            var flushesSeen = 0
            var calls: [FlushStep: Int] = [:]
            var fired = false
        }

        let step: FlushStep
        let occurrence: Int
        let flush: Int
        let state = Mutex(State())

        init(step: FlushStep, occurrence: Int, flush: Int) {
            self.step = step
            self.occurrence = occurrence
            self.flush = flush
        }

        var fired: Bool { state.withLock { $0.fired } }

        func call(_ s: FlushStep) throws {
            try state.withLock { st in
                st.calls[s, default: 0] += 1
                if !st.fired && st.flushesSeen == flush && s == step && st.calls[s] == occurrence {
                    st.fired = true
                    throw SimulatedCrash(step: s)
                }
                if s == .manifestRenamed {
                    st.flushesSeen += 1
                    st.calls = [:]
                }
            }
        }
    }

    static let chunkCount = 5
    static let keys: [Key] = (0..<chunkCount).flatMap { c in
        (0..<12).map { b in relKey(rel: 16384 + UInt32(c), block: UInt32(b * 3)) }
    }

    private func config(_ crasher: Crasher?, writers: Int = 1, sync: FlushSync = .fileSystem) -> StoreConfig {
        var config = StoreConfig()
        config.flushWriters = writers
        config.flushSync = sync
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        config.dataBlockBytes = 512
        if let crasher { config.failpoint = { try crasher.call($0) } }
        return config
    }

    private func randomValue(_ rng: inout SeededRandom, first: Bool) -> Value {
        func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        let r = Int.random(in: 0..<10, using: &rng)
        if first || r < 2 { return .image(pageImage(&rng, size: Int.random(in: 32...400, using: &rng))) }
        if r < 3 { return .walRecord(bytes(Int.random(in: 1...40, using: &rng)), willInit: true) }
        if r < 6 { return .engineRecord(bytes(Int.random(in: 1...40, using: &rng))) }
        return .walRecord(bytes(Int.random(in: 1...40, using: &rng)))
    }

    /// One round: a value in every chunk, then random records of 1-3 keys each; sometimes an advance.
    private func round(_ store: TimelineStore, _ model: inout Model, _ lsn: inout UInt64, _ rng: inout SeededRandom) throws {
        var order = Array(0..<Self.chunkCount)
        order.shuffle(using: &rng)
        for c in order {
            lsn += UInt64.random(in: 1...40, using: &rng)
            let k = Self.keys[c * 12 + Int.random(in: 0..<12, using: &rng)]
            let v = randomValue(&rng, first: model.values[k] == nil)
            try store.put(k, LSN(lsn), v)
            model.put(k, LSN(lsn), v)
        }
        for _ in 0..<Int.random(in: 20...60, using: &rng) {
            lsn += UInt64.random(in: 1...40, using: &rng)
            var used = Set<Key>()
            for _ in 0..<Int.random(in: 1...3, using: &rng) {
                let k = Self.keys.randomElement(using: &rng)!
                guard used.insert(k).inserted else { continue }
                let v = randomValue(&rng, first: model.values[k] == nil)
                try store.put(k, LSN(lsn), v)
                model.put(k, LSN(lsn), v)
            }
        }
        if Bool.random(using: &rng) {
            lsn += UInt64.random(in: 1...100, using: &rng)
            store.advance(to: LSN(lsn))
        }
    }

    /// Compares every key at the interesting LSNs (and random ones) with the model, one by one and in
    /// a batch; checks disk_consistent_lsn and the directory's contents.
    private func verify(_ store: TimelineStore, _ model: Model, dcl: LSN, layerCount: Int, lsns interesting: [LSN],
                        maxLSN: UInt64, _ rng: inout SeededRandom, _ context: String) throws {
        XCTAssertEqual(store.diskConsistentLSN, dcl, "\(context): disk_consistent_lsn")
        XCTAssertEqual(store.layers().count, layerCount, "\(context): layers named by the manifest")
        let files = Set(try FileManager.default.contentsOfDirectory(atPath: store.directory))
        var expected = Set(store.layers().map(\.descriptor.fileName))
        // A store writes its (empty) manifest when it is created, so one always exists.
        expected.insert(Manifest.fileName)
        XCTAssertEqual(files, expected, "\(context): directory contents (leftover temporary or unnamed files?)")
        var lsns = interesting + [dcl, dcl.advanced(by: 1), LSN(maxLSN), .max, .zero]
        for _ in 0..<8 { lsns.append(LSN(UInt64.random(in: 0...maxLSN + 10, using: &rng))) }
        let redo = AppendRedo()
        var batch: [(Key, LSN)] = []
        var mismatches = 0
        for k in Self.keys {
            for l in lsns {
                batch.append((k, l))
                let want = model.get(k, at: l)
                let got = Result { try store.get(k, at: l, redo: redo) }
                if (try? got.get()) != want {
                    mismatches += 1
                    if mismatches <= 5 { XCTFail("\(context): key \(k) at \(l): got \(Self.show(got)), want \(Self.show(want))") }
                }
            }
        }
        for (i, r) in store.get(batch, redo: redo).enumerated() {
            let want = model.get(batch[i].0, at: batch[i].1)
            if (try? r.get()) != want {
                mismatches += 1
                if mismatches <= 5 { XCTFail("\(context): batch: key \(batch[i].0) at \(batch[i].1): got \(Self.show(r)), want \(Self.show(want))") }
            }
        }
        XCTAssertEqual(mismatches, 0, "\(context): lookups that differ from the model")
    }

    /// A short description of a lookup's result (length and a hash, not the bytes).
    static func show<E>(_ r: Result<[UInt8]?, E>) -> String {
        switch r {
        case .success(let v): return show(v)
        case .failure(let e): return "error \(e)"
        }
    }

    static func show(_ v: [UInt8]?) -> String {
        guard let v else { return "nil" }
        return "\(v.count) bytes (crc32c \(crc32c(0, v)))"
    }

    /// One crash case. Returns normally; failures are recorded with the seed.
    ///
    /// With one flush writer the files a crash leaves are exactly those of the steps before it. With
    /// several, the other writers finish the file they are on, so only recovery is checked.
    private func runCase(step: FlushStep, occurrence: Int, crashFlush: Int, replay: Bool, seed: UInt64, writers: Int = 1,
                         sync: FlushSync) throws {
        var rng = SeededRandom(seed: seed &+ UInt64(crashFlush * 1000 + occurrence * 10) &+ UInt64(FlushStep.allCases.firstIndex(of: step)!))
        let context0 = "seed \(seed) crash at \(step.rawValue) #\(occurrence) of flush \(crashFlush)\(replay ? " (replaying the lost records)" : ""), \(writers) flush writer(s), flush_sync \(sync.rawValue)"
        let dir = makeTempDir("crash")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let io = PreadEngine()
        let crasher = Crasher(step: step, occurrence: occurrence, flush: crashFlush)
        let store = try TimelineStore.open(directory: dir, config: config(crasher, writers: writers, sync: sync), context: StorageContext(io: io))
        var model = Model()
        var lsn: UInt64 = 0x100
        store.advance(to: LSN(lsn))
        var completed: [LSN] = []
        var recovered: LSN = .zero
        var crashed = false
        var crashTarget = LSN.zero
        for r in 0...crashFlush {
            try round(store, &model, &lsn, &rng)
            let target = store.lastRecordLSN
            crashTarget = target
            do {
                let got = try store.checkpoint()
                XCTAssertEqual(got, target, "\(context0): checkpoint \(r)")
                XCTAssertFalse(crasher.fired, "\(context0): checkpoint \(r) returned after the failpoint threw")
                completed.append(target)
            } catch let e as SimulatedCrash {
                XCTAssertEqual(r, crashFlush, "\(context0): crashed in checkpoint \(r)")
                XCTAssertEqual(e.step, step)
                crashed = true
                // After manifestRenamed the new manifest is in place: the flush is durable.
                if step == .manifestRenamed { completed.append(target) }
            }
        }
        XCTAssertTrue(crashed, "\(context0): the failpoint never fired")
        // What the crash left behind, before recovery cleans it up.
        let left = try FileManager.default.contentsOfDirectory(atPath: dir)
        let tmps = left.filter { $0.hasSuffix(".tmp") }
        let layerFiles = left.filter { LayerDescriptor(fileName: $0) != nil }
        let before = crashFlush * Self.chunkCount
        switch writers > 1 ? nil : step {
        case .layerWritten, .layerSynced:
            XCTAssertEqual(tmps.count, 1, "\(context0): leftovers \(left)")
            XCTAssertEqual(layerFiles.count, before + occurrence - 1, "\(context0): leftovers \(left)")
        case .layerRenamed:
            XCTAssertEqual(tmps, [], "\(context0): leftovers \(left)")
            XCTAssertEqual(layerFiles.count, before + occurrence, "\(context0): leftovers \(left)")
        case .layersSynced:
            XCTAssertEqual(tmps, [], "\(context0): leftovers \(left)")
            XCTAssertEqual(layerFiles.count, before + Self.chunkCount, "\(context0): leftovers \(left)")
        case .manifestWritten:
            XCTAssertEqual(tmps, [Manifest.fileName + ".tmp"], "\(context0): leftovers \(left)")
            XCTAssertEqual(layerFiles.count, before + Self.chunkCount, "\(context0): leftovers \(left)")
        case .manifestRenamed:
            XCTAssertEqual(tmps, [], "\(context0): leftovers \(left)")
            XCTAssertEqual(layerFiles.count, before + Self.chunkCount, "\(context0): leftovers \(left)")
        case nil:
            break
        }
        recovered = completed.last ?? .zero
        store.close()

        // Reopen without the failpoint: the model as of the last completed checkpoint.
        let full = model
        model = model.truncated(to: recovered)
        var reopened = try TimelineStore.open(directory: dir, config: config(nil, writers: writers, sync: sync), context: StorageContext(io: io))
        try verify(reopened, model, dcl: recovered, layerCount: completed.count * Self.chunkCount, lsns: completed,
                   maxLSN: lsn, &rng, context0 + ", after recovery")

        if replay && crashTarget > recovered {
            // Re-ingest what the crash lost, as WAL replay from disk_consistent_lsn + 1 would: the same
            // values at the same LSNs (the flush that crashed wrote layers with the same names).
            var lost: [(LSN, Key, Value)] = []
            for (k, vs) in full.values { for (l, v) in vs where l > recovered { lost.append((l, k, v)) } }
            lost.sort { $0.0 < $1.0 }
            for (l, k, v) in lost { try reopened.put(k, l, v) }
            reopened.advance(to: crashTarget)
            model = full
            XCTAssertEqual(try reopened.checkpoint(), crashTarget, "\(context0): checkpoint of the replayed records")
            completed.append(crashTarget)
            try verify(reopened, model, dcl: crashTarget, layerCount: completed.count * Self.chunkCount, lsns: completed,
                       maxLSN: lsn, &rng, context0 + ", after recovery and replay")
        }

        // The recovered store keeps working: more rounds, checkpoints, a reopen.
        for _ in 0..<2 {
            try round(reopened, &model, &lsn, &rng)
            let target = reopened.lastRecordLSN
            XCTAssertEqual(try reopened.checkpoint(), target, "\(context0): checkpoint after recovery")
            completed.append(target)
        }
        try round(reopened, &model, &lsn, &rng)  // left unflushed: lost at the reopen below
        reopened.close()
        model = model.truncated(to: completed.last!)
        reopened = try TimelineStore.open(directory: dir, config: config(nil, writers: writers, sync: sync), context: StorageContext(io: io))
        try verify(reopened, model, dcl: completed.last!, layerCount: completed.count * Self.chunkCount, lsns: completed,
                   maxLSN: lsn, &rng, context0 + ", after recovery, two more checkpoints and a reopen")
        reopened.close()
    }

    private func runStep(_ step: FlushStep) throws {
        let seed = testSeed("CrashTests.\(step.rawValue)")
        // Layer steps run once per chunk's layer: crash on the first, the middle and the last chunk.
        let perLayer: Set<FlushStep> = [.layerWritten, .layerSynced, .layerRenamed]
        let occurrences = perLayer.contains(step) ? [1, Self.chunkCount / 2 + 1, Self.chunkCount] : [1]
        // layerSynced happens only when each file is fsynced, layersSynced only with one syncfs.
        let syncs: [FlushSync] = step == .layerSynced ? [.eachFile] : step == .layersSynced ? [.fileSystem] : FlushSync.allCases
        var n = 0
        for occurrence in occurrences {
            for crashFlush in [0, 2] {
                // Replay the lost records in about half the cases, for both crash positions.
                let replay = (n / 2 + n) % 2 == 0
                n += 1
                for writers in [1, 3] {
                    for sync in syncs {
                        do {
                            try runCase(step: step, occurrence: occurrence, crashFlush: crashFlush, replay: replay, seed: seed,
                                        writers: writers, sync: sync)
                        } catch {
                            XCTFail("seed \(seed) crash at \(step.rawValue) #\(occurrence) of flush \(crashFlush), \(writers) writer(s), flush_sync \(sync.rawValue): \(error)")
                        }
                    }
                }
            }
        }
    }

    func testCrashAtLayerWritten() throws { try runStep(.layerWritten) }
    func testCrashAtLayerSynced() throws { try runStep(.layerSynced) }
    func testCrashAtLayerRenamed() throws { try runStep(.layerRenamed) }
    func testCrashAtLayersSynced() throws { try runStep(.layersSynced) }
    func testCrashAtManifestWritten() throws { try runStep(.manifestWritten) }
    func testCrashAtManifestRenamed() throws { try runStep(.manifestRenamed) }

    /// The smallest case of a crash in a store's very first flush: the first chunk's layer is renamed
    /// into place, then the flush dies before the new manifest replaces the store's initial empty one.
    /// The layer is not committed (the manifest is the commit point), so reopening must give the empty
    /// store and delete the file.
    func testReopenAfterCrashInFirstFlush() throws {
        for (step, occurrence) in [(FlushStep.layerRenamed, 1), (.layerWritten, 2), (.manifestWritten, 1)] {
            let dir = makeTempDir("crash-first")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let crasher = Crasher(step: step, occurrence: occurrence, flush: 0)
            let store = try TimelineStore.open(directory: dir, config: config(crasher), context: StorageContext(io: PreadEngine()))
            try store.put(Self.keys[0], LSN(0x100), .image([1, 2, 3]))
            try store.put(Self.keys[12], LSN(0x101), .image([4, 5, 6]))
            XCTAssertThrowsError(try store.checkpoint())
            store.close()
            let left = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
            do {
                let reopened = try TimelineStore.open(directory: dir, config: config(nil), context: StorageContext(io: PreadEngine()))
                XCTAssertEqual(reopened.diskConsistentLSN, .zero)
                XCTAssertEqual(reopened.layers().count, 0)
                XCTAssertEqual(try reopened.get(Self.keys[0], at: .max, redo: AppendRedo()), nil)
                XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: dir), [Manifest.fileName])
                reopened.close()
            } catch {
                XCTFail("crash at \(step.rawValue) #\(occurrence) of the first flush left \(left); reopening failed: \(error)")
            }
        }
    }

    /// The failpoint sees every step of a flush, once per chunk's layer for the layer steps: each
    /// layer's steps in order (layers are written by several threads, so the layers interleave);
    /// with `FlushSync.fileSystem` no per-layer sync but one `layersSynced` after every rename; the
    /// manifest's two steps last.
    func testFailpointStepOrder() throws {
        for sync in FlushSync.allCases {
            let dir = makeTempDir("crash-order")
            defer { try? FileManager.default.removeItem(atPath: dir) }
            final class StepLog: Sendable { let steps = Mutex<[FlushStep]>([]) }
            let seen = StepLog()
            var config = config(nil, writers: 3, sync: sync)
            config.failpoint = { s in seen.steps.withLock { $0.append(s) } }
            let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: PreadEngine()))
            var rng = SeededRandom(seed: 1)
            var model = Model()
            var lsn: UInt64 = 0x100
            try round(store, &model, &lsn, &rng)
            try store.checkpoint()
            store.close()
            let steps = seen.steps.withLock { $0 }
            let eachFile = sync == .eachFile
            let tail: [FlushStep] = eachFile ? [.manifestWritten, .manifestRenamed] : [.layersSynced, .manifestWritten, .manifestRenamed]
            XCTAssertEqual(Array(steps.suffix(tail.count)), tail, "\(sync)")
            let layerPart = steps.dropLast(tail.count)
            for step in [FlushStep.layerWritten, .layerSynced, .layerRenamed] {
                let want = step == .layerSynced && !eachFile ? 0 : Self.chunkCount
                XCTAssertEqual(layerPart.filter { $0 == step }.count, want, "\(sync): \(step) per chunk: \(steps)")
            }
            // A layer is synced (when each is) after it is written, and renamed after that.
            var written = 0, synced = 0, renamed = 0
            for step in layerPart {
                switch step {
                case .layerWritten: written += 1
                case .layerSynced: synced += 1
                case .layerRenamed: renamed += 1
                default: XCTFail("\(sync): step \(step) before the layers are done: \(steps)")
                }
                XCTAssertTrue(renamed <= (eachFile ? synced : written) && synced <= written, "\(sync): steps out of order: \(steps)")
            }
        }
    }
}
