/* test_scheduler.c: the real rollout scheduler (controller/rollout/) on a
 * scripted fake engine: no SSH, no fleet, a real state file (SQLite) and the
 * real rules. Each fake host carries a fake agent with a journal kept in a
 * file (so a controller "killed" in a forked child leaves it for the resume),
 * the agent's stale-step refusal, and a script: a step that fails, a session
 * lost at a step, a host unreachable after a loss, a controller killed at a
 * step boundary, Ctrl-C at a step.
 *
 * usage: test-scheduler RULES.json DOCS/rollout.md */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "hf_controller.h"
#include "hf_proto.h"
#include "rollout/rollout_int.h"

static int failures, checks;
#define CHECK(cond, ...) do { checks++; if (!(cond)) { failures++; fprintf(stderr, "%s:%d: FAIL: %s: ", __FILE__, \
  __LINE__, #cond); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

static const char *rules_path;
static char dir[64];   /* this run's scratch directory */

/* ---- the fake agent: a journal per host, in a file -------------------------------- */

enum kill_when { K_NONE, K_BEFORE, K_AFTER };  /* controller dies before the agent runs op / after it ran */

struct script {
  const char    *fail_op;        /* the agent answers this op with an error */
  int            fail_code;      /* ... this one (0 = HF_ECMD) */
  const char    *lose_op;        /* the session is lost on this op (after the agent ran it when lose_ran) */
  bool           lose_ran;
  int            lose_count;     /* how many times (0 = once) */
  bool           unreachable_after_loss;   /* connecting fails after the loss */
  int            recheck;        /* 0 ok; 1 health fails on the soak re-check; 2 lost on it */
  const char    *kill_op;        /* _exit(9) at this op (in a child) */
  int            kill_nth;       /* ... its nth time (0 = the first) */
  enum kill_when kill_when;
  const char    *sigint_op;      /* raise(SIGINT) when this op is received */
  const char    *refuse;         /* preflight answers with this refusing check */
  bool           journal_moved;  /* rollback finds no journal (state dir moved): nothing_to_undo */
};

struct fhost {
  char          name[32];
  struct script sc;
  int           opens;          /* sessions opened */
  int           requests;       /* requests received */
  int           stale;          /* steps refused as stale */
  int           runs[ST__COUNT + 1]; /* times each step (and rollback) ran */
  bool          lost_once;
  int           losses;
  int           first_req_seq;  /* global order of its first request (0 = none) */
  int           stage_done_seq; /* ... of its first stage done */
  int           failed_seq;     /* ... of its first failed answer */
  bool          staged;         /* a staged copy exists and nothing changed since */
  bool          change_after_stage; /* the live env changes right after it is staged (once) */
  int           health_done_seq;
  int           background[ST__COUNT + 1]; /* requests of each step sent as background work */
};

#define MAXH 8
static struct fhost fh[MAXH];
static int nfh, seq;

struct hf_session {
  struct fhost        *h;
  hf_session_ready_cb  ready;
  void                *ctx;
  bool                 lost, ok, closed;
  uv_timer_t           t;
  /* the request in flight */
  char                 op[32];
  json_t              *args;
  hf_result_cb         on_result;
  void                *rctx;
  int                  status;
  json_t              *data;
  char                 msg[128];
};

static char *jpath(const struct fhost *h) {
  static char p[512];
  snprintf(p, sizeof p, "%s/journal-%.31s.json", dir, h->name);
  return p;
}
static json_t *journal_load(const struct fhost *h) {
  json_t *j = json_load_file(jpath(h), 0, NULL);
  return j ? j : json_array();
}
static void journal_add(const struct fhost *h, const char *step, const char *state) {
  json_t *j = journal_load(h);
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  char tm[64];
  struct tm g;
  gmtime_r(&ts.tv_sec, &g);
  snprintf(tm, sizeof tm, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", g.tm_year + 1900, g.tm_mon + 1, g.tm_mday,
           g.tm_hour, g.tm_min, g.tm_sec, ts.tv_nsec / 1000000);
  json_array_append_new(j, json_pack("{s:s,s:s,s:s}", "step", step, "state", state, "time", tm));
  json_dump_file(j, jpath(h), 0);
  json_decref(j);
}
/* The agent's stale-step refusal: a step runs only after its predecessor in
 * the procedure is the journal's last completed step (or it re-runs itself). */
static bool stale(const struct fhost *h, int step) {
  json_t *j = journal_load(h);
  const char *last = NULL;
  size_t i;
  json_t *r;
  json_array_foreach(j, i, r)
    if (!strcmp(json_string_value(json_object_get(r, "state")), "done"))
      last = json_string_value(json_object_get(r, "step"));
  bool ok = step == ST_PREFLIGHT || step == ST_BACKUP ||
            (last && (!strcmp(last, hr_step(step - 1)->name) || !strcmp(last, hr_step(step)->name)));
  json_decref(j);
  return !ok;
}
static int step_of(const char *op) {
  for (int s = 0; s < ST__COUNT; s++) if (!strcmp(hr_step(s)->name, op)) return s;
  return !strcmp(op, "rollback") ? ST__COUNT : -1;
}

static void on_timer_closed(uv_handle_t *hd) {
  struct hf_session *s = hd->data;
  json_decref(s->args);
  json_decref(s->data);
  free(s);
}

static void deliver(uv_timer_t *t) {
  struct hf_session *s = t->data;
  if (s->closed) return;
  if (!s->op[0]) {           /* the connection */
    s->ok = s->status == 0;
    s->ready(s, s->status, s->ctx);
    return;
  }
  hf_result_cb cb = s->on_result;
  json_t *data = s->data;
  s->data = NULL;
  s->op[0] = '\0';
  if (s->status != 0 && s->lost) s->ok = false;
  cb(s, s->status, data, s->msg, s->rctx);
  json_decref(data);
}

