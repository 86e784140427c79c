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

static int failures;
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
  char buf[1024];
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
  CHECK(strstr(buf, "$HOME/.cache/hubfleet/agent-08dd0b") && strstr(buf, "exec \"$a\"") &&
        strstr(buf, HF_DEPLOY_NEED_UPLOAD));
  CHECK(hf_deploy_cmd_start(HEX, buf, 20) == HF_EINVAL);

  CHECK(hf_deploy_cmd_upload(HEX, buf, sizeof buf) == 0);
  /* Written under a temporary name, checked, then made executable and renamed. */
  const char *tmp = strstr(buf, ".tmp.$$"), *sum = strstr(buf, "sha256sum"),
             *chm = strstr(buf, "chmod 700"), *mv = strstr(buf, "mv -f");
  CHECK(tmp && sum && chm && mv && tmp < sum && sum < chm && chm < mv);
  CHECK(strstr(buf, "umask 077") && strstr(buf, HF_DEPLOY_UPLOADED));
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

int main(void) {
  test_backoff();
  test_known_hosts();
  test_deploy_cmds();
  test_misc();
  test_fold();
  if (failures) { fprintf(stderr, "%d checks failed\n", failures); return 1; }
  printf("ok\n");
  return 0;
}
