import Foundation
import Glibc
import PGTestSupport
import WireProtocol
import XCTest

/// The page service (libpq port) against a real primary: pagestream answers equal the primary's,
/// wait-for-LSN, pipelining, and bad input.
final class PageServiceTests: XCTestCase {
    let tenant = randomHexId()

    func setUpAttached(config: String? = nil) throws -> (TestPrimary, TestPageServer, String) {
        let primary = try TestPrimary.start(for: self)
        let ps = try TestPageServer.start(for: self, config: config)
        XCTAssertEqual(try ps.request("POST", "/v1/tenant", ["new_tenant_id": tenant]).status, 201)
        let timeline = randomHexId()
        let r = try ps.request("POST", "/v1/tenant/\(tenant)/timeline", ["new_timeline_id": timeline, "wal_source": primary.connectionString()])
        XCTAssertEqual(r.status, 201, "attach: \(String(describing: r.json))\n\(ps.log.suffix(3000))")
        return (primary, ps, timeline)
    }

    func catchUp(_ primary: TestPrimary, _ ps: TestPageServer, _ timeline: String) throws -> UInt64 {
        try primary.psql("CHECKPOINT")
        let target = parseLSN(try primary.psql("SELECT pg_current_wal_lsn()"))!
        try waitUntil("the page server reaches \(target)", timeout: 120) {
            let t = try ps.timeline(tenant, timeline)
            if t["state"] as? String == "Broken" { throw TestPrimary.CommandFailure(description: "timeline broke: \(t["broken_reason"] ?? "")") }
            return parseLSN(t["last_record_lsn"] as? String ?? "") ?? 0 >= target
        }
        return target
    }

    func client(_ ps: TestPageServer, _ timeline: String, _ version: PagestreamVersion = .v3) throws -> PageServiceClient {
        try PageServiceClient.connect(host: "127.0.0.1", port: ps.pgPort, tenant: tenant, timeline: timeline, version: version)
    }

    static func rel(_ key: String) -> PagestreamRelTag {
        let p = key.split(separator: "/").map { UInt32($0)! }
        return PagestreamRelTag(spcNode: p[0], dbNode: p[1], relNode: p[2], forkNumber: UInt8(p[3]))
    }

    static func latest(_ id: UInt64 = 0) -> PagestreamHeader {
        PagestreamHeader(requestId: id, requestLSN: PagestreamHeader.latest, notModifiedSince: 0)
    }

    // MARK: - Tests

