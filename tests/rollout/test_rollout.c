/* test_rollout.c: unit tests for stage planning, the failure budget and the state store. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include "hf_plan.h"
#include "hf_state.h"
#include "hf_proto.h"
#include "hf_rules.h"

static int failures, checks;
#define CHECK(cond) do { checks++; if (!(cond)) { failures++; fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)

/* Assigns n hosts (canaries at the given indexes) and renders "stage per host" as a string like "0111222". */
static void plan(const char *spec, size_t n, const char *canaries, char *out, size_t *nstages) {
  struct hf_stages st, *sp = NULL;
  char err[128];
  bool canary[64] = { false };
  unsigned stage_of[64];
  size_t order[64];
  if (spec) { CHECK(hf_plan_parse_stages(spec, &st, err, sizeof err) == 0); sp = &st; }
  for (const char *c = canaries; c && *c; c++) canary[*c - '0'] = true;
  *nstages = hf_plan_assign(sp, canary, n, stage_of, order);
  for (size_t i = 0; i < n; i++) out[i] = (char)('0' + stage_of[i]);
  out[n] = '\0';
}

static void test_plan(void) {
  char s[65], err[128];
  size_t ns;
  plan("1,50%,100%", 8, NULL, s, &ns);
  CHECK(!strcmp(s, "01112222") && ns == 3);
  plan("1,50%,100%", 8, "3", s, &ns);             /* canary host 3 goes first */
  CHECK(!strcmp(s, "11102222") && ns == 3);
  plan(NULL, 8, NULL, s, &ns);                     /* default: one host, then the rest */
  CHECK(!strcmp(s, "01111111") && ns == 2);
  plan(NULL, 8, "56", s, &ns);                     /* default: the canary group, then the rest */
  CHECK(!strcmp(s, "11111001") && ns == 2);
  plan("1,10%,50%,100%", 8, "01", s, &ns);        /* first stage grows to the canary group; 10% of 8 = 1 is empty then */
  CHECK(!strcmp(s, "00112222") && ns == 3);
  plan("2,4", 8, NULL, s, &ns);                    /* last stage always takes the rest */
  CHECK(!strcmp(s, "00112222") && ns == 3);
  plan("100%", 3, NULL, s, &ns);
  CHECK(!strcmp(s, "000") && ns == 1);
  plan("1", 1, NULL, s, &ns);
  CHECK(!strcmp(s, "0") && ns == 1);

  struct hf_stages st;
  CHECK(hf_plan_parse_stages("", &st, err, sizeof err) == HF_EINVAL);
  CHECK(hf_plan_parse_stages("1,,2", &st, err, sizeof err) == HF_EINVAL && strstr(err, "element 2"));
  CHECK(hf_plan_parse_stages("5,3", &st, err, sizeof err) == HF_EINVAL && strstr(err, "shrinks"));
  CHECK(hf_plan_parse_stages("0", &st, err, sizeof err) == HF_EINVAL);
  CHECK(hf_plan_parse_stages("101%", &st, err, sizeof err) == HF_EINVAL);
  CHECK(hf_plan_parse_stages("1;rm", &st, err, sizeof err) == HF_EINVAL);
  CHECK(hf_plan_parse_stages("1,10%,50%,100%", &st, err, sizeof err) == 0 && st.n == 4 && st.size[1].percent);

  struct hf_budget b;
  CHECK(hf_plan_parse_budget("0", &b, err, sizeof err) == 0 && hf_plan_budget_hosts(&b, 8) == 0);
  CHECK(hf_plan_parse_budget("2", &b, err, sizeof err) == 0 && hf_plan_budget_hosts(&b, 8) == 2);
  CHECK(hf_plan_parse_budget("25%", &b, err, sizeof err) == 0 && hf_plan_budget_hosts(&b, 8) == 2);
  CHECK(hf_plan_parse_budget("10%", &b, err, sizeof err) == 0 && hf_plan_budget_hosts(&b, 8) == 0);
  CHECK(hf_plan_parse_budget("-1", &b, err, sizeof err) == HF_EINVAL);
  CHECK(hf_plan_parse_budget("x", &b, err, sizeof err) == HF_EINVAL && strstr(err, "--max-failures"));
}

