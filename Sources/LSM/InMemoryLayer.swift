import CShims
import Dispatch
import Synchronization

/// The in-memory layer: every value put since the last freeze, readable at once.
///
/// Design: values are appended to an arena of 1 MiB pages, and their entries to one flat array in
/// put order. Each key gets an ordinal when first put (a `KeyTable` maps key to ordinal); each
/// entry names its key's ordinal and links to the previous entry of the same key, and `heads` holds
/// each ordinal's newest entry. A put costs one table probe and a few appends (no per-key array); a
/// read walks a key's chain newest first, which is the order reads want; the flush orders the
/// entries by key with one counting sort over the ordinals' ranks (sequential passes, no chain
/// walks). New arena pages come already faulted in from `ArenaPageSupply`, whose thread populates
/// them ahead of need, so the ingest thread does not take the first-touch page faults of fresh
/// memory (about a tenth of its time otherwise). The open layer takes `put`s from the single ingest
/// thread; `freeze` closes it, after which it is immutable until flushed to delta layers and
/// dropped from the layer map.
///
/// Invariants:
/// 1. Puts arrive in non-decreasing LSN order, each LSN > `startLSN - 1`; per key, LSNs strictly
///    increase (a second put at the same key and LSN is rejected).
/// 2. After `freeze(endLSN:)` the layer covers [startLSN, endLSN) and no put is accepted.
/// 3. `bytes` counts the values' bytes plus per-entry overhead; the owner compares it with
///    `checkpoint_distance`.
/// 4. `entries[i].previous < i`: following `previous` from `heads[o]` visits exactly the entries of
///    the key with ordinal o (`keys[o]`), in strictly descending LSN order, and ends at -1.
public final class InMemoryLayer: Sendable {
    struct Entry {
        var lsn: LSN
        var previous: Int32
        var ordinal: Int32
        var page: UInt32
        var offset: UInt32
        var length: UInt32
        var kind: Value.Kind
        var willInit: Bool
    }

    struct State: ~Copyable {
        var ordinals = KeyTable()
        var keys: [Key] = []
        var heads: [Int32] = []
        var entries: [Entry] = []
        var pages: [[UInt8]] = []
        var bytes = 0
        var endLSN: LSN?
        var maxLSN: LSN = .zero
        /// Set by `freeze`: the contents, moved out so that readers and the flush need no lock.
        var frozen: Contents?
    }

    final class Contents: Sendable {
        let ordinals: KeyTable
        let keys: [Key]
        let heads: [Int32]
        let entries: [Entry]
        let pages: [[UInt8]]
        init(ordinals: KeyTable, keys: [Key], heads: [Int32], entries: [Entry], pages: [[UInt8]]) {
            self.ordinals = ordinals
            self.keys = keys
            self.heads = heads
            self.entries = entries
            self.pages = pages
        }
    }

    static let pageBytes = 1 << 20
    static let entryOverheadBytes = 64

    public let startLSN: LSN
    /// Monotonic creation time, for `checkpoint_timeout`.
    let createdAtNanos: UInt64
    private let state = FutexLock(State())

    public init(startLSN: LSN) {
        self.startLSN = startLSN
        self.createdAtNanos = monotonicNanos()
    }

    public var bytes: Int { state.withLock { $0.bytes } }
    public var endLSN: LSN? { state.withLock { $0.endLSN } }
    /// The LSN of the newest put (zero when empty).
    var maxPutLSN: LSN { state.withLock { $0.maxLSN } }
    public var isEmpty: Bool { state.withLock { s in s.frozen.map { $0.entries.isEmpty } ?? s.entries.isEmpty } }

