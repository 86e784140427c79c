/* test_output.c: the controller's output edge (controller/cli/sanitize.c, issue 13 items 1 and 5):
 * the terminal filter against what a hostile host sends, and the files written for other
 * programs (report, Prometheus) against a symlink planted under the old PATH.tmp.PID name. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <jansson.h>

#include "hf_prom.h"
#include "hf_sanitize.h"

static int failures, checks;
#define CHECK(c) do { checks++; if (!(c)) { failures++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); } } while (0)

static const char evil[] = "\x1b]0;title\x07\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J\rh2: upgraded\n"
                           "\xc2\x9b" "31m \xe2\x80\xae" "evil \x7f\x08 \xff\xfe caf\xc3\xa9 \xe2\x9c\x93 ok\n";

/* No byte that steers a terminal: C0 but \n and \t, DEL, C1 (as UTF-8), bidi, invalid UTF-8. */
static int dangerous_bytes(const char *s, size_t n) {
  int bad = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f || c == 0xff || c == 0xfe) bad++;
    if (c == 0xc2 && i + 1 < n && (unsigned char)s[i + 1] < 0xa0) bad++;
    if (c == 0xe2 && i + 2 < n && (unsigned char)s[i + 1] == 0x80 && (unsigned char)s[i + 2] == 0xae) bad++;
  }
  return bad;
}

static void test_clean(void) {
  char out[sizeof evil];
  size_t used, n = hf_clean_bytes(evil, sizeof evil - 1, out, &used, true);
  CHECK(used == sizeof evil - 1);
  CHECK(n <= sizeof evil - 1);
  CHECK(dangerous_bytes(out, n) == 0);
  out[n] = '\0';
  CHECK(strstr(out, "caf\xc3\xa9 \xe2\x9c\x93 ok\n") != NULL); /* text in other scripts stays */
  CHECK(strstr(out, "\nh2: upgraded") == NULL);              /* no line starts with the spoof */
  /* A sequence cut between two writes is held back, not broken. */
  n = hf_clean_bytes("ab\xc3", 3, out, &used, false);
  CHECK(n == 2 && used == 2);
  n = hf_clean_bytes("ab\xc3", 3, out, &used, true);
  CHECK(n == 3 && out[2] == '?');
  {
    char small[8];
    hf_clean(small, sizeof small, "caf\xc3\xa9\xc3\xa9\xc3\xa9");
    CHECK(strlen(small) <= 7 && dangerous_bytes(small, strlen(small)) == 0);
  }
}

/* Everything printed through stdout and stderr after hf_sanitize_stdio is
 * filtered; hf_term_raw gets the controller's own escapes through. */
static void test_stdio(const char *dir) {
  char path[4096], buf[16384];
  int saved = dup(STDOUT_FILENO), fd;
  ssize_t n;
  snprintf(path, sizeof path, "%s/stdout", dir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  fflush(stdout);
  dup2(fd, STDOUT_FILENO);
  close(fd);
  CHECK(hf_sanitize_stdio() == 0);
  printf("host said: %s", evil);
  for (int i = 0; i < 3000; i++) printf("%s", "\xe2\x9c\x93"); /* sequences across buffer ends */
  printf("\n");
  hf_term_raw(stdout, "\r\033[K");
  fflush(stdout);
  dup2(saved, STDOUT_FILENO);
  close(saved);
  fd = open(path, O_RDONLY);
  n = read(fd, buf, sizeof buf);
  close(fd);
  CHECK(n > 9000);
  CHECK(n >= 4 && memcmp(buf + n - 4, "\r\033[K", 4) == 0);
  CHECK(dangerous_bytes(buf, (size_t)n - 4) == 0);
  CHECK(memmem(buf, (size_t)n, "\xe2\x9c\x93\xe2\x9c\x93", 6) != NULL);
  CHECK(memmem(buf, (size_t)n, "\xe2\x9c?", 3) == NULL && memmem(buf, (size_t)n, "?\x9c\x93", 3) == NULL);
}

/* The Prometheus writer and hf_out: a symlink under the old temporary name
 * is never followed; no temporary file stays behind. */
static void test_out_files(const char *dir) {
  char victim[1024], path[1024], old_tmp[4096], err[512], buf[64];
  struct stat st;
  int fd;
  ssize_t n;
  snprintf(victim, sizeof victim, "%s/victim", dir);
  snprintf(path, sizeof path, "%s/hubfleet.prom", dir);
  snprintf(old_tmp, sizeof old_tmp, "%s.tmp.%ld", path, (long)getpid());
  fd = open(victim, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  CHECK(write(fd, "keep", 4) == 4);
  close(fd);
  CHECK(symlink(victim, old_tmp) == 0);
  json_t *doc = json_pack("{s:[{s:s,s:b,s:{s:[{s:s,s:s,s:s}]}}]}", "hosts", "name", "h1", "ok", 1, "facts", "envs",
                          "prefix", "/opt/hub", "role", "hub", "jupyterhub", "3.1.0");
  CHECK(hf_prom_write_audit(path, doc, NULL, 0.5, err, sizeof err) == 0);
  json_decref(doc);
  fd = open(victim, O_RDONLY);
  n = read(fd, buf, sizeof buf);
  close(fd);
  CHECK(n == 4 && memcmp(buf, "keep", 4) == 0);
  CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 0777) == 0644);
  unlink(old_tmp);
  /* Nothing but the three files: no temporary one left behind. */
  {
    struct hf_out o;
    CHECK(hf_out_open(&o, path, 0600, err, sizeof err) == 0);
    fputs("half", o.f);
    CHECK(hf_out_commit(&o, false, err, sizeof err) == 0); /* abandoned: the old file stays */
    CHECK(lstat(o.tmp, &st) != 0);
    CHECK(lstat(path, &st) == 0 && st.st_size > 100);
  }
}

int main(void) {
  char dir[] = "/tmp/hf-output-test-XXXXXX";
  if (mkdtemp(dir) == NULL) { perror("mkdtemp"); return 2; }
  test_clean();
  test_out_files(dir);
  test_stdio(dir);
  {
    static const char *const names[] = { "victim", "hubfleet.prom", "stdout" };
    char p[4096];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
      snprintf(p, sizeof p, "%s/%s", dir, names[i]);
      unlink(p);
    }
    rmdir(dir);
  }
  fprintf(stderr, "%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
