// The two stores the driver measures, behind one interface so that ingest and GetPage run the very
// same code against both: ours (`TimelineStore`, layer files) and the seed's design (`RocksStore`).
import Foundation
import Synchronization
import LSM
import PostgresRedo
import PostgresWAL

enum StoreKind: String {
    case ours, rocksdb
}

/// The longest chain of records either store hands to redo. Neither store compacts during the
/// benchmark, and both store the same history: ours without the daemon's images on ingest (the seed's
/// design has no image creation at all), so a hot page (pgbench_branches' one block) can have tens of
/// thousands of records above its last image in either; both get the same, generous limit.
/// OURS_INGEST_IMAGES=N ingests ours as the daemon does with `ingest_image_threshold = N`
/// (IngestImages.swift), for A/B runs.
let benchMaxChainLength = 1 << 20

/// The redo both stores reconstruct with.
let benchRedo = PostgresRedo(settings: RedoSettings(maxChainLength: benchMaxChainLength))

/// The timeline id of the benchmark's one timeline (part of every RocksDB key, as in the seed).
let benchTimeline = TimelineId(parsing: "0123456789abcdef0123456789abcdef")!

/// A store being ingested into. REQUIRES: one thread.
protocol IngestStore {
    var target: any IngestTarget { get }
    var pageSource: any PageSource { get }
    /// After the base-backup import (untimed): everything up to `lsn` made durable.
    func finishImport(at lsn: LSN) throws
    /// The timed durable flush; returns the LSN everything up to which is durable.
    func durableFlush(lastRecordEnd: LSN) throws -> LSN
    /// Bytes of every file of the store, and of its data files (layer files, SST files).
    func bytesOnDisk() -> (total: UInt64, data: UInt64, dataFiles: Int)
    func close()
}

/// A store being read. Thread-safe: each thread asks for its own `PageReader`.
protocol ReadStore: Sendable {
    /// The newest LSN ingested.
    func latestLSN() throws -> LSN
    func reader() -> any PageReader
    func close()
    /// Empties the store's own caches of data (index blocks stay: RocksDB's table readers keep
    /// theirs outside the block cache, and ours are preloaded at open).
    func dropCaches()
    /// Figures of the store's own caches for the JSON line (name, JSON value); none by default.
    func cacheFigures() -> [(String, String)]
}

extension ReadStore {
    func cacheFigures() -> [(String, String)] { [] }
}

/// The reads of one thread.
protocol PageReader {
    func get(_ key: Key, at lsn: LSN) throws -> [UInt8]?
    /// Several keys at once; by default one after the other.
    func get(_ keys: [Key], at lsn: LSN) -> [Result<[UInt8]?, StorageError>]
}

extension PageReader {
    func get(_ keys: [Key], at lsn: LSN) -> [Result<[UInt8]?, StorageError>] {
        keys.map { key in
            do { return .success(try get(key, at: lsn)) } catch let e as StorageError { return .failure(e) } catch {
                return .failure(StorageError(.io, "\(error)"))
            }
        }
    }
}

// MARK: - Ours

/// Our store, opened as the daemon opens it (io_uring reads, background flush, default checkpoint
/// distance) with a data cache of `cacheBytes`.
final class OurStore: IngestStore, ReadStore, @unchecked Sendable {
    // @unchecked: TimelineStore is Sendable; `target` is used by the one ingest thread only.
    let store: TimelineStore
    let context: StorageContext
    let target: any IngestTarget
    let pageSource: any PageSource
    /// Read amplification of every lookup since the store opened (the warm-up's included).
    let lookups = Atomic<Int>(0), layersVisited = Atomic<Int>(0), recordsApplied = Atomic<Int>(0)

