// The seed's page store on RocksDB: every page image and WAL record of a timeline under
// timeline + BufferTag + LSN (RocksKey.swift), read back as "newest at or below LSN" by SeekForPrev.
//
// Design. Writes go through a `WriteBatch` that is committed every `batchPuts` values, with RocksDB's
// own write-ahead log disabled: like our in-memory layer, the memtable is made durable only by a flush,
// and a crash loses what was not flushed, which PostgreSQL's WAL (the page server's source of truth)
// replays. `flush()` (RocksDB Flush with wait) writes and fsyncs the memtables' SST files and the
// MANIFEST, so "ingest + flush" is the same "decode + store + durable flush" our store's checkpoint
// does. Reads seek to (key, LSN) with SeekForPrev and step back through older versions of the same key
// until an image or a will-init record, then hand base + records to the same `Redo` our store uses.
//
// Options ("sensible", as the seed would set them):
// - an LRU block cache of `cacheBytes` (the size of our data cache in the comparison);
// - LZ4 on every level (our layer files compress their blocks with LZ4 too);
// - a fixed-prefix extractor of `RocksKey.prefixBytes` (timeline + key) with full bloom filters of 10
//   bits per prefix and a memtable prefix bloom: a SeekForPrev within one prefix skips SST files that
//   hold no version of the key. Whole-key filtering is off, since no read asks for an exact (key, LSN);
// - a 256 MiB memtable (our checkpoint distance), two background jobs (the machine has two cores).
//
// Invariants:
// 1. `put` sees LSNs in non-decreasing order and at most one value per (key, LSN) (IngestTarget's
//    contract), so no write overwrites another.
// 2. A read never misses a write: `latestImage` looks at the uncommitted batch's values first, the
//    page source and `flush` commit the batch first.
// 3. Every iterator stays inside one prefix (prefix_same_as_start), so a read never sees another key.
#if canImport(Glibc)
import Glibc
#endif
import CRocksDB
import LSM
import PostgresWAL

/// An error of the RocksDB C API as a StorageError.
func rocksCheck(_ error: UnsafeMutablePointer<CChar>?, _ what: String) throws {
    guard let error else { return }
    let message = String(cString: error)
    rocksdb_free(error)
    throw StorageError(.io, "RocksDB \(what): \(message)")
}

/// One RocksDB database holding one timeline.
final class RocksStore: @unchecked Sendable {
    // @unchecked: the handles are RocksDB's thread-safe DB and immutable options; the write batch and
    // pending values are touched only by the one ingest thread (REQUIRES: one writer).
    let path: String
    let timeline: TimelineId
    let db: OpaquePointer
    private let options: OpaquePointer
    private let tableOptions: OpaquePointer
    private let cache: OpaquePointer
    private let cacheBytes: Int
    let writeOptions: OpaquePointer
    let readOptions: OpaquePointer
    private let batch: OpaquePointer
    /// Values put per batch commit.
    let batchPuts: Int
    /// The newest value of each key in the uncommitted batch, for `latestImage` (the arrays are
    /// shared with the caller's, not copied).
    private var pending: [Key: Value] = [:]
    private var keyBuffer = [UInt8](repeating: 0, count: RocksKey.encodedSize)

    /// Where the newest LSN ingested is kept (outside the 42-byte key space).
    static let lastLSNKey: [UInt8] = Array("meta:last_record_lsn".utf8)

    init(path: String, timeline: TimelineId, cacheBytes: Int, batchPuts: Int = 1000) throws {
        self.path = path
        self.cacheBytes = cacheBytes
        self.timeline = timeline
        self.batchPuts = batchPuts
        options = rocksdb_options_create()
        rocksdb_options_set_create_if_missing(options, 1)
        rocksdb_options_increase_parallelism(options, 2)
        rocksdb_options_set_max_background_jobs(options, 2)
        rocksdb_options_set_write_buffer_size(options, 256 << 20)
        rocksdb_options_set_compression(options, Int32(rocksdb_lz4_compression))
        rocksdb_options_set_prefix_extractor(options, rocksdb_slicetransform_create_fixed_prefix(RocksKey.prefixBytes))
        rocksdb_options_set_memtable_prefix_bloom_size_ratio(options, 0.1)
        tableOptions = rocksdb_block_based_options_create()
        cache = rocksdb_cache_create_lru(cacheBytes)
        rocksdb_block_based_options_set_block_cache(tableOptions, cache)
        rocksdb_block_based_options_set_filter_policy(tableOptions, rocksdb_filterpolicy_create_bloom_full(10))
        rocksdb_block_based_options_set_whole_key_filtering(tableOptions, 0)
        rocksdb_options_set_block_based_table_factory(options, tableOptions)
        var error: UnsafeMutablePointer<CChar>?
        guard let db = rocksdb_open(options, path, &error) else {
            try rocksCheck(error, "open \(path)")
            throw StorageError(.io, "RocksDB open \(path) failed")
        }
        self.db = db
        writeOptions = rocksdb_writeoptions_create()
        rocksdb_writeoptions_disable_WAL(writeOptions, 1)
        readOptions = rocksdb_readoptions_create()
        rocksdb_readoptions_set_prefix_same_as_start(readOptions, 1)
        batch = rocksdb_writebatch_create()
    }

