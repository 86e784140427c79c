/* rollout.c: the rollout scheduler: stages, per-host step machines, the
 * failure budget, soak re-checks, reconnects, rollback, progress and events. */
#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include "hf_controller.h"
#include "hf_engine.h"
#include "hf_plan.h"
#include "hf_rollout.h"
#include "hf_rules.h"
#include "hf_sanitize.h"
#include "hf_proto.h"

/* The per-host procedure, in order. A failure at or after "stop" means the
 * hub may have changed: the agent's rollback runs. Timeouts are the agent's
 * per-step deadlines; the controller waits a little longer for the result. */
enum { ST_PREFLIGHT, ST_BACKUP, ST_STOP, ST_INSTALL, ST_MIGRATE, ST_START, ST_HEALTH, ST__COUNT };
static const struct step_def {
  const char *name;
  unsigned    timeout_ms;
} steps[ST__COUNT] = {
  [ST_PREFLIGHT] = { "preflight", 300000 },
  [ST_BACKUP]    = { "backup",    600000 },
  [ST_STOP]      = { "stop",      120000 },
  [ST_INSTALL]   = { "install",  1200000 },
  [ST_MIGRATE]   = { "migrate",   600000 },
  [ST_START]     = { "start",     180000 },
  [ST_HEALTH]    = { "health",    180000 },
};
#define ROLLBACK_TIMEOUT_MS 1800000u
#define RESULT_GRACE_MS     30000u
/* Warnings and errors a host's agent may have recorded and printed per
 * request (issue 13: a flooding agent wrote 28 MB of state in 3.7 s); past
 * either cap they are counted and summarised in one line. */
#define EVENT_CAP_COUNT     200u
#define EVENT_CAP_BYTES     (64u * 1024)

/* What a host is doing. */
enum hr_phase {
  HR_PENDING,    /* not started in this run */
  HR_CONNECT,    /* session opening */
  HR_JOURNAL,    /* resume/reconnect: asking the agent's journal what happened */
  HR_STEP,       /* a step of the procedure is in flight (h->step) */
  HR_WAIT,       /* connection lost mid-upgrade: waiting to reconnect */
  HR_ROLLBACK,   /* the agent's rollback is in flight */
  HR_RECHECK,    /* soak re-check: health in flight */
  HR_DONE,       /* finished in this run; outcome in h->status */
};
static const char *const phase_names[] = {
  "pending", "connect", "journal", "step", "wait", "rollback", "recheck", "done" };

/* Why a host is being connected (what to send once ready). */
enum hr_goal { G_STEPS, G_ROLLBACK, G_RECHECK, G_PREFLIGHT_ONLY };

struct rhost {
  struct rollout          *ro;
  const struct hf_host    *host;
  unsigned                 stage;
  enum hr_phase            phase;
  enum hr_goal             goal;
  int                      step;        /* next or current step */
  const char              *status;      /* HF_HOST_* as recorded */
  struct hf_session       *sess;
  int64_t                  step_id;
  int64_t                  t_step;      /* when the current step began (ms) */
  int64_t                  t_stop;      /* hub stopped at (ms, 0 = not stopped in this run) */
  int64_t                  down_before; /* downtime recorded by an earlier run (rollback of it), ms */
  int64_t                  reconnect_deadline;
  int64_t                  busy_deadline; /* waiting for an older agent to let go of the host (0 = not) */
  uv_timer_t               timer;
  bool                     journal_first; /* ask the journal before the next step */
  bool                     selected;    /* part of this run */
  json_t                  *preflight;   /* dry run: the preflight data (new) */
  char                     error[512];
  unsigned                 ev_logged;   /* warn/error events recorded for the request in flight */
  size_t                   ev_bytes;    /* ... and their text bytes */
  unsigned                 ev_dropped;  /* ... past the caps (summarised when its result comes) */
};

struct rollout {
  const struct hf_rollout_opts *o;
  uv_loop_t         loop;
  struct hf_engine *engine;
  struct rhost     *hosts;
  size_t            nhosts;
  char              id[64];
  char              target[64];
  unsigned          soaked;        /* 1 + the stage whose soak re-check ran */
  unsigned          nstages, stage;
  unsigned          budget;
  int               failures;      /* failed + rolled back + needs attention, whole rollout */
  int               active;        /* hosts in a non-terminal phase */
  size_t            next;          /* next index in launch order */
  size_t           *order;         /* host indexes in stage order */
  bool              halting;
  bool              state_broken;  /* a state write failed: stopped at once, exit 70 */
  int               interrupts;    /* SIGINT/SIGTERM received: 1 = pausing at safe points */
  uv_signal_t       sigint, sigterm;
  bool              finished;
  bool              tty;
  int               exit_code;
  const char       *final_status;
  int64_t           t0;
  uv_timer_t        soak_timer;
  uv_timer_t        progress_timer;
  json_t           *rules;         /* version-aware preflight rules (new) */
};

/* ---- output ---------------------------------------------------------------- */

/* The controller's own escapes pass the terminal filter (hf_sanitize.h) by
 * hf_term_raw; everything else, host text included, is filtered. */
static void progress_clear(struct rollout *ro) {
  if (ro->tty) hf_term_raw(stderr, "\r\033[K");
}

