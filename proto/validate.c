/* validate.c: validators for values that reach a remote command, PEP 440 ordering, the op table and argument/hub checks. */
#include <stdio.h>
#include <string.h>

#include "hf_proto_int.h"

/* ---- messages ------------------------------------------------------------ */

int hf__errf(int code, char *err, size_t errlen, const char *fmt, ...) {
  va_list ap;
  if (err != NULL && errlen > 0) {
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
  }
  return code;
}

char *hf__fmt(char *buf, size_t n, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, n, fmt, ap);
  va_end(ap);
  return buf;
}

const char *hf__quote(const char *s, char *out, size_t outlen) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0, i;
  /* Worst case per input byte is 4 output bytes; reserve room for the
   * closing quote, "..." and the NUL. */
  if (outlen == 0)
    return out;
  if (outlen < 8) {
    out[0] = '\0';
    return out;
  }
  out[o++] = '"';
  for (i = 0; s[i] != '\0'; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i >= HF__ECHO_MAX || o + 4 + 5 > outlen) {
      memcpy(out + o, "\"...", 4);
      o += 4;
      out[o] = '\0';
      return out;
    }
    if (c == '"' || c == '\\') {
      out[o++] = '\\';
      out[o++] = (char)c;
    } else if (c >= 0x20 && c <= 0x7e) {
      out[o++] = (char)c;
    } else {
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    }
  }
  out[o++] = '"';
  out[o] = '\0';
  return out;
}

const char *hf__sanitize(const char *s, char *out, size_t outlen) {
  size_t i;
  if (outlen == 0)
    return out;
  for (i = 0; s[i] != '\0' && i + 1 < outlen; i++)
    out[i] = ((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] <= 0x7e) ? s[i] : '?';
  out[i] = '\0';
  return out;
}

const char *hf__describe(const json_t *v, char *out, size_t outlen) {
  const char *t;
  switch (json_typeof(v)) {
  case JSON_STRING:  return hf__quote(json_string_value(v), out, outlen);
  case JSON_OBJECT:  t = "an object"; break;
  case JSON_ARRAY:   t = "an array"; break;
  case JSON_INTEGER: t = "an integer"; break;
  case JSON_REAL:    t = "a real number"; break;
  case JSON_TRUE:    t = "true"; break;
  case JSON_FALSE:   t = "false"; break;
  default:           t = "null"; break;
  }
  snprintf(out, outlen, "%s", t);
  return out;
}

