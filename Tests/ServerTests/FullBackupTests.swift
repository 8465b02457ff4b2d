import Foundation
import Glibc
import PGTestSupport
import WireProtocol
import XCTest

/// "Done" for the page service: vanilla PostgreSQL 15 boots from our fullbackup taken at past LSNs
/// and shows the database exactly as it was then.
final class FullBackupTests: XCTestCase {
    let tenant = randomHexId()

    /// Queries whose answers pin down the database's contents (run on the primary at each recorded LSN
    /// and on each booted backup).
    static let queries = [
        "SELECT count(*), sum(abalance), sum(bid) FROM pgbench_accounts",
        "SELECT md5(string_agg(tid || ',' || bid || ',' || tbalance, ';' ORDER BY tid)) FROM pgbench_tellers",
        "SELECT md5(string_agg(bid || ',' || bbalance, ';' ORDER BY bid)) FROM pgbench_branches",
        "SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history",
        "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class WHERE relname LIKE 'notes%'",
        "SELECT count(*) FROM pg_class",
    ]

    func snapshot(_ run: (String) throws -> String) throws -> [String] {
        var out: [String] = []
        for q in Self.queries {
            // The notes table exists only before the DROP; ask through pg_class first.
            out.append(try run(q))
        }
        let notes = try run("SELECT count(*) FROM pg_class WHERE relname = 'notes'")
        if notes == "1" { out.append(try run("SELECT count(*), md5(string_agg(id || body, ',' ORDER BY id)) FROM notes")) }
        return out
    }

    func testFullbackupAtPastLSNsBootsAndShowsThatPast() throws {
        let primary = try TestPrimary.start(for: self)
        let ps = try TestPageServer.start(for: self)
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        let timeline = randomHexId()
        let r = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": timeline, "wal_source": primary.connectionString()])
        XCTAssertEqual(r.status, 201, "attach: \(String(describing: r.json))")
        let bench = "pgbench -h 127.0.0.1 -p \(primary.port) -U postgres"
        try TestPrimary.shell("\(bench) -i -s 1 -q postgres")
        try primary.psql("CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
        try TestPrimary.shell("\(bench) -t 200 -c 2 postgres")

        // Three points in time, each with the primary quiet while it is recorded.
        var points: [(lsn: String, answers: [String])] = []
        func record() throws {
            let lsn = try primary.psql("SELECT pg_current_wal_lsn()")
            points.append((lsn, try snapshot { try primary.psql($0) }))
        }
        try record()  // 1: before the DROP
        try primary.psql("UPDATE notes SET body = 'changed' WHERE id % 7 = 0")
        try primary.psql("DROP TABLE notes")
        try TestPrimary.shell("\(bench) -t 100 -c 2 postgres")
        try record()  // 2: after the DROP
        try TestPrimary.shell("\(bench) -t 100 -c 2 postgres")
        try primary.psql("CREATE TABLE later (x int); INSERT INTO later SELECT generate_series(1, 100)")
        try record()  // 3: the latest
        XCTAssertNotEqual(points[0].answers, points[1].answers)
        let target = parseLSN(points[2].lsn)!
        try waitUntil("the page server reaches \(points[2].lsn)", timeout: 120) {
            parseLSN(try ps.timeline(tenant, timeline)["last_record_lsn"] as? String ?? "") ?? 0 >= target
        }

        for (i, point) in points.enumerated() {
            let lsnArgument = i == 2 ? "" : " \(point.lsn)"
            let booted = try BootedBackup(port: ps.pgPort, command: "fullbackup \(tenant) \(timeline)\(lsnArgument)")
            defer { booted.destroy() }
            let answers = try snapshot { try booted.psql($0) }
            XCTAssertEqual(answers, point.answers, "point \(i + 1) at \(point.lsn)\n\(booted.log)")
            // It is a primary that accepts writes.
            XCTAssertEqual(try booted.psql("CREATE TABLE written_after_boot (v int); INSERT INTO written_after_boot VALUES (42); SELECT v FROM written_after_boot"), "42")
            XCTAssertEqual(try booted.psql("SELECT pg_is_in_recovery()"), "f")
        }

        // basebackup: the same tree without relation data (a compute fetches pages on demand).
        var base: [UInt8] = []
        try PageServiceClient.backup(host: "127.0.0.1", port: ps.pgPort, command: "basebackup \(tenant) \(timeline)") { base.append(contentsOf: $0) }
        let listing = try tarListing(base)
        XCTAssertTrue(listing.contains("global/pg_control"), listing.prefix(20).joined(separator: "\n"))
        XCTAssertTrue(listing.contains(where: { $0.hasPrefix("pg_wal/0000000") }))
        XCTAssertFalse(listing.contains("global/1262"), "basebackup must not carry relation data")

        // Errors: an LSN before the timeline's start, a bad LSN; the server keeps serving.
        for (command, expect) in [("fullbackup \(tenant) \(timeline) 0/10", "before the start"),
                                  ("fullbackup \(tenant) \(timeline) zz", "invalid LSN")] {
            XCTAssertThrowsError(try PageServiceClient.backup(host: "127.0.0.1", port: ps.pgPort, command: command) { _ in }) { error in
                XCTAssertTrue("\(error)".contains(expect), "\(command): \(error)")
            }
        }
        XCTAssertEqual(try ps.request("GET", "/v1/status").status, 200)
    }
}

/// The names of a tar's members.
func tarListing(_ tar: [UInt8]) throws -> [String] {
    var names: [String] = []
    var off = 0
    while off + 512 <= tar.count {
        let header = tar[off..<(off + 512)]
        if header.allSatisfy({ $0 == 0 }) { break }
        let nameBytes = header.prefix(100).prefix { $0 != 0 }
        let prefixBytes = tar[(off + 345)..<(off + 500)].prefix { $0 != 0 }
        var name = String(decoding: nameBytes, as: UTF8.self)
        if !prefixBytes.isEmpty { name = String(decoding: prefixBytes, as: UTF8.self) + "/" + name }
        let sizeText = String(decoding: tar[(off + 124)..<(off + 136)].prefix { $0 != 0 && $0 != 32 }, as: UTF8.self)
        let size = Int(sizeText, radix: 8) ?? 0
        names.append(name.hasPrefix("./") ? String(name.dropFirst(2)) : name)
        off += 512 + (size + 511) / 512 * 512
    }
    return names
}

/// A vanilla PostgreSQL 15 started on a tar from the page service (extracted, chmod 700, pg_ctl start).
final class BootedBackup {
    let directory: String
    let dataDirectory: String
    let port: Int

