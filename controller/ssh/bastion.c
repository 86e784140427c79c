/* bastion.c: ProxyJump. The bastion's shared bare session, one forwarded channel per host behind
 * it, and the pump between each host's socketpair and its channel. */
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

/* ---- ProxyJump ------------------------------------------------------------
 * libssh 0.10 has no ProxyJump: the bastion gets a bare session of its own,
 * each host behind it a direct-tcpip channel on it, and the host's SSH
 * session runs over a socketpair whose other end is pumped to that channel.
 * The bastion connection is shared, and closed a moment after its last host
 * is done. */
#define PUMP_BUF 16384u
#define JUMP_LINGER_MS 2000u
#define JUMP_ROUNDS 8

static void jump_ready_cb(struct hf_session *js, int status, void *ctx);
static void jump_lost_cb(struct hf_session *js, int status, void *ctx);
static void jump_rearm(struct jump *j);
static void child_pump(struct hf_session *u);

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

void hf__jump_free_all(struct hf_engine *e) {
  for (struct jump *j = e->jumps, *n; j; j = n) {
    n = j->next;
    free(j->host.user); free(j->host.address); free(j->host.name);
    free(j->host.key_file); free(j->host.known_hosts);
    free(j);
  }
  e->jumps = NULL;
}

void hf__jump_closed_cb(struct hf_session *js, void *ctx) {
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
  hf__plan_auth(js);
  uv_timer_init(e->loop, &js->timer);
  js->timer.data = js;
  e->live++;
  e->bare_live++;
  js->state = HF_SS_QUEUED;
  j->sess = js;
  j->st = J_CONNECTING;
  uv_timer_start(&js->timer, hf__on_timer, 0, 0);
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
  if (!u->fwd) { hf__failf(u, HF_ESSH, "%s: cannot open a channel on the jump host %s", u->host->name, j->spec); return; }
  child_pump(u);
}

void hf__jump_attach(struct hf_session *s) {
  struct hf_engine *e = s->e;
  struct jump *j = jump_get(e, s->host);
  if (!j) { hf__failf(s, HF_ENOMEM, "%s: out of memory", s->host->name); return; }
  hf__set_state(s, HF_SS_CONNECTING);
  hf__deadline(s, e->o.timeout_ms);
  if (j->st == J_FAILED) {
    hf__failf(s, j->errcode ? j->errcode : HF_EUNREACH, "%s: jump host %s: %s", s->host->name, j->spec, j->err);
    return;
  }
  jump_link(j, s);
  if (j->st == J_IDLE) {
    int r = jump_connect(j);
    if (r < 0) { hf__failf(s, r, "%s: cannot start the jump host %s session", s->host->name, j->spec); return; }
  } else if (j->st == J_READY) {
    hf__deadline(j->sess, 0);   /* no longer lingering */
    child_start_fwd(s);
  }
}

/* Unlinks s from its bastion and frees the forwarding state. */
void hf__jump_detach(struct hf_session *s) {
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
      hf__deadline(j->sess, JUMP_LINGER_MS);
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
    if (!j->nusers && j->sess && !j->sess->closing) hf__deadline(j->sess, JUMP_LINGER_MS);
  } else {
    /* Not retried per host: a refused bastion would be refused 1000 times. */
    j->st = J_FAILED;
    j->errcode = status;
    snprintf(j->err, sizeof j->err, "%s", hf_session_error(js));
    for (int i = 0; i < n; i++)
      if (v[i]->jump == j && !v[i]->closing)
        hf__failf(v[i], status, "%s: jump host %s: %s", v[i]->host->name, j->spec, j->err);
    hf_session_close(js, hf__jump_closed_cb, j);
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
      hf__failf(v[i], HF_EUNREACH, "%s: lost the jump host %s: %s", v[i]->host->name, j->spec,
            hf_session_error(js));
  free(v);
  hf_session_close(js, hf__jump_closed_cb, j);
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
  hf__rearm(js);
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
      hf__failf(u, HF_EUNREACH, "%s: jump host %s cannot reach %s port %d: %s", u->host->name, j->spec,
            u->host->address, u->host->port, ssh_get_error(j->sess->ssh));
      return;
    }
    u->fwd_open = true;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
      hf__failf(u, HF_EIO, "%s: socketpair: %s", u->host->name, strerror(errno));
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
      hf__failf(u, HF_ENOMEM, "%s: out of memory", u->host->name);
      return;
    }
    u->ppoll->data = u;
    if (uv_poll_init_socket(e->loop, u->poll, sv[1]) < 0) {
      free(u->poll); u->poll = NULL;
      hf__failf(u, HF_EIO, "%s: cannot poll the forward socket", u->host->name);
      return;
    }
    u->poll->data = u;
    u->poll_events = 0;
    /* The socketpair is connected: on to the SSH handshake, whose banner
     * the pump below carries to the host. */
    hf__drive(u);
    if (u->closing || u->state == HF_SS_FAILED || !u->fwd) return;
  }
  for (int i = 0; i < 16; i++) {        /* bastion -> host */
    if (u->pin_off == u->pin_len && !u->pin_eof) {
      int n = ssh_channel_read_nonblocking(u->fwd, u->pin, PUMP_BUF, 0);
      if (n == SSH_EOF) { u->pin_eof = true; shutdown(u->pfd, SHUT_WR); break; }
      if (n < 0) {
        hf__failf(u, HF_EIO, "%s: forward channel through %s: %s", u->host->name, j->spec,
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
      hf__failf(u, HF_EIO, "%s: forward socket: %s", u->host->name, strerror(errno));
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
        hf__failf(u, HF_EIO, "%s: forward socket: %s", u->host->name, strerror(errno));
        return;
      }
      u->pout_len = (size_t)n;
      u->pout_off = 0;
    }
    if (u->pout_off >= u->pout_len) break;
    if (ssh_get_status(j->sess->ssh) & SSH_WRITE_PENDING) break;   /* bastion socket busy */
    int w = ssh_channel_write(u->fwd, u->pout + u->pout_off, (uint32_t)(u->pout_len - u->pout_off));
    if (w < 0) {
      hf__failf(u, HF_EIO, "%s: forward channel through %s: %s", u->host->name, j->spec,
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
int hf__jump_service(struct jump *j) {
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

/* The last host session is gone and its callbacks opened no other (a
 * rollout's next stage is opened from them): nobody is coming for the
 * idle bastions, so end their linger now rather than keep the loop alive. */
void hf__jump_linger_end(struct hf_engine *e) {
  for (struct jump *j = e->jumps; j; j = j->next)
    if (j->sess && !j->sess->closing && j->sess->state == HF_SS_READY && !j->nusers)
      uv_timer_start(&j->sess->timer, hf__on_timer, 0, 0);
}
