/* frame.c: length-prefixed frames: the encoder and the incremental, bounded decoder. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_proto_int.h"

/* First allocation for a payload; later ones double, capped at the frame's
 * announced length. */
#define HF__FRAME_MIN_CAP 4096

void hf_frame_decoder_init(struct hf_frame_decoder *d, size_t max) {
  memset(d, 0, sizeof *d);
  d->max = (max == 0 || max > HF_PROTO_MAX_FRAME) ? HF_PROTO_MAX_FRAME : max;
}

void hf_frame_decoder_free(struct hf_frame_decoder *d) {
  if (d == NULL)
    return;
  free(d->buf);
  d->buf = NULL;
  d->cap = 0;
  d->have = 0;
}

bool hf_frame_decoder_idle(const struct hf_frame_decoder *d) {
  /* A broken stream never ends cleanly. */
  return d->error == 0 && d->hdr_have == 0 && d->have == 0;
}

/* Back to "between frames"; keeps error and max. */
static void hf__reset(struct hf_frame_decoder *d) {
  free(d->buf);
  d->buf = NULL;
  d->cap = 0;
  d->have = 0;
  d->hdr_have = 0;
  d->need = 0;
}

/* Records the sticky error; drops the partial payload, which can never be
 * used now. Returns err. */
static int hf__fail(struct hf_frame_decoder *d, int err, const char *detail) {
  hf__reset(d);
  d->error = err;
  snprintf(d->detail, sizeof d->detail, "%s", detail);
  return err;
}

/* Makes room for d->have + more payload bytes (more <= need - have). */
static int hf__reserve(struct hf_frame_decoder *d, size_t more) {
  size_t want = d->have + more, cap;
  char *nb;
  if (want <= d->cap)
    return 0;
  cap = d->cap != 0 ? d->cap : HF__FRAME_MIN_CAP;
  while (cap < want)
    cap *= 2;  /* cannot overflow: want <= need <= HF_PROTO_MAX_FRAME */
  if (cap > d->need)
    cap = d->need;
  if ((nb = realloc(d->buf, cap)) == NULL)
    return HF_ENOMEM;
  d->buf = nb;
  d->cap = cap;
  return 0;
}

/* Parses the complete payload into *out (new). Returns 0 or HF_EJSON with
 * the reason in detail (detailsz bytes). */
static int hf__parse(const char *buf, size_t n, json_t **out, char *detail, size_t detailsz) {
  const unsigned char *u = (const unsigned char *)buf;
  char safe[104];
  json_error_t jerr;
  json_t *v;
  size_t i, len;
  /* jansson checks UTF-8 too, but the rule is ours: keep it explicit, and
   * name the offset in the message. */
  for (i = 0; i < n; i += len) {
    if (u[i] == 0) {
      snprintf(detail, detailsz, "NUL byte at payload offset %zu", i);
      return HF_EJSON;
    }
    if ((len = hf__utf8_len(u + i, n - i)) == 0) {
      snprintf(detail, detailsz, "invalid UTF-8 at payload offset %zu", i);
      return HF_EJSON;
    }
  }
  v = json_loadb(buf, n, JSON_REJECT_DUPLICATES, &jerr);
  if (v == NULL) {
    /* jansson quotes the offending token, which came from the peer. */
    snprintf(detail, detailsz, "payload is not JSON: %s at offset %d",
             hf__sanitize(jerr.text, safe, sizeof safe), jerr.position);
    return HF_EJSON;
  }
  if (!json_is_object(v)) {
    json_decref(v);
    snprintf(detail, detailsz, "payload is JSON but not an object");
    return HF_EJSON;
  }
  *out = v;
  return 0;
}

