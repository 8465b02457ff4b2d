// The server side of the PostgreSQL wire protocol (v3), on SwiftNIO: what the page server's libpq port
// speaks. It frames messages, runs the startup handshake and hands simple queries and CopyData to a
// `PGServerSessionDelegate` that the daemon supplies; it knows nothing of pages or timelines.
//
// Design
// ======
// One `PGServerConnection` per accepted socket. Its handler runs on the channel's event loop; the
// delegate's callbacks are called there too and must not block: long work (page reads, backups) goes
// to other threads, which answer through the connection's thread-safe `send...` methods.
//
//   startup:  SSLRequest / GSSENCRequest -> 'N' (no TLS yet); CancelRequest -> closed; StartupMessage 3.0
//             -> AuthenticationOk (trust; `authenticate` is the seam for token authentication),
//             ParameterStatus, BackendKeyData, ReadyForQuery
//   idle:     'Q' -> delegate.query; 'X' -> close; 'P'/'B'/'D'/'E' (extended protocol) -> ErrorResponse,
//             then ReadyForQuery at the next 'S'
//   copyBoth: 'd' -> delegate.copyData; 'c' or 'f' -> delegate.copyEnded, then back to idle
//   copyOut:  the daemon streams; client messages other than 'X' wait until it ends
//   detached: a thread of the delegate's serves COPY BOTH on the socket (see invariant 5)
//
// Invariants:
// 1. A frontend message longer than `maxMessageBytes` or a malformed startup packet gets a FATAL
//    ErrorResponse and the connection is closed; nothing else is affected.
// 2. Reading is demand-driven (autoRead off): the handler asks for more bytes only while the delegate
//    has not paused it, so a client that pipelines faster than it is served is held by TCP flow
//    control, never by unbounded memory.
// 3. At most `maxConnections` connections are open; the next one gets "too many connections" and is
//    closed.
// 4. Writes from other threads go through `channel.writeAndFlush` (NIO hops to the event loop), so
//    responses leave in the order they were sent.
// 5. A connection detached for COPY BOTH (`detachForCopyBoth`, DetachedCopyBoth.swift) is neither read
//    nor written by the event loop until its thread hands it back (`reattach`) or closes it.

import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// What the daemon does with a session's messages. Called on the connection's event loop.
public protocol PGServerSessionDelegate: AnyObject, Sendable {
    /// Decides whether a client may connect (token authentication later). Throwing refuses it with the
    /// error's description.
    func authenticate(user: String, parameters: [String: String], connection: PGServerConnection) throws
    /// A simple query. The delegate answers with `sendCommandComplete`+`sendReadyForQuery`, an error, or
    /// by starting a COPY.
    func query(_ text: String, connection: PGServerConnection)
    /// A CopyData message while in COPY BOTH.
    func copyData(_ bytes: ByteBuffer, connection: PGServerConnection)
    /// Everything the last read from the socket brought has been handed out (a good moment to act on
    /// a batch of pipelined messages).
    func readComplete(connection: PGServerConnection)
    /// The client ended COPY BOTH (CopyDone or CopyFail), or the connection closed during it.
    func copyEnded(connection: PGServerConnection)
    /// The connection is closed (always called once).
    func closed(connection: PGServerConnection)
}

public struct PGServerLimits: Sendable {
    public var maxConnections = 10_000
    public var maxMessageBytes = 1 << 20
    public init() {}
}

/// A listening libpq server.
public final class PGWireServer: Sendable {
    public let group: MultiThreadedEventLoopGroup
    private let channel: Channel
    private let ownsGroup: Bool
    let openConnections = Atomic<Int>(0)

    /// The bound address ("127.0.0.1:64000"), useful when port 0 was asked for.
    public let localAddress: String

