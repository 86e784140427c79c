/* procedure.c: what a host does in each state of its machine: the upgrade's
 * steps in order, the rollback when one fails after the stop, the soak
 * re-check, reconnecting to a host lost mid-change, and reconciling with the
 * agent's journal (resume). Every state change goes through host_to(). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hf_controller.h"
#include "hf_rules.h"
#include "hf_proto.h"
#include "rollout_int.h"

static const char *step_name(const struct rhost *h) {
  return h->step < ST__COUNT ? hr_step(h->step)->name : HF_STEP_ROLLBACK;
}

void close_session(struct rhost *h) {
  if (h->sess) {
    h->ro->port->close(h->sess);
    h->sess = NULL;
  }
}

/* The host reached an outcome in this run. */
void host_done(struct rhost *h, enum hr_outcome oc, const char *error) {
  struct rollout *ro = h->ro;
  close_session(h);
  if (ro->o->mode != HF_RM_DRYRUN || oc != HO_UPGRADED) host_set_outcome(h, oc, error);
  else host_set_outcome(h, oc, NULL); /* a dry run's "ready": nothing recorded */
  host_to(h, HR_DONE, h->step);
  if (oc == HO_UPGRADED)
    say(ro, "%s: %s", h->host->name, ro->o->mode == HF_RM_DRYRUN ? "preflight passed" : "upgraded");
  else
    say(ro, "%s: %s%s%s", h->host->name, hr_outcome_text(oc), error ? ": " : "", error ? error : "");
  emit(ro, h, "host", hr_outcome_failure(oc) ? "error" : "info", "%s%s%s", hr_outcome_text(oc), error ? ": " : "",
       error ? error : "");
  if (ro->o->mode == HF_RM_UPGRADE || ro->o->mode == HF_RM_RESUME) {
    if (!ro->halting && ro_failures(ro) > ro->budget) {
      ro->halting = true;
      say(ro, "failure budget exceeded (%zu failed, budget %u): halting; hosts not yet started stay untouched",
          ro_failures(ro), ro->budget);
      emit(ro, NULL, "rollout", "error", "failure budget exceeded: %zu failed, budget %u", ro_failures(ro), ro->budget);
    }
  }
  launch_more(ro);
}

/* The rollback goal made durable before anything acts on it (issue 13): the
 * host row says "running, step rollback", so a resume after this controller
 * dies continues the rollback and never re-sends the step that failed. */
static bool rollback_record_goal(struct rhost *h, const char *why) {
  return host_record(h, HO_RUNNING, HF_STEP_ROLLBACK, why);
}

static void rollback_start(struct rhost *h, const char *why) {
  struct rollout *ro = h->ro;
  snprintf(h->error, sizeof h->error, "%s", why);
  if (!rollback_record_goal(h, why)) return;
  say(ro, "%s: %s; rolling back", h->host->name, why);
  emit(ro, h, "host", "warn", "rolling back: %s", why);
  h->goal = G_ROLLBACK;
  if (!h->sess || !ro->port->ready(h->sess)) {
    close_session(h);
    host_launch(h);
    return;
  }
  host_send(h);
}

static void on_reconnect_timer(uv_timer_t *t) { host_launch(t->data); }

/* Between two tries at a lost host: 2 s, or a quarter of a short --reconnect. */
static uint64_t retry_ms(const struct rollout *ro) {
  uint64_t q = ro->o->reconnect_ms / 4;
  return q < 50 ? 50 : q > 2000 ? 2000 : q;
}

void host_timer_init(struct rhost *h) {
  uv_timer_init(&h->ro->loop, &h->timer);
  h->timer.data = h;
}

/* Connection lost while the hub may be mid-change: keep trying to reach it
 * until the reconnect deadline, then ask its journal. */
