#!/bin/bash
# A real JupyterHub release, by hand over plain ssh as the hub's login user:
# 3.0.0 -> 4.1.6 (wheel built by `fleet wheels` from JupyterHub's own release
# archive) with its real alembic migration 651f5419b74d -> 0eee8c825d24,
# checked in the live database after; 5.4.6 refused by pip (a requirement
# Debian 12 lacks) with the environment untouched; then the way back to 3.0.0
# (old version + the database backup: a real migration is not undone).
. "$(dirname "$0")/lib.sh"

step "wheels (real releases built once, then cached by archive sha256)"
t0=$SECONDS
check "fleet wheels" fleet wheels
echo "# fleet wheels took $((SECONDS - t0))s"
rel() { fleet versions --long | awk -v v="$1" '$1 == "release" && $2 == v { print $3 }'; }
check "fleet versions lists release 4.1.6 with head 0eee8c825d24" test "$(rel 4.1.6)" = 0eee8c825d24
check "fleet versions lists release 3.1.1, 4.0.2, 5.4.6" \
  test -n "$(rel 3.1.1)" -a -n "$(rel 4.0.2)" -a "$(rel 5.4.6)" = 4621fec11365
check "fixture kinds still listed" test "$(fleet versions | awk '{print $1}' | sort -u | tr '\n' ' ')" = \
  "bad-health bad-migration bad-start baseline newer release "

step "up --hubs 1 (fleet $HF_TEST_ID)"
fleet up --hubs 1
H=hub01
HUBENV=$(hostvar $H hubfleet_hub_env)
USERENV=$(hostvar $H hubfleet_user_envs)
CONF=$(hostvar $H hubfleet_config)
CONFDIR=$(dirname "$CONF")
DB=$(hostvar $H hubfleet_db | sed 's|^sqlite:///||')
SUPCONF=$(hostvar $H hubfleet_supervisor_config)
BACKUPS=$(hostvar $H hubfleet_backup_dir)
WHEELS=$(hostvar $H hubfleet_find_links)
URL=$(hostvar $H hubfleet_health_url)
LOGF=$(hostvar $H hubfleet_hub_log)
BASE=3.0.0; BASEREV=651f5419b74d; NEW=4.1.6; NEWREV=0eee8c825d24

r() { fleet ssh $H -- "$@"; }
api() { r curl -sf -m 5 --noproxy '*' "$URL/hub/api"; }
api_is() { [ "$(api 2>/dev/null)" = "{\"version\": \"$1\"}" ]; }
health_code() { r curl -s -m 5 --noproxy '*' -o /dev/null -w '%{http_code}' "$URL/hub/health"; }
alembic() { r sqlite3 "$DB" 'select version_num from alembic_version'; }
hub_state() { r supervisorctl -c "$SUPCONF" status jupyterhub | awk '{ print $2 }'; }
stop_hub() { r supervisorctl -c "$SUPCONF" stop jupyterhub >/dev/null || true; check "stopped" not api; }
start_hub() { r supervisorctl -c "$SUPCONF" start jupyterhub >/dev/null || true; }
pipi() { local env=$1; shift; r "$env/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" "$@"; }
dist() { r bash -c 'cd "$1"/lib/python3*/site-packages && ls -d jupyterhub-*.dist-info' _ "$1"; }
upgrade_db() { r env -C "$CONFDIR" PATH="$HUBENV/bin:/usr/bin:/bin" "$HUBENV/bin/jupyterhub" upgrade-db 2>&1; }

step "the wheel dir and the hub env look like a real pip install"
check "the wheel dir holds jupyterhub-4.1.6-py3-none-any.whl" r test -f "$WHEELS/jupyterhub-$NEW-py3-none-any.whl"
check "the hub env has bin/alembic (upgrade-db runs it from PATH)" r test -x "$HUBENV/bin/alembic"
alembic_runs() { r "$HUBENV/bin/alembic" --help >/dev/null; }
check "that alembic runs" alembic_runs
check "baseline: /hub/api says $BASE" api_is $BASE
check "baseline: alembic $BASEREV" test "$(alembic)" = $BASEREV