/* One line for people: on a TTY above the live progress line, else plain. */
static void say(struct rollout *ro, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(struct rollout *ro, const char *fmt, ...) {
  char line[4096], clean[4096];
  va_list ap;
  progress_clear(ro);
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  /* Host text inside the line stays inside it (no newline of its own). */
  fputs(hf_clean_line(clean, sizeof clean, line), ro->o->json ? stderr : stdout);
  fputc('\n', ro->o->json ? stderr : stdout);
  fflush(ro->o->json ? stderr : stdout);
}

static void progress_draw(struct rollout *ro) {
  if (!ro->tty || ro->finished) return;
  int done = 0, running = 0, failed = 0, rolled = 0, total = 0;
  for (size_t i = 0; i < ro->nhosts; i++) {
    struct rhost *h = &ro->hosts[i];
    if (!h->selected || h->stage != ro->stage) continue;
    total++;
    if (h->phase != HR_DONE && h->phase != HR_PENDING) running++;
    else if (!strcmp(h->status, HF_HOST_UPGRADED)) done++;
    else if (!strcmp(h->status, HF_HOST_ROLLEDBACK)) rolled++;
    else if (strcmp(h->status, HF_HOST_PENDING)) failed++;
  }
  char bar[21];
  int fill = total ? (done + failed + rolled) * 20 / total : 0;
  for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
  bar[20] = '\0';
  int64_t el = (hf_state_now_ms() - ro->t0) / 1000;
  hf_term_raw(stderr, "\r\033[K");
  fprintf(stderr, "stage %u/%u [%s] %d/%d done, %d running, %d failed, %d rolled back  %02" PRId64 ":%02" PRId64,
          ro->stage + 1, ro->nstages, bar, done, total, running, failed, rolled, el / 60, el % 60);
  fflush(stderr);
}

static void on_progress_timer(uv_timer_t *t) { progress_draw(t->data); }

static void emit_ndjson(struct rollout *ro, const struct rhost *h, const char *event, const char *level,
                        const char *text);

/* Records an event in the state's event log and appends it to --events. */
static void emit(struct rollout *ro, const struct rhost *h, const char *event, const char *level,
                 const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void emit(struct rollout *ro, const struct rhost *h, const char *event, const char *level,
                 const char *fmt, ...) {
  char text[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (ro->o->state && ro->id[0] && ro->o->mode != HF_RM_DRYRUN)
    hf_state_event(ro->o->state, ro->id, h ? h->host->name : NULL, level, text);
  emit_ndjson(ro, h, event, level, text);
}

/* Appends one NDJSON event to --events (nothing without it). */
static void emit_ndjson(struct rollout *ro, const struct rhost *h, const char *event, const char *level,
                        const char *text) {
  if (ro->o->events) {
    json_t *ev = json_pack("{s:I,s:s,s:s,s:s,s:s}", "time", (json_int_t)hf_state_now_ms(), "rollout", ro->id,
                           "event", event, "level", level, "text", text);
    if (h) {
      json_object_set_new(ev, "host", json_string(h->host->name));
      json_object_set_new(ev, "status", json_string(h->status));
      json_object_set_new(ev, "stage", json_integer(h->stage + 1));
      if (h->step < ST__COUNT) json_object_set_new(ev, "step", json_string(steps[h->step].name));
    }
    json_dumpf(ev, ro->o->events, JSON_COMPACT);
    fputc('\n', ro->o->events);
    fflush(ro->o->events);
    json_decref(ev);
  }
}

/* ---- host transitions ------------------------------------------------------- */

static void host_launch(struct rhost *h);
static void host_send(struct rhost *h);
static void stage_next(struct rollout *ro);
static void launch_more(struct rollout *ro);

/* The one place a host changes phase: logs every change when verbose. */
static void set_phase(struct rhost *h, enum hr_phase p) {
  if (h->ro->o->verbose)
    fprintf(stderr, "hubfleet: %s: %s -> %s\n", h->host->name, phase_names[h->phase], phase_names[p]);
  bool was_idle = h->phase == HR_PENDING || h->phase == HR_DONE;
  bool idle = p == HR_PENDING || p == HR_DONE;
  if (was_idle && !idle) h->ro->active++;
  if (!was_idle && idle) h->ro->active--;
  h->phase = p;
}

/* The README promises every step is recorded before it is sent: a write to
 * the state database that fails stops the rollout at once (nothing more is
 * sent; the agents finish the step they run and keep it in their journals),
 * and resume continues from the state file once it can be written again. */
static bool state_ok(struct rollout *ro, int rc, const char *what) {
  if (rc == 0) return true;
  if (!ro->state_broken) {
    ro->state_broken = true;
    ro->halting = true;
    progress_clear(ro);
    fprintf(stderr, "hubfleet: state file: cannot record %s: %s\n"
            "hubfleet: stopping at once, nothing more is sent; the hosts keep what they did in their journals.\n"
            "hubfleet: make the state file writable (free disk space?), then: hubfleet resume %s\n",
            what, hf_state_errmsg(ro->o->state), ro->id);
    uv_stop(&ro->loop);
  }
  return false;
}

static bool is_failure(const char *status) {
  return !strcmp(status, HF_HOST_FAILED) || !strcmp(status, HF_HOST_ROLLEDBACK) || !strcmp(status, HF_HOST_ATTENTION);
}

static void record_host(struct rhost *h, const char *status, const char *error) {
  struct rollout *ro = h->ro;
  bool was_failure = is_failure(h->status);
  h->status = status;
  if (error && error != h->error) snprintf(h->error, sizeof h->error, "%s", error);
  if (ro->o->state && ro->o->mode != HF_RM_DRYRUN)
    state_ok(ro, hf_state_host_set(ro->o->state, ro->id, h->host->name, status,
                                   h->step < ST__COUNT ? steps[h->step].name : NULL, error), "a host's outcome");
  if (!was_failure && is_failure(status)) ro->failures++;
  if (was_failure && !is_failure(status)) ro->failures--;
}

static void on_closed(struct hf_session *s, void *ctx) { (void)s; (void)ctx; }

static void close_session(struct rhost *h) {
  if (h->sess) {
    hf_session_close(h->sess, on_closed, h);
    h->sess = NULL;
  }
}

/* The host reached an outcome in this run. */
static void host_done(struct rhost *h, const char *status, const char *error) {
  struct rollout *ro = h->ro;
  close_session(h);
  if (ro->o->mode != HF_RM_DRYRUN || strcmp(status, HF_HOST_UPGRADED)) record_host(h, status, error);
  else h->status = status; /* a dry run's "ready": nothing to record */
  set_phase(h, HR_DONE);
  if (!strcmp(status, HF_HOST_UPGRADED))
    say(ro, "%s: %s", h->host->name, ro->o->mode == HF_RM_DRYRUN ? "preflight passed" : "upgraded");
  else
    say(ro, "%s: %s%s%s", h->host->name, status, error ? ": " : "", error ? error : "");
  emit(ro, h, "host", is_failure(status) ? "error" : "info", "%s%s%s", status, error ? ": " : "", error ? error : "");
  if (ro->o->mode == HF_RM_UPGRADE || ro->o->mode == HF_RM_RESUME) {
    if (!ro->halting && (unsigned)ro->failures > ro->budget) {
      ro->halting = true;
      say(ro, "failure budget exceeded (%d failed, budget %u): halting; hosts not yet started stay untouched",
          ro->failures, ro->budget);
      emit(ro, NULL, "rollout", "error", "failure budget exceeded: %d failed, budget %u", ro->failures, ro->budget);
    }
  }
  launch_more(ro);
}

/* The rollback goal made durable before anything acts on it (issue 13): the
 * host row says "running, step rollback", so a resume after this controller
 * dies continues the rollback and never re-sends the step that failed. */
static bool rollback_record_goal(struct rhost *h, const char *why) {
  struct rollout *ro = h->ro;
  if (ro->o->state && ro->id[0] && ro->o->mode != HF_RM_DRYRUN &&
      !state_ok(ro, hf_state_host_set(ro->o->state, ro->id, h->host->name, HF_HOST_RUNNING, HF_STEP_ROLLBACK, why),
                "the rollback goal"))
    return false;
  h->status = HF_HOST_RUNNING;
  return true;
}

static void rollback_start(struct rhost *h, const char *why) {
  struct rollout *ro = h->ro;
  snprintf(h->error, sizeof h->error, "%s", why);
  if (!rollback_record_goal(h, why)) return;
  say(ro, "%s: %s; rolling back", h->host->name, why);
  emit(ro, h, "host", "warn", "rolling back: %s", why);
  h->goal = G_ROLLBACK;
  if (!h->sess || hf_session_state(h->sess) != HF_SS_READY) {
    close_session(h);
    host_launch(h);
    return;
  }
  host_send(h);
}

/* Connection lost while the hub may be mid-change: keep trying to reach it
 * until the reconnect deadline, then ask its journal. */
static void on_reconnect_timer(uv_timer_t *t) {
  struct rhost *h = t->data;
  host_launch(h);
}

static void host_wait_reconnect(struct rhost *h, const char *why) {
  struct rollout *ro = h->ro;
  close_session(h);
  if (h->reconnect_deadline == 0) {
    h->reconnect_deadline = hf_state_now_ms() + ro->o->reconnect_ms;
    say(ro, "%s: lost during %s (%s); reconnecting for up to %us", h->host->name,
        h->step < ST__COUNT ? steps[h->step].name : "rollback", why, ro->o->reconnect_ms / 1000);
    emit(ro, h, "host", "warn", "connection lost: %s", why);
  }
  if (hf_state_now_ms() >= h->reconnect_deadline) {
    char msg[600];
    snprintf(msg, sizeof msg, "unreachable in the middle of %s (%s); the host's journal has what happened: "
             "run 'hubfleet resume %s' or 'hubfleet rollback %s --hosts %s' once it is reachable",
             h->step < ST__COUNT ? steps[h->step].name : "rollback", why, ro->id, ro->id, h->host->name);
    host_done(h, HF_HOST_ATTENTION, msg);
    return;
  }
  set_phase(h, HR_WAIT);
  h->journal_first = true;
  uv_timer_start(&h->timer, on_reconnect_timer, 2000, 0);
}

/* ---- request callbacks ---------------------------------------------------------- */

static void on_event(struct hf_session *s, const json_t *ev, void *ctx) {
  struct rhost *h = ctx;
  (void)s;
  const char *text = json_string_value(json_object_get(ev, "text"));
  const char *level = json_string_value(json_object_get(ev, "level"));
  if (!text || !level) return;
  bool loud = !strcmp(level, "warn") || !strcmp(level, "error");
  if (loud) {
    size_t len = strlen(text);
    if (h->ev_logged >= EVENT_CAP_COUNT || h->ev_bytes + len > EVENT_CAP_BYTES) { h->ev_dropped++; return; }
    h->ev_logged++;
    h->ev_bytes += len;
  }
  if (h->ro->o->verbose || !strcmp(level, "error"))
    say(h->ro, "%s: %s", h->host->name, text);
  /* Warnings and errors go to the state's event log (the report shows a
   * failed host's last lines); everything goes to --events. */
  if (loud) emit(h->ro, h, "log", level, "%s", text);
  else if (h->ro->o->events) emit_ndjson(h->ro, h, "log", level, text);
}

/* The end of a request: one line for the events the caps held back. */
static void events_summary(struct rhost *h) {
  if (h->ev_dropped)
    emit(h->ro, h, "log", "warn", "%u more warning/error lines from the agent not recorded (cap: %u lines, %u bytes "
         "per request)", h->ev_dropped, EVENT_CAP_COUNT, EVENT_CAP_BYTES);
  h->ev_logged = h->ev_dropped = 0;
  h->ev_bytes = 0;
}

/* Records the data a step returned into the host row. */
static void keep_step_data(struct rhost *h, const json_t *data) {
  struct rollout *ro = h->ro;
  if (!ro->o->state || !data) return;
  switch (h->step) {
  case ST_PREFLIGHT: {
    json_t *envs = json_object_get(data, "envs");
    if (envs) hf_state_host_set_json(ro->o->state, ro->id, h->host->name, "before", envs);
    break;
  }
  case ST_BACKUP: hf_state_host_set_json(ro->o->state, ro->id, h->host->name, "backup", data); break;
  case ST_INSTALL: {
    json_t *inst = json_object_get(data, "installed");
    if (inst) hf_state_host_set_json(ro->o->state, ro->id, h->host->name, "after", inst);
    break;
  }
  default: break;
  }
}

/* Preflight checks that refuse, as one line. */
static void refusals(const json_t *data, char *buf, size_t len) {
  size_t i, off = 0;
  json_t *c;
  buf[0] = '\0';
  json_array_foreach(json_object_get(data, "checks"), i, c) {
    const char *oc = json_string_value(json_object_get(c, "outcome"));
    if (!oc || strcmp(oc, "refuse")) continue;
    const char *name = json_string_value(json_object_get(c, "name"));
    const char *detail = json_string_value(json_object_get(c, "detail"));
    int n = snprintf(buf + off, len - off, "%s%s: %s", off ? "; " : "", name ? name : "?", detail ? detail : "");
    if (n < 0 || (size_t)n >= len - off) break;
    off += (size_t)n;
  }
}

static void on_step_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  const char *name = steps[h->step].name;
  events_summary(h);
  int64_t took = hf_state_now_ms() - h->t_step;
  bool lost = status != 0 && (hf_session_state(s) == HF_SS_FAILED || status == HF_ECANCELED);
  char why[700];

  if (status != 0) snprintf(why, sizeof why, "%s failed: %s", name, message && *message ? message : hf_strerror(status));
  /* A failure that will be rolled back: the goal is in the state before the
   * failed step's end is, so no moment exists where a resume would re-send it. */
  if (status != 0 && !(lost && h->step >= ST_BACKUP) && h->step >= ST_STOP) rollback_record_goal(h, why);
  if (ro->o->state && h->step_id)
    hf_state_step_end(ro->o->state, h->step_id, status == 0 ? "ok" : lost ? "unknown" : "failed",
                      data, status == 0 ? NULL : message);
  h->step_id = 0;

  json_t *merged = NULL;
  if (status == 0 && h->step == ST_PREFLIGHT) {
    /* The agent's own checks plus JupyterHub's upgrade notes for this from->to. */
    merged = json_deep_copy(data);
    if (!json_is_array(json_object_get(merged, "checks"))) json_object_set_new(merged, "checks", json_array());
    json_t *rc = hf_rules_eval(ro->rules, ro->target, merged);
    json_array_extend(json_object_get(merged, "checks"), rc);
    json_decref(rc);
    data = merged;
  }
  if (status == 0) {
    keep_step_data(h, data);
    if (ro->o->mode == HF_RM_DRYRUN) {
      h->preflight = json_incref(merged);
      json_decref(merged);
      char ref[600];
      refusals(data, ref, sizeof ref);
      host_done(h, ref[0] ? HF_HOST_FAILED : HF_HOST_UPGRADED, ref[0] ? ref : NULL);
      return;
    }
    if (h->step == ST_PREFLIGHT) {
      char ref[600];
      refusals(data, ref, sizeof ref);
      if (ro->o->state && ro->id[0]) hf_state_event(ro->o->state, ro->id, h->host->name, "info", "preflight checks recorded");
      json_decref(merged);
      if (ref[0]) {
        snprintf(why, sizeof why, "preflight refused: %s", ref);
        host_done(h, HF_HOST_FAILED, why);
        return;
      }
    }
    if (!ro->o->verbose && !ro->tty) say(ro, "%s: %s ok (%.1fs)", h->host->name, name, (double)took / 1000.0);
    emit(ro, h, "step", "info", "%s ok in %.1fs", name, (double)took / 1000.0);
    if (h->step == ST_HEALTH) {
      if (h->t_stop && ro->o->state)
        hf_state_host_set_downtime(ro->o->state, ro->id, h->host->name, hf_state_now_ms() - h->t_stop);
      host_done(h, HF_HOST_UPGRADED, NULL);
      return;
    }
    h->step++;
    host_send(h);
    return;
  }

  emit(ro, h, "step", "error", "%s", why);
  if (lost && h->step >= ST_BACKUP) {   /* the hub may be mid-change: find out, never guess */
    host_wait_reconnect(h, message && *message ? message : hf_strerror(status));
    return;
  }
  if (h->step >= ST_STOP) {
    rollback_start(h, why);
    return;
  }
  host_done(h, HF_HOST_FAILED, why);
}

static void on_rollback_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  events_summary(h);
  bool lost = status != 0 && hf_session_state(s) == HF_SS_FAILED;
  if (ro->o->state && h->step_id)
    hf_state_step_end(ro->o->state, h->step_id, status == 0 ? "ok" : lost ? "unknown" : "failed", data,
                      status == 0 ? NULL : message);
  h->step_id = 0;
  if (status == 0) {
    /* A host's downtime is all the time the rollout kept its hub down: in
     * a later `rollback`, the upgrade's plus the rollback's. */
    if (h->t_stop && ro->o->state)
      hf_state_host_set_downtime(ro->o->state, ro->id, h->host->name,
                                 h->down_before + hf_state_now_ms() - h->t_stop);
    host_done(h, HF_HOST_ROLLEDBACK, ro->o->mode == HF_RM_ROLLBACK ? NULL : h->error);
    return;
  }
  if (lost) {
    host_wait_reconnect(h, message && *message ? message : hf_strerror(status));
    return;
  }
  char msg[1200];
  json_t *backup = NULL;
  if (ro->o->state) {
    json_t *hosts = hf_state_hosts(ro->o->state, ro->id);
    size_t i;
    json_t *row;
    json_array_foreach(hosts, i, row)
      if (!strcmp(json_string_value(json_object_get(row, "host")), h->host->name))
        backup = json_incref(json_object_get(row, "backup"));
    json_decref(hosts);
  }
  const char *dir = json_string_value(json_object_get(json_object_get(backup, "backup"), "dir"));
  snprintf(msg, sizeof msg, "%s%srollback failed: %s; backup at %s", h->error, h->error[0] ? "; " : "",
           message && *message ? message : hf_strerror(status), dir ? dir : "(see the host's journal)");
  json_decref(backup);
  host_done(h, HF_HOST_ATTENTION, msg);
}

static void on_recheck_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  (void)s; (void)data;
  events_summary(h);
  if (status == 0) {
    emit(h->ro, h, "recheck", "info", "healthy after soak");
    close_session(h);
    set_phase(h, HR_DONE);
    launch_more(h->ro);
    return;
  }
  char why[600];
  snprintf(why, sizeof why, "re-check after soak failed: %s", message && *message ? message : hf_strerror(status));
  h->step = ST_HEALTH;
  rollback_start(h, why);
}

