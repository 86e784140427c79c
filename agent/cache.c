/* cache.c: less downtime per hub: the target's packages fetched into a host-local cache before
 * the hub stops (so the install inside the downtime reads local files only), and the pip installs
 * of separate environments run side by side, each with its own log. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "prep.h"

/* The pins being fetched, as one string: the cache key and the marker's
 * content ("jupyterhub==V EXTRA==W ..."). */
static int pins_string(struct hf_req *r, char *out, size_t outlen) {
  size_t k, o;
  if (r->target == NULL || hf__pathf(out, outlen, "jupyterhub==%s", r->target) != 0) return HF_EINVAL;
  for (k = 0; k < json_array_size(r->hub.extra_packages); k++) {
    o = strlen(out);
    if (hf__pathf(out + o, outlen - o, " %s", json_string_value(json_array_get(r->hub.extra_packages, k))) != 0)
      return HF_EINVAL;
  }
  return 0;
}

/* STATE_DIR/cache/TARGET-SHA12: keyed by the target version and the pins. */
static int cache_dir(struct hf_req *r, char *out, size_t outlen) {
  char pins[4096];
  char hex[HF_SHA256_HEX];
  if (pins_string(r, pins, sizeof pins) != 0) return HF_EINVAL;
  hf_sha256_hex(pins, strlen(pins), hex);
  return hf__pathf(out, outlen, "%s/cache/jupyterhub-%s-%.12s", r->hub.state_dir, r->target, hex) == 0 ? 0 : HF_EINVAL;
}

/* Is the cache for r->target complete (its marker names exactly these pins)? */
static bool cache_ready(struct hf_req *r, char *dir, size_t dirlen) {
  char mark[PATH_MAX], pins[4096], buf[4096];
  ssize_t n;
  int fd;
  if (r->target == NULL || cache_dir(r, dir, dirlen) != 0 || pins_string(r, pins, sizeof pins) != 0) return false;
  if (hf__pathf(mark, sizeof mark, "%s/.complete", dir) != 0 || (fd = hf_sf_open_read(mark, buf, sizeof buf)) < 0) return false;
  n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n < 0) return false;
  buf[n] = '\0';
  return strcmp(buf, pins) == 0;
}

void hf__pip_cmd(struct hf_argv *a, const char *prefix, const char *subcmd) {
  hf_argv_pushf(a, "%s/bin/python", prefix);
  hf_argv_push(a, "-m");
  hf_argv_push(a, "pip");
  hf_argv_push(a, subcmd);
  hf_argv_push(a, "--no-input");
  hf_argv_push(a, "--disable-pip-version-check");
}

void hf__pip_install_cmd(struct hf_req *r, struct hf_argv *a, const char *prefix) {
  hf__pip_cmd(a, prefix, "install");
  hf_argv_push(a, "--upgrade");
  /* Byte-compiling every module of the release is half of pip's time
   * inside the downtime; Python compiles what it imports anyway (issue 7). */
  hf_argv_push(a, "--no-compile");
  if (hf__deps_satisfied(r, prefix)) hf_argv_push(a, "--no-deps"); /* preflight's dry run saw them satisfied */
  /* The host-local cache first when preflight filled it (issue 7). */
  hf__pip_source(r, a);
}

void hf__pip_source_configured(const struct hf_req *r, struct hf_argv *a) {
  if (r->hub.find_links) {
    hf_argv_push(a, "--no-index");
    hf_argv_push(a, "--find-links");
    hf_argv_push(a, r->hub.find_links);
  } else if (r->hub.index_url) {
    hf_argv_push(a, "--index-url");
    hf_argv_push(a, r->hub.index_url);
  }
}

/* Is the configured source a directory on this host holding jupyterhub==r->target's one wheel
 * (and no extra pins to fetch)? It is host-local already: nothing to copy. */
