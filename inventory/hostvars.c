/* hostvars.c: a host's merged variables into struct hf_host and the validated hub description. */
/* Every value that reaches a remote command is checked here, and the error
 * is placed where the variable was set. */
#include <ctype.h>
#include <pwd.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "hf_proto.h"
#include "inv_int.h"

/* Every hubfleet variable; anything else named hubfleet_* is a typo. */
static const char *const known_vars[] = {
  "hubfleet_known_hosts", "hubfleet_jump", "hubfleet_hub_env", "hubfleet_user_envs",
  "hubfleet_config", "hubfleet_db", "hubfleet_db_dump", "hubfleet_service",
  "hubfleet_supervisor_config", "hubfleet_start_command", "hubfleet_stop_command",
  "hubfleet_health_url", "hubfleet_hub_log", "hubfleet_installer", "hubfleet_index_url",
  "hubfleet_find_links", "hubfleet_extra_packages", "hubfleet_report_packages",
  "hubfleet_backup_dir", "hubfleet_backup_homes", "hubfleet_state_dir", "hubfleet_become",
  NULL,
};

#define DEF_HUB_ENV    "/opt/jupyterhub"
#define DEF_CONFIG     "/etc/jupyterhub/jupyterhub_config.py"
#define DEF_DB_FILE    "jupyterhub.sqlite"
#define DEF_SERVICE    "systemd:jupyterhub"
#define DEF_HEALTH_URL "http://127.0.0.1:8000"

bool hf__var_known(const char *name) {
  for (const char *const *k = known_vars; *k; k++)
    if (!strcmp(*k, name)) return true;
  return false;
}

static size_t edit_distance(const char *a, const char *b) {
  size_t la = strlen(a), lb = strlen(b), i, j, prev[64], cur[64];
  if (la >= 63 || lb >= 63) return 99;
  for (j = 0; j <= lb; j++) prev[j] = j;
  for (i = 1; i <= la; i++) {
    cur[0] = i;
    for (j = 1; j <= lb; j++) {
      size_t d = prev[j - 1] + (a[i - 1] != b[j - 1]);
      if (prev[j] + 1 < d) d = prev[j] + 1;
      if (cur[j - 1] + 1 < d) d = cur[j - 1] + 1;
      cur[j] = d;
    }
    memcpy(prev, cur, sizeof cur);
  }
  return prev[lb];
}

const char *hf__var_suggest(const char *name) {
  const char *best = NULL;
  size_t bd = 4, d;
  for (const char *const *k = known_vars; *k; k++)
    if ((d = edit_distance(name, *k)) < bd) { bd = d; best = *k; }
  return best;
}

/* ---- per-host context -------------------------------------------------- */

struct ctx {
  struct hf__build *b;
  struct hf_host   *h;
  const json_t     *vars;
  const json_t     *origins;
};

/* Fails at the place where var was set (or at the host itself). */
__attribute__((format(printf, 3, 4)))
static int fail(const struct ctx *c, const char *var, const char *fmt, ...) {
  char msg[400];
  va_list ap;
  json_t *o = var ? json_object_get(c->origins, var) : NULL;
  int line = 0;
  const char *path = NULL;
  size_t hi;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  char hvpath[512];
  if (json_is_integer(o)) line = (int)json_integer_value(o);
  else if (json_is_string(o)) path = json_string_value(o);
  else if (o == NULL && var && c->b->json && json_object_get(c->vars, var)) {
    char hostpath[512];
    hf__jpath(hostpath, "_meta.hostvars", c->h->name);
    hf__jpath(hvpath, hostpath, var);
    path = hvpath;
  } else {
    json_t *ix = json_object_get(c->b->hostidx, c->h->name);
    hi = (size_t)json_integer_value(ix);
    if (ix != NULL && hi < c->b->nhosts) {
      line = c->b->hosts[hi].line;
      path = c->b->json ? c->b->hosts[hi].where : NULL;
    }
  }
  if (var)
    return hf__inv_fail(c->b, line, path, "host %s: %s: %s", c->h->name, var, msg);
  return hf__inv_fail(c->b, line, path, "host %s: %s", c->h->name, msg);
}

