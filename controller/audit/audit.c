/* audit.c: folds per-host facts into version groups, drift and hub/user
 * mismatch findings, and prints them. Pure code (no I/O but the FILE given). */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "hf_controller.h"
#include "hf_audit.h"

long hf_audit_major(const char *v) {
  if (!v || !isdigit((unsigned char)*v)) return -1;
  return strtol(v, NULL, 10);
}

/* jansson's setters and iterators take non-const pointers even for reads. */
static json_t *unconst(const json_t *j) {
  union { const json_t *c; json_t *m; } u = { .c = j };
  return u.m;
}

static const char *str_or(const json_t *v, const char *dflt) {
  const char *s = json_string_value(v);
  return s ? s : dflt;
}

/* Adds s to the sorted unique string array arr. */
static void add_sorted_unique(json_t *arr, const char *s) {
  size_t i, n = json_array_size(arr);
  for (i = 0; i < n; i++) {
    int c = strcmp(json_string_value(json_array_get(arr, i)), s);
    if (c == 0) return;
    if (c > 0) break;
  }
  json_array_insert_new(arr, i, json_string(s));
}

/* The hub version, user versions (sorted, unique) and alembic revision. */
static void host_versions(const json_t *facts, const char **hub, json_t *users, const char **alembic) {
  *hub = "none";
  const json_t *envs = json_object_get(facts, "envs");
  size_t i;
  const json_t *env;
  json_array_foreach(envs, i, env) {
    const char *role = str_or(json_object_get(env, "role"), "");
    const char *v = str_or(json_object_get(env, "jupyterhub"), "none");
    if (!strcmp(role, "hub")) *hub = v;
    else add_sorted_unique(users, v);
  }
  const json_t *db = json_object_get(facts, "db");
  *alembic = str_or(json_object_get(db, "alembic_revision"), "-");
}

static char *join(const json_t *arr, const char *sep) {
  size_t n = 1, i;
  const json_t *v;
  json_array_foreach(arr, i, v) n += strlen(json_string_value(v)) + strlen(sep);
  char *out = malloc(n);
  if (!out) return NULL;
  out[0] = 0;
  json_array_foreach(arr, i, v) {
    if (i) strcat(out, sep);
    strcat(out, json_string_value(v));
  }
  return out;
}

