import Foundation

/// A seeded generator (SplitMix64) so that every randomised test can be replayed from its seed.
public struct SeededRandom: RandomNumberGenerator {
    public var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The seed for a randomised test: `$TEST_SEED` when set (to replay), else fresh. Always printed.
public func testSeed(_ name: String) -> UInt64 {
    let seed = ProcessInfo.processInfo.environment["TEST_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...(UInt64.max >> 1))
    print("\(name): seed \(seed) (replay with TEST_SEED=\(seed))")
    return seed
}