static void test_state(void) {
  char dir[] = "/tmp/hf-state-test-XXXXXX", path[256], err[256], id[64], id2[64];
  CHECK(mkdtemp(dir) != NULL);
  snprintf(path, sizeof path, "%s/state.db", dir);
  struct hf_state *st = NULL;
  CHECK(hf_state_open(path, &st, err, sizeof err) == 0);
  struct stat sb;
  CHECK(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600);

  const char *hosts[] = { "hub01", "hub02", "hub03" };
  unsigned stages[] = { 0, 1, 1 };
  json_t *opts = json_pack("{s:s}", "stages", "1,100%");
  CHECK(hf_state_rollout_create(st, "3.1.0", "fleet.ini", opts, 2, 1, hosts, stages, 3, id, sizeof id) == 0);
  json_decref(opts);
  CHECK(id[0] == 'r' && strlen(id) == 21);

  int64_t step;
  CHECK(hf_state_host_set(st, id, "hub01", HF_HOST_RUNNING, "backup", NULL) == 0);
  CHECK(hf_state_step_begin(st, id, "hub01", "backup", &step) == 0 && step > 0);
  json_t *data = json_pack("{s:s}", "db_sha256", "abc");
  CHECK(hf_state_step_end(st, step, "ok", data, NULL) == 0);
  CHECK(hf_state_host_set_json(st, id, "hub01", "backup", data) == 0);
  CHECK(hf_state_host_set_json(st, id, "hub01", "nonsense", data) == HF_EINVAL);
  json_decref(data);
  CHECK(hf_state_host_set(st, id, "hub01", HF_HOST_ROLLEDBACK, "health", "health: wrong version") == 0);
  CHECK(hf_state_host_set_downtime(st, id, "hub01", 1234) == 0);
  CHECK(hf_state_event(st, id, "hub01", "warn", "rolled back") == 0);

  json_t *r = hf_state_rollout_get(st, id);
  CHECK(r && !strcmp(json_string_value(json_object_get(r, "status")), HF_ROLLOUT_RUNNING));
  CHECK(r && json_integer_value(json_object_get(r, "failures")) == 1);
  CHECK(r && json_integer_value(json_object_get(r, "nhosts")) == 3);
  CHECK(r && !strcmp(json_string_value(json_object_get(json_object_get(r, "options"), "stages")), "1,100%"));
  json_decref(r);

  json_t *hs = hf_state_hosts(st, id);
  CHECK(hs && json_array_size(hs) == 3);
  json_t *h0 = json_array_get(hs, 0);
  CHECK(!strcmp(json_string_value(json_object_get(h0, "host")), "hub01"));
  CHECK(!strcmp(json_string_value(json_object_get(h0, "status")), HF_HOST_ROLLEDBACK));
  CHECK(json_integer_value(json_object_get(h0, "downtime_ms")) == 1234);
  CHECK(!strcmp(json_string_value(json_object_get(h0, "error")) ?: "", "health: wrong version"));
  CHECK(!strcmp(json_string_value(json_object_get(h0, "step")) ?: "", "health"));
  CHECK(!strcmp(json_string_value(json_object_get(json_object_get(h0, "backup"), "db_sha256")), "abc"));
  CHECK(json_is_integer(json_object_get(h0, "finished")));
  CHECK(!strcmp(json_string_value(json_object_get(json_array_get(hs, 1), "status")), HF_HOST_PENDING));
  json_decref(hs);

  json_t *steps = hf_state_steps(st, id, NULL);
  CHECK(steps && json_array_size(steps) == 1 &&
        !strcmp(json_string_value(json_object_get(json_array_get(steps, 0), "outcome")), "ok"));
  json_decref(steps);
  json_t *ev = hf_state_events(st, id, 0);
  CHECK(ev && json_array_size(ev) == 1);
  json_decref(ev);

  CHECK(hf_state_rollout_set_status(st, id, HF_ROLLOUT_HALTED) == 0);
  sleep(1); /* ids carry the second: a later rollout sorts after */
  const char *h1[] = { "hub01" };
  unsigned s1[] = { 0 };
  CHECK(hf_state_rollout_create(st, "3.1.0", "fleet.ini", NULL, 1, 0, h1, s1, 1, id2, sizeof id2) == 0);
  char latest[64];
  CHECK(hf_state_rollout_latest(st, latest, sizeof latest) == 0 && !strcmp(latest, id2));
  json_t *list = hf_state_rollout_list(st);
  CHECK(list && json_array_size(list) == 2);
  json_decref(list);
  hf_state_close(st);

  /* Re-open: migrations are idempotent and the data is there. A second
   * connection reads while the first holds a write transaction. */
  CHECK(hf_state_open(path, &st, err, sizeof err) == 0);
  struct hf_state *st2 = NULL;
  CHECK(hf_state_open(path, &st2, err, sizeof err) == 0);
  r = hf_state_rollout_get(st2, id);
  CHECK(r && !strcmp(json_string_value(json_object_get(r, "status")), HF_ROLLOUT_HALTED) && json_is_integer(json_object_get(r, "finished")));
  json_decref(r);
  hf_state_close(st2);
  hf_state_close(st);

  /* A state file from a newer hubfleet is refused, not rewritten. */
  pid_t pid = fork();
  if (pid == 0) { execlp("sqlite3", "sqlite3", path, "PRAGMA user_version=99", (char *)NULL); _exit(127); }
  int ws = 0;
  waitpid(pid, &ws, 0);
  if (WIFEXITED(ws) && WEXITSTATUS(ws) == 0) {
    CHECK(hf_state_open(path, &st, err, sizeof err) == HF_EDB && strstr(err, "newer"));
  } else {
    fprintf(stderr, "sqlite3 CLI missing: install the sqlite3 package\n");
    failures++;
  }
  char cmd[300];
  snprintf(cmd, sizeof cmd, "%s/state.db", dir); unlink(cmd);
  snprintf(cmd, sizeof cmd, "%s/state.db-wal", dir); unlink(cmd);
  snprintf(cmd, sizeof cmd, "%s/state.db-shm", dir); unlink(cmd);
  rmdir(dir);
}

