#if canImport(Glibc)
import Glibc
#endif

/// A minimal blocking HTTP/1.1 client for the page server's management API: GET and PUT over one
/// keep-alive connection, bodies framed by Content-Length (what the server sends). Enough for tools;
/// not a general client.
final class HTTPClient {
    struct Response {
        var status: Int
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    let host: String
    let port: UInt16
    private var fd: Int32 = -1
    private var buffer: [UInt8] = []

    init(address: String) throws {
        guard let colon = address.lastIndex(of: ":"), let p = UInt16(address[address.index(after: colon)...]) else {
            throw Failure(description: "'\(address)' is not HOST:PORT")
        }
        host = String(address[..<colon])
        port = p
    }

    deinit { if fd >= 0 { close(fd) } }

    private func connect() throws {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &result) == 0, let first = result else {
            throw Failure(description: "cannot resolve \(host)")
        }
        defer { freeaddrinfo(result) }
        var ai: UnsafeMutablePointer<addrinfo>? = first
        while let a = ai {
            let s = socket(a.pointee.ai_family, a.pointee.ai_socktype, a.pointee.ai_protocol)
            if s >= 0 {
                if Glibc.connect(s, a.pointee.ai_addr, a.pointee.ai_addrlen) == 0 {
                    var one: Int32 = 1
                    setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
                    fd = s
                    buffer.removeAll()
                    return
                }
                close(s)
            }
            ai = a.pointee.ai_next
        }
        throw Failure(description: "cannot connect to \(host):\(port): \(String(cString: strerror(errno)))")
    }

    func get(_ path: String) throws -> Response { try request("GET", path) }
    func put(_ path: String) throws -> Response { try request("PUT", path) }

    func request(_ method: String, _ path: String) throws -> Response {
        for attempt in 0..<2 {
            if fd < 0 { try connect() }
            do {
                return try exchange(method, path)
            } catch let e as Failure where attempt == 0 && e.description.hasPrefix("connection closed") {
                close(fd)
                fd = -1
            }
        }
        throw Failure(description: "connection closed by \(host):\(port)")
    }

    private func exchange(_ method: String, _ path: String) throws -> Response {
        let head = "\(method) \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
        var bytes = Array(head.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeMutableBytes { send(fd, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(description: "connection closed while sending") }
            sent += n
        }
        bytes.removeAll()
        // Headers.
        var headerEnd: Int?
        while headerEnd == nil {
            if let r = findCRLFCRLF() { headerEnd = r; break }
            try fill()
        }
        let headerText = String(decoding: buffer[0..<headerEnd!], as: UTF8.self)
        buffer.removeFirst(headerEnd! + 4)
        let lines = headerText.split(separator: "\r\n")
        guard let statusLine = lines.first, statusLine.hasPrefix("HTTP/1."),
              let status = Int(statusLine.split(separator: " ").dropFirst().first ?? "") else {
            throw Failure(description: "malformed HTTP response from \(host):\(port)")
        }
        var length = 0
        for line in lines.dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "content-length" {
                length = Int(parts[1].filter { $0 != " " && $0 != "\t" }) ?? 0
            }
        }
        while buffer.count < length { try fill() }
        let body = Array(buffer[0..<length])
        buffer.removeFirst(length)
        return Response(status: status, body: body)
    }

    private func findCRLFCRLF() -> Int? {
        guard buffer.count >= 4 else { return nil }
        for i in 0...(buffer.count - 4) where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
            return i
        }
        return nil
    }

    private func fill() throws {
        var chunk = [UInt8](repeating: 0, count: 65536)
        let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n > 0 else { throw Failure(description: "connection closed by \(host):\(port)") }
        buffer.append(contentsOf: chunk[0..<n])
    }
}