int hf_frame_feed(struct hf_frame_decoder *d, const void *data, size_t len,
                  size_t *consumed, json_t **out) {
  const unsigned char *p = data;
  size_t used = 0, take, max;
  char why[sizeof d->detail];
  json_t *v = NULL;
  int r;
  if (consumed != NULL)
    *consumed = 0;
  if (out != NULL)
    *out = NULL;
  if (d == NULL || consumed == NULL || out == NULL || (data == NULL && len > 0))
    return HF_EINVAL;
  if (d->error != 0)
    return d->error;
  max = (d->max == 0 || d->max > HF_PROTO_MAX_FRAME) ? HF_PROTO_MAX_FRAME : d->max;
  while (used < len) {
    if (d->hdr_have < 4) {
      d->hdr[d->hdr_have++] = p[used++];
      if (d->hdr_have < 4)
        continue;
      d->need = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
                (uint32_t)d->hdr[2] << 8 | (uint32_t)d->hdr[3];
      *consumed = used;
      if (d->need > max) {
        snprintf(why, sizeof why, "frame header announces %lu bytes, limit is %zu",
                 (unsigned long)d->need, max);
        return hf__fail(d, HF_ETOOBIG, why);
      }
      if (d->need == 0)
        return hf__fail(d, HF_EJSON, "empty payload");
      continue;
    }
    take = len - used;
    if (take > d->need - d->have)
      take = d->need - d->have;
    if (hf__reserve(d, take) != 0) {
      *consumed = used;
      return hf__fail(d, HF_ENOMEM, "cannot allocate the frame payload");
    }
    memcpy(d->buf + d->have, p + used, take);
    d->have += take;
    used += take;
    if (d->have == d->need) {
      /* Frame complete: stop here, whatever follows belongs to the next one. */
      *consumed = used;
      r = hf__parse(d->buf, d->have, &v, why, sizeof why);
      if (r != 0)
        return hf__fail(d, r, why);
      hf__reset(d);
      *out = v;
      return 0;
    }
  }
  *consumed = used;
  return 0;
}

/* The encoder's buffer: 4 header bytes, then the payload as jansson writes
 * it, grown by doubling; past the frame limit the dump is stopped. */
struct enc_buf { char *b; size_t n, cap; bool big, nomem; };

static int enc_chunk(const char *buf, size_t size, void *data) {
  struct enc_buf *e = data;
  /* Once refused, always refused: jansson ignores the callback's answer
   * for an object's key and goes on with what follows. */
  if (e->big || e->nomem) return -1;
  if (size > HF_PROTO_MAX_FRAME + 4 - e->n) { e->big = true; return -1; }
  if (e->n + size > e->cap) {
    size_t cap = e->cap;
    while (cap < e->n + size) cap *= 2;
    char *nb = realloc(e->b, cap);
    if (!nb) { e->nomem = true; return -1; }
    e->b = nb;
    e->cap = cap;
  }
  memcpy(e->b + e->n, buf, size);
  e->n += size;
  return 0;
}

int hf_frame_encode(const json_t *msg, char **out, size_t *outlen) {
  /* One pass: sizing with json_dumpb first and writing after was two whole
   * dumps, about 2% of the controller's CPU per audited host. */
  struct enc_buf e = { .n = 4, .cap = 1024 };
  size_t n;
  if (out != NULL)
    *out = NULL;
  if (outlen != NULL)
    *outlen = 0;
  if (out == NULL || outlen == NULL || !json_is_object(msg))
    return HF_EINVAL;
  if ((e.b = malloc(e.cap)) == NULL)
    return HF_ENOMEM;
  /* The flags decide, not only jansson's result: a key it could not write
   * is not reported (jansson 2.14, do_dump), and the rest may still fit. */
  if (json_dump_callback(msg, enc_chunk, &e, JSON_COMPACT) != 0 || e.big || e.nomem || e.n == 4) {
    free(e.b);
    return e.big ? HF_ETOOBIG : e.nomem ? HF_ENOMEM : HF_EINVAL;
  }
  n = e.n - 4;
  e.b[0] = (char)(n >> 24);
  e.b[1] = (char)(n >> 16);
  e.b[2] = (char)(n >> 8);
  e.b[3] = (char)n;
  *out = e.b;
  *outlen = e.n;
  return 0;
}
