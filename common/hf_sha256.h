/* hf_sha256.h: self-contained SHA-256 (FIPS 180-4), no dependency but libc; part of common/ (agent and controller). */
#ifndef HF_SHA256_H
#define HF_SHA256_H

#include <stddef.h>
#include <stdint.h>

#define HF_SHA256_LEN 32
#define HF_SHA256_HEX (HF_SHA256_LEN * 2 + 1)

struct hf_sha256 {
  uint32_t h[8];
  uint64_t nbytes;      /* message bytes absorbed so far */
  unsigned char buf[64];
  size_t   buflen;      /* bytes waiting in buf, always < 64 between calls */
};

void hf_sha256_init(struct hf_sha256 *c);
/* Absorbs len bytes of data (borrowed). */
void hf_sha256_update(struct hf_sha256 *c, const void *data, size_t len);
/* Writes the 32-byte digest to out; c must be re-initialised before reuse. */
void hf_sha256_final(struct hf_sha256 *c, unsigned char out[HF_SHA256_LEN]);
/* One-shot digest of data as lowercase hex into hex (65 bytes, NUL-terminated). */
void hf_sha256_hex(const void *data, size_t len, char hex[HF_SHA256_HEX]);
/* Digest as lowercase hex into hex (65 bytes). */
void hf_sha256_tohex(const unsigned char d[HF_SHA256_LEN], char hex[HF_SHA256_HEX]);
/* Digest of the whole file at path as hex. Returns 0, or a negative errno
 * (-ENOENT, -EIO, ...) when the file cannot be opened or read; hex is then "". */
int hf_sha256_file(const char *path, char hex[HF_SHA256_HEX]);
/* Digest of everything readable at fd (pread from offset 0; the file offset is
 * not moved) as hex. 0, or -1 with errno set; hex is then "". */
int hf_sha256_fd(int fd, char hex[HF_SHA256_HEX]);

#endif /* HF_SHA256_H */
