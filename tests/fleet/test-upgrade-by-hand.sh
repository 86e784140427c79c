#!/bin/bash
# JupyterHub's own upgrade procedure, by hand over plain ssh, as the hub
# host's login user, with the fixture wheels: backup, stop, pip install in
# both environments, upgrade-db, start, health.  Then the bad releases, each
# seen failing, and the rollback (old versions + restored backup) each time.
. "$(dirname "$0")/lib.sh"

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
ver() { fleet versions --long | awk -v k="$1" '$1 == k { print $2 }'; }
rev() { fleet versions --long | awk -v k="$1" '$1 == k { print $3 }'; }
BASE=$(ver baseline); BASEREV=$(rev baseline)

r() { fleet ssh $H -- "$@"; }                # run as the hub's user over ssh
api() { r curl -sf -m 5 --noproxy '*' "$URL/hub/api"; }
health_code() { r curl -s -m 5 --noproxy '*' -o /dev/null -w '%{http_code}' "$URL/hub/health"; }
api_is() { [ "$(api 2>/dev/null)" = "{\"version\": \"$1\"}" ]; }
alembic() { r sqlite3 "$DB" 'select version_num from alembic_version'; }
hub_state() { r supervisorctl -c "$SUPCONF" status jupyterhub | awk '{ print $2 }'; }
stopped_state() { case $(hub_state) in STOPPED|FATAL|EXITED) return 0 ;; esac; return 1; }
stop_hub() {
  r supervisorctl -c "$SUPCONF" stop jupyterhub >/dev/null || true
  check "stopped: supervisord says STOPPED/FATAL/EXITED" stopped_state
  check "stopped: /hub/api does not answer" not api
}
start_hub() { r supervisorctl -c "$SUPCONF" start jupyterhub || true; }
install() {  # VERSION ENV...: pip from the wheel dir, in each environment
  local v=$1 e; shift
  for e in "$@"; do
    r "$e/bin/python" -m pip install -q --disable-pip-version-check --no-index \
      --find-links "$WHEELS" --upgrade "jupyterhub==$v" || return 1
  done
}
installed_is() {  # VERSION ENV: the env's jupyterhub metadata says VERSION
  r bash -c 'ls -d "$1"/lib/python3*/site-packages/jupyterhub-"$2".dist-info' _ "$2" "$1" >/dev/null 2>&1 &&
    [ "$(r bash -c 'ls -d "$1"/lib/python3*/site-packages/jupyterhub-*.dist-info | wc -l' _ "$2")" -eq 1 ]
}
both_at() { installed_is "$1" "$HUBENV" && installed_is "$1" "$USERENV"; }
upgrade_db() { r env -C "$CONFDIR" PATH="$HUBENV/bin:/usr/bin:/bin" "$HUBENV/bin/jupyterhub" upgrade-db; }
restore() {  # back to the baseline: old versions, backup restored, started, healthy
  step "rollback to $BASE"
  stop_hub
  check "reinstall $BASE in both environments" install "$BASE" "$HUBENV" "$USERENV"
  # hub stopped: the backup file itself goes back (a WAL/journal beside it would be stale)
  check "restore the database from the backup" r bash -c 'rm -f "$2-wal" "$2-shm" "$2-journal" && cp "$1" "$2"' _ "$BACKUPS/pre.sqlite" "$DB"
  check "restored db is the backup (alembic $BASEREV)" test "$(alembic)" = "$BASEREV"
  start_hub
  check "rolled back: /hub/api says $BASE" wait_for 90 api_is "$BASE"
  check "rolled back: /hub/health 200" test "$(health_code)" = 200
}

step "baseline"
check "/hub/api says $BASE" api_is "$BASE"
check "/hub/health 200" test "$(health_code)" = 200
check "alembic revision is $BASEREV" test "$(alembic)" = "$BASEREV"
check "both environments have jupyterhub $BASE" both_at "$BASE"
users_before=$(r sqlite3 "$DB" 'select count(*) from users')

