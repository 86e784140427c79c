#!/usr/bin/env bash
# test-prometheus.sh: `hubfleet audit --prometheus FILE` on a real test fleet
# (hubs, scale hosts with drift, one host cut off) writes metrics that
# Prometheus's own promtool accepts and that agree with the audit.
set -euo pipefail
HF=$1
SRC=$(cd "$(dirname "$0")/../.." && pwd)
ID=prm$$
FLEET=("$SRC/tests/fleet/fleet" --id "$ID")
WORK=$(mktemp -d /tmp/hf-prom-XXXXXX)
cleanup() { "${FLEET[@]}" down >/dev/null 2>&1 || true; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v promtool >/dev/null || fail "promtool is not installed (Debian package prometheus; scripts/deps.sh installs it)"

"${FLEET[@]}" up --hubs 2 --scale 30 >/dev/null
"${FLEET[@]}" inventory > "$WORK/fleet.ini"
"${FLEET[@]}" fault cut hub02 >/dev/null
PROM=$WORK/textfile/hubfleet.prom
mkdir -p "$WORK/textfile"
echo "stale" > "$PROM"
rc=0
"$HF" audit -i "$WORK/fleet.ini" --timeout 5 --json --prometheus "$PROM" > "$WORK/audit.json" || rc=$?
[ "$rc" -eq 1 ] || fail "audit with a cut host exited $rc, expected 1"
promtool check metrics < "$PROM" || fail "promtool rejects the metrics"
ls "$WORK/textfile" | grep -q tmp && fail "a temporary file was left next to the metrics"
/usr/bin/python3 - "$PROM" "$WORK/audit.json" <<'PY'
import json, re, sys
text = open(sys.argv[1]).read()
doc = json.load(open(sys.argv[2]))
series = {}
for line in text.splitlines():
    if line.startswith('#') or not line.strip():
        continue
    m = re.fullmatch(r'([a-z_]+)(\{.*\})? (\S+)', line)
    assert m, line
    labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m[2] or ''))
    series.setdefault(m[1], []).append((labels, float(m[3])))
hosts = doc['hosts']
ok = [h for h in hosts if h['ok']]
bad = [h for h in hosts if not h['ok']]
assert [h['name'] for h in bad] == ['hub02'], [h['name'] for h in bad]
assert series['hubfleet_audit_hosts'][0][1] == len(hosts)
assert series['hubfleet_audit_hosts_unreachable'][0][1] == 1
reach = {l['host']: v for l, v in series['hubfleet_host_reachable']}
assert reach['hub02'] == 0 and reach['hub01'] == 1 and len(reach) == len(hosts)
# one version series per environment of every audited host, with the audit's versions
want = sorted((h['name'], e['prefix'], e['jupyterhub']) for h in ok for e in h['facts']['envs'] if e.get('jupyterhub'))
got = sorted((l['host'], l['prefix'], l['version']) for l, v in series['hubfleet_jupyterhub_version_info'] if v == 1)
assert got == want, (len(got), len(want))
assert len({v for _, _, v in got}) > 1, 'the scale hosts should show drift'
groups = {l['host']: l['group'] for l, _ in series['hubfleet_jupyterhub_version_info']}
assert 'canary' in groups['hub01'].split(',') and 'scale' in groups[ok[-1]['name']].split(','), groups
up = {l['host']: v for l, v in series['hubfleet_hub_up']}
assert up['hub01'] == 1, up
assert series['hubfleet_audit_duration_seconds'][0][1] > 0
print('prometheus: %d series checked against the audit of %d hosts' % (sum(len(v) for v in series.values()), len(hosts)))
PY
echo "1 passed, 0 failed"
