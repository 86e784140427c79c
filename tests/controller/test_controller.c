/* test_controller.c: unit tests of the controller's pure parts: backoff
 * math, known_hosts choice and messages, deploy command text, option
 * parsing, retry classification, audit folding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hf_proto.h"
#include "hf_controller.h"
#include "hf_ctl_util.h"
#include "hf_audit.h"
#include "hf_knownhosts.h"

#include <sys/stat.h>
#include <unistd.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

static int failures;

/* One lookup from scratch (the engine keeps a match per session). */
static enum hf_kh_verdict hf_kh_check(const struct hf_khfile *f, const char *host, int port, const ssh_key key) {
  struct hf_kh_match m = { 0 };
  enum hf_kh_verdict v = hf_kh_match(f, host, port, &m) == 0 ? hf_kh_match_check(f, &m, key) : HF_KH_UNKNOWN;
  hf_kh_match_free(&m);
  return v;
}

static int hf_kh_hostkey_algorithms(const struct hf_khfile *f, const char *host, int port, char *buf, size_t len) {
  struct hf_kh_match m = { 0 };
  int r = hf_kh_match(f, host, port, &m) == 0 ? hf_kh_match_algorithms(f, &m, buf, len) : -1;
  hf_kh_match_free(&m);
  return r;
}
#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); failures++; } } while (0)

static const char HEX[] = "08dd0b246ac324ab25b2b5516bc7ebc61a7f42fc7ccdab6d13545d34525a1cb6";

static void test_backoff(void) {
  uint64_t rng = 42;
  /* Each delay lies in [d/2, d] with d = min(cap, base * 2^(n-1)). */
  for (int attempt = 1; attempt <= 12; attempt++) {
    unsigned d = 200u << (attempt - 1 > 10 ? 10 : attempt - 1);
    if (d > 3000) d = 3000;
    for (int i = 0; i < 200; i++) {
      unsigned ms = hf_backoff_ms(attempt, 200, 3000, &rng);
      CHECK(ms >= d / 2 && ms <= d);
    }
  }
  /* Huge attempt counts do not overflow; attempt 0 behaves like 1. */
  CHECK(hf_backoff_ms(1000000, 200, 3000, &rng) <= 3000);
  CHECK(hf_backoff_ms(0, 200, 3000, &rng) <= 200);
  /* Jitter spreads: 100 draws are not all the same value. */
  unsigned first = hf_backoff_ms(5, 200, 3000, &rng);
  int same = 0;
  for (int i = 0; i < 100; i++) same += hf_backoff_ms(5, 200, 3000, &rng) == first;
  CHECK(same < 100);
  /* A zero seed still makes progress. */
  uint64_t z = 0;
  CHECK(hf_rng_next(&z) != 0 && z != 0);
}

static void test_known_hosts(void) {
  char buf[256];
  CHECK(!strcmp(hf_known_hosts_path("/h/kh", "/cli/kh", "/root", buf, sizeof buf), "/h/kh"));
  CHECK(!strcmp(hf_known_hosts_path(NULL, "/cli/kh", "/root", buf, sizeof buf), "/cli/kh"));
  CHECK(!strcmp(hf_known_hosts_path("", NULL, "/root", buf, sizeof buf), "/root/.ssh/known_hosts"));
  CHECK(hf_known_hosts_path(NULL, NULL, NULL, buf, sizeof buf) == NULL);
  CHECK(hf_known_hosts_path(NULL, NULL, "/root", buf, 8) == NULL);

  char msg[1024];
  hf_hostkey_message(HF_HOSTKEY_UNKNOWN, "hub1", "10.0.0.1", 2222, "ssh-ed25519 SHA256:abc", "/kh", msg, sizeof msg);
  CHECK(strstr(msg, "hub1") && strstr(msg, "[10.0.0.1]:2222") && strstr(msg, "--accept-new"));
  CHECK(strstr(msg, "ssh-keyscan -p 2222 10.0.0.1 >> /kh"));
  hf_hostkey_message(HF_HOSTKEY_UNKNOWN, "hub1", "10.0.0.1", 22, "x", "/kh", msg, sizeof msg);
  CHECK(strstr(msg, "host key of 10.0.0.1 ") != NULL);
  hf_hostkey_message(HF_HOSTKEY_CHANGED, "hub1", "10.0.0.1", 2222, "ssh-ed25519 SHA256:abc", "/kh", msg, sizeof msg);
  CHECK(strstr(msg, "CHANGED") && strstr(msg, "man-in-the-middle") && strstr(msg, "ssh-keygen -R"));
  CHECK(strstr(msg, "never overrides") != NULL);
  hf_hostkey_message(HF_HOSTKEY_OTHER, "hub1", "10.0.0.1", 22, "x", "/kh", msg, sizeof msg);
  CHECK(strstr(msg, "CHANGED") && strstr(msg, "other than the recorded"));
  /* Truncation stays NUL-terminated. */
  hf_hostkey_message(HF_HOSTKEY_CHANGED, "hub1", "10.0.0.1", 2222, "x", "/kh", msg, 10);
  CHECK(strlen(msg) == 9);
}

