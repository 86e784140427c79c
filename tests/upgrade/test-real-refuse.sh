#!/bin/bash
# Releases a host cannot run are refused at preflight, before anything stops,
# on every kind of hub (fleet up --releases --hubs 2 --pg-hubs 1):
# - JupyterHub 5.4.6 requires pydantic>=2 and jupyter_events, which Debian 12
#   lacks: with a rules file that allows everything and a failure budget of
#   100% (so every host is tried), every host is refused, naming both
#   requirements (read from the wheel's own Requires-Dist, checked with each
#   environment's Python), and is untouched: no journal, no backup, the same
#   hub process (pid and start time); the dry run says the same.
# - a hub environment without the alembic console script (what upgrade-db
#   runs) is refused at preflight, naming it, hub untouched;
# - a PostgreSQL hub whose login has no credentials (~/.pgpass moved aside)
#   is refused at preflight's database check, naming libpq's complaint.
# usage: test-real-refuse.sh HUBFLEET AGENT
. "$(dirname "$0")/real-lib.sh"
up_real --hubs 2 --pg-hubs 1
check "fleet: 3 hubs, one on PostgreSQL" test "${#HUBLIST[@]}:${#PGLIST[@]}" = 3:1
cat > "$W/allow-all.json" <<'EOF'
{ "version": 1, "about": "test: no rule refuses anything", "rules": [] }
EOF
procs_snapshot > "$W/procs.txt"
check "every hub runs (a pid and a start time each)" test "$(awk 'NF == 3' "$W/procs.txt" | wc -l)" -eq 3

still_base() { envs_on "$1" "$BASE" && [ "$(alembic_of "$1")" = "$BASEREV" ]; }
names_both() { grep -qi 'jupyter.events' <<<"$1" && grep -q 'pydantic>=2' <<<"$1"; }

step "dry run to 5.4.6 with a rules file that allows everything"
hf upgrade -i "$INV" --to 5.4.6 --dry-run --rules "$W/allow-all.json" --state "$STATE" > "$W/dry.txt" 2>&1
rc=$?
hf upgrade -i "$INV" --to 5.4.6 --dry-run --json --rules "$W/allow-all.json" --state "$STATE" > "$W/dry.json" 2> "$W/dry.err"
check "dry run exits non-zero (rc=$rc)" test $rc -ne 0
for h in "${HUBLIST[@]}"; do
  reason=$(jq_ "$W/dry.json" "[h['preflight'].get('reason') for h in d['hosts'] if h['host']=='$h'][0]")
  check "$h: refused in the plan, naming jupyter_events and pydantic>=2" names_both "$reason"
  check "$h: the refusal is the requirement check of both environments" test \
    "$(jq_ "$W/dry.json" "sorted(c['name'].split(':')[0] for h in d['hosts'] if h['host']=='$h' for c in h['preflight']['checks'] if c['outcome']=='refuse')")" \
    = '["installable", "installable", "requires", "requires"]'
done
grep -m1 'refuse  requires:' "$W/dry.txt" | cut -c1-240 | sed 's/^/#   /'
check "the plan folds it for the fleet: requires:hub refused on 3 of 3 hosts" grep -Eq '^  refuse +requires:hub +on 3 of 3 hosts' "$W/dry.txt"
check "... and requires:user on 3 of 3 hosts" grep -Eq '^  refuse +requires:user +on 3 of 3 hosts' "$W/dry.txt"

step "upgrade to 5.4.6, every host tried (--max-failures 100%), rules allowing everything"
hf upgrade -i "$INV" --to 5.4.6 --rules "$W/allow-all.json" --max-failures 100% --state "$STATE" \
   --events "$W/up.ndjson" > "$W/up.out" 2>&1
rc=$?
check "upgrade exits non-zero (rc=$rc)" test $rc -ne 0
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
for h in "${HUBLIST[@]}"; do
  check "$h: failed at preflight" test "$(host_field "$W/st.json" "$h" status) $(host_field "$W/st.json" "$h" step)" = "failed preflight"
  check "$h: its error names jupyter_events and pydantic>=2" names_both "$(host_field "$W/st.json" "$h" error)"
  check "$h: untouched (no journal, no backup, same hub pid and start time)" untouched "$h" "$RID" "$W/procs.txt"
  check "$h: still $BASE on disk and at $BASEREV" still_base "$h"
  check "$h: /hub/api says $BASE" api_is "$h" "$BASE"
done
check "no step but preflight was sent" test "$(jq_ "$W/st.json" "sorted(set(s['step'] for s in d['steps']))")" = '["preflight"]'

step "a hub environment without the alembic console script"
H=${SQLLIST[1]}
HUBENV=$(hv "$H" hubfleet_hub_env)
mv "$HUBENV/bin/alembic" "$HUBENV/bin/alembic.aside"
hf upgrade -i "$INV" --to 4.1.6 --limit "$H" --state "$STATE" --events "$W/alembic.ndjson" > "$W/alembic.out" 2>&1
rc=$?
mv "$HUBENV/bin/alembic.aside" "$HUBENV/bin/alembic"
check "upgrade exits non-zero (rc=$rc)" test $rc -ne 0
RID2=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID2" > "$W/st2.json"
err=$(host_field "$W/st2.json" "$H" error)
echo "#   $err" | cut -c1-240
check "$H: failed at preflight" test "$(host_field "$W/st2.json" "$H" step)" = preflight
check "$H: the error names upgrade-db and $HUBENV/bin/alembic" bash -c '[[ $1 == *upgrade-db*alembic* && $1 == *"$2/bin/alembic"* ]]' _ "$err" "$HUBENV"
check "$H: untouched (no journal, no backup, same hub pid and start time)" untouched "$H" "$RID2" "$W/procs.txt"

step "a PostgreSQL hub whose login has no credentials"
P=${PGLIST[0]}
PGPASS=$(fleet ssh "$P" -- printenv HOME)/.pgpass
mv "$PGPASS" "$PGPASS.aside"
hf upgrade -i "$INV" --to 4.1.6 --dry-run --json --limit "$P" --state "$STATE" > "$W/nocred.json" 2> "$W/nocred.err"
rc=$?
mv "$PGPASS.aside" "$PGPASS"
reason=$(jq_ "$W/nocred.json" "[h['preflight'].get('reason') for h in d['hosts']][0]")
echo "#   $reason" | cut -c1-240
check "dry run exits non-zero (rc=$rc)" test $rc -ne 0
check "$P: refused at the database check, saying libpq had no password" grep -q 'database: PostgreSQL database .*no password supplied' <<<"$reason"
finish
