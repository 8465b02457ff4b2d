import Dispatch
import Synchronization

/// The in-memory layer: every value put since the last freeze, readable at once.
///
/// Design: values are appended to an arena of 1 MiB pages, and their entries to one flat array in
/// put order. Each entry links to the previous entry of the same key, and a `KeyTable` maps each
/// key to its newest entry, so a put costs one table probe and two appends (no per-key array), and
/// a read walks a key's chain newest first, which is the order reads want. New arena pages come
/// already faulted in from `ArenaPageSupply`, whose thread touches them ahead of need, so the ingest
/// thread does not take the first-touch page faults of fresh memory (about a tenth of its time
/// otherwise). The open layer takes `put`s from the single ingest thread; `freeze` closes it, after
/// which it is immutable until flushed to delta layers and dropped from the layer map.
///
/// Invariants:
/// 1. Puts arrive in non-decreasing LSN order, each LSN > `startLSN - 1`; per key, LSNs strictly
///    increase (a second put at the same key and LSN is rejected).
/// 2. After `freeze(endLSN:)` the layer covers [startLSN, endLSN) and no put is accepted.
/// 3. `bytes` counts the values' bytes plus per-entry overhead; the owner compares it with
///    `checkpoint_distance`.
/// 4. `entries[i].previous < i`: following `previous` from a key's newest entry visits exactly that
///    key's entries, in strictly descending LSN order, and ends at -1.
public final class InMemoryLayer: Sendable {
    struct Entry {
        var lsn: LSN
        var previous: Int32
        var page: UInt32
        var offset: UInt32
        var length: UInt32
        var kind: Value.Kind
        var willInit: Bool
    }

    struct State: ~Copyable {
        var newest = KeyTable()
        var entries: [Entry] = []
        var pages: [[UInt8]] = []
        var bytes = 0
        var endLSN: LSN?
        var maxLSN: LSN = .zero
        /// Set by `freeze`: the contents, moved out so that readers and the flush need no lock.
        var frozen: Contents?
    }

    final class Contents: Sendable {
        let newest: KeyTable
        let entries: [Entry]
        let pages: [[UInt8]]
        init(newest: KeyTable, entries: [Entry], pages: [[UInt8]]) {
            self.newest = newest
            self.entries = entries
            self.pages = pages
        }
    }

    static let pageBytes = 1 << 20
    static let entryOverheadBytes = 64

