#!/bin/bash
# `hubfleet upgrade` to JupyterHub's real releases on SQLite hubs (fleet up
# --releases --hubs 2): the rehearsal predicts exactly the real migrations
# (none for 3.0.0 -> 3.1.1; 651f5419b74d -> 0eee8c825d24 for 3.0.0 -> 4.1.6)
# without touching the live databases; the upgrade to 4.1.6 runs that
# migration (checked in the live databases after), hubs healthy at 4.1.6 in
# both environments; then `hubfleet rollback` brings every hub back to 3.0.0
# from its backup, each database's dump equal to the one before the upgrade.
# usage: test-real-sqlite.sh HUBFLEET AGENT
. "$(dirname "$0")/real-lib.sh"
up_real --hubs 2
NEW=4.1.6; NEWREV=$(rel_rev $NEW)
check "fleet versions: release $NEW with head 0eee8c825d24" test "$NEWREV" = 0eee8c825d24
check "fleet versions: release 3.1.1 on 3.0.0's schema" test "$(rel_rev 3.1.1)" = "$BASEREV"

for h in "${HUBLIST[@]}"; do
  check "$h: starts on $BASE, alembic $BASEREV" test "$(alembic_of "$h")" = "$BASEREV"
  db_dump "$h" > "$W/before-$h.sql"
done

# rehearsal PLAN_JSON HOST: "ok before after" of the host's rehearsal
rehearsal() { jq_ "$1" "[' '.join(str(r.get(k)) for k in ('ok', 'alembic_before', 'alembic_after')) for h in d['hosts'] if h['host']=='$2' for r in [h['preflight'].get('rehearsal', {})]][0]"; }
# check_detail PLAN_JSON HOST NAME: the detail of one preflight check
check_detail() { jq_ "$1" "[c['outcome'] + ' ' + c['detail'] for h in d['hosts'] if h['host']=='$2' for c in h['preflight']['checks'] if c['name']=='$3'][0]"; }

step "dry run to 3.1.1: no migration predicted"
hf upgrade -i "$INV" --to 3.1.1 --dry-run --json --state "$STATE" > "$W/dry311.json" 2> "$W/dry311.err"
check "dry run exits 0" test $? -eq 0
for h in "${HUBLIST[@]}"; do
  check "$h: rehearsal 3.1.1: $BASEREV -> $BASEREV (no migration)" test "$(rehearsal "$W/dry311.json" "$h")" = "True $BASEREV $BASEREV"
done

step "dry run to $NEW: the real migration predicted"
hf upgrade -i "$INV" --to $NEW --dry-run --json --state "$STATE" > "$W/dry.json" 2> "$W/dry.err"
check "dry run exits 0" test $? -eq 0
for h in "${HUBLIST[@]}"; do
  check "$h: rehearsal $NEW: $BASEREV -> $NEWREV" test "$(rehearsal "$W/dry.json" "$h")" = "True $BASEREV $NEWREV"
  check "$h: the live database is untouched by the rehearsals (alembic $BASEREV)" test "$(alembic_of "$h")" = $BASEREV
  check "$h: same dump as before the dry runs" dumps_equal "$h" "$W/before-$h.sql"
done
check "the plan's rehearsal check says so" test "$(check_detail "$W/dry.json" hub01 rehearsal)" = \
  "pass upgrade-db to $NEW on a copy: alembic $BASEREV -> $NEWREV, integrity ok"
check "the plan warns of the schema change" grep -q '^warn ' <<<"$(check_detail "$W/dry.json" hub01 schema-change)"

step "upgrade to $NEW"
hf_run up 0 upgrade -i "$INV" --to $NEW
check "rollout $RID done" test "$(jq_ "$W/st-up.json" 'd["rollout"]["status"]')" = done
for h in "${HUBLIST[@]}"; do
  echo "# $h: hub downtime $(downtime_s "$W/st-up.json" "$h")s"
  check "$h: upgraded" test "$(host_field "$W/st-up.json" "$h" status)" = upgraded
  check "$h: live database at $NEWREV" test "$(alembic_of "$h")" = "$NEWREV"
  check "$h: groups.properties (the migration's column) exists" has_column "$h" groups properties
  check "$h: both environments hold only $NEW" envs_on "$h" $NEW
  check "$h: /hub/api says $NEW, /hub/health 200" healthy_on "$h" $NEW
  check "$h: the journal's migrate step saw $BASEREV -> $NEWREV" test \
    "$(journal "$h" "$RID" | $PY -c 'import json,sys; m=[r for r in json.load(sys.stdin) if r["step"]=="migrate" and r["state"]=="done"]; print(m[-1]["detail"]["alembic_before"], m[-1]["detail"]["alembic_after"])')" = "$BASEREV $NEWREV"
done

step "rollback of $RID: back to $BASE from the backups"
hf_run rb 0 rollback "$RID" -i "$INV"
for h in "${HUBLIST[@]}"; do
  check "$h: both environments hold only $BASE" envs_on "$h" $BASE
  check "$h: live database back at $BASEREV" test "$(alembic_of "$h")" = "$BASEREV"
  check "$h: its dump equals the one before the upgrade" dumps_equal "$h" "$W/before-$h.sql"
  check "$h: the rollback restored the backup's exact file (journal: same sha256)" $PY - "$(journal "$h" "$RID")" <<'EOF'
import json, sys
recs = json.loads(sys.argv[1])
bk = [r for r in recs if r["step"] == "backup" and r["state"] == "done"][-1]["detail"]["backup"]["db_sha256"]
rb = [r for r in recs if r["step"] == "rollback" and r["state"] == "done"][-1]["detail"]["db_sha256"]
sys.exit(0 if bk == rb else "backup %s, rollback %s" % (bk, rb))
EOF
  check "$h: /hub/api says $BASE, /hub/health 200" wait_for 30 healthy_on "$h" $BASE
done
finish
