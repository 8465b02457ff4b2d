// The materialized page cache: values the read path had to reconstruct (a base plus records run
// through redo), kept so that the next read of the same key starts from them instead of from the base.
//
// An entry (key, L, bytes) is the key's value at LSN L: every record with LSN <= L applied. A read at
// LSN R >= L then collects only the values in (L, R] (usually none, or a few new records) and applies
// them to `bytes`; a read at R < L ignores the entry.
//
// One cache serves every store of a process (`StorageContext`); entries are keyed by the store's
// number and the key.
//
// Invariants:
// 1. An entry is only inserted for an LSN at or below the store's last_record_lsn as it was before the
//    read that produced it took its layer-map snapshot, so every value at or below L existed in that
//    snapshot and the entry is complete. (A read "at latest" beyond last_record_lsn is never cached.)
// 2. An entry is replaced only by one at a higher LSN.
// 3. Memory is bounded by `capacity` entries; a full shard evicts by a CLOCK sweep weighted by cost:
//    an entry's `level` grows with the log2 of the records its reconstruction applied (the most seen
//    for the key), a hit restores its `credit` to that level, and the sweep takes one credit per pass
//    and evicts an entry with none left. A page rebuilt from thousands of records (a hot table's
//    page between checkpoints) then outlives many passes, and one rebuilt from a few survives as
//    under plain CLOCK: evicted on the first pass unless hit since.

import Synchronization

public final class MaterializedPageCache: Sendable {
    private struct Entry {
        var lsn: LSN
        var bytes: [UInt8]
        /// 1 + log2 of the records applied to rebuild it, at most 15 (`level(records:)`).
        var level: UInt8
        /// Passes of the sweep it survives; a hit restores it to `level`.
        var credit: UInt8
    }

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

    private struct Shard {
        var index: [CacheKey: Int] = [:]
        var slots: [(key: CacheKey, entry: Entry)] = []
        var hand = 0
    }

    private final class LockedShard: Sendable {
        let state = Mutex(Shard())
    }

    /// Up to 256 shards, fewer for small caches (at least 32 entries a shard, and 16 shards). Many
    /// shards because every GetPage looks here first, from as many threads as there are clients.
    private let shardCount: Int
    private let shards: [LockedShard]
    private let perShardCapacity: Int
    private let hitCount = Atomic<Int>(0)
    private let insertCount = Atomic<Int>(0)

    /// A cache of at most `capacity` values (0 disables it).
    public init(capacity: Int) {
        var n = 256
        while n > 16 && capacity / n < 32 { n /= 2 }
        shardCount = n
        perShardCapacity = capacity <= 0 ? 0 : max(1, capacity / n)
        shards = (0..<n).map { _ in LockedShard() }
    }

    public var isEnabled: Bool { perShardCapacity > 0 }
    public var hits: Int { hitCount.load(ordering: .relaxed) }
    public var inserts: Int { insertCount.load(ordering: .relaxed) }

    private func shard(_ key: CacheKey) -> LockedShard {
        shards[Int((key.mixed >> 40) % UInt64(shardCount))]
    }

    /// The newest cached value of `key` at or below `lsn`.
    func lookup(_ store: UInt32, _ k: Key, at lsn: LSN) -> (lsn: LSN, bytes: [UInt8])? {
        guard isEnabled else { return nil }
        let key = CacheKey(store: store, key: k)
        return shard(key).state.withLock { s in
            guard let i = s.index[key], s.slots[i].entry.lsn <= lsn else { return nil }
            s.slots[i].entry.credit = s.slots[i].entry.level
            hitCount.add(1, ordering: .relaxed)
            return (s.slots[i].entry.lsn, s.slots[i].entry.bytes)
        }
    }

    /// Remembers `bytes` as the value of `key` at `lsn`, rebuilt by applying `records` records (see
    /// invariant 1 for who may call this).
    func insert(_ store: UInt32, _ k: Key, at lsn: LSN, _ bytes: [UInt8], records: Int = 1) {
        guard isEnabled else { return }
        let key = CacheKey(store: store, key: k)
        let capacity = perShardCapacity
        let level = MaterializedPageCache.level(records: records)
        shard(key).state.withLock { s in
            if let i = s.index[key] {
                if s.slots[i].entry.lsn < lsn {
                    // Rebuilt from the cached value plus a few records: without the entry, the next
                    // read would pay what the key cost before, so the entry keeps the higher level.
                    let kept = max(level, s.slots[i].entry.level)
                    s.slots[i].entry = Entry(lsn: lsn, bytes: bytes, level: kept, credit: kept)
                }
                return
            }
            insertCount.add(1, ordering: .relaxed)
            if s.slots.count < capacity {
                s.index[key] = s.slots.count
                s.slots.append((key, Entry(lsn: lsn, bytes: bytes, level: level, credit: level - 1)))
                return
            }
            while s.slots[s.hand].entry.credit > 0 {
                s.slots[s.hand].entry.credit -= 1
                s.hand = (s.hand + 1) % s.slots.count
            }
            s.index.removeValue(forKey: s.slots[s.hand].key)
            s.slots[s.hand] = (key, Entry(lsn: lsn, bytes: bytes, level: level, credit: level - 1))
            s.index[key] = s.hand
            s.hand = (s.hand + 1) % s.slots.count
        }
    }
}
