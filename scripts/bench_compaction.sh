#!/usr/bin/env bash
# The compaction and GC benchmark (issue 7): read amplification, disk use and compaction throughput
# over a long pgbench run, and GetPage latency while a compaction pass runs.
#
#   1. A throwaway PostgreSQL 15 primary (wal_level replica, loopback), `pgbench -i -s SCALE`.
#   2. The page server (release build) with the DEFAULT compaction and GC settings except
#      gc_period = "30s" (so GC runs during the test) and pitr_interval = "0s" (gc_horizon, 64 MiB of
#      WAL by default, alone decides), attached to it.
#   3. `pgbench -c 4 -j 2 -T DURATION` on the primary; every SAMPLE_EVERY seconds meanwhile:
#      - read amplification: `pagectl bench getpage --clients 2 --depth 8 --duration 3`, and the
#        DELTA of the page server's histogram pageserver_getpage_layers_visited over that run
#        (p50, p99, the distribution), with the bench's p99 latency;
#      - bytes on disk (allocated blocks) of the timeline's directory against the primary's data
#        directory without pg_wal (base, global, pg_xact, pg_multixact, ... : everything else);
#      - pageserver_compaction_bytes_written_total, pageserver_compaction_gc_bytes_deleted_total,
#        pageserver_max_delta_depth.
#   4. pgbench done: caught up, PUT compact (timed), PUT do_gc, one more sample.
#   5. GetPage during compaction: the page server restarted on the same workdir with
#      compaction_period = "0s" (no background pass), gc_period = "0s" and
#      checkpoint_distance = BURST_CHECKPOINT_DISTANCE (so delta layers pile up), a pgbench burst of
#      BURST seconds, a flush, then `pagectl bench getpage --clients 2 --depth 8 --duration 5` with
#      no compaction running, and the same bench again while a PUT compact runs (started after
#      the bench's warm-up; its overlap with the measured window is reported), then once more after it.
#   6. Compaction throughput over the timed PUT compact calls: MB out = image_bytes_written +
#      merge_bytes_written, MB in ~ bytes_deleted (the layer files the pass replaced), per second of
#      PUT compact time; and an estimate of what image creation read, which replaces no file: for each
#      new image layer, its chunk's previous image and the delta layers above it (from the listings
#      of the timeline directory around the call) (each call is preceded by an untimed PUT checkpoint, so the flush it starts
#      with has nothing left to write).
#   7. JSON lines in BENCH_DIR/compaction-results.json (copied to RESULTS), and a summary with the goals.
# With COMPACTION=off, steps 2-3 run with compaction_period = "0s" and gc_period = "0s" (no background
# pass at all: delta layers only pile up), step 4 has no PUT compact or do_gc, and steps 5-6 are left
# out: the samples show read amplification and disk use growing with history when nothing compacts
# (issue 8's "compaction on and off"; scripts/bench_readamp_table.py puts the two runs side by side).
#
#   SCALE          pgbench -i scale (default 20)
#   DURATION       seconds of the pgbench run (default 240)
#   SAMPLE_EVERY   seconds between samples (default 15)
#   BURST          seconds of the pgbench burst before the during-compaction bench (default 45)
#   BURST_CHECKPOINT_DISTANCE  checkpoint_distance for the burst (default "8MiB": more than compaction_threshold delta layers, so merges run too)
#   BENCH_DIR      work directory (default /tmp/pageserver-bench-compaction; removed at the end unless KEEP=1)
#   RESULTS        where the results are copied (default bench-data/compaction-results.json)
#   BIN_DIR        where pageserver and pagectl are (default ./.build/release); nothing is built
#   PG_BIN         PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   COMPACTION     on (default) or off (see above)
#   EXTRA_CONFIG   TOML lines appended to the main run's page server config (default none), e.g.
#                  'checkpoint_distance = "32MiB"' for more delta layers, so that compaction and GC run
# Run as root (the primary runs as user postgres through runuser) or as a user who can run initdb.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
scale=${SCALE:-20}
duration=${DURATION:-240}
every=${SAMPLE_EVERY:-15}
burst=${BURST:-45}
burst_distance=${BURST_CHECKPOINT_DISTANCE:-8MiB}
dir=${BENCH_DIR:-/tmp/pageserver-bench-compaction}
results=${RESULTS:-$root/bench-data/compaction-results.json}
bindir=${BIN_DIR:-./.build/release}
pgbin=${PG_BIN:-/usr/lib/postgresql/15/bin}
compaction=${COMPACTION:-on}
case "$compaction" in on|off) ;; *) echo "bench_compaction: COMPACTION is on or off, not $compaction" >&2; exit 1 ;; esac

