/* ini.c: Ansible's INI inventory format: sections, shell-quoted host lines, :vars, :children, ranges. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_proto.h"
#include "inv_int.h"

/* True when s is well-formed UTF-8 (no overlongs, surrogates or values
 * past U+10FFFF), which names and values must be to become JSON strings. */
static int utf8_ok(const unsigned char *s) {
  while (*s) {
    unsigned c = *s, n, cp, k;
    if (c < 0x80) { s++; continue; }
    if (c >= 0xC2 && c <= 0xDF) { n = 1; cp = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) { n = 2; cp = c & 0x0F; }
    else if (c >= 0xF0 && c <= 0xF4) { n = 3; cp = c & 0x07; }
    else return 0;
    for (k = 1; k <= n; k++) {
      if ((s[k] & 0xC0) != 0x80) return 0;
      cp = (cp << 6) | (s[k] & 0x3F);
    }
    if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return 0;
    s += n + 1;
  }
  return 1;
}

/* One pattern may not turn into more hosts than an inventory may hold: a
 * typo such as [1:1000000] should be an error, not a minute of allocation. */
#define HF_INV_MAX_EXPAND HF__MAX_HOSTS
#define HF_INV_MAX_TOKENS 256

enum sect { SECT_HOSTS, SECT_VARS, SECT_CHILDREN };

struct ini {
  struct hf__build *b;
  int               line;
  enum sect         state;
  size_t            group;   /* current group index */
};

static const char *const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

/* Splits a host line the way Python's shlex.split(posix, comments) does, as
 * Ansible does: quotes group, backslash escapes, '#' starts a comment even
 * inside a bare word. Tokens are written NUL-separated into buf (as long as
 * line + 1); tok[] points into it. */
static int shlex_split(struct ini *in, const char *line, char *buf, char **tok, size_t *ntok) {
  const char *p = line;
  char *o = buf;
  size_t n = 0;
  int inword = 0;
  for (;;) {
    char c = *p;
    if (c == '\0' || ((c == ' ' || c == '\t') && inword) || (c == '#')) {
      if (inword) { *o++ = '\0'; inword = 0; }
      if (c == '\0' || c == '#') break;
      p++;
      continue;
    }
    if (c == ' ' || c == '\t') { p++; continue; }
    if (!inword) {
      if (n == HF_INV_MAX_TOKENS)
        return hf__inv_fail(in->b, in->line, NULL, "too many words on one line (limit %d)", HF_INV_MAX_TOKENS);
      tok[n++] = o;
      inword = 1;
    }
    if (c == '\\') {
      if (p[1] == '\0')
        return hf__inv_fail(in->b, in->line, NULL, "line ends with a lone backslash: expected a character after it");
      *o++ = p[1];
      p += 2;
    } else if (c == '\'') {
      const char *e = strchr(p + 1, '\'');
      if (e == NULL)
        return hf__inv_fail(in->b, in->line, NULL, "no closing quotation (') on this host line");
      memcpy(o, p + 1, (size_t)(e - p - 1));
      o += e - p - 1;
      p = e + 1;
    } else if (c == '"') {
      p++;
      while (*p && *p != '"') {
        if (*p == '\\' && (p[1] == '"' || p[1] == '\\' || p[1] == '$' || p[1] == '`')) p++;
        *o++ = *p++;
      }
      if (*p != '"')
        return hf__inv_fail(in->b, in->line, NULL, "no closing quotation (\") on this host line");
      p++;
    } else {
      *o++ = c;
      p++;
    }
  }
  *ntok = n;
  return 0;
}

/* A value as Ansible stores it: a Python literal when it parses as one,
 * else the text itself. New. */
static json_t *ini_value(const char *v) {
  json_t *j = hf__pylit(v);
  return j ? j : json_string(v);
}

static int valid_name(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  if (*p == '\0') return 0;
  for (; *p; p++)
    if (*p <= ' ' || *p == 0x7f) return 0;
  return 1;
}

/* Parses one range bound list "b:e[:s]" (text between brackets). */
struct range { int alpha; long beg, end, step; int width; };

