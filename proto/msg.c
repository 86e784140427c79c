/* msg.c: message builders and the shape check every decoded message passes before it is used. */
#include <stdlib.h>
#include <string.h>

#include "hf_proto_int.h"

/* ---- builders ------------------------------------------------------------------ */

/* jansson integers are signed 64-bit; ids above that cannot be sent. They are
 * clamped to -1 so the message fails validation instead of wrapping. */
static json_int_t hf__id(uint64_t id) {
  return id > (uint64_t)INT64_MAX ? -1 : (json_int_t)id;
}

/* A JSON string (new) from bytes that may not be UTF-8 (command output
 * often is not): invalid bytes become U+FFFD so a log line never turns into
 * an out-of-memory report. NULL stays "" ; NULL return only on OOM. */
static json_t *hf__jstr(const char *s) {
  json_t *v;
  char *fixed, *o;
  size_t n, i;
  if (s == NULL)
    s = "";
  if ((v = json_string(s)) != NULL)
    return v;
  n = strlen(s);
  if (n > (SIZE_MAX - 1) / 3 || (fixed = malloc(n * 3 + 1)) == NULL)
    return NULL;
  for (i = 0, o = fixed; i < n;) {
    size_t len = hf__utf8_len((const unsigned char *)s + i, n - i);
    if (len == 0) {
      memcpy(o, "\xef\xbf\xbd", 3);
      o += 3;
      i++;
    } else {
      memcpy(o, s + i, len);
      o += len;
      i += len;
    }
  }
  *o = '\0';
  v = json_string(fixed);
  free(fixed);
  return v;
}

/* Sets obj[key] to v (stolen); on failure obj is freed and NULL returned, so
 * builders chain without leaking. */
static json_t *hf__set(json_t *obj, const char *key, json_t *v) {
  if (obj == NULL || v == NULL || json_object_set_new(obj, key, v) != 0) {
    json_decref(obj);
    if (obj == NULL || v == NULL)
      json_decref(v);
    return NULL;
  }
  return obj;
}

/* {"type":type,"id":id} (new), the start of every message but hello. */
static json_t *hf__head(const char *type, uint64_t id) {
  json_t *m = hf__set(json_object(), "type", json_string(type));
  return hf__set(m, "id", json_integer(hf__id(id)));
}

json_t *hf_msg_hello(const char *agent_version, const char *arch) {
  json_t *m = hf__set(json_object(), "type", json_string("hello"));
  m = hf__set(m, "proto", json_integer(HF_PROTO_VERSION));
  m = hf__set(m, "agent", hf__jstr(agent_version));
  return hf__set(m, "arch", hf__jstr(arch));
}

json_t *hf_msg_request(uint64_t id, const char *op, json_t *args) {
  /* An absent args becomes {} so the receiver sees one shape. */
  json_t *m = hf__set(hf__head("request", id), "op", hf__jstr(op));
  if (args == NULL)
    args = json_object();
  if (m == NULL) {
    json_decref(args);  /* stolen even on failure */
    return NULL;
  }
  return hf__set(m, "args", args);
}

json_t *hf_msg_event_text(uint64_t id, const char *level, const char *text) {
  json_t *m = hf__set(hf__head("event", id), "level", hf__jstr(level != NULL ? level : "info"));
  return hf__set(m, "text", hf__jstr(text));
}

json_t *hf_msg_event_progress(uint64_t id, const char *step, int64_t done, int64_t total) {
  json_t *p = hf__set(json_object(), "step", hf__jstr(step));
  json_t *m = hf__set(hf__head("event", id), "level", json_string("info"));
  p = hf__set(p, "done", json_integer((json_int_t)done));
  p = hf__set(p, "total", json_integer((json_int_t)total));
  if (m == NULL) {
    json_decref(p);
    return NULL;
  }
  return hf__set(m, "progress", p);
}

json_t *hf_msg_result_ok(uint64_t id, json_t *data) {
  json_t *m = hf__set(hf__head("result", id), "ok", json_true());
  if (data == NULL)
    data = json_object();
  if (m == NULL) {
    json_decref(data);  /* stolen even on failure */
    return NULL;
  }
  return hf__set(m, "data", data);
}

json_t *hf_msg_result_err(uint64_t id, int err, const char *message) {
  json_t *e = hf__set(json_object(), "code", json_string(hf_err_code(err)));
  json_t *m = hf__set(hf__head("result", id), "ok", json_false());
  e = hf__set(e, "message", hf__jstr(message != NULL ? message : hf_strerror(err)));
  if (m == NULL) {
    json_decref(e);
    return NULL;
  }
  return hf__set(m, "error", e);
}

/* ---- validation ------------------------------------------------------------------ */

