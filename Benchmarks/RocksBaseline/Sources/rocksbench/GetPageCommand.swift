// `rocksbench getpage`: GetPage@LSN straight against a store (no network), the same code for both.
//
// The blocks: every relation fork the store lists at the LSN (DbDir -> each database's RelDir -> each
// fork's size key, the metadata our ingest writes and RocksDB stores as more keys), and requests
// uniform over all their blocks, drawn from `--seed` (the same requests for both stores). Warm (the
// default): an untimed warm-up reads every block once first, in an order of its own. Cold
// (`--warmup 0`, run right after the caller dropped the kernel's page cache): no warm-up, so every
// block the requests need comes from the device on its first use (the store was just opened: its own
// caches are empty). Depth D: D threads, each taking the next request from a shared counter and
// reading it synchronously, so D requests are in flight; the clock starts once every thread has made
// its reader (ours: its io_uring ring), so neither store's timing includes thread start-up. With
// `--batch B`, D / B threads each hand B requests at a time to the store's batch read (ours: `TimelineStore.get([(Key, LSN)])`, one io_uring submission for the batch, as the daemon serves
// a pipelined client; RocksDB has no batch form of SeekForPrev, so its reader loops). Every value must
// be an 8 KiB page; one that is not fails the run. Besides the wall time, the run reports the
// process's CPU time (user + system, every thread) over the timed part, per page; with RB_TIMES set it
// also prints the timed part's CLOCK_MONOTONIC bounds to stderr ("timed START END"), for cutting a
// `perf record -k CLOCK_MONOTONIC` profile down to it.
import Glibc
import LSM
import PostgresWAL
import Synchronization

func getpageCommand(_ args: Arguments) throws {
    let kind = storeKind(args)
    let path = args.string("db")
    let requests = args.int("requests", default: 20_000)
    let depth = max(1, args.int("depth", default: 1))
    let seed = UInt64(args.int("seed", default: 1))
    let cacheBytes = args.int("cache-mb", default: 256) << 20
    let lsnText = args.string("lsn", default: "latest")
    let batch = max(1, args.int("batch", default: 1))
    let warmup = args.int("warmup", default: 1) != 0
    let coldAfter = args.int("cold-after", default: 0)
    guard coldAfter == 0 || !warmup else { fail("--cold-after needs --warmup 0") }
    guard depth % batch == 0 else { fail("--depth \(depth) is not a multiple of --batch \(batch)") }

    let store: any ReadStore
    switch kind {
    case .ours: store = try OurStore(directory: path, cacheBytes: cacheBytes, backgroundFlush: false)
    case .rocksdb: store = try RocksBench(path: path, cacheBytes: cacheBytes)
    }
    defer { store.close() }
    let latest = try store.latestLSN()
    let lsn: LSN
    if lsnText == "latest" {
        lsn = latest
    } else {
        guard let l = LSN(parsing: lsnText) else { fail("--lsn \(lsnText) is neither latest nor an LSN (HI/LO)") }
        lsn = l
    }

    let forks = try relationForks(store, at: lsn, path: path)
    var firstBlock: [UInt64] = []
    var total: UInt64 = 0
    for f in forks {
        firstBlock.append(total)
        total += UInt64(f.blocks)
    }
    guard total > 0 else { fail("\(path) has no relation blocks at \(lsn)") }

    func draw(_ count: Int, seed: UInt64) -> [Key] {
        var rng = SeededRandom(seed: seed)
        return (0..<count).map { _ in
            let b = UInt64.random(in: 0..<total, using: &rng)
            // The last fork that starts at or before b.
            var lo = 0, hi = forks.count - 1
            while lo < hi {
                let mid = (lo + hi + 1) / 2
                if firstBlock[mid] <= b { lo = mid } else { hi = mid - 1 }
            }
            return KeySpace.relationBlock(forks[lo].tag, UInt32(b - firstBlock[lo]))
        }
    }

    if warmup {
        // Every block once, in an order of its own: afterwards each store's caches hold what they
        // can of the whole database, as after a compute has been running for a while.
        var rng = SeededRandom(seed: seed ^ 0x5741_524D)
        var all: [Key] = []
        all.reserveCapacity(Int(total))
        for f in forks { for b in 0..<f.blocks { all.append(KeySpace.relationBlock(f.tag, b)) } }
        all.shuffle(using: &rng)
        _ = try run(store, all, lsn: lsn, depth: depth, batch: batch)
    }
    if coldAfter > 0 {
        // A process that has been serving: `coldAfter` reads of other blocks first (the caches,
        // threads' arenas and the runtime's lazily made state are then in use), then the store's
        // data caches and the kernel's cached pages of its files are dropped.
        _ = try run(store, draw(coldAfter, seed: seed ^ 0x434F_4C44), lsn: lsn, depth: depth, batch: batch)
        store.dropCaches()
        dropKernelCache(under: path)
    }
    let (seconds, cpuSeconds, latencies) = try run(store, draw(requests, seed: seed), lsn: lsn, depth: depth, batch: batch)
    let sorted = latencies.sorted()
    func percentile(_ p: Double) -> Double { sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))] * 1e6 }
    emitJSON([("bench", "\"getpage\""), ("store", "\"\(kind.rawValue)\""), ("lsn", "\"\(lsn)\""),
              ("latest_lsn", "\"\(latest)\""), ("at_latest", "\(lsn == latest)"), ("depth", "\(depth)"), ("batch", "\(batch)"),
              ("warm", "\(warmup)"), ("cold_after", "\(coldAfter)"),
              ("requests", "\(requests)"), ("seed", "\(seed)"), ("relation_forks", "\(forks.count)"),
              ("blocks", "\(total)"), ("seconds", "\(seconds)"), ("pages_per_s", "\(Double(requests) / seconds)"),
              ("cpu_us_per_page", "\(cpuSeconds * 1e6 / Double(requests))"),
              ("p50_us", "\(percentile(0.50))"), ("p99_us", "\(percentile(0.99))"), ("cache_mb", "\(cacheBytes >> 20)")] + store.cacheFigures())
}

