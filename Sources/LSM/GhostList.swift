// A ghost list: the hashes of entries a cache evicted recently, with the bytes each held, up to a
// bound in bytes. A lookup that misses the cache but finds its key here would have hit a cache larger
// by that bound: counting such "ghost hits" measures what more room would be worth to the cache
// (the idea behind ARC's ghost lists), without keeping the evicted bytes themselves.
//
// Invariants:
// 1. `heldBytes` is the sum of the charges in `charges`, and stays at most the `limit` last passed
//    to `add` (oldest hashes are forgotten first).
// 2. A hash is forgotten when it is taken (`take`) or aged out; `order` may still hold stale
//    copies of it, which aging skips.
// 3. Hashes may collide: a ghost hit is a statistic, never a statement about a value.

struct GhostList {
    /// (hash, sequence number) in the order they were added; `order[head...]` are live or stale.
    private var order: [(hash: UInt64, seq: UInt32)] = []
    private var head = 0
    /// The live hashes: charge and the sequence number of their newest copy in `order`.
    private var charges: [UInt64: (charge: Int, seq: UInt32, tag: UInt8)] = [:]
    private var nextSeq: UInt32 = 0
    private(set) var heldBytes = 0

    var count: Int { charges.count }

    /// Remembers an evicted entry of `charge` bytes, with a tag of the caller's (what kind of entry
    /// it was), forgetting the oldest ones beyond `limit` bytes.
    mutating func add(_ hash: UInt64, charge: Int, limit: Int, tag: UInt8 = 0) {
        guard limit > 0, charge <= limit else { return }
        nextSeq &+= 1
        if let old = charges.updateValue((charge, nextSeq, tag), forKey: hash) { heldBytes -= old.charge }
        heldBytes += charge
        order.append((hash, nextSeq))
        while heldBytes > limit && head < order.count {
            let oldest = order[head]
            head += 1
            // Only the hash's newest copy ages it out; older copies are stale.
            if let live = charges[oldest.hash], live.seq == oldest.seq {
                charges[oldest.hash] = nil
                heldBytes -= live.charge
            }
        }
        if order.count - head > 2 * charges.count + 64 {
            // Mostly stale copies (taken hashes leave theirs behind): keep the live ones, in order.
            order = order[head...].filter { charges[$0.hash]?.seq == $0.seq }
            head = 0
        } else if head > 64 && head * 2 > order.count {
            order.removeFirst(head)
            head = 0
        }
    }

    /// True when `hash` was evicted recently (and forgets it: its key is about to be cached again).
    mutating func take(_ hash: UInt64) -> Bool { takeTag(hash) != nil }

    /// The tag `hash` was added with, when it was evicted recently (and forgets it).
    mutating func takeTag(_ hash: UInt64) -> UInt8? {
        guard let live = charges.removeValue(forKey: hash) else { return nil }
        heldBytes -= live.charge
        return live.tag
    }
}
