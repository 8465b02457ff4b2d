import ArgumentParser
import LSM
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

struct EngineBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmark the engine: layer write throughput and random point lookups.",
        subcommands: [EngineBenchWrite.self, EngineBenchRead.self, IngestBenchCommand.self])
}

let benchRel: UInt32 = 16384

func benchKey(_ block: Int) -> Key {
    // Spread over 131072-block segments so that several chunks (and files) are involved.
    .relationBlock(spc: 1663, db: 5, rel: benchRel, fork: 0, block: UInt32(block))
}

func emitJSON(_ fields: [(String, String)]) {
    print("{" + fields.map { "\"\($0.0)\": \($0.1)" }.joined(separator: ", ") + "}")
}

struct EngineBenchWrite: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "write", abstract: "Write N page images into a fresh store and flush them to layer files; report MB/s (including fsync).")

    @Option(help: "Directory for the store (must not exist or be empty).") var dir: String
    @Option(help: "8 KiB pages to write.") var pages = 32768
    @Flag(help: "Print one JSON line.") var json = false

    func run() throws {
        let context = StorageContext(io: makeBlockIO(.pread))
        var config = StoreConfig()
        config.backgroundFlush = false
        config.checkpointDistanceBytes = 1 << 40
        let store = try TimelineStore.open(directory: dir, config: config, context: context)
        defer { store.close() }
        var rng = FastRandom(seed: 7)
        let images = (0..<256).map { _ in samplePage(&rng) }
        let lsn = LSN(0x0100_0000)
        let t0 = nowSeconds()
        for b in 0..<pages { try store.put(benchKey(b), lsn, .image(images[b % images.count])) }
        try store.checkpoint()
        let seconds = nowSeconds() - t0
        let mb = Double(pages) * 8192 / 1e6
        let onDisk = store.layers().reduce(UInt64(0)) { $0 + $1.fileSize }
        if json {
            emitJSON([("bench", "\"layer_write\""), ("pages", "\(pages)"), ("seconds", "\(seconds)"),
                      ("mb_per_s", "\(mb / seconds)"), ("bytes_on_disk", "\(onDisk)")])
        } else {
            print("wrote \(pages) pages (\(format1(mb)) MB) in \(format2(seconds)) s: \(format1(mb / seconds)) MB/s; \(onDisk) bytes on disk")
        }
    }
}

struct EngineBenchRead: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "read", abstract: "Random point lookups (newest value <= LSN) against the store written by `bench write`.")

    @Option(help: "Directory of the store.") var dir: String
    @Option(help: "Pages in the store (as written).") var pages = 32768
    @Option(help: "Lookups outstanding at most (queue depth), split over the threads.") var depth = 1
    @Option(help: "Threads issuing lookups.") var threads = 1
    @Option(help: "Seconds to run.") var duration = 5.0
    @Option(help: "IO engine: io_uring or pread.") var ioEngine = "io_uring"
    @Flag(help: "Cold: O_DIRECT reads and no data block cache (index blocks stay cached).") var cold = false
    @Flag(help: "Print one JSON line.") var json = false

    func run() throws {
        guard let kind = IOEngineKind(rawValue: ioEngine) else { fail("unknown io engine \(ioEngine)") }
        let io = makeBlockIO(kind, queueDepth: max(64, depth * 2))
        let context = StorageContext(io: io, dataCacheBytes: cold ? 0 : 2 << 30, indexCacheBytes: 256 << 20, directIO: cold)
        var config = StoreConfig()
        config.backgroundFlush = false
        let store = try TimelineStore.open(directory: dir, config: config, context: context)
        defer { store.close() }
        let redo = PatchRedo()
        let lsn = LSN.max
        // Warm-up: one pass over every page fills the index cache (and the data cache when warm).
        for start in stride(from: 0, to: pages, by: 64) {
            let reqs = (start..<min(pages, start + 64)).map { (benchKey($0), lsn) }
            for r in store.get(reqs, redo: redo) { guard case .success(.some) = r else { fail("warm-up lookup failed: \(r)") } }
        }
        // `threads` threads each keep batches of `depth / threads` lookups going, so that at most
        // `depth` lookups are outstanding at once.
        let perThread = max(1, depth / threads)
        let results = Mutex<[(ops: Int, latencies: [Double])]>([])
        let t0 = nowSeconds()
        let group = (0..<threads).map { t in
            Worker {
                var rng = FastRandom(seed: 99 &+ UInt64(t))
                var latencies: [Double] = []
                latencies.reserveCapacity(1 << 20)
                var ops = 0
                var now = t0
                var reqs = [(Key, LSN)](repeating: (benchKey(0), lsn), count: perThread)
                while now - t0 < duration {
                    for i in 0..<perThread { reqs[i] = (benchKey(rng.below(pages)), lsn) }
                    let s = nowSeconds()
                    let res = store.get(reqs, redo: redo)
                    now = nowSeconds()
                    for r in res { guard case .success(.some(let p)) = r, p.count == 8192 else { fail("lookup failed: \(r)") } }
                    latencies.append(now - s)
                    ops += perThread
                }
                results.withLock { $0.append((ops, latencies)) }
            }
        }
        group.forEach { $0.start() }
        group.forEach { $0.join() }
        let seconds = nowSeconds() - t0
        let all = results.withLock { $0 }
        let ops = all.reduce(0) { $0 + $1.ops }
        let latencies = all.flatMap(\.latencies).sorted()
        func pct(_ p: Double) -> Double { latencies[min(latencies.count - 1, Int(Double(latencies.count) * p))] * 1e6 }
        let opsPerSec = Double(ops) / seconds
        if json {
            emitJSON([("bench", "\"layer_read\""), ("io_engine", "\"\(io.kind.rawValue)\""), ("cold", "\(cold)"), ("depth", "\(depth)"), ("threads", "\(threads)"),
                      ("ops_per_s", "\(opsPerSec)"), ("batch_p50_us", "\(pct(0.5))"), ("batch_p99_us", "\(pct(0.99))"),
                      ("seconds", "\(seconds)")])
        } else {
            print("\(cold ? "cold" : "warm") \(io.kind.rawValue) depth \(depth) threads \(threads): \(Int(opsPerSec)) lookups/s, batch latency p50 \(format1(pct(0.5))) us, p99 \(format1(pct(0.99))) us")
        }
    }
}

/// A joinable OS thread for benchmark workers.
final class Worker: @unchecked Sendable {
    private let body: () -> Void
    private var tid = pthread_t()

    init(_ body: @escaping () -> Void) { self.body = body }

    func start() {
        let box = Unmanaged.passRetained(self)
        pthread_create(&tid, nil, { arg in
            let w = Unmanaged<Worker>.fromOpaque(arg!).takeRetainedValue()
            w.body()
            return nil
        }, box.toOpaque())
    }

    func join() { pthread_join(tid, nil) }
}
