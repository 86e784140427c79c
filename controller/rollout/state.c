/* state.c: the rollout state store in SQLite (WAL, 0600, versioned schema). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <sqlite3.h>
#include "hf_state.h"
#include "hf_proto.h"

struct hf_state {
  sqlite3 *db;
  char     errmsg[512];
};

/* Schema migrations: migrations[i] takes the schema from version i to i+1.
 * Never edit a released entry; append a new one. */
static const char *const migrations[] = {
  /* 0 -> 1 */
  "CREATE TABLE rollouts ("
  "  id TEXT PRIMARY KEY, target TEXT NOT NULL, inventory TEXT NOT NULL,"
  "  options TEXT NOT NULL DEFAULT '{}', status TEXT NOT NULL,"
  "  stage INTEGER NOT NULL DEFAULT 0, nstages INTEGER NOT NULL,"
  "  budget INTEGER NOT NULL, created INTEGER NOT NULL, finished INTEGER);"
  "CREATE TABLE hosts ("
  "  rollout TEXT NOT NULL REFERENCES rollouts(id), host TEXT NOT NULL,"
  "  stage INTEGER NOT NULL, status TEXT NOT NULL, step TEXT, error TEXT,"
  "  before TEXT, after TEXT, backup TEXT, downtime_ms INTEGER,"
  "  started INTEGER, finished INTEGER, PRIMARY KEY (rollout, host));"
  "CREATE TABLE steps ("
  "  id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT NOT NULL, host TEXT NOT NULL,"
  "  step TEXT NOT NULL, outcome TEXT NOT NULL, started INTEGER NOT NULL,"
  "  finished INTEGER, data TEXT, error TEXT);"
  "CREATE INDEX steps_by_host ON steps(rollout, host, id);"
  "CREATE TABLE events ("
  "  id INTEGER PRIMARY KEY AUTOINCREMENT, rollout TEXT, host TEXT,"
  "  time INTEGER NOT NULL, level TEXT NOT NULL, text TEXT NOT NULL);"
  "CREATE INDEX events_by_rollout ON events(rollout, id);",
  /* 1 -> 2: the users' downtime (longest gap of the agent's probe of the
   * users' servers through the proxy, issue 16) next to the hub's */
  "ALTER TABLE hosts ADD COLUMN users_downtime_ms INTEGER;",
};
#define NMIGRATIONS (sizeof migrations / sizeof migrations[0])

static int fail(struct hf_state *st, const char *what) {
  snprintf(st->errmsg, sizeof st->errmsg, "%s: %s", what, st->db ? sqlite3_errmsg(st->db) : "no database");
  return HF_EDB;
}

const char *hf_state_errmsg(struct hf_state *st) { return st ? st->errmsg : "no state"; }

int64_t hf_state_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* mkdir -p with mode for every missing component. */
static int mkdirs(const char *dir, mode_t mode) {
  char buf[PATH_MAX];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof buf) return HF_EINVAL;
  memcpy(buf, dir, n + 1);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, mode) != 0 && errno != EEXIST) return HF_EIO;
    *p = '/';
  }
  if (mkdir(buf, mode) != 0 && errno != EEXIST) return HF_EIO;
  return 0;
}

int hf_state_default_path(char *buf, size_t len) {
  const char *xdg = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
  char dir[PATH_MAX];
  int n;
  if (xdg && xdg[0] == '/') n = snprintf(dir, sizeof dir, "%s/hubfleet", xdg);
  else if (home && home[0] == '/') n = snprintf(dir, sizeof dir, "%s/.local/state/hubfleet", home);
  else return HF_EIO;
  if (n < 0 || (size_t)n >= sizeof dir) return HF_EINVAL;
  if (mkdirs(dir, 0700) != 0) return HF_EIO;
  n = snprintf(buf, len, "%s/state.db", dir);
  return (n < 0 || (size_t)n >= len) ? HF_EINVAL : 0;
}

