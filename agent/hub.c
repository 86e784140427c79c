/* hub.c: the hub description turned into typed fields, and the commands that act on a hub
 * (supervisor start/stop/status, installers) built as argv arrays from validated data only. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_sha256.h"
#include "hub.h"

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
    /* One directory per hub, named for its config path: several hubs under
     * one login (one machine, or NFS homes on a cluster) never share a
     * journal, a lock or backups, whatever the inventory says. */
    char key[HF_SHA256_HEX];
    hf_sha256_hex(h->config, strlen(h->config), key);
    key[16] = '\0';
    home = getenv("HOME");
    if (home == NULL || !hf_valid_abspath(home) ||
        hf__pathf(h->state_dir, sizeof h->state_dir, "%s/.local/state/hubfleet/hub-%s", home, key) != 0) {
      snprintf(err, errlen, "args.hub.state_dir: not given and $HOME is not an absolute path");
      return HF_EBADARG;
    }
  }
  if (str(hub, "backup_dir") != NULL) snprintf(h->backup_dir, sizeof h->backup_dir, "%s", str(hub, "backup_dir"));
  else if (hf__pathf(h->backup_dir, sizeof h->backup_dir, "%s/backups", h->state_dir) != 0) return HF_EBADARG;
  return 0;
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
  if (r->hub.become) {
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
};

static void on_line(void *ud, int stream, const char *line) {
  struct line_ctx *c = ud;
  if (c->quiet) return;
  hf__event(c->r, stream == 2 ? "warn" : "info", "%s: %s", c->tag, line);
}

int hf__cmd(struct hf_req *r, struct hf_argv *a, const char *cwd, const char *path_prefix,
            char *const *extra_env, int64_t timeout_ms, const char *tag, bool quiet, char **out) {
  struct hf_run run;
  struct line_ctx c = { r, tag, quiet };
  char shown[1024];
  size_t o = 0;
  int i, rc;

  if (out) *out = NULL;
  if ((rc = hf_argv_error(a)) != 0) {
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
    hf_argv_push(a, strcmp(verb, "status") == 0 ? "is-active" : verb);
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

int hf__svc_status(struct hf_req *r, bool *running, char *state, size_t statelen) {
  struct hf_argv a;
  char *out = NULL, word[64] = "";
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
  rc = hf__cmd(r, &a, NULL, NULL, NULL, 15000, "status", true, &out);
  hf_argv_free(&a);
  if (rc == HF_EEXEC || rc == HF_ETIMEDOUT) { free(out); return rc; }
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
  if (r->hub.svc == HF_SVC_SUPERVISORD && out != NULL &&
      (strstr(out, "no such file") != NULL || strstr(out, "refused connection") != NULL)) {
    free(out);
    snprintf(r->msg, sizeof r->msg, "supervisord is not running (supervisorctl cannot reach it)");
    snprintf(state, statelen, "supervisord-down");
    return HF_ECMD;
  }
  free(out);
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

/* Waits until the service is (want=true) or is not running, bounded. */
static int svc_wait(struct hf_req *r, bool want, int64_t deadline, char *state, size_t statelen) {
  for (;;) {
    bool running;
    int rc = hf__svc_status(r, &running, state, statelen);
    if (rc != 0) return rc;
    /* supervisord's STARTING is not up yet. */
    if (want && running && strcmp(state, "STARTING") != 0) return 0;
    if (!want && !running) return 0;
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
  /* supervisord's BACKOFF is "crashed, will retry": a retry in the middle of
   * a reinstall would start a half-installed hub, so it is stopped too. */
  if (!*was_running && strcmp(state, "BACKOFF") != 0) return 0;
  if ((rc = svc_argv(r, &a, "stop")) != 0) return rc;
  rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "stop", false, NULL);
  hf_argv_free(&a);
  if (rc != 0 && rc != HF_ECMD) return rc;
confirm:
  /* A failed stop command may still have stopped it (or it was already
   * gone); the status decides. */
  if (svc_wait(r, false, deadline, state, sizeof state) != 0) {
    snprintf(r->msg, sizeof r->msg, "service %s still running after stop (state %s)", r->hub.svc_name, state);
    return HF_ECMD;
  }
  r->msg[0] = '\0';
  return 0;
}

int hf__svc_start(struct hf_req *r, bool *was_running) {
  struct hf_argv a;
  char state[64];
  int64_t deadline = hf__now_ms() + hf__left_ms(r);
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
  if ((rc = svc_argv(r, &a, "start")) != 0) return rc;
  rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "start", false, NULL);
  hf_argv_free(&a);
  if (rc != 0) {
    char keep[sizeof r->msg];
    snprintf(keep, sizeof keep, "%s", r->msg);
    hf__svc_status(r, was_running, state, sizeof state);
    snprintf(r->msg, sizeof r->msg, "service %s did not start (state %s): %s", r->hub.svc_name, state, keep);
    *was_running = false;
    return rc == HF_ECMD ? HF_ECMD : rc;
  }
  if (svc_wait(r, true, deadline, state, sizeof state) != 0) {
    snprintf(r->msg, sizeof r->msg, "service %s did not come up (state %s)", r->hub.svc_name, state);
    return HF_ECMD;
  }
  *was_running = false;
  return 0;
}
