/* util.c: small helpers for the agent: clocks and a request's deadline, checked formatting, directories,
 * owned argv lists, the line of a command's output that says why it failed. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent_int.h"

int64_t hf__cpu_at_start;

int64_t hf__cpu_us(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (int64_t)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec +
         (int64_t)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
}

int64_t hf__now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void hf__utc_now(char *out, size_t outlen) {
  struct timespec ts;
  struct tm tm;
  char base[32];
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, outlen, "%s.%03ldZ", base, ts.tv_nsec / 1000000);
}

int hf__pathf(char *out, size_t outlen, const char *fmt, ...) {
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = vsnprintf(out, outlen, fmt, ap);
  va_end(ap);
  return (n < 0 || (size_t)n >= outlen) ? HF_EINVAL : 0;
}

int hf__mkdirs(const char *path, int mode) {
  char tmp[PATH_MAX];
  char *p;
  if (hf__pathf(tmp, sizeof tmp, "%s", path) != 0) return HF_EINVAL;
  for (p = tmp + 1; ; p++) {
    if (*p == '/' || *p == '\0') {
      char c = *p;
      *p = '\0';
      if (mkdir(tmp, (mode_t)mode) != 0 && errno != EEXIST) return HF_EIO;
      *p = c;
      if (c == '\0') break;
    }
  }
  return 0;
}

void hf_argv_init(struct hf_argv *a) {
  memset(a, 0, sizeof *a);
}

void hf_argv_push(struct hf_argv *a, const char *s) {
  if (a->error) return;
  if (a->n >= HF_ARGV_MAX) { a->error = HF_EINVAL; return; }
  if ((a->v[a->n] = strdup(s)) == NULL) { a->error = HF_ENOMEM; return; }
  a->n++;
  a->v[a->n] = NULL;
}

void hf_argv_pushf(struct hf_argv *a, const char *fmt, ...) {
  va_list ap;
  char *s = NULL;
  int n;
  if (a->error) return;
  va_start(ap, fmt);
  n = vasprintf(&s, fmt, ap);
  va_end(ap);
  if (n < 0) { a->error = HF_ENOMEM; return; }
  if (a->n >= HF_ARGV_MAX) { free(s); a->error = HF_EINVAL; return; }
  a->v[a->n++] = s;
  a->v[a->n] = NULL;
}

int hf_argv_error(const struct hf_argv *a) {
  return a->error;
}

void hf_argv_free(struct hf_argv *a) {
  int i;
  for (i = 0; i < a->n; i++) free(a->v[i]);
  a->n = 0;
  a->v[0] = NULL;
}

int64_t hf__left_ms(const struct hf_req *r) {
  int64_t left = r->deadline_ms - hf__now_ms();
  return left > 1000 ? left : 1000;
}

/* The line of a failed command's output that says why: the last one that
 * names an error, else the last non-empty one. Into out. */
void hf__why_line(const char *text, char *out, size_t outlen) {
  const char *p = text, *best = NULL, *last = NULL;
  size_t bl = 0, ll = 0;
  out[0] = '\0';
  while (p && *p) {
    const char *e = strchr(p, '\n');
    size_t l = e ? (size_t)(e - p) : strlen(p);
    if (l > 0) {
      last = p; ll = l;
      if ((memmem(p, l, "Error", 5) || memmem(p, l, "error:", 6) || memmem(p, l, "failed", 6)) &&
          !memmem(p, l, "Traceback", 9)) { best = p; bl = l; }
    }
    p = e ? e + 1 : NULL;
  }
  if (best == NULL) { best = last; bl = ll; }
  if (best == NULL) return;
  while (bl > 0 && (*best == ' ' || *best == '\t')) { best++; bl--; }
  snprintf(out, outlen, "%.*s", (int)(bl < outlen ? bl : outlen - 1), best);
}
