import CShims
import Dispatch
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Settings of a timeline's store. Units are last in the names.
public struct StoreConfig: Sendable {
    /// Freeze the in-memory layer when it holds this many bytes.
    public var checkpointDistanceBytes = 256 << 20
    /// ... or when its oldest value is this old.
    public var checkpointTimeoutSeconds: Double = 600
    public var dataBlockBytes = LayerFormat.defaultDataBlockBytes
    public var compress = true
    /// Longest chain of records one reconstruction may apply.
    public var maxChainLength = 10_000
    /// Ingest flushes in its own thread once this many frozen layers wait (backpressure).
    public var maxFrozenLayers = 2
    /// Flush frozen layers in a background thread (false: only `checkpoint` flushes).
    public var backgroundFlush = true
    /// How a flush makes its layer files durable before the manifest names them.
    public var flushSync = FlushSync.fileSystem
    /// Threads that write one flush's layer files (one file per chunk) at once.
    public var flushWriters = max(1, min(4, sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    /// Threads that answer one batched read (`get([(Key, LSN)])`): a batch of at least
    /// 2 x `lookupsPerReadThread` lookups is split into contiguous parts, one per thread, each
    /// planned, read and reconstructed on its own; a smaller one is answered on the caller's thread
    /// but spreads its redo when at least `parallelRedoMinimum` of its lookups need it. 1: everything
    /// on the caller's thread. By default twice the cores, at most 4: a part that waits for its
    /// reads leaves its core to another part (cold batches of 32 on 2 cores, a kept scale-20 store:
    /// 19.9k against 14.4k pages/s with 4 parts instead of 2; warm, no loss). The parts run on
    /// threads of their own (`ReadPartThreads`), all at once: with Dispatch's concurrentPerform, no
    /// more of them ran at once than there are cores (1.31x the cold pages/s with threads of their
    /// own, median of 12 interleaved pairs; 8 or 16 smaller parts did worse than 4).
    public var redoThreads = max(1, min(4, 2 * sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    public var parallelRedoMinimum = 4
    public var lookupsPerReadThread = 8
    /// A batch that would be split over `redoThreads` threads is first tried on the caller's
    /// thread from the caches alone, and split only when a block it needs is in none of them.
    public var cachedBatchesOnCaller = true
    /// Whether that cached-only try spreads its redo over `redoThreads` threads.
    public var cachedBatchParallelRedo = false
    /// On open, read every layer file's index blocks into the index cache, while the cache is under
    /// 3/4 full (`LayerFile.preloadIndex`). A lookup that misses every cache then costs one read
    /// (its data block) instead of two. RocksDB does the same by default: it loads each table's index
    /// when it opens the table.
    public var preloadIndexBlocks = true
    /// Test seam: called at each step of a flush; throwing simulates a crash at that step.
    public var failpoint: (@Sendable (FlushStep) throws -> Void)?
    /// Test seam: called at each step of a compaction or GC (Compaction.swift).
    public var compactionFailpoint: (@Sendable (CompactionStep) throws -> Void)?

    public init() {}
}

/// How a flush makes its layer files durable (format-spec 1.2).
public enum FlushSync: String, Sendable, CaseIterable {
    /// `fsync` each layer file before its rename, then the directory once.
    case eachFile = "file"
    /// Write and rename every layer file, then one `syncfs` of the file system holding the
    /// directory (opened before the first file is written, so that a write-back error of any of
    /// them is reported). A flush writes one file per chunk it touched, hundreds at a time; one
    /// sync instead of an `fsync` each took 14-20% off the CPU of the WAL-ingest benchmark
    /// (BENCHMARKS.md, "WAL ingest"). It also writes back whatever else is dirty on that file
    /// system.
    case fileSystem = "filesystem"
}

/// Steps of a flush, in order, at which `StoreConfig.failpoint` is called: for each layer file
/// `layerWritten`, `layerSynced` (only with `FlushSync.eachFile`) and `layerRenamed`; then, with
/// `FlushSync.fileSystem`, `layersSynced` once; then the manifest's two steps.
public enum FlushStep: String, Sendable, CaseIterable {
    case layerWritten, layerSynced, layerRenamed, layersSynced, manifestWritten, manifestRenamed
}

/// What a store shares with the other stores of the process: the IO engine and the caches.
public final class StorageContext: Sendable {
    public let io: any BlockIO
    /// Decoded data blocks: a hit is a copy-free array share.
    public let dataCache: BlockCache
    /// Data blocks as they are on disk (verified, still compressed), for blocks that compress at
    /// least 2:1. A read that misses `dataCache` but hits here decompresses instead of reading from
    /// the file: where the database outgrows the decoded tier, this tier still holds most of it (an
    /// 8 KiB heap page image is a few hundred bytes on disk). It holds at most
    /// `compressedCacheFraction` of the data cache's bytes, and `dataCache` has the rest of the
    /// budget: what this tier does not use stays with the decoded tier (`CacheLoan`). Blocks enter
    /// it only once the decoded tier has been full (see `BlockFetcher`).
    public let compressedDataCache: BlockCache
    public let indexCache: BlockCache
    /// Open layer files with O_DIRECT (data reads bypass the kernel's page cache).
    public let directIO: Bool
    /// Reconstructed values of every store (MaterializedPageCache), so that hot pages are not rebuilt
    /// from their base on every read. Its bytes are part of the data cache's budget (`CacheLoan`).
    public let materialized: MaterializedPageCache
    /// The split of the budget between materialized pages and data blocks (`PageMemoryBalance`).
    public let balance: PageMemoryBalance
    /// While page memory has never been full, a data-block miss in a file whose index was preloaded
    /// reads the whole blocks of the aligned window of this many bytes around it (0: off).
    public let coldPrefetchWindowBytes: Int
    let buffers = AlignedBufferPool()
    /// Which blocks cold reads have decoded out of a window once (`BlockFetcher.windowBlocksSeen`).
    let windowBlocksSeen = SeenOnceFilter(bits: 1 << 18)
    /// Empties page memory: decoded and compressed data blocks, materialized pages and the marks of
    /// `windowBlocksSeen`. Index blocks stay (as a RocksDB table reader keeps its index), and so
    /// does the split of the budget. Benchmarks use it to measure cold reads in a process that has
    /// been running, as a long-lived server's are.
    public func dropPageMemory() {
        dataCache.clear()
        compressedDataCache.clear()
        materialized.clear()
        windowBlocksSeen.reset()
    }
    /// Threads for the parts of batched reads (`StoreConfig.redoThreads`): one pool for the process.
    var readParts: ReadPartThreads { ReadPartThreads.shared }
    private let nextStoreId = Atomic<UInt32>(0)

    /// `dataCacheBytes` is the whole budget of page memory: decoded data blocks, compressed data
    /// blocks and materialized pages together. The materialized pages may take up to
    /// `materializedCacheBytes` of it (7/8 when nil, never more). They start with that share (an
    /// empty cache holds nothing, so the blocks have all of it until pages are rebuilt); with
    /// `adaptiveSplit`, `PageMemoryBalance` moves it within [1/16, the maximum] as the reads show
    /// what each tier is worth. The compressed blocks take up to `compressedCacheFraction` of the
    /// budget, never so much that the decoded blocks could be left with less than 1/8; the decoded
    /// blocks have whatever the other two do not hold.
    public init(io: any BlockIO, dataCacheBytes: Int = 256 << 20, indexCacheBytes: Int = 64 << 20, directIO: Bool = false,
                materializedCacheBytes: Int? = nil, compressedCacheFraction: Double = 0.5, adaptiveSplit: Bool = true,
                coldPrefetchWindowBytes: Int = 128 << 10) {
        self.io = io
        self.coldPrefetchWindowBytes = max(0, coldPrefetchWindowBytes)
        let budget = max(0, dataCacheBytes)
        let maximumMaterialized = min(max(0, materializedCacheBytes ?? budget - budget / 8), budget - budget / 8)
        let compressedMaximum = Int(Double(budget) * min(max(compressedCacheFraction, 0), 1))
        // Each ghost list covers one step of the split.
        let step = budget / 32
        let loan = CacheLoan()
        self.dataCache = BlockCache(capacityBytes: budget, minimumShardBytes: 1 << 20, lending: loan,
                                    ghostBytes: adaptiveSplit ? step : 0)
        self.compressedDataCache = BlockCache(capacityBytes: compressedMaximum, minimumShardBytes: 256 << 10, borrowing: loan)
        self.indexCache = BlockCache(capacityBytes: indexCacheBytes, minimumShardBytes: 256 << 10)
        self.directIO = directIO
        self.materialized = MaterializedPageCache(capacityBytes: maximumMaterialized, borrowing: loan,
                                                  ghostBytes: adaptiveSplit ? step : 0)
        self.balance = PageMemoryBalance(budget: budget, materialized: materialized, decoded: dataCache,
                                         compressed: compressedDataCache, compressedMaximum: compressedMaximum,
                                         step: step, adaptive: adaptiveSplit)
        // Without the balance, the compressed tier leaves room for all the materialized pages may
        // take; with it, for what they hold (updated at each rebalance).
        compressedDataCache.setCapacity(balance.compressedCapacity(materialized: adaptiveSplit ? 0 : maximumMaterialized))
    }

    /// A number that tells this process's stores apart in the shared caches.
    func newStoreId() -> UInt32 { nextStoreId.add(1, ordering: .relaxed).newValue }

    var fetcher: BlockFetcher { BlockFetcher(io: io, dataCache: dataCache, compressedDataCache: compressedDataCache,
                                               indexCache: indexCache, buffers: buffers, balance: balance,
                                               prefetchWindowBytes: UInt64(coldPrefetchWindowBytes),
                                               windowBlocksSeen: windowBlocksSeen) }
}

/// The values of one timeline: an in-memory layer in front of immutable layer files, listed by a
/// manifest in the timeline's directory.
///
/// Writes: one ingest thread calls `put` (LSN order) and `advance`; the open in-memory layer is
/// frozen at `checkpoint_distance`/`checkpoint_timeout` and flushed to one delta layer per chunk it
/// touched, by a background thread or by `checkpoint`.
///
/// Flush protocol (crash safe at every step):
/// 1. write each delta layer to NAME.tmp, fsync, rename to NAME, fsync the directory (with
///    `FlushSync.fileSystem`: write each to NAME.tmp, rename to NAME, then one syncfs);
/// 2. write the manifest (old layers + new ones, disk_consistent_lsn = end of the frozen layer - 1)
///    to manifest.tmp, fsync, rename over manifest, fsync the directory;
/// 3. swap the layer map: add the new files, drop the frozen layer.
/// A crash before the manifest rename leaves files the manifest does not name; `open` deletes them.
/// A new store writes an empty manifest when it is created, so a manifest always exists once any
/// layer file can.
///
/// Branches: a store may have an ancestor (another store and a branch point P). It then holds only
/// values above P; a read that finds no chain start of its own (no image value, no will-init record,
/// no materialized base) continues in the ancestor at min(lsn, P), and the ancestor's value there is
/// the base for this store's records above P. Ancestors nest to any depth. The engine has no
/// tombstones (a key that had a value keeps one), so a key absent from a branch's image layer simply
/// had no value of the branch's own at that LSN.
/// Compaction and GC (Compaction.swift) replace layer files by the same write-then-commit pattern.
///
/// Invariants:
/// 1. Every record with LSN <= disk_consistent_lsn is in a layer file named by the manifest.
/// 2. The manifest names only complete, durable files (each fsynced, or all synced with their file
///    system, before the manifest is written).
/// 3. Flushes run one at a time, oldest frozen layer first.
/// 4. A store with an ancestor at P holds no value at or below P (its manifest starts at
///    disk_consistent_lsn = P), so the ancestor answers every read at or below P.
/// 5. Every change of the manifest (flush, compaction, GC) holds `manifestLock` from reading the
///    current manifest to swapping the layer map, so none loses another's change.
public final class TimelineStore: Sendable {
    public let directory: String
    public let config: StoreConfig
    let context: StorageContext
    /// Where reads continue when this store has no base for a key: the parent timeline's store at
    /// the branch point.
    public let ancestor: Ancestor?

    public struct Ancestor: Sendable {
        public let store: TimelineStore
        /// The branch point: this store's values all lie above it.
        public let lsn: LSN
        public init(store: TimelineStore, lsn: LSN) {
            self.store = store
            self.lsn = lsn
        }
    }

    private struct WriterState: ~Copyable {
        var lastRecordLSN: LSN
        var broken: StorageError?
        /// Freeze at the next record boundary (`advance`).
        var freezeRequested = false
        /// Calls of `advance`; the open layer's age is checked on every 1024th.
        var advances: UInt64 = 0
    }

    /// This store's number in the context's shared caches.
    let storeId: UInt32
    let map: ReadMostlyLock<LayerMap>
    let manifest: Mutex<Manifest>
    /// Held from reading the manifest to swapping the layer map by every change of the manifest
    /// (flush, compaction, GC), so that none of them loses another's change.
    let manifestLock = DispatchSemaphoreLike(value: 1)
    /// One compaction or GC at a time (Compaction.swift).
    let compactionLock = DispatchSemaphoreLike(value: 1)
    /// Set when a compaction failed after its manifest was renamed: memory and disk disagree about
    /// the layers until a reopen, so no further compaction runs (Compaction.swift).
    let compactionBroken = Mutex<StorageError?>(nil)
    private let writer: Mutex<WriterState>
    /// `WriterState.lastRecordLSN`, stored after each change under the writer's lock, for readers:
    /// a GetPage loads it without taking that lock.
    private let completedRecordLSN: Atomic<UInt64>
    /// The backoff of cached-only tries of split batches (`get`): batches left to split without
    /// one, and the current backoff. Updated without ordering: a heuristic, and a lost update only
    /// changes when the next try comes.
    private let cachedTrySkipsLeft = Atomic<Int>(0)
    private let cachedTryBackoff = Atomic<Int>(0)
    private let flushLock = DispatchSemaphoreLike(value: 1)
    private let flushWake = DispatchSemaphoreLike(value: 0)
    private let stopping = Atomic<Bool>(false)
    private let flusherExited = DispatchSemaphoreLike(value: 0)

    /// Opens the store in `directory` (created if missing): reads the manifest, deletes temporary
    /// and unreferenced files, opens and verifies every layer file the manifest names. A store
    /// created with an `ancestor` starts at its branch point (disk_consistent_lsn = P).
    public static func open(directory: String, config: StoreConfig = StoreConfig(), context: StorageContext,
                            ancestor: Ancestor? = nil) throws -> TimelineStore {
        try FileOps.makeDirectories(directory)
        let manifestPath = directory + "/" + Manifest.fileName
        let names = try FileOps.listDirectory(directory)
        let manifest: Manifest
        if FileOps.exists(manifestPath) {
            manifest = try Manifest(parsing: try FileOps.readWholeFile(manifestPath), file: manifestPath)
        } else {
            // No manifest: a new store. Layer files without one mean the manifest was lost; deleting
            // them as unreferenced would destroy data, so refuse instead.
            if let stray = names.first(where: { LayerDescriptor(fileName: $0) != nil }) {
                throw StorageError(.corruption, "the manifest is missing but layer files exist (for example \(stray)); restore the manifest or move the files away", file: manifestPath)
            }
            // A new store writes its empty manifest before anything else, so that from now on
            // "layer files but no manifest" can only mean a lost manifest, never a crash during
            // the first flush.
            var fresh = Manifest()
            if let ancestor { fresh.diskConsistentLSN = ancestor.lsn }
            manifest = fresh
            try FileOps.replaceDurably(manifestPath, with: manifest.encode(), directory: directory)
        }
        let referenced = Set(manifest.layers.map { $0.layer.fileName })
        for name in names {
            if name.hasSuffix(".tmp") || (LayerDescriptor(fileName: name) != nil && !referenced.contains(name)) {
                try FileOps.remove(directory + "/" + name)
            }
        }
        var chunks: [ChunkId: LayerMap.ChunkLayers] = [:]
        for entry in manifest.layers {
            let path = directory + "/" + entry.layer.fileName
            guard FileOps.exists(path) else {
                throw StorageError(.notFound, "layer file \(entry.layer.fileName) named by the manifest is missing", file: path)
            }
            let file = try LayerFile(path: path, expected: entry.layer, direct: context.directIO)
            guard file.fileSize == entry.fileSize else {
                throw StorageError.corruption("layer file is \(file.fileSize) bytes, the manifest says \(entry.fileSize)", file: path, offset: nil)
            }
            chunks[entry.layer.chunk, default: .init()].add(file)
        }
        if config.preloadIndexBlocks {
            // Each chunk's newest layers first: they are what reads at recent LSNs visit.
            let budget = context.indexCache.capacityBytes / 4 * 3
            var loaded = context.indexCache.usedBytes
            // Cold windows (BlockFetcher) only for a store whose files fit in half the compressed
            // tier's share: a larger one would not come back to most of what its windows bring in
            // before memory fills. Measured cold, 2000 reads: an 80 MB scale-100 store against a
            // 128 MiB share lost 9% of its pages/s at depth 1 and 25% at depth 32 with windows, where a
            // 23 MB scale-20 store gained 1.5-1.7x.
            let storeBytes = manifest.layers.reduce(0) { $0 + Int(clamping: $1.fileSize) }
            let blockTables = context.coldPrefetchWindowBytes > 0 && storeBytes <= context.compressedDataCache.capacityBytes / 2
            for file in chunks.values.flatMap({ $0.images.reversed() + $0.deltas.reversed() }) where loaded < budget || blockTables {
                loaded += file.preloadIndex(into: context.indexCache, budgetBytes: max(0, budget - loaded), blockTable: blockTables)
            }
        }
        let open = InMemoryLayer(startLSN: manifest.diskConsistentLSN.advanced(by: 1))
        if let ancestor, manifest.diskConsistentLSN < ancestor.lsn {
            throw StorageError(.corruption, "the store starts at \(manifest.diskConsistentLSN), below its branch point \(ancestor.lsn)", file: manifestPath)
        }
        let store = TimelineStore(directory: directory, config: config, context: context,
                                  map: LayerMap(open: open, frozen: [], chunks: chunks, gc: .init(cutoff: manifest.gcCutoffLSN)),
                                  manifest: manifest, ancestor: ancestor)
        if config.backgroundFlush { store.startFlusher() }
        return store
    }

    private init(directory: String, config: StoreConfig, context: StorageContext, map: LayerMap, manifest: Manifest, ancestor: Ancestor?) {
        self.directory = directory
        self.ancestor = ancestor
        self.config = config
        self.context = context
        self.map = ReadMostlyLock(map)
        self.manifest = Mutex(manifest)
        self.writer = Mutex(WriterState(lastRecordLSN: manifest.diskConsistentLSN))
        self.completedRecordLSN = Atomic(manifest.diskConsistentLSN.rawValue)
        self.storeId = context.newStoreId()
    }

    /// Stops the background flusher (it finishes the flush in progress). Does not flush.
    public func close() {
        guard config.backgroundFlush, !stopping.exchange(true, ordering: .acquiringAndReleasing) else { return }
        flushWake.signal()
        flusherExited.wait()
    }

    // MARK: - State

    public var diskConsistentLSN: LSN { manifest.withLock { $0.diskConsistentLSN } }
    /// The newest LSN written: the last record completed by `advance`, or the LSN of a newer put.
    public var lastRecordLSN: LSN {
        writer.withLock { w in max(w.lastRecordLSN, map.read { $0.open.maxPutLSN }) }
    }
    public var gcCutoffLSN: LSN { manifest.withLock { $0.gcCutoffLSN } }
    public var inMemoryBytes: Int { map.read { m in m.frozen.reduce(m.open.bytes) { $0 + $1.bytes } } }

    /// The live layer files and their sizes.
    public func layers() -> [(descriptor: LayerDescriptor, fileSize: UInt64)] {
        manifest.withLock { m in m.layers.map { ($0.layer, $0.fileSize) } }.sorted { $0.descriptor < $1.descriptor }
    }

    // MARK: - Writes

    /// Stores `value` under (key, lsn). REQUIRES: one ingest thread; LSNs non-decreasing and above
    /// disk_consistent_lsn. The puts of one record all carry its LSN and are followed by
    /// `advance(to:)`, which marks the record complete: layers are frozen only at such boundaries,
    /// never between two puts of one record.
    public func put(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        try writer.withLock { w in
            if let e = w.broken { throw e }
            let open = map.read { $0.open }
            try open.put(key, lsn, value)
            if open.bytes >= config.checkpointDistanceBytes { w.freezeRequested = true }
        }
    }

    /// Records that every record up to `lsn` is complete (records may store no values). Freezes the
    /// in-memory layer here when it is due (checkpoint_distance, checkpoint_timeout or a requested
    /// checkpoint), and flushes in this thread when too many frozen layers wait (backpressure).
    public func advance(to lsn: LSN) {
        let (due, checkAge) = writer.withLock { w -> (Bool, Bool) in
            if lsn > w.lastRecordLSN {
                w.lastRecordLSN = lsn
                completedRecordLSN.store(lsn.rawValue, ordering: .releasing)
            }
            w.advances &+= 1
            return (w.freezeRequested, w.advances & 1023 == 0)
        }
        // The age (checkpoint_timeout, seconds) is checked now and then, not per record: the clock
        // and the layer's lock cost more than a record's own work here. (With background flush the
        // flusher also checks it every second.)
        guard due || checkAge else { return }
        let aged = checkAge && {
            let open = map.read { $0.open }
            return !open.isEmpty && Double(monotonicNanos() - open.createdAtNanos) / 1e9 >= config.checkpointTimeoutSeconds
        }()
        guard due || aged else { return }
        guard freezeAtRecordBoundary() == .frozen else { return }
        let waiting = map.read { $0.frozen.count }
        if !config.backgroundFlush || waiting > config.maxFrozenLayers {
            do { try flushFrozenLayers() } catch { LSMLog.warning("flush of \(directory) failed: \(error)") }
        } else {
            flushWake.signal()
        }
    }

    enum FreezeOutcome { case frozen, nothingToFreeze, recordInProgress }

    /// Closes the open in-memory layer at last_record_lsn + 1 and starts a new one, unless the
    /// layer holds puts of a record not yet completed by `advance` (then it asks `advance` to freeze
    /// at the next boundary).
    @discardableResult
    func freezeAtRecordBoundary() -> FreezeOutcome {
        writer.withLock { w in
            map.write { m in
                if m.open.maxPutLSN > w.lastRecordLSN {
                    w.freezeRequested = true
                    return .recordInProgress
                }
                let end = w.lastRecordLSN.advanced(by: 1)
                guard end > m.open.startLSN else { return .nothingToFreeze }
                m.open.freeze(endLSN: end)
                m = LayerMap(open: InMemoryLayer(startLSN: end), frozen: m.frozen + [m.open], chunks: m.chunks, gc: m.gc)
                w.freezeRequested = false
                return .frozen
            }
        }
    }

    /// Freezes and flushes everything put so far, treating it as complete; returns the new
    /// disk_consistent_lsn. REQUIRES: called by the ingest thread (or with no ingest running).
    @discardableResult
    public func checkpoint() throws -> LSN {
        writer.withLock { w in
            let m = map.read { $0.open.maxPutLSN }
            if m > w.lastRecordLSN {
                w.lastRecordLSN = m
                completedRecordLSN.store(m.rawValue, ordering: .releasing)
            }
        }
        freezeAtRecordBoundary()
        try flushFrozenLayers()
        return diskConsistentLSN
    }

    /// For threads other than the ingest thread: waits until everything up to the last_record_lsn
    /// seen at the call is in layer files (freezing at the next record boundary the ingest thread
    /// reaches), at most `timeoutSeconds`. Returns the new disk_consistent_lsn.
    @discardableResult
    public func checkpointAtRecordBoundary(timeoutSeconds: Double = 60) throws -> LSN {
        let target = lastRecordLSN
        let deadline = monotonicNanos() + UInt64(timeoutSeconds * 1e9)
        while diskConsistentLSN < target {
            if map.read({ !$0.frozen.isEmpty }) {
                try flushFrozenLayers()
                continue
            }
            if freezeAtRecordBoundary() == .recordInProgress {
                guard monotonicNanos() < deadline else {
                    throw StorageError(.io, "checkpoint timed out: the record in progress was not completed within \(timeoutSeconds) s")
                }
                usleep(1000)
            }
        }
        if let e = writer.withLock({ $0.broken }) { throw e }
        return diskConsistentLSN
    }

    /// Flushes every frozen layer, oldest first.
    public func flushFrozenLayers() throws {
        flushLock.wait()
        defer { flushLock.signal() }
        while let layer = map.read({ $0.frozen.first }) {
            do {
                try flush(layer)
            } catch {
                // After a failed flush the on-disk state is unknown until a reopen: refuse writes.
                let e = error as? StorageError ?? StorageError(.io, "flush failed: \(error)")
                writer.withLock { $0.broken = e }
                throw error
            }
        }
    }

    private func startFlusher() {
        PThread { [self] in
            while !stopping.load(ordering: .acquiring) {
                _ = flushWake.wait(seconds: 1)
                if stopping.load(ordering: .acquiring) { break }
                do {
                    let open = map.read { $0.open }
                    if !open.isEmpty && Double(monotonicNanos() - open.createdAtNanos) / 1e9 >= config.checkpointTimeoutSeconds {
                        freezeAtRecordBoundary()
                    }
                    try flushFrozenLayers()
                } catch {
                    LSMLog.warning("flush of \(directory) failed: \(error)")
                }
            }
            flusherExited.signal()
        }.start()
    }

    private func flush(_ layer: InMemoryLayer) throws {
        guard let end = layer.endLSN else { preconditionFailure("flush of an open layer") }
        let failpoint = config.failpoint
        // One delta layer per chunk, written by up to `flushWriters` threads at once (largest chunks
        // first, so that one big chunk does not end up last on a thread); after every file is renamed
        // and before the manifest names them, one syncfs (or, with `FlushSync.eachFile`, each file's
        // own fsync and then the directory's).
        let work = layer.flushChunks()
        let jobs = work
        let order = jobs.indices.sorted { jobs[$0].bytes > jobs[$1].bytes }
        let directory = self.directory, config = self.config, startLSN = layer.startLSN, direct = context.directIO
        let syncEachFile = config.flushSync == .eachFile
        // Opened before any file is written: syncfs reports the write-back errors of the file system
        // since the descriptor was opened (Linux 5.8 and later).
        var fileSystemFD: Int32 = -1
        if !syncEachFile && !work.isEmpty {
            fileSystemFD = Glibc.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            guard fileSystemFD >= 0 else { throw ioError("open", errno: errno, file: directory) }
        }
        defer { if fileSystemFD >= 0 { Glibc.close(fileSystemFD) } }
        let results = Mutex<[Int: Result<(Manifest.Entry, LayerFile), any Error>]>([:])
        let nextJob = Atomic<Int>(0)
        let failed = Atomic<Bool>(false)
        let writeOne: @Sendable (Int) throws -> (Manifest.Entry, LayerFile) = { i in
            let d = LayerDescriptor(kind: .delta, chunk: jobs[i].chunk, lsnStart: startLSN, lsnEnd: end)
            let w = try LayerWriter(directory: directory, descriptor: d, dataBlockBytes: config.dataBlockBytes, compress: config.compress)
            try layer.forEachValue(in: jobs[i]) { key, lsn, kind, willInit, bytes in
                try w.add(key, lsn, kind: kind, willInit: willInit, bytes: bytes)
            }
            let size = try w.finish(syncDirectory: false, syncFile: syncEachFile) { step in
                switch step {
                case .written: try failpoint?(.layerWritten)
                case .synced: try failpoint?(.layerSynced)
                case .renamed: try failpoint?(.layerRenamed)
                }
            }
            return (.init(layer: d, fileSize: size), try LayerFile(path: directory + "/" + d.fileName, expected: d, direct: direct))
        }
        let writers = max(1, min(config.flushWriters, jobs.count))
        DispatchQueue.concurrentPerform(iterations: writers) { _ in
            while !failed.load(ordering: .relaxed) {
                let n = nextJob.add(1, ordering: .relaxed).oldValue
                guard n < order.count else { return }
                let i = order[n]
                let r = Result { try writeOne(i) }
                if case .failure = r { failed.store(true, ordering: .relaxed) }
                results.withLock { $0[i] = r }
            }
        }
        var newEntries: [Manifest.Entry] = []
        var newFiles: [LayerFile] = []
        let done = results.withLock { $0 }
        // The first failure in chunk order (a simulated crash included) is the flush's error.
        for i in work.indices {
            guard let r = done[i] else { continue }
            if case .failure(let e) = r { throw e }
        }
        for i in work.indices {
            let (entry, file) = try done[i]!.get()
            newEntries.append(entry)
            newFiles.append(file)
        }
        if fileSystemFD >= 0 {
            // The files' bytes and their renames, in one write-back and journal commit.
            guard cs_syncfs(fileSystemFD) == 0 else { throw ioError("syncfs", errno: errno, file: directory) }
            try failpoint?(.layersSynced)
        } else if !work.isEmpty {
            try FileOps.fsyncDirectory(directory)
        }
        manifestLock.wait()
        defer { manifestLock.signal() }
        var next = manifest.withLock { $0 }
        next.generation += 1
        next.diskConsistentLSN = LSN(end.rawValue - 1)
        next.layers += newEntries
        try writeManifest(next, failpoint: failpoint)
        manifest.withLock { $0 = next }
        map.write { m in
            var chunks = m.chunks
            for f in newFiles { chunks[f.descriptor.chunk, default: .init()].add(f) }
            precondition(m.frozen.first === layer, "flushed layer is not the oldest frozen layer")
            m = LayerMap(open: m.open, frozen: Array(m.frozen.dropFirst()), chunks: chunks, gc: m.gc)
        }
    }

    /// REQUIRES: `manifestLock` held.
    func writeManifest(_ m: Manifest, failpoint: (@Sendable (FlushStep) throws -> Void)?) throws {
        let path = directory + "/" + Manifest.fileName
        let tmp = path + ".tmp"
        let fd = try FileOps.openForWrite(tmp)
        do {
            try m.encode().withUnsafeBytes { try FileOps.writeAll(fd, $0, at: 0, path: tmp) }
            try failpoint?(.manifestWritten)
            try FileOps.fsyncFile(fd, path: tmp)
        } catch {
            Glibc.close(fd)
            throw error
        }
        Glibc.close(fd)
        try FileOps.rename(tmp, path)
        try failpoint?(.manifestRenamed)
        try FileOps.fsyncDirectory(directory)
    }

    // MARK: - Reads

    /// Sets up the calling thread's IO (its io_uring ring) ahead of its first read.
    public func prepareReaderThread() { context.io.prepareCurrentThread() }

    /// The value of `key` at `lsn`: nil when the key has no value there. Reconstructs with `redo`
    /// when the newest value is a record.
    public func get(_ key: Key, at lsn: LSN, redo: any Redo) throws -> [UInt8]? {
        try get([(key, lsn)], redo: redo)[0].get()
    }

    /// Many lookups at once: their index blocks are read in one batch and their data blocks in
    /// another (one io_uring submission each).
    public func get(_ requests: [(Key, LSN)], redo: any Redo) -> [Result<[UInt8]?, StorageError>] {
        var stats = ReadStats()
        return get(requests, redo: redo, stats: &stats)
    }

    public func get(_ requests: [(Key, LSN)], redo: any Redo, stats: inout ReadStats) -> [Result<[UInt8]?, StorageError>] {
        get(requests, redo: redo, stats: &stats, spread: true)
    }

    /// `spread`: a large batch may be split over `redoThreads` threads, each answering a contiguous
    /// part of it from its own plan, reads and redo. A pipelining client's batch would otherwise use
    /// one core for everything but its redo. Parts are answered exactly as the whole would be: every
    /// lookup is independent of the others, and each part takes its own snapshot.
    func get(_ requests: [(Key, LSN)], redo: any Redo, stats: inout ReadStats, spread: Bool) -> [Result<[UInt8]?, StorageError>] {
        let parts = spread ? min(config.redoThreads, requests.count / max(1, config.lookupsPerReadThread)) : 1
        guard parts > 1 else { return lookUp(requests, redo: redo, stats: &stats, parallelRedo: spread)! }
        // A batch whose blocks are all in memory is answered on the caller's thread: it has no read
        // to wait for, and handing parts to other threads costs a wake-up and a wait each.
        // After a try that missed, the next 1, 2, 4, ... 64 batches are split without one (a cold
        // phase then wastes a plan on few of its batches); a try that succeeds ends the backoff.
        if config.cachedBatchesOnCaller {
            if cachedTrySkipsLeft.load(ordering: .relaxed) > 0 {
                cachedTrySkipsLeft.subtract(1, ordering: .relaxed)
            } else if let answers = lookUp(requests, redo: redo, stats: &stats, parallelRedo: config.cachedBatchParallelRedo, cachedOnly: true) {
                cachedTryBackoff.store(0, ordering: .relaxed)
                return answers
            } else {
                let backoff = min(64, max(1, cachedTryBackoff.load(ordering: .relaxed) * 2))
                cachedTryBackoff.store(backoff, ordering: .relaxed)
                cachedTrySkipsLeft.store(backoff, ordering: .relaxed)
            }
        }
        var partResults = Array(repeating: [Result<[UInt8]?, StorageError>](), count: parts)
        var partStats = Array(repeating: ReadStats(), count: parts)
        if stats.layersPerLookup != nil { for p in partStats.indices { partStats[p].layersPerLookup = [] } }
        partResults.withUnsafeMutableBufferPointer { out in
            partStats.withUnsafeMutableBufferPointer { ps in
                // Each part writes only its own element of `out` and `ps`.
                nonisolated(unsafe) let out = out, ps = ps
                context.readParts.perform(iterations: parts) { p in
                    let range = (requests.count * p / parts)..<(requests.count * (p + 1) / parts)
                    out[p] = self.lookUp(Array(requests[range]), redo: redo, stats: &ps[p], parallelRedo: false)!
                }
            }
        }
        for part in partStats {
            stats.layersVisited += part.layersVisited
            stats.recordsApplied += part.recordsApplied
            if let l = part.layersPerLookup { stats.layersPerLookup?.append(contentsOf: l) }
        }
        return Array(partResults.joined())
    }

    /// One batch on the calling thread; with `parallelRedo`, its redo may still use `redoThreads`.
    /// nil only with `cachedOnly`, when a block the batch needs is in no cache (nothing was read,
    /// and `stats` is unchanged).
    private func lookUp(_ requests: [(Key, LSN)], redo: any Redo, stats: inout ReadStats, parallelRedo: Bool,
                        cachedOnly: Bool = false) -> [Result<[UInt8]?, StorageError>]? {
        // Taken before the snapshot: every value at or below it is in the snapshot (invariant 1 of
        // MaterializedPageCache).
        // Only completed records count: `lastRecordLSN` also covers the puts of a record still in
        // progress, and a value read while its record's other puts are pending must not be
        // remembered at that record's LSN (the record's value for the key would then be skipped).
        let complete = LSN(completedRecordLSN.load(ordering: .acquiring))
        let started = monotonicNanos()
        let snapshot = map.read { $0 }
        var states = requests.map { LookupState(key: $0.0, lsn: $0.1) }
        let materialized = context.materialized
        if materialized.isEnabled {
            for i in states.indices {
                states[i].base = materialized.lookup(storeId, states[i].key, at: states[i].lsn)
                states[i].floor = states[i].base?.lsn
            }
        }
        var fetcher = context.fetcher
        fetcher.cachedOnly = cachedOnly
        do {
            try snapshot.plan(&states, fetcher: fetcher)
        } catch is BlockFetcher.NeedsDeviceRead {
            return nil
        } catch let e as StorageError {
            return Array(repeating: .failure(e), count: requests.count)
        } catch {
            return Array(repeating: .failure(StorageError(.io, "\(error)")), count: requests.count)
        }
        // One request per run of planned values in the same block: a long chain (a page updated
        // thousands of times since its last image) has thousands of values in a few hundred blocks,
        // and the fetch then looks each block up once instead of once per value.
        // blockOf[k]: the request of the k-th planned value, in the order of the loop below.
        var dataRequests: [BlockRequest] = []
        var blockOf: [Int32] = []
        let plannedCount = states.reduce(0) { $0 + $1.planned.count }
        blockOf.reserveCapacity(plannedCount)
        for n in states.indices {
            for p in states[n].planned {
                if let last = dataRequests.last, last.handle.offset == p.block.offset, last.layer === p.layer {
                    blockOf.append(Int32(dataRequests.count - 1))
                } else {
                    blockOf.append(Int32(dataRequests.count))
                    dataRequests.append(BlockRequest(layer: p.layer, handle: p.block, isIndex: false))
                }
            }
        }
        let blocks: [FetchedBlock]
        do {
            blocks = try fetcher.fetch(dataRequests)
        } catch is BlockFetcher.NeedsDeviceRead {
            return nil
        } catch let e as StorageError {
            return Array(repeating: .failure(e), count: requests.count)
        } catch {
            return Array(repeating: .failure(StorageError(.io, "\(error)")), count: requests.count)
        }
        // Complete each lookup's chain with its planned values; those with no base of their own go on
        // to the ancestor.
        var next = 0
        for n in states.indices {
            if let refused = states[n].refused {
                states[n].failure = refused
                continue
            }
            stats.layersVisited += states[n].layersVisited
            // The chain is moved out while it grows (a long chain appends thousands of values), and
            // each run of values in one block takes the block once.
            var chain: [RedoRecord] = []
            swap(&chain, &states[n].chain)
            let planned = states[n].planned
            states[n].planned = []
            chain.reserveCapacity(chain.count + planned.count)
            var blockIndex = -1
            var block: [UInt8] = []
            for e in planned {
                let b = Int(blockOf[next])
                next += 1
                if b != blockIndex {
                    block = blocks[b].bytes
                    blockIndex = b
                }
                let start = Int(e.valueOffset), end = start + Int(e.valueLength)
                guard end <= block.count else {
                    states[n].failure = .corruption("value \(states[n].key)@\(e.lsn) lies outside its data block", file: e.layer.path, offset: e.block.offset)
                    continue
                }
                // A value that fills its block (an image alone in its block) shares the block's
                // storage instead of being copied.
                let bytes = start == 0 && end == block.count ? block
                    : block.withUnsafeBytes { [UInt8](UnsafeRawBufferPointer(rebasing: $0[start..<end])) }
                chain.append(RedoRecord(lsn: e.lsn, value: Value(kind: e.kind, willInit: e.willInit, bytes: bytes)))
            }
            swap(&chain, &states[n].chain)
        }
        var perLookup = stats.layersPerLookup == nil ? [] : states.map { $0.layersVisited }
        var inherited: [Int: Result<[UInt8]?, StorageError>] = [:]
        if let ancestor {
            var asks: [(Key, LSN)] = []
            var askers: [Int] = []
            for (n, s) in states.enumerated() where s.failure == nil {
                // A key missing from an image layer of this store had no value of its own there
                // (a branch's image layers hold only the keys it wrote), so it goes on too.
                let hasBase = (s.chain.last?.value.startsChain ?? false) || s.base != nil
                if !hasBase {
                    asks.append((s.key, min(s.lsn, ancestor.lsn)))
                    askers.append(n)
                }
            }
            if !asks.isEmpty {
                var ancestorStats = ReadStats()
                if stats.layersPerLookup != nil { ancestorStats.layersPerLookup = [] }
                let answers = ancestor.store.get(asks, redo: redo, stats: &ancestorStats, spread: parallelRedo)
                stats.layersVisited += ancestorStats.layersVisited
                stats.recordsApplied += ancestorStats.recordsApplied
                for (i, n) in askers.enumerated() {
                    inherited[n] = answers[i]
                    if let l = ancestorStats.layersPerLookup, !perLookup.isEmpty { perLookup[n] += l[i] }
                }
            }
        }
        func answer(_ n: Int, _ stats: inout ReadStats) -> Result<[UInt8]?, StorageError> {
            if let failure = states[n].failure { return .failure(failure) }
            let key = states[n].key, lsn = states[n].lsn
            var cached = states[n].base
            if !inherited.isEmpty, let fromAncestor = inherited[n] {
                switch fromAncestor {
                case .failure(let e): return .failure(e)
                case .success(let bytes): if let bytes { cached = (min(lsn, ancestor!.lsn), bytes) }
                }
            }
            // The answer is the image an image layer holds (what compaction leaves for every page).
            let fromImageLayer = states[n].chain.count == 1 && states[n].imageLayer.map { states[n].chain[0].lsn <= $0.descriptor.lsnStart } == true
            return Result { try reconstruct(key: key, lsn: lsn, newestFirst: states[n].chain, materialized: cached, complete: complete,
                                            fromImageLayer: fromImageLayer, redo: redo, stats: &stats) }
                .mapError { $0 as? StorageError ?? StorageError(.redo, "\($0)", lsn: lsn) }
        }
        // Lookups whose newest value is a record need redo, the one costly step left; a batch with
        // several of them spreads them over `redoThreads` threads (a pipelining client's batch would
        // otherwise use one core). The others are answered here.
        func needsRedo(_ n: Int) -> Bool { states[n].failure == nil && !(states[n].chain.first.map { $0.value.kind == .image } ?? true) }
        var results: [Result<[UInt8]?, StorageError>]
        let parallel = parallelRedo && config.redoThreads > 1 && states.count >= config.parallelRedoMinimum
        let needsRedo = parallel ? states.indices.filter(needsRedo) : []
        if parallel && needsRedo.count >= config.parallelRedoMinimum {
            results = Array(repeating: .success(nil), count: states.count)
            let workers = min(config.redoThreads, needsRedo.count)
            var workerStats = Array(repeating: ReadStats(), count: workers)
            results.withUnsafeMutableBufferPointer { out in
                workerStats.withUnsafeMutableBufferPointer { ws in
                    // Each worker writes only its own slots of `out` and its own `ws` element, and
                    // `answer` only reads this call's lookup state, which nothing changes any more.
                    nonisolated(unsafe) let out = out, ws = ws, answer = answer
                    DispatchQueue.concurrentPerform(iterations: workers) { w in
                        var i = w
                        while i < needsRedo.count {
                            out[needsRedo[i]] = answer(needsRedo[i], &ws[w])
                            i += workers
                        }
                    }
                }
            }
            var redone = [Bool](repeating: false, count: states.count)
            for n in needsRedo { redone[n] = true }
            for n in states.indices where !redone[n] { results[n] = answer(n, &stats) }
            for w in workerStats { stats.recordsApplied += w.recordsApplied }
        } else {
            results = states.indices.map { answer($0, &stats) }
        }
        if !perLookup.isEmpty { stats.layersPerLookup?.append(contentsOf: perLookup) }
        if context.balance.adaptive {
            // What each kind of lookup costs here, for the split of page memory.
            var hits = 0, rebuilds = 0
            for n in states.indices where states[n].failure == nil {
                if states[n].base != nil {
                    hits += 1
                } else if let newest = states[n].chain.first, newest.value.kind != .image {
                    rebuilds += 1
                }
            }
            context.balance.noteLookups(hits: hits, rebuilds: rebuilds, plain: states.count - hits - rebuilds,
                                        nanos: Int(monotonicNanos() &- started))
        }
        return results
    }

    /// How a read of (key, lsn) would be answered, for diagnostics (a verifier's mismatch report):
    /// the store's LSNs, the in-memory layers, the materialized base, and every value the read would
    /// collect, newest first, with its kind and the layer it comes from. Reads no data blocks.
    public func explain(_ key: Key, at lsn: LSN) -> String {
        let complete = LSN(completedRecordLSN.load(ordering: .acquiring))
        let snapshot = map.read { $0 }
        var lines = ["read of \(key) at \(lsn): last completed record \(complete), disk_consistent_lsn \(diskConsistentLSN), GC cutoff \(snapshot.gc.cutoff)"]
        lines.append("in-memory layers: " + ([snapshot.open] + snapshot.frozen.reversed()).map { "\($0.startLSN)..\($0.endLSN.map { "\($0)" } ?? "open")" }.joined(separator: ", "))
        var state = LookupState(key: key, lsn: lsn)
        if context.materialized.isEnabled, let base = context.materialized.lookup(storeId, key, at: lsn) {
            state.floor = base.lsn
            lines.append("materialized base at \(base.lsn)")
        }
        var states = [state]
        do { try snapshot.plan(&states, fetcher: context.fetcher) } catch { return (lines + ["plan failed: \(error)"]).joined(separator: "\n") }
        for r in states[0].chain {
            lines.append("  \(r.lsn) \(r.value.kind)\(r.value.willInit ? " will-init" : "") \(r.value.bytes.count) bytes, in memory")
        }
        for e in states[0].planned {
            lines.append("  \(e.lsn) \(e.kind)\(e.willInit ? " will-init" : "") \(e.valueLength) bytes, \(e.layer.descriptor.fileName) block (\(e.block.offset), \(e.block.size))")
        }
        if states[0].chain.isEmpty && states[0].planned.isEmpty { lines.append("  (no values)") }
        return lines.joined(separator: "\n")
    }

    private func reconstruct(key: Key, lsn: LSN, newestFirst chain: [RedoRecord], materialized cached: (lsn: LSN, bytes: [UInt8])?,
                             complete: LSN, fromImageLayer: Bool, redo: any Redo, stats: inout ReadStats) throws -> [UInt8]? {
        guard let oldest = chain.last else { return cached?.bytes }
        if chain[0].value.kind == .image {
            // A page read as an image is remembered too, where the split of page memory is balanced:
            // a hit then decompresses the page alone instead of finding (or reading and decoding)
            // its data block. Measured with pgbench stores and image layers: 1.7-2.3x the pages/s at
            // scale 20, where every page fits, and the same as without at scale 100. (A fixed share
            // of such entries crowded out the blocks: 0.65-0.8x at scale 100.) An image from a delta
            // layer (a base backup's page, a full-page write) only while the cache has room to
            // spare: where most reads rebuild pages and the cache is full, compressing each such
            // read cost more than its later hits saved (0.8-0.9x at scale 100 without image layers).
            let page = chain[0].value.bytes
            if page.count >= 4096 && context.balance.adaptive && (fromImageLayer || context.materialized.hasRoom(storeId, key)) {
                remember(key, lsn: lsn, newest: chain[0].lsn, complete: complete, page, records: 0)
            }
            return page
        }
        if !oldest.value.startsChain, let cached {
            // The materialized value is the base; the chain holds only what came after it.
            guard chain.count <= config.maxChainLength else {
                throw StorageError(.unsupported, "reconstructing key \(key) needs \(chain.count) records, more than max_chain_length \(config.maxChainLength)", lsn: lsn)
            }
            let records = Array(chain.reversed())
            stats.recordsApplied += records.count
            let page = try redo.reconstruct(key: key, lsn: lsn, base: (cached.lsn, cached.bytes), records: records)
            remember(key, lsn: lsn, newest: chain[0].lsn, complete: complete, page, records: records.count)
            return page
        }
        guard oldest.value.startsChain else {
            throw StorageError(.notFound, "no base image for key \(key): the oldest record, at LSN \(oldest.lsn), does not initialize the value", lsn: lsn)
        }
        guard chain.count <= config.maxChainLength + 1 else {
            throw StorageError(.unsupported, "reconstructing key \(key) needs \(chain.count) records, more than max_chain_length \(config.maxChainLength)", lsn: lsn)
        }
        var base: (lsn: LSN, bytes: [UInt8])?
        var records: [RedoRecord]
        if oldest.value.kind == .image {
            base = (oldest.lsn, oldest.value.bytes)
            records = Array(chain.dropLast().reversed())
        } else {
            records = Array(chain.reversed())
        }
        stats.recordsApplied += records.count
        let page = try redo.reconstruct(key: key, lsn: lsn, base: base, records: records)
        remember(key, lsn: lsn, newest: chain[0].lsn, complete: complete, page, records: records.count)
        return page
    }

    /// Puts a reconstructed value into the materialized cache at the highest LSN it is known complete
    /// for: the read LSN when that is at or below `complete`, else `complete` when the chain had
    /// nothing above it.
    private func remember(_ key: Key, lsn: LSN, newest: LSN, complete: LSN, _ page: [UInt8], records: Int) {
        if lsn <= complete {
            context.materialized.insert(storeId, key, at: lsn, page, records: records)
        } else if newest <= complete {
            context.materialized.insert(storeId, key, at: complete, page, records: records)
        }
    }
}

/// Counters a read adds to (for metrics and tests).
public struct ReadStats: Sendable {
    public var layersVisited = 0
    public var recordsApplied = 0
    /// When not nil, `get` appends the layers each lookup visited (its ancestors' included), in
    /// request order.
    public var layersPerLookup: [Int]?
    public init() {}
}
