import Foundation
import LSM
import PGTestSupport
import PostgresBackup
import PostgresRedo
import PostgresWAL
import XCTest

/// A workload on a real primary, then full backups at three LSNs of its WAL (replayed into a scratch
/// store): PostgreSQL starts on each, shows exactly what the primary showed at that LSN, and accepts
/// writes.
final class BackupIntegrationTests: XCTestCase {
    /// What the queries returned on the primary at one LSN.
    struct Snapshot {
        var lsn: LSN
        var results: [String: String]
        var dropmeExists: Bool
        var xid: UInt64
    }

    /// name -> (database, query). Every query orders what it hashes.
    static let queries: [String: (String, String)] = [
        "accounts": ("postgres", "SELECT count(*), sum(abalance) FROM pgbench_accounts"),
        "tellers": ("postgres", "SELECT md5(string_agg(t::text, ',' ORDER BY tid)) FROM pgbench_tellers t"),
        "branches": ("postgres", "SELECT md5(string_agg(b::text, ',' ORDER BY bid)) FROM pgbench_branches b"),
        "history": ("postgres", "SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history"),
        "items": ("postgres", "SELECT count(*), md5(string_agg(i::text, ',' ORDER BY id)) FROM items i"),
        "spaced": ("postgres", "SELECT count(*), sum(n) FROM spaced"),
        "otherdb": ("other", "SELECT count(*), md5(string_agg(o::text, ',' ORDER BY k)) FROM o_table o"),
    ]

