import Foundation
@testable import LSM
import Synchronization
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The two IO engines give identical answers.
///
/// - Through the store: one store directory (many keys, versions and layers) opened with io_uring,
///   pread, and io_uring and pread with O_DIRECT, small caches so that reads reach the disk; the same
///   seeded lookups (batches of 1 and of 64) must give identical results, equal to the model's.
/// - Through `BlockIO` directly: several hundred `ReadOp`s (more than the ring's depth) over a file of
///   known bytes, including reads past the end of the file (short or empty results), empty reads, and
///   reads on bad descriptors (negative errno), each checked against the expected result and bytes,
///   and the bytes past a short result left untouched; io_uring with and without the ring flags
///   SINGLE_ISSUER and DEFER_TASKRUN (`CS_URING_DEFER_TASKRUN`).
/// - Concurrency: four threads sharing one small ring, each with its own batches, all checked.
final class IOEngineTests: XCTestCase {
    // MARK: - Through the store

    func testStoreLookupsAgreeAcrossEngines() throws {
        let seed = testSeed("IOEngineTests.store")
        var rng = SeededRandom(seed: seed)
        let dir = makeTempDir("ioengine-store")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        config.dataBlockBytes = 1024

        // Four relations, blocks in two segments each (two chunks per relation), and a metadata key.
        var keys: [Key] = []
        for rel in UInt32(16384)..<16388 {
            for b in 0..<30 { keys.append(relKey(rel: rel, block: UInt32(b * 5))) }
            for b in 0..<10 { keys.append(relKey(rel: rel, block: ChunkId.blocksPerSegment + UInt32(b))) }
        }
        keys.append(Key(field1: 3, field2: 0, field3: 0, field4: 0, field5: 0, field6: 1))
        var model = Model()
        var lsn: UInt64 = 0x1000
        let writer = try TimelineStore.open(directory: dir, config: config, context: StorageContext(io: PreadEngine()))
        writer.advance(to: LSN(lsn))
        func bytes(_ n: Int) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        for _ in 0..<8 {
            for _ in 0..<300 {
                lsn += UInt64.random(in: 1...20, using: &rng)
                let k = keys.randomElement(using: &rng)!
                let r = Int.random(in: 0..<10, using: &rng)
                let v: Value
                if model.values[k] == nil || r < 2 { v = .image(pageImage(&rng, size: Int.random(in: 1...3, using: &rng) == 1 ? 8192 : Int.random(in: 16...900, using: &rng))) }
                else if r < 3 { v = .walRecord(bytes(Int.random(in: 1...64, using: &rng)), willInit: true) }
                else if r < 6 { v = .engineRecord(bytes(Int.random(in: 1...64, using: &rng))) }
                else { v = .walRecord(bytes(Int.random(in: 1...64, using: &rng))) }
                try writer.put(k, LSN(lsn), v)
                model.put(k, LSN(lsn), v)
            }
            try writer.checkpoint()
        }
        writer.close()
        XCTAssertGreaterThanOrEqual(writer.layers().count, 40)

        let uring = makeBlockIO(.ioUring)
        XCTAssertEqual(uring.kind, .ioUring, "io_uring is not available here (makeBlockIO fell back to pread): nothing to compare")
        let pread = makeBlockIO(.pread)
        let engines: [(String, StorageContext)] = [
            ("io_uring", StorageContext(io: uring, dataCacheBytes: 64 << 10, indexCacheBytes: 32 << 10)),
            ("pread", StorageContext(io: pread, dataCacheBytes: 64 << 10, indexCacheBytes: 32 << 10)),
            ("io_uring+O_DIRECT", StorageContext(io: uring, dataCacheBytes: 64 << 10, indexCacheBytes: 32 << 10, directIO: true)),
            ("pread+O_DIRECT", StorageContext(io: pread, dataCacheBytes: 64 << 10, indexCacheBytes: 32 << 10, directIO: true)),
        ]
        let stores = try engines.map { try TimelineStore.open(directory: dir, config: config, context: $0.1) }
        defer { for s in stores { s.close() } }
        let redo = AppendRedo()
        func describe(_ r: Result<[UInt8]?, StorageError>) -> String {
            switch r {
            case .success(nil): return "nil"
            case .success(let b?): return "\(b.count) bytes, crc32c \(crc32c(0, b))"
            case .failure(let e): return "error \(e)"
            }
        }
        var mismatches = 0
        var lookups = 0
        for round in 0..<120 {
            let n = round % 4 == 3 ? 64 : 1
            var reqs: [(Key, LSN)] = []
            for _ in 0..<n {
                let at: LSN = Int.random(in: 0..<5, using: &rng) == 0 ? LSN(lsn) : LSN(UInt64.random(in: 0xF00...lsn, using: &rng))
                reqs.append((keys.randomElement(using: &rng)!, at))
            }
            let results = stores.map { $0.get(reqs, redo: redo) }
            for (i, (k, at)) in reqs.enumerated() {
                lookups += 1
                let want = model.get(k, at: at)
                let answers = results.map { describe($0[i]) }
                let values = results.map { try? $0[i].get() }
                if Set(answers).count != 1 || values[0] != want {
                    mismatches += 1
                    if mismatches <= 5 {
                        XCTFail("seed \(seed) round \(round): key \(k) at \(at): " +
                                zip(engines, answers).map { "\($0.0.0): \($0.1)" }.joined(separator: "; ") +
                                "; model: \(describe(.success(want)))")
                    }
                }
            }
        }
        XCTAssertEqual(mismatches, 0, "seed \(seed): lookups where the engines or the model disagree, of \(lookups)")
        // The small caches made the engines read: both kinds of engine did real work.
        for (name, ctx) in engines { XCTAssertGreaterThan(ctx.dataCache.missCount, 100, "\(name): too few data block reads") }
    }