    /// Binds `host:port`; `makeDelegate` is called for every accepted connection.
    public init(host: String, port: Int, limits: PGServerLimits = PGServerLimits(), threads: Int = System.coreCount,
                makeDelegate: @escaping @Sendable () -> any PGServerSessionDelegate) throws {
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, threads))
        ownsGroup = true
        let box = ServerBox()
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.backlog, value: 1024)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(ChannelOptions.autoRead, value: false)
            // One read per `read()`: once a connection is detached (DetachedCopyBoth.swift) the event
            // loop must not read again.
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 1)
            .childChannelOption(ChannelOptions.writeBufferWaterMark, value: .init(low: 256 << 10, high: 1 << 20))
            .childChannelInitializer { channel in
                let connection = PGServerConnection(channel: channel, delegate: makeDelegate(), limits: limits, server: box)
                return channel.pipeline.eventLoop.makeCompletedFuture {
                    let handler = PGServerHandler(connection: connection)
                    connection.handler = handler
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw PGError(.io, "cannot listen on \(host):\(port): \(error)")
        }
        localAddress = channel.localAddress.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)"
        box.server.withLock { $0 = self }
    }

    public var connectionCount: Int { openConnections.load(ordering: .relaxed) }

    /// Stops accepting and closes every connection.
    public func shutdown() {
        try? channel.close().wait()
        if ownsGroup { try? group.syncShutdownGracefully() }
    }
}

/// Lets connections reach their server's counters without a retain cycle at construction time.
final class ServerBox: Sendable {
    let server = Mutex<PGWireServer?>(nil)
}

/// One client connection. Thread-safe: the `send...` methods may be called from any thread.
public final class PGServerConnection: @unchecked Sendable {
    public let channel: Channel
    let delegate: any PGServerSessionDelegate
    let limits: PGServerLimits
    let server: ServerBox
    /// The peer, for messages ("127.0.0.1:53122").
    public let peer: String
    /// Startup parameters (user, database, application_name, options...).
    public internal(set) var parameters: [String: String] = [:]

    /// `detached`: a thread serves the COPY BOTH on its own descriptor (DetachedCopyBoth.swift).
    enum Mode { case startup, idle, copyBoth, copyOut, detached, closed }
    /// The handler (event-loop state; weak: the pipeline owns it).
    weak var handler: PGServerHandler?
    /// Event-loop state.
    var mode: Mode = .startup
    var readingPaused = false
    var waitingForSync = false
    /// Signalled when the channel becomes writable or closes (for threads streaming COPY OUT).
    private let writable = NSCondition()

