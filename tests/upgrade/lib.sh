# tests/upgrade/lib.sh: sourced by the upgrade integration tests.  Brings up a
# private fleet of 8 hubs (tests/fleet/lib.sh tears it down on exit, whatever
# happened), and gives helpers that read the truth without hubfleet: the
# envs' dist-info, the sqlite files, /hub/api from inside each namespace, the
# agents' journals, the hub processes' start times.
# usage (from a test): . lib.sh HUBFLEET AGENT
HUBFLEET=${1:-${HUBFLEET:-}}
AGENT=${2:-${HUBFLEET_AGENT:-}}
HERE_UP=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -z "$HUBFLEET" ] || [ -z "$AGENT" ]; then
  HUBFLEET=${HUBFLEET:-$HERE_UP/../../build/controller/hubfleet}
  AGENT=${AGENT:-$HERE_UP/../../build/agent/hubfleet-agent}
fi
HUBFLEET=$(realpath "$HUBFLEET"); AGENT=$(realpath "$AGENT")
export HUBFLEET_AGENT=$AGENT
. "$HERE_UP/../fleet/lib.sh"
set +e +o pipefail   # every step is checked explicitly
CHECK="$PY $HERE_UP/check.py"
NHUBS=${HF_TEST_HUBS:-8}

# up_fleet [FLEET_UP_ARGS...]: the fleet (--hubs $NHUBS and the extra
# arguments of `fleet up`, e.g. --user-servers), its inventory and a
# private state file.
up_fleet() {
  step "fleet up --hubs $NHUBS $* (fleet $HF_TEST_ID)"
  fleet up --hubs "$NHUBS" "$@" > /dev/null || { echo "FAIL - fleet up"; exit 1; }
  W=$(fleet path state)/upgrade-test
  mkdir -p "$W"
  export XDG_STATE_HOME=$W/xdg     # never the operator's own state
  STATE=$W/state.db
  INV=$W/inv.ini
  fleet inventory > "$INV"
  fleet inventory --json > "$W/inv.json"
  mapfile -t HUBLIST < <(hosts_of hubs)
  ver() { fleet versions --long | awk -v k="$1" '$1 == k { print $2 }'; }
  rev() { fleet versions --long | awk -v k="$1" '$1 == k { print $3 }'; }
  BASE=$(ver baseline); BASEREV=$(rev baseline)
  NEW=$(ver newer); NEWREV=$(rev newer)
  BADSTART=$(ver bad-start); BADHEALTH=$(ver bad-health)
  check "fleet has $NHUBS hubs" test "${#HUBLIST[@]}" -eq "$NHUBS"
}

hf() { "$HUBFLEET" "$@"; }
# jq_ FILE EXPR: a python expression over the JSON document d
jq_() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); r=eval(sys.argv[2]); print(json.dumps(r) if isinstance(r,(dict,list)) else r)" "$@"; }

# api HOST: /hub/api as seen from inside the host's own namespace
api() {
  local url
  url=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]]["hubfleet_health_url"])' "$W/inv.json" "$1")
  fleet exec "$1" -- curl -sf -m 5 --noproxy '*' "$url/hub/api"
}
health_code() {
  local url
  url=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]]["hubfleet_health_url"])' "$W/inv.json" "$1")
  fleet exec "$1" -- curl -s -m 5 --noproxy '*' -o /dev/null -w '%{http_code}' "$url/hub/health"
}
api_is() { [ "$(api "$1" 2>/dev/null)" = "{\"version\": \"$2\"}" ]; }
healthy_on() { api_is "$1" "$2" && [ "$(health_code "$1")" = 200 ]; }

# truth: $W/truth.json, per hub, read from disk (see check.py)
truth() { $CHECK truth "$W/inv.json" > "$W/truth.json"; }
# on_disk HOST VERSION REV: both envs hold exactly VERSION, the db is at REV and holds its users
on_disk() {
  $PY - "$W/truth.json" "$@" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))[sys.argv[2]]
want, rev = sys.argv[3], sys.argv[4]
ok = t["hub"] == [want] and t["user"] and all(u == [want] for u in t["user"]) \
     and t.get("alembic") == rev and t.get("users", 0) >= 3
if not ok:
    print("%s on disk: %s" % (sys.argv[2], json.dumps(t)), file=sys.stderr)
sys.exit(0 if ok else 1)
EOF
}
# journal HOST ROLLOUT: the agent journal's records as JSON
journal() { $CHECK journal "$W/inv.json" "$1" "$2"; }
journal_empty() { [ "$(journal "$1" "$2")" = "[]" ]; }

