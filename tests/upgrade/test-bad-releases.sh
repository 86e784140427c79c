#!/bin/bash
# The bad releases on 8 hubs.
# bad-start, default budget 0: the canary fails, is rolled back to a healthy
# old hub, the rollout halts with the budget at 0; the 7 other hosts were never
# touched (no journal, no backup for this rollout; hub process unchanged).
# bad-health, --max-failures 2 (--parallel 1, so "the third failure" is exact:
# with more hosts in flight, those already started finish too): the rollout
# stops after the third failure; each failed host is healthy on the old version.
# usage: test-bad-releases.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_fleet

# old_and_healthy HOST: baseline on disk in both envs, /hub/api and /hub/health
old_and_healthy() { on_disk "$1" "$BASE" "$BASEREV" && healthy_on "$1" "$BASE"; }

procs_snapshot > "$W/procs0"
check "every hub process is known" test "$(grep -c ' none' "$W/procs0")" -eq 0

step "bad-start $BADSTART, stages 1,50%,100%, parallel 4, budget 0"
t0=$SECONDS
hf upgrade -i "$INV" --to "$BADSTART" --stages 1,50%,100% --parallel 4 --health-timeout 30 --state "$STATE" \
   > "$W/bs.out" 2> "$W/bs.err"
rc=$?
echo "# took $((SECONDS - t0))s"
check "exit 1: halted (rc=$rc)" test $rc -eq 1
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/bs.json"
check "rollout halted" test "$(jq_ "$W/bs.json" 'd["rollout"]["status"]')" = halted
check "budget 0, used 1" test "$(jq_ "$W/bs.json" '[d["rollout"]["budget"], d["rollout"]["failures"]]')" = "[0, 1]"
check "canary hub01 rolled_back" test "$(host_status "$W/bs.json" hub01)" = rolled_back
check "its error names start or health" grep -qE "^  hub01 .*(start|health) failed" "$W/bs.out"
# the others were prepared meanwhile at most (preflight, stage: their hubs untouched)
check "7 others pending or prepared" test "$(jq_ "$W/bs.json" 'sum(h["status"] in ("pending", "prepared") for h in d["hosts"])')" = 7
check "no other host went past its preparation" test \
  "$(jq_ "$W/bs.json" 'sorted({s["step"] for s in d["steps"] if s["host"] != "hub01"} - {"preflight", "stage"})')" = '[]'
truth
check "hub01: old version on disk, /hub/api $BASE, health 200" old_and_healthy hub01
journal hub01 "$RID" > "$W/bs-j1.json"
check "hub01: journal shows the rollback done" test "$(jq_ "$W/bs-j1.json" '[r["state"] for r in d if r["step"]=="rollback"][-1:]')" = '["done"]'
check "hub01: live db equals its backup" test "$(jq_ "$W/truth.json" 'd["hub01"]["db_sha256"]')" = \
  "$(jq_ "$W/bs.json" '[h["backup"]["backup"]["db_sha256"] for h in d["hosts"] if h["host"]=="hub01"][0]')"
for h in "${HUBLIST[@]:1}"; do
  check "$h: untouched (no journal, no backup, same hub process)" untouched "$h" "$RID" "$W/procs0"
  check "$h: still $BASE and healthy" old_and_healthy "$h"
done
hf resume "$RID" --state "$STATE" > "$W/bs-resume.out" 2>&1
check "a halted rollout is not resumed (exit 2)" test $? -eq 2

step "bad-health $BADHEALTH, --max-failures 2, --parallel 1, --health-timeout 20"
procs_snapshot > "$W/procs1"
t0=$SECONDS
hf upgrade -i "$INV" --to "$BADHEALTH" --stages 1,50%,100% --parallel 1 --max-failures 2 --health-timeout 20 \
   --state "$STATE" > "$W/bh.out" 2> "$W/bh.err"
rc=$?
echo "# took $((SECONDS - t0))s"
check "exit 1: halted (rc=$rc)" test $rc -eq 1
RID2=$(hf history --state "$STATE" --ids | head -1)
check "a new rollout id" test "$RID2" != "$RID"
status_json "$RID2" > "$W/bh.json"
check "rollout halted" test "$(jq_ "$W/bh.json" 'd["rollout"]["status"]')" = halted
check "budget 2, used 3" test "$(jq_ "$W/bh.json" '[d["rollout"]["budget"], d["rollout"]["failures"]]')" = "[2, 3]"
check "hub01..hub03 rolled back, nobody else touched (pending or prepared)" test \
  "$(jq_ "$W/bh.json" '[h["host"] for h in d["hosts"] if h["status"] not in ("pending", "prepared")]')" = '["hub01", "hub02", "hub03"]'
check "all three rolled_back" test "$(jq_ "$W/bh.json" 'sum(h["status"]=="rolled_back" for h in d["hosts"])')" = 3
check "each failed on health" test "$(jq_ "$W/bh.json" 'sum("health" in (h["error"] or "") for h in d["hosts"])')" = 3
check "halted right after the third failure (summary says so)" grep -q "failure budget exceeded (3 failed, budget 2)" "$W/bh.out"
truth
for h in hub01 hub02 hub03; do
  check "$h: healthy on $BASE (disk, /hub/api, /hub/health)" old_and_healthy "$h"
done
for h in "${HUBLIST[@]:3}"; do
  check "$h: untouched by $RID2" untouched "$h" "$RID2" "$W/procs1"
done
hf audit -i "$INV" --expect "$BASE" > "$W/audit.out" 2>&1
check "audit --expect $BASE exits 0 at the end" test $? -eq 0
finish
