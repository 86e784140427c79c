/* util.c: pure helpers of the controller: backoff, known_hosts choice and
 * messages, deploy command text, option parsing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "hf_proto.h"
#include "hf_ctl_util.h"

uint64_t hf_rng_next(uint64_t *state) {
  uint64_t x = *state ? *state : 0x9e3779b97f4a7c15ull;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *state = x;
  return x * 0x2545f4914f6cdd1dull;
}

unsigned hf_backoff_ms(int attempt, unsigned base_ms, unsigned cap_ms, uint64_t *rng) {
  uint64_t d = base_ms;
  if (attempt < 1) attempt = 1;
  /* Shift one step at a time so a large attempt count cannot overflow. */
  for (int i = 1; i < attempt && d < cap_ms; i++) d <<= 1;
  if (d > cap_ms) d = cap_ms;
  uint64_t half = d / 2;
  return (unsigned)(half + hf_rng_next(rng) % (d - half + 1));
}

const char *hf_known_hosts_path(const char *host_file, const char *cli_file,
                                const char *home, char *buf, size_t len) {
  int n;
  if (host_file && *host_file) n = snprintf(buf, len, "%s", host_file);
  else if (cli_file && *cli_file) n = snprintf(buf, len, "%s", cli_file);
  else if (home && *home) n = snprintf(buf, len, "%s/.ssh/known_hosts", home);
  else return NULL;
  if (n < 0 || (size_t)n >= len) return NULL;
  return buf;
}

void hf_hostkey_message(enum hf_hostkey_problem p, const char *name, const char *address,
                        int port, const char *fingerprint, const char *kh_file,
                        char *buf, size_t len) {
  char hostspec[300];
  /* known_hosts writes non-default ports as [address]:port. */
  if (port == 22) snprintf(hostspec, sizeof hostspec, "%s", address);
  else snprintf(hostspec, sizeof hostspec, "[%s]:%d", address, port);
  switch (p) {
  case HF_HOSTKEY_UNKNOWN:
    snprintf(buf, len,
             "%s: host key of %s is not known (%s not in %s); verify it, then add it "
             "(ssh-keyscan -p %d %s >> %s) or rerun with --accept-new to trust it on first use",
             name, hostspec, fingerprint, kh_file, port, address, kh_file);
    break;
  case HF_HOSTKEY_CHANGED:
  case HF_HOSTKEY_OTHER:
    snprintf(buf, len,
             "%s: HOST KEY OF %s HAS CHANGED (now %s%s) - refusing to connect: this may be a "
             "man-in-the-middle attack. Verify the new key with the host's administrator, then "
             "fix or remove the line for %s in %s (ssh-keygen -R '%s' -f %s); --accept-new never "
             "overrides a changed key",
             name, hostspec, fingerprint,
             p == HF_HOSTKEY_OTHER ? ", a key type other than the recorded one" : "",
             hostspec, kh_file, hostspec, kh_file);
    break;
  case HF_HOSTKEY_REVOKED:
    snprintf(buf, len,
             "%s: host key of %s (%s) is marked @revoked in %s - refusing to connect; "
             "the host needs a new key, verified and recorded in %s",
             name, hostspec, fingerprint, kh_file, kh_file);
    break;
  }
}

