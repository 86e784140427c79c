#!/usr/bin/python3
"""integration.py: the agent's integration tests on the test fleet, over real OpenSSH.

Usage: integration.py AGENT_BINARY FLEET_SCRIPT

Brings up its own fleet (id "ag" + 3 hex digits of a hash of this checkout's
path, or $HF_AGENT_FLEET_ID): one hub host and
twenty scale hosts; copies the agent to the hosts with ssh; drives it with
protocol frames (tests/agent/client.py) through `ssh` with the fleet's key and
known_hosts (StrictHostKeyChecking=yes). Cases:
  a  full upgrade baseline -> newer (each op run twice: same end state)
  b  bad-start and bad-health: the failure, then rollback to the baseline
  c  the agent SIGKILLed during install and during migrate; a new agent's
     journal shows the step begun, not done; rollback restores the old hub
  e  hostile arguments refused, nothing runs
  g  homes backup, a dump command for a non-SQLite database, or a refusal
  h  a hub whose service is operator commands (start/stop argv)
  i  preflight rehearses the migration on a copy: bad-migration refused with
     the live hub untouched; newer passes with the revision the real one gets
  f  facts CPU time on scale hosts (< 5 ms)
The fleet is torn down at the end, also on failure (HF_KEEP_FLEET=1 keeps it).
"""
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import Agent  # noqa: E402

AGENT, FLEET = sys.argv[1], sys.argv[2]
# One fleet per checkout: a CI run from another clone on the same machine
# must not tear down this one's fleet (ids of up to 5 [a-z0-9] are used as is).
FID = os.environ.get('HF_AGENT_FLEET_ID') or \
    'ag' + hashlib.sha1(os.path.realpath(FLEET).encode()).hexdigest()[:3]
SCALE = int(os.environ.get('HF_AGENT_SCALE', '20'))
REMOTE = '.hubfleet-agent-test'
MARKER = '/tmp/hubfleet-agent-marker'
AGENT_BYTES = b''
failures = []
checks = 0


def log(*a):
    print('[%s]' % time.strftime('%H:%M:%S'), *a, flush=True)


def check(cond, what):
    global checks
    checks += 1
    if cond:
        log('ok:', what)
    else:
        log('FAIL:', what)
        failures.append(what)
    return cond


def fleet(*args, capture=True, check_rc=True):
    r = subprocess.run([FLEET, '--id', FID] + list(args), stdout=subprocess.PIPE if capture else None,
                       text=True, timeout=900)
    if check_rc and r.returncode != 0:
        raise RuntimeError('fleet %s failed with %d' % (' '.join(args), r.returncode))
    return r.stdout


class Host:
    def __init__(self, name, hv):
        self.name, self.hv = name, hv
        self.ssh = ['ssh', '-F', '/dev/null', '-i', hv['ansible_ssh_private_key_file'],
                    '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes',
                    '-o', 'UserKnownHostsFile=' + hv['hubfleet_known_hosts'],
                    '-o', 'GlobalKnownHostsFile=/dev/null', '-o', 'ConnectTimeout=10',
                    '-o', 'LogLevel=ERROR', '-p', str(hv.get('ansible_port', 22)),
                    '-l', hv['ansible_user'], hv['ansible_host']]
        envs = hv.get('hubfleet_user_envs', '')
        self.hub = {
            'hub_env': hv['hubfleet_hub_env'],
            'user_envs': [e for e in envs.split(',') if e] if isinstance(envs, str) else envs,
            'config': hv['hubfleet_config'],
            'db': hv['hubfleet_db'],
            'service': hv['hubfleet_service'],
            'supervisor_config': hv['hubfleet_supervisor_config'],
            'health_url': hv['hubfleet_health_url'],
            'hub_log': hv['hubfleet_hub_log'],
            'installer': hv['hubfleet_installer'],
            'find_links': hv['hubfleet_find_links'],
            'backup_dir': hv['hubfleet_backup_dir'],
            'state_dir': hv['hubfleet_state_dir'],
            'become': bool(hv.get('hubfleet_become', False)),
        }
        self.db_path = self.hub['db'][len('sqlite:///'):]

    def deploy(self):
        data = AGENT_BYTES
        cmd = 'cat > %s.tmp && chmod 0755 %s.tmp && mv -f %s.tmp %s' % (REMOTE, REMOTE, REMOTE, REMOTE)
        subprocess.run(self.ssh + ['--', cmd], input=data, check=True, timeout=120)

    def agent(self):
        return Agent(self.ssh + ['--', './' + REMOTE])