[ -x "$pgbin/postgres" ] || { echo "bench_compaction: PostgreSQL 15 not found in $pgbin" >&2; exit 1; }
pagectl="$bindir/pagectl"
pageserver="$bindir/pageserver"
[ -x "$pagectl" ] && [ -x "$pageserver" ] || { echo "bench_compaction: no pagectl/pageserver in $bindir" >&2; exit 1; }

primary="$dir/primary"
workdir="$dir/pageserver"
out="$dir/compaction-results.json"
ps_pid=""
pgbench_pid=""
compact_pid=""
primary_up=0

if [ "$(id -u)" = 0 ]; then as_pg() { runuser -u postgres -- "$@"; }; else as_pg() { "$@"; }; fi
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
  for p in "$pgbench_pid" "$compact_pid"; do [ -n "$p" ] && { kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; }; done
  stop_pageserver
  if [ "$primary_up" = 1 ]; then as_pg "$pgbin/pg_ctl" -D "$primary" -m fast -w -t 60 stop >/dev/null 2>&1 || true; fi
  if [ -s "$out" ]; then mkdir -p "$(dirname "$results")" && cp "$out" "$results" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT

rm -rf "$dir"
mkdir -p "$dir/pg"
[ "$(id -u)" = 0 ] && chown postgres: "$dir/pg"
chmod 755 "$dir"
: > "$out"
t_start=$(date +%s.%N)

pg_port=$(free_port); http_port=$(free_port); ps_port=$(free_port)
api="http://127.0.0.1:$http_port"
server="127.0.0.1:$ps_port"
psql_p() { "$pgbin/psql" -X -At -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
lsn_num() { python3 -c "import sys; h,l=sys.argv[1].split('/'); print(int(h,16)<<32|int(l,16))" "$1"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$1" "$2"; }

# Helpers in Python: a /metrics snapshot, the layers histogram's delta between two snapshots, disk use.
cat > "$dir/helpers.py" <<'PY'
import json, os, re, sys, urllib.request

def snapshot(api, timeline):
    text = urllib.request.urlopen(api + "/metrics", timeout=30).read().decode()
    hist, counters = {}, {"compaction_bytes_written": 0, "gc_bytes_deleted": 0, "max_delta_depth": 0,
                          "layers_created": 0, "layers_deleted": 0}
    names = {"pageserver_compaction_bytes_written_total": "compaction_bytes_written",
             "pageserver_compaction_gc_bytes_deleted_total": "gc_bytes_deleted",
             "pageserver_compaction_layers_created_total": "layers_created",
             "pageserver_compaction_gc_layers_deleted_total": "layers_deleted",
             "pageserver_max_delta_depth": "max_delta_depth"}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)', line)
        if not m:
            continue
        name, labels, value = m.group(1), dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or "")), float(m.group(4))
        if name == "pageserver_getpage_layers_visited_bucket":
            le = labels.get("le", "+Inf")
            hist[le] = hist.get(le, 0) + value
        elif name in names and labels.get("timeline_id", timeline) == timeline:
            k = names[name]
            counters[k] = max(counters[k], value) if k == "max_delta_depth" else counters[k] + value
    return {"hist": hist, **counters}

def le_key(le):
    return float("inf") if le in ("+Inf", "Inf", "inf") else float(le)

def hist_delta(a, b):
    """Per-bucket (non-cumulative) counts of b - a, and p50/p99 as bucket upper bounds."""
    les = sorted(b["hist"], key=le_key)
    cum = [b["hist"][le] - a["hist"].get(le, 0) for le in les]
    total = cum[-1] if cum else 0
    dist, prev = {}, 0
    for le, c in zip(les, cum):
        if c - prev > 0:
            dist[le] = int(c - prev)
        prev = c
    def pct(q):
        if total <= 0:
            return None
        for le, c in zip(les, cum):
            if c >= q * total:
                v = le_key(le)
                return v if v != float("inf") else None
        return None
    return {"lookups": int(total), "layers_p50": pct(0.5), "layers_p99": pct(0.99), "layers_max_bucket": max((le_key(le) for le in dist), default=None),
            "layers_dist": dist}

