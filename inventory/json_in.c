/* json_in.c: the JSON that `ansible-inventory --list` (or --list --export) prints. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_proto.h"
#include "inv_int.h"

#define JP_MAX 256

/* Appends key to a JSON path: ".key", or ["key"] when key is not a plain word. */
void hf__jpath(char *out, const char *base, const char *key) {
  const char *p;
  int plain = *key != '\0';
  for (p = key; *p; p++)
    if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-'))
      plain = 0;
  if (plain)
    snprintf(out, JP_MAX, "%s%s%s", base, *base ? "." : "", key);
  else
    snprintf(out, JP_MAX, "%s[\"%s\"]", base, key);
}

/* Host variables (hostvars) record no path of their own: it is always
 * _meta.hostvars.HOST.VAR, made again only for an error message. */
static int vars_into(struct hf__build *b, json_t *vars, json_t *origins, json_t *src,
                     const char *base, bool hostvars) {
  const char *k;
  json_t *v;
  char path[JP_MAX];
  int r;
  if (!json_is_object(src))
    return hf__inv_fail(b, 0, base, "expected an object of variables");
  json_object_foreach(src, k, v) {
    hf__jpath(path, base, k);
    /* The value is shared with the parsed document: nothing changes it. */
    r = hostvars ? hf__set_hostvar(b, vars, origins, k, json_incref(v), path)
                 : hf__set_var(b, vars, origins, k, json_incref(v), 0, path);
    if (r != 0) return r;
  }
  return 0;
}

/* Checks one group's object and records its children and vars. */
static int group_shape(struct hf__build *b, const char *name, json_t *g, size_t gi) {
  const char *k;
  json_t *v;
  char path[JP_MAX], ipath[JP_MAX + 32];
  size_t i, ci;
  int r;
  hf__jpath(path, "", name);
  if (!json_is_object(g))
    return hf__inv_fail(b, 0, path, "expected a group object with \"hosts\", \"children\" and/or \"vars\", got %s",
                        json_is_array(g) ? "an array" : json_is_string(g) ? "a string" : "another JSON type");
  json_object_foreach(g, k, v) {
    char kp[JP_MAX];
    hf__jpath(kp, path, k);
    if (!strcmp(k, "hosts") || !strcmp(k, "children")) {
      if (!json_is_array(v)) return hf__inv_fail(b, 0, kp, "expected an array of names");
      for (i = 0; i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);
        snprintf(ipath, sizeof ipath, "%s[%zu]", kp, i);
        if (!json_is_string(e) || json_string_length(e) == 0 || strlen(json_string_value(e)) != json_string_length(e))
          return hf__inv_fail(b, 0, ipath, "expected a non-empty %s name string",
                              k[0] == 'h' ? "host" : "group");
        if (k[0] == 'c') {
          if (!strcmp(json_string_value(e), "all"))
            return hf__inv_fail(b, 0, ipath, "group 'all' cannot be a child: it is every group's parent");
          if ((r = hf__group_get(b, json_string_value(e), 0, &ci)) != 0) return r;
          if ((r = hf__group_add_child(b, gi, ci, 0)) != 0) return r;
        }
      }
    } else if (!strcmp(k, "vars")) {
      if ((r = vars_into(b, b->groups[gi].vars, b->groups[gi].origins, v, kp, false)) != 0) return r;
    } else {
      return hf__inv_fail(b, 0, kp, "unknown key in group '%s': expected \"hosts\", \"children\" or \"vars\"", name);
    }
  }
  return 0;
}