json_t *hf_audit_fold(const json_t *hosts, const char *expect) {
  json_t *doc = json_object();
  json_t *groups = json_array(), *versions = json_object(), *mismatch = json_array();
  json_t *failed = json_array(), *differ = json_array();
  json_t *index = json_object();   /* group key -> position in groups */
  size_t audited = 0, i;
  const json_t *h;
  if (!doc || !groups || !versions || !mismatch || !failed || !differ || !index) goto oom;

  json_array_foreach(hosts, i, h) {
    const char *name = str_or(json_object_get(h, "name"), "?");
    if (!json_is_true(json_object_get(h, "ok"))) {
      const json_t *err = json_object_get(h, "error");
      json_array_append_new(failed, json_pack("{s:s, s:s, s:s}", "host", name,
                            "code", str_or(json_object_get(err, "code"), "unknown"),
                            "message", str_or(json_object_get(err, "message"), "")));
      json_array_append_new(differ, json_string(name));
      continue;
    }
    audited++;
    const char *hub, *alembic;
    json_t *users = json_array();
    host_versions(json_object_get(h, "facts"), &hub, users, &alembic);

    /* Versions present, counted per host (a host counts once per version). */
    json_t *seen = json_array();
    add_sorted_unique(seen, hub);
    size_t k;
    const json_t *u;
    json_array_foreach(users, k, u) add_sorted_unique(seen, json_string_value(u));
    bool off = false;
    json_array_foreach(seen, k, u) {
      const char *v = json_string_value(u);
      if (strcmp(v, "none")) {
        json_int_t c = json_integer_value(json_object_get(versions, v));
        json_object_set_new(versions, v, json_integer(c + 1));
      }
      if (expect && strcmp(v, expect)) off = true;
    }
    json_decref(seen);
    if (off) json_array_append_new(differ, json_string(name));

    /* JupyterHub warns when hub and single-user majors differ. */
    bool mis = false;
    json_array_foreach(users, k, u)
      if (hf_audit_major(json_string_value(u)) != hf_audit_major(hub)) mis = true;
    if (mis)
      json_array_append_new(mismatch, json_pack("{s:s, s:s, s:O}", "host", name, "hub", hub, "users", users));

    char *ujoined = join(users, ",");
    if (!ujoined) { json_decref(users); goto oom; }
    size_t klen = strlen(hub) + strlen(ujoined) + strlen(alembic) + 3;
    char *key = malloc(klen);
    if (!key) { free(ujoined); json_decref(users); goto oom; }
    snprintf(key, klen, "%s|%s|%s", hub, ujoined, alembic);
    free(ujoined);
    json_t *pos = json_object_get(index, key);
    json_t *g;
    if (pos) {
      g = json_array_get(groups, (size_t)json_integer_value(pos));
    } else {
      g = json_pack("{s:s, s:O, s:s, s:i, s:[]}", "hub", hub, "users", users, "alembic", alembic,
                    "count", 0, "hosts");
      json_object_set_new(index, key, json_integer((json_int_t)json_array_size(groups)));
      json_array_append_new(groups, g);
    }
    free(key);
    json_decref(users);
    if (!g) goto oom;
    json_object_set_new(g, "count", json_integer(json_integer_value(json_object_get(g, "count")) + 1));
    json_array_append_new(json_object_get(g, "hosts"), json_string(name));
  }

  /* Largest group first; ties keep inventory order (insertion sort, stable). */
  size_t n = json_array_size(groups);
  for (size_t a = 1; a < n; a++) {
    json_t *g = json_incref(json_array_get(groups, a));
    json_int_t c = json_integer_value(json_object_get(g, "count"));
    size_t b = a;
    while (b > 0 && json_integer_value(json_object_get(json_array_get(groups, b - 1), "count")) < c) b--;
    if (b != a) { json_array_remove(groups, a); json_array_insert(groups, b, g); }
    json_decref(g);
  }

  json_object_set_new(doc, "summary", json_pack("{s:I, s:I, s:I, s:I}",
      "total", (json_int_t)json_array_size(hosts), "audited", (json_int_t)audited,
      "failed", (json_int_t)json_array_size(failed), "differ", (json_int_t)json_array_size(differ)));
  json_object_set_new(doc, "groups", groups);
  json_object_set_new(doc, "versions", versions);
  json_object_set_new(doc, "drift", json_boolean(json_object_size(versions) > 1));
  json_object_set_new(doc, "mismatch", mismatch);
  json_object_set_new(doc, "failed", failed);
  json_object_set_new(doc, "expect", expect ? json_string(expect) : json_null());
  json_object_set_new(doc, "differ", expect ? differ : (json_decref(differ), json_array()));
  json_object_set(doc, "hosts", unconst(hosts));
  json_decref(index);
  return doc;
oom:
  json_decref(doc); json_decref(groups); json_decref(versions); json_decref(mismatch);
  json_decref(failed); json_decref(differ); json_decref(index);
  return NULL;
}

/* Prints s with anything but printable ASCII replaced, so names and remote
 * messages cannot move the cursor or fake lines. */
