/* session.c: one host's SSH session as a state machine: the one transition function, errors,
 * phase deadlines, the socket's polling, resolve and connect, the dispatcher that runs the
 * handler of each state (connect.c, deploy.c, channel.c), and the session API (open, request,
 * close). */
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

static const char *const state_names[HF_SS__COUNT] = {
  "queued", "resolving", "waitslot", "connecting", "handshake", "backoff", "auth",
  "chanopen", "exec", "probe", "upwait", "upopen", "upexec", "upload", "upverify", "hello",
  "ready", "busy", "failed", "closing",
};

static void sess_begin(struct hf_session *s);
static void start_connect(struct hf_session *s);
static void sess_free(struct hf_session *s);
static void drive_steps(struct hf_session *s);

const char *hf_sess_state_name(enum hf_sess_state st) {
  return (unsigned)st < HF_SS__COUNT ? state_names[st] : "?";
}

void hf__set_state(struct hf_session *s, enum hf_sess_state st) {
  if (s->state == st) return;
  if (s->e->o.verbose)
    fprintf(stderr, "hubfleet: %s: %s -> %s\n", s->host->name,
            hf_sess_state_name(s->state), hf_sess_state_name(st));
  s->state = st;
}

void hf__q_push(struct squeue *q, struct hf_session *s) {
  s->qnext = NULL;
  s->qprev = q->tail;
  if (q->tail) q->tail->qnext = s; else q->head = s;
  q->tail = s;
  s->queued = true;
}

static struct squeue *sess_queue(struct hf_session *s) {
  return s->state == HF_SS_QUEUED ? &s->e->slotq : s->state == HF_SS_UPWAIT ? &s->e->upq : &s->e->hsq;
}

void hf__q_remove(struct squeue *q, struct hf_session *s) {
  if (s->qprev) s->qprev->qnext = s->qnext; else q->head = s->qnext;
  if (s->qnext) s->qnext->qprev = s->qprev; else q->tail = s->qprev;
  s->qprev = s->qnext = NULL;
  s->queued = false;
}

void hf__set_err(struct hf_session *s, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->err, sizeof s->err, fmt, ap);
  va_end(ap);
  s->errcode = code;
}

/* Appends the remote stderr tail (kept on one line: hf_clean_line) to the
 * error, when there is one. */
void hf__err_add_tail(struct hf_session *s) {
  if (!s->tail_len) return;
  char clean[TAIL_MAX + 1];
  s->tail[s->tail_len] = '\0';
  hf_clean_line(clean, sizeof clean, s->tail);
  size_t n = strlen(s->err);
  snprintf(s->err + n, sizeof s->err - n, " (remote stderr: %s)", clean);
}

void hf__teardown_ssh(struct hf_session *s) {
  hf__runq_remove(s);
  hf__jump_detach(s);
  if (s->poll) {
    /* uv_close stops the poll at once (epoll entry removed) so libssh may
     * close the fd right after; the handle memory goes in its close cb. */
    uv_close((uv_handle_t *)s->poll, (uv_close_cb)free);
    s->poll = NULL;
    s->poll_events = 0;
  }
  if (s->ssh) {
    /* libssh closes the socket itself when the peer dropped the connection
     * or a write failed (its fd is then invalid): never close it twice. */
    if (ssh_get_fd(s->ssh) == SSH_INVALID_SOCKET) s->ssh_fd = -1;
    /* SSH_MSG_DISCONNECT alone ends the session (the given socket is left
     * open) and frees its channels without a word to the host. Freeing an
     * open channel first sent its EOF and CLOSE, each with a flush that
     * read the host's exit-status, EOF and CLOSE: three more packets out
     * and in per host for a connection about to go. The agent sees its
     * stdin end either way. */
    ssh_disconnect(s->ssh);
    s->ch = s->up = NULL;
    ssh_free(s->ssh);
    s->ssh = NULL;
  }
  if (s->ssh_fd >= 0) close(s->ssh_fd);
  if (s->fd >= 0) close(s->fd);
  s->ssh_fd = s->fd = -1;
  hf_frame_decoder_free(&s->dec);
  hf_frame_decoder_init(&s->dec, 0);   /* fresh for a retry */
  free(s->out);
  s->out = NULL;
  s->out_len = s->out_off = 0;
}

