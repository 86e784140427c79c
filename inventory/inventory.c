/* inventory.c: loading, the group graph, Ansible's variable precedence, lookup, patterns, JSON view. */
#include <errno.h>
#include <fnmatch.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf_proto.h"
#include "inv_int.h"

/* Inventories are read whole; a larger file is a mistake, not a fleet. */
#define HF_INV_MAX_BYTES (64u << 20)

int hf__inv_fail(struct hf__build *b, int line, const char *path, const char *fmt, ...) {
  va_list ap;
  struct hf_inv_error *e = b->err;
  if (e == NULL) return HF_EINVENTORY;
  snprintf(e->file, sizeof e->file, "%s", b->file);
  e->line = line > 0 ? line : 0;
  snprintf(e->where, sizeof e->where, "%s", path ? path : "");
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
  return HF_EINVENTORY;
}

int hf__inv_nomem(struct hf__build *b) {
  hf__inv_fail(b, 0, NULL, "out of memory");
  return HF_ENOMEM;
}

/* Grows *arr (element size sz) so that it holds at least n+1 elements. */
static int grow(void **arr, size_t *cap, size_t n, size_t sz) {
  void *p;
  size_t ncap;
  if (n < *cap) return 0;
  ncap = *cap ? *cap * 2 : 8;
  p = realloc(*arr, ncap * sz);
  if (p == NULL) return HF_ENOMEM;
  *arr = p;
  *cap = ncap;
  return 0;
}

int hf__build_init(struct hf__build *b, const char *file, struct hf_inv_error *err) {
  size_t i;
  memset(b, 0, sizeof *b);
  b->file = file;
  b->err = err;
  if ((b->hostidx = json_object()) == NULL) return hf__inv_nomem(b);
  if (hf__group_get(b, "all", 0, &i) != 0 || hf__group_get(b, "ungrouped", 0, &i) != 0)
    return hf__inv_nomem(b);
  b->groups[0].declared = b->groups[1].declared = 1;
  return 0;
}

void hf__build_free(struct hf__build *b) {
  size_t i;
  for (i = 0; i < b->ngroups; i++) {
    free(b->groups[i].name);
    json_decref(b->groups[i].vars);
    json_decref(b->groups[i].origins);
    free(b->groups[i].children);
    free(b->groups[i].child_lines);
  }
  for (i = 0; i < b->nhosts; i++) {
    free(b->hosts[i].name);
    json_decref(b->hosts[i].vars);
    json_decref(b->hosts[i].origins);
    free(b->hosts[i].grps);
  }
  json_decref(b->hostidx);
  free(b->groups);
  free(b->hosts);
  memset(b, 0, sizeof *b);
}

size_t hf__group_find(const struct hf__build *b, const char *name) {
  size_t i;
  for (i = 0; i < b->ngroups; i++)
    if (strcmp(b->groups[i].name, name) == 0) return i;
  return (size_t)-1;
}

int hf__group_get(struct hf__build *b, const char *name, int line, size_t *idx) {
  struct hf__grp *g;
  size_t i = hf__group_find(b, name);
  if (i != (size_t)-1) { *idx = i; return 0; }
  if (grow((void **)&b->groups, &b->capgroups, b->ngroups, sizeof *b->groups) != 0)
    return hf__inv_nomem(b);
  g = &b->groups[b->ngroups];
  memset(g, 0, sizeof *g);
  g->name = strdup(name);
  g->vars = json_object();
  g->origins = json_object();
  g->line = line;
  g->priority = 1;
  if (g->name == NULL || g->vars == NULL || g->origins == NULL) {
    free(g->name); json_decref(g->vars); json_decref(g->origins);
    return hf__inv_nomem(b);
  }
  *idx = b->ngroups++;
  return 0;
}

int hf__group_add_child(struct hf__build *b, size_t pi, size_t ci, int line) {
  struct hf__grp *p = &b->groups[pi];
  size_t i, cap;
  for (i = 0; i < p->nchildren; i++)
    if (p->children[i] == ci) return 0;
  cap = p->capchildren;
  if (grow((void **)&p->children, &p->capchildren, p->nchildren, sizeof *p->children) != 0)
    return hf__inv_nomem(b);
  if (grow((void **)&p->child_lines, &cap, p->nchildren, sizeof *p->child_lines) != 0)
    return hf__inv_nomem(b);
  p->children[p->nchildren] = ci;
  p->child_lines[p->nchildren] = line;
  p->nchildren++;
  if (pi != 0) b->groups[ci].has_parent = 1;
  return 0;
}

