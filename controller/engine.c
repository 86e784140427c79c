/* engine.c: per-host state machines driving non-blocking libssh sessions on
 * one libuv loop: connect with limits and retries, host key check, auth,
 * agent deployment, hello, then framed requests. See hf_engine.h. */
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

#include <libssh/libssh.h>

#include "hf_proto.h"
#include "hf_sha256.h"
#include "hf_engine.h"
#include "hf_ctl_util.h"
#include "hf_knownhosts.h"
#include "hf_payload.h"
#include "hf_sanitize.h"

#define READ_CHUNK   16384u
#define UPLOAD_CHUNK 32768u
#define BACKOFF_BASE_MS 200u
#define BACKOFF_CAP_MS  3000u
#define TAIL_MAX 240            /* bytes of remote stderr kept for messages */
#define DRIVE_MAX_STEPS 64      /* state steps per wakeup: a bound, not a budget */
#define EP_BUCKETS 1024
#define ITER_BUDGET_NS (2u * 1000u * 1000u)   /* socket work per loop iteration */
#define FD_RESERVE 32           /* descriptors not for sessions: stdio, libuv, state db, files */

/* ---- small intrusive queue of sessions ---------------------------------- */
struct squeue { struct hf_session *head, *tail; };

struct endpoint {
  struct endpoint *next;
  int inflight;
  char key[];
};

struct authkey {
  struct authkey *next;
  ssh_key key;        /* NULL when the file could not be imported */
  char path[];
};

struct jump;

struct hf_engine {
  uv_loop_t *loop;
  struct hf_engine_opts o;
  struct hf_payload agent;      /* the agent binary, its SHA-256 and its gzip stream */
  char cmd_start[2048];
  char cmd_upload[2048];
  char home[PATH_MAX];
  int active;                   /* sessions holding a --parallel slot */
  long fd_limit;                /* RLIMIT_NOFILE's soft limit, raised toward the hard one at start */
  bool jump_seen;               /* a host behind a bastion: 2 descriptors per session */
  int fd_slots;                 /* sessions the descriptor limit allows at once */
  struct squeue slotq;          /* sessions waiting for a slot */
  struct squeue hsq;            /* sessions waiting for a handshake slot */
  int hs_inflight;
  struct squeue upq;            /* sessions waiting for an upload slot */
  int up_inflight;
  struct endpoint *ep[EP_BUCKETS];
  struct authkey *keys;         /* private keys imported once, by path */
  bool have_agent_sock;
  uv_check_t check;
  uint64_t last_check_ns, last_idle_ns, last_cpu_ns;
  uint64_t iter_start_ns;       /* first socket callback of this iteration, 0 = none yet */
  int schedstat_fd;             /* the loop thread's /proc schedstat, -1 = not available */
  uint64_t iter_runq_ns;        /* its run-queue wait at the iteration's first callback */
  uint64_t check_runq_ns;       /* ... at the last check (end of an iteration) */
  uint64_t pre_runq_ns;         /* waits between that check and the next poll */
  uv_prepare_t prepare;
  int open_handles;             /* check and prepare: e is freed when both have closed */
  bool metrics;
  uint64_t rng;
  int live;                     /* sessions not yet freed */
  int bare_live;                /* of which bastion connections */
  struct jump *jumps;           /* bastions in use (ProxyJump), by spec */
  struct hf_kh *kh;             /* known_hosts files, each read once */
  struct hf_engine_stats st;
};

enum auth_kind { AUTH_AGENT, AUTH_KEY };
struct auth_method { enum auth_kind kind; ssh_key key; const char *what; };

struct hf_session {
  struct hf_engine *e;
  const struct hf_host *host;
  enum hf_sess_state state;
  struct hf_session *qprev, *qnext;
  bool queued;                  /* in slotq, hsq or upq (which one: the state) */
  bool slot_held, hs_held, up_held;
  uint64_t progress_ns;         /* when the host last sent bytes (phase deadlines
                                   measure the host's silence, not our queue) */
  uint64_t phase_ns;            /* when the current phase's deadline was armed */
  struct endpoint *ep;

  hf_session_ready_cb ready_cb;
  hf_session_lost_cb lost_cb;
  void *ctx;
  bool ready_fired, lost_fired;
  bool lost;                    /* failed after ready: the connection or the agent is gone */

  uv_timer_t timer;
  uv_getaddrinfo_t gai;
  bool gai_active;
  struct sockaddr_storage addr; /* the address being tried */
  socklen_t addrlen;
  struct sockaddr_storage alt[3]; /* further addresses of the name, tried in turn */
  socklen_t altlen[3];
  int nalt, alt_idx;
  int fd;                       /* ours until handed to libssh */
  int ssh_fd;                   /* the socket handed to libssh (SSH_OPTIONS_FD): libssh
                                   never closes a socket it was given, so we do */
  uv_poll_t *poll;              /* one per connection attempt, freed in its close cb */
  int poll_events;

  ssh_session ssh;
  ssh_channel ch;               /* the agent channel (probe, then agent) */
  ssh_channel up;               /* the upload channel */
  char *kh_file;                /* its known_hosts file (a few bytes, not PATH_MAX: a
                                   session exists per host from the start) */
  struct hf_khfile *khf;        /* kh_file, loaded (at open, else at connect) */
  struct hf_kh_match khm;       /* its lines naming this host */
  struct auth_method auth[6];
  int nauth, auth_idx;
  int retries;
  bool uploaded;
  size_t up_off;
  char line[160];               /* first bytes of a command's stdout (a verdict, a path) */
  size_t line_len;
  char tail[TAIL_MAX + 1];      /* last bytes of remote stderr */
  size_t tail_len;
  struct hf_frame_decoder dec;
  char *out;                    /* frame bytes not yet written (new) */
  size_t out_len, out_off;

  uint64_t next_id, req_id;
  hf_event_cb ev_cb;
  hf_result_cb res_cb;
  void *req_ctx;

  char agent_version[64];
  char err[768];
  int errcode;

  hf_close_cb close_cb;
  void *close_ctx;
  bool closing, timer_closed;
  bool kick;                    /* stopped early with data maybe buffered in libssh: wake up again */

  /* ProxyJump. A bare session is a bastion's own connection: it stops
   * after authentication and carries the forwarded channels of the hosts
   * behind it. A host behind a bastion has jump set; its SSH session runs
   * over one end of a socketpair, pumped to and from its forward channel. */
  bool bare;
  struct jump *jump;            /* the bastion (bare: the one it serves) */
  struct hf_session *jnext, *jprev; /* in jump->users */
  bool jlinked;
  /* Bare: packets libssh has read from the bastion's socket, and how many
   * of them every host behind it has been pumped after. Any libssh call on
   * the shared session may read packets for other hosts' channels (data,
   * EOF, window adjusts, open confirmations) and leave the socket empty, so
   * no poll event would ever wake those hosts. */
  struct ssh_counter_struct rx;
  uint64_t rx_seen;
  ssh_channel fwd;              /* direct-tcpip channel on the bastion's session */
  bool fwd_open;
  int pfd;                      /* our end of the socketpair, -1 when none */
  uv_poll_t *ppoll;             /* poll of pfd */
  int ppoll_events;
  char *pin, *pout;             /* bastion->host and host->bastion bytes in transit (new) */
  size_t pin_len, pin_off, pout_len, pout_off;
  bool pin_eof, pout_eof;
};

/* A bastion shared by every host whose hubfleet_jump names it. */
struct jump {
  struct jump *next;
  struct hf_engine *e;
  struct hf_host host;          /* synthesised: address, port, user, key, known_hosts */
  struct hf_session *sess;      /* its bare session, NULL when not connected */
  enum { J_IDLE, J_CONNECTING, J_READY, J_FAILED } st;
  char err[600];
  int errcode;
  struct hf_session *users;     /* hosts waiting for it or forwarding through it */
  int nusers;
  char spec[];
};

static const char *const state_names[HF_SS__COUNT] = {
  "queued", "resolving", "waitslot", "connecting", "handshake", "backoff", "auth",
  "chanopen", "exec", "probe", "upwait", "upopen", "upexec", "upload", "upverify", "hello",
  "ready", "busy", "failed", "closing",
};

const char *hf_sess_state_name(enum hf_sess_state st) {
  return (unsigned)st < HF_SS__COUNT ? state_names[st] : "?";
}

static void drive(struct hf_session *s);
static void rearm(struct hf_session *s);
static void start_connect(struct hf_session *s);
static void hs_release(struct hf_session *s);
static void up_release(struct hf_session *s);

/* ---- the one transition function --------------------------------------- */
static void set_state(struct hf_session *s, enum hf_sess_state st) {
  if (s->state == st) return;
  if (s->e->o.verbose)
    fprintf(stderr, "hubfleet: %s: %s -> %s\n", s->host->name,
            hf_sess_state_name(s->state), hf_sess_state_name(st));
  s->state = st;
}

/* Arms the phase deadline (0 stops it). */
static void deadline(struct hf_session *s, uint64_t ms);

