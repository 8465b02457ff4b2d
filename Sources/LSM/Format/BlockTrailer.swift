import CShims

/// Every block (data, index, directory) ends with this trailer (format-spec.md, "Blocks").
///
///     [payload: size - 9 bytes] [compression: u8] [uncompressed_length: u32] [crc32c: u32]
///
/// compression: 1 none, 2 LZ4 block format, 3 LZ4 after stride-delta passes, 4 LZ4 after the
/// index-entry transform (index blocks only; 0 reserved). The
/// CRC-32C covers the payload, the compression byte and uncompressed_length. A block is stored raw
/// when no compression shrinks it.
public enum BlockTrailer {
    public static let size = 1 + 4 + 4

    public enum Compression: UInt8, Sendable {
        case uncompressed = 1
        case lz4 = 2
        /// [pass_count: u8][stride: u16 big-endian] x pass_count [LZ4 block of the payload after
        /// those stride-delta passes, in that order]
        case lz4Delta = 3
        /// An index block's payload after the index-entry transform (`cs_index_transform_encode`:
        /// value offsets relative to the previous value's end in the same data block, entries
        /// transposed into delta-coded columns), as one LZ4 block.
        case lz4IndexTransform = 4
    }

    /// A compression-3 block has 1 to this many stride-delta passes.
    static let maxFilterPasses = 4

