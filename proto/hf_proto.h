/* hf_proto.h: the wire protocol between hubfleet and hubfleet-agent, the
 * shared error table, and the validators for every value that reaches a
 * remote command. Pure code: no I/O, no allocation it does not hand back.
 *
 * Frame: 4-byte big-endian payload length, then that many bytes holding one
 * UTF-8 JSON object. Payloads over HF_PROTO_MAX_FRAME are a protocol error.
 *
 * Ownership words follow jansson: "new" = caller owns (json_decref/free),
 * "borrowed" = valid while the argument lives, "stolen" = the callee owns it
 * from the call on, even when the call fails.
 *
 * Messages (all objects carry "type"):
 *   hello   {"type":"hello","proto":1,"agent":"0.1.0","arch":"x86_64"}
 *   request {"type":"request","id":7,"op":"facts","args":{...}}
 *   event   {"type":"event","id":7,"level":"info","text":"..."}
 *           {"type":"event","id":7,"level":"info","progress":{"step":"install","done":1,"total":3}}
 *   result  {"type":"result","id":7,"ok":true,"data":{...}}
 *           {"type":"result","id":7,"ok":false,"error":{"code":"bad_argument","message":"..."}}
 * The full argument schema of every operation is in docs/protocol.md and in
 * the op table HF_OP_MAP below.
 */
#ifndef HF_PROTO_H
#define HF_PROTO_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>
#include <jansson.h>

#define HF_PROTO_VERSION   1
#define HF_PROTO_MAX_FRAME (1u << 20)  /* 1 MiB payload limit */

/* ---- errors: one table for the whole project ---------------------------
 * Every function returning int returns 0 or one of these (negative).
 * XX(enum suffix, stable wire code, message for people)               */
#define HF_ERRNO_MAP(XX)                                                          \
  XX(EINVAL,     "invalid",          "invalid argument")                          \
  XX(ENOMEM,     "no_memory",        "out of memory")                             \
  XX(EPROTO,     "protocol",         "protocol error")                            \
  XX(ETOOBIG,    "frame_too_big",    "frame larger than the protocol limit")      \
  XX(ETRUNC,     "truncated",        "stream ended inside a frame")               \
  XX(EJSON,      "bad_json",         "frame is not one valid UTF-8 JSON object")  \
  XX(EMISSING,   "missing_field",    "a required field is missing")               \
  XX(ETYPE,      "wrong_type",       "a field has the wrong type")                \
  XX(EUNKNOWNOP, "unknown_op",       "unknown operation")                         \
  XX(EVERSION,   "proto_version",    "protocol version not spoken")               \
  XX(EBADARG,    "bad_argument",     "argument refused by validation")            \
  XX(EIO,        "io",               "input/output error")                        \
  XX(ETIMEDOUT,  "timeout",          "deadline passed")                           \
  XX(EJOURNAL,   "journal",          "journal cannot be read or written")         \
  XX(ENOSPC,     "no_space",         "not enough free disk")                      \
  XX(EEXEC,      "exec",             "a command could not be started")            \
  XX(ECMD,       "command_failed",   "a command exited with failure")             \
  XX(EHEALTH,    "health",           "hub failed its health check")               \
  XX(ESTATE,     "bad_state",        "operation not allowed in this state")       \
  XX(EPREFLIGHT, "preflight",        "preflight check refused the host")          \
  XX(EROLLBACK,  "rollback_failed",  "rollback did not restore a healthy hub")    \
  XX(EUNSUPPORTED,"unsupported",     "not supported on this host")                \
  XX(ENOTFOUND,  "not_found",        "not found")                                 \
  XX(EINVENTORY, "inventory",        "inventory is invalid")                      \
  XX(ESSH,       "ssh",              "SSH error")                                 \
  XX(EHOSTKEY,   "host_key",         "host key unknown or changed")               \
  XX(EAUTH,      "auth",             "authentication failed")                     \
  XX(EUNREACH,   "unreachable",      "host unreachable")                          \
  XX(EDB,        "state_db",         "state database error")                      \
  XX(EINTEGRITY, "integrity",        "checksum or integrity check failed")        \
  XX(ECANCELED,  "canceled",         "operation canceled")

enum hf_err {
  HF_OK = 0,
  HF__EFIRST = -1000,
#define HF_ERR_ENUM(name, code, msg) HF_##name,
  HF_ERRNO_MAP(HF_ERR_ENUM)
#undef HF_ERR_ENUM
  HF__ELAST
};

