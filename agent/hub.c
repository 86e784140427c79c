/* hub.c: the hub description turned into typed fields, and the commands that act on a hub
 * (supervisor start/stop/status, installers) built as argv arrays from validated data only. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hf_sha256.h"
#include "hub.h"
#include "prep.h"

static const char *str(const json_t *o, const char *k) {
  return json_string_value(json_object_get(o, k));
}

int hf_hub_parse(const json_t *hub, struct hf_hub *h, char *err, size_t errlen) {
  const json_t *v;
  const char *svc, *home;
  char *slash;
  size_t i;
  int r;

  memset(h, 0, sizeof *h);
  /* proto validated the shape already; check again here because this is
   * the last line before the values become argv elements and paths. */
  if ((r = hf_proto_hub_validate(hub, "args.hub", err, errlen)) != 0) return r;
  h->hub_env = str(hub, "hub_env");
  h->config = str(hub, "config");
  h->db_url = str(hub, "db");
  if (!h->hub_env || !h->config || !h->db_url) {
    snprintf(err, errlen, "args.hub: hub_env, config and db are required");
    return HF_EBADARG;
  }
  v = json_object_get(hub, "user_envs");
  if (json_array_size(v) > HF_MAX_ENVS) {
    snprintf(err, errlen, "args.hub.user_envs: at most %d environments", HF_MAX_ENVS);
    return HF_EBADARG;
  }
  for (i = 0; i < json_array_size(v); i++) {
    const char *p = json_string_value(json_array_get(v, i));
    if (p == NULL || !hf_valid_abspath(p)) {
      snprintf(err, errlen, "args.hub.user_envs[%zu]: expected an absolute path", i);
      return HF_EBADARG;
    }
    h->user_envs[h->n_user_envs++] = p;
  }
  snprintf(h->config_dir, sizeof h->config_dir, "%s", h->config);
  slash = strrchr(h->config_dir, '/');
  if (slash == NULL) return HF_EBADARG;
  if (slash == h->config_dir) slash[1] = '\0'; else *slash = '\0';
  r = hf_db_sqlite_path(h->db_url, h->db_path, sizeof h->db_path);
  if (r == 0) h->sqlite = true;
  else if (r != HF_EUNSUPPORTED) {
    snprintf(err, errlen, "args.hub.db: expected sqlite:////ABSOLUTE/PATH");
    return HF_EBADARG;
  }
  h->db_dump = json_object_get(hub, "db_dump");
  svc = str(hub, "service");
  if (svc == NULL) return HF_EBADARG;
  if (strncmp(svc, "systemd:", 8) == 0) { h->svc = HF_SVC_SYSTEMD; h->svc_name = svc + 8; }
  else if (strncmp(svc, "supervisord:", 12) == 0) { h->svc = HF_SVC_SUPERVISORD; h->svc_name = svc + 12; }
  else if (strncmp(svc, "docker:", 7) == 0) { h->svc = HF_SVC_DOCKER; h->svc_name = svc + 7; }
  else if (strcmp(svc, "command") == 0) { h->svc = HF_SVC_COMMAND; h->svc_name = "command"; }
  else {
    snprintf(err, errlen, "args.hub.service: expected systemd:NAME, supervisord:NAME, docker:NAME or command");
    return HF_EBADARG;
  }
  if (h->svc != HF_SVC_COMMAND && !hf_valid_service_name(h->svc_name)) {
    snprintf(err, errlen, "args.hub.service: the service name is not a valid name");
    return HF_EBADARG;
  }
  h->supervisor_config = str(hub, "supervisor_config");
  h->start_argv = json_object_get(hub, "start");
  h->stop_argv = json_object_get(hub, "stop");
  if (h->svc == HF_SVC_COMMAND && (!json_is_array(h->start_argv) || !json_is_array(h->stop_argv))) {
    snprintf(err, errlen, "args.hub: service \"command\" needs start and stop argv arrays");
    return HF_EBADARG;
  }
  h->health_url = str(hub, "health_url");
  if (h->health_url == NULL) h->health_url = "http://127.0.0.1:8000";
  h->hub_log = str(hub, "hub_log");
  h->installer = str(hub, "installer");
  if (h->installer == NULL) h->installer = "auto";
  h->index_url = str(hub, "index_url");
  h->find_links = str(hub, "find_links");
  h->extra_packages = json_object_get(hub, "extra_packages");
  h->report_packages = json_object_get(hub, "report_packages");
  h->backup_homes = json_object_get(hub, "backup_homes");
  h->become = json_is_true(json_object_get(hub, "become"));
  if (str(hub, "state_dir") != NULL) {
    snprintf(h->state_dir, sizeof h->state_dir, "%s", str(hub, "state_dir"));
  } else {
    /* No getpwuid in a static binary (it would need NSS modules): sshd
     * always sets HOME for the session. */
    /* One directory per hub, named for this machine and its config path:
     * several hubs under one login (one machine, or NFS homes shared by
     * cluster login nodes whose hubs all use /etc/jupyterhub/...) never
     * share a journal, a lock or backups, whatever the inventory says. */
    char key[HF_HUB_KEY_LEN + 1], mid[HF_MACHINE_ID_MAX];
    hf__hub_key(hf__machine_id(mid, sizeof mid), h->config, key);
    home = getenv("HOME");
    if (h->become && geteuid() == 0) {
      /* become: the agent runs as root (hf__become_relay), and root's files
       * live in root's place, out of the login's reach. */
      if (hf__pathf(h->state_dir, sizeof h->state_dir, "/var/lib/hubfleet/hub-%s", key) != 0) return HF_EBADARG;
    } else if (home == NULL || !hf_valid_abspath(home) ||
        hf__pathf(h->state_dir, sizeof h->state_dir, "%s/.local/state/hubfleet/hub-%s", home, key) != 0) {
      snprintf(err, errlen, "args.hub.state_dir: not given and $HOME is not an absolute path");
      return HF_EBADARG;
    }
  }
  if (str(hub, "backup_dir") != NULL) snprintf(h->backup_dir, sizeof h->backup_dir, "%s", str(hub, "backup_dir"));
  else if (hf__pathf(h->backup_dir, sizeof h->backup_dir, "%s/backups", h->state_dir) != 0) return HF_EBADARG;
  return 0;
}