    init(directory: String, cacheBytes: Int, backgroundFlush: Bool) throws {
        // The daemon's default share of the data cache for compressed blocks; OURS_COMPRESSED_FRACTION
        // overrides it for A/B runs (0 turns the compressed tier off).
        let fraction = ProcessInfo.processInfo.environment["OURS_COMPRESSED_FRACTION"].flatMap(Double.init) ?? 0.5
        // The materialized pages' share of the same budget, as the daemon's defaults give it: at most
        // 7/8, moved by the reads (OURS_MATERIALIZED_MB overrides the most for A/B runs, 0 turns them
        // off; OURS_ADAPTIVE_SPLIT=0 fixes the share at that most).
        let materialized = ProcessInfo.processInfo.environment["OURS_MATERIALIZED_MB"].flatMap(Int.init).map { $0 << 20 }
        let adaptive = ProcessInfo.processInfo.environment["OURS_ADAPTIVE_SPLIT"] != "0"
        // The cold-read window, as the daemon's default gives it (OURS_PREFETCH_KB overrides it for
        // A/B runs, 0 turns it off).
        let window = (ProcessInfo.processInfo.environment["OURS_PREFETCH_KB"].flatMap(Int.init) ?? 128) << 10
        // Layer files read with O_DIRECT, as the daemon's `direct_io = true` (OURS_DIRECT_IO=1).
        let direct = ProcessInfo.processInfo.environment["OURS_DIRECT_IO"] == "1"
        // The daemon's default io engine (OURS_IO_ENGINE=pread for A/B runs).
        let engine = ProcessInfo.processInfo.environment["OURS_IO_ENGINE"].flatMap(IOEngineKind.init(rawValue:)) ?? .ioUring
        let context = StorageContext(io: makeBlockIO(engine), dataCacheBytes: cacheBytes, directIO: direct, materializedCacheBytes: materialized,
                                     compressedCacheFraction: fraction, adaptiveSplit: adaptive, coldPrefetchWindowBytes: window)
        self.context = context
        var config = StoreConfig()
        config.backgroundFlush = backgroundFlush
        config.maxChainLength = benchMaxChainLength
        // Threads that answer one batched read (OURS_READ_THREADS overrides the daemon's default).
        if let threads = ProcessInfo.processInfo.environment["OURS_READ_THREADS"].flatMap(Int.init), threads > 0 {
            config.redoThreads = threads
        }
        if let v = ProcessInfo.processInfo.environment["OURS_CACHED_ON_CALLER"] { config.cachedBatchesOnCaller = v != "0" }
        if let v = ProcessInfo.processInfo.environment["OURS_CACHED_PARALLEL_REDO"] { config.cachedBatchParallelRedo = v != "0" }
        if let n = ProcessInfo.processInfo.environment["OURS_LOOKUPS_PER_THREAD"].flatMap(Int.init), n > 0 {
            config.lookupsPerReadThread = n
        }
        store = try TimelineStore.open(directory: directory, config: config, context: context)
        let imageThreshold = ProcessInfo.processInfo.environment["OURS_INGEST_IMAGES"].flatMap(Int.init) ?? 0
        target = TimelineStoreTarget(store: store, images: imageThreshold > 0 ? IngestImages(store: store, redo: benchRedo, threshold: imageThreshold) : nil)
        pageSource = TimelineStorePageSource(store: store, redo: ImageOnlyRedo())
    }

    func finishImport(at lsn: LSN) throws {
        store.advance(to: lsn)
        try store.checkpoint()
    }

    func durableFlush(lastRecordEnd: LSN) throws -> LSN { try store.checkpoint() }

    func bytesOnDisk() -> (total: UInt64, data: UInt64, dataFiles: Int) {
        let files = store.layers()
        let usage = diskUsage(store.directory, dataSuffix: "\u{0}")
        return (usage.total, files.reduce(0) { $0 + $1.fileSize }, files.count)
    }

    func latestLSN() throws -> LSN { store.lastRecordLSN }

    func reader() -> any PageReader {
        store.prepareReaderThread()  // the thread's io_uring ring, before any timed read
        return OurReader(store: store, counters: self)
    }

    func close() { store.close() }

    func dropCaches() { context.dropPageMemory() }