/* Fails the session (error already set): tears it down and tells the user
 * through whichever callback is waiting. Must be called from the loop. */
void hf__sess_fail(struct hf_session *s) {
  if (s->closing || s->state == HF_SS_FAILED) return;
  if (s->e->o.verbose) fprintf(stderr, "hubfleet: %s: failed: %s\n", s->host->name, s->err);
  enum hf_sess_state was = s->state;
  if (s->ready_fired) s->lost = true;
  if (s->queued) hf__q_remove(sess_queue(s), s);
  hf__hs_release(s);
  hf__up_release(s);
  hf__teardown_ssh(s);
  hf__deadline(s, 0);
  hf__set_state(s, HF_SS_FAILED);
  if (!s->ready_fired) {
    s->ready_fired = true;
    s->ready_cb(s, s->errcode, s->ctx);
  } else if (was == HF_SS_BUSY && s->res_cb) {
    hf_result_cb cb = s->res_cb;
    s->res_cb = NULL;
    s->ev_cb = NULL;
    cb(s, s->errcode, NULL, s->err, s->req_ctx);
  } else if (!s->lost_fired && s->lost_cb) {
    s->lost_fired = true;
    s->lost_cb(s, s->errcode, s->ctx);
  }
}

void hf__failf(struct hf_session *s, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->err, sizeof s->err, fmt, ap);
  va_end(ap);
  s->errcode = code;
  hf__sess_fail(s);
}

void hf__fail_ssh(struct hf_session *s, int code, const char *what) {
  hf__failf(s, code, "%s: %s: %s", s->host->name, what, s->ssh ? ssh_get_error(s->ssh) : "no session");
}

void hf__deadline(struct hf_session *s, uint64_t ms) {
  if (s->closing) return;
  s->phase_ns = uv_hrtime();
  if (ms) uv_timer_start(&s->timer, hf__on_timer, ms, 0);
  else uv_timer_stop(&s->timer);
}

static const char *phase_words(enum hf_sess_state st) {
  switch (st) {
  case HF_SS_CONNECTING: return "TCP connect";
  case HF_SS_HANDSHAKE: return "SSH banner/key exchange";
  case HF_SS_AUTH: return "SSH authentication";
  case HF_SS_CHANOPEN: case HF_SS_EXEC: case HF_SS_PROBE: return "starting the agent";
  case HF_SS_UPOPEN: case HF_SS_UPEXEC: case HF_SS_UPLOAD: case HF_SS_UPVERIFY: return "agent upload";
  case HF_SS_HELLO: return "agent hello";
  case HF_SS_BUSY: return "request";
  default: return hf_sess_state_name(st);
  }
}

/* Waits for a handshake slot of the session's endpoint (no deadline: the
 * wait is local), or connects at once when one is free. */
static void hs_wait(struct hf_session *s) {
  uv_timer_stop(&s->timer);
  if (hf__hs_can(s->e, s)) { hf__hs_take(s); start_connect(s); }
  else { hf__set_state(s, HF_SS_WAITSLOT); hf__q_push(&s->e->hsq, s); }
}

void hf__on_timer(uv_timer_t *t) {
  struct hf_session *s = t->data;
  if (s->closing) return;
  switch (s->state) {
  case HF_SS_QUEUED:
    if (s->slot_held || s->bare) sess_begin(s);   /* a slot was given to it */
    return;
  case HF_SS_READY:
    /* A bastion's linger after its last host: close it. */
    if (s->bare && s->jump && !s->jump->nusers) hf_session_close(s, hf__jump_closed_cb, s->jump);
    return;
  case HF_SS_WAITSLOT:
    if (s->hs_held) start_connect(s);  /* a handshake slot was given to it */
    return;
  case HF_SS_BACKOFF:
    hs_wait(s);                        /* retry like a new connection */
    return;
  case HF_SS_UPWAIT:
    if (s->up_held) hf__reprobe(s);       /* an upload slot was given to it */
    return;
  default:
    break;
  }
  unsigned ms = s->state == HF_SS_BUSY ? 0 : s->e->o.timeout_ms;
  if (ms) {
    /* The host's silence, not the phase's age: bytes that arrived (even
     * ones a busy loop has not read yet) push the deadline back, up to four
     * times the timeout in one phase. */
    uint64_t now = uv_hrtime(), tmo = (uint64_t)ms * 1000000u;
    uint64_t last = s->progress_ns > s->phase_ns ? s->progress_ns : s->phase_ns;
    if (now - last < tmo && now - s->phase_ns < 4 * tmo) {
      uv_timer_start(&s->timer, hf__on_timer, (tmo - (now - last)) / 1000000u + 1, 0);
      return;
    }
  }
  if (ms)
    hf__failf(s, s->state == HF_SS_CONNECTING ? HF_EUNREACH : HF_ETIMEDOUT,
          "%s: no progress in %s within %u s (host unreachable or link cut?)",
          s->host->name, phase_words(s->state), (ms + 999) / 1000);
  else
    hf__failf(s, HF_ETIMEDOUT, "%s: request %s: no result within the deadline (host or link stalled?)",
          s->host->name, phase_words(s->state));
}

