import LSM
import PostgresWAL

/// Why redo could not produce a page. Every error names what is missing or wrong; a page that
/// cannot be reconstructed exactly is never handed out.
public struct RedoError: Error, CustomStringConvertible, Sendable {
    public enum Code: String, Sendable {
        /// No redo for this resource manager or record type (yet): the page cannot be built.
        case unsupported
        /// The record's bytes do not have the layout PostgreSQL 15 gives this record type.
        case malformedRecord
        /// The page does not have the layout the record expects (PostgreSQL would PANIC).
        case corruptPage
        /// The oldest record needs an earlier page version and none was given.
        case missingBase
        /// The chain is longer than the configured maximum.
        case chainTooLong
        /// The record stored under a key has no block reference to that key's page.
        case blockNotReferenced
    }

    public var code: Code
    public var message: String
    /// Where it happened, filled in by the dispatcher: key, LSN, resource manager, record type.
    public var context: String?

    public init(_ code: Code, _ message: String, context: String? = nil) {
        self.code = code
        self.message = message
        self.context = context
    }

    public static func corruptPage(_ message: String) -> RedoError { RedoError(.corruptPage, message) }
    public static func malformedRecord(_ message: String, at lsn: LSN? = nil) -> RedoError {
        RedoError(.malformedRecord, message + (lsn.map { " (record ending at \($0))" } ?? ""))
    }
    public static func malformed(_ what: String, _ message: String) -> RedoError {
        RedoError(.malformedRecord, "\(what): \(message)")
    }

    public var description: String {
        "redo \(code.rawValue): \(message)" + (context.map { " [\($0)]" } ?? "")
    }
}

/// A bounds-checked little-endian cursor over a record's main data or block data, for rmgr redo.
/// A short read throws `malformedRecord` naming `what`.
public struct RedoReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var position: Int
    public let what: String

    public init(_ buffer: UnsafeRawBufferPointer, _ what: String, position: Int = 0) {
        self.buffer = buffer
        self.what = what
        self.position = position
    }

    public var remaining: Int { buffer.count - position }
    public var isAtEnd: Bool { position >= buffer.count }

    @inline(__always) mutating func check(_ n: Int) throws {
        guard n >= 0, buffer.count - position >= n else {
            throw RedoError.malformed(what, "needs \(n) bytes at offset \(position) of \(buffer.count)")
        }
    }
    public mutating func u8() throws -> UInt8 { try check(1); defer { position += 1 }; return buffer[position] }
    public mutating func u16() throws -> UInt16 { try check(2); defer { position += 2 }; return buffer.u16le(position) }
    public mutating func i16() throws -> Int16 { Int16(bitPattern: try u16()) }
    public mutating func u32() throws -> UInt32 { try check(4); defer { position += 4 }; return buffer.u32le(position) }
    public mutating func i32() throws -> Int32 { Int32(bitPattern: try u32()) }
    public mutating func u64() throws -> UInt64 { try check(8); defer { position += 8 }; return buffer.u64le(position) }
    public mutating func bytes(_ n: Int) throws -> UnsafeRawBufferPointer {
        try check(n)
        defer { position += n }
        return UnsafeRawBufferPointer(rebasing: buffer[position..<position + n])
    }
    public mutating func rest() -> UnsafeRawBufferPointer {
        defer { position = buffer.count }
        return UnsafeRawBufferPointer(rebasing: buffer[position...])
    }
    public mutating func skip(_ n: Int) throws { try check(n); position += n }
    /// Moves to the next multiple of `alignment` (counted from the buffer's start).
    public mutating func align(_ alignment: Int) throws {
        let next = (position + alignment - 1) / alignment * alignment
        try skip(next - position)
    }
    public mutating func seek(_ offset: Int) throws {
        guard offset >= 0, offset <= buffer.count else { throw RedoError.malformed(what, "offset \(offset) is outside \(buffer.count) bytes") }
        position = offset
    }
}
