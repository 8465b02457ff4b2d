import CShims
#if canImport(Glibc)
import Glibc
#endif

/// An open, verified layer file.
///
/// Opening reads and verifies the header, the footer and the index directory (kept in memory).
/// Index blocks and data blocks are read on demand through `BlockFetcher`, which verifies every
/// block's checksum before any byte of it is used or cached.
///
/// Invariants:
/// 1. `header`, `footer` and `directory` were checksum-verified and are mutually consistent (the
///    regions they describe lie inside the file and in order: header < data < index < directory <
///    footer).
/// 2. The file descriptor stays open for the object's lifetime, so a layer deleted by compaction
///    can still be read by a lookup that started before the deletion.
public final class LayerFile: Sendable {
    public let path: String
    public let descriptor: LayerDescriptor
    public let header: LayerHeader
    public let footer: LayerFooter
    public let directory: IndexDirectory
    public let fileSize: UInt64
    let fd: Int32
    let direct: Bool
    let fileId: UInt64

    /// Opens `path`; `expected` (from the manifest) must match the header. `direct` opens with
    /// O_DIRECT so that data reads bypass the kernel's page cache.
    public init(path: String, expected: LayerDescriptor? = nil, direct: Bool = false) throws {
        self.path = path
        let probe = try FileOps.openForRead(path)
        defer { close(probe) }
        let size = try FileOps.fileSize(probe, path: path)
        fileSize = size
        let minimum = UInt64(LayerHeader.size + LayerFooter.size)
        guard size >= minimum else {
            throw StorageError.corruption("layer file is \(size) bytes, shorter than header plus footer (\(minimum))", file: path, offset: 0)
        }
        var headerBytes = [UInt8](repeating: 0, count: LayerHeader.size)
        _ = try headerBytes.withUnsafeMutableBytes { try FileOps.readAll(probe, into: $0, at: 0, path: path) }
        do {
            header = try headerBytes.withUnsafeBytes { try LayerHeader(parsing: $0) }
        } catch var e as StorageError {
            (e.file, e.offset) = (path, 0)
            throw e
        }
        let footerOffset = size - UInt64(LayerFooter.size)
        var footerBytes = [UInt8](repeating: 0, count: LayerFooter.size)
        _ = try footerBytes.withUnsafeMutableBytes { try FileOps.readAll(probe, into: $0, at: footerOffset, path: path) }
        do {
            footer = try footerBytes.withUnsafeBytes { try LayerFooter(parsing: $0) }
        } catch var e as StorageError {
            (e.file, e.offset) = (path, footerOffset)
            throw e
        }
        guard footer.formatVersion == header.formatVersion,
              footer.indexOffset >= UInt64(LayerHeader.size), footer.indexOffset <= footer.directory.offset,
              footer.directory.end == footerOffset, footer.directory.size >= UInt32(BlockTrailer.size) else {
            throw StorageError.corruption("layer footer describes regions outside the file", file: path, offset: footerOffset)
        }
        let d = footer.directory
        var dirBytes = [UInt8](repeating: 0, count: Int(d.size))
        _ = try dirBytes.withUnsafeMutableBytes { try FileOps.readAll(probe, into: $0, at: d.offset, path: path) }
        let dirPayload = try dirBytes.withUnsafeBytes { try BlockTrailer.decodeBlock($0, file: path, offset: d.offset) }
        do {
            directory = try dirPayload.withUnsafeBytes { try IndexDirectory(parsing: $0) }
        } catch var e as StorageError {
            (e.file, e.offset) = (path, d.offset)
            throw e
        }
        guard directory.lines.count == Int(header.indexBlockCount) else {
            throw StorageError.corruption("index directory has \(directory.lines.count) blocks, header says \(header.indexBlockCount)", file: path, offset: d.offset)
        }
        var expectedOffset = footer.indexOffset
        for line in directory.lines {
            guard line.handle.offset == expectedOffset, line.handle.size > UInt32(BlockTrailer.size) else {
                throw StorageError.corruption("index directory line points at \(line.handle.offset), expected \(expectedOffset)", file: path, offset: d.offset)
            }
            expectedOffset = line.handle.end
        }
        guard expectedOffset == d.offset else {
            throw StorageError.corruption("index blocks end at \(expectedOffset), directory starts at \(d.offset)", file: path, offset: d.offset)
        }
        descriptor = LayerDescriptor(kind: header.kind, chunk: header.chunk, lsnStart: header.lsnStart, lsnEnd: header.lsnEnd)
        if let expected, expected != descriptor {
            throw StorageError.corruption("layer header describes \(descriptor.fileName), expected \(expected.fileName)", file: path, offset: 0)
        }
        self.direct = direct
        fd = direct ? try FileOps.openForRead(path, direct: true) : try FileOps.openForRead(path)
        fileId = FileIds.make()
    }

    deinit { close(fd) }

