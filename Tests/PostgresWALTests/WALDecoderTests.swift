import LSM
import XCTest
@testable import PostgresWAL

/// The streaming decoder against synthetic WAL whose every byte the test knows: a model test (random
/// records written by `SyntheticWALWriter`, decoded from random chunks and byte by byte, compared field
/// by field), start positions, an abandoned record, and one test per kind of damage.
final class WALDecoderTests: XCTestCase {
    /// Small segments, so that records cross segment boundaries often; above 4 GiB, so that LSNs have
    /// a high half.
    let segmentSize = 64 * 1024
    let base = LSN(0x1_0000_0000 + 3 * 64 * 1024)

    // MARK: - Helpers

    struct Decoded {
        var records: [DecodedRecord] = []
        var error: WALError?
    }

    /// Decodes `stream` (first byte at `base`) from `start`, cut into chunks by `chunk` (given the
    /// offset, returns the next chunk's size).
    func decode(_ stream: [UInt8], from start: LSN? = nil, previous: LSN? = nil, chunk: (Int) -> Int) -> Decoded {
        let start = start ?? base
        var decoder = try! WALDecoder(startLSN: start, previousRecordLSN: previous, segmentSize: segmentSize)
        var result = Decoded()
        var offset = Int(start.rawValue - base.rawValue)
        while offset < stream.count {
            let end = min(stream.count, offset + max(1, chunk(offset)))
            decoder.feed(stream[offset..<end])
            offset = end
            do {
                while let r = try decoder.next() { result.records.append(r) }
            } catch {
                result.error = error as? WALError
                // Poisoned: the same error again.
                XCTAssertThrowsError(try decoder.next()) { XCTAssertEqual($0 as? WALError, result.error) }
                return result
            }
        }
        return result
    }

    func randomPage(rng: inout SeededRandom) -> (page: [UInt8], holeOffset: Int, holeLength: Int) {
        var page = compressibleBytes(count: PostgresWAL.relationPageSize, rng: &rng)
        if Bool.random(using: &rng) { return (page, 0, 0) }
        let lower = Int.random(in: 24...4000, using: &rng)
        let upper = Int.random(in: (lower + 1)...8192, using: &rng)
        for i in lower..<upper { page[i] = 0 }
        return (page, lower, upper - lower)
    }