static void host_wait_reconnect(struct rhost *h, const char *why) {
  struct rollout *ro = h->ro;
  close_session(h);
  if (h->reconnect_deadline == 0) {
    h->reconnect_deadline = hf_state_now_ms() + ro->o->reconnect_ms;
    say(ro, "%s: lost during %s (%s); reconnecting for up to %us", h->host->name, step_name(h), why,
        ro->o->reconnect_ms / 1000);
    emit(ro, h, "host", "warn", "connection lost: %s", why);
  }
  if (hf_state_now_ms() >= h->reconnect_deadline) {
    char msg[600];
    snprintf(msg, sizeof msg, "unreachable in the middle of %s (%s); the host's journal has what happened: "
             "run 'hubfleet resume %s' or 'hubfleet rollback %s --hosts %s' once it is reachable",
             step_name(h), why, ro->id, ro->id, h->host->name);
    host_done(h, HO_ATTENTION, msg);
    return;
  }
  host_to(h, HR_WAIT, h->step);
  h->journal_first = true;
  uv_timer_start(&h->timer, on_reconnect_timer, retry_ms(ro), 0);
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

/* The request's end in the state file (its start was written by host_to). */
static void request_end(struct rhost *h, int status, bool lost, const json_t *data, const char *message) {
  struct rollout *ro = h->ro;
  if (ro->o->state && h->step_id)
    hf_state_step_end(ro->o->state, h->step_id, status == 0 ? "ok" : lost ? "unknown" : "failed", data,
                      status == 0 ? NULL : message);
  h->step_id = 0;
}

/* Whether a failed request may have run on the host: the engine says the
 * session was lost (or this controller closed it under the request). */
static bool request_lost(const struct rhost *h, struct hf_session *s, int status) {
  return status != 0 && (h->ro->port->lost(s) || status == HF_ECANCELED);
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
  case ST_HEALTH: {
    /* The users' downtime, when the agent probed users' servers. */
    json_t *ud = json_object_get(data, "users_downtime_ms");
    if (json_is_integer(ud)) hf_state_host_set_users_downtime(ro->o->state, ro->id, h->host->name, json_integer_value(ud));
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

/* The hub's downtime so far (stop to now, plus an earlier run's). */
static void record_downtime(struct rhost *h, int64_t until) {
  struct rollout *ro = h->ro;
  if (h->t_stop && until > h->t_stop && ro->o->state)
    hf_state_host_set_downtime(ro->o->state, ro->id, h->host->name, h->down_before + until - h->t_stop);
}

/* For a host of a stage not reached yet: when its failure counts. */
static const char *later_stage_note(const struct rhost *h) {
  static char note[160];
  note[0] = '\0';
  if (h->stage > h->ro->stage && h->ro->o->mode != HF_RM_DRYRUN)
    snprintf(note, sizeof note, " (found while preparing stage %u; %s)", h->stage + 1,
             h->ro->o->stop_early ? "counts against the failure budget now (--stop-early)"
                                  : "counts against the failure budget when that stage starts");
  return note;
}

/* The rehearsal's revisions: what migrate should reach, and whether it
 * may skip (no schema change). */
static void keep_prediction(struct rhost *h, const json_t *data) {
  const json_t *reh = json_object_get(data, "rehearsal");
  const char *before = json_string_value(json_object_get(reh, "alembic_before"));
  const char *after = json_string_value(json_object_get(reh, "alembic_after"));
  h->expect_rev[0] = h->predicted_rev[0] = '\0';
  if (after && strlen(after) < sizeof h->predicted_rev) snprintf(h->predicted_rev, sizeof h->predicted_rev, "%s", after);
  if (before && after && !strcmp(before, after) && h->predicted_rev[0])
    snprintf(h->expect_rev, sizeof h->expect_rev, "%s", after);
}

/* The live revision after migrate against the rehearsal's: a difference is
 * recorded and shown (the hub's own start and health decide). */
static void check_prediction(struct rhost *h, const json_t *data) {
  const char *live = json_string_value(json_object_get(data, "alembic_after"));
  bool skipped = json_is_true(json_object_get(data, "skipped"));
  if (skipped) emit(h->ro, h, "step", "info", "migrate skipped: the rehearsal saw no schema change (revision %s)",
                    h->expect_rev);
  if (!h->predicted_rev[0] || !live) return;
  if (strcmp(live, h->predicted_rev)) {
    say(h->ro, "%s: warning: the database is at revision %s after migrate; the rehearsal predicted %s",
        h->host->name, live, h->predicted_rev);
    emit(h->ro, h, "step", "warn", "revision %s after migrate, rehearsal predicted %s", live, h->predicted_rev);
  } else {
    emit(h->ro, h, "step", "info", "revision %s after migrate, as the rehearsal predicted", live);
  }
}

/* stage answered: a host preparing ahead of its stage is now prepared; a
 * prepared host's re-check that found something changed (the agent staged
 * again) prepares again from preflight, so the rules see the new facts.
 * true = handled. */
static bool prepare_done(struct rhost *h, const json_t *data) {
  struct rollout *ro = h->ro;
  if (h->goal == G_PREPARE) {
    close_session(h);
    h->prepared = true;
    if (!host_record(h, HO_PREPARED, hr_step(ST_STAGE)->name, NULL)) return true;
    host_to(h, HR_PREPARED, h->step);
    say(ro, "%s: prepared for stage %u (%s)", h->host->name, h->stage + 1,
        !data ? "preflight passed; not staged" : json_is_true(json_object_get(data, "already")) ? "already staged"
        : "target staged beside the live envs");
    emit(ro, h, "host", "info", "prepared");
    launch_more(ro);
    return true;
  }
  if (h->prepared && data && !json_is_true(json_object_get(data, "already"))) {
    h->prepared = false;
    say(ro, "%s: changed since it was prepared (the agent staged it again): preflight again", h->host->name);
    emit(ro, h, "host", "info", "changed since prepared: preflight again");
    h->step = ST_PREFLIGHT;
    host_send(h);
    return true;
  }
  return false;
}

static void on_step_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  const char *name = hr_step(h->step)->name;
  events_summary(h);
  int64_t took = hf_state_now_ms() - h->t_step;
  bool lost = request_lost(h, s, status);
  char why[700];

  if (h->step == ST_STAGE && (status == HF_EUNSUPPORTED || status == HF_ENOSPC)) {
    /* An environment the agent cannot stage (conda, a symlinked or nested
     * env) or no room for a copy beside it: install will run pip inside the
     * downtime, as before staging existed (preflight checked its room). */
    say(ro, "%s: not staged (%s): install will run pip while the hub is down", h->host->name,
        message && *message ? message : "unsupported");
    emit(ro, h, "step", "warn", "not staged: %s", message && *message ? message : "unsupported");
    request_end(h, 0, false, NULL, NULL);
    status = 0;
    data = NULL;
  }
  if (status != 0) snprintf(why, sizeof why, "%s failed: %s", name, message && *message ? message : hf_strerror(status));
  /* A failure that will be rolled back: the goal is in the state before the
   * failed step's end is, so no moment exists where a resume would re-send it. */
  if (status != 0 && !(lost && h->step >= ST_BACKUP) && h->step >= ST_STOP) rollback_record_goal(h, why);
  request_end(h, status, lost, data, message);

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
      host_done(h, ref[0] ? HO_FAILED : HO_UPGRADED, ref[0] ? ref : NULL);
      return;
    }
    if (h->step == ST_PREFLIGHT) {
      char ref[600];
      refusals(data, ref, sizeof ref);
      keep_prediction(h, data);
      if (ro->o->state && ro->id[0]) hf_state_event(ro->o->state, ro->id, h->host->name, "info", "preflight checks recorded");
      json_decref(merged);
      if (ref[0]) {
        snprintf(why, sizeof why, "preflight refused: %s%s", ref, later_stage_note(h));
        host_done(h, HO_FAILED, why);
        return;
      }
    }
    if (h->step == ST_STAGE && prepare_done(h, data)) return;
    if (h->step == ST_MIGRATE) check_prediction(h, data);
    if (!ro->o->verbose && !ro->tty) say(ro, "%s: %s ok (%.1fs)", h->host->name, name, (double)took / 1000.0);
    emit(ro, h, "step", "info", "%s ok in %.1fs", name, (double)took / 1000.0);
    if (h->step == ST_HEALTH) {
      /* The agent waits for its users' probe after the verdict: not downtime. */
      json_int_t wait = json_integer_value(json_object_get(json_object_get(data, "users_probe"), "wait_ms"));
      record_downtime(h, hf_state_now_ms() - (wait > 0 && wait < 60000 ? wait : 0));
      host_done(h, HO_UPGRADED, NULL);
      return;
    }
    h->step++;
    host_send(h);
    return;
  }

  emit(ro, h, "step", "error", "%s", why);
  if (h->goal == G_PREPARE) {   /* nothing changed: the host failed its preparation */
    snprintf(why + strlen(why), sizeof why - strlen(why), "%s", later_stage_note(h));
    host_done(h, HO_FAILED, why);
    return;
  }
  if (lost && h->step >= ST_BACKUP) {   /* the hub may be mid-change: find out, never guess */
    host_wait_reconnect(h, message && *message ? message : hf_strerror(status));
    return;
  }
  if (h->step >= ST_STOP) {
    rollback_start(h, why);
    return;
  }
  host_done(h, HO_FAILED, why);
}

