# tests/upgrade/users-lib.sh: sourced by the tests of hubs in use (fleet up
# --user-servers: alice's and bob's real servers and kernels, zero-downtime
# config), on SQLite and PostgreSQL. On top of real-lib.sh: the fleet, the
# truth about the users' servers read without hubfleet (the hub database,
# /hub/api/users with the fleet's service token, the processes), and the
# test's own probe, run from inside each hub's namespace, independent of the
# agent's.
# usage (from a test): . users-lib.sh HUBFLEET AGENT
. "$(dirname "${BASH_SOURCE[0]}")/real-lib.sh"
USERS_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# up_users ARGS...: up_real ARGS --user-servers (W, STATE, INV, HUBLIST,
# PGLIST, SQLLIST); NEW/NEWREV: the fixture release "newer" (a test may pick
# another); every hub's servers answer.
up_users() {
  local st h
  up_real "$@" --user-servers
  NEW=$(kind_ver newer)
  NEWREV=$(fleet versions --long | awk '$1 == "newer" { print $3 }')
  st=$(fleet status) || true
  for h in "${HUBLIST[@]}"; do
    check "$h: alice's and bob's servers answer (fleet status)" grep -q "^$h .* servers=alice:200,bob:200$" <<<"$st"
  done
}

tree() { dirname "$(dirname "$(hv "$1" hubfleet_config)")"; }
token() { cat "$(dirname "$(hv "$1" hubfleet_config)")/fleet-service-token"; }
# db_count HOST: running servers in the hub's database
RUNNING_SQL='select count(*) from spawners where server_id is not null'
db_count() { if is_pg "$1"; then psq "$1" "$RUNNING_SQL"; else sqlite3 "file:$(sqlite_db "$1")?mode=ro" "$RUNNING_SQL"; fi; }
# users_running HOST: names of users with a running server, per /hub/api/users
users_running() {
  fleet exec "$1" -- curl -sf -m 10 --noproxy '*' -H "Authorization: token $(token "$1")" "$(hv "$1" hubfleet_health_url)/hub/api/users" |
    $PY -c 'import json, sys; print(" ".join(sorted(u["name"] for u in json.load(sys.stdin) if u["server"])))'
}
users_are() { [ "$(users_running "$1")" = "$2" ]; }
# procs HOST: pids of its server and kernel processes, sorted
procs() { { pgrep -f "$(tree "$1")/user-env/bin/jupyterhub-singleuser"; pgrep -f "$(tree "$1")/users/.*/kernel-"; } | sort -n | tr '\n' ' '; }
kernel_alive() {
  local k
  k=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["kernels"][sys.argv[2]]["alice"])' "$(fleet path state)/state.json" "$1")
  fleet exec "$1" -- curl -sf -m 5 --noproxy '*' -H "Authorization: token $(token "$1")" "$(hv "$1" hubfleet_health_url)/user/alice/api/kernels/$k" >/dev/null
}

# users_before: the truth before, per hub (REAL: db count, PROCS: pids)
declare -A PROCS REAL PROBE_PID
users_before() {
  local h
  for h in "${HUBLIST[@]}"; do
    REAL[$h]=$(db_count "$h")
    PROCS[$h]=$(procs "$h")
    check "$h: 2 servers running in its database" test "${REAL[$h]}" = 2
    check "$h: 2 servers + 2 kernels running (${PROCS[$h]})" test "$(wc -w <<<"${PROCS[$h]}")" = 4
    check "$h: the hub's API shows alice and bob running" users_are "$h" "alice bob"
    check "$h: alice's kernel is there" kernel_alive "$h"
  done
}

# probes_start / probes_stop: the test's own probe of alice and bob on every
# hub (user_probe.py), its figures in $W/probe-HOST.json
probes_start() {
  local h
  step "the test's own probes (inside each namespace, every 100 ms)"
  rm -f "$W/probe.stop"
  for h in "${HUBLIST[@]}"; do
    fleet exec "$h" -- $PY "$USERS_HERE/user_probe.py" "$(hv "$h" hubfleet_health_url)" "$W/probe.stop" "$W/probe-$h.json" alice bob &
    PROBE_PID[$h]=$!
  done
  sleep 1
}
probes_stop() {
  local h
  sleep 1
  touch "$W/probe.stop"
  for h in "${HUBLIST[@]}"; do wait "${PROBE_PID[$h]}"; done
  step "what the test's probes saw"
  for h in "${HUBLIST[@]}"; do
    echo "# $h: $(cat "$W/probe-$h.json" 2>/dev/null)"
    check "$h: test probe: no request failed" jq_ "$W/probe-$h.json" 'exit(0 if d["failed"] == 0 else 1)'
    check "$h: test probe: ran across the rollout (>= 100 requests)" jq_ "$W/probe-$h.json" 'exit(0 if d["requests"] >= 100 else 1)'
    # the fact is "no request failed"; the gap only catches a probe that stalled
    # (1.2 s seen at load 51 with every request answered)
    check "$h: test probe: no gap of 5 s for any server" jq_ "$W/probe-$h.json" 'exit(0 if max(d["longest_gap_ms"].values()) < 5000 else 1)'
  done
}

# stepdata HOST STEP [PYTHON-SUFFIX]: the data of HOST's last ok STEP in $W/st.json
stepdata() { jq_ "$W/st.json" "[s['data'] for s in d['steps'] if s['host'] == '$1' and s['step'] == '$2' and s['outcome'] == 'ok'][-1]$3"; }

# upgrade_bg ARGS...: `hubfleet upgrade -i INV ARGS` in the background (CTL
# its pid; output in $W/up.out, up.err, up.ndjson)
upgrade_bg() {
  hf upgrade -i "$INV" "$@" --state "$STATE" --events "$W/up.ndjson" > "$W/up.out" 2> "$W/up.err" &
  CTL=$!
}
# journal_has HOST STEP STATE: the latest rollout's journal on HOST holds STEP
# in STATE (sets RID). Bounded waits on it must be long: at load 40 a rollout
# took 155 s to reach start (preflight 43 s, stage 62 s, stop 39 s).
journal_has() {
  RID=$(hf history --state "$STATE" --ids 2>/dev/null | sed -n 1p)
  [ -n "$RID" ] && journal "$1" "$RID" |
    $PY -c 'import json,sys; r=json.load(sys.stdin); sys.exit(0 if any(x["step"]==sys.argv[1] and x["state"]==sys.argv[2] for x in r) else 1)' "$2" "$3"
}

# event_line NDJSON HOST TEXT: an event of HOST holding TEXT
event_line() { grep -F "$3" "$1" | grep -qF "\"host\":\"$2\""; }

# users_after: the truth after, per hub: on NEW, the same processes, found again
users_after() {
  local h
  step "after"
  for h in "${HUBLIST[@]}"; do
    check "$h: every env on $NEW" envs_on "$h" "$NEW"
    check "$h: the live database at $NEWREV" test "$(alembic_of "$h")" = "$NEWREV"
    check "$h: the same server and kernel processes" test "$(procs "$h")" = "${PROCS[$h]}"
    check "$h: alice's kernel is still there" kernel_alive "$h"
    check "$h: $NEW finds alice's and bob's servers (/hub/api/users)" wait_for 30 users_are "$h" "alice bob"
    check "$h: still 2 servers in its database" test "$(db_count "$h")" = 2
    check "$h: no agent or probe left on the host" wait_for 10 not pgrep -u "$(hv "$h" ansible_user)" -f hubfleet-agent
  done
}
