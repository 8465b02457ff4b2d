import Foundation
import LSM
import PGTestSupport
@testable import PostgresBackup
import PostgresRedo
import PostgresWAL
import XCTest

/// fullbackup / basebackup tars against real PostgreSQL 15: tar, pg_controldata and pg_waldump read
/// what the backup writes, and a server started on an unpacked backup shows the database exactly as
/// the primary had it at the backup's LSN.
final class BackupTests: XCTestCase {
    // MARK: - Pure: where the checkpoint record goes

    func testCheckpointLocation() {
        let seg = 16 << 20
        func p(_ x: UInt64) -> UInt64 { ShutdownCheckpoint.recordLocation(after: LSN(x), segmentSize: seg).rawValue }
        XCTAssertEqual(p(0x1000_0000 + 8192 * 3 + 100), 0x1000_0000 + 8192 * 3 + 104, "rounded up to 8")
        XCTAssertEqual(p(0x1000_0000 + 8192 * 3 + 24), 0x1000_0000 + 8192 * 3 + 24, "just after a short header")
        XCTAssertEqual(p(0x1000_0000 + 8192 * 3), 0x1000_0000 + 8192 * 3 + 24, "at a page start: past the short header")
        XCTAssertEqual(p(0x1000_0000 + 8192 * 3 + 5), 0x1000_0000 + 8192 * 3 + 24, "inside a short header")
        XCTAssertEqual(p(0x1000_0000), 0x1000_0000 + 40, "at a segment start: past the long header")
        XCTAssertEqual(p(0x1000_0000 + 30), 0x1000_0000 + 40, "inside a long header")
        XCTAssertEqual(p(0x1000_0000 + 8192 - 48), 0x1000_0000 + 8192 - 48, "a record crossing a page stays")
        XCTAssertEqual(p(0x1000_0000 + UInt64(seg) - 48), 0x1000_0000 + UInt64(seg) + 40, "a record crossing a segment moves")
        XCTAssertEqual(p(0x1000_0000 + UInt64(seg) - 120), 0x1000_0000 + UInt64(seg) - 120, "a record ending in its segment stays")
    }

    // MARK: - Formats, checked by PostgreSQL's tools

    /// tar -tvf lists the entries with their modes and sizes; pg_controldata and pg_waldump read the
    /// made-up pg_control and checkpoint, also when the record crosses a page boundary; a backup
    /// before the base backup fails clearly.
    func testTarControlFileAndWALFormats() throws {
        let primary = try TestPrimary.start(for: self, settings: ["max_wal_size = 4GB", "wal_keep_size = 4GB", "checkpoint_timeout = 1h", "autovacuum = off"])
        let backupDir = primary.directory + "/basebackup"
        try primary.asPostgres("\(TestPrimary.binDirectory)/pg_basebackup -h \(primary.directory) -p \(primary.port) -U postgres -D \(backupDir) -Ft -X none -c fast")
        try primary.psql("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g")
        try primary.stop()
        let timeline = try ReplayedTimeline(baseTar: backupDir + "/base.tar", walDirectory: primary.dataDirectory + "/pg_wal")
        let work = primary.directory + "/out"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: true)