bool hf_valid_sha256_hex(const char *s) {
  if (!s) return false;
  size_t i = 0;
  for (; s[i]; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
  return i == 64;
}

/* The cache directory and the agent in it are trusted only when nobody but
 * the login (or root) can change them, as OpenSSH's StrictModes judges a
 * home: $HOME and $HOME/.cache owned by the user or root and not writable
 * by group or others; ~/.cache/hubfleet a real directory of the user's
 * (its mode is set back to 0700). Anything else prints HF_DEPLOY_UNSAFE
 * PATH and runs nothing; a find that cannot tell prints HF_DEPLOY_NOFIND.
 * The commands then work inside the directory they checked (cd -P, names
 * relative to it): a directory above $HOME that others can write (where
 * StrictModes would look and this does not) cannot swap the agent between
 * its check and its exec by renaming a path component. */
#define DEPLOY_SAFE_DIRS \
  "umask 077; d=\"$HOME/.cache/hubfleet\"; u=$(id -u) || exit 1; " \
  "for p in \"$HOME\" \"$HOME/.cache\"; do [ -e \"$p\" ] || continue; " \
  "o=$(find \"$p/.\" -maxdepth 0 \\( -perm -0002 -o -perm -0020 -o ! \\( -user \"$u\" -o -user 0 \\) \\) -print 2>/dev/null) " \
  "|| { echo \"" HF_DEPLOY_NOFIND " $p\"; exit 1; }; " \
  "if [ -n \"$o\" ]; then echo \"" HF_DEPLOY_UNSAFE " $p\"; exit 1; fi; done; "
/* Enters $d (which must exist) if it is a real directory of the login's. */
#define DEPLOY_ENTER_DIR \
  "{ [ ! -L \"$d\" ] && cd -P -- \"$d\" 2>/dev/null && [ -O . ]; } || { echo \"" HF_DEPLOY_UNSAFE " $d\"; exit 1; }; " \
  "chmod 700 . || exit 1; "

int hf_deploy_cmd_start(const char *hex, char *buf, size_t len) {
  if (!hf_valid_sha256_hex(hex)) return HF_EINVAL;
  /* The agent runs only after its SHA-256 is checked, in the same command
   * and the same (entered) directory. */
  int n = snprintf(buf, len,
                   DEPLOY_SAFE_DIRS
                   "if [ -e \"$d\" ] || [ -L \"$d\" ]; then " DEPLOY_ENTER_DIR
                   "a=./agent-%s; "
                   "if [ -f \"$a\" ] && [ ! -L \"$a\" ] && [ -O \"$a\" ] && "
                   "[ \"$(sha256sum < \"$a\" 2>/dev/null)\" = \"%s  -\" ]; then exec \"$a\"; fi; fi; "
                   "echo " HF_DEPLOY_NEED_UPLOAD,
                   hex, hex);
  return (n < 0 || (size_t)n >= len) ? HF_EINVAL : 0;
}

int hf_deploy_cmd_upload(const char *hex, char *buf, size_t len) {
  if (!hf_valid_sha256_hex(hex)) return HF_EINVAL;
  /* The gzip stream is inflated into a temporary file made by mktemp (a
   * random name, created exclusively; the cleanup trap is set only once it
   * is ours) that is never executed; only a copy whose SHA-256 is the
   * agent's is made executable and renamed into place, so a cut or
   * corrupted upload leaves nothing that could run. Hosts sharing the home
   * and uploading at once (even with the same pid, in containers) each
   * rename a whole, verified file. */
  int n = snprintf(buf, len,
                   DEPLOY_SAFE_DIRS
                   "mkdir -p \"$d\" || exit 1; " DEPLOY_ENTER_DIR
                   "command -v gzip >/dev/null || { echo \"HUBFLEET-NO-GZIP\"; exit 1; }; "
                   "t=$(mktemp ./agent-%s.tmp.XXXXXXXX) || exit 1; trap 'rm -f \"$t\"' EXIT HUP INT TERM PIPE; "
                   "gzip -dc > \"$t\" || exit 1; s=$(sha256sum < \"$t\") || exit 1; "
                   "if [ \"${s%%%% *}\" != %s ]; then echo \"HUBFLEET-BAD-CHECKSUM ${s%%%% *}\"; exit 1; fi; "
                   "chmod 700 \"$t\" && mv -f \"$t\" ./agent-%s && trap - EXIT && echo " HF_DEPLOY_UPLOADED,
                   hex, hex, hex);
  return (n < 0 || (size_t)n >= len) ? HF_EINVAL : 0;
}

void hf_endpoint_key(const char *address, int port, const char *jump, char *buf, size_t len) {
  if (jump && *jump) snprintf(buf, len, "jump:%s", jump);
  else snprintf(buf, len, "%s:%d", address ? address : "", port);
}

int hf_parse_uint(const char *s, long min, long max, long *out) {
  if (!s || !*s) return HF_EINVAL;
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || *end || v < min || v > max) return HF_EINVAL;
  *out = v;
  return 0;
}

bool hf_ssh_error_retryable(const char *msg) {
  static const char *const drops[] = {
    "Socket error", "disconnected", "reset by peer", "Connection reset", "Broken pipe",
    "Connection closed", "Received SSH_MSG_DISCONNECT", "Exceeded MaxStartups", NULL,
  };
  if (!msg) return false;
  for (const char *const *d = drops; *d; d++)
    if (strstr(msg, *d)) return true;
  return false;
}

int hf_find_shipped_file(const char *explicit_path, const char *env_var, const char *const *rel,
                         const char *installed, char *buf, size_t len) {
  const char *env = env_var ? getenv(env_var) : NULL;
  if (explicit_path && *explicit_path) { snprintf(buf, len, "%s", explicit_path); return 0; }
  if (env && *env) { snprintf(buf, len, "%s", env); return 0; }
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  char *slash = n > 0 ? (exe[n] = '\0', strrchr(exe, '/')) : NULL;
  if (slash) {
    *slash = '\0';
    for (size_t i = 0; rel && rel[i]; i++) {
      int w = snprintf(buf, len, "%s/%s", exe, rel[i]);
      if (w > 0 && (size_t)w < len && access(buf, R_OK) == 0) return 0;
    }
  }
  if (installed) {
    snprintf(buf, len, "%s", installed);
    if (access(buf, R_OK) == 0) return 0;
  }
  return HF_ENOTFOUND;
}