size_t hf__utf8_len(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len, i;
  uint32_t cp;
  if (n == 0)
    return 0;
  if (c < 0x80)
    return 1;
  if (c >= 0xc2 && c <= 0xdf) {
    len = 2;
    cp = c & 0x1f;
  } else if (c >= 0xe0 && c <= 0xef) {
    len = 3;
    cp = c & 0x0f;
  } else if (c >= 0xf0 && c <= 0xf4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;
  }
  if (n < len)
    return 0;
  for (i = 1; i < len; i++) {
    if ((s[i] & 0xc0) != 0x80)
      return 0;
    cp = (cp << 6) | (s[i] & 0x3f);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return len;
}

/* ---- character classes ------------------------------------------------------ */

static bool hf__alnum(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool hf__digit(unsigned char c) {
  return c >= '0' && c <= '9';
}

/* ---- PEP 440 ------------------------------------------------------------------ */

#define HF__VER_MAXLEN  128
#define HF__VER_MAXREL  32
#define HF__VER_MAXLOC  32
#define HF__NUM_DIGITS  18  /* fits uint64 with room: no overflow arithmetic */

/* A parsed version. Absent segments are marked by their has_ flag. */
struct hf__ver {
  uint64_t    epoch;
  uint64_t    rel[HF__VER_MAXREL];
  int         nrel;
  int         pre_kind;  /* -1 none, 0 a, 1 b, 2 rc */
  uint64_t    pre;
  bool        has_post;
  uint64_t    post;
  bool        has_dev;
  uint64_t    dev;
  const char *local;     /* borrowed from the input: after '+', or NULL */
};

/* Reads a decimal number at *p (1..HF__NUM_DIGITS digits); advances *p. */
static bool hf__num(const char **p, uint64_t *v) {
  const char *s = *p;
  int n = 0;
  *v = 0;
  while (hf__digit((unsigned char)*s)) {
    if (++n > HF__NUM_DIGITS)
      return false;
    *v = *v * 10 + (uint64_t)(*s - '0');
    s++;
  }
  if (n == 0)
    return false;
  *p = s;
  return true;
}

static bool hf__prefix(const char **p, const char *word) {
  size_t n = strlen(word);
  if (strncmp(*p, word, n) != 0)
    return false;
  *p += n;
  return true;
}

/* Parses the canonical spelling of a PEP 440 version:
 *   [N!]N(.N)*[{a|b|rc}N][.postN][.devN][+LOCAL]
 * LOCAL is [a-z0-9]+ segments joined by '.'. Only the canonical form is
 * accepted (what `packaging` prints), because whatever we accept is handed
 * verbatim to pip/conda: one spelling per version keeps journal entries and
 * comparisons unambiguous. */
static bool hf__ver_parse(const char *s, struct hf__ver *v) {
  const char *p = s, *q;
  uint64_t n;
  memset(v, 0, sizeof *v);
  v->pre_kind = -1;
  if (s == NULL || strnlen(s, HF__VER_MAXLEN + 1) > HF__VER_MAXLEN)
    return false;
  if (!hf__num(&p, &n))
    return false;
  if (*p == '!') {
    v->epoch = n;
    p++;
    if (!hf__num(&p, &n))
      return false;
  }
  v->rel[v->nrel++] = n;
  while (*p == '.' && hf__digit((unsigned char)p[1])) {
    p++;
    if (v->nrel == HF__VER_MAXREL || !hf__num(&p, &n))
      return false;
    v->rel[v->nrel++] = n;
  }
  if (hf__prefix(&p, "rc"))
    v->pre_kind = 2;
  else if (hf__prefix(&p, "a"))
    v->pre_kind = 0;
  else if (hf__prefix(&p, "b"))
    v->pre_kind = 1;
  if (v->pre_kind >= 0 && !hf__num(&p, &v->pre))
    return false;
  if (hf__prefix(&p, ".post")) {
    v->has_post = true;
    if (!hf__num(&p, &v->post))
      return false;
  }
  if (hf__prefix(&p, ".dev")) {
    v->has_dev = true;
    if (!hf__num(&p, &v->dev))
      return false;
  }
  if (*p == '+') {
    int nseg = 0;
    v->local = ++p;
    for (;;) {
      q = p;
      while (hf__digit((unsigned char)*p) || (*p >= 'a' && *p <= 'z'))
        p++;
      if (p == q || ++nseg > HF__VER_MAXLOC)
        return false;
      if (*p != '.')
        break;
      p++;
    }
  }
  return *p == '\0';
}

bool hf_valid_version(const char *s) {
  struct hf__ver v;
  return hf__ver_parse(s, &v);
}

static int hf__u64cmp(uint64_t a, uint64_t b) {
  return a < b ? -1 : a > b;
}

/* Compares local version labels the way PEP 440 says: segment by segment,
 * numeric segments numerically and above alphanumeric ones, alphanumeric
 * ones lexically; a label that is a prefix of the other sorts first. */
static int hf__local_cmp(const char *a, const char *b) {
  while (*a != '\0' && *b != '\0') {
    size_t la = strcspn(a, "."), lb = strcspn(b, ".");
    bool na = strspn(a, "0123456789") >= la, nb = strspn(b, "0123456789") >= lb;
    int c;
    if (na && nb) {
      uint64_t x = 0, y = 0;
      size_t i;
      /* Leading zeros do not change the value; compare without them. */
      while (la > 1 && *a == '0') { a++; la--; }
      while (lb > 1 && *b == '0') { b++; lb--; }
      if (la != lb)
        return la < lb ? -1 : 1;
      for (i = 0; i < la; i++) {
        x = (uint64_t)(a[i] - '0');
        y = (uint64_t)(b[i] - '0');
        if (x != y)
          return hf__u64cmp(x, y);
      }
      c = 0;
    } else if (na != nb) {
      return na ? 1 : -1;
    } else {
      size_t m = la < lb ? la : lb;
      c = memcmp(a, b, m);
      if (c == 0 && la != lb)
        c = la < lb ? -1 : 1;
      if (c != 0)
        return c < 0 ? -1 : 1;
    }
    a += la;
    b += lb;
    if (*a == '.') a++;
    if (*b == '.') b++;
  }
  return (*a != '\0') - (*b != '\0');
}

/* Sort key of the pre-release part as packaging computes it: a dev release
 * with neither pre nor post sorts before every pre-release of its release;
 * no pre-release sorts after all of them. Returns a rank and a number. */
static void hf__pre_key(const struct hf__ver *v, int *rank, uint64_t *n) {
  if (v->pre_kind < 0 && !v->has_post && v->has_dev) {
    *rank = -1;
    *n = 0;
  } else if (v->pre_kind < 0) {
    *rank = 3;
    *n = 0;
  } else {
    *rank = v->pre_kind;
    *n = v->pre;
  }
}

int hf_version_cmp(const char *a, const char *b) {
  struct hf__ver x, y;
  bool okx = hf__ver_parse(a, &x), oky = hf__ver_parse(b, &y);
  int i, c, rx, ry;
  uint64_t nx, ny;
  if (!okx || !oky) {
    if (okx != oky)
      return okx ? 1 : -1;
    /* Both unparsable: any consistent order will do. */
    c = strcmp(a != NULL ? a : "", b != NULL ? b : "");
    return c < 0 ? -1 : c > 0;
  }
  if ((c = hf__u64cmp(x.epoch, y.epoch)) != 0)
    return c;
  /* Release: missing components count as zero, so 1.0 == 1.0.0. */
  for (i = 0; i < x.nrel || i < y.nrel; i++) {
    c = hf__u64cmp(i < x.nrel ? x.rel[i] : 0, i < y.nrel ? y.rel[i] : 0);
    if (c != 0)
      return c;
  }
  hf__pre_key(&x, &rx, &nx);
  hf__pre_key(&y, &ry, &ny);
  if (rx != ry)
    return rx < ry ? -1 : 1;
  if ((c = hf__u64cmp(nx, ny)) != 0)
    return c;
  /* No post-release sorts before any post-release. */
  if (x.has_post != y.has_post)
    return x.has_post ? 1 : -1;
  if ((c = hf__u64cmp(x.post, y.post)) != 0)
    return c;
  /* No dev release sorts after any dev release. */
  if (x.has_dev != y.has_dev)
    return x.has_dev ? -1 : 1;
  if ((c = hf__u64cmp(x.dev, y.dev)) != 0)
    return c;
  if ((x.local != NULL) != (y.local != NULL))
    return x.local != NULL ? 1 : -1;
  return x.local != NULL ? hf__local_cmp(x.local, y.local) : 0;
}

/* ---- names, paths, URLs ---------------------------------------------------------- */

bool hf_valid_pkgname(const char *s) {
  size_t i, n;
  if (s == NULL || (n = strnlen(s, 129)) == 0 || n > 128)
    return false;
  if (!hf__alnum((unsigned char)s[0]) || !hf__alnum((unsigned char)s[n - 1]))
    return false;
  for (i = 1; i + 1 < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (!hf__alnum(c) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return true;
}

bool hf_valid_pkgpin(const char *s) {
  const char *eq;
  char name[129];
  size_t n;
  if (s == NULL || (eq = strstr(s, "==")) == NULL)
    return false;
  n = (size_t)(eq - s);
  if (n == 0 || n > 128)
    return false;
  memcpy(name, s, n);
  name[n] = '\0';
  return hf_valid_pkgname(name) && hf_valid_version(eq + 2);
}

bool hf_valid_abspath(const char *s) {
  size_t n, i;
  if (s == NULL || s[0] != '/' || (n = strnlen(s, 4097)) > 4096)
    return false;
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c < 0x20 || c == 0x7f)
      return false;
    /* At a segment start: refuse "." and ".." segments. */
    if (c == '/' && s[i + 1] == '.') {
      const char *seg = s + i + 1;
      size_t len = strcspn(seg, "/");
      if (len == 1 || (len == 2 && seg[1] == '.'))
        return false;
    }
  }
  return true;
}

bool hf_valid_service_name(const char *s) {
  size_t i;
  if (s == NULL || s[0] == '\0' || s[0] == '-')
    return false;
  for (i = 0; s[i] != '\0'; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i >= 128)
      return false;
    if (!hf__alnum(c) && strchr("@._:-", c) == NULL)
      return false;
  }
  return true;
}

bool hf_valid_id(const char *s) {
  size_t i;
  if (s == NULL || s[0] == '\0' || s[0] == '-' || s[0] == '.')
    return false;
  for (i = 0; s[i] != '\0'; i++) {
    unsigned char c = (unsigned char)s[i];
    if (i >= 64)
      return false;
    if (!hf__alnum(c) && c != '.' && c != '_' && c != '-')
      return false;
  }
  return true;
}

/* RFC 3986 characters allowed after the authority, minus the ones a human
 * pasting a URL into a shell or a log would trip over (quotes, backslash,
 * backtick, angle brackets, braces, pipe, caret, space). */
static bool hf__url_path_char(unsigned char c) {
  return hf__alnum(c) || (c != '\0' && strchr("-._~:/?#[]@!$&()*+,;=%", c) != NULL);
}

bool hf_valid_url(const char *s) {
  const char *p, *h;
  size_t n;
  if (s == NULL || (n = strnlen(s, 2049)) > 2048)
    return false;
  p = s;
  if (!hf__prefix(&p, "http://") && !hf__prefix(&p, "https://"))
    return false;
  h = p;
  if (*p == '[') {
    /* IPv6 literal: hex digits, ':' and '.' (for v4-mapped forms). */
    p++;
    while (*p != '\0' && (hf__digit((unsigned char)*p) || strchr("abcdefABCDEF:.", *p) != NULL))
      p++;
    if (*p != ']' || p == h + 1)
      return false;
    p++;
  } else {
    /* Host name or IPv4: labels of [A-Za-z0-9-], never empty, no leading '-'.
     * No userinfo: credentials in a URL end up in logs and the state db. */
    for (;;) {
      const char *l = p;
      while (hf__alnum((unsigned char)*p) || *p == '-')
        p++;
      if (p == l || *l == '-' || p - l > 63)
        return false;
      if (*p != '.')
        break;
      p++;
    }
    if (p - h > 253)
      return false;
  }
  if (*p == ':') {
    uint64_t port;
    p++;
    if (!hf__num(&p, &port) || port == 0 || port > 65535)
      return false;
  }
  if (*p == '\0')
    return true;
  if (*p != '/')
    return false;
  for (; *p != '\0'; p++)
    if (!hf__url_path_char((unsigned char)*p))
      return false;
  return true;
}

/* ---- the op table (HF_OP_MAP in hf_proto.h) ------------------------------------------ */

#define HF__A_ROLLOUT_REQ { "rollout", HF_ARG_ID, true },
#define HF__A_ROLLOUT_OPT { "rollout", HF_ARG_ID, false },
#define HF__A_TARGET_REQ  { "target", HF_ARG_VERSION, true },
#define HF__A_TARGET_NO

/* Each op's argument spec: hub, rollout, target, timeout_ms, then its own. */
#define HF__OP_ARGS(id, nm, changes, journaled, rollout, target, timeout, step, extra)        \
  static const struct hf_arg_spec hf__args_##id[] = {                                         \
    { "hub", HF_ARG_HUB, true }, HF__A_ROLLOUT_##rollout HF__A_TARGET_##target                \
    { "timeout_ms", HF_ARG_INT, false }, extra { NULL, HF_ARG_STRING, false } };
