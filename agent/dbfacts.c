/* dbfacts.c: hub database facts the version-aware preflight and the users' probe need (running
 * single-user servers: how many, whose, at which URL) and small helpers of the steps that prepare
 * an upgrade before any downtime. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <sqlite3.h>

#include "agent_int.h"
#include "hub.h"
#include "pg.h"
#include "prep.h"
#include "probe.h"

int hf_db_running_servers(const char *path, int64_t *n, char *err, size_t errlen) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int rc;

  *n = -1;
  if (hf_db_open_ro(path, &db, err, errlen) != 0) return HF_EDB;
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

/* ---- which servers run: SQLite and PostgreSQL ---------------------------------------------- */

/* One query for both databases: a first row with the count, then the running
 * servers (a spawner row points at its server row while it runs) with the
 * server's base_url (the proxy's route, e.g. /user/alice/), by user name. */
#define SERVERS_SQL                                                                                   \
  "SELECT 0, '', '', CAST(count(*) AS TEXT) FROM spawners WHERE server_id IS NOT NULL "               \
  "UNION ALL SELECT 1, u.name, COALESCE(s.name, ''), v.base_url FROM spawners s "                     \
  "JOIN users u ON u.id = s.user_id JOIN servers v ON v.id = s.server_id ORDER BY 1, 2, 3 LIMIT 17"

/* Adds one server row: its label made printable and bounded, its path only
 * when the base_url can go into a request line as it is. */
static void add_server(struct hf_user_servers *us, const char *user, const char *name, const char *base) {
  struct hf_user_server *s;
  size_t i, n;
  if (us->n >= HF_PROBE_MAX_SERVERS || user == NULL) return;
  s = &us->srv[us->n++];
  snprintf(s->label, sizeof s->label, "%s%s%s", user, name && name[0] ? "/" : "", name ? name : "");
  for (i = 0; s->label[i]; i++)
    if ((unsigned char)s->label[i] < 0x20 || (unsigned char)s->label[i] > 0x7e) s->label[i] = '?';
  s->path[0] = '\0';
  n = base ? strlen(base) : 0;
  if (n < 2 || n > 200 || base[0] != '/' || base[n - 1] != '/') return;
  for (i = 0; i < n; i++)
    if ((unsigned char)base[i] <= 0x20 || (unsigned char)base[i] > 0x7e) return;
  snprintf(s->path, sizeof s->path, "%sapi", base);
}

static int sqlite_servers(const char *path, struct hf_user_servers *us) {
  sqlite3 *db = NULL;
  sqlite3_stmt *st = NULL;
  int rc;
  if (hf_db_open_ro(path, &db, us->error, sizeof us->error) != 0) return HF_EDB;
  if ((rc = sqlite3_prepare_v2(db, SERVERS_SQL, -1, &st, NULL)) != SQLITE_OK) {
    /* A schema without servers.base_url: the count alone (unknown without spawners). */
    sqlite3_close(db);
    db = NULL;
    if (hf_db_running_servers(path, &us->count, us->error, sizeof us->error) != 0) return HF_EDB;
    if (us->count < 0) snprintf(us->error, sizeof us->error, "database %s has no spawners table", path);
    return 0;
  }
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (sqlite3_column_int(st, 0) == 0)
      us->count = strtoll((const char *)sqlite3_column_text(st, 3) ?: "-1", NULL, 10);
    else
      add_server(us, (const char *)sqlite3_column_text(st, 1), (const char *)sqlite3_column_text(st, 2),
                 (const char *)sqlite3_column_text(st, 3));
  }
  if (rc != SQLITE_DONE) goto fail;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return 0;
fail:
  snprintf(us->error, sizeof us->error, "database %s: %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
  us->count = -1;
  sqlite3_finalize(st);
  sqlite3_close(db);
  return HF_EDB;
}

/* PostgreSQL: the same in one value (psql gives one line through pg.c):
 * COUNT, then RS USER US SERVER US BASE_URL per server (RS, US: ASCII 30, 31). */
#define SERVERS_PG_SQL                                                                                \
  "SELECT (SELECT count(*) FROM spawners WHERE server_id IS NOT NULL) || COALESCE((SELECT "           \
  "string_agg(chr(30) || translate(u || chr(31) || n || chr(31) || b, chr(10) || chr(13), '__'), '' " \
  "ORDER BY u, n) FROM (SELECT u.name AS u, COALESCE(s.name, '') AS n, v.base_url AS b FROM spawners s " \
  "JOIN users u ON u.id = s.user_id JOIN servers v ON v.id = s.server_id ORDER BY 1, 2 LIMIT 16) t), '')"

static int pg_servers(struct hf_req *r, struct hf_user_servers *us) {
  struct hf_pg *pg = malloc(sizeof *pg);
  char *out = malloc(16384), *rec, *save = NULL;
  int rc = HF_ENOMEM;

  if (pg == NULL || out == NULL) goto done;
  if ((rc = hf_pg_open(r, pg)) != 0 || (rc = hf_pg_query(r, pg, pg->url, SERVERS_PG_SQL, "servers", out, 16384)) != 0) {
    snprintf(us->error, sizeof us->error, "%s", r->msg);
    r->msg[0] = '\0';
    goto done;
  }
  rec = strtok_r(out, "\x1e", &save);
  us->count = rec && rec[0] >= '0' && rec[0] <= '9' ? strtoll(rec, NULL, 10) : -1;
  while ((rec = strtok_r(NULL, "\x1e", &save)) != NULL) {
    char *user = rec, *name = strchr(user, '\x1f'), *base = name ? strchr(name + 1, '\x1f') : NULL;
    if (base == NULL) continue;
    *name++ = '\0';
    *base++ = '\0';
    add_server(us, user, name, base);
  }
  if (us->count < 0) {
    snprintf(us->error, sizeof us->error, "psql gave no count of running servers");
    rc = HF_EDB;
  }
done:
  free(pg);
  free(out);
  return rc;
}

int hf__db_user_servers(struct hf_req *r, struct hf_user_servers *us) {
  memset(us, 0, sizeof *us);
  us->count = -1;
  if (r->hub.sqlite) return sqlite_servers(r->hub.db_path, us);
  if (hf_pg_is(&r->hub)) {
    int rc = pg_servers(r, us);
    if (rc != 0) us->count = -1;
    return rc;
  }
  snprintf(us->error, sizeof us->error, "running servers are read from SQLite and PostgreSQL databases only");
  return HF_EUNSUPPORTED;
}

void hf__db_servers_facts(struct hf_req *r, json_t *db) {
  struct hf_user_servers *us = malloc(sizeof *us);
  json_t *names = json_array();
  int i;
  if (us == NULL || hf__db_user_servers(r, us) != 0 || us->count < 0) {
    json_object_set_new(db, "running_servers", json_null());
    json_object_set_new(db, "running_servers_error", json_string(us ? us->error : "out of memory"));
  } else {
    json_object_set_new(db, "running_servers", json_integer(us->count));
  }
  for (i = 0; us != NULL && i < us->n; i++) json_array_append_new(names, json_string(us->srv[i].label));
  json_object_set_new(db, "running_server_users", names);
  free(us);
}