def req(agent, op, **args):
    res, events = agent.request(op, args, timeout=1200)
    return res, events


def ok(res):
    return res.get('ok') is True


def err(res):
    return (res.get('error') or {}).get('code')


def sha256(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(65536), b''):
            h.update(chunk)
    return h.hexdigest()


def state(host, agent):
    """The end state that matters: versions per env, alembic, API version."""
    res, _ = req(agent, 'facts', hub=host.hub)
    d = res['data']
    return {'envs': {e['prefix']: e['jupyterhub'] for e in d['envs']},
            'alembic': d['db']['alembic_revision'], 'users': d['db']['users'],
            'api': d['api_version'], 'running': d['hub_running']}


UPGRADE = ['backup', 'stop', 'install', 'migrate', 'start', 'health']


def step_args(host, rollout, target, op):
    a = {'hub': host.hub, 'rollout': rollout}
    if op in ('backup', 'install', 'health', 'preflight'):
        a['target'] = target
    if op == 'health':
        a['timeout_ms'] = 60000
    return a


def upgrade(host, agent, rollout, target, twice=False):
    """Runs the steps in order; returns (failed step or None, its result)."""
    for op in UPGRADE:
        res, _ = req(agent, op, **step_args(host, rollout, target, op))
        if not ok(res):
            log('   %s -> %s: %s' % (op, err(res), res['error']['message'][:300]))
            return op, res
        if twice:
            before = state(host, agent)
            res2, ev2 = req(agent, op, **step_args(host, rollout, target, op))
            after = state(host, agent)
            check(ok(res2), 'a/d: %s run twice succeeds' % op)
            check(before == after, 'a/d: %s run twice leaves the same end state%s'
                  % (op, '' if before == after else ' (%s / %s)' % (before, after)))
            if op == 'install':
                ran = [e for e in ev2 if ': run ' in (e.get('text') or '')]
                check(not ran, 'a/d: second install runs no installer')
            if op == 'backup':
                check(res2['data']['backup']['db_sha256'] == res['data']['backup']['db_sha256'],
                      'a/d: second backup returns the first backup (never overwrites it)')
    return None, None


def journal_steps(host, agent, rollout):
    res, _ = req(agent, 'journal', hub=host.hub, rollout=rollout)
    return [(s['step'], s['state']) for s in res['data']['steps']], res['data']


def rollback_and_verify(host, agent, rollout, base, what):
    jres, _ = req(agent, 'journal', hub=host.hub, rollout=rollout)
    bk = jres['data']['backup']
    res, _ = req(agent, 'rollback', hub=host.hub, rollout=rollout, timeout_ms=120000)
    check(ok(res), '%s: rollback succeeds (%s)' % (what, err(res) or ''))
    if not ok(res):
        log('   ', res['error']['message'][:500])
    st = state(host, agent)
    check(all(v == base for v in st['envs'].values()), '%s: every env back at %s: %s' % (what, base, st['envs']))
    check(st['api'] == base, '%s: /hub/api reports %s (got %s)' % (what, base, st['api']))
    check(bk is not None and sha256(host.db_path) == bk['db_sha256'],
          '%s: db sha256 equals the backup\'s' % what)
    if ok(res):
        check(res['data']['db_sha256'] == bk['db_sha256'], '%s: rollback reports the backup checksum' % what)
    return res


def kill_during(host, rollout, target, op, before_ops):
    """Runs before_ops, then op; SIGKILLs the agent once op has started its command."""
    a = host.agent()
    for b in before_ops:
        res, _ = req(a, b, **step_args(host, rollout, target, b))
        if not check(ok(res), 'c: %s before the kill' % b):
            a.close()
            return
    pid = [None]
    killed = threading.Event()

    def on_event(e):
        t = e.get('text') or ''
        if t.startswith('agent pid '):
            pid[0] = int(t.split()[2].rstrip(':'))
        # the step's command started: streamed ("install: run ...") or, for
        # environments installed side by side, announced before the fork
        started = ('%s: run ' % op) in t or (t.startswith('%s: ' % op) and 'side by side' in t)
        if started and pid[0] and not killed.is_set():
            os.kill(pid[0], signal.SIGKILL)  # the remote agent, by its pid (same kernel)
            killed.set()
    try:
        a.request(op, step_args(host, rollout, target, op), timeout=600, on_event=on_event)
        check(False, 'c: the agent was killed during %s' % op)
    except EOFError:
        check(killed.is_set(), 'c: agent pid %s SIGKILLed during %s' % (pid[0], op))
    a.close()
    time.sleep(1)
    b = host.agent()
    steps, _ = journal_steps(host, b, rollout)
    check((op, 'begin') in steps and (op, 'done') not in steps and (op, 'failed') not in steps,
          'c: a new agent\'s journal shows %s begun, not done: %s' % (op, steps[-3:]))
    return b


