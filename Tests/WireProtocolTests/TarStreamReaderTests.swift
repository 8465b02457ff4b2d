import Foundation
import PGTestSupport
import XCTest
@testable import WireProtocol

/// Builds tar archives header by header, for cases system tar does not produce on demand.
struct TarBuilder {
    var bytes: [UInt8] = []

    enum Magic { case posix, gnu, none }

    mutating func header(name: String, prefix: String = "", type: UInt8, size: UInt64, mode: UInt32 = 0o644,
                         linkName: String = "", magic: Magic = .posix, base256Size: Bool = false, mtime: UInt64 = 1_700_000_000) {
        var h = [UInt8](repeating: 0, count: 512)
        func text(_ value: String, _ offset: Int, _ length: Int) {
            let utf8 = Array(value.utf8)
            precondition(utf8.count <= length)
            for (i, b) in utf8.enumerated() { h[offset + i] = b }
        }
        func octal(_ value: UInt64, _ offset: Int, _ length: Int) {
            var digits = String(value, radix: 8)
            digits = String(repeating: "0", count: length - 1 - digits.count) + digits
            text(digits, offset, length - 1)
        }
        text(name, 0, 100)
        octal(UInt64(mode), 100, 8)
        octal(0, 108, 8)
        octal(0, 116, 8)
        if base256Size {
            h[124] = 0x80
            for i in 0..<8 { h[135 - i] = UInt8(truncatingIfNeeded: size >> (8 * UInt64(i))) }
        } else {
            octal(size, 124, 12)
        }
        octal(mtime, 136, 12)
        h[156] = type
        text(linkName, 157, 100)
        switch magic {
        case .posix: text("ustar", 257, 6); text("00", 263, 2)
        case .gnu: text("ustar  ", 257, 8)
        case .none: break
        }
        text(prefix, 345, 155)
        for i in 148..<156 { h[i] = UInt8(ascii: " ") }
        let sum = h.reduce(0) { $0 + UInt64($1) }
        let digits = String(sum, radix: 8)
        text(String(repeating: "0", count: 6 - digits.count) + digits, 148, 6)
        h[154] = 0
        h[155] = UInt8(ascii: " ")
        bytes += h
    }

    mutating func content(_ data: [UInt8]) {
        bytes += data
        bytes += [UInt8](repeating: 0, count: (512 - data.count % 512) % 512)
    }

    mutating func file(_ name: String, _ data: [UInt8], mode: UInt32 = 0o600) {
        header(name: name, type: UInt8(ascii: "0"), size: UInt64(data.count), mode: mode)
        content(data)
    }

    mutating func gnuLongName(_ name: String, type: UInt8 = UInt8(ascii: "L")) {
        let data = Array(name.utf8) + [0]
        header(name: "././@LongLink", type: type, size: UInt64(data.count), magic: .gnu)
        content(data)
    }

    mutating func pax(_ records: [(String, String)]) {
        var data: [UInt8] = []
        for (key, value) in records {
            let body = " \(key)=\(value)\n"
            var length = body.utf8.count + 1
            while String(length).count + body.utf8.count != length { length += 1 }
            data += Array("\(length)\(body)".utf8)
        }
        header(name: "PaxHeader", type: UInt8(ascii: "x"), size: UInt64(data.count))
        content(data)
    }

    mutating func end() { bytes += [UInt8](repeating: 0, count: 1024) }
}

/// What a reader reported, for comparison.
struct ParsedArchive: Equatable {
    var entries: [TarEntry] = []
    var contents: [String: [UInt8]] = [:]
    var sawEnd = false
}

enum FeedMode: CustomStringConvertible {
    case allAtOnce, byteByByte, randomChunks(seed: UInt64)
    var description: String {
        switch self {
        case .allAtOnce: return "all at once"
        case .byteByByte: return "byte by byte"
        case .randomChunks(let seed): return "random chunks (seed \(seed))"
        }
    }
}

func parseTar(_ bytes: [UInt8], mode: FeedMode) throws -> ParsedArchive {
    var reader = TarStreamReader()
    var parsed = ParsedArchive()
    var current: TarEntry?
    var data: [UInt8] = []
    let consumer: (TarEvent) throws -> Void = { event in
        switch event {
        case .entryStart(let entry):
            XCTAssertNil(current, "entry started inside another")
            current = entry
            data = []
        case .data(let piece):
            XCTAssertNotNil(current)
            XCTAssertFalse(piece.isEmpty)
            data += piece
        case .entryEnd(let entry):
            XCTAssertEqual(entry, current)
            XCTAssertEqual(UInt64(data.count), entry.size)
            parsed.entries.append(entry)
            parsed.contents[entry.name] = data
            current = nil
        case .endOfArchive:
            parsed.sawEnd = true
        }
    }
    switch mode {
    case .allAtOnce:
        try reader.feed(bytes, consumer)
    case .byteByByte:
        for byte in bytes { try reader.feed([byte], consumer) }
    case .randomChunks(let seed):
        var generator = SeededRandom(seed: seed)
        var i = 0
        while i < bytes.count {
            let n = min(bytes.count - i, Int.random(in: 1...1500, using: &generator))
            try reader.feed(Array(bytes[i..<(i + n)]), consumer)
            i += n
        }
    }
    try reader.finish()
    XCTAssertEqual(reader.offset, UInt64(bytes.count))
    return parsed
}