step "backup and stop"
check "sqlite3 .backup" r sqlite3 "$DB" ".backup $BACKUPS/pre.sqlite"
sum_backup=$(r sha256sum "$BACKUPS/pre.sqlite" | cut -d' ' -f1)
users_before=$(r sqlite3 "$DB" 'select count(*) from users')
stop_hub

step "pip install jupyterhub==$NEW (the real release; dependencies from Debian)"
check "pip install --upgrade in the hub env" pipi "$HUBENV" --upgrade "jupyterhub==$NEW"
check "pip install --upgrade in the user env" pipi "$USERENV" --upgrade "jupyterhub==$NEW"
check "hub env: only jupyterhub-$NEW.dist-info" test "$(dist "$HUBENV")" = "jupyterhub-$NEW.dist-info"
check "user env: only jupyterhub-$NEW.dist-info" test "$(dist "$USERENV")" = "jupyterhub-$NEW.dist-info"
check "its METADATA is the real one (no hubfleet TEST BUILD)" \
  not r grep -rq 'hubfleet TEST BUILD' "$(r bash -c 'echo "$1"/lib/python3*/site-packages' _ "$HUBENV")/jupyterhub-$NEW.dist-info/METADATA"
check "jupyterhub --version says $NEW" test "$(r "$HUBENV/bin/jupyterhub" --version)" = $NEW
refuses_old_schema() {
  local out
  out=$(r env -C "$CONFDIR" timeout 60 "$HUBENV/bin/jupyterhub" -f "$CONF" 2>&1) && return 1
  grep -q "Found database schema version $BASEREV != $NEWREV" <<<"$out"
}
check "4.1.6 refuses to start on the 3.0.0 schema" refuses_old_schema
rc=0; out=$(upgrade_db) || rc=$?
echo "$out" | grep -E 'Running upgrade|Upgrading|ERROR' | sed 's/^/#   /'
check "jupyterhub upgrade-db exits 0" test "$rc" = 0
check "it ran the real migration $BASEREV -> $NEWREV" grep -q "Running upgrade $BASEREV -> $NEWREV, added properties column" <<<"$out"
check "live db: alembic revision $NEWREV" test "$(alembic)" = $NEWREV
check "live db: groups.properties exists" r sqlite3 "$DB" 'select properties from groups limit 1'
check "live db: users kept" test "$(r sqlite3 "$DB" 'select count(*) from users')" = "$users_before"
r truncate -s 0 "$LOGF"
start_hub
check "/hub/api says $NEW" wait_for 90 api_is $NEW
check "/hub/health 200" test "$(health_code)" = 200
check "supervisord: RUNNING" wait_for 10 test "$(hub_state)" = RUNNING
check "hub log: no error" not r grep -E '^\[E |Traceback' "$LOGF"
check "the running hub's database is still at $NEWREV" test "$(alembic)" = $NEWREV

step "5.4.6 cannot be installed on Debian 12 (pydantic>=2, jupyter_events)"
rc=0; out=$(pipi "$HUBENV" --upgrade jupyterhub==5.4.6 2>&1) || rc=$?
echo "$out" | grep ERROR | head -2 | sed 's/^/#   /'
check "pip refuses 5.4.6" test "$rc" != 0
check "naming a requirement Debian 12 lacks" grep -Eqi 'jupyter.events|pydantic' <<<"$out"
check "hub env untouched: still $NEW" test "$(dist "$HUBENV")" = "jupyterhub-$NEW.dist-info"
check "hub still answers $NEW" api_is $NEW

step "back to $BASE: the old version and the backup (the migration is not undone)"
stop_hub
check "reinstall $BASE in both environments" pipi "$HUBENV" --upgrade "jupyterhub==$BASE"
check "user env too" pipi "$USERENV" --upgrade "jupyterhub==$BASE"
check "restore the backup" r bash -c 'rm -f "$2-wal" "$2-shm" "$2-journal" && cp "$1" "$2"' _ "$BACKUPS/pre.sqlite" "$DB"
check "restored db equals the backup" test "$(r sha256sum "$DB" | cut -d' ' -f1)" = "$sum_backup"
check "alembic back at $BASEREV" test "$(alembic)" = $BASEREV
start_hub
check "/hub/api says $BASE" wait_for 90 api_is $BASE
check "/hub/health 200" test "$(health_code)" = 200

echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