    func randomRecord(rng: inout SeededRandom, xid: UInt32) -> SyntheticRecord {
        var r = SyntheticRecord(rmid: ResourceManagerId(UInt8.random(in: 0...21, using: &rng)),
                                info: UInt8.random(in: 0...15, using: &rng) << 4, xid: xid)
        if r.rmid == .xlog && r.info == XLogRecordHeader.xlogSwitchInfo { r.info = 0 }
        var id = UInt8.random(in: 0...2, using: &rng)
        var relation = RelFileNode(spcNode: 1663, dbNode: 5, relNode: UInt32.random(in: 16384...16390, using: &rng))
        for _ in 0..<Int.random(in: 0...4, using: &rng) {
            if Bool.random(using: &rng) { relation.relNode = UInt32.random(in: 16384...16390, using: &rng) }
            var b = SyntheticRecord.Block(id: id, relation: relation, fork: ForkNumber.allCases.randomElement(using: &rng)!,
                                          block: UInt32.random(in: 0...UInt32.max, using: &rng), willInit: Bool.random(using: &rng))
            if Bool.random(using: &rng) {
                b.data = (0..<Int.random(in: 1...600, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            }
            if Int.random(in: 0..<3, using: &rng) == 0 {
                let p = randomPage(rng: &rng)
                let compression = [BlockImage.Compression.none, .pglz, .lz4, .zstd].randomElement(using: &rng)!
                var image = (page: p.page, holeOffset: p.holeOffset, holeLength: p.holeLength, compression: compression, apply: Bool.random(using: &rng))
                // PostgreSQL stores an image uncompressed when compression does not make it shorter.
                if compression != .none && SyntheticRecord.storedImage(image).count >= PostgresWAL.relationPageSize - p.holeLength {
                    image.compression = .none
                }
                b.image = image
            }
            r.blocks.append(b)
            id += UInt8.random(in: 1...5, using: &rng)
            if id > BlockReference.maximumId { break }
        }
        switch Int.random(in: 0..<10, using: &rng) {
        case 0: r.mainData = (0..<Int.random(in: 256...100_000, using: &rng)).map { UInt8(truncatingIfNeeded: $0) }
        case 1...5: r.mainData = (0..<Int.random(in: 1...255, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        default: break
        }
        if Int.random(in: 0..<8, using: &rng) == 0 { r.toplevelXid = xid &+ 1000 }
        if Int.random(in: 0..<8, using: &rng) == 0 { r.origin = UInt16.random(in: 1...100, using: &rng) }
        return r
    }

    /// A stream of random records, with fillers that put record headers across page ends and records
    /// ending exactly at page ends, and XLOG_SWITCH records. Returns the stream and what was written.
    func randomStream(rng: inout SeededRandom, count: Int) -> ([UInt8], [(LSN, SyntheticRecord)]) {
        var w = SyntheticWALWriter(base: base, segmentSize: segmentSize)
        var written: [(LSN, SyntheticRecord)] = []
        func add(_ r: SyntheticRecord) { written.append((w.append(r), r)) }
        for i in 0..<count {
            switch Int.random(in: 0..<20, using: &rng) {
            case 0:
                // A header split across pages (8 or 16 bytes of it on the first page).
                w.pad(toBytesBeforePageEnd: [8, 16].randomElement(using: &rng)!)
                written.append((w.lastRecord, SyntheticRecord(rmid: .standby)))
            case 1:
                w.pad(toBytesBeforePageEnd: 0)
                written.append((w.lastRecord, SyntheticRecord(rmid: .standby)))
            case 2 where i % 7 == 0:
                add(.switchRecord())
            default:
                break
            }
            // At least one switch in every stream (at 1 in 140 a record, a stream of 400 went
            // without one for about 1 seed in 18).
            if i == count / 2 { add(.switchRecord()) }
            add(randomRecord(rng: &rng, xid: UInt32(1000 + i)))
        }
        return (w.bytes, written)
    }

    func assertMatches(_ decoded: DecodedRecord, _ expected: SyntheticRecord, at lsn: LSN, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(decoded.startLSN, lsn, file: file, line: line)
        // Fillers: only position and kind are known to the caller.
        if expected.rmid == .standby && expected.blocks.isEmpty && expected.mainData.allSatisfy({ $0 == 0x42 }) && expected.xid == 0 { return }
        XCTAssertEqual(decoded.resourceManager, expected.rmid, "at \(lsn)", file: file, line: line)
        XCTAssertEqual(decoded.info, expected.info, "at \(lsn)", file: file, line: line)
        XCTAssertEqual(decoded.xid.rawValue, expected.xid, "at \(lsn)", file: file, line: line)
        XCTAssertEqual(decoded.mainData, expected.mainData, "at \(lsn)", file: file, line: line)
        XCTAssertEqual(decoded.toplevelXid?.rawValue, expected.toplevelXid, "at \(lsn)", file: file, line: line)
        XCTAssertEqual(decoded.origin?.rawValue, expected.origin, "at \(lsn)", file: file, line: line)
        XCTAssertEqual(decoded.blocks.count, expected.blocks.count, "at \(lsn)", file: file, line: line)
        for (b, e) in zip(decoded.blocks, expected.blocks) {
            XCTAssertEqual(b.id, e.id, file: file, line: line)
            XCTAssertEqual(b.relation, e.relation, file: file, line: line)
            XCTAssertEqual(b.fork, e.fork, file: file, line: line)
            XCTAssertEqual(b.block.rawValue, e.block, file: file, line: line)
            XCTAssertEqual(b.willInit, e.willInit, file: file, line: line)
            XCTAssertEqual(Array(decoded.data(of: b)), e.data, file: file, line: line)
            XCTAssertEqual(b.image == nil, e.image == nil, file: file, line: line)
            if let image = b.image, let ei = e.image {
                XCTAssertEqual(image.page, ei.page, "image of block #\(b.id) at \(lsn) (\(ei.compression))", file: file, line: line)
                XCTAssertEqual(image.holeOffset, ei.holeOffset, file: file, line: line)
                XCTAssertEqual(image.holeLength, ei.holeLength, file: file, line: line)
                XCTAssertEqual(image.compression, ei.compression, file: file, line: line)
                XCTAssertEqual(image.apply, ei.apply, file: file, line: line)
            }
        }
    }

    // MARK: - Model test

    func testRandomStreamsDecodeToWhatWasWritten() throws {
        var rng = SeededRandom(seed: testSeed("WALDecoderTests.testRandomStreamsDecodeToWhatWasWritten"))
        let (stream, written) = randomStream(rng: &rng, count: 400)
        print("synthetic stream: \(stream.count) bytes, \(written.count) records")
        var chunkRng = rng
        let runs: [(String, (Int) -> Int)] = [
            ("one feed", { _ in stream.count }),
            ("random chunks", { _ in [Int.random(in: 1...16, using: &chunkRng), Int.random(in: 1...9000, using: &chunkRng),
                                      Int.random(in: 1...200_000, using: &chunkRng)].randomElement(using: &chunkRng)! }),
            ("byte by byte for 300 KiB", { $0 < 300 * 1024 ? 1 : 65536 }),
        ]
        for (name, chunk) in runs {
            let result = decode(stream, chunk: chunk)
            XCTAssertNil(result.error, name)
            XCTAssertEqual(result.records.count, written.count, name)
            for (d, (lsn, e)) in zip(result.records, written) { assertMatches(d, e, at: lsn) }
            for (a, b) in zip(result.records, result.records.dropFirst()) {
                XCTAssertEqual(a.nextRecordLSN, b.startLSN, "\(name): after \(a.startLSN)")
                XCTAssertEqual(b.prev, a.startLSN)
            }
            // Re-decoding a record's bytes gives the same record.
            for d in result.records.prefix(50) {
                let again = try DecodedRecord(parsing: d.bytes, at: d.startLSN, segmentSize: segmentSize)
                XCTAssertEqual(again.blocks, d.blocks)
                XCTAssertEqual(again.mainData, d.mainData)
                XCTAssertEqual(again.endLSN, d.endLSN)
            }
        }
        let all = decode(stream, chunk: { _ in stream.count }).records
        XCTAssertTrue(all.contains { $0.isSwitch })
        XCTAssertTrue(all.contains { Int($0.startLSN.rawValue % 8192) > 8192 - XLogRecordHeader.size }, "a header split across pages")
        XCTAssertTrue(all.contains { $0.endLSN.rawValue % 8192 == 0 && !$0.isSwitch }, "a record ending on a page boundary")
        XCTAssertTrue(all.contains { $0.startLSN.rawValue / UInt64(segmentSize) != ($0.endLSN.rawValue - 1) / UInt64(segmentSize) && !$0.isSwitch }, "a record crossing segments")
    }

    /// Through `RecordPipe`, whose consumer owns each record alone and gives batches back for the
    /// decoder to reuse their storage: a consumer that scribbles over every record's bytes and
    /// images must not change any later record (reused storage is fully rewritten).
    func testRecycledStorageNeverLeaksIntoLaterRecords() throws {
        var rng = SeededRandom(seed: testSeed("WALDecoderTests.testRecycledStorageNeverLeaksIntoLaterRecords"))
        let (stream, written) = randomStream(rng: &rng, count: 3000)
        let end = LSN(base.rawValue + UInt64(stream.count))
        let pipe = try RecordPipe.decoding(from: base, to: end, segmentSize: segmentSize) { feed in
            var offset = 0
            while offset < stream.count {
                let n = min(7919, stream.count - offset)
                let more = try stream.withUnsafeBytes { try feed(UnsafeRawBufferPointer(rebasing: $0[offset..<offset + n])) }
                offset += n
                if !more { return }
            }
        }
        var i = 0
        _ = try pipe.consume { record in
            guard i < written.count else { XCTFail("more records than written"); return }
            let (lsn, expected) = written[i]
            XCTAssertEqual(record.startLSN, lsn)
            assertMatches(record, expected, at: lsn)
            i += 1
            // What a careless consumer could do to storage it owns.
            for j in record.blocks.indices where record.blocks[j].image != nil {
                record.blocks[j].image!.page.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0xEE, $0.count) }
            }
            record.bytes.withUnsafeMutableBytes { _ = memset($0.baseAddress!, 0xDD, $0.count) }
        }
        XCTAssertEqual(i, written.count)
    }

    // MARK: - Start positions

    func testStartsAtAnyRecordOrPageBoundary() {
        var rng = SeededRandom(seed: testSeed("WALDecoderTests.testStartsAtAnyRecordOrPageBoundary"))
        let (stream, written) = randomStream(rng: &rng, count: 120)
        let starts = written.map(\.0)
        // At a record start (mid-page, or right after a page header).
        for (i, lsn) in starts.enumerated() where i % 5 == 0 {
            let previous = i > 0 ? starts[i - 1] : nil
            let result = decode(stream, from: lsn, previous: previous, chunk: { _ in Int.random(in: 1...5000, using: &rng) })
            XCTAssertNil(result.error, "from \(lsn)")
            XCTAssertEqual(result.records.map(\.startLSN), Array(starts[i...]), "from \(lsn)")
        }
        // At page boundaries: decoding begins with the first record that starts there or later,
        // skipping the tail of a record continued onto the page (possibly across several pages).
        let page = UInt64(PostgresWAL.pageSize)
        for p in stride(from: base.rawValue, to: base.rawValue + UInt64(stream.count), by: Int(page) * 3) {
            let result = decode(stream, from: LSN(p), chunk: { _ in Int.random(in: 1...5000, using: &rng) })
            // After a switch, pages up to the segment end hold no records: nothing to decode there.
            let expected = starts.filter { $0.rawValue >= p && !isInsideSwitchPadding(LSN(p), written) }
            if isInsideSwitchPadding(LSN(p), written) { continue }
            XCTAssertNil(result.error, "from page \(LSN(p))")
            XCTAssertEqual(result.records.map(\.startLSN), expected, "from page \(LSN(p))")
        }
    }

    private func isInsideSwitchPadding(_ lsn: LSN, _ written: [(LSN, SyntheticRecord)]) -> Bool {
        for (start, r) in written where r.rmid == .xlog && r.info == XLogRecordHeader.xlogSwitchInfo {
            let end = PostgresWAL.endOfRecord(startingAt: start, totalLength: 24, isSwitch: true, segmentSize: segmentSize)
            if lsn > start && lsn < end { return true }
        }
        return false
    }

    func testRejectsImpossibleStartLSNs() {
        XCTAssertThrowsError(try WALDecoder(startLSN: base.advanced(by: 44), segmentSize: segmentSize)) {
            XCTAssertEqual(($0 as? WALError)?.code, .invalidArgument)
        }
        // Inside a segment's long header, and inside a short header.
        XCTAssertThrowsError(try WALDecoder(startLSN: base.advanced(by: 32), segmentSize: segmentSize))
        XCTAssertThrowsError(try WALDecoder(startLSN: base.advanced(by: 8192 + 16), segmentSize: segmentSize))
        XCTAssertNoThrow(try WALDecoder(startLSN: base.advanced(by: 8192 + 24), segmentSize: segmentSize))
        XCTAssertThrowsError(try WALDecoder(startLSN: base, segmentSize: 12345))
    }

    // MARK: - Abandoned record

    func testRecordAbandonedByACrashIsSkipped() {
        var w = SyntheticWALWriter(base: base, segmentSize: segmentSize)
        let first = w.append(SyntheticRecord(rmid: .heap, xid: 7, mainData: [1, 2, 3]))
        w.pad(toBytesBeforePageEnd: 64)
        let filler = w.lastRecord
        _ = w.appendAbandoned(SyntheticRecord(rmid: .heap, xid: 8, mainData: [UInt8](repeating: 9, count: 500)))
        // The record after the crash points back past the abandoned one, as PostgreSQL's does.
        let after = w.append(SyntheticRecord(rmid: .xlog, info: 0xD0, xid: 0, mainData: [4, 5]))
        let result = decode(w.bytes, chunk: { _ in 100 })
        XCTAssertNil(result.error)
        XCTAssertEqual(result.records.map(\.startLSN), [first, filler, after])
        XCTAssertEqual(result.records.last?.prev, filler)
        XCTAssertEqual(after.rawValue % 8192, UInt64(WALPageHeader.shortSize))
    }

    // MARK: - Damage

    /// A stream with a page-spanning record in the middle, for the damage tests.
    func damageFixture() -> (stream: [UInt8], before: LSN, target: LSN, targetLength: Int) {
        var w = SyntheticWALWriter(base: base, segmentSize: segmentSize)
        w.append(SyntheticRecord(rmid: .heap, xid: 1, mainData: [1]))
        w.pad(toBytesBeforePageEnd: 1000)
        let before = w.lastRecord
        let target = w.append(SyntheticRecord(rmid: .heap, xid: 2, mainData: [UInt8](repeating: 7, count: 20_000)))
        w.append(SyntheticRecord(rmid: .heap, xid: 3, mainData: [3]))
        return (w.bytes, before, target, 24 + 5 + 20_000)
    }

    func offset(_ lsn: LSN) -> Int { Int(lsn.rawValue - base.rawValue) }

    func testFlippedPayloadByteIsAChecksumMismatchNamingTheRecord() {
        let f = damageFixture()
        // A byte on the record's second page: past the first page's 1000 bytes and the page header.
        for bytePosition in [f.target.advanced(by: 100), f.target.advanced(by: 1000 + 24 + 4000)] {
            var stream = f.stream
            stream[offset(bytePosition)] ^= 0x01
            let result = decode(stream, chunk: { _ in 777 })
            XCTAssertEqual(result.records.map(\.startLSN).last, f.before)
            XCTAssertEqual(result.error?.code, .checksumMismatch)
            XCTAssertEqual(result.error?.recordLSN, f.target)
            XCTAssertTrue(result.error?.description.contains(f.target.description) ?? false, "\(String(describing: result.error))")
        }
    }

    func testDamagedHeadersAreCorruption() {
        let f = damageFixture()
        let nextPage = (f.target.rawValue / 8192 + 1) * 8192
        let cases: [(String, (inout [UInt8]) -> Void, LSN?)] = [
            ("zero length", { s in for i in 0..<4 { s[self.offset(f.target) + i] = 0 } }, f.target),
            ("length below the header", { s in s[self.offset(f.target)] = 20; for i in 1..<4 { s[self.offset(f.target) + i] = 0 } }, f.target),
            ("huge length", { s in s[self.offset(f.target) + 3] = 0x7F }, f.target),
            ("prev-link", { s in s[self.offset(f.target) + 8] ^= 0x08 }, f.target),
            ("resource manager", { s in s[self.offset(f.target) + 17] = 60 }, f.target),
            ("page magic", { s in s[Int(nextPage - self.base.rawValue)] ^= 0xFF }, f.target),
            ("page address", { s in s[Int(nextPage - self.base.rawValue) + 9] ^= 0x01 }, f.target),
            ("continuation flag", { s in s[Int(nextPage - self.base.rawValue) + 2] &= ~0x01 }, f.target),
            ("rem_len", { s in s[Int(nextPage - self.base.rawValue) + 16] ^= 0x10 }, f.target),
            ("unknown page flag", { s in s[Int(nextPage - self.base.rawValue) + 2] |= 0x40 }, f.target),
            ("long header flag off a segment start", { s in s[Int(nextPage - self.base.rawValue) + 2] |= 0x02 }, f.target),
            ("long header missing at the segment start", { s in s[2] &= ~0x02 }, nil),
            ("segment size", { s in s[32] ^= 0x01 }, nil),
        ]
        for (name, damage, record) in cases {
            var stream = f.stream
            damage(&stream)
            let result = decode(stream, chunk: { _ in 333 })
            XCTAssertEqual(result.error?.code, .corruption, "\(name): \(String(describing: result.error))")
            XCTAssertEqual(result.error?.recordLSN, record, "\(name): \(String(describing: result.error))")
            print("\(name): \(result.error.map(String.init(describing:)) ?? "no error")")
        }
    }

    func testBlockReferenceLayoutErrorsAreCorruption() {
        func decodeOne(_ bytes: [UInt8]) -> WALError? {
            var b = bytes
            let crc = b.withUnsafeBytes { DecodedRecord.checksum(of: $0) }
            b.withUnsafeMutableBytes { $0.storeBytes(of: crc.littleEndian, toByteOffset: XLogRecordHeader.crcOffset, as: UInt32.self) }
            do { _ = try DecodedRecord(parsing: b, at: base.advanced(by: 40)); return nil } catch { return error as? WALError }
        }
        let rel = RelFileNode(spcNode: 1663, dbNode: 5, relNode: 16384)
        let good = SyntheticRecord(blocks: [.init(id: 0, relation: rel, fork: .main, block: 1, data: [1, 2]),
                                            .init(id: 1, relation: rel, fork: .main, block: 2)], mainData: [9])
        var bytes = good.encode(prev: .zero)
        XCTAssertNil(decodeOne(bytes))
        // Block ids out of order: the second reference gets id 0.
        let secondId = 24 + 4 + 12 + 4
        bytes[secondId] = 0
        XCTAssertEqual(decodeOne(bytes)?.code, .corruption)
        // HAS_DATA without data.
        bytes = good.encode(prev: .zero)
        bytes[24 + 2] = 0; bytes[24 + 3] = 0
        XCTAssertEqual(decodeOne(bytes)?.code, .corruption)
        // An invalid fork number.
        bytes = good.encode(prev: .zero)
        bytes[24 + 1] |= 0x07
        XCTAssertEqual(decodeOne(bytes)?.code, .corruption)
        // An unknown fragment id.
        bytes = good.encode(prev: .zero)
        bytes[24] = 100
        XCTAssertEqual(decodeOne(bytes)?.code, .corruption)
        // A compressed image that does not decompress.
        var page = [UInt8](repeating: 3, count: 8192)
        for i in 100..<200 { page[i] = 0 }
        let withImage = SyntheticRecord(blocks: [.init(id: 0, relation: rel, fork: .main, block: 1,
                                                       image: (page, 100, 100, .lz4, true))])
        bytes = withImage.encode(prev: .zero)
        XCTAssertNil(decodeOne(bytes))
        // Header: id 24, fork_flags 25, data_length 26, image length 28, hole offset 30, bimg_info 32,
        // hole length 33: claim a shorter hole, so the image no longer decompresses to the size wanted.
        XCTAssertEqual(bytes[33], 100)
        bytes[33] = 50
        XCTAssertEqual(decodeOne(bytes)?.code, .corruption)
        // Two compression bits at once.
        bytes = withImage.encode(prev: .zero)
        bytes[32] |= BlockImage.Info.compressedZstd.rawValue
        XCTAssertEqual(decodeOne(bytes)?.code, .corruption)
    }

    // MARK: - Headers and position arithmetic

    func testPageHeaderRoundTripAndChecks() throws {
        let short = WALPageHeader(flags: [.firstIsContinuation], timeline: PostgresTimeline(3), pageAddress: LSN(0x1_0000_2000), remainingLength: 77)
        var bytes: [UInt8] = []
        short.encode(into: &bytes)
        XCTAssertEqual(bytes.count, WALPageHeader.shortSize)
        XCTAssertEqual(try WALPageHeader(parsing: bytes), short)
        XCTAssertEqual(Array(bytes[0..<2]), [0x10, 0xD1], "little-endian magic")

        let long = WALPageHeader(flags: [.longHeader], timeline: PostgresTimeline(1), pageAddress: LSN(0x100_0000), remainingLength: 0,
                                 systemIdentifier: 42, segmentSize: 16 << 20, walPageSize: 8192)
        bytes = []
        long.encode(into: &bytes)
        XCTAssertEqual(bytes.count, WALPageHeader.longSize)
        XCTAssertEqual(try WALPageHeader(parsing: bytes), long)

        var bad = bytes
        bad[0] = 0x11
        XCTAssertThrowsError(try WALPageHeader(parsing: bad))
        bad = bytes
        bad[2] |= 0x80
        XCTAssertThrowsError(try WALPageHeader(parsing: bad))
        XCTAssertThrowsError(try WALPageHeader(parsing: Array(bytes[0..<30])), "a long header needs 40 bytes")
    }

    func testRecordHeaderRoundTrip() throws {
        let h = XLogRecordHeader(totalLength: 61, xid: TransactionId(725), prev: LSN(0x156FE50), info: 0x80,
                                 resourceManager: .heap, crc: 0xDEADBEEF)
        var bytes: [UInt8] = []
        h.encode(into: &bytes)
        XCTAssertEqual(bytes.count, XLogRecordHeader.size)
        XCTAssertEqual(try XLogRecordHeader(parsing: bytes), h)
        XCTAssertFalse(h.isSwitch)
        XCTAssertTrue(SyntheticRecord.switchRecord().encode(prev: .zero).withUnsafeBytes { try! XLogRecordHeader(parsing: $0) }.isSwitch)
        XCTAssertEqual(ResourceManagerId.heap.description, "Heap")
        XCTAssertEqual(ResourceManagerId(200).description, "custom200")
        XCTAssertFalse(ResourceManagerId(100).isValid)
    }

    /// Observed on PostgreSQL 15 with pg_walinspect: INSERT at 0/156FE88, 61 bytes, ends at 0/156FEC8;
    /// 307 bytes at 0/2049EC8 end exactly at the page boundary 0/204A000; 560 bytes at 0/2009DD8 span
    /// the page and end at 0/200A020; XLOG_SWITCH at 0/156FFB0 ends at 0/2000000.
    func testEndOfRecordMatchesPostgreSQL() {
        XCTAssertEqual(PostgresWAL.endOfRecord(startingAt: LSN(0x156FE88), totalLength: 61), LSN(0x156FEC8))
        XCTAssertEqual(PostgresWAL.endOfRecord(startingAt: LSN(0x2049EC8), totalLength: 307), LSN(0x204A000))
        XCTAssertEqual(PostgresWAL.recordStart(after: LSN(0x204A000)), LSN(0x204A018))
        XCTAssertEqual(PostgresWAL.endOfRecord(startingAt: LSN(0x2009DD8), totalLength: 560), LSN(0x200A020))
        XCTAssertEqual(PostgresWAL.endOfRecord(startingAt: LSN(0x156FFB0), totalLength: 24, isSwitch: true), LSN(0x2000000))
        XCTAssertEqual(PostgresWAL.recordStart(after: LSN(0x2000000)), LSN(0x2000028))
        // Across a segment boundary: the long header is skipped.
        XCTAssertEqual(PostgresWAL.endOfRecord(startingAt: LSN(0x1FFFFF0), totalLength: 32), LSN(0x2000038))
    }
}
