import Synchronization

/// A bounded cache of verified, decompressed blocks, keyed by (open file, block offset).
///
/// Design: `shardCount` shards, each a CLOCK ring under its own mutex, so that concurrent lookups
/// rarely contend. Invariants:
/// 1. Only blocks whose checksum verified are inserted (callers insert after `decodeBlock`).
/// 2. The bytes held by a shard never exceed `capacityBytes / shardCount` after an insert returns
///    (a block larger than a shard's budget is not cached at all).
/// 3. A file's blocks are keyed by a process-unique file id, never reused, so a deleted file's
///    stale blocks cannot be found by a new file; they age out.
public final class BlockCache: Sendable {
    public struct CacheKey: Hashable, Sendable {
        public var fileId: UInt64
        public var offset: UInt64

        /// One word into the hasher instead of two: file ids are small and offsets below 2^48.
        public func hash(into hasher: inout Hasher) {
            hasher.combine(fileId &* 0x9E37_79B9_7F4A_7C15 ^ offset)
        }
    }

    private struct Slot {
        var key: CacheKey
        var bytes: [UInt8]
        var referenced: Bool
    }

    private struct Shard: ~Copyable {
        var map: [CacheKey: Int] = [:]
        var slots: [Slot?] = []
        var free: [Int] = []
        var hand = 0
        var usedBytes = 0
        /// Counted under the shard's lock: one shared atomic would be a cache line every reading
        /// thread writes.
        var hits = 0
        var misses = 0
    }

    /// Up to 256 shards, fewer for small caches so that a shard holds at least `minimumShardBytes`.
    private let shardCount: Int
    private final class ShardBox: Sendable {
        let lock = Mutex(Shard())
    }

    private let shards: [ShardBox]
    private let shardCapacityBytes: Int
    public let capacityBytes: Int

    /// `minimumShardBytes`: the data cache keeps 4 MiB so that a shard still holds several large
    /// blocks; the index cache, whose blocks are 4 KiB and few of them hot, takes smaller shards and
    /// more of them, so that concurrent lookups of hot index blocks rarely meet on one lock.
    public init(capacityBytes: Int, minimumShardBytes: Int = 4 << 20) {
        self.capacityBytes = capacityBytes
        var shards = 256
        while shards > 1 && capacityBytes / shards < minimumShardBytes { shards /= 2 }
        self.shardCount = shards
        self.shardCapacityBytes = capacityBytes / shards
        self.shards = (0..<shards).map { _ in ShardBox() }
    }

    @inline(__always)
    private func shard(_ key: CacheKey) -> Int {
        Int(truncatingIfNeeded: (key.fileId &* 0x9E37_79B9_7F4A_7C15 ^ key.offset &* 0xC2B2_AE3D_27D4_EB4F) >> 56) % shardCount
    }

    public func get(_ key: CacheKey) -> [UInt8]? {
        shards[shard(key)].lock.withLock { s -> [UInt8]? in
            guard let i = s.map[key] else {
                s.misses += 1
                return nil
            }
            s.hits += 1
            s.slots[i]!.referenced = true
            return s.slots[i]!.bytes
        }
    }

    public func insert(_ key: CacheKey, _ bytes: [UInt8]) {
        let size = bytes.count + 64
        guard size <= shardCapacityBytes else { return }
        let cap = shardCapacityBytes
        shards[shard(key)].lock.withLock { s in
            if s.map[key] != nil { return }
            while s.usedBytes + size > cap {
                // CLOCK: clear reference bits until an unreferenced slot comes round, then evict it.
                if s.slots.isEmpty { break }
                s.hand %= s.slots.count
                if var slot = s.slots[s.hand] {
                    if slot.referenced {
                        slot.referenced = false
                        s.slots[s.hand] = slot
                    } else {
                        s.map[slot.key] = nil
                        s.usedBytes -= slot.bytes.count + 64
                        s.slots[s.hand] = nil
                        s.free.append(s.hand)
                    }
                }
                s.hand += 1
            }
            let slot = Slot(key: key, bytes: bytes, referenced: false)
            let i: Int
            if let f = s.free.popLast() { s.slots[f] = slot; i = f } else { s.slots.append(slot); i = s.slots.count - 1 }
            s.map[key] = i
            s.usedBytes += size
        }
    }

    public var usedBytes: Int { shards.reduce(0) { acc, s in acc + s.lock.withLock { $0.usedBytes } } }
    public var hitCount: Int { shards.reduce(0) { acc, s in acc + s.lock.withLock { $0.hits } } }
    public var missCount: Int { shards.reduce(0) { acc, s in acc + s.lock.withLock { $0.misses } } }

    /// Drops every block (benchmarks use it to measure cold reads).
    public func clear() {
        for s in shards {
            s.lock.withLock {
                let (hits, misses) = ($0.hits, $0.misses)
                $0 = Shard()
                ($0.hits, $0.misses) = (hits, misses)
            }
        }
    }
}

/// Process-unique ids for open layer files (cache keys).
enum FileIds {
    static let next = Atomic<UInt64>(1)
    static func make() -> UInt64 { next.add(1, ordering: .relaxed).oldValue }
}
