# tests/systemd/lib.sh: sourced by the systemd/TLJH integration tests (issue 15).
# Brings up a private fleet of systemd hosts with TLJH's layout (and, when
# asked, supervisord hubs beside them); tests/fleet/lib.sh tears it down on
# exit, whatever happened. The helpers read the truth without hubfleet: the
# host's files through its overlay root on this machine, systemd through
# `sudo -n systemctl` over ssh, /hub/api over HTTP.
# usage (from a test): . lib.sh HUBFLEET AGENT
HUBFLEET=${1:-${HUBFLEET:-}}
AGENT=${2:-${HUBFLEET_AGENT:-}}
HERE_SD=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HUBFLEET=${HUBFLEET:-$HERE_SD/../../build/controller/hubfleet}
AGENT=${AGENT:-$HERE_SD/../../build/agent/hubfleet-agent}
HUBFLEET=$(realpath "$HUBFLEET"); AGENT=$(realpath "$AGENT")
export HUBFLEET_AGENT=$AGENT
. "$HERE_SD/../fleet/lib.sh"
set +e +o pipefail   # every step is checked explicitly
T0=$SECONDS

# up_sd NSYSTEMD [NSUPERVISORD]: the fleet, its inventory and a private state file.
up_sd() {
  local ns=$1 nh=${2:-0} t=$SECONDS
  step "fleet up --hubs $nh --systemd-hubs $ns (fleet $HF_TEST_ID)"
  fleet up --hubs "$nh" --systemd-hubs "$ns" > /dev/null || { echo "FAIL - fleet up"; exit 1; }
  echo "# fleet up took $((SECONDS - t))s"
  W=$(fleet path state)/systemd-test
  mkdir -p "$W"
  export XDG_STATE_HOME=$W/xdg     # never the operator's own state
  STATE=$W/state.db
  INV=$W/inv.ini
  fleet inventory > "$INV"
  fleet inventory --json > "$W/inv.json"
  mapfile -t SYS < <(hosts_of tljh)
  ver() { fleet versions --long | awk -v k="$1" '$1 == k { print $2 }'; }
  rev() { fleet versions --long | awk -v k="$1" '$1 == k { print $3 }'; }
  BASE=$(ver baseline); BASEREV=$(rev baseline)
  NEW=$(ver newer); NEWREV=$(rev newer)
  BADSTART=$(ver bad-start); BADHEALTH=$(ver bad-health)
  check "fleet has $ns systemd hosts" test "${#SYS[@]}" -eq "$ns"
}

hf() { "$HUBFLEET" "$@"; }
jq_() { $PY -c "import json,sys; d=json.load(open(sys.argv[1])); r=eval(sys.argv[2]); print(json.dumps(r) if isinstance(r,(dict,list)) else r)" "$@"; }
# root HOST: the host's / as seen from this machine (its overlay)
root() { fleet path "$1" | $PY -c 'import json,sys; print(json.load(sys.stdin)["root"])'; }
# rsh HOST CMD...: CMD as root on the host (the operator's sudo), stdout only
rsh() { local h=$1; shift; fleet ssh "$h" -- sudo -n "$@" 2>/dev/null; }
# mainpid HOST: the hub's process as systemd knows it ("0" when stopped)
mainpid() { rsh "$1" systemctl show -p MainPID --value jupyterhub; }
active() { rsh "$1" systemctl is-active jupyterhub; }
url() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]]["hubfleet_health_url"])' "$W/inv.json" "$1"; }
api() { curl -sf -m 5 --noproxy '*' "$(url "$1")/hub/api"; }
health_code() { curl -s -m 5 --noproxy '*' -o /dev/null -w '%{http_code}' "$(url "$1")/hub/health"; }
healthy_on() { [ "$(api "$1" 2>/dev/null)" = "{\"version\": \"$2\"}" ] && [ "$(health_code "$1")" = 200 ]; }
# alembic HOST: the live database's revision, read from the host's files
alembic() {
  $PY -c 'import sqlite3,sys; print(sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True).execute("select version_num from alembic_version").fetchone()[0])' \
    "$(root "$1")/opt/tljh/state/jupyterhub.sqlite"
}
db_sha() { sha256sum < "$(root "$1")/opt/tljh/state/jupyterhub.sqlite" | cut -d' ' -f1; }
# hubver HOST ENV: jupyterhub's version in /opt/tljh/ENV, from its dist-info
hubver() {
  local d
  d=$(ls -d "$(root "$1")/opt/tljh/$2"/lib/python3*/site-packages/jupyterhub-*.dist-info 2>/dev/null | head -1)
  d=${d##*/jupyterhub-}; echo "${d%.dist-info}"
}
# journal_of HOST ROLLOUT: the agent's journal file for ROLLOUT ("" when none)
journal_of() { ls "$(root "$1")"/var/lib/hubfleet/hub-*/journal-"$2" 2>/dev/null | head -1; }
status_json() { hf status --state "$STATE" --json "$@"; }
host_field() { jq_ "$1" "[h.get('$3') for h in d['hosts'] if h['host']=='$2'][0]"; }

finish() {
  echo "# $fails failure(s), $((SECONDS - T0))s"
  [ "$fails" -eq 0 ]
}
