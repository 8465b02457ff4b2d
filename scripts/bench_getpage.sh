#!/usr/bin/env bash
# The page service benchmark: GetPage over the pagestream protocol and a fullbackup, each next to
# its floor on this machine, in one run:
#   - `pagectl bench echo` (8 KiB round trips over loopback TCP): the network floor of a GetPage;
#   - fio 8 KiB random reads, direct=1, on a file in the same file system as the page server's
#     workdir, at depth 1 and 32: the disk floor of a cold GetPage;
#   - `pagectl bench getpage` at depth 1 and 32 with 1 and 4 clients, cold (the page server restarted
#     and the kernel's page cache dropped when permitted) then warm (the same run again: same seed,
#     so the same blocks the cold run read);
#   - scaling: warm `pagectl bench getpage` at depth 1 with SWEEP_CLIENTS clients (default 1 2 4 8 32),
#     each next to fio at the same total depth (clients x 1);
#   - `pagectl fullbackup` timed next to `pg_basebackup -Ft` of the primary.
# Setup: a throwaway PostgreSQL 15 primary, `pgbench -i -s SCALE`, the page server (release build)
# attached to it (base backup, then WAL streaming), caught up, checkpointed (layer files on disk).
# Writes the results (one JSON object per measurement) to $RESULTS and prints a table with ratios.
#
#   SCALE        pgbench -i scale (default 50: about 750 MB of tables)
#   DURATION     seconds of each measured run (default 10; every run has a 1 s warm-up first)
#   BENCH_DIR    work directory (default /tmp/pageserver-bench-getpage; removed at the end unless KEEP=1)
#   RESULTS      results file (default bench-data/getpage-results.json)
#   BIN_DIR      where pageserver and pagectl are (default .build/release)
#   SKIP_BUILD   1: do not run `swift build -c release` first
#   PG_BIN       PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   FIO_ENGINE   fio ioengine (default io_uring)
#   SWEEP_CLIENTS  client counts of the scaling sweep (default "1 2 4 8 32"; empty: no sweep)
# Run as root (the primary runs as user postgres through runuser; dropping caches needs root).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scale=${SCALE:-50}
dur=${DURATION:-10}
dir=${BENCH_DIR:-/tmp/pageserver-bench-getpage}
results=${RESULTS:-$root/bench-data/getpage-results.json}
bindir=${BIN_DIR:-$root/.build/release}
pgbin=${PG_BIN:-/usr/lib/postgresql/15/bin}
fio_engine=${FIO_ENGINE:-io_uring}

[ "$(id -u)" = 0 ] || { echo "bench_getpage: run as root" >&2; exit 1; }
[ -x "$pgbin/postgres" ] || { echo "bench_getpage: PostgreSQL 15 not found in $pgbin" >&2; exit 1; }
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  echo "== swift build -c release"
  swift build -c release 2>&1 | tail -n 1
fi
pagectl="$bindir/pagectl"
pageserver="$bindir/pageserver"
[ -x "$pagectl" ] && [ -x "$pageserver" ] || { echo "bench_getpage: no pagectl/pageserver in $bindir" >&2; exit 1; }
command -v fio >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio; }

primary="$dir/primary"
workdir="$dir/pageserver"
out="$dir/results.jsonl"
ps_pid=""
primary_up=0

