/* stage.c: environments prepared before the hub stops (issue 17). `stage` copies each environment
 * ENV of the hub to ENV.hf-next (same directory, so same filesystem), pip-installs the target into
 * the copy as install would, rewrites the paths pip wrote so the copy works once renamed to ENV,
 * and checks it with the copy's own Python; install (after the stop) exchanges ENV and ENV.hf-next
 * and keeps the previous environment as ENV.hf-prev; rollback exchanges that back.
 *
 * Where the hub's user can write (the environments' directory), every file and directory here is
 * made with openat/mkdirat/symlinkat relative to directories opened O_DIRECTORY|O_NOFOLLOW, new
 * files O_CREAT|O_EXCL|O_NOFOLLOW with the owner and mode of what they copy or replace, and a
 * rewritten file goes through a random temporary name renamed over it. Nothing follows a symlink.
 * The staging directory stays the agent's own, mode 0700, until the switch gives it the live
 * environment's owner and mode, so the hub's user cannot reach into it meanwhile. What this agent
 * made is known from its own record in STATE_DIR/stage/ (device and inode of ENV.hf-next, of the
 * live ENV it copied and of the ENV.hf-prev it kept), never from anything in the hub's directories. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "agent_int.h"
#include "hf_files.h"
#include "hf_safefile.h"
#include "hub.h"
#include "prep.h"
#include "stage.h"

#define NEXT_SUFFIX ".hf-next"
#define PREV_SUFFIX ".hf-prev"

/* ---- where an environment's staging happens ---------------------------------------------------- */

struct spot {
  int  pfd;                   /* the environment's directory, O_DIRECTORY|O_NOFOLLOW */
  char live[NAME_MAX + 1];    /* ENV's last component */
  char next[NAME_MAX + 1];    /* ENV.hf-next */
  char prev[NAME_MAX + 1];    /* ENV.hf-prev */
  char nextpath[PATH_MAX];
  char prevpath[PATH_MAX];
};

static int spot_open(struct hf_req *r, const char *prefix, struct spot *s) {
  const char *name;
  char err[1024];
  s->pfd = hf_sf_open_parent(prefix, &name, err, sizeof err);
  if (s->pfd < 0) {
    snprintf(r->msg, sizeof r->msg, "stage: environment %s: %s", prefix, err);
    return HF_EIO;
  }
  if (hf__pathf(s->live, sizeof s->live, "%s", name) != 0 ||
      hf__pathf(s->next, sizeof s->next, "%s" NEXT_SUFFIX, name) != 0 ||
      hf__pathf(s->prev, sizeof s->prev, "%s" PREV_SUFFIX, name) != 0 ||
      hf__pathf(s->nextpath, sizeof s->nextpath, "%s" NEXT_SUFFIX, prefix) != 0 ||
      hf__pathf(s->prevpath, sizeof s->prevpath, "%s" PREV_SUFFIX, prefix) != 0) {
    close(s->pfd);
    snprintf(r->msg, sizeof r->msg, "stage: environment path too long: %.200s", prefix);
    return HF_EBADARG;
  }
  return 0;
}

/* lstat of name in the spot's directory: true when it exists. */
static bool at_stat(const struct spot *s, const char *name, struct stat *st) {
  return fstatat(s->pfd, name, st, AT_SYMLINK_NOFOLLOW) == 0;
}

static const char *kind(const struct stat *st) {
  return S_ISLNK(st->st_mode) ? "a symbolic link" : S_ISDIR(st->st_mode) ? "a directory" : "not a directory";
}

static char **names_of(int fd);
static void names_free(char **v);

/* ---- the agent's record of what it staged (STATE_DIR/stage/env-KEY.json) ------------------------ */

static int rec_path(struct hf_req *r, const char *prefix, char *out, size_t outlen) {
  char hex[HF_SHA256_HEX];
  hf_sha256_hex(prefix, strlen(prefix), hex);
  return hf__pathf(out, outlen, "%s/stage/env-%.16s.json", r->hub.state_dir, hex);
}

/* The record (new) or NULL when there is none or it is not one of ours for prefix. */
static json_t *rec_load(struct hf_req *r, const char *prefix) {
  char path[PATH_MAX], err[512], *buf = NULL;
  size_t n = 0;
  json_t *rec;
  int fd;
  if (rec_path(r, prefix, path, sizeof path) != 0 || (fd = hf_sf_open_read(path, err, sizeof err)) < 0) return NULL;
  if (hf_read_fd(fd, 1 << 20, &buf, &n) != 0) buf = NULL;
  close(fd);
  rec = buf ? json_loadb(buf, n, 0, NULL) : NULL;
  free(buf);
  if (!json_is_object(rec) || strcmp(json_string_value(json_object_get(rec, "env")) ?: "", prefix) != 0) {
    json_decref(rec);
    return NULL;
  }
  return rec;
}

static int rec_save(struct hf_req *r, const char *prefix, json_t *rec) {
  char path[PATH_MAX], dir[PATH_MAX], *text;
  int rc;
  if (rec_path(r, prefix, path, sizeof path) != 0 || hf__pathf(dir, sizeof dir, "%s/stage", r->hub.state_dir) != 0)
    return HF_EBADARG;
  if (hf__mkdirs(dir, 0700) != 0) {
    snprintf(r->msg, sizeof r->msg, "stage: cannot create %s: %s", dir, strerror(errno));
    return HF_EIO;
  }
  if ((text = json_dumps(rec, JSON_COMPACT | JSON_SORT_KEYS)) == NULL) return HF_ENOMEM;
  rc = hf_sf_write_file(path, text, strlen(text), 0600, r->msg, sizeof r->msg);
  free(text);
  return rc;
}

static void rec_set_id(json_t *rec, const char *what, const struct stat *st) {
  char k[32];
  snprintf(k, sizeof k, "%s_dev", what);
  json_object_set_new(rec, k, json_integer((json_int_t)st->st_dev));
  snprintf(k, sizeof k, "%s_ino", what);
  json_object_set_new(rec, k, json_integer((json_int_t)st->st_ino));
}

/* Is st the directory the record names as what ("next", "live", "prev")? */
static bool rec_is(const json_t *rec, const char *what, const struct stat *st) {
  char kd[32], ki[32];
  json_t *d, *i;
  snprintf(kd, sizeof kd, "%s_dev", what);
  snprintf(ki, sizeof ki, "%s_ino", what);
  d = json_object_get(rec, kd);
  i = json_object_get(rec, ki);
  return rec != NULL && json_is_integer(d) && json_is_integer(i) && S_ISDIR(st->st_mode) &&
         (json_int_t)st->st_dev == json_integer_value(d) && (json_int_t)st->st_ino == json_integer_value(i);
}

/* ---- what an environment holds ----------------------------------------------------------------- */

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* SHA-256 (hex) of the sorted names of the *.dist-info / *.egg-info entries of e's site-packages:
 * which distributions at which versions. "" when it cannot be read. */
static void fingerprint(const struct hf_env *e, char hex[HF_SHA256_HEX]) {
  DIR *d = e->site[0] ? opendir(e->site) : NULL;
  struct dirent *de;
  char **names = NULL, *all;
  size_t n = 0, cap = 0, len = 0, i, o = 0;
  hex[0] = '\0';
  if (d == NULL) return;
  while ((de = readdir(d)) != NULL) {
    size_t l = strlen(de->d_name);
    if (!((l > 10 && strcmp(de->d_name + l - 10, ".dist-info") == 0) ||
          (l > 9 && strcmp(de->d_name + l - 9, ".egg-info") == 0)))
      continue;
    if (n == cap) {
      char **nn = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof *names);
      if (nn == NULL) break;
      names = nn;
    }
    if ((names[n] = strdup(de->d_name)) == NULL) break;
    len += l + 1;
    n++;
  }
  closedir(d);
  qsort(names, n, sizeof *names, cmp_names);
  if ((all = malloc(len + 1)) != NULL) {
    for (i = 0; i < n; i++) o += (size_t)sprintf(all + o, "%s\n", names[i]);
    hf_sha256_hex(all, o, hex);
    free(all);
  }
  for (i = 0; i < n; i++) free(names[i]);
  free(names);
}