const char *hf__machine_id(char *out, size_t outlen) {
  static const char *const files[] = { "/etc/machine-id", "/var/lib/dbus/machine-id" };
  size_t i;
  out[0] = '\0';
  for (i = 0; i < sizeof files / sizeof files[0]; i++) {
    char err[256];
    ssize_t n;
    size_t k;
    int fd = hf_sf_open_read_sys(files[i], err, sizeof err);
    if (fd < 0) continue;
    n = read(fd, out, outlen - 1);
    close(fd);
    out[n > 0 ? n : 0] = '\0';
    /* The first line, without surrounding white space (as $(cat FILE) gives it). */
    out[strcspn(out, "\r\n")] = '\0';
    for (k = 0; out[k] == ' ' || out[k] == '\t'; k++) {}
    memmove(out, out + k, strlen(out + k) + 1);
    for (k = strlen(out); k > 0 && (out[k - 1] == ' ' || out[k - 1] == '\t'); k--) out[k - 1] = '\0';
    if (out[0] != '\0') return out;
  }
  return NULL;
}

void hf__hub_key(const char *machine_id, const char *config, char key[HF_HUB_KEY_LEN + 1]) {
  char hex[HF_SHA256_HEX];
  if (machine_id == NULL || machine_id[0] == '\0') {
    hf_sha256_hex(config, strlen(config), hex);
  } else {
    struct hf_sha256 c;
    unsigned char d[HF_SHA256_LEN];
    hf_sha256_init(&c);
    hf_sha256_update(&c, machine_id, strlen(machine_id));
    hf_sha256_update(&c, "\n", 1);
    hf_sha256_update(&c, config, strlen(config));
    hf_sha256_final(&c, d);
    hf_sha256_tohex(d, hex);
  }
  memcpy(key, hex, HF_HUB_KEY_LEN);
  key[HF_HUB_KEY_LEN] = '\0';
}

const char *hf__which(const char *prog, char *out, size_t outlen) {
  static const char *const dirs[] = { "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin",
                                      "/sbin", "/bin", "/opt/conda/bin", NULL };
  int i;
  for (i = 0; dirs[i]; i++) {
    if (hf__pathf(out, outlen, "%s/%s", dirs[i], prog) == 0 && access(out, X_OK) == 0) return out;
  }
  out[0] = '\0';
  return NULL;
}

void hf__argv_start(struct hf_req *r, struct hf_argv *a) {
  char self[PATH_MAX];
  ssize_t n;
  hf_argv_init(a);
  /* Under become the request already runs as root (hf__become_relay): its
   * commands need no second sudo. */
  if (r->hub.become && geteuid() != 0) {
    hf_argv_push(a, "/usr/bin/sudo");
    hf_argv_push(a, "-n");
    hf_argv_push(a, "--");
    /* The command dies with this agent (hf_watchdog_main): the agent's own
     * binary watches it on the far side of sudo. */
    n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n > 0 && self[0] == '/' && (size_t)n < sizeof self - 1) {
      self[n] = '\0';
      hf_argv_push(a, self);
      hf_argv_push(a, "--watch");
      hf_argv_pushf(a, "%d", (int)getpid());
      hf_argv_pushf(a, "%llu", hf__self_start());
      hf_argv_push(a, "--");
    } else {
      a->error = HF_EEXEC; /* never run a root command that could outlive us */
    }
  }
}

struct line_ctx {
  struct hf_req *r;
  const char *tag;
  bool quiet;
  char *so;             /* stdout only (cmd_run's so_out), or NULL */
  size_t so_len, so_cap;
};

static void on_line(void *ud, int stream, const char *line) {
  struct line_ctx *c = ud;
  if (c->so != NULL && stream == 1) {
    /* A status is read from stdout alone: sudo's and the tool's warnings
     * ("unable to resolve host") go to stderr. */
    size_t l = strlen(line);
    if (c->so_len + l + 2 <= c->so_cap) {
      memcpy(c->so + c->so_len, line, l);
      c->so_len += l;
      c->so[c->so_len++] = '\n';
      c->so[c->so_len] = '\0';
    }
  }
  if (c->quiet) return;
  hf__event(c->r, stream == 2 ? "warn" : "info", "%s: %s", c->tag, line);
}

static int cmd_run(struct hf_req *r, struct hf_argv *a, const char *cwd, const char *path_prefix,
                   char *const *extra_env, int64_t timeout_ms, const char *tag, bool quiet, char **out,
                   char **so_out);

int hf__cmd(struct hf_req *r, struct hf_argv *a, const char *cwd, const char *path_prefix,
            char *const *extra_env, int64_t timeout_ms, const char *tag, bool quiet, char **out) {
  return cmd_run(r, a, cwd, path_prefix, extra_env, timeout_ms, tag, quiet, out, NULL);
}

