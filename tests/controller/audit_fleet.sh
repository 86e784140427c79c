#!/bin/bash
# audit_fleet.sh: `hubfleet audit` on the test fleet (its own fleet id, torn
# down by lib.sh's trap whatever happens): versions of real hubs and scale
# hosts against their trees on disk, default MaxStartups with 500 hosts at
# --parallel 200, changed and unknown host keys, links cut before and during
# the audit, an upload cut by a link cut and by killed sessions.
# usage: audit_fleet.sh HUBFLEET AGENT SESSION_CYCLE
HUBFLEET=$1 AGENT=$2 CYCLE=${3:-}
export HF_TEST_ID=${HF_TEST_ID:-ct}
. "$(dirname "$0")/../fleet/lib.sh"
set +e +o pipefail   # every step is checked explicitly below
SCALE=${HF_TEST_SCALE:-500}

step "fleet up --hubs 2 --scale $SCALE (fleet $HF_TEST_ID)"
fleet up --hubs 2 --scale "$SCALE" || { echo "FAIL - fleet up"; exit 1; }
STATE=$(fleet path state)
W=$STATE/controller-test
mkdir -p "$W"
fleet inventory > "$W/inv.ini"
fleet inventory --json > "$W/inv.json"
KH=$(fleet path known_hosts)
audit() { "$HUBFLEET" audit -i "$W/inv.ini" --agent "$AGENT" "$@"; }
jq_() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

step "audit of every host matches the versions in the hosts' trees"
audit --parallel 100 --json --stats > "$W/all.json" 2> "$W/all.err"
rc=$?
check "audit exits 0 with drift but no --expect (rc=$rc)" test $rc -eq 0
check "all $((SCALE + 2)) hosts audited" test "$(jq_ "$W/all.json" 'd["summary"]["audited"]')" = $((SCALE + 2))
# The truth, read without the agent: dist-info directory names in each tree.
$PY - "$W/inv.json" "$W/all.json" > "$W/compare.out" <<'EOF'
import glob, json, re, sys
inv = json.load(open(sys.argv[1]))["_meta"]["hostvars"]
got = {h["name"]: h for h in json.load(open(sys.argv[2]))["hosts"]}
def versions(prefix):
    return sorted(re.sub(r".*/jupyterhub-(.*)\.dist-info$", r"\1", p)
                  for p in glob.glob(prefix + "/lib/python3*/site-packages/jupyterhub-*.dist-info"))
bad = 0
for name, v in inv.items():
    users = v.get("hubfleet_user_envs", [])
    users = users if isinstance(users, list) else [u.strip() for u in users.split(",") if u.strip()]
    want = {"hub": versions(v["hubfleet_hub_env"]), "user": sorted(sum((versions(u) for u in users), []))}
    h = got.get(name)
    have = {"hub": [], "user": []}
    for e in (h or {}).get("facts", {}).get("envs", []):
        have[e["role"]].append(e.get("jupyterhub"))
    have = {k: sorted(x for x in vs if x) for k, vs in have.items()}
    if not h or not h.get("ok") or have != want:
        bad += 1
        if bad <= 5: print("MISMATCH", name, "want", want, "have", have)
