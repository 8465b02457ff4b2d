#!/usr/bin/env bash
# Our layer files against the seed's RocksDB design (issue 8): WAL ingest, bytes on disk and
# GetPage@LSN, both stores measured by the same driver (Benchmarks/RocksBaseline's `rocksbench`) on
# the same captured WAL, in one run on this machine.
#
# 1. Capture, once, as scripts/bench_ingest.sh does: a throwaway PostgreSQL 15 primary (wal_level
#    replica, full_page_writes on, wal_compression off) with a physical slot, a tar base backup (start
#    LSN X), `pgbench -i -s SCALE`, `pgbench -c CLIENTS -T SECONDS`, CHECKPOINT, end LSN Y; the WAL
#    segments X..Y are copied and the primary is stopped.
# 2. REPS times, ours then RocksDB:
#    - `rocksbench ingest`: base.tar imported (untimed), then WAL read + decode + store + durable flush
#      timed; MB/s = (Y - X) / seconds; bytes on disk right after the flush. The WAL segments are read
#      once (untimed) right before, so that both stores read their input from the page cache: the
#      cold runs below drop it, and reading 1.5 GB of segments back from the disk (scale 100) added
#      about 3 s to either store's figure, which is not the store's work (a page server receives WAL
#      over the network);
#    - `rocksbench getpage` at the latest LSN and at one random past LSN in (X, Y) (the same for both
#      stores in a repetition), depth 1 and 32, warm (an untimed warm-up that reads every block once),
#      REQUESTS random blocks over every relation fork, reconstructed with PostgresRedo; depth D is D
#      threads reading one request at a time; ours also runs depth 32 as one thread reading batches of
#      32 through the store's batch read (the daemon's path for a pipelining client).
#    - cold: `rocksbench getpage --warmup 0` at the latest LSN, depth 1 and 32 (ours also 32 in
#      batches), COLD_REQUESTS random blocks, each run in a fresh process started right after
#      `sync; echo 3 > /proc/sys/vm/drop_caches` (so the kernel's page cache and the store's own
#      caches are empty; skipped with a note when drop_caches is not writable), COLD_RUNS times
#      each (median per repetition), with the CPU time of the timed part per page besides; and the
#      same in a process that has been serving (`--cold-after COLD_AFTER`: that many reads of other
#      blocks, then the store's data caches and the kernel's cached pages of its files dropped);
#    `sync` runs (untimed) after each ingest so that neither store pays for the other's dirty pages.
#    Then `rocksbench verify` reads 2000 random blocks from both stores at both LSNs: the pages must
#    be byte-identical.
#    - compaction + GC with one horizon H (`rocksbench gc`, on copies of both stores): H = the middle
#      of the WAL, then H = the end LSN; ours makes image layers at H and runs its GC with cutoff H,
#      RocksDB deletes every version older than each key's newest image or will-init record at or
#      below H and compacts its whole key range; bytes on disk after each, and `verify` again at the
#      end LSN and at H.
# 3. Medians of each figure and the median of the per-repetition ratios (ours / RocksDB, or RocksDB /
#    ours for bytes), checked against issue 8's goals: GetPage throughput >= 3x, bytes <= 0.5x,
#    ingest >= 2x. The table goes to stdout and to RESULTS_MD, every figure to RESULTS_JSON.
#
#   BENCH_DIR        work directory (default /tmp/pageserver-bench-rocksdb; removed at the end)
#   REPS             repetitions (default 3)
#   PGBENCH_SCALE    pgbench -i scale (default 20)
#   PGBENCH_SECONDS  duration of the pgbench run (default 20)
#   PGBENCH_CLIENTS  pgbench clients (default 4, over 2 threads)
#   REQUESTS         GetPage requests per measurement (default 20000)
#   COLD_RUNS        fresh-process cold runs per repetition and configuration (default 3; the table
#                    takes their median per repetition)
#   COLD_REQUESTS    GetPage requests per cold measurement (default 2000: few enough that most blocks
#                    are read for the first time)
#   COLD_AFTER       reads before the cold runs in a running process (default 5000; 0: no such runs)
#   CACHE_MB         RocksDB's block cache and our data cache (default 256)
#   BIN              the driver (default Benchmarks/RocksBaseline/.build/release/rocksbench)
#   PG_BIN           PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   RESULTS_JSON     every figure, one JSON object (default .build/bench_rocksdb.json)
#   RESULTS_MD       the table (default .build/bench_rocksdb.md)
#   BENCHMARKS_MD    the file whose table (between <!-- MARKER:begin --> and <!-- MARKER:end -->)
#                    this run replaces (default BENCHMARKS.md; empty: leave it alone)
#   MARKER           the markers' name (default rocksdb; `make bench-rocksdb` also runs scale 50
#                    with MARKER=rocksdb-scale50)
#   KEEP             when 1: keep BENCH_DIR (the capture and the last repetition's two stores, in
#                    db-ours and db-rocksdb) for profiling with `rocksbench getpage` by hand. Note
#                    that db-ours then holds the image layers made at the end LSN (the "with image
#                    layers" rows). For the store as the plain cold rows read it, ingest again:
#                    `rocksbench ingest --store ours --base-backup capture/backup/base.tar --wal-dir
#                    capture/wal --start X --end Y --db DIR` (X, Y: an ingest row's start_lsn, end_lsn)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${BIN:-$root/Benchmarks/RocksBaseline/.build/release/rocksbench}
dir=${BENCH_DIR:-/tmp/pageserver-bench-rocksdb}
reps=${REPS:-3}
scale=${PGBENCH_SCALE:-20}
seconds=${PGBENCH_SECONDS:-20}
clients=${PGBENCH_CLIENTS:-4}
requests=${REQUESTS:-20000}
cold_requests=${COLD_REQUESTS:-2000}
cold_runs_each=${COLD_RUNS:-3}
cold_after=${COLD_AFTER:-5000}
cache_mb=${CACHE_MB:-256}
pgbin=${PG_BIN:-/usr/lib/postgresql/15/bin}
results_json=${RESULTS_JSON:-$root/.build/bench_rocksdb.json}
results_md=${RESULTS_MD:-$root/.build/bench_rocksdb.md}
command="scripts/bench_rocksdb.sh  (REPS=$reps PGBENCH_SCALE=$scale PGBENCH_SECONDS=$seconds PGBENCH_CLIENTS=$clients REQUESTS=$requests CACHE_MB=$cache_mb)"

