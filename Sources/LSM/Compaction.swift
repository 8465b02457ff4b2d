#if canImport(Glibc)
import Glibc
#endif

// Compaction and garbage collection of a timeline's layer files (issue 7, engine part).
//
// Three operations, each one replacement of layer files:
// - `createImageLayers`: for every chunk with `thresholdDeltas` or more delta layers above its newest
//   image layer, one new image layer at L (disk_consistent_lsn, or a given LSN at or below it) holding
//   the value at L of every key of the chunk that has one. Keys are found by a merge of the index
//   entries of the chunk's layers (never the chunk's history in memory); each value is built by the
//   normal read path (`get` at L), so redo runs exactly as for a client's read.
// - `mergeDeltas`: consecutive delta layers of a chunk become one delta layer whose LSN range is the
//   union of theirs, the entries merged in (key, lsn) order by a k-way merge of index iterators.
//   Deltas on both sides of an image layer are never merged (GC could then not drop the older part).
//   Merged are the deltas above the newest image (what reads of recent LSNs visit) and the deltas only
//   retained LSNs need (GC never removes those); the others are GC's to delete, not worth rewriting.
// - `gc`: raises the manifest's gc_cutoff_lsn (never lowers it) and deletes every layer no read at an
//   LSN >= the cutoff, nor at a retained LSN (a child timeline's branch point), can need. A delta
//   layer that straddles the newest image at X <= cutoff (lsn_start <= X < lsn_end - 1) and that no
//   retained LSN needs is rewritten without its entries at or below X (reads at or above the cutoff
//   stop at the image there), when they make up at least `trimFraction` of its LSN range.
//
// Which layers a read at r needs (mirrors `LayerMap.plan`): per chunk, the newest image layer at
// X <= r and every delta layer with lsn_start <= r and lsn_end - 1 > X (all of them with lsn_start <= r
// when no image is at or below r). A key missing from that image had no value at X and, since the
// engine never deletes a key, no value at any LSN <= X, so no older layer holds anything of it.
//
// Replacement protocol (crash safe at every step; `CompactionStep` names each for the failpoint):
// 1. write each new layer as NAME.tmp, fsync, rename to NAME, fsync the directory;
// 2. with `manifestLock` held: the current manifest minus the replaced layers plus the new ones
//    (and the new cutoff, for GC) to manifest.tmp, fsync, rename over manifest, fsync the directory;
//    then swap in a layer map with the same change;
// 3. unlink the replaced files.
// A crash before the rename of step 2 leaves new files the manifest does not name; after it, old
// files the manifest does not name. `open` deletes both kinds. A failure after the rename but before
// the in-memory swap (only an fsync of the directory can fail there) leaves memory at the old state,
// which is still consistent: the old files are not deleted, the next manifest a flush writes names
// them again (with the old cutoff: the cutoff may move back then, harmlessly, since nothing was
// deleted) and the new files become unreferenced. Compaction is refused from then on until a reopen
// (`compactionBroken`), so that no later compaction rewrites a file the renamed manifest names.
//
// Concurrency: compactions and GCs of one store run one at a time (`compactionLock`). They read
// from a snapshot and take no lock that `get`, `put` or `advance` wait on; only the commit of step 2
// is serialized with flushes (`manifestLock`), which change the manifest too. A reader still holding
// an older snapshot keeps its `LayerFile`s, whose descriptors stay open until the last reference goes
// (LayerFile invariant 2), so unlinking a file under a reader is harmless.
//
// Invariants:
// 1. Every read at an LSN >= gc_cutoff_lsn, or at a retained LSN, answers after a compaction or GC
//    exactly as before it.
// 2. gc_cutoff_lsn only moves forward and never above disk_consistent_lsn.
// 3. An image layer at X holds every key of its chunk that had a value at X (LayerMap invariant 2).
// 4. Delta layers of a chunk stay disjoint: a merge replaces consecutive deltas, and its range covers
//    exactly theirs and the gaps between them, in which the chunk has no other delta.
// 5. A replaced file is unlinked only after a durable manifest no longer names it.

/// Steps of a compaction or GC, in order, at which `StoreConfig.compactionFailpoint` is called.
public enum CompactionStep: String, Sendable, CaseIterable {
    case layerWritten, layerSynced, layerRenamed, manifestWritten, manifestRenamed, layerDeleted
}

