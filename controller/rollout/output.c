/* output.c: what people and programs see of a rollout: one line per
 * event (above a live progress line on a terminal), the state's event log
 * and --events NDJSON, the dry run's plan and the final summary. Host text
 * is filtered here (hf_sanitize.h). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include "hf_controller.h"
#include "hf_sanitize.h"
#include "rollout_int.h"

/* The controller's own escapes pass the terminal filter (hf_sanitize.h) by
 * hf_term_raw; everything else, host text included, is filtered. */
void progress_clear(struct rollout *ro) {
  if (ro->tty) hf_term_raw(stderr, "\r\033[K");
}

/* One line for people: on a TTY above the live progress line, else plain. */
void say(struct rollout *ro, const char *fmt, ...) {
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
  size_t prepared = ro->in_state[HR_PREPARED], preparing = ro->in_state[HR_PREP] + ro->in_state[HR_PREPCONN];
  for (size_t i = 0; i < ro->nhosts; i++) {
    struct rhost *h = &ro->hosts[i];
    if (!h->selected || h->stage != ro->stage) continue;
    total++;
    if (h->state != HR_DONE && h->state != HR_PENDING) running++;
    else if (h->outcome == HO_UPGRADED) done++;
    else if (h->outcome == HO_ROLLEDBACK) rolled++;
    else if (h->outcome != HO_PENDING) failed++;
  }
  char bar[21];
  int fill = total ? (done + failed + rolled) * 20 / total : 0;
  for (int i = 0; i < 20; i++) bar[i] = i < fill ? '#' : '.';
  bar[20] = '\0';
  int64_t el = (hf_state_now_ms() - ro->t0) / 1000;
  hf_term_raw(stderr, "\r\033[K");
  fprintf(stderr, "stage %u/%u [%s] %d/%d done, %d running, %d failed, %d rolled back; later stages: %zu prepared, "
          "%zu preparing  %02" PRId64 ":%02" PRId64, ro->stage + 1, ro->nstages, bar, done, total, running, failed, rolled,
          prepared, preparing, el / 60, el % 60);
  fflush(stderr);
}

void on_progress_timer(uv_timer_t *t) { progress_draw(t->data); }

/* Records an event in the state's event log and appends it to --events. */
void emit(struct rollout *ro, const struct rhost *h, const char *event, const char *level,
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
void emit_ndjson(struct rollout *ro, const struct rhost *h, const char *event, const char *level,
                        const char *text) {
  if (ro->o->events) {
    json_t *ev = json_pack("{s:I,s:s,s:s,s:s,s:s}", "time", (json_int_t)hf_state_now_ms(), "rollout", ro->id,
                           "event", event, "level", level, "text", text);
    if (h) {
      json_object_set_new(ev, "host", json_string(h->host->name));
      json_object_set_new(ev, "status", json_string(hr_outcome_text(h->outcome)));
      json_object_set_new(ev, "stage", json_integer(h->stage + 1));
      if (h->step < ST__COUNT) json_object_set_new(ev, "step", json_string(hr_step(h->step)->name));
    }
    json_dumpf(ev, ro->o->events, JSON_COMPACT);
    fputc('\n', ro->o->events);
    fflush(ro->o->events);
    json_decref(ev);
  }
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

/* The dry run folded for the fleet: every refusal and warning once, with
 * how many hosts (and which) share it word for word. */
/* One refusal or warning of a host into its group (same outcome, check and
 * detail word for word). */
static void fold_add(json_t *groups, const char *oc, const char *name, const char *detail, const char *host) {
  char key[2048];
  snprintf(key, sizeof key, "%s\t%s\t%s", oc, name, detail);
  json_t *g = json_object_get(groups, key);
  if (!g) json_object_set_new(groups, key, g = json_pack("{s:s,s:s,s:s,s:[]}", "oc", oc, "name", name,
                                                           "detail", detail, "hosts"));
  json_array_append_new(json_object_get(g, "hosts"), json_string(host));
}

static void print_folded(struct rollout *ro, FILE *f) {
  json_t *groups = json_object();
  size_t nsel = 0, ready = 0;
  for (size_t k = 0; k < ro->nhosts; k++) {
    struct rhost *h = &ro->hosts[ro->order[k]];
    if (!h->selected) continue;
    nsel++;
    ready += h->outcome == HO_UPGRADED;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(h->preflight, "checks"), i, c) {
      const char *oc = json_string_value(json_object_get(c, "outcome"));
      if (oc && (!strcmp(oc, "refuse") || !strcmp(oc, "warn")))
        fold_add(groups, oc, json_string_value(json_object_get(c, "name")) ?: "?",
                 json_string_value(json_object_get(c, "detail")) ?: "", h->host->name);
    }
    if (!h->preflight && h->error[0]) fold_add(groups, "refuse", "host", h->error, h->host->name);  /* no answer */
  }
  fprintf(f, "\nfleet: %zu host%s, %zu ready, %zu refused\n", nsel, nsel == 1 ? "" : "s", ready, nsel - ready);
  for (int pass = 0; pass < 2; pass++) {   /* refusals first, then warnings */
    const char *key;
    json_t *g;
    json_object_foreach(groups, key, g) {
      const char *oc = json_string_value(json_object_get(g, "oc"));
      if (strcmp(oc, pass ? "warn" : "refuse")) continue;
      json_t *list = json_object_get(g, "hosts"), *hn;
      char hosts[512], line[2048], name[64];
      size_t off = 0, i, n = json_array_size(list);
      hosts[0] = '\0';
      json_array_foreach(list, i, hn) {
        if (i == 8) { snprintf(hosts + off, sizeof hosts - off, ", ... %zu more", n - 8); break; }
        int w = snprintf(hosts + off, sizeof hosts - off, "%s%s", i ? ", " : "", json_string_value(hn));
        if (w < 0 || (size_t)w >= sizeof hosts - off) break;
        off += (size_t)w;
      }
      fprintf(f, "  %-7s %-22s on %zu of %zu host%s (%s)\n", oc,
              hf_clean_line(name, sizeof name, json_string_value(json_object_get(g, "name"))), n, nsel,
              nsel == 1 ? "" : "s", hf_clean_line(line, sizeof line, hosts));
      fprintf(f, "          %s\n", hf_clean_line(line, sizeof line, json_string_value(json_object_get(g, "detail"))));
    }
  }
  json_decref(groups);
}

void print_dryrun(struct rollout *ro) {
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
                             h->outcome == HO_UPGRADED ? "ready" : hr_outcome_text(h->outcome),
                             "preflight", h->preflight, "error", h->error[0] ? h->error : NULL);
      json_array_append_new(json_object_get(doc, "hosts"), hj);
      if (ro->o->json) continue;
      char line[2048], name[64], cfrom[512];
      fprintf(f, "  %-24s %s -> %s  %s\n", h->host->name, hf_clean_line(cfrom, sizeof cfrom, from[0] ? from : "?"),
              ro->target, h->outcome == HO_UPGRADED ? "ready" : hf_clean_line(line, sizeof line, h->error));
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
  else print_folded(ro, f);
  json_decref(doc);
}

