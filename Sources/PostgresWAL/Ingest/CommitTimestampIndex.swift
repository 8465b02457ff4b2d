import LSM

// The commit-timestamp index: where in the WAL each transaction ended, and when (format-spec.md
// sections 10.1, 10.3 and 10.4, "commit-timestamp bucket").
//
// Design note. get_lsn_by_timestamp needs "the last transaction end with xact_time <= T". Rather
// than keep a side file, ingest stores the index in the timeline's own key space, so it is written,
// flushed, checkpointed and crash-recovered with everything else, and a branch inherits its
// ancestor's part through ordinary reads at the branch point. The WAL is cut into buckets of
// 2^bucketShift bytes (1 MiB) by the end LSN of the commit or abort record; bucket b has one key, and
// every transaction end in it is one engine record (tag 7) appending a 16-byte entry to that key's
// value. Reconstructed, the value is the bucket's entries in LSN order.
//
// Layout of the value (all integers big-endian):
//
//     [entry 0] [entry 1] ... [entry n-1]        n >= 1, 16 * n bytes
//     entry: end_lsn u64 // the commit/abort record's end LSN
//            xact_time i64 // microseconds since 2000-01-01 00:00 UTC (TimestampTz), two's complement
//
// Invariants:
// 1. Every entry of bucket b has end_lsn >> bucketShift == b.
// 2. Entries are strictly ascending by end_lsn (ingest puts them in WAL order, one per record).
// 3. The first engine record ever put under a bucket's key is will_init, so reconstruction never
//    looks below it (in particular not into an older, unrelated value of an ancestor).
// 4. The value at LSN L holds exactly the entries with end_lsn <= L (each is put at its own end LSN).

/// The commit-timestamp index's keys, entries and value encoding.
public enum CommitTimestampIndex {
    /// log2 of the WAL bytes per bucket.
    public static let bucketShift: UInt64 = 20
    /// Bytes of one entry: end_lsn u64 + xact_time i64.
    public static let entrySize = 8 + 8
    /// Records a bucket key collects before ingest stores its value as an image instead (see
    /// "Images on ingest" in TimelineReadSupport.swift). A 1 MiB bucket holds at most
    /// 2^20 / 40 (the smallest commit record) = 26214 entries, above the default max_chain_length,
    /// so these keys are always imaged; more rarely than pages, because each image is a copy of the
    /// whole (growing) value: the image bytes of a bucket of n entries are about 8 * n^2 / this.
    public static let recordsPerImage = 1024

    /// A 1 MiB stretch of WAL: the end LSNs `bucket << bucketShift ..< (bucket + 1) << bucketShift`.
    public struct Bucket: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
        public var rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public init(containing lsn: LSN) { rawValue = lsn.rawValue >> CommitTimestampIndex.bucketShift }

        public static func < (a: Bucket, b: Bucket) -> Bool { a.rawValue < b.rawValue }
        /// The first LSN of the bucket.
        public var startLSN: LSN { LSN(rawValue << CommitTimestampIndex.bucketShift) }
        public var next: Bucket { Bucket(rawValue: rawValue + 1) }
        public var description: String { "bucket \(rawValue) (from \(startLSN))" }
    }

    /// One transaction end: its record's end LSN and its xact_time.
    public struct Entry: Hashable, Sendable, CustomStringConvertible {
        public var lsn: LSN
        /// Microseconds since 2000-01-01 00:00:00 UTC (PostgreSQL's TimestampTz).
        public var xactTime: Int64

        public init(lsn: LSN, xactTime: Int64) {
            self.lsn = lsn
            self.xactTime = xactTime
        }

        public var bucket: Bucket { Bucket(containing: lsn) }
        public var description: String { "(\(lsn), \(xactTime))" }

        public func encode(into out: inout [UInt8]) {
            out.appendBigEndian(lsn.rawValue)
            out.appendBigEndian(xactTime)
        }
    }

    /// The key of `bucket`: f1 = 4, f4 = the bucket's high 32 bits, f6 = its low 32 bits.
    public static func key(_ bucket: Bucket) -> Key {
        Key(field1: KeySpace.commitTimestampField1, field2: 0, field3: 0, field4: UInt32(truncatingIfNeeded: bucket.rawValue >> 32),
            field5: 0, field6: UInt32(truncatingIfNeeded: bucket.rawValue))
    }

    /// The bucket of a commit-timestamp key, or nil for any other key.
    public static func bucket(of key: Key) -> Bucket? {
        guard key.field1 == KeySpace.commitTimestampField1, key.field2 == 0, key.field3 == 0, key.field5 == 0 else { return nil }
        return Bucket(rawValue: UInt64(key.field4) << 32 | UInt64(key.field6))
    }

    /// Encodes entries as a bucket value.
    public static func encode(_ entries: [Entry]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(entries.count * entrySize)
        for e in entries { e.encode(into: &out) }
        return out
    }

    /// Decodes the value of `bucket`, checking invariants 1 and 2.
    public static func decode(_ bytes: some Collection<UInt8>, bucket: Bucket) throws -> [Entry] {
        guard bytes.count % entrySize == 0 else {
            throw ValueFormatError("commit-timestamp \(bucket) has \(bytes.count) bytes, not a multiple of \(entrySize)")
        }
        var c = BigEndianCursor(bytes, what: "commit-timestamp \(bucket)")
        var entries: [Entry] = []
        entries.reserveCapacity(bytes.count / entrySize)
        while c.remaining > 0 {
            let e = Entry(lsn: LSN(try c.u64()), xactTime: Int64(bitPattern: try c.u64()))
            guard e.bucket == bucket else { throw ValueFormatError("commit-timestamp entry at \(e.lsn) is stored in \(bucket)") }
            if let last = entries.last, !(last.lsn < e.lsn) {
                throw ValueFormatError("commit-timestamp entries of \(bucket) are not strictly ascending (\(last.lsn), then \(e.lsn))")
            }
            entries.append(e)
        }
        return entries
    }
}