    /// Closes the database (RocksDB waits for its background work).
    /// REQUIRES: no `RocksReader` of this store is alive (RocksDB asserts that no iterator outlives
    /// the database, and Debian's build keeps assertions on).
    func close() {
        rocksdb_writebatch_destroy(batch)
        rocksdb_close(db)
        rocksdb_readoptions_destroy(readOptions)
        rocksdb_writeoptions_destroy(writeOptions)
        rocksdb_options_destroy(options)
        rocksdb_block_based_options_destroy(tableOptions)
        rocksdb_cache_destroy(cache)
    }

    /// Empties the block cache (its capacity to 0 and back: every unpinned block is evicted).
    func dropBlockCache() {
        rocksdb_cache_set_capacity(cache, 0)
        rocksdb_cache_set_capacity(cache, cacheBytes)
    }

    // MARK: - Writes (one thread)

    func put(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        let encoded = RocksValue.encode(value)
        keyBuffer.withUnsafeMutableBytes { k in
            RocksKey.encode(timeline, key, lsn, into: k)
            encoded.withUnsafeBytes { v in
                rocksdb_writebatch_put(batch, k.baseAddress!.assumingMemoryBound(to: CChar.self), k.count,
                                       v.baseAddress!.assumingMemoryBound(to: CChar.self), v.count)
            }
        }
        pending[key] = value
        if Int(rocksdb_writebatch_count(batch)) >= batchPuts { try commitBatch() }
    }

    func commitBatch() throws {
        guard rocksdb_writebatch_count(batch) > 0 else { return }
        var error: UnsafeMutablePointer<CChar>?
        rocksdb_write(db, writeOptions, batch, &error)
        try rocksCheck(error, "write")
        rocksdb_writebatch_clear(batch)
        pending.removeAll(keepingCapacity: true)
    }

    /// Commits the batch, records `lastLSN`, and makes everything durable (memtables flushed to
    /// fsynced SST files).
    func flush(lastLSN: LSN) throws {
        try commitBatch()
        var error: UnsafeMutablePointer<CChar>?
        var raw = lastLSN.rawValue.bigEndian
        withUnsafeBytes(of: &raw) { v in
            Self.lastLSNKey.withUnsafeBytes { k in
                rocksdb_put(db, writeOptions, k.baseAddress!.assumingMemoryBound(to: CChar.self), k.count,
                            v.baseAddress!.assumingMemoryBound(to: CChar.self), v.count, &error)
            }
        }
        try rocksCheck(error, "put last LSN")
        let flushOptions = rocksdb_flushoptions_create()
        defer { rocksdb_flushoptions_destroy(flushOptions) }
        rocksdb_flushoptions_set_wait(flushOptions, 1)
        rocksdb_flush(db, flushOptions, &error)
        try rocksCheck(error, "flush")
    }

    /// Waits until RocksDB runs and plans no background compaction. A compaction writes its output
    /// before it deletes its inputs, so a size taken while one runs counts data twice (a scale-50 run
    /// measured 209-272 MB for the same data this way).
    func waitForCompactions() {
        func property(_ name: String) -> UInt64 {
            var value: UInt64 = 0
            return rocksdb_property_int(db, name, &value) == 0 ? value : 0
        }
        while property("rocksdb.num-running-compactions") > 0 || property("rocksdb.compaction-pending") > 0 {
            usleep(20_000)
        }
    }

    /// The newest value of `key` in the uncommitted batch, if any (see invariant 2).
    func pendingValue(_ key: Key) -> Value? { pending[key] }

    // MARK: - Reads (any thread)

