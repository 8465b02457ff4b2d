#if canImport(Glibc)
import Glibc
#endif
import LSM
import PostgresWAL

// WAL segment files on disk, for the commands that read a pg_wal directory.

/// The segment files in directory `wal` from the one holding `start` on, in order, checked to be
/// consecutive and of one size (16 MiB unless the files say otherwise).
func walSegmentFiles(in wal: String, from start: LSN) -> (paths: [String], segmentSize: Int) {
    let all = walSegmentFiles(in: wal)
    return walSegmentFiles(all, in: wal, from: start)
}

/// Every segment file in `wal`, sorted, with the segment size and the first file's segment number.
func walSegmentFiles(in wal: String) -> (names: [String], segmentSize: Int, firstSegment: UInt64) {
    guard let d = opendir(wal) else { fail("cannot open WAL directory \(wal): \(String(cString: strerror(errno)))") }
    var names: [String] = []
    while let e = readdir(d) {
        let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
        if name.count == 24, name.allSatisfy(\.isHexDigit) { names.append(name) }
    }
    closedir(d)
    names.sort()
    guard let first = names.first else { fail("no WAL segment files in \(wal)") }
    var st = stat()
    guard stat(wal + "/" + first, &st) == 0 else { fail("cannot stat \(wal)/\(first)") }
    let segmentSize = Int(st.st_size)
    guard segmentSize > 0, segmentSize & (segmentSize - 1) == 0 else { fail("\(wal)/\(first) is \(segmentSize) bytes, not a WAL segment") }
    return (names, segmentSize, segmentNumber(first, segmentSize: segmentSize))
}

func segmentNumber(_ name: String, segmentSize: Int) -> UInt64 {
    let perLogId = UInt64(0x1_0000_0000) / UInt64(segmentSize)
    let chars = Array(name)
    return UInt64(String(chars[8..<16]), radix: 16)! * perLogId + UInt64(String(chars[16..<24]), radix: 16)!
}

private func walSegmentFiles(_ all: (names: [String], segmentSize: Int, firstSegment: UInt64), in wal: String, from start: LSN) -> (paths: [String], segmentSize: Int) {
    let (names, segmentSize) = (all.names, all.segmentSize)
    func segmentNumber(_ name: String) -> UInt64 { Tools.segmentNumber(name, segmentSize: segmentSize) }
    let wanted = start.rawValue / UInt64(segmentSize)
    var paths: [String] = []
    var expected = wanted
    for name in names where segmentNumber(name) >= wanted {
        guard segmentNumber(name) == expected else { fail("WAL segment \(expected) is missing from \(wal) (next is \(name))") }
        paths.append(wal + "/" + name)
        expected += 1
    }
    guard !paths.isEmpty else { fail("\(wal) has no segment holding the start LSN \(start)") }
    return (paths, segmentSize)
}

/// Calls `body` with the bytes of the file at `path` from `offset` on, `chunk` bytes at a time, until
/// the end of the file or until `body` returns false.
func readFile(_ path: String, chunk: Int, from offset: Int = 0, _ body: (UnsafeRawBufferPointer) throws -> Bool) throws {
    let fd = open(path, O_RDONLY)
    guard fd >= 0 else { fail("cannot open \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
    defer { buffer.deallocate() }
    var position = off_t(offset)
    while true {
        let n = pread(fd, buffer.baseAddress, chunk, position)
        guard n >= 0 else { fail("cannot read \(path): \(String(cString: strerror(errno)))") }
        if n == 0 { return }
        position += off_t(n)
        guard try body(UnsafeRawBufferPointer(rebasing: buffer[0..<n])) else { return }
    }
}

/// Decodes the WAL of `segments` from `start` on a thread of its own and hands the records to the
/// returned pipe (every record that starts before `end`). The caller ingests from the pipe on its own
/// thread, as the daemon's WAL receiver does with the records it decodes.
func decodeSegmentsInBackground(_ segments: (paths: [String], segmentSize: Int), from start: LSN, to end: LSN,
                                chunkBytes: Int) throws -> RecordPipe {
    try RecordPipe.decoding(segmentPaths: segments.paths, segmentSize: segments.segmentSize, from: start, to: end,
                            chunkBytes: chunkBytes)
}