/* Whether this loop iteration has work budget left (see on_poll); the first
 * call of an iteration starts it. */
static bool budget_left(struct hf_engine *e, uint64_t now) {
  if (!e->iter_start_ns) {
    e->iter_start_ns = e->budget_start_ns = now;
    e->iter_runq_ns = hf__runq_wait_ns(e);
    e->iter_cpu_ns = hf__thread_cpu_ns();
    return true;
  }
  return !(now - e->budget_start_ns > ITER_BUDGET_NS && hf__over_budget(e, now));
}

void hf__runq_remove(struct hf_session *s) {
  struct hf_engine *e = s->e;
  if (!s->in_runq) return;
  if (s->rprev) s->rprev->rnext = s->rnext; else e->runq_head = s->rnext;
  if (s->rnext) s->rnext->rprev = s->rprev; else e->runq_tail = s->rprev;
  s->rprev = s->rnext = NULL;
  s->in_runq = false;
}

/* A ready socket past the iteration's budget: its poll stops and the
 * session waits in the engine's run queue, driven first on the next
 * iteration (hf__on_idle). Left polled, the level-triggered socket would
 * fire again on every iteration until its turn came: dozens of useless
 * wakeups per host when key exchanges queue up. (Measured again for issue
 * 18: keeping the poll saved some 17 epoll_ctl per host but cost more CPU
 * on a loaded machine, 2.25-2.61 ms per host against 2.11-2.35, as the run
 * queue stays long and every iteration reports all of it again.) */
static void defer(struct hf_session *s) {
  struct hf_engine *e = s->e;
  e->st.deferred++;
  if (s->poll && s->poll_events) { uv_poll_stop(s->poll); s->poll_events = 0; }
  if (s->in_runq) return;
  s->rnext = NULL;
  s->rprev = e->runq_tail;
  if (e->runq_tail) e->runq_tail->rnext = s; else e->runq_head = s;
  e->runq_tail = s;
  s->in_runq = true;
  if (!uv_is_active((uv_handle_t *)&e->idle)) uv_idle_start(&e->idle, hf__on_idle);
}

/* Before the loop polls: the sessions deferred last iteration, in order,
 * within this iteration's budget. Driving one polls its socket again. */
void hf__on_idle(uv_idle_t *h) {
  struct hf_engine *e = h->data;
  while (e->runq_head && budget_left(e, uv_hrtime())) hf__drive(e->runq_head);
  if (!e->runq_head) uv_idle_stop(&e->idle);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  struct hf_session *s = p->data;
  if (status < 0) {
    /* libuv stopped the handle (POLLERR: the peer reset the connection).
     * Read the socket error ourselves: libssh may not look at it again. */
    s->poll_events = 0;
    int fd = s->ssh ? (int)ssh_get_fd(s->ssh) : s->fd, soerr = 0;
    socklen_t sl = sizeof soerr;
    if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = EBADF;
    if (soerr == 0) { hf__drive(s); return; }
    if (s->state == HF_SS_CONNECTING && soerr != ECONNRESET && hf__next_address(s)) {
      return;
    } else if (s->state == HF_SS_CONNECTING && soerr != ECONNRESET) {
      hf__failf(s, HF_EUNREACH, "%s: connect to %s port %d: %s", s->host->name, s->host->address,
            s->host->port, strerror(soerr));
    } else if ((s->state == HF_SS_CONNECTING || s->state == HF_SS_HANDSHAKE) &&
               s->retries < s->e->o.max_retries) {
      hf__retry_later(s);   /* sshd dropped it before or during banner/kex */
    } else {
      hf__failf(s, s->state <= HF_SS_HANDSHAKE ? HF_EUNREACH : HF_EIO, "%s: connection lost in %s: %s",
            s->host->name, phase_words(s->state), strerror(soerr));
    }
    return;
  }
  /* Work budget per loop iteration: past it, leave the session for the
   * next iteration (defer: first in line then) and let timers and other
   * hosts run; a burst of key exchanges must not stall the loop. The
   * budget is the loop thread's own CPU, not the time the kernel gave the
   * CPU to other processes (hf__over_budget). */
  uint64_t now = uv_hrtime();
  if (events & UV_READABLE) s->progress_ns = now;
  if (!budget_left(s->e, now)) { defer(s); return; }
  hf__drive(s);
}

