/* pg.c: a hub's PostgreSQL database through PostgreSQL's own programs (pg_dump and psql, run
 * as argv arrays as the agent's user): the backup dump, a scratch copy for the rehearsal, the
 * restore of a rollback and its check. Credentials are libpq's: ~/.pgpass (or PGPASSFILE's
 * default), or a password in hubfleet_db's URL, which is only ever handed to the programs in
 * PGPASSWORD and never appears in argv, events, messages or the journal. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pg.h"
#include "hub.h"
#include "prep.h"
#include "hf_safefile.h"

bool hf_pg_is(const struct hf_hub *h) {
  return h->db_url && (strncmp(h->db_url, "postgresql", 10) == 0 || strncmp(h->db_url, "postgres://", 11) == 0);
}

bool hf_pg_ours(const struct hf_hub *h) {
  const char *d0 = json_string_value(json_array_get(h->db_dump, 0));
  const char *base = d0 ? strrchr(d0, '/') : NULL;
  return hf_pg_is(h) && (d0 == NULL || (base && strcmp(base + 1, "pg_dump") == 0));
}

/* %XX decoding (libpq decodes the URL the same way). */
static void pct_decode(const char *in, size_t len, char *out, size_t outlen) {
  size_t o = 0;
  for (size_t i = 0; i < len && o + 1 < outlen; i++) {
    unsigned v;
    if (in[i] == '%' && i + 2 < len && sscanf(in + i + 1, "%2x", &v) == 1) { out[o++] = (char)v; i += 2; }
    else out[o++] = in[i];
  }
  out[o] = '\0';
}

/* The parts of the URL: scheme (without +driver), driver ("+psycopg2" or ""), user, host[:port], query. */
struct pg_parts {
  char scheme[32], driver[32], user[256], hostport[512], query[256];
};

static int split_url(const char *url, struct pg_parts *p, char *db, size_t dblen, char *pw, size_t pwlen) {
  const char *sep = strstr(url, "://"), *auth, *slash, *at, *q, *plus;
  size_t n;
  memset(p, 0, sizeof *p);
  db[0] = '\0'; pw[0] = '\0';
  if (sep == NULL || sep - url >= (long)sizeof p->scheme + 30) return -1;
  plus = memchr(url, '+', (size_t)(sep - url));
  n = (size_t)((plus ? plus : sep) - url);
  if (n >= sizeof p->scheme) return -1;
  memcpy(p->scheme, url, n);
  if (plus) snprintf(p->driver, sizeof p->driver, "%.*s", (int)(sep - plus), plus);
  auth = sep + 3;
  slash = strchr(auth, '/');
  if (slash == NULL) return -1;
  at = memrchr(auth, '@', (size_t)(slash - auth));
  if (at) {
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    size_t ul = (size_t)((colon ? colon : at) - auth);
    if (ul >= sizeof p->user) return -1;
    memcpy(p->user, auth, ul);
    if (colon) pct_decode(colon + 1, (size_t)(at - colon - 1), pw, pwlen);
    auth = at + 1;
  }
  if ((size_t)(slash - auth) >= sizeof p->hostport) return -1;
  memcpy(p->hostport, auth, (size_t)(slash - auth));
  q = strchr(slash + 1, '?');
  n = q ? (size_t)(q - slash - 1) : strlen(slash + 1);
  pct_decode(slash + 1, n, db, dblen);
  if (q) snprintf(p->query, sizeof p->query, "%s", q);
  return db[0] ? 0 : -1;
}

int hf_pg_url_for(struct hf_req *r, const struct hf_pg *pg, const char *db, bool keep_driver, char *out, size_t outlen) {
  struct pg_parts p;
  char d[128], pw[256];
  int rc;
  (void)pg;
  if (split_url(r->hub.db_url, &p, d, sizeof d, pw, sizeof pw) != 0) return HF_EBADARG;
  rc = hf__pathf(out, outlen, "%s%s://%s%s%s/%s%s", p.scheme, keep_driver ? p.driver : "", p.user, p.user[0] ? "@" : "",
                 p.hostport, db, p.query);
  explicit_bzero(pw, sizeof pw);
  return rc == 0 ? 0 : HF_EBADARG;
}

/* The hub's own config as JupyterHub loads it (traitlets, in the hub environment's Python, in the
 * config's directory): the password of its db_url when that URL names the same user and
 * host[:port] as hubfleet_db. Printed after a marker, read from the captured output, never shown. */