int hf__cmd_stdout(struct hf_req *r, struct hf_argv *a, int64_t timeout_ms, const char *tag, char **so) {
  return cmd_run(r, a, NULL, NULL, NULL, timeout_ms, tag, true, NULL, so);
}

static int cmd_run(struct hf_req *r, struct hf_argv *a, const char *cwd, const char *path_prefix,
                   char *const *extra_env, int64_t timeout_ms, const char *tag, bool quiet, char **out,
                   char **so_out) {
  struct hf_run run;
  struct line_ctx c = { r, tag, quiet, NULL, 0, 0 };
  char shown[1024];
  size_t o = 0;
  int i, rc;

  if (out) *out = NULL;
  if (so_out) {
    *so_out = NULL;
    c.so_cap = 16384;
    if ((c.so = malloc(c.so_cap)) == NULL) return HF_ENOMEM;
    c.so[0] = '\0';
  }
  if ((rc = hf_argv_error(a)) != 0) {
    free(c.so);
    snprintf(r->msg, sizeof r->msg, "%s: command line too long", tag);
    return rc;
  }
  /* Show exactly what runs, element by element. */
  for (i = 0; i < a->n && o + 4 < sizeof shown; i++) {
    int n = snprintf(shown + o, sizeof shown - o, "%s%s", i ? " " : "", a->v[i]);
    if (n < 0) break;
    o += (size_t)n;
  }
  if (o >= sizeof shown) o = sizeof shown - 1;
  shown[o] = '\0';
  if (!quiet) hf__event(r, "info", "%s: run %s", tag, shown);
  memset(&run, 0, sizeof run);
  run.argv = a->v;
  run.cwd = cwd;
  run.path_prefix = path_prefix;
  run.extra_env = extra_env;
  run.timeout_ms = timeout_ms;
  run.foreground = timeout_ms <= HF_RUN_PROBE_MS;
  run.stdout_fd = -1;
  run.on_line = on_line;
  run.ud = &c;
  run.keep_max = 8192;
  rc = hf_run_exec(&run);
  if (rc == HF_EEXEC)
    snprintf(r->msg, sizeof r->msg, "%s: cannot run %s: %s", tag, a->v[0], strerror(run.status));
  else if (rc == HF_ETIMEDOUT)
    snprintf(r->msg, sizeof r->msg, "%s: %s did not finish within %lld ms and was killed", tag, a->v[0],
             (long long)timeout_ms);
  else if (rc != 0) {
    /* The last lines of output usually say why. */
    const char *tail = run.out_len > 1500 ? run.out + run.out_len - 1500 : run.out;
    size_t n;
    snprintf(r->msg, sizeof r->msg, "%s: %s exited with status %d: %s", tag, a->v[0], run.status, tail ? tail : "");
    n = strlen(r->msg);
    while (n > 0 && (r->msg[n - 1] == '\n' || r->msg[n - 1] == ' ')) r->msg[--n] = '\0';
  }
  if (out && run.out) { *out = run.out; run.out = NULL; }
  if (so_out) *so_out = c.so;
  hf_run_free(&run);
  return rc;
}

/* ---- service manager ---------------------------------------------------------------- */

const char *hf__svc_kind_name(enum hf_svc_kind k) {
  switch (k) {
  case HF_SVC_SYSTEMD: return "systemd";
  case HF_SVC_SUPERVISORD: return "supervisord";
  case HF_SVC_DOCKER: return "docker";
  case HF_SVC_COMMAND: return "command";
  }
  return "unknown";
}

/* Starts the argv of a service-manager command with its fixed prefix. */
static int svc_argv(struct hf_req *r, struct hf_argv *a, const char *verb) {
  char tool[PATH_MAX];
  hf__argv_start(r, a);
  switch (r->hub.svc) {
  case HF_SVC_SUPERVISORD:
    if (!hf__which("supervisorctl", tool, sizeof tool)) goto missing;
    hf_argv_push(a, tool);
    if (r->hub.supervisor_config) { hf_argv_push(a, "-c"); hf_argv_push(a, r->hub.supervisor_config); }
    hf_argv_push(a, verb);
    hf_argv_push(a, r->hub.svc_name);
    return 0;
  case HF_SVC_SYSTEMD:
    if (!hf__which("systemctl", tool, sizeof tool)) goto missing;
    hf_argv_push(a, tool);
    if (strcmp(verb, "status") == 0) {
      /* Key=value lines: a unit restarting after a crash is "activating"
       * to is-active, "activating/auto-restart" here. */
      hf_argv_push(a, "show");
      hf_argv_push(a, "--property=LoadState,ActiveState,SubState,Result,NRestarts");
    } else {
      hf_argv_push(a, verb);
    }
    hf_argv_push(a, "--");
    hf_argv_push(a, r->hub.svc_name);
    return 0;
  case HF_SVC_DOCKER:
    if (!hf__which("docker", tool, sizeof tool)) goto missing;
    hf_argv_push(a, tool);
    if (strcmp(verb, "status") == 0) {
      hf_argv_push(a, "inspect");
      hf_argv_push(a, "--format");
      hf_argv_push(a, "{{.State.Running}}");
    } else {
      hf_argv_push(a, verb);
    }
    hf_argv_push(a, "--");
    hf_argv_push(a, r->hub.svc_name);
    return 0;
  case HF_SVC_COMMAND: {
    const json_t *v = strcmp(verb, "start") == 0 ? r->hub.start_argv : r->hub.stop_argv;
    size_t i;
    for (i = 0; i < json_array_size(v); i++) hf_argv_push(a, json_string_value(json_array_get(v, i)));
    return 0;
  }
  }
missing:
  hf_argv_free(a);
  snprintf(r->msg, sizeof r->msg, "service %s: the %s tool is not installed on this host",
           r->hub.svc_name, hf__svc_kind_name(r->hub.svc));
  return HF_EUNSUPPORTED;
}

