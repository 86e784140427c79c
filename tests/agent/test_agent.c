/* test_agent.c: unit tests of the agent's parts: SHA-256, journal (with the power-cut
 * simulation), metadata and environment reading, HTTP parsing and probing, the process runner,
 * and the request loop fed hostile frames. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sqlite3.h>

#include "agent_int.h"
#include "hf_agent.h"
#include "hf_safefile.h"

static int failures, checks;

#define CHECK(cond) do { checks++; if (!(cond)) { failures++; \
  fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__, __func__, #cond); } } while (0)
#define CHECK_EQ_INT(a, b) do { long long a_ = (a), b_ = (b); checks++; if (a_ != b_) { failures++; \
  fprintf(stderr, "%s:%d: %s: %s == %lld, expected %lld\n", __FILE__, __LINE__, __func__, #a, a_, b_); } } while (0)
#define CHECK_STR(a, b) do { const char *a_ = (a), *b_ = (b); checks++; \
  if (a_ == NULL || strcmp(a_, b_) != 0) { failures++; \
  fprintf(stderr, "%s:%d: %s: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, __func__, #a, a_ ? a_ : "(null)", b_); } } while (0)

static char tmpdir[PATH_MAX];

static void write_file(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  if (f == NULL) { perror(path); exit(2); }
  fputs(text, f);
  fclose(f);
}

static void mkpath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void mkpath(const char *fmt, ...) {
  char p[PATH_MAX];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(p, sizeof p, fmt, ap);
  va_end(ap);
  if (hf__mkdirs(p, 0755) != 0) { perror(p); exit(2); }
}

/* ---- SHA-256 ------------------------------------------------------------------------ */

static void test_sha256(void) {
  static const struct { const char *in; const char *hex; } v[] = {
    { "", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" },
    { "abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" },
    { "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
      "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1" },
    { "abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmnopqrstnopqrstu",
      "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1" },
    { "The quick brown fox jumps over the lazy dog",
      "d7a8fbb307d7809469ca9abcb0082e4f8d5651e46d3cdb762d02d0bf37c9e592" },
  };
  char hex[HF_SHA256_HEX], path[PATH_MAX];
  struct hf_sha256 c;
  unsigned char d[HF_SHA256_LEN], *big;
  size_t i, split;

  for (i = 0; i < sizeof v / sizeof v[0]; i++) {
    hf_sha256_hex(v[i].in, strlen(v[i].in), hex);
    CHECK_STR(hex, v[i].hex);
    /* Every split point of the same input gives the same digest. */
    for (split = 0; split <= strlen(v[i].in); split++) {
      hf_sha256_init(&c);
      hf_sha256_update(&c, v[i].in, split);
      hf_sha256_update(&c, v[i].in + split, strlen(v[i].in) - split);
      hf_sha256_final(&c, d);
      hf_sha256_tohex(d, hex);
      CHECK_STR(hex, v[i].hex);
    }
  }
  /* One million 'a' (FIPS 180-2 appendix B.3), fed in odd-sized pieces, and as a file. */
  big = malloc(1000000);
  memset(big, 'a', 1000000);
  hf_sha256_init(&c);
  for (i = 0; i < 1000000; i += 997) hf_sha256_update(&c, big + i, 1000000 - i < 997 ? 1000000 - i : 997);
  hf_sha256_final(&c, d);
  hf_sha256_tohex(d, hex);
  CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  snprintf(path, sizeof path, "%s/million", tmpdir);
  {
    FILE *f = fopen(path, "w");
    fwrite(big, 1, 1000000, f);
    fclose(f);
  }
  CHECK_EQ_INT(hf_sha256_file(path, hex), 0);
  CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  CHECK(hf_sha256_file("/nonexistent/x", hex) == -ENOENT);
  {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    CHECK(fd >= 0 && hf_sha256_fd(fd, hex) == 0 && lseek(fd, 0, SEEK_CUR) == 0);
    CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    if (fd >= 0) close(fd);
  }
  free(big);
}

/* ---- common/: whole files, the parent's fsync, a tree removed ------------------------- */

static void test_files(void) {
  char path[PATH_MAX], sub[PATH_MAX], *buf = NULL;
  size_t len = 99;
  int fd;
  snprintf(path, sizeof path, "%s/files-one", tmpdir);
  fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  CHECK(fd >= 0 && hf_write_all(fd, "hello\nworld", 11) == 0);
  if (fd >= 0) close(fd);
  CHECK(hf_read_file(path, 11, &buf, &len) == 0 && len == 11 && strcmp(buf, "hello\nworld") == 0);
  free(buf);
  CHECK(hf_read_file(path, 10, &buf, &len) == -1 && errno == EFBIG && buf == NULL && len == 0);
  CHECK(hf_read_file(tmpdir, 1 << 20, &buf, &len) == -1 && errno == EINVAL);
  CHECK(hf_read_file("/nonexistent/x", 10, &buf, &len) == -1 && errno == ENOENT);
  CHECK(hf_fsync_parent(path) == 0);
  CHECK(hf_fsync_parent("/nonexistent/x/y") == -1 && errno == ENOENT);
  /* A tree with a symlink out of it: the tree goes, the link's target stays. */
  snprintf(sub, sizeof sub, "%s/files-tree/a/b", tmpdir);
  CHECK(hf__mkdirs(sub, 0700) == 0);
  snprintf(sub, sizeof sub, "%s/files-tree/a/b/f", tmpdir);
  write_file(sub, "x");
  snprintf(sub, sizeof sub, "%s/files-tree/a/out", tmpdir);
  CHECK(symlink(path, sub) == 0);
  snprintf(sub, sizeof sub, "%s/files-tree", tmpdir);
  CHECK(hf_rm_tree(sub) == 0 && access(sub, F_OK) != 0 && access(path, F_OK) == 0);
  CHECK(hf_rm_tree("/") == -1 && errno == EINVAL);
  CHECK(hf_rm_tree("relative") == -1 && errno == EINVAL);
}

/* ---- journal ------------------------------------------------------------------------ */

#define NREC 6

static json_t *sample_record(int i) {
  json_t *r = json_pack("{s:s, s:s, s:i, s:{s:s, s:i}}", "step", i % 2 ? "install" : "backup",
                        "state", i % 3 ? "begin" : "done", "seq", i, "detail", "note",
                        "x\"y\n\xc3\xa9 \\ unicode", "n", i * 1000);
  return r;
}

static void test_journal_truncation(void) {
  char *recs[NREC], *img;
  size_t lens[NREC], ends[NREC], total = 0, off;
  json_t *orig[NREC];
  int i;

  for (i = 0; i < NREC; i++) {
    orig[i] = sample_record(i);
    CHECK_EQ_INT(hf_journal_encode(orig[i], &recs[i], &lens[i]), 0);
    total += lens[i];
    ends[i] = total;
  }
  img = malloc(total);
  for (i = 0, off = 0; i < NREC; i++) { memcpy(img + off, recs[i], lens[i]); off += lens[i]; }

  /* Power cut: the file ends at every possible byte. The reader returns
   * exactly the records that were complete, never a damaged one. */
  for (off = 0; off <= total; off++) {
    json_t *got = NULL;
    size_t good = 0;
    bool torn = false;
    int want = 0, rc;
    bool boundary = off == 0;
    for (i = 0; i < NREC; i++) { if (ends[i] <= off) want = i + 1; if (ends[i] == off) boundary = true; }
    rc = hf_journal_parse(img, off, &got, &good, &torn);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0) continue;
    CHECK_EQ_INT(json_array_size(got), want);
    CHECK_EQ_INT(good, want ? ends[want - 1] : 0);
    CHECK(torn == !boundary);
    for (i = 0; i < want && i < (int)json_array_size(got); i++) CHECK(json_equal(json_array_get(got, i), orig[i]));
    json_decref(got);
  }

  /* Bit rot: flip each byte of the image. The reader rejects the journal or
   * returns a prefix of the true records; a changed record is never returned. */
  for (off = 0; off < total; off++) {
    json_t *got = NULL;
    size_t good;
    bool torn;
    int rc;
    img[off] ^= 0x41;
    rc = hf_journal_parse(img, total, &got, &good, &torn);
    if (rc == 0) {
      size_t k;
      for (k = 0; k < json_array_size(got); k++) CHECK(json_equal(json_array_get(got, k), orig[k]));
      /* The flipped byte lies in a record the reader did not return. */
      CHECK(good <= off);
      json_decref(got);
    } else {
      CHECK_EQ_INT(rc, HF_EJOURNAL);
    }
    img[off] ^= 0x41;
  }
  for (i = 0; i < NREC; i++) { free(recs[i]); json_decref(orig[i]); }
  free(img);
}

static void test_journal_files(void) {
  char state[PATH_MAX], path[PATH_MAX];
  json_t *got = NULL, *a = sample_record(1), *b = sample_record(2), *c = sample_record(3);
  struct stat st;
  bool torn;
  int fd;

  snprintf(state, sizeof state, "%s/state/deeper", tmpdir);
  CHECK_EQ_INT(hf_journal_read(state, "r1", &got, &torn), 0);
  CHECK_EQ_INT(json_array_size(got), 0);
  json_decref(got);
  CHECK_EQ_INT(hf_journal_append(state, "r1", a), 0);
  CHECK_EQ_INT(hf_journal_append(state, "r1", b), 0);
  CHECK(stat(state, &st) == 0 && (st.st_mode & 0777) == 0700);
  CHECK_EQ_INT(hf_journal_path(state, "r1", path, sizeof path), 0);
  CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600);
  CHECK_EQ_INT(hf_journal_read(state, "r1", &got, &torn), 0);
  CHECK_EQ_INT(json_array_size(got), 2);
  CHECK(json_equal(json_array_get(got, 1), b));
  CHECK(!torn);
  json_decref(got);
  /* A cut write leaves a torn tail; the next append removes it first, so the
   * new record is readable after it. */
  fd = open(path, O_WRONLY | O_APPEND);
  CHECK(write(fd, "HFJ1\0\0\0\x20garbage", 15) == 15);
  close(fd);
  CHECK_EQ_INT(hf_journal_read(state, "r1", &got, &torn), 0);
  CHECK_EQ_INT(json_array_size(got), 2);
  CHECK(torn);
  json_decref(got);
  CHECK_EQ_INT(hf_journal_append(state, "r1", c), 0);
  CHECK_EQ_INT(hf_journal_read(state, "r1", &got, &torn), 0);
  CHECK_EQ_INT(json_array_size(got), 3);
  CHECK(json_equal(json_array_get(got, 2), c));
  CHECK(!torn);
  json_decref(got);
  /* Hostile rollout ids never become paths. */
  CHECK(hf_journal_append(state, "../x", a) != 0);
  CHECK(hf_journal_read(state, "a/b", &got, &torn) != 0);
  /* A journal that cannot be written is an error, not a silent skip. */
  CHECK_EQ_INT(hf_journal_append("/proc/hubfleet-no", "r1", a), HF_EJOURNAL);
  json_decref(a); json_decref(b); json_decref(c);
}

/* The power cut on real files: a journal written by hf_journal_append, cut
 * at every byte, read back by hf_journal_read; and a new record appended
 * after a cut is readable behind exactly the records that survived. */
