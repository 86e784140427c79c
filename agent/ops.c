/* ops.c: the agent's operations (facts, preflight, backup, stop, install, migrate, start, health,
 * rollback, journal): each idempotent, each state-changing one journaled before and after. */
#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "prep.h"

/* ---- small helpers ------------------------------------------------------------------- */

int64_t hf__left_ms(const struct hf_req *r) {
  int64_t left = r->deadline_ms - hf__now_ms();
  return left > 1000 ? left : 1000;
}

static int64_t cpu_us(void) {
  return hf__cpu_us();
}

static int64_t file_size(const char *p) {
  struct stat st;
  return (p != NULL && stat(p, &st) == 0) ? (int64_t)st.st_size : -1;
}

/* Free bytes for an unprivileged writer at path or its nearest existing ancestor. */
static int64_t free_bytes(const char *path) {
  char p[PATH_MAX];
  struct statvfs vs;
  snprintf(p, sizeof p, "%s", path);
  for (;;) {
    char *slash;
    if (statvfs(p, &vs) == 0) return (int64_t)vs.f_bavail * (int64_t)vs.f_frsize;
    slash = strrchr(p, '/');
    if (slash == NULL) return -1;
    if (slash == p) { if (p[1] == '\0') return -1; p[1] = '\0'; }
    else *slash = '\0';
  }
}

/* Every environment: the hub's first, then each distinct user environment. */
struct envset {
  struct hf_env env[HF_MAX_ENVS + 1];
  const char *role[HF_MAX_ENVS + 1];
  int n;
};

static void envs_load(struct hf_req *r, struct envset *es) {
  int i, j;
  es->n = 0;
  hf_env_inspect(r->hub.hub_env, r->hub.installer, &es->env[0]);
  es->role[es->n++] = "hub";
  for (i = 0; i < r->hub.n_user_envs; i++) {
    bool dup = false;
    for (j = 0; j < es->n; j++)
      if (strcmp(es->env[j].prefix, r->hub.user_envs[i]) == 0) dup = true;
    if (dup) continue;
    hf_env_inspect(r->hub.user_envs[i], r->hub.installer, &es->env[es->n]);
    es->role[es->n++] = "user";
  }
}

/* The packages whose versions matter: jupyterhub, then the names of the
 * extra pins, then report_packages. names[] borrowed/owned by buf. */
struct pkglist {
  const char *names[128];
  char        buf[64][130];
  int         n, n_change;  /* names[0..n_change) are the ones an upgrade changes */
};

static void pkgs_load(struct hf_req *r, struct pkglist *pl, bool with_report) {
  size_t i;
  int k;
  pl->n = 0;
  pl->names[pl->n++] = "jupyterhub";
  for (i = 0; i < json_array_size(r->hub.extra_packages) && pl->n < 64; i++) {
    const char *pin = json_string_value(json_array_get(r->hub.extra_packages, i));
    const char *eq = pin ? strstr(pin, "==") : NULL;
    if (eq == NULL || (size_t)(eq - pin) >= sizeof pl->buf[0]) continue;
    memcpy(pl->buf[pl->n], pin, (size_t)(eq - pin));
    pl->buf[pl->n][eq - pin] = '\0';
    pl->names[pl->n] = pl->buf[pl->n];
    pl->n++;
  }
  pl->n_change = pl->n;
  for (i = 0; with_report && i < json_array_size(r->hub.report_packages) && pl->n < 128; i++) {
    const char *nm = json_string_value(json_array_get(r->hub.report_packages, i));
    bool dup = false;
    for (k = 0; k < pl->n; k++) if (nm && strcmp(pl->names[k], nm) == 0) dup = true;
    if (nm && !dup) pl->names[pl->n++] = nm;
  }
}

/* {name: version-or-null} for one environment (new). */
static json_t *env_pkg_obj(const struct hf_env *e, const struct pkglist *pl, int n) {
  char vers[128][HF_VER_LEN];
  json_t *o = json_object();
  int i;
  hf_env_versions(e, pl->names, n, vers);
  for (i = 0; i < n; i++) json_object_set_new(o, pl->names[i], vers[i][0] ? json_string(vers[i]) : json_null());
  return o;
}

/* ---- journal helpers ------------------------------------------------------------------- */

/* Appends {step, state, time, detail(stolen)} to the rollout's journal. */
static int jrec(struct hf_req *r, const char *step, const char *state, json_t *detail) {
  char now[40];
  json_t *rec = json_object();
  int rc;
  hf__utc_now(now, sizeof now);
  json_object_set_new(rec, "step", json_string(step));
  json_object_set_new(rec, "state", json_string(state));
  json_object_set_new(rec, "time", json_string(now));
  json_object_set_new(rec, "agent", json_string(HF_VERSION));
  json_object_set_new(rec, "pid", json_integer(hf__agent_pid()));
  json_object_set_new(rec, "detail", detail ? detail : json_object());
  rc = hf_journal_append(r->hub.state_dir, r->rollout, rec);
  json_decref(rec);
  if (rc != 0) {
    snprintf(r->msg, sizeof r->msg, "journal %s/journal-%s cannot be written (%s %s): the step was stopped",
             r->hub.state_dir, r->rollout, step, state);
    return HF_EJOURNAL;
  }
  return 0;
}

static int jread(struct hf_req *r, json_t **recs) {
  bool torn;
  int rc = hf_journal_read(r->hub.state_dir, r->rollout, recs, &torn);
  if (rc != 0) {
    snprintf(r->msg, sizeof r->msg, "journal %s/journal-%s is damaged or unreadable", r->hub.state_dir, r->rollout);
    return HF_EJOURNAL;
  }
  if (torn) hf__event(r, "warn", "journal: a torn last record (cut write) was ignored");
  return 0;
}

/* The last record for step in state (borrowed from recs), or NULL. */
static json_t *jlast(json_t *recs, const char *step, const char *state) {
  size_t i = json_array_size(recs);
  while (i-- > 0) {
    json_t *rec = json_array_get(recs, i);
    if (strcmp(json_string_value(json_object_get(rec, "step")) ?: "", step) == 0 &&
        (state == NULL || strcmp(json_string_value(json_object_get(rec, "state")) ?: "", state) == 0))
      return rec;
  }
  return NULL;
}

/* The state check before a step that changes the hub: a backup of this
 * rollout must exist, since it is the only way back. */
static int need_backup(struct hf_req *r, json_t **recs_out) {
  json_t *recs = NULL;
  int rc;
  if ((rc = jread(r, &recs)) != 0) return rc;
  if (jlast(recs, "backup", "done") == NULL) {
    json_decref(recs);
    snprintf(r->msg, sizeof r->msg, "%s refused: rollout %s has no completed backup on this host yet", r->op, r->rollout);
    return HF_ESTATE;
  }
  if (recs_out) *recs_out = recs; else json_decref(recs);
  return 0;
}

/* ---- installer ---------------------------------------------------------------------------- */

/* Installs pins (borrowed strings "NAME==V") into e with its own installer. */
static int env_install(struct hf_req *r, const struct hf_env *e, const char *const *pins, int n, int64_t timeout) {
  struct hf_argv a;
  char tool[PATH_MAX];
  int i, rc;

  hf__argv_start(r, &a);
  if (strcmp(e->installer, "conda") == 0) {
    char cbin[PATH_MAX];
    if (!hf__which("conda", tool, sizeof tool)) {
      /* An environment inside a conda installation: PREFIX/../../bin/conda. */
      if (hf__pathf(cbin, sizeof cbin, "%s/../../bin/conda", e->prefix) != 0 || access(cbin, X_OK) != 0) {
        hf_argv_free(&a);
        snprintf(r->msg, sizeof r->msg, "%s: conda environment but no conda program found", e->prefix);
        return HF_EUNSUPPORTED;
      }
      if (realpath(cbin, tool) == NULL) snprintf(tool, sizeof tool, "%s", cbin);
    }
    hf_argv_push(&a, tool);
    hf_argv_push(&a, "install");
    hf_argv_push(&a, "--yes");
    hf_argv_push(&a, "--prefix");
    hf_argv_push(&a, e->prefix);
    hf_argv_push(&a, "--channel");
    hf_argv_push(&a, "conda-forge");
  } else {
    hf__pip_install_cmd(r, &a, e->prefix);
  }
  for (i = 0; i < n; i++) {
    if (!hf_valid_pkgpin(pins[i])) {
      hf_argv_free(&a);
      snprintf(r->msg, sizeof r->msg, "refusing to install %.80s: not NAME==VERSION", pins[i]);
      return HF_EBADARG;
    }
    hf_argv_push(&a, pins[i]);
  }
  rc = hf__cmd(r, &a, NULL, NULL, NULL, timeout, "install", false, NULL);
  hf_argv_free(&a);
  return rc;
}

/* ---- facts ------------------------------------------------------------------------------ */

