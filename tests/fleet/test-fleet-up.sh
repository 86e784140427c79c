#!/bin/bash
# The fleet itself: up, status, every hub's /hub/api from inside its namespace,
# strict-host-key ssh to every host, sudo for become, the faults, and a down
# that leaves nothing behind.
. "$(dirname "$0")/lib.sh"
HUBS=${HF_TEST_HUBS:-2}
SCALE=${HF_TEST_SCALE:-50}

step "up --hubs $HUBS --scale $SCALE (fleet $HF_TEST_ID)"
start=$SECONDS
fleet up --hubs "$HUBS" --scale "$SCALE"
echo "# up took $((SECONDS - start))s"
check "status: all up" fleet status
STATE=$(fleet path state)
KEY=$(fleet path key)
KH=$(fleet path known_hosts)

mapfile -t HUBLIST < <(hosts_of hubs)
mapfile -t SCALELIST < <(hosts_of scale)
check "inventory lists $HUBS hubs" test "${#HUBLIST[@]}" -eq "$HUBS"
check "inventory lists $SCALE scale hosts" test "${#SCALELIST[@]}" -eq "$SCALE"
check "canary group holds hub01" test "$(hosts_of canary)" = hub01
check "INI inventory has every variable" bash -c '
  inv=$("$1" --id "$2" inventory)
  for v in ansible_host ansible_port ansible_user ansible_ssh_private_key_file hubfleet_known_hosts \
           hubfleet_hub_env hubfleet_user_envs hubfleet_config hubfleet_db hubfleet_service \
           hubfleet_supervisor_config hubfleet_health_url hubfleet_hub_log hubfleet_installer \
           hubfleet_find_links hubfleet_backup_dir hubfleet_state_dir hubfleet_become; do
    grep -q "$v=" <<<"$inv" || { echo "missing $v" >&2; exit 1; }
  done' _ "$HF_FLEET" "$HF_TEST_ID"

api_in_ns() {  # HOST ADDR: /hub/api seen from inside the host's namespace
  fleet exec "$1" -- curl -sf -m 5 --noproxy '*' "http://$2:8000/hub/api"
}
for h in "${HUBLIST[@]}"; do
  addr=$(hostvar "$h" ansible_host)
  check "$h: /hub/api from inside its namespace says 3.0.0" \
    test "$(api_in_ns "$h" "$addr")" = '{"version": "3.0.0"}'
  check "$h: hub database holds users" test "$(fleet ssh "$h" -- sqlite3 "$(hostvar "$h" hubfleet_db | sed 's|^sqlite:///||')" 'select count(*) from users')" -ge 3
  check "$h: jupyterhub-3.0.0.dist-info in both environments" fleet ssh "$h" -- bash -c \
    'ls -d "$1"/lib/python3*/site-packages/jupyterhub-3.0.0.dist-info "$2"/lib/python3*/site-packages/jupyterhub-3.0.0.dist-info' \
    _ "$(hostvar "$h" hubfleet_hub_env)" "$(hostvar "$h" hubfleet_user_envs)"
done

sshq() {  # HOST KNOWN_HOSTS ARGV...: plain OpenSSH, strict host keys
  local h=$1 kh=$2; shift 2
  ssh -F /dev/null -i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
      -o UserKnownHostsFile="$kh" -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=5 \
      -o LogLevel=ERROR -l "$(hostvar "$h" ansible_user)" "$(hostvar "$h" ansible_host)" "$@"
}
step "ssh (key + known_hosts, StrictHostKeyChecking=yes) to every host"
fleet inventory --json > "$STATE/inv.json"
n_ok=0
while read -r host addr user; do
  got=$(ssh -F /dev/null -i "$KEY" -o IdentitiesOnly=yes -o BatchMode=yes -o StrictHostKeyChecking=yes \
        -o UserKnownHostsFile="$KH" -o GlobalKnownHostsFile=/dev/null -o ConnectTimeout=10 \
        -o LogLevel=ERROR -l "$user" "$addr" -- echo '$(id -un)' </dev/null) || got="ssh failed"
  if [ "$got" = "$user" ]; then n_ok=$((n_ok + 1)); else bad "ssh $host ($addr): $got"; fi