static void test_journal_powercut_files(void) {
  char state[PATH_MAX], path[PATH_MAX], tpath[PATH_MAX], *img;
  json_t *orig[4], *extra = json_pack("{s:s,s:s}", "step", "rollback", "state", "begin");
  size_t ends[4], total, off;
  struct stat st;
  FILE *f;
  int i;

  snprintf(state, sizeof state, "%s/powercut", tmpdir);
  for (i = 0; i < 4; i++) {
    orig[i] = sample_record(10 + i);
    CHECK_EQ_INT(hf_journal_append(state, "full", orig[i]), 0);
    hf_journal_path(state, "full", path, sizeof path);
    CHECK(stat(path, &st) == 0);
    ends[i] = (size_t)st.st_size;
  }
  total = ends[3];
  img = malloc(total);
  f = fopen(path, "rb");
  CHECK(f != NULL && fread(img, 1, total, f) == total);
  if (f) fclose(f);
  hf_journal_path(state, "cut", tpath, sizeof tpath);
  for (off = 0; off <= total; off++) {
    json_t *got = NULL;
    bool torn = false;
    int want = 0, k;
    for (i = 0; i < 4; i++) if (ends[i] <= off) want = i + 1;
    f = fopen(tpath, "wb");
    if (off) fwrite(img, 1, off, f);
    fclose(f);
    CHECK_EQ_INT(hf_journal_read(state, "cut", &got, &torn), 0);
    CHECK_EQ_INT(json_array_size(got), want);
    for (k = 0; k < want && k < (int)json_array_size(got); k++) CHECK(json_equal(json_array_get(got, k), orig[k]));
    json_decref(got);
    if (off % 31 == 0 || off == total) {
      CHECK_EQ_INT(hf_journal_append(state, "cut", extra), 0);
      CHECK_EQ_INT(hf_journal_read(state, "cut", &got, &torn), 0);
      CHECK_EQ_INT(json_array_size(got), want + 1);
      CHECK(json_equal(json_array_get(got, (size_t)want), extra));
      CHECK(!torn);
      json_decref(got);
    }
  }
  for (i = 0; i < 4; i++) json_decref(orig[i]);
  json_decref(extra);
  free(img);
}

/* ---- metadata and environments ------------------------------------------------------- */

static void test_metadata(void) {
  char name[130], ver[HF_VER_LEN], norm[130];
  const char *md = "Metadata-Version: 2.1\nName: jupyterhub\nVersion: 3.1.0.dev1\nSummary: x\n\n"
                   "Name: not-this\nVersion: 9\n";
  CHECK_EQ_INT(hf_metadata_parse(md, strlen(md), name, sizeof name, ver, sizeof ver), 0);
  CHECK_STR(name, "jupyterhub");
  CHECK_STR(ver, "3.1.0.dev1");
  md = "Metadata-Version: 2.1\r\nName:  Foo_Bar \r\nVersion: 1.0\r\n\r\n";
  CHECK_EQ_INT(hf_metadata_parse(md, strlen(md), name, sizeof name, ver, sizeof ver), 0);
  CHECK_STR(name, "Foo_Bar");
  CHECK_STR(ver, "1.0");
  md = "Metadata-Version: 2.1\n\nName: late\nVersion: 1\n";
  CHECK_EQ_INT(hf_metadata_parse(md, strlen(md), name, sizeof name, ver, sizeof ver), HF_ENOTFOUND);
  CHECK_EQ_INT(hf_metadata_parse("", 0, name, sizeof name, ver, sizeof ver), HF_ENOTFOUND);
  hf_pep503("Foo__Bar.baz-Qux", 16, norm, sizeof norm);
  CHECK_STR(norm, "foo-bar-baz-qux");
  hf_pep503("jupyterhub_idle.culler", 22, norm, sizeof norm);
  CHECK_STR(norm, "jupyterhub-idle-culler");
}

static void test_env(void) {
  char p[PATH_MAX], vers[5][HF_VER_LEN];
  const char *names[5] = { "jupyterhub", "oauthenticator", "dockerspawner", "missing-pkg", "Jupyter_Server" };
  struct hf_env e;

  snprintf(p, sizeof p, "%s/venv", tmpdir);
  mkpath("%s/venv/lib/python3.11/site-packages/jupyterhub-3.1.0.dev1.dist-info", tmpdir);
  mkpath("%s/venv/lib/python3.11/site-packages/oauthenticator-16.0.1.dist-info", tmpdir);
  mkpath("%s/venv/lib/python3.11/site-packages/jupyter_server-2.7.0.dist-info", tmpdir);
  mkpath("%s/venv/bin", tmpdir);
  write_file(strcat(strcpy(p, tmpdir), "/venv/pyvenv.cfg"), "home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11.2\n");
  snprintf(p, sizeof p, "%s/venv/lib/python3.11/site-packages/jupyterhub-3.1.0.dev1.dist-info/METADATA", tmpdir);
  write_file(p, "Metadata-Version: 2.1\nName: jupyterhub\nVersion: 3.1.0.dev1\n\nbody\n");
  snprintf(p, sizeof p, "%s/venv/lib/python3.11/site-packages/oauthenticator-16.0.1.dist-info/METADATA", tmpdir);
  write_file(p, "Metadata-Version: 2.1\nName: oauthenticator\nVersion: 16.0.1\n");
  snprintf(p, sizeof p, "%s/venv/lib/python3.11/site-packages/jupyter_server-2.7.0.dist-info/METADATA", tmpdir);
  write_file(p, "Name: jupyter-server\nVersion: 2.7.0\n");
  /* An egg-info file (Debian's setuptools layout) */
  snprintf(p, sizeof p, "%s/venv/lib/python3.11/site-packages/dockerspawner-12.1.0.egg-info", tmpdir);
  write_file(p, "Metadata-Version: 1.1\nName: dockerspawner\nVersion: 12.1.0\n");
  /* A decoy whose directory name matches but whose METADATA names another project. */
  mkpath("%s/venv/lib/python3.11/site-packages/missing_pkg-1.0.dist-info", tmpdir);
  snprintf(p, sizeof p, "%s/venv/lib/python3.11/site-packages/missing_pkg-1.0.dist-info/METADATA", tmpdir);
  write_file(p, "Name: something-else\nVersion: 1.0\n");

  snprintf(p, sizeof p, "%s/venv", tmpdir);
  CHECK_EQ_INT(hf_env_inspect(p, "auto", &e), 0);
  CHECK(e.exists);
  CHECK_STR(e.installer, "pip");
  CHECK_STR(e.python, "3.11.2");
  CHECK_EQ_INT(e.n_syssite, 0);
  hf_env_versions(&e, names, 5, vers);
  CHECK_STR(vers[0], "3.1.0.dev1");
  CHECK_STR(vers[1], "16.0.1");
  CHECK_STR(vers[2], "12.1.0");
  CHECK_STR(vers[3], "");
  CHECK_STR(vers[4], "2.7.0");

  /* conda: conda-meta/NAME-VERSION-BUILD.json */
  mkpath("%s/conda/conda-meta", tmpdir);
  mkpath("%s/conda/lib/python3.10/site-packages", tmpdir);
  snprintf(p, sizeof p, "%s/conda/conda-meta/jupyterhub-base-4.0.2-pyh31011fe_0.json", tmpdir);
  write_file(p, "{}");
  snprintf(p, sizeof p, "%s/conda/conda-meta/jupyterhub-4.0.2-pyh31011fe_0.json", tmpdir);
  write_file(p, "{}");
  snprintf(p, sizeof p, "%s/conda", tmpdir);
  CHECK_EQ_INT(hf_env_inspect(p, "auto", &e), 0);
  CHECK_STR(e.installer, "conda");
  CHECK_STR(e.python, "3.10");
  hf_env_versions(&e, names, 2, vers);
  CHECK_STR(vers[0], "4.0.2");
  CHECK_STR(vers[1], "");
  CHECK_EQ_INT(hf_env_inspect(p, "pip", &e), 0);
  CHECK_STR(e.installer, "pip");

  snprintf(p, sizeof p, "%s/nope", tmpdir);
  CHECK_EQ_INT(hf_env_inspect(p, NULL, &e), 0);
  CHECK(!e.exists);
}

/* ---- HTTP ------------------------------------------------------------------------------ */

