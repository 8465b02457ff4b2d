// One client connection to a PostgreSQL server: startup, authentication, simple queries. The
// replication commands (Replication.swift, BaseBackup.swift) build on it.
//
// Startup sequence:
//   client: StartupMessage = [length i32] [196608 i32] (name cstring, value cstring)* [0]
//   server: AuthenticationXXX 'R' [code i32] ... until AuthenticationOk (code 0), or ErrorResponse
//   server: ParameterStatus 'S'*, BackendKeyData 'K', then ReadyForQuery 'Z' [status u8]
// Simple query:
//   client: Query 'Q' [sql cstring]
//   server: per statement (RowDescription 'T', DataRow 'D'*)? then CommandComplete 'C' [tag cstring]
//           (or EmptyQueryResponse 'I', or ErrorResponse 'E', which ends the whole query string),
//           then ReadyForQuery 'Z'.

import Glibc

/// One result of a simple query: the columns, the rows in text form (nil is SQL NULL) and the
/// command tag ("SELECT 3", "CREATE TABLE"...). A statement that returns no rows has no columns.
public struct ResultSet: Sendable, Equatable {
    public struct Column: Sendable, Equatable {
        public var name: String
        /// The type's OID (25 text, 20 int8, 23 int4, ...).
        public var typeOID: UInt32
    }

    public var columns: [Column]
    public var rows: [[String?]]
    public var commandTag: String

    public init(columns: [Column] = [], rows: [[String?]] = [], commandTag: String = "") {
        self.columns = columns
        self.rows = rows
        self.commandTag = commandTag
    }

    /// The index of the first column with that name.
    public func columnIndex(_ name: String) -> Int? { columns.firstIndex { $0.name == name } }

    /// The value in `row` of the column named `column`; nil for NULL or an unknown column.
    public subscript(row: Int, column: String) -> String? {
        guard rows.indices.contains(row), let index = columnIndex(column), rows[row].indices.contains(index) else { return nil }
        return rows[row][index]
    }
}

/// A connection to a PostgreSQL server, used from one thread at a time (every call blocks).
/// Not thread-safe; it may be handed to another thread between calls.
public final class PGConnection {
    /// The largest backend message accepted (a DataRow, a CopyData chunk...).
    public static let maxBackendMessageBytes = 256 << 20

    enum State: Equatable, CustomStringConvertible {
        case idle
        /// A base backup's COPY OUT stream is being read.
        case copyOut
        /// START_REPLICATION is streaming (COPY BOTH).
        case copyBoth
        case broken(String)
        case closed

        var description: String {
            switch self {
            case .idle: return "idle"
            case .copyOut: return "reading a base backup"
            case .copyBoth: return "streaming"
            case .broken(let why): return "broken (\(why))"
            case .closed: return "closed"
            }
        }
    }

    /// Where this connection goes (its description hides the password).
    public let connInfo: ConnInfo
    /// True for a walsender connection (startup parameter replication=true).
    public let isReplication: Bool
    /// The server's ParameterStatus values (server_version, server_encoding, integer_datetimes...).
    public private(set) var serverParameters: [String: String] = [:]
    /// The backend's process ID, from BackendKeyData.
    public private(set) var backendProcessID: Int32 = 0
    /// How long any single wait for the server may last before the operation fails with `timeout`
    /// (and the connection becomes unusable). Waiting in `receive(timeoutSeconds:)` is not bounded
    /// by this; it has its own timeout and returns nil.
    public var ioTimeoutSeconds: Double = 120
    /// The most bytes of row data one `simpleQuery` keeps; past it the query fails (after the rest of
    /// its answer is read, so the connection stays usable).
    public var maxQueryResultBytes = 64 << 20
    /// Called with each NoticeResponse (warnings, notices); they are dropped when nil.
    public var noticeHandler: ((ServerMessage) -> Void)?

    let channel: MessageChannel
    var state: State = .idle
    /// The transaction status of the last ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' failed.
    private(set) var transactionStatus: UInt8 = UInt8(ascii: "I")

    init(transport: any ByteTransport, peer: String, connInfo: ConnInfo, replication: Bool) {
        channel = MessageChannel(transport: transport, peer: peer, maxMessageBytes: Self.maxBackendMessageBytes)
        self.connInfo = connInfo
        isReplication = replication
    }

    deinit { close() }

