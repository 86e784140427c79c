/* cmd_upgrade.c: `hubfleet upgrade`, `hubfleet resume` and `hubfleet rollback`: options to a rollout run. */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "hf_controller.h"
#include "hf_sanitize.h"
#include "hf_rollout.h"
#include "hf_plan.h"
#include "hf_proto.h"

static const char exit_codes_help[] =
  "Exit codes:\n"
  "  0   every host upgraded (or rolled back, for rollback); a paused rollout\n"
  "  1   the rollout halted on its failure budget, or hosts failed\n"
  "  2   bad arguments or inventory: nothing was done\n"
  "  3   the rollout finished but some hosts were rolled back\n"
  "  4   some host needs attention: its rollback failed (see status)\n"
  "  70  internal error (state file)\n";

static void usage(FILE *f, const char *cmd) {
  if (!strcmp(cmd, "upgrade"))
    fprintf(f,
      "usage: hubfleet upgrade -i INVENTORY --to VERSION [options]\n\n"
      "Upgrades JupyterHub on every selected host, stage by stage: per host\n"
      "preflight, stage (the target installed into a copy of the hub's and every\n"
      "single-user environment), backup, stop, install (the copies switched in),\n"
      "migrate (jupyterhub upgrade-db, only when the rehearsal saw a schema\n"
      "change), start, health. Hosts of later stages are prepared (preflight,\n"
      "stage: nothing that changes a hub) while earlier stages run. A failure\n"
      "after the stop rolls that host back. Progress is kept in the state file,\n"
      "so a killed controller continues with 'hubfleet resume ROLLOUT'.\n\n"
      "  -i, --inventory FILE     Ansible INI or ansible-inventory JSON\n"
      "      --to VERSION         target jupyterhub version (PEP 440)\n"
      "      --stages LIST        cumulative stage sizes, e.g. 1,10%%,50%%,100%%\n"
      "                           (default: the canary group or 1 host, then the rest)\n"
      "      --parallel N         hosts upgraded at once inside a stage (default 10)\n"
      "      --prepare-parallel N hosts of later stages prepared at once meanwhile\n"
      "                           (default: half of --parallel, at least 1;\n"
      "                           0 = prepare each host in its stage)\n"
      "      --stop-early         a host of a later stage refused while preparing counts\n"
      "                           against the budget at once (default: when its stage starts)\n"
      "      --max-failures N|P%% failure budget for the whole rollout (default 0);\n"
      "                           an unreachable host counts as a failure\n"
      "      --soak SECONDS       after each stage, wait, then re-check its hosts' health\n"
      "      --health-timeout S   how long a started hub has to become healthy (default 120)\n"
      "      --confirm            ask before each stage after the first\n"
      "      --dry-run            preflight everywhere, print the plan, change nothing\n"
      "      --no-rehearse        skip the migration rehearsal on a database copy\n"
      "      --limit PATTERN      only hosts matching (names, groups, globs, a,b, !x)\n"
      "      --exclude PATTERN    leave out hosts matching\n"
      "      --rules FILE         preflight rules (default: the upgrade-rules.json installed with hubfleet)\n");
  else if (!strcmp(cmd, "resume"))
    fprintf(f,
      "usage: hubfleet resume [ROLLOUT] -i INVENTORY [options]\n\n"
      "Continues a rollout that was interrupted (controller killed, paused with\n"
      "--confirm): every host that was mid-upgrade is reconciled with its agent's\n"
      "journal and continues; hosts not started yet run as planned. Default\n"
      "ROLLOUT: the latest. The inventory defaults to the one the rollout used.\n\n");
  else
    fprintf(f,
      "usage: hubfleet rollback [ROLLOUT] [-i INVENTORY] [--hosts PATTERN] [options]\n\n"
      "Undoes every host the rollout changed: the agent stops the hub, reinstalls\n"
      "the recorded previous versions in every environment, restores the database\n"
      "and config from the rollout's backup, starts the hub and checks that health\n"
      "reports the old version. Default ROLLOUT: the latest.\n\n"
      "      --hosts PATTERN      only these hosts\n");
  fprintf(f,
      "\nCommon options:\n"
      "      --state FILE         state database (default $XDG_STATE_HOME/hubfleet/state.db)\n"
      "      --events FILE        append NDJSON events to FILE ('-' = stdout)\n"
      "      --json               print the summary as JSON\n"
      "      --known-hosts FILE   known_hosts for every host (default: inventory, ~/.ssh)\n"
      "      --accept-new         trust unknown host keys (never changed ones), write them back\n"
      "      --agent PATH         hubfleet-agent to deploy\n"
      "      --timeout SECONDS    connection deadline per phase (default 15)\n"
      "      --reconnect SECONDS  how long to keep trying a host lost mid-upgrade (default 300)\n"
      "      --stats              print engine statistics at the end\n"
      "  -v, --verbose            every step and agent log line\n\n%s", exit_codes_help);
}

