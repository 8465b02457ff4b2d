import LSM

/// A bounds-checked little-endian cursor over bytes (WAL is little-endian throughout).
///
/// A short read throws `corruption` naming what was being parsed and the record, so a truncated or
/// damaged structure fails cleanly instead of trapping.
struct LittleEndianReader {
    let buffer: UnsafeRawBufferPointer
    private(set) var position: Int
    let context: String
    let recordLSN: LSN?

    init(_ buffer: UnsafeRawBufferPointer, context: String, recordLSN: LSN? = nil) {
        self.buffer = buffer
        self.position = 0
        self.context = context
        self.recordLSN = recordLSN
    }

    var remaining: Int { buffer.count - position }

    private func truncated(_ needed: Int) -> WALError {
        .corrupt("\(context) is truncated: needs \(needed) bytes at offset \(position) of \(buffer.count)", record: recordLSN)
    }

    private mutating func take<T: FixedWidthInteger>(_: T.Type) throws -> T {
        let n = MemoryLayout<T>.size
        guard remaining >= n else { throw truncated(n) }
        let v = buffer.loadUnaligned(fromByteOffset: position, as: T.self)
        position += n
        return T(littleEndian: v)
    }

    mutating func u8() throws -> UInt8 { try take(UInt8.self) }
    mutating func u16() throws -> UInt16 { try take(UInt16.self) }
    mutating func u32() throws -> UInt32 { try take(UInt32.self) }
    mutating func u64() throws -> UInt64 { try take(UInt64.self) }

    /// The next `n` bytes, without copying.
    mutating func bytes(_ n: Int) throws -> UnsafeRawBufferPointer {
        guard n >= 0, remaining >= n else { throw truncated(n) }
        let slice = UnsafeRawBufferPointer(rebasing: buffer[position..<position + n])
        position += n
        return slice
    }

    mutating func skip(_ n: Int) throws { _ = try bytes(n) }
}

/// Little-endian appends, for `encode(into:)` and for tests that build WAL.
extension Array where Element == UInt8 {
    mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }
}