static void put_clean(FILE *f, const char *s, int width) {
  int n = 0;
  for (; s && *s; s++, n++) fputc(((unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f) ? *s : '?', f);
  for (; n < width; n++) fputc(' ', f);
}

void hf_audit_print(FILE *f, const json_t *doc, int max_names) {
  const json_t *sum = json_object_get(doc, "summary");
  fprintf(f, "%lld hosts: %lld audited, %lld failed\n",
          (long long)json_integer_value(json_object_get(sum, "total")),
          (long long)json_integer_value(json_object_get(sum, "audited")),
          (long long)json_integer_value(json_object_get(sum, "failed")));
  const json_t *groups = json_object_get(doc, "groups");
  if (json_array_size(groups)) {
    fprintf(f, "\n%-12s %-20s %-14s %6s  %s\n", "HUB", "USER ENVS", "ALEMBIC", "HOSTS", "EXAMPLES");
    size_t i;
    const json_t *g;
    json_array_foreach(groups, i, g) {
      char *users = join(json_object_get(g, "users"), ",");
      put_clean(f, json_string_value(json_object_get(g, "hub")), 12);
      fputc(' ', f);
      put_clean(f, users && *users ? users : "-", 20);
      fputc(' ', f);
      put_clean(f, json_string_value(json_object_get(g, "alembic")), 14);
      fprintf(f, " %6lld  ", (long long)json_integer_value(json_object_get(g, "count")));
      free(users);
      const json_t *names = json_object_get(g, "hosts");
      size_t k, nn = json_array_size(names);
      for (k = 0; k < nn && (int)k < max_names; k++) {
        if (k) fputs(", ", f);
        put_clean(f, json_string_value(json_array_get(names, k)), 0);
      }
      if (nn > k) fprintf(f, ", ... (+%zu)", nn - k);
      fputc('\n', f);
    }
  }
  const json_t *versions = json_object_get(doc, "versions");
  if (json_is_true(json_object_get(doc, "drift"))) {
    fprintf(f, "\nDRIFT: %zu jupyterhub versions in the fleet:", json_object_size(versions));
    const char *v;
    const json_t *c;
    json_object_foreach(unconst(versions), v, c) {
      fputc(' ', f);
      put_clean(f, v, 0);
      fprintf(f, " (%lld hosts)", (long long)json_integer_value(c));
    }
    fputc('\n', f);
  }
  const json_t *mis = json_object_get(doc, "mismatch");
  if (json_array_size(mis)) {
    fprintf(f, "\nMISMATCH: hub and single-user major versions differ on %zu hosts "
               "(JupyterHub warns about this; upgrade them together):\n", json_array_size(mis));
    size_t i;
    const json_t *m;
    json_array_foreach(mis, i, m) {
      if ((int)i >= max_names * 2) { fprintf(f, "  ... (+%zu)\n", json_array_size(mis) - i); break; }
      char *users = join(json_object_get(m, "users"), ",");
      fputs("  ", f);
      put_clean(f, json_string_value(json_object_get(m, "host")), 0);
      fputs(": hub ", f);
      put_clean(f, json_string_value(json_object_get(m, "hub")), 0);
      fputs(", user envs ", f);
      put_clean(f, users, 0);
      fputc('\n', f);
      free(users);
    }
  }
  const char *expect = json_string_value(json_object_get(doc, "expect"));
  const json_t *differ = json_object_get(doc, "differ");
  const json_t *failed = json_object_get(doc, "failed");
  if (expect) {
    size_t nd = json_array_size(differ) - json_array_size(failed);
    if (nd) {
      fprintf(f, "\nEXPECT %s: %zu audited hosts run something else\n", expect, nd);
    } else {
      fprintf(f, "\nEXPECT %s: every audited host runs it\n", expect);
    }
  }
  if (json_array_size(failed)) {
    fprintf(f, "\nFAILED (%zu):\n", json_array_size(failed));
    size_t i;
    const json_t *x;
    json_array_foreach(failed, i, x) {
      fputs("  ", f);
      put_clean(f, json_string_value(json_object_get(x, "code")), 12);
      fputc(' ', f);
      put_clean(f, json_string_value(json_object_get(x, "message")), 0);
      fputc('\n', f);
    }
  }
}

int hf_audit_exit_code(const json_t *doc) {
  if (json_array_size(json_object_get(doc, "failed"))) return HF_EXIT_FAIL;
  if (json_array_size(json_object_get(doc, "differ"))) return HF_EXIT_FAIL;
  return HF_EXIT_OK;
}