static void later(struct hf_session *s, unsigned ms) { uv_timer_start(&s->t, deliver, ms, 0); }

static uv_loop_t *cur_loop;

static int f_engine_new(uv_loop_t *loop, const struct hf_rollout_opts *o, void **eng, char *err, size_t n) {
  (void)o; (void)err; (void)n;
  cur_loop = loop;
  *eng = fh;
  return 0;
}
static void f_engine_free(void *eng) { (void)eng; }

static int f_open(void *eng, const struct hf_host *host, hf_session_ready_cb ready, void *ctx, struct hf_session **out) {
  (void)eng;
  struct fhost *h = NULL;
  for (int i = 0; i < nfh; i++) if (!strcmp(fh[i].name, host->name)) h = &fh[i];
  if (!h) return HF_EINVAL;
  struct hf_session *s = calloc(1, sizeof *s);
  s->h = h;
  s->ready = ready;
  s->ctx = ctx;
  uv_timer_init(cur_loop, &s->t);
  s->t.data = s;
  h->opens++;
  if (h->lost_once && h->sc.unreachable_after_loss) {
    s->status = HF_EUNREACH;
    snprintf(s->msg, sizeof s->msg, "no route to host");
  }
  *out = s;
  later(s, 1);
  return 0;
}

static void agent_run(struct hf_session *s) {
  struct fhost *h = s->h;
  const char *op = s->op;
  int step = step_of(op);
  h->requests++;
  if (step >= 0 && step < ST__COUNT && json_is_true(json_object_get(s->args, "background"))) h->background[step]++;
  if (!h->first_req_seq) h->first_req_seq = ++seq;
  if (h->sc.sigint_op && !strcmp(op, h->sc.sigint_op)) { h->sc.sigint_op = NULL; raise(SIGINT); }
  if (h->sc.kill_op && !strcmp(op, h->sc.kill_op) && h->sc.kill_when == K_BEFORE && --h->sc.kill_nth <= 0) _exit(9);
  if (!strcmp(op, "journal")) {
    json_t *j = journal_load(h);
    s->data = json_pack("{s:o}", "steps", j);
    return;
  }
  bool recheck = step == ST_HEALTH && h->health_done_seq;
  if (recheck && h->sc.recheck == 2 && !h->lost_once) {
    s->status = HF_ETIMEDOUT; s->lost = true; h->lost_once = true; h->losses++;
    snprintf(s->msg, sizeof s->msg, "connection lost");
    return;
  }
  if (recheck && h->sc.recheck == 1) {
    s->status = HF_EHEALTH;
    snprintf(s->msg, sizeof s->msg, "hub answers 503");
    return;
  }
  if (step >= 0 && step < ST__COUNT && stale(h, step)) {
    h->stale++;
    s->status = HF_ESTATE;
    snprintf(s->msg, sizeof s->msg, "stale step %s", op);
    return;
  }
  bool lose = h->sc.lose_op && !strcmp(op, h->sc.lose_op) && h->losses <= h->sc.lose_count;
  if (lose && !h->sc.lose_ran) {
    s->status = HF_ETIMEDOUT; s->lost = true; h->lost_once = true; h->losses++;
    snprintf(s->msg, sizeof s->msg, "connection lost");
    return;
  }
  if (step == ST__COUNT && h->sc.journal_moved) {   /* as the agent answers with no backup in its journal */
    s->data = json_pack("{s:b}", "nothing_to_undo", 1);
    return;
  }
  if (step >= 0 && !recheck) journal_add(h, op, "begin");
  if (h->sc.fail_op && !strcmp(op, h->sc.fail_op)) {
    if (!h->failed_seq) h->failed_seq = ++seq;
    journal_add(h, op, "failed");
    s->status = h->sc.fail_code ? h->sc.fail_code : HF_ECMD;
    snprintf(s->msg, sizeof s->msg, "%s exited 1", op);
    return;
  }
  if (step >= 0 && !recheck) journal_add(h, op, "done");
  if (step >= 0) h->runs[step]++;
  if (step == ST_HEALTH && !recheck) h->health_done_seq = ++seq;
  if (h->sc.kill_op && !strcmp(op, h->sc.kill_op) && h->sc.kill_when == K_AFTER) _exit(9);
  if (lose) {
    s->status = HF_ETIMEDOUT; s->lost = true; h->lost_once = true; h->losses++;
    snprintf(s->msg, sizeof s->msg, "connection lost");
    return;
  }
  if (step == ST_STAGE) {
    s->data = json_pack("{s:b,s:{}}", "already", h->staged, "staged");
    h->staged = !h->change_after_stage;
    h->change_after_stage = false;
    if (!h->stage_done_seq) h->stage_done_seq = ++seq;
  } else if (step == ST_PREFLIGHT) {
    s->data = json_pack("{s:[],s:[{s:s,s:s}]}", "checks", "envs", "role", "hub", "jupyterhub", "3.0.0");
    if (h->sc.refuse)
      json_array_append_new(json_object_get(s->data, "checks"),
                            json_pack("{s:s,s:s,s:s}", "name", "requires", "outcome", "refuse", "detail", h->sc.refuse));
  }
  else if (step == ST_BACKUP)
    s->data = json_pack("{s:{s:s}}", "backup", "dir", "/var/backups/hub");
  else
    s->data = json_object();
}

static int f_request(struct hf_session *s, const char *op, json_t *args, unsigned timeout_ms, hf_event_cb on_event,
                     hf_result_cb on_result, void *ctx) {
  (void)timeout_ms; (void)on_event;
  if (!s->ok || s->op[0]) { json_decref(args); return HF_ESTATE; }
  snprintf(s->op, sizeof s->op, "%s", op);
  json_decref(s->args);
  s->args = args;
  s->on_result = on_result;
  s->rctx = ctx;
  s->status = 0;
  s->msg[0] = '\0';
  agent_run(s);
  later(s, 2);
  return 0;
}