print("hosts compared:", len(inv), "mismatches:", bad)
EOF
tail -3 "$W/compare.out"
check "every host's hub and user versions equal its trees" grep -q "mismatches: 0$" "$W/compare.out"
want_mis=$(grep -c '^scale' <(fleet inventory --json | $PY -c '
import json,sys
for h in json.load(sys.stdin)["_meta"]["hostvars"]:
    if h.startswith("scale") and int(h[5:]) % 25 == 0: print(h)'))
check "hub/user major mismatch flagged on the $want_mis 2.x hubs" \
  test "$(jq_ "$W/all.json" 'len(d["mismatch"])')" = "$want_mis"
check "drift flagged" test "$(jq_ "$W/all.json" 'd["drift"]')" = True
# The fleet is new, so that audit was cold: 3 homes (hub01, hub02, and the
# one every scale host shares), at most 8 uploads at once.
tail -1 "$W/all.err"
check "cold audit: uploads <= homes (3) + the upload bound (8)" \
  test "$(jq_ "$W/all.json" '0 < d["stats"]["uploads"] <= 3 + 8')" = True
check "cold audit: each upload sends the compressed agent (<= 1.5 MB)" \
  test "$(jq_ "$W/all.json" 'd["stats"]["upload_bytes"] <= 1.5e6 * d["stats"]["uploads"]')" = True
audit --limit hubs --expect 3.0.0 > "$W/expect-hubs.out" 2>&1
check "--expect 3.0.0 on the hubs: exit 0" test $? -eq 0
audit --limit 'scale000*' --expect 3.0.0 > "$W/expect-scale.out" 2>&1
check "--expect 3.0.0 on scale0001-9 (scale0007 runs 3.1.1): exit 1" test $? -eq 1

step "scale sshd with the default MaxStartups 10:30:100, 500 hosts at --parallel 200"
fleet fault maxstartups scale default
mapfile -t S500 < <(fleet inventory --json | $PY -c '
import json,sys
print("\n".join(sorted(h for h in json.load(sys.stdin)["_meta"]["hostvars"] if h.startswith("scale"))[:500]))')
$PY - "$W/inv.json" "$W/inv500.json" "${S500[@]}" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1])); names = sys.argv[3:]
json.dump({"all": {"children": ["scale"]}, "scale": {"hosts": names},
           "_meta": {"hostvars": {h: d["_meta"]["hostvars"][h] for h in names}}}, open(sys.argv[2], "w"))
EOF
"$HUBFLEET" audit -i "$W/inv500.json" --agent "$AGENT" --parallel 200 --json --stats > "$W/m500.json" 2> "$W/m500.err"
rc=$?
tail -1 "$W/m500.err"
check "500 hosts under default MaxStartups: exit 0 (rc=$rc)" test $rc -eq 0
check "500 hosts audited" test "$(jq_ "$W/m500.json" 'd["summary"]["audited"]')" = 500
check "dropped handshakes retried and counted in --stats" test "$(jq_ "$W/m500.json" 'd["stats"]["retries"] > 0')" = True
fleet fault maxstartups scale raised

# watch_bound NAME LIMIT CMD...: runs CMD while sampling, every 0.1 s, the
# controller's open descriptors and the fleet's established SSH connections
# (inside the scale hosts' namespace); fails if either passes LIMIT.
watch_bound() {
  local name=$1 limit=$2; shift 2
  "$@" > "$W/$name.out" 2> "$W/$name.err" &
  local pid=$! maxfd=0 maxconn=0 c
  while kill -0 "$pid" 2>/dev/null; do
    c=$(ls "/proc/$pid/fd" 2>/dev/null | wc -l); [ "$c" -gt "$maxfd" ] && maxfd=$c
    c=$(fleet exec scale0001 -- ss -Htn state established '( sport = :22 )' 2>/dev/null | wc -l)
    [ "$c" -gt "$maxconn" ] && maxconn=$c
    sleep 0.1
  done
  wait "$pid"
  echo "$name: peak controller descriptors $maxfd, peak fleet connections $maxconn (limit $limit)"
  check "$name: controller descriptors stay within the parallelism ($maxfd <= $limit)" test "$maxfd" -le "$limit"
  check "$name: fleet connections stay within the parallelism ($maxconn <= $limit)" test "$maxconn" -le "$limit"
}

step "a finished host lets go of its connection: descriptors and connections bounded by --parallel"
watch_bound audit-p20 $((20 + 16)) "$HUBFLEET" audit -i "$W/inv.ini" --agent "$AGENT" --limit scale --parallel 20 --json
check "audit at --parallel 20: every scale host audited" test "$(jq_ "$W/audit-p20.out" 'd["summary"]["audited"]')" = "$SCALE"
# The rollout engine: a dry run preflights every host (the scale hosts have
# no running hub, so they are refused; each host's session still ends there).
XDG_STATE_HOME=$W/xdg watch_bound dryrun-p20 $((20 + 16)) "$HUBFLEET" upgrade -i "$W/inv.ini" --agent "$AGENT" \
  --limit 'scale0[01]*' --to 3.0.1 --dry-run --parallel 20
check "dry run at --parallel 20: each of the 199 scale hosts got an answer" \
  test "$(grep -c '^scale[0-9]*: ' "$W/dryrun-p20.out")" -ge 199
