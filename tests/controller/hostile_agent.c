/* hostile_agent.c: stand-ins for a broken or malicious hubfleet-agent, for
 * the controller's fault tests. HOSTILE_MODE picks the misbehaviour at build
 * time, because the controller runs its agent without arguments. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void put(const void *p, size_t n) {
  const char *c = p;
  while (n) {
    ssize_t w = write(1, c, n);
    if (w <= 0) _exit(0);   /* controller went away */
    c += w;
    n -= (size_t)w;
  }
}

__attribute__((unused)) static void frame(const char *json) {
  unsigned char h[4];
  size_t n = strlen(json);
  h[0] = (unsigned char)(n >> 24); h[1] = (unsigned char)(n >> 16);
  h[2] = (unsigned char)(n >> 8);  h[3] = (unsigned char)n;
  put(h, 4);
  put(json, n);
}

int main(void) {
  char buf[4096];
#if HOSTILE_MODE == 1
  /* garbage: a well-sized frame whose payload is not JSON, then noise */
  frame("this is not json at all {{{");
  memset(buf, 0x5a, sizeof buf);
  for (int i = 0; i < 256; i++) put(buf, sizeof buf);
#elif HOSTILE_MODE == 2
  /* huge: announces a 100 MB frame and starts streaming it */
  static const unsigned char h[4] = { 0x06, 0x40, 0x00, 0x00 };   /* 104857600 */
  put(h, 4);
  memset(buf, 'x', sizeof buf);
  for (int i = 0; i < 25600; i++) put(buf, sizeof buf);
#elif HOSTILE_MODE == 3
  /* silent: says nothing until the controller hangs up */
#elif HOSTILE_MODE == 4
  /* version: a hello in a protocol this controller does not speak */
  frame("{\"type\":\"hello\",\"proto\":99,\"agent\":\"9.9.9\",\"arch\":\"x86_64\"}");
#elif HOSTILE_MODE >= 5 && HOSTILE_MODE <= 7
  /* Facts far past what the controller keeps per host: 20 envs of 40 long
   * packages (about 400 KB). bigpkgs (6): 200-byte prefixes and Pythons,
   * the record fits once its package lists go; bigfacts (5): 250 bytes, the
   * prefixes, Pythons and database go too; hugeenvs (7): 250-byte roles
   * and versions as well, the last environments go. */
#if HOSTILE_MODE == 6
#define SLEN 200
#else
#define SLEN 250
#endif
  frame("{\"type\":\"hello\",\"proto\":1,\"agent\":\"0.1.0\",\"arch\":\"x86_64\"}");
  unsigned char h[4];
  size_t got = 0, need;
  ssize_t r;
  while (got < 4 && (r = read(0, h + got, 4 - got)) > 0) got += (size_t)r;
  need = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
  if (got < 4 || need >= sizeof buf) return 1;
  for (got = 0; got < need && (r = read(0, buf + got, need - got)) > 0;) got += (size_t)r;
  buf[got] = 0;
  const char *id = strstr(buf, "\"id\":");
  static char out[1 << 19];
  char name[SLEN + 1], ver[SLEN + 1], role[SLEN + 1];
  memset(name, 'p', SLEN); name[SLEN] = 0;
  memset(ver, '9', SLEN); ver[SLEN] = 0;
  snprintf(role, sizeof role, "user");
  if (HOSTILE_MODE == 7) { memset(role, 'r', SLEN); role[SLEN] = 0; }
  size_t n = (size_t)snprintf(out, sizeof out, "{\"type\":\"result\",\"id\":%ld,\"ok\":true,\"data\":{\"envs\":[",
                              id ? strtol(id + 5, NULL, 10) : 1L);
  for (int e = 0; e < 20; e++) {
    n += (size_t)snprintf(out + n, sizeof out - n, "%s{\"role\":\"%s\",\"jupyterhub\":\"3.%d%s\",\"prefix\":\"/%s\","
                          "\"python\":\"%s\",\"installer\":\"pip\",\"exists\":true,\"packages\":{",
                          e ? "," : "", role, e, HOSTILE_MODE == 7 ? ver : "", name, ver);
    for (int k = 0; k < 40; k++)
      n += (size_t)snprintf(out + n, sizeof out - n, "%s\"%.190s%03d\":\"%s\"", k ? "," : "", name, k, ver);
    n += (size_t)snprintf(out + n, sizeof out - n, "}}");
  }
  n += (size_t)snprintf(out + n, sizeof out - n, "],\"db\":{\"kind\":\"sqlite\",\"path\":\"/%s\"}}}", name);
  frame(out);
#else
#error "HOSTILE_MODE must be 1..7"
#endif
  while (read(0, buf, sizeof buf) > 0) {}
  return 0;
}
