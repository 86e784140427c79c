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

/* The verdict for key presented by host (an address or name as connected
 * to; matched case-insensitively) on port. */
enum hf_kh_verdict hf_kh_check(const struct hf_khfile *f, const char *host, int port,
                               const ssh_key key);

/* Host key algorithms for the key exchange, the types recorded for the host
 * first (so the server presents the key we can check), then the others, as
 * libssh orders them. Returns 1 with the list in buf, 0 when nothing is
 * recorded for the host (leave libssh's default), -1 when buf is too small. */
int hf_kh_hostkey_algorithms(const struct hf_khfile *f, const char *host, int port,
                             char *buf, size_t len);

/* Records key for host: appends "host key" (or "[host]:port key") to the
 * file (created 0600, its directory 0700 when missing) and to the index.
 * Returns 0, or -1 with a message in err. */
int hf_kh_add(struct hf_khfile *f, const char *host, int port, const ssh_key key,
              char *err, size_t errlen);

/* Lines read, indexed by name, and skipped as unparsable (for tests and --stats). */
void hf_kh_counts(const struct hf_khfile *f, size_t *entries, size_t *indexed, size_t *skipped);

#endif