void hf__rearm(struct hf_session *s) {
  if (!s->poll || s->closing) return;
  int ev = 0;
  if (s->state == HF_SS_CONNECTING) {
    ev = UV_WRITABLE;
  } else if (s->ssh) {
    /* libssh asks for POLLOUT while its socket is connecting and while
     * bytes are queued, and keeps asking until its own poll sees one, which
     * only a read call runs: a session nobody reads for (a lingering
     * bastion) would wake the loop for nothing. Ask only while bytes are
     * really queued, in the key exchange too: its socket's connect needs
     * one POLLOUT, seen by the first ssh_connect, which runs in the very
     * drive that saw the TCP connect complete (hf__in_connecting goes on);
     * after that the stale interest cost a wakeup and two poll changes
     * after each packet the key exchange sent. */
    if ((ssh_get_poll_flags(s->ssh) & SSH_WRITE_PENDING) &&
        (ssh_get_status(s->ssh) & SSH_WRITE_PENDING))
      ev |= UV_WRITABLE;
    /* Waiting on the server is the usual case: always read. */
    ev |= UV_READABLE;
    if (s->state == HF_SS_BUSY && s->out_off < s->out_len && s->ch &&
        ssh_channel_window_size(s->ch) > 0)
      ev |= UV_WRITABLE;
    if (s->state == HF_SS_UPLOAD && s->up && ssh_channel_window_size(s->up) > 0)
      ev |= UV_WRITABLE;
    /* A connected socket is writable, so this comes back on the next
     * iteration to read what libssh may already hold. */
    if (s->kick) ev |= UV_WRITABLE;
    /* An idle bastion connection (lingering without hosts) has nobody to
     * read for: do not spin on it. */
    if (s->bare && s->state == HF_SS_READY && s->jump && !s->jump->nusers)
      ev &= ~UV_READABLE;
    /* Waiting for an upload slot, reading only: sshd's keepalives must be
     * answered, or it drops a session that waits long. */
    if (s->state == HF_SS_UPWAIT) ev = UV_READABLE |
        ((ssh_get_status(s->ssh) & SSH_WRITE_PENDING) ? UV_WRITABLE : 0);
  }
  if (ev != s->poll_events) {
    if (ev) uv_poll_start(s->poll, ev, on_poll);
    else uv_poll_stop(s->poll);
    s->poll_events = ev;
  }
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  struct hf_session *s = req->data;
  s->gai_active = false;
  if (s->closing) {
    uv_freeaddrinfo(res);
    if (s->timer_closed) sess_free(s);   /* the close waited for this request */
    return;
  }
  if (s->state != HF_SS_RESOLVING) {
    /* The resolve's deadline passed first and the session failed: a late
     * answer must not bring it back (ready fired already). */
    uv_freeaddrinfo(res);
    return;
  }
  if (status < 0 || !res) {
    uv_freeaddrinfo(res);
    hf__failf(s, HF_EUNREACH, "%s: cannot resolve %s: %s", s->host->name, s->host->address,
          uv_strerror(status));
    return;
  }
  memcpy(&s->addr, res->ai_addr, res->ai_addrlen);
  s->addrlen = res->ai_addrlen;
  s->nalt = s->alt_idx = 0;
  for (struct addrinfo *ai = res->ai_next; ai && s->nalt < 3; ai = ai->ai_next) {
    if (ai->ai_addrlen > sizeof s->alt[0]) continue;
    memcpy(&s->alt[s->nalt], ai->ai_addr, ai->ai_addrlen);
    s->altlen[s->nalt++] = ai->ai_addrlen;
  }
  uv_freeaddrinfo(res);
  hs_wait(s);
}

