/* sanitize.c: the controller's output edge (hf_sanitize.h): one filter for every byte it prints
 * to a terminal, and random O_EXCL temporary files for what it writes for other programs. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf_files.h"
#include "hf_sanitize.h"

/* Length of the valid UTF-8 sequence at p (avail bytes), 0 when it is not
 * one, -1 when p ends inside what may still become one. */
static int utf8_len(const unsigned char *p, size_t avail) {
  unsigned char c = p[0], lo = 0x80, hi = 0xbf;
  int n;
  if (c >= 0xc2 && c <= 0xdf) n = 2;
  else if (c >= 0xe0 && c <= 0xef) { n = 3; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
  else if (c >= 0xf0 && c <= 0xf4) { n = 4; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
  else return 0;
  for (int i = 1; i < n; i++) {
    if ((size_t)i >= avail) return -1;
    unsigned char b = p[i];
    if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xbf)) return 0;
  }
  return n;
}

/* Code points that are valid UTF-8 but still steer a terminal or the reading
 * order: C1 controls (U+0080-U+009F, CSI and OSC among them), the
 * bidirectional embeddings, overrides and isolates (U+202A-U+202E,
 * U+2066-U+2069), and the line and paragraph separators. */
static bool dangerous(const unsigned char *p, int n) {
  if (n == 2) return p[0] == 0xc2 && p[1] <= 0x9f;
  if (n == 3 && p[0] == 0xe2 && p[1] == 0x80) return (p[2] >= 0xa8 && p[2] <= 0xae);
  if (n == 3 && p[0] == 0xe2 && p[1] == 0x81) return p[2] >= 0xa6 && p[2] <= 0xa9;
  return false;
}

size_t hf_clean_bytes(const char *in, size_t n, char *out, size_t *used, bool final) {
  const unsigned char *p = (const unsigned char *)in;
  size_t i = 0, o = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      out[o++] = (c >= 0x20 && c != 0x7f) || c == '\n' || c == '\t' ? (char)c : '?';
      i++;
      continue;
    }
    int k = utf8_len(p + i, n - i);
    if (k < 0 && !final) break; /* the rest of the sequence comes with the next write */
    if (k <= 0 || dangerous(p + i, k)) {
      out[o++] = '?';
      i += k > 0 ? (size_t)k : 1;
      continue;
    }
    memcpy(out + o, p + i, (size_t)k);
    o += (size_t)k;
    i += (size_t)k;
  }
  if (used) *used = i;
  return o;
}

char *hf_clean(char *out, size_t outlen, const char *in) {
  size_t n = in ? strlen(in) : 0, w;
  if (n > outlen - 1) {
    n = outlen - 1;
    /* cut before a sequence that would not fit whole */
    while (n > 0 && ((unsigned char)in[n] & 0xc0) == 0x80) n--;
  }
  w = hf_clean_bytes(in ? in : "", n, out, NULL, true);
  out[w] = '\0';
  return out;
}

char *hf_clean_line(char *out, size_t outlen, const char *in) {
  hf_clean(out, outlen, in);
  for (char *p = out; *p; p++)
    if (*p == '\n' || *p == '\t') *p = ' ';
  return out;
}

/* ---- filtered stdout and stderr ------------------------------------------------ */

struct filt {
  int    fd;
  char   tail[4];   /* an incomplete UTF-8 sequence held back */
  size_t ntail;
};

static ssize_t filt_write(void *cookie, const char *buf, size_t size) {
  struct filt *ft = cookie;
  char out[4096 + 8], in[4096 + 8];
  size_t done = 0;
  while (done < size) {
    size_t take = size - done > 4096 ? 4096 : size - done, used, w;
    memcpy(in, ft->tail, ft->ntail);
    memcpy(in + ft->ntail, buf + done, take);
    w = hf_clean_bytes(in, ft->ntail + take, out, &used, false);
    ft->ntail = ft->ntail + take - used;
    if (ft->ntail > sizeof ft->tail) { /* cannot happen: at most 3 bytes of a sequence */
      w += hf_clean_bytes(in + used, ft->ntail, out + w, NULL, true);
      ft->ntail = 0;
    } else {
      memcpy(ft->tail, in + used, ft->ntail);
    }
    if (hf_write_all(ft->fd, out, w) != 0) return done > 0 ? (ssize_t)done : -1;
    done += take;
  }
  return (ssize_t)size;
}