        // At the end of WAL, and at an LSN whose record crosses into the next page.
        let pageEnd = (timeline.lastRecordEnd.rawValue / 8192 + 2) * 8192
        for (i, x) in [timeline.lastRecordEnd, LSN(pageEnd - 48)].enumerated() {
            let tar = work + "/full-\(i).tar"
            try writeBackup(DataDirectoryBackup(source: timeline.source, lsn: x, kind: .full), to: tar)
            let p = ShutdownCheckpoint.recordLocation(after: x, segmentSize: 16 << 20)
            let listing = try TestPrimary.shell("tar -tvf \(tar)").stdout
            let lines = listing.split(separator: "\n")
            XCTAssertTrue(lines.contains { $0.hasPrefix("drwx------") && $0.hasSuffix(" pg_wal/archive_status/") }, listing)
            XCTAssertTrue(lines.contains { $0.hasPrefix("-rw-------") && $0.contains(" 8192 ") && $0.hasSuffix(" global/pg_control") })
            XCTAssertTrue(lines.contains { $0.hasPrefix("-rw-------") && $0.contains(" 16777216 ") && $0.contains(" pg_wal/00000001") })
            XCTAssertTrue(lines.contains { $0.hasSuffix(" PG_VERSION") })
            XCTAssertTrue(lines.contains { $0.hasSuffix(" base/5/PG_VERSION") })
            XCTAssertTrue(lines.contains { $0.hasSuffix(" global/pg_filenode.map") })
            XCTAssertTrue(lines.contains { $0.hasSuffix(" pg_xact/0000") })
            XCTAssertFalse(lines.contains { !$0.hasPrefix("drwx------") && !$0.hasPrefix("-rw-------") }, listing)
            // pg_class's main fork (relfilenode 1259 in a fresh cluster): whole pages.
            XCTAssertTrue(lines.contains { $0.hasSuffix(" base/5/1259") && !$0.contains(" 0 ") })

            let restored = try RestoredServer(tar: tar)
            defer { restored.destroy() }
            let control = try TestPrimary.shell("\(TestPrimary.binDirectory)/pg_controldata \(restored.dataDirectory)").stdout
            XCTAssertTrue(control.contains("Database cluster state:               shut down"), control)
            XCTAssertTrue(control.contains("Latest checkpoint location:           \(p)\n"), control)
            XCTAssertTrue(control.contains("Latest checkpoint's REDO location:    \(p)\n"), control)
            let dump = try TestPrimary.shell("\(TestPrimary.binDirectory)/pg_waldump -p \(restored.dataDirectory)/pg_wal -s \(p) -n 1").stdout
            XCTAssertTrue(dump.contains("CHECKPOINT_SHUTDOWN redo \(p)"), dump)
            let padded = String(p.rawValue >> 32, radix: 16, uppercase: true) + "/" + String(format: "%08X", UInt32(truncatingIfNeeded: p.rawValue))
            XCTAssertTrue(dump.contains("lsn: \(padded),"), dump)
            try restored.start()
            XCTAssertEqual(try restored.psql("SELECT count(*), sum(id) FROM t"), "1000|500500", restored.serverLog)
        }

        // Before the base backup there is no pg_control: a clear error.
        XCTAssertThrowsError(try writeBackup(DataDirectoryBackup(source: timeline.source, lsn: LSN(timeline.baseBackupLSN.rawValue - 8), kind: .full), to: work + "/none.tar")) { e in
            XCTAssertTrue("\(e)".contains("no pg_control"), "\(e)")
        }
    }

    /// The base kind leaves out main, FSM and VM data but keeps everything else.
    func testBaseKindOmitsRelationData() throws {
        let primary = try TestPrimary.start(for: self, settings: ["wal_keep_size = 4GB", "autovacuum = off"])
        let backupDir = primary.directory + "/basebackup"
        try primary.asPostgres("\(TestPrimary.binDirectory)/pg_basebackup -h \(primary.directory) -p \(primary.port) -U postgres -D \(backupDir) -Ft -X none -c fast")
        try primary.psql("CREATE UNLOGGED TABLE u (id int PRIMARY KEY)")
        try primary.stop()
        let timeline = try ReplayedTimeline(baseTar: backupDir + "/base.tar", walDirectory: primary.dataDirectory + "/pg_wal")
        let tar = primary.directory + "/base-kind.tar"
        try writeBackup(DataDirectoryBackup(source: timeline.source, lsn: timeline.lastRecordEnd, kind: .base), to: tar)
        let names = try TestPrimary.shell("tar -tf \(tar)").stdout.split(separator: "\n").map(String.init)
        XCTAssertTrue(names.contains("global/pg_control"))
        XCTAssertTrue(names.contains("base/5/PG_VERSION"))
        XCTAssertFalse(names.contains("base/5/1259"), "pg_class data is left out")
        let initForks = names.filter { $0.hasSuffix("_init") }
        XCTAssertEqual(initForks.count, 2, "the table's and its index's init forks: \(initForks)")
        for f in initForks { XCTAssertTrue(names.contains(String(f.dropLast(5))), "main fork copied from \(f)") }

        // A read error fails the backup, naming what could not be read.
        let failing = FailingSource(inner: timeline.source) { $0.field1 == 0 && $0.field4 == 1259 && $0.field6 == 0 }
        XCTAssertThrowsError(try writeBackup(DataDirectoryBackup(source: failing, lsn: timeline.lastRecordEnd, kind: .full), to: tar)) { e in
            XCTAssertTrue("\(e)".contains("blocks 0..<") && "\(e)".contains("injected"), "\(e)")
        }
    }
}

/// A real source whose reads of some keys fail (as a damaged layer file would).
struct FailingSource: BackupSource {
    let inner: any BackupSource
    let fails: (Key) -> Bool

    func get(_ keys: [Key], at lsn: LSN) throws -> [[UInt8]?] {
        if let k = keys.first(where: fails) { throw StorageError(.corruption, "injected read failure of \(k)") }
        return try inner.get(keys, at: lsn)
    }
}
