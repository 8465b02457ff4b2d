// The key of the seed's RocksDB page store (issue 8), 42 bytes, all integers big-endian so that keys
// order as their bytes do:
//
//   timeline: 16 bytes  // the timeline id, its two words big-endian
//   kind:     u8        // our Key's field1: 0 for relation blocks and their metadata, 1 SLRU, ...
//   spc:      u32       // BufferTag.spcOid (our Key's field2)
//   db:       u32       // BufferTag.dbOid (field3)
//   rel:      u32       // BufferTag.relNumber (field4)
//   fork:     u8        // BufferTag.forkNum (field5)
//   blkno:    u32       // BufferTag.blockNum (field6)
//   lsn:      u64       // the LSN of the value
//
// The seed describes timeline + BufferTag + LSN. The one byte `kind` in front of the BufferTag is
// needed because the same store also holds the keys that are not relation blocks (SLRU pages,
// directories, relation sizes, pg_control); for relation blocks it is always 0, so it costs one byte
// per key before RocksDB's prefix compression, which shares it with the previous key anyway.
//
// Invariants:
// 1. encode and decode are inverses; the first `prefixBytes` bytes name one (timeline, key), so every
//    version of a page is a contiguous run of keys, oldest first.
// 2. For one (timeline, key), byte order is LSN order, so SeekForPrev(prefix + LSN) lands on the
//    newest version at or below LSN.
import LSM

enum RocksKey {
    static let timelineBytes = 16
    static let prefixBytes = timelineBytes + Key.encodedSize
    static let encodedSize = prefixBytes + 8

    /// Writes the key of (timeline, key, lsn) into `out` (exactly `encodedSize` bytes).
    static func encode(_ timeline: TimelineId, _ key: Key, _ lsn: LSN, into out: UnsafeMutableRawBufferPointer) {
        precondition(out.count >= encodedSize)
        out.storeBytes(of: timeline.bytes.0.bigEndian, toByteOffset: 0, as: UInt64.self)
        out.storeBytes(of: timeline.bytes.1.bigEndian, toByteOffset: 8, as: UInt64.self)
        out.storeBytes(of: key.field1, toByteOffset: 16, as: UInt8.self)
        out.storeBytes(of: key.field2.bigEndian, toByteOffset: 17, as: UInt32.self)
        out.storeBytes(of: key.field3.bigEndian, toByteOffset: 21, as: UInt32.self)
        out.storeBytes(of: key.field4.bigEndian, toByteOffset: 25, as: UInt32.self)
        out.storeBytes(of: key.field5, toByteOffset: 29, as: UInt8.self)
        out.storeBytes(of: key.field6.bigEndian, toByteOffset: 30, as: UInt32.self)
        out.storeBytes(of: lsn.rawValue.bigEndian, toByteOffset: prefixBytes, as: UInt64.self)
    }

    /// The LSN of an encoded key.
    static func lsn(of encoded: UnsafeRawBufferPointer) -> LSN {
        precondition(encoded.count == encodedSize)
        return LSN(UInt64(bigEndian: encoded.loadUnaligned(fromByteOffset: prefixBytes, as: UInt64.self)))
    }
}

/// The value under a `RocksKey`: our `Value`, as the seed stores a page image or a WAL record.
///
///   kind:      u8      // Value.Kind: 1 image, 2 WAL record, 3 engine record (0 is invalid)
///   will_init: u8      // 1 when redo starts from nothing, else 0
///   bytes:     rest    // the image or the record
enum RocksValue {
    static let headerBytes = 2

    static func encode(_ value: Value) -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(headerBytes + value.bytes.count)
        out.append(value.kind.rawValue)
        out.append(value.willInit ? 1 : 0)
        out.append(contentsOf: value.bytes)
        return out
    }

    static func decode(_ raw: UnsafeRawBufferPointer) throws -> Value {
        guard raw.count >= headerBytes, let kind = Value.Kind(rawValue: raw[0]), raw[1] <= 1 else {
            throw StorageError(.corruption, "a RocksDB value of \(raw.count) bytes has no valid header")
        }
        return Value(kind: kind, willInit: raw[1] == 1, bytes: Array(raw[headerBytes...]))
    }
}
