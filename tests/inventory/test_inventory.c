/* test_inventory.c: inventory unit tests: valid/ and invalid/ cases, literals, patterns, API. */
#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_inventory.h"
#include "hf_proto.h"
#include "inv_int.h"

static int failures, checks;

#define CHECK(cond, ...) do {                                              \
    checks++;                                                              \
    if (!(cond)) {                                                         \
      failures++;                                                          \
      fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);      \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
    }                                                                      \
  } while (0)

static char *slurp(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long n;
  if (f == NULL) return NULL;
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  fseek(f, 0, SEEK_SET);
  buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) { free(buf); buf = NULL; }
  if (buf) buf[n] = '\0';
  fclose(f);
  return buf;
}

/* Every key of want is in got with a matching value; arrays match in length
 * and element by element (so an expect file may leave out host keys). */
static int subset(const json_t *want, const json_t *got, char *path, size_t plen) {
  size_t len = strlen(path), i;
  const char *k;
  json_t *v;
  if (json_is_object(want)) {
    if (!json_is_object(got)) return 0;
    json_object_foreach((json_t *)(uintptr_t)want, k, v) {
      snprintf(path + len, plen - len, ".%s", k);
      if (!subset(v, json_object_get(got, k), path, plen)) return 0;
    }
    path[len] = '\0';
    return 1;
  }
  if (json_is_array(want)) {
    if (!json_is_array(got) || json_array_size(got) != json_array_size(want)) return 0;
    for (i = 0; i < json_array_size(want); i++) {
      snprintf(path + len, plen - len, "[%zu]", i);
      if (!subset(json_array_get(want, i), json_array_get(got, i), path, plen)) return 0;
    }
    path[len] = '\0';
    return 1;
  }
  /* 3 and 3.0 differ on purpose: Ansible types them differently. */
  return got != NULL && json_equal((json_t *)(uintptr_t)want, (json_t *)(uintptr_t)got) &&
         json_typeof(want) == json_typeof(got);
}

/* a + b + c in a new buffer (free()). */
static char *join3(const char *a, const char *b, const char *c) {
  size_t n = strlen(a) + strlen(b) + strlen(c) + 1;
  char *s = malloc(n);
  if (s) { strcpy(s, a); strcat(s, b); strcat(s, c); }
  return s;
}

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

static void stem(const char *name, char *out, size_t len) {
  const char *dot = strrchr(name, '.');
  snprintf(out, len, "%.*s", (int)(dot ? dot - name : (long)strlen(name)), name);
}

static void run_valid(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  CHECK(d != NULL, "cannot open %s", dir);
  if (d == NULL) return;
  while ((e = readdir(d)) != NULL) {
    char *path, *epath, st[256], gotp[4096] = "";
    struct hf_inventory *inv = NULL;
    struct hf_inv_error err;
    json_t *want, *got;
    json_error_t je;
    if (e->d_name[0] == '.' || has_suffix(e->d_name, ".expect.json")) continue;
    path = join3(dir, "/", e->d_name);
    stem(e->d_name, st, sizeof st);
    epath = join3(dir, "/", st);
    epath = epath ? realloc(epath, strlen(epath) + 16) : NULL;
    if (path == NULL || epath == NULL) { free(path); free(epath); CHECK(0, "out of memory"); break; }
    strcat(epath, ".expect.json");
    n++;
    int r = hf_inv_load(path, &inv, &err);
    if (r != 0) {
      char msg[1400];
      hf_inv_error_format(&err, msg, sizeof msg);
      CHECK(r == 0, "valid case %s refused: %s", e->d_name, msg);
      free(path); free(epath);
      continue;
    }
    want = json_load_file(epath, 0, &je);
    CHECK(want != NULL, "%s: %s", epath, je.text);
    got = hf_inv_to_json(inv);
    CHECK(got != NULL, "to_json");
    if (want && got) {
      int ok = subset(want, got, gotp, sizeof gotp);
      char *dump = ok ? NULL : json_dumps(got, JSON_INDENT(1));
      CHECK(ok, "valid case %s differs from %s at %s; got:\n%s", e->d_name, epath, gotp, dump ? dump : "");
      free(dump);
    }
    json_decref(want);
    json_decref(got);
    hf_inv_free(inv);
    free(path);
    free(epath);
  }
  closedir(d);
  CHECK(n >= 8, "only %d valid cases found in %s", n, dir);
  printf("valid cases: %d\n", n);
}