static void q_push(struct squeue *q, struct hf_session *s) {
  s->qnext = NULL;
  s->qprev = q->tail;
  if (q->tail) q->tail->qnext = s; else q->head = s;
  q->tail = s;
  s->queued = true;
}
static struct squeue *sess_queue(struct hf_session *s) {
  return s->state == HF_SS_QUEUED ? &s->e->slotq : s->state == HF_SS_UPWAIT ? &s->e->upq : &s->e->hsq;
}
static void q_remove(struct squeue *q, struct hf_session *s) {
  if (s->qprev) s->qprev->qnext = s->qnext; else q->head = s->qnext;
  if (s->qnext) s->qnext->qprev = s->qprev; else q->tail = s->qprev;
  s->qprev = s->qnext = NULL;
  s->queued = false;
}

/* ---- errors -------------------------------------------------------------- */
static void set_err(struct hf_session *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(struct hf_session *s, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->err, sizeof s->err, fmt, ap);
  va_end(ap);
  s->errcode = code;
}

/* Appends the remote stderr tail (kept on one line: hf_clean_line) to the
 * error, when there is one. */
static void err_add_tail(struct hf_session *s) {
  if (!s->tail_len) return;
  char clean[TAIL_MAX + 1];
  s->tail[s->tail_len] = '\0';
  hf_clean_line(clean, sizeof clean, s->tail);
  size_t n = strlen(s->err);
  snprintf(s->err + n, sizeof s->err - n, " (remote stderr: %s)", clean);
}

/* Stops polling and frees libssh objects (closes the socket). */
static void jump_detach(struct hf_session *s);