/* The value of KEY= in systemctl show's output, into out. */
static void show_value(const char *text, const char *key, char *out, size_t outlen) {
  size_t kl = strlen(key);
  const char *p = text;
  out[0] = '\0';
  while (p && *p) {
    const char *e = strchr(p, '\n');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l > kl && strncmp(p, key, kl) == 0 && p[kl] == '=') {
      snprintf(out, outlen, "%.*s", (int)(l - kl - 1), p + kl + 1);
      return;
    }
    p = e ? e + 1 : NULL;
  }
}

/* systemd's view of the unit from `systemctl show` (stdout only). */
static int systemd_state(struct hf_req *r, const char *out, bool *running, char *state, size_t statelen) {
  char load[32], active[32], sub[32], result[32], restarts[24];
  show_value(out, "NRestarts", restarts, sizeof restarts);
  show_value(out, "LoadState", load, sizeof load);
  show_value(out, "ActiveState", active, sizeof active);
  show_value(out, "SubState", sub, sizeof sub);
  show_value(out, "Result", result, sizeof result);
  if (active[0] == '\0') {
    snprintf(r->msg, sizeof r->msg, "systemctl show %s printed no ActiveState", r->hub.svc_name);
    return HF_ECMD;
  }
  if (strcmp(load, "not-found") == 0) {
    snprintf(state, statelen, "not-found");
    snprintf(r->msg, sizeof r->msg, "unit %s is not known to systemd (LoadState=not-found)", r->hub.svc_name);
    return HF_ENOTFOUND;
  }
  /* Crashed and waiting to be restarted is not up. */
  *running = strcmp(active, "active") == 0 || strcmp(active, "reloading") == 0 ||
             (strcmp(active, "activating") == 0 && strcmp(sub, "auto-restart") != 0);
  /* systemd restarted it since our start: a crash, even when "active" now. */
  if (strcmp(active, "active") == 0 && atoi(restarts) > 0) snprintf(state, statelen, "active, restarted %dx", atoi(restarts));
  else if (strcmp(active, "active") == 0 || strcmp(active, "inactive") == 0) snprintf(state, statelen, "%s", active);
  else if (strcmp(active, "failed") == 0) snprintf(state, statelen, "failed (%s)", result);
  else snprintf(state, statelen, "%s/%s", active, sub);
  return 0;
}

int hf__svc_status(struct hf_req *r, bool *running, char *state, size_t statelen) {
  struct hf_argv a;
  char *out = NULL, *all = NULL, word[64] = "";
  int rc;

  *running = false;
  snprintf(state, statelen, "unknown");
  if (r->hub.svc == HF_SVC_COMMAND) {
    /* Only the health URL can tell: anything that answers HTTP is "up". */
    struct hf_http_resp resp;
    rc = hf_http_get(r->hub.health_url, "/hub/health", 1000, &resp);
    hf_http_resp_free(&resp);
    *running = rc == 0;
    snprintf(state, statelen, "%s", rc == 0 ? "answering" : "not answering");
    return 0;
  }
  if ((rc = svc_argv(r, &a, "status")) != 0) return rc;
  if (r->hub.svc == HF_SVC_SYSTEMD) {
    rc = hf__cmd_stdout(r, &a, 15000, "status", &out);
    hf_argv_free(&a);
    if (rc != 0) {
      char keep[sizeof r->msg];
      snprintf(keep, sizeof keep, "%s", r->msg);
      snprintf(r->msg, sizeof r->msg, "systemctl show %s: %s", r->hub.svc_name, keep);
      free(out);
      return rc;
    }
    r->msg[0] = '\0';
    rc = systemd_state(r, out, running, state, statelen);
    free(out);
    return rc;
  }
  /* The state word from stdout alone; supervisorctl's own complaints from
   * both streams. */
  rc = cmd_run(r, &a, NULL, NULL, NULL, 15000, "status", true, &all, &out);
  hf_argv_free(&a);
  if (rc == HF_EEXEC || rc == HF_ETIMEDOUT) { free(out); free(all); return rc; }
  r->msg[0] = '\0';
  if (out != NULL) {
    const char *p = out;
    if (r->hub.svc == HF_SVC_SUPERVISORD) {
      /* "NAME   RUNNING   pid 12, uptime 0:00:03" */
      while (*p && *p != ' ' && *p != '\t' && *p != '\n') p++;
    }
    while (*p == ' ' || *p == '\t') p++;
    sscanf(p, "%63s", word);
  }
  if (r->hub.svc == HF_SVC_SUPERVISORD && all != NULL &&
      (strstr(all, "no such file") != NULL || strstr(all, "refused connection") != NULL)) {
    free(out);
    free(all);
    snprintf(r->msg, sizeof r->msg, "supervisord is not running (supervisorctl cannot reach it)");
    snprintf(state, statelen, "supervisord-down");
    return HF_ECMD;
  }
  free(out);
  free(all);
  snprintf(state, statelen, "%s", word[0] ? word : "unknown");
  switch (r->hub.svc) {
  case HF_SVC_SUPERVISORD:
    *running = strcmp(word, "RUNNING") == 0 || strcmp(word, "STARTING") == 0;
    if (strcmp(word, "ERROR") == 0 || (strcmp(word, "no") == 0)) {
      snprintf(r->msg, sizeof r->msg, "service %s is not known to supervisord", r->hub.svc_name);
      return HF_ENOTFOUND;
    }
    if (word[0] == '\0') {
      snprintf(r->msg, sizeof r->msg, "supervisorctl gave no status for %s (is supervisord running?)", r->hub.svc_name);
      return HF_ECMD;
    }
    break;
  case HF_SVC_SYSTEMD:
    *running = strcmp(word, "active") == 0 || strcmp(word, "activating") == 0 || strcmp(word, "reloading") == 0;
    break;
  case HF_SVC_DOCKER:
    *running = strcmp(word, "true") == 0;
    break;
  case HF_SVC_COMMAND:
    break;
  }
  return 0;
}