/* The backup the state file recorded for h (the backup step's result), or
 * NULL; new reference. */
static json_t *recorded_backup(struct rhost *h) {
  json_t *backup = NULL, *hosts, *row;
  size_t i;
  if (!h->ro->o->state) return NULL;
  hosts = hf_state_hosts(h->ro->o->state, h->ro->id);
  json_array_foreach(hosts, i, row)
    if (!strcmp(json_string_value(json_object_get(row, "host")), h->host->name))
      backup = json_incref(json_object_get(row, "backup"));
  json_decref(hosts);
  if (json_is_null(backup)) { json_decref(backup); backup = NULL; }
  return backup;
}

static void on_rollback_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  events_summary(h);
  bool lost = request_lost(h, s, status);
  request_end(h, status, lost, data, message);
  if (status == 0 && json_is_true(json_object_get(data, "nothing_to_undo"))) {
    /* The agent found no backup in its journal of this rollout, but this
     * controller recorded one: the journal is elsewhere (hubfleet_state_dir
     * changed, or an older hubfleet, which named the per-hub directory
     * differently, began the rollout). Nothing was undone: never call that
     * rolled back. */
    json_t *backup = recorded_backup(h);
    if (backup != NULL) {
      const char *dir = json_string_value(json_object_get(json_object_get(backup, "backup"), "dir"));
      char msg[1200];
      snprintf(msg, sizeof msg, "%s%srollback found no journal of this rollout on the host (its state directory "
               "moved: hubfleet_state_dir changed, or an older hubfleet began the rollout): nothing was undone; "
               "backup at %s", h->error, h->error[0] ? "; " : "", dir ? dir : "(see the state file)");
      json_decref(backup);
      host_done(h, HO_ATTENTION, msg);
      return;
    }
  }
  if (status == 0) {
    /* A host's downtime is all the time the rollout kept its hub down: in
     * a later `rollback`, the upgrade's plus the rollback's. */
    record_downtime(h, hf_state_now_ms());
    json_t *ud = json_object_get(data, "users_downtime_ms");   /* the users' probe, when one watched */
    if (json_is_integer(ud) && ro->o->state)
      hf_state_host_set_users_downtime(ro->o->state, ro->id, h->host->name, json_integer_value(ud));
    host_done(h, HO_ROLLEDBACK, ro->o->mode == HF_RM_ROLLBACK ? NULL : h->error);
    return;
  }
  if (lost) {
    host_wait_reconnect(h, message && *message ? message : hf_strerror(status));
    return;
  }
  char msg[1200];
  json_t *backup = recorded_backup(h);
  const char *dir = json_string_value(json_object_get(json_object_get(backup, "backup"), "dir"));
  snprintf(msg, sizeof msg, "%s%srollback failed: %s; backup at %s", h->error, h->error[0] ? "; " : "",
           message && *message ? message : hf_strerror(status), dir ? dir : "(see the host's journal)");
  json_decref(backup);
  host_done(h, HO_ATTENTION, msg);
}