static int filt_close(void *cookie) {
  struct filt *ft = cookie;
  if (ft->ntail) {
    char out[8];
    size_t w = hf_clean_bytes(ft->tail, ft->ntail, out, NULL, true);
    hf_write_all(ft->fd, out, w);
    ft->ntail = 0;
  }
  return 0;
}

/* One state per filtered stream (stdout, stderr): static, as the streams
 * live until exit flushes them. */
static struct filt filt_state[2];

static FILE *filtered(FILE *orig, struct filt *ft) {
  cookie_io_functions_t io = { .read = NULL, .write = filt_write, .seek = NULL, .close = filt_close };
  FILE *f;
  memset(ft, 0, sizeof *ft);
  ft->fd = fileno(orig);
  f = fopencookie(ft, "w", io);
  if (f == NULL) return NULL;
  setvbuf(f, NULL, _IOLBF, 0);
  return f;
}

static bool installed;

int hf_sanitize_stdio(void) {
  FILE *o, *e;
  if (installed) return 0;
  fflush(stdout);
  fflush(stderr);
  o = filtered(stdout, &filt_state[0]);
  e = filtered(stderr, &filt_state[1]);
  if (o == NULL || e == NULL) {
    if (o) fclose(o);
    if (e) fclose(e);
    return -1;
  }
  /* The originals stay open (their descriptors are shared); only the FILE
   * pointers every printf uses change. */
  stdout = o;
  stderr = e;
  installed = true;
  return 0;
}

void hf_term_raw(FILE *f, const char *s) {
  int fd;
  fflush(f);
  fd = f == stdout ? STDOUT_FILENO : f == stderr ? STDERR_FILENO : fileno(f);
  if (fd >= 0) hf_write_all(fd, s, strlen(s));
}

/* ---- files written for other programs --------------------------------------------- */

int hf_out_open(struct hf_out *o, const char *path, int mode, char *err, size_t errlen) {
  const char *slash = strrchr(path, '/');
  int fd = -1, tries;
  memset(o, 0, sizeof *o);
  if (snprintf(o->path, sizeof o->path, "%s", path) >= (int)sizeof o->path) {
    snprintf(err, errlen, "%.200s: path too long", path);
    return -1;
  }
  for (tries = 0; tries < 16 && fd < 0; tries++) {
    uint64_t r = 0;
    if (getrandom(&r, sizeof r, 0) != (ssize_t)sizeof r) r ^= (uint64_t)getpid() << 20 ^ (uint64_t)tries;
    if (snprintf(o->tmp, sizeof o->tmp, "%.*s.%s.tmp-%016llx", slash ? (int)(slash - path + 1) : 0, path,
                 slash ? slash + 1 : path, (unsigned long long)r) >= (int)sizeof o->tmp) {
      snprintf(err, errlen, "%.200s: path too long", path);
      return -1;
    }
    fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, (mode_t)mode);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0 || fchmod(fd, (mode_t)mode) != 0 || (o->f = fdopen(fd, "w")) == NULL) {
    snprintf(err, errlen, "%s: %s", o->tmp, strerror(errno));
    if (fd >= 0) { close(fd); unlink(o->tmp); }
    o->tmp[0] = '\0';
    return -1;
  }
  return 0;
}

int hf_out_commit(struct hf_out *o, bool ok, char *err, size_t errlen) {
  int r = 0;
  if (o->f == NULL) return -1;
  if (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0) { if (ok) snprintf(err, errlen, "%s: %s", o->tmp, strerror(errno)); r = -1; }
  if (fclose(o->f) != 0 && r == 0) { if (ok) snprintf(err, errlen, "%s: %s", o->tmp, strerror(errno)); r = -1; }
  o->f = NULL;
  if (ok && r == 0 && rename(o->tmp, o->path) != 0) { snprintf(err, errlen, "%s: %s", o->path, strerror(errno)); r = -1; }
  if (!ok || r != 0) unlink(o->tmp);
  return ok ? r : 0;
}
