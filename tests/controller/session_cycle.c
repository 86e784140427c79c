/* session_cycle.c: drives the engine API the way the rollout does, against a
 * real host: open, two requests in sequence on one agent, idle until the link
 * dies (lost callback), then reconnect with a new session and ask again.
 * Prints one line per milestone for tests/controller/audit_fleet.sh.
 * usage: session-cycle INVENTORY HOST AGENT */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_proto.h"
#include "hf_inventory.h"
#include "hf_engine.h"

struct run {
  uv_loop_t loop;
  struct hf_engine *e;
  const struct hf_host *h;
  struct hf_session *s;
  int requests_ok;
  int phase;            /* 0: first session, 1: waiting to reconnect, 2: second session */
  int attempts;
  uint64_t idle_since;
  uv_timer_t retry, guard;
  int rc;
};

static void finish(struct run *r, int rc);
static void on_ready(struct hf_session *s, int status, void *ctx);
static void on_lost(struct hf_session *s, int status, void *ctx);

static void closed(struct hf_session *s, void *ctx) { (void)s; (void)ctx; }

static void ask(struct run *r);

static void on_result(struct hf_session *s, int status, const json_t *data, const char *msg, void *ctx) {
  struct run *r = ctx;
  if (status != 0) {
    printf("RESULT-ERROR %s %s\n", hf_err_code(status), msg ? msg : "");
    finish(r, 1);
    return;
  }
  r->requests_ok++;
  printf("RESULT %d envs=%zu state=%s\n", r->requests_ok, json_array_size(json_object_get(data, "envs")),
         hf_sess_state_name(hf_session_state(s)));
  fflush(stdout);
  if (r->phase == 0 && r->requests_ok == 1) { ask(r); return; }   /* the next request, same agent */
  if (r->phase == 0) {
    r->idle_since = uv_hrtime();
    printf("IDLE\n");
    fflush(stdout);
    return;   /* now idle: the test cuts the link */
  }
  printf("RECONNECTED\n");
  hf_session_close(s, closed, r);
  finish(r, 0);
}

static void ask(struct run *r) {
  json_t *args = json_pack("{s:O}", "hub", r->h->hub);
  int rc = hf_session_request(r->s, "facts", args, 0, NULL, on_result, r);
  if (rc) { printf("REQUEST-REFUSED %s\n", hf_err_name(rc)); finish(r, 1); }
  /* A second request while one is in flight is refused, nothing fires. */
  else if (hf_session_request(r->s, "facts", NULL, 0, NULL, on_result, r) != HF_ESTATE) {
    printf("BUSY-NOT-REFUSED\n");
    finish(r, 1);
  }
}

static void try_open(uv_timer_t *t) {
  struct run *r = t->data;
  if (++r->attempts > 40) { printf("RECONNECT-GAVE-UP\n"); finish(r, 1); return; }
  if (hf_session_open(r->e, r->h, on_ready, on_lost, r, &r->s) != 0) { finish(r, 1); return; }
}

static void on_ready(struct hf_session *s, int status, void *ctx) {
  struct run *r = ctx;
  if (status != 0) {
    if (r->phase == 1) {   /* link still down: try again shortly */
      hf_session_close(s, closed, r);
      r->s = NULL;
      uv_timer_start(&r->retry, try_open, 1500, 0);
      return;
    }
    printf("OPEN-FAILED %s %s\n", hf_err_code(status), hf_session_error(s));
    finish(r, 1);
    return;
  }
  if (r->phase == 1) { r->phase = 2; printf("REOPENED after %d attempts\n", r->attempts); }
  printf("READY agent=%s\n", hf_session_agent_version(s));
  fflush(stdout);
  ask(r);
}

static void on_lost(struct hf_session *s, int status, void *ctx) {
  struct run *r = ctx;
  printf("LOST %s after %.1f s idle: %s\n", hf_err_code(status),
         (double)(uv_hrtime() - r->idle_since) / 1e9, hf_session_error(s));
  fflush(stdout);
  hf_session_close(s, closed, r);
  r->s = NULL;
  r->phase = 1;
  uv_timer_start(&r->retry, try_open, 1000, 0);
}

static void on_guard(uv_timer_t *t) {
  printf("GUARD-TIMEOUT\n");
  finish(t->data, 1);
}

static void finish(struct run *r, int rc) {
  r->rc = rc;
  if (r->s && hf_session_state(r->s) != HF_SS_CLOSING) hf_session_close(r->s, closed, r);
  r->s = NULL;
  uv_timer_stop(&r->retry);
  uv_timer_stop(&r->guard);
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc != 4) { fprintf(stderr, "usage: session-cycle INVENTORY HOST AGENT\n"); return 2; }
  struct run r = { .rc = 1 };
  struct hf_inventory *inv;
  struct hf_inv_error ierr;
  if (hf_inv_load(argv[1], &inv, &ierr) != 0) { fprintf(stderr, "inventory: %s\n", ierr.message); return 2; }
  r.h = hf_inv_find(inv, argv[2]);
  if (!r.h) { fprintf(stderr, "no host %s\n", argv[2]); return 2; }
  uv_loop_init(&r.loop);
  struct hf_engine_opts o = { .timeout_ms = 5000, .max_retries = -1, .agent_path = argv[3] };
  char err[256];
  if (hf_engine_new(&r.loop, &o, &r.e, err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 2; }
  uv_timer_init(&r.loop, &r.retry);
  uv_timer_init(&r.loop, &r.guard);
  r.retry.data = r.guard.data = &r;
  uv_timer_start(&r.guard, on_guard, 180000, 0);
  if (hf_session_open(r.e, r.h, on_ready, on_lost, &r, &r.s) != 0) return 2;
  uv_run(&r.loop, UV_RUN_DEFAULT);
  uv_close((uv_handle_t *)&r.retry, NULL);
  uv_close((uv_handle_t *)&r.guard, NULL);
  hf_engine_free(r.e);
  uv_run(&r.loop, UV_RUN_DEFAULT);
  /* Every handle closed: the loop closes clean. */
  int lc = uv_loop_close(&r.loop);
  printf("LOOP-CLOSE %d\n", lc);
  hf_inv_free(inv);
  return lc ? 1 : r.rc;
}
