// A libpq connection taken off the event loop for the rest of a COPY BOTH: one thread reads and writes
// its socket with plain blocking calls (the page service's pagestream, where every request is a round
// trip and the event loop's wake-ups, pipeline and buffer hops cost as much as the lookup itself).
//
// Design
// ======
// `PGServerConnection.detachForCopyBoth` (on the event loop, right after CopyBothResponse) stops the
// handler from reading, finds the channel's socket among the process's descriptors (the one whose
// local and peer addresses are the channel's), `dup`s it and hands the duplicate, in blocking mode,
// with the bytes the handler had already read past the query, to a `PGDetachedCopyBoth` on a new
// thread. The channel stays open and registered but idle (nothing asks it to read or write) until the
// thread is done: on CopyDone the thread answers CommandComplete + ReadyForQuery and gives the socket
// back to the handler with whatever it read beyond (`reattach`); on Terminate, end of stream, a
// malformed message or a write error it closes both.
//
// Invariants:
// 1. While detached, only the thread reads or writes the socket; the event loop does neither (the
//    handler's mode is `.detached`, in which it neither processes input nor calls `read()`).
// 2. The thread works on its own duplicate descriptor, so the channel closing meanwhile (a peer reset
//    seen by the event loop) never leaves the thread with a descriptor number that was reused.
// 3. Framing limits are the handler's: a message longer than `maxMessageBytes` gets a FATAL
//    ErrorResponse naming its length and ends the connection.

import Foundation
import Glibc
import NIOCore

/// What a detached COPY BOTH reads from the client.
public enum DetachedMessage {
    /// One CopyData payload (valid until the next call that reads).
    case copyData(UnsafeRawBufferPointer)
    /// CopyDone or CopyFail: COPY BOTH ends, the connection goes back to idle.
    case copyDone
    /// Terminate ('X') or the end of the stream.
    case end
    /// Any other frontend message (its type), which COPY BOTH does not accept.
    case unexpected(UInt8)
}

/// The blocking side of a detached COPY BOTH. Used by its one thread only.
public final class PGDetachedCopyBoth: @unchecked Sendable {
    public let peer: String
    private var fd: Int32
    private let connection: PGServerConnection
    private let maxMessageBytes: Int
    /// Bytes read and not yet consumed: input[inputStart..<inputEnd] of a buffer of inputCapacity.
    private var input: UnsafeMutableRawPointer
    private var inputCapacity: Int
    private var inputStart = 0
    private var inputEnd = 0
    /// Bytes of the message handed out last (consumed at the next read).
    private var pendingConsume = 0
    private var output: [UInt8] = []
    private var finished = false

    init(fd: Int32, leftover: [UInt8], connection: PGServerConnection) {
        self.fd = fd
        self.connection = connection
        self.peer = connection.peer
        self.maxMessageBytes = connection.limits.maxMessageBytes
        inputCapacity = max(128 << 10, leftover.count * 2)
        input = .allocate(byteCount: inputCapacity, alignment: 16)
        leftover.withUnsafeBytes { if let b = $0.baseAddress { input.copyMemory(from: b, byteCount: $0.count) } }
        inputEnd = leftover.count
        output.reserveCapacity(64 << 10)
        // CopyBothResponse: overall format 0, no columns. The thread's first flush sends it.
        output += [UInt8(ascii: "W"), 0, 0, 0, 7, 0, 0, 0]
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
        input.deallocate()
    }

    /// Whether a whole message is buffered (reading it will not block).
    public var hasBufferedMessage: Bool {
        consumePending()
        let available = inputEnd - inputStart
        guard available >= 5 else { return false }
        let length = Int(Int32(bigEndian: input.loadUnaligned(fromByteOffset: inputStart + 1, as: Int32.self)))
        return length < 4 || length > maxMessageBytes || available >= 1 + length
    }

    /// The next message. With `wait` false, nil when no whole message is buffered and the socket has
    /// nothing more right now. Throws (after sending FATAL where the client should learn why) on a
    /// malformed frame or a socket error; the caller then calls `close`.
    public func next(wait: Bool) throws -> DetachedMessage? {
        consumePending()
        while true {
            let available = inputEnd - inputStart
            if available >= 5 {
                let type = input.load(fromByteOffset: inputStart, as: UInt8.self)
                let length = Int(Int32(bigEndian: input.loadUnaligned(fromByteOffset: inputStart + 1, as: Int32.self)))
                guard length >= 4 && length <= maxMessageBytes else {
                    let text = "invalid message length \(length) for message type \(Self.printable(type)) (limit \(maxMessageBytes) bytes)"
                    sendFatal(text)
                    throw PGError(.protocolViolation, text)
                }
                if available >= 1 + length {
                    pendingConsume = 1 + length
                    switch type {
                    case UInt8(ascii: "d"):
                        return .copyData(UnsafeRawBufferPointer(start: input + inputStart + 5, count: length - 4))
                    case UInt8(ascii: "c"), UInt8(ascii: "f"): return .copyDone
                    case UInt8(ascii: "X"): return .end
                    default: return .unexpected(type)
                    }
                }
            }
            guard try fill(wait: wait) else { return wait ? .end : nil }
        }
    }

    /// Appends one CopyData message to the output (sent by `flush`): `body` appends its payload.
    public func appendCopyData(_ body: (inout [UInt8]) -> Void) {
        output.append(UInt8(ascii: "d"))
        let at = output.count
        output.append(contentsOf: [0, 0, 0, 0])
        body(&output)
        let length = UInt32(output.count - at)
        output.withUnsafeMutableBytes { $0.storeBytes(of: length.bigEndian, toByteOffset: at, as: UInt32.self) }
    }

