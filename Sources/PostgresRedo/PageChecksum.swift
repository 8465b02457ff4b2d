// Design note: PostgreSQL's data checksum (checksum_impl.h) views the 8 KiB page as 64 rows of 32
// 32-bit words and keeps 32 independent FNV-1a-style running sums, one per column, each seeded from
// a fixed table; word j of every row is mixed into sum j as `t = sum ^ w; sum = t * 16777619 ^
// (t >> 17)`. Two rounds of zeros follow, the 32 sums are XORed together, the block number is
// XORed in, and the result is reduced to 1...65535. pd_checksum (the low half of word 2 of row 0
// on a little-endian machine) counts as zero. The 32 lanes are independent, so the inner loop over
// a row is a straight-line map over 32 lanes that the optimiser turns into vector code; the page is
// read with unaligned 32-bit loads and never copied.

/// pg_checksum_page.
public enum PageChecksum {
    static let lanes = 32
    static let rows = Page.size / (4 * 32)
    static let prime: UInt32 = 16_777_619

    /// checksumBaseOffsets.
    static let baseOffsets: [UInt32] = [
        0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
        0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
        0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
        0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
    ]

    /// The checksum PostgreSQL stores in pd_checksum for `page` as block `blockNumber` (the block's
    /// number within its fork, counting across segment files). The page must not be new.
    public static func compute(_ page: Page, blockNumber: UInt32) -> UInt16 {
        compute(UnsafeRawPointer(page.base), blockNumber: blockNumber)
    }

    /// The same over 8192 bytes at `bytes` (any alignment).
    public static func compute(_ bytes: UnsafeRawPointer, blockNumber: UInt32) -> UInt16 {
        let folded = withUnsafeTemporaryAllocation(of: UInt32.self, capacity: lanes) { sums -> UInt32 in
            let s = sums.baseAddress!
            baseOffsets.withUnsafeBufferPointer { s.initialize(from: $0.baseAddress!, count: lanes) }
            // Row 0 with pd_checksum (bytes 8-9) taken as zero.
            for j in 0..<lanes {
                var w = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * j, as: UInt32.self))
                if j == 2 { w &= 0xFFFF_0000 }
                mix(s, j, w)
            }
            for row in 1..<rows {
                mixRow(s, bytes + row * lanes * 4)
            }
            for _ in 0..<2 {
                for j in 0..<lanes { mix(s, j, 0) }
            }
            var result: UInt32 = 0
            for j in 0..<lanes { result ^= s[j] }
            return result
        }
        return UInt16((folded ^ blockNumber) % 65535 + 1)
    }

    @inline(__always) static func mixRow(_ s: UnsafeMutablePointer<UInt32>, _ row: UnsafeRawPointer) {
        for j in 0..<32 {
            let t = s[j] ^ UInt32(littleEndian: row.loadUnaligned(fromByteOffset: 4 * j, as: UInt32.self))
            s[j] = (t &* prime) ^ (t >> 17)
        }
    }

    @inline(__always) static func mix(_ s: UnsafeMutablePointer<UInt32>, _ j: Int, _ w: UInt32) {
        let t = s[j] ^ w
        s[j] = (t &* prime) ^ (t >> 17)
    }

    /// Whether `page`'s stored pd_checksum is right for block `blockNumber` (new pages have none).
    public static func verify(_ page: Page, blockNumber: UInt32) -> Bool {
        page.isNew || page.checksum == compute(page, blockNumber: blockNumber)
    }
}
