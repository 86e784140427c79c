#!/bin/bash
# Issue 15: a release that starts but never gets healthy (/hub/health 503), on
# a TLJH-shaped systemd host: health fails, the host is rolled back through
# sudo and systemctl, back on the baseline with its database equal to the
# backup, active and healthy.
# usage: test-bad-health.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_sd 1
H=${SYS[0]}
step "upgrade to $BADHEALTH"
t=$SECONDS
hf upgrade -i "$INV" --to "$BADHEALTH" --no-rehearse --health-timeout 30 --state "$STATE" > "$W/up.out" 2>&1
rc=$?
echo "# upgrade took $((SECONDS - t))s"
check "exit 1: halted with the host rolled back (rc=$rc)" test $rc -eq 1 -o $rc -eq 3
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
check "$H rolled back" test "$(host_field "$W/st.json" "$H" status)" = rolled_back
err=$(host_field "$W/st.json" "$H" error)
echo "# $H: $err"
check "$H: failed at health, /hub/health 503 named" eval '[[ $err == *"health failed"* && $err == *"503"* ]]'
check "$H: the health step failed after install, migrate and start" test \
  "$(jq_ "$W/st.json" '[s["step"] + ":" + s["outcome"] for s in d["steps"] if s["step"] in ("start", "health")]')" = '["start:ok", "health:failed"]'
bsha=$(jq_ "$W/st.json" "d['hosts'][0]['backup']['backup']['db_sha256']")
check "$H: back on $BASE in both envs, alembic $BASEREV" test "$(hubver "$H" hub) $(hubver "$H" user) $(alembic "$H")" = "$BASE $BASE $BASEREV"
check "$H: live database equal to its backup ($bsha)" test -n "$bsha" -a "$(db_sha "$H")" = "$bsha"
check "$H: active, /hub/api $BASE, /hub/health 200" eval 'test "$(active "$H")" = active && healthy_on "$H" "$BASE"'
finish