    /// Reads the file's index blocks (one read of the index region) and puts each that verifies into
    /// `cache`, as the read path would on first use, until `budgetBytes` are in (counted as the cache
    /// counts them). Returns the bytes added. Best effort: a block that does not verify, or a failed read, is left
    /// for the read path, which reports it when a lookup needs it.
    func preloadIndex(into cache: BlockCache, budgetBytes: Int) -> Int {
        let start = footer.indexOffset, end = footer.directory.offset
        guard end > start, end - start <= UInt64(Int32.max) else { return 0 }
        guard let fd = try? FileOps.openForRead(path) else { return 0 }
        defer { close(fd) }
        var region = [UInt8](repeating: 0, count: Int(end - start))
        let read = (try? region.withUnsafeMutableBytes { try FileOps.readAll(fd, into: $0, at: start, path: path) }) ?? 0
        guard read == region.count else { return 0 }
        var added = 0
        region.withUnsafeBytes { all in
            for line in directory.lines where added < budgetBytes {
                // A file opened now has a new file id, so none of its blocks is cached yet.
                let key = BlockCache.CacheKey(fileId: fileId, offset: line.handle.offset)
                let raw = UnsafeRawBufferPointer(rebasing: all[Int(line.handle.offset - start)..<Int(line.handle.end - start)])
                guard let payload = try? BlockTrailer.decodeBlock(raw, file: path, offset: line.handle.offset) else { continue }
                cache.insert(key, payload)
                added += payload.count + 64
            }
        }
        return added
    }

    /// True when `key` is inside the key range this layer covers.
    @inline(__always)
    func covers(_ key: Key) -> Bool { header.entryCount > 0 && key >= header.keyMin && key <= header.keyMax }
}

/// A block to fetch: which layer, where, and which cache it belongs to.
struct BlockRequest {
    var layer: LayerFile
    var handle: BlockHandle
    var isIndex: Bool
}

/// A fetched block's payload.
///
/// (A struct around the bytes rather than `[[UInt8]]`: an array of `[UInt8]` is one of the standard
/// library's prespecialized types, and allocating one went through a runtime metadata lookup on
/// every call, about 3% of a cached read.)
struct FetchedBlock {
    var bytes: [UInt8]
}

/// Reads blocks for many lookups at once: caches first, then one batch of reads for every miss
/// (one io_uring submission; misses in the same file within `mergeGapBytes` of each other share one
/// read), each block verified before use and then cached.
///
/// A data block is looked up in `dataCache` (decoded), then in `compressedDataCache` (the block's
/// bytes as on disk, verified and decoded again on each hit), then read. A block read from disk goes
/// into `dataCache`, and also into `compressedDataCache` when it is at most half its decoded size,
/// `dataCache` has been full, and at least half of the recent lookups in `dataCache` (sampled in
/// the block's shard) missed. A compressed hit saves the read's system call and the kernel's copy
/// but not the decompression, and each byte it holds is a byte the decoded tier lacks: it pays
/// where most reads miss the decoded tier anyway (measured: scale 100 with image layers, 1.2-1.6x
/// the pages/s), and costs where the decoded tier holds most of what is read (scale 20: down to
/// 0.6x when it was always on).
/// A compressed hit goes into `dataCache` on every second hit only: a block read once in a while
/// then costs a decompression but no eviction from the decoded tier (where the data outgrows the
/// decoded tier, inserting every hit evicted a decoded block per read, and the churn of 8 KiB
/// allocations showed in the profile).
struct BlockFetcher {
    /// The decoded tier's recent miss share (per mille) from which blocks also go to the compressed tier.
    static let compressedTierMissPermille = 500
    /// Misses in one file at most this far apart are read together (the bytes between are read and
    /// dropped: on a device, a few KiB more cost less than another round trip) ...
    static let mergeGapBytes: UInt64 = 16 << 10
    /// ... into reads of at most this many bytes.
    static let mergedReadBytes: UInt64 = 256 << 10
    let io: any BlockIO
    let dataCache: BlockCache
    let compressedDataCache: BlockCache
    let indexCache: BlockCache
    let buffers: AlignedBufferPool
    /// Told what decoded-tier misses cost (nil: not measured).
    var balance: PageMemoryBalance? = nil
    static let directAlignment = AlignedBufferPool.alignment

