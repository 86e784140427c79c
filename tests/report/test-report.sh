#!/usr/bin/env bash
# test-report.sh: the HTML report of a real test-fleet rollout, opened in
# headless Chromium: the DOM has one timeline row per host with the step
# outcomes the state recorded; hostile host names, errors and log lines render
# as text (no script runs); a screenshot is kept as a test artifact.
set -euo pipefail
HF=$1
OUT=$2                      # artifact directory (the build dir)
SRC=$(cd "$(dirname "$0")/../.." && pwd)
ID=rep$$
FLEET=("$SRC/tests/fleet/fleet" --id "$ID")
WORK=$(mktemp -d /tmp/hf-report-XXXXXX)
cleanup() { "${FLEET[@]}" down >/dev/null 2>&1 || true; [ -n "${KEEP:-}" ] || rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
CHROME=$(command -v chromium || true)
[ -n "$CHROME" ] || fail "chromium is not installed (scripts/deps.sh installs it)"
mkdir -p "$OUT"

chrome() { # chrome URL ARGS...: headless, no network, a fresh profile each time
  local url=$1; shift
  timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --no-first-run --disable-background-networking \
    --disable-component-update --disable-sync --disable-quic --user-data-dir="$WORK/profile.$RANDOM" "$@" "$url" 2>/dev/null
}

"${FLEET[@]}" up --hubs 2 >/dev/null
"${FLEET[@]}" inventory > "$WORK/fleet.ini"
BAD=$("${FLEET[@]}" versions | awk '$1 == "bad-start" {print $2}')
export XDG_STATE_HOME=$WORK/state
rc=0
"$HF" upgrade -i "$WORK/fleet.ini" --to "$BAD" --stages 1,100% --max-failures 1 --health-timeout 20 >/dev/null || rc=$?
[ "$rc" -ne 0 ] || fail "the bad-start rollout exited 0"
ROLLOUT=$("$HF" history --ids | head -n 1)

# 1. the real rollout's report, checked through the DOM Chromium built
"$HF" report "$ROLLOUT" -o "$WORK/report.html"
grep -qE '(src|href)="https?:' "$WORK/report.html" && fail "the report references external assets"
chrome "file://$WORK/report.html" --dump-dom > "$WORK/dom.html"
chrome "file://$WORK/report.html" --window-size=1200,1000 --screenshot="$OUT/report.png" >/dev/null
[ -s "$OUT/report.png" ] || fail "no screenshot"
"$HF" status "$ROLLOUT" --json > "$WORK/status.json"
/usr/bin/python3 - "$WORK/dom.html" "$WORK/status.json" <<'PY'
import json, sys
from html.parser import HTMLParser

class Rows(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.cur = {}, None
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == 'g' and 'host-row' in a.get('class', ''):
            self.cur = a['data-host']
            self.rows[self.cur] = {'status': a.get('data-status'), 'steps': []}
        elif tag == 'rect' and self.cur and 'step' in a.get('class', '').split():
            self.rows[self.cur]['steps'].append((a['data-step'], a['data-outcome']))
    def handle_endtag(self, tag):
        if tag == 'g':
            self.cur = None

p = Rows()
p.feed(open(sys.argv[1]).read())
st = json.load(open(sys.argv[2]))
hosts = {h['host']: h for h in st['hosts']}
assert sorted(p.rows) == sorted(hosts), ('one row per host', sorted(p.rows), sorted(hosts))
for name, row in p.rows.items():
    want = [(s['step'], s['outcome']) for s in st['steps'] if s['host'] == name and s['step'] != 'journal']
    assert row['steps'] == want, (name, row['steps'], want)
    assert row['status'] == hosts[name]['status'], (name, row['status'])
    outcomes = dict(row['steps'])
    # bad-start: installed fine, then start (or health, when supervisord saw
    # it up for a moment) failed, and the rollback restored the old hub
    assert outcomes.get('install') == 'ok' and 'failed' in (outcomes.get('start'), outcomes.get('health')) \
        and outcomes.get('rollback') == 'ok', (name, row['steps'])
print('dom: %d rows, steps match the state' % len(p.rows))
PY

# 2. hostile text from the state renders as text: a state file whose host
#    name, error and log line carry markup and quotes
cp "$XDG_STATE_HOME/hubfleet/state.db" "$WORK/hostile.db"
HOSTILE_HOST='hub01"><script>document.body.setAttribute("data-pwned","1")</script>'
HOSTILE_ERR="<img src=x onerror=\"document.body.setAttribute('data-pwned','2')\"> it's \"quoted\""
/usr/bin/python3 - "$WORK/hostile.db" "$ROLLOUT" "$HOSTILE_HOST" "$HOSTILE_ERR" <<'PY'
import sqlite3, sys
db, ro, host, err = sys.argv[1:]
c = sqlite3.connect(db)
c.execute("UPDATE hosts SET host=?, error=? WHERE rollout=? AND host='hub01'", (host, err, ro))
c.execute("UPDATE steps SET host=? WHERE rollout=? AND host='hub01'", (host, ro))
c.execute("INSERT INTO events(rollout,host,time,level,text) VALUES(?,?,0,'error',?)", (ro, host, '<script>document.body.setAttribute("data-pwned","3")</script> log line'))
c.commit()
PY
"$HF" report "$ROLLOUT" --state "$WORK/hostile.db" -o "$WORK/hostile.html"
chrome "file://$WORK/hostile.html" --dump-dom > "$WORK/hostile-dom.html"
chrome "file://$WORK/hostile.html" --window-size=1200,1000 --screenshot="$OUT/report-hostile.png" >/dev/null
/usr/bin/python3 - "$WORK/hostile-dom.html" "$HOSTILE_HOST" "$HOSTILE_ERR" <<'PY'
import sys
from html.parser import HTMLParser
class Text(HTMLParser):
    def __init__(self):
        super().__init__(); self.text = []; self.scripts = 0; self.imgs = 0; self.pwned = False
    def handle_starttag(self, tag, attrs):
        self.scripts += tag == 'script'; self.imgs += tag == 'img'
        if tag == 'body' and any(k == 'data-pwned' for k, _ in attrs):
            self.pwned = True
    def handle_data(self, d):
        self.text.append(d)
t = Text(); t.feed(open(sys.argv[1]).read())
text = ''.join(t.text)
assert not t.pwned, 'a script or handler from the state ran in the report (body has data-pwned)'
assert t.scripts == 0 and t.imgs == 0, ('markup from the state became elements', t.scripts, t.imgs)
assert sys.argv[2] in text, 'the hostile host name is not shown as text'
assert sys.argv[3] in text, 'the hostile error is not shown as text'
assert '<script>document.body.setAttribute("data-pwned","3")</script> log line' in text, 'log line not shown as text'
print('hostile: rendered as text, nothing ran')
PY
echo "screenshots: $OUT/report.png $OUT/report-hostile.png"
echo "1 passed, 0 failed"
