import ArgumentParser
import LSM
import PostgresRedo
import PostgresWAL

#if canImport(Glibc)
import Glibc
#endif

/// `pagectl engine bench ingest`: WAL ingest throughput, as `scripts/bench_ingest.sh` measures it next
/// to a PostgreSQL 15 standby replaying the same WAL.
///
/// Untimed: the base backup (`pg_basebackup -Ft`'s base.tar) is imported into a fresh store at its
/// start LSN and checkpointed, as the daemon's attach does. Timed: the WAL from `--start-lsn` (the
/// backup's START WAL LOCATION) is read from the segment files and decoded on one thread, ingested
/// record by record on another (every record that starts before `--end-lsn`; the daemon's WAL
/// receiver splits the work the same way), and made durable with `store.checkpoint()`. The
/// store is opened as the daemon opens it: io_uring reads, background flush on, default
/// checkpoint distance, so layers are flushed by the background thread while ingest runs; and ingest
/// makes images on ingest with the daemon's default threshold (`--image-threshold`, IngestImages.swift).
struct IngestBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ingest",
        abstract: "Import a base backup, then time WAL decode + ingest + durable flush up to an end LSN; report MB/s of WAL.")

    @Option(help: "The base backup's base.tar (pg_basebackup -Ft).") var basebackup: String
    @Option(help: "Directory holding the WAL segment files, from the one containing the start LSN on.") var wal: String
    @Option(help: "Where decoding starts: the backup's START WAL LOCATION (HI/LO).") var startLsn: String
    @Option(help: "Ingest every record that starts before this LSN (HI/LO).") var endLsn: String
    @Option(help: "Directory for the store (must not exist or be empty).") var dir: String
    @Option(help: "Bytes read from a segment file and fed to the decoder at a time.") var chunkBytes = 1 << 20
    @Option(help: "CTL,ACK: the FIFOs of `perf record --control fifo:CTL,ACK -D -1`; events are enabled for the timed part only.") var perfControl: String?
    @Option(help: "Images on ingest: the record that would make a key's chain this long is stored as the page it produces (0: off), as the daemon's ingest_image_threshold.")
    var imageThreshold = IngestImages.defaultThreshold
    @Flag(help: "Print one JSON line.") var json = false

    func run() throws {
        guard let start = LSN(parsing: startLsn) else { fail("--start-lsn \(startLsn) is not an LSN (HI/LO)") }
        guard let end = LSN(parsing: endLsn) else { fail("--end-lsn \(endLsn) is not an LSN (HI/LO)") }
        guard end > start else { fail("--end-lsn \(end) is not after --start-lsn \(start)") }
        let segments = walSegmentFiles(in: wal, from: start)
        let perf = perfControl.map { PerfControl($0) }

        let context = StorageContext(io: makeBlockIO(.ioUring))
        var config = StoreConfig()
        config.backgroundFlush = true
        let store = try TimelineStore.open(directory: dir, config: config, context: context)
        defer { store.close() }

        // Untimed: the base backup, as the daemon's attach imports it.
        let t0 = nowSeconds()
        let importer = BaseBackupImport(target: TimelineStoreTarget(store: store), startLSN: start)
        let parser = TarStreamParser(consumer: importer)
        try readFile(basebackup, chunk: chunkBytes) { try parser.feed($0); return true }
        try parser.finish()
        try importer.finish()
        store.advance(to: start)
        try store.checkpoint()
        let importSeconds = nowSeconds() - t0

        // Timed: decode + ingest + durable flush.
        let images = imageThreshold > 0 ? IngestImages(store: store, redo: PostgresRedo(settings: RedoSettings()), threshold: imageThreshold) : nil
        let target = TimelineStoreTarget(store: store, images: images)
        let ingest = WalIngest(target: target, pageSource: TimelineStorePageSource(store: store, redo: ImageOnlyRedo()))
        perf?.send("enable")
        let w0 = nowSeconds()
        let processCPU0 = processCPUSeconds(), threadCPU0 = threadCPUSeconds()
        // Decoding runs on a thread of its own, as in the daemon; `decodeSeconds` is the time this
        // (the ingest) thread waited for decoded records.
        let pipe = try decodeSegmentsInBackground(segments, from: start, to: end, chunkBytes: chunkBytes)
        defer { pipe.close() }
        let consumed = try pipe.consume { try ingest.ingest(&$0) }
        let ingestCPUSeconds = threadCPUSeconds() - threadCPU0
        let decodeSeconds = consumed.waitingSeconds, ingestSeconds = consumed.workingSeconds
        let now = nowSeconds()
        // Complete when the last record reaches the end LSN or the next one would start at or past it.
        guard let last = ingest.lastRecordEndLSN, let next = consumed.nextRecordLSN, next >= end else {
            fail("the WAL in \(wal) ends before --end-lsn \(end) (last record ending at \(ingest.lastRecordEndLSN.map { "\($0)" } ?? "none"))")
        }
        let durable = try store.checkpoint()
        let flushSeconds = nowSeconds() - now
        let seconds = nowSeconds() - w0
        let cpuSeconds = processCPUSeconds() - processCPU0
        perf?.send("disable")
        guard durable >= last else { fail("checkpoint reached \(durable), not the last record's end \(last)") }

        let walBytes = Double(end.rawValue - start.rawValue)
        let stats = ingest.stats
        let files = store.layers()
        let onDisk = files.reduce(UInt64(0)) { $0 + $1.fileSize }
        if json {
            emitJSON([("bench", "\"wal_ingest\""), ("start_lsn", "\"\(start)\""), ("end_lsn", "\"\(end)\""),
                      ("last_record_end_lsn", "\"\(last)\""), ("wal_bytes", "\(Int(walBytes))"),
                      ("record_bytes", "\(stats.bytes)"), ("records", "\(stats.records)"),
                      ("values_put", "\(stats.valuesPut)"), ("seconds", "\(seconds)"),
                      ("mb_per_s", "\(walBytes / seconds / 1e6)"), ("records_per_s", "\(Double(stats.records) / seconds)"),
                      ("decode_seconds", "\(decodeSeconds)"), ("ingest_seconds", "\(ingestSeconds)"),
                      ("flush_seconds", "\(flushSeconds)"), ("import_seconds", "\(importSeconds)"),
                      ("cpu_seconds", "\(cpuSeconds)"), ("ingest_thread_cpu_seconds", "\(ingestCPUSeconds)"),
                      ("blocks_imported", "\(importer.blocksImported)"), ("layer_files", "\(files.count)"),
                      ("bytes_on_disk", "\(onDisk)"), ("image_threshold", "\(imageThreshold)"),
                      ("images_on_ingest", "\(images?.imagesMaterialized ?? 0)")])
        } else {
            print("imported \(importer.filesImported) files, \(importer.blocksImported) blocks at \(start) in \(format2(importSeconds)) s (not timed)")
            print("ingested \(stats.records) records, \(format1(walBytes / 1e6)) MB of WAL (\(start) .. \(end)) in \(format2(seconds)) s: \(format1(walBytes / seconds / 1e6)) MB/s, \(Int(Double(stats.records) / seconds)) records/s")
            print("  waiting for the decoding thread \(format2(decodeSeconds)) s, ingest \(format2(ingestSeconds)) s, final flush \(format2(flushSeconds)) s")
            print("  CPU of every thread \(format2(cpuSeconds)) s, of the ingest thread before the final flush \(format2(ingestCPUSeconds)) s")
            print("  \(stats.valuesPut) values put (\(images?.imagesMaterialized ?? 0) stored as images on ingest); \(files.count) layer files, \(onDisk) bytes on disk")
        }
    }
}

/// The control FIFOs of `perf record --control fifo:CTL,ACK`: each command waits for perf's "ack".
private struct PerfControl {
    let ctl: Int32
    let ack: Int32

    init(_ spec: String) {
        let parts = spec.split(separator: ",").map(String.init)
        guard parts.count == 2 else { fail("--perf-control wants CTL,ACK (two FIFO paths)") }
        ctl = open(parts[0], O_WRONLY)
        ack = open(parts[1], O_RDONLY)
        guard ctl >= 0, ack >= 0 else { fail("cannot open the perf control FIFOs \(spec): \(String(cString: strerror(errno)))") }
    }

    func send(_ command: String) {
        var line = command + "\n"
        line.withUTF8 { _ = write(ctl, $0.baseAddress, $0.count) }
        var reply = [UInt8](repeating: 0, count: 16)
        _ = read(ack, &reply, reply.count)
    }
}

/// CPU seconds (user + system) of every thread of this process so far.
func processCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
}

/// CPU seconds of the calling thread so far.
func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
