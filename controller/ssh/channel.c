/* channel.c: the agent's channel: opening channels and running commands on them, reading its
 * stderr, and the framed protocol both ways (requests out, hello/events/results in). */
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

static int handle_frame(struct hf_session *s, json_t *msg);

/* Keeps the tail of a channel's stderr for messages; drains it so the
 * window never stalls. Returns <0 on a channel error. */
int hf__drain_stderr(struct hf_session *s, ssh_channel c) {
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

int hf__in_chanopen(struct hf_session *s, ssh_channel c, enum hf_sess_state next) {
  int rc = ssh_channel_open_session(c);
  if (rc == SSH_AGAIN) return 1;
  if (rc != SSH_OK) { hf__fail_ssh(s, HF_ESSH, "opening an exec channel"); return -1; }
  hf__set_state(s, next);
  return 0;
}

int hf__in_exec(struct hf_session *s, ssh_channel c, const char *cmd, enum hf_sess_state next) {
  int rc = ssh_channel_request_exec(c, cmd);
  if (rc == SSH_AGAIN) return 1;
  if (rc != SSH_OK) { hf__fail_ssh(s, HF_EEXEC, "exec request"); return -1; }
  s->line_len = 0;
  s->tail_len = 0;
  hf__set_state(s, next);
  return 0;
}

/* Reads up to len bytes of c's stdout. Returns bytes (>0), 0 for "again",
 * SSH_EOF, or another negative for an error (after failing the session). */
int hf__chan_read(struct hf_session *s, ssh_channel c, char *buf, size_t len) {
  if (hf__drain_stderr(s, c) < 0) { hf__fail_ssh(s, HF_EIO, "reading stderr"); return SSH_ERROR; }
  int n = ssh_channel_read_nonblocking(c, buf, (uint32_t)len, 0);
  if (n == SSH_EOF || n >= 0) return n;
  hf__fail_ssh(s, HF_EIO, "connection lost");
  return SSH_ERROR;
}

/* Feeds bytes to the frame decoder and handles each frame. Returns 0, or -1
 * when the session failed or was closed by a callback. */
int hf__feed(struct hf_session *s, const char *buf, size_t n) {
  size_t off = 0;
  while (off < n) {
    size_t used = 0;
    json_t *msg = NULL;
    int r = hf_frame_feed(&s->dec, buf + off, n - off, &used, &msg);
    if (r < 0) {
      hf__failf(s, HF_EPROTO, "%s: agent sent a bad frame: %s (%s)", s->host->name,
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

/* Reads agent frames (hello, ready, busy). */
int hf__in_frames(struct hf_session *s) {
  char buf[READ_CHUNK];
  enum hf_sess_state st = s->state;
  for (int i = 0;; i++) {
    if (i == 64) { s->kick = true; return 1; }   /* a chatty agent must not hold the loop */
    int n = hf__chan_read(s, s->ch, buf, sizeof buf);
    if (n == 0) return 1;
    if (n == SSH_EOF) {
      if (st == HF_SS_HELLO) hf__set_err(s, HF_EPROTO, "%s: the agent exited before its hello", s->host->name);
      else hf__set_err(s, HF_EIO, "%s: the agent exited or the connection closed", s->host->name);
      hf__err_add_tail(s);
      hf__sess_fail(s);
      return -1;
    }
    if (n < 0) return -1;
    if (hf__feed(s, buf, (size_t)n) < 0) return -1;
    if (s->state != st) return 0;   /* hello done, result delivered, or closed */
  }
}

int hf__pump_out(struct hf_session *s) {
  while (s->out_off < s->out_len) {
    /* What libssh really holds unsent (ssh_get_status), not its POLLOUT
     * interest, which stays set after any packet until its own poll runs:
     * a request made on the agent's hello (a window adjust just sent) went
     * out one loop iteration and two poll changes later. */
    if (ssh_get_status(s->ssh) & SSH_WRITE_PENDING) return 0;
    uint32_t win = ssh_channel_window_size(s->ch);
    if (win == 0) return 0;
    size_t n = s->out_len - s->out_off;
    if (n > win) n = win;
    if (n > UPLOAD_CHUNK) n = UPLOAD_CHUNK;
    int w = ssh_channel_write(s->ch, s->out + s->out_off, (uint32_t)n);
    if (w < 0) { hf__fail_ssh(s, HF_EIO, "sending a request"); return -1; }
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
    hf__failf(s, HF_EPROTO, "%s: agent sent an invalid message: %s", s->host->name, why);
    return -1;
  }
  if (s->state == HF_SS_HELLO) {
    if (t != HF_MSG_HELLO) {
      hf__failf(s, HF_EPROTO, "%s: agent did not start with hello", s->host->name);
      return -1;
    }
    json_int_t proto = json_integer_value(json_object_get(msg, "proto"));
    const char *ver = json_string_value(json_object_get(msg, "agent"));
    snprintf(s->agent_version, sizeof s->agent_version, "%s", ver ? ver : "?");
    if (proto != HF_PROTO_VERSION) {
      hf__failf(s, HF_EVERSION, "%s: the agent speaks protocol %lld, this hubfleet speaks %d; "
            "use a hubfleet and hubfleet-agent from the same release", s->host->name,
            (long long)proto, HF_PROTO_VERSION);
      return -1;
    }
    hf__deadline(s, 0);
    hf__set_state(s, HF_SS_READY);
    s->ready_fired = true;
    s->ready_cb(s, 0, s->ctx);
    return 0;
  }
  if (s->state != HF_SS_BUSY) {
    hf__failf(s, HF_EPROTO, "%s: agent sent a frame while no request was in flight", s->host->name);
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
      hf__failf(s, HF_EPROTO, "%s: agent refused the request stream: %s", s->host->name,
            text ? text : "protocol error");
      return -1;
    }
    hf_result_cb cb = s->res_cb;
    void *ctx = s->req_ctx;
    s->res_cb = NULL;
    s->ev_cb = NULL;
    hf__deadline(s, 0);
    hf__set_state(s, HF_SS_READY);
    cb(s, code, ok ? json_object_get(msg, "data") : NULL, text, ctx);
    return s->state == HF_SS_CLOSING || s->state == HF_SS_FAILED ? -1 : 0;
  }
  hf__failf(s, HF_EPROTO, "%s: agent sent a frame for request %lld while %llu was in flight",
        s->host->name, (long long)id, (unsigned long long)s->req_id);
  return -1;
}