    public func put(_ key: Key, _ lsn: LSN, _ value: Value) throws {
        try state.withLock { s in
            precondition(s.endLSN == nil, "put into a frozen in-memory layer")
            guard lsn >= startLSN, lsn >= s.maxLSN else {
                throw StorageError(.invalidArgument, "put at LSN \(lsn) is older than the layer's newest \(max(s.maxLSN, startLSN))", lsn: lsn)
            }
            let slot = s.ordinals.slotForInsertion(key)
            let known = s.ordinals.value(at: slot)
            let previous = known >= 0 ? s.heads[Int(known)] : -1
            if previous >= 0, s.entries[Int(previous)].lsn >= lsn {
                throw StorageError(.invalidArgument, "a value for key \(key) already exists at LSN \(s.entries[Int(previous)].lsn)", lsn: lsn)
            }
            let n = value.bytes.count
            guard n <= LayerFormat.maxValueBytes else {
                throw StorageError(.invalidArgument, "value of \(n) bytes for key \(key) exceeds the largest storable value (\(LayerFormat.maxValueBytes) bytes)", lsn: lsn)
            }
            guard s.entries.count < Int(Int32.max) else {
                throw StorageError(.invalidArgument, "in-memory layer holds \(s.entries.count) values, the most it can index", lsn: lsn)
            }
            if s.pages.isEmpty || s.pages[s.pages.count - 1].count + n > InMemoryLayer.pageBytes {
                if n <= InMemoryLayer.pageBytes, let page = ArenaPageSupply.shared.take() {
                    s.pages.append(page)
                } else {
                    var page = [UInt8]()
                    page.reserveCapacity(max(InMemoryLayer.pageBytes, n))
                    s.pages.append(page)
                }
            }
            let p = s.pages.count - 1
            let ordinal: Int32
            if known >= 0 {
                ordinal = known
            } else {
                ordinal = Int32(s.keys.count)
                s.keys.append(key)
                s.heads.append(-1)
                s.ordinals.set(key, at: slot, to: ordinal)
            }
            s.entries.append(Entry(lsn: lsn, previous: previous, ordinal: ordinal, page: UInt32(p),
                                   offset: UInt32(s.pages[p].count), length: UInt32(n), kind: value.kind,
                                   willInit: value.willInit))
            s.pages[p].append(contentsOf: value.bytes)
            s.heads[Int(ordinal)] = Int32(s.entries.count - 1)
            s.bytes += n + InMemoryLayer.entryOverheadBytes
            s.maxLSN = lsn
        }
    }

    /// Closes the layer at `endLSN` (exclusive); it must be above every LSN put.
    func freeze(endLSN: LSN) {
        state.withLock { s in
            precondition(s.endLSN == nil, "in-memory layer frozen twice")
            precondition(endLSN > startLSN && (s.entries.isEmpty || endLSN > s.maxLSN), "freeze at \(endLSN) below the layer's contents")
            s.endLSN = endLSN
            s.frozen = Contents(ordinals: s.ordinals, keys: s.keys, heads: s.heads, entries: s.entries, pages: s.pages)
            s.ordinals = KeyTable(minimumCapacity: 16)
            s.keys = []
            s.heads = []
            s.entries = []
            s.pages = []
        }
    }

    /// Tests only: runs inside `collect` after it found the layer open and before it reads the live
    /// index (where a concurrent freeze can land).
    nonisolated(unsafe) static var betweenFrozenCheckAndLiveRead: ((InMemoryLayer) -> Void)?

    /// Appends to `out`, newest first, the values of `key` with LSN in (floor, ceiling], stopping
    /// after the first that starts a chain. Returns true when it found such a value.
    func collect(_ key: Key, floor: LSN?, ceiling: LSN, into out: inout [RedoRecord]) -> Bool {
        if let frozen = state.withLock({ $0.frozen }) {
            return InMemoryLayer.collect(frozen.ordinals.value(for: key).map { frozen.heads[Int($0)] }, frozen.entries, frozen.pages, floor: floor, ceiling: ceiling, into: &out)
        }
        InMemoryLayer.betweenFrozenCheckAndLiveRead?(self)
        return state.withLock { s in
            // Frozen since the check above: the values moved from `index` to `frozen` (reading the
            // emptied index would silently skip them and hand out an older version of the page).
            if let frozen = s.frozen {
                return InMemoryLayer.collect(frozen.ordinals.value(for: key).map { frozen.heads[Int($0)] }, frozen.entries, frozen.pages, floor: floor, ceiling: ceiling, into: &out)
            }
            return InMemoryLayer.collect(s.ordinals.value(for: key).map { s.heads[Int($0)] }, s.entries, s.pages, floor: floor, ceiling: ceiling, into: &out)
        }
    }

    private static func collect(_ newest: Int32?, _ entries: [Entry], _ pages: [[UInt8]], floor: LSN?, ceiling: LSN,
                                into out: inout [RedoRecord]) -> Bool {
        guard var i = newest else { return false }
        while i >= 0 && entries[Int(i)].lsn > ceiling { i = entries[Int(i)].previous }
        while i >= 0 {
            let e = entries[Int(i)]
            if let floor, e.lsn <= floor { return false }
            let bytes = Array(pages[Int(e.page)][Int(e.offset)..<Int(e.offset + e.length)])
            out.append(RedoRecord(lsn: e.lsn, value: Value(kind: e.kind, willInit: e.willInit, bytes: bytes)))
            if e.kind == .image || e.willInit { return true }
            i = e.previous
        }
        return false
    }

