import CShims
import Synchronization

/// An approximate set of block keys, for admitting a block to a cache on its second use only (a
/// "doorkeeper"): `markSeen` answers whether the key had been marked before, and marks it.
///
/// Used for the blocks that cold reads decode out of a prefetched window (`BlockFetcher`). The
/// window's bytes stay in the compressed tier, so decoding a block again costs a decompression, while
/// keeping every decoded block costs memory that a fresh process has to fault in (on the VMs these
/// benchmarks run on, zeroing fresh memory was a third of a cold run's CPU, and a third of that was
/// decoded blocks that were never used again).
///
/// Invariants:
/// 1. A key marked since the last reset is always reported as seen (no false negatives); another
///    key may be (a false positive: it is admitted at once, as without the filter).
/// 2. After `resetAfter` new marks, every bit is cleared, so that the filter does not fill up and
///    admit everything; a key marked before a reset counts as unseen again.
/// 3. Every access to a word is atomic, so concurrent readers never tear or lose a mark other than
///    by a reset.
final class SeenOnceFilter: @unchecked Sendable {
    // @unchecked: `words` is only read and written through atomic operations (invariant 3).
    private let words: UnsafeMutablePointer<UInt64>
    private let wordMask: Int
    private let marks = Atomic<Int>(0)
    private let resetAfter: Int

    /// `bits`: rounded up to a power of two, at least 64. The filter resets after bits / 8 marks, so
    /// that it stays at most an eighth full (about one false positive in eight).
    init(bits: Int) {
        var n = 64
        while n < bits { n <<= 1 }
        words = .allocate(capacity: n / 64)
        words.initialize(repeating: 0, count: n / 64)
        wordMask = n / 64 - 1
        resetAfter = n / 8
    }

    deinit { words.deallocate() }

    /// Marks `key` and says whether it had been marked before (since the last reset).
    func markSeen(_ key: BlockCache.CacheKey) -> Bool {
        var h = (key.fileId &* 0x9E37_79B9_7F4A_7C15 ^ key.offset) &* 0xC2B2_AE3D_27D4_EB4F
        h ^= h >> 29
        let bit: UInt64 = 1 << (h & 63)
        let before = cs_atomic_fetch_or_u64(words + (Int(truncatingIfNeeded: h >> 6) & wordMask), bit)
        if before & bit != 0 { return true }
        if marks.add(1, ordering: .relaxed).newValue >= resetAfter { reset() }
        return false
    }

    /// Forgets every mark.
    func reset() {
        marks.store(0, ordering: .relaxed)
        for i in 0...wordMask { cs_atomic_store_u64(words + i, 0) }
    }
}
