#!/bin/bash
# baseline -> newer on 8 hubs with --stages 1,50%,100% --parallel 4: every hub
# on the new version in both environments with the new alembic revision (seen
# by audit and, independently, on disk and through /hub/api); status and
# history show every step; audit --expect exits 0.  Then `hubfleet rollback`:
# every hub back on the baseline with its database equal to the backup.
# usage: test-upgrade-rollback.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_fleet

truth
for h in "${HUBLIST[@]}"; do
  check "$h: starts on $BASE at $BASEREV" on_disk "$h" "$BASE" "$BASEREV"
done
users_before=$(jq_ "$W/truth.json" '{h: v["users"] for h, v in d.items()}')

step "upgrade to $NEW, stages 1,50%,100%, parallel 4"
t0=$SECONDS
hf upgrade -i "$INV" --to "$NEW" --stages 1,50%,100% --parallel 4 --state "$STATE" \
   --events "$W/up.ndjson" > "$W/up.out" 2> "$W/up.err"
rc=$?
echo "# upgrade took $((SECONDS - t0))s"
check "upgrade exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -30 "$W/up.out" "$W/up.err"
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
check "rollout $RID is done" test "$(jq_ "$W/st.json" 'd["rollout"]["status"]')" = done
check "8 hosts upgraded" test "$(jq_ "$W/st.json" 'sum(h["status"]=="upgraded" for h in d["hosts"])')" = "$NHUBS"
check "stages: 1, 3, 4 hosts" test "$(jq_ "$W/st.json" '[sum(h["stage"]==s for h in d["hosts"]) for s in range(3)]')" = "[1, 3, 4]"
check "canary hub01 alone in stage 1" test "$(jq_ "$W/st.json" '[h["host"] for h in d["hosts"] if h["stage"]==0]')" = '["hub01"]'
# stage order: every stage-2 host started after the canary finished, every stage-3 host after stage 2 finished
check "stages ran in order" $PY - "$W/st.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
by = {}
for h in d["hosts"]:
    by.setdefault(h["stage"], []).append(h)
for s in (1, 2):
    if min(h["started"] for h in by[s]) < max(h["finished"] for h in by[s - 1]):
        sys.exit("stage %d started before stage %d ended" % (s + 1, s))
EOF
check "at most 4 hosts at once (stage 3 is 4 hosts wide)" $PY - "$W/st.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
ev = sorted([(h["started"], 1) for h in d["hosts"]] + [(h["finished"], -1) for h in d["hosts"]], key=lambda e: (e[0], e[1]))
cur = peak = 0
for _, k in ev:
    cur += k; peak = max(peak, cur)
sys.exit(0 if 1 <= peak <= 4 else "peak %d" % peak)
EOF
check "status --json: every host has all 8 steps ok, in order" $PY - "$W/st.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
want = ["preflight", "stage", "backup", "stop", "install", "migrate", "start", "health"]
for h in d["hosts"]:
    # a host prepared ahead of its stage re-checks with a second stage
    got = list(dict.fromkeys(s["step"] for s in d["steps"] if s["host"] == h["host"] and s["outcome"] == "ok"))
    if got != want:
        sys.exit("%s: %s" % (h["host"], got))
EOF
hf status "$RID" --state "$STATE" --steps > "$W/status.txt"
check "status --steps lists 8 x 7 ok steps" test "$(grep -cE '^  hub0[1-8] +(preflight|backup|stop|install|migrate|start|health) +ok ' "$W/status.txt")" -eq $((NHUBS * 7))
check "status shows the rollout done" grep -q "^rollout $RID  target $NEW  status done" "$W/status.txt"
hf history --state "$STATE" > "$W/history.txt"
check "history lists the rollout, done, 8 hosts, 0 failed" grep -qE "^$RID .* $NEW +done +$NHUBS +0$" "$W/history.txt"
check "events: 8 'upgraded' host events" test "$(grep -c '"event":"host".*"text":"upgraded"' "$W/up.ndjson")" -eq "$NHUBS"
check "every host recorded a downtime" test "$(jq_ "$W/st.json" 'sum(isinstance(h.get("downtime_ms"), int) and h["downtime_ms"] > 0 for h in d["hosts"])')" = "$NHUBS"

step "the truth after the upgrade"
hf audit -i "$INV" --expect "$NEW" --json > "$W/audit.json" 2> "$W/audit.err"
rc=$?
check "audit --expect $NEW exits 0 (rc=$rc)" test $rc -eq 0
check "audit: one group, 8 hosts, hub and users $NEW, alembic $NEWREV" test \
  "$(jq_ "$W/audit.json" '[(g["count"], g["hub"], g["users"], g["alembic"]) for g in d["groups"]]')" = "[[$NHUBS, \"$NEW\", [\"$NEW\"], \"$NEWREV\"]]"
