#!/usr/bin/python3
"""become_kill.py: issue 13, item 4, on a real hub of the test fleet with real sudo
(Debian's "Defaults use_pty"): the agent runs with become, is SIGKILLed once
install's pip is running, and no pip (nor anything it started) may outlive it.
Then a new agent rolls the hub back.

Usage: become_kill.py AGENT_BINARY FLEET_ID FLEET_SCRIPT (the fleet is up: see test-become-kill.sh)."""
import json
import os
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import Agent  # noqa: E402

AGENT, FID, FLEET = sys.argv[1], sys.argv[2], sys.argv[3]
REMOTE = '.hubfleet-agent-become'
fails = 0


def check(cond, what):
    global fails
    print('%s - %s' % ('ok  ' if cond else 'FAIL', what), flush=True)
    if not cond:
        fails += 1
    return cond


def fleet(*args):
    return subprocess.run([FLEET, '--id', FID] + list(args), stdout=subprocess.PIPE, text=True, check=True).stdout


inv = json.loads(fleet('inventory', '--json'))
name = sorted(h for h in inv['_meta']['hostvars'] if not h.startswith('scale'))[0]
hv = inv['_meta']['hostvars'][name]
newer = [ln.split()[1] for ln in fleet('versions', '--long').splitlines() if ln.split()[:1] == ['newer']][0]
ssh = ['ssh', '-F', '/dev/null', '-i', hv['ansible_ssh_private_key_file'], '-o', 'IdentitiesOnly=yes',
       '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=' + hv['hubfleet_known_hosts'],
       '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'LogLevel=ERROR', '-p', str(hv.get('ansible_port', 22)),
       '-l', hv['ansible_user'], hv['ansible_host']]
envs = hv.get('hubfleet_user_envs', '')
hub = {'hub_env': hv['hubfleet_hub_env'], 'user_envs': [e for e in envs.split(',') if e],
       'config': hv['hubfleet_config'], 'db': hv['hubfleet_db'], 'service': hv['hubfleet_service'],
       'supervisor_config': hv['hubfleet_supervisor_config'], 'health_url': hv['hubfleet_health_url'],
       'hub_log': hv['hubfleet_hub_log'], 'installer': hv['hubfleet_installer'],
       'find_links': hv['hubfleet_find_links'], 'become': True}
# With become each request runs as root, which keeps its journal and backups
# only in root's own directories (the hub user's state dir is refused, issue
# 13 item 6): one in the fleet's state dir (root's, removed by down).
ROOT_STATE = fleet('path', 'state').strip() + '/become-root-state'
hub['state_dir'] = ROOT_STATE
hub['backup_dir'] = ROOT_STATE + '/backups'
prefixes = [hub['hub_env']] + hub['user_envs']
with open(AGENT, 'rb') as f:
    subprocess.run(ssh + ['--', 'cat > %s.tmp && chmod 0755 %s.tmp && mv -f %s.tmp %s' % ((REMOTE,) * 4)],
                   input=f.read(), check=True, timeout=120)


def installers():
    """Live processes running an environment's python or pip (the same kernel)."""
    out = []
    for p in os.listdir('/proc'):
        if not p.isdigit():
            continue
        try:
            cmd = open('/proc/%s/cmdline' % p, 'rb').read().split(b'\0')
            state = open('/proc/%s/stat' % p).read().rsplit(')', 1)[1].split()[0]
        except OSError:
            continue
        line = b' '.join(cmd).decode(errors='replace')
        if state != 'Z' and any(x + '/bin/' in line for x in prefixes) and 'pip' in line:
            out.append((int(p), line[:120]))
    return out


def sleeping(arg):
    """Pids of live processes running exactly /bin/sleep ARG."""
    out = []
    for p in os.listdir('/proc'):
        try:
            if p.isdigit() and open('/proc/%s/cmdline' % p, 'rb').read() == b'/bin/sleep\0%s\0' % arg.encode() \
                    and open('/proc/%s/stat' % p).read().rsplit(')', 1)[1].split()[0] != 'Z':
                out.append(int(p))
        except OSError:
            pass
    return out


