#!/bin/bash
# Issue 15, become on a TLJH-shaped systemd host (one host): the database and
# its alembic revision read through sudo (audit); a rollout without become is
# refused in preflight saying to set hubfleet_become=true; sudo asking for a
# password, a sudoers rule that refuses the agent, and sudo missing: each a
# preflight failure naming the cause; in every case the hub is never stopped
# (same MainPID). The dry run and `inventory check` say how the host is driven;
# the dry run's default migration rehearsal runs as root and leaves no copy.
# docs/sudoers.example, installed as the only rule, is enough for a rollout's
# preflight, allows nothing else, and a replaced agent file is not run.
# usage: test-become.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_sd 1
H=${SYS[0]}
R=$(root "$H")
PID0=$(mainpid "$H")
check "$H: jupyterhub.service active as root (MainPID $PID0)" test "$(active "$H")" = active -a -n "$PID0" -a "$PID0" != 0

step "audit reads the database through sudo"
hf audit -i "$INV" --json > "$W/audit.json" 2> "$W/audit.err"
check "audit exits 0" test $? -eq 0
check "audit: $BASE in both envs, alembic $BASEREV" test \
  "$(jq_ "$W/audit.json" '[(g["hub"], g["users"], g["alembic"]) for g in d["groups"]]')" = "[[\"$BASE\", [\"$BASE\"], \"$BASEREV\"]]"

step "inventory check and the dry run show how the host is driven"
hf inventory check "$INV" > "$W/invcheck.txt" 2>&1
check "inventory check: systemctl through sudo -n" grep -qE "^  driven +systemd:jupyterhub through systemctl, as root through sudo -n \(become\)$" "$W/invcheck.txt"
hf upgrade -i "$INV" --to "$NEW" --dry-run --state "$STATE" > "$W/dry.txt" 2>&1
check "dry run: ready" grep -qE "^  $H .* -> $NEW  ready" "$W/dry.txt"
check "dry run: driven through systemctl as root through sudo -n" \
  grep -qE "pass +driven +systemd:jupyterhub through systemctl, as root through sudo -n \(become, login hfops\)" "$W/dry.txt"
check "dry run: the service state read from stdout (not sudo's warnings)" grep -qE "pass +service +systemd:jupyterhub is active$" "$W/dry.txt"
check "dry run: the database read as root" grep -qE "pass +database +sqlite /opt/tljh/state/jupyterhub.sqlite, alembic revision $BASEREV" "$W/dry.txt"
SD_STATE=$(sd_state "$H")
check "the agent's state is root's: ${SD_STATE:-no single /var/lib/hubfleet/hub-*} root 0700" test -n "$SD_STATE" -a "$(stat -c '%U %a' "$R$SD_STATE" 2>/dev/null)" = "root 700"
check "dry run: the default rehearsal ran as root (upgrade-db to $NEW on a copy, $BASEREV -> $NEWREV)" \
  grep -qE "pass +rehearsal +upgrade-db to $NEW on a copy: alembic $BASEREV -> $NEWREV, integrity ok" "$W/dry.txt"
check "the rehearsal left no rehearsal-* copy in $SD_STATE" eval '[ -n "$SD_STATE" ] && ! ls -d "$R$SD_STATE"/rehearsal-* > /dev/null 2>&1'

step "sudo warns on stderr (unable to resolve host): the state is read from stdout"
cp -p "$R/etc/hosts" "$W/hosts.bak"
grep -vw "$H" "$W/hosts.bak" > "$R/etc/hosts"
fleet ssh "$H" -- sudo -n true 2> "$W/sudo-warn.txt"
check "sudo now warns: $(head -c 80 "$W/sudo-warn.txt")" grep -q "unable to resolve host" "$W/sudo-warn.txt"
hf upgrade -i "$INV" --to "$NEW" --dry-run --no-rehearse --state "$STATE" > "$W/dry2.txt" 2>&1
cp -p "$W/hosts.bak" "$R/etc/hosts"
check "dry run: still ready" grep -qE "^  $H .* -> $NEW  ready" "$W/dry2.txt"
check "dry run: systemd:jupyterhub is active (not 'is sudo:')" grep -qE "pass +service +systemd:jupyterhub is active$" "$W/dry2.txt"
check "dry run: the alembic revision read" grep -qE "pass +database +sqlite .*alembic revision $BASEREV" "$W/dry2.txt"