    /// One chunk's share of a frozen layer, for the flush: its entries ordered by key, then LSN, and
    /// the bytes its delta layer will hold (values plus 48 bytes of index each).
    struct FlushChunk: Sendable {
        var chunk: ChunkId
        var entries: ArraySlice<Int32>
        var bytes: Int
    }

    /// The frozen layer's contents by chunk, in chunk order. REQUIRES: the layer is frozen.
    func flushChunks() -> [FlushChunk] {
        guard let c = state.withLock({ $0.frozen }) else { preconditionFailure("flush of an open in-memory layer") }
        // Ordinals in key order; rank[o] is ordinal o's position in it.
        var byKey = Array(0..<Int32(c.keys.count))
        byKey.sort { c.keys[Int($0)] < c.keys[Int($1)] }
        var rank = [Int32](repeating: 0, count: c.keys.count)
        for (position, o) in byKey.enumerated() { rank[Int(o)] = Int32(position) }
        // Chunks: consecutive ranks of one chunk form runs; a chunk may own several runs (the
        // metadata chunk's keys are not contiguous in key order).
        var chunkIndex: [ChunkId: Int] = [:]
        var chunkOfRank = [Int32](repeating: 0, count: c.keys.count)
        var chunkIds: [ChunkId] = []
        var currentChunk: ChunkId?
        var current = -1
        for (position, o) in byKey.enumerated() {
            let chunk = ChunkId(containing: c.keys[Int(o)])
            if chunk != currentChunk {
                if let j = chunkIndex[chunk] {
                    current = j
                } else {
                    current = chunkIds.count
                    chunkIndex[chunk] = current
                    chunkIds.append(chunk)
                }
                currentChunk = chunk
            }
            chunkOfRank[position] = Int32(current)
        }
        // Counting sort of the entries by (chunk, rank); entries are in LSN order already, and the
        // sort is stable, so each key's entries stay in ascending LSN order.
        let chunkOrder = chunkIds.indices.sorted { chunkIds[$0] < chunkIds[$1] }
        var entriesPerRank = [Int](repeating: 0, count: c.keys.count)
        var bytes = [Int](repeating: 0, count: chunkIds.count)
        for e in c.entries {
            let r = Int(rank[Int(e.ordinal)])
            entriesPerRank[r] += 1
            bytes[Int(chunkOfRank[r])] += Int(e.length) + 48
        }
        // Each chunk's ranks in ascending order, the chunks in chunk order: where each rank's
        // entries start in `sorted`.
        var ranksByChunk = [[Int]](repeating: [], count: chunkIds.count)
        for r in 0..<c.keys.count { ranksByChunk[Int(chunkOfRank[r])].append(r) }
        var start = [Int](repeating: 0, count: c.keys.count)
        var chunkRange = [Range<Int>](repeating: 0..<0, count: chunkIds.count)
        var offset = 0
        for j in chunkOrder {
            let first = offset
            for r in ranksByChunk[j] {
                start[r] = offset
                offset += entriesPerRank[r]
            }
            chunkRange[j] = first..<offset
        }
        var sorted = [Int32](repeating: 0, count: c.entries.count)
        for (i, e) in c.entries.enumerated() {
            let r = Int(rank[Int(e.ordinal)])
            sorted[start[r]] = Int32(i)
            start[r] += 1
        }
        return chunkOrder.map { j in
            FlushChunk(chunk: chunkIds[j], entries: sorted[chunkRange[j]], bytes: bytes[j])
        }
    }

