import Foundation
import Glibc
import PGTestSupport
import XCTest

/// The daemon against a real PostgreSQL 15 primary: attach, stream, restart, kill.
final class AttachTests: XCTestCase {
    let tenant = randomHexId()

    func primarySizes(_ primary: TestPrimary) throws -> [String: Int] { try primaryRelationSizes(primary) }

    func pageServerSizes(_ ps: TestPageServer, _ timeline: String) throws -> [String: Int] {
        let r = try ps.request("GET", "/v1/tenant/\(tenant)/timeline/\(timeline)/relations")
        XCTAssertEqual(r.status, 200)
        var sizes: [String: Int] = [:]
        for rel in (r.json as? [String: Any])?["relations"] as? [[String: Any]] ?? [] {
            let key = "\(rel["spc"]!)/\(rel["db"]!)/\(rel["rel"]!)/\(rel["fork"]!)"
            if rel["fork"] as? Int == 1 { continue }
            sizes[key] = rel["nblocks"] as? Int
        }
        return sizes
    }

    /// CHECKPOINT on the primary (so dropped relations' files are gone), then waits until the page
    /// server has ingested everything up to the primary's current WAL position.
    func catchUp(_ primary: TestPrimary, _ ps: TestPageServer, _ timeline: String, timeout: Double = 120) throws {
        try primary.psql("CHECKPOINT")
        let target = parseLSN(try primary.psql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("last_record_lsn reaches the primary's \(try primary.psql("SELECT pg_current_wal_lsn()"))", timeout: timeout) {
            let t = try ps.timeline(tenant, timeline)
            if t["state"] as? String == "Broken" { throw TestPrimary.CommandFailure(description: "timeline broke: \(t["broken_reason"] ?? "")") }
            return parseLSN(t["last_record_lsn"] as? String ?? "") ?? 0 >= target
        }
    }

    func assertSizesEqual(_ primary: TestPrimary, _ ps: TestPageServer, _ timeline: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let expected = try primarySizes(primary)
        let actual = try pageServerSizes(ps, timeline)
        var problems: [String] = []
        for (k, v) in expected.sorted(by: { $0.key < $1.key }) where actual[k] != v {
            problems.append("\(k): primary \(v) blocks, page server \(actual[k].map(String.init) ?? "missing")")
        }
        for k in Set(actual.keys).subtracting(expected.keys).sorted() where actual[k] != 0 {
            problems.append("\(k): page server has \(actual[k]!) blocks, the primary has no file")
        }
        XCTAssertTrue(problems.isEmpty, "\(problems.count) relation sizes differ (of \(expected.count)):\n" + problems.prefix(30).joined(separator: "\n"), file: file, line: line)
        XCTAssertGreaterThan(expected.count, 100, file: file, line: line)
    }

    func attach(_ ps: TestPageServer, _ timeline: String, _ conninfo: String) throws -> (status: Int, json: Any?) {
        try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": timeline, "wal_source": conninfo])
    }

    func pgbench(_ primary: TestPrimary, _ args: String) throws {
        try TestPrimary.shell("pgbench -h 127.0.0.1 -p \(primary.port) -U postgres \(args) postgres")
    }

    // MARK: - Tests

    func testAttachStreamPgbenchAndRelationSizes() throws {
        let primary = try TestPrimary.start(for: self)
        try primary.psql("CREATE TABLE before_attach (id int primary key, v text); INSERT INTO before_attach SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g")
        let ps = try TestPageServer.start(for: self)
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        let timeline = randomHexId()
        let r = try attach(ps, timeline, primary.connectionString())
        XCTAssertEqual(r.status, 201, "attach: \(String(describing: r.json))\n\(ps.log.suffix(3000))")
        let slot = try primary.psql("SELECT slot_name FROM pg_replication_slots")
        XCTAssertEqual(slot, "pageserver_\(timeline)")
        try pgbench(primary, "-i -s 2 -q")
        try pgbench(primary, "-c 2 -j 2 -T 8")
        for sql in ["CREATE TABLE t2 AS SELECT * FROM before_attach", "DELETE FROM before_attach WHERE id % 3 = 0",
                    "VACUUM before_attach", "TRUNCATE t2", "DROP TABLE t2"] {
            try primary.psql(sql)
        }
        try catchUp(primary, ps, timeline)
        try assertSizesEqual(primary, ps, timeline)
        // The slot's flush position follows disk_consistent_lsn after a checkpoint of the timeline.
        let cp = try ps.request("PUT", "/v1/tenant/\(tenant)/timeline/\(timeline)/checkpoint")
        XCTAssertEqual(cp.status, 200)
        let dcl = parseLSN((cp.json as? [String: Any])?["disk_consistent_lsn"] as? String ?? "")!
        try waitUntil("the slot's restart_lsn reaches disk_consistent_lsn", timeout: 30) {
            (parseLSN(try primary.psql("SELECT restart_lsn FROM pg_replication_slots")) ?? 0) >= dcl
        }
        let metrics = String(data: try Data(contentsOf: URL(string: ps.baseURL + "/metrics")!), encoding: .utf8) ?? ""
        XCTAssertTrue(metrics.contains("pageserver_wal_records_ingested_total"), metrics)
        XCTAssertTrue(metrics.contains("rmgr=\"Heap\""), metrics)
        let layers = try ps.request("GET", "/v1/tenant/\(tenant)/timeline/\(timeline)/layer")
        XCTAssertGreaterThan((layers.json as? [String: Any])?["count"] as? Int ?? 0, 0)
    }

    func testAuthenticationMethodsAndWrongPassword() throws {
        let primary = try TestPrimary.start(for: self, roles: [
            .init(name: "u_scram", password: "s3cret scram", method: .scram),
            .init(name: "u_md5", password: "md5 pass", method: .md5),
            .init(name: "u_plain", password: "plain'pass", method: .password),
        ])
        let ps = try TestPageServer.start(for: self)
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        for (user, password) in [("u_scram", "s3cret scram"), ("u_md5", "md5 pass"), ("u_plain", "plain'pass"), ("postgres", nil)] {
            let tl = randomHexId()
            let r = try attach(ps, tl, primary.connectionString(user: user, password: password))
            XCTAssertEqual(r.status, 201, "\(user): \(String(describing: r.json))")
            let detail = try ps.timeline(tenant, tl)
            XCTAssertFalse((detail["wal_source"] as? String ?? "").contains(password ?? "\u{0}"), "the password must not be shown")
        }
        for user in ["u_scram", "u_md5", "u_plain"] {
            let r = try attach(ps, randomHexId(), primary.connectionString(user: user, password: "wrong"))
            XCTAssertEqual(r.status, 400, "\(user) with a wrong password")
            let msg = (r.json as? [String: Any])?["msg"] as? String ?? ""
            XCTAssertTrue(msg.contains("password authentication failed") || msg.contains("authentication failed"), "\(user): \(msg)")
        }
        let bad = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": "xyz", "wal_source": "host=x"])
        XCTAssertEqual(bad.status, 400)
        XCTAssertEqual(try ps.request("GET", "/v1/tenant/\(randomHexId())/timeline").status, 404)
    }

    func testKillRestartAndPrimaryRestartWhileStreaming() throws {
        var rng = SeededRandom(seed: testSeed("AttachTests.testKillRestart"))
        let primary = try TestPrimary.start(for: self)
        let ps = try TestPageServer.start(for: self, config: "checkpoint_distance = \"4MiB\"\ncheckpoint_timeout = \"2s\"\n")
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        let timeline = randomHexId()
        let attached = try attach(ps, timeline, primary.connectionString())
        XCTAssertEqual(attached.status, 201, "attach: \(String(describing: attached.json))")
        try pgbench(primary, "-i -s 1 -q")
        // pgbench runs in the background while the page server is killed and restarted.
        let bench = DispatchGroup()
        bench.enter()
        nonisolated(unsafe) var benchError: Error?
        let port = primary.port
        Thread.detachNewThread {
            do { try TestPrimary.shell("pgbench -h 127.0.0.1 -p \(port) -U postgres -c 2 -T 14 postgres") } catch { benchError = error }
            bench.leave()
        }
        for round in 0..<3 {
            usleep(UInt32.random(in: 500_000...2_500_000, using: &rng))
            XCTAssertEqual(ps.stop(signal: SIGKILL), 128 + SIGKILL)
            try ps.start()
            try waitUntil("timeline is streaming again after kill \(round)", timeout: 30) {
                (try ps.timeline(tenant, timeline))["state"] as? String == "Active"
            }
        }
        bench.wait()
        if let benchError { throw benchError }
        // Restart the primary while streaming; the receiver reconnects by itself.
        try primary.stop()
        try primary.start()
        try primary.psql("CREATE TABLE after_restart AS SELECT generate_series(1, 50000) AS g")
        try catchUp(primary, ps, timeline)
        try assertSizesEqual(primary, ps, timeline)
        // A clean stop flushes; a restart resumes with nothing lost.
        XCTAssertEqual(ps.stop(signal: SIGTERM), 0)
        try ps.start()
        let t = try ps.timeline(tenant, timeline)
        XCTAssertEqual(t["disk_consistent_lsn"] as? String, t["last_record_lsn"] as? String)
        try catchUp(primary, ps, timeline)
        try assertSizesEqual(primary, ps, timeline)
    }

    func testSecondServerOnSameWorkdirRefuses() throws {
        let ps = try TestPageServer.start(for: self)
        let r = try TestPrimary.shell("\(TestPageServer.binary) --workdir \(ps.workdir) --listen-http 127.0.0.1:\(try TestPrimary.freeLoopbackPort())", check: false)
        XCTAssertEqual(r.status, 1)
        XCTAssertTrue(r.stderr.contains("already running"), r.stderr)
    }
}
