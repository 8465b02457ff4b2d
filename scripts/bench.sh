#!/usr/bin/env bash
# `make bench`: the engine benchmarks, each next to its baseline measured in the same run, written
# into BENCHMARKS.md between the markers; then the WAL-ingest benchmark (scripts/bench_ingest.sh,
# which has its own settings). Ours and the baseline alternate, REPS times each, and the
# tables show medians and the ratio of the medians (the machines are shared and noisy).
#
#   BENCH_DIR   where the data files go (default /tmp/pageserver-bench; fio uses the same file system)
#   REPS        repetitions of every measurement (default 3)
#   INGEST_REPS repetitions of the WAL-ingest benchmark against the standby (default 5)
#   SECONDS_PER_RUN  duration of each timed read run (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin="${BIN_DIR:-$root/.build/release}/pagectl"
dir=${BENCH_DIR:-/tmp/pageserver-bench}
reps=${REPS:-3}
dur=${SECONDS_PER_RUN:-5}
pages=32768            # 256 MiB of 8 KiB page images
out="$dir/results.jsonl"
rm -rf "$dir"
mkdir -p "$dir"
: > "$out"

fio_json() { # name, extra fio args...
  local name=$1; shift
  fio --name="$name" --output-format=json "$@" 2>/dev/null
}

echo "== layer write: $pages pages (256 MiB) into a fresh store, flushed with fsync; baseline fio sequential write 1 MiB + fsync"
for r in $(seq "$reps"); do
  rm -rf "$dir/store"
  "$bin" engine bench write --dir "$dir/store" --pages $pages --json | tee -a "$out"
  rm -f "$dir/fio-write.dat"
  fio_json seqwrite --filename="$dir/fio-write.dat" --rw=write --bs=1m --size=256m --ioengine=psync --end_fsync=1 \
    | python3 -c 'import json,sys; j=json.load(sys.stdin)["jobs"][0]["write"]; print(json.dumps({"bench":"fio_write","mb_per_s":j["bw_bytes"]/1e6}))' | tee -a "$out"
done
rm -f "$dir/fio-write.dat"

# The fio read file: same size as the layer data, same file system.
fio_json layout --filename="$dir/fio-read.dat" --rw=write --bs=1m --size=256m --ioengine=psync --end_fsync=1 >/dev/null

run_reads() { # mode(warm|cold) depth threads
  local mode=$1 depth=$2 threads=$3 coldflag="" direct=0
  if [ "$mode" = cold ]; then coldflag="--cold"; direct=1; else cat "$dir/fio-read.dat" > /dev/null; fi
  "$bin" engine bench read --dir "$dir/store" --pages $pages --depth "$depth" --threads "$threads" --duration "$dur" $coldflag --json | tee -a "$out"
  fio_json randread --filename="$dir/fio-read.dat" --rw=randread --bs=8k --size=256m --ioengine=io_uring \
      --iodepth="$depth" --direct=$direct --runtime="$dur" --time_based \
    | python3 -c "import json,sys; j=json.load(sys.stdin)['jobs'][0]['read']; print(json.dumps({'bench':'fio_read','mode':'$mode','depth':$depth,'iops':j['iops'],'clat_p50_us':j['clat_ns']['percentile']['50.000000']/1000}))" | tee -a "$out"
}

echo "== random point lookups (newest value <= LSN) vs fio 8 KiB random reads, io_uring"
for r in $(seq "$reps"); do
  run_reads warm 1 1
  run_reads warm 32 4
  run_reads cold 1 1
  run_reads cold 32 4
done

python3 "$root/scripts/bench_report.py" "$out" "$root/BENCHMARKS.md" engine \
  "make bench  (REPS=$reps SECONDS_PER_RUN=$dur BENCH_DIR=$dir)"
rm -rf "$dir"
echo "BENCHMARKS.md updated"

# The WAL-ingest benchmark (issue 3): ours against a PostgreSQL 15 streaming standby, its own table.
BENCH_COMMAND="make bench" REPS=${INGEST_REPS:-5} BENCH_DIR="$dir-ingest" "$root/scripts/bench_ingest.sh"

# The page service benchmark (issue 5): GetPage next to a loopback echo and fio, fullbackup next to
# pg_basebackup; its table is printed and its results go to bench-data/getpage-results.json.
SKIP_BUILD=1 "$root/scripts/bench_getpage.sh"

# The compaction and GC benchmark (issue 7): read amplification, disk use, compaction throughput and
# GetPage p99 during compaction over a pgbench run (about 7 minutes); its summary is printed and its
# results go to bench-data/compaction-results.json. A failure here does not fail `make bench`.
# SKIP_COMPACTION_BENCH=1 leaves it out.
if [ "${SKIP_COMPACTION_BENCH:-0}" != 1 ] && [ -x "$root/scripts/bench_compaction.sh" ]; then
  BIN_DIR="${BIN_DIR:-$root/.build/release}" "$root/scripts/bench_compaction.sh" \
    || echo "bench.sh: scripts/bench_compaction.sh failed (exit $?); the other benchmarks' results stand" >&2
  # Issue 8's read amplification with compaction on and off: the same pgbench run with no compaction
  # or GC pass at all (about 5 minutes), then both runs' samples side by side in BENCHMARKS.md.
  if BIN_DIR="${BIN_DIR:-$root/.build/release}" COMPACTION=off RESULTS="$root/bench-data/compaction-off-results.json" \
       "$root/scripts/bench_compaction.sh"; then
    python3 "$root/scripts/bench_readamp_table.py" "$root/bench-data/compaction-results.json" \
      "$root/bench-data/compaction-off-results.json" "$root/BENCHMARKS.md"
  else
    echo "bench.sh: scripts/bench_compaction.sh with COMPACTION=off failed; the other benchmarks' results stand" >&2
  fi
fi