char *hf__unit_journal(struct hf_req *r, int64_t since_us, int lines) {
  struct hf_argv a;
  char tool[PATH_MAX], msg[sizeof r->msg], *buf = NULL;
  if (!hf__which("journalctl", tool, sizeof tool)) return NULL;
  snprintf(msg, sizeof msg, "%s", r->msg); /* a failed read is no step's error */
  hf__argv_start(r, &a);
  hf_argv_push(&a, tool);
  hf_argv_push(&a, "--no-pager");
  hf_argv_push(&a, "--quiet");
  hf_argv_push(&a, "--output=cat");
  hf_argv_pushf(&a, "--lines=%d", lines);
  if (since_us < 0) since_us = 0;
  hf_argv_pushf(&a, "--since=@%lld.%06lld", (long long)(since_us / 1000000), (long long)(since_us % 1000000));
  hf_argv_pushf(&a, "--unit=%s", r->hub.svc_name);
  if (hf__cmd_stdout(r, &a, 10000, "journal", &buf) != 0) { free(buf); buf = NULL; }
  hf_argv_free(&a);
  snprintf(r->msg, sizeof r->msg, "%s", msg);
  return buf;
}

int64_t hf__wall_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void hf__unit_words(struct hf_req *r, int64_t since_us, char *out, size_t outlen) {
  char *j;
  size_t o = 0;
  const char *p;
  out[0] = '\0';
  if (r->hub.svc != HF_SVC_SYSTEMD) return;
  /* The last lines the unit wrote since this start: systemd's own
   * ("Main process exited, code=exited, status=1/FAILURE") and the hub's. */
  if ((j = hf__unit_journal(r, since_us, 6)) == NULL) return;
  for (p = j; *p && o + 8 < outlen;) {
    const char *e = strchr(p, '\n');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l > 0) {
      int n = snprintf(out + o, outlen - o, "%s%.*s", o ? " | " : "", (int)l, p);
      if (n < 0) break;
      o += (size_t)n < outlen - o ? (size_t)n : outlen - o - 1;
    }
    if (e == NULL) break;
    p = e + 1;
  }
  free(j);
}

/* Waits until the service is (want=true) or is not running, bounded. */
static int svc_wait(struct hf_req *r, bool want, int64_t deadline, char *state, size_t statelen) {
  for (;;) {
    bool running;
    int rc = hf__svc_status(r, &running, state, statelen);
    if (rc == 0) {
      /* supervisord's STARTING is not up yet. */
      if (want && running && strcmp(state, "STARTING") != 0) return 0;
      if (!want && !running) return 0;
    } else if (rc != HF_ETIMEDOUT || hf__now_ms() >= deadline) {
      return rc;
    }
    /* (A status command that did not answer in its 15 s, a loaded host's
     * supervisorctl: asked again while the step's deadline allows.) */
    if (hf__now_ms() >= deadline) return HF_ETIMEDOUT;
    usleep(200000);
  }
}

int hf__svc_stop(struct hf_req *r, bool *was_running) {
  struct hf_argv a;
  char state[64];
  int64_t deadline = hf__now_ms() + hf__left_ms(r);
  int rc;

  if (r->hub.svc == HF_SVC_SUPERVISORD) {
    /* One supervisorctl fewer inside the downtime (each is a Python start):
     * `stop` itself says whether the program ran ("NAME: stopped") or not
     * ("ERROR (not running)"), and stops a BACKOFF one too; the status
     * below still confirms. */
    char *out = NULL;
    if ((rc = svc_argv(r, &a, "stop")) != 0) return rc;
    rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "stop", false, &out);
    hf_argv_free(&a);
    *was_running = out != NULL && strstr(out, ": stopped") != NULL;
    free(out);
    if (rc != 0 && rc != HF_ECMD) return rc;
    goto confirm;
  }
  if ((rc = hf__svc_status(r, was_running, state, sizeof state)) != 0) return rc;
  /* supervisord's BACKOFF and systemd's auto-restart are "crashed, will
   * retry": a retry in the middle of a reinstall would start a
   * half-installed hub, so they are stopped too. */
  if (!*was_running && strcmp(state, "BACKOFF") != 0 && strstr(state, "auto-restart") == NULL) return 0;
  if ((rc = svc_argv(r, &a, "stop")) != 0) return rc;
  rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "stop", false, NULL);
  hf_argv_free(&a);
  if (rc != 0 && rc != HF_ECMD) return rc;
