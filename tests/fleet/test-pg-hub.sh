#!/bin/bash
# A hub on the fleet's PostgreSQL 15 (fleet up --pg-hubs 1), by hand over
# ssh as the hub's login user, with the credentials where the fleet put them
# (~/.pgpass, never in the inventory): the database is the hub's; a pg_dump
# backup; 3.0.0 -> 4.1.6 (real release) with the real migration checked in
# the live database; back to 3.0.0 by restoring the dump, every table equal
# to before; `down` stops the server and leaves nothing.
. "$(dirname "$0")/lib.sh"

step "wheels, up --hubs 0 --pg-hubs 1 (fleet $HF_TEST_ID)"
fleet wheels >/dev/null
t0=$SECONDS
fleet up --hubs 0 --pg-hubs 1
echo "# fleet up --hubs 0 --pg-hubs 1 took $((SECONDS - t0))s"
H=hub01
check "status: all up, with a pg line" bash -c "'$HF_FLEET' --id '$HF_TEST_ID' status | tee /dev/stderr | grep '^pg .* up .*accepting=yes' >/dev/null"
DBURL=$(hostvar $H hubfleet_db)
DUMP=$(hostvar $H hubfleet_db_dump)
HUBENV=$(hostvar $H hubfleet_hub_env)
CONF=$(hostvar $H hubfleet_config)
CONFDIR=$(dirname "$CONF")
SUPCONF=$(hostvar $H hubfleet_supervisor_config)
BACKUPS=$(hostvar $H hubfleet_backup_dir)
WHEELS=$(hostvar $H hubfleet_find_links)
URL=$(hostvar $H hubfleet_health_url)
STATE=$(fleet path state)
check "hubfleet_db is a postgresql:// URL without a password" \
  bash -c '[[ $1 =~ ^postgresql://hub01@10\.[0-9]+\.3\.1:5432/jupyterhub_hub01$ ]]' _ "$DBURL"
check "hubfleet_db_dump is pg_dump of that URL" test "$DUMP" = "/usr/bin/pg_dump --no-password --dbname=$DBURL"
check "host is in the inventory's [pg] group" test "$(hosts_of pg)" = "$H"
check "the INI inventory quotes the dump command" bash -c "'$HF_FLEET' --id '$HF_TEST_ID' inventory | grep \"hubfleet_db_dump='/usr/bin/pg_dump \" >/dev/null"

r() { fleet ssh $H -- "$@"; }
psq() { r psql -X -w -At -d "$DBURL" -c "$1"; }
api() { r curl -sf -m 5 --noproxy '*' "$URL/hub/api"; }
api_is() { [ "$(api 2>/dev/null)" = "{\"version\": \"$1\"}" ]; }
alembic() { psq 'select version_num from alembic_version'; }
stop_hub() { r supervisorctl -c "$SUPCONF" stop jupyterhub >/dev/null || true; check "stopped" not api; }
start_hub() { r supervisorctl -c "$SUPCONF" start jupyterhub >/dev/null || true; }
pipi() { local env=$1; shift; r "$env/bin/python" -m pip install -q --disable-pip-version-check --no-index --find-links "$WHEELS" "$@"; }
# every table, schema and rows, as the hub user sees it (no timestamps of the dump itself)
# (pg_dump >= 15.14 brackets its output with \restrict KEY / \unrestrict KEY, a
# new random KEY each time: not part of the data)
tables() { r pg_dump --no-password --dbname="$DBURL" | grep -Ev '^(-- Dumped|\\(un)?restrict )'; }

step "credentials: the hub user's ~/.pgpass, nowhere else"
check "~/.pgpass exists, mode 600, owned by the hub user" test "$(r stat -c '%a %U' .pgpass)" = "600 $(hostvar $H ansible_user)"
PW=$(r cut -d: -f5 .pgpass)
check "password is non-empty" test -n "$PW"
leaks() {
  { fleet inventory; fleet inventory --json; fleet status; fleet path $H; cat "$STATE/state.json"; } 2>&1 | grep -F "$PW" >/dev/null
}
check "password not in inventory, status, path or state.json" not leaks
check "password not in any config or log the hub user can read" not r grep -rqF "$PW" "$CONFDIR" "$(dirname "$CONFDIR")/log"
no_pgpass() { r env PGPASSFILE=/nonexistent psql -X -w -At -d "$DBURL" -c "select 1" >/dev/null 2>&1; }
check "without ~/.pgpass the database refuses the hub user" not no_pgpass