/* Latest state of a step in the agent's journal: "begin", "done", "failed"
 * or NULL; *at (may be NULL) receives its record index (-1 when absent). */
static const char *journal_state_at(const json_t *data, const char *step, long *at) {
  const char *st = NULL;
  size_t i;
  json_t *rec;
  if (at) *at = -1;
  json_array_foreach(json_object_get(data, "steps"), i, rec) {
    const char *name = json_string_value(json_object_get(rec, "step"));
    if (name && !strcmp(name, step)) {
      st = json_string_value(json_object_get(rec, "state"));
      if (at) *at = (long)i;
    }
  }
  return st;
}

static const char *journal_state(const json_t *data, const char *step) {
  return journal_state_at(data, step, NULL);
}

/* Whether the journal's last rollback finished after every upgrade step it holds. */
static bool journal_rolled_back(const json_t *data) {
  long rb_at, at;
  const char *rb = journal_state_at(data, "rollback", &rb_at);
  if (!rb || strcmp(rb, "done")) return false;
  for (int s = ST_BACKUP; s < ST__COUNT; s++) {
    journal_state_at(data, steps[s].name, &at);
    if (at > rb_at) return false;
  }
  return true;
}

/* A done step's result rebuilt from the journal (new reference, or NULL): the
 * detail of its last record, which the agent writes in the shape of the
 * step's answer ({backup, previous}, {installed}, {alembic_before, ...}). */
static json_t *journal_step_data(const json_t *data, int step) {
  long at;
  journal_state_at(data, steps[step].name, &at);
  if (at < 0) return NULL;
  json_t *detail = json_object_get(json_array_get(json_object_get(data, "steps"), (size_t)at), "detail");
  return json_is_object(detail) ? json_incref(detail) : NULL;
}

/* The time (ms since the epoch, the host's clock) of the latest journal
 * record of step in state, or 0. */
