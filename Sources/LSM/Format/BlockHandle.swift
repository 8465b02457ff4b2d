/// Where a block lives in a layer file (format-spec.md, "BlockHandle").
///
///     offset: u64  // from the start of the file
///     size:   u32  // bytes on disk, including the 9-byte BlockTrailer
public struct BlockHandle: Hashable, Sendable {
    public static let size = 12

    public var offset: UInt64
    public var size: UInt32

    public init(offset: UInt64, size: UInt32) {
        self.offset = offset
        self.size = size
    }

    public var end: UInt64 { offset + UInt64(size) }

    public func encode(into w: inout ByteWriter) {
        w.u64(offset)
        w.u32(size)
    }

    public init(parsing r: inout ByteReader) throws {
        self.init(offset: try r.u64(), size: try r.u32())
    }
}
