/* db.c: SQLite for the agent: read-only schema facts, consistent online backups of a live hub
 * database, and crash-safe restores (hf_safefile.h: random temp file, checksum before anything
 * live is touched, owner and mode kept, rename; side files moved aside until it worked). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>

#include "agent_int.h"
#include "hf_safefile.h"

int hf_db_sqlite_path(const char *url, char *out, size_t outlen) {
  if (strncmp(url, "sqlite:///", 10) != 0) return HF_EUNSUPPORTED;
  if (url[10] != '/') return HF_EBADARG; /* relative paths are resolved by the controller */
  if (!hf_valid_abspath(url + 10)) return HF_EBADARG;
  return hf__pathf(out, outlen, "%s", url + 10) == 0 ? 0 : HF_EBADARG;
}

/* SQLite's open(2), for every file the agent's SQLite opens (database, -wal,
 * -shm, -journal, directories): O_NONBLOCK so that a FIFO put in a database's
 * place between our check and SQLite's own open cannot block it, and a FIFO
 * refused; everything else as SQLite asked. */
static int nonblocking_open(const char *path, int flags, int mode) {
  struct stat st;
  int fd = open(path, flags | O_NONBLOCK, mode);
  if (fd < 0) return fd;
  if (fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode)) {
    close(fd);
    errno = ENXIO;
    return -1;
  }
  if (!(flags & O_NONBLOCK)) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  return fd;
}

static void hook_open(void) {
  static bool hooked;
  if (!hooked) {
    sqlite3_vfs *vfs = sqlite3_vfs_find(NULL);
    if (vfs != NULL && vfs->iVersion >= 3 && vfs->xSetSystemCall != NULL)
      vfs->xSetSystemCall(vfs, "open", (sqlite3_syscall_ptr)nonblocking_open);
    hooked = true;
  }
}

/* path with its directory resolved (realpath) and its last component as it
 * is, into out: SQLITE_OPEN_NOFOLLOW refuses a symlink anywhere in the path,
 * but only the last component is the hub user's to plant (the rest resolves
 * as every other path the hub names: /home -> /var/home, a versioned /opt). */
static int resolved_dir(const char *path, char *out, size_t outlen) {
  const char *slash = strrchr(path, '/');
  char dir[PATH_MAX], real[PATH_MAX];
  if (slash == NULL || slash[1] == '\0' || (size_t)(slash - path) >= sizeof dir) return -1;
  snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  if (realpath(dir[0] ? dir : "/", real) == NULL) return -1;
  return hf__pathf(out, outlen, "%s/%s", strcmp(real, "/") == 0 ? "" : real, slash + 1) == 0 ? 0 : -1;
}

int hf_db_open_ro(const char *path, struct sqlite3 **db, char *err, size_t errlen) {
  char where[PATH_MAX];
  int fd, rc;

  *db = NULL;
  hook_open();
  /* The check that names what is wrong: a symlink, a FIFO, missing. */
  if ((fd = hf_sf_open_read(path, err, errlen)) < 0) {
    int e = errno;
    char why[512];
    snprintf(why, sizeof why, "%s", err);
    snprintf(err, errlen, "database %s: %s", path, why);
    return e == ENOENT || e == EACCES ? HF_ENOTFOUND : HF_ESTATE;
  }
  close(fd);
  /* Read-only and no create (facts must never make an empty database
   * appear), never through a symlink (SQLite's own check, at its open). */
  if (resolved_dir(path, where, sizeof where) != 0) snprintf(where, sizeof where, "%s", path);
  if ((rc = sqlite3_open_v2(where, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOFOLLOW, NULL)) != SQLITE_OK) {
    snprintf(err, errlen, "database %s: %s", path, *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
    sqlite3_close(*db);
    *db = NULL;
    return HF_EDB;
  }
  sqlite3_busy_timeout(*db, 2000);
  return 0;
}

int hf_db_info(const char *path, char *alembic, size_t alen, int64_t *users, char *err, size_t errlen) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int rc;

  alembic[0] = '\0';
  *users = -1;
  if ((rc = hf_db_open_ro(path, &db, err, errlen)) != 0) return rc;
  rc = sqlite3_prepare_v2(db, "SELECT version_num FROM alembic_version", -1, &st, NULL);
  if (rc == SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0) != NULL)
      snprintf(alembic, alen, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    st = NULL;
  } else if (rc == SQLITE_BUSY) {
    goto fail;
  }
  rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM users", -1, &st, NULL);
  if (rc == SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW) *users = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
  }
  sqlite3_close(db);
  return 0;
fail:
  snprintf(err, errlen, "database %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return HF_EDB;
}