(ulimit -n 128; "$HUBFLEET" audit -i "$W/inv.ini" --agent "$AGENT" --parallel 200 --json > "$W/ulimit.json" 2> "$W/ulimit.err")
check "ulimit -n 128, --parallel 200: every host audited" test "$(jq_ "$W/ulimit.json" 'd["summary"]["audited"]')" = $((SCALE + 2))
check "ulimit -n 128: a one-line notice says the parallelism was lowered" grep -q "parallel 200 lowered to 96: the open-file limit is 128" "$W/ulimit.err"

step "host keys"
fleet fault rekey hub02
audit --limit 'hubs:scale000*' --accept-new > "$W/rekey.out" 2>&1
rc=$?
check "changed key: exit 1 (rc=$rc)" test $rc -eq 1
check "changed key: hub02 refused loudly, even with --accept-new" grep -q "hub02: HOST KEY OF .* HAS CHANGED.*man-in-the-middle" "$W/rekey.out"
check "changed key: the others audited" grep -q "hosts: 10 audited, 1 failed" "$W/rekey.out"
fleet fault unknown-key hub02
audit --limit hubs > "$W/unknown.out" 2>&1
check "unknown key without --accept-new: exit 1" test $? -eq 1
check "unknown key: refused with how to add it or use --accept-new" grep -q "hub02: host key of .* is not known.*--accept-new" "$W/unknown.out"
audit --limit hubs --accept-new > "$W/accept.out" 2>&1
check "unknown key with --accept-new: exit 0" test $? -eq 0
addr2=$(hostvar hub02 ansible_host)
check "--accept-new wrote hub02's key to its known_hosts" grep -q "^$addr2 ssh-ed25519 " "$KH"
audit --limit hubs > "$W/accepted.out" 2>&1
check "the written key is trusted next time" test $? -eq 0

step "links cut before the audit"
fleet fault cut hub02
fleet fault cut scale0003
t0=$SECONDS
audit --limit 'hubs:scale000*' --timeout 5 --json > "$W/cut.json" 2> "$W/cut.err"
rc=$? took=$((SECONDS - t0))
check "cut before: exit 1 (rc=$rc)" test $rc -eq 1
check "cut before: hub02 and scale0003 unreachable/timed out, 9 others audited" \
  test "$(jq_ "$W/cut.json" '(d["summary"]["audited"], sorted((f["host"], f["code"] in ("unreachable", "timeout")) for f in d["failed"]))')" \
  = "(9, [('hub02', True), ('scale0003', True)])"
check "cut before: within the deadline (${took}s)" test $took -le 12
fleet fault restore hub02
fleet fault restore scale0003

step "hosts behind a slow link (tc tbf 10mbit on their veths): a cold deploy within the deadlines"
for h in hub01 hub02; do
  fleet ssh "$h" -- rm -rf .cache/hubfleet
  dev=$(fleet path "$h" | $PY -c 'import json,sys; print(json.load(sys.stdin)["veth"])')
  tc qdisc add dev "$dev" root tbf rate 10mbit burst 32kbit latency 400ms
done
t0=$EPOCHREALTIME
audit --limit hubs --json --stats > "$W/slow.json" 2> "$W/slow.err"
rc=$?
took=$(awk "BEGIN { printf \"%.2f\", $EPOCHREALTIME - $t0 }")
for h in hub01 hub02; do
  dev=$(fleet path "$h" | $PY -c 'import json,sys; print(json.load(sys.stdin)["veth"])')
  tc qdisc del dev "$dev" root
done
echo "slow link: 2 cold hosts at 10 mbit/s deployed and audited in ${took} s"; tail -1 "$W/slow.err"
check "slow link: both audited with the default deadlines (rc=$rc)" \
  test "$(jq_ "$W/slow.json" '(d["summary"]["audited"], d["stats"]["uploads"])')" = "(2, 2)"

# A padded copy of the agent: its own cache entry, and an upload long enough
# to cut (random bytes: the agent travels compressed).
cp "$AGENT" "$W/agent-big"
head -c $((24 << 20)) /dev/urandom >> "$W/agent-big"
BIGHEX=$(sha256sum < "$W/agent-big" | cut -c1-64)

