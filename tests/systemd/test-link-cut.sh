#!/bin/bash
# Issue 15: a TLJH-shaped systemd host's link cut while its `install` runs
# (through sudo, as root) and restored 20 s later: the host ends upgraded or
# rolled back, never half; status says which, and the disk, /hub/api, systemd
# and audit agree with it.
# usage: test-link-cut.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_sd 1
H=${SYS[0]}
step "upgrade to $NEW; cut $H's link when it reaches install"
: > "$W/ev.ndjson"
hf upgrade -i "$INV" --to "$NEW" --no-rehearse --reconnect 300 --state "$STATE" --events "$W/ev.ndjson" > "$W/up.out" 2>&1 &
pid=$!
in_install() { grep -q "\"host\":\"$1\".*\"step\":\"install\"" "$W/ev.ndjson"; }
wait_for 300 in_install "$H"
check "$H reached install" in_install "$H"
fleet fault cut "$H"
t_cut=$SECONDS
sleep "${HF_CUT_SECONDS:-20}"
fleet fault restore "$H"
echo "# restored $H after $((SECONDS - t_cut))s"
end=$((SECONDS + 600))
while [ $SECONDS -lt $end ] && kill -0 "$pid" 2>/dev/null; do sleep 1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; bad "the rollout did not end within 600s"; fi
wait "$pid"; rc=$?
check "upgrade ended (rc=$rc: 0 upgraded or 3 rolled back)" test $rc -eq 0 -o $rc -eq 3
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
cs=$(host_field "$W/st.json" "$H" status)
echo "# $H ended: $cs"
grep -E "$H: (lost|reconnected|rolling)" "$W/up.out" | sed 's/^/# /'
check "$H is upgraded or rolled_back, never half (status: $cs)" test "$cs" = upgraded -o "$cs" = rolled_back
if [ "$cs" = upgraded ]; then want=$NEW wrev=$NEWREV; else want=$BASE wrev=$BASEREV; fi
check "$H: on disk $want in both envs, alembic $wrev" test "$(hubver "$H" hub) $(hubver "$H" user) $(alembic "$H")" = "$want $want $wrev"
check "$H: active under systemd, /hub/api $want, healthy" eval 'test "$(active "$H")" = active && healthy_on "$H" "$want"'
hf audit -i "$INV" --expect "$want" > /dev/null 2>&1
check "audit --expect $want exits 0" test $? -eq 0
finish
