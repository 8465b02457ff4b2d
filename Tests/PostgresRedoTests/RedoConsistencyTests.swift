import Foundation
import LSM
import PGTestSupport
import PostgresRedo
import PostgresWAL
import XCTest

/// Our redo against a real PostgreSQL 15 primary, record by record: the primary runs with
/// `wal_consistency_checking = all`, so every block reference in its WAL carries the page as the
/// record left it. After each workload the whole pg_wal is replayed through ingest and native redo,
/// and every such page is compared under PostgreSQL's masking (`WALDirectoryCheck`, `RedoVerifier`).
///
/// Shortened for `make test`; `REDO_FULL=1 swift test --filter RedoConsistencyTests` runs the full
/// lengths of the issue (pgbench -s 10, -T 60).
final class RedoConsistencyTests: XCTestCase {
    private var full: Bool { ProcessInfo.processInfo.environment["REDO_FULL"] == "1" }

    private func run(checksums: Bool, _ workload: (TestPrimary) throws -> Void) throws -> WALDirectoryCheck.Result {
        let primary = try TestPrimary.start(for: self, settings: [
            "wal_consistency_checking = all", "max_wal_size = 20GB", "wal_keep_size = 20GB", "checkpoint_timeout = 1h",
            "max_prepared_transactions = 10", "autovacuum = off",
        ], initdbOptions: checksums ? ["-k"] : [])
        // A base backup first, as the daemon's attach takes one: replay starts from it.
        let backup = primary.directory + "/backup"
        try primary.asPostgres("\(TestPrimary.binDirectory)/pg_basebackup -h \(primary.directory) -p \(primary.port) -U postgres -D \(backup) -Ft -X none -c fast")
        try workload(primary)
        try primary.stop()
        let scratch = NSTemporaryDirectory() + "redo-check-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let result = try WALDirectoryCheck.run(walDirectory: primary.dataDirectory + "/pg_wal", storeDirectory: scratch,
                                               settings: RedoSettings(dataChecksums: checksums), baseBackup: backup + "/base.tar")
        print("checksums \(checksums ? "on" : "off"): \(result.records) records replayed\n\(result.verifier.report())")
        for m in result.verifier.mismatches.prefix(20) { print("MISMATCH \(m)") }
        let t = result.verifier.totals
        XCTAssertEqual(t.mismatched, 0, "pages that differ from the primary's")
        XCTAssertEqual(t.failed, 0, "pages that could not be built")
        XCTAssertGreaterThan(t.checked, 0)
        XCTAssertEqual(t.unverifiable, 0, "pages without a known history despite the base backup")
        return result
    }

    private func pgbench(_ primary: TestPrimary, _ args: String) throws {
        try primary.asPostgres("\(TestPrimary.binDirectory)/pgbench -h \(primary.directory) -p \(primary.port) -U postgres \(args) postgres")
    }

    /// Runs a SQL script with psql -f: statement by statement, so VACUUM and CREATE DATABASE work.
    private func sqlScript(_ p: TestPrimary, _ sql: String) throws {
        let path = p.directory + "/script-\(UUID().uuidString.prefix(8)).sql"
        try sql.write(toFile: path, atomically: true, encoding: .utf8)
        try TestPrimary.shell("chown postgres: \(path)")
        try p.asPostgres("\(TestPrimary.binDirectory)/psql -X -q -v ON_ERROR_STOP=1 -h \(p.directory) -p \(p.port) -U postgres -d postgres -f \(path)")
    }

    /// The workloads of the issue, in one cluster.
    private func workload(_ p: TestPrimary) throws {
        try pgbench(p, "-i -q -s \(full ? 10 : 1)")
        try pgbench(p, full ? "-c 4 -j 2 -T 60" : "-c 4 -j 2 -t 250")
        try sqlScript(p, """
            CREATE TABLE churn (id int PRIMARY KEY, grp int, note text, pad text);
            CREATE INDEX churn_grp ON churn (grp);
            INSERT INTO churn SELECT g, g % 50, 'n' || g, repeat('p', 60) FROM generate_series(1, 20000) g;
            UPDATE churn SET note = note || 'h' WHERE id % 3 = 0;
            UPDATE churn SET grp = grp + 1 WHERE id % 7 = 0;
            UPDATE churn SET pad = repeat('q', 200) WHERE id % 11 = 0;
            DELETE FROM churn WHERE id > 4000 AND id <= 16000;
            VACUUM churn;
            VACUUM FREEZE churn;
            CREATE TABLE words (id serial, w text);
            INSERT INTO words (w) SELECT (ARRAY['alpha','beta','gamma','delta'])[1 + g % 4] FROM generate_series(1, 20000) g;
            CREATE INDEX words_w ON words (w);
            INSERT INTO words (w) SELECT (ARRAY['alpha','beta','epsilon'])[1 + g % 3] FROM generate_series(1, 5000) g;
            DELETE FROM words WHERE id % 5 = 0;
            VACUUM words;
            CREATE TABLE docs (id int, body text);
            INSERT INTO docs SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 300) i) FROM generate_series(1, 40) g;
            CREATE TABLE copied (a int, b text);
            COPY copied FROM PROGRAM 'seq 1 30000 | sed "s/$/\\tvalue/"';
            CREATE SEQUENCE s1;
            SELECT nextval('s1') FROM generate_series(1, 200);
            BEGIN; INSERT INTO churn VALUES (100001, 1, 'a', 'b'); SAVEPOINT sp; INSERT INTO churn VALUES (100002, 1, 'a', 'b'); ROLLBACK TO sp; INSERT INTO churn VALUES (100003, 1, 'a', 'b'); COMMIT;
            BEGIN; UPDATE churn SET note = 'rolled back' WHERE id < 100; ROLLBACK;
            BEGIN; INSERT INTO churn VALUES (100004, 2, 'prepared', 'x'); PREPARE TRANSACTION 'p1';
            COMMIT PREPARED 'p1';
            CREATE TABLE parent (id int PRIMARY KEY);
            CREATE TABLE child (id int, parent_id int REFERENCES parent);
            INSERT INTO parent SELECT generate_series(1, 100);
            """)
        // Concurrent key-share locks on the same rows: multixacts.
        try p.asPostgres("bash -c " + TestPrimary.shellQuote("""
            for i in 1 2 3 4; do \(TestPrimary.binDirectory)/psql -X -q -h \(p.directory) -p \(p.port) -U postgres -d postgres \
              -c "BEGIN; SELECT * FROM parent WHERE id <= 50 FOR SHARE; INSERT INTO child SELECT g, 1 + g % 50 FROM generate_series(1, 200) g; SELECT pg_sleep(0.3); COMMIT;" & done; wait
            """))
        try sqlScript(p, """
            TRUNCATE copied;
            DROP TABLE docs;
            ALTER TABLE words ALTER COLUMN id TYPE bigint;
            CLUSTER churn USING churn_pkey;
            VACUUM FULL pgbench_branches;
            REINDEX TABLE pgbench_tellers;
            CREATE DATABASE db_wal_log STRATEGY = WAL_LOG;
            CREATE DATABASE db_file_copy STRATEGY = FILE_COPY;
            DROP DATABASE db_wal_log;
            """)
    }

    func testWorkloadsChecksumsOff() throws {
        let r = try run(checksums: false, workload)
        assertCoverage(r)
    }

    func testWorkloadsChecksumsOn() throws {
        let r = try run(checksums: true, workload)
        assertCoverage(r)
    }

    /// Hash and GIN pages fail with an error naming the resource manager; everything else verifies.
    func testUnsupportedIndexesFailClearly() throws {
        let r = try run(checksums: false) { p in
            try self.sqlScript(p, """
                CREATE TABLE h (id int, tags int[]);
                INSERT INTO h SELECT g, ARRAY[g % 10, g % 7] FROM generate_series(1, 2000) g;
                CREATE INDEX h_hash ON h USING hash (id);
                CREATE INDEX h_gin ON h USING gin (tags);
                INSERT INTO h SELECT g, ARRAY[g % 5] FROM generate_series(2001, 3000) g;
                """)
        }
        let unsupported = r.verifier.counts.filter { $0.value.unsupported > 0 }.map(\.key)
        XCTAssertTrue(unsupported.contains { $0.hasPrefix("Hash/") }, "hash records should be unsupported: \(unsupported)")
        XCTAssertTrue(unsupported.contains { $0.hasPrefix("Gin/") }, "GIN records should be unsupported: \(unsupported)")
    }

    /// The record types the issue names were all seen and checked, none left unsupported.
    private func assertCoverage(_ r: WALDirectoryCheck.Result) {
        let counts = r.verifier.counts
        for (name, c) in counts where name.hasPrefix("Heap") || name.hasPrefix("Btree") || name.hasPrefix("Sequence") {
            XCTAssertEqual(c.unsupported, 0, "\(name) records are not replayed")
        }
        for expected in ["Heap/INSERT", "Heap/HOT_UPDATE", "Heap/UPDATE", "Heap/DELETE", "Heap/LOCK", "Heap2/PRUNE",
                         "Heap2/VACUUM", "Heap2/VISIBLE", "Heap2/MULTI_INSERT", "Btree/INSERT_LEAF", "Btree/SPLIT_R",
                         "Btree/VACUUM", "Btree/DEDUP", "Sequence/LOG"] {
            XCTAssertTrue(counts.keys.contains { $0 == expected || $0.hasPrefix(expected + "+") },
                          "no \(expected) record was checked; seen: \(counts.keys.sorted())")
        }
    }
}