static void f_close(struct hf_session *s) {
  if (s->closed) return;
  s->closed = true;
  uv_timer_stop(&s->t);
  uv_close((uv_handle_t *)&s->t, on_timer_closed);
}
static bool f_lost(const struct hf_session *s) { return s->lost; }
static bool f_ready(const struct hf_session *s) { return s->ok && !s->lost && !s->op[0]; }
static const char *f_error(const struct hf_session *s) { return s->msg; }

static int confirm_answer;   /* 1 yes, 0 no */
static int confirms;
static int f_confirm(void *eng, unsigned stage, unsigned nstages, size_t n) {
  (void)eng; (void)stage; (void)nstages; (void)n;
  confirms++;
  return confirm_answer;
}

static const struct hf_rollout_port fake_port = {
  .engine_new = f_engine_new, .engine_free = f_engine_free, .open = f_open, .request = f_request,
  .close = f_close, .lost = f_lost, .ready = f_ready, .error = f_error, .confirm = f_confirm,
};

/* ---- a run ------------------------------------------------------------------------- */

struct run {
  struct hf_inventory *inv;
  struct hf_state     *st;
  char                 id[64];
  int                  rc;
};

static void fleet(int n) {
  memset(fh, 0, sizeof fh);
  nfh = n;
  seq = 0;
  char p[512];
  snprintf(p, sizeof p, "%s/inv.ini", dir);
  FILE *f = fopen(p, "w");
  fprintf(f, "[hubs]\n");
  for (int i = 0; i < n; i++) {
    snprintf(fh[i].name, sizeof fh[i].name, "hub%02d", i + 1);
    fprintf(f, "%s ansible_host=127.0.0.1\n", fh[i].name);
    unlink(jpath(&fh[i]));
  }
  fclose(f);
  snprintf(p, sizeof p, "%s/state.db", dir);
  unlink(p);
}

static struct hf_rollout_opts opts(struct run *r, enum hf_rollout_mode mode) {
  char p[512];
  struct hf_inv_error ie;
  snprintf(p, sizeof p, "%s/inv.ini", dir);
  if (!r->inv && hf_inv_load(p, &r->inv, &ie) != 0) { fprintf(stderr, "inventory: %s\n", ie.message); exit(2); }
  snprintf(p, sizeof p, "%s/state.db", dir);
  char err[256];
  if (!r->st && hf_state_open(p, &r->st, err, sizeof err) != 0) { fprintf(stderr, "state: %s\n", err); exit(2); }
  struct hf_rollout_opts o = { .mode = mode, .inv = r->inv, .state = r->st, .target = "3.1.1",
                               .inventory_path = "inv.ini", .parallel = 10, .prepare_parallel = 0,
                               .health_ms = 5000, .rehearse = true,
                               .rules_path = rules_path, .timeout_ms = 5000, .reconnect_ms = 400 };
  return o;
}

static void run_close(struct run *r) {
  hf_inv_free(r->inv);
  hf_state_close(r->st);
  memset(r, 0, sizeof *r);
}

/* Runs o quietly (stdout to a file), returns the exit code; the rollout id into r->id. */
static int go(struct run *r, struct hf_rollout_opts *o) {
  char p[512];
  snprintf(p, sizeof p, "%s/out.txt", dir);
  fflush(stdout);
  int saved = dup(1);
  FILE *f = fopen(p, "a");
  dup2(fileno(f), 1);
  r->rc = hf_rollout_run_on(o, &fake_port);
  fflush(stdout);
  dup2(saved, 1);
  close(saved);
  fclose(f);
  if (!r->id[0]) hf_state_rollout_latest(r->st, r->id, sizeof r->id);
  return r->rc;
}

static const char *rollout_status(struct run *r) {
  static char buf[64];
  json_t *j = hf_state_rollout_get(r->st, r->id);
  snprintf(buf, sizeof buf, "%s", j ? json_string_value(json_object_get(j, "status")) : "?");
  json_decref(j);
  return buf;
}

static json_t *host_row(struct run *r, const char *name) {
  json_t *rows = hf_state_hosts(r->st, r->id), *row, *out = NULL;
  size_t i;
  json_array_foreach(rows, i, row)
    if (!strcmp(json_string_value(json_object_get(row, "host")), name)) out = json_incref(row);
  json_decref(rows);
  return out;
}

static const char *host_status(struct run *r, int i) {
  static char buf[8][64];
  json_t *row = host_row(r, fh[i].name);
  snprintf(buf[i % 8], sizeof buf[0], "%s", row ? json_string_value(json_object_get(row, "status")) : "?");
  json_decref(row);
  return buf[i % 8];
}

static bool has_downtime(struct run *r, int i) {
  json_t *row = host_row(r, fh[i].name);
  bool d = json_is_integer(json_object_get(row, "downtime_ms"));
  json_decref(row);
  return d;
}

static int total_stale(void) {
  int n = 0;
  for (int i = 0; i < nfh; i++) n += fh[i].stale;
  return n;
}

/* ---- scenarios --------------------------------------------------------------------- */

static void t_stages(void) {
  struct run r = { 0 };
  fleet(4);
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,100%";
  CHECK(go(&r, &o) == HF_EXIT_OK, "rc %d", r.rc);
  CHECK(!strcmp(rollout_status(&r), "done"), "%s", rollout_status(&r));
  for (int i = 0; i < 4; i++) {
    CHECK(!strcmp(host_status(&r, i), "upgraded"), "%s %s", fh[i].name, host_status(&r, i));
    CHECK(has_downtime(&r, i), "%s downtime", fh[i].name);
    for (int s = 0; s < ST__COUNT; s++) CHECK(fh[i].runs[s] == 1, "%s ran %s %d times", fh[i].name, hr_step(s)->name, fh[i].runs[s]);
  }
  for (int i = 1; i < 4; i++)
    CHECK(fh[i].first_req_seq > fh[0].health_done_seq, "stage 2 host %s started before the canary was healthy", fh[i].name);
  CHECK(total_stale() == 0, "stale %d", total_stale());
  run_close(&r);
}

