import Foundation
import Glibc
import PGTestSupport
import XCTest

/// get_lsn_by_timestamp against a real PostgreSQL 15 primary: past, present, future, bad input, and
/// the same answer after the page server is killed and restarted (the index lives in the store).
final class LsnByTimestampTests: XCTestCase {
    let tenant = randomHexId()

    /// The primary's clock_timestamp() as RFC 3339 in UTC, with microseconds.
    private func primaryTime(_ primary: TestPrimary) throws -> String {
        try primary.psql("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
    }

    /// Waits until a new transaction on the primary starts after `time`, so that every commit from
    /// then on has a later xact_time.
    private func waitUntilAfter(_ primary: TestPrimary, _ time: String) throws {
        try waitUntil("the primary's now() passes \(time)", timeout: 10) { try primary.psql("SELECT now() > '\(time)'::timestamptz") == "t" }
    }

    private func lsn(_ primary: TestPrimary, _ function: String) throws -> UInt64 {
        try XCTUnwrap(parseLSN(try primary.psql("SELECT \(function)()")))
    }

    private func query(_ ps: TestPageServer, _ timeline: String, _ timestamp: String?) throws -> (status: Int, lsn: UInt64?, kind: String?, msg: String?) {
        var path = "/v1/tenant/\(tenant)/timeline/\(timeline)/get_lsn_by_timestamp"
        if let timestamp { path += "?timestamp=" + (timestamp.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? timestamp) }
        let r = try ps.request("GET", path)
        let o = r.json as? [String: Any]
        return (r.status, (o?["lsn"] as? String).flatMap(parseLSN), o?["kind"] as? String, o?["msg"] as? String)
    }

    func testPastPresentFutureAndBadInput() throws {
        let primary = try TestPrimary.start(for: self)
        let ps = try TestPageServer.start(for: self)
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        let beforeAttach = try primaryTime(primary)
        try waitUntilAfter(primary, beforeAttach)
        let timeline = randomHexId()
        let attached = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": timeline, "wal_source": primary.connectionString()])
        XCTAssertEqual(attached.status, 201, "attach: \(String(describing: attached.json))")
        let startLSN = try XCTUnwrap(parseLSN(try ps.timeline(tenant, timeline)["start_lsn"] as? String ?? ""))

        // No transaction has ended since the attach yet: nodata, or past if the primary's background
        // work has committed something already.
        let early = try query(ps, timeline, beforeAttach)
        XCTAssertEqual(early.status, 200)
        XCTAssertTrue(early.kind == "nodata" || early.kind == "past", "\(early)")
        XCTAssertEqual(early.lsn, startLSN)

        // Commit A, note T, make sure the clock has moved on, commit B.
        try primary.psql("CREATE TABLE t (i int)")
        let beforeA = try lsn(primary, "pg_current_wal_insert_lsn")
        try primary.psql("INSERT INTO t SELECT generate_series(1, 1000)")
        let t = try primaryTime(primary)
        try waitUntilAfter(primary, t)
        let beforeB = try lsn(primary, "pg_current_wal_insert_lsn")
        try primary.psql("INSERT INTO t SELECT generate_series(1, 1000)")
        try primary.psql("BEGIN; INSERT INTO t VALUES (0); ROLLBACK") // an abort ends a transaction too
        let flushed = try lsn(primary, "pg_current_wal_lsn")
        try waitUntil("the page server has ingested up to \(flushed)", timeout: 60) {
            (parseLSN(try ps.timeline(tenant, timeline)["last_record_lsn"] as? String ?? "") ?? 0) >= flushed
        }

        let present = try query(ps, timeline, t)
        XCTAssertEqual(present.status, 200, "\(present)")
        XCTAssertEqual(present.kind, "present", "\(present)")
        let presentLSN = try XCTUnwrap(present.lsn)
        XCTAssertGreaterThan(presentLSN, beforeA, "the answer includes commit A")
        XCTAssertLessThanOrEqual(presentLSN, beforeB, "the answer excludes commit B")

        let past = try query(ps, timeline, beforeAttach)
        XCTAssertEqual(past.kind, "past", "\(past)")
        XCTAssertEqual(past.lsn, startLSN)
        let ancient = try query(ps, timeline, "2000-01-01T00:00:00Z")
        XCTAssertEqual(ancient.kind, "past", "\(ancient)")

        let future = try query(ps, timeline, "2999-01-01T00:00:00+01:00")
        XCTAssertEqual(future.status, 200, "\(future)")
        XCTAssertEqual(future.kind, "future", "\(future)")
        XCTAssertGreaterThan(try XCTUnwrap(future.lsn), beforeB, "the newest transaction end is after commit B")

        for bad in ["yesterday", "2026-13-01T00:00:00Z", "2026-11-29T07:25:00", ""] {
            let r = try query(ps, timeline, bad)
            XCTAssertEqual(r.status, 400, "'\(bad)': \(r)")
            XCTAssertTrue(r.msg?.contains("RFC 3339") ?? false, "'\(bad)': \(r)")
        }
        let missing = try query(ps, timeline, nil)
        XCTAssertEqual(missing.status, 400, "\(missing)")
        XCTAssertEqual(try query(ps, randomHexId(), t).status, 404)

        // Bursts of small transactions, well over the 1024 records after which the daemon stores a
        // bucket's value as an image; T2 between the bursts. Then everything to layer files.
        let script = NSTemporaryDirectory() + "txid-\(UUID().uuidString.prefix(8)).sql"
        try "SELECT txid_current();\n".write(toFile: script, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: script) }
        try TestPrimary.shell("pgbench -n -h 127.0.0.1 -p \(primary.port) -U postgres -t 1200 -f \(script) postgres")
        let t2 = try primaryTime(primary)
        try waitUntilAfter(primary, t2)
        let beforeBurst2 = try lsn(primary, "pg_current_wal_insert_lsn")
        try TestPrimary.shell("pgbench -n -h 127.0.0.1 -p \(primary.port) -U postgres -t 1200 -f \(script) postgres")
        let flushed2 = try lsn(primary, "pg_current_wal_lsn")
        try waitUntil("the page server has ingested up to \(flushed2)", timeout: 60) {
            (parseLSN(try ps.timeline(tenant, timeline)["last_record_lsn"] as? String ?? "") ?? 0) >= flushed2
        }
        XCTAssertEqual(try ps.request("PUT", "/v1/tenant/\(tenant)/timeline/\(timeline)/checkpoint").status, 200)
        // The meta layers hold the buckets: will-init first records, and (2400 commits) images.
        let dir = ps.workdir + "/tenants/\(tenant)/timelines/\(timeline)"
        var bucketLines: [Substring] = []
        for f in try FileManager.default.contentsOfDirectory(atPath: dir) where f.hasPrefix("meta__") {
            let dump = try TestPrimary.shell("\(LayerMapTests.pagectl) layer dump \(dir)/\(f)")
            bucketLines += dump.stdout.split(separator: "\n").filter { $0.hasPrefix("04000000000000000000000000") }
        }
        XCTAssertTrue(bucketLines.contains { $0.contains("engine-record(will-init)") }, "\(bucketLines.prefix(5))")
        XCTAssertTrue(bucketLines.contains { $0.contains(" image ") }, "no bucket image among \(bucketLines.count) bucket values")
        let between = try query(ps, timeline, t2)
        XCTAssertEqual(between.kind, "present", "\(between)")
        XCTAssertGreaterThan(try XCTUnwrap(between.lsn), presentLSN)
        XCTAssertLessThanOrEqual(try XCTUnwrap(between.lsn), beforeBurst2)
        XCTAssertEqual(try query(ps, timeline, t).lsn, presentLSN, "older answers do not change")
        let latest = try query(ps, timeline, "2999-01-01T00:00:00Z")
        XCTAssertEqual(latest.kind, "future", "\(latest)")
        XCTAssertGreaterThan(try XCTUnwrap(latest.lsn), beforeBurst2)

        // The index is in the store: the same answer after a kill and a restart.
        XCTAssertEqual(ps.stop(signal: SIGKILL), 128 + SIGKILL)
        try ps.start()
        try waitUntil("the page server has ingested up to \(flushed2) again", timeout: 60) {
            (parseLSN(try ps.timeline(tenant, timeline)["last_record_lsn"] as? String ?? "") ?? 0) >= flushed2
        }
        let again = try query(ps, timeline, t)
        XCTAssertEqual(again.kind, "present", "\(again)")
        XCTAssertEqual(again.lsn, presentLSN)
        let againBetween = try query(ps, timeline, t2)
        XCTAssertEqual(againBetween.lsn, between.lsn)
        XCTAssertEqual(againBetween.kind, "present")
    }
}
