/* connect.c: the session states that reach the host: TCP connect, SSH handshake, the host key
 * checked against known_hosts, authentication (keys and ssh-agent, planned once per session). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"

static int check_host_key(struct hf_session *s);

int hf__in_connecting(struct hf_session *s) {
  struct hf_engine *e = s->e;
  int soerr = 0;
  socklen_t sl = sizeof soerr;
  if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0) soerr = errno;
  if (soerr == EINPROGRESS || soerr == EALREADY) return 1;
  if (soerr == ECONNRESET && s->retries < e->o.max_retries) {
    hf__retry_later(s);   /* accepted by the kernel, then dropped by sshd */
    return 1;
  }
  if (soerr && hf__next_address(s)) return 1;
  if (soerr) {
    hf__failf(s, HF_EUNREACH, "%s: connect to %s port %d: %s", s->host->name, s->host->address,
          s->host->port, strerror(soerr));
    return -1;
  }
  const struct hf_host *h = s->host;
  /* Host keys are checked against the file the controller read once (see
   * hf_knownhosts.h); libssh is given an empty one so it does not read and
   * parse the whole file twice per session. The key types recorded for the
   * host come first in the key exchange, as libssh would order them. */
  char kherr[PATH_MAX + 128], algos[512];
  if (!s->khf && !(s->khf = hf_kh_file(e->kh, s->kh_file, kherr, sizeof kherr))) {
    hf__failf(s, HF_EHOSTKEY, "%s: %s", h->name, kherr);
    return -1;
  }
  if (hf_kh_match(s->khf, h->address, h->port, &s->khm) < 0) {
    hf__failf(s, HF_ENOMEM, "%s: cannot look up %s in %s", h->name, h->address, s->kh_file);
    return -1;
  }
  int known = hf_kh_match_algorithms(s->khf, &s->khm, algos, sizeof algos);
  ssh_session ssh = ssh_new();
  if (!ssh) { hf__failf(s, HF_ENOMEM, "%s: ssh_new failed", s->host->name); return -1; }
  s->ssh = ssh;
  bool no = false;
  int port = h->port;
  socket_t sfd = s->fd;
  long to = (long)(e->o.timeout_ms / 1000);
  /* libssh's own SSH directory is never read (no config, known_hosts given,
   * keys ours), but left unset libssh looks it up in the password database
   * (getpwuid_r: /etc/nsswitch.conf and /etc/passwd read) for every
   * session: name the controller's own. */
  char sshdir[PATH_MAX + 8];
  snprintf(sshdir, sizeof sshdir, "%s/.ssh", e->home[0] == '/' ? e->home : "/nonexistent");
  /* ~/.ssh/config and /etc/ssh/ssh_config are never read: they could weaken
   * host key checking or redirect the host. */
  if (ssh_options_set(ssh, SSH_OPTIONS_PROCESS_CONFIG, &no) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_SSH_DIR, sshdir) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_HOST, h->address) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_PORT, &port) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") < 0 ||
      (known > 0 && ssh_options_set(ssh, SSH_OPTIONS_HOSTKEYS, algos) < 0) ||
      ssh_options_set(ssh, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_CIPHERS_C_S, HF_SSH_CIPHERS) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_CIPHERS_S_C, HF_SSH_CIPHERS) < 0 ||
      ssh_options_set(ssh, SSH_OPTIONS_TIMEOUT, &to) < 0 ||
      (h->user && ssh_options_set(ssh, SSH_OPTIONS_USER, h->user) < 0) ||
      ssh_options_set(ssh, SSH_OPTIONS_FD, &sfd) < 0) {
    hf__fail_ssh(s, HF_ESSH, "setting SSH options");
    return -1;
  }
  s->ssh_fd = s->fd;   /* libssh uses the socket now; closing it stays ours */
  s->fd = -1;
  ssh_set_blocking(ssh, 0);
  hf__set_state(s, HF_SS_HANDSHAKE);
  hf__deadline(s, e->o.timeout_ms);
  return 0;
}

