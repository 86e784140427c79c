/* safefile.c: the agent's one set of file-writing helpers (hf_safefile.h): private directories
 * checked with their parents, random O_EXCL|O_NOFOLLOW temporary files renamed into place with
 * the destination's owner and mode, and O_NOFOLLOW opens of the files it appends to. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_safefile.h"

/* 16 random hex digits after prefix into out. */
static void random_name(char *out, size_t outlen, const char *prefix) {
  unsigned char b[8];
  size_t i, got = 0;
  while (got < sizeof b) {
    ssize_t n = getrandom(b + got, sizeof b - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) { /* no entropy source: still unpredictable enough with O_EXCL retries */
      uint64_t v = (uint64_t)hf__now_ms() * 6364136223846793005ULL ^ (uint64_t)getpid() << 32 ^ (uint64_t)(uintptr_t)out;
      memcpy(b, &v, sizeof b);
      break;
    }
    got += (size_t)n;
  }
  snprintf(out, outlen, "%s", prefix);
  for (i = 0; i < sizeof b; i++) {
    size_t l = strlen(out);
    snprintf(out + l, outlen - l, "%02x", b[i]);
  }
}

/* One directory on the way to (or being) an agent directory: owner and mode. */
static int check_one(const char *p, const struct stat *st, bool last, const char *what, const char *dir,
                     char *err, size_t errlen) {
  uid_t me = geteuid();
  if (!S_ISDIR(st->st_mode)) {
    snprintf(err, errlen, "%s %s: %s is not a directory", what, dir, p);
    return HF_ESTATE;
  }
  if (last ? st->st_uid != me : (st->st_uid != me && st->st_uid != 0)) {
    snprintf(err, errlen, "%s %s: %s is owned by uid %u, but the agent runs as uid %u and trusts only directories of "
             "its own%s: chown %u %s, or choose a %s the agent's user owns", what, dir, p, (unsigned)st->st_uid,
             (unsigned)me, last ? "" : " or root's", (unsigned)me, p, what);
    return HF_ESTATE;
  }
  /* A root-owned sticky directory (/tmp) is a safe parent: nobody else can
   * rename or remove what is in it. */
  if ((st->st_mode & 022) != 0 && (last || !((st->st_mode & S_ISVTX) && st->st_uid == 0))) {
    snprintf(err, errlen, "%s %s: %s is writable by group or others (mode %04o), so another user could replace the "
             "agent's files there: chmod go-w %s", what, dir, p, (unsigned)(st->st_mode & 07777), p);
    return HF_ESTATE;
  }
  return 0;
}

/* Checks every prefix of path (following symlinks: each prefix as it
 * resolves), creating missing ones when create. *missing set when the
 * directory does not exist and was not created. */
static int check_chain(const char *path, bool create, const char *what, const char *dir, bool *missing,
                       char *err, size_t errlen) {
  char p[PATH_MAX];
  size_t len = strlen(path), i;
  struct stat st;
  int rc;

  *missing = false;
  if (path[0] != '/' || len >= sizeof p) {
    snprintf(err, errlen, "%s %s: not an absolute path", what, dir);
    return HF_EBADARG;
  }
  memcpy(p, path, len + 1);
  while (len > 1 && p[len - 1] == '/') p[--len] = '\0';
  for (i = 1; i <= len; i++) {
    bool last = i == len;
    if (!last && p[i] != '/') continue;
    p[i] = '\0';
    if (stat(i == 1 && !last ? "/" : p, &st) != 0 && i > 1) {
      if (errno != ENOENT) {
        snprintf(err, errlen, "%s %s: %s: %s", what, dir, p, strerror(errno));
        return HF_EIO;
      }
      if (!create) { *missing = true; return 0; }
      if (mkdir(p, 0700) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "cannot create %s %s: %s: %s", what, dir, p, strerror(errno));
        return HF_EIO;
      }
      if (stat(p, &st) != 0) {
        snprintf(err, errlen, "%s %s: %s: %s", what, dir, p, strerror(errno));
        return HF_EIO;
      }
    }
    if (i == 1 && !last) {
      if ((rc = check_one("/", &st, false, what, dir, err, errlen)) != 0) return rc;
    } else if ((rc = check_one(p, &st, last, what, dir, err, errlen)) != 0) {
      return rc;
    }
    if (!last) p[i] = '/';
  }
  return 0;
}

