/* engine.c: the engine: many SSH sessions on one libuv loop (hf_engine.h). Its life (new, free), the
 * agent it deploys, and the limits its sessions share: --parallel slots, handshakes per endpoint and
 * in all, uploads at once, and the descriptor budget. */
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

struct endpoint *hf__endpoint_get(struct hf_engine *e, const char *key) {
  uint32_t h = 2166136261u;
  for (const char *p = key; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
  struct endpoint **b = &e->ep[h % EP_BUCKETS];
  for (struct endpoint *ep = *b; ep; ep = ep->next)
    if (!strcmp(ep->key, key)) return ep;
  size_t n = strlen(key);
  struct endpoint *ep = calloc(1, sizeof *ep + n + 1);
  if (!ep) return NULL;
  memcpy(ep->key, key, n + 1);
  ep->next = *b;
  *b = ep;
  return ep;
}

bool hf__hs_can(struct hf_engine *e, struct hf_session *s) {
  return e->hs_inflight < e->o.max_handshakes && s->ep->inflight < e->o.endpoint_handshakes;
}

void hf__hs_take(struct hf_session *s) {
  struct hf_engine *e = s->e;
  s->hs_held = true;
  s->ep->inflight++;
  if (++e->hs_inflight > e->st.peak_handshakes) e->st.peak_handshakes = e->hs_inflight;
}

void hf__hs_release(struct hf_session *s) {
  struct hf_engine *e = s->e;
  if (!s->hs_held) return;
  s->hs_held = false;
  s->ep->inflight--;
  e->hs_inflight--;
  /* Hand freed slots to waiters whose endpoint has room, in arrival order. */
  struct hf_session *w = e->hsq.head;
  while (w && e->hs_inflight < e->o.max_handshakes) {
    struct hf_session *next = w->qnext;
    if (hf__hs_can(e, w)) {
      /* Started from its own zero timer: never run a session's callbacks
       * inside another session's call (this may be hf_session_close). */
      hf__q_remove(&e->hsq, w);
      hf__hs_take(w);
      uv_timer_start(&w->timer, hf__on_timer, 0, 0);
    }
    w = next;
  }
}

/* Upload slots: at most max_uploads agents in flight. A session that finds
 * no agent waits for a slot without a deadline (the wait is ours, not the
 * host's), then probes again: hosts sharing one home (NFS homes, several
 * hubs under one login) find the copy the first upload wrote. */
void hf__up_release(struct hf_session *s) {
  struct hf_engine *e = s->e;
  if (!s->up_held) return;
  s->up_held = false;
  e->up_inflight--;
  if (e->upq.head && e->up_inflight < e->o.max_uploads) {
    struct hf_session *w = e->upq.head;
    hf__q_remove(&e->upq, w);
    w->up_held = true;
    e->up_inflight++;
    uv_timer_start(&w->timer, hf__on_timer, 0, 0);   /* from the loop, not inside the caller */
  }
}

static void on_engine_handle_closed(uv_handle_t *h) {
  struct hf_engine *e = h->data;
  if (--e->open_handles > 0) return;
  hf_kh_free(e->kh);
  if (e->schedstat_fd >= 0) close(e->schedstat_fd);
  free(e);
}

int hf_engine_find_agent(const char *explicit_path, char *buf, size_t len) {
  /* build tree: BUILD/controller/hubfleet beside BUILD/agent/hubfleet-agent;
   * installed: PREFIX/bin/hubfleet and PREFIX/libexec/hubfleet/hubfleet-agent */
  static const char *const rel[] = { "../agent/hubfleet-agent", "../libexec/hubfleet/hubfleet-agent", NULL };
#ifdef HF_AGENT_INSTALLED_PATH
  const char *installed = HF_AGENT_INSTALLED_PATH;
#else
  const char *installed = NULL;
#endif
  return hf_find_shipped_file(explicit_path, "HUBFLEET_AGENT", rel, installed, buf, len);
}

int hf_engine_new(uv_loop_t *loop, const struct hf_engine_opts *opts,
                  struct hf_engine **out, char *err, size_t errlen) {
  *out = NULL;
  struct hf_engine *e = calloc(1, sizeof *e);
  if (!e) return HF_ENOMEM;
  e->loop = loop;
  e->o = *opts;
  if (e->o.parallel <= 0) e->o.parallel = 50;
  if (e->o.endpoint_handshakes <= 0) e->o.endpoint_handshakes = 8;
  if (e->o.max_handshakes <= 0) e->o.max_handshakes = 64;
  if (e->o.max_retries < 0) e->o.max_retries = 10;
  if (e->o.max_uploads <= 0) e->o.max_uploads = 8;
  if (!e->o.timeout_ms) e->o.timeout_ms = 15000;
  if (!e->o.request_timeout_ms) e->o.request_timeout_ms = 60000;
  e->rng = e->o.seed ? e->o.seed : (uv_hrtime() ^ (uint64_t)getpid() << 32);
  const char *home = getenv("HOME");
  snprintf(e->home, sizeof e->home, "%s", home ? home : "");
  const char *sock = getenv("SSH_AUTH_SOCK");
  e->have_agent_sock = sock && *sock;
  hf__fd_budget(e);

