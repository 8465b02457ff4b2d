import CShims
import Synchronization
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
/// 3. `dataBlockStarts`, once set, lists every data block's offset in file order, and the blocks
///    tile the data region exactly (the first starts at the header's end, each ends where the next
///    starts, the last ends at `footer.indexOffset`). It is set only from index blocks that
///    verified, so a read widened by it covers whole blocks; each block is still verified on use.
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
    /// Each data block's offset, in file order (invariant 3); nil until `preloadIndex` has read every
    /// index block, or when the data region holds 2^32 bytes or more.
    private let dataBlockStarts = FutexLock<[UInt32]?>(nil)

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
    /// for the read path, which reports it when a lookup needs it. With `blockTable`, also notes
    /// where each data block starts (invariant 3), which cold reads use to read whole windows.
    func preloadIndex(into cache: BlockCache, budgetBytes: Int, blockTable: Bool = true) -> Int {
        let start = footer.indexOffset, end = footer.directory.offset
        guard end > start, end - start <= UInt64(Int32.max) else { return 0 }
        guard let fd = try? FileOps.openForRead(path) else { return 0 }
        defer { close(fd) }
        var region = [UInt8](repeating: 0, count: Int(end - start))
        let read = (try? region.withUnsafeMutableBytes { try FileOps.readAll(fd, into: $0, at: start, path: path) }) ?? 0
        guard read == region.count else { return 0 }
        var added = 0
        // The data blocks' offsets, collected from the entries while every index block verifies.
        var starts: [UInt32]? = blockTable && footer.indexOffset <= UInt64(UInt32.max) ? [] : nil
        starts?.reserveCapacity(Int(header.dataBlockCount))
        region.withUnsafeBytes { all in
            for line in directory.lines {
                guard added < budgetBytes || starts != nil else { break }
                // A file opened now has a new file id, so none of its blocks is cached yet.
                let key = BlockCache.CacheKey(fileId: fileId, offset: line.handle.offset)
                let raw = UnsafeRawBufferPointer(rebasing: all[Int(line.handle.offset - start)..<Int(line.handle.end - start)])
                guard let payload = try? BlockTrailer.decodeBlock(raw, file: path, offset: line.handle.offset) else {
                    starts = nil
                    continue
                }
                if starts != nil, !LayerFile.collectBlockStarts(payload, into: &starts!) { starts = nil }
                if added < budgetBytes {
                    cache.insert(key, payload)
                    added += payload.count + 64
                }
            }
        }
        if let s = starts, tilesDataRegion(s) { dataBlockStarts.withLock { $0 = s } }
        return added
    }

    /// Appends the block offsets named by an index block's entries that differ from the last one
    /// collected. False when the payload is not a well-formed entry list or an offset goes backwards.
    private static func collectBlockStarts(_ payload: [UInt8], into starts: inout [UInt32]) -> Bool {
        payload.withUnsafeBytes { b in
            guard b.count >= 4 else { return false }
            let n = Int(loadBE(b, 0, as: UInt32.self))
            guard b.count == 4 + n * IndexEntry.size else { return false }
            for i in 0..<n {
                // IndexEntry: the block handle's offset is at byte 28 of the entry.
                let offset = loadBE(b, 4 + i * IndexEntry.size + 28, as: UInt64.self)
                guard offset <= UInt64(UInt32.max) else { return false }
                let o = UInt32(offset)
                if let last = starts.last {
                    if o == last { continue }
                    guard o > last else { return false }
                }
                starts.append(o)
            }
            return true
        }
    }

    /// Invariant 3 for a candidate list: it starts at the header's end, holds the header's count of
    /// blocks, and its last block starts before the index (which is where that block ends).
    private func tilesDataRegion(_ starts: [UInt32]) -> Bool {
        guard let first = starts.first else { return false }
        return UInt64(first) == UInt64(LayerHeader.size) && starts.count == Int(header.dataBlockCount)
            && UInt64(starts[starts.count - 1]) < footer.indexOffset
    }

    /// The whole data blocks inside the `windowBytes`-aligned window of the file that holds
    /// `handle`, as one byte range, when the block table is known and that range is larger than the
    /// block itself; nil otherwise.
    func prefetchRange(around handle: BlockHandle, windowBytes: UInt64) -> (start: UInt64, end: UInt64)? {
        guard let starts = dataBlockStarts.withLock({ $0 }) else { return nil }
        let windowStart = handle.offset / windowBytes * windowBytes
        let windowEnd = windowStart + windowBytes
        // First block starting at or after the window's start.
        var lo = 0, hi = starts.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if UInt64(starts[mid]) < windowStart { lo = mid + 1 } else { hi = mid }
        }
        // Last block ending at or before the window's end.
        var last = lo - 1
        var j = lo
        while j < starts.count {
            let end = j + 1 < starts.count ? UInt64(starts[j + 1]) : footer.indexOffset
            if end > windowEnd { break }
            last = j
            j += 1
        }
        guard last >= lo else { return nil }
        let start = min(UInt64(starts[lo]), handle.offset)
        let end = max(last + 1 < starts.count ? UInt64(starts[last + 1]) : footer.indexOffset, handle.end)
        guard end - start > UInt64(handle.size) else { return nil }
        return (start, end)
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
/// into `dataCache` (unless at least 90% of the recent lookups in its shard there missed:
/// `decodedTierBypassMissPermille`), and also into `compressedDataCache` when it is at most half its
/// decoded size,
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
///
/// Cold windows (`prefetchWindowBytes`): while `dataCache` has never had to evict and the
/// compressed tier holds under 3/4 of its share, a data-block miss in a file whose block table is
/// known (`LayerFile.prefetchRange`; only the files of a store that fits in half the compressed
/// tier's share have one, see `TimelineStore.open`) reads every whole block of the aligned window around it, and
/// the window is kept as one compressed-tier entry, `[first block's offset: u64][blocks as on
/// disk]`, under the key (file, window start | 2^63). A later miss in that window decodes its
/// block from the entry (verifying it) and puts it into `dataCache`, with no read. A store that
/// fits in memory is then read in one round trip per window instead of one per lookup (a scale-20
/// pgbench store, cold, depth 1: 1.5-1.7x the pages/s); once memory is full, reads are exact
/// again. Windows are one entry each rather than one per block: inserting each block on its own
/// cost more than the reads it saved. A block of a kept window goes into `dataCache` on its second
/// use only (`windowBlocksSeen`): until then it is decoded from the window again, which costs less
/// than the fresh memory every decoded block takes in a process that has just started.
struct BlockFetcher {
    /// The decoded tier's recent miss share (per mille) from which blocks also go to the compressed tier.
    static let compressedTierMissPermille = 500
    /// The decoded tier's recent miss share (per mille) from which a block read from disk is not put
    /// into it: the tier is thrashing, and the insert would only evict another block that, by the
    /// same odds, would not have been hit either. The block still goes to the compressed tier, and
    /// from there into the decoded tier on every second hit. (Warm reads of a scale-100 store, where
    /// 93% of the decoded tier's lookups missed: 1.23 / 1.11 / 1.31x the pages/s at depth 1 / 32 /
    /// batches, medians of 5 interleaved pairs; the inserts and their evictions had been a seventh
    /// of the time.)
    static let decodedTierBypassMissPermille = 900
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
    /// While page memory has never been full, a data-block miss reads every whole block of the
    /// aligned window of this many bytes around it, kept as one entry of the compressed tier
    /// (0: off; `StorageContext.coldPrefetchWindowBytes`).
    var prefetchWindowBytes: UInt64 = 0
    /// Blocks decoded out of a window go into `dataCache` on their second use only (nil: on the first).
    var windowBlocksSeen: SeenOnceFilter? = nil
    /// Answer from the caches only: a fetch that would read the device throws `NeedsDeviceRead`
    /// instead (after taking what the caches hold, which has no effect but on their statistics).
    var cachedOnly = false
    /// Thrown by a `cachedOnly` fetch that misses every cache.
    struct NeedsDeviceRead: Error {}
    static let directAlignment = AlignedBufferPool.alignment

