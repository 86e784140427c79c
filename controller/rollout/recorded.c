/* recorded.c: a recorded rollout loaded back for resume and rollback, and
 * the agent's journal read (what happened on a host while no controller
 * watched). */
#include <stdio.h>
#include <string.h>
#include <time.h>
#include "hf_controller.h"
#include "rollout_int.h"

/* Latest state of a step in the agent's journal: "begin", "done", "failed"
 * or NULL; *at (may be NULL) receives its record index (-1 when absent). */
const char *journal_state_at(const json_t *data, const char *step, long *at) {
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

/* Whether the journal's last rollback finished after every upgrade step it holds. */
bool journal_rolled_back(const json_t *data) {
  long rb_at, at;
  const char *rb = journal_state_at(data, "rollback", &rb_at);
  if (!rb || strcmp(rb, "done")) return false;
  for (int s = ST_BACKUP; s < ST__COUNT; s++) {
    journal_state_at(data, hr_step(s)->name, &at);
    if (at > rb_at) return false;
  }
  return true;
}

/* A done step's result rebuilt from the journal (new reference, or NULL): the
 * detail of its last record, which the agent writes in the shape of the
 * step's answer ({backup, previous}, {installed}, {alembic_before, ...}). */
json_t *journal_step_data(const json_t *data, int step) {
  long at;
  journal_state_at(data, hr_step(step)->name, &at);
  if (at < 0) return NULL;
  json_t *detail = json_object_get(json_array_get(json_object_get(data, "steps"), (size_t)at), "detail");
  return json_is_object(detail) ? json_incref(detail) : NULL;
}

/* The time (ms since the epoch, the host's clock) of the latest journal
 * record of step in state, or 0. */
int64_t journal_time(const json_t *data, const char *step, const char *state) {
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

/* Loads the recorded rollout (resume/rollback) into ro: target, stages, the
 * hosts' recorded status. Returns 0 or an exit code. */
int load_recorded(struct rollout *ro) {
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
  if (ro->nstages == 0 || ro->nstages > ro->nhosts) {
    fprintf(stderr, "hubfleet: rollout %s records %u stages for an inventory of %zu hosts (%s): the state file "
            "does not match this inventory\n", o->rollout_id, ro->nstages, ro->nhosts, o->inventory_path);
    json_decref(r);
    return HF_EXIT_USAGE;
  }
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
    if (h->stage >= ro->nstages) h->stage = ro->nstages - 1;   /* a damaged row still runs in the last stage */
    /* As recorded: the counts follow (the failure budget sees earlier runs' failures). */
    host_outcome_move(h, hr_outcome_parse(st));
    h->step = ST_PREFLIGHT;
    for (int s = 0; step && s < ST__COUNT; s++) if (!strcmp(hr_step(s)->name, step)) h->step = s;
    if (step && !strcmp(step, HF_STEP_ROLLBACK)) h->step = ST__COUNT; /* past every step: may have changed */
    if (o->mode == HF_RM_RESUME) {
      /* Running hosts continue from their recorded step after asking the journal;
       * pending ones start from the beginning. */
      h->selected = h->outcome == HO_RUNNING || h->outcome == HO_PENDING || h->outcome == HO_PREPARED;
      h->journal_first = h->outcome == HO_RUNNING;
      /* Not past its preparation (a prepared host killed during its re-check,
       * say): preflight and stage again, since the journal's "stage done"
       * may be the preparation's, not a re-check of now. */
      if (h->outcome == HO_PENDING || h->outcome == HO_PREPARED || h->step <= ST_STAGE) h->step = ST_PREFLIGHT;
      if (h->step >= ST_STOP) h->t_stop = 0;
      if (h->outcome == HO_RUNNING && step && !strcmp(step, HF_STEP_ROLLBACK)) {
        /* An automatic rollback was under way: it goes on (its journal says
         * whether it already finished); the failed step is never re-sent. */
        const char *err = json_string_value(json_object_get(row, "error"));
        h->goal = G_ROLLBACK;
        snprintf(h->error, sizeof h->error, "%s", err ? err : "rollback under way when the controller stopped");
      }
    } else {
      /* rollback: every host the rollout may have changed */
      bool changed = h->outcome == HO_UPGRADED || h->outcome == HO_ATTENTION ||
                     (h->outcome == HO_RUNNING && h->step >= ST_BACKUP);
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

