/* rollout_int.h: the rollout's parts, shared by the files of controller/rollout/.
 *
 *   host.c       the host state machine: its states, its one transition
 *                function (validates, logs, records before anything is sent)
 *                and the outcome each host ends with
 *   procedure.c  what a host does in each state: the upgrade's steps, the
 *                rollback, the soak re-check, reconnects, journal reconciliation
 *   scheduler.c  stages, the failure budget, soak, --confirm, Ctrl-C, the run
 *   recorded.c   a recorded rollout loaded back (resume, rollback)
 *   output.c     what people and programs see: lines, progress, events, summary
 *   port_ssh.c   the scheduler's narrow engine interface over the SSH engine
 *
 * The scheduler reaches hosts only through struct hf_rollout_port (open,
 * request, close, lost): a unit test runs it on a scripted fake engine.
 * See docs/rollout.md for the state machine drawn out. */
#ifndef HF_ROLLOUT_INT_H
#define HF_ROLLOUT_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>
#include "hf_engine.h"
#include "hf_proto.h"
#include "hf_rollout.h"

/* ---- the per-host procedure --------------------------------------------------- */

/* The upgrade's steps, in order: operations of proto's table (HF_OP_MAP:
 * names, arguments, default deadlines, place in the procedure; a unit test
 * checks this order against it). preflight and stage change nothing the
 * hub uses (stage: the target installed into a copy of each environment);
 * they are the host's preparation, which runs ahead of its stage. A
 * failure at or after "stop" means the hub may have changed: the agent's
 * rollback runs. */
#define HR_STEPS(X) X(PREFLIGHT) X(STAGE) X(BACKUP) X(STOP) X(INSTALL) X(MIGRATE) X(START) X(HEALTH)
enum hr_step {
#define HR_STEP_ENUM(id) ST_##id,
  HR_STEPS(HR_STEP_ENUM)
#undef HR_STEP_ENUM
  ST__COUNT
};
/* The operation of step s (0 <= s < ST__COUNT). */
const struct hf_op *hr_step(int s);
#define ROLLBACK_TIMEOUT_MS 1800000u
#define JOURNAL_TIMEOUT_MS  30000u
#define RESULT_GRACE_MS     30000u
/* Warnings and errors a host's agent may have recorded and printed per
 * request (issue 13: a flooding agent wrote 28 MB of state in 3.7 s); past
 * either cap they are counted and summarised in one line. */
#define EVENT_CAP_COUNT     200u
#define EVENT_CAP_BYTES     (64u * 1024)

/* ---- the host state machine ----------------------------------------------------- */

/* What a host is doing: name, meaning, and the states it may go to next
 * (HR_TO(...) masks). host_to() is the only place a state changes. */
#define HR_STATES(X)                                                                                        \
  X(PENDING,  "pending",  "not started in this run, or paused at a safe point",                             \
    HR_TO(CONNECT) | HR_TO(PREPCONN) | HR_TO(DONE))                                                         \
  X(PREPCONN, "prep-connect", "a session to prepare the host ahead of its stage is opening",                \
    HR_TO(PREP) | HR_TO(PENDING) | HR_TO(DONE))                                                             \
  X(PREP,     "prep",     "preparing ahead of its stage: preflight, then stage (neither changes the hub)",  \
    HR_TO(PREP) | HR_TO(PREPARED) | HR_TO(PENDING) | HR_TO(DONE))                                           \
  X(PREPARED, "prepared", "prepared, session closed, waiting for its stage",                               \
    HR_TO(CONNECT) | HR_TO(DONE))                                                                           \
  X(CONNECT,  "connect",  "a session to the host is opening",                                               \
    HR_TO(JOURNAL) | HR_TO(STEP) | HR_TO(ROLLBACK) | HR_TO(RECHECK) | HR_TO(WAIT) | HR_TO(DONE) |           \
    HR_TO(PENDING))                                                                                         \
  X(JOURNAL,  "journal",  "resume/reconnect: asking the agent's journal what happened",                     \
    HR_TO(STEP) | HR_TO(ROLLBACK) | HR_TO(CONNECT) | HR_TO(WAIT) | HR_TO(DONE) | HR_TO(PENDING))            \
  X(STEP,     "step",     "a step of the upgrade is in flight (recorded before it was sent)",               \
    HR_TO(STEP) | HR_TO(ROLLBACK) | HR_TO(CONNECT) | HR_TO(WAIT) | HR_TO(DONE) | HR_TO(PENDING))            \
  X(WAIT,     "wait",     "lost while the hub may be changing: reconnecting until a deadline",              \
    HR_TO(CONNECT) | HR_TO(DONE))                                                                           \
  X(ROLLBACK, "rollback", "the agent's rollback is in flight (its goal recorded first)",                    \
    HR_TO(WAIT) | HR_TO(DONE))                                                                              \
  X(RECHECK,  "recheck",  "soak over: health checked again",                                                \
    HR_TO(ROLLBACK) | HR_TO(CONNECT) | HR_TO(DONE))                                                         \
  X(DONE,     "done",     "finished in this run; its outcome is recorded",                                  \
    HR_TO(CONNECT))
