/// The layer map: which layers hold a timeline's values, and the read path over them.
///
/// A `LayerMap` is an immutable snapshot; the owner swaps in a new one under a mutex whenever a
/// layer is frozen or flushed, or compaction or GC replaces layer files, and readers work on the
/// snapshot they took, so a read never blocks ingest, flush or compaction and never sees a
/// half-applied change.
///
/// Read path for (key, lsn), newest first:
/// 1. the open in-memory layer, then frozen in-memory layers (newest first);
/// 2. in the key's chunk: find the newest image layer at X <= lsn that covers the key; visit the
///    delta layers overlapping (X, lsn] newest first, collecting entries until one starts a chain
///    (an image value or a will_init record);
/// 3. if nothing started a chain, the image layer's value at X is the base (absent: the key had no
///    value at X).
/// A lookup with a `floor` (a materialized value at that LSN, see MaterializedPageCache) collects only
/// values above the floor, and stops at the in-memory layers when they hold everything above it.
/// Index blocks for every (request, layer) pair are fetched in one batch, then data blocks for every
/// chosen entry in a second batch, so a batch of lookups costs at most two waits on the disk.
///
/// Invariants:
/// 1. Delta layers of one chunk have disjoint LSN ranges; in-memory layers lie above every on-disk
///    layer and are disjoint from each other.
/// 2. An image layer at X holds every key of its key range that had a value at X.
/// 3. Values are collected only with LSN in (X, lsn]: nothing at or below the base is re-applied.
/// 4. A lookup at an LSN below `gc.cutoff` that is not one of `gc.retained` is refused before any
///    layer is visited: garbage collection may have deleted the layers it needs. The cutoff lives in
///    the snapshot, so a snapshot that lacks deleted layers always carries the cutoff that allowed
///    their deletion (see Compaction.swift).
final class LayerMap: Sendable {
    let open: InMemoryLayer
    /// Oldest first.
    let frozen: [InMemoryLayer]
    let chunks: [ChunkId: ChunkLayers]
    let gc: GCFloor
    /// Earlier index blocks of one long chain fetched in one round trip (they are adjacent in the
    /// file, so the fetch merges them into one read).
    static let chainIndexBlocksPerFetch = 16

    /// The oldest LSNs a read may ask for: the GC cutoff, and below it only the retained LSNs (branch
    /// points of child timelines).
    struct GCFloor: Sendable, Equatable {
        var cutoff: LSN = .zero
        var retained: Set<LSN> = []

        func refusal(_ lsn: LSN) -> StorageError? {
            guard lsn < cutoff, !retained.contains(lsn) else { return nil }
            return StorageError(.invalidArgument, "LSN \(lsn) is below the GC cutoff \(cutoff): the versions older than \(cutoff) were garbage-collected; read at \(cutoff) or later", lsn: lsn)
        }
    }

    struct ChunkLayers: Sendable {
        /// Sorted by lsnStart ascending.
        var deltas: [LayerFile] = []
        /// Sorted by LSN ascending.
        var images: [LayerFile] = []

        mutating func add(_ f: LayerFile) {
            if f.descriptor.kind == .delta {
                deltas.append(f)
                deltas.sort { $0.descriptor.lsnStart < $1.descriptor.lsnStart }
            } else {
                images.append(f)
                images.sort { $0.descriptor.lsnStart < $1.descriptor.lsnStart }
            }
        }
    }

    /// `gc` has no default: a new snapshot must carry the previous one's floor (invariant 4).
    init(open: InMemoryLayer, frozen: [InMemoryLayer], chunks: [ChunkId: ChunkLayers], gc: GCFloor) {
        self.open = open
        self.frozen = frozen
        self.chunks = chunks
        self.gc = gc
    }

    var allFiles: [LayerFile] { chunks.values.flatMap { $0.deltas + $0.images } }
}

/// An index entry a lookup chose, with the layer file whose data block holds its value: where the
/// value lies and what it is (its key is the lookup's). Kept small: a long chain plans tens of
/// thousands of them.
///
/// (The read path's collections hold named structs, not tuples: a collection of tuples makes the
/// Swift runtime look up the tuple's type metadata on every use, a measurable share of a cached read.)
struct PlannedEntry {
    let layer: LayerFile
    let lsn: LSN
    let block: BlockHandle
    let valueOffset: UInt32
    let valueLength: UInt32
    let kind: Value.Kind
    let willInit: Bool

