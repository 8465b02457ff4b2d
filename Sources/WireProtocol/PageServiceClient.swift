// The client side of the page service (what `pagectl` and the tests use).
//
// A `PageServiceClient` is one libpq connection in pagestream mode: `connect` sends
// `pagestream_v2|v3 <tenant> <timeline>` and waits for CopyBothResponse; requests then go out as CopyData
// and responses come back as CopyData in the same order. Requests may be pipelined: `send` any number,
// then `receive` as many. `backup` runs `basebackup`/`fullbackup` on a plain connection and hands the
// CopyOut tar stream to a sink chunk by chunk.
//
// Invariants: one thread uses a client at a time (as `PGConnection`); a v3 response whose echoed
// request differs from the request it answers is a protocol violation (the connection is closed).

public final class PageServiceClient {
    public let connection: PGConnection
    public let version: PagestreamVersion
    /// Requests sent and not yet answered, oldest first (v3 answers are checked against them).
    private var inFlight: [PagestreamRequest] = []
    private var inFlightHead = 0
    private var outBuffer: [UInt8] = []

    private init(connection: PGConnection, version: PagestreamVersion) {
        self.connection = connection
        self.version = version
    }

    /// Connects to the page service at `host:port` and enters pagestream mode for a timeline.
    public static func connect(host: String, port: Int, tenant: String, timeline: String,
                               version: PagestreamVersion = .v3, timeoutSeconds: Double = 30) throws -> PageServiceClient {
        let info = try ConnInfo(parsing: "host=\(host) port=\(port) user=pagectl dbname=postgres")
        let conn = try PGConnection.connect(info, timeoutSeconds: timeoutSeconds)
        return try start(on: conn, tenant: tenant, timeline: timeline, version: version)
    }

    /// Enters pagestream mode on an open, idle connection (closed on failure).
    static func start(on conn: PGConnection, tenant: String, timeline: String, version: PagestreamVersion) throws -> PageServiceClient {
        let command = "pagestream_\(version == .v2 ? "v2" : "v3") \(tenant) \(timeline)"
        do {
            try conn.requireIdle(for: command)
            try conn.sendQuery(command)
            var results: [ResultSet] = []
            var error: PGError?
            switch try conn.collectResults(into: &results, error: &error, during: command) {
            case .copyBoth:
                conn.state = .copyBoth
            case .ready:
                throw error ?? conn.markBroken(PGError(.protocolViolation, "page server answered \(command) without starting the stream"))
            case .copyOut, .copyIn:
                throw conn.markBroken(PGError(.protocolViolation, "page server answered \(command) with a one-way COPY"))
            }
        } catch {
            conn.close()
            throw error
        }
        return PageServiceClient(connection: conn, version: version)
    }

    /// Number of requests sent and not yet received.
    public var pending: Int { inFlight.count - inFlightHead }

    /// Queues a request; it is written at the next `flush` or `receive`.
    public func send(_ request: PagestreamRequest) {
        let body = request.encode(version)
        outBuffer.append(UInt8(ascii: "d"))
        outBuffer.appendBE(UInt32(body.count + 4))
        outBuffer.append(contentsOf: body)
        inFlight.append(request)
    }

    /// Writes every queued request.
    public func flush() throws {
        guard !outBuffer.isEmpty else { return }
        let bytes = outBuffer
        outBuffer.removeAll(keepingCapacity: true)
        try connection.send(bytes, deadline: connection.ioDeadline())
    }

    /// The answer to the oldest request in flight.
    ///
    /// Requests sent since the last flush go out first unless the answer is already buffered, so a
    /// pipelining caller that sends a request for every answer it takes sends them in bursts, one
    /// write per burst, and never waits for an answer to a request still in its buffer.
    public func receive() throws -> PagestreamResponse {
        if !connection.hasBufferedMessage { try flush() }
        guard inFlightHead < inFlight.count else {
            throw PGError(.invalidState, "receive called with no pagestream request in flight")
        }
        let request = inFlight[inFlightHead]
        inFlightHead += 1
        if inFlightHead > 1024 && inFlightHead * 2 > inFlight.count {
            inFlight.removeFirst(inFlightHead)
            inFlightHead = 0
        }
        let version = self.version
        let conn = connection
        return try connection.nextMessage(deadline: connection.ioDeadline(), during: "a pagestream response") { message in
            switch message.type {
            case UInt8(ascii: "d"):
                let decoded: (response: PagestreamResponse, echo: PagestreamRequest?)
                do {
                    decoded = try PagestreamResponse.decode(message.body, version)
                } catch {
                    throw conn.markBroken(PGError(.protocolViolation, "bad pagestream response: \(error)"))
                }
                if let echo = decoded.echo, echo != request {
                    throw conn.markBroken(PGError(.protocolViolation, "pagestream response answers \(echo) but the oldest request in flight is \(request)"))
                }
                return decoded.response
            case UInt8(ascii: "E"):
                let server = try message.serverMessage()
                throw conn.markBroken(PGError(.server, "page server ended the pagestream", server: server))
            default:
                throw conn.unexpected(message.type, during: "a pagestream response")
            }
        }
    }

    /// One request, one answer (no pipelining).
    public func request(_ request: PagestreamRequest) throws -> PagestreamResponse {
        send(request)
        return try receive()
    }

    public func close() { connection.close() }

    /// Runs `basebackup ...` or `fullbackup ...` and passes every tar chunk to `sink`. An ErrorResponse
    /// from the server is thrown (after the partial stream); `sink` errors stop the transfer.
    public static func backup(host: String, port: Int, command: String, timeoutSeconds: Double = 30,
                              sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        let info = try ConnInfo(parsing: "host=\(host) port=\(port) user=pagectl dbname=postgres")
        let conn = try PGConnection.connect(info, timeoutSeconds: timeoutSeconds)
        defer { conn.close() }
        try backup(on: conn, command: command, sink: sink)
    }

    /// `backup` on an open, idle connection.
    static func backup(on conn: PGConnection, command: String, sink: (UnsafeRawBufferPointer) throws -> Void) throws {
        try conn.requireIdle(for: command)
        try conn.sendQuery(command)
        var results: [ResultSet] = []
        var error: PGError?
        switch try conn.collectResults(into: &results, error: &error, during: command) {
        case .copyOut:
            conn.state = .copyOut
        case .ready:
            throw error ?? PGError(.protocolViolation, "page server answered \(command) without a COPY OUT stream")
        case .copyBoth, .copyIn:
            throw conn.markBroken(PGError(.protocolViolation, "page server answered \(command) with the wrong COPY"))
        }
        var failure: PGError?
        while true {
            let done: Bool = try conn.nextMessage(deadline: conn.ioDeadline(), during: command) { message in
                switch message.type {
                case UInt8(ascii: "d"):
                    try sink(message.body)
                    return false
                case UInt8(ascii: "c"): return true
                case UInt8(ascii: "E"):
                    failure = PGError(.server, "\(command) failed", server: try message.serverMessage())
                    return true
                case UInt8(ascii: "N"), UInt8(ascii: "S"): return false
                default: throw conn.unexpected(message.type, during: command)
                }
            }
            if done { break }
        }
        conn.state = .idle
        var rest: [ResultSet] = []
        _ = try conn.collectResults(into: &rest, error: &failure, during: command)
        if let failure { throw failure }
    }
}
