import Foundation
import LSM
import PGTestSupport
import XCTest
@testable import PostgresWAL

/// The commit-timestamp index's encodings, the get_lsn_by_timestamp search against a brute-force
/// model, and the RFC 3339 parser.
final class CommitTimestampLookupTests: XCTestCase {
    typealias Entry = CommitTimestampIndex.Entry
    typealias Bucket = CommitTimestampIndex.Bucket

    func testKeyAndEncodings() throws {
        let bucket = Bucket(rawValue: 0x1_0000_0002)
        let key = CommitTimestampIndex.key(bucket)
        XCTAssertEqual(key.description, "040000000000000000000000010000000002")
        XCTAssertEqual(CommitTimestampIndex.bucket(of: key), bucket)
        XCTAssertNil(CommitTimestampIndex.bucket(of: KeySpace.checkpoint))
        XCTAssertEqual(ChunkId(containing: key), .metadata)
        XCTAssertEqual(Bucket(containing: LSN(0x3_0012_3456)), Bucket(rawValue: 0x3_0012_3456 >> 20))

        let e = Entry(lsn: LSN(0x1_02345678), xactTime: -2)
        let record = EngineRecord.commitTimestamp(e).encode()
        XCTAssertEqual(record, [7, 0, 0, 0, 1, 0x02, 0x34, 0x56, 0x78, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe])
        XCTAssertEqual(try EngineRecord(decoding: record), .commitTimestamp(e))
        XCTAssertThrowsError(try EngineRecord(decoding: record.dropLast()))
        XCTAssertThrowsError(try EngineRecord(decoding: record + [0]))

        let b = e.bucket
        let entries = [e, Entry(lsn: LSN(0x1_02345680), xactTime: 5)]
        let value = CommitTimestampIndex.encode(entries)
        XCTAssertEqual(value.count, 32)
        XCTAssertEqual(try CommitTimestampIndex.decode(value, bucket: b), entries)
        XCTAssertThrowsError(try CommitTimestampIndex.decode(value.dropLast(), bucket: b))
        XCTAssertThrowsError(try CommitTimestampIndex.decode(value, bucket: b.next), "entries outside their bucket")
        XCTAssertThrowsError(try CommitTimestampIndex.decode(CommitTimestampIndex.encode(entries.reversed()), bucket: b), "not ascending")
    }

    /// The examples of format-spec.md 10.1, 10.3 and 10.4, byte for byte.
    func testFormatSpecExamples() throws {
        func hex(_ b: [UInt8]) -> String { b.map { String(format: "%02x", $0) }.joined(separator: " ") }
        let commit = Entry(lsn: LSN(0x3024A70), xactTime: try XCTUnwrap(CommitTimestampLookup.parseRFC3339("2026-11-29T05:46:40.123456Z")))
        let abort = Entry(lsn: LSN(0x3024B28), xactTime: commit.xactTime + 1_520_000)
        XCTAssertEqual(commit.xactTime, 849_246_400_123_456)
        XCTAssertEqual(CommitTimestampIndex.key(commit.bucket).description, "040000000000000000000000000000000030")
        XCTAssertEqual(hex(CommitTimestampIndex.encode([commit, abort])),
                       "00 00 00 00 03 02 4a 70 00 03 04 62 96 01 92 40 00 00 00 00 03 02 4b 28 00 03 04 62 96 18 c3 c0")
        XCTAssertEqual(hex(EngineRecord.commitTimestamp(commit).encode()), "07 00 00 00 00 03 02 4a 70 00 03 04 62 96 01 92 40")
    }