static void on_recheck_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  (void)data;
  events_summary(h);
  request_end(h, status, request_lost(h, s, status), data, message);
  if (status == 0) {
    emit(h->ro, h, "recheck", "info", "healthy after soak");
    close_session(h);
    host_to(h, HR_DONE, h->step);
    launch_more(h->ro);
    return;
  }
  char why[600];
  snprintf(why, sizeof why, "re-check after soak failed: %s", message && *message ? message : hf_strerror(status));
  h->step = ST_HEALTH;
  rollback_start(h, why);
}

/* Steps the journal shows done are recorded from it and skipped; each is
 * idempotent on the agent, so the first that is not done is sent again.
 * Returns true when the host finished while no controller watched. */
static bool reconcile_steps(struct rhost *h, const json_t *data) {
  struct rollout *ro = h->ro;
  /* The hub's downtime counts from its stop, which an earlier controller
   * may have sent: the journal keeps when (the host's clock). */
  int64_t stop_at = journal_time(data, "stop", "begin");
  if (!h->t_stop && stop_at) h->t_stop = stop_at;
  while (h->step < ST__COUNT) {
    const char *js = journal_state_at(data, hr_step(h->step)->name, NULL);
    if (h->step == ST_PREFLIGHT || !js || strcmp(js, "done")) break;
    emit(ro, h, "journal", "info", "journal: %s already done", hr_step(h->step)->name);
    if (ro->o->state) {
      /* What the step returned, as the journal kept it, so the host row
       * still holds the backup and the installed versions after a kill. */
      json_t *jd = journal_step_data(data, h->step);
      int64_t id;
      keep_step_data(h, jd);
      if (hf_state_step_begin(ro->o->state, ro->id, h->host->name, hr_step(h->step)->name, &id) == 0)
        hf_state_step_end(ro->o->state, id, "ok", jd, "reconciled from the host's journal");
      json_decref(jd);
    }
    if (h->step == ST_HEALTH) {
      /* Finished while no controller watched: its downtime from the journal. */
      record_downtime(h, journal_time(data, "health", "done"));
      host_done(h, HO_UPGRADED, NULL);
      return true;
    }
    h->step++;
  }
  if (h->step >= ST__COUNT) { host_done(h, HO_UPGRADED, NULL); return true; }
  return false;
}

