# tests/upgrade/real-lib.sh: sourced by the tests of `hubfleet upgrade` to
# JupyterHub's real releases (fleet up --releases) on SQLite and PostgreSQL
# hubs. On top of lib.sh: a fleet of the kinds asked for, and helpers that
# read the truth without hubfleet (dist-info dirs, the live databases through
# sqlite3 and through psql/pg_dump as the hub's own login, ~/.pgpass).
# usage (from a test): . real-lib.sh HUBFLEET AGENT
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# up_real ARGS...: `fleet up --releases ARGS`, its inventory, a private state
# file; sets W, STATE, INV, HUBLIST, PGLIST, SQLLIST, UP_SECS.
up_real() {
  step "fleet up --releases $* (fleet $HF_TEST_ID)"
  local t0=$SECONDS
  fleet up --releases "$@" > /dev/null || { echo "FAIL - fleet up --releases $*"; exit 1; }
  UP_SECS=$((SECONDS - t0))
  echo "# fleet up --releases $* took ${UP_SECS}s"
  W=$(fleet path state)/upgrade-test
  mkdir -p "$W"
  export XDG_STATE_HOME=$W/xdg
  STATE=$W/state.db
  INV=$W/inv.ini
  fleet inventory > "$INV"
  fleet inventory --json > "$W/inv.json"
  mapfile -t HUBLIST < <(hosts_of hubs)
  mapfile -t PGLIST < <(hosts_of pg)
  SQLLIST=()
  for h in "${HUBLIST[@]}"; do [[ " ${PGLIST[*]} " == *" $h "* ]] || SQLLIST+=("$h"); done
  BASE=3.0.0; BASEREV=651f5419b74d
}

rel_rev() { fleet versions --long | awk -v v="$1" '$1 == "release" && $2 == v { print $3 }'; }
kind_ver() { fleet versions --long | awk -v k="$1" '$1 == k { print $2 }'; }

# hv HOST VAR: one inventory variable of HOST
hv() { $PY -c 'import json,sys; v=json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]].get(sys.argv[3], ""); print(v)' "$W/inv.json" "$1" "$2"; }
is_pg() { [[ $(hv "$1" hubfleet_db) == postgresql* ]]; }

# versions_in PREFIX: the jupyterhub dist-info versions in an environment
versions_in() { (cd "$1"/lib/python3*/site-packages 2>/dev/null && ls -d jupyterhub-*.dist-info 2>/dev/null) | sed 's/^jupyterhub-//; s/\.dist-info$//' | tr '\n' ' ' | sed 's/ $//'; }
# envs_on HOST VERSION: hub env and every user env hold exactly VERSION
envs_on() {
  local h=$1 want=$2 e ok=0
  for e in $(hv "$h" hubfleet_hub_env) $(hv "$h" hubfleet_user_envs | tr ',' ' '); do
    [ "$(versions_in "$e")" = "$want" ] || { echo "$h: $e holds '$(versions_in "$e")', want $want" >&2; ok=1; }
  done
  return $ok
}