    func testPagestreamAnswersEqualThePrimary() throws {
        // redo_threads = 3: pipelined batches reconstruct their pages on several threads, whatever
        // the machine's core count (the pipelined and verify checks below go through it).
        // A 2 MiB page cache and 4 MiB in-memory layers: most reads go to layer files and miss the
        // decoded blocks, so the compressed tier of the data cache serves some of them. Cold reads
        // bring in 64 KiB windows until the decoded tier first evicts.
        let (primary, ps, timeline) = try setUpAttached(config: "redo_threads = 3\npage_cache_size = \"2MiB\"\ncheckpoint_distance = \"4MiB\"\ncold_prefetch_window_size = \"64KiB\"\n")
        try TestPrimary.shell("pgbench -h 127.0.0.1 -p \(primary.port) -U postgres -i -s 1 -q postgres")
        try TestPrimary.shell("pgbench -h 127.0.0.1 -p \(primary.port) -U postgres -t 300 -c 2 postgres")
        try primary.psql("CREATE TABLE dropped AS SELECT g FROM generate_series(1, 1000) g; DROP TABLE dropped")
        _ = try catchUp(primary, ps, timeline)
        let sizes = try primaryRelationSizes(primary)
        XCTAssertGreaterThan(sizes.count, 100)

        for version in [PagestreamVersion.v2, .v3] {
            let c = try client(ps, timeline, version)
            defer { c.close() }
            // Nblocks and Exists for every relation fork the primary has, pipelined.
            let keys = sizes.keys.sorted()
            for (i, k) in keys.enumerated() {
                c.send(PagestreamRequest(header: Self.latest(UInt64(2 * i)), body: .nblocks(Self.rel(k))))
                c.send(PagestreamRequest(header: Self.latest(UInt64(2 * i + 1)), body: .exists(Self.rel(k))))
            }
            var wrong: [String] = []
            for k in keys {
                let n = try c.receive()
                let e = try c.receive()
                if n != .nblocks(UInt32(sizes[k]!)) { wrong.append("\(k): nblocks \(n), primary \(sizes[k]!)") }
                if e != .exists(true) { wrong.append("\(k): exists \(e)") }
            }
            XCTAssertTrue(wrong.isEmpty, "\(version): \(wrong.count) of \(keys.count) differ:\n" + wrong.prefix(20).joined(separator: "\n"))
            // A relation that does not exist.
            XCTAssertEqual(try c.request(PagestreamRequest(header: Self.latest(), body: .exists(Self.rel("1663/5/999999/0")))), .exists(false))
            guard case .error(let m) = try c.request(PagestreamRequest(header: Self.latest(), body: .nblocks(Self.rel("1663/5/999999/0")))) else {
                return XCTFail("nblocks of a missing relation must be an error")
            }
            XCTAssertTrue(m.contains("does not exist"), m)
        }

        // DbSize: the sum of the database's relation forks.
        let dbOid = UInt32(try primary.psql("SELECT oid FROM pg_database WHERE datname = 'postgres'"))!
        let c = try client(ps, timeline)
        defer { c.close() }
        var expected: Int64 = 0
        var fsm: Int64 = 0
        for (k, v) in sizes where k.hasPrefix("1663/\(dbOid)/") { expected += Int64(v) * 8192 }
        for (k, v) in try primaryRelationSizesWithFSM(primary) where k.hasPrefix("1663/\(dbOid)/") && k.hasSuffix("/1") { fsm += Int64(v) * 8192 }
        guard case .dbSize(let dbSize) = try c.request(PagestreamRequest(header: Self.latest(), body: .dbSize(dbNode: dbOid))) else {
            return XCTFail("DbSize failed")
        }
        // FSM forks are not WAL-logged when they grow, so the page server's FSM sizes may be smaller.
        XCTAssertGreaterThanOrEqual(dbSize, expected)
        XCTAssertLessThanOrEqual(dbSize, expected + fsm)

        // GetSlruSegment equals the primary's pg_xact segment (after its checkpoint).
        let clog = try Data(contentsOf: URL(fileURLWithPath: primary.dataDirectory + "/pg_xact/0000"))
        guard case .slruSegment(let seg) = try c.request(PagestreamRequest(header: Self.latest(), body: .getSlruSegment(kind: 0, segment: 0))) else {
            return XCTFail("GetSlruSegment failed")
        }
        XCTAssertEqual(seg.count, clog.count)
        XCTAssertTrue(seg == [UInt8](clog), "pg_xact/0000 differs")

        // Pipelined GetPage equals one-at-a-time GetPage, in order; v3 echoes are checked by the client.
        let accounts = try primary.psql("SELECT '1663/' || \(dbOid) || '/' || pg_relation_filenode('pgbench_accounts') || '/0'")
        let nAccounts = UInt32(sizes[accounts]!)
        var rng = SeededRandom(seed: testSeed("PageServiceTests.pipelining"))
        let blocks = (0..<300).map { _ in UInt32.random(in: 0..<nAccounts, using: &rng) }
        for (i, b) in blocks.enumerated() {
            c.send(PagestreamRequest(header: Self.latest(UInt64(i)), body: .getPage(Self.rel(accounts), block: b)))
        }
        var pipelined: [PagestreamResponse] = []
        for _ in blocks { pipelined.append(try c.receive()) }
        for (i, b) in blocks.enumerated().prefix(40) {
            let single = try c.request(PagestreamRequest(header: Self.latest(), body: .getPage(Self.rel(accounts), block: b)))
            XCTAssertEqual(single, pipelined[i], "block \(b)")
            guard case .page(let p) = single else { return XCTFail("block \(b): \(single)") }
            XCTAssertEqual(p.count, 8192)
        }

        // Every page of every relation equals the primary's under PostgreSQL's masking.
        let pagectl = TestPageServer.binary.replacingOccurrences(of: "/pageserver", with: "/pagectl")
        let verify = try TestPrimary.shell("\(pagectl) verify --server 127.0.0.1:\(ps.pgPort) --http 127.0.0.1:\(ps.httpPort) --tenant \(tenant) --timeline \(timeline) --primary '\(primary.connectionString())' 2>&1", check: false)
        XCTAssertEqual(verify.status, 0, String(verify.stdout.suffix(3000)) + String(verify.stderr.suffix(2000)))
        let compared = verify.stdout.split(separator: "\n").first { $0.contains("pages compared") }
            .flatMap { line in line.components(separatedBy: " pages compared").first?.split(separator: " ").last.flatMap { Int($0) } } ?? 0
        XCTAssertGreaterThan(compared, 1500, verify.stdout.suffix(2000).description)
        XCTAssertTrue(verify.stdout.contains(" 0 mismatched"), verify.stdout.suffix(2000).description)

        let metrics = String(data: try Data(contentsOf: URL(string: ps.baseURL + "/metrics")!), encoding: .utf8) ?? ""
        XCTAssertTrue(metrics.contains("pageserver_getpage_seconds_bucket"), metrics)
        func gauge(_ name: String, _ tier: String) -> Double? {
            metrics.split(separator: "\n").first { $0.hasPrefix(name + "{tier=\"\(tier)\"}") }.flatMap { Double($0.split(separator: " ").last ?? "") }
        }
        print("page cache: decoded \(gauge("pageserver_page_cache_bytes", "decoded") ?? -1) bytes, compressed \(gauge("pageserver_page_cache_bytes", "compressed") ?? -1) bytes, \(gauge("pageserver_page_cache_hits", "compressed") ?? -1) compressed hits")
        XCTAssertNotNil(gauge("pageserver_page_cache_bytes", "decoded"), metrics)
        XCTAssertLessThanOrEqual(gauge("pageserver_page_cache_bytes", "decoded") ?? 0, Double(2 << 20), "within page_cache_size")
        XCTAssertLessThanOrEqual(gauge("pageserver_page_cache_bytes", "compressed") ?? 0, Double(1 << 20),
                                 "within compressed_page_cache_share (0.5) of page_cache_size")
        // The materialized pages' share: at most 7/8 of page_cache_size, and what they hold within it.
        let materializedCapacity = gauge("pageserver_page_cache_capacity_bytes", "materialized") ?? .infinity
        XCTAssertLessThanOrEqual(materializedCapacity, Double(2 << 20) * 7 / 8, metrics)
        XCTAssertLessThanOrEqual(gauge("pageserver_page_cache_bytes", "materialized") ?? .infinity, materializedCapacity, metrics)
        XCTAssertTrue(metrics.contains("pageserver_page_service_requests_total{type=\"get_page\"}"), metrics)
    }

