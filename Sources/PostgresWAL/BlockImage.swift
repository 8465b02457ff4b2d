import CShims
import LSM
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A full-page image carried by a block reference, restored to a whole 8 KiB page.
///
/// In the record an image is stored without its "hole" (the unused gap between pd_lower and pd_upper
/// of a standard page, which is all zeros) and, with `wal_compression`, compressed with pglz, LZ4 or
/// zstd. Its header fields (in the block reference header, see `BlockReference`):
///
///     length:      u16  // bytes of image data in the record (bimg_len)
///     hole_offset: u16  // where the hole starts in the page
///     bimg_info:   u8   // HAS_HOLE 0x01, APPLY 0x02, COMPRESS_PGLZ 0x04, COMPRESS_LZ4 0x08,
///                       // COMPRESS_ZSTD 0x10
///     hole_length: u16  // present only when compressed and HAS_HOLE; otherwise the hole is
///                       // BLCKSZ - length when HAS_HOLE, else 0
///
/// Restoring: decompress (if compressed) to exactly BLCKSZ - hole_length bytes, then put the first
/// hole_offset bytes at the page start, hole_length zeros after them, and the rest after the hole.
///
/// Invariants:
/// 1. `page` is exactly `PostgresWAL.relationPageSize` bytes, and bytes
///    `holeOffset ..< holeOffset + holeLength` are zero.
/// 2. The image fields are consistent the way PostgreSQL checks them: a hole has a non-zero offset
///    and length; no hole means offset and length 0 and, uncompressed, exactly BLCKSZ stored bytes;
///    a compressed image is shorter than BLCKSZ; at most one compression bit is set.
/// 3. Decompression must produce exactly BLCKSZ - hole_length bytes from exactly `storedLength`
///    bytes; anything else is corruption naming the record and block.
public struct BlockImage: Equatable, Sendable {
    public enum Compression: String, Sendable {
        case none, pglz, lz4, zstd
    }

    /// bimg_info bits.
    public struct Info: OptionSet, Sendable, Hashable {
        public var rawValue: UInt8
        public init(rawValue: UInt8) { self.rawValue = rawValue }
        public static let hasHole = Info(rawValue: 0x01)
        public static let apply = Info(rawValue: 0x02)
        public static let compressedPGLZ = Info(rawValue: 0x04)
        public static let compressedLZ4 = Info(rawValue: 0x08)
        public static let compressedZstd = Info(rawValue: 0x10)
        static let all: Info = [.hasHole, .apply, .compressedPGLZ, .compressedLZ4, .compressedZstd]
        static let anyCompression: Info = [.compressedPGLZ, .compressedLZ4, .compressedZstd]
    }

    /// The restored page, always 8192 bytes.
    public var page: [UInt8]
    public var holeOffset: Int
    public var holeLength: Int
    public var info: Info
    /// How many bytes the image takes in the record (bimg_len).
    public var storedLength: Int

    /// BKPIMAGE_APPLY: redo restores this image. Without it the image exists only for
    /// `wal_consistency_checking` and redo must apply the record to the page instead.
    public var apply: Bool { info.contains(.apply) }

    public var compression: Compression { Self.compression(of: info) }

    static func compression(of info: Info) -> Compression {
        if info.contains(.compressedPGLZ) { return .pglz }
        if info.contains(.compressedLZ4) { return .lz4 }
        if info.contains(.compressedZstd) { return .zstd }
        return .none
    }

    public init(page: [UInt8], holeOffset: Int, holeLength: Int, info: Info, storedLength: Int) {
        self.page = page
        self.holeOffset = holeOffset
        self.holeLength = holeLength
        self.info = info
        self.storedLength = storedLength
    }

    /// The image's header fields as read from a block reference header, before its data is seen.
    struct Header {
        var storedLength: Int
        var holeOffset: Int
        var holeLength: Int
        var info: Info
    }

