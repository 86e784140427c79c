/* sha256.c: SHA-256 per FIPS 180-4, written for clarity; big files are hashed in 64 KiB reads.
 * Part of common/: linked into the agent and the controller. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hf_sha256.h"

static const uint32_t K[64] = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
  uint32_t w[64], a, b, c, d, e, f, g, hh, t1, t2;
  int i;
  for (i = 0; i < 16; i++)
    w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
           (uint32_t)p[4 * i + 2] << 8 | (uint32_t)p[4 * i + 3];
  for (i = 16; i < 64; i++) {
    uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
  for (i = 0; i < 64; i++) {
    t1 = hh + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i];
    t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
    hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

void hf_sha256_init(struct hf_sha256 *c) {
  static const uint32_t iv[8] = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                  0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 };
  memcpy(c->h, iv, sizeof iv);
  c->nbytes = 0;
  c->buflen = 0;
}

void hf_sha256_update(struct hf_sha256 *c, const void *data, size_t len) {
  const unsigned char *p = data;
  c->nbytes += len;
  if (c->buflen > 0) {
    size_t take = 64 - c->buflen;
    if (take > len) take = len;
    memcpy(c->buf + c->buflen, p, take);
    c->buflen += take; p += take; len -= take;
    if (c->buflen < 64) return;
    sha256_block(c->h, c->buf);
    c->buflen = 0;
  }
  while (len >= 64) {
    sha256_block(c->h, p);
    p += 64; len -= 64;
  }
  if (len > 0) {
    memcpy(c->buf, p, len);
    c->buflen = len;
  }
}

void hf_sha256_final(struct hf_sha256 *c, unsigned char out[HF_SHA256_LEN]) {
  uint64_t bits = c->nbytes * 8;
  int i;
  c->buf[c->buflen++] = 0x80;
  /* The length goes in the last 8 bytes of a block: spill into a new block
   * when fewer than 8 bytes are left after the 0x80 marker. */
  if (c->buflen > 56) {
    memset(c->buf + c->buflen, 0, 64 - c->buflen);
    sha256_block(c->h, c->buf);
    c->buflen = 0;
  }
  memset(c->buf + c->buflen, 0, 56 - c->buflen);
  for (i = 0; i < 8; i++) c->buf[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
  sha256_block(c->h, c->buf);
  for (i = 0; i < 8; i++) {
    out[4 * i] = (unsigned char)(c->h[i] >> 24);
    out[4 * i + 1] = (unsigned char)(c->h[i] >> 16);
    out[4 * i + 2] = (unsigned char)(c->h[i] >> 8);
    out[4 * i + 3] = (unsigned char)c->h[i];
  }
}

void hf_sha256_tohex(const unsigned char d[HF_SHA256_LEN], char hex[HF_SHA256_HEX]) {
  static const char digits[] = "0123456789abcdef";
  int i;
  for (i = 0; i < HF_SHA256_LEN; i++) {
    hex[2 * i] = digits[d[i] >> 4];
    hex[2 * i + 1] = digits[d[i] & 15];
  }
  hex[2 * HF_SHA256_LEN] = '\0';
}

void hf_sha256_hex(const void *data, size_t len, char hex[HF_SHA256_HEX]) {
  struct hf_sha256 c;
  unsigned char d[HF_SHA256_LEN];
  hf_sha256_init(&c);
  hf_sha256_update(&c, data, len);
  hf_sha256_final(&c, d);
  hf_sha256_tohex(d, hex);
}

int hf_sha256_fd(int fd, char hex[HF_SHA256_HEX]) {
  unsigned char *buf = malloc(65536); /* heap: callers may run on small thread-pool stacks */
  unsigned char d[HF_SHA256_LEN];
  struct hf_sha256 c;
  off_t off = 0;
  hex[0] = '\0';
  if (buf == NULL) return -1;
  hf_sha256_init(&c);
  for (;;) {
    ssize_t n = pread(fd, buf, 65536, off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { free(buf); return -1; }
    if (n == 0) break;
    hf_sha256_update(&c, buf, (size_t)n);
    off += n;
  }
  free(buf);
  hf_sha256_final(&c, d);
  hf_sha256_tohex(d, hex);
  return 0;
}

int hf_sha256_file(const char *path, char hex[HF_SHA256_HEX]) {
  int fd, r;
  hex[0] = '\0';
  fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  r = hf_sha256_fd(fd, hex) == 0 ? 0 : -errno;
  close(fd);
  return r;
}
