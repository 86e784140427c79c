#!/bin/sh
# cli.sh HUBFLEET SRCDIR ROOT: `hubfleet inventory` exit codes, error format, --json, list.
set -u
HF=$1
SRC=$2
ROOT=$3
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
expect() {  # expect WHAT WANT GOT
  if [ "$2" != "$3" ]; then echo "FAIL: $1: expected [$2], got [$3]"; fails=$((fails + 1)); fi
}

"$HF" inventory --help > "$tmp/out" 2>&1; expect "--help status" 0 $?
grep -q "inventory check FILE" "$tmp/out"; expect "--help text" 0 $?

"$HF" inventory check "$ROOT/examples/fleet.ini" > "$tmp/out" 2> "$tmp/err"; expect "example status" 0 $?
expect "example summary" "$ROOT/examples/fleet.ini: 6 hosts, 1 canary" "$(head -1 "$tmp/out")"
expect "example stderr" "" "$(cat "$tmp/err")"

"$HF" inventory check --json "$ROOT/examples/fleet.ini" > "$tmp/out"; expect "--json status" 0 $?
python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert len(d["hosts"]) == 6 and d["hosts"][0]["canary"]' "$tmp/out"
expect "--json parses" 0 $?

"$HF" inventory check "$SRC/invalid/cycle.ini" > "$tmp/out" 2> "$tmp/err"; expect "bad INI status" 2 $?
expect "bad INI stdout" "" "$(cat "$tmp/out")"
grep -q "^$SRC/invalid/cycle.ini:[0-9][0-9]*: " "$tmp/err"; expect "FILE:LINE: on stderr ($(cat "$tmp/err"))" 0 $?

"$HF" inventory check --json "$SRC/invalid/json_bad_become.json" > "$tmp/out" 2> "$tmp/err"; expect "bad JSON status" 2 $?
expect "FILE: JSON.path: on stderr" "$SRC/invalid/json_bad_become.json: _meta.hostvars.h1.hubfleet_become: host" \
  "$(cut -d' ' -f1-3 "$tmp/err")"

"$HF" inventory check "$tmp/absent.ini" > /dev/null 2>&1; expect "missing file" 2 $?
"$HF" inventory check > /dev/null 2>&1; expect "no FILE" 2 $?
"$HF" inventory frobnicate x > /dev/null 2>&1; expect "unknown action" 2 $?
"$HF" inventory check --bogus "$ROOT/examples/fleet.ini" > /dev/null 2>&1; expect "unknown option" 2 $?

# '-' reads standard input; a directory is refused with a hint.
expect "stdin" "$ROOT/examples/fleet.ini: 6 hosts, 1 canary" \
  "$("$HF" inventory check - < "$ROOT/examples/fleet.ini" | head -1 | sed "s|^-:|$ROOT/examples/fleet.ini:|")"
printf 'h1 ansible_port=0\n' | "$HF" inventory list - > /dev/null 2> "$tmp/err"; expect "stdin error status" 2 $?
grep -q "^/dev/stdin:1: host h1: ansible_port:" "$tmp/err"; expect "stdin error line" 0 $?
"$HF" inventory check "$SRC" > /dev/null 2> "$tmp/err"; expect "directory status" 2 $?
grep -q "is a directory" "$tmp/err"; expect "directory message" 0 $?

expect "list all" 6 "$("$HF" inventory list "$ROOT/examples/fleet.ini" | wc -l)"
expect "list --limit" "teach01.hubs.example.org teach03.hubs.example.org gpu-a.hubs.example.org" \
  "$("$HF" inventory list "$ROOT/examples/fleet.ini" --limit 'campus:!teach02*:!gpu-b*' | tr '\n' ' ' | sed 's/ $//')"
expect "list --limit=canary" "staging.hubs.example.org" "$("$HF" inventory list "$ROOT/examples/fleet.ini" --limit=canary)"

[ $fails -eq 0 ] && echo "inventory CLI: all checks passed"
exit $fails
