/// Decompression of PostgreSQL's pglz format (pg_lzcompress), as used for full-page images when
/// `wal_compression = pglz`.
///
/// Format. The compressed bytes are a sequence of groups; no header (the raw size is known from
/// elsewhere: for a page image it is BLCKSZ minus the hole). Each group is one control byte followed
/// by up to eight items, one per control bit, least significant bit first:
/// - bit 0: a literal, one byte copied to the output as is;
/// - bit 1: a back-reference, 2 or 3 bytes. Byte 0: high nibble = offset bits 8...11, low nibble =
///   length - 3. Byte 1: offset bits 0...7. If the low nibble is 15 (length 18), byte 2 is added to
///   the length. So offsets are 1...4095 and lengths 3...273. The reference copies `length` bytes
///   starting `offset` bytes back from the current output position; when length > offset the source
///   overlaps the bytes being produced and the copy repeats them (run-length encoding), so the copy
///   must behave as if done one byte at a time.
/// The last group may have fewer items than its control byte has bits: decoding stops when the input
/// or the output is exhausted.
///
/// Invariants:
/// 1. No read outside `source` and no write outside `destination`, whatever the input: every item is
///    bounds-checked before it is read.
/// 2. A back-reference may not reach before the start of the output (offset 0 or offset > bytes
///    produced is corruption).
/// 3. Like PostgreSQL's `check_complete` mode, success means the input was consumed exactly and the
///    output filled exactly; anything else is reported as failure.
enum PGLZ {
    /// Decompresses `source` into all of `destination`. Returns false when the input is malformed or
    /// does not produce exactly `destination.count` bytes from exactly `source.count` bytes.
    static func decompress(_ source: UnsafeRawBufferPointer, into destination: UnsafeMutableRawBufferPointer) -> Bool {
        guard let src = source.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            return destination.isEmpty
        }
        guard let dst = destination.baseAddress?.assumingMemoryBound(to: UInt8.self) else {
            return source.isEmpty
        }
        let sourceCount = source.count
        let destinationCount = destination.count
        var sp = 0
        var dp = 0
        while sp < sourceCount && dp < destinationCount {
            var control = src[sp]
            sp += 1
            var bit = 0
            while bit < 8 && sp < sourceCount && dp < destinationCount {
                if control & 1 != 0 {
                    guard sp + 2 <= sourceCount else { return false }
                    var length = Int(src[sp] & 0x0F) + 3
                    let offset = Int(src[sp] & 0xF0) << 4 | Int(src[sp + 1])
                    sp += 2
                    if length == 18 {
                        guard sp < sourceCount else { return false }
                        length += Int(src[sp])
                        sp += 1
                    }
                    guard offset != 0, offset <= dp else { return false }
                    length = min(length, destinationCount - dp)
                    if offset >= length {
                        // Source and destination do not overlap: one block copy.
                        (dst + dp).update(from: dst + dp - offset, count: length)
                    } else {
                        // Overlapping: each byte may be one this copy just produced.
                        for i in 0..<length { dst[dp + i] = dst[dp - offset + i] }
                    }
                    dp += length
                } else {
                    dst[dp] = src[sp]
                    dp += 1
                    sp += 1
                }
                control >>= 1
                bit += 1
            }
        }
        return dp == destinationCount && sp == sourceCount
    }
}
