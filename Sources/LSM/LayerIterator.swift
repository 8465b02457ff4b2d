/// Sequential reading of a layer file, for compaction: every index entry in (key, lsn) order, and the
/// value an entry points at.
///
/// Design: `LayerEntryIterator` walks the index directory's lines in order and holds one decoded index
/// block at a time; `LayerValueReader` holds the data block it read last (entries in key order point
/// at data blocks in file order, so a scan reads each data block once). Memory is one index block and
/// one data block per open layer, never the layer's contents. Blocks come through a `BlockFetcher`,
/// so every block is checksum-verified before use; compaction passes one whose caches hold nothing
/// (`BlockFetcher.uncached`), so a scan does not push the readers' hot blocks out of the shared caches.
///
/// Invariants:
/// 1. `next` returns entries strictly ascending by (key, lsn); a file that breaks this is reported as
///    corruption, never passed on (a compaction must not write a disordered layer).
/// 2. A value is returned only if its range lies inside its verified data block.
struct LayerEntryIterator {
    let layer: LayerFile
    let fetcher: BlockFetcher
    private var nextBlock = 0
    private var view: IndexBlockView?
    private var position = 0
    private var last: (Key, LSN)?

    init(_ layer: LayerFile, fetcher: BlockFetcher) {
        self.layer = layer
        self.fetcher = fetcher
    }

    mutating func next() throws -> IndexEntry? {
        while true {
            if let v = view, position < v.count {
                let e = try v.entry(position)
                position += 1
                if let (k, l) = last, !(k < e.key || (k == e.key && l < e.lsn)) {
                    throw StorageError.corruption("index entries out of order: \(e.key)@\(e.lsn) after \(k)@\(l)", file: layer.path, offset: nil)
                }
                last = (e.key, e.lsn)
                return e
            }
            guard nextBlock < layer.directory.lines.count else { return nil }
            let h = layer.directory.lines[nextBlock].handle
            let payload = try fetcher.fetch([BlockRequest(layer: layer, handle: h, isIndex: true)])[0].bytes
            view = try IndexBlockView(payload: payload, file: layer.path, offset: h.offset)
            position = 0
            nextBlock += 1
        }
    }
}

/// The values of one layer's entries, one data block held at a time.
struct LayerValueReader {
    let layer: LayerFile
    let fetcher: BlockFetcher
    private var handle: BlockHandle?
    private var block: [UInt8] = []

    init(_ layer: LayerFile, fetcher: BlockFetcher) {
        self.layer = layer
        self.fetcher = fetcher
    }

    mutating func value(_ e: IndexEntry) throws -> ArraySlice<UInt8> {
        if handle != e.block {
            block = try fetcher.fetch([BlockRequest(layer: layer, handle: e.block, isIndex: false)])[0].bytes
            handle = e.block
        }
        let end = Int(e.valueOffset) + Int(e.valueLength)
        guard end <= block.count else {
            throw StorageError.corruption("value \(e.key)@\(e.lsn) lies outside its data block", file: layer.path, offset: e.block.offset)
        }
        return block[Int(e.valueOffset)..<end]
    }
}

extension BlockFetcher {
    /// A fetcher over `io` whose caches keep nothing (a zero-byte cache refuses every insert).
    static func uncached(io: any BlockIO, buffers: AlignedBufferPool) -> BlockFetcher {
        let none = BlockCache(capacityBytes: 0)
        return BlockFetcher(io: io, dataCache: none, compressedDataCache: none, indexCache: none, buffers: buffers)
    }
}
