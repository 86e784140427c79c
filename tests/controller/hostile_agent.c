/* hostile_agent.c: stand-ins for a broken or malicious hubfleet-agent, for
 * the controller's fault tests. HOSTILE_MODE picks the misbehaviour at build
 * time, because the controller runs its agent without arguments. */
#include <stdio.h>
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
#else
#error "HOSTILE_MODE must be 1..4"
#endif
  while (read(0, buf, sizeof buf) > 0) {}
  return 0;
}
