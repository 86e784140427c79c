/* test_proto.c: unit tests for proto/: error table, frames, messages, validators, data-driven cases. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_proto.h"

static int failures;
static int checks;

#define CHECK(cond)                                                        \
  do {                                                                     \
    checks++;                                                              \
    if (!(cond)) {                                                         \
      failures++;                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                      \
  } while (0)

#define CHECKF(cond, ...)                                                  \
  do {                                                                     \
    checks++;                                                              \
    if (!(cond)) {                                                         \
      failures++;                                                          \
      fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
    }                                                                      \
  } while (0)

/* ---- helpers ---------------------------------------------------------------- */

/* Reads a whole file into *out (new, free()); returns its size or -1. */
static long read_file(const char *path, char **out) {
  FILE *f = fopen(path, "rb");
  long n;
  char *buf;
  *out = NULL;
  if (f == NULL)
    return -1;
  if (fseek(f, 0, SEEK_END) != 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0 ||
      (buf = malloc((size_t)n + 1)) == NULL) {
    fclose(f);
    return -1;
  }
  if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
    free(buf);
    fclose(f);
    return -1;
  }
  buf[n] = '\0';
  fclose(f);
  *out = buf;
  return n;
}

/* Frames raw payload bytes (no JSON check) into *out (new). */
static size_t frame_raw(const char *payload, size_t n, char **out) {
  char *b = malloc(n + 4);
  if (b == NULL)
    abort();
  b[0] = (char)(n >> 24);
  b[1] = (char)(n >> 16);
  b[2] = (char)(n >> 8);
  b[3] = (char)n;
  memcpy(b + 4, payload, n);
  *out = b;
  return n + 4;
}

/* Feeds a whole buffer, collecting every completed message into msgs (new
 * references, at most nmax). Checks the decoder's contract on every call.
 * Returns the first error (0 if none); *count gets the messages seen. */
static int feed_all(struct hf_frame_decoder *d, const char *data, size_t len, json_t **msgs,
                    size_t nmax, size_t *count) {
  size_t off = 0, used;
  json_t *m;
  int r;
  while (off < len) {
    r = hf_frame_feed(d, data + off, len - off, &used, &m);
    CHECK(used <= len - off);
    if (r != 0) {
      CHECK(m == NULL);
      return r;
    }
    CHECK(used > 0);
    if (used == 0)
      return -1;
    off += used;
    if (m != NULL) {
      if (*count < nmax)
        msgs[*count] = m;
      else
        json_decref(m);
      (*count)++;
    } else {
      /* No frame completed: the whole chunk must have been taken. */
      CHECK(off == len);
    }
  }
  return 0;
}

