import Synchronization

/// A bounded cache of verified blocks, keyed by (open file, block offset).
///
/// Design: `shardCount` shards, each a CLOCK ring under its own mutex, so that concurrent lookups
/// rarely contend. Two caches can share one budget through a `CacheLoan`: the borrower (the
/// compressed tier of the data cache) charges the bytes it holds to the loan, and the lender (the
/// decoded tier) has that much less room. So the compressed tier costs the decoded tier only what
/// it actually holds. Invariants:
/// 1. Only blocks whose checksum verified are inserted (callers insert after `decodeBlock`), with
///    one exception: a prefetched window (`insertWindow`) holds a file's bytes as read, and every
///    block in it is verified when a reader decodes it.
/// 2. The bytes held by a shard never exceed `(capacityBytes - loan) / shardCount` after an insert
///    returns, the loan read at that insert (a block larger than that is not cached at all). A
///    lender's shard that a grown loan has put over budget shrinks at its next insert or `trim`.
/// 3. A file's blocks are keyed by a process-unique file id, never reused, so a deleted file's
///    stale blocks cannot be found by a new file; they age out.
/// 4. A borrower's loan equals the bytes its shards hold (updated after each insert or clear).
/// 5. A borrower's capacity may be changed while it runs (`setCapacity`); a shard over its new share
///    shrinks at its next insert, as in 2.
/// 6. With `ghostBytes > 0`, each shard remembers the keys it evicted last, up to its share of those
///    bytes (`GhostList`); a miss on one of them counts in `ghostHits`.

/// Bytes that one cache holds out of another's capacity (see `BlockCache`).
public final class CacheLoan: Sendable {
    let bytes = Atomic<Int>(0)
    public init() {}
    public var borrowedBytes: Int { bytes.load(ordering: .relaxed) }
}

public final class BlockCache: Sendable {
    public struct CacheKey: Hashable, Sendable {
        public var fileId: UInt64
        public var offset: UInt64

        /// One word into the hasher instead of two: file ids are small and offsets below 2^48.
        public func hash(into hasher: inout Hasher) {
            hasher.combine(fileId &* 0x9E37_79B9_7F4A_7C15 ^ offset)
        }
    }

    /// One CLOCK ring as parallel arrays: the sweep reads only `referenced` and `sizes`, never the
    /// blocks themselves, so passing over a slot touches no block's memory (with an array of slots,
    /// each slot the hand passed was copied out, retaining its block: a cache miss per slot).
    private struct Shard: ~Copyable {
        var map: [CacheKey: Int] = [:]
        var keys: [CacheKey] = []
        var blocks: [[UInt8]] = []
        /// Charged bytes of the slot's block; 0 marks a free slot.
        var sizes: [Int] = []
        var referenced: [Bool] = []
        var free: [Int] = []
        var hand = 0
        var usedBytes = 0
        /// Counted under the shard's lock: one shared atomic would be a cache line every reading
        /// thread writes.
        var hits = 0
        var misses = 0
        /// Lookups and misses of the current window, and the miss share of the last full one (per
        /// mille; a shard's window is `missWindow` lookups).
        var windowLookups = 0
        var windowMisses = 0
        var missPermille = 0
        var ghost = GhostList()
    }

    /// Lookups per shard over which `recentMissPermille` is taken.
    static let missWindow = 128

    /// Up to 256 shards, fewer for small caches so that a shard holds at least `minimumShardBytes`.
    private let shardCount: Int
    private final class ShardBox: Sendable {
        let lock = FutexLock(Shard())
    }

    private let shards: [ShardBox]
    /// The capacity now (`setCapacity`); the lender's shrinks by its loan besides.
    private let capacity: Atomic<Int>
    public var capacityBytes: Int { capacity.load(ordering: .relaxed) }
    private let ghostBytesPerShard: Int
    private let ghostHitCount = Atomic<Int>(0)
    /// Misses on recently evicted keys since the last `takeGhostHits`.
    public func takeGhostHits() -> Int { ghostHitCount.exchange(0, ordering: .relaxed) }
    /// The same, without taking them.
    var pendingGhostHits: Int { ghostHitCount.load(ordering: .relaxed) }