    func testWaitForLSN() throws {
        // One pagestream thread: the first client is served by it, the second on the event loop; the
        // far-ahead timeout is checked on both.
        let (primary, ps, timeline) = try setUpAttached(config: "wait_lsn_timeout = \"3s\"\npagestream_threads = 1\n")
        try primary.psql("CREATE TABLE w (id int, v text)")
        let start = try catchUp(primary, ps, timeline)
        let c = try client(ps, timeline)
        defer { c.close() }
        let onEventLoop = try client(ps, timeline)
        defer { onEventLoop.close() }
        XCTAssertEqual(try c.request(PagestreamRequest(header: Self.latest(), body: .exists(Self.rel("1664/0/1262/0")))), .exists(true))
        XCTAssertEqual(try onEventLoop.request(PagestreamRequest(header: Self.latest(), body: .exists(Self.rel("1664/0/1262/0")))), .exists(true))
        let metrics = String(data: try Data(contentsOf: URL(string: ps.baseURL + "/metrics")!), encoding: .utf8) ?? ""
        let threads = metrics.split(separator: "\n").first { $0.hasPrefix("pageserver_pagestream_threads ") }.flatMap { Double($0.split(separator: " ")[1]) }
        XCTAssertEqual(threads, 1, "one of the two pagestreams on a thread")
        let relPath = try primary.psql("SELECT '1663/' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '/' || pg_relation_filenode('w') || '/0'")
        // A little ahead: the answer comes once the WAL arrives.
        let ahead = start + 100_000
        let port = primary.port
        let thread = Thread {
            usleep(300_000)
            _ = try? TestPrimary.shell("psql -h 127.0.0.1 -p \(port) -U postgres -d postgres -c \"INSERT INTO w SELECT g, repeat('y', 500) FROM generate_series(1, 2000) g\"")
        }
        thread.start()
        let t0 = Date()
        let r = try c.request(PagestreamRequest(header: PagestreamHeader(requestLSN: ahead, notModifiedSince: ahead), body: .nblocks(Self.rel(relPath))))
        guard case .nblocks(let n) = r else { return XCTFail("expected nblocks after waiting, got \(r)") }
        XCTAssertGreaterThan(n, 0, "the insert must be visible at \(ahead)")
        XCTAssertGreaterThan(Date().timeIntervalSince(t0), 0.2, "the request must have waited for the WAL")
        // Far ahead: an Error once wait_lsn_timeout passes, naming the LSNs; the stream goes on.
        let far = start + (1 << 40)
        for client in [c, onEventLoop] {
            let t1 = Date()
            let e = try client.request(PagestreamRequest(header: PagestreamHeader(requestLSN: far, notModifiedSince: far), body: .nblocks(Self.rel(relPath))))
            guard case .error(let m) = e else { return XCTFail("expected a timeout error, got \(e)") }
            XCTAssertTrue(m.contains("timed out") && m.contains(LSNText(far)), m)
            XCTAssertGreaterThan(Date().timeIntervalSince(t1), 2.5)
            XCTAssertEqual(try client.request(PagestreamRequest(header: PagestreamHeader(requestLSN: ahead, notModifiedSince: ahead), body: .nblocks(Self.rel(relPath)))), r)
        }
        // not_modified_since below the head: no waiting even though request_lsn is far ahead.
        let nms = try c.request(PagestreamRequest(header: PagestreamHeader(requestLSN: far, notModifiedSince: start), body: .exists(Self.rel(relPath))))
        XCTAssertEqual(nms, .exists(true))
        // Below the timeline's start: an error naming both LSNs.
        let early = try c.request(PagestreamRequest(header: PagestreamHeader(requestLSN: 0x1000, notModifiedSince: 0x1000), body: .exists(Self.rel(relPath))))
        guard case .error(let m2) = early else { return XCTFail("expected an error below the start, got \(early)") }
        XCTAssertTrue(m2.contains("0/1000") && m2.contains("start"), m2)
    }

