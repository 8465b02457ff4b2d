#!/usr/bin/env bash
# The WAL-ingest benchmark (issue 3): our WAL ingest (decode + store + durable flush) against a
# PostgreSQL 15 streaming standby replaying the same WAL, in one run on this machine. Writes the
# table between <!-- ingest:begin --> and <!-- ingest:end --> in BENCHMARKS.md.
#
# 1. Capture, once: a throwaway PostgreSQL 15 primary (defaults: wal_level=replica, full_page_writes
#    on, wal_compression off, shared_buffers 128MB) gets a physical replication slot (so it keeps all
#    WAL from then on), a tar base backup (start LSN X), `pgbench -i -s SCALE`, `pgbench -c CLIENTS
#    -T SECONDS`, CHECKPOINT; end LSN Y = pg_current_wal_lsn(). The WAL segments X..Y are copied.
# 2. Ours: `pagectl engine bench ingest` imports base.tar into a fresh store (untimed), then times
#    reading the copied segments, decoding, ingesting every record that starts before Y and the final
#    durable checkpoint. MB/s = (Y - X) / seconds.
# 3. Baseline: base.tar restored into a fresh data directory with standby.signal and primary_conninfo
#    pointing at the primary (still running, the slot keeps X..Y). Timed from `pg_ctl start` until
#    pg_last_wal_replay_lsn() >= Y (polled every 50 ms on one connection); the time until it accepts
#    connections is reported too. MB/s = (Y - X) / seconds. A second row compares ours with the
#    standby's replay rate once it accepts connections (its startup left out), for information.
# Ours and the standby alternate REPS times; `sync` runs (untimed) after each so that neither pays
# for the other's dirty pages. The primary's autovacuum is turned off once the capture is done, so
# that the primary sits idle while they run.
#
#   BENCH_DIR        work directory (default /tmp/pageserver-bench-ingest; removed at the end)
#   REPS             repetitions of each contender (default 5: the per-repetition ratio spreads
#                    by +-20% on a shared 2-core machine, so the median needs more than 3)
#   PGBENCH_SCALE    pgbench -i scale (default 20: about 300 MB of tables)
#   PGBENCH_SECONDS  duration of the pgbench run (default 30)
#   PGBENCH_CLIENTS  pgbench clients (default 4, over 2 threads)
#   BIN_DIR          where pagectl is (default .build/release)
#   PG_BIN           PostgreSQL 15 binaries (default /usr/lib/postgresql/15/bin)
#   PERF_REPORT      when set: one more run of ours under `perf record -g`, events enabled for the
#                    timed part only; the top of `perf report --no-children` goes to this file
#   BENCH_COMMAND    how the run was started, for the table (default scripts/bench_ingest.sh)
#   KEEP_CAPTURE     when set: a directory the capture (base.tar, WAL segments, start and end LSN in
#                    lsns.txt) is copied to at the end, for profiling `pagectl wal bench-redo` or
#                    `pagectl engine bench ingest` on the same WAL afterwards
#   REDO_ONLY        when 1: skip our ingest runs and write only the redo table (issue 4): our redo
#                    (`pagectl wal bench-redo` on the same captured WAL: ns per record type, page
#                    reconstruction from an image plus 1, 10, 100 records, applications per second)
#                    next to the standby's replay in records per second. Without it, the redo runs
#                    happen too and both tables are written.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin="${BIN_DIR:-$root/.build/release}/pagectl"
dir=${BENCH_DIR:-/tmp/pageserver-bench-ingest}
reps=${REPS:-5}
scale=${PGBENCH_SCALE:-20}
seconds=${PGBENCH_SECONDS:-30}
clients=${PGBENCH_CLIENTS:-4}
pgbin=${PG_BIN:-/usr/lib/postgresql/15/bin}
command="${BENCH_COMMAND:-scripts/bench_ingest.sh}  (REPS=$reps PGBENCH_SCALE=$scale PGBENCH_SECONDS=$seconds PGBENCH_CLIENTS=$clients)"

