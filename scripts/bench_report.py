#!/usr/bin/env python3
"""Turns the JSON lines of scripts/bench.sh (SECTION engine) or scripts/bench_ingest.sh (SECTION
ingest) into their table of BENCHMARKS.md.

Usage: bench_report.py RESULTS.jsonl BENCHMARKS.md SECTION COMMAND
Rewrites the text between <!-- SECTION:begin --> and <!-- SECTION:end --> (appends the section if
missing). Every row carries its baseline measured in the same run and the ratio of the medians.
"""
import json, platform, statistics, sys, datetime, os

results_path, md_path, section, command = sys.argv[1:5]
rows = [json.loads(l) for l in open(results_path) if l.strip().startswith("{")]

def med(xs):
    return statistics.median(xs) if xs else float("nan")

def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"

machine = f"{cpu_model()}, {os.cpu_count()} cores, Linux {platform.release()}"
date = datetime.date.today().isoformat()
lines = []
lines.append(f"Machine: {machine}. Date: {date}. Command: `{command}`.")
lines.append("")
lines.append("| measurement | ours (median) | baseline (median) | ratio | goal |")
lines.append("|---|---|---|---|---|")

def ingest_rows():
    """The WAL-ingest table: ours (decode + store + flush) against the streaming standby."""
    cap = next((r for r in rows if r["bench"] == "ingest_capture"), None)
    ours = [r for r in rows if r["bench"] == "wal_ingest"]
    base = [r for r in rows if r["bench"] == "standby_replay"]
    if not ours or not base:
        return
    mb = ours[0]["wal_bytes"] / 1e6
    if cap:
        lines.insert(1, f"WAL: {cap['start_lsn']} .. {cap['end_lsn']}, {mb:.0f} MB, {med([r['records'] for r in ours]):,.0f} records "
                        f"(`pgbench -i -s {cap['scale']}`, then `pgbench -c {cap['clients']} -j 2 -T {cap['pgbench_seconds']}`, CHECKPOINT).")
        lines.insert(1, "")
    o = med([r["mb_per_s"] for r in ours])
    b = med([r["mb_per_s"] for r in base])
    split = (f"ingest thread waiting for the decoding thread {med([r['decode_seconds'] for r in ours]):.2f} s, ingesting {med([r['ingest_seconds'] for r in ours]):.2f} s, "
             f"final flush {med([r['flush_seconds'] for r in ours]):.2f} s")
    lines.append(f"| WAL ingest, {mb:.0f} MB of pgbench WAL: decode + store + durable flush (MB/s of WAL) "
                 f"| {o:.1f} MB/s ({med([r['seconds'] for r in ours]):.2f} s, {med([r['records_per_s'] for r in ours]):,.0f} records/s; {split}) "
                 f"| PostgreSQL 15 streaming standby, start until replay reaches the end LSN: {b:.1f} MB/s "
                 f"({med([r['seconds'] for r in base]):.2f} s, of which {med([r['startup_seconds'] for r in base]):.2f} s until it accepts connections) "
                 f"| {o/b:.2f}x | >= 2x ({'met' if o / b >= 2 else 'MISSED'}) |")
    a = med([r["after_startup_mb_per_s"] for r in base])
    lines.append(f"| the same, standby startup left out (for comparison only) | {o:.1f} MB/s "
                 f"| the standby's replay rate once it accepts connections (WAL and time between the first and the last poll): {a:.1f} MB/s "
                 f"| {o/a:.2f}x | |")

