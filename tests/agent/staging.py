#!/usr/bin/python3
"""staging.py: the agent's staged environments (issue 17) on the test fleet, over real OpenSSH.

Usage: staging.py AGENT_BINARY FLEET_SCRIPT

One SQLite hub host and one PostgreSQL hub host (its own fleet: id "st" + $HF_TEST_ID, or "st" + 3 hex digits of a hash of this
checkout's path; $HF_STAGING_FLEET_ID wins), driven by protocol frames (tests/agent/client.py).
The hub reads its packages from a private copy of the fleet's wheel directory, so that the test
can take the package source away without touching other fleets. Cases:
  1  stage: every env copied to ENV.hf-next with the target, the hub's pid and versions unchanged,
     the copy's console scripts name ENV (not ENV.hf-next)
  2  stage sent again: already, answered at once
  3  a package pip-installed into a live env after staging: stage again re-stages (and the copy has it)
  4  backup, stop, install: every env switched (ENV holds the target, ENV.hf-prev the previous,
     owner kept); migrate with an expect_revision other than the live one runs upgrade-db; sent
     again with the now-live revision it is skipped (< 0.3 s); start, health
  5  rollback with the package source and the host's package cache moved away: every env back by
     switch (journal: restored_by switch), hub healthy on the baseline, database = backup
  6  the agent SIGKILLed during the switch of a second rollout: the re-sent install converges
     (every env at the target, ENV.hf-prev the baseline), the hub upgrades and rolls back
  7  a symlink planted at ENV.hf-next by the hub's user: stage refused (bad_state), the target
     of the link untouched, the link left; a foreign directory there: refused too
  8  the same as root (become, real sudo): the planted symlink refused; staged copies root's and
     0700 at the top with the hub user's files inside; the switch gives them the hub user's owner
     and mode; an ENV.hf-prev the root agent did not keep is moved aside, not removed; rollback by
     switch
  9  install cut between its renames, reproduced with the same syscalls (an exchange done, a live
     env renamed to ENV.hf-prev with its copy not yet in): the re-sent install finishes both
  10 a PostgreSQL hub: stage reads the live revision through psql; already; install by switch;
     migrate skipped at the live revision; rollback by switch
  11 a file the agent cannot read: the copy fails naming it; a sparse file larger than the free disk:
     refused before the copy (no_space, naming it), the disk not filled; a 64 MB sparse file copied
     with its holes; a stage past its deadline stops its copy (timeout) and removes it
  12 a package with a binary file holding the copy's path: not rewritten; the copy's Python writes no
     byte-code into it (-I -B)
  13 a config file written into a live env after staging: stage stages again; an install cut
     mid-switch (the states of 9), then rollback: every env back by switch, the hub healthy
  14 a staging directory a killed agent was creating: the next stage takes it; a file written into an
     env after staging: install uses pip there, saying why, and the file stays
The fleet is torn down at the end, also on failure (HF_KEEP_FLEET=1 keeps it).
"""
import base64
import ctypes
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import integration as ig  # noqa: E402  (its fleet, host and check helpers)
from integration import check, err, fleet, log, ok, sha256  # noqa: E402,F401

AGENT, FLEET = sys.argv[1], sys.argv[2]
ig.FID = FID = os.environ.get('HF_STAGING_FLEET_ID') or \
    ('st' + os.environ['HF_TEST_ID'][:3] if os.environ.get('HF_TEST_ID') else
     'st' + hashlib.sha1(os.path.realpath(FLEET).encode()).hexdigest()[:3])


class Host(ig.Host):
    def __init__(self, name, hv):
        super().__init__(name, hv)
        self.envs = [self.hub['hub_env']] + [e for e in self.hub['user_envs'] if e != self.hub['hub_env']]

    def run(self, *argv):
        return subprocess.run(self.ssh + ['--'] + list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=300)

    def hub_pid(self):
        out = self.run('supervisorctl', '-c', self.hub['supervisor_config'], 'pid', 'jupyterhub').stdout.strip()
        return int(out) if out.isdigit() else None


def req(agent, op, on_event=None, **args):
    t0 = time.monotonic()
    res, events = agent.request(op, args, timeout=1200, on_event=on_event)
    return res, events, time.monotonic() - t0


def msg(res):
    return ((res.get('error') or {}).get('message') or '')[:400]


def facts(host, agent):
    res, _, _ = req(agent, 'facts', hub=host.hub)
    d = res['data']
    return {'envs': {e['prefix']: e['jupyterhub'] for e in d['envs']},
            'alembic': d['db']['alembic_revision'], 'api': d['api_version'], 'running': d['hub_running']}


def dist_version(env, name):
    """The version of distribution name in env, from its dist-info (what pip left)."""
    for lib in os.listdir(os.path.join(env, 'lib')):
        site = os.path.join(env, 'lib', lib, 'site-packages')
        if not os.path.isdir(site):
            continue
        for d in os.listdir(site):
            if d.endswith('.dist-info') and d.split('-')[0].lower() == name.replace('-', '_').lower():
                return d[len(d.split('-')[0]) + 1:-len('.dist-info')]
    return None