final class TarStreamReaderTests: XCTestCase {
    private func modes() -> [FeedMode] { [.allAtOnce, .byteByByte, .randomChunks(seed: testSeed(name))] }

    func testHandBuiltArchiveEveryWayOfFeeding() throws {
        var tar = TarBuilder()
        tar.header(name: "base", type: UInt8(ascii: "5"), size: 0, mode: 0o700)
        tar.file("PG_VERSION", Array("15\n".utf8))
        let big = (0..<20_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        tar.file("base/1/1259", big)
        tar.file("empty", [])
        tar.file("exactly512", [UInt8](repeating: 7, count: 512))
        tar.header(name: "pg_tblspc/16384", type: UInt8(ascii: "2"), size: 0, mode: 0o777, linkName: "/srv/ts")
        // A ustar name split into prefix + name.
        tar.header(name: "file_in_deep_dir", prefix: String(repeating: "d", count: 120), type: UInt8(ascii: "0"), size: 3)
        tar.content([1, 2, 3])
        // A GNU long name (and long link name) for the next entry.
        let longName = String(repeating: "n", count: 150) + "/" + String(repeating: "m", count: 150)
        tar.gnuLongName(longName)
        tar.file("truncated-name", Array("long".utf8))
        tar.gnuLongName(String(repeating: "t", count: 200), type: UInt8(ascii: "K"))
        tar.header(name: "link", type: UInt8(ascii: "2"), size: 0, linkName: "short")
        // A base-256 size (GNU writes these for files of 8 GiB and more).
        tar.header(name: "b256", type: UInt8(ascii: "0"), size: 600, base256Size: true)
        tar.content([UInt8](repeating: 9, count: 600))
        // A pax header overriding the path.
        tar.pax([("path", "pax/" + String(repeating: "p", count: 300)), ("mtime", "1.5")])
        tar.file("ignored-by-pax", [42])
        tar.end()

        for mode in modes() {
            let parsed = try parseTar(tar.bytes, mode: mode)
            XCTAssertTrue(parsed.sawEnd, "\(mode)")
            XCTAssertEqual(parsed.entries.map(\.name), [
                "base", "PG_VERSION", "base/1/1259", "empty", "exactly512", "pg_tblspc/16384",
                String(repeating: "d", count: 120) + "/file_in_deep_dir", longName, "link", "b256",
                "pax/" + String(repeating: "p", count: 300),
            ], "\(mode)")
            XCTAssertEqual(parsed.entries[0].kind, .directory)
            XCTAssertEqual(parsed.entries[0].mode, 0o700)
            XCTAssertEqual(parsed.contents["PG_VERSION"], Array("15\n".utf8))
            XCTAssertEqual(parsed.entries[1].mode, 0o600)
            XCTAssertEqual(parsed.entries[1].modificationTime, 1_700_000_000)
            XCTAssertEqual(parsed.contents["base/1/1259"], big)
            XCTAssertEqual(parsed.contents["empty"], [])
            XCTAssertEqual(parsed.contents["exactly512"]?.count, 512)
            XCTAssertEqual(parsed.entries[5].kind, .symlink)
            XCTAssertEqual(parsed.entries[5].linkName, "/srv/ts")
            XCTAssertEqual(parsed.contents[longName], Array("long".utf8))
            XCTAssertEqual(parsed.entries[8].linkName, String(repeating: "t", count: 200))
            XCTAssertEqual(parsed.contents["b256"], [UInt8](repeating: 9, count: 600))
            XCTAssertEqual(parsed.contents["pax/" + String(repeating: "p", count: 300)], [42])
        }
    }

    /// Archives written by GNU tar in its three formats, from a directory with long paths, a symlink,
    /// an empty file and a file that is not a multiple of 512 bytes.
    func testArchivesFromSystemTar() throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/tar") || FileManager.default.isExecutableFile(atPath: "/bin/tar") else {
            throw XCTSkip("tar is not installed")
        }
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("tartest-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: root) }
        let src = root.appendingPathComponent("src")
        let deep = String(repeating: "a", count: 70) + "/" + String(repeating: "b", count: 70)
        let veryDeep = deep + "/" + String(repeating: "c", count: 90) + "/" + String(repeating: "d", count: 90)
        try FileManager.default.createDirectory(at: src.appendingPathComponent(veryDeep), withIntermediateDirectories: true)
        var generator = SeededRandom(seed: 42)
        let files: [String: [UInt8]] = [
            "PG_VERSION": Array("15\n".utf8),
            "global/pg_control": (0..<8192).map { _ in UInt8.random(in: 0...255, using: &generator) },
            "empty": [],
            deep + "/f.dat": (0..<100_001).map { _ in UInt8.random(in: 0...255, using: &generator) },
            veryDeep + "/g.dat": Array("deep".utf8),
        ]
        for (path, data) in files {
            let url = src.appendingPathComponent(path)
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            try Data(data).write(to: url)
        }
        try FileManager.default.createSymbolicLink(atPath: src.appendingPathComponent("link").path, withDestinationPath: "PG_VERSION")

        for format in ["gnu", "pax", "ustar"] {
            let archive = root.appendingPathComponent("\(format).tar")
            let status = try TestPrimary.shell("cd '\(src.path)' && tar --format=\(format) -cf '\(archive.path)' .", check: false).status
            if format == "ustar" {
                // ustar cannot hold names over 255 bytes: tar skips them with an error.
                XCTAssertTrue(FileManager.default.fileExists(atPath: archive.path))
            } else {
                XCTAssertEqual(status, 0, "tar --format=\(format)")
            }
            let bytes = [UInt8](try Data(contentsOf: archive))
            for mode in modes() {
                let parsed = try parseTar(bytes, mode: mode)
                XCTAssertTrue(parsed.sawEnd)
                for (path, data) in files where format != "ustar" || ("./" + path).utf8.count <= 255 {
                    XCTAssertEqual(parsed.contents["./" + path], data, "\(format) \(mode): \(path)")
                }
                let link = parsed.entries.first { $0.name == "./link" }
                XCTAssertEqual(link?.kind, .symlink, "\(format)")
                XCTAssertEqual(link?.linkName, "PG_VERSION")
                XCTAssertTrue(parsed.entries.contains { $0.name.hasPrefix("./" + String(repeating: "a", count: 70)) && $0.kind == .directory }, "\(format)")
            }
        }
    }