    init(channel: Channel, delegate: any PGServerSessionDelegate, limits: PGServerLimits, server: ServerBox) {
        self.channel = channel
        self.delegate = delegate
        self.limits = limits
        self.server = server
        peer = channel.remoteAddress.map { "\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "unknown"
    }

    public var eventLoop: EventLoop { channel.eventLoop }
    public var isActive: Bool { channel.isActive }

    // MARK: Sending (any thread)

    public func send(_ buffer: ByteBuffer) {
        channel.writeAndFlush(buffer, promise: nil)
    }

    public func allocator() -> ByteBufferAllocator { channel.allocator }

    /// ErrorResponse with severity ERROR (or FATAL), SQLSTATE `code` and `message`.
    public func sendError(_ message: String, code: String = "XX000", fatal: Bool = false) {
        var b = channel.allocator.buffer(capacity: 64 + message.utf8.count)
        PGServerMessages.error(&b, message: message, code: code, severity: fatal ? "FATAL" : "ERROR")
        send(b)
    }

    public func sendCommandComplete(_ tag: String, readyForQuery: Bool = true) {
        var b = channel.allocator.buffer(capacity: 32)
        PGServerMessages.commandComplete(&b, tag)
        if readyForQuery { PGServerMessages.readyForQuery(&b) }
        send(b)
    }

    public func sendReadyForQuery() {
        var b = channel.allocator.buffer(capacity: 6)
        PGServerMessages.readyForQuery(&b)
        send(b)
    }

    /// A one-column text result (for small commands such as `identify`).
    public func sendRows(column: String, _ rows: [String], tag: String) {
        var b = channel.allocator.buffer(capacity: 64)
        PGServerMessages.rowDescription(&b, column: column)
        for r in rows { PGServerMessages.dataRow(&b, r) }
        PGServerMessages.commandComplete(&b, tag)
        PGServerMessages.readyForQuery(&b)
        send(b)
    }

    /// Enters COPY BOTH (pagestream). Call on the event loop.
    public func startCopyBoth() {
        mode = .copyBoth
        var b = channel.allocator.buffer(capacity: 8)
        b.writeInteger(UInt8(ascii: "W"))
        b.writeInteger(Int32(7))
        b.writeInteger(UInt8(0))
        b.writeInteger(Int16(0))
        send(b)
    }

    /// Enters COPY BOTH served by a thread of its own (DetachedCopyBoth.swift): `body` runs on a new
    /// thread with the connection's socket, and the event loop leaves the connection alone until the
    /// thread gives it back or closes it. Call on the event loop, from `query`, instead of
    /// `startCopyBoth`. False (nothing changed) when the socket cannot be taken over; the caller then
    /// serves the COPY BOTH on the event loop.
    public func detachForCopyBoth(stackBytes: Int = 1 << 20, _ body: @escaping @Sendable (PGDetachedCopyBoth) -> Void) -> Bool {
        guard mode == .idle, let handler, let local = channel.localAddress, let remote = channel.remoteAddress,
              let fd = SocketDescriptorSearch.descriptor(local: local, remote: remote) else { return false }
        let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
        guard copy >= 0 else { return false }
        _ = fcntl(copy, F_SETFL, fcntl(copy, F_GETFL) & ~O_NONBLOCK)
        mode = .detached
        let stream = PGDetachedCopyBoth(fd: copy, leftover: handler.takePending(), connection: self)
        let thread = Thread { body(stream) }
        thread.name = "pagestream \(peer)"
        thread.stackSize = stackBytes
        thread.start()
        return true
    }

    /// A detached COPY BOTH ended with CopyDone: the event loop takes the connection back, with the
    /// bytes the thread read past it. Any thread.
    func reattach(leftover: [UInt8]) {
        eventLoop.execute {
            guard self.mode == .detached, self.channel.isActive, let handler = self.handler else {
                self.channel.close(promise: nil)
                return
            }
            self.mode = .idle
            self.delegate.copyEnded(connection: self)
            handler.resume(leftover)
        }
    }

    /// Enters COPY OUT (backups). Call on the event loop.
    public func startCopyOut() {
        mode = .copyOut
        var b = channel.allocator.buffer(capacity: 8)
        b.writeInteger(UInt8(ascii: "H"))
        b.writeInteger(Int32(7))
        b.writeInteger(UInt8(0))
        b.writeInteger(Int16(0))
        send(b)
    }

    /// Writes one CopyData message with `bytes` and waits (blocking the calling thread, which must not
    /// be the event loop) while the socket's send buffer is above its high-water mark. Throws when the
    /// client has gone.
    public func sendCopyDataBlocking(_ bytes: UnsafeRawBufferPointer) throws {
        guard channel.isActive else { throw PGError(.connectionClosed, "client \(peer) disconnected") }
        var b = channel.allocator.buffer(capacity: bytes.count + 5)
        b.writeInteger(UInt8(ascii: "d"))
        b.writeInteger(Int32(bytes.count + 4))
        b.writeBytes(bytes)
        channel.writeAndFlush(b, promise: nil)
        writable.lock()
        defer { writable.unlock() }
        while channel.isActive && !channel.isWritable {
            _ = writable.wait(until: Date().addingTimeInterval(1))
        }
        guard channel.isActive else { throw PGError(.connectionClosed, "client \(peer) disconnected") }
    }

    /// Ends COPY OUT: CopyDone, CommandComplete, ReadyForQuery (any thread).
    public func finishCopyOut(tag: String) {
        var b = channel.allocator.buffer(capacity: 32)
        b.writeInteger(UInt8(ascii: "c"))
        b.writeInteger(Int32(4))
        PGServerMessages.commandComplete(&b, tag)
        PGServerMessages.readyForQuery(&b)
        send(b)
        eventLoop.execute { if self.mode == .copyOut { self.mode = .idle } }
    }

    /// Ends COPY OUT with an error (the client sees the partial stream, then the error).
    public func failCopyOut(_ message: String) {
        var b = channel.allocator.buffer(capacity: 64 + message.utf8.count)
        PGServerMessages.error(&b, message: message, code: "XX000", severity: "ERROR")
        PGServerMessages.readyForQuery(&b)
        send(b)
        eventLoop.execute { if self.mode == .copyOut { self.mode = .idle } }
    }

    /// Stops (true) or resumes (false) reading from the client. Any thread.
    public func setReadingPaused(_ paused: Bool) {
        eventLoop.execute {
            guard self.readingPaused != paused else { return }
            self.readingPaused = paused
            if !paused && self.mode != .closed && self.mode != .detached { self.channel.read() }
        }
    }

    /// Closes after what was sent has been written.
    public func close() {
        channel.close(promise: nil)
    }

    func writabilityChanged() {
        writable.lock()
        writable.broadcast()
        writable.unlock()
    }
}

/// Encoders of backend messages.
public enum PGServerMessages {
    public static func error(_ b: inout ByteBuffer, message: String, code: String, severity: String) {
        b.writeInteger(UInt8(ascii: "E"))
        let lengthIndex = b.writerIndex
        b.writeInteger(Int32(0))
        for (field, value) in [("S", severity), ("V", severity), ("C", code), ("M", message)] {
            b.writeInteger(UInt8(ascii: Unicode.Scalar(field)!))
            b.writeString(value.replacingOccurrences(of: "\0", with: ""))
            b.writeInteger(UInt8(0))
        }
        b.writeInteger(UInt8(0))
        b.setInteger(Int32(b.writerIndex - lengthIndex), at: lengthIndex)
    }

