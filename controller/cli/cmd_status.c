/* cmd_status.c: `hubfleet status` and `hubfleet history`, read from the state file alone. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <getopt.h>
#include "hf_controller.h"
#include "hf_sanitize.h"
#include "hf_state.h"
#include "hf_rollout.h"
#include "hf_proto.h"

static void fmt_time(json_t *ms, char *buf, size_t len) {
  if (!json_is_integer(ms)) { snprintf(buf, len, "-"); return; }
  time_t t = (time_t)(json_integer_value(ms) / 1000);
  struct tm tm;
  localtime_r(&t, &tm);
  strftime(buf, len, "%Y-%m-%d %H:%M:%S", &tm);
}

void hf_fmt_seconds(const json_t *ms, char *buf, size_t len) {
  if (!json_is_integer(ms)) { snprintf(buf, len, "-"); return; }
  snprintf(buf, len, "%.1fs", (double)json_integer_value(ms) / 1000.0);
}

static const char *str(json_t *o, const char *k) {
  const char *s = json_string_value(json_object_get(o, k));
  return s ? s : "";
}

/* A value hosts wrote (error texts) as one line of a table row: no newline
 * of its own, nothing a terminal would act on (hf_sanitize.h). */
static const char *cell(json_t *o, const char *k, char *buf, size_t len) {
  return hf_clean_line(buf, len, str(o, k));
}

/* Prints one rollout's header, per-stage counts and host table. */
static void print_rollout(FILE *f, json_t *r, json_t *hosts) {
  char created[32], finished[32];
  fmt_time(json_object_get(r, "created"), created, sizeof created);
  fmt_time(json_object_get(r, "finished"), finished, sizeof finished);
  json_t *opts = json_object_get(r, "options");
  fprintf(f, "rollout %s  target %s  status %s\n", str(r, "id"), str(r, "target"), str(r, "status"));
  fprintf(f, "  inventory %s  stages %s  started %s  finished %s\n", str(r, "inventory"),
          json_string_value(json_object_get(opts, "stages")) ? json_string_value(json_object_get(opts, "stages")) : "default",
          created, finished);
  fprintf(f, "  failure budget %lld, used %lld\n", (long long)json_integer_value(json_object_get(r, "budget")),
          (long long)json_integer_value(json_object_get(r, "failures")));

  long long nstages = json_integer_value(json_object_get(r, "nstages"));
  for (long long s = 0; s < nstages && s < 1000; s++) {
    int pending = 0, running = 0, prepared = 0, upgraded = 0, failed = 0, rolled = 0, attention = 0;
    size_t i;
    json_t *h;
    json_array_foreach(hosts, i, h) {
      if (json_integer_value(json_object_get(h, "stage")) != s) continue;
      const char *st = str(h, "status");
      if (!strcmp(st, HF_HOST_PENDING)) pending++;
      else if (!strcmp(st, HF_HOST_RUNNING)) running++;
      else if (!strcmp(st, HF_HOST_UPGRADED)) upgraded++;
      else if (!strcmp(st, HF_HOST_ROLLEDBACK)) rolled++;
      else if (!strcmp(st, HF_HOST_ATTENTION)) attention++;
      else if (!strcmp(st, HF_HOST_PREPARED)) prepared++;
      else failed++;
    }
    fprintf(f, "  stage %lld: %d upgraded, %d running, %d prepared, %d pending, %d failed, %d rolled back, "
            "%d need attention\n", s + 1, upgraded, running, prepared, pending, failed, rolled, attention);
  }
  fprintf(f, "\n  %-24s %-5s %-16s %-10s %-9s %-9s %s\n", "HOST", "STAGE", "STATUS", "STEP", "HUB DOWN", "USERS", "ERROR");
  size_t i;
  json_t *h;
  json_array_foreach(hosts, i, h) {
    char down[32], udown[32], err[2048];
    hf_fmt_seconds(json_object_get(h, "downtime_ms"), down, sizeof down);
    hf_fmt_seconds(json_object_get(h, "users_downtime_ms"), udown, sizeof udown);
    fprintf(f, "  %-24s %-5lld %-16s %-10s %-9s %-9s %s\n", str(h, "host"),
            (long long)json_integer_value(json_object_get(h, "stage")) + 1, str(h, "status"), str(h, "step"),
            down, udown, cell(h, "error", err, sizeof err));
  }
}

static void usage_status(FILE *f) {
  fprintf(f,
    "usage: hubfleet status [ROLLOUT] [--state FILE] [--json] [--steps]\n"
    "       hubfleet history [--state FILE] [--json | --ids]\n\n"
    "status shows one rollout (default: the latest): per stage and per host, the\n"
    "status, the last step, the hub's and the users' downtime and error. It reads the state file only and\n"
    "can run while the rollout does. --steps adds every recorded step.\n"
    "history lists every rollout, newest first (--ids: the ids only).\n\n"
    "Exit codes: 0 shown, 2 bad arguments or no such rollout, 70 state file error.\n");
}

