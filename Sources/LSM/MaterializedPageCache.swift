// The materialized page cache: values the read path had to reconstruct (a base plus records run
// through redo), kept so that the next read of the same key starts from them instead of from the base;
// and pages read from image layers, kept compressed one by one (see invariant 8).
//
// An entry (key, L, bytes) is the key's value at LSN L: every record with LSN <= L applied. A read at
// LSN R >= L then collects only the values in (L, R] (usually none, or a few new records) and applies
// them to `bytes`; a read at R < L ignores the entry.
//
// One cache serves every store of a process (`StorageContext`); entries are keyed by the store's
// number and the key.
//
// Memory: while the cache holds under half its capacity and has never had to make room, entries
// are kept as they are, so that a hit costs no more than a lookup (a small store's pages then all
// fit as they are). Once any shard has had to make room, entries inserted are compressed at once
// (LZ4, kept when that saves at least a quarter of the bytes: a heap page of short rows is often a
// fifth of its size), and a sweep compresses each entry held as it is that it passes with credit
// left, evicting the others as before. The same bytes then hold several times the pages, and a
// hit decompresses (a few microseconds), far less than the plan, block reads and redo it saves.
// The cache's bytes may be charged to the data cache's budget through a `CacheLoan`: the decoded
// data blocks then have that much less room, so the page memory of the process is one budget
// however it is split.
//
// Invariants:
// 1. An entry is only inserted for an LSN at or below the store's last_record_lsn as it was before the
//    read that produced it took its layer-map snapshot, so every value at or below L existed in that
//    snapshot and the entry is complete. (A read "at latest" beyond last_record_lsn is never cached.)
// 2. An entry is replaced only by one at a higher LSN.
// 3. A shard's charged bytes (stored bytes + `entryOverhead` per entry) never exceed
//    `capacityBytes / shardCount` after an insert returns; a full shard evicts by a CLOCK sweep
//    weighted by cost: an entry's `level` grows with the log2 of the records its reconstruction
//    applied (the most seen for the key), a hit restores its `credit` to that level, and the sweep
//    takes one credit per pass and evicts an entry with none left. A page rebuilt from thousands of
//    records (a hot table's page between checkpoints) then outlives many passes, and one rebuilt
//    from a few survives as under plain CLOCK: evicted on the first pass unless hit since.
// 4. With a loan, the loan includes exactly the bytes the shards charge (updated under each
//    shard's lock, by the change).
// 5. A lookup returns exactly the bytes inserted (compression is lossless and checked: an entry
//    that does not decompress to its recorded length is dropped, never returned). An entry is
//    compressed at most once (`packed`), in place and under its shard's lock, so its LSN, level
//    and credit do not change with it.
// 6. The capacity may change while the cache runs (`setCapacity`, up to the capacity it was made
//    with): a lower one evicts at once, by the same sweep.
// 7. Each shard remembers the keys it evicted last, up to its share of `ghostBytes` (`GhostList`);
//    a lookup that finds no entry for such a key counts in `takeGhostHits` (a larger cache would
//    have had it).
// 8. Pages read as images (no redo) may be remembered too, at the lowest cost level: a hit then
//    costs a decompression of the page alone instead of a data block's lookup or read. Where the
//    decoded blocks would serve them as well, the balance (PageMemoryBalance) takes the room back.
//    (Which image reads are remembered is the read path's choice: TimelineStore.reconstruct.)

import CShims
import Synchronization

public final class MaterializedPageCache: Sendable {
    private struct Entry {
        var lsn: LSN
        /// The value, LZ4-compressed when `rawLength > 0`, else as it is.
        var stored: [UInt8]
        /// The value's length when `stored` is compressed; 0 when it is stored as it is.
        var rawLength: Int32
        /// 1 + log2 of the records applied to rebuild it, at most 15 (`level(records:)`).
        var level: UInt8
        /// Read as an image (no redo): a miss on it costs a block read, not a rebuild.
        var image: Bool
        /// Passes of the sweep it survives; a hit restores it to `level`.
        var credit: UInt8
        /// Compression was tried (it is compressed, or it did not save a quarter).
        var packed: Bool

        var charge: Int { stored.count + MaterializedPageCache.entryOverhead }
    }

    /// Bytes charged per entry besides its stored bytes: the slot, the index entry and the array
    /// header, roughly.
    static let entryOverhead = 96

