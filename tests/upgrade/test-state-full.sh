#!/bin/bash
# The state file's disk fills up in the middle of a rollout (a 1 MB tmpfs,
# filled once the canary's backup is done): the controller must stop at once
# with exit 70, naming the state file and how to resume, send nothing more
# (the canary's journal does not move on), and `hubfleet resume` must finish
# the rollout once the disk has room again. Before, the failed writes were
# ignored and the steps sent anyway, unrecorded.
# usage: test-state-full.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
HF_TEST_HUBS=2 NHUBS=2
up_fleet
FS=$(mktemp -d /tmp/hf-statefull.XXXXXX)
mount -t tmpfs -o size=1m,mode=0700 tmpfs "$FS" || { echo "FAIL - mount tmpfs"; exit 1; }
trap 'umount "$FS" 2>/dev/null; rmdir "$FS" 2>/dev/null; _hf_cleanup' EXIT
SF=$FS/state.db

step "upgrade to $NEW with the state file on a 1 MB tmpfs; fill it after hub01's backup"
"$HUBFLEET" upgrade -i "$INV" --to "$NEW" --stages 1,100% --state "$SF" > "$W/up.out" 2>&1 &
pid=$!
wait_for 600 grep -q "^hub01: backup ok" "$W/up.out"
check "hub01's backup done" grep -q "^hub01: backup ok" "$W/up.out"
dd if=/dev/zero of="$FS/filler" bs=4k status=none 2>/dev/null
end=$((SECONDS + 300))
while [ $SECONDS -lt $end ] && kill -0 "$pid" 2>/dev/null; do sleep 1; done
if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; bad "the controller went on with a full state disk"; fi
wait "$pid"; rc=$?
sed 's/^/# /' "$W/up.out" | tail -6
check "stopped with exit 70 (rc=$rc)" test "$rc" -eq 70
check "the message names the state file and how to resume" \
  eval 'grep -q "state file: cannot record" "$W/up.out" && grep -q "hubfleet resume r" "$W/up.out"'
RID=$(grep -o "hubfleet resume r[0-9a-z-]*" "$W/up.out" | head -1 | cut -d' ' -f3)
j1=$(journal hub01 "$RID")
sleep 5
check "nothing more sent: hub01's journal did not move on" test "$(journal hub01 "$RID")" = "$j1"
check "hub02 (stage 2) not changed: its journal holds its preparation at most" journal_prepared_only hub02 "$RID"

step "room again: resume finishes the rollout"
rm -f "$FS/filler"
"$HUBFLEET" resume "$RID" --state "$SF" > "$W/resume.out" 2>&1
rc=$?
sed 's/^/# /' "$W/resume.out" | tail -4
check "resume exits 0 (rc=$rc)" test "$rc" -eq 0
truth
for h in hub01 hub02; do
  check "$h: on disk $NEW, /hub/api $NEW" eval 'on_disk "$h" "$NEW" "$NEWREV" && healthy_on "$h" "$NEW"'
done
finish
