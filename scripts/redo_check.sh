#!/usr/bin/env bash
# Checks our native redo against a real PostgreSQL 15 primary, record by record.
#
# Usage: scripts/redo_check.sh [--checksums] [--keep] STEP...
#   STEP is one of, run in order against a fresh primary (database postgres, user postgres):
#     -c SQL        run one SQL command with psql
#     -f FILE       run a SQL file with psql
#     -b ARGS       run pgbench with ARGS (e.g. -b "-i -s 2" or -b "-c 4 -T 20")
#     -s CMD        run a shell command with $PGPORT/$PGHOST set (as user postgres)
#   --checksums     initdb with data checksums
#   --keep          keep the cluster directory (printed) for inspection
# Environment: PAGECTL (default .build/debug/pagectl), PGBIN (default /usr/lib/postgresql/15/bin).
#
# The primary runs with wal_consistency_checking=all, so every block reference in its WAL carries an
# image of the page after the record. After the steps the primary is stopped and
# `pagectl wal verify-redo` replays its whole pg_wal with our redo, comparing every page with those
# images under PostgreSQL's masking. Exit status: that of pagectl (1 on any mismatch).
set -euo pipefail
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PAGECTL=${PAGECTL:-$ROOT/.build/debug/pagectl}
checksums=()
keep=0
steps=()
while [ $# -gt 0 ]; do
  case "$1" in
    --checksums) checksums=(-k); shift ;;
    --keep) keep=1; shift ;;
    -c|-f|-b|-s) steps+=("$1" "$2"); shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -x "$PAGECTL" ] || { echo "no pagectl at $PAGECTL (swift build --product pagectl)" >&2; exit 2; }
dir=$(mktemp -d /tmp/redo-check-XXXXXX)
chown postgres: "$dir"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
asp() { runuser -u postgres -- "$@"; }
cleanup() {
  asp "$PGBIN/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
  if [ $keep = 0 ]; then rm -rf "$dir"; else echo "kept $dir"; fi
}
trap cleanup EXIT
asp "$PGBIN/initdb" -A trust -U postgres ${checksums[@]+"${checksums[@]}"} -D "$dir/data" >/dev/null
cat >> "$dir/data/postgresql.conf" <<CONF
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
wal_consistency_checking = all
max_wal_size = 20GB
wal_keep_size = 20GB
checkpoint_timeout = 1h
fsync = off
max_prepared_transactions = 10
CONF
asp "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w start >/dev/null
export PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres PGDATABASE=postgres
# A base backup first, as the page server's attach takes one: replay starts from it, so every page
# has a known history (initdb's bootstrap writes catalogs without WAL).
asp "$PGBIN/pg_basebackup" -h 127.0.0.1 -p $port -U postgres -D "$dir/backup" -Ft -X none -c fast
i=0
while [ $i -lt ${#steps[@]} ]; do
  kind=${steps[$i]}; arg=${steps[$((i+1))]}; i=$((i+2))
  case "$kind" in
    -c) asp env PGHOST=$PGHOST PGPORT=$port "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres -c "$arg" >/dev/null ;;
    -f) asp env PGHOST=$PGHOST PGPORT=$port "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres -f "$arg" >/dev/null ;;
    -b) asp env PGHOST=$PGHOST PGPORT=$port "$PGBIN/pgbench" -U postgres $arg postgres >/dev/null 2>&1 ;;
    -s) asp env PGHOST=$PGHOST PGPORT=$port bash -c "$arg" ;;
  esac
done
asp "$PGBIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
flags=()
[ ${#checksums[@]} -gt 0 ] && flags+=(--checksums)
"$PAGECTL" wal verify-redo ${flags[@]+"${flags[@]}"} --base-backup "$dir/backup/base.tar" "$dir/data/pg_wal"