static void run_invalid(const char *dir) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  CHECK(d != NULL, "cannot open %s", dir);
  if (d == NULL) return;
  while ((e = readdir(d)) != NULL) {
    char *path, *epath, st[256], msg[1400], *exp, *line, *save = NULL;
    struct hf_inventory *inv = (struct hf_inventory *)&n;   /* must come back NULL */
    struct hf_inv_error err;
    int r, lines = 0;
    if (e->d_name[0] == '.' || has_suffix(e->d_name, ".expect")) continue;
    path = join3(dir, "/", e->d_name);
    stem(e->d_name, st, sizeof st);
    epath = join3(dir, "/", st);
    epath = epath ? realloc(epath, strlen(epath) + 16) : NULL;
    if (path == NULL || epath == NULL) { free(path); free(epath); CHECK(0, "out of memory"); break; }
    strcat(epath, ".expect");
    n++;
    r = hf_inv_load(path, &inv, &err);
    CHECK(r == HF_EINVENTORY, "invalid case %s: expected HF_EINVENTORY, got %d", e->d_name, r);
    CHECK(inv == NULL, "invalid case %s: *out not NULL", e->d_name);
    if (r == 0) { hf_inv_free(inv); free(path); free(epath); continue; }
    hf_inv_error_format(&err, msg, sizeof msg);
    CHECK(strncmp(msg, path, strlen(path)) == 0, "%s: message does not start with the file: %s", e->d_name, msg);
    exp = slurp(epath);
    CHECK(exp != NULL, "missing %s", epath);
    if (exp == NULL) { free(path); free(epath); continue; }
    for (line = strtok_r(exp, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
      if (!strncmp(line, "line=", 5)) {
        lines++;
        CHECK(err.line == atoi(line + 5), "%s: expected line %s, got %d (%s)", e->d_name, line + 5, err.line, msg);
      } else if (!strncmp(line, "where=", 6)) {
        lines++;
        CHECK(strcmp(err.where, line + 6) == 0 && err.line == 0, "%s: expected JSON path %s, got '%s' (%s)",
              e->d_name, line + 6, err.where, msg);
      } else if (!strncmp(line, "message=", 8)) {
        lines++;
        CHECK(strstr(msg, line + 8) != NULL, "%s: message lacks '%s': %s", e->d_name, line + 8, msg);
      }
    }
    CHECK(lines >= 2, "%s: expect file needs a location and a message", epath);
    free(exp);
    free(path);
    free(epath);
  }
  closedir(d);
  CHECK(n >= 20, "only %d invalid cases found in %s", n, dir);
  printf("invalid cases: %d\n", n);
}

/* INI values are typed the way Python's ast.literal_eval types them. */
static void test_pylit(void) {
  static const struct { const char *in, *json; } cases[] = {
    { "2222", "2222" }, { "-1", "-1" }, { "+7", "7" }, { "1_000", "1000" }, { "0x1f", "31" },
    { "0o17", "15" }, { "0b101", "5" }, { "00", "0" }, { "1.5", "1.5" }, { "1e3", "1000.0" },
    { ".5", "0.5" }, { "True", "true" }, { "False", "false" }, { "None", "null" },
    { "'3.0'", "\"3.0\"" }, { "\"a b\"", "\"a b\"" }, { "'a' \"b\"", "\"ab\"" },
    { "'\\x41\\n'", "\"A\\n\"" }, { "[1, 'x', [True]]", "[1,\"x\",[true]]" }, { "(1, 2)", "[1,2]" },
    { "(1)", "1" }, { "()", "[]" }, { "{'a': 1, 2: 'b'}", "{\"a\":1,\"2\":\"b\"}" }, { " 5 ", "5" },
    { "u'x'", "\"x\"" }, { "r'\\d'", "\"\\\\d\"" },
  };
  static const char *const not_literal[] = {
    "true", "yes", "0777", "1.2.3", "3.0.1", "/opt/x", "a==1", "x y", "{1, 2}", "b'x'", "1+2j",
    "'unterminated", "[1, 2", "", "hub01", "1_", "inf", "99999999999999999999999", "'''x'''",
    "jupyterhub; rm -rf /",
  };
  size_t i;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    json_t *v = hf__pylit(cases[i].in), *w = json_loads(cases[i].json, JSON_DECODE_ANY, NULL);
    char *s = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
    CHECK(v != NULL && w != NULL && json_equal(v, w) && json_typeof(v) == json_typeof(w),
          "pylit(%s) = %s, expected %s", cases[i].in, s ? s : "(not a literal)", cases[i].json);
    free(s);
    json_decref(v);
    json_decref(w);
  }
  for (i = 0; i < sizeof not_literal / sizeof not_literal[0]; i++) {
    json_t *v = hf__pylit(not_literal[i]);
    CHECK(v == NULL, "pylit(%s) should stay text", not_literal[i]);
    json_decref(v);
  }
}