  if (!opts->agent_path) {
    snprintf(err, errlen, "no hubfleet-agent to deploy (give --agent PATH or set HUBFLEET_AGENT)");
    free(e);
    return HF_EINVAL;
  }
  int r = hf_payload_load(opts->agent_path, &e->agent, err, errlen);
  if (r < 0) {
    free(e);
    return r == -ENOMEM ? HF_ENOMEM : HF_EIO;
  }
  e->st.agent_bytes = e->agent.bin_len;
  if (hf_deploy_cmd_start(e->agent.hex, e->cmd_start, sizeof e->cmd_start) < 0 ||
      hf_deploy_cmd_upload(e->agent.hex, e->cmd_upload, sizeof e->cmd_upload) < 0) {
    snprintf(err, errlen, "internal: deploy command does not fit");
    hf_payload_free(&e->agent);
    free(e);
    return HF_EINVAL;
  }
  if (!(e->kh = hf_kh_new())) {
    snprintf(err, errlen, "out of memory");
    hf_payload_free(&e->agent);
    free(e);
    return HF_ENOMEM;
  }
  e->metrics = uv_loop_configure(loop, UV_METRICS_IDLE_TIME) == 0;
  e->schedstat_fd = open("/proc/thread-self/schedstat", O_RDONLY | O_CLOEXEC);
  uv_check_init(loop, &e->check);
  e->check.data = e;
  uv_check_start(&e->check, hf__on_check);
  uv_unref((uv_handle_t *)&e->check);
  uv_prepare_init(loop, &e->prepare);
  e->prepare.data = e;
  uv_prepare_start(&e->prepare, hf__on_prepare);
  uv_unref((uv_handle_t *)&e->prepare);
  uv_idle_init(loop, &e->idle);
  e->idle.data = e;
  e->open_handles = 3;
  *out = e;
  return 0;
}

void hf_engine_free(struct hf_engine *e) {
  if (!e) return;
  uv_check_stop(&e->check);
  uv_prepare_stop(&e->prepare);
  uv_close((uv_handle_t *)&e->prepare, on_engine_handle_closed);
  uv_close((uv_handle_t *)&e->check, on_engine_handle_closed);
  uv_idle_stop(&e->idle);
  uv_close((uv_handle_t *)&e->idle, on_engine_handle_closed);
  for (size_t i = 0; i < EP_BUCKETS; i++)
    for (struct endpoint *ep = e->ep[i], *n; ep; ep = n) { n = ep->next; free(ep); }
  for (struct authkey *k = e->keys, *n; k; k = n) { n = k->next; ssh_key_free(k->key); free(k); }
  hf_payload_free(&e->agent);
  hf__jump_free_all(e);
  /* e is freed when its check and prepare handles have closed (libuv close callbacks). */
}

const char *hf_engine_agent_sha256(const struct hf_engine *e) { return e->agent.hex; }

/* Gives free --parallel slots to queued sessions; each starts from its own
 * zero timer, so no callback runs inside the caller (open or close). */
void hf__slots_refill(struct hf_engine *e) {
  int cap = e->o.parallel < e->fd_slots ? e->o.parallel : e->fd_slots;
  while (e->active < cap && e->slotq.head) {
    struct hf_session *s = e->slotq.head;
    hf__q_remove(&e->slotq, s);
    s->slot_held = true;
    e->active++;
    uv_timer_start(&s->timer, hf__on_timer, 0, 0);
  }
}

/* The descriptors the sessions may use: the soft RLIMIT_NOFILE, raised up
 * to the hard limit when --parallel needs it (as OpenSSH's sshd and most
 * servers do); when even that is too low, fewer sessions run at once, with
 * one notice, rather than hosts failing with EMFILE. */
void hf__fd_budget(struct hf_engine *e) {
  /* Per session: its socket; the other end of a socketpair behind a
   * bastion; libssh's own socket to ssh-agent while it authenticates. */
  int per = 1 + (e->jump_seen ? 1 : 0) + (e->have_agent_sock ? 1 : 0);
  long need = (long)e->o.parallel * per + FD_RESERVE;
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) { e->fd_limit = 1024; }
  else {
    if (rl.rlim_cur != RLIM_INFINITY && (long)rl.rlim_cur < need) {
      rlim_t want = (rlim_t)need;
      if (rl.rlim_max != RLIM_INFINITY && want > rl.rlim_max) want = rl.rlim_max;
      if (want > rl.rlim_cur) {
        struct rlimit nl = { want, rl.rlim_max };
        if (setrlimit(RLIMIT_NOFILE, &nl) == 0) rl.rlim_cur = want;
      }
    }
    e->fd_limit = rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur > (rlim_t)1 << 30 ? 1L << 30 : (long)rl.rlim_cur;
  }
  long slots = (e->fd_limit - FD_RESERVE) / per;
  if (slots < 1) slots = 1;
  e->fd_slots = slots > e->o.parallel ? e->o.parallel : (int)slots;
  if (e->fd_slots < e->o.parallel)
    fprintf(stderr, "hubfleet: --parallel %d lowered to %d: the open-file limit is %ld (ulimit -n)%s; "
            "raise it to run %d hosts at once\n", e->o.parallel, e->fd_slots, e->fd_limit,
            per > 1 ? " and each host needs more than one (a bastion, ssh-agent)" : "", e->o.parallel);
}

int hf_engine_parallel(const struct hf_engine *e) { return e->fd_slots; }
