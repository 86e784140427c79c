#!/bin/bash
# A systemd host with The Littlest JupyterHub's layout (fleet up
# --systemd-hubs 1): a real systemd (systemd-nspawn on an overlay of /) with
# its own machine-id, network and sshd; jupyterhub.service as root with the
# proxy as its own unit; reached over ssh as an operator who has passwordless
# sudo and no write access under /opt/tljh.  Checks the host as an operator
# sees it, one upgrade by hand through sudo + systemctl (3.0.0 -> 4.1.6, the
# real migration checked in the live db), and that `down` leaves nothing.
. "$(dirname "$0")/lib.sh"

step "wheels, up --hubs 0 --systemd-hubs 1 (fleet $HF_TEST_ID)"
fleet wheels >/dev/null
t0=$SECONDS
fleet up --hubs 0 --systemd-hubs 1
echo "# fleet up --hubs 0 --systemd-hubs 1 took $((SECONDS - t0))s"
H=sys01
STATE=$(fleet path state)
check "status: all up" fleet status
check "inventory: $H in [tljh]" test "$(hosts_of tljh)" = $H
check "inventory: hubfleet_service=systemd:jupyterhub" test "$(hostvar $H hubfleet_service)" = systemd:jupyterhub
check "inventory: hubfleet_become=true" test "$(hostvar $H hubfleet_become)" = true
check "inventory: hubfleet_hub_env=/opt/tljh/hub" test "$(hostvar $H hubfleet_hub_env)" = /opt/tljh/hub
check "inventory: hubfleet_user_envs=/opt/tljh/user" test "$(hostvar $H hubfleet_user_envs)" = /opt/tljh/user
check "inventory: hubfleet_config" test "$(hostvar $H hubfleet_config)" = /opt/tljh/config/jupyterhub_config.py
check "inventory: hubfleet_db in /opt/tljh/state" test "$(hostvar $H hubfleet_db)" = sqlite:////opt/tljh/state/jupyterhub.sqlite
URL=$(hostvar $H hubfleet_health_url)
WHEELS=$(hostvar $H hubfleet_find_links)
OP=$(hostvar $H ansible_user)

r() { fleet ssh $H -- "$@"; }
s() { r sudo -n "$@"; }
api() { curl -sf -m 5 --noproxy '*' "$URL/hub/api"; }
api_is() { [ "$(api 2>/dev/null)" = "{\"version\": \"$1\"}" ]; }
is_active() { [ "$(s systemctl is-active "$1")" = active ]; }

step "the host as its operator sees it"
check "PID 1 is systemd" test "$(r ps -o comm= -p 1)" = systemd
check "systemctl is-system-running: running" test "$(s systemctl is-system-running)" = running
check "own machine-id" test "$(r cat /etc/machine-id)" != "$(cat /etc/machine-id)"
check "hostname $H" test "$(r hostname)" = $H
check "sudo -n works and says nothing (hostname resolves)" test "$(r sudo -n true 2>&1; echo rc=$?)" = rc=0
check "the login is $OP, not root, in no other group" test "$(r id -Gn)" = "$OP"
check "systemctl is-active jupyterhub (ssh + sudo)" is_active jupyterhub
check "the proxy is its own unit, active" is_active jupyterhub-proxy
check "jupyterhub.service runs as root" test "$(s systemctl show -p User --value jupyterhub)" = root
MAIN=$(s systemctl show -p MainPID --value jupyterhub)
check "the hub process is root's" test "$(r ps -o user= -p "$MAIN" | tr -d ' ')" = root
check "/hub/api answers 3.0.0 (from the controller's side)" api_is 3.0.0
check "/hub/health 200" test "$(curl -s -m 5 --noproxy '*' -o /dev/null -w '%{http_code}' "$URL/hub/health")" = 200
check "the hub log is in the journal" bash -c "'$HF_FLEET' --id '$HF_TEST_ID' ssh $H -- sudo -n journalctl -u jupyterhub --no-pager | grep 'JupyterHub is now running' >/dev/null"
check "TLJH layout: hub env, user env, config.d, state" \
  r test -x /opt/tljh/hub/bin/jupyterhub -a -x /opt/tljh/user/bin/jupyterhub-singleuser -a \
         -d /opt/tljh/config/jupyterhub_config.d -a -d /opt/tljh/state