[ -x "$bin" ] || { echo "bench_rocksdb: $bin not found (build with: make bench-rocksdb, or swift build -c release --package-path Benchmarks/RocksBaseline)" >&2; exit 1; }
[ -x "$pgbin/postgres" ] || { echo "bench_rocksdb: PostgreSQL 15 not found in $pgbin" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench_rocksdb: run as root (the primary runs as user postgres through runuser)" >&2; exit 1; }

primary="$dir/primary"
capture="$dir/capture"
keep=${KEEP:-0}
out="$dir/results.jsonl"
primary_up=0

as_pg() { runuser -u postgres -- "$@"; }

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    for f in "$dir"/pg/*.log; do [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 20 "$f"; } >&2; done
  fi
  if [ "$primary_up" = 1 ]; then as_pg "$pgbin/pg_ctl" -D "$primary" -m fast -w -t 60 stop >/dev/null 2>&1 || true; fi
  if [ "$keep" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
lsn_int() { python3 -c "import sys; hi, lo = sys.argv[1].split('/'); print(int(hi, 16) << 32 | int(lo, 16))" "$1"; }

rm -rf "$dir"
mkdir -p "$dir/pg" "$capture/wal" "$(dirname "$results_json")" "$(dirname "$results_md")"
chown postgres: "$dir/pg"
chmod 755 "$dir"
: > "$out"

# ---- 1. Capture (the steps of scripts/bench_ingest.sh) ----
pport=$(free_port)
psql_p() { "$pgbin/psql" -X -At -h 127.0.0.1 -p "$pport" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

echo "== capture: PostgreSQL 15 primary on 127.0.0.1:$pport, base backup, pgbench -i -s $scale, pgbench -c $clients -T $seconds"
install -d -o postgres -g postgres -m 700 "$primary"
as_pg "$pgbin/initdb" -D "$primary" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >> "$primary/postgresql.conf" <<EOF
# pageserver RocksDB-baseline benchmark
listen_addresses = '127.0.0.1'
port = $pport
unix_socket_directories = '$dir/pg'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
full_page_writes = on
wal_compression = off
EOF
echo "host replication all 127.0.0.1/32 trust" >> "$primary/pg_hba.conf"
as_pg "$pgbin/pg_ctl" -D "$primary" -l "$dir/pg/primary.log" -w -t 60 start >/dev/null
primary_up=1

# The slot keeps every WAL segment from the backup's start on.
psql_p -c "SELECT pg_create_physical_replication_slot('bench_rocksdb', true)" >/dev/null
"$pgbin/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -Ft -X none -c fast -D "$capture/backup" 2> "$dir/pg/basebackup.log"
tar -xOf "$capture/backup/base.tar" backup_label > "$capture/backup_label"
start_lsn=$(sed -n 's/^START WAL LOCATION: \([0-9A-Fa-f]*\/[0-9A-Fa-f]*\) .*/\1/p' "$capture/backup_label")
[ -n "$start_lsn" ] || { echo "bench_rocksdb: no START WAL LOCATION in backup_label" >&2; exit 1; }

"$pgbin/pgbench" -h 127.0.0.1 -p "$pport" -U postgres -i -s "$scale" -q postgres 2>&1 | tail -n 1
"$pgbin/pgbench" -h 127.0.0.1 -p "$pport" -U postgres -c "$clients" -j 2 -T "$seconds" postgres 2>&1 \
  | grep -E '^(number of transactions actually processed|tps)' || true
psql_p -c "CHECKPOINT" >/dev/null
end_lsn=$(psql_p -c "SELECT pg_current_wal_lsn()")
psql_p -c "SELECT pg_switch_wal()" >/dev/null
walsize=$(psql_p -c "SHOW wal_segment_size")
[ "$walsize" = 16MB ] || { echo "bench_rocksdb: wal_segment_size is $walsize, this script assumes 16MB" >&2; exit 1; }
timeline=$(psql_p -c "SELECT timeline_id FROM pg_control_checkpoint()")
x=$(lsn_int "$start_lsn"); y=$(lsn_int "$end_lsn")
seg=$((16 << 20))
for s in $(seq $((x / seg)) $((y / seg))); do
  cp "$primary/pg_wal/$(printf '%08X%08X%08X' "$timeline" $((s / 256)) $((s % 256)))" "$capture/wal/"
done
as_pg "$pgbin/pg_ctl" -D "$primary" -m fast -w -t 60 stop >/dev/null
primary_up=0
rm -rf "$primary"
echo "WAL: $start_lsn .. $end_lsn ($(( (y - x) / 1000000 )) MB)"
echo "{\"bench\": \"capture\", \"start_lsn\": \"$start_lsn\", \"end_lsn\": \"$end_lsn\", \"scale\": $scale, \"pgbench_seconds\": $seconds, \"clients\": $clients}" >> "$out"

# ---- 2. Ours and RocksDB, alternately ----
# The capture's dirty pages are written back before the first ingest, so that its durable flush
# (ours: one syncfs of the file system) does not write them back inside its timed part.
sync
measure() { # store, rep, past LSN
  local store=$1 rep=$2 past=$3
  local db="$dir/db-$store"
  rm -rf "$db"
  cat "$capture"/wal/* > /dev/null  # the input in the page cache (see 2. above)
  "$bin" ingest --store "$store" --base-backup "$capture/backup/base.tar" --wal-dir "$capture/wal" \
    --start "$start_lsn" --end "$end_lsn" --db "$db" --cache-mb "$cache_mb" | sed "s/^{/{\"rep\": $rep, /" | tee -a "$out"
  sync
  for lsn in latest "$past"; do
    # depth:batch. Ours also runs depth 32 as one thread handing batches of 32 to the store's batch
    # read (one io_uring submission per batch), the way the daemon serves a pipelining client.
    local runs="1:1 32:1"
    if [ "$store" = ours ]; then runs="$runs 32:32"; fi
    for run in $runs; do
      local args=(getpage --store "$store" --db "$db" --lsn "$lsn" --requests "$requests" --depth "${run%:*}"
                  --batch "${run#*:}" --seed "$rep" --cache-mb "$cache_mb")
      # A failed read is a bug to chase, not noise: it is reported and counted in the table's notes;
      # the run is retried once so that one failure does not lose the whole benchmark.
      if ! "$bin" "${args[@]}" > "$dir/getpage.json" 2> "$dir/getpage.err"; then
        echo "bench_rocksdb: FAILED: rocksbench ${args[*]}: $(cat "$dir/getpage.err")" >&2
        printf '{"bench": "failure", "rep": %s, "store": "%s", "command": "rocksbench %s", "error": %s}\n' "$rep" "$store" \
          "${args[*]}" "$(python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' < "$dir/getpage.err")" >> "$out"
        "$bin" "${args[@]}" > "$dir/getpage.json"
      fi
      sed "s/^{/{\"rep\": $rep, /" "$dir/getpage.json" | tee -a "$out"
    done
  done
  # Cold: the kernel's page cache dropped right before each run, no warm-up, a fresh process.
  local cold_runs="1:1 32:1"
  if [ "$store" = ours ]; then cold_runs="$cold_runs 32:32"; fi
  # A cold run lasts a tenth of a second, so each is repeated COLD_RUNS times (other blocks each time);
  # the table takes the median of a repetition's runs.
  for run in $cold_runs; do
    for c in $(seq "$cold_runs_each"); do
      sync
      if ! echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
        echo "bench_rocksdb: /proc/sys/vm/drop_caches is not writable: no cold runs" >&2
        break 2
      fi
      "$bin" getpage --store "$store" --db "$db" --lsn latest --requests "$cold_requests" --depth "${run%:*}" \
        --batch "${run#*:}" --seed "$((rep * 100 + c))" --cache-mb "$cache_mb" --warmup 0 \
        | sed "s/^{/{\"rep\": $rep, \"cold_run\": $c, /" | tee -a "$out"
    done
  done
  # Cold in a process that has been serving: COLD_AFTER reads of other blocks first, then the store's
  # data caches and the kernel's cached pages of its files dropped (`--cold-after`), so that neither
  # store's figure includes a new process's first touches of its memory.
  if [ "$cold_after" -gt 0 ]; then
    for run in $cold_runs; do
      for c in $(seq "$cold_runs_each"); do
        sync
        "$bin" getpage --store "$store" --db "$db" --lsn latest --requests "$cold_requests" --depth "${run%:*}" \
          --batch "${run#*:}" --seed "$((rep * 100 + c))" --cache-mb "$cache_mb" --warmup 0 --cold-after "$cold_after" \
          | sed "s/^{/{\"rep\": $rep, \"cold_run\": $c, /" | tee -a "$out"
      done
    done
  fi
  sync
}

echo "== ours and RocksDB, $reps repetitions each"
# The GC horizon of the compaction + GC rows: the middle of the WAL.
mid=$(python3 -c "
import sys
x, y = int(sys.argv[1]), int(sys.argv[2])
m = x + (y - x) // 2
print('%X/%X' % (m >> 32, m & 0xFFFFFFFF))" "$x" "$y")
for r in $(seq "$reps"); do
  # One random past LSN per repetition, the same for both stores, in the middle 80% of the WAL.
  past=$(python3 -c "
import random, sys
x, y, r = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
l = random.Random(r).randint(x + (y - x) // 10, y - (y - x) // 10)
print('%X/%X' % (l >> 32, l & 0xFFFFFFFF))" "$x" "$y" "$r")
  measure ours "$r" "$past"
  measure rocksdb "$r" "$past"
  # Both stores must give byte-identical pages (same values, same redo): the baseline is checked, not
  # trusted.
  for lsn in latest "$past"; do
    "$bin" verify --ours "$dir/db-ours" --rocksdb "$dir/db-rocksdb" --lsn "$lsn" --requests 2000 --seed "$r" \
      | sed "s/^{/{\"rep\": $r, /" | tee -a "$out"
  done
  # Copies for compaction + GC (below), taken before the image layers of the next step.
  rm -rf "$dir/gc-ours" "$dir/gc-rocksdb"
  cp -a "$dir/db-ours" "$dir/gc-ours"
  cp -a "$dir/db-rocksdb" "$dir/gc-rocksdb"
  # Ours as its background compaction leaves it: image layers at the end LSN (the seed's design has no
  # equivalent), then the latest-LSN reads again, and the pages checked against RocksDB once more.
  "$bin" images --db "$dir/db-ours" --cache-mb "$cache_mb" | sed "s/^{/{\"rep\": $r, /" | tee -a "$out"
  for run in 1:1 32:1 32:32; do
    "$bin" getpage --store ours --db "$dir/db-ours" --lsn latest --requests "$requests" --depth "${run%:*}" \
      --batch "${run#*:}" --seed "$r" --cache-mb "$cache_mb" | sed "s/^{/{\"rep\": $r, /; s/\"store\": \"ours\"/\"store\": \"ours-imaged\"/" | tee -a "$out"
  done
  # Cold as well, as the cold runs above (COLD_RUNS fresh processes after dropping the page cache).
  for run in 1:1 32:1 32:32; do
    for c in $(seq "$cold_runs_each"); do
      sync
      echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || break 2
      "$bin" getpage --store ours --db "$dir/db-ours" --lsn latest --requests "$cold_requests" --depth "${run%:*}" \
        --batch "${run#*:}" --seed "$((r * 100 + c))" --cache-mb "$cache_mb" --warmup 0 \
        | sed "s/^{/{\"rep\": $r, \"cold_run\": $c, /; s/\"store\": \"ours\"/\"store\": \"ours-imaged\"/" | tee -a "$out"
    done
  done
  "$bin" verify --ours "$dir/db-ours" --rocksdb "$dir/db-rocksdb" --lsn latest --requests 2000 --seed "$r" \
    | sed "s/^{/{\"rep\": $r, \"after\": \"images\", /" | tee -a "$out"
  # Compaction + GC with one horizon H in both stores (`rocksbench gc`): first H = the middle of the
  # WAL (reads at or above it kept), then H = the end LSN on the same copies; after each, the pages
  # at the end LSN and at H are checked against each other again.
  for horizon in "$mid" latest; do
    for store in ours rocksdb; do
      "$bin" gc --store "$store" --db "$dir/gc-$store" --horizon "$horizon" --cache-mb "$cache_mb" | sed "s/^{/{\"rep\": $r, /" | tee -a "$out"
    done
    for lsn in latest "$horizon"; do
      "$bin" verify --ours "$dir/gc-ours" --rocksdb "$dir/gc-rocksdb" --lsn "$lsn" --requests 2000 --seed "$r" \
        | sed "s/^{/{\"rep\": $r, \"after\": \"gc\", /" | tee -a "$out"
    done
  done
  rm -rf "$dir/gc-ours" "$dir/gc-rocksdb"
  if [ "$keep" != 1 ]; then rm -rf "$dir/db-ours" "$dir/db-rocksdb"; fi
done

# ---- 3. Medians, ratios, goals ----
python3 - "$out" "$results_json" "$results_md" "$command" "${BENCHMARKS_MD-$root/BENCHMARKS.md}" "${MARKER:-rocksdb}" <<'PY'
import json, platform, statistics, subprocess, sys, time
src, out_json, out_md, command, benchmarks_md, marker = sys.argv[1:7]
rows = [json.loads(l) for l in open(src) if l.strip()]
# The COLD_RUNS runs of one repetition and configuration become one row: the median of each figure.
cold = {}
for r in rows:
    if "cold_run" in r:
        cold.setdefault((r["rep"], r["store"], r["depth"], r["batch"], r.get("cold_after", 0)), []).append(r)
rows = [r for r in rows if "cold_run" not in r]
for runs in cold.values():
    merged = dict(runs[0])
    del merged["cold_run"]
    for field in ("pages_per_s", "p50_us", "p99_us", "cpu_us_per_page"):
        if all(field in r for r in runs):
            merged[field] = statistics.median(r[field] for r in runs)
    merged["cold_runs"] = len(runs)
    rows.append(merged)
capture = next(r for r in rows if r["bench"] == "capture")
reps = sorted({r["rep"] for r in rows if "rep" in r})

def pick(store, rep, bench, **match):
    for r in rows:
        if r.get("rep") == rep and r.get("store") == store and r["bench"] == bench and all(r.get(k) == v for k, v in match.items()):
            return r
    raise SystemExit("bench_rocksdb: missing %s %s rep %d %s" % (store, bench, rep, match))

# (label, bench, match, field, unit, comparison, goal): the ratio is ours / RocksDB; ">=" goals are lower
# bounds (throughput), "<=" upper bounds (bytes). Latency rows have no goal; their ratio is RocksDB /
# ours, so that above 1 means ours is faster, as for throughput.
# (label, bench, match for ours, match for RocksDB, field, unit, comparison, goal)
measurements = [("Ingest, WAL MB/s (decode + store + durable flush)", "ingest", {}, {}, "mb_per_s", "MB/s", ">=", 2.0),
                ("Bytes on disk after ingest, MB", "ingest", {}, {}, "bytes_on_disk", "MB", "<=", 0.5)]
for at in (True, False):
    where = "latest LSN" if at else "random past LSN"
    for depth, batch in ((1, 1), (32, 1), (32, 32)):
        mo = {"at_latest": at, "depth": depth, "batch": batch, "warm": True}
        mk = {"at_latest": at, "depth": depth, "batch": 1, "warm": True}
        how = "depth %d" % depth if batch == 1 else "depth 32, ours in batches of 32 on one thread"
        measurements.append(("GetPage %s, %s, pages/s" % (where, how), "getpage", mo, mk, "pages_per_s", "pages/s", ">=", 3.0))
        measurements.append(("GetPage %s, %s, p50 / p99 us" % (where, how), "getpage", mo, mk, "latency", "us", None, None))

# Cold reads (page cache dropped, fresh process, no warm-up), when the machine allowed dropping caches.
if any(r["bench"] == "getpage" and r.get("warm") is False for r in rows):
    for depth, batch in ((1, 1), (32, 1), (32, 32)):
        how = "depth %d" % depth if batch == 1 else "depth 32, ours in batches of 32 on one thread"
        mo = {"at_latest": True, "depth": depth, "batch": batch, "warm": False, "cold_after": 0}
        mk = {"at_latest": True, "depth": depth, "batch": 1, "warm": False, "cold_after": 0}
        measurements.append(("GetPage latest LSN, COLD, %s, pages/s" % how, "getpage", mo, mk, "pages_per_s", "pages/s", ">=", 3.0))
        measurements.append(("GetPage latest LSN, COLD, %s, p50 / p99 us" % how, "getpage", mo, mk, "latency", "us", None, None))
        measurements.append(("GetPage latest LSN, COLD, %s, CPU us per page (every thread, user + system)" % how, "getpage", mo, mk, "cpu", "us", None, None))
# Cold in a process that has been serving (`--cold-after`), when the run made them.
after = sorted({r.get("cold_after", 0) for r in rows if r["bench"] == "getpage" and r.get("warm") is False} - {0})
if after:
    for depth, batch in ((1, 1), (32, 1), (32, 32)):
        how = "depth %d" % depth if batch == 1 else "depth 32, ours in batches of 32 on one thread"
        mo = {"at_latest": True, "depth": depth, "batch": batch, "warm": False, "cold_after": after[0]}
        mk = {"at_latest": True, "depth": depth, "batch": 1, "warm": False, "cold_after": after[0]}
        what = "COLD after %d reads in the same process" % after[0]
        measurements.append(("GetPage latest LSN, %s, %s, pages/s" % (what, how), "getpage", mo, mk, "pages_per_s", "pages/s", ">=", 3.0))
        measurements.append(("GetPage latest LSN, %s, %s, CPU us per page (every thread, user + system)" % (what, how), "getpage", mo, mk, "cpu", "us", None, None))

# Ours after image creation at the end LSN (what background compaction leaves), against RocksDB as
# the seed stores it (it has nothing like it).
for depth, batch in ((1, 1), (32, 1), (32, 32)):
    how = "depth %d" % depth if batch == 1 else "depth 32, ours in batches of 32 on one thread"
    mo = {"at_latest": True, "depth": depth, "batch": batch, "warm": True}
    mk = {"at_latest": True, "depth": depth, "batch": 1, "warm": True}
    measurements.append(("GetPage latest LSN, %s, ours with image layers at the end LSN, pages/s" % how, "getpage", mo, mk, "pages_per_s", "pages/s", ">=", 3.0, "ours-imaged"))
if any(r["bench"] == "getpage" and r.get("warm") is False and r["store"] == "ours-imaged" for r in rows):
    for depth, batch in ((1, 1), (32, 1), (32, 32)):
        how = "depth %d" % depth if batch == 1 else "depth 32, ours in batches of 32 on one thread"
        mo = {"at_latest": True, "depth": depth, "batch": batch, "warm": False, "cold_after": 0}
        mk = {"at_latest": True, "depth": depth, "batch": 1, "warm": False, "cold_after": 0}
        measurements.append(("GetPage latest LSN, COLD, %s, ours with image layers at the end LSN, pages/s" % how, "getpage", mo, mk, "pages_per_s", "pages/s", ">=", 3.0, "ours-imaged"))
measurements = [m if len(m) == 9 else m + ("ours",) for m in measurements]

table, results = [], []
for label, bench, mo, mk, field, unit, op, goal, ours_store in measurements:
    if field == "latency":
        def lat(store, match):
            p50 = statistics.median(pick(store, r, bench, **match)["p50_us"] for r in reps)
            p99 = statistics.median(pick(store, r, bench, **match)["p99_us"] for r in reps)
            return p50, p99
        o, k = lat(ours_store, mo), lat("rocksdb", mk)
        table.append("| %s | %.0f / %.0f | %.0f / %.0f | %.2fx / %.2fx | (no goal) |" % (label, o[0], o[1], k[0], k[1], k[0] / o[0], k[1] / o[1]))
        results.append({"measurement": label, "ours_p50_us": o[0], "ours_p99_us": o[1], "rocksdb_p50_us": k[0], "rocksdb_p99_us": k[1]})
        continue
    if field == "cpu":
        # CPU per page, RocksDB / ours (above 1: ours spends less); older runs did not measure it.
        o = [pick(ours_store, r, bench, **mo).get("cpu_us_per_page") for r in reps]
        k = [pick("rocksdb", r, bench, **mk).get("cpu_us_per_page") for r in reps]
        if None in o or None in k:
            continue
        table.append("| %s | %.1f | %.1f | %.2fx | (no goal) |" % (label, statistics.median(o), statistics.median(k),
                                                                 statistics.median(b / a for a, b in zip(o, k))))
        results.append({"measurement": label, "unit": "us", "ours": o, "rocksdb": k})
        continue
    ours = [pick(ours_store, r, bench, **mo)[field] for r in reps]
    rocks = [pick("rocksdb", r, bench, **mk)[field] for r in reps]
    ratio = statistics.median(o / k for o, k in zip(ours, rocks))
    met = ratio >= goal if op == ">=" else ratio <= goal
    scale = 1e6 if unit == "MB" else 1
    fmt = (lambda v: "%.1f" % (v / scale)) if unit in ("MB", "MB/s") else (lambda v: "%.0f" % v)
    table.append("| %s | %s | %s | %.2fx | %s %.1fx: %s |" % (label, fmt(statistics.median(ours)), fmt(statistics.median(rocks)),
                                                          ratio, op, goal, "met" if met else "MISSED"))
    results.append({"measurement": label, "unit": unit, "ours": ours, "rocksdb": rocks, "ratio_median": ratio,
                    "goal": "%s %.1fx" % (op, goal), "met": met})

images = [r for r in rows if r["bench"] == "images"]
if images:
    table.append("| Bytes on disk with those image layers, MB (ours; RocksDB as after ingest) | %.1f | %.1f | %.2fx | (no goal) |" % (
        statistics.median(r["bytes_on_disk"] for r in images) / 1e6,
        statistics.median(pick("rocksdb", r, "ingest")["bytes_on_disk"] for r in reps) / 1e6,
        statistics.median(i["bytes_on_disk"] / pick("rocksdb", i["rep"], "ingest")["bytes_on_disk"] for i in images)))
    table.append("| Image creation at the end LSN, seconds (ours) | %.1f | | | (no goal) |" % statistics.median(r["seconds"] for r in images))

# Compaction + GC with the same horizon (ours: images at H, then GC; RocksDB: versions older than each
# key's newest chain start at or below H deleted, then CompactRange).
for latest, what in ((False, "the middle of the WAL"), (True, "the end LSN")):
    gcs = {s: [r for r in rows if r["bench"] == "gc" and r["store"] == s and r["horizon_is_latest"] == latest] for s in ("ours", "rocksdb")}
    if not gcs["ours"] or len(gcs["ours"]) != len(gcs["rocksdb"]):
        continue
    o = [r["bytes_on_disk"] for r in gcs["ours"]]
    k = [r["bytes_on_disk"] for r in gcs["rocksdb"]]
    ratio = statistics.median(a / b for a, b in zip(o, k))
    label = "Bytes on disk after compaction + GC with horizon at %s (%s), MB" % (what, gcs["ours"][0]["horizon"])
    table.append("| %s | %.1f | %.1f | %.2fx | <= 0.5x: %s |" % (label, statistics.median(o) / 1e6, statistics.median(k) / 1e6, ratio, "met" if ratio <= 0.5 else "MISSED"))
    results.append({"measurement": label, "unit": "MB", "ours": o, "rocksdb": k, "ratio_median": ratio, "goal": "<= 0.5x", "met": ratio <= 0.5})
    table.append("| Compaction + GC with horizon at %s, seconds | %.1f | %.1f | | (no goal) |" % (
        what, statistics.median(r["seconds"] for r in gcs["ours"]), statistics.median(r["seconds"] for r in gcs["rocksdb"])))

machine = "%s, %s cores, %s" % (platform.machine(), subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
                                subprocess.run(["uname", "-sr"], capture_output=True, text=True).stdout.strip())
try:
    model = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    machine = model + ", " + machine
except StopIteration:
    pass
date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
failures = [r for r in rows if r["bench"] == "failure"]
md = ["Command: `%s`" % command, "Machine: %s. Date: %s. WAL: %s .. %s (%.0f MB), pgbench scale %d, %d s, %d clients; medians of %d repetitions, ratios = median of the per-repetition ratios ours / RocksDB." %
      (machine, date, capture["start_lsn"], capture["end_lsn"], pick("ours", reps[0], "ingest")["wal_bytes"] / 1e6,
       capture["scale"], capture["pgbench_seconds"], capture["clients"], len(reps)), "",
      "| measurement | ours | RocksDB | ratio | goal |", "|---|---|---|---|---|"] + table + \
     ([""] + ["FAILED (retried once): %s store, repetition %d: `%s`: %s" % (f["store"], f["rep"], f["command"], f["error"]) for f in failures] if failures else [])
open(out_md, "w").write("\n".join(md) + "\n")
json.dump({"command": command, "machine": machine, "date": date, "capture": capture, "results": results, "runs": rows},
          open(out_json, "w"), indent=1)
print("\n".join(md))
print("\nwritten: %s, %s" % (out_json, out_md))
# The results table of BENCHMARKS.md (between its rocksdb markers) is replaced by this run's.
if benchmarks_md:
    text = open(benchmarks_md).read()
    begin, end = "<!-- %s:begin -->" % marker, "<!-- %s:end -->" % marker
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        open(benchmarks_md, "w").write(head + begin + "\n" + "\n".join(md) + "\n" + end + tail)
        print("rewrote the table in %s" % benchmarks_md)
    else:
        print("bench_rocksdb: %s has no %s ... %s markers; table not written there" % (benchmarks_md, begin, end))
PY
