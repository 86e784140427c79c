/* scheduler.c: a rollout's stages: hosts launched in stage order up to
 * --parallel, the failure budget, the soak re-check, --confirm between
 * stages, Ctrl-C, and the run from setup to summary. What a host does is in
 * procedure.c; its states in host.c. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "hf_controller.h"
#include "hf_plan.h"
#include "hf_rules.h"
#include "rollout_int.h"

static void stage_next(struct rollout *ro);

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
    if (h->selected && h->state == HR_PENDING) return true;
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
    if (!h->selected || h->stage != ro->stage || h->outcome != HO_UPGRADED) continue;
    h->goal = G_RECHECK;
    host_launch(h);
  }
  launch_more(ro);
}

/* Starts hosts of the current stage while slots are free; moves the rollout
 * on when the stage is over. */
int hf_rollout_prepare_parallel(const struct hf_rollout_opts *o) {
  /* Default: half of --parallel (at least 1). Preparation runs in launch order, so a bound
   * below the fleet's size gets the next stage's hosts ready first instead of every later host
   * sharing the CPUs (and the package source) until all of them finish at once. */
  return o->prepare_parallel < 0 ? (o->parallel + 1) / 2 : o->prepare_parallel;
}

/* Hosts being prepared ahead of their stage right now. */
static size_t preparing(const struct rollout *ro) { return ro->in_state[HR_PREPCONN] + ro->in_state[HR_PREP]; }

/* Prepares hosts of the stages after the current one, in launch order, up
 * to --prepare-parallel at once: preflight (rules, rehearsal, the package
 * fetch) and stage (the target installed into a copy of each env), none of
 * which changes the hub. */
static void prepare_more(struct rollout *ro) {
  int bound = hf_rollout_prepare_parallel(ro->o);
  if (ro->halting || ro->interrupts || ro->confirm_waiting || bound <= 0) return;
  if (ro->o->mode != HF_RM_UPGRADE && ro->o->mode != HF_RM_RESUME) return;
  if (ro->prep_next < ro->next) ro->prep_next = ro->next;
  while (preparing(ro) < (size_t)bound && ro->prep_next < ro->nhosts) {
    struct rhost *h = &ro->hosts[ro->order[ro->prep_next++]];
    if (!h->selected || h->stage <= ro->stage || h->state != HR_PENDING) continue;
    if (h->outcome != HO_PENDING && h->outcome != HO_PREPARED) continue;  /* mid-upgrade (resume): in its stage */
    h->goal = G_PREPARE;
    h->step = ST_PREFLIGHT;
    host_launch(h);
  }
}

/* Starts hosts of the current stage while slots are free; moves the rollout
 * on when the stage is over. */
void launch_more(struct rollout *ro) {
  if (ro->finished) return;
  if (ro->interrupts) {
    if (ro_active(ro) == 0 && preparing(ro) == 0) {
      say(ro, "paused: every host in flight reached a safe point; continue with 'hubfleet resume %s'", ro->id);
      finish(ro, ro->o->mode == HF_RM_DRYRUN ? "interrupted" : HF_ROLLOUT_PAUSED);
    }
    return;
  }
  if (ro->o->mode == HF_RM_ROLLBACK || ro->o->mode == HF_RM_DRYRUN) {
    while (!ro->halting && ro->next < ro->nhosts && ro_active(ro) < (size_t)ro->o->parallel) {
      struct rhost *h = &ro->hosts[ro->order[ro->next++]];
      if (h->selected && h->state == HR_PENDING) host_launch(h);
    }
    if (ro_active(ro) == 0 && ro->next >= ro->nhosts) finish(ro, ro->o->mode == HF_RM_ROLLBACK ? HF_ROLLOUT_ROLLEDBACK : "done");
    return;
  }
  while (ro_active(ro) < (size_t)ro->o->parallel && ro->next < ro->nhosts) {
    struct rhost *h = &ro->hosts[ro->order[ro->next]];
    if (h->stage != ro->stage) break;
    /* Being prepared: its turn comes when that ends (in launch order). */
    if (h->selected && (h->state == HR_PREPCONN || h->state == HR_PREP) && !ro->halting) break;
    ro->next++;
    if (!h->selected || (h->state != HR_PENDING && h->state != HR_PREPARED)) continue;
    /* Halting: untouched hosts stay untouched; a host a killed controller
     * left mid-upgrade (resume) is still finished. */
    if (ro->halting && h->outcome != HO_RUNNING) continue;
    /* Prepared: a cheap re-check (stage again: nothing changed since?), then on. */
    if (h->state == HR_PREPARED) h->step = ST_STAGE;
    if (h->goal == G_PREPARE) h->goal = G_STEPS;   /* (a resumed rollback keeps its goal) */
    host_launch(h);
  }
  prepare_more(ro);
  if (ro_active(ro) > 0) return;
  if (ro->halting) { if (preparing(ro) == 0) finish(ro, HF_ROLLOUT_HALTED); return; }
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
  if (ro->halting) { if (preparing(ro) == 0) finish(ro, HF_ROLLOUT_HALTED); return; }
  /* The operator is asked with every preparation settled (a pause then
   * leaves nothing in flight). */
  if (ro->o->confirm && preparing(ro) > 0) { ro->confirm_waiting = true; return; }
  ro->confirm_waiting = false;
  unsigned next = ro->stage + 1;
  size_t n = 0;
  for (size_t i = 0; i < ro->nhosts; i++) n += ro->hosts[i].selected && ro->hosts[i].stage == next;
  progress_clear(ro);
  int answer = ro->o->confirm ? ro->port->confirm(ro->engine, next, ro->nstages, n) : 1;
  if (answer <= 0) {
    if (answer < 0) ro->interrupts = 1;   /* Ctrl-C at the prompt: the first Ctrl-C, nothing in flight */
    say(ro, "%s before stage %u: continue with 'hubfleet resume %s'", answer < 0 ? "interrupted" : "paused",
        next + 1, ro->id);
    if (ro->o->state) hf_state_rollout_set_stage(ro->o->state, ro->id, next);
    finish(ro, HF_ROLLOUT_PAUSED);
    return;
  }
  ro->stage = next;
  if (ro->o->state) hf_state_rollout_set_stage(ro->o->state, ro->id, next);
  size_t ready = 0;
  for (size_t i = 0; i < ro->nhosts; i++) ready += ro->hosts[i].selected && ro->hosts[i].stage == next &&
                                                   ro->hosts[i].state == HR_PREPARED;
  say(ro, "stage %u of %u: %zu host%s (%zu prepared)", next + 1, ro->nstages, n, n == 1 ? "" : "s", ready);
  emit(ro, NULL, "stage", "info", "stage %u started: %zu hosts, %zu prepared", next + 1, n, ready);
  /* Refusals found while preparing this stage count from now on. */
  if (ro_failures(ro) > ro->budget) {
    ro->halting = true;
    say(ro, "failure budget exceeded (%zu failed, budget %u, counting hosts of stage %u that failed their "
        "preparation): halting; hosts not yet started stay untouched", ro_failures(ro), ro->budget, next + 1);
    emit(ro, NULL, "rollout", "error", "failure budget exceeded at the start of stage %u: %zu failed, budget %u",
         next + 1, ro_failures(ro), ro->budget);
  }
  launch_more(ro);
}