static void on_journal_result(struct hf_session *s, int status, const json_t *data, const char *message, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  events_summary(h);
  h->journal_first = false;
  if (status != 0) {
    if (ro->port->lost(s)) { host_wait_reconnect(h, message ? message : ""); return; }
    /* An agent that cannot read its journal cannot tell us what happened. */
    char why[600];
    snprintf(why, sizeof why, "journal unreadable: %s", message ? message : hf_strerror(status));
    if (h->step >= ST_STOP) rollback_start(h, why);
    else host_done(h, HO_FAILED, why);
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
    host_to(h, HR_WAIT, h->step);
    h->journal_first = true;
    uv_timer_start(&h->timer, on_reconnect_timer, retry_ms(ro), 0);
    return;
  }
  h->busy_deadline = 0;
  /* A rollback the journal shows finished needs no second run. */
  if (h->goal == G_ROLLBACK && journal_rolled_back(data)) {
    emit(ro, h, "journal", "info", "journal: rollback already done");
    host_done(h, HO_ROLLEDBACK, ro->o->mode == HF_RM_ROLLBACK ? NULL : h->error);
    return;
  }
  if (h->goal == G_STEPS && reconcile_steps(h, data)) return;
  host_send(h);
}

/* Sends what the host's goal needs next on its ready session. */
void host_send(struct rhost *h) {
  struct rollout *ro = h->ro;
  if ((ro->interrupts && h->goal != G_ROLLBACK) || (ro->halting && h->goal == G_PREPARE)) {
    /* A safe point: the last step's result is recorded and the next one
     * not sent. The host stays "running" at that step in the state file,
     * and resume goes on from its journal. A rollback runs to its end. */
    close_session(h);
    host_to(h, HR_PENDING, h->step);
    say(ro, "%s: paused after %s", h->host->name, h->step < ST__COUNT && h->step > 0 ? hr_step(h->step - 1)->name : "connecting");
    launch_more(ro);
    return;
  }
  json_t *args = json_pack("{s:O}", "hub", h->host->hub);
  hf_result_cb cb;
  const char *op;
  unsigned timeout;
  enum hr_state next;

  if (ro->id[0] && ro->o->mode != HF_RM_DRYRUN) json_object_set_new(args, "rollout", json_string(ro->id));
  if (h->journal_first && ro->o->mode != HF_RM_DRYRUN) {
    op = "journal";
    timeout = JOURNAL_TIMEOUT_MS;
    cb = on_journal_result;
    next = HR_JOURNAL;
  } else if (h->goal == G_ROLLBACK) {
    op = HF_STEP_ROLLBACK;
    timeout = ROLLBACK_TIMEOUT_MS;
    cb = on_rollback_result;
    json_object_set_new(args, "timeout_ms", json_integer(timeout));
    next = HR_ROLLBACK;
  } else if (h->goal == G_RECHECK) {
    op = hr_step(ST_HEALTH)->name;
    cb = on_recheck_result;
    json_object_set_new(args, "target", json_string(ro->target));
    json_object_set_new(args, "timeout_ms", json_integer(ro->o->health_ms));
    timeout = ro->o->health_ms;
    next = HR_RECHECK;
  } else {
    op = hr_step(h->step)->name;
    timeout = h->step == ST_HEALTH ? ro->o->health_ms : (unsigned)hr_step(h->step)->default_timeout_ms;
    cb = on_step_result;
    if ((hr_step(h->step)->target == HF_OPARG_REQ)) json_object_set_new(args, "target", json_string(ro->target));
    if (h->step == ST_PREFLIGHT && !ro->o->rehearse) json_object_set_new(args, "rehearse", json_false());
    /* Ahead of its stage: the agent runs the work at a lower CPU priority. */
    if (h->goal == G_PREPARE && (h->step == ST_PREFLIGHT || h->step == ST_STAGE))
      json_object_set_new(args, "background", json_true());
    /* The rehearsal saw no schema change: the agent skips upgrade-db when
     * the live revision is the one it saw (JupyterHub refuses to start on
     * an old schema, so a wrong skip shows at start). */
    if (h->step == ST_MIGRATE && h->expect_rev[0]) json_object_set_new(args, "expect_revision", json_string(h->expect_rev));
    json_object_set_new(args, "timeout_ms", json_integer(timeout));
    next = h->goal == G_PREPARE ? HR_PREP : HR_STEP;
  }
  if (!host_to(h, next, h->step)) { json_decref(args); return; }
  /* The rollback op stops the hub first (when this run did not already). */
  if ((next == HR_ROLLBACK || (next == HR_STEP && h->step == ST_STOP)) && !h->t_stop) h->t_stop = hf_state_now_ms();
  h->t_step = hf_state_now_ms();
  int r = ro->port->request(h->sess, op, args, timeout + RESULT_GRACE_MS, on_event, cb, h);
  if (r != 0) {
    char why[300];
    snprintf(why, sizeof why, "%s could not be sent: %s", op, hf_strerror(r));
    request_end(h, r, false, NULL, why);
    host_done(h, h->step >= ST_STOP ? HO_ATTENTION : HO_FAILED, why);
  }
}