static bool local_source(struct hf_req *r) {
  char want[HF_VER_LEN + 16];
  struct stat st;
  struct dirent *de;
  DIR *d;
  int n = 0;
  if (r->target == NULL || r->hub.find_links == NULL || r->hub.find_links[0] != '/' ||
      json_array_size(r->hub.extra_packages) > 0 || stat(r->hub.find_links, &st) != 0 || !S_ISDIR(st.st_mode) ||
      (d = opendir(r->hub.find_links)) == NULL)
    return false;
  snprintf(want, sizeof want, "jupyterhub-%s", r->target);
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name), w = strlen(want);
    if (l <= w || strncasecmp(de->d_name, want, w) != 0) continue;
    if (de->d_name[w] == '-') n += (l > 4 && strcasecmp(de->d_name + l - 4, ".whl") == 0) ? 1 : 2;
    else if (strcasecmp(de->d_name + w, ".tar.gz") == 0 || strcasecmp(de->d_name + w, ".zip") == 0) n += 2;
  }
  closedir(d);
  return n == 1;   /* one wheel and no sdist of it: the file pip would take */
}

void hf__pip_source(struct hf_req *r, struct hf_argv *a) {
  char dir[PATH_MAX];
  /* The cache holds the named packages only (--no-deps): a dependency the
   * environment lacks still comes from the configured source, listed after it. */
  if (!local_source(r) && cache_ready(r, dir, sizeof dir)) { hf_argv_push(a, "--find-links"); hf_argv_push(a, dir); }
  hf__pip_source_configured(r, a);
}

int hf__cache_fetch(struct hf_req *r, const struct hf_env *hub, json_t *out) {
  char dir[PATH_MAX], tmp[PATH_MAX], mark[PATH_MAX], pins[4096];
  int64_t t0 = hf__now_ms();
  struct hf_argv a;
  int rc;
  size_t k;

  json_object_set_new(out, "dir", json_null());
  if (local_source(r)) {
    json_object_set_new(out, "dir", json_string(r->hub.find_links));
    json_object_set_new(out, "already", json_true());
    json_object_set_new(out, "local", json_true());
    json_object_set_new(out, "elapsed_ms", json_integer(hf__now_ms() - t0));
    return 0;
  }
  if (cache_ready(r, dir, sizeof dir)) {
    json_object_set_new(out, "dir", json_string(dir));
    json_object_set_new(out, "already", json_true());
    json_object_set_new(out, "elapsed_ms", json_integer(hf__now_ms() - t0));
    return 0;
  }
  if (cache_dir(r, dir, sizeof dir) != 0 || pins_string(r, pins, sizeof pins) != 0 ||
      hf__pathf(tmp, sizeof tmp, "%s.tmp-%d", dir, (int)getpid()) != 0) {
    snprintf(r->msg, sizeof r->msg, "cache path too long under %s", r->hub.state_dir);
    return HF_EBADARG;
  }
  /* Fetched into a private temporary folder and renamed into place, so a
   * cut fetch never looks like a cache. */
  hf_rm_tree(tmp);
  if (hf__mkdirs(tmp, 0700) != 0) {
    snprintf(r->msg, sizeof r->msg, "cannot create %s: %s", tmp, strerror(errno));
    return HF_EIO;
  }
  hf__argv_start(r, &a);
  hf__pip_cmd(&a, hub->prefix, "download");
  hf_argv_push(&a, "--no-deps");
  hf_argv_push(&a, "--dest");
  hf_argv_push(&a, tmp);
  hf__pip_source_configured(r, &a);
  hf_argv_pushf(&a, "jupyterhub==%s", r->target);
  for (k = 0; k < json_array_size(r->hub.extra_packages); k++)
    hf_argv_push(&a, json_string_value(json_array_get(r->hub.extra_packages, k)));
  rc = hf__cmd(r, &a, tmp, NULL, NULL, hf__left_ms(r), "cache", true, NULL);
  hf_argv_free(&a);
  if (rc != 0) { hf_rm_tree(tmp); return rc; }
  if (hf__pathf(mark, sizeof mark, "%s/.complete", tmp) != 0 ||
      hf_sf_write_file(mark, pins, strlen(pins), 0600, r->msg, sizeof r->msg) != 0) {
    hf_rm_tree(tmp);
    return HF_EIO;
  }
  hf_rm_tree(dir); /* an incomplete one left by a killed agent */
  if (rename(tmp, dir) != 0) {
    snprintf(r->msg, sizeof r->msg, "rename %s: %s", dir, strerror(errno));
    hf_rm_tree(tmp);
    return HF_EIO;
  }
  hf_fsync_parent(dir);
  json_object_set_new(out, "dir", json_string(dir));
  json_object_set_new(out, "already", json_false());
  json_object_set_new(out, "elapsed_ms", json_integer(hf__now_ms() - t0));
  return 0;
}