static void test_http_parse(void) {
  struct hf_http_resp r;
  const char *ok = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 21\r\n\r\n{\"version\": \"3.0.0\"}\nEXTRA";
  const char *chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"ver\r\nf\r\nsion\": \"3.1.0\"}\r\n0\r\n\r\n";
  CHECK_EQ_INT(hf_http_parse(ok, strlen(ok), &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_EQ_INT(r.body_len, 21);
  CHECK(strncmp(r.body, "{\"version\": \"3.0.0\"}", 20) == 0);
  hf_http_resp_free(&r);
  CHECK_EQ_INT(hf_http_parse(chunked, strlen(chunked), &r), 0);
  CHECK_STR(r.body, "{\"version\": \"3.1.0\"}");
  hf_http_resp_free(&r);
  {
    const char *e503 = "HTTP/1.0 503 Service Unavailable\r\n\r\n";
    CHECK_EQ_INT(hf_http_parse(e503, strlen(e503), &r), 0);
  }
  CHECK_EQ_INT(r.status, 503);
  CHECK_EQ_INT(r.body_len, 0);
  hf_http_resp_free(&r);
  /* Cut short, not HTTP, no header end, absurd lengths, broken chunks. */
  CHECK_EQ_INT(hf_http_parse("HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nabc", 42, &r), HF_EPROTO);
  CHECK_EQ_INT(hf_http_parse("SSH-2.0-OpenSSH_9.2\r\n", 21, &r), HF_EPROTO);
  CHECK_EQ_INT(hf_http_parse("HTTP/1.1 200 OK\r\nX: y\r\n", 23, &r), HF_EPROTO);
  CHECK_EQ_INT(hf_http_parse("HTTP/1.1 2x0 OK\r\n\r\n", 19, &r), HF_EPROTO);
  {
    const char *huge = "HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n";
    const char *badchunk = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\nab";
    CHECK_EQ_INT(hf_http_parse(huge, strlen(huge), &r), HF_EPROTO);
    CHECK_EQ_INT(hf_http_parse(badchunk, strlen(badchunk), &r), HF_EPROTO);
  }
}

/* A one-shot server in a child: mode 0 answers, 1 accepts and stays silent. */
static pid_t serve(int *port, int mode) {
  struct sockaddr_in sa = { .sin_family = AF_INET };
  socklen_t sl = sizeof sa;
  int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  pid_t pid;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(s, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(s, 4) != 0) { perror("bind"); exit(2); }
  getsockname(s, (struct sockaddr *)&sa, &sl);
  *port = ntohs(sa.sin_port);
  pid = fork();
  if (pid == 0) {
    int c = accept(s, NULL, NULL);
    char buf[4096];
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n{\"version\":\"3.0.0\"}\n";
    alarm(10);
    if (read(c, buf, sizeof buf) <= 0) _exit(1);
    if (mode == 0) {
      if (strstr(buf, "GET /base/hub/api HTTP/1.1\r\n") == NULL) _exit(3);
      if (write(c, resp, strlen(resp)) < 0) _exit(1);
      close(c);
      _exit(0);
    }
    sleep(5);
    _exit(0);
  }
  close(s);
  return pid;
}

static void test_http_live(void) {
  struct hf_http_resp r;
  char url[128];
  int port, st;
  int64_t t0;
  pid_t pid = serve(&port, 0);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/base/", port);
  CHECK_EQ_INT(hf_http_get(url, "/hub/api", 3000, &r), 0);
  CHECK_EQ_INT(r.status, 200);
  CHECK_STR(r.body, "{\"version\":\"3.0.0\"}\n");
  hf_http_resp_free(&r);
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
  /* Silent server: the deadline holds. */
  pid = serve(&port, 1);
  snprintf(url, sizeof url, "http://127.0.0.1:%d", port);
  t0 = hf__now_ms();
  CHECK_EQ_INT(hf_http_get(url, "/hub/health", 300, &r), HF_ETIMEDOUT);
  CHECK(hf__now_ms() - t0 < 2000);
  kill(pid, SIGKILL);
  waitpid(pid, &st, 0);
  /* Nothing listening (the port just closed). */
  CHECK_EQ_INT(hf_http_get(url, "/hub/health", 1000, &r), HF_EUNREACH);
  CHECK_EQ_INT(hf_http_get("https://127.0.0.1:1", "/", 100, &r), HF_EUNSUPPORTED);
  CHECK_EQ_INT(hf_http_get("http://hub.example.org:8000", "/", 100, &r), HF_EUNSUPPORTED);
  CHECK_EQ_INT(hf_http_get("http://127.0.0.1:99999", "/", 100, &r), HF_EINVAL);
}

/* ---- process runner -------------------------------------------------------------------- */

struct lines { int n; char last[256]; int err_lines; };
static void collect(void *ud, int stream, const char *line) {
  struct lines *l = ud;
  l->n++;
  if (stream == 2) l->err_lines++;
  snprintf(l->last, sizeof l->last, "%s", line);
}

static void test_run(void) {
  char marker[PATH_MAX], arg[PATH_MAX + 32];
  struct hf_run r;
  struct lines l;
  int64_t t0;
  struct stat st;

  /* argv is passed verbatim: shell syntax in an argument is just text. */
  snprintf(marker, sizeof marker, "%s/marker", tmpdir);
  snprintf(arg, sizeof arg, "3.0.1; touch %s", marker);
  {
    char *argv[] = { (char *)"/bin/echo", arg, (char *)"$(touch x)", NULL };
    memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
    r.argv = argv; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 5000;
    CHECK_EQ_INT(hf_run_exec(&r), 0);
    CHECK_EQ_INT(r.status, 0);
    CHECK_EQ_INT(l.n, 1);
    {
      char want[PATH_MAX + 64];
      snprintf(want, sizeof want, "%s $(touch x)", arg);
      CHECK_STR(l.last, want);
    }
    CHECK(stat(marker, &st) != 0);
    hf_run_free(&r);
  }
  /* Both streams, exit status, and a minimal environment. */
  {
    char *argv[] = { (char *)"/bin/sh", (char *)"-c",
                     (char *)"echo out; echo err >&2; env | sort | tr '\\n' ' '; echo; exit 7", NULL };
    memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
    setenv("PYTHONPATH", "/evil", 1);
    r.argv = argv; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 5000;
    CHECK_EQ_INT(hf_run_exec(&r), HF_ECMD);
    CHECK_EQ_INT(r.status, 7);
    CHECK_EQ_INT(l.err_lines, 1);
    CHECK(strstr(r.out, "out\n") != NULL && strstr(r.out, "err\n") != NULL);
    CHECK(strstr(r.out, "PIP_NO_INPUT=1") != NULL);
    CHECK(strstr(r.out, "LANG=C.UTF-8") != NULL);
    CHECK(strstr(r.out, "PYTHONPATH") == NULL);
    unsetenv("PYTHONPATH");
    hf_run_free(&r);
  }
  /* A request's background work (hf_run_nice, set from args.background): the command starts at
   * that nice value, the next request's at the agent's own. */
  {
    char *argv[] = { (char *)"/bin/sh", (char *)"-c", (char *)"cut -d' ' -f19 /proc/self/stat", NULL };
    for (int nice = 10; nice >= 0; nice -= 10) {
      char want[8];
      memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
      hf_run_nice = nice;
      r.argv = argv; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 5000;
      CHECK_EQ_INT(hf_run_exec(&r), 0);
      int own = getpriority(PRIO_PROCESS, 0);   /* only ever raised: a test run under nice 19 stays 19 */
      snprintf(want, sizeof want, "%d", nice > own ? nice : own);
      CHECK_STR(l.last, want);
      hf_run_free(&r);
    }
    /* ... in a session of its own whose scheduler autogroup (where the kernel has them) is niced
     * too: nice alone ranks nothing against other sessions' processes. */
    if (access("/proc/self/autogroup", R_OK) == 0) {
      char *ag[] = { (char *)"/bin/cat", (char *)"/proc/self/autogroup", NULL };
      memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
      hf_run_nice = 10;
      r.argv = ag; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 5000;
      CHECK_EQ_INT(hf_run_exec(&r), 0);
      CHECK(strstr(l.last, " nice 10") != NULL);
      hf_run_free(&r);
    }
    {
      char *sid[] = { (char *)"/bin/sh", (char *)"-c", (char *)"cut -d' ' -f6 /proc/self/stat", NULL };
      char mine[32];
      memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
      hf_run_nice = 10;
      r.argv = sid; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 5000;
      CHECK_EQ_INT(hf_run_exec(&r), 0);
      snprintf(mine, sizeof mine, "%d", (int)getsid(0));
      CHECK(strcmp(l.last, mine) != 0);
      hf_run_free(&r);
    }
    /* a probe with a short bound of its own (a service's status) is not niced: starved, it
     * would time out on a busy machine and refuse the host */
    {
      char *argv3[] = { (char *)"/bin/sh", (char *)"-c", (char *)"cut -d' ' -f19 /proc/self/stat", NULL };
      char want[8];
      memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
      hf_run_nice = 10;
      r.argv = argv3; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 5000; r.foreground = true;
      CHECK_EQ_INT(hf_run_exec(&r), 0);
      snprintf(want, sizeof want, "%d", getpriority(PRIO_PROCESS, 0));
      CHECK_STR(l.last, want);
      hf_run_free(&r);
    }
    /* its deadline still kills its whole group */
    {
      char *argv2[] = { (char *)"/bin/sh", (char *)"-c", (char *)"sleep 30 & sleep 30; echo never", NULL };
      memset(&r, 0, sizeof r);
      hf_run_nice = 10;
      r.argv = argv2; r.stdout_fd = -1; r.timeout_ms = 300;
      t0 = hf__now_ms();
      CHECK_EQ_INT(hf_run_exec(&r), HF_ETIMEDOUT);
      CHECK(hf__now_ms() - t0 < 5000);
      hf_run_free(&r);
    }
    hf_run_nice = 0;
  }
  /* The deadline kills the whole group, sleeping grandchildren included. */
  {
    char *argv[] = { (char *)"/bin/sh", (char *)"-c", (char *)"sleep 30 & sleep 30; echo never", NULL };
    memset(&r, 0, sizeof r);
    r.argv = argv; r.stdout_fd = -1; r.timeout_ms = 300;
    t0 = hf__now_ms();
    CHECK_EQ_INT(hf_run_exec(&r), HF_ETIMEDOUT);
    CHECK(r.timed_out);
    CHECK(hf__now_ms() - t0 < 5000);
    CHECK(strstr(r.out, "never") == NULL);
    hf_run_free(&r);
  }
  /* A child that ignores SIGTERM gets SIGKILL after the grace period. */
  {
    char *argv[] = { (char *)"/bin/sh", (char *)"-c", (char *)"trap '' TERM; sleep 30", NULL };
    memset(&r, 0, sizeof r);
    r.argv = argv; r.stdout_fd = -1; r.timeout_ms = 200;
    t0 = hf__now_ms();
    CHECK_EQ_INT(hf_run_exec(&r), HF_ETIMEDOUT);
    CHECK(hf__now_ms() - t0 < 8000);
    hf_run_free(&r);
  }
  /* Output is bounded: a flood keeps only the tail and caps streamed lines. */
  {
    char *argv[] = { (char *)"/bin/sh", (char *)"-c", (char *)"i=0; while [ $i -lt 6000 ]; do echo line$i; i=$((i+1)); done", NULL };
    memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
    r.argv = argv; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 20000; r.keep_max = 1024;
    CHECK_EQ_INT(hf_run_exec(&r), 0);
    CHECK_EQ_INT(l.n, HF_RUN_MAX_LINES);
    CHECK_EQ_INT(r.lines_dropped, 6000 - HF_RUN_MAX_LINES);
    CHECK(r.out_len <= 2048);
    CHECK(strstr(r.out, "line5999\n") != NULL);
    hf_run_free(&r);
  }
  /* A start command that leaves a daemon holding its stdout: the runner
   * returns when the command exits (not at the deadline) and leaves the
   * daemon alone. */
  {
    char pidf[PATH_MAX], cmd[PATH_MAX + 128];
    char *argv[] = { (char *)"/bin/sh", (char *)"-c", cmd, NULL };
    FILE *f;
    int dpid = 0;
    snprintf(pidf, sizeof pidf, "%s/daemon.pid", tmpdir);
    snprintf(cmd, sizeof cmd, "sleep 30 & echo $! > %s; echo started", pidf);
    memset(&r, 0, sizeof r); memset(&l, 0, sizeof l);
    r.argv = argv; r.stdout_fd = -1; r.on_line = collect; r.ud = &l; r.timeout_ms = 20000;
    t0 = hf__now_ms();
    CHECK_EQ_INT(hf_run_exec(&r), 0);
    CHECK(hf__now_ms() - t0 < 5000);
    CHECK_STR(l.last, "started");
    f = fopen(pidf, "r");
    CHECK(f != NULL && fscanf(f, "%d", &dpid) == 1);
    if (f) fclose(f);
    CHECK(dpid > 0 && kill(dpid, 0) == 0);
    if (dpid > 0) kill(dpid, SIGKILL);
    hf_run_free(&r);
  }
  /* Missing program, relative program, bad cwd. */
  {
    char *argv[] = { (char *)"/nonexistent/prog", NULL };
    char *rel[] = { (char *)"echo", NULL };
    char *ok[] = { (char *)"/bin/true", NULL };
    memset(&r, 0, sizeof r);
    r.argv = argv; r.stdout_fd = -1;
    CHECK_EQ_INT(hf_run_exec(&r), HF_EEXEC);
    CHECK_EQ_INT(r.status, ENOENT);
    hf_run_free(&r);
    memset(&r, 0, sizeof r);
    r.argv = rel; r.stdout_fd = -1;
    CHECK_EQ_INT(hf_run_exec(&r), HF_EINVAL);
    hf_run_free(&r);
    memset(&r, 0, sizeof r);
    r.argv = ok; r.stdout_fd = -1; r.cwd = "/nonexistent-dir";
    CHECK_EQ_INT(hf_run_exec(&r), HF_EEXEC);
    hf_run_free(&r);
  }
}

/* ---- the request loop fed hostile frames ---------------------------------------------------- */

struct session { pid_t pid; int to, from; };

static struct session start_agent(void) {
  int in[2], out[2];
  struct session s;
  CHECK(pipe(in) == 0 && pipe(out) == 0);
  s.pid = fork();
  if (s.pid == 0) {
    close(in[1]); close(out[0]);
    _exit(hf_agent_run(in[0], out[1]));
  }
  close(in[0]); close(out[1]);
  s.to = in[1];
  s.from = out[0];
  return s;
}

static json_t *read_frame(int fd) {
  unsigned char hdr[4];
  size_t have = 0, n;
  char *buf;
  json_t *j;
  while (have < 4) { ssize_t k = read(fd, hdr + have, 4 - have); if (k <= 0) return NULL; have += (size_t)k; }
  n = (size_t)hdr[0] << 24 | (size_t)hdr[1] << 16 | (size_t)hdr[2] << 8 | hdr[3];
  if (n > HF_PROTO_MAX_FRAME) return NULL;
  buf = malloc(n + 1);
  for (have = 0; have < n;) { ssize_t k = read(fd, buf + have, n - have); if (k <= 0) { free(buf); return NULL; } have += (size_t)k; }
  j = json_loadb(buf, n, 0, NULL);
  free(buf);
  return j;
}

static void send_bytes(int fd, const void *p, size_t n) {
  if (write(fd, p, n) != (ssize_t)n) { /* the agent may have exited already */ }
}

static void send_json(int fd, const char *text) {
  unsigned char hdr[4];
  size_t n = strlen(text);
  hdr[0] = (unsigned char)(n >> 24); hdr[1] = (unsigned char)(n >> 16); hdr[2] = (unsigned char)(n >> 8); hdr[3] = (unsigned char)n;
  send_bytes(fd, hdr, 4);
  send_bytes(fd, text, n);
}

/* Closes the input and returns the agent's exit status (-1 when it was killed by a signal). */
static int finish(struct session *s) {
  int st;
  close(s->to);
  waitpid(s->pid, &st, 0);
  close(s->from);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The next result frame, skipping events (new, NULL at EOF). */
static json_t *next_result(int fd) {
  json_t *f;
  while ((f = read_frame(fd)) != NULL && strcmp(json_string_value(json_object_get(f, "type")) ?: "", "event") == 0)
    json_decref(f);
  return f;
}

static void expect_result(int fd, long long id, const char *code) {
  json_t *f = next_result(fd);
  CHECK(f != NULL);
  CHECK_STR(json_string_value(json_object_get(f, "type")), "result");
  CHECK_EQ_INT(json_integer_value(json_object_get(f, "id")), id);
  if (code) {
    CHECK(json_is_false(json_object_get(f, "ok")));
    CHECK_STR(json_string_value(json_object_get(json_object_get(f, "error"), "code")), code);
  } else {
    CHECK(json_is_true(json_object_get(f, "ok")));
  }
  json_decref(f);
}

/* Every op of proto's table has its handler in the agent's dispatch. */
static void test_op_handlers(void) {
  for (int i = 0; i < HF_OP__COUNT; i++)
    CHECK(hf__op_implemented((enum hf_op_id)i));
  CHECK(!hf__op_implemented(HF_OP__COUNT));
}

static void test_loop(void) {
  struct session s;
  json_t *f;
  char hub[1024], req[4096];
  char marker[PATH_MAX];
  struct stat st;
  int i;

  snprintf(marker, sizeof marker, "%s/loop-marker", tmpdir);
  snprintf(hub, sizeof hub, "{\"hub_env\":\"%s/venv\",\"config\":\"%s/c/jupyterhub_config.py\","
           "\"db\":\"sqlite:///%s/c/jupyterhub.sqlite\",\"service\":\"supervisord:jupyterhub\","
           "\"state_dir\":\"%s/loopstate\",\"health_url\":\"http://127.0.0.1:1\"}", tmpdir, tmpdir, tmpdir, tmpdir);

  /* hello first, then EOF between frames: exit 0. */
  s = start_agent();
  f = read_frame(s.from);
  CHECK_STR(json_string_value(json_object_get(f, "type")), "hello");
  CHECK_EQ_INT(json_integer_value(json_object_get(f, "proto")), HF_PROTO_VERSION);
  json_decref(f);
  CHECK_EQ_INT(finish(&s), 0);

  /* Requests that fail alone: unknown op, hostile arguments (nothing runs),
   * missing hub, wrong arg types; then a good one; the session goes on. */
  s = start_agent();
  json_decref(read_frame(s.from));
  send_json(s.to, "{\"type\":\"request\",\"id\":1,\"op\":\"format-disk\",\"args\":{}}");
  expect_result(s.from, 1, "unknown_op");
  snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":2,\"op\":\"install\",\"args\":{\"hub\":%s,\"rollout\":\"r1\","
           "\"target\":\"3.0.1; touch %s\"}}", hub, marker);
  send_json(s.to, req);
  expect_result(s.from, 2, "bad_argument");
  snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":3,\"op\":\"facts\",\"args\":{\"hub\":{\"hub_env\":\"/opt/../etc\","
           "\"config\":\"/c.py\",\"db\":\"sqlite:////x\",\"service\":\"supervisord:x\"}}}");
  send_json(s.to, req);
  expect_result(s.from, 3, "bad_argument");
  snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":4,\"op\":\"install\",\"args\":{\"hub\":{\"hub_env\":\"/opt/hub\","
           "\"config\":\"/c.py\",\"db\":\"sqlite:////x\",\"service\":\"supervisord:x\","
           "\"extra_packages\":[\"my package==1.0\"]},\"rollout\":\"r1\",\"target\":\"3.1.0\"}}");
  send_json(s.to, req);
  expect_result(s.from, 4, "bad_argument");
  send_json(s.to, "{\"type\":\"request\",\"id\":5,\"op\":\"facts\",\"args\":{\"hub\":42}}");
  expect_result(s.from, 5, "wrong_type");
  send_json(s.to, "{\"type\":\"request\",\"id\":6,\"op\":\"facts\"}");
  expect_result(s.from, 6, "missing_field");
  snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":7,\"op\":\"stop\",\"args\":{\"hub\":%s,\"rollout\":\"r1\"}}", hub);
  send_json(s.to, req);
  expect_result(s.from, 7, "bad_state"); /* no backup yet: refused before anything runs */
  snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":8,\"op\":\"journal\",\"args\":{\"hub\":%s,\"rollout\":\"r1\"}}", hub);
  send_json(s.to, req);
  f = next_result(s.from);
  CHECK(json_is_true(json_object_get(f, "ok")));
  CHECK_EQ_INT(json_array_size(json_object_get(json_object_get(f, "data"), "steps")), 0);
  json_decref(f);
  /* Another agent holds the host lock: a changing op waits, then gives up
   * with bad_state; journal reports who holds it. */
  {
    char lockp[PATH_MAX];
    int lfd;
    snprintf(lockp, sizeof lockp, "%s/loopstate/agent.lock", tmpdir);
    lfd = open(lockp, O_RDWR | O_CREAT, 0600);
    CHECK(lfd >= 0 && flock(lfd, LOCK_EX) == 0);
    dprintf(lfd, "%d\n", (int)getpid());
    snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":9,\"op\":\"backup\",\"args\":{\"hub\":%s,\"rollout\":\"r1\","
             "\"target\":\"3.1.0\",\"timeout_ms\":300}}", hub);
    send_json(s.to, req);
    expect_result(s.from, 9, "bad_state");
    snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":10,\"op\":\"journal\",\"args\":{\"hub\":%s,\"rollout\":\"r1\"}}", hub);
    send_json(s.to, req);
    f = next_result(s.from);
    CHECK_EQ_INT(json_integer_value(json_object_get(json_object_get(f, "data"), "busy_pid")), getpid());
    json_decref(f);
    close(lfd);
  }
  CHECK_EQ_INT(finish(&s), 0);
  CHECK(stat(marker, &st) != 0);

  /* Frames that end the session: one result with id 0, exit 3. */
  {
    /* payload, the length its header declares (-1: its own), the code expected. */
    static const struct { const char *payload; long declared; const char *code; } bad[] = {
      { "hello", -1, "bad_json" },
      { "[]", -1, "bad_json" },
      { "", 0x7fffffffL, "frame_too_big" },
      { "", (long)HF_PROTO_MAX_FRAME + 1, "frame_too_big" },
      { "{\"type\":\"hello\",\"proto\":1}", -1, "protocol" },
      { "{\"type\":\"result\",\"id\":1,\"ok\":true}", -1, "protocol" },
      { "{\"type\":\"request\",\"id\":\"7\",\"op\":\"facts\"}", -1, "protocol" },
      { "{\"type\":\"request\",\"id\":0,\"op\":\"facts\"}", -1, "protocol" },
      { "{\"type\":\"request\",\"id\":-4,\"op\":\"facts\"}", -1, "protocol" },
      { "{\"id\":1,\"op\":\"facts\"}", -1, "protocol" },
      { "{\"type\":\"req", 16, "truncated" },
      { "\xff\xfe{}", -1, "bad_json" },
      { "{\"type\":\"request\",\"id\":1,\"op\":\"facts\"} {}", -1, "bad_json" },
    };
    for (i = 0; i < (int)(sizeof bad / sizeof bad[0]); i++) {
      s = start_agent();
      json_decref(read_frame(s.from));
      {
        size_t plen = strlen(bad[i].payload);
        unsigned long d = bad[i].declared < 0 ? plen : (unsigned long)bad[i].declared;
        unsigned char hdr[4] = { (unsigned char)(d >> 24), (unsigned char)(d >> 16), (unsigned char)(d >> 8), (unsigned char)d };
        send_bytes(s.to, hdr, 4);
        send_bytes(s.to, bad[i].payload, plen);
      }
      close(s.to);
      f = read_frame(s.from);
      CHECK(f != NULL);
      if (f) {
        const char *code = json_string_value(json_object_get(json_object_get(f, "error"), "code"));
        checks++;
        if (code == NULL || strcmp(code, bad[i].code) != 0) {
          failures++;
          fprintf(stderr, "hostile frame %d: got %s, expected %s\n", i, code ? code : "(none)", bad[i].code);
        }
        CHECK_EQ_INT(json_integer_value(json_object_get(f, "id")), 0);
      }
      json_decref(f);
      {
        int stt;
        waitpid(s.pid, &stt, 0);
        CHECK(WIFEXITED(stt) && WEXITSTATUS(stt) == 3);
        close(s.from);
      }
    }
  }

  /* A header cut short is a truncated stream too. */
  s = start_agent();
  json_decref(read_frame(s.from));
  send_bytes(s.to, "\0\0", 2);
  close(s.to);
  f = read_frame(s.from);
  CHECK_STR(json_string_value(json_object_get(json_object_get(f, "error"), "code")), "truncated");
  json_decref(f);
  {
    int stt;
    waitpid(s.pid, &stt, 0);
    CHECK(WIFEXITED(stt) && WEXITSTATUS(stt) == 3);
    close(s.from);
  }

  /* Random garbage never crashes the agent: it exits 0 or 3. */
  srand(12345);
  for (i = 0; i < 200; i++) {
    unsigned char junk[256];
    size_t n = (size_t)(rand() % (int)sizeof junk), k;
    int rc;
    for (k = 0; k < n; k++) junk[k] = (unsigned char)rand();
    if (i % 3 == 0 && n > 4) { junk[0] = 0; junk[1] = 0; junk[2] = 0; junk[3] = (unsigned char)(n - 4); }
    s = start_agent();
    json_decref(read_frame(s.from));
    send_bytes(s.to, junk, n);
    /* Drain whatever it answers so it never blocks on a full pipe. */
    close(s.to);
    while ((f = read_frame(s.from)) != NULL) json_decref(f);
    {
      int stt;
      waitpid(s.pid, &stt, 0);
      rc = WIFEXITED(stt) ? WEXITSTATUS(stt) : -1;
      close(s.from);
    }
    CHECK(rc == 0 || rc == 3);
  }
}