static void teardown_ssh(struct hf_session *s) {
  jump_detach(s);
  if (s->poll) {
    /* uv_close stops the poll at once (epoll entry removed) so libssh may
     * close the fd right after; the handle memory goes in its close cb. */
    uv_close((uv_handle_t *)s->poll, (uv_close_cb)free);
    s->poll = NULL;
    s->poll_events = 0;
  }
  if (s->up) { ssh_channel_free(s->up); s->up = NULL; }
  if (s->ch) { ssh_channel_free(s->ch); s->ch = NULL; }
  if (s->ssh) {
    /* libssh closes the socket itself when the peer dropped the connection
     * or a write failed (its fd is then invalid): never close it twice. */
    if (ssh_get_fd(s->ssh) == SSH_INVALID_SOCKET) s->ssh_fd = -1;
    ssh_disconnect(s->ssh);   /* sends SSH_MSG_DISCONNECT; leaves a given socket open */
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
static void fail(struct hf_session *s) {
  if (s->closing || s->state == HF_SS_FAILED) return;
  if (s->e->o.verbose) fprintf(stderr, "hubfleet: %s: failed: %s\n", s->host->name, s->err);
  enum hf_sess_state was = s->state;
  if (s->ready_fired) s->lost = true;
  if (s->queued) q_remove(sess_queue(s), s);
  hs_release(s);
  up_release(s);
  teardown_ssh(s);
  deadline(s, 0);
  set_state(s, HF_SS_FAILED);
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

static void failf(struct hf_session *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void failf(struct hf_session *s, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(s->err, sizeof s->err, fmt, ap);
  va_end(ap);
  s->errcode = code;
  fail(s);
}

static void fail_ssh(struct hf_session *s, int code, const char *what) {
  failf(s, code, "%s: %s: %s", s->host->name, what, s->ssh ? ssh_get_error(s->ssh) : "no session");
}

/* ---- limits ------------------------------------------------------------- */
static struct endpoint *endpoint_get(struct hf_engine *e, const char *key) {
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

static bool hs_can(struct hf_engine *e, struct hf_session *s) {
  return e->hs_inflight < e->o.max_handshakes && s->ep->inflight < e->o.endpoint_handshakes;
}

static void hs_take(struct hf_session *s) {
  struct hf_engine *e = s->e;
  s->hs_held = true;
  s->ep->inflight++;
  if (++e->hs_inflight > e->st.peak_handshakes) e->st.peak_handshakes = e->hs_inflight;
}

static void on_timer(uv_timer_t *t);
static void reprobe(struct hf_session *s);

static void hs_release(struct hf_session *s) {
  struct hf_engine *e = s->e;
  if (!s->hs_held) return;
  s->hs_held = false;
  s->ep->inflight--;
  e->hs_inflight--;
  /* Hand freed slots to waiters whose endpoint has room, in arrival order. */
  struct hf_session *w = e->hsq.head;
  while (w && e->hs_inflight < e->o.max_handshakes) {
    struct hf_session *next = w->qnext;
    if (hs_can(e, w)) {
      /* Started from its own zero timer: never run a session's callbacks
       * inside another session's call (this may be hf_session_close). */
      q_remove(&e->hsq, w);
      hs_take(w);
      uv_timer_start(&w->timer, on_timer, 0, 0);
    }
    w = next;
  }
}

/* Upload slots: at most max_uploads agents in flight. A session that finds
 * no agent waits for a slot without a deadline (the wait is ours, not the
 * host's), then probes again: hosts sharing one home (NFS homes, several
 * hubs under one login) find the copy the first upload wrote. */
static void up_release(struct hf_session *s) {
  struct hf_engine *e = s->e;
  if (!s->up_held) return;
  s->up_held = false;
  e->up_inflight--;
  if (e->upq.head && e->up_inflight < e->o.max_uploads) {
    struct hf_session *w = e->upq.head;
    q_remove(&e->upq, w);
    w->up_held = true;
    e->up_inflight++;
    uv_timer_start(&w->timer, on_timer, 0, 0);   /* from the loop, not inside the caller */
  }
}

/* ---- deadlines ---------------------------------------------------------- */

static void deadline(struct hf_session *s, uint64_t ms) {
  if (s->closing) return;
  s->phase_ns = uv_hrtime();
  if (ms) uv_timer_start(&s->timer, on_timer, ms, 0);
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

static void slots_refill(struct hf_engine *e);
static void fd_budget(struct hf_engine *e);
static void sess_begin(struct hf_session *s);
static void jump_closed_cb(struct hf_session *js, void *ctx);

/* Waits for a handshake slot of the session's endpoint (no deadline: the
 * wait is local), or connects at once when one is free. */
static void hs_wait(struct hf_session *s) {
  uv_timer_stop(&s->timer);
  if (hs_can(s->e, s)) { hs_take(s); start_connect(s); }
  else { set_state(s, HF_SS_WAITSLOT); q_push(&s->e->hsq, s); }
}

static void on_timer(uv_timer_t *t) {
  struct hf_session *s = t->data;
  if (s->closing) return;
  switch (s->state) {
  case HF_SS_QUEUED:
    if (s->slot_held || s->bare) sess_begin(s);   /* a slot was given to it */
    return;
  case HF_SS_READY:
    /* A bastion's linger after its last host: close it. */
    if (s->bare && s->jump && !s->jump->nusers) hf_session_close(s, jump_closed_cb, s->jump);
    return;
  case HF_SS_WAITSLOT:
    if (s->hs_held) start_connect(s);  /* a handshake slot was given to it */
    return;
  case HF_SS_BACKOFF:
    hs_wait(s);                        /* retry like a new connection */
    return;
  case HF_SS_UPWAIT:
    if (s->up_held) reprobe(s);       /* an upload slot was given to it */
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
      uv_timer_start(&s->timer, on_timer, (tmo - (now - last)) / 1000000u + 1, 0);
      return;
    }
  }
  if (ms)
    failf(s, s->state == HF_SS_CONNECTING ? HF_EUNREACH : HF_ETIMEDOUT,
          "%s: no progress in %s within %u s (host unreachable or link cut?)",
          s->host->name, phase_words(s->state), (ms + 999) / 1000);
  else
    failf(s, HF_ETIMEDOUT, "%s: request %s: no result within the deadline (host or link stalled?)",
          s->host->name, phase_words(s->state));
}

/* ---- polling ------------------------------------------------------------ */
static void retry_later(struct hf_session *s);
static bool next_address(struct hf_session *s);

/* Time the loop thread has spent runnable but waiting for a CPU (Linux
 * schedstat, second field), or 0 when the kernel does not say. */
static uint64_t runq_wait_ns(struct hf_engine *e) {
  if (e->schedstat_fd < 0) return 0;
  char buf[96];
  ssize_t n = pread(e->schedstat_fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = '\0';
  unsigned long long run = 0, wait = 0;
  if (sscanf(buf, "%llu %llu", &run, &wait) != 2) return 0;
  return wait;
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
    if (soerr == 0) { drive(s); return; }
    if (s->state == HF_SS_CONNECTING && soerr != ECONNRESET && next_address(s)) {
      return;
    } else if (s->state == HF_SS_CONNECTING && soerr != ECONNRESET) {
      failf(s, HF_EUNREACH, "%s: connect to %s port %d: %s", s->host->name, s->host->address,
            s->host->port, strerror(soerr));
    } else if ((s->state == HF_SS_CONNECTING || s->state == HF_SS_HANDSHAKE) &&
               s->retries < s->e->o.max_retries) {
      retry_later(s);   /* sshd dropped it before or during banner/kex */
    } else {
      failf(s, s->state <= HF_SS_HANDSHAKE ? HF_EUNREACH : HF_EIO, "%s: connection lost in %s: %s",
            s->host->name, phase_words(s->state), strerror(soerr));
    }
    return;
  }
  /* Work budget per loop iteration: past it, leave the socket for the next
   * iteration (the poll is level-triggered, so it fires again) and let
   * timers and other hosts run; a burst of key exchanges must not stall
   * the loop. */
  struct hf_engine *e = s->e;
  uint64_t now = uv_hrtime();
  if (events & UV_READABLE) s->progress_ns = now;
  if (!e->iter_start_ns) {
    e->iter_start_ns = now;
    e->iter_runq_ns = runq_wait_ns(e);
  } else if (now - e->iter_start_ns > ITER_BUDGET_NS) { e->st.deferred++; return; }
  drive(s);
}

static void rearm(struct hf_session *s) {
  if (!s->poll || s->closing) return;
  int ev = 0;
  if (s->state == HF_SS_CONNECTING) {
    ev = UV_WRITABLE;
  } else if (s->ssh) {
    /* libssh asks for POLLOUT while its socket is connecting (the key
     * exchange) and while bytes are queued, and keeps asking until its own
     * poll sees one, which only a read call runs: a session nobody reads
     * for (a lingering bastion) would wake the loop for nothing. Past the
     * key exchange, ask only while bytes are really queued. */
    if ((ssh_get_poll_flags(s->ssh) & SSH_WRITE_PENDING) &&
        (s->state == HF_SS_HANDSHAKE || (ssh_get_status(s->ssh) & SSH_WRITE_PENDING)))
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

/* ---- resolve and connect ------------------------------------------------ */
static void sess_free(struct hf_session *s);

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
    failf(s, HF_EUNREACH, "%s: cannot resolve %s: %s", s->host->name, s->host->address,
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
  s->ep = endpoint_get(e, key);
  if (!s->ep) { failf(s, HF_ENOMEM, "%s: out of memory", h->name); return; }
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
    set_state(s, HF_SS_RESOLVING);
    s->gai.data = s;
    int r = uv_getaddrinfo(e->loop, &s->gai, on_resolved, h->address, NULL, &hints);
    if (r < 0) { failf(s, HF_EUNREACH, "%s: resolve: %s", h->name, uv_strerror(r)); return; }
    s->gai_active = true;
    deadline(s, e->o.timeout_ms);
    return;
  }
  hs_wait(s);
}

static void jump_attach(struct hf_session *s);

static void start_connect(struct hf_session *s) {
  struct hf_engine *e = s->e;
  if (s->host->jump && *s->host->jump && !s->bare) { jump_attach(s); return; }
  if (s->addr.ss_family == AF_INET) ((struct sockaddr_in *)&s->addr)->sin_port = htons((uint16_t)s->host->port);
  else ((struct sockaddr_in6 *)&s->addr)->sin6_port = htons((uint16_t)s->host->port);
  int fd = socket(s->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) { failf(s, HF_EIO, "%s: socket: %s", s->host->name, strerror(errno)); return; }
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
  set_state(s, HF_SS_CONNECTING);
  if (connect(fd, (struct sockaddr *)&s->addr, s->addrlen) < 0 && errno != EINPROGRESS) {
    failf(s, HF_EUNREACH, "%s: connect to %s port %d: %s", s->host->name, s->host->address,
          s->host->port, strerror(errno));
    return;
  }
  s->poll = malloc(sizeof *s->poll);
  if (!s->poll || uv_poll_init_socket(e->loop, s->poll, fd) < 0) {
    free(s->poll);
    s->poll = NULL;
    failf(s, HF_EIO, "%s: cannot poll its socket", s->host->name);
    return;
  }
  s->poll->data = s;
  s->poll_events = 0;
  deadline(s, e->o.timeout_ms);
  rearm(s);
}

/* A name with several addresses (IPv6 and IPv4, say): when connecting to
 * one fails, tries the next. Returns false when none is left. */
static bool next_address(struct hf_session *s) {
  if (s->alt_idx >= s->nalt) return false;
  if (s->poll) { uv_close((uv_handle_t *)s->poll, (uv_close_cb)free); s->poll = NULL; s->poll_events = 0; }
  if (s->fd >= 0) { close(s->fd); s->fd = -1; }
  memcpy(&s->addr, &s->alt[s->alt_idx], s->altlen[s->alt_idx]);
  s->addrlen = s->altlen[s->alt_idx];
  s->alt_idx++;
  start_connect(s);
  return true;
}

/* ---- per-state handlers: each returns 1 to wait for I/O, 0 to go on ------ */

static int in_connecting(struct hf_session *s) {
  struct hf_engine *e = s->e;
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
  if (soerr == EINPROGRESS || soerr == EALREADY) return 1;
  if (soerr == ECONNRESET && s->retries < e->o.max_retries) {
    retry_later(s);   /* accepted by the kernel, then dropped by sshd */
    return 1;
  }
  if (soerr && next_address(s)) return 1;
  if (soerr) {
    failf(s, HF_EUNREACH, "%s: connect to %s port %d: %s", s->host->name, s->host->address,
          s->host->port, strerror(soerr));
    return -1;
  }
  const struct hf_host *h = s->host;
  /* Host keys are checked against the file the controller read once (see
   * hf_knownhosts.h); libssh is given an empty one so it does not read and
   * parse the whole file twice per session. The key types recorded for the
   * host come first in the key exchange, as libssh would order them. */
  char kherr[PATH_MAX + 128], algos[512];
  if (!s->khf && !(s->khf = hf_kh_file(e->kh, s->kh_file, kherr, sizeof kherr))) {
    failf(s, HF_EHOSTKEY, "%s: %s", h->name, kherr);
    return -1;
  }
  if (hf_kh_match(s->khf, h->address, h->port, &s->khm) < 0) {
    failf(s, HF_ENOMEM, "%s: cannot look up %s in %s", h->name, h->address, s->kh_file);
    return -1;
  }
  int known = hf_kh_match_algorithms(s->khf, &s->khm, algos, sizeof algos);
  ssh_session ssh = ssh_new();
  if (!ssh) { failf(s, HF_ENOMEM, "%s: ssh_new failed", s->host->name); return -1; }
  s->ssh = ssh;
  bool no = false;
  int port = h->port;
  socket_t sfd = s->fd;
  long to = (long)(e->o.timeout_ms / 1000);
  /* ~/.ssh/config and /etc/ssh/ssh_config are never read: they could weaken
   * host key checking or redirect the host. */
  if (ssh_options_set(ssh, SSH_OPTIONS_PROCESS_CONFIG, &no) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_HOST, h->address) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_PORT, &port) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") < 0 ||
      (known > 0 && ssh_options_set(ssh, SSH_OPTIONS_HOSTKEYS, algos) < 0) ||
      ssh_options_set(ssh, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_TIMEOUT, &to) < 0 ||
      (h->user && ssh_options_set(ssh, SSH_OPTIONS_USER, h->user) < 0) ||
      ssh_options_set(ssh, SSH_OPTIONS_FD, &sfd) < 0) {
    fail_ssh(s, HF_ESSH, "setting SSH options");
    return -1;
  }
  s->ssh_fd = s->fd;   /* libssh uses the socket now; closing it stays ours */
  s->fd = -1;
  ssh_set_blocking(ssh, 0);
  set_state(s, HF_SS_HANDSHAKE);
  deadline(s, e->o.timeout_ms);
  return 0;
}

static void retry_later(struct hf_session *s) {
  struct hf_engine *e = s->e;
  s->retries++;
  e->st.retries++;
  hs_release(s);
  teardown_ssh(s);
  set_state(s, HF_SS_BACKOFF);
  deadline(s, hf_backoff_ms(s->retries, BACKOFF_BASE_MS, BACKOFF_CAP_MS, &e->rng));
}

static int check_host_key(struct hf_session *s);

static int in_handshake(struct hf_session *s) {
  int rc = ssh_connect(s->ssh);
  if (rc == SSH_AGAIN) return 1;
  if (rc != SSH_OK) {
    const char *msg = ssh_get_error(s->ssh);
    if (hf_ssh_error_retryable(msg) && s->retries < s->e->o.max_retries) {
      retry_later(s);
      return 1;
    }
    failf(s, HF_EUNREACH, "%s: SSH handshake with %s port %d failed%s: %s", s->host->name,
          s->host->address, s->host->port,
          s->retries ? " after retries" : "", msg);
    return -1;
  }
  if (check_host_key(s) < 0) return -1;
  set_state(s, HF_SS_AUTH);
  deadline(s, s->e->o.timeout_ms);
  return 0;
}

static int check_host_key(struct hf_session *s) {
  struct hf_engine *e = s->e;
  const struct hf_host *h = s->host;
  ssh_key key = NULL;
  if (ssh_get_server_publickey(s->ssh, &key) != SSH_OK) {
    fail_ssh(s, HF_EHOSTKEY, "cannot read the server's host key");
    return -1;
  }
  /* Lines another session added since this one connected count too. */
  if (hf_kh_match(s->khf, h->address, h->port, &s->khm) < 0) {
    ssh_key_free(key);
    failf(s, HF_EHOSTKEY, "%s: cannot look up %s in %s", h->name, h->address, s->kh_file);
    return -1;
  }
  enum hf_kh_verdict k = hf_kh_match_check(s->khf, &s->khm, key);
  if (k == HF_KH_OK) { ssh_key_free(key); return 0; }
  char fp[128] = "?";
  unsigned char *hash = NULL;
  size_t hlen = 0;
  if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) == 0) {
    char *f = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen);
    if (f) {
      snprintf(fp, sizeof fp, "%s %s", ssh_key_type_to_char(ssh_key_type(key)), f);
      ssh_string_free_char(f);
    }
  }
  ssh_clean_pubkey_hash(&hash);
  char msg[sizeof s->err];
  enum hf_hostkey_problem p = HF_HOSTKEY_UNKNOWN;
  switch (k) {
  case HF_KH_UNKNOWN:
    if (e->o.accept_new) {
      int rc = hf_kh_add(s->khf, h->address, h->port, key, msg, sizeof msg);
      ssh_key_free(key);
      if (rc < 0) {
        failf(s, HF_EHOSTKEY, "%s: --accept-new: cannot record the host key: %s", h->name, msg);
        return -1;
      }
      fprintf(stderr, "hubfleet: %s: new host key %s added to %s (--accept-new)\n",
              h->name, fp, s->kh_file);
      return 0;
    }
    p = HF_HOSTKEY_UNKNOWN;
    break;
  case HF_KH_CHANGED: p = HF_HOSTKEY_CHANGED; break;
  case HF_KH_OTHER: p = HF_HOSTKEY_OTHER; break;
  case HF_KH_REVOKED: default: p = HF_HOSTKEY_REVOKED; break;
  }
  ssh_key_free(key);
  hf_hostkey_message(p, h->name, h->address, h->port, fp, s->kh_file, msg, sizeof msg);
  failf(s, HF_EHOSTKEY, "%s", msg);
  return -1;
}

static int in_auth(struct hf_session *s) {
  while (s->auth_idx < s->nauth) {
    struct auth_method *m = &s->auth[s->auth_idx];
    int rc = m->kind == AUTH_AGENT ? ssh_userauth_agent(s->ssh, NULL)
                                   : ssh_userauth_publickey(s->ssh, NULL, m->key);
    if (rc == SSH_AUTH_AGAIN) return 1;
    if (rc == SSH_AUTH_SUCCESS) {
      hs_release(s);
      if (s->bare) {
        /* A bastion's connection is ready once authenticated. */
        deadline(s, 0);
        set_state(s, HF_SS_READY);
        s->ready_fired = true;
        s->ready_cb(s, 0, s->ctx);
        return s->closing || s->state != HF_SS_READY ? -1 : 0;
      }
      s->ch = ssh_channel_new(s->ssh);
      if (!s->ch) { fail_ssh(s, HF_ESSH, "channel"); return -1; }
      set_state(s, HF_SS_CHANOPEN);
      deadline(s, s->e->o.timeout_ms);
      return 0;
    }
    if (rc == SSH_AUTH_ERROR) { fail_ssh(s, HF_ESSH, "authentication"); return -1; }
    s->auth_idx++;   /* denied or partial: next method */
  }
  char tried[300] = "";
  for (int i = 0; i < s->nauth; i++) {
    size_t n = strlen(tried);
    snprintf(tried + n, sizeof tried - n, "%s%s", i ? ", " : "", s->auth[i].what);
  }
  /* Never retried: repeating a refused login only locks accounts. */
  failf(s, HF_EAUTH, "%s: authentication refused for user %s (tried: %s); check "
        "ansible_user/ansible_ssh_private_key_file or load the key into ssh-agent",
        s->host->name, s->host->user ? s->host->user : "(current user)",
        s->nauth ? tried : "no usable key");
  return -1;
}

/* Keeps the tail of a channel's stderr for messages; drains it so the
 * window never stalls. Returns <0 on a channel error. */
static int drain_stderr(struct hf_session *s, ssh_channel c) {
  char buf[2048];
  for (int i = 0; i < 64; i++) {
    int n = ssh_channel_read_nonblocking(c, buf, sizeof buf, 1);
    if (n == 0 || n == SSH_EOF) return 0;
    if (n < 0) return n;
    size_t k = (size_t)n;
    if (k >= TAIL_MAX) { memcpy(s->tail, buf + k - TAIL_MAX, TAIL_MAX); s->tail_len = TAIL_MAX; }
    else {
      if (s->tail_len + k > TAIL_MAX) {
        size_t drop = s->tail_len + k - TAIL_MAX;
        memmove(s->tail, s->tail + drop, s->tail_len - drop);
        s->tail_len -= drop;
      }
      memcpy(s->tail + s->tail_len, buf, k);
      s->tail_len += k;
    }
  }
  return 0;
}

static int in_chanopen(struct hf_session *s, ssh_channel c, enum hf_sess_state next) {
  int rc = ssh_channel_open_session(c);
  if (rc == SSH_AGAIN) return 1;
  if (rc != SSH_OK) { fail_ssh(s, HF_ESSH, "opening an exec channel"); return -1; }
  set_state(s, next);
  return 0;
}

static int in_exec(struct hf_session *s, ssh_channel c, const char *cmd, enum hf_sess_state next) {
  int rc = ssh_channel_request_exec(c, cmd);
  if (rc == SSH_AGAIN) return 1;
  if (rc != SSH_OK) { fail_ssh(s, HF_EEXEC, "exec request"); return -1; }
  s->line_len = 0;
  s->tail_len = 0;
  set_state(s, next);
  return 0;
}

/* Reads up to len bytes of c's stdout. Returns bytes (>0), 0 for "again",
 * SSH_EOF, or another negative for an error (after failing the session). */
static int chan_read(struct hf_session *s, ssh_channel c, char *buf, size_t len) {
  if (drain_stderr(s, c) < 0) { fail_ssh(s, HF_EIO, "reading stderr"); return SSH_ERROR; }
  int n = ssh_channel_read_nonblocking(c, buf, (uint32_t)len, 0);
  if (n == SSH_EOF || n >= 0) return n;
  fail_ssh(s, HF_EIO, "connection lost");
  return SSH_ERROR;
}

static int handle_frame(struct hf_session *s, json_t *msg);

/* Feeds bytes to the frame decoder and handles each frame. Returns 0, or -1
 * when the session failed or was closed by a callback. */
static int feed(struct hf_session *s, const char *buf, size_t n) {
  size_t off = 0;
  while (off < n) {
    size_t used = 0;
    json_t *msg = NULL;
    int r = hf_frame_feed(&s->dec, buf + off, n - off, &used, &msg);
    if (r < 0) {
      failf(s, HF_EPROTO, "%s: agent sent a bad frame: %s (%s)", s->host->name,
            hf_strerror(r), hf_err_name(r));
      return -1;
    }
    off += used;
    if (msg) {
      int h = handle_frame(s, msg);
      json_decref(msg);
      if (h < 0) return -1;
    } else if (!used) {
      break;
    }
  }
  return 0;
}

/* Whether the start command's first line is "MARKER PATH": PATH (a host's
 * text, kept on one line) into path. */
static bool marker_path(struct hf_session *s, const char *marker, char *path, size_t len) {
  size_t m = strlen(marker);
  if (strncmp(s->line, marker, m) || s->line[m] != ' ') return false;
  char *nl = strchr(s->line, '\n');
  if (nl) *nl = '\0';
  hf_clean_line(path, len, s->line + m + 1);
  return true;
}

static int in_probe(struct hf_session *s) {
  char buf[READ_CHUNK];
  for (;;) {
    int n = chan_read(s, s->ch, buf, sizeof buf);
    if (n == 0) return 1;
    if (n == SSH_EOF) {
      if (s->line_len >= strlen(HF_DEPLOY_NEED_UPLOAD) &&
          !memcmp(s->line, HF_DEPLOY_NEED_UPLOAD, strlen(HF_DEPLOY_NEED_UPLOAD)))
        goto need_upload;
      set_err(s, HF_EEXEC, "%s: the agent start command ended without output", s->host->name);
      err_add_tail(s);
      fail(s);
      return -1;
    }
    if (n < 0) return -1;
    if (s->line_len == 0 && buf[0] != 'H') {
      /* A frame header (its first byte is 0 for any legal length): the
       * cached agent started. Anything else goes to the decoder too and
       * fails there as a protocol error. */
      set_state(s, HF_SS_HELLO);
      if (!s->uploaded) s->e->st.reused++;
      if (s->up_held) { s->e->st.upload_skipped++; up_release(s); }
      if (feed(s, buf, (size_t)n) < 0) return -1;
      return 0;
    }
    size_t k = (size_t)n;
    if (k > sizeof s->line - 1 - s->line_len) k = sizeof s->line - 1 - s->line_len;
    memcpy(s->line + s->line_len, buf, k);
    s->line_len += k;
    s->line[s->line_len] = 0;
    if (strchr(s->line, '\n') || s->line_len >= sizeof s->line - 1) {
      if (!strncmp(s->line, HF_DEPLOY_NEED_UPLOAD "\n", strlen(HF_DEPLOY_NEED_UPLOAD) + 1))
        goto need_upload;
      char path[sizeof s->line];
      if (marker_path(s, HF_DEPLOY_NOFIND, path, sizeof path)) {
        failf(s, HF_EUNSUPPORTED, "%s: refusing to run the agent: the host's find cannot check the owner and "
              "mode of %s (a find with -maxdepth, -perm and -user is needed: GNU findutils or busybox)",
              s->host->name, path);
        return -1;
      }
      if (marker_path(s, HF_DEPLOY_UNSAFE, path, sizeof path)) {
        failf(s, HF_EINTEGRITY, "%s: refusing to run the agent: %s is writable by group or others, "
              "or not the login's own (fix: chmod go-w, or chown it to the login)",
              s->host->name, path);
        return -1;
      }
      failf(s, HF_EPROTO, "%s: unexpected output from the agent start command", s->host->name);
      return -1;
    }
  }
need_upload:
  if (s->uploaded) {
    failf(s, HF_EEXEC, "%s: the agent is still missing right after a verified upload "
          "(is $HOME/.cache writable and on a filesystem that allows exec?)", s->host->name);
    return -1;
  }
  ssh_channel_close(s->ch);
  ssh_channel_free(s->ch);
  s->ch = NULL;
  struct hf_engine *e = s->e;
  if (!s->up_held) {
    if (e->up_inflight >= e->o.max_uploads) {
      /* Wait for a slot, then probe again (see up_release). */
      deadline(s, 0);
      set_state(s, HF_SS_UPWAIT);
      q_push(&e->upq, s);
      return 1;
    }
    s->up_held = true;
    e->up_inflight++;
  }
  char perr[600];
  if (hf_payload_gzip(&e->agent, perr, sizeof perr) < 0) {
    failf(s, HF_EIO, "%s: %s", s->host->name, perr);
    return -1;
  }
  e->st.payload_bytes = e->agent.gz_len;
  s->up = ssh_channel_new(s->ssh);
  if (!s->up) { fail_ssh(s, HF_ESSH, "channel"); return -1; }
  e->st.uploads++;
  set_state(s, HF_SS_UPOPEN);
  /* During the upload the deadline means "no progress for that long": it
   * is re-armed with every chunk the host takes. */
  deadline(s, s->e->o.timeout_ms);
  return 0;
}

static int in_upload(struct hf_session *s) {
  struct hf_engine *e = s->e;
  const unsigned char *gz = e->agent.gz;
  size_t len = e->agent.gz_len;
  for (int i = 0; i < 256; i++) {
    /* Reading runs libssh's packet handling: window adjusts come in and
     * what it still holds goes out when the socket takes it. */
    if (drain_stderr(s, s->up) < 0) { fail_ssh(s, HF_EIO, "agent upload"); return -1; }
    if (s->up_off == len) {
      if (ssh_channel_send_eof(s->up) == SSH_ERROR) { fail_ssh(s, HF_EIO, "agent upload"); return -1; }
      s->line_len = 0;
      set_state(s, HF_SS_UPVERIFY);
      return 0;
    }
    /* Only write when libssh has flushed what it holds, so at most one
     * chunk per session sits in memory whatever the window. What is really
     * queued counts (ssh_get_status), not libssh's stale POLLOUT interest,
     * which would cost a loop iteration per chunk. */
    if (ssh_get_status(s->ssh) & SSH_WRITE_PENDING) return 1;
    uint32_t win = ssh_channel_window_size(s->up);
    if (win == 0) {
      /* Process incoming packets (window adjust) without blocking. */
      char b;
      int r = ssh_channel_read_nonblocking(s->up, &b, 0, 0);
      if (r < 0 && r != SSH_EOF) { fail_ssh(s, HF_EIO, "agent upload"); return -1; }
      if (ssh_channel_window_size(s->up) == 0) return 1;
      continue;
    }
    size_t n = len - s->up_off;
    if (n > UPLOAD_CHUNK) n = UPLOAD_CHUNK;
    if (n > win) n = win;
    int w = ssh_channel_write(s->up, gz + s->up_off, (uint32_t)n);
    if (w < 0) { fail_ssh(s, HF_EIO, "agent upload"); return -1; }
    s->up_off += (size_t)w;
    e->st.upload_bytes += (uint64_t)w;
    if (w == 0) return 1;
    deadline(s, e->o.timeout_ms);
  }
  return 1;
}

static int in_upverify(struct hf_session *s) {
  char buf[512];
  for (int i = 0;; i++) {
    if (i == 64) { s->kick = true; return 1; }
    int n = chan_read(s, s->up, buf, sizeof buf);
    if (n == 0) return 1;
    if (n < 0 && n != SSH_EOF) return -1;
    if (n > 0) {
      size_t k = (size_t)n;
      if (k > sizeof s->line - 1 - s->line_len) k = sizeof s->line - 1 - s->line_len;
      memcpy(s->line + s->line_len, buf, k);
      s->line_len += k;
      s->line[s->line_len] = 0;
      continue;
    }
    /* EOF: the command's verdict is complete. */
    if (strncmp(s->line, HF_DEPLOY_UPLOADED, strlen(HF_DEPLOY_UPLOADED))) {
      char verdict[sizeof s->line];
      hf_clean_line(verdict, sizeof verdict, s->line);
      set_err(s, HF_EINTEGRITY, "%s: agent upload not verified on the host (%.60s)", s->host->name,
              s->line_len ? verdict : "no verdict");
      err_add_tail(s);
      fail(s);
      return -1;
    }
    s->uploaded = true;
    up_release(s);
    ssh_channel_close(s->up);
    ssh_channel_free(s->up);
    s->up = NULL;
    s->ch = ssh_channel_new(s->ssh);
    if (!s->ch) { fail_ssh(s, HF_ESSH, "channel"); return -1; }
    set_state(s, HF_SS_CHANOPEN);
    deadline(s, s->e->o.timeout_ms);
    return 0;
  }
}

/* Its turn to upload came: probe again on a new channel first (another
 * host sharing the home may have uploaded the agent meanwhile). */
static void reprobe(struct hf_session *s) {
  s->ch = ssh_channel_new(s->ssh);
  if (!s->ch) { fail_ssh(s, HF_ESSH, "channel"); return; }
  set_state(s, HF_SS_CHANOPEN);
  deadline(s, s->e->o.timeout_ms);
  drive(s);
}

/* Reads agent frames (hello, ready, busy). */
static int in_frames(struct hf_session *s) {
  char buf[READ_CHUNK];
  enum hf_sess_state st = s->state;
  for (int i = 0;; i++) {
    if (i == 64) { s->kick = true; return 1; }   /* a chatty agent must not hold the loop */
    int n = chan_read(s, s->ch, buf, sizeof buf);
    if (n == 0) return 1;
    if (n == SSH_EOF) {
      if (st == HF_SS_HELLO) set_err(s, HF_EPROTO, "%s: the agent exited before its hello", s->host->name);
      else set_err(s, HF_EIO, "%s: the agent exited or the connection closed", s->host->name);
      err_add_tail(s);
      fail(s);
      return -1;
    }
    if (n < 0) return -1;
    if (feed(s, buf, (size_t)n) < 0) return -1;
    if (s->state != st) return 0;   /* hello done, result delivered, or closed */
  }
}

static int pump_out(struct hf_session *s) {
  while (s->out_off < s->out_len) {
    if (ssh_get_poll_flags(s->ssh) & SSH_WRITE_PENDING) return 0;
    uint32_t win = ssh_channel_window_size(s->ch);
    if (win == 0) return 0;
    size_t n = s->out_len - s->out_off;
    if (n > win) n = win;
    if (n > UPLOAD_CHUNK) n = UPLOAD_CHUNK;
    int w = ssh_channel_write(s->ch, s->out + s->out_off, (uint32_t)n);
    if (w < 0) { fail_ssh(s, HF_EIO, "sending a request"); return -1; }
    if (w == 0) return 0;
    s->out_off += (size_t)w;
  }
  free(s->out);
  s->out = NULL;
  s->out_len = s->out_off = 0;
  return 0;
}

static int handle_frame(struct hf_session *s, json_t *msg) {
  char why[256];
  enum hf_msg_type t;
  int r = hf_msg_validate(msg, &t, why, sizeof why);
  if (r < 0) {
    failf(s, HF_EPROTO, "%s: agent sent an invalid message: %s", s->host->name, why);
    return -1;
  }
  if (s->state == HF_SS_HELLO) {
    if (t != HF_MSG_HELLO) {
      failf(s, HF_EPROTO, "%s: agent did not start with hello", s->host->name);
      return -1;
    }
    json_int_t proto = json_integer_value(json_object_get(msg, "proto"));
    const char *ver = json_string_value(json_object_get(msg, "agent"));
    snprintf(s->agent_version, sizeof s->agent_version, "%s", ver ? ver : "?");
    if (proto != HF_PROTO_VERSION) {
      failf(s, HF_EVERSION, "%s: the agent speaks protocol %lld, this hubfleet speaks %d; "
            "use a hubfleet and hubfleet-agent from the same release", s->host->name,
            (long long)proto, HF_PROTO_VERSION);
      return -1;
    }
    deadline(s, 0);
    set_state(s, HF_SS_READY);
    s->ready_fired = true;
    s->ready_cb(s, 0, s->ctx);
    return 0;
  }
  if (s->state != HF_SS_BUSY) {
    failf(s, HF_EPROTO, "%s: agent sent a frame while no request was in flight", s->host->name);
    return -1;
  }
  json_int_t id = json_integer_value(json_object_get(msg, "id"));
  if (t == HF_MSG_EVENT && (uint64_t)id == s->req_id) {
    if (s->ev_cb) s->ev_cb(s, msg, s->req_ctx);
    return s->state == HF_SS_BUSY ? 0 : -1;
  }
  if (t == HF_MSG_RESULT && ((uint64_t)id == s->req_id || id == 0)) {
    bool ok = json_is_true(json_object_get(msg, "ok"));
    int code = 0;
    const char *text = NULL;
    if (!ok) {
      json_t *e = json_object_get(msg, "error");
      code = hf_err_from_code(json_string_value(json_object_get(e, "code")));
      text = json_string_value(json_object_get(e, "message"));
      if (!text) text = hf_strerror(code);
    }
    if (id == 0) {
      failf(s, HF_EPROTO, "%s: agent refused the request stream: %s", s->host->name,
            text ? text : "protocol error");
      return -1;
    }
    hf_result_cb cb = s->res_cb;
    void *ctx = s->req_ctx;
    s->res_cb = NULL;
    s->ev_cb = NULL;
    deadline(s, 0);
    set_state(s, HF_SS_READY);
    cb(s, code, ok ? json_object_get(msg, "data") : NULL, text, ctx);
    return s->state == HF_SS_CLOSING || s->state == HF_SS_FAILED ? -1 : 0;
  }
  failf(s, HF_EPROTO, "%s: agent sent a frame for request %lld while %llu was in flight",
        s->host->name, (long long)id, (unsigned long long)s->req_id);
  return -1;
}

static int jump_service(struct jump *j);

/* The dispatcher: runs the current state's handler until one waits. */
static void drive(struct hf_session *s) {
  struct hf_engine *e = s->e;
  s->kick = false;
  for (int step = 0; step < DRIVE_MAX_STEPS; step++) {
    if (s->closing) return;
    int r;
    switch (s->state) {
    case HF_SS_CONNECTING: r = in_connecting(s); break;
    case HF_SS_HANDSHAKE:  r = in_handshake(s); break;
    case HF_SS_AUTH:       r = in_auth(s); break;
    case HF_SS_CHANOPEN:   r = in_chanopen(s, s->ch, HF_SS_EXEC); break;
    case HF_SS_EXEC:       r = in_exec(s, s->ch, e->cmd_start, HF_SS_PROBE); break;
    case HF_SS_PROBE:      r = in_probe(s); break;
    case HF_SS_UPOPEN:     r = in_chanopen(s, s->up, HF_SS_UPEXEC); break;
    case HF_SS_UPEXEC:     r = in_exec(s, s->up, e->cmd_upload, HF_SS_UPLOAD); break;
    case HF_SS_UPLOAD:     r = in_upload(s); break;
    case HF_SS_UPVERIFY:   r = in_upverify(s); break;
    case HF_SS_HELLO:      r = in_frames(s); break;
    case HF_SS_READY:      r = s->bare ? jump_service(s->jump) : in_frames(s); break;
    case HF_SS_BUSY:
      r = pump_out(s);
      if (r == 0) r = in_frames(s);
      break;
    case HF_SS_UPWAIT:
      /* Process what came (keepalive requests are answered) and send
       * what is queued; a dead connection fails the session now. */
      if (ssh_blocking_flush(s->ssh, 0) == SSH_ERROR) { fail_ssh(s, HF_EIO, "connection lost while waiting to upload"); return; }
      rearm(s);
      return;
    default:
      return;   /* queued, resolving, waiting, backoff, failed: nothing to do on I/O */
    }
    if (r < 0) return;
    if (r == 1) { rearm(s); return; }
  }
  /* Bounded: come back on the next loop iteration rather than starve others. */
  s->kick = true;
  rearm(s);
}


/* ---- ProxyJump ------------------------------------------------------------
 * libssh 0.10 has no ProxyJump: the bastion gets a bare session of its own,
 * each host behind it a direct-tcpip channel on it, and the host's SSH
 * session runs over a socketpair whose other end is pumped to that channel.
 * The bastion connection is shared, and closed a moment after its last host
 * is done. */
#define PUMP_BUF 16384u
#define JUMP_LINGER_MS 2000u
#define JUMP_ROUNDS 8

static void plan_auth(struct hf_session *s);
static void jump_ready_cb(struct hf_session *js, int status, void *ctx);
static void jump_lost_cb(struct hf_session *js, int status, void *ctx);
static void child_pump(struct hf_session *u);
static void jump_rearm(struct jump *j);

static char *xstrdup(const char *p) { return p ? strdup(p) : NULL; }

/* The bastion named by host's hubfleet_jump ("[user@]host[:port]"),
 * created on first use. NULL on out-of-memory or a malformed spec. */
static struct jump *jump_get(struct hf_engine *e, const struct hf_host *h) {
  for (struct jump *j = e->jumps; j; j = j->next)
    if (!strcmp(j->spec, h->jump)) return j;
  size_t n = strlen(h->jump);
  struct jump *j = calloc(1, sizeof *j + n + 1);
  if (!j) return NULL;
  memcpy(j->spec, h->jump, n + 1);
  j->e = e;
  char tmp[512];
  snprintf(tmp, sizeof tmp, "%s", h->jump);
  char *hostpart = tmp, *at = strchr(tmp, '@');
  if (at) { *at = 0; hostpart = at + 1; j->host.user = xstrdup(tmp); }
  else j->host.user = xstrdup(h->user);
  j->host.port = 22;
  char *colon = strrchr(hostpart, ':');
  if (colon && !strchr(colon, ']')) {
    long port;
    *colon = 0;
    if (hf_parse_uint(colon + 1, 1, 65535, &port) == 0) j->host.port = (int)port;
    else j->host.port = -1;
  }
  if (*hostpart == '[' && hostpart[strlen(hostpart) - 1] == ']') {
    hostpart[strlen(hostpart) - 1] = 0;
    hostpart++;
  }
  j->host.address = xstrdup(hostpart);
  j->host.name = xstrdup(h->jump);
  j->host.key_file = xstrdup(h->key_file);
  j->host.known_hosts = xstrdup(h->known_hosts);
  j->next = e->jumps;
  e->jumps = j;
  if (j->host.port < 0 || !*j->host.address) {
    j->st = J_FAILED;
    j->errcode = HF_EINVENTORY;
    snprintf(j->err, sizeof j->err, "hubfleet_jump '%s' is not [user@]host[:port]", h->jump);
  }
  return j;
}

static void jump_free_all(struct hf_engine *e) {
  for (struct jump *j = e->jumps, *n; j; j = n) {
    n = j->next;
    free(j->host.user); free(j->host.address); free(j->host.name);
    free(j->host.key_file); free(j->host.known_hosts);
    free(j);
  }
  e->jumps = NULL;
}

static void jump_closed_cb(struct hf_session *js, void *ctx) {
  struct jump *j = ctx;
  if (j->sess == js) {
    j->sess = NULL;
    if (j->st != J_FAILED) j->st = J_IDLE;
  }
}

/* Starts the bastion's bare session (outside the --parallel slots). */
static int jump_connect(struct jump *j) {
  struct hf_engine *e = j->e;
  struct hf_session *js = calloc(1, sizeof *js);
  if (!js) return HF_ENOMEM;
  js->e = e;
  js->host = &j->host;
  js->ready_cb = jump_ready_cb;
  js->lost_cb = jump_lost_cb;
  js->ctx = j;
  js->fd = js->pfd = -1;
  js->bare = true;
  js->jump = j;
  hf_frame_decoder_init(&js->dec, 0);
  char khp[PATH_MAX];
  if (!hf_known_hosts_path(j->host.known_hosts, e->o.known_hosts, e->home, khp, sizeof khp) ||
      !(js->kh_file = strdup(khp))) {
    free(js);
    return HF_EINVAL;
  }
  plan_auth(js);
  uv_timer_init(e->loop, &js->timer);
  js->timer.data = js;
  e->live++;
  e->bare_live++;
  js->state = HF_SS_QUEUED;
  j->sess = js;
  j->st = J_CONNECTING;
  uv_timer_start(&js->timer, on_timer, 0, 0);
  return 0;
}

static void jump_link(struct jump *j, struct hf_session *u) {
  u->jump = j;
  u->jprev = NULL;
  u->jnext = j->users;
  if (j->users) j->users->jprev = u;
  j->users = u;
  u->jlinked = true;
  j->nusers++;
}

/* Hosts behind j, as a snapshot: callbacks may close sessions while we walk. */
static struct hf_session **jump_snapshot(struct jump *j, int *n) {
  struct hf_session **v = calloc((size_t)j->nusers + 1, sizeof *v);
  *n = 0;
  if (!v) return NULL;
  for (struct hf_session *u = j->users; u; u = u->jnext) v[(*n)++] = u;
  return v;
}

static void child_start_fwd(struct hf_session *u) {
  struct jump *j = u->jump;
  u->fwd = ssh_channel_new(j->sess->ssh);
  if (!u->fwd) { failf(u, HF_ESSH, "%s: cannot open a channel on the jump host %s", u->host->name, j->spec); return; }
  child_pump(u);
}

static void jump_attach(struct hf_session *s) {
  struct hf_engine *e = s->e;
  struct jump *j = jump_get(e, s->host);
  if (!j) { failf(s, HF_ENOMEM, "%s: out of memory", s->host->name); return; }
  set_state(s, HF_SS_CONNECTING);
  deadline(s, e->o.timeout_ms);
  if (j->st == J_FAILED) {
    failf(s, j->errcode ? j->errcode : HF_EUNREACH, "%s: jump host %s: %s", s->host->name, j->spec, j->err);
    return;
  }
  jump_link(j, s);
  if (j->st == J_IDLE) {
    int r = jump_connect(j);
    if (r < 0) { failf(s, r, "%s: cannot start the jump host %s session", s->host->name, j->spec); return; }
  } else if (j->st == J_READY) {
    deadline(j->sess, 0);   /* no longer lingering */
    child_start_fwd(s);
  }
}

/* Unlinks s from its bastion and frees the forwarding state. */
static void jump_detach(struct hf_session *s) {
  if (s->bare || !s->jump) return;
  struct jump *j = s->jump;
  if (s->ppoll) { uv_close((uv_handle_t *)s->ppoll, (uv_close_cb)free); s->ppoll = NULL; }
  s->ppoll_events = 0;
  if (s->pfd >= 0) { close(s->pfd); s->pfd = -1; }
  /* Sending the close may read packets for the other hosts' channels:
   * the bastion is re-armed below. */
  if (s->fwd) { ssh_channel_free(s->fwd); s->fwd = NULL; }
  s->fwd_open = s->pin_eof = s->pout_eof = false;
  free(s->pin); free(s->pout);
  s->pin = s->pout = NULL;
  s->pin_len = s->pin_off = s->pout_len = s->pout_off = 0;
  if (s->jlinked) {
    if (s->jprev) s->jprev->jnext = s->jnext; else j->users = s->jnext;
    if (s->jnext) s->jnext->jprev = s->jprev;
    s->jnext = s->jprev = NULL;
    s->jlinked = false;
    j->nusers--;
    if (!j->nusers && j->sess && j->st == J_READY && !j->sess->closing)
      deadline(j->sess, JUMP_LINGER_MS);
  }
  s->jump = NULL;
  jump_rearm(j);
}

static void jump_ready_cb(struct hf_session *js, int status, void *ctx) {
  struct jump *j = ctx;
  if (status == HF_ECANCELED) return;
  int n;
  struct hf_session **v = jump_snapshot(j, &n);
  if (status == 0) {
    j->st = J_READY;
    ssh_set_counters(js->ssh, NULL, &js->rx);
    js->rx_seen = js->rx.in_packets;
    for (int i = 0; i < n; i++)
      if (v[i]->jump == j && !v[i]->closing && !v[i]->fwd && v[i]->state == HF_SS_CONNECTING)
        child_start_fwd(v[i]);
    if (!j->nusers && j->sess && !j->sess->closing) deadline(j->sess, JUMP_LINGER_MS);
  } else {
    /* Not retried per host: a refused bastion would be refused 1000 times. */
    j->st = J_FAILED;
    j->errcode = status;
    snprintf(j->err, sizeof j->err, "%s", hf_session_error(js));
    for (int i = 0; i < n; i++)
      if (v[i]->jump == j && !v[i]->closing)
        failf(v[i], status, "%s: jump host %s: %s", v[i]->host->name, j->spec, j->err);
    hf_session_close(js, jump_closed_cb, j);
  }
  free(v);
}

static void jump_lost_cb(struct hf_session *js, int status, void *ctx) {
  struct jump *j = ctx;
  int n;
  struct hf_session **v = jump_snapshot(j, &n);
  j->st = J_IDLE;   /* a later host may connect it again */
  /* ssh_free of the bastion session freed every forward channel. */
  for (int i = 0; i < n; i++) v[i]->fwd = NULL;
  for (int i = 0; i < n; i++)
    if (v[i]->jump == j && !v[i]->closing)
      failf(v[i], HF_EUNREACH, "%s: lost the jump host %s: %s", v[i]->host->name, j->spec,
            hf_session_error(js));
  free(v);
  hf_session_close(js, jump_closed_cb, j);
}

static void on_pump(uv_poll_t *p, int status, int events) {
  struct hf_session *u = p->data;
  if (status < 0) u->ppoll_events = 0;   /* libuv stopped it */
  child_pump(u);
}

/* Re-arms the bastion's poll; when libssh read packets since every host
 * behind it was last pumped, wakes the bastion on the next iteration. */
static void jump_rearm(struct jump *j) {
  struct hf_session *js = j->sess;
  if (!js || js->closing) return;
  if (js->rx.in_packets != js->rx_seen) js->kick = true;
  rearm(js);
}

/* Moves bytes between the host's forward channel and our socketpair end;
 * opens the channel first. Backpressure: at most one buffer each way. */
static void child_pump(struct hf_session *u) {
  struct jump *j = u->jump;
  if (!j || !u->fwd || u->closing || !j->sess || !j->sess->ssh) return;
  struct hf_engine *e = u->e;
  if (!u->fwd_open) {
    int rc = ssh_channel_open_forward(u->fwd, u->host->address, u->host->port, "127.0.0.1", 22);
    if (rc == SSH_AGAIN) { jump_rearm(j); return; }
    if (rc != SSH_OK) {
      failf(u, HF_EUNREACH, "%s: jump host %s cannot reach %s port %d: %s", u->host->name, j->spec,
            u->host->address, u->host->port, ssh_get_error(j->sess->ssh));
      return;
    }
    u->fwd_open = true;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
      failf(u, HF_EIO, "%s: socketpair: %s", u->host->name, strerror(errno));
      return;
    }
    u->pfd = sv[0];
    u->fd = sv[1];
    u->pin = malloc(PUMP_BUF);
    u->pout = malloc(PUMP_BUF);
    u->ppoll = malloc(sizeof *u->ppoll);
    u->poll = malloc(sizeof *u->poll);
    if (!u->pin || !u->pout || !u->ppoll || !u->poll ||
        uv_poll_init_socket(e->loop, u->ppoll, sv[0]) < 0) {
      free(u->ppoll); u->ppoll = NULL;
      free(u->poll); u->poll = NULL;
      failf(u, HF_ENOMEM, "%s: out of memory", u->host->name);
      return;
    }
    u->ppoll->data = u;
    if (uv_poll_init_socket(e->loop, u->poll, sv[1]) < 0) {
      free(u->poll); u->poll = NULL;
      failf(u, HF_EIO, "%s: cannot poll the forward socket", u->host->name);
      return;
    }
    u->poll->data = u;
    u->poll_events = 0;
    /* The socketpair is connected: on to the SSH handshake, whose banner
     * the pump below carries to the host. */
    drive(u);
    if (u->closing || u->state == HF_SS_FAILED || !u->fwd) return;
  }
  for (int i = 0; i < 16; i++) {        /* bastion -> host */
    if (u->pin_off == u->pin_len && !u->pin_eof) {
      int n = ssh_channel_read_nonblocking(u->fwd, u->pin, PUMP_BUF, 0);
      if (n == SSH_EOF) { u->pin_eof = true; shutdown(u->pfd, SHUT_WR); break; }
      if (n < 0) {
        failf(u, HF_EIO, "%s: forward channel through %s: %s", u->host->name, j->spec,
              ssh_get_error(j->sess->ssh));
        return;
      }
      if (n == 0) break;
      u->pin_len = (size_t)n;
      u->pin_off = 0;
    }
    if (u->pin_off >= u->pin_len) break;
    ssize_t w = write(u->pfd, u->pin + u->pin_off, u->pin_len - u->pin_off);
    if (w < 0) {
      if (errno == EAGAIN || errno == EINTR) break;
      failf(u, HF_EIO, "%s: forward socket: %s", u->host->name, strerror(errno));
      return;
    }
    u->pin_off += (size_t)w;
  }
  for (int i = 0; i < 16; i++) {        /* host -> bastion */
    if (u->pout_off == u->pout_len && !u->pout_eof) {
      uint32_t win = ssh_channel_window_size(u->fwd);
      if (win == 0) break;
      ssize_t n = read(u->pfd, u->pout, win < PUMP_BUF ? win : PUMP_BUF);
      if (n == 0) { u->pout_eof = true; ssh_channel_send_eof(u->fwd); break; }
      if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        failf(u, HF_EIO, "%s: forward socket: %s", u->host->name, strerror(errno));
        return;
      }
      u->pout_len = (size_t)n;
      u->pout_off = 0;
    }
    if (u->pout_off >= u->pout_len) break;
    if (ssh_get_status(j->sess->ssh) & SSH_WRITE_PENDING) break;   /* bastion socket busy */
    int w = ssh_channel_write(u->fwd, u->pout + u->pout_off, (uint32_t)(u->pout_len - u->pout_off));
    if (w < 0) {
      failf(u, HF_EIO, "%s: forward channel through %s: %s", u->host->name, j->spec,
            ssh_get_error(j->sess->ssh));
      return;
    }
    if (w == 0) break;
    u->pout_off += (size_t)w;
  }
  int ev = 0;
  if (u->pin_off < u->pin_len) ev |= UV_WRITABLE;
  if (u->pout_off == u->pout_len && !u->pout_eof && ssh_channel_window_size(u->fwd) > 0)
    ev |= UV_READABLE;
  if (u->ppoll && ev != u->ppoll_events) {
    if (ev) uv_poll_start(u->ppoll, ev, on_pump);
    else uv_poll_stop(u->ppoll);
    u->ppoll_events = ev;
  }
  jump_rearm(j);
}