step "backup (sqlite3 .backup, consistent copy of the live file) and config"
check "sqlite3 .backup" r sqlite3 "$DB" ".backup $BACKUPS/pre.sqlite"
check "backup integrity ok" test "$(r sqlite3 "$BACKUPS/pre.sqlite" 'pragma integrity_check')" = ok
check "config copied" r cp "$CONF" "$BACKUPS/jupyterhub_config.py"
sum_backup=$(r sha256sum "$BACKUPS/pre.sqlite" | cut -d' ' -f1)

NEW=$(ver newer); NEWREV=$(rev newer)
step "upgrade to newer $NEW"
stop_hub
check "pip install $NEW in the hub and the user environment" install "$NEW" "$HUBENV" "$USERENV"
check "hub env metadata says $NEW" installed_is "$NEW" "$HUBENV"
check "user env metadata says $NEW" installed_is "$NEW" "$USERENV"
check "jupyterhub --version says $NEW" test "$(r "$HUBENV/bin/jupyterhub" --version)" = "$NEW"
refuses_old_schema() {
  local out
  out=$(r env -C "$CONFDIR" timeout 60 "$HUBENV/bin/jupyterhub" -f "$CONF" 2>&1) && return 1
  grep -q 'Found database schema version' <<<"$out"
}
check "the new code refuses the old schema before upgrade-db" refuses_old_schema
check "jupyterhub upgrade-db (in the config dir)" upgrade_db
check "alembic revision is now $NEWREV" test "$(alembic)" = "$NEWREV"
check "users kept" test "$(r sqlite3 "$DB" 'select count(*) from users')" = "$users_before"
r truncate -s 0 "$LOGF"
start_hub
check "/hub/api says $NEW" wait_for 90 api_is "$NEW"
check "/hub/health 200" test "$(health_code)" = 200
check "hub log since start holds no error" not r grep -E '^\[E |Traceback' "$LOGF"

step "the old code refuses the new schema"
stop_hub
check "hub env back to $BASE (database left migrated)" install "$BASE" "$HUBENV"
r truncate -s 0 "$LOGF"
start_hub
check "old hub does not come up on the new schema" not wait_for 15 api_is "$BASE"
check "its log says why" r grep -q 'Found database schema version' "$LOGF"
r supervisorctl -c "$SUPCONF" stop jupyterhub >/dev/null || true
check "hub env at $NEW again" install "$NEW" "$HUBENV"
start_hub
check "$NEW serves again" wait_for 90 api_is "$NEW"
restore
check "restored db checksum equals the backup's" test "$(r sha256sum "$DB" | cut -d' ' -f1)" = "$sum_backup"

BS=$(ver bad-start)
step "bad-start $BS"
stop_hub
check "pip install $BS (installs cleanly)" install "$BS" "$HUBENV" "$USERENV"
check "upgrade-db" upgrade_db
r truncate -s 0 "$LOGF"
start_hub
check "bad-start: hub never answers" not wait_for 20 api
check "bad-start: supervisord does not report it RUNNING" test "$(hub_state)" != RUNNING
check "bad-start: the log says why" r grep -q 'bad-start' "$LOGF"
restore

BH=$(ver bad-health)
step "bad-health $BH"
stop_hub
check "pip install $BH" install "$BH" "$HUBENV" "$USERENV"
check "upgrade-db" upgrade_db
start_hub
check "bad-health: /hub/api says $BH" wait_for 90 api_is "$BH"
check "bad-health: /hub/health is not 200" test "$(health_code)" != 200
restore

BM=$(ver bad-migration)
step "bad-migration $BM"
stop_hub
check "pip install $BM" install "$BM" "$HUBENV" "$USERENV"
check "bad-migration: upgrade-db fails on a database with users" not upgrade_db
check "bad-migration: alembic revision still $BASEREV" test "$(alembic)" = "$BASEREV"
restore

check "final: both environments at $BASE" both_at "$BASE"
echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