/* Enum name, e.g. "HF_EPROTO"; "HF_UNKNOWN" for a value not in the table. Static.
 * HF_OK is not in the table but has names: "HF_OK", "ok", "success". */
const char *hf_err_name(int err);
/* Stable wire code, e.g. "protocol"; "unknown" for a value not in the table. Static. */
const char *hf_err_code(int err);
/* Message for people. Static. */
const char *hf_strerror(int err);
/* Wire code back to the enum value; HF_EPROTO when unknown. */
int hf_err_from_code(const char *code);

/* ---- framing ----------------------------------------------------------- */

/* Incremental decoder: accepts the byte stream in any chunking and never
 * consumes bytes past the end of the frame it completes. */
struct hf_frame_decoder {
  unsigned char hdr[4];
  size_t   hdr_have;
  uint32_t need;       /* payload length once the header is complete */
  char    *buf;        /* payload so far (new, owned by the decoder) */
  size_t   have;
  size_t   max;        /* payload limit */
  size_t   cap;        /* bytes allocated at buf: grows with what arrived,
                          so a header alone cannot make us allocate 1 MiB */
  int      error;      /* sticky: once set, every feed returns it */
  char     detail[160]; /* why error was set, for people (e.g. jansson's
                           message with its position); "" when no error */
};

/* max = 0 means HF_PROTO_MAX_FRAME; larger values are clamped to it. */
void hf_frame_decoder_init(struct hf_frame_decoder *d, size_t max);
/* Frees the partial payload. Accepts a decoder that was only zeroed. */
void hf_frame_decoder_free(struct hf_frame_decoder *d);
/* True when the decoder is between frames (no partial header or payload):
 * an EOF now is clean, otherwise it is HF_ETRUNC. False once an error is set. */
bool hf_frame_decoder_idle(const struct hf_frame_decoder *d);
/* Feeds at most len bytes. Sets *consumed to the bytes used (all of them
 * unless a frame completed earlier in the chunk). When a frame completes,
 * *out receives its JSON object (new) and the call returns 0; otherwise *out
 * is NULL. Errors: HF_ETOOBIG (length over the limit, seen from the header,
 * before any payload is buffered), HF_EJSON (not one UTF-8 JSON object:
 * invalid UTF-8, a NUL byte, duplicate keys, trailing bytes, a top level
 * that is not an object, an empty payload), HF_ENOMEM; HF_EINVAL for NULL
 * d/consumed/out (not sticky). On an error *consumed counts the bytes up to
 * and including the frame (or header) found bad. Errors are sticky, and
 * d->detail says why. The payload memory grows with the bytes received, so
 * a bare header costs nothing. */
int hf_frame_feed(struct hf_frame_decoder *d, const void *data, size_t len,
                  size_t *consumed, json_t **out);
/* Encodes msg (borrowed) as one frame into *out (new, free()), *outlen bytes.
 * HF_ETOOBIG when the payload would pass HF_PROTO_MAX_FRAME; HF_EINVAL when
 * msg is not an object or jansson cannot serialize it. Compact JSON, keys in
 * insertion order. Strings holding NUL (json_stringn) are not checked for:
 * the decoder refuses them, so do not build messages with them. */
int hf_frame_encode(const json_t *msg, char **out, size_t *outlen);

/* ---- messages ---------------------------------------------------------- */

enum hf_msg_type { HF_MSG_HELLO, HF_MSG_REQUEST, HF_MSG_EVENT, HF_MSG_RESULT };

/* Validates a decoded message's shape: "type" and every field of that type
 * present with the right JSON type; for requests, the op is known and its
 * args pass hf_proto_args_validate(). On error, writes a message naming the
 * field (e.g. "request.args.target: expected a PEP 440 version, got \"x y\"")
 * to err (errlen bytes, always NUL-terminated) and returns the code.
 * Codes: HF_EMISSING (a required field is absent), HF_ETYPE (wrong JSON
 * type), HF_EUNKNOWNOP (request.op not in the op table), HF_EBADARG (an
 * argument or hub value refused by its validator, or an unknown argument or
 * hub key), HF_EPROTO (an envelope value out of range: request id <= 0,
 * negative id, unknown level or message type, unknown envelope field, both
 * text and progress, data with ok=false / error with ok=true). Unknown fields
 * are refused, not ignored: a peer that sends them speaks another version.
 * Values from the peer are echoed escaped (printable ASCII, \xNN) and cut at
 * 60 bytes. hello.proto is only checked to be an integer >= 1; comparing it
 * with HF_PROTO_VERSION (HF_EVERSION) is the caller's decision. type may be
 * NULL. */