/* The bastion's socket woke up: every host behind it gets its bytes. */
static int jump_service(struct jump *j) {
  struct hf_session *js = j->sess;
  /* What libssh queued (a forward channel's close, a window adjust) goes
   * out even when no host reads: otherwise the socket stays writable and
   * wakes the loop for nothing. */
  if (ssh_get_status(js->ssh) & SSH_WRITE_PENDING) ssh_blocking_flush(js->ssh, 0);
  /* Rounds until one in which libssh read no packet: then every host was
   * pumped after the last one arrived. Bounded: the rest on the next
   * iteration (kick). */
  for (int round = 0; round < JUMP_ROUNDS; round++) {
    uint64_t before = js->rx.in_packets;
    int n;
    struct hf_session **v = jump_snapshot(j, &n);
    if (!v) return 1;
    for (int i = 0; i < n; i++)
      if (v[i]->jump == j && !v[i]->closing && v[i]->fwd) child_pump(v[i]);
    free(v);
    if (j->sess != js || js->closing || js->state != HF_SS_READY) return -1;
    if (js->rx.in_packets == before) {
      js->rx_seen = before;
      js->kick = false;
      return 1;
    }
  }
  js->kick = true;
  return 1;
}

/* ---- engine -------------------------------------------------------------- */
static void on_check(uv_check_t *c) {
  struct hf_engine *e = c->data;
  uint64_t now = uv_hrtime();
  uint64_t idle = e->metrics ? uv_metrics_idle_time(e->loop) : 0;
  /* Run-queue wait since this iteration's first callback: the kernel kept
   * the (runnable) loop thread off the CPU for other processes. */
  uint64_t rq = e->pre_runq_ns, w = runq_wait_ns(e);
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
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  uint64_t cpu = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
  if (e->last_cpu_ns && cpu - e->last_cpu_ns > e->st.max_stall_cpu_ns)
    e->st.max_stall_cpu_ns = cpu - e->last_cpu_ns;
  e->last_cpu_ns = cpu;
  e->last_check_ns = now;
  e->last_idle_ns = idle;
  e->iter_start_ns = 0;
}

