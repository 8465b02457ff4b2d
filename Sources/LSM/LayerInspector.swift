/// Reads a whole layer file and verifies every checksum: header, every data block, every index
/// block, the index directory and the footer, plus the structure's consistency (blocks tile their
/// regions without gaps, entries are sorted, every entry points at a data block and inside it).
///
/// Used by `pagectl layer inspect` and `pagectl layer dump`; it reads with plain `pread`, block by
/// block, independent of the read path's caches.
public struct LayerInspection: Sendable {
    public var path: String
    public var header: LayerHeader
    public var footer: LayerFooter
    public var fileSize: UInt64
    public var dataBlocks: Int
    public var compressedDataBlocks: Int
    public var dataBytesOnDisk: UInt64
    public var dataBytesUncompressed: UInt64
    public var indexBlocks: Int
    public var indexBytes: UInt64
    public var entries: [IndexEntry]

    public var compressionRatio: Double {
        dataBytesOnDisk == 0 ? 1 : Double(dataBytesUncompressed) / Double(dataBytesOnDisk)
    }
}

public enum LayerInspector {
    /// Verifies `path` completely. Throws `corruption` naming the file and the offset of the first
    /// damaged structure.
    public static func inspect(path: String) throws -> LayerInspection {
        let layer = try LayerFile(path: path)
        let fd = layer.fd
        func readBlock(_ h: BlockHandle) throws -> (raw: [UInt8], payload: [UInt8]) {
            guard h.size >= UInt32(BlockTrailer.size), h.end <= layer.fileSize, Int(h.size) <= LayerFormat.maxBlockBytes else {
                throw StorageError.corruption("block handle (\(h.offset), \(h.size)) lies outside the file", file: path, offset: h.offset)
            }
            var raw = [UInt8](repeating: 0, count: Int(h.size))
            let n = try raw.withUnsafeMutableBytes { try FileOps.readAll(fd, into: $0, at: h.offset, path: path) }
            guard n == raw.count else { throw StorageError.corruption("block is truncated", file: path, offset: h.offset) }
            let payload = try raw.withUnsafeBytes { try BlockTrailer.decodeBlock($0, file: path, offset: h.offset) }
            return (raw, payload)
        }
        var entries: [IndexEntry] = []
        entries.reserveCapacity(Int(min(layer.header.entryCount, 1 << 24)))
        var indexBytes: UInt64 = 0
        for line in layer.directory.lines {
            let (raw, payload) = try readBlock(line.handle)
            indexBytes += UInt64(raw.count)
            let view = try IndexBlockView(payload: payload, file: path, offset: line.handle.offset)
            for i in 0..<view.count {
                var e: IndexEntry
                do { e = try view.entry(i) } catch var err as StorageError {
                    (err.file, err.offset) = (path, line.handle.offset)
                    throw err
                }
                if i == 0 && (e.key != line.firstKey || e.lsn != line.firstLSN) {
                    throw StorageError.corruption("index block's first entry differs from its directory line", file: path, offset: line.handle.offset)
                }
                if let p = entries.last, !(p.key < e.key || (p.key == e.key && p.lsn < e.lsn)) {
                    throw StorageError.corruption("index entries out of order at \(e.key)@\(e.lsn)", file: path, offset: line.handle.offset)
                }
                entries.append(e)
            }
        }
        guard entries.count == Int(layer.header.entryCount) else {
            throw StorageError.corruption("index holds \(entries.count) entries, header says \(layer.header.entryCount)", file: path, offset: 0)
        }
        // Data blocks must tile [header end, index start) exactly, in the order the entries use them.
        var handles: [BlockHandle] = []
        for e in entries where handles.last != e.block { handles.append(e.block) }
        handles.sort { $0.offset < $1.offset }
        var dedup: [BlockHandle] = []
        for h in handles where dedup.last != h { dedup.append(h) }
        var expected = UInt64(LayerHeader.size)
        var onDisk: UInt64 = 0, uncompressed: UInt64 = 0, compressed = 0
        var payloads: [UInt64: Int] = [:]
        for h in dedup {
            guard h.offset == expected else {
                throw StorageError.corruption("data blocks do not tile the data region: expected a block at \(expected)", file: path, offset: h.offset)
            }
            let (raw, payload) = try readBlock(h)
            if raw[raw.count - BlockTrailer.size] != BlockTrailer.Compression.uncompressed.rawValue { compressed += 1 }
            onDisk += UInt64(h.size)
            uncompressed += UInt64(payload.count)
            payloads[h.offset] = payload.count
            expected = h.end
        }
        guard expected == layer.footer.indexOffset else {
            throw StorageError.corruption("data region ends at \(expected), index starts at \(layer.footer.indexOffset)", file: path, offset: expected)
        }
        guard dedup.count == Int(layer.header.dataBlockCount) else {
            throw StorageError.corruption("file has \(dedup.count) data blocks, header says \(layer.header.dataBlockCount)", file: path, offset: 0)
        }
        var valueBytes: UInt64 = 0
        for e in entries {
            guard let n = payloads[e.block.offset], Int(e.valueOffset) + Int(e.valueLength) <= n else {
                throw StorageError.corruption("entry \(e.key)@\(e.lsn) points outside its data block", file: path, offset: e.block.offset)
            }
            if layer.header.kind == .image, e.lsn != layer.header.lsnStart {
                throw StorageError.corruption("image layer entry at \(e.lsn), layer at \(layer.header.lsnStart)", file: path, offset: e.block.offset)
            }
            if e.lsn < layer.header.lsnStart || e.lsn >= layer.header.lsnEnd || e.key < layer.header.keyMin || e.key > layer.header.keyMax {
                throw StorageError.corruption("entry \(e.key)@\(e.lsn) lies outside the header's ranges", file: path, offset: e.block.offset)
            }
            valueBytes += UInt64(e.valueLength)
        }
        guard valueBytes == layer.header.valueBytes else {
            throw StorageError.corruption("values sum to \(valueBytes) bytes, header says \(layer.header.valueBytes)", file: path, offset: 0)
        }
        return LayerInspection(path: path, header: layer.header, footer: layer.footer, fileSize: layer.fileSize,
                               dataBlocks: dedup.count, compressedDataBlocks: compressed, dataBytesOnDisk: onDisk,
                               dataBytesUncompressed: uncompressed, indexBlocks: layer.directory.lines.count,
                               indexBytes: indexBytes + UInt64(layer.footer.directory.size), entries: entries)
    }
}
