/* events.c: what a request sends while it runs: frames out (a result that cannot be framed
 * becomes an error result), its event lines (printable ASCII only) and progress. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_int.h"

void hf__send_frame(int fd, bool *dead, json_t *msg) {
  char *buf = NULL;
  size_t len = 0;
  int rc;
  if (msg == NULL) return;
  if (*dead) { json_decref(msg); return; }
  rc = hf_frame_encode(msg, &buf, &len);
  if (rc != 0 && strcmp(json_string_value(json_object_get(msg, "type")) ?: "", "result") == 0) {
    /* A result must always arrive, or the controller waits for nothing:
     * one too big to frame becomes an error result. */
    json_t *e = hf_msg_result_err((uint64_t)json_integer_value(json_object_get(msg, "id")), rc,
                                  "the result is larger than the protocol's frame limit");
    free(buf);
    buf = NULL;
    rc = e ? hf_frame_encode(e, &buf, &len) : HF_ENOMEM;
    json_decref(e);
  }
  if (rc == 0 && hf_write_all(fd, buf, len) != 0) *dead = true;
  free(buf);
  json_decref(msg);
}

void hf__send(struct hf_req *r, json_t *msg) {
  hf__send_frame(r->out_fd, r->out_dead, msg);
}

/* Event text must be valid UTF-8 for the frame to encode: replace anything
 * that is not printable ASCII or tab (tools print colours and locales). */
void hf__printable(char *s) {
  for (; *s; s++)
    if (((unsigned char)*s < 0x20 && *s != '\t') || (unsigned char)*s > 0x7e) *s = '?';
}

void hf__event(struct hf_req *r, const char *level, const char *fmt, ...) {
  char text[2048];
  va_list ap;
  if (*r->out_dead) return;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  hf__printable(text);
  hf__send(r, hf_msg_event_text(r->id, level, text));
}

void hf__progress(struct hf_req *r, const char *step, int64_t done, int64_t total) {
  if (*r->out_dead) return;
  hf__send(r, hf_msg_event_progress(r->id, step, done, total));
}