done < <($PY -c '
import json, sys
d = json.load(open(sys.argv[1]))["_meta"]["hostvars"]
for h, v in d.items():
    print(h, v["ansible_host"], v["ansible_user"])' "$STATE/inv.json")
check "ssh reached all $((HUBS + SCALE)) hosts" test "$n_ok" -eq $((HUBS + SCALE))
check "ssh without the host in known_hosts is refused" not sshq hub01 /dev/null true
check "become: sudo -n works for the hub user" test "$(fleet ssh hub01 -- sudo -n id -u)" = 0

step "faults"
last=${HUBLIST[-1]}
addr=$(hostvar "$last" ansible_host)
fleet fault cut "$last"
check "cut $last: ssh fails" not fleet ssh "$last" -- true
fleet fault restore "$last"
check "restore $last: ssh works again" wait_for 10 fleet ssh "$last" -- true
s1=${SCALELIST[0]}
fleet fault cut "$s1"
check "cut $s1: ssh fails" not fleet ssh "$s1" -- true
check "cut $s1: other scale hosts still answer" fleet ssh "${SCALELIST[1]}" -- true
fleet fault restore "$s1"
check "restore $s1: ssh works again" wait_for 10 fleet ssh "$s1" -- true

fleet ssh "$last" -- sleep 60 &
sleeper=$!
wait_for 10 fleet exec "$last" -- bash -c 'ss -Htn state established "( sport = :22 )" | grep -q .'
fleet fault kill-sessions "$last"
t0=$SECONDS
rc=0; wait "$sleeper" || rc=$?
check "kill-sessions: the open session ended ($rc) at once" test "$rc" -ne 0 -a $((SECONDS - t0)) -lt 10
check "kill-sessions: sshd still listens" fleet ssh "$last" -- true

fleet fault unknown-key "$last"
check "unknown-key: strict ssh refuses" not fleet ssh "$last" -- true
fleet fault trust "$last"
check "trust: ssh works again" fleet ssh "$last" -- true
fleet fault rekey "$last"
check "rekey: strict ssh refuses the changed key" not fleet ssh "$last" -- true
fleet fault trust "$last"
check "trust after rekey: ssh works" fleet ssh "$last" -- true

bdir=$(hostvar "$last" hubfleet_backup_dir)
fleet fault diskfull "$last"
check "diskfull: writing a backup fails" not fleet ssh "$last" -- \
  dd if=/dev/zero of="$bdir/x" bs=64k count=4 status=none
fleet fault diskfree "$last"
check "diskfree: writing a backup works" fleet ssh "$last" -- \
  dd if=/dev/zero of="$bdir/x" bs=64k count=4 status=none

fleet fault maxstartups scale harsh
check "maxstartups harsh: scale sshd runs with 3:50:6" grep -q '^MaxStartups 3:50:6$' "$STATE/sshd/scale/sshd_config"
check "maxstartups harsh: scale sshd still answers" fleet ssh "$s1" -- true
fleet fault maxstartups scale raised
check "maxstartups raised: scale ssh works" fleet ssh "$s1" -- true

conf=$(hostvar "$last" hubfleet_supervisor_config)
fleet fault slow-start "$last" 6
fleet ssh "$last" -- supervisorctl -c "$conf" restart jupyterhub >/dev/null
sleep 2
check "slow-start: hub not answering 2s after start" not api_in_ns "$last" "$addr"
check "slow-start: hub answers later" wait_for 60 api_in_ns "$last" "$addr"
fleet fault slow-start "$last" 0
check "status all up after the faults" fleet status

step "down leaves nothing behind"
# what to look for afterwards
users=$($PY -c 'import json,sys; print(" ".join(sorted({v["ansible_user"] for v in json.load(open(sys.argv[1]))["_meta"]["hostvars"].values()})))' "$STATE/inv.json")
uids=$(for u in $users; do id -u "$u"; done)
pids=$(cat "$STATE"/sshd/*/sshd.pid "$STATE"/hosts/*/run/*.pid 2>/dev/null | sort -u)
sid=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["sid"])' "$STATE/state.json")
fleet down
check "no namespace left" bash -c '! ip netns list | grep -q "^hf-$1-"' _ "$HF_TEST_ID"
check "no link left" bash -c '! ip -o link show | grep -q ": hf$1-"' _ "$sid"
check "no user left" bash -c 'for u in $1; do ! getent passwd "$u" >/dev/null || exit 1; done' _ "$users"
# (zombies do not count: they are gone, only not yet reaped by this container's pid 1)
live() { ps -o stat= "$@" 2>/dev/null | grep -vq '^Z'; }
check "no process left (pids)" bash -c "$(declare -f live)"'; for p in $1; do ! live -p "$p" || { ps -o pid,user,stat,args -p "$p" >&2; exit 1; }; done' _ "$pids"
check "no process of the fleet users left" bash -c "$(declare -f live)"'; for u in $1; do ! live -u "$u" || { ps -o pid,user,stat,args -u "$u" >&2; exit 1; }; done' _ "$uids"
check "no mount left" bash -c '! grep -q " $1" /proc/self/mounts' _ "$STATE"
check "no state dir left" test ! -e "$STATE"
check "no sudoers file left" test ! -e "/etc/sudoers.d/hubfleet-fleet-$sid"

echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