    init(port pageServicePort: Int, command: String) throws {
        directory = FileManager.default.temporaryDirectory.path + "/booted-\(UUID().uuidString.prefix(8))"
        dataDirectory = directory + "/data"
        port = try TestPrimary.freeLoopbackPort()
        try FileManager.default.createDirectory(atPath: dataDirectory, withIntermediateDirectories: true)
        let tarPath = directory + "/backup.tar"
        FileManager.default.createFile(atPath: tarPath, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: tarPath))
        try PageServiceClient.backup(host: "127.0.0.1", port: pageServicePort, command: command) { chunk in
            handle.write(Data(chunk))
        }
        try handle.close()
        try TestPrimary.shell("tar -xf \(tarPath) -C \(dataDirectory) && chown -R postgres: \(directory) && chmod 700 \(dataDirectory)")
        let start = try TestPrimary.shell("runuser -u postgres -- \(TestPrimary.binDirectory)/pg_ctl -D \(dataDirectory) -l \(directory)/server.log -w -t 60 -o \"-p \(port) -k \(directory)\" start", check: false)
        guard start.status == 0 else {
            throw TestPrimary.CommandFailure(description: "booting the backup failed: \(start.stderr)\n\(log)")
        }
    }

    var log: String { (try? String(contentsOfFile: directory + "/server.log", encoding: .utf8)) ?? "" }

    @discardableResult
    func psql(_ sql: String) throws -> String {
        let r = try TestPrimary.shell("psql -X -q -At -h 127.0.0.1 -p \(port) -U postgres -d postgres -v ON_ERROR_STOP=1 -c \(TestPrimary.shellQuote(sql))", check: false)
        guard r.status == 0 else { throw TestPrimary.CommandFailure(description: "psql on the booted backup: \(r.stderr)") }
        return r.stdout.trimmingCharacters(in: .newlines)
    }

    func destroy() {
        _ = try? TestPrimary.shell("runuser -u postgres -- \(TestPrimary.binDirectory)/pg_ctl -D \(dataDirectory) -m immediate -w stop", check: false)
        try? FileManager.default.removeItem(atPath: directory)
    }
}
