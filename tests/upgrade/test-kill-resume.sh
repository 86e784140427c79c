#!/bin/bash
# The controller killed with SIGKILL at random moments of a rollout on 8 hubs
# (up to HF_KILLS=10 kills, each 1-8 s after the last start; after each kill
# `hubfleet resume`, itself killed on the next round), then a final resume to
# completion: every hub healthy on the target, the state agrees with audit, and
# no host ran a harmful step twice: one backup per host (same checksum in every
# journal record, taken on the old schema, the file unchanged), no rollback,
# users kept.  HF_KILL_SEED fixes the random delays (printed for reproduction).
# usage: test-kill-resume.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_fleet
KILLS=${HF_KILLS:-10}
SEED=${HF_KILL_SEED:-$$}
RANDOM=$SEED
echo "# kill delays from seed $SEED (HF_KILL_SEED=$SEED to repeat)"
truth
users_before=$(jq_ "$W/truth.json" '{h: v["users"] for h, v in d.items()}')

# dump_host HOST: its journal and its steps in the state, side by side in time
dump_host() {
  $PY - "$W/j-$1.json" "$W/st.json" "$1" <<'EOF'
import datetime, json, sys
for r in json.load(open(sys.argv[1])):
    print("#   journal %s %-9s %-5s pid %s" % (r["time"], r["step"], r["state"], r["pid"]))
for s in json.load(open(sys.argv[2]))["steps"]:
    if s["host"] == sys.argv[3]:
        t = lambda ms: datetime.datetime.utcfromtimestamp(ms / 1000).strftime("%H:%M:%S.%f")[:-3] if ms else "-"
        print("#   state   %s-%s %-9s %s %s" % (t(s["started"]), t(s.get("finished")), s["step"], s["outcome"], s.get("error") or ""))
EOF
  grep -E "^(hubfleet|rollout|$1)" "$W/ctl.out" | tail -n 60 | sed 's/^/#   ctl: /'
}

step "upgrade to $NEW with up to $KILLS SIGKILLs"
t0=$SECONDS
# 1-8 s: short enough that even a quiet machine, where the whole rollout
# takes under a minute, is killed ten times; random enough to land in every step
kill_rounds 8 upgrade -i "$INV" --to "$NEW" --stages 1,50%,100% --parallel 4
check "the controller was killed $KILLED time(s) (at least 5)" test "$KILLED" -ge 5
RID=$(hf history --state "$STATE" --ids | head -1)
final_resume "$RID" 1200
echo "# rollout over after $((SECONDS - t0))s"
status_json "$RID" > "$W/st.json"
check "rollout done" test "$(jq_ "$W/st.json" 'd["rollout"]["status"]')" = done
check "8 hosts upgraded" test "$(jq_ "$W/st.json" 'sum(h["status"]=="upgraded" for h in d["hosts"])')" = "$NHUBS"
check "state: every host has each of the 8 steps ok" $PY - "$W/st.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
want = {"preflight", "stage", "backup", "stop", "install", "migrate", "start", "health"}
bad = [h["host"] for h in d["hosts"]
       if {s["step"] for s in d["steps"] if s["host"] == h["host"] and s["outcome"] == "ok"} != want]
sys.exit("missing steps on %s" % bad if bad else 0)
EOF
grep -c '"event":"journal"' "$W/ev.ndjson" | sed 's/^/# steps reconciled from journals: /'

step "the state agrees with audit and with the disk"
hf audit -i "$INV" --expect "$NEW" --json > "$W/audit.json" 2>/dev/null
check "audit --expect $NEW exits 0" test $? -eq 0
check "state's installed versions = audit's, per host and env" $PY - "$W/st.json" "$W/audit.json" <<'EOF'
import json, sys
st, au = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
facts = {h["name"]: h["facts"] for h in au["hosts"]}
for h in st["hosts"]:
    after = h.get("after") or {}
    envs = {e["prefix"]: e["jupyterhub"] for e in facts[h["host"]]["envs"]}
    rec = {p: v.get("jupyterhub") for p, v in after.items()}
    if not rec or rec != envs:
        sys.exit("%s: state %s, audit %s" % (h["host"], rec, envs))
EOF
truth
for h in "${HUBLIST[@]}"; do
  check "$h: on disk $NEW, alembic $NEWREV; /hub/api $NEW, health 200" eval 'on_disk "$h" "$NEW" "$NEWREV" && healthy_on "$h" "$NEW"'
  journal "$h" "$RID" > "$W/j-$h.json"
  bfile=$(jq_ "$W/st.json" "[h['backup']['backup']['db_file'] for h in d['hosts'] if h['host']=='$h'][0]")
  check "$h: one backup: every journal record has the same checksum, taken on $BASEREV, file unchanged" \
    $PY - "$W/j-$h.json" "$BASEREV" "$bfile" <<'EOF'
import hashlib, json, sys
recs = json.load(open(sys.argv[1]))
done = [r["detail"]["backup"] for r in recs if r["step"] == "backup" and r["state"] == "done"]
if not done:
    sys.exit("no backup done")
sums = {b["db_sha256"] for b in done}
revs = {b["alembic_revision"] for b in done}
real = hashlib.sha256(open(sys.argv[3], "rb").read()).hexdigest()
if len(sums) != 1 or revs != {sys.argv[2]} or real not in sums:
    sys.exit("backups %s revs %s file %s" % (sums, revs, real))
EOF
  check "$h: no rollback ran, and no step began after health done" $PY - "$W/j-$h.json" <<'EOF'
import json, sys
recs = json.load(open(sys.argv[1]))
if any(r["step"] == "rollback" for r in recs):
    sys.exit("rollback in journal")
hd = [i for i, r in enumerate(recs) if r["step"] == "health" and r["state"] == "done"]
if not hd or hd[0] != len(recs) - 1 - sum(1 for r in recs[hd[0] + 1:] if r["step"] == "health"):
    sys.exit("steps after health done: %s" % [(r["step"], r["state"]) for r in recs[hd[0] + 1:]] if hd else "no health done")
EOF
  [ $? -eq 0 ] || dump_host "$h"
done
check "users kept on every hub" test "$(jq_ "$W/truth.json" '{h: v["users"] for h, v in d.items()}')" = "$users_before"
finish