[ -x "$bin" ] || { echo "bench_ingest: $bin not found (build with: swift build -c release)" >&2; exit 1; }
[ -x "$pgbin/postgres" ] || { echo "bench_ingest: PostgreSQL 15 not found in $pgbin" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "bench_ingest: run as root (the servers run as user postgres through runuser)" >&2; exit 1; }

primary="$dir/primary"   # data directory of the primary
standby="$dir/standby"   # data directory of the standby (recreated for every repetition)
capture="$dir/capture"   # base.tar and the WAL segments
store="$dir/store"       # our store (recreated for every repetition)
out="$dir/results.jsonl"
primary_up=0
standby_up=0

as_pg() { runuser -u postgres -- "$@"; }

cleanup() {
  local rc=$?
  if [ "$rc" != 0 ]; then
    for f in "$dir"/pg/*.log; do [ -f "$f" ] && { echo "--- $f (last lines)"; tail -n 20 "$f"; } >&2; done
  fi
  if [ "$standby_up" = 1 ]; then as_pg "$pgbin/pg_ctl" -D "$standby" -m immediate -w -t 30 stop >/dev/null 2>&1 || true; fi
  if [ "$primary_up" = 1 ]; then as_pg "$pgbin/pg_ctl" -D "$primary" -m fast -w -t 60 stop >/dev/null 2>&1 || true; fi
  if [ -n "${KEEP_CAPTURE:-}" ] && [ -d "$capture" ]; then
    rm -rf "$KEEP_CAPTURE"; cp -r "$capture" "$KEEP_CAPTURE"
    echo "${start_lsn:-} ${end_lsn:-}" > "$KEEP_CAPTURE/lsns.txt"
  fi
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

rm -rf "$dir"
mkdir -p "$dir/pg" "$capture/wal"   # pg: the servers' sockets and logs, owned by postgres
chown postgres: "$dir/pg"
chmod 755 "$dir"
: > "$out"

pport=$(free_port)
psql_p() { "$pgbin/psql" -X -At -h 127.0.0.1 -p "$pport" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }

echo "== capture: PostgreSQL 15 primary on 127.0.0.1:$pport, base backup, pgbench -i -s $scale, pgbench -c $clients -T $seconds"
install -d -o postgres -g postgres -m 700 "$primary"
as_pg "$pgbin/initdb" -D "$primary" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >> "$primary/postgresql.conf" <<EOF
# pageserver ingest benchmark
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

# The slot keeps every WAL segment from here on, for the standby to stream from.
psql_p -c "SELECT pg_create_physical_replication_slot('bench_ingest', true)" >/dev/null
"$pgbin/pg_basebackup" -h 127.0.0.1 -p "$pport" -U postgres -Ft -X none -c fast -D "$capture/backup" 2> "$dir/pg/basebackup.log"
tar -xOf "$capture/backup/base.tar" backup_label > "$capture/backup_label"
start_lsn=$(sed -n 's/^START WAL LOCATION: \([0-9A-Fa-f]*\/[0-9A-Fa-f]*\) .*/\1/p' "$capture/backup_label")
[ -n "$start_lsn" ] || { echo "bench_ingest: no START WAL LOCATION in backup_label" >&2; exit 1; }

"$pgbin/pgbench" -h 127.0.0.1 -p "$pport" -U postgres -i -s "$scale" -q postgres 2>&1 | tail -n 1
"$pgbin/pgbench" -h 127.0.0.1 -p "$pport" -U postgres -c "$clients" -j 2 -T "$seconds" postgres 2>&1 \
  | grep -E '^(number of transactions actually processed|tps)' || true
psql_p -c "CHECKPOINT" >/dev/null
end_lsn=$(psql_p -c "SELECT pg_current_wal_lsn()")
# Completes the segment holding the end LSN, so that the copied files are final.
psql_p -c "SELECT pg_switch_wal()" >/dev/null

# Copy the segments from the one holding X through the one holding Y.
read -r first_seg last_seg < <(python3 - "$start_lsn" "$end_lsn" <<'PY'
import sys
def lsn(s):
    hi, lo = s.split("/")
    return int(hi, 16) << 32 | int(lo, 16)
seg = 16 << 20
print(lsn(sys.argv[1]) // seg, lsn(sys.argv[2]) // seg)
PY
)
walsize=$(psql_p -c "SHOW wal_segment_size")
[ "$walsize" = 16MB ] || { echo "bench_ingest: wal_segment_size is $walsize, this script assumes 16MB" >&2; exit 1; }
timeline=$(psql_p -c "SELECT timeline_id FROM pg_control_checkpoint()")
for s in $(seq "$first_seg" "$last_seg"); do
  name=$(printf '%08X%08X%08X' "$timeline" $((s / 256)) $((s % 256)))
  cp "$primary/pg_wal/$name" "$capture/wal/"
done
wal_mb=$(python3 -c "
import sys
def lsn(s):
    hi, lo = s.split('/'); return int(hi, 16) << 32 | int(lo, 16)
print(round((lsn('$end_lsn') - lsn('$start_lsn')) / 1e6, 1))")
echo "WAL: $start_lsn .. $end_lsn ($wal_mb MB, segments $first_seg..$last_seg)"

# The primary stays up (the standby streams from it) but must sit idle while the contenders run:
# right after pgbench, autovacuum would analyze and vacuum the tables for a while, taking CPU from
# whichever contender runs then (on 2 cores it costs our ingest, which keeps both cores busy, more
# than the standby's single replay process). So autovacuum is turned off and its workers stopped.
psql_p -c "ALTER SYSTEM SET autovacuum = off" -c "SELECT pg_reload_conf()" >/dev/null
for _ in $(seq 600); do
  psql_p -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'" >/dev/null
  [ "$(psql_p -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker'")" = 0 ] && break
  sleep 0.1
done
echo "{\"bench\": \"ingest_capture\", \"start_lsn\": \"$start_lsn\", \"end_lsn\": \"$end_lsn\", \"scale\": $scale, \"pgbench_seconds\": $seconds, \"clients\": $clients}" >> "$out"

run_ours() {
  rm -rf "$store"
  "$bin" engine bench ingest --basebackup "$capture/backup/base.tar" --wal "$capture/wal" \
    --start-lsn "$start_lsn" --end-lsn "$end_lsn" --dir "$store" --json | tee -a "$out"
  rm -rf "$store"
  sync
}

sport=$(free_port)
run_standby() {
  rm -rf "$standby"
  install -d -o postgres -g postgres -m 700 "$standby"
  tar -xf "$capture/backup/base.tar" -C "$standby"
  mkdir -p "$standby/pg_wal/archive_status"
  cat >> "$standby/postgresql.conf" <<EOF
# the standby of the ingest benchmark
port = $sport
hot_standby = on
primary_conninfo = 'host=127.0.0.1 port=$pport user=postgres application_name=bench_ingest_standby'
EOF
  touch "$standby/standby.signal"
  chown -R postgres: "$standby"
  chmod 700 "$standby"
  sync
  standby_up=1
  # Starts the standby itself, so that the clock starts right before pg_ctl.
  python3 - "$pgbin" "$standby" "$dir/pg/standby.log" "$sport" "$start_lsn" "$end_lsn" <<'PY' | tee -a "$out"
import json, os, subprocess, sys, time
pgbin, data, log, port, start, end = sys.argv[1:7]
def lsn(s):
    hi, lo = s.split("/")
    return int(hi, 16) << 32 | int(lo, 16)
x, y = lsn(start), lsn(end)
psql = [pgbin + "/psql", "-X", "-At", "-q", "-h", "127.0.0.1", "-p", port, "-U", "postgres", "-d", "postgres"]
t0 = time.monotonic()
subprocess.run(["runuser", "-u", "postgres", "--", pgbin + "/pg_ctl", "-D", data, "-l", log, "start"],
               check=True, stdout=subprocess.DEVNULL)
# Hot standby accepts connections once it is consistent (past the backup's end record).
while subprocess.run(psql + ["-c", "SELECT 1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode != 0:
    if time.monotonic() - t0 > 1800:
        sys.exit("standby did not accept connections within 1800 s")
    if time.monotonic() - t0 > 10 and not os.path.exists(data + "/postmaster.pid"):
        sys.exit("the standby exited (see its log)")
    time.sleep(0.05)
t_accept = time.monotonic()
consistent = None
# One connection, polled every 50 ms.
p = subprocess.Popen(psql, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
replay = 0
while True:
    p.stdin.write("SELECT pg_last_wal_replay_lsn();\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        sys.exit("psql on the standby ended")
    if line.strip():
        replay = lsn(line.strip())
        if consistent is None:
            consistent, t_first = replay, time.monotonic()
    if replay >= y:
        break
    if time.monotonic() - t0 > 1800:
        sys.exit("standby did not reach %s within 1800 s" % end)
    time.sleep(0.05)
t_done = time.monotonic()
p.stdin.close()
p.wait()
secs = t_done - t0
print(json.dumps({"bench": "standby_replay", "wal_bytes": y - x, "seconds": secs,
                  "mb_per_s": (y - x) / secs / 1e6, "startup_seconds": t_accept - t0,
                  # Replay alone: the WAL replayed between the first poll's answer and the last.
                  "after_startup_mb_per_s": (y - consistent) / max(t_done - t_first, 1e-9) / 1e6,
                  "first_replay_lsn": "%X/%X" % (consistent >> 32, consistent & 0xFFFFFFFF),
                  "replay_lsn": "%X/%X" % (replay >> 32, replay & 0xFFFFFFFF)}))
PY
  as_pg "$pgbin/pg_ctl" -D "$standby" -m immediate -w -t 60 stop >/dev/null
  standby_up=0
  rm -rf "$standby"
  sync
}

run_redo() {
  "$bin" wal bench-redo --wal "$capture/wal" --start-lsn "$start_lsn" --end-lsn "$end_lsn" --json | tee -a "$out"
}

echo "== WAL ingest and redo: ours vs a PostgreSQL 15 streaming standby catching up, $reps each"
# The capture's own dirty pages (the copied segments, the primary's writes) are written back first:
# a flush of ours ends with one syncfs of the file system, which would otherwise write them back
# inside the first repetition's timed part. (Ours is still slowest in the first repetition: 165
# against 185-252 MB/s in the first run with this sync; the cause is not known.)
sync
for r in $(seq "$reps"); do
  if [ "${REDO_ONLY:-0}" != 1 ]; then run_ours; fi
  run_redo
  run_standby
done

if [ -n "${PERF_REPORT:-}" ]; then
  echo "== perf record -g of ours"
  rm -rf "$store"
  mkfifo "$dir/perf.ctl" "$dir/perf.ack"
  # Events are enabled by pagectl for the timed part only (not the base-backup import).
  perf record -g -D -1 --control "fifo:$dir/perf.ctl,$dir/perf.ack" -o "$dir/perf.data" -- \
    "$bin" engine bench ingest --basebackup "$capture/backup/base.tar" --wal "$capture/wal" \
    --start-lsn "$start_lsn" --end-lsn "$end_lsn" --dir "$store" --perf-control "$dir/perf.ctl,$dir/perf.ack" 2>/dev/null
  demangle() { if command -v swift-demangle >/dev/null; then swift-demangle --simplified; else cat; fi; }
  {
    echo "# ours, timed part only: perf record -g; perf report --no-children --sort dso,symbol"
    perf report -i "$dir/perf.data" --no-children --stdio -F overhead,dso,sym --percent-limit 0.4 -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | sed -E 's/ +/ /g; s/ $//' | demangle
    echo "# by thread (the ingest thread, the background flusher)"
    perf report -i "$dir/perf.data" --no-children --stdio -F overhead,pid -g none 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | sed -E 's/ +/ /g; s/ $//'
  } > "$PERF_REPORT"
  echo "perf report written to $PERF_REPORT"
fi

if [ "${REDO_ONLY:-0}" != 1 ]; then
  python3 "$root/scripts/bench_report.py" "$out" "$root/BENCHMARKS.md" ingest "$command"
  echo "BENCHMARKS.md updated (ingest)"
fi
python3 "$root/scripts/bench_report.py" "$out" "$root/BENCHMARKS.md" redo "$command"
echo "BENCHMARKS.md updated (redo)"
