/* journal.c: the per-rollout, append-only, checksummed journal that lets a new agent (or a
 * reconnecting controller) learn what an earlier one did, even after a power cut mid-write. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"

int hf_journal_encode(const json_t *body, char **out, size_t *outlen) {
  unsigned char digest[HF_SHA256_LEN];
  struct hf_sha256 c;
  char *text, *buf;
  size_t n;

  *out = NULL;
  *outlen = 0;
  if (!json_is_object(body)) return HF_EINVAL;
  text = json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS);
  if (text == NULL) return HF_ENOMEM;
  n = strlen(text);
  if (n > HF_JOURNAL_MAX_BODY) { free(text); return HF_ETOOBIG; }
  buf = malloc(HF_JOURNAL_HDR + n + 1);
  if (buf == NULL) { free(text); return HF_ENOMEM; }
  memcpy(buf, HF_JOURNAL_MAGIC, 4);
  buf[4] = (char)(n >> 24); buf[5] = (char)(n >> 16); buf[6] = (char)(n >> 8); buf[7] = (char)n;
  hf_sha256_init(&c);
  hf_sha256_update(&c, text, n);
  hf_sha256_final(&c, digest);
  memcpy(buf + 8, digest, HF_SHA256_LEN);
  memcpy(buf + HF_JOURNAL_HDR, text, n);
  buf[HF_JOURNAL_HDR + n] = '\n';
  free(text);
  *out = buf;
  *outlen = HF_JOURNAL_HDR + n + 1;
  return 0;
}

/* What one record at the start of p (avail bytes) is. */
enum rec_kind {
  REC_OK,       /* complete and valid; *reclen bytes */
  REC_SHORT,    /* the bytes end before the record does: a torn tail */
  REC_BAD       /* complete but damaged (magic, length, checksum or JSON) */
};

static enum rec_kind rec_check(const char *p, size_t avail, size_t *reclen, json_t **body) {
  const unsigned char *u = (const unsigned char *)p;
  unsigned char digest[HF_SHA256_LEN];
  struct hf_sha256 c;
  uint32_t n;
  size_t i;

  *body = NULL;
  /* A prefix of the magic is a torn header; anything else there is damage. */
  for (i = 0; i < 4 && i < avail; i++)
    if (p[i] != HF_JOURNAL_MAGIC[i]) return REC_BAD;
  if (avail < 8) return REC_SHORT;
  n = (uint32_t)u[4] << 24 | (uint32_t)u[5] << 16 | (uint32_t)u[6] << 8 | u[7];
  if (n == 0 || n > HF_JOURNAL_MAX_BODY) return REC_BAD;
  *reclen = HF_JOURNAL_HDR + (size_t)n + 1;
  if (avail < *reclen) return REC_SHORT;
  if (p[*reclen - 1] != '\n') return REC_BAD;
  hf_sha256_init(&c);
  hf_sha256_update(&c, p + HF_JOURNAL_HDR, n);
  hf_sha256_final(&c, digest);
  if (memcmp(digest, p + 8, HF_SHA256_LEN) != 0) return REC_BAD;
  *body = json_loadb(p + HF_JOURNAL_HDR, n, JSON_REJECT_DUPLICATES, NULL);
  if (!json_is_object(*body)) {
    json_decref(*body);
    *body = NULL;
    return REC_BAD;
  }
  return REC_OK;
}

int hf_journal_parse(const char *buf, size_t len, json_t **records, size_t *good_len, bool *torn) {
  json_t *arr = json_array();
  size_t off = 0;

  *records = NULL;
  *good_len = 0;
  *torn = false;
  if (arr == NULL) return HF_ENOMEM;
  while (off < len) {
    size_t reclen = 0;
    json_t *body;
    enum rec_kind k = rec_check(buf + off, len - off, &reclen, &body);
    if (k == REC_SHORT) { *torn = true; break; }
    if (k == REC_BAD) {
      /* A damaged last record whose length reaches exactly to the end is
       * also what a cut write looks like on file systems that extend the
       * size before the data lands (zeros); anything else is corruption. */
      if (reclen > 0 && off + reclen == len) { *torn = true; break; }
      json_decref(arr);
      return HF_EJOURNAL;
    }
    json_array_append_new(arr, body);
    off += reclen;
  }
  *good_len = off;
  *records = arr;
  return 0;
}

int hf_journal_path(const char *state_dir, const char *rollout, char *out, size_t outlen) {
  if (!hf_valid_id(rollout)) return HF_EBADARG;
  return hf__pathf(out, outlen, "%s/journal-%s", state_dir, rollout);
}

/* Reads the whole file at fd (bounded: a journal is a few KiB; 64 MiB cap). */
static int read_all(int fd, char **buf, size_t *len) {
  if (hf_read_fd(fd, 64 * 1024 * 1024, buf, len) == 0) return 0;
  return errno == ENOMEM ? HF_ENOMEM : HF_EJOURNAL;
}

int hf_journal_read(const char *state_dir, const char *rollout, json_t **records, bool *torn) {
  char path[PATH_MAX], *buf = NULL;
  size_t len = 0, good;
  int fd, r;

  *records = NULL;
  *torn = false;
  if ((r = hf_journal_path(state_dir, rollout, path, sizeof path)) != 0) return r;
  fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      *records = json_array();
      return *records ? 0 : HF_ENOMEM;
    }
    return HF_EJOURNAL;
  }
  r = read_all(fd, &buf, &len);
  close(fd);
  if (r != 0) return r;
  r = hf_journal_parse(buf, len, records, &good, torn);
  free(buf);
  return r;
}

int hf_journal_append(const char *state_dir, const char *rollout, const json_t *body) {
  char path[PATH_MAX], *rec = NULL, *buf = NULL;
  size_t reclen, len, good;
  json_t *old = NULL;
  bool torn = false, created = false;
  char err[1024];
  int fd = -1, r;
  size_t off;

  if ((r = hf_journal_path(state_dir, rollout, path, sizeof path)) != 0) return r;
  if ((r = hf_journal_encode(body, &rec, &reclen)) != 0) return r == HF_ENOMEM ? r : HF_EJOURNAL;
  /* Only in a directory of the agent's own (created 0700 when missing), and
   * never through a symlink: the journal's paths feed the restore. */
  if (hf_sf_private_dir(state_dir, true, "state directory", err, sizeof err) != 0) { r = HF_EJOURNAL; goto out; }
  fd = hf_sf_open_own(path, 0600, false, false, &created, err, sizeof err);
  if (fd < 0) { r = HF_EJOURNAL; goto out; }
  if (!created) {
    /* A torn tail from an earlier cut write would hide every record written
     * after it: cut it off first. Corruption is refused, not papered over. */
    if ((r = read_all(fd, &buf, &len)) != 0) goto out;
    if ((r = hf_journal_parse(buf, len, &old, &good, &torn)) != 0) goto out;
    if (torn && ftruncate(fd, (off_t)good) != 0) { r = HF_EJOURNAL; goto out; }
  } else {
    good = 0;
  }
  off = 0;
  while (off < reclen) {
    ssize_t n = pwrite(fd, rec + off, reclen - off, (off_t)(good + off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) { r = HF_EJOURNAL; goto out; }
    off += (size_t)n;
  }
  if (fsync(fd) != 0) { r = HF_EJOURNAL; goto out; }
  r = 0;
out:
  if (fd >= 0) close(fd);
  free(rec);
  free(buf);
  json_decref(old);
  return r;
}
