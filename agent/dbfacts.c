/* dbfacts.c: hub database facts the version-aware preflight needs (running single-user servers)
 * and small helpers of the steps that prepare an upgrade before any downtime. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>

#include "agent_int.h"
#include "hub.h"
#include "prep.h"

int hf_db_running_servers(const char *path, int64_t *n, char *err, size_t errlen) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int rc;

  *n = -1;
  if ((rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL)) != SQLITE_OK) goto fail;
  sqlite3_busy_timeout(db, 2000);
  /* JupyterHub 1.x-5.x: a spawner row points at its server row while that
   * single-user server runs (server_id is cleared when it stops). */
  rc = sqlite3_prepare_v2(db, "SELECT count(*) FROM spawners WHERE server_id IS NOT NULL", -1, &st, NULL);
  if (rc == SQLITE_OK) {
    if (sqlite3_step(st) == SQLITE_ROW) *n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    st = NULL;
  } else if (rc == SQLITE_BUSY) {
    goto fail;
  }
  /* No spawners table (an empty or pre-1.0 database): unknown, not zero. */
  sqlite3_close(db);
  return 0;
fail:
  snprintf(err, errlen, "database %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return HF_EDB;
}

static int rm_one(const char *p, const struct stat *sb, int type, struct FTW *ftw) {
  (void)sb; (void)ftw;
  if (type == FTW_DP) rmdir(p);
  else unlink(p);
  return 0;
}

void hf__rm_tree(const char *path) {
  /* Depth first, never following symlinks out of the tree (FTW_PHYS). */
  if (path != NULL && path[0] == '/' && strlen(path) > 1) nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
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
