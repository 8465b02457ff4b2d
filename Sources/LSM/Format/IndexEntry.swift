/// One entry of a layer's sorted index: where the value of (key, lsn) lives (format-spec.md,
/// "IndexEntry").
///
///     key:          18 bytes // Key, big-endian fields
///     lsn:          u64
///     value_kind:   u8       // 1 image, 2 WAL record, 3 engine record
///     flags:        u8       // bit 0: will_init; other bits 0
///     block:        12 bytes // BlockHandle of the data block holding the value
///     value_offset: u32      // offset of the value in the block's uncompressed payload
///     value_length: u32
/// 48 bytes. Entries are sorted by (key, lsn) ascending, with no duplicates.
public struct IndexEntry: Equatable, Sendable {
    public static let size = Key.encodedSize + 8 + 1 + 1 + BlockHandle.size + 4 + 4
    static let flagWillInit: UInt8 = 0x01

    public var key: Key
    public var lsn: LSN
    public var kind: Value.Kind
    public var willInit: Bool
    public var block: BlockHandle
    public var valueOffset: UInt32
    public var valueLength: UInt32

    public init(key: Key, lsn: LSN, kind: Value.Kind, willInit: Bool, block: BlockHandle, valueOffset: UInt32, valueLength: UInt32) {
        self.key = key
        self.lsn = lsn
        self.kind = kind
        self.willInit = willInit
        self.block = block
        self.valueOffset = valueOffset
        self.valueLength = valueLength
    }

    public var startsChain: Bool { kind == .image || willInit }

    public func encode(into w: inout ByteWriter) {
        key.encode(into: &w)
        w.u64(lsn.rawValue)
        w.u8(kind.rawValue)
        w.u8(willInit ? IndexEntry.flagWillInit : 0)
        block.encode(into: &w)
        w.u32(valueOffset)
        w.u32(valueLength)
    }

    public init(parsing r: inout ByteReader) throws {
        key = try Key(parsing: &r)
        lsn = LSN(try r.u64())
        let k = try r.u8()
        let flags = try r.u8()
        block = try BlockHandle(parsing: &r)
        valueOffset = try r.u32()
        valueLength = try r.u32()
        (kind, willInit) = try IndexEntry.check(kind: k, flags: flags, valueOffset: valueOffset, valueLength: valueLength)
    }

    /// The value kind and will_init of an entry with these fields, or the error that names what is
    /// wrong with them.
    @inline(__always)
    static func check(kind k: UInt8, flags: UInt8, valueOffset: UInt32, valueLength: UInt32) throws -> (Value.Kind, Bool) {
        guard let kind = Value.Kind(rawValue: k) else { throw StorageError(.corruption, "index entry has invalid value kind \(k)") }
        guard flags & ~flagWillInit == 0 else { throw StorageError(.corruption, "index entry has unknown flags \(flags)") }
        guard UInt64(valueOffset) + UInt64(valueLength) <= UInt64(LayerFormat.maxBlockBytes) else {
            throw StorageError(.corruption, "index entry value range \(valueOffset)+\(valueLength) is out of bounds")
        }
        return (kind, flags & flagWillInit != 0)
    }
}

/// The payload of an index block: `entry_count: u32` then that many 48-byte IndexEntry.
/// Searched in place, without decoding every entry.
struct IndexBlockView {
    let payload: [UInt8]
    let count: Int

    init(payload: [UInt8], file: String, offset: UInt64) throws {
        guard payload.count >= 4 else { throw StorageError.corruption("index block is shorter than its count", file: file, offset: offset) }
        let n = payload.withUnsafeBytes { Int(loadBE($0, 0, as: UInt32.self)) }
        guard n >= 1, payload.count == 4 + n * IndexEntry.size else {
            throw StorageError.corruption("index block of \(payload.count) bytes cannot hold \(n) entries", file: file, offset: offset)
        }
        self.payload = payload
        self.count = n
    }

    @inline(__always)
    func keyAndLSN(_ i: Int) -> (Key, LSN) {
        payload.withUnsafeBytes { b in
            let o = 4 + i * IndexEntry.size
            let key = Key(field1: b[o], field2: loadBE(b, o + 1, as: UInt32.self), field3: loadBE(b, o + 5, as: UInt32.self),
                          field4: loadBE(b, o + 9, as: UInt32.self), field5: b[o + 13], field6: loadBE(b, o + 14, as: UInt32.self))
            return (key, LSN(loadBE(b, o + 18, as: UInt64.self)))
        }
    }

    /// What the read path keeps of entry `i` (its key is the one being looked up), read at the
    /// entry's fixed offsets with the checks of `IndexEntry.init(parsing:)`.
    func planned(_ i: Int, layer: LayerFile) throws -> PlannedEntry {
        try payload.withUnsafeBytes { b in
            let o = 4 + i * IndexEntry.size
            let valueOffset = loadBE(b, o + 40, as: UInt32.self), valueLength = loadBE(b, o + 44, as: UInt32.self)
            let (kind, willInit) = try IndexEntry.check(kind: b[o + 26], flags: b[o + 27], valueOffset: valueOffset, valueLength: valueLength)
            return PlannedEntry(layer: layer, lsn: LSN(loadBE(b, o + 18, as: UInt64.self)),
                                block: BlockHandle(offset: loadBE(b, o + 28, as: UInt64.self), size: loadBE(b, o + 36, as: UInt32.self)),
                                valueOffset: valueOffset, valueLength: valueLength, kind: kind, willInit: willInit)
        }
    }

    func entry(_ i: Int) throws -> IndexEntry {
        try payload.withUnsafeBytes { b in
            var r = ByteReader(UnsafeRawBufferPointer(rebasing: b[(4 + i * IndexEntry.size)...]), context: "index entry")
            return try IndexEntry(parsing: &r)
        }
    }

    /// The index of the last entry <= (key, lsn), or -1 when every entry is greater.
    func lastAtOrBefore(_ key: Key, _ lsn: LSN) -> Int {
        var lo = 0, hi = count  // invariant: entries [0, lo) are <= target, [hi, count) are > target
        while lo < hi {
            let mid = (lo + hi) / 2
            let (k, l) = keyAndLSN(mid)
            if k < key || (k == key && l <= lsn) { lo = mid + 1 } else { hi = mid }
        }
        return lo - 1
    }
}
