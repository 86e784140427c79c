#!/usr/bin/python3
"""check.py: the truth about the test fleet's hubs, read without hubfleet, for
the upgrade integration tests.  Runs as root beside the fleet (the hosts' trees
are on this machine's disk).

  check.py truth INV_JSON                 per hub: jupyterhub versions from the
                                          dist-info dirs of each env, alembic
                                          revision and users (sqlite, read-only),
                                          sha256 of the live db file
  check.py journal INV_JSON HOST ROLLOUT  the host's agent journal for ROLLOUT as
                                          JSON records ([] when absent or empty)
  check.py status-host STATUS_JSON HOST   one host row of `hubfleet status --json`
"""
import glob
import hashlib
import json
import os
import re
import sqlite3
import struct
import sys


def hostvars(inv_path):
    return json.load(open(inv_path))["_meta"]["hostvars"]


def versions(prefix):
    return sorted(re.sub(r".*/jupyterhub-(.*)\.dist-info$", r"\1", p)
                  for p in glob.glob(prefix + "/lib/python3*/site-packages/jupyterhub-*.dist-info"))


def db_path(v):
    return re.sub(r"^sqlite:///", "", v["hubfleet_db"])


def truth_of(v):
    users = v.get("hubfleet_user_envs", [])
    if isinstance(users, str):
        users = [u for u in users.split(",") if u]
    out = {"hub": versions(v["hubfleet_hub_env"]), "user": [versions(u) for u in users]}
    path = db_path(v)
    try:
        with open(path, "rb") as f:
            out["db_sha256"] = hashlib.sha256(f.read()).hexdigest()
        con = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=10)
        try:
            out["alembic"] = con.execute("select version_num from alembic_version").fetchone()[0]
            out["users"] = con.execute("select count(*) from users").fetchone()[0]
        finally:
            con.close()
    except (OSError, sqlite3.Error) as e:
        out["db_error"] = str(e)
    return out


def journal(path):
    """Every complete, checksummed record of an agent journal (format in
    docs/protocol.md); raises on a damaged record."""
    try:
        data = open(path, "rb").read()
    except FileNotFoundError:
        return []
    recs, i = [], 0
    while i + 40 <= len(data):
        if data[i:i + 4] != b"HFJ1":
            raise ValueError("%s: bad magic at %d" % (path, i))
        n = struct.unpack(">I", data[i + 4:i + 8])[0]
        body = data[i + 40:i + 40 + n]
        if len(body) < n:
            break  # torn tail
        if hashlib.sha256(body).digest() != data[i + 8:i + 40]:
            raise ValueError("%s: checksum mismatch at %d" % (path, i))
        recs.append(json.loads(body))
        i += 40 + n + 1
    return recs


def main():
    cmd = sys.argv[1]
    if cmd == "truth":
        hv = hostvars(sys.argv[2])
        print(json.dumps({h: truth_of(v) for h, v in sorted(hv.items()) if h.startswith("hub")}))
    elif cmd == "journal":
        v = hostvars(sys.argv[2])[sys.argv[3]]
        print(json.dumps(journal(os.path.join(v["hubfleet_state_dir"], "journal-" + sys.argv[4]))))
    elif cmd == "status-host":
        d = json.load(open(sys.argv[2]))
        print(json.dumps([h for h in d["hosts"] if h["host"] == sys.argv[3]][0]))
    else:
        sys.exit("check.py: unknown command " + cmd)


if __name__ == "__main__":
    main()
