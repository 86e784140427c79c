/* test_engine.c: the engine's session life cycle on a real loop, without a
 * fleet: a session that failed stays failed until closed, whatever arrives
 * late (here: a name resolution that answers after the phase deadline). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hf_proto.h"
#include "hf_engine.h"

static int failures;
#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

struct counts {
  int ready, lost, closed, ready_status;
  enum hf_sess_state state_before_close;
  bool lost_flag;
  struct hf_session *s;
};

static void on_ready(struct hf_session *s, int status, void *ctx) {
  struct counts *c = ctx;
  c->ready++;
  c->ready_status = status;
  (void)s;
}
static void on_lost(struct hf_session *s, int status, void *ctx) {
  struct counts *c = ctx;
  c->lost++;
  (void)s; (void)status;
}
static void on_closed(struct hf_session *s, void *ctx) {
  struct counts *c = ctx;
  c->closed++;
  (void)s;
}

/* Occupies the only thread-pool thread, so the resolve waits behind it. */
static void busy_work(uv_work_t *w) { (void)w; usleep(400 * 1000); }
static void busy_done(uv_work_t *w, int status) { (void)w; (void)status; }

static void close_later(uv_timer_t *t) {
  struct counts *c = t->data;
  c->state_before_close = hf_session_state(c->s);
  c->lost_flag = hf_session_lost(c->s);
  hf_session_close(c->s, on_closed, c);
  uv_close((uv_handle_t *)t, NULL);
}

static void test_failed_stays_failed(const char *agent) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  uv_work_t work;
  uv_queue_work(&loop, &work, busy_work, busy_done);
  struct hf_engine_opts o = { .max_retries = 0, .timeout_ms = 50, .agent_path = agent };
  struct hf_engine *e;
  char err[512];
  CHECK(hf_engine_new(&loop, &o, &e, err, sizeof err) == 0);
  struct hf_host h = { .name = "late-dns", .address = "localhost", .port = 1, .known_hosts = "/dev/null" };
  struct counts c = { 0 };
  CHECK(hf_session_open(e, &h, on_ready, on_lost, &c, &c.s) == 0);
  uv_timer_t t;
  uv_timer_init(&loop, &t);
  uv_update_time(&loop);   /* the loop's clock is as old as uv_loop_init: start from now */
  t.data = &c;
  uv_timer_start(&t, close_later, 800, 0);   /* well after the late answer */
  uv_run(&loop, UV_RUN_DEFAULT);
  hf_engine_free(e);
  uv_run(&loop, UV_RUN_DEFAULT);
  CHECK(uv_loop_close(&loop) == 0);
  CHECK(c.ready == 1);
  CHECK(c.ready_status == HF_ETIMEDOUT);
  CHECK(c.lost == 0);                              /* never revived, never "lost" */
  CHECK(c.state_before_close == HF_SS_FAILED);
  CHECK(!c.lost_flag);                             /* it failed before ready: not lost */
  CHECK(c.closed == 1);
}

int main(void) {
  setenv("UV_THREADPOOL_SIZE", "1", 1);
  /* A small "agent" (any regular file): hashing a big one under valgrind
   * would take longer than the deadlines this test plays with. */
  char agent[] = "/tmp/hf-test-engine-XXXXXX";
  int fd = mkstemp(agent);
  if (fd < 0 || write(fd, "#!/bin/true\n", 12) != 12) { perror("mkstemp"); return 1; }
  close(fd);
  test_failed_stays_failed(agent);
  unlink(agent);
  if (failures) { fprintf(stderr, "%d checks failed\n", failures); return 1; }
  printf("ok\n");
  return 0;
}