static int exec_sql(struct hf_state *st, const char *sql, const char *what) {
  char *msg = NULL;
  if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    snprintf(st->errmsg, sizeof st->errmsg, "%s: %s", what, msg ? msg : sqlite3_errmsg(st->db));
    sqlite3_free(msg);
    return HF_EDB;
  }
  return 0;
}

static int migrate(struct hf_state *st) {
  int r;
  if ((r = exec_sql(st, "BEGIN IMMEDIATE", "begin migration")) != 0) return r;
  sqlite3_stmt *q = NULL;
  int version = -1;
  if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
    version = sqlite3_column_int(q, 0);
  sqlite3_finalize(q);
  if (version < 0) { r = fail(st, "read schema version"); goto out; }
  if ((size_t)version > NMIGRATIONS) {
    snprintf(st->errmsg, sizeof st->errmsg,
             "state file has schema version %d, newer than this hubfleet knows (%zu): use a newer hubfleet",
             version, NMIGRATIONS);
    r = HF_EDB;
    goto out;
  }
  for (size_t v = (size_t)version; v < NMIGRATIONS; v++) {
    char sql[64];
    if ((r = exec_sql(st, migrations[v], "migrate schema")) != 0) goto out;
    snprintf(sql, sizeof sql, "PRAGMA user_version = %zu", v + 1);
    if ((r = exec_sql(st, sql, "set schema version")) != 0) goto out;
  }
  return exec_sql(st, "COMMIT", "commit migration");
out:
  sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  return r;
}

int hf_state_open(const char *path, struct hf_state **out, char *err, size_t errlen) {
  char def[PATH_MAX];
  *out = NULL;
  if (!path) {
    if (hf_state_default_path(def, sizeof def) != 0) {
      snprintf(err, errlen, "cannot create the state directory (set XDG_STATE_HOME or HOME, or pass --state FILE)");
      return HF_EDB;
    }
    path = def;
  }
  /* Create the file 0600 ourselves: SQLite would honour the umask. */
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return HF_EDB;
  }
  close(fd);
  struct hf_state *st = calloc(1, sizeof *st);
  if (!st) return HF_ENOMEM;
  if (sqlite3_open_v2(path, &st->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "%s: %s", path, st->db ? sqlite3_errmsg(st->db) : "cannot open");
    hf_state_close(st);
    return HF_EDB;
  }
  sqlite3_busy_timeout(st->db, 5000);
  if (exec_sql(st, "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON", "configure") != 0 ||
      migrate(st) != 0) {
    snprintf(err, errlen, "%s: %s", path, st->errmsg);
    hf_state_close(st);
    return HF_EDB;
  }
  /* The WAL and shm files inherit nothing from us: keep them private too. */
  char side[PATH_MAX + 8];
  snprintf(side, sizeof side, "%s-wal", path);
  chmod(side, 0600);
  snprintf(side, sizeof side, "%s-shm", path);
  chmod(side, 0600);
  *out = st;
  return 0;
}

void hf_state_close(struct hf_state *st) {
  if (!st) return;
  sqlite3_close(st->db);
  free(st);
}

/* ---- statement helpers -------------------------------------------------- */

/* Binds "s" (text or NULL), "i" (int64), "j" (json_t*, stored as text or NULL). */
static int bindv(sqlite3_stmt *q, const char *types, va_list ap) {
  for (int i = 0; types[i]; i++) {
    int rc;
    if (types[i] == 's') {
      const char *s = va_arg(ap, const char *);
      rc = s ? sqlite3_bind_text(q, i + 1, s, -1, SQLITE_TRANSIENT) : sqlite3_bind_null(q, i + 1);
    } else if (types[i] == 'i') {
      rc = sqlite3_bind_int64(q, i + 1, va_arg(ap, int64_t));
    } else {
      const json_t *j = va_arg(ap, const json_t *);
      char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
      rc = s ? sqlite3_bind_text(q, i + 1, s, -1, free) : sqlite3_bind_null(q, i + 1);
    }
    if (rc != SQLITE_OK) return rc;
  }
  return SQLITE_OK;
}

