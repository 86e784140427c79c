/* agent.c: the agent's request loop: hello, then frames from stdin, validated, dispatched one at
 * a time, each answered by events and exactly one result; hostile input ends the session cleanly. */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_agent.h"

/* Session states; one request is handled at a time. */
enum hf_agent_state {
  HF_AG_START,    /* nothing sent yet */
  HF_AG_READY,    /* hello sent: waiting for a request frame */
  HF_AG_BUSY,     /* a request is being handled: no other frame is read */
  HF_AG_CLOSED    /* EOF or protocol error: exiting */
};

struct hf_agent {
  int in_fd, out_fd;
  bool out_dead;
  enum hf_agent_state state;
};

static void set_state(struct hf_agent *a, enum hf_agent_state s) {
  a->state = s;
}

/* Ends the session after a frame that breaks the protocol. */
static int proto_fail(struct hf_agent *a, int code, const char *detail) {
  hf__send_frame(a->out_fd, &a->out_dead, hf_msg_result_err(0, code, detail));
  set_state(a, HF_AG_CLOSED);
  return 3;
}

/* Handles one decoded frame (msg borrowed). Returns -1 to go on reading, or
 * the exit status. */
static int handle(struct hf_agent *a, json_t *msg) {
  char err[1024] = "";
  enum hf_msg_type type;
  const char *t;
  json_t *jid, *data = NULL;
  struct hf_req *r;
  int rc;

  if (a->state != HF_AG_READY) return proto_fail(a, HF_EPROTO, "frame while not ready");
  t = json_string_value(json_object_get(msg, "type"));
  if (t == NULL || strcmp(t, "request") != 0) {
    snprintf(err, sizeof err, "expected a request frame, got %s", t ? (strlen(t) < 40 ? t : "(long type)") : "no type");
    hf__printable(err);
    return proto_fail(a, HF_EPROTO, err);
  }
  /* Without a usable id there is no request to answer: the session ends.
   * With one, a bad operation or bad arguments fail that request only. */
  jid = json_object_get(msg, "id");
  if (!json_is_integer(jid) || json_integer_value(jid) <= 0)
    return proto_fail(a, HF_EPROTO, "request.id: expected an integer > 0");

  r = calloc(1, sizeof *r);
  if (r == NULL) return proto_fail(a, HF_ENOMEM, "out of memory");
  r->in_fd = a->in_fd;
  r->out_fd = a->out_fd;
  r->out_dead = &a->out_dead;
  r->id = (uint64_t)json_integer_value(jid);
  set_state(a, HF_AG_BUSY);
  rc = hf_msg_validate(msg, &type, err, sizeof err);
  if (rc == 0 && type != HF_MSG_REQUEST) rc = HF_EPROTO;
  if (rc != 0) {
    if (err[0] == '\0') snprintf(err, sizeof err, "%s", hf_strerror(rc));
    hf__send(r, hf_msg_result_err(r->id, rc, err));
    goto done;
  }
  r->op = json_string_value(json_object_get(msg, "op"));
  r->args = json_object_get(msg, "args");
  rc = hf__op_dispatch(r, &data);
  if (rc == 0) {
    hf__send(r, hf_msg_result_ok(r->id, data));
  } else {
    json_decref(data);
    if (r->msg[0] == '\0') snprintf(r->msg, sizeof r->msg, "%s", hf_strerror(rc));
    hf__printable(r->msg);
    hf__send(r, hf_msg_result_err(r->id, rc, r->msg));
  }
done:
  free(r);
  set_state(a, HF_AG_READY);
  return -1;
}

int hf_agent_run(int in_fd, int out_fd) {
  struct hf_agent a = { .in_fd = in_fd, .out_fd = out_fd, .out_dead = false, .state = HF_AG_START };
  struct hf_frame_decoder d;
  struct utsname un;
  char *buf;
  int status = 0;

  hf__cpu_at_start = hf__cpu_us();
  /* A controller that hangs up must not kill the agent mid-step: writes
   * fail instead, and the step still journals its outcome. */
  signal(SIGPIPE, SIG_IGN);
  /* Nor a hangup of the session: the step finishes and journals "done". */
  signal(SIGHUP, SIG_IGN);
  if (uname(&un) != 0) snprintf(un.machine, sizeof un.machine, "unknown");
  hf__send_frame(out_fd, &a.out_dead, hf_msg_hello(HF_VERSION, un.machine));
  if (a.out_dead) return 1;
  set_state(&a, HF_AG_READY);

  buf = malloc(65536);
  if (buf == NULL) return 1;
  hf_frame_decoder_init(&d, 0);
  for (;;) {
    ssize_t n = read(in_fd, buf, 65536);
    size_t off = 0;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { status = 1; break; }
    if (n == 0) {
      status = hf_frame_decoder_idle(&d) ? 0 : proto_fail(&a, HF_ETRUNC, "stdin ended inside a frame");
      break;
    }
    while (off < (size_t)n) {
      size_t used = 0;
      json_t *msg = NULL;
      int rc = hf_frame_feed(&d, buf + off, (size_t)n - off, &used, &msg);
      off += used;
      if (rc != 0) {
        status = proto_fail(&a, rc, rc == HF_ETOOBIG ? "frame larger than 1 MiB" : "frame is not one valid UTF-8 JSON object");
        goto out;
      }
      if (msg == NULL) {
        if (used == 0) break; /* defensive: never spin on a decoder that takes nothing */
        continue;
      }
      rc = handle(&a, msg);
      json_decref(msg);
      if (rc >= 0) { status = rc; goto out; }
    }
  }
out:
  set_state(&a, HF_AG_CLOSED);
  hf_frame_decoder_free(&d);
  free(buf);
  return status;
}