    /// The LSN `flush` recorded, nil in an empty database.
    func lastLSN() throws -> LSN? {
        var error: UnsafeMutablePointer<CChar>?
        var length = 0
        let raw = Self.lastLSNKey.withUnsafeBytes { k in
            rocksdb_get(db, readOptions, k.baseAddress!.assumingMemoryBound(to: CChar.self), k.count, &length, &error)
        }
        try rocksCheck(error, "get last LSN")
        guard let raw else { return nil }
        defer { rocksdb_free(raw) }
        guard length == 8 else { throw StorageError(.corruption, "the last-LSN value is \(length) bytes, not 8") }
        return LSN(UInt64(bigEndian: UnsafeRawPointer(raw).loadUnaligned(as: UInt64.self)))
    }

    /// A reader for one thread.
    func reader() -> RocksReader { RocksReader(store: self, iterator: rocksdb_create_iterator(db, readOptions)) }
}

/// Reads of one thread: one iterator, reused (the database does not change while it is read).
final class RocksReader {
    let store: RocksStore
    private let iterator: OpaquePointer
    private var keyBuffer = [UInt8](repeating: 0, count: RocksKey.encodedSize)

    init(store: RocksStore, iterator: OpaquePointer) {
        self.store = store
        self.iterator = iterator
    }

    deinit { rocksdb_iter_destroy(iterator) }

    /// The versions of `key` from the newest at or below `lsn` back to the newest one that starts a
    /// chain (an image or a will-init record), oldest first; empty when the key has none.
    func chain(_ key: Key, at lsn: LSN) throws -> [RedoRecord] {
        var newestFirst: [RedoRecord] = []
        try keyBuffer.withUnsafeMutableBytes { k in
            RocksKey.encode(store.timeline, key, lsn, into: k)
            rocksdb_iter_seek_for_prev(iterator, k.baseAddress!.assumingMemoryBound(to: CChar.self), k.count)
            let prefix = UnsafeRawBufferPointer(rebasing: k[0..<RocksKey.prefixBytes])
            while rocksdb_iter_valid(iterator) != 0 {
                var keyLength = 0, valueLength = 0
                let found = UnsafeRawBufferPointer(start: rocksdb_iter_key(iterator, &keyLength), count: keyLength)
                guard keyLength == RocksKey.encodedSize, memcmp(found.baseAddress!, prefix.baseAddress!, prefix.count) == 0 else { break }
                let value = try RocksValue.decode(UnsafeRawBufferPointer(start: rocksdb_iter_value(iterator, &valueLength), count: valueLength))
                newestFirst.append(RedoRecord(lsn: RocksKey.lsn(of: found), value: value))
                if value.startsChain { break }
                rocksdb_iter_prev(iterator)
            }
        }
        var error: UnsafeMutablePointer<CChar>?
        rocksdb_iter_get_error(iterator, &error)
        try rocksCheck(error, "iterate")
        return Array(newestFirst.reversed())
    }

    /// The value of `key` at `lsn`: the newest image as is, or base + records through `redo`.
    func get(_ key: Key, at lsn: LSN, redo: any Redo) throws -> [UInt8]? {
        let versions = try chain(key, at: lsn)
        guard let oldest = versions.first else { return nil }
        if versions.count == 1, oldest.value.kind == .image { return oldest.value.bytes }
        if oldest.value.kind == .image {
            return try redo.reconstruct(key: key, lsn: lsn, base: (oldest.lsn, oldest.value.bytes), records: Array(versions.dropFirst()))
        }
        return try redo.reconstruct(key: key, lsn: lsn, base: nil, records: versions)
    }
}

/// Ingest into a `RocksStore` (the counterpart of `TimelineStoreTarget`).
final class RocksTarget: IngestTarget {
    let store: RocksStore

    init(store: RocksStore) { self.store = store }

    func put(_ key: Key, _ lsn: LSN, _ value: Value) throws { try store.put(key, lsn, value) }

    func latestImage(_ key: Key) throws -> [UInt8]? {
        // As our store answers with ImageOnlyRedo: the newest value if it is an image, an error if it
        // is a record (WalIngest takes that to mean "the key exists"), nil without values.
        if let newest = store.pendingValue(key) {
            guard newest.kind == .image else {
                throw StorageError(.unsupported, "key \(key) needs redo; this reader handles images only")
            }
            return newest.bytes
        }
        // A fresh iterator: the reused one would not see the batches committed since it was made.
        return try store.reader().get(key, at: .max, redo: ImageOnlyRedo())
    }
}

/// Pages from a `RocksStore` for CREATE DATABASE ... FILE_COPY (commits the batch first).
struct RocksPageSource: PageSource {
    let store: RocksStore
    let redo: any Redo

    func page(_ key: Key, at lsn: LSN) throws -> [UInt8]? {
        try store.commitBatch()
        return try store.reader().get(key, at: lsn, redo: redo)
    }
}