int hf_db_backup(const char *src, const char *dst, char sha[HF_SHA256_HEX], char *err, size_t errlen) {
  sqlite3 *sdb = NULL, *ddb = NULL;
  sqlite3_backup *bk = NULL;
  sqlite3_stmt *st = NULL;
  struct hf_sf sf;
  char tmp[PATH_MAX + 48], where[PATH_MAX], tmpwhere[PATH_MAX];
  const char *slash;
  struct stat lst;
  int rc, r = HF_EDB, tries = 0;

  sha[0] = '\0';
  /* The live database is read where it is, never through a symlink the
   * hub's user could point at another database. */
  if (lstat(src, &lst) != 0 || access(src, R_OK) != 0) {
    snprintf(err, errlen, "database %s: %s", src, strerror(errno));
    return HF_ENOTFOUND;
  }
  if (!S_ISREG(lst.st_mode)) {
    snprintf(err, errlen, "database %s is not a regular file (a symbolic link?): refusing to back it up", src);
    return HF_ESTATE;
  }
  if ((r = hf_sf_begin(&sf, dst, 0600, err, errlen)) != 0) return r;
  r = HF_EDB;
  hook_open(); /* a FIFO swapped in after the lstat above cannot block SQLite's open */
  slash = strrchr(sf.path, '/');
  snprintf(tmp, sizeof tmp, "%.*s/%s", (int)(slash - sf.path), sf.path, sf.tmp);
  if (resolved_dir(src, where, sizeof where) != 0) snprintf(where, sizeof where, "%s", src);
  if (resolved_dir(tmp, tmpwhere, sizeof tmpwhere) == 0) snprintf(tmp, sizeof tmp, "%s", tmpwhere);
  if ((rc = sqlite3_open_v2(where, &sdb, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOFOLLOW, NULL)) != SQLITE_OK) {
    snprintf(err, errlen, "open %s: %s", src, sqlite3_errstr(rc));
    goto out;
  }
  sqlite3_busy_timeout(sdb, 5000);
  /* The copy goes into the fresh O_EXCL file hf_sf_begin made (empty: SQLite
   * takes it as a new database). */
  if ((rc = sqlite3_open_v2(tmp, &ddb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW, NULL)) != SQLITE_OK) {
    snprintf(err, errlen, "create %s: %s", tmp, sqlite3_errstr(rc));
    goto out;
  }
  bk = sqlite3_backup_init(ddb, "main", sdb, "main");
  if (bk == NULL) {
    snprintf(err, errlen, "backup %s: %s", src, sqlite3_errmsg(ddb));
    goto out;
  }
  /* Steps of 256 pages; a writer holding the lock makes a step BUSY/LOCKED:
   * wait and retry, bounded (a live hub writes rarely and briefly). */
  for (;;) {
    rc = sqlite3_backup_step(bk, 256);
    if (rc == SQLITE_DONE) break;
    if (rc == SQLITE_OK) continue;
    if ((rc == SQLITE_BUSY || rc == SQLITE_LOCKED) && ++tries < 200) { sqlite3_sleep(50); continue; }
    snprintf(err, errlen, "backup %s: %s", src, sqlite3_errstr(rc));
    goto out;
  }
  sqlite3_backup_finish(bk);
  bk = NULL;
  if ((rc = sqlite3_errcode(ddb)) != SQLITE_OK) {
    snprintf(err, errlen, "backup %s: %s", src, sqlite3_errmsg(ddb));
    goto out;
  }
  /* The copy must be sound on its own before it is called a backup. */
  if (sqlite3_prepare_v2(ddb, "PRAGMA integrity_check", -1, &st, NULL) != SQLITE_OK ||
      sqlite3_step(st) != SQLITE_ROW || sqlite3_column_text(st, 0) == NULL ||
      strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0) {
    snprintf(err, errlen, "backup copy of %s failed its integrity check: %s", src,
             st && sqlite3_column_text(st, 0) ? (const char *)sqlite3_column_text(st, 0) : sqlite3_errmsg(ddb));
    r = HF_EINTEGRITY;
    goto out;
  }
  sqlite3_finalize(st);
  st = NULL;
  sqlite3_close(ddb);
  ddb = NULL;
  if (hf_sha256_fd(sf.fd, sha) != 0) {
    snprintf(err, errlen, "read back %s: %s", tmp, strerror(errno));
    r = HF_EIO;
    goto out;
  }
  r = hf_sf_commit(&sf, err, errlen); /* fsync, rename, fsync of the directory */
out:
  if (bk) sqlite3_backup_finish(bk);
  sqlite3_finalize(st);
  sqlite3_close(ddb);
  sqlite3_close(sdb);
  hf_sf_abort(&sf);
  if (r != 0) sha[0] = '\0';
  return r;
}

/* Copies src into a new temporary file beside dst (hf_sf_begin) and checks
 * its digest: nothing at dst is touched. */