/* ---- validators the agent relies on before anything becomes argv ---------------------- */

static void test_validators(void) {
  static const char *const bad_versions[] = { "3.0.1; touch /tmp/x", "3.0.1 ", "$(id)", "3.0.1\n", "", "-3", "3..0",
                                              "--index-url=http://x", NULL };
  static const char *const bad_names[] = { "my package", "a;b", "-rf", "pkg==1", "", "a/b", NULL };
  static const char *const bad_paths[] = { "relative/x", "/opt/../etc", "/opt/./x", "/a\nb", "", NULL };
  int i;
  for (i = 0; bad_versions[i]; i++) CHECK(!hf_valid_version(bad_versions[i]));
  for (i = 0; bad_names[i]; i++) CHECK(!hf_valid_pkgname(bad_names[i]));
  for (i = 0; bad_paths[i]; i++) CHECK(!hf_valid_abspath(bad_paths[i]));
  CHECK(!hf_valid_pkgpin("jupyterhub==3.0.1; touch x"));
  CHECK(!hf_valid_pkgpin("jupyter hub==3.0.1"));
  CHECK(!hf_valid_id("../x"));
  CHECK(!hf_valid_service_name("-x"));
  CHECK(hf_valid_version("3.1.0.dev1"));
  CHECK(hf_valid_pkgname("jupyterhub-idle-culler"));
  CHECK(hf_valid_pkgpin("oauthenticator==16.0.1"));
  CHECK(hf_valid_abspath("/var/tmp/hub-env"));
  /* hub descriptions are checked once more by the agent itself */
  {
    struct hf_hub h;
    char err[512];
    json_t *hub = json_pack("{s:s, s:s, s:s, s:s}", "hub_env", "/opt/hub", "config", "/etc/jupyterhub/jupyterhub_config.py",
                            "db", "sqlite:////var/lib/jupyterhub/jupyterhub.sqlite", "service", "supervisord:jupyterhub");
    CHECK_EQ_INT(hf_hub_parse(hub, &h, err, sizeof err), 0);
    CHECK(h.sqlite);
    CHECK_STR(h.db_path, "/var/lib/jupyterhub/jupyterhub.sqlite");
    CHECK_STR(h.config_dir, "/etc/jupyterhub");
    CHECK_STR(h.svc_name, "jupyterhub");
    CHECK_STR(h.health_url, "http://127.0.0.1:8000");
    {
      /* With no state_dir, each hub gets its own, named for its config path:
       * two hubs under one login never share a journal, lock or backups. */
      char first[sizeof h.state_dir], *home = getenv("HOME");
      setenv("HOME", "/home/admin", 1);
      CHECK_EQ_INT(hf_hub_parse(hub, &h, err, sizeof err), 0);
      snprintf(first, sizeof first, "%s", h.state_dir);
      CHECK(strncmp(first, "/home/admin/.local/state/hubfleet/hub-", 38) == 0 && strlen(first) == 38 + 16);
      CHECK_STR(h.backup_dir, (snprintf(err, sizeof err, "%s/backups", first), err));
      json_object_set_new(hub, "config", json_string("/srv/hub2/jupyterhub_config.py"));
      CHECK_EQ_INT(hf_hub_parse(hub, &h, err, sizeof err), 0);
      CHECK(strncmp(h.state_dir, "/home/admin/.local/state/hubfleet/hub-", 38) == 0 && strcmp(h.state_dir, first) != 0);
      json_object_set_new(hub, "config", json_string("/etc/jupyterhub/jupyterhub_config.py"));
      CHECK_EQ_INT(hf_hub_parse(hub, &h, err, sizeof err), 0);
      CHECK_STR(h.state_dir, first);   /* the same hub: the same directory every time */
      if (home) setenv("HOME", home, 1); else unsetenv("HOME");
    }
    json_object_set_new(hub, "service", json_string("supervisord:jupyterhub;reboot"));
    CHECK_EQ_INT(hf_hub_parse(hub, &h, err, sizeof err), HF_EBADARG);
    json_object_set_new(hub, "service", json_string("command"));
    CHECK(hf_hub_parse(hub, &h, err, sizeof err) != 0); /* command needs start/stop argv */
    json_object_set_new(hub, "service", json_string("systemd:jupyterhub"));
    json_object_set_new(hub, "db_dump", json_pack("[s,s]", "pg_dump", "x"));
    CHECK(hf_hub_parse(hub, &h, err, sizeof err) != 0); /* argv[0] must be absolute */
    json_object_del(hub, "db_dump");
    json_object_set_new(hub, "surprise", json_true());
    CHECK(hf_hub_parse(hub, &h, err, sizeof err) != 0); /* unknown keys are refused */
    json_decref(hub);
  }
}


