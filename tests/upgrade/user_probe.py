#!/usr/bin/python3
"""The test's own users' probe, independent of the agent's: run inside a hub's
network namespace (tests/fleet/fleet exec HOST -- /usr/bin/python3 user_probe.py ...).

usage: user_probe.py BASE_URL STOP_FILE OUT_FILE USER...

Every 100 ms, GET BASE_URL/user/NAME/api for each user through the hub's proxy.
A request counts as answered only when the single-user server itself answered:
HTTP 200 with a JSON object holding "version" (jupyter_server's /api); a proxy
503, a refused connection, a timeout or the hub's redirect to its login (a
route that is gone) count as not answered.  Ends when STOP_FILE exists (or
after 15 minutes) and writes one JSON object to OUT_FILE:
  {"requests": N, "failed": N, "longest_gap_ms": {user: ms}, "longest_outage_ms": {user: ms},
   "first_failure": ..., "span_ms": ms}
where a user's longest gap is the longest time between two answered requests
(or from the start to the first, or from the last to the end), and the
longest outage the longest time from sending a request not answered to the
answer of the next one answered (or to the end): the agent's definition
(docs/users-downtime.md), measured independently.
"""
import json
import os
import sys
import time
import urllib.error
import urllib.request


def answered(opener, url):
    try:
        with opener.open(url, timeout=2) as r:
            if r.status != 200:
                return False, "HTTP %d" % r.status
            body = json.loads(r.read(65536) or b"null")
            return isinstance(body, dict) and "version" in body, "HTTP 200"
    except urllib.error.HTTPError as e:
        return False, "HTTP %d" % e.code
    except Exception as e:  # refused, reset, timeout, bad JSON
        return False, type(e).__name__


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def main():
    base, stop, out, users = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), NoRedirect())
    t0 = time.monotonic()
    last = {u: t0 for u in users}
    gap = {u: 0.0 for u in users}
    outage = {u: 0.0 for u in users}
    down_since = {u: None for u in users}
    n = bad = 0
    first_failure = None
    while not os.path.exists(stop) and time.monotonic() - t0 < 900:
        tick = time.monotonic()
        for u in users:
            sent = time.monotonic()
            ok, why = answered(opener, "%s/user/%s/api" % (base, u))
            now = time.monotonic()
            n += 1
            if ok:
                gap[u] = max(gap[u], now - last[u])
                last[u] = now
                if down_since[u] is not None:
                    outage[u] = max(outage[u], now - down_since[u])
                    down_since[u] = None
            else:
                bad += 1
                if down_since[u] is None:
                    down_since[u] = sent
                if first_failure is None:
                    first_failure = {"user": u, "at_ms": int((now - t0) * 1000), "why": why}
        time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
    end = time.monotonic()
    for u in users:
        gap[u] = max(gap[u], end - last[u])
        if down_since[u] is not None:
            outage[u] = max(outage[u], end - down_since[u])
    res = {"requests": n, "failed": bad, "first_failure": first_failure, "span_ms": int((end - t0) * 1000),
           "longest_gap_ms": {u: int(g * 1000) for u, g in gap.items()},
           "longest_outage_ms": {u: int(o * 1000) for u, o in outage.items()}}
    with open(out + ".tmp", "w") as f:
        json.dump(res, f)
    os.rename(out + ".tmp", out)


if __name__ == "__main__":
    main()
