/* deploy.c: the session states that start the agent on the host: the start command's probe
 * (cached agent checked by its SHA-256), and when it is missing the upload and its verification. */
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

/* Whether the start command's first line is "MARKER PATH": PATH (a host's
 * text, kept on one line) into path. */
static bool marker_path(struct hf_session *s, const char *marker, char *path, size_t len) {
  size_t m = strlen(marker);
  if (strncmp(s->line, marker, m) || s->line[m] != ' ') return false;
  char *nl = strchr(s->line, '\n');
  if (nl) *nl = '\0';
  hf_clean_line(path, len, s->line + m + 1);
  return true;
}

int hf__in_probe(struct hf_session *s) {
  char buf[READ_CHUNK];
  for (;;) {
    int n = hf__chan_read(s, s->ch, buf, sizeof buf);
    if (n == 0) return 1;
    if (n == SSH_EOF) {
      if (s->line_len >= strlen(HF_DEPLOY_NEED_UPLOAD) &&
          !memcmp(s->line, HF_DEPLOY_NEED_UPLOAD, strlen(HF_DEPLOY_NEED_UPLOAD)))
        goto need_upload;
      hf__set_err(s, HF_EEXEC, "%s: the agent start command ended without output", s->host->name);
      hf__err_add_tail(s);
      hf__sess_fail(s);
      return -1;
    }
    if (n < 0) return -1;
    if (s->line_len == 0 && buf[0] != 'H') {
      /* A frame header (its first byte is 0 for any legal length): the
       * cached agent started. Anything else goes to the decoder too and
       * fails there as a protocol error. */
      hf__set_state(s, HF_SS_HELLO);
      if (!s->uploaded) s->e->st.reused++;
      if (s->up_held) { s->e->st.upload_skipped++; hf__up_release(s); }
      if (hf__feed(s, buf, (size_t)n) < 0) return -1;
      return 0;
    }
    size_t k = (size_t)n;
    if (k > sizeof s->line - 1 - s->line_len) k = sizeof s->line - 1 - s->line_len;
    memcpy(s->line + s->line_len, buf, k);
    s->line_len += k;
    s->line[s->line_len] = 0;
    if (strchr(s->line, '\n') || s->line_len >= sizeof s->line - 1) {
      if (!strncmp(s->line, HF_DEPLOY_NEED_UPLOAD "\n", strlen(HF_DEPLOY_NEED_UPLOAD) + 1))
        goto need_upload;
      char path[sizeof s->line];
      if (marker_path(s, HF_DEPLOY_NOFIND, path, sizeof path)) {
        hf__failf(s, HF_EUNSUPPORTED, "%s: refusing to run the agent: the host's find cannot check the owner and "
              "mode of %s (a find with -maxdepth, -perm and -user is needed: GNU findutils or busybox)",
              s->host->name, path);
        return -1;
      }
      if (marker_path(s, HF_DEPLOY_UNSAFE, path, sizeof path)) {
        hf__failf(s, HF_EINTEGRITY, "%s: refusing to run the agent: %s is writable by group or others, "
              "or not the login's own (fix: chmod go-w, or chown it to the login)",
              s->host->name, path);
        return -1;
      }
      hf__failf(s, HF_EPROTO, "%s: unexpected output from the agent start command", s->host->name);
      return -1;
    }
  }
need_upload:
  if (s->uploaded) {
    hf__failf(s, HF_EEXEC, "%s: the agent is still missing right after a verified upload "
          "(is $HOME/.cache writable and on a filesystem that allows exec?)", s->host->name);
    return -1;
  }
  ssh_channel_close(s->ch);
  ssh_channel_free(s->ch);
  s->ch = NULL;
  struct hf_engine *e = s->e;
  if (!s->up_held) {
    if (e->up_inflight >= e->o.max_uploads) {
      /* Wait for a slot, then probe again (see up_release). */
      hf__deadline(s, 0);
      hf__set_state(s, HF_SS_UPWAIT);
      hf__q_push(&e->upq, s);
      return 1;
    }
    s->up_held = true;
    e->up_inflight++;
  }
  char perr[600];
  if (hf_payload_gzip(&e->agent, perr, sizeof perr) < 0) {
    hf__failf(s, HF_EIO, "%s: %s", s->host->name, perr);
    return -1;
  }
  e->st.payload_bytes = e->agent.gz_len;
  s->up = ssh_channel_new(s->ssh);
  if (!s->up) { hf__fail_ssh(s, HF_ESSH, "channel"); return -1; }
  e->st.uploads++;
  hf__set_state(s, HF_SS_UPOPEN);
  /* During the upload the deadline means "no progress for that long": it
   * is re-armed with every chunk the host takes. */
  hf__deadline(s, s->e->o.timeout_ms);
  return 0;
}