scratch() {  # what a rehearsal needs: a scratch copy on the same server, then dropped
  local base=${DBURL%/*}
  r psql -X -w -q -v ON_ERROR_STOP=1 -d "$base/postgres" -c 'create database jupyterhub_hub01_scratch' &&
  r bash -c 'pg_dump --no-password --dbname="$1" | psql -X -w -q -v ON_ERROR_STOP=1 -d "$2" >/dev/null' _ "$DBURL" "$base/jupyterhub_hub01_scratch" &&
  [ "$(r psql -X -w -At -d "$base/jupyterhub_hub01_scratch" -c 'select version_num from alembic_version')" = 651f5419b74d ] &&
  r psql -X -w -q -d "$base/postgres" -c 'drop database jupyterhub_hub01_scratch'
}
check "the hub's role can make (and drop) a scratch copy on the server" scratch

step "baseline on PostgreSQL"
check "/hub/api says 3.0.0" api_is 3.0.0
check "live db: alembic 651f5419b74d" test "$(alembic)" = 651f5419b74d
check "live db: the users are there" test "$(psq 'select count(*) from users')" = 4
check "the server is PostgreSQL 15" bash -c "[[ \$('$HF_FLEET' --id '$HF_TEST_ID' ssh $H -- psql -X -w -At -d '$DBURL' -c 'show server_version') == 15.* ]]"

step "backup: pg_dump before the stop"
before=$(tables)
check "pg_dump (the inventory's command) to the backup dir" r bash -c '"$@" --clean --if-exists > "'"$BACKUPS"'/pre.sql"' _ $DUMP
check "the dump holds the users" r grep -q 'COPY public.users' "$BACKUPS/pre.sql"
stop_hub

step "3.0.0 -> 4.1.6 on PostgreSQL (the hub env only: the user env does not touch the database)"
check "pip install 4.1.6 in the hub env" pipi "$HUBENV" --upgrade jupyterhub==4.1.6
rc=0; out=$(r env -C "$CONFDIR" PATH="$HUBENV/bin:/usr/bin:/bin" "$HUBENV/bin/jupyterhub" upgrade-db 2>&1) || rc=$?
echo "$out" | grep -E 'Running upgrade|Upgrading|ERROR' | sed 's/^/#   /'
check "upgrade-db exits 0" test $rc = 0
check "it ran 651f5419b74d -> 0eee8c825d24 on PostgreSQL" grep -q 'Running upgrade 651f5419b74d -> 0eee8c825d24' <<<"$out"
check "live db: alembic 0eee8c825d24" test "$(alembic)" = 0eee8c825d24
check "live db: groups.properties exists" psq 'select properties from groups limit 1'
start_hub
check "/hub/api says 4.1.6" wait_for 90 api_is 4.1.6

step "back to 3.0.0: restore the dump"
stop_hub
check "reinstall 3.0.0 (hub env)" pipi "$HUBENV" --upgrade jupyterhub==3.0.0
check "psql < pre.sql" r bash -c 'psql -X -w -q -v ON_ERROR_STOP=1 -d "$1" -f "$2" >/dev/null' _ "$DBURL" "$BACKUPS/pre.sql"
check "live db: alembic 651f5419b74d again" test "$(alembic)" = 651f5419b74d
after=$(tables)
check "every table equals its state before the upgrade" test "$after" = "$before"
[ "$after" = "$before" ] || diff <(echo "$before") <(echo "$after") | head -20 | sed 's/^/#   /' 
start_hub
check "/hub/api says 3.0.0" wait_for 90 api_is 3.0.0

step "down stops the server"
PGPID=$(head -1 "$STATE/pg/data/postmaster.pid")
PGUSER=$(stat -c %U "$STATE/pg/data")
check "down" fleet down
gone() { [ ! -e /proc/$1 ] || [ "$(awk '{ print $3 }' /proc/$1/stat 2>/dev/null)" = Z ]; }  # a zombie awaits PID 1
check "postmaster $PGPID gone" gone "$PGPID"
check "no pg namespace" not bash -c "ip netns list | grep -q '^hf-$HF_TEST_ID-pg'"
check "no pg user" not getent passwd "$PGUSER"
check "state dir gone" test ! -e "$STATE"

echo "# $fails failure(s)"
[ "$fails" -eq 0 ]