static int64_t journal_time(const json_t *data, const char *step, const char *state) {
  int64_t t = 0;
  size_t i;
  json_t *rec;
  json_array_foreach(json_object_get(data, "steps"), i, rec) {
    const char *n = json_string_value(json_object_get(rec, "step"));
    const char *st = json_string_value(json_object_get(rec, "state"));
    const char *tm = json_string_value(json_object_get(rec, "time"));
    if (!n || !st || !tm || strcmp(n, step) || strcmp(st, state)) continue;
    struct tm c = { 0 };
    int ms = 0;
    if (sscanf(tm, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &c.tm_year, &c.tm_mon, &c.tm_mday, &c.tm_hour, &c.tm_min,
               &c.tm_sec, &ms) != 7)
      continue;
    c.tm_year -= 1900;
    c.tm_mon -= 1;
    time_t secs = timegm(&c);
    if (secs != (time_t)-1) t = (int64_t)secs * 1000 + ms;
  }
  return t;
}

static void on_journal_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  events_summary(h);
  h->journal_first = false;
  if (status != 0) {
    if (hf_session_state(s) == HF_SS_FAILED) { host_wait_reconnect(h, message ? message : ""); return; }
    /* An agent that cannot read its journal cannot tell us what happened. */
    char why[600];
    snprintf(why, sizeof why, "journal unreadable: %s", message ? message : hf_strerror(status));
    if (h->step >= ST_STOP) rollback_start(h, why);
    else host_done(h, HF_HOST_FAILED, why);
    return;
  }
  /* An older agent (of a controller that was killed or lost) still holds
   * the host lock: it is inside a step. Re-sending now would leave a second
   * agent queued on the lock, which runs its step whenever it gets the lock,
   * even after this controller moved on (and even if this controller dies):
   * a stale stop after the hub's health, say. Ask again once it let go,
   * bounded by the longest step's deadline. */
  json_t *busy = json_object_get(data, "busy_pid");
  int64_t now = hf_state_now_ms();
  if (json_is_integer(busy) && (h->goal == G_STEPS || h->goal == G_ROLLBACK) &&
      (h->busy_deadline == 0 || now < h->busy_deadline)) {
    if (h->busy_deadline == 0) {
      h->busy_deadline = now + ROLLBACK_TIMEOUT_MS;
      say(ro, "%s: an earlier agent (pid %" PRId64 ") is still changing the hub; waiting for it to finish",
          h->host->name, (int64_t)json_integer_value(busy));
      emit(ro, h, "journal", "info", "journal: agent pid %" PRId64 " still busy", (int64_t)json_integer_value(busy));
    }
    close_session(h);
    set_phase(h, HR_WAIT);
    h->journal_first = true;
    uv_timer_start(&h->timer, on_reconnect_timer, 2000, 0);
    return;
  }
  h->busy_deadline = 0;
  /* A rollback the journal shows finished needs no second run. */
  if (h->goal == G_ROLLBACK && journal_rolled_back(data)) {
    emit(ro, h, "journal", "info", "journal: rollback already done");
    host_done(h, HF_HOST_ROLLEDBACK, ro->o->mode == HF_RM_ROLLBACK ? NULL : h->error);
    return;
  }
  if (h->goal == G_STEPS) {
    /* The hub's downtime counts from its stop, which an earlier controller
     * may have sent: the journal keeps when (the host's clock). */
    int64_t stop_at = journal_time(data, "stop", "begin");
    if (!h->t_stop && stop_at) h->t_stop = stop_at;
    /* Skip every step the journal shows done; re-run the first that is not
     * (each is idempotent on the agent). */
    while (h->step < ST__COUNT) {
      const char *js = journal_state(data, steps[h->step].name);
      if (h->step == ST_PREFLIGHT || !js || strcmp(js, "done")) break;
      emit(ro, h, "journal", "info", "journal: %s already done", steps[h->step].name);
      if (ro->o->state) {
        /* What the step returned, as the journal kept it, so the host row
         * still holds the backup and the installed versions after a kill. */
        json_t *jd = journal_step_data(data, h->step);
        int64_t id;
        keep_step_data(h, jd);
        if (hf_state_step_begin(ro->o->state, ro->id, h->host->name, steps[h->step].name, &id) == 0)
          hf_state_step_end(ro->o->state, id, "ok", jd, "reconciled from the host's journal");
        json_decref(jd);
      }
      if (h->step == ST_HEALTH) {
        /* Finished while no controller watched: its downtime from the journal. */
        int64_t healthy_at = journal_time(data, "health", "done");
        if (h->t_stop && healthy_at > h->t_stop && ro->o->state)
          hf_state_host_set_downtime(ro->o->state, ro->id, h->host->name, healthy_at - h->t_stop);
        host_done(h, HF_HOST_UPGRADED, NULL);
        return;
      }
      h->step++;
    }
    if (h->step >= ST__COUNT) { host_done(h, HF_HOST_UPGRADED, NULL); return; }
  }
  host_send(h);
}

/* Sends what the host's goal needs next on its ready session. */
static void host_send(struct rhost *h) {
  struct rollout *ro = h->ro;
  if (ro->interrupts && h->goal != G_ROLLBACK) {
    /* A safe point: the last step's result is recorded and the next one
     * not sent. The host stays "running" at that step in the state file,
     * and resume goes on from its journal. A rollback runs to its end. */
    close_session(h);
    set_phase(h, HR_PENDING);
    say(ro, "%s: paused after %s", h->host->name, h->step < ST__COUNT && h->step > 0 ? steps[h->step - 1].name : "connecting");
    launch_more(ro);
    return;
  }
  json_t *args = json_pack("{s:O}", "hub", h->host->hub);
  hf_result_cb cb;
  const char *op;
  unsigned timeout;

  if (ro->id[0] && ro->o->mode != HF_RM_DRYRUN) json_object_set_new(args, "rollout", json_string(ro->id));
  if (h->journal_first && ro->o->mode != HF_RM_DRYRUN) {
    op = "journal";
    timeout = 30000;
    cb = on_journal_result;
    set_phase(h, HR_JOURNAL);
  } else if (h->goal == G_ROLLBACK) {
    op = "rollback";
    timeout = ROLLBACK_TIMEOUT_MS;
    cb = on_rollback_result;
    json_object_set_new(args, "timeout_ms", json_integer(timeout));
    set_phase(h, HR_ROLLBACK);
    /* The rollback op stops the hub first (when this run did not already). */
    if (!h->t_stop) h->t_stop = hf_state_now_ms();
  } else if (h->goal == G_RECHECK) {
    op = "health";
    timeout = steps[ST_HEALTH].timeout_ms;
    cb = on_recheck_result;
    json_object_set_new(args, "target", json_string(ro->target));
    json_object_set_new(args, "timeout_ms", json_integer(ro->o->health_ms));
    timeout = ro->o->health_ms;
    set_phase(h, HR_RECHECK);
  } else {
    op = steps[h->step].name;
    timeout = steps[h->step].timeout_ms;
    cb = on_step_result;
    if (h->step == ST_PREFLIGHT || h->step == ST_BACKUP || h->step == ST_INSTALL || h->step == ST_HEALTH)
      json_object_set_new(args, "target", json_string(ro->target));
    if (h->step == ST_PREFLIGHT && !ro->o->rehearse) json_object_set_new(args, "rehearse", json_false());
    if (h->step == ST_HEALTH) timeout = ro->o->health_ms;
    json_object_set_new(args, "timeout_ms", json_integer(timeout));
    set_phase(h, HR_STEP);
    if (h->step == ST_STOP && !h->t_stop) h->t_stop = hf_state_now_ms();
  }
  if (ro->state_broken) { json_decref(args); return; }
  if (ro->o->state && ro->o->mode != HF_RM_DRYRUN && cb != on_journal_result) {
    if (!state_ok(ro, hf_state_step_begin(ro->o->state, ro->id, h->host->name, op, &h->step_id), "a step's start")) {
      json_decref(args);
      return;
    }
    if (cb == on_step_result) {
      if (!state_ok(ro, hf_state_host_set(ro->o->state, ro->id, h->host->name, HF_HOST_RUNNING, op, NULL),
                    "a step's start")) {
        json_decref(args);
        return;
      }
      h->status = HF_HOST_RUNNING; /* as recorded: --events said "pending" for a running host */
    }
  }
  h->t_step = hf_state_now_ms();
  int r = hf_session_request(h->sess, op, args, timeout + RESULT_GRACE_MS, on_event, cb, h);
  if (r != 0) {
    char why[300];
    snprintf(why, sizeof why, "%s could not be sent: %s", op, hf_strerror(r));
    if (ro->o->state && h->step_id) hf_state_step_end(ro->o->state, h->step_id, "failed", NULL, why);
    h->step_id = 0;
    host_done(h, h->step >= ST_STOP ? HF_HOST_ATTENTION : HF_HOST_FAILED, why);
  }
}