static const char config_pw_py[] =
  "import os, sys\n"
  "from urllib.parse import urlsplit, unquote\n"
  "from traitlets.config.loader import PyFileConfigLoader\n"
  "d, f = os.path.split(sys.argv[1])\n"
  "c = PyFileConfigLoader(f, path=d).load_config()\n"
  "u = urlsplit(str(c.get('JupyterHub', {}).get('db_url', '') or ''))\n"
  "if u.password and unquote(u.username or '') == sys.argv[2] and u.netloc.rsplit('@', 1)[-1] == sys.argv[3]:\n"
  "    sys.stdout.write('\\nHFPW:' + unquote(u.password) + '\\n')\n";

static void config_password(struct hf_req *r, const struct pg_parts *p, char *pw, size_t pwlen) {
  struct hf_argv a;
  char *out = NULL, *m, keep[sizeof r->msg];
  int rc;
  pw[0] = '\0';
  if (p->user[0] == '\0') return;
  snprintf(keep, sizeof keep, "%s", r->msg);
  hf__argv_start(r, &a);
  hf_argv_pushf(&a, "%s/bin/python", r->hub.hub_env);
  hf_argv_push(&a, "-I");
  hf_argv_push(&a, "-c");
  hf_argv_push(&a, config_pw_py);
  hf_argv_push(&a, r->hub.config);
  hf_argv_push(&a, p->user);
  hf_argv_push(&a, p->hostport);
  rc = hf__cmd(r, &a, r->hub.config_dir, NULL, NULL, hf__left_ms(r) < 30000 ? hf__left_ms(r) : 30000, "database", true, &out);
  hf_argv_free(&a);
  if (rc == 0 && out && (m = strstr(out, "\nHFPW:")) != NULL) {
    size_t n = strcspn(m + 6, "\n");
    if (n < pwlen) { memcpy(pw, m + 6, n); pw[n] = '\0'; }
  }
  if (out) { explicit_bzero(out, strlen(out)); free(out); }
  /* A config that cannot be loaded here leaves libpq's own sources (~/.pgpass): not an error. */
  snprintf(r->msg, sizeof r->msg, "%s", keep);
}

int hf_pg_open(struct hf_req *r, struct hf_pg *pg) {
  struct pg_parts p;
  char pw[256];
  memset(pg, 0, sizeof *pg);
  if (split_url(r->hub.db_url, &p, pg->dbname, sizeof pg->dbname, pw, sizeof pw) != 0) {
    snprintf(r->msg, sizeof r->msg, "hubfleet_db is not a postgresql://[user@]host[:port]/database URL");
    return HF_EBADARG;
  }
  /* No password in hubfleet_db: the hub's config may hold one in its db_url; else libpq's ~/.pgpass. */
  if (pw[0] == '\0') config_password(r, &p, pw, sizeof pw);
  if (pw[0]) snprintf(pg->pw_env, sizeof pg->pw_env, "PGPASSWORD=%s", pw);
  explicit_bzero(pw, sizeof pw);
  /* libpq's settings for every program: a connect timeout, a name, the password when the URL had one. */
  {
    static char timeout[] = "PGCONNECT_TIMEOUT=15", app[] = "PGAPPNAME=hubfleet-agent";
    int n = 0;
    pg->env[n++] = timeout;
    pg->env[n++] = app;
    if (pg->pw_env[0]) pg->env[n++] = pg->pw_env;
    pg->env[n] = NULL;
  }
  if (hf_pg_url_for(r, pg, pg->dbname, false, pg->url, sizeof pg->url) != 0) {
    snprintf(r->msg, sizeof r->msg, "hubfleet_db: URL too long");
    return HF_EBADARG;
  }
  snprintf(pg->shown, sizeof pg->shown, "%s", pg->url);
  /* The operator's pg_dump (hubfleet_db_dump) names the client installation to use. */
  {
    const char *d0 = json_string_value(json_array_get(r->hub.db_dump, 0));
    const char *base = d0 ? strrchr(d0, '/') : NULL;
    if (base && strcmp(base + 1, "pg_dump") == 0) {
      snprintf(pg->dump, sizeof pg->dump, "%s", d0);
      if (hf__pathf(pg->psql, sizeof pg->psql, "%.*spsql", (int)(base + 1 - d0), d0) != 0 || access(pg->psql, X_OK) != 0)
        pg->psql[0] = '\0';
    }
  }
  if (!pg->dump[0] && !hf__which("pg_dump", pg->dump, sizeof pg->dump)) {
    snprintf(r->msg, sizeof r->msg, "PostgreSQL database %s: pg_dump not found (Debian: postgresql-client)", pg->shown);
    return HF_EUNSUPPORTED;
  }
  if (!pg->psql[0] && !hf__which("psql", pg->psql, sizeof pg->psql)) {
    snprintf(r->msg, sizeof r->msg, "PostgreSQL database %s: psql not found (Debian: postgresql-client)", pg->shown);
    return HF_EUNSUPPORTED;
  }
  return 0;
}