/* Short printable rendering of a value for messages. */
static const char *show(const json_t *v, char *buf, size_t len) {
  char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
  if (s == NULL) { snprintf(buf, len, "(unprintable)"); return buf; }
  if (strlen(s) > 80) snprintf(buf, len, "%.77s...", s);
  else snprintf(buf, len, "%s", s);
  free(s);
  return buf;
}

/* A variable's value; JSON null (Python None) counts as not set, so
 * `hubfleet_jump=None` on a host undoes a group's jump host. */
static const json_t *get(const struct ctx *c, const char *name) {
  const json_t *v = json_object_get(c->vars, name);
  return json_is_null(v) ? NULL : v;
}

/* The variable behind each hub key, to place protocol errors. */
static const char *const hub_var[][2] = {
  { "hub_env", "hubfleet_hub_env" }, { "user_envs", "hubfleet_user_envs" },
  { "config", "hubfleet_config" }, { "db", "hubfleet_db" }, { "db_dump", "hubfleet_db_dump" },
  { "service", "hubfleet_service" }, { "supervisor_config", "hubfleet_supervisor_config" },
  { "start", "hubfleet_start_command" }, { "stop", "hubfleet_stop_command" },
  { "health_url", "hubfleet_health_url" }, { "hub_log", "hubfleet_hub_log" },
  { "installer", "hubfleet_installer" }, { "index_url", "hubfleet_index_url" },
  { "find_links", "hubfleet_find_links" }, { "extra_packages", "hubfleet_extra_packages" },
  { "report_packages", "hubfleet_report_packages" }, { "backup_dir", "hubfleet_backup_dir" },
  { "backup_homes", "hubfleet_backup_homes" }, { "state_dir", "hubfleet_state_dir" },
  { "become", "hubfleet_become" },
};

/* "hub.KEY...: message" -> the variable that set KEY, when it was set. */
static const char *var_of_hub_error(const struct ctx *c, const char *err) {
  size_t i, n;
  if (strncmp(err, "hub.", 4) != 0) return NULL;
  err += 4;
  n = strcspn(err, ".[: ");
  for (i = 0; i < sizeof hub_var / sizeof hub_var[0]; i++)
    if (strlen(hub_var[i][0]) == n && !strncmp(err, hub_var[i][0], n))
      return get(c, hub_var[i][1]) ? hub_var[i][1] : NULL;
  return NULL;
}

/* A string variable; integers are accepted as their decimal text (INI turns
 * ansible_user=1000 into an int). *out is borrowed from vars or tmp. NULL
 * when absent. */
static int get_str(const struct ctx *c, const char *name, const char **out, char *tmp, size_t tlen) {
  const json_t *v = get(c, name);
  char g[100];
  *out = NULL;
  if (v == NULL) return 0;
  if (json_is_string(v)) {
    if (strlen(json_string_value(v)) != json_string_length(v))
      return fail(c, name, "expected text without NUL bytes");
    *out = json_string_value(v);
    return 0;
  }
  if (json_is_integer(v)) {
    snprintf(tmp, tlen, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    *out = tmp;
    return 0;
  }
  return fail(c, name, "expected a string, got %s", show(v, g, sizeof g));
}

static int has_ctl(const char *s) {
  for (; *s; s++)
    if ((unsigned char)*s < 0x20 || *s == 0x7f) return 1;
  return 0;
}

static int valid_hostname(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 253 || s[0] == '-' || s[0] == '.') return 0;
  for (; *s; s++)
    if (!(isalnum((unsigned char)*s) || *s == '.' || *s == '-' || *s == '_' || *s == ':' || *s == '%'))
      return 0;
  return 1;
}