static void on_ready(struct hf_session *s, int status, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  if (status != 0) {
    char why[600];
    snprintf(why, sizeof why, "%s", hf_session_error(s)[0] ? hf_session_error(s) : hf_strerror(status));
    h->sess = NULL; /* the engine still owns it until we close it */
    hf_session_close(s, on_closed, h);
    bool may_have_changed = h->reconnect_deadline || h->step >= ST_STOP || h->goal == G_ROLLBACK;
    bool retryable = status != HF_EHOSTKEY && status != HF_EAUTH && status != HF_EVERSION;
    if (may_have_changed && retryable && ro->o->mode != HF_RM_DRYRUN) { host_wait_reconnect(h, why); return; }
    char msg[700];
    snprintf(msg, sizeof msg, "unreachable: %s", why);
    host_done(h, h->goal == G_ROLLBACK || h->step >= ST_STOP ? HF_HOST_ATTENTION : HF_HOST_FAILED, msg);
    return;
  }
  if (h->reconnect_deadline) {
    say(ro, "%s: reconnected", h->host->name);
    h->reconnect_deadline = 0;
  }
  host_send(h);
}

static void on_lost(struct hf_session *s, int status, void *ctx) {
  (void)s; (void)status; (void)ctx; /* idle sessions are not kept between steps */
}

static void host_launch(struct rhost *h) {
  set_phase(h, HR_CONNECT);
  int r = hf_session_open(h->ro->engine, h->host, on_ready, on_lost, h, &h->sess);
  if (r != 0) {
    h->sess = NULL;
    char why[200];
    snprintf(why, sizeof why, "cannot open a session: %s", hf_strerror(r));
    host_done(h, HF_HOST_FAILED, why);
  }
}

/* Ctrl-C as operators expect it (Ansible, kubectl): the first SIGINT or
 * SIGTERM stops launching hosts and lets each host in flight reach a safe
 * point (its step finished and recorded, or its rollback done), then the
 * rollout is recorded as paused; a second one leaves at once. Both say how
 * to go on. */
static void on_signal(uv_signal_t *sg, int signum) {
  struct rollout *ro = sg->data;
  if (++ro->interrupts == 1) {
    say(ro, "%s: finishing the steps in flight, starting nothing new (again to leave at once); "
        "then continue with 'hubfleet resume %s'", signum == SIGTERM ? "terminated" : "interrupted", ro->id);
    launch_more(ro);
    return;
  }
  progress_clear(ro);
  fprintf(stderr, "hubfleet: leaving now; the hosts finish the step they run and keep it in their journals: "
          "continue with 'hubfleet resume %s'\n", ro->id);
  fflush(stderr);
  _exit(130);
}

/* ---- stages ---------------------------------------------------------------------- */

static void finish(struct rollout *ro, const char *status) {
  if (ro->finished) return;
  ro->finished = true;
  ro->final_status = status;
  uv_timer_stop(&ro->progress_timer);
  uv_timer_stop(&ro->soak_timer);
  progress_clear(ro);
  if (ro->o->state && ro->id[0] && ro->o->mode != HF_RM_DRYRUN) hf_state_rollout_set_status(ro->o->state, ro->id, status);
  emit(ro, NULL, "rollout", "info", "rollout %s", status);
}

static bool stage_has_pending(struct rollout *ro) {
  for (size_t k = ro->next; k < ro->nhosts; k++) {
    struct rhost *h = &ro->hosts[ro->order[k]];
    if (h->stage != ro->stage) return false;
    if (h->selected && h->phase == HR_PENDING) return true;
  }
  return false;
}

static void on_soak(uv_timer_t *t) {
  struct rollout *ro = t->data;
  if (ro->finished || ro->interrupts) return;
  say(ro, "soak over: re-checking the health of stage %u", ro->stage + 1);
  /* A re-check is a host in flight like any other: it holds no slot of
   * its own counter, so however it ends (healthy, rolled back, lost past
   * its reconnect deadline) the stage moves on when no host is active. */
  for (size_t i = 0; i < ro->nhosts; i++) {
    struct rhost *h = &ro->hosts[i];
    if (!h->selected || h->stage != ro->stage || strcmp(h->status, HF_HOST_UPGRADED)) continue;
    h->goal = G_RECHECK;
    host_launch(h);
  }
  launch_more(ro);
}

/* Asks the operator whether to go on; false = pause. */
static bool confirm_stage(struct rollout *ro, unsigned stage, size_t n) {
  FILE *tty = fopen("/dev/tty", "r+");
  if (!tty) return false;
  progress_clear(ro);
  fprintf(tty, "Stage %u of %u: %zu host%s. Continue? [y/N] ", stage + 1, ro->nstages, n, n == 1 ? "" : "s");
  fflush(tty);
  char line[32] = "";
  bool yes = fgets(line, sizeof line, tty) && (line[0] == 'y' || line[0] == 'Y');
  fclose(tty);
  return yes;
}

/* Starts hosts of the current stage while slots are free; moves the rollout
 * on when the stage is over. */
static void launch_more(struct rollout *ro) {
  if (ro->finished) return;
  if (ro->interrupts) {
    if (ro->active == 0) {
      say(ro, "paused: every host in flight reached a safe point; continue with 'hubfleet resume %s'", ro->id);
      finish(ro, ro->o->mode == HF_RM_DRYRUN ? "interrupted" : HF_ROLLOUT_PAUSED);
    }
    return;
  }
  if (ro->o->mode == HF_RM_ROLLBACK || ro->o->mode == HF_RM_DRYRUN) {
    while (!ro->halting && ro->next < ro->nhosts && ro->active < ro->o->parallel) {
      struct rhost *h = &ro->hosts[ro->order[ro->next++]];
      if (h->selected && h->phase == HR_PENDING) host_launch(h);
    }
    if (ro->active == 0 && ro->next >= ro->nhosts) finish(ro, ro->o->mode == HF_RM_ROLLBACK ? HF_ROLLOUT_ROLLEDBACK : "done");
    return;
  }
  while (ro->active < ro->o->parallel && ro->next < ro->nhosts) {
    struct rhost *h = &ro->hosts[ro->order[ro->next]];
    if (h->stage != ro->stage) break;
    ro->next++;
    if (!h->selected || h->phase != HR_PENDING) continue;
    /* Halting: untouched hosts stay untouched; a host a killed controller
     * left mid-upgrade (resume) is still finished. */
    if (ro->halting && strcmp(h->status, HF_HOST_RUNNING)) continue;
    host_launch(h);
  }
  if (ro->active > 0) return;
  if (ro->halting) { finish(ro, HF_ROLLOUT_HALTED); return; }
  if (stage_has_pending(ro)) return;
  if (ro->next < ro->nhosts && ro->hosts[ro->order[ro->next]].stage == ro->stage) return;
  /* Stage over (its soak re-check too, when one ran). */
  if (ro->soaked != ro->stage + 1) {
    say(ro, "stage %u of %u done", ro->stage + 1, ro->nstages);
    emit(ro, NULL, "stage", "info", "stage %u done", ro->stage + 1);
  }
  if (ro->stage + 1 >= ro->nstages) { finish(ro, HF_ROLLOUT_DONE); return; }
  if (ro->o->soak_ms && ro->soaked != ro->stage + 1) {
    ro->soaked = ro->stage + 1;
    say(ro, "soaking %us before re-checking stage %u", ro->o->soak_ms / 1000, ro->stage + 1);
    uv_timer_start(&ro->soak_timer, on_soak, ro->o->soak_ms, 0);
    return;
  }
  stage_next(ro);
}

static void stage_next(struct rollout *ro) {
  if (ro->halting) { finish(ro, HF_ROLLOUT_HALTED); return; }
  unsigned next = ro->stage + 1;
  size_t n = 0;
  for (size_t i = 0; i < ro->nhosts; i++) n += ro->hosts[i].selected && ro->hosts[i].stage == next;
  if (ro->o->confirm && !confirm_stage(ro, next, n)) {
    say(ro, "paused before stage %u: continue with 'hubfleet resume %s'", next + 1, ro->id);
    if (ro->o->state) hf_state_rollout_set_stage(ro->o->state, ro->id, next);
    finish(ro, HF_ROLLOUT_PAUSED);
    return;
  }
  ro->stage = next;
  if (ro->o->state) hf_state_rollout_set_stage(ro->o->state, ro->id, next);
  say(ro, "stage %u of %u: %zu host%s", next + 1, ro->nstages, n, n == 1 ? "" : "s");
  emit(ro, NULL, "stage", "info", "stage %u started: %zu hosts", next + 1, n);
  launch_more(ro);
}

