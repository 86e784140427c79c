/* payload.c: the agent as it travels: the binary's SHA-256 (what the host
 * checks before it ever runs it) and a gzip stream of it (what is sent).
 * See hf_payload.h. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include <openssl/evp.h>

#include "hf_files.h"
#include "hf_payload.h"

#define PAYLOAD_MAX (64u << 20)

/* Reads a whole regular file of 1..PAYLOAD_MAX bytes: 0 or a negative errno. */
static int slurp(const char *path, unsigned char **out, size_t *len) {
  char *buf;
  if (hf_read_file(path, PAYLOAD_MAX, &buf, len) != 0) return errno == EFBIG ? -EINVAL : -errno;
  if (*len == 0) { free(buf); return -EINVAL; }
  *out = (unsigned char *)buf;
  return 0;
}

/* The agent's SHA-256 by OpenSSL's (hardware SHA or vector code): the
 * portable one took some 45 ms of every run's CPU for the 2.6 MB agent,
 * 0.045 ms per host of a 1,000-host audit. The same digest either way. */
static void bin_sha256_hex(const unsigned char *data, size_t len, char hex[HF_SHA256_HEX]) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned int dlen = 0;
  if (EVP_Digest(data, len, d, &dlen, EVP_sha256(), NULL) == 1 && dlen == HF_SHA256_LEN)
    hf_sha256_tohex(d, hex);
  else
    hf_sha256_hex(data, len, hex);
}

int hf_payload_load(const char *path, struct hf_payload *p, char *err, size_t errlen) {
  memset(p, 0, sizeof *p);
  int r = slurp(path, &p->bin, &p->bin_len);
  if (r < 0) {
    snprintf(err, errlen, "cannot read the agent %s: %s", path,
             r == -EINVAL ? "empty, not a regular file or too large" : strerror(-r));
    return r;
  }
  bin_sha256_hex(p->bin, p->bin_len, p->hex);
  p->path = strdup(path);
  if (!p->path) { hf_payload_free(p); snprintf(err, errlen, "out of memory"); return -ENOMEM; }
  return 0;
}

/* Inflates a gzip stream and checks it is exactly the binary (by SHA-256). */
static bool gz_matches(const struct hf_payload *p, const unsigned char *gz, size_t gzlen) {
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return false;
  z.next_in = (unsigned char *)(uintptr_t)gz;
  z.avail_in = (uInt)gzlen;
  struct hf_sha256 c;
  hf_sha256_init(&c);
  unsigned char out[65536];
  size_t total = 0;
  int zr;
  do {
    z.next_out = out;
    z.avail_out = sizeof out;
    zr = inflate(&z, Z_NO_FLUSH);
    if (zr != Z_OK && zr != Z_STREAM_END) break;
    size_t got = sizeof out - z.avail_out;
    total += got;
    if (total > p->bin_len) { zr = Z_DATA_ERROR; break; }
    hf_sha256_update(&c, out, got);
  } while (zr != Z_STREAM_END);
  bool whole = zr == Z_STREAM_END && z.avail_in == 0 && total == p->bin_len;
  inflateEnd(&z);
  if (!whole) return false;
  unsigned char d[HF_SHA256_LEN];
  char hex[HF_SHA256_HEX];
  hf_sha256_final(&c, d);
  hf_sha256_tohex(d, hex);
  return strcmp(hex, p->hex) == 0;
}

/* gzip at level 1 of the binary: fast (~60 ms for the 2.5 MB agent), within
 * 7% of level 9's size. */
static int gz_make(struct hf_payload *p) {
  z_stream z;
  memset(&z, 0, sizeof z);
  if (deflateInit2(&z, 1, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) return -ENOMEM;
  uLong bound = deflateBound(&z, (uLong)p->bin_len) + 32;
  unsigned char *out = malloc(bound);
  if (!out) { deflateEnd(&z); return -ENOMEM; }
  z.next_in = p->bin;
  z.avail_in = (uInt)p->bin_len;
  z.next_out = out;
  z.avail_out = (uInt)bound;
  int zr = deflate(&z, Z_FINISH);
  size_t n = (size_t)z.total_out;
  deflateEnd(&z);
  if (zr != Z_STREAM_END) { free(out); return -EIO; }
  p->gz = out;
  p->gz_len = n;
  return 0;
}

int hf_payload_gzip(struct hf_payload *p, char *err, size_t errlen) {
  if (p->gz) return 0;
  /* The build ships AGENT.gz (gzip -9) beside the agent; it is used only when
   * it inflates to exactly the agent, so a stale one is never sent. */
  char gzpath[4200];
  unsigned char *gz = NULL;
  size_t gzlen = 0;
  if (snprintf(gzpath, sizeof gzpath, "%s.gz", p->path) < (int)sizeof gzpath &&
      slurp(gzpath, &gz, &gzlen) == 0) {
    if (gz_matches(p, gz, gzlen)) {
      p->gz = gz;
      p->gz_len = gzlen;
      p->gz_shipped = true;
    } else {
      free(gz);
    }
  }
  if (!p->gz) {
    int r = gz_make(p);
    if (r < 0) {
      snprintf(err, errlen, "cannot compress the agent %s: %s", p->path, strerror(-r));
      return r;
    }
  }
  return 0;
}

void hf_payload_free(struct hf_payload *p) {
  free(p->bin);
  free(p->gz);
  free(p->path);
  memset(p, 0, sizeof *p);
}