static int valid_user(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 64 || s[0] == '-') return 0;
  for (; *s; s++)
    if (!(isalnum((unsigned char)*s) || *s == '.' || *s == '-' || *s == '_' || *s == '@' || *s == '$'))
      return 0;
  return 1;
}

static int dup_to(const struct ctx *c, char **dst, const char *s) {
  if (s == NULL) { *dst = NULL; return 0; }
  if ((*dst = strdup(s)) == NULL) return hf__inv_nomem(c->b);
  return 0;
}

static int set_hub(const struct ctx *c, json_t *hub, const char *key, json_t *v) {
  if (v == NULL || json_object_set_new(hub, key, v) != 0) return hf__inv_nomem(c->b);
  return 0;
}

/* A local path (key file, known_hosts): read on this machine, not sent.
 * "~" and "~user" are expanded here, as Ansible and ssh do, because libssh's
 * key and known_hosts calls take paths literally. */
static int local_path(const struct ctx *c, const char *name, char **dst) {
  const char *s, *home = NULL, *rest;
  char tmp[32], user[256];
  int r;
  if ((r = get_str(c, name, &s, tmp, sizeof tmp)) != 0) return r;
  *dst = NULL;
  if (s == NULL) return 0;
  if (*s == '\0' || has_ctl(s) || strlen(s) > 4096)
    return fail(c, name, "expected a file path on this machine (non-empty, no control characters)");
  if (*s != '~') return dup_to(c, dst, s);
  rest = strchr(s, '/');
  if (rest == NULL) rest = s + strlen(s);
  if (rest == s + 1) {
    struct passwd *pw;
    home = getenv("HOME");
    if ((home == NULL || *home == '\0') && (pw = getpwuid(getuid())) != NULL) home = pw->pw_dir;
  } else if ((size_t)(rest - s - 1) < sizeof user) {
    struct passwd *pw;
    memcpy(user, s + 1, (size_t)(rest - s - 1));
    user[rest - s - 1] = '\0';
    if ((pw = getpwnam(user)) != NULL) home = pw->pw_dir;
  }
  if (home == NULL || *home == '\0')
    return fail(c, name, "cannot expand '%.*s': no such user or no home directory", (int)(rest - s), s);
  if ((*dst = malloc(strlen(home) + strlen(rest) + 1)) == NULL) return hf__inv_nomem(c->b);
  strcpy(*dst, home);
  strcat(*dst, rest);
  return 0;
}

static int abspath_var(const struct ctx *c, json_t *hub, const char *name, const char *key,
                       const char *def) {
  const char *s;
  char tmp[32], g[100];
  int r;
  if ((r = get_str(c, name, &s, tmp, sizeof tmp)) != 0) return r;
  if (s == NULL) s = def;
  if (s == NULL) return 0;
  if (!hf_valid_abspath(s))
    return fail(c, name, "expected an absolute path without '.' or '..' parts or control characters, got %s",
                show(get(c, name), g, sizeof g));
  return set_hub(c, hub, key, json_string(s));
}

/* A list: a JSON/Python list of strings, or one string split on sep
 * (',' for lists of names, ' ' for argv). New array or NULL when absent. */
static int list_var(const struct ctx *c, const char *name, char sep, json_t **out) {
  const json_t *v = get(c, name);
  json_t *a;
  char g[100];
  size_t i;
  *out = NULL;
  if (v == NULL) return 0;
  if ((a = json_array()) == NULL) return hf__inv_nomem(c->b);
  if (json_is_array(v)) {
    for (i = 0; i < json_array_size(v); i++) {
      json_t *e = json_array_get(v, i);
      if (!json_is_string(e) || json_string_length(e) == 0 ||
          strlen(json_string_value(e)) != json_string_length(e)) {
        json_decref(a);
        return fail(c, name, "item %zu: expected a non-empty string, got %s", i, show(e, g, sizeof g));
      }
      if (json_array_append(a, e) != 0) { json_decref(a); return hf__inv_nomem(c->b); }
    }
  } else if (json_is_string(v)) {
    const char *s = json_string_value(v), *p = s;
    while (*p) {
      const char *e;
      size_t n;
      while (*p == ' ' || *p == '\t') p++;
      e = p;
      while (*e && *e != sep && !(sep == ' ' && *e == '\t')) e++;
      n = (size_t)(e - p);
      while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t')) n--;
      if (n == 0 && sep != ' ') {
        json_decref(a);
        return fail(c, name, "empty item in %s: expected items separated by '%c'", show(v, g, sizeof g), sep);
      }
      if (n > 0 && json_array_append_new(a, json_stringn(p, n)) != 0) { json_decref(a); return hf__inv_nomem(c->b); }
      p = *e ? e + 1 : e;
    }
  } else {
    json_decref(a);
    return fail(c, name, "expected a list or a %s string, got %s",
                sep == ' ' ? "space-separated" : "comma-separated", show(v, g, sizeof g));
  }
  *out = a;
  return 0;
}

