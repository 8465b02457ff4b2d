import Foundation
import PGTestSupport
import XCTest
@testable import WireProtocol

/// The client against a real PostgreSQL 15 primary (see TestPrimary). Each test starts its own
/// primary, which its teardown block stops.
final class LivePostgresTests: XCTestCase {
    static let plainPassword = "plain pw"
    static let md5Password = "md5-secret"
    static let scramPassword = #"scr'am \pw"#

    func testPasswordMethodsAgainstPostgres() throws {
        let primary = try TestPrimary.start(for: self, roles: [
            .init(name: "u_plain", password: Self.plainPassword, method: .password),
            .init(name: "u_md5", password: Self.md5Password, method: .md5),
            .init(name: "u_scram", password: Self.scramPassword, method: .scram),
        ])
        // The server stored each password the way its method needs.
        XCTAssertEqual(try primary.psql("SELECT rolname || ' ' || left(rolpassword, 13) FROM pg_authid WHERE rolname IN ('u_plain', 'u_scram') ORDER BY 1"),
                       "u_plain SCRAM-SHA-256\nu_scram SCRAM-SHA-256")
        XCTAssertTrue(try primary.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'u_md5'").hasPrefix("md5"))

        // Trust (the superuser), over TCP and over the Unix socket.
        for info in [try ConnInfo(parsing: primary.connectionString()),
                     try ConnInfo(parsing: "host=\(primary.directory) port=\(primary.port) user=postgres dbname=postgres")] {
            let connection = try PGConnection.connect(info)
            XCTAssertEqual(try connection.simpleQuery("SELECT current_user")[0].rows, [["postgres"]])
            connection.close()
        }

        // Each password method, on a normal and on a replication connection.
        let logins: [(String, String)] = [("u_plain", Self.plainPassword), ("u_md5", Self.md5Password), ("u_scram", Self.scramPassword)]
        for (user, password) in logins {
            let info = try ConnInfo(parsing: primary.connectionString(user: user, password: password))
            XCTAssertEqual(info.password, password)
            let connection = try PGConnection.connect(info)
            XCTAssertEqual(try connection.simpleQuery("SELECT current_user")[0].rows, [[user]], user)
            XCTAssertEqual(connection.serverParameters["server_version"]?.hasPrefix("15"), true)
            connection.close()
            let replication = try PGConnection.connect(info, replication: true)
            XCTAssertEqual(try replication.identifySystem().timeline, 1, user)
            replication.close()
        }
        // The URI form, with percent-encoding of the SCRAM password.
        let uri = "postgresql://u_scram:scr'am%20%5Cpw@127.0.0.1:\(primary.port)/postgres?application_name=wire%20test"
        let viaURI = try PGConnection.connect(try ConnInfo(parsing: uri))
        XCTAssertEqual(try viaURI.simpleQuery("SELECT current_setting('application_name')")[0].rows, [["wire test"]])
        viaURI.close()

        // Wrong passwords: a clear authentication error naming the user, with the server's message.
        for (user, _) in logins {
            let info = try ConnInfo(parsing: primary.connectionString(user: user, password: "wrong-guess"))
            XCTAssertThrowsError(try PGConnection.connect(info, replication: user == "u_md5"), user) { error in
                guard let error = error as? PGError else { return XCTFail("\(error)") }
                XCTAssertEqual(error.code, .authenticationFailed)
                XCTAssertEqual(error.sqlState, .invalidPassword)
                let text = error.description
                XCTAssertTrue(text.hasPrefix("authentication failed for user \"\(user)\" at 127.0.0.1:\(primary.port)"), text)
                XCTAssertTrue(text.contains("server said FATAL 28P01: password authentication failed for user \"\(user)\""), text)
                XCTAssertFalse(text.contains("wrong-guess"))
            }
        }
        // No password at all.
        XCTAssertThrowsError(try PGConnection.connect(try ConnInfo(parsing: primary.connectionString(user: "u_scram")))) { error in
            XCTAssertEqual((error as? PGError)?.code, .authenticationFailed)
            XCTAssertTrue("\(error)".contains("needs") || "\(error)".contains("has no password"), "\(error)")
        }
        // A role with no pg_hba.conf line, and a database that does not exist.
        XCTAssertThrowsError(try PGConnection.connect(try ConnInfo(parsing: primary.connectionString(user: "nobody", password: "x")))) { error in
            XCTAssertEqual((error as? PGError)?.code, .authenticationFailed)
            XCTAssertTrue("\(error)".contains("no pg_hba.conf entry"), "\(error)")
        }
        XCTAssertThrowsError(try PGConnection.connect(try ConnInfo(parsing: primary.connectionString(dbname: "missing_db")))) { error in
            XCTAssertEqual((error as? PGError)?.code, .server)
            XCTAssertEqual((error as? PGError)?.sqlState, .invalidCatalogName)
        }
        // Nothing listening.
        let closedPort = try TestPrimary.freeLoopbackPort()
        XCTAssertThrowsError(try PGConnection.connect(ConnInfo(host: "127.0.0.1", port: closedPort), timeoutSeconds: 5)) { error in
            XCTAssertEqual((error as? PGError)?.code, .io)
            XCTAssertTrue("\(error)".contains("could not connect to 127.0.0.1:\(closedPort)"), "\(error)")
        }
    }

    func testSimpleQueries() throws {
        let primary = try TestPrimary.start(for: self)
        let connection = try PGConnection.connect(try ConnInfo(parsing: primary.connectionString()))
        defer { connection.close() }

        let results = try connection.simpleQuery("""
            SELECT 1 AS one, NULL::text AS nothing, 'tab\there ✓' AS text;
            SELECT g AS n FROM generate_series(1, 3) g;
            CREATE TABLE t (x int);
            INSERT INTO t VALUES (1), (2);
            SELECT * FROM t WHERE false
            """)
        XCTAssertEqual(results.count, 5)
        XCTAssertEqual(results[0].columns.map(\.name), ["one", "nothing", "text"])
        XCTAssertEqual(results[0].columns[0].typeOID, 23)
        XCTAssertEqual(results[0].rows, [["1", nil, "tab\there ✓"]])
        XCTAssertEqual(results[1].rows, [["1"], ["2"], ["3"]])
        XCTAssertEqual(results[1].commandTag, "SELECT 3")
        XCTAssertEqual(results[2], ResultSet(commandTag: "CREATE TABLE"))
        XCTAssertEqual(results[3].commandTag, "INSERT 0 2")
        XCTAssertEqual(results[4].columns.map(\.name), ["x"])
        XCTAssertEqual(results[4].rows, [])
        XCTAssertEqual(try connection.simpleQuery(""), [])

        // An SQL error: a typed error with the SQLSTATE; the connection stays usable.
        XCTAssertThrowsError(try connection.simpleQuery("SELECT * FROM missing_table")) { error in
            guard let error = error as? PGError else { return XCTFail("\(error)") }
            XCTAssertEqual(error.code, .server)
            XCTAssertEqual(error.sqlState?.rawValue, "42P01")
            XCTAssertEqual(error.server?.severity, "ERROR")
            XCTAssertEqual(error.description, "query \"SELECT * FROM missing_table\" failed: server said ERROR 42P01: relation \"missing_table\" does not exist")
        }
        XCTAssertTrue(connection.isIdle)
        // Notices reach the handler.
        var notices: [String] = []
        connection.noticeHandler = { notices.append($0.message) }
        _ = try connection.simpleQuery("DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$")
        XCTAssertEqual(notices, ["hello 42"])
        // COPY TO STDOUT is refused without breaking the connection.
        XCTAssertThrowsError(try connection.simpleQuery("COPY t TO STDOUT")) { XCTAssertEqual(($0 as? PGError)?.code, .unsupported) }
        XCTAssertEqual(try connection.simpleQuery("SELECT count(*) FROM t")[0].rows, [["2"]])
        // Replication commands need a replication connection.
        XCTAssertThrowsError(try connection.identifySystem()) { XCTAssertEqual(($0 as? PGError)?.code, .invalidState) }
        // A result over the limit fails cleanly.
        connection.maxQueryResultBytes = 1000
        XCTAssertThrowsError(try connection.simpleQuery("SELECT repeat('x', 100) FROM generate_series(1, 100)")) { error in
            XCTAssertEqual((error as? PGError)?.code, .invalidArgument)
        }
        XCTAssertEqual(try connection.simpleQuery("SELECT 7")[0].rows, [["7"]])
        connection.close()
        XCTAssertThrowsError(try connection.simpleQuery("SELECT 1")) { XCTAssertEqual(($0 as? PGError)?.code, .invalidState) }
    }

    func testSlotsBaseBackupAndStreaming() throws {
        let primary = try TestPrimary.start(for: self)
        let info = try ConnInfo(parsing: primary.connectionString())
        let replication = try PGConnection.connect(info, replication: true)
        defer { replication.close() }
        let sql = try PGConnection.connect(info)
        defer { sql.close() }

        // IDENTIFY_SYSTEM agrees with the server's own view.
        let system = try replication.identifySystem()
        XCTAssertEqual(system.systemId, try primary.psql("SELECT system_identifier FROM pg_control_system()"))
        XCTAssertEqual(system.timeline, 1)
        XCTAssertNil(system.dbName)
        XCTAssertGreaterThan(system.xlogPos, 0)

        // A slot; creating it again is a typed "already exists"; the connection stays usable.
        try replication.createPhysicalReplicationSlot(name: "wire_slot", reserveWAL: true)
        XCTAssertGreaterThan(WireProtocol.parseLSN(try primary.psql("SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'wire_slot'")) ?? 0, 0,
                             "RESERVE_WAL reserves WAL at once")
        XCTAssertThrowsError(try replication.createPhysicalReplicationSlot(name: "wire_slot")) { error in
            guard let error = error as? PGError else { return XCTFail("\(error)") }
            XCTAssertTrue(error.isAlreadyExists)
            XCTAssertEqual(error.sqlState, .duplicateObject)
            XCTAssertTrue(error.description.contains("replication slot \"wire_slot\" already exists"), error.description)
        }
        XCTAssertThrowsError(try replication.createPhysicalReplicationSlot(name: "Bad-Name")) { XCTAssertEqual(($0 as? PGError)?.code, .invalidArgument) }
        XCTAssertEqual(try replication.identifySystem().systemId, system.systemId)

        // BASE_BACKUP, its tar stream parsed as it arrives.
        let backup = try replication.baseBackup(label: "wire protocol test", fast: true)
        XCTAssertEqual(backup.startTimeline, 1)
        XCTAssertEqual(backup.tablespaces.count, 1)
        XCTAssertNil(backup.tablespaces[0].oid)
        var archives: [String] = []
        var reader = TarStreamReader()
        var entries: [String: TarEntry] = [:]
        var small: [String: [UInt8]] = [:]
        var current: TarEntry?
        var archiveBytes = 0
        var contentBytes: UInt64 = 0
        while let chunk = try backup.next() {
            switch chunk {
            case .archiveStart(let name, _):
                if !archives.isEmpty { try reader.finish() }
                archives.append(name)
                reader = TarStreamReader()
            case .archiveData(let bytes):
                archiveBytes += bytes.count
                try reader.feed(bytes) { event in
                    switch event {
                    case .entryStart(let entry):
                        current = entry
                        entries[entry.name] = entry
                    case .data(let piece):
                        contentBytes += UInt64(piece.count)
                        if let name = current?.name, name == "PG_VERSION" || name == "global/pg_control" || name == "backup_label" {
                            small[name, default: []] += piece
                        }
                    case .entryEnd: current = nil
                    case .endOfArchive: break
                    }
                }
            case .progress, .manifestStart, .manifestData:
                break
            }
        }
        try reader.finish()
        XCTAssertEqual(archives, ["base.tar"])
        XCTAssertEqual(small["PG_VERSION"].map { String(decoding: $0, as: UTF8.self) }, "15\n")
        XCTAssertEqual(entries["global/pg_control"]?.size, 8192)
        XCTAssertEqual(small["global/pg_control"]?.count, 8192)
        XCTAssertEqual(entries["base"]?.kind, .directory)
        XCTAssertTrue(entries.values.contains { $0.name.hasPrefix("base/1/") && $0.kind == .file && $0.size > 0 })
        XCTAssertTrue(String(decoding: small["backup_label"] ?? [], as: UTF8.self).contains("LABEL: wire protocol test"))
        XCTAssertGreaterThan(contentBytes, 5 << 20, "a fresh cluster holds more than 5 MiB")
        XCTAssertLessThan(contentBytes, 1 << 30)
        XCTAssertGreaterThanOrEqual(UInt64(archiveBytes), contentBytes + UInt64(entries.count) * 512)
        let endLSN = try XCTUnwrap(backup.endLSN)
        XCTAssertGreaterThanOrEqual(endLSN, backup.startLSN)
        XCTAssertTrue(replication.isIdle)

        // A start position beyond the server's WAL: the server enters COPY BOTH, then reports an ERROR
        // and leaves it; the error reaches receive() and the connection is usable afterwards.
        try replication.startReplication(slot: nil, startLSN: endLSN + (1 << 32))
        XCTAssertThrowsError(try replication.receive(timeoutSeconds: 10)) { error in
            XCTAssertEqual((error as? PGError)?.code, .server)
            XCTAssertTrue("\(error)".contains("ahead of the WAL flush position"), "\(error)")
        }
        XCTAssertTrue(replication.isIdle)

        // Stream from the backup's start while another session writes.
        try replication.startReplication(slot: "wire_slot", startLSN: backup.startLSN, timeline: system.timeline)
        _ = try sql.simpleQuery("CREATE TABLE wal_gen (id int, payload text); INSERT INTO wal_gen SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g")
        let target = try XCTUnwrap(WireProtocol.parseLSN(try sql.simpleQuery("SELECT pg_current_wal_lsn()")[0].rows[0][0] ?? ""))
        XCTAssertGreaterThan(target, endLSN)
        var received = backup.startLSN
        var xlogMessages = 0
        var pageHeadersSeen = 0
        let segmentBytes: UInt64 = 16 << 20
        let nextSegment = (endLSN + segmentBytes - 1) / segmentBytes * segmentBytes
        let deadline = Date().addingTimeInterval(30)
        while received < target {
            guard Date() < deadline else {
                return XCTFail("received WAL up to \(WireProtocol.formatLSN(received)) only; target \(WireProtocol.formatLSN(target))")
            }
            switch try replication.receive(timeoutSeconds: 1) {
            case .xlogData(let data)?:
                XCTAssertEqual(data.start, received, "WAL arrives contiguously from the start position")
                // Every 8 KiB WAL page starts with PostgreSQL 15's page magic 0xD110 (little-endian),
                // except the zeroed rest of the segment that the backup's WAL switch ended: check from
                // the next segment on.
                var lsn = max((data.start + 8191) / 8192 * 8192, nextSegment)
                while lsn + 2 <= data.end {
                    let offset = Int(lsn - data.start)
                    XCTAssertEqual(UInt16(data.bytes[offset]) | UInt16(data.bytes[offset + 1]) << 8, 0xD110, "page magic at \(WireProtocol.formatLSN(lsn))")
                    pageHeadersSeen += 1
                    lsn += 8192
                }
                received = data.end
                xlogMessages += 1
            case .keepalive(_, _, let replyRequested)?:
                if replyRequested { try replication.sendStandbyStatus(write: received, flush: received, apply: received) }
            case .endOfStream?:
                return XCTFail("the server ended the stream")
            case nil:
                continue
            }
        }
        XCTAssertGreaterThan(xlogMessages, 0)
        XCTAssertGreaterThan(pageHeadersSeen, 10)

        // A status update moves the slot's restart_lsn to the reported flush position.
        let slotQuery = "SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = 'wire_slot'"
        let before = try XCTUnwrap(WireProtocol.parseLSN(try sql.simpleQuery(slotQuery)[0].rows[0][0] ?? ""))
        XCTAssertLessThan(before, received)
        try replication.sendStandbyStatus(write: received, flush: received, apply: received, replyRequested: true)
        let slotDeadline = Date().addingTimeInterval(15)
        var restart = before
        while restart < received {
            guard Date() < slotDeadline else { return XCTFail("restart_lsn stayed at \(WireProtocol.formatLSN(restart))") }
            // Keep the stream drained (and keepalives answered) while waiting.
            if case .keepalive(_, _, true)? = try replication.receive(timeoutSeconds: 0.05) {
                try replication.sendStandbyStatus(write: received, flush: received, apply: received)
            }
            restart = WireProtocol.parseLSN(try sql.simpleQuery(slotQuery)[0].rows[0][0] ?? "") ?? 0
        }
        XCTAssertEqual(restart, received)

        // Ending the stream from the client side returns the connection to idle; the slot can be dropped.
        try replication.endReplication()
        XCTAssertTrue(replication.isIdle)
        XCTAssertEqual(try replication.identifySystem().timeline, 1)
        try replication.dropReplicationSlot(name: "wire_slot")
        XCTAssertThrowsError(try replication.dropReplicationSlot(name: "wire_slot")) { error in
            XCTAssertEqual((error as? PGError)?.sqlState, .undefinedObject)
        }

        // The server ending a stream with an error (the walsender is terminated) reaches the caller.
        let doomed = try PGConnection.connect(info, replication: true)
        defer { doomed.close() }
        try doomed.startReplication(slot: nil, startLSN: received)
        XCTAssertEqual(try sql.simpleQuery("SELECT pg_terminate_backend(\(doomed.backendProcessID))")[0].rows, [["t"]])
        let errorDeadline = Date().addingTimeInterval(15)
        do {
            while Date() < errorDeadline { _ = try doomed.receive(timeoutSeconds: 1) }
            XCTFail("the terminated stream did not report an error")
        } catch let error as PGError {
            XCTAssertTrue(error.code == .server || error.code == .connectionClosed, "\(error)")
            if error.code == .server { XCTAssertEqual(error.sqlState?.rawValue, "57P01") }
        }
        XCTAssertFalse(doomed.isIdle)
    }
}
