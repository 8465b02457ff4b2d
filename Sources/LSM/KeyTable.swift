/// A hash table from `Key` to a non-negative `Int32`, for the in-memory layer's index.
///
/// Design: open addressing with linear probing over two parallel arrays (keys, values), the capacity
/// a power of two and at most half full. The hash packs the key into three words and mixes them
/// with multiplications, far cheaper than `Hasher` (whose seeding and finalisation were a visible
/// share of the ingest thread), and the slot is taken from the hash's top bits. There is no
/// removal: the in-memory layer only ever adds keys until it is dropped whole.
///
/// Invariants:
/// 1. `values[i] == -1` exactly for empty slots; a key appears in at most one slot.
/// 2. `count * 2 <= capacity` after every insertion (growth happens before it).
/// 3. Every key's slot is reachable from its home slot without crossing an empty slot.
struct KeyTable: Sendable {
    private(set) var count = 0
    private var keys: [Key]
    private var values: [Int32]
    /// 64 - log2(capacity).
    private var shift: UInt64

    init(minimumCapacity: Int = 1024) {
        var capacity = 16
        while capacity < minimumCapacity { capacity <<= 1 }
        keys = Array(repeating: .min, count: capacity)
        values = Array(repeating: -1, count: capacity)
        shift = UInt64(64 - capacity.trailingZeroBitCount)
    }

    var capacity: Int { values.count }

    @inline(__always)
    static func hash(_ k: Key) -> UInt64 {
        let a = UInt64(k.field1) << 56 | UInt64(k.field2) << 24 | UInt64(k.field3 >> 8)
        let b = UInt64(k.field3 & 0xFF) << 56 | UInt64(k.field4) << 24 | UInt64(k.field5) << 16 | UInt64(k.field6 >> 16)
        let c = UInt64(k.field6 & 0xFFFF)
        var h = (a ^ 0x9E37_79B9_7F4A_7C15) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ b ^ (h >> 31)) &* 0x94D0_49BB_1331_11EB
        h = (h ^ c ^ (h >> 29)) &* 0x9E37_79B9_7F4A_7C15
        return h ^ (h >> 32)
    }

    /// The slot of `key`: where it is, or the empty slot where it would go.
    @inline(__always)
    private func slot(of key: Key) -> Int {
        let mask = values.count - 1
        var i = Int(truncatingIfNeeded: Self.hash(key) >> shift)
        while values[i] >= 0 && keys[i] != key { i = (i &+ 1) & mask }
        return i
    }

    /// The value stored for `key`, or nil.
    func value(for key: Key) -> Int32? {
        let v = values[slot(of: key)]
        return v >= 0 ? v : nil
    }

    /// The slot for `key`, growing the table first if an insertion could overfill it. Pass it to
    /// `value(at:)` and `set(_:at:to:)` before any other mutation.
    mutating func slotForInsertion(_ key: Key) -> Int {
        if (count + 1) * 2 > values.count { grow() }
        return slot(of: key)
    }

    /// The value in `slot`, -1 when the slot is empty (the key is new).
    func value(at slot: Int) -> Int32 { values[slot] }

    /// Stores `value` (>= 0) for `key` in `slot` (from `slotForInsertion(key)`).
    mutating func set(_ key: Key, at slot: Int, to value: Int32) {
        precondition(value >= 0, "KeyTable values are non-negative")
        if values[slot] < 0 {
            count += 1
            keys[slot] = key
        }
        values[slot] = value
    }

    /// Calls `body` for every key and its value, in no particular order.
    func forEach(_ body: (Key, Int32) throws -> Void) rethrows {
        for i in 0..<values.count where values[i] >= 0 { try body(keys[i], values[i]) }
    }

    private mutating func grow() {
        let oldKeys = keys, oldValues = values
        let capacity = oldValues.count * 2
        keys = Array(repeating: .min, count: capacity)
        values = Array(repeating: -1, count: capacity)
        shift -= 1
        for i in 0..<oldValues.count where oldValues[i] >= 0 {
            let s = slot(of: oldKeys[i])
            keys[s] = oldKeys[i]
            values[s] = oldValues[i]
        }
    }
}
