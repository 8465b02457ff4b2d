/// The fixed-size header at offset 0 of a layer file (format-spec.md, "LayerHeader").
///
///     magic:            8 bytes  // "SWPSLAYR"
///     format_version:   u16      // 1 to 3 (LayerFormat.currentVersion)
///     layer_kind:       u8       // 1 image, 2 delta
///     reserved:         u8       // 0
///     chunk:            20 bytes // ChunkId
///     key_min:          18 bytes // smallest key in the file (Key::MAX when empty)
///     key_max:          18 bytes // largest key in the file (Key::MIN when empty)
///     lsn_start:        u64      // delta: first LSN covered; image: the image LSN
///     lsn_end:          u64      // exclusive; image: image LSN + 1
///     entry_count:      u64      // index entries (= values) in the file
///     value_bytes:      u64      // sum of the values' lengths, uncompressed
///     data_block_count: u32
///     index_block_count:u32
///     reserved:         16 bytes // 0
///     crc32c:           u32      // over bytes [0, 124)
/// All integers big-endian; 128 bytes in all.
public struct LayerHeader: Equatable, Sendable {
    public static let size = 128
    static let crcOffset = size - 4

    public var formatVersion: UInt16
    public var kind: LayerKind
    public var chunk: ChunkId
    public var keyMin: Key
    public var keyMax: Key
    public var lsnStart: LSN
    public var lsnEnd: LSN
    public var entryCount: UInt64
    public var valueBytes: UInt64
    public var dataBlockCount: UInt32
    public var indexBlockCount: UInt32

    public init(kind: LayerKind, chunk: ChunkId, keyMin: Key, keyMax: Key, lsnStart: LSN, lsnEnd: LSN,
                entryCount: UInt64, valueBytes: UInt64, dataBlockCount: UInt32, indexBlockCount: UInt32) {
        self.formatVersion = LayerFormat.currentVersion
        self.kind = kind
        self.chunk = chunk
        self.keyMin = keyMin
        self.keyMax = keyMax
        self.lsnStart = lsnStart
        self.lsnEnd = lsnEnd
        self.entryCount = entryCount
        self.valueBytes = valueBytes
        self.dataBlockCount = dataBlockCount
        self.indexBlockCount = indexBlockCount
    }

    func validate() throws {
        guard lsnStart < lsnEnd else { throw StorageError(.corruption, "layer header has an empty LSN range \(lsnStart)..<\(lsnEnd)") }
        if kind == .image, lsnEnd.rawValue != lsnStart.rawValue &+ 1 {
            throw StorageError(.corruption, "image layer header has LSN range \(lsnStart)..<\(lsnEnd), wider than one LSN")
        }
        if entryCount > 0, keyMax < keyMin { throw StorageError(.corruption, "layer header has key_max below key_min") }
    }

    public func encode(into w: inout ByteWriter) {
        let start = w.count
        w.raw(LayerFormat.magic)
        w.u16(formatVersion)
        w.u8(kind.rawValue)
        w.u8(0)
        chunk.encode(into: &w)
        keyMin.encode(into: &w)
        keyMax.encode(into: &w)
        w.u64(lsnStart.rawValue)
        w.u64(lsnEnd.rawValue)
        w.u64(entryCount)
        w.u64(valueBytes)
        w.u32(dataBlockCount)
        w.u32(indexBlockCount)
        w.zeros(start + LayerHeader.crcOffset - w.count)
        let crc = w.bytes[start...].withUnsafeBytes { crc32c(0, $0) }
        w.u32(crc)
        precondition(w.count - start == LayerHeader.size)
    }

    /// Parses and verifies (magic, checksum, version, field ranges) the first `size` bytes of `buffer`.
    public init(parsing buffer: UnsafeRawBufferPointer) throws {
        guard buffer.count >= LayerHeader.size else {
            throw StorageError(.corruption, "layer header is truncated: \(buffer.count) of \(LayerHeader.size) bytes")
        }
        guard buffer.prefix(8).elementsEqual(LayerFormat.magic) else {
            throw StorageError(.corruption, "not a layer file: bad magic in the header")
        }
        let stored = loadBE(buffer, LayerHeader.crcOffset, as: UInt32.self)
        let actual = crc32c(0, UnsafeRawBufferPointer(rebasing: buffer[0..<LayerHeader.crcOffset]))
        guard stored == actual else {
            throw StorageError(.corruption, "layer header checksum mismatch (stored \(hex32(stored)), computed \(hex32(actual)))")
        }
        var r = ByteReader(UnsafeRawBufferPointer(rebasing: buffer[8..<LayerHeader.size]), context: "layer header")
        formatVersion = try r.u16()
        guard LayerFormat.supportedVersions.contains(formatVersion) else {
            throw StorageError(.unsupported, "layer format version \(formatVersion) is not supported (this build reads \(LayerFormat.supportedVersions))")
        }
        let k = try r.u8()
        guard let kind = LayerKind(rawValue: k) else { throw StorageError(.corruption, "invalid layer kind \(k)") }
        self.kind = kind
        guard try r.u8() == 0 else { throw StorageError(.corruption, "layer header has a non-zero reserved byte") }
        chunk = try ChunkId(parsing: &r)
        keyMin = try Key(parsing: &r)
        keyMax = try Key(parsing: &r)
        lsnStart = LSN(try r.u64())
        lsnEnd = LSN(try r.u64())
        entryCount = try r.u64()
        valueBytes = try r.u64()
        dataBlockCount = try r.u32()
        indexBlockCount = try r.u32()
        guard try r.bytes(LayerHeader.crcOffset - 8 - r.position).allSatisfy({ $0 == 0 }) else {
            throw StorageError(.corruption, "layer header has non-zero reserved bytes")
        }
        try validate()
    }
}

func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return "0x" + String(repeating: "0", count: 8 - s.count) + s
}
