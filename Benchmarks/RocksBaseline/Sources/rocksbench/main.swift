// rocksbench: ingest and GetPage@LSN measured the same way against our layer-file store and the seed's
// RocksDB design (issue 8). See scripts/bench_rocksdb.sh for how a run is put together.
import LSM

let usage = """
usage:
  rocksbench ingest  --store ours|rocksdb --base-backup base.tar --wal-dir DIR --start X --end Y --db PATH [--cache-mb N]
  rocksbench getpage --store ours|rocksdb --db PATH --lsn latest|X --requests N --depth D [--batch B] --seed S [--cache-mb N] [--warmup 0|1]
  rocksbench verify  --ours DIR --rocksdb PATH [--lsn latest|X] [--requests N] [--seed S]
  rocksbench images  --db PATH [--cache-mb N]     (ours: image layers at the end LSN, as compaction makes them)
  rocksbench explain --db PATH [--lsn latest|X] [--requests N] [--seed S]   (ours: how random reads would be answered)
  rocksbench gc      --store ours|rocksdb --db PATH [--horizon latest|X] [--cache-mb N]   (compaction + GC keeping reads >= X)
--store defaults to rocksdb; --cache-mb (default 256) is RocksDB's block cache or our data cache.
"""

// The daemon's allocator settings, for both stores alike (RocksDB allocates through the same malloc).
AllocatorTuning.apply()

let argv = CommandLine.arguments
guard argv.count >= 2 else { fail(usage) }
do {
    switch argv[1] {
    case "ingest":
        try ingestCommand(Arguments(argv[2...], known: ["store", "base-backup", "wal-dir", "start", "end", "db", "cache-mb"]))
    case "getpage":
        try getpageCommand(Arguments(argv[2...], known: ["store", "db", "lsn", "requests", "depth", "batch", "seed", "cache-mb", "warmup", "cold-after"]))
    case "images":
        try imagesCommand(Arguments(argv[2...], known: ["db", "cache-mb"]))
    case "gc":
        try gcCommand(Arguments(argv[2...], known: ["store", "db", "horizon", "cache-mb"]))
    case "explain":
        try explainCommand(Arguments(argv[2...], known: ["db", "lsn", "requests", "seed", "cache-mb"]))
    case "verify":
        try verifyCommand(Arguments(argv[2...], known: ["ours", "rocksdb", "lsn", "requests", "seed"]))
    default:
        fail(usage)
    }
} catch {
    fail("\(error)")
}