int hf_sf_private_dir(const char *dir, bool create, const char *what, char *err, size_t errlen) {
  char real[PATH_MAX];
  bool missing;
  int rc = check_chain(dir, create, what, dir, &missing, err, errlen);
  if (rc != 0 || missing) return rc;
  /* A symlink on the way was followed above: its target's own parents too. */
  if (realpath(dir, real) == NULL) {
    snprintf(err, errlen, "%s %s: %s", what, dir, strerror(errno));
    return HF_EIO;
  }
  if (strcmp(real, dir) == 0) return 0;
  return check_chain(real, false, what, dir, &missing, err, errlen);
}

int hf_sf_open_parent(const char *path, const char **name, char *err, size_t errlen) {
  char dir[PATH_MAX];
  const char *slash = strrchr(path, '/');
  int fd;
  if (slash == NULL || slash[1] == '\0' || (size_t)(slash - path) >= sizeof dir) {
    snprintf(err, errlen, "%s: not an absolute file path", path);
    errno = EINVAL;
    return -1;
  }
  if (slash == path) snprintf(dir, sizeof dir, "/");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  *name = slash + 1;
  fd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "open directory %s: %s", dir, e == ELOOP || e == ENOTDIR ? "is a symbolic link or not a directory" : strerror(e));
    errno = e;
  }
  return fd;
}

static const char *kind_of(mode_t m) {
  return S_ISLNK(m) ? "a symbolic link" : S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : "not a regular file";
}

int hf_sf_begin(struct hf_sf *s, const char *path, mode_t mode, char *err, size_t errlen) {
  struct stat st;
  int tries;

  memset(s, 0, sizeof *s);
  s->dirfd = s->fd = -1;
  if (hf__pathf(s->path, sizeof s->path, "%s", path) != 0) {
    snprintf(err, errlen, "path too long: %.200s", path);
    return HF_EBADARG;
  }
  if ((s->dirfd = hf_sf_open_parent(s->path, &s->name, err, errlen)) < 0) return HF_EIO;
  if (fstatat(s->dirfd, s->name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISREG(st.st_mode)) {
      snprintf(err, errlen, "%s is %s: refusing to replace it (the agent writes regular files only)", path,
               kind_of(st.st_mode));
      hf_sf_abort(s);
      return HF_ESTATE;
    }
    s->uid = st.st_uid;
    s->gid = st.st_gid;
    s->mode = st.st_mode & 07777;
    s->existed = true;
  } else if (errno == ENOENT) {
    s->uid = geteuid();
    s->gid = getegid();
    s->mode = mode & 07777;
  } else {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    hf_sf_abort(s);
    return HF_EIO;
  }
  for (tries = 0; tries < 16; tries++) {
    random_name(s->tmp, sizeof s->tmp, ".hf-tmp-");
    s->fd = openat(s->dirfd, s->tmp, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (s->fd >= 0 || errno != EEXIST) break;
  }
  if (s->fd < 0) {
    snprintf(err, errlen, "create a temporary file beside %s: %s", path, strerror(errno));
    s->tmp[0] = '\0';
    hf_sf_abort(s);
    return HF_EIO;
  }
  return 0;
}

int hf_sf_commit(struct hf_sf *s, char *err, size_t errlen) {
  struct stat st;
  if (s->fd < 0) {
    snprintf(err, errlen, "%s: nothing to commit", s->path);
    return HF_EINVAL;
  }
  if (fstat(s->fd, &st) != 0) goto fail;
  if (st.st_uid != s->uid || st.st_gid != s->gid) {
    if (fchown(s->fd, s->uid, s->gid) != 0) {
      /* Only the group may be left as ours when we cannot give it away. */
      if (s->uid != st.st_uid || fchown(s->fd, (uid_t)-1, st.st_gid) != 0) {
        snprintf(err, errlen, "%s belongs to uid %u, but the agent (uid %u) cannot give the replacement that owner "
                 "(%s): run the agent as root (hubfleet_become) or as the file's owner", s->path, (unsigned)s->uid,
                 (unsigned)geteuid(), strerror(errno));
        hf_sf_abort(s);
        return HF_ESTATE;
      }
    }
  }
  if (fchmod(s->fd, s->mode) != 0 || fsync(s->fd) != 0) goto fail;
  if (renameat(s->dirfd, s->tmp, s->dirfd, s->name) != 0) goto fail;
  s->tmp[0] = '\0';
  if (fsync(s->dirfd) != 0) goto fail;
  hf_sf_abort(s);
  return 0;
fail:
  snprintf(err, errlen, "write %s: %s", s->path, strerror(errno));
  hf_sf_abort(s);
  return HF_EIO;
}

void hf_sf_abort(struct hf_sf *s) {
  if (s->tmp[0] && s->dirfd >= 0) unlinkat(s->dirfd, s->tmp, 0);
  s->tmp[0] = '\0';
  if (s->fd >= 0) close(s->fd);
  if (s->dirfd >= 0) close(s->dirfd);
  s->fd = s->dirfd = -1;
}

int hf_sf_write_file(const char *path, const void *buf, size_t n, mode_t mode, char *err, size_t errlen) {
  struct hf_sf s;
  int rc = hf_sf_begin(&s, path, mode, err, errlen);
  if (rc != 0) return rc;
  if (hf_write_all(s.fd, buf, n) != 0) {
    snprintf(err, errlen, "write %s: %s", path, strerror(errno));
    hf_sf_abort(&s);
    return HF_EIO;
  }
  return hf_sf_commit(&s, err, errlen);
}

int hf_sf_open_own(const char *path, mode_t mode, bool append, bool trunc, bool *created, char *err, size_t errlen) {
  const char *name;
  struct stat st = { 0 };
  int dfd, fd, flags = O_RDWR | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | (append ? O_APPEND : 0);
  bool made = false;

  if (created) *created = false;
  if ((dfd = hf_sf_open_parent(path, &name, err, errlen)) < 0) return -1;
  fd = openat(dfd, name, flags);
  if (fd < 0 && errno == ENOENT) {
    fd = openat(dfd, name, flags | O_CREAT | O_EXCL, mode);
    made = fd >= 0;
  }
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "open %s: %s", path, e == ELOOP ? "is a symbolic link: refused" : strerror(e));
    close(dfd);
    errno = e;
    return -1;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid()) {
    snprintf(err, errlen, "%s is %s: refused (the agent's own files must be regular files with one link, owned by "
             "uid %u): remove it", path, !S_ISREG(st.st_mode) ? kind_of(st.st_mode) :
             st.st_nlink != 1 ? "hard-linked elsewhere" : "owned by another user", (unsigned)geteuid());
    close(fd);
    close(dfd);
    errno = EPERM;
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  if ((trunc && ftruncate(fd, 0) != 0) || (made && fsync(dfd) != 0)) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    close(fd);
    close(dfd);
    return -1;
  }
  close(dfd);
  if (created) *created = made;
  return fd;
}

