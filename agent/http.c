/* http.c: a deliberately tiny HTTP/1.1 GET client for the hub's health endpoints and the users'
 * probe: numeric addresses only (no resolver in a static binary), one deadline for connect+read,
 * bounded size. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "agent_int.h"
#include "probe.h"

struct url {
  char host[256];
  int  port;
  char path[1024];
};

static int parse_url(const char *u, struct url *out) {
  const char *p, *hs, *he, *slash;
  if (strncmp(u, "https://", 8) == 0) return HF_EUNSUPPORTED;
  if (strncmp(u, "http://", 7) != 0) return HF_EINVAL;
  p = u + 7;
  slash = strchr(p, '/');
  he = slash ? slash : p + strlen(p);
  out->port = 80;
  if (*p == '[') { /* [v6]:port */
    hs = p + 1;
    p = memchr(hs, ']', (size_t)(he - hs));
    if (p == NULL) return HF_EINVAL;
    if ((size_t)(p - hs) >= sizeof out->host) return HF_EINVAL;
    memcpy(out->host, hs, (size_t)(p - hs));
    out->host[p - hs] = '\0';
    p++;
  } else {
    const char *colon = memchr(p, ':', (size_t)(he - p));
    const char *hend = colon ? colon : he;
    if (hend == p || (size_t)(hend - p) >= sizeof out->host) return HF_EINVAL;
    memcpy(out->host, p, (size_t)(hend - p));
    out->host[hend - p] = '\0';
    p = hend;
  }
  if (p < he && *p == ':') {
    long port = 0;
    for (p++; p < he; p++) {
      if (!isdigit((unsigned char)*p)) return HF_EINVAL;
      port = port * 10 + (*p - '0');
      if (port > 65535) return HF_EINVAL;
    }
    if (port == 0) return HF_EINVAL;
    out->port = (int)port;
  } else if (p != he) {
    return HF_EINVAL;
  }
  /* Base path without its trailing slash; the caller appends "/hub/...". */
  snprintf(out->path, sizeof out->path, "%s", slash ? slash : "");
  {
    size_t n = strlen(out->path);
    while (n > 0 && out->path[n - 1] == '/') out->path[--n] = '\0';
  }
  return 0;
}

/* Decodes a chunked body in place; returns its length or -1. */
static ssize_t dechunk(char *b, size_t len) {
  size_t in = 0, out = 0;
  for (;;) {
    size_t sz = 0;
    int digits = 0;
    while (in < len && isxdigit((unsigned char)b[in])) {
      int c = tolower((unsigned char)b[in++]);
      sz = sz * 16 + (size_t)(isdigit(c) ? c - '0' : c - 'a' + 10);
      if (++digits > 8) return -1;
    }
    if (digits == 0) return -1;
    while (in < len && b[in] != '\n') in++; /* chunk extensions */
    if (in >= len) return -1;
    in++;
    if (sz == 0) return (ssize_t)out;
    if (sz > len - in) return -1;
    memmove(b + out, b + in, sz);
    out += sz;
    in += sz;
    if (in < len && b[in] == '\r') in++;
    if (in < len && b[in] == '\n') in++;
  }
}

int hf_http_parse(const char *buf, size_t len, struct hf_http_resp *r) {
  const char *hend = NULL, *p, *end = buf + len;
  long clen = -1;
  bool chunked = false;
  size_t i, blen;

  memset(r, 0, sizeof *r);
  if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ') return HF_EPROTO;
  if (!isdigit((unsigned char)buf[9]) || !isdigit((unsigned char)buf[10]) || !isdigit((unsigned char)buf[11]))
    return HF_EPROTO;
  r->status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
  for (i = 0; i + 3 < len; i++)
    if (memcmp(buf + i, "\r\n\r\n", 4) == 0) { hend = buf + i + 4; break; }
  if (hend == NULL) return HF_EPROTO;
  /* Headers: only the two that frame the body matter. */
  p = memchr(buf, '\n', len);
  while (p != NULL && p + 1 < hend) {
    const char *ls = p + 1, *le = memchr(ls, '\n', (size_t)(hend - ls));
    if (le == NULL) break;
    if (le - ls > 15 && strncasecmp(ls, "Content-Length:", 15) == 0) {
      const char *v = ls + 15;
      while (*v == ' ') v++;
      if (!isdigit((unsigned char)*v)) return HF_EPROTO;
      clen = 0;
      while (isdigit((unsigned char)*v)) {
        clen = clen * 10 + (*v++ - '0');
        if (clen > (long)HF_HTTP_MAX_RESP) return HF_EPROTO;
      }
    } else if (le - ls > 18 && strncasecmp(ls, "Transfer-Encoding:", 18) == 0) {
      const char *v = ls + 18;
      while (*v == ' ') v++;
      if (strncasecmp(v, "chunked", 7) == 0) chunked = true;
    }
    p = le;
  }
  blen = (size_t)(end - hend);
  if (!chunked && clen >= 0) {
    if ((size_t)clen > blen) return HF_EPROTO; /* cut short */
    blen = (size_t)clen;
  }
  r->body = malloc(blen + 1);
  if (r->body == NULL) return HF_ENOMEM;
  memcpy(r->body, hend, blen);
  if (chunked) {
    ssize_t n = dechunk(r->body, blen);
    if (n < 0) { hf_http_resp_free(r); return HF_EPROTO; }
    blen = (size_t)n;
  }
  r->body[blen] = '\0';
  r->body_len = blen;
  return 0;
}