static void sess_begin(struct hf_session *s) {
  struct hf_engine *e = s->e;
  const struct hf_host *h = s->host;
  char key[600];
  hf_endpoint_key(h->address, h->port, h->jump, key, sizeof key);
  s->ep = hf__endpoint_get(e, key);
  if (!s->ep) { hf__failf(s, HF_ENOMEM, "%s: out of memory", h->name); return; }
  if (h->jump && *h->jump && !s->bare) {
    /* The bastion resolves and connects to the host; we only need a slot. */
    hs_wait(s);
    return;
  }
  /* Numeric addresses skip the thread pool. */
  struct sockaddr_in *a4 = (struct sockaddr_in *)&s->addr;
  struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&s->addr;
  memset(&s->addr, 0, sizeof s->addr);
  if (inet_pton(AF_INET, h->address, &a4->sin_addr) == 1) {
    a4->sin_family = AF_INET;
    s->addrlen = sizeof *a4;
  } else if (inet_pton(AF_INET6, h->address, &a6->sin6_addr) == 1) {
    a6->sin6_family = AF_INET6;
    s->addrlen = sizeof *a6;
  } else {
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    hf__set_state(s, HF_SS_RESOLVING);
    s->gai.data = s;
    int r = uv_getaddrinfo(e->loop, &s->gai, on_resolved, h->address, NULL, &hints);
    if (r < 0) { hf__failf(s, HF_EUNREACH, "%s: resolve: %s", h->name, uv_strerror(r)); return; }
    s->gai_active = true;
    hf__deadline(s, e->o.timeout_ms);
    return;
  }
  hs_wait(s);
}

static void start_connect(struct hf_session *s) {
  struct hf_engine *e = s->e;
  if (s->host->jump && *s->host->jump && !s->bare) { hf__jump_attach(s); return; }
  if (s->addr.ss_family == AF_INET) ((struct sockaddr_in *)&s->addr)->sin_port = htons((uint16_t)s->host->port);
  else ((struct sockaddr_in6 *)&s->addr)->sin6_port = htons((uint16_t)s->host->port);
  int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) { hf__failf(s, HF_EIO, "%s: socket: %s", s->host->name, strerror(errno)); return; }
  int one = 1, idle = 20, intvl = 5, cnt = 3;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* A session may sit idle between requests (a rollout's soak): kernel
   * keepalives turn a dead link into a socket error within ~35 s, which
   * fails the session and fires its lost callback. */
  setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof idle);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof intvl);
  setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof cnt);
  s->fd = fd;
  hf__set_state(s, HF_SS_CONNECTING);
  if (connect(fd, (struct sockaddr *)&s->addr, s->addrlen) < 0 && errno != EINPROGRESS) {
    hf__failf(s, HF_EUNREACH, "%s: connect to %s port %d: %s", s->host->name, s->host->address,
          s->host->port, strerror(errno));
    return;
  }
  s->poll = malloc(sizeof *s->poll);
  if (!s->poll || uv_poll_init_socket(e->loop, s->poll, fd) < 0) {
    free(s->poll);
    s->poll = NULL;
    hf__failf(s, HF_EIO, "%s: cannot poll its socket", s->host->name);
    return;
  }
  s->poll->data = s;
  s->poll_events = 0;
  hf__deadline(s, e->o.timeout_ms);
  hf__rearm(s);
}

/* A name with several addresses (IPv6 and IPv4, say): when connecting to
 * one fails, tries the next. Returns false when none is left. */
bool hf__next_address(struct hf_session *s) {
  if (s->alt_idx >= s->nalt) return false;
  hf__runq_remove(s);
  if (s->poll) { uv_close((uv_handle_t *)s->poll, (uv_close_cb)free); s->poll = NULL; s->poll_events = 0; }
  if (s->fd >= 0) { close(s->fd); s->fd = -1; }
  memcpy(&s->addr, &s->alt[s->alt_idx], s->altlen[s->alt_idx]);
  s->addrlen = s->altlen[s->alt_idx];
  s->alt_idx++;
  start_connect(s);
  return true;
}