static int parse_range(struct ini *in, const char *pat, const char *r, struct range *rg) {
  char tmp[128], *parts[4], *t, *end;
  size_t np = 0;
  const char *beg_s, *end_s, *step_s;
  if (strlen(r) >= sizeof tmp)
    return hf__inv_fail(in->b, in->line, NULL, "host range [%.40s...] is too long", r);
  snprintf(tmp, sizeof tmp, "%s", r);
  /* strtok would merge "::", which must stay an error. */
  parts[np++] = tmp;
  for (t = tmp; *t; t++)
    if (*t == ':') {
      *t = '\0';
      if (np == 4) break;
      parts[np++] = t + 1;
    }
  if (np != 2 && np != 3)
    return hf__inv_fail(in->b, in->line, NULL, "bad host range [%s] in '%s': expected [begin:end] or "
                        "[begin:end:step], e.g. hub[01:20] or hub[a:f]", r, pat);
  beg_s = *parts[0] ? parts[0] : "0";
  end_s = parts[1];
  step_s = np == 3 ? parts[2] : "1";
  if (*end_s == '\0')
    return hf__inv_fail(in->b, in->line, NULL, "bad host range [%s] in '%s': the end value is missing", r, pat);
  rg->step = strtol(step_s, &end, 10);
  if (*step_s == '\0' || *end != '\0' || !isdigit((unsigned char)*step_s) || rg->step <= 0 || rg->step > HF_INV_MAX_EXPAND)
    return hf__inv_fail(in->b, in->line, NULL, "bad host range [%s] in '%s': the step must be a positive "
                        "integer, got '%s'", r, pat, step_s);
  if (strlen(beg_s) == 1 && strlen(end_s) == 1 && strchr(letters, *beg_s) && strchr(letters, *end_s)) {
    rg->alpha = 1;
    rg->width = 0;
    rg->beg = strchr(letters, *beg_s) - letters;
    rg->end = strchr(letters, *end_s) - letters;
  } else {
    const char *q;
    for (q = beg_s; *q; q++) if (!isdigit((unsigned char)*q)) break;
    if (*q == '\0') for (q = end_s; *q; q++) if (!isdigit((unsigned char)*q)) break;
    if (*q != '\0' || strlen(beg_s) > 9 || strlen(end_s) > 9)
      return hf__inv_fail(in->b, in->line, NULL, "bad host range [%s] in '%s': expected numbers (e.g. "
                          "[01:20]) or single letters (e.g. [a:f])", r, pat);
    rg->alpha = 0;
    rg->beg = strtol(beg_s, NULL, 10);
    rg->end = strtol(end_s, NULL, 10);
    rg->width = 0;
    if (beg_s[0] == '0' && strlen(beg_s) > 1) {
      if (strlen(beg_s) != strlen(end_s))
        return hf__inv_fail(in->b, in->line, NULL, "bad host range [%s] in '%s': a zero-padded range needs "
                            "begin and end of the same width, e.g. [01:20]", r, pat);
      rg->width = (int)strlen(beg_s);
    }
  }
  if (rg->beg > rg->end)
    return hf__inv_fail(in->b, in->line, NULL, "bad host range [%s] in '%s': begin is after end, so it "
                        "names no host", r, pat);
  if ((rg->end - rg->beg) / rg->step + 1 > HF_INV_MAX_EXPAND)
    return hf__inv_fail(in->b, in->line, NULL, "host range [%s] in '%s' names more than %d hosts",
                        r, pat, HF_INV_MAX_EXPAND);
  return 0;
}

