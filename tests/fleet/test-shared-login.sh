#!/bin/bash
# Several hubs of one machine under one login and one home (fleet up
# --shared-hubs 4): one address, one sshd, one user; each hub its own tree,
# supervisord and port; the inventory sets no per-host state or backup dir
# (so whatever an agent keeps by default lands in the one shared home).
# Checks the hosts and that the hubs are independent: stopping one leaves
# the others running.
. "$(dirname "$0")/lib.sh"

step "up --hubs 0 --shared-hubs 4 (fleet $HF_TEST_ID)"
t0=$SECONDS
fleet up --hubs 0 --shared-hubs 4
echo "# fleet up --hubs 0 --shared-hubs 4 took $((SECONDS - t0))s"
check "status: all up" fleet status
check "inventory: [shared] holds shared01..04" test "$(hosts_of shared | tr '\n' ' ')" = "shared01 shared02 shared03 shared04 "
INV=$(fleet inventory --json)
hv() { $PY -c 'import json, sys; print(json.loads(sys.argv[1])["_meta"]["hostvars"][sys.argv[2]][sys.argv[3]])' "$INV" "$1" "$2"; }
all4() { local h; for h in shared01 shared02 shared03 shared04; do hv $h "$1"; done | sort -u | wc -l; }
check "one address" test "$(all4 ansible_host)" = 1
check "one login" test "$(all4 ansible_user)" = 1
check "four health URLs, four configs, four supervisord configs" \
  test "$(all4 hubfleet_health_url)$(all4 hubfleet_config)$(all4 hubfleet_supervisor_config)" = 444
no_dirs() { ! grep -E '"hubfleet_(state|backup)_dir"' >/dev/null <<<"$INV"; }
check "no hubfleet_state_dir / hubfleet_backup_dir in the inventory" no_dirs
HOMES=$(for h in shared01 shared02 shared03 shared04; do fleet ssh $h -- printenv HOME; done | sort -u)
check "one home over ssh for all four" test "$(wc -l <<<"$HOMES")" = 1
check "the home is writable by the login" fleet ssh shared02 -- test -w "$HOMES"
api_is() { [ "$(curl -sf -m 5 --noproxy '*' "$(hv $1 hubfleet_health_url)/hub/api" 2>/dev/null)" = "{\"version\": \"$2\"}" ]; }
for h in shared01 shared02 shared03 shared04; do
  check "$h answers 3.0.0 on its own port" api_is $h 3.0.0
done

step "the hubs are independent"
SUP3=$(hv shared03 hubfleet_supervisor_config)
fleet ssh shared03 -- supervisorctl -c "$SUP3" stop jupyterhub >/dev/null || true
check "shared03 stopped" not api_is shared03 3.0.0
for h in shared01 shared02 shared04; do check "$h still answers" api_is $h 3.0.0; done
fleet ssh shared03 -- supervisorctl -c "$SUP3" start jupyterhub >/dev/null || true
check "shared03 back" wait_for 90 api_is shared03 3.0.0

step "down"
STATE=$(fleet path state)
SID=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["sid"])' "$STATE/state.json")
t0=$SECONDS
check "down" fleet down
echo "# fleet down took $((SECONDS - t0))s"
check "no shared namespace" not bash -c "ip netns list | grep -q '^hf-$HF_TEST_ID-shared'"
check "no shared login" not getent passwd "hf$SID-shared"

echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