/* ---- dependencies already satisfied ------------------------------------------------ */

/* STATE_DIR/cache/nodeps-KEY: KEY from the environment's prefix and the pins. */
static int nodeps_marker(struct hf_req *r, const char *prefix, char *out, size_t outlen) {
  char pins[4096], key[PATH_MAX + 4200], hex[HF_SHA256_HEX];
  if (pins_string(r, pins, sizeof pins) != 0 || hf__pathf(key, sizeof key, "%s\n%s", prefix, pins) != 0) return HF_EINVAL;
  hf_sha256_hex(key, strlen(key), hex);
  return hf__pathf(out, outlen, "%s/cache/nodeps-%.16s", r->hub.state_dir, hex) == 0 ? 0 : HF_EINVAL;
}

/* Is name (not NUL-terminated, len bytes) one of the pins' package names? */
static bool is_pinned(struct hf_req *r, const char *name, size_t len) {
  char want[200], got[200];
  size_t k;
  hf_pep503(name, len, got, sizeof got);
  hf_pep503("jupyterhub", 10, want, sizeof want);
  if (strcmp(got, want) == 0) return true;
  for (k = 0; k < json_array_size(r->hub.extra_packages); k++) {
    const char *pin = json_string_value(json_array_get(r->hub.extra_packages, k)), *eq = pin ? strstr(pin, "==") : NULL;
    if (eq == NULL) continue;
    hf_pep503(pin, (size_t)(eq - pin), want, sizeof want);
    if (strcmp(got, want) == 0) return true;
  }
  return false;
}

void hf__deps_mark(struct hf_req *r, const char *prefix, bool satisfied) {
  char marker[PATH_MAX], dir[PATH_MAX], err[256];
  if (nodeps_marker(r, prefix, marker, sizeof marker) != 0) return;
  unlink(marker);
  if (!satisfied) return;
  if (hf__pathf(dir, sizeof dir, "%s/cache", r->hub.state_dir) != 0 || hf__mkdirs(dir, 0700) != 0) return;
  (void)hf_sf_write_file(marker, prefix, strlen(prefix), 0600, err, sizeof err);
}

void hf__deps_note(struct hf_req *r, const char *prefix, const char *dry_out) {
  const char *p, *end;
  /* pip's dry run: "Would install jupyterhub-3.1.0 oauthenticator-16.0.7" */
  if (dry_out == NULL || (p = strstr(dry_out, "Would install ")) == NULL) { hf__deps_mark(r, prefix, false); return; }
  p += 14;
  end = strchr(p, '\n');
  if (end == NULL) end = p + strlen(p);
  while (p < end) {
    const char *t = p, *dash = NULL;
    while (p < end && *p != ' ') { if (*p == '-') dash = p; p++; }
    if (p > t && (dash == NULL || !is_pinned(r, t, (size_t)(dash - t)))) { /* a dependency would change */
      hf__deps_mark(r, prefix, false);
      return;
    }
    while (p < end && *p == ' ') p++;
  }
  hf__deps_mark(r, prefix, true);
}

bool hf__deps_satisfied(struct hf_req *r, const char *prefix) {
  char marker[PATH_MAX];
  return r->target != NULL && nodeps_marker(r, prefix, marker, sizeof marker) == 0 && access(marker, F_OK) == 0;
}

/* ---- installs side by side --------------------------------------------------------- */

struct lane {
  const struct hf_env *e;
  pid_t pid;
  char  log[PATH_MAX];
  char  res[PATH_MAX];
  int   status;
  bool  done;
};

/* The child's side: one pip run, its lines into the log, its verdict into res. */
static void lane_line(void *ud, int stream, const char *line) {
  int fd = *(int *)ud;
  (void)!write(fd, stream == 2 ? "! " : "  ", 2);
  (void)!write(fd, line, strlen(line));
  (void)!write(fd, "\n", 1);
}