/* The dispatcher: runs the current state's handler until one waits. */
void hf__drive(struct hf_session *s) {
  hf__runq_remove(s);
  s->kick = false;
  bool outer = !s->in_drive;
  s->in_drive = true;
  drive_steps(s);
  if (outer) s->in_drive = false;
}

static void drive_steps(struct hf_session *s) {
  struct hf_engine *e = s->e;
  for (int step = 0; step < DRIVE_MAX_STEPS; step++) {
    if (s->closing) return;
    int r;
    switch (s->state) {
    case HF_SS_CONNECTING: r = hf__in_connecting(s); break;
    case HF_SS_HANDSHAKE:  r = hf__in_handshake(s); break;
    case HF_SS_AUTH:       r = hf__in_auth(s); break;
    case HF_SS_CHANOPEN:   r = hf__in_chanopen(s, s->ch, HF_SS_EXEC); break;
    case HF_SS_EXEC:       r = hf__in_exec(s, s->ch, e->cmd_start, HF_SS_PROBE); break;
    case HF_SS_PROBE:      r = hf__in_probe(s); break;
    case HF_SS_UPOPEN:     r = hf__in_chanopen(s, s->up, HF_SS_UPEXEC); break;
    case HF_SS_UPEXEC:     r = hf__in_exec(s, s->up, e->cmd_upload, HF_SS_UPLOAD); break;
    case HF_SS_UPLOAD:     r = hf__in_upload(s); break;
    case HF_SS_UPVERIFY:   r = hf__in_upverify(s); break;
    case HF_SS_HELLO:      r = hf__in_frames(s); break;
    case HF_SS_READY:      r = s->bare ? hf__jump_service(s->jump) : hf__in_frames(s); break;
    case HF_SS_BUSY:
      r = hf__pump_out(s);
      if (r == 0) r = hf__in_frames(s);
      break;
    case HF_SS_UPWAIT:
      /* Process what came (keepalive requests are answered) and send
       * what is queued; a dead connection fails the session now. */
      if (ssh_blocking_flush(s->ssh, 0) == SSH_ERROR) { hf__fail_ssh(s, HF_EIO, "connection lost while waiting to upload"); return; }
      hf__rearm(s);
      return;
    default:
      return;   /* queued, resolving, waiting, backoff, failed: nothing to do on I/O */
    }
    if (r < 0) return;
    if (r == 1) { hf__rearm(s); return; }
  }
  /* Bounded: come back on the next loop iteration rather than starve others. */
  s->kick = true;
  hf__rearm(s);
}

int hf_session_open(struct hf_engine *e, const struct hf_host *host,
                    hf_session_ready_cb ready, hf_session_lost_cb lost, void *ctx,
                    struct hf_session **out) {
  if (!e || !host || !ready || !host->address || host->port <= 0 || host->port > 65535)
    return HF_EINVAL;
  struct hf_session *s = calloc(1, sizeof *s);
  if (!s) return HF_ENOMEM;
  s->e = e;
  s->host = host;
  s->ready_cb = ready;
  s->lost_cb = lost;
  s->ctx = ctx;
  s->fd = -1;
  s->ssh_fd = -1;
  s->pfd = -1;
  s->next_id = 1;
  hf_frame_decoder_init(&s->dec, 0);
  char khp[PATH_MAX];
  if (!hf_known_hosts_path(host->known_hosts, e->o.known_hosts, e->home, khp, sizeof khp) ||
      !(s->kh_file = strdup(khp))) {
    free(s);
    return HF_EINVAL;
  }
  /* Read now, in the caller (the audit and the rollout's first stage open
   * their sessions before the loop runs), not in a loop callback; a file
   * that cannot be read is reported when the host connects. */
  s->khf = hf_kh_file(e->kh, s->kh_file, khp, sizeof khp);
  if (s->khf && hf_kh_match(s->khf, host->address, host->port, &s->khm) < 0) {
    free(s->kh_file);
    hf_kh_match_free(&s->khm);
    free(s);
    return HF_ENOMEM;
  }
  hf__plan_auth(s);
  uv_timer_init(e->loop, &s->timer);
  s->timer.data = s;
  e->live++;
  e->st.sessions++;
  s->state = HF_SS_QUEUED;
  *out = s;
  if (host->jump && *host->jump && !e->jump_seen) {
    /* Behind a bastion a session holds both ends of a socketpair. */
    e->jump_seen = true;
    hf__fd_budget(e);
  }
  /* Everything starts from the loop so no callback fires inside this call. */
  hf__q_push(&e->slotq, s);
  hf__slots_refill(e);
  return 0;
}