int hf_msg_validate(const json_t *msg, enum hf_msg_type *type, char *err, size_t errlen);

/* Builders; each returns a new object, or NULL only on out-of-memory. */
json_t *hf_msg_hello(const char *agent_version, const char *arch);
json_t *hf_msg_request(uint64_t id, const char *op, json_t *args /* stolen, may be NULL */);
/* level: "debug", "info", "warn", "error". */
json_t *hf_msg_event_text(uint64_t id, const char *level, const char *text);
json_t *hf_msg_event_progress(uint64_t id, const char *step, int64_t done, int64_t total);
json_t *hf_msg_result_ok(uint64_t id, json_t *data /* stolen, may be NULL -> {} */);
json_t *hf_msg_result_err(uint64_t id, int err, const char *message);

/* ---- operations and their arguments ------------------------------------ */

enum hf_argtype {
  HF_ARG_STRING,   /* any string (length-limited) */
  HF_ARG_INT,      /* JSON integer >= 0 */
  HF_ARG_BOOL,
  HF_ARG_VERSION,  /* PEP 440 version string */
  HF_ARG_ABSPATH,  /* absolute path, no "..", no NUL/newline */
  HF_ARG_ID,       /* rollout id: [A-Za-z0-9._-]{1,64} */
  HF_ARG_HUB,      /* the hub description object, see hf_proto_hub_validate */
  HF_ARG_PKGPINS,  /* array of "name==version" pins */
  HF_ARG_PKGNAMES, /* array of package names */
  HF_ARG_OBJECT,   /* any object (data, e.g. versions map for rollback) */
};

struct hf_arg_spec {
  const char     *name;
  enum hf_argtype type;
  bool            required;
};

/* ---- the operation table: what every part knows about an operation ------
 * proto's validators, the agent's dispatch and stale-step refusal, and the
 * controller's steps all read this one table.
 *
 * XX(ID, name, changes, journaled, rollout, target, timeout_ms, step, extra)
 *   changes     it changes the hub: the agent runs it under the host lock,
 *               after the stale-step check, in its private directories
 *   journaled   it records begin/done/failed in the rollout's journal on the
 *               host (health only when it is given a rollout)
 *   rollout     args.rollout: REQ (required) or OPT (optional)
 *   target      args.target (a PEP 440 version): REQ, or NO (refused)
 *   timeout_ms  the step's deadline: the agent's when args.timeout_ms is
 *               absent, and what the controller sends for that step
 *   step        position in the upgrade procedure (1 = first); 0 = not a
 *               step of it (stage: optional, between preflight and backup;
 *               it refuses itself once the journal holds another step). The agent runs a journaled step only right after
 *               the journaled step before it (or again after itself).
 *   extra       arguments beyond hub (always required), rollout, target and
 *               timeout_ms (always optional): HF_OP_ARG(name, TYPE, required)...
 */
#define HF_OP_MAP(XX)                                                                              \
  XX(FACTS,     "facts",     false, false, OPT, NO,  1000,    0, )                                 \
  XX(PREFLIGHT, "preflight", false, false, OPT, REQ, 300000,  1,                                   \
     HF_OP_ARG("rehearse", BOOL, false) HF_OP_ARG("rules", OBJECT, false)                          \
     HF_OP_ARG("background", BOOL, false))                                                         \
  XX(STAGE,     "stage",     false, true,  REQ, REQ, 1200000, 0, HF_OP_ARG("background", BOOL, false)) \
  XX(BACKUP,    "backup",    true,  true,  REQ, REQ, 600000,  2, HF_OP_ARG("homes", BOOL, false))  \
  XX(STOP,      "stop",      true,  true,  REQ, NO,  120000,  3, )                                 \
  XX(INSTALL,   "install",   true,  true,  REQ, REQ, 1200000, 4, )                                 \
  XX(MIGRATE,   "migrate",   true,  true,  REQ, NO,  600000,  5,                                    \
     HF_OP_ARG("expect_revision", ID, false))                                                     \
  XX(START,     "start",     true,  true,  REQ, NO,  180000,  6, )                                 \
  XX(HEALTH,    "health",    false, true,  OPT, REQ, 120000,  7, )                                 \
  XX(ROLLBACK,  "rollback",  true,  true,  REQ, NO,  1800000, 0, HF_OP_ARG("previous", OBJECT, false)) \
  XX(JOURNAL,   "journal",   false, false, REQ, NO,  30000,   0, )

