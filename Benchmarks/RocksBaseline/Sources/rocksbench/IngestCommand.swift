// `rocksbench ingest`: the WAL-ingest measurement of `pagectl engine bench ingest`, against either
// store, with the same structure and the same clock so that the figures compare.
//
// Untimed: the base backup (pg_basebackup -Ft's base.tar) is imported at the start LSN through
// `BaseBackupImport` and made durable. Timed: the WAL from the start LSN is read from the segment
// files and decoded by `WALDecoder` on one thread, ingested record by record through `WalIngest` on
// another (every record that starts before the end LSN; RocksDB gets each WAL record verbatim, as the
// seed stored it, ours the daemon's compact form) and made durable (our checkpoint; RocksDB's flush with wait).
// MB/s = (end - start) / seconds.
import LSM
import PostgresWAL

func ingestCommand(_ args: Arguments) throws {
    let kind = storeKind(args)
    let basebackup = args.string("base-backup"), wal = args.string("wal-dir"), path = args.string("db")
    let start = args.lsn("start"), end = args.lsn("end")
    let cacheBytes = args.int("cache-mb", default: 256) << 20
    let chunkBytes = 1 << 20
    guard end > start else { fail("--end \(end) is not after --start \(start)") }
    let segments = walSegmentFiles(in: wal, from: start)

    let store: any IngestStore
    switch kind {
    case .ours: store = try OurStore(directory: path, cacheBytes: cacheBytes, backgroundFlush: true)
    case .rocksdb: store = try RocksBench(path: path, cacheBytes: cacheBytes)
    }
    defer { store.close() }

    // Untimed: the base backup.
    let t0 = nowSeconds()
    let importer = BaseBackupImport(target: store.target, startLSN: start)
    let parser = TarStreamParser(consumer: importer)
    try readFile(basebackup, chunk: chunkBytes) { try parser.feed($0); return true }
    try parser.finish()
    try importer.finish()
    try store.finishImport(at: start)
    let importSeconds = nowSeconds() - t0

    // Timed: decode + ingest + durable flush.
    let ingest = WalIngest(target: store.target, pageSource: store.pageSource)
    // The seed's design stores each WAL record as it is in the WAL; ours stores it compact (xl_prev
    // and xl_crc zeroed, format-spec 10.6), as the daemon does.
    ingest.recordEncoding = kind == .rocksdb ? .verbatim : .compact
    let w0 = nowSeconds()
    // Decoding runs on a thread of its own, as in the daemon and `pagectl engine bench ingest`;
    // `decodeSeconds` is the time this (the ingest) thread waited for decoded records.
    let pipe = try RecordPipe.decoding(segmentPaths: segments.paths, segmentSize: segments.segmentSize,
                                       from: start, to: end, chunkBytes: chunkBytes)
    defer { pipe.close() }
    let consumed = try pipe.consume { try ingest.ingest(&$0) }
    let decodeSeconds = consumed.waitingSeconds, ingestSeconds = consumed.workingSeconds
    let now = nowSeconds()
    guard let last = ingest.lastRecordEndLSN, let next = consumed.nextRecordLSN, next >= end else {
        fail("the WAL in \(wal) ends before --end \(end)")
    }
    let durable = try store.durableFlush(lastRecordEnd: last)
    let flushSeconds = nowSeconds() - now
    let seconds = nowSeconds() - w0
    guard durable >= last else { fail("the flush reached \(durable), not the last record's end \(last)") }

    let walBytes = Double(end.rawValue - start.rawValue)
    let stats = ingest.stats
    let disk = store.bytesOnDisk()
    emitJSON([("bench", "\"ingest\""), ("store", "\"\(kind.rawValue)\""), ("start_lsn", "\"\(start)\""),
              ("end_lsn", "\"\(end)\""), ("last_record_end_lsn", "\"\(last)\""), ("wal_bytes", "\(Int(walBytes))"),
              ("records", "\(stats.records)"), ("values_put", "\(stats.valuesPut)"), ("seconds", "\(seconds)"),
              ("mb_per_s", "\(walBytes / seconds / 1e6)"), ("decode_seconds", "\(decodeSeconds)"),
              ("ingest_seconds", "\(ingestSeconds)"), ("flush_seconds", "\(flushSeconds)"),
              ("import_seconds", "\(importSeconds)"), ("blocks_imported", "\(importer.blocksImported)"),
              ("bytes_on_disk", "\(disk.total)"), ("data_bytes", "\(disk.data)"), ("data_files", "\(disk.dataFiles)"),
              ("images_on_ingest", "\((store.target as? TimelineStoreTarget)?.images?.imagesMaterialized ?? 0)")])
}

func storeKind(_ args: Arguments) -> StoreKind {
    let s = args.string("store", default: "rocksdb")
    guard let k = StoreKind(rawValue: s) else { fail("--store \(s) is neither ours nor rocksdb") }
    return k
}

/// `rocksbench images --db PATH`: what our background compaction does to a store whose chunks have
/// deltas: image layers at disk_consistent_lsn (the end of the ingested WAL) for every chunk with at
/// least one delta layer above its newest image, so that reads at the latest LSN need no redo. Ours
/// only: the seed's design has no image creation. Reports the time and the bytes on disk after.
func imagesCommand(_ args: Arguments) throws {
    let path = args.string("db")
    let store = try OurStore(directory: path, cacheBytes: args.int("cache-mb", default: 256) << 20, backgroundFlush: false)
    defer { store.close() }
    let before = store.bytesOnDisk()
    let t0 = nowSeconds()
    let report = try store.store.createImageLayers(redo: benchRedo, thresholdDeltas: 1)
    let seconds = nowSeconds() - t0
    let after = store.bytesOnDisk()
    emitJSON([("bench", "\"images\""), ("store", "\"ours\""), ("at_lsn", "\"\(store.store.diskConsistentLSN)\""),
              ("seconds", "\(seconds)"), ("image_layers_created", "\(report.layersCreated)"),
              ("image_bytes_written", "\(report.bytesWritten)"), ("bytes_on_disk_before", "\(before.total)"),
              ("bytes_on_disk", "\(after.total)"), ("data_files", "\(after.dataFiles)")])
}
