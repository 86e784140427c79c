/* hf_knownhosts.h: known_hosts files read once per run and looked up per
 * host in constant time.
 *
 * libssh reads and parses the whole known_hosts file twice for every
 * session (once to order the host key algorithms, once to verify), which
 * makes an audit of N hosts O(N^2) with a file of N lines. The controller
 * loads each file once, indexes its literal host names, and checks the key
 * the server presented itself. Same rules as OpenSSH's: plain names,
 * [host]:port, comma lists, '*' and '?' wildcards, '!' negation, hashed
 * names (|1|salt|hash, HMAC-SHA1), and the @revoked marker (a revoked key
 * is refused even when also listed as good); @cert-authority lines are
 * skipped (hubfleet does not take host certificates). Lines that cannot be
 * parsed (unknown key types, bad base64) are skipped, as OpenSSH does. */
#ifndef HF_KNOWNHOSTS_H
#define HF_KNOWNHOSTS_H

#include <stdbool.h>
#include <stddef.h>

#include <libssh/libssh.h>

struct hf_kh;       /* every file loaded so far */
struct hf_khfile;   /* one file */

enum hf_kh_verdict {
  HF_KH_OK,        /* the presented key is recorded for the host */
  HF_KH_UNKNOWN,   /* nothing recorded for the host (or no file) */
  HF_KH_CHANGED,   /* a different key of the same type is recorded */
  HF_KH_OTHER,     /* only keys of other types are recorded */
  HF_KH_REVOKED,   /* the key is marked @revoked */
};

struct hf_kh *hf_kh_new(void);
void hf_kh_free(struct hf_kh *kh);

/* The file at path, read and indexed on first use. A missing file is an
 * empty one (it is created on the first hf_kh_add). Returns NULL and a
 * message naming the file in err when it exists but cannot be read. */
struct hf_khfile *hf_kh_file(struct hf_kh *kh, const char *path, char *err, size_t errlen);

/* The lines of a file that name one host, found once per session: the
 * index for literal names, a scan of the pattern and hashed lines (one
 * HMAC-SHA1 each); later calls look only at lines added since. */
struct hf_kh_match {
  bool started;
  size_t scanned;   /* lines of the file looked at */
  int *idx;         /* the matching lines */
  size_t n, cap;
};
/* Fills or brings m up to date (m starts zeroed) for host (an address or
 * name as connected to; matched case-insensitively) on port. Returns 0, or
 * -1 (out of memory, host name too long). */
int hf_kh_match(const struct hf_khfile *f, const char *host, int port, struct hf_kh_match *m);
void hf_kh_match_free(struct hf_kh_match *m);
/* The verdict for the key the host presented. */
enum hf_kh_verdict hf_kh_match_check(const struct hf_khfile *f, const struct hf_kh_match *m,
                                     const ssh_key key);
/* Host key algorithms for the key exchange: the ones that can use a type
 * recorded for the host first (so the server presents a key we can check),
 * then the others, each group in libssh's own order. Returns 1 with the
 * list in buf, 0 when nothing is recorded for the host (leave libssh's
 * default), -1 when buf is too small. */
int hf_kh_match_algorithms(const struct hf_khfile *f, const struct hf_kh_match *m, char *buf, size_t len);

/* Records key for host: appends "host key" (or "[host]:port key") to the
 * file (created 0600, its directory 0700 when missing) and to the index.
 * Returns 0, or -1 with a message in err. */
int hf_kh_add(struct hf_khfile *f, const char *host, int port, const ssh_key key,
              char *err, size_t errlen);

/* Lines read, indexed by name, and skipped as unparsable (for tests and --stats). */
void hf_kh_counts(const struct hf_khfile *f, size_t *entries, size_t *indexed, size_t *skipped);

#endif