    /// An ErrorResponse (severity ERROR) appended to the output.
    public func appendError(_ message: String, code: String) {
        var b = ByteBufferAllocator().buffer(capacity: 64 + message.utf8.count)
        PGServerMessages.error(&b, message: message, code: code, severity: "ERROR")
        output.append(contentsOf: b.readableBytesView)
    }

    /// Writes everything appended so far. Throws when the client has gone.
    public func flush() throws {
        guard !output.isEmpty else { return }
        defer { output.removeAll(keepingCapacity: true) }
        try output.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = send(fd, raw.baseAddress! + offset, raw.count - offset, Int32(MSG_NOSIGNAL))
                if n > 0 { offset += n; continue }
                if n < 0 && errno == EINTR { continue }
                throw PGError.errno("could not write to \(peer)", n < 0 ? errno : EPIPE)
            }
        }
    }

    /// After CopyDone: CommandComplete and ReadyForQuery, then the socket goes back to the event loop
    /// with the bytes read past the CopyDone. If that fails, the connection is closed.
    public func finishCopyBoth() {
        consumePending()
        var b = ByteBufferAllocator().buffer(capacity: 32)
        PGServerMessages.commandComplete(&b, "COPY 0")
        PGServerMessages.readyForQuery(&b)
        output.append(contentsOf: b.readableBytesView)
        do { try flush() } catch {
            close()
            return
        }
        finished = true
        let rest = Array(UnsafeRawBufferPointer(start: input + inputStart, count: inputEnd - inputStart))
        // Back to non-blocking for the event loop (the flag belongs to the shared open file).
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        Glibc.close(fd)
        fd = -1
        connection.reattach(leftover: rest)
    }

    /// Sends a FATAL ErrorResponse (best effort) before the connection ends.
    public func sendFatal(_ message: String, code: String = "08P01") {
        var b = ByteBufferAllocator().buffer(capacity: 64 + message.utf8.count)
        PGServerMessages.error(&b, message: message, code: code, severity: "FATAL")
        output.append(contentsOf: b.readableBytesView)
        try? flush()
    }

    /// Ends the connection: the duplicate is closed, and the channel with it.
    public func close() {
        guard !finished else { return }
        finished = true
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
        connection.close()
    }

    // MARK: - Input

    private func consumePending() {
        inputStart += pendingConsume
        pendingConsume = 0
        if inputStart == inputEnd {
            inputStart = 0
            inputEnd = 0
        }
    }

    /// Reads what the socket has (blocking when `wait`). False at the end of the stream, or when not
    /// waiting and nothing is there.
    private func fill(wait: Bool) throws -> Bool {
        // Room at the tail: move the unconsumed bytes to the front, and grow for a long message.
        if inputCapacity - inputEnd < 16 << 10 && inputStart > 0 {
            input.copyMemory(from: input + inputStart, byteCount: inputEnd - inputStart)
            inputEnd -= inputStart
            inputStart = 0
        }
        if inputCapacity - inputEnd < 16 << 10 {
            let bigger = UnsafeMutableRawPointer.allocate(byteCount: inputCapacity * 2, alignment: 16)
            bigger.copyMemory(from: input, byteCount: inputEnd)
            input.deallocate()
            input = bigger
            inputCapacity *= 2
        }
        while true {
            let n = recv(fd, input + inputEnd, inputCapacity - inputEnd, wait ? 0 : Int32(MSG_DONTWAIT))
            if n > 0 {
                inputEnd += n
                return true
            }
            if n == 0 { return false }
            let error = errno
            if error == EINTR { continue }
            if !wait && (error == EAGAIN || error == EWOULDBLOCK) { return false }
            throw PGError.errno("could not read from \(peer)", error)
        }
    }

    /// A message type for error messages: 'X' when printable, else its number.
    public static func printable(_ t: UInt8) -> String {
        (0x20..<0x7F).contains(t) ? "'\(Character(UnicodeScalar(t)))'" : "\(t)"
    }
}

/// Finding the descriptor of a channel's socket: the open descriptor whose local and peer addresses
/// are the channel's (a connected TCP socket is unique by that pair).
enum SocketDescriptorSearch {
    static func descriptor(local: SocketAddress, remote: SocketAddress) -> Int32? {
        guard let localIP = local.ipAddress, let localPort = local.port, let remoteIP = remote.ipAddress, let remotePort = remote.port,
              let dir = opendir("/proc/self/fd") else { return nil }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard let fd = Int32(name), fd > 2 else { continue }
            guard let l = address(fd, peer: false), l.ip == localIP, l.port == localPort,
                  let r = address(fd, peer: true), r.ip == remoteIP, r.port == remotePort else { continue }
            return fd
        }
        return nil
    }

    private static func address(_ fd: Int32, peer: Bool) -> (ip: String, port: Int)? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { peer ? getpeername(fd, $0, &length) : getsockname(fd, $0, &length) }
        }
        guard rc == 0 else { return nil }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN) + 1)
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a -> (String, Int)? in
                    var addr = a.pointee.sin_addr
                    guard inet_ntop(AF_INET, &addr, &text, socklen_t(text.count)) != nil else { return nil }
                    return (String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), Int(UInt16(bigEndian: a.pointee.sin_port)))
                }
            }
        case AF_INET6:
            return withUnsafePointer(to: &storage) { p in
                p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a -> (String, Int)? in
                    var addr = a.pointee.sin6_addr
                    guard inet_ntop(AF_INET6, &addr, &text, socklen_t(text.count)) != nil else { return nil }
                    return (String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self), Int(UInt16(bigEndian: a.pointee.sin6_port)))
                }
            }
        default:
            return nil
        }
    }
}
