#!/bin/bash
# Pipelined rollouts (issue 17) and --confirm (issue 14), on 4 real hubs.
#
# 1. upgrade --stages 1,2,100% --confirm, hub04's database unreadable: hubs
#    of stages 2-3 are prepared while the canary upgrades; hub04's refusal is
#    reported before the canary is upgraded; at the first prompt hub02's env
#    is changed (a distribution added), so its re-check prepares it again;
#    stage 3 starts, hub04's refusal counts, the rollout halts and hub03
#    (prepared) keeps its hub: same process, versions and database.
# 2. the same rollout as a new one, answered "n" at the prompt: paused, exit
#    0; resume answered "y" finishes it.
# 3. rollback of hub01 with the package source gone (find-links an empty
#    dir): the kept previous envs are switched back, no pip needed.
# 4. a controller SIGKILLed right after a host was prepared, and again after
#    a host's stage re-check, then resume: done, every hub on the target.
# usage: test-pipeline.sh HUBFLEET AGENT
. "$(dirname "$0")/lib.sh"
HF_TEST_HUBS=4 NHUBS=4
up_fleet
PTY="$PY $HERE_UP/pty-answer.py"
hv() { $PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["_meta"]["hostvars"][sys.argv[2]][sys.argv[3]])' "$W/inv.json" "$1" "$2"; }
db_of() { hv "$1" hubfleet_db | sed 's|^sqlite:///||'; }
dbsum() { sha256sum "$(db_of "$1")" | cut -d' ' -f1; }
line_no() { grep -n -m1 -- "$2" "$1" | cut -d: -f1; }
procs_snapshot > "$W/procs0"
truth; cp "$W/truth.json" "$W/truth0.json"
H3DB=$(dbsum hub03)

step "1: stages 1,2,100% --confirm; hub04's database unreadable; hub02 changed at the prompt"
DB4=$(db_of hub04)
chmod 000 "$DB4"
SITE2=$(ls -d "$(hv hub02 hubfleet_hub_env)"/lib/python3*/site-packages)
cat > "$W/change-hub02.sh" <<EOF
#!/bin/bash
mkdir -p "$SITE2/hfpipelinetest-1.0.dist-info"
printf 'Metadata-Version: 2.1\nName: hfpipelinetest\nVersion: 1.0\n' > "$SITE2/hfpipelinetest-1.0.dist-info/METADATA"
EOF
chmod +x "$W/change-hub02.sh"
$PTY "$W/p1.out" y,y "$W/change-hub02.sh" -- "$HUBFLEET" upgrade -i "$INV" --to "$NEW" --stages 1,2,100% \
  --confirm --prepare-parallel 3 --state "$STATE" --timeout 10
rc=$?
chmod 600 "$DB4"
# the terminal's progress line is redrawn after "\r ESC[K": one line per redraw
tr -d '\r' < "$W/p1.out" | sed 's/\x1b\[K/\n/g; s/\x1b\[[0-9;]*[A-Za-z]//g' > "$W/p1.txt"
sed 's/^/# /' "$W/p1.txt" | grep -v "^# $" | tail -30
RID1=$(hf history --state "$STATE" --ids | head -1)
status_json "$RID1" > "$W/st1.json"
check "halted on the budget (rc=$rc, 1 expected)" test "$rc" -eq 1
check "hubs of stages 2-3 prepared while the canary upgraded" eval '
  a=$(line_no "$W/p1.txt" "^hub02: prepared for stage 2"); b=$(line_no "$W/p1.txt" "^hub03: prepared for stage 3");
  c=$(line_no "$W/p1.txt" "^hub01: upgraded"); [ -n "$a" ] && [ -n "$b" ] && [ -n "$c" ] && [ "$a" -lt "$c" ] && [ "$b" -lt "$c" ]'
check "hub04's refusal reported at once, before the canary was upgraded, saying when it counts" eval '
  a=$(line_no "$W/p1.txt" "^hub04: failed: .*found while preparing stage 3; counts against the failure budget when that stage starts");
  c=$(line_no "$W/p1.txt" "^hub01: upgraded"); [ -n "$a" ] && [ -n "$c" ] && [ "$a" -lt "$c" ]'
check "stage 2 ran although hub04 had failed (it counts from stage 3)" test "$(host_status "$W/st1.json" hub02)" = upgraded
check "hub02 changed after it was prepared: prepared again" grep -q "^hub02: changed since it was prepared" "$W/p1.txt"
check "the budget halted the rollout as stage 3 began" grep -q "failure budget exceeded.*stage 3" "$W/p1.txt"
check "hub03 recorded as prepared, hub04 as failed" eval '[ "$(host_status "$W/st1.json" hub03)" = prepared ] &&
  [ "$(host_status "$W/st1.json" hub04)" = failed ]'
truth
check "hub03 untouched: its hub process, versions, revision and database as before" eval '
  [ "$(hub_proc hub03)" = "$(awk "\$1 == \"hub03\" { print \$2, \$3 }" "$W/procs0")" ] &&
  on_disk hub03 "$BASE" "$BASEREV" && [ "$(dbsum hub03)" = "$H3DB" ]'
