#!/bin/bash
# Four hubs of one machine under one login and one home, with an inventory
# that sets no per-host state or backup directory (docs/inventory.md only):
# one rollout upgrades them all, three at the same moment in stage 2, each
# hub with its own journal (named for its config path). Before, they shared
# one journal and stage 2 failed: "stale request: the journal of rollout ...
# already shows health, past backup".
# usage: test-shared-login.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
step "fleet up --hubs 0 --shared-hubs 4 (fleet $HF_TEST_ID)"
fleet up --hubs 0 --shared-hubs 4 > /dev/null || { echo "FAIL - fleet up"; exit 1; }
W=$(fleet path state)/upgrade-test
mkdir -p "$W"
export XDG_STATE_HOME=$W/xdg
STATE=$W/state.db
INV=$W/inv.ini
fleet inventory > "$INV"
NEW=$(fleet versions --long | awk '$1 == "newer" { print $2 }')
check "no state or backup directory in the inventory" not grep -qE 'hubfleet_(state|backup)_dir' "$INV"

step "upgrade the four to $NEW in one rollout (stages 1,100%, parallel 4)"
"$HUBFLEET" upgrade -i "$INV" --limit shared --to "$NEW" --stages 1,100% --parallel 4 --state "$STATE" \
  > "$W/up.out" 2>&1
rc=$?
sed 's/^/# /' "$W/up.out" | tail -9
check "the rollout exits 0 (rc=$rc)" test "$rc" -eq 0
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
for h in shared01 shared02 shared03 shared04; do
  check "$h upgraded" test "$(host_status "$W/st.json" "$h")" = upgraded
  url=$(fleet inventory --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["_meta"]["hostvars"][sys.argv[1]]["hubfleet_health_url"])' "$h")
  check "$h answers $NEW" test "$(curl -sf -m 5 --noproxy '*' "$url/hub/api")" = "{\"version\": \"$NEW\"}"
done
HOMEDIR=$(fleet ssh shared01 -- printenv HOME)
n=$(fleet ssh shared01 -- sh -c 'ls -d "$HOME"/.local/state/hubfleet/hub-*/journal-'"$RID" 2>/dev/null | wc -l)
check "four journals of this rollout in the one home, one per hub ($n)" test "$n" -eq 4
finish