static void lane_child(struct hf_req *r, struct lane *l, const char *const *pins, int n, int64_t timeout,
                       pid_t parent) {
  struct hf_argv a;
  struct hf_run run;
  int fd, i, rc;
  char msg[2048], res_err[256];

  /* No frame may come from this process: the protocol belongs to the parent. */
  static bool dead = true;
  r->out_dead = &dead;
  /* Dies with the agent, as the runner's children do: a killed agent must
   * not leave an installer running beside the rollback a new agent starts. */
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent) _exit(1);
  fd = hf_sf_open_own(l->log, 0600, true, true, NULL, msg, sizeof msg);
  hf__argv_start(r, &a);
  hf__pip_install_cmd(r, &a, l->e->prefix);
  for (i = 0; i < n; i++) hf_argv_push(&a, pins[i]);
  if (fd >= 0) {
    for (i = 0; i < a.n; i++) {
      (void)!write(fd, i ? " " : "$ ", i ? 1 : 2);
      (void)!write(fd, a.v[i], strlen(a.v[i]));
    }
    (void)!write(fd, "\n", 1);
  }
  memset(&run, 0, sizeof run);
  run.argv = a.v;
  run.timeout_ms = timeout;
  run.stdout_fd = -1;
  run.on_line = fd >= 0 ? lane_line : NULL;
  run.ud = &fd;
  run.keep_max = 1500;
  rc = hf_argv_error(&a) ? hf_argv_error(&a) : hf_run_exec(&run);
  if (rc == 0) snprintf(msg, sizeof msg, "ok");
  else if (rc == HF_ETIMEDOUT) snprintf(msg, sizeof msg, "pip in %s did not finish within %lld ms and was killed",
                                        l->e->prefix, (long long)timeout);
  else if (rc == HF_EEXEC) snprintf(msg, sizeof msg, "cannot run %s: %s", a.v[0], strerror(run.status));
  else snprintf(msg, sizeof msg, "pip in %s exited with status %d: %s", l->e->prefix, run.status, run.out ? run.out : "");
  (void)hf_sf_write_file(l->res, msg, strlen(msg), 0600, res_err, sizeof res_err);
  if (fd >= 0) { fsync(fd); close(fd); }
  hf_run_free(&run);
  hf_argv_free(&a);
  _exit(rc == 0 ? 0 : rc == HF_ETIMEDOUT ? 3 : 1);
}

/* Does a contain b or b contain a as a path (one inside the other)? */
static bool nested(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b), l = la < lb ? la : lb;
  return strncmp(a, b, l) == 0 && (a[l] == '/' || b[l] == '/' || a[l] == b[l]);
}