int hf__host_add(struct hf__build *b, const char *name, size_t gi, int line,
                 const char *where, size_t *idx) {
  struct hf__hst *h;
  json_t *ix = json_object_get(b->hostidx, name);
  size_t i, k;
  if (ix != NULL) {
    i = (size_t)json_integer_value(ix);
    h = &b->hosts[i];
  } else {
    if (b->nhosts >= HF__MAX_HOSTS)
      return hf__inv_fail(b, line, b->json ? where : NULL, "more than %d hosts: an inventory may "
                          "name at most that many (split the fleet into several inventories)", HF__MAX_HOSTS);
    if (grow((void **)&b->hosts, &b->caphosts, b->nhosts, sizeof *b->hosts) != 0)
      return hf__inv_nomem(b);
    h = &b->hosts[b->nhosts];
    memset(h, 0, sizeof *h);
    h->name = strdup(name);
    h->vars = json_object();
    h->origins = json_object();
    h->line = line;
    snprintf(h->where, sizeof h->where, "%s", where ? where : "");
    if (h->name == NULL || h->vars == NULL || h->origins == NULL ||
        json_object_set_new(b->hostidx, name, json_integer((json_int_t)b->nhosts)) != 0) {
      free(h->name); json_decref(h->vars); json_decref(h->origins);
      return hf__inv_nomem(b);
    }
    i = b->nhosts++;
  }
  *idx = i;
  if (gi > 1) h->ingroup = 1;   /* all (0) and ungrouped (1) do not count */
  for (k = 0; k < h->ngrps; k++)
    if (h->grps[k] == gi) return 0;
  if (grow((void **)&h->grps, &h->capgrps, h->ngrps, sizeof *h->grps) != 0)
    return hf__inv_nomem(b);
  h->grps[h->ngrps++] = gi;
  return 0;
}

static int set_var(struct hf__build *b, json_t *vars, json_t *origins, const char *key,
                   json_t *value, int line, const char *path, bool null_origin);

int hf__set_var(struct hf__build *b, json_t *vars, json_t *origins, const char *key,
                json_t *value, int line, const char *path) {
  return set_var(b, vars, origins, key, value, line, path, false);
}

int hf__set_hostvar(struct hf__build *b, json_t *vars, json_t *origins, const char *key,
                    json_t *value, const char *path) {
  return set_var(b, vars, origins, key, value, 0, path, true);
}

static int set_var(struct hf__build *b, json_t *vars, json_t *origins, const char *key,
                   json_t *value, int line, const char *path, bool null_origin) {
  json_t *o;
  if (value == NULL) return hf__inv_nomem(b);
  if (strncmp(key, "hubfleet_", 9) == 0 && !hf__var_known(key)) {
    const char *s = hf__var_suggest(key);
    json_decref(value);
    if (s)
      return hf__inv_fail(b, line, path, "unknown variable %s (did you mean %s?); "
                          "see docs/inventory.md for hubfleet's variables", key, s);
    return hf__inv_fail(b, line, path, "unknown variable %s; see docs/inventory.md "
                        "for hubfleet's variables", key);
  }
  if (json_object_set_new(vars, key, value) != 0) return hf__inv_nomem(b);
  /* JSON host variables record no origin: absent means _meta.hostvars.HOST.VAR. */
  if (null_origin) { json_object_del(origins, key); return 0; }
  o = path ? json_string(path) : json_integer(line);
  if (o == NULL || json_object_set_new(origins, key, o) != 0) return hf__inv_nomem(b);
  return 0;
}

/* ---- resolution ---------------------------------------------------------- */

