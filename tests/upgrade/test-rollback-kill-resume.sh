#!/bin/bash
# Issue 13, item 3: the controller SIGKILLed during an automatic rollback, then
# `hubfleet resume`. The upgrade to the bad-health release fails its health
# check on the hub, the controller starts the rollback and is killed at once;
# the agent finishes the rollback on its own. A user signs up on the restored
# hub. Then resume: it must continue the rollback (not re-send the failed
# health step), find it done in the journal, and touch the hub no more: the
# host ends rolled_back, the journal gains no record, the hub process is the
# same, and the new user is still in the database.
# usage: test-rollback-kill-resume.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
NHUBS=${HF_TEST_HUBS:-1}
up_fleet
H=${HUBLIST[0]}
DB=$(jq_ "$W/inv.json" "d['_meta']['hostvars']['$H']['hubfleet_db'][len('sqlite:///'):]")

step "upgrade $H to $BADHEALTH (fails health); SIGKILL the controller once it rolls back"
"$HUBFLEET" upgrade -i "$INV" --to "$BADHEALTH" --state "$STATE" --events "$W/ev.ndjson" \
  --health-timeout 10 > "$W/ctl.out" 2>&1 &
pid=$!
killed=no
for _ in $(seq 1 1200); do
  if grep -q '"text":"rolling back' "$W/ev.ndjson" 2>/dev/null; then
    sleep 0.3   # the rollback request is on its way to the agent
    kill -KILL "$pid" 2>/dev/null && killed=yes
    break
  fi
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.1
done
wait "$pid" 2>/dev/null
check "controller SIGKILLed during the automatic rollback" test "$killed" = yes
[ "$killed" = yes ] || { tail -20 "$W/ctl.out"; finish; exit 1; }
RID=$(hf history --state "$STATE" --ids | head -1)
check "state: host recorded running, step rollback (the goal is durable)" $PY - "$STATE" "$RID" "$H" <<'EOF'
import sqlite3, sys
row = sqlite3.connect(sys.argv[1]).execute("SELECT status, step FROM hosts WHERE rollout=? AND host=?",
                                           (sys.argv[2], sys.argv[3])).fetchone()
sys.exit(0 if row == ("running", "rollback") else "row %s" % (row,))
EOF

step "the agent finishes the rollback without its controller"
rb_done() { journal "$H" "$RID" | $PY -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if r and r[-1]["step"]=="rollback" and r[-1]["state"]=="done" else 1)'; }
wait_for 300 rb_done
check "journal ends with rollback done" rb_done
check "$H healthy on $BASE again" healthy_on "$H" "$BASE"

step "a user signs up on the restored hub"
$PY - "$DB" <<'EOF'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("INSERT INTO users (name, admin, created, last_activity, cookie_id) VALUES "
          "('after-rollback', 0, datetime('now'), datetime('now'), 'hf13-after-rollback')")
c.commit()
EOF
check "the new user is in $DB" $PY -c "import sqlite3,sys; sys.exit(0 if sqlite3.connect('$DB').execute(\"SELECT count(*) FROM users WHERE name='after-rollback'\").fetchone()[0]==1 else 1)"
journal "$H" "$RID" > "$W/j-before.json"
hub_proc "$H" > "$W/proc-before"

step "resume"
"$HUBFLEET" resume "$RID" --state "$STATE" --events "$W/ev2.ndjson" > "$W/resume.out" 2>&1
rc=$?
echo "# resume exited $rc"; sed 's/^/#   /' "$W/resume.out" | tail -8
status_json "$RID" > "$W/st.json"
check "$H ends rolled_back" test "$(host_status "$W/st.json" "$H")" = rolled_back
check "resume sent no upgrade step (no health, no install) to $H" $PY - "$W/ev2.ndjson" "$W/st.json" "$H" <<'EOF'
import json, sys
steps = [s for s in json.load(open(sys.argv[2]))["steps"] if s["host"] == sys.argv[3]]
health = [s for s in steps if s["step"] == "health"]
# the one failed health of the upgrade; nothing after it but the rollback
sys.exit(0 if len(health) == 1 and not any(s["step"] in ("install", "migrate", "start", "stop") and s["outcome"] != "ok"
                                          for s in steps) else "steps %s" % [(s["step"], s["outcome"]) for s in steps])
EOF
journal "$H" "$RID" > "$W/j-after.json"
check "the hub's journal gained no record (the hub was not touched again)" cmp -s "$W/j-before.json" "$W/j-after.json"
check "the hub process is the same one" test "$(hub_proc "$H")" = "$(cat "$W/proc-before")"
check "the user who signed up after the rollback is still there" $PY -c "import sqlite3,sys; sys.exit(0 if sqlite3.connect('$DB').execute(\"SELECT count(*) FROM users WHERE name='after-rollback'\").fetchone()[0]==1 else 1)"
check "$H still healthy on $BASE" healthy_on "$H" "$BASE"
finish