# 1. A quiet command (nothing written for sudo to fail on): the hub's own
#    stop command, run through sudo, sleeping. Before the watchdog it ran on
#    as root after the agent's SIGKILL, whatever came next.
quiet = dict(hub, service='command', start=['/bin/true'], stop=['/bin/sleep', '4323'])
del quiet['supervisor_config']
a = Agent(ssh + ['--', './' + REMOTE])
res, _ = a.request('backup', {'hub': quiet, 'rollout': 'become-quiet', 'target': newer})
check(res.get('ok') is True, 'backup (service command) with become (%s)' % (res.get('error') or {}).get('message', '')[:200])
qpid = [None]


def on_quiet(e):
    t = e.get('text') or ''
    if t.startswith('agent pid '):
        qpid[0] = int(t.split()[2].rstrip(':'))
        deadline = time.monotonic() + 20
        while not sleeping('4323') and time.monotonic() < deadline:
            time.sleep(0.05)
        check(bool(sleeping('4323')), 'the stop command runs (as root, through sudo): %s' % sleeping('4323'))
        os.kill(qpid[0], signal.SIGKILL)
        qpid.append(time.monotonic())


try:
    a.request('stop', {'hub': quiet, 'rollout': 'become-quiet'}, timeout=120, on_event=on_quiet)
except EOFError:
    pass
a.close()
check(len(qpid) == 2, 'agent SIGKILLed while its sudo\'d command ran')
while sleeping('4323') and len(qpid) == 2 and time.monotonic() - qpid[1] < 10:
    time.sleep(0.05)
if len(qpid) == 2:
    print('# quiet command gone %.0f ms after the agent was killed' % ((time.monotonic() - qpid[1]) * 1000), flush=True)
left = sleeping('4323')
check(not left, 'the quiet sudo\'d command does not outlive the agent (left: %s)' % left)
for p in left:
    os.kill(p, signal.SIGKILL)

# 2. pip itself, installing side by side.
a = Agent(ssh + ['--', './' + REMOTE])
rollout = 'become-kill'
for op in ('backup', 'stop'):
    args = {'hub': hub, 'rollout': rollout}
    if op == 'backup':
        args['target'] = newer
    res, _ = a.request(op, args)
    check(res.get('ok') is True, '%s with become (%s)' % (op, (res.get('error') or {}).get('message', '')[:200]))
pid = [None]
killed_at = [None]


def on_event(e):
    t = e.get('text') or ''
    if t.startswith('agent pid '):
        pid[0] = int(t.split()[2].rstrip(':'))
    started = 'install: run ' in t or (t.startswith('install: ') and 'side by side' in t)
    if started and pid[0] and killed_at[0] is None:
        deadline = time.monotonic() + 20
        while not installers() and time.monotonic() < deadline:
            time.sleep(0.05)
        check(bool(installers()), 'pip runs as root under sudo: %s' % installers()[:2])
        os.kill(pid[0], signal.SIGKILL)
        killed_at[0] = time.monotonic()


try:
    a.request('install', {'hub': hub, 'rollout': rollout, 'target': newer}, timeout=600, on_event=on_event)
    check(False, 'the agent was killed during install')
except EOFError:
    check(killed_at[0] is not None, 'agent pid %s SIGKILLed while pip ran' % pid[0])
a.close()
left = installers()
while left and time.monotonic() - killed_at[0] < 10:
    time.sleep(0.05)
    left = installers()
gone_ms = (time.monotonic() - killed_at[0]) * 1000 if killed_at[0] else -1
print('# installers gone %.0f ms after the agent was killed' % gone_ms, flush=True)
check(killed_at[0] is not None and not left, 'no installer outlives the killed agent (left: %s)' % left)
time.sleep(1)
check(not installers(), 'and none appears later (a queued one would run beside the rollback)')

b = Agent(ssh + ['--', './' + REMOTE])
res, _ = b.request('rollback', {'hub': hub, 'rollout': rollout, 'timeout_ms': 300000}, timeout=600)
check(res.get('ok') is True, 'a new agent rolls the hub back with become (%s)' % (res.get('error') or {}).get('message', '')[:300])
b.close()
sys.exit(1 if fails else 0)
