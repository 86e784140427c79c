/* op_service.c: the hub's service: stop, start (until it answers) and health (its API, version and
 * log); the hub log scanning they share. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"
#include "hub.h"
#include "ops.h"
#include "probe.h"

/* ---- stop / start ------------------------------------------------------------------------------ */

int hf__op_stop(struct hf_req *r, json_t *data) {
  bool was;
  int rc;
  json_t *probe = NULL, *det;
  if ((rc = hf__need_backup(r, NULL)) != 0) return rc;
  /* The users' probe watches the servers through the proxy from before the
   * stop until health's verdict (probe.c). */
  hf__probe_begin(r, data, &probe);
  det = json_object();
  if (probe != NULL) json_object_set_new(det, "users_probe", probe);
  if ((rc = hf__jrec(r, "stop", "begin", det)) != 0) return rc;
  if ((rc = hf__svc_stop(r, &was)) != 0) return hf__fail_step(r, "stop", rc);
  det = json_object();
  json_object_set_new(det, "was_running", json_boolean(was));
  if ((rc = hf__jrec(r, "stop", "done", det)) != 0) return rc;
  json_object_set_new(data, "was_running", json_boolean(was));
  json_object_set_new(data, "stopped", json_true());
  return 0;
}

static void scan_log(struct hf_req *r, int64_t offset, json_t *errors, json_t *deprecations);

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
    json_t *v = hf__api_version(r->hub.health_url, 1000, &st);
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

int hf__op_start(struct hf_req *r, json_t *data) {
  bool was;
  int64_t off = hf__log_mark(r), ms = 0;
  json_t *det = json_object();
  int rc;
  /* Health scans the log from here: what this start wrote. */
  json_object_set_new(det, "log_offset", json_integer(off < 0 ? 0 : off));
  if ((rc = hf__jrec(r, "start", "begin", det)) != 0) return rc;
  if ((rc = hf__svc_start(r, &was)) != 0) return hf__fail_step(r, "start", rc);
  if ((rc = wait_answering(r, off < 0 ? 0 : off, &ms)) != 0) return hf__fail_step(r, "start", rc);
  det = json_object();
  json_object_set_new(det, "was_running", json_boolean(was));
  json_object_set_new(det, "answering_after_ms", json_integer(ms));
  json_object_set_new(data, "answering_after_ms", json_integer(ms));
  if ((rc = hf__jrec(r, "start", "done", det)) != 0) return rc;
  json_object_set_new(data, "running", json_true());
  json_object_set_new(data, "was_running", json_boolean(was));
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
int64_t hf__log_mark(struct hf_req *r) {
  if (r->hub.hub_log == NULL && r->hub.svc == HF_SVC_SYSTEMD) return hf__wall_us() - 1000;
  return hf__file_size(r->hub.hub_log);
}

/* The hub's log since mark (see hf__log_mark), new, *len bytes; NULL when there
 * is none. A systemd hub without hubfleet_hub_log: its journal,
 * `journalctl -u UNIT --since @SECONDS -o cat` (stdout only, bounded).
 * hubfleet_hub_log is read through the safe open only (hf_sf_open_read): a
 * symlink there (the hub's user could point it at a root-only file, whose
 * error lines health would report) or a FIFO (it would block the agent) is
 * refused, and *refused says so, naming the path. */
static char *log_since(struct hf_req *r, int64_t offset, size_t *len, char *refused, size_t refusedlen) {
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
  size = hf__file_size(r->hub.hub_log);
  if (r->hub.hub_log == NULL || size < 0) return NULL;
  if (offset > size) offset = 0; /* rotated or truncated: read what is there */
  if (size - offset > HF_LOG_MAX) offset = size - HF_LOG_MAX;
  if ((fd = hf_sf_open_read(r->hub.hub_log, refused, refusedlen)) < 0) {
    if (errno == ENOENT) refused[0] = '\0';
    return NULL;
  }
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
  char refused[600] = "", *buf = log_since(r, offset, &n, refused, sizeof refused), *p, *end;
  bool in_tb = false;
  size_t indent, tb_indent = 0;
  if (buf == NULL) {
    /* A log that cannot be read safely is a finding, not silence: health
     * cannot say the log is clean. */
    if (refused[0] && json_array_size(errors) < HF_LOG_KEEP)
      json_array_append_new(errors, json_pack("s++", "hub log (hubfleet_hub_log) refused: ", refused,
                                              " (point hubfleet_hub_log at the log file itself, a regular file)"));
    return;
  }
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

int hf__wait_healthy(struct hf_req *r, const char *want, int64_t timeout_ms, int64_t log_offset, json_t *data) {
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
      ver = hf__api_version(r->hub.health_url, 1000, &astatus);
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
  if (r->hub.hub_log == NULL) return hf__log_mark(r) - 60 * 1000000LL;
  off = hf__file_size(r->hub.hub_log);
  return off > 65536 ? off - 65536 : 0;
}

int hf__op_health(struct hf_req *r, json_t *data) {
  int rc = hf__wait_healthy(r, r->target, hf__left_ms(r), start_log_offset(r), data);
  size_t k;
  /* The verdict is in: the users' probe finishes and gives its figures. */
  if (r->rollout) {
    json_t *p;
    hf__probe_end(r, data);
    p = json_object_get(data, "users_probe");
    if (json_is_integer(json_object_get(data, "users_downtime_ms")))
      hf__event(r, "info", "users' downtime %lld ms: %lld server(s), %lld probes, %lld not answered",
                (long long)json_integer_value(json_object_get(data, "users_downtime_ms")),
                (long long)json_integer_value(json_object_get(p, "servers")),
                (long long)json_integer_value(json_object_get(p, "probes")),
                (long long)json_integer_value(json_object_get(p, "failed")));
    else
      hf__event(r, "info", "users' downtime not measured: probe %s%s%s", json_string_value(json_object_get(p, "state")) ?: "none",
                json_is_string(json_object_get(p, "why")) ? ": " : "", json_string_value(json_object_get(p, "why")) ?: "");
  }
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
    int jr = hf__jrec(r, "health", rc == 0 ? "done" : "failed", det);
    if (jr != 0 && rc == 0) rc = jr;
  }
  return rc;
}

/* ---- the hub's API ------------------------------------------------------------------------- */

/* GET /hub/api: the version string (new) or NULL. */
json_t *hf__api_version(const char *base, int64_t timeout_ms, int *status) {
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