# cut_during_upload HOST FAULT: start a cold audit of HOST, apply FAULT once its upload streams
cut_during_upload() {
  local h=$1 f=$2
  "$HUBFLEET" audit -i "$W/inv.ini" --limit "$h" --agent "$W/agent-big" --timeout 5 --json -v \
    > "$W/$f.json" 2> "$W/$f.err" &
  local apid=$! caught=0
  for _ in $(seq 400); do
    if grep -q "$h: upexec -> upload" "$W/$f.err"; then fleet fault "$f" "$h"; caught=1; break; fi
    sleep 0.05
  done
  wait $apid
  local rc=$?
  check "$f during upload: caught in flight" test $caught -eq 1
  check "$f during upload: $h fails (rc=$rc)" test $rc -eq 1
  grep "failed:" "$W/$f.err" | head -2
}
step "a link cut during the audit (while the agent uploads)"
cut_during_upload hub01 cut
check "cut during: failed as unreachable/timeout" \
  test "$(jq_ "$W/cut.json" '[f["code"] in ("unreachable", "timeout", "io") for f in d["failed"]]')" = "[True]"
fleet fault restore hub01
# The link comes back while sshd still holds the cut session: TCP may yet
# deliver the bytes that were in flight, so the upload can complete late. What
# must hold: the runnable name is absent or holds the whole, verified agent.
sleep 2
present=$(fleet ssh hub01 -- sh -c 'test -e "$1" && sha256sum "$1" | cut -c1-64 || echo absent' _ ".cache/hubfleet/agent-$BIGHEX")
check "cut during: no partial agent can run on hub01 ($present)" test "$present" = absent -o "$present" = "$BIGHEX"
"$HUBFLEET" audit -i "$W/inv.ini" --limit hub01 --agent "$W/agent-big" --json --stats > "$W/recut.json" 2>/dev/null
check "after the cut: the next audit works (uploading again when needed)" \
  test "$(jq_ "$W/recut.json" '(d["summary"]["audited"], d["stats"]["uploads"] == (1 if sys.argv[3] == "absent" else 0))' "$present")" = "(1, True)"
check "after the cut: the cached agent is whole" \
  test "$(fleet ssh hub01 -- sha256sum ".cache/hubfleet/agent-$BIGHEX" | cut -c1-64)" = "$BIGHEX"

step "sessions killed during the upload"
cut_during_upload hub02 kill-sessions
check "killed sessions: no runnable agent left on hub02" not fleet ssh hub02 -- test -e ".cache/hubfleet/agent-$BIGHEX"
"$HUBFLEET" audit -i "$W/inv.ini" --limit hub02 --agent "$W/agent-big" --json --stats > "$W/rekill.json" 2>/dev/null
check "after the kill: the next audit uploads again and works" \
  test "$(jq_ "$W/rekill.json" '(d["summary"]["audited"], d["stats"]["uploads"])')" = "(1, 1)"
check "after the kill: the cached agent is whole" \
  test "$(fleet ssh hub02 -- sha256sum ".cache/hubfleet/agent-$BIGHEX" | cut -c1-64)" = "$BIGHEX"

if [ -n "$CYCLE" ]; then
  step "engine API: two requests on one agent, link dies while idle, reconnect"
  "$CYCLE" "$W/inv.ini" hub01 "$AGENT" > "$W/cycle.out" 2> "$W/cycle.err" &
  cpid=$!
  wait_for 60 grep -q '^IDLE' "$W/cycle.out"
  fleet fault cut hub01
  wait_for 90 grep -q '^LOST' "$W/cycle.out"
  fleet fault restore hub01
  wait $cpid
  rc=$?
  cat "$W/cycle.out"
  check "session cycle: exit 0 (rc=$rc)" test $rc -eq 0
  check "session cycle: two results in sequence on one session" grep -q '^RESULT 2 ' "$W/cycle.out"
  check "session cycle: the dead link reported through the lost callback" grep -q '^LOST ' "$W/cycle.out"
  check "session cycle: a new session after the restore answers" grep -q '^RECONNECTED' "$W/cycle.out"
  check "session cycle: the loop closed clean" grep -q '^LOOP-CLOSE 0' "$W/cycle.out"
fi

echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
