// How the page memory of a process is split between materialized pages and data blocks, moved while
// it runs by what more room would have saved each.
//
// The budget (`StorageContext.dataCacheBytes`) holds three tiers: materialized pages, decoded data
// blocks and compressed data blocks. Which split serves best depends on the reads: where every read
// needs redo and the rebuilt pages outgrow half the budget (pgbench scale 100 with no image layers),
// the materialized pages want nearly all of it (depth-1 reads went 44k -> 112k pages/s from half to
// seven eighths); where reads find page images (image layers), nothing is materialized and the
// blocks want it all. A fixed split is wrong for one or the other.
//
// The rule: both the materialized cache and the decoded block tier remember the keys they evicted
// last, up to `step` bytes each (ghost lists). A miss on a remembered key is a hit that `step` more
// bytes would have given that tier. Every `window` lookups, each tier's ghost hits are weighed by
// the cost of the miss they stand for, measured on this machine as it runs:
// - a materialized ghost hit saves a rebuild: a lookup's time without a materialized base that ran
//   redo, less its time with one; for a page that was read as an image, a lookup's time without a
//   base or redo, less the time with one;
// - a decoded-block ghost hit saves a block miss: decompressing a compressed-tier block, or reading
//   and decoding one.
// The side that would have saved clearly more (by a quarter), on at least `minimumGhostHits` ghost
// hits, gets `step` bytes from the other.
//
// Invariants:
// 1. The materialized capacity stays within [budget/16, the configured maximum], and the maximum
//    is at most 7/8 of the budget, so the decoded blocks keep at least 1/8.
// 2. The compressed tier's capacity is at most its configured share and, from one rebalance to the
//    next, never more than the budget less 1/8 less what the materialized pages held at the last.
// 3. Page memory stays within the budget but for a lag: between two rebalances the materialized
//    pages may grow into room the compressed tier still holds, and the decoded blocks, whose
//    capacity is the budget less both (`CacheLoan`), give it back at their next inserts.
// 4. One rebalance runs at a time (others skip theirs); the costs are averages that races may
//    blur (relaxed atomics), never correctness: the split decides only what is cached.

import Synchronization

public final class PageMemoryBalance: Sendable {
    let budget: Int
    let minimumMaterialized: Int
    let maximumMaterialized: Int
    let compressedMaximum: Int
    /// Bytes moved per decision, and the bytes each ghost list covers.
    let step: Int
    /// Lookups between decisions.
    static let window = 1024
    /// Ghost hits the winning side needs in a window before the split moves: fewer are noise (a
    /// scan's first pass, where every page is read once, gives the blocks a few).
    static let minimumGhostHits = 8
    let adaptive: Bool

    private let materialized: MaterializedPageCache
    private let decoded: BlockCache
    private let compressed: BlockCache

    /// Exponentially weighted averages, in nanoseconds: a lookup answered from a materialized base,
    /// a lookup that rebuilt its page without one, one answered without redo, and a decoded-tier
    /// block miss.
    private let hitNanos = Atomic<Int>(0)
    private let rebuildNanos = Atomic<Int>(0)
    private let plainNanos = Atomic<Int>(0)
    private let blockMissNanos = Atomic<Int>(0)
    private let lookups = Atomic<Int>(0)
    private let rebalancing = Atomic<Bool>(false)
    private let moves = Atomic<Int>(0)

    init(budget: Int, materialized: MaterializedPageCache, decoded: BlockCache, compressed: BlockCache,
         compressedMaximum: Int, step: Int, adaptive: Bool) {
        self.budget = budget
        self.materialized = materialized
        self.decoded = decoded
        self.compressed = compressed
        self.maximumMaterialized = materialized.maximumBytes
        self.minimumMaterialized = min(budget / 16, materialized.maximumBytes)
        self.compressedMaximum = compressedMaximum
        self.step = max(1, step)
        self.adaptive = adaptive && materialized.isEnabled && budget > 0
    }

    /// Decisions that moved the split so far.
    public var moveCount: Int { moves.load(ordering: .relaxed) }

    /// The compressed tier's capacity for a materialized capacity of `m` (invariant 2).
    func compressedCapacity(materialized m: Int) -> Int {
        max(0, min(compressedMaximum, budget - budget / 8 - m))
    }

    private static func average(_ a: borrowing Atomic<Int>, _ sample: Int) {
        let old = a.load(ordering: .relaxed)
        a.store(old == 0 ? sample : old + (sample - old) / 16, ordering: .relaxed)
    }

    /// A batch of lookups took `nanos`: `hits` had a materialized base, `rebuilds` ran redo without
    /// one, `plain` needed no redo.
    func noteLookups(hits: Int, rebuilds: Int, plain: Int, nanos: Int) {
        guard adaptive else { return }
        let n = hits + rebuilds + plain
        guard n > 0 else { return }
        if n == 1 {
            if hits == 1 { Self.average(hitNanos, nanos) } else if rebuilds == 1 { Self.average(rebuildNanos, nanos) } else { Self.average(plainNanos, nanos) }
        } else if rebuilds > 0 {
            // A batch's time is shared out by the classes' averages; what is left is the rebuilds'.
            let others = hits * hitNanos.load(ordering: .relaxed) + plain * plainNanos.load(ordering: .relaxed)
            Self.average(rebuildNanos, max(nanos / n, (nanos - others) / rebuilds))
        }
        let before = lookups.add(n, ordering: .relaxed).oldValue
        if before / Self.window != (before + n) / Self.window { rebalance() }
    }

    /// `count` data blocks missed the decoded tier and took `nanos` to get and decode.
    func noteBlockMisses(_ count: Int, nanos: Int) {
        guard adaptive, count > 0 else { return }
        Self.average(blockMissNanos, nanos / count)
    }

    /// Moves `step` bytes to the side whose ghost hits would have saved clearly more.
    func rebalance() {
        guard rebalancing.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else { return }
        defer { rebalancing.store(false, ordering: .releasing) }
        let hit = hitNanos.load(ordering: .relaxed)
        let savedRebuild = max(0, rebuildNanos.load(ordering: .relaxed) - hit)
        let savedImageRead = max(0, plainNanos.load(ordering: .relaxed) - hit)
        let ghosts = materialized.takeGhostHitsByKind(), blockGhostHits = decoded.takeGhostHits()
        let materializedGhostHits = ghosts.rebuilt + ghosts.images
        let savedByMaterialized = ghosts.rebuilt * savedRebuild + ghosts.images * savedImageRead
        let savedByBlocks = blockGhostHits * blockMissNanos.load(ordering: .relaxed)
        let current = materialized.capacityBytes
        var target = current
        if savedByMaterialized > savedByBlocks + savedByBlocks / 4 && materializedGhostHits >= Self.minimumGhostHits {
            target = min(maximumMaterialized, current + step)
        } else if savedByBlocks > savedByMaterialized + savedByMaterialized / 4 && blockGhostHits >= Self.minimumGhostHits {
            target = max(minimumMaterialized, current - step)
        }
        if target != current {
            moves.add(1, ordering: .relaxed)
            materialized.setCapacity(target)
        }
        // The compressed blocks get what the materialized pages leave of the room the decoded
        // blocks need not keep (invariant 2).
        compressed.setCapacity(compressedCapacity(materialized: min(target, materialized.usedBytes)))
    }
}
