// Small helpers of the driver: arguments, WAL segment files, file reading, clocks, JSON, disk usage,
// threads. Written for this package (the main package's tool keeps its own as internal API).
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import LSM

/// A sentence for the user and exit status 2.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data(("rocksbench: " + message + "\n").utf8))
    exit(2)
}

/// `--name value` options of one subcommand; unknown names are refused.
struct Arguments {
    private var values: [String: String] = [:]

    init(_ args: ArraySlice<String>, known: Set<String>) {
        var i = args.startIndex
        while i < args.endIndex {
            let a = args[i]
            guard a.hasPrefix("--"), known.contains(String(a.dropFirst(2))) else {
                fail("unknown argument \(a) (known: \(known.sorted().map { "--" + $0 }.joined(separator: " ")))")
            }
            guard i + 1 < args.endIndex else { fail("\(a) wants a value") }
            values[String(a.dropFirst(2))] = args[i + 1]
            i += 2
        }
    }

    func string(_ name: String) -> String {
        guard let v = values[name] else { fail("--\(name) is required") }
        return v
    }

    func string(_ name: String, default d: String) -> String { values[name] ?? d }

    func int(_ name: String, default d: Int) -> Int {
        guard let v = values[name] else { return d }
        guard let n = Int(v), n >= 0 else { fail("--\(name) \(v) is not a non-negative integer") }
        return n
    }

    func lsn(_ name: String) -> LSN {
        let v = string(name)
        guard let l = LSN(parsing: v) else { fail("--\(name) \(v) is not an LSN (HI/LO)") }
        return l
    }
}

/// The segment files in `wal` from the one holding `start` on, consecutive, and their size.
func walSegmentFiles(in wal: String, from start: LSN) -> (paths: [String], segmentSize: Int) {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: wal) else { fail("cannot list WAL directory \(wal)") }
    let segments = names.filter { $0.count == 24 && $0.allSatisfy(\.isHexDigit) }.sorted()
    guard let first = segments.first else { fail("no WAL segment files in \(wal)") }
    var st = stat()
    guard stat(wal + "/" + first, &st) == 0 else { fail("cannot stat \(wal)/\(first)") }
    let segmentSize = Int(st.st_size)
    guard segmentSize > 0, segmentSize & (segmentSize - 1) == 0 else { fail("\(wal)/\(first) is \(segmentSize) bytes, not a WAL segment") }
    let perLogId = UInt64(0x1_0000_0000) / UInt64(segmentSize)
    func number(_ name: String) -> UInt64 {
        let c = Array(name)
        return UInt64(String(c[8..<16]), radix: 16)! * perLogId + UInt64(String(c[16..<24]), radix: 16)!
    }
    var expected = start.rawValue / UInt64(segmentSize)
    var paths: [String] = []
    for name in segments where number(name) >= expected {
        guard number(name) == expected else { fail("WAL segment \(expected) is missing from \(wal) (next is \(name))") }
        paths.append(wal + "/" + name)
        expected += 1
    }
    guard !paths.isEmpty else { fail("\(wal) has no segment holding the start LSN \(start)") }
    return (paths, segmentSize)
}

/// Calls `body` with the bytes of `path` from `offset` on, `chunk` bytes at a time, until the end or
/// until `body` returns false.
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

/// CPU time of the whole process (user + system, every thread), in seconds.
func processCPUSeconds() -> Double {
    var u = rusage()
    getrusage(RUSAGE_SELF.rawValue, &u)
    return Double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) + Double(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6
}

func nowSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// Prints one JSON object on one line; values are JSON already (numbers, quoted strings).
func emitJSON(_ fields: [(String, String)]) {
    print("{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}")
}

/// Bytes of the regular files under `path` (recursively), and of those whose name ends in `suffix`.
func diskUsage(_ path: String, dataSuffix suffix: String) -> (total: UInt64, data: UInt64) {
    var total: UInt64 = 0, data: UInt64 = 0
    guard let e = FileManager.default.enumerator(atPath: path) else { return (0, 0) }
    while let name = e.nextObject() as? String {
        var st = stat()
        guard lstat(path + "/" + name, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else { continue }
        total += UInt64(st.st_size)
        if name.hasSuffix(suffix) { data += UInt64(st.st_size) }
    }
    return (total, data)
}

/// Asks the kernel to drop its cached pages of every regular file under `path`
/// (`POSIX_FADV_DONTNEED`; the files are clean, so every page goes): a cold read of the store then
/// comes from the device, as after `echo 3 > /proc/sys/vm/drop_caches`, without the privileges.
func dropKernelCache(under path: String) {
    guard let e = FileManager.default.enumerator(atPath: path) else { return }
    while let name = e.nextObject() as? String {
        let fd = open(path + "/" + name, O_RDONLY)
        guard fd >= 0 else { continue }
        var st = stat()
        if fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG {
            _ = fdatasync(fd)
            _ = posix_fadvise(fd, 0, 0, Int32(POSIX_FADV_DONTNEED))
        }
        close(fd)
    }
}

/// Runs `body(i)` for i in 0..<count, each on its own thread, and waits for all.
func runThreads(_ count: Int, _ body: @escaping @Sendable (Int) -> Void) {
    let group = DispatchGroup()
    for i in 0..<count {
        group.enter()
        let t = Thread {
            body(i)
            group.leave()
        }
        t.stackSize = 8 << 20
        t.start()
    }
    group.wait()
}

/// SplitMix64: a small seeded generator, so a run can be replayed from its seed.
struct SeededRandom: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
