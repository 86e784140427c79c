/* hf_proto_int.h: helpers shared by the proto sources; not part of the public API. */
#ifndef HF_PROTO_INT_H
#define HF_PROTO_INT_H

#include <stdarg.h>

#include "hf_proto.h"

/* Longest piece of a hostile value echoed back in an error message. */
#define HF__ECHO_MAX 60

/* Writes a printf-style message to err (errlen bytes, always NUL-terminated
 * when errlen > 0; err may be NULL) and returns code, so callers can write
 * `return hf__errf(code, err, errlen, ...)`. */
int hf__errf(int code, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* vsnprintf into buf (n bytes, NUL-terminated, truncated if need be) for
 * field names such as "request.args.hub.user_envs[2]". Returns buf. */
char *hf__fmt(char *buf, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Renders s as a quoted, printable-ASCII-only rendition in out (outlen bytes,
 * NUL-terminated): bytes outside 0x20..0x7e become \xNN, quotes and
 * backslashes are escaped, and more than HF__ECHO_MAX bytes of s end in "...".
 * Returns out (borrowed). So a value that came from a peer can never inject
 * terminal escapes or fake lines into a log. */
const char *hf__quote(const char *s, char *out, size_t outlen);
/* Copies s into out (outlen bytes, NUL-terminated, truncated) with every
 * byte outside printable ASCII replaced by '?'. Returns out. */
const char *hf__sanitize(const char *s, char *out, size_t outlen);

/* Buffer size that always holds hf__quote's result. */
#define HF__QUOTE_BUF (HF__ECHO_MAX * 4 + 8)

/* Describes a JSON value for "got ..." in messages: the quoted string for a
 * string, otherwise its JSON type ("integer", "object", ...). out as above. */
const char *hf__describe(const json_t *v, char *out, size_t outlen);

/* hf_proto_args_validate with the prefix naming the args object in messages
 * (e.g. "request.args"). args may be NULL (= {}). */
int hf__args_validate(const struct hf_op *op, const json_t *args, const char *prefix,
                      char *err, size_t errlen);

/* Length (1..4) of the well-formed UTF-8 sequence at s (n bytes available),
 * or 0 when the bytes there are not one: overlong forms, surrogates and
 * code points past U+10FFFF are refused, as RFC 3629 says. */
size_t hf__utf8_len(const unsigned char *s, size_t n);

/* jansson's iteration API takes non-const objects although it does not
 * modify them; this is the one place the const is dropped for it. */
static inline json_t *hf__unconst(const json_t *v) {
  return (json_t *)(uintptr_t)v;
}

#endif /* HF_PROTO_INT_H */