/* A failure in stage k with budget 0 halts: later stages never connect. */
static void t_budget(void) {
  for (int k = 0; k < 3; k++) {
    for (int kind = 0; kind < 2; kind++) {   /* 0: preflight refuses (failed); 1: health fails (rolled back) */
      struct run r = { 0 };
      fleet(6);
      /* stages "1,3,100%": hub01 | hub02-03 | hub04-06 */
      int victim = k == 0 ? 0 : k == 1 ? 1 : 3;   /* the first host of stage k+1 */
      fh[victim].sc.fail_op = kind ? "health" : "preflight";
      struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
      o.stages_spec = "1,3,100%";
      o.parallel = 1;
      go(&r, &o);
      CHECK(r.rc == HF_EXIT_FAIL, "stage %d kind %d: rc %d", k + 1, kind, r.rc);
      CHECK(!strcmp(rollout_status(&r), "halted"), "stage %d: %s", k + 1, rollout_status(&r));
      CHECK(!strcmp(host_status(&r, victim), kind ? "rolled_back" : "failed"), "victim %s", host_status(&r, victim));
      /* --parallel 1: every host after the victim, of its own stage or a later one */
      for (int i = victim + 1; i < 6; i++) {
        CHECK(fh[i].opens == 0, "stage %d halt: %s was connected after the budget was exceeded", k + 1, fh[i].name);
        CHECK(!strcmp(host_status(&r, i), "pending"), "%s %s", fh[i].name, host_status(&r, i));
      }
      if (kind) CHECK(fh[victim].runs[ST__COUNT] == 1, "rollback ran %d times", fh[victim].runs[ST__COUNT]);
      CHECK(total_stale() == 0, "stale %d", total_stale());
      run_close(&r);
    }
  }
}

/* Soak: a host lost during its re-check and unreachable after: the rollout
 * ends within the reconnect deadline, records the truth, never wedges. */
static void t_soak_lost(void) {
  struct run r = { 0 };
  fleet(3);
  fh[0].sc.recheck = 2;
  fh[0].sc.unreachable_after_loss = true;
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,100%";
  o.soak_ms = 20;
  go(&r, &o);
  CHECK(r.rc == HF_EXIT_ATTENTION, "rc %d", r.rc);
  CHECK(!strcmp(rollout_status(&r), "halted"), "%s", rollout_status(&r));
  CHECK(!strcmp(host_status(&r, 0), "needs_attention"), "%s", host_status(&r, 0));
  CHECK(fh[1].opens == 0 && fh[2].opens == 0, "stage 2 ran after a lost re-check");
  run_close(&r);
  /* the same with a healthy re-check: stage 2 runs after the soak */
  fleet(3);
  o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,100%";
  o.soak_ms = 20;
  CHECK(go(&r, &o) == HF_EXIT_OK, "rc %d", r.rc);
  CHECK(fh[0].runs[ST_HEALTH] == 2, "canary health checks %d (upgrade + re-check)", fh[0].runs[ST_HEALTH]);
  CHECK(!strcmp(host_status(&r, 2), "upgraded") && !strcmp(rollout_status(&r), "done"), "%s", rollout_status(&r));
  run_close(&r);
  /* a re-check that fails rolls the host back */
  fleet(2);
  fh[0].sc.recheck = 1;
  o = opts(&r, HF_RM_UPGRADE);
  o.soak_ms = 20;
  go(&r, &o);
  CHECK(!strcmp(host_status(&r, 0), "rolled_back") && fh[1].opens == 0, "%s", host_status(&r, 0));
  run_close(&r);
}

static void t_confirm(void) {
  struct run r = { 0 };
  fleet(3);
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,100%";
  o.confirm = true;
  confirm_answer = 0;
  confirms = 0;
  CHECK(go(&r, &o) == HF_EXIT_OK, "rc %d", r.rc);
  CHECK(confirms == 1 && !strcmp(rollout_status(&r), "paused"), "%d %s", confirms, rollout_status(&r));
  CHECK(!strcmp(host_status(&r, 0), "upgraded") && fh[1].opens == 0 && fh[2].opens == 0, "stage 2 ran without a yes");
  char id[64];
  snprintf(id, sizeof id, "%s", r.id);
  run_close(&r);
  confirm_answer = 1;
  o = opts(&r, HF_RM_RESUME);
  o.rollout_id = id;
  o.confirm = true;
  snprintf(r.id, sizeof r.id, "%s", id);
  CHECK(go(&r, &o) == HF_EXIT_OK, "resume rc %d", r.rc);
  CHECK(!strcmp(rollout_status(&r), "done"), "%s", rollout_status(&r));
  for (int i = 0; i < 3; i++) CHECK(!strcmp(host_status(&r, i), "upgraded") && fh[i].runs[ST_INSTALL] == 1, "%s", fh[i].name);
  run_close(&r);
}

/* Lost mid-change: reconnects and reconciles from the journal, or ends as
 * needs_attention at the deadline. */