/// The failpoint of one compaction or GC, and what the run got to: whether the failpoint fired (a
/// simulated crash: files stay as they are) and whether the new manifest was renamed into place (the
/// new files are committed and must stay).
/// Used by the one thread running the compaction (the lock guarantees it), hence unchecked.
final class CompactionRun: @unchecked Sendable {
    let hook: (@Sendable (CompactionStep) throws -> Void)?
    private(set) var crashed = false
    var committed = false

    init(_ hook: (@Sendable (CompactionStep) throws -> Void)?) { self.hook = hook }

    /// Whether the run failed between its manifest rename and the swap of the layer map.
    var diverged = false

    func step(_ s: CompactionStep) throws {
        if s == .manifestRenamed { committed = true }
        do { try hook?(s) } catch {
            crashed = true
            throw error
        }
    }

    /// After a real failure (not a simulated crash) before the commit, the new files are removed at
    /// once rather than at the next open, so that a failing compaction (ENOSPC, say) does not keep
    /// eating space.
    func cleanUp(_ created: [(LayerFile, UInt64)]) {
        guard !crashed, !committed else { return }
        for (f, _) in created { try? FileOps.remove(f.path) }
    }
}

/// What one compaction did.
public struct CompactionReport: Sendable, Equatable {
    public var layersCreated = 0
    public var layersDeleted = 0
    public var bytesWritten: UInt64 = 0
    public var bytesDeleted: UInt64 = 0
    public var created: [LayerDescriptor] = []
    public var deleted: [LayerDescriptor] = []
    public init() {}
}

/// What one GC did.
public struct GCReport: Sendable, Equatable {
    public var previousCutoff: LSN = .zero
    /// The cutoff in force afterwards (the request, limited to [previous cutoff, disk_consistent_lsn]).
    public var cutoff: LSN = .zero
    /// The LSNs below the cutoff that stay readable.
    public var retained: [LSN] = []
    /// Layers deleted, straddling deltas that were trimmed included.
    public var layersDeleted = 0
    public var bytesDeleted: UInt64 = 0
    public var deleted: [LayerDescriptor] = []
    /// Straddling delta layers rewritten without their entries below the image at the cutoff: the
    /// trimmed layers (`created`, their bytes `bytesWritten`) replace as many of `deleted`.
    public var layersTrimmed = 0
    public var bytesWritten: UInt64 = 0
    public var created: [LayerDescriptor] = []
    /// Bytes on disk freed: deleted minus written.
    public var bytesFreed: Int64 { Int64(bytesDeleted) - Int64(bytesWritten) }
    public init() {}
}

/// Delta layers above the newest image layer, per chunk (for metrics and backpressure).
public struct LayerDepth: Sendable, Equatable {
    public var maxDeltas = 0
    public var perChunk: [ChunkId: Int] = [:]
    public init() {}
}

extension LayerMap.ChunkLayers {
    /// The newest image layer at or below `lsn`.
    func newestImage(atOrBelow lsn: LSN) -> LayerFile? {
        images.last { $0.descriptor.lsnStart <= lsn }
    }

    /// Delta layers that a read at `lsn` visits above the image layer at `x` (nil: no image).
    func deltas(readAt lsn: LSN, above x: LSN?) -> [LayerFile] {
        deltas.filter { d in d.descriptor.lsnStart <= lsn && (x.map { d.descriptor.lsnEnd.rawValue - 1 > $0.rawValue } ?? true) }
    }

    /// The layers reads at every LSN >= `cutoff` need: the newest image at or below it, every image
    /// above it, every delta above that image (every delta when no image is at or below `cutoff`).
    func needed(atOrAbove cutoff: LSN) -> Set<ObjectIdentifier> {
        var keep = Set<ObjectIdentifier>()
        let base = newestImage(atOrBelow: cutoff)?.descriptor.lsnStart
        for f in images where base.map({ f.descriptor.lsnStart >= $0 }) ?? true { keep.insert(ObjectIdentifier(f)) }
        for d in deltas where base.map({ d.descriptor.lsnEnd.rawValue - 1 > $0.rawValue }) ?? true { keep.insert(ObjectIdentifier(d)) }
        return keep
    }