int hf__in_upload(struct hf_session *s) {
  struct hf_engine *e = s->e;
  const unsigned char *gz = e->agent.gz;
  size_t len = e->agent.gz_len;
  for (int i = 0; i < 256; i++) {
    /* Reading runs libssh's packet handling: window adjusts come in and
     * what it still holds goes out when the socket takes it. */
    if (hf__drain_stderr(s, s->up) < 0) { hf__fail_ssh(s, HF_EIO, "agent upload"); return -1; }
    if (s->up_off == len) {
      if (ssh_channel_send_eof(s->up) == SSH_ERROR) { hf__fail_ssh(s, HF_EIO, "agent upload"); return -1; }
      s->line_len = 0;
      hf__set_state(s, HF_SS_UPVERIFY);
      return 0;
    }
    /* Only write when libssh has flushed what it holds, so at most one
     * chunk per session sits in memory whatever the window. What is really
     * queued counts (ssh_get_status), not libssh's stale POLLOUT interest,
     * which would cost a loop iteration per chunk. */
    if (ssh_get_status(s->ssh) & SSH_WRITE_PENDING) return 1;
    uint32_t win = ssh_channel_window_size(s->up);
    if (win == 0) {
      /* Process incoming packets (window adjust) without blocking. */
      char b;
      int r = ssh_channel_read_nonblocking(s->up, &b, 0, 0);
      if (r < 0 && r != SSH_EOF) { hf__fail_ssh(s, HF_EIO, "agent upload"); return -1; }
      if (ssh_channel_window_size(s->up) == 0) return 1;
      continue;
    }
    size_t n = len - s->up_off;
    if (n > UPLOAD_CHUNK) n = UPLOAD_CHUNK;
    if (n > win) n = win;
    int w = ssh_channel_write(s->up, gz + s->up_off, (uint32_t)n);
    if (w < 0) { hf__fail_ssh(s, HF_EIO, "agent upload"); return -1; }
    s->up_off += (size_t)w;
    e->st.upload_bytes += (uint64_t)w;
    if (w == 0) return 1;
    hf__deadline(s, e->o.timeout_ms);
  }
  return 1;
}

int hf__in_upverify(struct hf_session *s) {
  char buf[512];
  for (int i = 0;; i++) {
    if (i == 64) { s->kick = true; return 1; }
    int n = hf__chan_read(s, s->up, buf, sizeof buf);
    if (n == 0) return 1;
    if (n < 0 && n != SSH_EOF) return -1;
    if (n > 0) {
      size_t k = (size_t)n;
      if (k > sizeof s->line - 1 - s->line_len) k = sizeof s->line - 1 - s->line_len;
      memcpy(s->line + s->line_len, buf, k);
      s->line_len += k;
      s->line[s->line_len] = 0;
      continue;
    }
    /* EOF: the command's verdict is complete. */
    if (strncmp(s->line, HF_DEPLOY_UPLOADED, strlen(HF_DEPLOY_UPLOADED))) {
      char verdict[sizeof s->line];
      hf_clean_line(verdict, sizeof verdict, s->line);
      hf__set_err(s, HF_EINTEGRITY, "%s: agent upload not verified on the host (%.60s)", s->host->name,
              s->line_len ? verdict : "no verdict");
      hf__err_add_tail(s);
      hf__sess_fail(s);
      return -1;
    }
    s->uploaded = true;
    hf__up_release(s);
    ssh_channel_close(s->up);
    ssh_channel_free(s->up);
    s->up = NULL;
    s->ch = ssh_channel_new(s->ssh);
    if (!s->ch) { hf__fail_ssh(s, HF_ESSH, "channel"); return -1; }
    hf__set_state(s, HF_SS_CHANOPEN);
    hf__deadline(s, s->e->o.timeout_ms);
    return 0;
  }
}

/* Its turn to upload came: probe again on a new channel first (another
 * host sharing the home may have uploaded the agent meanwhile). */
void hf__reprobe(struct hf_session *s) {
  s->ch = ssh_channel_new(s->ssh);
  if (!s->ch) { hf__fail_ssh(s, HF_ESSH, "channel"); return; }
  hf__set_state(s, HF_SS_CHANOPEN);
  hf__deadline(s, s->e->o.timeout_ms);
  hf__drive(s);
}
