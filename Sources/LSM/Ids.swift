/// A 16-byte identifier written as 32 lowercase hex characters (tenants and timelines).
public protocol HexId: Hashable, Comparable, Sendable, CustomStringConvertible {
    var bytes: (UInt64, UInt64) { get }
    init(bytes: (UInt64, UInt64))
}

extension HexId {
    public var description: String {
        func hex(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return hex(bytes.0) + hex(bytes.1)
    }

    public init?(parsing text: some StringProtocol) {
        guard text.utf8.count == 32, text.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else { return nil }
        let s = String(text)
        let mid = s.index(s.startIndex, offsetBy: 16)
        self.init(bytes: (UInt64(s[..<mid], radix: 16)!, UInt64(s[mid...], radix: 16)!))
    }

    /// A fresh random id.
    public static func random() -> Self {
        var g = SystemRandomNumberGenerator()
        return Self(bytes: (g.next(), g.next()))
    }

    public static func < (a: Self, b: Self) -> Bool { a.bytes.0 != b.bytes.0 ? a.bytes.0 < b.bytes.0 : a.bytes.1 < b.bytes.1 }
    public static func == (a: Self, b: Self) -> Bool { a.bytes.0 == b.bytes.0 && a.bytes.1 == b.bytes.1 }
    public func hash(into h: inout Hasher) { h.combine(bytes.0); h.combine(bytes.1) }
}

public struct TenantId: HexId {
    public var bytes: (UInt64, UInt64)
    public init(bytes: (UInt64, UInt64)) { self.bytes = bytes }
}

public struct TimelineId: HexId {
    public var bytes: (UInt64, UInt64)
    public init(bytes: (UInt64, UInt64)) { self.bytes = bytes }
}
