import XCTest
@testable import WireProtocol

/// A transport that plays a server from a script: each frontend message the client writes is handed
/// to `respond`, whose answer is queued; reads hand out the queue `chunkSize` bytes at a time (1 =
/// byte by byte, the hardest case for framing).
final class ScriptedTransport: ByteTransport {
    var chunkSize: Int
    var incoming: [UInt8] = []
    var readOffset = 0
    /// Every frontend message written, split into messages (the startup message has type 0).
    var written: [(type: UInt8, body: [UInt8])] = []
    var respond: (UInt8, [UInt8]) -> [UInt8]
    var closed = false
    private var sawStartup = false
    private var pending: [UInt8] = []

    init(chunkSize: Int, respond: @escaping (UInt8, [UInt8]) -> [UInt8]) {
        self.chunkSize = chunkSize
        self.respond = respond
    }

    func read(into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws -> Int? {
        guard !closed else { throw PGError(.invalidState, "closed") }
        guard readOffset < incoming.count else { return nil }  // Nothing queued: as if the deadline passed.
        let n = min(chunkSize, buffer.count, incoming.count - readOffset)
        buffer.copyBytes(from: incoming[readOffset..<(readOffset + n)])
        readOffset += n
        return n
    }

    func write(_ bytes: UnsafeRawBufferPointer, deadline: Deadline) throws {
        guard !closed else { throw PGError(.invalidState, "closed") }
        pending += bytes
        // Split into messages.
        while true {
            if !sawStartup {
                guard pending.count >= 4 else { return }
                let length = Int(UInt32(bigEndian: pending.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
                guard pending.count >= length else { return }
                let body = Array(pending[4..<length])
                pending.removeFirst(length)
                sawStartup = true
                deliver(0, body)
            } else {
                guard pending.count >= 5 else { return }
                let length = Int(UInt32(bigEndian: pending.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: 1, as: UInt32.self) }))
                guard pending.count >= 1 + length else { return }
                let type = pending[0]
                let body = Array(pending[5..<(1 + length)])
                pending.removeFirst(1 + length)
                deliver(type, body)
            }
        }
    }

    private func deliver(_ type: UInt8, _ body: [UInt8]) {
        written.append((type, body))
        incoming += respond(type, body)
    }

    func close() { closed = true }

    /// Queues server bytes without waiting for a client message.
    func push(_ bytes: [UInt8]) { incoming += bytes }
}

/// Backend message builders.
enum Server {
    static func message(_ type: Character, _ body: [UInt8] = []) -> [UInt8] {
        [type.asciiValue!] + be32(UInt32(body.count + 4)) + body
    }
    static func be16(_ v: UInt16) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    static func be32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    static func be64(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }
    static func cstring(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }

    static func auth(_ code: UInt32, _ extra: [UInt8] = []) -> [UInt8] { message("R", be32(code) + extra) }
    static let authOk = auth(0)
    static let ready = message("Z", [UInt8(ascii: "I")])
    static func parameter(_ name: String, _ value: String) -> [UInt8] { message("S", cstring(name) + cstring(value)) }
    static let startupTail = parameter("server_version", "15.99") + message("K", be32(4242) + be32(7)) + ready

    static func rowDescription(_ names: [String]) -> [UInt8] {
        var body = be16(UInt16(names.count))
        for name in names { body += cstring(name) + be32(0) + be16(0) + be32(25) + be16(UInt16(bitPattern: -1)) + be32(UInt32(bitPattern: -1)) + be16(0) }
        return message("T", body)
    }
    static func dataRow(_ values: [String?]) -> [UInt8] {
        var body = be16(UInt16(values.count))
        for value in values {
            if let value { body += be32(UInt32(value.utf8.count)) + Array(value.utf8) } else { body += be32(UInt32(bitPattern: -1)) }
        }
        return message("D", body)
    }
    static func complete(_ tag: String) -> [UInt8] { message("C", cstring(tag)) }
    static func error(_ code: String, _ text: String, severity: String = "ERROR") -> [UInt8] {
        message("E", [UInt8(ascii: "S")] + cstring(severity) + [UInt8(ascii: "V")] + cstring(severity)
                + [UInt8(ascii: "C")] + cstring(code) + [UInt8(ascii: "M")] + cstring(text) + [0])
    }
    static func copyData(_ bytes: [UInt8]) -> [UInt8] { message("d", bytes) }
}

final class ScriptedServerTests: XCTestCase {
    private func connect(_ transport: ScriptedTransport, info: ConnInfo = ConnInfo(), replication: Bool = false) throws -> PGConnection {
        let connection = PGConnection(transport: transport, peer: "scripted:5432", connInfo: info, replication: replication)
        try connection.startup(deadline: .after(seconds: 5))
        return connection
    }