    /// Reads the image header fields (after HAS_IMAGE) and checks them (invariant 2).
    static func readHeader(_ r: inout LittleEndianReader, blockId: UInt8, record: LSN) throws -> Header {
        let pageSize = PostgresWAL.relationPageSize
        let storedLength = Int(try r.u16())
        let holeOffset = Int(try r.u16())
        let info = Info(rawValue: try r.u8())
        func bad(_ what: String) -> WALError {
            .corrupt("block reference #\(blockId): \(what) (image length \(storedLength), hole offset \(holeOffset), bimg_info 0x\(String(info.rawValue, radix: 16)))", record: record)
        }
        guard info.isSubset(of: .all) else { throw bad("unknown image flag bits") }
        let compressionBits = info.intersection(.anyCompression).rawValue
        guard compressionBits & (compressionBits &- 1) == 0 else { throw bad("more than one compression method") }
        let compressed = compressionBits != 0
        let hasHole = info.contains(.hasHole)
        let holeLength: Int
        if compressed {
            holeLength = hasHole ? Int(try r.u16()) : 0
        } else {
            holeLength = hasHole ? pageSize - storedLength : 0
        }
        if hasHole && (holeOffset == 0 || holeLength <= 0 || storedLength == pageSize) {
            throw bad("a hole with offset \(holeOffset) and length \(holeLength) is invalid")
        }
        if !hasHole && holeOffset != 0 { throw bad("no hole, but a hole offset") }
        if compressed && storedLength >= pageSize { throw bad("a compressed image as long as a page") }
        if !hasHole && !compressed && storedLength != pageSize { throw bad("an uncompressed image without a hole must be \(pageSize) bytes") }
        if holeOffset + holeLength > pageSize { throw bad("the hole (length \(holeLength)) runs past the page end") }
        return Header(storedLength: storedLength, holeOffset: holeOffset, holeLength: holeLength, info: info)
    }

    /// Restores the page from its stored bytes (invariants 1 and 3), into `spare` when it is a
    /// page-sized array (every byte of it is overwritten: front, hole and tail).
    static func restore(_ header: Header, stored: UnsafeRawBufferPointer, blockId: UInt8, record: LSN,
                        into spare: [UInt8]? = nil) throws -> BlockImage {
        let pageSize = PostgresWAL.relationPageSize
        let imageBytes = pageSize - header.holeLength
        var page = spare.flatMap { $0.count == pageSize ? $0 : nil } ?? [UInt8](repeating: 0, count: pageSize)
        let info = header.info
        try page.withUnsafeMutableBytes { out in
            // The stored bytes land where they belong around the hole: decompress (or copy) into the
            // start of the page, then move the tail past the hole.
            let front = UnsafeMutableRawBufferPointer(rebasing: out[0..<imageBytes])
            switch Self.compression(of: info) {
            case .none:
                precondition(stored.count == imageBytes, "image header checks guarantee the stored length")
                front.copyMemory(from: stored)
            case .pglz:
                guard PGLZ.decompress(stored, into: front) else {
                    throw decompressionFailed("pglz", header, blockId: blockId, record: record)
                }
            case .lz4:
                let n = LZ4_decompress_safe(stored.baseAddress?.assumingMemoryBound(to: CChar.self),
                                            front.baseAddress?.assumingMemoryBound(to: CChar.self),
                                            Int32(stored.count), Int32(imageBytes))
                guard n == Int32(imageBytes) else {
                    throw decompressionFailed("LZ4", header, blockId: blockId, record: record)
                }
            case .zstd:
                let n = ZSTD_decompress(front.baseAddress, imageBytes, stored.baseAddress, stored.count)
                guard ZSTD_isError(n) == 0, n == imageBytes else {
                    throw decompressionFailed("zstd", header, blockId: blockId, record: record)
                }
            }
            if header.holeLength > 0 {
                // The bytes after the hole move up by its length (the regions may overlap), then the
                // hole is zeroed. Readers check holeOffset + holeLength <= BLCKSZ.
                let base = out.baseAddress!
                memmove(base + header.holeOffset + header.holeLength, base + header.holeOffset,
                        imageBytes - header.holeOffset)
                memset(base + header.holeOffset, 0, header.holeLength)
            }
        }
        return BlockImage(page: page, holeOffset: header.holeOffset, holeLength: header.holeLength,
                          info: info, storedLength: header.storedLength)
    }

    private static func decompressionFailed(_ method: String, _ header: Header, blockId: UInt8, record: LSN) -> WALError {
        .corrupt("block reference #\(blockId): the \(method)-compressed image (\(header.storedLength) bytes) does not decompress to \(PostgresWAL.relationPageSize - header.holeLength) bytes", record: record)
    }
}