    func testBadInputGetsClearErrorsAndOthersAreUnaffected() throws {
        let (primary, ps, timeline) = try setUpAttached(config: "page_service_max_connections = 1100\n")
        _ = try catchUp(primary, ps, timeline)
        let good = try client(ps, timeline)
        defer { good.close() }
        let probe = PagestreamRequest(header: Self.latest(), body: .exists(Self.rel("1664/0/1262/0")))
        XCTAssertEqual(try good.request(probe), .exists(true))

        // Unknown command, unknown tenant and timeline, bad ids: ErrorResponse, connection usable.
        let raw = try RawPGClient(port: ps.pgPort)
        for (q, expect) in [("hello world", "unknown page service command"),
                            ("pagestream_v2 \(randomHexId()) \(timeline)", "not found"),
                            ("pagestream_v3 \(tenant) \(randomHexId())", "not found"),
                            ("pagestream_v3 nothex \(timeline)", "invalid tenant id"),
                            ("fullbackup \(tenant)", "usage")] {
            let answer = try raw.query(q)
            XCTAssertTrue(answer.error?.contains(expect) ?? false, "\(q): \(answer)")
        }
        raw.close()

        // Malformed pagestream messages: an ErrorResponse, then the connection is closed.
        for bad: [UInt8] in [[2, 0, 0], [77] + [UInt8](repeating: 0, count: 40), [0] + [UInt8](repeating: 0, count: 60), []] {
            let r = try RawPGClient(port: ps.pgPort)
            XCTAssertNil(try r.query("pagestream_v3 \(tenant) \(timeline)").error)
            try r.sendCopyData(bad)
            let msg = try r.readUntilErrorOrClose()
            XCTAssertTrue(msg?.contains("malformed pagestream request") ?? false, "\(bad.prefix(4)): \(String(describing: msg))")
            r.close()
        }
        // A truncated frame followed by a hang-up, and a client that leaves mid-response.
        do {
            let r = try RawPGClient(port: ps.pgPort)
            XCTAssertNil(try r.query("pagestream_v3 \(tenant) \(timeline)").error)
            try r.sendRaw([UInt8(ascii: "d"), 0, 0, 0, 100, 2, 0])
            r.close()
            let c2 = try client(ps, timeline)
            for i in 0..<500 { c2.send(PagestreamRequest(header: Self.latest(UInt64(i)), body: .getPage(Self.rel("1664/0/1262/0"), block: 0))) }
            try c2.flush()
            c2.close()
        }
        // The thread-per-connection pagestream: requests sent in the same packet as the query (read by
        // the event loop before the hand-over) are answered; a message COPY BOTH does not accept gets
        // an error and the stream goes on; after CopyDone the connection is back to idle, takes
        // another query, and can start a second pagestream.
        do {
            let r = try RawPGClient(port: ps.pgPort)
            let q = Array("pagestream_v3 \(tenant) \(timeline)".utf8) + [0]
            let request = probe.encode(.v3)
            try r.sendRaw([UInt8(ascii: "Q")] + r.be32(UInt32(q.count + 4)) + q
                          + [UInt8(ascii: "d")] + r.be32(UInt32(request.count + 4)) + request)
            func response() throws -> PagestreamResponse? {
                while let (t, body) = try r.readMessage() {
                    if t == UInt8(ascii: "d") { return try body.withUnsafeBytes { try PagestreamResponse.decode($0, .v3).response } }
                    if t == UInt8(ascii: "E") { XCTFail("unexpected error: \(RawPGClient.errorText(body))") }
                }
                return nil
            }
            guard let (w, _) = try r.readMessage() else { return XCTFail("no CopyBothResponse") }
            XCTAssertEqual(w, UInt8(ascii: "W"))
            XCTAssertEqual(try response(), .exists(true))
            try r.sendRaw([UInt8(ascii: "Q")] + r.be32(UInt32(q.count + 4)) + q)
            XCTAssertTrue(try r.readUntilErrorOrClose()?.contains("unexpected message 'Q' in state copyBoth") ?? false)
            try r.sendCopyData(request)
            XCTAssertEqual(try response(), .exists(true))
            try r.sendRaw([UInt8(ascii: "c"), 0, 0, 0, 4])
            var tags: [UInt8] = []
            while let (t, _) = try r.readMessage() {
                tags.append(t)
                if t == UInt8(ascii: "Z") { break }
            }
            XCTAssertEqual(tags, [UInt8(ascii: "C"), UInt8(ascii: "Z")])
            XCTAssertTrue(try r.query("hello world").error?.contains("unknown page service command") ?? false)
            XCTAssertTrue(try r.query("pagestream_v3 \(tenant) \(timeline)").copyBoth)
            try r.sendCopyData(request)
            XCTAssertEqual(try response(), .exists(true))
            r.close()
        }
        // A huge message length is refused.
        do {
            let r = try RawPGClient(port: ps.pgPort)
            XCTAssertNil(try r.query("pagestream_v3 \(tenant) \(timeline)").error)
            try r.sendRaw([UInt8(ascii: "d"), 0x7F, 0, 0, 0])
            let msg = try r.readUntilErrorOrClose()
            XCTAssertTrue(msg?.contains("invalid message length") ?? false, String(describing: msg))
            r.close()
        }
        // 1000 idle connections; the established client and a new one still work.
        var idle: [RawPGClient] = []
        for _ in 0..<1000 { idle.append(try RawPGClient(port: ps.pgPort)) }
        XCTAssertEqual(try good.request(probe), .exists(true))
        let fresh = try client(ps, timeline)
        XCTAssertEqual(try fresh.request(probe), .exists(true))
        fresh.close()
        // Over the configured limit: a clear refusal.
        var extra: [RawPGClient] = []
        var refused: String?
        for _ in 0..<200 {
            let r = try RawPGClient(port: ps.pgPort, startup: false)
            extra.append(r)
            if let m = try r.startupError() { refused = m; break }
        }
        XCTAssertTrue(refused?.contains("too many connections") ?? false, String(describing: refused))
        for r in idle + extra { r.close() }
        XCTAssertEqual(try good.request(probe), .exists(true))
        // The server is alive and well.
        XCTAssertEqual(try ps.request("GET", "/v1/status").status, 200)
    }
}

