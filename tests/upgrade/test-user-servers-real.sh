#!/bin/bash
# Users keep working through a real upgrade: a SQLite hub and a PostgreSQL hub
# in use (fleet up --releases --hubs 1 --pg-hubs 1 --user-servers: alice's and
# bob's servers and kernels, cleanup_servers = False, the proxy its own
# program), upgraded by `hubfleet upgrade` from 3.0.0 to JupyterHub's real
# 4.1.6 with its real migration 651f5419b74d -> 0eee8c825d24.  Checks:
#  - the running servers: preflight's db.running_servers on the SQLite hub and
#    the count the stop's probe read on both equal each database's (2);
#  - the test's own probe (inside each namespace, every 100 ms, through the
#    proxy) saw every request answered during the whole rollout;
#  - health: users_downtime_ms 0 on both, the probe complete; the summary
#    prints the hub's downtime and the users' 0.0s;
#  - after: both hubs on 4.1.6 with the migrated live database, the same
#    server and kernel processes, alice's kernel there, and 4.1.6 lists
#    alice and bob as running (/hub/api/users).
# usage: test-user-servers-real.sh HUBFLEET AGENT
. "$(dirname "$0")/users-lib.sh"
up_users --hubs 1 --pg-hubs 1
NEW=4.1.6
NEWREV=$(rel_rev "$NEW")
check "one SQLite and one PostgreSQL hub" test "${#SQLLIST[@]} ${#PGLIST[@]}" = "1 1"
users_before
probes_start

step "upgrade to JupyterHub's real $NEW (migration to $NEWREV)"
hf_run up 0 upgrade -i "$INV" --to "$NEW"
sed 's/^/# /' "$W/up.out" | tail -8
probes_stop
hf status "$RID" --state "$STATE" --json --steps > "$W/st.json"

step "what hubfleet reported"
for h in "${HUBLIST[@]}"; do
  echo "# $h: preflight db: $(stepdata "$h" preflight "['db']")"
  echo "# $h: stop: $(stepdata "$h" stop "['users_probe']")"
  check "$h: stop: the probe read ${REAL[$h]} running servers from the database" test "$(stepdata "$h" stop "['users_probe']['running_servers']")" = "${REAL[$h]}"
  check "$h: stop: the probe was started for alice and bob" test "$(stepdata "$h" stop "['users_probe']['users']")" = '["alice", "bob"]'
  check "$h: health: users_downtime_ms = 0" test "$(stepdata "$h" health "['users_downtime_ms']")" = 0
  check "$h: health: state complete" test "$(stepdata "$h" health "['users_probe']['state']")" = complete
  check "$h: health: 2 servers probed, none failed" test "$(stepdata "$h" health "['users_probe']['servers']")/$(stepdata "$h" health "['users_probe']['failed']")" = 2/0
  check "$h: summary: the hub's downtime and the users' 0.0s" grep -qE "^  $h +[0-9]+ +upgraded +[0-9.]+s +0\.0s" "$W/up.out"
done
for h in "${SQLLIST[@]}"; do
  check "$h: preflight's running_servers = the database's (${REAL[$h]})" test "$(stepdata "$h" preflight "['db']['running_servers']")" = "${REAL[$h]}"
done
users_after
finish
