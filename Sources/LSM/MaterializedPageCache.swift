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
// 3. Memory is bounded by `capacity` entries; a full shard evicts by a CLOCK sweep (recently used
//    entries get a second chance).

import Synchronization

public final class MaterializedPageCache: Sendable {
    private struct Entry {
        var lsn: LSN
        var bytes: [UInt8]
        var referenced: Bool
    }

    private struct CacheKey: Hashable {
        var store: UInt32
        var key: Key
    }

    private struct Shard {
        var index: [CacheKey: Int] = [:]
        var slots: [(key: CacheKey, entry: Entry)] = []
        var hand = 0
    }

    private final class LockedShard: Sendable {
        let state = Mutex(Shard())
    }

    /// Up to 64 shards, fewer for small caches (at least 128 entries a shard, as with 16 before).
    private let shardCount: Int
    private let shards: [LockedShard]
    private let perShardCapacity: Int
    private let hitCount = Atomic<Int>(0)
    private let insertCount = Atomic<Int>(0)

    /// A cache of at most `capacity` values (0 disables it).
    public init(capacity: Int) {
        var n = 64
        while n > 16 && capacity / n < 128 { n /= 2 }
        shardCount = n
        perShardCapacity = capacity <= 0 ? 0 : max(1, capacity / n)
        shards = (0..<n).map { _ in LockedShard() }
    }

    public var isEnabled: Bool { perShardCapacity > 0 }
    public var hits: Int { hitCount.load(ordering: .relaxed) }
    public var inserts: Int { insertCount.load(ordering: .relaxed) }

    private func shard(_ key: CacheKey) -> LockedShard {
        shards[Int(UInt(bitPattern: key.hashValue) % UInt(shardCount))]
    }

    /// The newest cached value of `key` at or below `lsn`.
    func lookup(_ store: UInt32, _ k: Key, at lsn: LSN) -> (lsn: LSN, bytes: [UInt8])? {
        guard isEnabled else { return nil }
        let key = CacheKey(store: store, key: k)
        return shard(key).state.withLock { s in
            guard let i = s.index[key], s.slots[i].entry.lsn <= lsn else { return nil }
            s.slots[i].entry.referenced = true
            hitCount.add(1, ordering: .relaxed)
            return (s.slots[i].entry.lsn, s.slots[i].entry.bytes)
        }
    }

    /// Remembers `bytes` as the value of `key` at `lsn` (see invariant 1 for who may call this).
    func insert(_ store: UInt32, _ k: Key, at lsn: LSN, _ bytes: [UInt8]) {
        guard isEnabled else { return }
        let key = CacheKey(store: store, key: k)
        let capacity = perShardCapacity
        shard(key).state.withLock { s in
            if let i = s.index[key] {
                if s.slots[i].entry.lsn < lsn { s.slots[i].entry = Entry(lsn: lsn, bytes: bytes, referenced: true) }
                return
            }
            insertCount.add(1, ordering: .relaxed)
            if s.slots.count < capacity {
                s.index[key] = s.slots.count
                s.slots.append((key, Entry(lsn: lsn, bytes: bytes, referenced: false)))
                return
            }
            while s.slots[s.hand].entry.referenced {
                s.slots[s.hand].entry.referenced = false
                s.hand = (s.hand + 1) % s.slots.count
            }
            s.index.removeValue(forKey: s.slots[s.hand].key)
            s.slots[s.hand] = (key, Entry(lsn: lsn, bytes: bytes, referenced: false))
            s.index[key] = s.hand
            s.hand = (s.hand + 1) % s.slots.count
        }
    }
}