    /// Opens a connection and authenticates (trust, cleartext password, MD5 or SCRAM-SHA-256).
    /// `replication: true` makes a physical-replication (walsender) connection, which accepts the
    /// replication commands and simple SQL. `timeoutSeconds` bounds connecting plus authentication (a
    /// smaller `connect_timeout` in the connection string wins).
    public static func connect(_ info: ConnInfo, replication: Bool = false, timeoutSeconds: Double = 30) throws -> PGConnection {
        if let mode = info.parameters["sslmode"], ["require", "verify-ca", "verify-full"].contains(mode) {
            throw PGError(.unsupported, "sslmode=\(mode) is not supported: this client does not implement TLS (use sslmode=disable or prefer)")
        }
        let deadline = Deadline.after(seconds: min(timeoutSeconds, info.connectTimeoutSeconds ?? .infinity))
        let transport = try SocketTransport(host: info.hostaddr ?? info.host, port: info.port, deadline: deadline)
        let connection = PGConnection(transport: transport, peer: transport.peer, connInfo: info, replication: replication)
        do {
            try connection.startup(deadline: deadline)
        } catch {
            connection.close()
            throw error
        }
        return connection
    }

    /// True while the connection can take commands (not broken, not closed, not in a COPY).
    public var isIdle: Bool { state == .idle }

    /// Ends the session (Terminate) and closes the socket. Idempotent; never throws.
    public func close() {
        if state == .closed { return }
        if state == .idle || state == .copyBoth || state == .copyOut {
            // Best effort: a polite goodbye lets the server log a clean disconnect.
            let bye = OutgoingMessage(type: UInt8(ascii: "X")).finish()
            try? channel.send(bye, deadline: .after(seconds: 1))
        }
        channel.transport.close()
        state = .closed
    }

    // MARK: - Startup and authentication

    func startup(deadline: Deadline) throws {
        var startup = OutgoingMessage(type: nil)
        startup.int32(196608)  // Protocol 3.0.
        var parameters: [(String, String)] = [("user", connInfo.user)]
        if let dbname = connInfo.dbname { parameters.append(("database", dbname)) }
        if let name = connInfo.applicationName { parameters.append(("application_name", name)) }
        if let options = connInfo.parameters["options"] { parameters.append(("options", options)) }
        parameters.append(("client_encoding", "UTF8"))
        if isReplication { parameters.append(("replication", "true")) }
        for (name, value) in parameters {
            startup.cString(name)
            startup.cString(value)
        }
        startup.uint8(0)
        try send(startup.finish(), deadline: deadline)

        try authenticate(deadline: deadline)

        // After AuthenticationOk: parameters and key data until ReadyForQuery. An error here (e.g. the
        // database does not exist, too many connections) still means the connection failed.
        while true {
            let done: Bool = try nextMessage(deadline: deadline, during: "connection startup") { message in
                switch message.type {
                case UInt8(ascii: "S"): try self.recordParameterStatus(&message)
                case UInt8(ascii: "K"): self.backendProcessID = try message.int32()
                case UInt8(ascii: "Z"):
                    self.transactionStatus = try message.uint8()
                    return true
                case UInt8(ascii: "N"): self.noticeHandler?(try message.serverMessage())
                case UInt8(ascii: "E"):
                    let server = try message.serverMessage()
                    let code: PGError.Code = server.sqlState?.errorClass == "28" ? .authenticationFailed : .server
                    let what = code == .authenticationFailed ? "authentication failed for user \"\(self.connInfo.user)\"" : "could not connect as user \"\(self.connInfo.user)\""
                    throw PGError(code, "\(what) at \(self.channel.peer)", server: server)
                default: throw self.unexpected(message.type, during: "connection startup")
                }
                return false
            }
            if done { return }
        }
    }

    private enum AuthStep {
        case again
        case ok
    }