/* ---- a host whose hub user is hostile (issue 13, docs/security.md) ------------------------ */

#define HUBUSER 65534 /* the hub's own, unprivileged user: owns the hub's directories */

static void sql(const char *db, const char *stmt) {
  sqlite3 *h = NULL;
  CHECK(sqlite3_open(db, &h) == SQLITE_OK);
  CHECK(sqlite3_exec(h, stmt, NULL, NULL, NULL) == SQLITE_OK);
  sqlite3_close(h);
}

static long long sql_count(const char *db, const char *name) {
  sqlite3 *h = NULL;
  sqlite3_stmt *st = NULL;
  long long n = -1;
  if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
      sqlite3_prepare_v2(h, "SELECT count(*) FROM users WHERE name = ?", -1, &st, NULL) == SQLITE_OK) {
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW) n = sqlite3_column_int64(st, 0);
  }
  sqlite3_finalize(st);
  sqlite3_close(h);
  return n;
}

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  static char buf[4][4096];
  static int k;
  char *b = buf[k++ % 4];
  size_t n;
  if (f == NULL) return strcpy(b, "(missing)");
  n = fread(b, 1, sizeof buf[0] - 1, f);
  b[n] = '\0';
  fclose(f);
  return b;
}

/* Entries of dir whose name starts with prefix. */
static int count_prefixed(const char *dir, const char *prefix) {
  DIR *d = opendir(dir);
  struct dirent *e;
  int n = 0;
  if (d == NULL) return -1;
  while ((e = readdir(d)) != NULL) n += strncmp(e->d_name, prefix, strlen(prefix)) == 0;
  closedir(d);
  return n;
}

/* One request to a fresh agent (hub: the JSON of args.hub); plant, when not
 * NULL, runs with the agent's pid before the request is sent. Returns the result (new). */
static json_t *one_request(const char *op, const char *hub, const char *rollout, const char *extra,
                           void (*plant)(pid_t, void *), void *ud) {
  struct session s = start_agent();
  char req[8192];
  json_t *f;
  json_decref(read_frame(s.from));
  if (plant) plant(s.pid, ud);
  snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":1,\"op\":\"%s\",\"args\":{\"hub\":%s,\"rollout\":\"%s\"%s%s}}",
           op, hub, rollout, extra ? "," : "", extra ? extra : "");
  send_json(s.to, req);
  f = next_result(s.from);
  CHECK(finish(&s) == 0);
  return f;
}

static const char *code_of(const json_t *res) {
  if (json_is_true(json_object_get(res, "ok"))) return "ok";
  return json_string_value(json_object_get(json_object_get(res, "error"), "code")) ?: "?";
}

static const char *msg_of(const json_t *res) {
  return json_string_value(json_object_get(json_object_get(res, "error"), "message")) ?: "";
}

static char hubdir[PATH_MAX], livedb[PATH_MAX], livecfg[PATH_MAX], victim[PATH_MAX];

/* The old restore's temporary names (".hf-tmp-PID-NAME") planted as symlinks
 * to a root-only file, as the hub user could (it reads the pid from /proc). */
static void plant_tmp_links(pid_t pid, void *ud) {
  char p[PATH_MAX];
  (void)ud;
  snprintf(p, sizeof p, "%s/.hf-tmp-%d-jupyterhub.sqlite", hubdir, (int)pid);
  CHECK(symlink(victim, p) == 0);
  CHECK(lchown(p, HUBUSER, HUBUSER) == 0);
  snprintf(p, sizeof p, "%s/.hf-tmp-%d-jupyterhub_config.py", hubdir, (int)pid);
  CHECK(symlink(victim, p) == 0);
  CHECK(lchown(p, HUBUSER, HUBUSER) == 0);
}

static void make_hub(const char *hub_json_state, char *hub, size_t hublen) {
  struct stat st;
  snprintf(hubdir, sizeof hubdir, "%s/hubhome", tmpdir);
  snprintf(livedb, sizeof livedb, "%s/jupyterhub.sqlite", hubdir);
  snprintf(livecfg, sizeof livecfg, "%s/jupyterhub_config.py", hubdir);
  snprintf(victim, sizeof victim, "%s/root-only", tmpdir);
  if (stat(hubdir, &st) != 0) {
    mkpath("%s", hubdir);
    write_file(victim, "root secret\n");
    chmod(victim, 0600);
  }
  unlink(livedb);
  sql(livedb, "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('alice');");
  write_file(livecfg, "c.JupyterHub.bind_url = 'http://127.0.0.1:1'\n");
  CHECK(chown(hubdir, HUBUSER, HUBUSER) == 0 && chown(livedb, HUBUSER, HUBUSER) == 0 &&
        chown(livecfg, HUBUSER, HUBUSER) == 0);
  chmod(hubdir, 0755);
  chmod(livedb, 0640);
  snprintf(hub, hublen, "{\"hub_env\":\"%s/venv\",\"config\":\"%s\",\"db\":\"sqlite:///%s\",\"service\":\"command\","
           "\"start\":[\"/bin/true\"],\"stop\":[\"/bin/true\"],\"health_url\":\"http://127.0.0.1:1\","
           "\"state_dir\":\"%s\"}", tmpdir, livecfg, livedb, hub_json_state);
}