    /// A reconstruction's cost class: 1 for one record, 2 for 2-3, ... 14 for 8192-16383, capped at 15.
    static func level(records: Int) -> UInt8 {
        UInt8(min(15, Int.bitWidth - max(1, records).leadingZeroBitCount))
    }

    private struct CacheKey: Hashable {
        var store: UInt32
        var key: Key

        /// A multiplicative mix of the fields instead of SipHash over all of them: the hash is taken
        /// twice per lookup (shard, then bucket), once inside the shard's lock.
        var mixed: UInt64 {
            var h = UInt64(store) &* 0x9E37_79B9_7F4A_7C15
            h = (h ^ (UInt64(key.field1) << 56 | UInt64(key.field2) << 24 | UInt64(key.field3 >> 8))) &* 0xC2B2_AE3D_27D4_EB4F
            h = (h ^ (UInt64(key.field3 & 0xFF) << 56 | UInt64(key.field4) << 24 | UInt64(key.field5) << 16)) &* 0x1656_67B1_9E37_79F9
            h = (h ^ UInt64(key.field6)) &* 0x9E37_79B9_7F4A_7C15
            return h ^ (h >> 29)
        }

        func hash(into hasher: inout Hasher) { hasher.combine(mixed) }
    }

    /// One CLOCK ring. Evicted slots are kept as holes (`free`) and reused by later inserts, so that
    /// no surviving entry moves under the hand.
    private struct Shard {
        var index: [CacheKey: Int] = [:]
        var slots: [(key: CacheKey, entry: Entry)?] = []
        var free: [Int] = []
        var hand = 0
        var usedBytes = 0
        var ghost = GhostList()
    }

    private final class LockedShard: Sendable {
        let state = FutexLock(Shard())
    }

    /// Up to 256 shards, fewer for small caches (at least 32 pages' worth of bytes a shard where the
    /// capacity allows). Many shards because every GetPage looks here first, from as many threads as
    /// there are clients.
    private let shardCount: Int
    private let shards: [LockedShard]
    /// The most the capacity may be set to, as made.
    public let maximumBytes: Int
    private let perShardBytes: Atomic<Int>
    private let ghostBytesPerShard: Int
    private let ghostHitCount = Atomic<Int>(0)
    private let imageGhostHitCount = Atomic<Int>(0)
    private let loan: CacheLoan?
    private let hitCount = Atomic<Int>(0)
    private let insertCount = Atomic<Int>(0)
    private let heldBytes = Atomic<Int>(0)
    /// Some shard has had to make room: entries are compressed from then on.
    private let hasBeenFull = Atomic<Bool>(false)

    /// A cache of at most `capacityBytes` (0 disables it), charged to `loan` when one is given, that
    /// remembers the keys of up to `ghostBytes` of evicted entries.
    public init(capacityBytes: Int, borrowing loan: CacheLoan? = nil, ghostBytes: Int = 0) {
        var n = 256
        while n > 1 && capacityBytes / n < 32 * 8192 { n /= 2 }
        shardCount = n
        maximumBytes = max(0, capacityBytes)
        perShardBytes = Atomic(capacityBytes <= 0 ? 0 : max(1, capacityBytes / n))
        ghostBytesPerShard = max(0, ghostBytes) / n
        shards = (0..<n).map { _ in LockedShard() }
        self.loan = loan
    }

    public var isEnabled: Bool { maximumBytes > 0 }
    /// The capacity now.
    public var capacityBytes: Int { perShardBytes.load(ordering: .relaxed) * shardCount }
    /// Lookups that found no entry for a key evicted recently, since the last call.
    public func takeGhostHits() -> Int {
        let taken = takeGhostHitsByKind()
        return taken.rebuilt + taken.images
    }
    /// The same, by the kind of entry evicted: rebuilt by redo, or read as an image.
    public func takeGhostHitsByKind() -> (rebuilt: Int, images: Int) {
        (ghostHitCount.exchange(0, ordering: .relaxed), imageGhostHitCount.exchange(0, ordering: .relaxed))
    }
    /// The same, without taking them.
    var pendingGhostHits: Int { ghostHitCount.load(ordering: .relaxed) + imageGhostHitCount.load(ordering: .relaxed) }

