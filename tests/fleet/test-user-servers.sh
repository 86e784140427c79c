#!/bin/bash
# Hubs whose users are using them (fleet up --user-servers): alice's and bob's
# real jupyterhub-singleuser servers (Debian's notebook), each with a python3
# kernel, spawned by the hub, on a SQLite hub and a PostgreSQL hub, configured
# for zero-downtime restarts (cleanup_servers = False, the proxy its own
# supervisord program).  A probe requests every server through the proxy every
# 100 ms while hub01 is restarted and then upgraded by hand to 4.1.6 (real
# migration): the users' downtime must be 0, the servers and kernels the same
# processes after, and the hub must find them again.
. "$(dirname "$0")/lib.sh"

step "wheels, up --hubs 1 --pg-hubs 1 --user-servers (fleet $HF_TEST_ID)"
fleet wheels >/dev/null
t0=$SECONDS
fleet up --hubs 1 --pg-hubs 1 --user-servers
echo "# fleet up --hubs 1 --pg-hubs 1 --user-servers took $((SECONDS - t0))s"
STATE=$(fleet path state)
st=$(fleet status) || true
echo "$st"
check "status: all up" fleet status
check "status: hub01's servers answer" grep -q '^hub01 .* servers=alice:200,bob:200$' <<<"$st"
check "status: hub02's servers answer" grep -q '^hub02 .* servers=alice:200,bob:200$' <<<"$st"

H=hub01
T=$(dirname "$(dirname "$(hostvar $H hubfleet_config)")")
HUBENV=$(hostvar $H hubfleet_hub_env)
CONF=$(hostvar $H hubfleet_config)
CONFDIR=$(dirname "$CONF")
DB=$(hostvar $H hubfleet_db | sed 's|^sqlite:///||')
SUPCONF=$(hostvar $H hubfleet_supervisor_config)
WHEELS=$(hostvar $H hubfleet_find_links)
URL=$(hostvar $H hubfleet_health_url)
URL2=$(hostvar hub02 hubfleet_health_url)
PGURL=$(hostvar hub02 hubfleet_db)
TOKEN=$(fleet ssh $H -- cat "$CONFDIR/fleet-service-token")
r() { fleet ssh $H -- "$@"; }
api_is() { [ "$(curl -sf -m 5 --noproxy '*' "$URL/hub/api" 2>/dev/null)" = "{\"version\": \"$1\"}" ]; }
running_in_db_sqlite() { r sqlite3 "$DB" 'select count(*) from spawners where server_id is not null'; }
running_in_db_pg() { fleet ssh hub02 -- psql -X -w -At -d "$PGURL" -c 'select count(*) from spawners where server_id is not null'; }
pids() { pgrep -f "$T/user-env/bin/jupyterhub-singleuser" | sort | tr '\n' ' '; pgrep -f "$T/users/.*/kernel-" | sort | tr '\n' ' '; }
users_running() {  # the hub's view: /hub/api/users shows alice and bob with a server
  curl -sf -m 10 --noproxy '*' -H "Authorization: token $TOKEN" "$URL/hub/api/users" |
    $PY -c 'import json, sys; print(" ".join(sorted(u["name"] for u in json.load(sys.stdin) if u["server"])))'
}

step "the zero-downtime configuration"
check "cleanup_servers = False" r grep -q '^c.JupyterHub.cleanup_servers = False' "$CONF"
check "the proxy is not the hub's child" r grep -q '^c.ConfigurableHTTPProxy.should_start = False' "$CONF"
check "supervisord runs the proxy as its own program" test "$(r supervisorctl -c "$SUPCONF" status proxy | awk '{print $2}')" = RUNNING
check "SQLite hub's database: 2 servers running" test "$(running_in_db_sqlite)" = 2
check "PostgreSQL hub's database: 2 servers running" test "$(running_in_db_pg)" = 2
check "the hub's API: alice and bob have servers" test "$(users_running)" = "alice bob"
KALICE=$($PY -c 'import json, sys; print(json.load(open(sys.argv[1]))["kernels"]["hub01"]["alice"])' "$STATE/state.json")
kernel_alive() { curl -sf -m 5 --noproxy '*' -H "Authorization: token $TOKEN" "$URL/user/alice/api/kernels/$KALICE" >/dev/null; }
check "alice's kernel $KALICE is there" kernel_alive
PIDS=$(pids)
echo "# servers and kernels: $PIDS"
check "2 servers + 2 kernels on hub01" test "$(wc -w <<<"$PIDS")" = 4

