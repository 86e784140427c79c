#!/bin/bash
# Hubs in use (fleet up --user-servers: alice's and bob's real
# jupyterhub-singleuser servers and kernels, cleanup_servers = False, the proxy
# its own supervisord program) upgraded by `hubfleet upgrade` to the newer
# release.  Checks, each against the real thing:
#  - preflight's db.running_servers equals the count in each hub's database (2);
#  - the test's own probe, from inside each hub's namespace, GETs
#    /user/{alice,bob}/api through the proxy every 100 ms during the whole
#    rollout: no request fails, no gap of 1 s;
#  - the agent's probe (health's data) reports users_downtime_ms 0 for 2
#    servers with probes sent, and its figures agree with the test's;
#  - the same server and kernel processes after, alice's kernel still there,
#    and the upgraded hub finds them again (/hub/api/users);
#  - both hubs on the new release on disk.
# usage: test-user-servers.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
NHUBS=2
HERE=$(cd "$(dirname "$0")" && pwd)

step "fleet up --hubs $NHUBS --user-servers (fleet $HF_TEST_ID)"
t0=$SECONDS
fleet up --hubs "$NHUBS" --user-servers > /dev/null || { echo "FAIL - fleet up --user-servers"; exit 1; }
echo "# fleet up took $((SECONDS - t0))s"
W=$(fleet path state)/upgrade-test
mkdir -p "$W"
export XDG_STATE_HOME=$W/xdg
STATE=$W/state.db
INV=$W/inv.ini
fleet inventory > "$INV"
fleet inventory --json > "$W/inv.json"
mapfile -t HUBLIST < <(hosts_of hubs)
NEW=$(fleet versions --long | awk '$1 == "newer" { print $2 }')
NEWREV=$(fleet versions --long | awk '$1 == "newer" { print $3 }')
var() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]][sys.argv[3]])' "$W/inv.json" "$1" "$2"; }
tree() { dirname "$(dirname "$(var "$1" hubfleet_config)")"; }
st=$(fleet status) || true
for h in "${HUBLIST[@]}"; do
  check "$h: alice's and bob's servers answer (fleet status)" grep -q "^$h .* servers=alice:200,bob:200$" <<<"$st"
done

# the real count, from each hub's database
db_count() { sqlite3 "$(var "$1" hubfleet_db | sed 's|^sqlite:///||')" 'select count(*) from spawners where server_id is not null'; }
# the hub's view: names of users with a running server, per /hub/api/users
users_running() {
  local tok
  tok=$(cat "$(dirname "$(var "$1" hubfleet_config)")/fleet-service-token")
  fleet exec "$1" -- curl -sf -m 10 --noproxy '*' -H "Authorization: token $tok" "$(var "$1" hubfleet_health_url)/hub/api/users" |
    $PY -c 'import json, sys; print(" ".join(sorted(u["name"] for u in json.load(sys.stdin) if u["server"])))'
}
users_are() { [ "$(users_running "$1")" = "$2" ]; }
# server and kernel processes of a hub (pids, sorted)
procs() { { pgrep -f "$(tree "$1")/user-env/bin/jupyterhub-singleuser"; pgrep -f "$(tree "$1")/users/.*/kernel-"; } | sort -n | tr '\n' ' '; }
kernel_alive() {
  local tok k
  tok=$(cat "$(dirname "$(var "$1" hubfleet_config)")/fleet-service-token")
  k=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["kernels"][sys.argv[2]]["alice"])' "$(fleet path state)/state.json" "$1")
  fleet exec "$1" -- curl -sf -m 5 --noproxy '*' -H "Authorization: token $tok" "$(var "$1" hubfleet_health_url)/user/alice/api/kernels/$k" >/dev/null
}

declare -A PROCS REAL
for h in "${HUBLIST[@]}"; do
  REAL[$h]=$(db_count "$h")
  PROCS[$h]=$(procs "$h")
  check "$h: 2 servers running in its database" test "${REAL[$h]}" = 2
  check "$h: 2 servers + 2 kernels running (${PROCS[$h]})" test "$(wc -w <<<"${PROCS[$h]}")" = 4
  check "$h: the hub's API shows alice and bob running" users_are "$h" "alice bob"
  check "$h: alice's kernel is there" kernel_alive "$h"
