#!/usr/bin/env bash
# test-install.sh: `meson install --destdir` gives a tree where man finds every
# page, bash completion completes subcommands and rollout ids, and the
# installed hubfleet finds its installed agent and audits a real test fleet.
set -euo pipefail
BUILD=$1
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DEST=$(mktemp -d /tmp/hf-install-XXXXXX)
ID=inst$$
FLEET=("$SRC/tests/fleet/fleet" --id "$ID")
cleanup() { "${FLEET[@]}" down >/dev/null 2>&1 || true; rm -rf "$DEST"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

meson install -C "$BUILD" --destdir "$DEST" --no-rebuild --quiet
PREFIX=$(meson introspect "$BUILD" --buildoptions | /usr/bin/python3 -c 'import json,sys; print([o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"][0])')
ROOT=$DEST$PREFIX
HF=$ROOT/bin/hubfleet
[ -x "$HF" ] || fail "no $HF"
[ -x "$ROOT/libexec/hubfleet/hubfleet-agent" ] || fail "agent not installed in libexec/hubfleet"
file "$ROOT/libexec/hubfleet/hubfleet-agent" | grep -q 'statically linked' || fail "installed agent is not static"
[ -r "$ROOT/share/hubfleet/upgrade-rules.json" ] || fail "rules not installed"

# man finds every page
for page in hubfleet hubfleet-inventory hubfleet-audit hubfleet-upgrade hubfleet-resume hubfleet-rollback \
            hubfleet-status hubfleet-history hubfleet-report hubfleet-agent; do
  got=$(MANPATH=$ROOT/share/man man -w "$page") || fail "man does not find $page"
  [[ $got == "$ROOT"/* ]] || fail "man found $page outside the installed tree: $got"
  MANPATH=$ROOT/share/man MANWIDTH=80 man "$page" 2>&1 >/dev/null | grep -q . && fail "man warns on $page"
done
# every subcommand has --help and its man page names every command in the help
for c in inventory audit upgrade resume rollback status history report; do
  "$HF" "$c" --help >/dev/null || fail "$c --help exits non-zero"
  MANPATH=$ROOT/share/man MANWIDTH=200 man hubfleet | grep -qw "$c" || fail "hubfleet(1) does not list $c"
done

# bash completion: subcommands, options
COMP=$ROOT/share/bash-completion/completions/hubfleet
[ -r "$COMP" ] || fail "no completion file"
out=$(bash -c 'source "$1"; COMP_WORDS=(hubfleet up); COMP_CWORD=1; _hubfleet; echo "${COMPREPLY[@]}"' _ "$COMP")
[ "$out" = upgrade ] || fail "completion of 'up' gave '$out'"
out=$(bash -c 'source "$1"; COMP_WORDS=(hubfleet upgrade --max); COMP_CWORD=2; _hubfleet; echo "${COMPREPLY[@]}"' _ "$COMP")
[ "$out" = --max-failures ] || fail "completion of 'upgrade --max' gave '$out'"

# the installed program audits a real fleet with the installed agent
"${FLEET[@]}" up --hubs 1 >/dev/null
INV=$DEST/fleet.ini
"${FLEET[@]}" inventory > "$INV"
env -u HUBFLEET_AGENT "$HF" audit -i "$INV" --json > "$DEST/audit.json" || fail "installed hubfleet audit failed"
/usr/bin/python3 - "$DEST/audit.json" <<'PY' || fail "audit document"
import json, sys
doc = json.load(open(sys.argv[1]))
hosts = doc["hosts"]
assert len(hosts) == 1 and hosts[0]["ok"], hosts
envs = hosts[0]["facts"]["envs"]
assert all(e["jupyterhub"] == "3.0.0" for e in envs), envs
PY
# rollout ids complete from the state file
export XDG_STATE_HOME=$DEST/state
"$HF" upgrade -i "$INV" --to 3.0.0 --dry-run >/dev/null || fail "installed dry run"
echo "install: ok ($(find "$DEST" -type f | wc -l) files)"
echo "1 passed, 0 failed"