/* One extra argument of an op in HF_OP_MAP: an hf_arg_spec initializer. */
#define HF_OP_ARG(name, type, required) { (name), HF_ARG_##type, (required) },

enum hf_op_id {
#define HF_OP_ENUM(id, ...) HF_OP_##id,
  HF_OP_MAP(HF_OP_ENUM)
#undef HF_OP_ENUM
  HF_OP__COUNT
};

/* Whether an op takes an argument: REQ (required), OPT, NO (refused). */
enum hf_op_arg { HF_OPARG_NO, HF_OPARG_OPT, HF_OPARG_REQ };

struct hf_op {
  const char               *name;  /* "facts", "preflight", ... */
  const struct hf_arg_spec *args;  /* terminated by an entry with name NULL */
  enum hf_op_id             id;
  bool                      changes_hub;
  bool                      journaled;
  enum hf_op_arg            rollout, target;
  int64_t                   default_timeout_ms;
  int                       step;  /* position in the upgrade procedure, 0 = none */
};

/* Looks up an operation by name; NULL when unknown. Static data. */
const struct hf_op *hf_op_by_name(const char *name);
/* The operation with that id; NULL when out of range. Static data. */
const struct hf_op *hf_op_get(enum hf_op_id id);
/* The default deadline of op name (HF_OP_MAP's timeout_ms); 0 when unknown. */
int64_t hf_op_default_timeout_ms(const char *name);
/* The position of op name in the upgrade procedure (1 = first); 0 when it is
 * not a step of it or unknown. */
int hf_op_procedure_pos(const char *name);
/* The stale-step rule: the journaled step of the procedure that must be the
 * last one completed before op runs (op itself may also be); NULL when op is
 * the first journaled step. Only for journaled ops with a step (else NULL). */
const struct hf_op *hf_op_journaled_before(const struct hf_op *op);
/* NULL-terminated list of every operation name, in table order. Static. */
const char *const *hf_proto_op_names(void);
/* Validates args (borrowed) against op's spec: every required arg present,
 * every present arg known and of its type, values pass their validators.
 * Writes "args.NAME: what was expected" to err on failure. */
int hf_proto_args_validate(const struct hf_op *op, const json_t *args,
                           char *err, size_t errlen);
/* Validates the hub description object (see docs/protocol.md). prefix names
 * the object in messages (e.g. "args.hub" or "hosts[3].vars"). */
int hf_proto_hub_validate(const json_t *hub, const char *prefix, char *err, size_t errlen);

/* ---- validators for values that reach a remote command ------------------
 * Each returns true only for values safe to pass as one argv element. */
/* Versions: the canonical PEP 440 spelling only ([N!]N(.N)*[{a|b|rc}N][.postN]
 * [.devN][+local], lowercase, <= 128 bytes), i.e. what `packaging` prints;
 * "1.0-rc1", "v1.0", "1.0RC1" and wildcards are refused rather than guessed. */
bool hf_valid_version(const char *s);      /* PEP 440 public version, canonical-ish: 3.0.0, 4.1.0rc1, 3.0.1.post1, 3.1.0.dev2, 4.0.0+test.1 */
bool hf_valid_pkgname(const char *s);      /* PEP 508 name: [A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?, <= 128 */
bool hf_valid_pkgpin(const char *s);       /* NAME==VERSION */
bool hf_valid_abspath(const char *s);      /* starts with '/', no "..", "." segments, NUL, control chars; <= 4096 */
bool hf_valid_service_name(const char *s); /* [A-Za-z0-9@._:-]{1,128}, not starting with '-' */
bool hf_valid_url(const char *s);          /* http(s)://host[:port][/path], printable, no spaces/quotes, <= 2048;
                                              no user:password@ (it would land in logs and the state db) */
bool hf_valid_id(const char *s);           /* [A-Za-z0-9._-]{1,64}, not starting with '-' or '.' */
/* Compares two PEP 440 versions: <0, 0, >0. Unparsable versions sort first. */
int hf_version_cmp(const char *a, const char *b);

#endif /* HF_PROTO_H */