static struct hf_inventory *load_str(const char *text) {
  struct hf_inventory *inv = NULL;
  struct hf_inv_error err;
  char msg[1400];
  if (hf_inv_load_buffer("mem.ini", text, strlen(text), &inv, &err) != 0) {
    hf_inv_error_format(&err, msg, sizeof msg);
    CHECK(0, "load_str refused: %s", msg);
  }
  return inv;
}

static void test_redact(void) {
  char b[256];
  static const char *const cases[][2] = {
    { "postgresql://hub:s3cret@db.example.org:5432/hub", "postgresql://hub:***@db.example.org:5432/hub" },
    { "postgresql+psycopg2://hub@db/hub", "postgresql+psycopg2://hub@db/hub" },
    { "postgresql://hub:p@ss@db/hub", "postgresql://hub:***@db/hub" },
    { "postgresql://hub:x@db/hub?sslmode=require&password=abc", "postgresql://hub:***@db/hub?sslmode=require&password=***" },
    { "postgresql://db/hub?password=abc#f", "postgresql://db/hub?password=***#f" },
    { "sqlite:////srv/jupyterhub.sqlite", "sqlite:////srv/jupyterhub.sqlite" },
    { "mysql://u:p@h/d", "mysql://u:***@h/d" },
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    hf_inv_redact_url(cases[i][0], b, sizeof b);
    CHECK(!strcmp(b, cases[i][1]), "redact %s: got %s", cases[i][0], b);
  }
  hf_inv_redact_url("postgresql://hub:secretsecret@db/hub", b, 20);   /* truncated, never the password */
  CHECK(strlen(b) == 19 && !strstr(b, "secret"), "truncated: %s", b);
  /* the inventory as JSON (hubfleet inventory check --json) keeps the URL, not its password */
  const char *text = "h1 hubfleet_db=postgresql://hub:s3cretpw@db/hub\n";
  struct hf_inventory *inv = NULL;
  struct hf_inv_error err;
  CHECK(hf_inv_load_buffer("pw.ini", text, strlen(text), &inv, &err) == 0, "%s", err.message);
  json_t *j = hf_inv_to_json(inv);
  char *dump = j ? json_dumps(j, 0) : NULL;
  CHECK(dump && !strstr(dump, "s3cretpw") && strstr(dump, "postgresql://hub:***@db/hub"), "%s", dump ? dump : "null");
  CHECK(inv && strstr(json_string_value(json_object_get(inv->hosts[0].hub, "db")), "s3cretpw"),
        "the agent still gets the real URL");
  free(dump);
  json_decref(j);
  hf_inv_free(inv);
}

static void test_match(void) {
  struct hf_inventory *inv = load_str(
    "solo\n[canary]\nhub01\n[web]\nhub[01:04]\n[db]\ndb1\nhub04\n[prod:children]\nweb\ndb\n");
  static const struct { const char *pat, *hosts; } cases[] = {
    { "all", "solo hub01 hub02 hub03 hub04 db1" },
    { "*", "solo hub01 hub02 hub03 hub04 db1" },
    { "web", "hub01 hub02 hub03 hub04" },
    { "prod", "hub01 hub02 hub03 hub04 db1" },
    { "hub0[12]", "hub01 hub02" },
    { "hub0*:!canary", "hub02 hub03 hub04" },
    { "web,db", "hub01 hub02 hub03 hub04 db1" },
    { "web:&db", "hub04" },
    { "!web", "solo db1" },
    { "ungrouped", "solo" },
    { "db1", "db1" },
    { "nosuch", "" },
    { "canary:db1", "hub01 db1" },
    { "~^hub0[34]$", "hub03 hub04" },
    { "~^d", "hub04 db1" },
    { "web, !hub01 ,&prod", "hub02 hub03 hub04" },
    { "all:!prod", "solo" },
  };
  size_t i, k;
  if (inv == NULL) return;
  for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    char got[256] = "";
    for (k = 0; k < inv->nhosts; k++)
      if (hf_inv_match(&inv->hosts[k], cases[i].pat)) {
        if (got[0]) strcat(got, " ");
        strcat(got, inv->hosts[k].name);
      }
    CHECK(strcmp(got, cases[i].hosts) == 0, "pattern '%s' matched '%s', expected '%s'", cases[i].pat, got, cases[i].hosts);
  }
  CHECK(hf_inv_find(inv, "hub03") == &inv->hosts[3], "find hub03");
  CHECK(hf_inv_find(inv, "hub99") == NULL, "find absent");
  CHECK(hf_inv_find(inv, "HUB03") == NULL && hf_inv_find(inv, "") == NULL, "find is exact");
  CHECK(inv->hosts[1].canary && !inv->hosts[2].canary, "canary flag");
  CHECK(inv->hosts[4].ngroups == 3 && !strcmp(inv->hosts[4].groups[0], "db") &&
        !strcmp(inv->hosts[4].groups[1], "prod") && !strcmp(inv->hosts[4].groups[2], "web"),
        "hub04 groups sorted and inherited");
  hf_inv_free(inv);
}