check "hub01, hub02: on disk $NEW and healthy" eval 'on_disk hub01 "$NEW" "$NEWREV" && on_disk hub02 "$NEW" "$NEWREV" &&
  healthy_on hub01 "$NEW" && healthy_on hub02 "$NEW"'
check "status shows hub03 prepared" eval 'hf status "$RID1" --state "$STATE" | grep -q "hub03 .* prepared"'
rm -rf "$SITE2/hfpipelinetest-1.0.dist-info"

step "2: --confirm answered n pauses (exit 0); resume answered y finishes"
$PTY "$W/p2.out" n -- "$HUBFLEET" upgrade -i "$INV" --to "$NEW" --limit hub03,hub04 --stages 1,100% --confirm \
  --state "$STATE" --timeout 10
rc=$?
RID2=$(hf history --state "$STATE" --ids | head -1)
check "paused at the prompt, exit 0 (rc=$rc)" eval '[ "$rc" -eq 0 ] && [ "$(ro_status)" = paused ]'
status_json "$RID2" > "$W/st2.json"
check "the answered 'n' left stage 2 untouched (hub04 prepared or pending)" eval '
  s=$(host_status "$W/st2.json" hub04); [ "$s" = prepared ] || [ "$s" = pending ]'
$PTY "$W/p3.out" y -- "$HUBFLEET" resume "$RID2" --state "$STATE" --timeout 10
rc=$?
check "resume answered y: done (rc=$rc)" eval '[ "$rc" -eq 0 ] && [ "$(ro_status)" = done ]'
truth
check "hub03, hub04 on disk $NEW" eval 'on_disk hub03 "$NEW" "$NEWREV" && on_disk hub04 "$NEW" "$NEWREV"'

step "3: rollback of hub01 with the package source gone"
mkdir -p "$W/empty-wheels"
sed "s|hubfleet_find_links=[^ ]*|hubfleet_find_links=$W/empty-wheels|" "$INV" > "$W/inv-nosource.ini"
check "the inventory without a package source differs" eval '! cmp -s "$INV" "$W/inv-nosource.ini"'
hf rollback "$RID1" -i "$W/inv-nosource.ini" --hosts hub01 --state "$STATE" --timeout 10 > "$W/rb.out" 2>&1
rc=$?
sed 's/^/# /' "$W/rb.out" | tail -6
truth
check "rollback without a package source (rc=$rc): hub01 on $BASE again, healthy" eval '[ "$rc" -eq 0 ] &&
  on_disk hub01 "$BASE" "$BASEREV" && healthy_on hub01 "$BASE"'
switched_back() {
  journal hub01 "$RID1" | $PY -c '
import json, sys
rb = [r["detail"]["restored_by"] for r in json.load(sys.stdin)
      if r.get("step") == "rollback" and isinstance(r.get("detail"), dict) and "restored_by" in r["detail"]]
print("# restored_by: %s" % (rb[-1] if rb else None))
sys.exit(0 if rb and rb[-1] and all(v == "switch" for v in rb[-1].values()) else 1)'
}
check "the journal says every env was switched back, not reinstalled" switched_back

step "4: the controller SIGKILLed after a host was prepared, and after a stage re-check; resume"
hf rollback "$RID1" -i "$INV" --hosts hub02 --state "$STATE" --timeout 10 > "$W/rb2.out" 2>&1
truth
check "hub02 rolled back too (package source back): both on $BASE" eval 'on_disk hub01 "$BASE" "$BASEREV" &&
  on_disk hub02 "$BASE" "$BASEREV"'
for pat in "prepared for stage 2" "hub02: stage ok"; do
  : > "$W/k.out"
  "$HUBFLEET" upgrade -i "$INV" --to "$NEW" --limit hub01,hub02 --stages 1,100% --state "$STATE" --timeout 10 \
    > "$W/k.out" 2>&1 &
  pid=$!
  end=$((SECONDS + 300))
  while [ $SECONDS -lt $end ] && kill -0 "$pid" 2>/dev/null && ! grep -q "$pat" "$W/k.out"; do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  RID4=$(hf history --state "$STATE" --ids | head -1)
  check "killed after '$pat'" grep -q "$pat" "$W/k.out"
  timeout 600 "$HUBFLEET" resume "$RID4" --state "$STATE" --timeout 10 > "$W/kr.out" 2>&1
  rc=$?
  sed 's/^/# /' "$W/kr.out" | tail -5
  check "resume after the kill at '$pat': done (rc=$rc)" eval '[ "$rc" -eq 0 ] && [ "$(ro_status)" = done ]'
  truth
  check "hub01, hub02 on $NEW and healthy" eval 'on_disk hub01 "$NEW" "$NEWREV" && on_disk hub02 "$NEW" "$NEWREV" &&
    healthy_on hub02 "$NEW"'
  [ "$pat" = "hub02: stage ok" ] && break   # the last round: no rollback needed
  "$HUBFLEET" rollback "$RID4" --state "$STATE" --timeout 10 > "$W/kb.out" 2>&1
  truth
  check "rolled back for the next round" eval 'on_disk hub01 "$BASE" "$BASEREV" && on_disk hub02 "$BASE" "$BASEREV"' 
done
finish
