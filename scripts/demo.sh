#!/usr/bin/env bash
# `make demo`: a PostgreSQL 15 primary and the page server on loopback ports under .demo/, attach,
# write with pgbench, show what the page server holds next to what the primary has, benchmark
# GetPage@LSN, branch at an earlier moment (get_lsn_by_timestamp), boot vanilla PostgreSQL on the
# branch's fullbackup to show that past next to the primary's present, then make the branch writable
# (its new primary's WAL streams into it). Cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
bin=${BIN_DIR:-$root/.build/release}
pgbin=/usr/lib/postgresql/15/bin
demo=$root/.demo
rm -rf "$demo"
mkdir -p "$demo"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
pg_port=$(free_port); http_port=$(free_port); ps_port=$(free_port)
ps_pid=""
past_started=""
cleanup() {
  [ -n "$past_started" ] && as_pg "$pgbin/pg_ctl" -D "$demo/past" -m immediate -w stop >/dev/null 2>&1 || true
  [ -n "$ps_pid" ] && kill "$ps_pid" 2>/dev/null && wait "$ps_pid" 2>/dev/null || true
  as_pg "$pgbin/pg_ctl" -D "$demo/pg" -m fast -w stop >/dev/null 2>&1 || true
  rm -rf "$demo"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && chown postgres "$demo"

echo "== 1. a PostgreSQL 15 primary on 127.0.0.1:$pg_port"
as_pg "$pgbin/initdb" -D "$demo/pg" -A trust -U postgres --no-sync >/dev/null
cat >> "$demo/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$demo'
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
CONF
echo "host replication all 127.0.0.1/32 trust" >> "$demo/pg/pg_hba.conf"
as_pg "$pgbin/pg_ctl" -D "$demo/pg" -l "$demo/pg.log" -w start >/dev/null
psql_() { psql -X -q -At -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres "$@"; }
psql_ -c "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes SELECT g, 'note ' || g FROM generate_series(1, 10000) g"

echo "== 2. the page server (HTTP 127.0.0.1:$http_port, workdir $demo/pageserver)"
"$bin/pageserver" --workdir "$demo/pageserver" --listen-http "127.0.0.1:$http_port" --listen-pg "127.0.0.1:$ps_port" > "$demo/pageserver.log" 2>&1 &
ps_pid=$!
api="http://127.0.0.1:$http_port"
for _ in $(seq 100); do curl -sf "$api/v1/status" >/dev/null && break; sleep 0.1; done
tenant=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
timeline=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
curl -sf -X POST "$api/v1/tenant" -d "{\"new_tenant_id\": \"$tenant\"}" >/dev/null

echo "== 3. attach: base backup over the replication protocol, imported as it streams, then WAL streaming"
t0=$(date +%s.%N)
curl -sf -X POST "$api/v1/tenant/$tenant/timeline" \
  -d "{\"new_timeline_id\": \"$timeline\", \"wal_source\": \"host=127.0.0.1 port=$pg_port user=postgres\"}" >/dev/null
python3 -c "import sys; print('   attached in %.1f s' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)"

echo "== 4. pgbench -i -s 5 on the primary while the page server streams; remember this moment's LSN"
pgbench -q -i -s 5 -h 127.0.0.1 -p "$pg_port" -U postgres postgres 2>&1 | tail -n 1
earlier_lsn=$(psql_ -c "SELECT pg_current_wal_lsn()")
state_sql="SELECT (SELECT count(*) FROM notes) AS notes, (SELECT count(*) FROM pgbench_history) AS history, (SELECT sum(abalance) FROM pgbench_accounts) AS sum_abalance"
earlier_state=$(psql_ -F ' | ' -c "$state_sql")
earlier_time=$(psql_ -c "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
echo "   at $earlier_time (LSN $earlier_lsn): notes | history | sum(abalance) = $earlier_state"
echo "   then: pgbench -c 2 -T 10, and DELETE half of the notes"
pgbench -c 2 -j 2 -T 10 -h 127.0.0.1 -p "$pg_port" -U postgres postgres 2>/dev/null | grep -E '^(tps|number of transactions actually)'
psql_ -c "DELETE FROM notes WHERE id % 2 = 0"
psql_ -c "CHECKPOINT"
target=$(psql_ -c "SELECT pg_current_wal_lsn()")
lsn_num() { python3 -c "import sys; h,l=sys.argv[1].split('/'); print(int(h,16)<<32|int(l,16))" "$1"; }
for _ in $(seq 600); do
  last=$(curl -sf "$api/v1/tenant/$tenant/timeline/$timeline" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_record_lsn"])')
  [ "$(lsn_num "$last")" -ge "$(lsn_num "$target")" ] && break
  sleep 0.1
done
echo "   primary's pg_current_wal_lsn: $target   page server's last_record_lsn: $last"

echo "== 5. relation sizes: page server (from WAL) vs primary (pg_relation_size)"
curl -sf "$api/v1/tenant/$tenant/timeline/$timeline/relations" > "$demo/rels.json"
printf '   %-22s %12s %12s\n' relation primary "page server"
for rel in pgbench_accounts pgbench_history pgbench_accounts_pkey notes; do
  read -r db node blocks < <(psql_ -F ' ' -c "SELECT (SELECT oid FROM pg_database WHERE datname = current_database()), pg_relation_filenode('$rel'), pg_relation_size('$rel') / 8192")
  ours=$(python3 -c "import json,sys; r=json.load(open('$demo/rels.json'))['relations']; print(next((x['nblocks'] for x in r if x['db']==$db and x['rel']==$node and x['fork']==0), 'missing'))")
  printf '   %-22s %12s %12s\n' "$rel" "$blocks" "$ours"
done

echo "== 6. GetPage@LSN over the pagestream protocol: pagectl bench getpage (2 clients x depth 8, 5 s)"
"$bin/pagectl" bench getpage --server "127.0.0.1:$ps_port" --http "127.0.0.1:$http_port" --tenant "$tenant" --timeline "$timeline" \
  --clients 2 --depth 8 --duration 5 2>&1 | sed 's/^/   /'

echo "== 7. time travel: the LSN of the moment noted in step 4 (get_lsn_by_timestamp), a branch there"
found=$(curl -sf "$api/v1/tenant/$tenant/timeline/$timeline/get_lsn_by_timestamp?timestamp=$earlier_time")
branch_lsn=$(echo "$found" | python3 -c 'import json,sys; print(json.load(sys.stdin)["lsn"])')
echo "   $earlier_time -> $found"
branch=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
curl -sf -X POST "$api/v1/tenant/$tenant/timeline" \
  -d "{\"new_timeline_id\": \"$branch\", \"ancestor_timeline_id\": \"$timeline\", \"ancestor_start_lsn\": \"$branch_lsn\"}" >/dev/null
echo "   branch $branch created at $branch_lsn (no page copied); its fullbackup, booted by vanilla PostgreSQL 15:"
"$bin/pagectl" fullbackup --server "127.0.0.1:$ps_port" --tenant "$tenant" --timeline "$branch" -o "$demo/past.tar" 2>&1 | sed 's/^/   /'
mkdir -p "$demo/past"
tar -xf "$demo/past.tar" -C "$demo/past"
chmod 700 "$demo/past"
[ "$(id -u)" = 0 ] && chown -R postgres "$demo/past"
past_port=$(free_port)
as_pg "$pgbin/pg_ctl" -D "$demo/past" -l "$demo/past.log" -o "-p $past_port -k $demo" -w start >/dev/null
past_started=1
psql_past() { psql -X -q -At -h 127.0.0.1 -p "$past_port" -U postgres -d postgres "$@"; }
printf '   %-34s %s\n' "" "notes | history | sum(abalance)"
printf '   %-34s %s\n' "primary now ($target)" "$(psql_ -F ' | ' -c "$state_sql")"
printf '   %-34s %s\n' "booted branch ($branch_lsn)" "$(psql_past -F ' | ' -c "$state_sql")"
printf '   %-34s %s\n' "recorded on the primary back then" "$earlier_state"

echo "== 8. the branch is writable: write on its new primary, stream that WAL into the branch (PUT wal_source)"
psql_past -c "INSERT INTO notes SELECT g, 'written on the branch' FROM generate_series(20001, 25000) g"
curl -sf -X PUT "$api/v1/tenant/$tenant/timeline/$branch/wal_source" \
  -d "{\"wal_source\": \"host=127.0.0.1 port=$past_port user=postgres\"}" >/dev/null
branch_target=$(psql_past -c "SELECT pg_current_wal_lsn()")
for _ in $(seq 600); do
  blast=$(curl -sf "$api/v1/tenant/$tenant/timeline/$branch" | python3 -c 'import json,sys; print(json.load(sys.stdin)["last_record_lsn"])')
  [ "$(lsn_num "$blast")" -ge "$(lsn_num "$branch_target")" ] && break
  sleep 0.1
done
notes_node=$(psql_ -c "SELECT pg_relation_filenode('notes')")
nblocks() { curl -sf "$api/v1/tenant/$tenant/timeline/$1/relations" | python3 -c "import json,sys; print(next(x['nblocks'] for x in json.load(sys.stdin)['relations'] if x['rel']==$notes_node and x['fork']==0))"; }
printf '   %-12s %-20s %-20s %s\n' timeline ancestor_lsn last_record_lsn "notes blocks"
printf '   %-12s %-20s %-20s %s\n' main "-" "$last" "$(nblocks "$timeline")"
printf '   %-12s %-20s %-20s %s\n' branch "$branch_lsn" "$blast" "$(nblocks "$branch")"
as_pg "$pgbin/pg_ctl" -D "$demo/past" -m fast -w stop >/dev/null
past_started=""

echo "== 9. checkpoint: flush the in-memory layer to layer files"
curl -sf -X PUT "$api/v1/tenant/$tenant/timeline/$timeline/checkpoint"; echo
curl -sf "$api/v1/tenant/$tenant/timeline/$timeline" | python3 -m json.tool
curl -sf "$api/v1/tenant/$tenant/timeline/$timeline/layer" | python3 -c '
import json,sys
d=json.load(sys.stdin); print("   %d layer files, %.1f MB" % (d["count"], d["total_bytes"]/1e6))'

accounts=$(psql_ -c "SELECT pg_relation_filenode('pgbench_accounts')")
layer=$(ls -S "$demo/pageserver/tenants/$tenant/timelines/$timeline" | grep "_${accounts}_0_0__" | head -n 1)
echo "== 10. pagectl layer inspect (a layer of pgbench_accounts)"
"$bin/pagectl" layer inspect "$demo/pageserver/tenants/$tenant/timelines/$timeline/$layer"
echo
echo "== metrics (excerpt)"
curl -sf "$api/metrics" | grep -E '^pageserver_wal_records_ingested_total' | sed 's/{tenant_id="[0-9a-f]*",timeline_id="[0-9a-f]*",/{/' | head -n 12
echo "demo done; cleaning up"