/* Runs one write statement in its own IMMEDIATE transaction. */
static int write1(struct hf_state *st, const char *sql, const char *types, ...) {
  sqlite3_stmt *q = NULL;
  int r = 0;
  va_list ap;
  if ((r = exec_sql(st, "BEGIN IMMEDIATE", "begin")) != 0) return r;
  if (sqlite3_prepare_v2(st->db, sql, -1, &q, NULL) != SQLITE_OK) { r = fail(st, "prepare"); goto out; }
  va_start(ap, types);
  int rc = bindv(q, types, ap);
  va_end(ap);
  if (rc != SQLITE_OK || sqlite3_step(q) != SQLITE_DONE) { r = fail(st, "write"); goto out; }
  sqlite3_finalize(q);
  return exec_sql(st, "COMMIT", "commit");
out:
  sqlite3_finalize(q);
  sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  return r;
}

/* One result row as a JSON object; columns named *_json or in jsoncols are parsed. */
static json_t *row_json(sqlite3_stmt *q) {
  json_t *o = json_object();
  int n = sqlite3_column_count(q);
  for (int i = 0; i < n && o; i++) {
    const char *name = sqlite3_column_name(q, i);
    json_t *v;
    switch (sqlite3_column_type(q, i)) {
    case SQLITE_INTEGER: v = json_integer(sqlite3_column_int64(q, i)); break;
    case SQLITE_NULL: v = json_null(); break;
    default: {
      const char *t = (const char *)sqlite3_column_text(q, i);
      bool is_json = !strcmp(name, "options") || !strcmp(name, "before") || !strcmp(name, "after") ||
                     !strcmp(name, "backup") || !strcmp(name, "data");
      v = is_json ? json_loads(t, 0, NULL) : NULL;
      if (!v) v = json_string(t);
    }
    }
    json_object_set_new(o, name, v);
  }
  return o;
}

/* Runs a query and returns every row as a JSON array (new), NULL on error. */
static json_t *query(struct hf_state *st, const char *sql, const char *types, ...) {
  sqlite3_stmt *q = NULL;
  va_list ap;
  if (sqlite3_prepare_v2(st->db, sql, -1, &q, NULL) != SQLITE_OK) { fail(st, "prepare"); return NULL; }
  va_start(ap, types);
  int rc = bindv(q, types, ap);
  va_end(ap);
  json_t *arr = json_array();
  if (rc != SQLITE_OK) goto bad;
  for (int guard = 0; guard < 10000000; guard++) {
    rc = sqlite3_step(q);
    if (rc == SQLITE_DONE) break;
    if (rc != SQLITE_ROW) goto bad;
    json_array_append_new(arr, row_json(q));
  }
  sqlite3_finalize(q);
  return arr;
bad:
  fail(st, "query");
  sqlite3_finalize(q);
  json_decref(arr);
  return NULL;
}

/* ---- rollouts ------------------------------------------------------------ */

static void new_id(char *id, size_t idlen) {
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  unsigned rnd = 0;
  int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, &rnd, sizeof rnd) != (ssize_t)sizeof rnd) rnd = (unsigned)getpid() ^ (unsigned)now;
  if (fd >= 0) close(fd);
  snprintf(id, idlen, "r%04d%02d%02d-%02d%02d%02d-%04x", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
           tm.tm_hour, tm.tm_min, tm.tm_sec, rnd & 0xffff);
}