    /// The data cache's two tiers: bytes held, and hits and misses since the store opened (the
    /// warm-up's included); layers visited and records applied per lookup.
    func cacheFigures() -> [(String, String)] {
        let d = context.dataCache, c = context.compressedDataCache
        let n = max(1, lookups.load(ordering: .relaxed))
        func per(_ total: Int) -> String { String(format: "%.2f", Double(total) / Double(n)) }
        return [("layers_per_lookup", per(layersVisited.load(ordering: .relaxed))), ("records_per_lookup", per(recordsApplied.load(ordering: .relaxed))),
                ("data_blocks_per_lookup", String(format: "%.2f", Double(d.hitCount + d.missCount) / Double(n))),("decoded_cache_mb", "\(d.usedBytes >> 20)"), ("decoded_hits", "\(d.hitCount)"), ("decoded_misses", "\(d.missCount)"),
                ("compressed_cache_mb", "\(c.usedBytes >> 20)"), ("compressed_hits", "\(c.hitCount)"),
                ("materialized_mb", "\(context.materialized.usedBytes >> 20)"), ("materialized_hits", "\(context.materialized.hits)"),
                ("materialized_capacity_mb", "\(context.materialized.capacityBytes >> 20)"), ("split_moves", "\(context.balance.moveCount)")]
    }
}

/// One thread's reader. It counts its lookups' layers and records itself and adds them to the
/// store's totals when it goes away, so that 32 reading threads do not share a counter's cache line.
final class OurReader: PageReader {
    let store: TimelineStore
    let counters: OurStore
    let redo = benchRedo
    private var lookups = 0, layersVisited = 0, recordsApplied = 0

    init(store: TimelineStore, counters: OurStore) {
        self.store = store
        self.counters = counters
    }

    deinit {
        counters.lookups.add(lookups, ordering: .relaxed)
        counters.layersVisited.add(layersVisited, ordering: .relaxed)
        counters.recordsApplied.add(recordsApplied, ordering: .relaxed)
    }

    func get(_ key: Key, at lsn: LSN) throws -> [UInt8]? { try get([key], at: lsn)[0].get() }
    func get(_ keys: [Key], at lsn: LSN) -> [Result<[UInt8]?, StorageError>] {
        var stats = ReadStats()
        let results = store.get(keys.map { ($0, lsn) }, redo: redo, stats: &stats)
        lookups += keys.count
        layersVisited += stats.layersVisited
        recordsApplied += stats.recordsApplied
        return results
    }
}

// MARK: - RocksDB

final class RocksBench: IngestStore, ReadStore, @unchecked Sendable {
    // @unchecked: see RocksStore.
    let store: RocksStore
    let target: any IngestTarget
    let pageSource: any PageSource

    init(path: String, cacheBytes: Int) throws {
        store = try RocksStore(path: path, timeline: benchTimeline, cacheBytes: cacheBytes)
        target = RocksTarget(store: store)
        pageSource = RocksPageSource(store: store, redo: ImageOnlyRedo())
    }

    func finishImport(at lsn: LSN) throws { try store.flush(lastLSN: lsn) }

    func durableFlush(lastRecordEnd: LSN) throws -> LSN {
        try store.flush(lastLSN: lastRecordEnd)
        return lastRecordEnd
    }

    func bytesOnDisk() -> (total: UInt64, data: UInt64, dataFiles: Int) {
        store.waitForCompactions()
        let usage = diskUsage(store.path, dataSuffix: ".sst")
        let files = (try? FileManager.default.contentsOfDirectory(atPath: store.path))?.filter { $0.hasSuffix(".sst") }.count ?? 0
        return (usage.total, usage.data, files)
    }

    func latestLSN() throws -> LSN {
        guard let l = try store.lastLSN() else { throw StorageError(.notFound, "\(store.path) holds no ingested WAL (no last LSN)") }
        return l
    }

    func reader() -> any PageReader { RocksPageReader(reader: store.reader()) }

    func close() { store.close() }

    func dropCaches() { store.dropBlockCache() }
}

struct RocksPageReader: PageReader {
    let reader: RocksReader
    let redo = benchRedo
    func get(_ key: Key, at lsn: LSN) throws -> [UInt8]? { try reader.get(key, at: lsn, redo: redo) }
}