void hf__retry_later(struct hf_session *s) {
  struct hf_engine *e = s->e;
  s->retries++;
  e->st.retries++;
  hf__hs_release(s);
  hf__teardown_ssh(s);
  hf__set_state(s, HF_SS_BACKOFF);
  hf__deadline(s, hf_backoff_ms(s->retries, BACKOFF_BASE_MS, BACKOFF_CAP_MS, &e->rng));
}

int hf__in_handshake(struct hf_session *s) {
  int rc = ssh_connect(s->ssh);
  if (rc == SSH_AGAIN) return 1;
  if (rc != SSH_OK) {
    const char *msg = ssh_get_error(s->ssh);
    if (hf_ssh_error_retryable(msg) && s->retries < s->e->o.max_retries) {
      hf__retry_later(s);
      return 1;
    }
    hf__failf(s, HF_EUNREACH, "%s: SSH handshake with %s port %d failed%s: %s", s->host->name,
          s->host->address, s->host->port,
          s->retries ? " after retries" : "", msg);
    return -1;
  }
  if (check_host_key(s) < 0) return -1;
  hf__set_state(s, HF_SS_AUTH);
  hf__deadline(s, s->e->o.timeout_ms);
  return 0;
}

static int check_host_key(struct hf_session *s) {
  struct hf_engine *e = s->e;
  const struct hf_host *h = s->host;
  ssh_key key = NULL;
  if (ssh_get_server_publickey(s->ssh, &key) != SSH_OK) {
    hf__fail_ssh(s, HF_EHOSTKEY, "cannot read the server's host key");
    return -1;
  }
  /* Lines another session added since this one connected count too. */
  if (hf_kh_match(s->khf, h->address, h->port, &s->khm) < 0) {
    ssh_key_free(key);
    hf__failf(s, HF_EHOSTKEY, "%s: cannot look up %s in %s", h->name, h->address, s->kh_file);
    return -1;
  }
  enum hf_kh_verdict k = hf_kh_match_check(s->khf, &s->khm, key);
  if (k == HF_KH_OK) { ssh_key_free(key); return 0; }
  char fp[128] = "?";
  unsigned char *hash = NULL;
  size_t hlen = 0;
  if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hlen) == 0) {
    char *f = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hlen);
    if (f) {
      snprintf(fp, sizeof fp, "%s %s", ssh_key_type_to_char(ssh_key_type(key)), f);
      ssh_string_free_char(f);
    }
  }
  ssh_clean_pubkey_hash(&hash);
  char msg[sizeof s->err];
  enum hf_hostkey_problem p = HF_HOSTKEY_UNKNOWN;
  switch (k) {
  case HF_KH_UNKNOWN:
    if (e->o.accept_new) {
      int rc = hf_kh_add(s->khf, h->address, h->port, key, msg, sizeof msg);
      ssh_key_free(key);
      if (rc < 0) {
        hf__failf(s, HF_EHOSTKEY, "%s: --accept-new: cannot record the host key: %s", h->name, msg);
        return -1;
      }
      fprintf(stderr, "hubfleet: %s: new host key %s added to %s (--accept-new)\n",
              h->name, fp, s->kh_file);
      return 0;
    }
    p = HF_HOSTKEY_UNKNOWN;
    break;
  case HF_KH_CHANGED: p = HF_HOSTKEY_CHANGED; break;
  case HF_KH_OTHER: p = HF_HOSTKEY_OTHER; break;
  case HF_KH_REVOKED: default: p = HF_HOSTKEY_REVOKED; break;
  }
  ssh_key_free(key);
  hf_hostkey_message(p, h->name, h->address, h->port, fp, s->kh_file, msg, sizeof msg);
  hf__failf(s, HF_EHOSTKEY, "%s", msg);
  return -1;
}