    /// Every kind of transaction end appends to its bucket; a bucket's first record is will-init,
    /// and an ingest that starts over on a store with the bucket (a restart) appends without it.
    func testIngestAppendsEveryTransactionEnd() throws {
        let target = MemoryIngestTarget()
        let ingest = WalIngest(target: target)
        var feeder = RecordFeeder(start: LSN(0x300_0028))
        func le(_ f: (inout LE) -> Void) -> [UInt8] { var m = LE(); f(&m); return m.bytes }
        let commit = try feeder.feed(ingest, RecordBuilder(rmgr: .transaction, info: 0x00, xid: 10, mainData: le { $0.u64(1000) }))
        let abort = try feeder.feed(ingest, RecordBuilder(rmgr: .transaction, info: 0x20, xid: 11, mainData: le { $0.u64(2000) }))
        feeder.lsn = LSN(0x340_0028)
        let prepared = try feeder.feed(ingest, RecordBuilder(rmgr: .transaction, info: 0x80 | 0x30, mainData: le { $0.u64(3000); $0.u32(1 << 4); $0.u32(12) }))
        let restarted = WalIngest(target: target)
        let abortPrepared = try feeder.feed(restarted, RecordBuilder(rmgr: .transaction, info: 0x80 | 0x40, mainData: le { $0.u64(4000); $0.u32(1 << 4); $0.u32(13) }))

        let first = CommitTimestampIndex.key(Bucket(containing: commit.endLSN))
        let second = CommitTimestampIndex.key(Bucket(containing: prepared.endLSN))
        XCTAssertNotEqual(first, second)
        func history(_ key: Key) -> [String] { target.history(key).map { "\($0.lsn) \($0.value.kind) \($0.value.willInit) \($0.value.bytes)" } }
        func expected(_ r: DecodedRecord, _ time: Int64, willInit: Bool) -> String {
            "\(r.endLSN) engineRecord \(willInit) \(EngineRecord.commitTimestamp(Entry(lsn: r.endLSN, xactTime: time)).encode())"
        }
        XCTAssertEqual(history(first), [expected(commit, 1000, willInit: true), expected(abort, 2000, willInit: false)])
        XCTAssertEqual(history(second), [expected(prepared, 3000, willInit: true), expected(abortPrepared, 4000, willInit: false)])
        XCTAssertEqual(ingest.stats.engineRecords(.commitTimestamp), 3)
    }

    // MARK: - Search

    /// The answer by definition: the last entry in [oldest, newest] with xactTime <= t.
    private func model(_ all: [Entry], oldest: LSN, newest: LSN, t: Int64) -> CommitTimestampLookup.Answer {
        let live = all.filter { $0.lsn >= oldest && $0.lsn <= newest }
        guard !live.isEmpty else { return .init(lsn: oldest, kind: .nodata) }
        guard let i = live.lastIndex(where: { $0.xactTime <= t }) else { return .init(lsn: oldest, kind: .past) }
        return .init(lsn: live[i].lsn, kind: i == live.count - 1 ? .future : .present)
    }

    private final class Reads: @unchecked Sendable {
        var buckets: [Bucket] = []
    }

    private func lookup(_ all: [Entry], oldest: LSN, newest: LSN, reads: Reads) -> CommitTimestampLookup {
        var byBucket: [Bucket: [Entry]] = [:]
        for e in all { byBucket[e.bucket, default: []].append(e) }
        let frozen = byBucket
        return CommitTimestampLookup(oldest: oldest, newest: newest) { b in
            reads.buckets.append(b)
            return frozen[b] ?? []
        }
    }

    func testSearchMatchesModel() throws {
        let seed = testSeed("testSearchMatchesModel")
        var rng = SeededRandom(seed: seed)
        for round in 0..<400 {
            // Entries with non-decreasing timestamps, some buckets dense, long runs empty.
            var entries: [Entry] = []
            var lsn = UInt64.random(in: 0..<(4 << 20), using: &rng) & ~7
            var time = Int64.random(in: -1_000_000...1_000_000, using: &rng)
            let count = Int.random(in: 0...60, using: &rng)
            for _ in 0..<count {
                let gap: UInt64 = Bool.random(using: &rng) ? UInt64.random(in: 8...4096, using: &rng) : UInt64.random(in: 1...(6 << 20), using: &rng)
                lsn += gap & ~7 | 8
                time += Bool.random(using: &rng) ? 0 : Int64.random(in: 1...1000, using: &rng)
                entries.append(Entry(lsn: LSN(lsn), xactTime: time))
            }
            let lastLSN = (entries.last?.lsn.rawValue ?? lsn) + UInt64.random(in: 0..<(3 << 20), using: &rng)
            let firstLSN = entries.first?.lsn.rawValue ?? 0
            let oldest = LSN(Bool.random(using: &rng) ? firstLSN / 2 : UInt64.random(in: 0...lastLSN, using: &rng))
            let newest = LSN(Bool.random(using: &rng) ? lastLSN : UInt64.random(in: oldest.rawValue...lastLSN, using: &rng))
            var times: [Int64] = [Int64.min, Int64.max, (entries.first?.xactTime ?? 0) - 1]
            for e in entries { times += [e.xactTime - 1, e.xactTime, e.xactTime + 1] }
            for t in times {
                let reads = Reads()
                let answer = try lookup(entries, oldest: oldest, newest: newest, reads: reads).find(t)
                XCTAssertEqual(answer, model(entries, oldest: oldest, newest: newest, t: t),
                               "round \(round), t \(t), oldest \(oldest), newest \(newest), entries \(entries) (seed \(seed))")
                let span = Int(Bucket(containing: newest).rawValue - Bucket(containing: oldest).rawValue) + 1
                XCTAssertLessThanOrEqual(reads.buckets.count, span, "round \(round): a bucket was read twice")
                XCTAssertEqual(Set(reads.buckets).count, reads.buckets.count, "round \(round): a bucket was read twice")
            }
        }
    }

