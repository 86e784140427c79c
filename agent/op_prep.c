/* op_prep.c: the operations before any downtime: facts (what a hub is), preflight (its checks) and
 * the migration rehearsed on a copy of the database. They change nothing on the hub. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "ops.h"
#include "probe.h"
#include "pg.h"
#include "prep.h"

/* ---- facts ------------------------------------------------------------------------------ */

static json_t *envs_json(struct hf_req *r, struct envset *es, bool with_report) {
  struct pkglist pl;
  json_t *arr = json_array();
  int i;
  hf__pkgs_load(r, &pl, with_report);
  for (i = 0; i < es->n; i++) {
    const struct hf_env *e = &es->env[i];
    json_t *o = json_object(), *pk = hf__env_pkg_obj(e, &pl, pl.n);
    json_object_set_new(o, "prefix", json_string(e->prefix));
    json_object_set_new(o, "role", json_string(es->role[i]));
    json_object_set_new(o, "exists", json_boolean(e->exists));
    json_object_set_new(o, "installer", json_string(e->installer));
    json_object_set(o, "jupyterhub", json_object_get(pk, "jupyterhub"));
    json_object_set_new(o, "python", e->python[0] ? json_string(e->python) : json_null());
    json_object_set_new(o, "packages", pk);
    json_array_append_new(arr, o);
  }
  return arr;
}

static int64_t cpu_us(void) {
  return hf__cpu_us();
}


/* Without become, as a login other than root, when the hub's files or its
 * service are root's: what the operator has to set. "" otherwise. */
static const char *become_hint(const struct hf_req *r, bool denied) {
  if (!denied || r->hub.become || geteuid() == 0) return "";
  return " (needs root: hubfleet_become=true)";
}

/* Could the login not read path (its file or a directory on the way)? */
static bool read_denied(const char *path) {
  return path != NULL && access(path, R_OK) != 0 && (errno == EACCES || errno == EPERM);
}

/* How this hub is driven, for the dry run and `inventory check`'s reader. */
static void driven_check(struct hf_req *r, json_t *checks);

int hf__op_facts(struct hf_req *r, json_t *data) {
  int64_t c0 = cpu_us();
  struct envset *es = malloc(sizeof *es);
  json_t *db = json_object(), *svc = json_object(), *ver;
  char tool[PATH_MAX];
  int st;

  if (es == NULL) return HF_ENOMEM;
  hf__envs_load(r, es);
  json_object_set_new(data, "envs", envs_json(r, es, true));
  free(es);
  ver = hf__api_version(r->hub.health_url, r->timeout_ms > 0 && r->timeout_ms < 2000 ? r->timeout_ms : 1000, &st);
  json_object_set_new(data, "hub_running", json_boolean(st > 0));
  json_object_set_new(data, "api_version", ver ? ver : json_null());
  if (r->hub.sqlite) {
    char alembic[128], err[512];
    int64_t users;
    json_object_set_new(db, "kind", json_string("sqlite"));
    json_object_set_new(db, "path", json_string(r->hub.db_path));
    if (hf_db_info(r->hub.db_path, alembic, sizeof alembic, &users, err, sizeof err) == 0) {
      json_object_set_new(db, "alembic_revision", alembic[0] ? json_string(alembic) : json_null());
      json_object_set_new(db, "users", users >= 0 ? json_integer(users) : json_null());
      hf__db_servers_facts(r, db);
    } else {
      json_object_set_new(db, "alembic_revision", json_null());
      json_object_set_new(db, "users", json_null());
      {
        char e2[1024];
        snprintf(e2, sizeof e2, "%s%s", err, become_hint(r, read_denied(r->hub.db_path)));
        json_object_set_new(db, "error", json_string(e2));
      }
    }
    json_object_set_new(db, "bytes", json_integer(hf__file_size(r->hub.db_path)));
  } else {
    json_object_set_new(db, "kind", json_string(strncmp(r->hub.db_url, "mysql", 5) == 0 ? "mysql" : "postgresql"));
    json_object_set_new(db, "path", json_null());
    json_object_set_new(db, "alembic_revision", json_null());
    json_object_set_new(db, "users", json_null());
  }
  json_object_set_new(data, "db", db);
  json_object_set_new(data, "backup_free_bytes", json_integer(hf__free_bytes(r->hub.backup_dir)));
  json_object_set_new(svc, "kind", json_string(hf__svc_kind_name(r->hub.svc)));
  json_object_set_new(svc, "name", json_string(r->hub.svc_name));
  {
    const char *t = r->hub.svc == HF_SVC_SUPERVISORD ? "supervisorctl" : r->hub.svc == HF_SVC_SYSTEMD ? "systemctl"
                  : r->hub.svc == HF_SVC_DOCKER ? "docker" : NULL;
    json_object_set_new(svc, "tool", t && hf__which(t, tool, sizeof tool) ? json_string(tool) : json_null());
  }
  json_object_set_new(data, "service_manager", svc);
  json_object_set_new(data, "agent_cpu_us", json_integer(cpu_us() - c0));
  json_object_set_new(data, "process_cpu_us", json_integer(cpu_us() - hf__cpu_at_start));
  return 0;
}

/* ---- preflight ----------------------------------------------------------------------------- */

