#!/bin/bash
# Issue 15: a mixed fleet, two supervisord hubs (their login owns the hub, no
# become) and two TLJH-shaped systemd hosts (operator login, become), in one
# inventory, upgraded in one rollout; `inventory check` shows each host's
# driving, and `audit` folds all four into one group by version.
# usage: test-mixed.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_sd 2 2
hf inventory check "$INV" > "$W/invcheck.txt" 2>&1
check "inventory check: supervisord hubs driven as their login" test \
  "$(grep -cE '^  driven +supervisord:jupyterhub through supervisorctl, as the SSH login, no sudo \(become off\)$' "$W/invcheck.txt")" -eq 2
check "inventory check: systemd hosts driven as root through sudo -n" test \
  "$(grep -cE '^  driven +systemd:jupyterhub through systemctl, as root through sudo -n \(become\)$' "$W/invcheck.txt")" -eq 2
hf audit -i "$INV" --json > "$W/audit0.json" 2>/dev/null
check "audit before: one group, 4 hosts on $BASE at $BASEREV" test \
  "$(jq_ "$W/audit0.json" '[(g["count"], g["hub"], g["alembic"]) for g in d["groups"]]')" = "[[4, \"$BASE\", \"$BASEREV\"]]"
step "upgrade all four to $NEW in one rollout"
t=$SECONDS
hf upgrade -i "$INV" --to "$NEW" --parallel 4 --no-rehearse --state "$STATE" > "$W/up.out" 2>&1
rc=$?
echo "# upgrade took $((SECONDS - t))s"
check "upgrade exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -20 "$W/up.out"
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
check "4 hosts upgraded" test "$(jq_ "$W/st.json" 'sorted(h["host"] for h in d["hosts"] if h["status"]=="upgraded")')" = \
  "$(printf '%s\n' "${HUBLIST[@]}" "${SYS[@]}" | $PY -c 'import json,sys; print(json.dumps(sorted(sys.stdin.read().split())))')"
for h in "${SYS[@]}"; do
  check "$h: on disk $NEW in both envs, alembic $NEWREV" test "$(hubver "$h" hub) $(hubver "$h" user) $(alembic "$h")" = "$NEW $NEW $NEWREV"
done
for h in "${HUBLIST[@]}" "${SYS[@]}"; do check "$h: /hub/api $NEW, healthy" healthy_on "$h" "$NEW"; done
hf audit -i "$INV" --expect "$NEW" --json > "$W/audit.json" 2>/dev/null
check "audit --expect $NEW exits 0" test $? -eq 0
check "audit folds supervisord and systemd hosts: one group, 4 hosts, $NEW, alembic $NEWREV" test \
  "$(jq_ "$W/audit.json" '[(g["count"], g["hub"], g["users"], g["alembic"]) for g in d["groups"]]')" = "[[4, \"$NEW\", [\"$NEW\"], \"$NEWREV\"]]"
finish
