# tests/systemd/lib.sh: sourced by the systemd/TLJH integration tests (issue 15).
# Brings up a private fleet of systemd hosts with TLJH's layout (and, when
# asked, supervisord hubs beside them); tests/fleet/lib.sh tears it down on
# exit, whatever happened. The helpers read the truth without hubfleet: the
# host's files through its overlay root on this machine, systemd through
# `sudo -n systemctl` over ssh, /hub/api over HTTP.
# usage (from a test): . lib.sh HUBFLEET AGENT
HERE_SD=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# hf, jq_, status_json, finish and the fleet's lib (teardown by trap)
. "$HERE_SD/../upgrade/lib.sh" "$@"
T0=$SECONDS

# up_sd NSYSTEMD [NSUPERVISORD]: the fleet, its inventory and a private state file.
up_sd() {
  local ns=$1 nh=${2:-0} t=$SECONDS
  step "fleet up --hubs $nh --systemd-hubs $ns (fleet $HF_TEST_ID)"
  fleet up --hubs "$nh" --systemd-hubs "$ns" > /dev/null || { echo "FAIL - fleet up"; exit 1; }
  echo "# fleet up took $((SECONDS - t))s"
  W=$(fleet path state)/systemd-test
  mkdir -p "$W"
  export XDG_STATE_HOME=$W/xdg STATE=$W/state.db INV=$W/inv.ini
  fleet inventory > "$INV"
  fleet inventory --json > "$W/inv.json"
  mapfile -t SYS < <(hosts_of tljh | grep .)
  mapfile -t HUBLIST < <(hosts_of hubs | grep .)
  # BASE BASEREV NEW NEWREV BADSTART BADHEALTH from the fleet's fixture kinds
  eval "$(fleet versions --long | awk '$1 == "baseline" { print "BASE=" $2 "; BASEREV=" $3 }
    $1 == "newer" { print "NEW=" $2 "; NEWREV=" $3 } $1 == "bad-start" { print "BADSTART=" $2 }
    $1 == "bad-health" { print "BADHEALTH=" $2 }')"
  check "fleet has $ns systemd hosts and $nh supervisord hubs" test "${#SYS[@]}" -eq "$ns" -a "${#HUBLIST[@]}" -eq "$nh"
}

# root HOST: the host's / as seen from this machine (its overlay)
root() { fleet path "$1" | $PY -c 'import json,sys; print(json.load(sys.stdin)["root"])'; }
# rsh HOST CMD...: CMD as root on the host (the operator's sudo), stdout only
rsh() { local h=$1; shift; fleet ssh "$h" -- sudo -n "$@" 2>/dev/null; }
# mainpid HOST: the hub's process as systemd knows it ("0" when stopped)
mainpid() { rsh "$1" systemctl show -p MainPID --value jupyterhub; }
active() { rsh "$1" systemctl is-active jupyterhub; }
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
# The agent's state dir on a TLJH host with become is
# /var/lib/hubfleet/hub-KEY (KEY a digest the agent computes: the tests do
# not compute it). Found by what is in it, never by a bare glob over the
# overlay root (its lower layer is this machine's /).
# journal_of HOST ROLLOUT: the agent's journal file for ROLLOUT ("" when
# none): the one hub-*/journal-ROLLOUT (a rollout id is unique)
journal_of() {
  local j=("$(root "$1")"/var/lib/hubfleet/hub-*/journal-"$2")
  [ ${#j[@]} -eq 1 ] && [ -e "${j[0]}" ] && echo "${j[0]}"
}
# sd_state HOST: the state dir, as the host names it (/var/lib/hubfleet/hub-KEY):
# the one hub-* directory the host itself created (in its overlay's upper layer)
sd_state() {
  local up d
  up=$(fleet path "$1" | $PY -c 'import json,sys; print(json.load(sys.stdin)["upper"])')
  d=("$up"/var/lib/hubfleet/hub-*)
  [ ${#d[@]} -eq 1 ] && [ -d "${d[0]}" ] && echo "${d[0]#"$up"}"
}
host_field() { jq_ "$1" "[h.get('$3') for h in d['hosts'] if h['host']=='$2'][0]"; }