    /// Sets the capacity, at most `maximumBytes` and at least one page's worth a shard; a lower
    /// one evicts at once.
    public func setCapacity(_ bytes: Int) {
        guard isEnabled else { return }
        let perShard = max(8192 + MaterializedPageCache.entryOverhead, min(bytes, maximumBytes) / shardCount)
        let old = perShardBytes.exchange(perShard, ordering: .relaxed)
        guard perShard < old else { return }
        for box in shards { box.state.withLock { s in evict(&s, toHold: perShard) } }
    }
    /// Drops every entry (benchmarks use it to measure cold reads); the cache then counts as never
    /// having been full, as a new one would.
    public func clear() {
        for box in shards { box.state.withLock { s in for i in s.slots.indices { remove(&s, at: i) } } }
        hasBeenFull.store(false, ordering: .relaxed)
    }
    public var hits: Int { hitCount.load(ordering: .relaxed) }
    public var inserts: Int { insertCount.load(ordering: .relaxed) }
    /// Bytes charged by all entries now (stored bytes and overhead).
    public var usedBytes: Int { heldBytes.load(ordering: .relaxed) }

    private func shard(_ key: CacheKey) -> LockedShard {
        shards[Int((key.mixed >> 40) % UInt64(shardCount))]
    }

    /// The newest cached value of `key` at or below `lsn`.
    func lookup(_ store: UInt32, _ k: Key, at lsn: LSN) -> (lsn: LSN, bytes: [UInt8])? {
        guard isEnabled else { return nil }
        let key = CacheKey(store: store, key: k)
        let box = shard(key)
        let found: Entry? = box.state.withLock { s in
            guard let i = s.index[key] else {
                if ghostBytesPerShard > 0, let tag = s.ghost.takeTag(key.mixed) {
                    if tag == 1 { imageGhostHitCount.add(1, ordering: .relaxed) } else { ghostHitCount.add(1, ordering: .relaxed) }
                }
                return nil
            }
            guard let slot = s.slots[i], slot.entry.lsn <= lsn else { return nil }
            s.slots[i]!.entry.credit = slot.entry.level
            return slot.entry
        }
        guard let found else { return nil }
        if found.rawLength == 0 {
            hitCount.add(1, ordering: .relaxed)
            return (found.lsn, found.stored)
        }
        // Decompressed outside the lock; the entry's array is shared, not copied.
        let n = Int(found.rawLength)
        var ok = false
        let bytes = [UInt8](unsafeUninitializedCapacity: n) { out, count in
            let got = found.stored.withUnsafeBufferPointer { src in
                LZ4_decompress_safe(UnsafeRawPointer(src.baseAddress!).assumingMemoryBound(to: CChar.self),
                                    UnsafeMutableRawPointer(out.baseAddress!).assumingMemoryBound(to: CChar.self),
                                    Int32(src.count), Int32(n))
            }
            ok = got == Int32(n)
            count = ok ? n : 0
        }
        guard ok else {
            // Cannot happen for bytes this cache compressed; never hand out a wrong page.
            drop(key, lsn: found.lsn)
            return nil
        }
        hitCount.add(1, ordering: .relaxed)
        return (found.lsn, bytes)
    }

    private func drop(_ key: CacheKey, lsn: LSN) {
        shard(key).state.withLock { s in
            guard let i = s.index[key], let slot = s.slots[i], slot.entry.lsn == lsn else { return }
            remove(&s, at: i)
        }
    }

    /// The cost-weighted CLOCK sweep (invariant 3) until the shard charges at most `limit` bytes:
    /// an entry the hand passes with credit left is compressed if it was held as it is, and loses
    /// one; evicted keys go to the ghost list.
    private func evict(_ s: inout Shard, toHold limit: Int) {
        if s.usedBytes > limit && !hasBeenFull.load(ordering: .relaxed) { hasBeenFull.store(true, ordering: .relaxed) }
        while s.usedBytes > limit && !s.slots.isEmpty {
            let h = s.hand
            s.hand = (s.hand + 1) % s.slots.count
            guard let slot = s.slots[h] else { continue }
            if slot.entry.credit > 0 && !slot.entry.packed {
                let (stored, rawLength) = MaterializedPageCache.encode(slot.entry.stored)
                s.slots[h]!.entry.packed = true
                if rawLength > 0 {
                    let saved = slot.entry.stored.count - stored.count
                    s.slots[h]!.entry.stored = stored
                    s.slots[h]!.entry.rawLength = rawLength
                    s.usedBytes -= saved
                    account(-saved)
                }
            }
            if slot.entry.credit > 0 {
                s.slots[h]!.entry.credit -= 1
            } else {
                if ghostBytesPerShard > 0 {
                    s.ghost.add(slot.key.mixed, charge: slot.entry.charge, limit: ghostBytesPerShard, tag: slot.entry.image ? 1 : 0)
                }
                remove(&s, at: h)
            }
        }
    }