    // MARK: - Through BlockIO

    /// A file of `size` seeded random bytes.
    private func makeFile(_ rng: inout SeededRandom, size: Int) -> (dir: String, path: String, bytes: [UInt8]) {
        let dir = makeTempDir("ioengine-ops")
        let path = dir + "/data"
        let bytes = (0..<size).map { _ in UInt8.random(in: 0...255, using: &rng) }
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(bytes)))
        return (dir, path, bytes)
    }

    fileprivate struct OpSpec {
        var fd: Int32
        var offset: UInt64
        var length: Int
        var expected: Int32
        var label: String
    }

    /// Runs `specs` through `engine` in batches of the given sizes and checks every result and every
    /// destination byte (the file's bytes up to the result, the sentinel after it). Returns failures.
    fileprivate static func runOps(_ engine: any BlockIO, _ specs: [OpSpec], batchSizes: [Int], file: [UInt8]) -> [String] {
        var failures: [String] = []
        let sentinel: UInt8 = 0xA5
        let sentinels = [UInt8](repeating: sentinel, count: specs.map(\.length).max() ?? 0)
        var start = 0
        var b = 0
        while start < specs.count {
            let n = min(batchSizes[b % batchSizes.count], specs.count - start)
            b += 1
            let batch = Array(specs[start..<start + n])
            start += n
            let total = batch.reduce(0) { $0 + $1.length } + 1
            let arena = UnsafeMutableRawPointer.allocate(byteCount: total, alignment: 64)
            defer { arena.deallocate() }
            arena.initializeMemory(as: UInt8.self, repeating: sentinel, count: total)
            var ops: [ReadOp] = []
            var at = 0
            for s in batch {
                ops.append(ReadOp(fd: s.fd, offset: s.offset, length: s.length, buffer: arena + at))
                at += s.length
            }
            ops.withUnsafeMutableBufferPointer { engine.read($0) }
            at = 0
            for (i, s) in batch.enumerated() {
                defer { at += s.length }
                let r = ops[i].result
                if r != s.expected {
                    failures.append("\(engine.kind.rawValue): \(s.label) (fd \(s.fd), offset \(s.offset), length \(s.length)): result \(r), expected \(s.expected)")
                    continue
                }
                let dst = arena + at
                let got = max(0, Int(r))
                // memcmp: byte loops are slow in debug builds.
                if got > 0 && file.withUnsafeBytes({ memcmp(dst, $0.baseAddress! + Int(s.offset), got) }) != 0 {
                    failures.append("\(engine.kind.rawValue): \(s.label) (offset \(s.offset), length \(s.length)): wrong bytes")
                }
                if s.length > got && sentinels.withUnsafeBytes({ memcmp(dst + got, $0.baseAddress!, s.length - got) }) != 0 {
                    failures.append("\(engine.kind.rawValue): \(s.label) (offset \(s.offset), length \(s.length)): bytes written past the result \(r)")
                }
            }
            if (arena + total - 1).load(as: UInt8.self) != sentinel { failures.append("\(engine.kind.rawValue): write past the last op's buffer") }
        }
        return failures
    }

    func testReadOpsBothEngines() throws {
        let seed = testSeed("IOEngineTests.readOps")
        var rng = SeededRandom(seed: seed)
        let size = 300_001
        let (dir, path, bytes) = makeFile(&rng, size: size)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        let dirFd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(dirFd, 0)
        defer { close(dirFd) }

        func expect(_ offset: UInt64, _ length: Int) -> Int32 { Int32(max(0, min(length, size - Int(min(offset, UInt64(size)))))) }
        var specs: [OpSpec] = []
        for i in 0..<420 {
            let offset = UInt64.random(in: 0..<UInt64(size), using: &rng)
            let length = Int.random(in: 0..<10, using: &rng) == 0 ? Int.random(in: 1...70_000, using: &rng) : Int.random(in: 1...9000, using: &rng)
            specs.append(OpSpec(fd: fd, offset: offset, length: length, expected: expect(offset, length), label: "random op \(i)"))
        }
        specs += [
            OpSpec(fd: fd, offset: UInt64(size - 100), length: 4096, expected: 100, label: "read across the end of the file (short)"),
            OpSpec(fd: fd, offset: UInt64(size - 1), length: 1, expected: 1, label: "the last byte"),
            OpSpec(fd: fd, offset: UInt64(size), length: 512, expected: 0, label: "read at the end of the file"),
            OpSpec(fd: fd, offset: UInt64(size) + 123_456, length: 512, expected: 0, label: "read past the end of the file"),
            OpSpec(fd: fd, offset: 0, length: size, expected: Int32(size), label: "the whole file"),
            OpSpec(fd: fd, offset: 4096, length: 0, expected: 0, label: "empty read"),
            OpSpec(fd: -1, offset: 0, length: 64, expected: -EBADF, label: "fd -1"),
            OpSpec(fd: 987_654, offset: 0, length: 64, expected: -EBADF, label: "fd not open"),
            OpSpec(fd: dirFd, offset: 0, length: 64, expected: -EISDIR, label: "a directory"),
        ]
        specs.shuffle(using: &rng)
        XCTAssertGreaterThan(specs.count, 8 * 40)

        let small = try IOUringEngine(entries: 8)
        let engines: [any BlockIO] = [small, PreadEngine(), makeBlockIO(.ioUring)]
        var batchSizes = (0..<20).map { _ in Int.random(in: 1...100, using: &rng) }
        batchSizes.append(specs.count)
        for engine in engines {
            // One batch of everything, then the same ops in batches of random sizes.
            let failures = Self.runOps(engine, specs, batchSizes: [specs.count], file: bytes)
                + Self.runOps(engine, specs, batchSizes: batchSizes, file: bytes)
            for f in failures.prefix(10) { XCTFail("seed \(seed): \(f)") }
            XCTAssertEqual(failures.count, 0, "seed \(seed): \(engine.kind.rawValue)")
        }
        // Rings made with SINGLE_ISSUER and DEFER_TASKRUN (CS_URING_DEFER_TASKRUN=1) read the same.
        setenv("CS_URING_DEFER_TASKRUN", "1", 1)
        defer { unsetenv("CS_URING_DEFER_TASKRUN") }
        for engine in [try IOUringEngine(entries: 8), try IOUringEngine(entries: 256)] {
            let failures = Self.runOps(engine, specs, batchSizes: batchSizes, file: bytes)
            for f in failures.prefix(10) { XCTFail("seed \(seed), DEFER_TASKRUN ring: \(f)") }
            XCTAssertEqual(failures.count, 0, "seed \(seed): DEFER_TASKRUN ring")
        }
    }

    /// Four threads read through one engine with small rings (2, 8 and 32 entries, one ring per
    /// thread); each submits its own batches (1 to 60 ops, so some take several rounds of the ring)
    /// and checks them.
    func testConcurrentReadersOfOneEngine() throws {
        let seed = testSeed("IOEngineTests.concurrent")
        var rng = SeededRandom(seed: seed)
        let size = 200_003
        let (dir, path, bytes) = makeFile(&rng, size: size)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        for entries in [2, 8, 32] {
            let engine = try IOUringEngine(entries: entries)
            final class Failures: Sendable { let list = Mutex<[String]>([]) }
            let failures = Failures()
            let group = DispatchGroup()
            let threads = 4
            for t in 0..<threads {
                let threadSeed = seed &+ UInt64(t) &+ UInt64(entries) << 32
                group.enter()
                Thread {
                    var rng = SeededRandom(seed: threadSeed)
                    var specs: [OpSpec] = []
                    for i in 0..<3000 {
                        let offset = UInt64.random(in: 0..<UInt64(size + 1000), using: &rng)
                        let length = Int.random(in: 0...6000, using: &rng)
                        let expected = Int32(max(0, min(length, size - Int(min(offset, UInt64(size))))))
                        specs.append(OpSpec(fd: fd, offset: offset, length: length, expected: expected, label: "thread \(t) op \(i)"))
                    }
                    // Mostly small batches (the page server's case), some larger than the ring.
                    let batchSizes = (0..<80).map { _ in Int.random(in: 0..<4, using: &rng) == 0 ? Int.random(in: 1...60, using: &rng) : Int.random(in: 1...3, using: &rng) }
                    let f = IOEngineTests.runOps(engine, specs, batchSizes: batchSizes, file: bytes)
                    failures.list.withLock { $0 += f.map { "ring of \(entries): " + $0 } }
                    group.leave()
                }.start()
            }
            if group.wait(timeout: .now() + 60) == .timedOut {
                // Buffers of stuck threads are still in use: leak them and the engine.
                XCTFail("seed \(seed): concurrent readers on a ring of \(entries) did not finish in 60 s (deadlock?)")
                return
            }
            let all = failures.list.withLock { $0 }
            for f in all.prefix(10) { XCTFail("seed \(seed): \(f)") }
            XCTAssertEqual(all.count, 0, "seed \(seed): failures with a ring of \(entries)")
        }
    }

    /// Each reading thread gets its own ring, and a thread's ring goes away with the thread (and the
    /// rest with the engine): 40 short-lived reader threads leave no ring file descriptors behind.
    func testThreadRingsAreReleasedWithTheirThreads() throws {
        var rng = SeededRandom(seed: testSeed("IOEngineTests.threadRings"))
        let (dir, path, bytes) = makeFile(&rng, size: 100_000)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        // Only io_uring ring descriptors count: other parts of the process (Dispatch, XCTest, earlier
        // tests' background work) open and close descriptors of their own at any time.
        func openFds() -> Int {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return -1 }
            return names.filter { name in
                (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + name))?.contains("io_uring") == true
            }.count
        }
        let before = openFds()
        // The reader threads' closures hold the engine until each Thread object is released, which
        // may come after the `do` block ends: the deinit runs when the last of them lets go.
        weak var released: IOUringEngine?
        do {
            let engine = try IOUringEngine(entries: 4)
            released = engine
            for round in 0..<4 {
                let group = DispatchGroup()
                for t in 0..<10 {
                    group.enter()
                    Thread {
                        let specs = [OpSpec(fd: fd, offset: UInt64(t * 100), length: 5000, expected: 5000, label: "thread \(t)")]
                        let failures = IOEngineTests.runOps(engine, specs, batchSizes: [1], file: bytes)
                        XCTAssertEqual(failures, [], "round \(round)")
                        group.leave()
                    }.start()
                }
                XCTAssertEqual(group.wait(timeout: .now() + 30), .success)
            }
            // The threads have exited (or are about to: their destructors run at exit).
            let deadline = Date().addingTimeInterval(5)
            while openFds() > before + 2 && Date() < deadline { usleep(10_000) }
            XCTAssertLessThanOrEqual(openFds(), before + 2, "rings of exited threads are still open")
            // This thread's own ring, if any, goes with the engine.
            let specs = [OpSpec(fd: fd, offset: 0, length: 100, expected: 100, label: "main thread")]
            XCTAssertEqual(IOEngineTests.runOps(engine, specs, batchSizes: [1], file: bytes), [])
            XCTAssertGreaterThan(openFds(), before, "the main thread's ring is not counted: the count is wrong")
        }
        let deadline = Date().addingTimeInterval(10)
        while released != nil && Date() < deadline { usleep(10_000) }
        XCTAssertNil(released, "the engine was not released 10 s after its last reader finished")
        XCTAssertLessThanOrEqual(openFds(), before, "the engine's deinit left a ring open")
    }

}