/* Expands pat (with every [..] range) calling add() on each host name. */
static int expand(struct ini *in, const char *orig, const char *pat, size_t *count,
                  int (*add)(struct ini *, const char *, void *), void *arg) {
  const char *lb = strchr(pat, '['), *rb;
  char inner[128], *buf;
  struct range rg = { 0, 0, 0, 1, 0 };
  size_t headlen;
  int r = 0;
  long v;
  if (lb == NULL) {
    if (strchr(pat, ']'))
      return hf__inv_fail(in->b, in->line, NULL, "bad host pattern '%s': ']' without '['", orig);
    if (++*count > HF_INV_MAX_EXPAND)
      return hf__inv_fail(in->b, in->line, NULL, "host pattern '%s' names more than %d hosts", orig, HF_INV_MAX_EXPAND);
    return add(in, pat, arg);
  }
  rb = strchr(lb, ']');
  if (rb == NULL)
    return hf__inv_fail(in->b, in->line, NULL, "bad host pattern '%s': '[' without ']'", orig);
  if ((size_t)(rb - lb - 1) >= sizeof inner)
    return hf__inv_fail(in->b, in->line, NULL, "bad host pattern '%s': range too long", orig);
  memcpy(inner, lb + 1, (size_t)(rb - lb - 1));
  inner[rb - lb - 1] = '\0';
  if ((r = parse_range(in, orig, inner, &rg)) != 0) return r;
  headlen = (size_t)(lb - pat);
  buf = malloc(headlen + 16 + strlen(rb + 1) + 1);
  if (buf == NULL) return hf__inv_nomem(in->b);
  for (v = rg.beg; v <= rg.end && r == 0; v += rg.step) {
    memcpy(buf, pat, headlen);
    if (rg.alpha)
      sprintf(buf + headlen, "%c%s", letters[v], rb + 1);
    else
      sprintf(buf + headlen, "%0*ld%s", rg.width, v, rb + 1);
    r = expand(in, orig, buf, count, add, arg);
  }
  free(buf);
  return r;
}

/* One host line: tok[0] the pattern, tok[1..] the keys (split at '='), val[1..]
 * their values, parsed once and shared by every host the pattern names. */
struct hostline { char **tok; json_t **val; size_t ntok; long port; };

static int add_host(struct ini *in, const char *name, void *arg) {
  struct hostline *hl = arg;
  struct hf__build *b = in->b;
  size_t hi, k;
  int r;
  if (!valid_name(name))
    return hf__inv_fail(b, in->line, NULL, "bad host name '%s': expected no spaces or control characters", name);
  if ((r = hf__host_add(b, name, in->group, in->line, NULL, &hi)) != 0) return r;
  /* Ansible sets the pattern's port first, so an inline ansible_port wins. */
  if (hl->port > 0 &&
      (r = hf__set_var(b, b->hosts[hi].vars, b->hosts[hi].origins, "ansible_port",
                       json_integer(hl->port), in->line, NULL)) != 0)
    return r;
  for (k = 1; k < hl->ntok; k++)
    if ((r = hf__set_var(b, b->hosts[hi].vars, b->hosts[hi].origins, hl->tok[k],
                         json_incref(hl->val[k]), in->line, NULL)) != 0)
      return r;
  return 0;
}

static int host_line(struct ini *in, const char *line) {
  char *buf = malloc(strlen(line) + 1), *tok[HF_INV_MAX_TOKENS];
  json_t *val[HF_INV_MAX_TOKENS] = { NULL };
  struct hostline hl = { tok, val, 0, 0 };
  size_t k, count = 0;
  char *pat, *colon;
  int r;
  if (buf == NULL) return hf__inv_nomem(in->b);
  if ((r = shlex_split(in, line, buf, tok, &hl.ntok)) != 0) goto out;
  if (hl.ntok == 0) goto out;   /* only a comment after all */
  for (k = 1; k < hl.ntok; k++) {
    char *eq = strchr(tok[k], '=');
    if (eq == NULL || eq == tok[k]) {
      r = hf__inv_fail(in->b, in->line, NULL, "expected key=value host variable after the host name, got '%s'", tok[k]);
      goto out;
    }
    *eq = '\0';
    if ((val[k] = ini_value(eq + 1)) == NULL) { r = hf__inv_nomem(in->b); goto out; }
  }
  pat = tok[0];
  /* host:port, as Ansible's parse_address; more than one colon outside the
   * range brackets is an IPv6 address and has no port. */
  colon = NULL;
  {
    int depth = 0, ncolon = 0;
    for (char *p = pat; *p; p++) {
      if (*p == '[') depth++;
      else if (*p == ']') depth--;
      else if (*p == ':' && depth == 0) { ncolon++; colon = p; }
    }
    if (ncolon != 1) colon = NULL;
  }
  if (colon != NULL) {
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || !isdigit((unsigned char)colon[1]) || port < 1 || port > 65535) {
      r = hf__inv_fail(in->b, in->line, NULL, "bad port in host '%s': expected HOST:PORT with PORT in 1-65535", pat);
      goto out;
    }
    hl.port = port;
    *colon = '\0';
  }
  if (strcmp(pat, "---") == 0) {
    r = hf__inv_fail(in->b, in->line, NULL, "'---' is not a host: this looks like a YAML file, expected INI or JSON");
    goto out;
  }
  {
    size_t nr = 0;
    for (const char *q = pat; (q = strchr(q, '[')) != NULL; q++) nr++;
    if (nr > HF__MAX_RANGES) {
      r = hf__inv_fail(in->b, in->line, NULL, "host pattern '%.60s' has %zu ranges: at most %d are allowed",
                       tok[0], nr, HF__MAX_RANGES);
      goto out;
    }
  }
  r = expand(in, tok[0], pat, &count, add_host, &hl);
