/* engine_int.h: the SSH engine's insides, shared by its files (controller/ssh/); not an API:
 * callers use hf_engine.h. The engine, its sessions and bastions, and the functions one file of
 * the engine calls in another. */
#ifndef HF_ENGINE_INT_H
#define HF_ENGINE_INT_H

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
  uint64_t budget_start_ns;     /* the work budget's start in wall time: iter_start_ns moved
                                   later by whatever was not the loop's own CPU (hf__over_budget) */
  uint64_t iter_cpu_ns;         /* the loop thread's CPU time at the iteration's first callback */
  bool iter_over;               /* this iteration spent its budget: the rest waits */
  uint64_t check_runq_ns;       /* ... at the last check (end of an iteration) */
  uint64_t pre_runq_ns;         /* waits between that check and the next poll */
  uv_prepare_t prepare;
  uv_idle_t idle;               /* active while runq holds sessions: the loop does not block */
  struct hf_session *runq_head, *runq_tail; /* sessions whose socket was ready when the
                                   iteration's budget was spent, their polls stopped
                                   meanwhile; driven first on the next iteration */
  int open_handles;             /* check, prepare and idle: e is freed when all have closed */
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
  bool in_drive;                /* hf__drive runs for it: the poll is re-armed when it ends */
  bool in_runq;                 /* in e's runq (rnext, rprev) */
  struct hf_session *rnext, *rprev;

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

/* ---- session.c ---- */
/* Arms the phase deadline (0 stops it). */
void hf__deadline(struct hf_session *s, uint64_t ms);
void hf__drive(struct hf_session *s);
void hf__err_add_tail(struct hf_session *s);
void hf__sess_fail(struct hf_session *s);
void hf__fail_ssh(struct hf_session *s, int code, const char *what);
void hf__failf(struct hf_session *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
bool hf__next_address(struct hf_session *s);
void hf__on_timer(uv_timer_t *t);
void hf__q_push(struct squeue *q, struct hf_session *s);
void hf__q_remove(struct squeue *q, struct hf_session *s);
void hf__rearm(struct hf_session *s);
void hf__on_idle(uv_idle_t *h);
void hf__runq_remove(struct hf_session *s);
void hf__set_err(struct hf_session *s, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void hf__set_state(struct hf_session *s, enum hf_sess_state st);
/* Stops polling and frees libssh objects (closes the socket). */
void hf__teardown_ssh(struct hf_session *s);

/* ---- engine.c ---- */
struct endpoint *hf__endpoint_get(struct hf_engine *e, const char *key);
void hf__fd_budget(struct hf_engine *e);
bool hf__hs_can(struct hf_engine *e, struct hf_session *s);
void hf__hs_release(struct hf_session *s);
void hf__hs_take(struct hf_session *s);
void hf__slots_refill(struct hf_engine *e);
void hf__up_release(struct hf_session *s);

/* The per-state handlers (connect.c, deploy.c, channel.c): each returns 1 to wait for I/O, 0 to
 * go on; hf__drive (session.c) runs the one of the session's state. */
/* ---- connect.c ---- */
int hf__in_auth(struct hf_session *s);
int hf__in_connecting(struct hf_session *s);
int hf__in_handshake(struct hf_session *s);
void hf__plan_auth(struct hf_session *s);
void hf__retry_later(struct hf_session *s);

/* ---- deploy.c ---- */
int hf__in_probe(struct hf_session *s);
int hf__in_upload(struct hf_session *s);
int hf__in_upverify(struct hf_session *s);
void hf__reprobe(struct hf_session *s);

/* ---- channel.c ---- */
int hf__chan_read(struct hf_session *s, ssh_channel c, char *buf, size_t len);
int hf__drain_stderr(struct hf_session *s, ssh_channel c);
int hf__feed(struct hf_session *s, const char *buf, size_t n);
int hf__in_chanopen(struct hf_session *s, ssh_channel c, enum hf_sess_state next);
int hf__in_exec(struct hf_session *s, ssh_channel c, const char *cmd, enum hf_sess_state next);
int hf__in_frames(struct hf_session *s);
int hf__pump_out(struct hf_session *s);

/* ---- bastion.c ---- */
void hf__jump_attach(struct hf_session *s);
void hf__jump_closed_cb(struct hf_session *js, void *ctx);
void hf__jump_detach(struct hf_session *s);
void hf__jump_free_all(struct hf_engine *e);
void hf__jump_linger_end(struct hf_engine *e);
int hf__jump_service(struct jump *j);

/* ---- loopstats.c ---- */
void hf__on_check(uv_check_t *c);
void hf__on_prepare(uv_prepare_t *p);
uint64_t hf__runq_wait_ns(struct hf_engine *e);
bool hf__over_budget(struct hf_engine *e, uint64_t now);
uint64_t hf__thread_cpu_ns(void);

#endif /* HF_ENGINE_INT_H */
