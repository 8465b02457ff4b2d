import Foundation
import Glibc
import PGTestSupport
import XCTest

/// Branches against real PostgreSQL: time travel (get_lsn_by_timestamp, a branch there, its
/// fullbackup booted by vanilla PostgreSQL), writable branches fed by their own primary, branches of
/// branches, a restart that resumes every stream, and the refusals.
final class BranchTests: XCTestCase {
    let tenant = randomHexId()

    var pagectl: String { TestPageServer.binary.replacingOccurrences(of: "/pageserver", with: "/pagectl") }

    func attach(_ ps: TestPageServer, _ primary: TestPrimary) throws -> String {
        if try ps.request("GET", "/v1/tenant").json.map({ "\($0)" })?.contains(tenant) != true {
            XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        }
        let id = randomHexId()
        let r = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": id, "wal_source": primary.connectionString()])
        XCTAssertEqual(r.status, 201, "attach: \(String(describing: r.json))")
        return id
    }

    func branch(_ ps: TestPageServer, from ancestor: String, at lsn: String? = nil) throws -> (id: String, object: [String: Any]) {
        let id = randomHexId()
        var body: [String: Any] = ["new_timeline_id": id, "ancestor_timeline_id": ancestor]
        if let lsn { body["ancestor_start_lsn"] = lsn }
        let r = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", body)
        XCTAssertEqual(r.status, 201, "branch: \(String(describing: r.json))")
        return (id, r.json as? [String: Any] ?? [:])
    }

    func waitForLSN(_ ps: TestPageServer, _ timeline: String, _ lsn: String) throws {
        let target = parseLSN(lsn)!
        try waitUntil("timeline \(timeline) reaches \(lsn)", timeout: 120) {
            parseLSN(try ps.timeline(tenant, timeline)["last_record_lsn"] as? String ?? "") ?? 0 >= target
        }
    }

    /// `pagectl verify` of a timeline against a (quiet) server: every page equal under masking.
    func verify(_ ps: TestPageServer, _ timeline: String, against conninfo: String, _ what: String) throws {
        let r = try TestPrimary.shell("\(pagectl) verify --server 127.0.0.1:\(ps.pgPort) --http 127.0.0.1:\(ps.httpPort) --tenant \(tenant) --timeline \(timeline) --primary '\(conninfo)' 2>&1", check: false)
        XCTAssertEqual(r.status, 0, "\(what): " + String(r.stdout.suffix(3000)))
        XCTAssertTrue(r.stdout.contains(" 0 mismatched"), "\(what): " + String(r.stdout.suffix(2000)))
    }

    func relfilenodes(_ ps: TestPageServer, _ timeline: String) throws -> Set<Int> {
        let r = try ps.request("GET", "/v1/tenant/\(tenant)/timeline/\(timeline)/relations")
        let rels = (r.json as? [String: Any])?["relations"] as? [[String: Any]] ?? []
        return Set(rels.compactMap { $0["rel"] as? Int })
    }