    func testFullBackupsAtThreeLSNs() throws {
        let started = Date()
        let primary = try TestPrimary.start(for: self, settings: [
            "max_wal_size = 20GB", "wal_keep_size = 20GB", "checkpoint_timeout = 1h", "autovacuum = off",
            "max_prepared_transactions = 5",
        ])
        let backupDir = primary.directory + "/basebackup"
        try primary.asPostgres("\(TestPrimary.binDirectory)/pg_basebackup -h \(primary.directory) -p \(primary.port) -U postgres -D \(backupDir) -Ft -X none -c fast")
        let tablespaceDir = primary.directory + "/tablespace"
        try TestPrimary.shell("mkdir -p \(tablespaceDir) && chown postgres: \(tablespaceDir)")

        try pgbench(primary, "-i -q -s 1")
        try primary.psql("CREATE TABLESPACE ts LOCATION '\(tablespaceDir)'")
        try primary.psql("CREATE DATABASE other")
        try psql(primary, "other", "CREATE TABLE o_table (k int PRIMARY KEY, v text); INSERT INTO o_table SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        try primary.psql("""
            CREATE TABLE items (id int PRIMARY KEY, name text, qty int);
            INSERT INTO items SELECT g, 'item ' || g, g % 17 FROM generate_series(1, 5000) g;
            CREATE TABLE dropme (id int, pad text);
            INSERT INTO dropme SELECT g, repeat('x', 100) FROM generate_series(1, 3000) g;
            CREATE TABLE spaced (n int) TABLESPACE ts;
            INSERT INTO spaced SELECT generate_series(1, 2000);
            CREATE UNLOGGED TABLE scratch (id int PRIMARY KEY);
            INSERT INTO scratch SELECT generate_series(1, 100);
            """)
        try pgbench(primary, "-c 2 -j 2 -t 200")
        try primary.psql("UPDATE items SET qty = qty + 1 WHERE id % 3 = 0; DELETE FROM items WHERE id % 10 = 0")
        // Concurrent share locks on the same rows: multixacts (a start needs nextMulti right).
        try shareLockConcurrently(directory: primary.directory, port: primary.port, sessions: 3)
        // A transaction left prepared across LSN1 and LSN2, committed before LSN3.
        try primary.psql("BEGIN; INSERT INTO items VALUES (77777, 'prepared', 1); PREPARE TRANSACTION 'p1'")
        let s1 = try snapshot(primary)

        try primary.psql("DROP TABLE dropme")
        try primary.psql("INSERT INTO items SELECT g, 'late ' || g, 1 FROM generate_series(10001, 10500) g")
        let s2 = try snapshot(primary)

        try pgbench(primary, "-c 2 -j 2 -t 200")
        try primary.psql("COMMIT PREPARED 'p1'")
        try primary.psql("UPDATE items SET name = name || '!' WHERE id < 1000")
        try primary.psql("VACUUM items")
        try psql(primary, "other", "DELETE FROM o_table WHERE k > 400")
        let s3 = try snapshot(primary)
        XCTAssertNotEqual(s1.results, s3.results)
        try primary.stop()

        let timeline = try ReplayedTimeline(baseTar: backupDir + "/base.tar", walDirectory: primary.dataDirectory + "/pg_wal")
        print("replayed \(timeline.baseBackupLSN)..\(timeline.lastRecordEnd) in \(Int(Date().timeIntervalSince(started)))s")
        XCTAssertGreaterThanOrEqual(timeline.lastRecordEnd, s3.lsn)
        let checkpointAtLSN1 = try XCTUnwrap(timeline.source.get([KeySpace.checkpoint], at: s1.lsn)[0])
        XCTAssertGreaterThan(CheckPointLayout.u32(checkpointAtLSN1, CheckPointLayout.nextMultiOffset), 1, "multixacts were made before LSN1")

        for (i, s) in [s1, s2, s3].enumerated() {
            let tar = primary.directory + "/full-\(i + 1).tar"
            let t0 = Date()
            try writeBackup(DataDirectoryBackup(source: timeline.source, lsn: s.lsn, kind: .full), to: tar)
            let restored = try RestoredServer(tar: tar)
            defer { restored.destroy() }
            do { try restored.start() } catch { XCTFail("LSN\(i + 1) \(s.lsn): \(error)\n\(restored.serverLog)"); continue }
            for (name, (db, sql)) in Self.queries {
                XCTAssertEqual(try restored.psql(sql, database: db), s.results[name], "LSN\(i + 1) \(s.lsn): \(name)")
            }
            XCTAssertEqual(try restored.psql("SELECT to_regclass('dropme') IS NOT NULL") == "t", s.dropmeExists, "LSN\(i + 1): dropme")
            if s.dropmeExists {
                XCTAssertEqual(try restored.psql("SELECT count(*) FROM dropme"), "3000")
            }
            let prepared = try restored.psql("SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'p1'")
            XCTAssertEqual(prepared, i < 2 ? "1" : "0", "LSN\(i + 1): p1 prepared")
            if prepared == "1" {
                try restored.psql("COMMIT PREPARED 'p1'")
                XCTAssertEqual(try restored.psql("SELECT name FROM items WHERE id = 77777"), "prepared")
            }
            // New multixacts: two sessions share-lock the same rows.
            try shareLockConcurrently(directory: restored.directory, port: restored.port, sessions: 2)
            // Writes work, with xids past every one the primary used before the LSN.
            let xid = UInt64(try restored.psql("SELECT txid_current()")) ?? 0
            XCTAssertGreaterThan(xid, s.xid, "LSN\(i + 1): a new xid")
            XCTAssertEqual(try restored.psql("INSERT INTO items VALUES (99999, 'restored', 7) RETURNING name"), "restored")
            XCTAssertEqual(try restored.psql("SELECT qty FROM items WHERE id = 99999"), "7")
            XCTAssertEqual(try restored.psql("INSERT INTO scratch VALUES (1); SELECT count(*) FROM scratch"), "1", "unlogged table empty and writable")
            XCTAssertEqual(try restored.psql("INSERT INTO spaced VALUES (-1); SELECT count(*) FROM spaced WHERE n = -1"), "1")
            try restored.stop()
            print("LSN\(i + 1) \(s.lsn): backup, start, checks in \(String(format: "%.1f", Date().timeIntervalSince(t0)))s")
        }
        print("total \(Int(Date().timeIntervalSince(started)))s")
    }

    private func snapshot(_ p: TestPrimary) throws -> Snapshot {
        // An xid of its own, so the snapshot knows the newest xid used before its LSN.
        let xid = UInt64(try p.psql("SELECT txid_current()")) ?? 0
        var results: [String: String] = [:]
        for (name, (db, sql)) in Self.queries { results[name] = try psql(p, db, sql) }
        let exists = try p.psql("SELECT to_regclass('dropme') IS NOT NULL") == "t"
        let lsn = LSN(parsing: try p.psql("SELECT pg_current_wal_insert_lsn()"))!
        return Snapshot(lsn: lsn, results: results, dropmeExists: exists, xid: xid)
    }

    @discardableResult
    private func psql(_ p: TestPrimary, _ db: String, _ sql: String) throws -> String {
        let out = try p.asPostgres("psql -X -q -At -v ON_ERROR_STOP=1 -h \(p.directory) -p \(p.port) -U postgres -d \(db) -c \(TestPrimary.shellQuote(sql))").stdout
        return out.hasSuffix("\n") ? String(out.dropLast()) : out
    }

    /// `sessions` psql sessions share-locking items 1..50 at the same time (so multixacts are made).
    private func shareLockConcurrently(directory: String, port: Int, sessions: Int) throws {
        let session = "\(TestPrimary.binDirectory)/psql -X -q -h \(directory) -p \(port) -U postgres -d postgres"
            + " -c 'BEGIN; SELECT * FROM items WHERE id <= 50 FOR SHARE; SELECT pg_sleep(0.3); COMMIT;' >/dev/null"
        let script = "for i in $(seq \(sessions)); do \(session) & done; wait"
        try TestPrimary.shell("cd \(directory) && runuser -u postgres -- bash -c \(TestPrimary.shellQuote(script))")
    }

    private func pgbench(_ p: TestPrimary, _ args: String) throws {
        try p.asPostgres("\(TestPrimary.binDirectory)/pgbench -h \(p.directory) -p \(p.port) -U postgres \(args) postgres")
    }
}