    private func authenticate(deadline: Deadline) throws {
        let user = connInfo.user
        var scram: SCRAMSHA256Client?
        var scramVerified = false
        func failed(_ reason: String, server: ServerMessage? = nil) -> PGError {
            PGError(.authenticationFailed, "authentication failed for user \"\(user)\" at \(channel.peer): \(reason)", server: server)
        }
        func requirePassword(_ method: String) throws -> String {
            guard let password = connInfo.password else {
                throw failed("the server requires \(method) authentication but the connection string has no password")
            }
            return password
        }

        while true {
            // Replies are built inside the closure (the message view is borrowed) and sent after it.
            var reply: [UInt8]?
            let step: AuthStep = try nextMessage(deadline: deadline, during: "authentication") { message in
                switch message.type {
                case UInt8(ascii: "R"):
                    break
                case UInt8(ascii: "E"):
                    let server = try message.serverMessage()
                    throw PGError(.authenticationFailed, "authentication failed for user \"\(user)\" at \(self.channel.peer)", server: server)
                case UInt8(ascii: "N"):
                    self.noticeHandler?(try message.serverMessage())
                    return .again
                case UInt8(ascii: "v"):
                    throw PGError(.unsupported, "server \(self.channel.peer) does not support protocol 3.0 as requested (NegotiateProtocolVersion)")
                default:
                    throw self.unexpected(message.type, during: "authentication")
                }
                let code = try message.int32()
                switch code {
                case 0:
                    if scram != nil && !scramVerified {
                        throw failed("the server accepted the login without proving that it knows the password (no SCRAM server signature)")
                    }
                    return .ok
                case 3:
                    var m = OutgoingMessage(type: UInt8(ascii: "p"))
                    m.cString(try requirePassword("password"))
                    reply = m.finish()
                case 5:
                    let salt = Array(try message.bytes(4))
                    var m = OutgoingMessage(type: UInt8(ascii: "p"))
                    m.cString(MD5Password.response(user: user, password: try requirePassword("MD5 password"), salt: salt))
                    reply = m.finish()
                case 10:
                    var mechanisms: [String] = []
                    while true {
                        let name = try message.cString()
                        if name.isEmpty { break }
                        mechanisms.append(name)
                    }
                    guard mechanisms.contains(SCRAMSHA256Client.mechanism) else {
                        throw PGError(.unsupported, "authentication for user \"\(user)\" at \(self.channel.peer) needs SASL mechanism \(mechanisms.joined(separator: " or ")), which this client does not support (only \(SCRAMSHA256Client.mechanism) without channel binding)")
                    }
                    let client = SCRAMSHA256Client(password: try requirePassword("SCRAM-SHA-256"))
                    scram = client
                    let first = Array(client.clientFirstMessage.utf8)
                    var m = OutgoingMessage(type: UInt8(ascii: "p"))
                    m.cString(SCRAMSHA256Client.mechanism)
                    m.int32(Int32(first.count))
                    m.raw(first)
                    reply = m.finish()
                case 11:
                    guard var client = scram else { throw failed("the server sent SASLContinue without a SASL exchange") }
                    let serverFirst = String(decoding: message.rest(), as: UTF8.self)
                    let final: String
                    do {
                        final = try client.clientFinalMessage(serverFirst: serverFirst)
                    } catch let failure as SCRAMSHA256Client.Failure {
                        throw failed(Self.describe(failure))
                    }
                    scram = client
                    var m = OutgoingMessage(type: UInt8(ascii: "p"))
                    m.raw(final.utf8)
                    reply = m.finish()
                case 12:
                    guard let client = scram else { throw failed("the server sent SASLFinal without a SASL exchange") }
                    let serverFinal = String(decoding: message.rest(), as: UTF8.self)
                    do {
                        try client.verify(serverFinal: serverFinal)
                    } catch let failure as SCRAMSHA256Client.Failure {
                        throw failed(Self.describe(failure))
                    }
                    scramVerified = true
                case 2, 6, 7, 8, 9:
                    throw PGError(.unsupported, "server \(self.channel.peer) asks for authentication method \(code) (Kerberos/SCM/GSSAPI/SSPI), which this client does not support")
                default:
                    throw PGError(.unsupported, "server \(self.channel.peer) asks for unknown authentication method \(code)")
                }
                return .again
            }
            if let reply { try send(reply, deadline: deadline) }
            if step == .ok { return }
        }
    }

    private static func describe(_ failure: SCRAMSHA256Client.Failure) -> String {
        switch failure {
        case .malformed(let what): return "malformed SCRAM exchange: bad \(what)"
        case .serverError(let text): return "the server ended the SCRAM exchange with error \"\(text)\""
        case .signatureMismatch:
            return "the server's SCRAM signature does not match: the server does not know the password, or the exchange was tampered with"
        }
    }

    func recordParameterStatus(_ message: inout MessageReader) throws {
        let name = try message.cString()
        serverParameters[name] = try message.cString()
    }

    // MARK: - Simple query