/* hf_inv_find through the index: every one of 20,000 hosts, and not others. */
static void test_find_many(void) {
  struct hf_inventory *inv = load_str("[big]\nh[00000:19999].example.org\n");
  if (!inv) return;
  size_t found = 0;
  for (size_t i = 0; i < inv->nhosts; i++) found += hf_inv_find(inv, inv->hosts[i].name) == &inv->hosts[i];
  CHECK(inv->nhosts == 20000 && found == 20000, "find each of 20000 hosts (%zu found)", found);
  CHECK(hf_inv_find(inv, "h20000.example.org") == NULL, "find absent among 20000");
  hf_inv_free(inv);
}

static void test_api(void) {
  struct hf_inventory *inv = (struct hf_inventory *)&failures;
  struct hf_inv_error err;
  char buf[64];
  int r;
  hf_inv_free(NULL);
  r = hf_inv_load("/nonexistent/inventory.ini", &inv, &err);
  CHECK(r == HF_EIO && inv == NULL, "missing file: %d", r);
  CHECK(strstr(err.message, "No such file") != NULL && !strcmp(err.file, "/nonexistent/inventory.ini"), "%s", err.message);
  /* Nothing is half-loaded: an error on the last line drops everything. */
  r = hf_inv_load_buffer("x.ini", "a\nb\nc ansible_port=0\n", strlen("a\nb\nc ansible_port=0\n"), &inv, &err);
  CHECK(r == HF_EINVENTORY && inv == NULL && err.line == 3, "late error: %d line %d", r, err.line);
  /* Truncating format keeps a terminated string. */
  hf_inv_error_format(&err, buf, sizeof buf);
  CHECK(strlen(buf) == sizeof buf - 1 && !strncmp(buf, "x.ini:3: ", 9), "format: %s", buf);
  r = hf_inv_load_buffer("nul.ini", "a\0b\n", 4, &inv, &err);
  CHECK(r == HF_EINVENTORY && inv == NULL, "NUL byte accepted");
  /* A big range is fine; a huge one is an error, not a minute of work. */
  inv = load_str("[big]\nh[0000:4999].example.org\n");
  CHECK(inv && inv->nhosts == 5000 && !strcmp(inv->hosts[4999].name, "h4999.example.org"), "5000-host range");
  hf_inv_free(inv);
  r = hf_inv_load_buffer("huge.ini", "h[0:9999999]\n", 13, &inv, &err);
  CHECK(r == HF_EINVENTORY && strstr(err.message, "more than") != NULL, "huge range: %s", err.message);
  /* Hostile nesting is an error, not a stack overflow (INI and JSON). */
  {
    size_t cap = 3000 * 40, n = 0;
    char *ini = malloc(cap), *js = malloc(cap);
    int i;
    CHECK(ini && js, "malloc");
    if (ini && js) {
      n = (size_t)snprintf(ini, cap, "h0\n");
      for (i = 0; i < 3000; i++) n += (size_t)snprintf(ini + n, cap - n, "[g%d:children]\ng%d\n", i, i + 1);
      snprintf(ini + n, cap - n, "[g3000]\nh1\n");
      r = hf_inv_load_buffer("deep.ini", ini, strlen(ini), &inv, &err);
      CHECK(r == HF_EINVENTORY && strstr(err.message, "nested more than") != NULL, "deep INI: %s", err.message);
      n = (size_t)snprintf(js, cap, "{");
      for (i = 0; i < 3000; i++) n += (size_t)snprintf(js + n, cap - n, "\"g%d\":{\"children\":[\"g%d\"]},", i, i + 1);
      snprintf(js + n, cap - n, "\"g3000\":{\"hosts\":[\"h1\"]}}");
      r = hf_inv_load_buffer("deep.json", js, strlen(js), &inv, &err);
      CHECK(r == HF_EINVENTORY && strstr(err.message, "nested more than") != NULL, "deep JSON: %s", err.message);
    }
    free(ini);
    free(js);
  }
  r = hf_inv_load_buffer("ranges.ini", "h[1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1]\n",
                         strlen("h[1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1][1:1]\n"), &inv, &err);
  CHECK(r == HF_EINVENTORY && strstr(err.message, "17 ranges") != NULL, "many ranges: %s", err.message);
}

