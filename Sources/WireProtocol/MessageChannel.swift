// Message framing of protocol version 3.
//
//   backend message:   [type: u8] [length: i32 BE, counts itself and the body] [body: length-4 bytes]
//   frontend message:  the same; only the startup message has no type byte
//   integers are big-endian; strings are NUL-terminated UTF-8 ("cstring")
//
// `MessageChannel` owns one read buffer. A message is handed to its consumer as a borrowed view into
// that buffer (no copy); the view is valid only inside the consumer's closure. Bytes of a message that
// has not fully arrived stay buffered across calls, so a read that times out loses nothing.

import Glibc

/// A cursor over the body of one backend message. Every read checks the bounds: a short body is a
/// protocol violation, never a crash.
struct MessageReader {
    let type: UInt8
    let body: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(type: UInt8, body: UnsafeRawBufferPointer) {
        self.type = type
        self.body = body
    }

    var remainingCount: Int { body.count - offset }
    var isAtEnd: Bool { offset == body.count }

    private func short(_ what: String) -> PGError {
        PGError(.protocolViolation, "server message '\(Character(UnicodeScalar(type)))' is too short to hold its \(what)")
    }

    mutating func uint8() throws -> UInt8 {
        guard remainingCount >= 1 else { throw short("bytes") }
        defer { offset += 1 }
        return body[offset]
    }

    mutating func int16() throws -> Int16 {
        guard remainingCount >= 2 else { throw short("16-bit field") }
        defer { offset += 2 }
        return Int16(bigEndian: body.loadUnaligned(fromByteOffset: offset, as: Int16.self))
    }

    mutating func int32() throws -> Int32 {
        guard remainingCount >= 4 else { throw short("32-bit field") }
        defer { offset += 4 }
        return Int32(bigEndian: body.loadUnaligned(fromByteOffset: offset, as: Int32.self))
    }

    mutating func uint64() throws -> UInt64 {
        guard remainingCount >= 8 else { throw short("64-bit field") }
        defer { offset += 8 }
        return UInt64(bigEndian: body.loadUnaligned(fromByteOffset: offset, as: UInt64.self))
    }

    mutating func cString() throws -> String {
        let rest = UnsafeRawBufferPointer(rebasing: body[offset...])
        guard let nul = rest.firstIndex(of: 0) else { throw short("string terminator") }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: rest[..<nul]), as: UTF8.self)
        offset += nul + 1
        return text
    }

    mutating func bytes(_ count: Int) throws -> UnsafeRawBufferPointer {
        guard count >= 0, remainingCount >= count else { throw short("\(count)-byte field") }
        defer { offset += count }
        return UnsafeRawBufferPointer(rebasing: body[offset..<(offset + count)])
    }

    mutating func rest() -> UnsafeRawBufferPointer {
        defer { offset = body.count }
        return UnsafeRawBufferPointer(rebasing: body[offset...])
    }

    /// The fields of an ErrorResponse or NoticeResponse: (code byte, cstring)*, then a zero byte.
    mutating func serverMessage() throws -> ServerMessage {
        var fields: [UInt8: String] = [:]
        while true {
            let code = try uint8()
            if code == 0 { break }
            fields[code] = try cString()
        }
        return ServerMessage(fields: fields)
    }
}

/// Builds one frontend message; `finish()` fills in the length.
struct OutgoingMessage {
    private(set) var bytes: [UInt8]
    private let lengthOffset: Int

    /// A message with a type byte, or (type nil) the startup message, which has none.
    init(type: UInt8?) {
        bytes = []
        bytes.reserveCapacity(64)
        if let type { bytes.append(type) }
        lengthOffset = bytes.count
        bytes.append(contentsOf: [0, 0, 0, 0])
    }

