/* rules.c: version-aware preflight: JupyterHub's mechanically checkable
 * upgrade notes (a data file) evaluated against one host's facts. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "hf_rules.h"
#include "hf_ctl_util.h"
#include "hf_proto.h"

#ifndef HF_RULES_INSTALLED_PATH
#define HF_RULES_INSTALLED_PATH "/usr/local/share/hubfleet/upgrade-rules.json"
#endif

static const char *const check_kinds[] = { "python_min", "no_running_servers", "envs_same_major", "notice", NULL };

static bool known_kind(const char *k) {
  for (int i = 0; check_kinds[i]; i++) if (!strcmp(check_kinds[i], k)) return true;
  return false;
}

/* Validates one range object {min, max} at path. */
static int check_range(json_t *r, const char *path, char *err, size_t errlen) {
  const char *k;
  json_t *v;
  if (!json_is_object(r)) { snprintf(err, errlen, "%s: expected an object {\"min\": V, \"max\": V}", path); return HF_EINVAL; }
  json_object_foreach(r, k, v) {
    if (strcmp(k, "min") && strcmp(k, "max")) { snprintf(err, errlen, "%s.%s: unknown key (expected min, max)", path, k); return HF_EINVAL; }
    if (!json_is_string(v) || !hf_valid_version(json_string_value(v))) {
      snprintf(err, errlen, "%s.%s: expected a PEP 440 version", path, k);
      return HF_EINVAL;
    }
  }
  return 0;
}

int hf_rules_validate(const json_t *doc, char *err, size_t errlen) {
  json_t *rules = json_object_get(doc, "rules");
  if (!json_is_array(rules)) { snprintf(err, errlen, "rules: expected an array"); return HF_EINVAL; }
  size_t i;
  json_t *r;
  json_array_foreach(rules, i, r) {
    char path[64];
    snprintf(path, sizeof path, "rules[%zu]", i);
    if (!json_is_object(r)) { snprintf(err, errlen, "%s: expected an object", path); return HF_EINVAL; }
    const char *req[] = { "id", "title", "outcome", "link" };
    for (size_t k = 0; k < sizeof req / sizeof req[0]; k++)
      if (!json_is_string(json_object_get(r, req[k]))) { snprintf(err, errlen, "%s.%s: expected a string", path, req[k]); return HF_EINVAL; }
    const char *oc = json_string_value(json_object_get(r, "outcome"));
    if (strcmp(oc, "refuse") && strcmp(oc, "warn")) { snprintf(err, errlen, "%s.outcome: expected \"refuse\" or \"warn\"", path); return HF_EINVAL; }
    json_t *ap = json_object_get(r, "applies"), *ck = json_object_get(r, "check");
    if (!json_is_object(ap) || json_object_size(ap) == 0) { snprintf(err, errlen, "%s.applies: expected a non-empty object", path); return HF_EINVAL; }
    const char *k;
    json_t *v;
    json_object_foreach(ap, k, v) {
      char sub[96];
      snprintf(sub, sizeof sub, "%s.applies.%s", path, k);
      if (!strcmp(k, "to") || !strcmp(k, "from")) { if (check_range(v, sub, err, errlen)) return HF_EINVAL; }
      else if (!strcmp(k, "crosses")) {
        if (!json_is_string(v) || !hf_valid_version(json_string_value(v))) { snprintf(err, errlen, "%s: expected a PEP 440 version", sub); return HF_EINVAL; }
      } else if (!strcmp(k, "always") || !strcmp(k, "major_jump") || !strcmp(k, "schema_change") || !strcmp(k, "downgrade")) {
        if (!json_is_true(v)) { snprintf(err, errlen, "%s: expected true", sub); return HF_EINVAL; }
      } else { snprintf(err, errlen, "%s: unknown condition (expected to, from, crosses, always, major_jump, schema_change, downgrade)", sub); return HF_EINVAL; }
    }
    const char *kind = json_string_value(json_object_get(ck, "kind"));
    if (!kind || !known_kind(kind)) { snprintf(err, errlen, "%s.check.kind: expected one of python_min, no_running_servers, envs_same_major, notice", path); return HF_EINVAL; }
    if (!strcmp(kind, "python_min") && !json_is_string(json_object_get(ck, "value"))) {
      snprintf(err, errlen, "%s.check.value: expected a Python version string like \"3.10\"", path);
      return HF_EINVAL;
    }
  }
  return 0;
}

int hf_rules_find(const char *explicit_path, char *buf, size_t len) {
  /* build tree: copied beside the program by meson; installed: PREFIX/share/hubfleet */
  static const char *const rel[] = { "upgrade-rules.json", "../share/hubfleet/upgrade-rules.json", NULL };
  return hf_find_shipped_file(explicit_path, "HUBFLEET_RULES", rel, HF_RULES_INSTALLED_PATH, buf, len);
}

int hf_rules_load(const char *path, json_t **out, char *err, size_t errlen) {
  json_error_t je;
  *out = NULL;
  json_t *doc = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
  if (!doc) { snprintf(err, errlen, "%s:%d: %s", path, je.line, je.text); return HF_EINVAL; }
  char e2[400];
  if (hf_rules_validate(doc, e2, sizeof e2) != 0) {
    snprintf(err, errlen, "%s: %s", path, e2);
    json_decref(doc);
    return HF_EINVAL;
  }
  *out = doc;
  return 0;
}

/* Leading integer of a version ("3" of "3.1.0"); -1 when none. */
static long major_of(const char *v) {
  if (!v) return -1;
  while (*v && (*v < '0' || *v > '9')) v++; /* epochs are not worth more here */
  if (!*v) return -1;
  return strtol(v, NULL, 10);
}