def disk(path, exclude=()):
    total = 0
    for d, dirs, files in os.walk(path):
        dirs[:] = [x for x in dirs if os.path.join(d, x) not in exclude]
        for f in files:
            try:
                total += os.lstat(os.path.join(d, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total

def listing(path):
    """Layer files of a timeline directory: name -> bytes."""
    out = {}
    for f in os.listdir(path):
        if f.endswith(".delta") or f.endswith(".image"):
            try:
                out[f] = os.stat(os.path.join(path, f)).st_size
            except FileNotFoundError:
                pass
    return out

def parse(name):
    chunk, rest = name.rsplit("__", 1)
    rng, kind = rest.rsplit(".", 1)
    if kind == "image":
        return chunk, kind, int(rng, 16), None
    a, b = rng.split("-")
    return chunk, kind, int(a, 16), int(b, 16)

def image_inputs(before, after):
    """Bytes an image pass read, estimated from the listings around it: for every new image layer,
    its chunk's previous newest image and the delta layers above that image (all of them if none)."""
    total = 0
    layers = [parse(n) + (size,) for n, size in before.items()]
    for n in set(after) - set(before):
        chunk, kind, lsn, _ = parse(n)
        if kind != "image":
            continue
        prev = [l for l in layers if l[0] == chunk and l[1] == "image" and l[2] < lsn]
        base = max(prev, key=lambda l: l[2]) if prev else None
        if base:
            total += base[4]
        total += sum(l[4] for l in layers if l[0] == chunk and l[1] == "delta" and (base is None or l[3] - 1 > base[2]) and l[2] <= lsn)
    return total

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "snapshot":
        print(json.dumps(snapshot(sys.argv[2], sys.argv[3])))
    elif cmd == "delta":
        print(json.dumps(hist_delta(json.load(open(sys.argv[2])), json.load(open(sys.argv[3])))))
    elif cmd == "listing":
        print(json.dumps(listing(sys.argv[2])))
    elif cmd == "image-inputs":
        print(image_inputs(json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))))
    elif cmd == "disk":
        print(disk(sys.argv[2], tuple(sys.argv[3:])))
PY
helpers() { python3 "$dir/helpers.py" "$@"; }
# Appends one JSON object (stdin, or several merged: FILE arguments "@path") with extra fields KEY=VALUE (JSON values).
record() {
  python3 -c '
import json, sys
d = json.loads(sys.stdin.read() or "{}")
for kv in sys.argv[1:]:
    if kv.startswith("@"):
        d.update(json.load(open(kv[1:])))
        continue
    k, v = kv.split("=", 1)
    d[k] = json.loads(v)
print(json.dumps(d))' "$@" | tee -a "$out"
}

echo "== a PostgreSQL 15 primary on 127.0.0.1:$pg_port, pgbench -i -s $scale"
if [ "$(id -u)" = 0 ]; then install -d -o postgres -g postgres -m 700 "$primary"; else install -d -m 700 "$primary"; fi
as_pg "$pgbin/initdb" -D "$primary" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >> "$primary/postgresql.conf" <<EOF
# pageserver compaction benchmark
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$dir/pg'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
max_wal_size = 4GB
EOF
echo "host replication all 127.0.0.1/32 trust" >> "$primary/pg_hba.conf"
as_pg "$pgbin/pg_ctl" -D "$primary" -l "$dir/pg/primary.log" -w -t 60 start >/dev/null
primary_up=1
"$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -i -s "$scale" -q postgres 2>&1 | tail -n 1

