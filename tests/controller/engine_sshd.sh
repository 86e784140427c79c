#!/bin/bash
# engine_sshd.sh: the engine and `hubfleet audit` against real OpenSSH sshd on
# loopback: cold/warm deploy, unknown and changed host keys, --accept-new,
# default MaxStartups with 500 hosts at --parallel 200, an upload cut by
# killing the sshd sessions, and hostile agents (garbage, 100 MB frame,
# silence, wrong protocol), and ProxyJump (cold and warm through one
# bastion, 200 hosts on one bastion connection, refusals).
# usage: engine_sshd.sh HUBFLEET AGENT BUILDDIR(tests/controller)
set -u
HUBFLEET=$1 AGENT=$2 TBUILD=$3
T=$(mktemp -d /tmp/hf-ctl-test.XXXXXX)
chmod 755 "$T"
# A login of its own with a plain /bin/sh: root's shell rc files (pyenv, ...)
# would make every exec slow and are not what a hub host looks like.
# Named per run: two clones' suites on one machine (or a suite run by hand
# beside CI) must not share, and then delete, one login.
TUSER=hfctl-$$
THOME=/var/tmp/hfctl-$$
# The login of a run that was killed (SIGKILL skips its cleanup) goes now:
# its run's pid is gone. A live run's login is never touched.
for old in $(getent passwd | sed -n 's/^\(hfctl-[0-9][0-9]*\):.*/\1/p'); do
  kill -0 "${old#hfctl-}" 2>/dev/null && continue
  left=$(ps -o pid= -u "$old" 2>/dev/null)
  [ -n "$left" ] && kill $left 2>/dev/null
  userdel "$old" 2>/dev/null && rm -rf "/var/tmp/$old"
done
CREATED_USER=
if ! id -u "$TUSER" > /dev/null 2>&1; then
  useradd -M -U -d "$THOME" -s /bin/sh -p '*' "$TUSER" || { echo "cannot create $TUSER"; exit 1; }
  CREATED_USER=1