int hf_session_request(struct hf_session *s, const char *op, json_t *args,
                       unsigned timeout_ms, hf_event_cb on_event,
                       hf_result_cb on_result, void *ctx) {
  if (!s || s->closing || s->state != HF_SS_READY || !on_result) { json_decref(args); return HF_ESTATE; }
  if (!hf_op_by_name(op)) { json_decref(args); return HF_EUNKNOWNOP; }
  uint64_t id = s->next_id++;
  json_t *msg = hf_msg_request(id, op, args);   /* steals args */
  if (!msg) return HF_ENOMEM;
  char *buf;
  size_t len;
  int r = hf_frame_encode(msg, &buf, &len);
  json_decref(msg);
  if (r < 0) return r;
  s->out = buf;
  s->out_len = len;
  s->out_off = 0;
  s->req_id = id;
  s->ev_cb = on_event;
  s->res_cb = on_result;
  s->req_ctx = ctx;
  hf__set_state(s, HF_SS_BUSY);
  hf__deadline(s, timeout_ms ? timeout_ms : s->e->o.request_timeout_ms);
  /* The write happens from the loop when the socket is writable; made
   * from the ready or a result callback, in the same drive, which re-arms
   * the poll once when it waits (each change of interest costs libuv one
   * or two epoll_ctl). */
  if (!s->in_drive) hf__rearm(s);
  return 0;
}

static void sess_free(struct hf_session *s) {
  struct hf_engine *e = s->e;
  /* Pending callbacks end as canceled, like libuv's. */
  if (!s->ready_fired) {
    s->ready_fired = true;
    if (!s->errcode) hf__set_err(s, HF_ECANCELED, "%s: canceled", s->host->name);
    s->ready_cb(s, HF_ECANCELED, s->ctx);
  }
  if (s->res_cb) {
    hf_result_cb cb = s->res_cb;
    s->res_cb = NULL;
    cb(s, HF_ECANCELED, NULL, "canceled", s->req_ctx);
  }
  if (s->close_cb) s->close_cb(s, s->close_ctx);
  hf_frame_decoder_free(&s->dec);
  e->live--;
  if (s->bare) e->bare_live--;
  else if (e->bare_live && e->live == e->bare_live) hf__jump_linger_end(e);
  free(s->kh_file);
  hf_kh_match_free(&s->khm);
  free(s);
}

static void on_timer_closed(uv_handle_t *h) {
  struct hf_session *s = h->data;
  s->timer_closed = true;
  if (!s->gai_active) sess_free(s);
}

void hf_session_close(struct hf_session *s, hf_close_cb cb, void *ctx) {
  if (!s || s->closing) return;
  struct hf_engine *e = s->e;
  s->close_cb = cb;
  s->close_ctx = ctx;
  if (s->queued) hf__q_remove(sess_queue(s), s);
  hf__hs_release(s);
  hf__up_release(s);
  hf__teardown_ssh(s);
  hf__set_state(s, HF_SS_CLOSING);
  s->closing = true;
  if (s->gai_active) uv_cancel((uv_req_t *)&s->gai);
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, on_timer_closed);
  if (s->slot_held) {
    s->slot_held = false;
    e->active--;
    hf__slots_refill(e);
  }
}

const struct hf_host *hf_session_host(const struct hf_session *s) { return s->host; }

enum hf_sess_state hf_session_state(const struct hf_session *s) { return s->state; }

const char *hf_session_error(const struct hf_session *s) { return s->err; }

int hf_session_errcode(const struct hf_session *s) { return s->errcode; }

const char *hf_session_agent_version(const struct hf_session *s) { return s->agent_version; }

int hf_session_retries(const struct hf_session *s) { return s->retries; }

bool hf_session_uploaded(const struct hf_session *s) { return s->uploaded; }

bool hf_session_lost(const struct hf_session *s) { return s->lost; }