static void t_reconnect(void) {
  for (int ran = 0; ran < 2; ran++) {
    struct run r = { 0 };
    fleet(1);
    fh[0].sc.lose_op = "install";
    fh[0].sc.lose_ran = ran;
    struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
    CHECK(go(&r, &o) == HF_EXIT_OK, "lose_ran %d: rc %d", ran, r.rc);
    CHECK(!strcmp(host_status(&r, 0), "upgraded") && fh[0].runs[ST_INSTALL] == 1 && fh[0].opens == 2,
          "lose_ran %d: %s, install ran %d, opens %d", ran, host_status(&r, 0), fh[0].runs[ST_INSTALL], fh[0].opens);
    CHECK(total_stale() == 0, "stale %d", total_stale());
    run_close(&r);
  }
  struct run r = { 0 };
  fleet(1);
  fh[0].sc.lose_op = "migrate";
  fh[0].sc.unreachable_after_loss = true;
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  int64_t t0 = hf_state_now_ms();
  go(&r, &o);
  int64_t took = hf_state_now_ms() - t0;
  CHECK(r.rc == HF_EXIT_ATTENTION && !strcmp(host_status(&r, 0), "needs_attention"), "rc %d %s", r.rc, host_status(&r, 0));
  CHECK(took >= 400 && fh[0].opens >= 3, "gave up after %lld ms and %d opens (deadline 400 ms)", (long long)took, fh[0].opens);
  run_close(&r);
}

/* The controller SIGKILLed at every step boundary (a forked child), then
 * resume: every step runs once, nothing stale, the downtime kept. */
static void t_kill_resume(void) {
  static const char *ops[] = { "preflight", "stage", "backup", "stop", "install", "migrate", "start", "health" };
  for (size_t k = 0; k < sizeof ops / sizeof *ops; k++) {
    for (int when = K_BEFORE; when <= K_AFTER; when++) {
      fleet(2);
      fflush(NULL);
      pid_t pid = fork();
      if (pid == 0) {
        struct run r = { 0 };
        fh[0].sc.kill_op = ops[k];
        fh[0].sc.kill_when = (enum kill_when)when;
        struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
        go(&r, &o);
        _exit(0);
      }
      int ws;
      waitpid(pid, &ws, 0);
      CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 9, "kill at %s/%d: child ended %d", ops[k], when, ws);
      /* the agent's runs so far, from its journal */
      int before[ST__COUNT] = { 0 };
      json_t *j = journal_load(&fh[0]);
      size_t i;
      json_t *rec;
      json_array_foreach(j, i, rec)
        if (!strcmp(json_string_value(json_object_get(rec, "state")), "done"))
          before[step_of(json_string_value(json_object_get(rec, "step")))]++;
      json_decref(j);
      struct run r = { 0 };
      struct hf_rollout_opts o = opts(&r, HF_RM_RESUME);
      hf_state_rollout_latest(r.st, r.id, sizeof r.id);
      o.rollout_id = r.id;
      go(&r, &o);
      CHECK(r.rc == HF_EXIT_OK, "kill at %s/%s: resume rc %d", ops[k], when == K_BEFORE ? "before" : "after", r.rc);
      CHECK(!strcmp(rollout_status(&r), "done"), "kill at %s: %s", ops[k], rollout_status(&r));
      for (int h = 0; h < 2; h++) CHECK(!strcmp(host_status(&r, h), "upgraded"), "kill at %s: %s %s", ops[k], fh[h].name, host_status(&r, h));
      /* stage may run again after a kill at or before it (resume prepares
       * again from preflight; the agent answers "already") */
      for (int s = 1; s < ST__COUNT; s++)
        CHECK(before[s] + fh[0].runs[s] == 1 || (s == ST_STAGE && before[s] + fh[0].runs[s] == 2),
              "kill at %s/%s: %s ran %d times in all", ops[k],
              when == K_BEFORE ? "before" : "after", hr_step(s)->name, before[s] + fh[0].runs[s]);
      CHECK(total_stale() == 0, "kill at %s: %d stale steps sent", ops[k], total_stale());
      CHECK(has_downtime(&r, 0), "kill at %s: hub01's downtime lost", ops[k]);
      run_close(&r);
    }
  }
}

/* Killed during the automatic rollback: resume finishes the rollback and
 * never re-sends the step that failed (issue 13). */
static void t_kill_in_rollback(void) {
  fleet(1);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    struct run r = { 0 };
    fh[0].sc.fail_op = "start";
    fh[0].sc.kill_op = "rollback";
    fh[0].sc.kill_when = K_BEFORE;
    struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
    go(&r, &o);
    _exit(0);
  }
  int ws;
  waitpid(pid, &ws, 0);
  struct run r = { 0 };
  fh[0].sc.fail_op = "start";
  struct hf_rollout_opts o = opts(&r, HF_RM_RESUME);
  hf_state_rollout_latest(r.st, r.id, sizeof r.id);
  o.rollout_id = r.id;
  go(&r, &o);
  CHECK(!strcmp(host_status(&r, 0), "rolled_back"), "%s", host_status(&r, 0));
  CHECK(fh[0].runs[ST__COUNT] == 1 && fh[0].requests == 2, "resume sent %d requests (journal + rollback expected), "
        "rollback ran %d", fh[0].requests, fh[0].runs[ST__COUNT]);
  run_close(&r);
}

/* Ctrl-C: hosts in flight reach a safe point, the rollout is paused (130),
 * resume finishes it with every step run once. */