static void check(struct hf_req *r, json_t *checks, const char *name, const char *outcome, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void check(struct hf_req *r, json_t *checks, const char *name, const char *outcome, const char *fmt, ...) {
  char detail[1024];
  va_list ap;
  json_t *c = json_object();
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  json_object_set_new(c, "name", json_string(name));
  json_object_set_new(c, "outcome", json_string(outcome));
  if (json_object_set_new(c, "detail", json_string(detail)) != 0) {   /* not UTF-8: a host's file name */
    hf__printable(detail);
    json_object_set_new(c, "detail", json_string(detail));
  }
  json_array_append_new(checks, c);
  hf__event(r, strcmp(outcome, "pass") == 0 ? "info" : "warn", "preflight %s: %s: %s", name, outcome, detail);
}

/* The last line of a Python program's output that names an exception
 * ("...Error: ...", "...Exception: ..."), cut at 300 bytes; NULL when none.
 * Points into a static buffer. */
static const char *last_error_line(const char *out) {
  static char line[320];
  const char *p = out, *best = NULL;
  size_t bestlen = 0;
  while (p != NULL && *p) {
    const char *eol = strchr(p, '\n');
    size_t len = eol ? (size_t)(eol - p) : strlen(p);
    const char *colon = memchr(p, ':', len);
    /* The wrapper of a failed child (alembic) says only that it failed. */
    bool wrapper = strncmp(p + strspn(p, " \t"), "subprocess.CalledProcessError", 29) == 0;
    if (!wrapper && colon != NULL && colon - p >= 5 && (memcmp(colon - 5, "Error", 5) == 0 ||
        (colon - p >= 9 && memcmp(colon - 9, "Exception", 9) == 0))) {
      best = p;
      bestlen = len;
    }
    p = eol ? eol + 1 : NULL;
  }
  if (best == NULL) return NULL;
  while (bestlen > 0 && (*best == ' ' || *best == '\t')) { best++; bestlen--; }
  if (bestlen >= sizeof line - 1) bestlen = 300;
  memcpy(line, best, bestlen);
  line[bestlen] = '\0';
  return line;
}

/* The PostgreSQL side of a rehearsal: a scratch database on the hub's own
 * server (CREATE DATABASE as the hub's role), the live database's pg_dump
 * loaded into it; never the live one. Its name: the hub database's (cut,
 * [a-z0-9_] only) + _hfrehearse_PID. */
struct scratch {
  struct hf_pg pg;
  char name[64], url[1100], jurl[1100];
  bool created;
};

static int scratch_make(struct hf_req *r, struct scratch *sc, const char *tmp, char *before, size_t blen,
                        char *err, size_t errlen) {
  char dumpf[PATH_MAX], sha[HF_SHA256_HEX], content[HF_SHA256_HEX], base[32];
  size_t n = 0;
  int rc;
  if ((rc = hf_pg_open(r, &sc->pg)) != 0) { snprintf(err, errlen, "%s", r->msg); return rc; }
  for (const char *p = sc->pg.dbname; *p && n < 28; p++)
    base[n++] = (*p >= 'A' && *p <= 'Z') ? (char)(*p - 'A' + 'a') :
                ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')) ? *p : '_';
  base[n] = '\0';
  snprintf(sc->name, sizeof sc->name, "%s_hfrehearse_%d", base, (int)getpid());
  if (hf_pg_url_for(r, &sc->pg, sc->name, false, sc->url, sizeof sc->url) != 0 ||
      hf_pg_url_for(r, &sc->pg, sc->name, true, sc->jurl, sizeof sc->jurl) != 0 ||
      hf__pathf(dumpf, sizeof dumpf, "%s/live.pg.sql", tmp) != 0) {
    snprintf(err, errlen, "database URL too long for a rehearsal");
    return HF_EBADARG;
  }
  hf__event(r, "info", "rehearsal: migrating a scratch copy %s of %s with jupyterhub %s", sc->name, sc->pg.shown, r->target);
  hf_pg_createdrop(r, &sc->pg, sc->name, false, "rehearsal"); /* a leftover of a killed agent with this pid */
  if ((rc = hf_pg_createdrop(r, &sc->pg, sc->name, true, "rehearsal")) != 0) {
    snprintf(err, errlen, "cannot create the scratch database (the hub's role needs CREATEDB): %s", r->msg);
    return rc;
  }
  sc->created = true;
  if ((rc = hf_pg_dump(r, &sc->pg, sc->pg.url, dumpf, "rehearsal", sha, content)) != 0 ||
      (rc = hf_pg_load(r, &sc->pg, sc->url, dumpf, "rehearsal")) != 0 ||
      (rc = hf_pg_alembic(r, &sc->pg, sc->url, "rehearsal", before, blen)) != 0) {
    snprintf(err, errlen, "%s", r->msg);
    return rc;
  }
  unlink(dumpf);
  return 0;
}

/* Drops the scratch database; a check when that fails (it holds a copy of the hub's data). */
static void scratch_drop(struct hf_req *r, json_t *checks, struct scratch *sc, json_t *o) {
  if (!sc->created) return;
  if (hf_pg_createdrop(r, &sc->pg, sc->name, false, "rehearsal") != 0)
    check(r, checks, "rehearsal-scratch", "warn", "scratch database %s not dropped: %s", sc->name, r->msg);
  else json_object_set_new(o, "scratch_dropped", json_true());
  json_object_set_new(o, "scratch", json_string(sc->name));
  sc->created = false;
}

/* The migration proven on a copy before any downtime (issue 7): a consistent
 * copy of the live database (SQLite: the backup API; PostgreSQL: a scratch
 * database loaded from pg_dump), the target release made importable beside
 * the hub environment without touching it (the wheel preflight read
 * unpacked, or else pip --no-deps --target, into a private folder first on
 * PYTHONPATH), upgrade-db against the copy, its revision
 * (and SQLite's integrity) checked, and everything removed again.
 * upgrade-db runs without the hub's config file, in an empty directory: a
 * db_url in jupyterhub_config.py would win over the command line and the
 * "rehearsal" would migrate the live database. Adds a check and returns the
 * rehearsal object (new). */
static json_t *rehearse(struct hf_req *r, json_t *checks, const struct hf_env *hub, const char *whl) {
  char tmp[PATH_MAX], copy[PATH_MAX], pkgs[PATH_MAX], cwd[PATH_MAX], sha[HF_SHA256_HEX], err[1024] = "";
  char before[128] = "", after[128] = "", pyp[PATH_MAX + 16], bin[PATH_MAX];
  char *env[8] = { pyp, NULL }, *out = NULL;
  json_t *o = json_object();
  struct hf_argv a;
  struct scratch *sc = NULL;
  bool pgdb = hf_pg_ours(&r->hub);
  int64_t users, t0 = hf__now_ms();
  int rc;

  if ((!r->hub.sqlite && !pgdb) || strcmp(hub->installer, "pip") != 0 || !hub->exists) {
    json_object_set_new(o, "skipped", json_string(hf_pg_is(&r->hub) && !pgdb ? "hubfleet_db_dump is the operator's own "
                                                  "command, not pg_dump (the agent rehearses PostgreSQL with pg_dump)" :
                                                  !r->hub.sqlite && !pgdb ? "neither SQLite nor PostgreSQL" :
                                                  !hub->exists ? "no hub environment" : "conda environments are not rehearsed yet"));
    check(r, checks, "rehearsal", "warn", "migration not rehearsed: %s", json_string_value(json_object_get(o, "skipped")));
    return o;
  }
  if (hf__pathf(tmp, sizeof tmp, "%s/rehearsal-%d", r->hub.state_dir, (int)getpid()) != 0 ||
      hf__pathf(copy, sizeof copy, "%s/jupyterhub.sqlite", tmp) != 0 ||
      hf__pathf(pkgs, sizeof pkgs, "%s/pkgs", tmp) != 0 || hf__pathf(cwd, sizeof cwd, "%s/run", tmp) != 0 ||
      hf__pathf(pyp, sizeof pyp, "PYTHONPATH=%s", pkgs) != 0 || hf__pathf(bin, sizeof bin, "%s/bin", hub->prefix) != 0) {
    check(r, checks, "rehearsal", "refuse", "paths too long for a rehearsal");
    return o;
  }
  hf_rm_tree(tmp);
  if (hf__mkdirs(cwd, 0700) != 0) {
    check(r, checks, "rehearsal", "refuse", "cannot create %s: %s", tmp, strerror(errno));
    return o;
  }
  if (pgdb) {
    if ((sc = calloc(1, sizeof *sc)) == NULL) { snprintf(err, sizeof err, "out of memory"); goto fail; }
    if ((rc = scratch_make(r, sc, tmp, before, sizeof before, err, sizeof err)) != 0) goto fail;
    for (int i = 0; sc->pg.env[i] && i < 6; i++) env[i + 1] = sc->pg.env[i];
  } else {
    hf__event(r, "info", "rehearsal: migrating a copy of %s with jupyterhub %s", r->hub.db_path, r->target);
    if ((rc = hf_db_backup(r->hub.db_path, copy, sha, err, sizeof err)) != 0) goto fail;
    hf_db_info(copy, before, sizeof before, &users, err, sizeof err);
  }
  hf_argv_init(&a);
  if (whl) {
    /* The wheel preflight read (the cache's or the find-links directory's):
     * the rehearsal proves the very file the install will use. A wheel is a
     * zip; what pip --target --no-deps would put in pkgs is its contents,
     * unpacked here by the hub Python's zipfile (which keeps every member
     * inside pkgs) without pip's start-up and byte-compiling. */
    hf_argv_pushf(&a, "%s/python", bin);
    hf_argv_push(&a, "-I");
    hf_argv_push(&a, "-c");
    hf_argv_push(&a, "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])");
    hf_argv_push(&a, whl);
    hf_argv_push(&a, pkgs);
  } else {
    hf__pip_cmd(&a, hub->prefix, "install");
    hf_argv_push(&a, "--no-deps");
    hf_argv_push(&a, "--target");
    hf_argv_push(&a, pkgs);
    hf__pip_source(r, &a);
    hf_argv_pushf(&a, "jupyterhub==%s", r->target);
  }
  rc = hf__cmd(r, &a, cwd, NULL, NULL, hf__left_ms(r), "rehearsal", true, NULL);
  hf_argv_free(&a);
  if (rc != 0) { snprintf(err, sizeof err, "%s", r->msg); goto fail; }
  hf_argv_init(&a);
  hf_argv_pushf(&a, "%s/python", bin);
  hf_argv_push(&a, "-m");
  hf_argv_push(&a, "jupyterhub");
  hf_argv_push(&a, "upgrade-db");
  if (pgdb) hf_argv_pushf(&a, "--JupyterHub.db_url=%s", sc->jurl);
  else hf_argv_pushf(&a, "--JupyterHub.db_url=sqlite:///%s", copy);
  rc = hf__cmd(r, &a, cwd, bin, env, hf__left_ms(r), "rehearsal", true, &out);
  hf_argv_free(&a);
  if (rc != 0) {
    /* The exception line says why ("...IntegrityError: NOT NULL constraint
     * failed: ..."), the lines before it are SQL and stack. */
    const char *why = last_error_line(out);
    snprintf(err, sizeof err, "%s", why ? why : r->msg);
    free(out);
    goto fail;
  }
  free(out);
  if (pgdb) {
    if ((rc = hf_pg_alembic(r, &sc->pg, sc->url, "rehearsal", after, sizeof after)) != 0) {
      snprintf(err, sizeof err, "%s", r->msg);
      goto fail;
    }
    scratch_drop(r, checks, sc, o);
  } else {
    if ((rc = hf_db_info(copy, after, sizeof after, &users, err, sizeof err)) != 0) goto fail;
    if ((rc = hf_db_integrity(copy, err, sizeof err)) != 0) goto fail;
  }
  json_object_set_new(o, "ok", json_true());
  json_object_set_new(o, "db_kind", json_string(pgdb ? "postgresql" : "sqlite"));
  json_object_set_new(o, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(o, "alembic_after", after[0] ? json_string(after) : json_null());
  json_object_set_new(o, "elapsed_ms", json_integer(hf__now_ms() - t0));
  if (pgdb)
    check(r, checks, "rehearsal", "pass", "upgrade-db to %s on a scratch copy of the PostgreSQL database (dropped): "
          "alembic %s -> %s", r->target, before[0] ? before : "(none)", after[0] ? after : "(none)");
  else
    check(r, checks, "rehearsal", "pass", "upgrade-db to %s on a copy: alembic %s -> %s, integrity ok", r->target,
          before[0] ? before : "(none)", after[0] ? after : "(none)");
  hf_rm_tree(tmp);
  free(sc);
  r->msg[0] = '\0';
  return o;
fail:
  if (sc) scratch_drop(r, checks, sc, o);
  free(sc);
  json_object_set_new(o, "ok", json_false());
  json_object_set_new(o, "db_kind", json_string(pgdb ? "postgresql" : "sqlite"));
  json_object_set_new(o, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(o, "alembic_after", json_null());
  json_object_set_new(o, "error", json_string(err));
  json_object_set_new(o, "elapsed_ms", json_integer(hf__now_ms() - t0));
  check(r, checks, "rehearsal", "refuse", "upgrade-db to %s failed on a copy of the database: %s", r->target, err);
  hf_rm_tree(tmp);
  r->msg[0] = '\0';
  return o;
}

/* A check about environment i named for its role, the same on every host so that a dry run
 * folds it across the fleet: "KIND:hub", "KIND:user" (then "KIND:user2"... when a hub has
 * several). Its detail leaves the path out for the same reason (the env:ROLE... checks and the
 * plan's envs name the paths). */
static void env_check_name(const struct envset *es, int i, const char *kind, char *out, size_t outlen) {
  int nth = 0, nuser = 0;
  for (int j = 0; j < es->n; j++)
    if (strcmp(es->role[j], es->role[i]) == 0) { nuser++; if (j <= i) nth++; }
  if (nuser > 1 && nth > 1) snprintf(out, outlen, "%s:%s%d", kind, es->role[i], nth);
  else snprintf(out, outlen, "%s:%s", kind, es->role[i]);
}

/* The target's requirements against an environment, read the way pip reads them: the wheel
 * (argv[1], of jupyterhub==argv[2]) checked as pip checks it before installing (its file name's
 * tags fit this Python, one .dist-info naming jupyterhub at the target, Wheel-Version 1.x), its
 * Requires-Python, and its METADATA Requires-Dist (markers evaluated) checked with the
 * environment's own Python (importlib.metadata for what is installed, packaging for the
 * specifier). Prints one line per unsatisfied requirement, "MISSING<TAB>requirement<TAB>installed
 * version or empty"; "DRY<TAB>why" for anything that leaves the answer to pip's own dry run (the
 * wheel is not one pip would take, Requires-Python, a requirement with extras, an installed
 * requirement whose own requirements are not met, no pip in the environment); then
 * "CHECKED<TAB>n". pip runs with PIP_CONFIG_FILE=/dev/null (run.c), so no pip configuration can
 * make it choose otherwise. Nothing here knows which packages a release needs. */
static const char requires_py[] =
  "import sys, os, zipfile, email.parser, importlib.util\n"
  "try:\n"
  "    from packaging.requirements import Requirement\n"
  "    from packaging.specifiers import SpecifierSet\n"
  "    from packaging.utils import canonicalize_name, parse_wheel_filename\n"
  "    from packaging.tags import sys_tags\n"
  "    from packaging.version import Version\n"
  "except ImportError:\n"
  "    from pip._vendor.packaging.requirements import Requirement\n"
  "    from pip._vendor.packaging.specifiers import SpecifierSet\n"
  "    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename\n"
  "    from pip._vendor.packaging.tags import sys_tags\n"
  "    from pip._vendor.packaging.version import Version\n"
  "from importlib import metadata\n"
  "def dry(why):\n"
  "    print('DRY\\t' + why)\n"
  "def headers(z, name):\n"
  "    return email.parser.Parser().parsestr(z.read(name).decode('utf-8', 'replace'), headersonly=True)\n"
  "def met(req, visit):\n"
  "    try:\n"
  "        have = metadata.version(req.name)\n"
  "    except metadata.PackageNotFoundError:\n"
  "        return None\n"
  "    if req.specifier and not req.specifier.contains(have, prereleases=True):\n"
  "        return have or ''\n"
  "    visit.append(req.name)\n"
  "    return True\n"
  "target = Version(sys.argv[2])\n"
  "name, ver, _, tags = parse_wheel_filename(os.path.basename(sys.argv[1]))\n"
  "if canonicalize_name(name) != 'jupyterhub' or ver != target:\n"
  "    dry('the wheel file is not named for jupyterhub ' + str(target))\n"
  "if not set(tags) & set(sys_tags()):\n"
  "    dry('the wheel fits no tag of this Python')\n"
  "if importlib.util.find_spec('pip') is None:\n"
  "    dry('no pip in this environment')\n"
  "z = zipfile.ZipFile(sys.argv[1])\n"
  "di = sorted({n.split('/')[0] for n in z.namelist() if n.split('/')[0].endswith('.dist-info')})\n"
  "if len(di) != 1:\n"
  "    dry('the wheel holds %d .dist-info directories' % len(di))\n"
  "    sys.exit(0)\n"
  "m = headers(z, di[0] + '/METADATA')\n"
  "if canonicalize_name(m.get('Name', '')) != 'jupyterhub' or Version(m.get('Version', '0')) != target:\n"
  "    dry('the wheel\\'s METADATA names %s %s' % (m.get('Name'), m.get('Version')))\n"
  "if not (headers(z, di[0] + '/WHEEL').get('Wheel-Version') or '').startswith('1.'):\n"
  "    dry('the wheel is not Wheel-Version 1.x')\n"
  "rp = m.get('Requires-Python')\n"
  "pv = '%d.%d.%d' % sys.version_info[:3]\n"
  "if rp and not SpecifierSet(rp).contains(pv, prereleases=True):\n"
  "    dry('Requires-Python %s, this is Python %s' % (rp, pv))\n"
  "n = 0\n"
  "visit = []\n"
  "for line in m.get_all('Requires-Dist') or []:\n"
  "    req = Requirement(line)\n"
  "    if req.marker is not None and not req.marker.evaluate({'extra': ''}):\n"
  "        continue\n"
  "    n += 1\n"
  "    if req.extras:\n"
  "        dry('%s asks for extras' % req)\n"
  "    have = met(req, visit)\n"
  "    if have is not True:\n"
  "        print('MISSING\\t%s%s\\t%s' % (req.name, req.specifier, have or ''))\n"
  "seen = set()\n"
  "while visit and len(seen) < 5000:\n"
  "    d = canonicalize_name(visit.pop())\n"
  "    if d in seen:\n"
  "        continue\n"
  "    seen.add(d)\n"
  "    for line in metadata.requires(d) or []:\n"
  "        req = Requirement(line)\n"
  "        if req.marker is not None and not req.marker.evaluate({'extra': ''}):\n"
  "            continue\n"
  "        if req.extras:\n"
  "            dry('installed %s asks for %s (extras)' % (d, req))\n"
  "        elif met(req, visit) is not True:\n"
  "            dry('installed %s requires %s, not met here' % (d, req))\n"
  "print('CHECKED\\t%d' % n)\n";

/* The wheel of jupyterhub==r->target in dir (the preflight's package cache) into out; false when none. */
static bool target_wheel(struct hf_req *r, const char *dir, char *out, size_t outlen) {
  char want[HF_VER_LEN + 16];
  struct dirent *de;
  DIR *d = opendir(dir);
  bool found = false;
  if (d == NULL) return false;
  snprintf(want, sizeof want, "jupyterhub-%s-", r->target);
  while (!found && (de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    found = strncasecmp(de->d_name, want, strlen(want)) == 0 && l > 4 && strcasecmp(de->d_name + l - 4, ".whl") == 0 &&
            hf__pathf(out, outlen, "%s/%s", dir, de->d_name) == 0;
  }
  closedir(d);
  return found;
}

/* What requires_py said about one environment. */
struct reqs {
  bool ran;              /* the script ran and answered */
  int  checked, nmiss;
  char dry[300];         /* the first reason to ask pip's dry run, "" when none */
  char miss[1500];
  char why[600];         /* why it did not run */
};

static void requires_eval(struct hf_req *r, const struct hf_env *e, const char *whl, struct reqs *q) {
  char *so = NULL, *line, *save = NULL;
  struct hf_argv a;
  int rc;
  memset(q, 0, sizeof *q);
  q->checked = -1;
  hf__argv_start(r, &a);
  hf_argv_pushf(&a, "%s/bin/python", e->prefix);
  hf_argv_push(&a, "-I");
  hf_argv_push(&a, "-c");
  hf_argv_push(&a, requires_py);
  hf_argv_push(&a, whl);
  hf_argv_push(&a, r->target);
  rc = hf__cmd_stdout(r, &a, hf__left_ms(r), "preflight", &so);
  hf_argv_free(&a);
  if (rc != 0) {
    hf__why_line(r->msg, q->why, sizeof q->why);
    free(so);
    r->msg[0] = '\0';
    return;
  }
  for (line = so ? strtok_r(so, "\n", &save) : NULL; line; line = strtok_r(NULL, "\n", &save)) {
    char *t1 = strchr(line, '\t'), *t2 = t1 ? strchr(t1 + 1, '\t') : NULL;
    size_t l = strlen(q->miss);
    if (strncmp(line, "CHECKED\t", 8) == 0) { q->checked = atoi(line + 8); continue; }
    if (strncmp(line, "DRY\t", 4) == 0) {
      if (q->dry[0] == '\0') snprintf(q->dry, sizeof q->dry, "%s", line + 4);
      continue;
    }
    if (strncmp(line, "MISSING\t", 8) != 0 || t2 == NULL) continue;
    *t2 = '\0';
    if (l < sizeof q->miss - 200)
      snprintf(q->miss + l, sizeof q->miss - l, "%s%s (%s%s)", q->nmiss ? ", " : "", t1 + 1,
               t2[1] ? t2 + 1 : "not installed", t2[1] ? " installed" : "");
    q->nmiss++;
  }
  free(so);
  q->ran = q->checked >= 0;
  if (!q->ran) snprintf(q->why, sizeof q->why, "%s", q->dry[0] ? q->dry : "the check printed no result");
}

static void requires_check(struct hf_req *r, json_t *checks, const struct envset *es, int i, const struct reqs *q,
                           bool installable) {
  char name[PATH_MAX + 16];
  env_check_name(es, i, "requires", name, sizeof name);
  if (!q->ran)
    check(r, checks, name, "warn", "requirements of jupyterhub %s not checked in %s: %s", r->target, es->env[i].prefix,
          q->why);
  else if (q->nmiss == 0)
    check(r, checks, name, "pass", "the %d requirements of jupyterhub %s are satisfied", q->checked, r->target);
  else if (!installable)
    check(r, checks, name, "refuse", "jupyterhub %s requires %s; pip cannot bring %s from the package source",
          r->target, q->miss, q->nmiss == 1 ? "it" : "them all");
  else
    check(r, checks, name, "warn", "jupyterhub %s requires %s: pip will install %s into %s with the upgrade",
          r->target, q->miss, q->nmiss == 1 ? "it" : "them", es->env[i].prefix);
}

/* pip's own answer for environment i: `install --dry-run` of the pins, nothing changed. Notes
 * for the install whether pip would bring anything but the pins. true = installable. */
static bool dry_run(struct hf_req *r, json_t *checks, const struct envset *es, int i) {
  const struct hf_env *e = &es->env[i];
  char name[PATH_MAX + 16], *dry = NULL;
  struct hf_argv a;
  size_t k;
  int rc;
  env_check_name(es, i, "installable", name, sizeof name);
  hf__argv_start(r, &a);
  hf__pip_cmd(&a, e->prefix, "install");
  hf_argv_push(&a, "--dry-run");
  hf_argv_push(&a, "--upgrade");
  hf__pip_source_configured(r, &a);
  hf_argv_pushf(&a, "jupyterhub==%s", r->target);
  for (k = 0; k < json_array_size(r->hub.extra_packages); k++)
    hf_argv_push(&a, json_string_value(json_array_get(r->hub.extra_packages, k)));
  rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "preflight", true, &dry);
  /* Nothing but the pins to install: the install may skip resolving. */
  hf__deps_note(r, e->prefix, rc == 0 ? dry : NULL);
  free(dry);
  hf_argv_free(&a);
  if (rc != 0) {
    /* pip's own words ("No matching distribution found for jupyter-events"), not its whole log. */
    char why[600];
    hf__why_line(r->msg, why, sizeof why);
    check(r, checks, name, "refuse", "jupyterhub==%s is not installable from %s: %s", r->target,
          r->hub.find_links ? r->hub.find_links : r->hub.index_url ? r->hub.index_url : "pip's configured index",
          why[0] ? why : r->msg);
  } else check(r, checks, name, "pass", "pip can install jupyterhub==%s", r->target);
  r->msg[0] = '\0';
  return rc == 0;
}

/* Whether the target can go into every environment, and what it needs there. The target's wheel
 * (the package cache, or the find-links directory) is read first: its Requires-Dist and
 * Requires-Python checked with each environment's own Python. When everything it names is met
 * there and there are no extra pins, pip's dry run could only agree (pip found the wheel; the
 * install brings the pin alone): it is not run, saving a pip start-up per environment. Otherwise
 * pip's dry run decides, as before: whether pip can bring what is missing from the source. */
static void installable_checks(struct hf_req *r, json_t *checks, const struct envset *es, const char *whl) {
  for (int i = 0; i < es->n; i++) {
    const struct hf_env *e = &es->env[i];
    struct reqs q;
    bool ok;
    if (!e->exists || strcmp(e->installer, "pip") != 0) continue;
    if (whl == NULL) { (void)dry_run(r, checks, es, i); continue; }
    requires_eval(r, e, whl, &q);
    if (q.ran && q.nmiss == 0 && q.dry[0] == '\0' && json_array_size(r->hub.extra_packages) == 0) {
      char name[PATH_MAX + 16];
      env_check_name(es, i, "installable", name, sizeof name);
      hf__deps_mark(r, e->prefix, true);
      check(r, checks, name, "pass", "jupyterhub==%s is in the package source (%s), its Requires-Python admits this "
            "Python and it needs nothing not installed here: no pip dry run needed", r->target, whl);
      ok = true;
    } else {
      if (q.dry[0]) hf__event(r, "info", "preflight: pip decides for %s: %s", e->prefix, q.dry);
      ok = dry_run(r, checks, es, i);
    }
    requires_check(r, checks, es, i, &q, ok);
  }
}

/* jupyterhub upgrade-db runs the program `alembic` (alembic's console script) from PATH; the
 * migrate step puts the hub environment's bin/ first. Without it upgrade-db fails inside the
 * downtime: say so now. */
static void upgrade_db_check(struct hf_req *r, json_t *checks, const struct hf_env *hub) {
  char script[PATH_MAX], sys[PATH_MAX], interp[PATH_MAX] = "";
  const char *found = NULL;
  if (!hub->exists) return;
  if (hf__pathf(script, sizeof script, "%s/bin/alembic", hub->prefix) == 0 && access(script, X_OK) == 0) found = script;
  else if (hf__which("alembic", sys, sizeof sys)) found = sys;
  if (found == NULL) {
    check(r, checks, "upgrade-db", "refuse", "jupyterhub upgrade-db runs the alembic console script, and there is none: "
          "no %s/bin/alembic and no alembic in the system directories (install alembic into %s with its pip)",
          hub->prefix, hub->prefix);
    return;
  }
  /* A script whose #! interpreter is gone (an environment copied from elsewhere) fails the same way. */
  {
    /* The hub env's script is the hub user's: the safe open (a FIFO there
     * must not block preflight, a symlink is not followed); the system one is
     * root's and may be a link. Unreadable: no interpreter check. */
    char err[256];
    int fd = found == script ? hf_sf_open_read(found, err, sizeof err) : hf_sf_open_read_sys(found, err, sizeof err);
    if (fd >= 0) {
      ssize_t n = read(fd, interp, sizeof interp - 1);
      interp[n > 0 ? n : 0] = '\0';
      close(fd);
    }
    interp[strcspn(interp, "\n")] = '\0';
    if (strncmp(interp, "#!/", 3) == 0) {
      char *sp = strpbrk(interp + 2, " \t");
      if (sp) *sp = '\0';
      if (access(interp + 2, X_OK) != 0) {
        check(r, checks, "upgrade-db", "refuse", "%s starts %s, which cannot be run (%s): upgrade-db would fail",
              found, interp + 2, strerror(errno));
        return;
      }
    }
  }
  check(r, checks, "upgrade-db", "pass", "upgrade-db will run %s", found);
}

/* A PostgreSQL hub database, as the backup and the rehearsal will reach it: the credentials
 * work (psql -w), its alembic revision and users, its size (the backup's disk need), and a
 * pg_dump able to dump that server (its major version not older than the server's). */
static void pg_database_check(struct hf_req *r, json_t *checks, int64_t *need) {
  struct hf_pg pg;
  char alembic[128] = "", users[32] = "", size[32] = "", server[32] = "", *ver = NULL;
  struct hf_argv a;
  long client_major = 0, server_major;
  if (hf_pg_open(r, &pg) != 0 || hf_pg_alembic(r, &pg, pg.url, "preflight", alembic, sizeof alembic) != 0 ||
      hf_pg_query(r, &pg, pg.url, "select count(*) from users", "preflight", users, sizeof users) != 0 ||
      hf_pg_query(r, &pg, pg.url, "select pg_database_size(current_database())", "preflight", size, sizeof size) != 0 ||
      hf_pg_query(r, &pg, pg.url, "show server_version_num", "preflight", server, sizeof server) != 0) {
    check(r, checks, "database", "refuse", "PostgreSQL database %s: %s (credentials: a password in hubfleet_db, "
          "the config's db_url, or the login's ~/.pgpass)", pg.shown[0] ? pg.shown : "(hubfleet_db)", r->msg);
    r->msg[0] = '\0';
    return;
  }
  hf__argv_start(r, &a);
  hf_argv_push(&a, pg.dump);
  hf_argv_push(&a, "--version");
  if (hf__cmd_stdout(r, &a, hf__left_ms(r), "preflight", &ver) == 0 && ver) {
    const char *d = strpbrk(ver, "0123456789");
    client_major = d ? strtol(d, NULL, 10) : 0;
  }
  hf_argv_free(&a);
  free(ver);
  r->msg[0] = '\0';
  server_major = strtol(server, NULL, 10) / 10000;
  if (client_major > 0 && client_major < server_major) {
    check(r, checks, "database", "refuse", "%s is PostgreSQL %ld but %s is version %ld: it cannot dump a newer server "
          "(install that server's client, e.g. Debian's postgresql-client-%ld)", pg.shown, server_major, pg.dump,
          client_major, server_major);
    return;
  }
  check(r, checks, "database", "pass", "postgresql %s (server %ld), alembic revision %s, %s users, %s bytes; "
        "backed up with %s", pg.shown, server_major, alembic[0] ? alembic : "(none)", users, size, pg.dump);
  *need += strtoll(size, NULL, 10);
}

static void driven_check(struct hf_req *r, json_t *checks) {
  static const char *const how[] = { "systemctl", "supervisorctl", "docker", "the inventory's start/stop commands" };
  char who[160];
  const char *login = getenv("SUDO_USER");
  if (hf__outer_pid > 0)
    snprintf(who, sizeof who, "as root through sudo -n (become, login %s)", login && hf_valid_service_name(login) ? login : "?");
  else if (geteuid() == 0)
    snprintf(who, sizeof who, "as root (the SSH login)");
  else
    snprintf(who, sizeof who, "as the SSH login %s, no sudo (become off)",
             getenv("USER") && hf_valid_service_name(getenv("USER")) ? getenv("USER") : "?");
  check(r, checks, "driven", "pass", "%s:%s through %s, %s; state %s", hf__svc_kind_name(r->hub.svc),
        r->hub.svc_name, how[r->hub.svc], who, r->hub.state_dir);
}

int hf__op_preflight(struct hf_req *r, json_t *data) {
  struct envset *es = malloc(sizeof *es);
  json_t *checks = json_array();
  char refused[2048] = "", name[PATH_MAX + 16];
  char whl[PATH_MAX];
  const char *wheel = NULL;   /* whl: the target's wheel, when preflight read one */
  int64_t need = 1 << 20, fb;
  int i, nref = 0;
  size_t k;

  if (es == NULL) { json_decref(checks); return HF_ENOMEM; }
  hf__envs_load(r, es);
  if (!r->hub.become && geteuid() != 0) {
    /* A hub whose files or service are root's (TLJH), driven without
     * become: one refusal that says what to set, before the details. */
    char what[512] = "";
    size_t l;
    for (i = 0; i < es->n; i++)
      if (es->env[i].exists && strcmp(es->env[i].installer, "pip") == 0 &&
          (es->env[i].site[0] == '\0' || access(es->env[i].site, W_OK) != 0) && strlen(what) < 300) {
        l = strlen(what);
        snprintf(what + l, sizeof what - l, "%s%s is not writable", l ? ", " : "", es->env[i].prefix);
      }
    l = strlen(what);
    if (read_denied(r->hub.config)) snprintf(what + l, sizeof what - l, "%s%s is not readable", l ? ", " : "", r->hub.config);
    l = strlen(what);
    if (r->hub.sqlite && read_denied(r->hub.db_path))
      snprintf(what + l, sizeof what - l, "%s%s is not readable", l ? ", " : "", r->hub.db_path);
    l = strlen(what);
    if (r->hub.svc == HF_SVC_SYSTEMD)
      snprintf(what + l, sizeof what - l, "%ssystemd:%s is a system unit", l ? ", " : "", r->hub.svc_name);
    if (what[0])
      check(r, checks, "become", "refuse", "set hubfleet_become=true: this hub needs root and the SSH login %s "
            "drives it without sudo (%s)", getenv("USER") && hf_valid_service_name(getenv("USER")) ? getenv("USER") : "",
            what);
  }
  for (i = 0; i < es->n; i++) {
    const struct hf_env *e = &es->env[i];
    char py[PATH_MAX + 16];
    snprintf(name, sizeof name, "env:%s", e->prefix);
    if (!e->exists) { check(r, checks, name, "refuse", "%s environment %s does not exist", es->role[i], e->prefix); continue; }
    snprintf(py, sizeof py, "%s/bin/python", e->prefix);
    if (strcmp(e->installer, "pip") == 0 && access(py, X_OK) != 0) {
      check(r, checks, name, "refuse", "%s has no bin/python", e->prefix);
      continue;
    }
    if (strcmp(e->installer, "pip") == 0 && (e->site[0] == '\0' || access(e->site, W_OK) != 0) && !r->hub.become) {
      check(r, checks, name, "refuse", "%s is not writable by this user%s", e->site[0] ? e->site : e->prefix,
            become_hint(r, true));
      continue;
    }
    {
      const char *nm = "jupyterhub";
      char ver[1][HF_VER_LEN];
      hf_env_versions(e, &nm, 1, ver);
      if (ver[0][0] == '\0') check(r, checks, name, "warn", "no jupyterhub installed in %s (python %s)", e->prefix, e->python);
      else if (hf_version_cmp(ver[0], r->target) > 0)
        check(r, checks, name, "warn", "jupyterhub %s in %s is newer than the target %s (a downgrade)", ver[0], e->prefix, r->target);
      else check(r, checks, name, "pass", "jupyterhub %s, python %s, installer %s", ver[0], e->python, e->installer);
    }
  }
  if (access(r->hub.config, R_OK) != 0) {
    int e = errno;
    check(r, checks, "config", "refuse", "%s: %s%s", r->hub.config, strerror(e), become_hint(r, e == EACCES || e == EPERM));
  }
  else { check(r, checks, "config", "pass", "%s readable", r->hub.config); need += hf__file_size(r->hub.config); }
  if (r->hub.sqlite) {
    char alembic[128], err[512];
    int64_t users;
    if (hf_db_info(r->hub.db_path, alembic, sizeof alembic, &users, err, sizeof err) != 0)
      check(r, checks, "database", "refuse", "%s%s", err, become_hint(r, read_denied(r->hub.db_path)));
    else {
      check(r, checks, "database", "pass", "sqlite %s, alembic revision %s, %lld users", r->hub.db_path,
            alembic[0] ? alembic : "(none)", (long long)users);
      need += hf__file_size(r->hub.db_path);
    }
  } else if (hf_pg_ours(&r->hub)) {
    pg_database_check(r, checks, &need);
  } else if (json_array_size(r->hub.db_dump) > 0) {
    check(r, checks, "database", "pass", "non-SQLite database: backed up with the configured db_dump command");
  } else {
    check(r, checks, "database", "refuse", "non-SQLite database and no db_dump command: it cannot be backed up");
  }
  fb = hf__free_bytes(r->hub.backup_dir);
  if (fb < 2 * need) check(r, checks, "disk", "refuse", "%lld bytes free at %s, need %lld", (long long)fb, r->hub.backup_dir, (long long)(2 * need));
  else check(r, checks, "disk", "pass", "%lld bytes free at %s", (long long)fb, r->hub.backup_dir);
  {
    bool running;
    char state[64];
    int rc = hf__svc_status(r, &running, state, sizeof state);
    if (rc != 0) check(r, checks, "service", "refuse", "%s", r->msg);
    else if (r->hub.svc == HF_SVC_SYSTEMD && !r->hub.become && geteuid() != 0)
      /* systemctl would ask polkit for a password halfway through the
       * downtime: refuse now, with nothing stopped. */
      check(r, checks, "service", "refuse", "systemd:%s is %s, but stopping and starting a system unit needs root%s",
            r->hub.svc_name, state, become_hint(r, true));
    else check(r, checks, "service", "pass", "%s:%s is %s", hf__svc_kind_name(r->hub.svc), r->hub.svc_name, state);
    r->msg[0] = '\0';
  }
  driven_check(r, checks);
  /* The target's packages into a host-local cache now, while the hub still
   * serves: the install inside the downtime then reads local files only
   * (issue 7). A failed fetch costs nothing but that: the install fetches.
   * Then whether the target is installable, with this Python, everywhere. */
  {
    const char *dir = NULL;
    if (es->env[0].exists && strcmp(es->env[0].installer, "pip") == 0) {
      json_t *co = json_object();
      if (hf__cache_fetch(r, &es->env[0], co) != 0)
        check(r, checks, "cache", "warn", "jupyterhub==%s not cached before the stop (install will fetch it): %s", r->target, r->msg);
      else {
        dir = json_string_value(json_object_get(co, "dir"));
        check(r, checks, "cache", "pass", json_is_true(json_object_get(co, "local"))
              ? "jupyterhub==%s in %s, a directory on this host: nothing to fetch%s"
              : "jupyterhub==%s cached in %s%s", r->target, dir,
              json_is_true(json_object_get(co, "already")) && !json_is_true(json_object_get(co, "local")) ? " (already there)" : "");
      }
      json_object_set_new(data, "cache", co);
      r->msg[0] = '\0';
    }
    if (dir && !target_wheel(r, dir, whl, sizeof whl)) {
      check(r, checks, "requires", "warn", "requirements of jupyterhub %s not read: no wheel of it in %s", r->target, dir);
      dir = NULL;
    }
    wheel = dir ? whl : NULL;
    installable_checks(r, checks, es, wheel);
  }
  upgrade_db_check(r, checks, &es->env[0]);
  /* What the version-aware rules read besides the environments. */
  {
    json_t *db = json_object();
    json_object_set_new(db, "kind", json_string(r->hub.sqlite ? "sqlite" : strncmp(r->hub.db_url, "mysql", 5) == 0 ? "mysql" : "postgresql"));
    hf__db_servers_facts(r, db);   /* SQLite and PostgreSQL: count and user names */
    json_object_set_new(data, "db", db);
  }
  /* The rehearsal only when everything it needs passed: it costs seconds. */
  if (!json_is_false(json_object_get(r->args, "rehearse"))) {
    bool any_refused = false;
    for (k = 0; k < json_array_size(checks); k++)
      if (strcmp(json_string_value(json_object_get(json_array_get(checks, k), "outcome")), "refuse") == 0) any_refused = true;
    if (!any_refused) json_object_set_new(data, "rehearsal", rehearse(r, checks, &es->env[0], wheel));
    else json_object_set_new(data, "rehearsal", json_pack("{s:s}", "skipped", "another check refused the host"));
  }
  for (k = 0; k < json_array_size(checks); k++) {
    json_t *c = json_array_get(checks, k);
    if (strcmp(json_string_value(json_object_get(c, "outcome")), "refuse") == 0) {
      size_t l = strlen(refused);
      snprintf(refused + l, sizeof refused - l, "%s%s: %s", nref++ ? "; " : "",
               json_string_value(json_object_get(c, "name")), json_string_value(json_object_get(c, "detail")));
    }
  }
  json_object_set_new(data, "checks", checks);
  json_object_set_new(data, "envs", envs_json(r, es, true));
  free(es);
  /* A refusal is an answer, not a failure of the op: the controller shows
   * every check (a --dry-run folds them across the fleet) and adds its own. */
  json_object_set_new(data, "refused", json_boolean(nref > 0));
  json_object_set_new(data, "reason", nref > 0 ? json_string(refused) : json_null());
  if (nref > 0) hf__event(r, "warn", "preflight refused the host: %s", refused);
  return 0;
}