enum hr_state {
#define HR_STATE_ENUM(id, name, what, next) HR_##id,
  HR_STATES(HR_STATE_ENUM)
#undef HR_STATE_ENUM
  HR__COUNT
};
#define HR_TO(id) (1u << HR_##id)

/* How a host ended (or stands): the state file's and the output's words
 * come from here only. failure = counts against the failure budget. */
#define HR_OUTCOMES(X)                  \
  X(PENDING,    HF_HOST_PENDING,    false) \
  X(RUNNING,    HF_HOST_RUNNING,    false) \
  X(PREPARED,   HF_HOST_PREPARED,   false) \
  X(UPGRADED,   HF_HOST_UPGRADED,   false) \
  X(FAILED,     HF_HOST_FAILED,     true)  \
  X(ROLLEDBACK, HF_HOST_ROLLEDBACK, true)  \
  X(ATTENTION,  HF_HOST_ATTENTION,  true)
enum hr_outcome {
#define HR_OUTCOME_ENUM(id, text, failure) HO_##id,
  HR_OUTCOMES(HR_OUTCOME_ENUM)
#undef HR_OUTCOME_ENUM
  HO__COUNT
};

/* Why a host is being connected (what to send once ready). */
enum hr_goal { G_STEPS, G_ROLLBACK, G_RECHECK, G_PREFLIGHT_ONLY, G_PREPARE };

/* ---- the engine, as the scheduler sees it ------------------------------------------ */

struct hf_rollout_port {
  /* Creates the engine on loop for the run's options; *eng is passed back to
   * every call. err gets a message on failure (an exit code is returned). */
  int  (*engine_new)(uv_loop_t *loop, const struct hf_rollout_opts *o, void **eng, char *err, size_t errlen);
  void (*engine_free)(void *eng);
  int  (*open)(void *eng, const struct hf_host *host, hf_session_ready_cb ready, void *ctx, struct hf_session **out);
  int  (*request)(struct hf_session *s, const char *op, json_t *args, unsigned timeout_ms, hf_event_cb on_event,
                  hf_result_cb on_result, void *ctx);
  void (*close)(struct hf_session *s);
  /* The session failed after ready: a request in flight may have run. */
  bool (*lost)(const struct hf_session *s);
  /* Ready to take a request. */
  bool (*ready)(const struct hf_session *s);
  const char *(*error)(const struct hf_session *s);
  /* --stats line, may be NULL. */
  void (*stats)(void *eng, FILE *f);
  /* --confirm: whether to start stage (0-based) of n hosts: 1 yes, 0 no,
   * -1 interrupted (Ctrl-C at the prompt). */
  int  (*confirm)(void *eng, unsigned stage, unsigned nstages, size_t n);
};
extern const struct hf_rollout_port hf_rollout_ssh_port;
/* The run on any port (tests: a fake engine). */
int hf_rollout_run_on(const struct hf_rollout_opts *o, const struct hf_rollout_port *port);

/* ---- a host, a rollout ------------------------------------------------------------ */

struct rollout;
struct rhost {
  struct rollout          *ro;
  const struct hf_host    *host;
  unsigned                 stage;
  enum hr_state            state;
  enum hr_outcome          outcome;     /* as recorded */
  enum hr_goal             goal;
  int                      step;        /* next or current step (ST__COUNT = past every step: rollback) */
  struct hf_session       *sess;
  int64_t                  step_id;     /* the state's row of the request in flight */
  int64_t                  t_step;      /* when the current step began (ms) */
  int64_t                  t_stop;      /* hub stopped at (ms, 0 = not stopped in this run) */
  int64_t                  down_before; /* downtime recorded by an earlier run (rollback of it), ms */
  int64_t                  reconnect_deadline;
  int64_t                  busy_deadline; /* waiting for an older agent to let go of the host (0 = not) */
  uv_timer_t               timer;
  bool                     journal_first; /* ask the journal before the next step */
  bool                     selected;    /* part of this run */
  bool                     prepared;    /* preflight and stage done ahead of its stage: re-check stage only */
  char                     expect_rev[64]; /* the rehearsal saw no schema change: migrate may skip at this revision */
  char                     predicted_rev[64]; /* the revision the rehearsal migrated its copy to ("" = unknown) */
  json_t                  *preflight;   /* dry run: the preflight data (new) */
  char                     error[512];
  unsigned                 ev_logged;   /* warn/error events recorded for the request in flight */
  size_t                   ev_bytes;    /* ... and their text bytes */
  unsigned                 ev_dropped;  /* ... past the caps (summarised when its result comes) */
};