static void test_deploy_cmds(void) {
  char buf[2048];
  CHECK(hf_valid_sha256_hex(HEX));
  CHECK(!hf_valid_sha256_hex("08DD0B246AC324AB25B2B5516BC7EBC61A7F42FC7CCDAB6D13545D34525A1CB6"));
  CHECK(!hf_valid_sha256_hex("abc"));
  CHECK(!hf_valid_sha256_hex(NULL));
  char evil[80];
  memcpy(evil, HEX, 63);
  strcpy(evil + 63, "\";rm -rf /;\"");
  CHECK(!hf_valid_sha256_hex(evil));
  CHECK(hf_deploy_cmd_start(evil, buf, sizeof buf) == HF_EINVAL);
  CHECK(hf_deploy_cmd_upload(evil, buf, sizeof buf) == HF_EINVAL);

  CHECK(hf_deploy_cmd_start(HEX, buf, sizeof buf) == 0);
  CHECK(strstr(buf, "d=\"$HOME/.cache/hubfleet\"") && strstr(buf, "exec \"$a\"") &&
        strstr(buf, HF_DEPLOY_NEED_UPLOAD));
  /* The cached agent runs only after its SHA-256 is checked, in the same
   * command, and only from a cache nobody else can write. */
  const char *chk = strstr(buf, "sha256sum < \"$a\""), *ex = strstr(buf, "exec \"$a\"");
  char want[80];
  snprintf(want, sizeof want, "\"%s  -\"", HEX);
  CHECK(chk && ex && chk < ex && strstr(buf, want));
  CHECK(strstr(buf, "-perm -0002") && strstr(buf, "-perm -0020") && strstr(buf, "cd -P -- \"$d\"") &&
        strstr(buf, "[ -O . ]") && strstr(buf, "chmod 700 .") && strstr(buf, HF_DEPLOY_UNSAFE) &&
        strstr(buf, HF_DEPLOY_NOFIND));
  CHECK(strstr(buf, "a=./agent-08dd0b"));   /* relative to the directory it checked */
  CHECK(strstr(buf, "find \"$p/.\"") < ex);
  CHECK(hf_deploy_cmd_start(HEX, buf, 20) == HF_EINVAL);

  CHECK(hf_deploy_cmd_upload(HEX, buf, sizeof buf) == 0);
  /* Written under a temporary name, checked, then made executable and renamed. */
  const char *tmp = strstr(buf, "mktemp ./agent-"), *sum = strstr(buf, "sha256sum"),
             *chm = strstr(buf, "chmod 700 \"$t\""), *mv = strstr(buf, "mv -f");
  CHECK(tmp && sum && chm && mv && tmp < sum && sum < chm && chm < mv);
  CHECK(strstr(buf, "umask 077") && strstr(buf, HF_DEPLOY_UPLOADED));
  /* A gzip stream, inflated into a file mktemp made (the cleanup trap only
   * after it is ours), inside the checked directory. */
  const char *gz = strstr(buf, "gzip -dc > \"$t\""), *trap = strstr(buf, "trap 'rm"),
             *cd = strstr(buf, "cd -P -- \"$d\"");
  CHECK(gz && trap && cd && cd < tmp && tmp < trap && trap < gz && gz < sum && strstr(buf, HF_DEPLOY_UNSAFE));
  /* The sh parameter expansion survived printf formatting. */
  CHECK(strstr(buf, "${s%% *}") != NULL);
  CHECK(hf_deploy_cmd_upload(HEX, buf, 100) == HF_EINVAL);
}

