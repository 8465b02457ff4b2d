// Physical streaming replication commands on a `replication=true` connection.
//
//   IDENTIFY_SYSTEM -> one row: systemid text, timeline int4, xlogpos text "X/Y", dbname text (NULL)
//   CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL]
//                   -> one row: slot_name, consistent_point (0/0 for physical slots), snapshot_name,
//                      output_plugin; the reserved position is pg_replication_slots.restart_lsn
//   DROP_REPLICATION_SLOT name [WAIT]
//   START_REPLICATION [SLOT name] PHYSICAL X/Y [TIMELINE n] -> CopyBothResponse 'W', then CopyData:
//     server 'w' XLogData:   [start u64] [walEnd u64] [sendTime i64] [WAL bytes...]
//     server 'k' keepalive:  [walEnd u64] [sendTime i64] [replyRequested u8]
//     client 'r' status:     [write u64] [flush u64] [apply u64] [clock i64] [replyRequested u8]
//   Times are microseconds since 2000-01-01 00:00:00 UTC; integers big-endian.
//   The server ends the stream (e.g. at the end of a timeline) with CopyDone; the client answers
//   CopyDone, and the server sends a result set (next_tli, next_tli_startpos), CommandComplete and
//   ReadyForQuery.

import Glibc

/// A PostgreSQL timestamp: microseconds since 2000-01-01 00:00:00 UTC.
public struct PGTimestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Seconds from the Unix epoch to PostgreSQL's.
    public static let unixEpochOffsetSeconds: Int64 = 946_684_800

    public var microsecondsSince2000: Int64

    public init(microsecondsSince2000: Int64) { self.microsecondsSince2000 = microsecondsSince2000 }

    /// The current wall-clock time.
    public static func now() -> PGTimestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let unixMicros = Int64(ts.tv_sec) * 1_000_000 + Int64(ts.tv_nsec) / 1000
        return PGTimestamp(microsecondsSince2000: unixMicros - unixEpochOffsetSeconds * 1_000_000)
    }

    /// Microseconds since 1970-01-01 00:00:00 UTC.
    public var microsecondsSinceUnixEpoch: Int64 { microsecondsSince2000 + Self.unixEpochOffsetSeconds * 1_000_000 }

    public static func < (a: PGTimestamp, b: PGTimestamp) -> Bool { a.microsecondsSince2000 < b.microsecondsSince2000 }

    public var description: String { "\(microsecondsSince2000)us since 2000-01-01" }
}

/// The answer to IDENTIFY_SYSTEM.
public struct SystemIdentification: Sendable, Equatable {
    /// The cluster's system identifier (a 64-bit number in decimal, as the server prints it).
    public var systemId: String
    /// The current timeline.
    public var timeline: UInt32
    /// The current WAL flush position.
    public var xlogPos: UInt64
    /// The database, for a database-bound (logical) connection; nil for physical replication.
    public var dbName: String?
}

/// A run of WAL bytes from XLogData. The bytes are not aligned to records.
public struct XLogData: Sendable, Equatable {
    /// The LSN of the first byte.
    public var start: UInt64
    /// The server's current end of WAL when it sent this (not the end of these bytes).
    public var serverWALEnd: UInt64
    public var sendTime: PGTimestamp
    public var bytes: [UInt8]

    /// The LSN just past the last byte: `start + bytes.count`.
    public var end: UInt64 { start + UInt64(bytes.count) }
}

/// One message of a replication stream.
public enum ReplicationMessage: Sendable, Equatable {
    case xlogData(XLogData)
    /// The server's heartbeat; when `replyRequested`, answer promptly with `sendStandbyStatus` or the
    /// server ends the connection after wal_sender_timeout.
    case keepalive(walEnd: UInt64, sendTime: PGTimestamp, replyRequested: Bool)
    /// The server ended the stream (CopyDone). At a timeline switch it names the next timeline and where
    /// it starts. The connection is idle again afterwards.
    case endOfStream(nextTimeline: UInt32?, nextTimelineStartLSN: UInt64?)
}

