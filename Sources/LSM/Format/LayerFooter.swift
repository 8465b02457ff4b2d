/// The fixed-size footer at the end of a layer file; it locates everything (format-spec.md,
/// "LayerFooter").
///
///     directory:        12 bytes // BlockHandle of the IndexDirectory block
///     index_offset:     u64      // first byte of the index blocks (= end of the data blocks)
///     format_version:   u16      // 1 to 3 (LayerFormat.currentVersion), equal to the header's
///     reserved:         u16      // 0
///     reserved:         u32      // 0
///     crc32c:           u32      // over bytes [0, 28) of the footer
///     magic:            8 bytes  // "SWPSLAYR"
/// 40 bytes, big-endian.
public struct LayerFooter: Equatable, Sendable {
    public static let size = 40
    static let crcOffset = 28

    public var directory: BlockHandle
    public var indexOffset: UInt64
    public var formatVersion: UInt16

    public init(directory: BlockHandle, indexOffset: UInt64) {
        self.directory = directory
        self.indexOffset = indexOffset
        self.formatVersion = LayerFormat.currentVersion
    }

    public func encode(into w: inout ByteWriter) {
        let start = w.count
        directory.encode(into: &w)
        w.u64(indexOffset)
        w.u16(formatVersion)
        w.u16(0)
        w.u32(0)
        let crc = w.bytes[start...].withUnsafeBytes { crc32c(0, $0) }
        w.u32(crc)
        w.raw(LayerFormat.magic)
        precondition(w.count - start == LayerFooter.size)
    }

    public init(parsing buffer: UnsafeRawBufferPointer) throws {
        guard buffer.count == LayerFooter.size else { throw StorageError(.corruption, "layer footer is \(buffer.count) bytes, not \(LayerFooter.size)") }
        guard buffer.suffix(8).elementsEqual(LayerFormat.magic) else {
            throw StorageError(.corruption, "bad magic in the layer footer (file truncated or not a layer)")
        }
        let stored = loadBE(buffer, LayerFooter.crcOffset, as: UInt32.self)
        let actual = crc32c(0, UnsafeRawBufferPointer(rebasing: buffer[0..<LayerFooter.crcOffset]))
        guard stored == actual else {
            throw StorageError(.corruption, "layer footer checksum mismatch (stored \(hex32(stored)), computed \(hex32(actual)))")
        }
        var r = ByteReader(buffer, context: "layer footer")
        directory = try BlockHandle(parsing: &r)
        indexOffset = try r.u64()
        formatVersion = try r.u16()
        guard try r.u16() == 0, try r.u32() == 0 else { throw StorageError(.corruption, "layer footer has non-zero reserved bytes") }
        guard LayerFormat.supportedVersions.contains(formatVersion) else {
            throw StorageError(.unsupported, "layer format version \(formatVersion) is not supported")
        }
    }
}