/// Every relation fork with blocks at `lsn` and its size, from the store's metadata keys. The reader is
/// gone when this returns (RocksStore.close requires that).
private func relationForks(_ store: any ReadStore, at lsn: LSN, path: String) throws -> [(tag: RelTag, blocks: UInt32)] {
    let meta = store.reader()
    guard let dbDirBytes = try meta.get(KeySpace.dbDir, at: lsn) else { fail("\(path) has no database directory at \(lsn)") }
    var forks: [(tag: RelTag, blocks: UInt32)] = []
    for db in try DbDirectory(decoding: dbDirBytes).entries.sorted() {
        guard let relDir = try meta.get(KeySpace.relDir(db), at: lsn) else { continue }
        for e in try RelDirectory(decoding: relDir).entries.sorted() {
            let tag = RelTag(spc: db.spc, db: db.db, rel: e.rel, fork: e.fork)
            let n = try meta.get(KeySpace.relationSize(tag), at: lsn).map { try SizeValue.decode($0) } ?? 0
            if n > 0 { forks.append((tag, n)) }
        }
    }
    return forks
}

/// Reads `keys` at `lsn` with `depth` requests in flight: depth / batch threads, each reading `batch`
/// requests at a time. Returns the wall time and every request's latency (a request of a batch waits
/// for the whole batch, as a pipelining client waits for the server's answer to its batch).
private func run(_ store: any ReadStore, _ keys: [Key], lsn: LSN, depth: Int, batch: Int) throws -> (Double, Double, [Double]) {
    let shared = RunState()
    let threads = depth / batch
    runThreads(threads) { _ in
        // Every thread makes its reader (ours: its io_uring ring) first; the clock starts when the
        // last one is ready, so thread start-up is timed for neither store.
        let reader = store.reader()
        if shared.ready.add(1, ordering: .acquiringAndReleasing).newValue == threads {
            shared.startCPU.store(processCPUSeconds().bitPattern, ordering: .relaxed)
            shared.start.store(nowSeconds().bitPattern, ordering: .releasing)
        }
        while shared.ready.load(ordering: .acquiring) < threads { sched_yield() }
        var mine: [Double] = []
        mine.reserveCapacity(keys.count / threads + batch)
        var failure: String?
        while failure == nil {
            let first = shared.next.add(batch, ordering: .relaxed).oldValue
            guard first < keys.count else { break }
            let mineKeys = Array(keys[first..<min(first + batch, keys.count)])
            let s = nowSeconds()
            for (key, result) in zip(mineKeys, reader.get(mineKeys, at: lsn)) {
                switch result {
                // No value: a block inside the relation's size that was never written (both stores
                // answer alike; the server would send zeros).
                case .success(let page):
                    if let page, page.count != 8192 { failure = "block \(key) at \(lsn): \(page.count) bytes" }
                case .failure(let error):
                    failure = "block \(key) at \(lsn): \(error)"
                }
            }
            let latency = nowSeconds() - s
            for _ in mineKeys { mine.append(latency) }
            // RB_SLOW=<microseconds>: each slower request (or batch) to stderr, for profiling by hand.
            if let slow = getenv("RB_SLOW").flatMap({ Double(String(cString: $0)) }), latency * 1e6 >= slow {
                let at = s - Double(bitPattern: shared.start.load(ordering: .acquiring))
                let line = "slow \(Int(latency * 1e6)) us at +\(Int(at * 1e6)) us: \(mineKeys.count == 1 ? "\(mineKeys[0])" : "\(mineKeys.count) keys")\n"
                _ = line.withCString { write(2, $0, strlen($0)) }
            }
        }
        shared.results.withLock {
            $0.latencies.append(contentsOf: mine)
            if $0.error == nil { $0.error = failure }
        }
    }
    let end = nowSeconds()
    let cpuSeconds = processCPUSeconds() - Double(bitPattern: shared.startCPU.load(ordering: .relaxed))
    let seconds = end - Double(bitPattern: shared.start.load(ordering: .acquiring))
    if getenv("RB_TIMES") != nil {
        let line = "timed \(Double(bitPattern: shared.start.load(ordering: .acquiring))) \(end)\n"; _ = line.withCString { write(2, $0, strlen($0)) }
    }
    let r = shared.results.withLock { $0 }
    if let e = r.error { throw StorageError(.corruption, "GetPage failed: \(e)") }
    return (seconds, cpuSeconds, r.latencies)
}