    /// `minimumShardBytes`: the data cache keeps 4 MiB so that a shard still holds several large
    /// blocks; the index cache, whose blocks are 4 KiB and few of them hot, takes smaller shards and
    /// more of them, so that concurrent lookups of hot index blocks rarely meet on one lock.
    /// Set by the first insert that had to evict: the cache has been full.
    private let evicted = Atomic<Bool>(false)
    /// True once an insert has had to evict a block (the cache filled up at least once).
    public var hasEvicted: Bool { evicted.load(ordering: .relaxed) }
    /// The bytes the shards hold, as they count them (kept beside the shards so that reading it
    /// takes no lock).
    private let held = Atomic<Int>(0)
    public var heldBytes: Int { held.load(ordering: .relaxed) }
    /// True once a prefetched window has been inserted (`insertWindow`): only then do readers look
    /// for window entries.
    private let windows = Atomic<Bool>(false)
    var hasWindows: Bool { windows.load(ordering: .relaxed) }

    /// Inserts the entry of a prefetched window of a file (see `BlockFetcher`).
    func insertWindow(_ key: CacheKey, _ bytes: [UInt8]) {
        if !windows.load(ordering: .relaxed) { windows.store(true, ordering: .relaxed) }
        insert(key, bytes)
    }
    /// The loan this cache's capacity shrinks by (it is the lender), or nil.
    private let lentTo: CacheLoan?
    /// The loan this cache's bytes are charged to (it is the borrower), or nil.
    private let borrowedFrom: CacheLoan?

    /// `ghostBytes`: how many bytes of recently evicted blocks to remember the keys of (0: none).
    public init(capacityBytes: Int, minimumShardBytes: Int = 4 << 20, lending: CacheLoan? = nil, borrowing: CacheLoan? = nil,
                ghostBytes: Int = 0) {
        self.capacity = Atomic(capacityBytes)
        self.lentTo = lending
        self.borrowedFrom = borrowing
        var shards = 256
        while shards > 1 && capacityBytes / shards < minimumShardBytes { shards /= 2 }
        self.shardCount = shards
        self.ghostBytesPerShard = max(0, ghostBytes) / shards
        self.shards = (0..<shards).map { _ in ShardBox() }
    }

    @inline(__always)
    private static func ghostHash(_ key: CacheKey) -> UInt64 {
        let h = (key.fileId &* 0x9E37_79B9_7F4A_7C15 ^ key.offset) &* 0xC2B2_AE3D_27D4_EB4F
        return h ^ (h >> 31)
    }

    @inline(__always)
    private func shard(_ key: CacheKey) -> Int {
        Int(truncatingIfNeeded: (key.fileId &* 0x9E37_79B9_7F4A_7C15 ^ key.offset &* 0xC2B2_AE3D_27D4_EB4F) >> 56) % shardCount
    }

    /// Whether `key` is cached, without counting a lookup or marking the block used.
    public func contains(_ key: CacheKey) -> Bool {
        shards[shard(key)].lock.withLock { $0.map[key] != nil }
    }

    public func get(_ key: CacheKey) -> [UInt8]? {
        shards[shard(key)].lock.withLock { s -> [UInt8]? in
            s.windowLookups += 1
            if s.windowLookups == BlockCache.missWindow {
                s.missPermille = s.windowMisses * 1000 / BlockCache.missWindow
                s.windowLookups = 0
                s.windowMisses = 0
            }
            guard let i = s.map[key] else {
                s.misses += 1
                s.windowMisses += 1
                if ghostBytesPerShard > 0 && s.ghost.take(BlockCache.ghostHash(key)) {
                    ghostHitCount.add(1, ordering: .relaxed)
                }
                return nil
            }
            s.hits += 1
            s.referenced[i] = true
            return s.blocks[i]
        }
    }

    /// The share of `get`s that missed (per mille) over the last full window of `missWindow`
    /// lookups of the shard that holds `key` (0 before one is full): a cheap sample of how well the
    /// cache holds what is read now.
    public func recentMissPermille(near key: CacheKey) -> Int {
        shards[shard(key)].lock.withLock { $0.missPermille }
    }

    /// As `get`, and says whether the block had been hit since it was inserted or last reported so:
    /// the second hit reports true and starts the count again. (The compressed tier promotes a
    /// block to the decoded tier on every second hit, so that a block read once in a while does not
    /// push a hot decoded one out.)
    public func getCountingReuse(_ key: CacheKey) -> (bytes: [UInt8], reused: Bool)? {
        shards[shard(key)].lock.withLock { s -> (bytes: [UInt8], reused: Bool)? in
            guard let i = s.map[key] else {
                s.misses += 1
                return nil
            }
            s.hits += 1
            let reused = s.referenced[i]
            s.referenced[i] = !reused
            return (s.blocks[i], reused)
        }
    }