sqlite_db() { hv "$1" hubfleet_db | sed 's|^sqlite:///||'; }
# psq HOST SQL: psql as the hub's login (its ~/.pgpass), one value per line
psq() { fleet ssh "$1" -- psql -X -w -At -d "$(hv "$1" hubfleet_db)" -c "$2"; }
# alembic_of HOST: the live database's alembic revision
alembic_of() {
  if is_pg "$1"; then psq "$1" 'select version_num from alembic_version'
  else sqlite3 "file:$(sqlite_db "$1")?mode=ro" 'select version_num from alembic_version'; fi
}
# db_dump HOST: every table, schema and rows, of the live database, without
# the lines that differ between two dumps of the same data (pg_dump's
# version comments and its per-run \restrict key)
db_dump() {
  if is_pg "$1"; then fleet ssh "$1" -- pg_dump --no-password --dbname="$(hv "$1" hubfleet_db)" | grep -Ev '^(-- Dumped|\\(un)?restrict )'
  else sqlite3 "file:$(sqlite_db "$1")?mode=ro" .dump; fi
}
# dumps_equal HOST FILE: the live database's dump equals FILE (a diff on failure)
dumps_equal() {
  db_dump "$1" > "$W/now-$1.sql"
  cmp -s "$2" "$W/now-$1.sql" || { diff "$2" "$W/now-$1.sql" | head -20 | sed 's/^/#   /' >&2; return 1; }
}
has_column() {  # HOST TABLE COLUMN
  if is_pg "$1"; then [ "$(psq "$1" "select count(*) from information_schema.columns where table_name='$2' and column_name='$3'")" = 1 ]
  else sqlite3 "file:$(sqlite_db "$1")?mode=ro" "pragma table_info($2)" | cut -d'|' -f2 | grep -qx "$3"; fi
}
# scratch_dbs: databases on the fleet's PostgreSQL server other than the hubs' own and the templates
scratch_dbs() {
  local h=${PGLIST[0]}
  fleet ssh "$h" -- psql -X -w -At -d "$(hv "$h" hubfleet_db | sed 's|/[^/]*$|/postgres|')" \
    -c "select datname from pg_database where datname not in ('postgres','template0','template1') and datname not like 'jupyterhub\_hub__' order by 1"
}
# downtime_s ST_JSON HOST: the host's recorded downtime in seconds
downtime_s() { jq_ "$1" "'%.1f' % (([h for h in d['hosts'] if h['host']=='$2'][0].get('downtime_ms') or 0) / 1000)"; }
# hub_procs > FILE: "HOST PID START" for every hub
hub_procs() { for h in "${HUBLIST[@]}"; do echo "$h $(hub_proc "$h")"; done; }
# hf_run TAG WANT_RC ARGS...: hubfleet ARGS with the test's state file, events
# in $W/TAG.ndjson and output in $W/TAG.out; checks the exit status, prints
# the time it took, sets RID (the latest rollout) and writes $W/st-TAG.json
hf_run() {
  local tag=$1 want=$2 t0=$SECONDS rc; shift 2
  hf "$@" --state "$STATE" --events "$W/$tag.ndjson" > "$W/$tag.out" 2>&1
  rc=$?
  echo "# $tag: hubfleet $1 took $((SECONDS - t0))s"
  check "$tag: hubfleet $1 exits $want (rc=$rc)" test $rc -eq "$want"
  [ $rc -eq "$want" ] || tail -20 "$W/$tag.out"
  RID=$(hf history --state "$STATE" --ids | head -1)
  status_json "$RID" > "$W/st-$tag.json"
}
# host_field JSON HOST FIELD: one field of a host row of a plan or a status
host_field() { jq_ "$1" "[h.get('$3') for h in d['hosts'] if h['host']=='$2'][0]"; }
# jtime HOST RID STEP STATE: the time of the host's last journal record of STEP in STATE ("" when none)
jtime() { journal "$1" "$2" | $PY -c 'import json,sys; r=[x for x in json.load(sys.stdin) if x["step"]==sys.argv[1] and x["state"]==sys.argv[2]]; print(r[-1]["time"] if r else "")' "$3" "$4"; }
# leaks PASSWORDS_FILE: is any of the passwords in the test's outputs, state file, report, or a hub's state or backups?
leaks() {
  local f h
  for f in "$W"/*.out "$W"/*.ndjson "$W"/*.json "$W"/*.html "$STATE"; do
    [ -e "$f" ] || continue
    grep -aqF -f "$1" "$f" && { echo "password in $f" >&2; return 0; }
  done
  for h in "${HUBLIST[@]}"; do
    grep -raqF -f "$1" "$(hv "$h" hubfleet_state_dir)" "$(hv "$h" hubfleet_backup_dir)" && { echo "password under $h's state or backups" >&2; return 0; }
  done
  return 1
}
# pg_passwords > FILE: every PostgreSQL hub's password, from its login's ~/.pgpass
pg_passwords() { local h; for h in "${PGLIST[@]}"; do fleet ssh "$h" -- cut -d: -f5 .pgpass; done; }