    /// The layers a read at `lsn` needs: its image and the deltas above it.
    func needed(at lsn: LSN) -> Set<ObjectIdentifier> {
        let image = newestImage(atOrBelow: lsn)
        var keep = Set(deltas(readAt: lsn, above: image?.descriptor.lsnStart).map(ObjectIdentifier.init))
        if let image { keep.insert(ObjectIdentifier(image)) }
        return keep
    }

    /// Delta layers above the newest image layer.
    var depth: Int {
        let x = images.last?.descriptor.lsnStart
        return deltas.count { d in x.map { d.descriptor.lsnEnd.rawValue - 1 > $0.rawValue } ?? true }
    }
}

extension TimelineStore {
    // MARK: - Public API

    /// Writes an image layer at `lsn` (default: disk_consistent_lsn) for every chunk with at least
    /// `thresholdDeltas` delta layers above its newest image layer at or below `lsn`. REQUIRES:
    /// gc_cutoff_lsn <= lsn <= disk_consistent_lsn. May run concurrently with ingest, flush and reads.
    @discardableResult
    /// A chunk whose delta layers above its image hold more than `thresholdBytes` (file sizes) gets
    /// an image too, however few they are (nil: no byte budget).
    public func createImageLayers(redo: any Redo, thresholdDeltas: Int, thresholdBytes: UInt64? = nil, at lsn: LSN? = nil) throws -> CompactionReport {
        compactionLock.wait()
        defer { compactionLock.signal() }
        try checkCompactionAllowed()
        let (dcl, cutoff) = manifest.withLock { ($0.diskConsistentLSN, $0.gcCutoffLSN) }
        let at = lsn ?? dcl
        guard at <= dcl else {
            throw StorageError(.invalidArgument, "cannot create image layers at \(at): only LSNs up to disk_consistent_lsn \(dcl) are in layer files", lsn: at)
        }
        guard at >= cutoff else {
            throw StorageError(.invalidArgument, "cannot create image layers at \(at), below the GC cutoff \(cutoff)", lsn: at)
        }
        let snapshot = map.read { $0 }
        let fetcher = BlockFetcher.uncached(io: context.io, buffers: context.buffers)
        let run = CompactionRun(config.compactionFailpoint)
        var created: [(LayerFile, UInt64)] = []
        do {
            for chunk in snapshot.chunks.keys.sorted() {
                let cl = snapshot.chunks[chunk]!
                let image = cl.newestImage(atOrBelow: at)
                if image?.descriptor.lsnStart == at { continue }
                let deltas = cl.deltas(readAt: at, above: image?.descriptor.lsnStart)
                guard !deltas.isEmpty else { continue }
                let overBudget = thresholdBytes.map { budget in deltas.reduce(UInt64(0)) { $0 + $1.fileSize } > budget } ?? false
                guard deltas.count >= thresholdDeltas || overBudget else { continue }
                if let made = try writeImageLayer(chunk, at: at, sources: deltas + (image.map { [$0] } ?? []), fetcher: fetcher,
                                                  redo: redo, run: run) {
                    created.append(made)
                }
            }
            return try commitReplacement(adding: created, removing: [], gc: nil, run: run)
        } catch {
            run.cleanUp(created)
            throw error
        }
    }