def redo_rows():
    """The redo table: our native redo against the standby replaying the same WAL."""
    cap = next((r for r in rows if r["bench"] == "ingest_capture"), None)
    ours = [r for r in rows if r["bench"] == "redo"]
    base = [r for r in rows if r["bench"] == "standby_replay"]
    if not ours or not base:
        return
    records = ours[0]["records"]
    mb = base[0]["wal_bytes"] / 1e6
    if cap:
        lines.insert(1, f"WAL: {cap['start_lsn']} .. {cap['end_lsn']}, {mb:.0f} MB, {records:,} records "
                        f"(`pgbench -i -s {cap['scale']}`, then `pgbench -c {cap['clients']} -j 2 -T {cap['pgbench_seconds']}`, CHECKPOINT).")
        lines.insert(1, "")
    o = med([r["records_applied"] / r["apply_seconds"] for r in ours])
    apps = med([r["applications_per_s"] for r in ours])
    b_all = med([records / r["seconds"] for r in base])
    b_rep = med([r["after_startup_mb_per_s"] * records / mb for r in base])
    lines.append(f"| redo of the whole WAL, records with a page applied per second of redo time (parse + apply) "
                 f"| {o:,.0f} records/s ({apps:,.0f} page applications/s; {med([r['records_applied'] for r in ours]):,.0f} records) "
                 f"| PostgreSQL 15 standby replaying the same WAL, records/s once it accepts connections: {b_rep:,.0f} "
                 f"(start to end: {b_all:,.0f}) | {o/b_rep:.2f}x | >= 1x per record ({'met' if o >= b_rep else 'MISSED'}) |")
    for n in ("1", "10", "100"):
        vals = [r["reconstruct_ns"][n] for r in ours if n in r["reconstruct_ns"]]
        if not vals:
            continue
        v = med(vals)
        goal = f"< 3200 ns ({'met' if v < 3200 else 'MISSED'})" if n == "10" else ""
        lines.append(f"| reconstruct one page: image + {n} record(s), the longest chain's page (ns) | {v:,.0f} ns "
                     f"| Neon's published walredo request: 32,000 ns | {v/32000:.3f}x | {goal} |")
    types = {}
    for r in ours:
        for name, t in r["by_type"].items():
            types.setdefault(name, []).append((t["count"], t["ns"]))
    lines.append("")
    lines.append("Redo cost per record type (median over runs; parse + apply of one record to one page):")
    lines.append("")
    lines.append("| record type | applications | ns per application |")
    lines.append("|---|---|---|")
    for name, vs in sorted(types.items(), key=lambda kv: -kv[1][0][0]):
        lines.append(f"| {name} | {vs[0][0]:,} | {med([v[1] for v in vs]):,.0f} |")

if section == "ingest":
    ingest_rows()
if section == "redo":
    redo_rows()

w = [r["mb_per_s"] for r in rows if r["bench"] == "layer_write"]
fw = [r["mb_per_s"] for r in rows if r["bench"] == "fio_write"]
if w:
    lines.append(f"| layer write, 256 MiB of 8 KiB images, LZ4, fsync (MB/s of values) | {med(w):.0f} MB/s | fio seq write 1 MiB + fsync: {med(fw):.0f} MB/s | {med(w)/med(fw):.2f}x | (none named) |")

for mode in ("warm", "cold"):
    for depth in (1, 32):
        ours = [r for r in rows if r["bench"] == "layer_read" and (r["cold"] == (mode == "cold")) and r["depth"] == depth]
        base = [r for r in rows if r["bench"] == "fio_read" and r["mode"] == mode and r["depth"] == depth]
        if not ours:
            continue
        o = med([r["ops_per_s"] for r in ours])
        b = med([r["iops"] for r in base])
        threads = ours[0].get("threads", 1)
        p50 = med([r["batch_p50_us"] for r in ours])
        goal = ">= 0.8x" if mode == "cold" else ""
        met = ""
        if mode == "cold":
            met = " (met)" if o / b >= 0.8 else " (MISSED)"
        how = "data blocks cached" if mode == "warm" else "O_DIRECT, no data cache, index cached"
        lines.append(f"| {mode} lookups, depth {depth} ({threads} thread{'s' if threads > 1 else ''}, {how}) | {o:,.0f}/s, batch p50 {p50:.1f} us | fio io_uring 8 KiB randread{' O_DIRECT' if mode == 'cold' else ' (page cache)'}: {b:,.0f}/s | {o/b:.2f}x | {goal}{met} |")

table = "\n".join(lines)
begin, end = f"<!-- {section}:begin -->", f"<!-- {section}:end -->"
text = open(md_path).read() if os.path.exists(md_path) else "# Benchmarks\n"
if begin in text and end in text:
    pre, rest = text.split(begin, 1)
    _, post = rest.split(end, 1)
    text = pre + begin + "\n" + table + "\n" + end + post
else:
    text = text.rstrip("\n") + f"\n\n{begin}\n{table}\n{end}\n"
open(md_path, "w").write(text)
print(table)
