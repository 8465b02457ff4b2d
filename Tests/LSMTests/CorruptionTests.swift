import Foundation
@testable import LSM
import XCTest

/// Damage to layer files and manifests must be detected, never returned as data.
///
/// For a delta layer (written by a store's checkpoint: images and records) and an image layer (written
/// with `LayerWriter`), each with several data blocks and several index blocks, one byte is flipped
/// in a copy of the file at several positions of every region (header, each data block, each index
/// block, the index directory, the footer), and:
/// (a) `LayerInspector.inspect` throws `corruption` naming the file and the damaged region's offset;
/// (b) a store opened over the damaged file either refuses to open (header, directory, footer: the
///     structures `open` verifies) with the same error, or answers every lookup exactly as the
///     undamaged file would, except that a lookup that needs the damaged block fails with
///     `corruption` naming the file and the block's offset (the blocks a lookup needs are derived
///     from the undamaged file's index, following the read path);
/// (c) `pagectl layer inspect FILE` exits 1 and names the file and the offset on stderr.
/// Also: truncated layer files and damaged or truncated manifests.
final class CorruptionTests: XCTestCase {
    // MARK: - Fixtures

    /// A directory holding one layer file and a manifest naming it, plus what reads of it must return.
    fileprivate struct Fixture {
        var name: String
        var templateDir: String
        var fileName: String
        var bytes: [UInt8]
        var manifestBytes: [UInt8]
        var descriptor: LayerDescriptor
        /// The undamaged file's entries (global index order) and index blocks.
        var entries: [IndexEntry]
        var indexBlocks: [BlockHandle]
        var dataBlocks: [BlockHandle]
        var footer: LayerFooter
        var lookups: [(Key, LSN)]
        var expected: [[UInt8]?]
    }

    fileprivate enum RegionKind: Equatable {
        case header, data, index(Int), directory, footer
    }

    fileprivate struct Region {
        var kind: RegionKind
        var start: UInt64
        var end: UInt64
        var label: String
    }

    private static func storeConfig() -> StoreConfig {
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 30
        config.dataBlockBytes = 2048
        return config
    }

