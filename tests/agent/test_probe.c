/* test_probe.c: unit tests of the users' side of a hub: the running servers read from a hub
 * database (bounded, names made printable, base_urls that cannot go into a request line
 * refused), the HTTP client's Location header, and the users' probe itself against a local
 * HTTP server that goes down for a while (its figure, its files, its end). */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sqlite3.h>

#include "agent_int.h"
#include "hf_files.h"
#include "probe.h"

static int failures, checks;

static void expect(bool ok, const char *where, const char *fmt, ...) {
  va_list ap;
  checks++;
  if (ok) return;
  failures++;
  fprintf(stderr, "%s: ", where);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
}

static char tmpdir[PATH_MAX];

/* o as compact JSON, for a failure message (a static buffer: one per message). */
static const char *js(const json_t *o) {
  static char buf[2048];
  char *t = json_dumps(o, JSON_COMPACT);
  snprintf(buf, sizeof buf, "%s", t ? t : "(null)");
  free(t);
  return buf;
}

/* ---- a tiny HTTP server: 200 {"version"} for /user/NAME/api, 503 while down, a 302 into the
 * hub for /user/gone/api ---- */
static int srv_fd, srv_port;
static volatile int srv_down, srv_stop, srv_503s;

static void *serve(void *arg) {
  (void)arg;
  while (!srv_stop) {
    struct pollfd p = { .fd = srv_fd, .events = POLLIN };
    char req[2048];
    const char *resp;
    ssize_t n;
    int c;
    if (poll(&p, 1, 50) <= 0) continue;
    if ((c = accept(srv_fd, NULL, NULL)) < 0) continue;
    n = recv(c, req, sizeof req - 1, 0);
    req[n > 0 ? n : 0] = '\0';
    if (strstr(req, "GET /user/gone/api ") == req)
      resp = "HTTP/1.1 302 Found\r\nLocation: /hub/user/gone/api\r\nContent-Length: 0\r\n\r\n";
    else if (srv_down) {
      resp = "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n";
      srv_503s++;
    }
    else
      resp = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"version\": \"6.5.4\"}\n";
    if (send(c, resp, strlen(resp), MSG_NOSIGNAL) < 0) { /* the client gave up */ }
    close(c);
  }
  return NULL;
}

