/* pylit.c: the subset of Python's ast.literal_eval that Ansible applies to INI values. */
/* Typing like Python keeps an INI file and the JSON ansible-inventory prints
 * for it identical: ansible_port=2222 is an int, True a bool. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "inv_int.h"

#define PYLIT_MAX_DEPTH 32

struct lit { const char *p; int depth; };

static json_t *value(struct lit *l);

static void blanks(struct lit *l) {
  while (*l->p == ' ' || *l->p == '\t') l->p++;
}

static int word(struct lit *l, const char *w) {
  size_t n = strlen(w);
  if (strncmp(l->p, w, n) != 0) return 0;
  if (isalnum((unsigned char)l->p[n]) || l->p[n] == '_') return 0;
  l->p += n;
  return 1;
}

/* Appends code point cp as UTF-8. */
static size_t utf8(char *o, unsigned long cp) {
  if (cp < 0x80) { o[0] = (char)cp; return 1; }
  if (cp < 0x800) { o[0] = (char)(0xC0 | (cp >> 6)); o[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
  if (cp < 0x10000) {
    o[0] = (char)(0xE0 | (cp >> 12)); o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[2] = (char)(0x80 | (cp & 0x3F)); return 3;
  }
  o[0] = (char)(0xF0 | (cp >> 18)); o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  o[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); o[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

/* One quoted string (optionally u/r-prefixed); triple quotes, bytes and
 * \N{...} are left to the caller's fallback (kept as text). */
static char *string1(struct lit *l) {
  const char *p = l->p;
  int raw = 0;
  char q, *out, *o;
  if (*p == 'r' || *p == 'R') { raw = 1; p++; }
  else if (*p == 'u' || *p == 'U') p++;
  if (*p != '\'' && *p != '"') return NULL;
  q = *p++;
  if (p[0] == q && p[1] == q) return NULL;     /* triple quote */
  out = o = malloc(strlen(p) * 4 + 1);
  if (out == NULL) return NULL;
  while (*p && *p != q) {
    if (*p == '\\' && !raw) {
      unsigned long cp;
      int nd, k;
      p++;
      switch (*p) {
      case '\\': case '\'': case '"': *o++ = *p++; continue;
      case 'n': *o++ = '\n'; p++; continue;
      case 't': *o++ = '\t'; p++; continue;
      case 'r': *o++ = '\r'; p++; continue;
      case 'a': *o++ = '\a'; p++; continue;
      case 'b': *o++ = '\b'; p++; continue;
      case 'f': *o++ = '\f'; p++; continue;
      case 'v': *o++ = '\v'; p++; continue;
      case 'x': nd = 2; break;
      case 'u': nd = 4; break;
      case 'U': nd = 8; break;
      default:
        if (*p >= '0' && *p <= '7') {
          cp = 0;
          for (k = 0; k < 3 && *p >= '0' && *p <= '7'; k++) cp = cp * 8 + (unsigned long)(*p++ - '0');
          o += utf8(o, cp);
          continue;
        }
        if (*p == '\0') { free(out); return NULL; }
        *o++ = '\\';           /* Python keeps unknown escapes as written */
        continue;
      }
      p++;
      cp = 0;
      for (k = 0; k < nd; k++) {
        if (!isxdigit((unsigned char)p[k])) { free(out); return NULL; }
        cp = cp * 16 + (unsigned long)(isdigit((unsigned char)p[k]) ? p[k] - '0' : (tolower((unsigned char)p[k]) - 'a' + 10));
      }
      if (cp > 0x10FFFF || cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) { free(out); return NULL; }
      p += nd;
      o += utf8(o, cp);
    } else {
      if (raw && *p == '\\' && p[1]) *o++ = *p++;
      *o++ = *p++;
    }
  }
  if (*p != q) { free(out); return NULL; }
  *o = '\0';
  if (memchr(out, '\0', (size_t)(o - out)) != NULL) { free(out); return NULL; }
  l->p = p + 1;
  return out;
}

/* Adjacent literals concatenate ('a' 'b' == 'ab'), as in Python. */
static json_t *strings(struct lit *l) {
  char *acc = NULL;
  for (;;) {
    const char *save = l->p;
    char *s = string1(l), *n;
    if (s == NULL) { l->p = save; break; }
    if (acc == NULL) acc = s;
    else {
      n = malloc(strlen(acc) + strlen(s) + 1);
      if (n == NULL) { free(acc); free(s); return NULL; }
      strcpy(n, acc);
      strcat(n, s);
      free(acc);
      free(s);
      acc = n;
    }
    save = l->p;
    blanks(l);
    if (!(*l->p == '\'' || *l->p == '"' || ((*l->p == 'r' || *l->p == 'u' || *l->p == 'R' || *l->p == 'U') &&
                                              (l->p[1] == '\'' || l->p[1] == '"')))) {
      l->p = save;
      break;
    }
  }
  if (acc == NULL) return NULL;
  {
    json_t *j = json_string(acc);   /* NULL for invalid UTF-8: kept as text */
    free(acc);
    return j;
  }
}

/* Python integer and float literals, underscores between digits allowed. */
static json_t *number(struct lit *l) {
  const char *p = l->p;
  char buf[128];
  size_t n = 0;
  int isfloat = 0, base = 10;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X' || p[1] == 'o' || p[1] == 'O' || p[1] == 'b' || p[1] == 'B')) {
    base = (p[1] == 'x' || p[1] == 'X') ? 16 : (p[1] == 'o' || p[1] == 'O') ? 8 : 2;
    p += 2;
    if (*p == '_') p++;
    while (isxdigit((unsigned char)*p) || *p == '_') {
      if (*p == '_') { if (!isxdigit((unsigned char)p[1])) return NULL; p++; continue; }
      if (n + 1 >= sizeof buf) return NULL;
      buf[n++] = *p++;
    }
  } else {
    int digits = 0;
    while (isdigit((unsigned char)*p) || (*p == '_' && digits && isdigit((unsigned char)p[1]))) {
      if (*p != '_') { if (n + 1 >= sizeof buf) return NULL; buf[n++] = *p; digits++; }
      p++;
    }
    if (*p == '.') {
      isfloat = 1;
      buf[n++] = *p++;
      while (isdigit((unsigned char)*p) || (*p == '_' && isdigit((unsigned char)p[1]) && isdigit((unsigned char)p[-1]))) {
        if (*p != '_') { if (n + 1 >= sizeof buf) return NULL; buf[n++] = *p; digits++; }
        p++;
      }
    }
    if (digits == 0) return NULL;
    if (*p == 'e' || *p == 'E') {
      const char *q = p + 1;
      if (*q == '+' || *q == '-') q++;
      if (!isdigit((unsigned char)*q)) return NULL;
      isfloat = 1;
      while (p < q) { if (n + 1 >= sizeof buf) return NULL; buf[n++] = *p++; }
      while (isdigit((unsigned char)*p)) { if (n + 1 >= sizeof buf) return NULL; buf[n++] = *p++; }
    }
  }
  if (n == 0) return NULL;
  if (isalnum((unsigned char)*p) || *p == '_' || *p == '.') return NULL;  /* 1.2.3, 0777, 1j, 12ab */
  buf[n] = '\0';
  if (!isfloat && base == 10 && n > 1 && buf[0] == '0') {
    /* Python 3 refuses 0777 but takes 00. */
    for (size_t k = 0; k < n; k++) if (buf[k] != '0') return NULL;
  }
  l->p = p;
  errno = 0;
  if (isfloat) {
    double d = strtod(buf, NULL);
    if (!isfinite(d)) return NULL;
    return json_real(d);
  } else {
    long long v = strtoll(buf, NULL, base);
    if (errno == ERANGE) return NULL;   /* bigger than JSON integers we keep: text */
    return json_integer((json_int_t)v);
  }
}

static json_t *seq(struct lit *l, char close, int tuple) {
  json_t *a = json_array(), *v;
  int n = 0, comma = 0;
  if (a == NULL) return NULL;
  for (;;) {
    blanks(l);
    if (*l->p == close) { l->p++; break; }
    if (n > 0 && !comma) { json_decref(a); return NULL; }
    if ((v = value(l)) == NULL || json_array_append_new(a, v) != 0) { json_decref(a); return NULL; }
    n++;
    blanks(l);
    comma = 0;
    if (*l->p == ',') { l->p++; comma = 1; }
  }
  if (tuple && n == 1 && !comma) {   /* (x) is just x */
    v = json_incref(json_array_get(a, 0));
    json_decref(a);
    return v;
  }
  return a;
}

static json_t *dict(struct lit *l) {
  json_t *o = json_object(), *k, *v;
  int n = 0, comma = 0;
  char kb[64];
  const char *ks;
  if (o == NULL) return NULL;
  for (;;) {
    blanks(l);
    if (*l->p == '}') { l->p++; return o; }
    if (n > 0 && !comma) break;
    if ((k = value(l)) == NULL) break;
    blanks(l);
    if (*l->p != ':') { json_decref(k); break; }   /* a set: no JSON form */
    l->p++;
    if ((v = value(l)) == NULL) { json_decref(k); break; }
    if (json_is_string(k)) ks = json_string_value(k);
    else if (json_is_integer(k)) { snprintf(kb, sizeof kb, "%" JSON_INTEGER_FORMAT, json_integer_value(k)); ks = kb; }
    else { json_decref(k); json_decref(v); break; }
    if (json_object_set_new(o, ks, v) != 0) { json_decref(k); break; }
    json_decref(k);
    n++;
    blanks(l);
    comma = 0;
    if (*l->p == ',') { l->p++; comma = 1; }
  }
  json_decref(o);
  return NULL;
}

static json_t *value(struct lit *l) {
  json_t *v = NULL;
  if (++l->depth > PYLIT_MAX_DEPTH) return NULL;
  blanks(l);
  if (*l->p == '[') { l->p++; v = seq(l, ']', 0); }
  else if (*l->p == '(') { l->p++; v = seq(l, ')', 1); }
  else if (*l->p == '{') { l->p++; v = dict(l); }
  else if (word(l, "True")) v = json_true();
  else if (word(l, "False")) v = json_false();
  else if (word(l, "None")) v = json_null();
  else if (*l->p == '-' || *l->p == '+') {
    int neg = *l->p == '-';
    l->p++;
    blanks(l);
    v = number(l);
    if (v && neg) {
      json_t *n = json_is_integer(v) ? json_integer(-json_integer_value(v)) : json_real(-json_real_value(v));
      json_decref(v);
      v = n;
    }
  }
  else if (isdigit((unsigned char)*l->p) || (*l->p == '.' && isdigit((unsigned char)l->p[1]))) v = number(l);
  else v = strings(l);
  l->depth--;
  return v;
}

json_t *hf__pylit(const char *s) {
  struct lit l = { s, 0 };
  json_t *v = value(&l);
  if (v == NULL) return NULL;
  blanks(&l);
  if (*l.p != '\0') { json_decref(v); return NULL; }   /* e.g. "1 2", "a==1" */
  return v;
}