    var startsChain: Bool { kind == .image || willInit }
}

/// One lookup of a batch and what the read path has gathered for it so far.
struct LookupState {
    var key: Key
    var lsn: LSN
    /// The lookup's values, newest first: those of the in-memory layers (gathered while planning),
    /// then those of `planned`, appended by `TimelineStore.get` once their data blocks are read.
    var chain: [RedoRecord] = []
    /// Entries chosen from layer files, newest first (the base image, if any, last).
    var planned: [PlannedEntry] = []
    var done = false
    var imageLayer: LayerFile?
    var deltas: [LayerFile] = []
    var layersVisited = 0
    /// A materialized value at this LSN is the base: only values above it are collected.
    var floor: LSN?
    /// The materialized value itself (its LSN is `floor`), when there is one.
    var base: (lsn: LSN, bytes: [UInt8])?
    /// Set when the lookup is below the GC cutoff (invariant 4); nothing else is gathered then.
    var refused: StorageError?
    /// Why the lookup cannot be answered (its refusal, or a damaged value), once its values are read.
    var failure: StorageError?
}

/// The larger of two optional LSNs (nil when both are).
@inline(__always)
private func newer(_ a: LSN?, _ b: LSN?) -> LSN? {
    guard let a else { return b }
    guard let b else { return a }
    return max(a, b)
}

/// An index block of a layer file, for sharing its parse within a batch.
private struct IndexBlockKey: Hashable {
    var layer: ObjectIdentifier
    var block: Int
}

/// The lookup an index block was fetched for, and where the block is.
private struct IndexOwner {
    var state: Int
    var layer: LayerFile
    var block: Int
}