/* Items 1, 2, 3 (agent side) and 7 of issue 13. */
static void test_hostile_restore(void) {
  char hub[2048], state[PATH_MAX], wal[PATH_MAX], bk[PATH_MAX], sha_before[HF_SHA256_HEX], sha_after[HF_SHA256_HEX];
  json_t *res;
  struct stat st;

  snprintf(state, sizeof state, "%s/secstate", tmpdir);
  make_hub(state, hub, sizeof hub);
  res = one_request("backup", hub, "sec1", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "ok");
  json_decref(res);
  /* The hub goes on: bob signs up; a -wal the restore must not apply. */
  sql(livedb, "INSERT INTO users VALUES ('bob');");
  snprintf(wal, sizeof wal, "%s-wal", livedb);
  write_file(wal, "stale wal bytes");
  CHECK(chown(wal, HUBUSER, HUBUSER) == 0);
  write_file(livecfg, "c.JupyterHub.bind_url = 'http://127.0.0.1:2'\n");
  CHECK(chown(livecfg, HUBUSER, HUBUSER) == 0);

  /* 1: the symlinks under the old temporary names change nothing. */
  res = one_request("rollback", hub, "sec1", NULL, plant_tmp_links, NULL);
  CHECK_STR(code_of(res), "ok");
  if (strcmp(code_of(res), "ok") != 0) fprintf(stderr, "rollback: %s\n", msg_of(res));
  json_decref(res);
  CHECK_STR(slurp(victim), "root secret\n");
  CHECK(lstat(livedb, &st) == 0 && S_ISREG(st.st_mode));
  /* 2: the restored database and config keep their owner and mode. */
  CHECK_EQ_INT(st.st_uid, HUBUSER);
  CHECK_EQ_INT(st.st_gid, HUBUSER);
  CHECK_EQ_INT(st.st_mode & 07777, 0640);
  CHECK(lstat(livecfg, &st) == 0 && S_ISREG(st.st_mode) && st.st_uid == HUBUSER);
  CHECK_STR(slurp(livecfg), "c.JupyterHub.bind_url = 'http://127.0.0.1:1'\n");
  CHECK_EQ_INT(sql_count(livedb, "alice"), 1);
  CHECK_EQ_INT(sql_count(livedb, "bob"), 0);
  /* 7: the side file was moved aside and deleted only after it worked. */
  CHECK(access(wal, F_OK) != 0);
  CHECK_EQ_INT(count_prefixed(hubdir, ".hf-aside-"), 0);
  CHECK_EQ_INT(count_prefixed(hubdir, ".hf-tmp-"), 2); /* the two planted links, nothing of ours */

  /* 3: after the rollback, no upgrade step of the rollout runs again, also
   * after "rollback done" (a stale controller's re-sent install). */
  sql(livedb, "INSERT INTO users VALUES ('carol');");
  hf_sha256_file(livedb, sha_before);
  res = one_request("install", hub, "sec1", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  CHECK(strstr(msg_of(res), "rolled back") != NULL);
  json_decref(res);
  res = one_request("migrate", hub, "sec1", NULL, NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  json_decref(res);
  res = one_request("health", hub, "sec1", "\"target\":\"3.1.0\",\"timeout_ms\":200", NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  json_decref(res);
  /* A second rollback is the first one's answer: carol stays. */
  res = one_request("rollback", hub, "sec1", NULL, NULL, NULL);
  CHECK_STR(code_of(res), "ok");
  CHECK(json_is_true(json_object_get(json_object_get(res, "data"), "already")));
  json_decref(res);
  hf_sha256_file(livedb, sha_after);
  CHECK_STR(sha_after, sha_before);
  CHECK_EQ_INT(sql_count(livedb, "carol"), 1);

  /* 3: a step runs only after its predecessor: migrate right after backup is refused. */
  res = one_request("backup", hub, "sec3", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "ok");
  json_decref(res);
  res = one_request("migrate", hub, "sec3", NULL, NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  CHECK(strstr(msg_of(res), "migrate runs after install") != NULL);
  json_decref(res);
  res = one_request("stop", hub, "sec3", NULL, NULL, NULL);
  CHECK_STR(code_of(res), "ok");
  json_decref(res);
  res = one_request("stop", hub, "sec3", NULL, NULL, NULL); /* again: idempotent */
  CHECK_STR(code_of(res), "ok");
  json_decref(res);

  /* 7: a damaged backup changes nothing: the live database and its -wal stay. */
  make_hub(state, hub, sizeof hub);
  res = one_request("backup", hub, "sec2", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "ok");
  json_decref(res);
  sql(livedb, "INSERT INTO users VALUES ('dave');");
  write_file(wal, "committed rows live here");
  CHECK(chown(wal, HUBUSER, HUBUSER) == 0);
  snprintf(bk, sizeof bk, "%s/backups/sec2/jupyterhub.sqlite", state);
  {
    FILE *f = fopen(bk, "r+");
    CHECK(f != NULL);
    if (f) { fseek(f, 200, SEEK_SET); fputs("damage", f); fclose(f); }
  }
  hf_sha256_file(livedb, sha_before);
  res = one_request("rollback", hub, "sec2", NULL, NULL, NULL);
  CHECK_STR(code_of(res), "rollback_failed");
  CHECK(strstr(msg_of(res), "checksum") != NULL);
  json_decref(res);
  hf_sha256_file(livedb, sha_after);
  CHECK_STR(sha_after, sha_before);
  CHECK_STR(slurp(wal), "committed rows live here");
  CHECK_EQ_INT(count_prefixed(hubdir, ".hf-aside-"), 0);
  /* ...and the rollout's upgrade steps stay refused after the failed rollback. */
  res = one_request("install", hub, "sec2", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  json_decref(res);
  unlink(wal);

  /* A live database that is a symlink is refused, not backed up through it. */
  make_hub(state, hub, sizeof hub);
  unlink(livedb);
  CHECK(symlink(victim, livedb) == 0);
  res = one_request("backup", hub, "sec4", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK(strcmp(code_of(res), "ok") != 0);
  json_decref(res);
  unlink(livedb);
  CHECK_STR(slurp(victim), "root secret\n");

  /* A config that is a symlink to a root-only file (the backup would copy it,
   * the rollback hand it to the hub user) or a FIFO (the backup would hang):
   * refused, nothing of the root file copied. */
  make_hub(state, hub, sizeof hub);
  unlink(livecfg);
  CHECK(symlink(victim, livecfg) == 0);
  res = one_request("backup", hub, "sec5", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK(strcmp(code_of(res), "ok") != 0);
  CHECK(strstr(msg_of(res), "symbolic link") != NULL);
  json_decref(res);
  snprintf(bk, sizeof bk, "%s/backups/sec5/jupyterhub_config.py", state);
  CHECK(access(bk, F_OK) != 0);
  unlink(livecfg);
  CHECK(mkfifo(livecfg, 0644) == 0);
  res = one_request("backup", hub, "sec6", "\"target\":\"3.1.0\",\"timeout_ms\":20000", NULL, NULL);
  CHECK(strcmp(code_of(res), "ok") != 0);
  CHECK(strstr(msg_of(res), "FIFO") != NULL);
  json_decref(res);
  unlink(livecfg);
}

/* One request like one_request (rollout NULL: none), but bounded: an agent
 * that has not answered within limit_ms is taken as hung, killed (its pid is
 * ours) and NULL returned. *ms gets how long the answer took. */
static json_t *bounded_request(const char *op, const char *hub, const char *rollout, const char *extra,
                               int limit_ms, int64_t *ms) {
  struct session s = start_agent();
  char req[8192];
  json_t *f = NULL;
  int64_t t0;
  json_decref(read_frame(s.from));
  snprintf(req, sizeof req, "{\"type\":\"request\",\"id\":1,\"op\":\"%s\",\"args\":{\"hub\":%s%s%s%s%s%s}}", op, hub,
           rollout ? ",\"rollout\":\"" : "", rollout ? rollout : "", rollout ? "\"" : "", extra ? "," : "",
           extra ? extra : "");
  t0 = hf__now_ms();
  send_json(s.to, req);
  for (;;) {
    struct pollfd p = { .fd = s.from, .events = POLLIN };
    int left = (int)(t0 + limit_ms - hf__now_ms());
    if (left <= 0 || poll(&p, 1, left) <= 0) {
      fprintf(stderr, "%s: the agent did not answer within %d ms (blocked): killing pid %d\n", op, limit_ms, (int)s.pid);
      kill(s.pid, SIGKILL);
      finish(&s);
      *ms = hf__now_ms() - t0;
      return NULL;
    }
    if ((f = read_frame(s.from)) == NULL) break;
    if (strcmp(json_string_value(json_object_get(f, "type")) ?: "", "event") != 0) break;
    json_decref(f);
    f = NULL;
  }
  *ms = hf__now_ms() - t0;
  CHECK(finish(&s) == 0);
  return f;
}

/* The hub's JSON of make_hub with "hub_log" added. */
static void with_hub_log(char *hub, size_t hublen, const char *log) {
  size_t n = strlen(hub);
  if (n > 0 && hub[n - 1] == '}') snprintf(hub + n - 1, hublen - (n - 1), ",\"hub_log\":\"%s\"}", log);
}

/* What the hub's directory holds besides the hub's files: nothing new of the
 * agent's (base_tmp: the .hf-tmp- names there before, test_hostile_restore's planted links). */
static void check_nothing_left(const char *what, int base_tmp) {
  int tmp = count_prefixed(hubdir, ".hf-tmp-") - base_tmp, aside = count_prefixed(hubdir, ".hf-aside-");
  CHECK_EQ_INT(tmp, 0);
  CHECK_EQ_INT(aside, 0);
  if (tmp || aside) fprintf(stderr, "after %s: %d temporary and %d moved-aside files left\n", what, tmp, aside);
}

/* A backup of a fresh hub (rollout), then the hub's user puts a FIFO at fifo
 * (the live database or config), then the rollback: it answers within limit_ms,
 * refused with a message naming the FIFO, which is left as it is. */
static void rollback_over_fifo(const char *state, const char *rollout, const char *fifo, int limit_ms, int base_tmp) {
  char hub[2048];
  json_t *res;
  int64_t ms;
  struct stat st;
  make_hub(state, hub, sizeof hub);
  res = one_request("backup", hub, rollout, "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "ok");
  json_decref(res);
  unlink(fifo);
  CHECK(mkfifo(fifo, 0640) == 0 && lchown(fifo, HUBUSER, HUBUSER) == 0);
  res = bounded_request("rollback", hub, rollout, NULL, limit_ms, &ms);
  CHECK(res != NULL);
  CHECK(res == NULL || strcmp(code_of(res), "ok") != 0);
  CHECK(res == NULL || (strstr(msg_of(res), fifo) != NULL && strstr(msg_of(res), "FIFO") != NULL));
  if (res && strstr(msg_of(res), "FIFO") == NULL) fprintf(stderr, "rollback, FIFO at %s: %s\n", fifo, msg_of(res));
  json_decref(res);
  CHECK(lstat(fifo, &st) == 0 && S_ISFIFO(st.st_mode));
  check_nothing_left("rollback (a FIFO at the database or config)", base_tmp);
}

/* preflight of hub (its live database refused): answered within limit_ms, the
 * database check naming the database and saying why (want), nothing of the
 * root database's (alembic revision "rootrev") in it. */
static void preflight_says(const char *hub, int limit_ms, const char *want) {
  int64_t ms;
  json_t *res = bounded_request("preflight", hub, NULL, "\"target\":\"3.1.0\",\"timeout_ms\":1000", limit_ms, &ms);
  char *text = res ? json_dumps(res, 0) : NULL;
  CHECK(res != NULL);
  CHECK(text == NULL || strstr(text, "rootrev") == NULL);
  CHECK(text == NULL || (strstr(text, want) != NULL && strstr(text, livedb) != NULL));
  free(text);
  json_decref(res);
}

/* facts of hub with a FIFO at path (an environment's file): answered ok
 * within limit_ms (the file skipped as a missing one is); the FIFO removed. */
static void facts_over_fifo(const char *hub, const char *path, int limit_ms) {
  int64_t ms;
  json_t *res;
  unlink(path);
  CHECK(mkfifo(path, 0644) == 0);
  res = bounded_request("facts", hub, NULL, "\"timeout_ms\":1000", limit_ms, &ms);
  CHECK(res != NULL);
  CHECK(res == NULL || strcmp(code_of(res), "ok") == 0);
  json_decref(res);
  unlink(path);
}

/* The limit for an answer to a refused read: a second (ten under valgrind). */
static int answer_limit_ms(void) {
  return getenv("HF_TEST_SLOW") || getenv("LD_PRELOAD") ? 10000 : 1000;
}

/* Issue 13: a FIFO or a symlink the hub's user puts where the agent reads the
 * live database, the config or the hub log (rollback's checksums, health's log
 * scan, facts' and preflight's database read, the environment's files): the
 * op answers, refused or reported, within the limit (a FIFO once blocked the
 * agent in open(2) while it held agent.lock), nothing changed, the root file
 * untouched. */
static void test_hostile_reads(void) {
  char hub[2048], state[PATH_MAX], log[PATH_MAX], rootlog[PATH_MAX], rootdb[PATH_MAX], venv[PATH_MAX], p[PATH_MAX];
  char sha_before[HF_SHA256_HEX], sha_after[HF_SHA256_HEX];
  const int limit = answer_limit_ms();
  json_t *res, *d;
  int64_t ms;
  int base_tmp;
  struct stat st;

  snprintf(state, sizeof state, "%s/readstate", tmpdir);
  snprintf(rootlog, sizeof rootlog, "%s/root-only.log", tmpdir);
  snprintf(rootdb, sizeof rootdb, "%s/root-only.sqlite", tmpdir);
  write_file(rootlog, "[E 2026-11-30 10:00:00.000 JupyterHub app:1] root secret log line\n");
  chmod(rootlog, 0600);
  unlink(rootdb);
  sql(rootdb, "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('r1'), ('r2'), ('r3');"
              "CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES ('rootrev');");
  chmod(rootdb, 0600);
  hf_sha256_file(rootdb, sha_before);

  /* rollback: a FIFO at the live database, then at the config (the database as backed up). */
  make_hub(state, hub, sizeof hub);
  base_tmp = count_prefixed(hubdir, ".hf-tmp-");
  rollback_over_fifo(state, "rd1", livedb, limit, base_tmp);
  rollback_over_fifo(state, "rd2", livecfg, limit, base_tmp);
  unlink(livecfg);

  /* health: a FIFO at hub_log, then a symlink to a root-only log: refused,
   * named, and nothing of the root file's lines reported. */
  make_hub(state, hub, sizeof hub);
  snprintf(log, sizeof log, "%s/jupyterhub.log", hubdir);
  with_hub_log(hub, sizeof hub, log);
  unlink(log);
  CHECK(mkfifo(log, 0644) == 0 && lchown(log, HUBUSER, HUBUSER) == 0);
  res = bounded_request("health", hub, NULL, "\"target\":\"3.1.0\",\"timeout_ms\":200", limit, &ms);
  CHECK(res != NULL);
  CHECK(res == NULL || strcmp(code_of(res), "ok") != 0);
  CHECK(res == NULL || (strstr(msg_of(res), log) != NULL && strstr(msg_of(res), "FIFO") != NULL));
  if (res && strstr(msg_of(res), "FIFO") == NULL) fprintf(stderr, "health, FIFO log: %s\n", msg_of(res));
  json_decref(res);
  unlink(log);
  CHECK(symlink(rootlog, log) == 0 && lchown(log, HUBUSER, HUBUSER) == 0);
  res = bounded_request("health", hub, NULL, "\"target\":\"3.1.0\",\"timeout_ms\":200", limit, &ms);
  CHECK(res != NULL);
  CHECK(res == NULL || strcmp(code_of(res), "ok") != 0);
  CHECK(res == NULL || strstr(msg_of(res), "root secret") == NULL);
  CHECK(res == NULL || (strstr(msg_of(res), log) != NULL && strstr(msg_of(res), "symbolic link") != NULL));
  if (res && strstr(msg_of(res), "symbolic link") == NULL) fprintf(stderr, "health, symlinked log: %s\n", msg_of(res));
  json_decref(res);
  unlink(log);
  CHECK_STR(slurp(rootlog), "[E 2026-11-30 10:00:00.000 JupyterHub app:1] root secret log line\n");

  /* facts and preflight: the live database a FIFO, then a symlink to a
   * root-only database: answered in time, refused with a message naming it,
   * nothing of the root database reported. */
  make_hub(state, hub, sizeof hub);
  unlink(livedb);
  CHECK(mkfifo(livedb, 0640) == 0 && lchown(livedb, HUBUSER, HUBUSER) == 0);
  res = bounded_request("facts", hub, NULL, "\"timeout_ms\":1000", limit, &ms);
  CHECK(res != NULL);
  d = json_object_get(json_object_get(res, "data"), "db");
  CHECK(res == NULL || json_is_null(json_object_get(d, "users")));
  CHECK(res == NULL || strstr(json_string_value(json_object_get(d, "error")) ?: "", "FIFO") != NULL);
  json_decref(res);
  preflight_says(hub, limit, "FIFO");
  unlink(livedb);
  CHECK(symlink(rootdb, livedb) == 0 && lchown(livedb, HUBUSER, HUBUSER) == 0);
  res = bounded_request("facts", hub, NULL, "\"timeout_ms\":1000", limit, &ms);
  CHECK(res != NULL);
  d = json_object_get(json_object_get(res, "data"), "db");
  CHECK(res == NULL || json_is_null(json_object_get(d, "users")));
  CHECK(res == NULL || json_is_null(json_object_get(d, "alembic_revision")));
  CHECK(res == NULL || strstr(json_string_value(json_object_get(d, "error")) ?: "", "symbolic link") != NULL);
  CHECK(res == NULL || strstr(json_string_value(json_object_get(d, "error")) ?: "", livedb) != NULL);
  json_decref(res);
  preflight_says(hub, limit, "symbolic link");
  unlink(livedb);
  hf_sha256_file(rootdb, sha_after);
  CHECK_STR(sha_after, sha_before);
  CHECK(stat(rootdb, &st) == 0 && st.st_uid == 0 && (st.st_mode & 0777) == 0600);

  /* facts: the hub environment's pyvenv.cfg a FIFO, then a package's
   * METADATA: skipped as a missing file is, in time. */
  make_hub(state, hub, sizeof hub);
  snprintf(venv, sizeof venv, "%s/venv", tmpdir);
  mkpath("%s/lib/python3.11/site-packages/jupyterhub-4.1.0.dist-info", venv);
  snprintf(p, sizeof p, "%s/pyvenv.cfg", venv);
  facts_over_fifo(hub, p, limit);
  write_file(p, "home = /usr/bin\nversion = 3.11.2\n");
  snprintf(p, sizeof p, "%s/lib/python3.11/site-packages/jupyterhub-4.1.0.dist-info/METADATA", venv);
  facts_over_fifo(hub, p, limit);
  /* preflight: the hub environment's bin/alembic a FIFO (executable, so it
   * passes access(X_OK)): its #! line is not read, preflight answers in time. */
  mkpath("%s/bin", venv);
  snprintf(p, sizeof p, "%s/bin/alembic", venv);
  unlink(p);
  CHECK(mkfifo(p, 0755) == 0 && chmod(p, 0755) == 0);
  res = bounded_request("preflight", hub, NULL, "\"target\":\"3.1.0\",\"timeout_ms\":1000", limit, &ms);
  CHECK(res != NULL);
  CHECK(res == NULL || ms < limit);
  json_decref(res);
  unlink(p);
  /* SQLite's own open(2) in the agent (hf_db_open_ro's hook): a FIFO put in
   * the database's place after the check cannot block it (a child, bounded). */
  make_hub(state, hub, sizeof hub);
  snprintf(p, sizeof p, "%s/swapped.sqlite", hubdir);
  unlink(p);
  CHECK(mkfifo(p, 0644) == 0);
  {
    pid_t pid = fork();
    int wst = 0;
    if (pid == 0) {
      sqlite3 *h = NULL;
      char err[512];
      int rc;
      alarm(limit / 1000 + 5);
      if (hf_db_open_ro(livedb, &h, err, sizeof err) != 0) _exit(3);
      sqlite3_close(h);
      h = NULL;
      rc = sqlite3_open_v2(p, &h, SQLITE_OPEN_READONLY, NULL);
      if (rc == SQLITE_OK) rc = sqlite3_exec(h, "SELECT count(*) FROM sqlite_master", NULL, NULL, NULL);
      sqlite3_close(h);
      _exit(rc == SQLITE_OK ? 1 : 0);
    }
    CHECK(pid > 0 && waitpid(pid, &wst, 0) == pid);
    CHECK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
    if (!WIFEXITED(wst)) fprintf(stderr, "SQLite's open of a FIFO blocked (signal %d)\n", WTERMSIG(wst));
  }
  unlink(p);
  snprintf(p, sizeof p, "%s/pyvenv.cfg", venv);
  unlink(p);
  hf_rm_tree(venv);
  unlink(livedb);
}

/* Issue 15: the state directory's key is this machine's and the config's. */
/* A database under a symlinked directory (/home -> /var/home, a versioned
 * /opt): the last component is held, the directories resolve as they do for
 * every path the hub names, so facts and backup read it (SQLite's own
 * NOFOLLOW refuses a symlink anywhere in the path). */
static void test_db_under_linked_dir(void) {
  char real[PATH_MAX], link[PATH_MAX], db[PATH_MAX], bk[PATH_MAX], alembic[64], err[512], sha[HF_SHA256_HEX];
  int64_t users = -1;
  snprintf(real, sizeof real, "%s/realdir", tmpdir);
  snprintf(link, sizeof link, "%s/linkdir", tmpdir);
  mkpath("%s", real);
  unlink(link);
  CHECK(symlink(real, link) == 0);
  snprintf(db, sizeof db, "%s/jupyterhub.sqlite", real);
  unlink(db);
  sql(db, "CREATE TABLE users (name TEXT); INSERT INTO users VALUES ('a'), ('b');"
          "CREATE TABLE alembic_version (version_num TEXT); INSERT INTO alembic_version VALUES ('linkrev');");
  snprintf(db, sizeof db, "%s/jupyterhub.sqlite", link);
  CHECK_EQ_INT(hf_db_info(db, alembic, sizeof alembic, &users, err, sizeof err), 0);
  CHECK_STR(alembic, "linkrev");
  CHECK(users == 2);
  snprintf(bk, sizeof bk, "%s/backup.sqlite", real);  /* (the agent's own directory: never a link) */
  unlink(bk);
  CHECK_EQ_INT(hf_db_backup(db, bk, sha, err, sizeof err), 0);
  if (sha[0] == '\0') fprintf(stderr, "backup under a linked dir: %s\n", err);
  CHECK(sha[0] != '\0');
  unlink(bk);
}

static void test_hub_key(void) {
  char a[HF_HUB_KEY_LEN + 1], b[HF_HUB_KEY_LEN + 1], c[HF_HUB_KEY_LEN + 1], hex[HF_SHA256_HEX], mid[HF_MACHINE_ID_MAX];
  const char *cfg = "/etc/jupyterhub/jupyterhub_config.py";
  const char *m;
  /* Two login nodes sharing /home, one config path: two keys. */
  hf__hub_key("3d1219c7c4c5404aaa1f6d2a48adfda4", cfg, a);
  hf__hub_key("0123456789abcdef0123456789abcdef", cfg, b);
  CHECK(strcmp(a, b) != 0);
  CHECK_EQ_INT(strlen(a), HF_HUB_KEY_LEN);
  /* One machine (and one config) always the same key, whatever the inventory calls it. */
  hf__hub_key("3d1219c7c4c5404aaa1f6d2a48adfda4", cfg, c);
  CHECK_STR(c, a);
  /* Two configs on one machine: two keys. */
  hf__hub_key("3d1219c7c4c5404aaa1f6d2a48adfda4", "/opt/tljh/config/jupyterhub_config.py", c);
  CHECK(strcmp(c, a) != 0);
  /* The documented formula: sha256("MACHINE_ID\nCONFIG"), its first 16 hex digits. */
  hf_sha256_hex("3d1219c7c4c5404aaa1f6d2a48adfda4\n/etc/jupyterhub/jupyterhub_config.py",
                strlen("3d1219c7c4c5404aaa1f6d2a48adfda4\n/etc/jupyterhub/jupyterhub_config.py"), hex);
  hex[HF_HUB_KEY_LEN] = '\0';
  CHECK_STR(a, hex);
  /* No machine id: the config path alone, as before. */
  hf_sha256_hex(cfg, strlen(cfg), hex);
  hex[HF_HUB_KEY_LEN] = '\0';
  hf__hub_key(NULL, cfg, c);
  CHECK_STR(c, hex);
  hf__hub_key("", cfg, c);
  CHECK_STR(c, hex);
  /* This machine's id, when it has one, is its /etc/machine-id's first line. */
  m = hf__machine_id(mid, sizeof mid);
  if (access("/etc/machine-id", R_OK) == 0 && m != NULL) {
    char line[HF_MACHINE_ID_MAX];
    FILE *f = fopen("/etc/machine-id", "r");
    CHECK(f != NULL && fgets(line, sizeof line, f) != NULL);
    if (f) fclose(f);
    line[strcspn(line, "\n")] = '\0';
    CHECK_STR(m, line);
  }
}

/* Item 6 of issue 13: the agent's own directories and files. */
static void test_hostile_state_dir(void) {
  char hub[2048], state[PATH_MAX], open_parent[PATH_MAX], p[PATH_MAX], err[1024];
  json_t *res;

  /* A state directory the hub user owns: refused, with the fix, nothing written. */
  snprintf(state, sizeof state, "%s/userstate", tmpdir);
  mkpath("%s", state);
  chmod(state, 0700);
  CHECK(chown(state, HUBUSER, HUBUSER) == 0);
  make_hub(state, hub, sizeof hub);
  res = one_request("backup", hub, "sd1", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  CHECK(strstr(msg_of(res), "chown 0") != NULL);
  json_decref(res);
  res = one_request("journal", hub, "sd1", NULL, NULL, NULL); /* a forged journal is not read either */
  CHECK_STR(code_of(res), "bad_state");
  json_decref(res);
  CHECK_EQ_INT(count_prefixed(state, ""), 2); /* . and .. */

  /* Writable by others: refused, naming chmod. */
  snprintf(state, sizeof state, "%s/openstate", tmpdir);
  mkpath("%s", state);
  chmod(state, 0777);
  make_hub(state, hub, sizeof hub);
  res = one_request("stop", hub, "sd2", NULL, NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  CHECK(strstr(msg_of(res), "chmod go-w") != NULL);
  json_decref(res);

  /* A parent the hub user can write (it could swap the state dir): refused. */
  snprintf(open_parent, sizeof open_parent, "%s/hubowned", tmpdir);
  mkpath("%s/state", open_parent);
  chmod(open_parent, 0755);
  CHECK(chown(open_parent, HUBUSER, HUBUSER) == 0);
  snprintf(state, sizeof state, "%s/state", open_parent);
  chmod(state, 0700);
  make_hub(state, hub, sizeof hub);
  res = one_request("backup", hub, "sd3", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  CHECK(strstr(msg_of(res), open_parent) != NULL);
  json_decref(res);
  /* ...also through a symlink on the way. */
  snprintf(p, sizeof p, "%s/link-to-hubowned", tmpdir);
  CHECK(symlink(open_parent, p) == 0);
  CHECK(hf_sf_private_dir(strcat(p, "/state"), false, "state directory", err, sizeof err) == HF_ESTATE);

  /* A backup directory the hub user owns: refused. */
  snprintf(state, sizeof state, "%s/goodstate", tmpdir);
  snprintf(p, sizeof p, "%s/hubbackups", tmpdir);
  mkpath("%s", p);
  chmod(p, 0700);
  CHECK(chown(p, HUBUSER, HUBUSER) == 0);
  make_hub(state, hub, sizeof hub);
  hub[strlen(hub) - 1] = '\0';
  snprintf(hub + strlen(hub), sizeof hub - strlen(hub), ",\"backup_dir\":\"%s\"}", p);
  res = one_request("backup", hub, "sd4", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "bad_state");
  CHECK(strstr(msg_of(res), "backup directory") != NULL);
  json_decref(res);

  /* The lock and the journal are never followed through a symlink, and the
   * lock is not truncated before it is ours: the root file keeps its bytes. */
  make_hub(state, hub, sizeof hub);
  hf_sf_private_dir(state, true, "state directory", err, sizeof err);
  snprintf(p, sizeof p, "%s/agent.lock", state);
  CHECK(symlink(victim, p) == 0);
  res = one_request("backup", hub, "sd5", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK(strcmp(code_of(res), "ok") != 0);
  CHECK(strstr(msg_of(res), "symbolic link") != NULL);
  json_decref(res);
  CHECK_STR(slurp(victim), "root secret\n");
  unlink(p);
  snprintf(p, sizeof p, "%s/journal-sd6", state);
  CHECK(symlink(victim, p) == 0);
  res = one_request("backup", hub, "sd6", "\"target\":\"3.1.0\"", NULL, NULL);
  CHECK_STR(code_of(res), "journal");
  json_decref(res);
  CHECK_STR(slurp(victim), "root secret\n");
  unlink(p);

  /* The helper itself: a destination that is a symlink is refused, a new
   * file gets the effective user, a replaced one keeps owner and mode. */
  snprintf(p, sizeof p, "%s/sf-link", hubdir);
  CHECK(symlink(victim, p) == 0);
  CHECK_EQ_INT(hf_sf_write_file(p, "x", 1, 0600, err, sizeof err), HF_ESTATE);
  CHECK(strstr(err, "symbolic link") != NULL);
  CHECK_STR(slurp(victim), "root secret\n");
  {
    struct stat st;
    snprintf(p, sizeof p, "%s/sf-file", hubdir);
    write_file(p, "old");
    CHECK(chown(p, HUBUSER, 100) == 0);
    chmod(p, 0604);
    CHECK_EQ_INT(hf_sf_write_file(p, "new", 3, 0600, err, sizeof err), 0);
    CHECK(stat(p, &st) == 0 && st.st_uid == HUBUSER && st.st_gid == 100 && (st.st_mode & 07777) == 0604);
    CHECK_STR(slurp(p), "new");
  }
}

/* Item 4 of issue 13: the watchdog that runs sudo'd commands kills them (and
 * what they left in other sessions) once the agent that asked is gone. */
static pid_t child_of(pid_t parent) {
  for (int tries = 0; tries < 200; tries++) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && (e = readdir(d)) != NULL) {
      char path[300], buf[512], *p;
      FILE *f;
      if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
      snprintf(path, sizeof path, "/proc/%s/stat", e->d_name);
      if ((f = fopen(path, "r")) == NULL) continue;
      if (fgets(buf, sizeof buf, f) && (p = strrchr(buf, ')')) != NULL && atoi(p + 4) == (int)parent)
        found = (pid_t)atoi(e->d_name);
      fclose(f);
    }
    if (d) closedir(d);
    if (found) return found;
    usleep(10000);
  }
  return 0;
}

static bool alive_not_zombie(pid_t pid) {
  char path[64], buf[512], *p;
  FILE *f;
  bool alive = false;
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  if ((f = fopen(path, "r")) == NULL) return false;
  if (fgets(buf, sizeof buf, f) && (p = strrchr(buf, ')')) != NULL) alive = p[2] != 'Z';
  fclose(f);
  return alive;
}

/* Whether a live process runs exactly /bin/sleep ARG. */
static bool sleep_running(const char *arg) {
  DIR *d = opendir("/proc");
  struct dirent *e;
  char want[64], path[300], buf[64];
  size_t wl = (size_t)snprintf(want, sizeof want, "/bin/sleep%c%s", 0, arg) + 1;
  bool found = false;
  while (d && (e = readdir(d)) != NULL) {
    int fd;
    ssize_t n;
    if (e->d_name[0] < '1' || e->d_name[0] > '9') continue;
    snprintf(path, sizeof path, "/proc/%s/cmdline", e->d_name);
    if ((fd = open(path, O_RDONLY)) < 0) continue;
    n = read(fd, buf, sizeof buf);
    close(fd);
    if (n == (ssize_t)wl && memcmp(buf, want, wl) == 0 && alive_not_zombie((pid_t)atoi(e->d_name))) found = true;
  }
  if (d) closedir(d);
  return found;
}

static void test_watchdog(void) {
  pid_t agent, watch, cmd;
  char apid[32], astart[32];
  int st;
  int64_t t0;

  /* The "agent": a process the test SIGKILLs, as the deadline or an operator would. */
  agent = fork();
  if (agent == 0) { pause(); _exit(0); }
  {
    /* its start time, as the agent passes it (hf__self_start in that process) */
    char path[64], buf[1024], *p;
    FILE *f;
    int field;
    snprintf(path, sizeof path, "/proc/%d/stat", (int)agent);
    f = fopen(path, "r");
    CHECK(f != NULL && fgets(buf, sizeof buf, f) != NULL);
    if (f) fclose(f);
    p = strrchr(buf, ')');
    for (field = 2; p && *p && field < 22; p++) if (*p == ' ') field++;
    snprintf(astart, sizeof astart, "%s", p ? p : "0");
    *strchrnul(astart, ' ') = '\0';
  }
  snprintf(apid, sizeof apid, "%d", (int)agent);
  watch = fork();
  if (watch == 0) {
    char *argv[] = { (char *)"hubfleet-agent", (char *)"--watch", apid, astart, (char *)"--",
                     (char *)"/bin/sleep", (char *)"4321", NULL };
    _exit(hf_watchdog_main(7, argv));
  }
  cmd = child_of(watch);
  CHECK(cmd > 0 && alive_not_zombie(cmd));
  usleep(200000);
  CHECK(alive_not_zombie(cmd)); /* the agent lives: the command runs on */
  CHECK(sleep_running("4321"));
  kill(agent, SIGKILL);
  waitpid(agent, &st, 0);
  t0 = hf__now_ms();
  CHECK(waitpid(watch, &st, 0) == watch);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 128 + SIGTERM);
  CHECK(cmd > 0 && !alive_not_zombie(cmd));
  CHECK(hf__now_ms() - t0 < 3000);
  fprintf(stderr, "watchdog: command gone %lld ms after the agent was killed\n", (long long)(hf__now_ms() - t0));

  /* A wrong start time (the pid reused by another process) counts as gone;
   * a command that ignores SIGTERM is SIGKILLed. */
  watch = fork();
  if (watch == 0) {
    char self[32];
    char *argv[] = { (char *)"hubfleet-agent", (char *)"--watch", self, (char *)"1", (char *)"--",
                     (char *)"/usr/bin/setsid", (char *)"--wait", (char *)"/bin/sleep", (char *)"4322", NULL };
    snprintf(self, sizeof self, "%d", (int)getppid());
    signal(SIGTERM, SIG_IGN); /* inherited by setsid and sleep: only SIGKILL ends them */
    _exit(hf_watchdog_main(9, argv));
  }
  CHECK(waitpid(watch, &st, 0) == watch);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) != 0);
  CHECK(!sleep_running("4322")); /* it left the group and the session: still found and killed */
  /* Bad usage is refused with the usage line. */
  {
    char *argv[] = { (char *)"hubfleet-agent", (char *)"--watch", (char *)"1", (char *)"2", (char *)"--",
                     (char *)"sleep", NULL };
    CHECK_EQ_INT(hf_watchdog_main(6, argv), 2);
  }
}

int main(void) {
  char tmpl[] = "/tmp/hf-agent-test-XXXXXX";
  signal(SIGPIPE, SIG_IGN);
  if (mkdtemp(tmpl) == NULL) { perror("mkdtemp"); return 2; }
  snprintf(tmpdir, sizeof tmpdir, "%s", tmpl);
  test_sha256();
  test_journal_truncation();
  test_journal_files();
  test_journal_powercut_files();
  test_metadata();
  test_env();
  test_http_parse();
  test_http_live();
  test_run();
  test_op_handlers();
  test_files();
  test_loop();
  test_validators();
  test_hostile_restore();
  test_hostile_reads();
  test_hub_key();
  test_db_under_linked_dir();
  test_hostile_state_dir();
  test_watchdog();
  {
    char *argv[] = { (char *)"/bin/rm", (char *)"-rf", tmpdir, NULL };
    struct hf_run r;
    memset(&r, 0, sizeof r);
    r.argv = argv; r.stdout_fd = -1;
    hf_run_exec(&r);
    hf_run_free(&r);
  }
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
