#!/bin/bash
# The rehearsal and the version-aware preflight on 3 real hubs.
# (iv) `upgrade --dry-run` prints, per host, the rehearsal's outcome (refuse
#      with the migration's error for bad-migration, pass for newer) and the
#      rule outcomes, and changes nothing.
# (i)  a rollout to bad-migration halts at the canary's rehearsal: no hub was
#      ever stopped (hub process ids and start times unchanged), every hub
#      answers /hub/api with the old version, nothing was journaled or backed
#      up, and `status` shows the canary failed with the migration's error.
# (iii) a rules file whose rule refuses (--rules): the canary is untouched and
#      status shows the refusal.
# (ii) a rollout to newer with the rehearsal: it passes, and the live
#      database's alembic revision after the real migration is the one each
#      host's rehearsal reported.
# usage: test-rehearse.sh HUBFLEET AGENT
HF_TEST_HUBS=${HF_TEST_HUBS:-3}
. "$(dirname "$0")/../upgrade/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
up_fleet
BADMIG=$(ver bad-migration); BADMIGREV=$(rev bad-migration)
check "fixture bad-migration listed by fleet versions" test -n "$BADMIG"

old_everywhere() {
  local h
  truth
  for h in "${HUBLIST[@]}"; do
    on_disk "$h" "$BASE" "$BASEREV" && api_is "$h" "$BASE" || return 1
  done
}
# no rehearsal left behind: the agent's private folders are gone
no_leftovers() {
  local h st
  for h in "${HUBLIST[@]}"; do
    st=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]]["hubfleet_state_dir"])' "$W/inv.json" "$h")
    if ls -d "$st"/rehears* 2>/dev/null | grep -q .; then echo "$h: left behind: $(ls -d "$st"/rehears*)" >&2; return 1; fi
  done
}

procs_snapshot > "$W/procs0"
check "every hub process is known" test "$(grep -c ' none' "$W/procs0")" -eq 0

step "(iv) dry run to $BADMIG and to $NEW"
hf upgrade -i "$INV" --to "$BADMIG" --dry-run --state "$STATE" > "$W/dry-bad.out" 2>&1
rc=$?
check "dry run to $BADMIG: exit 1 (hosts refused) (rc=$rc)" test $rc -eq 1
for h in "${HUBLIST[@]}"; do
  # the host's block: from its line to the next host line
  awk -v h="$h" '$1 == h { on = 1; print; next } on && /^  [a-z]/ && $1 != h { on = 0 } on' "$W/dry-bad.out" > "$W/dry-bad-$h.out"
  check "dry run: $h rehearsal refused with the migration's error" \
    grep -qE "refuse +rehearsal .*NOT NULL constraint failed" "$W/dry-bad-$h.out"
  check "dry run: $h rule outcomes printed (python-min-3 pass, schema-change warn)" \
    eval 'grep -qE "pass +python-min-3" "$W/dry-bad-$h.out" && grep -qE "warn +schema-change" "$W/dry-bad-$h.out"'
done
hf upgrade -i "$INV" --to "$NEW" --dry-run --state "$STATE" > "$W/dry-new.out" 2>&1
rc=$?
check "dry run to $NEW: exit 0 (rc=$rc)" test $rc -eq 0
check "dry run to $NEW: a passing rehearsal per host ($NEWREV)" \
  test "$(grep -cE "pass +rehearsal .*$NEWREV" "$W/dry-new.out")" -eq "${#HUBLIST[@]}"
check "dry runs left no rehearsal folder behind" no_leftovers

step "(i) rollout to bad-migration $BADMIG, stages 1,100%"
t0=$SECONDS
hf upgrade -i "$INV" --to "$BADMIG" --stages 1,100% --state "$STATE" > "$W/bad.out" 2> "$W/bad.err"
rc=$?
echo "# took $((SECONDS - t0))s"
check "exit 1: halted (rc=$rc)" test $rc -eq 1
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/bad.json"
check "rollout halted" test "$(jq_ "$W/bad.json" 'd["rollout"]["status"]')" = halted
check "canary hub01 failed" test "$(host_status "$W/bad.json" hub01)" = failed
check "its error is the migration's (rehearsal, NOT NULL constraint failed)" \
  eval 'jq_ "$W/bad.json" "[h[\"error\"] for h in d[\"hosts\"] if h[\"host\"]==\"hub01\"][0]" | grep -q "rehearsal.*NOT NULL constraint failed"'