/* Before the loop polls: the run-queue wait since the last check (timers,
 * closes) is not the loop's own time either. */
static void on_prepare(uv_prepare_t *p) {
  struct hf_engine *e = p->data;
  uint64_t w = runq_wait_ns(e);
  e->pre_runq_ns = w > e->check_runq_ns && e->check_runq_ns ? w - e->check_runq_ns : 0;
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
  fd_budget(e);

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
  uv_check_start(&e->check, on_check);
  uv_unref((uv_handle_t *)&e->check);
  uv_prepare_init(loop, &e->prepare);
  e->prepare.data = e;
  uv_prepare_start(&e->prepare, on_prepare);
  e->open_handles = 2;
  uv_unref((uv_handle_t *)&e->prepare);
  *out = e;
  return 0;
}

void hf_engine_free(struct hf_engine *e) {
  if (!e) return;
  uv_check_stop(&e->check);
  uv_prepare_stop(&e->prepare);
  uv_close((uv_handle_t *)&e->prepare, on_engine_handle_closed);
  uv_close((uv_handle_t *)&e->check, on_engine_handle_closed);
  for (size_t i = 0; i < EP_BUCKETS; i++)
    for (struct endpoint *ep = e->ep[i], *n; ep; ep = n) { n = ep->next; free(ep); }
  for (struct authkey *k = e->keys, *n; k; k = n) { n = k->next; ssh_key_free(k->key); free(k); }
  hf_payload_free(&e->agent);
  jump_free_all(e);
  /* e is freed when its check and prepare handles have closed (libuv close callbacks). */
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

const char *hf_engine_agent_sha256(const struct hf_engine *e) { return e->agent.hex; }

/* A private key imported once per engine: parsing it per host would cost
 * more CPU than the whole handshake. NULL when it cannot be read. */
static ssh_key engine_key(struct hf_engine *e, const char *path) {
  for (struct authkey *k = e->keys; k; k = k->next)
    if (!strcmp(k->path, path)) return k->key;
  size_t n = strlen(path);
  struct authkey *k = calloc(1, sizeof *k + n + 1);
  if (!k) return NULL;
  memcpy(k->path, path, n + 1);
  if (ssh_pki_import_privkey_file(path, NULL, NULL, NULL, &k->key) != SSH_OK) k->key = NULL;
  k->next = e->keys;
  e->keys = k;
  return k->key;
}

static void plan_auth(struct hf_session *s) {
  struct hf_engine *e = s->e;
  const struct hf_host *h = s->host;
  s->nauth = 0;
  if (h->key_file && *h->key_file) {
    ssh_key k = engine_key(e, h->key_file);
    if (k) s->auth[s->nauth++] = (struct auth_method){ AUTH_KEY, k, h->key_file };
    if (e->have_agent_sock) s->auth[s->nauth++] = (struct auth_method){ AUTH_AGENT, NULL, "ssh-agent" };
    return;
  }
  if (e->have_agent_sock) s->auth[s->nauth++] = (struct auth_method){ AUTH_AGENT, NULL, "ssh-agent" };
  static const char *const defaults[] = { "id_ed25519", "id_ecdsa", "id_rsa" };
  for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++) {
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/.ssh/%s", e->home, defaults[i]);
    if (access(p, R_OK) != 0) continue;
    ssh_key k = engine_key(e, p);
    /* The path string must outlive the session: use the cached copy. */
    for (struct authkey *ak = e->keys; ak; ak = ak->next)
      if (ak->key == k && k) { s->auth[s->nauth++] = (struct auth_method){ AUTH_KEY, k, ak->path }; break; }
  }
}