/* Depth-first walk that finds cycles and appends groups in postorder. */
static int visit(struct hf__build *b, size_t gi, size_t *order, size_t *norder, int depth) {
  struct hf__grp *g = &b->groups[gi];
  size_t k;
  int r;
  if (g->mark == 2) return 0;
  if (depth > HF__MAX_NESTING)
    return hf__inv_fail(b, g->line, b->json ? g->name : NULL, "groups nested more than %d deep under "
                        "'%s': expected a shallower tree of :children", HF__MAX_NESTING, g->name);
  g->mark = 1;
  for (k = 0; k < g->nchildren; k++) {
    struct hf__grp *c = &b->groups[g->children[k]];
    if (c->mark == 1) {
      char path[300];
      snprintf(path, sizeof path, "%s.children", g->name);
      return hf__inv_fail(b, g->child_lines[k], b->json ? path : NULL,
                          "adding group '%s' as a child of '%s' makes a cycle: '%s' is "
                          "already an ancestor of '%s'", c->name, g->name, c->name, g->name);
    }
    if ((r = visit(b, g->children[k], order, norder, depth + 1)) != 0) return r;
  }
  g->mark = 2;
  order[(*norder)++] = gi;
  return 0;
}

struct grp_ref { const struct hf__grp *g; };

static int grp_cmp(const void *a, const void *b) {
  const struct hf__grp *x = ((const struct grp_ref *)a)->g, *y = ((const struct grp_ref *)b)->g;
  if (x->depth != y->depth) return x->depth < y->depth ? -1 : 1;
  if (x->priority != y->priority) return x->priority < y->priority ? -1 : 1;
  return strcmp(x->name, y->name);
}

static int str_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Overlays src over dst (both objects), keeping origins alongside. */
static int overlay(json_t *dst, json_t *dsto, json_t *src, const json_t *srco, int group) {
  const char *k;
  json_t *v;
  json_object_foreach(src, k, v) {
    /* Ansible's Group keeps this one as its priority, not as a variable. */
    if (group && !strcmp(k, "ansible_group_priority")) continue;
    if (json_object_set(dst, k, v) != 0) return HF_ENOMEM;
    json_t *o = json_object_get(srco, k);
    if (o == NULL) json_object_del(dsto, k);   /* a JSON host variable: its path is implied */
    else if (json_object_set(dsto, k, o) != 0) return HF_ENOMEM;
  }
  return 0;
}

/* Reads ansible_group_priority like Ansible: an int, or a string holding one. */
static int group_priority(struct hf__build *b, struct hf__grp *g) {
  json_t *v = json_object_get(g->vars, "ansible_group_priority");
  json_t *o;
  char *end;
  long n;
  if (v == NULL) return 0;
  if (json_is_integer(v)) { g->priority = (int)json_integer_value(v); return 0; }
  if (json_is_string(v)) {
    errno = 0;
    n = strtol(json_string_value(v), &end, 10);
    if (errno == 0 && end != json_string_value(v) && *end == '\0' && n > -100000 && n < 100000) {
      g->priority = (int)n;
      return 0;
    }
  }
  o = json_object_get(g->origins, "ansible_group_priority");
  return hf__inv_fail(b, (int)json_integer_value(o), json_string_value(o),
                      "group %s: ansible_group_priority: expected an integer", g->name);
}