    /// Merges runs of consecutive delta layers of a chunk. Two kinds, each run at most
    /// `targetLayerBytes` of input and never spanning an image layer:
    /// - deltas above the newest image layer (the ones every read of recent LSNs visits), newest runs
    ///   first, while more than `maxDeltasPerChunk` of them are left;
    /// - deltas that only retained LSNs need (below the GC cutoff's image; GC never removes them while
    ///   the branch exists), when the chunk has more than `maxDeltasPerChunk` deltas in all.
    /// Deltas below the newest image but still needed at the cutoff are left alone: GC removes them
    /// once the cutoff passes that image, so merging them would write bytes only to delete them.
    @discardableResult
    public func mergeDeltas(maxDeltasPerChunk: Int, targetLayerBytes: UInt64 = 256 << 20) throws -> CompactionReport {
        precondition(maxDeltasPerChunk >= 1, "maxDeltasPerChunk must be at least 1")
        compactionLock.wait()
        defer { compactionLock.signal() }
        try checkCompactionAllowed()
        let snapshot = map.read { $0 }
        let fetcher = BlockFetcher.uncached(io: context.io, buffers: context.buffers)
        let run = CompactionRun(config.compactionFailpoint)
        var created: [(LayerFile, UInt64)] = []
        var removed: [LayerDescriptor] = []
        do {
            for chunk in snapshot.chunks.keys.sorted() {
                let cl = snapshot.chunks[chunk]!
                guard cl.deltas.count > maxDeltasPerChunk else { continue }
                let top = cl.images.last.map { x in Set(cl.deltas.filter { $0.descriptor.lsnEnd.rawValue - 1 > x.descriptor.lsnStart.rawValue }.map(ObjectIdentifier.init)) }
                    ?? Set(cl.deltas.map(ObjectIdentifier.init))
                let atCutoff = cl.needed(atOrAbove: snapshot.gc.cutoff)
                var pinned = Set<ObjectIdentifier>()
                for r in snapshot.gc.retained { pinned.formUnion(cl.needed(at: r)) }
                pinned.subtract(atCutoff)
                let runs = Self.mergeRuns(cl, targetLayerBytes: targetLayerBytes) { d -> Int? in
                    let id = ObjectIdentifier(d)
                    return top.contains(id) ? 0 : pinned.contains(id) ? 1 : nil
                }
                var depth = top.count, count = cl.deltas.count
                for inputs in runs.reversed() where top.contains(ObjectIdentifier(inputs[0])) {
                    if depth <= maxDeltasPerChunk { break }
                    if let merged = try writeMergedDelta(chunk, inputs, fetcher: fetcher, run: run) { created.append(merged) }
                    removed += inputs.map(\.descriptor)
                    depth -= inputs.count - 1
                    count -= inputs.count - 1
                }
                for inputs in runs where pinned.contains(ObjectIdentifier(inputs[0])) {
                    if count <= maxDeltasPerChunk { break }
                    if let merged = try writeMergedDelta(chunk, inputs, fetcher: fetcher, run: run) { created.append(merged) }
                    removed += inputs.map(\.descriptor)
                    count -= inputs.count - 1
                }
            }
            return try commitReplacement(adding: created, removing: removed, gc: nil, run: run)
        } catch {
            run.cleanUp(created)
            throw error
        }
    }