/* Compares dotted Python versions like "3.9" and "3.10" numerically. */
static int pycmp(const char *a, const char *b) {
  char *ea, *eb;
  for (int i = 0; i < 4; i++) {
    long x = strtol(a, &ea, 10), y = strtol(b, &eb, 10);
    if (x != y) return x < y ? -1 : 1;
    a = *ea == '.' ? ea + 1 : ea;
    b = *eb == '.' ? eb + 1 : eb;
    if (!*a && !*b) return 0;
  }
  return 0;
}

static bool in_range(const json_t *r, const char *v) {
  const char *mn = json_string_value(json_object_get(r, "min")), *mx = json_string_value(json_object_get(r, "max"));
  if (!v) return false;
  if (mn && hf_version_cmp(v, mn) < 0) return false;
  if (mx && hf_version_cmp(v, mx) >= 0) return false;
  return true;
}

bool hf_rules_applies(const json_t *rule, const char *from, const char *to, bool schema_change) {
  json_t *ap = json_object_get(rule, "applies");
  const char *k;
  json_t *v;
  json_object_foreach(ap, k, v) {
    if (!strcmp(k, "to") && !in_range(v, to)) return false;
    if (!strcmp(k, "from") && !in_range(v, from)) return false;
    if (!strcmp(k, "crosses")) {
      const char *x = json_string_value(v);
      if (!from || !to || !(hf_version_cmp(from, x) < 0 && hf_version_cmp(x, to) <= 0)) return false;
    }
    if (!strcmp(k, "major_jump") && !(from && to && major_of(to) > major_of(from))) return false;
    if (!strcmp(k, "downgrade") && !(from && to && hf_version_cmp(to, from) < 0)) return false;
    if (!strcmp(k, "schema_change") && !schema_change) return false;
  }
  return true;
}

json_t *hf_rules_eval(const json_t *doc, const char *target, const json_t *facts) {
  json_t *out = json_array();
  json_t *envs = json_object_get(facts, "envs");
  const char *from = NULL, *python = NULL;
  size_t i;
  json_t *e;
  json_array_foreach(envs, i, e) {
    const char *role = json_string_value(json_object_get(e, "role"));
    if (role && !strcmp(role, "hub")) {
      from = json_string_value(json_object_get(e, "jupyterhub"));
      python = json_string_value(json_object_get(e, "python"));
    }
  }
  /* Schema change: the rehearsal saw the revision move; without a rehearsal,
   * assume any minor or major step may carry one. */
  json_t *reh = json_object_get(facts, "rehearsal");
  bool schema_change;
  if (json_is_object(reh) && json_is_string(json_object_get(reh, "alembic_after")))
    schema_change = !json_equal(json_object_get(reh, "alembic_before"), json_object_get(reh, "alembic_after"));
  else {
    schema_change = from && target && major_of(from) != major_of(target);
    if (from && target && !schema_change) {
      const char *a = strchr(from, '.'), *b = strchr(target, '.');
      schema_change = a && b && strtol(a + 1, NULL, 10) != strtol(b + 1, NULL, 10);
    }
  }
  json_t *running = json_object_get(json_object_get(facts, "db"), "running_servers");

  json_t *r;
  json_array_foreach(json_object_get(doc, "rules"), i, r) {
    if (!hf_rules_applies(r, from, target, schema_change)) continue;
    const char *kind = json_string_value(json_object_get(json_object_get(r, "check"), "kind"));
    const char *fail_oc = json_string_value(json_object_get(r, "outcome"));
    const char *oc = "pass";
    char detail[400];
    if (!strcmp(kind, "python_min")) {
      const char *need = json_string_value(json_object_get(json_object_get(r, "check"), "value"));
      if (!python) { oc = "warn"; snprintf(detail, sizeof detail, "hub Python version unknown; %s needs %s", target, need); }
      else if (pycmp(python, need) < 0) { oc = fail_oc; snprintf(detail, sizeof detail, "hub Python is %s, %s needs >= %s", python, target, need); }
      else snprintf(detail, sizeof detail, "hub Python %s >= %s", python, need);
    } else if (!strcmp(kind, "no_running_servers")) {
      if (!json_is_integer(running)) { oc = "warn"; snprintf(detail, sizeof detail, "running single-user servers unknown (database not readable)"); }
      else if (json_integer_value(running) > 0) {
        oc = fail_oc;
        snprintf(detail, sizeof detail, "%" JSON_INTEGER_FORMAT " single-user server(s) running; stop them first", json_integer_value(running));
      } else snprintf(detail, sizeof detail, "no single-user server running");
    } else if (!strcmp(kind, "envs_same_major")) {
      long hub = major_of(from);
      const char *odd = NULL;
      size_t j;
      json_array_foreach(envs, j, e) {
        const char *v = json_string_value(json_object_get(e, "jupyterhub"));
        if (v && major_of(v) != hub) odd = json_string_value(json_object_get(e, "prefix"));
      }
      if (odd) { oc = fail_oc; snprintf(detail, sizeof detail, "%s is on another major version than the hub (%s)", odd, from ? from : "?"); }
      else snprintf(detail, sizeof detail, "every environment on major version %ld", hub);
    } else {
      oc = fail_oc;
      snprintf(detail, sizeof detail, "%s -> %s", from ? from : "?", target);
    }
    json_array_append_new(out, json_pack("{s:s,s:s,s:s,s:s,s:s}", "name", json_string_value(json_object_get(r, "id")),
                                         "outcome", oc, "detail", detail, "title",
                                         json_string_value(json_object_get(r, "title")), "link",
                                         json_string_value(json_object_get(r, "link"))));
  }
  return out;
}