    public static func commandComplete(_ b: inout ByteBuffer, _ tag: String) {
        b.writeInteger(UInt8(ascii: "C"))
        b.writeInteger(Int32(4 + tag.utf8.count + 1))
        b.writeString(tag)
        b.writeInteger(UInt8(0))
    }

    public static func readyForQuery(_ b: inout ByteBuffer) {
        b.writeInteger(UInt8(ascii: "Z"))
        b.writeInteger(Int32(5))
        b.writeInteger(UInt8(ascii: "I"))
    }

    static func parameterStatus(_ b: inout ByteBuffer, _ name: String, _ value: String) {
        b.writeInteger(UInt8(ascii: "S"))
        b.writeInteger(Int32(4 + name.utf8.count + 1 + value.utf8.count + 1))
        b.writeString(name)
        b.writeInteger(UInt8(0))
        b.writeString(value)
        b.writeInteger(UInt8(0))
    }

    static func rowDescription(_ b: inout ByteBuffer, column: String) {
        b.writeInteger(UInt8(ascii: "T"))
        b.writeInteger(Int32(4 + 2 + column.utf8.count + 1 + 18))
        b.writeInteger(Int16(1))
        b.writeString(column)
        b.writeInteger(UInt8(0))
        b.writeInteger(Int32(0))  // table
        b.writeInteger(Int16(0))  // column
        b.writeInteger(Int32(25))  // text
        b.writeInteger(Int16(-1))
        b.writeInteger(Int32(-1))
        b.writeInteger(Int16(0))
    }

    static func dataRow(_ b: inout ByteBuffer, _ value: String) {
        b.writeInteger(UInt8(ascii: "D"))
        b.writeInteger(Int32(4 + 2 + 4 + value.utf8.count))
        b.writeInteger(Int16(1))
        b.writeInteger(Int32(value.utf8.count))
        b.writeString(value)
    }
}

/// Frames messages and drives the connection's protocol state on the event loop.
final class PGServerHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let connection: PGServerConnection
    private var pending: ByteBuffer?
    private var counted = false
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    /// The bytes read and not processed yet (for a connection being detached).
    func takePending() -> [UInt8] {
        defer { pending = nil }
        return pending.map { Array($0.readableBytesView) } ?? []
    }

