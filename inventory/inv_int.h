/* inv_int.h: internals shared by the inventory's readers, resolver and host-variable checker. */
#ifndef HF_INV_INT_H
#define HF_INV_INT_H

#include <stdarg.h>
#include "hf_inventory.h"

/* Recursion bounds: group trees and host patterns are walked recursively,
 * so hostile input must not be able to exhaust the stack. */
#define HF__MAX_NESTING 1000
#define HF__MAX_RANGES  16
/* Size bounds: ranges, group variables and nested groups multiply, so a few
 * bytes of input (h[0:999]x[0:999], [all:vars] over many hosts, many hosts
 * under a deep chain of groups) could otherwise ask for gigabytes. An
 * inventory names at most HF__MAX_HOSTS hosts, and all its hosts together
 * hold at most HF__MAX_HOSTITEMS variables and group memberships after
 * merging (each host's own, inherited ones included). */
#define HF__MAX_HOSTS     100000
#define HF__MAX_HOSTITEMS 2000000

/* A group as read from the source, before resolution. */
struct hf__grp {
  char   *name;
  json_t *vars;        /* own variables (new); values in source order, later wins */
  json_t *origins;     /* var name -> where it was set: line (int) or JSON path (string) */
  size_t *children;    /* indices into build.groups */
  int    *child_lines; /* INI line of each children entry (0 for JSON) */
  size_t  nchildren, capchildren;
  int     line;        /* where first mentioned (INI), for messages */
  int     declared;    /* seen as [g] or [g:children] (INI), or as a key (JSON) */
  int     vars_line;   /* first [g:vars] line when not declared yet */
  int     depth;       /* longest path from "all" (all = 0) */
  int     priority;    /* ansible_group_priority, default 1 */
  int     has_parent;
  int     mark;        /* DFS colour for cycle detection */
};

/* A host as read: the union of every definition of the same name. */
struct hf__hst {
  char   *name;
  json_t *vars;        /* host's own variables (inline or _meta.hostvars) */
  json_t *origins;     /* var name -> line (int) or JSON path (string) */
  int     line;        /* first definition (INI) */
  char    where[256];  /* JSON path of its first mention */
  int     ingroup;     /* member of some group other than all/ungrouped */
  size_t *grps;        /* groups it is directly listed in, each once */
  size_t  ngrps, capgrps;
};

struct hf__build {
  const char          *file;
  int                  json;    /* source is JSON: origins are paths */
  int                  lean;    /* HF_INV_LEAN: no merged vars kept per host */
  struct hf__grp      *groups;  /* [0] is "all", [1] is "ungrouped" */
  size_t               ngroups, capgroups;
  struct hf__hst      *hosts;
  size_t               nhosts, caphosts;
  json_t              *hostidx; /* host name -> index in hosts */
  struct hf_inv_error *err;
};

/* Records an error at line (INI) or path (JSON, may be NULL). Returns
 * HF_EINVENTORY so callers can `return hf__inv_fail(...)`. */
int hf__inv_fail(struct hf__build *b, int line, const char *path, const char *fmt, ...)
  __attribute__((format(printf, 4, 5)));
/* Out of memory: fills err and returns HF_ENOMEM. */
int hf__inv_nomem(struct hf__build *b);

int  hf__build_init(struct hf__build *b, const char *file, struct hf_inv_error *err);
void hf__build_free(struct hf__build *b);
/* Finds or adds a group; *idx receives its index. name is copied. */
int  hf__group_get(struct hf__build *b, const char *name, int line, size_t *idx);
/* Returns the index of name or (size_t)-1. */
size_t hf__group_find(const struct hf__build *b, const char *name);
/* Finds or adds a host (name copied) and makes it a member of group gi. */
int  hf__host_add(struct hf__build *b, const char *name, size_t gi, int line,
                  const char *where, size_t *idx);
/* Adds child ci under group pi (duplicates ignored). */
int  hf__group_add_child(struct hf__build *b, size_t pi, size_t ci, int line);
/* Sets a variable; value is stolen. origin: line > 0 (INI) or path (JSON).
 * Refuses unknown hubfleet_* names (typo protection). */
/* out (256 bytes) = base.key, or base["key"] when key is not plain. */
void hf__jpath(char *out, const char *base, const char *key);
int  hf__set_var(struct hf__build *b, json_t *vars, json_t *origins, const char *key,
                 json_t *value, int line, const char *path);
/* The same for a JSON host variable (path for this call's errors only): no
 * origin is recorded; its path, _meta.hostvars.HOST.VAR, is made again for a
 * later message (a 10,000-host inventory would otherwise hold one path
 * string per variable). */
int  hf__set_hostvar(struct hf__build *b, json_t *vars, json_t *origins, const char *key,
                     json_t *value, const char *path);

/* Readers fill the build; they return 0 or an error with b->err filled. */
int hf__ini_parse(struct hf__build *b, const char *data, size_t len);
int hf__json_parse(struct hf__build *b, const char *data, size_t len);

/* Python literal (ast.literal_eval subset) into JSON; NULL when s is not a
 * literal we can represent (the caller then keeps the string). New. */
json_t *hf__pylit(const char *s);

/* Turns the merged variables of one host into h's fields and hub object.
 * vars and origins are borrowed; h->vars is set by the caller. */
int hf__host_resolve(struct hf__build *b, struct hf_host *h, const json_t *vars,
                     const json_t *origins);
/* Name of the known hubfleet variable closest to name, or NULL. Static. */
const char *hf__var_suggest(const char *name);
/* True when name is a known hubfleet_* (or consumed ansible_*) variable. */
bool hf__var_known(const char *name);

#endif /* HF_INV_INT_H */