void print_summary(struct rollout *ro) {
  int up = 0, failed = 0, rolled = 0, att = 0, untouched = 0, running = 0, prepared = 0;
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
    else if (!strcmp(st, HF_HOST_PREPARED)) prepared++; /* hub untouched; a staged copy of its envs left */
    else failed++;
  }
  if (ro->o->json) {
    json_t *doc = json_pack("{s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:O}", "rollout", ro->id, "target", ro->target,
                            "status", ro->final_status ? ro->final_status : "?", "upgraded", up, "failed", failed,
                            "rolled_back", rolled, "needs_attention", att, "untouched", untouched,
                            "prepared", prepared, "in_progress", running, "hosts", hosts);
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
  } else {
    printf("\nrollout %s to %s: %s\n", ro->id, ro->target, ro->final_status ? ro->final_status : "?");
    if (ro->o->mode == HF_RM_ROLLBACK)
      printf("  %d rolled back, %d need attention; %.1fs\n", rolled, att, (double)(hf_state_now_ms() - ro->t0) / 1000.0);
    else
    {
      char inprog[96] = "", prep[160] = "";
      if (running) snprintf(inprog, sizeof inprog, ", %d in progress (resume goes on from the journals)", running);
      if (prepared)
        snprintf(prep, sizeof prep, ", %d prepared (hub untouched; a staged copy of its environments left, "
                 "see docs/rollout.md)", prepared);
      printf("  %d upgraded, %d failed, %d rolled back, %d need attention, %d untouched%s%s; budget %u, used %zu; %.1fs\n",
             up, failed, rolled, att, untouched, prep, inprog, ro->budget, ro_failures(ro),
             (double)(hf_state_now_ms() - ro->t0) / 1000.0);
    }
    printf("  %-24s %-5s %-16s %-9s %-9s %s\n", "HOST", "STAGE", "STATUS", "HUB DOWN", "USERS", "ERROR");
    json_array_foreach(hosts, i, row) {
      char down[32], udown[32];
      hf_fmt_seconds(json_object_get(row, "downtime_ms"), down, sizeof down);
      hf_fmt_seconds(json_object_get(row, "users_downtime_ms"), udown, sizeof udown);
      char err[2048];
      hf_clean_line(err, sizeof err, json_string_value(json_object_get(row, "error")));
      printf("  %-24s %-5lld %-16s %-9s %-9s %s\n", json_string_value(json_object_get(row, "host")),
             (long long)json_integer_value(json_object_get(row, "stage")) + 1,
             json_string_value(json_object_get(row, "status")), down, udown, err);
    }
    printf("  details: hubfleet status %s\n", ro->id);
  }
  if (att) ro->exit_code = HF_EXIT_ATTENTION;
  else if (ro->final_status && !strcmp(ro->final_status, HF_ROLLOUT_HALTED)) ro->exit_code = HF_EXIT_FAIL;
  else if (ro->final_status && !strcmp(ro->final_status, HF_ROLLOUT_PAUSED)) ro->exit_code = HF_EXIT_OK;
  else if (rolled && ro->o->mode != HF_RM_ROLLBACK) ro->exit_code = HF_EXIT_ROLLEDBACK;
  else if (failed && ro->o->mode != HF_RM_ROLLBACK) ro->exit_code = HF_EXIT_FAIL;   /* a rollback answers for its hosts */
  else ro->exit_code = HF_EXIT_OK;
  json_decref(hosts);
}