static void test_misc(void) {
  long v;
  CHECK(hf_parse_uint("200", 1, 10000, &v) == 0 && v == 200);
  CHECK(hf_parse_uint("0", 1, 10000, &v) == HF_EINVAL);
  CHECK(hf_parse_uint("12x", 1, 10000, &v) == HF_EINVAL);
  CHECK(hf_parse_uint("", 1, 10000, &v) == HF_EINVAL);
  CHECK(hf_parse_uint("99999999999999999999", 1, 10000, &v) == HF_EINVAL);
  CHECK(hf_parse_uint("-3", 0, 10, &v) == HF_EINVAL);

  char key[128];
  hf_endpoint_key("10.0.0.1", 22, NULL, key, sizeof key);
  CHECK(!strcmp(key, "10.0.0.1:22"));
  hf_endpoint_key("10.0.0.1", 22, "bastion:2022", key, sizeof key);
  CHECK(!strcmp(key, "jump:bastion:2022"));

  CHECK(hf_ssh_error_retryable("Socket error: disconnected"));
  CHECK(hf_ssh_error_retryable("Connection reset by peer"));
  CHECK(!hf_ssh_error_retryable("kex error : no match for method kex algos"));
  CHECK(!hf_ssh_error_retryable(NULL));
}

/* ---- audit folding ------------------------------------------------------ */
static json_t *host_ok(const char *name, const char *hub, const char *u1, const char *u2, const char *alembic) {
  json_t *envs = json_pack("[{s:s, s:s}]", "role", "hub", "jupyterhub", hub);
  if (u1) json_array_append_new(envs, json_pack("{s:s, s:s}", "role", "user", "jupyterhub", u1));
  if (u2) json_array_append_new(envs, json_pack("{s:s, s:s}", "role", "user", "jupyterhub", u2));
  return json_pack("{s:s, s:b, s:{s:o, s:{s:s}}}", "name", name, "ok", 1, "facts", "envs", envs,
                   "db", "alembic_revision", alembic);
}

