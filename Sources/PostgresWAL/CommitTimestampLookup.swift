// The search of get_lsn_by_timestamp: the LSN at which a timeline looked as it did at a wall-clock time.
// (The daemon's wiring, a timeline's store and the HTTP answer, is Sources/Server/CommitTimestampSearch.swift.)
//
// Design note
// ===========
// The question is "the last transaction end (commit or abort record, plain or prepared) with
// xact_time <= T", answered from the commit-timestamp index (`CommitTimestampIndex`, one key per
// 1 MiB bucket of WAL, read like any other key at the timeline's last_record_lsn, so a branch sees
// its ancestor's entries up to the branch point). Only entries in the range the timeline can serve,
// [oldest, last_record_lsn] with oldest = max(start LSN, GC cutoff), take part.
//
// Assumption: xact_time is non-decreasing in LSN order. PostgreSQL takes the timestamp before it
// inserts the record, so two concurrent commits can land in the opposite order, by a few
// microseconds to milliseconds. Under the assumption "entry has xact_time <= T" is true on a prefix
// of the entries, and the answer is the last entry of that prefix; the search is a binary search
// (buckets, then entries in one bucket), as Neon's is. Where timestamps are out of order close to T,
// the answer is one of the ends near T, not necessarily the last one in LSN order; a scan would be
// exact but would read the whole index. We choose the logarithmic search and document it.
//
// Invariants of the search (g(b) := "the first entry in the first non-empty bucket at or after b
// has xact_time <= T", false when there is none; monotone: true, then false):
// 1. g is true for every bucket from the first one up to `lo` - 1 once `lo` has moved, and false
//    for every bucket from `hi` on.
// 2. `best` is the largest non-empty bucket seen with g true; when the loop ends it is the bucket
//    that holds the answer (the next non-empty bucket after it starts after T).
// 3. Each bucket is read at most once per query (memoised), so a run of empty buckets costs one
//    read each, however the binary search probes it.
//
// Kinds (Neon's): present (entries at or before T and after it: the last one at or before T),
// future (every entry at or before T: the newest), past (every entry after T: oldest), nodata
// (no entries: oldest).

import LSM

/// Finds the last transaction end at or before a time in a commit-timestamp index.
public struct CommitTimestampLookup: Sendable {
    public enum Kind: String, Sendable {
        case present, past, future, nodata
    }

    public struct Answer: Equatable, Sendable {
        public var lsn: LSN
        public var kind: Kind
        public init(lsn: LSN, kind: Kind) {
            self.lsn = lsn
            self.kind = kind
        }
    }

    public typealias Entry = CommitTimestampIndex.Entry
    public typealias Bucket = CommitTimestampIndex.Bucket

    /// The oldest LSN the timeline can serve; entries below it are ignored.
    public let oldest: LSN
    /// The newest LSN ingested; entries above it are ignored.
    public let newest: LSN
    /// The entries of one bucket, in LSN order (empty when the bucket has no value).
    public let readBucket: @Sendable (Bucket) throws -> [Entry]

    public init(oldest: LSN, newest: LSN, readBucket: @escaping @Sendable (Bucket) throws -> [Entry]) {
        self.oldest = oldest
        self.newest = newest
        self.readBucket = readBucket
    }

