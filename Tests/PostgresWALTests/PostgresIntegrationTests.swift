import Foundation
import LSM
import XCTest
@testable import PostgresWAL

/// The decoder against a real PostgreSQL 15: run a workload that exercises every part of the format
/// (records spanning pages, a segment switch, full-page images with every `wal_compression` method,
/// long main data), stop the server, decode the whole of pg_wal fed in random chunks, and compare record
/// by record with pg_waldump (and the end LSNs with pg_walinspect, and one page LSN with pageinspect).
final class PostgresIntegrationTests: XCTestCase {
    func testDecodesUncompressedWAL() throws { try runScenario(compression: "off") }
    func testDecodesPGLZCompressedWAL() throws { try runScenario(compression: "pglz") }
    func testDecodesLZ4CompressedWAL() throws { try runScenario(compression: "lz4") }
    func testDecodesZstdCompressedWAL() throws { try runScenario(compression: "zstd") }

    /// What one scenario learnt from the server before it stopped.
    struct ServerFacts {
        /// pg_walinspect's (start_lsn, end_lsn) for every record it saw.
        var walinspect: [(start: LSN, end: LSN)]
        /// The probe table's block 0: its relation and the pd_lsn pageinspect reported.
        var probe: RelFileNode
        var probePageLSN: LSN
    }

    private func runScenario(compression: String) throws {
        try XCTSkipUnless(PostgresCluster.isAvailable, "needs PostgreSQL 15 in \(PostgresCluster.bin), root, and a postgres user")
        let cluster = try PostgresCluster(settings: [
            "wal_level = replica", "wal_compression = \(compression)", "wal_keep_size = '1GB'",
            "max_wal_size = '1GB'", "autovacuum = off", "fsync = off",
        ])
        defer { cluster.destroy() }
        XCTAssertEqual(try cluster.sql("SHOW wal_compression").trimmingCharacters(in: .whitespacesAndNewlines), compression)

        let facts = try runWorkload(cluster)
        try cluster.stop()

        // The WAL as one byte run, from the first segment on.
        let segments = try walSegments(in: cluster.walDirectory)
        let firstLSN = try XCTUnwrap(segments.first).lsn
        var wal: [UInt8] = []
        for s in segments { wal += try [UInt8](Data(contentsOf: URL(fileURLWithPath: s.path))) }

        let dump = try shell("\(PostgresCluster.bin)/pg_waldump -b --path=\(cluster.walDirectory) --start=\(firstLSN)", check: false)
        let expected = try parseWaldump(dump.stdout)
        XCTAssertGreaterThan(expected.count, 10_000, "the workload should produce plenty of records")

        var rng = SeededRandom(seed: testSeed("PostgresIntegrationTests(\(compression))"))
        let (records, endError) = decodeInRandomChunks(wal, from: firstLSN, byteByByte: 64 * 1024, rng: &rng)

        // The stream ends where the server stopped writing: both readers must stop at the same place.
        XCTAssertEqual(records.count, expected.count, "records decoded vs. pg_waldump")
        let last = try XCTUnwrap(records.last)
        let endError2 = try XCTUnwrap(endError, "the zeros after the last record must stop the decoder")
        XCTAssertEqual(endError2.code, .corruption)
        XCTAssertTrue([last.nextRecordLSN, last.endLSN].contains(endError2.recordLSN ?? endError2.position ?? .zero),
                      "decoder stopped with \(endError2), after the last record ending at \(last.endLSN)")
        XCTAssertTrue(dump.stderr.contains("error in WAL record at \(last.startLSN)"), "pg_waldump stopped elsewhere: \(dump.stderr)")

        compare(records, with: expected)
        checkImages(records)
        checkEndLSNs(records, facts: facts)
        checkSwitchAndSpanning(records)
        try checkCorruptionIsDetected(wal: wal, walLSN: firstLSN, records: records)
        XCTAssertTrue(records.contains { $0.blocks.contains { $0.image.map { !$0.apply } ?? false } },
                      "wal_consistency_checking should have logged images without BKPIMAGE_APPLY")
        var kinds = Set<BlockImage.Compression>()
        for r in records { for b in r.blocks { if let i = b.image { kinds.insert(i.compression) } } }
        let want: BlockImage.Compression = compression == "off" ? .none : BlockImage.Compression(rawValue: compression)!
        XCTAssertTrue(kinds.contains(want), "no \(want) images among \(kinds)")
    }