# probe: GET /user/NAME/api through the proxy every 100 ms; longest gap between answers
PROBE_OUT=$(mktemp); PROBE_STOP=$(mktemp -u)
$PY - "$URL" "$PROBE_STOP" >"$PROBE_OUT" 2>&1 <<'EOF' &
import json, os, sys, time, urllib.request
base, stop = sys.argv[1], sys.argv[2]
op = urllib.request.build_opener(urllib.request.ProxyHandler({}))
last, gap, n, bad = {}, {}, 0, 0
while not os.path.exists(stop):
    t = time.monotonic()
    for u in ('alice', 'bob'):
        try:
            with op.open('%s/user/%s/api' % (base, u), timeout=1) as r:
                ok = r.status == 200
        except Exception:
            ok = False
        now = time.monotonic()
        n += 1
        if ok:
            if u in last:
                gap[u] = max(gap.get(u, 0), now - last[u])
            last[u] = now
        else:
            bad += 1
    time.sleep(max(0, 0.1 - (time.monotonic() - t)))
print(json.dumps({'requests': n, 'failed': bad, 'longest_gap_s': gap}))
EOF
PROBE=$!
sleep 1

step "restart hub01 (supervisorctl stop, wait, start) under the probe"
r supervisorctl -c "$SUPCONF" stop jupyterhub >/dev/null || true
check "the hub is down" not api_is 3.0.0
sleep 3
check "alice's server answers through the proxy while the hub is down" curl -sf -m 5 --noproxy '*' -o /dev/null "$URL/user/alice/api"
r supervisorctl -c "$SUPCONF" start jupyterhub >/dev/null || true
check "the hub is back" wait_for 90 api_is 3.0.0
check "the hub finds them again (/hub/api/users)" wait_for 30 test "$(users_running)" = "alice bob"

step "upgrade hub01 to 4.1.6 by hand under the probe"
r supervisorctl -c "$SUPCONF" stop jupyterhub >/dev/null || true
check "pip install 4.1.6 (hub env)" r "$HUBENV/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" --upgrade jupyterhub==4.1.6
upgrade_db() { r env -C "$CONFDIR" PATH="$HUBENV/bin:/usr/bin:/bin" "$HUBENV/bin/jupyterhub" upgrade-db >/dev/null 2>&1; }
check "upgrade-db" upgrade_db
check "live db: alembic 0eee8c825d24" test "$(r sqlite3 "$DB" 'select version_num from alembic_version')" = 0eee8c825d24
r supervisorctl -c "$SUPCONF" start jupyterhub >/dev/null || true
check "/hub/api says 4.1.6" wait_for 90 api_is 4.1.6
check "4.1.6 finds alice's and bob's servers" wait_for 30 test "$(users_running)" = "alice bob"
sleep 1
touch "$PROBE_STOP"; wait $PROBE || true
res=$(cat "$PROBE_OUT"); rm -f "$PROBE_OUT" "$PROBE_STOP"
echo "# probe: $res"
check "probe: no request failed (users' downtime 0 s)" $PY -c 'import json, sys; d = json.loads(sys.argv[1]); sys.exit(d["failed"] != 0 or d["requests"] < 40)' "$res"
check "probe: longest gap between answers under 1 s" $PY -c 'import json, sys; d = json.loads(sys.argv[1]); sys.exit(not d["longest_gap_s"] or max(d["longest_gap_s"].values()) >= 1.0)' "$res"
check "the same server and kernel processes" test "$(pids)" = "$PIDS"
check "alice's kernel is still there" kernel_alive
check "hub02's servers were not touched" test "$(curl -s -m 5 --noproxy '*' -o /dev/null -w '%{http_code}' "$URL2/user/bob/api")" = 200

step "down"
check "down" fleet down
gone_all() { local p; for p in $PIDS; do [ ! -e /proc/$p ] || [ "$(awk '{ print $3 }' /proc/$p/stat 2>/dev/null)" = Z ] || return 1; done; }
check "no server or kernel left" gone_all

echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