out:
  for (k = 1; k < hl.ntok; k++) json_decref(val[k]);
  free(buf);
  return r;
}

/* "[name]" or "[name:tag]", then blanks and an optional comment. Returns 1
 * and fills name/tag when line is a section header. */
static int section(const char *line, char *name, size_t nlen, char *tag, size_t tlen) {
  const char *p = line + 1, *s;
  size_t n;
  if (*line != '[') return 0;
  for (s = p; *p && *p != ':' && *p != ']' && !isspace((unsigned char)*p); p++) {}
  n = (size_t)(p - s);
  if (n == 0 || n >= nlen) return 0;
  memcpy(name, s, n);
  name[n] = '\0';
  tag[0] = '\0';
  if (*p == ':') {
    for (s = ++p; isalnum((unsigned char)*p) || *p == '_'; p++) {}
    n = (size_t)(p - s);
    if (n == 0 || n >= tlen) return 0;
    memcpy(tag, s, n);
    tag[n] = '\0';
  }
  if (*p++ != ']') return 0;
  while (*p == ' ' || *p == '\t') p++;
  return *p == '\0' || *p == '#' || *p == ';';
}

static int section_line(struct ini *in, const char *name, const char *tag) {
  struct hf__build *b = in->b;
  struct hf__grp *g;
  size_t gi;
  int r;
  if (!strcmp(tag, "") || !strcmp(tag, "hosts")) in->state = SECT_HOSTS;
  else if (!strcmp(tag, "vars")) in->state = SECT_VARS;
  else if (!strcmp(tag, "children")) in->state = SECT_CHILDREN;
  else
    return hf__inv_fail(b, in->line, NULL, "section [%s:%s] has unknown type '%s': expected [%s], "
                        "[%s:vars] or [%s:children]", name, tag, tag, name, name, name);
  if ((r = hf__group_get(b, name, in->line, &gi)) != 0) return r;
  g = &b->groups[gi];
  if (in->state == SECT_VARS) {
    if (!g->declared && g->vars_line == 0) g->vars_line = in->line;
  } else {
    g->declared = 1;
  }
  in->group = gi;
  return 0;
}

static int vars_line(struct ini *in, const char *line) {
  struct hf__grp *g = &in->b->groups[in->group];
  const char *eq = strchr(line, '=');
  char key[256];
  size_t n;
  const char *v;
  if (eq == NULL)
    return hf__inv_fail(in->b, in->line, NULL, "expected key=value in [%s:vars], got '%s'", g->name, line);
  n = (size_t)(eq - line);
  while (n > 0 && isspace((unsigned char)line[n - 1])) n--;
  if (n == 0 || n >= sizeof key)
    return hf__inv_fail(in->b, in->line, NULL, "expected key=value in [%s:vars], got an empty or too long key", g->name);
  memcpy(key, line, n);
  key[n] = '\0';
  for (v = eq + 1; *v == ' ' || *v == '\t'; v++) {}
  return hf__set_var(in->b, g->vars, g->origins, key, ini_value(v), in->line, NULL);
}