/* psql -X -w -q -v ON_ERROR_STOP=1 -d URL, then the caller's arguments. */
static void psql_start(struct hf_req *r, const struct hf_pg *pg, struct hf_argv *a, const char *url) {
  hf__argv_start(r, a);
  hf_argv_push(a, pg->psql);
  hf_argv_push(a, "-X");
  hf_argv_push(a, "-w");
  hf_argv_push(a, "-q");
  hf_argv_push(a, "-v");
  hf_argv_push(a, "ON_ERROR_STOP=1");
  hf_argv_pushf(a, "--dbname=%s", url);
}

/* r->msg after a failed program: the line that says why, not the whole output. */
static void why(struct hf_req *r, const char *tag, const char *prog, const char *what, int rc, const char *out) {
  char line[600];
  hf__why_line(out ? out : "", line, sizeof line);
  snprintf(r->msg, sizeof r->msg, "%s: %s %s failed (%s): %s", tag, prog, what, hf_err_code(rc), line[0] ? line : "no output");
}

int hf_pg_query(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *sql, const char *tag,
                char *out, size_t outlen) {
  struct hf_argv a;
  char *o = NULL;
  int rc;
  psql_start(r, pg, &a, url);
  hf_argv_push(&a, "-At");
  hf_argv_push(&a, "-c");
  hf_argv_push(&a, sql);
  rc = hf__cmd(r, &a, NULL, NULL, pg->env, hf__left_ms(r), tag, true, &o);
  hf_argv_free(&a);
  out[0] = '\0';
  if (rc != 0) { why(r, tag, "psql", "query", rc, o); free(o); return rc; }
  if (o) {
    size_t n = strcspn(o, "\n");
    snprintf(out, outlen, "%.*s", (int)n, o);
  }
  free(o);
  return 0;
}

int hf_pg_alembic(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *tag, char *out, size_t outlen) {
  char has[16];
  int rc = hf_pg_query(r, pg, url, "select count(*) from information_schema.tables where table_name = 'alembic_version'",
                       tag, has, sizeof has);
  out[0] = '\0';
  if (rc != 0) return rc;
  if (strcmp(has, "0") == 0) return 0;
  return hf_pg_query(r, pg, url, "select version_num from alembic_version", tag, out, outlen);
}

/* A line pg_dump writes differently for the same data: its version comments and the random key
 * of \restrict / \unrestrict (pg_dump 15.14 and later). */
static bool volatile_line(const char *l, size_t n) {
  return (n >= 9 && memcmp(l, "-- Dumped", 9) == 0) || (n >= 10 && memcmp(l, "\\restrict ", 10) == 0) ||
         (n >= 12 && memcmp(l, "\\unrestrict ", 12) == 0);
}

int hf_pg_content_sha(const char *file, char content[HF_SHA256_HEX]) {
  struct hf_sha256 c;
  unsigned char d[HF_SHA256_LEN];
  char err[256];
  FILE *f;
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  int fd = hf_sf_open_read(file, err, sizeof err);
  content[0] = '\0';
  if (fd < 0) return HF_EIO;
  if ((f = fdopen(fd, "r")) == NULL) { close(fd); return HF_EIO; }
  hf_sha256_init(&c);
  while ((n = getline(&line, &cap, f)) > 0)
    if (!volatile_line(line, (size_t)n)) hf_sha256_update(&c, line, (size_t)n);
  free(line);
  if (ferror(f)) { fclose(f); return HF_EIO; }
  fclose(f);
  hf_sha256_final(&c, d);
  hf_sha256_tohex(d, content);
  return 0;
}

