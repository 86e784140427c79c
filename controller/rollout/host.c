/* host.c: the host state machine of a rollout: its states and outcomes (the
 * X-macros of rollout_int.h), the one transition function, and the counts
 * the scheduler reads ("stage over", "budget exceeded" come from them). */
#include <stdio.h>
#include <string.h>
#include "hf_controller.h"
#include "rollout_int.h"

static const enum hf_op_id step_ops[ST__COUNT] = {
#define HR_STEP_OP(id) [ST_##id] = HF_OP_##id,
  HR_STEPS(HR_STEP_OP)
#undef HR_STEP_OP
};

const struct hf_op *hr_step(int s) { return hf_op_get(step_ops[s]); }

static const struct {
  const char *name, *what;
  unsigned    next;
} states[HR__COUNT] = {
#define HR_STATE_DEF(id, name, what, next) [HR_##id] = { name, what, next },
  HR_STATES(HR_STATE_DEF)
#undef HR_STATE_DEF
};

static const struct {
  const char *text;
  bool        failure;
} outcomes[HO__COUNT] = {
#define HR_OUTCOME_DEF(id, text, failure) [HO_##id] = { text, failure },
  HR_OUTCOMES(HR_OUTCOME_DEF)
#undef HR_OUTCOME_DEF
};

const char *hr_outcome_text(enum hr_outcome o) { return o < HO__COUNT ? outcomes[o].text : "?"; }
bool hr_outcome_failure(enum hr_outcome o) { return o < HO__COUNT && outcomes[o].failure; }

enum hr_outcome hr_outcome_parse(const char *text) {
  for (int o = 0; text && o < HO__COUNT; o++)
    if (!strcmp(outcomes[o].text, text)) return (enum hr_outcome)o;
  return HO_FAILED;
}

size_t ro_active(const struct rollout *ro) {
  return ro->nhosts - ro->in_state[HR_PENDING] - ro->in_state[HR_DONE] - ro->in_state[HR_PREPCONN] -
         ro->in_state[HR_PREP] - ro->in_state[HR_PREPARED];
}

size_t ro_failures(const struct rollout *ro) {
  size_t n = 0;
  for (unsigned s = 0; s < ro->nstages; s++)
    if (s <= ro->stage || ro->o->stop_early) n += ro->fail_by_stage[s];
  return n;
}

void host_outcome_move(struct rhost *h, enum hr_outcome oc) {
  struct rollout *ro = h->ro;
  bool counted = h->stage < ro->nstages && ro->fail_by_stage;
  if (counted && outcomes[h->outcome].failure) ro->fail_by_stage[h->stage]--;
  ro->in_outcome[h->outcome]--;
  h->outcome = oc;
  ro->in_outcome[oc]++;
  if (counted && outcomes[oc].failure) ro->fail_by_stage[h->stage]++;
}

/* The README promises every step is recorded before it is sent: a write to
 * the state database that fails stops the rollout at once (nothing more is
 * sent; the agents finish the step they run and keep it in their journals),
 * and resume continues from the state file once it can be written again. */
bool state_ok(struct rollout *ro, int rc, const char *what) {
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

static bool recording(const struct rollout *ro) {
  return ro->o->state && ro->id[0] && ro->o->mode != HF_RM_DRYRUN;
}

/* The name the state file and the agent know the request of state s by. */
static const char *request_name(enum hr_state s, int step) {
  switch (s) {
  case HR_PREP:
  case HR_STEP:     return step < ST__COUNT ? hr_step(step)->name : NULL;
  case HR_ROLLBACK: return HF_STEP_ROLLBACK;
  case HR_RECHECK:  return hr_step(ST_HEALTH)->name;
  default:          return NULL;
  }
}

bool host_to(struct rhost *h, enum hr_state to, int step) {
  struct rollout *ro = h->ro;
  enum hr_state from = h->state;
  if (ro->state_broken && (to == HR_STEP || to == HR_PREP || to == HR_ROLLBACK || to == HR_RECHECK)) return false;
  if (!(states[from].next & (1u << to)) || (from == HR_DONE && h->goal != G_RECHECK)) {
    ro->bad_transitions++;
    fprintf(stderr, "hubfleet: internal error: %s: %s -> %s is not a transition of the host state machine\n",
            h->host->name, states[from].name, states[to].name);
  }
  if (ro->o->verbose) {
    if (from != to)
      fprintf(stderr, "hubfleet: %s: %s -> %s%s%s\n", h->host->name, states[from].name, states[to].name,
              to == HR_STEP || to == HR_PREP ? " " : "",
              (to == HR_STEP || to == HR_PREP) && step < ST__COUNT ? hr_step(step)->name : "");
    else if ((to == HR_STEP || to == HR_PREP) && step != h->step)
      fprintf(stderr, "hubfleet: %s: step %s -> %s\n", h->host->name,
              h->step < ST__COUNT ? hr_step(h->step)->name : "-", step < ST__COUNT ? hr_step(step)->name : "-");
  }
  /* A request's start is in the state file before the request exists. */
  const char *req = request_name(to, step);
  if (req && recording(ro)) {
    if (!state_ok(ro, hf_state_step_begin(ro->o->state, ro->id, h->host->name, req, &h->step_id), "a step's start"))
      return false;
    if (to == HR_STEP && !host_record(h, HO_RUNNING, req, NULL)) return false;
  }
  ro->in_state[from]--;
  ro->in_state[to]++;
  h->state = to;
  if (to == HR_STEP || to == HR_PREP) h->step = step;
  return true;
}

bool host_record(struct rhost *h, enum hr_outcome oc, const char *step, const char *error) {
  struct rollout *ro = h->ro;
  if (!recording(ro)) {
    if (error && error != h->error) snprintf(h->error, sizeof h->error, "%s", error);
  } else if (!state_ok(ro, hf_state_host_set(ro->o->state, ro->id, h->host->name, hr_outcome_text(oc), step, error),
                       "a host's outcome")) {
    return false;
  } else if (error && error != h->error) {
    snprintf(h->error, sizeof h->error, "%s", error);
  }
  host_outcome_move(h, oc);
  return true;
}

bool host_set_outcome(struct rhost *h, enum hr_outcome oc, const char *error) {
  return host_record(h, oc, h->step < ST__COUNT ? hr_step(h->step)->name : NULL, error);
}

void hf_rollout_machine_md(FILE *f) {
  fprintf(f, "| state | what the host is doing | next states |\n|---|---|---|\n");
  for (int s = 0; s < HR__COUNT; s++) {
    fprintf(f, "| `%s` | %s | ", states[s].name, states[s].what);
    bool first = true;
    for (int t = 0; t < HR__COUNT; t++)
      if (states[s].next & (1u << t)) { fprintf(f, "%s`%s`", first ? "" : ", ", states[t].name); first = false; }
    fprintf(f, " |\n");
  }
  fprintf(f, "\n| outcome (state file, output) | counts against the failure budget |\n|---|---|\n");
  for (int o = 0; o < HO__COUNT; o++)
    fprintf(f, "| `%s` | %s |\n", outcomes[o].text, outcomes[o].failure ? "yes" : "no");
  fprintf(f, "\n| step | default deadline | carries the target |\n|---|---|---|\n");
  for (int s = 0; s < ST__COUNT; s++)
    fprintf(f, "| `%s` | %u s | %s |\n", hr_step(s)->name, (unsigned)hr_step(s)->default_timeout_ms / 1000,
            (hr_step(s)->target == HF_OPARG_REQ) ? "yes" : "no");
}
