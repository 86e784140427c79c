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
#elif HOSTILE_MODE == 5
  /* bigfacts: a valid hello, then an answer to the facts request far past
   * what the controller keeps per host (20 envs of 40 long packages): the
   * audit must keep a bounded record, the envs cut to their versions. */
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
  char name[251], ver[251];
  memset(name, 'p', 250); name[250] = 0;
  memset(ver, '9', 250); ver[250] = 0;
  size_t n = (size_t)snprintf(out, sizeof out, "{\"type\":\"result\",\"id\":%ld,\"ok\":true,\"data\":{\"envs\":[",
                              id ? strtol(id + 5, NULL, 10) : 1L);
  for (int e = 0; e < 20; e++) {
    n += (size_t)snprintf(out + n, sizeof out - n, "%s{\"role\":\"user\",\"jupyterhub\":\"3.%d\",\"prefix\":\"/%s\","
                          "\"python\":\"%s\",\"installer\":\"pip\",\"exists\":true,\"packages\":{",
                          e ? "," : "", e, name, ver);
    for (int k = 0; k < 40; k++)
      n += (size_t)snprintf(out + n, sizeof out - n, "%s\"%.190s%03d\":\"%s\"", k ? "," : "", name, k, ver);
    n += (size_t)snprintf(out + n, sizeof out - n, "}}");
  }
  n += (size_t)snprintf(out + n, sizeof out - n, "],\"db\":{\"kind\":\"sqlite\",\"path\":\"/%s\"}}}", name);
  frame(out);
#else
#error "HOSTILE_MODE must be 1..5"
#endif
  while (read(0, buf, sizeof buf) > 0) {}
  return 0;
}