# hub_proc HOST: "PID STARTTIME" of the hub process (supervisord's child)
hub_proc() {
  local conf pid
  conf=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]]["hubfleet_supervisor_config"])' "$W/inv.json" "$1")
  pid=$(fleet ssh "$1" -- supervisorctl -c "$conf" pid jupyterhub 2>/dev/null)
  case $pid in ''|*[!0-9]*|0) echo "none"; return ;; esac
  echo "$pid $(awk '{ sub(/.*\) /, ""); print $20 }' "/proc/$pid/stat" 2>/dev/null)"
}
procs_snapshot() { for h in "${HUBLIST[@]}"; do echo "$h $(hub_proc "$h")"; done; }
# journal_prepared_only HOST ROLLOUT: the journal holds nothing but the
# preparation (stage: a copy of the envs beside the live ones), or nothing
journal_prepared_only() {
  journal "$1" "$2" | $PY -c 'import json,sys; sys.exit(0 if all(r.get("step") == "stage" for r in json.load(sys.stdin)) else 1)'
}
# untouched HOST ROLLOUT PROCS_BEFORE: no journal for ROLLOUT beyond its
# preparation, no backup, same hub process (pid and start time) as in the
# procs_snapshot file
untouched() {
  local h=$1 rid=$2 before=$3 bdir
  bdir=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]]["hubfleet_backup_dir"])' "$W/inv.json" "$h")
  journal_prepared_only "$h" "$rid" || { echo "$h: journal for $rid: $(journal "$h" "$rid")" >&2; return 1; }
  [ ! -e "$bdir/$rid" ] || { echo "$h: backup dir $bdir/$rid exists" >&2; return 1; }
  [ "$(hub_proc "$h")" = "$(awk -v h="$h" '$1 == h { print $2, $3 }' "$before")" ] || {
    echo "$h: hub process changed: $(hub_proc "$h") vs $(grep "^$h " "$before")" >&2; return 1; }
}

# status_json [ROLLOUT] > FILE
status_json() { hf status --state "$STATE" --json "$@"; }
host_status() { jq_ "$1" "[h['status'] for h in d['hosts'] if h['host']=='$2'][0]"; }

finish() {
  echo "# $fails failure(s)"
  [ "$fails" -eq 0 ]
}

# run_for SECONDS|MSms ARGV...: start the controller, SIGKILL it after SECONDS
# (whole seconds, as bash's SECONDS counts them) or MS milliseconds (e.g.
# 1250ms, on the real-time clock) unless it ended first. Prints "killed" or
# "ended RC".
run_for() {
  local secs=$1 pid end rc; shift
  "$HUBFLEET" "$@" --state "$STATE" --events "$W/ev.ndjson" >> "$W/ctl.out" 2>&1 &
  pid=$!
  if [[ $secs == *ms ]]; then
    end=$(( ${EPOCHREALTIME//[!0-9]/} + ${secs%ms} * 1000 ))
    while [ "${EPOCHREALTIME//[!0-9]/}" -lt "$end" ] && kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  else
    end=$((SECONDS + secs))
    while [ $SECONDS -lt $end ] && kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  fi
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null
    echo killed
  else
    wait "$pid"; rc=$?
    echo "ended $rc"
  fi
}
# steps_ok: how many host steps the controllers reported finished ("X ok in")
steps_ok() {
  local n
  n=$(grep -c '"event":"step","level":"info","text":"[a-z]* ok in' "$W/ev.ndjson" 2>/dev/null)
  echo "${n:-0}"
}
ro_status() { hf status --state "$STATE" --json 2>/dev/null | $PY -c 'import json,sys; print(json.load(sys.stdin)["rollout"]["status"])' 2>/dev/null; }

# kill_rounds MAX_DELAY ARGV...: runs the controller with ARGV and SIGKILLs
# it 1..MAX_DELAY s later (from $RANDOM: seed it), then `resume` the same
# way, for up to $KILLS rounds or until the rollout no longer runs. Sets
# KILLED to the number of kills.
# kill_rounds MIN-MAXms ARGV...: the same with delays of MIN..MAX
# milliseconds, and rounds go on until $KILLS kills (a round whose controller
# ended by itself while the rollout still runs does not count; at most
# 2*$KILLS rounds): the caller asserts KILLED = KILLS, the rollout must be
# long enough to still run at the last kill. A round in which no step
# finished (a step longer than the delays, e.g. preflight on a loaded
# machine) lengthens the next ones by its delay until one does, so the kills
# do not all land in the same step.
kill_rounds() {
  local maxd=$1 mind=1 unit= rounds=$KILLS i=0 d r st extra=0 oks0 oks t0=$SECONDS; shift
  if [[ $maxd =~ ^([0-9]+)-([0-9]+)ms$ ]]; then
    mind=${BASH_REMATCH[1]} maxd=${BASH_REMATCH[2]} unit=ms rounds=$((2 * KILLS))
  fi
  local args=("$@")
  KILLED=0
  oks0=$(steps_ok)
  while [ $i -lt "$rounds" ] && [ "$KILLED" -lt "$KILLS" ]; do
    i=$((i + 1))
    if [ -n "$unit" ]; then d=$((mind + RANDOM % (maxd - mind + 1) + extra)); else d=$((RANDOM % maxd + 1)); fi
    r=$(run_for "$d$unit" "${args[@]}")
    st=$(ro_status)
    if [ -n "$unit" ]; then
      oks=$(steps_ok)
      if [ "$oks" -gt "$oks0" ]; then extra=0; else extra=$d; fi
      oks0=$oks
    fi
    echo "# round $i: after ${d}${unit:-s}: $r; rollout $st [$((SECONDS - t0))s]"
    [ "$r" = killed ] && KILLED=$((KILLED + 1))
    [ "$st" = running ] || break
    args=(resume)
  done
}

# final_resume RID TIMEOUT: one last resume when the rollout still runs.
final_resume() {
  [ "$(ro_status)" = running ] || return 0
  step "final resume"
  timeout "$2" "$HUBFLEET" resume "$1" --state "$STATE" --events "$W/ev.ndjson" > "$W/final.out" 2>&1
  local rc=$?
  check "final resume exits 0 (rc=$rc)" test $rc -eq 0
  [ $rc -eq 0 ] || tail -30 "$W/final.out"
}
