import Foundation
import CShims
@testable import LSM
import PGTestSupport
import XCTest

/// The block compressions of format-spec.md section 3: every payload a writer stores comes back byte
/// for byte, the writer rule picks the stride-delta form (3) for periodic payloads and never stores a
/// block larger than raw, and damaged stride-delta blocks are corruption, not data.
final class BlockCompressionTests: XCTestCase {
    /// 8192 bytes laid out like a B-tree leaf: 4-byte line pointers counting down by 16 at the front,
    /// 16-byte items whose TID offset and key count up at the back.
    private func btreeLikePage() -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 8192)
        let items = 400
        for i in 0..<items {
            let itemOffset = 8192 - 16 * (i + 1)
            let lp = UInt32(itemOffset) | (1 << 15) | (16 << 17)
            for b in 0..<4 { p[24 + 4 * i + b] = UInt8((lp >> (8 * b)) & 0xFF) }
            p[itemOffset + 0] = 0; p[itemOffset + 1] = 0; p[itemOffset + 2] = 0; p[itemOffset + 3] = 7
            p[itemOffset + 4] = UInt8(i % 61 + 1); p[itemOffset + 6] = 16
            let key = UInt32(1000 + i)
            for b in 0..<4 { p[itemOffset + 8 + b] = UInt8((key >> (8 * b)) & 0xFF) }
        }
        return p
    }

    /// 8192 bytes laid out like a full pgbench_accounts heap page: 61 tuples of 128 bytes placed from
    /// the end down, each one's TID offset and key one above the tuple before it, blank filler.
    private func heapLikePage() -> [UInt8] {
        var p = [UInt8](repeating: 0, count: 8192)
        for i in 0..<61 {
            let at = 8192 - 128 * (i + 1)
            let lp = UInt32(at) | (1 << 15) | (121 << 17)
            for b in 0..<4 { p[24 + 4 * i + b] = UInt8((lp >> (8 * b)) & 0xFF) }
            p[at] = 0xD8; p[at + 1] = 0x02                       // xmin
            p[at + 14] = 0x87; p[at + 15] = 0x13                 // ctid block
            p[at + 16] = UInt8(i + 1)                            // ctid offset
            p[at + 18] = 0x04; p[at + 20] = 0x02; p[at + 21] = 0x0B; p[at + 22] = 0x18
            let key = UInt32(500_000 + i)
            for b in 0..<4 { p[at + 24 + b] = UInt8((key >> (8 * b)) & 0xFF) }
            p[at + 28] = 0x04
            for f in (at + 37)..<(at + 121) { p[f] = 0x20 }
        }
        return p
    }

    private func encode(_ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        payload.withUnsafeBytes { BlockTrailer.appendBlock($0, compress: true, filter: true, to: &out) }
        return out
    }

    private func decode(_ block: [UInt8]) throws -> [UInt8] {
        try block.withUnsafeBytes { try BlockTrailer.decodeBlock($0, file: "test-block", offset: 128) }
    }

    private func compression(of block: [UInt8]) -> UInt8 { block[block.count - BlockTrailer.size] }

    /// Encodes `page`, checks that the writer found `stride`, wrote compression 3 with the pass list
    /// `passes` in at most 1/8 of the page, and that the block decodes to the page. Returns the block.
    @discardableResult
    private func assertFiltered(_ page: [UInt8], stride: Int, passes: [Int], file: StaticString = #filePath, line: UInt = #line) throws -> [UInt8] {
        XCTAssertEqual(Int(cs_detect_stride(page, page.count)), stride, file: file, line: line)
        let block = encode(page)
        XCTAssertEqual(compression(of: block), BlockTrailer.Compression.lz4Delta.rawValue, file: file, line: line)
        let listed = (0..<Int(block[0])).map { Int(block[1 + 2 * $0]) << 8 | Int(block[2 + 2 * $0]) }
        XCTAssertEqual(listed, passes, "pass list", file: file, line: line)
        XCTAssertLessThanOrEqual(block.count - BlockTrailer.size, page.count / 8, file: file, line: line)
        XCTAssertEqual(try decode(block), page, file: file, line: line)
        return block
    }

    /// The decoder has separate paths by stride (4; 16; short strides that are no multiple of 16;
    /// the rest) and by length (whole rows, then a tail): each must undo the encoder exactly.
    func testDeltaDecodeUndoesEncodeAtEveryStrideAndLength() {
        let seed = testSeed("BlockCompressionTests.deltaDecode")
        var rng = SeededRandom(seed: seed)
        let lengths = [0, 1, 15, 16, 17, 31, 32, 33, 100, 255, 256, 257, 1000, 4096, 8191, 8192]
        for stride in 1...300 {
            for n in lengths where stride < n {
                let source = (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
                var buffer = [UInt8](repeating: 0, count: n)
                source.withUnsafeBufferPointer { src in
                    buffer.withUnsafeMutableBufferPointer { cs_delta_encode($0.baseAddress!, src.baseAddress!, n, stride) }
                }
                buffer.withUnsafeMutableBufferPointer { cs_delta_decode($0.baseAddress!, n, stride) }
                if buffer != source {
                    XCTFail("seed \(seed): stride \(stride), \(n) bytes: decode(encode(x)) != x")
                    return
                }
            }
        }
    }

    /// The stride detector's AVX2 form (used where the CPU has it) picks what the portable one
    /// picks: periodic payloads at every stride with noise, runs of one byte, and random bytes.
    func testStrideDetectorFormsAgree() {
        let seed = testSeed("BlockCompressionTests.strideDetector")
        var rng = SeededRandom(seed: seed)
        var found = 0
        for trial in 0..<3000 {
            let n = Int.random(in: 1024...16384, using: &rng)
            let stride = Int.random(in: 1...300, using: &rng)
            let period = (0..<stride).map { _ in UInt8.random(in: 0...255, using: &rng) }
            let noise = [0, 1, 5, 20, 60][trial % 5]
            // Rows of `stride` bytes; in every fourth row one byte counts up, as row ids do.
            var page = (0..<n).map { i in period[i % stride] &+ (i % stride == 0 && (i / stride) % 4 == 0 ? UInt8(truncatingIfNeeded: i / stride) : 0) }
            for _ in 0..<(n * noise / 100) { page[Int.random(in: 0..<n, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
            if trial % 50 == 0 { page = [UInt8](repeating: UInt8(trial & 0xFF), count: n) }
            let fast = Int(cs_detect_stride(page, n)), portable = Int(cs_detect_stride_portable(page, n))
            XCTAssertEqual(fast, portable, "seed \(seed) trial \(trial): n \(n), period \(stride), noise \(noise)%")
            if fast != 0 { found += 1 }
        }
        XCTAssertGreaterThan(found, 1000, "seed \(seed): most periodic payloads get a stride")
    }

    func testPeriodicPayloadTakesTheStrideDeltaFormAndRoundTrips() throws {
        let page = btreeLikePage()
        // One pass already leaves less than 1/16 of the payload.
        let block = try assertFiltered(page, stride: 16, passes: [16])
        // Plain LZ4 of the same page is several times larger.
        var plain = [UInt8](repeating: 0, count: Int(LZ4_compressBound(8192)))
        let plainSize = cs_lz4_compress(page, &plain, 8192, Int32(plain.count))
        XCTAssertGreaterThan(Int(plainSize), 3 * (block.count - BlockTrailer.size))
    }

    func testHeapLikePageRoundTripsThroughTheFilter() throws {
        // One pass leaves the per-tuple steps (TID offset, key), a second at the same stride zeroes
        // them, and a pass at stride 4 zeroes the line pointers' steps.
        try assertFiltered(heapLikePage(), stride: 128, passes: [128, 128, 4])
    }

    func testRandomPayloadsRoundTripAndNeverGrow() throws {
        let seed = testSeed("BlockCompressionTests.random")
        var rng = SeededRandom(seed: seed)
        var seen = Set<UInt8>()
        for round in 0..<300 {
            let n = Int(rng.next() % 9000) + 1
            var p = [UInt8](repeating: 0, count: n)
            switch round % 4 {
            case 0: // noise
                for i in 0..<n { p[i] = UInt8(truncatingIfNeeded: rng.next()) }
            case 1: // a record of random size repeated, one counter field changing, some noise
                let stride = Int(rng.next() % 250) + 4
                var record = [UInt8](repeating: 0, count: stride)
                for i in 0..<stride { record[i] = UInt8(truncatingIfNeeded: rng.next() % 4) }
                for i in 0..<n {
                    let (index, at) = (i / stride, i % stride)
                    p[i] = at == 0 ? UInt8(truncatingIfNeeded: index) : at == 1 ? UInt8(truncatingIfNeeded: index >> 8) : record[at]
                }
                for _ in 0..<(n / 200) { p[Int(rng.next() % UInt64(n))] = UInt8(truncatingIfNeeded: rng.next()) }
            case 2: // text-like
                let words: [[UInt8]] = ["aid", "filler", "    ", "pgbench", "0123", "\n"].map { Array($0.utf8) }
                var i = 0
                while i < n {
                    for b in words[Int(rng.next() % UInt64(words.count))] where i < n { p[i] = b; i += 1 }
                }
            default: // runs of one byte
                var i = 0
                while i < n {
                    let run = Int(rng.next() % 64) + 1, b = UInt8(truncatingIfNeeded: rng.next())
                    for _ in 0..<run where i < n { p[i] = b; i += 1 }
                }
            }
            let block = encode(p)
            seen.insert(compression(of: block))
            XCTAssertLessThanOrEqual(block.count, n + BlockTrailer.size, "seed \(seed) round \(round)")
            XCTAssertEqual(try decode(block), p, "seed \(seed) round \(round): payload of \(n) bytes")
        }
        XCTAssertEqual(seen, [1, 2, 3], "every compression value was written (seed \(seed))")
    }

    /// Replaces the stored payload of a compression-3 block and recomputes the CRC, so that only the
    /// structural checks can catch it.
    private func reseal(_ block: [UInt8], storedPayload: [UInt8]) -> [UInt8] {
        var out = storedPayload
        out += block[(block.count - BlockTrailer.size)..<(block.count - 4)]
        let crc = crc32c(0, out)
        withUnsafeBytes(of: crc.bigEndian) { out += $0 }
        return out
    }

    func testDamagedStrideDeltaBlocksAreCorruption() throws {
        let block = encode(btreeLikePage())
        XCTAssertEqual(compression(of: block), 3)
        let stored = Array(block[0..<(block.count - BlockTrailer.size)])

        var zeroStride = stored
        zeroStride[1] = 0; zeroStride[2] = 0
        XCTAssertThrowsError(try decode(reseal(block, storedPayload: zeroStride))) { error in
            XCTAssertTrue("\(error)".contains("stride 0"), "\(error)")
        }
        var badPassCount = stored
        badPassCount[0] = 5
        XCTAssertThrowsError(try decode(reseal(block, storedPayload: badPassCount))) { error in
            XCTAssertTrue("\(error)".contains("5 passes"), "\(error)")
        }
        XCTAssertThrowsError(try decode(reseal(block, storedPayload: [0x01, 0x00]))) { error in
            XCTAssertTrue("\(error)".contains("shorter than its 3-byte pass list"), "\(error)")
        }
        XCTAssertThrowsError(try decode(reseal(block, storedPayload: Array(stored.dropLast(3))))) { error in
            XCTAssertTrue("\(error)".contains("did not decompress"), "\(error)")
        }
        // A flipped bit anywhere without resealing is a checksum mismatch.
        var flipped = block
        flipped[5] ^= 0x10
        XCTAssertThrowsError(try decode(flipped)) { error in
            XCTAssertTrue("\(error)".contains("checksum"), "\(error)")
        }
    }

    // MARK: - Compression 4: index blocks

    /// An index block payload of `count` entries like a delta layer's: keys in order, several LSNs
    /// per key, runs of entries sharing a data block with consecutive offsets, some large values
    /// alone in their block; with `noise`, random bytes in every field.
    private func indexPayload(_ count: Int, _ rng: inout SeededRandom, noise: Bool) -> [UInt8] {
        var out: [UInt8] = []
        withUnsafeBytes(of: UInt32(count).bigEndian) { out += $0 }
        var block = 128 as UInt64, offset = 0 as UInt32, lsn = 0x0200_0000 as UInt64, blkno = 0 as UInt32
        for _ in 0..<count {
            if noise {
                for _ in 0..<IndexEntry.size { out.append(UInt8(truncatingIfNeeded: rng.next())) }
                continue
            }
            if rng.next() % 3 == 0 { blkno += UInt32(rng.next() % 4) + 1 }
            lsn += rng.next() % 5000 + 1
            let large = rng.next() % 8 == 0
            let length = large ? 8192 : UInt32(rng.next() % 300) + 20
            if large || offset + length > 8192 { block += UInt64(offset) / 3 + 40; offset = 0 }
            let key = Key(field1: 0x00, field2: 1663, field3: 5, field4: 16384, field5: 0, field6: blkno)
            let entry = IndexEntry(key: key, lsn: LSN(lsn), kind: large ? .image : .walRecord, willInit: large,
                                   block: BlockHandle(offset: block, size: 3000), valueOffset: offset, valueLength: length)
            var w = ByteWriter()
            entry.encode(into: &w)
            out += w.bytes
            offset += length
            if large { block += 3000; offset = 0 }
        }
        return out
    }

    private func encodeIndex(_ payload: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        payload.withUnsafeBytes { BlockTrailer.appendIndexBlock($0, compress: true, to: &out) }
        return out
    }

    func testIndexBlocksTakeTheIndexTransformAndRoundTrip() throws {
        let seed = testSeed("BlockCompressionTests.index")
        var rng = SeededRandom(seed: seed)
        var full = 0
        for round in 0..<200 {
            let count = round % 3 == 0 ? 85 : Int(rng.next() % 85) + 1
            let noise = round % 5 == 4
            let payload = indexPayload(count, &rng, noise: noise)
            let block = encodeIndex(payload)
            XCTAssertLessThanOrEqual(block.count, payload.count + BlockTrailer.size, "seed \(seed) round \(round)")
            XCTAssertEqual(try decode(block), payload, "seed \(seed) round \(round): \(count) entries, noise \(noise)")
            if !noise && count == 85 {
                full += 1
                XCTAssertEqual(compression(of: block), BlockTrailer.Compression.lz4IndexTransform.rawValue, "seed \(seed) round \(round)")
                // Far smaller than the stride-delta form the version 2 writer used for index blocks.
                let before = encode(payload)
                XCTAssertLessThan(block.count, before.count, "seed \(seed) round \(round)")
            }
        }
        XCTAssertGreaterThan(full, 30)
    }

    func testDamagedIndexTransformBlocksAreCorruption() throws {
        var rng = SeededRandom(seed: 7)
        let payload = indexPayload(85, &rng, noise: false)
        let block = encodeIndex(payload)
        XCTAssertEqual(compression(of: block), 4)
        let stored = Array(block[0..<(block.count - BlockTrailer.size)])
        XCTAssertThrowsError(try decode(reseal(block, storedPayload: Array(stored.dropLast(3))))) { error in
            XCTAssertTrue("\(error)".contains("did not decompress"), "\(error)")
        }
        // A length that is not 4 + 48 x entries.
        var badLength = block
        badLength[block.count - 8 + 3] &+= 1
        let crc = crc32c(0, Array(badLength[0..<(badLength.count - 4)]))
        withUnsafeBytes(of: crc.bigEndian) { for i in 0..<4 { badLength[badLength.count - 4 + i] = $0[i] } }
        XCTAssertThrowsError(try decode(badLength)) { error in
            XCTAssertTrue("\(error)".contains("not 4 + 48 x entries"), "\(error)")
        }
        // An entry count that disagrees with the length.
        var wrongCount = payload
        wrongCount[3] = 84
        let recount = encodeIndex(wrongCount)
        XCTAssertThrowsError(try decode(recount)) { error in
            XCTAssertTrue("\(error)".contains("entry count"), "\(error)")
        }
    }
}