step "without become: refused in preflight, nothing stopped"
sed 's/^hubfleet_become=true/hubfleet_become=false/' "$INV" > "$W/nobecome.ini"
hf upgrade -i "$W/nobecome.ini" --to "$NEW" --no-rehearse --state "$STATE" > "$W/nob.txt" 2>&1
rc=$?
check "exit 1 (rc=$rc)" test $rc -eq 1
check "the error says to set hubfleet_become=true" grep -qE "^  $H +1 +failed .*preflight refused: become: set hubfleet_become=true" "$W/nob.txt"
check "$H: not stopped (MainPID $PID0)" test "$(mainpid "$H")" = "$PID0"

# sudo cases: the fleet's `fault sudo` (password, refuse, missing), and a rule
# of our own that allows NOPASSWD commands but not the agent (sudo -n then
# says "a password is required" too: sudo -n -l tells it apart)
SUDOERS=$R/etc/sudoers.d/hubfleet-operator
cp -p "$SUDOERS" "$W/sudoers.bak"
sudo_case() { # NAME fault:MODE|RULE PATTERN
  local name=$1 how=$2 pat=$3 rc
  case $how in
    fault:*) fleet fault sudo "$H" "${how#fault:}" > /dev/null || bad "$name: fleet fault sudo ${how#fault:}" ;;
    *) printf '%s\n' "$how" > "$SUDOERS" ;;
  esac
  hf upgrade -i "$INV" --to "$NEW" --no-rehearse --state "$STATE" > "$W/case-$name.txt" 2>&1
  rc=$?
  fleet fault sudo "$H" nopasswd > /dev/null
  check "$name: exit 1 (rc=$rc)" test $rc -eq 1
  check "$name: preflight failed naming the cause" grep -qE "^  $H +1 +failed .*preflight failed: become: $pat" "$W/case-$name.txt"
  check "$name: not stopped (MainPID $PID0)" test "$(mainpid "$H")" = "$PID0"
}
step "sudo asks for a password"
sudo_case password fault:password "sudo asks hfops for a password"
step "a sudoers rule that refuses the agent (no authentication)"
sudo_case refused fault:refuse "the sudoers rules refuse hfops running the hubfleet agent"
step "NOPASSWD rules that do not include the agent"
sudo_case other-rules 'hfops ALL=(root) NOPASSWD: /usr/bin/systemctl' "the sudoers rules refuse hfops running the hubfleet agent .* \(sudo -n -l: not allowed\)"
step "sudo missing"
sudo_case missing fault:missing "sudo is not installed on this host"
step "docs/sudoers.example: the one rule, the agent pinned by its SHA-256"
D=$(sha256sum < "$AGENT" | cut -d' ' -f1)
sed -e "s/DIGEST/$D/g" -e "s/OPERATOR/hfops/g" "$HERE_SD/../../docs/sudoers.example" > "$W/sudoers.example"
check "the example passes visudo -c" visudo -cqf "$W/sudoers.example"
install -m 0440 "$W/sudoers.example" "$SUDOERS"
hf upgrade -i "$INV" --to "$NEW" --dry-run --no-rehearse --state "$STATE" > "$W/dry3.txt" 2>&1
check "dry run with only that rule: ready, driven through sudo -n" eval \
  "grep -qE '^  $H .* -> $NEW  ready' '$W/dry3.txt' && grep -qE 'pass +driven .*as root through sudo -n' '$W/dry3.txt'"
check "the operator can run nothing else as root" not eval 'fleet ssh "$H" -- sudo -n /usr/bin/id > /dev/null 2>&1'
fleet ssh "$H" -- sh -c "cp /bin/true ~/.cache/hubfleet/agent-$D.new && chmod 700 ~/.cache/hubfleet/agent-$D.new && mv -f ~/.cache/hubfleet/agent-$D.new ~/.cache/hubfleet/agent-$D"
fleet ssh "$H" -- sudo -n "/home/hfops/.cache/hubfleet/agent-$D" --version > /dev/null 2> "$W/digest.txt"
rc=$?
check "a replaced agent file is not run by sudo (digest mismatch; rc=$rc: $(head -c 60 "$W/digest.txt"))" test $rc -ne 0
cp -p "$W/sudoers.bak" "$SUDOERS"
check "$H: still active, /hub/api $BASE, healthy" healthy_on "$H" "$BASE"
finish