void hf_http_resp_free(struct hf_http_resp *r) {
  if (r == NULL) return;
  free(r->body);
  r->body = NULL;
  r->body_len = 0;
}

/* The value of header name ("Location") in a response image, cut to outlen; "" when absent. */
static void header_value(const char *buf, size_t len, const char *name, char *out, size_t outlen) {
  size_t nl = strlen(name), i = 0;
  out[0] = '\0';
  while (i < len) {
    const char *ls = buf + i, *le = memchr(ls, '\n', len - i);
    size_t ll = le ? (size_t)(le - ls) : len - i;
    if (ll <= 1) return; /* the blank line ending the headers */
    if (ll > nl + 1 && strncasecmp(ls, name, nl) == 0 && ls[nl] == ':') {
      const char *v = ls + nl + 1, *e = ls + ll;
      while (v < e && *v == ' ') v++;
      while (e > v && (e[-1] == '\r' || e[-1] == ' ')) e--;
      snprintf(out, outlen, "%.*s", (int)(e - v), v);
      return;
    }
    i += ll + 1;
  }
}

int hf_http_get(const char *base_url, const char *path, int64_t timeout_ms, struct hf_http_resp *r) {
  return hf_http_get_loc(base_url, path, timeout_ms, r, NULL, 0);
}

int hf_http_get_loc(const char *base_url, const char *path, int64_t timeout_ms, struct hf_http_resp *r,
                    char *location, size_t loclen) {
  struct sockaddr_storage ss;
  socklen_t sslen;
  struct url u;
  char req[2048], *buf = NULL;
  size_t have = 0, sent = 0, reqlen;
  int64_t deadline = hf__now_ms() + (timeout_ms > 0 ? timeout_ms : 2000);
  int fd = -1, rc;
  const char *host;

  memset(r, 0, sizeof *r);
  if (location != NULL && loclen > 0) location[0] = '\0';
  if ((rc = parse_url(base_url, &u)) != 0) return rc;
  host = strcmp(u.host, "localhost") == 0 ? "127.0.0.1" : u.host;
  memset(&ss, 0, sizeof ss);
  {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
      s4->sin_family = AF_INET; s4->sin_port = htons((uint16_t)u.port); sslen = sizeof *s4;
    } else if (inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
      s6->sin6_family = AF_INET6; s6->sin6_port = htons((uint16_t)u.port); sslen = sizeof *s6;
    } else {
      return HF_EUNSUPPORTED;
    }
  }
  if (hf__pathf(req, sizeof req,
              "GET %s%s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: hubfleet-agent/%s\r\n"
              "Accept: application/json\r\nConnection: close\r\n\r\n",
              u.path, path, u.host, u.port, HF_VERSION) != 0)
    return HF_EINVAL;
  reqlen = strlen(req);
  fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return HF_EIO;
  if (connect(fd, (struct sockaddr *)&ss, sslen) != 0 && errno != EINPROGRESS) {
    rc = (errno == ECONNREFUSED || errno == ENETUNREACH || errno == EHOSTUNREACH) ? HF_EUNREACH : HF_EIO;
    goto out;
  }
  buf = malloc(HF_HTTP_MAX_RESP + 1);
  if (buf == NULL) { rc = HF_ENOMEM; goto out; }
  /* One loop for connect, send and receive; bounded by the deadline. */
  for (;;) {
    struct pollfd pfd = { .fd = fd, .events = sent < reqlen ? POLLOUT : POLLIN };
    int64_t left = deadline - hf__now_ms();
    int pr;
    if (left <= 0) { rc = HF_ETIMEDOUT; goto out; }
    pr = poll(&pfd, 1, (int)left);
    if (pr < 0 && errno == EINTR) continue;
    if (pr < 0) { rc = HF_EIO; goto out; }
    if (pr == 0) continue;
    if (sent < reqlen) {
      int soerr = 0;
      socklen_t sl = sizeof soerr;
      ssize_t n;
      getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
      if (soerr != 0) { rc = soerr == ECONNREFUSED ? HF_EUNREACH : HF_EIO; goto out; }
      n = send(fd, req + sent, reqlen - sent, MSG_NOSIGNAL);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n < 0) { rc = errno == ECONNREFUSED ? HF_EUNREACH : HF_EIO; goto out; }
      sent += (size_t)n;
      continue;
    }
    {
      ssize_t n = recv(fd, buf + have, HF_HTTP_MAX_RESP - have, 0);
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
      if (n < 0) { rc = errno == ECONNRESET ? HF_EPROTO : HF_EIO; goto out; }
      if (n == 0) break;
      have += (size_t)n;
      if (have >= HF_HTTP_MAX_RESP) { rc = HF_EPROTO; goto out; }
    }
  }
  rc = hf_http_parse(buf, have, r);
  if (rc == 0 && location != NULL && loclen > 0) header_value(buf, have, "Location", location, loclen);
out:
  free(buf);
  if (fd >= 0) close(fd);
  return rc;
}