confirm:
  /* A failed stop command may still have stopped it (or it was already
   * gone); the status decides. */
  if ((rc = svc_wait(r, false, deadline, state, sizeof state)) != 0) {
    if (strcmp(state, "unknown") == 0) {
      /* The status never answered: say so, not "still running". */
      char why[sizeof r->msg];
      snprintf(why, sizeof why, "%s", r->msg[0] ? r->msg : hf_strerror(rc));
      snprintf(r->msg, sizeof r->msg, "service %s: its stop could not be confirmed (status: %s)", r->hub.svc_name, why);
    } else {
      snprintf(r->msg, sizeof r->msg, "service %s still running after stop (state %s)", r->hub.svc_name, state);
    }
    return HF_ECMD;
  }
  r->msg[0] = '\0';
  return 0;
}

int hf__svc_start(struct hf_req *r, bool *was_running) {
  struct hf_argv a;
  char state[64];
  int64_t deadline = hf__now_ms() + hf__left_ms(r), since;
  int rc;

  if (r->hub.svc == HF_SVC_SUPERVISORD) {
    /* One supervisorctl instead of three inside the downtime: `start`
     * returns once the program reached RUNNING (after its startsecs) and
     * says "NAME: started", or "ERROR (already started)". */
    char *out = NULL;
    if ((rc = svc_argv(r, &a, "start")) != 0) return rc;
    rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "start", false, &out);
    hf_argv_free(&a);
    *was_running = out != NULL && strstr(out, "already started") != NULL;
    if (*was_running || (rc == 0 && out != NULL && strstr(out, ": started") != NULL)) {
      free(out);
      r->msg[0] = '\0';
      return 0;
    }
    free(out);
    if (rc == HF_EEXEC || rc == HF_ETIMEDOUT) return rc;
    {
      char keep[sizeof r->msg];
      snprintf(keep, sizeof keep, "%s", rc != 0 ? r->msg : "supervisorctl did not confirm the start");
      hf__svc_status(r, was_running, state, sizeof state);
      snprintf(r->msg, sizeof r->msg, "service %s did not start (state %s): %s", r->hub.svc_name, state, keep);
      *was_running = false;
      return HF_ECMD;
    }
  }
  if ((rc = hf__svc_status(r, was_running, state, sizeof state)) != 0) return rc;
  if (*was_running) return 0;
  since = hf__wall_us() - 1000;
  if (r->hub.svc == HF_SVC_SYSTEMD) {
    /* A unit that crashed into its start limit ("Start request repeated too
     * quickly", e.g. the release just rolled back from) refuses every start
     * until reset: what an operator runs first. */
    if ((rc = svc_argv(r, &a, "reset-failed")) != 0) return rc;
    hf__cmd(r, &a, NULL, NULL, NULL, 15000, "start", true, NULL);
    hf_argv_free(&a);
    r->msg[0] = '\0';
  }
  if ((rc = svc_argv(r, &a, "start")) != 0) return rc;
  rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "start", false, NULL);
  hf_argv_free(&a);
  if (rc != 0) {
    char keep[sizeof r->msg], words[1500];
    snprintf(keep, sizeof keep, "%s", r->msg);
    hf__svc_status(r, was_running, state, sizeof state);
    hf__unit_words(r, since, words, sizeof words);
    snprintf(r->msg, sizeof r->msg, "service %s did not start (state %s): %s%s%s", r->hub.svc_name, state, keep,
             words[0] ? "; journal: " : "", words);
    *was_running = false;
    return rc == HF_ECMD ? HF_ECMD : rc;
  }
  if (svc_wait(r, true, deadline, state, sizeof state) != 0) {
    char words[1500];
    hf__unit_words(r, since, words, sizeof words);
    snprintf(r->msg, sizeof r->msg, "service %s did not come up (state %s)%s%s", r->hub.svc_name, state,
             words[0] ? "; journal: " : "", words);
    return HF_ECMD;
  }
  *was_running = false;
  return 0;
}

/* ---- become: one request run as root by this agent's own binary under sudo -n ------------ */

int hf__outer_pid;

int hf__agent_pid(void) {
  return hf__outer_pid > 0 ? hf__outer_pid : (int)getpid();
}

/* sudo -n says "a password is required" both when the rule wants one and
 * when no rule allows the command at all (it would authenticate before
 * telling). `sudo -n -l -- COMMAND` tells them apart: it exits 1 without a
 * word when rules exist (NOPASSWD ones) but none allows COMMAND. */
static bool sudo_refuses(const struct hf_argv *cmd) {
  struct hf_argv a;
  struct hf_run run;
  int rc, i;
  hf_argv_init(&a);
  hf_argv_push(&a, cmd->v[0]);
  hf_argv_push(&a, "-n");
  hf_argv_push(&a, "-l");
  for (i = 2; i < cmd->n; i++) hf_argv_push(&a, cmd->v[i]); /* "--" and the command */
  if (hf_argv_error(&a) != 0) { hf_argv_free(&a); return false; }
  memset(&run, 0, sizeof run);
  run.argv = a.v;
  run.timeout_ms = 10000;
  run.foreground = true;
  run.stdout_fd = -1;
  run.keep_max = 4096;
  rc = hf_run_exec(&run);
  rc = rc == HF_ECMD && run.status == 1 && (run.out == NULL || strstr(run.out, "password") == NULL);
  hf_run_free(&run);
  hf_argv_free(&a);
  return rc;
}