    private func runWorkload(_ cluster: PostgresCluster) throws -> ServerFacts {
        func run(_ statements: [String]) throws {
            try cluster.asPostgres("\(PostgresCluster.bin)/psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p \(cluster.port) -U postgres -d postgres "
                + statements.map { "-c " + shellQuote($0) }.joined(separator: " "))
        }
        try run([
            "CREATE EXTENSION pageinspect",
            "CREATE EXTENSION pg_walinspect",
            // Rows of 6.4 KB kept inline (no TOAST): their insert records span WAL pages.
            "CREATE TABLE wide (id int PRIMARY KEY, payload text)",
            "ALTER TABLE wide ALTER COLUMN payload SET STORAGE PLAIN",
            "INSERT INTO wide SELECT g, repeat(md5(g::text), 200) FROM generate_series(1, 300) g",
            // Incompressible 48 KB documents go to TOAST.
            "CREATE TABLE toasty (id int, doc text)",
            "INSERT INTO toasty SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 1500) i) FROM generate_series(1, 20) g",
            "CHECKPOINT",
            // The first change to each page after a checkpoint logs a full-page image.
            "UPDATE wide SET payload = repeat(md5((id + 1)::text), 200) WHERE id % 3 = 0",
            "UPDATE toasty SET id = id + 100",
            // Images logged only for consistency checking: BKPIMAGE_APPLY clear.
            "SET wal_consistency_checking = 'heap,btree'",
            "UPDATE wide SET id = id + 1000 WHERE id <= 20",
            "RESET wal_consistency_checking",
            // A 100 KB main data fragment (the long main data header).
            "SELECT pg_logical_emit_message(false, 'test', repeat('x', 100000))",
            "SELECT pg_switch_wal()",
        ])
        try cluster.asPostgres("\(PostgresCluster.bin)/pgbench -q -i -s 1 -h 127.0.0.1 -p \(cluster.port) -U postgres postgres")
        try run([
            "CHECKPOINT",
            // WAL_LOG strategy: every page of template1 as a full-page image.
            "CREATE DATABASE copy1",
            "DELETE FROM pgbench_accounts WHERE aid % 5 = 0",
            "VACUUM pgbench_accounts",
            "UPDATE pgbench_branches SET bbalance = bbalance + 1",
            "CREATE TABLE probe (a int)",
            "INSERT INTO probe VALUES (1)",
            "UPDATE probe SET a = 2",
        ])
        let rel = try cluster.sql("SELECT (SELECT oid FROM pg_database WHERE datname = current_database()) || ' ' || pg_relation_filenode('probe')")
            .split(separator: " ").compactMap { UInt32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        let pageLSN = try XCTUnwrap(LSN(parsing: try cluster.sql("SELECT lsn FROM page_header(get_raw_page('probe', 0))").trimmingCharacters(in: .whitespacesAndNewlines)))
        let rows = try cluster.sql("SELECT start_lsn || ' ' || end_lsn FROM pg_get_wal_records_info('0/1000000', pg_current_wal_flush_lsn())")
        let walinspect = rows.split(separator: "\n").compactMap { line -> (LSN, LSN)? in
            let p = line.split(separator: " ")
            guard p.count == 2, let s = LSN(parsing: p[0]), let e = LSN(parsing: p[1]) else { return nil }
            return (s, e)
        }
        XCTAssertEqual(rel.count, 2)
        return ServerFacts(walinspect: walinspect.map { (start: $0.0, end: $0.1) },
                           probe: RelFileNode(spcNode: 1663, dbNode: rel.first ?? 0, relNode: rel.last ?? 0),
                           probePageLSN: pageLSN)
    }

    /// Feeds `wal` (whose first byte is at `lsn`) to a fresh decoder: the first `byteByByte` bytes one
    /// at a time, then chunks of random sizes (1 byte to 256 KiB), pulling records after every feed.
    /// Stops at the first error and returns it with the records decoded before it.
    private func decodeInRandomChunks(_ wal: [UInt8], from lsn: LSN, byteByByte: Int,
                                      rng: inout SeededRandom) -> ([DecodedRecord], WALError?) {
        var decoder = try! WALDecoder(startLSN: lsn)
        var records: [DecodedRecord] = []
        var offset = 0
        while offset < wal.count {
            let n: Int
            if offset < byteByByte {
                n = 1
            } else {
                switch Int.random(in: 0..<10, using: &rng) {
                case 0: n = Int.random(in: 1...16, using: &rng)
                case 1...4: n = Int.random(in: 17...8192, using: &rng)
                default: n = Int.random(in: 8193...262_144, using: &rng)
                }
            }
            let end = min(wal.count, offset + n)
            decoder.feed(wal[offset..<end])
            offset = end
            XCTAssertEqual(decoder.position, lsn.advanced(by: UInt64(offset)))
            do {
                while let r = try decoder.next() { records.append(r) }
            } catch let e as WALError {
                return (records, e)
            } catch {
                XCTFail("unexpected error \(error)")
                return (records, nil)
            }
        }
        return (records, nil)
    }

    private func compare(_ records: [DecodedRecord], with expected: [WaldumpRecord]) {
        var failures = 0
        func check(_ ok: Bool, _ what: @autoclosure () -> String) {
            guard !ok else { return }
            failures += 1
            if failures <= 20 { XCTFail(what()) }
        }
        for (r, e) in zip(records, expected) {
            let at = "record at \(e.lsn)"
            check(r.startLSN == e.lsn, "\(at): decoder has \(r.startLSN)")
            check(r.prev == e.prev, "\(at): prev \(r.prev) vs \(e.prev)")
            check(r.resourceManager.description == e.rmgr, "\(at): rmgr \(r.resourceManager) vs \(e.rmgr)")
            check(r.totalLength == e.totalLength, "\(at): tot_len \(r.totalLength) vs \(e.totalLength)")
            check(r.totalLength - r.imageBytes == e.recordLength, "\(at): rec_len \(r.totalLength - r.imageBytes) vs \(e.recordLength)")
            check(r.xid.rawValue == e.xid, "\(at): xid \(r.xid) vs \(e.xid)")
            check(r.blocks.count == e.blocks.count, "\(at): \(r.blocks.count) blocks vs \(e.blocks.count)")
            for (b, eb) in zip(r.blocks, e.blocks) {
                let bat = "\(at) block #\(eb.id)"
                check(Int(b.id) == eb.id, "\(bat): id \(b.id)")
                check(b.relation.description == eb.relation, "\(bat): rel \(b.relation) vs \(eb.relation)")
                check(b.fork.description == eb.fork, "\(bat): fork \(b.fork) vs \(eb.fork)")
                check(b.block.rawValue == eb.block, "\(bat): blk \(b.block) vs \(eb.block)")
                check(b.hasImage == eb.hasImage, "\(bat): image \(b.hasImage) vs \(eb.hasImage)")
                if let image = b.image, eb.hasImage {
                    check(image.apply == eb.apply, "\(bat): apply \(image.apply) vs \(eb.apply)")
                    check(image.holeOffset == eb.holeOffset, "\(bat): hole offset \(image.holeOffset) vs \(eb.holeOffset ?? -1)")
                    check(image.holeLength == eb.holeLength, "\(bat): hole length \(image.holeLength) vs \(eb.holeLength ?? -1)")
                    check(image.compression.rawValue == (eb.method ?? "none"), "\(bat): method \(image.compression) vs \(eb.method ?? "none")")
                    if let saved = eb.compressionSaved {
                        check(PostgresWAL.relationPageSize - image.holeLength - image.storedLength == saved,
                              "\(bat): compression saved \(PostgresWAL.relationPageSize - image.holeLength - image.storedLength) vs \(saved)")
                    }
                }
            }
        }
        for (a, b) in zip(records, records.dropFirst()) {
            check(a.nextRecordLSN == b.startLSN, "record at \(a.startLSN) says the next starts at \(a.nextRecordLSN), but it starts at \(b.startLSN)")
        }
        XCTAssertEqual(failures, 0, "mismatches against pg_waldump")
    }

    /// Every restored image must look like a PostgreSQL page, which a wrong decompression or a
    /// misplaced hole would not: the page-size/version word, pd_lower and pd_upper bounding the hole,
    /// and a pd_lsn older than the record.
    private func checkImages(_ records: [DecodedRecord]) {
        var checked = 0, failures = 0
        for r in records {
            for b in r.blocks {
                guard let image = b.image else { continue }
                let p = image.page
                XCTAssertEqual(p.count, PostgresWAL.relationPageSize)
                if p.allSatisfy({ $0 == 0 }) { continue }
                func u16(_ o: Int) -> Int { Int(p[o]) | Int(p[o + 1]) << 8 }
                let pdLSN = LSN(UInt64(u16(0) | u16(2) << 16) << 32 | UInt64(u16(4) | u16(6) << 16))
                let lower = u16(12), upper = u16(14), sizeVersion = u16(18)
                var ok = sizeVersion == 0x2004 && pdLSN <= r.startLSN && lower <= upper && upper <= 8192
                if image.holeLength > 0 { ok = ok && image.holeOffset == lower && image.holeOffset + image.holeLength == upper }
                if !ok {
                    failures += 1
                    if failures <= 10 {
                        XCTFail("record at \(r.startLSN) block #\(b.id) (\(image.compression)): restored page has pd_lsn \(pdLSN), lower \(lower), upper \(upper), size/version 0x\(String(sizeVersion, radix: 16)); hole \(image.holeOffset)+\(image.holeLength)")
                    }
                }
                checked += 1
            }
        }
        XCTAssertGreaterThan(checked, 500, "the workload should log many full-page images")
        print("checked \(checked) restored page images")
    }

    /// endLSN is PostgreSQL's EndRecPtr: pg_walinspect's end_lsn for every record, and the pd_lsn
    /// that the last change to a page stamped on it (here the probe table's only page).
    private func checkEndLSNs(_ records: [DecodedRecord], facts: ServerFacts) {
        var byStart: [LSN: DecodedRecord] = [:]
        for r in records { byStart[r.startLSN] = r }
        XCTAssertGreaterThan(facts.walinspect.count, 10_000)
        var failures = 0
        for (start, end) in facts.walinspect {
            guard let r = byStart[start] else {
                failures += 1
                if failures <= 10 { XCTFail("pg_walinspect has a record at \(start) the decoder does not") }
                continue
            }
            if r.endLSN != end {
                failures += 1
                if failures <= 10 { XCTFail("record at \(start): endLSN \(r.endLSN), pg_walinspect end_lsn \(end)") }
            }
        }
        XCTAssertEqual(failures, 0, "end LSNs against pg_walinspect")

        let touching = records.filter { r in
            r.startLSN < facts.probePageLSN && r.blocks.contains { $0.relation == facts.probe && $0.fork == .main && $0.block == BlockNumber(0) }
        }
        let lastChange = touching.last
        XCTAssertEqual(lastChange?.endLSN, facts.probePageLSN, "pd_lsn of the probe page is the EndRecPtr of the last record that changed it")
        if let lastChange {
            print("probe page: last change at \(lastChange.startLSN), tot_len \(lastChange.totalLength), endLSN \(lastChange.endLSN), pd_lsn \(facts.probePageLSN)")
        }
    }

    private func checkSwitchAndSpanning(_ records: [DecodedRecord]) {
        let page = UInt64(PostgresWAL.pageSize)
        let switches = records.filter(\.isSwitch)
        XCTAssertFalse(switches.isEmpty, "pg_switch_wal() should have written an XLOG_SWITCH record")
        for s in switches {
            XCTAssertEqual(s.endLSN.rawValue % UInt64(PostgresWAL.defaultSegmentSize), 0)
            XCTAssertEqual(s.nextRecordLSN, s.endLSN.advanced(by: UInt64(WALPageHeader.longSize)))
        }
        let spanning = records.filter { $0.startLSN.rawValue / page != ($0.endLSN.rawValue - 1) / page }
        let longOnes = records.filter { $0.totalLength > 3 * PostgresWAL.pageSize }
        let splitHeaders = records.filter { page - $0.startLSN.rawValue % page < UInt64(XLogRecordHeader.size) }
        let atBoundary = records.filter { $0.endLSN.rawValue % page == 0 && !$0.isSwitch }
        print("records: \(records.count); spanning pages: \(spanning.count); over 3 pages: \(longOnes.count); header split across pages: \(splitHeaders.count); ending on a page boundary: \(atBoundary.count)")
        XCTAssertGreaterThan(spanning.count, 100)
        XCTAssertFalse(longOnes.isEmpty)
        XCTAssertTrue(records.contains { $0.mainData.count >= 100_000 }, "the 100 KB logical message")
    }

    /// A flipped byte inside a record's payload fails that record's CRC, named by its LSN; a damaged
    /// page header inside a spanning record is caught by the page checks.
    private func checkCorruptionIsDetected(wal: [UInt8], walLSN: LSN, records: [DecodedRecord]) throws {
        let page = UInt64(PostgresWAL.pageSize)
        let candidates: [(String, DecodedRecord?)] = [
            ("small", records.first { $0.totalLength < 200 && $0.startLSN.rawValue % page > 100 && !$0.blocks.isEmpty }),
            ("spanning", records.first { $0.totalLength > 2 * PostgresWAL.pageSize }),
            ("image", records.last { $0.blocks.contains { $0.image?.compression != BlockImage.Compression.none && $0.image != nil } }
                ?? records.last { $0.blocks.contains { $0.hasImage } }),
        ]
        for case let (name, target?) in candidates {
            let index = records.firstIndex { $0.startLSN == target.startLSN }!
            let from = records[max(0, index - 3)]
            // A byte in the middle of the record, located in the stream (page headers skipped).
            let byteLSN = streamPosition(ofRecordByte: target.totalLength / 2 + 3, recordStart: target.startLSN)
            var damaged = wal
            damaged[Int(byteLSN.rawValue - walLSN.rawValue)] ^= 0x5A
            let error = decodeUntilError(damaged, walLSN: walLSN, from: from.startLSN, upTo: target.nextRecordLSN)
            XCTAssertEqual(error?.code, .checksumMismatch, "\(name) record at \(target.startLSN): \(String(describing: error))")
            XCTAssertEqual(error?.recordLSN, target.startLSN, "\(name): the error names the damaged record")
            XCTAssertTrue(error?.description.contains("\(target.startLSN)") ?? false)
            print("flipped byte at \(byteLSN) in the \(name) record: \(error.map(String.init(describing:)) ?? "no error")")
        }
        if let spanning = candidates[1].1 {
            let nextPage = (spanning.startLSN.rawValue / page + 1) * page
            var damaged = wal
            damaged[Int(nextPage - walLSN.rawValue) + 8] ^= 0x01  // xlp_pageaddr
            let error = decodeUntilError(damaged, walLSN: walLSN, from: spanning.startLSN, upTo: spanning.nextRecordLSN)
            XCTAssertEqual(error?.code, .corruption)
            XCTAssertEqual(error?.recordLSN, spanning.startLSN)
            XCTAssertEqual(error?.position, LSN(nextPage))
        }
    }

    private func decodeUntilError(_ wal: [UInt8], walLSN: LSN, from: LSN, upTo: LSN) -> WALError? {
        var decoder = try! WALDecoder(startLSN: from)
        decoder.feed(wal[Int(from.rawValue - walLSN.rawValue)..<Int(upTo.rawValue - walLSN.rawValue)])
        do {
            while try decoder.next() != nil {}
            return nil
        } catch {
            return error as? WALError
        }
    }

    /// The stream LSN of byte `k` of the record that starts at `recordStart`.
    private func streamPosition(ofRecordByte k: Int, recordStart: LSN) -> LSN {
        let page = UInt64(PostgresWAL.pageSize)
        var position = recordStart.rawValue
        var left = UInt64(k)
        while true {
            let room = (position / page + 1) * page - position
            if left < room { return LSN(position + left) }
            left -= room
            position = (position / page + 1) * page
            position += UInt64(PostgresWAL.pageHeaderSize(at: position, segmentSize: PostgresWAL.defaultSegmentSize))
        }
    }
}
