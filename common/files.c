/* files.c: whole-file reading and writing, the fsync of a parent directory and the removal of
 * a tree (hf_files.h). */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf_files.h"

int hf_write_all(int fd, const void *buf, size_t n) {
  const char *p = buf;
  while (n > 0) {
    ssize_t k = write(fd, p, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) { if (k == 0) errno = EIO; return -1; }
    p += k;
    n -= (size_t)k;
  }
  return 0;
}

int hf_read_fd(int fd, size_t max, char **out, size_t *len) {
  struct stat st;
  size_t have = 0;
  char *b;
  *out = NULL;
  *len = 0;
  if (fstat(fd, &st) != 0) return -1;
  if (!S_ISREG(st.st_mode)) { errno = EINVAL; return -1; }
  if ((unsigned long long)st.st_size > max) { errno = EFBIG; return -1; }
  if ((b = malloc((size_t)st.st_size + 1)) == NULL) { errno = ENOMEM; return -1; }
  while (have < (size_t)st.st_size) {
    ssize_t n = pread(fd, b + have, (size_t)st.st_size - have, (off_t)have);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { int e = errno; free(b); errno = e; return -1; }
    if (n == 0) break;
    have += (size_t)n;
  }
  b[have] = '\0';
  *out = b;
  *len = have;
  return 0;
}

int hf_read_file(const char *path, size_t max, char **out, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC), r, e;
  *out = NULL;
  *len = 0;
  if (fd < 0) return -1;
  r = hf_read_fd(fd, max, out, len);
  e = errno;
  close(fd);
  errno = e;
  return r;
}

int hf_fsync_parent(const char *path) {
  char dir[PATH_MAX];
  char *slash;
  int fd, r, e;
  if (snprintf(dir, sizeof dir, "%s", path) >= (int)sizeof dir) { errno = ENAMETOOLONG; return -1; }
  if ((slash = strrchr(dir, '/')) == NULL) { errno = EINVAL; return -1; }
  if (slash == dir) slash[1] = '\0'; else *slash = '\0';
  if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) return -1;
  r = fsync(fd);
  e = errno;
  close(fd);
  errno = e;
  return r == 0 ? 0 : -1;
}

static int rm_one(const char *p, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb; (void)ftw;
  if (type == FTW_DP) rmdir(p);
  else unlink(p);
  return 0;
}

int hf_rm_tree(const char *path) {
  if (path == NULL || path[0] != '/' || path[1] == '\0') { errno = EINVAL; return -1; }
  /* Depth first, never following symlinks out of the tree (FTW_PHYS). */
  nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
  return 0;
}
