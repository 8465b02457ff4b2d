import XCTest
@testable import PostgresWAL

/// pglz decompression: hand-made streams for each item kind and each way a stream can be malformed,
/// then seeded random round trips through an independent compressor written for the test.
final class PGLZTests: XCTestCase {
    private func decompress(_ source: [UInt8], rawSize: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0xEE, count: rawSize)
        let ok = source.withUnsafeBytes { src in out.withUnsafeMutableBytes { PGLZ.decompress(src, into: $0) } }
        return ok ? out : nil
    }

    func testLiteralsOnly() {
        // Control byte 0: eight literals; then a second group with two.
        let src: [UInt8] = [0x00] + Array("abcdefgh".utf8) + [0x00] + Array("ij".utf8)
        XCTAssertEqual(decompress(src, rawSize: 10), Array("abcdefghij".utf8))
    }

    func testBackReferenceAndOverlappingRun() {
        // "abc", then a reference to offset 3 of length 6 (overlapping: repeats "abc" twice), then "d".
        // Control bits, LSB first: lit, lit, lit, ref, lit -> 0b01000 = 0x08.
        let src: [UInt8] = [0x08, 0x61, 0x62, 0x63, 0x03, 0x03, 0x64]
        XCTAssertEqual(decompress(src, rawSize: 10), Array("abcabcabcd".utf8))
    }

    func testLongMatchUsesTheExtraLengthByte() {
        // "x", then offset 1, length 18 + 200 = 218: a run of 219 'x'.
        let src: [UInt8] = [0x02, 0x78, 0x0F, 0x01, 200]
        XCTAssertEqual(decompress(src, rawSize: 219), [UInt8](repeating: 0x78, count: 219))
    }

    func testTwelveBitOffset() {
        // 3000 literal bytes, then a 3-byte copy from offset 3000 (high nibble 0xB, low byte 0xB8).
        var raw: [UInt8] = (0..<3000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 8) }
        var src: [UInt8] = []
        for group in stride(from: 0, to: 3000, by: 8) {
            src.append(0)
            src += raw[group..<min(group + 8, 3000)]
        }
        src += [0x01, 0xB0, 0xB8]
        raw += raw[0..<3]
        XCTAssertEqual(decompress(src, rawSize: 3003), raw)
    }

    func testMalformedStreamsFail() {
        // Offset 0.
        XCTAssertNil(decompress([0x02, 0x61, 0x00, 0x00], rawSize: 4))
        // Offset reaching before the output start.
        XCTAssertNil(decompress([0x02, 0x61, 0x00, 0x02], rawSize: 4))
        // A tag cut after its first byte.
        XCTAssertNil(decompress([0x02, 0x61, 0x00], rawSize: 4))
        // A long tag without its length byte.
        XCTAssertNil(decompress([0x02, 0x61, 0x0F, 0x01], rawSize: 40))
        // Too little output.
        XCTAssertNil(decompress([0x00, 0x61, 0x62], rawSize: 3))
        // Input left over once the output is full.
        XCTAssertNil(decompress([0x00, 0x61, 0x62, 0x63], rawSize: 2))
        // A reference longer than the room left is clipped, not overrun; the stream is then complete.
        XCTAssertEqual(decompress([0x02, 0x61, 0x05, 0x01], rawSize: 4), Array("aaaa".utf8))
    }

    func testRandomRoundTrips() {
        var rng = SeededRandom(seed: testSeed("PGLZTests.testRandomRoundTrips"))
        for round in 0..<300 {
            let size = Int.random(in: 1...8192, using: &rng)
            let raw = compressibleBytes(count: size, rng: &rng)
            let compressed = TestPGLZ.compress(raw)
            XCTAssertEqual(decompress(compressed, rawSize: raw.count), raw, "round \(round), \(size) bytes")
            if compressed.count > 1 {
                // Cutting the stream short must never succeed.
                XCTAssertNil(decompress(Array(compressed.dropLast()), rawSize: raw.count), "round \(round)")
            }
        }
    }
}

/// Bytes with repeats at many distances and lengths (runs, copies of earlier stretches, noise).
func compressibleBytes(count: Int, rng: inout SeededRandom) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(count)
    while out.count < count {
        let n = min(count - out.count, Int.random(in: 1...300, using: &rng))
        switch Int.random(in: 0..<4, using: &rng) {
        case 0: out += [UInt8](repeating: UInt8.random(in: 0...255, using: &rng), count: n)
        case 1 where out.count > 3:
            let from = Int.random(in: max(0, out.count - 5000)..<out.count, using: &rng)
            for i in 0..<n { out.append(out[from + i % (out.count - from)]) }
        default: for _ in 0..<n { out.append(UInt8.random(in: 0...15, using: &rng)) }
        }
    }
    return out
}

/// A pglz compressor written for the tests from the format description (greedy, hash-chained match
/// search), so that the decompressor is checked against an encoder that is not PostgreSQL's.
enum TestPGLZ {
    static func compress(_ input: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        var controlAt = -1
        var bit = 8
        var lastAt: [Int: [Int]] = [:]
        func emit(isReference: Bool, _ bytes: [UInt8]) {
            if bit == 8 {
                controlAt = out.count
                out.append(0)
                bit = 0
            }
            if isReference { out[controlAt] |= 1 << bit }
            bit += 1
            out += bytes
        }
        func key(_ i: Int) -> Int { Int(input[i]) << 16 | Int(input[i + 1]) << 8 | Int(input[i + 2]) }
        var i = 0
        while i < input.count {
            var bestLength = 0, bestOffset = 0
            if i + 3 <= input.count {
                for candidate in (lastAt[key(i)] ?? []).reversed().prefix(32) where i - candidate <= 4095 {
                    var n = 0
                    while n < 273 && i + n < input.count && input[candidate + n] == input[i + n] { n += 1 }
                    if n > bestLength { bestLength = n; bestOffset = i - candidate }
                }
            }
            let step = bestLength >= 3 ? bestLength : 1
            if bestLength >= 3 {
                if bestLength >= 18 {
                    emit(isReference: true, [UInt8(0x0F | (bestOffset >> 8) << 4), UInt8(bestOffset & 0xFF), UInt8(bestLength - 18)])
                } else {
                    emit(isReference: true, [UInt8((bestLength - 3) | (bestOffset >> 8) << 4), UInt8(bestOffset & 0xFF)])
                }
            } else {
                emit(isReference: false, [input[i]])
            }
            for j in i..<(i + step) where j + 3 <= input.count { lastAt[key(j), default: []].append(j) }
            i += step
        }
        return out
    }
}