static json_t *envs_json(struct hf_req *r, struct envset *es, bool with_report) {
  struct pkglist pl;
  json_t *arr = json_array();
  int i;
  pkgs_load(r, &pl, with_report);
  for (i = 0; i < es->n; i++) {
    const struct hf_env *e = &es->env[i];
    json_t *o = json_object(), *pk = env_pkg_obj(e, &pl, pl.n);
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

/* GET /hub/api: the version string (new) or NULL. */
static json_t *api_version(const char *base, int64_t timeout_ms, int *status) {
  struct hf_http_resp resp;
  json_t *body, *v = NULL;
  int rc = hf_http_get(base, "/hub/api", timeout_ms, &resp);
  *status = rc == 0 ? resp.status : rc;
  if (rc != 0) return NULL;
  if (resp.status == 200) {
    body = json_loadb(resp.body, resp.body_len, 0, NULL);
    if (json_is_string(json_object_get(body, "version")) && hf_valid_version(json_string_value(json_object_get(body, "version"))))
      v = json_string(json_string_value(json_object_get(body, "version")));
    json_decref(body);
  }
  hf_http_resp_free(&resp);
  return v;
}

/* db.running_servers: the rules' "servers must be stopped" checks read it.
 * null when the database cannot tell (new reference). */
static json_t *running_servers_json(const char *path) {
  char err[512];
  int64_t n;
  return hf_db_running_servers(path, &n, err, sizeof err) == 0 && n >= 0 ? json_integer(n) : json_null();
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

static int op_facts(struct hf_req *r, json_t *data) {
  int64_t c0 = cpu_us();
  struct envset *es = malloc(sizeof *es);
  json_t *db = json_object(), *svc = json_object(), *ver;
  char tool[PATH_MAX];
  int st;

  if (es == NULL) return HF_ENOMEM;
  envs_load(r, es);
  json_object_set_new(data, "envs", envs_json(r, es, true));
  free(es);
  ver = api_version(r->hub.health_url, r->timeout_ms > 0 && r->timeout_ms < 2000 ? r->timeout_ms : 1000, &st);
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
      json_object_set_new(db, "running_servers", running_servers_json(r->hub.db_path));
    } else {
      json_object_set_new(db, "alembic_revision", json_null());
      json_object_set_new(db, "users", json_null());
      {
        char e2[1024];
        snprintf(e2, sizeof e2, "%s%s", err, become_hint(r, read_denied(r->hub.db_path)));
        json_object_set_new(db, "error", json_string(e2));
      }
    }
    json_object_set_new(db, "bytes", json_integer(file_size(r->hub.db_path)));
  } else {
    json_object_set_new(db, "kind", json_string(strncmp(r->hub.db_url, "mysql", 5) == 0 ? "mysql" : "postgresql"));
    json_object_set_new(db, "path", json_null());
    json_object_set_new(db, "alembic_revision", json_null());
    json_object_set_new(db, "users", json_null());
  }
  json_object_set_new(data, "db", db);
  json_object_set_new(data, "backup_free_bytes", json_integer(free_bytes(r->hub.backup_dir)));
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
  json_object_set_new(c, "detail", json_string(detail));
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

/* nftw callback: removes everything below (and including) the walk's root. */
static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st; (void)ftw;
  if (type == FTW_DP) rmdir(path);
  else unlink(path);
  return 0;
}

/* Removes a directory tree the agent made (never follows symlinks). */
static void rm_tree(const char *dir) {
  nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The migration proven on a copy before any downtime (issue 7): a consistent
 * copy of the live database, the target release made importable beside the
 * hub environment without touching it (pip --no-deps --target a private
 * folder, first on PYTHONPATH), upgrade-db against the copy, its revision
 * and integrity checked, and everything removed again.
 * upgrade-db runs without the hub's config file, in an empty directory: a
 * db_url in jupyterhub_config.py would win over the command line and the
 * "rehearsal" would migrate the live database. Adds a check and returns the
 * rehearsal object (new). */
static json_t *rehearse(struct hf_req *r, json_t *checks, const struct hf_env *hub) {
  char tmp[PATH_MAX], copy[PATH_MAX], pkgs[PATH_MAX], cwd[PATH_MAX], sha[HF_SHA256_HEX], err[1024] = "";
  char before[128] = "", after[128] = "", pyp[PATH_MAX + 16], bin[PATH_MAX];
  char *env[2] = { pyp, NULL }, *out = NULL;
  json_t *o = json_object();
  struct hf_argv a;
  int64_t users, t0 = hf__now_ms();
  int rc;

  if (!r->hub.sqlite || strcmp(hub->installer, "pip") != 0 || !hub->exists) {
    json_object_set_new(o, "skipped", json_string(!r->hub.sqlite ? "not a SQLite database" :
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
  rm_tree(tmp);
  if (hf__mkdirs(cwd, 0700) != 0) {
    check(r, checks, "rehearsal", "refuse", "cannot create %s: %s", tmp, strerror(errno));
    return o;
  }
  hf__event(r, "info", "rehearsal: migrating a copy of %s with jupyterhub %s", r->hub.db_path, r->target);
  if ((rc = hf_db_backup(r->hub.db_path, copy, sha, err, sizeof err)) != 0) goto fail;
  hf_db_info(copy, before, sizeof before, &users, err, sizeof err);
  hf_argv_init(&a);
  hf__pip_cmd(&a, hub->prefix, "install");
  hf_argv_push(&a, "--no-deps");
  hf_argv_push(&a, "--target");
  hf_argv_push(&a, pkgs);
  /* From the preflight's cache when it holds the target: the rehearsal then
   * proves the very files the install will use. */
  hf__pip_source(r, &a);
  hf_argv_pushf(&a, "jupyterhub==%s", r->target);
  rc = hf__cmd(r, &a, cwd, NULL, NULL, hf__left_ms(r), "rehearsal", true, NULL);
  hf_argv_free(&a);
  if (rc != 0) { snprintf(err, sizeof err, "%s", r->msg); goto fail; }
  hf_argv_init(&a);
  hf_argv_pushf(&a, "%s/python", bin);
  hf_argv_push(&a, "-m");
  hf_argv_push(&a, "jupyterhub");
  hf_argv_push(&a, "upgrade-db");
  hf_argv_pushf(&a, "--JupyterHub.db_url=sqlite:///%s", copy);
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
  if ((rc = hf_db_info(copy, after, sizeof after, &users, err, sizeof err)) != 0) goto fail;
  if ((rc = hf_db_integrity(copy, err, sizeof err)) != 0) goto fail;
  json_object_set_new(o, "ok", json_true());
  json_object_set_new(o, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(o, "alembic_after", after[0] ? json_string(after) : json_null());
  json_object_set_new(o, "elapsed_ms", json_integer(hf__now_ms() - t0));
  check(r, checks, "rehearsal", "pass", "upgrade-db to %s on a copy: alembic %s -> %s, integrity ok", r->target,
        before[0] ? before : "(none)", after[0] ? after : "(none)");
  rm_tree(tmp);
  r->msg[0] = '\0';
  return o;
fail:
  json_object_set_new(o, "ok", json_false());
  json_object_set_new(o, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(o, "alembic_after", json_null());
  json_object_set_new(o, "error", json_string(err));
  json_object_set_new(o, "elapsed_ms", json_integer(hf__now_ms() - t0));
  check(r, checks, "rehearsal", "refuse", "upgrade-db to %s failed on a copy of the database: %s", r->target, err);
  rm_tree(tmp);
  r->msg[0] = '\0';
  return o;
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

static int op_preflight(struct hf_req *r, json_t *data) {
  struct envset *es = malloc(sizeof *es);
  json_t *checks = json_array();
  char refused[2048] = "", name[PATH_MAX + 16];
  int64_t need = 1 << 20, fb;
  int i, nref = 0;
  size_t k;

  if (es == NULL) { json_decref(checks); return HF_ENOMEM; }
  envs_load(r, es);
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
  else { check(r, checks, "config", "pass", "%s readable", r->hub.config); need += file_size(r->hub.config); }
  if (r->hub.sqlite) {
    char alembic[128], err[512];
    int64_t users;
    if (hf_db_info(r->hub.db_path, alembic, sizeof alembic, &users, err, sizeof err) != 0)
      check(r, checks, "database", "refuse", "%s%s", err, become_hint(r, read_denied(r->hub.db_path)));
    else {
      check(r, checks, "database", "pass", "sqlite %s, alembic revision %s, %lld users", r->hub.db_path,
            alembic[0] ? alembic : "(none)", (long long)users);
      need += file_size(r->hub.db_path);
    }
  } else if (json_array_size(r->hub.db_dump) > 0) {
    check(r, checks, "database", "pass", "non-SQLite database: backed up with the configured db_dump command");
  } else {
    check(r, checks, "database", "refuse", "non-SQLite database and no db_dump command: it cannot be backed up");
  }
  fb = free_bytes(r->hub.backup_dir);
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
  /* The target must be installable from the configured source, with this
   * Python (Requires-Python is part of pip's answer): ask pip, change nothing. */
  for (i = 0; i < es->n; i++) {
    const struct hf_env *e = &es->env[i];
    struct hf_argv a;
    int rc;
    if (!e->exists || strcmp(e->installer, "pip") != 0) continue;
    snprintf(name, sizeof name, "installable:%s", e->prefix);
    hf__argv_start(r, &a);
    hf__pip_cmd(&a, e->prefix, "install");
    hf_argv_push(&a, "--dry-run");
    hf_argv_push(&a, "--upgrade");
    hf__pip_source_configured(r, &a);
    hf_argv_pushf(&a, "jupyterhub==%s", r->target);
    for (k = 0; k < json_array_size(r->hub.extra_packages); k++)
      hf_argv_push(&a, json_string_value(json_array_get(r->hub.extra_packages, k)));
    {
      char *dry = NULL;
      rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "preflight", true, &dry);
      /* Nothing but the pins to install: the install may skip resolving. */
      hf__deps_note(r, e->prefix, rc == 0 ? dry : NULL);
      free(dry);
    }
    hf_argv_free(&a);
    if (rc != 0) check(r, checks, name, "refuse", "jupyterhub==%s is not installable: %s", r->target, r->msg);
    else check(r, checks, name, "pass", "pip can install jupyterhub==%s", r->target);
    r->msg[0] = '\0';
  }
  /* The target's packages into a host-local cache now, while the hub still
   * serves: the install inside the downtime then reads local files only
   * (issue 7). A failed fetch costs nothing but that: the install fetches. */
  if (es->env[0].exists && strcmp(es->env[0].installer, "pip") == 0) {
    json_t *co = json_object();
    if (hf__cache_fetch(r, &es->env[0], co) != 0)
      check(r, checks, "cache", "warn", "jupyterhub==%s not cached before the stop (install will fetch it): %s", r->target, r->msg);
    else
      check(r, checks, "cache", "pass", "jupyterhub==%s cached in %s%s", r->target, json_string_value(json_object_get(co, "dir")),
            json_is_true(json_object_get(co, "already")) ? " (already there)" : "");
    json_object_set_new(data, "cache", co);
    r->msg[0] = '\0';
  }
  /* What the version-aware rules read besides the environments. */
  {
    json_t *db = json_object();
    json_object_set_new(db, "kind", json_string(r->hub.sqlite ? "sqlite" : strncmp(r->hub.db_url, "mysql", 5) == 0 ? "mysql" : "postgresql"));
    json_object_set_new(db, "running_servers", r->hub.sqlite ? running_servers_json(r->hub.db_path) : json_null());
    json_object_set_new(data, "db", db);
  }
  /* The rehearsal only when everything it needs passed: it costs seconds. */
  if (!json_is_false(json_object_get(r->args, "rehearse"))) {
    bool any_refused = false;
    for (k = 0; k < json_array_size(checks); k++)
      if (strcmp(json_string_value(json_object_get(json_array_get(checks, k), "outcome")), "refuse") == 0) any_refused = true;
    if (!any_refused) json_object_set_new(data, "rehearsal", rehearse(r, checks, &es->env[0]));
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

/* ---- backup ---------------------------------------------------------------------------------- */

/* Bytes under path (files only), bounded in entries. */
static int64_t tree_bytes(const char *path, int depth, int64_t *budget) {
  struct stat st;
  DIR *d;
  struct dirent *de;
  int64_t sum = 0;
  if (--*budget < 0 || lstat(path, &st) != 0) return 0;
  if (!S_ISDIR(st.st_mode)) return S_ISREG(st.st_mode) ? (int64_t)st.st_size : 0;
  if (depth > 64 || (d = opendir(path)) == NULL) return 0;
  while ((de = readdir(d)) != NULL) {
    char sub[PATH_MAX];
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (hf__pathf(sub, sizeof sub, "%s/%s", path, de->d_name) != 0) continue;
    sum += tree_bytes(sub, depth + 1, budget);
  }
  closedir(d);
  return sum;
}

static int op_backup(struct hf_req *r, json_t *data) {
  struct envset *es = NULL;
  struct pkglist pl;
  json_t *recs = NULL, *done, *prev, *bk = NULL;
  char dir[PATH_MAX], dbf[PATH_MAX], cff[PATH_MAX], dbsha[HF_SHA256_HEX] = "", cfsha[HF_SHA256_HEX];
  int64_t need = 1 << 20, homes = 0, fb;
  bool want_homes = json_is_true(json_object_get(r->args, "homes")) && json_array_size(r->hub.backup_homes) > 0;
  bool running;
  char state[64];
  int rc, i;
  size_t k;

  if ((rc = jread(r, &recs)) != 0) return rc;
  /* Idempotent, and never overwrite: a second backup after install would
   * save the upgraded database as "the previous state". */
  if ((done = jlast(recs, "backup", "done")) != NULL) {
    json_t *d = json_object_get(done, "detail");
    const char *f = json_string_value(json_object_get(json_object_get(d, "backup"), "db_file"));
    const char *s = json_string_value(json_object_get(json_object_get(d, "backup"), "db_sha256"));
    char now[HF_SHA256_HEX];
    if (f && s && (hf_sha256_file(f, now) != 0 || strcmp(now, s) != 0)) {
      json_decref(recs);
      snprintf(r->msg, sizeof r->msg, "backup %s of rollout %s no longer matches its checksum", f, r->rollout);
      return HF_EINTEGRITY;
    }
    json_object_set(data, "backup", json_object_get(d, "backup"));
    json_object_set(data, "previous", json_object_get(d, "previous"));
    json_object_set_new(data, "already", json_true());
    json_decref(recs);
    return 0;
  }
  json_decref(recs);

  if (hf__pathf(dir, sizeof dir, "%s/%s", r->hub.backup_dir, r->rollout) != 0) return HF_EBADARG;
  if (hf__mkdirs(dir, 0700) != 0) {
    snprintf(r->msg, sizeof r->msg, "cannot create backup directory %s: %s", dir, strerror(errno));
    return HF_EIO;
  }
  if (r->hub.sqlite) need += file_size(r->hub.db_path);
  need += file_size(r->hub.config);
  if (want_homes) {
    int64_t budget = 2000000;
    for (k = 0; k < json_array_size(r->hub.backup_homes); k++)
      homes += tree_bytes(json_string_value(json_array_get(r->hub.backup_homes, k)), 0, &budget);
    hf__event(r, "info", "backup: home directories hold %lld bytes", (long long)homes);
    need += homes;
  }
  fb = free_bytes(dir);
  if (fb >= 0 && fb < need) {
    snprintf(r->msg, sizeof r->msg, "backup needs %lld bytes at %s, %lld free", (long long)need, dir, (long long)fb);
    return HF_ENOSPC;
  }

  /* The versions an upgrade will change, per environment: what rollback reinstalls. */
  if ((es = malloc(sizeof *es)) == NULL) return HF_ENOMEM;
  envs_load(r, es);
  pkgs_load(r, &pl, false);
  prev = json_object();
  for (i = 0; i < es->n; i++) json_object_set_new(prev, es->env[i].prefix, env_pkg_obj(&es->env[i], &pl, pl.n_change));
  free(es);
  if (hf__svc_status(r, &running, state, sizeof state) != 0) running = true;
  r->msg[0] = '\0';
  {
    json_t *det = json_object();
    json_object_set_new(det, "dir", json_string(dir));
    json_object_set(det, "previous", prev);
    if (r->target) json_object_set_new(det, "target", json_string(r->target));
    if ((rc = jrec(r, "backup", "begin", det)) != 0) { json_decref(prev); return rc; }
  }

  bk = json_object();
  json_object_set_new(bk, "dir", json_string(dir));
  if (r->hub.sqlite) {
    char alembic[128] = "", err[512] = "";
    int64_t users;
    hf_db_info(r->hub.db_path, alembic, sizeof alembic, &users, err, sizeof err);
    if (hf__pathf(dbf, sizeof dbf, "%s/jupyterhub.sqlite", dir) != 0) { rc = HF_EBADARG; goto fail; }
    if ((rc = hf_db_backup(r->hub.db_path, dbf, dbsha, r->msg, sizeof r->msg)) != 0) goto fail;
    json_object_set_new(bk, "db_kind", json_string("sqlite"));
    json_object_set_new(bk, "db_file", json_string(dbf));
    json_object_set_new(bk, "db_sha256", json_string(dbsha));
    json_object_set_new(bk, "alembic_revision", alembic[0] ? json_string(alembic) : json_null());
    hf__event(r, "info", "backup: %s -> %s sha256 %s (integrity ok)", r->hub.db_path, dbf, dbsha);
  } else if (json_array_size(r->hub.db_dump) > 0) {
    struct hf_argv a;
    struct hf_run run;
    struct hf_sf sf;
    if (hf__pathf(dbf, sizeof dbf, "%s/db.dump", dir) != 0) { rc = HF_EBADARG; goto fail; }
    if ((rc = hf_sf_begin(&sf, dbf, 0600, r->msg, sizeof r->msg)) != 0) goto fail;
    hf_argv_init(&a);
    for (k = 0; k < json_array_size(r->hub.db_dump); k++) hf_argv_push(&a, json_string_value(json_array_get(r->hub.db_dump, k)));
    memset(&run, 0, sizeof run);
    run.argv = a.v; run.stdout_fd = sf.fd; run.timeout_ms = hf__left_ms(r);
    rc = hf_argv_error(&a) ? hf_argv_error(&a) : hf_run_exec(&run);
    if (rc != 0) hf_sf_abort(&sf);
    else if ((rc = hf_sf_commit(&sf, r->msg, sizeof r->msg)) != 0) { hf_run_free(&run); hf_argv_free(&a); goto fail; }
    if (rc != 0) snprintf(r->msg, sizeof r->msg, "db_dump %s failed (%s, status %d): %.1500s", a.v[0] ? a.v[0] : "",
                          hf_err_code(rc), run.status, run.out ? run.out : "");
    hf_run_free(&run);
    hf_argv_free(&a);
    if (rc != 0) goto fail;
    hf_sha256_file(dbf, dbsha);
    json_object_set_new(bk, "db_kind", json_string("dump"));
    json_object_set_new(bk, "db_file", json_string(dbf));
    json_object_set_new(bk, "db_sha256", json_string(dbsha));
  } else {
    snprintf(r->msg, sizeof r->msg, "database %s is not SQLite and no db_dump command is configured: refusing to "
             "pretend it is backed up", r->hub.db_url);
    rc = HF_EUNSUPPORTED;
    goto fail;
  }
  if (hf__pathf(cff, sizeof cff, "%s/jupyterhub_config.py", dir) != 0) { rc = HF_EBADARG; goto fail; }
  if ((rc = hf_file_install(r->hub.config, cff, NULL, cfsha, r->msg, sizeof r->msg)) != 0) goto fail;
  json_object_set_new(bk, "config_file", json_string(cff));
  json_object_set_new(bk, "config_sha256", json_string(cfsha));
  if (want_homes) {
    struct hf_argv a;
    char tar[PATH_MAX], tool[PATH_MAX];
    if (!hf__which("tar", tool, sizeof tool)) { snprintf(r->msg, sizeof r->msg, "tar not found"); rc = HF_EUNSUPPORTED; goto fail; }
    snprintf(tar, sizeof tar, "%s/homes.tar", dir);
    hf__argv_start(r, &a);
    hf_argv_push(&a, tool);
    hf_argv_push(&a, "--create");
    hf_argv_pushf(&a, "--file=%s", tar);
    hf_argv_push(&a, "--directory=/");
    hf_argv_push(&a, "--");
    for (k = 0; k < json_array_size(r->hub.backup_homes); k++)
      hf_argv_push(&a, json_string_value(json_array_get(r->hub.backup_homes, k)) + 1);
    rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "backup", false, NULL);
    hf_argv_free(&a);
    if (rc != 0) goto fail;
    json_object_set_new(bk, "homes_file", json_string(tar));
    json_object_set_new(bk, "homes_bytes", json_integer(homes));
  }
  json_object_set_new(bk, "hub_running", json_boolean(running));
  {
    json_t *det = json_object();
    json_object_set(det, "backup", bk);
    json_object_set(det, "previous", prev);
    if ((rc = jrec(r, "backup", "done", det)) != 0) goto out;
  }
  json_object_set(data, "backup", bk);
  json_object_set(data, "previous", prev);
  rc = 0;
  goto out;
fail:
  {
    json_t *det = json_object();
    json_object_set_new(det, "error", json_string(r->msg));
    json_object_set_new(det, "code", json_string(hf_err_code(rc)));
    jrec(r, "backup", "failed", det);
  }
out:
  json_decref(bk);
  json_decref(prev);
  return rc;
}

/* ---- stop / start ------------------------------------------------------------------------------ */

static int fail_step(struct hf_req *r, const char *step, int rc) {
  json_t *det = json_object();
  char keep[sizeof r->msg];
  snprintf(keep, sizeof keep, "%s", r->msg);
  json_object_set_new(det, "error", json_string(r->msg));
  json_object_set_new(det, "code", json_string(hf_err_code(rc)));
  if (jrec(r, step, "failed", det) != 0) return HF_EJOURNAL;
  snprintf(r->msg, sizeof r->msg, "%s", keep);
  return rc;
}

static int op_stop(struct hf_req *r, json_t *data) {
  bool was;
  int rc;
  if ((rc = need_backup(r, NULL)) != 0) return rc;
  if ((rc = jrec(r, "stop", "begin", NULL)) != 0) return rc;
  if ((rc = hf__svc_stop(r, &was)) != 0) return fail_step(r, "stop", rc);
  {
    json_t *det = json_object();
    json_object_set_new(det, "was_running", json_boolean(was));
    if ((rc = jrec(r, "stop", "done", det)) != 0) return rc;
  }
  json_object_set_new(data, "was_running", json_boolean(was));
  json_object_set_new(data, "stopped", json_true());
  return 0;
}

static void scan_log(struct hf_req *r, int64_t offset, json_t *errors, json_t *deprecations);
static int64_t log_mark(struct hf_req *r);

/* After the supervisor says "running": waits until the hub answers HTTP at
 * its health URL (any status; health judges it), so that "started" means
 * something a user could reach. Fails early when the hub's log shows it
 * crashed, or its supervisor says it is gone. */
static int wait_answering(struct hf_req *r, int64_t log_offset, int64_t *ms) {
  int64_t t0 = hf__now_ms(), next_check = t0 + 2000;
  for (;;) {
    int st = 0;
    /* The hub's own API, not just its proxy (which answers 503 for a hub
     * that is not registered yet). */
    json_t *v = api_version(r->hub.health_url, 1000, &st);
    *ms = hf__now_ms() - t0;
    if (v != NULL) { json_decref(v); return 0; }
    if (hf__now_ms() >= r->deadline_ms) {
      snprintf(r->msg, sizeof r->msg, "hub started but its API did not answer at %s within %lld ms (last: %s%d)",
               r->hub.health_url, (long long)*ms, st > 0 ? "HTTP " : "", st);
      return HF_ETIMEDOUT;
    }
    if (hf__now_ms() >= next_check) {
      json_t *errs = json_array(), *deps = json_array();
      char state[64] = "unknown";
      bool running = true;
      size_t k;
      scan_log(r, log_offset, errs, deps);
      for (k = 0; k < json_array_size(errs); k++) {
        const char *l = json_string_value(json_array_get(errs, k));
        if (strstr(l, "Traceback") || strncmp(l, "[C ", 3) == 0) running = false;
      }
      if (running && r->hub.svc != HF_SVC_COMMAND && hf__svc_status(r, &running, state, sizeof state) != 0)
        running = true; /* cannot tell: keep waiting until the deadline */
      if (!running && r->hub.svc == HF_SVC_SYSTEMD && strcmp(state, "unknown") == 0) {
        bool up;
        hf__svc_status(r, &up, state, sizeof state); /* only for the message */
      }
      if (!running) {
        const char *last = json_string_value(json_array_get(errs, json_array_size(errs) - 1));
        snprintf(r->msg, sizeof r->msg, "hub crashed while starting%s%s%s%s%s", last ? ": " : "", last ? last : "",
                 r->hub.svc == HF_SVC_SYSTEMD ? " (systemd: " : "", r->hub.svc == HF_SVC_SYSTEMD ? state : "",
                 r->hub.svc == HF_SVC_SYSTEMD ? ")" : "");
        json_decref(errs);
        json_decref(deps);
        return HF_ECMD;
      }
      json_decref(errs);
      json_decref(deps);
      r->msg[0] = '\0';
      next_check = hf__now_ms() + 2000;
    }
    usleep(50000); /* a fine interval: every poll saved is downtime saved */
  }
}

static int op_start(struct hf_req *r, json_t *data) {
  bool was;
  int64_t off = log_mark(r), ms = 0;
  json_t *det = json_object();
  int rc;
  /* Health scans the log from here: what this start wrote. */
  json_object_set_new(det, "log_offset", json_integer(off < 0 ? 0 : off));
  if ((rc = jrec(r, "start", "begin", det)) != 0) return rc;
  if ((rc = hf__svc_start(r, &was)) != 0) return fail_step(r, "start", rc);
  if ((rc = wait_answering(r, off < 0 ? 0 : off, &ms)) != 0) return fail_step(r, "start", rc);
  det = json_object();
  json_object_set_new(det, "was_running", json_boolean(was));
  json_object_set_new(det, "answering_after_ms", json_integer(ms));
  json_object_set_new(data, "answering_after_ms", json_integer(ms));
  if ((rc = jrec(r, "start", "done", det)) != 0) return rc;
  json_object_set_new(data, "running", json_true());
  json_object_set_new(data, "was_running", json_boolean(was));
  return 0;
}

/* ---- install ------------------------------------------------------------------------------------ */

/* Brings every environment to the pins: want[prefix] = {pkg: ver}. Envs
 * already there are skipped, so a repeated install runs nothing. */
static int install_envs(struct hf_req *r, const char *step, json_t *want, json_t *installed) {
  struct envset *es = malloc(sizeof *es);
  int i, rc = 0;
  if (es == NULL) return HF_ENOMEM;
  envs_load(r, es);
  /* Separate environments side by side (issue 7); the loop below then finds
   * them at the pins, and verifies every one from its files. */
  if ((rc = hf__install_prepass(r, step, es->env, es->n, want, NULL)) != 0) { free(es); return rc; }
  for (i = 0; i < es->n; i++) {
    struct hf_env *e = &es->env[i];
    json_t *pins = json_object_get(want, e->prefix), *v;
    const char *pkg, *names[64], *pinv[64];
    char pinbuf[64][200], vers[64][HF_VER_LEN];
    int n = 0, k;
    bool same = true;
    hf__progress(r, step, i, es->n);
    if (!e->exists) { snprintf(r->msg, sizeof r->msg, "environment %s does not exist", e->prefix); rc = HF_ENOTFOUND; break; }
    json_object_foreach(pins, pkg, v) {
      if (!json_is_string(v) || n >= 64) continue; /* null: was not installed; left alone */
      names[n] = pkg;
      snprintf(pinbuf[n], sizeof pinbuf[n], "%s==%s", pkg, json_string_value(v));
      pinv[n] = pinbuf[n];
      n++;
    }
    hf_env_versions(e, names, n, vers);
    for (k = 0; k < n; k++)
      if (strcmp(vers[k], json_string_value(json_object_get(pins, names[k]))) != 0) same = false;
    if (!same) {
      hf__event(r, "info", "%s: %s environment %s", step, es->role[i], e->prefix);
      if ((rc = env_install(r, e, pinv, n, hf__left_ms(r))) != 0) break;
      /* Trust the files, not the installer's exit code. */
      hf_env_inspect(e->prefix, r->hub.installer, e);
      hf_env_versions(e, names, n, vers);
      for (k = 0; k < n; k++)
        if (strcmp(vers[k], json_string_value(json_object_get(pins, names[k]))) != 0) {
          snprintf(r->msg, sizeof r->msg, "%s: %s is %s in %s after the install, expected %s", step, names[k],
                   vers[k][0] ? vers[k] : "missing", e->prefix, json_string_value(json_object_get(pins, names[k])));
          rc = HF_ECMD;
        }
      if (rc) break;
    } else {
      hf__event(r, "info", "%s: %s already at the wanted versions", step, e->prefix);
    }
    {
      json_t *o = json_object();
      for (k = 0; k < n; k++) json_object_set_new(o, names[k], json_string(vers[k]));
      json_object_set_new(installed, e->prefix, o);
    }
  }
  if (rc == 0) hf__progress(r, step, es->n, es->n);
  free(es);
  return rc;
}

static int op_install(struct hf_req *r, json_t *data) {
  json_t *want = json_object(), *installed = json_object(), *det;
  struct envset *es = malloc(sizeof *es);
  int i, rc;
  size_t k;

  if (es == NULL) { json_decref(want); json_decref(installed); return HF_ENOMEM; }
  if ((rc = need_backup(r, NULL)) != 0) goto out;
  envs_load(r, es);
  for (i = 0; i < es->n; i++) {
    json_t *o = json_object();
    json_object_set_new(o, "jupyterhub", json_string(r->target));
    for (k = 0; k < json_array_size(r->hub.extra_packages); k++) {
      const char *pin = json_string_value(json_array_get(r->hub.extra_packages, k));
      const char *eq = strstr(pin, "==");
      char nm[130];
      if (eq == NULL || (size_t)(eq - pin) >= sizeof nm) continue;
      memcpy(nm, pin, (size_t)(eq - pin));
      nm[eq - pin] = '\0';
      json_object_set_new(o, nm, json_string(eq + 2));
    }
    json_object_set_new(want, es->env[i].prefix, o);
  }
  det = json_object();
  json_object_set_new(det, "target", json_string(r->target));
  json_object_set(det, "want", want);
  if ((rc = jrec(r, "install", "begin", det)) != 0) goto out;
  if ((rc = install_envs(r, "install", want, installed)) != 0) { rc = fail_step(r, "install", rc); goto out; }
  det = json_object();
  json_object_set(det, "installed", installed);
  if ((rc = jrec(r, "install", "done", det)) != 0) goto out;
  json_object_set(data, "installed", installed);
out:
  free(es);
  json_decref(want);
  json_decref(installed);
  return rc;
}

/* ---- migrate ------------------------------------------------------------------------------------ */

static int op_migrate(struct hf_req *r, json_t *data) {
  char before[128] = "", after[128] = "", err[512], bin[PATH_MAX];
  struct hf_argv a;
  int64_t users;
  json_t *det;
  int rc;

  if ((rc = need_backup(r, NULL)) != 0) return rc;
  if (r->hub.sqlite && hf_db_info(r->hub.db_path, before, sizeof before, &users, err, sizeof err) != 0) {
    snprintf(r->msg, sizeof r->msg, "%s", err);
    return HF_EDB;
  }
  det = json_object();
  json_object_set_new(det, "alembic_before", before[0] ? json_string(before) : json_null());
  if ((rc = jrec(r, "migrate", "begin", det)) != 0) return rc;
  if (hf__pathf(bin, sizeof bin, "%s/bin", r->hub.hub_env) != 0) return fail_step(r, "migrate", HF_EBADARG);
  hf__argv_start(r, &a);
  hf_argv_pushf(&a, "%s/jupyterhub", bin);
  hf_argv_push(&a, "upgrade-db");
  hf_argv_pushf(&a, "--config=%s", r->hub.config);
  /* In the config's directory: relative paths in the config resolve as the hub sees them. */
  rc = hf__cmd(r, &a, r->hub.config_dir, bin, NULL, hf__left_ms(r), "migrate", false, NULL);
  hf_argv_free(&a);
  if (rc != 0) return fail_step(r, "migrate", rc);
  if (r->hub.sqlite && hf_db_info(r->hub.db_path, after, sizeof after, &users, err, sizeof err) != 0) {
    snprintf(r->msg, sizeof r->msg, "%s", err);
    return fail_step(r, "migrate", HF_EDB);
  }
  det = json_object();
  json_object_set_new(det, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(det, "alembic_after", after[0] ? json_string(after) : json_null());
  if ((rc = jrec(r, "migrate", "done", det)) != 0) return rc;
  json_object_set_new(data, "alembic_before", before[0] ? json_string(before) : json_null());
  json_object_set_new(data, "alembic_after", after[0] ? json_string(after) : json_null());
  return 0;
}

/* ---- health ------------------------------------------------------------------------------------- */

#define HF_LOG_KEEP 50          /* lines of each kind reported */
#define HF_LOG_MAX  (4 << 20)   /* bytes of log scanned */

static bool has(const char *line, const char *needle) {
  return strstr(line, needle) != NULL;
}

/* Where the hub's log starts for a start that happens now: the hub log's
 * size; without one, a systemd hub's journal from this moment (wall-clock
 * microseconds, for journalctl --since); else 0. */
static int64_t log_mark(struct hf_req *r) {
  if (r->hub.hub_log == NULL && r->hub.svc == HF_SVC_SYSTEMD) return hf__wall_us() - 1000;
  return file_size(r->hub.hub_log);
}

/* The hub's log since mark (see log_mark), new, *len bytes; NULL when there
 * is none. A systemd hub without hubfleet_hub_log: its journal,
 * `journalctl -u UNIT --since @SECONDS -o cat` (stdout only, bounded). */
static char *log_since(struct hf_req *r, int64_t offset, size_t *len) {
  char *buf;
  ssize_t n;
  int fd;
  int64_t size;
  *len = 0;
  if (r->hub.hub_log == NULL && r->hub.svc == HF_SVC_SYSTEMD) {
    buf = hf__unit_journal(r, offset, 2000);
    *len = buf ? strlen(buf) : 0;
    return buf;
  }
  size = file_size(r->hub.hub_log);
  if (r->hub.hub_log == NULL || size < 0) return NULL;
  if (offset > size) offset = 0; /* rotated or truncated: read what is there */
  if (size - offset > HF_LOG_MAX) offset = size - HF_LOG_MAX;
  if ((fd = open(r->hub.hub_log, O_RDONLY | O_CLOEXEC)) < 0) return NULL;
  buf = malloc((size_t)(size - offset) + 1);
  if (buf == NULL) { close(fd); return NULL; }
  n = pread(fd, buf, (size_t)(size - offset), offset);
  close(fd);
  if (n < 0) n = 0;
  buf[n] = '\0';
  *len = (size_t)n;
  return buf;
}

/* Scans the hub log from offset for errors and deprecations (bounded). */
static void scan_log(struct hf_req *r, int64_t offset, json_t *errors, json_t *deprecations) {
  size_t n;
  char *buf = log_since(r, offset, &n), *p, *end;
  bool in_tb = false;
  size_t indent, tb_indent = 0;
  if (buf == NULL) return;
  end = buf + n;
  for (p = buf; p < end;) {
    char *eol = memchr(p, '\n', (size_t)(end - p));
    char line[400];
    size_t l;
    if (eol == NULL) eol = end;
    l = (size_t)(eol - p);
    if (l >= sizeof line) l = sizeof line - 1;
    memcpy(line, p, l);
    line[l] = '\0';
    for (size_t i = 0; i < l; i++)
      if ((unsigned char)line[i] < 0x20 && line[i] != '\t') line[i] = ' ';
      else if ((unsigned char)line[i] > 0x7e) line[i] = '?';
    /* JupyterHub's format: "[E 2026-11-25 16:00:00.000 JupyterHub app:123] ..."; also
     * Python tracebacks and CRITICAL lines written by other handlers. */
    indent = strspn(line, " \t");
    if (strncmp(line, "[E ", 3) == 0 || strncmp(line, "[C ", 3) == 0 || has(line, " ERROR ") || has(line, "ERROR:") ||
        has(line, "CRITICAL") || has(line, "Traceback (most recent call last)")) {
      if (json_array_size(errors) < HF_LOG_KEEP) json_array_append_new(errors, json_string(line));
      in_tb = has(line, "Traceback");
      tb_indent = indent;
    } else if (in_tb && line[0] != '\0' && indent <= tb_indent) {
      /* The exception line that ends a traceback (indented like its
       * "Traceback" line) says what failed. */
      if (json_array_size(errors) < HF_LOG_KEEP) json_array_append_new(errors, json_string(line));
      in_tb = false;
    } else if (has(line, "DeprecationWarning") || has(line, "deprecated") || has(line, "Deprecated")) {
      if (json_array_size(deprecations) < HF_LOG_KEEP) json_array_append_new(deprecations, json_string(line));
    }
    p = eol + 1;
  }
  free(buf);
}

/* Polls until the hub answers health 200 and /hub/api reports want, or the
 * deadline. Fills data with what it saw; 0 when healthy. */
/* How long a hub may answer its API while /hub/health fails before that is final. */
#define HF_HEALTH_SETTLE_MS 5000

static int wait_healthy(struct hf_req *r, const char *want, int64_t timeout_ms, int64_t log_offset, json_t *data) {
  int64_t t0 = hf__now_ms(), deadline = t0 + timeout_ms;
  json_t *errors = json_array(), *deps = json_array(), *ver = NULL;
  int hstatus = 0, astatus = 0, polls = 0;
  int64_t next_svc = t0 + 2000, answering_bad_since = 0;
  bool ok = false, gone = false;
  char svc_state[64] = "";

  /* Bounded by the deadline; each probe by its own 1 s (or less) timeout. */
  for (;;) {
    struct hf_http_resp resp;
    int64_t left = deadline - hf__now_ms();
    int rc = hf_http_get(r->hub.health_url, "/hub/health", left < 1000 ? (left > 50 ? left : 50) : 1000, &resp);
    polls++;
    hstatus = rc == 0 ? resp.status : rc;
    hf_http_resp_free(&resp);
    if (rc == 0) {
      json_decref(ver);
      ver = api_version(r->hub.health_url, 1000, &astatus);
      if (resp.status == 200 && ver != NULL && strcmp(json_string_value(ver), want) == 0) { ok = true; break; }
      /* The hub itself answers (its API reports a version) but calls itself
       * unhealthy: once that has lasted a few seconds it is not a hub still
       * starting behind its proxy, and waiting longer only adds downtime. */
      if (resp.status != 200 && ver != NULL) {
        if (answering_bad_since == 0) answering_bad_since = hf__now_ms();
        else if (hf__now_ms() - answering_bad_since >= HF_HEALTH_SETTLE_MS) {
          gone = true;
          snprintf(svc_state, sizeof svc_state, "it answers, but /hub/health keeps saying %d", resp.status);
          break;
        }
      } else {
        answering_bad_since = 0;
      }
    }
    if (hf__now_ms() + 150 >= deadline) break;
    /* A hub that crashed will not get healthy: ask its supervisor now and
     * then (not every poll: supervisorctl is a Python program). */
    if (hf__now_ms() >= next_svc) {
      bool running = true;
      json_t *e2 = json_array(), *d2 = json_array();
      size_t k;
      if (r->hub.svc != HF_SVC_COMMAND && hf__svc_status(r, &running, svc_state, sizeof svc_state) == 0 && !running) {
        gone = true;
      }
      r->msg[0] = '\0';
      /* A supervisor that restarts a crashing hub keeps saying RUNNING; the
       * hub's own log says it crashed: a traceback or a critical line. */
      scan_log(r, log_offset, e2, d2);
      for (k = 0; k < json_array_size(e2); k++) {
        const char *l = json_string_value(json_array_get(e2, k));
        if (strstr(l, "Traceback") || strncmp(l, "[C ", 3) == 0) {
          gone = true;
          snprintf(svc_state, sizeof svc_state, "crashed: traceback in the log");
        }
      }
      json_decref(e2);
      json_decref(d2);
      if (gone) break;
      next_svc = hf__now_ms() + 2000;
    }
    usleep(50000); /* a fine interval: every poll saved is downtime saved */
  }
  scan_log(r, log_offset, errors, deps);
  json_object_set_new(data, "status", json_string(ok && json_array_size(errors) == 0 ? "healthy" : "unhealthy"));
  json_object_set_new(data, "api_version", ver ? ver : json_null());
  json_object_set_new(data, "health_status", json_integer(hstatus));
  if (gone) json_object_set_new(data, "process_state", json_string(svc_state));
  json_object_set_new(data, "elapsed_ms", json_integer(hf__now_ms() - t0));
  json_object_set_new(data, "polls", json_integer(polls));
  json_object_set_new(data, "log_errors", errors);
  json_object_set_new(data, "deprecations", deps);
  if (!ok) {
    char why[128];
    if (gone) snprintf(why, sizeof why, "hub is not coming up (%s)", svc_state);
    else snprintf(why, sizeof why, "hub not healthy within %lld ms", (long long)timeout_ms);
    char hs[64];
    if (hstatus > 0) snprintf(hs, sizeof hs, "status %d", hstatus);
    else snprintf(hs, sizeof hs, "%s", hstatus < 0 ? hf_err_code(hstatus) : "not asked");
    snprintf(r->msg, sizeof r->msg, "%s: /hub/health %s, /hub/api version %s (want %s)%s%s", why, hs,
             json_string_value(json_object_get(data, "api_version")) ?: "none", want,
             json_array_size(errors) ? "; log: " : "",
             json_array_size(errors) ? json_string_value(json_array_get(errors, json_array_size(errors) - 1)) : "");
    return HF_EHEALTH;
  }
  if (json_array_size(errors) > 0) {
    snprintf(r->msg, sizeof r->msg, "hub answers as %s but its log since the start holds %zu error line(s), last: %s",
             want, json_array_size(errors), json_string_value(json_array_get(errors, json_array_size(errors) - 1)));
    return HF_EHEALTH;
  }
  return 0;
}

static int64_t start_log_offset(struct hf_req *r) {
  json_t *recs = NULL, *st;
  int64_t off;
  bool torn;
  if (r->rollout == NULL || hf_journal_read(r->hub.state_dir, r->rollout, &recs, &torn) != 0) goto tail;
  /* The latest start: a start step, or the start inside a rollback. */
  {
    size_t i = json_array_size(recs);
    st = NULL;
    while (i-- > 0) {
      json_t *rec = json_array_get(recs, i);
      if (json_is_integer(json_object_get(json_object_get(rec, "detail"), "log_offset"))) { st = rec; break; }
    }
  }
  if (st == NULL) { json_decref(recs); goto tail; }
  off = json_integer_value(json_object_get(json_object_get(st, "detail"), "log_offset"));
  json_decref(recs);
  return off;
tail:
  /* No start recorded: the recent part of the log (the journal's last minute). */
  if (r->hub.hub_log == NULL) return log_mark(r) - 60 * 1000000LL;
  off = file_size(r->hub.hub_log);
  return off > 65536 ? off - 65536 : 0;
}

static int op_health(struct hf_req *r, json_t *data) {
  int rc = wait_healthy(r, r->target, hf__left_ms(r), start_log_offset(r), data);
  size_t k;
  for (k = 0; k < json_array_size(json_object_get(data, "log_errors")); k++)
    hf__event(r, "warn", "hub log: %s", json_string_value(json_array_get(json_object_get(data, "log_errors"), k)));
  for (k = 0; k < json_array_size(json_object_get(data, "deprecations")); k++)
    hf__event(r, "info", "hub log deprecation: %s", json_string_value(json_array_get(json_object_get(data, "deprecations"), k)));
  if (r->rollout) {
    /* The journal keeps the verdict and a few lines, not the whole scan. */
    json_t *det = json_deep_copy(data), *a;
    if ((a = json_object_get(det, "log_errors")) != NULL) {
      json_object_set_new(det, "log_error_count", json_integer((json_int_t)json_array_size(a)));
      while (json_array_size(a) > 5) json_array_remove(a, 0);
    }
    if ((a = json_object_get(det, "deprecations")) != NULL) {
      json_object_set_new(det, "deprecation_count", json_integer((json_int_t)json_array_size(a)));
      while (json_array_size(a) > 5) json_array_remove(a, 5);
    }
    if (rc != 0) json_object_set_new(det, "error", json_string(r->msg));
    int jr = jrec(r, "health", rc == 0 ? "done" : "failed", det);
    if (jr != 0 && rc == 0) rc = jr;
  }
  return rc;
}

/* ---- rollback ----------------------------------------------------------------------------------- */

/* Does every environment hold the versions in want ({prefix: {pkg: ver}})? */
static bool versions_match(struct hf_req *r, json_t *want) {
  const char *prefix, *pkg;
  json_t *pins, *v;
  json_object_foreach(want, prefix, pins) {
    struct hf_env e;
    char ver[1][HF_VER_LEN];
    hf_env_inspect(prefix, r->hub.installer, &e);
    json_object_foreach(pins, pkg, v) {
      if (!json_is_string(v)) continue;
      hf_env_versions(&e, &pkg, 1, ver);
      if (strcmp(ver[0], json_string_value(v)) != 0) return false;
    }
  }
  return true;
}

static int op_rollback(struct hf_req *r, json_t *data) {
  json_t *recs = NULL, *bkrec, *bk, *prev, *det, *restored = json_object(), *hdata = NULL;
  const char *dbf, *dbsha, *cff, *cfsha, *oldver = NULL;
  char sha[HF_SHA256_HEX];
  bool was, hub_was_running;
  int64_t log_off = -1;
  int rc;

  if ((rc = jread(r, &recs)) != 0) { json_decref(restored); return rc; }
  bkrec = jlast(recs, "backup", "done");
  if (bkrec == NULL) {
    /* Nothing was changed without a backup (stop/install/migrate refuse to
     * run before one), so there is nothing to undo. */
    json_decref(recs);
    json_decref(restored);
    json_object_set_new(data, "nothing_to_undo", json_true());
    json_object_set_new(data, "restored_versions", json_object());
    json_object_set_new(data, "db_sha256", json_null());
    json_object_set_new(data, "api_version", json_null());
    return 0;
  }
  bk = json_object_get(json_object_get(bkrec, "detail"), "backup");
  prev = json_object_get(json_object_get(bkrec, "detail"), "previous");
  if (json_is_object(json_object_get(r->args, "previous")) && !json_is_object(prev))
    prev = json_object_get(r->args, "previous");
  dbf = json_string_value(json_object_get(bk, "db_file"));
  dbsha = json_string_value(json_object_get(bk, "db_sha256"));
  cff = json_string_value(json_object_get(bk, "config_file"));
  cfsha = json_string_value(json_object_get(bk, "config_sha256"));
  hub_was_running = !json_is_false(json_object_get(bk, "hub_running"));
  oldver = json_string_value(json_object_get(json_object_get(prev, r->hub.hub_env), "jupyterhub"));

  /* Idempotent: a rollback that completed, with nothing journaled after it,
   * is the answer again. Restoring once more would throw away what the
   * restored hub has written since. The versions are re-checked: if someone
   * changed an environment since, the rollback runs again. */
  {
    json_t *last = json_array_get(recs, json_array_size(recs) - 1);
    json_t *ld = json_object_get(last, "detail");
    if (strcmp(json_string_value(json_object_get(last, "step")) ?: "", "rollback") == 0 &&
        strcmp(json_string_value(json_object_get(last, "state")) ?: "", "done") == 0 &&
        versions_match(r, prev)) {
      hf__event(r, "info", "rollback: already done at %s; nothing changed since", json_string_value(json_object_get(last, "time")) ?: "?");
      json_object_set(data, "restored_versions", json_object_get(ld, "restored_versions"));
      json_object_set(data, "db_sha256", json_object_get(ld, "db_sha256"));
      json_object_set(data, "api_version", json_object_get(ld, "api_version"));
      json_object_set_new(data, "already", json_true());
      rc = 0;
      goto out;
    }
  }
  det = json_object();
  json_object_set_new(det, "from_step", json_deep_copy(json_array_get(recs, json_array_size(recs) - 1)));
  if ((rc = jrec(r, "rollback", "begin", det)) != 0) goto out;

  hf__event(r, "info", "rollback: stopping the hub");
  if ((rc = hf__svc_stop(r, &was)) != 0) goto fail;
  hf__event(r, "info", "rollback: reinstalling the previous versions");
  if ((rc = install_envs(r, "rollback", prev, restored)) != 0) goto fail;
  if (r->hub.sqlite && dbf && dbsha) {
    if (hf_sha256_file(r->hub.db_path, sha) == 0 && strcmp(sha, dbsha) == 0) {
      hf__event(r, "info", "rollback: database already equals the backup (%s)", sha);
    } else {
      /* Verified first, side files moved aside, deleted only once it worked. */
      if ((rc = hf_db_restore(dbf, r->hub.db_path, dbsha, sha, r->msg, sizeof r->msg)) != 0) goto fail;
    }
    if (hf_sha256_file(r->hub.db_path, sha) != 0 || strcmp(sha, dbsha) != 0) {
      snprintf(r->msg, sizeof r->msg, "database %s does not match the backup after restore", r->hub.db_path);
      rc = HF_EINTEGRITY;
      goto fail;
    }
    hf__event(r, "info", "rollback: database restored, sha256 %s", sha);
    json_object_set_new(data, "db_sha256", json_string(sha));
  } else {
    /* A dump is restored by the operator's own tools: say so. */
    json_object_set_new(data, "db_sha256", json_null());
    if (dbf) hf__event(r, "warn", "rollback: non-SQLite database: restore the dump %s with your database's tools", dbf);
  }
  if (cff && cfsha && (hf_sha256_file(r->hub.config, sha) != 0 || strcmp(sha, cfsha) != 0)) {
    if ((rc = hf_file_install(cff, r->hub.config, cfsha, sha, r->msg, sizeof r->msg)) != 0) goto fail;
    hf__event(r, "info", "rollback: %s restored", r->hub.config);
  }
  if (hub_was_running) {
    int64_t off = log_mark(r);
    log_off = off < 0 ? 0 : off;
    hf__event(r, "info", "rollback: starting the hub");
    if ((rc = hf__svc_start(r, &was)) != 0) goto fail;
    if (oldver != NULL) {
      hdata = json_object();
      if ((rc = wait_healthy(r, oldver, hf__left_ms(r), off < 0 ? 0 : off, hdata)) != 0) goto fail;
      json_object_set(data, "api_version", json_object_get(hdata, "api_version"));
    }
  }
  if (json_object_get(data, "api_version") == NULL) json_object_set_new(data, "api_version", json_null());
  json_object_set(data, "restored_versions", restored);
  det = json_object();
  json_object_set(det, "restored_versions", restored);
  json_object_set(det, "db_sha256", json_object_get(data, "db_sha256"));
  json_object_set(det, "api_version", json_object_get(data, "api_version"));
  if (log_off >= 0) json_object_set_new(det, "log_offset", json_integer(log_off));
  rc = jrec(r, "rollback", "done", det);
  goto out;
fail:
  {
    char keep[sizeof r->msg];
    snprintf(keep, sizeof keep, "%s", r->msg);
    fail_step(r, "rollback", rc);
    snprintf(r->msg, sizeof r->msg, "rollback did not restore a healthy hub (%s): %s; backup in %s", hf_err_code(rc),
             keep, json_string_value(json_object_get(bk, "dir")) ?: "?");
    rc = HF_EROLLBACK;
  }
out:
  json_decref(hdata);
  json_decref(restored);
  json_decref(recs);
  return rc;
}

/* The pid holding the host lock, or 0 when it is free (fd: the open lock file). */
static int lock_holder(int fd) {
  char buf[32] = "";
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n > 0) buf[n] = '\0';
  return atoi(buf);
}

/* ---- journal ------------------------------------------------------------------------------------ */

static int op_journal(struct hf_req *r, json_t *data) {
  json_t *recs = NULL, *steps = json_array(), *bk;
  bool torn = false;
  size_t i;
  int rc = hf_journal_read(r->hub.state_dir, r->rollout, &recs, &torn);
  if (rc != 0) {
    json_decref(steps);
    snprintf(r->msg, sizeof r->msg, "journal %s/journal-%s is damaged or unreadable", r->hub.state_dir, r->rollout);
    return HF_EJOURNAL;
  }
  /* Bounded answer: the newest 500 records (a journal is tens of records;
   * a loop of retries must not make the result unframeable). */
  i = json_array_size(recs) > 500 ? json_array_size(recs) - 500 : 0;
  json_object_set_new(data, "records_skipped", json_integer((json_int_t)i));
  for (; i < json_array_size(recs); i++) {
    json_t *rec = json_array_get(recs, i), *s = json_object();
    json_object_set(s, "step", json_object_get(rec, "step"));
    json_object_set(s, "state", json_object_get(rec, "state"));
    json_object_set(s, "time", json_object_get(rec, "time"));
    json_object_set(s, "detail", json_object_get(rec, "detail"));
    json_array_append_new(steps, s);
  }
  bk = jlast(recs, "backup", "done");
  json_object_set_new(data, "rollout", json_string(r->rollout));
  json_object_set_new(data, "steps", steps);
  json_object_set(data, "previous", bk ? json_object_get(json_object_get(bk, "detail"), "previous") : json_null());
  json_object_set(data, "backup", bk ? json_object_get(json_object_get(bk, "detail"), "backup") : json_null());
  json_object_set_new(data, "torn_tail", json_boolean(torn));
  /* A step begun but not done may still be running in another agent. */
  {
    char path[PATH_MAX];
    int fd, busy = 0;
    if (hf__pathf(path, sizeof path, "%s/agent.lock", r->hub.state_dir) == 0 &&
        (fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)) >= 0) {
      if (flock(fd, LOCK_SH | LOCK_NB) != 0) busy = lock_holder(fd);
      close(fd);
    }
    json_object_set_new(data, "busy_pid", busy ? json_integer(busy) : json_null());
  }
  json_decref(recs);
  return 0;
}

/* ---- dispatch ------------------------------------------------------------------------------------ */

struct op_entry {
  const char *name;
  int (*fn)(struct hf_req *r, json_t *data);
  int64_t default_timeout_ms;
  bool needs_rollout;   /* journaled: refused without a rollout id */
  bool needs_target;
  bool changes;         /* changes the hub: runs under the host lock */
};

static const struct op_entry ops[] = {
  { "facts",     op_facts,     1000,   false, false, false },
  { "preflight", op_preflight, 120000, false, true,  false },
  { "backup",    op_backup,    600000, true,  false, true },
  { "stop",      op_stop,      60000,  true,  false, true },
  { "install",   op_install,   900000, true,  true,  true },
  { "migrate",   op_migrate,   600000, true,  false, true },
  { "start",     op_start,     60000,  true,  false, true },
  { "health",    op_health,    60000,  false, true,  false },
  { "rollback",  op_rollback,  900000, true,  false, true },
  { "journal",   op_journal,   5000,   true,  false, false },
  { NULL, NULL, 0, false, false, false },
};

/* One agent at a time changes a hub: a controller that reconnected after a
 * cut must not start a rollback while the agent it lost is still inside
 * pip. flock dies with its holder, even under SIGKILL. Waits up to the
 * op's timeout for the other agent to finish its step. */
/* Whether the controller's end of stdin hung up (without reading from it:
 * a next request must stay where it is). */
static bool controller_gone(const struct hf_req *r) {
  struct pollfd p = { .fd = r->in_fd, .events = POLLRDHUP };
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

/* The procedure's order. A step runs only right after its predecessor (or
 * again after itself: every step is idempotent): its predecessor must be the
 * last step the journal shows completed. Anything else comes from a stale
 * controller or agent: a late "stop" after "health" would take a healthy,
 * upgraded hub down, and an "install" re-sent after a rollback began would
 * upgrade the rolled-back hub under its users. Once a rollback of the rollout
 * began on this host, no upgrade step runs again (start a new rollout). */
static const char *const procedure[] = { "backup", "stop", "install", "migrate", "start", "health", NULL };

static int step_rank(const char *step) {
  for (int i = 0; procedure[i]; i++)
    if (step && strcmp(procedure[i], step) == 0) return i;
  return -1;
}

static int refuse_stale(struct hf_req *r) {
  int want = step_rank(r->op), last = -1;
  const char *rb_state = NULL, *rb_time = NULL;
  json_t *recs = NULL, *rec;
  size_t i;
  int rc = 0;
  if (want < 0 || r->rollout == NULL) return 0;
  if (jread(r, &recs) != 0) return HF_EJOURNAL;
  json_array_foreach(recs, i, rec) {
    const char *step = json_string_value(json_object_get(rec, "step"));
    const char *state = json_string_value(json_object_get(rec, "state"));
    if (step == NULL || state == NULL) continue;
    if (strcmp(step, "rollback") == 0) {
      rb_state = state;
      rb_time = json_string_value(json_object_get(rec, "time"));
      continue;
    }
    if (strcmp(state, "done") == 0 && step_rank(step) >= 0) last = step_rank(step);
  }
  if (rb_state != NULL) {
    snprintf(r->msg, sizeof r->msg, "stale request: rollout %s was rolled back on this host (rollback %s at %s); "
             "not running %s: start a new rollout", r->rollout, rb_state, rb_time ? rb_time : "?", r->op);
    rc = HF_ESTATE;
  } else if (last != want && last != want - 1) {
    snprintf(r->msg, sizeof r->msg, "stale request: %s runs after %s, but the last step the journal of rollout %s "
             "shows completed is %s; not running %s", r->op, want > 0 ? procedure[want - 1] : "nothing",
             r->rollout, last >= 0 ? procedure[last] : "none", r->op);
    rc = HF_ESTATE;
  }
  json_decref(recs);
  return rc;
}

/* The agent's own directories checked before an op trusts or writes them
 * (docs/security.md): owned by the agent's user, not writable by others. */
static int check_dirs(struct hf_req *r, const char *op, bool create) {
  int rc;
  if ((rc = hf_sf_private_dir(r->hub.state_dir, create, "state directory", r->msg, sizeof r->msg)) != 0) return rc;
  if (strcmp(op, "backup") == 0 || strcmp(op, "rollback") == 0)
    rc = hf_sf_private_dir(r->hub.backup_dir, strcmp(op, "backup") == 0, "backup directory", r->msg, sizeof r->msg);
  return rc;
}

static int host_lock(struct hf_req *r, int *fdp) {
  char path[PATH_MAX], pid[32];
  int64_t deadline = hf__now_ms() + hf__left_ms(r);
  bool told = false;
  char err[1024];
  int fd;

  *fdp = -1;
  /* The state directory was checked (hf_sf_private_dir) by the dispatch. The
   * lock is never followed through a symlink nor truncated before it is ours. */
  if (hf__pathf(path, sizeof path, "%s/agent.lock", r->hub.state_dir) != 0) return HF_EBADARG;
  fd = hf_sf_open_own(path, 0600, false, false, NULL, err, sizeof err);
  if (fd < 0) {
    snprintf(r->msg, sizeof r->msg, "cannot open the host lock: %s", err);
    return HF_EJOURNAL;
  }
  while (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK && errno != EINTR) {
      close(fd);
      snprintf(r->msg, sizeof r->msg, "cannot lock %s: %s", path, strerror(errno));
      return HF_EJOURNAL;
    }
    if (!told) {
      hf__event(r, "warn", "another agent (pid %d) is changing this hub; waiting for it", lock_holder(fd));
      told = true;
    }
    if (hf__now_ms() >= deadline) {
      snprintf(r->msg, sizeof r->msg, "another agent (pid %d) is still changing this hub; try again later",
               lock_holder(fd));
      close(fd);
      return HF_ESTATE;
    }
    if (controller_gone(r)) {
      /* Whoever sent this is gone; a newer controller decides from the
       * journal. Running it later could undo that controller's work. */
      snprintf(r->msg, sizeof r->msg, "the controller that sent %s is gone; not running it", r->op);
      close(fd);
      return HF_ECANCELED;
    }
    usleep(200000);
  }
  snprintf(pid, sizeof pid, "%d\n", hf__agent_pid());
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, strlen(pid), 0) < 0) { /* the pid is only informative */ }
  *fdp = fd;
  return 0;
}

int hf__op_dispatch(struct hf_req *r, json_t **data) {
  const struct op_entry *e;
  const json_t *to;
  int rc, lockfd = -1;

  *data = NULL;
  for (e = ops; e->name; e++)
    if (strcmp(e->name, r->op) == 0) break;
  if (e->name == NULL) {
    snprintf(r->msg, sizeof r->msg, "operation %.64s is not implemented by this agent", r->op);
    return HF_EUNKNOWNOP;
  }
  /* The state check before every handler: the arguments it relies on. */
  if ((rc = hf_hub_parse(json_object_get(r->args, "hub"), &r->hub, r->msg, sizeof r->msg)) != 0) return rc;
  r->rollout = json_string_value(json_object_get(r->args, "rollout"));
  r->target = json_string_value(json_object_get(r->args, "target"));
  if (e->needs_rollout && (r->rollout == NULL || !hf_valid_id(r->rollout))) {
    snprintf(r->msg, sizeof r->msg, "args.rollout: %s needs a rollout id", e->name);
    return HF_EBADARG;
  }
  if (e->needs_target && (r->target == NULL || !hf_valid_version(r->target))) {
    snprintf(r->msg, sizeof r->msg, "args.target: %s needs a PEP 440 version", e->name);
    return HF_EBADARG;
  }
  to = json_object_get(r->args, "timeout_ms");
  r->timeout_ms = json_is_integer(to) && json_integer_value(to) > 0 ? json_integer_value(to) : e->default_timeout_ms;
  if (r->timeout_ms > 24 * 3600 * 1000) r->timeout_ms = 24 * 3600 * 1000;
  r->deadline_ms = hf__now_ms() + r->timeout_ms;
  /* become: the whole request runs as root in this binary under sudo -n
   * (the hub's files, its database and its service are root's). */
  if (r->hub.become && geteuid() != 0) return hf__become_relay(r, data);
  if (strcmp(e->name, "facts") != 0 &&
      (rc = check_dirs(r, e->name, e->changes || strcmp(e->name, "preflight") == 0)) != 0)
    return rc;
  if ((*data = json_object()) == NULL) return HF_ENOMEM;
  if (strcmp(e->name, "health") == 0 && (rc = refuse_stale(r)) != 0) return rc;
  if (e->changes) {
    /* Who does the work: lets an operator (or a test) find this process. */
    hf__event(r, "debug", "agent pid %d: %s for rollout %s", hf__agent_pid(), e->name, r->rollout);
    if ((rc = host_lock(r, &lockfd)) != 0) return rc;
    if ((rc = refuse_stale(r)) != 0) { close(lockfd); return rc; }
  }
  rc = e->fn(r, *data);
  if (lockfd >= 0) close(lockfd); /* releases the lock */
  return rc;
}