HF_OP_MAP(HF__OP_ARGS)
#undef HF__OP_ARGS

static const struct hf_op hf__ops[HF_OP__COUNT] = {
#define HF__OP_ROW(id, nm, changes, journaled, rollout, target, timeout, step, extra)         \
  [HF_OP_##id] = { nm, hf__args_##id, HF_OP_##id, changes, journaled, HF_OPARG_##rollout,    \
                   HF_OPARG_##target, timeout, step },
  HF_OP_MAP(HF__OP_ROW)
#undef HF__OP_ROW
};

static const char *const hf__op_names[HF_OP__COUNT + 1] = {
#define HF__OP_NAME(id, nm, ...) nm,
  HF_OP_MAP(HF__OP_NAME)
#undef HF__OP_NAME
  NULL };

const struct hf_op *hf_op_by_name(const char *name) {
  size_t i;
  if (name == NULL)
    return NULL;
  for (i = 0; i < HF_OP__COUNT; i++)
    if (strcmp(hf__ops[i].name, name) == 0)
      return &hf__ops[i];
  return NULL;
}

const struct hf_op *hf_op_get(enum hf_op_id id) {
  return (unsigned)id < HF_OP__COUNT ? &hf__ops[id] : NULL;
}

int64_t hf_op_default_timeout_ms(const char *name) {
  const struct hf_op *op = hf_op_by_name(name);
  return op != NULL ? op->default_timeout_ms : 0;
}

int hf_op_procedure_pos(const char *name) {
  const struct hf_op *op = hf_op_by_name(name);
  return op != NULL ? op->step : 0;
}

const struct hf_op *hf_op_journaled_before(const struct hf_op *op) {
  const struct hf_op *best = NULL;
  size_t i;
  if (op == NULL || !op->journaled || op->step <= 0)
    return NULL;
  for (i = 0; i < HF_OP__COUNT; i++)
    if (hf__ops[i].journaled && hf__ops[i].step > 0 && hf__ops[i].step < op->step &&
        (best == NULL || hf__ops[i].step > best->step))
      best = &hf__ops[i];
  return best;
}

const char *const *hf_proto_op_names(void) {
  return hf__op_names;
}

/* ---- typed values -------------------------------------------------------------------- */

#define HF__STR_MAX   4096  /* HF_ARG_STRING and argv elements */
#define HF__ARRAY_MAX 256   /* elements in any array argument */

/* Checks a string value with a validator; on failure names the field and
 * echoes the (escaped, truncated) value. */
static int hf__check_str(const json_t *v, bool (*ok)(const char *), const char *what,
                         const char *field, char *err, size_t errlen) {
  char got[HF__QUOTE_BUF];
  if (!json_is_string(v))
    return hf__errf(HF_ETYPE, err, errlen, "%s: expected %s, got %s", field, what,
                    hf__describe(v, got, sizeof got));
  if (!ok(json_string_value(v)))
    return hf__errf(HF_EBADARG, err, errlen, "%s: expected %s, got %s", field, what,
                    hf__describe(v, got, sizeof got));
  return 0;
}

/* A string that may hold anything but control characters, within the limit. */
static bool hf__plain_string(const char *s) {
  size_t i;
  for (i = 0; s[i] != '\0'; i++)
    if (i >= HF__STR_MAX || (unsigned char)s[i] < 0x20 || s[i] == 0x7f)
      return false;
  return true;
}

static bool hf__any_string(const char *s) {
  return strnlen(s, HF__STR_MAX + 1) <= HF__STR_MAX;
}

/* Checks an array whose every element passes a string validator. min is the
 * least number of elements allowed; what describes one element. */
static int hf__check_str_array(const json_t *v, size_t min, bool (*ok)(const char *),
                               const char *what, const char *field, char *err, size_t errlen) {
  char got[HF__QUOTE_BUF], name[256];
  size_t i;
  int r;
  if (!json_is_array(v))
    return hf__errf(HF_ETYPE, err, errlen, "%s: expected an array, each element %s, got %s",
                    field, what, hf__describe(v, got, sizeof got));
  if (json_array_size(v) < min)
    return hf__errf(HF_EBADARG, err, errlen, "%s: expected at least %zu element%s", field, min,
                    min == 1 ? "" : "s");
  if (json_array_size(v) > HF__ARRAY_MAX)
    return hf__errf(HF_EBADARG, err, errlen, "%s: more than %d elements", field, HF__ARRAY_MAX);
  for (i = 0; i < json_array_size(v); i++) {
    hf__fmt(name, sizeof name, "%s[%zu]", field, i);
    if ((r = hf__check_str(json_array_get(v, i), ok, what, name, err, errlen)) != 0)
      return r;
  }
  return 0;
}

/* An argv array: at least one element, the first an absolute path (no PATH
 * lookup on the host), the rest plain strings. */
static int hf__check_argv(const json_t *v, const char *field, char *err, size_t errlen) {
  char name[256];
  int r;
  if ((r = hf__check_str_array(v, 1, hf__plain_string, "a string without control characters",
                               field, err, errlen)) != 0)
    return r;
  hf__fmt(name, sizeof name, "%s[0]", field);
  return hf__check_str(json_array_get(v, 0), hf_valid_abspath,
                       "an absolute program path without . or .. segments", name, err, errlen);
}

static const char *const hf__what_abspath = "an absolute path without . or .. segments or control characters";
static const char *const hf__what_url = "an http(s)://host[:port][/path] URL without spaces, quotes or backslashes";

/* ---- the hub description ----------------------------------------------------------------- */

enum hf__hubkind {
  HF__H_ABSPATH, HF__H_ABSPATHS, HF__H_DB, HF__H_ARGV, HF__H_SERVICE, HF__H_URL,
  HF__H_INSTALLER, HF__H_PINS, HF__H_NAMES, HF__H_BOOL
};

struct hf__hubkey {
  const char       *name;
  enum hf__hubkind  kind;
  bool              required;
};

static const struct hf__hubkey hf__hub_keys[] = {
  { "hub_env",           HF__H_ABSPATH,   true },
  { "user_envs",         HF__H_ABSPATHS,  false },
  { "config",            HF__H_ABSPATH,   true },
  { "db",                HF__H_DB,        true },
  { "db_dump",           HF__H_ARGV,      false },
  { "service",           HF__H_SERVICE,   true },
  { "supervisor_config", HF__H_ABSPATH,   false },
  { "start",             HF__H_ARGV,      false },
  { "stop",              HF__H_ARGV,      false },
  { "health_url",        HF__H_URL,       false },
  { "hub_log",           HF__H_ABSPATH,   false },
  { "installer",         HF__H_INSTALLER, false },
  { "index_url",         HF__H_URL,       false },
  { "find_links",        HF__H_ABSPATH,   false },
  { "extra_packages",    HF__H_PINS,      false },
  { "report_packages",   HF__H_NAMES,     false },
  { "backup_dir",        HF__H_ABSPATH,   false },
  { "backup_homes",      HF__H_ABSPATHS,  false },
  { "state_dir",         HF__H_ABSPATH,   false },
  { "become",            HF__H_BOOL,      false },
  { NULL,                HF__H_BOOL,      false },
};

/* sqlite:///ABSPATH, or a MySQL/PostgreSQL SQLAlchemy URL (with an optional
 * +driver suffix on the scheme). Server URLs may carry credentials: they are
 * the hub's own db_url and never go into argv. */
static bool hf__valid_db(const char *s) {
  const char *p = s;
  size_t i;
  if (hf__prefix(&p, "sqlite:///"))
    return hf_valid_abspath(p);
  if (!hf__prefix(&p, "postgresql") && !hf__prefix(&p, "postgres") && !hf__prefix(&p, "mysql"))
    return false;
  if (*p == '+') {
    const char *d = ++p;
    while ((*p >= 'a' && *p <= 'z') || hf__digit((unsigned char)*p) || *p == '_')
      p++;
    if (p == d)
      return false;
  }
  if (!hf__prefix(&p, "://") || *p == '\0' || strlen(p) > 2048)
    return false;
  for (i = 0; p[i] != '\0'; i++) {
    unsigned char c = (unsigned char)p[i];
    if (c <= 0x20 || c >= 0x7f || strchr("\"'`\\<>", c) != NULL)
      return false;
  }
  return true;
}

/* systemd:NAME, supervisord:NAME, docker:NAME, or command. */
static bool hf__valid_service(const char *s) {
  const char *p = s;
  if (strcmp(s, "command") == 0)
    return true;
  if (hf__prefix(&p, "systemd:") || hf__prefix(&p, "supervisord:") || hf__prefix(&p, "docker:"))
    return hf_valid_service_name(p);
  return false;
}

static bool hf__valid_installer(const char *s) {
  return strcmp(s, "pip") == 0 || strcmp(s, "conda") == 0 || strcmp(s, "auto") == 0;
}

static int hf__check_hub_value(const struct hf__hubkey *k, const json_t *v, const char *field,
                               char *err, size_t errlen) {
  char got[HF__QUOTE_BUF];
  switch (k->kind) {
  case HF__H_ABSPATH:
    return hf__check_str(v, hf_valid_abspath, hf__what_abspath, field, err, errlen);
  case HF__H_ABSPATHS:
    return hf__check_str_array(v, 0, hf_valid_abspath, hf__what_abspath, field, err, errlen);
  case HF__H_DB:
    return hf__check_str(v, hf__valid_db,
                         "sqlite:////ABSOLUTE/PATH or a mysql:// or postgresql:// URL", field, err,
                         errlen);
  case HF__H_ARGV:
    return hf__check_argv(v, field, err, errlen);
  case HF__H_SERVICE:
    return hf__check_str(v, hf__valid_service,
                         "systemd:NAME, supervisord:NAME, docker:NAME or command", field, err,
                         errlen);
  case HF__H_URL:
    return hf__check_str(v, hf_valid_url, hf__what_url, field, err, errlen);
  case HF__H_INSTALLER:
    return hf__check_str(v, hf__valid_installer, "pip, conda or auto", field, err, errlen);
  case HF__H_PINS:
    return hf__check_str_array(v, 0, hf_valid_pkgpin, "a NAME==VERSION pin", field, err, errlen);
  case HF__H_NAMES:
    return hf__check_str_array(v, 0, hf_valid_pkgname, "a package name", field, err, errlen);
  case HF__H_BOOL:
    if (!json_is_boolean(v))
      return hf__errf(HF_ETYPE, err, errlen, "%s: expected true or false, got %s", field,
                      hf__describe(v, got, sizeof got));
    return 0;
  }
  return hf__errf(HF_EINVAL, err, errlen, "%s: no rule for this key", field);
}

int hf_proto_hub_validate(const json_t *hub, const char *prefix, char *err, size_t errlen) {
  char got[HF__QUOTE_BUF], field[256];
  const struct hf__hubkey *k;
  const char *key, *svc;
  json_t *v;
  bool command;
  int r;
  if (prefix == NULL)
    prefix = "hub";
  if (!json_is_object(hub))
    return hf__errf(hub == NULL ? HF_EMISSING : HF_ETYPE, err, errlen,
                    "%s: expected an object, got %s", prefix,
                    hub == NULL ? "nothing" : hf__describe(hub, got, sizeof got));
  /* Unknown keys first: a typo such as "hub_evn" must not pass as "no value". */
  json_object_foreach(hf__unconst(hub), key, v) {
    for (k = hf__hub_keys; k->name != NULL; k++)
      if (strcmp(k->name, key) == 0)
        break;
    if (k->name == NULL)
      return hf__errf(HF_EBADARG, err, errlen, "%s: unknown key %s", prefix,
                      hf__quote(key, got, sizeof got));
  }
  for (k = hf__hub_keys; k->name != NULL; k++) {
    hf__fmt(field, sizeof field, "%s.%s", prefix, k->name);
    v = json_object_get(hub, k->name);
    if (v == NULL) {
      if (k->required)
        return hf__errf(HF_EMISSING, err, errlen, "%s: required key is missing", field);
      continue;
    }
    if ((r = hf__check_hub_value(k, v, field, err, errlen)) != 0)
      return r;
  }
  /* start/stop belong to service "command" and only to it. */
  svc = json_string_value(json_object_get(hub, "service"));
  command = svc != NULL && strcmp(svc, "command") == 0;
  if (command) {
    if (json_object_get(hub, "start") == NULL)
      return hf__errf(HF_EMISSING, err, errlen, "%s.start: required when service is \"command\"",
                      prefix);
    if (json_object_get(hub, "stop") == NULL)
      return hf__errf(HF_EMISSING, err, errlen, "%s.stop: required when service is \"command\"",
                      prefix);
  } else {
    if (json_object_get(hub, "start") != NULL)
      return hf__errf(HF_EBADARG, err, errlen, "%s.start: only allowed when service is \"command\"",
                      prefix);
    if (json_object_get(hub, "stop") != NULL)
      return hf__errf(HF_EBADARG, err, errlen, "%s.stop: only allowed when service is \"command\"",
                      prefix);
  }
  return 0;
}

/* ---- operation arguments -------------------------------------------------------------------- */

static int hf__check_arg(const struct hf_arg_spec *a, const json_t *v, const char *field,
                         char *err, size_t errlen) {
  char got[HF__QUOTE_BUF];
  switch (a->type) {
  case HF_ARG_STRING:
    return hf__check_str(v, hf__any_string, "a string of at most 4096 bytes", field, err, errlen);
  case HF_ARG_INT:
    if (!json_is_integer(v))
      return hf__errf(HF_ETYPE, err, errlen, "%s: expected an integer >= 0, got %s", field,
                      hf__describe(v, got, sizeof got));
    if (json_integer_value(v) < 0)
      return hf__errf(HF_EBADARG, err, errlen, "%s: expected an integer >= 0, got %" JSON_INTEGER_FORMAT,
                      field, json_integer_value(v));
    return 0;
  case HF_ARG_BOOL:
    if (!json_is_boolean(v))
      return hf__errf(HF_ETYPE, err, errlen, "%s: expected true or false, got %s", field,
                      hf__describe(v, got, sizeof got));
    return 0;
  case HF_ARG_VERSION:
    return hf__check_str(v, hf_valid_version, "a PEP 440 version", field, err, errlen);
  case HF_ARG_ABSPATH:
    return hf__check_str(v, hf_valid_abspath, hf__what_abspath, field, err, errlen);
  case HF_ARG_ID:
    return hf__check_str(v, hf_valid_id, "an id of 1-64 characters from [A-Za-z0-9._-]", field,
                         err, errlen);
  case HF_ARG_HUB:
    return hf_proto_hub_validate(v, field, err, errlen);
  case HF_ARG_PKGPINS:
    return hf__check_str_array(v, 0, hf_valid_pkgpin, "a NAME==VERSION pin", field, err, errlen);
  case HF_ARG_PKGNAMES:
    return hf__check_str_array(v, 0, hf_valid_pkgname, "a package name", field, err, errlen);
  case HF_ARG_OBJECT:
    if (!json_is_object(v))
      return hf__errf(HF_ETYPE, err, errlen, "%s: expected an object, got %s", field,
                      hf__describe(v, got, sizeof got));
    return 0;
  }
  return hf__errf(HF_EINVAL, err, errlen, "%s: no rule for this argument type", field);
}

int hf__args_validate(const struct hf_op *op, const json_t *args, const char *prefix,
                      char *err, size_t errlen) {
  char got[HF__QUOTE_BUF], field[256];
  const struct hf_arg_spec *a;
  const char *key;
  json_t *v;
  int r;
  if (op == NULL)
    return hf__errf(HF_EINVAL, err, errlen, "%s: no operation given", prefix);
  if (args != NULL && !json_is_object(args))
    return hf__errf(HF_ETYPE, err, errlen, "%s: expected an object, got %s", prefix,
                    hf__describe(args, got, sizeof got));
  if (args != NULL) {
    json_object_foreach(hf__unconst(args), key, v) {
      for (a = op->args; a->name != NULL; a++)
        if (strcmp(a->name, key) == 0)
          break;
      if (a->name == NULL)
        return hf__errf(HF_EBADARG, err, errlen, "%s: unknown argument %s for op %s", prefix,
                        hf__quote(key, got, sizeof got), op->name);
    }
  }
  for (a = op->args; a->name != NULL; a++) {
    hf__fmt(field, sizeof field, "%s.%s", prefix, a->name);
    v = args != NULL ? json_object_get(args, a->name) : NULL;
    if (v == NULL) {
      if (a->required)
        return hf__errf(HF_EMISSING, err, errlen, "%s: required by op %s", field, op->name);
      continue;
    }
    if ((r = hf__check_arg(a, v, field, err, errlen)) != 0)
      return r;
  }
  return 0;
}

int hf_proto_args_validate(const struct hf_op *op, const json_t *args, char *err, size_t errlen) {
  return hf__args_validate(op, args, "args", err, errlen);
}
