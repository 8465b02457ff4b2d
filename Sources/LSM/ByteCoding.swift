/// Big-endian encoding helpers for the on-disk structures.
///
/// Every integer the engine writes is big-endian (keys then order as bytes). `ByteWriter` appends to
/// an array; `ByteReader` reads from a buffer and throws `corruption` on a short read, so a parser
/// fed a truncated structure fails cleanly instead of trapping.
public struct ByteWriter {
    public var bytes: [UInt8]

    public init(capacity: Int = 0) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    public var count: Int { bytes.count }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { append(v) }
    public mutating func u32(_ v: UInt32) { append(v) }
    public mutating func u64(_ v: UInt64) { append(v) }
    public mutating func raw(_ b: some Sequence<UInt8>) { bytes.append(contentsOf: b) }
    public mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }

    private mutating func append<T: FixedWidthInteger>(_ v: T) {
        withUnsafeBytes(of: v.bigEndian) { bytes.append(contentsOf: $0) }
    }
}

public struct ByteReader {
    public let buffer: UnsafeRawBufferPointer
    public private(set) var position: Int
    /// Names the structure being parsed, for error messages.
    let context: String

    public init(_ buffer: UnsafeRawBufferPointer, context: String = "structure") {
        self.buffer = buffer
        self.position = 0
        self.context = context
    }

    public var remaining: Int { buffer.count - position }

    private mutating func take<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let n = MemoryLayout<T>.size
        guard remaining >= n else {
            throw StorageError.corruption("\(context) is truncated: needs \(n) more bytes at byte \(position) of \(buffer.count)", file: nil, offset: nil)
        }
        let v = buffer.loadUnaligned(fromByteOffset: position, as: T.self)
        position += n
        return T(bigEndian: v)
    }

    public mutating func u8() throws -> UInt8 { try take(UInt8.self) }
    public mutating func u16() throws -> UInt16 { try take(UInt16.self) }
    public mutating func u32() throws -> UInt32 { try take(UInt32.self) }
    public mutating func u64() throws -> UInt64 { try take(UInt64.self) }

    public mutating func bytes(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, remaining >= n else {
            throw StorageError.corruption("\(context) is truncated: needs \(n) more bytes at byte \(position) of \(buffer.count)", file: nil, offset: nil)
        }
        let s = UnsafeRawBufferPointer(rebasing: buffer[position..<position + n])
        position += n
        return s
    }

    public mutating func skip(_ n: Int) throws { _ = try bytes(n) }
}

/// Loads a big-endian integer at `offset` of `buffer` (caller checked the bounds).
@inline(__always)
func loadBE<T: FixedWidthInteger>(_ buffer: UnsafeRawBufferPointer, _ offset: Int, as: T.Type) -> T {
    T(bigEndian: buffer.loadUnaligned(fromByteOffset: offset, as: T.self))
}