# The page server's settings: the defaults except gc_period and pitr_interval.
if [ "$compaction" = on ]; then
cat > "$dir/pageserver.toml" <<EOF
# bench_compaction.sh: default compaction and GC settings, except GC every 30 s with the horizon alone
gc_period = "30s"
pitr_interval = "0s"
EOF
else
cat > "$dir/pageserver.toml" <<EOF
# bench_compaction.sh, COMPACTION=off: no background compaction or GC pass
compaction_period = "0s"
gc_period = "0s"
pitr_interval = "0s"
EOF
fi
if [ -n "${EXTRA_CONFIG:-}" ]; then echo "$EXTRA_CONFIG" >> "$dir/pageserver.toml"; fi
# Phase 5: no background compaction or GC, small in-memory layers so delta layers pile up.
cat > "$dir/pageserver-burst.toml" <<EOF
# bench_compaction.sh, GetPage during compaction: no background passes, delta layers pile up
compaction_period = "0s"
gc_period = "0s"
pitr_interval = "0s"
checkpoint_distance = "$burst_distance"
EOF

start_pageserver() { # config file
  "$pageserver" --config "$1" --workdir "$workdir" --listen-http "127.0.0.1:$http_port" --listen-pg "$server" >> "$dir/pageserver.log" 2>&1 &
  ps_pid=$!
  for _ in $(seq 300); do curl -sf "$api/v1/status" >/dev/null && return 0; sleep 0.1; done
  echo "bench_compaction: the page server did not answer on $api" >&2
  exit 1
}