/* ---- setup and summary ---------------------------------------------------------------- */

static bool selected_by(const struct hf_host *h, const struct hf_rollout_opts *o) {
  if (o->limit && !hf_inv_match(h, o->limit)) return false;
  if (o->exclude && hf_inv_match(h, o->exclude)) return false;
  return true;
}

static int cmp_order(const void *a, const void *b, void *ctx) {
  const struct rollout *ro = ctx;
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  if (ro->hosts[x].stage != ro->hosts[y].stage) return ro->hosts[x].stage < ro->hosts[y].stage ? -1 : 1;
  return x < y ? -1 : x > y;
}

/* Envs' jupyterhub versions from preflight data as "hub 3.0.0, user 3.0.0". */
static void envs_line(const json_t *envs, char *buf, size_t len) {
  size_t i, off = 0;
  json_t *e;
  buf[0] = '\0';
  json_array_foreach(envs, i, e) {
    const char *role = json_string_value(json_object_get(e, "role"));
    const char *v = json_string_value(json_object_get(e, "jupyterhub"));
    int n = snprintf(buf + off, len - off, "%s%s %s", off ? ", " : "", role ? role : "env", v ? v : "none");
    if (n < 0 || (size_t)n >= len - off) break;
    off += (size_t)n;
  }
}

static void print_dryrun(struct rollout *ro) {
  FILE *f = stdout;
  json_t *doc = json_pack("{s:s,s:i,s:[]}", "target", ro->target, "stages", (int)ro->nstages, "hosts");
  if (!ro->o->json) fprintf(f, "\nplan: upgrade to %s in %u stage%s, failure budget %u\n", ro->target, ro->nstages,
                            ro->nstages == 1 ? "" : "s", ro->budget);
  for (unsigned s = 0; s < ro->nstages; s++) {
    if (!ro->o->json) fprintf(f, "stage %u:\n", s + 1);
    for (size_t k = 0; k < ro->nhosts; k++) {
      struct rhost *h = &ro->hosts[ro->order[k]];
      if (!h->selected || h->stage != s) continue;
      char from[512];
      envs_line(json_object_get(h->preflight, "envs"), from, sizeof from);
      json_t *hj = json_pack("{s:s,s:i,s:s,s:O?,s:s?}", "host", h->host->name, "stage", (int)s + 1, "status",
                             !strcmp(h->status, HF_HOST_UPGRADED) ? "ready" : h->status,
                             "preflight", h->preflight, "error", h->error[0] ? h->error : NULL);
      json_array_append_new(json_object_get(doc, "hosts"), hj);
      if (ro->o->json) continue;
      char line[2048], name[64], cfrom[512];
      fprintf(f, "  %-24s %s -> %s  %s\n", h->host->name, hf_clean_line(cfrom, sizeof cfrom, from[0] ? from : "?"),
              ro->target, !strcmp(h->status, HF_HOST_UPGRADED) ? "ready" : hf_clean_line(line, sizeof line, h->error));
      size_t i;
      json_t *c;
      json_array_foreach(json_object_get(h->preflight, "checks"), i, c) {
        const char *oc = json_string_value(json_object_get(c, "outcome"));
        fprintf(f, "      %-7s %-22s ", oc ? oc : "?",
                hf_clean_line(name, sizeof name, json_string_value(json_object_get(c, "name")) ?: "?"));
        fprintf(f, "%s\n", hf_clean_line(line, sizeof line, json_string_value(json_object_get(c, "detail")) ?: ""));
      }
    }
  }
  if (ro->o->json) { json_dumpf(doc, f, JSON_INDENT(2)); fputc('\n', f); }
  json_decref(doc);
}

static void print_summary(struct rollout *ro) {
  int up = 0, failed = 0, rolled = 0, att = 0, untouched = 0, running = 0;
  json_t *hosts = ro->o->state ? hf_state_hosts(ro->o->state, ro->id) : NULL;
  size_t i;
  json_t *row;
  json_array_foreach(hosts, i, row) {
    const char *st = json_string_value(json_object_get(row, "status"));
    if (!strcmp(st, HF_HOST_UPGRADED)) up++;
    else if (!strcmp(st, HF_HOST_ROLLEDBACK)) rolled++;
    else if (!strcmp(st, HF_HOST_ATTENTION)) att++;
    else if (!strcmp(st, HF_HOST_PENDING)) untouched++;
    else if (!strcmp(st, HF_HOST_RUNNING)) running++;   /* paused or stopped mid-procedure */
    else failed++;
  }
  if (ro->o->json) {
    json_t *doc = json_pack("{s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:O}", "rollout", ro->id, "target", ro->target,
                            "status", ro->final_status ? ro->final_status : "?", "upgraded", up, "failed", failed,
                            "rolled_back", rolled, "needs_attention", att, "untouched", untouched,
                            "in_progress", running, "hosts", hosts);
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
  } else {
    printf("\nrollout %s to %s: %s\n", ro->id, ro->target, ro->final_status ? ro->final_status : "?");
    if (ro->o->mode == HF_RM_ROLLBACK)
      printf("  %d rolled back, %d need attention; %.1fs\n", rolled, att, (double)(hf_state_now_ms() - ro->t0) / 1000.0);
    else
    {
      char inprog[96] = "";
      if (running) snprintf(inprog, sizeof inprog, ", %d in progress (resume goes on from the journals)", running);
      printf("  %d upgraded, %d failed, %d rolled back, %d need attention, %d untouched%s; budget %u, used %d; %.1fs\n",
             up, failed, rolled, att, untouched, inprog, ro->budget, ro->failures,
             (double)(hf_state_now_ms() - ro->t0) / 1000.0);
    }
    printf("  %-24s %-5s %-16s %-9s %s\n", "HOST", "STAGE", "STATUS", "DOWNTIME", "ERROR");
    json_array_foreach(hosts, i, row) {
      char down[32] = "-";
      json_t *d = json_object_get(row, "downtime_ms");
      if (json_is_integer(d)) snprintf(down, sizeof down, "%.1fs", (double)json_integer_value(d) / 1000.0);
      char err[2048];
      hf_clean_line(err, sizeof err, json_string_value(json_object_get(row, "error")));
      printf("  %-24s %-5lld %-16s %-9s %s\n", json_string_value(json_object_get(row, "host")),
             (long long)json_integer_value(json_object_get(row, "stage")) + 1,
             json_string_value(json_object_get(row, "status")), down, err);
    }
    printf("  details: hubfleet status %s\n", ro->id);
  }
  if (att) ro->exit_code = HF_EXIT_ATTENTION;
  else if (ro->final_status && !strcmp(ro->final_status, HF_ROLLOUT_HALTED)) ro->exit_code = HF_EXIT_FAIL;
  else if (ro->final_status && !strcmp(ro->final_status, HF_ROLLOUT_PAUSED)) ro->exit_code = HF_EXIT_OK;
  else if (rolled && ro->o->mode != HF_RM_ROLLBACK) ro->exit_code = HF_EXIT_ROLLEDBACK;
  else if (failed) ro->exit_code = HF_EXIT_FAIL;
  else ro->exit_code = HF_EXIT_OK;
  json_decref(hosts);
}

/* Loads the recorded rollout (resume/rollback) into ro: target, stages, the
 * hosts' recorded status. Returns 0 or an exit code. */