    /// Runs one or more SQL statements (the simple query protocol) and returns one result per
    /// statement. An ErrorResponse becomes a thrown `PGError` with code `server` and the SQLSTATE; the
    /// connection stays usable after it.
    public func simpleQuery(_ sql: String) throws -> [ResultSet] {
        try requireIdle(for: "a query")
        try sendQuery(sql)
        var results: [ResultSet] = []
        var firstError: PGError?
        let what = "query \(Self.abbreviate(sql))"
        while true {
            let stop = try collectResults(into: &results, error: &firstError, during: what)
            switch stop {
            case .ready:
                if let firstError { throw firstError }
                return results
            case .copyOut:
                try drainCopyOut(error: &firstError)
                if firstError == nil { firstError = PGError(.unsupported, "simpleQuery does not support COPY TO STDOUT; the data was discarded") }
            case .copyIn:
                var fail = OutgoingMessage(type: UInt8(ascii: "f"))
                fail.cString("COPY FROM STDIN is not supported by this client")
                try send(fail.finish(), deadline: ioDeadline())
            case .copyBoth:
                throw markBroken(PGError(.unsupported, "query \(Self.abbreviate(sql)) started a COPY BOTH stream; use startReplication"))
            }
        }
    }

    // MARK: - Internals shared with the replication commands

    enum ResultStop {
        case ready, copyOut, copyIn, copyBoth
    }

    func requireIdle(for what: String) throws {
        switch state {
        case .idle: return
        case .copyOut: throw PGError(.invalidState, "cannot start \(what): a base backup is still being read on this connection")
        case .copyBoth: throw PGError(.invalidState, "cannot start \(what): the connection is streaming WAL (end the stream first)")
        case .broken(let why): throw PGError(.invalidState, "cannot start \(what): the connection to \(channel.peer) is broken (\(why)); reconnect")
        case .closed: throw PGError(.invalidState, "cannot start \(what): the connection is closed")
        }
    }

    func ioDeadline() -> Deadline { .after(seconds: ioTimeoutSeconds) }

    func sendQuery(_ sql: String) throws {
        var query = OutgoingMessage(type: UInt8(ascii: "Q"))
        query.cString(sql)
        try send(query.finish(), deadline: ioDeadline())
    }

    /// Writes a message; any failure leaves the connection broken.
    func send(_ bytes: [UInt8], deadline: Deadline) throws {
        do {
            try channel.send(bytes, deadline: deadline)
        } catch let error as PGError {
            throw markBroken(error)
        }
    }

    /// Reads the next message (waiting at most until `deadline`) and lends it to `consume`. I/O errors,
    /// timeouts and protocol violations leave the connection broken; errors thrown by `consume` with
    /// other codes (server, authenticationFailed...) pass through unchanged.
    func nextMessage<R>(deadline: Deadline, during what: String, _ consume: (inout MessageReader) throws -> R) throws -> R {
        guard let result = try nextMessageIfAny(deadline: deadline, consume) else {
            throw markBroken(PGError(.timeout, "timed out waiting for the server \(channel.peer) during \(what)"))
        }
        return result
    }

    /// A whole message is buffered, so the next read of one will not block.
    var hasBufferedMessage: Bool { channel.hasBufferedMessage }

    /// As `nextMessage`, but nil when the deadline passes first (the connection stays usable).
    func nextMessageIfAny<R>(deadline: Deadline, _ consume: (inout MessageReader) throws -> R) throws -> R? {
        do {
            return try channel.withNextMessage(deadline: deadline, consume)
        } catch let error as PGError {
            switch error.code {
            case .io, .timeout, .connectionClosed, .protocolViolation, .corruption:
                throw markBroken(error)
            default:
                throw error
            }
        }
    }

    /// Marks the connection unusable (the position in the message stream is unknown) and closes the
    /// socket. Returns the error for throwing.
    @discardableResult
    func markBroken(_ error: PGError) -> PGError {
        if state != .closed {
            state = .broken(error.message)
            channel.transport.close()
        }
        return error
    }

    func unexpected(_ type: UInt8, during what: String) -> PGError {
        let printable = (0x20..<0x7F).contains(type) ? "'\(Character(UnicodeScalar(type)))'" : "\(type)"
        return markBroken(PGError(.protocolViolation, "server \(channel.peer) sent unexpected message \(printable) during \(what)"))
    }