    /// Raises the GC cutoff to `cutoff` (limited to [current cutoff, disk_consistent_lsn]) durably,
    /// then deletes every layer that no read at an LSN >= the cutoff or at one of `retain` needs.
    /// From then on `get` refuses LSNs below the cutoff except the retained ones that were readable
    /// before (at or above the previous cutoff, or retained by the previous GC or `setRetainedLSNs`).
    /// `retain` is the complete set of branch points: an LSN left out may lose its layers.
    ///
    /// A kept delta layer that straddles the chunk's newest image at `X <= cutoff` and that no retained
    /// LSN needs is rewritten as a delta from X + 1 to its end, holding only its entries above X (no
    /// read GC still allows stops below that image), when the part it drops covers at least
    /// `trimFraction` of its LSN range (0: every such layer; nil: none).
    @discardableResult
    public func gc(cutoff requested: LSN, retain: [LSN], trimFraction: Double? = 0.25) throws -> GCReport {
        compactionLock.wait()
        defer { compactionLock.signal() }
        try checkCompactionAllowed()
        let (dcl, previous) = manifest.withLock { ($0.diskConsistentLSN, $0.gcCutoffLSN) }
        let cutoff = max(previous, min(requested, dcl))
        let retained = Set(retain.filter { $0 < cutoff })
        let snapshot = map.read { $0 }
        // Layers are kept for every LSN of `retain`, but reads are allowed only at those that were
        // readable before this GC (at or above the old cutoff, or retained already): an LSN that an
        // earlier GC did not retain may have lost layers, and a wrong answer is worse than a refusal.
        let readable = retained.filter { $0 >= previous || snapshot.gc.retained.contains($0) }
        var doomed: [LayerDescriptor] = []
        var trims: [(chunk: ChunkId, layer: LayerFile, above: LSN)] = []
        for chunk in snapshot.chunks.keys.sorted() {
            let cl = snapshot.chunks[chunk]!
            var pinned = Set<ObjectIdentifier>()
            for r in retained { pinned.formUnion(cl.needed(at: r)) }
            let keep = cl.needed(atOrAbove: cutoff).union(pinned)
            for f in cl.deltas + cl.images where !keep.contains(ObjectIdentifier(f)) { doomed.append(f.descriptor) }
            guard let fraction = trimFraction, let x = cl.newestImage(atOrBelow: cutoff)?.descriptor.lsnStart else { continue }
            for d in cl.deltas where d.descriptor.lsnStart <= x && d.descriptor.lsnEnd.rawValue - 1 > x.rawValue
                && !pinned.contains(ObjectIdentifier(d)) {
                let span = Double(d.descriptor.lsnEnd.rawValue - d.descriptor.lsnStart.rawValue)
                let dropped = Double(x.rawValue - d.descriptor.lsnStart.rawValue + 1)
                if dropped >= fraction * span { trims.append((chunk, d, x)) }
            }
        }
        var report = GCReport()
        report.previousCutoff = previous
        report.cutoff = cutoff
        report.retained = readable.sorted()
        let floor = LayerMap.GCFloor(cutoff: cutoff, retained: readable)
        if cutoff == previous && doomed.isEmpty && trims.isEmpty {
            map.write { m in m = LayerMap(open: m.open, frozen: m.frozen, chunks: m.chunks, gc: floor) }
            return report
        }
        let run = CompactionRun(config.compactionFailpoint)
        var created: [(LayerFile, UInt64)] = []
        do {
            let fetcher = BlockFetcher.uncached(io: context.io, buffers: context.buffers)
            for t in trims {
                // A straddling delta whose entries all lie at or below X is not needed at all.
                if let trimmed = try writeMergedDelta(t.chunk, [t.layer], above: t.above, fetcher: fetcher, run: run) {
                    created.append(trimmed)
                }
                doomed.append(t.layer.descriptor)
            }
            let done = try commitReplacement(adding: created, removing: doomed, gc: floor, run: run)
            report.layersDeleted = done.layersDeleted
            report.bytesDeleted = done.bytesDeleted
            report.deleted = done.deleted
            report.layersTrimmed = trims.count
            report.bytesWritten = done.bytesWritten
            report.created = done.created
            return report
        } catch {
            run.cleanUp(created)
            throw error
        }
    }

    /// Sets the LSNs below the GC cutoff that reads may still ask for (the branch points of child
    /// timelines). They are not stored in the manifest: after `open` the owner passes the set it gave
    /// the last `gc`. REQUIRES: every LSN was retained by each GC since it became a branch point (an
    /// LSN that a GC did not retain may have lost the layers a read there needs).
    public func setRetainedLSNs(_ lsns: [LSN]) {
        map.write { m in
            let floor = LayerMap.GCFloor(cutoff: m.gc.cutoff, retained: Set(lsns.filter { $0 < m.gc.cutoff }))
            m = LayerMap(open: m.open, frozen: m.frozen, chunks: m.chunks, gc: floor)
        }
    }

    /// The LSNs below the cutoff that reads may ask for.
    public var retainedLSNs: [LSN] { map.read { $0.gc.retained.sorted() } }

    /// Delta layers above the newest image layer of each chunk that has layer files.
    public func depth() -> LayerDepth {
        let snapshot = map.read { $0 }
        var d = LayerDepth()
        for (chunk, cl) in snapshot.chunks {
            let n = cl.depth
            d.perChunk[chunk] = n
            d.maxDeltas = max(d.maxDeltas, n)
        }
        return d
    }

    // MARK: - Writing new layers

    /// Step 1 of the protocol for one file; returns the opened file and its size.
    private func finishLayer(_ w: LayerWriter, run: CompactionRun) throws -> (LayerFile, UInt64) {
        let size = try w.finish { step in
            switch step {
            case .written: try run.step(.layerWritten)
            case .synced: try run.step(.layerSynced)
            case .renamed: try run.step(.layerRenamed)
            }
        }
        let d = w.descriptor
        return (try LayerFile(path: directory + "/" + d.fileName, expected: d, direct: context.directIO), size)
    }