static void t_interrupt(void) {
  struct run r = { 0 };
  fleet(3);
  fh[0].sc.sigint_op = "install";
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,100%";
  go(&r, &o);
  CHECK(r.rc == 130 && !strcmp(rollout_status(&r), "paused"), "rc %d %s", r.rc, rollout_status(&r));
  CHECK(fh[0].runs[ST_INSTALL] == 1 && fh[0].runs[ST_MIGRATE] == 0, "install %d migrate %d", fh[0].runs[ST_INSTALL],
        fh[0].runs[ST_MIGRATE]);
  CHECK(fh[1].opens == 0, "stage 2 started after Ctrl-C");
  char id[64];
  snprintf(id, sizeof id, "%s", r.id);
  run_close(&r);
  o = opts(&r, HF_RM_RESUME);
  o.rollout_id = id;
  snprintf(r.id, sizeof r.id, "%s", id);
  CHECK(go(&r, &o) == HF_EXIT_OK && !strcmp(rollout_status(&r), "done"), "resume rc %d %s", r.rc, rollout_status(&r));
  for (int s = 0; s < ST__COUNT; s++) CHECK(s == ST_PREFLIGHT || fh[0].runs[s] == 1, "%s ran %d", hr_step(s)->name, fh[0].runs[s]);
  CHECK(has_downtime(&r, 0) && total_stale() == 0, "downtime / stale");
  run_close(&r);
}

/* The agent refuses a stale step: the scheduler treats it as the step's
 * failure (rolled back after the stop), never retries it blindly. */
static void t_stale_refused(void) {
  struct run r = { 0 };
  fleet(1);
  /* a journal that says the hub was only backed up in an earlier rollout
   * and then rolled back: "stop" is fine, but we make "install" stale by a
   * journal whose last done step is "backup" when install comes */
  fh[0].sc.lose_op = "stop";     /* lost after stop ran: the reconnect reads a journal with stop done */
  fh[0].sc.lose_ran = true;
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  go(&r, &o);
  CHECK(!strcmp(host_status(&r, 0), "upgraded") && total_stale() == 0, "%s stale %d", host_status(&r, 0), total_stale());
  run_close(&r);
  /* the agent refuses migrate as stale (its journal disagrees): the step's
   * failure after the stop, so the host rolls back; migrate is not re-sent */
  fleet(1);
  fh[0].sc.fail_op = "migrate";
  fh[0].sc.fail_code = HF_ESTATE;
  o = opts(&r, HF_RM_UPGRADE);
  go(&r, &o);
  CHECK(!strcmp(host_status(&r, 0), "rolled_back") && fh[0].runs[ST__COUNT] == 1 && fh[0].requests == 7,
        "%s, rollback ran %d, %d requests (preflight..migrate, rollback)", host_status(&r, 0), fh[0].runs[ST__COUNT],
        fh[0].requests);
  run_close(&r);
}

/* The rollback's agent finds no journal of the rollout (hubfleet_state_dir
 * changed, or an older hubfleet began it) and answers nothing_to_undo, while
 * the controller recorded a backup: the host needs attention, never
 * "rolled back" (nothing was undone). */
static void t_journal_moved(void) {
  struct run r = { 0 };
  fleet(1);
  fh[0].sc.fail_op = "migrate";
  fh[0].sc.journal_moved = true;
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  go(&r, &o);
  json_t *row = host_row(&r, fh[0].name);
  const char *err = json_string_value(json_object_get(row, "error"));
  CHECK(!strcmp(host_status(&r, 0), "needs_attention"), "%s (nothing undone must not read as rolled back)",
        host_status(&r, 0));
  CHECK(err && strstr(err, "no journal of this rollout") && strstr(err, "/var/backups/hub"), "error: %s",
        err ? err : "(none)");
  json_decref(row);
  run_close(&r);
}

static int steps_run(const struct fhost *h, int from, int to) {
  int n = 0;
  for (int k = from; k <= to; k++) n += h->runs[k];
  return n;
}

/* Later stages prepared while the canary runs: preflight and stage done
 * before the canary is healthy; in its stage a prepared host re-checks
 * (stage again, "already") and goes on; every changing step runs once. */
static void t_pipeline(void) {
  struct run r = { 0 };
  fleet(6);
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,3,100%";
  o.prepare_parallel = 5;
  CHECK(go(&r, &o) == HF_EXIT_OK && !strcmp(rollout_status(&r), "done"), "rc %d %s", r.rc, rollout_status(&r));
  for (int i = 1; i < 6; i++) {
    CHECK(fh[i].stage_done_seq && fh[i].stage_done_seq < fh[0].health_done_seq,
          "%s was not prepared while the canary upgraded", fh[i].name);
    CHECK(!strcmp(host_status(&r, i), "upgraded") && fh[i].runs[ST_PREFLIGHT] == 1 && fh[i].runs[ST_STAGE] == 2,
          "%s: %s, preflight %d, stage %d (prepare + re-check)", fh[i].name, host_status(&r, i),
          fh[i].runs[ST_PREFLIGHT], fh[i].runs[ST_STAGE]);
    for (int k = ST_BACKUP; k < ST__COUNT; k++) CHECK(fh[i].runs[k] == 1, "%s %s ran %d", fh[i].name, hr_step(k)->name, fh[i].runs[k]);
    /* prepared ahead as background work; the re-check in its own stage and every later step not */
    CHECK(fh[i].background[ST_PREFLIGHT] == 1 && fh[i].background[ST_STAGE] == 1,
          "%s: preflight %d, stage %d requests sent as background (1, 1 expected)", fh[i].name,
          fh[i].background[ST_PREFLIGHT], fh[i].background[ST_STAGE]);
    for (int k = ST_BACKUP; k < ST__COUNT; k++) CHECK(fh[i].background[k] == 0, "%s %s sent as background", fh[i].name, hr_step(k)->name);
  }
  for (int k = 0; k < ST__COUNT; k++) CHECK(fh[0].background[k] == 0, "the canary's %s sent as background", hr_step(k)->name);
  CHECK(total_stale() == 0, "stale %d", total_stale());
  run_close(&r);

  /* a prepared host whose env changed before its stage prepares again */
  fleet(2);
  fh[1].change_after_stage = true;
  o = opts(&r, HF_RM_UPGRADE);
  o.prepare_parallel = 1;
  CHECK(go(&r, &o) == HF_EXIT_OK, "rc %d", r.rc);
  CHECK(!strcmp(host_status(&r, 1), "upgraded") && fh[1].runs[ST_PREFLIGHT] == 2 && fh[1].runs[ST_STAGE] == 3,
        "changed host: %s, preflight %d (2 expected), stage %d (3)", host_status(&r, 1), fh[1].runs[ST_PREFLIGHT],
        fh[1].runs[ST_STAGE]);
  run_close(&r);
}