    /// The answer for `t`, microseconds since 2000-01-01 00:00 UTC.
    public func find(_ t: Int64) throws -> Answer {
        guard oldest <= newest else { return Answer(lsn: oldest, kind: .nodata) }
        let first = Bucket(containing: oldest), last = Bucket(containing: newest)
        var cache: [Bucket: [Entry]] = [:]

        func entries(_ b: Bucket) throws -> [Entry] {
            if let e = cache[b] { return e }
            let e = try readBucket(b).filter { $0.lsn >= oldest && $0.lsn <= newest }
            cache[b] = e
            return e
        }
        // The first non-empty bucket at or after `b` (up to `last`) and its entries.
        func nextNonEmpty(_ b: Bucket) throws -> (Bucket, [Entry])? {
            var b = b
            while b <= last {
                let e = try entries(b)
                if !e.isEmpty { return (b, e) }
                b = b.next
            }
            return nil
        }

        var lo = first.rawValue, hi = last.rawValue + 1
        var best: (bucket: Bucket, entries: [Entry])?
        while lo < hi {
            let mid = lo + (hi - lo) / 2
            if let (b, e) = try nextNonEmpty(Bucket(rawValue: mid)), e[0].xactTime <= t {
                best = (b, e)
                lo = b.rawValue + 1
            } else {
                hi = mid
            }
        }
        guard let best else {
            return Answer(lsn: oldest, kind: try nextNonEmpty(first) == nil ? .nodata : .past)
        }
        // The last entry of the bucket at or before T (entries[0] is, by construction).
        var l = 0, h = best.entries.count
        while h - l > 1 {
            let m = l + (h - l) / 2
            if best.entries[m].xactTime <= t { l = m } else { h = m }
        }
        let answer = best.entries[l]
        var later = l + 1 < best.entries.count
        if !later && best.bucket < last { later = try nextNonEmpty(best.bucket.next) != nil }
        return Answer(lsn: answer.lsn, kind: later ? .present : .future)
    }
}

// MARK: - RFC 3339 timestamps

extension CommitTimestampLookup {
    /// Days from 1970-01-01 to 2000-01-01, PostgreSQL's epoch.
    public static let postgresEpochDays: Int64 = 10_957

    /// Parses an RFC 3339 date-time (`2026-11-29T07:25:00Z`, `...00.123456+01:00`; `t`, `z` and a
    /// space instead of `T` are accepted, and a space where the offset's `+` was, as a URL query
    /// may turn `+` into one) into microseconds since 2000-01-01 00:00 UTC. Fractions finer than a
    /// microsecond are truncated. Nil when the text is not such a timestamp.
    public static func parseRFC3339(_ text: String) -> Int64? {
        let s = Array(text.utf8)
        var i = 0
        func digits(_ n: Int) -> Int64? {
            guard i + n <= s.count else { return nil }
            var v: Int64 = 0
            for k in i..<i + n {
                guard s[k] >= UInt8(ascii: "0"), s[k] <= UInt8(ascii: "9") else { return nil }
                v = v * 10 + Int64(s[k] - UInt8(ascii: "0"))
            }
            i += n
            return v
        }
        func expect(_ allowed: String) -> Bool {
            guard i < s.count, allowed.utf8.contains(s[i]) else { return false }
            i += 1
            return true
        }
        guard let year = digits(4), expect("-"), let month = digits(2), expect("-"), let day = digits(2),
              expect("Tt "), let hour = digits(2), expect(":"), let minute = digits(2), expect(":"), let second = digits(2)
        else { return nil }
        var micros: Int64 = 0
        if i < s.count, s[i] == UInt8(ascii: ".") {
            i += 1
            var count = 0
            while i < s.count, s[i] >= UInt8(ascii: "0"), s[i] <= UInt8(ascii: "9") {
                if count < 6 { micros = micros * 10 + Int64(s[i] - UInt8(ascii: "0")) }
                count += 1
                i += 1
            }
            guard count > 0 else { return nil }
            for _ in count..<max(count, 6) { micros *= 10 }
        }
        var offsetSeconds: Int64 = 0
        if expect("Zz") {
        } else if i < s.count, s[i] == UInt8(ascii: "+") || s[i] == UInt8(ascii: "-") || s[i] == UInt8(ascii: " ") {
            let sign: Int64 = s[i] == UInt8(ascii: "-") ? -1 : 1
            i += 1
            guard let oh = digits(2), expect(":"), let om = digits(2), oh <= 23, om <= 59 else { return nil }
            offsetSeconds = sign * (oh * 3600 + om * 60)
        } else {
            return nil
        }
        guard i == s.count, (1...12).contains(month), day >= 1, day <= daysInMonth(year, month),
              hour <= 23, minute <= 59, second <= 60 else { return nil }
        let days = daysFromCivil(year, month, day) - postgresEpochDays
        let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offsetSeconds
        return seconds * 1_000_000 + micros
    }

    static func daysInMonth(_ year: Int64, _ month: Int64) -> Int64 {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (counting in 400-year eras of 146097
    /// days, with years starting in March so that the leap day ends the year).
    static func daysFromCivil(_ year: Int64, _ month: Int64, _ day: Int64) -> Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }
}
