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
#    servers with probes sent, all answered; the summary prints it;
#  - the same server and kernel processes after, alice's kernel still there,
#    and the upgraded hub finds them again (/hub/api/users);
#  - both hubs on the new release on disk, no agent or probe left.
# usage: test-user-servers.sh HUBFLEET AGENT
. "$(dirname "$0")/users-lib.sh"
up_users --hubs 2
users_before
probes_start

step "upgrade to $NEW"
t0=$SECONDS
hf upgrade -i "$INV" --to "$NEW" --state "$STATE" --events "$W/up.ndjson" > "$W/up.out" 2> "$W/up.err"
rc=$?
echo "# upgrade took $((SECONDS - t0))s"
sed 's/^/# /' "$W/up.out"
check "upgrade exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -30 "$W/up.err"
probes_stop
RID=$(hf history --state "$STATE" --ids | head -1)
hf status "$RID" --state "$STATE" --json --steps > "$W/st.json"

step "what hubfleet reported"
for h in "${HUBLIST[@]}"; do
  echo "# $h: preflight db: $(stepdata "$h" preflight "['db']")"
  echo "# $h: health: $(stepdata "$h" health "")"
  check "$h: preflight's running_servers = the database's (${REAL[$h]})" test "$(stepdata "$h" preflight "['db']['running_servers']")" = "${REAL[$h]}"
  check "$h: stop: the probe was started for alice and bob" test "$(stepdata "$h" stop "['users_probe']['users']")" = '["alice", "bob"]'
  check "$h: health: users_downtime_ms = 0" test "$(stepdata "$h" health "['users_downtime_ms']")" = 0
  check "$h: health: the probe covered the whole downtime" test "$(stepdata "$h" health "['users_probe']['state']")" = complete
  check "$h: health: 2 servers probed" test "$(stepdata "$h" health "['users_probe']['servers']")" = 2
  check "$h: health: probes sent (>= 20)" test "$(stepdata "$h" health "['users_probe']['probes'] >= 20")" = True
  check "$h: health: none failed" test "$(stepdata "$h" health "['users_probe']['failed']")" = 0
  check "$h: summary: users' downtime 0.0s" grep -qE "^  $h +[0-9]+ +upgraded +[0-9.]+s +0\.0s" "$W/up.out"
  check "$h: the agent's event line in the NDJSON" event_line "$W/up.ndjson" "$h" "users' downtime 0 ms: 2 server(s)"
done
users_after
finish
