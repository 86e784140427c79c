#!/bin/bash
# Issue 15: baseline -> newer on a TLJH-shaped systemd host through sudo and
# systemctl (the journal as the hub log), with the default migration rehearsal
# (as root, on a copy; nothing left behind), then `hubfleet rollback`: back on the
# baseline with the live database equal to its backup. Truth read from the
# host's files, systemd and /hub/api, not from hubfleet.
# usage: test-newer-rollback.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
up_sd 1
H=${SYS[0]}
R=$(root "$H")
PID0=$(mainpid "$H")
check "$H: $BASE at $BASEREV" test "$(hubver "$H" hub) $(hubver "$H" user) $(alembic "$H")" = "$BASE $BASE $BASEREV"

step "upgrade to $NEW"
t=$SECONDS
hf upgrade -i "$INV" --to "$NEW" --state "$STATE" --events "$W/up.ndjson" > "$W/up.out" 2>&1
rc=$?
echo "# upgrade took $((SECONDS - t))s"
check "upgrade exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -20 "$W/up.out"
RID=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID" > "$W/st.json"
check "status: upgraded, all 8 steps ok" test "$(jq_ "$W/st.json" '[h["status"] for h in d["hosts"]] + [s["step"] for s in d["steps"] if s["outcome"]=="ok"]')" = \
  '["upgraded", "preflight", "stage", "backup", "stop", "install", "migrate", "start", "health"]'
check "$H: on disk $NEW in both envs, alembic $NEWREV" test "$(hubver "$H" hub) $(hubver "$H" user) $(alembic "$H")" = "$NEW $NEW $NEWREV"
check "$H: active under systemd, a new MainPID" test "$(active "$H")" = active -a "$(mainpid "$H")" != "$PID0"
check "$H: /hub/api $NEW, /hub/health 200" healthy_on "$H" "$NEW"
check "the stop and start went through sudo -n and systemctl" grep -q 'become: stop runs as root' "$W/up.ndjson"
J=$(journal_of "$H" "$RID")
check "the agent's journal is root's, in /var/lib/hubfleet: $J" test -n "$J" -a "$(stat -c '%U %a' "$J" 2>/dev/null)" = "root 600"
# the default preflight rehearses the migration on a copy, as root through sudo
check "the rehearsal ran: upgrade-db to $NEW on a copy, alembic $BASEREV -> $NEWREV" \
  grep -qF "\"host\":\"$H\"" <(grep -F "preflight rehearsal: pass: upgrade-db to $NEW on a copy: alembic $BASEREV -> $NEWREV, integrity ok" "$W/up.ndjson")
check "migrate saw the revision the rehearsal predicted" grep -qF "revision $NEWREV after migrate, as the rehearsal predicted" "$W/up.ndjson"
# and left nothing behind: its STATE_DIR/rehearsal-PID (the copy, the target's
# packages) is gone; the state dir keeps what docs/tljh.md says (journal, lock,
# backups, package cache) and the staging records, no database beyond the backup
leftovers() {
  local sd=${J%/*}
  [ -n "$J" ] || return 0
  ( cd "$sd" && ls -d rehearsal-* 2>/dev/null; find . -name '*.sqlite*' ! -path "./backups/$RID/jupyterhub.sqlite" )
}
check "the rehearsal left nothing in ${J%/*} (no rehearsal-*, no database copy but the backup): $(leftovers | tr '\n' ' ')" \
  test -n "$J" -a -z "$(leftovers)"
bfile=$(jq_ "$W/st.json" "d['hosts'][0]['backup']['backup']['db_file']")
bsha=$(jq_ "$W/st.json" "d['hosts'][0]['backup']['backup']['db_sha256']")
check "the backup $bfile is root's and has sha256 $bsha" test "$(stat -c %U "$R$bfile")" = root -a "$(sha256sum < "$R$bfile" | cut -d' ' -f1)" = "$bsha"
hf audit -i "$INV" --expect "$NEW" --json > "$W/audit.json" 2>/dev/null
check "audit --expect $NEW exits 0, alembic $NEWREV" test $? -eq 0 -a \
  "$(jq_ "$W/audit.json" '[(g["hub"], g["alembic"]) for g in d["groups"]]')" = "[[\"$NEW\", \"$NEWREV\"]]"

step "rollback $RID"
t=$SECONDS
hf rollback "$RID" --state "$STATE" > "$W/rb.out" 2>&1
rc=$?
echo "# rollback took $((SECONDS - t))s"
check "rollback exits 0 (rc=$rc)" test $rc -eq 0
[ $rc -eq 0 ] || tail -20 "$W/rb.out"
check "$H: on disk $BASE in both envs, alembic $BASEREV" test "$(hubver "$H" hub) $(hubver "$H" user) $(alembic "$H")" = "$BASE $BASE $BASEREV"
check "$H: live database equal to its backup (sha256 $bsha)" test "$(db_sha "$H")" = "$bsha"
check "$H: active, /hub/api $BASE, /hub/health 200" healthy_on "$H" "$BASE"
hf audit -i "$INV" --expect "$BASE" > /dev/null 2>&1
check "audit --expect $BASE exits 0" test $? -eq 0
finish
