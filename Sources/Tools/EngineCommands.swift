import ArgumentParser
import LSM

#if canImport(Glibc)
import Glibc
#endif

struct EngineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Drive the storage engine directly (no server): a demonstration and a benchmark.",
        subcommands: [EngineDemo.self, EngineBench.self]
    )
}

/// Redo used by the engine demo and benchmark: a record carries (offset u16, bytes) patched into the
/// page; a will-init record starts from a zero page. Deterministic, so results can be checked.
struct PatchRedo: Redo {
    func reconstruct(key: Key, lsn: LSN, base: (lsn: LSN, bytes: [UInt8])?, records: [RedoRecord]) throws -> [UInt8] {
        var page = base?.bytes ?? [UInt8](repeating: 0, count: 8192)
        for r in records {
            if r.value.willInit { page = [UInt8](repeating: 0, count: 8192) }
            PatchRedo.apply(r.value.bytes, to: &page)
        }
        return page
    }

    static func apply(_ rec: [UInt8], to page: inout [UInt8]) {
        let off = Int(rec[0]) << 8 | Int(rec[1])
        for (i, b) in rec[2...].enumerated() where off + i < page.count { page[off + i] = b }
    }

    static func record(offset: Int, bytes: [UInt8]) -> [UInt8] { [UInt8(offset >> 8), UInt8(offset & 0xFF)] + bytes }
}

/// xorshift64*, for reproducible data.
struct FastRandom {
    var s: UInt64
    init(seed: UInt64) { s = seed == 0 ? 0x9E37_79B9_7F4A_7C15 : seed }
    mutating func next() -> UInt64 {
        s ^= s >> 12; s ^= s << 25; s ^= s >> 27
        return s &* 0x2545_F491_4F6C_DD1D
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}

/// A page with roughly the compressibility of a heap page: header, zeros in the middle, tuple
/// bytes (random) at the end.
func samplePage(_ rng: inout FastRandom, tupleBytes: Int = 4096) -> [UInt8] {
    var p = [UInt8](repeating: 0, count: 8192)
    for i in stride(from: 8192 - tupleBytes, to: 8192, by: 8) {
        let v = rng.next()
        withUnsafeBytes(of: v) { b in for j in 0..<8 { p[i + j] = b[j] } }
    }
    for i in 0..<24 { p[i] = UInt8(truncatingIfNeeded: rng.next()) }
    return p
}

func nowSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

struct EngineDemo: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo",
        abstract: "Write page versions into a timeline store, flush them to layer files, read them back at several LSNs and check every page.")

    @Option(help: "Directory for the store (created).") var workdir: String
    @Option(help: "Relations to write.") var relations = 3
    @Option(help: "Pages per relation.") var pages = 2000
    @Option(help: "Update rounds (each a batch of WAL-like records, then a checkpoint).") var rounds = 4
    @Option(help: "IO engine: io_uring or pread.") var ioEngine = "io_uring"

    func run() throws {
        guard let kind = IOEngineKind(rawValue: ioEngine) else { fail("unknown io engine \(ioEngine)") }
        let context = StorageContext(io: makeBlockIO(kind))
        var config = StoreConfig()
        config.backgroundFlush = false
        let store = try TimelineStore.open(directory: workdir, config: config, context: context)
        defer { store.close() }
        var rng = FastRandom(seed: 42)
        var lsn: UInt64 = 0x0100_0000
        // Expected page contents per (rel, block) at every checkpoint LSN.
        var current: [[[UInt8]]] = []
        var snapshots: [(LSN, [[[UInt8]]])] = []
        let t0 = nowSeconds()
        for r in 0..<relations {
            var pagesOfRel: [[UInt8]] = []
            for b in 0..<pages {
                let p = samplePage(&rng)
                try store.put(.relationBlock(spc: 1663, db: 5, rel: UInt32(16384 + r), fork: 0, block: UInt32(b)), LSN(lsn), .image(p))
                pagesOfRel.append(p)
            }
            current.append(pagesOfRel)
        }
        store.advance(to: LSN(lsn))
        try store.checkpoint()
        snapshots.append((LSN(lsn), current))
        print("base images: \(relations) relations x \(pages) pages at LSN \(LSN(lsn))")
        for round in 1...rounds {
            for _ in 0..<(relations * pages / 2) {
                lsn += UInt64(64 + rng.below(200))
                let r = rng.below(relations), b = rng.below(pages)
                let off = 24 + rng.below(8000)
                let bytes = (0..<(8 + rng.below(56))).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
                let rec = PatchRedo.record(offset: off, bytes: bytes)
                try store.put(.relationBlock(spc: 1663, db: 5, rel: UInt32(16384 + r), fork: 0, block: UInt32(b)), LSN(lsn), .walRecord(rec))
                PatchRedo.apply(rec, to: &current[r][b])
            }
            store.advance(to: LSN(lsn))
            try store.checkpoint()
            snapshots.append((LSN(lsn), current))
            print("round \(round): \(relations * pages / 2) records, checkpoint at LSN \(LSN(lsn)), disk_consistent_lsn \(store.diskConsistentLSN)")
        }
        let written = nowSeconds() - t0
        let layers = store.layers()
        let bytes = layers.reduce(0) { $0 + $1.fileSize }
        print("\nlayer files: \(layers.count), \(bytes) bytes on disk (written in \(String(format1(written))) s)")
        for l in layers.prefix(8) { print("  \(l.descriptor.fileName)  \(l.fileSize) bytes") }
        if layers.count > 8 { print("  ... \(layers.count - 8) more") }

        // Read everything back at every checkpoint LSN, 32 lookups per batch, and compare.
        let redo = PatchRedo()
        var checked = 0, mismatches = 0
        let t1 = nowSeconds()
        for (at, expected) in snapshots {
            for r in 0..<relations {
                for start in stride(from: 0, to: pages, by: 32) {
                    let blocks = start..<min(pages, start + 32)
                    let reqs = blocks.map { (Key.relationBlock(spc: 1663, db: 5, rel: UInt32(16384 + r), fork: 0, block: UInt32($0)), at) }
                    for (i, res) in store.get(reqs, redo: redo).enumerated() {
                        checked += 1
                        if (try? res.get()) != expected[r][blocks.lowerBound + i] { mismatches += 1 }
                    }
                }
            }
        }
        let readTime = nowSeconds() - t1
        print("read back \(checked) page versions at \(snapshots.count) LSNs in \(format1(readTime)) s: \(mismatches) mismatches")
        if mismatches > 0 { fail("\(mismatches) pages differ from what was written") }
    }
}

func format1(_ x: Double) -> String { String((x * 10).rounded() / 10) }
