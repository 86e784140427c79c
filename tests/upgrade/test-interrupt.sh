#!/bin/bash
# Ctrl-C during stage 2, as an operator presses it: the first SIGINT starts
# nothing new, lets every host in flight finish its step (recorded), records
# the rollout as paused and says how to resume; nothing is left mid-step on
# any host; `hubfleet resume` then finishes every hub. Before, the controller
# vanished without a word.
# usage: test-interrupt.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
HF_TEST_HUBS=4 NHUBS=4
up_fleet

step "upgrade to $NEW, stages 1,100%; SIGINT once stage 2 installs"
: > "$W/ev.ndjson"
"$HUBFLEET" upgrade -i "$INV" --to "$NEW" --stages 1,100% --parallel 3 --state "$STATE" \
  --events "$W/ev.ndjson" > "$W/up.out" 2>&1 &
pid=$!
in_stage2_install() { grep -v '"host":"hub01"' "$W/ev.ndjson" | grep -q '"step":"install"'; }
wait_for 600 in_stage2_install
check "a stage-2 host reached install" in_stage2_install
kill -INT "$pid"
t0=$SECONDS
end=$((SECONDS + 300))
while [ $SECONDS -lt $end ] && kill -0 "$pid" 2>/dev/null; do sleep 0.5; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; bad "still running 300 s after SIGINT"; fi
wait "$pid"; rc=$?
sed 's/^/# /' "$W/up.out" | tail -12
RID=$(hf history --state "$STATE" --ids | head -1)
check "ended $((SECONDS - t0))s after SIGINT with exit 130 (rc=$rc)" test "$rc" -eq 130
check "said it was interrupted and finishing the steps in flight" grep -q "^interrupted: finishing the steps in flight" "$W/up.out"
check "said how to resume" grep -q "continue with 'hubfleet resume $RID'" "$W/up.out"
status_json "$RID" > "$W/st.json"
check "the rollout is recorded as paused" test "$(jq_ "$W/st.json" "d['rollout']['status']")" = paused
for h in "${HUBLIST[@]}"; do
  last=$(journal "$h" "$RID" | $PY -c 'import json,sys; r=json.load(sys.stdin); print(r[-1].get("state") if r else "none")')
  check "$h: no step left mid-way in its journal (last record: $last)" test "$last" != begin
done

step "resume finishes every hub"
hf resume "$RID" --state "$STATE" > "$W/resume.out" 2>&1
rc=$?
sed 's/^/# /' "$W/resume.out" | tail -7
check "resume exits 0 (rc=$rc)" test "$rc" -eq 0
status_json "$RID" > "$W/st2.json"
check "every hub keeps a downtime figure, also those stopped before the pause" \
  test "$(jq_ "$W/st2.json" "all(isinstance(h.get('downtime_ms'), int) and h['downtime_ms'] > 0 for h in d['hosts'])")" = True
truth
for h in "${HUBLIST[@]}"; do
  check "$h: on disk $NEW, /hub/api $NEW" eval 'on_disk "$h" "$NEW" "$NEWREV" && healthy_on "$h" "$NEW"'
done
finish