/* Gives free --parallel slots to queued sessions; each starts from its own
 * zero timer, so no callback runs inside the caller (open or close). */
static void slots_refill(struct hf_engine *e) {
  int cap = e->o.parallel < e->fd_slots ? e->o.parallel : e->fd_slots;
  while (e->active < cap && e->slotq.head) {
    struct hf_session *s = e->slotq.head;
    q_remove(&e->slotq, s);
    s->slot_held = true;
    e->active++;
    uv_timer_start(&s->timer, on_timer, 0, 0);
  }
}

/* The descriptors the sessions may use: the soft RLIMIT_NOFILE, raised up
 * to the hard limit when --parallel needs it (as OpenSSH's sshd and most
 * servers do); when even that is too low, fewer sessions run at once, with
 * one notice, rather than hosts failing with EMFILE. */
static void fd_budget(struct hf_engine *e) {
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
  plan_auth(s);
  uv_timer_init(e->loop, &s->timer);
  s->timer.data = s;
  e->live++;
  e->st.sessions++;
  s->state = HF_SS_QUEUED;
  *out = s;
  if (host->jump && *host->jump && !e->jump_seen) {
    /* Behind a bastion a session holds both ends of a socketpair. */
    e->jump_seen = true;
    fd_budget(e);
  }
  /* Everything starts from the loop so no callback fires inside this call. */
  q_push(&e->slotq, s);
  slots_refill(e);
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
  set_state(s, HF_SS_BUSY);
  deadline(s, timeout_ms ? timeout_ms : s->e->o.request_timeout_ms);
  /* The write happens from the loop when the socket is writable. */
  s->poll_events = -1;
  rearm(s);
  return 0;
}

