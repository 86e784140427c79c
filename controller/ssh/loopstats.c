/* loopstats.c: how the loop itself fares: stalls (wall, own time net of run-queue waits, CPU per
 * iteration) measured from libuv's check and prepare hooks, and hf_engine_stats(). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"

/* Time the loop thread has spent runnable but waiting for a CPU (Linux
 * schedstat, second field), or 0 when the kernel does not say. */
uint64_t hf__runq_wait_ns(struct hf_engine *e) {
  if (e->schedstat_fd < 0) return 0;
  char buf[96];
  ssize_t n = pread(e->schedstat_fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = '\0';
  unsigned long long run = 0, wait = 0;
  if (sscanf(buf, "%llu %llu", &run, &wait) != 2) return 0;
  return wait;
}

void hf__on_check(uv_check_t *c) {
  struct hf_engine *e = c->data;
  uint64_t now = uv_hrtime();
  uint64_t idle = e->metrics ? uv_metrics_idle_time(e->loop) : 0;
  /* Run-queue wait since this iteration's first callback: the kernel kept
   * the (runnable) loop thread off the CPU for other processes. */
  uint64_t rq = e->pre_runq_ns, w = hf__runq_wait_ns(e);
  if (e->iter_start_ns && e->iter_runq_ns && w > e->iter_runq_ns) rq += w - e->iter_runq_ns;
  e->check_runq_ns = w;
  e->pre_runq_ns = 0;
  if (e->last_check_ns) {
    uint64_t span = now - e->last_check_ns, waited = idle - e->last_idle_ns;
    uint64_t busy = span > waited ? span - waited : 0;
    uint64_t own = busy > rq ? busy - rq : 0;
    if (busy > e->st.max_stall_wall_ns) e->st.max_stall_wall_ns = busy;
    if (own > e->st.max_stall_ns) e->st.max_stall_ns = own;
  }
  uint64_t cpu = hf__thread_cpu_ns();
  if (e->last_cpu_ns && cpu - e->last_cpu_ns > e->st.max_stall_cpu_ns)
    e->st.max_stall_cpu_ns = cpu - e->last_cpu_ns;
  e->last_cpu_ns = cpu;
  e->last_check_ns = now;
  e->last_idle_ns = idle;
  e->iter_start_ns = 0;
  e->iter_over = false;
}

uint64_t hf__thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether this iteration has used its work budget (ITER_BUDGET_NS) of the
 * loop thread's own CPU; called once its wall time is past the budget.
 * Counted in wall time, a loaded machine (the kernel giving the CPU to the
 * fleet's sshd while the loop thread was runnable) made the loop leave
 * ready sockets for later on most iterations, and each socket left fired
 * again at once on the next (level-triggered): some 180 wakeups per host
 * for nothing. The budget's start in wall time moves later by what was
 * not CPU, so the clock is read only once per budget's worth of wall time;
 * once over, the iteration stays over. */
bool hf__over_budget(struct hf_engine *e, uint64_t now) {
  if (e->iter_over) return true;
  uint64_t cpu = hf__thread_cpu_ns();
  uint64_t used = e->iter_cpu_ns && cpu >= e->iter_cpu_ns ? cpu - e->iter_cpu_ns : ITER_BUDGET_NS + 1;
  if (used <= ITER_BUDGET_NS) {
    e->budget_start_ns = now - used;
    return false;
  }
  e->iter_over = true;
  return true;
}
/* Before the loop polls: the run-queue wait since the last check (timers,
 * closes) is not the loop's own time either. */
void hf__on_prepare(uv_prepare_t *p) {
  struct hf_engine *e = p->data;
  uint64_t w = hf__runq_wait_ns(e);
  e->pre_runq_ns = w > e->check_runq_ns && e->check_runq_ns ? w - e->check_runq_ns : 0;
}

void hf_engine_stats(struct hf_engine *e, struct hf_engine_stats *st) {
  struct rusage ru;
  *st = e->st;
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    st->cpu_us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
                 (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
    st->maxrss_kb = (uint64_t)ru.ru_maxrss;
  }
}