    private func remove(_ s: inout Shard, at i: Int) {
        guard let slot = s.slots[i] else { return }
        s.index.removeValue(forKey: slot.key)
        s.slots[i] = nil
        s.free.append(i)
        s.usedBytes -= slot.entry.charge
        account(-slot.entry.charge)
    }

    private func account(_ change: Int) {
        guard change != 0 else { return }
        heldBytes.add(change, ordering: .relaxed)
        loan?.bytes.add(change, ordering: .relaxed)
    }

    /// `bytes` as the cache stores them: LZ4-compressed when that saves a quarter or more.
    private static func encode(_ bytes: [UInt8]) -> (stored: [UInt8], rawLength: Int32) {
        let n = bytes.count
        guard n >= 256 else { return (bytes, 0) }
        let limit = n - n / 4
        let compressed: [UInt8] = withUnsafeTemporaryAllocation(of: UInt8.self, capacity: limit) { out in
            let count = bytes.withUnsafeBufferPointer { src in
                Int(cs_lz4_compress(src.baseAddress!, out.baseAddress!, Int32(n), Int32(limit)))
            }
            return count > 0 ? Array(out[0..<count]) : []
        }
        guard !compressed.isEmpty else { return (bytes, 0) }  // did not fit in `limit`: stored as is
        return (compressed, Int32(n))
    }

    /// Whether the shard of `key` has room to spare (an eighth of its capacity free): an insert
    /// there evicts nothing.
    func hasRoom(_ store: UInt32, _ k: Key) -> Bool {
        guard isEnabled else { return false }
        let key = CacheKey(store: store, key: k)
        let capacity = perShardBytes.load(ordering: .relaxed)
        return shard(key).state.withLock { s in s.usedBytes < capacity - capacity / 8 }
    }

    /// Remembers `bytes` as the value of `key` at `lsn`, rebuilt by applying `records` records (0:
    /// read as an image; see invariant 1 for who may call this).
    func insert(_ store: UInt32, _ k: Key, at lsn: LSN, _ bytes: [UInt8], records: Int = 1) {
        guard isEnabled else { return }
        let key = CacheKey(store: store, key: k)
        let box = shard(key)
        let capacity = perShardBytes.load(ordering: .relaxed)
        // Nothing to do when the shard already holds this LSN or a newer one. Held as it is while the
        // cache holds under half its capacity and has never been full (compressed outside the lock
        // otherwise).
        let current: LSN? = box.state.withLock { s in s.index[key].flatMap { s.slots[$0]?.entry.lsn } }
        let room = !hasBeenFull.load(ordering: .relaxed)
            && heldBytes.load(ordering: .relaxed) + bytes.count + MaterializedPageCache.entryOverhead <= capacity * shardCount / 2
        if let current, current >= lsn { return }
        let (stored, rawLength) = room ? (bytes, 0) : MaterializedPageCache.encode(bytes)
        // An image read ranks below every rebuilt page: missing it costs a block read, not a rebuild.
        let level = records == 0 ? 1 : min(15, MaterializedPageCache.level(records: records) + 1)
        box.state.withLock { s in
            var entry = Entry(lsn: lsn, stored: stored, rawLength: rawLength, level: level, image: records == 0, credit: level - 1,
                              packed: !room || bytes.count < 256)
            if let i = s.index[key], let old = s.slots[i] {
                guard old.entry.lsn < lsn else { return }
                // Rebuilt from the cached value plus a few records: without the entry, the next
                // read would pay what the key cost before, so the entry keeps the higher level.
                let kept = max(level, old.entry.level)
                entry.level = kept
                entry.credit = kept
                remove(&s, at: i)
            } else {
                insertCount.add(1, ordering: .relaxed)
            }
            let charge = entry.charge
            guard charge <= capacity else { return }
            evict(&s, toHold: capacity - charge)
            let i: Int
            if let f = s.free.popLast() {
                i = f
                s.slots[i] = (key, entry)
            } else {
                i = s.slots.count
                s.slots.append((key, entry))
            }
            s.index[key] = i
            s.usedBytes += charge
            account(charge)
        }
    }
}