hf status "$RID" --state "$STATE" > "$W/bad-status.out" 2>&1
check "hubfleet status shows it" grep -qE "hub01 .*failed.*NOT NULL constraint failed" "$W/bad-status.out"
check "only preflight ran on hub01" test "$(jq_ "$W/bad.json" 'sorted({s["step"] for s in d["steps"] if s["host"]=="hub01"})')" = '["preflight"]'
check "the preflight data holds the failed rehearsal" \
  test "$(jq_ "$W/bad.json" '[s["data"]["rehearsal"]["ok"] for s in d["steps"] if s["host"]=="hub01" and s["step"]=="preflight"][0]')" = False
# hosts of stage 2 were prepared meanwhile (preflight, stage: nothing that changes a hub)
check "no other host went past its preparation" test \
  "$(jq_ "$W/bad.json" 'sorted({s["step"] for s in d["steps"] if s["host"] != "hub01"} - {"preflight", "stage"})')" = '[]'
for h in "${HUBLIST[@]}"; do
  check "$h: never stopped (same hub pid and start time), no journal, no backup" untouched "$h" "$RID" "$W/procs0"
done
check "every hub still $BASE on disk and on /hub/api" old_everywhere
check "no rehearsal folder left behind" no_leftovers

step "(iii) a refusing rule (--rules $HERE/refuse-rules.json) to $NEW"
hf upgrade -i "$INV" --to "$NEW" --stages 1,100% --rules "$HERE/refuse-rules.json" --state "$STATE" > "$W/rule.out" 2> "$W/rule.err"
rc=$?
check "exit 1 (rc=$rc)" test $rc -eq 1
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/rule.json"
check "canary hub01 failed" test "$(host_status "$W/rule.json" hub01)" = failed
check "its error is the rule's refusal" \
  eval 'jq_ "$W/rule.json" "[h[\"error\"] for h in d[\"hosts\"] if h[\"host\"]==\"hub01\"][0]" | grep -q "fixture-python-9-99.*9.99"'
hf status "$RID" --state "$STATE" > "$W/rule-status.out" 2>&1
check "hubfleet status shows the refusal" grep -qE "hub01 .*failed.*fixture-python-9-99" "$W/rule-status.out"
for h in "${HUBLIST[@]}"; do
  check "$h: untouched (no journal: no backup, no stop; same hub process)" untouched "$h" "$RID" "$W/procs0"
done
check "every hub still $BASE" old_everywhere

step "(ii) rollout to newer $NEW with the rehearsal"
t0=$SECONDS
hf upgrade -i "$INV" --to "$NEW" --stages 1,100% --state "$STATE" > "$W/new.out" 2> "$W/new.err"
rc=$?
echo "# took $((SECONDS - t0))s"
check "exit 0 (rc=$rc)" test $rc -eq 0
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/new.json"
truth
for h in "${HUBLIST[@]}"; do
  reh=$(jq_ "$W/new.json" "[s['data'].get('rehearsal') for s in d['steps'] if s['host']=='$h' and s['step']=='preflight'][0]")
  echo "# $h rehearsal: $reh"
  check "$h: rehearsal passed ($BASEREV -> $NEWREV)" \
    test "$(jq_ "$W/new.json" "[[s['data']['rehearsal']['ok'], s['data']['rehearsal']['alembic_before'], s['data']['rehearsal']['alembic_after']] for s in d['steps'] if s['host']=='$h' and s['step']=='preflight'][0]")" = "[true, \"$BASEREV\", \"$NEWREV\"]"
  check "$h: the live db's revision is the one the rehearsal reported" \
    test "$(jq_ "$W/truth.json" "d['$h']['alembic']")" = \
         "$(jq_ "$W/new.json" "[s['data']['rehearsal']['alembic_after'] for s in d['steps'] if s['host']=='$h' and s['step']=='preflight'][0]")"
  check "$h: the migrate step agrees" \
    test "$(jq_ "$W/new.json" "[s['data']['alembic_after'] for s in d['steps'] if s['host']=='$h' and s['step']=='migrate'][0]")" = "$NEWREV"
  check "$h: $NEW on disk and /hub/api, healthy" eval 'on_disk "$h" "$NEW" "$NEWREV" && healthy_on "$h" "$NEW"'
  check "$h: downtime recorded" test "$(jq_ "$W/new.json" "[h['downtime_ms'] or 0 for h in d['hosts'] if h['host']=='$h'][0]")" -gt 0
done
check "no rehearsal folder left behind" no_leftovers
finish
