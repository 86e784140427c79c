#!/bin/bash
# A host whose link is cut during --soak (its re-check cannot reach it): the
# rollout must not wedge. The lost re-check ends, past its reconnect
# deadline, as "needs attention" (one failure, within a budget of 1), stage 2
# then runs, and the rollout records the truth. Before, the re-check counter
# was never decremented on that path: stage 2 never ran and the rollout was
# recorded as done (or, on a terminal, hung).
# usage: test-soak-cut.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
HF_TEST_HUBS=2 NHUBS=2
up_fleet
procs_snapshot > "$W/procs.before"

step "upgrade to $NEW, stages 1,100%, --soak 6; cut hub01 while it soaks"
"$HUBFLEET" upgrade -i "$INV" --to "$NEW" --stages 1,100% --soak 6 --reconnect 10 --timeout 5 \
  --max-failures 1 --state "$STATE" > "$W/up.out" 2>&1 &
pid=$!
wait_for 300 grep -q "soaking" "$W/up.out"
check "stage 1 reached its soak" grep -q "soaking" "$W/up.out"
fleet fault cut hub01
t0=$SECONDS
# soak 6 s + a re-check that cannot connect (5 s per attempt) + 10 s of
# reconnect + stage 2 (one hub): a minute on a quiet machine; bounded.
end=$((SECONDS + 900))
while [ $SECONDS -lt $end ] && kill -0 "$pid" 2>/dev/null; do sleep 1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; bad "the rollout wedged: still running 900 s after the cut"; fi
wait "$pid"; rc=$?
took=$((SECONDS - t0))
fleet fault restore hub01
sed 's/^/# /' "$W/up.out" | tail -12
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
check "the rollout ended ${took}s after the cut (rc=$rc: 4, a host needs attention)" test "$rc" -eq 4
check "the re-check was lost, and given up at its reconnect deadline" grep -q "^hub01: lost during" "$W/up.out"
check "hub01 needs attention (lost during its re-check)" test "$(host_status "$W/st.json" hub01)" = needs_attention
check "stage 2 ran: hub02 upgraded" test "$(host_status "$W/st.json" hub02)" = upgraded
truth
check "hub02: on disk $NEW, /hub/api $NEW" eval 'on_disk hub02 "$NEW" "$NEWREV" && healthy_on hub02 "$NEW"'
rstatus=$(jq_ "$W/st.json" "d['rollout']['status'] if 'rollout' in d else d.get('status')")
check "the rollout is recorded as done (every stage ran), not paused or running ($rstatus)" test "$rstatus" = done
finish