/* What sudo said on stderr, turned into the cause an operator can act on. */
static void sudo_cause(const struct hf_argv *cmd, const char *err, int status, char *out, size_t outlen) {
  char line[600];
  const char *user = getenv("USER") ? getenv("USER") : getenv("LOGNAME");
  hf__why_line(err, line, sizeof line);
  if (user == NULL || !hf_valid_service_name(user)) user = "the SSH login";
  if ((strstr(err, "password is required") || strstr(err, "a password")) && sudo_refuses(cmd))
    snprintf(out, outlen, "become: the sudoers rules refuse %s running the hubfleet agent (%s) as root "
             "(sudo -n -l: not allowed): grant it as in docs/sudoers.example", user, cmd->v[3]);
  else if (strstr(err, "password is required") || strstr(err, "a password"))
    snprintf(out, outlen, "become: sudo asks %s for a password (hubfleet runs sudo -n and never types one), or has "
             "no rule for %s: grant NOPASSWD for the agent binary (docs/sudoers.example)", user, user);
  else if (strstr(err, "terminal is required") || strstr(err, "requiretty"))
    snprintf(out, outlen, "become: sudo requires a terminal for %s (Defaults requiretty): "
             "add 'Defaults:%s !requiretty' (docs/sudoers.example)", user, user);
  else if (strstr(err, "not in the sudoers") || strstr(err, "not allowed to") || strstr(err, "Sorry, user") ||
           strstr(err, "may not run sudo"))
    snprintf(out, outlen, "become: the sudoers rules refuse %s running the hubfleet agent as root (sudo: %s); "
             "grant it as in docs/sudoers.example", user, line);
  else
    snprintf(out, outlen, "become: sudo -n exited with status %d before the agent answered: %s", status,
             line[0] ? line : "(no message)");
}

/* One stream being read from the sudo'd agent. */
struct relay_in {
  int fd;
  struct hf_frame_decoder d;
};