static int load_recorded(struct rollout *ro) {
  const struct hf_rollout_opts *o = ro->o;
  json_t *r = hf_state_rollout_get(o->state, o->rollout_id);
  if (!r) {
    fprintf(stderr, "hubfleet: no rollout '%s' in the state file (see hubfleet history)\n", o->rollout_id);
    return HF_EXIT_USAGE;
  }
  const char *status = json_string_value(json_object_get(r, "status"));
  snprintf(ro->id, sizeof ro->id, "%s", o->rollout_id);
  snprintf(ro->target, sizeof ro->target, "%s", json_string_value(json_object_get(r, "target")));
  ro->nstages = (unsigned)json_integer_value(json_object_get(r, "nstages"));
  ro->stage = (unsigned)json_integer_value(json_object_get(r, "stage"));
  ro->budget = (unsigned)json_integer_value(json_object_get(r, "budget"));
  if (o->mode == HF_RM_RESUME && strcmp(status, HF_ROLLOUT_RUNNING) && strcmp(status, HF_ROLLOUT_PAUSED)) {
    fprintf(stderr, "hubfleet resume: rollout %s is %s; only a running or paused rollout can be resumed%s\n",
            ro->id, status, !strcmp(status, HF_ROLLOUT_HALTED) ? " (it halted on its failure budget: "
            "fix the cause and start a new rollout, or undo it with hubfleet rollback)" : "");
    json_decref(r);
    return HF_EXIT_USAGE;
  }
  json_decref(r);
  json_t *rows = hf_state_hosts(o->state, ro->id);
  size_t i;
  json_t *row;
  int missing = 0;
  json_array_foreach(rows, i, row) {
    const char *name = json_string_value(json_object_get(row, "host"));
    const char *st = json_string_value(json_object_get(row, "status"));
    const char *step = json_string_value(json_object_get(row, "step"));
    size_t k;
    for (k = 0; k < ro->nhosts && strcmp(ro->hosts[k].host->name, name); k++) {}
    if (k == ro->nhosts) {
      fprintf(stderr, "hubfleet: host %s of rollout %s is not in the inventory %s any more\n", name, ro->id,
              o->inventory_path);
      missing++;
      continue;
    }
    struct rhost *h = &ro->hosts[k];
    h->stage = (unsigned)json_integer_value(json_object_get(row, "stage"));
    h->status = !strcmp(st, HF_HOST_PENDING) ? HF_HOST_PENDING : !strcmp(st, HF_HOST_RUNNING) ? HF_HOST_RUNNING
              : !strcmp(st, HF_HOST_UPGRADED) ? HF_HOST_UPGRADED : !strcmp(st, HF_HOST_ROLLEDBACK) ? HF_HOST_ROLLEDBACK
              : !strcmp(st, HF_HOST_ATTENTION) ? HF_HOST_ATTENTION : HF_HOST_FAILED;
    if (is_failure(h->status)) ro->failures++;
    h->step = ST_PREFLIGHT;
    for (int s = 0; step && s < ST__COUNT; s++) if (!strcmp(steps[s].name, step)) h->step = s;
    if (step && !strcmp(step, HF_STEP_ROLLBACK)) h->step = ST__COUNT; /* past every step: may have changed */
    if (o->mode == HF_RM_RESUME) {
      /* Running hosts continue from their recorded step after asking the journal;
       * pending ones start from the beginning. */
      h->selected = !strcmp(h->status, HF_HOST_RUNNING) || !strcmp(h->status, HF_HOST_PENDING);
      h->journal_first = !strcmp(h->status, HF_HOST_RUNNING);
      if (!strcmp(h->status, HF_HOST_PENDING)) h->step = ST_PREFLIGHT;
      if (h->step >= ST_STOP) h->t_stop = 0;
      if (!strcmp(h->status, HF_HOST_RUNNING) && step && !strcmp(step, HF_STEP_ROLLBACK)) {
        /* An automatic rollback was under way: it goes on (its journal says
         * whether it already finished); the failed step is never re-sent. */
        const char *err = json_string_value(json_object_get(row, "error"));
        h->goal = G_ROLLBACK;
        snprintf(h->error, sizeof h->error, "%s", err ? err : "rollback under way when the controller stopped");
      }
    } else {
      /* rollback: every host the rollout may have changed */
      bool changed = !strcmp(h->status, HF_HOST_UPGRADED) || !strcmp(h->status, HF_HOST_ATTENTION) ||
                     (!strcmp(h->status, HF_HOST_RUNNING) && h->step >= ST_BACKUP);
      h->selected = changed && (!o->hosts || hf_inv_match(h->host, o->hosts));
      h->goal = G_ROLLBACK;
      json_t *d = json_object_get(row, "downtime_ms");
      h->down_before = json_is_integer(d) ? json_integer_value(d) : 0;
      h->journal_first = true;
    }
  }
  json_decref(rows);
  if (missing) return HF_EXIT_USAGE;
  return 0;
}