def shebang(path):
    with open(path, 'rb') as f:
        return f.readline().decode(errors='replace').strip()


def tiny_wheel(directory, name, version, extra=None):
    """A real wheel (zip with METADATA, WHEEL, RECORD) of one module (and the files extra maps
    to their bytes, beside it in site-packages), for pip to install."""
    files = dict(extra or {})
    files.update({'%s.py' % name: b'VALUE = 1\n',
             '%s-%s.dist-info/METADATA' % (name, version):
                 ('Metadata-Version: 2.1\nName: %s\nVersion: %s\n' % (name, version)).encode(),
             '%s-%s.dist-info/WHEEL' % (name, version):
                 b'Wheel-Version: 1.0\nGenerator: staging.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n'})
    record = io.StringIO()
    for p, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()
        record.write('%s,sha256=%s,%d\n' % (p, digest, len(data)))
    record.write('%s-%s.dist-info/RECORD,,\n' % (name, version))
    files['%s-%s.dist-info/RECORD' % (name, version)] = record.getvalue().encode()
    path = os.path.join(directory, '%s-%s-py3-none-any.whl' % (name, version))
    with zipfile.ZipFile(path, 'w') as z:
        for p, data in files.items():
            z.writestr(p, data)
    os.chmod(path, 0o644)
    return path


def journal(host, agent, rollout, hub=None):
    res, _, _ = req(agent, 'journal', hub=hub or host.hub, rollout=rollout)
    return res['data']['steps']


def upgrade_steps(host, agent, rollout, target, ops, what, hub=None):
    for op in ops:
        a = {'hub': hub or host.hub, 'rollout': rollout}
        if op in ('backup', 'install', 'health'):
            a['target'] = target
        res, _, dt = req(agent, op, **a)
        if not check(ok(res), '%s: %s (%.2f s) %s' % (what, op, dt, msg(res))):
            return False
    return True


def kill_at_switch(host, rollout, target):
    """install, the agent SIGKILLed as soon as it reports its first environment switched. The
    whole switch takes milliseconds, so the kill may land after the answer: True when it cut the
    install (case 9 reproduces the cut states exactly)."""
    a = host.agent()
    pid = [None]
    killed = threading.Event()

    def on_event(e):
        t = e.get('text') or ''
        if t.startswith('agent pid '):
            pid[0] = int(t.split()[2].rstrip(':'))
        if 'switched to its staged copy' in t and pid[0] and not killed.is_set():
            os.kill(pid[0], signal.SIGKILL)  # the remote agent, by its pid (same kernel)
            killed.set()
    try:
        res, _ = a.request('install', {'hub': host.hub, 'rollout': rollout, 'target': target}, timeout=600,
                           on_event=on_event)
        check(ok(res) and killed.is_set(), '6: SIGKILL sent at the first switch; the install answered first (%s)'
              % err(res))
        cut = False
    except EOFError:
        check(killed.is_set(), '6: agent pid %s SIGKILLed right after its first switch' % pid[0])
        cut = True
    a.close()
    return cut


