import Foundation
import Glibc
import PGTestSupport
import XCTest

/// The daemon's redo against a primary with `wal_consistency_checking = all`: the built-in checker
/// (`verify_redo = true`) finds no mismatch, and `pagectl verify` finds every page equal to the
/// quiet primary's under masking.
final class RedoVerificationTests: XCTestCase {
    static var pagectl: String {
        if let b = ProcessInfo.processInfo.environment["PAGECTL_BIN"] { return b }
        return (TestPageServer.binary as NSString).deletingLastPathComponent + "/pagectl"
    }

    func testVerifyRedoAndPagectlVerify() throws {
        let primary = try TestPrimary.start(for: self, settings: ["wal_consistency_checking = all"])
        let ps = try TestPageServer.start(for: self, config: "verify_redo = true\n")
        let tenant = randomHexId()
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        let timeline = randomHexId()
        let r = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": timeline, "wal_source": primary.connectionString()])
        XCTAssertEqual(r.status, 201, "attach: \(String(describing: r.json))\n\(ps.log.suffix(3000))")
        try TestPrimary.shell("pgbench -h 127.0.0.1 -p \(primary.port) -U postgres -i -s 1 -q postgres")
        try TestPrimary.shell("pgbench -h 127.0.0.1 -p \(primary.port) -U postgres -c 2 -j 2 -T 5 postgres")
        for sql in ["CREATE TABLE words (id serial PRIMARY KEY, w text)",
                    "INSERT INTO words (w) SELECT (ARRAY['a','b','c'])[1 + g % 3] FROM generate_series(1, 20000) g",
                    "CREATE INDEX words_w ON words (w)",
                    "DELETE FROM words WHERE id % 4 = 0", "VACUUM words",
                    "CREATE SEQUENCE s1", "SELECT nextval('s1') FROM generate_series(1, 100)"] {
            try primary.psql(sql)
        }
        try primary.psql("CHECKPOINT")
        let target = parseLSN(try primary.psql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the timeline reaches the primary's WAL position", timeout: 300) {
            let t = try ps.timeline(tenant, timeline)
            if t["state"] as? String == "Broken" { throw TestPrimary.CommandFailure(description: "timeline broke: \(t["broken_reason"] ?? "")") }
            return parseLSN(t["last_record_lsn"] as? String ?? "") ?? 0 >= target
        }
        let report = try ps.request("GET", "/v1/tenant/\(tenant)/timeline/\(timeline)/redo_verification?wait=300", timeout: 330)
        XCTAssertEqual(report.status, 200)
        let o = report.json as? [String: Any] ?? [:]
        print("verify_redo report: checked \(o["checked"] ?? "?"), matched \(o["matched"] ?? "?"), mismatched \(o["mismatched"] ?? "?"), failed \(o["failed"] ?? "?"), skipped \(o["skipped"] ?? "?")")
        XCTAssertEqual(o["mismatched"] as? Int, 0, "\(o["mismatches"] ?? "")")
        XCTAssertEqual(o["failed"] as? Int, 0, "\(o["mismatches"] ?? "")")
        XCTAssertGreaterThan(o["checked"] as? Int ?? 0, 1000)
        let metrics = String(data: try Data(contentsOf: URL(string: ps.baseURL + "/metrics")!), encoding: .utf8) ?? ""
        XCTAssertTrue(metrics.contains("pageserver_redo_verify_checked_total"), metrics)

        let out = try TestPrimary.shell("\(Self.pagectl) verify --http 127.0.0.1:\(ps.httpPort) --tenant \(tenant) --timeline \(timeline) --primary \(TestPrimary.shellQuote(primary.connectionString()))", check: false)
        print(out.stdout)
        XCTAssertEqual(out.status, 0, "pagectl verify: \(out.stdout)\n\(out.stderr)")
        XCTAssertTrue(out.stdout.contains("0 mismatched"), out.stdout)
    }
}
