/* ssh-floor: the bare libssh cost of one host, the peer scale-bench measures
 * hubfleet against in the same run. For each "ADDRESS PORT" line on stdin, in
 * turn, with libssh's blocking API and nothing else: connect, check the host
 * key against KNOWN_HOSTS (read once, like hubfleet), authenticate with KEY
 * (imported once), run COMMAND on one channel, read its output to the end,
 * disconnect. The same libssh and OpenSSL as hubfleet, the same ciphers.
 * Prints the sessions that succeeded and the process's CPU per session.
 *
 * usage: ssh-floor KEY KNOWN_HOSTS USER COMMAND < addresses
 * Not a test: a benchmark's peer (tests/bench/scale-bench). */
#include <libssh/libssh.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "hf_engine.h"     /* HF_SSH_CIPHERS: what hubfleet offers */
#include "hf_sanitize.h"   /* libssh's errors carry the host's words */

#define MAX_KH 40000
#define KH_SLOTS 65536   /* a power of two above MAX_KH: open addressing */

struct kh { char addr[64]; char type[64]; char *b64; };

static struct kh khs[MAX_KH];
static size_t nkh;
static int slots[KH_SLOTS];   /* index + 1 into khs, 0 when empty */

static size_t kh_hash(const char *s) {
  size_t h = 14695981039346656037u;
  for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211u;
  return h & (KH_SLOTS - 1);
}

static int load_known_hosts(const char *path) {
  FILE *f = fopen(path, "r");
  char line[8192];
  if (!f) { perror(path); return -1; }
  while (nkh < MAX_KH && fgets(line, sizeof line, f)) {
    char a[64], t[64], k[8000];
    if (line[0] == '#' || sscanf(line, "%63s %63s %7999s", a, t, k) != 3) continue;
    struct kh *e = &khs[nkh];
    snprintf(e->addr, sizeof e->addr, "%s", a);
    snprintf(e->type, sizeof e->type, "%s", t);
    if (!(e->b64 = strdup(k))) { fclose(f); return -1; }
    size_t h = kh_hash(a);
    while (slots[h]) h = (h + 1) & (KH_SLOTS - 1);
    slots[h] = (int)++nkh;
  }
  fclose(f);
  return 0;
}

static const struct kh *kh_find(const char *addr) {
  for (size_t h = kh_hash(addr); slots[h]; h = (h + 1) & (KH_SLOTS - 1))
    if (!strcmp(khs[slots[h] - 1].addr, addr)) return &khs[slots[h] - 1];   /* first line wins */
  return NULL;
}

static int one_host(const char *addr, int port, const char *user, ssh_key key, const char *cmd) {
  ssh_session s = ssh_new();
  ssh_channel ch = NULL;
  ssh_key srv = NULL, want = NULL;
  const struct kh *e = kh_find(addr);
  int ok = 0, no = 0, yes = 1;
  long to = 30;
  char buf[16384];
  if (!e) { fprintf(stderr, "ssh-floor: %s: not in the known_hosts file\n", addr); goto out; }
  if (!s) goto out;
  if (ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no) < 0 ||
      ssh_options_set(s, SSH_OPTIONS_HOST, addr) < 0 || ssh_options_set(s, SSH_OPTIONS_PORT, &port) < 0 ||
      ssh_options_set(s, SSH_OPTIONS_USER, user) < 0 ||
      ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") < 0 ||
      ssh_options_set(s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") < 0 ||
      ssh_options_set(s, SSH_OPTIONS_HOSTKEYS, e->type) < 0 ||
      ssh_options_set(s, SSH_OPTIONS_CIPHERS_C_S, HF_SSH_CIPHERS) < 0 ||
      ssh_options_set(s, SSH_OPTIONS_CIPHERS_S_C, HF_SSH_CIPHERS) < 0 ||
      ssh_options_set(s, SSH_OPTIONS_NODELAY, &yes) < 0 ||   /* as hubfleet's sockets */
      ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &to) < 0)
    goto out;
  if (ssh_connect(s) != SSH_OK) { fprintf(stderr, "ssh-floor: %s: %s\n", addr, ssh_get_error(s)); goto out; }
  if (ssh_get_server_publickey(s, &srv) != SSH_OK ||
      ssh_pki_import_pubkey_base64(e->b64, ssh_key_type_from_name(e->type), &want) != SSH_OK ||
      ssh_key_cmp(srv, want, SSH_KEY_CMP_PUBLIC) != 0) {
    fprintf(stderr, "ssh-floor: %s: host key does not match %s\n", addr, e->type);
    goto out;
  }
  if (ssh_userauth_publickey(s, NULL, key) != SSH_AUTH_SUCCESS) {
    fprintf(stderr, "ssh-floor: %s: authentication: %s\n", addr, ssh_get_error(s));
    goto out;
  }
  if (!(ch = ssh_channel_new(s)) || ssh_channel_open_session(ch) != SSH_OK ||
      ssh_channel_request_exec(ch, cmd) != SSH_OK)
    goto out;
  for (int i = 0; i < 100000; i++) {
    int n = ssh_channel_read(ch, buf, sizeof buf, 0);
    if (n < 0) goto out;
    if (n == 0 && ssh_channel_is_eof(ch)) break;
  }
  ok = 1;
out:
  ssh_key_free(srv);
  ssh_key_free(want);
  if (s) { ssh_disconnect(s); ssh_free(s); }   /* frees the channel too, as hubfleet does */
  return ok;
}

int main(int argc, char **argv) {
  ssh_key key = NULL;
  char line[512];
  size_t n = 0, ok = 0;
  hf_sanitize_stdio();   /* as hubfleet: no host text reaches the terminal raw */
  if (argc != 5) {
    fprintf(stderr, "usage: ssh-floor KEY KNOWN_HOSTS USER COMMAND < addresses\n");
    return 2;
  }
  if (ssh_pki_import_privkey_file(argv[1], NULL, NULL, NULL, &key) != SSH_OK) {
    fprintf(stderr, "ssh-floor: cannot read the key %s\n", argv[1]);
    return 2;
  }
  if (load_known_hosts(argv[2]) < 0) return 2;
  while (fgets(line, sizeof line, stdin)) {
    char addr[64];
    int port = 22;
    if (sscanf(line, "%63s %d", addr, &port) < 1) continue;
    n++;
    ok += (size_t)one_host(addr, port, argv[3], key, argv[4]);
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  double cpu_ms = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
  printf("ssh-floor: %zu sessions, %zu ok, cpu %.1f ms (%.3f ms/session; user %.3f, sys %.3f)\n", n, ok, cpu_ms,
         n ? cpu_ms / (double)n : 0.0,
         n ? (ru.ru_utime.tv_sec * 1e3 + ru.ru_utime.tv_usec / 1e3) / (double)n : 0.0,
         n ? (ru.ru_stime.tv_sec * 1e3 + ru.ru_stime.tv_usec / 1e3) / (double)n : 0.0);
  ssh_key_free(key);
  for (size_t i = 0; i < nkh; i++) free(khs[i].b64);
  return ok == n ? 0 : 1;
}
