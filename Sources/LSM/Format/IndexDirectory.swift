/// The top level of a layer's two-level index (format-spec.md, "IndexDirectory"): one line per
/// index block, held in memory while the layer is open, so that finding the newest value <= LSN for
/// a key costs at most one index block read.
///
///     block_count: u32
///     block_count x {
///         first_key: 18 bytes // key of the block's first entry
///         first_lsn: u64      // LSN of the block's first entry
///         handle:    12 bytes // BlockHandle of the index block
///     }
/// Stored as one block (uncompressed, with a BlockTrailer). 38 bytes per line.
public struct IndexDirectory: Equatable, Sendable {
    public static let lineSize = Key.encodedSize + 8 + BlockHandle.size

    public struct Line: Equatable, Sendable {
        public var firstKey: Key
        public var firstLSN: LSN
        public var handle: BlockHandle
    }

    public var lines: [Line]

    public init(lines: [Line]) { self.lines = lines }

    public func encode(into w: inout ByteWriter) {
        w.u32(UInt32(lines.count))
        for l in lines {
            l.firstKey.encode(into: &w)
            w.u64(l.firstLSN.rawValue)
            l.handle.encode(into: &w)
        }
    }

    public init(parsing payload: UnsafeRawBufferPointer) throws {
        var r = ByteReader(payload, context: "index directory")
        let n = Int(try r.u32())
        guard payload.count == 4 + n * IndexDirectory.lineSize else {
            throw StorageError(.corruption, "index directory of \(payload.count) bytes cannot hold \(n) lines")
        }
        var lines: [Line] = []
        lines.reserveCapacity(n)
        for _ in 0..<n {
            lines.append(Line(firstKey: try Key(parsing: &r), firstLSN: LSN(try r.u64()), handle: try BlockHandle(parsing: &r)))
        }
        self.lines = lines
    }

    /// The index block that holds the last entry <= (key, lsn), or nil when every entry is greater.
    func block(for key: Key, _ lsn: LSN) -> Int? {
        var lo = 0, hi = lines.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let l = lines[mid]
            if l.firstKey < key || (l.firstKey == key && l.firstLSN <= lsn) { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? nil : lo - 1
    }
}