static int resolve(struct hf__build *b, struct hf_inventory *inv) {
  size_t *order = NULL, norder = 0, i, k, n, nitems = 0;
  char *mark = NULL;
  struct grp_ref *refs = NULL;
  json_t *vars = NULL, *origins = NULL;
  int r;

  /* Groups nobody claims hang under "all", as in Ansible. */
  for (i = 1; i < b->ngroups; i++)
    if (!b->groups[i].has_parent && (r = hf__group_add_child(b, 0, i, 0)) != 0) return r;
  for (i = 0; i < b->nhosts; i++) {
    if (!b->hosts[i].ingroup && (r = hf__host_add(b, b->hosts[i].name, 1, 0, NULL, &k)) != 0)
      return r;
  }

  order = calloc(b->ngroups, sizeof *order);
  mark = calloc(b->ngroups, 1);
  refs = calloc(b->ngroups, sizeof *refs);
  inv->hosts = calloc(b->nhosts ? b->nhosts : 1, sizeof *inv->hosts);
  if (order == NULL || mark == NULL || refs == NULL || inv->hosts == NULL) { r = hf__inv_nomem(b); goto out; }
  for (i = 0; i < b->ngroups; i++) b->groups[i].mark = 0;
  /* Walk from every group so cycles unreachable from "all" are found too. */
  for (i = 0; i < b->ngroups; i++)
    if ((r = visit(b, i, order, &norder, 0)) != 0) goto out;
  /* Reverse postorder is topological: parents before children. Depth is the
   * longest path from "all", which is what Ansible's Group.depth tracks. */
  for (i = 0; i < b->ngroups; i++) b->groups[i].depth = 0;
  for (n = norder; n-- > 0;) {
    struct hf__grp *g = &b->groups[order[n]];
    for (k = 0; k < g->nchildren; k++) {
      struct hf__grp *c = &b->groups[g->children[k]];
      if (c->depth < g->depth + 1) c->depth = g->depth + 1;
    }
  }
  for (i = 0; i < b->ngroups; i++)
    if ((r = group_priority(b, &b->groups[i])) != 0) goto out;

  for (i = 0; i < b->nhosts; i++) {
    struct hf__hst *hs = &b->hosts[i];
    struct hf_host *h = &inv->hosts[i];
    size_t nref = 0, ng = 0;
    memset(mark, 0, b->ngroups);
    for (k = 0; k < hs->ngrps; k++) mark[hs->grps[k]] = 1;
    /* Postorder visits children first, so one pass lifts membership up. */
    for (n = 0; n < norder; n++) {
      struct hf__grp *g = &b->groups[order[n]];
      for (k = 0; k < g->nchildren && !mark[order[n]]; k++)
        if (mark[g->children[k]]) mark[order[n]] = 1;
    }
    mark[0] = 1;
    for (k = 0; k < b->ngroups; k++)
      if (mark[k]) refs[nref++].g = &b->groups[k];
    qsort(refs, nref, sizeof *refs, grp_cmp);
    vars = json_object();
    origins = json_object();
    if (vars == NULL || origins == NULL) { r = hf__inv_nomem(b); goto out; }
    for (k = 0; k < nref; k++)
      if (overlay(vars, origins, refs[k].g->vars, refs[k].g->origins, 1) != 0) { r = hf__inv_nomem(b); goto out; }
    if (overlay(vars, origins, hs->vars, hs->origins, 0) != 0) { r = hf__inv_nomem(b); goto out; }
    if ((nitems += json_object_size(vars) + nref) > HF__MAX_HOSTITEMS) {
      r = hf__inv_fail(b, 0, NULL, "the hosts hold more than %d variables and group memberships "
                       "once groups are merged (%zu hosts reached it, of %zu): split the fleet into "
                       "several inventories", HF__MAX_HOSTITEMS, i + 1, b->nhosts);
      goto out;
    }

    h->name = strdup(hs->name);
    h->groups = calloc(nref ? nref : 1, sizeof *h->groups);
    if (h->name == NULL || h->groups == NULL) { r = hf__inv_nomem(b); goto out; }
    inv->nhosts = i + 1;
    for (k = 0; k < nref; k++) {
      const char *gn = refs[k].g->name;
      /* Like Ansible's group_names: "all" and "ungrouped" are implied. */
      if (!strcmp(gn, "all") || !strcmp(gn, "ungrouped")) continue;
      if ((h->groups[ng] = strdup(gn)) == NULL) { r = hf__inv_nomem(b); goto out; }
      ng++;
      h->ngroups = ng;
      if (!strcmp(gn, "canary")) h->canary = true;
    }
    qsort(h->groups, h->ngroups, sizeof *h->groups, str_cmp);
    if ((r = hf__host_resolve(b, h, vars, origins)) != 0) goto out;
    if (b->lean) {
      /* Every value the host needs is in h now: let its variables go. */
      json_decref(vars);
      json_decref(hs->vars);
      json_decref(hs->origins);
      hs->vars = hs->origins = NULL;
    } else {
      h->vars = vars;
    }
    vars = NULL;
    json_decref(origins);
    origins = NULL;
  }
  /* hf_inv_find in constant time: the report and the metrics look up
   * every host of an audit. */
  if ((inv->byname = json_object()) == NULL) { r = hf__inv_nomem(b); goto out; }
  for (i = 0; i < inv->nhosts; i++)
    if (json_object_set_new(inv->byname, inv->hosts[i].name, json_integer((json_int_t)i)) != 0) {
      r = hf__inv_nomem(b);
      goto out;
    }
  r = 0;
out:
  json_decref(vars);
  json_decref(origins);
  free(order);
  free(mark);
  free(refs);
  return r;
}

/* ---- public entry points --------------------------------------------------- */

