/* hf_ctl_util.h: pure helpers of the controller (backoff, known_hosts
 * choice and messages, deploy command text, option parsing), unit-tested. */
#ifndef HF_CTL_UTIL_H
#define HF_CTL_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* xorshift64* step; *state must not be 0 (0 is replaced by a constant). */
uint64_t hf_rng_next(uint64_t *state);

/* Delay before retry number attempt (1-based) of a dropped handshake:
 * d = min(cap_ms, base_ms << (attempt-1)), then "equal jitter": a value in
 * [d/2, d], so retries spread out yet never come back at once.
 * attempt <= 0 is treated as 1. */
unsigned hf_backoff_ms(int attempt, unsigned base_ms, unsigned cap_ms, uint64_t *rng);

/* The known_hosts file for a host: the host's own (hubfleet_known_hosts),
 * else the command line's, else HOME/.ssh/known_hosts. Writes into buf.
 * Returns buf, or NULL when nothing fits (no HOME and nothing given). */
const char *hf_known_hosts_path(const char *host_file, const char *cli_file,
                                const char *home, char *buf, size_t len);

/* Kinds of host key verdicts worth a message. */
enum hf_hostkey_problem {
  HF_HOSTKEY_UNKNOWN,   /* not in the file (or no file) */
  HF_HOSTKEY_CHANGED,   /* a different key of the same type is recorded */
  HF_HOSTKEY_OTHER,     /* only keys of another type are recorded: treated as changed */
  HF_HOSTKEY_REVOKED,   /* the key is marked @revoked in the file */
};
/* Formats the message for people: what happened, for which host, and what
 * to do (add the key / use --accept-new; or verify and fix the line). */
void hf_hostkey_message(enum hf_hostkey_problem p, const char *name, const char *address,
                        int port, const char *fingerprint, const char *kh_file,
                        char *buf, size_t len);

/* Finds a file hubfleet ships beside itself: explicit (the option), else the
 * environment variable env_var, else each of rel[] (NULL-terminated, relative
 * to the running program's directory: the build tree's and the installed
 * layout's places, so a moved or DESTDIR install works), else installed (an
 * absolute path or NULL). Writes the path into buf. Returns 0, or
 * HF_ENOTFOUND when no candidate is readable (explicit and env paths are
 * returned as given, unchecked: the caller reports their errors). */
int hf_find_shipped_file(const char *explicit_path, const char *env_var, const char *const *rel,
                         const char *installed, char *buf, size_t len);

/* True for exactly 64 lowercase hex digits. */
bool hf_valid_sha256_hex(const char *s);

/* Remote command that starts the cached agent named by hex after checking
 * its SHA-256 and that nobody but the login can change it, or prints
 * HF_DEPLOY_NEED_UPLOAD when it is absent (or not the agent), or
 * HF_DEPLOY_UNSAFE PATH when the cache or a parent is writable by others.
 * Only fixed text plus the validated hex. Returns 0, or HF_EINVAL (bad hex /
 * buffer too small). */
int hf_deploy_cmd_start(const char *hex, char *buf, size_t len);
/* Remote command that inflates a gzip stream on stdin into a temporary
 * name, verifies its SHA-256 against hex, then makes it executable and
 * renames it; prints HF_DEPLOY_UPLOADED on success. Returns 0 or HF_EINVAL. */
int hf_deploy_cmd_upload(const char *hex, char *buf, size_t len);
#define HF_DEPLOY_NEED_UPLOAD "HUBFLEET-NEED-UPLOAD"
#define HF_DEPLOY_UPLOADED    "HUBFLEET-UPLOADED"
#define HF_DEPLOY_UNSAFE      "HUBFLEET-UNSAFE"
#define HF_DEPLOY_NOFIND      "HUBFLEET-NO-FIND"

/* Endpoint key for handshake limits: "jump:SPEC" when behind a jump host
 * (all hosts behind one bastion share it), else "ADDRESS:PORT". */
void hf_endpoint_key(const char *address, int port, const char *jump, char *buf, size_t len);

/* Parses a positive integer option value in [min, max]. Returns 0 or HF_EINVAL. */
int hf_parse_uint(const char *s, long min, long max, long *out);

/* Whether a libssh error text from the banner/kex phase means the server
 * dropped the connection (sshd MaxStartups, reset) and a retry may work;
 * algorithm negotiation failures and the like are not retried. */
bool hf_ssh_error_retryable(const char *msg);

#endif /* HF_CTL_UTIL_H */