    private func randomBytes(_ rng: inout SeededRandom, _ n: Int) -> [UInt8] {
        (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// A delta layer written by a store's checkpoint: 150 keys of one chunk (even blocks; the odd ones
    /// are absent), each starting with an image or a will-init record, then 300 more random versions.
    private func makeDeltaFixture(_ rng: inout SeededRandom) throws -> Fixture {
        let dir = makeTempDir("corrupt-delta")
        let store = try TimelineStore.open(directory: dir, config: Self.storeConfig(), context: StorageContext(io: PreadEngine()))
        var model = Model()
        var lsn: UInt64 = 0x1000
        let keys = (0..<150).map { relKey(rel: 16384, block: UInt32($0 * 2)) }
        store.advance(to: LSN(lsn))
        for k in keys {
            lsn += UInt64.random(in: 1...16, using: &rng)
            let v: Value = Bool.random(using: &rng)
                ? .image(pageImage(&rng, size: Int.random(in: 64...600, using: &rng)))
                : .walRecord(randomBytes(&rng, Int.random(in: 4...60, using: &rng)), willInit: true)
            try store.put(k, LSN(lsn), v)
            model.put(k, LSN(lsn), v)
        }
        for _ in 0..<300 {
            lsn += UInt64.random(in: 1...16, using: &rng)
            let k = keys.randomElement(using: &rng)!
            let r = Int.random(in: 0..<100, using: &rng)
            let v: Value
            if r < 20 { v = .image(pageImage(&rng, size: Int.random(in: 64...600, using: &rng))) }
            else if r < 30 { v = .walRecord(randomBytes(&rng, Int.random(in: 4...60, using: &rng)), willInit: true) }
            else if r < 65 { v = .walRecord(randomBytes(&rng, Int.random(in: 4...60, using: &rng))) }
            else { v = .engineRecord(randomBytes(&rng, Int.random(in: 4...60, using: &rng))) }
            try store.put(k, LSN(lsn), v)
            model.put(k, LSN(lsn), v)
        }
        store.advance(to: LSN(lsn + 7))
        let end = try store.checkpoint()
        store.close()
        let layers = store.layers()
        XCTAssertEqual(layers.count, 1)
        let d = layers[0].descriptor
        XCTAssertEqual(d.kind, .delta)

        // Lookups: every entry at its own LSN (so every data and index block is needed by some lookup),
        // every key (present and absent) at the end and at a random LSN, and below the layer.
        var lookups: [(Key, LSN)] = []
        let inspection = try LayerInspector.inspect(path: dir + "/" + d.fileName)
        for e in inspection.entries { lookups.append((e.key, e.lsn)) }
        let allKeys = keys + (0..<20).map { relKey(rel: 16384, block: UInt32($0 * 2 + 1)) } + [relKey(rel: 16384, block: 100_000)]
        for k in allKeys {
            lookups.append((k, end))
            lookups.append((k, LSN(UInt64.random(in: 0x1000...end.rawValue, using: &rng))))
        }
        lookups.append((keys[0], LSN(0x10)))
        return try finishFixture(name: "delta", dir: dir, descriptor: d, lookups: lookups,
                                 expected: lookups.map { model.get($0.0, at: $0.1) })
    }

    /// An image layer written with LayerWriter at LSN 0x5000: 240 keys (even blocks), values of
    /// 100-500 bytes, with a manifest written by hand.
    private func makeImageFixture(_ rng: inout SeededRandom) throws -> Fixture {
        let dir = makeTempDir("corrupt-image")
        let x = LSN(0x5000)
        let chunk = ChunkId(containing: relKey(rel: 16390, block: 0))
        let d = LayerDescriptor.image(chunk, at: x)
        let w = try LayerWriter(directory: dir, descriptor: d, dataBlockBytes: 3000, compress: true)
        var images: [Key: [UInt8]] = [:]
        for b in stride(from: UInt32(0), to: 480, by: 2) {
            let k = relKey(rel: 16390, block: b)
            let bytes = pageImage(&rng, size: Int.random(in: 100...500, using: &rng))
            images[k] = bytes
            try w.add(k, x, .image(bytes))
        }
        let size = try w.finish()
        let manifest = Manifest(generation: 1, diskConsistentLSN: x, layers: [.init(layer: d, fileSize: size)])
        XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/" + Manifest.fileName, contents: Data(manifest.encode())))

        var lookups: [(Key, LSN)] = []
        for b in UInt32(0)...481 {
            let k = relKey(rel: 16390, block: b)
            lookups.append((k, x))
            if b % 7 == 0 { lookups.append((k, LSN(x.rawValue + 1000))) }
            if b % 31 == 0 { lookups.append((k, LSN(x.rawValue - 1))) }
        }
        lookups.append((relKey(rel: 16390, block: 5000), x))
        return try finishFixture(name: "image", dir: dir, descriptor: d, lookups: lookups,
                                 expected: lookups.map { $0.1 >= x ? images[$0.0] : nil })
    }

    private func finishFixture(name: String, dir: String, descriptor d: LayerDescriptor, lookups: [(Key, LSN)],
                               expected: [[UInt8]?]) throws -> Fixture {
        let path = dir + "/" + d.fileName
        let inspection = try LayerInspector.inspect(path: path)
        let file = try LayerFile(path: path)
        let dataBlocks = Array(Set(inspection.entries.map(\.block))).sorted { $0.offset < $1.offset }
        let fixture = Fixture(name: name, templateDir: dir, fileName: d.fileName, bytes: try readBytes(path),
                              manifestBytes: try readBytes(dir + "/" + Manifest.fileName), descriptor: d,
                              entries: inspection.entries, indexBlocks: file.directory.lines.map(\.handle),
                              dataBlocks: dataBlocks, footer: inspection.footer, lookups: lookups, expected: expected)
        XCTAssertGreaterThan(inspection.entries.count, LayerFormat.indexEntriesPerBlock)
        XCTAssertGreaterThanOrEqual(fixture.indexBlocks.count, 2, "\(name): want at least 2 index blocks")
        XCTAssertGreaterThanOrEqual(fixture.dataBlocks.count, 4, "\(name): want several data blocks")
        XCTAssertEqual(fixture.dataBlocks.count, inspection.dataBlocks)
        return fixture
    }

    private func readBytes(_ path: String) throws -> [UInt8] {
        guard let d = FileManager.default.contents(atPath: path) else { throw StorageError(.notFound, "cannot read", file: path) }
        return [UInt8](d)
    }

    private func regions(_ f: Fixture) -> [Region] {
        let size = UInt64(f.bytes.count)
        var out = [Region(kind: .header, start: 0, end: UInt64(LayerHeader.size), label: "header")]
        for (i, h) in f.dataBlocks.enumerated() { out.append(Region(kind: .data, start: h.offset, end: h.end, label: "data block \(i)")) }
        for (i, h) in f.indexBlocks.enumerated() { out.append(Region(kind: .index(i), start: h.offset, end: h.end, label: "index block \(i)")) }
        out.append(Region(kind: .directory, start: f.footer.directory.offset, end: f.footer.directory.end, label: "index directory"))
        out.append(Region(kind: .footer, start: size - UInt64(LayerFooter.size), end: size, label: "footer"))
        // The regions tile the file.
        var at: UInt64 = 0
        for r in out.sorted(by: { $0.start < $1.start }) {
            XCTAssertEqual(r.start, at, "\(f.name): \(r.label) does not start where the previous region ends")
            at = r.end
        }
        XCTAssertEqual(at, size)
        return out
    }

    /// The index blocks (by number) and data blocks (by offset) a single lookup of (key, lsn) reads
    /// from the fixture's layer, following the read path (`LayerMap.plan`) over the undamaged index.
    private func blocksNeeded(_ f: Fixture, _ key: Key, _ lsn: LSN) -> (index: Set<Int>, data: Set<UInt64>) {
        var index = Set<Int>(), data = Set<UInt64>()
        let d = f.descriptor
        guard d.lsnStart <= lsn else { return (index, data) }
        if d.kind == .image {
            guard let first = f.entries.first, let last = f.entries.last, key >= first.key, key <= last.key else { return (index, data) }
        }
        let ceiling = min(lsn, LSN(d.lsnEnd.rawValue - 1))
        // The last entry <= (key, ceiling).
        var lo = 0, hi = f.entries.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let e = f.entries[mid]
            if e.key < key || (e.key == key && e.lsn <= ceiling) { lo = mid + 1 } else { hi = mid }
        }
        var j = lo - 1
        guard j >= 0 else { return (index, data) }
        let perBlock = LayerFormat.indexEntriesPerBlock
        if d.kind == .image {
            index.insert(j / perBlock)
            if f.entries[j].key == key { data.insert(f.entries[j].block.offset) }
            return (index, data)
        }
        while j >= 0 {
            index.insert(j / perBlock)
            let e = f.entries[j]
            if e.key != key { break }
            data.insert(e.block.offset)
            if e.startsChain { break }
            j -= 1
        }
        return (index, data)
    }

    // MARK: - Checks

    private static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    private static var pagectlPath: String { packageRoot.appendingPathComponent(".build/debug/pagectl").path }

    /// Runs `pagectl layer inspect path`; returns its exit status and stderr.
    private func runPagectlInspect(_ path: String) throws -> (status: Int32, stderr: String)? {
        let bin = Self.pagectlPath
        guard FileManager.default.isExecutableFile(atPath: bin) else {
            XCTFail("pagectl binary not found at \(bin): build it first (`swift build --build-tests` builds every product)")
            return nil
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: bin)
        p.arguments = ["layer", "inspect", path]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        let data = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    private func assertCorruption(_ error: Error, file path: String, offset: UInt64?, _ context: String,
                                  line: UInt = #line) {
        guard let e = error as? StorageError else {
            XCTFail("\(context): expected a StorageError, got \(error)", line: line)
            return
        }
        XCTAssertEqual(e.code, .corruption, "\(context): \(e)", line: line)
        XCTAssertEqual(e.file, path, "\(context): \(e)", line: line)
        XCTAssertNotNil(e.offset, "\(context): no offset in \(e)", line: line)
        if let offset { XCTAssertEqual(e.offset, offset, "\(context): \(e)", line: line) }
    }

    /// Makes a case directory: the fixture's manifest and `layerBytes` under the layer's name.
    private func caseDirectory(_ f: Fixture, layerBytes: [UInt8], manifestBytes: [UInt8]? = nil) -> (dir: String, path: String) {
        let dir = makeTempDir("corrupt-case")
        let path = dir + "/" + f.fileName
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(layerBytes)))
        XCTAssertTrue(FileManager.default.createFile(atPath: dir + "/" + Manifest.fileName, contents: Data(manifestBytes ?? f.manifestBytes)))
        return (dir, path)
    }