extension PGConnection {
    /// Slot names PostgreSQL accepts: lower-case letters, digits and underscores, at most 63 bytes.
    static func validateSlotName(_ name: String) throws {
        let valid = !name.isEmpty && name.utf8.count <= 63
            && name.utf8.allSatisfy { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) || $0 == UInt8(ascii: "_") }
        guard valid else {
            throw PGError(.invalidArgument, "invalid replication slot name \"\(name)\": use 1 to 63 lower-case letters, digits and underscores")
        }
    }

    private func requireReplication(_ command: String) throws {
        guard isReplication else {
            throw PGError(.invalidState, "\(command) needs a replication connection (connect with replication: true)")
        }
    }

    /// Runs a replication command that answers with result sets, naming the command in errors.
    func runCommand(_ command: String) throws -> [ResultSet] {
        try requireIdle(for: command)
        try sendQuery(command)
        var results: [ResultSet] = []
        var error: PGError?
        let stop = try collectResults(into: &results, error: &error, during: command)
        guard stop == .ready else {
            throw markBroken(PGError(.protocolViolation, "server \(channel.peer) started a COPY in answer to \(command)"))
        }
        if let error { throw error }
        return results
    }

    /// IDENTIFY_SYSTEM: the cluster's identity, timeline and current WAL position.
    public func identifySystem() throws -> SystemIdentification {
        try requireReplication("IDENTIFY_SYSTEM")
        let results = try runCommand("IDENTIFY_SYSTEM")
        guard let result = results.first(where: { !$0.columns.isEmpty }), result.rows.count == 1, result.columns.count >= 3,
              let systemId = result.rows[0][0],
              let timelineText = result.rows[0][1], let timeline = UInt32(timelineText),
              let posText = result.rows[0][2], let position = WireProtocol.parseLSN(posText)
        else {
            throw markBroken(PGError(.protocolViolation, "server \(channel.peer) sent a malformed IDENTIFY_SYSTEM result"))
        }
        return SystemIdentification(systemId: systemId, timeline: timeline, xlogPos: position,
                                    dbName: result.columns.count >= 4 ? result.rows[0][3] : nil)
    }

    /// CREATE_REPLICATION_SLOT name [TEMPORARY] PHYSICAL [RESERVE_WAL]. With `reserveWAL` the slot holds
    /// WAL from the current position at once (pg_replication_slots.restart_lsn; the command itself
    /// reports no position for physical slots). When the slot exists the thrown error has
    /// `isAlreadyExists` (SQLSTATE 42710), which callers may treat as success. A temporary slot lives as
    /// long as this connection.
    public func createPhysicalReplicationSlot(name: String, reserveWAL: Bool = true, temporary: Bool = false) throws {
        try requireReplication("CREATE_REPLICATION_SLOT")
        try Self.validateSlotName(name)
        let command = "CREATE_REPLICATION_SLOT \(name)" + (temporary ? " TEMPORARY" : "") + " PHYSICAL" + (reserveWAL ? " RESERVE_WAL" : "")
        _ = try runCommand(command)
    }

    /// DROP_REPLICATION_SLOT name [WAIT]. A missing slot gives SQLSTATE 42704 (`undefinedObject`); a slot
    /// in use gives 55006 unless `wait` is true, which waits for it to be released.
    public func dropReplicationSlot(name: String, wait: Bool = false) throws {
        try requireReplication("DROP_REPLICATION_SLOT")
        try Self.validateSlotName(name)
        _ = try runCommand("DROP_REPLICATION_SLOT \(name)" + (wait ? " WAIT" : ""))
    }

    /// START_REPLICATION [SLOT slot] PHYSICAL startLSN [TIMELINE timeline]: enters streaming (COPY BOTH).
    /// Then call `receive(timeoutSeconds:)` in a loop and report progress with `sendStandbyStatus`.
    public func startReplication(slot: String?, startLSN: UInt64, timeline: UInt32? = nil) throws {
        try requireReplication("START_REPLICATION")
        if let slot { try Self.validateSlotName(slot) }
        var command = "START_REPLICATION"
        if let slot { command += " SLOT \(slot)" }
        command += " PHYSICAL \(WireProtocol.formatLSN(startLSN))"
        if let timeline { command += " TIMELINE \(timeline)" }
        try requireIdle(for: command)
        try sendQuery(command)
        var results: [ResultSet] = []
        var error: PGError?
        let stop = try collectResults(into: &results, error: &error, during: command)
        switch stop {
        case .copyBoth:
            state = .copyBoth
        case .ready:
            throw error ?? markBroken(PGError(.protocolViolation, "server \(channel.peer) answered \(command) without starting the stream"))
        case .copyOut, .copyIn:
            throw markBroken(PGError(.protocolViolation, "server \(channel.peer) answered \(command) with a one-way COPY"))
        }
    }

    /// The next message of the replication stream, or nil when none arrived within `timeoutSeconds`
    /// (a partly received message stays buffered). An ErrorResponse from the server is thrown (code
    /// `server`); after an ERROR the connection is idle again, after a FATAL it is broken and the caller
    /// reconnects and restarts from its flushed position.
    public func receive(timeoutSeconds: Double) throws -> ReplicationMessage? {
        guard state == .copyBoth else {
            throw PGError(.invalidState, "receive needs a streaming connection (call startReplication first)")
        }
        let deadline = Deadline.after(seconds: timeoutSeconds)
        while true {
            enum Step { case message(ReplicationMessage), skip, copyDone, error(ServerMessage) }
            let step: Step? = try nextMessageIfAny(deadline: deadline) { message in
                switch message.type {
                case UInt8(ascii: "d"):
                    return .message(try self.parseReplicationCopyData(&message))
                case UInt8(ascii: "c"):
                    return .copyDone
                case UInt8(ascii: "E"):
                    return .error(try message.serverMessage())
                case UInt8(ascii: "N"):
                    self.noticeHandler?(try message.serverMessage())
                    return .skip
                case UInt8(ascii: "S"):
                    try self.recordParameterStatus(&message)
                    return .skip
                default:
                    throw self.unexpected(message.type, during: "replication streaming")
                }
            }
            switch step {
            case nil: return nil
            case .skip: continue
            case .message(let m): return m
            case .copyDone: return try finishStreamEndedByServer()
            case .error(let server): throw streamFailed(server)
            }
        }
    }

    /// An ErrorResponse ended the stream. After an ERROR the walsender leaves COPY mode and sends
    /// ReadyForQuery, so the connection is idle again; after FATAL (or when ReadyForQuery does not come)
    /// it is broken. Either way the server's error is what the caller gets.
    private func streamFailed(_ server: ServerMessage) -> PGError {
        let error = PGError(.server, "replication stream from \(channel.peer) failed", server: server)
        guard server.severity == "ERROR" else { return markBroken(error) }
        state = .idle
        var results: [ResultSet] = []
        var ignored: PGError?
        if (try? collectResults(into: &results, error: &ignored, during: "the end of a failed replication stream")) != .ready {
            markBroken(error)
        }
        return error
    }

    private func parseReplicationCopyData(_ message: inout MessageReader) throws -> ReplicationMessage {
        let kind = try message.uint8()
        switch kind {
        case UInt8(ascii: "w"):
            let start = try message.uint64()
            let walEnd = try message.uint64()
            let sendTime = PGTimestamp(microsecondsSince2000: Int64(bitPattern: try message.uint64()))
            let bytes = Array(message.rest())
            return .xlogData(XLogData(start: start, serverWALEnd: walEnd, sendTime: sendTime, bytes: bytes))
        case UInt8(ascii: "k"):
            let walEnd = try message.uint64()
            let sendTime = PGTimestamp(microsecondsSince2000: Int64(bitPattern: try message.uint64()))
            let reply = try message.uint8()
            return .keepalive(walEnd: walEnd, sendTime: sendTime, replyRequested: reply != 0)
        default:
            throw markBroken(PGError(.protocolViolation, "server \(channel.peer) sent unknown replication message type \(kind)"))
        }
    }

    /// The server sent CopyDone: answer with ours, then read the optional next-timeline result set up to
    /// ReadyForQuery.
    private func finishStreamEndedByServer() throws -> ReplicationMessage {
        try send(OutgoingMessage(type: UInt8(ascii: "c")).finish(), deadline: ioDeadline())
        state = .idle
        var results: [ResultSet] = []
        var error: PGError?
        let stop = try collectResults(into: &results, error: &error, during: "the end of replication")
        guard stop == .ready else {
            throw markBroken(PGError(.protocolViolation, "server \(channel.peer) started a COPY after ending replication"))
        }
        if let error { throw error }
        let next = results.first { !$0.columns.isEmpty && !$0.rows.isEmpty }
        return .endOfStream(nextTimeline: next?.rows[0].first.flatMap { $0.flatMap { UInt32($0) } },
                            nextTimelineStartLSN: next.flatMap { $0.rows[0].count > 1 ? $0.rows[0][1].flatMap { WireProtocol.parseLSN($0) } : nil })
    }

    /// Ends streaming from the client side: sends CopyDone, discards WAL still in flight up to the
    /// server's CopyDone, and waits for ReadyForQuery. The connection is idle afterwards.
    public func endReplication() throws {
        guard state == .copyBoth else { throw PGError(.invalidState, "endReplication needs a streaming connection") }
        try send(OutgoingMessage(type: UInt8(ascii: "c")).finish(), deadline: ioDeadline())
        while true {
            let done: Bool = try nextMessage(deadline: ioDeadline(), during: "the end of replication") { message in
                switch message.type {
                case UInt8(ascii: "d"), UInt8(ascii: "N"), UInt8(ascii: "S"): return false
                case UInt8(ascii: "c"): return true
                case UInt8(ascii: "E"):
                    throw self.streamFailed(try message.serverMessage())
                default: throw self.unexpected(message.type, during: "the end of replication")
                }
            }
            if done { break }
        }
        state = .idle
        var results: [ResultSet] = []
        var error: PGError?
        _ = try collectResults(into: &results, error: &error, during: "the end of replication")
        if let error { throw error }
    }

    /// Sends a Standby Status Update ('r'): the positions written, flushed to durable storage and
    /// applied. A physical slot keeps WAL from the reported flush position on.
    public func sendStandbyStatus(write: UInt64, flush: UInt64, apply: UInt64, replyRequested: Bool = false) throws {
        guard state == .copyBoth else { throw PGError(.invalidState, "sendStandbyStatus needs a streaming connection") }
        var message = OutgoingMessage(type: UInt8(ascii: "d"))
        message.uint8(UInt8(ascii: "r"))
        message.uint64(write)
        message.uint64(flush)
        message.uint64(apply)
        message.int64(PGTimestamp.now().microsecondsSince2000)
        message.uint8(replyRequested ? 1 : 0)
        try send(message.finish(), deadline: ioDeadline())
    }
}