    func testTimeTravelBranchAtATimestampShowsDeletedRows() throws {
        let primary = try TestPrimary.start(for: self)
        let ps = try TestPageServer.start(for: self)
        let main = try attach(ps, primary)
        let bench = "pgbench -h 127.0.0.1 -p \(primary.port) -U postgres"
        try TestPrimary.shell("\(bench) -i -s 1 -q postgres")
        try TestPrimary.shell("\(bench) -t 100 -c 2 postgres")
        let before = try primary.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts")
        // Note the time after the last commit, and let the clock move past it before deleting.
        let noted = try primary.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
        try waitUntil("the primary's clock passes \(noted)", timeout: 10) {
            try primary.psql("SELECT clock_timestamp() > '\(noted)'::timestamptz + interval '20 ms'") == "t"
        }
        try primary.psql("DELETE FROM pgbench_accounts WHERE aid > 1000")
        let after = try primary.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts")
        XCTAssertTrue(after.hasPrefix("1000|"), after)
        try waitForLSN(ps, main, try primary.psql("SELECT pg_current_wal_lsn()"))

        let r = try ps.request("GET", "/v1/tenant/\(tenant)/timeline/\(main)/get_lsn_by_timestamp?timestamp=\(noted)")
        XCTAssertEqual(r.status, 200, "\(String(describing: r.json))")
        let found = r.json as? [String: Any] ?? [:]
        XCTAssertEqual(found["kind"] as? String, "present", "\(found)")
        let lsn = try XCTUnwrap(found["lsn"] as? String)
        let past = try branch(ps, from: main, at: lsn)
        XCTAssertEqual(past.object["ancestor_lsn"] as? String, lsn)
        XCTAssertEqual(past.object["ancestor_timeline_id"] as? String, main)

        let thenBooted = try BootedBackup(port: ps.pgPort, command: "fullbackup \(tenant) \(past.id)")
        defer { thenBooted.destroy() }
        XCTAssertEqual(try thenBooted.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts"), before, thenBooted.log)
        let nowBooted = try BootedBackup(port: ps.pgPort, command: "fullbackup \(tenant) \(main)")
        defer { nowBooted.destroy() }
        XCTAssertEqual(try nowBooted.psql("SELECT count(*), sum(abalance) FROM pgbench_accounts"), after, nowBooted.log)

        // Refusals: a branch point above the ancestor's last record or before its start, an unknown
        // ancestor, deleting a timeline that has children.
        let last = parseLSN(try ps.timeline(tenant, main)["last_record_lsn"] as! String)!
        let above = String(format: "%X/%X", (last + 0x1000) >> 32, (last + 0x1000) & 0xFFFF_FFFF)
        for (at, expect) in [(above, "above the last_record_lsn"), ("0/10", "before the oldest LSN")] {
            let bad = try ps.request("POST", "/v1/tenant/\(tenant)/timeline",
                                     ["new_timeline_id": randomHexId(), "ancestor_timeline_id": main, "ancestor_start_lsn": at])
            XCTAssertEqual(bad.status, 400, "\(at): \(String(describing: bad.json))")
            XCTAssertTrue("\(String(describing: bad.json))".contains(expect), "\(String(describing: bad.json))")
        }
        let unknown = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": randomHexId(), "ancestor_timeline_id": randomHexId()])
        XCTAssertEqual(unknown.status, 404, "\(String(describing: unknown.json))")
        let refused = try ps.request("DELETE", "/v1/tenant/\(tenant)/timeline/\(main)")
        XCTAssertEqual(refused.status, 409, "\(String(describing: refused.json))")
        XCTAssertTrue("\(String(describing: refused.json))".contains(past.id))

        // Deleting the child, then the parent (whose slot on the primary goes too).
        XCTAssertEqual(try ps.request("DELETE", "/v1/tenant/\(tenant)/timeline/\(past.id)").status, 200)
        XCTAssertFalse(FileManager.default.fileExists(atPath: ps.workdir + "/tenants/\(tenant)/timelines/\(past.id)"))
        XCTAssertEqual(try ps.request("GET", "/v1/tenant/\(tenant)/timeline/\(past.id)").status, 404)
        let deleted = try ps.request("DELETE", "/v1/tenant/\(tenant)/timeline/\(main)")
        XCTAssertEqual(deleted.status, 200, "\(String(describing: deleted.json))")
        XCTAssertEqual((deleted.json as? [String: Any])?["replication_slot"] as? String, "dropped")
        XCTAssertEqual(try primary.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'pageserver_\(main)'"), "0")
        XCTAssertEqual(try ps.request("GET", "/v1/status").status, 200)
    }

    func testWritableBranchesStreamTheirOwnWALAndResumeAfterRestart() throws {
        let primary = try TestPrimary.start(for: self)
        let ps = try TestPageServer.start(for: self)
        let main = try attach(ps, primary)
        let bench = "pgbench -h 127.0.0.1 -p \(primary.port) -U postgres"
        try TestPrimary.shell("\(bench) -i -s 1 -q postgres")
        try waitForLSN(ps, main, try primary.psql("SELECT pg_current_wal_lsn()"))

        // Branch B at main's latest LSN; a vanilla PostgreSQL started on its fullbackup is B's primary.
        let b = try branch(ps, from: main)
        let primaryB = try BootedBackup(port: ps.pgPort, command: "fullbackup \(tenant) \(b.id)")
        defer { primaryB.destroy() }
        try primaryB.psql("CREATE TABLE only_on_b AS SELECT g, md5(g::text) AS h FROM generate_series(1, 5000) g")
        try primaryB.psql("UPDATE pgbench_accounts SET abalance = 7 WHERE aid <= 500")
        let sourceB = "host=127.0.0.1 port=\(primaryB.port) user=postgres dbname=postgres"
        let put = try ps.request("PUT", "/v1/tenant/\(tenant)/timeline/\(b.id)/wal_source", ["wal_source": sourceB])
        XCTAssertEqual(put.status, 200, "\(String(describing: put.json))\n\(ps.log.suffix(2000))")
        try verify(ps, b.id, against: sourceB, "branch B")
        let onlyOnB = Int(try primaryB.psql("SELECT pg_relation_filenode('only_on_b')"))!
        XCTAssertTrue(try relfilenodes(ps, b.id).contains(onlyOnB))
        XCTAssertFalse(try relfilenodes(ps, main).contains(onlyOnB), "the parent must not see the branch's writes")

        // The parent keeps streaming its own primary.
        try TestPrimary.shell("\(bench) -t 100 -c 2 postgres")
        try verify(ps, main, against: primary.connectionString(), "main")

        // GC of the parent with its cutoff above the branch point keeps what B reads there.
        XCTAssertEqual(try ps.request("PUT", "/v1/tenant/\(tenant)/timeline/\(main)/compact").status, 200)
        let mainLast = try ps.timeline(tenant, main)["disk_consistent_lsn"] as! String
        let gc = try ps.request("PUT", "/v1/tenant/\(tenant)/timeline/\(main)/do_gc?cutoff=\(mainLast)")
        XCTAssertEqual(gc.status, 200, "\(String(describing: gc.json))")
        XCTAssertEqual((gc.json as? [String: Any])?["retained_lsns"] as? [String], [b.object["ancestor_lsn"] as! String], "\(String(describing: gc.json))")
        try verify(ps, b.id, against: sourceB, "branch B after GC of its parent")

        // C: a branch of B, made writable the same way.
        let c = try branch(ps, from: b.id)
        let primaryC = try BootedBackup(port: ps.pgPort, command: "fullbackup \(tenant) \(c.id)")
        defer { primaryC.destroy() }
        XCTAssertEqual(try primaryC.psql("SELECT count(*) FROM only_on_b"), "5000")
        try primaryC.psql("CREATE TABLE only_on_c (v int); INSERT INTO only_on_c SELECT generate_series(1, 3000); DELETE FROM only_on_b WHERE g % 2 = 0")
        let sourceC = "host=127.0.0.1 port=\(primaryC.port) user=postgres dbname=postgres"
        XCTAssertEqual(try ps.request("PUT", "/v1/tenant/\(tenant)/timeline/\(c.id)/wal_source", ["wal_source": sourceC]).status, 200)
        try verify(ps, c.id, against: sourceC, "branch C")
        let onlyOnC = Int(try primaryC.psql("SELECT pg_relation_filenode('only_on_c')"))!
        XCTAssertFalse(try relfilenodes(ps, b.id).contains(onlyOnC))

        // A restart resumes every stream: writes made while the page server is down arrive.
        XCTAssertEqual(ps.stop(), 0)
        try primaryB.psql("INSERT INTO only_on_b SELECT g, 'after restart' FROM generate_series(5001, 6000) g")
        try primaryC.psql("INSERT INTO only_on_c SELECT generate_series(3001, 4000)")
        try TestPrimary.shell("\(bench) -t 50 -c 2 postgres")
        try ps.start()
        try verify(ps, b.id, against: sourceB, "branch B after the restart")
        try verify(ps, c.id, against: sourceC, "branch C after the restart")
        try verify(ps, main, against: primary.connectionString(), "main after the restart")
        let timelines = try ps.request("GET", "/v1/tenant/\(tenant)/timeline").json as? [[String: Any]] ?? []
        XCTAssertEqual(Set(timelines.compactMap { $0["state"] as? String }), ["Active"], "\(timelines)")
    }
}
