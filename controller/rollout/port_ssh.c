/* port_ssh.c: the scheduler's engine interface (struct hf_rollout_port) over
 * the SSH engine, and the operator's --confirm prompt on the terminal. */
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include "hf_controller.h"
#include "rollout_int.h"

static int ssh_engine_new(uv_loop_t *loop, const struct hf_rollout_opts *o, void **eng, char *err, size_t errlen) {
  char agent[4096];
  if (hf_engine_find_agent(o->agent_path, agent, sizeof agent) != 0) {
    snprintf(err, errlen, "cannot find hubfleet-agent (use --agent PATH or HUBFLEET_AGENT)");
    return HF_EXIT_USAGE;
  }
  struct hf_engine_opts eo = {
    .parallel = o->parallel + hf_rollout_prepare_parallel(o), .known_hosts = o->known_hosts, .accept_new = o->accept_new,
    .agent_path = agent, .timeout_ms = o->timeout_ms, .verbose = o->verbose > 1,
  };
  struct hf_engine *e = NULL;
  if (hf_engine_new(loop, &eo, &e, err, errlen) != 0) return HF_EXIT_INTERNAL;
  *eng = e;
  return 0;
}

static void ssh_engine_free(void *eng) { hf_engine_free(eng); }

static int ssh_open(void *eng, const struct hf_host *host, hf_session_ready_cb ready, void *ctx, struct hf_session **out) {
  /* Idle sessions are not kept between steps: a loss while idle shows at
   * the next request, so no lost callback. */
  return hf_session_open(eng, host, ready, NULL, ctx, out);
}

static void ssh_close(struct hf_session *s) { hf_session_close(s, NULL, NULL); }
static bool ssh_ready(const struct hf_session *s) { return hf_session_state(s) == HF_SS_READY; }

static void ssh_stats(void *eng, FILE *f) {
  struct hf_engine_stats s;
  hf_engine_stats(eng, &s);
  fprintf(f, "stats: sessions %" PRIu64 ", retries %" PRIu64 ", uploads %" PRIu64 ", cpu %.3fs, max rss %" PRIu64
          " KiB, longest loop stall %.1f ms (%.1f ms counting waits for a CPU)\n", s.sessions, s.retries,
          s.uploads, (double)s.cpu_us / 1e6, s.maxrss_kb, (double)s.max_stall_ns / 1e6,
          (double)s.max_stall_wall_ns / 1e6);
}

static volatile sig_atomic_t prompt_interrupted;
static void on_prompt_signal(int sig) { (void)sig; prompt_interrupted = 1; }

/* Asks the operator on the terminal whether to go on: 1 yes, 0 no (also
 * without a terminal), -1 Ctrl-C (or SIGTERM) at the prompt. The loop is
 * blocked while it asks, so the signals are caught here, without
 * SA_RESTART, to end the read. */
static int tty_confirm(void *eng, unsigned stage, unsigned nstages, size_t n) {
  (void)eng;
  FILE *tty = fopen("/dev/tty", "r+");
  if (!tty) return 0;
  struct sigaction sa, old_int, old_term;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_prompt_signal;
  sigemptyset(&sa.sa_mask);
  prompt_interrupted = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  fprintf(tty, "Stage %u of %u: %zu host%s. Continue? [y/N] ", stage + 1, nstages, n, n == 1 ? "" : "s");
  fflush(tty);
  char line[32] = "";
  bool got = fgets(line, sizeof line, tty) != NULL;
  sigaction(SIGINT, &old_int, NULL);
  sigaction(SIGTERM, &old_term, NULL);
  if (prompt_interrupted) fputc('\n', tty);
  fclose(tty);
  if (prompt_interrupted) return -1;
  return got && (line[0] == 'y' || line[0] == 'Y');
}

const struct hf_rollout_port hf_rollout_ssh_port = {
  .engine_new = ssh_engine_new,
  .engine_free = ssh_engine_free,
  .open = ssh_open,
  .request = hf_session_request,
  .close = ssh_close,
  .lost = hf_session_lost,
  .ready = ssh_ready,
  .error = hf_session_error,
  .stats = ssh_stats,
  .confirm = tty_confirm,
};

int hf_rollout_run(const struct hf_rollout_opts *o) { return hf_rollout_run_on(o, &hf_rollout_ssh_port); }
