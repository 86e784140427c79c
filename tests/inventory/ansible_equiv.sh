#!/bin/sh
# ansible_equiv.sh HUBFLEET SRCDIR: INI read by hubfleet == ansible-inventory's JSON of it.
# Every ansible/*.ini must give the same hosts with the same variables whether
# hubfleet reads the INI itself or the --list / --list --export JSON of it.
set -eu
HF=$1
SRC=$2
if ! command -v ansible-inventory >/dev/null 2>&1; then
  echo "ansible-inventory not installed (Debian: ansible-core)"; exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Keep Ansible off the user's files and the network.
export HOME="$tmp" ANSIBLE_HOME="$tmp/ansible" ANSIBLE_LOCAL_TEMP="$tmp/tmp" \
       ANSIBLE_CONFIG="$tmp/none.cfg" ANSIBLE_INVENTORY_UNPARSED_FAILED=True \
       ANSIBLE_NOCOLOR=1
for ini in "$SRC"/ansible/*.ini; do
  base=$(basename "$ini" .ini)
  ansible-inventory -i "$ini" --list > "$tmp/$base.list.json" 2> "$tmp/err"
  ansible-inventory -i "$ini" --list --export > "$tmp/$base.export.json" 2>> "$tmp/err"
  if grep -qi "failed to parse\|unable to parse" "$tmp/err"; then cat "$tmp/err"; exit 1; fi
  "$HF" inventory check --json "$ini" > "$tmp/$base.ini.out"
  "$HF" inventory check --json "$tmp/$base.list.json" > "$tmp/$base.list.out"
  "$HF" inventory check --json "$tmp/$base.export.json" > "$tmp/$base.export.out"
done
python3 - "$tmp" "$SRC"/ansible/*.ini <<'PY'
import json, os, sys
d = sys.argv[1]
def hosts(name):
    with open(f"{d}/{name}") as f:
        return {h["name"]: h for h in json.load(f)["hosts"]}
fail = 0
for path in sys.argv[2:]:
    base = os.path.basename(path)[:-4]
    ini, lst, exp = hosts(base + ".ini.out"), hosts(base + ".list.out"), hosts(base + ".export.out")
    for label, other in (("--list", lst), ("--list --export", exp)):
        if sorted(ini) != sorted(other):
            print(f"{base}: host sets differ (INI vs {label}):", sorted(set(ini) ^ set(other))); fail = 1; continue
        for n in ini:
            if ini[n] != other[n]:
                print(f"{base}: host {n} differs (INI vs {label}):")
                print(" ini :", json.dumps(ini[n], sort_keys=True))
                print(" json:", json.dumps(other[n], sort_keys=True)); fail = 1
    print(f"{base}.ini: {len(ini)} hosts compared")
ini = hosts("fleet.ini.out")
q = hosts("quirks.ini.out")
# The case must exercise what it claims to: enough hosts, typed values,
# precedence and inherited groups.
checks = [
    (len(ini) == 12, "12 hosts"),
    (ini["edge.example.org"]["port"] == 2200 and ini["edge.example.org"]["vars"]["ansible_port"] == 2200, "inline int port"),
    (ini["edge.example.org"]["hub"]["become"] is True, "True literal"),
    (ini["hub10.example.org"]["port"] == 2222 and "hub15.example.org" in ini and "hub11.example.org" not in ini, "stride and host:port"),
    (ini["hub02.example.org"]["vars"]["level"] == "child" and ini["edge.example.org"]["vars"]["level"] == "all", "child over parent over all"),
    (ini["hub01.example.org"]["canary"] and ini["hub01.example.org"]["groups"] == ["campus", "canary", "east"], "inherited groups"),
    (ini["hub03.example.org"]["hub"]["hub_env"] == "/opt/jupyterhub/east", "child group var wins"),
    (ini["gpu.example.org"]["hub"]["user_envs"] == ["/opt/conda/envs/gpu", "/opt/conda/envs/ml"], "list literal"),
    (ini["gpu.example.org"]["vars"]["tag"] == "007" and ini["gpu.example.org"]["vars"]["retries"] == 3, "quoted and typed"),
    (ini["hub02.example.org"]["hub"]["backup_homes"] == ["/home", "/srv/home"], "duplicate host merges"),
    (ini["lab-b.example.org"]["user"] == "labadmin" and ini["hub04.example.org"]["user"] == "hubadmin", "user precedence"),
    (ini["hub20.example.org"]["hub"]["db"] == "sqlite:////etc/jupyterhub/db/hub.sqlite", "relative db"),
    (q["top"]["vars"] == {"a b": 1, "c": "x=y", "d": "a#b", "e": "a", "uv": 1}, "quirks: escapes, '=' and '#'"),
    (q["top2"]["vars"]["f"] == {"k": [1, 2], "n": None} and q["top2"]["vars"]["m"] == "ab", "quirks: literals"),
    (sorted(n for n in q if n.startswith("q")) == ["qA", "qB", "qx", "qy", "qz"], "quirks: letters across case"),
    (q["p"]["port"] == 2300, "quirks: inline port over host:port"),
]
for ok, what in checks:
    if not ok: print("check failed:", what); fail = 1
print("identical from INI, --list JSON and --list --export JSON" if not fail else "FAILED")
sys.exit(fail)
PY