static int list_checked(const struct ctx *c, json_t *hub, const char *name, const char *key,
                        bool (*ok)(const char *), const char *what) {
  json_t *a;
  size_t i;
  char g[100];
  int r;
  if ((r = list_var(c, name, ',', &a)) != 0) return r;
  if (a == NULL) return 0;
  for (i = 0; i < json_array_size(a); i++) {
    const char *s = json_string_value(json_array_get(a, i));
    if (!ok(s)) {
      show(json_array_get(a, i), g, sizeof g);
      json_decref(a);
      return fail(c, name, "expected %s, got %s", what, g);
    }
  }
  return set_hub(c, hub, key, a);
}

static int argv_var(const struct ctx *c, json_t *hub, const char *name, const char *key) {
  json_t *a;
  size_t i;
  char g[100];
  int r;
  if ((r = list_var(c, name, ' ', &a)) != 0) return r;
  if (a == NULL) return 0;
  if (json_array_size(a) == 0) {
    json_decref(a);
    return fail(c, name, "expected a command: an absolute program path, then its arguments");
  }
  for (i = 0; i < json_array_size(a); i++) {
    const char *s = json_string_value(json_array_get(a, i));
    if (has_ctl(s) || strlen(s) > 4096 || (i == 0 && !hf_valid_abspath(s))) {
      show(json_array_get(a, i), g, sizeof g);
      json_decref(a);
      if (i == 0)
        return fail(c, name, "the program must be an absolute path (it runs without a shell), got %s", g);
      return fail(c, name, "argument %zu has control characters or is too long: %s", i, g);
    }
  }
  return set_hub(c, hub, key, a);
}

static int bool_var(const struct ctx *c, const char *name, bool def, bool *out) {
  const json_t *v = get(c, name);
  static const char *const yes[] = { "true", "yes", "1", "on", NULL };
  static const char *const no[] = { "false", "no", "0", "off", NULL };
  char g[100];
  *out = def;
  if (v == NULL) return 0;
  if (json_is_boolean(v)) { *out = json_is_true(v); return 0; }
  if (json_is_integer(v) && (json_integer_value(v) == 0 || json_integer_value(v) == 1)) {
    *out = json_integer_value(v) == 1;
    return 0;
  }
  if (json_is_string(v)) {
    for (int i = 0; yes[i]; i++) if (!strcasecmp(json_string_value(v), yes[i])) { *out = true; return 0; }
    for (int i = 0; no[i]; i++) if (!strcasecmp(json_string_value(v), no[i])) { *out = false; return 0; }
  }
  return fail(c, name, "expected a boolean (true/false, yes/no, 1/0), got %s", show(v, g, sizeof g));
}

static int port_value(const struct ctx *c, const char *name, const json_t *v, int *out) {
  char g[100];
  long long n = -1;
  if (json_is_integer(v)) n = json_integer_value(v);
  else if (json_is_string(v)) {
    const char *s = json_string_value(v);
    char *end;
    if (*s >= '0' && *s <= '9' && strlen(s) <= 6) {
      n = strtoll(s, &end, 10);
      if (*end != '\0') n = -1;
    }
  }
  if (n < 1 || n > 65535)
    return fail(c, name, "expected a port number 1-65535, got %s", show(v, g, sizeof g));
  *out = (int)n;
  return 0;
}

