import CShims

/// Every block (data, index, directory) ends with this trailer (format-spec.md, "Blocks").
///
///     [payload: size - 9 bytes] [compression: u8] [uncompressed_length: u32] [crc32c: u32]
///
/// compression: 1 none, 2 LZ4 block format (0 reserved). The CRC-32C covers the payload, the
/// compression byte and uncompressed_length. A block is stored raw when LZ4 does not shrink it.
public enum BlockTrailer {
    public static let size = 1 + 4 + 4

    public enum Compression: UInt8, Sendable {
        case uncompressed = 1
        case lz4 = 2
    }

    /// Appends `payload` as a block (compressed when `compress` and LZ4 helps) to `out`.
    static func appendBlock(_ payload: UnsafeRawBufferPointer, compress: Bool, to out: inout [UInt8]) {
        let start = out.count
        var compression = Compression.uncompressed
        if compress && payload.count > 64 {
            let bound = Int(LZ4_compressBound(Int32(payload.count)))
            out.reserveCapacity(start + bound + size)
            var written = 0
            out.append(contentsOf: repeatElement(0, count: bound))
            out.withUnsafeMutableBytes { dst in
                written = Int(LZ4_compress_default(
                    payload.baseAddress!.assumingMemoryBound(to: CChar.self),
                    dst.baseAddress!.advanced(by: start).assumingMemoryBound(to: CChar.self),
                    Int32(payload.count), Int32(bound)))
            }
            if written > 0 && written < payload.count {
                out.removeLast(bound - written)
                compression = .lz4
            } else {
                out.removeLast(bound)
            }
        }
        if compression == .uncompressed { out.append(contentsOf: payload) }
        out.append(compression.rawValue)
        withUnsafeBytes(of: UInt32(payload.count).bigEndian) { out.append(contentsOf: $0) }
        let crc = out[start...].withUnsafeBytes { crc32c(0, $0) }
        withUnsafeBytes(of: crc.bigEndian) { out.append(contentsOf: $0) }
    }

    /// Verifies the block in `raw` (exactly the handle's bytes) and returns its payload, decompressed.
    /// Throws `corruption` naming `file` and `offset` on any mismatch; never returns unverified bytes.
    static func decodeBlock(_ raw: UnsafeRawBufferPointer, file: String, offset: UInt64) throws -> [UInt8] {
        guard raw.count >= size else {
            throw StorageError.corruption("block of \(raw.count) bytes is shorter than its trailer", file: file, offset: offset)
        }
        let body = raw.count - size + 1 + 4
        let stored = loadBE(raw, raw.count - 4, as: UInt32.self)
        let actual = crc32c(0, UnsafeRawBufferPointer(rebasing: raw[0..<body]))
        guard stored == actual else {
            throw StorageError.corruption("block checksum mismatch (stored \(hex32(stored)), computed \(hex32(actual)))", file: file, offset: offset)
        }
        let payloadCount = raw.count - size
        let compressionByte = raw[payloadCount]
        let length = Int(loadBE(raw, payloadCount + 1, as: UInt32.self))
        guard length <= LayerFormat.maxBlockBytes else {
            throw StorageError.corruption("block claims \(length) uncompressed bytes", file: file, offset: offset)
        }
        switch Compression(rawValue: compressionByte) {
        case .uncompressed:
            guard length == payloadCount else {
                throw StorageError.corruption("raw block length \(payloadCount) differs from its trailer's \(length)", file: file, offset: offset)
            }
            return Array(UnsafeRawBufferPointer(rebasing: raw[0..<payloadCount]))
        case .lz4:
            var decoded: Int32 = 0
            let out = [UInt8](unsafeUninitializedCapacity: length) { dst, initialized in
                decoded = LZ4_decompress_safe(raw.baseAddress!.assumingMemoryBound(to: CChar.self),
                                              UnsafeMutableRawPointer(dst.baseAddress)?.assumingMemoryBound(to: CChar.self),
                                              Int32(payloadCount), Int32(length))
                initialized = decoded == Int32(length) ? length : 0
            }
            guard decoded == Int32(length) else {
                throw StorageError.corruption("LZ4 block did not decompress to its \(length) bytes", file: file, offset: offset)
            }
            return out
        case nil:
            throw StorageError.corruption("unknown block compression \(compressionByte)", file: file, offset: offset)
        }
    }
}
