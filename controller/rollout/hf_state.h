/* hf_state.h: the controller's state store: rollouts, per-host runs, every
 * remote step and an event log in one SQLite file (WAL, mode 0600).
 *
 * Writers take BEGIN IMMEDIATE and every connection has a busy timeout, so a
 * `hubfleet status` reading while a rollout writes never blocks the rollout
 * for long and never sees half a step. Every remote step is recorded as
 * "sent" before the request leaves and as "ok"/"failed" after its result: a
 * killed controller loses at most the knowledge that a step finished, which
 * the agent's journal answers on reconnect.
 *
 * Ownership: strings passed in are borrowed (copied by SQLite); json_t
 * arguments are borrowed; functions returning json_t return new references.
 */
#ifndef HF_STATE_H
#define HF_STATE_H

#include <stdint.h>
#include <stddef.h>
#include <jansson.h>

#define HF_STATE_SCHEMA_VERSION 1

struct hf_state;

/* Rollout status, stored as text. */
#define HF_ROLLOUT_RUNNING  "running"   /* stages in progress (or controller died: resume) */
#define HF_ROLLOUT_PAUSED   "paused"    /* waiting for the operator (--confirm): resume */
#define HF_ROLLOUT_HALTED   "halted"    /* failure budget exceeded; untouched hosts stay untouched */
#define HF_ROLLOUT_DONE     "done"      /* every stage finished */
#define HF_ROLLOUT_ROLLEDBACK "rolled_back" /* `hubfleet rollback` undid it */

/* Host status within a rollout, stored as text. */
#define HF_HOST_PENDING     "pending"     /* not started: nothing was done to it */
#define HF_HOST_PREPARED    "prepared"    /* prepared ahead of its stage (preflight, a staged copy of the envs); hub untouched */
#define HF_HOST_RUNNING     "running"     /* steps in progress */
#define HF_HOST_UPGRADED    "upgraded"    /* every step ok, healthy on the target */
#define HF_HOST_FAILED      "failed"      /* failed before anything changed (preflight, unreachable) */
#define HF_HOST_ROLLEDBACK  "rolled_back" /* failed after the backup, rollback restored the old hub */
#define HF_HOST_ATTENTION   "needs_attention" /* rollback failed too: see error and backup */
/* The host row's step while an automatic rollback is under way (status running):
 * recorded before the rollback is sent, so resume continues it (issue 13). */
#define HF_STEP_ROLLBACK    "rollback"

/* Opens (creating with mode 0600 if missing) and migrates the state file.
 * path NULL = hf_state_default_path(). Returns 0 and *out (new), or HF_EDB
 * with err filled. */
int hf_state_open(const char *path, struct hf_state **out, char *err, size_t errlen);
/* Accepts NULL. */
void hf_state_close(struct hf_state *st);
/* $XDG_STATE_HOME/hubfleet/state.db, else ~/.local/state/hubfleet/state.db.
 * Creates the directory (0700). Returns 0 or HF_EIO. */
int hf_state_default_path(char *buf, size_t len);
/* The last SQLite error message (borrowed). */
const char *hf_state_errmsg(struct hf_state *st);

/* Milliseconds since the epoch. */
int64_t hf_state_now_ms(void);

/* Creates a rollout with a fresh id (written to id, idlen >= 32):
 * "r" + UTC time + 4 hex, e.g. r20261125-161503-a3f0. options is any JSON
 * object (stored as text). Every host is inserted as pending with its stage.
 * hosts: names (borrowed), stages: stage per host. */
int hf_state_rollout_create(struct hf_state *st, const char *target, const char *inventory,
                            const json_t *options, unsigned nstages, unsigned budget,
                            const char *const *hosts, const unsigned *stages, size_t nhosts,
                            char *id, size_t idlen);
int hf_state_rollout_set_status(struct hf_state *st, const char *id, const char *status);
int hf_state_rollout_set_stage(struct hf_state *st, const char *id, unsigned stage);
/* The rollout as JSON (new): {id, target, inventory, options, status, stage,
 * nstages, budget, failures, created, finished}. NULL when absent. */
json_t *hf_state_rollout_get(struct hf_state *st, const char *id);
/* Every rollout, newest first, as a JSON array (new). */
json_t *hf_state_rollout_list(struct hf_state *st);
/* Latest rollout id into buf; HF_ENOTFOUND when none. */
int hf_state_rollout_latest(struct hf_state *st, char *buf, size_t len);

/* Host runs. */
int hf_state_host_set(struct hf_state *st, const char *rollout, const char *host,
                      const char *status, const char *step, const char *error);
/* Stores a JSON value (borrowed) in one of the host's JSON columns:
 * "before", "after", "backup". */
int hf_state_host_set_json(struct hf_state *st, const char *rollout, const char *host,
                           const char *column, const json_t *value);
int hf_state_host_set_downtime(struct hf_state *st, const char *rollout, const char *host,
                               int64_t downtime_ms);
/* The users' downtime: the longest time the agent's probe found a user's
 * server unreachable through the proxy during the upgrade. */
int hf_state_host_set_users_downtime(struct hf_state *st, const char *rollout, const char *host, int64_t ms);
/* Every host of a rollout as a JSON array (new), in stage then name order:
 * {host, stage, status, step, error, before, after, backup, downtime_ms, users_downtime_ms,
 *  started, finished}. */
json_t *hf_state_hosts(struct hf_state *st, const char *rollout);

/* Steps: step_begin records "sent" and returns the row id in *step_id;
 * step_end records the outcome ("ok"/"failed"/"unknown") with data (borrowed,
 * may be NULL) and an error text (may be NULL). */
int hf_state_step_begin(struct hf_state *st, const char *rollout, const char *host,
                        const char *step, int64_t *step_id);
int hf_state_step_end(struct hf_state *st, int64_t step_id, const char *outcome,
                      const json_t *data, const char *error);
/* Every step of a rollout (host NULL = all hosts) as a JSON array (new). */
json_t *hf_state_steps(struct hf_state *st, const char *rollout, const char *host);

/* Event log. level: debug/info/warn/error. host may be NULL. */
int hf_state_event(struct hf_state *st, const char *rollout, const char *host,
                   const char *level, const char *text);
json_t *hf_state_events(struct hf_state *st, const char *rollout, int64_t after_id);

#endif /* HF_STATE_H */