/* Shared option parsing: returns 0, or an exit code to return. */
static int parse(int argc, char **argv, const char **state, bool *json, bool *steps, const char **rollout, bool *ids) {
  static const struct option opts[] = {
    { "state", required_argument, NULL, 's' }, { "json", no_argument, NULL, 'j' }, { "ids", no_argument, NULL, 'I' },
    { "steps", no_argument, NULL, 'S' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "s:jh", opts, NULL)) != -1) {
    switch (c) {
    case 's': *state = optarg; break;
    case 'j': *json = true; break;
    case 'S': *steps = true; break;
    case 'I': *ids = true; break;
    case 'h': usage_status(stdout); return -1;
    default: usage_status(stderr); return HF_EXIT_USAGE;
    }
  }
  if (optind < argc) *rollout = argv[optind++];
  if (optind < argc) { fprintf(stderr, "hubfleet %s: unexpected argument '%s'\n", argv[0], argv[optind]); return HF_EXIT_USAGE; }
  if (*rollout && !hf_valid_id(*rollout)) { fprintf(stderr, "hubfleet %s: '%s' is not a rollout id\n", argv[0], *rollout); return HF_EXIT_USAGE; }
  return 0;
}

int hf_cmd_status(int argc, char **argv) {
  hf_sanitize_stdio(); /* hosts' error and event texts are replayed from the state */
  const char *state = NULL, *rollout = NULL;
  bool json = false, steps = false, ids = false;
  int r = parse(argc, argv, &state, &json, &steps, &rollout, &ids);
  if (r) return r < 0 ? 0 : r;
  char err[512], latest[64];
  struct hf_state *st;
  if (hf_state_open(state, &st, err, sizeof err) != 0) { fprintf(stderr, "hubfleet status: %s\n", err); return HF_EXIT_INTERNAL; }
  if (!rollout) {
    if (hf_state_rollout_latest(st, latest, sizeof latest) != 0) {
      fprintf(stderr, "hubfleet status: no rollout recorded in the state file yet\n");
      hf_state_close(st);
      return HF_EXIT_USAGE;
    }
    rollout = latest;
  }
  json_t *ro = hf_state_rollout_get(st, rollout);
  if (!ro) {
    fprintf(stderr, "hubfleet status: no rollout '%s' in the state file (see hubfleet history)\n", rollout);
    hf_state_close(st);
    return HF_EXIT_USAGE;
  }
  json_t *hosts = hf_state_hosts(st, rollout);
  json_t *stp = steps || json ? hf_state_steps(st, rollout, NULL) : NULL;
  if (json) {
    json_t *doc = json_pack("{s:O,s:O,s:O}", "rollout", ro, "hosts", hosts ? hosts : json_null(), "steps", stp ? stp : json_null());
    json_dumpf(doc, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
    json_decref(doc);
  } else {
    print_rollout(stdout, ro, hosts);
    if (steps) {
      size_t i;
      json_t *s;
      printf("\n  %-24s %-10s %-8s %-20s %s\n", "HOST", "STEP", "OUTCOME", "STARTED", "ERROR");
      json_array_foreach(stp, i, s) {
        char t[32], cellbuf[2048];
        fmt_time(json_object_get(s, "started"), t, sizeof t);
        printf("  %-24s %-10s %-8s %-20s %s\n", str(s, "host"), str(s, "step"), str(s, "outcome"), t,
               cell(s, "error", cellbuf, sizeof cellbuf));
      }
    }
  }
  json_decref(stp);
  json_decref(hosts);
  json_decref(ro);
  hf_state_close(st);
  return 0;
}

int hf_cmd_history(int argc, char **argv) {
  hf_sanitize_stdio();
  const char *state = NULL, *rollout = NULL;
  bool json = false, steps = false, ids = false;
  int r = parse(argc, argv, &state, &json, &steps, &rollout, &ids);
  if (r) return r < 0 ? 0 : r;
  char err[512];
  struct hf_state *st;
  if (hf_state_open(state, &st, err, sizeof err) != 0) { fprintf(stderr, "hubfleet history: %s\n", err); return HF_EXIT_INTERNAL; }
  json_t *list = hf_state_rollout_list(st);
  if (ids) {
    size_t i;
    json_t *ro;
    json_array_foreach(list, i, ro) printf("%s\n", str(ro, "id"));
  } else if (json) {
    json_dumpf(list, stdout, JSON_INDENT(2));
    fputc('\n', stdout);
  } else {
    printf("%-22s %-20s %-22s %-12s %6s %8s\n", "ROLLOUT", "STARTED", "TARGET", "STATUS", "HOSTS", "FAILED");
    size_t i;
    json_t *ro;
    json_array_foreach(list, i, ro) {
      char t[32];
      fmt_time(json_object_get(ro, "created"), t, sizeof t);
      printf("%-22s %-20s %-22s %-12s %6lld %8lld\n", str(ro, "id"), t, str(ro, "target"), str(ro, "status"),
             (long long)json_integer_value(json_object_get(ro, "nhosts")),
             (long long)json_integer_value(json_object_get(ro, "failures")));
    }
  }
  json_decref(list);
  hf_state_close(st);
  return 0;
}