    public let startLSN: LSN
    /// Monotonic creation time, for `checkpoint_timeout`.
    let createdAtNanos: UInt64
    private let state = Mutex(State())

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
            let slot = s.newest.slotForInsertion(key)
            let previous = s.newest.value(at: slot)
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
            s.entries.append(Entry(lsn: lsn, previous: previous, page: UInt32(p), offset: UInt32(s.pages[p].count),
                                   length: UInt32(n), kind: value.kind, willInit: value.willInit))
            s.pages[p].append(contentsOf: value.bytes)
            s.newest.set(key, at: slot, to: Int32(s.entries.count - 1))
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
            s.frozen = Contents(newest: s.newest, entries: s.entries, pages: s.pages)
            s.newest = KeyTable(minimumCapacity: 16)
            s.entries = []
            s.pages = []
        }
    }

    /// Tests only: runs inside `collect` after it found the layer open and before it reads the live
    /// index (where a concurrent freeze can land).
    nonisolated(unsafe) static var betweenFrozenCheckAndLiveRead: ((InMemoryLayer) -> Void)?

    /// Appends to `out`, newest first, the values of `key` with LSN in (floor, ceiling], stopping
    /// after the first that starts a chain. Returns true when it found such a value.
    func collect(_ key: Key, floor: LSN?, ceiling: LSN, into out: inout [(LSN, Value)]) -> Bool {
        if let frozen = state.withLock({ $0.frozen }) {
            return InMemoryLayer.collect(frozen.newest.value(for: key), frozen.entries, frozen.pages, floor: floor, ceiling: ceiling, into: &out)
        }
        InMemoryLayer.betweenFrozenCheckAndLiveRead?(self)
        return state.withLock { s in
            // Frozen since the check above: the values moved from `index` to `frozen` (reading the
            // emptied index would silently skip them and hand out an older version of the page).
            if let frozen = s.frozen {
                return InMemoryLayer.collect(frozen.newest.value(for: key), frozen.entries, frozen.pages, floor: floor, ceiling: ceiling, into: &out)
            }
            return InMemoryLayer.collect(s.newest.value(for: key), s.entries, s.pages, floor: floor, ceiling: ceiling, into: &out)
        }
    }

    private static func collect(_ newest: Int32?, _ entries: [Entry], _ pages: [[UInt8]], floor: LSN?, ceiling: LSN,
                                into out: inout [(LSN, Value)]) -> Bool {
        guard var i = newest else { return false }
        while i >= 0 && entries[Int(i)].lsn > ceiling { i = entries[Int(i)].previous }
        while i >= 0 {
            let e = entries[Int(i)]
            if let floor, e.lsn <= floor { return false }
            let bytes = Array(pages[Int(e.page)][Int(e.offset)..<Int(e.offset + e.length)])
            out.append((e.lsn, Value(kind: e.kind, willInit: e.willInit, bytes: bytes)))
            if e.kind == .image || e.willInit { return true }
            i = e.previous
        }
        return false
    }

    /// One chunk's share of a frozen layer, for the flush: its keys in order with their newest
    /// entries, and the bytes its delta layer will hold (values plus 48 bytes of index each).
    struct FlushChunk: Sendable {
        var chunk: ChunkId
        var keys: [(key: Key, newest: Int32)]
        var bytes: Int
    }

    /// The frozen layer's contents by chunk, in chunk order, keys ascending within each.
    /// REQUIRES: the layer is frozen.
    func flushChunks() -> [FlushChunk] {
        guard let c = state.withLock({ $0.frozen }) else { preconditionFailure("flush of an open in-memory layer") }
        var all: [(key: Key, newest: Int32)] = []
        all.reserveCapacity(c.newest.count)
        c.newest.forEach { all.append(($0, $1)) }
        all.sort { $0.key < $1.key }
        var byChunk: [ChunkId: Int] = [:]
        var chunks: [FlushChunk] = []
        var current = -1
        var currentChunk: ChunkId?
        for item in all {
            let chunk = ChunkId(containing: item.key)
            if chunk != currentChunk {
                if let j = byChunk[chunk] {
                    current = j
                } else {
                    current = chunks.count
                    byChunk[chunk] = current
                    chunks.append(FlushChunk(chunk: chunk, keys: [], bytes: 0))
                }
                currentChunk = chunk
            }
            var i = item.newest, bytes = 0
            while i >= 0 {
                bytes += Int(c.entries[Int(i)].length) + 48
                i = c.entries[Int(i)].previous
            }
            chunks[current].keys.append(item)
            chunks[current].bytes += bytes
        }
        chunks.sort { $0.chunk < $1.chunk }
        return chunks
    }

    /// Calls `body` for every value of `chunk` (from `flushChunks`), by key, then LSN ascending (the
    /// order layer files need). REQUIRES: the layer is frozen.
    func forEachValue(in chunk: FlushChunk,
                      _ body: (Key, LSN, Value.Kind, Bool, UnsafeRawBufferPointer) throws -> Void) rethrows {
        guard let c = state.withLock({ $0.frozen }) else { preconditionFailure("flush of an open in-memory layer") }
        var chain: [Int32] = []
        for (key, newest) in chunk.keys {
            chain.removeAll(keepingCapacity: true)
            var i = newest
            while i >= 0 {
                chain.append(i)
                i = c.entries[Int(i)].previous
            }
            for i in chain.reversed() {
                let e = c.entries[Int(i)]
                try c.pages[Int(e.page)].withUnsafeBytes { page in
                    try body(key, e.lsn, e.kind, e.willInit,
                             UnsafeRawBufferPointer(rebasing: page[Int(e.offset)..<Int(e.offset + e.length)]))
                }
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
/// `InMemoryLayer.pageBytes`, and every 4 KiB page of its storage has been written once.
final class ArenaPageSupply: @unchecked Sendable {
    static let shared = ArenaPageSupply()
    static let target = 8

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
                    // Touch every page of the storage; the array stays empty.
                    let base = UnsafeMutableRawPointer(buffer.baseAddress!)
                    var offset = 0
                    while offset < InMemoryLayer.pageBytes {
                        base.storeBytes(of: 0, toByteOffset: offset, as: UInt8.self)
                        offset += 4096
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