truth
for h in "${HUBLIST[@]}"; do
  check "$h: on disk $NEW in both envs, alembic $NEWREV, users kept" on_disk "$h" "$NEW" "$NEWREV"
  check "$h: /hub/api says $NEW, /hub/health 200" healthy_on "$h" "$NEW"
done
check "users kept on every hub" test "$(jq_ "$W/truth.json" '{h: v["users"] for h, v in d.items()}')" = "$users_before"

step "rollback $RID"
t0=$SECONDS
hf rollback "$RID" --state "$STATE" > "$W/rb.out" 2> "$W/rb.err"
rc=$?
echo "# rollback took $((SECONDS - t0))s"
check "rollback exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -30 "$W/rb.out" "$W/rb.err"
status_json "$RID" > "$W/st2.json"
check "rollout is rolled_back" test "$(jq_ "$W/st2.json" 'd["rollout"]["status"]')" = rolled_back
check "8 hosts rolled_back" test "$(jq_ "$W/st2.json" 'sum(h["status"]=="rolled_back" for h in d["hosts"])')" = "$NHUBS"
# A host's downtime is the rollout's whole: the upgrade's plus the rollback's.
check "every host's downtime grew by the rollback's" "$PY" - "$W/st.json" "$W/st2.json" <<'EOF2'
import json, sys
a = {h["host"]: h.get("downtime_ms") for h in json.load(open(sys.argv[1]))["hosts"]}
b = {h["host"]: h.get("downtime_ms") for h in json.load(open(sys.argv[2]))["hosts"]}
bad = [h for h in a if not (isinstance(b.get(h), int) and isinstance(a[h], int) and b[h] > a[h] + 500)]
sys.exit("downtime not grown: %s" % {h: (a[h], b.get(h)) for h in bad} if bad else 0)
EOF2
check "the rollback summary shows the grown downtime" "$PY" - "$W/rb.out" "$W/st2.json" <<'EOF2'
import json, re, sys
out = open(sys.argv[1]).read()
for h in json.load(open(sys.argv[2]))["hosts"]:
    m = re.search(r"^  %s +\d+ +rolled_back +([0-9.]+)s" % re.escape(h["host"]), out, re.M)
    if not m or abs(float(m.group(1)) * 1000 - h["downtime_ms"]) > 100:
        sys.exit("%s: summary %s, state %s" % (h["host"], m and m.group(1), h["downtime_ms"]))
EOF2
hf audit -i "$INV" --expect "$BASE" --json > "$W/audit2.json" 2>/dev/null
check "audit --expect $BASE exits 0" test $? -eq 0
truth
for h in "${HUBLIST[@]}"; do
  check "$h: on disk $BASE in both envs, alembic $BASEREV" on_disk "$h" "$BASE" "$BASEREV"
  check "$h: /hub/api says $BASE, /hub/health 200" healthy_on "$h" "$BASE"
  # the backup's checksum, as the state recorded it and as the journal recorded it
  st_sum=$(jq_ "$W/st.json" "[h['backup']['backup']['db_sha256'] for h in d['hosts'] if h['host']=='$h'][0]")
  journal "$h" "$RID" > "$W/j-$h.json"
  j_sum=$(jq_ "$W/j-$h.json" "[r['detail']['backup']['db_sha256'] for r in d if r['step']=='backup' and r['state']=='done'][-1]")
  j_rb=$(jq_ "$W/j-$h.json" "[r['detail'].get('db_sha256') for r in d if r['step']=='rollback' and r['state']=='done'][-1]")
  live=$(jq_ "$W/truth.json" "d['$h']['db_sha256']")
  check "$h: live db sha256 = backup's (state $st_sum, journal $j_sum, rollback $j_rb)" \
    test -n "$st_sum" -a "$live" = "$st_sum" -a "$live" = "$j_sum" -a "$live" = "$j_rb"
  bfile=$(jq_ "$W/st.json" "[h['backup']['backup']['db_file'] for h in d['hosts'] if h['host']=='$h'][0]")
  check "$h: the backup file itself still has that checksum" test "$(sha256sum < "$bfile" | cut -d' ' -f1)" = "$st_sum"
done
check "users kept after rollback" test "$(jq_ "$W/truth.json" '{h: v["users"] for h, v in d.items()}')" = "$users_before"
finish