    /// Flips one byte at `position` of region `r` and runs checks (a), (b), (c).
    private func checkDamage(_ f: Fixture, _ r: Region, position: UInt64, mask: UInt8, io: any BlockIO, seed: UInt64,
                             runPagectl: Bool) throws {
        var bytes = f.bytes
        bytes[Int(position)] ^= mask
        let (dir, path) = caseDirectory(f, layerBytes: bytes)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let context = "seed \(seed) \(f.name) \(r.label) [\(r.start), \(r.end)) byte \(position) ^ \(mask)"

        // (a) The inspector finds it and points at the region.
        do {
            _ = try LayerInspector.inspect(path: path)
            XCTFail("\(context): inspect accepted the damaged file")
        } catch {
            assertCorruption(error, file: path, offset: r.start, context + " (inspect)")
        }

        // (b) The read path: refuses to open, or answers right, or fails with corruption.
        let store: TimelineStore
        do {
            store = try TimelineStore.open(directory: dir, config: Self.storeConfig(), context: StorageContext(io: io))
        } catch {
            switch r.kind {
            case .header, .directory, .footer:
                assertCorruption(error, file: path, offset: r.start, context + " (open)")
            case .data, .index:
                XCTFail("\(context): open failed although it does not read data or index blocks: \(error)")
            }
            if runPagectl { try checkPagectl(path: path, offset: r.start, context) }
            return
        }
        defer { store.close() }
        switch r.kind {
        case .header, .directory, .footer: XCTFail("\(context): store opened a file whose \(r.label) is damaged")
        default: break
        }
        let redo = AppendRedo()
        var failed = 0
        // One lookup per request: every lookup that needs the damaged block, and a sample of the others
        // (the batches below cover every lookup).
        var rng = SeededRandom(seed: seed ^ position)
        for (n, (key, lsn)) in f.lookups.enumerated() {
            let needed = blocksNeeded(f, key, lsn)
            let mustFail: Bool
            switch r.kind {
            case .data: mustFail = needed.data.contains(r.start)
            case .index(let i): mustFail = needed.index.contains(i)
            default: mustFail = false
            }
            if !mustFail && Int.random(in: 0..<f.lookups.count, using: &rng) >= 60 { continue }
            switch store.get([(key, lsn)], redo: redo)[0] {
            case .success(let v):
                XCTAssertFalse(mustFail, "\(context): lookup of \(key) at \(lsn) needs the damaged block but succeeded")
                XCTAssertEqual(v, f.expected[n], "\(context): WRONG BYTES for \(key) at \(lsn)")
            case .failure(let e):
                failed += 1
                XCTAssertTrue(mustFail, "\(context): lookup of \(key) at \(lsn) does not need the damaged block but failed: \(e)")
                assertCorruption(e, file: path, offset: r.start, context + " (lookup \(key) at \(lsn))")
            }
        }
        XCTAssertGreaterThan(failed, 0, "\(context): no lookup noticed the damage")
        // Batches (several lookups per submission): each result right or a corruption error.
        for start in stride(from: 0, to: f.lookups.count, by: 64) {
            let batch = Array(f.lookups[start..<min(start + 64, f.lookups.count)])
            for (i, result) in store.get(batch, redo: redo).enumerated() {
                switch result {
                case .success(let v): XCTAssertEqual(v, f.expected[start + i], "\(context): WRONG BYTES in a batch for \(batch[i].0) at \(batch[i].1)")
                case .failure(let e): assertCorruption(e, file: path, offset: r.start, context + " (batch)")
                }
            }
        }
        if runPagectl { try checkPagectl(path: path, offset: r.start, context) }
    }