    /// The image layer of `chunk` at `at`, from the keys found in `sources`; nil when no key of the
    /// chunk has a value at `at` (no file is left behind then).
    private func writeImageLayer(_ chunk: ChunkId, at: LSN, sources: [LayerFile], fetcher: BlockFetcher,
                                 redo: any Redo, run: CompactionRun) throws -> (LayerFile, UInt64)? {
        let d = LayerDescriptor.image(chunk, at: at)
        let w = try LayerWriter(directory: directory, descriptor: d, dataBlockBytes: config.dataBlockBytes, compress: config.compress)
        var iterators = sources.map { LayerEntryIterator($0, fetcher: fetcher) }
        var heads = try iterators.indices.map { try iterators[$0].next() }
        var batch: [(Key, LSN)] = []
        let batchSize = 64
        func drain() throws {
            for (i, r) in get(batch, redo: redo).enumerated() {
                switch r {
                case .success(nil): continue
                case .success(let bytes?): try w.add(batch[i].0, at, .image(bytes))
                case .failure(let e): throw e
                }
            }
            batch.removeAll(keepingCapacity: true)
        }
        // Distinct keys in ascending order: the smallest head key, then skip it in every iterator.
        while let key = heads.compactMap({ $0?.key }).min() {
            for i in heads.indices {
                while let h = heads[i], h.key == key { heads[i] = try iterators[i].next() }
            }
            batch.append((key, at))
            if batch.count == batchSize { try drain() }
        }
        try drain()
        guard w.entriesWritten > 0 else { return nil }
        return try finishLayer(w, run: run)
    }

    /// The most delta layers one merge reads at once (each holds an index block and a data block in
    /// memory during the merge).
    static let maxMergeInputs = 64

    /// Runs of consecutive delta layers worth merging (two or more each), oldest first: deltas of one
    /// `kind` (nil: not to be merged), split at image layers (an image at X separates the deltas ending
    /// at or below X + 1 from those above), at `targetLayerBytes` of input and at `maxMergeInputs`.
    static func mergeRuns(_ cl: LayerMap.ChunkLayers, targetLayerBytes: UInt64, kind: (LayerFile) -> Int?) -> [[LayerFile]] {
        var runs: [[LayerFile]] = []
        var run: [LayerFile] = []
        var bytes: UInt64 = 0
        func close() {
            if run.count >= 2 { runs.append(run) }
            run = []
            bytes = 0
        }
        for d in cl.deltas {
            guard let k = kind(d) else {
                close()
                continue
            }
            if let prev = run.last {
                let lo = prev.descriptor.lsnEnd.rawValue - 1, hi = d.descriptor.lsnEnd.rawValue - 1
                let split = cl.images.contains { $0.descriptor.lsnStart.rawValue >= lo && $0.descriptor.lsnStart.rawValue < hi }
                if split || kind(prev) != k || bytes + d.fileSize > targetLayerBytes || run.count == maxMergeInputs { close() }
            }
            run.append(d)
            bytes += d.fileSize
        }
        close()
        return runs
    }

    /// One delta layer with every entry of `run` (consecutive deltas of `chunk`, oldest first), or with
    /// only the entries above `above` (then the layer starts at above + 1, and nil means that no entry
    /// was above it: nothing is written).
    private func writeMergedDelta(_ chunk: ChunkId, _ run: [LayerFile], above: LSN? = nil, fetcher: BlockFetcher,
                                  run progress: CompactionRun) throws -> (LayerFile, UInt64)? {
        let start = above.map { $0.advanced(by: 1) } ?? run.first!.descriptor.lsnStart
        let d = LayerDescriptor(kind: .delta, chunk: chunk, lsnStart: start, lsnEnd: run.last!.descriptor.lsnEnd)
        let w = try LayerWriter(directory: directory, descriptor: d, dataBlockBytes: config.dataBlockBytes, compress: config.compress)
        var iterators = run.map { LayerEntryIterator($0, fetcher: fetcher) }
        var readers = run.map { LayerValueReader($0, fetcher: fetcher) }
        var heads = try iterators.indices.map { try iterators[$0].next() }
        // k-way merge by (key, lsn); k is the run's length (small), so a linear scan picks the head.
        while true {
            var best: Int?
            for i in heads.indices {
                guard let h = heads[i] else { continue }
                if let b = best, let hb = heads[b], !(h.key < hb.key || (h.key == hb.key && h.lsn < hb.lsn)) { continue }
                best = i
            }
            guard let b = best, let e = heads[b] else { break }
            if above.map({ e.lsn > $0 }) ?? true {
                let bytes = try readers[b].value(e)
                try bytes.withUnsafeBytes { try w.add(e.key, e.lsn, kind: e.kind, willInit: e.willInit, bytes: $0) }
            }
            heads[b] = try iterators[b].next()
        }
        // An unfinished writer removes its temporary file.
        guard w.entriesWritten > 0 else { return nil }
        return try finishLayer(w, run: progress)
    }