/* Ansible spells some connection variables two ways; the first wins. */
static const char *alias(const struct ctx *c, const char *a, const char *b) {
  return get(c, a) != NULL || get(c, b) == NULL ? a : b;
}

static int connection(const struct ctx *c) {
  struct hf_host *h = c->h;
  const char *s, *name;
  char tmp[32], g[100];
  int r;

  name = alias(c, "ansible_host", "ansible_ssh_host");
  if ((r = get_str(c, name, &s, tmp, sizeof tmp)) != 0) return r;
  if (s != NULL && !valid_hostname(s))
    return fail(c, name, "expected a host name or IP address, got %s", show(get(c, name), g, sizeof g));
  if (s == NULL && !valid_hostname(h->name))
    return fail(c, NULL, "the inventory name is not a usable host name or address: set ansible_host");
  if ((r = dup_to(c, &h->address, s ? s : h->name)) != 0) return r;

  name = alias(c, "ansible_port", "ansible_ssh_port");
  h->port = 22;
  if (get(c, name) && (r = port_value(c, name, get(c, name), &h->port)) != 0) return r;

  name = alias(c, "ansible_user", "ansible_ssh_user");
  if ((r = get_str(c, name, &s, tmp, sizeof tmp)) != 0) return r;
  if (s != NULL && !valid_user(s))
    return fail(c, name, "expected a user name ([A-Za-z0-9._@-], not starting with '-'), got %s",
                show(get(c, name), g, sizeof g));
  if ((r = dup_to(c, &h->user, s)) != 0) return r;

  if ((r = local_path(c, alias(c, "ansible_ssh_private_key_file", "ansible_private_key_file"), &h->key_file)) != 0)
    return r;
  if ((r = local_path(c, "hubfleet_known_hosts", &h->known_hosts)) != 0) return r;

  /* hubfleet_jump: [user@]host[:port] */
  if ((r = get_str(c, "hubfleet_jump", &s, tmp, sizeof tmp)) != 0) return r;
  if (s != NULL) {
    char buf[512], *host = buf, *at, *colon;
    int bad = strlen(s) >= sizeof buf;
    if (!bad) {
      snprintf(buf, sizeof buf, "%s", s);
      if ((at = strchr(buf, '@')) != NULL) {
        *at = '\0';
        host = at + 1;
        bad = !valid_user(buf) || strchr(buf, '@') != NULL;
      }
      if (!bad && (colon = strrchr(host, ':')) != NULL) {
        char *end;
        long p = strtol(colon + 1, &end, 10);
        *colon = '\0';
        bad = colon[1] == '\0' || *end != '\0' || p < 1 || p > 65535;
      }
      bad = bad || !valid_hostname(host) || strchr(host, ':') != NULL;
    }
    if (bad)
      return fail(c, "hubfleet_jump", "expected [user@]host[:port], got %s", show(get(c, "hubfleet_jump"), g, sizeof g));
    if ((r = dup_to(c, &h->jump, s)) != 0) return r;
  }
  return 0;
}

/* hubfleet_db as an error message may show it: a password never. */
static const char *shown_db(const struct ctx *c, char *buf, size_t len) {
  const char *v = json_string_value(get(c, "hubfleet_db"));
  char red[4096];
  if (!v) return show(get(c, "hubfleet_db"), buf, len);
  hf_inv_redact_url(v, red, sizeof red);
  json_t *j = json_string(red);
  show(j, buf, len);
  json_decref(j);
  return buf;
}