    mutating func uint8(_ value: UInt8) { bytes.append(value) }
    mutating func int16(_ value: Int16) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func int32(_ value: Int32) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func uint64(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func int64(_ value: Int64) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
    mutating func cString(_ text: String) {
        bytes.append(contentsOf: text.utf8)
        bytes.append(0)
    }
    mutating func raw(_ data: some Sequence<UInt8>) { bytes.append(contentsOf: data) }

    func finish() -> [UInt8] {
        var out = bytes
        let length = Int32(out.count - lengthOffset).bigEndian
        withUnsafeBytes(of: length) { raw in
            for i in 0..<4 { out[lengthOffset + i] = raw[i] }
        }
        return out
    }
}

/// Reads whole backend messages from a transport and writes frontend messages to it.
final class MessageChannel {
    /// Room for a full 128 KiB XLogData message plus the next one's start, so streaming rarely slides bytes.
    static let initialBufferBytes = 256 << 10

    let transport: any ByteTransport
    /// Used in error messages ("host:port").
    let peer: String
    /// The largest body accepted; a larger length field is treated as a protocol violation (it is far
    /// more likely a desynchronised stream than a real message).
    let maxMessageBytes: Int

    private var storage: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0

    init(transport: any ByteTransport, peer: String, maxMessageBytes: Int) {
        self.transport = transport
        self.peer = peer
        self.maxMessageBytes = maxMessageBytes
        storage = .allocate(byteCount: Self.initialBufferBytes, alignment: 16)
    }

    deinit { storage.deallocate() }

    /// Waits for the next complete message and lends it to `consume`. Returns nil, keeping any partial
    /// message buffered, when the deadline passes first.
    func withNextMessage<R>(deadline: Deadline, _ consume: (inout MessageReader) throws -> R) throws -> R? {
        guard try fill(atLeast: 5, deadline: deadline) else { return nil }
        let type = storage[start]
        let length = Int(UInt32(bigEndian: UnsafeRawBufferPointer(storage).loadUnaligned(fromByteOffset: start + 1, as: UInt32.self)))
        guard length >= 4, length - 4 <= maxMessageBytes else {
            throw PGError(.protocolViolation, "server \(peer) sent a message of type \(type) with invalid length \(length) (limit \(maxMessageBytes) bytes)")
        }
        guard try fill(atLeast: 1 + length, deadline: deadline) else { return nil }
        let body = UnsafeRawBufferPointer(rebasing: storage[(start + 5)..<(start + 1 + length)])
        start += 1 + length
        var reader = MessageReader(type: type, body: body)
        return try consume(&reader)
    }

    /// A whole message is already buffered: the next `withNextMessage` will not read the transport.
    var hasBufferedMessage: Bool {
        guard end - start >= 5 else { return false }
        let length = Int(UInt32(bigEndian: UnsafeRawBufferPointer(storage).loadUnaligned(fromByteOffset: start + 1, as: UInt32.self)))
        return end - start >= 1 + length
    }

    /// Makes at least `count` unread bytes contiguous in the buffer; false when the deadline passes.
    private func fill(atLeast count: Int, deadline: Deadline) throws -> Bool {
        if start == end { start = 0; end = 0 }
        while end - start < count {
            if storage.count - start < count {
                // Not enough room after `start`: grow if the buffer itself is too small, then slide
                // the unread bytes to the front.
                let unread = end - start
                if storage.count < count {
                    let grown = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count + count / 2, storage.count * 2), alignment: 16)
                    grown.baseAddress!.copyMemory(from: storage.baseAddress! + start, byteCount: unread)
                    storage.deallocate()
                    storage = grown
                } else if unread > 0 {
                    memmove(storage.baseAddress!, storage.baseAddress! + start, unread)
                }
                start = 0
                end = unread
            }
            let space = UnsafeMutableRawBufferPointer(rebasing: storage[end...])
            guard let n = try transport.read(into: space, deadline: deadline) else { return false }
            if n == 0 {
                throw PGError(.connectionClosed, "server \(peer) closed the connection unexpectedly")
            }
            end += n
        }
        return true
    }

    func send(_ bytes: [UInt8], deadline: Deadline) throws {
        try bytes.withUnsafeBytes { try transport.write($0, deadline: deadline) }
    }
}
