import Foundation
import LSM
import PostgresWAL
import TOMLKit
import Workdir

/// The daemon's settings: defaults, then the TOML config file, then command-line flags.
///
/// Every setting a user may write in the file is listed in `knownKeys`; an unknown key is an error
/// (a typo must not silently fall back to a default). Units are last in the names.
struct ServerConfig: Sendable {
    var workdir = "./.pageserver"
    var listenPg = "127.0.0.1:64000"
    var listenHttp = "127.0.0.1:9898"
    /// Freeze the in-memory layer at this many bytes (Neon's default: 256 MiB).
    var checkpointDistanceBytes = 256 << 20
    /// ... or when its oldest value is this many seconds old.
    var checkpointTimeoutSeconds: Double = 600
    var ioEngine: IOEngineKind = .ioUring
    /// Data block cache ("page cache") size.
    var pageCacheBytes = 512 << 20
    /// At most this share of `pageCacheBytes` holds data blocks as they are on disk (compressed);
    /// the decoded blocks have the rest, and what the compressed ones do not use
    /// (StorageContext.compressedDataCache).
    var compressedPageCacheShare = 0.5
    var indexCacheBytes = 128 << 20
    var directIO = false
    /// How long a GetPage above last_record_lsn waits for the WAL.
    var waitLsnTimeoutSeconds: Double = 300
    /// Longest record chain one reconstruction may apply.
    var maxChainLength = 10_000
    /// Threads that answer one batch of pipelined GetPage requests (StoreConfig.redoThreads).
    var redoThreads = StoreConfig().redoThreads
    /// How a flush makes its layer files durable (StoreConfig.flushSync).
    var flushSync = StoreConfig().flushSync
    /// Reconnect backoff of the WAL receiver.
    var walReceiverBackoffMaxSeconds: Double = 10
    /// Check our redo against the primary's wal_consistency_checking images (see RedoVerification).
    var verifyRedo = false
    /// Page service: most open libpq connections, and most pipelined requests read ahead per connection.
    var pageServiceMaxConnections = 10_000
    var pageServiceMaxInflight = 256
    /// At most this many pagestream connections at a time are served by a thread of their own with
    /// blocking socket calls (DetachedCopyBoth.swift); the others, and all when 0, on the event loops.
    /// Default: two per core (beyond that, threads contend for the cores and locks, and the event
    /// loops' batching across connections does better).
    var pagestreamThreads = 2 * ProcessInfo.processInfo.activeProcessorCount
    /// Store a page image instead of the record that would make a key's chain this long (0: never).
    var ingestImageThreshold = IngestImages.defaultThreshold
    /// At most this much of `pageCacheBytes` (nil: 7/8 of it, the most it may be) holds
    /// reconstructed pages for all timelines (MaterializedPageCache), compressed where that pays.
    var materializedPageCacheBytes: Int? = nil
    /// Move the materialized pages' share of `pageCacheBytes` as the reads show what it is worth
    /// (PageMemoryBalance); false: they keep `materializedPageCacheBytes`.
    var adaptivePageCacheSplit = true
    /// While page memory has never been full, a block read also reads the whole blocks of the
    /// aligned window of this many bytes around it (0: off; StorageContext).
    var coldPrefetchWindowBytes = 128 << 10
    /// Compaction (TimelineMaintenance): how often a pass runs per timeline (0: never in the
    /// background); a chunk gets a new image layer once it has `imageCreationThreshold` delta layers
    /// above its newest image; more than `compactionThreshold` delta layers of a chunk are merged.
    var compactionPeriodSeconds: Double = 20
    var imageCreationThreshold = 3
    /// ... or more than this many bytes of delta layers above its newest image.
    var imageCreationBytes = 128 << 20
    var compactionThreshold = 10
    /// GC: how often it runs (0: never in the background), and what it keeps: every version needed
    /// to read at LSNs within `gcHorizonBytes` of WAL behind last_record_lsn and within
    /// `pitrIntervalSeconds` of now (the cutoff is the lower of the two).
    var gcPeriodSeconds: Double = 3600
    var gcHorizonBytes = 64 << 20
    var pitrIntervalSeconds: Double = 7 * 86400
    /// Ingest slows down while a chunk has more than this many delta layers above its newest image
    /// (compaction has fallen behind).
    var maxDeltaDepth = 50

    static let knownKeys: Set<String> = [
        "workdir", "listen_pg", "listen_http", "checkpoint_distance", "checkpoint_timeout", "io_engine",
        "page_cache_size", "compressed_page_cache_share", "index_cache_size", "direct_io", "wait_lsn_timeout", "max_chain_length", "redo_threads",
        "wal_receiver_backoff_max", "verify_redo", "page_service_max_connections", "page_service_max_inflight", "pagestream_threads",
        "ingest_image_threshold", "materialized_page_cache_size", "adaptive_page_cache_split", "cold_prefetch_window_size", "compaction_period", "image_creation_threshold", "image_creation_bytes",
        "compaction_threshold", "gc_period", "gc_horizon", "pitr_interval", "max_delta_depth", "flush_sync",
    ]