/* hubfleet_db: a path (relative to the config's directory) or a URL. */
static int db_var(const struct ctx *c, json_t *hub) {
  const char *s, *config = json_string_value(json_object_get(hub, "config"));
  char tmp[32], g[100], *url;
  size_t dl;
  int r;
  if ((r = get_str(c, "hubfleet_db", &s, tmp, sizeof tmp)) != 0) return r;
  if (s == NULL) s = DEF_DB_FILE;
  dl = (size_t)(strrchr(config, '/') - config);    /* config is a checked abspath */
  url = malloc(strlen(s) + dl + 16);
  if (url == NULL) return hf__inv_nomem(c->b);
  if (!strncmp(s, "sqlite:///", 10)) {
    if (s[10] == '/') strcpy(url, s);
    else sprintf(url, "sqlite:///%.*s/%s", (int)dl, config, s + 10);
  } else if (strstr(s, "://") != NULL) {
    strcpy(url, s);
  } else if (strcspn(s, ":/") < strlen(s) && s[strcspn(s, ":/")] == ':' && isalpha((unsigned char)s[0])) {
    /* "mysql:host/db" is a mistyped URL far more often than a file name. */
    free(url);
    return fail(c, "hubfleet_db", "looks like a URL without '//': expected sqlite:///PATH, mysql://... or "
                "postgresql://..., or a plain file path, got %s", shown_db(c, g, sizeof g));
  } else if (s[0] == '/') {
    sprintf(url, "sqlite:///%s", s);
  } else {
    sprintf(url, "sqlite:///%.*s/%s", (int)dl, config, s);
  }
  if (!strncmp(url, "sqlite:///", 10) ? !hf_valid_abspath(url + 10)
      : (strncmp(url, "mysql", 5) && strncmp(url, "postgres", 8))) {
    free(url);
    return fail(c, "hubfleet_db", "expected a SQLite file path (absolute, or relative to the config's "
                "directory), a sqlite:/// URL, or a mysql:// or postgresql:// URL, got %s",
                shown_db(c, g, sizeof g));
  }
  r = set_hub(c, hub, "db", json_string(url));
  free(url);
  return r;
}

static int service_var(const struct ctx *c, json_t *hub) {
  const char *s, *colon;
  char tmp[32], g[100];
  int r;
  if ((r = get_str(c, "hubfleet_service", &s, tmp, sizeof tmp)) != 0) return r;
  if (s == NULL) s = DEF_SERVICE;
  colon = strchr(s, ':');
  if (strcmp(s, "command") != 0 &&
      (colon == NULL || !((colon - s == 7 && !strncmp(s, "systemd", 7)) ||
                          (colon - s == 11 && !strncmp(s, "supervisord", 11)) ||
                          (colon - s == 6 && !strncmp(s, "docker", 6))) ||
       !hf_valid_service_name(colon + 1)))
    return fail(c, "hubfleet_service", "expected systemd:NAME, supervisord:NAME, docker:NAME (NAME from "
                "[A-Za-z0-9@._:-]) or command, got %s", show(get(c, "hubfleet_service"), g, sizeof g));
  if ((r = set_hub(c, hub, "service", json_string(s))) != 0) return r;
  if ((r = argv_var(c, hub, "hubfleet_start_command", "start")) != 0) return r;
  if ((r = argv_var(c, hub, "hubfleet_stop_command", "stop")) != 0) return r;
  if (!strcmp(s, "command")) {
    if (!json_object_get(hub, "start"))
      return fail(c, "hubfleet_service", "service 'command' needs hubfleet_start_command and hubfleet_stop_command");
    if (!json_object_get(hub, "stop"))
      return fail(c, "hubfleet_service", "service 'command' needs hubfleet_stop_command too");
  } else {
    const char *which = json_object_get(hub, "start") ? "hubfleet_start_command" :
                        json_object_get(hub, "stop") ? "hubfleet_stop_command" : NULL;
    if (which)
      return fail(c, which, "only used with hubfleet_service=command, but the service is %s", s);
  }
  return 0;
}

static bool valid_installer(const char *s) {
  return !strcmp(s, "pip") || !strcmp(s, "conda") || !strcmp(s, "auto");
}

