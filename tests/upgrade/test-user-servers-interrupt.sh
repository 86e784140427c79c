#!/bin/bash
# The users' probe when its agent does not live from stop to health: a hub in
# use (fleet up --user-servers) is upgraded to the newer release with a slow
# start (fault slow-start), and the agent on the host is SIGKILLed while it
# waits for the hub to start.  The controller reconnects, a new agent finishes
# start and health.  Checks:
#  - the probe the first agent started ends with it (its process gone within
#    2 s, its figures say "interrupted");
#  - health (the new agent) reports users_probe.state "interrupted" and
#    users_downtime_ms null, never an invented 0; the summary shows '-';
#  - the users did not notice: the test's own probe, independent of the
#    agent's, saw every request answered; the same server and kernel
#    processes after, found again by the upgraded hub.
# usage: test-user-servers-interrupt.sh HUBFLEET AGENT
. "$(dirname "$0")/users-lib.sh"
up_users --hubs 1
H=${HUBLIST[0]}
LOGIN=$(hv "$H" ansible_user)
users_before
fleet fault slow-start "$H" 12 > /dev/null
probes_start

step "upgrade to $NEW; SIGKILL the agent during start"
t0=$SECONDS
upgrade_bg --to "$NEW"
# the rollout's journal on the host says when start has begun, and which
# agent (pid) runs it; stop's record names the probe it started
check "the start step begins" wait_for 600 journal_has "$H" start begin
sleep 1
journal "$H" "$RID" > "$W/journal1.json"
APID=$(jq_ "$W/journal1.json" '[x["pid"] for x in d if x["step"]=="start" and x["state"]=="begin"][-1]')
PPID_=$(jq_ "$W/journal1.json" '[x["detail"]["users_probe"]["pid"] for x in d if x["step"]=="stop" and x["state"]=="begin"][-1]')
echo "# agent pid $APID, probe pid $PPID_"
check "the probe runs (pid $PPID_, the login's)" test "$(stat -c %U "/proc/$PPID_" 2>/dev/null)" = "$LOGIN"
check "the agent runs (pid $APID)" kill -0 "$APID"
kill -KILL "$APID"
gone() { [ ! -e "/proc/$1" ] || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]; }
check "the probe ends with its agent (polls it every 100 ms; within 10 s)" wait_for 10 gone "$PPID_"
FIG=$(hv "$H" hubfleet_state_dir)/probe-$RID.json
check "its figures say interrupted" jq_ "$FIG" 'exit(0 if d["state"] == "interrupted" and d["probes"] > 0 else 1)'
wait "$CTL"
rc=$?
echo "# upgrade took $((SECONDS - t0))s"
sed 's/^/# /' "$W/up.out"
check "upgrade exits 0 after the reconnect (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -30 "$W/up.err"
check "the controller reconnected" grep -q "$H: reconnected" "$W/up.out"
fleet fault slow-start "$H" 0 > /dev/null
probes_stop
hf status "$RID" --state "$STATE" --json --steps > "$W/st.json"

step "what hubfleet reported"
echo "# $H: health: $(stepdata "$H" health "")"
check "health: users_probe.state is interrupted" test "$(stepdata "$H" health "['users_probe']['state']")" = interrupted
check "health: users_downtime_ms is null, not 0" test "$(stepdata "$H" health "['users_downtime_ms']")" = None
check "health: the probe's figures until then are kept" test "$(stepdata "$H" health "['users_probe']['probes'] > 0")" = True
check "status --json: no users' downtime for $H" test "$(jq_ "$W/st.json" "[h['users_downtime_ms'] for h in d['hosts'] if h['host'] == '$H'][0]")" = None
check "summary: users' downtime '-'" grep -qE "^  $H +[0-9]+ +upgraded +[0-9.]+s +- " "$W/up.out"
check "the new agent's event says why" event_line "$W/up.ndjson" "$H" "users' downtime not measured: probe interrupted"
users_after
finish
