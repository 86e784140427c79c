#!/bin/bash
# Issue 15: a release that cannot start, on two TLJH-shaped systemd hosts,
# stages 1,100%: the first host (the canary stage) fails at start and is rolled
# back through sudo and systemctl (its error in the unit's own words, from the
# journal: journalctl -u jupyterhub since the start, the hub's traceback line
# that only the journal holds), the rollout halts on its budget, and the other is untouched
# (same MainPID, no journal for the rollout).
# usage: test-bad-start.sh HUBFLEET AGENT
# (two hosts at the fleet's size; three with HF_TEST_SYS=3)
. "$(dirname "$0")/lib.sh"
up_sd "${HF_TEST_SYS:-2}"
for h in "${SYS[@]}"; do echo "$h $(mainpid "$h")"; done > "$W/pids0"
step "upgrade to $BADSTART, stages 1,100%"
t=$SECONDS
hf upgrade -i "$INV" --to "$BADSTART" --stages 1,100% --no-rehearse --health-timeout 60 --state "$STATE" > "$W/up.out" 2>&1
rc=$?
echo "# upgrade took $((SECONDS - t))s"
check "exit 1: halted (rc=$rc)" test $rc -eq 1
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
check "rollout halted" test "$(jq_ "$W/st.json" 'd["rollout"]["status"]')" = halted
C=$(jq_ "$W/st.json" '[h["host"] for h in d["hosts"] if h["stage"]==0][0]')
check "$C (stage 1) rolled back" test "$(host_field "$W/st.json" "$C" status)" = rolled_back
err=$(host_field "$W/st.json" "$C" error)
echo "# $C: $err"
check "$C: failed at start, in the unit's own words (journal)" eval \
  '[[ $err == *"start failed"* && $err == *"crashed while starting"* && $err == *"(systemd: "* ]]'
# The hub's traceback goes to systemd's journal only (no hubfleet_hub_log on a
# TLJH host): the error holds its last line, read with journalctl -u. The
# installed source has the raise, never "RuntimeError: ..." as printed.
TB="RuntimeError: hubfleet TEST BUILD bad-start: this release refuses to start"
check "$C: the error holds the hub's traceback line from the unit's journal ($TB)" eval '[[ $err == *"$TB"* ]]'
check "$C: journalctl -u jupyterhub on the host has that line" eval 'rsh "$C" journalctl -u jupyterhub --no-pager -o cat | grep -qF "$TB"'
up=$(fleet path "$C" | $PY -c 'import json,sys; print(json.load(sys.stdin)["upper"])')
others=$(grep -rlF "$TB" "$up" 2>/dev/null | grep -v -e "^$up/var/log/journal/" -e "^$up/var/lib/hubfleet/hub-[^/]*/journal-$RID\$")
check "$C: no other file on the host holds it (only systemd's journal, and the agent's journal of the rollout): ${others:-none}" test -z "$others"
check "$C: back on $BASE in both envs, alembic $BASEREV" test "$(hubver "$C" hub) $(hubver "$C" user) $(alembic "$C")" = "$BASE $BASE $BASEREV"
check "$C: active under systemd, /hub/api $BASE, healthy" eval 'test "$(active "$C")" = active && healthy_on "$C" "$BASE"'
J=$(journal_of "$C" "$RID")
check "$C: the agent's journal records the rollback" grep -aq '"step":"rollback"' "$J"
# hosts of stage 2 may have been prepared meanwhile (a journal of stage records only)
only_staged() { local j; j=$(journal_of "$1" "$2"); [ -z "$j" ] || ! grep -ao '"step":"[a-z]*"' "$j" | grep -qv '"step":"stage"'; }
untouched_sys() {
  local st; st=$(host_field "$W/st.json" "$1" status)
  { [ "$st" = pending ] || [ "$st" = prepared ]; } &&
    [ "$(mainpid "$1")" = "$(awk -v h="$1" '$1 == h { print $2 }' "$W/pids0")" ] && only_staged "$1" "$RID"
}
for h in "${SYS[@]}"; do
  [ "$h" = "$C" ] && continue
  check "$h: pending or prepared, untouched: same MainPID, nothing journaled beyond its preparation" untouched_sys "$h"
  check "$h: still $BASE, healthy" healthy_on "$h" "$BASE"
done
finish