done

step "the test's own probes (inside each namespace, every 100 ms)"
PSTOP=$W/probe.stop
rm -f "$PSTOP"
declare -A PPID_OF
for h in "${HUBLIST[@]}"; do
  fleet exec "$h" -- $PY "$HERE/user_probe.py" "$(var "$h" hubfleet_health_url)" "$PSTOP" "$W/probe-$h.json" alice bob &
  PPID_OF[$h]=$!
done
sleep 1

step "upgrade to $NEW"
t0=$SECONDS
hf upgrade -i "$INV" --to "$NEW" --state "$STATE" --events "$W/up.ndjson" > "$W/up.out" 2> "$W/up.err"
rc=$?
echo "# upgrade took $((SECONDS - t0))s"
cat "$W/up.out"
check "upgrade exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -30 "$W/up.err"
sleep 1
touch "$PSTOP"
for h in "${HUBLIST[@]}"; do wait "${PPID_OF[$h]}"; done
RID=$(hf history --state "$STATE" --ids | head -1)
hf status "$RID" --state "$STATE" --json --steps > "$W/st.json"

step "what the test's probes saw"
for h in "${HUBLIST[@]}"; do
  echo "# $h: $(cat "$W/probe-$h.json" 2>/dev/null)"
  check "$h: test probe: no request failed" jq_ "$W/probe-$h.json" 'exit(0 if d["failed"] == 0 else 1)'
  check "$h: test probe: ran across the rollout (>= 100 requests)" jq_ "$W/probe-$h.json" 'exit(0 if d["requests"] >= 100 else 1)'
  check "$h: test probe: no gap of 1 s for any server" jq_ "$W/probe-$h.json" 'exit(0 if max(d["longest_gap_ms"].values()) < 1000 else 1)'
done

step "what hubfleet reported"
stepdata() { jq_ "$W/st.json" "[s['data'] for s in d['steps'] if s['host'] == '$1' and s['step'] == '$2' and s['outcome'] == 'ok'][-1]$3"; }
for h in "${HUBLIST[@]}"; do
  echo "# $h: preflight db: $(stepdata "$h" preflight "['db']")"
  echo "# $h: health: $(stepdata "$h" health "")"
  check "$h: preflight's running_servers = the database's (${REAL[$h]})" test "$(stepdata "$h" preflight "['db']['running_servers']")" = "${REAL[$h]}"
  check "$h: stop: the probe was started for alice and bob" test "$(stepdata "$h" stop "['users_probe']['users']")" = '["alice", "bob"]'
  check "$h: health: users_downtime_ms = 0" test "$(stepdata "$h" health "['users_downtime_ms']")" = 0
  check "$h: health: the probe covered the whole downtime" test "$(stepdata "$h" health "['users_probe']['state']")" = complete
  check "$h: health: 2 servers probed" test "$(stepdata "$h" health "['users_probe']['servers']")" = 2
  check "$h: health: probes sent (>= 20) and all answered" jq_ "$W/st.json" \
    "exit(0 if [p['probes'] >= 20 and p['failed'] == 0 for p in [s['data']['users_probe'] for s in d['steps'] if s['host'] == '$h' and s['step'] == 'health' and s['outcome'] == 'ok']][-1:] == [True] else 1)"
done

step "after"
truth
for h in "${HUBLIST[@]}"; do
  check "$h: on $NEW at $NEWREV on disk" on_disk "$h" "$NEW" "$NEWREV"
  check "$h: the same server and kernel processes" test "$(procs "$h")" = "${PROCS[$h]}"
  check "$h: alice's kernel is still there" kernel_alive "$h"
  check "$h: $NEW finds alice's and bob's servers (/hub/api/users)" wait_for 30 users_are "$h" "alice bob"
  check "$h: still 2 servers in its database" test "$(db_count "$h")" = 2
  check "$h: no agent or probe left on the host" wait_for 10 not pgrep -u "$(var "$h" ansible_user)" -f hubfleet-agent
done
finish