/* A stage-3 host refused while preparing: reported at once (while the
 * canary runs), counted when stage 3 starts (or at once with --stop-early);
 * the halted rollout leaves unreached hosts' hubs untouched, prepared. */
static void t_prepare_refused(void) {
  for (int early = 0; early < 2; early++) {
    struct run r = { 0 };
    fleet(6);
    fh[4].sc.fail_op = "preflight";
    struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
    o.stages_spec = "1,3,100%";
    o.prepare_parallel = 5;
    o.parallel = 1;
    o.stop_early = early;
    go(&r, &o);
    CHECK(r.rc == HF_EXIT_FAIL && !strcmp(rollout_status(&r), "halted"), "early %d: rc %d %s", early, r.rc, rollout_status(&r));
    CHECK(fh[4].failed_seq && fh[4].failed_seq < fh[0].health_done_seq, "early %d: the refusal came after the canary", early);
    CHECK(!strcmp(host_status(&r, 4), "failed"), "early %d: %s", early, host_status(&r, 4));
    CHECK(!strcmp(host_status(&r, 0), "upgraded"), "early %d: canary %s", early, host_status(&r, 0));
    int reached = early ? 1 : 3;     /* stages 1-2 (hub01-03) upgrade unless --stop-early */
    for (int i = 1; i < 6; i++) {
      if (i == 4) continue;
      if (i < reached) {
        CHECK(!strcmp(host_status(&r, i), "upgraded"), "early %d: %s %s", early, fh[i].name, host_status(&r, i));
      } else {
        CHECK(steps_run(&fh[i], ST_BACKUP, ST__COUNT) == 0, "early %d: %s of a halted stage was changed", early, fh[i].name);
        CHECK(!strcmp(host_status(&r, i), "prepared") || !strcmp(host_status(&r, i), "pending"), "early %d: %s %s",
              early, fh[i].name, host_status(&r, i));
      }
    }
    run_close(&r);
  }
}

/* The review's cases (C1-C5). */
static void t_review(void) {
  /* C3: Ctrl-C at the --confirm prompt pauses at once, exit 130 */
  struct run r = { 0 };
  fleet(3);
  struct hf_rollout_opts o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,100%";
  o.confirm = true;
  confirm_answer = -1;
  go(&r, &o);
  CHECK(r.rc == 130 && !strcmp(rollout_status(&r), "paused"), "C3: rc %d %s", r.rc, rollout_status(&r));
  CHECK(steps_run(&fh[1], ST_BACKUP, ST__COUNT) + steps_run(&fh[2], ST_BACKUP, ST__COUNT) == 0, "C3: stage 2 changed");
  run_close(&r);
  confirm_answer = 0;

  /* C2: a pending prompt starts no new preparation */
  fleet(8);
  o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,2,100%";
  o.confirm = true;
  o.prepare_parallel = 1;
  go(&r, &o);
  int prepared = 0;
  for (int i = 1; i < 8; i++) prepared += fh[i].stage_done_seq != 0;
  CHECK(!strcmp(rollout_status(&r), "paused") && prepared < 7, "C2: %d of 7 hosts prepared before the prompt", prepared);
  run_close(&r);

  /* C4: a halt sends no stage to a host being prepared */
  fleet(4);
  fh[0].sc.fail_op = "backup";
  o = opts(&r, HF_RM_UPGRADE);
  o.stages_spec = "1,100%";
  o.prepare_parallel = 1;
  go(&r, &o);
  CHECK(!strcmp(rollout_status(&r), "halted"), "C4: %s", rollout_status(&r));
  for (int i = 1; i < 4; i++)
    CHECK(!fh[i].stage_done_seq || fh[i].stage_done_seq < fh[0].failed_seq, "C4: %s staged after the halt", fh[i].name);
  run_close(&r);

  /* C5: no room for a staged copy: the host goes on unstaged */
  fleet(1);
  fh[0].sc.fail_op = "stage";
  fh[0].sc.fail_code = HF_ENOSPC;
  o = opts(&r, HF_RM_UPGRADE);
  CHECK(go(&r, &o) == HF_EXIT_OK && !strcmp(host_status(&r, 0), "upgraded") && fh[0].runs[ST_INSTALL] == 1,
        "C5: rc %d %s", r.rc, host_status(&r, 0));
  run_close(&r);

  /* C1: a prepared host killed during its re-check: resume prepares it again from preflight */
  fleet(2);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    fh[1].sc.kill_op = "stage";
    fh[1].sc.kill_nth = 2;
    fh[1].sc.kill_when = K_BEFORE;
    o = opts(&r, HF_RM_UPGRADE);
    o.prepare_parallel = 1;
    go(&r, &o);
    _exit(0);
  }
  int ws;
  waitpid(pid, &ws, 0);
  CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 9, "C1: child ended %d", ws);
  int pre_before = 0;
  json_t *j = journal_load(&fh[1]);
  size_t i;
  json_t *rec;
  json_array_foreach(j, i, rec)
    pre_before += !strcmp(json_string_value(json_object_get(rec, "step")), "preflight") &&
                  !strcmp(json_string_value(json_object_get(rec, "state")), "done");
  json_decref(j);
  o = opts(&r, HF_RM_RESUME);
  hf_state_rollout_latest(r.st, r.id, sizeof r.id);
  o.rollout_id = r.id;
  go(&r, &o);
  CHECK(r.rc == HF_EXIT_OK && !strcmp(host_status(&r, 1), "upgraded"), "C1: rc %d %s", r.rc, host_status(&r, 1));
  CHECK(pre_before == 1 && fh[1].runs[ST_PREFLIGHT] == 1, "C1: preflight %d before the kill, %d after (1 and 1)",
        pre_before, fh[1].runs[ST_PREFLIGHT]);
  run_close(&r);
}

