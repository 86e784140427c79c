# tests/fleet/lib.sh: sourced by the fleet's tests.  Brings up a private fleet
# (its own --id) and always tears it down on exit, whatever happened.
set -euo pipefail
HF_FLEET=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/fleet
PY=/usr/bin/python3

if [ "$(id -u)" -ne 0 ]; then
  echo "FAIL: the fleet tests need root (network namespaces, users, sshd); not skipping" >&2
  exit 1
fi
if ! ip netns list >/dev/null 2>&1; then
  echo "FAIL: cannot use network namespaces here" >&2
  exit 1
fi

# A fleet id of our own, so parallel runs by other people do not collide.
HF_TEST_ID=${HF_TEST_ID:-t$$}
export HF_FLEET_ID=$HF_TEST_ID
fleet() { "$HF_FLEET" --id "$HF_TEST_ID" "$@"; }

_hf_cleanup() {
  local rc=$?
  if [ -n "${HF_KEEP:-}" ]; then
    echo "HF_KEEP set: leaving fleet $HF_TEST_ID up" >&2
  else
    fleet down >/dev/null 2>&1 || fleet down || rc=1
  fi
  exit $rc
}
trap _hf_cleanup EXIT
trap 'exit 130' INT TERM

fails=0
ok()   { echo "ok   - $* [${SECONDS}s]"; }
bad()  { echo "FAIL - $* [${SECONDS}s]" >&2; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
not()  { ! "$@"; }
step() { echo "# $*"; }

# hostvar HOST VAR: one variable of the fleet's inventory
hostvar() {
  fleet inventory --json | $PY -c '
import json, sys
d = json.load(sys.stdin)["_meta"]["hostvars"][sys.argv[1]]
v = d[sys.argv[2]]
print(str(v).lower() if isinstance(v, bool) else v)' "$1" "$2"
}
# hosts GROUP: host names of a group of the inventory
hosts_of() {
  fleet inventory --json | $PY -c '
import json, sys
d = json.load(sys.stdin)
def walk(g):
    out = list(d.get(g, {}).get("hosts", []))
    for c in d.get(g, {}).get("children", []):
        out += walk(c)
    return out
print("\n".join(sorted(set(walk(sys.argv[1])))))' "$1"
}
# wait_for SECONDS CMD...: poll (every 0.5s) until CMD succeeds; bounded.
wait_for() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  while [ $SECONDS -lt $end ]; do
    if "$@"; then return 0; fi
    sleep 0.5
  done
  "$@"
}
