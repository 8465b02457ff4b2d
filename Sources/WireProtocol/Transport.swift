// The byte pipe under a connection: a TCP or Unix-domain socket in non-blocking mode, driven with
// poll(2) so that every wait ends at a deadline. The calls block the calling thread (the page server
// runs one receiver thread per timeline); nothing here spawns threads or uses an event loop.
//
// The seam `ByteTransport` exists so that tests can feed the protocol code from a script, one byte per
// read, without a server.

import Glibc

/// A point in time on the monotonic clock, after which a wait gives up.
struct Deadline: Sendable {
    /// Nanoseconds on CLOCK_MONOTONIC; UInt64.max means never.
    let nanoseconds: UInt64

    static let never = Deadline(nanoseconds: .max)

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
    }

    /// The deadline `seconds` from now; a negative or zero value means "already passed", infinity never.
    static func after(seconds: Double) -> Deadline {
        guard seconds.isFinite else { return .never }
        let delta = seconds <= 0 ? 0 : UInt64(min(seconds, 1e9) * 1e9)
        return Deadline(nanoseconds: now() &+ delta)
    }

    var hasPassed: Bool { nanoseconds != .max && Deadline.now() >= nanoseconds }

    /// Milliseconds left, rounded up, for poll(2): -1 for never, 0 when passed.
    var pollMilliseconds: Int32 {
        if nanoseconds == .max { return -1 }
        let now = Deadline.now()
        if now >= nanoseconds { return 0 }
        let ms = (nanoseconds - now + 999_999) / 1_000_000
        return Int32(min(ms, UInt64(Int32.max)))
    }
}

/// A bidirectional byte stream with deadlines.
protocol ByteTransport: AnyObject {
    /// Reads at least one byte into `buffer`, waiting at most until `deadline`. Returns the count, 0 at
    /// the end of the stream, nil when the deadline passed first.
    func read(into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws -> Int?
    /// Writes all of `bytes`, or throws (timeout when the deadline passes first).
    func write(_ bytes: UnsafeRawBufferPointer, deadline: Deadline) throws
    /// Releases the socket. Idempotent.
    func close()
}

/// A connected stream socket.
final class SocketTransport: ByteTransport {
    private var fd: Int32
    /// "host:port" (or the socket path) for error messages.
    let peer: String

    /// Connects to `host` (a name, an address, or a Unix-socket directory starting with '/') and
    /// `port`, trying each resolved address in turn until one answers before the deadline.
    init(host: String, port: Int, deadline: Deadline) throws {
        if host.hasPrefix("/") {
            let path = host + "/.s.PGSQL.\(port)"
            peer = path
            fd = try Self.connectUnix(path: path, deadline: deadline)
        } else {
            peer = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
            fd = try Self.connectTCP(host: host, port: port, deadline: deadline, peer: peer)
        }
    }

    deinit { close() }

    func close() {
        if fd >= 0 {
            _ = Glibc.close(fd)
            fd = -1
        }
    }

    /// The last read left the socket empty (it returned less than asked, or nothing): the next one
    /// waits for data first instead of trying a read that would fail (one system call fewer per
    /// round trip for a client that sends, then waits for the answer).
    private var drained = false

    func read(into buffer: UnsafeMutableRawBufferPointer, deadline: Deadline) throws -> Int? {
        guard fd >= 0 else { throw PGError(.invalidState, "read from a closed connection to \(peer)") }
        while true {
            if drained {
                guard try wait(for: Int16(POLLIN), deadline: deadline) else { return nil }
            }
            let n = recv(fd, buffer.baseAddress, buffer.count, 0)
            if n >= 0 {
                drained = n < buffer.count
                return n
            }
            let error = errno
            if error == EINTR { continue }
            guard error == EAGAIN || error == EWOULDBLOCK else {
                throw PGError.errno("could not read from \(peer)", error)
            }
            drained = true
        }
    }