int hf__become_relay(struct hf_req *r, json_t **data) {
  char self[PATH_MAX], sudo[PATH_MAX], errbuf[4096];
  struct hf_argv a;
  struct relay_in out;
  json_t *req, *result = NULL;
  char *frame = NULL;
  size_t flen = 0, errlen = 0;
  int pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, perr[2] = { -1, -1 };
  int errfd, rc = 0, wst = 0, status = -1;
  bool hello = false, reaped = false, gone = false;
  int64_t deadline, killat = 0;
  ssize_t n;
  pid_t pid;

  *data = NULL;
  errbuf[0] = '\0';
  memset(&out, 0, sizeof out);
  out.fd = -1;
  if (!hf__which("sudo", sudo, sizeof sudo)) {
    snprintf(r->msg, sizeof r->msg, "become: sudo is not installed on this host (none in /usr/local/sbin, "
             "/usr/local/bin, /usr/sbin, /usr/bin, /sbin, /bin): install sudo, or drive this hub as a login that "
             "owns its files (hubfleet_become=false)");
    return HF_EEXEC;
  }
  n = readlink("/proc/self/exe", self, sizeof self - 1);
  if (n <= 0 || self[0] != '/' || (size_t)n >= sizeof self - 1) {
    snprintf(r->msg, sizeof r->msg, "become: cannot find this agent's own binary (/proc/self/exe)");
    return HF_EEXEC;
  }
  self[n] = '\0';
  /* sudo -n -- AGENT --watch PID START -- AGENT --become PID: the request
   * runs as root in this same binary, and dies with this agent. */
  hf_argv_init(&a);
  hf_argv_push(&a, sudo);
  hf_argv_push(&a, "-n");
  hf_argv_push(&a, "--");
  hf_argv_push(&a, self);
  hf_argv_push(&a, "--watch");
  hf_argv_pushf(&a, "%d", (int)getpid());
  hf_argv_pushf(&a, "%llu", hf__self_start());
  hf_argv_push(&a, "--");
  hf_argv_push(&a, self);
  hf_argv_push(&a, "--become");
  hf_argv_pushf(&a, "%d", hf__agent_pid());
  req = hf_msg_request(r->id, r->op, json_deep_copy(r->args));
  if (hf_argv_error(&a) != 0 || req == NULL || hf_frame_encode(req, &frame, &flen) != 0) {
    json_decref(req);
    hf_argv_free(&a);
    snprintf(r->msg, sizeof r->msg, "become: cannot build the request for the sudo'd agent");
    return HF_ENOMEM;
  }
  json_decref(req);
  if (pipe2(pin, O_CLOEXEC) != 0 || pipe2(pout, O_CLOEXEC) != 0 || pipe2(perr, O_CLOEXEC) != 0 ||
      (pid = fork()) < 0) {
    snprintf(r->msg, sizeof r->msg, "become: cannot start sudo: %s", strerror(errno));
    rc = HF_EEXEC;
    goto out;
  }
  if (pid == 0) {
    static char *const envp[] = { "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                  "LANG=C.UTF-8", "LC_ALL=C.UTF-8", NULL };
    setpgid(0, 0);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    dup2(pin[0], 0);
    dup2(pout[1], 1);
    dup2(perr[1], 2);
    execve(a.v[0], a.v, envp);
    _exit(127);
  }
  setpgid(pid, pid);
  close(pin[0]); close(pout[1]); close(perr[1]);
  pin[0] = pout[1] = perr[1] = -1;
  hf__event(r, "debug", "become: %s runs as root: %s -n -- %s --become", r->op, sudo, self);
  /* The request, then the pipe stays open: the sudo'd agent takes its
   * closing as "the controller is gone". */
  {
    size_t off = 0;
    while (off < flen) {
      ssize_t w = write(pin[1], frame + off, flen - off);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) break; /* it died before reading: its exit says why */
      off += (size_t)w;
    }
  }
  out.fd = pout[0];
  pout[0] = -1;
  errfd = perr[0];
  perr[0] = -1;
  hf_frame_decoder_init(&out.d, 0);
  /* The sudo'd agent keeps its own deadline (same timeout_ms); this one
   * only covers an agent that never answers. */
  deadline = r->deadline_ms + 15000;
  while (out.fd >= 0 || errfd >= 0) {
    struct pollfd p[3];
    int np = 0, i;
    int64_t now = hf__now_ms();
    if (now >= deadline && killat == 0) { kill(-pid, SIGTERM); killat = now + 3000; }
    if (killat && now >= killat) { kill(-pid, SIGKILL); killat = now + 3600000; }
    if (out.fd >= 0) { p[np].fd = out.fd; p[np].events = POLLIN; np++; }
    if (errfd >= 0) { p[np].fd = errfd; p[np].events = POLLIN; np++; }
    if (!gone) { p[np].fd = r->in_fd; p[np].events = POLLRDHUP; np++; }
    if (poll(p, (nfds_t)np, 200) < 0 && errno != EINTR) break;
    for (i = 0; i < np; i++) {
      char buf[8192];
      if (p[i].revents == 0) continue;
      if (p[i].fd == r->in_fd) {
        if (p[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) {
          /* Our controller is gone: so is the sudo'd agent's. */
          gone = true;
          if (pin[1] >= 0) { close(pin[1]); pin[1] = -1; }
        }
        continue;
      }
      n = read(p[i].fd, buf, sizeof buf);
      if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
      if (n <= 0) {
        if (p[i].fd == out.fd) out.fd = -1; else errfd = -1;
        close(p[i].fd);
        continue;
      }
      if (p[i].fd == errfd) {
        size_t k = (size_t)n < sizeof errbuf - 1 - errlen ? (size_t)n : sizeof errbuf - 1 - errlen;
        memcpy(errbuf + errlen, buf, k);
        errlen += k;
        errbuf[errlen] = '\0';
        continue;
      }
      {
        size_t off = 0;
        while (off < (size_t)n) {
          size_t used = 0;
          json_t *m = NULL;
          const char *t;
          if (hf_frame_feed(&out.d, buf + off, (size_t)n - off, &used, &m) != 0) {
            snprintf(r->msg, sizeof r->msg, "become: the sudo'd agent sent a bad frame: %s", out.d.detail);
            rc = HF_EPROTO;
            kill(-pid, SIGTERM);
            goto drain;
          }
          off += used;
          if (m == NULL) { if (used == 0) break; continue; }
          t = json_string_value(json_object_get(m, "type"));
          if (t && strcmp(t, "hello") == 0) hello = true;
          else if (t && strcmp(t, "event") == 0) hf__send(r, m), m = NULL;
          else if (t && strcmp(t, "result") == 0 && result == NULL) {
            result = m;
            m = NULL;
            /* Done: the sudo'd agent exits on the end of its input. */
            if (pin[1] >= 0) { close(pin[1]); pin[1] = -1; }
          }
          json_decref(m);
        }
      }
    }
  }
drain:
  if (pin[1] >= 0) { close(pin[1]); pin[1] = -1; }
  if (out.fd >= 0) { close(out.fd); out.fd = -1; }
  if (errfd >= 0) close(errfd);
  for (int64_t until = hf__now_ms() + 5000; !reaped;) {
    pid_t w = waitpid(pid, &wst, WNOHANG);
    if (w == pid || (w < 0 && errno != EINTR)) { reaped = w == pid; break; }
    if (hf__now_ms() >= until) { kill(-pid, SIGKILL); until = hf__now_ms() + 5000; }
    usleep(20000);
  }
  if (reaped) status = WIFEXITED(wst) ? WEXITSTATUS(wst) : 128 + (WIFSIGNALED(wst) ? WTERMSIG(wst) : 0);
  if (rc != 0) goto out;
  if (result != NULL) {
    if (json_is_true(json_object_get(result, "ok"))) {
      *data = json_incref(json_object_get(result, "data"));
      if (*data == NULL) *data = json_object();
      rc = 0;
    } else {
      const json_t *e = json_object_get(result, "error");
      rc = hf_err_from_code(json_string_value(json_object_get(e, "code")));
      snprintf(r->msg, sizeof r->msg, "%s", json_string_value(json_object_get(e, "message")) ?: hf_strerror(rc));
    }
  } else if (!hello) {
    sudo_cause(&a, errbuf, status, r->msg, sizeof r->msg);
    rc = HF_EEXEC;
  } else {
    char line[600];
    hf__why_line(errbuf, line, sizeof line);
    snprintf(r->msg, sizeof r->msg, "become: the sudo'd agent ended (status %d) without answering %s%s%s", status,
             r->op, line[0] ? ": " : "", line);
    rc = status == 137 || status == 143 ? HF_ECANCELED : HF_EIO;
  }
out:
  json_decref(result);
  hf_frame_decoder_free(&out.d);
  for (int k = 0; k < 2; k++) {
    if (pin[k] >= 0) close(pin[k]);
    if (pout[k] >= 0) close(pout[k]);
    if (perr[k] >= 0) close(perr[k]);
  }
  free(frame);
  hf_argv_free(&a);
  return rc;
}
