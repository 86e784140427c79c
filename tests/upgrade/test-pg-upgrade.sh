#!/bin/bash
# `hubfleet upgrade` on PostgreSQL hubs (fleet up --releases --hubs 0
# --pg-hubs 2, PostgreSQL 15 from Debian, credentials only in each hub
# login's ~/.pgpass):
# - the rehearsal migrates a scratch database (created from a dump, then
#   dropped), never the live one: 651f5419b74d -> 0eee8c825d24 predicted for
#   4.1.6, the live database untouched, no scratch database left;
# - bad-migration halts at the rehearsal, every hub untouched;
# - 3.0.0 -> 4.1.6: the backup is a pg_dump taken before the stop, its
#   checksum in the journal; the live alembic revision 0eee8c825d24 after;
#   `hubfleet rollback`: every table's dump equal to the one before;
# (bad-start and a SIGKILLed agent: test-pg-rollback.sh)
# - the password is in no output, state file, report, NDJSON or journal.
# usage: test-pg-upgrade.sh HUBFLEET AGENT
. "$(dirname "$0")/real-lib.sh"
up_real --hubs 0 --pg-hubs 2
check "fleet: 2 hubs, both on PostgreSQL" test "${#HUBLIST[@]}:${#PGLIST[@]}" = 2:2
NEW=4.1.6; NEWREV=$(rel_rev $NEW)
BADMIG=$(kind_ver bad-migration); BADSTART=$(kind_ver bad-start)
for h in "${HUBLIST[@]}"; do
  check "$h: starts on $BASE, alembic $BASEREV (PostgreSQL)" test "$(alembic_of "$h")" = "$BASEREV"
  db_dump "$h" > "$W/before-$h.sql"
  check "$h: its dump holds the users" grep -q '^COPY public.users ' "$W/before-$h.sql"
done
pg_passwords > "$W/passwords"
check "two passwords read from the hubs' ~/.pgpass" test "$(grep -c . "$W/passwords")" -eq 2

all_equal_before() { local h; for h in "${HUBLIST[@]}"; do dumps_equal "$h" "$W/before-$h.sql" || return 1; done; }
no_scratch() { [ -z "$(scratch_dbs)" ]; }
not_after() { [ -n "$1" ] && [ -n "$2" ] && [[ ! "$1" > "$2" ]]; }  # two UTC timestamps of the journal

step "dry run to $NEW: the rehearsal migrates a scratch copy"
hf upgrade -i "$INV" --to $NEW --dry-run --json --state "$STATE" > "$W/dry.json" 2> "$W/dry.err"
check "dry run exits 0" test $? -eq 0
for h in "${HUBLIST[@]}"; do
  reh=$(jq_ "$W/dry.json" "[[r['ok'], r['db_kind'], r['alembic_before'], r['alembic_after'], r.get('scratch_dropped')] for h in d['hosts'] if h['host']=='$h' for r in [h['preflight']['rehearsal']]][0]")
  check "$h: rehearsal on a scratch PostgreSQL copy, $BASEREV -> $NEWREV, dropped" test "$reh" = "[true, \"postgresql\", \"$BASEREV\", \"$NEWREV\", true]"
  check "$h: the live database still at $BASEREV" test "$(alembic_of "$h")" = "$BASEREV"
done
check "no scratch database left on the server" no_scratch
check "every live database's dump unchanged" all_equal_before

step "bad-migration ($BADMIG) halts at the rehearsal"
procs_snapshot > "$W/procs.txt"
hf_run badmig 1 upgrade -i "$INV" --to "$BADMIG" --stages 100%
err=$(host_field "$W/st-badmig.json" "${HUBLIST[0]}" error)
echo "#   $err" | cut -c1-240
check "the canary was refused by its rehearsal" bash -c '[[ $1 == *"rehearsal: upgrade-db to"*"failed on a copy"* ]]' _ "$err"
for h in "${HUBLIST[@]}"; do
  check "$h: untouched (no journal, no backup, same hub process)" untouched "$h" "$RID" "$W/procs.txt"
done
check "no scratch database left" no_scratch
check "every live database's dump unchanged" all_equal_before

step "upgrade to $NEW"
hf_run up 0 upgrade -i "$INV" --to $NEW --stages 100%
for h in "${HUBLIST[@]}"; do
  echo "# $h: hub downtime $(downtime_s "$W/st-up.json" "$h")s"
  check "$h: upgraded" test "$(host_field "$W/st-up.json" "$h" status)" = upgraded
  check "$h: live database at $NEWREV" test "$(alembic_of "$h")" = "$NEWREV"
  check "$h: groups.properties exists" has_column "$h" groups properties
  check "$h: /hub/api says $NEW, /hub/health 200" healthy_on "$h" $NEW
  bk=$(journal "$h" "$RID" | $PY -c 'import json,sys; b=[r for r in json.load(sys.stdin) if r["step"]=="backup" and r["state"]=="done"][-1]["detail"]["backup"]; print(b["db_kind"], b["db_file"], b["db_sha256"], b["alembic_revision"])')
  read -r kind file sum rev <<<"$bk"
  check "$h: the backup is a PostgreSQL dump at $BASEREV" test "$kind $rev" = "postgresql $BASEREV"
  check "$h: the dump's sha256 is the journal's" test "$(sha256sum "$file" | cut -d' ' -f1)" = "$sum"
  check "$h: the dump is pg_dump's, with the users' rows" grep -q '^COPY public.users ' "$file"
  check "$h: the backup finished before the stop began" not_after "$(jtime "$h" "$RID" backup done)" "$(jtime "$h" "$RID" stop begin)"
done

step "hubfleet rollback $RID"
hf_run rb 0 rollback "$RID" -i "$INV"
for h in "${HUBLIST[@]}"; do
  check "$h: every table's dump equals the one before the upgrade" dumps_equal "$h" "$W/before-$h.sql"
  check "$h: both environments on $BASE" envs_on "$h" $BASE
  check "$h: /hub/api says $BASE" wait_for 30 healthy_on "$h" $BASE
done

step "the password is nowhere hubfleet writes"
hf report "$RID" --state "$STATE" -o "$W/report.html" > /dev/null 2>&1
hf status --state "$STATE" --json > "$W/status-all.json" 2>&1
check "no password in outputs, NDJSON, status, report, state file, journals or backups" not leaks "$W/passwords"
check "no scratch database left" no_scratch
finish