int hf_pg_dump(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *file, const char *tag,
               char sha[HF_SHA256_HEX], char content[HF_SHA256_HEX]) {
  struct hf_argv a;
  struct hf_run run;
  struct hf_sf sf;
  int rc;
  sha[0] = content[0] = '\0';
  if ((rc = hf_sf_begin(&sf, file, 0600, r->msg, sizeof r->msg)) != 0) return rc;
  hf__argv_start(r, &a);
  hf_argv_push(&a, pg->dump);
  hf_argv_push(&a, "--no-password");
  hf_argv_push(&a, "--format=plain");
  hf_argv_push(&a, "--clean");
  hf_argv_push(&a, "--if-exists");
  hf_argv_pushf(&a, "--dbname=%s", url);
  memset(&run, 0, sizeof run);
  run.argv = a.v; run.stdout_fd = sf.fd; run.timeout_ms = hf__left_ms(r); run.extra_env = pg->env;
  rc = hf_argv_error(&a) ? hf_argv_error(&a) : hf_run_exec(&run);
  if (rc != 0) {
    why(r, tag, pg->dump, "of the database", rc, run.out);
    hf_sf_abort(&sf);
  } else if ((rc = hf_sf_commit(&sf, r->msg, sizeof r->msg)) == 0) {
    if (hf_sha256_file(file, sha) != 0 || hf_pg_content_sha(file, content) != 0) {
      snprintf(r->msg, sizeof r->msg, "%s: cannot read back the dump %s", tag, file);
      rc = HF_EIO;
    }
  }
  hf_run_free(&run);
  hf_argv_free(&a);
  return rc;
}

int hf_pg_createdrop(struct hf_req *r, const struct hf_pg *pg, const char *name, bool create, const char *tag) {
  char url[1100], sql[256], none[8];
  int rc;
  for (const char *p = name; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_')) {
      snprintf(r->msg, sizeof r->msg, "%s: database name %s: only [a-z0-9_] are used for scratch databases", tag, name);
      return HF_EBADARG;
    }
  if ((rc = hf_pg_url_for(r, pg, "postgres", false, url, sizeof url)) != 0) return rc;
  snprintf(sql, sizeof sql, create ? "create database \"%s\"" : "drop database if exists \"%s\" with (force)", name);
  rc = hf_pg_query(r, pg, url, sql, tag, none, sizeof none);
  explicit_bzero(url, sizeof url);
  return rc;
}

int hf_pg_load(struct hf_req *r, const struct hf_pg *pg, const char *url, const char *file, const char *tag) {
  struct hf_argv a;
  char *o = NULL;
  int rc;
  psql_start(r, pg, &a, url);
  hf_argv_push(&a, "--single-transaction");
  hf_argv_pushf(&a, "--file=%s", file);
  rc = hf__cmd(r, &a, NULL, NULL, pg->env, hf__left_ms(r), tag, true, &o);
  hf_argv_free(&a);
  if (rc != 0) why(r, tag, "psql", "loading the dump", rc, o);
  free(o);
  return rc;
}

/* Is "schema.table" (as quote_ident writes it, unquoted) created by the dump? */
static bool dump_has_table(const char *file, const char *qname) {
  char err[128], *line = NULL, want[300];
  size_t cap = 0, wl;
  bool found = false;
  FILE *f;
  int fd = hf_sf_open_read(file, err, sizeof err);
  if (fd < 0 || (f = fdopen(fd, "r")) == NULL) { if (fd >= 0) close(fd); return true; /* unknown: keep it */ }
  snprintf(want, sizeof want, "CREATE TABLE %s (", qname);
  wl = strlen(want);
  while (!found && getline(&line, &cap, f) > 0) found = strncmp(line, want, wl) == 0;
  free(line);
  fclose(f);
  return found;
}

/* Tables of the agent's role the backup does not hold (a new release's): dropped in the same
 * transaction as the load, so the database is the backup's again, not the backup plus extras. */
