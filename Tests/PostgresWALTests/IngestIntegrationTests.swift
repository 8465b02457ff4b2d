import Foundation
import LSM
import XCTest
@testable import PostgresWAL

/// Base-backup import plus WAL ingest against a real PostgreSQL 15: take a base backup, run a
/// workload of every kind of change ingest interprets, stop the server cleanly, then import the backup
/// and ingest all WAL from its start into a fresh `TimelineStore`, and compare the result with the
/// stopped primary's data directory: DbDir, every RelDir, every fork's size, the relmap files, the
/// pg_xact and pg_multixact pages (engine records applied by a test-only redo), the two-phase files and
/// the checkpoint.
final class IngestIntegrationTests: XCTestCase {
    func testImportAndIngestMatchThePrimary() throws {
        try XCTSkipUnless(PostgresCluster.isAvailable, "needs PostgreSQL 15 in \(PostgresCluster.bin), root, and a postgres user")
        let cluster = try PostgresCluster(settings: [
            "wal_level = replica", "max_prepared_transactions = 5", "autovacuum = off", "fsync = off",
            "wal_keep_size = '1GB'", "max_wal_size = '1GB'",
        ])
        var storeDirectory: String?
        defer {
            cluster.destroy()
            if let storeDirectory { try? FileManager.default.removeItem(atPath: storeDirectory) }
        }
        let started = Date()
        func run(_ statements: [String], db: String = "postgres") throws {
            try cluster.asPostgres("\(PostgresCluster.bin)/psql -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p \(cluster.port) -U postgres -d \(db) "
                + statements.map { "-c " + shellQuote($0) }.joined(separator: " "))
        }

        // Something to find in the backup, and a table that will change after it.
        try run([
            "CREATE TABLE before_backup (id int PRIMARY KEY, v text)",
            "INSERT INTO before_backup SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
            "VACUUM FREEZE before_backup",
            "CREATE TABLE trunc_me AS SELECT g AS a, md5(g::text) AS b FROM generate_series(1, 5000) g",
            "VACUUM trunc_me",
        ])
        let backupDirectory = cluster.directory + "/backup"
        try cluster.asPostgres("\(PostgresCluster.bin)/pg_basebackup -h 127.0.0.1 -p \(cluster.port) -U postgres -D \(backupDirectory) -Ft -X none -c fast")

        try runWorkload(run, cluster)
        let checkpointBeforeStop = try cluster.sql("SELECT pg_current_wal_lsn()")
        try cluster.stop()
        print("IngestIntegrationTests: workload done in \(Int(Date().timeIntervalSince(started))) s, WAL up to about \(checkpointBeforeStop.trimmingCharacters(in: .whitespacesAndNewlines))")

        // Import base.tar into a fresh store.
        let dir = FileManager.default.temporaryDirectory.path + "/ingest-store-\(UUID().uuidString.prefix(8))"
        storeDirectory = dir
        var config = StoreConfig()
        config.backgroundFlush = false
        let store = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: makeBlockIO(.pread)))
        let target = TimelineStoreTarget(store: store)
        let tar = try [UInt8](Data(contentsOf: URL(fileURLWithPath: backupDirectory + "/base.tar")))
        let label = try XCTUnwrap(Self.extract("backup_label", from: tar).map { String(decoding: $0, as: UTF8.self) })
        let startLine = try XCTUnwrap(label.split(separator: "\n").first { $0.hasPrefix("START WAL LOCATION: ") })
        let startLSN = try XCTUnwrap(LSN(parsing: startLine.dropFirst("START WAL LOCATION: ".count).prefix { $0 != " " }))
        let importer = BaseBackupImport(target: target, startLSN: startLSN)
        let parser = TarStreamParser(consumer: importer)
        var offset = 0
        while offset < tar.count {
            // Chunks that do not line up with tar blocks or pages.
            let n = min(tar.count - offset, 100_003)
            try parser.feed(Array(tar[offset..<offset + n]))
            offset += n
        }
        try parser.finish()
        try importer.finish()
        XCTAssertGreaterThan(importer.blocksImported, 500)
        print("IngestIntegrationTests: imported \(importer.blocksImported) blocks of \(importer.filesImported) files at \(Int(Date().timeIntervalSince(started))) s")

        // The imported checkpoint is pg_control's checkPointCopy: check the offsets with pg_controldata.
        let backupControl = try XCTUnwrap(Self.extract("global/pg_control", from: tar))
        let controlDir = cluster.directory + "/backup-control"
        try FileManager.default.createDirectory(atPath: controlDir + "/global", withIntermediateDirectories: true)
        try Data(backupControl).write(to: URL(fileURLWithPath: controlDir + "/global/pg_control"))
        let importedCheckpoint = try XCTUnwrap(target.latestImage(KeySpace.checkpoint))
        try checkCheckpoint(importedCheckpoint, against: try shell("\(PostgresCluster.bin)/pg_controldata -D \(controlDir)").stdout)

        // Decode all WAL from the start LSN and ingest every record.
        let ingest = WalIngest(target: target, pageSource: TimelineStorePageSource(store: store, redo: ImageOnlyRedo()))
        var commits: [CommitTimestamp] = []
        ingest.onCommit = { commits.append($0) }
        ingest.collectsCommitTimestamps = true
        let records = try ingestWAL(from: startLSN, walDirectory: cluster.walDirectory, into: ingest)
        print("IngestIntegrationTests: ingested at \(Int(Date().timeIntervalSince(started))) s")
        let last = try XCTUnwrap(records.last)
        XCTAssertEqual(last.resourceManager, .xlog)
        XCTAssertEqual(last.header.opcode, 0x00, "the WAL ends with the shutdown checkpoint")
        XCTAssertEqual(store.lastRecordLSN, last.endLSN)
        print("IngestIntegrationTests: \(ingest.stats.records) records, \(ingest.stats.bytes) bytes, \(ingest.stats.valuesPut) values, \(ingest.stats.engineRecords) engine records, \(ingest.stats.blocksCopied) blocks copied\n\(ingest.stats.summary)")
        for (rmgr, minimum) in [(ResourceManagerId.database, 4), (.multiXact, 1), (.relMap, 1), (.clog, 0)] {
            XCTAssertGreaterThanOrEqual(ingest.stats[rmgr].records, minimum, "\(rmgr) records")
        }
        XCTAssertGreaterThan(ingest.stats.engineRecords, 100)
        for tag in [EngineRecord.Tag.clogSetStatus, .vmClear, .multixactOffsets, .multixactMembers, .vmTruncate, .fsmTruncate] {
            XCTAssertGreaterThan(ingest.stats.engineRecords(tag), 0, "engine records with tag \(tag)")
        }
        print("IngestIntegrationTests: engine records by tag \(ingest.stats.engineRecordsByTag.sorted { $0.key < $1.key })")
        XCTAssertGreaterThan(ingest.stats.blocksCopied, 100)
        XCTAssertEqual(ingest.stats[.transaction].uninterpretedWithoutBlocks, ingest.stats[.transaction].uninterpreted)
        XCTAssertGreaterThan(commits.count, 20)
        XCTAssertEqual(commits, ingest.commitTimestamps)
        for (a, b) in zip(commits, commits.dropFirst()) { XCTAssertLessThan(a.lsn, b.lsn) }
        if let first = commits.first {
            XCTAssertEqual(first.unixSeconds, started.timeIntervalSince1970, accuracy: 600, "commit timestamps are microseconds since 2000")
        }

        // Flush to layer files, so that the comparison reads through them as well.
        try store.checkpoint()
        print("IngestIntegrationTests: flushed at \(Int(Date().timeIntervalSince(started))) s")
        try compare(store: store, target: target, dataDirectory: cluster.dataDirectory)
        print("IngestIntegrationTests: compared at \(Int(Date().timeIntervalSince(started))) s")
        XCTAssertLessThan(Date().timeIntervalSince(started), 240)
    }

    // MARK: - Workload

    private func runWorkload(_ run: ([String], String) throws -> Void, _ cluster: PostgresCluster) throws {
        try run([
            // Relations over many blocks, an index, updates, deletes, VACUUM (VM and FSM).
            "CREATE TABLE t1 (id int PRIMARY KEY, v text)",
            "INSERT INTO t1 SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g",
            "CREATE INDEX t1_v ON t1 (v)",
            "UPDATE t1 SET v = 'updated' WHERE id % 10 = 0",
            "DELETE FROM t1 WHERE id % 7 = 0",
            "VACUUM t1",
            // Changes to all-visible pages clear VM bits without a reference to the VM page.
            "UPDATE t1 SET v = 'again' WHERE id % 500 = 1",
            "DELETE FROM t1 WHERE id % 500 = 2",
            "INSERT INTO t1 SELECT g, 'late' FROM generate_series(30001, 30100) g",
            "VACUUM FREEZE before_backup",
            "SELECT id FROM before_backup WHERE id % 100 = 3 FOR KEY SHARE",
            "UPDATE before_backup SET v = 'x' WHERE id = 4000",
            // A multixact: a lock by the transaction, then an update by its subtransaction.
            "BEGIN", "SELECT * FROM before_backup WHERE id = 10 FOR SHARE", "SAVEPOINT s1",
            "UPDATE before_backup SET v = 'multi' WHERE id = 10", "COMMIT",
            // A VACUUM that truncates a relation whose FSM is in the backup (FSM forks created later
            // are unknown to WAL).
            "DELETE FROM trunc_me WHERE a > 2000", "VACUUM trunc_me",
            // Subtransactions: one committed, one rolled back.
            "BEGIN", "SAVEPOINT a", "INSERT INTO t1 VALUES (40001, 'sub')", "RELEASE a",
            "SAVEPOINT b", "INSERT INTO t1 VALUES (40002, 'rolled back')", "ROLLBACK TO b", "COMMIT",
            // An aborted transaction that created a relation.
            "BEGIN", "CREATE TABLE gone (a int)", "INSERT INTO gone VALUES (1)", "ROLLBACK",
            // TRUNCATE (new relfilenode, the old one dropped at commit), DROP TABLE, and a VACUUM that
            // truncates trailing empty pages (Storage TRUNCATE with FSM and VM).
            "CREATE TABLE t2 (a int, b text)",
            "INSERT INTO t2 SELECT g, md5(g::text) FROM generate_series(1, 5000) g",
            "TRUNCATE t2",
            "INSERT INTO t2 VALUES (1, 'after truncate')",
            "CREATE TABLE t3 (a int, b text)",
            "INSERT INTO t3 SELECT g, md5(g::text) FROM generate_series(1, 10000) g",
            "VACUUM t3",
            "DELETE FROM t3 WHERE a > 1000",
            "VACUUM t3",
            "CREATE TABLE t4 (a int)", "INSERT INTO t4 SELECT generate_series(1, 1000)", "DROP TABLE t4",
            // Two-phase commit: one committed, one left prepared at shutdown.
            "BEGIN", "INSERT INTO t1 VALUES (50001, 'prepared')", "PREPARE TRANSACTION 'p1'", "COMMIT PREPARED 'p1'",
            "BEGIN", "INSERT INTO t1 VALUES (50002, 'still prepared')", "PREPARE TRANSACTION 'p2'",
            "BEGIN", "INSERT INTO t1 VALUES (50003, 'aborted prepared')", "PREPARE TRANSACTION 'p3'", "ROLLBACK PREPARED 'p3'",
            // Databases: both strategies, and a drop.
            "CREATE DATABASE dbwal STRATEGY WAL_LOG",
            "CREATE DATABASE dbcopy STRATEGY FILE_COPY",
            "CREATE DATABASE dbdrop",
            "DROP DATABASE dbdrop",
        ], "postgres")
        try run(["CREATE TABLE in_copy (a int)", "INSERT INTO in_copy SELECT generate_series(1, 3000)",
                 "CREATE INDEX ON in_copy (a)", "VACUUM in_copy"], "dbcopy")
        try run(["CREATE TABLE in_wal (a int)", "INSERT INTO in_wal SELECT generate_series(1, 3000)"], "dbwal")
        try cluster.asPostgres("\(PostgresCluster.bin)/pgbench -q -i -s 1 -h 127.0.0.1 -p \(cluster.port) -U postgres postgres")
        try cluster.asPostgres("\(PostgresCluster.bin)/pgbench -n -t 100 -c 2 -h 127.0.0.1 -p \(cluster.port) -U postgres postgres")
        try run(["CHECKPOINT"], "postgres")
    }

    // MARK: - WAL

    private func ingestWAL(from start: LSN, walDirectory: String, into ingest: WalIngest) throws -> [DecodedRecord] {
        let segmentSize = UInt64(PostgresWAL.defaultSegmentSize)
        let segments = try walSegments(in: walDirectory).filter { $0.lsn.rawValue + segmentSize > start.rawValue }
        XCTAssertEqual(segments.first?.lsn.rawValue, start.rawValue / segmentSize * segmentSize, "the WAL from the backup's start is still there")
        var decoder = try WALDecoder(startLSN: start)
        var records: [DecodedRecord] = []
        for s in segments {
            var bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: s.path)))
            if s.lsn < start { bytes.removeFirst(Int(start.rawValue - s.lsn.rawValue)) }
            decoder.feed(bytes)
            do {
                while let r = try decoder.next() {
                    try ingest.ingest(r)
                    records.append(DecodedRecord.summary(of: r))
                }
            } catch let e as WALError {
                // The zeros after the last record end the stream.
                XCTAssertEqual(e.code, .corruption, "\(e)")
                break
            }
        }
        XCTAssertGreaterThan(records.count, 10_000)
        return records
    }

    // MARK: - Comparison with the primary

    private func compare(store: TimelineStore, target: TimelineStoreTarget, dataDirectory: String) throws {
        let fm = FileManager.default
        func image(_ key: Key) throws -> [UInt8]? { try target.latestImage(key) }

        // DbDir: every database directory plus the shared catalogs.
        let dbNames = try fm.contentsOfDirectory(atPath: dataDirectory + "/base").compactMap(UInt32.init)
        var expectedDbs = Set(dbNames.map { DatabaseTag(spc: 1663, db: $0) })
        expectedDbs.insert(KeySpace.globalDatabase)
        let dbDir = try XCTUnwrap(image(KeySpace.dbDir).map { try DbDirectory(decoding: $0).entries })
        XCTAssertEqual(dbDir, expectedDbs)
        XCTAssertGreaterThanOrEqual(dbNames.count, 5, "template0, template1, postgres, dbwal, dbcopy")

        var forksChecked = 0, blocksInForks = 0
        var tolerated: [String] = []
        for db in expectedDbs.sorted() {
            let path = db == KeySpace.globalDatabase ? dataDirectory + "/global" : dataDirectory + "/base/\(db.db)"
            // The primary's forks: relnode + fork -> bytes over all segments.
            var files: [RelDirectory.Entry: UInt64] = [:]
            for name in try fm.contentsOfDirectory(atPath: path) {
                guard let f = RelationFileName(name) else { continue }
                let size = try XCTUnwrap(fm.attributesOfItem(atPath: path + "/" + name)[.size] as? NSNumber).uint64Value
                files[RelDirectory.Entry(rel: f.relNode, fork: f.fork.rawValue), default: 0] += size
            }
            let relDir = try XCTUnwrap(image(KeySpace.relDir(db)).map { try RelDirectory(decoding: $0).entries }, "RelDir of \(db)")
            for e in relDir.sorted() where files[e] == nil {
                XCTFail("\(db): RelDir has \(e.rel) fork \(e.fork), which the primary does not have")
            }
            for (e, bytes) in files.sorted(by: { $0.key < $1.key }) {
                let tag = RelTag(spc: db.spc, db: db.db, rel: e.rel, fork: e.fork)
                let primaryBlocks = UInt32(bytes / 8192)
                guard relDir.contains(e) else {
                    // The FSM is never WAL-logged (without wal_log_hints), and a VM fork can be
                    // created (all zero) by VACUUM without any WAL: neither can be known from WAL.
                    if e.fork == ForkNumber.fsm.rawValue {
                        tolerated.append("\(tag) (\(primaryBlocks) blocks) only on the primary")
                    } else if e.fork == ForkNumber.visibilityMap.rawValue {
                        // Missing VM bits are safe; missing set bits would not be: the primary's map
                        // must be empty.
                        let vm = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path + "/\(e.rel)_vm")))
                        let bitsSet = stride(from: 0, to: vm.count, by: 8192).contains { p in vm[(p + 24)..<(p + 8192)].contains { $0 != 0 } }
                        XCTAssertFalse(bitsSet, "\(tag): the primary's visibility map has bits set, but no WAL created the fork")
                        tolerated.append("\(tag) (\(primaryBlocks) blocks, no bit set) only on the primary")
                    } else {
                        XCTFail("\(db): the primary has \(e.rel) fork \(e.fork) (\(bytes) bytes), RelDir does not")
                    }
                    continue
                }
                let size = try XCTUnwrap(image(KeySpace.relationSize(tag)).map { try SizeValue.decode($0) }, "size of \(tag)")
                forksChecked += 1
                blocksInForks += Int(size)
                if e.fork == ForkNumber.fsm.rawValue && size <= primaryBlocks {
                    // FSM pages are added without WAL; WAL only shows the ones it logged.
                    if size != primaryBlocks { tolerated.append("\(tag): FSM has \(size) of the primary's \(primaryBlocks) blocks") }
                    continue
                }
                XCTAssertEqual(size, primaryBlocks, "size of \(tag)")
            }
            // The relmap file.
            let mapPath = path + "/pg_filenode.map"
            if fm.fileExists(atPath: mapPath) {
                XCTAssertEqual(try image(KeySpace.relMap(db)), try [UInt8](Data(contentsOf: URL(fileURLWithPath: mapPath))), "relmap of \(db)")
            }
        }
        print("IngestIntegrationTests: \(forksChecked) forks (\(blocksInForks) blocks) match the primary; tolerated: \(tolerated.count)\n  " + tolerated.joined(separator: "\n  "))
        XCTAssertGreaterThan(forksChecked, 1000)

        // SLRUs: directory, segment sizes, and every page after applying the engine records.
        let redo = TestSlruRedoAdapter()
        var slruPages = 0
        for kind in SlruKind.allCases {
            let dir = dataDirectory + "/" + kind.directory
            let names = try fm.contentsOfDirectory(atPath: dir).filter { $0.allSatisfy(\.isHexDigit) }
            let segments = Set(names.compactMap { UInt32($0, radix: 16) })
            XCTAssertEqual(try image(KeySpace.slruDir(kind)).map { try IdDirectory(decoding: $0).ids }, segments, "\(kind) segments")
            for name in names {
                let segment = UInt32(name, radix: 16)!
                let file = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dir + "/" + name)))
                let blocks = UInt32(file.count / 8192)
                XCTAssertEqual(try image(KeySpace.slruSegmentSize(kind, segment: segment)).map { try SizeValue.decode($0) }, blocks, "\(kind) segment \(name) size")
                for b in 0..<blocks {
                    let ours = try store.get(KeySpace.slruBlock(kind, segment: segment, block: b), at: .max, redo: redo)
                    let theirs = Array(file[Int(b) * 8192..<Int(b + 1) * 8192])
                    if ours != theirs {
                        let firstDiff = ours.flatMap { o in zip(o, theirs).enumerated().first { $0.element.0 != $0.element.1 }?.offset }
                        XCTFail("\(kind) segment \(name) page \(b) differs (first at byte \(firstDiff.map(String.init) ?? "-"))")
                    }
                    slruPages += 1
                }
            }
        }
        XCTAssertGreaterThanOrEqual(slruPages, 3)

        // Two-phase state files: the one left prepared.
        let twoPhaseNames = try fm.contentsOfDirectory(atPath: dataDirectory + "/pg_twophase")
        XCTAssertEqual(twoPhaseNames.count, 1, "p2 is still prepared")
        let twoPhaseDir = try XCTUnwrap(image(KeySpace.twoPhaseDir).map { try IdDirectory(decoding: $0).ids })
        XCTAssertEqual(twoPhaseDir, Set(twoPhaseNames.compactMap { UInt32($0, radix: 16) }))
        for name in twoPhaseNames {
            XCTAssertEqual(try image(KeySpace.twoPhaseFile(xid: UInt32(name, radix: 16)!)),
                           try [UInt8](Data(contentsOf: URL(fileURLWithPath: dataDirectory + "/pg_twophase/" + name))), "two-phase file \(name)")
        }

        // The checkpoint: the shutdown checkpoint, byte for byte as pg_control keeps it, but for
        // nextXid, which ingest keeps at the next multiple of 1024 past every xid used.
        let control = try [UInt8](Data(contentsOf: URL(fileURLWithPath: dataDirectory + "/global/pg_control")))
        var checkpoint = try XCTUnwrap(image(KeySpace.checkpoint))
        let theirs = Array(control[40..<128])
        let ourNextXid = CheckPointLayout.u64(checkpoint, CheckPointLayout.nextXidOffset)
        let theirNextXid = CheckPointLayout.u64(theirs, CheckPointLayout.nextXidOffset)
        XCTAssertEqual(ourNextXid, (theirNextXid - 1) / 1024 * 1024 + 1024, "nextXid: the multiple of 1024 past the last xid used")
        CheckPointLayout.setU64(&checkpoint, CheckPointLayout.nextXidOffset, theirNextXid)
        XCTAssertEqual(checkpoint, theirs)
        try checkCheckpoint(checkpoint, against: try shell("\(PostgresCluster.bin)/pg_controldata -D \(dataDirectory)").stdout)
    }

    /// Checks the CheckPoint struct's fields at the offsets ingest assumes against pg_controldata.
    private func checkCheckpoint(_ cp: [UInt8], against controldata: String, file: StaticString = #filePath, line: UInt = #line) throws {
        func field(_ name: String) throws -> String {
            let l = try XCTUnwrap(controldata.split(separator: "\n").first { $0.hasPrefix(name + ":") }, "pg_controldata lacks \(name)")
            return l.dropFirst(name.count + 1).trimmingCharacters(in: .whitespaces)
        }
        XCTAssertEqual(cp.count, CheckPointLayout.size, file: file, line: line)
        XCTAssertEqual(LSN(CheckPointLayout.u64(cp, CheckPointLayout.redoOffset)), LSN(parsing: try field("Latest checkpoint's REDO location")), file: file, line: line)
        XCTAssertEqual(String(CheckPointLayout.u32(cp, CheckPointLayout.nextOidOffset)), try field("Latest checkpoint's NextOID"), file: file, line: line)
        let nextXid = CheckPointLayout.u64(cp, CheckPointLayout.nextXidOffset)
        XCTAssertEqual("\(nextXid >> 32):\(nextXid & 0xFFFF_FFFF)", try field("Latest checkpoint's NextXID"), file: file, line: line)
        XCTAssertEqual(String(CheckPointLayout.u32(cp, CheckPointLayout.nextMultiOffset)), try field("Latest checkpoint's NextMultiXactId"), file: file, line: line)
        XCTAssertEqual(String(CheckPointLayout.u32(cp, CheckPointLayout.oldestXidOffset)), try field("Latest checkpoint's oldestXID"), file: file, line: line)
        XCTAssertEqual(String(CheckPointLayout.u32(cp, 8)), try field("Latest checkpoint's TimeLineID"), file: file, line: line)
    }

    /// The contents of one file of a tar archive.
    static func extract(_ name: String, from tar: [UInt8]) throws -> [UInt8]? {
        final class Grab: TarEntryConsumer {
            let wanted: String
            var current = false
            var found: [UInt8]?
            init(_ wanted: String) { self.wanted = wanted }
            func begin(name: String, size: Int64, type: TarEntryType) throws {
                current = name == wanted
                if current { found = [] }
            }
            func data(_ chunk: UnsafeRawBufferPointer) throws { if current { found! += chunk } }
            func end() throws { current = false }
        }
        let grab = Grab(name)
        try TarStreamParser(consumer: grab).feed(tar)
        return grab.found
    }
}

extension DecodedRecord {
    /// The record without its bytes, images and data, to keep a long list small.
    static func summary(of r: DecodedRecord) -> DecodedRecord {
        var s = r
        s.bytes = []
        s.mainDataRange = 0..<0
        s.blocks = []
        return s
    }
}