    private func checkPagectl(path: String, offset: UInt64?, _ context: String) throws {
        guard let (status, stderr) = try runPagectlInspect(path) else { return }
        XCTAssertEqual(status, 1, "\(context): pagectl layer inspect exit status; stderr: \(stderr)")
        XCTAssertTrue(stderr.contains(path), "\(context): pagectl's stderr does not name the file: \(stderr)")
        if let offset {
            XCTAssertTrue(stderr.contains("offset \(offset)"), "\(context): pagectl's stderr does not name offset \(offset): \(stderr)")
        } else {
            XCTAssertTrue(stderr.contains("offset "), "\(context): pagectl's stderr names no offset: \(stderr)")
        }
    }

    /// Every region, first, last and a random middle byte.
    private func runFlips(_ f: Fixture, seed: UInt64, rng: inout SeededRandom) throws {
        let io = PreadEngine()
        // Baseline: the undamaged copy is accepted and answers every lookup right.
        do {
            let (dir, path) = caseDirectory(f, layerBytes: f.bytes)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            XCTAssertNoThrow(try LayerInspector.inspect(path: path))
            let store = try TimelineStore.open(directory: dir, config: Self.storeConfig(), context: StorageContext(io: io))
            let got = store.get(f.lookups, redo: AppendRedo())
            for (i, r) in got.enumerated() { XCTAssertEqual(try r.get(), f.expected[i], "seed \(seed) \(f.name) baseline: \(f.lookups[i])") }
            store.close()
            if let (status, stderr) = try runPagectlInspect(path) { XCTAssertEqual(status, 0, "pagectl on an undamaged file: \(stderr)") }
        }
        var cases = 0
        var dataBlockNumber = 0
        for r in regions(f) {
            // pagectl for one position per region (a process launch per case is the slow part), and
            // for every fourth data block only.
            var pagectlHere = true
            if r.kind == .data {
                pagectlHere = dataBlockNumber % 4 == 0 || r.start == f.dataBlocks.last?.offset
                dataBlockNumber += 1
            }
            var positions = [r.start, r.end - 1]
            if r.end - r.start > 2 { positions.insert(UInt64.random(in: r.start + 1...r.end - 2, using: &rng), at: 1) }
            for (n, p) in positions.enumerated() {
                let mask = UInt8.random(in: 1...255, using: &rng)
                try checkDamage(f, r, position: p, mask: mask, io: io, seed: seed,
                                runPagectl: pagectlHere && (n == 1 || positions.count == 1))
                cases += 1
            }
        }
        print("CorruptionTests.\(f.name): \(cases) damaged copies checked over \(f.dataBlocks.count) data blocks, \(f.indexBlocks.count) index blocks")
    }