    func testStartupAndQueriesByteByByteAndAllAtOnce() throws {
        for chunk in [1, 3, 1 << 20] {
            let transport = ScriptedTransport(chunkSize: chunk) { type, body in
                switch type {
                case 0: return Server.authOk + Server.startupTail
                case UInt8(ascii: "Q"):
                    let sql = String(decoding: body.dropLast(), as: UTF8.self)
                    if sql == "bad" { return Server.error("42P01", "relation \"nope\" does not exist") + Server.ready }
                    return Server.rowDescription(["a", "b"]) + Server.dataRow(["1", nil]) + Server.dataRow(["", "x y"])
                        + Server.complete("SELECT 2") + Server.complete("CREATE TABLE") + Server.message("N", [UInt8(ascii: "M")] + Server.cstring("note") + [0])
                        + Server.ready
                default: return []
                }
            }
            var info = ConnInfo(user: "alice", dbname: "db1")
            info.applicationName = "app"
            let connection = try connect(transport, info: info, replication: true)
            var notices: [ServerMessage] = []
            connection.noticeHandler = { notices.append($0) }
            // The startup packet: protocol 3.0, then the parameters.
            let startup = transport.written[0].body
            XCTAssertEqual(Array(startup[0..<4]), [0, 3, 0, 0])
            let pairs = startup[4...].split(separator: 0, omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            XCTAssertEqual(Array(pairs.prefix(12)), ["user", "alice", "database", "db1", "application_name", "app", "client_encoding", "UTF8", "replication", "true", "", ""])
            XCTAssertEqual(connection.serverParameters["server_version"], "15.99")
            XCTAssertEqual(connection.backendProcessID, 4242)

            let results = try connection.simpleQuery("SELECT 1")
            XCTAssertEqual(results.count, 2)
            XCTAssertEqual(results[0].columns.map(\.name), ["a", "b"])
            XCTAssertEqual(results[0].rows, [["1", nil], ["", "x y"]])
            XCTAssertEqual(results[0][1, "b"], "x y")
            XCTAssertEqual(results[0].commandTag, "SELECT 2")
            XCTAssertEqual(results[1], ResultSet(commandTag: "CREATE TABLE"))
            XCTAssertEqual(notices.map(\.message), ["note"])

            XCTAssertThrowsError(try connection.simpleQuery("bad")) { error in
                let error = error as! PGError
                XCTAssertEqual(error.code, .server)
                XCTAssertEqual(error.sqlState?.rawValue, "42P01")
                XCTAssertEqual(error.description, "query \"bad\" failed: server said ERROR 42P01: relation \"nope\" does not exist")
            }
            XCTAssertTrue(connection.isIdle, "an SQL error leaves the connection usable")
            XCTAssertEqual(try connection.simpleQuery("again").count, 2)
        }
    }

    func testSCRAMWithATamperedServerSignatureFails() throws {
        for finalAnswer in ["tampered", "skipped", "error"] {
            let transport = ScriptedTransport(chunkSize: 1) { type, body in
                switch type {
                case 0: return Server.auth(10, Server.cstring("SCRAM-SHA-256-PLUS") + Server.cstring("SCRAM-SHA-256") + [0])
                case UInt8(ascii: "p"):
                    let text = String(decoding: body, as: UTF8.self)
                    if let range = text.range(of: "n,,n=,r=") {
                        // SASLInitialResponse: answer with a server-first that extends the client nonce.
                        let nonce = text[range.upperBound...]
                        return Server.auth(11, Array("r=\(nonce)SERVER,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".utf8))
                    }
                    XCTAssertTrue(text.hasPrefix("c=biws,r="))
                    XCTAssertTrue(text.contains(",p="))
                    switch finalAnswer {
                    case "tampered": return Server.auth(12, Array("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".utf8)) + Server.authOk + Server.startupTail
                    case "skipped": return Server.authOk + Server.startupTail
                    default: return Server.error("28P01", "password authentication failed for user \"bob\"", severity: "FATAL")
                    }
                default: return []
                }
            }
            let info = ConnInfo(user: "bob", password: "pencil")
            XCTAssertThrowsError(try connect(transport, info: info), finalAnswer) { error in
                let error = error as! PGError
                XCTAssertEqual(error.code, .authenticationFailed)
                let text = "\(error)"
                XCTAssertTrue(text.hasPrefix("authentication failed for user \"bob\" at scripted:5432"), text)
                XCTAssertFalse(text.contains("pencil"))
                switch finalAnswer {
                case "tampered": XCTAssertTrue(text.contains("SCRAM signature does not match"), text)
                case "skipped": XCTAssertTrue(text.contains("without proving"), text)
                default: XCTAssertTrue(text.contains("server said FATAL 28P01: password authentication failed for user \"bob\""), text)
                }
            }
        }
    }

    func testPasswordMethodsNeedAPassword() {
        for code: UInt32 in [3, 5, 10] {
            let transport = ScriptedTransport(chunkSize: 2) { type, _ in
                type == 0 ? Server.auth(code, code == 5 ? [1, 2, 3, 4] : code == 10 ? Server.cstring("SCRAM-SHA-256") + [0] : []) : []
            }
            XCTAssertThrowsError(try connect(transport)) { error in
                XCTAssertEqual((error as? PGError)?.code, .authenticationFailed)
                XCTAssertTrue("\(error)".contains("has no password"), "\(error)")
            }
        }
        // GSSAPI is refused clearly.
        let transport = ScriptedTransport(chunkSize: 2) { type, _ in type == 0 ? Server.auth(7) : [] }
        XCTAssertThrowsError(try connect(transport)) { error in
            XCTAssertEqual((error as? PGError)?.code, .unsupported)
        }
    }

    func testMD5ExchangeSendsTheRightHash() throws {
        let transport = ScriptedTransport(chunkSize: 1) { type, body in
            switch type {
            case 0: return Server.auth(5, [1, 2, 3, 4])
            case UInt8(ascii: "p"):
                XCTAssertEqual(String(decoding: body.dropLast(), as: UTF8.self), "md586815d29b543118a10eccc4bb43ec631")
                return Server.authOk + Server.startupTail
            default: return []
            }
        }
        _ = try connect(transport, info: ConnInfo(user: "u_md5", password: "secret"))
    }

    func testReplicationStreamByteByByte() throws {
        let wal = (0..<300).map { UInt8(truncatingIfNeeded: $0) }
        let transport = ScriptedTransport(chunkSize: 1) { type, body in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q"):
                XCTAssertEqual(String(decoding: body.dropLast(), as: UTF8.self), "START_REPLICATION SLOT s1 PHYSICAL 1/2000000 TIMELINE 1")
                return Server.message("W", [0, 0, 0])
                    + Server.copyData([UInt8(ascii: "w")] + Server.be64(0x1_0200_0000) + Server.be64(0x1_0300_0000) + Server.be64(12345) + wal)
                    + Server.copyData([UInt8(ascii: "k")] + Server.be64(0x1_0300_0000) + Server.be64(12346) + [1])
                    + Server.message("c")
            case UInt8(ascii: "c"):
                // After the client's CopyDone: the next timeline, then ReadyForQuery.
                return Server.rowDescription(["next_tli", "next_tli_startpos"]) + Server.dataRow(["2", "1/2000100"])
                    + Server.complete("START_STREAMING") + Server.ready
            default: return []
            }
        }
        let connection = try connect(transport, replication: true)
        try connection.startReplication(slot: "s1", startLSN: 0x1_0200_0000, timeline: 1)
        XCTAssertThrowsError(try connection.simpleQuery("SELECT 1")) { XCTAssertEqual(($0 as? PGError)?.code, .invalidState) }

        guard case .xlogData(let data)? = try connection.receive(timeoutSeconds: 5) else { return XCTFail("no XLogData") }
        XCTAssertEqual(data.start, 0x1_0200_0000)
        XCTAssertEqual(data.end, 0x1_0200_0000 + 300)
        XCTAssertEqual(data.serverWALEnd, 0x1_0300_0000)
        XCTAssertEqual(data.sendTime.microsecondsSince2000, 12345)
        XCTAssertEqual(data.bytes, wal)
        XCTAssertEqual(try connection.receive(timeoutSeconds: 5),
                       .keepalive(walEnd: 0x1_0300_0000, sendTime: PGTimestamp(microsecondsSince2000: 12346), replyRequested: true))

        try connection.sendStandbyStatus(write: 0x1_0200_012C, flush: 0x1_0200_0100, apply: 0, replyRequested: false)
        let status = transport.written.last!
        XCTAssertEqual(status.type, UInt8(ascii: "d"))
        XCTAssertEqual(status.body.count, 34)
        XCTAssertEqual(status.body[0], UInt8(ascii: "r"))
        XCTAssertEqual(Array(status.body[1..<9]), Server.be64(0x1_0200_012C))
        XCTAssertEqual(Array(status.body[9..<17]), Server.be64(0x1_0200_0100))
        XCTAssertEqual(Array(status.body[17..<25]), Server.be64(0))
        let clock = status.body[25..<33].reduce(0) { $0 << 8 | UInt64($1) }
        XCTAssertLessThan(abs(Int64(bitPattern: clock) - PGTimestamp.now().microsecondsSince2000), 60_000_000)
        XCTAssertEqual(status.body[33], 0)

        XCTAssertEqual(try connection.receive(timeoutSeconds: 5), .endOfStream(nextTimeline: 2, nextTimelineStartLSN: 0x1_0200_0100))
        XCTAssertTrue(connection.isIdle)
        XCTAssertEqual(transport.written.last?.type, UInt8(ascii: "c"))
    }