/* The last host session is gone and its callbacks opened no other (a
 * rollout's next stage is opened from them): nobody is coming for the
 * idle bastions, so end their linger now rather than keep the loop alive. */
static void jump_linger_end(struct hf_engine *e) {
  for (struct jump *j = e->jumps; j; j = j->next)
    if (j->sess && !j->sess->closing && j->sess->state == HF_SS_READY && !j->nusers)
      uv_timer_start(&j->sess->timer, on_timer, 0, 0);
}

static void sess_free(struct hf_session *s) {
  struct hf_engine *e = s->e;
  /* Pending callbacks end as canceled, like libuv's. */
  if (!s->ready_fired) {
    s->ready_fired = true;
    if (!s->errcode) set_err(s, HF_ECANCELED, "%s: canceled", s->host->name);
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
  else if (e->bare_live && e->live == e->bare_live) jump_linger_end(e);
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
  if (s->queued) q_remove(sess_queue(s), s);
  hs_release(s);
  up_release(s);
  teardown_ssh(s);
  set_state(s, HF_SS_CLOSING);
  s->closing = true;
  if (s->gai_active) uv_cancel((uv_req_t *)&s->gai);
  uv_timer_stop(&s->timer);
  uv_close((uv_handle_t *)&s->timer, on_timer_closed);
  if (s->slot_held) {
    s->slot_held = false;
    e->active--;
    slots_refill(e);
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