int hf__in_auth(struct hf_session *s) {
  while (s->auth_idx < s->nauth) {
    struct auth_method *m = &s->auth[s->auth_idx];
    int rc = m->kind == AUTH_AGENT ? ssh_userauth_agent(s->ssh, NULL)
                                   : ssh_userauth_publickey(s->ssh, NULL, m->key);
    if (rc == SSH_AUTH_AGAIN) return 1;
    if (rc == SSH_AUTH_SUCCESS) {
      hf__hs_release(s);
      if (s->bare) {
        /* A bastion's connection is ready once authenticated. */
        hf__deadline(s, 0);
        hf__set_state(s, HF_SS_READY);
        s->ready_fired = true;
        s->ready_cb(s, 0, s->ctx);
        return s->closing || s->state != HF_SS_READY ? -1 : 0;
      }
      s->ch = ssh_channel_new(s->ssh);
      if (!s->ch) { hf__fail_ssh(s, HF_ESSH, "channel"); return -1; }
      hf__set_state(s, HF_SS_CHANOPEN);
      hf__deadline(s, s->e->o.timeout_ms);
      return 0;
    }
    if (rc == SSH_AUTH_ERROR) { hf__fail_ssh(s, HF_ESSH, "authentication"); return -1; }
    s->auth_idx++;   /* denied or partial: next method */
  }
  char tried[300] = "";
  for (int i = 0; i < s->nauth; i++) {
    size_t n = strlen(tried);
    snprintf(tried + n, sizeof tried - n, "%s%s", i ? ", " : "", s->auth[i].what);
  }
  /* Never retried: repeating a refused login only locks accounts. */
  hf__failf(s, HF_EAUTH, "%s: authentication refused for user %s (tried: %s); check "
        "ansible_user/ansible_ssh_private_key_file or load the key into ssh-agent",
        s->host->name, s->host->user ? s->host->user : "(current user)",
        s->nauth ? tried : "no usable key");
  return -1;
}

/* A private key imported once per engine: parsing it per host would cost
 * more CPU than the whole handshake. NULL when it cannot be read. */
static ssh_key engine_key(struct hf_engine *e, const char *path) {
  for (struct authkey *k = e->keys; k; k = k->next)
    if (!strcmp(k->path, path)) return k->key;
  size_t n = strlen(path);
  struct authkey *k = calloc(1, sizeof *k + n + 1);
  if (!k) return NULL;
  memcpy(k->path, path, n + 1);
  if (ssh_pki_import_privkey_file(path, NULL, NULL, NULL, &k->key) != SSH_OK) k->key = NULL;
  k->next = e->keys;
  e->keys = k;
  return k->key;
}

void hf__plan_auth(struct hf_session *s) {
  struct hf_engine *e = s->e;
  const struct hf_host *h = s->host;
  s->nauth = 0;
  if (h->key_file && *h->key_file) {
    ssh_key k = engine_key(e, h->key_file);
    if (k) s->auth[s->nauth++] = (struct auth_method){ AUTH_KEY, k, h->key_file };
    if (e->have_agent_sock) s->auth[s->nauth++] = (struct auth_method){ AUTH_AGENT, NULL, "ssh-agent" };
    return;
  }
  if (e->have_agent_sock) s->auth[s->nauth++] = (struct auth_method){ AUTH_AGENT, NULL, "ssh-agent" };
  static const char *const defaults[] = { "id_ed25519", "id_ecdsa", "id_rsa" };
  for (size_t i = 0; i < sizeof defaults / sizeof *defaults; i++) {
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/.ssh/%s", e->home, defaults[i]);
    if (access(p, R_OK) != 0) continue;
    ssh_key k = engine_key(e, p);
    /* The path string must outlive the session: use the cached copy. */
    for (struct authkey *ak = e->keys; ak; ak = ak->next)
      if (ak->key == k && k) { s->auth[s->nauth++] = (struct auth_method){ AUTH_KEY, k, ak->path }; break; }
  }
}