    // MARK: - Tests

    func testDeltaLayerByteFlips() throws {
        let seed = testSeed("CorruptionTests.delta")
        var rng = SeededRandom(seed: seed)
        let f = try makeDeltaFixture(&rng)
        defer { try? FileManager.default.removeItem(atPath: f.templateDir) }
        try runFlips(f, seed: seed, rng: &rng)
    }

    func testImageLayerByteFlips() throws {
        let seed = testSeed("CorruptionTests.image")
        var rng = SeededRandom(seed: seed)
        let f = try makeImageFixture(&rng)
        defer { try? FileManager.default.removeItem(atPath: f.templateDir) }
        try runFlips(f, seed: seed, rng: &rng)
    }

    /// Cutting bytes off the end: the footer is gone or misplaced.
    func testTruncatedLayer() throws {
        let seed = testSeed("CorruptionTests.truncated")
        var rng = SeededRandom(seed: seed)
        for f in [try makeDeltaFixture(&rng), try makeImageFixture(&rng)] {
            defer { try? FileManager.default.removeItem(atPath: f.templateDir) }
            let size = f.bytes.count
            let cuts = [1, 8, 39, 40, 41, Int.random(in: 42..<size / 2, using: &rng), size / 2, size - 168, size - 100, size]
            for cut in cuts {
                let kept = Array(f.bytes.prefix(size - cut))
                let (dir, path) = caseDirectory(f, layerBytes: kept)
                defer { try? FileManager.default.removeItem(atPath: dir) }
                let context = "seed \(seed) \(f.name) cut \(cut) of \(size) bytes"
                // Too short for header + footer: offset 0; otherwise the footer is read at size - 40.
                let expectedOffset: UInt64 = kept.count < LayerHeader.size + LayerFooter.size ? 0 : UInt64(kept.count - LayerFooter.size)
                do {
                    _ = try LayerInspector.inspect(path: path)
                    XCTFail("\(context): inspect accepted a truncated file")
                } catch {
                    assertCorruption(error, file: path, offset: expectedOffset, context + " (inspect)")
                }
                do {
                    let s = try TimelineStore.open(directory: dir, config: Self.storeConfig(), context: StorageContext(io: PreadEngine()))
                    s.close()
                    XCTFail("\(context): store opened a truncated layer file")
                } catch {
                    assertCorruption(error, file: path, offset: nil, context + " (open)")
                }
                if cut == 1 || cut == size / 2 { try checkPagectl(path: path, offset: expectedOffset, context) }
            }
        }
    }