func LSNText(_ lsn: UInt64) -> String {
    String(lsn >> 32, radix: 16, uppercase: true) + "/" + String(lsn & 0xFFFF_FFFF, radix: 16, uppercase: true)
}

/// Relation fork sizes including FSM forks.
func primaryRelationSizesWithFSM(_ primary: TestPrimary) throws -> [String: Int] {
    var sizes: [String: Int] = [:]
    let base = primary.dataDirectory + "/base"
    for db in try FileManager.default.contentsOfDirectory(atPath: base) {
        guard let oid = UInt32(db) else { continue }
        for name in try FileManager.default.contentsOfDirectory(atPath: base + "/" + db) where name.contains("_fsm") {
            let stem = name.split(separator: ".")[0].replacingOccurrences(of: "_fsm", with: "")
            guard let rel = UInt32(stem) else { continue }
            let size = (try FileManager.default.attributesOfItem(atPath: base + "/" + db + "/" + name)[.size] as? NSNumber)?.intValue ?? 0
            sizes["1663/\(oid)/\(rel)/1", default: 0] += size / 8192
        }
    }
    return sizes
}

/// A deliberately low-level libpq client for sending what a good client never would.
final class RawPGClient {
    let fd: Int32
    private var buffer: [UInt8] = []
    private var startupSent = false