int hf_state_rollout_create(struct hf_state *st, const char *target, const char *inventory,
                            const json_t *options, unsigned nstages, unsigned budget,
                            const char *const *hosts, const unsigned *stages, size_t nhosts,
                            char *id, size_t idlen) {
  int r;
  sqlite3_stmt *q = NULL;
  new_id(id, idlen);
  char *opts = options ? json_dumps(options, JSON_COMPACT) : NULL;
  if ((r = exec_sql(st, "BEGIN IMMEDIATE", "begin")) != 0) { free(opts); return r; }
  if (sqlite3_prepare_v2(st->db,
        "INSERT INTO rollouts(id,target,inventory,options,status,stage,nstages,budget,created)"
        " VALUES(?,?,?,?,?,0,?,?,?)", -1, &q, NULL) != SQLITE_OK) { r = fail(st, "prepare"); goto out; }
  sqlite3_bind_text(q, 1, id, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(q, 2, target, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(q, 3, inventory, -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(q, 4, opts ? opts : "{}", -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(q, 5, HF_ROLLOUT_RUNNING, -1, SQLITE_STATIC);
  sqlite3_bind_int64(q, 6, nstages);
  sqlite3_bind_int64(q, 7, budget);
  sqlite3_bind_int64(q, 8, hf_state_now_ms());
  if (sqlite3_step(q) != SQLITE_DONE) { r = fail(st, "insert rollout"); goto out; }
  sqlite3_finalize(q);
  q = NULL;
  if (sqlite3_prepare_v2(st->db, "INSERT INTO hosts(rollout,host,stage,status) VALUES(?,?,?,?)", -1, &q, NULL) != SQLITE_OK) {
    r = fail(st, "prepare");
    goto out;
  }
  for (size_t i = 0; i < nhosts; i++) {
    sqlite3_reset(q);
    sqlite3_bind_text(q, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(q, 2, hosts[i], -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(q, 3, stages[i]);
    sqlite3_bind_text(q, 4, HF_HOST_PENDING, -1, SQLITE_STATIC);
    if (sqlite3_step(q) != SQLITE_DONE) { r = fail(st, "insert host"); goto out; }
  }
  sqlite3_finalize(q);
  free(opts);
  return exec_sql(st, "COMMIT", "commit");
out:
  free(opts);
  sqlite3_finalize(q);
  sqlite3_exec(st->db, "ROLLBACK", NULL, NULL, NULL);
  return r;
}

int hf_state_rollout_set_status(struct hf_state *st, const char *id, const char *status) {
  bool final = strcmp(status, HF_ROLLOUT_RUNNING) && strcmp(status, HF_ROLLOUT_PAUSED);
  return write1(st, "UPDATE rollouts SET status=?, finished=CASE WHEN ? THEN ? ELSE NULL END WHERE id=?", "siis",
                status, (int64_t)final, hf_state_now_ms(), id);
}

int hf_state_rollout_set_stage(struct hf_state *st, const char *id, unsigned stage) {
  return write1(st, "UPDATE rollouts SET stage=? WHERE id=?", "is", (int64_t)stage, id);
}

static const char rollout_cols[] =
  "SELECT id, target, inventory, options, status, stage, nstages, budget, created, finished,"
  " (SELECT COUNT(*) FROM hosts h WHERE h.rollout=r.id AND h.status IN ('failed','rolled_back','needs_attention')) AS failures,"
  " (SELECT COUNT(*) FROM hosts h WHERE h.rollout=r.id) AS nhosts FROM rollouts r";

json_t *hf_state_rollout_get(struct hf_state *st, const char *id) {
  char sql[sizeof rollout_cols + 32];
  snprintf(sql, sizeof sql, "%s WHERE id=?", rollout_cols);
  json_t *arr = query(st, sql, "s", id);
  json_t *one = arr && json_array_size(arr) ? json_incref(json_array_get(arr, 0)) : NULL;
  json_decref(arr);
  return one;
}

json_t *hf_state_rollout_list(struct hf_state *st) {
  char sql[sizeof rollout_cols + 40];
  snprintf(sql, sizeof sql, "%s ORDER BY created DESC, id DESC", rollout_cols);
  return query(st, sql, "");
}

int hf_state_rollout_latest(struct hf_state *st, char *buf, size_t len) {
  json_t *arr = query(st, "SELECT id FROM rollouts ORDER BY created DESC, id DESC LIMIT 1", "");
  int r = HF_ENOTFOUND;
  if (arr && json_array_size(arr)) {
    snprintf(buf, len, "%s", json_string_value(json_object_get(json_array_get(arr, 0), "id")));
    r = 0;
  }
  json_decref(arr);
  return r;
}

/* ---- hosts ---------------------------------------------------------------- */

int hf_state_host_set(struct hf_state *st, const char *rollout, const char *host,
                      const char *status, const char *step, const char *error) {
  int64_t now = hf_state_now_ms();
  bool running = !strcmp(status, HF_HOST_RUNNING);
  bool final = strcmp(status, HF_HOST_PENDING) && !running;
  return write1(st,
    "UPDATE hosts SET status=?, step=COALESCE(?,step), error=?,"
    " started=CASE WHEN ? AND started IS NULL THEN ? ELSE started END,"
    " finished=CASE WHEN ? THEN ? ELSE NULL END WHERE rollout=? AND host=?",
    "sssiiiiss", status, step, error, (int64_t)running, now, (int64_t)final, now, rollout, host);
}

int hf_state_host_set_json(struct hf_state *st, const char *rollout, const char *host,
                           const char *column, const json_t *value) {
  const char *sql;
  if (!strcmp(column, "before")) sql = "UPDATE hosts SET before=? WHERE rollout=? AND host=?";
  else if (!strcmp(column, "after")) sql = "UPDATE hosts SET after=? WHERE rollout=? AND host=?";
  else if (!strcmp(column, "backup")) sql = "UPDATE hosts SET backup=? WHERE rollout=? AND host=?";
  else return HF_EINVAL;
  return write1(st, sql, "jss", value, rollout, host);
}

int hf_state_host_set_downtime(struct hf_state *st, const char *rollout, const char *host, int64_t downtime_ms) {
  return write1(st, "UPDATE hosts SET downtime_ms=? WHERE rollout=? AND host=?", "iss", downtime_ms, rollout, host);
}

int hf_state_host_set_users_downtime(struct hf_state *st, const char *rollout, const char *host, int64_t ms) {
  return write1(st, "UPDATE hosts SET users_downtime_ms=? WHERE rollout=? AND host=?", "iss", ms, rollout, host);
}

json_t *hf_state_hosts(struct hf_state *st, const char *rollout) {
  return query(st,
    "SELECT host, stage, status, step, error, before, after, backup, downtime_ms, users_downtime_ms, started, finished"
    " FROM hosts WHERE rollout=? ORDER BY stage, host", "s", rollout);
}

/* ---- steps and events ------------------------------------------------------- */

int hf_state_step_begin(struct hf_state *st, const char *rollout, const char *host,
                        const char *step, int64_t *step_id) {
  int r = write1(st, "INSERT INTO steps(rollout,host,step,outcome,started) VALUES(?,?,?,'sent',?)", "sssi",
                 rollout, host, step, hf_state_now_ms());
  if (r == 0) *step_id = sqlite3_last_insert_rowid(st->db);
  return r;
}

int hf_state_step_end(struct hf_state *st, int64_t step_id, const char *outcome,
                      const json_t *data, const char *error) {
  return write1(st, "UPDATE steps SET outcome=?, finished=?, data=?, error=? WHERE id=?", "sijsi",
                outcome, hf_state_now_ms(), data, error, step_id);
}

json_t *hf_state_steps(struct hf_state *st, const char *rollout, const char *host) {
  if (host)
    return query(st, "SELECT id, host, step, outcome, started, finished, data, error FROM steps"
                     " WHERE rollout=? AND host=? ORDER BY id", "ss", rollout, host);
  return query(st, "SELECT id, host, step, outcome, started, finished, data, error FROM steps"
                   " WHERE rollout=? ORDER BY id", "s", rollout);
}

int hf_state_event(struct hf_state *st, const char *rollout, const char *host,
                   const char *level, const char *text) {
  return write1(st, "INSERT INTO events(rollout,host,time,level,text) VALUES(?,?,?,?,?)", "ssiss",
                rollout, host, hf_state_now_ms(), level, text);
}

json_t *hf_state_events(struct hf_state *st, const char *rollout, int64_t after_id) {
  return query(st, "SELECT id, host, time, level, text FROM events WHERE rollout=? AND id>? ORDER BY id",
               "si", rollout, after_id);
}
