#!/bin/bash
# Rollbacks of a PostgreSQL hub (fleet up --releases --hubs 0 --pg-hubs 1):
# - bad-start: the migration ran, the hub cannot start, the automatic
#   rollback restores the dump taken before the stop: every table's dump
#   equal to the one before, 3.0.0 answering;
# - the controller and the agent SIGKILLed in the middle of migrate
#   (upgrade-db to 4.1.6 held inside its migration by another session reading
#   the groups table), then `hubfleet rollback`: every table's dump equal to
#   the one before. (With the controller alive, it reconnects and runs the
#   interrupted migrate again, which PostgreSQL had rolled back: the hub ends
#   upgraded; that is the controller's business, not this test's.)
# - credentials from the hub's config (its db_url with the password, no
#   ~/.pgpass): a dry run's rehearsal works with them;
# - the password in no output, state file, report, NDJSON, journal or backup.
# usage: test-pg-rollback.sh HUBFLEET AGENT
. "$(dirname "$0")/real-lib.sh"
up_real --hubs 0 --pg-hubs 1
H=${PGLIST[0]}
check "fleet: one hub, on PostgreSQL" test "${#HUBLIST[@]}:$H" = 1:hub01
NEW=4.1.6; BADSTART=$(kind_ver bad-start)
check "$H: starts on $BASE, alembic $BASEREV" test "$(alembic_of "$H")" = "$BASEREV"
db_dump "$H" > "$W/before.sql"
check "$H: its dump holds the users" grep -q '^COPY public.users ' "$W/before.sql"
pg_passwords > "$W/passwords"
check "the password read from the hub's ~/.pgpass" test "$(grep -c . "$W/passwords")" -eq 1

step "bad-start ($BADSTART): the automatic rollback restores the database"
hf_run bs 3 upgrade -i "$INV" --to "$BADSTART" --max-failures 1 --no-rehearse
check "$H: rolled back" test "$(host_field "$W/st-bs.json" "$H" status)" = rolled_back
check "$H: the migration had run before the start failed (journal)" test -n "$(jtime "$H" "$RID" migrate done)"
check "$H: the rollback restored the dump (journal: rollback done)" test -n "$(jtime "$H" "$RID" rollback done)"
check "$H: every table's dump equals the one before" dumps_equal "$H" "$W/before.sql"
check "$H: /hub/api says $BASE" wait_for 30 healthy_on "$H" $BASE
grep -h 'restored; its dump equals' "$W/bs.ndjson" | head -1 | cut -c1-200 | sed 's/^/#   /'

step "controller and agent SIGKILLed in the middle of migrate, then hubfleet rollback"
HUSER=$(hv "$H" ansible_user)
DBURL=$(hv "$H" hubfleet_db)
# Another session of the hub's role reads groups in an open transaction (ACCESS SHARE: pg_dump
# and the hub go on, but the migration's ALTER TABLE groups waits for it). It holds until the
# rollback ends it (or `fleet down` stops the server).
fleet ssh "$H" -- psql -X -w -q -d "$DBURL" \
  -c "begin; select count(*) from groups; select pg_sleep(900); commit;" > /dev/null 2>&1 &
holder=$!
reader_held() { [ "$(psq "$H" "select count(*) from pg_stat_activity where query like '%pg_sleep(900)%' and state <> 'idle' and pid <> pg_backend_pid()")" = 1 ]; }
check "the reading session holds groups" wait_for 20 reader_held
hf upgrade -i "$INV" --to $NEW --max-failures 1 --no-rehearse --state "$STATE" \
   --events "$W/kill.ndjson" > "$W/kill.out" 2>&1 &
CTL=$!
killed=""
end=$((SECONDS + 400))
while [ $SECONDS -lt $end ] && kill -0 $CTL 2>/dev/null; do
  RID=$(hf history --state "$STATE" --ids 2>/dev/null | head -1)
  if [ -z "$killed" ] && [ -n "$(jtime "$H" "$RID" migrate begin 2>/dev/null)" ] && \
     [ "$(psq "$H" "select count(*) from pg_stat_activity where wait_event_type = 'Lock'")" -ge 1 ] 2>/dev/null; then
    kill -KILL $CTL
    # every agent process of the hub's login (the agent runs as ~/.cache/hubfleet/agent-HASH)
    killed=$(ps -u "$HUSER" -o pid=,comm= | awk '$2 ~ /^agent-/ { print $1 }' | tr '\n' ' ')
    echo "# migrate waiting on the lock: SIGKILL to the controller $CTL and the agent process(es) $killed"
    [ -n "$killed" ] && kill -KILL $killed
  fi
  sleep 0.2