/* Parses a non-negative number of seconds into milliseconds. */
static int seconds(const char *opt, const char *s, unsigned *ms) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || v < 0 || v > 86400 * 7) {
    fprintf(stderr, "hubfleet: %s: '%s' is not a number of seconds\n", opt, s);
    return -1;
  }
  *ms = (unsigned)(v * 1000);
  return 0;
}

static int run(int argc, char **argv, enum hf_rollout_mode mode) {
  /* Everything printed from here on (host events and errors, inventory
   * messages, the summary) passes the one terminal filter (issue 13). */
  hf_sanitize_stdio();
  enum { O_TO = 256, O_STAGES, O_PARALLEL, O_MAXF, O_SOAK, O_CONFIRM, O_DRY, O_NOREH, O_LIMIT, O_EXCL, O_STATE,
         O_EVENTS, O_JSON, O_KH, O_ACCEPT, O_AGENT, O_TIMEOUT, O_RECONNECT, O_STATS, O_HOSTS, O_RULES, O_HEALTH,
         O_PREPARE, O_STOPEARLY };
  static const struct option opts[] = {
    { "inventory", required_argument, NULL, 'i' }, { "to", required_argument, NULL, O_TO },
    { "stages", required_argument, NULL, O_STAGES }, { "parallel", required_argument, NULL, O_PARALLEL },
    { "max-failures", required_argument, NULL, O_MAXF }, { "soak", required_argument, NULL, O_SOAK },
    { "confirm", no_argument, NULL, O_CONFIRM }, { "dry-run", no_argument, NULL, O_DRY },
    { "no-rehearse", no_argument, NULL, O_NOREH }, { "limit", required_argument, NULL, O_LIMIT },
    { "exclude", required_argument, NULL, O_EXCL }, { "state", required_argument, NULL, O_STATE },
    { "events", required_argument, NULL, O_EVENTS }, { "json", no_argument, NULL, O_JSON },
    { "known-hosts", required_argument, NULL, O_KH }, { "accept-new", no_argument, NULL, O_ACCEPT },
    { "agent", required_argument, NULL, O_AGENT }, { "timeout", required_argument, NULL, O_TIMEOUT },
    { "reconnect", required_argument, NULL, O_RECONNECT }, { "stats", no_argument, NULL, O_STATS },
    { "hosts", required_argument, NULL, O_HOSTS }, { "rules", required_argument, NULL, O_RULES },
    { "health-timeout", required_argument, NULL, O_HEALTH }, { "verbose", no_argument, NULL, 'v' },
    { "prepare-parallel", required_argument, NULL, O_PREPARE }, { "stop-early", no_argument, NULL, O_STOPEARLY },
    { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 } };
  const char *cmd = argv[0], *inv_path = NULL, *state_path = NULL, *events_path = NULL;
  struct hf_rollout_opts o = { .mode = mode, .parallel = 10, .prepare_parallel = -1, .rehearse = true,
                               .timeout_ms = 15000, .health_ms = 120000, .reconnect_ms = 300000 };
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "i:vh", opts, NULL)) != -1) {
    bool only_upgrade = false;
    switch (c) {
    case 'i': inv_path = optarg; break;
    case O_TO: o.target = optarg; only_upgrade = true; break;
    case O_STAGES: o.stages_spec = optarg; only_upgrade = true; break;
    case O_PARALLEL: {
      char *end;
      long v = strtol(optarg, &end, 10);
      if (*end || v < 1 || v > 10000) { fprintf(stderr, "hubfleet %s: --parallel: expected 1-10000\n", cmd); return HF_EXIT_USAGE; }
      o.parallel = (int)v;
      break;
    }
    case O_PREPARE: {
      char *end;
      long v = strtol(optarg, &end, 10);
      if (*end || v < 0 || v > 10000) {
        fprintf(stderr, "hubfleet %s: --prepare-parallel: expected 0-10000\n", cmd);
        return HF_EXIT_USAGE;
      }
      o.prepare_parallel = (int)v;
      only_upgrade = true;
      break;
    }
    case O_STOPEARLY: o.stop_early = true; only_upgrade = true; break;
    case O_MAXF: o.budget_spec = optarg; only_upgrade = true; break;
    case O_SOAK: if (seconds("--soak", optarg, &o.soak_ms)) return HF_EXIT_USAGE; only_upgrade = true; break;
    case O_CONFIRM: o.confirm = true; only_upgrade = true; break;
    case O_DRY: o.mode = HF_RM_DRYRUN; only_upgrade = true; break;
    case O_NOREH: o.rehearse = false; only_upgrade = true; break;
    case O_LIMIT: o.limit = optarg; only_upgrade = true; break;
    case O_EXCL: o.exclude = optarg; only_upgrade = true; break;
    case O_STATE: state_path = optarg; break;
    case O_EVENTS: events_path = optarg; break;
    case O_JSON: o.json = true; break;
    case O_KH: o.known_hosts = optarg; break;
    case O_ACCEPT: o.accept_new = true; break;
    case O_AGENT: o.agent_path = optarg; break;
    case O_TIMEOUT: if (seconds("--timeout", optarg, &o.timeout_ms)) return HF_EXIT_USAGE; break;
    case O_RECONNECT: if (seconds("--reconnect", optarg, &o.reconnect_ms)) return HF_EXIT_USAGE; break;
    case O_STATS: o.stats = true; break;
    case O_RULES: o.rules_path = optarg; break;
    case O_HEALTH: if (seconds("--health-timeout", optarg, &o.health_ms)) return HF_EXIT_USAGE; break;
    case O_HOSTS:
      if (mode != HF_RM_ROLLBACK) { fprintf(stderr, "hubfleet %s: --hosts is a rollback option\n", cmd); return HF_EXIT_USAGE; }
      o.hosts = optarg;
      break;
    case 'v': o.verbose++; break;
    case 'h': usage(stdout, cmd); return HF_EXIT_OK;
    default: usage(stderr, cmd); return HF_EXIT_USAGE;
    }
    if (only_upgrade && mode != HF_RM_UPGRADE) {
      fprintf(stderr, "hubfleet %s: %s is an upgrade option (a recorded rollout keeps its own)\n", cmd, argv[optind - 1]);
      return HF_EXIT_USAGE;
    }
  }
  if (mode != HF_RM_UPGRADE && optind < argc) o.rollout_id = argv[optind++];
  if (optind < argc) { fprintf(stderr, "hubfleet %s: unexpected argument '%s'\n", cmd, argv[optind]); return HF_EXIT_USAGE; }
  if (o.rollout_id && !hf_valid_id(o.rollout_id)) {
    fprintf(stderr, "hubfleet %s: '%s' is not a rollout id (see hubfleet history)\n", cmd, o.rollout_id);
    return HF_EXIT_USAGE;
  }
  if (mode == HF_RM_UPGRADE) {
    if (!inv_path) { fprintf(stderr, "hubfleet upgrade: -i INVENTORY is required\n"); return HF_EXIT_USAGE; }
    if (!o.target) { fprintf(stderr, "hubfleet upgrade: --to VERSION is required\n"); return HF_EXIT_USAGE; }
    if (!hf_valid_version(o.target)) {
      fprintf(stderr, "hubfleet upgrade: --to: '%.64s' is not a PEP 440 version\n", o.target);
      return HF_EXIT_USAGE;
    }
    /* Validate the plan's words before touching anything. */
    char err[256];
    struct hf_stages st;
    struct hf_budget b;
    if (o.stages_spec && hf_plan_parse_stages(o.stages_spec, &st, err, sizeof err) != 0) { fprintf(stderr, "hubfleet upgrade: %s\n", err); return HF_EXIT_USAGE; }
    if (o.budget_spec && hf_plan_parse_budget(o.budget_spec, &b, err, sizeof err) != 0) { fprintf(stderr, "hubfleet upgrade: %s\n", err); return HF_EXIT_USAGE; }
  }

  int rc = HF_EXIT_INTERNAL;
  char err[512], latest[64], inv_abs[PATH_MAX];
  struct hf_state *st = NULL;
  struct hf_inventory *inv = NULL;
  json_t *recorded = NULL;
  if (o.mode != HF_RM_DRYRUN) {
    if (hf_state_open(state_path, &st, err, sizeof err) != 0) { fprintf(stderr, "hubfleet %s: %s\n", cmd, err); return HF_EXIT_INTERNAL; }
    o.state = st;
  }
  if (mode != HF_RM_UPGRADE) {
    if (!o.rollout_id) {
      if (hf_state_rollout_latest(st, latest, sizeof latest) != 0) { fprintf(stderr, "hubfleet %s: no rollout recorded yet\n", cmd); rc = HF_EXIT_USAGE; goto out; }
      o.rollout_id = latest;
    }
    recorded = hf_state_rollout_get(st, o.rollout_id);
    if (!recorded) { fprintf(stderr, "hubfleet %s: no rollout '%s' in the state file (see hubfleet history)\n", cmd, o.rollout_id); rc = HF_EXIT_USAGE; goto out; }
    if (!inv_path) inv_path = json_string_value(json_object_get(recorded, "inventory"));
    json_t *ro_opts = json_object_get(recorded, "options");
    if (mode == HF_RM_RESUME) {
      /* A resumed rollout keeps the choices it was started with. */
      json_t *v;
      if ((v = json_object_get(ro_opts, "parallel")) && json_is_integer(v)) o.parallel = (int)json_integer_value(v);
      if ((v = json_object_get(ro_opts, "soak_ms")) && json_is_integer(v)) o.soak_ms = (unsigned)json_integer_value(v);
      if ((v = json_object_get(ro_opts, "health_ms")) && json_is_integer(v)) o.health_ms = (unsigned)json_integer_value(v);
      if ((v = json_object_get(ro_opts, "confirm")) && json_is_boolean(v)) o.confirm = json_is_true(v);
      if ((v = json_object_get(ro_opts, "rehearse")) && json_is_boolean(v)) o.rehearse = json_is_true(v);
      if ((v = json_object_get(ro_opts, "prepare_parallel")) && json_is_integer(v)) o.prepare_parallel = (int)json_integer_value(v);
      if ((v = json_object_get(ro_opts, "stop_early")) && json_is_boolean(v)) o.stop_early = json_is_true(v);
    }
  }
  struct hf_inv_error ierr;
  if (hf_inv_load(inv_path, &inv, &ierr) != 0) {
    char msg[1400];
    hf_inv_error_format(&ierr, msg, sizeof msg);
    fprintf(stderr, "hubfleet %s: %s\n", cmd, msg);
    rc = HF_EXIT_USAGE;
    goto out;
  }
  o.inv = inv;
  o.inventory_path = realpath(inv_path, inv_abs) ? inv_abs : inv_path;
  if (events_path) {
    o.events = !strcmp(events_path, "-") ? stdout : fopen(events_path, "a");
    if (!o.events) { fprintf(stderr, "hubfleet %s: --events %s: %s\n", cmd, events_path, strerror(errno)); rc = HF_EXIT_USAGE; goto out; }
  }
  rc = hf_rollout_run(&o);
  if (o.events && o.events != stdout) fclose(o.events);
out:
  json_decref(recorded);
  hf_inv_free(inv);
  hf_state_close(st);
  return rc;
}

int hf_cmd_upgrade(int argc, char **argv) { return run(argc, argv, HF_RM_UPGRADE); }
int hf_cmd_resume(int argc, char **argv) { return run(argc, argv, HF_RM_RESUME); }
int hf_cmd_rollback(int argc, char **argv) { return run(argc, argv, HF_RM_ROLLBACK); }