    func fetch(_ requests: [BlockRequest]) throws -> [FetchedBlock] {
        var out = [FetchedBlock](repeating: FetchedBlock(bytes: []), count: requests.count)
        var missIndex: [Int] = []
        var missKeys: [BlockCache.CacheKey] = []
        var duplicates: [(Int, Int)] = []
        var compressedHits = 0
        var started: UInt64 = 0
        let windowsCached = compressedDataCache.hasWindows
        if cachedOnly {
            // Give up before decoding anything when a block is in no tier (a window that holds
            // the block's offset but not all of it is found missing below, after some decoding).
            for r in requests {
                let key = BlockCache.CacheKey(fileId: r.layer.fileId, offset: r.handle.offset)
                if r.isIndex ? indexCache.contains(key)
                    : dataCache.contains(key) || compressedDataCache.contains(key)
                        || (windowsCached && prefetchWindowBytes > 0 && compressedDataCache.contains(windowKey(r.layer, r.handle))) {
                    continue
                }
                throw NeedsDeviceRead()
            }
        }
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
            } else if !r.isIndex, windowsCached, prefetchWindowBytes > 0, let payload = try fromWindow(r) {
                if compressedHits == 0 && started == 0, balance?.adaptive == true { started = monotonicNanos() }
                compressedHits += 1
                if windowBlocksSeen?.markSeen(key) ?? true { dataCache.insert(key, payload) }
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
        if cachedOnly { throw NeedsDeviceRead() }
        if started == 0, balance?.adaptive == true { started = monotonicNanos() }

        // One read per run of nearby misses in the same file (a key's values in a delta layer often
        // sit in neighbouring blocks: a large record's block, then the block of its small ones), so
        // a cold lookup pays one device round trip per file instead of one per block. O_DIRECT
        // reads are widened to aligned ranges. One aligned arena holds every read.
        let align = BlockFetcher.directAlignment
        var spans: [(start: UInt64, end: UInt64)] = []
        spans.reserveCapacity(missIndex.count)
        // Cold prefetch: while no tier of page memory has had to evict, the blocks around a miss are
        // read with it (the same round trip, a few more KiB) and kept compressed. A store that fits
        // in memory is then read in a few dozen reads per file instead of one per lookup; once
        // memory is full, reads are exact again.
        let window = prefetchWindowBytes
        let prefetching = window > 0 && !dataCache.hasEvicted
            && compressedDataCache.heldBytes + Int(window) <= compressedDataCache.capacityBytes / 4 * 3
        // windows[n]: the whole blocks of miss n's window, read with it (nil: the block alone).
        var windows = [(start: UInt64, end: UInt64)?](repeating: nil, count: prefetching ? missIndex.count : 0)
        for (n, i) in missIndex.enumerated() {
            let r = requests[i]
            var start = r.handle.offset, end = r.handle.end
            if prefetching, !r.isIndex, let range = r.layer.prefetchRange(around: r.handle, windowBytes: window) {
                (start, end) = range
                windows[n] = range
            }
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
            } else if prefetching, windows[n] != nil, let seen = windowBlocksSeen, !seen.markSeen(key) {
                // Its window is kept (below): a second use decodes it from there, and is when it
                // goes into the decoded tier.
            } else {
                let missPermille = dataCache.hasEvicted ? dataCache.recentMissPermille(near: key) : 0
                let bypass = missPermille >= BlockFetcher.decodedTierBypassMissPermille
                if !bypass { dataCache.insert(key, payload) }
                if raw.count * 2 <= payload.count && compressedDataCache.capacityBytes > 0 && dataCache.hasEvicted
                    && missPermille >= BlockFetcher.compressedTierMissPermille {
                    compressedDataCache.insert(key, Array(raw))
                    // The loan grew: the decoded tier gives the bytes back even without an insert.
                    if bypass { dataCache.trim(near: key) }
                }
            }
            out[i] = FetchedBlock(bytes: payload)
        }
        if prefetching {
            keepWindows(requests, missIndex: missIndex, windows: windows, reads: reads, readOf: readOf, ops: ops, arena: arena)
        }
        for (i, j) in duplicates { out[i] = out[j] }
        if let balance, balance.adaptive {
            let dataMisses = compressedHits + missIndex.reduce(0) { $0 + (requests[$1].isIndex ? 0 : 1) }
            balance.noteBlockMisses(dataMisses, nanos: Int(monotonicNanos() &- started))
        }
        return out
    }

    /// The cache key of the window around `handle`'s block (the top bit sets window keys apart
    /// from block offsets, which are far below 2^63).
    @inline(__always)
    func windowKey(_ layer: LayerFile, _ handle: BlockHandle) -> BlockCache.CacheKey {
        let w = prefetchWindowBytes
        return BlockCache.CacheKey(fileId: layer.fileId, offset: handle.offset / w * w | 1 << 63)
    }

    /// The block of `r` decoded out of its cached window, or nil when no window holding it is cached.
    /// A window entry is `[first block's offset: u64 little-endian][the window's whole blocks]`.
    private func fromWindow(_ r: BlockRequest) throws -> [UInt8]? {
        guard let entry = compressedDataCache.get(windowKey(r.layer, r.handle)) else { return nil }
        return try entry.withUnsafeBytes { b -> [UInt8]? in
            guard b.count >= 8 else { return nil }
            let first = b.loadUnaligned(as: UInt64.self).littleEndian
            guard r.handle.offset >= first, r.handle.end - first <= UInt64(b.count - 8) else { return nil }
            let from = 8 + Int(r.handle.offset - first)
            let raw = UnsafeRawBufferPointer(rebasing: b[from..<(from + Int(r.handle.size))])
            return try BlockTrailer.decodeBlock(raw, file: r.layer.path, offset: r.handle.offset)
        }
    }

    /// Keeps each window that a widened read brought in as one entry of the compressed tier, as
    /// read (every block in it is verified when a lookup decodes it).
    private func keepWindows(_ requests: [BlockRequest], missIndex: [Int], windows: [(start: UInt64, end: UInt64)?],
                             reads: [(fd: Int32, fileId: UInt64, start: UInt64, end: UInt64, arenaOffset: Int)],
                             readOf: [Int], ops: [ReadOp], arena: UnsafeMutableRawPointer) {
        var kept: [BlockCache.CacheKey] = []
        for (n, i) in missIndex.enumerated() {
            guard let range = windows[n] else { continue }
            let r = requests[i]
            let key = windowKey(r.layer, r.handle)
            guard !kept.contains(key) else { continue }
            kept.append(key)
            let read = reads[readOf[n]]
            let result = Int(ops[readOf[n]].result)
            guard result >= Int(range.end - read.start) else { continue }
            let count = Int(range.end - range.start)
            let entry = [UInt8](unsafeUninitializedCapacity: 8 + count) { dst, initialized in
                let base = UnsafeMutableRawPointer(dst.baseAddress!)
                base.storeBytes(of: range.start.littleEndian, as: UInt64.self)
                (base + 8).copyMemory(from: arena + read.arenaOffset + Int(range.start - read.start), byteCount: count)
                initialized = 8 + count
            }
            compressedDataCache.insertWindow(key, entry)
        }
    }
}