    func testStreamWithoutEndMarkerFinishesAtAnEntryBoundary() throws {
        var tar = TarBuilder()
        tar.file("a", [1, 2, 3])
        let parsed = try parseTar(tar.bytes, mode: .byteByByte)
        XCTAssertFalse(parsed.sawEnd)
        XCTAssertEqual(parsed.contents["a"], [1, 2, 3])
    }

    func testTruncationIsReported() throws {
        var tar = TarBuilder()
        tar.file("a", [UInt8](repeating: 1, count: 1000))
        for cut in [100, 600, 1200] {
            var reader = TarStreamReader()
            try reader.feed(Array(tar.bytes[..<cut])) { _ in }
            XCTAssertThrowsError(try reader.finish(), "cut at \(cut)") { error in
                XCTAssertEqual((error as? PGError)?.code, .corruption)
            }
        }
    }

    func testCorruptHeadersAreReported() throws {
        var tar = TarBuilder()
        tar.file("PG_VERSION", Array("15\n".utf8))
        tar.end()
        // A flipped bit anywhere in the header breaks its checksum.
        for offset in [0, 50, 124, 150, 156, 300, 511] {
            var bytes = tar.bytes
            bytes[offset] ^= 0x04
            var reader = TarStreamReader()
            XCTAssertThrowsError(try reader.feed(bytes) { _ in }, "offset \(offset)") { error in
                XCTAssertEqual((error as? PGError)?.code, .corruption)
                XCTAssertTrue("\(error)".contains("malformed tar stream at byte 0"), "\(error)")
            }
        }
        // A non-octal size with a valid checksum.
        var bad = TarBuilder()
        bad.header(name: "x", type: UInt8(ascii: "0"), size: 0)
        bad.bytes[124] = UInt8(ascii: "9")
        for i in 148..<156 { bad.bytes[i] = UInt8(ascii: " ") }
        let sum = bad.bytes[0..<512].reduce(0) { $0 + UInt64($1) }
        let digits = Array(String(sum, radix: 8).utf8)
        for i in 0..<6 { bad.bytes[148 + i] = i < 6 - digits.count ? UInt8(ascii: "0") : digits[i - (6 - digits.count)] }
        bad.bytes[154] = 0
        var reader = TarStreamReader()
        XCTAssertThrowsError(try reader.feed(bad.bytes) { _ in }) { error in
            XCTAssertTrue("\(error)".contains("invalid octal size"), "\(error)")
        }
    }

    func testBytesAfterTheEndMarkerAreIgnored() throws {
        var tar = TarBuilder()
        tar.file("a", [1])
        tar.end()
        let padded = tar.bytes + [UInt8](repeating: 0, count: 8192)
        let parsed = try parseTar(padded, mode: .allAtOnce)
        XCTAssertTrue(parsed.sawEnd)
        XCTAssertEqual(parsed.entries.count, 1)
    }
}