extension LayerMap {
    /// Runs the read path for `states` (see the type's comment). On return each state holds its
    /// values; data blocks are fetched by the caller.
    func plan(_ states: inout [LookupState], fetcher: BlockFetcher) throws {
        var indexRequests: [BlockRequest] = []
        var indexOwners: [IndexOwner] = []
        for s in states.indices {
            let key = states[s].key, lsn = states[s].lsn
            if let refused = gc.refusal(lsn) {
                states[s].refused = refused
                states[s].done = true
                continue
            }
            let materialized = states[s].floor
            // A materialized value at the read LSN itself: no value can lie above it and at or below
            // the LSN, so there is nothing to look up.
            if let materialized, materialized >= lsn {
                states[s].done = true
                continue
            }
            // 1. In-memory layers: the open one, then the frozen ones newest first.
            if open.startLSN <= lsn {
                states[s].layersVisited += 1
                states[s].done = open.collect(key, floor: materialized, ceiling: lsn, into: &states[s].chain)
            }
            if !states[s].done {
                for layer in frozen.reversed() where layer.startLSN <= lsn {
                    states[s].layersVisited += 1
                    if layer.collect(key, floor: materialized, ceiling: lsn, into: &states[s].chain) {
                        states[s].done = true
                        break
                    }
                }
            }
            // Every value above the materialized base is in memory: the files have nothing newer.
            if let materialized, materialized.rawValue &+ 1 >= (frozen.first ?? open).startLSN.rawValue {
                states[s].done = true
            }
            if states[s].done { continue }
            // 2. Layer files of the key's chunk.
            guard let cl = chunks[ChunkId(containing: key)] else { continue }
            var imageLSN: LSN?
            for img in cl.images.reversed() where img.descriptor.lsnStart <= lsn && img.covers(key) {
                // An image at or below the materialized base is not needed.
                if let materialized, img.descriptor.lsnStart <= materialized { break }
                states[s].imageLayer = img
                imageLSN = img.descriptor.lsnStart
                break
            }
            let bottom = newer(imageLSN, materialized)
            for d in cl.deltas.reversed() where d.descriptor.lsnStart <= lsn {
                if let x = bottom, d.descriptor.lsnEnd.rawValue - 1 <= x.rawValue { break }
                states[s].deltas.append(d)
            }
            // The deltas newest first, then the image layer.
            for i in 0...states[s].deltas.count {
                guard let layer = i < states[s].deltas.count ? states[s].deltas[i] : states[s].imageLayer else { continue }
                let ceiling = min(lsn, LSN(layer.descriptor.lsnEnd.rawValue - 1))
                if let b = layer.directory.block(for: key, ceiling) {
                    indexRequests.append(BlockRequest(layer: layer, handle: layer.directory.lines[b].handle, isIndex: true))
                    indexOwners.append(IndexOwner(state: s, layer: layer, block: b))
                }
            }
        }
        if indexRequests.isEmpty { return }
        let blocks = try fetcher.fetch(indexRequests)
        // Index blocks are parsed when a lookup gets to them; in a batch, lookups that need the same
        // block share one parse.
        var parsed: [IndexBlockKey: IndexBlockView] = [:]
        func view(_ n: Int) throws -> IndexBlockView {
            let owner = indexOwners[n]
            guard states.count > 1 else {
                return try IndexBlockView(payload: blocks[n].bytes, file: owner.layer.path, offset: indexRequests[n].handle.offset)
            }
            let k = IndexBlockKey(layer: ObjectIdentifier(owner.layer), block: owner.block)
            if let v = parsed[k] { return v }
            let v = try IndexBlockView(payload: blocks[n].bytes, file: owner.layer.path, offset: indexRequests[n].handle.offset)
            parsed[k] = v
            return v
        }
        // The owners of one lookup are consecutive, in the order they are to be visited.
        var first = 0
        while first < indexOwners.count {
            let s = indexOwners[first].state
            var end = first + 1
            while end < indexOwners.count && indexOwners[end].state == s { end += 1 }
            defer { first = end }
            let key = states[s].key, lsn = states[s].lsn
            let floor = newer(states[s].imageLayer?.descriptor.lsnStart, states[s].floor)
            for n in first..<end {
                if states[s].done { break }
                let layer = indexOwners[n].layer, blockNo = indexOwners[n].block
                let view = try view(n)
                states[s].layersVisited += 1
                let ceiling = min(lsn, LSN(layer.descriptor.lsnEnd.rawValue - 1))
                if layer === states[s].imageLayer {
                    // 3. The base image at X, if the key had one.
                    let i = view.lastAtOrBefore(key, ceiling)
                    if i >= 0 && view.keyAndLSN(i).0 == key { states[s].planned.append(try view.planned(i, layer: layer)) }
                    states[s].done = true
                    break
                }
                var block = blockNo
                var v = view
                // Earlier index blocks fetched ahead (see below), the next to visit last.
                var earlier: [FetchedBlock] = []
                var earlierBlocks: [Int] = []
                var fetchRounds = 0
                var i = v.lastAtOrBefore(key, ceiling)
                scan: while true {
                    while i >= 0 {
                        let (k, l) = v.keyAndLSN(i)
                        if k != key { break scan }
                        if let floor, l <= floor { break scan }
                        let e = try v.planned(i, layer: layer)
                        states[s].planned.append(e)
                        if e.startsChain {
                            states[s].done = true
                            break scan
                        }
                        i -= 1
                    }
                    // The key's entries may continue at the end of the previous index block. A key
                    // with a long chain spans many index blocks: those the directory says may hold
                    // more of it (each block after them starts with the key, above the floor) are
                    // fetched together in one round trip, 1, 2, 4, ... up to
                    // `chainIndexBlocksPerFetch` at a time (the chain may end at an image in any of
                    // them, so at most half of what is fetched goes unused).
                    guard block > 0 else { break }
                    if earlier.isEmpty {
                        let lines = layer.directory.lines
                        let most = min(LayerMap.chainIndexBlocksPerFetch, 1 << min(fetchRounds, 8))
                        fetchRounds += 1
                        var b = block
                        repeat {
                            earlierBlocks.append(b - 1)
                            b -= 1
                        } while b > 0 && earlierBlocks.count < most
                            && lines[b].firstKey == key && (floor.map { lines[b].firstLSN > $0 } ?? true)
                        earlier = try fetcher.fetch(earlierBlocks.map { BlockRequest(layer: layer, handle: lines[$0].handle, isIndex: true) })
                        earlier.reverse()
                        earlierBlocks.reverse()
                    }
                    block = earlierBlocks.removeLast()
                    let payload = earlier.removeLast().bytes
                    v = try IndexBlockView(payload: payload, file: layer.path, offset: layer.directory.lines[block].handle.offset)
                    i = v.count - 1
                }
            }
            if !states[s].done { states[s].done = true }
        }
    }
}