    /// A manifest with a flipped byte, or cut short, is refused, naming the manifest, and nothing in
    /// the directory is deleted on the strength of a damaged manifest.
    func testDamagedManifest() throws {
        let seed = testSeed("CorruptionTests.manifest")
        var rng = SeededRandom(seed: seed)
        let f = try makeDeltaFixture(&rng)
        defer { try? FileManager.default.removeItem(atPath: f.templateDir) }
        let m = f.manifestBytes
        var damaged: [(String, [UInt8])] = []
        for p in [0, 7, 8, 20, m.count / 2, Int.random(in: 0..<m.count, using: &rng), m.count - 5, m.count - 1] {
            var b = m
            let mask = UInt8.random(in: 1...255, using: &rng)
            b[p] ^= mask
            damaged.append(("byte \(p) ^ \(mask)", b))
        }
        for cut in [1, 4, Manifest.entrySize, m.count - 10, m.count] { damaged.append(("cut \(cut)", Array(m.prefix(m.count - cut)))) }
        for (label, bytes) in damaged {
            let (dir, path) = caseDirectory(f, layerBytes: f.bytes, manifestBytes: bytes)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            let manifestPath = dir + "/" + Manifest.fileName
            let context = "seed \(seed) manifest \(label) of \(m.count) bytes"
            do {
                let s = try TimelineStore.open(directory: dir, config: Self.storeConfig(), context: StorageContext(io: PreadEngine()))
                s.close()
                XCTFail("\(context): store opened with a damaged manifest")
            } catch let e as StorageError {
                XCTAssertEqual(e.code, .corruption, "\(context): \(e)")
                XCTAssertEqual(e.file, manifestPath, "\(context): \(e)")
            }
            XCTAssertTrue(FileManager.default.fileExists(atPath: path), "\(context): the layer file was deleted")
        }
    }
}