/* ---- setup --------------------------------------------------------------------------- */

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

int hf_rollout_run_on(const struct hf_rollout_opts *o, const struct hf_rollout_port *port) {
  struct rollout ro;
  char err[512];
  int rc = HF_EXIT_INTERNAL;
  memset(&ro, 0, sizeof ro);
  ro.o = o;
  ro.port = port;
  ro.tty = isatty(STDERR_FILENO); /* live progress line; plain lines otherwise */
  ro.t0 = hf_state_now_ms();
  ro.nhosts = o->inv->nhosts;
  ro.hosts = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *ro.hosts);
  ro.order = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *ro.order);
  ro.fail_by_stage = calloc(ro.nhosts + 1, sizeof *ro.fail_by_stage);   /* a stage holds one host at least */
  bool *canary = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *canary);
  unsigned *stage_of = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *stage_of);
  const char **names = calloc(ro.nhosts ? ro.nhosts : 1, sizeof *names);
  if (!ro.hosts || !ro.order || !ro.fail_by_stage || !canary || !stage_of || !names) goto out;
  if (uv_loop_init(&ro.loop) != 0) goto out;

  size_t nsel = 0;
  for (size_t i = 0; i < ro.nhosts; i++) {
    struct rhost *h = &ro.hosts[i];
    h->ro = &ro;
    h->host = &o->inv->hosts[i];
    h->state = HR_PENDING;
    h->outcome = HO_PENDING;
    h->step = ST_PREFLIGHT;
    host_timer_init(h);
  }
  ro.in_state[HR_PENDING] = ro.in_outcome[HO_PENDING] = ro.nhosts;

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
      json_t *opts = json_pack("{s:s?,s:s?,s:s?,s:s?,s:i,s:i,s:b,s:I,s:I,s:b,s:b}", "stages", o->stages_spec,
                               "max_failures", o->budget_spec, "limit", o->limit, "exclude", o->exclude,
                               "parallel", o->parallel, "prepare_parallel", o->prepare_parallel,
                               "stop_early", o->stop_early, "soak_ms", (json_int_t)o->soak_ms,
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
  if ((rc = port->engine_new(&ro.loop, o, &ro.engine, err, sizeof err)) != 0) {
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
    if (ro_failures(&ro) > ro.budget) {
      ro.halting = true;
      say(&ro, "failure budget already exceeded (%zu failed, budget %u): finishing the hosts in flight only",
          ro_failures(&ro), ro.budget);
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
      if (ro.hosts[i].selected && ro.hosts[i].state != HR_DONE) left = true;
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
      if (ro.hosts[i].selected && ro.hosts[i].outcome != HO_UPGRADED) rc = HF_EXIT_FAIL;
  } else {
    if (o->mode == HF_RM_ROLLBACK) {
      bool all = true;
      for (size_t i = 0; i < ro.nhosts; i++)
        if (ro.hosts[i].selected && ro.hosts[i].outcome != HO_ROLLEDBACK) all = false;
      if (!all) { ro.final_status = HF_ROLLOUT_HALTED; hf_state_rollout_set_status(o->state, ro.id, HF_ROLLOUT_HALTED); }
    }
    print_summary(&ro);
    rc = drained || ro.state_broken ? HF_EXIT_INTERNAL : ro.interrupts ? 130 : ro.exit_code;
  }
  if (o->stats && port->stats) port->stats(ro.engine, stderr);
  if (ro.bad_transitions) rc = HF_EXIT_INTERNAL;

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
  if (ro.engine) port->engine_free(ro.engine);
  uv_run(&ro.loop, UV_RUN_DEFAULT);   /* the engine is freed in its handles' close callbacks */
  json_decref(ro.rules);
  uv_loop_close(&ro.loop);
out:
  free(ro.hosts);
  free(ro.order);
  free(ro.fail_by_stage);
  free(canary);
  free(stage_of);
  free(names);
  return rc;
}