/* Adds hosts walking down from "all", so host order follows the tree. */
static int walk(struct hf__build *b, const json_t *root, size_t gi, char *seen, int depth) {
  json_t *g, *hosts;
  size_t i, hi;
  char path[JP_MAX];
  int r;
  if (seen[gi]) return 0;
  if (depth > HF__MAX_NESTING)
    return hf__inv_fail(b, 0, b->groups[gi].name, "groups nested more than %d deep: expected a shallower "
                        "tree of children", HF__MAX_NESTING);
  seen[gi] = 1;
  g = json_object_get(root, b->groups[gi].name);
  hosts = json_object_get(g, "hosts");
  for (i = 0; i < json_array_size(hosts); i++) {
    const char *h = json_string_value(json_array_get(hosts, i));
    hf__jpath(path, b->groups[gi].name, "hosts");
    snprintf(path + strlen(path), sizeof path - strlen(path), "[%zu]", i);
    for (const unsigned char *p = (const unsigned char *)h; *p; p++)
      if (*p <= ' ' || *p == 0x7f)
        return hf__inv_fail(b, 0, path, "bad host name '%s': expected no spaces or control characters", h);
    if ((r = hf__host_add(b, h, gi, 0, path, &hi)) != 0) return r;
  }
  for (i = 0; i < b->groups[gi].nchildren; i++)
    if ((r = walk(b, root, b->groups[gi].children[i], seen, depth + 1)) != 0) return r;
  return 0;
}

int hf__json_parse(struct hf__build *b, const char *data, size_t len) {
  json_error_t je;
  json_t *root, *meta = NULL, *hv = NULL, *v;
  const char *k;
  char *seen = NULL;
  char path[JP_MAX];
  size_t gi, i;
  int r = 0;

  if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) { data += 3; len -= 3; }   /* BOM */
  root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
  if (root == NULL)
    return hf__inv_fail(b, je.line, "", "invalid JSON: %s (column %d)", je.text, je.column);
  if (!json_is_object(root)) {
    r = hf__inv_fail(b, 0, NULL, "expected a JSON object of groups and \"_meta\" (as `ansible-inventory "
                     "--list` prints), got %s", json_is_array(root) ? "an array" : "another JSON value");
    goto out;
  }
  json_object_foreach(root, k, v) {
    if (!strcmp(k, "_meta")) {
      meta = v;
      continue;
    }
    if (*k == '\0') { r = hf__inv_fail(b, 0, "[\"\"]", "empty group name"); goto out; }
    if ((r = hf__group_get(b, k, 0, &gi)) != 0) goto out;
    b->groups[gi].declared = 1;
    if ((r = group_shape(b, k, v, gi)) != 0) goto out;
  }
  if ((seen = calloc(b->ngroups, 1)) == NULL) { r = hf__inv_nomem(b); goto out; }
  if ((r = walk(b, root, 0, seen, 0)) != 0) goto out;
  for (i = 1; i < b->ngroups; i++)
    if ((r = walk(b, root, i, seen, 0)) != 0) goto out;

  if (meta != NULL) {
    if (!json_is_object(meta)) { r = hf__inv_fail(b, 0, "_meta", "expected an object with \"hostvars\""); goto out; }
    json_object_foreach(meta, k, v) {
      if (strcmp(k, "hostvars") != 0) {
        hf__jpath(path, "_meta", k);
        r = hf__inv_fail(b, 0, path, "unknown key: expected only \"hostvars\"");
        goto out;
      }
    }
    hv = json_object_get(meta, "hostvars");
    if (hv != NULL && !json_is_object(hv)) {
      r = hf__inv_fail(b, 0, "_meta.hostvars", "expected an object mapping host names to variables");
      goto out;
    }
    json_object_foreach(hv, k, v) {
      json_t *ix = json_object_get(b->hostidx, k);
      char base[JP_MAX];
      hf__jpath(base, "_meta.hostvars", k);
      if (ix == NULL) {
        r = hf__inv_fail(b, 0, base, "host '%s' has variables but is in no group: expected it in a group's "
                         "\"hosts\" (ungrouped hosts go in \"ungrouped\")", k);
        goto out;
      }
      i = (size_t)json_integer_value(ix);
      if ((r = vars_into(b, b->hosts[i].vars, b->hosts[i].origins, v, base, true)) != 0) goto out;
    }
  }
out:
  free(seen);
  json_decref(root);
  return r;
}