fi
# A fresh home every run: whatever an earlier run left (under an older uid
# of this user) must not be in the way.
rm -rf "$THOME"
mkdir -p "$THOME"
chown "$TUSER:" "$THOME"
chmod 700 "$THOME"
CACHE=$THOME/.cache/hubfleet
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "${AGENT_PID:-}" ] && kill "$AGENT_PID" 2>/dev/null
  rm -rf "$CACHE"
  rm -rf "$T"
  if [ -n "$CREATED_USER" ]; then
    # Leftovers of killed sessions run as the test user: stop them by pid.
    for _ in $(seq 20); do
      left=$(ps -o pid= -u "$TUSER" 2>/dev/null)
      [ -z "$left" ] && break
      kill $left 2>/dev/null
      sleep 0.25
    done
    userdel "$TUSER" 2>/dev/null || echo "note: could not remove user $TUSER"
  fi
  rm -rf "$THOME"
}
trap cleanup EXIT
fails=0
ok()   { echo "ok   - $*"; }
bad()  { echo "FAIL - $*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

mkdir -p /run/sshd
ssh-keygen -q -t ed25519 -N '' -f "$T/keyA"
ssh-keygen -q -t ed25519 -N '' -f "$T/keyB"
ssh-keygen -q -t ed25519 -N '' -f "$T/id"
cp "$T/id.pub" "$T/authorized_keys"
chmod 644 "$T/authorized_keys"

# start_sshd NAME HOSTKEY: a default-configured sshd (MaxStartups 10:30:100)
start_sshd() {
  local name=$1 key=$2 extra=${3:-} port
  port=$(free_port)
  cat > "$T/$name.conf" <<EOF
Port $port
ListenAddress 127.0.0.1
HostKey $key
PidFile $T/$name.pid
AuthorizedKeysFile $T/authorized_keys
AllowUsers $TUSER
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
LogLevel VERBOSE
$extra
EOF
  /usr/sbin/sshd -D -f "$T/$name.conf" -E "$T/$name.log" &
  PIDS+=($!)
  eval "PORT_$name=$port PID_$name=$!"
  for _ in $(seq 50); do
    python3 -c "import socket; socket.create_connection(('127.0.0.1',$port),0.2)" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "sshd $name did not start"; cat "$T/$name.log"; exit 1
}
start_sshd A "$T/keyA"
start_sshd B "$T/keyB"
start_sshd C "$T/keyA" "AllowTcpForwarding no"   # a bastion that refuses to forward

# Environment trees the agent reads (dist-info metadata, as pip writes it).
mkenv() {   # mkenv DIR VERSION
  local sp="$1/lib/python3.11/site-packages/jupyterhub-$2.dist-info"
  mkdir -p "$sp"
  printf 'Metadata-Version: 2.1\nName: jupyterhub\nVersion: %s\n' "$2" > "$sp/METADATA"
}
# inventory FILE N PORT [KNOWN_HOSTS]: N hosts on 127.0.0.1:PORT
inventory() {
  local f=$1 n=$2 port=$3 kh=${4:-}
  {
    echo "[hubs]"
    for i in $(seq 1 "$n"); do
      local d="$T/env/h$i"
      if [ ! -d "$d" ]; then
        local v=5.2.1; [ $((i % 5)) -eq 0 ] && v=4.1.6
        mkenv "$d/hub" "$v"; mkenv "$d/user" "$v"; mkdir -p "$d/etc"; : > "$d/etc/jupyterhub_config.py"
      fi
      echo "h$i hubfleet_hub_env=$d/hub hubfleet_user_envs=$d/user hubfleet_config=$d/etc/jupyterhub_config.py"
    done
    echo "[hubs:vars]"
    echo "ansible_host=127.0.0.1"
    echo "ansible_port=$port"
    echo "ansible_user=$TUSER"
    echo "ansible_ssh_private_key_file=$T/id"
    [ -n "$kh" ] && echo "hubfleet_known_hosts=$kh"
    echo "hubfleet_service=command"
    echo "hubfleet_start_command=/bin/true"
    echo "hubfleet_stop_command=/bin/true"
  } > "$f"
}
jq_() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

echo "[127.0.0.1]:$PORT_A $(cut -d' ' -f1,2 "$T/keyA.pub")" > "$T/kh"
echo "[127.0.0.1]:$PORT_B $(cut -d' ' -f1,2 "$T/keyA.pub")" >> "$T/kh"   # wrong key for B: changed

# A copy of the real agent with padding: its own SHA-256, so the cold tests
# never touch the cache entry of the agent other tests use; big enough that
# an upload takes a while.
cp "$AGENT" "$T/agent-big"
head -c $((40 << 20)) /dev/zero >> "$T/agent-big"
BIGHEX=$(sha256sum "$T/agent-big" | cut -c1-64)
rm -rf "$CACHE"

# --- 1. cold then warm deploy on 5 hosts ---------------------------------
inventory "$T/inv5.ini" 5 "$PORT_A" "$T/kh"
"$HUBFLEET" audit -i "$T/inv5.ini" --agent "$T/agent-big" --json --stats > "$T/cold.json" 2> "$T/cold.err"
rc=$?
check "cold audit exits 0 (rc=$rc)" [ $rc -eq 0 ]
check "cold audit uploaded the agent" [ "$(jq_ "$T/cold.json" 'd["stats"]["uploads"] >= 1')" = True ]
check "agent cached under its sha256" [ -x "$CACHE/agent-$BIGHEX" ]
check "cold: 5 audited" [ "$(jq_ "$T/cold.json" 'd["summary"]["audited"]')" = 5 ]
check "versions folded: 4x 5.2.1 and 1x 4.1.6 (drift)" \
  [ "$(jq_ "$T/cold.json" '(d["versions"]["5.2.1"], d["versions"]["4.1.6"], d["drift"])')" = "(4, 1, True)" ]
"$HUBFLEET" audit -i "$T/inv5.ini" --agent "$T/agent-big" --json --stats > "$T/warm.json" 2> "$T/warm.err"
check "warm audit reuses the cached agent (no upload)" \
  [ "$(jq_ "$T/warm.json" '(d["stats"]["uploads"], d["stats"]["reused"])')" = "(0, 5)" ]
"$HUBFLEET" audit -i "$T/inv5.ini" --agent "$T/agent-big" --expect 5.2.1 > "$T/expect.out" 2>&1
rc=$?
check "--expect 5.2.1 with one 4.1.6 host exits 1 (rc=$rc)" [ $rc -eq 1 ]
check "table shows DRIFT" grep -q "DRIFT: 2 jupyterhub versions" "$T/expect.out"

# --- 2. host keys ----------------------------------------------------------
inventory "$T/invB.ini" 2 "$PORT_B" "$T/kh"
cat "$T/inv5.ini" > "$T/mixed.ini"
sed -n '/^\[hubs\]/,/^\[hubs:vars\]/p' "$T/invB.ini" | sed '1d;$d' | sed "s/^h\([0-9]*\) /b\1 ansible_port=$PORT_B /" > "$T/bhosts"
python3 - "$T/mixed.ini" "$T/bhosts" <<'EOF'
import sys
inv, extra = sys.argv[1], open(sys.argv[2]).read()
s = open(inv).read().replace("[hubs:vars]", extra + "[hubs:vars]")
open(inv, "w").write(s)
EOF
"$HUBFLEET" audit -i "$T/mixed.ini" --agent "$T/agent-big" --accept-new > "$T/changed.out" 2>&1
rc=$?
check "changed key: exit 1 (rc=$rc)" [ $rc -eq 1 ]
check "changed key: refused loudly, even with --accept-new" grep -q "HOST KEY OF \[127.0.0.1\]:$PORT_B HAS CHANGED" "$T/changed.out"
check "changed key: says man-in-the-middle and how to fix" grep -q "man-in-the-middle.*ssh-keygen -R" "$T/changed.out"
check "changed key: the other 5 hosts audited" grep -q "7 hosts: 5 audited, 2 failed" "$T/changed.out"
check "changed key: known_hosts untouched" [ "$(grep -c . "$T/kh")" = 2 ]

echo "[127.0.0.1]:$PORT_A $(cut -d' ' -f1,2 "$T/keyA.pub")" > "$T/kh2"   # B unknown
inventory "$T/invU.ini" 2 "$PORT_B" "$T/kh2"
"$HUBFLEET" audit -i "$T/invU.ini" --agent "$T/agent-big" > "$T/unknown.out" 2>&1
rc=$?
check "unknown key without --accept-new: refused, exit 1 (rc=$rc)" [ $rc -eq 1 ]
check "unknown key: message says how to add it or use --accept-new" \
  grep -q "is not known.*ssh-keyscan -p $PORT_B 127.0.0.1.*--accept-new" "$T/unknown.out"
"$HUBFLEET" audit -i "$T/invU.ini" --agent "$T/agent-big" --accept-new > "$T/accept.out" 2>&1
rc=$?
check "unknown key with --accept-new: audited (rc=$rc)" [ $rc -eq 0 ]
check "--accept-new wrote the key to the host's known_hosts" grep -q "^\[127.0.0.1\]:$PORT_B ssh-ed25519 $(cut -d' ' -f2 "$T/keyB.pub")" "$T/kh2"
"$HUBFLEET" audit -i "$T/invU.ini" --agent "$T/agent-big" > "$T/accepted.out" 2>&1
check "the written key is trusted next time" [ $? -eq 0 ]
# The controller reads known_hosts itself (once per run): hashed names as
# ssh-keygen -H writes them, wildcard patterns, and @revoked keys.
cp "$T/kh2" "$T/kh3" && ssh-keygen -q -H -f "$T/kh3" > /dev/null 2>&1
check "hashed known_hosts (ssh-keygen -H): no plain name left" bash -c "! grep -q 127.0.0.1 '$T/kh3'"
sed "s#hubfleet_known_hosts=.*#hubfleet_known_hosts=$T/kh3#" "$T/invU.ini" > "$T/invH.ini"
"$HUBFLEET" audit -i "$T/invH.ini" --agent "$T/agent-big" > "$T/hashed.out" 2>&1
check "hashed known_hosts: both hosts audited (rc=$?)" grep -q "2 hosts: 2 audited" "$T/hashed.out"
echo "[127.0.0.*]:$PORT_B $(cut -d' ' -f1,2 "$T/keyB.pub")" > "$T/kh4"
sed "s#hubfleet_known_hosts=.*#hubfleet_known_hosts=$T/kh4#" "$T/invU.ini" > "$T/invW.ini"
"$HUBFLEET" audit -i "$T/invW.ini" --agent "$T/agent-big" > "$T/wild.out" 2>&1
check "wildcard known_hosts pattern: audited (rc=$?)" grep -q "2 hosts: 2 audited" "$T/wild.out"
{ cat "$T/kh2"; echo "@revoked * $(cut -d' ' -f1,2 "$T/keyB.pub")"; } > "$T/kh5"
sed "s#hubfleet_known_hosts=.*#hubfleet_known_hosts=$T/kh5#" "$T/invU.ini" > "$T/invR.ini"
"$HUBFLEET" audit -i "$T/invR.ini" --agent "$T/agent-big" --accept-new > "$T/revoked.out" 2>&1
rc=$?
check "@revoked key: refused even though listed and with --accept-new, exit 1 (rc=$rc)" [ $rc -eq 1 ]
check "@revoked key: the message says so" grep -q "is marked @revoked in $T/kh5" "$T/revoked.out"
# The CLI file is used when the host names none; ~/.ssh/config is never read.
inventory "$T/invC.ini" 1 "$PORT_A"
"$HUBFLEET" audit -i "$T/invC.ini" --agent "$T/agent-big" --known-hosts "$T/kh" > "$T/cli.out" 2>&1
check "--known-hosts FILE used for hosts without hubfleet_known_hosts" [ $? -eq 0 ]

# --- 3. default MaxStartups, 500 hosts at --parallel 200 --------------------
inventory "$T/inv500.ini" 500 "$PORT_A" "$T/kh"
# One endpoint here, so let 100 handshakes at it at once: sshd drops many.
/usr/bin/time -f "%e s %M KB" -o "$T/time500" \
  "$HUBFLEET" audit -i "$T/inv500.ini" --agent "$T/agent-big" --parallel 200 --handshakes 100 \
  --max-handshakes 100 --retries 30 --timeout 60 --json --stats > "$T/m500.json" 2> "$T/m500.err"
rc=$?
check "500 hosts at --parallel 200 under MaxStartups 10:30:100: exit 0 (rc=$rc)" [ $rc -eq 0 ]
check "500 hosts audited" [ "$(jq_ "$T/m500.json" 'd["summary"]["audited"]')" = 500 ]
check "dropped handshakes were retried and counted" [ "$(jq_ "$T/m500.json" 'd["stats"]["retries"] > 0')" = True ]
check "sshd really dropped connections (MaxStartups in its log)" grep -q "drop connection\|MaxStartups\|beginning MaxStartups" "$T/A.log"
tail -1 "$T/m500.err"; cat "$T/time500"

# --- 4. an upload cut by killing the sshd sessions ---------------------------
rm -f "$CACHE/agent-$BIGHEX"
inventory "$T/inv1.ini" 1 "$PORT_A" "$T/kh"
# Slow the upload down so it can be caught in flight: a 40 MB agent through a
# throttled loopback would need tc; instead kill the session as soon as the
# temporary file appears.
"$HUBFLEET" audit -i "$T/inv1.ini" --agent "$T/agent-big" --json > "$T/cut.json" 2> "$T/cut.err" &
apid=$!
caught=0
for _ in $(seq 2000); do
  if compgen -G "$CACHE/agent-$BIGHEX.tmp.*" > /dev/null; then
    # Every process of every session of sshd A (monitor, session, shell,
    # cat), found by parent pid, killed at once like a crashed host.
    victims=() todo=("$PID_A")
    while [ ${#todo[@]} -gt 0 ]; do
      kids=$(ps -o pid= --ppid "${todo[0]}"); todo=("${todo[@]:1}")
      for k in $kids; do victims+=("$k"); todo+=("$k"); done
    done
    kill -9 "${victims[@]}" 2>/dev/null
    caught=1
    break
  fi
  sleep 0.005
done
wait $apid
rc=$?
if [ $caught -eq 1 ]; then
  check "cut upload: the host fails (rc=$rc)" [ $rc -eq 1 ]
  check "cut upload: no runnable agent left behind" [ ! -e "$CACHE/agent-$BIGHEX" ]
else
  bad "cut upload: could not catch the upload in flight"
fi
"$HUBFLEET" audit -i "$T/inv1.ini" --agent "$T/agent-big" --json --stats > "$T/recut.json" 2>/dev/null
rc=$?
check "next audit uploads again and works (rc=$rc)" [ $rc -eq 0 ]
check "next audit: one upload" [ "$(jq_ "$T/recut.json" 'd["stats"]["uploads"]')" = 1 ]
check "agent in place after the re-upload, checksum verified" \
  [ "$(sha256sum < "$CACHE/agent-$BIGHEX" | cut -c1-64)" = "$BIGHEX" ]
rm -f "$CACHE/agent-$BIGHEX".tmp.*

# --- 4b. cut and corrupted compressed uploads, run as the engine runs them ----
# The upload command itself, over OpenSSH, fed what a broken link or a
# broken controller could deliver: nothing runnable may be left behind.
AHEX=$(sha256sum < "$AGENT" | cut -c1-64)
UPCMD=$("$TBUILD/deploy-cmd" upload "$AHEX")
STCMD=$("$TBUILD/deploy-cmd" start "$AHEX")
tssh() { ssh -i "$T/id" -p "$PORT_A" -o UserKnownHostsFile="$T/kh" -o StrictHostKeyChecking=yes \
  -o BatchMode=yes "$TUSER@127.0.0.1" "$@"; }
gzip -9 -n -c "$AGENT" > "$T/agent.gz"
GZLEN=$(stat -c %s "$T/agent.gz")
head -c $((GZLEN / 2)) "$T/agent.gz" > "$T/agent.gz.cut"
cp "$T/agent.gz" "$T/agent.gz.bad"
printf '\xff\xff\xff\xff' | dd of="$T/agent.gz.bad" bs=1 seek=$((GZLEN / 2)) conv=notrunc status=none
printf '#!/bin/sh\necho pwned\n' | gzip -c > "$T/other.gz"
rm -rf "$CACHE"
for kind in cut bad; do
  out=$(tssh "$UPCMD" < "$T/agent.gz.$kind" 2>&1); rc=$?
  check "$kind gzip stream: the upload command fails (rc=$rc)" [ $rc -ne 0 ]
  check "$kind gzip stream: no agent, no temporary file left" [ -z "$(ls -A "$CACHE" 2>/dev/null)" ]
done
out=$(tssh "$UPCMD" < "$T/other.gz" 2>&1); rc=$?
check "another binary, whole gzip: refused by its SHA-256 (rc=$rc)" sh -c "[ $rc -ne 0 ] && echo '$out' | grep -q HUBFLEET-BAD-CHECKSUM"
check "another binary: nothing left" [ -z "$(ls -A "$CACHE" 2>/dev/null)" ]
out=$(tssh "$UPCMD" < "$T/agent.gz" 2>&1); rc=$?
check "the whole stream: uploaded and verified (rc=$rc)" sh -c "[ $rc -eq 0 ] && echo '$out' | grep -q HUBFLEET-UPLOADED"
check "the whole stream: the agent is the binary, mode 0700" \
  [ "$(sha256sum < "$CACHE/agent-$AHEX" | cut -c1-64) $(stat -c %a "$CACHE/agent-$AHEX")" = "$AHEX 700" ]
# The cached agent is verified in the command that runs it: a replaced
# binary (same name, the login could write it) is never executed.
printf '#!/bin/sh\necho pwned\n' > "$CACHE/agent-$AHEX"; chown "$TUSER:" "$CACHE/agent-$AHEX"
out=$(tssh "$STCMD" < /dev/null 2>&1)
check "a replaced cached agent is not run: upload asked for" sh -c "echo '$out' | grep -q '^HUBFLEET-NEED-UPLOAD' && ! echo '$out' | grep -q pwned"
# A cache directory others can write is set back to 0700; a home others can
# write is refused (as OpenSSH's StrictModes would), and nothing runs.
chmod 777 "$CACHE"
tssh "$STCMD" < /dev/null > /dev/null 2>&1
check "a cache others could write is set back to 0700" [ "$(stat -c %a "$CACHE")" = 700 ]
chmod 775 "$THOME"
out=$(tssh "$STCMD" < /dev/null 2>&1)
check "a group-writable home: refused, naming it" sh -c "echo '$out' | grep -q '^HUBFLEET-UNSAFE $THOME\$'"
"$HUBFLEET" audit -i "$T/inv1.ini" --agent "$AGENT" > "$T/unsafe.out" 2>&1
check "a group-writable home: the audit says which path and how to fix it" \
  grep -q "refusing to run the agent: $THOME is writable by group or others.*chmod go-w" "$T/unsafe.out"
chmod 700 "$THOME"
rm -rf "$CACHE"

# --- 5. hostile agents --------------------------------------------------------
inventory "$T/inv2.ini" 2 "$PORT_A" "$T/kh"
for m in garbage:protocol huge:protocol silent:timeout version:proto_version; do
  mode=${m%%:*} want=${m#*:}
  start=$(date +%s)
  "$HUBFLEET" audit -i "$T/inv2.ini" --agent "$TBUILD/hostile-agent-$mode" --timeout 3 --json --stats \
    > "$T/h-$mode.json" 2> "$T/h-$mode.err"
  rc=$? took=$(( $(date +%s) - start ))
  check "hostile $mode: controller exits 1 normally (rc=$rc, ${took}s)" [ $rc -eq 1 ]
  check "hostile $mode: both hosts fail with $want" \
    [ "$(jq_ "$T/h-$mode.json" 'sorted(set(f["code"] for f in d["failed"]))')" = "['$want']" ]
  check "hostile $mode: memory bounded (max rss < 50 MB)" \
    [ "$(jq_ "$T/h-$mode.json" 'd["stats"]["maxrss_kb"] < 50*1024')" = True ]
  check "hostile $mode: within the deadline" [ $took -le 12 ]
  rm -f "$CACHE/agent-$(sha256sum < "$TBUILD/hostile-agent-$mode" | cut -c1-64)"
done
jq_ "$T/h-huge.json" 'd["failed"][0]["message"]'
# Answers past what the controller keeps per host (20 envs of 40 long
# packages, about 400 KB): audited, each record cut to at most 8 KB and
# marked truncated. bigpkgs fits once its package lists go; bigfacts loses
# prefixes, Pythons and the database too; hugeenvs (250-byte roles and
# versions) loses its last environments as well.
# The tuple: (<= 8 KB, envs kept, truncated, db kept, any packages, any prefix).
for m in "bigpkgs:(True, 16, True, True, False, True)" "bigfacts:(True, 16, True, False, False, False)" \
         "hugeenvs:(True, 'fewer', True, False, False, False)"; do
  mode=${m%%:*} want=${m#*:}
  "$HUBFLEET" audit -i "$T/inv2.ini" --agent "$TBUILD/hostile-agent-$mode" --timeout 5 --json > "$T/h-$mode.json" 2> "$T/h-$mode.err"
  rc=$?
  check "hostile $mode: both hosts audited (rc=$rc)" [ $rc -eq 0 ]
  got=$(jq_ "$T/h-$mode.json" 'sorted({(len(json.dumps(h["facts"], separators=(",", ":"))) <= 8192,
     (len(h["facts"]["envs"]) if len(h["facts"]["envs"]) == 16 else "fewer" if 0 < len(h["facts"]["envs"]) < 16 else -1),
     h["facts"].get("truncated"), "db" in h["facts"], any("packages" in e for e in h["facts"]["envs"]),
     any("prefix" in e for e in h["facts"]["envs"])) for h in d["hosts"]})')
  check "hostile $mode: records $got, want $want" [ "$got" = "[$want]" ]
  rm -f "$CACHE/agent-$(sha256sum < "$TBUILD/hostile-agent-$mode" | cut -c1-64)"
done
check "hostile bigfacts: versions kept" [ "$(jq_ "$T/h-bigfacts.json" 'd["hosts"][0]["facts"]["envs"][15]["jupyterhub"]')" = 3.15 ]
jq_ "$T/h-version.json" 'd["failed"][0]["message"]'

# --- 6. a host that accepts TCP but never speaks (link dead after connect) ---
python3 - "$T/blackhole.port" <<'EOF' &
import socket, sys, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
open(sys.argv[1], "w").write(str(s.getsockname()[1]))
conns = []
end = time.time() + 120
while time.time() < end:
    s.settimeout(1)
    try: conns.append(s.accept()[0])
    except OSError: pass
EOF
PIDS+=($!)
for _ in $(seq 50); do [ -s "$T/blackhole.port" ] && break; sleep 0.1; done
BH=$(cat "$T/blackhole.port")
cp "$T/inv5.ini" "$T/invbh.ini"
sed -i "s/^h5 /h5 ansible_port=$BH /" "$T/invbh.ini"
start=$(date +%s)
"$HUBFLEET" audit -i "$T/invbh.ini" --agent "$T/agent-big" --timeout 3 --json > "$T/bh.json" 2>/dev/null
rc=$? took=$(( $(date +%s) - start ))
check "silent sshd: exit 1 (rc=$rc)" [ $rc -eq 1 ]
check "silent sshd: that host timed out, the 4 others audited" \
  [ "$(jq_ "$T/bh.json" '(d["summary"]["audited"], [f["code"] for f in d["failed"]])')" = "(4, ['timeout'])" ]
check "silent sshd: within the deadline (${took}s)" [ $took -le 8 ]

# --- 6b. authentication: a refused key is reported and never retried; ----
# ssh-agent; names resolved through uv_getaddrinfo
ssh-keygen -q -t ed25519 -N '' -f "$T/wrong"
sed "s|^ansible_ssh_private_key_file=.*|ansible_ssh_private_key_file=$T/wrong|" "$T/inv1.ini" > "$T/invW.ini"
"$HUBFLEET" audit -i "$T/invW.ini" --agent "$T/agent-big" --json --stats > "$T/auth.json" 2>/dev/null
check "refused key: auth error naming the user and what was tried, no retry" \
  [ "$(jq_ "$T/auth.json" '(d["failed"][0]["code"], "authentication refused for user" in d["failed"][0]["message"], d["stats"]["retries"])')" = "('auth', True, 0)" ]
eval "$(ssh-agent -s)" > /dev/null
AGENT_PID=$SSH_AGENT_PID
ssh-add -q "$T/id" 2> /dev/null
sed '/^ansible_ssh_private_key_file=/d; s/^ansible_host=127.0.0.1$/ansible_host=localhost/' "$T/inv5.ini" > "$T/invAg.ini"
sed -i "s/^\[hubs:vars\]$/[hubs:vars]/" "$T/invAg.ini"
echo "[localhost]:$PORT_A $(cut -d' ' -f1,2 "$T/keyA.pub")" >> "$T/kh"
HOME=$T/nohome "$HUBFLEET" audit -i "$T/invAg.ini" --agent "$T/agent-big" --json > "$T/agentauth.json" 2> "$T/agentauth.err"
rc=$?
check "ssh-agent auth and a resolved host name (localhost): audited (rc=$rc)" \
  [ "$(jq_ "$T/agentauth.json" 'd["summary"]["audited"]')" = 5 -a $rc -eq 0 ]
kill "$AGENT_PID" 2>/dev/null; unset SSH_AUTH_SOCK AGENT_PID

# --- 7. ProxyJump: hosts on sshd B reached through sshd A as the bastion ----
{
  echo "[127.0.0.1]:$PORT_A $(cut -d' ' -f1,2 "$T/keyA.pub")"
  echo "[127.0.0.1]:$PORT_B $(cut -d' ' -f1,2 "$T/keyB.pub")"
  echo "[127.0.0.1]:$PORT_C $(cut -d' ' -f1,2 "$T/keyA.pub")"
} > "$T/kh3"
inventory "$T/invJ.ini" 6 "$PORT_B" "$T/kh3"
sed -i "s/^\[hubs:vars\]$/[hubs:vars]\nhubfleet_jump=$TUSER@127.0.0.1:$PORT_A/" "$T/invJ.ini"
"$HUBFLEET" audit -i "$T/invJ.ini" --agent "$T/agent-big" --json --stats > "$T/jump.json" 2> "$T/jump.err"
rc=$?
check "ProxyJump: 6 hosts audited through the bastion (rc=$rc)" \
  [ "$(jq_ "$T/jump.json" 'd["summary"]["audited"]')" = 6 -a $rc -eq 0 ]
[ $rc -eq 0 ] || { jq_ "$T/jump.json" '[(f["host"], f["code"], f["message"]) for f in d["failed"]], d.get("stats")'; cat "$T/jump.err"; tail -n 30 "$T/A.log" "$T/B.log"; }
# A cold deploy through the bastion: six uploads share its connection, so
# window adjusts and data for one host arrive while another is pumped.
cp "$AGENT" "$T/agent-jump"
head -c $((3 << 20)) /dev/urandom >> "$T/agent-jump"
JHEX=$(sha256sum "$T/agent-jump" | cut -c1-64)
"$HUBFLEET" audit -i "$T/invJ.ini" --agent "$T/agent-jump" --json --stats > "$T/jumpcold.json" 2> "$T/jumpcold.err"
rc=$?
check "ProxyJump: a cold deploy uploads to all 6 hosts through the bastion (rc=$rc)" \
  [ "$(jq_ "$T/jumpcold.json" '(d["summary"]["audited"], d["stats"]["uploads"])')" = "(6, 6)" -a $rc -eq 0 ]
check "ProxyJump: the uploaded agent is whole" [ "$(sha256sum < "$CACHE/agent-$JHEX" | cut -c1-64)" = "$JHEX" ]
rm -f "$CACHE/agent-$JHEX"
# Many hosts on one bastion connection: 200 forward channels at once. The
# bastion is one endpoint, so at most 8 handshakes reach sshd B at once, under
# its MaxStartups 10. sshd counts a connection until its child reports the
# login, which can lag behind the client seeing it (a loaded machine), so B may
# still drop a few: every retry must match a drop B logged, and B must stay
# well below the drops of the 100-at-once run above.
inventory "$T/invJ200.ini" 200 "$PORT_B" "$T/kh3"
sed -i "s/^\[hubs:vars\]$/[hubs:vars]\nhubfleet_jump=$TUSER@127.0.0.1:$PORT_A/" "$T/invJ200.ini"
drops0=$(grep -c "drop connection" "$T/B.log")
"$HUBFLEET" audit -i "$T/invJ200.ini" --agent "$T/agent-big" --parallel 200 --json --stats > "$T/jump200.json" 2> "$T/jump200.err"
rc=$?
sleep 0.2   # sshd B's last log lines
drops=$(( $(grep -c "drop connection" "$T/B.log") - drops0 ))
retries=$(jq_ "$T/jump200.json" 'd["stats"]["retries"]')
check "ProxyJump: 200 hosts at --parallel 200 through one bastion (rc=$rc)" \
  [ "$(jq_ "$T/jump200.json" 'd["summary"]["audited"]')" = 200 -a $rc -eq 0 ]
check "ProxyJump: each of the $retries retries answers one of the $drops drops sshd B logged (under 10%)" \
  [ "$retries" = "$drops" -a "$drops" -lt 20 ]
[ $rc -eq 0 ] || jq_ "$T/jump200.json" '[(f["host"], f["code"], f["message"]) for f in d["failed"]][:10]'
sed -i "s/^hubfleet_jump=.*/hubfleet_jump=$TUSER@127.0.0.1:$PORT_C/" "$T/invJ.ini"
"$HUBFLEET" audit -i "$T/invJ.ini" --agent "$T/agent-big" --json > "$T/jumpno.json" 2>/dev/null
rc=$?
check "ProxyJump: a bastion that refuses forwarding fails every host behind it (rc=$rc)" \
  [ "$(jq_ "$T/jumpno.json" '(d["summary"]["failed"], "cannot reach" in d["failed"][0]["message"])')" = "(6, True)" ]
jq_ "$T/jumpno.json" 'd["failed"][0]["message"]'
grep -v "^\[127.0.0.1\]:$PORT_A" "$T/kh3" > "$T/kh4"
sed -i "s/^hubfleet_jump=.*/hubfleet_jump=$TUSER@127.0.0.1:$PORT_A/; s|^hubfleet_known_hosts=.*|hubfleet_known_hosts=$T/kh4|" "$T/invJ.ini"
"$HUBFLEET" audit -i "$T/invJ.ini" --agent "$T/agent-big" --json > "$T/jumpkey.json" 2>/dev/null
check "ProxyJump: an unknown bastion key refuses the hosts behind it" \
  [ "$(jq_ "$T/jumpkey.json" '(d["summary"]["failed"], all(f["code"] == "host_key" and "jump host" in f["message"] for f in d["failed"]))')" = "(6, True)" ]

echo "$fails failures"
[ $fails -eq 0 ]
