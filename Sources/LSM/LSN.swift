/// A position in the write-ahead log: a byte offset into the WAL stream.
///
/// Prints the way PostgreSQL does, upper-case hex `HI/LO` without leading zeros (`0/16B3748`).
public struct LSN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64

    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public init(_ value: UInt64) { self.rawValue = value }

    public static let zero = LSN(0)
    /// The largest LSN; as a request LSN it means "latest".
    public static let max = LSN(UInt64.max)

    public static func < (a: LSN, b: LSN) -> Bool { a.rawValue < b.rawValue }

    public var description: String {
        String(rawValue >> 32, radix: 16, uppercase: true) + "/" + String(rawValue & 0xFFFF_FFFF, radix: 16, uppercase: true)
    }

    /// Parses `HI/LO` (hex, either case).
    public init?(parsing text: some StringProtocol) {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty, parts[0].count <= 8, parts[1].count <= 8,
              let hi = UInt64(parts[0], radix: 16), let lo = UInt64(parts[1], radix: 16) else { return nil }
        self.rawValue = hi << 32 | lo
    }

    public func advanced(by bytes: UInt64) -> LSN { LSN(rawValue &+ bytes) }
}