/* Field rules for the envelope of each message type. Fields not listed are
 * refused: a peer that sends what we do not understand speaks another
 * protocol version, and guessing would hide that. */
enum hf__fkind { HF__F_TYPE, HF__F_INT, HF__F_ID, HF__F_REQID, HF__F_STR, HF__F_ARCH,
                 HF__F_OP, HF__F_ARGS, HF__F_LEVEL, HF__F_TEXT, HF__F_PROGRESS, HF__F_BOOL,
                 HF__F_DATA, HF__F_ERROR };

struct hf__field {
  const char     *name;
  enum hf__fkind  kind;
  bool            required;
};

struct hf__msgspec {
  const char             *type;
  enum hf_msg_type        t;
  const struct hf__field *fields;  /* terminated by name NULL */
};

static const struct hf__field hf__f_hello[] = {
  { "type", HF__F_TYPE, true }, { "proto", HF__F_INT, true }, { "agent", HF__F_STR, true },
  { "arch", HF__F_ARCH, true }, { NULL, HF__F_TYPE, false } };
static const struct hf__field hf__f_request[] = {
  { "type", HF__F_TYPE, true }, { "id", HF__F_REQID, true }, { "op", HF__F_OP, true },
  { "args", HF__F_ARGS, false }, { NULL, HF__F_TYPE, false } };
/* text/progress: exactly one; checked after the table. */
static const struct hf__field hf__f_event[] = {
  { "type", HF__F_TYPE, true }, { "id", HF__F_ID, true }, { "level", HF__F_LEVEL, true },
  { "text", HF__F_TEXT, false }, { "progress", HF__F_PROGRESS, false },
  { NULL, HF__F_TYPE, false } };
/* data/error depend on ok; checked after the table. */
static const struct hf__field hf__f_result[] = {
  { "type", HF__F_TYPE, true }, { "id", HF__F_ID, true }, { "ok", HF__F_BOOL, true },
  { "data", HF__F_DATA, false }, { "error", HF__F_ERROR, false },
  { NULL, HF__F_TYPE, false } };

static const struct hf__msgspec hf__msgs[] = {
  { "hello",   HF_MSG_HELLO,   hf__f_hello },
  { "request", HF_MSG_REQUEST, hf__f_request },
  { "event",   HF_MSG_EVENT,   hf__f_event },
  { "result",  HF_MSG_RESULT,  hf__f_result },
};

#define HF__SHORT_MAX 64   /* agent version, arch, progress step, error code */

/* Printable ASCII, 1..HF__SHORT_MAX bytes: values that end up in tables and
 * in the controller's state db. */
