import ArgumentParser
import LSM
import PostgresRedo
import PostgresWAL

#if canImport(Glibc)
import Glibc
#endif

/// `pagectl wal bench-redo`: the cost of our redo, measured on real WAL (scripts/bench_ingest.sh runs
/// it on the pgbench WAL it captures, next to a PostgreSQL 15 standby replaying the same WAL).
///
/// Pages live in memory: each starts at a full-page image or a WILL_INIT record (with
/// full_page_writes, every page's first change after the backup's checkpoint is one of them), and
/// every later record touching it is applied with `PostgresRedo.applyWAL`, timed one application at
/// a time (the record's parse included). Records whose page has no start in the WAL read, and the
/// page server's own engine records, are not applied. Then, for the page with the longest chain, a
/// full `reconstruct` from its image plus the first 1, 10 and 100 records is timed.
struct WALBenchRedo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-redo",
        abstract: "Time native redo per record type and page reconstruction from an image plus 1, 10 and 100 records.")

    @Option(help: "Directory holding the WAL segment files.") var wal: String
    @Option(help: "Where decoding starts (HI/LO): a record start or a page boundary.") var startLsn: String
    @Option(help: "Apply every record that starts before this LSN (HI/LO).") var endLsn: String
    @Option(help: "Repetitions of each reconstruction timing.") var iterations = 2000
    @Flag(help: "Print one JSON line.") var json = false

    private struct TypeStats { var count = 0; var nanoseconds: UInt64 = 0 }

    func run() throws {
        guard let start = LSN(parsing: startLsn), let end = LSN(parsing: endLsn), end > start else {
            fail("--start-lsn and --end-lsn must be LSNs (HI/LO), end after start")
        }
        let segments = walSegmentFiles(in: wal, from: start)
        let redo = PostgresRedo()
        var decoder = try WALDecoder(startLSN: start, segmentSize: segments.segmentSize)
        var pages: [Key: [UInt8]] = [:]
        var chains: [Key: (base: [UInt8], lsn: LSN, records: [RedoRecord])] = [:]
        var byType: [String: TypeStats] = [:]
        var view = RecordView()
        var records = 0, recordsApplied = 0, applications = 0, skipped = 0, images = 0
        var totalNanoseconds: UInt64 = 0
        var done = false
        for (i, path) in segments.paths.enumerated() where !done {
            let offset = i == 0 ? Int(start.rawValue % UInt64(segments.segmentSize)) : 0
            try readFile(path, chunk: 1 << 20, from: offset) { bytes in
                decoder.feed(bytes)
                while let record = try decoder.next() {
                    if record.startLSN >= end { done = true; return false }
                    records += 1
                    var applied = false
                    for b in record.blocks {
                        let key = KeySpace.relationBlock(RelTag(b.relation, b.fork), b.block.rawValue)
                        if let image = b.image, image.apply {
                            var page = image.page
                            page.withUnsafeMutableBytes { Page($0.baseAddress!).lsn = record.endLSN.rawValue }
                            pages[key] = page
                            chains[key] = (page, record.endLSN, [])
                            images += 1
                            continue
                        }
                        var page: [UInt8]
                        if b.willInit {
                            page = [UInt8](repeating: 0, count: Page.size)
                        } else if let p = pages[key] {
                            page = p
                            pages[key] = nil // keep the buffer uniquely referenced: no copy on write
                        } else {
                            skipped += 1
                            continue
                        }
                        let name = "\(record.resourceManager)/\(RecordTypeNames.name(record.resourceManager, info: record.info))"
                        var failed = false
                        let t0 = monotonicNanoseconds()
                        record.bytes.withUnsafeBytes { raw in
                            page.withUnsafeMutableBytes { buffer in
                                do {
                                    try view.parse(raw, endLSN: record.endLSN)
                                    try redo.applyWAL(view, to: Page(buffer.baseAddress!), key: key)
                                } catch {
                                    failed = true
                                }
                            }
                        }
                        let dt = monotonicNanoseconds() - t0
                        if failed {
                            skipped += 1
                            continue
                        }
                        pages[key] = page
                        applied = true
                        applications += 1
                        totalNanoseconds += dt
                        byType[name, default: TypeStats()].count += 1
                        byType[name, default: TypeStats()].nanoseconds += dt
                        if b.willInit {
                            chains[key] = nil
                        } else if var c = chains[key], c.records.count < 100 {
                            chains[key] = nil
                            c.records.append(RedoRecord(lsn: record.endLSN, value: .walRecord(record.bytes)))
                            chains[key] = c
                        }
                    }
                    if applied { recordsApplied += 1 }
                    if record.endLSN >= end { done = true; return false }
                }
                return true
            }
        }

        // Reconstruction of the longest chain's page from its image plus N records.
        var reconstruct: [(n: Int, nanoseconds: Double)] = []
        if let (key, chain) = chains.max(by: { $0.value.records.count < $1.value.records.count }) {
            for n in [1, 10, 100] where n <= chain.records.count {
                let recs = Array(chain.records.prefix(n))
                let lsn = recs.last!.lsn
                _ = try redo.reconstruct(key: key, lsn: lsn, base: (chain.lsn, chain.base), records: recs)
                let t0 = monotonicNanoseconds()
                for _ in 0..<iterations {
                    _ = try redo.reconstruct(key: key, lsn: lsn, base: (chain.lsn, chain.base), records: recs)
                }
                reconstruct.append((n, Double(monotonicNanoseconds() - t0) / Double(iterations)))
            }
        }

        let seconds = Double(totalNanoseconds) / 1e9
        let perType = byType.sorted { $0.value.count > $1.value.count }
        if json {
            let types = perType.map { "\"\($0.key)\": {\"count\": \($0.value.count), \"ns\": \(Double($0.value.nanoseconds) / Double($0.value.count))}" }
            let rec = reconstruct.map { "\"\($0.n)\": \($0.nanoseconds)" }
            emitJSON([("bench", "\"redo\""), ("start_lsn", "\"\(start)\""), ("end_lsn", "\"\(end)\""),
                      ("records", "\(records)"), ("records_applied", "\(recordsApplied)"),
                      ("applications", "\(applications)"), ("skipped", "\(skipped)"), ("images", "\(images)"),
                      ("apply_seconds", "\(seconds)"),
                      ("applications_per_s", "\(Double(applications) / max(seconds, 1e-9))"),
                      ("by_type", "{" + types.joined(separator: ", ") + "}"),
                      ("reconstruct_ns", "{" + rec.joined(separator: ", ") + "}")])
        } else {
            print("\(records) records (\(start) .. \(end)); \(applications) page applications of \(recordsApplied) records in \(format2(seconds)) s: \(Int(Double(applications) / max(seconds, 1e-9))) per second; \(images) images, \(skipped) not applied")
            for (name, s) in perType {
                print("  \(name): \(s.count) x \(Int(Double(s.nanoseconds) / Double(s.count))) ns")
            }
            for r in reconstruct { print("  reconstruct image + \(r.n) records: \(Int(r.nanoseconds)) ns") }
        }
    }
}

func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