static void test_fold(void) {
  json_t *hosts = json_array();
  json_array_append_new(hosts, host_ok("a1", "5.2.1", "5.2.1", NULL, "r1"));
  json_array_append_new(hosts, host_ok("a2", "5.2.1", "5.2.1", NULL, "r1"));
  json_array_append_new(hosts, host_ok("b1", "4.1.6", "4.1.6", NULL, "r0"));
  json_array_append_new(hosts, host_ok("a3", "5.2.1", "5.2.1", "5.2.1", "r1"));   /* same answer, folded */
  json_array_append_new(hosts, host_ok("m1", "5.2.1", "4.1.6", "5.2.1", "r1"));   /* mismatch */
  json_array_append_new(hosts, json_pack("{s:s, s:b, s:{s:s, s:s}}", "name", "x1", "ok", 0,
                        "error", "code", "unreachable", "message", "x1: no route"));

  json_t *doc = hf_audit_fold(hosts, NULL);
  CHECK(doc != NULL);
  const json_t *sum = json_object_get(doc, "summary");
  CHECK(json_integer_value(json_object_get(sum, "total")) == 6);
  CHECK(json_integer_value(json_object_get(sum, "audited")) == 5);
  CHECK(json_integer_value(json_object_get(sum, "failed")) == 1);
  const json_t *groups = json_object_get(doc, "groups");
  CHECK(json_array_size(groups) == 3);
  const json_t *g0 = json_array_get(groups, 0);
  CHECK(json_integer_value(json_object_get(g0, "count")) == 3);      /* largest first */
  CHECK(!strcmp(json_string_value(json_object_get(g0, "hub")), "5.2.1"));
  CHECK(!strcmp(json_string_value(json_array_get(json_object_get(g0, "hosts"), 2)), "a3"));
  CHECK(json_is_true(json_object_get(doc, "drift")));
  CHECK(json_integer_value(json_object_get(json_object_get(doc, "versions"), "5.2.1")) == 4);
  CHECK(json_integer_value(json_object_get(json_object_get(doc, "versions"), "4.1.6")) == 2);
  const json_t *mis = json_object_get(doc, "mismatch");
  CHECK(json_array_size(mis) == 1 &&
        !strcmp(json_string_value(json_object_get(json_array_get(mis, 0), "host")), "m1"));
  CHECK(json_array_size(json_object_get(doc, "failed")) == 1);
  CHECK(hf_audit_exit_code(doc) == HF_EXIT_FAIL);   /* a host failed */
  /* The table names the drift, the mismatch and the failure. */
  char *text = NULL;
  size_t tlen = 0;
  FILE *f = open_memstream(&text, &tlen);
  hf_audit_print(f, doc, 2);
  fclose(f);
  CHECK(strstr(text, "DRIFT: 2 jupyterhub versions") && strstr(text, "MISMATCH") &&
        strstr(text, "x1: no route") && strstr(text, "(+1)"));
  free(text);
  json_decref(doc);

  /* --expect: every host on it and none failed -> 0; one off -> 1. */
  json_array_remove(hosts, 5);
  json_array_remove(hosts, 4);
  json_array_remove(hosts, 2);
  doc = hf_audit_fold(hosts, "5.2.1");
  CHECK(hf_audit_exit_code(doc) == HF_EXIT_OK);
  CHECK(!json_is_true(json_object_get(doc, "drift")));
  json_decref(doc);
  json_array_append_new(hosts, host_ok("c1", "5.2.1", "5.2.0", NULL, "r1"));
  doc = hf_audit_fold(hosts, "5.2.1");
  CHECK(hf_audit_exit_code(doc) == HF_EXIT_FAIL);
  CHECK(json_array_size(json_object_get(doc, "differ")) == 1);
  json_decref(doc);
  /* Without --expect drift alone is reported, not a failure. */
  doc = hf_audit_fold(hosts, NULL);
  CHECK(hf_audit_exit_code(doc) == HF_EXIT_OK && json_is_true(json_object_get(doc, "drift")));
  json_decref(doc);

  /* Hostile names cannot reach the terminal as control characters. */
  json_t *h2 = json_array();
  json_array_append_new(h2, host_ok("evil\033[2J", "5.2.1", NULL, NULL, "r"));
  doc = hf_audit_fold(h2, NULL);
  f = open_memstream(&text, &tlen);
  hf_audit_print(f, doc, 4);
  fclose(f);
  CHECK(strchr(text, '\033') == NULL && strstr(text, "evil?[2J"));
  free(text);
  json_decref(doc);
  json_decref(h2);

  CHECK(hf_audit_major("5.2.1") == 5 && hf_audit_major("10.0") == 10 && hf_audit_major("none") == -1);
  json_decref(hosts);
}

/* ---- known_hosts files read once (hf_knownhosts.h) ---------------------- */
static char kh_dir[] = "/tmp/hf-kh-test.XXXXXX";
#define LONGNAME "host-with-a-name-of-more-than-two-sha1-blocks.a-very-long-subdomain-label.and-another-long-label.example.org"

static ssh_key genkey(enum ssh_keytypes_e t, int bits) {
  ssh_key k = NULL;
  CHECK(ssh_pki_generate(t, bits, &k) == SSH_OK);
  return k;
}

/* "TYPE BASE64" of a public key, into buf. */
static const char *keytext(ssh_key k, char *buf, size_t len) {
  char *b64 = NULL;
  CHECK(ssh_pki_export_pubkey_base64(k, &b64) == SSH_OK);
  snprintf(buf, len, "%s %s", ssh_key_type_to_char(ssh_key_type(k)), b64 ? b64 : "");
  ssh_string_free_char(b64);
  return buf;
}