static int children_line(struct ini *in, const char *line) {
  struct hf__build *b = in->b;
  char name[256];
  const char *p = line;
  size_t n, ci;
  int r;
  while (*p && *p != ':' && *p != ']' && !isspace((unsigned char)*p)) p++;
  n = (size_t)(p - line);
  while (*p == ' ' || *p == '\t') p++;
  if (n == 0 || n >= sizeof name || (*p != '\0' && *p != '#'))
    return hf__inv_fail(b, in->line, NULL, "expected a group name in [%s:children], got '%s'",
                        b->groups[in->group].name, line);
  memcpy(name, line, n);
  name[n] = '\0';
  if (!strcmp(name, "all"))
    return hf__inv_fail(b, in->line, NULL, "group 'all' cannot be a child of '%s': it is every group's parent",
                        b->groups[in->group].name);
  if ((r = hf__group_get(b, name, in->line, &ci)) != 0) return r;
  return hf__group_add_child(b, in->group, ci, in->line);
}

int hf__ini_parse(struct hf__build *b, const char *data, size_t len) {
  struct ini in = { b, 0, SECT_HOSTS, 1 };
  const char *p = data, *end = data + len;
  char *line = NULL, name[256], tag[64];
  size_t i;
  int r = 0;

  if (len >= 3 && !memcmp(p, "\xEF\xBB\xBF", 3)) p += 3;
  while (p < end && r == 0) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
    char *s, *e;
    in.line++;
    free(line);
    if ((line = malloc(n + 1)) == NULL) { r = hf__inv_nomem(b); break; }
    memcpy(line, p, n);
    line[n] = '\0';
    p = nl ? nl + 1 : end;
    for (s = line; *s && isspace((unsigned char)*s); s++) {}
    for (e = s + strlen(s); e > s && isspace((unsigned char)e[-1]); e--) {}
    *e = '\0';
    if (*s == '\0' || *s == '#' || *s == ';') continue;
    for (const unsigned char *q = (const unsigned char *)s; *q; q++)
      if (*q < 0x20 && *q != '\t') {
        r = hf__inv_fail(b, in.line, NULL, "control character 0x%02x in line: expected text", *q);
        break;
      }
    if (r != 0) break;
    /* Comment lines may hold anything (Ansible skips them too). */
    if (!utf8_ok((const unsigned char *)s)) {
      r = hf__inv_fail(b, in.line, NULL, "line is not valid UTF-8: expected UTF-8 text");
      break;
    }
    if (section(s, name, sizeof name, tag, sizeof tag)) {
      r = section_line(&in, name, tag);
      continue;
    }
    if (s[0] == '[' && e[-1] == ']') {
      r = hf__inv_fail(b, in.line, NULL, "invalid section header '%s': expected [group], [group:vars] or "
                       "[group:children] with no spaces", s);
      break;
    }
    switch (in.state) {
    case SECT_HOSTS:    r = host_line(&in, s); break;
    case SECT_VARS:     r = vars_line(&in, s); break;
    case SECT_CHILDREN: r = children_line(&in, s); break;
    }
  }
  free(line);
  if (r != 0) return r;
  /* Like Ansible: [g:children] may name a group declared further down, and
   * [g:vars] may come before [g]; anything still undeclared is a typo. */
  for (i = 2; i < b->ngroups; i++) {
    struct hf__grp *g = &b->groups[i];
    if (g->declared) continue;
    if (g->vars_line)
      return hf__inv_fail(b, g->vars_line, NULL, "section [%s:vars] is for a group that is never declared: "
                          "expected a [%s] or [%s:children] section", g->name, g->name, g->name);
    return hf__inv_fail(b, g->line, NULL, "group '%s' is listed as a child but never declared: expected a "
                        "[%s] or [%s:children] section", g->name, g->name, g->name);
  }
  return 0;
}
