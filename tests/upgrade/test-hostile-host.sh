#!/bin/bash
# Issue 13, items 5 and 8: a hostile host's agent (hostile-agent.py) floods
# warn/error events whose text, like its error message, carries terminal
# escapes (title, OSC 52 clipboard, clear screen, a carriage return and a
# spoofed "h2: upgraded" line, C1 CSI, a bidi override). The controller's
# output (upgrade, status, history, report, rollback, audit, inventory check)
# must hold none of them; the state
# records at most the per-request cap plus one summary line; the hub is untouched.
# usage: test-hostile-host.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
NHUBS=${HF_TEST_HUBS:-1}
HOSTILE=$(cd "$(dirname "$0")" && pwd)/hostile-agent.py
up_fleet
H=${HUBLIST[0]}
procs_snapshot > "$W/procs"
# escapes_in FILE: counts the bytes/sequences no output may carry
# (with a second argument: escapes only; a line of an HTML file may start anywhere)
escapes_in() {
  $PY - "$1" "${2:-}" <<'PYEOF'
import sys
b = open(sys.argv[1], 'rb').read()
bad = sum(b.count(x) for x in (b'\x1b', b'\x07', b'\r', b'\x08', b'\x7f', b'\xc2\x9b', b'\xe2\x80\xae'))
spoof = [l for l in b.split(b'\n') if (l.startswith(b'h2: upgraded') or l.startswith(b'h3: upgraded')) and not sys.argv[2]]
for x in (b'\x1b', b'\x07', b'\r', b'\x08', b'\x7f', b'\xc2\x9b', b'\xe2\x80\xae'):
    i = b.find(x)
    if i >= 0:
        print('%s: %r at %d: %r' % (sys.argv[1], x, i, b[max(0, i - 80):i + 40]), file=sys.stderr)
if spoof:
    print('%s: spoofed line %r' % (sys.argv[1], spoof[0][:80]), file=sys.stderr)
print(bad + len(spoof))
PYEOF
}

step "upgrade through the hostile agent (HF_FLOOD=${HF_FLOOD:-50000} events per request)"
t0=$(date +%s.%N)
"$HUBFLEET" upgrade -i "$INV" --to "$NEW" --agent "$HOSTILE" --state "$STATE" > "$W/out" 2> "$W/err"
rc=$?
t1=$(date +%s.%N)
echo "# upgrade exited $rc after $($PY -c "print('%.1f' % ($t1 - $t0))") s; state file $(stat -c %s "$STATE") bytes"
check "upgrade fails the host (exit 1, rc=$rc)" test $rc -eq 1
check "upgrade's stdout holds no terminal escape or spoofed line" test "$(escapes_in "$W/out")" = 0
check "upgrade's stderr holds no terminal escape or spoofed line" test "$(escapes_in "$W/err")" = 0
check "the host's error is still shown (escapes as ?)" grep -q "refused" "$W/out" "$W/err"
RID=$(hf history --state "$STATE" --ids | head -1)
$PY - "$STATE" "$RID" "$H" > "$W/evcount" <<'PYEOF'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
rows = c.execute("SELECT text FROM events WHERE rollout=? AND host=?", (sys.argv[2], sys.argv[3])).fetchall()
print(len(rows), sum(len(r[0]) for r in rows), sum('not recorded (cap' in r[0] for r in rows))
PYEOF
read -r nev bytes summ < "$W/evcount"
echo "# state: $nev events, $bytes bytes of text for $H"
check "state: at most 200 agent lines + a few of the controller's ($nev)" test "$nev" -le 210
check "state: at most 64 KiB + a few lines of text ($bytes bytes)" test "$bytes" -le 70000
check "state: one summary line of what was held back ($summ)" test "$summ" -eq 1
check "state file under 1 MB" test "$(stat -c %s "$STATE")" -lt 1048576

step "status, history and report replay the stored text"
hf status --state "$STATE" > "$W/status.out" 2>&1
check "status exits 0" test $? -eq 0
check "status output holds no terminal escape" test "$(escapes_in "$W/status.out")" = 0
hf status --state "$STATE" --steps > "$W/steps.out" 2>&1
check "status --steps output holds no terminal escape" test "$(escapes_in "$W/steps.out")" = 0
hf history --state "$STATE" > "$W/history.out" 2>&1
check "history output holds no terminal escape" test "$(escapes_in "$W/history.out")" = 0
hf report "$RID" --state "$STATE" -o "$W/report.html" > "$W/report.out" 2>&1
check "report written" test -s "$W/report.html"
check "report holds no raw escape" test "$(escapes_in "$W/report.html" html)" = 0
check "no report temporary file left" test -z "$(ls -A "$W" | grep 'report.html.tmp')"

step "rollback, audit and inventory check print through the same edge"
# rollback only contacts hosts the rollout may have changed: record the host
# as upgraded so the rollback really talks to the hostile agent
$PY - "$STATE" "$RID" "$H" <<'PYEOF'
import sqlite3, sys
c = sqlite3.connect(sys.argv[1])
c.execute("UPDATE hosts SET status='upgraded', step='health', error=NULL WHERE rollout=? AND host=?", (sys.argv[2], sys.argv[3]))
c.commit()
PYEOF
hf rollback "$RID" --state "$STATE" --agent "$HOSTILE" > "$W/rb.out" 2>&1
rc=$?
echo "# rollback exited $rc"
check "rollback reached the hostile host and failed it (rc=$rc)" test $rc -ne 0
check "rollback names the host's refusal (escapes as ?)" grep -q "refused" "$W/rb.out"
check "rollback output holds no terminal escape or spoofed line" test "$(escapes_in "$W/rb.out")" = 0
hf audit -i "$INV" --agent "$HOSTILE" > "$W/audit.out" 2> "$W/audit.err"
echo "# audit exited $?"
check "audit's stdout holds no terminal escape or spoofed line" test "$(escapes_in "$W/audit.out")" = 0
check "audit's stderr holds no terminal escape or spoofed line" test "$(escapes_in "$W/audit.err")" = 0
check "audit still names the host's refusal (escapes as ?)" grep -q "refused" "$W/audit.out" "$W/audit.err"
# an inventory whose host variable carries escapes: the error names it, cleaned
$PY - "$INV" "$W/evil.ini" <<'PYEOF'
import sys
lines = open(sys.argv[1]).read().split('\n')
for i, l in enumerate(lines):
    if l.strip() and not l.startswith('[') and not l.startswith('#') and ' ' in l:
        lines[i] = l + ' hubfleet_service=\x1b]0;pwned\x07\x1b[2J\rh2:\x7fupgraded'
        break
open(sys.argv[2], 'w').write('\n'.join(lines))
PYEOF
hf inventory check "$W/evil.ini" > "$W/inv.out" 2>&1
rc=$?
check "inventory check refuses the bad service (exit $rc)" test $rc -ne 0
check "inventory check's output holds no terminal escape" test "$(escapes_in "$W/inv.out")" = 0
check "inventory check names where and what (FILE:LINE, the control character)" grep -q "evil.ini:[0-9]*: control character 0x1b" "$W/inv.out"
check "$H untouched (no journal, no backup, same hub process)" untouched "$H" "$RID" "$W/procs"
finish