static bool printable_ascii(const char *s) {
  for (; *s != '\0'; s++)
    if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
      return false;
  return true;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Lists dir's files ending in suffix, sorted; returns count, *names new. */
static size_t list_dir(const char *dir, const char *suffix, char ***names) {
  DIR *dh = opendir(dir);
  struct dirent *e;
  size_t n = 0, cap = 0, sl = strlen(suffix);
  char **v = NULL;
  *names = NULL;
  if (dh == NULL) {
    fprintf(stderr, "cannot open %s: %s\n", dir, strerror(errno));
    return 0;
  }
  while ((e = readdir(dh)) != NULL) {
    size_t l = strlen(e->d_name);
    if (l <= sl || strcmp(e->d_name + l - sl, suffix) != 0)
      continue;
    if (n == cap) {
      cap = cap ? cap * 2 : 64;
      if ((v = realloc(v, cap * sizeof *v)) == NULL)
        abort();
    }
    if ((v[n++] = strdup(e->d_name)) == NULL)
      abort();
  }
  closedir(dh);
  if (n > 0)
    qsort(v, n, sizeof *v, cmp_str);
  *names = v;
  return n;
}

static void free_names(char **v, size_t n) {
  size_t i;
  for (i = 0; i < n; i++)
    free(v[i]);
  free(v);
}

/* ---- error table ---------------------------------------------------------------- */

static void test_errors(void) {
  int e, f, n = 0;
  for (e = HF__EFIRST + 1; e < HF__ELAST; e++, n++) {
    const char *code = hf_err_code(e), *name = hf_err_name(e), *msg = hf_strerror(e);
    CHECKF(e < 0, "%d", e);
    CHECKF(strncmp(name, "HF_E", 4) == 0, "%s", name);
    CHECKF(strcmp(code, "unknown") != 0 && code[0] != '\0', "%d", e);
    CHECKF(strcmp(msg, "unknown error") != 0 && msg[0] != '\0', "%d", e);
    CHECKF(hf_err_from_code(code) == e, "%s -> %d, not %d", code, hf_err_from_code(code), e);
    for (f = e + 1; f < HF__ELAST; f++) {
      CHECKF(strcmp(code, hf_err_code(f)) != 0, "%s shared by %d and %d", code, e, f);
      CHECKF(strcmp(name, hf_err_name(f)) != 0, "%s shared", name);
    }
  }
  CHECK(n == HF__ELAST - HF__EFIRST - 1);
  CHECK(n >= 30);
  CHECK(strcmp(hf_err_name(HF_EPROTO), "HF_EPROTO") == 0);
  CHECK(strcmp(hf_err_code(HF_EBADARG), "bad_argument") == 0);
  CHECK(strcmp(hf_err_code(HF_ETOOBIG), "frame_too_big") == 0);
  CHECK(strcmp(hf_strerror(HF_ETRUNC), "stream ended inside a frame") == 0);
  CHECK(strcmp(hf_err_name(HF__EFIRST), "HF_UNKNOWN") == 0);
  CHECK(strcmp(hf_err_name(HF__ELAST), "HF_UNKNOWN") == 0);
  CHECK(strcmp(hf_err_code(5), "unknown") == 0);
  CHECK(strcmp(hf_err_code(-1), "unknown") == 0);
  CHECK(strcmp(hf_strerror(-999999), "unknown error") == 0);
  CHECK(strcmp(hf_err_code(HF_OK), "ok") == 0);
  CHECK(hf_err_from_code("no_such_code") == HF_EPROTO);
  CHECK(hf_err_from_code("") == HF_EPROTO);
  CHECK(hf_err_from_code(NULL) == HF_EPROTO);
  CHECK(hf_err_from_code("timeout") == HF_ETIMEDOUT);
}

/* ---- builders and round trips ----------------------------------------------------- */

/* Validates m as type t, encodes, decodes in one feed and checks equality. */
static void round_trip(json_t *m, enum hf_msg_type t, const char *what) {
  struct hf_frame_decoder d;
  char err[256], *buf = NULL;
  size_t len = 0, used = 0;
  enum hf_msg_type got = (enum hf_msg_type)-1;
  json_t *back = NULL;
  int r;
  CHECKF(m != NULL, "%s", what);
  if (m == NULL)
    return;
  r = hf_msg_validate(m, &got, err, sizeof err);
  CHECKF(r == 0 && got == t, "%s: %s: %s", what, hf_err_name(r), err);
  r = hf_frame_encode(m, &buf, &len);
  CHECKF(r == 0 && buf != NULL && len > 4, "%s: %s", what, hf_err_name(r));
  if (r == 0) {
    uint32_t n = (uint32_t)(unsigned char)buf[0] << 24 | (uint32_t)(unsigned char)buf[1] << 16 |
                 (uint32_t)(unsigned char)buf[2] << 8 | (unsigned char)buf[3];
    CHECK(n == len - 4);
    hf_frame_decoder_init(&d, 0);
    r = hf_frame_feed(&d, buf, len, &used, &back);
    CHECKF(r == 0 && used == len && back != NULL, "%s: %s %s", what, hf_err_name(r), d.detail);
    CHECK(hf_frame_decoder_idle(&d));
    CHECKF(back != NULL && json_equal(m, back), "%s", what);
    if (back != NULL) {
      r = hf_msg_validate(back, &got, err, sizeof err);
      CHECKF(r == 0 && got == t, "%s (decoded): %s", what, err);
    }
    json_decref(back);
    hf_frame_decoder_free(&d);
  }
  free(buf);
  json_decref(m);
}

static void test_builders(void) {
  json_t *m, *args, *hub;
  char err[256];
  int r;

  round_trip(hf_msg_hello("0.1.0", "x86_64"), HF_MSG_HELLO, "hello");
  m = hf_msg_hello("0.1.0", "aarch64");
  CHECK(json_integer_value(json_object_get(m, "proto")) == HF_PROTO_VERSION);
  json_decref(m);

  hub = json_pack("{s:s, s:s, s:s, s:s}", "hub_env", "/opt/jhub", "config",
                  "/etc/jupyterhub/jupyterhub_config.py", "db", "sqlite:////srv/jh.sqlite",
                  "service", "systemd:jupyterhub");
  args = json_pack("{s:O, s:s, s:s}", "hub", hub, "rollout", "r1", "target", "4.1.0");
  round_trip(hf_msg_request(42, "install", args), HF_MSG_REQUEST, "request install");
  args = json_pack("{s:O}", "hub", hub);
  round_trip(hf_msg_request(1, "facts", args), HF_MSG_REQUEST, "request facts");
  json_decref(hub);

  /* args NULL becomes {}: facts then lacks its required hub. */
  m = hf_msg_request(3, "facts", NULL);
  CHECK(json_is_object(json_object_get(m, "args")) && json_object_size(json_object_get(m, "args")) == 0);
  r = hf_msg_validate(m, NULL, err, sizeof err);
  CHECKF(r == HF_EMISSING && strstr(err, "request.args.hub") != NULL, "%s", err);
  json_decref(m);
  /* Request id 0 is refused (ids > 0); so is an unknown op. */
  m = hf_msg_request(0, "facts", NULL);
  CHECK(hf_msg_validate(m, NULL, err, sizeof err) == HF_EPROTO);
  json_decref(m);
  m = hf_msg_request(UINT64_MAX, "facts", NULL);
  CHECK(hf_msg_validate(m, NULL, err, sizeof err) == HF_EPROTO);
  json_decref(m);

  round_trip(hf_msg_event_text(42, "info", "Collecting jupyterhub"), HF_MSG_EVENT, "event text");
  round_trip(hf_msg_event_text(42, "warn", ""), HF_MSG_EVENT, "event empty text");
  round_trip(hf_msg_event_progress(42, "install", 1, 3), HF_MSG_EVENT, "event progress");
  /* Command output that is not UTF-8 still makes a valid event. */
  m = hf_msg_event_text(42, "debug", "caf\xe9 \xff ok");
  CHECK(m != NULL);
  if (m != NULL)
    CHECK(strcmp(json_string_value(json_object_get(m, "text")), "caf\xef\xbf\xbd \xef\xbf\xbd ok") == 0);
  round_trip(m, HF_MSG_EVENT, "event latin-1 text");
  m = hf_msg_event_text(1, "loud", "x");
  CHECK(hf_msg_validate(m, NULL, err, sizeof err) == HF_EPROTO);
  json_decref(m);

  round_trip(hf_msg_result_ok(42, NULL), HF_MSG_RESULT, "result ok {}");
  round_trip(hf_msg_result_ok(42, json_pack("{s:b, s:[i]}", "running", 1, "n", 5)), HF_MSG_RESULT,
             "result ok data");
  m = hf_msg_result_err(0, HF_ETOOBIG, NULL);
  CHECK(strcmp(json_string_value(json_object_get(json_object_get(m, "error"), "code")),
               "frame_too_big") == 0);
  CHECK(strcmp(json_string_value(json_object_get(json_object_get(m, "error"), "message")),
               hf_strerror(HF_ETOOBIG)) == 0);
  round_trip(m, HF_MSG_RESULT, "result err");
  round_trip(hf_msg_result_err(9, HF_EBADARG, "args.target: bad"), HF_MSG_RESULT, "result err msg");

  /* Encoder limits. */
  {
    char *big = malloc(HF_PROTO_MAX_FRAME + 1), *buf = (char *)1;
    size_t len = 99;
    memset(big, 'x', HF_PROTO_MAX_FRAME);
    big[HF_PROTO_MAX_FRAME] = '\0';
    m = hf_msg_event_text(1, "info", big);
    CHECK(hf_frame_encode(m, &buf, &len) == HF_ETOOBIG && buf == NULL && len == 0);
    json_decref(m);
    free(big);
    /* The limit reached inside a key, with the rest fitting after it:
     * jansson does not report a key it could not write. */
    big = malloc(HF_PROTO_MAX_FRAME);
    memset(big, 'x', HF_PROTO_MAX_FRAME - 12);
    big[HF_PROTO_MAX_FRAME - 12] = '\0';
    m = json_object();
    json_object_set_new(m, "a", json_string(big));
    json_object_set_new(m, "bbbbbbbbbbbbbbbbbbbb", json_integer(1));
    buf = (char *)1;
    CHECK(hf_frame_encode(m, &buf, &len) == HF_ETOOBIG && buf == NULL && len == 0);
    json_decref(m);
    /* Exactly the limit passes; one byte more does not. */
    for (size_t extra = 0; extra < 2; extra++) {
      size_t n = HF_PROTO_MAX_FRAME - 8 + extra;   /* {"a":"…"} is 8 bytes around the string */
      memset(big, 'y', n);
      big[n] = '\0';
      m = json_object();
      json_object_set_new(m, "a", json_string(big));
      int r2 = hf_frame_encode(m, &buf, &len);
      if (extra == 0) CHECK(r2 == 0 && len == HF_PROTO_MAX_FRAME + 4 && (unsigned char)buf[1] == 0x10);
      else CHECK(r2 == HF_ETOOBIG && buf == NULL && len == 0);
      if (r2 == 0) free(buf);
      json_decref(m);
    }
    free(big);
    m = json_array();
    CHECK(hf_frame_encode(m, &buf, &len) == HF_EINVAL && buf == NULL);
    json_decref(m);
    CHECK(hf_frame_encode(NULL, &buf, &len) == HF_EINVAL);
  }
}

/* ---- data-driven cases -------------------------------------------------------------- */

/* Decodes the file's bytes as one frame's payload and validates the message.
 * Returns the first error; detail (new-less, in err) explains it. */
static int decode_and_validate(const char *payload, size_t n, char *err, size_t errlen) {
  struct hf_frame_decoder d;
  char *frame;
  size_t len = frame_raw(payload, n, &frame), used = 0;
  json_t *m = NULL;
  int r;
  hf_frame_decoder_init(&d, 0);
  r = hf_frame_feed(&d, frame, len, &used, &m);
  if (r != 0) {
    CHECK(m == NULL && used == len);
    snprintf(err, errlen, "%s", d.detail);
  } else {
    CHECK(m != NULL && used == len);
    r = hf_msg_validate(m, NULL, err, errlen);
  }
  json_decref(m);
  hf_frame_decoder_free(&d);
  free(frame);
  return r;
}

static void test_cases(const char *datadir) {
  char path[4096], err[512], **names;
  size_t n, i;
  int r;

  snprintf(path, sizeof path, "%s/valid", datadir);
  n = list_dir(path, ".json", &names);
  CHECKF(n >= 15, "only %zu valid cases in %s", n, path);
  for (i = 0; i < n; i++) {
    char *data;
    long len;
    snprintf(path, sizeof path, "%s/valid/%s", datadir, names[i]);
    len = read_file(path, &data);
    CHECKF(len > 0, "%s", path);
    if (len <= 0)
      continue;
    err[0] = '\0';
    r = decode_and_validate(data, (size_t)len, err, sizeof err);
    CHECKF(r == 0, "valid/%s: %s: %s", names[i], hf_err_code(r), err);
    free(data);
  }
  free_names(names, n);

  snprintf(path, sizeof path, "%s/invalid", datadir);
  n = list_dir(path, ".json", &names);
  CHECKF(n >= 25, "only %zu invalid cases in %s", n, path);
  for (i = 0; i < n; i++) {
    char *data, *expect, *nl, *sub;
    long len;
    size_t base = strlen(names[i]) - strlen(".json");
    snprintf(path, sizeof path, "%s/invalid/%s", datadir, names[i]);
    len = read_file(path, &data);
    snprintf(path, sizeof path, "%s/invalid/%.*s.expect", datadir, (int)base, names[i]);
    CHECKF(read_file(path, &expect) > 0, "%s missing", path);
    if (len < 0 || expect == NULL) {
      free(data);
      free(expect);
      continue;
    }
    /* NAME.expect: the wire code on line 1, a substring of the message on line 2. */
    nl = strchr(expect, '\n');
    CHECKF(nl != NULL, "%s: no second line", path);
    if (nl == NULL) {
      free(data);
      free(expect);
      continue;
    }
    *nl = '\0';
    sub = nl + 1;
    if ((nl = strchr(sub, '\n')) != NULL)
      *nl = '\0';
    err[0] = '\0';
    r = decode_and_validate(data, (size_t)len, err, sizeof err);
    CHECKF(r != 0 && strcmp(hf_err_code(r), expect) == 0, "invalid/%s: want %s, got %s (%s)",
           names[i], expect, r == 0 ? "success" : hf_err_code(r), err);
    CHECKF(strstr(err, sub) != NULL, "invalid/%s: message \"%s\" lacks \"%s\"", names[i], err, sub);
    if (getenv("HF_TEST_VERBOSE") != NULL)
      printf("invalid/%-32s %-14s %s\n", names[i], hf_err_code(r), err);
    CHECKF(printable_ascii(err), "invalid/%s: message not printable ASCII", names[i]);
    CHECKF(strlen(err) < 400, "invalid/%s: message too long (%zu)", names[i], strlen(err));
    free(data);
    free(expect);
  }
  free_names(names, n);
}

/* ---- framing ---------------------------------------------------------------------------- */

/* A stream of several frames of different types and sizes; *out new. */
static size_t make_stream(char **out, json_t **msgs, size_t nmsgs) {
  size_t i, total = 0;
  char *all = NULL;
  for (i = 0; i < nmsgs; i++) {
    char *b;
    size_t l;
    if (hf_frame_encode(msgs[i], &b, &l) != 0)
      abort();
    if ((all = realloc(all, total + l)) == NULL)
      abort();
    memcpy(all + total, b, l);
    total += l;
    free(b);
  }
  *out = all;
  return total;
}

static void check_stream(const char *stream, size_t len, json_t **want, size_t nwant,
                          const size_t *cuts, size_t ncuts, const char *what) {
  struct hf_frame_decoder d;
  json_t *got[16] = { 0 };
  size_t count = 0, i, prev = 0;
  int r = 0;
  hf_frame_decoder_init(&d, 0);
  for (i = 0; i <= ncuts && r == 0; i++) {
    size_t end = i < ncuts ? cuts[i] : len;
    r = feed_all(&d, stream + prev, end - prev, got, 16, &count);
    prev = end;
  }
  CHECKF(r == 0, "%s: %s", what, hf_err_name(r));
  CHECKF(count == nwant, "%s: %zu messages, want %zu", what, count, nwant);
  for (i = 0; i < count && i < nwant; i++)
    CHECKF(json_equal(got[i], want[i]), "%s: message %zu differs", what, i);
  CHECK(hf_frame_decoder_idle(&d));
  for (i = 0; i < count && i < 16; i++)
    json_decref(got[i]);
  hf_frame_decoder_free(&d);
}

static void test_chunking(void) {
  json_t *msgs[5];
  char *stream, label[64];
  size_t len, k, j, nm = 5;
  unsigned seed = 12345;
  msgs[0] = hf_msg_hello("0.1.0", "x86_64");
  msgs[1] = hf_msg_event_text(1, "info", "one \xe4\xb8\xad two");
  msgs[2] = hf_msg_event_progress(1, "install", 2, 3);
  msgs[3] = hf_msg_result_ok(1, json_pack("{s:s}", "k", "v"));
  msgs[4] = hf_msg_result_err(2, HF_ECMD, "pip exited with status 1");
  len = make_stream(&stream, msgs, nm);

  /* Every split point, including 0 and len. */
  for (k = 0; k <= len; k++) {
    snprintf(label, sizeof label, "split at %zu", k);
    check_stream(stream, len, msgs, nm, &k, 1, label);
  }
  /* Every pair of split points over the first two frames' span. */
  for (k = 0; k < 60 && k <= len; k++)
    for (j = k; j < 60 && j <= len; j++) {
      size_t cuts[2] = { k, j };
      snprintf(label, sizeof label, "split at %zu,%zu", k, j);
      check_stream(stream, len, msgs, nm, cuts, 2, label);
    }
  /* One byte at a time, with idle checked at every byte. */
  {
    struct hf_frame_decoder d;
    size_t i, count = 0, used, boundary = 0, fi = 0;
    json_t *m;
    hf_frame_decoder_init(&d, 0);
    for (i = 0; i < len; i++) {
      int r = hf_frame_feed(&d, stream + i, 1, &used, &m);
      CHECK(r == 0 && used == 1);
      if (i == boundary)
        CHECK(!hf_frame_decoder_idle(&d));
      if (m != NULL) {
        char *b;
        size_t l;
        CHECK(json_equal(m, msgs[count]));
        hf_frame_encode(msgs[fi++], &b, &l);
        free(b);
        boundary += l;
        CHECKF(i + 1 == boundary, "frame %zu ended at %zu, want %zu", count, i + 1, boundary);
        CHECK(hf_frame_decoder_idle(&d));
        count++;
        json_decref(m);
      } else {
        CHECK(!hf_frame_decoder_idle(&d));
      }
    }
    CHECK(count == nm);
    hf_frame_decoder_free(&d);
  }
  /* Random chunk sizes. */
  for (k = 0; k < 200; k++) {
    size_t cuts[8], c, prev = 0;
    for (c = 0; c < 8; c++) {
      seed = seed * 1103515245u + 12345u;
      prev += (seed >> 16) % (len / 4 + 1);
      cuts[c] = prev < len ? prev : len;
    }
    check_stream(stream, len, msgs, nm, cuts, 8, "random chunks");
  }

  /* Two frames in one chunk: the first feed stops at the first frame's end. */
  {
    struct hf_frame_decoder d;
    char *b;
    size_t l0, used;
    json_t *m;
    hf_frame_encode(msgs[0], &b, &l0);
    free(b);
    hf_frame_decoder_init(&d, 0);
    CHECK(hf_frame_feed(&d, stream, len, &used, &m) == 0);
    CHECKF(used == l0, "consumed %zu, first frame is %zu", used, l0);
    CHECK(m != NULL && json_equal(m, msgs[0]));
    json_decref(m);
    CHECK(hf_frame_feed(&d, stream + used, len - used, &used, &m) == 0);
    CHECK(m != NULL && json_equal(m, msgs[1]));
    json_decref(m);
    hf_frame_decoder_free(&d);
  }
  free(stream);
  for (k = 0; k < nm; k++)
    json_decref(msgs[k]);
}

static void test_frame_limits(void) {
  struct hf_frame_decoder d;
  unsigned char hdr[8] = { 0x00, 0x10, 0x00, 0x01, '{', '}', 0, 0 };  /* 1 MiB + 1 */
  size_t used;
  json_t *m;
  char *frame, *payload;
  size_t len;
  int r;

  /* Oversize: refused from the header alone, nothing allocated, sticky. */
  hf_frame_decoder_init(&d, 0);
  r = hf_frame_feed(&d, hdr, 3, &used, &m);
  CHECK(r == 0 && used == 3 && m == NULL && !hf_frame_decoder_idle(&d));
  r = hf_frame_feed(&d, hdr + 3, 3, &used, &m);
  CHECKF(r == HF_ETOOBIG, "%s", hf_err_name(r));
  CHECK(used == 1 && m == NULL);
  CHECK(d.buf == NULL && d.cap == 0 && d.have == 0);
  CHECK(strstr(d.detail, "1048577") != NULL);
  CHECK(hf_frame_feed(&d, "{}", 2, &used, &m) == HF_ETOOBIG && used == 0 && m == NULL);
  CHECK(!hf_frame_decoder_idle(&d));
  hf_frame_decoder_free(&d);
  /* 0xffffffff too. */
  hf_frame_decoder_init(&d, 0);
  CHECK(hf_frame_feed(&d, "\xff\xff\xff\xff", 4, &used, &m) == HF_ETOOBIG && d.buf == NULL);
  hf_frame_decoder_free(&d);
  /* A smaller limit given at init. */
  hf_frame_decoder_init(&d, 10);
  len = frame_raw("{\"a\":12345}", 11, &frame);
  CHECK(hf_frame_feed(&d, frame, len, &used, &m) == HF_ETOOBIG && used == 4);
  free(frame);
  hf_frame_decoder_free(&d);
  /* Exactly the limit is accepted; memory grows only as bytes arrive. */
  payload = malloc(HF_PROTO_MAX_FRAME);
  memset(payload, ' ', HF_PROTO_MAX_FRAME);
  memcpy(payload, "{\"type\":\"event\"}", 16);
  len = frame_raw(payload, HF_PROTO_MAX_FRAME, &frame);
  hf_frame_decoder_init(&d, 0);
  CHECK(hf_frame_feed(&d, frame, 4 + 100, &used, &m) == 0 && used == 104 && m == NULL);
  CHECKF(d.cap < 65536, "cap %zu after 100 bytes", d.cap);
  CHECK(hf_frame_feed(&d, frame + 104, len - 104, &used, &m) == 0 && used == len - 104);
  CHECK(m != NULL && json_is_object(m));
  CHECK(hf_frame_decoder_idle(&d) && d.buf == NULL);
  json_decref(m);
  hf_frame_decoder_free(&d);
  free(frame);
  free(payload);

  /* Truncated: a partial header or payload is not idle (EOF = HF_ETRUNC). */
  hf_frame_decoder_init(&d, 0);
  CHECK(hf_frame_decoder_idle(&d));
  len = frame_raw("{\"x\":1}", 7, &frame);
  CHECK(hf_frame_feed(&d, frame, 2, &used, &m) == 0 && !hf_frame_decoder_idle(&d));
  CHECK(hf_frame_feed(&d, frame + 2, 4, &used, &m) == 0 && !hf_frame_decoder_idle(&d));
  CHECK(hf_frame_feed(&d, frame + 6, len - 7, &used, &m) == 0 && m == NULL);
  CHECK(!hf_frame_decoder_idle(&d));
  CHECK(hf_frame_feed(&d, frame + len - 1, 1, &used, &m) == 0 && m != NULL);
  CHECK(hf_frame_decoder_idle(&d));
  json_decref(m);
  /* Empty feeds are harmless. */
  CHECK(hf_frame_feed(&d, NULL, 0, &used, &m) == 0 && used == 0 && m == NULL);
  CHECK(hf_frame_feed(&d, frame, 0, &used, &m) == 0 && used == 0);
  CHECK(hf_frame_feed(NULL, frame, 1, &used, &m) == HF_EINVAL);
  CHECK(hf_frame_feed(&d, frame, 1, NULL, &m) == HF_EINVAL);
  CHECK(hf_frame_feed(&d, NULL, 1, &used, &m) == HF_EINVAL);
  CHECK(d.error == 0);  /* EINVAL is not sticky */
  /* Free mid-frame releases the partial payload (valgrind/ASan check it). */
  CHECK(hf_frame_feed(&d, frame, 6, &used, &m) == 0 && d.buf != NULL);
  hf_frame_decoder_free(&d);
  hf_frame_decoder_free(&d);
  hf_frame_decoder_free(NULL);
  free(frame);

  /* An empty payload and bad JSON are sticky HF_EJSON. */
  hf_frame_decoder_init(&d, 0);
  CHECK(hf_frame_feed(&d, "\0\0\0\0{}", 6, &used, &m) == HF_EJSON && used == 4);
  CHECK(hf_frame_feed(&d, "\0\0\0\2{}", 6, &used, &m) == HF_EJSON && used == 0);
  hf_frame_decoder_free(&d);
  /* A decoder that was only zeroed works with the default limit. */
  memset(&d, 0, sizeof d);
  len = frame_raw("{}", 2, &frame);
  CHECK(hf_frame_feed(&d, frame, len, &used, &m) == 0 && m != NULL);
  json_decref(m);
  free(frame);
  hf_frame_decoder_free(&d);
}

/* ---- validators ------------------------------------------------------------------------- */

static void test_validators(void) {
  static const char *const good_versions[] = {
    "3.0.0", "4.1.0rc1", "3.0.1.post1", "3.1.0.dev2", "4.0.0+test.1", "1!2.0", "0",
    "1.0a0", "1.0b2", "1.0rc3.post4.dev5", "2024.5.1", "1.0+ubuntu1", "1.0.0+abc.5.xyz",
    "1.0.dev0", "1.0.post0", NULL };
  static const char *const bad_versions[] = {
    "", "3.0.1; touch /tmp/x", "$(id)", "`id`", "3.0 ", " 3.0", "3.0\n", "v3.0", "3..0", "3.",
    ".3", "1.0-rc1", "1.0RC1", "1.0rc", "1.0.post", "1.0+", "1.0+a..b", "1.0+A", "1!", "!1.0",
    "1.0 || true", "1.0&&x", "1.0|x", "1.0>x", "1.0'", "1.0\"", "*", "1.*", "latest",
    "1.0.dev1.post1", "12345678901234567890.0", "-1.0", "1.0+a b", NULL };
  static const char *const good_names[] = {
    "jupyterhub", "oauthenticator", "jupyterhub-idle-culler", "zope.interface", "a", "A1",
    "ruamel_yaml", NULL };
  static const char *const bad_names[] = {
    "", "oauth enticator", "-rf", "--index-url", "pkg;id", "pkg==1.0", ".hidden", "pkg.",
    "pkg[extra]", "päckage", "pkg\n", "$(id)", NULL };
  static const char *const good_pins[] = { "oauthenticator==16.2.1", "a==1", "x-y==1!2.0rc1", NULL };
  static const char *const bad_pins[] = {
    "oauthenticator", "oauthenticator>=16", "==1.0", "a==", "a==1.0;id", "a b==1.0",
    "a===1.0", "a==1.0==2.0", NULL };
  static const char *const good_paths[] = {
    "/", "/opt/jhub", "/opt/jhub/", "/a/.hidden/b", "/a/..b/c", "/a/b..", "/srv/ünïcode", NULL };
  static const char *const bad_paths[] = {
    "", "opt/jhub", "./x", "/opt/../etc", "/opt/..", "/..", "/.", "/a/./b", "/a/.",
    "/a\nb", "/a\tb", "/a\x7f", "~/x", NULL };
  static const char *const good_services[] = { "jupyterhub", "jupyterhub@1.service", "hub:main", "a_b-c.d", NULL };
  static const char *const bad_services[] = { "", "-h", "hub;id", "hub name", "hub/..", "$(id)", NULL };
  static const char *const good_urls[] = {
    "http://127.0.0.1:8000", "https://hub.example.org", "https://hub.example.org/",
    "http://[::1]:8081/hub/", "https://pypi.org/simple/", "http://h:1/a?b=c&d=e#f",
    "http://10.0.0.5:3141/root/pypi/+simple/", NULL };
  static const char *const bad_urls[] = {
    "", "ftp://h/", "http://", "http:///x", "http://h:0", "http://h:65536", "http://h:x",
    "http://h /", "http://h/a b", "http://h/'x'", "http://h/\"x\"", "http://h/a\\b",
    "http://u:p@h/", "HTTP://h", "http://-h/", "http://h/\n", "http://h/`id`", "file:///etc/passwd",
    "javascript:alert(1)", "http://h..x/", NULL };
  static const char *const good_ids[] = { "r1", "2024-05-01.canary_1", "A", "0", NULL };
  static const char *const bad_ids[] = { "", "-r", ".r", "../x", "r 1", "r/1", "r;1",
    "1234567890123456789012345678901234567890123456789012345678901234x", NULL };
  size_t i;
  char longpath[5000];

  for (i = 0; good_versions[i]; i++) CHECKF(hf_valid_version(good_versions[i]), "%s", good_versions[i]);
  for (i = 0; bad_versions[i]; i++) CHECKF(!hf_valid_version(bad_versions[i]), "%s", bad_versions[i]);
  CHECK(!hf_valid_version(NULL));
  for (i = 0; good_names[i]; i++) CHECKF(hf_valid_pkgname(good_names[i]), "%s", good_names[i]);
  for (i = 0; bad_names[i]; i++) CHECKF(!hf_valid_pkgname(bad_names[i]), "%s", bad_names[i]);
  for (i = 0; good_pins[i]; i++) CHECKF(hf_valid_pkgpin(good_pins[i]), "%s", good_pins[i]);
  for (i = 0; bad_pins[i]; i++) CHECKF(!hf_valid_pkgpin(bad_pins[i]), "%s", bad_pins[i]);
  for (i = 0; good_paths[i]; i++) CHECKF(hf_valid_abspath(good_paths[i]), "%s", good_paths[i]);
  for (i = 0; bad_paths[i]; i++) CHECKF(!hf_valid_abspath(bad_paths[i]), "%s", bad_paths[i]);
  for (i = 0; good_services[i]; i++) CHECKF(hf_valid_service_name(good_services[i]), "%s", good_services[i]);
  for (i = 0; bad_services[i]; i++) CHECKF(!hf_valid_service_name(bad_services[i]), "%s", bad_services[i]);
  for (i = 0; good_urls[i]; i++) CHECKF(hf_valid_url(good_urls[i]), "%s", good_urls[i]);
  for (i = 0; bad_urls[i]; i++) CHECKF(!hf_valid_url(bad_urls[i]), "%s", bad_urls[i]);
  for (i = 0; good_ids[i]; i++) CHECKF(hf_valid_id(good_ids[i]), "%s", good_ids[i]);
  for (i = 0; bad_ids[i]; i++) CHECKF(!hf_valid_id(bad_ids[i]), "%s", bad_ids[i]);

  /* Length limits. */
  longpath[0] = '/';
  memset(longpath + 1, 'a', 4095);
  longpath[4096] = '\0';
  CHECK(hf_valid_abspath(longpath));
  longpath[4096] = 'a';
  longpath[4097] = '\0';
  CHECK(!hf_valid_abspath(longpath));
  memset(longpath, 'a', 129);
  longpath[128] = '\0';
  CHECK(hf_valid_pkgname(longpath) && hf_valid_service_name(longpath));
  longpath[128] = 'a';
  longpath[129] = '\0';
  CHECK(!hf_valid_pkgname(longpath) && !hf_valid_service_name(longpath));
  CHECK(!hf_valid_abspath(NULL) && !hf_valid_url(NULL) && !hf_valid_id(NULL) &&
        !hf_valid_pkgname(NULL) && !hf_valid_pkgpin(NULL) && !hf_valid_service_name(NULL));
}

static int sign(int x) {
  return (x > 0) - (x < 0);
}

static void test_version_order(void) {
  /* Strictly increasing, per PEP 440 (checked against packaging's ordering). */
  static const char *const order[] = {
    "garbage", "0.9", "1.0.dev0", "1.0.dev1", "1.0a1.dev1", "1.0a1", "1.0a1.post1.dev1", "1.0a1.post1",
    "1.0a2", "1.0b1", "1.0rc1.dev9", "1.0rc1", "1.0rc2", "1.0", "1.0+abc", "1.0+abc.1", "1.0+1",
    "1.0+2", "1.0+10", "1.0.post1.dev0", "1.0.post1", "1.0.post2", "1.0.1", "1.0.10", "1.1.dev1",
    "1.1", "2.0", "10.0", "2024.1", "1!0.1", "1!1.0", "2!0", NULL };
  static const char *const equal[][2] = {
    { "1.0", "1.0.0" }, { "1", "1.0.0.0" }, { "0!1.0", "1.0" }, { "1.01", "1.1" },
    { "1.0+abc.01", "1.0+abc.1" }, { "4.1.0rc1", "4.1rc1" }, { NULL, NULL } };
  size_t i, j;
  for (i = 0; order[i]; i++)
    for (j = 0; order[j]; j++)
      CHECKF(sign(hf_version_cmp(order[i], order[j])) == sign((int)i - (int)j),
             "cmp(%s, %s) = %d", order[i], order[j], hf_version_cmp(order[i], order[j]));
  for (i = 0; equal[i][0]; i++) {
    CHECKF(hf_version_cmp(equal[i][0], equal[i][1]) == 0, "%s vs %s", equal[i][0], equal[i][1]);
    CHECKF(hf_version_cmp(equal[i][1], equal[i][0]) == 0, "%s vs %s", equal[i][1], equal[i][0]);
  }
  CHECK(hf_version_cmp("3.0.1; touch /tmp/x", "0") < 0);
  CHECK(hf_version_cmp("x", "x") == 0);
  CHECK(hf_version_cmp(NULL, "1.0") < 0 && hf_version_cmp("1.0", NULL) > 0);
}

static void test_ops(void) {
  static const char *const expected[] = { "facts", "preflight", "stage", "backup", "stop", "install",
                                          "migrate", "start", "health", "rollback", "journal", NULL };
  /* Which ops require rollout and target. */
  static const struct { const char *op; bool rollout, target; } req[] = {
    { "facts", false, false }, { "preflight", false, true }, { "stage", true, true }, { "backup", true, true },
    { "stop", true, false }, { "install", true, true }, { "migrate", true, false },
    { "start", true, false }, { "health", false, true }, { "rollback", true, false },
    { "journal", true, false } };
  const char *const *names = hf_proto_op_names();
  json_t *hub, *args;
  char err[256];
  size_t i;
  int r;
  for (i = 0; expected[i]; i++) {
    CHECKF(names[i] != NULL && strcmp(names[i], expected[i]) == 0, "%zu", i);
    CHECKF(hf_op_by_name(expected[i]) != NULL &&
           strcmp(hf_op_by_name(expected[i])->name, expected[i]) == 0, "%s", expected[i]);
  }
  CHECK(names[i] == NULL);
  CHECK(hf_op_by_name("shell") == NULL && hf_op_by_name(NULL) == NULL &&
        hf_op_by_name("") == NULL && hf_op_by_name("FACTS") == NULL);

  hub = json_pack("{s:s, s:s, s:s, s:s}", "hub_env", "/opt/jhub", "config", "/etc/jh/c.py",
                  "db", "sqlite:////srv/jh.sqlite", "service", "supervisord:jupyterhub");
  for (i = 0; i < sizeof req / sizeof req[0]; i++) {
    const struct hf_op *op = hf_op_by_name(req[i].op);
    /* hub alone */
    args = json_pack("{s:O}", "hub", hub);
    r = hf_proto_args_validate(op, args, err, sizeof err);
    if (req[i].rollout || req[i].target)
      CHECKF(r == HF_EMISSING && strncmp(err, "args.", 5) == 0, "%s: %s", req[i].op, err);
    else
      CHECKF(r == 0, "%s: %s", req[i].op, err);
    /* with rollout, target and timeout_ms: always fine */
    json_object_set_new(args, "rollout", json_string("r1"));
    json_object_set_new(args, "target", json_string("4.1.0"));
    json_object_set_new(args, "timeout_ms", json_integer(60000));
    if (!req[i].target && !req[i].rollout)
      json_object_del(args, "target");
    if (!req[i].target)
      json_object_del(args, "target");
    r = hf_proto_args_validate(op, args, err, sizeof err);
    CHECKF(r == 0, "%s: %s", req[i].op, err);
    /* without rollout */
    json_object_del(args, "rollout");
    r = hf_proto_args_validate(op, args, err, sizeof err);
    CHECKF(req[i].rollout ? (r == HF_EMISSING && strstr(err, "args.rollout") != NULL) : r == 0,
           "%s: %s", req[i].op, err);
    /* without hub */
    json_object_set_new(args, "rollout", json_string("r1"));
    json_object_del(args, "hub");
    r = hf_proto_args_validate(op, args, err, sizeof err);
    CHECKF(r == HF_EMISSING && strcmp(err, "args.hub: required by op ") > 0, "%s: %s", req[i].op, err);
    json_decref(args);
  }
  /* Hub messages carry the caller's prefix. */
  json_object_set_new(hub, "hub_env", json_string("/opt/../x"));
  r = hf_proto_hub_validate(hub, "hosts[3].vars", err, sizeof err);
  CHECKF(r == HF_EBADARG && strncmp(err, "hosts[3].vars.hub_env: ", 23) == 0, "%s", err);
  json_decref(hub);
  CHECK(hf_proto_hub_validate(NULL, "h", err, sizeof err) == HF_EMISSING);
  /* err may be tiny or absent without harm. */
  CHECK(hf_proto_hub_validate(json_true(), "h", err, 1) == HF_ETYPE && err[0] == '\0');
  CHECK(hf_proto_hub_validate(json_true(), "h", NULL, 0) == HF_ETYPE);
}

/* The operation table (HF_OP_MAP) against what the validators do with a
 * request of each op, both as hf_proto_args_validate and inside a whole
 * request (hf_msg_validate), and against its own rules: ids, names, steps,
 * the stale-step chain, and docs/protocol.md's table of operations. */
static void test_op_table(const char *datadir) {
  const char *const *names = hf_proto_op_names();
  char err[256], path[4096], *doc = NULL;
  int last_step = 0, n_steps = 0, i;
  json_t *hub = json_pack("{s:s, s:s, s:s, s:s}", "hub_env", "/opt/jhub", "config", "/etc/jh/c.py",
                          "db", "sqlite:////srv/jh.sqlite", "service", "supervisord:jupyterhub");
  snprintf(path, sizeof path, "%s/../../docs/protocol.md", datadir);
  CHECKF(read_file(path, &doc) > 0, "%s", path);
  CHECK(hf_op_get(HF_OP__COUNT) == NULL && hf_op_get((enum hf_op_id)-1) == NULL);
  CHECK(hf_op_default_timeout_ms("shell") == 0 && hf_op_procedure_pos("shell") == 0);
  CHECK(hf_op_journaled_before(NULL) == NULL);
  for (i = 0; i < HF_OP__COUNT; i++) {
    const struct hf_op *op = hf_op_get((enum hf_op_id)i), *before;
    const struct hf_arg_spec *a;
    json_t *args, *req;
    char row[96];
    int r;
    CHECKF(op != NULL && (int)op->id == i && names[i] != NULL && strcmp(names[i], op->name) == 0, "%d", i);
    if (op == NULL) continue;
    CHECKF(hf_op_by_name(op->name) == op, "%s", op->name);
    CHECKF(op->default_timeout_ms >= 1000 && hf_op_default_timeout_ms(op->name) == op->default_timeout_ms,
           "%s", op->name);
    CHECKF(hf_op_procedure_pos(op->name) == op->step, "%s", op->name);
    /* Whatever changes the hub is journaled, so it needs its rollout. */
    CHECKF(!op->changes_hub || (op->journaled && op->rollout == HF_OPARG_REQ), "%s", op->name);
    CHECKF(op->rollout != HF_OPARG_NO, "%s: every op takes a rollout id", op->name);
    /* The spec: hub first and required, then exactly what the table says. */
    CHECKF(op->args[0].name && strcmp(op->args[0].name, "hub") == 0 && op->args[0].required &&
           op->args[0].type == HF_ARG_HUB, "%s", op->name);
    for (a = op->args; a->name; a++) {
      if (strcmp(a->name, "rollout") == 0)
        CHECKF(a->type == HF_ARG_ID && a->required == (op->rollout == HF_OPARG_REQ), "%s", op->name);
      if (strcmp(a->name, "target") == 0)
        CHECKF(a->type == HF_ARG_VERSION && op->target == HF_OPARG_REQ && a->required, "%s", op->name);
    }
    /* Steps: 1, 2, 3, ... in table order. */
    if (op->step > 0) {
      CHECKF(op->step == last_step + 1, "%s: step %d after %d", op->name, op->step, last_step);
      last_step = op->step;
      n_steps++;
    }
    /* The stale-step chain: each journaled step's predecessor is the
     * journaled step with the next lower position. */
    before = hf_op_journaled_before(op);
    if (op->journaled && op->step > 0 && before != NULL)
      CHECKF(before->journaled && before->step > 0 && before->step < op->step &&
             hf_op_journaled_before(before) != op, "%s after %s", op->name, before->name);
    else if (!op->journaled || op->step <= 0)
      CHECKF(before == NULL, "%s", op->name);

    /* Every argument the table names: accepted, in args and in a request. */
    args = json_pack("{s:O, s:s, s:I}", "hub", hub, "rollout", "r1", "timeout_ms", (json_int_t)op->default_timeout_ms);
    if (op->target == HF_OPARG_REQ) json_object_set_new(args, "target", json_string("4.1.0"));
    r = hf_proto_args_validate(op, args, err, sizeof err);
    CHECKF(r == 0, "%s: %s", op->name, err);
    req = hf_msg_request(7, op->name, json_deep_copy(args));
    r = hf_msg_validate(req, NULL, err, sizeof err);
    CHECKF(r == 0, "%s: request: %s", op->name, err);
    json_decref(req);
    /* A target the table refuses is an unknown argument, in both places. */
    if (op->target == HF_OPARG_NO) {
      json_object_set_new(args, "target", json_string("4.1.0"));
      r = hf_proto_args_validate(op, args, err, sizeof err);
      CHECKF(r == HF_EBADARG && strstr(err, "unknown argument \"target\"") != NULL, "%s: %s", op->name, err);
      req = hf_msg_request(7, op->name, json_deep_copy(args));
      CHECKF(hf_msg_validate(req, NULL, err, sizeof err) == HF_EBADARG, "%s: request: %s", op->name, err);
      json_decref(req);
      json_object_del(args, "target");
    }
    /* Each required one missing: refused naming it; each optional one: fine. */
    for (a = op->args; a->name; a++) {
      json_t *less = json_deep_copy(args);
      if (json_object_get(less, a->name) == NULL) { json_decref(less); continue; }
      json_object_del(less, a->name);
      r = hf_proto_args_validate(op, less, err, sizeof err);
      if (a->required)
        CHECKF(r == HF_EMISSING && strstr(err, a->name) != NULL, "%s without %s: %s", op->name, a->name, err);
      else
        CHECKF(r == 0, "%s without %s: %s", op->name, a->name, err);
      req = hf_msg_request(7, op->name, less);
      r = hf_msg_validate(req, NULL, err, sizeof err);
      CHECKF(a->required ? r == HF_EMISSING : r == 0, "%s request without %s: %s", op->name, a->name, err);
      json_decref(req);
    }
    json_decref(args);
    /* docs/protocol.md has a row for it. */
    snprintf(row, sizeof row, "\n| `%s` |", op->name);
    CHECKF(doc == NULL || strstr(doc, row) != NULL, "docs/protocol.md has no row %s", row + 1);
  }
  CHECK(names[HF_OP__COUNT] == NULL);
  CHECK(n_steps >= 2 && hf_op_journaled_before(hf_op_get(HF_OP_BACKUP)) == NULL);
  free(doc);
  json_decref(hub);
}

/* "--version-cmp": reads "A B" pairs on stdin, prints "SIGN VALID_A" per
 * line, for pep440_xcheck.py to compare with the packaging library. */
static int version_cmp_filter(void) {
  char a[256], b[256];
  while (scanf("%255s %255s", a, b) == 2)
    printf("%d %d\n", sign(hf_version_cmp(a, b)), hf_valid_version(a) ? 1 : 0);
  return 0;
}

/* Every argument type through a spec of our own (the real ops use only
 * some of them). */
static void test_arg_types(void) {
  static const struct hf_arg_spec spec[] = {
    { "s", HF_ARG_STRING, false }, { "i", HF_ARG_INT, false }, { "b", HF_ARG_BOOL, false },
    { "v", HF_ARG_VERSION, false }, { "p", HF_ARG_ABSPATH, false }, { "id", HF_ARG_ID, false },
    { "pins", HF_ARG_PKGPINS, false }, { "names", HF_ARG_PKGNAMES, false },
    { "o", HF_ARG_OBJECT, false }, { NULL, HF_ARG_STRING, false } };
  static const struct hf_op op = { .name = "all", .args = spec };
  static const struct { const char *json; int want; const char *sub; } cases[] = {
    { "{}", 0, "" },
    { "{\"s\":\"any thing; at all\",\"i\":0,\"b\":false,\"v\":\"1.0\",\"p\":\"/x\",\"id\":\"r\","
      "\"pins\":[\"a==1\"],\"names\":[\"a\",\"b-c\"],\"o\":{\"k\":[1]}}", 0, "" },
    { "{\"s\":1}", HF_ETYPE, "args.s: expected a string" },
    { "{\"i\":\"1\"}", HF_ETYPE, "args.i: expected an integer >= 0, got \"1\"" },
    { "{\"i\":true}", HF_ETYPE, "args.i: expected an integer >= 0, got true" },
    { "{\"i\":-5}", HF_EBADARG, "args.i: expected an integer >= 0, got -5" },
    { "{\"b\":0}", HF_ETYPE, "args.b: expected true or false, got an integer" },
    { "{\"v\":\"1.0 \"}", HF_EBADARG, "args.v: expected a PEP 440 version, got \"1.0 \"" },
    { "{\"p\":\"/a/../b\"}", HF_EBADARG, "args.p: expected an absolute path" },
    { "{\"p\":null}", HF_ETYPE, "args.p: expected an absolute path without . or .. segments or control characters, got null" },
    { "{\"id\":\"-x\"}", HF_EBADARG, "args.id: expected an id" },
    { "{\"pins\":\"a==1\"}", HF_ETYPE, "args.pins: expected an array, each element a NAME==VERSION pin, got \"a==1\"" },
    { "{\"pins\":[\"a==1\",\"b>=2\"]}", HF_EBADARG, "args.pins[1]: expected a NAME==VERSION pin, got \"b>=2\"" },
    { "{\"names\":[\"ok\",7]}", HF_ETYPE, "args.names[1]: expected a package name, got an integer" },
    { "{\"o\":[]}", HF_ETYPE, "args.o: expected an object, got an array" },
    { "{\"x\":1}", HF_EBADARG, "args: unknown argument \"x\" for op all" },
  };
  char err[256], tiny[8];
  size_t i;
  int r;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    json_error_t jerr;
    json_t *args = json_loads(cases[i].json, 0, &jerr);
    CHECKF(args != NULL, "case %zu: %s", i, jerr.text);
    err[0] = '\0';
    r = hf_proto_args_validate(&op, args, err, sizeof err);
    CHECKF(r == cases[i].want && strstr(err, cases[i].sub) != NULL, "case %zu: %s: %s", i,
           hf_err_name(r), err);
    json_decref(args);
  }
  /* Arrays are bounded. */
  {
    json_t *args = json_pack("{s:[]}", "names"), *a = json_object_get(args, "names");
    for (i = 0; i < 257; i++)
      json_array_append_new(a, json_string("pkg"));
    CHECK(hf_proto_args_validate(&op, args, err, sizeof err) == HF_EBADARG);
    json_decref(args);
  }
  CHECK(hf_proto_args_validate(NULL, NULL, err, sizeof err) == HF_EINVAL);
  CHECK(hf_proto_args_validate(&op, NULL, err, sizeof err) == 0);
  /* Messages are cut to the buffer and always terminated; err may be NULL. */
  {
    json_t *m = json_pack("{s:s}", "type", "nonsense");
    memset(tiny, 'x', sizeof tiny);
    CHECK(hf_msg_validate(m, NULL, tiny, sizeof tiny) == HF_EPROTO);
    CHECK(tiny[sizeof tiny - 1] == '\0' && strlen(tiny) == sizeof tiny - 1);
    CHECK(hf_msg_validate(m, NULL, NULL, 0) == HF_EPROTO);
    json_decref(m);
    CHECK(hf_msg_validate(NULL, NULL, err, sizeof err) == HF_EINVAL);
  }
}

int main(int argc, char **argv) {
  if (argc == 2 && strcmp(argv[1], "--version-cmp") == 0)
    return version_cmp_filter();
  if (argc != 2) {
    fprintf(stderr, "usage: %s DATADIR (tests/proto, holding valid/ and invalid/)\n", argv[0]);
    return 2;
  }
  test_errors();
  test_builders();
  test_cases(argv[1]);
  test_chunking();
  test_frame_limits();
  test_validators();
  test_version_order();
  test_ops();
  test_op_table(argv[1]);
  test_arg_types();
  printf("proto: %d checks, %d failed\n", checks, failures);
  return failures == 0 ? 0 : 1;
}