check "db and cookie secret in /opt/tljh/state" s test -s /opt/tljh/state/jupyterhub.sqlite -a -s /opt/tljh/state/jupyterhub_cookie_secret
check "the operator can write nothing under /opt/tljh" test -z "$(r find /opt/tljh -writable 2>/dev/null)"
ls_state() { r ls /opt/tljh/state >/dev/null 2>&1; }
check "the operator cannot read /opt/tljh/state" not ls_state
check "everything under /opt/tljh is root's" test -z "$(s find /opt/tljh ! -user root)"
stop_unprivileged() { r systemctl stop jupyterhub >/dev/null 2>&1; }
check "without sudo the operator cannot stop the hub" not stop_unprivileged
check "still active" is_active jupyterhub

step "restart through systemctl: the proxy outlives the hub"
PROXY=$(s systemctl show -p MainPID --value jupyterhub-proxy)
check "systemctl restart jupyterhub" s systemctl restart jupyterhub
check "/hub/api answers again" wait_for 60 api_is 3.0.0
check "same proxy process" test "$(s systemctl show -p MainPID --value jupyterhub-proxy)" = "$PROXY"

step "3.0.0 -> 4.1.6 through sudo and systemctl"
alembic() { s sqlite3 /opt/tljh/state/jupyterhub.sqlite 'select version_num from alembic_version'; }
check "backup: sqlite3 .backup as root" s sqlite3 /opt/tljh/state/jupyterhub.sqlite ".backup /root/pre.sqlite"
check "systemctl stop jupyterhub" s systemctl stop jupyterhub
check "inactive" test "$(s systemctl is-active jupyterhub)" = inactive
check "proxy still active" is_active jupyterhub-proxy
check "pip install 4.1.6 into /opt/tljh/hub (as root)" s /opt/tljh/hub/bin/python -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" --upgrade jupyterhub==4.1.6
check "pip install 4.1.6 into /opt/tljh/user (as root)" s /opt/tljh/user/bin/python -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" --upgrade jupyterhub==4.1.6
rc=0; out=$(s env -C /opt/tljh/config PATH=/opt/tljh/hub/bin:/usr/bin:/bin /opt/tljh/hub/bin/jupyterhub upgrade-db 2>&1) || rc=$?
check "upgrade-db exits 0" test $rc = 0
check "ran 651f5419b74d -> 0eee8c825d24" grep -q 'Running upgrade 651f5419b74d -> 0eee8c825d24' <<<"$out"
check "live db: alembic 0eee8c825d24" test "$(alembic)" = 0eee8c825d24
check "systemctl start jupyterhub" s systemctl start jupyterhub
check "/hub/api says 4.1.6" wait_for 90 api_is 4.1.6
check "active" is_active jupyterhub

step "fault sudo: the ways an operator's sudo can fail"
sudo_says() { r sudo -n systemctl is-active jupyterhub 2>&1 || true; }
fleet fault sudo $H password
check "password: sudo -n says a password is required" grep -q 'a password is required' <<<"$(sudo_says)"
fleet fault sudo $H refuse
check "refuse: sudo says not allowed" grep -q 'is not allowed to execute' <<<"$(sudo_says)"
fleet fault sudo $H missing
check "missing: no sudo command" grep -q 'sudo: command not found' <<<"$(sudo_says)"
fleet fault sudo $H nopasswd
check "nopasswd: works again" test "$(sudo_says)" = active

step "down leaves nothing"
NSPAWN_PID=$(cat "$STATE/sys/$H/nspawn.pid")
SID=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["sid"])' "$STATE/state.json")
INIT=$(ps -o pid= --ppid "$NSPAWN_PID" | tr -d ' ' | head -1)
t0=$SECONDS
check "down" fleet down
echo "# fleet down took $((SECONDS - t0))s"
gone() { [ ! -e /proc/$1 ] || [ "$(awk '{ print $3 }' /proc/$1/stat 2>/dev/null)" = Z ]; }
check "systemd-nspawn $NSPAWN_PID gone" gone "$NSPAWN_PID"
check "the container's systemd $INIT gone" gone "$INIT"
check "no mount under the state dir" not grep -q " $STATE" /proc/self/mountinfo
check "no namespace" not bash -c "ip netns list | grep -q '^hf-$HF_TEST_ID-'"
check "no veth" not bash -c "ip -o link show | grep -q ' hf$SID-'"
check "no nspawn propagate dir" test ! -e "/run/systemd/nspawn/propagate/hf-$HF_TEST_ID-$H"
check "state dir gone" test ! -e "$STATE"

echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