struct rollout {
  const struct hf_rollout_opts *o;
  const struct hf_rollout_port *port;
  void             *engine;
  uv_loop_t         loop;
  struct rhost     *hosts;
  size_t            nhosts;
  char              id[64];
  char              target[64];
  unsigned          soaked;        /* 1 + the stage whose soak re-check ran */
  unsigned          nstages, stage;
  unsigned          budget;
  size_t            in_state[HR__COUNT];    /* hosts per state: kept by host_to() only */
  size_t            in_outcome[HO__COUNT];  /* hosts per outcome: kept by host_record() only */
  unsigned         *fail_by_stage;          /* failure outcomes per stage: kept by host_record() only */
  unsigned          bad_transitions;        /* transitions the table refused (a bug; tests assert 0) */
  size_t            next;          /* next index in launch order */
  size_t            prep_next;     /* next index in launch order to prepare */
  size_t           *order;         /* host indexes in stage order */
  bool              halting;
  bool              confirm_waiting; /* the stage is over, the --confirm prompt waits for preparations in flight */
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

/* host.c */
const char *hr_outcome_text(enum hr_outcome o);
bool hr_outcome_failure(enum hr_outcome o);
enum hr_outcome hr_outcome_parse(const char *text);  /* unknown text: HO_FAILED */
/* The one transition function: checks the table, logs (verbose), keeps the
 * per-state counts, and for STEP, ROLLBACK and RECHECK records the request's
 * start in the state file first. false = the state file could not be
 * written (the rollout is stopping; send nothing). */
bool host_to(struct rhost *h, enum hr_state to, int step);
/* The outcome, the step and the error, recorded in the state file first
 * (the host row), then held; false as above (nothing changed). */
bool host_record(struct rhost *h, enum hr_outcome oc, const char *step, const char *error);
/* host_record at the host's current step. */
bool host_set_outcome(struct rhost *h, enum hr_outcome oc, const char *error);
/* Hosts whose upgrade (or rollback, re-check) is in flight: not pending,
 * done, preparing or prepared. */
size_t ro_active(const struct rollout *ro);
/* Hosts failed, rolled back or needing attention in the stages reached (the
 * budget's count; with --stop-early, in every stage: a refusal found while
 * preparing a later stage counts at once). */
size_t ro_failures(const struct rollout *ro);
/* Moves h's outcome (the counts follow); records nothing. */
void host_outcome_move(struct rhost *h, enum hr_outcome oc);
/* A state write's result: false stops the rollout at once (exit 70). */
bool state_ok(struct rollout *ro, int rc, const char *what);
/* The state machine as a markdown table (docs/rollout.md holds it). */
void hf_rollout_machine_md(FILE *f);

/* procedure.c */
void host_launch(struct rhost *h);
void host_send(struct rhost *h);
void host_done(struct rhost *h, enum hr_outcome oc, const char *error);
void close_session(struct rhost *h);
void host_timer_init(struct rhost *h);

/* scheduler.c */
void launch_more(struct rollout *ro);

/* recorded.c */
int load_recorded(struct rollout *ro);
const char *journal_state_at(const json_t *data, const char *step, long *at);
bool journal_rolled_back(const json_t *data);
json_t *journal_step_data(const json_t *data, int step);
int64_t journal_time(const json_t *data, const char *step, const char *state);

/* output.c */
void say(struct rollout *ro, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void emit(struct rollout *ro, const struct rhost *h, const char *event, const char *level, const char *fmt, ...)
  __attribute__((format(printf, 5, 6)));
void emit_ndjson(struct rollout *ro, const struct rhost *h, const char *event, const char *level, const char *text);
void progress_clear(struct rollout *ro);
void on_progress_timer(uv_timer_t *t);
void print_dryrun(struct rollout *ro);
void print_summary(struct rollout *ro);

#endif
