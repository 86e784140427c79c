/* hf_rollout.h: the rollout subcommands (upgrade, resume, rollback, status,
 * history) and the scheduler they share. */
#ifndef HF_ROLLOUT_H
#define HF_ROLLOUT_H

#include <stdbool.h>
#include <stdio.h>
#include "hf_inventory.h"
#include "hf_state.h"

/* Each: argv[0] is the subcommand name; returns an exit code of enum hf_exit. */
int hf_cmd_status(int argc, char **argv);
int hf_cmd_history(int argc, char **argv);
int hf_cmd_upgrade(int argc, char **argv);
int hf_cmd_resume(int argc, char **argv);
int hf_cmd_rollback(int argc, char **argv);
int hf_cmd_report(int argc, char **argv);
/* A duration in ms from the state file as "12.3s", "-" when not recorded. */
void hf_fmt_seconds(const json_t *ms, char *buf, size_t len);

enum hf_rollout_mode {
  HF_RM_UPGRADE,   /* a new rollout: every step on every selected host */
  HF_RM_RESUME,    /* continue a recorded rollout, reconciling with journals */
  HF_RM_ROLLBACK,  /* undo every host a recorded rollout changed */
  HF_RM_DRYRUN,    /* preflight everywhere, print the plan, change nothing */
};

/* What the scheduler needs; every pointer borrowed for the run. */
struct hf_rollout_opts {
  enum hf_rollout_mode  mode;
  struct hf_inventory  *inv;
  struct hf_state      *state;      /* NULL only for a dry run */
  const char           *rollout_id; /* resume/rollback: the recorded rollout */
  const char           *target;     /* upgrade/dry run: the version */
  const char           *inventory_path;
  const char           *stages_spec;  /* NULL = default */
  const char           *budget_spec;  /* NULL = "0" */
  const char           *limit;      /* host pattern or NULL */
  const char           *exclude;    /* host pattern or NULL */
  const char           *hosts;      /* rollback: pattern of hosts to undo, NULL = all */
  int                   parallel;
  int                   prepare_parallel; /* hosts of later stages prepared at once while a stage runs (0 = none, <0 = as parallel) */
  bool                  stop_early; /* a refusal while preparing a later stage counts against the budget at once */
  unsigned              soak_ms;
  unsigned              health_ms;  /* health deadline after start */
  bool                  confirm;
  bool                  rehearse;
  bool                  json;       /* final summary as JSON on stdout */
  FILE                 *events;     /* NDJSON events or NULL */
  /* engine settings */
  const char           *known_hosts;
  const char           *agent_path;
  const char           *rules_path; /* --rules, NULL = the installed data file */
  bool                  accept_new;
  unsigned              timeout_ms;   /* connection phases */
  unsigned              reconnect_ms; /* how long to keep trying a host lost mid-upgrade */
  bool                  stats;
  int                   verbose;
};

/* --prepare-parallel as it applies (negative = as --parallel). */
int hf_rollout_prepare_parallel(const struct hf_rollout_opts *o);

/* Runs a rollout to its end (or its halt / pause). Returns an exit code. */
int hf_rollout_run(const struct hf_rollout_opts *o);

#endif
