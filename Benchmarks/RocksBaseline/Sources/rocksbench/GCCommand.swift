// `rocksbench gc`: a store after compaction and GC with horizon H, and what that left on disk (issue 8:
// "bytes on disk ... after compaction/GC with the same horizon"). Afterwards every read at an LSN >= H
// must answer as before (`verify` checks that against the other store); what only older reads need
// may go.
//
// - ours: image layers at H for every chunk with a delta layer above its newest image at or below H
//   (what the background compaction makes), then GC with cutoff H: the layers no read at or above H
//   needs are deleted, and the deltas straddling an image at H are rewritten without their older
//   entries (`TimelineStore.gc`, the daemon's defaults).
// - RocksDB, the seed's design, which has no way to make new images: for every key, each version
//   older than the newest chain start (an image or a will-init record) at or below H is deleted; then
//   CompactRange over the whole key space, so that the deletions leave the SST files.
#if canImport(Glibc)
import Glibc
#endif
import CRocksDB
import LSM
import PostgresWAL

func gcCommand(_ args: Arguments) throws {
    let kind = storeKind(args)
    let path = args.string("db")
    let cacheBytes = args.int("cache-mb", default: 256) << 20
    let horizonText = args.string("horizon", default: "latest")
    func horizon(latest: LSN) -> LSN {
        if horizonText == "latest" { return latest }
        guard let l = LSN(parsing: horizonText) else { fail("--horizon \(horizonText) is neither latest nor an LSN (HI/LO)") }
        return l
    }
    switch kind {
    case .ours:
        let store = try OurStore(directory: path, cacheBytes: cacheBytes, backgroundFlush: false)
        defer { store.close() }
        let before = store.bytesOnDisk()
        let h = horizon(latest: store.store.diskConsistentLSN)
        let t0 = nowSeconds()
        let images = try store.store.createImageLayers(redo: benchRedo, thresholdDeltas: 1, at: h)
        let gc = try store.store.gc(cutoff: h, retain: [])
        let seconds = nowSeconds() - t0
        let after = store.bytesOnDisk()
        emitJSON([("bench", "\"gc\""), ("store", "\"ours\""), ("horizon", "\"\(h)\""), ("horizon_is_latest", "\(horizonText == "latest")"),
                  ("seconds", "\(seconds)"), ("bytes_on_disk_before", "\(before.total)"), ("bytes_on_disk", "\(after.total)"),
                  ("data_files", "\(after.dataFiles)"), ("image_layers_created", "\(images.layersCreated)"),
                  ("image_bytes_written", "\(images.bytesWritten)"), ("layers_deleted", "\(gc.layersDeleted)"),
                  ("layers_trimmed", "\(gc.layersTrimmed)"), ("gc_bytes_written", "\(gc.bytesWritten)")])
    case .rocksdb:
        let store = try RocksBench(path: path, cacheBytes: cacheBytes)
        defer { store.close() }
        let before = store.bytesOnDisk()
        let h = horizon(latest: try store.latestLSN())
        let t0 = nowSeconds()
        let (versions, deleted) = try store.store.deleteVersions(olderThanChainStartAtOrBelow: h)
        store.store.compactAll()
        let seconds = nowSeconds() - t0
        let after = store.bytesOnDisk()
        emitJSON([("bench", "\"gc\""), ("store", "\"rocksdb\""), ("horizon", "\"\(h)\""), ("horizon_is_latest", "\(horizonText == "latest")"),
                  ("seconds", "\(seconds)"), ("bytes_on_disk_before", "\(before.total)"), ("bytes_on_disk", "\(after.total)"),
                  ("data_files", "\(after.dataFiles)"), ("versions", "\(versions)"), ("versions_deleted", "\(deleted)")])
    }
}

extension RocksStore {
    /// Deletes, for every key, the versions older than its newest chain start at or below `horizon`
    /// (no read at or above the horizon goes past that version). Returns the versions seen and deleted.
    func deleteVersions(olderThanChainStartAtOrBelow horizon: LSN) throws -> (versions: Int, deleted: Int) {
        // A scan of every key: total order, not confined to one prefix as reads are.
        let scanOptions = rocksdb_readoptions_create()
        defer { rocksdb_readoptions_destroy(scanOptions) }
        rocksdb_readoptions_set_total_order_seek(scanOptions, 1)
        rocksdb_readoptions_set_fill_cache(scanOptions, 0)
        let iterator = rocksdb_create_iterator(db, scanOptions)
        defer { rocksdb_iter_destroy(iterator) }
        let deletes = rocksdb_writebatch_create()
        defer { rocksdb_writebatch_destroy(deletes) }
        var versions = 0, deleted = 0
        // The current key's versions at or below the horizon, oldest first, since its last chain start.
        var prefix: [UInt8] = []
        var older: [[UInt8]] = []
        func commit() throws {
            var error: UnsafeMutablePointer<CChar>?
            rocksdb_write(db, writeOptions, deletes, &error)
            try rocksCheck(error, "write deletes")
            rocksdb_writebatch_clear(deletes)
        }
        rocksdb_iter_seek_to_first(iterator)
        while rocksdb_iter_valid(iterator) != 0 {
            defer { rocksdb_iter_next(iterator) }
            var keyLength = 0, valueLength = 0
            let found = UnsafeRawBufferPointer(start: rocksdb_iter_key(iterator, &keyLength), count: keyLength)
            guard keyLength == RocksKey.encodedSize else { continue }  // the last-LSN key
            versions += 1
            if !found.prefix(RocksKey.prefixBytes).elementsEqual(prefix) {
                prefix = Array(found.prefix(RocksKey.prefixBytes))
                older.removeAll(keepingCapacity: true)
            }
            guard RocksKey.lsn(of: found) <= horizon else { continue }
            let raw = UnsafeRawBufferPointer(start: rocksdb_iter_value(iterator, &valueLength), count: valueLength)
            guard valueLength >= RocksValue.headerBytes, let k = Value.Kind(rawValue: raw[0]) else {
                throw StorageError(.corruption, "a RocksDB value of \(valueLength) bytes has no valid header")
            }
            if k == .image || raw[1] == 1 {
                // A chain start at or below the horizon: every older version of the key goes.
                for key in older {
                    key.withUnsafeBytes { rocksdb_writebatch_delete(deletes, $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
                    deleted += 1
                }
                older.removeAll(keepingCapacity: true)
                if rocksdb_writebatch_count(deletes) >= 10_000 { try commit() }
            }
            older.append(Array(found))
        }
        var error: UnsafeMutablePointer<CChar>?
        rocksdb_iter_get_error(iterator, &error)
        try rocksCheck(error, "iterate")
        try commit()
        return (versions, deleted)
    }

    /// Compacts every level over the whole key space (deleted versions leave the SST files).
    func compactAll() {
        rocksdb_compact_range(db, nil, 0, nil, 0)
    }
}