def main():
    global AGENT_BYTES
    # Read once, before anything slow: a rebuild during the run cannot hand
    # the hosts a half-written binary.
    with open(AGENT, 'rb') as f:
        AGENT_BYTES = f.read()
    versions = {}
    log('fleet up --hubs 1 --scale %d (id %s)' % (SCALE, FID))
    fleet('up', '--hubs', '1', '--scale', str(SCALE), capture=False)
    for line in fleet('versions').splitlines():
        k, v = line.split()
        versions[k] = v
    base, newer = versions['baseline'], versions['newer']
    inv = json.loads(fleet('inventory', '--json'))
    hv = inv['_meta']['hostvars']
    hubname = (inv.get('canary', {}).get('hosts') or inv['hubs']['hosts'])[0]
    host = Host(hubname, hv[hubname])
    scale = [Host(n, hv[n]) for n in inv.get('scale', {}).get('hosts', [])]
    log('deploying the agent to', host.name, 'and', len(scale), 'scale hosts')
    host.deploy()
    for s in scale[:1]:
        s.deploy()  # scale hosts share one login user and home

    a = host.agent()
    check(a.hello.get('proto') == 1, 'hello speaks protocol 1')
    st0 = state(host, a)
    check(all(v == base for v in st0['envs'].values()) and st0['api'] == base, 'baseline: %s' % st0)

    # (e) hostile arguments: refused, nothing runs
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    res, _ = req(a, 'install', hub=host.hub, rollout='hostile', target='3.0.1; touch %s' % MARKER)
    check(err(res) == 'bad_argument', 'e: version with shell text refused (%s)' % err(res))
    bad = dict(host.hub, hub_env=host.hub['hub_env'] + '/../../../tmp')
    res, _ = req(a, 'facts', hub=bad)
    check(err(res) == 'bad_argument', 'e: path with .. refused (%s)' % err(res))
    bad = dict(host.hub, extra_packages=['evil package==1.0'])
    res, _ = req(a, 'backup', hub=bad, rollout='hostile', target=newer)
    check(err(res) == 'bad_argument', 'e: package name with a space refused (%s)' % err(res))
    bad = dict(host.hub, report_packages=['a b'])
    res, _ = req(a, 'facts', hub=bad)
    check(err(res) == 'bad_argument', 'e: report package with a space refused (%s)' % err(res))
    res, _ = req(a, 'migrate', hub=host.hub, rollout='../../etc/x')
    check(err(res) == 'bad_argument', 'e: rollout id with a path refused (%s)' % err(res))
    steps, _ = journal_steps(host, a, 'hostile')
    check(not os.path.exists(MARKER) and steps == [], 'e: nothing ran (no marker, empty journal)')

    # preflight: the target is installable, the host is fine
    res, ev = req(a, 'preflight', hub=host.hub, target=newer)
    check(ok(res) and res['data']['refused'] is False, 'preflight passes for %s' % newer)
    # everything the wheel needs is installed: pip's dry run could only agree and is not run (the
    # check's detail comes only from that path; a dry run's pass says "pip can install")
    inst = [c for c in res['data']['checks'] if c['name'].startswith('installable:')] if ok(res) else []
    check(inst and all('no pip dry run needed' in c['detail'] for c in inst),
          'preflight read the wheel and ran no pip dry run (%s)' % [c['detail'][:70] for c in inst])
    res, _ = req(a, 'preflight', hub=host.hub, target='99.0.0')
    refused = [c['name'] for c in res['data']['checks'] if c['outcome'] == 'refuse'] if ok(res) else []
    check(ok(res) and res['data']['refused'] is True and any(n.startswith('installable:') for n in refused),
          'preflight refuses an uninstallable 99.0.0 (%s)' % refused)

    # (i) the migration rehearsed on a copy before any downtime
    if 'bad-migration' in versions:
        sha0 = sha256(host.db_path)
        res, _ = req(a, 'preflight', hub=host.hub, target=versions['bad-migration'])
        reh = res['data'].get('rehearsal') or {} if ok(res) else {}
        st = state(host, a)
        check(ok(res) and res['data']['refused'] and reh.get('ok') is False,
              'i: rehearsal refuses bad-migration before any downtime (%s)' % (reh.get('error') or '')[:160])
        check(sha256(host.db_path) == sha0 and st['api'] == base and st['alembic'] == st0['alembic'],
              'i: the live database and hub untouched by the rehearsal')
        res, _ = req(a, 'preflight', hub=host.hub, target=newer)
        reh = res['data'].get('rehearsal') or {} if ok(res) else {}
        check(reh.get('ok') is True and reh.get('alembic_after') not in (None, st0['alembic']),
              'i: rehearsal of %s passes: alembic %s -> %s' % (newer, reh.get('alembic_before'), reh.get('alembic_after')))
        rehearsed_rev = reh.get('alembic_after')
        check(not [n for n in os.listdir(host.hub['state_dir']) if n.startswith('rehearsal-')],
              'i: the rehearsal removed everything it made')
    else:
        rehearsed_rev = None

    # (a)+(d) full upgrade, every op twice
    failed, res = upgrade(host, a, 'up1', newer, twice=True)
    check(failed is None, 'a: upgrade %s -> %s completes' % (base, newer))
    st = state(host, a)
    check(all(v == newer for v in st['envs'].values()), 'a: every env reports %s: %s' % (newer, st['envs']))
    check(st['api'] == newer, 'a: /hub/api reports %s (%s)' % (newer, st['api']))
    check(st['alembic'] not in (None, st0['alembic']), 'a: alembic revision moved %s -> %s' % (st0['alembic'], st['alembic']))
    check(st['users'] == st0['users'], 'a: users kept (%s)' % st['users'])
    if rehearsed_rev:
        check(st['alembic'] == rehearsed_rev, 'i: the real migration reached the rehearsed revision')
    steps, _ = journal_steps(host, a, 'up1')
    check(all((s, 'begin') in steps and (s, 'done') in steps for s in UPGRADE if s != 'health')
          and ('health', 'done') in steps, 'a: the journal shows every step begun and done')
    # back to the baseline through the journal, twice
    rollback_and_verify(host, a, 'up1', base, 'a: rollback after a good upgrade')
    res, _ = req(a, 'rollback', hub=host.hub, rollout='up1', timeout_ms=120000)
    st2 = state(host, a)
    check(ok(res) and all(v == base for v in st2['envs'].values()) and st2['api'] == base,
          'd: rollback run twice leaves the same end state')
    a.close()

    # (b) the bad releases
    for name, want_fail in (('bad-start', ('start', 'health')), ('bad-health', ('health',))):
        a = host.agent()
        failed, res = upgrade(host, a, 'r-' + name, versions[name])
        check(failed in want_fail, 'b: %s fails at %s (%s)' % (name, failed, err(res) if res else None))
        rollback_and_verify(host, a, 'r-' + name, base, 'b: %s' % name)
        steps, _ = journal_steps(host, a, 'r-' + name)
        check(('rollback', 'done') in steps, 'b: %s: journal records the rollback' % name)
        a.close()

    # (c) SIGKILL during install and during migrate
    b = kill_during(host, 'k-install', newer, 'install', ['backup', 'stop'])
    if b:
        rollback_and_verify(host, b, 'k-install', base, 'c: after a kill during install')
        b.close()
    b = kill_during(host, 'k-migrate', newer, 'migrate', ['backup', 'stop', 'install'])
    if b:
        rollback_and_verify(host, b, 'k-migrate', base, 'c: after a kill during migrate')
        b.close()

    # (g) backups beyond the hub's SQLite file: homes (size first, then tar),
    # an operator dump command for a non-SQLite database, or a refusal
    a = host.agent()
    home = os.path.dirname(host.hub['hub_env']) + '/home'
    res, ev = req(a, 'backup', hub=dict(host.hub, backup_homes=[home]), rollout='homes', target=newer, homes=True)
    sizes = [e for e in ev if 'home directories hold' in (e.get('text') or '')]
    check(ok(res) and sizes and os.path.getsize(res['data']['backup']['homes_file']) > 0,
          'g: homes archived, size reported first (%s)' % (sizes[0]['text'] if sizes else err(res)))
    pg = dict(host.hub, db='postgresql://hub@127.0.0.1/jupyterhub', db_dump=['/bin/echo', 'CREATE TABLE users;'])
    res, _ = req(a, 'backup', hub=pg, rollout='pgdump', target=newer)
    f = ok(res) and res['data']['backup']['db_file']
    check(ok(res) and open(f).read() == 'CREATE TABLE users;\n' and sha256(f) == res['data']['backup']['db_sha256'],
          'g: non-SQLite database backed up with the configured dump command')
    # PostgreSQL without a dump command is backed up with pg_dump (tests/upgrade's
    # PostgreSQL suites); another database without one is refused
    other = dict(host.hub, db='mysql://hub@127.0.0.1/jupyterhub')
    other.pop('db_dump', None)
    res, _ = req(a, 'backup', hub=other, rollout='othernodump', target=newer)
    check(err(res) == 'unsupported', 'g: a database neither SQLite nor PostgreSQL without a dump command refused (%s)' % err(res))
    a.close()

    # (h) a hub run by operator commands: stop/start confirmed through its URL
    a = host.agent()
    ctl = ['/usr/bin/supervisorctl', '-c', host.hub['supervisor_config']]
    cmd = dict(host.hub, service='command', start=ctl + ['start', 'jupyterhub'], stop=ctl + ['stop', 'jupyterhub'])
    del cmd['supervisor_config']
    res, _ = req(a, 'backup', hub=cmd, rollout='cmd', target=base)
    r1, _ = req(a, 'stop', hub=cmd, rollout='cmd')
    down = state(host, a)
    # A step runs only after its predecessor (issue 13): start straight after stop is stale.
    skip, _ = req(a, 'start', hub=cmd, rollout='cmd')
    check(err(skip) == 'bad_state', 'h: start right after stop (install, migrate not done) refused (%s)' % err(skip))
    ri, _ = req(a, 'install', hub=cmd, rollout='cmd', target=base)
    rm, _ = req(a, 'migrate', hub=cmd, rollout='cmd')
    check(ok(ri) and ok(rm), 'h: install (nothing to do) and migrate at %s (%s %s)' % (base, err(ri), err(rm)))
    r2, _ = req(a, 'start', hub=cmd, rollout='cmd')
    r3, _ = req(a, 'health', hub=cmd, rollout='cmd', target=base, timeout_ms=60000)
    check(ok(res) and ok(r1) and r1['data']['was_running'] and not down['running'] and ok(r2) and ok(r3),
          'h: service "command": stop confirmed (hub down), start and health ok (%s %s %s)' % (err(r1), err(r2), err(r3)))
    a.close()

    # (f) facts CPU on scale hosts
    cpu, proc = [], []
    for s in scale:
        ag = s.agent()
        for i in range(3):
            res, _ = req(ag, 'facts', hub=s.hub)
            if ok(res):
                cpu.append(res['data']['agent_cpu_us'])
                if i == 0:
                    proc.append(res['data']['process_cpu_us'])
        ag.close()
    if cpu:
        cpu.sort()
        proc.sort()
        log('facts on %d scale hosts x3: agent_cpu_us median %d max %d; agent process from its start to the '
            'first answer: median %d max %d' % (len(scale), cpu[len(cpu) // 2], cpu[-1], proc[len(proc) // 2], proc[-1]))
    # A figure, not a timed assertion (CI runs beside other load): the CPU
    # target lives in tests/bench/audit-bench.  What can fail here is that
    # every facts answered and measured itself.
    check(len(cpu) == 3 * len(scale) and all(c > 0 for c in cpu) and len(proc) == len(scale),
          'f: facts answered on every scale host, each reporting its agent CPU (%d of %d)' % (len(cpu), 3 * len(scale)))


def on_signal(signum, frame):
    # meson's timeout sends SIGTERM: turn it into an exception so the
    # fleet is still torn down in the finally below.
    raise SystemExit('killed by signal %d' % signum)


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rc = 0
    try:
        main()
    except (Exception, SystemExit) as e:  # report, then tear down
        import traceback
        traceback.print_exc()
        failures.append('exception: %r' % e)
    finally:
        if os.environ.get('HF_KEEP_FLEET') != '1':
            fleet('down', capture=False, check_rc=False)
    log('%d checks, %d failed' % (checks, len(failures)))
    for f in failures:
        log('  failed:', f)
    sys.exit(1 if failures else 0)