/* A dry run changes nothing and folds the fleet's refusals: one line for
 * the refusal three hosts share, with their names. */
static void t_dryrun(void) {
  struct run r = { 0 };
  fleet(4);
  for (int i = 0; i < 3; i++) fh[i].sc.refuse = "needs pydantic>=2 (missing)";
  struct hf_rollout_opts o = opts(&r, HF_RM_DRYRUN);
  o.state = NULL;
  char p[512];
  snprintf(p, sizeof p, "%s/out.txt", dir);
  unlink(p);
  CHECK(go(&r, &o) == HF_EXIT_FAIL, "dry run rc %d", r.rc);
  int changed = 0;
  for (int i = 0; i < 4; i++) changed += steps_run(&fh[i], ST_STAGE, ST__COUNT);
  CHECK(changed == 0, "a dry run sent %d steps past preflight", changed);
  FILE *f = fopen(p, "r");
  char line[1024];
  bool fleet_line = false, folded = false;
  while (f && fgets(line, sizeof line, f)) {
    fleet_line |= strstr(line, "fleet: 4 hosts, 1 ready, 3 refused") != NULL;
    folded |= strstr(line, "requires") && strstr(line, "on 3 of 4 hosts (hub01, hub02, hub03)");
  }
  if (f) fclose(f);
  CHECK(fleet_line && folded, "dry run output not folded (fleet line %d, folded refusal %d): see %s", fleet_line, folded, p);
  run_close(&r);
}

/* The controller's steps are proto's procedure, in its order. */
static void t_op_table(void) {
  int last = 0;
  for (int s = 0; s < ST__COUNT; s++) {
    const struct hf_op *op = hr_step(s);
    /* a numbered step of the procedure, in order; or stage, journaled but not numbered (optional) */
    bool optional = s == ST_STAGE && op && op->step == 0 && op->journaled && !op->changes_hub;
    CHECK(op && (op->step > last || optional), "step %d (%s) out of the procedure's order (%d after %d)", s,
          op ? op->name : "?", op ? op->step : -1, last);
    if (op && !optional) last = op->step;
    CHECK(op && hf_op_by_name(op->name) == op, "step %d not in proto's table", s);
  }
}

/* docs/rollout.md holds the state machine as host.c's tables print it. */
static void t_docs(const char *doc) {
  char *want = NULL;
  size_t wlen = 0;
  FILE *m = open_memstream(&want, &wlen);
  hf_rollout_machine_md(m);
  fclose(m);
  FILE *f = fopen(doc, "r");
  char *text = NULL;
  size_t tlen = 0;
  if (f) {
    fseek(f, 0, SEEK_END);
    tlen = (size_t)ftell(f);
    rewind(f);
    text = calloc(1, tlen + 1);
    if (fread(text, 1, tlen, f) != tlen) tlen = 0;
    fclose(f);
  }
  const char *a = text ? strstr(text, "<!-- machine: begin -->\n") : NULL;
  const char *b = text ? strstr(text, "<!-- machine: end -->") : NULL;
  bool same = a && b && (size_t)(b - a - strlen("<!-- machine: begin -->\n")) == wlen &&
              !memcmp(a + strlen("<!-- machine: begin -->\n"), want, wlen);
  CHECK(same, "%s does not hold the state machine of controller/rollout/rollout_int.h; between "
        "<!-- machine: begin --> and <!-- machine: end --> it should read:\n%s", doc, want);
  free(text);
  free(want);
}

int main(int argc, char **argv) {
  if (argc < 3) { fprintf(stderr, "usage: test-scheduler RULES.json DOCS/rollout.md [SCENARIO]\n"); return 2; }
  rules_path = argv[1];
  snprintf(dir, sizeof dir, "/tmp/hf-sched-XXXXXX");
  if (!mkdtemp(dir)) { perror("mkdtemp"); return 2; }
  setenv("XDG_STATE_HOME", dir, 1);
  struct { const char *name; void (*fn)(void); } t[] = {
    { "stages", t_stages }, { "budget", t_budget }, { "soak", t_soak_lost }, { "confirm", t_confirm },
    { "reconnect", t_reconnect }, { "kill-resume", t_kill_resume }, { "kill-in-rollback", t_kill_in_rollback },
    { "journal-moved", t_journal_moved },
    { "interrupt", t_interrupt }, { "stale", t_stale_refused }, { "pipeline", t_pipeline },
    { "prepare-refused", t_prepare_refused }, { "op-table", t_op_table },
    { "dry-run", t_dryrun }, { "review", t_review },
  };
  for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
    if (argc > 3 && strcmp(argv[3], t[i].name)) continue;   /* one scenario by name */
    int before = failures;
    int64_t t0 = hf_state_now_ms();
    t[i].fn();
    fprintf(stderr, "%-18s %s (%lld ms)\n", t[i].name, failures == before ? "ok" : "FAILED",
            (long long)(hf_state_now_ms() - t0));
  }
  t_docs(argv[2]);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "%s/out.txt", dir);
  if (failures) fprintf(stderr, "(the runs' output: %s)\n", cmd);
  else {
    char *rm[] = { "rm", "-rf", dir, NULL };
    pid_t p = fork();
    if (p == 0) { execvp("rm", rm); _exit(127); }
    waitpid(p, NULL, 0);
  }
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