int hf__install_prepass(struct hf_req *r, const char *step, const struct hf_env *envs, int nenv, json_t *want,
                        json_t *logs) {
  static struct lane lanes[HF_MAX_ENVS + 1]; /* large: not on the stack; one request at a time */
  char dir[PATH_MAX];
  static char pinbuf[HF_MAX_ENVS + 1][64][200];
  const char *pins[HF_MAX_ENVS + 1][64];
  int npins[HF_MAX_ENVS + 1];
  const struct hf_env *todo[HF_MAX_ENVS + 1];
  int64_t deadline = r->deadline_ms;
  int i, j, n = 0, started = 0, rc = 0;
  pid_t self;

  /* Which environments an install would change (the caller's loop skips
   * the rest, and verifies every one afterwards from the files). */
  for (i = 0; i < nenv && i <= HF_MAX_ENVS; i++) {
    json_t *p = json_object_get(want, envs[i].prefix), *v;
    const char *pkg, *names[64];
    char vers[64][HF_VER_LEN];
    int k = 0, m;
    bool same = true;
    if (!envs[i].exists) return 0;
    json_object_foreach(p, pkg, v) {
      if (!json_is_string(v) || k >= 64) continue;
      names[k] = pkg;
      snprintf(pinbuf[n][k], sizeof pinbuf[n][k], "%s==%s", pkg, json_string_value(v));
      if (!hf_valid_pkgpin(pinbuf[n][k])) return 0; /* the caller's loop refuses it with its message */
      pins[n][k] = pinbuf[n][k];
      k++;
    }
    hf_env_versions(&envs[i], names, k, vers);
    for (m = 0; m < k; m++)
      if (strcmp(vers[m], json_string_value(json_object_get(p, names[m]))) != 0) same = false;
    if (same || k == 0) continue;
    todo[n] = &envs[i];
    npins[n] = k;
    n++;
  }
  if (n < 2) return 0;
  /* Separate pip environments only: conda shares one package cache and lock
   * between its environments, and one prefix inside another shares files. */
  for (i = 0; i < n; i++) {
    if (strcmp(todo[i]->installer, "pip") != 0) return 0;
    for (j = 0; j < i; j++)
      if (nested(todo[i]->prefix, todo[j]->prefix)) return 0;
  }

  if (hf__pathf(dir, sizeof dir, "%s/logs/%s", r->hub.state_dir, r->rollout ? r->rollout : "none") != 0 ||
      hf__mkdirs(dir, 0700) != 0) {
    snprintf(r->msg, sizeof r->msg, "cannot create the install log folder under %s", r->hub.state_dir);
    return HF_EIO;
  }
  memset(lanes, 0, sizeof lanes);
  for (i = 0; i < n; i++) {
    lanes[i].e = todo[i];
    if (hf__pathf(lanes[i].log, sizeof lanes[i].log, "%s/%s-env%d.log", dir, step, i) != 0 ||
        hf__pathf(lanes[i].res, sizeof lanes[i].res, "%s/%s-env%d.result", dir, step, i) != 0) {
      snprintf(r->msg, sizeof r->msg, "log path too long under %s", dir);
      return HF_EBADARG;
    }
    unlink(lanes[i].res);
  }
  hf__event(r, "info", "%s: %d environments side by side (logs in %s)", step, n, dir);
  self = getpid();
  for (i = 0; i < n; i++) {
    pid_t pid = fork();
    if (pid < 0) {
      snprintf(r->msg, sizeof r->msg, "%s: fork: %s", step, strerror(errno));
      rc = HF_EEXEC;
      break;
    }
    if (pid == 0) lane_child(r, &lanes[i], pins[i], npins[i], deadline - hf__now_ms() > 1000 ? deadline - hf__now_ms() : 1000, self);
    lanes[i].pid = pid;
    started++;
  }
  /* Each child kills its pip at the deadline and exits within the runner's
   * grace; waiting is bounded by that, plus a margin for a stuck child. */
  for (;;) {
    int left = 0;
    for (i = 0; i < started; i++) {
      int st;
      pid_t w;
      if (lanes[i].done) continue;
      w = waitpid(lanes[i].pid, &st, WNOHANG);
      if (w == lanes[i].pid) {
        lanes[i].done = true;
        lanes[i].status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        hf__event(r, lanes[i].status == 0 ? "info" : "warn", "%s: %s finished (%s), log %s", step,
                  lanes[i].e->prefix, lanes[i].status == 0 ? "ok" : "failed", lanes[i].log);
      } else if (w < 0 && errno != EINTR) {
        lanes[i].done = true;
        lanes[i].status = 127;
      } else {
        left++;
      }
    }
    if (left == 0) break;
    if (hf__now_ms() > deadline + 10000)
      for (i = 0; i < started; i++) if (!lanes[i].done) kill(lanes[i].pid, SIGKILL);
    usleep(50000);
  }
  for (i = 0; i < started; i++) {
    json_t *o = json_object();
    json_object_set_new(o, "log", json_string(lanes[i].log));
    json_object_set_new(o, "ok", json_boolean(lanes[i].status == 0));
    if (logs) json_object_set_new(logs, lanes[i].e->prefix, o); else json_decref(o);
    if (lanes[i].status != 0 && rc == 0) {
      char buf[2048] = "";
      char oerr[256];
      int fd = hf_sf_open_read(lanes[i].res, oerr, sizeof oerr);
      ssize_t k = fd >= 0 ? read(fd, buf, sizeof buf - 1) : -1;
      if (fd >= 0) close(fd);
      buf[k > 0 ? k : 0] = '\0';
      snprintf(r->msg, sizeof r->msg, "%s: %s (log %s)", step, buf[0] ? buf : "pip failed", lanes[i].log);
      rc = lanes[i].status == 3 ? HF_ETIMEDOUT : HF_ECMD;
    }
  }
  return rc;
}