def main():
    with open(AGENT, 'rb') as f:
        ig.AGENT_BYTES = f.read()
    log('fleet up --hubs 1 --pg-hubs 1 (id %s)' % FID)
    fleet('up', '--hubs', '1', '--pg-hubs', '1', capture=False)
    versions = {}
    for line in fleet('versions').splitlines():
        k, v = line.split()
        versions.setdefault(k, v)
    base, newer = versions['baseline'], versions['newer']
    inv = json.loads(fleet('inventory', '--json'))
    hv = inv['_meta']['hostvars']
    hubname = (inv.get('canary', {}).get('hosts') or inv['hubs']['hosts'])[0]
    host = Host(hubname, hv[hubname])
    # A private package source for this hub (the fleet's wheel directory is shared by every fleet).
    fstate = fleet('path', 'state').strip()
    wheels = os.path.join(fstate, 'stage-wheels')
    os.makedirs(wheels, exist_ok=True)
    os.chmod(wheels, 0o755)
    for w in os.listdir(host.hub['find_links']):
        if w.endswith('.whl'):
            shutil.copy(os.path.join(host.hub['find_links'], w), wheels)
    host.hub['find_links'] = wheels
    host.deploy()
    a = host.agent()
    st0 = facts(host, a)
    check(all(v == base for v in st0['envs'].values()) and st0['api'] == base and len(st0['envs']) >= 2,
          'baseline: %s' % st0)
    envs = host.envs
    uid0 = {e: os.stat(e).st_uid for e in envs}
    mode0 = {e: os.stat(e).st_mode & 0o7777 for e in envs}

    res, _, dt = req(a, 'preflight', hub=host.hub, target=newer)
    check(ok(res) and res['data']['refused'] is False, 'preflight passes for %s (%.1f s)' % (newer, dt))
    rehearsed = ((res.get('data') or {}).get('rehearsal') or {}).get('alembic_after')

    # 1: stage
    pid0 = host.hub_pid()
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s1', target=newer)
    check(ok(res) and res['data']['already'] is False, '1: stage succeeds (%.2f s, %s bytes) %s'
          % (dt, (res.get('data') or {}).get('bytes'), msg(res)))
    staged = (res.get('data') or {}).get('staged') or {}
    check(sorted(staged) == sorted(envs) and all(staged[e]['path'] == e + '.hf-next' and
                                                  staged[e]['versions'].get('jupyterhub') == newer for e in staged),
          '1: every env staged at ENV.hf-next with %s: %s' % (newer, json.dumps(staged)[:300]))
    check(all(dist_version(e + '.hf-next', 'jupyterhub') == newer and dist_version(e, 'jupyterhub') == base
              for e in envs), '1: the copies hold %s by their files, the live envs still %s' % (newer, base))
    sb = {e: shebang(os.path.join(e + '.hf-next', 'bin', 'jupyterhub')) for e in envs}
    check(all(sb[e] == '#!' + e + '/bin/python' for e in envs),
          '1: the copies\' console scripts name the live env (after the switch): %s' % sb)
    check(all(os.stat(e + '.hf-next').st_mode & 0o777 == 0o700 for e in envs),
          '1: the staging directories are private (0700) until the switch')
    st = facts(host, a)
    check(host.hub_pid() == pid0 and pid0 and st['api'] == base and st['running'],
          '1: the hub kept running untouched (pid %s, api %s)' % (pid0, st['api']))

    # 2: sent again
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s1', target=newer)
    check(ok(res) and res['data']['already'] is True, '2: stage sent again: already (%.3f s)' % dt)
    fig_already = dt

    # 3: a live env changed after staging
    user_env = envs[-1]
    tiny_wheel(wheels, 'hfstagemark', '1.0')
    r = host.run(user_env + '/bin/python', '-m', 'pip', 'install', '--no-index', '--find-links', wheels,
                 '--disable-pip-version-check', 'hfstagemark==1.0')
    check(r.returncode == 0 and dist_version(user_env, 'hfstagemark') == '1.0',
          '3: pip installed hfstagemark into the live %s (%s)' % (user_env, r.stdout.strip()[-200:]))
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s1', target=newer)
    check(ok(res) and res['data']['already'] is False and dist_version(user_env + '.hf-next', 'hfstagemark') == '1.0',
          '3: stage after the change stages again (%.2f s), the copy has the new package' % dt)
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s1', target=newer)
    check(ok(res) and res['data']['already'] is True, '3: and is already again after that')

    # 4: backup, stop, install (switch), migrate (runs, then skipped), start, health
    if not upgrade_steps(host, a, 's1', newer, ['backup', 'stop'], '4'):
        return
    res, ev, dt = req(a, 'install', hub=host.hub, rollout='s1', target=newer)
    ran = [e.get('text') for e in ev if ': run ' in (e.get('text') or '')]
    d = res.get('data') or {}
    check(ok(res) and d.get('switched') is True and not ran,
          '4: install switched every env, no installer ran (%.3f s) %s' % (dt, msg(res)))
    fig_install = dt
    check(d.get('previous') == {e: e + '.hf-prev' for e in envs}, '4: previous: %s' % d.get('previous'))
    check(all(dist_version(e, 'jupyterhub') == newer and dist_version(e + '.hf-prev', 'jupyterhub') == base
              and not os.path.lexists(e + '.hf-next') for e in envs),
          '4: ENV holds %s, ENV.hf-prev %s, no ENV.hf-next left' % (newer, base))
    check(all(os.stat(e).st_uid == uid0[e] and os.stat(e).st_mode & 0o7777 == mode0[e] for e in envs),
          '4: the switched envs have their previous owner and mode')
    check(dist_version(user_env, 'hfstagemark') == '1.0', '4: the package installed after staging is in the env')
    res2, ev2, dt = req(a, 'install', hub=host.hub, rollout='s1', target=newer)
    check(ok(res2) and res2['data']['switched'] is True and res2['data']['installed'] == d.get('installed'),
          '4: install sent again: the same answer, nothing changed (%.3f s)' % dt)
    live_rev = facts(host, a)['alembic']
    res, _, dt = req(a, 'migrate', hub=host.hub, rollout='s1', expect_revision=live_rev + 'x')
    check(ok(res) and res['data'].get('skipped') is False and res['data']['alembic_after'] != live_rev and
          res['data'].get('expect_met') is False,
          '4: migrate with another expect_revision runs upgrade-db: %s -> %s (%.2f s)'
          % (live_rev, (res.get('data') or {}).get('alembic_after'), dt))
    fig_migrate = dt
    if rehearsed:
        check((res.get('data') or {}).get('alembic_after') == rehearsed, '4: the rehearsal predicted %s' % rehearsed)
    now_rev = facts(host, a)['alembic']
    res, ev, dt = req(a, 'migrate', hub=host.hub, rollout='s1', expect_revision=now_rev)
    check(ok(res) and res['data'].get('skipped') is True and res['data']['alembic_before'] == now_rev and dt < 0.3
          and not [e for e in ev if ': run ' in (e.get('text') or '')],
          '4: migrate with expect_revision = the live %s is skipped in %.3f s (< 0.3)' % (now_rev, dt))
    fig_skip = dt
    if not upgrade_steps(host, a, 's1', newer, ['start', 'health'], '4'):
        return
    st = facts(host, a)
    check(st['api'] == newer and all(v == newer for v in st['envs'].values()), '4: the hub runs %s: %s' % (newer, st))

    # 5: rollback with the package source and the cache gone
    jr, _, _ = req(a, 'journal', hub=host.hub, rollout='s1')
    bk = jr['data']['backup']
    away = wheels + '.away'
    os.rename(wheels, away)
    cache = os.path.join(host.hub['state_dir'], 'cache')
    cache_away = os.path.join(fstate, 'stage-cache.away')
    moved_cache = os.path.isdir(cache)
    if moved_cache:
        shutil.move(cache, cache_away)
    res, ev, dt = req(a, 'rollback', hub=host.hub, rollout='s1', timeout_ms=180000)
    ran = [e.get('text') for e in ev if 'pip' in (e.get('text') or '') and ': run ' in (e.get('text') or '')]
    check(ok(res) and not ran, '5: rollback with the package source and cache moved away succeeds, no pip ran '
          '(%.2f s) %s' % (dt, msg(res)))
    fig_rollback = dt
    rb = [s for s in journal(host, a, 's1') if s['step'] == 'rollback' and 'restored_by' in (s['detail'] or {})]
    check(rb and rb[-1]['detail']['restored_by'] == {e: 'switch' for e in envs},
          '5: the journal says restored_by switch: %s' % (rb[-1]['detail'] if rb else None))
    st = facts(host, a)
    check(st['api'] == base and all(v == base for v in st['envs'].values()) and sha256(host.db_path) == bk['db_sha256'],
          '5: the hub runs %s again, every env at %s, database = backup: %s' % (base, base, st))
    check(dist_version(user_env, 'hfstagemark') == '1.0', '5: the restored user env is the one it was (hfstagemark)')
    os.rename(away, wheels)
    if moved_cache:
        shutil.move(cache_away, cache)

    # 6: SIGKILL during the switch, then install again
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s2', target=newer)
    check(ok(res) and res['data']['already'] is False, '6: stage for rollout s2 (%.2f s) %s' % (dt, msg(res)))
    if not upgrade_steps(host, a, 's2', newer, ['backup', 'stop'], '6'):
        return
    a.close()
    cut = kill_at_switch(host, 's2', newer)
    time.sleep(1)
    a = host.agent()
    steps = [(s['step'], s['state']) for s in journal(host, a, 's2')]
    if cut:
        check(('install', 'begin') in steps and ('install', 'done') not in steps,
              '6: the journal shows install begun, not done')
    res, _, dt = req(a, 'install', hub=host.hub, rollout='s2', target=newer)
    check(ok(res) and res['data'].get('switched') is True, '6: the re-sent install converges (%.3f s) %s' % (dt, msg(res)))
    check(all(dist_version(e, 'jupyterhub') == newer and dist_version(e + '.hf-prev', 'jupyterhub') == base
              and not os.path.lexists(e + '.hf-next') for e in envs),
          '6: every env at %s, every ENV.hf-prev at %s, no ENV.hf-next' % (newer, base))
    if not upgrade_steps(host, a, 's2', newer, ['migrate', 'start', 'health'], '6'):
        return
    res, _, dt = req(a, 'rollback', hub=host.hub, rollout='s2', timeout_ms=180000)
    st = facts(host, a)
    check(ok(res) and st['api'] == base and all(v == base for v in st['envs'].values()),
          '6: rollback after it: %s (%.2f s)' % (st, dt))

    # 7: a symlink planted at ENV.hf-next by the hub's user
    victim = os.path.join(fstate, 'stage-victim')
    os.makedirs(os.path.join(victim, 'lib'), exist_ok=True)
    with open(os.path.join(victim, 'keep'), 'w') as f:
        f.write('keep\n')
    os.chmod(victim, 0o777)
    before = sorted(os.listdir(victim))
    target_env = envs[0]
    r = host.run('ln', '-s', victim, target_env + '.hf-next')
    check(r.returncode == 0 and os.path.islink(target_env + '.hf-next'), '7: the hub user planted a symlink')
    res, _, _ = req(a, 'stage', hub=host.hub, rollout='s3', target=newer)
    check(err(res) == 'bad_state' and 'not a staging copy this agent made' in msg(res),
          '7: stage refused: %s: %s' % (err(res), msg(res)[:200]))
    check(sorted(os.listdir(victim)) == before and os.path.islink(target_env + '.hf-next'),
          '7: nothing followed: the link\'s target unchanged (%s), the link left' % sorted(os.listdir(victim)))
    os.unlink(target_env + '.hf-next')
    r = host.run('mkdir', target_env + '.hf-next')
    res, _, _ = req(a, 'stage', hub=host.hub, rollout='s3', target=newer)
    check(err(res) == 'bad_state' and os.path.isdir(target_env + '.hf-next') and not os.listdir(target_env + '.hf-next'),
          '7: a foreign directory at ENV.hf-next: refused too, left as it was (%s)' % err(res))
    st = facts(host, a)
    check(st['api'] == base and all(v == base for v in st['envs'].values()), '7: the hub untouched')
    os.rmdir(target_env + '.hf-next')
    a.close()

    # 8: the same as root (become, real sudo): a planted symlink refused; the copy root's (0700)
    # with the hub user's files inside until the switch gives it the hub user's owner and mode
    rs = os.path.join(fstate, 'stage-root-state')
    hb = dict(host.hub, become=True, state_dir=rs, backup_dir=rs + '/backups')
    a = host.agent()
    os.chmod(victim, 0o755)
    link = envs[-1] + '.hf-next'
    r = host.run('ln', '-s', victim, link)
    res, _, _ = req(a, 'stage', hub=hb, rollout='s4', target=newer)
    check(err(res) == 'bad_state' and sorted(os.listdir(victim)) == before and os.path.islink(link),
          '8: as root: the planted symlink refused, nothing followed (%s)' % msg(res)[:160])
    os.unlink(link)
    res, _, dt = req(a, 'stage', hub=hb, rollout='s4', target=newer)
    check(ok(res) and res['data']['already'] is False, '8: stage as root (%.2f s) %s' % (dt, msg(res)))
    hub_uid = uid0[envs[0]]
    check(all(os.stat(e + '.hf-next').st_uid == 0 and os.stat(e + '.hf-next').st_mode & 0o777 == 0o700 and
              os.stat(e + '.hf-next/bin').st_uid == hub_uid for e in envs if os.path.isdir(e + '.hf-next')),
          '8: each copy root\'s and 0700 at the top, the hub user\'s inside')
    if upgrade_steps(host, a, 's4', newer, ['backup', 'stop'], '8', hub=hb):
        res, _, dt = req(a, 'install', hub=hb, rollout='s4', target=newer)
        check(ok(res) and res['data'].get('switched') is True, '8: install as root switched (%.3f s) %s' % (dt, msg(res)))
        check(all(os.stat(e).st_uid == uid0[e] and os.stat(e).st_mode & 0o7777 == mode0[e] and
                  dist_version(e, 'jupyterhub') == newer for e in envs),
              '8: the switched envs have the hub user\'s owner and mode back')
        aside = sorted({n for d in {os.path.dirname(e) for e in envs} for n in os.listdir(d) if n.startswith('.hf-aside-')})
        check(len(aside) == len(envs), '8: the ENV.hf-prev the root agent did not keep moved aside, not removed: %s' % aside)
        res, _, dt = req(a, 'migrate', hub=hb, rollout='s4', expect_revision=rehearsed or 'x')
        check(ok(res) and (not rehearsed or res['data'].get('expect_met') is True),
              '8: migrate to the rehearsed revision, expect_met (%.2f s) %s' % (dt, msg(res)))
        res, _, dt = req(a, 'rollback', hub=hb, rollout='s4', timeout_ms=180000)
        rb = [s['detail']['restored_by'] for s in journal(host, a, 's4', hb)
              if s['step'] == 'rollback' and 'restored_by' in (s['detail'] or {})]
        st = facts(host, a)
        check(ok(res) and st['api'] == base and all(v == base for v in st['envs'].values()) and
              all(os.stat(e).st_uid == uid0[e] for e in envs) and rb and rb[-1] == {e: 'switch' for e in envs},
              '8: rollback as root by switch: %s %s (%.2f s) %s' % (st['envs'], rb[-1:], dt, msg(res)))
    a.close()

    # 9: an install cut between its two renames, reproduced exactly: env 1 exchanged with its copy
    # (a kill right after renameat2), env 2 renamed to ENV.hf-prev with its copy not yet renamed in
    # (the two-rename path, killed between them); the re-sent install finishes both
    a = host.agent()
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s5', target=newer)
    check(ok(res), '9: stage (%.2f s) %s' % (dt, msg(res)))
    if upgrade_steps(host, a, 's5', newer, ['backup', 'stop'], '9'):
        libc = ctypes.CDLL(None, use_errno=True)
        e1, e2 = envs[0], envs[-1]
        rc1 = libc.renameat2(-100, (e1 + '.hf-next').encode(), -100, e1.encode(), 2)  # AT_FDCWD, RENAME_EXCHANGE
        if os.path.lexists(e2 + '.hf-prev'):
            os.rename(e2 + '.hf-prev', os.path.join(os.path.dirname(e2), '.test-aside-prev'))
        os.rename(e2, e2 + '.hf-prev')
        check(rc1 == 0 and not os.path.exists(e2), '9: the cut states made (exchange done for %s, %s renamed away)'
              % (e1, e2))
        res, ev, dt = req(a, 'install', hub=host.hub, rollout='s5', target=newer)
        done = [e.get('text') for e in ev if 'finished the switch' in (e.get('text') or '')]
        check(ok(res) and res['data'].get('switched') is True and len(done) == 2,
              '9: the re-sent install finishes both switches (%.3f s): %s %s' % (dt, done, msg(res)))
        check(all(dist_version(e, 'jupyterhub') == newer and dist_version(e + '.hf-prev', 'jupyterhub') == base
                  and not os.path.lexists(e + '.hf-next') for e in envs),
              '9: every env at %s, ENV.hf-prev at %s, no ENV.hf-next' % (newer, base))
        res, _, dt = req(a, 'rollback', hub=host.hub, rollout='s5', timeout_ms=180000)
        st = facts(host, a)
        check(ok(res) and st['api'] == base and all(v == base for v in st['envs'].values()),
              '9: rollback after it: %s (%.2f s) %s' % (st['envs'], dt, msg(res)))
    a.close()

    # 10: a PostgreSQL hub: stage (the live revision read through psql), already, install by switch,
    # migrate skipped at the live revision, rollback by switch
    pgname = [n for n in inv.get('pg', {}).get('hosts', [])]
    if check(len(pgname) == 1, '10: the fleet has a PostgreSQL hub: %s' % pgname):
        pg = Host(pgname[0], hv[pgname[0]])
        pg.hub['find_links'] = wheels
        pg.deploy()
        b = pg.agent()
        res, _, dt = req(b, 'stage', hub=pg.hub, rollout='p1', target=newer)
        check(ok(res) and res['data']['alembic'], '10: stage on PostgreSQL (%.2f s, revision %s) %s'
              % (dt, (res.get('data') or {}).get('alembic'), msg(res)))
        rev = (res.get('data') or {}).get('alembic')
        res, _, dt = req(b, 'stage', hub=pg.hub, rollout='p1', target=newer)
        check(ok(res) and res['data']['already'] is True, '10: sent again: already (%.3f s)' % dt)
        if upgrade_steps(pg, b, 'p1', newer, ['backup', 'stop', 'install'], '10'):
            res, _, dt = req(b, 'migrate', hub=pg.hub, rollout='p1', expect_revision=rev)
            check(ok(res) and res['data'].get('skipped') is True and res['data']['alembic_after'] == rev,
                  '10: migrate with expect_revision = the live %s skipped (%.3f s) %s' % (rev, dt, msg(res)))
            res, _, dt = req(b, 'rollback', hub=pg.hub, rollout='p1', timeout_ms=180000)
            rb = [s['detail']['restored_by'] for s in journal(pg, b, 'p1')
                  if s['step'] == 'rollback' and 'restored_by' in (s['detail'] or {})]
            st = facts(pg, b)
            check(ok(res) and st['api'] == base and rb and set(rb[-1].values()) == {'switch'},
                  '10: rollback by switch: %s %s (%.2f s) %s' % (st['envs'], rb[-1:], dt, msg(res)))
        b.close()
    # 11: (A1) a sparse file in an env: counted at its size, so one larger than the free disk is
    # refused before anything is written; one that fits is copied with its holes; a file the agent
    # cannot read fails the copy with its path (no stray '/'); the copy stops at the deadline
    a = host.agent()
    ue, e0 = envs[-1], envs[0]
    hub_uid, hub_gid = os.stat(ue).st_uid, os.stat(ue).st_gid
    os.makedirs(os.path.join(ue, 'share'), exist_ok=True)
    unread = os.path.join(ue, 'share', 'hf-unreadable')
    with open(unread, 'w') as f:
        f.write('secret\n')
    os.chown(unread, hub_uid, hub_gid)
    os.chmod(unread, 0)
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s6', target=newer)
    check(err(res) == 'io' and ('copy %s: Permission denied' % unread) in msg(res) and
          not os.path.lexists(ue + '.hf-next'),
          '11: a file the agent cannot read: the copy fails naming it, the partial copy removed (%.2f s): %s %s'
          % (dt, err(res), msg(res)[:200]))
    os.unlink(unread)
    sparse = os.path.join(ue, 'share', 'hf-sparse')
    vfs = os.statvfs(ue)
    free0 = vfs.f_bavail * vfs.f_frsize
    with open(sparse, 'wb') as f:
        f.truncate(2 * free0 + (1 << 30))
    os.chown(sparse, hub_uid, hub_gid)
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s6', target=newer)
    vfs = os.statvfs(ue)
    check(err(res) == 'no_space' and sparse in msg(res) and not os.path.lexists(ue + '.hf-next') and
          vfs.f_bavail * vfs.f_frsize > free0 - (512 << 20),
          '11: a sparse file of %d MB (%d MB free): refused before the copy, naming it, no ENV.hf-next, the disk not '
          'filled (%.2f s): %s' % (os.stat(sparse).st_size >> 20, free0 >> 20, dt, msg(res)[:300]))
    os.unlink(sparse)
    with open(sparse, 'wb') as f:
        f.write(b'head')
        f.seek(32 << 20)
        f.write(b'tail')
        f.truncate(64 << 20)
    os.chown(sparse, hub_uid, hub_gid)
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s6', target=newer)
    cp = ue + '.hf-next/share/hf-sparse'
    cst = os.stat(cp) if os.path.exists(cp) else None
    same = False
    if cst:
        with open(cp, 'rb') as f:
            h = f.read(4)
            f.seek(32 << 20)
            same = h == b'head' and f.read(4) == b'tail'
    check(ok(res) and cst and cst.st_size == 64 << 20 and cst.st_blocks * 512 <= (1 << 20) and same,
          '11: a 64 MB file with two 4-byte extents is copied with its holes: size %s, %s bytes allocated (%.2f s) %s'
          % (cst and cst.st_size, cst and cst.st_blocks * 512, dt, msg(res)))
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s6', target=newer, timeout_ms=1)
    check(err(res) == 'timeout' and 'time ran out' in msg(res) and not os.path.lexists(e0 + '.hf-next'),
          '11: a stage whose deadline has passed stops its copy (timeout), the partial copy removed (%.2f s): %s'
          % (dt, msg(res)[:200]))

    # 12: (A5) relocation leaves binary files alone; the copy's Python (-I -B) writes no byte-code
    # into it: a package with a binary file holding the copy's path, and a .pth that imports it
    binpath = (ue + '.hf-next').encode()
    blob = b'\x00\x01BIN ' + binpath + b' \x00\x02'
    tiny_wheel(wheels, 'hfbin', '1.0', {'hfbin_blob.bin': blob, 'hfbin_imp.pth': b'import hfbin\n'})
    hb2 = dict(host.hub, extra_packages=['hfbin==1.0'])
    res, _, dt = req(a, 'stage', hub=hb2, rollout='s6', target=newer)
    sites = [os.path.join(ue + '.hf-next', 'lib', d, 'site-packages') for d in os.listdir(os.path.join(ue, 'lib'))]
    sites = [d for d in sites if os.path.isdir(d)]
    blobs = [open(os.path.join(d, 'hfbin_blob.bin'), 'rb').read() for d in sites
             if os.path.exists(os.path.join(d, 'hfbin_blob.bin'))]
    pycs = [os.path.join(dp, n) for e in envs for dp, _, ns in os.walk(e + '.hf-next') for n in ns
            if n.startswith('hfbin') and n.endswith('.pyc')]
    check(ok(res) and blobs == [blob], '12: stage with a package holding a binary file that names the copy: the '
          'file is not rewritten (%.2f s) %s' % (dt, msg(res)))
    check(ok(res) and not pycs, '12: the copy\'s Python imported hfbin (a .pth) and wrote no byte-code: %s' % pycs)

    # 13: (A2, A3) a file written into a live env after staging makes stage stage again; an install
    # cut mid-switch (same syscalls as 9), then rollback: every env back by switch, hub healthy
    cfgd = os.path.join(e0, 'etc', 'jupyter', 'jupyter_server_config.d')
    os.makedirs(cfgd, exist_ok=True)
    for d in (os.path.join(e0, 'etc'), os.path.join(e0, 'etc', 'jupyter'), cfgd):
        os.chown(d, hub_uid, hub_gid)
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s7', target=newer)
    check(ok(res) and res['data']['already'] is False, '13: stage at the usual pins again (%.2f s) %s' % (dt, msg(res)))
    marker = os.path.join(cfgd, 'hf-marker.json')
    with open(marker, 'w') as f:
        f.write('{"ServerApp": {}}\n')
    os.chown(marker, hub_uid, hub_gid)
    res, ev, dt = req(a, 'stage', hub=host.hub, rollout='s7', target=newer)
    why = [e.get('text') for e in ev if 'stale staged copy' in (e.get('text') or '')]
    check(ok(res) and res['data']['already'] is False and
          os.path.exists(marker.replace(e0, e0 + '.hf-next', 1)) and any(e0 in t for t in why),
          '13: a config file written into %s after staging: stage stages again, the copy has it (%.2f s): %s'
          % (e0, dt, why))
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s7', target=newer)
    check(ok(res) and res['data']['already'] is True, '13: sent again with nothing changed (the hub running): already '
          '(%.3f s)' % dt)
    if upgrade_steps(host, a, 's7', newer, ['backup', 'stop'], '13'):
        libc = ctypes.CDLL(None, use_errno=True)
        e1, e2 = envs[0], envs[-1]
        rc1 = libc.renameat2(-100, (e1 + '.hf-next').encode(), -100, e1.encode(), 2)  # AT_FDCWD, RENAME_EXCHANGE
        if os.path.lexists(e2 + '.hf-prev'):
            shutil.rmtree(e2 + '.hf-prev')
        os.rename(e2, e2 + '.hf-prev')
        check(rc1 == 0 and not os.path.exists(e2) and dist_version(e1, 'jupyterhub') == newer,
              '13: the cut states made (exchange done for %s, %s renamed away)' % (e1, e2))
        res, ev, dt = req(a, 'rollback', hub=host.hub, rollout='s7', timeout_ms=180000)
        rb = [s['detail']['restored_by'] for s in journal(host, a, 's7')
              if s['step'] == 'rollback' and 'restored_by' in (s['detail'] or {})]
        st = facts(host, a)
        check(ok(res) and st['api'] == base and st['running'] and all(v == base for v in st['envs'].values()) and
              rb and rb[-1] == {e: 'switch' for e in envs},
              '13: rollback after the cut switch: hub healthy on %s, restored_by %s (%.2f s) %s'
              % (st['api'], rb[-1:], dt, msg(res)))
        check(all(dist_version(e + '.hf-next', 'jupyterhub') == newer for e in envs) and os.path.exists(marker),
              '13: the staged copies are ENV.hf-next again, the config file in the live env')

    # 14: (A4) a staging directory a killed agent was creating (its record says so, no inode yet):
    # the next stage takes it as its own; then (A2) a file written after staging: install uses pip
    # for that env, saying why, and the file is in the env after the install
    res, _, dt = req(a, 'stage', hub=host.hub, rollout='s8', target=newer)
    check(ok(res) and res['data']['already'] is True, '14: the copies the rollback put back are still valid: already '
          '(%.3f s) %s' % (dt, msg(res)))
    recp = os.path.join(host.hub['state_dir'], 'stage', 'env-%s.json' % hashlib.sha256(e0.encode()).hexdigest()[:16])
    with open(recp) as f:
        rec = json.load(f)
    rec.update(creating=True, complete=False)
    for k in ('next_dev', 'next_ino', 'tree', 'fingerprint'):
        rec.pop(k, None)
    shutil.rmtree(e0 + '.hf-next')
    r = host.run('mkdir', '-m', '700', e0 + '.hf-next')
    with open(recp, 'w') as f:
        json.dump(rec, f)
    res, ev, dt = req(a, 'stage', hub=host.hub, rollout='s8', target=newer)
    took = [e.get('text') for e in ev if 'killed agent was creating' in (e.get('text') or '')]
    check(r.returncode == 0 and ok(res) and res['data']['already'] is False and took and
          dist_version(e0 + '.hf-next', 'jupyterhub') == newer,
          '14: the half-created %s.hf-next is taken as the agent\'s and staged (%.2f s): %s %s' % (e0, dt, took, msg(res)))
    marker2 = os.path.join(cfgd, 'hf-marker2.json')
    if upgrade_steps(host, a, 's8', newer, ['backup', 'stop'], '14'):
        with open(marker2, 'w') as f:
            f.write('{}\n')
        os.chown(marker2, hub_uid, hub_gid)
        res, ev, dt = req(a, 'install', hub=host.hub, rollout='s8', target=newer)
        said = [e.get('text') for e in ev if 'not switched to its staged copy' in (e.get('text') or '')]
        check(ok(res) and res['data'].get('switched') is False and said and e0 in said[0] and 'changed' in said[0],
              '14: install: %s not switched (%s) (%.2f s) %s' % (e0, said, dt, msg(res)))
        check(all(dist_version(e, 'jupyterhub') == newer for e in envs) and os.path.exists(marker2) and
              os.path.exists(marker) and dist_version(envs[-1] + '.hf-prev', 'jupyterhub') == base,
              '14: every env at %s, the files written after staging in %s, the other env switched' % (newer, e0))
        if upgrade_steps(host, a, 's8', newer, ['migrate', 'start', 'health'], '14'):
            res, _, dt = req(a, 'rollback', hub=host.hub, rollout='s8', timeout_ms=300000)
            st = facts(host, a)
            check(ok(res) and st['api'] == base and all(v == base for v in st['envs'].values()),
                  '14: rollback: %s (%.2f s) %s' % (st, dt, msg(res)))
    a.close()

    log('figures: stage already %.3f s, install by switch %.3f s, migrate %.2f s, migrate skipped %.3f s, '
        'rollback by switch %.2f s' % (fig_already, fig_install, fig_migrate, fig_skip, fig_rollback))


def on_signal(signum, frame):
    raise SystemExit('killed by signal %d' % signum)


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        main()
    except (Exception, SystemExit) as e:  # report, then tear down
        import traceback
        traceback.print_exc()
        ig.failures.append('exception: %r' % e)
    finally:
        if os.environ.get('HF_KEEP_FLEET') != '1':
            fleet('down', capture=False, check_rc=False)
    log('%d checks, %d failed' % (ig.checks, len(ig.failures)))
    for f in ig.failures:
        log('  failed:', f)
    sys.exit(1 if ig.failures else 0)