as_pg() { runuser -u postgres -- "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }

stop_pageserver() {
  if [ -n "$ps_pid" ]; then
    kill "$ps_pid" 2>/dev/null || true
    wait "$ps_pid" 2>/dev/null || true
    ps_pid=""
  fi
}

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    for f in "$dir"/pg/*.log "$dir"/pageserver*.log; do [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 20 "$f"; } >&2; done
  fi
  stop_pageserver
  if [ "$primary_up" = 1 ]; then as_pg "$pgbin/pg_ctl" -D "$primary" -m fast -w -t 60 stop >/dev/null 2>&1 || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

rm -rf "$dir"
mkdir -p "$dir/pg" "$(dirname "$results")"
chown postgres: "$dir/pg"
chmod 755 "$dir"
: > "$out"

pg_port=$(free_port); http_port=$(free_port); ps_port=$(free_port)
api="http://127.0.0.1:$http_port"
server="127.0.0.1:$ps_port"
psql_p() { "$pgbin/psql" -X -At -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
lsn_num() { python3 -c "import sys; h,l=sys.argv[1].split('/'); print(int(h,16)<<32|int(l,16))" "$1"; }
# Appends one JSON object (stdin) to the results with extra fields (KEY=VALUE, values JSON).
record() {
  python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
for kv in sys.argv[1:]:
    k, v = kv.split("=", 1)
    d[k] = json.loads(v)
print(json.dumps(d))' "$@" | tee -a "$out"
}

echo "== a PostgreSQL 15 primary on 127.0.0.1:$pg_port, pgbench -i -s $scale"
install -d -o postgres -g postgres -m 700 "$primary"
as_pg "$pgbin/initdb" -D "$primary" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >> "$primary/postgresql.conf" <<EOF
# pageserver GetPage benchmark
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$dir/pg'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
max_wal_size = 8GB
EOF
echo "host replication all 127.0.0.1/32 trust" >> "$primary/pg_hba.conf"
as_pg "$pgbin/pg_ctl" -D "$primary" -l "$dir/pg/primary.log" -w -t 60 start >/dev/null
primary_up=1
"$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -s "$scale" -q postgres 2>&1 | tail -n 1

# Starts the page server on the workdir and waits for its HTTP API.
start_pageserver() {
  "$pageserver" --workdir "$workdir" --listen-http "127.0.0.1:$http_port" --listen-pg "$server" >> "$dir/pageserver.log" 2>&1 &
  ps_pid=$!
  for _ in $(seq 300); do curl -sf "$api/v1/status" >/dev/null && return 0; sleep 0.1; done
  echo "bench_getpage: the page server did not answer on $api" >&2
  exit 1
}

# Waits until the timeline has ingested the primary's current WAL position.
wait_caught_up() {
  local target last=""
  target=$(psql_p -c "SELECT pg_current_wal_lsn()")
  for _ in $(seq 3000); do
    last=$(curl -sf "$api/v1/tenant/$tenant/timeline/$timeline" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_record_lsn"])' 2>/dev/null || true)
    if [ -n "$last" ] && [ "$(lsn_num "$last")" -ge "$(lsn_num "$target")" ]; then return 0; fi
    sleep 0.1
  done
  echo "bench_getpage: the timeline reached ${last:-nothing} but not $target" >&2
  exit 1
}

echo "== the page server (HTTP $api, page service $server): attach, catch up, checkpoint"
start_pageserver
tenant=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
timeline=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
curl -sf -X POST "$api/v1/tenant" -d "{\"new_tenant_id\": \"$tenant\"}" >/dev/null
t0=$(date +%s.%N)
curl -sf -X POST "$api/v1/tenant/$tenant/timeline" \
  -d "{\"new_timeline_id\": \"$timeline\", \"wal_source\": \"host=127.0.0.1 port=$pg_port user=postgres\"}" >/dev/null
psql_p -c "CHECKPOINT" >/dev/null
wait_caught_up
python3 -c "import sys; print('   attached and caught up in %.1f s' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)"
curl -sf -X PUT "$api/v1/tenant/$tenant/timeline/$timeline/checkpoint" >/dev/null
data_mb=$(du -sm "$workdir" | cut -f1)
echo "   page server workdir: $data_mb MB"

echo "== network floor: pagectl bench echo, 8 KiB round trips over loopback"
"$pagectl" bench echo --size 8192 --depth 1 --duration "$dur" --json | record
"$pagectl" bench echo --size 8192 --depth 32 --duration "$dur" --json | record

echo "== disk floor: fio 8 KiB random reads, direct=1, $fio_engine, in $dir"
fio_mb=$(( data_mb > 256 ? data_mb : 256 ))
fio --name=layout --filename="$dir/fio-read.dat" --rw=write --bs=1m --size="${fio_mb}m" --ioengine=psync --end_fsync=1 \
  --output-format=json >/dev/null 2>&1
# fio_run DEPTH: 8 KiB O_DIRECT random reads at that queue depth, one JSON line to $out.
fio_run() {
  fio --name=randread --filename="$dir/fio-read.dat" --rw=randread --bs=8k --size="${fio_mb}m" --ioengine="$fio_engine" \
      --iodepth="$1" --direct=1 --runtime="$dur" --time_based --output-format=json 2>/dev/null \
    | python3 -c "
import json, sys
j = json.load(sys.stdin)['jobs'][0]['read']
p = j['clat_ns']['percentile']
print(json.dumps({'bench': 'fio_randread', 'depth': $1, 'iops': j['iops'], 'mb_per_s': j['bw_bytes'] / 1e6,
                  'p50_us': p['50.000000'] / 1000, 'p99_us': p['99.000000'] / 1000, 'file_mb': $fio_mb}))" | tee -a "$out"
}
for depth in 1 32; do fio_run "$depth"; done

# Drops the page server's caches: a restart (its page and index caches) and, when permitted, the
# kernel's page cache. Prints whether the kernel's cache was dropped.
drop_caches() {
  stop_pageserver
  sync
  if { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then dropped=true; else dropped=false; fi
  start_pageserver
  wait_caught_up
}

echo "== pagectl bench getpage: cold (page server restarted, page cache dropped) then warm (the same run again)"
bench_failures=0
for clients in 1 4; do
  for depth in 1 32; do
    drop_caches
    [ "$dropped" = true ] || echo "   note: /proc/sys/vm/drop_caches not writable: 'cold' runs only restart the page server"
    for mode in cold warm; do
      rc=0
      json=$("$pagectl" bench getpage --server "$server" --http "127.0.0.1:$http_port" --tenant "$tenant" --timeline "$timeline" \
        --clients "$clients" --depth "$depth" --duration "$dur" --seed 42 --json) || rc=$?
      [ -n "$json" ] || { echo "bench_getpage: bench getpage printed nothing (exit $rc)" >&2; exit 1; }
      [ "$rc" = 0 ] || bench_failures=$((bench_failures + 1))
      echo "$json" | record "mode=\"$mode\"" "page_cache_dropped=$dropped" "exit_status=$rc"
    done
  done
done

sweep=${SWEEP_CLIENTS-1 2 4 8 32}
if [ -n "$sweep" ]; then
  echo "== scaling: warm GetPage at depth 1 with $sweep clients, fio at the same total depth"
  for clients in $sweep; do
    if ! grep -q "\"bench\": \"fio_randread\", \"depth\": $clients," "$out"; then
      fio_run "$clients"
    fi
    rc=0
    json=$("$pagectl" bench getpage --server "$server" --http "127.0.0.1:$http_port" --tenant "$tenant" --timeline "$timeline" \
      --clients "$clients" --depth 1 --duration "$dur" --seed 43 --json) || rc=$?
    [ -n "$json" ] || { echo "bench_getpage: bench getpage printed nothing (exit $rc)" >&2; exit 1; }
    [ "$rc" = 0 ] || bench_failures=$((bench_failures + 1))
    echo "$json" | record "mode=\"sweep\"" "exit_status=$rc"
  done
fi

rm -f "$dir/fio-read.dat"

echo "== fullbackup (page server) vs pg_basebackup -Ft (primary)"
wait_caught_up
t0=$(date +%s.%N)
"$pagectl" fullbackup --server "$server" --tenant "$tenant" --timeline "$timeline" -o "$dir/full.tar"
t1=$(date +%s.%N)
"$pgbin/pg_basebackup" -h 127.0.0.1 -p "$pg_port" -U postgres -Ft -X none -c fast -D "$dir/pgbb" 2> "$dir/pg/basebackup.log"
t2=$(date +%s.%N)
python3 - "$t0" "$t1" "$t2" "$dir/full.tar" "$dir/pgbb" <<'PY' | tee -a "$out"
import json, os, sys
t0, t1, t2 = map(float, sys.argv[1:4])
size = lambda p: os.path.getsize(p) if os.path.isfile(p) else sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(p) for f in fs)
print(json.dumps({"bench": "fullbackup", "seconds": t1 - t0, "bytes": size(sys.argv[4])}))
print(json.dumps({"bench": "pg_basebackup", "seconds": t2 - t1, "bytes": size(sys.argv[5])}))
PY

python3 - "$out" "$results" "$scale" "$dur" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
scale, dur = int(sys.argv[3]), float(sys.argv[4])
def find(**kw):
    return next((r for r in rows if all(r.get(k) == v for k, v in kw.items())), None)
echo1 = find(bench="echo", depth=1)
fio32, fio1 = find(bench="fio_randread", depth=32), find(bench="fio_randread", depth=1)
full, pgbb = find(bench="fullbackup"), find(bench="pg_basebackup")
def ratio(a, b):
    return round(a / b, 2) if a is not None and b else None
ratios = {
    "getpage_warm_p50_vs_echo_p50": ratio((find(bench="getpage", mode="warm", clients=1, depth=1) or {}).get("p50_us"), (echo1 or {}).get("p50_us")),
    "getpage_cold_depth32_1client_iops_vs_fio_depth32": ratio((find(bench="getpage", mode="cold", clients=1, depth=32) or {}).get("requests_per_s"), (fio32 or {}).get("iops")),
    "getpage_cold_depth32_4clients_iops_vs_fio_depth32": ratio((find(bench="getpage", mode="cold", clients=4, depth=32) or {}).get("requests_per_s"), (fio32 or {}).get("iops")),
    "fullbackup_seconds_vs_pg_basebackup": ratio((full or {}).get("seconds"), (pgbb or {}).get("seconds")),
}
# The scaling sweep: each client count's warm depth-1 throughput against fio at the same total depth.
sweep = {}
for r in rows:
    if r["bench"] == "getpage" and r.get("mode") == "sweep":
        fio = find(bench="fio_randread", depth=r["clients"])
        sweep[r["clients"]] = {"requests_per_s": r.get("requests_per_s"), "p50_us": r.get("p50_us"), "p99_us": r.get("p99_us"),
                               "fio_iops": (fio or {}).get("iops"), "vs_fio": ratio(r.get("requests_per_s"), (fio or {}).get("iops"))}
ratios["sweep_vs_fio_same_depth"] = sweep
json.dump({"scale": scale, "duration_s": dur, "results": rows, "ratios": ratios}, open(sys.argv[2], "w"), indent=2)

print()
print("%-34s %12s %10s %10s %10s %10s %10s %7s" % ("run", "requests/s", "MB/s", "p50 us", "p99 us", "p99.9 us", "max us", "errors"))
def f(x, d=1):
    return "-" if x is None else ("%.*f" % (d, x))
for r in rows:
    b = r["bench"]
    if b == "echo":
        name = "echo 8 KiB depth %d" % r["depth"]
    elif b == "fio_randread":
        name = "fio randread 8 KiB depth %d" % r["depth"]
        r = dict(r, requests_per_s=r["iops"])
    elif b == "getpage":
        name = "getpage %s %dc x depth %d" % ("warm (sweep)" if r["mode"] == "sweep" else r["mode"], r["clients"], r["depth"])
    else:
        continue
    print("%-34s %12s %10s %10s %10s %10s %10s %7s" % (name, f(r.get("requests_per_s"), 0), f(r.get("mb_per_s")), f(r.get("p50_us")),
          f(r.get("p99_us")), f(r.get("p99_9_us")), f(r.get("max_us")), r.get("errors", "-")))
if full and pgbb:
    print()
    print("fullbackup     %.2f s, %.1f MB" % (full["seconds"], full["bytes"] / 1e6))
    print("pg_basebackup  %.2f s, %.1f MB" % (pgbb["seconds"], pgbb["bytes"] / 1e6))
print()
print("ratios:")
print("  GetPage p50 (warm, 1 client, depth 1) / echo p50:        %s" % ratios["getpage_warm_p50_vs_echo_p50"])
print("  cold GetPage IOPS (1 client, depth 32) / fio depth 32:   %s" % ratios["getpage_cold_depth32_1client_iops_vs_fio_depth32"])
print("  cold GetPage IOPS (4 clients, depth 32) / fio depth 32:  %s" % ratios["getpage_cold_depth32_4clients_iops_vs_fio_depth32"])
print("  fullbackup time / pg_basebackup time:                    %s" % ratios["fullbackup_seconds_vs_pg_basebackup"])
for c, v in sorted(sweep.items()):
    print("  warm GetPage, %2d clients x depth 1 / fio depth %-2d:       %s (%s/s vs %s IOPS)" % (c, c, v["vs_fio"], f(v["requests_per_s"], 0), f(v["fio_iops"], 0)))
if any(r.get("page_cache_dropped") is False for r in rows):
    print("note: the kernel's page cache could not be dropped; 'cold' means a restarted page server only")
print("results: %s" % sys.argv[2])
PY
if [ "$bench_failures" != 0 ]; then
  echo "bench_getpage: $bench_failures getpage runs had errors (exit status 1)" >&2
  exit 1
fi