/* Ranges and group variables multiply: a few bytes must not ask for gigabytes. */
static void test_size_limits(void) {
  struct hf_inventory *inv = NULL;
  struct hf_inv_error err;
  const char *two = "[a]\nh[00000:59999]\n[b]\nh[60000:99999]\nx[0:1]\n";
  int r = hf_inv_load_buffer("two.ini", two, strlen(two), &inv, &err);
  CHECK(r == HF_EINVENTORY && inv == NULL && err.line == 5 && strstr(err.message, "more than 100000 hosts"),
        "100,002 hosts from three patterns: %d line %d: %s", r, err.line, err.message);
  /* 1,000 hosts, each in "a" and "all" and with 1,999 variables from
   * [all:vars]: 2,001,000 items. */
  size_t cap = 1999 * 16 + 64, big = 200000;
  char *text = malloc(cap > big + 64 ? cap : big + 64);
  CHECK(text != NULL, "malloc");
  if (!text) return;
  size_t n = (size_t)sprintf(text, "[a]\nh[000:999]\n[all:vars]\n");
  for (int i = 0; i < 1999; i++) n += (size_t)snprintf(text + n, cap - n, "v%d=%d\n", i, i);
  r = hf_inv_load_buffer("vars.ini", text, strlen(text), &inv, &err);
  CHECK(r == HF_EINVENTORY && inv == NULL && strstr(err.message, "more than 2000000 variables and group memberships") &&
        strstr(err.message, "(1000 hosts reached it, of 1000)"), "2,001,000 host items: %d: %s", r, err.message);
  /* 10,000 hosts under a chain of 200 groups: 2.02 million memberships. */
  n = (size_t)sprintf(text, "[g0]\nh[0000:9999]\n");
  for (int i = 1; i <= 200; i++) n += (size_t)snprintf(text + n, cap - n, "[g%d:children]\ng%d\n", i, i - 1);
  r = hf_inv_load_buffer("chain.ini", text, strlen(text), &inv, &err);
  CHECK(r == HF_EINVENTORY && inv == NULL && strstr(err.message, "more than 2000000 variables and group memberships"),
        "2.02 million memberships: %d: %s", r, err.message);
  /* One inline value is parsed once and shared by every host of its pattern:
   * 10,000 hosts with a 200 kB value cost 200 kB of it, not 2 GB. */
  n = (size_t)sprintf(text, "h[0000:9999] note=");
  memset(text + n, 'x', big);
  strcpy(text + n + big, "\n");
  inv = load_str(text);
  CHECK(inv && inv->nhosts == 10000, "10,000 hosts with a 200 kB value");
  if (inv) {
    json_t *a = json_object_get(inv->hosts[0].vars, "note"), *b = json_object_get(inv->hosts[9999].vars, "note");
    CHECK(a && a == b && json_string_length(a) == big, "the value is one, shared");
  }
  hf_inv_free(inv);
  free(text);
}

int main(int argc, char **argv) {
  char dir[1024];
  const char *src = argc > 1 ? argv[1] : ".";
  test_pylit();
  test_match();
  test_redact();
  test_api();
  test_find_many();
  test_size_limits();
  snprintf(dir, sizeof dir, "%s/valid", src);
  run_valid(dir);
  snprintf(dir, sizeof dir, "%s/invalid", src);
  run_invalid(dir);
  printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