int hf_rollout_run(const struct hf_rollout_opts *o) {
  struct rollout ro;
  char err[512];
  int rc = HF_EXIT_INTERNAL;
  memset(&ro, 0, sizeof ro);
  ro.o = o;
  ro.tty = isatty(STDERR_FILENO); /* live progress line; plain lines otherwise */
  ro.t0 = hf_state_now_ms();
  ro.nhosts = o->inv->nhosts;
  ro.hosts = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *ro.hosts);
  ro.order = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *ro.order);
  bool *canary = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *canary);
  unsigned *stage_of = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *stage_of);
  const char **names = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *names);
  if (!ro.hosts || !ro.order || !canary || !stage_of || !names) goto out;
  if (uv_loop_init(&ro.loop) != 0) goto out;

  size_t nsel = 0;
  for (size_t i = 0; i < ro.nhosts; i++) {
    struct rhost *h = &ro.hosts[i];
    h->ro = &ro;
    h->host = &o->inv->hosts[i];
    h->status = HF_HOST_PENDING;
    h->step = ST_PREFLIGHT;
    uv_timer_init(&ro.loop, &h->timer);
    h->timer.data = h;
  }

  if (o->mode == HF_RM_RESUME || o->mode == HF_RM_ROLLBACK) {
    if ((rc = load_recorded(&ro)) != 0) goto out_loop;
    for (size_t i = 0; i < ro.nhosts; i++) nsel += ro.hosts[i].selected;
    if (nsel == 0) {
      if (o->mode == HF_RM_ROLLBACK) printf("rollout %s: no host to roll back\n", ro.id);
      else printf("rollout %s: no host left to run\n", ro.id);
    }
  } else {
    snprintf(ro.target, sizeof ro.target, "%s", o->target);
    struct hf_stages stages;
    struct hf_budget budget = { false, 0 };
    if (o->stages_spec && hf_plan_parse_stages(o->stages_spec, &stages, err, sizeof err) != 0) {
      fprintf(stderr, "hubfleet upgrade: %s\n", err); rc = HF_EXIT_USAGE; goto out_loop;
    }
    if (o->budget_spec && hf_plan_parse_budget(o->budget_spec, &budget, err, sizeof err) != 0) {
      fprintf(stderr, "hubfleet upgrade: %s\n", err); rc = HF_EXIT_USAGE; goto out_loop;
    }
    /* Plan over the selected hosts only. */
    size_t *sel_idx = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *sel_idx);
    size_t *sel_order = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *sel_order);
    if (!sel_idx || !sel_order) { free(sel_idx); free(sel_order); goto out_loop; }
    for (size_t i = 0; i < ro.nhosts; i++)
      if (selected_by(ro.hosts[i].host, o)) { sel_idx[nsel] = i; canary[nsel] = ro.hosts[i].host->canary; nsel++; }
    if (nsel == 0) {
      fprintf(stderr, "hubfleet upgrade: no host selected (check --limit/--exclude against the inventory)\n");
      free(sel_idx); free(sel_order); rc = HF_EXIT_USAGE; goto out_loop;
    }
    ro.nstages = (unsigned)hf_plan_assign(o->stages_spec ? &stages : NULL, canary, nsel, stage_of, sel_order);
    ro.budget = hf_plan_budget_hosts(&budget, nsel);
    for (size_t k = 0; k < nsel; k++) {
      struct rhost *h = &ro.hosts[sel_idx[k]];
      h->selected = true;
      h->stage = stage_of[k];
      names[k] = h->host->name;
    }
    for (size_t k = 0; k < nsel; k++) stage_of[k] = ro.hosts[sel_idx[k]].stage;
    if (o->mode == HF_RM_UPGRADE) {
      json_t *opts = json_pack("{s:s?,s:s?,s:s?,s:s?,s:i,s:I,s:I,s:b,s:b}", "stages", o->stages_spec,
                               "max_failures", o->budget_spec, "limit", o->limit, "exclude", o->exclude,
                               "parallel", o->parallel, "soak_ms", (json_int_t)o->soak_ms,
                               "health_ms", (json_int_t)o->health_ms, "confirm", o->confirm, "rehearse", o->rehearse);
      int r = hf_state_rollout_create(o->state, ro.target, o->inventory_path, opts, ro.nstages, ro.budget,
                                      names, stage_of, nsel, ro.id, sizeof ro.id);
      json_decref(opts);
      if (r != 0) {
        fprintf(stderr, "hubfleet upgrade: state file: %s\n", hf_state_errmsg(o->state));
        free(sel_idx); free(sel_order); goto out_loop;
      }
    } else {
      snprintf(ro.id, sizeof ro.id, "dry-run");
      for (size_t i = 0; i < ro.nhosts; i++) ro.hosts[i].goal = G_PREFLIGHT_ONLY;
    }
    free(sel_idx);
    free(sel_order);
  }

  /* Launch order: by stage, then inventory order (canaries were put first by the plan). */
  for (size_t i = 0; i < ro.nhosts; i++) ro.order[i] = i;
  if (o->mode == HF_RM_UPGRADE || o->mode == HF_RM_DRYRUN) {
    /* canaries first inside a stage */
    size_t k = 0;
    for (unsigned s = 0; s < ro.nstages; s++) {
      for (size_t i = 0; i < ro.nhosts; i++)
        if (ro.hosts[i].selected && ro.hosts[i].stage == s && ro.hosts[i].host->canary) ro.order[k++] = i;
      for (size_t i = 0; i < ro.nhosts; i++)
        if (ro.hosts[i].selected && ro.hosts[i].stage == s && !ro.hosts[i].host->canary) ro.order[k++] = i;
    }
    for (size_t i = 0; i < ro.nhosts; i++) if (!ro.hosts[i].selected) ro.order[k++] = i;
  } else {
    qsort_r(ro.order, ro.nhosts, sizeof *ro.order, cmp_order, &ro);
  }

  char rules_path[4096];
  err[0] = '\0';
  if (hf_rules_find(o->rules_path, rules_path, sizeof rules_path) != 0 ||
      hf_rules_load(rules_path, &ro.rules, err, sizeof err) != 0) {
    fprintf(stderr, "hubfleet: preflight rules: %s\n", err[0] ? err : "upgrade-rules.json not found (use --rules FILE)");
    rc = HF_EXIT_USAGE;
    goto out_loop;
  }
  char agent[4096];
  if (hf_engine_find_agent(o->agent_path, agent, sizeof agent) != 0) {
    fprintf(stderr, "hubfleet: cannot find hubfleet-agent (use --agent PATH or HUBFLEET_AGENT)\n");
    rc = HF_EXIT_USAGE;
    goto out_loop;
  }
  struct hf_engine_opts eo = {
    .parallel = o->parallel, .known_hosts = o->known_hosts, .accept_new = o->accept_new,
    .agent_path = agent, .timeout_ms = o->timeout_ms, .verbose = o->verbose > 1,
  };
  if (hf_engine_new(&ro.loop, &eo, &ro.engine, err, sizeof err) != 0) {
    fprintf(stderr, "hubfleet: %s\n", err);
    goto out_loop;
  }
  uv_timer_init(&ro.loop, &ro.soak_timer);
  ro.soak_timer.data = &ro;
  uv_timer_init(&ro.loop, &ro.progress_timer);
  ro.progress_timer.data = &ro;
  uv_signal_init(&ro.loop, &ro.sigint);
  uv_signal_init(&ro.loop, &ro.sigterm);
  ro.sigint.data = ro.sigterm.data = &ro;
  uv_signal_start(&ro.sigint, on_signal, SIGINT);
  uv_signal_start(&ro.sigterm, on_signal, SIGTERM);
  uv_unref((uv_handle_t *)&ro.sigint);
  uv_unref((uv_handle_t *)&ro.sigterm);
  if (ro.tty) uv_timer_start(&ro.progress_timer, on_progress_timer, 250, 250);

  if (o->mode == HF_RM_UPGRADE)
    say(&ro, "rollout %s: upgrade %zu host%s to %s in %u stage%s (parallel %d, failure budget %u)", ro.id, nsel,
        nsel == 1 ? "" : "s", ro.target, ro.nstages, ro.nstages == 1 ? "" : "s", o->parallel, ro.budget);
  else if (o->mode == HF_RM_RESUME)
    say(&ro, "rollout %s: resuming at stage %u of %u (%zu host%s to run)", ro.id, ro.stage + 1, ro.nstages, nsel,
        nsel == 1 ? "" : "s");
  else if (o->mode == HF_RM_ROLLBACK)
    say(&ro, "rollout %s: rolling back %zu host%s", ro.id, nsel, nsel == 1 ? "" : "s");
  else
    say(&ro, "dry run: preflight of %zu host%s for %s", nsel, nsel == 1 ? "" : "s", ro.target);
  emit(&ro, NULL, "rollout", "info", "%s", o->mode == HF_RM_RESUME ? "resumed" : o->mode == HF_RM_ROLLBACK ? "rollback started" : "started");
  if (o->mode == HF_RM_RESUME) {
    /* Resume at the recorded stage; earlier stages' running hosts go too. */
    unsigned first = ro.stage;
    for (size_t i = 0; i < ro.nhosts; i++)
      if (ro.hosts[i].selected && ro.hosts[i].stage < first) first = ro.hosts[i].stage;
    ro.stage = first;
    while (ro.next < ro.nhosts && ro.hosts[ro.order[ro.next]].stage < first) ro.next++;
    hf_state_rollout_set_status(o->state, ro.id, HF_ROLLOUT_RUNNING);
    /* Killed after the budget was exceeded but before it halted: finish the
     * hosts in flight, start no new one. */
    if ((unsigned)ro.failures > ro.budget) {
      ro.halting = true;
      say(&ro, "failure budget already exceeded (%d failed, budget %u): finishing the hosts in flight only",
          ro.failures, ro.budget);
    }
  }
  if (o->mode == HF_RM_ROLLBACK) hf_state_rollout_set_status(o->state, ro.id, HF_ROLLOUT_RUNNING);
  launch_more(&ro);
  uv_run(&ro.loop, UV_RUN_DEFAULT);
  bool drained = false;
  if (ro.state_broken) {
    ro.finished = true;   /* nothing more can be recorded: the state file says "running", resume continues */
    ro.final_status = "stopped (the state file cannot be written)";
  } else if (!ro.finished) {
    /* The loop ran dry before the scheduler said the rollout ended: never
     * record that as done. Hosts left unfinished make it paused, so resume
     * picks them up. */
    bool left = false;
    for (size_t i = 0; i < ro.nhosts; i++)
      if (ro.hosts[i].selected && ro.hosts[i].phase != HR_DONE) left = true;
    if (left && o->mode != HF_RM_DRYRUN) {
      drained = true;
      say(&ro, "internal error: the rollout stopped with hosts left to run; recorded as paused: "
          "continue with 'hubfleet resume %s'", ro.id);
      finish(&ro, HF_ROLLOUT_PAUSED);
    } else {
      finish(&ro, o->mode == HF_RM_ROLLBACK ? HF_ROLLOUT_ROLLEDBACK : HF_ROLLOUT_DONE);
    }
  }

  if (o->mode == HF_RM_DRYRUN) {
    print_dryrun(&ro);
    rc = HF_EXIT_OK;
    for (size_t i = 0; i < ro.nhosts; i++)
      if (ro.hosts[i].selected && strcmp(ro.hosts[i].status, HF_HOST_UPGRADED)) rc = HF_EXIT_FAIL;
  } else {
    if (o->mode == HF_RM_ROLLBACK) {
      bool all = true;
      for (size_t i = 0; i < ro.nhosts; i++)
        if (ro.hosts[i].selected && strcmp(ro.hosts[i].status, HF_HOST_ROLLEDBACK)) all = false;
      if (!all) { ro.final_status = HF_ROLLOUT_HALTED; hf_state_rollout_set_status(o->state, ro.id, HF_ROLLOUT_HALTED); }
    }
    print_summary(&ro);
    rc = drained || ro.state_broken ? HF_EXIT_INTERNAL : ro.interrupts ? 130 : ro.exit_code;
  }
  if (o->stats) {
    struct hf_engine_stats s;
    hf_engine_stats(ro.engine, &s);
    fprintf(stderr, "stats: sessions %" PRIu64 ", retries %" PRIu64 ", uploads %" PRIu64 ", cpu %.3fs, max rss %" PRIu64
            " KiB, longest loop stall %.1f ms (%.1f ms counting waits for a CPU)\n", s.sessions, s.retries,
            s.uploads, (double)s.cpu_us / 1e6, s.maxrss_kb, (double)s.max_stall_ns / 1e6,
            (double)s.max_stall_wall_ns / 1e6);
  }

out_loop:
  for (size_t i = 0; i < ro.nhosts; i++) {
    close_session(&ro.hosts[i]);
    uv_close((uv_handle_t *)&ro.hosts[i].timer, NULL);
    json_decref(ro.hosts[i].preflight);
  }
  if (ro.engine) {
    uv_close((uv_handle_t *)&ro.soak_timer, NULL);
    uv_close((uv_handle_t *)&ro.progress_timer, NULL);
    uv_close((uv_handle_t *)&ro.sigint, NULL);
    uv_close((uv_handle_t *)&ro.sigterm, NULL);
  }
  uv_run(&ro.loop, UV_RUN_DEFAULT);
  hf_engine_free(ro.engine);
  uv_run(&ro.loop, UV_RUN_DEFAULT);   /* the engine is freed in its handles' close callbacks */
  json_decref(ro.rules);
  uv_loop_close(&ro.loop);
out:
  free(ro.hosts);
  free(ro.order);
  free(canary);
  free(stage_of);
  free(names);
  return rc;
}