/* The |1|salt|hash form ssh-keygen -H writes for name. */
static const char *hashed_name(const char *name, char *buf, size_t len) {
  unsigned char salt[20], mac[EVP_MAX_MD_SIZE], b1[64], b2[64];
  unsigned ml = 0;
  for (int i = 0; i < 20; i++) salt[i] = (unsigned char)(i * 37 + 11);
  HMAC(EVP_sha1(), salt, 20, (const unsigned char *)name, strlen(name), mac, &ml);
  EVP_EncodeBlock(b1, salt, 20);
  EVP_EncodeBlock(b2, mac, (int)ml);
  snprintf(buf, len, "|1|%s|%s", (char *)b1, (char *)b2);
  return buf;
}

static void write_text(const char *path, const char *text) {
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  if (!f) return;
  fputs(text, f);
  fclose(f);
}

static void test_knownhosts_file(void) {
  CHECK(mkdtemp(kh_dir) != NULL);
  ssh_key ed = genkey(SSH_KEYTYPE_ED25519, 0), ed2 = genkey(SSH_KEYTYPE_ED25519, 0);
  ssh_key ec = genkey(SSH_KEYTYPE_ECDSA_P256, 256), ed3 = genkey(SSH_KEYTYPE_ED25519, 0);
  char t_ed[200], t_ed2[200], t_ec[300], t_ed3[200], hn[200], hn2[200], hn3[200], text[8192], path[300], err[600];
  keytext(ed, t_ed, sizeof t_ed);
  keytext(ed2, t_ed2, sizeof t_ed2);
  keytext(ec, t_ec, sizeof t_ec);
  keytext(ed3, t_ed3, sizeof t_ed3);
  snprintf(text, sizeof text,
           "# comment\n\n"
           "10.0.0.1 %s\n"
           "[10.0.0.1]:2222 %s\n"
           "Host.Example,alias.example  %s  a comment\n"
           "10.0.0.3 %s\n"                        /* ed25519 recorded, ed2 presented: changed */
           "10.0.0.4 %s\n"                        /* only ecdsa recorded: other */
           "*.wild.org,!bad.wild.org %s\n"
           "%s %s\n"                              /* hashed hashed.host */
           "@revoked 10.0.0.6 %s\n10.0.0.6 %s\n" /* listed and revoked: refused */
           "@cert-authority *.ca.org %s\n"
           "[10.0.0.7]:22 %s\n"
           "10.0.0.8 ssh-unknown-type AAAA\n"
           "10.0.0.9 ssh-ed25519 !!!notbase64\n"
           "10.0.0.10\n"
           "%s %s\n%s %s\n"                      /* long hashed names */
           "10.0.0.13 %s\n10.0.0.13 %s\n"        /* ecdsa, then ed25519 */
           "10.0.0.11 %s", /* no newline at the end */
           t_ed, t_ed, t_ed, t_ed, t_ec, t_ed, hashed_name("hashed.host", hn, sizeof hn), t_ed,
           t_ed, t_ed, t_ed, t_ed,
           hashed_name("a-host-name-that-is-long-enough-to-need-two-sha1-blocks.example.org", hn2, sizeof hn2), t_ed,
           hashed_name(LONGNAME, hn3, sizeof hn3), t_ed, t_ec, t_ed, t_ed3);
  snprintf(path, sizeof path, "%s/known_hosts", kh_dir);
  write_text(path, text);
  struct hf_kh *kh = hf_kh_new();
  struct hf_khfile *f = hf_kh_file(kh, path, err, sizeof err);
  CHECK(f != NULL);
  if (!f) return;
  CHECK(hf_kh_file(kh, path, err, sizeof err) == f);   /* read once */
  size_t n = 0, idx = 0, skipped = 0;
  hf_kh_counts(f, &n, &idx, &skipped);
  CHECK(skipped == 3);   /* unknown type, bad base64, no key; not comments or blank lines */
  CHECK(hf_kh_check(f, "10.0.0.1", 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, "10.0.0.2", 22, ed) == HF_KH_UNKNOWN);
  CHECK(hf_kh_check(f, "10.0.0.1", 2222, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, "10.0.0.1", 2200, ed) == HF_KH_UNKNOWN);
  CHECK(hf_kh_check(f, "host.example", 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, "ALIAS.example", 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, "10.0.0.3", 22, ed2) == HF_KH_CHANGED);
  CHECK(hf_kh_check(f, "10.0.0.4", 22, ed) == HF_KH_OTHER);
  CHECK(hf_kh_check(f, "10.0.0.4", 22, ec) == HF_KH_OK);
  CHECK(hf_kh_check(f, "a.wild.org", 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, "bad.wild.org", 22, ed) == HF_KH_UNKNOWN);
  CHECK(hf_kh_check(f, "wild.org", 22, ed) == HF_KH_UNKNOWN);
  CHECK(hf_kh_check(f, "hashed.host", 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, "hashed.hosts", 22, ed) == HF_KH_UNKNOWN);
  CHECK(hf_kh_check(f, "10.0.0.6", 22, ed) == HF_KH_REVOKED);
  CHECK(hf_kh_check(f, "x.ca.org", 22, ed) == HF_KH_UNKNOWN);
  CHECK(hf_kh_check(f, "10.0.0.7", 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, "10.0.0.11", 22, ed3) == HF_KH_OK);

  char algos[512];
  CHECK(hf_kh_hostkey_algorithms(f, "10.0.0.4", 22, algos, sizeof algos) == 1);
  CHECK(strncmp(algos, "ecdsa-sha2-nistp256,ssh-ed25519,", 32) == 0);
  CHECK(strstr(algos, "rsa-sha2-256") != NULL);
  CHECK(strstr(algos, "ecdsa-sha2-nistp256,") == algos && strstr(algos + 1, "ecdsa-sha2-nistp256,") == NULL);
  CHECK(hf_kh_hostkey_algorithms(f, "10.0.0.99", 22, algos, sizeof algos) == 0);
  /* Recorded types in libssh's order (ed25519 before ecdsa), not the file's. */
  CHECK(hf_kh_hostkey_algorithms(f, "10.0.0.13", 22, algos, sizeof algos) == 1);
  CHECK(strncmp(algos, "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp521,", 52) == 0);
  /* Hashed names longer than one SHA-1 block (two and three blocks). */
  CHECK(hf_kh_check(f, "a-host-name-that-is-long-enough-to-need-two-sha1-blocks.example.org", 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, LONGNAME, 22, ed) == HF_KH_OK);
  CHECK(hf_kh_check(f, LONGNAME "x", 22, ed) == HF_KH_UNKNOWN);
  /* A session's match, brought up to date after lines are added. */
  struct hf_kh_match m = { 0 };
  CHECK(hf_kh_match(f, "10.0.0.14", 22, &m) == 0 && m.n == 0);
  CHECK(hf_kh_add(f, "10.0.0.15", 22, ed2, err, sizeof err) == 0);
  CHECK(hf_kh_add(f, "10.0.0.14", 22, ed2, err, sizeof err) == 0);
  CHECK(hf_kh_match(f, "10.0.0.14", 22, &m) == 0 && m.n == 1);
  CHECK(hf_kh_match_check(f, &m, ed2) == HF_KH_OK && hf_kh_match_check(f, &m, ed) == HF_KH_CHANGED);
  hf_kh_match_free(&m);
  CHECK(hf_kh_hostkey_algorithms(f, "10.0.0.4", 22, algos, 20) == -1);

  /* --accept-new: appended on a line of its own (the file did not end in a
   * newline), found at once, and by the next run. */
  CHECK(hf_kh_check(f, "10.0.0.12", 2022, ed2) == HF_KH_UNKNOWN);
  CHECK(hf_kh_add(f, "10.0.0.12", 2022, ed2, err, sizeof err) == 0);
  CHECK(hf_kh_check(f, "10.0.0.12", 2022, ed2) == HF_KH_OK);
  hf_kh_free(kh);
  kh = hf_kh_new();
  f = hf_kh_file(kh, path, err, sizeof err);
  CHECK(f && hf_kh_check(f, "10.0.0.12", 2022, ed2) == HF_KH_OK);
  CHECK(f && hf_kh_check(f, "10.0.0.11", 22, ed3) == HF_KH_OK);
  hf_kh_free(kh);

  /* A missing file is empty; the first key creates it (0600) and its directory (0700). */
  char p2[400];
  snprintf(p2, sizeof p2, "%s/newdir/known_hosts", kh_dir);
  kh = hf_kh_new();
  f = hf_kh_file(kh, p2, err, sizeof err);
  CHECK(f && hf_kh_check(f, "10.0.0.1", 22, ed) == HF_KH_UNKNOWN);
  CHECK(f && hf_kh_add(f, "10.0.0.1", 22, ed, err, sizeof err) == 0);
  struct stat st;
  CHECK(stat(p2, &st) == 0 && (st.st_mode & 0777) == 0600);
  {
    /* A match made while the file was empty sees the first line added; a
     * line another program appended without a newline stays intact. */
    struct hf_kh_match m0 = { 0 };
    struct hf_kh *kh0 = hf_kh_new();
    char p0[400];
    snprintf(p0, sizeof p0, "%s/empty", kh_dir);
    struct hf_khfile *f0 = hf_kh_file(kh0, p0, err, sizeof err);
    CHECK(f0 && hf_kh_match(f0, "10.0.0.20", 22, &m0) == 0 && m0.n == 0);
    CHECK(f0 && hf_kh_add(f0, "10.0.0.20", 22, ed, err, sizeof err) == 0);
    CHECK(f0 && hf_kh_match(f0, "10.0.0.20", 22, &m0) == 0 && m0.n == 1);
    FILE *ap = fopen(p0, "a");
    if (ap) { fprintf(ap, "10.0.0.21 %s", t_ed); fclose(ap); }
    CHECK(f0 && hf_kh_add(f0, "10.0.0.22", 22, ed2, err, sizeof err) == 0);
    hf_kh_match_free(&m0);
    hf_kh_free(kh0);
    kh0 = hf_kh_new();
    f0 = hf_kh_file(kh0, p0, err, sizeof err);
    CHECK(f0 && hf_kh_check(f0, "10.0.0.21", 22, ed) == HF_KH_OK && hf_kh_check(f0, "10.0.0.22", 22, ed2) == HF_KH_OK);
    /* The same file under another name is the same index. */
    char p0b[500];
    snprintf(p0b, sizeof p0b, "%s/../%s/empty", kh_dir, strrchr(kh_dir, '/') + 1);
    CHECK(f0 && hf_kh_file(kh0, p0b, err, sizeof err) == f0);
    hf_kh_free(kh0);
    unlink(p0);
  }
  char d2[400];
  snprintf(d2, sizeof d2, "%s/newdir", kh_dir);
  CHECK(stat(d2, &st) == 0 && (st.st_mode & 0777) == 0700);
  hf_kh_free(kh);

  /* An unreadable file is an error naming it. */
  kh = hf_kh_new();
  CHECK(hf_kh_file(kh, kh_dir, err, sizeof err) == NULL && strstr(err, kh_dir) != NULL);
  hf_kh_free(kh);

  /* 20,000 names: every one found through the index, none scanned. */
  char big[400];
  snprintf(big, sizeof big, "%s/big", kh_dir);
  FILE *bf = fopen(big, "w");
  CHECK(bf != NULL);
  for (int i = 0; bf && i < 20000; i++) fprintf(bf, "10.%d.%d.%d %s\n", i >> 16, (i >> 8) & 255, i & 255, t_ed);
  if (bf) fclose(bf);
  kh = hf_kh_new();
  f = hf_kh_file(kh, big, err, sizeof err);
  CHECK(f != NULL);
  hf_kh_counts(f, &n, &idx, &skipped);
  CHECK(n == 20000 && idx == 20000 && skipped == 0);
  int ok = 0;
  for (int i = 0; f && i < 20000; i++) {
    char h[40];
    snprintf(h, sizeof h, "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
    ok += hf_kh_check(f, h, 22, ed) == HF_KH_OK;
  }
  CHECK(ok == 20000);
  hf_kh_free(kh);

  unlink(big); unlink(p2); rmdir(d2); unlink(path); rmdir(kh_dir);
  ssh_key_free(ed); ssh_key_free(ed2); ssh_key_free(ec); ssh_key_free(ed3);
}

int main(void) {
  test_backoff();
  test_known_hosts();
  test_knownhosts_file();
  test_deploy_cmds();
  test_misc();
  test_fold();
  if (failures) { fprintf(stderr, "%d checks failed\n", failures); return 1; }
  printf("ok\n");
  return 0;
}