/* The one read-only open of a path another user may control: O_NONBLOCK so a
 * FIFO planted there cannot block open(2) (the agent has no alarm and may
 * hold agent.lock), O_NOFOLLOW unless follow, and a regular file only. */
static int open_read(const char *path, bool follow, char *err, size_t errlen) {
  struct stat st = { 0 };
  int fd = open(path, O_RDONLY | (follow ? 0 : O_NOFOLLOW) | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    snprintf(err, errlen, "open %s: %s", path, e == ELOOP ? "is a symbolic link: refused" : strerror(e));
    errno = e;
    return -1;
  }
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    snprintf(err, errlen, "%s is %s: refused", path, kind_of(st.st_mode));
    close(fd);
    errno = EINVAL;
    return -1;
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

int hf_sf_open_read(const char *path, char *err, size_t errlen) {
  return open_read(path, false, err, errlen);
}

int hf_sf_open_read_sys(const char *path, char *err, size_t errlen) {
  return open_read(path, true, err, errlen);
}

int hf_sf_sha256(const char *path, char hex[HF_SHA256_HEX], char *err, size_t errlen) {
  int fd = hf_sf_open_read(path, err, errlen), r;
  hex[0] = '\0';
  if (fd < 0) return -1;
  if ((r = hf_sha256_fd(fd, hex)) != 0) snprintf(err, errlen, "read %s: %s", path, strerror(errno));
  close(fd);
  return r;
}

int hf_sf_move_aside(int dirfd, const char *name, char *out, size_t outlen) {
  char rnd[40];
  int tries;
  struct stat st;
  if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return errno == ENOENT ? 1 : -1;
  for (tries = 0; tries < 16; tries++) {
    random_name(rnd, sizeof rnd, ".hf-aside-");
    if (snprintf(out, outlen, "%s-%s", rnd, name) >= (int)outlen) return -1;
    if (renameat2(dirfd, name, dirfd, out, RENAME_NOREPLACE) == 0) return 0;
    if (errno == ENOENT) return 1;
    if (errno != EEXIST) return -1;
  }
  return -1;
}