/// What the threads of one run share.
private final class RunState: Sendable {
    /// The index of the next request to issue.
    let next = Atomic<Int>(0)
    /// Threads with their reader made, and when the last of them was (Double bits): the run's start.
    let ready = Atomic<Int>(0)
    let start = Atomic<UInt64>(0)
    /// The process's CPU time (user + system, every thread) at the start (Double bits).
    let startCPU = Atomic<UInt64>(0)
    /// Every latency (seconds) and the first failure.
    let results = Mutex<(latencies: [Double], error: String?)>(([], nil))
}

/// `rocksbench verify`: the same random blocks read from both stores at one LSN must be byte-identical
/// (both hold the same values and run the same redo), which checks that the baseline stores and reads
/// back exactly what our ingest produced.
func verifyCommand(_ args: Arguments) throws {
    let requests = args.int("requests", default: 2000)
    let seed = UInt64(args.int("seed", default: 1))
    let ours = try OurStore(directory: args.string("ours"), cacheBytes: 64 << 20, backgroundFlush: false)
    defer { ours.close() }
    let rocks = try RocksBench(path: args.string("rocksdb"), cacheBytes: 64 << 20)
    defer { rocks.close() }
    let lsnText = args.string("lsn", default: "latest")
    let lsn: LSN
    if lsnText == "latest" {
        lsn = min(try ours.latestLSN(), try rocks.latestLSN())
    } else {
        guard let l = LSN(parsing: lsnText) else { fail("--lsn \(lsnText) is neither latest nor an LSN (HI/LO)") }
        lsn = l
    }
    let forks = try relationForks(ours, at: lsn, path: args.string("ours"))
    let rocksForks = try relationForks(rocks, at: lsn, path: args.string("rocksdb"))
    guard forks.map(\.tag) == rocksForks.map(\.tag), forks.map(\.blocks) == rocksForks.map(\.blocks) else {
        fail("the stores list different relations or sizes at \(lsn) (\(forks.count) against \(rocksForks.count) forks)")
    }
    let total = forks.reduce(0) { $0 + Int($1.blocks) }
    var rng = SeededRandom(seed: seed)
    var compared = 0, absent = 0
    try verifyBlocks(ours, rocks, forks: forks, total: total, requests: requests, lsn: lsn, rng: &rng, compared: &compared, absent: &absent)
    emitJSON([("bench", "\"verify\""), ("lsn", "\"\(lsn)\""), ("relation_forks", "\(forks.count)"), ("blocks", "\(total)"),
              ("pages_compared", "\(compared)"), ("pages_absent_in_both", "\(absent)"), ("identical", "true")])
}