void hf_inv_free(struct hf_inventory *inv) {
  size_t i, k;
  if (inv == NULL) return;
  for (i = 0; i < inv->nhosts; i++) {
    struct hf_host *h = &inv->hosts[i];
    free(h->name);
    free(h->address);
    free(h->user);
    free(h->key_file);
    free(h->known_hosts);
    free(h->jump);
    for (k = 0; k < h->ngroups; k++) free(h->groups[k]);
    free(h->groups);
    json_decref(h->hub);
    json_decref(h->vars);
  }
  free(inv->hosts);
  json_decref(inv->byname);
  free(inv->path);
  free(inv);
}

static int blank(char c) {
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* JSON when the first non-blank byte is '{' (a UTF-8 BOM is skipped), or a
 * '[' that opens a JSON array rather than an INI section ("[{", "[\"",
 * "[[", "[]"), so that a JSON array gets a JSON error, not an INI one. */
static int looks_json(const char *data, size_t len) {
  size_t i = 0;
  if (len >= 3 && !memcmp(data, "\xEF\xBB\xBF", 3)) i = 3;
  while (i < len && blank(data[i])) i++;
  if (i == len) return 0;
  if (data[i] == '{') return 1;
  if (data[i] != '[') return 0;
  for (i++; i < len && blank(data[i]); i++) {}
  return i < len && strchr("{[\"]", data[i]) != NULL;
}

static int load_buffer(const char *name, const char *data, size_t len, unsigned flags,
                       struct hf_inventory **out, struct hf_inv_error *err);

int hf_inv_load_buffer(const char *name, const char *data, size_t len,
                       struct hf_inventory **out, struct hf_inv_error *err) {
  return load_buffer(name, data, len, 0, out, err);
}

static int load_buffer(const char *name, const char *data, size_t len, unsigned flags,
                       struct hf_inventory **out, struct hf_inv_error *err) {
  struct hf__build b;
  struct hf_inventory *inv;
  struct hf_inv_error dummy;
  int r;

  *out = NULL;
  if (err == NULL) err = &dummy;
  memset(err, 0, sizeof *err);
  if (name == NULL) name = "<inventory>";
  if ((r = hf__build_init(&b, name, err)) != 0) return r;
  b.lean = (flags & HF_INV_LEAN) != 0;
  inv = calloc(1, sizeof *inv);
  if (inv == NULL || (inv->path = strdup(name)) == NULL) {
    r = hf__inv_nomem(&b);
    goto fail;
  }
  if (memchr(data, '\0', len) != NULL) {
    r = hf__inv_fail(&b, 0, NULL, "file holds a NUL byte: expected an INI or JSON text inventory");
    goto fail;
  }
  if (looks_json(data, len)) {
    b.json = 1;
    r = hf__json_parse(&b, data, len);
  } else {
    r = hf__ini_parse(&b, data, len);
  }
  if (r == 0) r = resolve(&b, inv);
  if (r != 0) goto fail;
  if (inv->nhosts == 0) {
    r = hf__inv_fail(&b, 0, NULL, "no hosts: expected at least one host in a group or before the first section");
    goto fail;
  }
  hf__build_free(&b);
  *out = inv;
  return 0;
fail:
  hf__build_free(&b);
  hf_inv_free(inv);
  return r;
}

/* Reads all of f (a file, pipe or terminal) up to the size limit into a new
 * buffer. Returns 0, HF_EINVENTORY (too big), HF_EIO or HF_ENOMEM. */
static int read_all(FILE *f, char **out, size_t *len, struct hf_inv_error *err) {
  size_t cap = 64 * 1024, n = 0, got;
  char *buf = malloc(cap + 1), *p;
  *out = NULL;
  if (buf == NULL) { snprintf(err->message, sizeof err->message, "out of memory"); return HF_ENOMEM; }
  while ((got = fread(buf + n, 1, cap - n, f)) > 0) {
    n += got;
    if (n < cap) continue;
    if (cap >= HF_INV_MAX_BYTES) {
      free(buf);
      snprintf(err->message, sizeof err->message, "more than %u MiB: inventories are limited to that size",
               HF_INV_MAX_BYTES >> 20);
      return HF_EINVENTORY;
    }
    cap *= 2;
    if ((p = realloc(buf, cap + 1)) == NULL) {
      free(buf);
      snprintf(err->message, sizeof err->message, "out of memory");
      return HF_ENOMEM;
    }
    buf = p;
  }
  if (ferror(f)) {
    free(buf);
    snprintf(err->message, sizeof err->message, "read error: %s", strerror(errno));
    return HF_EIO;
  }
  buf[n] = '\0';
  *out = buf;
  *len = n;
  return 0;
}

int hf_inv_load(const char *path, struct hf_inventory **out, struct hf_inv_error *err) {
  return hf_inv_load_flags(path, 0, out, err);
}

int hf_inv_load_flags(const char *path, unsigned flags, struct hf_inventory **out, struct hf_inv_error *err) {
  struct hf_inv_error dummy;
  struct stat st;
  FILE *f;
  char *data;
  size_t n;
  int r;

  *out = NULL;
  if (err == NULL) err = &dummy;
  memset(err, 0, sizeof *err);
  snprintf(err->file, sizeof err->file, "%s", path);
  f = fopen(path, "rb");
  if (f == NULL) {
    snprintf(err->message, sizeof err->message, "cannot open: %s", strerror(errno));
    return HF_EIO;
  }
  /* Pipes are welcome (ansible-inventory --list | hubfleet ... /dev/stdin);
   * a directory is the usual mistake of pointing at an inventory folder. */
  if (fstat(fileno(f), &st) != 0 || S_ISDIR(st.st_mode)) {
    snprintf(err->message, sizeof err->message, "is a directory: expected an INI or JSON inventory file "
             "(for a directory of inventories, merge them with ansible-inventory --list first)");
    fclose(f);
    return HF_EIO;
  }
  r = read_all(f, &data, &n, err);
  fclose(f);
  if (r != 0) return r;
  r = load_buffer(path, data, n, flags, out, err);
  free(data);
  return r;
}

void hf_inv_error_format(const struct hf_inv_error *err, char *buf, size_t len) {
  if (len == 0) return;
  if (err->line > 0)
    snprintf(buf, len, "%s:%d: %s", err->file, err->line, err->message);
  else if (err->where[0])
    snprintf(buf, len, "%s: %s: %s", err->file, err->where, err->message);
  else
    snprintf(buf, len, "%s: %s", err->file, err->message);
}

const struct hf_host *hf_inv_find(const struct hf_inventory *inv, const char *name) {
  json_t *ix;
  if (inv == NULL || name == NULL) return NULL;
  /* Every loaded inventory has its index (resolve builds it or fails). */
  ix = json_object_get(inv->byname, name);
  return ix ? &inv->hosts[(size_t)json_integer_value(ix)] : NULL;
}

/* One pattern term: "all"/"*", "ungrouped", "~REGEX" (POSIX extended,
 * searched in host and group names), else a shell glob on the host name or
 * on a group name (a plain group name is a glob without wildcards). */
static bool match_term(const struct hf_host *h, const char *t) {
  size_t i;
  if (!strcmp(t, "all") || !strcmp(t, "*")) return true;
  if (!strcmp(t, "ungrouped")) return h->ngroups == 0;
  if (*t == '~') {
    regex_t re;
    bool hit = false;
    if (regcomp(&re, t + 1, REG_EXTENDED | REG_NOSUB) != 0) return false;
    hit = regexec(&re, h->name, 0, NULL, 0) == 0;
    for (i = 0; i < h->ngroups && !hit; i++) hit = regexec(&re, h->groups[i], 0, NULL, 0) == 0;
    regfree(&re);
    return hit;
  }
  if (fnmatch(t, h->name, 0) == 0) return true;
  for (i = 0; i < h->ngroups; i++)
    if (fnmatch(t, h->groups[i], 0) == 0) return true;
  return false;
}

bool hf_inv_match(const struct hf_host *h, const char *pattern) {
  char buf[1024], *save = NULL, *t;
  const char *sep;
  bool any_plain = false, plain = false, ok = true;
  if (h == NULL || pattern == NULL || strlen(pattern) >= sizeof buf) return false;
  snprintf(buf, sizeof buf, "%s", pattern);
  /* As Ansible: ',' separates when present (so "::1,web" keeps the IPv6
   * name whole), else ':'. Union of plain terms, then "&" intersects and
   * "!" excludes; only exclusions/intersections start from "all". */
  sep = strchr(buf, ',') ? "," : ":";
  for (t = strtok_r(buf, sep, &save); t; t = strtok_r(NULL, sep, &save)) {
    char *e = t + strlen(t);
    while (*t == ' ' || *t == '\t') t++;
    while (e > t && (e[-1] == ' ' || e[-1] == '\t')) *--e = '\0';
    if (*t == '\0') continue;
    if (*t == '!') { if (match_term(h, t + 1)) ok = false; }
    else if (*t == '&') { if (!match_term(h, t + 1)) ok = false; }
    else { any_plain = true; if (match_term(h, t)) plain = true; }
  }
  return ok && (plain || !any_plain);
}

/* Appends n bytes of s to buf (len, used *o), truncating. */
static void put(char *buf, size_t len, size_t *o, const char *s, size_t n) {
  while (n-- > 0 && *o + 1 < len) buf[(*o)++] = *s++;
  buf[*o] = '\0';
}

void hf_inv_redact_url(const char *url, char *buf, size_t len) {
  if (len == 0) return;
  const char *u = url ? url : "", *p = u;
  size_t o = 0;
  buf[0] = '\0';
  const char *scheme = strstr(u, "://");
  if (scheme) {
    const char *auth = scheme + 3, *end = auth + strcspn(auth, "/?#"), *at = NULL;
    for (const char *q = auth; q < end; q++) if (*q == '@') at = q;   /* the last '@' ends the user info */
    const char *colon = at ? memchr(auth, ':', (size_t)(at - auth)) : NULL;
    if (colon) {
      put(buf, len, &o, u, (size_t)(colon + 1 - u));
      put(buf, len, &o, "***", 3);
      p = at;
    }
  }
  /* password=... in the query */
  while (*p) {
    const char *q = strstr(p, "password=");
    if (!q) break;
    bool param = q > u && (q[-1] == '?' || q[-1] == '&');
    put(buf, len, &o, p, (size_t)(q + 9 - p));
    p = q + 9;
    if (param) {
      put(buf, len, &o, "***", 3);
      p += strcspn(p, "&#");
    }
  }
  put(buf, len, &o, p, strlen(p));
}

/* The copy of a string member redacted in place (a database URL). */
static void redact_member(json_t *obj, const char *key) {
  const char *v = json_string_value(json_object_get(obj, key));
  if (!v) return;
  char buf[4096];
  hf_inv_redact_url(v, buf, sizeof buf);
  if (strcmp(buf, v)) json_object_set_new(obj, key, json_string(buf));
}

static json_t *str_or_null(const char *s) {
  return s ? json_string(s) : json_null();
}

json_t *hf_inv_to_json(const struct hf_inventory *inv) {
  json_t *root, *hosts;
  size_t i, k;
  if (inv == NULL) return NULL;
  root = json_object();
  hosts = json_array();
  if (root == NULL || hosts == NULL || json_object_set_new(root, "hosts", hosts) != 0) {
    json_decref(root);
    json_decref(hosts);
    return NULL;
  }
  if (json_object_set_new(root, "path", str_or_null(inv->path)) != 0) goto fail;
  for (i = 0; i < inv->nhosts; i++) {
    const struct hf_host *h = &inv->hosts[i];
    json_t *o = json_object(), *g = json_array();
    if (o == NULL || g == NULL || json_array_append_new(hosts, o) != 0) {
      json_decref(o); json_decref(g);
      goto fail;
    }
    for (k = 0; k < h->ngroups; k++)
      if (json_array_append_new(g, json_string(h->groups[k])) != 0) { json_decref(g); goto fail; }
    if (json_object_set_new(o, "name", json_string(h->name)) != 0 ||
        json_object_set_new(o, "address", json_string(h->address)) != 0 ||
        json_object_set_new(o, "port", json_integer(h->port)) != 0 ||
        json_object_set_new(o, "user", str_or_null(h->user)) != 0 ||
        json_object_set_new(o, "key_file", str_or_null(h->key_file)) != 0 ||
        json_object_set_new(o, "known_hosts", str_or_null(h->known_hosts)) != 0 ||
        json_object_set_new(o, "jump", str_or_null(h->jump)) != 0 ||
        json_object_set_new(o, "groups", g) != 0 ||
        json_object_set_new(o, "canary", json_boolean(h->canary)) != 0 ||
        json_object_set_new(o, "hub", json_deep_copy(h->hub)) != 0 ||
        json_object_set_new(o, "vars", h->vars ? json_deep_copy(h->vars) : json_object()) != 0)
      goto fail;
    redact_member(json_object_get(o, "hub"), "db");      /* never a password on a screen */
    redact_member(json_object_get(o, "vars"), "hubfleet_db");
  }
  return root;
fail:
  json_decref(root);
  return NULL;
}
