#!/bin/bash
# The controller SIGKILLed while the agent is inside `migrate`, and resumed at
# once: the agent it lost still holds the host lock, so the resumed controller
# must wait for it (the journal's busy_pid) instead of queueing a second
# migrate behind the lock (which would run whenever it got the lock, even
# after a later controller moved on).  The journal then holds exactly one
# migrate, and the host ends upgraded.  (migrate: `jupyterhub upgrade-db`
# takes seconds; install is now a switch of staged copies, milliseconds.)
# usage: test-resume-busy.sh HUBFLEET AGENT
export HF_TEST_HUBS=1
. "$(dirname "$0")/lib.sh"
up_fleet
H=hub01

step "upgrade $H to $NEW; SIGKILL the controller as soon as migrate began"
: > "$W/ev.ndjson"
"$HUBFLEET" upgrade -i "$INV" --to "$NEW" --state "$STATE" --events "$W/ev.ndjson" > "$W/up.out" 2>&1 &
pid=$!
in_migrate() { grep -q "\"host\":\"$H\".*\"step\":\"migrate\"" "$W/ev.ndjson"; }
wait_for 600 in_migrate
check "$H reached migrate" in_migrate
kill -KILL "$pid"; wait "$pid" 2>/dev/null
# The lost agent goes on with its migrate (the step finishes and journals).
# Freeze it for a few seconds so that, however fast pip is on this machine,
# it still holds the host lock when the resume arrives.
APID=$(grep -o '"text":"agent pid [0-9]*: migrate' "$W/ev.ndjson" | tail -n 1 | grep -o '[0-9][0-9]*')
check "the lost agent's pid was announced" test -n "$APID"
check "the lost agent is still at work (frozen for 8 s)" kill -STOP "$APID"
( sleep 8; kill -CONT "$APID" 2>/dev/null ) &
thaw=$!
RID=$(hf history --state "$STATE" --ids | head -1)
journal "$H" "$RID" > "$W/j0.json"
check "migrate had begun and not finished at the kill" test \
  "$(jq_ "$W/j0.json" '[r["state"] for r in d if r["step"]=="migrate"]')" = '["begin"]'

step "resume at once"
timeout 900 "$HUBFLEET" resume "$RID" --state "$STATE" --events "$W/ev.ndjson" > "$W/resume.out" 2>&1
rc=$?
wait "$thaw" 2>/dev/null
check "resume exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -20 "$W/resume.out"
check "resume waited for the earlier agent" grep -q "^$H: an earlier agent (pid [0-9]*) is still changing the hub" "$W/resume.out"
journal "$H" "$RID" > "$W/j.json"
check "journal: exactly one migrate (begin, done)" test \
  "$(jq_ "$W/j.json" '[r["state"] for r in d if r["step"]=="migrate"]')" = '["begin", "done"]'
check "journal: every step once, in order, no rollback" test \
  "$(jq_ "$W/j.json" '[r["step"] for r in d if r["state"]=="done"]')" = '["stage", "backup", "stop", "install", "migrate", "start", "health"]'
status_json "$RID" > "$W/st.json"
check "$H upgraded" test "$(host_status "$W/st.json" "$H")" = upgraded
check "state keeps the installed versions reconciled from the journal" test \
  "$(jq_ "$W/st.json" 'sorted(v["jupyterhub"] for v in d["hosts"][0]["after"].values())')" = "[\"$NEW\", \"$NEW\"]"
truth
check "$H: on disk $NEW, alembic $NEWREV; /hub/api $NEW, health 200" eval 'on_disk "$H" "$NEW" "$NEWREV" && healthy_on "$H" "$NEW"'
finish
