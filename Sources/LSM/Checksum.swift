import CShims

/// CRC-32C (Castagnoli) as used by every checksum the engine writes. Hardware-accelerated where the
/// CPU has SSE4.2. `crc32c(crc32c(0, a), b) == crc32c(0, a + b)`.
@inline(__always)
public func crc32c(_ crc: UInt32 = 0, _ buffer: UnsafeRawBufferPointer) -> UInt32 {
    cs_crc32c(crc, buffer.baseAddress, buffer.count)
}

public func crc32c(_ crc: UInt32 = 0, _ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBytes { crc32c(crc, $0) }
}