static void server_start(pthread_t *th) {
  struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
  socklen_t l = sizeof a;
  srv_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (srv_fd < 0 || bind(srv_fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(srv_fd, 64) != 0 ||
      getsockname(srv_fd, (struct sockaddr *)&a, &l) != 0) { perror("server"); exit(2); }
  srv_port = ntohs(a.sin_port);
  pthread_create(th, NULL, serve, NULL);
}

/* ---- a hub database with running servers ---- */
static void make_db(const char *path, int nrunning, bool hostile) {
  sqlite3 *db;
  char sql[512];
  if (sqlite3_open(path, &db) != SQLITE_OK) { fprintf(stderr, "sqlite3_open %s\n", path); exit(2); }
  sqlite3_exec(db, "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);"
                   "CREATE TABLE servers (id INTEGER PRIMARY KEY, base_url TEXT);"
                   "CREATE TABLE spawners (id INTEGER PRIMARY KEY, user_id INTEGER, server_id INTEGER, name TEXT);"
                   "INSERT INTO users (id, name) VALUES (1000, 'carol');"
                   "INSERT INTO spawners (user_id, server_id, name) VALUES (1000, NULL, '');", NULL, NULL, NULL);
  for (int i = 0; i < nrunning; i++) {
    snprintf(sql, sizeof sql, "INSERT INTO users (id, name) VALUES (%d, 'u%02d');"
             "INSERT INTO servers (id, base_url) VALUES (%d, '/user/u%02d/');"
             "INSERT INTO spawners (user_id, server_id, name) VALUES (%d, %d, '');", i + 1, i, i + 1, i, i + 1, i + 1);
    sqlite3_exec(db, sql, NULL, NULL, NULL);
  }
  if (hostile)
    sqlite3_exec(db, "INSERT INTO users (id, name) VALUES (500, 'a' || char(27) || '[31mlice');"
                     "INSERT INTO servers (id, base_url) VALUES (500, '/user/x/ HTTP/1.1' || char(13) || char(10) || 'Host: evil/');"
                     "INSERT INTO spawners (user_id, server_id, name) VALUES (500, 500, 'lab');"
                     "INSERT INTO users (id, name) VALUES (501, 'aaron');"
                     "INSERT INTO servers (id, base_url) VALUES (501, 'user/aaron');"
                     "INSERT INTO spawners (user_id, server_id, name) VALUES (501, 501, '');",
                 NULL, NULL, NULL);
  sqlite3_close(db);
}

static void req_init(struct hf_req *r, bool *dead, const char *db, const char *state) {
  memset(r, 0, sizeof *r);
  *dead = true; /* events are dropped: nobody reads them here */
  r->out_fd = -1;
  r->out_dead = dead;
  r->op = "stop";
  r->rollout = "r20261130-000000-test";
  r->hub.sqlite = true;
  snprintf(r->hub.db_path, sizeof r->hub.db_path, "%s", db);
  snprintf(r->hub.state_dir, sizeof r->hub.state_dir, "%s", state);
  r->timeout_ms = 60000;
  r->deadline_ms = hf__now_ms() + 60000;
}

static void test_db_servers(void) {
  char db[PATH_MAX];
  struct hf_user_servers us;
  struct hf_req r;
  bool dead;
  snprintf(db, sizeof db, "%s/many.sqlite", tmpdir);
  make_db(db, 20, true);
  req_init(&r, &dead, db, tmpdir);
  expect(hf__db_user_servers(&r, &us) == 0, __func__, "read: %s", us.error);
  expect(us.count == 22, __func__, "count %lld, want 22 (carol's stopped server not counted)", (long long)us.count);
  expect(us.n == HF_PROBE_MAX_SERVERS, __func__, "listed %d, want %d", us.n, HF_PROBE_MAX_SERVERS);
  /* sorted by user name: the hostile 'a\e[31mlice' and 'aaron' first */
  expect(strcmp(us.srv[0].label, "a?[31mlice/lab") == 0, __func__, "label 0 '%s'", us.srv[0].label);
  expect(us.srv[0].path[0] == '\0', __func__, "a base_url with CR LF and spaces became a path: '%s'", us.srv[0].path);
  expect(strcmp(us.srv[1].label, "aaron") == 0 && us.srv[1].path[0] == '\0', __func__,
         "a base_url without its slashes: '%s' '%s'", us.srv[1].label, us.srv[1].path);
  expect(strcmp(us.srv[2].label, "u00") == 0 && strcmp(us.srv[2].path, "/user/u00/api") == 0, __func__,
         "u00: '%s' '%s'", us.srv[2].label, us.srv[2].path);
  for (int i = 0; i < us.n; i++)
    for (const char *p = us.srv[i].label; *p; p++)
      expect(*p >= 0x20 && *p <= 0x7e, __func__, "label %d holds byte 0x%02x", i, (unsigned char)*p);
  /* facts: the count and the names (bounded) */
  {
    json_t *o = json_object();
    hf__db_servers_facts(&r, o);
    expect(json_integer_value(json_object_get(o, "running_servers")) == 22, __func__, "facts running_servers");
    expect(json_array_size(json_object_get(o, "running_server_users")) == HF_PROBE_MAX_SERVERS, __func__, "facts names");
    json_decref(o);
  }
  /* a database without the tables: unknown, never 0 */
  snprintf(db, sizeof db, "%s/empty.sqlite", tmpdir);
  make_db(db, 0, false);
  {
    sqlite3 *h;
    sqlite3_open(db, &h);
    sqlite3_exec(h, "DROP TABLE spawners; DROP TABLE servers;", NULL, NULL, NULL);
    sqlite3_close(h);
  }
  req_init(&r, &dead, db, tmpdir);
  hf__db_user_servers(&r, &us);
  expect(us.count == -1 && us.error[0] != '\0', __func__, "no spawners table: count %lld, error '%s'",
         (long long)us.count, us.error);
}

static void test_http_location(void) {
  struct hf_http_resp resp;
  char base[64], loc[128];
  int rc;
  snprintf(base, sizeof base, "http://127.0.0.1:%d", srv_port);
  rc = hf_http_get_loc(base, "/user/gone/api", 2000, &resp, loc, sizeof loc);
  expect(rc == 0 && resp.status == 302, __func__, "rc %d status %d", rc, resp.status);
  expect(strcmp(loc, "/hub/user/gone/api") == 0, __func__, "Location '%s'", loc);
  hf_http_resp_free(&resp);
  rc = hf_http_get_loc(base, "/user/u00/api", 2000, &resp, loc, sizeof loc);
  expect(rc == 0 && resp.status == 200 && loc[0] == '\0', __func__, "200: rc %d status %d Location '%s'", rc,
         resp.status, loc);
  hf_http_resp_free(&resp);
}

/* stop starts the probe, the server is down ~700 ms, health ends it: the figure is that outage. */
static void test_probe_outage(void) {
  char db[PATH_MAX], state[PATH_MAX], url[64], fig[PATH_MAX];
  struct hf_req r;
  bool dead;
  json_t *data = json_object(), *jr = NULL, *p;
  int64_t down_ms, t0;
  snprintf(db, sizeof db, "%s/two.sqlite", tmpdir);
  make_db(db, 2, false);
  snprintf(state, sizeof state, "%s/state", tmpdir);
  mkdir(state, 0700);
  snprintf(url, sizeof url, "http://127.0.0.1:%d", srv_port);
  req_init(&r, &dead, db, state);
  r.hub.health_url = url;
  hf__probe_begin(&r, data, &jr);
  p = json_object_get(data, "users_probe");
  expect(strcmp(json_string_value(json_object_get(p, "state")) ?: "", "started") == 0, __func__, "stop: %s",
         js(p));
  expect(json_is_object(jr), __func__, "a journal copy");
  json_decref(jr);
  /* A stop sent again does not start a second probe. */
  {
    json_t *d2 = json_object(), *j2 = NULL;
    hf__probe_begin(&r, d2, &j2);
    expect(strcmp(json_string_value(json_object_get(json_object_get(d2, "users_probe"), "state")) ?: "", "running") == 0,
           __func__, "second stop: %s", js(d2));
    json_decref(d2);
    json_decref(j2);
  }
  usleep(800000);
  /* Down for at least 500 ms and until the probe was refused 6 times (a
   * loaded machine may schedule it late: facts, not timing). */
  t0 = hf__now_ms();
  srv_down = 1;
  while (hf__now_ms() - t0 < 500 || (srv_503s < 6 && hf__now_ms() - t0 < 20000)) usleep(20000);
  srv_down = 0;
  down_ms = hf__now_ms() - t0;
  usleep(500000);
  json_decref(data);
  data = json_object();
  r.op = "health";
  hf__probe_end(&r, data);
  p = json_object_get(data, "users_probe");
  expect(strcmp(json_string_value(json_object_get(p, "state")) ?: "", "complete") == 0, __func__, "health: %s",
         js(p));
  {
    int64_t ud = json_integer_value(json_object_get(data, "users_downtime_ms"));
    expect(json_is_integer(json_object_get(data, "users_downtime_ms")) && ud >= 200 && ud <= down_ms + 2000,
           __func__, "users_downtime_ms %lld for an outage of %lld ms", (long long)ud, (long long)down_ms);
  }
  expect(json_integer_value(json_object_get(p, "servers")) == 2, __func__, "servers");
  expect(json_integer_value(json_object_get(p, "probes")) >= 20, __func__, "probes %lld",
         (long long)json_integer_value(json_object_get(p, "probes")));
  expect(json_integer_value(json_object_get(p, "failed")) >= 6, __func__, "failed %lld",
         (long long)json_integer_value(json_object_get(p, "failed")));
  /* its files: the figures stay, the lock and the word to finish are gone, the process too */
  snprintf(fig, sizeof fig, "%s/probe-%s.json", state, r.rollout);
  expect(access(fig, R_OK) == 0, __func__, "figures file");
  snprintf(fig, sizeof fig, "%s/probe-%s.lock", state, r.rollout);
  expect(access(fig, F_OK) != 0, __func__, "lock file left");
  expect(kill((pid_t)json_integer_value(json_object_get(p, "pid")), 0) != 0, __func__, "the probe still runs");
  /* health again (a retry): the same figures */
  {
    json_t *d2 = json_object();
    hf__probe_end(&r, d2);
    expect(json_equal(json_object_get(d2, "users_downtime_ms"), json_object_get(data, "users_downtime_ms")), __func__,
           "a second health: %s", js(d2));
    json_decref(d2);
  }
  json_decref(data);
  /* a rollout whose stop started no probe: health says so, no figure */
  data = json_object();
  r.rollout = "r20261130-000001-none";
  hf__probe_end(&r, data);
  expect(json_is_null(json_object_get(data, "users_downtime_ms")) &&
         strcmp(json_string_value(json_object_get(json_object_get(data, "users_probe"), "state")) ?: "", "none") == 0,
         __func__, "no probe: %s", js(data));
  json_decref(data);
}

int main(void) {
  pthread_t th;
  snprintf(tmpdir, sizeof tmpdir, "/tmp/hf-test-probe-XXXXXX");
  if (mkdtemp(tmpdir) == NULL) { perror("mkdtemp"); return 2; }
  server_start(&th);
  test_db_servers();
  test_http_location();
  test_probe_outage();
  srv_stop = 1;
  pthread_join(th, NULL);
  hf_rm_tree(tmpdir);
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