static int extra_tables(struct hf_req *r, const struct hf_pg *pg, const char *file, char *sql, size_t sqllen, json_t *dropped) {
  struct hf_argv a;
  char *o = NULL, *p;
  size_t off = 0;
  int rc;
  psql_start(r, pg, &a, pg->url);
  hf_argv_push(&a, "-At");
  hf_argv_push(&a, "-c");
  hf_argv_push(&a, "select schemaname || '.' || tablename from pg_tables where tableowner = current_user and "
                   "schemaname not in ('pg_catalog', 'information_schema') order by 1");
  rc = hf__cmd(r, &a, NULL, NULL, pg->env, hf__left_ms(r), "rollback", true, &o);
  hf_argv_free(&a);
  sql[0] = '\0';
  if (rc != 0) { why(r, "rollback", "psql", "listing the tables", rc, o); free(o); return rc; }
  for (p = o ? strtok(o, "\n") : NULL; p; p = strtok(NULL, "\n")) {
    bool plain = p[0] != '\0';
    for (const char *c = p; *c; c++)
      if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '.')) plain = false;
    if (!plain || dump_has_table(file, p)) continue;
    int n = snprintf(sql + off, sqllen - off, "%sdrop table if exists %s cascade", off ? "; " : "", p);
    if (n < 0 || (size_t)n >= sqllen - off) { free(o); snprintf(r->msg, sizeof r->msg, "rollback: too many new tables"); return HF_EINVAL; }
    off += (size_t)n;
    json_array_append_new(dropped, json_string(p));
  }
  free(o);
  return 0;
}

int hf_pg_restore(struct hf_req *r, const struct hf_pg *pg, const char *file, const char *sha, const char *content) {
  char now[HF_SHA256_HEX], nowc[HF_SHA256_HEX], verify[PATH_MAX], sql[4096], *o = NULL;
  json_t *dropped = json_array();
  struct hf_argv a;
  int rc;

  if (hf_sha256_file(file, now) != 0 || strcmp(now, sha) != 0) {
    snprintf(r->msg, sizeof r->msg, "backup dump %s does not match its checksum %s: nothing restored", file, sha);
    json_decref(dropped);
    return HF_EINTEGRITY;
  }
  /* The hub is stopped: a session of its role still on its database is a leftover, above all an
   * `alembic upgrade` whose agent was killed (it is upgrade-db's child, out of reach of the death
   * signal) and that would go on migrating under the restore. End them first. */
  {
    char n[32];
    if ((rc = hf_pg_query(r, pg, pg->url, "select count(pg_terminate_backend(pid)) from pg_stat_activity where "
                          "datname = current_database() and usename = current_user and pid <> pg_backend_pid()",
                          "rollback", n, sizeof n)) != 0) { json_decref(dropped); return rc; }
    if (strcmp(n, "0") != 0)
      hf__event(r, "warn", "rollback: ended %s other session(s) of the hub's role on %s before the restore", n, pg->shown);
  }
  if ((rc = extra_tables(r, pg, file, sql, sizeof sql, dropped)) != 0) { json_decref(dropped); return rc; }
  if (json_array_size(dropped) > 0) {
    char *names = json_dumps(dropped, JSON_COMPACT);
    hf__event(r, "info", "rollback: tables not in the backup, dropped with the restore: %s", names ? names : "?");
    free(names);
  }
  json_decref(dropped);
  psql_start(r, pg, &a, pg->url);
  hf_argv_push(&a, "--single-transaction");
  if (sql[0]) { hf_argv_push(&a, "-c"); hf_argv_push(&a, sql); }
  hf_argv_pushf(&a, "--file=%s", file);
  hf__event(r, "info", "rollback: restoring %s from %s (one transaction)", pg->shown, file);
  rc = hf__cmd(r, &a, NULL, NULL, pg->env, hf__left_ms(r), "rollback", true, &o);
  hf_argv_free(&a);
  if (rc != 0) { why(r, "rollback", "psql", "restoring the dump", rc, o); free(o); return rc; }
  free(o);
  /* The proof: the database dumps to the backup's content again. */
  if (hf__pathf(verify, sizeof verify, "%s.verify", file) != 0) return HF_EBADARG;
  if ((rc = hf_pg_dump(r, pg, pg->url, verify, "rollback", now, nowc)) != 0) return rc;
  unlink(verify);
  if (content && strcmp(nowc, content) != 0) {
    snprintf(r->msg, sizeof r->msg, "database %s after the restore differs from the backup %s (content %s, backup %s)",
             pg->shown, file, nowc, content);
    return HF_EINTEGRITY;
  }
  hf__event(r, "info", "rollback: %s restored; its dump equals the backup's (content sha256 %s)", pg->shown, nowc);
  return 0;
}