    init(port: Int, startup: Bool = true) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var tv = timeval(tv_sec: 30, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { Glibc.close(fd); throw TestPrimary.CommandFailure(description: "connect failed: errno \(errno)") }
        if startup {
            try sendStartup()
            guard try startupError() == nil else { throw TestPrimary.CommandFailure(description: "startup refused") }
        }
    }

    func sendStartup() throws {
        startupSent = true
        var body: [UInt8] = []
        body.append(contentsOf: [0, 3, 0, 0])
        for s in ["user", "test", "database", "postgres"] { body.append(contentsOf: Array(s.utf8) + [0]) }
        body.append(0)
        try sendRaw(be32(UInt32(body.count + 4)) + body)
    }

    /// Sends the startup packet (if not yet) and reads up to ReadyForQuery: nil, or the error message.
    func startupError() throws -> String? {
        if !startupSent { try sendStartup() }
        while true {
            guard let (t, body) = try readMessage() else { return "connection closed" }
            if t == UInt8(ascii: "E") { return Self.errorText(body) }
            if t == UInt8(ascii: "Z") { return nil }
        }
    }

    func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xFF), UInt8((v >> 8) & 0xFF), UInt8(v & 0xFF)] }

    func sendRaw(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes[off...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw TestPrimary.CommandFailure(description: "send failed: errno \(errno)") }
            off += n
        }
    }

    func sendCopyData(_ payload: [UInt8]) throws {
        try sendRaw([UInt8(ascii: "d")] + be32(UInt32(payload.count + 4)) + payload)
    }

    /// Runs a simple query; returns the error text if the server answered with one, reading up to
    /// ReadyForQuery or CopyBothResponse.
    func query(_ sql: String) throws -> (error: String?, copyBoth: Bool) {
        let body = Array(sql.utf8) + [0]
        try sendRaw([UInt8(ascii: "Q")] + be32(UInt32(body.count + 4)) + body)
        var error: String?
        while true {
            guard let (t, b) = try readMessage() else { return (error ?? "connection closed", false) }
            switch t {
            case UInt8(ascii: "E"): error = Self.errorText(b)
            case UInt8(ascii: "Z"): return (error, false)
            case UInt8(ascii: "W"): return (nil, true)
            default: break
            }
        }
    }

    func readUntilErrorOrClose() throws -> String? {
        while true {
            guard let (t, b) = try readMessage() else { return nil }
            if t == UInt8(ascii: "E") { return Self.errorText(b) }
        }
    }

    static func errorText(_ body: [UInt8]) -> String {
        var fields: [String] = []
        var i = 0
        while i < body.count && body[i] != 0 {
            let start = i + 1
            var end = start
            while end < body.count && body[end] != 0 { end += 1 }
            if body[i] == UInt8(ascii: "M") { fields.append(String(decoding: body[start..<end], as: UTF8.self)) }
            i = end + 1
        }
        return fields.joined(separator: "; ")
    }

    func readMessage() throws -> (UInt8, [UInt8])? {
        while true {
            if buffer.count >= 5 {
                let len = Int(UInt32(buffer[1]) << 24 | UInt32(buffer[2]) << 16 | UInt32(buffer[3]) << 8 | UInt32(buffer[4]))
                if buffer.count >= 1 + len {
                    let t = buffer[0]
                    let body = Array(buffer[5..<(1 + len)])
                    buffer.removeFirst(1 + len)
                    return (t, body)
                }
            }
            var chunk = [UInt8](repeating: 0, count: 65536)
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { return nil }
            buffer.append(contentsOf: chunk[0..<n])
        }
    }

    func close() { Glibc.close(fd) }
}