static int stage_copy(const char *src, const char *dst, const char *expect_sha, char sha[HF_SHA256_HEX],
                      struct hf_sf *sf, char *err, size_t errlen) {
  char buf[65536];
  struct stat st;
  int in, r;

  sha[0] = '\0';
  sf->fd = sf->dirfd = -1;
  sf->tmp[0] = '\0';
  if ((in = hf_sf_open_read(src, err, errlen)) < 0) return errno == ENOENT ? HF_ENOTFOUND : HF_ESTATE;
  if (fstat(in, &st) != 0) st.st_mode = 0600;
  /* A new file gets the source's mode; a replaced one keeps its own owner and mode. */
  if ((r = hf_sf_begin(sf, dst, st.st_mode & 0777, err, errlen)) != 0) { close(in); return r; }
  r = HF_EIO;
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { snprintf(err, errlen, "read %s: %s", src, strerror(errno)); goto fail; }
    if (n == 0) break;
    if (hf_write_all(sf->fd, buf, (size_t)n) != 0) {
      snprintf(err, errlen, "write beside %s: %s", dst, strerror(errno));
      goto fail;
    }
  }
  close(in);
  in = -1;
  if (fsync(sf->fd) != 0 || hf_sha256_fd(sf->fd, sha) != 0) {
    snprintf(err, errlen, "write beside %s: %s", dst, strerror(errno));
    goto fail;
  }
  if (expect_sha != NULL && strcmp(sha, expect_sha) != 0) {
    snprintf(err, errlen, "%s: checksum %s does not match the recorded %s", src, sha, expect_sha);
    r = HF_EINTEGRITY;
    goto fail;
  }
  return 0;
fail:
  if (in >= 0) close(in);
  hf_sf_abort(sf);
  return r;
}

int hf_file_install(const char *src, const char *dst, const char *expect_sha, char sha[HF_SHA256_HEX],
                    char *err, size_t errlen) {
  struct hf_sf sf;
  int r = stage_copy(src, dst, expect_sha, sha, &sf, err, errlen);
  if (r != 0) return r;
  return hf_sf_commit(&sf, err, errlen);
}

int hf_db_restore(const char *src, const char *dst, const char *expect_sha, char sha[HF_SHA256_HEX],
                  char *err, size_t errlen) {
  static const char *const sfx[] = { "-wal", "-shm", "-journal" };
  char side[3][NAME_MAX + 1], aside[3][NAME_MAX + 64], now[HF_SHA256_HEX];
  bool moved[3] = { false, false, false };
  const char *name;
  struct hf_sf sf;
  int dfd, r, i, fd;

  /* 1. A verified copy of the backup beside the database, before anything
   *    of the live database is touched. */
  if ((r = stage_copy(src, dst, expect_sha, sha, &sf, err, errlen)) != 0) return r;
  if ((dfd = hf_sf_open_parent(dst, &name, err, errlen)) < 0) { hf_sf_abort(&sf); return HF_EIO; }
  /* 2. SQLite's side files (a -wal or hot -journal would be applied to the
   *    restored file and undo it) moved aside, not deleted. */
  for (i = 0; i < 3; i++) {
    int k;
    if (snprintf(side[i], sizeof side[i], "%s%s", name, sfx[i]) >= (int)sizeof side[i]) {
      snprintf(err, errlen, "%s: name too long", dst);
      r = HF_EBADARG;
      goto undo;
    }
    k = hf_sf_move_aside(dfd, side[i], aside[i], sizeof aside[i]);
    if (k < 0) {
      snprintf(err, errlen, "cannot move %s%s aside: %s", dst, sfx[i], strerror(errno));
      r = HF_EIO;
      goto undo;
    }
    moved[i] = k == 0;
  }
  /* 3. The copy renamed over the database, and checked once more where it is. */
  if ((r = hf_sf_commit(&sf, err, errlen)) != 0) goto undo;
  if ((fd = openat(dfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)) < 0 || hf_sha256_fd(fd, now) != 0 ||
      strcmp(now, sha) != 0) {
    if (fd >= 0) close(fd);
    /* The old side files stay aside: applied to the new file they would damage it. */
    snprintf(err, errlen, "database %s does not match the backup after the rename; the old side files are kept "
             "beside it as .hf-aside-*", dst);
    close(dfd);
    return HF_EINTEGRITY;
  }
  close(fd);
  /* 4. Only now is what was moved aside gone. */
  for (i = 0; i < 3; i++)
    if (moved[i]) unlinkat(dfd, aside[i], 0);
  fsync(dfd);
  close(dfd);
  return 0;
undo:
  hf_sf_abort(&sf);
  for (i = 0; i < 3; i++)
    if (moved[i]) renameat(dfd, aside[i], dfd, side[i]);
  close(dfd);
  return r;
}

int hf_db_integrity(const char *path, char *err, size_t errlen) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int r = HF_EDB;
  if ((r = hf_db_open_ro(path, &db, err, errlen)) != 0) goto out;
  r = HF_EDB;
  if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &st, NULL) != SQLITE_OK || sqlite3_step(st) != SQLITE_ROW) {
    snprintf(err, errlen, "integrity check of %s: %s", path, sqlite3_errmsg(db));
    goto out;
  }
  if (sqlite3_column_text(st, 0) == NULL || strcmp((const char *)sqlite3_column_text(st, 0), "ok") != 0) {
    snprintf(err, errlen, "integrity check of %s: %s", path,
             sqlite3_column_text(st, 0) ? (const char *)sqlite3_column_text(st, 0) : "no answer");
    r = HF_EINTEGRITY;
    goto out;
  }
  r = 0;
out:
  sqlite3_finalize(st);
  sqlite3_close(db);
  return r;
}