static bool hf__short_printable(const char *s) {
  size_t i;
  if (s[0] == '\0')
    return false;
  for (i = 0; s[i] != '\0'; i++)
    if (i >= HF__SHORT_MAX || (unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
      return false;
  return true;
}

static bool hf__valid_arch(const char *s) {
  size_t i;
  for (i = 0; s[i] != '\0'; i++)
    if (i >= 32 || !((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
                     (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '-'))
      return false;
  return i > 0;
}

static bool hf__valid_code(const char *s) {
  size_t i;
  for (i = 0; s[i] != '\0'; i++)
    if (i >= HF__SHORT_MAX || !((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') ||
                                s[i] == '_'))
      return false;
  return i > 0;
}

static int hf__want_int(const json_t *v, json_int_t min, const char *field, char *err,
                        size_t errlen) {
  char got[HF__QUOTE_BUF];
  if (!json_is_integer(v))
    return hf__errf(HF_ETYPE, err, errlen, "%s: expected an integer, got %s", field,
                    hf__describe(v, got, sizeof got));
  if (json_integer_value(v) < min)
    return hf__errf(HF_EPROTO, err, errlen,
                    "%s: expected an integer >= %" JSON_INTEGER_FORMAT ", got %" JSON_INTEGER_FORMAT,
                    field, min, json_integer_value(v));
  return 0;
}

static int hf__want_str(const json_t *v, bool (*ok)(const char *), const char *what,
                        const char *field, char *err, size_t errlen) {
  char got[HF__QUOTE_BUF];
  if (!json_is_string(v))
    return hf__errf(HF_ETYPE, err, errlen, "%s: expected %s, got %s", field, what,
                    hf__describe(v, got, sizeof got));
  if (ok != NULL && !ok(json_string_value(v)))
    return hf__errf(HF_EPROTO, err, errlen, "%s: expected %s, got %s", field, what,
                    hf__describe(v, got, sizeof got));
  return 0;
}

static bool hf__valid_level(const char *s) {
  return strcmp(s, "debug") == 0 || strcmp(s, "info") == 0 || strcmp(s, "warn") == 0 ||
         strcmp(s, "error") == 0;
}

/* Checks that obj (an object) holds only the keys in names (NULL-terminated). */
static int hf__only_keys(const json_t *obj, const char *const *names, const char *field,
                         char *err, size_t errlen) {
  char got[HF__QUOTE_BUF];
  const char *key;
  const char *const *n;
  json_t *v;
  json_object_foreach(hf__unconst(obj), key, v) {
    for (n = names; *n != NULL; n++)
      if (strcmp(*n, key) == 0)
        break;
    if (*n == NULL)
      return hf__errf(HF_EPROTO, err, errlen, "%s: unknown field %s", field,
                      hf__quote(key, got, sizeof got));
  }
  return 0;
}

static int hf__progress_obj(const json_t *v, const char *field, char *err, size_t errlen) {
  static const char *const keys[] = { "step", "done", "total", NULL };
  char got[HF__QUOTE_BUF], sub[64];
  json_t *step, *done, *total;
  int r;
  if (!json_is_object(v))
    return hf__errf(HF_ETYPE, err, errlen, "%s: expected an object, got %s", field,
                    hf__describe(v, got, sizeof got));
  if ((r = hf__only_keys(v, keys, field, err, errlen)) != 0)
    return r;
  step = json_object_get(v, "step");
  done = json_object_get(v, "done");
  total = json_object_get(v, "total");
  if (step == NULL || done == NULL || total == NULL)
    return hf__errf(HF_EMISSING, err, errlen, "%s.%s: required field is missing", field,
                    step == NULL ? "step" : done == NULL ? "done" : "total");
  hf__fmt(sub, sizeof sub, "%s.step", field);
  if ((r = hf__want_str(step, hf__short_printable, "a step name of printable ASCII", sub, err,
                        errlen)) != 0)
    return r;
  hf__fmt(sub, sizeof sub, "%s.done", field);
  if ((r = hf__want_int(done, 0, sub, err, errlen)) != 0)
    return r;
  hf__fmt(sub, sizeof sub, "%s.total", field);
  return hf__want_int(total, 0, sub, err, errlen);
}

static int hf__error_obj(const json_t *v, const char *field, char *err, size_t errlen) {
  static const char *const keys[] = { "code", "message", NULL };
  char got[HF__QUOTE_BUF], sub[64];
  json_t *code, *message;
  int r;
  if (!json_is_object(v))
    return hf__errf(HF_ETYPE, err, errlen, "%s: expected an object, got %s", field,
                    hf__describe(v, got, sizeof got));
  if ((r = hf__only_keys(v, keys, field, err, errlen)) != 0)
    return r;
  code = json_object_get(v, "code");
  message = json_object_get(v, "message");
  if (code == NULL || message == NULL)
    return hf__errf(HF_EMISSING, err, errlen, "%s.%s: required field is missing", field,
                    code == NULL ? "code" : "message");
  /* Any well-formed code is accepted, known or not: a newer agent may have
   * codes we lack, and hf_err_from_code() maps those to HF_EPROTO. */
  hf__fmt(sub, sizeof sub, "%s.code", field);
  if ((r = hf__want_str(code, hf__valid_code, "an error code of [a-z0-9_]", sub, err,
                        errlen)) != 0)
    return r;
  hf__fmt(sub, sizeof sub, "%s.message", field);
  return hf__want_str(message, NULL, "a string", sub, err, errlen);
}

static int hf__field_check(const struct hf__msgspec *m, const struct hf__field *f,
                           const json_t *v, const json_t *msg, char *err, size_t errlen) {
  char field[64], got[HF__QUOTE_BUF];
  const struct hf_op *op;
  hf__fmt(field, sizeof field, "%s.%s", m->type, f->name);
  switch (f->kind) {
  case HF__F_TYPE:
    return 0;  /* already matched */
  case HF__F_INT:
    return hf__want_int(v, 1, field, err, errlen);
  case HF__F_ID:
    return hf__want_int(v, 0, field, err, errlen);
  case HF__F_REQID:
    return hf__want_int(v, 1, field, err, errlen);
  case HF__F_STR:
    return hf__want_str(v, hf__short_printable, "1-64 bytes of printable ASCII", field, err,
                        errlen);
  case HF__F_ARCH:
    return hf__want_str(v, hf__valid_arch, "an architecture name of [A-Za-z0-9_-]", field, err,
                        errlen);
  case HF__F_OP:
    if (!json_is_string(v))
      return hf__errf(HF_ETYPE, err, errlen, "%s: expected an operation name, got %s", field,
                      hf__describe(v, got, sizeof got));
    if (hf_op_by_name(json_string_value(v)) == NULL)
      return hf__errf(HF_EUNKNOWNOP, err, errlen, "%s: unknown operation %s", field,
                      hf__describe(v, got, sizeof got));
    return 0;
  case HF__F_ARGS:
    op = hf_op_by_name(json_string_value(json_object_get(msg, "op")));
    return hf__args_validate(op, v, field, err, errlen);
  case HF__F_LEVEL:
    return hf__want_str(v, hf__valid_level, "debug, info, warn or error", field, err, errlen);
  case HF__F_TEXT:
    return hf__want_str(v, NULL, "a string", field, err, errlen);
  case HF__F_PROGRESS:
    return hf__progress_obj(v, field, err, errlen);
  case HF__F_BOOL:
    if (!json_is_boolean(v))
      return hf__errf(HF_ETYPE, err, errlen, "%s: expected true or false, got %s", field,
                      hf__describe(v, got, sizeof got));
    return 0;
  case HF__F_DATA:
    if (!json_is_object(v))
      return hf__errf(HF_ETYPE, err, errlen, "%s: expected an object, got %s", field,
                      hf__describe(v, got, sizeof got));
    return 0;
  case HF__F_ERROR:
    return hf__error_obj(v, field, err, errlen);
  }
  return hf__errf(HF_EINVAL, err, errlen, "%s: no rule for this field", field);
}

int hf_msg_validate(const json_t *msg, enum hf_msg_type *type, char *err, size_t errlen) {
  char got[HF__QUOTE_BUF];
  const struct hf__msgspec *m = NULL;
  const struct hf__field *f;
  const char *key, *t;
  json_t *v, *tv;
  size_t i;
  int r;
  if (err != NULL && errlen > 0)
    err[0] = '\0';
  if (!json_is_object(msg))
    return hf__errf(msg == NULL ? HF_EINVAL : HF_ETYPE, err, errlen,
                    "message: expected an object, got %s",
                    msg == NULL ? "nothing" : hf__describe(msg, got, sizeof got));
  tv = json_object_get(msg, "type");
  if (tv == NULL)
    return hf__errf(HF_EMISSING, err, errlen, "message.type: required field is missing");
  if (!json_is_string(tv))
    return hf__errf(HF_ETYPE, err, errlen, "message.type: expected a string, got %s",
                    hf__describe(tv, got, sizeof got));
  t = json_string_value(tv);
  for (i = 0; i < sizeof hf__msgs / sizeof hf__msgs[0]; i++)
    if (strcmp(hf__msgs[i].type, t) == 0)
      m = &hf__msgs[i];
  if (m == NULL)
    return hf__errf(HF_EPROTO, err, errlen, "message.type: unknown message type %s",
                    hf__describe(tv, got, sizeof got));
  json_object_foreach(hf__unconst(msg), key, v) {
    for (f = m->fields; f->name != NULL; f++)
      if (strcmp(f->name, key) == 0)
        break;
    if (f->name == NULL)
      return hf__errf(HF_EPROTO, err, errlen, "%s: unknown field %s", m->type,
                      hf__quote(key, got, sizeof got));
  }
  /* In table order, so "op" is checked before "args" needs it. */
  for (f = m->fields; f->name != NULL; f++) {
    v = json_object_get(msg, f->name);
    if (v == NULL) {
      if (f->required)
        return hf__errf(HF_EMISSING, err, errlen, "%s.%s: required field is missing", m->type,
                        f->name);
      if (f->kind == HF__F_ARGS &&
          (r = hf__field_check(m, f, NULL, msg, err, errlen)) != 0)
        return r;  /* absent args = {}: required args are still required */
      continue;
    }
    if ((r = hf__field_check(m, f, v, msg, err, errlen)) != 0)
      return r;
  }
  if (m->t == HF_MSG_EVENT) {
    bool text = json_object_get(msg, "text") != NULL;
    bool progress = json_object_get(msg, "progress") != NULL;
    if (text == progress)
      return hf__errf(text ? HF_EPROTO : HF_EMISSING, err, errlen,
                      "event: expected exactly one of text and progress, got %s",
                      text ? "both" : "neither");
  } else if (m->t == HF_MSG_RESULT) {
    bool ok = json_is_true(json_object_get(msg, "ok"));
    const char *need = ok ? "data" : "error", *other = ok ? "error" : "data";
    if (json_object_get(msg, need) == NULL)
      return hf__errf(HF_EMISSING, err, errlen, "result.%s: required when ok is %s", need,
                      ok ? "true" : "false");
    if (json_object_get(msg, other) != NULL)
      return hf__errf(HF_EPROTO, err, errlen, "result.%s: not allowed when ok is %s", other,
                      ok ? "true" : "false");
  }
  if (type != NULL)
    *type = m->t;
  return 0;
}