    // MARK: - Commit

    private func checkCompactionAllowed() throws {
        if let e = compactionBroken.withLock({ $0 }) {
            throw StorageError(.io, "compaction is disabled until the store is reopened: an earlier one failed after its manifest was replaced (\(e.message))",
                               file: e.file)
        }
    }

    /// Steps 2 and 3 of the protocol: one manifest naming `adding` instead of `removing` (and the new
    /// GC floor, if any), the layer map swapped to match, then the replaced files unlinked.
    /// REQUIRES: `compactionLock` held; `adding` written and renamed (step 1).
    private func commitReplacement(adding: [(LayerFile, UInt64)], removing: [LayerDescriptor], gc: LayerMap.GCFloor?,
                                   run: CompactionRun) throws -> CompactionReport {
        var report = CompactionReport()
        if adding.isEmpty && removing.isEmpty && gc == nil { return report }
        let gone = Set(removing)
        manifestLock.wait()
        do {
            defer { manifestLock.signal() }
            var next = manifest.withLock { $0 }
            next.generation += 1
            if let gc {
                precondition(gc.cutoff >= next.gcCutoffLSN && gc.cutoff <= next.diskConsistentLSN, "GC cutoff \(gc.cutoff) moves backwards or above disk_consistent_lsn")
                next.gcCutoffLSN = gc.cutoff
            }
            for e in next.layers where gone.contains(e.layer) {
                report.bytesDeleted += e.fileSize
                report.deleted.append(e.layer)
            }
            precondition(report.deleted.count == gone.count, "a replaced layer is not in the manifest")
            next.layers.removeAll { gone.contains($0.layer) }
            next.layers += adding.map { Manifest.Entry(layer: $0.0.descriptor, fileSize: $0.1) }
            do {
                try writeManifest(next) { step in
                    switch step {
                    case .manifestWritten: try run.step(.manifestWritten)
                    case .manifestRenamed:
                        run.diverged = true
                        try run.step(.manifestRenamed)
                    default: break
                    }
                }
            } catch {
                if run.diverged && !run.crashed {
                    let e = error as? StorageError ?? StorageError(.io, "\(error)")
                    compactionBroken.withLock { $0 = e }
                }
                throw error
            }
            manifest.withLock { $0 = next }
            map.write { m in
                var chunks = m.chunks
                for d in removing {
                    chunks[d.chunk]!.deltas.removeAll { $0.descriptor == d }
                    chunks[d.chunk]!.images.removeAll { $0.descriptor == d }
                    if chunks[d.chunk]!.deltas.isEmpty && chunks[d.chunk]!.images.isEmpty { chunks[d.chunk] = nil }
                }
                for (f, _) in adding { chunks[f.descriptor.chunk, default: .init()].add(f) }
                m = LayerMap(open: m.open, frozen: m.frozen, chunks: chunks, gc: gc ?? m.gc)
            }
        }
        report.layersCreated = adding.count
        report.bytesWritten = adding.reduce(0) { $0 + $1.1 }
        report.created = adding.map(\.0.descriptor)
        report.layersDeleted = report.deleted.count
        for d in removing {
            try FileOps.remove(directory + "/" + d.fileName)
            try run.step(.layerDeleted)
        }
        if !removing.isEmpty { try FileOps.fsyncDirectory(directory) }
        return report
    }
}