wait_caught_up() {
  local target last=""
  target=$(psql_p -c "SELECT pg_current_wal_lsn()")
  for _ in $(seq 6000); do
    last=$(curl -sf "$api/v1/tenant/$tenant/timeline/$timeline" 2>/dev/null \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_record_lsn"])' 2>/dev/null || true)
    if [ -n "$last" ] && [ "$(lsn_num "$last")" -ge "$(lsn_num "$target")" ]; then return 0; fi
    sleep 0.1
  done
  echo "bench_compaction: the timeline reached ${last:-nothing} but not $target" >&2
  exit 1
}

echo "== the page server (HTTP $api, page service $server), config:"
sed 's/^/   /' "$dir/pageserver.toml"
start_pageserver "$dir/pageserver.toml"
tenant=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
timeline=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
tldir="$workdir/tenants/$tenant/timelines/$timeline"
tlapi="$api/v1/tenant/$tenant/timeline/$timeline"
curl -sf -X POST "$api/v1/tenant" -d "{\"new_tenant_id\": \"$tenant\"}" >/dev/null
t0=$(now)
curl -sf -X POST "$api/v1/tenant/$tenant/timeline" \
  -d "{\"new_timeline_id\": \"$timeline\", \"wal_source\": \"host=127.0.0.1 port=$pg_port user=postgres\"}" >/dev/null
psql_p -c "CHECKPOINT" >/dev/null
wait_caught_up
echo "   attached and caught up in $(elapsed "$t0" "$(now)") s"

# One sample: a short GetPage bench with the layers histogram's delta around it, disk use, counters.
# Args: phase, bench duration (s).
bench_failures=0
sample() {
  local phase=$1 secs=$2 rc=0 t
  t=$(elapsed "$t_run" "$(now)")
  helpers snapshot "$api" "$timeline" > "$dir/m0.json"
  "$pagectl" bench getpage --server "$server" --http "127.0.0.1:$http_port" --tenant "$tenant" --timeline "$timeline" \
    --clients 2 --depth 8 --duration "$secs" --json > "$dir/b.json" 2>> "$dir/bench-errors.log" || rc=$?
  [ "$rc" = 0 ] || bench_failures=$((bench_failures + 1))
  helpers snapshot "$api" "$timeline" > "$dir/m1.json"
  helpers delta "$dir/m0.json" "$dir/m1.json" > "$dir/d.json"
  local ps_bytes pg_bytes last pg_lsn
  ps_bytes=$(helpers disk "$tldir")
  pg_bytes=$(helpers disk "$primary" "$primary/pg_wal")
  last=$(curl -sf "$tlapi" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_record_lsn"])')
  pg_lsn=$(psql_p -c "SELECT pg_current_wal_lsn()")
  python3 - "$dir/m1.json" "$dir/b.json" <<'PY' > "$dir/s.json"
import json, sys
m = json.load(open(sys.argv[1]))
t = open(sys.argv[2]).read().strip()
b = json.loads(t) if t else {}
print(json.dumps({k: m[k] for k in ("compaction_bytes_written", "gc_bytes_deleted", "max_delta_depth", "layers_created", "layers_deleted")}
                 | {"getpage_p50_us": b.get("p50_us"), "getpage_p99_us": b.get("p99_us"), "getpage_requests_per_s": b.get("requests_per_s"),
                    "getpage_errors": b.get("errors")}))
PY
  record "bench=\"sample\"" "phase=\"$phase\"" "t_s=$t" "@$dir/d.json" "@$dir/s.json" \
    "pageserver_timeline_bytes=$ps_bytes" "primary_bytes_without_pg_wal=$pg_bytes" \
    "disk_ratio=$(python3 -c "print(round($ps_bytes / $pg_bytes, 3))")" \
    "last_record_lsn=\"$last\"" "primary_lsn=\"$pg_lsn\"" "bench_exit=$rc" </dev/null >/dev/null
  tail -n 1 "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
f = lambda x: "-" if x is None else x
print("   %6.1f s %-8s layers p50 %s p99 %s (%d lookups) | getpage p99 %s us | disk %.0f MB / primary %.0f MB = %.2fx | compaction out %.0f MB, gc deleted %.0f MB, max depth %d" % (
    r["t_s"], r["phase"], f(r["layers_p50"]), f(r["layers_p99"]), r["lookups"], f(r["getpage_p99_us"]),
    r["pageserver_timeline_bytes"] / 1e6, r["primary_bytes_without_pg_wal"] / 1e6, r["disk_ratio"],
    r["compaction_bytes_written"] / 1e6, r["gc_bytes_deleted"] / 1e6, r["max_delta_depth"]))'
}

# PUT compact, timed, after an untimed flush; records the answer. Args: label.
timed_compact() {
  local label=$1 t0 t1 answer
  curl -sf -X PUT "$tlapi/checkpoint" >/dev/null
  helpers listing "$tldir" > "$dir/layers-before-$label.json"
  t0=$(now)
  answer=$(curl -sf -X PUT "$tlapi/compact")
  t1=$(now)
  helpers listing "$tldir" > "$dir/layers-after-$label.json"
  echo "$answer" | record "bench=\"compact\"" "label=\"$label\"" "seconds=$(elapsed "$t0" "$t1")" "t_start=$t0" "t_end=$t1" \
    "image_input_bytes_estimate=$(helpers image-inputs "$dir/layers-before-$label.json" "$dir/layers-after-$label.json")"
}

t_run=$(now)
echo "== pgbench -c 4 -j 2 -T $duration, a sample every $every s (getpage bench 3 s, layers histogram, disk, counters)"
sample before 3
"$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -c 4 -j 2 -T "$duration" -P 30 postgres > "$dir/pg/pgbench.log" 2>&1 &
pgbench_pid=$!
next=$(python3 -c "print($(now) + 2)")
while kill -0 "$pgbench_pid" 2>/dev/null; do
  sleep "$(python3 -c "import time; print(max(0, $next - time.time()))")"
  kill -0 "$pgbench_pid" 2>/dev/null || break
  sample pgbench 3
  next=$(python3 -c "print($next + $every)")
done
wait "$pgbench_pid" || { echo "bench_compaction: pgbench failed" >&2; cat "$dir/pg/pgbench.log" >&2; exit 1; }
pgbench_pid=""
tps=$(grep -oP 'tps = \K[0-9.]+' "$dir/pg/pgbench.log" | head -n 1 || echo null)
echo "{}" | record "bench=\"pgbench\"" "clients=4" "duration_s=$duration" "tps=${tps:-null}" >/dev/null
echo "   pgbench: $tps tps"

if [ "$compaction" = off ]; then
  echo "== pgbench done: catch up, one more sample (COMPACTION=off: no compaction, no GC)"
  t0=$(now); wait_caught_up; echo "   caught up in $(elapsed "$t0" "$(now)") s"
  curl -sf -X PUT "$tlapi/checkpoint" >/dev/null
  sample after 3
  echo "{}" | record "bench=\"mode\"" "compaction=\"off\"" >/dev/null
  python3 - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
for r in rows:
    if r.get("bench") == "sample":
        print("   t=%6.1f s  layers p50 %s p99 %s  disk ratio %.2f" % (r["t_s"], r["layers_p50"], r["layers_p99"], r["disk_ratio"]))
PY
  echo "results: $results (copied on exit)"
  exit 0
fi
echo "== pgbench done: catch up, PUT compact, PUT do_gc, one more sample"
t0=$(now); wait_caught_up; echo "   caught up in $(elapsed "$t0" "$(now)") s"
timed_compact after-run | sed 's/^/   /'
curl -sf -X PUT "$tlapi/do_gc" | record "bench=\"gc\"" | sed 's/^/   /'
sample after 3

echo "== GetPage during compaction: restart without background passes (checkpoint_distance $burst_distance), pgbench burst of $burst s"
stop_pageserver
start_pageserver "$dir/pageserver-burst.toml"
wait_caught_up
"$pgbin/pgbench" -h 127.0.0.1 -p "$pg_port" -U postgres -c 4 -j 2 -T "$burst" postgres > "$dir/pg/pgbench-burst.log" 2>&1
wait_caught_up
curl -sf -X PUT "$tlapi/checkpoint" >/dev/null
depth=$(helpers snapshot "$api" "$timeline" | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["max_delta_depth"]))')
echo "   delta layers above the newest image, deepest chunk: $depth"
t_run=$(now)
sample no-compaction 5
# The same bench while a PUT compact runs: the compaction starts after the bench's 1 s warm-up.
helpers snapshot "$api" "$timeline" > "$dir/m0.json"
rc=0
bench_t0=$(now)
"$pagectl" bench getpage --server "$server" --http "127.0.0.1:$http_port" --tenant "$tenant" --timeline "$timeline" \
  --clients 2 --depth 8 --duration 5 --json > "$dir/during.json" 2>> "$dir/bench-errors.log" &
bench_pid=$!
sleep 1.5
timed_compact during-bench > "$dir/compact-during.json" &
compact_pid=$!
wait "$bench_pid" || rc=$?
bench_t1=$(now)
[ "$rc" = 0 ] || bench_failures=$((bench_failures + 1))
helpers snapshot "$api" "$timeline" > "$dir/m1.json"
helpers delta "$dir/m0.json" "$dir/m1.json" > "$dir/d.json"
wait "$compact_pid"; compact_pid=""
sed 's/^/   /' "$dir/compact-during.json"
python3 - "$dir/during.json" "$dir/compact-during.json" "$bench_t0" "$bench_t1" <<'PY' > "$dir/s.json"
import json, sys
b = json.load(open(sys.argv[1]))
c = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
# The bench measures from about 1 s (its warm-up, plus the key space load) after it starts, to its end.
m0 = t0 + 1.0 + 0.1
overlap = max(0.0, min(t1, c["t_end"]) - max(m0, c["t_start"]))
print(json.dumps({"getpage_p50_us": b.get("p50_us"), "getpage_p99_us": b.get("p99_us"), "getpage_requests_per_s": b.get("requests_per_s"),
                  "getpage_errors": b.get("errors"), "compact_seconds": c["seconds"],
                  "compaction_overlap_s": round(overlap, 2), "measured_window_s": b.get("duration_s")}))
PY
record "bench=\"sample\"" "phase=\"during-compaction\"" "t_s=$(elapsed "$t_run" "$bench_t0")" "@$dir/d.json" "@$dir/s.json" "bench_exit=$rc" </dev/null \
  | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("   during compaction: layers p50 %s p99 %s | getpage p99 %s us | PUT compact %.1f s, %.1f s of it inside the %s s measured window" % (
    r["layers_p50"], r["layers_p99"], r["getpage_p99_us"], r["compact_seconds"], r["compaction_overlap_s"], r["measured_window_s"]))'
sample after-compaction 5

echo
python3 - "$out" "$scale" "$duration" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
samples = [r for r in rows if r.get("bench") == "sample"]
run = [r for r in samples if r["phase"] in ("before", "pgbench", "after")]
compacts = [r for r in rows if r.get("bench") == "compact"]
def fmt(x, d=2):
    return "-" if x is None else ("%.*f" % (d, x))
p99s = [r["layers_p99"] for r in run if r["layers_p99"] is not None]
max_p99 = max(p99s) if p99s else None
end = run[-1]
max_ratio = max(r["disk_ratio"] for r in run)
out_b = sum(c.get("image_bytes_written", 0) + c.get("merge_bytes_written", 0) for c in compacts)
in_b = sum(c.get("bytes_deleted", 0) for c in compacts)
in_est = sum(c.get("bytes_deleted", 0) + c.get("image_input_bytes_estimate", 0) for c in compacts)
secs = sum(c["seconds"] for c in compacts)
nocomp = next((r for r in samples if r["phase"] == "no-compaction"), None)
during = next((r for r in samples if r["phase"] == "during-compaction"), None)
gp_ratio = during["getpage_p99_us"] / nocomp["getpage_p99_us"] if during and nocomp and nocomp.get("getpage_p99_us") else None
dist = {}
for r in run:
    for k, v in r["layers_dist"].items():
        dist[k] = dist.get(k, 0) + v
summary = {"bench": "summary", "scale": int(sys.argv[2]), "duration_s": int(sys.argv[3]),
           "layers_p99_max": max_p99, "layers_p50_max": max((r["layers_p50"] for r in run if r["layers_p50"] is not None), default=None),
           "layers_dist_run": dist, "disk_ratio_end": end["disk_ratio"], "disk_ratio_max": max_ratio,
           "compaction_mb_out_per_s": out_b / 1e6 / secs if secs else None, "compaction_mb_in_per_s": in_b / 1e6 / secs if secs else None,
           "compaction_mb_in_estimate_per_s": in_est / 1e6 / secs if secs else None, "compaction_mb_in_estimate": in_est / 1e6,
           "compaction_mb_out": out_b / 1e6, "compaction_mb_in": in_b / 1e6, "compaction_seconds": secs,
           "getpage_p99_no_compaction_us": nocomp and nocomp["getpage_p99_us"], "getpage_p99_during_compaction_us": during and during["getpage_p99_us"],
           "getpage_p99_ratio": gp_ratio}
with open(sys.argv[1], "a") as f:
    f.write(json.dumps(summary) + "\n")
verdict = lambda ok: "met" if ok else "MISSED"
print("%-58s %s" % ("measurement", "value"))
print("%-58s %s (%s)" % ("layers per GetPage p99, max over samples (goal <= 4)", fmt(max_p99, 0), verdict(max_p99 is not None and max_p99 <= 4)))
print("%-58s %s" % ("layers per GetPage, all samples of the run", json.dumps(dist)))
print("%-58s %s (%s)" % ("disk / primary data dir w/o pg_wal, at the end (goal <= 2x)", fmt(end["disk_ratio"]), verdict(end["disk_ratio"] <= 2)))
print("%-58s %s (%s)" % ("disk / primary data dir w/o pg_wal, max over samples", fmt(max_ratio), verdict(max_ratio <= 2)))
print("%-58s %.0f MB vs %.0f MB" % ("  at the end: timeline dir vs primary", end["pageserver_timeline_bytes"] / 1e6, end["primary_bytes_without_pg_wal"] / 1e6))
print("%-58s out %s MB/s, in %s MB/s (%.0f MB out, %.0f MB in, %.1f s)" % ("compaction throughput (timed PUT compact calls)",
      fmt(summary["compaction_mb_out_per_s"], 1), fmt(summary["compaction_mb_in_per_s"], 1), out_b / 1e6, in_b / 1e6, secs))
print("%-58s %s MB/s (%.0f MB)" % ("  in, estimated (replaced + the layers under new images)", fmt(summary["compaction_mb_in_estimate_per_s"], 1), in_est / 1e6))
print("%-58s %s us / %s us = %s" % ("GetPage p99 during compaction / without", fmt(summary["getpage_p99_during_compaction_us"], 0),
      fmt(summary["getpage_p99_no_compaction_us"], 0), fmt(gp_ratio)))
print("results: %s" % sys.argv[1])
PY
if [ "$bench_failures" != 0 ]; then
  echo "bench_compaction: $bench_failures getpage runs had errors (see $dir/bench-errors.log)" >&2
  cat "$dir/bench-errors.log" >&2 || true
fi