    /// Applies the TOML file at `path`. Sizes may be integers (bytes) or strings with a unit
    /// ("256MiB", "1GB"); durations integers (seconds) or strings ("10s", "5m", "1h").
    mutating func apply(tomlFile path: String) throws {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw ConfigError("cannot read config file \(path): \(error.localizedDescription)")
        }
        let table: TOMLTable
        do { table = try TOMLTable(string: text) } catch {
            throw ConfigError("config file \(path) is not valid TOML: \(error)")
        }
        for key in table.keys where !ServerConfig.knownKeys.contains(key) {
            throw ConfigError("config file \(path): unknown setting '\(key)' (known: \(ServerConfig.knownKeys.sorted().joined(separator: ", ")))")
        }
        func string(_ k: String) throws -> String? {
            guard let v = table[k] else { return nil }
            guard let s = v.string else { throw ConfigError("config file \(path): '\(k)' must be a string") }
            return s
        }
        func size(_ k: String) throws -> Int? {
            guard let v = table[k] else { return nil }
            if let i = v.int { return i }
            if let s = v.string, let b = parseSize(s) { return b }
            throw ConfigError("config file \(path): '\(k)' must be a size such as 268435456 or \"256MiB\"")
        }
        func seconds(_ k: String) throws -> Double? {
            guard let v = table[k] else { return nil }
            if let i = v.int { return Double(i) }
            if let d = v.double { return d }
            if let s = v.string, let t = parseDuration(s) { return t }
            throw ConfigError("config file \(path): '\(k)' must be a duration such as 600 or \"10m\"")
        }
        if let v = try string("workdir") { workdir = v }
        if let v = try string("listen_pg") { listenPg = v }
        if let v = try string("listen_http") { listenHttp = v }
        if let v = try size("checkpoint_distance") { checkpointDistanceBytes = v }
        if let v = try seconds("checkpoint_timeout") { checkpointTimeoutSeconds = v }
        if let v = try string("flush_sync") {
            guard let k = FlushSync(rawValue: v) else { throw ConfigError("config file \(path): flush_sync must be \"filesystem\" or \"file\", not \"\(v)\"") }
            flushSync = k
        }
        if let v = try string("io_engine") {
            guard let k = IOEngineKind(rawValue: v) else { throw ConfigError("config file \(path): io_engine must be \"io_uring\" or \"pread\", not \"\(v)\"") }
            ioEngine = k
        }
        if let v = try size("page_cache_size") { pageCacheBytes = v }
        if let v = table["compressed_page_cache_share"] {
            guard let d = v.double ?? v.int.map(Double.init), d >= 0, d <= 1 else {
                throw ConfigError("config file \(path): compressed_page_cache_share must be a number from 0 to 1")
            }
            compressedPageCacheShare = d
        }
        if let v = try size("index_cache_size") { indexCacheBytes = v }
        if let v = table["direct_io"] {
            guard let b = v.bool else { throw ConfigError("config file \(path): direct_io must be true or false") }
            directIO = b
        }
        if let v = try seconds("wait_lsn_timeout") { waitLsnTimeoutSeconds = v }
        if let v = table["max_chain_length"] {
            guard let i = v.int, i > 0 else { throw ConfigError("config file \(path): max_chain_length must be a positive integer") }
            maxChainLength = i
        }
        if let v = try seconds("wal_receiver_backoff_max") { walReceiverBackoffMaxSeconds = v }
        func positive(_ k: String) throws -> Int? {
            guard let v = table[k] else { return nil }
            guard let i = v.int, i > 0 else { throw ConfigError("config file \(path): \(k) must be a positive integer") }
            return i
        }
        if let v = try positive("redo_threads") { redoThreads = v }
        if let v = try positive("page_service_max_connections") { pageServiceMaxConnections = v }
        if let v = try positive("page_service_max_inflight") { pageServiceMaxInflight = v }
        if let v = table["pagestream_threads"] {
            guard let i = v.int, i >= 0 else { throw ConfigError("config file \(path): pagestream_threads must be an integer >= 0") }
            pagestreamThreads = i
        }
        if let v = try size("materialized_page_cache_size") { materializedPageCacheBytes = v }
        if let v = table["adaptive_page_cache_split"] {
            guard let b = v.bool else { throw ConfigError("config file \(path): adaptive_page_cache_split must be true or false") }
            adaptivePageCacheSplit = b
        }
        if let v = try size("cold_prefetch_window_size") {
            guard v >= 0, v <= 1 << 20 else { throw ConfigError("config file \(path): cold_prefetch_window_size must be from 0 to 1MiB") }
            coldPrefetchWindowBytes = v
        }
        if let v = table["ingest_image_threshold"] {
            guard let i = v.int, i >= 0 else { throw ConfigError("config file \(path): ingest_image_threshold must be an integer >= 0") }
            ingestImageThreshold = i
        }
        if let v = try seconds("compaction_period") { compactionPeriodSeconds = max(0, v) }
        if let v = try positive("image_creation_threshold") { imageCreationThreshold = v }
        if let v = try size("image_creation_bytes") { imageCreationBytes = max(1, v) }
        if let v = try positive("compaction_threshold") { compactionThreshold = max(2, v) }
        if let v = try seconds("gc_period") { gcPeriodSeconds = max(0, v) }
        if let v = try size("gc_horizon") { gcHorizonBytes = v }
        if let v = try seconds("pitr_interval") { pitrIntervalSeconds = max(0, v) }
        if let v = try positive("max_delta_depth") { maxDeltaDepth = v }
        if let v = table["verify_redo"] {
            guard let b = v.bool else { throw ConfigError("config file \(path): verify_redo must be true or false") }
            verifyRedo = b
        }
    }

    var maintenanceSettings: MaintenanceSettings {
        var m = MaintenanceSettings()
        m.imageCreationThreshold = imageCreationThreshold
        m.imageCreationBytes = imageCreationBytes
        m.compactionThreshold = compactionThreshold
        m.gcHorizonBytes = gcHorizonBytes
        m.pitrIntervalSeconds = pitrIntervalSeconds
        return m
    }

    var storeConfig: StoreConfig {
        var c = StoreConfig()
        c.checkpointDistanceBytes = checkpointDistanceBytes
        c.checkpointTimeoutSeconds = checkpointTimeoutSeconds
        c.maxChainLength = maxChainLength
        c.redoThreads = redoThreads
        c.flushSync = flushSync
        return c
    }
}

struct ConfigError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}
