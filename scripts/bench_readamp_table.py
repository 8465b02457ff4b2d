#!/usr/bin/env python3
"""Read amplification as history grows, compaction on against off (issue 8).

Usage: bench_readamp_table.py ON_RESULTS OFF_RESULTS [BENCHMARKS_MD]

ON_RESULTS and OFF_RESULTS are the JSON-lines results of scripts/bench_compaction.sh run with
COMPACTION=on and COMPACTION=off (the same SCALE, DURATION and SAMPLE_EVERY). Their samples (before
pgbench, every SAMPLE_EVERY s during it, after it) are paired in order. Prints a markdown table of
layers visited per GetPage (p50 / p99, from the page server's histogram over each sample's 3 s
bench), GetPage p99 latency and disk use against the primary, and replaces the table between
<!-- readamp:begin --> and <!-- readamp:end --> in BENCHMARKS_MD when given.
"""
import json
import sys
import time


def samples(path):
    rows = [json.loads(l) for l in open(path) if l.strip()]
    return [r for r in rows if r.get("bench") == "sample" and r.get("phase") in ("before", "pgbench", "after")]


def cell(v, fmt="%s"):
    return "-" if v is None else fmt % v


def main():
    on, off = samples(sys.argv[1]), samples(sys.argv[2])
    if not on or not off:
        raise SystemExit("bench_readamp_table: no samples in %s" % (sys.argv[1] if not on else sys.argv[2]))
    lines = ["Date: %s. Each row: one sample of both runs (same schedule); layers = layer files and in-memory "
             "layers one GetPage visited (p50 / p99 over the sample's 3 s `pagectl bench getpage --clients 2 --depth 8`), "
             "disk = timeline directory / primary's data directory without pg_wal." % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
             "",
             "| sample | t (s), on / off | layers p50 / p99, compaction on | layers p50 / p99, compaction off | GetPage p99 us, on / off | disk, on / off |",
             "|---|---|---|---|---|---|"]
    for i in range(min(len(on), len(off))):
        a, b = on[i], off[i]
        lines.append("| %s | %s / %s | %s / %s | %s / %s | %s / %s | %s / %s |" % (
            a["phase"], cell(a.get("t_s"), "%.0f"), cell(b.get("t_s"), "%.0f"),
            cell(a.get("layers_p50")), cell(a.get("layers_p99")), cell(b.get("layers_p50")), cell(b.get("layers_p99")),
            cell(a.get("getpage_p99_us"), "%.0f"), cell(b.get("getpage_p99_us"), "%.0f"),
            cell(a.get("disk_ratio"), "%.2fx"), cell(b.get("disk_ratio"), "%.2fx")))
    text = "\n".join(lines)
    print(text)
    if len(sys.argv) > 3:
        path = sys.argv[3]
        doc = open(path).read()
        begin, end = "<!-- readamp:begin -->", "<!-- readamp:end -->"
        if begin in doc and end in doc:
            head, rest = doc.split(begin, 1)
            _, tail = rest.split(end, 1)
            open(path, "w").write(head + begin + "\n" + text + "\n" + end + tail)
            print("rewrote the read amplification table in %s" % path)
        else:
            print("bench_readamp_table: %s has no %s ... %s markers; table not written there" % (path, begin, end))


if __name__ == "__main__":
    main()
