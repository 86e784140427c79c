#!/bin/bash
# A host's link cut while its `install` runs and restored ~20 s later (other
# hosts upgrade beside it): that host ends upgraded or rolled back, never half,
# `status` says which, and the disk, /hub/api and audit agree with it.  A
# second host of a later stage gets the same cut plus its sshd sessions killed
# while cut, so its session is surely lost: the controller must reconnect and
# reconcile with the agent's journal.
# usage: test-link-cut.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
HF_TEST_HUBS=${HF_TEST_HUBS:-8}
up_fleet
CUT=${HF_CUT_HOST:-hub02}
CUT2=${HF_CUT_HOST2:-hub06}
CUT_FOR=${HF_CUT_SECONDS:-20}
truth
users_before=$(jq_ "$W/truth.json" '{h: v["users"] for h, v in d.items()}')

step "upgrade to $NEW; cut $CUT's link when it reaches install"
: > "$W/ev.ndjson"
"$HUBFLEET" upgrade -i "$INV" --to "$NEW" --stages 1,50%,100% --parallel 4 --reconnect 300 --state "$STATE" \
  --events "$W/ev.ndjson" > "$W/up.out" 2>&1 &
pid=$!
# The host is in install once the agent reports it (its debug line "install
# for rollout", carried in the NDJSON with step "install").
in_install() { grep -q "\"host\":\"$1\".*\"step\":\"install\"" "$W/ev.ndjson"; }
wait_for 600 in_install "$CUT"
check "$CUT reached install" in_install "$CUT"
fleet fault cut "$CUT"
t_cut=$SECONDS
echo "# cut $CUT"
sleep "$CUT_FOR"
fleet fault restore "$CUT"
echo "# restored $CUT after $((SECONDS - t_cut))s"
wait_for 900 in_install "$CUT2"
check "$CUT2 reached install" in_install "$CUT2"
fleet fault cut "$CUT2"
t_cut=$SECONDS
fleet fault kill-sessions "$CUT2"
echo "# cut $CUT2 and killed its sshd sessions"
sleep "$CUT_FOR"
fleet fault restore "$CUT2"
echo "# restored $CUT2 after $((SECONDS - t_cut))s"
end=$((SECONDS + 1500))
while [ $SECONDS -lt $end ] && kill -0 "$pid" 2>/dev/null; do sleep 1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; bad "the rollout did not end within 1500s"; fi
wait "$pid"; rc=$?
check "upgrade ended (rc=$rc: 0 upgraded or 3 rolled back)" test $rc -eq 0 -o $rc -eq 3
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
hf status "$RID" --state "$STATE" > "$W/status.txt"
truth
for c in "$CUT" "$CUT2"; do
  cs=$(host_status "$W/st.json" "$c")
  echo "# $c ended: $cs"
  check "$c is upgraded or rolled_back, never half (status: $cs)" test "$cs" = upgraded -o "$cs" = rolled_back
  check "$c: status says which" grep -qE "^  $c +[0-9]+ +$cs " "$W/status.txt"
  grep -E "$c: (lost|reconnected|rolling)" "$W/up.out" | sed 's/^/# /'
  if [ "$cs" = upgraded ]; then want=$NEW wrev=$NEWREV; else want=$BASE wrev=$BASEREV; fi
  check "$c: on disk $want in both envs, alembic $wrev" on_disk "$c" "$want" "$wrev"
  check "$c: /hub/api $want, /hub/health 200" healthy_on "$c" "$want"
  hf audit -i "$INV" --limit "$c" --expect "$want" --json > "$W/audit-$c.json" 2>/dev/null
  check "$c: audit --limit $c --expect $want exits 0" test $? -eq 0
done
check "$CUT2: the controller saw its session lost and reconnected" \
  eval 'grep -q "^$CUT2: lost during" "$W/up.out" && grep -q "^$CUT2: reconnected" "$W/up.out"'
grep "\"host\":\"$CUT2\"" "$W/ev.ndjson" | grep -E '"event":"(host|journal|step)"' | cut -c1-220 | sed 's/^/# /'
for h in "${HUBLIST[@]}"; do
  [ "$h" = "$CUT" ] || [ "$h" = "$CUT2" ] && continue
  s=$(host_status "$W/st.json" "$h")
  if [ "$s" = upgraded ]; then
    check "$h: upgraded, on disk $NEW, /hub/api $NEW" eval 'on_disk "$h" "$NEW" "$NEWREV" && healthy_on "$h" "$NEW"'
  else
    check "$h: $s: on disk $BASE, /hub/api $BASE" eval 'on_disk "$h" "$BASE" "$BASEREV" && healthy_on "$h" "$BASE"'
  fi
done
check "users kept on every hub" test "$(jq_ "$W/truth.json" '{h: v["users"] for h, v in d.items()}')" = "$users_before"
finish