    /// Calls `body` for every value of `chunk` (from `flushChunks`), by key, then LSN ascending (the
    /// order layer files need). REQUIRES: the layer is frozen.
    func forEachValue(in chunk: FlushChunk,
                      _ body: (Key, LSN, Value.Kind, Bool, UnsafeRawBufferPointer) throws -> Void) rethrows {
        guard let c = state.withLock({ $0.frozen }) else { preconditionFailure("flush of an open in-memory layer") }
        // Entries are visited in key order but lie in LSN order, and so do their values in the
        // arena: nearly every visit misses the cache. The entry `entryAhead` visits on and the value
        // `valueAhead` visits on are requested early (a hint), so that the copy into the layer
        // writer does not wait for memory.
        let order = chunk.entries
        let entryAhead = 16, valueAhead = 8
        c.entries.withUnsafeBufferPointer { entries in
            for n in order.startIndex..<min(order.startIndex + entryAhead, order.endIndex) {
                cs_prefetch(entries.baseAddress! + Int(order[n]))
            }
        }
        for n in order.indices {
            if n + entryAhead < order.endIndex {
                c.entries.withUnsafeBufferPointer { cs_prefetch($0.baseAddress! + Int(order[n + entryAhead])) }
            }
            if n + valueAhead < order.endIndex {
                let ahead = c.entries[Int(order[n + valueAhead])]
                c.pages[Int(ahead.page)].withUnsafeBytes { page in
                    let address = page.baseAddress! + Int(ahead.offset)
                    cs_prefetch(address)
                    if ahead.length > 64 { cs_prefetch(address + 64) }
                }
            }
            let e = c.entries[Int(order[n])]
            try c.pages[Int(e.page)].withUnsafeBytes { page in
                try body(c.keys[Int(e.ordinal)], e.lsn, e.kind, e.willInit,
                         UnsafeRawBufferPointer(rebasing: page[Int(e.offset)..<Int(e.offset + e.length)]))
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif

/// Empty 1 MiB arrays whose memory is already faulted in, made by a thread of their own.
///
/// A fresh allocation's pages fault (and are zeroed by the kernel) on first write; the supply thread
/// pays that on another core, before the ingest thread needs the page. At most `target` pages wait
/// (8 MiB); `take` never blocks: when none is ready the caller allocates as before.
///
/// Invariant: a supplied array is empty (count 0), uniquely referenced, with capacity
/// `InMemoryLayer.pageBytes`, and every 4 KiB page of its storage is faulted in (populated by
/// MADV_POPULATE_WRITE, or written once where that is unavailable).
final class ArenaPageSupply: @unchecked Sendable {
    static let shared = ArenaPageSupply()
    static let target = 8
    /// MADV_POPULATE_WRITE (Linux 5.14), which Glibc's Swift overlay does not export.
    static let madvPopulateWrite: Int32 = 23

    private let ready = Mutex<[[UInt8]]>([])
    private let wanted = DispatchSemaphore(value: 0)
    private let started = Atomic<Bool>(false)

    /// A faulted-in empty page, or nil when none is ready (the caller allocates one itself).
    func take() -> [UInt8]? {
        if !started.load(ordering: .relaxed), !started.exchange(true, ordering: .acquiringAndReleasing) { startThread() }
        let page = ready.withLock { $0.popLast() }
        wanted.signal()
        return page
    }

    private func startThread() {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        var thread = pthread_t()
        let me = Unmanaged.passRetained(self).toOpaque()
        pthread_create(&thread, &attributes, { arg in
            let supply = Unmanaged<ArenaPageSupply>.fromOpaque(arg!).takeRetainedValue()
            supply.run()
            return nil
        }, me)
        pthread_detach(thread)
        pthread_attr_destroy(&attributes)
    }

    private func run() {
        while true {
            while ready.withLock({ $0.count }) < ArenaPageSupply.target {
                let page = [UInt8](unsafeUninitializedCapacity: InMemoryLayer.pageBytes) { buffer, count in
                    // Fault in every page of the storage; the array stays empty. MADV_POPULATE_WRITE
                    // does it in one call (Linux 5.14+); otherwise touch each 4 KiB page.
                    let base = UnsafeMutableRawPointer(buffer.baseAddress!)
                    let first = (Int(bitPattern: base) + 4095) & ~4095
                    let last = (Int(bitPattern: base) + InMemoryLayer.pageBytes) & ~4095
                    var populated = false
                    if last > first, let start = UnsafeMutableRawPointer(bitPattern: first) {
                        populated = madvise(start, last - first, ArenaPageSupply.madvPopulateWrite) == 0
                    }
                    if !populated {
                        var offset = 0
                        while offset < InMemoryLayer.pageBytes {
                            base.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self)
                            offset += 4096
                        }
                    }
                    count = 0
                }
                ready.withLock { $0.append(page) }
            }
            wanted.wait()
        }
    }
}

func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