    func fetch(_ requests: [BlockRequest]) throws -> [FetchedBlock] {
        var out = [FetchedBlock](repeating: FetchedBlock(bytes: []), count: requests.count)
        var missIndex: [Int] = []
        var missKeys: [BlockCache.CacheKey] = []
        var duplicates: [(Int, Int)] = []
        var compressedHits = 0
        var started: UInt64 = 0
        for (i, r) in requests.enumerated() {
            let key = BlockCache.CacheKey(fileId: r.layer.fileId, offset: r.handle.offset)
            if let b = (r.isIndex ? indexCache : dataCache).get(key) {
                out[i] = FetchedBlock(bytes: b)
            } else if !r.isIndex, let hit = compressedDataCache.getCountingReuse(key) {
                if compressedHits == 0 && started == 0, balance?.adaptive == true { started = monotonicNanos() }
                compressedHits += 1
                let payload = try hit.bytes.withUnsafeBytes { try BlockTrailer.decodeBlock($0, file: r.layer.path, offset: r.handle.offset) }
                if hit.reused { dataCache.insert(key, payload) }
                out[i] = FetchedBlock(bytes: payload)
            } else if let n = missKeys.firstIndex(of: key) {
                // Batches are small (a pipeline's worth), so a linear scan beats a hash map here.
                duplicates.append((i, missIndex[n]))
            } else {
                missKeys.append(key)
                missIndex.append(i)
            }
        }
        if missIndex.isEmpty {
            if compressedHits > 0, let balance, balance.adaptive {
                balance.noteBlockMisses(compressedHits, nanos: Int(monotonicNanos() &- started))
            }
            return out
        }
        if started == 0, balance?.adaptive == true { started = monotonicNanos() }

        // One read per run of nearby misses in the same file (a key's values in a delta layer often
        // sit in neighbouring blocks: a large record's block, then the block of its small ones), so
        // a cold lookup pays one device round trip per file instead of one per block. O_DIRECT
        // reads are widened to aligned ranges. One aligned arena holds every read.
        let align = BlockFetcher.directAlignment
        var spans: [(start: UInt64, end: UInt64)] = []
        spans.reserveCapacity(missIndex.count)
        for i in missIndex {
            let r = requests[i]
            var start = r.handle.offset, end = r.handle.end
            if r.layer.direct {
                start &= ~UInt64(align - 1)
                end = (end + UInt64(align - 1)) & ~UInt64(align - 1)
            }
            spans.append((start, end))
        }
        var order = Array(missIndex.indices)
        if order.count > 1 {
            order.sort { a, b in
                let fa = requests[missIndex[a]].layer.fileId, fb = requests[missIndex[b]].layer.fileId
                return fa != fb ? fa < fb : spans[a].start < spans[b].start
            }
        }
        // reads[k]: one read; readOf[n]: the read that covers miss n.
        var reads: [(fd: Int32, fileId: UInt64, start: UInt64, end: UInt64, arenaOffset: Int)] = []
        var readOf = [Int](repeating: 0, count: missIndex.count)
        for n in order {
            let layer = requests[missIndex[n]].layer
            if let last = reads.last, last.fileId == layer.fileId,
               spans[n].start <= last.end + BlockFetcher.mergeGapBytes,
               max(last.end, spans[n].end) - last.start <= BlockFetcher.mergedReadBytes {
                reads[reads.count - 1].end = max(last.end, spans[n].end)
            } else {
                reads.append((layer.fd, layer.fileId, spans[n].start, spans[n].end, 0))
            }
            readOf[n] = reads.count - 1
        }
        var arenaSize = 0
        for k in reads.indices {
            reads[k].arenaOffset = arenaSize
            arenaSize += (Int(reads[k].end - reads[k].start) + align - 1) & ~(align - 1)
        }
        guard let buffer = buffers.take(arenaSize) else {
            throw StorageError(.io, "cannot allocate \(arenaSize) bytes for block reads")
        }
        defer { buffers.give(buffer) }
        let arena = buffer.pointer
        var ops = [ReadOp]()
        ops.reserveCapacity(reads.count)
        for read in reads {
            ops.append(ReadOp(fd: read.fd, offset: read.start, length: Int(read.end - read.start), buffer: arena + read.arenaOffset))
        }
        ops.withUnsafeMutableBufferPointer { io.read($0) }
        for (n, i) in missIndex.enumerated() {
            let r = requests[i]
            let read = reads[readOf[n]]
            let result = Int(ops[readOf[n]].result)
            if result < 0 {
                throw ioError("read", errno: Int32(-result), file: r.layer.path, offset: r.handle.offset)
            }
            let skip = Int(r.handle.offset - read.start)
            guard result >= skip + Int(r.handle.size) else {
                throw StorageError.corruption("block of \(r.handle.size) bytes extends past the end of the file", file: r.layer.path, offset: r.handle.offset)
            }
            let raw = UnsafeRawBufferPointer(start: arena + read.arenaOffset + skip, count: Int(r.handle.size))
            let payload = try BlockTrailer.decodeBlock(raw, file: r.layer.path, offset: r.handle.offset)
            let key = BlockCache.CacheKey(fileId: r.layer.fileId, offset: r.handle.offset)
            if r.isIndex {
                indexCache.insert(key, payload)
            } else {
                dataCache.insert(key, payload)
                if raw.count * 2 <= payload.count && compressedDataCache.capacityBytes > 0 && dataCache.hasEvicted
                    && dataCache.recentMissPermille(near: key) >= BlockFetcher.compressedTierMissPermille {
                    compressedDataCache.insert(key, Array(raw))
                }
            }
            out[i] = FetchedBlock(bytes: payload)
        }
        for (i, j) in duplicates { out[i] = out[j] }
        if let balance, balance.adaptive {
            let dataMisses = compressedHits + missIndex.reduce(0) { $0 + (requests[$1].isIndex ? 0 : 1) }
            balance.noteBlockMisses(dataMisses, nanos: Int(monotonicNanos() &- started))
        }
        return out
    }
}