    static func abbreviate(_ sql: String) -> String {
        let flat = sql.split(whereSeparator: { $0 == "\n" || $0 == "\r" || $0 == "\t" }).joined(separator: " ")
        return "\"" + (flat.count > 80 ? flat.prefix(77) + "..." : flat) + "\""
    }

    /// Reads result sets until ReadyForQuery or the start of a COPY. The first ErrorResponse is kept in
    /// `error` (as a `server` PGError naming the command); the caller decides when to throw it. Each
    /// wait for a message lasts at most `waitSeconds` (default `ioTimeoutSeconds`).
    func collectResults(into results: inout [ResultSet], error: inout PGError?, during what: String,
                        waitSeconds: Double? = nil) throws -> ResultStop {
        var current: ResultSet?
        var storedBytes = 0
        var overflow = false
        while true {
            let deadline = waitSeconds.map { Deadline.after(seconds: $0) } ?? ioDeadline()
            let stop: ResultStop? = try nextMessage(deadline: deadline, during: what) { message in
                switch message.type {
                case UInt8(ascii: "T"):
                    let count = Int(try message.int16())
                    var columns: [ResultSet.Column] = []
                    columns.reserveCapacity(max(count, 0))
                    for _ in 0..<max(count, 0) {
                        let name = try message.cString()
                        _ = try message.int32()  // table OID
                        _ = try message.int16()  // column number
                        let type = UInt32(bitPattern: try message.int32())
                        _ = try message.int16()  // type size
                        _ = try message.int32()  // type modifier
                        _ = try message.int16()  // format code (0 text in the simple protocol)
                        columns.append(ResultSet.Column(name: name, typeOID: type))
                    }
                    current = ResultSet(columns: columns)
                case UInt8(ascii: "D"):
                    guard current != nil else { throw self.unexpected(message.type, during: "\(what) (a row before its description)") }
                    let count = Int(try message.int16())
                    var row: [String?] = []
                    row.reserveCapacity(max(count, 0))
                    for _ in 0..<max(count, 0) {
                        let length = Int(try message.int32())
                        if length < 0 {
                            row.append(nil)
                        } else {
                            row.append(String(decoding: try message.bytes(length), as: UTF8.self))
                            storedBytes += length
                        }
                    }
                    if storedBytes > self.maxQueryResultBytes { overflow = true }
                    if !overflow { current!.rows.append(row) }
                case UInt8(ascii: "C"):
                    var result = current ?? ResultSet()
                    result.commandTag = try message.cString()
                    results.append(result)
                    current = nil
                case UInt8(ascii: "I"):
                    current = nil
                case UInt8(ascii: "E"):
                    let server = try message.serverMessage()
                    if error == nil { error = PGError(.server, "\(what) failed", server: server) }
                    current = nil
                case UInt8(ascii: "N"): self.noticeHandler?(try message.serverMessage())
                case UInt8(ascii: "S"): try self.recordParameterStatus(&message)
                case UInt8(ascii: "A"): break  // NotificationResponse: LISTEN is not used here.
                case UInt8(ascii: "Z"):
                    self.transactionStatus = try message.uint8()
                    return .ready
                case UInt8(ascii: "H"): return .copyOut
                case UInt8(ascii: "G"): return .copyIn
                case UInt8(ascii: "W"): return .copyBoth
                default: throw self.unexpected(message.type, during: what)
                }
                return nil
            }
            if let stop {
                if overflow && error == nil {
                    error = PGError(.invalidArgument, "\(what) returned more than \(maxQueryResultBytes) bytes of rows (maxQueryResultBytes); the rows were dropped")
                }
                return stop
            }
        }
    }

    /// Reads and discards a COPY OUT stream up to its CopyDone.
    private func drainCopyOut(error: inout PGError?) throws {
        while true {
            let done: Bool = try nextMessage(deadline: ioDeadline(), during: "COPY OUT") { message in
                switch message.type {
                case UInt8(ascii: "d"), UInt8(ascii: "N"), UInt8(ascii: "S"): return false
                case UInt8(ascii: "c"): return true
                case UInt8(ascii: "E"):
                    // The error ends the COPY; collectResults sees ReadyForQuery next.
                    let server = try message.serverMessage()
                    if error == nil { error = PGError(.server, "COPY OUT failed", server: server) }
                    return true
                default: throw self.unexpected(message.type, during: "COPY OUT")
                }
            }
            if done { return }
        }
    }
}