    func write(_ bytes: UnsafeRawBufferPointer, deadline: Deadline) throws {
        guard fd >= 0 else { throw PGError(.invalidState, "write to a closed connection to \(peer)") }
        var offset = 0
        while offset < bytes.count {
            // MSG_NOSIGNAL: a peer that went away gives EPIPE, not a process-killing SIGPIPE.
            let n = send(fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n >= 0 { offset += n; continue }
            let error = errno
            if error == EINTR { continue }
            guard error == EAGAIN || error == EWOULDBLOCK else {
                throw PGError.errno("could not write to \(peer)", error)
            }
            guard try wait(for: Int16(POLLOUT), deadline: deadline) else {
                throw PGError(.timeout, "timed out writing to \(peer)")
            }
        }
    }

    /// Waits until the socket is ready for `events`; false when the deadline passed first.
    private func wait(for events: Int16, deadline: Deadline) throws -> Bool {
        try Self.poll(fd, events: events, deadline: deadline, peer: peer)
    }

    private static func poll(_ fd: Int32, events: Int16, deadline: Deadline, peer: String) throws -> Bool {
        while true {
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let timeout = deadline.pollMilliseconds
            let result = Glibc.poll(&entry, 1, timeout)
            if result > 0 { return true }  // Ready, or an error/hang-up that the next call reports.
            if result == 0 {
                if deadline.hasPassed { return false }
                continue
            }
            if errno == EINTR { continue }
            throw PGError.errno("poll on the connection to \(peer) failed")
        }
    }

    // MARK: - Connecting

    private static func makeNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }

    /// Finishes a non-blocking connect(2): waits for writability, then reads SO_ERROR.
    private static func finishConnect(_ fd: Int32, result: Int32, deadline: Deadline, peer: String) throws {
        if result == 0 { return }
        let error = errno
        guard error == EINPROGRESS || error == EINTR || error == EAGAIN else {
            throw PGError.errno("could not connect to \(peer)", error)
        }
        guard try poll(fd, events: Int16(POLLOUT), deadline: deadline, peer: peer) else {
            throw PGError(.timeout, "timed out connecting to \(peer)")
        }
        var soError: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        guard getsockopt(fd, SOL_SOCKET, SO_ERROR, &soError, &length) == 0 else {
            throw PGError.errno("could not connect to \(peer)")
        }
        if soError != 0 { throw PGError.errno("could not connect to \(peer)", soError) }
    }

    private static func connectTCP(host: String, port: Int, deadline: Deadline, peer: String) throws -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_ADDRCONFIG
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0, let first = list else {
            let reason = status == EAI_SYSTEM ? String(cString: strerror(errno)) : String(cString: gai_strerror(status))
            throw PGError(.io, "could not resolve host \"\(host)\": \(reason)")
        }
        defer { freeaddrinfo(list) }
        var lastError = PGError(.io, "could not connect to \(peer): no address")
        var entry: UnsafeMutablePointer<addrinfo>? = first
        while let info = entry {
            entry = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            if fd < 0 { lastError = PGError.errno("could not create a socket for \(peer)"); continue }
            makeNonBlocking(fd)
            var one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, socklen_t(MemoryLayout<Int32>.size))
            do {
                let result = Glibc.connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen)
                try finishConnect(fd, result: result, deadline: deadline, peer: peer)
                return fd
            } catch let error as PGError {
                _ = Glibc.close(fd)
                lastError = error
                if error.code == .timeout { throw error }
            }
        }
        throw lastError
    }

    private static func connectUnix(path: String, deadline: Deadline) throws -> Int32 {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard path.utf8.count < capacity else {
            throw PGError(.invalidArgument, "Unix socket path \"\(path)\" is longer than \(capacity - 1) bytes")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: path.utf8)
        }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw PGError.errno("could not create a socket for \(path)") }
        makeNonBlocking(fd)
        do {
            let result = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
                }
            }
            try finishConnect(fd, result: result, deadline: deadline, peer: path)
            return fd
        } catch {
            _ = Glibc.close(fd)
            throw error
        }
    }
}