static int string_checked(const struct ctx *c, json_t *hub, const char *name, const char *key,
                          const char *def, bool (*ok)(const char *), const char *what) {
  const char *s;
  char tmp[32], g[100];
  int r;
  if ((r = get_str(c, name, &s, tmp, sizeof tmp)) != 0) return r;
  if (s == NULL) s = def;
  if (s == NULL) return 0;
  if (!ok(s)) return fail(c, name, "expected %s, got %s", what, show(get(c, name), g, sizeof g));
  return set_hub(c, hub, key, json_string(s));
}

int hf__host_resolve(struct hf__build *b, struct hf_host *h, const json_t *vars, const json_t *origins) {
  struct ctx c = { b, h, vars, origins };
  char err[512];
  json_t *hub;
  bool become;
  int r;

  if ((r = connection(&c)) != 0) return r;
  if ((hub = json_object()) == NULL) return hf__inv_nomem(b);
  h->hub = hub;   /* freed with the host, also on error */
  if ((r = abspath_var(&c, hub, "hubfleet_hub_env", "hub_env", DEF_HUB_ENV)) != 0 ||
      (r = list_checked(&c, hub, "hubfleet_user_envs", "user_envs", hf_valid_abspath,
                        "absolute paths without '.' or '..' parts")) != 0)
    return r;
  if (json_object_get(hub, "user_envs") == NULL && (r = set_hub(&c, hub, "user_envs", json_array())) != 0)
    return r;
  if ((r = abspath_var(&c, hub, "hubfleet_config", "config", DEF_CONFIG)) != 0 ||
      (r = db_var(&c, hub)) != 0 ||
      (r = argv_var(&c, hub, "hubfleet_db_dump", "db_dump")) != 0 ||
      (r = service_var(&c, hub)) != 0 ||
      (r = abspath_var(&c, hub, "hubfleet_supervisor_config", "supervisor_config", NULL)) != 0 ||
      (r = string_checked(&c, hub, "hubfleet_health_url", "health_url", DEF_HEALTH_URL, hf_valid_url,
                          "an http:// or https:// URL (host, optional port and path)")) != 0 ||
      (r = abspath_var(&c, hub, "hubfleet_hub_log", "hub_log", NULL)) != 0 ||
      (r = string_checked(&c, hub, "hubfleet_installer", "installer", "auto", valid_installer,
                          "pip, conda or auto")) != 0 ||
      (r = string_checked(&c, hub, "hubfleet_index_url", "index_url", NULL, hf_valid_url,
                          "an http:// or https:// URL")) != 0 ||
      (r = abspath_var(&c, hub, "hubfleet_find_links", "find_links", NULL)) != 0 ||
      (r = list_checked(&c, hub, "hubfleet_extra_packages", "extra_packages", hf_valid_pkgpin,
                        "NAME==VERSION pins (PEP 508 name, PEP 440 version)")) != 0 ||
      (r = list_checked(&c, hub, "hubfleet_report_packages", "report_packages", hf_valid_pkgname,
                        "package names")) != 0 ||
      (r = abspath_var(&c, hub, "hubfleet_backup_dir", "backup_dir", NULL)) != 0 ||
      (r = list_checked(&c, hub, "hubfleet_backup_homes", "backup_homes", hf_valid_abspath,
                        "absolute paths without '.' or '..' parts")) != 0 ||
      (r = abspath_var(&c, hub, "hubfleet_state_dir", "state_dir", NULL)) != 0 ||
      (r = bool_var(&c, "hubfleet_become", false, &become)) != 0)
    return r;
  if ((r = set_hub(&c, hub, "become", json_boolean(become))) != 0) return r;
  /* The protocol has the last word, so the inventory never accepts a hub
   * description the agent would refuse. */
  if (hf_proto_hub_validate(hub, "hub", err, sizeof err) != 0)
    return fail(&c, var_of_hub_error(&c, err), "refused by the protocol's hub validator: %s", err);
  return 0;
}