/* ---- what the live environment looks like (its files' metadata) ------------------------------- */

#define DIGEST_MAX_ENTRIES 400000

static bool skip_cache(const char *name, const struct stat *st) {
  size_t l = strlen(name);
  return (S_ISDIR(st->st_mode) && strcmp(name, "__pycache__") == 0) ||
         (S_ISREG(st->st_mode) && l > 4 && strcmp(name + l - 4, ".pyc") == 0);
}

/* Feeds every entry under the directory fd into h, sorted by name: its path, type, mode, owner,
 * and for files and links their size, mtime and ctime (a directory's own times change whenever a
 * byte-code cache appears in it; what it holds is in its entries' names). Byte-code caches
 * (__pycache__, *.pyc) are left out: Python writes them as it runs. -1 past *left entries or the
 * request's deadline (*why says so), else 0. */
static int digest_dir(struct hf_req *r, int fd, const char *rel, int depth, struct hf_sha256 *h, long *left,
                      char *why, size_t whylen) {
  char **v = names_of(fd);
  size_t i, n = 0;
  int rc = 0;
  if (v == NULL) { snprintf(why, whylen, "cannot read %s: %s", rel[0] ? rel : ".", strerror(errno)); return -1; }
  while (v[n]) n++;
  qsort(v, n, sizeof *v, cmp_names);
  for (i = 0; i < n && rc == 0; i++) {
    struct stat st;
    char line[PATH_MAX + 200], sub[PATH_MAX];
    int len;
    if (--*left < 0) { snprintf(why, whylen, "more than %d entries", DIGEST_MAX_ENTRIES); rc = -1; break; }
    if ((*left & 1023) == 0 && hf__now_ms() > r->deadline_ms) { snprintf(why, whylen, "the request's time ran out reading it"); rc = -1; break; }
    if (fstatat(fd, v[i], &st, AT_SYMLINK_NOFOLLOW) != 0) { len = snprintf(line, sizeof line, "%s%s gone\n", rel, v[i]); hf_sha256_update(h, line, (size_t)len); continue; }
    if (skip_cache(v[i], &st)) continue;
    if (S_ISDIR(st.st_mode))
      len = snprintf(line, sizeof line, "%s%s d %o %u %u\n", rel, v[i], (unsigned)st.st_mode, (unsigned)st.st_uid,
                     (unsigned)st.st_gid);
    else
      len = snprintf(line, sizeof line, "%s%s %o %u %u %lld %lld.%09ld %lld.%09ld\n", rel, v[i], (unsigned)st.st_mode,
                     (unsigned)st.st_uid, (unsigned)st.st_gid, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
                     st.st_mtim.tv_nsec, (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
    hf_sha256_update(h, line, len < (int)sizeof line ? (size_t)len : sizeof line - 1);
    if (S_ISDIR(st.st_mode)) {
      int c;
      if (depth >= 64 || snprintf(sub, sizeof sub, "%s%s/", rel, v[i]) >= (int)sizeof sub) continue;
      if ((c = openat(fd, v[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
        snprintf(why, whylen, "cannot open %s%s: %s", rel, v[i], strerror(errno));
        rc = -1;
        break;
      }
      rc = digest_dir(r, c, sub, depth + 1, h, left, why, whylen);
      close(c);
    }
  }
  names_free(v);
  return rc;
}

/* SHA-256 (hex) of the metadata of everything in the environment directory fd (digest_dir), or ""
 * with why set when it could not be read in full within its bounds. */
static void tree_digest(struct hf_req *r, int fd, char hex[HF_SHA256_HEX], char *why, size_t whylen) {
  struct hf_sha256 h;
  unsigned char d[HF_SHA256_LEN];
  long left = DIGEST_MAX_ENTRIES;
  hex[0] = '\0';
  hf_sha256_init(&h);
  if (digest_dir(r, fd, "", 0, &h, &left, why, whylen) != 0) return;
  hf_sha256_final(&h, d);
  hf_sha256_tohex(d, hex);
}

/* Does the environment at prefix hold exactly pins ({pkg: ver}, non-strings ignored), read from
 * its files? got (may be NULL) gets {pkg: version-or-null}. */
static bool holds(const char *prefix, json_t *pins, json_t *got) {
  struct hf_env e;
  const char *pkg;
  json_t *v;
  bool all = true;
  hf_env_inspect(prefix, "pip", &e);
  if (!e.exists) return false;
  json_object_foreach(pins, pkg, v) {
    char ver[1][HF_VER_LEN];
    if (!json_is_string(v)) continue;
    hf_env_versions(&e, &pkg, 1, ver);
    if (got) json_object_set_new(got, pkg, ver[0][0] ? json_string(ver[0]) : json_null());
    if (strcmp(ver[0], json_string_value(v)) != 0) all = false;
  }
  return all;
}

/* pins as one string (the record's key for them). */
static void pins_text(json_t *pins, char *out, size_t outlen) {
  char *ps = json_dumps(pins, JSON_COMPACT | JSON_SORT_KEYS);
  snprintf(out, outlen, "%s", ps ? ps : "");
  free(ps);
}

/* Is ENV.hf-next the complete staged copy this agent made of e as it is now (same directory, same
 * distributions, no file changed since the copy began), at pins, with the database at alembic,
 * and do its files say so? got (may be NULL) gets its versions; why (may be NULL) what differs. */
static bool still_staged(struct hf_req *r, const struct hf_env *e, json_t *pins, const char *alembic, json_t *got,
                         char *why, size_t whylen) {
  json_t *rec = rec_load(r, e->prefix);
  char pinstr[4096], fp[HF_SHA256_HEX], td[HF_SHA256_HEX], tdwhy[300] = "", dummy[8];
  struct spot s;
  struct stat nst, lst;
  bool ok = false;
  int fd;
  if (why == NULL) { why = dummy; whylen = sizeof dummy; }
  snprintf(why, whylen, "no staged copy recorded");
  if (rec == NULL) return false;
  pins_text(pins, pinstr, sizeof pinstr);
  fingerprint(e, fp);
  if (spot_open(r, e->prefix, &s) == 0) {
    if (!json_is_true(json_object_get(rec, "complete")))
      snprintf(why, whylen, "its staging did not complete");
    else if (!at_stat(&s, s.next, &nst) || !rec_is(rec, "next", &nst) || nst.st_uid != geteuid())
      snprintf(why, whylen, "%s is not the copy this agent made", s.nextpath);
    else if (!at_stat(&s, s.live, &lst) || !rec_is(rec, "live", &lst))
      snprintf(why, whylen, "%s is not the directory that was copied", e->prefix);
    else if (strcmp(json_string_value(json_object_get(rec, "pins")) ?: "", pinstr) != 0)
      snprintf(why, whylen, "it was staged for other versions (%s)", json_string_value(json_object_get(rec, "pins")) ?: "?");
    else if (strcmp(json_string_value(json_object_get(rec, "fingerprint")) ?: "", fp) != 0)
      snprintf(why, whylen, "its distributions changed since it was staged");
    else if (alembic != NULL && strcmp(json_string_value(json_object_get(rec, "alembic")) ?: "", alembic) != 0)
      snprintf(why, whylen, "the database is at another revision than when it was staged");
    else if ((fd = openat(s.pfd, s.live, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0)
      snprintf(why, whylen, "cannot open %s: %s", e->prefix, strerror(errno));
    else {
      tree_digest(r, fd, td, tdwhy, sizeof tdwhy);
      close(fd);
      if (td[0] == '\0')
        snprintf(why, whylen, "its files cannot be compared with the copy's (%s)", tdwhy);
      else if (strcmp(json_string_value(json_object_get(rec, "tree")) ?: "", td) != 0)
        snprintf(why, whylen, "files in it changed (or were added or removed) since it was copied");
      else if (!holds(s.nextpath, pins, got))
        snprintf(why, whylen, "%s does not hold the target by its files", s.nextpath);
      else
        ok = true;
    }
    close(s.pfd);
  }
  r->msg[0] = '\0';
  json_decref(rec);
  return ok;
}

/* ---- trees, through directory descriptors only -------------------------------------------------- */

/* The names in the directory fd (new array of new strings, NULL-terminated), "." and ".." left out. */
static char **names_of(int fd) {
  int dup_fd = dup(fd);
  DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
  struct dirent *de;
  char **v = NULL;
  size_t n = 0, cap = 0;
  if (d == NULL) { if (dup_fd >= 0) close(dup_fd); return NULL; }
  rewinddir(d);
  while ((de = readdir(d)) != NULL) {
    if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
    if (n + 1 >= cap) {
      char **nv = realloc(v, (cap = cap ? cap * 2 : 32) * sizeof *v);
      if (nv == NULL) break;
      v = nv;
    }
    if ((v[n] = strdup(de->d_name)) == NULL) break;
    n++;
  }
  closedir(d);
  if (v == NULL && (v = calloc(1, sizeof *v)) == NULL) return NULL;
  v[n] = NULL;
  return v;
}

static void names_free(char **v) {
  size_t i;
  for (i = 0; v && v[i]; i++) free(v[i]);
  free(v);
}

/* What a copy of a tree needs: each regular file counted as the larger of its size and its
 * allocated blocks (a sparse file's holes are kept by the copy, but its size is what the estimate
 * must not miss), everything else as its blocks; the largest file and its path below the root. */
struct need {
  int64_t bytes, largest;
  char largest_rel[PATH_MAX];
};

/* Adds what is under the directory fd (rel: its path below the root) to n, never leaving it
 * through a symlink. */
static void tree_need(int fd, const char *rel, int depth, struct need *n) {
  char **v = names_of(fd);
  size_t i;
  for (i = 0; v && v[i]; i++) {
    struct stat st;
    int64_t b;
    if (fstatat(fd, v[i], &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    b = (int64_t)st.st_blocks * 512;
    if (S_ISREG(st.st_mode) && (int64_t)st.st_size > b) b = (int64_t)st.st_size;
    n->bytes += b;
    if (S_ISREG(st.st_mode) && b > n->largest) {
      n->largest = b;
      snprintf(n->largest_rel, sizeof n->largest_rel, "%s%s", rel, v[i]);
    }
    if (S_ISDIR(st.st_mode) && depth < 64) {
      char sub[PATH_MAX];
      int c;
      if (snprintf(sub, sizeof sub, "%s%s/", rel, v[i]) >= (int)sizeof sub) continue;
      if ((c = openat(fd, v[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) >= 0) {
        tree_need(c, sub, depth + 1, n);
        close(c);
      }
    }
  }
  names_free(v);
}

/* Removes everything inside the directory fd, depth first, through descriptors only. */
static void rm_inside(int fd, int depth) {
  char **v = names_of(fd);
  size_t i;
  for (i = 0; v && v[i]; i++) {
    struct stat st;
    if (fstatat(fd, v[i], &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode) && depth < 64) {
      int c = openat(fd, v[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (c >= 0) { rm_inside(c, depth + 1); close(c); }
      unlinkat(fd, v[i], AT_REMOVEDIR);
    } else {
      unlinkat(fd, v[i], 0);
    }
  }
  names_free(v);
}

/* Removes the directory name in the spot's directory when it still is the one the record names as
 * what; 0, or HF_ESTATE when it is something else. */
static int rm_own(struct hf_req *r, const struct spot *s, const char *name, const json_t *rec, const char *what) {
  struct stat st;
  int fd = openat(s->pfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0 || fstat(fd, &st) != 0 || !rec_is(rec, what, &st)) {
    if (fd >= 0) close(fd);
    snprintf(r->msg, sizeof r->msg, "stage: %s changed while the agent removed it: left alone", name);
    return HF_ESTATE;
  }
  rm_inside(fd, 0);
  close(fd);
  if (unlinkat(s->pfd, name, AT_REMOVEDIR) != 0 && errno != ENOENT) {
    snprintf(r->msg, sizeof r->msg, "stage: cannot remove %s: %s", name, strerror(errno));
    return HF_EIO;
  }
  return 0;
}

/* ---- the copy ----------------------------------------------------------------------------------- */

struct copy {
  struct hf_req *r;
  const char *src_root;       /* ENV: absolute symlinks into it become relative */
  int64_t bytes, files;
  int64_t written, budget;    /* bytes written so far; the most the estimate allows */
  int chown_failed;
  int skipped;
  char err[1024];
};

/* Owner, mode and times of st onto the descriptor fd. */
static void copy_meta(struct copy *c, int fd, const struct stat *st) {
  struct timespec ts[2] = { st->st_atim, st->st_mtim };
  if ((st->st_uid != geteuid() || st->st_gid != getegid()) && fchown(fd, st->st_uid, st->st_gid) != 0) c->chown_failed++;
  (void)fchmod(fd, st->st_mode & 07777);
  (void)futimens(fd, ts);
}

/* Copies the first size bytes of in (its size when opened: a file someone keeps appending to is
 * copied as it was then) to out, keeping holes (SEEK_DATA/SEEK_HOLE), counting what it writes in
 * c->written against c->budget and checking the request's deadline between chunks. 0, HF_EIO
 * (errno set), HF_ENOSPC (c->written passed c->budget) or HF_ETIMEDOUT. */
static int copy_data(struct copy *c, int in, int out, off_t size) {
  static char buf[1 << 16];
  bool kernel = true;
  off_t off = 0;
  while (off < size) {
    off_t data = lseek(in, off, SEEK_DATA), end;
    if (data < 0 && errno == ENXIO) break; /* nothing but a hole left */
    if (data < 0) {
      data = off; /* no SEEK_DATA here: all of it is data */
      end = size;
    } else {
      if (data >= size) break;
      end = lseek(in, data, SEEK_HOLE);
      if (end < 0 || end > size) end = size;
    }
    off = data;
    while (off < end) {
      size_t want = (size_t)(end - off < (1 << 23) ? end - off : (1 << 23));
      ssize_t n = -1;
      if (hf__now_ms() > c->r->deadline_ms) return HF_ETIMEDOUT;
      if (kernel) {
        loff_t pi = off, po = off;
        n = copy_file_range(in, &pi, out, &po, want, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) {
          kernel = false; /* the kernel cannot: plain reads and writes from where it stopped */
          continue;
        }
      } else {
        n = pread(in, buf, want < sizeof buf ? want : sizeof buf, off);
        if (n < 0 && errno == EINTR) continue;
        if (n > 0) {
          ssize_t w = 0;
          while (w < n) {
            ssize_t k = pwrite(out, buf + w, (size_t)(n - w), off + w);
            if (k < 0 && errno == EINTR) continue;
            if (k <= 0) return HF_EIO;
            w += k;
          }
        }
      }
      if (n < 0) return HF_EIO;
      if (n == 0) { end = off; size = off; break; } /* the file shrank meanwhile: what was there */
      off += n;
      c->written += n;
      if (c->written > c->budget) return HF_ENOSPC;
    }
  }
  if (ftruncate(out, size) != 0) return HF_EIO; /* a trailing hole stays one */
  return 0;
}

/* The symlink target of a copied link at rel (its path below the root, "" for top-level names):
 * an absolute target inside the source root becomes relative, so the copy never points into the
 * live environment. */
static void link_target(const struct copy *c, const char *rel, const char *target, char *out, size_t outlen) {
  size_t rl = strlen(c->src_root);
  const char *p;
  size_t o = 0;
  if (strncmp(target, c->src_root, rl) != 0 || (target[rl] != '/' && target[rl] != '\0')) {
    snprintf(out, outlen, "%s", target);
    return;
  }
  out[0] = '\0';
  for (p = rel; *p; p++) /* one ".." per directory the link sits in */
    if (*p == '/') o += (size_t)snprintf(out + o, o < outlen ? outlen - o : 0, "../");
  if (target[rl] == '\0' || target[rl + 1] == '\0') snprintf(out + o, o < outlen ? outlen - o : 0, "%s", o ? "." : ".");
  else snprintf(out + o, o < outlen ? outlen - o : 0, "%s", target + rl + 1);
}

/* Copies what is inside directory sfd into directory dfd (new, empty). rel: the path below the root
 * ("" or ending in "/"). */
static int copy_inside(struct copy *c, int sfd, int dfd, const char *rel, int depth) {
  char **v = names_of(sfd);
  size_t i;
  int rc = 0;
  if (v == NULL) {
    size_t rl = strlen(rel);
    snprintf(c->err, sizeof c->err, "read directory %s%s%.*s: %s", c->src_root, rl ? "/" : "", (int)(rl ? rl - 1 : 0),
             rel, strerror(errno));
    return HF_EIO;
  }
  for (i = 0; v[i] && rc == 0; i++) {
    struct stat st;
    char here[PATH_MAX], sub[PATH_MAX];
    if (fstatat(sfd, v[i], &st, AT_SYMLINK_NOFOLLOW) != 0) continue; /* gone meanwhile */
    /* here: the entry's path below the root (for messages); sub: the same as a rel for its children */
    if (hf__pathf(here, sizeof here, "%s%s", rel, v[i]) != 0 || hf__pathf(sub, sizeof sub, "%s/", here) != 0) {
      snprintf(c->err, sizeof c->err, "path too long below %s", c->src_root);
      rc = HF_EBADARG;
      break;
    }
    if (hf__now_ms() > c->r->deadline_ms) {
      snprintf(c->err, sizeof c->err, "copying %s: the request's time ran out (at %s/%s); give it a longer timeout_ms",
               c->src_root, c->src_root, here);
      rc = HF_ETIMEDOUT;
      break;
    }
    if (S_ISDIR(st.st_mode)) {
      int cs, cd;
      if (depth >= 64) { snprintf(c->err, sizeof c->err, "%s/%s: directories nested too deep", c->src_root, here); rc = HF_EUNSUPPORTED; break; }
      if (mkdirat(dfd, v[i], 0700) != 0) { snprintf(c->err, sizeof c->err, "create %s" NEXT_SUFFIX "/%s: %s", c->src_root, here, strerror(errno)); rc = HF_EIO; break; }
      cs = openat(sfd, v[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      cd = openat(dfd, v[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (cs < 0 || cd < 0) {
        snprintf(c->err, sizeof c->err, "open %s/%s: %s", c->src_root, here, strerror(errno));
        rc = HF_EIO;
      } else {
        rc = copy_inside(c, cs, cd, sub, depth + 1);
        if (rc == 0) copy_meta(c, cd, &st);
      }
      if (cs >= 0) close(cs);
      if (cd >= 0) close(cd);
    } else if (S_ISREG(st.st_mode)) {
      int in = openat(sfd, v[i], O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
      int out = openat(dfd, v[i], O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
      struct stat ist;
      int e = 0;
      if (in < 0 || out < 0 || fstat(in, &ist) != 0 || !S_ISREG(ist.st_mode)) {
        e = errno ? errno : EINVAL;
        snprintf(c->err, sizeof c->err, "copy %s/%s: %s", c->src_root, here, strerror(e));
        rc = HF_EIO;
      } else if ((rc = copy_data(c, in, out, ist.st_size)) != 0) {
        e = errno;
        if (rc == HF_ENOSPC)
          snprintf(c->err, sizeof c->err, "copying %s: more than the estimated %lld MB written (at %s/%s, %lld MB): "
                   "the environment grew while it was copied; stopped", c->src_root, (long long)(c->budget >> 20),
                   c->src_root, here, (long long)(ist.st_size >> 20));
        else if (rc == HF_ETIMEDOUT)
          snprintf(c->err, sizeof c->err, "copying %s: the request's time ran out (at %s/%s); give it a longer "
                   "timeout_ms", c->src_root, c->src_root, here);
        else
          snprintf(c->err, sizeof c->err, "copy %s/%s: %s", c->src_root, here, strerror(e));
      } else {
        copy_meta(c, out, &ist);
        c->bytes += ist.st_size;
        c->files++;
      }
      if (in >= 0) close(in);
      if (out >= 0) close(out);
    } else if (S_ISLNK(st.st_mode)) {
      char target[PATH_MAX], fixed[PATH_MAX];
      ssize_t n = readlinkat(sfd, v[i], target, sizeof target - 1);
      if (n < 0) continue;
      target[n] = '\0';
      link_target(c, rel, target, fixed, sizeof fixed);
      if (symlinkat(fixed, dfd, v[i]) != 0) { snprintf(c->err, sizeof c->err, "create link %s" NEXT_SUFFIX "/%s: %s", c->src_root, here, strerror(errno)); rc = HF_EIO; break; }
      if ((st.st_uid != geteuid() || st.st_gid != getegid()) &&
          fchownat(dfd, v[i], st.st_uid, st.st_gid, AT_SYMLINK_NOFOLLOW) != 0)
        c->chown_failed++;
      c->files++;
    } else {
      c->skipped++; /* a FIFO, socket or device has no place in an environment */
    }
  }
  names_free(v);
  return rc;
}

/* ---- relocation: the paths pip wrote into the copy, made the live ones ------------------------- */

struct reloc {
  const char *needle, *repl;  /* ENV.hf-next and ENV */
  struct timespec since;      /* files changed since (pip's run) */
  int rewritten, binary;
  char err[1024];
};

static bool newer(const struct stat *st, const struct timespec *t) {
  return st->st_ctim.tv_sec > t->tv_sec || (st->st_ctim.tv_sec == t->tv_sec && st->st_ctim.tv_nsec >= t->tv_nsec);
}

/* Rewrites the regular file name in dfd when it holds the needle: a random O_EXCL|O_NOFOLLOW file
 * beside it with its owner and mode, renamed over it. */
static int reloc_file(struct reloc *x, int dfd, const char *name, const struct stat *st) {
  size_t nl = strlen(x->needle), rl = strlen(x->repl), got = 0, o = 0;
  char *buf = NULL, *out, tmp[64], *p, *q;
  unsigned char rnd[8];
  int in, fd, tries;
  if (st->st_size <= 0 || st->st_size > (64 << 20)) return 0;
  if ((in = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0) return 0;
  if (hf_read_fd(in, 64 << 20, &buf, &got) != 0) buf = NULL;
  close(in);
  if (buf == NULL) return 0;
  /* Text files only (pip's scripts, pyvenv.cfg, activate*, RECORD, direct_url.json): a binary
   * file (byte-code, a shared object) holding the path would change length and break. */
  if (memchr(buf, '\0', (size_t)got) != NULL) { x->binary++; free(buf); return 0; }
  if (memmem(buf, (size_t)got, x->needle, nl) == NULL) { free(buf); return 0; }
  if ((out = malloc((size_t)got / nl * rl + (size_t)got + 1)) == NULL) { free(buf); return HF_ENOMEM; }
  for (p = buf; (q = memmem(p, (size_t)(buf + got - p), x->needle, nl)) != NULL; p = q + nl) {
    memcpy(out + o, p, (size_t)(q - p)); o += (size_t)(q - p);
    memcpy(out + o, x->repl, rl); o += rl;
  }
  memcpy(out + o, p, (size_t)(buf + got - p)); o += (size_t)(buf + got - p);
  free(buf);
  for (tries = 0, fd = -1; tries < 16 && fd < 0; tries++) {
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) memset(rnd, tries, sizeof rnd);
    snprintf(tmp, sizeof tmp, ".hf-tmp-%02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3], rnd[4],
             rnd[5], rnd[6], rnd[7]);
    fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EEXIST) break;
  }
  if (fd < 0 || hf_write_all(fd, out, o) != 0 ||
      ((st->st_uid != geteuid() || st->st_gid != getegid()) && fchown(fd, st->st_uid, st->st_gid) != 0 && geteuid() == 0) ||
      fchmod(fd, st->st_mode & 07777) != 0 || renameat(dfd, tmp, dfd, name) != 0) {
    snprintf(x->err, sizeof x->err, "rewrite %s: %s", name, strerror(errno));
    if (fd >= 0) { close(fd); unlinkat(dfd, tmp, 0); }
    free(out);
    return HF_EIO;
  }
  close(fd);
  free(out);
  x->rewritten++;
  return 0;
}

static int reloc_inside(struct reloc *x, int fd, int depth) {
  char **v = names_of(fd);
  size_t i;
  int rc = 0;
  for (i = 0; v && v[i] && rc == 0; i++) {
    struct stat st;
    if (fstatat(fd, v[i], &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
    if (S_ISDIR(st.st_mode) && depth < 64) {
      int c = openat(fd, v[i], O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (c >= 0) { rc = reloc_inside(x, c, depth + 1); close(c); }
    } else if (S_ISREG(st.st_mode) && newer(&st, &x->since)) {
      rc = reloc_file(x, fd, v[i], &st);
    } else if (S_ISLNK(st.st_mode) && newer(&st, &x->since)) {
      char t[PATH_MAX], fixed[PATH_MAX];
      ssize_t n = readlinkat(fd, v[i], t, sizeof t - 1);
      char *at;
      if (n <= 0) continue;
      t[n] = '\0';
      if ((at = strstr(t, x->needle)) == NULL) continue;
      snprintf(fixed, sizeof fixed, "%.*s%s%s", (int)(at - t), t, x->repl, at + strlen(x->needle));
      if (unlinkat(fd, v[i], 0) != 0 || symlinkat(fixed, fd, v[i]) != 0) {
        snprintf(x->err, sizeof x->err, "rewrite link %s: %s", v[i], strerror(errno));
        rc = HF_EIO;
      }
      x->rewritten++;
    }
  }
  names_free(v);
  return rc;
}

/* ---- one environment staged --------------------------------------------------------------------- */

/* The copy's own Python reports the versions of pins' packages; checked against pins. */
static int verify_python(struct hf_req *r, const char *nextpath, json_t *pins, json_t *got) {
  static const char script[] =
      "import sys\n"
      "from importlib import metadata as m\n"
      "for n in sys.argv[1:]:\n"
      "    try:\n"
      "        print(n, m.version(n))\n"
      "    except m.PackageNotFoundError:\n"
      "        print(n, '-')\n";
  struct hf_argv a;
  const char *pkg;
  json_t *v;
  char *so = NULL;
  int rc;
  hf__argv_start(r, &a);
  hf_argv_pushf(&a, "%s/bin/python", nextpath);
  hf_argv_push(&a, "-I"); /* -I ignores PYTHONDONTWRITEBYTECODE: -B, no byte-code written into the copy */
  hf_argv_push(&a, "-B");
  hf_argv_push(&a, "-c");
  hf_argv_push(&a, script);
  json_object_foreach(pins, pkg, v) if (json_is_string(v)) hf_argv_push(&a, pkg);
  rc = hf__cmd_stdout(r, &a, hf__left_ms(r), "stage", &so);
  hf_argv_free(&a);
  if (rc != 0) { free(so); return rc; }
  json_object_foreach(pins, pkg, v) {
    char want[300], *line;
    if (!json_is_string(v)) continue;
    snprintf(want, sizeof want, "%s %s\n", pkg, json_string_value(v));
    line = so ? strstr(so, want) : NULL;
    if (line == NULL || (line != so && line[-1] != '\n')) {
      snprintf(r->msg, sizeof r->msg, "stage: the staged copy %s does not hold %s==%s by its own Python (it says: %.300s)",
               nextpath, pkg, json_string_value(v), so ? so : "");
      free(so);
      return HF_ECMD;
    }
    json_object_set(got, pkg, v);
  }
  free(so);
  return 0;
}

/* pip into the copy, as install runs it in the live environment (prep.h's hf__pip_install_cmd),
 * except that the copy's interpreter runs and the dependency note is the live environment's. */
static int pip_into(struct hf_req *r, const char *live, const char *nextpath, json_t *pins) {
  struct hf_argv a;
  const char *pkg;
  json_t *v;
  int rc;
  hf__argv_start(r, &a);
  hf__pip_cmd(&a, nextpath, "install");
  hf_argv_push(&a, "--upgrade");
  hf_argv_push(&a, "--no-compile");
  if (hf__deps_satisfied(r, live)) hf_argv_push(&a, "--no-deps");
  hf__pip_source(r, &a);
  json_object_foreach(pins, pkg, v) {
    if (!json_is_string(v)) continue;
    hf_argv_pushf(&a, "%s==%s", pkg, json_string_value(v));
    if (!hf_valid_pkgpin(a.v[a.n - 1])) {
      snprintf(r->msg, sizeof r->msg, "stage: refusing to install %.80s: not NAME==VERSION", a.v[a.n - 1]);
      hf_argv_free(&a);
      return HF_EBADARG;
    }
  }
  rc = hf__cmd(r, &a, NULL, NULL, NULL, hf__left_ms(r), "stage", false, NULL);
  hf_argv_free(&a);
  return rc;
}

/* Stages e at pins. entry (borrowed) gets {path, versions}; *bytes the copy's size; *already
 * whether a valid staged copy was there. */
static int stage_env(struct hf_req *r, const struct hf_env *e, json_t *pins, const char *alembic, json_t *entry,
                     int64_t *bytes, bool *already) {
  char fp[HF_SHA256_HEX], pinstr[4096], *gs;
  struct spot s;
  struct stat lst, nst, pst, top;
  json_t *rec = rec_load(r, e->prefix), *got = json_object();
  struct copy c;
  struct reloc x;
  int rc = 0, sfd = -1, dfd = -1;
  int64_t need, free_b;
  struct statvfs vs;
  struct need nd;
  char tree[HF_SHA256_HEX], treewhy[300] = "";

  *already = false;
  *bytes = 0;
  fingerprint(e, fp);
  pins_text(pins, pinstr, sizeof pinstr);
  if ((rc = spot_open(r, e->prefix, &s)) != 0) { json_decref(rec); json_decref(got); return rc; }
  if (!at_stat(&s, s.live, &lst) || !S_ISDIR(lst.st_mode)) {
    snprintf(r->msg, sizeof r->msg, "stage: environment %s is %s: staging switches real directories only",
             e->prefix, at_stat(&s, s.live, &lst) ? kind(&lst) : "missing");
    rc = HF_EUNSUPPORTED;
    goto out;
  }
  /* ENV.hf-next: ours (the record's device and inode, our owner) or refused. */
  if (at_stat(&s, s.next, &nst)) {
    /* A record that says the agent was creating it (killed between its mkdirat and the record of
     * its inode): a directory of the agent's own, private, is that one. */
    if (rec != NULL && json_is_true(json_object_get(rec, "creating")) && !json_is_integer(json_object_get(rec, "next_ino")) &&
        S_ISDIR(nst.st_mode) && nst.st_uid == geteuid() && (nst.st_mode & 07777) == 0700) {
      hf__event(r, "info", "stage: %s is the directory a killed agent was creating: removed", s.nextpath);
      rec_set_id(rec, "next", &nst);
      if ((rc = rm_own(r, &s, s.next, rec, "next")) != 0) goto out;
    } else if (!rec_is(rec, "next", &nst) || nst.st_uid != geteuid()) {
      snprintf(r->msg, sizeof r->msg, "stage: %s exists and is not a staging copy this agent made (%s owned by uid %u): "
               "nothing was changed; remove or rename it (rm -r %s) and stage again", s.nextpath, kind(&nst),
               (unsigned)nst.st_uid, s.nextpath);
      rc = HF_ESTATE;
      goto out;
    } else {
      char why[600];
      if (still_staged(r, e, pins, alembic, got, why, sizeof why)) {
        hf__event(r, "info", "stage: %s already holds the target; %s unchanged since", s.nextpath, e->prefix);
        json_object_set_new(entry, "path", json_string(s.nextpath));
        json_object_set(entry, "versions", got);
        *bytes = json_integer_value(json_object_get(rec, "bytes"));
        *already = true;
        goto out;
      }
      hf__event(r, "info", "stage: replacing the stale staged copy %s: %s", s.nextpath, why);
      if ((rc = rm_own(r, &s, s.next, rec, "next")) != 0) goto out;
    }
  }
  /* The ENV.hf-prev an earlier switch kept: removed now, outside the downtime. Anything else there
   * is left alone (install moves it aside). */
  if (at_stat(&s, s.prev, &pst)) {
    if (rec_is(rec, "prev", &pst)) {
      hf__event(r, "info", "stage: removing %s (the environment an earlier rollout kept)", s.prevpath);
      if ((rc = rm_own(r, &s, s.prev, rec, "prev")) != 0) goto out;
    } else {
      hf__event(r, "warn", "stage: %s (%s) is not one this agent kept: left alone; install will move it aside",
                s.prevpath, kind(&pst));
    }
  }
  /* Free disk: the copy, a tenth more and 32 MiB for pip's unpacking. */
  if ((sfd = openat(s.pfd, s.live, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0) {
    snprintf(r->msg, sizeof r->msg, "stage: open %s: %s", e->prefix, strerror(errno));
    rc = HF_EIO;
    goto out;
  }
  /* What the live environment looks like before anything is copied: a change made to it from
   * here on (during the copy or after) makes the copy stale (still_staged). */
  tree_digest(r, sfd, tree, treewhy, sizeof treewhy);
  if (tree[0] == '\0')
    hf__event(r, "warn", "stage: the files of %s cannot be compared later (%s): install will use the installer", e->prefix, treewhy);
  memset(&nd, 0, sizeof nd);
  tree_need(sfd, "", 0, &nd);
  need = nd.bytes + nd.bytes / 10 + (32 << 20);
  free_b = fstatvfs(s.pfd, &vs) == 0 ? (int64_t)vs.f_bavail * (int64_t)vs.f_frsize : -1;
  if (free_b >= 0 && free_b < need) {
    snprintf(r->msg, sizeof r->msg, "stage: staging %s needs about %lld MB beside it (a copy of the environment, "
             "each file counted at its full size, and pip's unpacking), but only %lld MB are free there (the largest "
             "file is %s/%s, %lld MB): nothing was changed", e->prefix, (long long)(need >> 20),
             (long long)(free_b >> 20), e->prefix, nd.largest_rel, (long long)(nd.largest >> 20));
    rc = HF_ENOSPC;
    goto out;
  }
  /* The record first says a directory is being created: a kill before its inode is recorded leaves
   * one the next stage knows as the agent's. */
  json_decref(rec);
  rec = json_object();
  json_object_set_new(rec, "env", json_string(e->prefix));
  json_object_set_new(rec, "next", json_string(s.nextpath));
  json_object_set_new(rec, "target", json_string(r->target));
  json_object_set_new(rec, "pins", json_string(pinstr));
  json_object_set_new(rec, "complete", json_false());
  json_object_set_new(rec, "creating", json_true());
  rec_set_id(rec, "live", &lst);
  if ((rc = rec_save(r, e->prefix, rec)) != 0) goto out;
  errno = 0;
  if (mkdirat(s.pfd, s.next, 0700) != 0 ||
      (dfd = openat(s.pfd, s.next, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)) < 0 ||
      fstat(dfd, &top) != 0 || top.st_uid != geteuid()) {
    snprintf(r->msg, sizeof r->msg, "stage: create %s: %s", s.nextpath, strerror(errno ? errno : EPERM));
    rc = HF_EIO;
    goto out;
  }
  json_object_del(rec, "creating");
  rec_set_id(rec, "next", &top);
  rec_set_id(rec, "live", &lst);
  json_object_set_new(rec, "live_uid", json_integer(lst.st_uid));
  json_object_set_new(rec, "live_gid", json_integer(lst.st_gid));
  json_object_set_new(rec, "live_mode", json_integer(lst.st_mode & 07777));
  if ((rc = rec_save(r, e->prefix, rec)) != 0) goto out;

  hf__event(r, "info", "stage: copying %s to %s", e->prefix, s.nextpath);
  memset(&c, 0, sizeof c);
  c.r = r;
  c.src_root = e->prefix;
  c.budget = nd.bytes + nd.bytes / 10 + (1 << 20);
  if ((rc = copy_inside(&c, sfd, dfd, "", 0)) != 0) {
    snprintf(r->msg, sizeof r->msg, "stage: %s", c.err);
    goto out;
  }
  if (c.chown_failed)
    hf__event(r, "warn", "stage: %d entries of %s keep the agent's owner (uid %u): it cannot give them their owner",
              c.chown_failed, s.nextpath, (unsigned)geteuid());
  if (c.skipped) hf__event(r, "warn", "stage: %d FIFOs, sockets or devices in %s not copied", c.skipped, e->prefix);
  *bytes = c.bytes;

  clock_gettime(CLOCK_REALTIME_COARSE, &x.since);
  if ((rc = pip_into(r, e->prefix, s.nextpath, pins)) != 0) goto out;
  /* pip ran by path: the staging directory must still be the one this agent made. */
  if (!at_stat(&s, s.next, &nst) || nst.st_dev != top.st_dev || nst.st_ino != top.st_ino) {
    snprintf(r->msg, sizeof r->msg, "stage: %s was replaced while pip ran: refused", s.nextpath);
    rc = HF_ESTATE;
    goto out;
  }
  x.needle = s.nextpath;
  x.repl = e->prefix;
  x.rewritten = 0;
  x.binary = 0;
  x.err[0] = '\0';
  if ((rc = reloc_inside(&x, dfd, 0)) != 0) {
    snprintf(r->msg, sizeof r->msg, "stage: relocating %s: %s", s.nextpath, x.err);
    goto out;
  }
  hf__event(r, "info", "stage: %d files rewritten from %s to %s", x.rewritten, s.nextpath, e->prefix);
  if (!holds(s.nextpath, pins, got)) {
    gs = json_dumps(got, JSON_COMPACT);
    snprintf(r->msg, sizeof r->msg, "stage: %s does not hold the target after pip (files say %s)", s.nextpath,
             gs ? gs : "?");
    free(gs);
    rc = HF_ECMD;
    goto out;
  }
  if ((rc = verify_python(r, s.nextpath, pins, got)) != 0) goto out;
  if (syncfs(dfd) != 0) {
    snprintf(r->msg, sizeof r->msg, "stage: sync %s: %s", s.nextpath, strerror(errno));
    rc = HF_EIO;
    goto out;
  }
  json_object_set_new(rec, "complete", json_true());
  json_object_set_new(rec, "fingerprint", json_string(fp));
  json_object_set_new(rec, "tree", json_string(tree));
  json_object_set_new(rec, "alembic", json_string(alembic));
  json_object_set_new(rec, "bytes", json_integer(c.bytes));
  json_object_set(rec, "versions", got);
  if ((rc = rec_save(r, e->prefix, rec)) != 0) goto out;
  json_object_set_new(entry, "path", json_string(s.nextpath));
  json_object_set(entry, "versions", got);
out:
  if (sfd >= 0) close(sfd);
  if (dfd >= 0) {
    close(dfd);
    /* A copy that did not become a valid one is not left beside the environment. */
    if (rc != 0) {
      char keep[sizeof r->msg];
      snprintf(keep, sizeof keep, "%s", r->msg);
      if (rm_own(r, &s, s.next, rec, "next") == 0) hf__event(r, "info", "stage: the incomplete %s removed", s.nextpath);
      snprintf(r->msg, sizeof r->msg, "%s", keep);
    }
  }
  close(s.pfd);
  json_decref(rec);
  json_decref(got);
  return rc;
}

/* ---- the op --------------------------------------------------------------------------------------- */

/* Does one prefix lie inside the other? */
static bool nested(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b), l = la < lb ? la : lb;
  return strncmp(a, b, l) == 0 && (a[l] == '/' || b[l] == '/' || a[l] == b[l]);
}

int hf__op_stage(struct hf_req *r, json_t *data) {
  struct envset *es = malloc(sizeof *es);
  json_t *recs = NULL, *rec, *want = NULL, *staged = json_object(), *fps = json_object(), *det;
  char alembic[128] = "";
  int64_t total = 0;
  bool all_already = true;
  size_t k;
  int i, j, rc = 0;

  if (es == NULL) { json_decref(staged); json_decref(fps); return HF_ENOMEM; }
  /* Stage comes before the backup only: once the rollout's journal holds another step, the
   * environments are the upgrade's (or the rollback's), not to be prepared again. */
  if ((rc = hf__jread(r, &recs)) != 0) goto out;
  json_array_foreach(recs, k, rec) {
    const char *step = json_string_value(json_object_get(rec, "step"));
    if (step != NULL && strcmp(step, "stage") != 0) {
      snprintf(r->msg, sizeof r->msg, "stale request: stage runs before the backup, but the journal of rollout %s "
               "already shows %s %s; not staging", r->rollout, step,
               json_string_value(json_object_get(rec, "state")) ?: "?");
      rc = HF_ESTATE;
      goto out;
    }
  }
  hf__envs_load(r, es);
  for (i = 0; i < es->n; i++) {
    if (!es->env[i].exists) {
      snprintf(r->msg, sizeof r->msg, "stage: environment %s does not exist", es->env[i].prefix);
      rc = HF_ENOTFOUND;
      goto out;
    }
    if (strcmp(es->env[i].installer, "pip") != 0) {
      snprintf(r->msg, sizeof r->msg, "stage: %s is a conda environment: staging copies pip environments only "
               "(install will run conda after the stop)", es->env[i].prefix);
      rc = HF_EUNSUPPORTED;
      goto out;
    }
    for (j = 0; j < i; j++)
      if (nested(es->env[i].prefix, es->env[j].prefix)) {
        snprintf(r->msg, sizeof r->msg, "stage: %s and %s lie one inside the other: they cannot be switched "
                 "separately (install will pip into them after the stop)", es->env[j].prefix, es->env[i].prefix);
        rc = HF_EUNSUPPORTED;
        goto out;
      }
  }
  if ((rc = hf__alembic_now(r, alembic, sizeof alembic)) != 0) goto out;
  want = hf__install_want(r, es);
  /* Answered at once when nothing changed since the last stage: no journal record either. */
  for (i = 0; i < es->n && all_already; i++)
    all_already = still_staged(r, &es->env[i], json_object_get(want, es->env[i].prefix), alembic, NULL, NULL, 0);
  if (!all_already) {
    det = json_object();
    json_object_set_new(det, "target", json_string(r->target));
    if ((rc = hf__jrec(r, "stage", "begin", det)) != 0) goto out;
  }
  for (i = 0; i < es->n; i++) {
    json_t *entry = json_object();
    int64_t b = 0;
    bool already = false;
    char fp[HF_SHA256_HEX];
    hf__progress(r, "stage", i, es->n);
    if ((rc = stage_env(r, &es->env[i], json_object_get(want, es->env[i].prefix), alembic, entry, &b, &already)) != 0) {
      json_decref(entry);
      if (!all_already) rc = hf__fail_step(r, "stage", rc);
      goto out;
    }
    fingerprint(&es->env[i], fp);
    json_object_set_new(fps, es->env[i].prefix, json_string(fp));
    json_object_set_new(staged, es->env[i].prefix, entry);
    total += b;
  }
  hf__progress(r, "stage", es->n, es->n);
  if (!all_already) {
    det = json_object();
    json_object_set(det, "staged", staged);
    json_object_set(det, "fingerprint", fps);
    json_object_set_new(det, "alembic", alembic[0] ? json_string(alembic) : json_null());
    json_object_set_new(det, "bytes", json_integer(total));
    if ((rc = hf__jrec(r, "stage", "done", det)) != 0) goto out;
  }
  json_object_set(data, "staged", staged);
  json_object_set_new(data, "already", json_boolean(all_already));
  json_object_set_new(data, "bytes", json_integer(total));
  json_object_set(data, "fingerprint", fps);
  json_object_set_new(data, "alembic", alembic[0] ? json_string(alembic) : json_null());
out:
  json_decref(recs);
  json_decref(want);
  json_decref(staged);
  json_decref(fps);
  free(es);
  return rc;
}

/* ---- the switch (install) ------------------------------------------------------------------------ */

/* The live environment (now the staged copy) gets the owner and mode the previous one had. */
static int give_owner(struct hf_req *r, const struct spot *s, const json_t *rec) {
  struct stat st;
  int fd = openat(s->pfd, s->live, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  uid_t uid = (uid_t)json_integer_value(json_object_get(rec, "live_uid"));
  gid_t gid = (gid_t)json_integer_value(json_object_get(rec, "live_gid"));
  if (fd < 0 || fstat(fd, &st) != 0 || !rec_is(rec, "next", &st)) {
    if (fd >= 0) close(fd);
    snprintf(r->msg, sizeof r->msg, "install: %s is not the staged copy after the switch", s->live);
    return HF_ESTATE;
  }
  if ((st.st_uid != uid || st.st_gid != gid) && fchown(fd, uid, gid) != 0)
    hf__event(r, "warn", "install: cannot give %s its owner uid %u: %s", s->live, (unsigned)uid, strerror(errno));
  (void)fchmod(fd, (mode_t)json_integer_value(json_object_get(rec, "live_mode")));
  close(fd);
  return 0;
}

/* ENV.hf-prev out of the way before the old environment takes that name: one this agent kept is
 * removed, anything else renamed aside and kept. */
static void prev_aside(struct hf_req *r, const struct spot *s, const json_t *rec) {
  struct stat st;
  char aside[128];
  if (!at_stat(s, s->prev, &st)) return;
  if (rec_is(rec, "prev", &st)) {
    if (rm_own(r, s, s->prev, rec, "prev") == 0) return;
  }
  if (hf_sf_move_aside(s->pfd, s->prev, aside, sizeof aside) == 0)
    hf__event(r, "warn", "install: %s (%s, not kept by this agent) moved aside to %s", s->prevpath, kind(&st), aside);
}

int hf__stage_switch(struct hf_req *r, const struct hf_env *e, json_t *pins, json_t *previous, bool *switched) {
  json_t *rec = rec_load(r, e->prefix), *sw;
  char pinstr[4096];
  struct spot s;
  struct stat lst, nst, pst;
  bool have_l, have_n, have_p;
  int rc = 0;

  *switched = false;
  if (rec == NULL || !json_is_true(json_object_get(rec, "complete"))) { json_decref(rec); return 0; }
  pins_text(pins, pinstr, sizeof pinstr);
  if (strcmp(json_string_value(json_object_get(rec, "pins")) ?: "", pinstr) != 0) { json_decref(rec); return 0; }
  if (spot_open(r, e->prefix, &s) != 0) { json_decref(rec); r->msg[0] = '\0'; return 0; }
  have_l = at_stat(&s, s.live, &lst);
  have_n = at_stat(&s, s.next, &nst);
  have_p = at_stat(&s, s.prev, &pst);

  if (have_l && rec_is(rec, "next", &lst)) {
    /* Switched already (a re-sent install): finish the cut second rename, if any. */
    if (have_n && rec_is(rec, "live", &nst)) {
      prev_aside(r, &s, rec);
      if (renameat(s.pfd, s.next, s.pfd, s.prev) != 0) {
        snprintf(r->msg, sizeof r->msg, "install: rename %s to %s: %s", s.nextpath, s.prevpath, strerror(errno));
        rc = HF_EIO;
        goto out;
      }
      fsync(s.pfd);
      hf__event(r, "info", "install: finished the switch of %s a killed agent began", e->prefix);
    }
  } else if (!have_l && have_p && rec_is(rec, "live", &pst) && have_n && rec_is(rec, "next", &nst)) {
    /* Two renames, cut between them: the old environment is ENV.hf-prev already. */
    if (renameat(s.pfd, s.next, s.pfd, s.live) != 0) {
      snprintf(r->msg, sizeof r->msg, "install: rename %s to %s: %s", s.nextpath, e->prefix, strerror(errno));
      rc = HF_EIO;
      goto out;
    }
    fsync(s.pfd);
    hf__event(r, "info", "install: finished the switch of %s a killed agent began", e->prefix);
  } else if (have_l && have_n && rec_is(rec, "live", &lst) && rec_is(rec, "next", &nst)) {
    char why[600];
    if (!still_staged(r, e, pins, NULL, NULL, why, sizeof why)) {
      hf__event(r, "info", "install: %s not switched to its staged copy: %s; the installer instead", e->prefix, why);
      goto out;
    }
    sw = json_object();
    json_object_set_new(sw, "rollout", json_string(r->rollout));
    json_object_set_new(sw, "state", json_string("switching"));
    json_object_set_new(rec, "switch", sw);
    if ((rc = rec_save(r, e->prefix, rec)) != 0) goto out;
    prev_aside(r, &s, rec);
    if (renameat2(s.pfd, s.next, s.pfd, s.live, RENAME_EXCHANGE) == 0) {
      fsync(s.pfd);
      if (renameat(s.pfd, s.next, s.pfd, s.prev) != 0) {
        snprintf(r->msg, sizeof r->msg, "install: rename %s to %s: %s", s.nextpath, s.prevpath, strerror(errno));
        rc = HF_EIO;
        goto out;
      }
    } else if (errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP) {
      /* No exchange on this filesystem: two renames; the record says where a cut one stands. */
      hf__event(r, "info", "install: the filesystem of %s cannot exchange names: two renames", e->prefix);
      json_object_set_new(sw, "state", json_string("two renames"));
      if ((rc = rec_save(r, e->prefix, rec)) != 0) goto out;
      if (renameat(s.pfd, s.live, s.pfd, s.prev) != 0) {
        snprintf(r->msg, sizeof r->msg, "install: rename %s to %s: %s", e->prefix, s.prevpath, strerror(errno));
        rc = HF_EIO;
        goto out;
      }
      fsync(s.pfd);
      if (renameat(s.pfd, s.next, s.pfd, s.live) != 0) {
        snprintf(r->msg, sizeof r->msg, "install: rename %s to %s: %s (the previous environment is %s)", s.nextpath,
                 e->prefix, strerror(errno), s.prevpath);
        rc = HF_EIO;
        goto out;
      }
    } else {
      snprintf(r->msg, sizeof r->msg, "install: exchange %s and %s: %s", s.nextpath, e->prefix, strerror(errno));
      rc = HF_EIO;
      goto out;
    }
    fsync(s.pfd);
    hf__event(r, "info", "install: %s switched to its staged copy; the previous one is %s", e->prefix, s.prevpath);
  } else {
    goto out; /* no valid staged copy: pip */
  }
  /* Here e is the staged copy: its owner and mode, and the record of what was kept. */
  if ((rc = give_owner(r, &s, rec)) != 0) goto out;
  if (at_stat(&s, s.prev, &pst) && rec_is(rec, "live", &pst)) {
    json_object_set(rec, "prev_dev", json_object_get(rec, "live_dev"));
    json_object_set(rec, "prev_ino", json_object_get(rec, "live_ino"));
    json_object_set_new(previous, e->prefix, json_string(s.prevpath));
  } else if (json_is_integer(json_object_get(rec, "prev_ino"))) {
    json_object_set_new(previous, e->prefix, json_string(s.prevpath));
  }
  sw = json_object();
  json_object_set_new(sw, "rollout", json_string(r->rollout));
  json_object_set_new(sw, "state", json_string("done"));
  json_object_set_new(rec, "switch", sw);
  if ((rc = rec_save(r, e->prefix, rec)) != 0) goto out;
  *switched = true;
out:
  close(s.pfd);
  json_decref(rec);
  return rc;
}

/* ---- the way back (rollback) ---------------------------------------------------------------------- */

int hf__stage_undo_cut(struct hf_req *r, const char *prefix, bool *undone) {
  json_t *rec = rec_load(r, prefix);
  struct spot s;
  struct stat lst, nst, pst;
  bool have_l, have_n, have_p;
  int rc = 0;

  *undone = false;
  if (rec == NULL) return 0;
  if (spot_open(r, prefix, &s) != 0) { json_decref(rec); r->msg[0] = '\0'; return 0; }
  have_l = at_stat(&s, s.live, &lst);
  have_n = at_stat(&s, s.next, &nst);
  have_p = at_stat(&s, s.prev, &pst);
  if (have_l && have_n && rec_is(rec, "next", &lst) && rec_is(rec, "live", &nst)) {
    /* Cut right after the exchange: ENV is the staged copy, ENV.hf-next the environment it replaced. */
    if (renameat2(s.pfd, s.next, s.pfd, s.live, RENAME_EXCHANGE) != 0) {
      snprintf(r->msg, sizeof r->msg, "rollback: %s is the staged copy of a cut install and %s the environment it "
               "replaced, but they cannot be exchanged back: %s", prefix, s.nextpath, strerror(errno));
      rc = HF_EIO;
      goto out;
    }
    *undone = true;
  } else if (!have_l && have_n && have_p && rec_is(rec, "next", &nst) && rec_is(rec, "live", &pst)) {
    /* Two renames, cut between them: the environment is ENV.hf-prev, its copy still ENV.hf-next. */
    if (renameat(s.pfd, s.prev, s.pfd, s.live) != 0) {
      snprintf(r->msg, sizeof r->msg, "rollback: %s is missing after a cut install; renaming %s back to it failed: %s",
               prefix, s.prevpath, strerror(errno));
      rc = HF_EIO;
      goto out;
    }
    *undone = true;
  }
  if (*undone) {
    fsync(s.pfd);
    json_object_del(rec, "switch");
    rc = rec_save(r, prefix, rec);
    hf__event(r, "info", "rollback: the switch of %s an install began and did not finish undone: %s is the "
              "environment it was before (its staged copy is %s again)", prefix, prefix, s.nextpath);
  }
out:
  close(s.pfd);
  json_decref(rec);
  return rc;
}

int hf__stage_restore_prev(struct hf_req *r, const struct hf_env *e, json_t *pins, bool *restored) {
  json_t *rec = rec_load(r, e->prefix);
  struct spot s;
  struct stat lst, pst;
  int rc = 0;

  *restored = false;
  if (rec == NULL) return 0;
  if (spot_open(r, e->prefix, &s) != 0) { json_decref(rec); r->msg[0] = '\0'; return 0; }
  /* ENV.hf-prev: the one the switch kept, or (both renames done, the record not yet updated) the
   * environment that was copied while ENV is its copy. */
  if (!at_stat(&s, s.prev, &pst) || !at_stat(&s, s.live, &lst) || !S_ISDIR(lst.st_mode) ||
      !(rec_is(rec, "prev", &pst) || (rec_is(rec, "live", &pst) && rec_is(rec, "next", &lst))) ||
      !holds(s.prevpath, pins, NULL))
    goto out;
  if (renameat2(s.pfd, s.prev, s.pfd, s.live, RENAME_EXCHANGE) != 0) {
    hf__event(r, "info", "rollback: cannot exchange %s and %s (%s): pip instead", s.prevpath, e->prefix, strerror(errno));
    goto out;
  }
  fsync(s.pfd);
  /* What is now ENV.hf-prev (the upgraded environment) is the one this agent keeps; a later stage
   * removes it. */
  rec_set_id(rec, "prev", &lst);
  rec_set_id(rec, "live", &pst);
  json_object_set_new(rec, "complete", json_false());
  rc = rec_save(r, e->prefix, rec);
  hf__event(r, "info", "rollback: %s switched back to the environment kept at the switch (no installer); the "
            "upgraded one is now %s", e->prefix, s.prevpath);
  *restored = true;
out:
  close(s.pfd);
  json_decref(rec);
  return rc;
}