    func testReceiveTimesOutWithoutLosingAPartialMessage() throws {
        let transport = ScriptedTransport(chunkSize: 1 << 20) { type, _ in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q"): return Server.message("W", [0, 0, 0])
            default: return []
            }
        }
        let connection = try connect(transport, replication: true)
        try connection.startReplication(slot: nil, startLSN: 0)
        XCTAssertNil(try connection.receive(timeoutSeconds: 0.01))
        let keepalive = Server.copyData([UInt8(ascii: "k")] + Server.be64(77) + Server.be64(1) + [0])
        transport.push(Array(keepalive[0..<7]))
        XCTAssertNil(try connection.receive(timeoutSeconds: 0.01))
        transport.push(Array(keepalive[7...]))
        XCTAssertEqual(try connection.receive(timeoutSeconds: 0.01), .keepalive(walEnd: 77, sendTime: PGTimestamp(microsecondsSince2000: 1), replyRequested: false))
    }

    func testErrorDuringStreamingLeavesTheConnectionIdle() throws {
        let transport = ScriptedTransport(chunkSize: 1) { type, body in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q") where String(decoding: body, as: UTF8.self).hasPrefix("START_REPLICATION"):
                return Server.message("W", [0, 0, 0]) + Server.error("58P01", "requested WAL segment 000000010000000000000001 has already been removed") + Server.ready
            case UInt8(ascii: "Q"):
                return Server.rowDescription(["systemid", "timeline", "xlogpos", "dbname"]) + Server.dataRow(["7301", "1", "0/3000000", nil]) + Server.complete("IDENTIFY_SYSTEM") + Server.ready
            default: return []
            }
        }
        let connection = try connect(transport, replication: true)
        try connection.startReplication(slot: nil, startLSN: 0x1000000)
        XCTAssertThrowsError(try connection.receive(timeoutSeconds: 5)) { error in
            let error = error as! PGError
            XCTAssertEqual(error.code, .server)
            XCTAssertEqual(error.sqlState?.rawValue, "58P01")
        }
        XCTAssertTrue(connection.isIdle)
        XCTAssertEqual(try connection.identifySystem().systemId, "7301")
    }

    func testFatalErrorDuringStreamingIsThrownAndBreaksTheConnection() throws {
        let transport = ScriptedTransport(chunkSize: 1) { type, _ in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q"):
                return Server.message("W", [0, 0, 0]) + Server.error("57P01", "terminating connection due to administrator command", severity: "FATAL")
            default: return []
            }
        }
        let connection = try connect(transport, replication: true)
        try connection.startReplication(slot: nil, startLSN: 0x1000000)
        XCTAssertThrowsError(try connection.receive(timeoutSeconds: 5)) { error in
            let error = error as! PGError
            XCTAssertEqual(error.code, .server)
            XCTAssertEqual(error.sqlState?.rawValue, "57P01")
            XCTAssertEqual(error.description, "replication stream from scripted:5432 failed: server said FATAL 57P01: terminating connection due to administrator command")
        }
        XCTAssertFalse(connection.isIdle)
        XCTAssertThrowsError(try connection.identifySystem()) { XCTAssertEqual(($0 as? PGError)?.code, .invalidState) }
    }

    func testGarbageLengthIsAProtocolViolation() throws {
        let transport = ScriptedTransport(chunkSize: 1) { type, _ in
            type == 0 ? [UInt8(ascii: "R"), 0xFF, 0xFF, 0xFF, 0xFF] : []
        }
        XCTAssertThrowsError(try connect(transport)) { error in
            XCTAssertEqual((error as? PGError)?.code, .protocolViolation)
        }
    }

    func testBaseBackupStreamByteByByte() throws {
        var tar = TarBuilder()
        tar.file("PG_VERSION", Array("15\n".utf8))
        tar.file("global/pg_control", [UInt8](repeating: 3, count: 8192))
        let walTar: [UInt8] = {
            var t = TarBuilder()
            t.file("000000010000000000000002", [UInt8](repeating: 5, count: 700))
            return t.bytes
        }()
        let transport = ScriptedTransport(chunkSize: 1) { type, body in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q"):
                let sql = String(decoding: body.dropLast(), as: UTF8.self)
                XCTAssertEqual(sql, "BASE_BACKUP (LABEL 'it''s', TARGET 'client', CHECKPOINT 'fast', WAL, MANIFEST 'yes')")
                var out = Server.rowDescription(["recptr", "tli"]) + Server.dataRow(["0/2000028", "1"]) + Server.complete("SELECT")
                out += Server.rowDescription(["spcoid", "spclocation", "size"]) + Server.dataRow([nil, nil, "22000"]) + Server.dataRow(["16384", "/srv/ts", nil]) + Server.complete("SELECT")
                out += Server.message("H", [0, 0, 0])
                out += Server.copyData([UInt8(ascii: "n")] + Server.cstring("base.tar") + Server.cstring(""))
                out += Server.copyData([UInt8(ascii: "d")] + Array(tar.bytes[0..<1000]))
                out += Server.copyData([UInt8(ascii: "d")] + Array(tar.bytes[1000...]))
                out += Server.copyData([UInt8(ascii: "p")] + Server.be64(UInt64(tar.bytes.count)))
                out += Server.copyData([UInt8(ascii: "n")] + Server.cstring("pg_wal.tar") + Server.cstring(""))
                out += Server.copyData([UInt8(ascii: "d")] + walTar)
                out += Server.copyData([UInt8(ascii: "m")])
                out += Server.copyData([UInt8(ascii: "d")] + Array("{\"PostgreSQL-Backup-Manifest-Version\": 1}".utf8))
                out += Server.message("c")
                out += Server.rowDescription(["recptr", "tli"]) + Server.dataRow(["0/2000100", "1"]) + Server.complete("SELECT")
                out += Server.complete("BASE_BACKUP") + Server.ready
                return out
            default: return []
            }
        }
        let connection = try connect(transport, replication: true)
        let backup = try connection.baseBackup(BaseBackupOptions(label: "it's", includeWAL: true, manifest: true))
        XCTAssertEqual(backup.startLSN, 0x200_0028)
        XCTAssertEqual(backup.startTimeline, 1)
        XCTAssertEqual(backup.tablespaces, [BackupTablespace(oid: nil, location: nil, sizeKB: 22000), BackupTablespace(oid: 16384, location: "/srv/ts", sizeKB: nil)])
        XCTAssertThrowsError(try connection.identifySystem()) { XCTAssertEqual(($0 as? PGError)?.code, .invalidState) }

        var archives: [String: ParsedArchive] = [:]
        var readers: [String: TarStreamReader] = [:]
        var current = ""
        var manifest: [UInt8] = []
        var progress: [UInt64] = []
        var sawManifestStart = false
        while let chunk = try backup.next() {
            switch chunk {
            case .archiveStart(let name, let path):
                XCTAssertEqual(path, "")
                current = name
                readers[name] = TarStreamReader()
                archives[name] = ParsedArchive()
            case .archiveData(let bytes):
                try readers[current]!.feed(bytes) { event in
                    if case .entryStart(let entry) = event { archives[current]!.entries.append(entry) }
                }
            case .progress(let done): progress.append(done)
            case .manifestStart: sawManifestStart = true
            case .manifestData(let bytes): manifest += bytes
            }
        }
        for reader in readers.values { try reader.finish() }
        XCTAssertEqual(archives["base.tar"]?.entries.map(\.name), ["PG_VERSION", "global/pg_control"])
        XCTAssertEqual(archives["base.tar"]?.entries.last?.size, 8192)
        XCTAssertEqual(archives["pg_wal.tar"]?.entries.map(\.name), ["000000010000000000000002"])
        XCTAssertEqual(progress, [UInt64(tar.bytes.count)])
        XCTAssertTrue(sawManifestStart)
        XCTAssertEqual(String(decoding: manifest, as: UTF8.self), "{\"PostgreSQL-Backup-Manifest-Version\": 1}")
        XCTAssertEqual(backup.endLSN, 0x200_0100)
        XCTAssertEqual(backup.endTimeline, 1)
        XCTAssertNil(try backup.next())
        XCTAssertTrue(connection.isIdle)
    }

    func testBaseBackupErrorMidStreamKeepsTheConnectionUsable() throws {
        let transport = ScriptedTransport(chunkSize: 7) { type, body in
            switch type {
            case 0: return Server.authOk + Server.startupTail
            case UInt8(ascii: "Q"):
                let sql = String(decoding: body.dropLast(), as: UTF8.self)
                if sql == "IDENTIFY_SYSTEM" {
                    return Server.rowDescription(["systemid", "timeline", "xlogpos", "dbname"]) + Server.dataRow(["7301", "1", "0/3000000", nil]) + Server.complete("IDENTIFY_SYSTEM") + Server.ready
                }
                return Server.rowDescription(["recptr", "tli"]) + Server.dataRow(["0/2000028", "1"]) + Server.complete("SELECT")
                    + Server.rowDescription(["spcoid", "spclocation", "size"]) + Server.dataRow([nil, nil, nil]) + Server.complete("SELECT")
                    + Server.message("H", [0, 0, 0])
                    + Server.copyData([UInt8(ascii: "n")] + Server.cstring("base.tar") + Server.cstring(""))
                    + Server.error("58P01", "could not open file \"base/1/1259\"") + Server.ready
            default: return []
            }
        }
        let connection = try connect(transport, replication: true)
        let backup = try connection.baseBackup(label: "x")
        XCTAssertEqual(try backup.next(), .archiveStart(name: "base.tar", tablespacePath: ""))
        XCTAssertThrowsError(try backup.next()) { error in
            XCTAssertEqual((error as? PGError)?.code, .server)
            XCTAssertTrue("\(error)".contains("BASE_BACKUP from scripted:5432 failed: server said ERROR 58P01: could not open file"), "\(error)")
        }
        XCTAssertTrue(connection.isIdle)
        let system = try connection.identifySystem()
        XCTAssertEqual(system, SystemIdentification(systemId: "7301", timeline: 1, xlogPos: 0x300_0000, dbName: nil))
    }
}