    /// Back from a detached COPY BOTH: process what the thread read past it, then read on.
    func resume(_ leftover: [UInt8]) {
        guard let context else { return }
        if !leftover.isEmpty {
            var b = context.channel.allocator.buffer(capacity: leftover.count)
            b.writeBytes(leftover)
            pending = b
            processPending(context)
        }
        if !connection.readingPaused && connection.mode != .closed && connection.mode != .detached { context.read() }
    }

    init(connection: PGServerConnection) {
        self.connection = connection
    }

    func channelActive(context: ChannelHandlerContext) {
        if let server = connection.server.server.withLock({ $0 }) {
            let n = server.openConnections.wrappingAdd(1, ordering: .relaxed).newValue
            counted = true
            if n > connection.limits.maxConnections {
                fatal(context, "too many connections to the page server (limit \(connection.limits.maxConnections))", code: "53300")
                return
            }
        }
        context.read()
    }

    func channelInactive(context: ChannelHandlerContext) {
        if counted, let server = connection.server.server.withLock({ $0 }) {
            server.openConnections.wrappingSubtract(1, ordering: .relaxed)
            counted = false
        }
        let wasCopyBoth = connection.mode == .copyBoth
        connection.mode = .closed
        connection.writabilityChanged()
        if wasCopyBoth { connection.delegate.copyEnded(connection: connection) }
        connection.delegate.closed(connection: connection)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        connection.writabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard connection.mode != .detached else {
            // Invariant 1 of DetachedCopyBoth.swift: the thread owns the input now. (One read per
            // `read()` and none asked for after the detach, so this does not happen.)
            context.close(promise: nil)
            return
        }
        var incoming = unwrapInboundIn(data)
        if pending == nil || pending!.readableBytes == 0 {
            pending = incoming
        } else {
            pending!.writeBuffer(&incoming)
        }
        processPending(context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if connection.mode == .copyBoth { connection.delegate.readComplete(connection: connection) }
        if !connection.readingPaused && connection.mode != .closed && connection.mode != .detached { context.read() }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }

    private func fatal(_ context: ChannelHandlerContext, _ message: String, code: String = "08P01") {
        var b = context.channel.allocator.buffer(capacity: 64 + message.utf8.count)
        PGServerMessages.error(&b, message: message, code: code, severity: "FATAL")
        connection.mode = .closed
        context.writeAndFlush(wrapOutboundOut(b)).whenComplete { _ in context.close(promise: nil) }
    }

    private func processPending(_ context: ChannelHandlerContext) {
        while var buf = pending, connection.mode != .closed && connection.mode != .detached {
            if connection.mode == .startup {
                guard let length: Int32 = buf.getInteger(at: buf.readerIndex) else { return }
                guard length >= 8 && length <= 10_000 else {
                    fatal(context, "invalid startup packet length \(length)")
                    return
                }
                guard buf.readableBytes >= Int(length) else { return }
                var packet = buf.readSlice(length: Int(length))!
                pending = buf
                handleStartup(context, &packet)
                continue
            }
            guard buf.readableBytes >= 5 else { return }
            let type: UInt8 = buf.getInteger(at: buf.readerIndex)!
            let length: Int32 = buf.getInteger(at: buf.readerIndex + 1)!
            guard length >= 4 && Int(length) <= connection.limits.maxMessageBytes else {
                fatal(context, "invalid message length \(length) for message type \(printable(type)) (limit \(connection.limits.maxMessageBytes) bytes)")
                return
            }
            guard buf.readableBytes >= 1 + Int(length) else { return }
            buf.moveReaderIndex(forwardBy: 5)
            let body = buf.readSlice(length: Int(length) - 4)!
            pending = buf
            handleMessage(context, type, body)
        }
    }

    private func printable(_ t: UInt8) -> String {
        (0x20..<0x7F).contains(t) ? "'\(Character(UnicodeScalar(t)))'" : "\(t)"
    }

    private func handleStartup(_ context: ChannelHandlerContext, _ packet: inout ByteBuffer) {
        packet.moveReaderIndex(forwardBy: 4)
        let code: Int32 = packet.readInteger() ?? 0
        switch code {
        case 80877103, 80877104:  // SSLRequest, GSSENCRequest: not supported, continue in plain text.
            var b = context.channel.allocator.buffer(capacity: 1)
            b.writeInteger(UInt8(ascii: "N"))
            context.writeAndFlush(wrapOutboundOut(b), promise: nil)
        case 80877102:  // CancelRequest: nothing to cancel.
            connection.mode = .closed
            context.close(promise: nil)
        case 196608:
            var params: [String: String] = [:]
            while let name = packet.readNullTerminatedString(), !name.isEmpty {
                guard let value = packet.readNullTerminatedString() else {
                    fatal(context, "malformed startup packet: parameter \(name) has no value")
                    return
                }
                params[name] = value
            }
            connection.parameters = params
            do {
                try connection.delegate.authenticate(user: params["user"] ?? "", parameters: params, connection: connection)
            } catch {
                fatal(context, "\(error)", code: "28000")
                return
            }
            var b = context.channel.allocator.buffer(capacity: 256)
            b.writeInteger(UInt8(ascii: "R"))
            b.writeInteger(Int32(8))
            b.writeInteger(Int32(0))
            for (n, v) in [("server_version", "15.0 (pageserver)"), ("server_encoding", "UTF8"), ("client_encoding", "UTF8"),
                           ("integer_datetimes", "on"), ("DateStyle", "ISO, MDY"), ("standard_conforming_strings", "on")] {
                PGServerMessages.parameterStatus(&b, n, v)
            }
            b.writeInteger(UInt8(ascii: "K"))
            b.writeInteger(Int32(12))
            b.writeInteger(Int32(truncatingIfNeeded: ObjectIdentifier(connection).hashValue))
            b.writeInteger(Int32(0))
            PGServerMessages.readyForQuery(&b)
            connection.mode = .idle
            context.writeAndFlush(wrapOutboundOut(b), promise: nil)
        default:
            fatal(context, "unsupported frontend protocol \(code >> 16).\(code & 0xFFFF): this server speaks 3.0")
        }
    }

    private func handleMessage(_ context: ChannelHandlerContext, _ type: UInt8, _ body: ByteBuffer) {
        var body = body
        switch (connection.mode, type) {
        case (_, UInt8(ascii: "X")):
            connection.mode = .closed
            context.close(promise: nil)
        case (.idle, UInt8(ascii: "Q")):
            guard let text = body.readNullTerminatedString() else {
                connection.sendError("malformed Query message: no terminating NUL", code: "08P01")
                connection.sendReadyForQuery()
                return
            }
            connection.waitingForSync = false  // a simple query ends any extended-protocol error state
            connection.delegate.query(text, connection: connection)
        case (.idle, UInt8(ascii: "S")):
            if connection.waitingForSync {
                connection.waitingForSync = false
                connection.sendReadyForQuery()
            }
        case (.idle, UInt8(ascii: "H")):
            break
        case (.idle, UInt8(ascii: "P")), (.idle, UInt8(ascii: "B")), (.idle, UInt8(ascii: "D")), (.idle, UInt8(ascii: "E")), (.idle, UInt8(ascii: "C")):
            if !connection.waitingForSync {
                connection.waitingForSync = true
                connection.sendError("the extended query protocol is not supported by the page server; use simple queries", code: "0A000")
            }
        case (.copyBoth, UInt8(ascii: "d")):
            connection.delegate.copyData(body, connection: connection)
        case (.copyBoth, UInt8(ascii: "c")), (.copyBoth, UInt8(ascii: "f")):
            connection.mode = .idle
            connection.delegate.copyEnded(connection: connection)
            connection.sendCommandComplete("COPY 0")
        case (.copyOut, _):
            // The client speaks while we stream: only Terminate matters (handled above).
            break
        default:
            connection.sendError("unexpected message \(printable(type)) in state \(connection.mode)", code: "08P01")
            if connection.mode == .idle { connection.sendReadyForQuery() }
        }
    }
}