static const char *rules_path;

/* Outcome of the named check in an evaluation, or "" when the rule did not apply. */
static const char *outcome(json_t *evaluated, const char *name) {
  size_t i;
  json_t *c;
  json_array_foreach(evaluated, i, c)
    if (!strcmp(json_string_value(json_object_get(c, "name")), name)) return json_string_value(json_object_get(c, "outcome"));
  return "";
}

static json_t *facts(const char *hub, const char *python, const char *user, int running) {
  json_t *f = json_pack("{s:[{s:s,s:s,s:s,s:s}],s:{s:i}}", "envs", "role", "hub", "prefix", "/opt/hub", "jupyterhub", hub,
                        "python", python, "db", "running_servers", running);
  if (user) json_array_append_new(json_object_get(f, "envs"), json_pack("{s:s,s:s,s:s}", "role", "user", "prefix", "/opt/user", "jupyterhub", user));
  return f;
}

static void test_rules(void) {
  char err[400];
  json_t *doc = NULL;
  CHECK(hf_rules_load(rules_path, &doc, err, sizeof err) == 0);
  if (!doc) { fprintf(stderr, "%s\n", err); return; }
  json_t *rule = json_pack("{s:{s:s}}", "applies", "crosses", "2.0.0a0");
  CHECK(hf_rules_applies(rule, "1.5.0", "2.0.0", false));
  CHECK(hf_rules_applies(rule, "1.5.0", "3.1.0", false));
  CHECK(!hf_rules_applies(rule, "2.0.0", "3.1.0", false));
  CHECK(!hf_rules_applies(rule, "1.4.0", "1.5.0", false));
  CHECK(hf_rules_applies(rule, "1.5.0", "2.0.0b1", false));   /* a pre-release of 2.0 crosses 2.0.0a0 */
  CHECK(!hf_rules_applies(rule, NULL, "2.0.0", false));        /* unknown from: range rules do not apply */
  json_decref(rule);
  rule = json_pack("{s:{s:{s:s,s:s}}}", "applies", "to", "min", "5.0.0a0", "max", "6.0.0a0");
  CHECK(hf_rules_applies(rule, "4.1.0", "5.2.1", false));
  CHECK(!hf_rules_applies(rule, "4.1.0", "6.0.0", false));
  CHECK(!hf_rules_applies(rule, "4.1.0", "4.9.9", false));
  json_decref(rule);

  json_t *f = facts("4.1.0", "3.9.2", "4.1.0", 0), *ev = hf_rules_eval(doc, "6.0.1", f);
  CHECK(!strcmp(outcome(ev, "python-min-6"), "refuse"));     /* 3.9 < 3.10: numeric, not string, compare */
  CHECK(!strcmp(outcome(ev, "python-min-5"), "pass"));
  CHECK(!strcmp(outcome(ev, "rbac-2"), ""));                  /* 4.1 -> 6.0 does not cross 2.0 */
  CHECK(!strcmp(outcome(ev, "servers-running-major"), "pass"));
  json_decref(ev); json_decref(f);
  f = facts("4.1.0", "3.11.2", "4.1.0", 0); ev = hf_rules_eval(doc, "6.0.1", f);
  CHECK(!strcmp(outcome(ev, "python-min-6"), "pass"));
  json_decref(ev); json_decref(f);
  f = facts("1.5.0", "3.9.2", "1.5.0", 3); ev = hf_rules_eval(doc, "2.3.1", f);
  CHECK(!strcmp(outcome(ev, "rbac-2"), "refuse"));
  CHECK(!strcmp(outcome(ev, "servers-running-major"), "warn"));
  CHECK(!strcmp(outcome(ev, "schema-change"), "warn"));
  json_decref(ev); json_decref(f);
  f = facts("3.0.0", "3.11.2", "2.3.1", 0); ev = hf_rules_eval(doc, "3.1.0", f);
  CHECK(!strcmp(outcome(ev, "env-major-mismatch"), "warn"));
  CHECK(!strcmp(outcome(ev, "downgrade"), ""));
  json_decref(ev); json_decref(f);
  f = facts("3.1.0", "3.11.2", "3.1.0", 0); ev = hf_rules_eval(doc, "3.0.0", f);
  CHECK(!strcmp(outcome(ev, "downgrade"), "refuse"));
  CHECK(!strcmp(outcome(ev, "env-major-mismatch"), "pass"));
  json_decref(ev); json_decref(f);
  /* The rehearsal's revisions decide whether the schema changes. */
  f = facts("3.0.0", "3.11.2", "3.0.0", 0);
  json_object_set_new(f, "rehearsal", json_pack("{s:s,s:s}", "alembic_before", "651f5419b74d", "alembic_after", "651f5419b74d"));
  ev = hf_rules_eval(doc, "3.1.0", f);
  CHECK(!strcmp(outcome(ev, "schema-change"), ""));
  json_decref(ev); json_decref(f);
  json_decref(doc);

  /* Invalid documents name the JSON path. */
  const char *bad[][2] = {
    { "{\"rules\": 3}", "rules: expected an array" },
    { "{\"rules\": [{\"id\":\"x\",\"title\":\"t\",\"outcome\":\"maybe\",\"link\":\"l\"}]}", "rules[0].outcome" },
    { "{\"rules\": [{\"id\":\"x\",\"title\":\"t\",\"outcome\":\"warn\",\"link\":\"l\",\"applies\":{\"crosses\":\"2.0; rm\"},\"check\":{\"kind\":\"notice\"}}]}", "rules[0].applies.crosses" },
    { "{\"rules\": [{\"id\":\"x\",\"title\":\"t\",\"outcome\":\"warn\",\"link\":\"l\",\"applies\":{\"always\":true},\"check\":{\"kind\":\"shell\"}}]}", "rules[0].check.kind" },
    { "{\"rules\": [{\"id\":\"x\",\"title\":\"t\",\"outcome\":\"warn\",\"link\":\"l\",\"applies\":{\"to\":{\"min\":\"1\",\"top\":\"2\"}},\"check\":{\"kind\":\"notice\"}}]}", "rules[0].applies.to.top" },
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    json_t *d = json_loads(bad[i][0], 0, NULL);
    CHECK(d && hf_rules_validate(d, err, sizeof err) == HF_EINVAL && strstr(err, bad[i][1]));
    json_decref(d);
  }
}

int main(int argc, char **argv) {
  rules_path = argc > 1 ? argv[1] : "controller/upgrade-rules.json";
  test_rules();
  test_plan();
  test_state();
  printf("%d passed, %d failed\n", checks - failures, failures);
  return failures ? 1 : 0;
}