    public func insert(_ key: CacheKey, _ bytes: [UInt8]) {
        let size = bytes.count + 64
        let cap = shareBytes
        guard size <= cap else { return }
        let change = shards[shard(key)].lock.withLock { s -> Int in
            if s.map[key] != nil { return 0 }
            let before = s.usedBytes
            let count = s.sizes.count
            if s.usedBytes + size > cap && !evicted.load(ordering: .relaxed) { evicted.store(true, ordering: .relaxed) }
            evict(&s, toHold: cap - size)
            let i: Int
            if let f = s.free.popLast() {
                i = f
                s.keys[i] = key
                s.blocks[i] = bytes
                s.sizes[i] = size
                s.referenced[i] = false
            } else {
                i = count
                s.keys.append(key)
                s.blocks.append(bytes)
                s.sizes.append(size)
                s.referenced.append(false)
            }
            s.map[key] = i
            s.usedBytes += size
            return s.usedBytes - before
        }
        if change != 0 {
            held.add(change, ordering: .relaxed)
            borrowedFrom?.bytes.add(change, ordering: .relaxed)
        }
    }

    /// CLOCK: clears reference bits until an unreferenced block comes round, then evicts it, until
    /// the shard holds at most `limit` bytes (two passes at most: the first clears every bit).
    private func evict(_ s: inout Shard, toHold limit: Int) {
        let count = s.sizes.count
        var steps = 0
        while s.usedBytes > limit && steps < 2 * count + 1 {
            if s.hand >= count { s.hand = 0 }
            let h = s.hand
            if s.sizes[h] != 0 {
                if s.referenced[h] {
                    s.referenced[h] = false
                } else {
                    if ghostBytesPerShard > 0 {
                        s.ghost.add(BlockCache.ghostHash(s.keys[h]), charge: s.sizes[h], limit: ghostBytesPerShard)
                    }
                    s.map[s.keys[h]] = nil
                    s.usedBytes -= s.sizes[h]
                    s.sizes[h] = 0
                    s.blocks[h] = []
                    s.free.append(h)
                }
            }
            s.hand += 1
            steps += 1
        }
    }

    /// Evicts from `key`'s shard until it holds no more than its share of the capacity (less the
    /// loan): what an insert there would do first. For a lender that skips an insert, so that a
    /// grown loan still shrinks it (invariant 2).
    public func trim(near key: CacheKey) {
        shrink(shards[shard(key)], toHold: shareBytes)
    }

    /// A shard's share of the capacity, less the loan for a lender (invariant 2).
    private var shareBytes: Int {
        guard let lentTo else { return capacityBytes / shardCount }
        return max(0, capacityBytes - lentTo.bytes.load(ordering: .relaxed)) / shardCount
    }

    /// Evicts from `box` until it holds at most `limit` bytes, and accounts for what left.
    private func shrink(_ box: ShardBox, toHold limit: Int) {
        let change = box.lock.withLock { s -> Int in
            guard s.usedBytes > limit else { return 0 }
            let before = s.usedBytes
            evict(&s, toHold: limit)
            return s.usedBytes - before
        }
        if change != 0 {
            held.add(change, ordering: .relaxed)
            borrowedFrom?.bytes.add(change, ordering: .relaxed)
        }
    }

    /// Sets the capacity (the shard count stays what the first capacity gave). A lower capacity
    /// evicts at once, so that a borrower's loan falls with it.
    public func setCapacity(_ bytes: Int) {
        let old = capacity.exchange(max(0, bytes), ordering: .relaxed)
        guard bytes < old else { return }
        let cap = max(0, bytes) / shardCount
        for box in shards { shrink(box, toHold: cap) }
    }

    public var usedBytes: Int { shards.reduce(0) { acc, s in acc + s.lock.withLock { $0.usedBytes } } }
    public var hitCount: Int { shards.reduce(0) { acc, s in acc + s.lock.withLock { $0.hits } } }
    public var missCount: Int { shards.reduce(0) { acc, s in acc + s.lock.withLock { $0.misses } } }

    /// Drops every block (benchmarks use it to measure cold reads). The cache then counts as never
    /// having been full again (`hasEvicted`), as a new one would.
    public func clear() {
        evicted.store(false, ordering: .relaxed)
        for s in shards {
            let freed = s.lock.withLock {
                let (hits, misses, used) = ($0.hits, $0.misses, $0.usedBytes)
                $0 = Shard()
                ($0.hits, $0.misses) = (hits, misses)
                return used
            }
            if freed != 0 {
                held.subtract(freed, ordering: .relaxed)
                borrowedFrom?.bytes.subtract(freed, ordering: .relaxed)
            }
        }
    }
}

/// Process-unique ids for open layer files (cache keys).
enum FileIds {
    static let next = Atomic<UInt64>(1)
    static func make() -> UInt64 { next.add(1, ordering: .relaxed).oldValue }
}