static void on_ready(struct hf_session *s, int status, void *ctx) {
  struct rhost *h = ctx;
  struct rollout *ro = h->ro;
  if (status != 0) {
    char why[600];
    const char *e = ro->port->error(s);
    snprintf(why, sizeof why, "%s", e && e[0] ? e : hf_strerror(status));
    close_session(h);
    bool may_have_changed = h->goal != G_PREPARE && (h->reconnect_deadline || h->step >= ST_STOP || h->goal == G_ROLLBACK);
    bool retryable = status != HF_EHOSTKEY && status != HF_EAUTH && status != HF_EVERSION;
    if (may_have_changed && retryable && ro->o->mode != HF_RM_DRYRUN) { host_wait_reconnect(h, why); return; }
    char msg[700];
    snprintf(msg, sizeof msg, "unreachable: %s%s", why, h->goal == G_PREPARE ? later_stage_note(h) : "");
    host_done(h, h->goal == G_ROLLBACK || h->step >= ST_STOP ? HO_ATTENTION : HO_FAILED, msg);
    return;
  }
  if (h->reconnect_deadline) {
    say(ro, "%s: reconnected", h->host->name);
    h->reconnect_deadline = 0;
  }
  host_send(h);
}

void host_launch(struct rhost *h) {
  host_to(h, h->goal == G_PREPARE ? HR_PREPCONN : HR_CONNECT, h->step);
  int r = h->ro->port->open(h->ro->engine, h->host, on_ready, h, &h->sess);
  if (r != 0) {
    h->sess = NULL;
    char why[200];
    snprintf(why, sizeof why, "cannot open a session: %s", hf_strerror(r));
    host_done(h, HO_FAILED, why);
  }
}