    func testSearchKindsByHand() throws {
        let mib: UInt64 = 1 << 20
        let entries = [Entry(lsn: LSN(mib + 64), xactTime: 100), Entry(lsn: LSN(mib + 128), xactTime: 200),
                       Entry(lsn: LSN(5 * mib + 8), xactTime: 300)]
        let reads = Reads()
        let l = lookup(entries, oldest: LSN(mib), newest: LSN(6 * mib), reads: reads)
        XCTAssertEqual(try l.find(99), .init(lsn: LSN(mib), kind: .past))
        XCTAssertEqual(try l.find(100), .init(lsn: LSN(mib + 64), kind: .present))
        XCTAssertEqual(try l.find(299), .init(lsn: LSN(mib + 128), kind: .present))
        XCTAssertEqual(try l.find(300), .init(lsn: LSN(5 * mib + 8), kind: .future))
        XCTAssertEqual(try lookup([], oldest: LSN(mib), newest: LSN(9 * mib), reads: reads).find(0), .init(lsn: LSN(mib), kind: .nodata))
        // Entries below the oldest servable LSN do not count.
        XCTAssertEqual(try lookup(entries, oldest: LSN(mib + 100), newest: LSN(6 * mib), reads: reads).find(150),
                       .init(lsn: LSN(mib + 100), kind: .past))
        // Nor do entries above last_record_lsn.
        XCTAssertEqual(try lookup(entries, oldest: LSN(mib), newest: LSN(mib + 200), reads: reads).find(300),
                       .init(lsn: LSN(mib + 128), kind: .future))
    }

    // MARK: - RFC 3339

    func testParseRFC3339() throws {
        let p = CommitTimestampLookup.parseRFC3339
        XCTAssertEqual(p("2000-01-01T00:00:00Z"), 0)
        XCTAssertEqual(p("2000-01-01t01:00:00+01:00"), 0)
        XCTAssertEqual(p("1999-12-31 23:59:59.5z"), -500_000)
        XCTAssertEqual(p("1999-12-31T19:00:00-05:00"), 0)
        XCTAssertEqual(p("2000-01-01T00:00:00.123456789Z"), 123_456)
        XCTAssertEqual(p("2000-01-01T00:00:00.1Z"), 100_000)
        XCTAssertEqual(p("2000-03-01T00:00:00Z"), 60 * 86_400 * 1_000_000, "2000 is a leap year")
        XCTAssertEqual(p("2000-01-01T02:00:00 02:00"), 0, "a '+' turned into a space by URL decoding")
        for bad in ["", "yesterday", "2026-11-29T07:25:00", "2026-13-01T00:00:00Z", "2026-02-29T00:00:00Z", "1900-02-29T00:00:00Z",
                    "2026-11-29T24:00:00Z", "2026-11-29T07:60:00Z", "2026-11-29T07:25:00.Z", "2026-11-29T07:25:00+1:00",
                    "2026-11-29T07:25:00+24:00", "2026-11-29T07:25:00Zx", "2026-11-29", "12345-01-01T00:00:00Z"] {
            XCTAssertNil(p(bad), bad)
        }
        // Against Foundation, for seeded random times between 1970 and 2100.
        let seed = testSeed("testParseRFC3339")
        var rng = SeededRandom(seed: seed)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime]
        for _ in 0..<2000 {
            let unix = Int64.random(in: 0...4_102_444_800, using: &rng)
            let text = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(unix)))
            XCTAssertEqual(p(text), (unix - 946_684_800) * 1_000_000, "\(text) (seed \(seed))")
        }
    }
}
