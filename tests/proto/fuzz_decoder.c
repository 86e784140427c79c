/* fuzz_decoder.c: libFuzzer target: arbitrary bytes through the frame decoder in data-derived chunks, then message validation. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Crash with a message: libFuzzer saves the input that got here. */
#define FUZZ_ASSERT(cond)                                                     \
  do {                                                                        \
    if (!(cond)) {                                                            \
      fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                \
    }                                                                         \
  } while (0)

static int sign(int x) {
  return (x > 0) - (x < 0);
}

static void check_message_text(const char *err, size_t errlen) {
  size_t i;
  FUZZ_ASSERT(memchr(err, '\0', errlen) != NULL);
  /* Everything a peer sent is escaped before it reaches a message. */
  for (i = 0; err[i] != '\0'; i++)
    FUZZ_ASSERT((unsigned char)err[i] >= 0x20 && (unsigned char)err[i] <= 0x7e);
}

/* A decoded message: validation never crashes, its message is clean, and the
 * message survives encode + decode unchanged. */
static void check_message(json_t *m) {
  struct hf_frame_decoder d;
  enum hf_msg_type t;
  char err[256], err2[256], *buf = NULL;
  size_t len = 0, used = 0;
  json_t *back = NULL;
  int r, r2;
  FUZZ_ASSERT(json_is_object(m));
  memset(err, 0x55, sizeof err);
  r = hf_msg_validate(m, &t, err, sizeof err);
  FUZZ_ASSERT(r == 0 || (r > HF__EFIRST && r < HF__ELAST));
  check_message_text(err, sizeof err);
  r2 = hf_msg_validate(m, NULL, err2, sizeof err2);
  FUZZ_ASSERT(r == r2 && strcmp(err, err2) == 0);
  if (r == 0)
    FUZZ_ASSERT(t == HF_MSG_HELLO || t == HF_MSG_REQUEST || t == HF_MSG_EVENT || t == HF_MSG_RESULT);
  r = hf_frame_encode(m, &buf, &len);
  /* Re-encoding may grow a payload (1e1 -> 10.0) past the limit. */
  FUZZ_ASSERT(r == 0 || r == HF_ETOOBIG);
  if (r != 0)
    return;
  hf_frame_decoder_init(&d, 0);
  r = hf_frame_feed(&d, buf, len, &used, &back);
  FUZZ_ASSERT(r == 0 && used == len && back != NULL);
  FUZZ_ASSERT(json_equal(m, back));
  FUZZ_ASSERT(hf_frame_decoder_idle(&d));
  json_decref(back);
  hf_frame_decoder_free(&d);
  free(buf);
}

/* The validators see the raw input as one string too. */
static void check_validators(const uint8_t *data, size_t size) {
  static const char *const ref[] = { "1.0", "4.1.0rc1", "1!0.1", "1.0+abc.1", "1.0.post1.dev2" };
  char s[300];
  size_t n = size < sizeof s - 1 ? size : sizeof s - 1, i;
  memcpy(s, data, n);
  s[n] = '\0';
  (void)hf_valid_pkgname(s);
  (void)hf_valid_pkgpin(s);
  (void)hf_valid_abspath(s);
  (void)hf_valid_service_name(s);
  (void)hf_valid_url(s);
  (void)hf_valid_id(s);
  FUZZ_ASSERT(hf_version_cmp(s, s) == 0);
  for (i = 0; i < sizeof ref / sizeof ref[0]; i++)
    FUZZ_ASSERT(sign(hf_version_cmp(s, ref[i])) == -sign(hf_version_cmp(ref[i], s)));
  if (hf_valid_version(s))
    FUZZ_ASSERT(hf_version_cmp(s, "not a version") > 0);
}

/* Input layout: byte 0 picks the chunking (0: all at once, 1: one byte at a
 * time, n: pseudo-random chunks of 1..n bytes seeded by the input), byte 1
 * the payload limit (0: the protocol's; else byte*16), the rest is the
 * stream. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct hf_frame_decoder d;
  const uint8_t *s;
  size_t n, off = 0, used, chunk;
  uint32_t rng;
  int mode, err = 0, frames = 0;
  json_t *m;
  if (size < 2)
    return 0;
  check_validators(data + 2, size - 2);
  mode = data[0];
  hf_frame_decoder_init(&d, (size_t)data[1] * 16);
  s = data + 2;
  n = size - 2;
  rng = 2166136261u ^ (uint32_t)size ^ ((uint32_t)mode << 8);
  while (off < n) {
    if (mode == 0) {
      chunk = n - off;
    } else if (mode == 1) {
      chunk = 1;
    } else {
      rng ^= rng << 13;
      rng ^= rng >> 17;
      rng ^= rng << 5;
      chunk = 1 + rng % (uint32_t)mode;
      if (chunk > n - off)
        chunk = n - off;
    }
    used = (size_t)-1;
    m = (json_t *)1;
    err = hf_frame_feed(&d, s + off, chunk, &used, &m);
    FUZZ_ASSERT(used <= chunk);
    if (err != 0) {
      FUZZ_ASSERT(m == NULL);
      FUZZ_ASSERT(err == HF_ETOOBIG || err == HF_EJSON || err == HF_ENOMEM);
      FUZZ_ASSERT(d.error == err && d.buf == NULL && d.detail[0] != '\0');
      FUZZ_ASSERT(!hf_frame_decoder_idle(&d));
      check_message_text(d.detail, sizeof d.detail);
      off += used;
      break;
    }
    if (m == NULL) {
      /* No frame completed, so the decoder took the whole chunk. */
      FUZZ_ASSERT(used == chunk);
    } else {
      FUZZ_ASSERT(used > 0);
      FUZZ_ASSERT(hf_frame_decoder_idle(&d));
      check_message(m);
      json_decref(m);
      frames++;
    }
    FUZZ_ASSERT(d.have <= d.need && d.need <= d.max && d.cap <= d.need);
    off += used;
  }
  if (err != 0) {
    /* Sticky: whatever follows gets the same error and is not consumed. */
    int again = hf_frame_feed(&d, s, n, &used, &m);
    FUZZ_ASSERT(again == err && used == 0 && m == NULL);
  }
  FUZZ_ASSERT(off <= n);
  hf_frame_decoder_free(&d);
  return 0;
}