done
wait $CTL 2>/dev/null
check "an agent was killed while upgrade-db waited inside the migration" test -n "$killed"
check "$H: the journal has migrate begun, never done" test -n "$(jtime "$H" "$RID" migrate begin)" -a -z "$(jtime "$H" "$RID" migrate done)"
# upgrade-db's alembic (its child, not the agent's) outlives the agent and still waits on the
# lock: the rollback must end it before restoring, or it would migrate under the restore.
orphan_waits() { [ "$(psq "$H" "select count(*) from pg_stat_activity where wait_event_type = 'Lock'")" -ge 1 ]; }
check "the killed agent's migration still waits in the database" orphan_waits
hf_run rb 0 rollback "$RID" -i "$INV"
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null   # our ssh client, gone already when the rollback ended its session
check "the rollback ended the leftover sessions first" grep -q "ended [0-9]* other session(s) of the hub's role" "$W/rb.ndjson"
check "no session of the hub's role waits any more" not orphan_waits
echo "#   $H: $(host_field "$W/st-rb.json" "$H" status), hub downtime $(downtime_s "$W/st-rb.json" "$H")s"
check "$H: rolled back" test "$(host_field "$W/st-rb.json" "$H" status)" = rolled_back
check "$H: every table's dump equals the one before" dumps_equal "$H" "$W/before.sql"
check "$H: alembic $BASEREV" test "$(alembic_of "$H")" = "$BASEREV"
check "$H: both environments on $BASE" envs_on "$H" $BASE
check "$H: /hub/api says $BASE" wait_for 30 healthy_on "$H" $BASE

step "credentials from the hub's config (db_url with the password) instead of ~/.pgpass"
CONF=$(hv "$H" hubfleet_config)
PGPASS=$(fleet ssh "$H" -- printenv HOME)/.pgpass
PW=$(head -1 "$W/passwords")
mv "$PGPASS" "$PGPASS.aside"
cp -p "$CONF" "$W/config.keep"
$PY - "$CONF" "$PW" <<'PYEOF'
import sys
p, pw = sys.argv[1], sys.argv[2]
s = open(p).read()
old = "c.JupyterHub.db_url = 'postgresql://hub01@"
assert old in s, "no db_url line"
open(p, "w").write(s.replace(old, "c.JupyterHub.db_url = 'postgresql://hub01:%s@" % pw))
PYEOF
no_pgpass_refused() { ! psq "$H" "select 1" > /dev/null 2>&1; }
check "without ~/.pgpass the server refuses the hub's login" no_pgpass_refused
hf upgrade -i "$INV" --to $NEW --dry-run --json --state "$STATE" --events "$W/cfgpw.ndjson" > "$W/cfgpw.json" 2> "$W/cfgpw.out"
check "dry run with the config's password exits 0" test $? -eq 0
check "the rehearsal ran on a scratch copy with it ($BASEREV -> $(rel_rev $NEW))" test \
  "$(jq_ "$W/cfgpw.json" "[[r['ok'], r['alembic_after'], r.get('scratch_dropped')] for h in d['hosts'] for r in [h['preflight']['rehearsal']]][0]")" = \
  "[true, \"$(rel_rev $NEW)\", true]"
cp -p "$W/config.keep" "$CONF"
mv "$PGPASS.aside" "$PGPASS"

step "the password is nowhere hubfleet writes"
hf report "$RID" --state "$STATE" -o "$W/report.html" > /dev/null 2>&1
hf status --state "$STATE" --json > "$W/status-all.json" 2>&1
check "no password in outputs, NDJSON, status, report, state file, journals or backups" not leaks "$W/passwords"
finish