    /// Appends `payload` as a block (compressed when `compress` and LZ4 helps) to `out`.
    ///
    /// Writer rule (format-spec.md, "Blocks"): with `filter` (a data block holding a value of at least
    /// half a data block), a payload of at least 1024 bytes in which the stride detector finds a
    /// period `s` is LZ4-compressed after stride-delta passes (compression 3): [s];
    /// when that leaves more than 1/16 but at most 1/4 of the payload also [s, s], and when that is at
    /// most 1/4 also [s, s, 4]; the smallest is kept outright when it is at most 1/8 of the payload,
    /// and otherwise only when it is smaller than plain LZ4 (compression 2). Raw (1) when nothing
    /// shrinks the payload.
    static func appendBlock(_ payload: UnsafeRawBufferPointer, compress: Bool, filter: Bool = false, to out: inout [UInt8]) {
        let start = out.count
        var compression = Compression.uncompressed
        if compress && payload.count > 64 {
            let n = payload.count
            let source = payload.baseAddress!.assumingMemoryBound(to: UInt8.self)
            let stride = filter && n >= 1024 ? Int(cs_detect_stride(source, n)) : 0
            let bound = Int(LZ4_compressBound(Int32(n)))
            let candidates = 3, outSize = 1 + 2 * candidates + bound
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: bound + candidates * (outSize + n)) { scratch in
                let plainOut = scratch.baseAddress!
                var best: (pointer: UnsafeMutablePointer<UInt8>, size: Int)? = nil
                // Candidate k (0-based) filters the previous candidate's input once more with
                // `passes[k]` and compresses it behind the prefix [k + 1][passes[0]]...[passes[k]].
                let passes = [stride, stride, 4]
                var input = UnsafePointer(source)
                func tryCandidate(_ k: Int) -> Int {
                    let filtered = plainOut + bound + candidates * outSize + k * n
                    let target = plainOut + bound + k * outSize
                    cs_delta_encode(filtered, input, n, passes[k])
                    input = UnsafePointer(filtered)
                    let prefix = 1 + 2 * (k + 1)
                    let w = Int(cs_lz4_compress(filtered, target + prefix, Int32(n), Int32(bound)))
                    guard w > 0 else { return Int.max }
                    target[0] = UInt8(k + 1)
                    for j in 0...k {
                        target[1 + 2 * j] = UInt8(passes[j] >> 8)
                        target[2 + 2 * j] = UInt8(passes[j] & 0xFF)
                    }
                    if best == nil || w + prefix < best!.size { best = (target, w + prefix) }
                    return w + prefix
                }
                if stride > 0 {
                    let once = tryCandidate(0)
                    if once > n / 16 && once <= n / 4 {
                        if tryCandidate(1) <= n / 4 { _ = tryCandidate(2) }
                    }
                }
                var plainSize = Int.max
                if best.map({ $0.size > n / 8 }) ?? true {
                    let w = Int(cs_lz4_compress(source, plainOut, Int32(n), Int32(bound)))
                    if w > 0 { plainSize = w }
                }
                if let f = best, f.size < n && f.size < plainSize {
                    out.append(contentsOf: UnsafeBufferPointer(start: f.pointer, count: f.size))
                    compression = .lz4Delta
                } else if plainSize < n {
                    out.append(contentsOf: UnsafeBufferPointer(start: plainOut, count: plainSize))
                    compression = .lz4
                }
            }
        }
        if compression == .uncompressed { out.append(contentsOf: payload) }
        out.append(compression.rawValue)
        withUnsafeBytes(of: UInt32(payload.count).bigEndian) { out.append(contentsOf: $0) }
        let crc = out[start...].withUnsafeBytes { crc32c(0, $0) }
        withUnsafeBytes(of: crc.bigEndian) { out.append(contentsOf: $0) }
    }

    /// Appends an index block's payload (`[entry_count u32][entry_count x 48-byte IndexEntry]`) as a
    /// block: compression 4 when `compress` and it is smaller than the payload, else raw (format-spec
    /// section 3, writer rule for index blocks).
    static func appendIndexBlock(_ payload: UnsafeRawBufferPointer, compress: Bool, to out: inout [UInt8]) {
        let n = payload.count
        let count = (n - 4) / IndexEntry.size
        guard compress, n > 64, n == 4 + count * IndexEntry.size else {
            appendBlock(payload, compress: false, to: &out)
            return
        }
        let start = out.count
        let bound = Int(LZ4_compressBound(Int32(n)))
        var written = 0
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: n + bound) { scratch in
            let transformed = scratch.baseAddress!, target = transformed + n
            let source = payload.baseAddress!.assumingMemoryBound(to: UInt8.self)
            transformed.update(from: source, count: 4)
            cs_index_transform_encode(transformed + 4, source + 4, count)
            let w = Int(cs_lz4_compress(transformed, target, Int32(n), Int32(bound)))
            if w > 0 && w < n {
                out.append(contentsOf: UnsafeBufferPointer(start: target, count: w))
                written = w
            }
        }
        guard written > 0 else {
            appendBlock(payload, compress: false, to: &out)
            return
        }
        out.append(Compression.lz4IndexTransform.rawValue)
        withUnsafeBytes(of: UInt32(n).bigEndian) { out.append(contentsOf: $0) }
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
        case .lz4Delta:
            let passCount = payloadCount >= 1 ? Int(raw[0]) : 0
            guard passCount >= 1 && passCount <= maxFilterPasses else {
                throw StorageError.corruption("stride-delta block with \(passCount) passes (1 to \(maxFilterPasses))", file: file, offset: offset)
            }
            let prefix = 1 + 2 * passCount
            guard payloadCount >= prefix else {
                throw StorageError.corruption("stride-delta block of \(payloadCount) stored bytes is shorter than its \(prefix)-byte pass list", file: file, offset: offset)
            }
            let strides = (0..<passCount).map { Int(raw[1 + 2 * $0]) << 8 | Int(raw[2 + 2 * $0]) }
            guard !strides.contains(0) else {
                throw StorageError.corruption("stride-delta block with stride 0", file: file, offset: offset)
            }
            var decoded: Int32 = 0
            let out = [UInt8](unsafeUninitializedCapacity: length) { dst, initialized in
                decoded = LZ4_decompress_safe(raw.baseAddress!.advanced(by: prefix).assumingMemoryBound(to: CChar.self),
                                              UnsafeMutableRawPointer(dst.baseAddress)?.assumingMemoryBound(to: CChar.self),
                                              Int32(payloadCount - prefix), Int32(length))
                if decoded == Int32(length), let base = dst.baseAddress {
                    for stride in strides.reversed() { cs_delta_decode(base, length, stride) }
                }
                initialized = decoded == Int32(length) ? length : 0
            }
            guard decoded == Int32(length) else {
                throw StorageError.corruption("stride-delta LZ4 block did not decompress to its \(length) bytes", file: file, offset: offset)
            }
            return out
        case .lz4IndexTransform:
            let count = (length - 4) / IndexEntry.size
            guard length >= 4 + IndexEntry.size && length == 4 + count * IndexEntry.size else {
                throw StorageError.corruption("index-transform block of \(length) bytes is not 4 + 48 x entries", file: file, offset: offset)
            }
            var decoded: Int32 = 0
            var out: [UInt8] = []
            withUnsafeTemporaryAllocation(of: UInt8.self, capacity: length) { transformed in
                decoded = LZ4_decompress_safe(raw.baseAddress!.assumingMemoryBound(to: CChar.self),
                                              UnsafeMutableRawPointer(transformed.baseAddress)?.assumingMemoryBound(to: CChar.self),
                                              Int32(payloadCount), Int32(length))
                guard decoded == Int32(length) else { return }
                out = [UInt8](unsafeUninitializedCapacity: length) { dst, initialized in
                    dst.baseAddress!.update(from: transformed.baseAddress!, count: 4)
                    cs_index_transform_decode(dst.baseAddress! + 4, transformed.baseAddress! + 4, count)
                    initialized = length
                }
            }
            guard decoded == Int32(length) else {
                throw StorageError.corruption("index-transform LZ4 block did not decompress to its \(length) bytes", file: file, offset: offset)
            }
            // The count must match what the length says (the transform keeps it verbatim).
            guard Int(out[0]) << 24 | Int(out[1]) << 16 | Int(out[2]) << 8 | Int(out[3]) == count else {
                throw StorageError.corruption("index-transform block's entry count differs from its length", file: file, offset: offset)
            }
            return out
        case nil:
            throw StorageError.corruption("unknown block compression \(compressionByte)", file: file, offset: offset)
        }
    }
}
