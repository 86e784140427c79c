/* db.c: SQLite for the agent: read-only schema facts, consistent online backups of a live hub
 * database, and crash-safe restores (temp file, fsync, checksum, rename). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>

#include "agent_int.h"

int hf_db_sqlite_path(const char *url, char *out, size_t outlen) {
  if (strncmp(url, "sqlite:///", 10) != 0) return HF_EUNSUPPORTED;
  if (url[10] != '/') return HF_EBADARG; /* relative paths are resolved by the controller */
  if (!hf_valid_abspath(url + 10)) return HF_EBADARG;
  return hf__pathf(out, outlen, "%s", url + 10) == 0 ? 0 : HF_EBADARG;
}

int hf_db_info(const char *path, char *alembic, size_t alen, int64_t *users, char *err, size_t errlen) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  char uri[PATH_MAX + 32];
  int rc;

  alembic[0] = '\0';
  *users = -1;
  if (access(path, R_OK) != 0) {
    snprintf(err, errlen, "database %s: %s", path, strerror(errno));
    return HF_ENOTFOUND;
  }
  /* Read-only and no create: facts must never make an empty database appear. */
  rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL);
  (void)uri;
  if (rc != SQLITE_OK) goto fail;
  sqlite3_busy_timeout(db, 2000);
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
  char tmp[PATH_MAX];
  int rc, r = HF_EDB, tries = 0;

  sha[0] = '\0';
  if (hf__pathf(tmp, sizeof tmp, "%s.tmp", dst) != 0) return HF_EINVAL;
  unlink(tmp);
  if (access(src, R_OK) != 0) {
    snprintf(err, errlen, "database %s: %s", src, strerror(errno));
    return HF_ENOTFOUND;
  }
  if ((rc = sqlite3_open_v2(src, &sdb, SQLITE_OPEN_READONLY, NULL)) != SQLITE_OK) {
    snprintf(err, errlen, "open %s: %s", src, sqlite3_errstr(rc));
    goto out;
  }
  sqlite3_busy_timeout(sdb, 5000);
  if ((rc = sqlite3_open_v2(tmp, &ddb, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL)) != SQLITE_OK) {
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
  {
    int fd = open(tmp, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fsync(fd) != 0) {
      if (fd >= 0) close(fd);
      snprintf(err, errlen, "fsync %s: %s", tmp, strerror(errno));
      r = HF_EIO;
      goto out;
    }
    close(fd);
  }
  if (rename(tmp, dst) != 0) {
    snprintf(err, errlen, "rename %s: %s", dst, strerror(errno));
    r = HF_EIO;
    goto out;
  }
  hf__fsync_parent(dst);
  if (hf_sha256_file(dst, sha) != 0) {
    snprintf(err, errlen, "read %s: %s", dst, strerror(errno));
    r = HF_EIO;
    goto out;
  }
  r = 0;
out:
  if (bk) sqlite3_backup_finish(bk);
  sqlite3_finalize(st);
  sqlite3_close(ddb);
  sqlite3_close(sdb);
  if (r != 0) unlink(tmp);
  return r;
}

int hf_file_install(const char *src, const char *dst, const char *expect_sha, char sha[HF_SHA256_HEX],
                    char *err, size_t errlen) {
  char tmp[PATH_MAX], *slash, buf[65536];
  int in = -1, out = -1, r = HF_EIO;
  struct stat st;

  sha[0] = '\0';
  slash = strrchr(dst, '/');
  if (slash == NULL) return HF_EINVAL;
  if (hf__pathf(tmp, sizeof tmp, "%.*s/.hf-tmp-%d-%s", (int)(slash - dst), dst, (int)getpid(), slash + 1) != 0)
    return HF_EINVAL;
  if ((in = open(src, O_RDONLY | O_CLOEXEC)) < 0) {
    snprintf(err, errlen, "open %s: %s", src, strerror(errno));
    return errno == ENOENT ? HF_ENOTFOUND : HF_EIO;
  }
  /* Keep the replaced file's mode when there is one. */
  if (stat(dst, &st) != 0 && fstat(in, &st) != 0) st.st_mode = 0600;
  out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, st.st_mode & 07777);
  if (out < 0) {
    snprintf(err, errlen, "create %s: %s", tmp, strerror(errno));
    goto out;
  }
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf), w = 0;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) { snprintf(err, errlen, "read %s: %s", src, strerror(errno)); goto out; }
    if (n == 0) break;
    while (w < n) {
      ssize_t k = write(out, buf + w, (size_t)(n - w));
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) { snprintf(err, errlen, "write %s: %s", tmp, strerror(errno)); goto out; }
      w += k;
    }
  }
  if (fsync(out) != 0) { snprintf(err, errlen, "fsync %s: %s", tmp, strerror(errno)); goto out; }
  close(out);
  out = -1;
  if (hf_sha256_file(tmp, sha) != 0) { snprintf(err, errlen, "read back %s", tmp); goto out; }
  if (expect_sha != NULL && strcmp(sha, expect_sha) != 0) {
    snprintf(err, errlen, "%s: checksum %s does not match the recorded %s", src, sha, expect_sha);
    r = HF_EINTEGRITY;
    goto out;
  }
  if (rename(tmp, dst) != 0) { snprintf(err, errlen, "rename over %s: %s", dst, strerror(errno)); goto out; }
  hf__fsync_parent(dst);
  r = 0;
out:
  if (in >= 0) close(in);
  if (out >= 0) close(out);
  if (r != 0) unlink(tmp);
  return r;
}

int hf_db_integrity(const char *path, char *err, size_t errlen) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int r = HF_EDB;
  if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "open %s: %s", path, db ? sqlite3_errmsg(db) : "out of memory");
    goto out;
  }
  sqlite3_busy_timeout(db, 2000);
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