/// Compares `requests` random blocks; the readers are gone when this returns.
private func verifyBlocks(_ ours: any ReadStore, _ rocks: any ReadStore, forks: [(tag: RelTag, blocks: UInt32)], total: Int,
                          requests: Int, lsn: LSN, rng: inout SeededRandom, compared: inout Int, absent: inout Int) throws {
    let a = ours.reader(), b = rocks.reader()
    for _ in 0..<requests {
        var n = Int.random(in: 0..<total, using: &rng)
        var i = 0
        while n >= Int(forks[i].blocks) { n -= Int(forks[i].blocks); i += 1 }
        let key = KeySpace.relationBlock(forks[i].tag, UInt32(n))
        let x = try a.get(key, at: lsn), y = try b.get(key, at: lsn)
        guard x == y else {
            fail("block \(key) at \(lsn) differs: ours \(x.map { "\($0.count) bytes" } ?? "absent"), RocksDB \(y.map { "\($0.count) bytes" } ?? "absent")")
        }
        // Read again: a page the first read rebuilt now comes from the materialized cache.
        let again = try a.get(key, at: lsn)
        guard again == y else {
            fail("block \(key) at \(lsn) differs on our second read (materialized cache): \(again.map { "\($0.count) bytes" } ?? "absent")")
        }
        if x == nil { absent += 1 } else { compared += 1 }
    }
}

/// `rocksbench explain`: how our store would answer `--requests` random blocks (drawn as `getpage`
/// draws them), for profiling read amplification: each read's values, newest first, with the layer
/// file each comes from (`TimelineStore.explain`; reads no data blocks).
func explainCommand(_ args: Arguments) throws {
    let path = args.string("db")
    let ours = try OurStore(directory: path, cacheBytes: args.int("cache-mb", default: 256) << 20, backgroundFlush: false)
    defer { ours.close() }
    let lsnText = args.string("lsn", default: "latest")
    let lsn = lsnText == "latest" ? try ours.latestLSN() : (LSN(parsing: lsnText) ?? { fail("--lsn \(lsnText) is neither latest nor an LSN (HI/LO)") }())
    let forks = try relationForks(ours, at: lsn, path: path)
    var rng = SeededRandom(seed: UInt64(args.int("seed", default: 1)))
    let total = forks.reduce(0) { $0 + Int($1.blocks) }
    for _ in 0..<args.int("requests", default: 10) {
        var b = Int.random(in: 0..<total, using: &rng)
        for f in forks {
            if b < Int(f.blocks) {
                print(ours.store.explain(KeySpace.relationBlock(f.tag, UInt32(b)), at: lsn))
                break
            }
            b -= Int(f.blocks)
        }
    }
}
