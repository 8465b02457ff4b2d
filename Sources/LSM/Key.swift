/// The 18-byte key of every value the engine stores (Neon's key layout).
///
/// Layout: field1 u8, field2 u32, field3 u32, field4 u32, field5 u8, field6 u32, all big-endian, so
/// that keys order as their bytes do. For relation blocks: field1 = 0, field2 = tablespace, field3 =
/// database, field4 = relation, field5 = fork, field6 = block number. The engine uses the fields only to
/// place a key in its chunk (see `ChunkId`); their meaning beyond that belongs to the caller.
public struct Key: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var field1: UInt8
    public var field2: UInt32
    public var field3: UInt32
    public var field4: UInt32
    public var field5: UInt8
    public var field6: UInt32

    /// Encoded size in bytes.
    public static let encodedSize = 1 + 4 + 4 + 4 + 1 + 4

    public init(field1: UInt8, field2: UInt32, field3: UInt32, field4: UInt32, field5: UInt8, field6: UInt32) {
        self.field1 = field1
        self.field2 = field2
        self.field3 = field3
        self.field4 = field4
        self.field5 = field5
        self.field6 = field6
    }

    public static let min = Key(field1: 0, field2: 0, field3: 0, field4: 0, field5: 0, field6: 0)
    public static let max = Key(field1: .max, field2: .max, field3: .max, field4: .max, field5: .max, field6: .max)

    /// The key of block `block` of fork `fork` of relation `spc/db/rel`.
    public static func relationBlock(spc: UInt32, db: UInt32, rel: UInt32, fork: UInt8, block: UInt32) -> Key {
        Key(field1: 0, field2: spc, field3: db, field4: rel, field5: fork, field6: block)
    }

    /// Hashes the key as two words (the fields packed big-endian), far cheaper than six separate
    /// combines on the ingest and read hot paths.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(UInt64(field1) << 56 | UInt64(field2) << 24 | UInt64(field3 >> 8))
        hasher.combine(UInt64(field3 & 0xFF) << 56 | UInt64(field4) << 24 | UInt64(field5) << 16 | UInt64(field6 >> 16) )
        hasher.combine(UInt16(field6 & 0xFFFF))
    }

    public static func < (a: Key, b: Key) -> Bool {
        if a.field1 != b.field1 { return a.field1 < b.field1 }
        if a.field2 != b.field2 { return a.field2 < b.field2 }
        if a.field3 != b.field3 { return a.field3 < b.field3 }
        if a.field4 != b.field4 { return a.field4 < b.field4 }
        if a.field5 != b.field5 { return a.field5 < b.field5 }
        return a.field6 < b.field6
    }

    /// 36 hex digits, the encoded bytes in order.
    public var description: String {
        func hex<T: FixedWidthInteger>(_ v: T) -> String {
            let s = String(v, radix: 16, uppercase: true)
            return String(repeating: "0", count: MemoryLayout<T>.size * 2 - s.count) + s
        }
        return hex(field1) + hex(field2) + hex(field3) + hex(field4) + hex(field5) + hex(field6)
    }

    public init?(parsing text: some StringProtocol) {
        guard text.count == 36, text.allSatisfy(\.isHexDigit) else { return nil }
        let s = Array(text.utf8)
        func take(_ from: Int, _ count: Int) -> UInt64 { UInt64(String(decoding: s[from..<from + count], as: UTF8.self), radix: 16)! }
        self.init(field1: UInt8(take(0, 2)), field2: UInt32(take(2, 8)), field3: UInt32(take(10, 8)),
                  field4: UInt32(take(18, 8)), field5: UInt8(take(26, 2)), field6: UInt32(take(28, 8)))
    }

    public func encode(into w: inout ByteWriter) {
        w.u8(field1); w.u32(field2); w.u32(field3); w.u32(field4); w.u8(field5); w.u32(field6)
    }

    public init(parsing r: inout ByteReader) throws {
        self.init(field1: try r.u8(), field2: try r.u32(), field3: try r.u32(), field4: try r.u32(),
                  field5: try r.u8(), field6: try r.u32())
    }
}
